//! The MySQL / MariaDB store against a real server (`RECHECK_TEST_MYSQL_URL`, e.g.
//! `mysql://root@127.0.0.1:3306/test`): outcomes and bookkeeping, the seed's integer
//! statuses, workers sharing a task (and one of them killed), the one-run lock of a table
//! without lease columns, `init`, bad tables and columns, and a password that never shows.
//! Each test works in a database of its own, dropped at the end. Without the variable every
//! test says it is skipped and passes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::{Connection, MySqlConnection, Row};

use crate::support::{
    self, MockConfig, OUTCOME_CASES as CASES, Sandbox, check_outcome_summary, outcome_args,
};

const ENV: &str = "RECHECK_TEST_MYSQL_URL";

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("mysql test runtime")
    })
}

fn block<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

/// A database of its own for one test, on the server of `RECHECK_TEST_MYSQL_URL`; dropped
/// (best effort) at the end.
struct Db {
    /// The URL given in the environment (server and credentials).
    admin: String,
    /// The same URL pointing at this test's database.
    url: String,
    name: String,
}

impl Db {
    /// `None` (and a line on stderr) when the variable is not set.
    fn new(test: &str) -> Option<Db> {
        let Ok(admin) = std::env::var(ENV) else {
            eprintln!("skipped: {test}: {ENV} is not set");
            return None;
        };
        let name = format!("rc_{}_{:08x}", std::process::id(), fastrand::u32(..));
        let url = with_path(&admin, &name);
        exec_on(&admin, &format!("CREATE DATABASE `{name}`"));
        Some(Db { admin, url, name })
    }

    fn exec(&self, sql: &str) {
        exec_on(&self.url, sql);
    }

    /// Every row of `sql`, each column read as text (the query casts what is not text).
    fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        block(async {
            let mut conn = MySqlConnection::connect(&self.url).await.expect("connect");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let out = rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get::<Option<String>, _>(i).expect("text column"))
                        .collect()
                })
                .collect();
            let _ = conn.close().await;
            out
        })
    }

    fn count(&self, sql: &str) -> i64 {
        self.rows(&format!("SELECT CAST(({sql}) AS CHAR)"))[0][0]
            .as_deref()
            .expect("a count")
            .parse()
            .unwrap()
    }

    /// The default schema's rows of `task`: item id → (status, http_status, attempts,
    /// last_error, checked_at, lease_owner).
    fn items(&self, task: &str) -> HashMap<String, Vec<Option<String>>> {
        self.rows(&format!(
            "SELECT item_id, status, CAST(http_status AS CHAR), CAST(attempts AS CHAR), \
             last_error, CAST(checked_at AS CHAR), lease_owner FROM items WHERE task_id = '{task}'"
        ))
        .into_iter()
        .map(|mut r| (r.remove(0).unwrap(), r))
        .collect()
    }

    /// The default schema with `ids` as failed items of `task`.
    fn default_items(&self, task: &str, ids: &[String]) {
        self.exec(
            "CREATE TABLE IF NOT EXISTS items(task_id VARCHAR(191) NOT NULL, \
             item_id VARCHAR(191) NOT NULL, status VARCHAR(64) NOT NULL, url TEXT NULL, \
             http_status INT NULL, attempts INT NOT NULL DEFAULT 0, last_error TEXT NULL, \
             checked_at DATETIME(3) NULL, lease_owner VARCHAR(255) NULL, \
             lease_until DATETIME(3) NULL, PRIMARY KEY (task_id, item_id), INDEX (task_id, status))",
        );
        for chunk in ids.chunks(1000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|id| format!("('{task}', '{id}', 'failed')"))
                .collect();
            self.exec(&format!(
                "INSERT INTO items(task_id, item_id, status) VALUES {}",
                values.join(", ")
            ));
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::panic::catch_unwind(move || {
            exec_on(&admin, &format!("DROP DATABASE IF EXISTS `{name}`"))
        });
    }
}

fn exec_on(url: &str, sql: &str) {
    block(async {
        let mut conn = MySqlConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {ENV}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    })
}

