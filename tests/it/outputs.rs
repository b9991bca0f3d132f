//! The operator's files: `--report` (JSON Lines), `--junit` (JUnit XML) and
//! `--metrics-file` (Prometheus text format), read back with real parsers.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{self, MockConfig, Sandbox};

const SECRET: &str = "s3cret-outputs-token";

/// (id, outcome, http_status, attempts, error fragment) with `--retries 2`.
type Case = (
    &'static str,
    &'static str,
    Option<u64>,
    u64,
    Option<&'static str>,
);

const CASES: &[Case] = &[
    ("ok-1", "ok", Some(200), 1, None),
    ("503x2-1", "ok", Some(200), 3, None),
    (
        "fail-1",
        "still_failed",
        Some(200),
        1,
        Some(r#"/status is "processing", expected "done""#),
    ),
    (
        "404-1",
        "not_found",
        Some(404),
        1,
        Some("HTTP 404 Not Found"),
    ),
    (
        "s500-1",
        "error",
        Some(500),
        3,
        Some("HTTP 500 Internal Server Error (after 3 attempts)"),
    ),
    (
        "s401-1",
        "error",
        Some(401),
        1,
        Some("unexpected HTTP 401 Unauthorized"),
    ),
    ("garbage-1", "error", Some(200), 1, Some("invalid JSON")),
];

fn ids() -> Vec<&'static str> {
    CASES.iter().map(|c| c.0).collect()
}

/// A server that answers only requests carrying the secret header (so it was sent).
fn secret_server() -> support::MockServer {
    support::server(MockConfig {
        require_header: Some(("authorization".into(), format!("Bearer {SECRET}"))),
        ..MockConfig::default()
    })
}

