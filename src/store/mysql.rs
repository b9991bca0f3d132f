//! Store backend: MySQL / MariaDB, shared by any number of workers on any number of machines.
//! Validates the table and columns before anything is written, claims pages of failed items
//! by lease (`SELECT ... FOR UPDATE SKIP LOCKED`, then `UPDATE` of the lease columns, in one
//! transaction: neither server has `UPDATE ... RETURNING`), and saves verdicts in one
//! transaction per batch. Knows nothing of HTTP.
//!
//! Rows are addressed by (task column, id column): that pair is assumed to name one row (the
//! default schema's primary key). A table without the lease columns cannot share work: one
//! run per task holds a server-side `GET_LOCK` instead.
//!
//! Times are UTC: the session `time_zone` is `+00:00`, `checked_at` is written from this
//! worker's clock (like every store), and leases are compared with the database's clock
//! (`UTC_TIMESTAMP(3)`), so workers on machines with skewed clocks still agree on them.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::str::FromStr;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use sqlx::mysql::{
    MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions,
    MySqlRow,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use super::{
    Ident, ImportCounts, NewItem, OpenMode, Saved, StatusCounts, Store, StoreOptions, TableColumns,
};
use crate::model::{Item, StatusValue, Verdict, rfc3339};

/// Rows per save statement: one `UPDATE ... CASE` sets this many rows (a batch of 1000
/// verdicts is ten statements in one transaction).
const SAVE_CHUNK: usize = 100;
/// Most ids in one `IN (...)` list (claims, renewals, releases).
const IN_CHUNK: usize = 1000;
/// Rows per multi-row `INSERT` of an import.
const IMPORT_CHUNK: usize = 1000;
/// Statement sizes: a short list is padded (its last entry repeated) up to the next of
/// these, so a run prepares a handful of statement shapes, not one per length.
const SHAPES: [usize; 4] = [1, 10, 100, 1000];
/// How long connecting may take before the store gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a transaction that hits a deadlock or a lock wait timeout.
const TX_ATTEMPTS: u32 = 6;

type Query<'q> = sqlx::query::Query<'q, MySql, MySqlArguments>;

/// A value bound to a statement, typed the way its column stores it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Int(i64),
    Text(String),
    Time(chrono::NaiveDateTime),
    Null,
}

fn bind<'q>(q: Query<'q>, v: &Val) -> Query<'q> {
    match v {
        Val::Int(n) => q.bind(*n),
        Val::Text(s) => q.bind(s.as_str()),
        Val::Time(t) => q.bind(*t),
        Val::Null => q.bind(None::<&str>),
    }
}

/// A MySQL / MariaDB store.
pub struct MyStore {
    // Boxed: the store is one variant of `AnyStore` among small ones.
    inner: Box<Inner>,
}

struct Inner {
    pool: MySqlPool,
    opts: StoreOptions,
    shape: Shape,
    /// The URL with its password redacted, for messages.
    name: String,
    /// Claims are leases shared with other workers (the table has the lease columns and the
    /// run writes).
    leasing: bool,
    /// The server knows `SKIP LOCKED` (MySQL 8, MariaDB 10.6+); older ones wait instead.
    skip_locked: bool,
    /// Items checked at or after this time were checked in this round (by this worker or
    /// one running alongside it): they are not claimed again.
    since: Val,
    task: Val,
    failed: Val,
    /// The save statement per chunk size (the `SHAPES` up to `SAVE_CHUNK`), built once.
    save_sql: HashMap<usize, String>,
    cursor: tokio::sync::Mutex<Cursor>,
    /// Ids this worker holds a lease on and has not saved yet: what `renew` extends and
    /// `finish` gives back. Bounded by the items in flight.
    held: StdMutex<HashSet<String>>,
    /// The task's `GET_LOCK`, held on its own connection for the run, when the table has no
    /// lease columns.
    task_lock: tokio::sync::Mutex<Option<TaskLock>>,
}

/// Keyset position of the claims.
#[derive(Debug, Default)]
struct Cursor {
    /// The id of the last item handed out (`None`: from the start).
    last: Option<String>,
    /// The pass has reached the end once and started over for abandoned claims.
    swept: bool,
}

struct TaskLock {
    conn: MySqlConnection,
    name: String,
}

/// The parts of the table recheck may use, found in `information_schema` at open.
#[derive(Debug, Clone, Default)]
struct Shape {
    status_is_num: bool,
    task_is_num: bool,
    id_is_int: bool,
    has_url: bool,
    has_http_status: bool,
    has_attempts: bool,
    has_last_error: bool,
    has_checked_at: bool,
    /// `checked_at` is DATETIME/TIMESTAMP (else text holding RFC 3339, like SQLite's).
    checked_at_is_time: bool,
    /// `lease_owner`, `lease_until` and `checked_at`: workers can share the task.
    has_leases: bool,
}

/// A connection pool plus what messages need.
struct Conn {
    pool: MySqlPool,
    options: MySqlConnectOptions,
    name: String,
    secrets: Vec<String>,
}

impl Conn {
    /// An error message that never carries the password, whatever the driver put in it.
    fn scrub(&self, e: impl Display) -> String {
        scrub(&e.to_string(), &self.secrets)
    }

    fn err(&self, what: &str, e: impl Display) -> anyhow::Error {
        anyhow!("{}: {what}: {}", self.name, self.scrub(e))
    }
}

fn scrub(msg: &str, secrets: &[String]) -> String {
    let mut msg = msg.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        msg = msg.replace(s.as_str(), "***");
    }
    msg
}

