//! One fixture per SQL backend behind the [`Db`] trait, for tests that run the same scenario
//! on every backend: a SQLite file in the test's [`Sandbox`], a PostgreSQL schema of the
//! test's own (`RECHECK_TEST_POSTGRES_URL`), a MariaDB/MySQL database of the test's own
//! (`RECHECK_TEST_MYSQL_URL`). Every value read back is text; the SQL that differs between
//! the backends (types, identifier quotes, time literals, table locks) comes from the
//! fixture, the rest of a scenario's SQL is written once.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, MySqlConnection, Row};

use super::{Running, Sandbox};

pub(crate) const PG_ENV: &str = "RECHECK_TEST_POSTGRES_URL";
pub(crate) const MYSQL_ENV: &str = "RECHECK_TEST_MYSQL_URL";
/// Used when the variable is not set and a server answers there (`skip` as the variable's
/// value skips even then).
const PG_LOCAL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL_LOCAL: &str = "mysql://root@127.0.0.1:3306/test";

/// The server URL for `env`: the variable, else `local` when a server answers there, else
/// `None` after saying so. Said outside the test harness's capture (once per backend), so
/// `cargo test` shows which database tests did not run and why.
fn server_url(env: &str, local: &str, test: &str, answers: fn(&str) -> bool) -> Option<String> {
    static SAID: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let say_once = |line: String| {
        use std::io::Write;
        let said = SAID.get_or_init(Default::default);
        let mut said = said.lock().unwrap_or_else(|e| e.into_inner());
        if !said.contains(&env.to_string()) {
            said.push(env.to_string());
            // Not through eprintln!, which the harness captures for passing tests.
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    };
    match std::env::var(env) {
        Ok(u) if u.trim() == "skip" => {
            eprintln!("skipped: {test}: {env}=skip");
            say_once(format!("note: {env}=skip: its database tests are skipped"));
            None
        }
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ if answered(env, local, answers) => {
            say_once(format!(
                "note: {env} is not set; using the server that answers at {local}"
            ));
            Some(local.to_string())
        }
        _ => {
            eprintln!("skipped: {test}: {env} is not set and nothing answers at {local}");
            say_once(format!(
                "note: SKIPPED database tests: {env} is not set and no server answers at {local} \
                 (first: {test})"
            ));
            None
        }
    }
}

/// Whether a server answers at `local`, asked once per process.
fn answered(env: &str, local: &str, answers: fn(&str) -> bool) -> bool {
    static ASKED: OnceLock<std::sync::Mutex<HashMap<String, bool>>> = OnceLock::new();
    let asked = ASKED.get_or_init(Default::default);
    if let Some(a) = asked.lock().unwrap_or_else(|e| e.into_inner()).get(env) {
        return *a;
    }
    let a = answers(local);
    asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(env.to_string(), a);
    a
}

fn pg_answers(url: &str) -> bool {
    block(async {
        let Ok(opts) = url.parse::<PgConnectOptions>() else {
            return false;
        };
        let connect = PgPoolOptions::new().max_connections(1).connect_with(opts);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), connect).await,
            Ok(Ok(_))
        )
    })
}

fn mysql_answers(url: &str) -> bool {
    block(async {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), MySqlConnection::connect(url)).await,
            Ok(Ok(_))
        )
    })
}

/// The runtime the test-side database connections live on.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("database test runtime")
    })
}

pub(crate) fn block<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

/// Column types a scenario's `CREATE TABLE` asks for, spelled by each backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    /// Ids, task ids, statuses: short text that can be a key.
    Key,
    /// Free text.
    Text,
    /// The backend's native point in time (TEXT on SQLite).
    Time,
    /// A time column that holds text (what other people's tables sometimes use).
    TextTime,
}

/// The backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    pub(crate) const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Mysql];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mariadb",
        }
    }

    /// The backend's fixture for `test`, or `None` (and a `skipped:` line on stderr) when
    /// its server is not configured.
    pub(crate) fn open(self, sb: &Sandbox, test: &str) -> Option<Box<dyn Db>> {
        let test = format!("{test} on {}", self.name());
        Some(match self {
            Backend::Sqlite => Box::new(Sqlite::new(sb)),
            Backend::Postgres => Box::new(Pg::new(&test)?),
            Backend::Mysql => Box::new(My::new(&test)?),
        })
    }
}

