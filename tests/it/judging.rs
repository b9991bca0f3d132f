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

/// Runs a dead-rule check on `store` (items `job0-a` failed for good, `job100-b` done,
/// `job40-c` processing) and checks every output names `dead`.
fn dead_run(sb: &Sandbox, server: &support::MockServer, store: &str, extra: &[&str]) {
    let out = sb
        .run(server, "t", store)
        .args(["--format", "json", "--expect-json", "/status=done"])
        .args(["--dead-json", "/status=failed"])
        .args([
            "--report",
            "r.jsonl",
            "--junit",
            "j.xml",
            "--metrics-file",
            "m.prom",
        ])
        .args(extra)
        .output()
        .unwrap();
    // dead is not OK
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(
        (
            s["ok"].as_u64(),
            s["still_failed"].as_u64(),
            s["dead"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{s}"
    );
    let report = std::fs::read_to_string(sb.path("r.jsonl")).unwrap();
    let dead: Vec<serde_json::Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["outcome"] == "dead")
        .collect();
    assert_eq!(dead.len(), 1, "{report}");
    assert_eq!(dead[0]["item_id"], "job0-a");
    assert_eq!(dead[0]["error"], r#"dead: /status is "failed""#);
    let xml = std::fs::read_to_string(sb.path("j.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let case = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some("job0-a"))
        .expect("testcase job0-a");
    let failure = case
        .children()
        .find(|n| n.has_tag_name("failure"))
        .expect("failure");
    assert_eq!(failure.attribute("type"), Some("dead"), "{xml}");
    let prom = std::fs::read_to_string(sb.path("m.prom")).unwrap();
    assert!(
        prom.contains(r#"recheck_last_run_items{task="t",outcome="dead"} 1"#),
        "{prom}"
    );
}

#[test]
fn dead_by_rule_on_sqlite() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["job0-a", "job100-b", "job40-c"]);
    dead_run(&sb, &server, db.to_str().unwrap(), &[]);
    let rows = sqlite_rows(&db, "t");
    assert_eq!(rows["job0-a"].status, "dead");
    assert_eq!(rows["job0-a"].http_status, Some(200));
    assert_eq!(rows["job100-b"].status, "ok");
    assert_eq!(rows["job40-c"].status, "failed");
    // a second run does not see the dead item again
    let out = sb
        .run(&server, "t", db.to_str().unwrap())
        .args(["--format", "json", "--expect-json", "/status=done"])
        .output()
        .unwrap();
    assert_eq!(support::summary(&out)["checked"], 1);
}

#[test]
fn dead_by_rule_on_a_json_store_with_a_custom_status() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let items: Vec<serde_json::Value> = ["job0-a", "job100-b", "job40-c"]
        .iter()
        .map(|id| serde_json::json!({"task_id": "t", "item_id": id, "status": "failed"}))
        .collect();
    std::fs::write(
        sb.path("items.json"),
        serde_json::to_string_pretty(&items).unwrap(),
    )
    .unwrap();
    dead_run(&sb, &server, "items.json", &["--dead-status", "abandoned"]);
    let after: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(sb.path("items.json")).unwrap()).unwrap();
    let status = |id: &str| {
        after
            .iter()
            .find(|v| v["item_id"] == id)
            .map(|v| v["status"].clone())
    };
    assert_eq!(status("job0-a"), Some("abandoned".into()));
    assert_eq!(status("job100-b"), Some("ok".into()));
    assert_eq!(status("job40-c"), Some("failed".into()));
}

#[test]
fn dead_jq_and_the_text_summary() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["job0-a", "job100-b"]);
    let out = sb
        .run(&server, "t", db.to_str().unwrap())
        .args(["--expect-jq", r#".status == "done""#])
        .args(["--dead-jq", r#".status == "failed""#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let dead_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("dead "))
        .unwrap_or("");
    assert!(dead_line.trim_end().ends_with(" 1"), "{text}");
    assert!(
        text.contains(r#"dead: jq '.status == "failed"' gave true"#),
        "{text}"
    );
    assert_eq!(sqlite_row(&db, "t", "job0-a").status, "dead");
}

#[test]
fn dead_status_is_checked_and_never_alone() {
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["job0-a"]);
    let run = |args: &[&str]| {
        sb.cmd()
            .args(["run", "--task", "t", "--store", db.to_str().unwrap()])
            .args(["--url", "http://127.0.0.1:9/{id}"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--dead-status", "gone"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dead-status"));
    let out = run(&["--dead-json", "/status=failed", "--dead-status", "failed"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("re-checked forever"));
    let out = run(&["--dead-jq", ".status =="]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dead-jq \".status ==\": expected"));
    assert_eq!(sqlite_row(&db, "t", "job0-a").attempts, 0);
}