/// Parses the URL (`mysql://` or `mariadb://`) and connects a pool of `connections`.
async fn connect(url: &str, shown: &str, connections: u32) -> Result<Conn> {
    let secrets: Vec<String> = match url::Url::parse(url) {
        Ok(u) => u
            .password()
            .map(|p| {
                let decoded = percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned();
                vec![p.to_string(), decoded]
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let name = shown.to_string();
    // sqlx knows only the mysql:// spelling; the protocol is the same.
    let sqlx_url = match url.get(..10) {
        Some(p) if p.eq_ignore_ascii_case("mariadb://") => format!("mysql://{}", &url[10..]),
        _ => url.to_string(),
    };
    let options = MySqlConnectOptions::from_str(&sqlx_url)
        .map_err(|e| {
            anyhow!(
                "{name}: invalid MySQL URL: {}",
                scrub(&e.to_string(), &secrets)
            )
        })?
        // DATETIME columns hold UTC.
        .timezone(Some("+00:00".to_string()))
        .disable_statement_logging();
    if options.get_database().is_none_or(str::is_empty) {
        bail!("{name}: the URL names no database (mysql://USER@HOST:PORT/DATABASE)");
    }
    // One connection first, so the message says why it failed (refused, access denied...)
    // rather than that the pool timed out.
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(probe)) => {
            let _ = probe.close().await;
        }
        Ok(Err(e)) => bail!(
            "{name}: cannot connect: {}",
            scrub(&e.to_string(), &secrets)
        ),
        Err(_) => bail!(
            "{name}: cannot connect: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(connections.max(1))
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| {
            Box::pin(async move {
                // No gap locks, and a locking read releases the rows it does not return:
                // claimers do not get in each other's way.
                sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(|e| {
            anyhow!(
                "{name}: cannot connect: {}",
                scrub(&e.to_string(), &secrets)
            )
        })?;
    Ok(Conn {
        pool,
        options,
        name,
        secrets,
    })
}

/// `(column name, data type)` of `table` in the URL's database, in table order; empty when
/// there is no such table.
async fn table_columns(conn: &Conn, table: &Ident) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(table.as_str())
    .fetch_all(&conn.pool)
    .await
    .map_err(|e| conn.err(&format!("cannot read the columns of table {table}"), e))?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>(0)?,
                r.try_get::<String, _>(1)?.to_ascii_lowercase(),
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| conn.err("cannot read information_schema", e))
}

async fn table_names(conn: &Conn) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() ORDER BY TABLE_NAME",
    )
    .fetch_all(&conn.pool)
    .await
    .map_err(|e| conn.err("cannot list tables", e))?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()
        .map_err(|e| conn.err("cannot list tables", e))
}

fn is_int_type(t: &str) -> bool {
    matches!(
        t,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
    )
}

fn is_num_type(t: &str) -> bool {
    is_int_type(t)
        || matches!(
            t,
            "decimal" | "numeric" | "float" | "double" | "real" | "bit"
        )
}

/// How a task or status value is bound to its column. MySQL compares a number column with a
/// string by turning the string into a number (`'failed'` is 0): text for a numeric column
/// is refused instead of matching the wrong rows.
fn column_value(
    name: &str,
    flag: &str,
    v: &str,
    column: &Ident,
    table: &Ident,
    numeric: bool,
) -> Result<Val> {
    let as_int = StatusValue::new(v).as_int();
    match (numeric, as_int) {
        (true, Some(n)) => Ok(Val::Int(n)),
        (true, None) if v.trim().parse::<f64>().is_ok() => Ok(Val::Text(v.to_string())),
        (true, None) => bail!(
            "{name}: {flag} {v:?} is not a number, but column {column} of table {table} holds numbers"
        ),
        (false, _) => Ok(Val::Text(v.to_string())),
    }
}

fn to_naive(t: SystemTime) -> chrono::NaiveDateTime {
    chrono::DateTime::<chrono::Utc>::from(t).naive_utc()
}

fn naive_rfc3339(t: chrono::NaiveDateTime) -> String {
    rfc3339(SystemTime::from(t.and_utc()))
}

/// `?, ?, ..., ?` (`n` of them).
fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// The statement size a list of `n` entries is padded to.
fn shape_for(n: usize) -> usize {
    SHAPES.iter().copied().find(|&s| s >= n).unwrap_or(n)
}

/// Deadlocks and lock wait timeouts: the transaction is rolled back and may simply run again.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| matches!(m.number(), 1205 | 1213)),
        _ => false,
    }
}

