//! What only the PostgreSQL store has, against a real server: the advisory-lock fallback of
//! tables without lease columns, the native column types `init` creates, bad tables and
//! columns on the server, a password that never shows, and text time columns with integer
//! ids. What every SQL backend shares (outcomes, mapping, leases, takeover, conflicts,
//! `init --table`, `import`, faults) is in the scenario table, `scenarios.rs`.
//!
//! Needs `RECHECK_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); each
//! test is skipped with a line on stderr when it is not set. Every test works in a schema of
//! its own (`rc_<random>`), named to recheck through the URL's `options=-csearch_path=...`,
//! and drops it at the end (support/db.rs, `Pg`).

use std::time::{Duration, Instant};

use crate::support::db::{Db, PG_ENV as ENV, Pg};
use crate::support::{self, MockConfig, Sandbox};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pg_table_without_lease_columns_allows_one_run_per_task() {
    let Some(pg) = Pg::new("pg_table_without_lease_columns_allows_one_run_per_task") else {
        return;
    };
    let server = support::server(MockConfig {
        latency: Duration::from_millis(1000),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    pg.exec(
        "CREATE TABLE data (task_id TEXT, content TEXT, status TEXT);
         INSERT INTO data VALUES ('t', 'ok-1', 'failed'), ('u', 'ok-2', 'failed');",
    );
    let tmpl = server.item_url_template();
    let args = |task: &'static str| {
        vec![
            "run".to_string(),
            "--task".into(),
            task.into(),
            "--store".into(),
            pg.url.clone(),
            "--table".into(),
            "data".into(),
            "--id-column".into(),
            "content".into(),
            "--url".into(),
            tmpl.clone(),
        ]
    };
    let first = sb.spawn(&strs(&args("t")));
    support::wait_until("the first run to ask", Duration::from_secs(30), || {
        server.total_requests() >= 1
    });
    let before = pg.snapshot("data");
    let started = Instant::now();
    let out = sb.cmd().args(args("t")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "not fast");
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("another recheck run holds the task's lock")
            && err.contains("task t")
            && err.contains("recheck init --store")
            && err.contains("--table data"),
        "{err}"
    );
    assert_eq!(pg.snapshot("data"), before, "the refused run wrote");
    // Another task of the same table is not held up.
    sb.cmd().args(args("u")).assert().code(0);
    assert_eq!(first.wait(Duration::from_secs(30)).status.code(), Some(0));
    assert_eq!(server.requests("ok-1"), 1);
    assert_eq!(
        pg.text("SELECT string_agg(status, ',' ORDER BY content) FROM data")
            .as_deref(),
        Some("ok,ok")
    );
    // The lock went with the run: the next run on the task may start.
    pg.exec("UPDATE data SET status = 'failed'");
    sb.cmd().args(args("t")).assert().code(0);
}

#[test]
fn pg_init_creates_native_types_and_the_index() {
    let Some(pg) = Pg::new("pg_init_creates_native_types_and_the_index") else {
        return;
    };
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["init", "--store", &pg.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("created table items"),
        "{out:?}"
    );
    let cols = pg.text(
        "SELECT string_agg(column_name || ' ' || data_type || ' ' || is_nullable, ', ' ORDER BY ordinal_position)
         FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'items'",
    );
    assert_eq!(
        cols.as_deref(),
        Some(
            "task_id text NO, item_id text NO, status text NO, url text YES, http_status integer YES, \
             attempts integer NO, last_error text YES, checked_at timestamp with time zone YES, \
             lease_owner text YES, lease_until timestamp with time zone YES, checks integer NO, \
             first_checked_at timestamp with time zone YES, next_check_at timestamp with time zone YES"
        )
    );
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'items'"),
        2,
        "primary key and (task_id, status)"
    );
}

