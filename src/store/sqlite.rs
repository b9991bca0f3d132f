//! Store backend: a SQLite file (the embedded default). Validates the table and columns
//! before anything is written, then claims pages by keyset on `rowid` and saves verdicts in
//! one `BEGIN IMMEDIATE` transaction per batch. Knows nothing of HTTP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::lock::LockFile;
use super::{Ident, NewItem, OpenMode, StatusCounts, Store, StoreOptions, TableColumns};
use crate::model::{Item, StatusValue, Verdict, rfc3339};

/// How long a writer waits for another process's lock before giving up.
const BUSY_TIMEOUT_MS: u64 = 10_000;

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

/// The parts of the table recheck may use, found by `PRAGMA table_info`.
#[derive(Debug, Clone, Default)]
struct Shape {
    /// Status column holds integers (INTEGER/NUMERIC affinity): bind numeric statuses as such.
    status_is_int: bool,
    /// Task column holds integers.
    task_is_int: bool,
    has_url: bool,
    has_http_status: bool,
    has_attempts: bool,
    has_last_error: bool,
    has_checked_at: bool,
    /// `lease_owner` and `lease_until` (with `checked_at`): workers can share the task.
    has_leases: bool,
}

impl SqliteStore {
    /// Opens (or, for a run or import, creates) the SQLite store at `path` and checks that
    /// the table and every column the run needs exist. Nothing is written before that check.
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

/// Creates the default schema in a table named `table` (`recheck init`).
pub async fn init(path: &Path, table: &Ident) -> Result<String> {
    let path = path.to_path_buf();
    let table = table.clone();
    tokio::task::spawn_blocking(move || {
        let name = path.display().to_string();
        let conn = open_conn(&path, false)?;
        check_is_database(&conn, &name)?;
        if table_exists(&conn, &table)? {
            return Ok(format!("table {table} already exists in {name}"));
        }
        create_schema(&conn, &table, &super::Columns::default())
            .with_context(|| format!("{name}: cannot create table {table}"))?;
        Ok(format!("created table {table} in {name}"))
    })
    .await
    .context("SQLite init task failed")?
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("{}: cannot open SQLite store", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    Ok(conn)
}

/// Fails with a readable message when the file is not a SQLite database.
fn check_is_database(conn: &Connection, name: &str) -> Result<()> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
        .map(|_| ())
        .map_err(|e| anyhow!("{name}: not a SQLite database ({e})"))
}

fn table_exists(conn: &Connection, table: &Ident) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type IN ('table','view') AND name = ?1 COLLATE NOCASE",
            [table.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
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

/// The SPEC §2 default schema, with the mapped names for the four core columns.
fn create_schema(conn: &Connection, table: &Ident, c: &super::Columns) -> Result<()> {
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

/// Declared type → does SQLite give it INTEGER or NUMERIC affinity (§3.1 of its docs)?
fn is_numeric_affinity(decl: &str) -> bool {
    let d = decl.to_ascii_uppercase();
    if d.contains("INT") {
        return true;
    }
    let texty = d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT");
    let blobby = d.contains("BLOB") || d.is_empty();
    let realish = d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB");
    !texty && !blobby && !realish
}

/// A status or task value bound the way the column stores it.
fn bind_value(text: &str, as_int: Option<i64>, column_is_int: bool) -> Value {
    match (column_is_int, as_int) {
        (true, Some(n)) => Value::Integer(n),
        _ => Value::Text(text.to_string()),
    }
}

fn status_value(v: &StatusValue, column_is_int: bool) -> Value {
    bind_value(v.as_str(), v.as_int(), column_is_int)
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
        let exists = path.exists();
        let table = opts.columns.table.clone();
        let conn = match (exists, mode) {
            (false, OpenMode::Status) => bail!("{name}: no such store"),
            // A dry run writes nothing, not even a new file: an empty in-memory store
            // answers "nothing to check".
            (false, OpenMode::Run) if opts.read_only => {
                let conn = Connection::open_in_memory()?;
                create_schema(&conn, &table, &opts.columns)?;
                conn
            }
            _ => {
                let read_only = opts.read_only || mode == OpenMode::Status;
                let conn = open_conn(path, read_only)?;
                check_is_database(&conn, &name)?;
                if !table_exists(&conn, &table)? {
                    let tables = user_tables(&conn)?;
                    if tables.is_empty() && !read_only {
                        // A new or empty file: SPEC §2 says run and import create the schema.
                        create_schema(&conn, &table, &opts.columns)
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
                conn
            }
        };
        let shape = inspect(&conn, &name, &opts)?;
        let read_only = opts.read_only || mode == OpenMode::Status;
        let leasing = shape.has_leases && !read_only;
        // Without lease columns two runs on the table would both check everything: the
        // second one is refused instead.
        let lock = if mode == OpenMode::Run && !read_only && !shape.has_leases {
            Some(LockFile::acquire(
                path,
                &format!("sqlite:{name} (table {table} has no lease columns)"),
            )?)
        } else {
            None
        };
        if !read_only {
            // WAL only after validation: a refused run leaves the file's bytes alone.
            // WAL lets `recheck status` read while a run writes; NORMAL sync is durable
            // at each checkpoint and never corrupts the file.
            conn.pragma_update(None, "journal_mode", "WAL")
                .with_context(|| format!("{name}: cannot switch to WAL"))?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let since = if leasing {
            reap_dead_owners(&conn, &opts)
                .with_context(|| format!("{name}: cannot free the leases of dead workers"))?;
            round_start(&conn, &opts)?
        } else {
            opts.started
        };
        let inner = Inner {
            conn,
            opts,
            shape,
            last_rowid: i64::MIN,
            swept: false,
            leasing,
            since: rfc3339(since),
            _lock: lock,
            name,
        };
        // Prepare the claim query once now, so a WITHOUT ROWID table or another surprise is
        // a start-up error, not a mid-run one.
        inner
            .conn
            .prepare_cached(&inner.claim_sql())
            .with_context(|| format!("{}: cannot read table {table}", inner.name))?;
        Ok(inner)
    }

    /// The columns an [`Item`] is built from, after `rowid`.
    fn item_columns(&self) -> String {
        let c = &self.opts.columns;
        let mut cols = vec![c.id.quoted()];
        if self.shape.has_url {
            cols.push(c.url.quoted());
        }
        cols.extend(self.opts.extra_columns.iter().map(Ident::quoted));
        cols.join(", ")
    }

    /// Claims by lease, in one statement: the next failed items after the cursor that no
    /// live worker holds and nobody checked in this round. An expired lease is a crashed
    /// worker's: its items are free again.
    fn lease_sql(&self) -> String {
        let c = &self.opts.columns;
        format!(
            "UPDATE {t} SET lease_owner = ?5, lease_until = ?6 WHERE rowid IN (\
               SELECT rowid FROM {t} WHERE {task} = ?1 AND {status} = ?2 AND rowid > ?3 \
                 AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until < ?7) \
                 AND (checked_at IS NULL OR checked_at < ?8) \
               ORDER BY rowid LIMIT ?4) \
             RETURNING rowid, {cols}",
            t = c.table.quoted(),
            task = c.task.quoted(),
            status = c.status.quoted(),
            cols = self.item_columns(),
        )
    }

    fn claim_leased(&mut self, n: usize) -> Result<Vec<Item>> {
        let sql = self.lease_sql();
        let now = SystemTime::now();
        let until = rfc3339(now + self.opts.lease);
        let task = self.task_value();
        let failed = status_value(&self.opts.failed, self.shape.status_is_int);
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
        let c = &self.opts.columns;
        let sql = format!(
            "UPDATE {t} SET lease_until = ?1 WHERE {task} = ?2 AND {status} = ?3 AND lease_owner = ?4",
            t = c.table.quoted(),
            task = c.task.quoted(),
            status = c.status.quoted(),
        );
        let until = rfc3339(SystemTime::now() + self.opts.lease);
        let failed = status_value(&self.opts.failed, self.shape.status_is_int);
        self.conn
            .prepare_cached(&sql)?
            .execute(rusqlite::params![
                until,
                self.task_value(),
                failed,
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
        let c = &self.opts.columns;
        let sql = format!(
            "UPDATE {t} SET lease_owner = NULL, lease_until = NULL \
             WHERE {task} = ?1 AND {status} = ?2 AND lease_owner = ?3",
            t = c.table.quoted(),
            task = c.task.quoted(),
            status = c.status.quoted(),
        );
        let failed = status_value(&self.opts.failed, self.shape.status_is_int);
        self.conn
            .prepare_cached(&sql)?
            .execute(rusqlite::params![
                self.task_value(),
                failed,
                self.opts.owner
            ])
            .with_context(|| format!("{}: cannot release leases", self.name))?;
        Ok(())
    }

    fn claim_sql(&self) -> String {
        let c = &self.opts.columns;
        format!(
            "SELECT rowid, {cols} FROM {t} WHERE {task} = ?1 AND {status} = ?2 AND rowid > ?3 \
             ORDER BY rowid LIMIT ?4",
            cols = self.item_columns(),
            t = c.table.quoted(),
            task = c.task.quoted(),
            status = c.status.quoted(),
        )
    }

    fn task_value(&self) -> Value {
        let task = &self.opts.task;
        bind_value(task, task.parse().ok(), self.shape.task_is_int)
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
                reap_dead_owners(&self.conn, &self.opts)?;
                self.swept = true;
                self.last_rowid = i64::MIN;
                continue;
            }
            return Ok(items);
        }
    }

    fn claim_keyset(&mut self, n: usize) -> Result<Vec<Item>> {
        let sql = self.claim_sql();
        let task = self.task_value();
        let failed = status_value(&self.opts.failed, self.shape.status_is_int);
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

    fn save(&mut self, batch: &[Verdict]) -> Result<()> {
        if self.opts.read_only || batch.is_empty() {
            return Ok(());
        }
        let s = &self.shape;
        let c = &self.opts.columns;
        // One statement shape for the whole batch: status is set only when a value is
        // bound (NULL means "leave it"), bookkeeping only where the table has the column.
        // rowid is ?7, the highest number, so the statement always takes all 7 parameters
        // whichever optional columns it uses.
        let mut sets = vec![format!(
            "{st} = CASE WHEN ?1 IS NULL THEN {st} ELSE ?1 END",
            st = c.status.quoted()
        )];
        if s.has_http_status {
            sets.push("http_status = ?2".into());
        }
        if s.has_attempts {
            sets.push("attempts = COALESCE(attempts, 0) + ?3".into());
        }
        if s.has_last_error {
            sets.push("last_error = ?4".into());
        }
        if s.has_checked_at {
            sets.push("checked_at = ?5".into());
        }
        if self.leasing {
            // Both CASEs see the old lease_owner. Someone else's lease (ours expired and was
            // taken over) is theirs to clear.
            sets.push(
                "lease_owner = CASE WHEN lease_owner = ?6 THEN NULL ELSE lease_owner END".into(),
            );
            sets.push(
                "lease_until = CASE WHEN lease_owner = ?6 THEN NULL ELSE lease_until END".into(),
            );
        }
        let sql = format!(
            "UPDATE {t} SET {sets} WHERE rowid = ?7",
            t = c.table.quoted(),
            sets = sets.join(", ")
        );
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .with_context(|| format!("{}: cannot start a write", self.name))?;
        {
            let mut stmt = tx.prepare_cached(&sql)?;
            for v in batch {
                let status = self
                    .opts
                    .status_for(v.outcome)
                    .map(|sv| status_value(sv, s.status_is_int))
                    .unwrap_or(Value::Null);
                stmt.execute(rusqlite::params![
                    status,
                    v.http_status.map(i64::from),
                    i64::from(v.attempts),
                    v.error,
                    rfc3339(v.checked_at),
                    self.opts.owner,
                    v.key,
                ])
                .with_context(|| format!("{}: cannot save item {:?}", self.name, v.id))?;
            }
        }
        tx.commit()
            .with_context(|| format!("{}: cannot commit results", self.name))?;
        Ok(())
    }

    fn pending(&self) -> Result<u64> {
        let c = &self.opts.columns;
        let sql = format!(
            "SELECT COUNT(*) FROM {t} WHERE {task} = ?1 AND {status} = ?2",
            t = c.table.quoted(),
            task = c.task.quoted(),
            status = c.status.quoted(),
        );
        let failed = status_value(&self.opts.failed, self.shape.status_is_int);
        let n: i64 =
            self.conn
                .query_row(&sql, rusqlite::params![self.task_value(), failed], |r| {
                    r.get(0)
                })?;
        Ok(n.max(0) as u64)
    }

    fn status_counts(&self) -> Result<StatusCounts> {
        let c = &self.opts.columns;
        let sql = format!(
            "SELECT {st}, COUNT(*) FROM {t} WHERE {task} = ?1 GROUP BY {st}",
            st = c.status.quoted(),
            t = c.table.quoted(),
            task = c.task.quoted()
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
        counts.sort();
        let (oldest, newest) = if self.shape.has_checked_at {
            let sql = format!(
                "SELECT MIN(checked_at), MAX(checked_at) FROM {t} WHERE {task} = ?1",
                t = c.table.quoted(),
                task = c.task.quoted()
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

    fn import(&mut self, items: &[NewItem]) -> Result<u64> {
        let c = self.opts.columns.clone();
        let t = c.table.quoted();
        let failed = status_value(&self.opts.failed, self.shape.status_is_int);
        let task = self.task_value();
        let has_url = self.shape.has_url;
        let url_set = if has_url {
            format!(", {u} = COALESCE(?2, {u})", u = c.url.quoted())
        } else {
            String::new()
        };
        let update = format!(
            "UPDATE {t} SET {st} = ?1{url_set} WHERE {task} = ?3 AND {id} = ?4",
            st = c.status.quoted(),
            task = c.task.quoted(),
            id = c.id.quoted(),
        );
        let insert = if has_url {
            format!(
                "INSERT INTO {t} ({task}, {id}, {st}, {u}) VALUES (?1, ?2, ?3, ?4)",
                task = c.task.quoted(),
                id = c.id.quoted(),
                st = c.status.quoted(),
                u = c.url.quoted()
            )
        } else {
            format!(
                "INSERT INTO {t} ({task}, {id}, {st}) VALUES (?1, ?2, ?3)",
                task = c.task.quoted(),
                id = c.id.quoted(),
                st = c.status.quoted(),
            )
        };
        if !has_url && items.iter().any(|i| i.url.is_some()) {
            bail!(
                "{}: table {} has no {} column for the imported urls",
                self.name,
                c.table,
                c.url
            );
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut written = 0u64;
        {
            let mut up = tx.prepare_cached(&update)?;
            let mut ins = tx.prepare_cached(&insert)?;
            for item in items {
                let changed = up.execute(rusqlite::params![failed, item.url, task, item.id])?;
                if changed == 0 {
                    if has_url {
                        ins.execute(rusqlite::params![task, item.id, failed, item.url])?;
                    } else {
                        ins.execute(rusqlite::params![task, item.id, failed])?;
                    }
                }
                written += 1;
            }
        }
        tx.commit()
            .with_context(|| format!("{}: cannot commit the import", self.name))?;
        Ok(written)
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
/// crashed): their items need not wait for the lease to expire.
fn reap_dead_owners(conn: &Connection, opts: &StoreOptions) -> Result<()> {
    let c = &opts.columns;
    let owners: Vec<String> = conn
        .prepare(&format!(
            "SELECT DISTINCT lease_owner FROM {t} WHERE {task} = ?1 AND lease_owner IS NOT NULL",
            t = c.table.quoted(),
            task = c.task.quoted(),
        ))?
        .query_map([&opts.task], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    let free = format!(
        "UPDATE {t} SET lease_owner = NULL, lease_until = NULL WHERE {task} = ?1 AND lease_owner = ?2",
        t = c.table.quoted(),
        task = c.task.quoted(),
    );
    for owner in owners.iter().filter(|o| super::owner_is_dead_here(o)) {
        let n = conn.execute(&free, rusqlite::params![opts.task, owner])?;
        tracing::info!(owner = %owner, items = n, "took over the claims of a worker that is gone");
    }
    Ok(())
}

/// When this round of checks started: this worker's start, or the start of the earliest
/// live worker on the task (read from its `lease_owner` name), so a worker joining a run
/// does not check again what the others already checked.
fn round_start(conn: &Connection, opts: &StoreOptions) -> Result<SystemTime> {
    let c = &opts.columns;
    let sql = format!(
        "SELECT DISTINCT lease_owner FROM {t} WHERE {task} = ?1 AND lease_owner IS NOT NULL AND lease_until >= ?2",
        t = c.table.quoted(),
        task = c.task.quoted(),
    );
    let task = &opts.task;
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

/// Reads the table's columns and checks the ones the run needs.
fn inspect(conn: &Connection, name: &str, opts: &StoreOptions) -> Result<Shape> {
    let c = &opts.columns;
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", c.table.quoted()))?;
    let cols: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let cols = TableColumns::new(name, &c.table, cols);
    let (task_t, _, status_t) = cols.check_run(opts)?;
    Ok(Shape {
        status_is_int: is_numeric_affinity(status_t),
        task_is_int: is_numeric_affinity(task_t),
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

    async fn save(&self, batch: Vec<Verdict>) -> Result<super::Saved> {
        self.with(move |i| i.save(&batch))
            .await
            .map(|()| super::Saved::default())
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
                // failure is harmless, the WAL stays valid.
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

    async fn import(&self, items: Vec<NewItem>, _reset: bool) -> Result<super::ImportCounts> {
        self.with(move |i| i.import(&items))
            .await
            .map(|added| super::ImportCounts {
                added,
                ..Default::default()
            })
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

    fn verdict(key: i64, outcome: Outcome) -> Verdict {
        Verdict {
            key,
            id: key.to_string(),
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
        assert!(is_numeric_affinity("INTEGER"));
        assert!(is_numeric_affinity("tinyint"));
        assert!(is_numeric_affinity("NUMERIC"));
        assert!(is_numeric_affinity("BOOLEAN"));
        assert!(!is_numeric_affinity("TEXT"));
        assert!(!is_numeric_affinity("VARCHAR(20)"));
        assert!(!is_numeric_affinity(""));
        assert!(!is_numeric_affinity("REAL"));
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
                verdict(page1[0].key, Outcome::Ok),
                verdict(page1[1].key, Outcome::Error),
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