/// `url` with its path (the database) replaced.
fn with_path(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("RECHECK_TEST_MYSQL_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

fn one_line(stderr: &[u8]) -> String {
    let err = String::from_utf8_lossy(stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn mysql_outcomes() {
    let Some(db) = Db::new("mysql_outcomes") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    let ids: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
    db.default_items("t1", &ids);
    // Items of another task, and an already OK item of this task, are not touched; an item
    // checked before keeps adding up its attempts.
    db.default_items("t2", &["ok-2".to_string()]);
    db.exec("INSERT INTO items(task_id, item_id, status) VALUES ('t1', 'ok-3', 'ok')");
    db.exec("UPDATE items SET attempts = 4 WHERE task_id = 't1' AND item_id = 's401-1'");
    let mut cmd = sb.run(&server, "t1", &db.url);
    outcome_args(&mut cmd);
    let out = cmd.output().unwrap();
    check_outcome_summary(&out);
    let rows = db.items("t1");
    for &(id, status, http, attempts, err) in CASES {
        let r = &rows[id];
        assert_eq!(r[0].as_deref(), Some(status), "{id}: {r:?}");
        assert_eq!(
            r[1].as_deref().map(|h| h.parse::<i64>().unwrap()),
            http,
            "{id}: {r:?}"
        );
        let before = if id == "s401-1" { 4 } else { 0 };
        assert_eq!(
            r[2].as_deref(),
            Some(&*(attempts + before).to_string()),
            "{id}"
        );
        match err {
            None => assert_eq!(r[3], None, "{id}: {r:?}"),
            Some(frag) => {
                let e = r[3].as_deref().unwrap_or_default();
                assert!(e.contains(frag), "{id}: {e:?} lacks {frag:?}");
            }
        }
        // DATETIME(3), UTC, with its milliseconds.
        let at = r[4].as_deref().unwrap_or_default();
        assert!(at.len() == 23 && at.as_bytes()[19] == b'.', "{id}: {at:?}");
        assert_eq!(r[5], None, "{id}: lease left behind");
    }
    assert_eq!(server.requests("ok-2"), 0);
    assert_eq!(server.requests("ok-3"), 0);
    assert_eq!(db.items("t2")["ok-2"][0].as_deref(), Some("failed"));
    assert_eq!(rows["ok-3"][4], None);
    // `status` reads the same store.
    let out = sb
        .cmd()
        .args([
            "status", "--task", "t1", "--store", &db.url, "--format", "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [r#""failed""#, r#""gone""#, r#""ok""#] {
        assert!(text.contains(want), "{text}");
    }
}

#[test]
fn mysql_seed_table_with_integer_statuses() {
    let Some(db) = Db::new("mysql_seed_table_with_integer_statuses") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    db.exec(
        "CREATE TABLE data(task_id INT, content VARCHAR(100), status INT); \
         INSERT INTO data VALUES (42, 'ok-1', 5), (42, 'ok-2', 5), (42, 'fail-1', 5), \
           (42, 's500-1', 5), (42, 'ok-3', 3), (7, 'ok-4', 5), (42, 'ok-5', 0);",
    );
    sb.cmd()
        .args([
            "run",
            "--task",
            "42",
            "--store",
            &db.url,
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
    let rows = db.rows("SELECT content, CAST(status AS CHAR) FROM data ORDER BY content");
    let got: Vec<(String, String)> = rows
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    let want = [
        ("fail-1", "5"),
        ("ok-1", "1"),
        ("ok-2", "1"),
        ("ok-3", "3"),
        ("ok-4", "5"),
        ("ok-5", "0"),
        ("s500-1", "5"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    for id in ["ok-3", "ok-4", "ok-5"] {
        assert_eq!(server.requests(id), 0, "{id}");
    }
    assert_eq!(server.requests("s500-1"), 2);
    // No column was added, and the task's lock is gone with the run.
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'data'",
            db.name
        )),
        3
    );
    // `status` counts the integer statuses.
    let out = sb
        .cmd()
        .args([
            "status", "--task", "42", "--store", &db.url, "--table", "data",
        ])
        .args(["--id-column", "content", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r#""1""#) && text.contains(r#""5""#), "{text}");
    // A text status on the INTEGER column would compare as 0 (ok-5): refused, not run.
    let out = sb
        .cmd()
        .args(["run", "--task", "42", "--store", &db.url, "--table", "data"])
        .args(["--id-column", "content", "--url"])
        .arg(server.item_url_template())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = one_line(&out.stderr);
    assert!(
        err.contains("--failed-status \"failed\" is not an integer"),
        "{err}"
    );
    assert_eq!(server.requests("ok-5"), 0);
}

#[test]
fn mysql_dry_run_writes_nothing() {
    let Some(db) = Db::new("mysql_dry_run_writes_nothing") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    db.default_items("t", &["ok-1".to_string(), "fail-1".to_string()]);
    let snapshot = || {
        db.rows(
            "SELECT item_id, status, CAST(attempts AS CHAR), CAST(checked_at AS CHAR), \
             lease_owner, CAST(lease_until AS CHAR) FROM items ORDER BY item_id",
        )
    };
    let before = snapshot();
    // The mariadb:// spelling works as well.
    let url = db.url.replacen("mysql://", "mariadb://", 1);
    let out = sb
        .run(&server, "t", &url)
        .args([
            "--dry-run",
            "--format",
            "json",
            "--expect-json",
            "/status=done",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s = support::summary(&out);
    assert_eq!(s["checked"], 2);
    assert_eq!(s["dry_run"], true);
    assert_eq!(server.total_requests(), 2);
    assert_eq!(snapshot(), before, "a dry run wrote");
}

fn worker_args(db: &Db, server: &support::MockServer, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--task",
        "t",
        "--store",
        &db.url,
        "--concurrency",
        "50",
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

/// Three workers on one task of 30,000 items share it. They start together: the test holds
/// the table locked (`LOCK TABLES ... WRITE`) until a session of every one of them waits on
/// it, so none gets a head start from a loaded machine starting the processes one after
/// the other, and the fair-share bound below measures the store's claims, not start-up.
#[test]
fn mysql_three_workers_share_a_task() {
    let Some(db) = Db::new("mysql_three_workers_share_a_task") else {
        return;
    };
    const N: usize = 30_000;
    let server = support::server(MockConfig {
        latency: Duration::from_millis(5),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let ids: Vec<String> = (0..N).map(|i| format!("ok-{i}")).collect();
    db.default_items("t", &ids);
    let a = worker_args(&db, &server, &[]);
    let mut lock = block(async {
        let mut conn = MySqlConnection::connect(&db.url).await.expect("connect");
        sqlx::raw_sql("LOCK TABLES items WRITE")
            .execute(&mut conn)
            .await
            .expect("lock items");
        conn
    });
    let mut workers: Vec<_> = (0..3).map(|_| sb.spawn(&strs(&a))).collect();
    crate::postgres::wait_for_every_worker(&mut workers, || {
        // HOST is `ADDRESS:PORT` of the client for a TCP session.
        db.rows(&format!(
            "SELECT HOST FROM information_schema.PROCESSLIST \
             WHERE DB = '{}' AND STATE LIKE 'Waiting for table%'",
            db.name
        ))
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|h| h.rsplit(':').next()?.parse().ok())
        .collect()
    });
    let started = Instant::now();
    block(async {
        sqlx::raw_sql("UNLOCK TABLES")
            .execute(&mut lock)
            .await
            .expect("unlock items");
        let _ = lock.close().await;
    });
    let outs: Vec<_> = workers
        .into_iter()
        .map(|w| w.wait(Duration::from_secs(60)))
        .collect();
    let took = started.elapsed();
    let mut checked = Vec::new();
    for out in &outs {
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        checked.push(support::summary(out)["checked"].as_u64().unwrap());
    }
    eprintln!("3 workers, {N} items: {took:?}, checked per worker {checked:?}");
    assert_eq!(server.per_id_max(), 1, "an item was checked twice");
    assert_eq!(server.total_requests(), N as u64);
    assert_eq!(checked.iter().sum::<u64>(), N as u64, "{checked:?}");
    // Each did a fair share (a third each, 20 % at least): no worker held the others back,
    // and none took more than its share of claims.
    assert!(
        checked.iter().all(|&c| c >= N as u64 / 5),
        "the work was not shared: {checked:?}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM items WHERE task_id = 't' AND status = 'ok' AND checked_at IS NOT NULL AND attempts = 1"),
        N as i64
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM items WHERE lease_owner IS NOT NULL OR lease_until IS NOT NULL"
        ),
        0,
        "claims left behind"
    );
}

#[test]
fn mysql_a_killed_worker_is_taken_over() {
    let Some(db) = Db::new("mysql_a_killed_worker_is_taken_over") else {
        return;
    };
    const N: usize = 9_000;
    let server = support::server(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let ids: Vec<String> = (0..N).map(|i| format!("ok-{i}")).collect();
    db.default_items("t", &ids);
    let a = worker_args(&db, &server, &["--lease", "4s"]);
    let victim = sb.spawn(&strs(&a));
    let survivors = [sb.spawn(&strs(&a)), sb.spawn(&strs(&a))];
    support::wait_until("the workers under way", Duration::from_secs(30), || {
        server.total_requests() >= 1500
    });
    victim.signal(libc::SIGKILL);
    let _ = victim.wait(Duration::from_secs(10));
    for s in survivors {
        let out = s.wait(Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    // Only what the killed worker had in hand (claimed and asked, not saved) was checked
    // twice; nothing three times.
    let counts = server.all_requests();
    let twice = counts.values().filter(|&&n| n == 2).count();
    eprintln!("killed worker: {twice} items checked twice");
    assert!(
        counts.values().all(|&n| n <= 2),
        "an item was checked 3 times"
    );
    assert!(twice <= 1000 + 50, "{twice} items checked twice");
    assert_eq!(counts.len(), N, "some items were never checked");
    // The survivors saw the victim die (same host) and took its claims over.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM items WHERE status = 'ok' AND checked_at IS NOT NULL"),
        N as i64
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM items WHERE lease_owner IS NOT NULL"),
        0,
        "claims left behind"
    );
}

#[test]
fn mysql_a_table_without_lease_columns_allows_one_run_per_task() {
    let Some(db) = Db::new("mysql_a_table_without_lease_columns_allows_one_run_per_task") else {
        return;
    };
    let server = support::server(MockConfig {
        latency: Duration::from_millis(300),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    db.exec(
        "CREATE TABLE data(task_id VARCHAR(20), content VARCHAR(100), status VARCHAR(20)); \
         INSERT INTO data VALUES ('t', 'ok-1', 'failed'), ('u', 'ok-2', 'failed');",
    );
    let tmpl = server.item_url_template();
    let args = |task: &'static str| {
        vec![
            "run".to_string(),
            "--task".into(),
            task.into(),
            "--store".into(),
            db.url.clone(),
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
    let started = Instant::now();
    let out = sb.cmd().args(args("t")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not fail fast"
    );
    let err = one_line(&out.stderr);
    assert!(
        err.contains("task t")
            && err.contains("another recheck run holds the task's lock")
            && err.contains("recheck init --store")
            && err.contains("--table data"),
        "{err}"
    );
    // Another task of the same table is not held up.
    sb.cmd().args(args("u")).assert().code(0);
    assert_eq!(first.wait(Duration::from_secs(30)).status.code(), Some(0));
    assert_eq!(server.requests("ok-1"), 1);
    // The lock went with the first run: the task can run again (nothing left to check).
    sb.cmd().args(args("t")).assert().code(0);
}

#[test]
fn mysql_init_creates_and_completes_the_schema() {
    let Some(db) = Db::new("mysql_init_creates_and_completes_the_schema") else {
        return;
    };
    let sb = Sandbox::new();
    let columns = |table: &str| -> Vec<String> {
        db.rows(&format!(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.columns \
             WHERE table_schema = '{}' AND table_name = '{table}' ORDER BY ORDINAL_POSITION",
            db.name
        ))
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
    };
    let out = sb
        .cmd()
        .args(["init", "--store", &db.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("created table items"),
        "{out:?}"
    );
    assert_eq!(
        columns("items"),
        [
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
            "next_check_at"
        ]
    );
    let pk = db.rows(&format!(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.statistics WHERE table_schema = '{}' \
         AND table_name = 'items' AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
        db.name
    ));
    assert_eq!(pk.len(), 2);
    // import and run use it.
    let out = sb
        .cmd()
        .args(["import", "--task", "t", "--store", &db.url])
        .write_stdin("a\nb\n{\"id\":\"c\",\"url\":\"http://x/c\"}\na\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM items WHERE task_id = 't' AND status = 'failed'"),
        3
    );

    // An existing table without bookkeeping and lease columns: each ALTER is shown and run.
    db.exec("CREATE TABLE data(task_id INT, content VARCHAR(100), status INT)");
    let out = sb
        .cmd()
        .args(["init", "--store", &db.url, "--table", "data"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for col in [
        "http_status",
        "attempts",
        "last_error",
        "checked_at",
        "lease_owner",
        "lease_until",
        "checks",
        "first_checked_at",
        "next_check_at",
    ] {
        assert!(
            text.contains(&format!("ALTER TABLE `data` ADD COLUMN `{col}`")),
            "{col}: {text}"
        );
    }
    assert_eq!(columns("data").len(), 12);
    let out = sb
        .cmd()
        .args(["init", "--store", &db.url, "--table", "data"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already has every column"),
        "{out:?}"
    );
}

#[test]
fn mysql_bad_table_or_column_is_one_line_and_writes_nothing() {
    let Some(db) = Db::new("mysql_bad_table_or_column_is_one_line_and_writes_nothing") else {
        return;
    };
    let server = support::default_server();
    let sb = Sandbox::new();
    db.default_items("t", &["ok-1".to_string(), "ok-2".to_string()]);
    let snapshot = || {
        db.rows(
            "SELECT task_id, item_id, status, CAST(attempts AS CHAR), CAST(checked_at AS CHAR), \
             lease_owner FROM items ORDER BY item_id",
        )
    };
    let before = snapshot();
    let cases: &[(&[&str], &str)] = &[
        (&["--table", "nope"], "table nope not found (tables: items)"),
        (
            &["--status-column", "state"],
            "has no column state (--status-column",
        ),
        (&["--id-column", "id"], "has no column id (--id-column"),
        (
            &["--task-column", "job"],
            "has no column job (--task-column",
        ),
        (&["--table", "bad-name"], "--table \"bad-name\""),
    ];
    for (extra, fragment) in cases {
        let out = sb.run(&server, "t", &db.url).args(*extra).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        let err = one_line(&out.stderr);
        assert!(err.contains(fragment), "{extra:?}: {err}");
    }
    // The url column is needed only without --url.
    let out = sb
        .cmd()
        .args([
            "run",
            "--task",
            "t",
            "--store",
            &db.url,
            "--url-column",
            "link",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(one_line(&out.stderr).contains("no column link (--url-column"));
    // A placeholder in --url names a column too.
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--store", &db.url, "--url"])
        .arg(format!("{}?r={{region}}", server.item_url_template()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(one_line(&out.stderr).contains("no column region"));
    assert_eq!(server.total_requests(), 0);
    assert_eq!(snapshot(), before, "the table changed");
}

#[test]
fn mysql_password_never_shows() {
    let Some(db) = Db::new("mysql_password_never_shows") else {
        return;
    };
    const PASSWORD: &str = "hunter2-Zq9";
    let server = support::default_server();
    let sb = Sandbox::new();
    db.default_items("t", &["ok-1".to_string(), "s500-1".to_string()]);
    let user = format!("rc_u_{:08x}", fastrand::u32(..));
    let created = std::panic::catch_unwind(|| {
        for host in ["%", "localhost", "127.0.0.1"] {
            exec_on(
                &db.admin,
                &format!(
                    "CREATE USER '{user}'@'{host}' IDENTIFIED BY '{PASSWORD}'; \
                     GRANT ALL ON `{}`.* TO '{user}'@'{host}'",
                    db.name
                ),
            );
        }
    })
    .is_ok();
    let mut u = url::Url::parse(&db.url).unwrap();
    u.set_username(&user).unwrap();
    u.set_password(Some(PASSWORD)).unwrap();
    let good = u.to_string();
    u.set_password(Some("wrong-Pw-77")).unwrap();
    let wrong = u.to_string();
    let check = |out: &std::process::Output, secret: &str| {
        let all =
            String::from_utf8_lossy(&[&out.stdout[..], &out.stderr[..]].concat()).into_owned();
        assert!(!all.contains(secret), "password leaked: {all}");
        all
    };
    // A wrong password: one line naming the server, not the password.
    let out = sb
        .run(&server, "t", &wrong)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    check(&out, "wrong-Pw-77");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot connect") && last.contains("***"),
        "{err}"
    );
    if created {
        for (args, code) in [
            (vec!["--format", "json"], 1),
            (vec!["--format", "text", "-v"], 1),
        ] {
            let out = sb
                .run(&server, "t", &good)
                .args(&args)
                .args(["--retries", "0"])
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(code), "{out:?}");
            let all = check(&out, PASSWORD);
            assert!(all.contains("***"), "{all}");
        }
        let out = sb
            .cmd()
            .args(["status", "--task", "t", "--store", &good])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        check(&out, PASSWORD);
        // An error after connecting (a missing table) does not show it either.
        let out = sb
            .run(&server, "t", &good)
            .args(["--table", "nope"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        check(&out, PASSWORD);
        for host in ["%", "localhost", "127.0.0.1"] {
            let _ = std::panic::catch_unwind(|| {
                exec_on(&db.admin, &format!("DROP USER IF EXISTS '{user}'@'{host}'"))
            });
        }
    } else {
        eprintln!("mysql_password_never_shows: cannot create a user; checked the refusal only");
    }
}