#[test]
fn pg_bad_table_or_column_is_refused() {
    let Some(pg) = Pg::new("pg_bad_table_or_column_is_refused") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    pg.default_schema();
    pg.insert_failed("t", &["ok-1".to_string(), "ok-2".to_string()]);
    pg.exec(
        "CREATE TABLE data (task_id INTEGER, content TEXT, status INTEGER);
         INSERT INTO data VALUES (1, 'ok-1', 5);",
    );
    let tmpl = server.item_url_template();
    let on = |table: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["run", "--store", &pg.url].map(String::from).to_vec();
        a.extend(table.iter().map(|s| s.to_string()));
        a
    };
    let items = |extra: &[&str]| {
        let mut a = on(&["--task", "t", "--url", &tmpl]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let data = |extra: &[&str]| {
        let mut a = on(&[
            "--task",
            "1",
            "--table",
            "data",
            "--id-column",
            "content",
            "--url",
            &tmpl,
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (items(&["--table", "nope"]), "table nope not found"),
        (
            items(&["--status-column", "state"]),
            "no column state (--status-column",
        ),
        (
            items(&["--task-column", "job"]),
            "no column job (--task-column",
        ),
        (
            items(&["--id-column", "ident"]),
            "no column ident (--id-column",
        ),
        (
            on(&["--task", "t", "--url", "http://127.0.0.1:9/{colour}"]),
            "no column colour (placeholder in --url",
        ),
        (
            data(&["--failed-status", "5"]),
            "--ok-status \"ok\" is not an integer",
        ),
        (
            data(&["--failed-status", "failed", "--ok-status", "1"]),
            "--failed-status \"failed\" is not an integer",
        ),
        (
            on(&[
                "--task",
                "one",
                "--table",
                "data",
                "--id-column",
                "content",
                "--url",
                &tmpl,
                "--failed-status",
                "5",
                "--ok-status",
                "1",
            ]),
            "--task \"one\" is not an integer",
        ),
    ];
    let before = (pg.snapshot("items"), pg.snapshot("data"));
    for (args, want) in &cases {
        let out = sb.cmd().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // `run` does not create a missing table on a server; `import` neither.
    let out = sb
        .cmd()
        .args([
            "import", "--task", "t", "--store", &pg.url, "--table", "nope",
        ])
        .write_stdin("ok-9\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("table nope not found"), "{out:?}");
    assert_eq!((pg.snapshot("items"), pg.snapshot("data")), before);
    assert_eq!(server.total_requests(), 0);
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema()"),
        2
    );
}

#[test]
fn pg_password_never_shown() {
    let Some(pg) = Pg::new("pg_password_never_shown") else {
        return;
    };
    const SECRET: &str = "hunter2";
    // Trust authentication accepts any password; a password-protected server would need
    // the real one in the variable.
    let Some(url) = with_password(&pg.url, SECRET) else {
        eprintln!("skipped: pg_password_never_shown: {ENV} already has a password");
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    let mut outputs = Vec::new();
    outputs.push(sb.cmd().args(["init", "--store", &url]).output().unwrap());
    outputs.push(
        sb.cmd()
            .args(["import", "--task", "t", "--store", &url])
            .write_stdin("ok-1\ns500-1\n")
            .output()
            .unwrap(),
    );
    for format in ["text", "json"] {
        outputs.push(
            sb.run(&server, "t", &url)
                .args(["--retries", "0", "--format", format, "--log-format", format])
                .env("RUST_LOG", "trace")
                .output()
                .unwrap(),
        );
    }
    outputs.push(
        sb.cmd()
            .args(["status", "--task", "t", "--store", &url])
            .output()
            .unwrap(),
    );
    // Errors: a missing table, a server that is not there, a role that does not exist.
    outputs.push(
        sb.run(&server, "t", &url)
            .args(["--table", "nope"])
            .output()
            .unwrap(),
    );
    outputs.push(
        sb.run(&server, "t", "postgres://someone:hunter2@127.0.0.1:9/db")
            .output()
            .unwrap(),
    );
    let parsed = url::Url::parse(&pg.url).unwrap();
    let mut no_role = parsed.clone();
    no_role.set_username("rc_no_such_role").unwrap();
    no_role.set_password(Some(SECRET)).unwrap();
    outputs.push(sb.run(&server, "t", no_role.as_str()).output().unwrap());
    let codes: Vec<_> = outputs.iter().map(|o| o.status.code()).collect();
    assert_eq!(
        codes,
        [
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(0),
            Some(2),
            Some(2),
            Some(2)
        ],
        "{outputs:?}"
    );
    for out in &outputs {
        let all =
            String::from_utf8_lossy(&[&out.stdout[..], &out.stderr[..]].concat()).into_owned();
        assert!(!all.contains(SECRET), "password shown: {all}");
    }
    assert!(
        stderr(&outputs[6]).contains("postgres://someone:***@127.0.0.1:9/db"),
        "{:?}",
        outputs[6]
    );
    assert!(!outputs[2].stderr.is_empty(), "trace logs printed nothing");
    assert_eq!(pg.item("t", "ok-1").status, "ok");
}

/// `url` with `password` set, unless it has one already.
fn with_password(url: &str, password: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    if u.password().is_some() {
        return None;
    }
    u.set_password(Some(password)).ok()?;
    Some(u.to_string())
}

#[test]
fn pg_text_time_columns_and_integer_ids() {
    let Some(pg) = Pg::new("pg_text_time_columns_and_integer_ids") else {
        return;
    };
    let server = support::server(MockConfig {
        latency: Duration::from_millis(5),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    // Integer ids (keyset in numeric order), RFC 3339 text times, a template column.
    pg.exec(
        "CREATE TABLE jobs (task_id TEXT, n BIGINT, kind TEXT, state TEXT, attempts INTEGER,
           checked_at TEXT, lease_owner TEXT, lease_until TEXT, PRIMARY KEY (task_id, n));
         INSERT INTO jobs SELECT 't', g, CASE WHEN g % 7 = 0 THEN 'fail' ELSE 'ok' END, 'failed', 0
           FROM generate_series(1, 2500) g;",
    );
    let tmpl = format!("{}/items/{{kind}}-{{id}}", server.url());
    let a: Vec<String> = [
        "run",
        "--task",
        "t",
        "--store",
        &pg.url,
        "--table",
        "jobs",
        "--id-column",
        "n",
        "--status-column",
        "state",
        "--expect-json",
        "/status=done",
        "--format",
        "json",
        "--concurrency",
        "20",
        "--url",
        &tmpl,
    ]
    .map(String::from)
    .to_vec();
    let workers = [sb.spawn(&strs(&a)), sb.spawn(&strs(&a))];
    for w in workers {
        let out = w.wait(Duration::from_secs(60));
        // 1 when its pages held still-failed items, else 0 (ids are walked in order).
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    }
    assert_eq!(server.per_id_max(), 1);
    assert_eq!(server.total_requests(), 2500);
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM jobs WHERE state = CASE WHEN n % 7 = 0 THEN 'failed' ELSE 'ok' END AND attempts = 1 AND lease_owner IS NULL AND lease_until IS NULL"),
        2500
    );
    let at = pg
        .text("SELECT MAX(checked_at) FROM jobs")
        .unwrap_or_default();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "{at:?}"
    );
}

/// The server drops recheck's connections mid-run (a failover, an idle-connection reaper,
/// `pg_terminate_backend`): the statements that failed on them are transient, retried on new
/// connections, and the run finishes with every answer written.
#[test]
fn pg_dropped_connections_are_waited_out() {
    let Some(pg) = Pg::new("pg_dropped_connections_are_waited_out") else {
        return;
    };
    const N: usize = 3000;
    let server = support::server(MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    pg.default_schema();
    let ids: Vec<String> = (0..N).map(|i| format!("ok-{i}")).collect();
    pg.insert_failed("t", &ids);
    let tmpl = server.item_url_template();
    let run = sb.spawn(&[
        "run",
        "--task",
        "t",
        "--store",
        &pg.url,
        "--url",
        &tmpl,
        "--concurrency",
        "20",
        "--format",
        "json",
    ]);
    support::wait_until("the run to be under way", Duration::from_secs(30), || {
        server.total_requests() >= 500
    });
    // Only this run's sessions: other tests share the server.
    let ports = crate::support::db::tcp_ports(run.pid());
    assert!(!ports.is_empty(), "no database connection found");
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let killed = pg.count(&format!(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE client_port IN ({})) k",
        list.join(", ")
    ));
    assert!(killed >= 1, "no session was terminated");
    let out = run.wait(Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(s["checked"], N as u64, "{s}");
    assert_eq!(s["unwritten"], 0, "{s}");
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM items WHERE task_id = 't' AND status = 'ok'"),
        N as i64
    );
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM items WHERE lease_owner IS NOT NULL"),
        0,
        "leases left behind"
    );
    assert_eq!(server.per_id_max(), 1, "an item was checked twice");
}
