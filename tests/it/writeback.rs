//! Write-back you can trust, on SQLite: compare-and-set on the claimed row, start-up
//! refusals that leave the file alone, and the file's own settings kept.

use std::time::Duration;

use crate::support::{self, Sandbox};

fn exec(path: &std::path::Path, sql: &str) {
    rusqlite::Connection::open(path)
        .expect("open sqlite")
        .execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn query(path: &std::path::Path, sql: &str) -> Vec<Vec<Option<String>>> {
    let conn = rusqlite::Connection::open(path).expect("open sqlite");
    let mut st = conn.prepare(sql).expect("prepare");
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => None,
                    rusqlite::types::ValueRef::Integer(v) => Some(v.to_string()),
                    rusqlite::types::ValueRef::Real(v) => Some(v.to_string()),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        Some(String::from_utf8_lossy(t).into_owned())
                    }
                })
            })
            .collect()
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Starts `recheck run` on the sandbox's `s.db` in the background, with JSON output.
fn spawn_run(sb: &Sandbox, server: &support::MockServer, extra: &[&str]) -> support::Running {
    let template = server.item_url_template();
    let mut args = vec![
        "run",
        "--task",
        "t",
        "--store",
        "s.db",
        "--url",
        template.as_str(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    sb.spawn(&args)
}

#[test]
fn a_row_replaced_while_its_request_is_in_flight_keeps_the_replacement() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    // A table without a primary key: its rowid is the only key, and SQLite reuses the
    // largest rowid after that row is deleted.
    exec(
        &db,
        "CREATE TABLE items(task_id TEXT, item_id TEXT, status TEXT, checked_at TEXT, last_error TEXT);
         INSERT INTO items VALUES ('t', 'slow1500-a', 'failed', NULL, NULL);",
    );
    let run = spawn_run(&sb, &server, &[]);
    support::wait_until("the request", Duration::from_secs(30), || {
        server.requests("slow1500-a") == 1
    });
    exec(
        &db,
        "DELETE FROM items WHERE item_id = 'slow1500-a';
         INSERT INTO items VALUES ('t', 'other', 'failed', NULL, NULL);",
    );
    let rowids = query(&db, "SELECT rowid FROM items");
    assert_eq!(rowids, vec![vec![Some("1".to_string())]], "rowid reused");
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        query(&db, "SELECT item_id, status, checked_at FROM items"),
        vec![vec![Some("other".into()), Some("failed".into()), None]],
        "the new row got the old item's answer"
    );
    let s = support::summary(&out);
    assert_eq!(s["checked"], 1);
    assert_eq!(s["conflicts"], 1, "{s}");
}

#[test]
fn a_status_changed_during_the_run_is_kept() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["slow1500-a", "ok-b"]);
    let run = spawn_run(&sb, &server, &[]);
    support::wait_until("the request", Duration::from_secs(30), || {
        server.requests("slow1500-a") == 1
    });
    exec(
        &db,
        "UPDATE items SET status = 'cancelled' WHERE item_id = 'slow1500-a'",
    );
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let a = support::sqlite_row(&db, "t", "slow1500-a");
    assert_eq!(
        a.status, "cancelled",
        "recheck overwrote the pipeline's change"
    );
    assert_eq!(a.checked_at, None, "bookkeeping written onto a changed row");
    assert_eq!(support::sqlite_row(&db, "t", "ok-b").status, "ok");
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_u64(), s["conflicts"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
}

#[test]
fn a_lease_taken_over_by_another_worker_is_not_written() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["slow1500-a"]);
    let run = spawn_run(&sb, &server, &[]);
    support::wait_until("the request", Duration::from_secs(30), || {
        server.requests("slow1500-a") == 1
    });
    // As if this worker's lease had run out and another worker had claimed the item.
    exec(
        &db,
        "UPDATE items SET lease_owner = 'elsewhere/1/1', lease_until = '2999-01-01T00:00:00.000Z'",
    );
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        query(&db, "SELECT status, lease_owner, checked_at FROM items"),
        vec![vec![
            Some("failed".into()),
            Some("elsewhere/1/1".into()),
            None
        ]]
    );
}

