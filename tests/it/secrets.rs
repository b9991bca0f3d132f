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
