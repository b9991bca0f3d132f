//! Secret header values never show up in output, logs, reports or the store, and never
//! follow a redirect to another host.

use crate::support::{self, Behavior, MockConfig, Sandbox};

const SECRET: &str = "s3cr3t-t0ken-value";

#[test]
fn auth_header_is_sent_but_never_shown() {
    let server = support::server(MockConfig {
        require_header: Some(("authorization".into(), format!("Bearer {SECRET}"))),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ok-1", "s503-1", "s401-1", "hang-1"]);
    for format in ["text", "json"] {
        let out = sb
            .run(&server, "t", "s.db")
            .args([
                "-H",
                "Authorization: Bearer ${TOKEN}",
                "--retries",
                "1",
                "--timeout",
                "200ms",
            ])
            .args(["--format", format, "--log-format", format])
            .env("TOKEN", SECRET)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let all = [&out.stdout[..], &out.stderr[..]].concat();
        assert!(
            !String::from_utf8_lossy(&all).contains(SECRET),
            "secret leaked in {format} output"
        );
        assert!(
            !out.stderr.is_empty(),
            "trace logging produced nothing: the test proves nothing"
        );
    }
    // It was sent: the server, which requires it, said OK.
    assert_eq!(support::sqlite_row(&db, "t", "ok-1").status, "ok");
    for (file, bytes) in support::snapshot(&db) {
        if let Some(b) = bytes {
            assert!(
                !String::from_utf8_lossy(&b).contains(SECRET),
                "secret in {file}"
            );
        }
    }
}

#[test]
fn bad_secret_header_value_is_not_echoed() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args([
            "run",
            "--task",
            "t",
            "--url",
            "http://127.0.0.1:9/{id}",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {SECRET}\u{1}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Authorization") && !err.contains(SECRET),
        "{err}"
    );
}

#[test]
fn secrets_do_not_follow_a_redirect_to_another_host() {
    let elsewhere = support::default_server();
    let server = support::default_server();
    // 127.0.0.1 → localhost is another origin (another host name, and another port).
    server.set(
        "r-1",
        Behavior::Redirect {
            to: format!("{}/items/ok-moved", elsewhere.url()),
        },
    );
    server.set(
        "r-2",
        Behavior::Redirect {
            to: "/items/ok-same".into(),
        },
    );
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["r-1", "r-2"]);
    sb.run(&server, "t", "s.db")
        .args([
            "-H",
            &format!("Authorization: Bearer {SECRET}"),
            "-H",
            "X-Api-Key: k-secret",
        ])
        .args(["-H", "X-Trace: visible", "--secret-header", "x-api-key"])
        .assert()
        .code(0);
    let moved = elsewhere.headers_seen("ok-moved");
    assert!(!moved.is_empty(), "the redirect was not followed");
    assert!(
        moved
            .iter()
            .all(|(k, _)| k != "authorization" && k != "x-api-key"),
        "{moved:?}"
    );
    assert!(
        moved.iter().any(|(k, v)| k == "x-trace" && v == "visible"),
        "{moved:?}"
    );
    // Same origin: credentials stay.
    let same = server.headers_seen("ok-same");
    assert!(same.iter().any(|(k, _)| k == "authorization"), "{same:?}");
    assert!(same.iter().any(|(k, _)| k == "x-api-key"), "{same:?}");
}

/// Secrets in the URL — a secret query parameter (`api_key`, and one named by
/// `--secret-param`), a `${VAR}` in the template, a password in a bad template — appear in
/// no output: stdout and stderr at `-vv` and at `RUST_LOG=trace`, `--report`, `--junit`,
/// `--metrics-file`, `--step-summary`, and the store's `last_error`.
#[test]
fn secrets_in_urls_appear_in_no_output() {
    const KEY: &str = "k3y-in-the-query";
    const SESSION: &str = "s3ss10n-in-the-query";
    const FROM_ENV: &str = "t0k3n-from-the-env";
    let server = support::default_server();
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for (name, base) in [
        ("mock", server.url()),
        ("refused", format!("http://127.0.0.1:{unreachable}")),
    ] {
        for logs in [&["-vv"][..], &["--log-format", "json"][..]] {
            let sb = Sandbox::new();
            let db = sb.path("s.db");
            support::sqlite_store(&db, "t", &["ok-1", "fail-2", "s500x9-3", "reset-4"]);
            let url = format!("{base}/items/{{id}}?api_key={KEY}&sess={SESSION}&t=${{API_TOKEN}}");
            let mut cmd = sb.cmd();
            cmd.args(["run", "--task", "t", "--store", "s.db", "--url", &url])
                .args([
                    "--secret-param",
                    "sess",
                    "--retries",
                    "1",
                    "--backoff",
                    "5ms..10ms",
                ])
                .args(["--expect-json", "/status=done", "--format", "json"])
                .args([
                    "--report",
                    "r.jsonl",
                    "--junit",
                    "j.xml",
                    "--metrics-file",
                    "m.prom",
                    "--step-summary",
                    "ss.md",
                ])
                .args(logs)
                .env("API_TOKEN", FROM_ENV);
            if logs == ["--log-format", "json"] {
                cmd.env("RUST_LOG", "trace");
            }
            let out = cmd.output().unwrap();
            assert!(matches!(out.status.code(), Some(1)), "{name}: {out:?}");
            let mut seen = vec![
                ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
                ("stderr", String::from_utf8_lossy(&out.stderr).into_owned()),
            ];
            for file in ["r.jsonl", "j.xml", "m.prom", "ss.md"] {
                seen.push((file, std::fs::read_to_string(sb.path(file)).unwrap()));
            }
            let rows = support::sqlite_rows(&db, "t");
            seen.push((
                "last_error",
                rows.values()
                    .filter_map(|r| r.last_error.clone())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ));
            for (what, text) in &seen {
                for secret in [KEY, SESSION, FROM_ENV] {
                    assert!(
                        !text.contains(secret),
                        "{name} {logs:?}: {secret} in {what}: {text}"
                    );
                }
            }
            let report = &seen[2].1;
            assert!(report.contains("api_key=***"), "shown redacted: {report}");
            if name == "mock" {
                // The secrets were sent: the server saw the request with its values.
                let paths = server.raw_paths();
                assert!(
                    paths
                        .iter()
                        .any(|p| p.contains(KEY) && p.contains(FROM_ENV)),
                    "{paths:?}"
                );
            }
        }
    }
    // A template that is refused shows no password, and no `${VAR}` value.
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--store", "s.db", "--url"])
        .arg("https://bob:hunter2@api.test/items/{nope?t=${API_TOKEN}")
        .env("API_TOKEN", FROM_ENV)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bob:***@api.test"), "{err}");
    assert!(!err.contains("hunter2") && !err.contains(FROM_ENV), "{err}");
    // An unset variable is named, not guessed at.
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--store", "s.db", "--url"])
        .arg("http://api.test/items/{id}?t=${NOT_SET_ANYWHERE}")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("environment variable NOT_SET_ANYWHERE is not set"),
        "{out:?}"
    );
}