/// Runs a transaction again when the server rolled it back for a deadlock or a lock wait.
async fn retrying<T, F, Fut>(mut f: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if attempt < TX_ATTEMPTS && is_transient(&e) => {
                tracing::debug!("transaction retried after: {e}");
                let wait = 5u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_millis(wait + fastrand::u64(0..=wait))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

impl MyStore {
    /// Connects to `url` (`shown` is the URL with its password redacted, for messages),
    /// checks the table and columns, and prepares to claim the task's failed items.
    pub async fn open(
        url: &str,
        shown: &str,
        opts: StoreOptions,
        mode: OpenMode,
    ) -> Result<MyStore> {
        Ok(MyStore {
            inner: Box::new(Inner::open(url, shown, opts, mode).await?),
        })
    }
}

impl Inner {
    async fn open(url: &str, shown: &str, opts: StoreOptions, mode: OpenMode) -> Result<Inner> {
        let conn = connect(url, shown, opts.db_connections).await?;
        let name = conn.name.clone();
        let c = &opts.columns;
        let table = &c.table;
        let cols = table_columns(&conn, table).await?;
        if cols.is_empty() {
            let tables = table_names(&conn).await?;
            let have = if tables.is_empty() {
                "the database has no tables".to_string()
            } else {
                format!("tables: {}", tables.join(", "))
            };
            bail!(
                "{name}: table {table} not found ({have}); create it with: recheck init --store {name} --table {table}"
            );
        }
        let cols = TableColumns::new(&name, table, cols);
        let (task_t, id_t, status_t) = cols.check_run(&opts)?;
        let shape = Shape {
            status_is_num: is_num_type(status_t),
            task_is_num: is_num_type(task_t),
            id_is_int: is_int_type(id_t),
            has_url: cols.has(c.url.as_str()),
            has_http_status: cols.has("http_status"),
            has_attempts: cols.has("attempts"),
            has_last_error: cols.has("last_error"),
            has_checked_at: cols.has("checked_at"),
            checked_at_is_time: cols
                .find("checked_at")
                .is_some_and(|t| matches!(t, "datetime" | "timestamp")),
            has_leases: cols.has_leases(),
        };
        let task = column_value(
            &name,
            "--task",
            &opts.task,
            &c.task,
            table,
            shape.task_is_num,
        )?;
        let read_only = opts.read_only || mode == OpenMode::Status;
        // `status` counts every status: the failed one is not used (nor given).
        let failed = if mode == OpenMode::Status {
            Val::Text(opts.failed.as_str().to_string())
        } else {
            column_value(
                &name,
                "--failed-status",
                opts.failed.as_str(),
                &c.status,
                table,
                shape.status_is_num,
            )?
        };
        if mode == OpenMode::Run && !read_only {
            column_value(
                &name,
                "--ok-status",
                opts.ok.as_str(),
                &c.status,
                table,
                shape.status_is_num,
            )?;
            if let Some(nf) = &opts.not_found {
                column_value(
                    &name,
                    "--not-found-status",
                    nf.as_str(),
                    &c.status,
                    table,
                    shape.status_is_num,
                )?;
            }
        }
        let version: String = sqlx::query("SELECT CAST(VERSION() AS CHAR)")
            .fetch_one(&conn.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| conn.err("cannot read the server version", e))?;
        let leasing = shape.has_leases && !read_only;
        let since_t = opts.started;
        let mut store = Inner {
            pool: conn.pool.clone(),
            since: Val::Null,
            task,
            failed,
            save_sql: HashMap::new(),
            skip_locked: has_skip_locked(&version),
            leasing,
            shape,
            name,
            cursor: tokio::sync::Mutex::new(Cursor::default()),
            held: StdMutex::new(HashSet::new()),
            task_lock: tokio::sync::Mutex::new(None),
            opts,
        };
        store.since = store.time_val(since_t);
        // Run the page query once (LIMIT 0), so a surprise is a start-up error, not a
        // mid-run one, before anything is written.
        let probe = store.claim_sql(false, false);
        store
            .page_query(&probe, None, false, 0)
            .fetch_all(&store.pool)
            .await
            .map_err(|e| {
                anyhow!(
                    "{}: cannot read table {}: {}",
                    store.name,
                    store.opts.columns.table,
                    conn.scrub(e)
                )
            })?;
        if mode == OpenMode::Run {
            store.check_task_exists().await?;
        }
        // Without lease columns two runs on the task would both check everything: the
        // second one is refused instead.
        if mode == OpenMode::Run && !read_only && !store.shape.has_leases {
            let lock = store.lock_task(&conn).await?;
            *store.task_lock.get_mut() = Some(lock);
        }
        if store.leasing {
            let since = store.reap_dead_owners().await.with_context(|| {
                format!("{}: cannot free the leases of dead workers", store.name)
            })?;
            store.since = store.time_val(since);
        }
        for k in SHAPES.iter().copied().filter(|&k| k <= SAVE_CHUNK) {
            let sql = store.save_statement(k);
            store.save_sql.insert(k, sql);
        }
        Ok(store)
    }

    /// A task id with no row at all is a typo, not "nothing to check" (SPEC §2).
    async fn check_task_exists(&self) -> Result<()> {
        let c = &self.opts.columns;
        let (t, task) = (c.table.quoted_mysql(), c.task.quoted_mysql());
        let found = bind(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT 1 FROM {t} WHERE {task} = ? LIMIT 1"
            ))),
            &self.task,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err("cannot look up the task", e))?;
        if found.is_some() {
            return Ok(());
        }
        let known: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT DISTINCT CAST({task} AS CHAR) FROM {t} WHERE {task} IS NOT NULL LIMIT 10000"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err("cannot list the tasks", e))?;
        Err(super::unknown_task(&self.name, &self.opts.task, &known))
    }

    /// `GET_LOCK` on a name made of the database, table and task (hashed to fit the 64
    /// characters MySQL allows), on a connection of its own that lives as long as the run.
    async fn lock_task(&self, conn: &Conn) -> Result<TaskLock> {
        let table = &self.opts.columns.table;
        let mut lock_conn = conn
            .options
            .connect()
            .await
            .map_err(|e| conn.err("cannot connect", e))?;
        let name: String =
            sqlx::query("SELECT CONCAT('recheck:', SHA1(CONCAT_WS('/', DATABASE(), ?, ?)))")
                .bind(table.as_str())
                .bind(self.opts.task.as_str())
                .fetch_one(&mut lock_conn)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| conn.err("cannot name the task's lock", e))?;
        let got: Option<i64> = sqlx::query("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)")
            .bind(name.as_str())
            .fetch_one(&mut lock_conn)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| conn.err("cannot take the task's lock", e))?;
        if got != Some(1) {
            let _ = lock_conn.close().await;
            bail!(
                "{}: task {} of table {table}: another recheck run holds the task's lock; \
                 add lease columns to share the work: recheck init --store {} --table {table}",
                self.name,
                self.opts.task,
                self.name
            );
        }
        Ok(TaskLock {
            conn: lock_conn,
            name,
        })
    }

    /// `checked_at` as its column stores it.
    fn time_val(&self, t: SystemTime) -> Val {
        if self.shape.checked_at_is_time {
            Val::Time(to_naive(t))
        } else {
            Val::Text(rfc3339(t))
        }
    }

    /// An item id bound the way the id column stores it.
    fn id_val(&self, id: &str) -> Val {
        match (self.shape.id_is_int, id.parse::<i64>()) {
            (true, Ok(n)) => Val::Int(n),
            _ => Val::Text(id.to_string()),
        }
    }

    fn status_val(&self, v: &StatusValue) -> Val {
        match (self.shape.status_is_num, v.as_int()) {
            (true, Some(n)) => Val::Int(n),
            _ => Val::Text(v.as_str().to_string()),
        }
    }

    fn lease_micros(&self) -> i64 {
        i64::try_from(self.opts.lease.as_micros()).unwrap_or(i64::MAX)
    }

    /// The columns an [`Item`] is built from: id, url (when the table has one), extras.
    fn item_columns(&self) -> String {
        let c = &self.opts.columns;
        let t = c.table.quoted_mysql();
        let mut cols = vec![format!("CAST({t}.{} AS CHAR)", c.id.quoted_mysql())];
        if self.shape.has_url {
            cols.push(format!("CAST({t}.{} AS CHAR)", c.url.quoted_mysql()));
        }
        cols.extend(
            self.opts
                .extra_columns
                .iter()
                .map(|x| format!("CAST({t}.{} AS CHAR)", x.quoted_mysql())),
        );
        cols.join(", ")
    }

    /// The page query: the next failed items of the task after the cursor (`after`), in id
    /// order. By lease (`leased`): only items no live worker holds and nobody checked in
    /// this round, locked (skipping rows another claimer has locked) until the lease is set.
    /// Binds: task, failed, [cursor], [since], limit.
    fn claim_sql(&self, after: bool, leased: bool) -> String {
        let c = &self.opts.columns;
        let t = c.table.quoted_mysql();
        let id = format!("{t}.{}", c.id.quoted_mysql());
        let mut sql = format!(
            "SELECT {cols} FROM {t} WHERE {t}.{task} = ? AND {t}.{status} = ?",
            cols = self.item_columns(),
            task = c.task.quoted_mysql(),
            status = c.status.quoted_mysql(),
        );
        if after {
            sql.push_str(&format!(" AND {id} > ?"));
        }
        if leased {
            sql.push_str(&format!(
                " AND ({t}.`lease_owner` IS NULL OR {t}.`lease_until` IS NULL \
                   OR {t}.`lease_until` < UTC_TIMESTAMP(3)) \
                 AND ({t}.`checked_at` IS NULL OR NOT ({t}.`checked_at` >= ? AND {t}.`checked_at` <= ?))"
            ));
        }
        sql.push_str(&format!(" ORDER BY {id} LIMIT ?"));
        if leased {
            sql.push_str(if self.skip_locked {
                " FOR UPDATE SKIP LOCKED"
            } else {
                " FOR UPDATE"
            });
        }
        sql
    }

    fn page_query<'q>(&self, sql: &str, after: Option<&str>, leased: bool, n: usize) -> Query<'q> {
        let mut q = sqlx::query(AssertSqlSafe(sql.to_string()));
        q = bind(q, &self.task);
        q = bind(q, &self.failed);
        if let Some(after) = after {
            q = bind(q, &self.id_val(after));
        }
        if leased {
            // Checked in this round: between the round's start and now. Any other value
            // (older, in the future, text that is no time) leaves the item claimable.
            q = bind(q, &self.since);
            q = bind(q, &self.time_val(SystemTime::now()));
        }
        q.bind(i64::try_from(n).unwrap_or(i64::MAX))
    }

    fn items_from(&self, rows: &[MySqlRow]) -> Result<Vec<Item>, sqlx::Error> {
        let has_url = self.shape.has_url;
        let extra = self.opts.extra_columns.len();
        rows.iter()
            .map(|r| {
                let id: Option<String> = r.try_get(0)?;
                let url = if has_url {
                    r.try_get::<Option<String>, _>(1)?
                } else {
                    None
                };
                let first = 1 + usize::from(has_url);
                let fields = (first..first + extra)
                    .map(|i| r.try_get::<Option<String>, _>(i))
                    .collect::<Result<_, _>>()?;
                Ok(Item {
                    key: 0,
                    id: id.unwrap_or_default(),
                    url,
                    fields,
                })
            })
            .collect()
    }

    /// A read-only page (dry run, or a table without lease columns under the task lock).
    async fn claim_keyset(&self, after: Option<&str>, n: usize) -> Result<Vec<Item>, sqlx::Error> {
        let sql = self.claim_sql(after.is_some(), false);
        let rows = self
            .page_query(&sql, after, false, n)
            .fetch_all(&self.pool)
            .await?;
        self.items_from(&rows)
    }

    /// One claim transaction: select the page (locking it), then set our lease on it.
    async fn claim_leased(&self, after: Option<&str>, n: usize) -> Result<Vec<Item>, sqlx::Error> {
        let sql = self.claim_sql(after.is_some(), true);
        let mut tx = self.pool.begin().await?;
        let rows = self
            .page_query(&sql, after, true, n)
            .fetch_all(&mut *tx)
            .await?;
        let items = self.items_from(&rows)?;
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        self.set_leases(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(items)
    }

    /// `UPDATE ... WHERE task = ? AND id IN (...)` for `ids`, in padded chunks: `head` is the
    /// SET clause (with its binds in `head_binds`), `tail` more WHERE conditions (binds in
    /// `tail_binds`).
    async fn update_ids(
        &self,
        conn: &mut MySqlConnection,
        head: &str,
        head_binds: &[Val],
        tail: &str,
        tail_binds: &[Val],
        ids: &[&str],
    ) -> Result<u64, sqlx::Error> {
        let c = &self.opts.columns;
        let mut changed = 0;
        for chunk in ids.chunks(IN_CHUNK) {
            let k = shape_for(chunk.len());
            let sql = format!(
                "UPDATE {t} SET {head} WHERE {task} = ?{tail} AND {id} IN ({marks})",
                t = c.table.quoted_mysql(),
                task = c.task.quoted_mysql(),
                id = c.id.quoted_mysql(),
                marks = marks(k),
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for v in head_binds {
                q = bind(q, v);
            }
            q = bind(q, &self.task);
            for v in tail_binds {
                q = bind(q, v);
            }
            for i in 0..k {
                q = bind(q, &self.id_val(chunk[i.min(chunk.len() - 1)]));
            }
            changed += q.execute(&mut *conn).await?.rows_affected();
        }
        Ok(changed)
    }

    async fn set_leases(
        &self,
        conn: &mut MySqlConnection,
        ids: &[&str],
    ) -> Result<(), sqlx::Error> {
        self.update_ids(
            conn,
            "`lease_owner` = ?, `lease_until` = UTC_TIMESTAMP(3) + INTERVAL ? MICROSECOND",
            &[
                Val::Text(self.opts.owner.clone()),
                Val::Int(self.lease_micros()),
            ],
            "",
            &[],
            ids,
        )
        .await
        .map(drop)
    }

    /// Frees the leases held by workers of this host that are no longer running (killed,
    /// crashed), and returns when this round of checks started: this worker's start, or the
    /// start of the earliest live worker on the task (read from its `lease_owner` name).
    async fn reap_dead_owners(&self) -> Result<SystemTime> {
        let c = &self.opts.columns;
        let sql = format!(
            "SELECT CAST(`lease_owner` AS CHAR), CAST(MAX(`lease_until` >= UTC_TIMESTAMP(3)) AS SIGNED) \
             FROM {t} WHERE {task} = ? AND `lease_owner` IS NOT NULL \
             GROUP BY `lease_owner`",
            t = c.table.quoted_mysql(),
            task = c.task.quoted_mysql(),
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        q = bind(q, &self.task);
        let rows = q.fetch_all(&self.pool).await?;
        let mut since = self.opts.started;
        for r in &rows {
            let owner: Option<String> = r.try_get(0)?;
            let live: Option<i64> = r.try_get(1)?;
            let Some(owner) = owner else { continue };
            if super::owner_is_dead_here(&owner) {
                let free = format!(
                    "UPDATE {t} SET `lease_until` = NULL, `lease_owner` = NULL \
                     WHERE {task} = ? AND `lease_owner` = ?",
                    t = c.table.quoted_mysql(),
                    task = c.task.quoted_mysql(),
                );
                let mut q = sqlx::query(AssertSqlSafe(free));
                q = bind(q, &self.task);
                let n = q
                    .bind(owner.as_str())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                tracing::info!(owner = %owner, items = n, "took over the claims of a worker that is gone");
            } else if live == Some(1)
                && let Some(started) = super::owner_started(&owner)
            {
                since = since.min(started);
            }
        }
        Ok(since)
    }

    /// The save statement for `k` rows: status only where a value is bound (NULL leaves it),
    /// bookkeeping where the table has the column, our lease cleared (someone else's, after
    /// ours expired and was taken over, is theirs to clear). MySQL assigns left to right, each
    /// assignment seeing the ones before: `lease_until` is tested before `lease_owner` is
    /// cleared.
    fn save_statement(&self, k: usize) -> String {
        let c = &self.opts.columns;
        let s = &self.shape;
        let id = c.id.quoted_mysql();
        let cases = |then: &str| -> String {
            let mut w = String::new();
            for _ in 0..k {
                w.push_str(" WHEN ? THEN ");
                w.push_str(then);
            }
            w
        };
        let st = c.status.quoted_mysql();
        let mut sets = vec![format!(
            "{st} = CASE {id}{} ELSE {st} END",
            cases(&format!("COALESCE(?, {st})"))
        )];
        if s.has_http_status {
            sets.push(format!(
                "`http_status` = CASE {id}{} ELSE `http_status` END",
                cases("?")
            ));
        }
        if s.has_attempts {
            sets.push(format!(
                "`attempts` = COALESCE(`attempts`, 0) + CASE {id}{} ELSE 0 END",
                cases("?")
            ));
        }
        if s.has_last_error {
            sets.push(format!(
                "`last_error` = CASE {id}{} ELSE `last_error` END",
                cases("?")
            ));
        }
        if s.has_checked_at {
            sets.push(format!(
                "`checked_at` = CASE {id}{} ELSE `checked_at` END",
                cases("?")
            ));
        }
        if self.leasing {
            sets.push("`lease_until` = NULL, `lease_owner` = NULL".into());
        }
        format!(
            "UPDATE {t} SET {sets} WHERE {cas} AND {id} IN ({marks})",
            t = c.table.quoted_mysql(),
            sets = sets.join(", "),
            cas = self.cas_condition(),
            marks = marks(k),
        )
    }

    /// Compare-and-set: the row as claimed, still failed and, with leases, still ours.
    /// Binds: task, failed, [owner].
    fn cas_condition(&self) -> String {
        let c = &self.opts.columns;
        let mut w = format!(
            "{task} = ? AND {status} = ?",
            task = c.task.quoted_mysql(),
            status = c.status.quoted_mysql(),
        );
        if self.leasing {
            w.push_str(" AND `lease_owner` = ?");
        }
        w
    }

    fn bind_cas<'q>(&self, q: Query<'q>) -> Query<'q> {
        let q = bind(bind(q, &self.task), &self.failed);
        if self.leasing {
            q.bind(self.opts.owner.clone())
        } else {
            q
        }
    }

    /// One transaction: per chunk, lock the rows that are still as claimed (the others are
    /// conflicts), then set them. Returns the positions of the conflicts.
    async fn save_tx(&self, batch: &[Verdict]) -> Result<Vec<usize>, sqlx::Error> {
        let s = &self.shape;
        let c = &self.opts.columns;
        let mut tx = self.pool.begin().await?;
        let mut conflicts = Vec::new();
        for (n, chunk) in batch.chunks(SAVE_CHUNK).enumerate() {
            let k = shape_for(chunk.len());
            let sql = &self.save_sql[&k];
            // Padded with the chunk's last verdict: a repeated WHEN never matches (the first
            // one does), a repeated IN entry is harmless.
            let row = |i: usize| &chunk[i.min(chunk.len() - 1)];
            let ids: Vec<Val> = (0..k).map(|i| self.id_val(&row(i).id)).collect();
            let lock = format!(
                "SELECT CAST({id} AS CHAR) FROM {t} WHERE {cas} AND {id} IN ({marks}) FOR UPDATE",
                id = c.id.quoted_mysql(),
                t = c.table.quoted_mysql(),
                cas = self.cas_condition(),
                marks = marks(k),
            );
            let mut q = self.bind_cas(sqlx::query(AssertSqlSafe(lock)));
            for id in &ids {
                q = bind(q, id);
            }
            let live: HashSet<String> = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?;
            conflicts.extend(
                chunk
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !live.contains(&v.id))
                    .map(|(i, _)| n * SAVE_CHUNK + i),
            );
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            let column = |q: Query<'static>, f: &dyn Fn(&Verdict) -> Val| {
                let mut q = q;
                for (i, id) in ids.iter().enumerate() {
                    q = bind(q, id);
                    q = bind(q, &f(row(i)));
                }
                q
            };
            q = column(q, &|v| {
                self.opts
                    .status_for(v.outcome)
                    .map_or(Val::Null, |sv| self.status_val(sv))
            });
            if s.has_http_status {
                q = column(q, &|v| {
                    v.http_status.map_or(Val::Null, |h| Val::Int(h.into()))
                });
            }
            if s.has_attempts {
                q = column(q, &|v| Val::Int(v.attempts.into()));
            }
            if s.has_last_error {
                q = column(q, &|v| v.error.clone().map_or(Val::Null, Val::Text));
            }
            if s.has_checked_at {
                q = column(q, &|v| self.time_val(v.checked_at));
            }
            q = self.bind_cas(q);
            for id in &ids {
                q = bind(q, id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(conflicts)
    }

    /// Extends (`extend`) or gives back our leases on the ids we hold and have not saved.
    async fn touch_held(&self, extend: bool) -> Result<(), sqlx::Error> {
        let ids: Vec<String> = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter().cloned().collect()
        };
        if ids.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut conn = self.pool.acquire().await?;
        let owner = [Val::Text(self.opts.owner.clone())];
        if extend {
            self.update_ids(
                &mut conn,
                "`lease_until` = UTC_TIMESTAMP(3) + INTERVAL ? MICROSECOND",
                &[Val::Int(self.lease_micros())],
                " AND `lease_owner` = ?",
                &owner,
                &refs,
            )
            .await?;
        } else {
            self.update_ids(
                &mut conn,
                "`lease_until` = NULL, `lease_owner` = NULL",
                &[],
                " AND `lease_owner` = ?",
                &owner,
                &refs,
            )
            .await?;
            self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        Ok(())
    }

    /// One transaction per import batch: per chunk, find (and lock) the ids the task
    /// already has, insert the others in one statement, and with `reset` set the existing
    /// ones back to failed. Counts are exact, with or without a unique key on (task, id).
    async fn import_rows(
        &self,
        items: &[NewItem],
        reset: bool,
    ) -> Result<ImportCounts, sqlx::Error> {
        let c = &self.opts.columns;
        let t = c.table.quoted_mysql();
        let (task, id, st, u) = (
            c.task.quoted_mysql(),
            c.id.quoted_mysql(),
            c.status.quoted_mysql(),
            c.url.quoted_mysql(),
        );
        let has_url = self.shape.has_url;
        let mut counts = ImportCounts::default();
        let mut tx = self.pool.begin().await?;
        for chunk in items.chunks(IMPORT_CHUNK) {
            let k = shape_for(chunk.len());
            let ids: Vec<Val> = (0..k)
                .map(|i| self.id_val(&chunk[i.min(chunk.len() - 1)].id))
                .collect();
            let sql = format!(
                "SELECT CAST({id} AS CHAR) FROM {t} WHERE {task} = ? AND {id} IN ({}) FOR UPDATE",
                marks(k)
            );
            let mut q = bind(sqlx::query(AssertSqlSafe(sql)), &self.task);
            for v in &ids {
                q = bind(q, v);
            }
            let mut seen: HashSet<String> = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?;
            // The id as the column gives it back (`7` for an integer column's `07`).
            let canon = |i: &NewItem| match self.id_val(&i.id) {
                Val::Int(n) => n.to_string(),
                _ => i.id.clone(),
            };
            let mut new = Vec::new();
            for item in chunk {
                if seen.insert(canon(item)) {
                    new.push(item);
                } else if reset {
                    let url_set = if has_url {
                        format!(", {u} = COALESCE(?, {u})")
                    } else {
                        String::new()
                    };
                    let sql =
                        format!("UPDATE {t} SET {st} = ?{url_set} WHERE {task} = ? AND {id} = ?");
                    let mut q = bind(sqlx::query(AssertSqlSafe(sql)), &self.failed);
                    if has_url {
                        q = q.bind(item.url.as_deref());
                    }
                    q = bind(q, &self.task);
                    bind(q, &self.id_val(&item.id)).execute(&mut *tx).await?;
                    counts.reset += 1;
                } else {
                    counts.already += 1;
                }
            }
            if new.is_empty() {
                continue;
            }
            let row = if has_url { "(?, ?, ?, ?)" } else { "(?, ?, ?)" };
            let rows = vec![row; new.len()].join(", ");
            let cols = if has_url {
                format!("{task}, {id}, {st}, {u}")
            } else {
                format!("{task}, {id}, {st}")
            };
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {t} ({cols}) VALUES {rows}"
            )));
            for item in &new {
                q = bind(q, &self.task);
                q = bind(q, &self.id_val(&item.id));
                q = bind(q, &self.failed);
                if has_url {
                    q = q.bind(item.url.as_deref());
                }
            }
            q.execute(&mut *tx).await?;
            counts.added += new.len() as u64;
        }
        tx.commit().await?;
        Ok(counts)
    }

    /// Oldest and newest `checked_at` of the task, as RFC 3339 when the column is a time.
    async fn checked_at_range(&self) -> Result<(Option<String>, Option<String>), sqlx::Error> {
        let c = &self.opts.columns;
        let (t, task) = (c.table.quoted_mysql(), c.task.quoted_mysql());
        if self.shape.checked_at_is_time {
            let sql =
                format!("SELECT MIN(`checked_at`), MAX(`checked_at`) FROM {t} WHERE {task} = ?");
            let r = bind(sqlx::query(AssertSqlSafe(sql)), &self.task)
                .fetch_one(&self.pool)
                .await?;
            let get = |i: usize| {
                r.try_get::<Option<chrono::NaiveDateTime>, _>(i)
                    .map(|t| t.map(naive_rfc3339))
            };
            Ok((get(0)?, get(1)?))
        } else {
            let sql = format!(
                "SELECT CAST(MIN(`checked_at`) AS CHAR), CAST(MAX(`checked_at`) AS CHAR) FROM {t} WHERE {task} = ?"
            );
            let r = bind(sqlx::query(AssertSqlSafe(sql)), &self.task)
                .fetch_one(&self.pool)
                .await?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        }
    }

    fn err(&self, what: &str, e: impl Display) -> anyhow::Error {
        anyhow!("{}: {what}: {e}", self.name)
    }
}