#[test]
fn odd_checked_at_values_do_not_keep_items_from_being_claimed() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ok-never", "ok-na", "ok-future", "ok-old"]);
    exec(
        &db,
        "UPDATE items SET checked_at = 'never' WHERE item_id = 'ok-never';
         UPDATE items SET checked_at = 'N/A' WHERE item_id = 'ok-na';
         UPDATE items SET checked_at = '2999-01-01T00:00:00.000Z' WHERE item_id = 'ok-future';
         UPDATE items SET checked_at = '2001-01-01T00:00:00.000Z' WHERE item_id = 'ok-old';",
    );
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 4);
    for id in ["ok-never", "ok-na", "ok-future", "ok-old"] {
        assert_eq!(support::sqlite_row(&db, "t", id).status, "ok", "{id}");
        assert_eq!(server.requests(id), 1, "{id}");
    }
}

#[test]
fn untyped_columns_holding_integers_match_integer_statuses() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    // The seed's table, without declared types; the pipeline wrote integers.
    exec(
        &db,
        "CREATE TABLE data(task_id, content, status);
         INSERT INTO data VALUES (7, 'ok-1', 5), (7, 'ok-2', '5'), (7, 'ok-3', 1), (8, 'ok-4', 5);",
    );
    let out = sb
        .run(&server, "7", "s.db")
        .args([
            "--table",
            "data",
            "--id-column",
            "content",
            "--failed-status",
            "5",
            "--ok-status",
            "1",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 2, "both 5 and '5' are failed");
    assert_eq!(
        query(
            &db,
            "SELECT content, status, typeof(status) FROM data ORDER BY content"
        ),
        vec![
            vec![
                Some("ok-1".into()),
                Some("1".into()),
                Some("integer".into())
            ],
            vec![
                Some("ok-2".into()),
                Some("1".into()),
                Some("integer".into())
            ],
            vec![
                Some("ok-3".into()),
                Some("1".into()),
                Some("integer".into())
            ],
            vec![
                Some("ok-4".into()),
                Some("5".into()),
                Some("integer".into())
            ],
        ]
    );
    assert_eq!(server.requests("ok-4"), 0, "another task's item");
}

