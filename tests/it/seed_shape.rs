//! The seed script's table: `data(task_id, content, status INTEGER)`, 5 = failed, 1 = ok.

use crate::support::{self, Sandbox};

#[test]
fn seed_table_with_integer_statuses() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("seed.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE data(id INTEGER PRIMARY KEY, task_id INTEGER, content TEXT, status INTEGER, extra TEXT);
         INSERT INTO data(task_id, content, status, extra) VALUES
           (42, 'ok-1', 5, 'x'), (42, 'ok-2', 5, 'y'), (42, 'fail-1', 5, NULL), (42, 's500-1', 5, NULL),
           (42, 'ok-3', 3, NULL),   -- another status: not ours
           (7,  'ok-4', 5, NULL);   -- another task: not ours",
    )
    .unwrap();
    drop(conn);
    sb.cmd()
        .args([
            "run",
            "--task",
            "42",
            "--store",
            "seed.db",
            "--table",
            "data",
            "--id-column",
            "content",
            "--failed-status",
            "5",
            "--ok-status",
            "1",
            "--expect-json",
            "/status=done",
            "--retries",
            "1",
            "--backoff",
            "1ms..2ms",
            "--url",
        ])
        .arg(server.item_url_template())
        .assert()
        .code(1);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(String, i64, rusqlite::types::Value)> = conn
        .prepare("SELECT content, status, typeof(status) FROM data ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let got: Vec<(&str, i64)> = rows.iter().map(|(c, s, _)| (c.as_str(), *s)).collect();
    assert_eq!(
        got,
        [
            ("ok-1", 1),
            ("ok-2", 1),
            ("fail-1", 5),
            ("s500-1", 5),
            ("ok-3", 3),
            ("ok-4", 5)
        ]
    );
    // Written as INTEGER, not as the text '1'.
    for (c, _, t) in &rows {
        assert_eq!(*t, rusqlite::types::Value::Text("integer".into()), "{c}");
    }
    assert_eq!(server.requests("ok-3"), 0);
    assert_eq!(server.requests("ok-4"), 0);
    assert_eq!(server.requests("s500-1"), 2);
    // No bookkeeping columns in this table: nothing else was added.
    let cols: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_table_info('data')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(cols, 5);
}

#[test]
fn template_columns_fill_from_the_row() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE jobs(task TEXT, job TEXT, state TEXT, kind TEXT);
         INSERT INTO jobs VALUES ('t', '1', 'bad', 'ok'), ('t', '2', 'bad', 'fail');",
    )
    .unwrap();
    drop(conn);
    sb.cmd()
        .args([
            "run",
            "--task",
            "t",
            "--store",
            "s.db",
            "--table",
            "jobs",
            "--task-column",
            "task",
            "--id-column",
            "job",
            "--status-column",
            "state",
            "--failed-status",
            "bad",
            "--ok-status",
            "good",
            "--expect-json",
            "/ok=true",
            "--url",
        ])
        .arg(format!(
            "{}/items/{{kind}}-{{id}}?task={{task}}",
            server.url()
        ))
        .assert()
        .code(1);
    assert_eq!(server.requests("ok-1"), 1);
    assert_eq!(server.requests("fail-2"), 1);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let states: Vec<String> = conn
        .prepare("SELECT state FROM jobs ORDER BY job")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(states, ["good", "bad"]);
}
