//! Graceful stops: SIGINT, SIGTERM and --deadline write every answer received, invent none,
//! and exit promptly even while the server hangs.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::{self, MockConfig, Sandbox};

/// 1,200 items: every 50th hangs forever (24, fewer than the 50 request slots, so the run
/// goes on around them), the rest answer OK after 20 ms.
fn setup() -> (support::MockServer, Sandbox, Vec<String>) {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let ids: Vec<String> = (0..1200)
        .map(|i| {
            if i % 50 == 0 {
                format!("hang-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
    (server, sb, ids)
}

/// The items of [`stalling_setup`], in order: how many of each kind.
const FIRST_PART: usize = 450;
const HANG_BEFORE: usize = 31;
const SLOW: usize = 10;
/// More than the slots the slow items free (10) and the items that may wait for a slot
/// (50, `max_in_progress`), so nothing after it is requested while the run goes on.
const HANG_AFTER: usize = 70;
/// The slow items answer this long after they arrive: within the stop's 1 s grace.
const SLOW_PREFIX: &str = "slow700";

/// 1,200 items on which a run gets stuck by itself, so that a stop always comes mid-run
/// whenever the signal comes. With 50 request slots: the first 450 as in [`setup`] (every
/// 50th hangs: 9 of them, 441 OK); then 31 that hang (40 slots now hang), 10 that answer
/// OK 700 ms after they arrive, 70 that hang, and 639 OK ones. Once the 10 slow items are
/// in flight, every slot holds a hanging or a slow request; when the slow ones answer,
/// hanging ones take their slots and the run cannot go on (until the 60 s `--timeout`).
/// The items after the second hanging block are never requested unless a stop fails to
/// stop the run.
fn stalling_setup() -> (support::MockServer, Sandbox, Vec<String>) {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let slow = FIRST_PART + HANG_BEFORE..FIRST_PART + HANG_BEFORE + SLOW;
    let ids: Vec<String> = (0..1200)
        .map(|i| {
            if i < FIRST_PART {
                if i % 50 == 0 {
                    format!("hang-{i}")
                } else {
                    format!("ok-{i}")
                }
            } else if slow.contains(&i) {
                format!("{SLOW_PREFIX}-{i}")
            } else if i < slow.end + HANG_AFTER {
                format!("hang-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
    (server, sb, ids)
}

fn run_args(server: &support::MockServer) -> Vec<String> {
    [
        "run",
        "--task",
        "t",
        "--store",
        "s.db",
        "--concurrency",
        "50",
        "--timeout",
        "60s",
        "--format",
        "json",
        "--url",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([server.item_url_template()])
    .collect()
}

/// The store holds exactly the answers the server sent: none lost, none invented.
fn store_matches_server(sb: &Sandbox, server: &support::MockServer, ids: &[String]) -> usize {
    let rows = support::sqlite_rows(&sb.path("s.db"), "t");
    let answered = support::answered_with(server, 200);
    let written: HashSet<String> = rows
        .iter()
        .filter(|(_, r)| r.checked_at.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let lost: Vec<_> = answered.difference(&written).collect();
    let invented: Vec<_> = written.difference(&answered).collect();
    assert!(lost.is_empty(), "answered but not written: {lost:?}");
    assert!(
        invented.is_empty(),
        "written without an answer: {invented:?}"
    );
    for id in ids {
        let r = &rows[id];
        assert_eq!(r.status == "ok", answered.contains(id), "{id}: {r:?}");
    }
    // Graceful stops give their claims back.
    let conn = rusqlite::Connection::open(sb.path("s.db")).unwrap();
    let held: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM items WHERE lease_owner IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(held, 0, "claims left behind");
    written.len()
}

/// A stop mid-run, proven from counts rather than from how soon the signal follows the
/// 400th request: the run is stuck when the signal comes (see [`stalling_setup`]), so
/// however late it comes, the answers written are those of the first part and the slow
/// items (which normally answer during the stop's grace, else just before the signal),
/// and a stop that does not stop the run (that takes new items once the hanging checks
/// are abandoned) requests the items after the second hanging block.
fn stop_with(sig: i32) {
    let (server, sb, ids) = stalling_setup();
    let args = run_args(&server);
    let run = sb.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let slow: Vec<&String> = ids
        .iter()
        .filter(|id| id.starts_with(SLOW_PREFIX))
        .collect();
    support::wait_until(
        "the slow items to be asked",
        Duration::from_secs(60),
        || slow.iter().all(|id| server.requests(id) > 0),
    );
    run.signal(sig);
    let signalled = Instant::now();
    let out = run.wait(Duration::from_secs(40));
    let took = signalled.elapsed();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    // The checks in flight got their grace (hanging ones are in flight whenever the signal
    // comes), and no more: the hanging requests would hold the run for their 60 s
    // --timeout. A lower bound that load cannot break, and an upper one far from both.
    assert!(
        took >= recheck::commands::STOP_GRACE && took < Duration::from_secs(30),
        "exit took {took:?} after the signal"
    );
    let s = support::summary(&out);
    assert_eq!(s["interrupted"], true);
    let written = store_matches_server(&sb, &server, &ids);
    assert_eq!(s["checked"], written as u64);
    for id in &slow {
        assert_eq!(
            support::sqlite_row(&sb.path("s.db"), "t", id).status,
            "ok",
            "{id}: its answer came in the grace or before the stop"
        );
    }
    let tail = FIRST_PART + HANG_BEFORE + SLOW + HANG_AFTER;
    let after: Vec<_> = ids[tail..]
        .iter()
        .filter(|id| server.requests(id) > 0)
        .collect();
    assert!(after.is_empty(), "requested after the stop: {after:?}");
    // The 441 OK items of the first part and the 10 slow ones, but for a few of the
    // first part's last that may have lost their slot to a hanging one of the blocks.
    let most = FIRST_PART - FIRST_PART.div_ceil(50) + SLOW;
    assert!(
        (300..=most).contains(&written),
        "stopped mid-run: {written} written"
    );
}

#[test]
fn sigint_mid_run() {
    stop_with(libc::SIGINT);
}

#[test]
fn sigterm_mid_run() {
    stop_with(libc::SIGTERM);
}

/// A dropped SSH session (SIGHUP) stops the run like SIGTERM: what was answered is written.
#[test]
fn sighup_mid_run() {
    stop_with(libc::SIGHUP);
}

#[test]
fn a_second_signal_exits_at_once_and_the_store_survives() {
    let (server, sb, ids) = setup();
    let args = run_args(&server);
    let run = sb.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    support::wait_until("the run to be under way", Duration::from_secs(30), || {
        server.total_requests() >= 200
    });
    run.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(50));
    run.signal(libc::SIGINT);
    let second = Instant::now();
    let out = run.wait(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(
        second.elapsed() < Duration::from_millis(900),
        "took {:?}",
        second.elapsed()
    );
    let conn = rusqlite::Connection::open(sb.path("s.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // Nothing invented: every OK row was answered OK.
    let answered = support::answered_with(&server, 200);
    for (id, row) in support::sqlite_rows(&sb.path("s.db"), "t") {
        if row.status == "ok" {
            assert!(answered.contains(&id), "{id} is ok without an answer");
        }
    }
    // A re-run finishes the task: the claims of the process that exited at once are free
    // again because it is gone. The hanging items now answer 404 (still not OK, so exit
    // 1), instead of a short --timeout cutting them off: that cut OK items off too on a
    // loaded machine (an OK answer later than 200 ms).
    for id in ids.iter().filter(|id| id.starts_with("hang-")) {
        server.set(id, support::Behavior::NotFound);
    }
    let out = sb
        .cmd()
        .args(&args[..args.len() - 2])
        .args(["--retries", "0", "--url"])
        .arg(server.item_url_template())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rows = support::sqlite_rows(&sb.path("s.db"), "t");
    for id in ids.iter().filter(|id| id.starts_with("ok-")) {
        assert_eq!(rows[id].status, "ok", "{id}");
    }
}

#[test]
fn deadline_stops_writes_back_and_exits_3() {
    let (server, sb, ids) = setup();
    let started = Instant::now();
    let out = sb
        .cmd()
        .args(run_args(&server))
        .args(["--deadline", "1s", "--concurrency", "20"])
        .output()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(s["deadline_reached"], true);
    assert_eq!(s["interrupted"], false);
    let written = store_matches_server(&sb, &server, &ids);
    assert_eq!(s["checked"], written as u64);
    assert!(written > 0 && written < 1000, "{written}");
    // The first page of 1,000 was claimed at once: what of it got no answer is unchecked
    // (and kept its status, as store_matches_server showed).
    let unchecked = s["unchecked"].as_u64().expect("unchecked");
    assert!(
        unchecked >= 1000 - written as u64 && unchecked + written as u64 <= 1200,
        "unchecked {unchecked}, written {written}"
    );
    assert_eq!(s["backlog"], 1200 - s["ok"].as_u64().unwrap(), "{s}");
}
