//! Several `recheck run` processes on one SQLite task split the work through leases.

use std::time::Duration;

use crate::support::{self, MockConfig, Sandbox};

fn setup(n: usize) -> (support::MockServer, Sandbox, Vec<String>) {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let ids: Vec<String> = (0..n)
        .map(|i| {
            if i % 10 == 0 {
                format!("fail-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
    (server, sb, ids)
}

fn args(server: &support::MockServer, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--task",
        "t",
        "--store",
        "s.db",
        "--concurrency",
        "20",
        "--expect-json",
        "/status=done",
        "--format",
        "json",
        "--url",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(server.item_url_template());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn two_workers_check_every_item_once() {
    let (server, sb, ids) = setup(3000);
    let a = args(&server, &[]);
    let first = sb.spawn(&strs(&a));
    let second = sb.spawn(&strs(&a));
    let outs = [
        first.wait(Duration::from_secs(60)),
        second.wait(Duration::from_secs(60)),
    ];
    let mut checked = Vec::new();
    for out in &outs {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        checked.push(support::summary(out)["checked"].as_u64().unwrap());
    }
    assert_eq!(server.per_id_max(), 1, "an item was checked twice");
    assert_eq!(server.total_requests(), 3000);
    assert_eq!(checked.iter().sum::<u64>(), 3000, "{checked:?}");
    assert!(
        checked.iter().all(|&c| c >= 300),
        "the work was not shared: {checked:?}"
    );
    let rows = support::sqlite_rows(&sb.path("s.db"), "t");
    for id in &ids {
        let want = if id.starts_with("ok-") {
            "ok"
        } else {
            "failed"
        };
        assert_eq!(rows[id].status, want, "{id}");
    }
}

#[test]
fn a_killed_worker_is_taken_over() {
    let (server, sb, ids) = setup(4000);
    let a = args(&server, &["--lease", "2s"]);
    let victim = sb.spawn(&strs(&a));
    let survivor = sb.spawn(&strs(&a));
    support::wait_until("both workers under way", Duration::from_secs(30), || {
        server.total_requests() >= 800
    });
    victim.signal(libc::SIGKILL);
    let _ = victim.wait(Duration::from_secs(10));
    let out = survivor.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // Only what the killed worker had in hand (claimed, maybe answered, not saved) was
    // checked twice; nothing three times.
    let counts = server.all_requests();
    let twice = counts.values().filter(|&&n| n == 2).count();
    assert!(
        counts.values().all(|&n| n <= 2),
        "an item was checked 3 times"
    );
    assert!(twice <= 1000, "{twice} items checked twice");
    // The survivor saw the victim die (same host) and took its claims over: the task is
    // done. Where the victim ran on another host, a third run after the lease would do it.
    let rows = support::sqlite_rows(&sb.path("s.db"), "t");
    for id in &ids {
        let want = if id.starts_with("ok-") {
            "ok"
        } else {
            "failed"
        };
        assert_eq!(rows[id].status, want, "{id}");
        assert!(rows[id].checked_at.is_some(), "{id} never checked");
    }
    let conn = rusqlite::Connection::open(sb.path("s.db")).unwrap();
    let held: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM items WHERE lease_owner IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(held, 0, "claims left behind");
}

#[test]
fn expired_leases_of_another_host_are_taken_over() {
    let (server, sb, ids) = setup(50);
    // Another host's worker claimed ten items and vanished; its lease ended a second ago.
    let conn = rusqlite::Connection::open(sb.path("s.db")).unwrap();
    let past =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() - Duration::from_secs(1))
            .to_string();
    let future =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() + Duration::from_secs(600))
            .to_string();
    conn.execute(
        "UPDATE items SET lease_owner = 'elsewhere/1/1', lease_until = ?1 WHERE rowid <= 10",
        [&past],
    )
    .unwrap();
    // ...and a live one holds five more.
    conn.execute(
        "UPDATE items SET lease_owner = 'elsewhere/2/1', lease_until = ?1 WHERE rowid > 45",
        [&future],
    )
    .unwrap();
    drop(conn);
    let out = sb.cmd().args(args(&server, &[])).output().unwrap();
    assert_eq!(support::summary(&out)["checked"], 45);
    let rows = support::sqlite_rows(&sb.path("s.db"), "t");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(rows[id].checked_at.is_some(), i < 45, "{id}");
    }
}

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
