//! Store backend: a SQLite file (the embedded default). Validates the table and columns
//! before anything is written, then claims pages by keyset on `rowid` and saves verdicts in
//! one `BEGIN IMMEDIATE` transaction per batch, each row compare-and-set on the row it
//! claimed. Knows nothing of HTTP.
//!
//! # What a run may change in the file
//!
//! Nothing before the store is accepted: the file, the table, every column and every
//! value the run binds are checked first, on a connection that only reads. A run never
//! creates a store (a missing file is a mistyped path, exit 2) and never changes the
//! file's journal mode: batched transactions make WAL unnecessary for speed, so a file
//! recheck did not create keeps the mode it had. `import` and `init` create new files in
//! WAL mode (so `recheck status` can read while a run writes). `status` and `--dry-run`
//! open the file read-only.
//!
//! # Compare-and-set
//!
//! A save changes a row only while it is still the row claimed: same `rowid`, task, id
//! (as text), still the failed status and, with leases, still leased by this worker. A row
//! the pipeline deleted and replaced (SQLite reuses rowids), moved to another status, or
//! that another worker took over keeps that change; the verdict is a conflict.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::lock::LockFile;
use super::{
    Ident, ImportCounts, NewItem, OpenMode, Saved, StatusCounts, Store, StoreOptions, TableColumns,
};
use crate::model::{Item, StatusValue, Verdict, rfc3339};

/// How long a statement waits for another process's lock before it fails with `BUSY`
/// (which the sink retries: see `store::is_transient`).
const BUSY_TIMEOUT_MS: u64 = 10_000;

/// Columns `recheck init` adds to an existing table that lacks them, with their
/// declarations (SPEC §2: bookkeeping, leases, schedule).
const INIT_COLUMNS: [(&str, &str); 9] = [
    ("http_status", "INTEGER NULL"),
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("last_error", "TEXT NULL"),
    ("checked_at", "TEXT NULL"),
    ("lease_owner", "TEXT NULL"),
    ("lease_until", "TEXT NULL"),
    ("checks", "INTEGER NOT NULL DEFAULT 0"),
    ("first_checked_at", "TEXT NULL"),
    ("next_check_at", "TEXT NULL"),
];

/// A SQLite-backed store. The connection sits behind a mutex and every call runs on the
/// blocking pool, so async workers never wait on disk.
pub struct SqliteStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    conn: Connection,
    opts: StoreOptions,
    /// What this table has, found at open.
    shape: Shape,
    /// Keyset cursor: the last rowid handed out.
    last_rowid: i64,
    /// The keyset pass has reached the end once and started over for abandoned claims.
    swept: bool,
    /// Claims are leases shared with other workers (the table has the lease columns and
    /// the run writes).
    leasing: bool,
    /// Items checked at or after this time (RFC 3339) were checked in this round, by this
    /// worker or one running alongside it: they are not claimed again.
    since: String,
    /// Held for the run when the table cannot share work (no lease columns).
    _lock: Option<LockFile>,
    /// Where the file lives, for messages.
    name: String,
}
/// How a column compares with a bound value, from its declared type (SQLite's affinity
/// rules, §3.1 of its datatype docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Affinity {
    /// TEXT, VARCHAR, CLOB: a bound integer is compared as its text.
    #[default]
    Text,
    /// INTEGER, NUMERIC, REAL, BOOLEAN...: integer-looking values are bound as integers.
    Numeric,
    /// No declared type (or BLOB): values keep the type they were inserted with, so an
    /// integer-looking value may be stored as `5` or as `'5'`; both match.
    None,
}

impl Affinity {
    fn of(decl: &str) -> Affinity {
        let d = decl.to_ascii_uppercase();
        if d.contains("INT") {
            Affinity::Numeric
        } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
            Affinity::Text
        } else if d.contains("BLOB") || d.trim().is_empty() {
            Affinity::None
        } else {
            Affinity::Numeric
        }
    }

    /// A value for this column: integer-looking text is bound as an integer where the
    /// column does not turn it into text itself.
    fn bind(self, text: &str) -> Value {
        match (self, StatusValue::new(text).as_int()) {
            (Affinity::Numeric | Affinity::None, Some(n)) => Value::Integer(n),
            _ => Value::Text(text.to_string()),
        }
    }

    /// `col` compared with parameter `?n` (bound by [`Affinity::bind`]).
    fn eq(self, col: &str, n: usize) -> String {
        match self {
            Affinity::None => format!("({col} = ?{n} OR {col} = CAST(?{n} AS TEXT))"),
            Affinity::Text | Affinity::Numeric => format!("{col} = ?{n}"),
        }
    }

    /// Refuses a value the column cannot hold as meant (text for an INTEGER column would
    /// silently match nothing).
    fn check(self, flag: &str, v: &str, col: &Ident, table: &Ident) -> Result<()> {
        if self == Affinity::Numeric && v.trim().parse::<f64>().is_err() {
            bail!("{flag} {v:?} is not a number, but column {col} of table {table} holds numbers");
        }
        Ok(())
    }
}

