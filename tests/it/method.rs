//! `--method HEAD`: existence only. No body is read (a huge one is no error), statuses are
//! judged as with GET, and body rules are refused with it.

use crate::support::{self, Sandbox};

#[test]
fn head_checks_existence_only() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ok-1", "huge-1", "404-1", "s500-1"]);
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--method", "HEAD", "--retries", "1", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let sum = support::summary(&out);
    assert_eq!(sum["ok"], 2, "{sum}");
    assert_eq!(sum["not_found"], 1);
    assert_eq!(sum["errors"], 1);
    // Every request was a HEAD (the 500 one twice: retried as with GET).
    assert_eq!(server.head_requests(), 5);
    assert_eq!(server.total_requests(), 5);
    // An 8 MiB body under the default --max-body of 1MiB: HEAD never reads it.
    assert_eq!(support::sqlite_row(&db, "t", "huge-1").status, "ok");
    assert_eq!(
        support::sqlite_row(&db, "t", "s500-1").http_status,
        Some(500)
    );
}

#[test]
fn get_is_the_default_method() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
    let out = sb.run(&server, "t", "s.db").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(server.head_requests(), 0);
    assert_eq!(server.total_requests(), 1);
}

#[test]
fn head_with_a_body_rule_is_exit_2() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
    let before = support::snapshot(&sb.path("s.db"));
    for rule in [
        ["--expect-json", "/status=done"],
        ["--expect-jq", ".ok"],
        ["--dead-json", "/status=failed"],
        ["--dead-jq", ".status == \"failed\""],
    ] {
        let out = sb
            .run(&server, "t", "s.db")
            .args(["--method", "HEAD"])
            .args(rule)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{rule:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--method HEAD"), "{err}");
        assert!(err.contains(rule[0]), "{err}");
    }
    assert_eq!(server.total_requests(), 0);
    assert_eq!(support::snapshot(&sb.path("s.db")), before);
}
