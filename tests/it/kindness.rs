//! Being kind to the API: a host's circuit opens on consecutive failures (its items are
//! deferred, exit 5, the run ends in seconds), a recovering host closes it through a probe,
//! one down host does not hold back another, and the adaptive per-host limit backs off a
//! host that answers 429 when overloaded.

use std::time::{Duration, Instant, SystemTime};

use crate::support::{self, Behavior, MockConfig, MockServer, Sandbox};

/// A SQLite store in the default schema (created by `recheck import`) with `rows` as failed
/// items of task `t`: (id, url).
fn store_with_urls(sb: &Sandbox, rows: &[(String, String)]) {
    let lines: String = rows
        .iter()
        .map(|(id, url)| format!("{}\n", serde_json::json!({"id": id, "url": url})))
        .collect();
    std::fs::write(sb.path("items.jsonl"), lines).unwrap();
    sb.cmd()
        .args(["import", "--task", "t", "--store", "s.db", "items.jsonl"])
        .assert()
        .success();
}

fn item_url(server: &MockServer, id: &str) -> String {
    server.item_url_template().replace("{id}", id)
}

/// The run, as a child process that must end within `bound` (else it is killed and the test
/// fails): the circuit's point is that a down API ends the run in seconds.
fn run_bounded(sb: &Sandbox, args: &[&str], bound: Duration) -> std::process::Output {
    spawn_run(sb, args).wait(bound)
}

/// `recheck run` on task `t` of `s.db`, its answers as JSON, started in the background.
fn spawn_run(sb: &Sandbox, args: &[&str]) -> support::Running {
    let mut all = vec![
        "run",
        "--task",
        "t",
        "--store",
        "s.db",
        "--backoff",
        "5ms..20ms",
        "--progress",
        "never",
        "--format",
        "json",
    ];
    all.extend_from_slice(args);
    sb.spawn(&all)
}

fn next_check_at(sb: &Sandbox, id: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(sb.path("s.db")).unwrap();
    conn.query_row(
        "SELECT next_check_at FROM items WHERE task_id = 't' AND item_id = ?1",
        [id],
        |r| r.get(0),
    )
    .unwrap()
}

