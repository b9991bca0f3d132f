//! The SQLite backend of the SQL protocol: a file (the embedded default), one connection
//! behind an async mutex, every statement on the blocking pool so async workers never wait
//! on disk. Knows SQLite's spelling and catalog, nothing of claims or leases.
//!
//! # What a run may change in the file
//!
//! Nothing before the store is accepted: the file is checked (`quick_check` reads every
//! page, so a damaged page is refused), the table, every column and every value the run
//! binds, on a connection that has written nothing. A run never creates a store (a missing
//! file is a mistyped path, exit 2) and never changes the file's journal mode: batched
//! transactions make WAL unnecessary for speed, so a file recheck did not create keeps the
//! mode it had. `import` and `init` create new files in WAL mode (so `recheck status` can
//! read while a run writes). `status` and `--dry-run` open the file so that it cannot be
//! written (`query_only`) and leave no `-wal`/`-shm` behind.
//!
//! Rows are found by `rowid`, and a save also compares the task, the id (as text) and the
//! status, so a row the pipeline deleted and replaced while its check was in flight (SQLite
//! reuses rowids) is not mistaken for the claimed one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::protocol::SchemaType;
use super::{Backend, Col, Kind, Row, TimeKind, Tx, Val};
use crate::model::rfc3339;
use crate::store::lock::LockFile;
use crate::store::{Ident, OpenMode};

/// How long a statement waits for another process's lock before it fails with `BUSY`
/// (which the sink retries: see `store::is_transient`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Prepared statements kept: the run's statement shapes (pages, claims, saves by size).
const STATEMENT_CACHE: usize = 64;

/// A SQLite file.
pub struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// `sqlite:PATH`, for messages.
    name: String,
    read_only: bool,
}

