//! TLS and HTTP/2 against the mock server: `--cacert`, `--cert`/`--key` (mutual TLS),
//! `--insecure`, certificate errors (final, never retried, a message for people), h2 by
//! ALPN and h2c with `--http2`, and connection reuse under HTTP/2.

use std::time::Duration;

use crate::support::{self, MockConfig, MockServer, MockTls, Sandbox};

/// `n` failed items `ok-0..n` in a fresh SQLite store of the sandbox.
fn store(sb: &Sandbox, n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("ok-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
}

/// Writes the server's CA as `ca.pem` in the sandbox.
fn ca_file(sb: &Sandbox, server: &MockServer) -> String {
    std::fs::write(sb.path("ca.pem"), server.ca_pem()).unwrap();
    "ca.pem".into()
}

fn run_json(sb: &Sandbox, server: &MockServer, extra: &[&str]) -> std::process::Output {
    sb.run(server, "t", "s.db")
        .args(["--format", "json"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn cacert_trusts_the_servers_ca_and_h2_is_negotiated_by_alpn() {
    let server = support::tls_server(MockConfig::default(), MockTls::default());
    let sb = Sandbox::new();
    store(&sb, 20);
    let ca = ca_file(&sb, &server);
    let out = run_json(&sb, &server, &["--cacert", &ca]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 20);
    assert_eq!(server.h2_requests(), 20, "ALPN did not pick HTTP/2");
    assert_eq!(
        support::sqlite_row(&sb.path("s.db"), "t", "ok-3").status,
        "ok"
    );
}

#[test]
fn a_cacert_bundle_with_several_certificates_works() {
    let server = support::tls_server(MockConfig::default(), MockTls::default());
    let other = support::tls_server(MockConfig::default(), MockTls::default());
    let sb = Sandbox::new();
    store(&sb, 3);
    // The right CA second in the file: every certificate of a bundle counts.
    let bundle = format!("{}\n{}", other.ca_pem(), server.ca_pem());
    std::fs::write(sb.path("bundle.pem"), bundle).unwrap();
    let out = run_json(&sb, &server, &["--cacert", "bundle.pem"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 3);
}

#[test]
fn http1_only_tls_servers_still_work() {
    let server = support::tls_server(
        MockConfig::default(),
        MockTls {
            http1_only: true,
            ..MockTls::default()
        },
    );
    let sb = Sandbox::new();
    store(&sb, 5);
    let ca = ca_file(&sb, &server);
    // --http2 is about http:// only: it must not force h2 onto a TLS server without it.
    let out = run_json(&sb, &server, &["--cacert", &ca, "--http2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 5);
    assert_eq!(server.h2_requests(), 0);
}

#[test]
fn an_untrusted_certificate_is_final_with_a_message_for_people() {
    for (tls, fragment) in [
        (
            MockTls::default(),
            "certificate for 127.0.0.1 is not trusted: unknown issuer (signed by a CA that is \
             not in the trust store); use --cacert FILE with the CA that signed it (or \
             --insecure)",
        ),
        (
            MockTls {
                self_signed: true,
                ..MockTls::default()
            },
            "certificate for 127.0.0.1 is not trusted: self-signed; use --cacert FILE with \
             that certificate (or --insecure)",
        ),
    ] {
        let server = support::tls_server(MockConfig::default(), tls);
        let sb = Sandbox::new();
        store(&sb, 4);
        let out = run_json(&sb, &server, &["--retries", "3"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let sum = support::summary(&out);
        assert_eq!(sum["errors"], 4);
        assert_eq!(sum["retries"], 0, "a certificate error was retried");
        assert_eq!(sum["requests"], 4);
        let row = support::sqlite_row(&sb.path("s.db"), "t", "ok-1");
        assert_eq!(row.attempts, 1);
        let err = row.last_error.unwrap_or_default();
        assert!(err.contains(fragment), "{err}");
        assert_eq!(row.status, "failed");
        assert_eq!(server.total_requests(), 0);
    }
}

#[test]
fn a_self_signed_ca_certificate_is_refused_even_when_trusted_and_says_why() {
    let server = support::tls_server(
        MockConfig::default(),
        MockTls {
            self_signed: true,
            ca_flag: true,
            ..MockTls::default()
        },
    );
    for trusted in [false, true] {
        let sb = Sandbox::new();
        store(&sb, 2);
        let ca = ca_file(&sb, &server);
        let args: &[&str] = if trusted { &["--cacert", &ca] } else { &[] };
        let out = run_json(&sb, &server, args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(support::summary(&out)["retries"], 0);
        let err = support::sqlite_row(&sb.path("s.db"), "t", "ok-0")
            .last_error
            .unwrap_or_default();
        assert!(
            err.contains("certificate for 127.0.0.1 is not trusted: self-signed (the server presents a CA certificate as its own"),
            "{err}"
        );
    }
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn expired_and_wrong_name_certificates_say_so() {
    for (tls, fragment) in [
        (
            MockTls {
                expired: true,
                ..MockTls::default()
            },
            "certificate for 127.0.0.1 has expired",
        ),
        (
            MockTls {
                names: vec!["api.example.invalid".into()],
                ..MockTls::default()
            },
            "certificate is not valid for the name 127.0.0.1",
        ),
    ] {
        let server = support::tls_server(MockConfig::default(), tls);
        let sb = Sandbox::new();
        store(&sb, 2);
        let ca = ca_file(&sb, &server);
        let out = run_json(&sb, &server, &["--cacert", &ca, "--retries", "3"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(support::summary(&out)["retries"], 0);
        let row = support::sqlite_row(&sb.path("s.db"), "t", "ok-0");
        assert_eq!(row.attempts, 1);
        let err = row.last_error.unwrap_or_default();
        assert!(err.contains(fragment), "{err}");
    }
}

#[test]
fn insecure_accepts_any_certificate_and_warns_once() {
    let server = support::tls_server(
        MockConfig::default(),
        MockTls {
            expired: true,
            names: vec!["api.example.invalid".into()],
            ..MockTls::default()
        },
    );
    let sb = Sandbox::new();
    store(&sb, 10);
    let out = run_json(&sb, &server, &["--insecure"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 10);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("--insecure").count(), 1, "{err}");
    assert!(err.contains("WARN"), "{err}");
}

/// A mock server demanding a client certificate; `http1_only` offers no h2 by ALPN.
fn mtls_server(http1_only: bool) -> MockServer {
    support::tls_server(
        MockConfig::default(),
        MockTls {
            require_client_cert: true,
            http1_only,
            ..MockTls::default()
        },
    )
}

#[test]
fn mutual_tls_with_cert_and_key() {
    for http1_only in [false, true] {
        let server = mtls_server(http1_only);
        let sb = Sandbox::new();
        store(&sb, 5);
        let ca = ca_file(&sb, &server);
        std::fs::write(sb.path("client.pem"), server.client_cert_pem()).unwrap();
        std::fs::write(sb.path("client.key"), server.client_key_pem()).unwrap();
        let out = run_json(
            &sb,
            &server,
            &[
                "--cacert",
                &ca,
                "--cert",
                "client.pem",
                "--key",
                "client.key",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(support::summary(&out)["ok"], 5);
        assert_eq!(server.total_requests(), 5);
    }
}

#[test]
fn a_refused_client_certificate_is_final_and_said() {
    // Under TLS 1.3 the server refuses after the client's side of the handshake is over:
    // the alert comes with the first read of the answer. Over HTTP/1.1 the request is
    // usually out by then and its error carries the alert; now and then hyper sees the
    // connection close first, and that attempt is retried as a connection error. Once the
    // refusal is seen, no more attempts.
    let server = mtls_server(true);
    let sb = Sandbox::new();
    store(&sb, 2);
    let ca = ca_file(&sb, &server);
    let out = run_json(&sb, &server, &["--cacert", &ca, "--retries", "6"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(server.total_requests(), 0);
    assert!(server.tls_failures() >= 2);
    let row = support::sqlite_row(&sb.path("s.db"), "t", "ok-0");
    let err = row.last_error.unwrap_or_default();
    assert!(
        err.contains("127.0.0.1 refused the TLS client certificate (CertificateRequired)")
            && err.contains("--cert FILE --key FILE"),
        "{err}"
    );
    assert!(row.attempts < 7, "retried after the refusal: {err}");
}

#[test]
fn without_the_client_certificate_an_h2_server_answers_nothing() {
    // Over HTTP/2 hyper may drop the connection before the request is handed to it, and
    // then the error only says the connection closed (retried as a connection error): the
    // items are errors all the same, and the server served none of them.
    let server = mtls_server(false);
    let sb = Sandbox::new();
    store(&sb, 2);
    let ca = ca_file(&sb, &server);
    let out = run_json(&sb, &server, &["--cacert", &ca, "--retries", "1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(support::summary(&out)["errors"], 2);
    assert_eq!(server.total_requests(), 0);
    assert!(server.tls_failures() >= 2);
}

#[test]
fn bad_tls_files_are_exit_2_naming_flag_and_file() {
    let server = support::tls_server(MockConfig::default(), MockTls::default());
    let other = support::tls_server(MockConfig::default(), MockTls::default());
    let sb = Sandbox::new();
    store(&sb, 1);
    std::fs::write(sb.path("junk.pem"), "not a certificate\n").unwrap();
    std::fs::write(sb.path("client.pem"), server.client_cert_pem()).unwrap();
    std::fs::write(sb.path("client.key"), server.client_key_pem()).unwrap();
    // another server's key: not the key of client.pem
    std::fs::write(sb.path("other.key"), other.client_key_pem()).unwrap();
    let before = support::snapshot(&sb.path("s.db"));
    for (args, fragments) in [
        (
            vec!["--cacert", "missing.pem"],
            vec!["--cacert missing.pem", "cannot read"],
        ),
        (
            vec!["--cacert", "junk.pem"],
            vec!["--cacert junk.pem", "no certificate"],
        ),
        (
            vec!["--cert", "client.pem", "--key", "junk.pem"],
            vec!["--key junk.pem", "no private key"],
        ),
        (
            vec!["--cert", "junk.pem", "--key", "client.key"],
            vec!["--cert junk.pem", "no certificate"],
        ),
        (
            vec!["--cert", "client.pem", "--key", "other.key"],
            vec!["--key other.key is not the key of the certificate in --cert client.pem"],
        ),
        (vec!["--cert", "client.pem"], vec!["--key"]),
        (vec!["--key", "client.key"], vec!["--cert"]),
    ] {
        let out = sb.run(&server, "t", "s.db").args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for f in fragments {
            assert!(err.contains(f), "{args:?}: {err}");
        }
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    assert_eq!(server.total_requests(), 0);
    assert_eq!(support::snapshot(&sb.path("s.db")), before);
}

/// 100 items in flight at once (the server holds each answer 300 ms) over HTTP/2.
fn h2_connections(server: &MockServer, extra: &[&str]) -> u64 {
    let sb = Sandbox::new();
    store(&sb, 300);
    let mut args = vec!["--concurrency", "100"];
    let ca;
    if server.url().starts_with("https") {
        ca = ca_file(&sb, server);
        args.extend(["--cacert", &ca]);
    }
    args.extend(extra);
    let out = run_json(&sb, server, &args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 300);
    assert_eq!(server.h2_requests(), 300);
    assert!(
        server.high_water() >= 50,
        "only {} in flight: the test does not test concurrency",
        server.high_water()
    );
    server.connections()
}

#[test]
fn h2_over_tls_uses_a_handful_of_connections_for_100_in_flight() {
    let server = support::tls_server(
        MockConfig {
            latency: Duration::from_millis(300),
            ..MockConfig::default()
        },
        MockTls::default(),
    );
    let conns = h2_connections(&server, &[]);
    assert!(conns <= 4, "{conns} connections for 100 requests in flight");
    assert!(server.tls_handshakes() <= 4);
}

#[test]
fn http1_over_tls_opens_no_more_connections_than_requests_in_flight() {
    // 100 in flight from the start: the first wave's handshakes take a while on a busy
    // machine, and every request admitted meanwhile used to open one more connection
    // (103-129 handshakes in this test before, 100 since). The pool keeps whichever
    // connection frees up first, so one late extra can still happen (a race inside it):
    // c + 2 is the bound.
    let server = support::tls_server(
        MockConfig {
            latency: Duration::from_millis(50),
            ..MockConfig::default()
        },
        MockTls {
            http1_only: true,
            ..MockTls::default()
        },
    );
    let sb = Sandbox::new();
    store(&sb, 1500);
    let ca = ca_file(&sb, &server);
    // --no-adaptive: the handshakes' latency at start would lower the limit, and this is
    // about 100 in flight.
    let args = ["--cacert", &ca, "--concurrency", "100", "--no-adaptive"];
    let out = run_json(&sb, &server, &args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 1500);
    assert!(
        server.high_water() >= 90,
        "{} in flight",
        server.high_water()
    );
    let handshakes = server.tls_handshakes();
    assert!(
        handshakes >= 90,
        "{handshakes}: the run did not use its concurrency"
    );
    assert!(
        handshakes <= 102,
        "{handshakes} TLS handshakes for 100 requests in flight"
    );
}

#[test]
fn http2_flag_speaks_h2c_on_http_with_a_handful_of_connections() {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(300),
        ..MockConfig::default()
    });
    let conns = h2_connections(&server, &["--http2"]);
    assert!(conns <= 4, "{conns} connections for 100 requests in flight");
}

#[test]
fn without_http2_plain_http_stays_http11() {
    let server = support::default_server();
    let sb = Sandbox::new();
    store(&sb, 5);
    let out = run_json(&sb, &server, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(server.h2_requests(), 0);
    assert_eq!(server.total_requests(), 5);
}

#[test]
fn run_help_documents_the_request_options_with_their_defaults() {
    let sb = Sandbox::new();
    let help = sb.cmd().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "--method <METHOD>",
        "[default: GET]",
        "--cacert <FILE>",
        "[default: the system's roots only]",
        "--cert <FILE>",
        "--key <FILE>",
        "--insecure",
        "[default: off]",
        "--http2",
        "[default: off, HTTP/1.1 on http://]",
        "[env: RECHECK_CACERT=]",
        "HTTPS_PROXY",
        "NO_PROXY",
    ] {
        assert!(help.contains(needle), "run --help lacks {needle}:\n{help}");
    }
}

#[test]
fn tls_options_come_from_the_config_file_and_the_environment_too() {
    let server = support::tls_server(MockConfig::default(), MockTls::default());
    // recheck.toml: cacert and method
    let sb = Sandbox::new();
    store(&sb, 3);
    ca_file(&sb, &server);
    std::fs::write(
        sb.path("recheck.toml"),
        "cacert = \"ca.pem\"\nmethod = \"HEAD\"\n",
    )
    .unwrap();
    let out = run_json(&sb, &server, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 3);
    assert_eq!(server.head_requests(), 3);
    // RECHECK_CACERT
    let sb = Sandbox::new();
    store(&sb, 2);
    ca_file(&sb, &server);
    let out = sb
        .run(&server, "t", "s.db")
        .env("RECHECK_CACERT", "ca.pem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_self_signed_leaf_certificate_can_be_its_own_cacert() {
    let server = support::tls_server(
        MockConfig::default(),
        MockTls {
            self_signed: true,
            ..MockTls::default()
        },
    );
    let sb = Sandbox::new();
    store(&sb, 3);
    // ca_pem() of a self-signed server is its own certificate
    let ca = ca_file(&sb, &server);
    let out = run_json(&sb, &server, &["--cacert", &ca]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 3);
}