#[test]
fn text_status_for_an_integer_column_is_refused() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    exec(
        &db,
        "CREATE TABLE items(task_id TEXT, item_id TEXT, status INTEGER);
         INSERT INTO items VALUES ('t', 'ok-1', 5);",
    );
    let before = support::snapshot(&db);
    let out = sb.run(&server, "t", "s.db").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--failed-status") && err.contains("holds integers"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(support::snapshot(&db), before);
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn refused_stores_are_left_byte_for_byte() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let cases: [(&str, &str, &str); 3] = [
        (
            "without_rowid.db",
            "CREATE TABLE items(task_id TEXT, item_id TEXT, status TEXT, PRIMARY KEY (task_id, item_id)) WITHOUT ROWID;
             INSERT INTO items VALUES ('t', 'ok-1', 'failed');",
            "items",
        ),
        (
            "view.db",
            "CREATE TABLE real_items(task_id TEXT, item_id TEXT, status TEXT);
             INSERT INTO real_items VALUES ('t', 'ok-1', 'failed');
             CREATE VIEW items AS SELECT * FROM real_items;",
            "is a view",
        ),
        (
            "malformed.db",
            "CREATE TABLE items(task_id TEXT, item_id TEXT, status TEXT, pad TEXT);",
            "damaged",
        ),
    ];
    for (file, sql, needle) in cases {
        let db = sb.path(file);
        exec(&db, sql);
        if file == "malformed.db" {
            // Enough rows for several pages, then garbage over a page in the middle.
            let conn = rusqlite::Connection::open(&db).unwrap();
            for i in 0..200 {
                conn.execute(
                    "INSERT INTO items VALUES ('t', ?1, 'failed', ?2)",
                    rusqlite::params![format!("ok-{i}"), "x".repeat(400)],
                )
                .unwrap();
            }
            drop(conn);
            let mut bytes = std::fs::read(&db).unwrap();
            let page = 4096;
            assert!(bytes.len() > 8 * page);
            for b in &mut bytes[5 * page..5 * page + 200] {
                *b = 0xA5;
            }
            std::fs::write(&db, bytes).unwrap();
        }
        let before = support::snapshot(&db);
        let out = sb.run(&server, "t", file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(needle), "{file}: {err}");
        assert_eq!(support::snapshot(&db), before, "{file} was modified");
    }
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn a_run_keeps_the_journal_mode_and_read_only_commands_leave_no_side_files() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ok-1", "404-2"]);
    let mode = || query(&db, "PRAGMA journal_mode")[0][0].clone();
    assert_eq!(mode().as_deref(), Some("delete"));
    let out = sb.run(&server, "t", "s.db").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        mode().as_deref(),
        Some("delete"),
        "the run switched the file to WAL"
    );
    assert_eq!(support::sqlite_row(&db, "t", "ok-1").status, "ok");

    // A WAL file (as `recheck import` creates) read by `status` and `--dry-run`.
    exec(&db, "PRAGMA journal_mode = WAL;");
    for args in [
        vec!["status", "--task", "t", "--store", "s.db"],
        vec![
            "run",
            "--task",
            "t",
            "--store",
            "s.db",
            "--dry-run",
            "--url",
            "http://127.0.0.1:9/{id}",
            "--retries",
            "0",
        ],
    ] {
        let out = sb.cmd().args(&args).output().unwrap();
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{args:?}: {out:?}"
        );
        for side in ["s.db-wal", "s.db-shm"] {
            assert!(!sb.path(side).exists(), "{args:?} left {side}");
        }
    }
}

#[test]
fn run_never_creates_a_store_and_names_the_closest_tasks() {
    let server = support::default_server();
    let sb = Sandbox::new();
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = sb
            .run(&server, "t", "typo.db")
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("typo.db") && err.contains("no such store"),
            "{err}"
        );
        assert!(!sb.path("typo.db").exists(), "a run created the store");
    }
    let db = sb.path("s.db");
    support::sqlite_store(&db, "transcode-2026-11-30", &["ok-1"]);
    support::sqlite_store(&db, "upload-7", &["ok-2"]);
    let before = support::snapshot(&db);
    let out = sb
        .run(&server, "transcode-2026-11-03", "s.db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no task \"transcode-2026-11-03\"")
            && err.contains("\"transcode-2026-11-30\""),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(support::snapshot(&db), before);
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn init_adds_the_missing_columns_to_an_existing_sqlite_table() {
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    exec(
        &db,
        "CREATE TABLE data(task_id TEXT, content TEXT, status INTEGER);
         INSERT INTO data VALUES ('t', 'a', 5);",
    );
    let out = sb
        .cmd()
        .args(["init", "--store", "s.db", "--table", "data"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("ADD COLUMN \"lease_owner\""), "{said}");
    let cols: Vec<String> = query(&db, "SELECT name FROM pragma_table_info('data')")
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    for c in [
        "http_status",
        "attempts",
        "last_error",
        "checked_at",
        "lease_owner",
        "lease_until",
        "checks",
        "first_checked_at",
        "next_check_at",
    ] {
        assert!(cols.iter().any(|x| x == c), "{c} missing: {cols:?}");
    }
    assert_eq!(
        query(&db, "SELECT content, status FROM data")[0][1].as_deref(),
        Some("5")
    );
    // A second init has nothing to add.
    let out = sb
        .cmd()
        .args(["init", "--store", "s.db", "--table", "data"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("already has every column"));
}