impl SqliteDb {
    /// Opens the file for `mode`: `run` and `status` need it to exist, `import`/`init`
    /// create it (in WAL mode). A reader's connection can write nothing.
    pub async fn open(path: &Path, mode: OpenMode, read_only: bool) -> Result<SqliteDb> {
        let path = path.to_path_buf();
        let name = format!("sqlite:{}", path.display());
        let shown = path.display().to_string();
        let conn = tokio::task::spawn_blocking(move || -> Result<(Connection, PathBuf)> {
            let exists = path.exists();
            match (exists, mode) {
                (false, OpenMode::Status) => bail!("{shown}: no such store"),
                // A mistyped path must not pass as "nothing to check".
                (false, OpenMode::Run) => {
                    bail!("{shown}: no such store (`recheck import` or `recheck init` creates one)")
                }
                _ => {}
            }
            let conn = open_conn(&path, read_only)?;
            check_is_database(&conn, &shown)?;
            if !exists {
                conn.pragma_update(None, "journal_mode", "WAL")
                    .with_context(|| format!("{shown}: cannot switch to WAL"))?;
            }
            if !read_only {
                // Durable at each commit in WAL mode with NORMAL; other journal modes keep
                // SQLite's default (FULL).
                let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                if journal.eq_ignore_ascii_case("wal") {
                    conn.pragma_update(None, "synchronous", "NORMAL")?;
                }
            }
            Ok((conn, path))
        })
        .await
        .context("SQLite open task failed")??;
        let (conn, path) = conn;
        Ok(SqliteDb {
            conn: Arc::new(Mutex::new(conn)),
            path,
            name,
            read_only,
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let guard = Arc::clone(&self.conn).lock_owned().await;
        tokio::task::spawn_blocking(move || f(&guard))
            .await
            .context("SQLite task failed")?
    }
}

/// Opens the file. A reader opens it read-write when the file allows it but with
/// `query_only`: a read-only SQLite connection to a WAL file leaves `-wal`/`-shm` behind,
/// while the last read-write connection to close removes them.
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
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Fails with a readable message when the file is not a SQLite database, or a damaged one.
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

/// A column's kind by SQLite's affinity rules (§3.1 of its datatype docs).
fn kind_of(decl: &str) -> Kind {
    let d = decl.to_ascii_uppercase();
    if d.contains("INT") {
        Kind::Int
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Kind::Text
    } else if d.contains("BLOB") || d.trim().is_empty() {
        Kind::Untyped
    } else {
        Kind::Num
    }
}

fn value_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

fn to_value(v: Val) -> Value {
    match v {
        Val::Null | Val::NullTime(_) => Value::Null,
        Val::Int(n) => Value::Integer(n),
        Val::Text(s) => Value::Text(s),
        Val::Time(t, _) => Value::Text(rfc3339(t)),
    }
}

/// A transaction on the file's connection, which it holds until it ends.
pub struct SqliteTx {
    conn: Option<OwnedMutexGuard<Connection>>,
    open: bool,
}

impl SqliteTx {
    async fn run<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| anyhow!("SQLite connection lost by an earlier failure"))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            (conn, r)
        })
        .await
        .context("SQLite task failed")?;
        self.conn = Some(conn);
        Ok(result?)
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open
            && let Some(conn) = &self.conn
            && !conn.is_autocommit()
        {
            // Local and quick: the transaction's changes are only in this process.
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

impl Tx for SqliteTx {
    async fn query(&mut self, sql: String, args: Vec<Val>) -> Result<Vec<Row>> {
        self.run(move |c| {
            let mut st = c.prepare_cached(&sql)?;
            let n = st.column_count();
            let args: Vec<Value> = args.into_iter().map(to_value).collect();
            let mut rows = st.query(rusqlite::params_from_iter(args))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(
                    (0..n)
                        .map(|i| r.get_ref(i).map(value_text))
                        .collect::<rusqlite::Result<Row>>()?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn exec(&mut self, sql: String, args: Vec<Val>) -> Result<u64> {
        self.run(move |c| {
            let args: Vec<Value> = args.into_iter().map(to_value).collect();
            if args.is_empty() {
                // DDL (init) is not worth a cached statement.
                return c.execute(&sql, []).map(|n| n as u64);
            }
            c.prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(args))
                .map(|n| n as u64)
        })
        .await
    }

    async fn exec_rows<F>(&mut self, sql: String, n: usize, mut row: F) -> Result<Vec<u64>>
    where
        F: FnMut(usize) -> Vec<Val> + Send + 'static,
    {
        // One trip to the blocking pool for every row, where the rows' values are made too:
        // SQLite has no round trip to save, and the thread running the checks is spared.
        self.run(move |c| {
            let mut st = c.prepare_cached(&sql)?;
            (0..n)
                .map(|i| {
                    st.execute(rusqlite::params_from_iter(row(i).into_iter().map(to_value)))
                        .map(|n| n as u64)
                })
                .collect()
        })
        .await
    }

    async fn commit(mut self) -> Result<()> {
        self.run(|c| c.execute_batch("COMMIT")).await?;
        self.open = false;
        Ok(())
    }
}

impl SqliteDb {
    async fn start(&self, sql: &'static str) -> Result<SqliteTx> {
        let conn = Arc::clone(&self.conn).lock_owned().await;
        let mut tx = SqliteTx {
            conn: Some(conn),
            open: false,
        };
        tx.run(move |c| {
            if !c.is_autocommit() {
                // Left open by a task that was cut off: nothing of it was committed.
                c.execute_batch("ROLLBACK")?;
            }
            c.execute_batch(sql)
        })
        .await
        .with_context(|| format!("{}: cannot start a transaction", self.name))?;
        tx.open = true;
        Ok(tx)
    }
}

impl Backend for SqliteDb {
    type Tx = SqliteTx;
    type Lock = LockFile;

    fn name(&self) -> &str {
        &self.name
    }

    async fn begin(&self) -> Result<SqliteTx> {
        self.start("BEGIN IMMEDIATE").await
    }

    async fn begin_read(&self) -> Result<SqliteTx> {
        self.start("BEGIN").await
    }

    async fn finish(&self) {
        if !self.read_only {
            // Fold the WAL back so the file alone holds everything (nice for copies);
            // failure is harmless, the WAL stays valid. A no-op in other journal modes.
            let _ = self
                .with(|c| Ok(c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?))
                .await;
        }
    }

    async fn columns(&self, table: &Ident) -> Result<Option<(Ident, Vec<Col>)>> {
        let (table, name) = (table.clone(), self.name.clone());
        self.with(move |c| {
            let found: Option<(String, String)> = c
                .query_row(
                    "SELECT type, name FROM sqlite_master WHERE type IN ('table','view') AND name = ?1 COLLATE NOCASE",
                    [table.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((kind, spelled)) = found else {
                return Ok(None);
            };
            if kind != "table" {
                bail!("{name}: {table} is a {kind}, not a table recheck can write");
            }
            let spelled = Ident::new("--table", &spelled)?;
            let mut st = c.prepare(&format!("PRAGMA table_info({})", spelled.quoted()))?;
            let cols = st
                .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter_map(|(n, t)| {
                    Some(Col {
                        name: Ident::new("column", &n).ok()?,
                        kind: kind_of(&t),
                        // Any column can hold RFC 3339 text.
                        time: Some(TimeKind::Text),
                        type_name: t,
                    })
                })
                .collect();
            Ok(Some((spelled, cols)))
        })
        .await
    }

    async fn tables(&self) -> Vec<String> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )?;
            let names = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(names)
        })
        .await
        .unwrap_or_default()
    }

    async fn try_lock(&self, table: &str, _task: &str) -> Result<Option<LockFile>> {
        // The lock file names the holder; its message is better than a generic one.
        LockFile::acquire(
            &self.path,
            &format!("{} (table {table} has no lease columns)", self.name),
        )
        .map(Some)
    }

    async fn unlock(&self, lock: LockFile) {
        drop(lock);
    }

    fn placeholder(&self, out: &mut String, n: usize, _v: &Val, _kind: Kind) {
        out.push('?');
        crate::model::push_decimal(out, n as u64);
    }

    fn row_statements(&self) -> bool {
        true
    }

    fn by_key(&self, table_sql: &str) -> String {
        // No index: rows are looked up by rowid, which NOT INDEXED still allows.
        format!("{table_sql} NOT INDEXED")
    }

    fn quote(&self, ident: &str) -> String {
        format!("\"{ident}\"")
    }

    fn text(&self, e: &str) -> String {
        format!("CAST({e} AS TEXT)")
    }

    fn time_text(&self, e: &str, _kind: TimeKind) -> String {
        e.to_string()
    }

    fn now(&self, _kind: TimeKind) -> Option<String> {
        None
    }

    fn now_plus_ms(&self, _kind: TimeKind, _ms: &str) -> Option<String> {
        None
    }

    fn for_update(&self, _skip_locked: bool) -> &'static str {
        ""
    }

    fn rowid(&self) -> Option<&'static str> {
        Some("rowid")
    }

    fn column_type(&self, column: SchemaType) -> &'static str {
        match column {
            SchemaType::Int => "INTEGER",
            _ => "TEXT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity() {
        for (decl, want) in [
            ("INTEGER", Kind::Int),
            ("tinyint", Kind::Int),
            ("NUMERIC", Kind::Num),
            ("BOOLEAN", Kind::Num),
            ("REAL", Kind::Num),
            ("TEXT", Kind::Text),
            ("VARCHAR(20)", Kind::Text),
            ("", Kind::Untyped),
            ("BLOB", Kind::Untyped),
        ] {
            assert_eq!(kind_of(decl), want, "{decl}");
        }
        assert_eq!(Kind::Untyped.val("5"), Ok(Val::Int(5)));
        assert_eq!(Kind::Text.val("5"), Ok(Val::Text("5".into())));
        assert_eq!(Kind::Int.val("05"), Err("integer"));
        assert!(Kind::Num.val("failed").is_err());
        assert!(Kind::Num.val("5.5").is_ok());
    }
}