/// `SKIP LOCKED` arrived in MySQL 8.0.1 and MariaDB 10.6.
fn has_skip_locked(version: &str) -> bool {
    let mut nums = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if version.to_ascii_lowercase().contains("mariadb") {
        (major, minor) >= (10, 6)
    } else {
        major >= 8
    }
}

/// `<table>_task_status`, or a fixed name where that would pass MySQL's 64 characters.
fn index_name(table: &Ident) -> Ident {
    let name = format!("{}_task_status", table.as_str());
    let name = if name.len() <= 64 {
        name
    } else {
        "recheck_task_status".to_string()
    };
    Ident::new("index", &name).unwrap_or_else(|_| table.clone())
}

/// `recheck init`: creates the default schema in `table`, or adds the bookkeeping and lease
/// columns it lacks (printing each statement it runs).
pub async fn init(url: &str, shown: &str, table: &Ident) -> Result<String> {
    let conn = connect(url, shown, 1).await?;
    let name = conn.name.clone();
    let cols = table_columns(&conn, table).await?;
    let t = table.quoted_mysql();
    if cols.is_empty() {
        let c = super::Columns::default();
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
               {task} VARCHAR(191) NOT NULL, \
               {id} VARCHAR(191) NOT NULL, \
               {status} VARCHAR(64) NOT NULL, \
               {url} TEXT NULL, \
               `http_status` INT NULL, \
               `attempts` INT NOT NULL DEFAULT 0, \
               `last_error` TEXT NULL, \
               `checked_at` DATETIME(3) NULL, \
               `lease_owner` VARCHAR(255) NULL, \
               `lease_until` DATETIME(3) NULL, \
               `checks` INT NOT NULL DEFAULT 0, \
               `first_checked_at` DATETIME(3) NULL, \
               `next_check_at` DATETIME(3) NULL, \
               PRIMARY KEY ({task}, {id}), \
               INDEX {idx} ({task}, {status}))",
            task = c.task.quoted_mysql(),
            id = c.id.quoted_mysql(),
            status = c.status.quoted_mysql(),
            url = c.url.quoted_mysql(),
            idx = index_name(table).quoted_mysql(),
        );
        sqlx::query(AssertSqlSafe(sql))
            .execute(&conn.pool)
            .await
            .map_err(|e| conn.err(&format!("cannot create table {table}"), e))?;
        conn.pool.close().await;
        return Ok(format!("created table {table} in {name}"));
    }
    let columns: [(&str, &str); 9] = [
        ("http_status", "INT NULL"),
        ("attempts", "INT NOT NULL DEFAULT 0"),
        ("last_error", "TEXT NULL"),
        ("checked_at", "DATETIME(3) NULL"),
        ("lease_owner", "VARCHAR(255) NULL"),
        ("lease_until", "DATETIME(3) NULL"),
        ("checks", "INT NOT NULL DEFAULT 0"),
        ("first_checked_at", "DATETIME(3) NULL"),
        ("next_check_at", "DATETIME(3) NULL"),
    ];
    let mut ran = Vec::new();
    for (col, ty) in columns {
        if cols.iter().any(|(n, _)| n.eq_ignore_ascii_case(col)) {
            continue;
        }
        let sql = format!("ALTER TABLE {t} ADD COLUMN `{col}` {ty}");
        sqlx::query(AssertSqlSafe(sql.clone()))
            .execute(&conn.pool)
            .await
            .map_err(|e| conn.err(&format!("cannot add column {col} to table {table}"), e))?;
        ran.push(format!("{sql};"));
    }
    conn.pool.close().await;
    if ran.is_empty() {
        return Ok(format!(
            "table {table} already exists in {name} with every column recheck uses"
        ));
    }
    ran.push(format!(
        "added {} column{} to table {table} in {name}",
        ran.len(),
        if ran.len() == 1 { "" } else { "s" }
    ));
    Ok(ran.join("\n"))
}

