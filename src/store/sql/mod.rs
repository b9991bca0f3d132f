//! Store backends on SQL: one claim-and-write protocol ([`protocol`]) over a small layer
//! that each server implements ([`Backend`]: its connection, its catalog, its SQL
//! spelling). SQLite, PostgreSQL and MySQL/MariaDB differ only in that layer; what a claim,
//! a lease, a takeover, a save (compare-and-set), an import or `init` does is written once.
//!
//! | | SQLite | PostgreSQL | MySQL / MariaDB |
//! | --- | --- | --- | --- |
//! | placeholders | `?N` | `$N::type` | `?` |
//! | row key | `rowid` (+ task, id) | task, id | task, id |
//! | claim lock | `BEGIN IMMEDIATE` | `FOR UPDATE SKIP LOCKED` | `FOR UPDATE SKIP LOCKED` (10.6+/8.0), else `FOR UPDATE` |
//! | times | RFC 3339 text | timestamptz, timestamp or text | DATETIME/TIMESTAMP or text |
//! | one run per task without lease columns | lock file | `pg_try_advisory_lock` | `GET_LOCK` |

pub mod mysql;
pub mod postgres;
pub mod protocol;
pub mod sqlite;

use std::future::Future;
use std::time::SystemTime;

use anyhow::Result;

pub use protocol::SqlStore;

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// A point in time, bound the way its [`TimeKind`] says.
    Time(SystemTime, TimeKind),
    /// NULL for a time column of that kind: typed like [`Val::Time`], so that it can stand
    /// next to times in one `CASE`.
    NullTime(TimeKind),
}

/// One result row, every column as text (`None` for NULL).
pub type Row = Vec<Option<String>>;

/// How a column's values compare with bound values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An integer column: integer-looking values are bound as integers, anything else is
    /// refused at open (MySQL would compare `'failed'` as 0, PostgreSQL would fail).
    Int,
    /// Other numbers (decimal, real): bound as text, compared as the server converts.
    Num,
    /// Text.
    Text,
    /// No declared type (SQLite): a value may be stored as `5` or `'5'`; both match.
    Untyped,
    /// Anything else (PostgreSQL enums, uuid...): compared through its text form.
    Other,
}

impl Kind {
    /// The value for a column of this kind, or what it would have to be (`integer`,
    /// `number`).
    pub fn val(self, text: &str) -> std::result::Result<Val, &'static str> {
        let as_int = crate::model::canonical_int(text);
        match (self, as_int) {
            (Kind::Int | Kind::Untyped, Some(n)) => Ok(Val::Int(n)),
            (Kind::Int, None) => Err("integer"),
            (Kind::Num, _) if text.trim().parse::<f64>().is_err() => Err("number"),
            _ => Ok(Val::Text(text.to_string())),
        }
    }
}

/// How a time column holds its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    /// A time type with a zone (PostgreSQL timestamptz).
    Zoned,
    /// A time type without a zone, read and written as UTC (timestamp, DATETIME).
    Naive,
    /// RFC 3339 UTC text with milliseconds (`2026-01-02T03:04:05.678Z`), which sorts as
    /// text.
    Text,
}

/// A column of the table, as the catalog names it.
#[derive(Debug, Clone)]
pub struct Col {
    /// The name as the table spells it.
    pub name: crate::store::Ident,
    /// The backend's type name, for messages.
    pub type_name: String,
    /// How values compare.
    pub kind: Kind,
    /// How times are held, when the type can hold one.
    pub time: Option<TimeKind>,
}

/// A statement being built: its text and the values bound to it, in order. Placeholders
/// come from [`Backend::placeholder`], so one builder serves `?N`, `$N` and `?`.
///
/// A builder made by [`Sql::args_only`] collects the values and no text: a statement
/// whose text is already known (the same write for the next row) costs its values only.
pub struct Sql<'b, B: Backend> {
    backend: &'b B,
    /// The statement's text so far (empty for an [`Sql::args_only`] builder).
    pub text: String,
    /// The bound values, in placeholder order.
    pub args: Vec<Val>,
    with_text: bool,
}

