//! Every outcome row of docs/reference.md §3.4 lands in the store with the right status and
//! bookkeeping, on SQLite, JSON and JSONL.

use serde_json::Value;

use crate::support::{
    self, OUTCOME_CASES as CASES, Sandbox, check_outcome_summary, outcome_args, sqlite_row,
};

fn check_item(
    id: &str,
    status: &str,
    http: Option<i64>,
    attempts: i64,
    err: Option<&str>,
    got: &Value,
) {
    assert_eq!(got["status"], status, "{id}: {got}");
    assert_eq!(got["http_status"].as_i64(), http, "{id}: {got}");
    assert_eq!(got["attempts"].as_i64(), Some(attempts), "{id}: {got}");
    match err {
        None => assert!(got["last_error"].is_null(), "{id}: {got}"),
        Some(frag) => {
            let e = got["last_error"].as_str().unwrap_or_default();
            assert!(e.contains(frag), "{id}: {e:?} lacks {frag:?}");
        }
    }
    let at = got["checked_at"].as_str().unwrap_or_default();
    assert!(
        at.ends_with('Z') && at.len() >= 20,
        "{id}: checked_at {at:?}"
    );
}

#[test]
fn sqlite_outcomes() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    let ids: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    support::sqlite_store(&db, "t1", &ids);
    // Items of another task, and an already OK item of this task, are not touched.
    support::sqlite_store(&db, "t2", &["ok-2"]);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO items(task_id, item_id, status) VALUES ('t1', 'ok-3', 'ok')",
            [],
        )
        .unwrap();
    let mut cmd = sb.run(&server, "t1", db.to_str().unwrap());
    outcome_args(&mut cmd);
    let out = cmd.output().unwrap();
    check_outcome_summary(&out);
    for &(id, status, http, attempts, err) in CASES {
        let row = sqlite_row(&db, "t1", id);
        let got = serde_json::json!({
            "status": row.status, "http_status": row.http_status, "attempts": row.attempts,
            "last_error": row.last_error, "checked_at": row.checked_at,
        });
        check_item(id, status, http, attempts, err, &got);
    }
    assert_eq!(server.requests("ok-2"), 0);
    assert_eq!(server.requests("ok-3"), 0);
    assert_eq!(sqlite_row(&db, "t2", "ok-2").status, "failed");
    assert_eq!(sqlite_row(&db, "t1", "ok-3").checked_at, None);
}

fn json_items(ids: &[&str]) -> Vec<Value> {
    ids.iter()
        .map(|id| serde_json::json!({"task_id": "t1", "item_id": id, "status": "failed", "note": "keep me"}))
        .collect()
}

#[test]
fn json_outcomes() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let path = sb.path("items.json");
    let ids: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    let mut items = json_items(&ids);
    items.push(serde_json::json!({"task_id": "t2", "item_id": "ok-2", "status": "failed"}));
    let doc = serde_json::json!({"version": 3, "items": items});
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let mut cmd = sb.run(&server, "t1", path.to_str().unwrap());
    outcome_args(&mut cmd);
    let out = cmd.output().unwrap();
    check_outcome_summary(&out);
    let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(after["version"], 3);
    let items = after["items"].as_array().unwrap();
    for (i, &(id, status, http, attempts, err)) in CASES.iter().enumerate() {
        assert_eq!(items[i]["item_id"], id);
        assert_eq!(items[i]["note"], "keep me");
        check_item(id, status, http, attempts, err, &items[i]);
    }
    assert_eq!(items[CASES.len()]["status"], "failed");
    assert!(items[CASES.len()].get("checked_at").is_none());
    assert_eq!(server.requests("ok-2"), 0);
}

#[test]
fn jsonl_outcomes() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let path = sb.path("items.jsonl");
    let ids: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    let lines: Vec<String> = json_items(&ids).iter().map(Value::to_string).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let mut cmd = sb.run(&server, "t1", path.to_str().unwrap());
    outcome_args(&mut cmd);
    let out = cmd.output().unwrap();
    check_outcome_summary(&out);
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), CASES.len());
    for (i, &(id, status, http, attempts, err)) in CASES.iter().enumerate() {
        assert_eq!(rows[i]["item_id"], id);
        check_item(id, status, http, attempts, err, &rows[i]);
    }
}

#[test]
fn without_not_found_status_404_keeps_the_status() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["404-1", "ok-1"]);
    sb.run(&server, "t", db.to_str().unwrap()).assert().code(1);
    let row = sqlite_row(&db, "t", "404-1");
    assert_eq!(row.status, "failed");
    assert_eq!(row.http_status, Some(404));
    assert_eq!(sqlite_row(&db, "t", "ok-1").status, "ok");
}

