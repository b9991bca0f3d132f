//! Retries: what is retried, how often, and how long the server's Retry-After holds us off.

use std::time::{Duration, Instant};

use crate::support::{self, Sandbox};

#[test]
fn retry_counts_per_class() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    let ids = [
        "503x2-1", "404-1", "s400-1", "500x1-1", "502x1-1", "504x1-1", "408x1-1", "429x1-1",
    ];
    support::sqlite_store(&db, "t", &ids);
    sb.run(&server, "t", "s.db").assert().code(1); // the 404 is not OK
    assert_eq!(server.requests("503x2-1"), 3, "503 twice then 200");
    assert_eq!(server.requests("404-1"), 1, "404 is final");
    assert_eq!(server.requests("s400-1"), 1, "400 is final");
    for id in ["500x1-1", "502x1-1", "504x1-1", "408x1-1", "429x1-1"] {
        assert_eq!(server.requests(id), 2, "{id} is retried once, then OK");
        assert_eq!(support::sqlite_row(&db, "t", id).status, "ok", "{id}");
    }
    assert_eq!(support::sqlite_row(&db, "t", "503x2-1").attempts, 3);
}

#[test]
fn retries_flag_bounds_attempts() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["s503-a", "s503-b"]);
    sb.run(&server, "t", "s.db")
        .args(["--retries", "0"])
        .assert()
        .code(1);
    assert_eq!(server.requests("s503-a"), 1);
    sb.run(&server, "t", "s.db")
        .args(["--retries", "4"])
        .assert()
        .code(1);
    assert_eq!(server.requests("s503-b"), 1 + 5);
    // attempts accumulate across runs
    assert_eq!(support::sqlite_row(&db, "t", "s503-a").attempts, 6);
}

#[test]
fn connection_refused_is_retried() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["x"]);
    sb.cmd()
        .args([
            "run",
            "--task",
            "t",
            "--store",
            "s.db",
            "--retries",
            "2",
            "--backoff",
            "1ms..2ms",
            "--url",
        ])
        .arg(format!("http://127.0.0.1:{port}/items/{{id}}"))
        .assert()
        .code(1);
    let row = support::sqlite_row(&db, "t", "x");
    assert_eq!(row.attempts, 3);
    let err = row.last_error.unwrap();
    assert!(
        err.contains("(after 3 attempts)") && err.to_lowercase().contains("connect"),
        "{err}"
    );
}

#[test]
fn retry_after_delays_the_next_attempt() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ra1x1-1"]);
    let started = Instant::now();
    sb.run(&server, "t", "s.db")
        .args(["--backoff", "1ms..10s"])
        .assert()
        .code(0);
    let took = started.elapsed();
    assert_eq!(server.requests("ra1x1-1"), 2);
    // A lower bound only: the second attempt waited for Retry-After: 1, not the 1 ms backoff.
    assert!(took >= Duration::from_millis(950), "took {took:?}");
    let log = server.answered();
    let times: Vec<_> = log
        .iter()
        .filter(|(id, _, _)| id == "ra1x1-1")
        .map(|e| e.2)
        .collect();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= Duration::from_millis(950),
        "{:?}",
        times[1] - times[0]
    );
}

#[test]
fn retry_after_is_capped_by_the_backoff_upper_bound() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ra30x1-1"]);
    sb.run(&server, "t", "s.db")
        .args(["--backoff", "1ms..100ms"])
        .assert()
        .code(0);
    let log = server.answered();
    let times: Vec<_> = log
        .iter()
        .filter(|(id, _, _)| id == "ra30x1-1")
        .map(|e| e.2)
        .collect();
    assert_eq!(times.len(), 2);
    // Waited at least the cap, and far less than the 30 s the server asked for.
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(95) && gap < Duration::from_secs(29),
        "{gap:?}"
    );
}
