//! The PostgreSQL store against a real server: outcomes and bookkeeping, the seed's integer
//! table, several workers sharing one task (and one of them killed), the advisory-lock
//! fallback of tables without lease columns, `init`, bad tables, secrets.
//!
//! Needs `RECHECK_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); each
//! test is skipped with a line on stderr when it is not set. Every test works in a schema of
//! its own (`rc_<random>`), named to recheck through the URL's `options=-csearch_path=...`,
//! and drops it at the end.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};

use crate::support::{
    self, MockConfig, MockServer, OUTCOME_CASES as CASES, Sandbox, check_outcome_summary,
    outcome_args,
};

const ENV: &str = "RECHECK_TEST_POSTGRES_URL";

/// The runtime the test-side database pool lives on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("postgres test runtime")
    })
}

/// A schema of one test's own, and a pool whose search path points at it.
struct Pg {
    /// The URL recheck gets: the server's, with `options=-csearch_path=<schema>`.
    url: String,
    schema: String,
    /// On the server's URL (no search path), to drop the schema at the end.
    admin: PgPool,
    pool: PgPool,
}

impl Pg {
    /// `None` (and a line on stderr) when no server is configured.
    fn new(test: &str) -> Option<Pg> {
        let base = match std::env::var(ENV) {
            Ok(u) if !u.trim().is_empty() => u,
            _ => {
                eprintln!("skipped: {test}: {ENV} is not set");
                return None;
            }
        };
        let schema = format!("rc_{:016x}", fastrand::u64(..));
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
        let (admin, pool) = runtime().block_on(async {
            let opts: PgConnectOptions = base.parse().expect("test URL");
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone())
                .await
                .unwrap_or_else(|e| panic!("{ENV}: cannot connect: {e}"));
            sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&admin)
                .await
                .expect("create schema");
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect_with(opts.options([("search_path", schema.as_str())]))
                .await
                .expect("connect to the test schema");
            (admin, pool)
        });
        Some(Pg {
            url,
            schema,
            admin,
            pool,
        })
    }

    /// Runs one or more statements.
    fn exec(&self, sql: &str) {
        runtime()
            .block_on(sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(&self.pool))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of the first row, as text.
    fn text(&self, sql: &str) -> Option<String> {
        runtime()
            .block_on(sqlx::query_scalar(AssertSqlSafe(sql.to_string())).fetch_one(&self.pool))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn count(&self, sql: &str) -> i64 {
        runtime()
            .block_on(sqlx::query_scalar(AssertSqlSafe(sql.to_string())).fetch_one(&self.pool))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The whole table as text, to prove a refused run wrote nothing.
    fn snapshot(&self, table: &str) -> String {
        self.text(&format!(
            "SELECT COALESCE(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM {table} x"
        ))
        .unwrap_or_default()
    }

    /// The default schema (SPEC §2) in `items`.
    fn default_schema(&self) {
        self.exec(
            "CREATE TABLE items (task_id TEXT NOT NULL, item_id TEXT NOT NULL, status TEXT NOT NULL,
               url TEXT NULL, http_status INTEGER NULL, attempts INTEGER NOT NULL DEFAULT 0,
               last_error TEXT NULL, checked_at TIMESTAMPTZ NULL, lease_owner TEXT NULL,
               lease_until TIMESTAMPTZ NULL, PRIMARY KEY (task_id, item_id));
             CREATE INDEX items_task_status ON items (task_id, status);",
        );
    }

    /// `ids` as failed items of `task` in `items`.
    fn insert(&self, task: &str, ids: &[String]) {
        runtime()
            .block_on(
                sqlx::query(
                    "INSERT INTO items (task_id, item_id, status) \
                     SELECT $1, id, 'failed' FROM UNNEST($2::text[]) AS id",
                )
                .bind(task)
                .bind(ids)
                .execute(&self.pool),
            )
            .expect("insert items");
    }

    /// Every row of task `task` in `items`: id → row (checked_at as RFC 3339 text).
    fn rows(&self, task: &str) -> HashMap<String, Row_> {
        runtime()
            .block_on(
                sqlx::query(
                    "SELECT item_id, status, http_status, attempts, last_error, \
                       to_char(checked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                       lease_owner \
                     FROM items WHERE task_id = $1",
                )
                .bind(task)
                .fetch_all(&self.pool),
            )
            .expect("read items")
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    Row_ {
                        status: r.get(1),
                        http_status: r.get(2),
                        attempts: r.get(3),
                        last_error: r.get(4),
                        checked_at: r.get(5),
                        lease_owner: r.get(6),
                    },
                )
            })
            .collect()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        );
        let _ = runtime().block_on(async {
            self.pool.close().await;
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&self.admin).await
        });
    }
}

