//! A SQLite table without lease columns allows one run at a time. Workers sharing a task
//! through leases, a killed worker taken over and expired leases run on every backend in
//! the scenario table (`scenarios.rs`).

use std::time::Duration;

use crate::support::{self, MockConfig, Sandbox};

#[test]
fn a_table_without_lease_columns_allows_one_run() {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(200),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    rusqlite::Connection::open(sb.path("s.db"))
        .unwrap()
        .execute_batch("CREATE TABLE data(task_id, content, status); INSERT INTO data VALUES ('t', 'ok-1', 'failed');")
        .unwrap();
    let tmpl = server.item_url_template();
    let a = [
        "run",
        "--task",
        "t",
        "--store",
        "s.db",
        "--table",
        "data",
        "--id-column",
        "content",
        "--url",
        &tmpl,
    ];
    let first = sb.spawn(&a);
    support::wait_until("the first run to ask", Duration::from_secs(30), || {
        server.total_requests() >= 1
    });
    let out = sb.cmd().args(a).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("locked by another recheck run") && err.contains("no lease columns"),
        "{err}"
    );
    assert_eq!(first.wait(Duration::from_secs(30)).status.code(), Some(0));
    assert_eq!(server.total_requests(), 1);
}