/// Runs task `t1` with every output file; returns the JSON summary.
fn run_all(sb: &Sandbox, server: &support::MockServer) -> Value {
    let out = sb
        .run(server, "t1", "s.db")
        .args([
            "--expect-json",
            "/status=done",
            "--retries",
            "2",
            "--format",
            "json",
            "--report",
            "out/report.jsonl",
            "--junit",
            "out/junit.xml",
            "--metrics-file",
            "prom/recheck.prom",
        ])
        .args(["-H", &format!("Authorization: Bearer {SECRET}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    support::summary(&out)
}

fn setup() -> Sandbox {
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t1", &ids());
    std::fs::create_dir(sb.path("out")).unwrap();
    std::fs::create_dir(sb.path("prom")).unwrap();
    sb
}

#[test]
fn mixed_run_writes_all_three_files() {
    let server = secret_server();
    let sb = setup();
    let summary = run_all(&sb, &server);
    assert_eq!(summary["checked"], CASES.len());
    // 1+3+1+1+3+1+1
    assert_eq!(summary["requests"], 11);

    check_report(&sb.path("out/report.jsonl"));
    check_junit(&sb.path("out/junit.xml"));
    check_metrics(&sb.path("prom/recheck.prom"), &summary);

    for f in ["out/report.jsonl", "out/junit.xml", "prom/recheck.prom"] {
        let text = std::fs::read_to_string(sb.path(f)).unwrap();
        assert!(!text.contains(SECRET), "the secret header is in {f}");
        assert!(
            !text.contains("Bearer"),
            "the Authorization header is in {f}"
        );
    }
    // The store saw the same answers: the files are not a different story.
    assert_eq!(
        support::sqlite_row(&sb.path("s.db"), "t1", "ok-1").status,
        "ok"
    );
}

const KEYS: [&str; 11] = [
    "task",
    "item_id",
    "url",
    "outcome",
    "http_status",
    "attempts",
    "error",
    "latency_ms",
    "checked_at",
    "store",
    "host_limit",
];

fn check_report(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut seen: HashMap<String, Value> = HashMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        // Every key, in the documented order (serde_json's Map here sorts, so read the text).
        let at: Vec<usize> = KEYS
            .iter()
            .map(|k| {
                line.find(&format!("\"{k}\":"))
                    .unwrap_or_else(|| panic!("{k}: {line}"))
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert_eq!(v.as_object().unwrap().len(), KEYS.len(), "{line}");
        let id = v["item_id"].as_str().unwrap().to_string();
        assert!(seen.insert(id.clone(), v).is_none(), "{id} twice");
    }
    assert_eq!(seen.len(), CASES.len(), "{text}");
    for &(id, outcome, http, attempts, err) in CASES {
        let v = &seen[id];
        assert_eq!(v["task"], "t1", "{v}");
        assert_eq!(v["outcome"], outcome, "{v}");
        assert_eq!(v["http_status"].as_u64(), http, "{v}");
        assert_eq!(v["attempts"].as_u64(), Some(attempts), "{v}");
        match err {
            None => assert!(v["error"].is_null(), "{v}"),
            Some(frag) => assert!(
                v["error"].as_str().unwrap_or_default().contains(frag),
                "{id}: {v} lacks {frag:?}"
            ),
        }
        let url = v["url"].as_str().unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:") && url.contains(id),
            "{v}"
        );
        assert!(v["latency_ms"].is_u64(), "{v}");
        let at = v["checked_at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.len() >= 20, "{v}");
        // Written after the store: every answer of this run is in it.
        assert_eq!(v["store"], "written", "{v}");
    }
}

fn check_junit(path: &Path) {
    let xml = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let suites: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    assert_eq!(suites.len(), 1, "{xml}");
    let ts = suites[0];
    assert_eq!(ts.attribute("name"), Some("recheck task t1"));
    assert_eq!(ts.attribute("tests"), Some("7"));
    assert_eq!(
        ts.attribute("failures"),
        Some("2"),
        "still_failed + not_found"
    );
    assert_eq!(ts.attribute("errors"), Some("3"), "error outcomes");
    assert!(ts.attribute("timestamp").is_some());
    assert!(ts.attribute("time").unwrap().parse::<f64>().unwrap() > 0.0);
    let cases: HashMap<&str, roxmltree::Node> = ts
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|n| (n.attribute("name").unwrap(), n))
        .collect();
    assert_eq!(cases.len(), CASES.len());
    for &(id, outcome, _, _, err) in CASES {
        let tc = cases[id];
        assert_eq!(tc.attribute("classname"), Some("t1"));
        assert!(tc.attribute("time").unwrap().parse::<f64>().is_ok());
        let bad: Vec<_> = tc
            .children()
            .filter(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
            .collect();
        match err {
            None => assert!(bad.is_empty(), "{id} is OK but has {bad:?}"),
            Some(frag) => {
                assert_eq!(bad.len(), 1, "{id}");
                let want = if outcome == "error" {
                    "error"
                } else {
                    "failure"
                };
                assert_eq!(bad[0].tag_name().name(), want, "{id}");
                assert_eq!(bad[0].attribute("type"), Some(outcome), "{id}");
                let msg = bad[0].attribute("message").unwrap();
                assert!(msg.contains(frag), "{id}: message {msg:?} lacks {frag:?}");
                let text = bad[0].text().unwrap_or_default();
                assert!(text.contains(frag) && text.contains(id), "{id}: {text:?}");
            }
        }
    }
}

/// Parses with `prometheus-parse`; also checks the shape it is lenient about.
fn scrape(path: &Path) -> prometheus_parse::Scrape {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            assert!(c.starts_with("HELP recheck_") || c.starts_with("TYPE recheck_"));
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            series.starts_with("recheck_") && series.ends_with('}'),
            "{line}"
        );
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

fn sample<'a>(
    s: &'a prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> &'a prometheus_parse::Value {
    let found: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {label:?}: {found:?}");
    &found[0].value
}

fn gauge(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    match sample(s, name, label) {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

fn check_metrics(path: &Path, summary: &Value) {
    let s = scrape(path);
    for x in &s.samples {
        assert_eq!(x.labels.get("task"), Some("t1"), "{x:?}");
    }
    for name in [
        "recheck_last_run_items",
        "recheck_last_run_requests",
        "recheck_last_run_retries",
        "recheck_run_duration_seconds",
        "recheck_last_run_timestamp_seconds",
        "recheck_run_interrupted",
        "recheck_check_duration_seconds",
    ] {
        assert!(s.docs.contains_key(name), "no # HELP for {name}");
    }
    let items = |o| gauge(&s, "recheck_last_run_items", Some(("outcome", o)));
    assert_eq!(items("ok"), 2.0);
    assert_eq!(items("still_failed"), 1.0);
    assert_eq!(items("not_found"), 1.0);
    assert_eq!(items("error"), 3.0);
    let f = |k: &str| summary[k].as_f64().unwrap();
    assert_eq!(gauge(&s, "recheck_last_run_requests", None), f("requests"));
    assert_eq!(gauge(&s, "recheck_last_run_retries", None), f("retries"));
    assert_eq!(gauge(&s, "recheck_run_interrupted", None), 0.0);
    let duration = gauge(&s, "recheck_run_duration_seconds", None);
    assert!(duration > 0.0 && duration * 1000.0 >= f("duration_ms") - 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = gauge(&s, "recheck_last_run_timestamp_seconds", None);
    assert!(now - at < 120.0 && at <= now, "{at} vs {now}");

    let count = gauge(&s, "recheck_check_duration_seconds_count", None);
    assert_eq!(count, f("checked"));
    assert!(gauge(&s, "recheck_check_duration_seconds_sum", None) > 0.0);
    let prometheus_parse::Value::Histogram(buckets) =
        sample(&s, "recheck_check_duration_seconds", None)
    else {
        panic!("not a histogram")
    };
    assert!(buckets.len() >= 10, "{buckets:?}");
    let mut sorted = buckets.clone();
    sorted.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
    assert!(
        sorted.windows(2).all(|w| w[0].count <= w[1].count),
        "{sorted:?}"
    );
    let inf = sorted.last().unwrap();
    assert!(inf.less_than.is_infinite());
    assert_eq!(inf.count, count);
}

#[test]
fn bad_output_paths_are_refused_before_the_run() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ok-1"]);
    std::fs::create_dir(sb.path("adir")).unwrap();
    std::fs::write(sb.path("old.jsonl"), "earlier report\n").unwrap();
    let before = support::snapshot(&db);
    let cases: &[(&[&str], &str)] = &[
        (&["--report", "missing/r.jsonl"], "--report missing/r.jsonl"),
        (&["--report", "adir"], "--report adir"),
        (&["--report", "-"], "--report -"),
        (&["--junit", "missing/j.xml"], "--junit missing/j.xml"),
        (&["--junit", "adir"], "--junit adir"),
        (
            &["--metrics-file", "missing/m.prom"],
            "--metrics-file missing/m.prom",
        ),
        (
            &["--report", "old.jsonl", "--metrics-file", "missing/m.prom"],
            "--metrics-file missing/m.prom",
        ),
        (
            &["--report", "out.x", "--junit", "./out.x"],
            "--report and --junit name the same file",
        ),
    ];
    for (args, fragment) in cases {
        let out = sb.run(&server, "t", "s.db").args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(fragment), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(support::snapshot(&db), before, "{args:?} touched the store");
    }
    assert_eq!(server.total_requests(), 0);
    assert!(!sb.path("missing").exists());
    // A refused run does not truncate an earlier report when another path is the culprit.
    assert_eq!(
        std::fs::read_to_string(sb.path("old.jsonl")).unwrap(),
        "earlier report\n"
    );
    // Nothing but what the setup made.
    let mut names: Vec<String> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("s.db"))
        .collect();
    names.sort();
    assert_eq!(names, ["adir", "old.jsonl"]);
}

#[test]
fn metrics_file_is_replaced_atomically() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let server = secret_server();
    let sb = setup();
    let prom = sb.path("prom/recheck.prom");
    std::fs::write(&prom, "# old\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prom, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // A reader polling the file the whole time sees the old file or a whole new one.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, prom) = (Arc::clone(&done), prom.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::SeqCst) {
                let text = std::fs::read_to_string(&prom).expect("the file is always there");
                assert!(
                    text == "# old\n"
                        || text.ends_with("recheck_check_duration_seconds_count{task=\"t1\"} 7\n"),
                    "half a file: {text:?}"
                );
                reads += 1;
            }
            reads
        })
    };
    run_all(&sb, &server);
    done.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);

    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(sb.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("prom"), ["recheck.prom"], "temp files left behind");
    assert_eq!(
        names("out"),
        ["junit.xml", "report.jsonl"],
        "temp files left behind"
    );
    assert!(
        std::fs::read_to_string(&prom)
            .unwrap()
            .contains("recheck_last_run_items")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "the collector must still be able to read it");
    }
    // A second run replaces it again, still alone in its directory.
    support::sqlite_store(&sb.path("s2.db"), "t1", &["ok-9"]);
    let out = sb
        .run(&server, "t1", "s2.db")
        .args(["-H", &format!("Authorization: Bearer {SECRET}")])
        .args(["--metrics-file", "prom/recheck.prom"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(names("prom"), ["recheck.prom"]);
    let s = scrape(&prom);
    assert_eq!(
        gauge(&s, "recheck_last_run_items", Some(("outcome", "ok"))),
        1.0
    );
    assert_eq!(
        gauge(&s, "recheck_last_run_items", Some(("outcome", "error"))),
        0.0
    );
}

#[test]
fn interrupted_run_writes_what_was_checked() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let ids = ["ok-1", "ok-2", "ok-3", "hang-1", "hang-2"];
    support::sqlite_store(&sb.path("s.db"), "t", &ids);
    let mut args: Vec<String> = [
        "run",
        "--task",
        "t",
        "--store",
        "s.db",
        "--timeout",
        "60s",
        "--format",
        "json",
        "--report",
        "r.jsonl",
        "--junit",
        "j.xml",
        "--metrics-file",
        "m.prom",
        "--url",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(server.item_url_template());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let running = sb.spawn(&argv);
    support::wait_until(
        "the OK answers and both hangs",
        Duration::from_secs(30),
        || {
            support::answered_with(&server, 200).len() == 3
                && server.requests("hang-1") > 0
                && server.requests("hang-2") > 0
        },
    );
    running.signal(libc::SIGINT);
    let out = running.wait(Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert_eq!(support::summary(&out)["checked"], 3);

    let report = std::fs::read_to_string(sb.path("r.jsonl")).unwrap();
    assert_eq!(report.lines().count(), 3, "{report}");
    let xml = std::fs::read_to_string(sb.path("j.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let ts = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(ts.attribute("tests"), Some("3"), "{xml}");
    assert_eq!(ts.attribute("failures"), Some("0"), "{xml}");
    assert!(xml.contains("run interrupted"), "{xml}");
    let s = scrape(&sb.path("m.prom"));
    assert_eq!(gauge(&s, "recheck_run_interrupted", None), 1.0);
    assert_eq!(
        gauge(&s, "recheck_last_run_items", Some(("outcome", "ok"))),
        3.0
    );
    assert_eq!(gauge(&s, "recheck_check_duration_seconds_count", None), 3.0);
}

#[test]
fn task_ids_are_escaped_in_metrics_and_junit() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let task = "we\"ird\\task\nx<&>";
    support::sqlite_store(&sb.path("s.db"), task, &["ok-1"]);
    let out = sb
        .run(&server, task, "s.db")
        .args(["--junit", "j.xml", "--metrics-file", "m.prom"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let prom = std::fs::read_to_string(sb.path("m.prom")).unwrap();
    // One sample per line, the label value escaped as the exposition format says.
    let want = r#"recheck_last_run_requests{task="we\"ird\\task\nx<&>"} 1"#;
    assert!(prom.lines().any(|l| l == want), "{prom}");
    for line in prom.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("recheck_"), "{line}");
    }
    let xml = std::fs::read_to_string(sb.path("j.xml")).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let tc = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase"))
        .unwrap();
    // XML attribute-value normalisation turns the newline into a space for every reader.
    assert_eq!(
        tc.attribute("classname"),
        Some(task.replace('\n', " ").as_str())
    );
}

#[test]
fn report_as_a_hard_link_of_the_store_is_refused() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &["ok-1"]);
    std::fs::hard_link(&db, sb.path("r.jsonl")).unwrap();
    std::fs::create_dir(sb.path("sub")).unwrap();
    std::os::unix::fs::symlink(&db, sb.path("sub/m.prom")).unwrap();
    let before = support::snapshot(&db);
    for args in [
        &["--report", "r.jsonl"][..],
        &["--metrics-file", "sub/m.prom"][..],
        &["--junit", "s.db-wal"][..],
    ] {
        let out = sb.run(&server, "t", "s.db").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        // (config.rs refuses a path that resolves to the store by its own words.)
        assert!(
            err.contains(&format!("{} and --store name the same file", args[0]))
                || err.contains(&format!("{} {} is the store itself", args[0], args[1])),
            "{args:?}: {err}"
        );
        assert_eq!(support::snapshot(&db), before, "{args:?} touched the store");
    }
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn junit_as_a_symlink_to_the_report_is_refused() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
    std::fs::write(sb.path("r.jsonl"), "earlier report\n").unwrap();
    std::fs::create_dir(sb.path("ci")).unwrap();
    std::os::unix::fs::symlink("../r.jsonl", sb.path("ci/j.xml")).unwrap();
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--report", "r.jsonl", "--junit", "ci/j.xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--report and --junit name the same file"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("r.jsonl")).unwrap(),
        "earlier report\n"
    );
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn a_refused_second_run_leaves_the_first_report_alone() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1", "ok-2"]);
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--report", "r.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let first = std::fs::read(sb.path("r.jsonl")).unwrap();
    assert_eq!(String::from_utf8_lossy(&first).lines().count(), 2);
    // Refused by the store (a missing JSON file, a missing table), after the output paths
    // were found fine: the report is created only once the store was accepted.
    for (store, extra) in [
        ("json:missing.json", &[][..]),
        ("s.db", &["--table", "nope"][..]),
    ] {
        let out = sb
            .run(&server, "t", store)
            .args(extra)
            .args(["--report", "r.jsonl"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{store}: {out:?}");
        assert_eq!(
            std::fs::read(sb.path("r.jsonl")).unwrap(),
            first,
            "{store}: the refused run changed the first run's report"
        );
    }
    assert!(!sb.path("missing.json").exists());
}

#[test]
fn report_on_a_fifo_is_refused_at_once() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
    let fifo = sb.path("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid C string; no memory is shared.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    for flag in ["--report", "--junit", "--metrics-file"] {
        let started = std::time::Instant::now();
        // Opening a FIFO for writing would block until a reader comes: the timeout turns
        // a hang into a failure instead of a stuck test.
        let out = sb
            .run(&server, "t", "s.db")
            .args([flag, "pipe"])
            .timeout(Duration::from_secs(20))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{flag} pipe")), "{flag}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{flag}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(server.total_requests(), 0);
    assert_eq!(
        support::sqlite_row(&sb.path("s.db"), "t", "ok-1").status,
        "failed"
    );
}