/// One row of the default schema, as the tests look at it; `checked_at` as RFC 3339 UTC.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub status: String,
    pub http_status: Option<i64>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub checked_at: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<String>,
}

/// A lock another session holds on table `items` until [`Held::release`].
pub(crate) trait Held {
    /// `SELECT COUNT(*) ...` on the locking session.
    fn count(&mut self, sql: &str) -> i64;
    fn release(self: Box<Self>);
}

/// A database a scenario runs on.
pub(crate) trait Db {
    fn backend(&self) -> Backend;
    /// The `--store` value recheck gets.
    fn store(&self) -> String;
    /// Runs one or more statements.
    fn exec(&self, sql: &str);
    /// Runs one statement; its error as text.
    fn try_exec(&self, sql: &str) -> Result<(), String>;
    /// Every row of `sql`, every value as text.
    fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>>;
    fn ty(&self, t: Ty) -> &'static str;
    /// An identifier quoted the way recheck spells it in the SQL it prints.
    fn quote(&self, ident: &str) -> String;
    /// The column names of `table`, in order.
    fn columns(&self, table: &str) -> Vec<String>;
    /// SQL that renders native time column `col` as RFC 3339 UTC text with milliseconds.
    fn time_text(&self, col: &str) -> String;
    /// A literal a native time column takes for `t`.
    fn time_lit(&self, t: SystemTime) -> String;
    /// Everything of `table` (for SQLite: every byte of the file and its side files), to
    /// prove a refused run wrote nothing.
    fn snapshot(&self, table: &str) -> String;
    /// Another session takes a lock on `items` that keeps recheck from reading or writing
    /// it (SQLite: `BEGIN EXCLUSIVE`; PostgreSQL: `LOCK TABLE ... ACCESS EXCLUSIVE`;
    /// MariaDB: `LOCK TABLES ... WRITE`).
    fn lock_items(&self) -> Box<dyn Held>;
    /// Client ports of the sessions waiting on a lock on `items`; `None` where the backend
    /// cannot tell (SQLite).
    fn waiting_ports(&self) -> Option<Vec<u16>>;

    /// The default schema (docs/reference.md §2.2) as table `items`, its time columns of
    /// type `time`.
    fn default_schema_with(&self, time: Ty) {
        let (k, x, t) = (self.ty(Ty::Key), self.ty(Ty::Text), self.ty(time));
        self.exec(&format!(
            "CREATE TABLE items (task_id {k} NOT NULL, item_id {k} NOT NULL, status {k} NOT NULL,
               url {x} NULL, http_status INTEGER NULL, attempts INTEGER NOT NULL DEFAULT 0,
               last_error {x} NULL, checked_at {t} NULL, lease_owner {k} NULL, lease_until {t} NULL,
               checks INTEGER NOT NULL DEFAULT 0, first_checked_at {t} NULL, next_check_at {t} NULL,
               PRIMARY KEY (task_id, item_id))"
        ));
        self.exec("CREATE INDEX items_task_status ON items (task_id, status)");
    }

    fn default_schema(&self) {
        self.default_schema_with(Ty::Time);
    }

    /// `ids` as items of `task` in `status`, in `items`.
    fn insert(&self, task: &str, status: &str, ids: &[String]) {
        for chunk in ids.chunks(1000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|id| format!("('{task}', '{id}', '{status}')"))
                .collect();
            self.exec(&format!(
                "INSERT INTO items (task_id, item_id, status) VALUES {}",
                values.join(", ")
            ));
        }
    }

    /// `ids` as failed items of `task`.
    fn insert_failed(&self, task: &str, ids: &[String]) {
        self.insert(task, "failed", ids);
    }

    /// Every row of `task` in the default schema (native time columns): id → row.
    fn items(&self, task: &str) -> HashMap<String, Item> {
        let sql = format!(
            "SELECT item_id, status, http_status, attempts, last_error, {}, lease_owner, {} \
             FROM items WHERE task_id = '{task}'",
            self.time_text("checked_at"),
            self.time_text("lease_until")
        );
        self.rows(&sql)
            .into_iter()
            .map(|r| {
                let int = |v: &Option<String>| v.as_deref().map(|s| s.parse::<i64>().unwrap());
                let id = r[0].clone().expect("an id");
                let item = Item {
                    status: r[1].clone().expect("a status"),
                    http_status: int(&r[2]),
                    attempts: int(&r[3]).expect("attempts"),
                    last_error: r[4].clone(),
                    checked_at: r[5].clone(),
                    lease_owner: r[6].clone(),
                    lease_until: r[7].clone(),
                };
                (id, item)
            })
            .collect()
    }

    /// The schedule of every row of `task`: id → (checks, first_checked_at,
    /// next_check_at), times as RFC 3339 UTC.
    fn schedule(&self, task: &str) -> HashMap<String, (i64, Option<String>, Option<String>)> {
        let sql = format!(
            "SELECT item_id, checks, {}, {} FROM items WHERE task_id = '{task}'",
            self.time_text("first_checked_at"),
            self.time_text("next_check_at")
        );
        self.rows(&sql)
            .into_iter()
            .map(|r| {
                let checks = r[1].as_deref().map_or(0, |s| s.parse::<i64>().unwrap());
                (
                    r[0].clone().expect("an id"),
                    (checks, r[2].clone(), r[3].clone()),
                )
            })
            .collect()
    }

    /// Item `id` of `task`.
    fn item(&self, task: &str, id: &str) -> Item {
        self.items(task)
            .remove(id)
            .unwrap_or_else(|| panic!("no item {task}/{id}"))
    }

    /// The integer `sql` selects.
    fn count(&self, sql: &str) -> i64 {
        let rows = self.rows(sql);
        rows[0][0]
            .as_deref()
            .unwrap_or_else(|| panic!("{sql}: NULL"))
            .parse()
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// `rows` of a SQLite statement as text.
fn sqlite_rows(conn: &rusqlite::Connection, sql: &str) -> Vec<Vec<Option<String>>> {
    use rusqlite::types::ValueRef;
    let mut st = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    ValueRef::Null => None,
                    ValueRef::Integer(v) => Some(v.to_string()),
                    ValueRef::Real(v) => Some(v.to_string()),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Some(String::from_utf8_lossy(t).into_owned())
                    }
                })
            })
            .collect()
    })
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
    .collect::<Result<_, _>>()
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A SQLite file `s.db` in the sandbox.
pub(crate) struct Sqlite {
    pub path: PathBuf,
}