/// The parts of the table recheck may use, found by `PRAGMA table_info`.
#[derive(Debug, Clone, Default)]
struct Shape {
    /// How the status column compares.
    status: Affinity,
    /// How the task column compares.
    task: Affinity,
    /// How the id column compares.
    id: Affinity,
    has_url: bool,
    has_http_status: bool,
    has_attempts: bool,
    has_last_error: bool,
    has_checked_at: bool,
    /// `lease_owner` and `lease_until` (with `checked_at`): workers can share the task.
    has_leases: bool,
}

impl SqliteStore {
    /// Opens the SQLite store at `path` (creating it only for `import`/`init`) and checks
    /// that the table, every column and every value the run needs fit. Nothing is written
    /// before that check.
    pub async fn open(path: PathBuf, opts: StoreOptions, mode: OpenMode) -> Result<SqliteStore> {
        let inner = tokio::task::spawn_blocking(move || Inner::open(&path, opts, mode))
            .await
            .context("SQLite open task failed")??;
        Ok(SqliteStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut lock(&inner)))
            .await
            .context("SQLite task failed")?
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves the connection usable (SQLite rolls back an
    // unfinished transaction when it is dropped), so a poisoned lock is not fatal.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `recheck init`: creates the default schema in a table named `table`, or adds the
/// bookkeeping, lease and schedule columns an existing table lacks.
pub async fn init(path: &Path, table: &Ident) -> Result<String> {
    let path = path.to_path_buf();
    let table = table.clone();
    tokio::task::spawn_blocking(move || {
        let name = path.display().to_string();
        let new_file = !path.exists();
        let conn = open_conn(&path, false)?;
        check_is_database(&conn, &name)?;
        match object_type(&conn, &table)?.as_deref() {
            None => {
                create_schema(&conn, &table, &super::Columns::default(), new_file)
                    .with_context(|| format!("{name}: cannot create table {table}"))?;
                Ok(format!("created table {table} in {name}"))
            }
            Some("table") => {
                let cols = table_info(&conn, &table)?;
                let has = |n: &str| cols.iter().any(|(c, _)| c.eq_ignore_ascii_case(n));
                let stmts: Vec<String> = INIT_COLUMNS
                    .iter()
                    .filter(|(n, _)| !has(n))
                    .map(|(n, decl)| format!("ALTER TABLE {} ADD COLUMN {n} {decl}", table.quoted()))
                    .collect();
                if stmts.is_empty() {
                    return Ok(format!(
                        "table {table} in {name} already has every column recheck uses"
                    ));
                }
                conn.execute_batch(&format!("BEGIN IMMEDIATE; {}; COMMIT", stmts.join("; ")))
                    .with_context(|| format!("{name}: cannot alter table {table}"))?;
                let mut msg = format!(
                    "table {table} in {name} exists; added the columns recheck uses for bookkeeping, leases and the schedule:"
                );
                for s in &stmts {
                    msg.push_str(&format!("\n{s};"));
                }
                Ok(msg)
            }
            Some(other) => bail!("{name}: {table} is a {other}, not a table"),
        }
    })
    .await
    .context("SQLite init task failed")?
}

/// Opens the file. A reader (`status`, `--dry-run`) opens it so that nothing can be
/// written (`query_only`), but read-write when the file allows it: a read-only SQLite
/// connection to a WAL file leaves `-wal`/`-shm` behind, while the last read-write
/// connection to close removes them. A file the process may not write is opened
/// read-only.
fn open_conn(path: &Path, read_only: bool) -> Result<Connection> {
    let base = OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | base;
    let conn = if read_only {
        Connection::open_with_flags(path, rw)
            .or_else(|_| Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | base))
            .and_then(|c| c.pragma_update(None, "query_only", true).map(|()| c))
    } else {
        Connection::open_with_flags(path, rw | OpenFlags::SQLITE_OPEN_CREATE)
    }
    .with_context(|| format!("{}: cannot open SQLite store", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    Ok(conn)
}

/// Fails with a readable message when the file is not a SQLite database, or a damaged one
/// (`quick_check` reads every page, so a malformed page is refused before any write).
fn check_is_database(conn: &Connection, name: &str) -> Result<()> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
        .map_err(|e| anyhow!("{name}: not a SQLite database ({e})"))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| anyhow!("{name}: damaged SQLite database ({e})"))?;
    if verdict != "ok" {
        bail!("{name}: damaged SQLite database ({verdict})");
    }
    Ok(())
}

/// `table`, `view`... of the schema object named `table`, if there is one.
fn object_type(conn: &Connection, table: &Ident) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT type FROM sqlite_master WHERE type IN ('table','view') AND name = ?1 COLLATE NOCASE",
            [table.as_str()],
            |r| r.get(0),
        )
        .optional()?)
}

