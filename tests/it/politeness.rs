//! Load shaping: --rate, --per-host, and a host's Retry-After pausing new requests to it.

use std::time::{Duration, Instant};

use crate::support::{self, MockConfig, Sandbox};

fn store(sb: &Sandbox, ids: &[String]) {
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
}

#[test]
fn rate_is_not_faster_than_its_rate() {
    let server = support::default_server();
    let sb = Sandbox::new();
    store(
        &sb,
        &(0..200).map(|i| format!("ok-{i}")).collect::<Vec<_>>(),
    );
    let started = Instant::now();
    sb.run(&server, "t", "s.db")
        .args(["--rate", "50", "--concurrency", "100"])
        .assert()
        .code(0);
    let took = started.elapsed();
    assert_eq!(server.total_requests(), 200);
    // 200 starts at 50/s, evenly spaced: 199 gaps of 20 ms. A lower bound only.
    assert!(took >= Duration::from_millis(3500), "took {took:?}");
    // ...and the starts really are spread: no 100 ms holds more than 5 + 1 of them.
    let mut times: Vec<Instant> = server.answered().into_iter().map(|e| e.2).collect();
    times.sort();
    for w in times.windows(7) {
        assert!(
            w[6] - w[0] >= Duration::from_millis(100),
            "7 starts within {:?}",
            w[6] - w[0]
        );
    }
}

#[test]
fn per_host_bounds_one_host_below_concurrency() {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    store(
        &sb,
        &(0..300).map(|i| format!("ok-{i}")).collect::<Vec<_>>(),
    );
    sb.run(&server, "t", "s.db")
        .args(["--per-host", "3", "--concurrency", "50"])
        .assert()
        .code(0);
    assert_eq!(server.total_requests(), 300);
    assert_eq!(server.high_water(), 3);
}

#[test]
fn retry_after_pauses_the_whole_host() {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(30),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let mut ids = vec!["ra2x1-first".to_string()];
    ids.extend((0..40).map(|i| format!("ok-{i}")));
    store(&sb, &ids);
    sb.run(&server, "t", "s.db")
        .args(["--concurrency", "4", "--backoff", "10ms..10s"])
        .assert()
        .code(0);
    let log = server.answered();
    let (_, _, t429) = log
        .iter()
        .find(|(id, s, _)| id == "ra2x1-first" && *s == 429)
        .cloned()
        .unwrap();
    // Requests already in flight finish; nothing new starts until the 2 s are over.
    let quiet: Vec<_> = log
        .iter()
        .filter(|(_, _, t)| {
            *t > t429 + Duration::from_millis(100) && *t < t429 + Duration::from_millis(1900)
        })
        .collect();
    assert!(quiet.is_empty(), "answers during the pause: {quiet:?}");
    assert_eq!(
        support::sqlite_row(&sb.path("s.db"), "t", "ra2x1-first").status,
        "ok"
    );
}
