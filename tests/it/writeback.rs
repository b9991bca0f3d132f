//! Write-back you can trust, what only SQLite has: untyped columns, start-up refusals that
//! leave the file alone byte for byte, a missing file never created, and the file's own
//! journal mode kept. Compare-and-set, odd `checked_at` text, refused statuses, unknown
//! tasks and `init --table` run on every backend in the scenario table (`scenarios.rs`).

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
fn run_never_creates_a_sqlite_store() {
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
}