/// One row of the default schema.
#[derive(Debug, Clone)]
struct Row_ {
    status: String,
    http_status: Option<i32>,
    attempts: i32,
    last_error: Option<String>,
    checked_at: Option<String>,
    lease_owner: Option<String>,
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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

/// `recheck run` arguments for a worker on task `t` of the test's schema.
fn worker_args(pg: &Pg, server: &MockServer, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--task",
        "t",
        "--store",
        &pg.url,
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

#[test]
fn pg_outcomes() {
    let Some(pg) = Pg::new("pg_outcomes") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    pg.default_schema();
    let ids: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
    pg.insert("t1", &ids);
    // Items of another task, and an already OK item of this task, are not touched.
    pg.insert("t2", &["ok-2".to_string()]);
    pg.exec("INSERT INTO items (task_id, item_id, status) VALUES ('t1', 'ok-3', 'ok')");
    let mut cmd = sb.run(&server, "t1", &pg.url);
    outcome_args(&mut cmd);
    let out = cmd.output().unwrap();
    check_outcome_summary(&out);
    let rows = pg.rows("t1");
    for &(id, status, http, attempts, err) in CASES {
        let row = &rows[id];
        assert_eq!(row.status, status, "{id}: {row:?}");
        assert_eq!(row.http_status.map(i64::from), http, "{id}: {row:?}");
        assert_eq!(i64::from(row.attempts), attempts, "{id}: {row:?}");
        match err {
            None => assert_eq!(row.last_error, None, "{id}"),
            Some(frag) => {
                let e = row.last_error.as_deref().unwrap_or_default();
                assert!(e.contains(frag), "{id}: {e:?} lacks {frag:?}");
            }
        }
        assert!(row.checked_at.is_some(), "{id}: no checked_at");
        assert_eq!(row.lease_owner, None, "{id}: lease left behind");
    }
    assert_eq!(server.requests("ok-2"), 0);
    assert_eq!(server.requests("ok-3"), 0);
    assert_eq!(pg.rows("t2")["ok-2"].status, "failed");
    assert_eq!(rows["ok-3"].checked_at, None);
    // Attempts add up over runs: a second run re-checks what is still failed.
    sb.run(&server, "t1", &pg.url)
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
    assert_eq!(pg.rows("t1")["s401-1"].attempts, 2);
    // `status` reads the counts back.
    let out = sb
        .cmd()
        .args([
            "status", "--task", "t1", "--store", &pg.url, "--format", "json",
        ])
        .output()
        .unwrap();
    let j = support::summary(&out);
    assert_eq!(j["total"], 12, "{j}");
    assert_eq!(j["statuses"]["gone"], 2, "{j}");
    assert!(
        j["newest_checked_at"]
            .as_str()
            .unwrap_or_default()
            .ends_with('Z'),
        "{j}"
    );
}

#[test]
fn pg_seed_table_with_integer_statuses() {
    let Some(pg) = Pg::new("pg_seed_table_with_integer_statuses") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    // The seed's table: no bookkeeping, no lease columns (one run per task, advisory lock).
    pg.exec(
        "CREATE TABLE data (id SERIAL PRIMARY KEY, task_id INTEGER, content TEXT, status INTEGER, extra TEXT);
         INSERT INTO data (task_id, content, status, extra) VALUES
           (42, 'ok-1', 5, 'x'), (42, 'ok-2', 5, 'y'), (42, 'fail-1', 5, NULL), (42, 's500-1', 5, NULL),
           (42, 'ok-3', 3, NULL), (7, 'ok-4', 5, NULL);",
    );
    sb.cmd()
        .args([
            "run",
            "--task",
            "42",
            "--store",
            &pg.url,
            "--table",
            "data",
            "--id-column",
            "content",
            "--failed-status",
            "5",
            "--ok-status",
            "1",
            "--expect-json",
            "/status=done",
            "--retries",
            "1",
            "--backoff",
            "1ms..2ms",
            "--url",
        ])
        .arg(server.item_url_template())
        .assert()
        .code(1);
    let got = pg.text(
        "SELECT string_agg(content || '=' || status || ':' || pg_typeof(status), ' ' ORDER BY id) FROM data",
    );
    assert_eq!(
        got.as_deref(),
        Some(
            "ok-1=1:integer ok-2=1:integer fail-1=5:integer s500-1=5:integer ok-3=3:integer ok-4=5:integer"
        )
    );
    assert_eq!(server.requests("ok-3"), 0);
    assert_eq!(server.requests("ok-4"), 0);
    assert_eq!(server.requests("s500-1"), 2);
    // `status` on integer statuses (it has no --failed-status, whose default is text).
    let out = sb
        .cmd()
        .args([
            "status", "--task", "42", "--store", &pg.url, "--table", "data",
        ])
        .args(["--id-column", "content", "--format", "json"])
        .output()
        .unwrap();
    let j = support::summary(&out);
    assert_eq!(
        (j["statuses"]["1"].as_u64(), j["statuses"]["5"].as_u64()),
        (Some(2), Some(2)),
        "{j}"
    );
    // No column was added, and the task's lock is free again.
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'data'"),
        5
    );
    assert_eq!(
        pg.count(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND classid = hashtext('recheck:' || 'data'::regclass::oid::text)::oid"
        ),
        0
    );
}

/// The local ports of the TCP sockets process `pid` holds open: its side of its database
/// connections, to tell which worker a server session belongs to.
pub(crate) fn tcp_ports(pid: i32) -> std::collections::HashSet<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // `sl local_address rem_address st ... uid timeout inode`: address `HEXIP:HEXPORT`.
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                let port = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}