fn user_tables(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names)
}

fn table_info(conn: &Connection, table: &Ident) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", table.quoted()))?;
    let cols = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(cols)
}

/// The SPEC §2 default schema, with the mapped names for the four core columns. A file
/// recheck creates is put in WAL mode (`new_file`); an existing one keeps its mode.
fn create_schema(
    conn: &Connection,
    table: &Ident,
    c: &super::Columns,
    new_file: bool,
) -> Result<()> {
    if new_file {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    let t = table.quoted();
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            {task} TEXT NOT NULL,
            {id} TEXT NOT NULL,
            {status} TEXT NOT NULL,
            {url} TEXT NULL,
            http_status INTEGER NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NULL,
            checked_at TEXT NULL,
            lease_owner TEXT NULL,
            lease_until TEXT NULL,
            checks INTEGER NOT NULL DEFAULT 0,
            first_checked_at TEXT NULL,
            next_check_at TEXT NULL,
            PRIMARY KEY ({task}, {id})
        );
        CREATE INDEX IF NOT EXISTS {idx} ON {t} ({task}, {status});",
        task = c.task.quoted(),
        id = c.id.quoted(),
        status = c.status.quoted(),
        url = c.url.quoted(),
        idx = Ident::new("index", &format!("{}_task_status", table.as_str()))?.quoted(),
    );
    conn.execute_batch(&sql)?;
    Ok(())
}

fn value_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

impl Inner {
    fn open(path: &Path, opts: StoreOptions, mode: OpenMode) -> Result<Inner> {
        let name = path.display().to_string();
        let table = opts.columns.table.clone();
        let read_only = opts.read_only || mode == OpenMode::Status;
        if !path.exists() {
            match mode {
                OpenMode::Status => bail!("{name}: no such store"),
                // A mistyped path must not pass as "nothing to check".
                OpenMode::Run => {
                    bail!("{name}: no such store (`recheck import` or `recheck init` creates one)")
                }
                OpenMode::Create => {}
            }
        }
        let new_file = !path.exists();
        let conn = open_conn(path, read_only)?;
        check_is_database(&conn, &name)?;
        match object_type(&conn, &table)?.as_deref() {
            Some("table") => {}
            Some(other) => bail!("{name}: {table} is a {other}, not a table recheck can write"),
            None => {
                let tables = user_tables(&conn)?;
                if mode == OpenMode::Create && tables.is_empty() {
                    // A new or empty file: import creates the schema.
                    create_schema(&conn, &table, &opts.columns, new_file)
                        .with_context(|| format!("{name}: cannot create table {table}"))?;
                } else if tables.is_empty() {
                    bail!("{name}: table {table} not found (the database has no tables)");
                } else {
                    bail!(
                        "{name}: table {table} not found (tables: {})",
                        tables.join(", ")
                    );
                }
            }
        }
        let shape = inspect(&conn, &name, &opts, mode)?;
        let leasing = shape.has_leases && !read_only && mode == OpenMode::Run;
        let mut inner = Inner {
            conn,
            opts,
            shape,
            last_rowid: i64::MIN,
            swept: false,
            leasing,
            since: String::new(),
            _lock: None,
            name,
        };
        // Prepare every statement of the mode now, so a WITHOUT ROWID table or another
        // surprise is a start-up error, not a mid-run one (and nothing was written).
        let statements = match mode {
            OpenMode::Run if leasing => vec![inner.lease_sql(), inner.save_sql()],
            OpenMode::Run => vec![inner.claim_sql(), inner.save_sql()],
            OpenMode::Create | OpenMode::Status => vec![inner.pending_sql()],
        };
        for sql in statements {
            inner
                .conn
                .prepare_cached(&sql)
                .with_context(|| format!("{}: cannot use table {table}", inner.name))?;
        }
        if mode == OpenMode::Run {
            inner.check_task_exists()?;
        }
        // Without lease columns two runs on the table would both check everything: the
        // second one is refused instead.
        if mode == OpenMode::Run && !read_only && !inner.shape.has_leases {
            inner._lock = Some(LockFile::acquire(
                path,
                &format!("sqlite:{} (table {table} has no lease columns)", inner.name),
            )?);
        }
        if !read_only {
            // Durable at each commit in WAL mode with NORMAL; other journal modes keep
            // SQLite's default (FULL).
            let journal: String = inner
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if journal.eq_ignore_ascii_case("wal") {
                inner.conn.pragma_update(None, "synchronous", "NORMAL")?;
            }
        }
        inner.since = rfc3339(if leasing {
            inner.reap().with_context(|| {
                format!("{}: cannot free the leases of dead workers", inner.name)
            })?;
            let task_eq = inner.shape.task.eq(&inner.opts.columns.task.quoted(), 1);
            round_start(&inner.conn, &inner.opts, &inner.task_value(), &task_eq)?
        } else {
            inner.opts.started
        });
        Ok(inner)
    }

