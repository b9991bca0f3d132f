//! One scenario table over every SQL backend: outcomes and bookkeeping, the seed's integer
//! mapping, refusals, leases shared by workers, takeover of a killed worker, compare-and-set
//! conflicts, odd `checked_at` text, `init`, `import`, and a lock held mid-run.
//!
//! Each scenario is a function of a [`Db`] (support/db.rs) and a [`Sandbox`]; its `#[test]`
//! runs it on SQLite, and on PostgreSQL and MariaDB when `RECHECK_TEST_POSTGRES_URL` /
//! `RECHECK_TEST_MYSQL_URL` are set (else a `skipped:` line names backend and scenario).
//! A failure on one backend does not hide the others: the test fails naming every backend
//! the scenario failed on.

use std::time::{Duration, Instant, SystemTime};

use crate::support::db::{self, Backend, Db, Ty};
use crate::support::{
    self, MockConfig, MockServer, OUTCOME_CASES, Sandbox, check_outcome_summary, outcome_args,
};

/// Runs `scenario` on every available backend, each in a sandbox and database of its own.
fn on_every_backend(name: &str, scenario: fn(&dyn Db, &Sandbox)) {
    let mut failed = Vec::new();
    for backend in Backend::ALL {
        let sb = Sandbox::new();
        let Some(db) = backend.open(&sb, name) else {
            continue;
        };
        eprintln!("scenario {name} on {}", backend.name());
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&*db, &sb)));
        if run.is_err() {
            failed.push(backend.name());
        }
    }
    assert!(failed.is_empty(), "scenario {name} failed on {failed:?}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr, which must be one line.
fn one_line(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

/// `ok-N` items, with every tenth a still-failed `fail-N`.
fn mixed_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 10 == 0 {
                format!("fail-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect()
}

/// What a mixed id's row says after a run with `--expect-json /status=done`.
fn want_status(id: &str) -> &'static str {
    if id.starts_with("ok-") {
        "ok"
    } else {
        "failed"
    }
}

/// `recheck run` arguments for a worker on task `t`.
fn worker_args(db: &dyn Db, server: &MockServer, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--task",
        "t",
        "--store",
        &db.store(),
        "--expect-json",
        "/status=done",
        "--format",
        "json",
        "--url",
    ]
    .map(String::from)
    .to_vec();
    a.push(server.item_url_template());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A worker's exit: 1 exactly when its share held still-failed items, else 0 (ids are
/// walked in order, so a worker's pages may hold only OK items).
fn assert_worker_exit(out: &std::process::Output) -> u64 {
    let s = support::summary(out);
    let want = if s["still_failed"].as_u64() > Some(0) {
        1
    } else {
        0
    };
    assert_eq!(out.status.code(), Some(want), "{out:?}");
    s["checked"].as_u64().expect("checked")
}

/// `checked_at` is RFC 3339 UTC and a time of this test (a minute of clock slack).
fn assert_recent(what: &str, at: Option<&str>, since: SystemTime) {
    let at = at.unwrap_or_else(|| panic!("{what}: no checked_at"));
    let t = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{what}: {at:?}: {e}"));
    let slack = Duration::from_secs(60);
    assert!(
        t + slack >= since && t <= SystemTime::now() + slack,
        "{what}: checked_at {at} is not a time of this run"
    );
}

// ---------------------------------------------------------------------------------------
// Outcomes and bookkeeping

fn outcomes(db: &dyn Db, sb: &Sandbox) {
    let since = SystemTime::now();
    let server = support::default_server();
    db.default_schema();
    let ids: Vec<String> = OUTCOME_CASES.iter().map(|c| c.0.to_string()).collect();
    db.insert_failed("t1", &ids);
    // Items of another task, and an already OK item of this task, are not touched; an item
    // checked before keeps adding up its attempts.
    db.insert_failed("t2", &["ok-2".to_string()]);
    db.insert("t1", "ok", &["ok-3".to_string()]);
    db.exec("UPDATE items SET attempts = 4 WHERE task_id = 't1' AND item_id = 's401-1'");
    let mut cmd = sb.run(&server, "t1", &db.store());
    outcome_args(&mut cmd);
    let out = cmd.output().unwrap();
    check_outcome_summary(&out);
    let rows = db.items("t1");
    for &(id, status, http, attempts, err) in OUTCOME_CASES {
        let row = &rows[id];
        assert_eq!(row.status, status, "{id}: {row:?}");
        assert_eq!(row.http_status, http, "{id}: {row:?}");
        let before = if id == "s401-1" { 4 } else { 0 };
        assert_eq!(row.attempts, attempts + before, "{id}: {row:?}");
        match err {
            None => assert_eq!(row.last_error, None, "{id}"),
            Some(frag) => {
                let e = row.last_error.as_deref().unwrap_or_default();
                assert!(e.contains(frag), "{id}: {e:?} lacks {frag:?}");
            }
        }
        assert_recent(id, row.checked_at.as_deref(), since);
        assert_eq!(row.lease_owner, None, "{id}: lease left behind");
        assert_eq!(row.lease_until, None, "{id}: lease left behind");
    }
    assert_eq!(server.requests("ok-2"), 0);
    assert_eq!(server.requests("ok-3"), 0);
    assert_eq!(db.item("t2", "ok-2").status, "failed");
    assert_eq!(db.item("t2", "ok-2").checked_at, None);
    assert_eq!(rows["ok-3"].checked_at, None);
    // `status` reads the counts back.
    let out = sb
        .cmd()
        .args(["status", "--task", "t1", "--store", &db.store()])
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j = support::summary(&out);
    assert_eq!(j["total"], 12, "{j}");
    assert_eq!(
        (
            &j["statuses"]["ok"],
            &j["statuses"]["gone"],
            &j["statuses"]["failed"]
        ),
        (&3.into(), &2.into(), &7.into()),
        "{j}"
    );
    let newest = j["newest_checked_at"].as_str().unwrap_or_default();
    assert_recent("newest_checked_at", Some(newest), since);
    // Attempts add up over runs: a second run re-checks what is still failed.
    sb.run(&server, "t1", &db.store())
        .args([
            "--retries",
            "0",
            "--timeout",
            "300ms",
            "--max-body",
            "64KiB",
        ])
        .assert()
        .code(1);
    assert_eq!(db.item("t1", "s401-1").attempts, 6);
    assert_eq!(server.requests("ok-1"), 1, "an OK item was checked again");
}

#[test]
fn scenario_outcomes() {
    on_every_backend("outcomes", outcomes);
}

fn dry_run(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.default_schema();
    db.insert_failed("t", &mixed_ids(30));
    let before = db.snapshot("items");
    let mut store = db.store();
    if db.backend() == Backend::Mysql {
        // The mariadb:// spelling works as well.
        store = store.replacen("mysql://", "mariadb://", 1);
    }
    let out = sb
        .run(&server, "t", &store)
        .args(["--dry-run", "--format", "json"])
        .args(["--expect-json", "/status=done"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(s["dry_run"], true);
    assert_eq!(s["checked"], 30);
    assert_eq!(s["ok"], 27);
    assert_eq!(server.total_requests(), 30);
    assert_eq!(db.snapshot("items"), before, "a dry run wrote");
}

#[test]
fn scenario_dry_run() {
    on_every_backend("dry_run", dry_run);
}

// ---------------------------------------------------------------------------------------
// Mapping and refusals

fn seed_mapping(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    // The seed's table: integer task ids and statuses, no bookkeeping, no lease columns
    // (one run per task).
    db.exec(&format!(
        "CREATE TABLE data (task_id INTEGER, content {}, status INTEGER, extra {})",
        db.ty(Ty::Key),
        db.ty(Ty::Text)
    ));
    db.exec(
        "INSERT INTO data (task_id, content, status, extra) VALUES
           (42, 'ok-1', 5, 'x'), (42, 'ok-2', 5, 'y'), (42, 'fail-1', 5, NULL),
           (42, 's500-1', 5, NULL), (42, 'ok-3', 3, NULL), (7, 'ok-4', 5, NULL),
           (42, 'ok-5', 0, NULL)",
    );
    let run = || {
        let mut cmd = sb.cmd();
        cmd.args(["run", "--task", "42", "--store", &db.store()])
            .args(["--table", "data", "--id-column", "content"])
            .args(["--failed-status", "5", "--ok-status", "1"])
            .args(["--expect-json", "/status=done", "--retries", "1"])
            .args(["--backoff", "1ms..2ms", "--url"])
            .arg(server.item_url_template());
        cmd
    };
    let out = run().output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let got = db.rows("SELECT content, status, extra FROM data ORDER BY content");
    let want: Vec<Vec<Option<String>>> = [
        ["fail-1", "5", ""],
        ["ok-1", "1", "x"],
        ["ok-2", "1", "y"],
        ["ok-3", "3", ""],
        ["ok-4", "5", ""],
        ["ok-5", "0", ""],
        ["s500-1", "5", ""],
    ]
    .iter()
    .map(|r| {
        r.iter()
            .map(|v| (!v.is_empty()).then(|| v.to_string()))
            .collect()
    })
    .collect();
    assert_eq!(got, want);
    if db.backend() == Backend::Sqlite {
        // Written as integers, not as the text "1".
        assert_eq!(
            db.count("SELECT COUNT(*) FROM data WHERE typeof(status) <> 'integer'"),
            0
        );
    }
    for id in ["ok-3", "ok-4", "ok-5"] {
        assert_eq!(server.requests(id), 0, "{id}");
    }
    assert_eq!(server.requests("s500-1"), 2);
    // No column was added.
    assert_eq!(
        db.columns("data"),
        ["task_id", "content", "status", "extra"]
    );
    // `status` counts the integer statuses (it has no --failed-status, whose default is
    // text).
    let out = sb
        .cmd()
        .args(["status", "--task", "42", "--store", &db.store()])
        .args([
            "--table",
            "data",
            "--id-column",
            "content",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j = support::summary(&out);
    assert_eq!(
        (
            j["statuses"]["1"].as_u64(),
            j["statuses"]["5"].as_u64(),
            j["statuses"]["3"].as_u64()
        ),
        (Some(2), Some(2), Some(1)),
        "{j}"
    );
    if db.backend() == Backend::Postgres {
        // The task's advisory lock is free again.
        assert_eq!(
            db.count(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND classid = hashtext('recheck:' || 'data'::regclass::oid::text)::oid"
            ),
            0
        );
    }
    // The task's lock went with the run: the next run on the task is not refused.
    let out = run().output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(server.requests("fail-1"), 2);
    assert_eq!(server.requests("ok-1"), 1);
}

#[test]
fn scenario_seed_mapping() {
    on_every_backend("seed_mapping", seed_mapping);
}

fn text_status_on_integer_column(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.exec(&format!(
        "CREATE TABLE items (task_id {k}, item_id {k}, status INTEGER)",
        k = db.ty(Ty::Key)
    ));
    // ok-0: a text status compared with an integer column would match 0 on MariaDB.
    db.exec("INSERT INTO items VALUES ('t', 'ok-1', 5), ('t', 'ok-0', 0), ('7', 'ok-7', 5)");
    let before = db.snapshot("items");
    let cases: [(&[&str], &str); 4] = [
        (&[], "--failed-status \"failed\" is not an integer"),
        (
            &[
                "--failed-status",
                "5",
                "--ok-status",
                "1",
                "--dead-json",
                "/status=failed",
            ],
            "--dead-status \"dead\" is not an integer",
        ),
        (
            &["--failed-status", "5"],
            "--ok-status \"ok\" is not an integer",
        ),
        (
            &["--failed-status", "failed", "--ok-status", "1"],
            "--failed-status \"failed\" is not an integer",
        ),
    ];
    for (extra, want) in cases {
        let out = sb
            .run(&server, "t", &db.store())
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        let err = one_line(&out);
        assert!(
            err.contains(want) && err.contains("holds integers"),
            "{extra:?}: {err}"
        );
    }
    assert_eq!(db.snapshot("items"), before, "a refused run wrote");
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn scenario_text_status_on_integer_column() {
    on_every_backend(
        "text_status_on_integer_column",
        text_status_on_integer_column,
    );
}

fn dead_by_rule(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.default_schema();
    let ids: Vec<String> = ["job0-a", "job100-b", "job40-c"].map(String::from).to_vec();
    db.insert_failed("t", &ids);
    let out = sb
        .run(&server, "t", &db.store())
        .args(["--format", "json", "--expect-json", "/status=done"])
        .args(["--dead-json", "/status=failed", "--metrics-file", "m.prom"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_u64(), s["dead"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let items = db.items("t");
    assert_eq!(items["job0-a"].status, "dead");
    assert_eq!(
        items["job0-a"].last_error.as_deref(),
        Some(r#"dead: /status is "failed""#)
    );
    assert_eq!(items["job100-b"].status, "ok");
    assert_eq!(items["job40-c"].status, "failed");
    let prom = std::fs::read_to_string(sb.path("m.prom")).unwrap();
    assert!(prom.contains(r#"outcome="dead"} 1"#), "{prom}");
}

#[test]
fn scenario_dead_by_rule() {
    on_every_backend("dead_by_rule", dead_by_rule);
}

// ---------------------------------------------------------------------------------------
// The schedule across runs

fn time(at: &Option<String>) -> SystemTime {
    let at = at.as_deref().expect("a time");
    humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at:?}: {e}"))
}

/// `next_check_at - checked_at` of a row, in seconds.
fn wait_of(db: &dyn Db, id: &str) -> f64 {
    let row = db.item("t", id);
    let (_, _, next) = db.schedule("t").remove(id).expect("the row");
    time(&next)
        .duration_since(time(&row.checked_at))
        .expect("next_check_at after checked_at")
        .as_secs_f64()
}

/// Several runs a few seconds apart with `--recheck-backoff 2s..8s --give-up-after 3`:
/// items not due are not asked for (the server's per-id counts), come due when their
/// next_check_at passes, `--ignore-schedule` asks anyway, the third check gives up (dead,
/// in every output), and a `Retry-After: 3600` is carried into next_check_at.
fn schedule(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.default_schema();
    let ids: Vec<String> = ["fail-a", "ok-b", "ra3600x99-c", "ra99999999999x99-d"]
        .map(String::from)
        .to_vec();
    db.insert_failed("t", &ids);
    let run = |extra: &[&str]| {
        let out = sb
            .run(&server, "t", &db.store())
            .args(["--format", "json", "--expect-json", "/status=done"])
            .args(["--recheck-backoff", "2s..8s", "--give-up-after", "3"])
            .args(["--retries", "0"])
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), support::summary(&out))
    };
    let asked = |id: &str| server.requests(id);

    // Run 1: every item is due.
    let (code, s) = run(&[]);
    assert_eq!(code, Some(1), "{s}");
    assert_eq!(
        (asked("fail-a"), asked("ok-b"), asked("ra3600x99-c")),
        (1, 1, 1)
    );
    let sched = db.schedule("t");
    assert_eq!(sched["ok-b"].0, 1);
    assert_eq!(sched["ok-b"].2, None, "an OK item is due never again");
    assert_eq!(sched["fail-a"].0, 1);
    assert_eq!(sched["fail-a"].1, db.item("t", "fail-a").checked_at);
    let w = wait_of(db, "fail-a");
    assert!((1.8..=2.2).contains(&w), "first wait: MIN ±10 %, got {w}s");
    let w = wait_of(db, "ra3600x99-c");
    assert!((3599.0..=3601.0).contains(&w), "Retry-After carried: {w}s");
    // A server's Retry-After is honoured for a week at most.
    let w = wait_of(db, "ra99999999999x99-d");
    assert!(
        (604_799.0..=604_801.0).contains(&w),
        "Retry-After capped: {w}s"
    );

    // Run 2, at once: nothing is due; nothing is asked.
    let (code, s) = run(&[]);
    assert_eq!(code, Some(0), "nothing to check: {s}");
    assert_eq!(
        (s["checked"].as_u64(), s["not_due"].as_u64()),
        (Some(0), Some(3)),
        "{s}"
    );
    assert_eq!(s["backlog"], 3);
    assert_eq!(
        s["next_due_at"].as_str(),
        db.schedule("t")["fail-a"].2.as_deref(),
        "{s}"
    );
    assert_eq!(
        (asked("fail-a"), asked("ra3600x99-c")),
        (1, 1),
        "not due, not asked"
    );

    // Run 3: --ignore-schedule asks anyway, and the schedule goes on (second check: 2·MIN).
    let (_, s) = run(&["--ignore-schedule"]);
    assert_eq!(s["checked"], 3, "{s}");
    assert_eq!((asked("fail-a"), asked("ra3600x99-c")), (2, 2));
    assert_eq!(db.schedule("t")["fail-a"].0, 2);
    let w = wait_of(db, "fail-a");
    assert!(
        (3.6..=4.4).contains(&w),
        "second wait: 2·MIN ±10 %, got {w}s"
    );

    // Run 4, once fail-a is due: its third check gives up on it.
    let due = time(&db.schedule("t")["fail-a"].2);
    if let Ok(left) = due.duration_since(SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(200));
    }
    let (code, s) = run(&[
        "--report",
        "r.jsonl",
        "--junit",
        "j.xml",
        "--metrics-file",
        "m.prom",
    ]);
    assert_eq!(code, Some(1), "{s}");
    assert_eq!(
        (asked("fail-a"), asked("ra3600x99-c")),
        (3, 2),
        "c is not due for an hour"
    );
    assert_eq!(
        (s["dead"].as_u64(), s["not_due"].as_u64()),
        (Some(1), Some(2)),
        "{s}"
    );
    let row = db.item("t", "fail-a");
    assert_eq!(row.status, "dead");
    let why = row.last_error.unwrap();
    assert!(
        why.starts_with("gave up after 3 checks: /status is"),
        "{why}"
    );
    assert_eq!(db.schedule("t")["fail-a"].2, None, "dead: due never again");
    let report = std::fs::read_to_string(sb.path("r.jsonl")).unwrap();
    assert!(
        report.contains(r#""outcome":"dead""#) && report.contains("gave up after 3 checks"),
        "{report}"
    );
    let junit = std::fs::read_to_string(sb.path("j.xml")).unwrap();
    assert!(junit.contains(r#"type="dead""#), "{junit}");
    let prom = std::fs::read_to_string(sb.path("m.prom")).unwrap();
    assert!(prom.contains(r#"outcome="dead"} 1"#), "{prom}");
    assert!(
        prom.contains(r#"recheck_task_not_due{task="t"} 2"#),
        "{prom}"
    );
}

#[test]
fn scenario_schedule() {
    on_every_backend("schedule", schedule);
}

fn unknown_task(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.default_schema();
    db.insert_failed("transcode-2026-11-30", &["ok-1".to_string()]);
    db.insert_failed("upload-7", &["ok-2".to_string()]);
    let before = db.snapshot("items");
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = sb
            .run(&server, "transcode-2026-11-03", &db.store())
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = one_line(&out);
        assert!(
            err.contains("no task \"transcode-2026-11-03\"")
                && err.contains("\"transcode-2026-11-30\""),
            "{err}"
        );
    }
    assert_eq!(db.snapshot("items"), before, "a refused run wrote");
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn scenario_unknown_task() {
    on_every_backend("unknown_task", unknown_task);
}

// ---------------------------------------------------------------------------------------
// Leases and takeover

/// Several workers on one task share it, each item checked once. On the servers, three
/// workers and 30,000 items start together: the test holds the table locked until a
/// session of every worker waits on it, so none gets a head start from a loaded machine
/// starting the processes one after the other, and the fair-share bound measures the
/// store's claims. On SQLite (no way to see who waits), two workers on 3,000.
fn leases(db: &dyn Db, sb: &Sandbox) {
    let gated = db.backend() != Backend::Sqlite;
    let (n, workers, latency, concurrency) = if gated {
        (30_000, 3, 5, "50")
    } else {
        (3000, 2, 10, "20")
    };
    let server = support::server(MockConfig {
        latency: Duration::from_millis(latency),
        ..MockConfig::default()
    });
    db.default_schema();
    let ids = mixed_ids(n);
    db.insert_failed("t", &ids);
    let a = worker_args(db, &server, &["--concurrency", concurrency]);
    let started = Instant::now();
    let outs: Vec<_> = if gated {
        let lock = db.lock_items();
        let mut running: Vec<_> = (0..workers).map(|_| sb.spawn(&strs(&a))).collect();
        db::wait_for_every_worker(&mut running, || db.waiting_ports().unwrap_or_default());
        lock.release();
        running
            .into_iter()
            .map(|w| w.wait(Duration::from_secs(120)))
            .collect()
    } else {
        let running: Vec<_> = (0..workers).map(|_| sb.spawn(&strs(&a))).collect();
        running
            .into_iter()
            .map(|w| w.wait(Duration::from_secs(120)))
            .collect()
    };
    let took = started.elapsed();
    let mut checked = Vec::new();
    for out in &outs {
        checked.push(assert_worker_exit(out));
    }
    eprintln!("{workers} workers, {n} items: {checked:?} in {took:?}");
    assert_eq!(server.per_id_max(), 1, "an item was checked twice");
    assert_eq!(server.total_requests(), n as u64);
    assert_eq!(checked.iter().sum::<u64>(), n as u64, "{checked:?}");
    // Each did a fair share: no worker held the others back, and none took more than its
    // share of claims.
    let share = if gated { n / 5 } else { n / 10 } as u64;
    assert!(
        checked.iter().all(|&c| c >= share),
        "the work was not shared: {checked:?}"
    );
    let rows = db.items("t");
    assert_eq!(rows.len(), n);
    for id in &ids {
        let row = &rows[id];
        assert_eq!(row.status, want_status(id), "{id}");
        assert!(row.checked_at.is_some(), "{id} not written");
        assert_eq!(row.attempts, 1, "{id}");
        assert_eq!(row.lease_owner, None, "{id}: lease left behind");
        assert_eq!(row.lease_until, None, "{id}: lease left behind");
    }
}

#[test]
fn scenario_leases() {
    on_every_backend("leases", leases);
}

/// One of three workers killed with SIGKILL: the two others see it die (same host), take
/// its claims over and finish the task.
fn takeover(db: &dyn Db, sb: &Sandbox) {
    const N: usize = 6000;
    const CONCURRENCY: usize = 20;
    let server = support::server(MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    });
    db.default_schema();
    let ids = mixed_ids(N);
    db.insert_failed("t", &ids);
    let a = worker_args(
        db,
        &server,
        &["--lease", "4s", "--concurrency", &CONCURRENCY.to_string()],
    );
    let victim = sb.spawn(&strs(&a));
    let survivors = [sb.spawn(&strs(&a)), sb.spawn(&strs(&a))];
    support::wait_until("all workers under way", Duration::from_secs(60), || {
        server.total_requests() >= 1500
    });
    victim.signal(libc::SIGKILL);
    let _ = victim.wait(Duration::from_secs(10));
    for s in survivors {
        assert_worker_exit(&s.wait(Duration::from_secs(120)));
    }
    // Only what the killed worker had in hand (claimed, maybe answered, not saved) was
    // checked twice; nothing three times.
    let counts = server.all_requests();
    let twice = counts.values().filter(|&&n| n == 2).count();
    eprintln!("killed worker: {twice} items checked twice");
    assert!(
        counts.values().all(|&n| n <= 2),
        "an item was checked 3 times"
    );
    // The bounds the per-backend tests had: 1000 on SQLite, plus the requests in flight on
    // a server.
    let bound = match db.backend() {
        Backend::Sqlite => 1000,
        _ => 1000 + CONCURRENCY,
    };
    assert!(twice <= bound, "{twice} items checked twice");
    assert_eq!(counts.len(), N, "some items were never asked about");
    let rows = db.items("t");
    for id in &ids {
        assert_eq!(rows[id].status, want_status(id), "{id}");
        assert!(rows[id].checked_at.is_some(), "{id} never written");
        assert_eq!(rows[id].lease_owner, None, "{id}: claim left behind");
    }
}

#[test]
fn scenario_takeover() {
    on_every_backend("takeover", takeover);
}

/// Another host's worker claimed ten items and vanished (its lease ended a second ago): they
/// are claimed. A live one holds five more: they are not.
fn expired_leases(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.default_schema();
    let ids: Vec<String> = (0..50).map(|i| format!("ok-{i:02}")).collect();
    db.insert_failed("t", &ids);
    let now = SystemTime::now();
    let past = db.time_lit(now - Duration::from_secs(1));
    let future = db.time_lit(now + Duration::from_secs(600));
    db.exec(&format!(
        "UPDATE items SET lease_owner = 'elsewhere/1/1', lease_until = {past} \
         WHERE item_id < 'ok-10'"
    ));
    db.exec(&format!(
        "UPDATE items SET lease_owner = 'elsewhere/2/1', lease_until = {future} \
         WHERE item_id >= 'ok-45'"
    ));
    let out = sb
        .cmd()
        .args(worker_args(db, &server, &[]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["checked"], 45);
    let rows = db.items("t");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(rows[id].checked_at.is_some(), i < 45, "{id}");
        assert_eq!(server.requests(id), u64::from(i < 45), "{id}");
        let owner = (i >= 45).then(|| "elsewhere/2/1".to_string());
        assert_eq!(rows[id].lease_owner, owner, "{id}");
    }
}

#[test]
fn scenario_expired_leases() {
    on_every_backend("expired_leases", expired_leases);
}

// ---------------------------------------------------------------------------------------
// Compare-and-set conflicts

/// Starts `recheck run` on task `t` in the background and waits until the server saw the
/// request for `id` (a `slow1500-` id, so it is still in flight).
fn run_until_in_flight(
    db: &dyn Db,
    sb: &Sandbox,
    server: &MockServer,
    id: &str,
) -> support::Running {
    let run = sb.spawn(&strs(&worker_args(db, server, &[])));
    support::wait_until("the request", Duration::from_secs(30), || {
        server.requests(id) == 1
    });
    run
}

/// The pipeline changes an item's status while its request is in flight: the change is
/// kept, and nothing of the answer is written onto it.
fn conflict_status_changed(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.default_schema();
    db.insert_failed("t", &["slow1500-a".to_string(), "ok-b".to_string()]);
    let run = run_until_in_flight(db, sb, &server, "slow1500-a");
    db.exec("UPDATE items SET status = 'cancelled' WHERE item_id = 'slow1500-a'");
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let a = db.item("t", "slow1500-a");
    assert_eq!(
        a.status, "cancelled",
        "recheck overwrote the pipeline's change"
    );
    assert_eq!(a.checked_at, None, "bookkeeping written onto a changed row");
    assert_eq!(a.attempts, 0, "bookkeeping written onto a changed row");
    assert_eq!(db.item("t", "ok-b").status, "ok");
    let s = support::summary(&out);
    assert_eq!(
        (s["ok"].as_u64(), s["conflicts"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
}

#[test]
fn scenario_conflict_status_changed() {
    on_every_backend("conflict_status_changed", conflict_status_changed);
}

/// The row is deleted and a row with another id inserted while the request is in flight:
/// the new row is untouched. A table without a primary key: on SQLite its rowid is the only
/// key, and SQLite reuses the largest rowid after that row is deleted.
fn conflict_row_replaced(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.exec(&format!(
        "CREATE TABLE items (task_id {k}, item_id {k}, status {k}, checked_at {t}, last_error {x})",
        k = db.ty(Ty::Key),
        t = db.ty(Ty::Time),
        x = db.ty(Ty::Text)
    ));
    db.exec("INSERT INTO items (task_id, item_id, status) VALUES ('t', 'slow1500-a', 'failed')");
    let run = run_until_in_flight(db, sb, &server, "slow1500-a");
    db.exec("DELETE FROM items WHERE item_id = 'slow1500-a'");
    db.exec("INSERT INTO items (task_id, item_id, status) VALUES ('t', 'other', 'failed')");
    if db.backend() == Backend::Sqlite {
        let rowids = db.rows("SELECT rowid FROM items");
        assert_eq!(rowids, vec![vec![Some("1".to_string())]], "rowid reused");
    }
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        db.rows("SELECT item_id, status, checked_at, last_error FROM items"),
        vec![vec![
            Some("other".into()),
            Some("failed".into()),
            None,
            None
        ]],
        "the new row got the old item's answer"
    );
    let s = support::summary(&out);
    assert_eq!(s["checked"], 1);
    assert_eq!(s["conflicts"], 1, "{s}");
    assert_eq!(server.requests("other"), 0);
}

#[test]
fn scenario_conflict_row_replaced() {
    on_every_backend("conflict_row_replaced", conflict_row_replaced);
}

/// Another worker's lease set on the row while the request is in flight (as if this
/// worker's lease had run out and another had claimed the item): not written.
fn conflict_lease_taken(db: &dyn Db, sb: &Sandbox) {
    let server = support::default_server();
    db.default_schema();
    db.insert_failed("t", &["slow1500-a".to_string()]);
    let run = run_until_in_flight(db, sb, &server, "slow1500-a");
    let until = db.time_lit(SystemTime::now() + Duration::from_secs(3600));
    db.exec(&format!(
        "UPDATE items SET lease_owner = 'elsewhere/1/1', lease_until = {until}"
    ));
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let a = db.item("t", "slow1500-a");
    assert_eq!(
        (
            a.status.as_str(),
            a.lease_owner.as_deref(),
            a.checked_at.as_deref()
        ),
        ("failed", Some("elsewhere/1/1"), None),
        "{a:?}"
    );
    assert!(
        a.lease_until.is_some(),
        "the other worker's lease was freed"
    );
    assert_eq!(support::summary(&out)["conflicts"], 1);
}

#[test]
fn scenario_conflict_lease_taken() {
    on_every_backend("conflict_lease_taken", conflict_lease_taken);
}

// ---------------------------------------------------------------------------------------
// Other people's text

/// Failed items whose `checked_at` is no time (`never`, `N/A`), in the future or long ago
/// are all claimed: the claim never parses other people's text. On the servers the table's
/// time columns are text (the stores accept text time columns).
fn odd_checked_at(db: &dyn Db, sb: &Sandbox) {
    let since = SystemTime::now();
    let server = support::default_server();
    db.default_schema_with(Ty::TextTime);
    let ids = ["ok-never", "ok-na", "ok-future", "ok-old"].map(String::from);
    db.insert_failed("t", &ids);
    db.exec(
        "UPDATE items SET checked_at = 'never' WHERE item_id = 'ok-never';
         UPDATE items SET checked_at = 'N/A' WHERE item_id = 'ok-na';
         UPDATE items SET checked_at = '2999-01-01T00:00:00.000Z' WHERE item_id = 'ok-future';
         UPDATE items SET checked_at = '2001-01-01T00:00:00.000Z' WHERE item_id = 'ok-old';",
    );
    let out = sb
        .run(&server, "t", &db.store())
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 4);
    let rows = db.rows(
        "SELECT item_id, status, checked_at, lease_owner, lease_until FROM items ORDER BY item_id",
    );
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let id = r[0].as_deref().unwrap_or_default();
        assert_eq!(r[1].as_deref(), Some("ok"), "{id}");
        assert_eq!(server.requests(id), 1, "{id}");
        // Written into the text column as RFC 3339 UTC with milliseconds.
        let at = r[2].as_deref().unwrap_or_default();
        assert!(
            at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
            "{id}: {at:?}"
        );
        assert_recent(id, Some(at), since);
        assert_eq!((&r[3], &r[4]), (&None, &None), "{id}: lease left behind");
    }
}

#[test]
fn scenario_odd_checked_at() {
    on_every_backend("odd_checked_at", odd_checked_at);
}

// ---------------------------------------------------------------------------------------
// init and import

const DEFAULT_COLUMNS: [&str; 13] = [
    "task_id",
    "item_id",
    "status",
    "url",
    "http_status",
    "attempts",
    "last_error",
    "checked_at",
    "lease_owner",
    "lease_until",
    "checks",
    "first_checked_at",
    "next_check_at",
];

/// The columns `init --table` adds to a table of only task, id and status.
const ADDED_COLUMNS: [&str; 9] = [
    "http_status",
    "attempts",
    "last_error",
    "checked_at",
    "lease_owner",
    "lease_until",
    "checks",
    "first_checked_at",
    "next_check_at",
];

fn init(db: &dyn Db, sb: &Sandbox) {
    let init = |extra: &[&str]| {
        let out = sb
            .cmd()
            .args(["init", "--store", &db.store()])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        stdout(&out)
    };
    // The default schema, with its primary key.
    let said = init(&[]);
    assert!(said.starts_with("created table items"), "{said}");
    assert_eq!(db.columns("items"), DEFAULT_COLUMNS);
    db.exec("INSERT INTO items (task_id, item_id, status) VALUES ('x', 'a', 'failed')");
    assert!(
        db.try_exec("INSERT INTO items (task_id, item_id, status) VALUES ('x', 'a', 'failed')")
            .is_err(),
        "no primary key on (task_id, item_id)"
    );
    db.exec("INSERT INTO items (task_id, item_id, status) VALUES ('y', 'a', 'failed')");
    assert!(init(&[]).contains("already has every column"));
    // import uses it.
    let out = sb
        .cmd()
        .args(["import", "--task", "t", "--store", &db.store()])
        .write_stdin("a\nb\n{\"id\":\"c\",\"url\":\"http://x/c\"}\na\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM items WHERE task_id = 't' AND status = 'failed'"),
        3
    );

    // A user's table without bookkeeping, lease or schedule columns: each ALTER TABLE is
    // shown and applied, after which two workers share its tasks.
    let k = db.ty(Ty::Key);
    db.exec(&format!(
        "CREATE TABLE data (task_id {k}, content {k}, status {k}, PRIMARY KEY (task_id, content))"
    ));
    let ids = mixed_ids(3000);
    for chunk in ids.chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|id| format!("('t', '{id}', 'failed')"))
            .collect();
        db.exec(&format!("INSERT INTO data VALUES {}", values.join(", ")));
    }
    let said = init(&["--table", "data"]);
    let alter = format!("ALTER TABLE {} ADD COLUMN ", db.quote("data"));
    let alters: Vec<&str> = said.lines().filter(|l| l.starts_with(&alter)).collect();
    assert_eq!(alters.len(), ADDED_COLUMNS.len(), "{said}");
    for col in ADDED_COLUMNS {
        assert!(
            said.contains(&format!("{alter}{} ", db.quote(col))),
            "{col}: {said}"
        );
    }
    let mut want: Vec<&str> = vec!["task_id", "content", "status"];
    want.extend(ADDED_COLUMNS);
    assert_eq!(db.columns("data"), want);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM data WHERE status = 'failed'"),
        3000,
        "init changed the rows"
    );
    let again = init(&["--table", "data"]);
    assert!(again.contains("already has every column"), "{again}");

    let server = support::server(MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    });
    let mut a = worker_args(db, &server, &["--concurrency", "20"]);
    a.extend(["--table", "data", "--id-column", "content"].map(String::from));
    let workers = [sb.spawn(&strs(&a)), sb.spawn(&strs(&a))];
    let mut checked = Vec::new();
    for w in workers {
        checked.push(assert_worker_exit(&w.wait(Duration::from_secs(120))));
    }
    assert_eq!(server.per_id_max(), 1, "an item was checked twice");
    assert_eq!(server.total_requests(), 3000);
    assert!(checked.iter().all(|&c| c >= 300), "not shared: {checked:?}");
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM data WHERE checked_at IS NOT NULL AND attempts = 1 \
             AND lease_owner IS NULL AND lease_until IS NULL"
        ),
        3000
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM data WHERE status = 'ok'"),
        2700
    );
}

#[test]
fn scenario_init() {
    on_every_backend("init", init);
}

fn import(db: &dyn Db, sb: &Sandbox) {
    db.default_schema();
    let import = |extra: &[&str], input: &str, counts: (u64, u64, u64)| {
        let out = sb
            .cmd()
            .args(["import", "--task", "t", "--store", &db.store()])
            .args(extra)
            .write_stdin(input.to_string())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let said = stdout(&out);
        let (a, b, r) = counts;
        assert!(
            said.starts_with("imported into task t on ")
                && said.ends_with(&format!(": added {a}, already there {b}, reset {r}\n")),
            "{said}"
        );
        assert_eq!(said.lines().count(), 1, "{said}");
    };
    let row = |id: &str| -> (String, Option<String>) {
        let r = db.rows(&format!(
            "SELECT status, url FROM items WHERE task_id = 't' AND item_id = '{id}'"
        ));
        assert_eq!(r.len(), 1, "{id}: {r:?}");
        (r[0][0].clone().unwrap(), r[0][1].clone())
    };
    import(
        &[],
        "a\nb\n{\"id\": \"c\", \"url\": \"http://127.0.0.1:9/c\"}\n",
        (3, 0, 0),
    );
    // A run found b OK.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_112_000);
    db.exec(&format!(
        "UPDATE items SET status = 'ok', http_status = 200, attempts = 1, checked_at = {} \
         WHERE task_id = 't' AND item_id = 'b'",
        db.time_lit(at)
    ));
    // Importing the same ids again changes nothing of what is there: b stays OK, c keeps
    // its url (the line gives another one).
    import(
        &[],
        "b\n{\"id\": \"c\", \"url\": \"http://127.0.0.1:9/new-c\"}\nd\n",
        (1, 2, 0),
    );
    let b = db.item("t", "b");
    assert_eq!(b.status, "ok", "an id already there was reset");
    let at = humantime::format_rfc3339_millis(at).to_string();
    assert_eq!(
        (b.http_status, b.attempts, b.checked_at.as_deref()),
        (Some(200), 1, Some(&*at))
    );
    assert_eq!(
        row("c"),
        ("failed".into(), Some("http://127.0.0.1:9/c".into()))
    );
    assert_eq!(row("d").0, "failed");
    // --reset: b is failed again and takes the url its line gives; e is new.
    import(
        &["--reset"],
        "{\"id\": \"b\", \"url\": \"http://127.0.0.1:9/new-b\"}\ne\n",
        (1, 0, 1),
    );
    assert_eq!(
        row("b"),
        ("failed".into(), Some("http://127.0.0.1:9/new-b".into()))
    );
    assert_eq!(row("e").0, "failed");
    assert_eq!(db.count("SELECT COUNT(*) FROM items"), 5);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM items WHERE lease_owner IS NOT NULL"),
        0,
        "import leased"
    );
}

#[test]
fn scenario_import() {
    on_every_backend("import", import);
}

// ---------------------------------------------------------------------------------------
// Faults

/// Another session locks `items` for 5 s once the first answers are written: the run waits
/// it out and succeeds, every row written, every item asked once.
fn lock_held_mid_run(db: &dyn Db, sb: &Sandbox) {
    const N: usize = 2000;
    let held = Duration::from_secs(5);
    let server = support::server(MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    });
    db.default_schema();
    let ids: Vec<String> = (0..N).map(|i| format!("ok-{i}")).collect();
    db.insert_failed("t", &ids);
    let started = Instant::now();
    let run = sb.spawn(&strs(&worker_args(db, &server, &["--concurrency", "4"])));
    support::wait_until("the first rows written", Duration::from_secs(60), || {
        db.count("SELECT COUNT(*) FROM items WHERE status = 'ok'") >= 20
    });
    let mut lock = db.lock_items();
    let taken = Instant::now();
    let done_then = lock.count("SELECT COUNT(*) FROM items WHERE status = 'ok'");
    std::thread::sleep(held);
    let released = Instant::now();
    lock.release();
    let out = run.wait(Duration::from_secs(300));
    let ended = Instant::now();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        (done_then as usize) < N,
        "the run was over before the lock was taken"
    );
    assert!(ended > released, "the run ended while the lock was held");
    assert!(ended - started >= held, "{:?}", ended - started);
    assert!(taken > started);
    let s = support::summary(&out);
    assert_eq!(s["checked"], N);
    assert_eq!(s["written"], N);
    assert_eq!(s["unwritten"], 0);
    assert!(s["store_error"].is_null(), "{s}");
    let rows = db.items("t");
    assert_eq!(rows.len(), N);
    for (id, r) in &rows {
        assert_eq!(r.status, "ok", "{id}: {r:?}");
        assert_eq!(r.attempts, 1, "{id}: {r:?}");
        assert!(r.checked_at.is_some(), "{id}: {r:?}");
        assert_eq!(r.lease_owner, None, "{id}: {r:?}");
    }
    assert_eq!(server.per_id_max(), 1, "an item was checked twice");
    assert_eq!(server.total_requests(), N as u64, "each item checked once");
}

#[test]
fn scenario_lock_held_mid_run() {
    on_every_backend("lock_held_mid_run", lock_held_mid_run);
}
