//! Judging answers through the binary: `--expect-json` rules with operators (and, later,
//! jq filters and dead rules), against the mock server's `job<progress>` bodies.

use crate::support::{self, Sandbox, sqlite_row, sqlite_rows};

#[test]
fn operators_judge_through_the_binary() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    // job100 and jobf100 (progress 100.0) are done; job40 is still processing.
    support::sqlite_store(&db, "t", &["job100-a", "jobf100-b", "job40-c"]);
    let out = sb
        .run(&server, "t", db.to_str().unwrap())
        .args(["--format", "json"])
        .args(["--expect-json", "/progress>=100"])
        .args(["--expect-json", "/progress=100"])
        .args(["--expect-json", "/status!=failed"])
        .args(["--expect-json", "/id=~^job"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(s["ok"], 2, "{s}");
    assert_eq!(s["still_failed"], 1, "{s}");
    let rows = sqlite_rows(&db, "t");
    assert_eq!(rows["job100-a"].status, "ok");
    assert_eq!(rows["jobf100-b"].status, "ok", "100.0 = 100");
    let c = sqlite_row(&db, "t", "job40-c");
    assert_eq!(c.status, "failed");
    assert_eq!(
        c.last_error.as_deref(),
        Some("/progress is 40, expected >= 100")
    );
}

#[test]
fn progress_greater_equal_is_no_longer_a_pointer() {
    // Before operators, `/progress>=50` was the pointer `/progress>` and every item was
    // "still failed".
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["job50-a", "job25-b"]);
    let out = sb
        .run(&server, "t", db.to_str().unwrap())
        .args(["--format", "json", "--expect-json", "/progress>=50"])
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_u64(), s["still_failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(
        sqlite_row(&db, "t", "job25-b").last_error.as_deref(),
        Some("/progress is 25, expected >= 50")
    );
}

#[test]
fn a_bad_regex_is_a_usage_error() {
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["job50-a"]);
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--store", db.to_str().unwrap()])
        .args([
            "--url",
            "http://127.0.0.1:9/{id}",
            "--expect-json",
            "/id=~(",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--expect-json \"/id=~(\": invalid regex"),
        "{err}"
    );
    assert_eq!(sqlite_row(&db, "t", "job50-a").attempts, 0);
}