    /// A task id with no row at all is a typo, not "nothing to check" (SPEC §2).
    fn check_task_exists(&self) -> Result<()> {
        let c = &self.opts.columns;
        let t = c.table.quoted();
        let sql = format!(
            "SELECT 1 FROM {t} WHERE {} LIMIT 1",
            self.shape.task.eq(&c.task.quoted(), 1)
        );
        let found = self
            .conn
            .query_row(&sql, [self.task_value()], |_| Ok(()))
            .optional()?
            .is_some();
        if found {
            return Ok(());
        }
        let mut stmt = self.conn.prepare(&format!(
            "SELECT DISTINCT CAST({task} AS TEXT) FROM {t} WHERE {task} IS NOT NULL LIMIT 10000",
            task = c.task.quoted()
        ))?;
        let known = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Err(super::unknown_task(
            &format!("sqlite:{}", self.name),
            &self.opts.task,
            &known,
        ))
    }

    /// The columns an [`Item`] is built from, after `rowid`. The id is read as text (NULL
    /// as empty, which the URL template refuses), the form the save compares it in.
    fn item_columns(&self) -> String {
        let c = &self.opts.columns;
        let mut cols = vec![format!("COALESCE(CAST({} AS TEXT), '')", c.id.quoted())];
        if self.shape.has_url {
            cols.push(c.url.quoted());
        }
        cols.extend(self.opts.extra_columns.iter().map(Ident::quoted));
        cols.join(", ")
    }

    /// `task = ?1 AND status = ?2`, as the columns compare.
    fn task_and_failed(&self) -> String {
        let c = &self.opts.columns;
        format!(
            "{} AND {}",
            self.shape.task.eq(&c.task.quoted(), 1),
            self.shape.status.eq(&c.status.quoted(), 2)
        )
    }

    /// Claims by lease, in one statement: the next failed items after the cursor that no
    /// live worker holds and nobody checked in this round. An expired lease is a crashed
    /// worker's: its items are free again. "Checked in this round" is a `checked_at`
    /// between the round's start and now: any other value (older, in the future, or text
    /// that is no time at all) does not keep an item from being claimed.
    fn lease_sql(&self) -> String {
        let c = &self.opts.columns;
        format!(
            "UPDATE {t} SET lease_owner = ?5, lease_until = ?6 WHERE rowid IN (\
               SELECT rowid FROM {t} WHERE {base} AND rowid > ?3 \
                 AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until < ?7) \
                 AND (checked_at IS NULL OR NOT (checked_at >= ?8 AND checked_at <= ?7)) \
               ORDER BY rowid LIMIT ?4) \
             RETURNING rowid, {cols}",
            t = c.table.quoted(),
            base = self.task_and_failed(),
            cols = self.item_columns(),
        )
    }