#[test]
fn exit_codes_and_fail_on() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "all-ok", &["ok-1", "ok-2"]);
    support::sqlite_store(&db, "mixed", &["ok-3", "s500-1"]);
    sb.run(&server, "all-ok", "s.db").assert().code(0);
    // Nothing left to check: still 0.
    sb.run(&server, "all-ok", "s.db").assert().code(0);
    sb.run(&server, "mixed", "s.db")
        .args(["--retries", "0", "--fail-on", "never"])
        .assert()
        .code(0);
    sb.run(&server, "mixed", "s.db")
        .args(["--retries", "0"])
        .assert()
        .code(1);
}

#[test]
fn dry_run_writes_nothing() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ok-1", "fail-1"]);
    let before = support::snapshot(&db);
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--dry-run", "--format", "json"])
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!(s["dry_run"], true);
    assert_eq!(s["checked"], 2);
    assert_eq!(server.requests("ok-1"), 1);
    assert_eq!(support::snapshot(&db), before);
    // A dry run on a store that does not exist is refused and creates nothing.
    sb.run(&server, "t", "new.db")
        .arg("--dry-run")
        .assert()
        .code(2);
    assert!(!sb.path("new.db").exists());
}

#[test]
fn limit_checks_at_most_n() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    let ids: Vec<String> = (0..50).map(|i| format!("ok-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&db, "t", &ids);
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--limit", "7", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(support::summary(&out)["checked"], 7);
    assert_eq!(server.total_requests(), 7);
    // The next run takes the rest.
    sb.run(&server, "t", "s.db").assert().code(0);
    assert_eq!(server.total_requests(), 50);
}

#[test]
fn item_url_column_is_used_without_template() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["a", "b", "c"]);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE items SET url = ?1 || '/items/ok-' || item_id WHERE item_id != 'c'",
        [server.url()],
    )
    .unwrap();
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--store", "s.db", "--format", "json"])
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!((s["ok"].as_i64(), s["errors"].as_i64()), (Some(2), Some(1)));
    assert_eq!(server.requests("ok-a"), 1);
    assert_eq!(
        sqlite_row(&db, "t", "c").last_error.as_deref(),
        Some("item has no url")
    );
}

#[test]
fn text_summary_names_the_problems() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ok-1", "s401-1", "s401-2"]);
    let out = sb.run(&server, "t", "s.db").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("task t on sqlite:s.db\n"), "{text}");
    assert!(text.contains("  checked               3\n"), "{text}");
    assert!(text.contains("  ok                    1\n"), "{text}");
    assert!(
        text.contains("       2  unexpected HTTP 401 Unauthorized\n"),
        "{text}"
    );
}

#[test]
fn the_backlog_is_what_the_store_still_holds_as_failed() {
    let server = support::default_server();
    let sb = Sandbox::new();
    for (store, setup) in [("s.db", "sqlite"), ("s.json", "json")] {
        let ids = ["ok-1", "fail-2", "404-3", "ok-4"];
        if setup == "sqlite" {
            support::sqlite_store(&sb.path(store), "t", &ids);
            support::sqlite_store(&sb.path(store), "other", &["fail-9"]);
        } else {
            let mut items: Vec<serde_json::Value> = ids
                .iter()
                .map(|id| serde_json::json!({"task_id": "t", "item_id": id, "status": "failed"}))
                .collect();
            items.push(
                serde_json::json!({"task_id": "other", "item_id": "fail-9", "status": "failed"}),
            );
            std::fs::write(sb.path(store), serde_json::to_string(&items).unwrap()).unwrap();
        }
        let metrics = sb.path(&format!("{setup}.prom"));
        // A dry run leaves all four; a real one the two that are not OK (404 keeps its
        // status without --not-found-status). Another task's item never counts.
        for (extra, backlog) in [(&["--dry-run"][..], 4), (&[][..], 2)] {
            let out = sb
                .run(&server, "t", store)
                .args(["--expect-json", "/status=done", "--format", "json"])
                .arg("--metrics-file")
                .arg(&metrics)
                .args(extra)
                .output()
                .unwrap();
            let s = support::summary(&out);
            assert_eq!(s["backlog"], backlog, "{setup} {extra:?}: {s}");
            let prom = std::fs::read_to_string(&metrics).unwrap();
            assert!(
                prom.contains(&format!("recheck_task_backlog{{task=\"t\"}} {backlog}")),
                "{setup}: {prom}"
            );
        }
        let text = sb
            .run(&server, "t", store)
            .args(["--expect-json", "/status=done", "--dry-run"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().take(2).eq(["backlog", "2"])),
            "{setup}: {text}"
        );
    }
}
