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

#[test]
fn jq_filter_over_arrays() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    // job75 has 3 renditions, job50 has 2.
    support::sqlite_store(&db, "t", &["job75-a", "job100-b", "job50-c"]);
    let out = sb
        .run(&server, "t", db.to_str().unwrap())
        .args([
            "--format",
            "json",
            "--expect-jq",
            "(.renditions | length) >= 3",
        ])
        .args(["--expect-jq", r#".status != "failed""#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let rows = sqlite_rows(&db, "t");
    assert_eq!(rows["job75-a"].status, "ok");
    assert_eq!(rows["job100-b"].status, "ok");
    assert_eq!(rows["job50-c"].status, "failed");
    assert_eq!(
        rows["job50-c"].last_error.as_deref(),
        Some("jq '(.renditions | length) >= 3' gave false")
    );
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_u64(), s["still_failed"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
}

#[test]
fn jq_run_time_error_fails_only_that_item() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    // `ok-` bodies have no renditions: iterating over null is a jq error for that one item.
    support::sqlite_store(&db, "t", &["job50-a", "ok-b", "job75-c"]);
    let out = sb
        .run(&server, "t", db.to_str().unwrap())
        .args(["--format", "json"])
        .args([
            "--expect-jq",
            r#"[.renditions[] | select(startswith("r"))] | length >= 2"#,
        ])
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_u64(), s["still_failed"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    let b = sqlite_row(&db, "t", "ok-b");
    assert_eq!(b.status, "failed");
    assert_eq!(
        b.last_error.as_deref(),
        Some(
            r#"jq '[.renditions[] | select(startswith("r"))] | length >= 2' failed: cannot use null as iterable (array or object)"#
        )
    );
}

#[test]
fn jq_compile_error_is_exit_2_with_the_position() {
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["job50-a"]);
    let before = support::snapshot(&db);
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--store", db.to_str().unwrap()])
        .args([
            "--url",
            "http://127.0.0.1:9/{id}",
            "--expect-jq",
            ".status ==",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            r#"--expect-jq ".status ==": expected term, found end of filter at line 1, column 11"#
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(support::snapshot(&db), before);
}