impl<'b, B: Backend> Sql<'b, B> {
    /// An empty statement.
    pub fn new(backend: &'b B) -> Self {
        Sql {
            backend,
            text: String::with_capacity(256),
            args: Vec::new(),
            with_text: true,
        }
    }

    /// A builder that keeps the bound values only, for a statement whose text was built
    /// before by the same code (valid where placeholders do not depend on the values:
    /// [`Backend::row_statements`]).
    pub fn args_only(backend: &'b B) -> Self {
        Sql {
            backend,
            text: String::new(),
            // A row's write binds about a dozen values.
            args: Vec::with_capacity(16),
            with_text: false,
        }
    }

    /// Whether this builder writes text (see [`Sql::args_only`]).
    pub fn with_text(&self) -> bool {
        self.with_text
    }

    /// Appends text.
    pub fn push(&mut self, s: &str) -> &mut Self {
        if self.with_text {
            self.text.push_str(s);
        }
        self
    }

    /// Appends the text `f` makes, only when this builder writes text.
    pub fn push_with(&mut self, f: impl FnOnce() -> String) -> &mut Self {
        if self.with_text {
            self.text.push_str(&f());
        }
        self
    }

    /// Appends a placeholder for `v` (a value for a column of kind `kind`).
    pub fn bind(&mut self, v: Val, kind: Kind) -> &mut Self {
        // Written straight into the text: a save binds about ten values per row, and a
        // `String` per placeholder was a measurable part of the CPU per check.
        if self.with_text {
            self.backend
                .placeholder(&mut self.text, self.args.len() + 1, &v, kind);
        }
        self.args.push(v);
        self
    }

    /// Appends `col = value` as the column compares (both forms for untyped columns).
    pub fn eq(&mut self, col_sql: &str, col: &Col, v: &Val) -> &mut Self {
        if col.kind == Kind::Untyped {
            self.push("(").push(col_sql).push(" = ");
            self.bind(v.clone(), col.kind);
            self.push(" OR ").push(col_sql).push(" = ");
            let text = match v {
                Val::Int(n) => Val::Text(n.to_string()),
                other => other.clone(),
            };
            self.bind(text, Kind::Text);
            self.push(")")
        } else {
            let backend = self.backend;
            self.push_with(|| backend.compare_expr(col_sql, col))
                .push(" = ");
            self.bind(v.clone(), col.kind)
        }
    }

    /// The finished statement.
    pub fn done(self) -> (String, Vec<Val>) {
        (self.text, self.args)
    }
}

/// A transaction on one connection. Dropped without [`Tx::commit`], it rolls back.
pub trait Tx: Send {
    /// Runs a query and returns its rows.
    fn query(
        &mut self,
        sql: String,
        args: Vec<Val>,
    ) -> impl Future<Output = Result<Vec<Row>>> + Send;
    /// Runs a statement and returns the rows it changed (matched, on MySQL).
    fn exec(&mut self, sql: String, args: Vec<Val>) -> impl Future<Output = Result<u64>> + Send;
    /// Runs one statement `n` times, with the values `row(i)` makes for run `i`, in order,
    /// and returns the rows each run changed. The default makes the values here and runs
    /// the statements one by one; a backend without round trips makes and runs them all
    /// in one go where its statements run.
    fn exec_rows<F>(
        &mut self,
        sql: String,
        n: usize,
        mut row: F,
    ) -> impl Future<Output = Result<Vec<u64>>> + Send
    where
        F: FnMut(usize) -> Vec<Val> + Send + 'static,
    {
        async move {
            let mut changed = Vec::with_capacity(n);
            for i in 0..n {
                changed.push(self.exec(sql.clone(), row(i)).await?);
            }
            Ok(changed)
        }
    }
    /// Makes the transaction's changes durable.
    fn commit(self) -> impl Future<Output = Result<()>> + Send;
}