impl Sqlite {
    pub(crate) fn new(sb: &Sandbox) -> Sqlite {
        Sqlite {
            path: sb.path("s.db"),
        }
    }

    fn conn(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.path).expect("open sqlite");
        conn.busy_timeout(Duration::from_secs(30))
            .expect("busy timeout");
        conn
    }
}

struct SqliteLock(rusqlite::Connection);

impl Held for SqliteLock {
    fn count(&mut self, sql: &str) -> i64 {
        self.0
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn release(self: Box<Self>) {
        self.0.execute_batch("COMMIT").expect("commit the lock");
    }
}

impl Db for Sqlite {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn store(&self) -> String {
        "s.db".to_string()
    }

    fn exec(&self, sql: &str) {
        self.conn()
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn try_exec(&self, sql: &str) -> Result<(), String> {
        self.conn().execute_batch(sql).map_err(|e| e.to_string())
    }

    fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        sqlite_rows(&self.conn(), sql)
    }

    fn ty(&self, t: Ty) -> &'static str {
        match t {
            Ty::Key | Ty::Text | Ty::Time | Ty::TextTime => "TEXT",
        }
    }

    fn quote(&self, ident: &str) -> String {
        format!("\"{ident}\"")
    }

    fn columns(&self, table: &str) -> Vec<String> {
        self.rows(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .into_iter()
            .filter_map(|mut r| r.remove(0))
            .collect()
    }

    fn time_text(&self, col: &str) -> String {
        col.to_string()
    }

    fn time_lit(&self, t: SystemTime) -> String {
        format!("'{}'", humantime::format_rfc3339_millis(t))
    }

    fn snapshot(&self, _table: &str) -> String {
        format!("{:?}", super::snapshot(&self.path))
    }

    fn lock_items(&self) -> Box<dyn Held> {
        let conn = self.conn();
        conn.execute_batch("BEGIN EXCLUSIVE")
            .expect("BEGIN EXCLUSIVE");
        Box::new(SqliteLock(conn))
    }

    fn waiting_ports(&self) -> Option<Vec<u16>> {
        None
    }
}

/// A schema of one test's own, and a pool whose search path points at it.
pub(crate) struct Pg {
    /// The URL recheck gets: the server's, with `options=-csearch_path=<schema>`.
    pub url: String,
    pub schema: String,
    /// On the server's URL (no search path), to drop the schema at the end.
    admin: PgPool,
    pub pool: PgPool,
}

impl Pg {
    /// `None` (and a line on stderr) when no server is configured.
    pub(crate) fn new(test: &str) -> Option<Pg> {
        let base = server_url(PG_ENV, PG_LOCAL, test, pg_answers)?;
        let schema = format!("rc_{:016x}", fastrand::u64(..));
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
        let (admin, pool) = block(async {
            let opts: PgConnectOptions = base.parse().expect("test URL");
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone())
                .await
                .unwrap_or_else(|e| panic!("{PG_ENV}: cannot connect: {e}"));
            sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&admin)
                .await
                .expect("create schema");
            let pool = PgPoolOptions::new()
                .max_connections(3)
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

    /// The first column of the first row, as text.
    pub(crate) fn text(&self, sql: &str) -> Option<String> {
        self.rows(sql)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        );
        let _ = block(async {
            self.pool.close().await;
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&self.admin).await
        });
    }
}