/// Every request answered 503: after `--circuit 20` consecutive failures the circuit opens;
/// after the cool-down one probe goes and fails, and every item left is deferred: no more
/// requests (at most the 20, the 3 others in flight at that moment, and the probe), exit 5,
/// status kept, next_check_at set, and the summary says so.
#[test]
fn a_down_host_opens_its_circuit_and_its_items_are_deferred() {
    let server = support::server(MockConfig {
        default: Behavior::Status(503),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let rows: Vec<(String, String)> = (0..200)
        .map(|i| {
            let id = format!("x{i}");
            let url = item_url(&server, &id);
            (id, url)
        })
        .collect();
    store_with_urls(&sb, &rows);
    let before = SystemTime::now();
    let out = run_bounded(
        &sb,
        &["--circuit", "20", "--concurrency", "4"],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let s = support::summary(&out);
    let first_requests = server.total_requests();
    // Every output says it (a second run, asking the deferred items anyway).
    let outputs = run_bounded(
        &sb,
        &[
            "--circuit",
            "20",
            "--ignore-schedule",
            "--report",
            "r.jsonl",
            "--junit",
            "j.xml",
            "--metrics-file",
            "m.prom",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(outputs.status.code(), Some(5), "{outputs:?}");
    // Each item once, though --ignore-schedule lets the second pass over the task see the
    // deferred ones again.
    let again = support::summary(&outputs);
    assert_eq!(
        again["deferred"].as_u64().unwrap() + again["checked"].as_u64().unwrap(),
        200,
        "{again}"
    );
    let report = std::fs::read_to_string(sb.path("r.jsonl")).unwrap();
    let deferred_lines = report
        .lines()
        .filter(|l| l.contains(r#""outcome":"deferred""#))
        .count();
    assert!(deferred_lines >= 150, "{deferred_lines} deferred lines");
    let junit = std::fs::read_to_string(sb.path("j.xml")).unwrap();
    assert!(junit.contains("<skipped"), "{junit}");
    let prom = std::fs::read_to_string(sb.path("m.prom")).unwrap();
    let line = prom
        .lines()
        .find(|l| l.starts_with("recheck_last_run_deferred{"))
        .unwrap_or_else(|| panic!("{prom}"));
    assert!(!line.ends_with(" 0"), "{line}");
    assert!(first_requests <= 20 + 3 + 1, "{first_requests}");
    assert_eq!(
        s["deferred"].as_u64().unwrap() + s["checked"].as_u64().unwrap(),
        200,
        "{s}"
    );
    assert!(s["deferred"].as_u64().unwrap() >= 190, "{s}");
    let host = &s["hosts"][0];
    assert_eq!(host["circuit"], "open", "{s}");
    assert_eq!(host["circuit_failures"], 20, "{s}");
    assert_eq!(host["deferred"], s["deferred"], "{s}");
    let rows = support::sqlite_rows(&sb.path("s.db"), "t");
    assert!(rows.values().all(|r| r.status == "failed"), "status kept");
    // Due again when the circuit would let a probe through: a doubled cool-down from now.
    let deferred = rows
        .iter()
        .find(|(_, r)| r.checked_at.is_none())
        .map(|(id, _)| id.clone())
        .expect("a deferred item");
    let next = next_check_at(&sb, &deferred).expect("next_check_at set");
    let next = humantime::parse_rfc3339(&next).unwrap();
    let wait = next.duration_since(before).unwrap();
    assert!(
        wait >= Duration::from_secs(10) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );

    // The text summary names the host, the failures and the deferred items; the next run
    // does not ask for them before they are due.
    let again = run_bounded(
        &sb,
        &["--circuit", "20", "--format", "text"],
        Duration::from_secs(60),
    );
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("not due"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("circuit opened"), "{err}");
}

/// The text line of a run whose circuit opened.
#[test]
fn the_summary_line_names_the_host_and_the_deferred_items() {
    let server = support::server(MockConfig {
        default: Behavior::Status(500),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let rows: Vec<(String, String)> = (0..30)
        .map(|i| (format!("x{i}"), item_url(&server, &format!("x{i}"))))
        .collect();
    store_with_urls(&sb, &rows);
    let out = run_bounded(
        &sb,
        &["--circuit", "5", "--concurrency", "1", "--format", "text"],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let host = server.url().trim_start_matches("http://").to_string();
    let line = text
        .lines()
        .find(|l| l.contains("circuit opened"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.trim_start().starts_with(&format!(
            "{host}: circuit opened after 5 consecutive failures at "
        )) && line.contains(" UTC, ")
            && line.contains(" items deferred"),
        "{line}"
    );
    assert!(
        server.total_requests() <= 5 + 1,
        "{}",
        server.total_requests()
    );
}

/// A host that is down at first and then recovers: the circuit opens, the probe after the
/// cool-down is answered, the circuit closes and every item is checked (exit 0).
#[test]
fn a_recovering_host_closes_its_circuit_through_a_probe() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let ids: Vec<String> = (0..100).map(|i| format!("x{i}")).collect();
    for id in &ids {
        server.set(id, Behavior::Status(503));
    }
    let rows: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), item_url(&server, id)))
        .collect();
    store_with_urls(&sb, &rows);
    let child = spawn_run(
        &sb,
        &["--circuit", "10", "--concurrency", "2", "--retries", "100"],
    );
    // The circuit is open once 10 requests failed; the API comes back during the cool-down.
    let started = Instant::now();
    while server.total_requests() < 10 {
        assert!(started.elapsed() < Duration::from_secs(30), "no requests");
        std::thread::sleep(Duration::from_millis(5));
    }
    let failed_before_recovery = server.total_requests();
    for id in &ids {
        server.set(id, Behavior::Ok);
    }
    let out = child.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_u64(), s["deferred"].as_u64()),
        (Some(100), Some(0)),
        "{s}"
    );
    assert_eq!(s["hosts"][0]["circuit"], "closed again", "{s}");
    assert!(failed_before_recovery <= 10 + 1, "{failed_before_recovery}");
    let rows = support::sqlite_rows(&sb.path("s.db"), "t");
    assert!(rows.values().all(|r| r.status == "ok"));
}

/// A table without `next_check_at` (nothing keeps a deferred item out of a claim): the
/// second pass over the task, which picks up released claims, does not hand the deferred
/// items out again; each is deferred and counted once.
#[test]
fn without_next_check_at_each_deferred_item_is_counted_once() {
    let server = support::server(MockConfig {
        default: Behavior::Status(503),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let ids: Vec<String> = (0..300).map(|i| format!("x{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("s.db"), "t", &refs);
    let out = run_bounded(
        &sb,
        &[
            "--url",
            &server.item_url_template(),
            "--circuit",
            "5",
            "--concurrency",
            "2",
            "--report",
            "r.jsonl",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(
        s["deferred"].as_u64().unwrap() + s["checked"].as_u64().unwrap(),
        300,
        "{s}"
    );
    assert_eq!(s["unchecked"], 0, "{s}");
    let report = std::fs::read_to_string(sb.path("r.jsonl")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in report.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["item_id"].as_str().unwrap().to_string();
        assert!(seen.insert(id.clone()), "{id} reported twice");
    }
    assert_eq!(seen.len(), 300);
}

/// Two hosts, one down: the other's items are all checked, the down one's deferred (exit
/// 5), and the per-host table has both.
#[test]
fn one_down_host_does_not_hold_back_another() {
    let down = support::server(MockConfig {
        default: Behavior::Status(503),
        ..MockConfig::default()
    });
    let up = support::default_server();
    let sb = Sandbox::new();
    let rows: Vec<(String, String)> = (0..200)
        .map(|i| {
            let id = format!("x{i}");
            let server = if i % 2 == 0 { &down } else { &up };
            let url = item_url(server, &id);
            (id, url)
        })
        .collect();
    store_with_urls(&sb, &rows);
    let out = run_bounded(
        &sb,
        &["--circuit", "20", "--concurrency", "8"],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(s["ok"], 100, "{s}");
    assert_eq!(up.total_requests(), 100);
    assert!(
        down.total_requests() <= 20 + 7 + 1,
        "{}",
        down.total_requests()
    );
    let hosts = s["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{s}");
    let up_name = up.url().trim_start_matches("http://").to_string();
    let up_line = hosts
        .iter()
        .find(|h| h["host"] == up_name.as_str())
        .unwrap();
    assert_eq!(up_line["answers"]["2xx"], 100);
    assert_eq!(up_line["circuit"], "closed");
    let rows = support::sqlite_rows(&sb.path("s.db"), "t");
    let ok = rows.values().filter(|r| r.status == "ok").count();
    assert_eq!(ok, 100);
}

/// A host that answers 429 whenever more than 10 requests are in flight, asked with
/// `--per-host 50`: with the adaptive limit the host's requests in flight come down toward
/// 10 once the limit has adapted (sampled after the first 400 answers: about 14, where a
/// quarter of the first attempts are refused, with spikes into the 20s on a loaded machine)
/// and the 429s stay far below what a fixed limit of 50 gets.
#[test]
fn the_adaptive_limit_backs_off_an_overloaded_host() {
    let run = |adaptive: &str| {
        let server = std::sync::Arc::new(support::server(MockConfig {
            latency: Duration::from_millis(20),
            overload_above: Some(10),
            ..MockConfig::default()
        }));
        let sb = Sandbox::new();
        let ids: Vec<String> = (0..600).map(|i| format!("ok-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        support::sqlite_store(&sb.path("s.db"), "t", &refs);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The most requests in flight once 400 answers came (the limit has adapted by then).
        let sampler = {
            let (server, done) = (std::sync::Arc::clone(&server), std::sync::Arc::clone(&done));
            std::thread::spawn(move || {
                let mut most = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if server.answered().len() >= 400 {
                        most = most.max(server.in_flight());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                most
            })
        };
        let out = sb
            .run(&server, "t", "s.db")
            .args(["--concurrency", "100", "--per-host", "50", adaptive])
            .args([
                "--retries",
                "20",
                "--backoff",
                "20ms..200ms",
                "--format",
                "json",
            ])
            .output()
            .unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let steady_most = sampler.join().unwrap();
        let refused = server.answered().iter().filter(|a| a.1 == 429).count();
        eprintln!(
            "{adaptive}: {refused} answers 429 of {} requests, at most {steady_most} in flight after 400 answers",
            server.total_requests(),
        );
        (out, refused, steady_most)
    };
    let (fixed, fixed_429, fixed_most) = run("--no-adaptive");
    let (adaptive, adaptive_429, adaptive_most) = run("--adaptive");
    assert_eq!(adaptive.status.code(), Some(0), "{adaptive:?}");
    let s = support::summary(&adaptive);
    assert_eq!(s["ok"], 600, "{s}");
    let host = &s["hosts"][0];
    let lowest = host["lowest_limit"].as_u64().unwrap();
    assert!(lowest < 50, "the limit never went down: {host}");
    assert_eq!(host["max_limit"], 50);
    assert!(
        adaptive_most <= 30 && fixed_most > 40,
        "in flight once adapted: adaptive {adaptive_most}, fixed {fixed_most}"
    );
    assert!(
        adaptive_429 * 10 < fixed_429,
        "429s: adaptive {adaptive_429}, fixed {fixed_429}"
    );
    let fixed_host = &support::summary(&fixed)["hosts"][0];
    assert_eq!(
        fixed_host["lowest_limit"], 50,
        "--no-adaptive keeps the limit"
    );
}