/// What one SQL server brings to the protocol: a connection, its catalog and its SQL
/// spelling. Nothing here knows what a claim or a lease is.
pub trait Backend: Send + Sync + Sized + 'static {
    /// A transaction of this backend.
    type Tx: Tx + 'static;
    /// A held "one run per task" lock; released when dropped or by [`Backend::unlock`].
    type Lock: Send + 'static;

    /// The store as shown in messages (password redacted).
    fn name(&self) -> &str;
    /// Starts a transaction that will write (`BEGIN IMMEDIATE` on SQLite: a writer from
    /// the start, so it never fails half-way for another writer).
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;
    /// Starts a transaction that only reads.
    fn begin_read(&self) -> impl Future<Output = Result<Self::Tx>> + Send;
    /// The end of a run: whatever the backend tidies (SQLite folds its WAL back).
    fn finish(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The columns of `table` (name, type), or `None` when there is no such table; the
    /// table's name as the catalog spells it.
    fn columns(
        &self,
        table: &crate::store::Ident,
    ) -> impl Future<Output = Result<Option<(crate::store::Ident, Vec<Col>)>>> + Send;
    /// A few table names, for "table not found" messages.
    fn tables(&self) -> impl Future<Output = Vec<String>> + Send;
    /// Takes the task's lock without waiting (`Ok(None)`: someone else holds it).
    fn try_lock(
        &self,
        table: &str,
        task: &str,
    ) -> impl Future<Output = Result<Option<Self::Lock>>> + Send;
    /// Gives the lock back.
    fn unlock(&self, lock: Self::Lock) -> impl Future<Output = ()> + Send;
    /// Keeps a held lock alive (called with every lease renewal).
    fn keep_alive(&self, lock: &mut Self::Lock) -> impl Future<Output = Result<()>> + Send {
        let _ = lock;
        async { Ok(()) }
    }

    /// Appends to `out` the placeholder for the `n`th bound value (1-based), cast for a
    /// column of `kind`.
    fn placeholder(&self, out: &mut String, n: usize, v: &Val, kind: Kind);
    /// Whether a statement costs no round trip and its placeholders depend only on their
    /// position (SQLite): then a save writes each row with its own compare-and-set
    /// `UPDATE` (one text, its values per row), instead of locking a chunk's rows and
    /// writing them with one `CASE` per column, which is what servers need to save round
    /// trips but makes SQLite compare every row's key with every `WHEN`.
    fn row_statements(&self) -> bool {
        false
    }
    /// The (quoted) table in a statement that finds rows by their key list.
    fn by_key(&self, table_sql: &str) -> String {
        table_sql.to_string()
    }
    /// An identifier, quoted.
    fn quote(&self, ident: &str) -> String;
    /// A column (already quoted) as compared with a bound value of its kind.
    fn compare_expr(&self, col_sql: &str, col: &Col) -> String {
        let _ = col;
        col_sql.to_string()
    }
    /// An expression as text (`CAST(e AS TEXT)`, `e::text`, `CAST(e AS CHAR)`).
    fn text(&self, e: &str) -> String;
    /// A time expression of `kind` as RFC 3339 text.
    fn time_text(&self, e: &str, kind: TimeKind) -> String;
    /// "Now" in a time column of `kind`, from the database's clock where it has one (so
    /// workers whose clocks disagree still agree on whose lease has ended).
    fn now(&self, kind: TimeKind) -> Option<String>;
    /// "Now plus `ms` milliseconds" in a time column of `kind` (`None`: bind the time).
    fn now_plus_ms(&self, kind: TimeKind, ms_placeholder: &str) -> Option<String>;
    /// What follows a `SELECT` to lock the rows it returns (` FOR UPDATE`), skipping rows
    /// another claimer holds when `skip_locked` and the server can; empty on SQLite, whose
    /// write transaction already excludes other writers.
    fn for_update(&self, skip_locked: bool) -> &'static str;
    /// The key the keyset walks and the save finds rows by: `rowid` on SQLite, else the id
    /// column (rows are then keyed by task and id).
    fn rowid(&self) -> Option<&'static str> {
        None
    }
    /// Declarations of the default schema's columns (docs/reference.md §2.2) and what `init` adds.
    fn column_type(&self, column: crate::store::sql::protocol::SchemaType) -> &'static str;
    /// Whether `e` is a deadlock or lock wait after which the transaction may simply run
    /// again.
    fn retry_tx(&self, e: &anyhow::Error) -> bool {
        e.chain().any(|c| {
            c.downcast_ref::<crate::store::ServerError>()
                .is_some_and(|s| s.rolled_back)
        })
    }
}