impl Inner {
    async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut cur = self.cursor.lock().await;
        loop {
            let after = cur.last.clone();
            let items = if self.leasing {
                retrying(|| self.claim_leased(after.as_deref(), n))
                    .await
                    .map_err(|e| self.err("cannot claim items", e))?
            } else {
                self.claim_keyset(after.as_deref(), n)
                    .await
                    .map_err(|e| self.err("cannot read items", e))?
            };
            if let Some(last) = items.last() {
                cur.last = Some(last.id.clone());
                if self.leasing {
                    let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                    held.extend(items.iter().map(|i| i.id.clone()));
                }
            } else if self.leasing && !cur.swept {
                // One more pass from the start picks up claims that were released or whose
                // worker died while this one walked past them.
                self.reap_dead_owners()
                    .await
                    .map_err(|e| self.err("cannot free the leases of dead workers", e))?;
                cur.swept = true;
                cur.last = None;
                continue;
            }
            return Ok(items);
        }
    }

    async fn pending(&self) -> Result<u64> {
        let c = &self.opts.columns;
        let sql = format!(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM {t} WHERE {task} = ? AND {status} = ?",
            t = c.table.quoted_mysql(),
            task = c.task.quoted_mysql(),
            status = c.status.quoted_mysql(),
        );
        let q = bind(
            bind(sqlx::query(AssertSqlSafe(sql)), &self.task),
            &self.failed,
        );
        let n: i64 = q
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.err("cannot count items", e))?;
        Ok(n.max(0) as u64)
    }

    async fn save(&self, batch: Vec<Verdict>) -> Result<Saved> {
        if self.opts.read_only || batch.is_empty() {
            return Ok(Saved::default());
        }
        let conflicts = retrying(|| self.save_tx(&batch)).await.map_err(|e| {
            let transient = super::sqlx_transient(&e);
            self.err("cannot save results", e)
                .context(super::Transient(transient))
        })?;
        if self.leasing {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            for v in &batch {
                held.remove(&v.id);
            }
        }
        Ok(Saved { conflicts })
    }

    async fn renew(&self) -> Result<()> {
        if let Some(lock) = self.task_lock.lock().await.as_mut() {
            // Keeps the lock's idle connection from reaching the server's wait_timeout.
            lock.conn
                .ping()
                .await
                .map_err(|e| self.err("the connection holding the task's lock failed", e))?;
        }
        if !self.leasing {
            return Ok(());
        }
        retrying(|| self.touch_held(true))
            .await
            .map_err(|e| self.err("cannot renew leases", e))
    }

    async fn finish(&self) -> Result<()> {
        let released = if self.leasing {
            retrying(|| self.touch_held(false))
                .await
                .map_err(|e| self.err("cannot release leases", e))
        } else {
            Ok(())
        };
        if let Some(mut lock) = self.task_lock.lock().await.take() {
            let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(lock.name.as_str())
                .execute(&mut lock.conn)
                .await;
            let _ = lock.conn.close().await;
        }
        self.pool.close().await;
        released
    }

    async fn status_counts(&self) -> Result<StatusCounts> {
        let c = &self.opts.columns;
        let (t, task, st) = (
            c.table.quoted_mysql(),
            c.task.quoted_mysql(),
            c.status.quoted_mysql(),
        );
        let sql = format!(
            "SELECT CAST({st} AS CHAR), CAST(COUNT(*) AS SIGNED) FROM {t} WHERE {task} = ? GROUP BY {st}"
        );
        let rows = bind(sqlx::query(AssertSqlSafe(sql)), &self.task)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err("cannot count items", e))?;
        let mut counts = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<Option<String>, _>(0)?
                        .unwrap_or_else(|| "NULL".into()),
                    r.try_get::<i64, _>(1)?.max(0) as u64,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.err("cannot count items", e))?;
        counts.sort();
        let (oldest, newest) = if self.shape.has_checked_at {
            self.checked_at_range()
                .await
                .map_err(|e| self.err("cannot read checked_at", e))?
        } else {
            (None, None)
        };
        Ok(StatusCounts {
            counts,
            oldest_checked_at: oldest,
            newest_checked_at: newest,
        })
    }

    async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        if !self.shape.has_url && items.iter().any(|i| i.url.is_some()) {
            bail!(
                "{}: table {} has no {} column for the imported urls",
                self.name,
                self.opts.columns.table,
                self.opts.columns.url
            );
        }
        if items.is_empty() {
            return Ok(ImportCounts::default());
        }
        retrying(|| self.import_rows(&items, reset))
            .await
            .map_err(|e| self.err("cannot import items", e))
    }
}

