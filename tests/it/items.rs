//! Items that must never become a request: an empty or NULL id is that item's error
//! (docs/reference.md §3.1), on every backend, while the other items are checked as usual.

use crate::support::{self, Sandbox};

/// Runs task `t` of `store` with a report, and checks: one request (for `ok-1`, the only
/// usable id), two errors saying why, the exit for not-OK items.
fn only_the_good_id_is_requested(sb: &Sandbox, server: &support::MockServer, store: &str) {
    let out = sb
        .run(server, "t", store)
        .args(["--format", "json", "--report", "report.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(
        (
            s["ok"].as_i64(),
            s["errors"].as_i64(),
            s["requests"].as_i64()
        ),
        (Some(1), Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(server.total_requests(), 1);
    assert_eq!(
        server.raw_paths(),
        ["/items/ok-1"],
        "never the collection /items/"
    );
    let report = std::fs::read_to_string(sb.path("report.jsonl")).unwrap();
    let errors: Vec<serde_json::Value> = report
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["outcome"] == "error")
        .collect();
    assert_eq!(errors.len(), 2, "{report}");
    for e in &errors {
        assert!(
            e["error"].as_str().unwrap().contains("empty item id"),
            "{e}"
        );
        assert_eq!(e["url"], serde_json::Value::Null, "no URL was asked: {e}");
    }
}

#[test]
fn json_empty_and_null_ids_are_errors_without_a_request() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let path = sb.path("items.json");
    std::fs::write(
        &path,
        r#"[{"task_id": "t", "item_id": "", "status": "failed"}, {"task_id": "t", "item_id": null, "status": "failed"}, {"task_id": "t", "item_id": "ok-1", "status": "failed"}]"#,
    )
    .unwrap();
    only_the_good_id_is_requested(&sb, &server, "items.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for i in [0, 1] {
        assert_eq!(doc[i]["status"], "failed", "{doc}");
        assert!(
            doc[i]["last_error"]
                .as_str()
                .unwrap()
                .contains("empty item id")
        );
        assert_eq!(doc[i]["attempts"], 0);
    }
    assert_eq!(
        doc[1]["item_id"],
        serde_json::Value::Null,
        "the id is left as it was"
    );
    assert_eq!(doc[2]["status"], "ok");
}

#[test]
fn jsonl_empty_and_null_ids_are_errors_without_a_request() {
    let server = support::default_server();
    let sb = Sandbox::new();
    std::fs::write(
        sb.path("items.jsonl"),
        "{\"task_id\": \"t\", \"item_id\": \"\", \"status\": \"failed\"}\n{\"task_id\": \"t\", \"id\": null, \"status\": \"failed\"}\n{\"task_id\": \"t\", \"item_id\": \"ok-1\", \"status\": \"failed\"}\n",
    )
    .unwrap();
    only_the_good_id_is_requested(&sb, &server, "items.jsonl");
}

#[test]
fn sqlite_empty_and_null_ids_are_errors_without_a_request() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    // The default schema says NOT NULL; existing tables need not.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE items(task_id TEXT, item_id TEXT, status TEXT, url TEXT,
            http_status INTEGER, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
            checked_at TEXT);
         INSERT INTO items(task_id, item_id, status) VALUES
            ('t', '', 'failed'), ('t', NULL, 'failed'), ('t', 'ok-1', 'failed');",
    )
    .unwrap();
    drop(conn);
    only_the_good_id_is_requested(&sb, &server, "s.db");
    assert_eq!(support::sqlite_row(&db, "t", "ok-1").status, "ok");
}

#[test]
fn an_empty_column_value_or_item_url_is_an_error_without_a_request() {
    let server = support::default_server();
    let sb = Sandbox::new();
    std::fs::write(
        sb.path("items.json"),
        format!(
            r#"[{{"task_id": "t", "item_id": "a", "status": "failed", "path": "", "url": ""}}, {{"task_id": "t", "item_id": "b", "status": "failed", "url": null}}, {{"task_id": "t", "item_id": "c", "status": "failed", "path": "ok-1", "url": "{}/items/ok-2"}}]"#,
            server.url()
        ),
    )
    .unwrap();
    // `{COLUMN}`: "" and a missing field.
    let out = sb
        .cmd()
        .args([
            "run",
            "--task",
            "t",
            "--store",
            "items.json",
            "--dry-run",
            "--format",
            "json",
            "--url",
        ])
        .arg(format!("{}/items/{{path}}", server.url()))
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_i64(), s["errors"].as_i64()),
        (Some(1), Some(2)),
        "{s}"
    );
    assert_eq!(server.raw_paths(), ["/items/ok-1"]);
    // The item's own url: "" and null.
    let out = sb
        .cmd()
        .args([
            "run",
            "--task",
            "t",
            "--store",
            "items.json",
            "--dry-run",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_i64(), s["errors"].as_i64()),
        (Some(1), Some(2)),
        "{s}"
    );
    assert_eq!(server.raw_paths(), ["/items/ok-1", "/items/ok-2"]);
}