/// Rows of the simple-query (text) protocol, every value as its text.
fn text_rows<R: Row>(rows: Vec<R>) -> Vec<Vec<Option<String>>>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get_unchecked::<Option<String>, _>(i)
                        .expect("text value")
                })
                .collect()
        })
        .collect()
}

struct PgLock(Option<sqlx::Transaction<'static, sqlx::Postgres>>);

impl Held for PgLock {
    fn count(&mut self, sql: &str) -> i64 {
        let tx = self.0.as_mut().expect("held");
        block(sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string())).fetch_one(&mut **tx))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn release(mut self: Box<Self>) {
        let tx = self.0.take().expect("held");
        block(tx.commit()).expect("unlock items");
    }
}

impl Db for Pg {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn store(&self) -> String {
        self.url.clone()
    }

    fn exec(&self, sql: &str) {
        self.try_exec(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn try_exec(&self, sql: &str) -> Result<(), String> {
        block(sqlx::raw_sql(AssertSqlSafe(sql.to_string())).execute(&self.pool))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = block(sqlx::raw_sql(AssertSqlSafe(sql.to_string())).fetch_all(&self.pool))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        text_rows(rows)
    }

    fn ty(&self, t: Ty) -> &'static str {
        match t {
            Ty::Key | Ty::Text | Ty::TextTime => "TEXT",
            Ty::Time => "TIMESTAMPTZ",
        }
    }

    fn quote(&self, ident: &str) -> String {
        format!("\"{ident}\"")
    }

    fn columns(&self, table: &str) -> Vec<String> {
        self.rows(&format!(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = '{table}' \
             ORDER BY ordinal_position"
        ))
        .into_iter()
        .filter_map(|mut r| r.remove(0))
        .collect()
    }

    fn time_text(&self, col: &str) -> String {
        format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    }

    fn time_lit(&self, t: SystemTime) -> String {
        format!("'{}'", humantime::format_rfc3339_millis(t))
    }

    fn snapshot(&self, table: &str) -> String {
        let mut rows = self.rows(&format!("SELECT * FROM {table}"));
        rows.sort();
        format!("{rows:?}")
    }

    fn lock_items(&self) -> Box<dyn Held> {
        let tx = block(async {
            let mut tx = self.pool.begin().await.expect("begin");
            sqlx::raw_sql("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .expect("lock items");
            tx
        });
        Box::new(PgLock(Some(tx)))
    }

    fn waiting_ports(&self) -> Option<Vec<u16>> {
        let ports = self.rows(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE NOT l.granted AND l.relation = 'items'::regclass",
        );
        Some(
            ports
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten()?.parse().ok())
                .collect(),
        )
    }
}

/// A database of its own for one test, on the server of `RECHECK_TEST_MYSQL_URL`; dropped
/// (best effort) at the end.
pub(crate) struct My {
    /// The URL given in the environment (server and credentials).
    pub admin: String,
    /// The same URL pointing at this test's database.
    pub url: String,
    pub name: String,
}

impl My {
    /// `None` (and a line on stderr) when the variable is not set.
    pub(crate) fn new(test: &str) -> Option<My> {
        let admin = server_url(MYSQL_ENV, MYSQL_LOCAL, test, mysql_answers)?;
        let name = format!("rc_{}_{:08x}", std::process::id(), fastrand::u32(..));
        let url = mysql_with_path(&admin, &name);
        mysql_exec_on(&admin, &format!("CREATE DATABASE `{name}`"));
        Some(My { admin, url, name })
    }
}

impl Drop for My {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::panic::catch_unwind(move || {
            mysql_exec_on(&admin, &format!("DROP DATABASE IF EXISTS `{name}`"))
        });
    }
}

