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

/// Hangs' retries go on while new items are still starting, one at a time at
/// `--concurrency 4` (retries may hold a quarter of the slots while first attempts wait), so
/// their chains are not left for the end of the run and the other slots keep finding new
/// items.
#[test]
fn hang_retries_overlap_with_first_attempts_within_their_share() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    // Two hangs first, then 120 items answering after 50 ms: their first attempts take
    // about two seconds on the slots left, a hang's attempt 200 ms.
    let mut ids = vec!["hang-1".to_string(), "hang-2".to_string()];
    ids.extend((0..120).map(|i| format!("slow50-{i}")));
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&db, "t", &refs);
    sb.run(&server, "t", "s.db")
        .args(["--concurrency", "4", "--timeout", "200ms", "--retries", "2"])
        .args(["--backoff", "10ms..20ms"])
        // Without a host's own slots (which keep arrival order, and come first).
        .args(["--no-adaptive", "--circuit", "0"])
        .assert()
        .code(1);
    let paths = server.raw_paths();
    assert_eq!(paths.len(), 2 * 3 + 120, "{paths:?}");
    let at = |id: &str, nth: usize| {
        paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.ends_with(&format!("/{id}")))
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("request {nth} of {id} missing: {paths:?}"))
    };
    let last_first_attempt = at("slow50-119", 0);
    // With first attempts always first, every retry would come after the last of them.
    for hang in ["hang-1", "hang-2"] {
        assert!(
            at(hang, 2) < last_first_attempt,
            "{hang}'s last retry waited for every first attempt: {paths:?}"
        );
    }
    // With retries always first, the two hangs' retries would go together; within the
    // share, the second waits for the first to end (200 ms: about a dozen 50 ms answers on
    // the other three slots).
    let (a, b) = (
        at("hang-1", 1).min(at("hang-2", 1)),
        at("hang-1", 1).max(at("hang-2", 1)),
    );
    assert!(
        b - a > 4,
        "two retries were in flight while first attempts waited: {paths:?}"
    );
}
