//! Load shaping: --rate, --per-host, and a host's Retry-After pausing new requests to it.

use std::time::{Duration, Instant};

use crate::support::{self, MockConfig, Sandbox};

fn store(sb: &Sandbox, ids: &[String]) {
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
}

/// `--rate 50`: one start every 20 ms at most.
const RATE: &str = "50";
const GAP: Duration = Duration::from_millis(20);

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
        .args(["--rate", RATE, "--concurrency", "100"])
        .assert()
        .code(0);
    let took = started.elapsed();
    assert_eq!(server.total_requests(), 200);
    // A lower bound only, so load cannot break it: the limiter grants one start per 20 ms
    // at most (a burst of one), so 200 starts span at least 199 gaps = 3.98 s, with 100
    // request slots free to go at once. 30 ms of that is left for the limiter's clock
    // (TSC-based) to differ from ours. A per-slot limiter, or one letting concurrent
    // waiters through together, ends far sooner; small bursts are for the next test.
    assert!(
        took >= GAP * 199 - Duration::from_millis(30),
        "took {took:?}"
    );
}

/// The starts are spread evenly, not bunched: proven from the server's log by causality,
/// so that a loaded machine (the server, or `recheck`, descheduled for a while) cannot
/// break it. With `--concurrency 1` the run holds m = `max_in_progress(1)` items in
/// progress at once, and takes an item only once an earlier one ended, after its answer
/// was logged. So when the (i+m)-th start is granted, at least i answers are logged: the
/// i-th logged time τ(i) ≤ G(i+m), the (i+m)-th grant. Every logged request was granted
/// before it was logged: G(j) ≤ τ(j). Grants are 20 ms apart at least, hence
/// τ(j) − τ(i) ≥ G(j) − G(i+m) ≥ (j − i − m) × 20 ms for every j > i + m, whatever the
/// delays (less 1 ms + 0.1 % for the limiter's TSC clock against ours). A burst of m + 2
/// at once breaks it (the answers are immediate: a burst is logged within a few ms), and
/// so does a rate a few percent too fast (over the 99 gaps).
#[test]
fn rate_spaces_every_start() {
    let server = support::default_server();
    let sb = Sandbox::new();
    store(
        &sb,
        &(0..100).map(|i| format!("ok-{i}")).collect::<Vec<_>>(),
    );
    sb.run(&server, "t", "s.db")
        .args(["--rate", RATE, "--concurrency", "1"])
        .assert()
        .code(0);
    assert_eq!(server.total_requests(), 100);
    let mut times: Vec<Instant> = server.answered().into_iter().map(|e| e.2).collect();
    times.sort();
    let m = recheck::commands::max_in_progress(1);
    for i in 0..times.len() {
        for j in i + m + 1..times.len() {
            let least = GAP * u32::try_from(j - i - m).expect("few items");
            let least = least - least / 1000 - Duration::from_millis(1);
            assert!(
                times[j] - times[i] >= least,
                "starts {i} and {j} only {:?} apart, {least:?} at least",
                times[j] - times[i]
            );
        }
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