impl Store for MyStore {
    async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        self.inner.claim(n).await
    }
    async fn pending(&self) -> Result<u64> {
        self.inner.pending().await
    }
    async fn save(&self, batch: Vec<Verdict>) -> Result<Saved> {
        self.inner.save(batch).await
    }
    async fn renew(&self) -> Result<()> {
        self.inner.renew().await
    }
    async fn finish(&self) -> Result<()> {
        self.inner.finish().await
    }
    async fn status_counts(&self) -> Result<StatusCounts> {
        self.inner.status_counts().await
    }
    async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        self.inner.import(items, reset).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_locked_by_version() {
        assert!(has_skip_locked("8.0.36"));
        assert!(has_skip_locked("8.4.0-commercial"));
        assert!(!has_skip_locked("5.7.44-log"));
        assert!(has_skip_locked("10.11.19-MariaDB-0+deb12u1"));
        assert!(has_skip_locked("11.4.2-MariaDB"));
        assert!(!has_skip_locked("10.5.8-MariaDB"));
    }

    #[test]
    fn shapes_pad_up() {
        assert_eq!(shape_for(1), 1);
        assert_eq!(shape_for(2), 10);
        assert_eq!(shape_for(100), 100);
        assert_eq!(shape_for(101), 1000);
        assert_eq!(marks(3), "?, ?, ?");
    }

    #[test]
    fn numeric_columns_refuse_text() {
        let (t, c) = (
            Ident::new("t", "data").unwrap(),
            Ident::new("c", "status").unwrap(),
        );
        assert_eq!(
            column_value("db", "--failed-status", "5", &c, &t, true).unwrap(),
            Val::Int(5)
        );
        assert_eq!(
            column_value("db", "--failed-status", "5", &c, &t, false).unwrap(),
            Val::Text("5".into())
        );
        let err = column_value("db", "--failed-status", "failed", &c, &t, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--failed-status") && err.contains("status"),
            "{err}"
        );
    }

    #[test]
    fn scrub_hides_secrets() {
        assert_eq!(
            scrub("bad pass hunter2", &["hunter2".into()]),
            "bad pass ***"
        );
        assert_eq!(scrub("x", &[String::new()]), "x");
    }
}