/// Waits until every worker of `workers` has a database session waiting on the table lock
/// the test holds: `waiting_ports` gives the client ports of the sessions waiting on it.
/// Fails at once (with its output) when a worker exits meanwhile.
pub(crate) fn wait_for_every_worker(
    workers: &mut [support::Running],
    mut waiting_ports: impl FnMut() -> Vec<u16>,
) {
    support::wait_until(
        "every worker to wait on the locked table",
        Duration::from_secs(60),
        || {
            for w in workers.iter_mut() {
                if let Ok(Some(status)) = w.child.try_wait() {
                    panic!("a worker exited before the table was unlocked: {status}");
                }
            }
            let waiting = waiting_ports();
            workers
                .iter()
                .all(|w| tcp_ports(w.pid()).iter().any(|p| waiting.contains(p)))
        },
    );
}

/// Three workers on one task of 30,000 items share it. They start together: the test holds
/// the table locked until every one of them waits on it (a session of each is seen waiting
/// on the lock), so none gets a head start from a loaded machine starting the processes
/// one after the other, and the fair-share bound below measures the store's claims, not
/// process start-up.
#[test]
fn pg_three_workers_share_a_task() {
    let Some(pg) = Pg::new("pg_three_workers_share_a_task") else {
        return;
    };
    const N: usize = 30_000;
    let server = support::server(MockConfig {
        latency: Duration::from_millis(5),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    pg.default_schema();
    let ids = mixed_ids(N);
    pg.insert("t", &ids);
    let a = worker_args(&pg, &server, &["--concurrency", "50"]);
    let lock = runtime().block_on(async {
        let mut tx = pg.pool.begin().await.expect("begin");
        sqlx::raw_sql("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .expect("lock items");
        tx
    });
    let mut workers: Vec<_> = (0..3).map(|_| sb.spawn(&strs(&a))).collect();
    wait_for_every_worker(&mut workers, || {
        runtime()
            .block_on(
                sqlx::query_scalar::<_, i32>(
                    "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE NOT l.granted AND l.relation = 'items'::regclass",
                )
                .fetch_all(&pg.pool),
            )
            .expect("waiting sessions")
            .into_iter()
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    });
    let started = Instant::now();
    runtime().block_on(lock.commit()).expect("unlock items");
    let outs: Vec<_> = workers
        .into_iter()
        .map(|w| w.wait(Duration::from_secs(60)))
        .collect();
    let took = started.elapsed();
    let mut checked = Vec::new();
    for out in &outs {
        // 1 when its pages held still-failed items, else 0 (ids are walked in order).
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        checked.push(support::summary(out)["checked"].as_u64().unwrap());
    }
    assert_eq!(server.per_id_max(), 1, "an item was checked twice");
    assert_eq!(server.total_requests(), N as u64);
    assert_eq!(checked.iter().sum::<u64>(), N as u64, "{checked:?}");
    // Each did a fair share (a third each, 20 % at least): no worker held the others back,
    // and none took more than its share of claims.
    assert!(
        checked.iter().all(|&c| c >= N as u64 / 5),
        "the work was not shared: {checked:?} in {took:?}"
    );
    eprintln!("three workers: {checked:?} in {took:?}");
    let rows = pg.rows("t");
    assert_eq!(rows.len(), N);
    for id in &ids {
        let want = if id.starts_with("ok-") {
            "ok"
        } else {
            "failed"
        };
        let row = &rows[id];
        assert_eq!(row.status, want, "{id}");
        assert!(row.checked_at.is_some(), "{id} not written");
        assert_eq!(row.attempts, 1, "{id}");
        assert_eq!(row.lease_owner, None, "{id}: lease left behind");
    }
}

#[test]
fn pg_killed_worker_is_taken_over() {
    let Some(pg) = Pg::new("pg_killed_worker_is_taken_over") else {
        return;
    };
    const N: usize = 9_000;
    const CONCURRENCY: usize = 20;
    let server = support::server(MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    pg.default_schema();
    let ids = mixed_ids(N);
    pg.insert("t", &ids);
    let a = worker_args(
        &pg,
        &server,
        &["--lease", "4s", "--concurrency", &CONCURRENCY.to_string()],
    );
    let victim = sb.spawn(&strs(&a));
    let survivors = [sb.spawn(&strs(&a)), sb.spawn(&strs(&a))];
    support::wait_until("all workers under way", Duration::from_secs(30), || {
        server.total_requests() >= 2000
    });
    victim.signal(libc::SIGKILL);
    let _ = victim.wait(Duration::from_secs(10));
    for s in survivors {
        let out = s.wait(Duration::from_secs(60));
        // 1 when its pages held still-failed items, else 0 (ids are walked in order).
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    }
    // Only what the killed worker had in hand (answered, not saved) was checked twice;
    // nothing three times.
    let counts = server.all_requests();
    let twice = counts.values().filter(|&&n| n == 2).count();
    assert!(
        counts.values().all(|&n| n <= 2),
        "an item was checked 3 times"
    );
    assert!(twice <= 1000 + CONCURRENCY, "{twice} items checked twice");
    assert_eq!(counts.len(), N, "some items were never asked about");
    eprintln!("killed worker: {twice} items checked twice");
    // The survivors saw the victim die (same host) and took its claims over.
    let rows = pg.rows("t");
    for id in &ids {
        let want = if id.starts_with("ok-") {
            "ok"
        } else {
            "failed"
        };
        assert_eq!(rows[id].status, want, "{id}");
        assert!(rows[id].checked_at.is_some(), "{id} never written");
        assert_eq!(rows[id].lease_owner, None, "{id}: claim left behind");
    }
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
fn pg_init_creates_the_schema_and_adds_lease_columns() {
    let Some(pg) = Pg::new("pg_init_creates_the_schema_and_adds_lease_columns") else {
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
    let again = sb
        .cmd()
        .args(["init", "--store", &pg.url])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already has every column"),
        "{again:?}"
    );

    // A user's table without bookkeeping or lease columns: init prints and applies the
    // ALTER TABLEs, after which two workers share its tasks.
    pg.exec(
        "CREATE TABLE data (task_id TEXT, content TEXT, status TEXT, PRIMARY KEY (task_id, content));
         INSERT INTO data SELECT 't', CASE WHEN g % 10 = 0 THEN 'fail-' ELSE 'ok-' END || g, 'failed'
           FROM generate_series(0, 2999) g;",
    );
    let out = sb
        .cmd()
        .args(["init", "--store", &pg.url, "--table", "data"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let alters: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ALTER TABLE \"data\" ADD COLUMN"))
        .collect();
    assert_eq!(alters.len(), 9, "{text}");
    for col in [
        "http_status",
        "attempts",
        "last_error",
        "checked_at",
        "lease_owner",
        "lease_until",
    ] {
        assert!(
            text.contains(&format!("ADD COLUMN \"{col}\" ")),
            "{col}: {text}"
        );
    }
    let server = support::server(MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    });
    let mut a = worker_args(&pg, &server, &["--concurrency", "20"]);
    a.extend(["--table", "data", "--id-column", "content"].map(String::from));
    let workers = [sb.spawn(&strs(&a)), sb.spawn(&strs(&a))];
    let mut checked = Vec::new();
    for w in workers {
        let out = w.wait(Duration::from_secs(60));
        // 1 when its pages held still-failed items, else 0 (ids are walked in order).
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        checked.push(support::summary(&out)["checked"].as_u64().unwrap());
    }
    assert_eq!(server.per_id_max(), 1, "an item was checked twice");
    assert_eq!(server.total_requests(), 3000);
    assert!(checked.iter().all(|&c| c >= 300), "not shared: {checked:?}");
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM data WHERE checked_at IS NOT NULL AND attempts = 1 AND lease_owner IS NULL"),
        3000
    );
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM data WHERE status = 'ok'"),
        2700
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
    pg.insert("t", &["ok-1".to_string(), "ok-2".to_string()]);
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
    assert_eq!(pg.rows("t")["ok-1"].status, "ok");
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
fn pg_dry_run_writes_nothing() {
    let Some(pg) = Pg::new("pg_dry_run_writes_nothing") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    pg.default_schema();
    pg.insert("t", &mixed_ids(30));
    let before = pg.snapshot("items");
    let out = sb
        .run(&server, "t", &pg.url)
        .args(["--dry-run", "--format", "json"])
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!(s["dry_run"], true);
    assert_eq!(s["checked"], 30);
    assert_eq!(server.total_requests(), 30);
    assert_eq!(pg.snapshot("items"), before);
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