fn mysql_try_exec_on(url: &str, sql: &str) -> Result<(), String> {
    block(async {
        let mut conn = MySqlConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {MYSQL_ENV}: {e}"));
        let done = sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        let _ = conn.close().await;
        done
    })
}

pub(crate) fn mysql_exec_on(url: &str, sql: &str) {
    mysql_try_exec_on(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `url` with its path (the database) replaced.
fn mysql_with_path(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("RECHECK_TEST_MYSQL_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

struct MyLock(Option<MySqlConnection>);

impl Held for MyLock {
    fn count(&mut self, sql: &str) -> i64 {
        let conn = self.0.as_mut().expect("held");
        block(sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string())).fetch_one(conn))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn release(mut self: Box<Self>) {
        let mut conn = self.0.take().expect("held");
        block(async {
            sqlx::raw_sql("UNLOCK TABLES")
                .execute(&mut conn)
                .await
                .expect("unlock items");
            let _ = conn.close().await;
        });
    }
}

impl Db for My {
    fn backend(&self) -> Backend {
        Backend::Mysql
    }

    fn store(&self) -> String {
        self.url.clone()
    }

    fn exec(&self, sql: &str) {
        mysql_exec_on(&self.url, sql);
    }

    fn try_exec(&self, sql: &str) -> Result<(), String> {
        mysql_try_exec_on(&self.url, sql)
    }

    fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        block(async {
            let mut conn = MySqlConnection::connect(&self.url).await.expect("connect");
            let rows = sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let _ = conn.close().await;
            text_rows(rows)
        })
    }

    fn ty(&self, t: Ty) -> &'static str {
        match t {
            Ty::Key => "VARCHAR(191)",
            Ty::Text => "TEXT",
            Ty::Time => "DATETIME(3)",
            Ty::TextTime => "VARCHAR(64)",
        }
    }

    fn quote(&self, ident: &str) -> String {
        format!("`{ident}`")
    }

    fn columns(&self, table: &str) -> Vec<String> {
        self.rows(&format!(
            "SELECT COLUMN_NAME FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY ORDINAL_POSITION"
        ))
        .into_iter()
        .filter_map(|mut r| r.remove(0))
        .collect()
    }

    fn time_text(&self, col: &str) -> String {
        // DATETIME(3) holds UTC (recheck writes UTC); %f is microseconds.
        format!("CONCAT(LEFT(DATE_FORMAT({col}, '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')")
    }

    fn time_lit(&self, t: SystemTime) -> String {
        let s = humantime::format_rfc3339_millis(t).to_string();
        format!("'{}'", s.trim_end_matches('Z').replace('T', " "))
    }

    fn snapshot(&self, table: &str) -> String {
        let mut rows = self.rows(&format!("SELECT * FROM {table}"));
        rows.sort();
        format!("{rows:?}")
    }

    fn lock_items(&self) -> Box<dyn Held> {
        let conn = block(async {
            let mut conn = MySqlConnection::connect(&self.url).await.expect("connect");
            sqlx::raw_sql("LOCK TABLES items WRITE")
                .execute(&mut conn)
                .await
                .expect("lock items");
            conn
        });
        Box::new(MyLock(Some(conn)))
    }

    fn waiting_ports(&self) -> Option<Vec<u16>> {
        // HOST is `ADDRESS:PORT` of the client for a TCP session.
        let hosts = self.rows(&format!(
            "SELECT HOST FROM information_schema.PROCESSLIST \
             WHERE DB = '{}' AND STATE LIKE 'Waiting for table%'",
            self.name
        ));
        Some(
            hosts
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .filter_map(|h| h.rsplit(':').next()?.parse().ok())
                .collect(),
        )
    }
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
    workers: &mut [Running],
    mut waiting_ports: impl FnMut() -> Vec<u16>,
) {
    super::wait_until(
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