    fn claim_leased(&mut self, n: usize) -> Result<Vec<Item>> {
        let sql = self.lease_sql();
        let now = SystemTime::now();
        let until = rfc3339(now + self.opts.lease);
        let (task, failed) = (self.task_value(), self.failed_value());
        let (has_url, extra) = (self.shape.has_url, self.opts.extra_columns.len());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .with_context(|| format!("{}: cannot start a claim", self.name))?;
        let mut items = {
            let mut stmt = tx.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params![
                task,
                failed,
                self.last_rowid,
                i64::try_from(n).unwrap_or(i64::MAX),
                self.opts.owner,
                until,
                rfc3339(now),
                self.since,
            ])?;
            let mut items = Vec::with_capacity(n);
            while let Some(row) = rows.next()? {
                items.push(item_from(row, has_url, extra)?);
            }
            items
        };
        tx.commit()
            .with_context(|| format!("{}: cannot commit a claim", self.name))?;
        // RETURNING promises no order.
        items.sort_unstable_by_key(|i| i.key);
        Ok(items)
    }

    /// Extends the leases this worker holds on items it has not saved.
    fn renew(&mut self) -> Result<()> {
        if !self.leasing {
            return Ok(());
        }
        let sql = format!(
            "UPDATE {t} SET lease_until = ?3 WHERE {base} AND lease_owner = ?4",
            t = self.opts.columns.table.quoted(),
            base = self.task_and_failed(),
        );
        let until = rfc3339(SystemTime::now() + self.opts.lease);
        self.conn
            .prepare_cached(&sql)?
            .execute(rusqlite::params![
                self.task_value(),
                self.failed_value(),
                until,
                self.opts.owner
            ])
            .with_context(|| format!("{}: cannot renew leases", self.name))?;
        Ok(())
    }

    /// Gives back the claims of items that got no verdict (a stop, a limit), so another
    /// worker can take them at once instead of after the lease.
    fn release(&mut self) -> Result<()> {
        if !self.leasing {
            return Ok(());
        }
        let sql = format!(
            "UPDATE {t} SET lease_owner = NULL, lease_until = NULL WHERE {base} AND lease_owner = ?3",
            t = self.opts.columns.table.quoted(),
            base = self.task_and_failed(),
        );
        self.conn
            .prepare_cached(&sql)?
            .execute(rusqlite::params![
                self.task_value(),
                self.failed_value(),
                self.opts.owner
            ])
            .with_context(|| format!("{}: cannot release leases", self.name))?;
        Ok(())
    }

    fn claim_sql(&self) -> String {
        format!(
            "SELECT rowid, {cols} FROM {t} WHERE {base} AND rowid > ?3 ORDER BY rowid LIMIT ?4",
            cols = self.item_columns(),
            t = self.opts.columns.table.quoted(),
            base = self.task_and_failed(),
        )
    }

    fn pending_sql(&self) -> String {
        format!(
            "SELECT COUNT(*) FROM {t} WHERE {base}",
            t = self.opts.columns.table.quoted(),
            base = self.task_and_failed(),
        )
    }

    fn reap(&self) -> Result<()> {
        let task_eq = self.shape.task.eq(&self.opts.columns.task.quoted(), 1);
        reap_dead_owners(&self.conn, &self.opts, &self.task_value(), &task_eq)
    }

    fn task_value(&self) -> Value {
        self.shape.task.bind(&self.opts.task)
    }

    fn failed_value(&self) -> Value {
        self.shape.status.bind(self.opts.failed.as_str())
    }

    fn claim(&mut self, n: usize) -> Result<Vec<Item>> {
        loop {
            let items = if self.leasing {
                self.claim_leased(n)?
            } else {
                self.claim_keyset(n)?
            };
            if let Some(last) = items.last() {
                self.last_rowid = self.last_rowid.max(last.key);
            } else if self.leasing && !self.swept {
                // One more pass from the start picks up claims that were released or whose
                // worker died while this one walked past them.
                self.reap()?;
                self.swept = true;
                self.last_rowid = i64::MIN;
                continue;
            }
            return Ok(items);
        }
    }

    fn claim_keyset(&mut self, n: usize) -> Result<Vec<Item>> {
        let sql = self.claim_sql();
        let (task, failed) = (self.task_value(), self.failed_value());
        let (has_url, extra) = (self.shape.has_url, self.opts.extra_columns.len());
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params![
            task,
            failed,
            self.last_rowid,
            i64::try_from(n).unwrap_or(i64::MAX)
        ])?;
        let mut items = Vec::with_capacity(n);
        while let Some(row) = rows.next()? {
            items.push(item_from(row, has_url, extra)?);
        }
        Ok(items)
    }

    /// The save statement: status set only when a value is bound (NULL means "leave it"),
    /// bookkeeping only where the table has the column, and only on the row as claimed.
    fn save_sql(&self) -> String {
        let s = &self.shape;
        let c = &self.opts.columns;
        let mut sets = vec![format!(
            "{st} = CASE WHEN ?3 IS NULL THEN {st} ELSE ?3 END",
            st = c.status.quoted()
        )];
        if s.has_http_status {
            sets.push("http_status = ?4".into());
        }
        if s.has_attempts {
            sets.push("attempts = COALESCE(attempts, 0) + ?5".into());
        }
        if s.has_last_error {
            sets.push("last_error = ?6".into());
        }
        if s.has_checked_at {
            sets.push("checked_at = ?7".into());
        }
        let mut cas = format!(
            "rowid = ?8 AND {base} AND COALESCE(CAST({id} AS TEXT), '') = ?9",
            base = self.task_and_failed(),
            id = c.id.quoted(),
        );
        if self.leasing {
            sets.push("lease_owner = NULL, lease_until = NULL".into());
            cas.push_str(" AND lease_owner = ?10");
        } else {
            // Keeps ?10 in the statement, so it always takes ten parameters.
            cas.push_str(" AND ?10 IS NOT NULL");
        }
        format!(
            "UPDATE {t} SET {sets} WHERE {cas}",
            t = c.table.quoted(),
            sets = sets.join(", ")
        )
    }

    fn save(&mut self, batch: &[Verdict]) -> Result<Saved> {
        let mut saved = Saved::default();
        if self.opts.read_only || batch.is_empty() {
            return Ok(saved);
        }
        let sql = self.save_sql();
        let (task, failed) = (self.task_value(), self.failed_value());
        let status_aff = self.shape.status;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .with_context(|| format!("{}: cannot start a write", self.name))?;
        {
            let mut stmt = tx.prepare_cached(&sql)?;
            for (i, v) in batch.iter().enumerate() {
                let status = self
                    .opts
                    .status_for(v.outcome)
                    .map(|sv| status_aff.bind(sv.as_str()))
                    .unwrap_or(Value::Null);
                let changed = stmt
                    .execute(rusqlite::params![
                        task,
                        failed,
                        status,
                        v.http_status.map(i64::from),
                        i64::from(v.attempts),
                        v.error,
                        rfc3339(v.checked_at),
                        v.key,
                        v.id,
                        self.opts.owner,
                    ])
                    .with_context(|| format!("{}: cannot save item {:?}", self.name, v.id))?;
                if changed == 0 {
                    saved.conflicts.push(i);
                }
            }
        }
        tx.commit()
            .with_context(|| format!("{}: cannot commit results", self.name))?;
        Ok(saved)
    }

    fn pending(&self) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            &self.pending_sql(),
            rusqlite::params![self.task_value(), self.failed_value()],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    fn status_counts(&self) -> Result<StatusCounts> {
        let c = &self.opts.columns;
        let task_eq = self.shape.task.eq(&c.task.quoted(), 1);
        let sql = format!(
            "SELECT {st}, COUNT(*) FROM {t} WHERE {task_eq} GROUP BY {st}",
            st = c.status.quoted(),
            t = c.table.quoted(),
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut counts: Vec<(String, u64)> = stmt
            .query_map([self.task_value()], |r| {
                Ok((
                    value_text(r.get_ref(0)?).unwrap_or_else(|| "NULL".into()),
                    r.get::<_, i64>(1)?.max(0) as u64,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        // An untyped column may hold 5 and '5': one status.
        counts.sort();
        counts.dedup_by(|b, a| {
            let same = a.0 == b.0;
            if same {
                a.1 += b.1;
            }
            same
        });
        let (oldest, newest) = if self.shape.has_checked_at {
            let sql = format!(
                "SELECT MIN(checked_at), MAX(checked_at) FROM {t} WHERE {task_eq}",
                t = c.table.quoted(),
            );
            self.conn.query_row(&sql, [self.task_value()], |r| {
                Ok((value_text(r.get_ref(0)?), value_text(r.get_ref(1)?)))
            })?
        } else {
            (None, None)
        };
        Ok(StatusCounts {
            counts,
            oldest_checked_at: oldest,
            newest_checked_at: newest,
        })
    }

    /// Adds the items that are new; an id already there is left alone, or set back to
    /// failed with `reset`. One transaction per batch.
    fn import(&mut self, items: &[NewItem], reset: bool) -> Result<ImportCounts> {
        let c = self.opts.columns.clone();
        let t = c.table.quoted();
        let has_url = self.shape.has_url;
        if !has_url && items.iter().any(|i| i.url.is_some()) {
            bail!(
                "{}: table {} has no {} column for the imported urls",
                self.name,
                c.table,
                c.url
            );
        }
        let failed = self.failed_value();
        let task = self.task_value();
        let key = format!(
            "{} AND {}",
            self.shape.task.eq(&c.task.quoted(), 1),
            self.shape.id.eq(&c.id.quoted(), 2)
        );
        let exists = format!("SELECT 1 FROM {t} WHERE {key} LIMIT 1");
        let url_set = if has_url {
            format!(", {u} = COALESCE(?4, {u})", u = c.url.quoted())
        } else {
            String::new()
        };
        let update = format!(
            "UPDATE {t} SET {st} = ?3{url_set} WHERE {key}",
            st = c.status.quoted(),
        );
        let insert = format!(
            "INSERT INTO {t} ({task}, {id}, {st}{u}) VALUES (?1, ?2, ?3{uv})",
            task = c.task.quoted(),
            id = c.id.quoted(),
            st = c.status.quoted(),
            u = if has_url {
                format!(", {}", c.url.quoted())
            } else {
                String::new()
            },
            uv = if has_url { ", ?4" } else { "" },
        );
        let id_aff = self.shape.id;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .with_context(|| format!("{}: cannot start the import", self.name))?;
        let mut counts = ImportCounts::default();
        {
            let mut ex = tx.prepare_cached(&exists)?;
            let mut up = tx.prepare_cached(&update)?;
            let mut ins = tx.prepare_cached(&insert)?;
            for item in items {
                let id = id_aff.bind(&item.id);
                let found = ex
                    .query_row(rusqlite::params![task, id], |_| Ok(()))
                    .optional()?
                    .is_some();
                let what = || format!("{}: cannot import item {:?}", self.name, item.id);
                match (found, reset) {
                    (true, false) => counts.already += 1,
                    (true, true) => {
                        if has_url {
                            up.execute(rusqlite::params![task, id, failed, item.url])
                        } else {
                            up.execute(rusqlite::params![task, id, failed])
                        }
                        .with_context(what)?;
                        counts.reset += 1;
                    }
                    (false, _) => {
                        if has_url {
                            ins.execute(rusqlite::params![task, id, failed, item.url])
                        } else {
                            ins.execute(rusqlite::params![task, id, failed])
                        }
                        .with_context(what)?;
                        counts.added += 1;
                    }
                }
            }
        }
        tx.commit()
            .with_context(|| format!("{}: cannot commit the import", self.name))?;
        Ok(counts)
    }
}

/// An [`Item`] from a row of `rowid, id[, url], extra...` (see `Inner::item_columns`).
fn item_from(row: &rusqlite::Row<'_>, has_url: bool, extra: usize) -> rusqlite::Result<Item> {
    let key: i64 = row.get(0)?;
    let id = value_text(row.get_ref(1)?).unwrap_or_default();
    let mut col = 2;
    let url = if has_url {
        col += 1;
        value_text(row.get_ref(col - 1)?)
    } else {
        None
    };
    let fields = (0..extra)
        .map(|i| row.get_ref(col + i).map(value_text))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Item {
        key,
        id,
        url,
        fields,
    })
}

/// Frees the leases held by workers of this host that are no longer running (killed,
/// crashed): their items need not wait for the lease to expire. Every row of the task the
/// dead worker held is freed, whatever its status (a lease means nothing once its owner
/// is gone).
fn reap_dead_owners(
    conn: &Connection,
    opts: &StoreOptions,
    task: &Value,
    task_eq: &str,
) -> Result<()> {
    let t = opts.columns.table.quoted();
    let owners: Vec<String> = conn
        .prepare(&format!(
            "SELECT DISTINCT lease_owner FROM {t} WHERE {task_eq} AND lease_owner IS NOT NULL"
        ))?
        .query_map([task], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    let free = format!(
        "UPDATE {t} SET lease_owner = NULL, lease_until = NULL WHERE {task_eq} AND lease_owner = ?2"
    );
    for owner in owners.iter().filter(|o| super::owner_is_dead_here(o)) {
        let n = conn.execute(&free, rusqlite::params![task, owner])?;
        tracing::info!(owner = %owner, items = n, "took over the claims of a worker that is gone");
    }
    Ok(())
}

/// When this round of checks started: this worker's start, or the start of the earliest
/// live worker on the task (read from its `lease_owner` name), so a worker joining a run
/// does not check again what the others already checked.
fn round_start(
    conn: &Connection,
    opts: &StoreOptions,
    task: &Value,
    task_eq: &str,
) -> Result<SystemTime> {
    let sql = format!(
        "SELECT DISTINCT lease_owner FROM {t} WHERE {task_eq} AND lease_owner IS NOT NULL AND lease_until >= ?2",
        t = opts.columns.table.quoted(),
    );
    let mut stmt = conn.prepare(&sql)?;
    let owners = stmt
        .query_map(rusqlite::params![task, rfc3339(SystemTime::now())], |r| {
            r.get::<_, String>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(owners
        .iter()
        .filter_map(|o| super::owner_started(o))
        .fold(opts.started, SystemTime::min))
}

/// Reads the table's columns and checks the ones the run needs, and the values it binds.
fn inspect(conn: &Connection, name: &str, opts: &StoreOptions, mode: OpenMode) -> Result<Shape> {
    let c = &opts.columns;
    let cols = TableColumns::new(name, &c.table, table_info(conn, &c.table)?);
    let (task_t, id_t, status_t) = cols.check_run(opts)?;
    let status = Affinity::of(status_t);
    if mode == OpenMode::Run {
        let check = |flag: &str, v: &StatusValue| {
            status
                .check(flag, v.as_str(), &c.status, &c.table)
                .map_err(|e| anyhow!("{name}: {e}"))
        };
        check("--failed-status", &opts.failed)?;
        check("--ok-status", &opts.ok)?;
        if let Some(nf) = &opts.not_found {
            check("--not-found-status", nf)?;
        }
    }
    Ok(Shape {
        status,
        task: Affinity::of(task_t),
        id: Affinity::of(id_t),
        has_url: cols.has(c.url.as_str()),
        has_http_status: cols.has("http_status"),
        has_attempts: cols.has("attempts"),
        has_last_error: cols.has("last_error"),
        has_checked_at: cols.has("checked_at"),
        has_leases: cols.has_leases(),
    })
}

impl Store for SqliteStore {
    async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        self.with(move |i| i.claim(n)).await
    }

    async fn save(&self, batch: Vec<Verdict>) -> Result<Saved> {
        self.with(move |i| i.save(&batch)).await
    }

    async fn pending(&self) -> Result<u64> {
        self.with(|i| i.pending()).await
    }

    async fn renew(&self) -> Result<()> {
        self.with(|i| i.renew()).await
    }

    async fn finish(&self) -> Result<()> {
        self.with(|i| {
            i.release()?;
            if !i.opts.read_only {
                // Fold the WAL back so the file alone holds everything (nice for copies);
                // failure is harmless, the WAL stays valid. A no-op in other modes.
                let _ = i
                    .conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
            Ok(())
        })
        .await
    }

    async fn status_counts(&self) -> Result<StatusCounts> {
        self.with(|i| i.status_counts()).await
    }

    async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        self.with(move |i| i.import(&items, reset)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Outcome;
    use crate::store::Columns;
    use std::time::{Duration, SystemTime};

    fn opts(task: &str) -> StoreOptions {
        StoreOptions::basic(task, Columns::default(), StatusValue::new("failed"))
    }

    fn verdict(item: &Item, outcome: Outcome) -> Verdict {
        Verdict {
            key: item.key,
            id: item.id.clone(),
            outcome,
            http_status: Some(200),
            attempts: 2,
            error: None,
            checked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            elapsed: Duration::ZERO,
            url: None,
        }
    }

    #[test]
    fn affinity() {
        use Affinity::*;
        for (decl, want) in [
            ("INTEGER", Numeric),
            ("tinyint", Numeric),
            ("NUMERIC", Numeric),
            ("BOOLEAN", Numeric),
            ("REAL", Numeric),
            ("TEXT", Text),
            ("VARCHAR(20)", Text),
            ("", None),
            ("BLOB", None),
        ] {
            assert_eq!(Affinity::of(decl), want, "{decl}");
        }
        assert_eq!(None.bind("5"), Value::Integer(5));
        assert_eq!(Text.bind("5"), Value::Text("5".into()));
        assert_eq!(Numeric.bind("05"), Value::Text("05".into()));
        assert!(
            Numeric
                .check(
                    "--failed-status",
                    "failed",
                    &Ident::new("c", "status").unwrap(),
                    &Ident::new("t", "items").unwrap()
                )
                .is_err()
        );
        assert!(
            Numeric
                .check(
                    "--failed-status",
                    "5",
                    &Ident::new("c", "status").unwrap(),
                    &Ident::new("t", "items").unwrap()
                )
                .is_ok()
        );
    }

    #[tokio::test]
    async fn import_claim_save_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(path.clone(), opts("t1"), OpenMode::Create)
            .await
            .unwrap();
        let items = (0..5)
            .map(|i| NewItem {
                id: format!("i{i}"),
                url: None,
            })
            .collect();
        assert_eq!(store.import(items, true).await.unwrap().added, 5);
        let page1 = store.claim(3).await.unwrap();
        let page2 = store.claim(3).await.unwrap();
        assert_eq!(page1.len(), 3);
        assert_eq!(page2.len(), 2);
        assert!(store.claim(3).await.unwrap().is_empty());
        store
            .save(vec![
                verdict(&page1[0], Outcome::Ok),
                verdict(&page1[1], Outcome::Error),
            ])
            .await
            .unwrap();
        let counts = store.status_counts().await.unwrap();
        assert_eq!(
            counts.counts,
            vec![("failed".to_string(), 4), ("ok".to_string(), 1)]
        );
        assert_eq!(
            counts.newest_checked_at.as_deref(),
            Some("1970-01-01T00:00:01.000Z")
        );
        let attempts: i64 = lock(&store.inner)
            .conn
            .query_row(
                "SELECT attempts FROM items WHERE item_id = ?1",
                [&page1[1].id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn missing_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE items(task_id, item_id)")
            .unwrap();
        let err = SqliteStore::open(path, opts("t"), OpenMode::Run)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no column status"), "{err}");
        assert!(err.contains("--status-column"), "{err}");
    }
}
