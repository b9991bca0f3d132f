//! The claim-and-write protocol of every SQL store, written once over a [`Backend`].
//!
//! # How workers share a task
//!
//! - **Claim.** In one transaction: select the next page of the task's failed items after
//!   this worker's keyset cursor that no live worker holds (`lease_owner` NULL, or
//!   `lease_until` past) and that nobody checked in this round, locking them (`FOR UPDATE
//!   SKIP LOCKED`, or SQLite's single writer), then lease them: `lease_owner` = this
//!   worker, `lease_until` = now + `--lease` (the database's clock where it has one).
//!   "Checked in this round" is a `checked_at` between the round's start and now; any other
//!   value (older, in the future, text that is no time at all) leaves the item claimable,
//!   so the claim never depends on parsing other people's text.
//! - **Renew / release.** The leases this worker holds on items it has not saved are
//!   extended three times per lease, and given back at the end (a stop, a limit). The
//!   claim runs on a task of its own, so a stop cannot cut it off between the commit and
//!   the bookkeeping of what this worker holds.
//! - **Takeover.** When a pass runs dry, the worker frees the leases of dead workers of
//!   its own host on the task (whatever the rows' status: a lease means nothing once its
//!   owner is gone) and sweeps once more from the start. An expired lease is free anyway.
//! - **Save (compare-and-set).** In one transaction, per chunk: lock the rows that are
//!   still as claimed (task, key, id, the failed status and, with leases, this worker's
//!   lease), then write only those. A row the pipeline changed, deleted or replaced, or
//!   that another worker took over, keeps that change; the verdict is a conflict.
//! - **Without lease columns** a table cannot share work: one run per task holds the
//!   backend's task lock, and a second one fails fast.
//!
//! # Resolved one way for every backend
//!
//! - `import` never leases; it inserts new ids and leaves existing ones (`--reset` sets
//!   them back to failed).
//! - The dead-worker sweep frees every row of the task the dead worker held, any status.
//! - A status (or task) value that an integer column cannot hold is refused at open
//!   (exit 2), never silently matched against nothing.
//! - `init` creates the default schema, or adds the bookkeeping, lease and schedule
//!   columns an existing table lacks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use super::{Backend, Col, Kind, Row, Sql, TimeKind, Tx, Val};
use crate::model::{Item, StatusValue, Verdict, parse_time};
use crate::store::{
    Ident, ImportCounts, NewItem, OpenMode, Saved, StatusCounts, Store, StoreOptions,
};

/// Rows per save statement (a batch of 1000 verdicts is ten chunks in one transaction).
const SAVE_CHUNK: usize = 100;
/// Most keys in one `IN (...)` list (claims, renewals, releases, imports).
const IN_CHUNK: usize = 500;
/// Statement sizes: a short list is padded (its last entry repeated) up to the next of
/// these, so a run prepares a handful of statement shapes, not one per length.
const SHAPES: [usize; 4] = [1, 10, 100, 500];
/// Attempts of a transaction that hits a deadlock or a lock wait timeout.
const TX_ATTEMPTS: u32 = 6;

/// Column types of the default schema, spelled by each backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaType {
    /// task and item ids (part of the primary key).
    Key,
    /// The status.
    Status,
    /// Free text (url, last_error).
    Text,
    /// An integer (http_status, attempts, checks).
    Int,
    /// A point in time.
    Time,
    /// A worker's name.
    Owner,
}

/// The default schema (docs/reference.md §2.2): name, type, NOT NULL default. The first
/// four are the mapped core columns.
const SCHEMA: [(&str, SchemaType, &str); 13] = [
    ("task_id", SchemaType::Key, "NOT NULL"),
    ("item_id", SchemaType::Key, "NOT NULL"),
    ("status", SchemaType::Status, "NOT NULL"),
    ("url", SchemaType::Text, "NULL"),
    ("http_status", SchemaType::Int, "NULL"),
    ("attempts", SchemaType::Int, "NOT NULL DEFAULT 0"),
    ("last_error", SchemaType::Text, "NULL"),
    ("checked_at", SchemaType::Time, "NULL"),
    ("lease_owner", SchemaType::Owner, "NULL"),
    ("lease_until", SchemaType::Time, "NULL"),
    ("checks", SchemaType::Int, "NOT NULL DEFAULT 0"),
    ("first_checked_at", SchemaType::Time, "NULL"),
    ("next_check_at", SchemaType::Time, "NULL"),
];

/// A store on a SQL backend.
pub struct SqlStore<B: Backend> {
    inner: Arc<Inner<B>>,
}

struct Inner<B: Backend> {
    b: B,
    opts: StoreOptions,
    shape: Shape,
    /// Claims are leases shared with other workers (the table has the lease columns and
    /// the run writes).
    leasing: bool,
    /// Items checked at or after this time were checked in this round, by this worker or
    /// one running alongside it: they are not claimed again.
    since: SystemTime,
    /// The task and the failed status as the columns hold them.
    task: Val,
    failed: Val,
    /// Keyset position; held for the whole of a claim, so `finish` waits for one in flight.
    cursor: tokio::sync::Mutex<Cursor>,
    /// Keys this worker leased and has not saved yet (a few pages at most).
    held: StdMutex<HashSet<String>>,
    /// Keys this run deferred (an open circuit): not handed out again by the second pass
    /// over the task, where no `next_check_at` (or `--ignore-schedule`) keeps them out.
    deferred: StdMutex<HashSet<String>>,
    /// The task's lock, for tables without lease columns.
    lock: tokio::sync::Mutex<Option<B::Lock>>,
}

#[derive(Debug, Default)]
struct Cursor {
    /// The key of the last item handed out.
    last: Option<String>,
    /// The keyset pass has reached the end once and started over for abandoned claims.
    swept: bool,
}

/// The parts of the table recheck uses, found in the catalog at open.
#[derive(Debug, Clone)]
struct Shape {
    table: String,
    task: Col,
    id: Col,
    status: Col,
    /// The row key: `rowid` (SQLite) or the id column.
    key: Col,
    key_is_rowid: bool,
    url: Option<Col>,
    extras: Vec<Col>,
    http_status: Option<Col>,
    attempts: Option<Col>,
    last_error: Option<Col>,
    checked_at: Option<(Col, TimeKind)>,
    /// `lease_owner`, `lease_until` (with `checked_at`): workers can share the task.
    lease: Option<(Col, Col, TimeKind)>,
    /// The schedule across runs: `checks`, `first_checked_at`, `next_check_at`, each used
    /// where the table has it.
    checks: Option<Col>,
    first_checked_at: Option<(Col, TimeKind)>,
    next_check_at: Option<(Col, TimeKind)>,
}

fn held(m: &StdMutex<HashSet<String>>) -> MutexGuard<'_, HashSet<String>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The statement size a list of `n` entries is padded to.
fn shape_for(n: usize) -> usize {
    SHAPES.iter().copied().find(|&s| s >= n).unwrap_or(n)
}

fn int_of(row: &Row, i: usize) -> Result<i64> {
    row.get(i)
        .and_then(|v| v.as_deref())
        .unwrap_or("0")
        .parse::<f64>()
        .map(|f| f as i64)
        .map_err(|e| anyhow!("not a number in column {i}: {e}"))
}

/// Runs `f` again when the server rolled its transaction back for a deadlock or a lock
/// wait.
async fn retrying<B: Backend, T, F, Fut>(b: &B, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if attempt < TX_ATTEMPTS && b.retry_tx(&e) => {
                tracing::debug!("transaction retried after: {e:#}");
                let wait = 5u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_millis(wait + fastrand::u64(0..=wait))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// `recheck init`: creates the default schema in `table`, or adds the columns an existing
/// table lacks, and says what it ran.
pub async fn init<B: Backend>(b: &B, table: &Ident) -> Result<String> {
    let name = b.name().to_string();
    let Some((spelled, cols)) = b.columns(table).await? else {
        let stmts = create_statements(b, table, &crate::store::Columns::default())?;
        let mut tx = b.begin().await?;
        for s in stmts {
            tx.exec(s, Vec::new())
                .await
                .with_context(|| format!("{name}: cannot create table {table}"))?;
        }
        tx.commit()
            .await
            .with_context(|| format!("{name}: cannot create table {table}"))?;
        return Ok(format!("created table {table} in {name}"));
    };
    let has = |n: &str| cols.iter().any(|c| c.name.as_str().eq_ignore_ascii_case(n));
    let stmts: Vec<String> = SCHEMA[4..]
        .iter()
        .filter(|(n, _, _)| !has(n))
        .map(|(n, ty, null)| {
            format!(
                "ALTER TABLE {} ADD COLUMN {} {} {null}",
                b.quote(spelled.as_str()),
                b.quote(n),
                b.column_type(*ty)
            )
        })
        .collect();
    if stmts.is_empty() {
        return Ok(format!(
            "table {table} in {name} already has every column recheck uses"
        ));
    }
    let mut tx = b.begin().await?;
    for s in &stmts {
        tx.exec(s.clone(), Vec::new())
            .await
            .with_context(|| format!("{name}: cannot alter table {table}"))?;
    }
    tx.commit()
        .await
        .with_context(|| format!("{name}: cannot alter table {table}"))?;
    let mut msg = format!(
        "table {table} in {name} exists; added the columns recheck uses for bookkeeping, leases and the schedule:"
    );
    for s in &stmts {
        msg.push_str(&format!("\n{s};"));
    }
    Ok(msg)
}

/// `CREATE TABLE` (with the mapped names of the core columns) and its index.
fn create_statements<B: Backend>(
    b: &B,
    table: &Ident,
    c: &crate::store::Columns,
) -> Result<Vec<String>> {
    let names = [&c.task, &c.id, &c.status, &c.url];
    let cols: Vec<String> = SCHEMA
        .iter()
        .enumerate()
        .map(|(i, (n, ty, null))| {
            let n = names.get(i).map_or(*n, |c| c.as_str());
            format!("{} {} {null}", b.quote(n), b.column_type(*ty))
        })
        .collect();
    // MySQL allows 64 characters in an index name, PostgreSQL 63.
    let idx = format!("{}_task_status", table.as_str());
    let idx = Ident::new(
        "index",
        if idx.len() <= 60 {
            &idx
        } else {
            "recheck_task_status"
        },
    )?;
    Ok(vec![
        format!(
            "CREATE TABLE {} ({}, PRIMARY KEY ({}, {}))",
            b.quote(table.as_str()),
            cols.join(", "),
            b.quote(c.task.as_str()),
            b.quote(c.id.as_str())
        ),
        format!(
            "CREATE INDEX {} ON {} ({}, {})",
            b.quote(idx.as_str()),
            b.quote(table.as_str()),
            b.quote(c.task.as_str()),
            b.quote(c.status.as_str())
        ),
    ])
}

impl<B: Backend> SqlStore<B> {
    /// Checks the table, every column and every value the run binds, then prepares to
    /// serve the task. Nothing is written before that check.
    pub async fn open(b: B, opts: StoreOptions, mode: OpenMode) -> Result<SqlStore<B>> {
        let inner = Inner::open(b, opts, mode).await?;
        Ok(SqlStore {
            inner: Arc::new(inner),
        })
    }
}

impl<B: Backend> Inner<B> {
    async fn open(b: B, opts: StoreOptions, mode: OpenMode) -> Result<Inner<B>> {
        let name = b.name().to_string();
        let c = &opts.columns;
        let read_only = opts.read_only || mode == OpenMode::Status;
        let found = match b.columns(&c.table).await? {
            Some(found) => found,
            None => {
                let tables = b.tables().await;
                if mode == OpenMode::Create && tables.is_empty() {
                    // A new or empty database: `import` creates the schema.
                    let mut tx = b.begin().await?;
                    for s in create_statements(&b, &c.table, c)? {
                        tx.exec(s, Vec::new())
                            .await
                            .with_context(|| format!("{name}: cannot create table {}", c.table))?;
                    }
                    tx.commit().await?;
                    b.columns(&c.table)
                        .await?
                        .ok_or_else(|| anyhow!("{name}: table {} vanished", c.table))?
                } else {
                    let listed = match tables.len() {
                        0 => "the database has no tables".to_string(),
                        1..=20 => format!("tables: {}", tables.join(", ")),
                        _ => format!("tables: {}, ...", tables[..20].join(", ")),
                    };
                    bail!(
                        "{name}: table {} not found ({listed}); `recheck init --table {}` creates it",
                        c.table,
                        c.table
                    );
                }
            }
        };
        let shape = inspect(&b, &name, found, &opts)?;
        if mode == OpenMode::Run {
            for (col, flag) in &opts.schedule_columns {
                let has = match *col {
                    "checks" => shape.checks.is_some(),
                    "first_checked_at" => shape.first_checked_at.is_some(),
                    _ => shape.next_check_at.is_some(),
                };
                if !has {
                    bail!(
                        "{name}: table {} has no column {col}, which {flag} needs; `recheck init \
                         --store {name} --table {}` adds the schedule's columns",
                        shape.table,
                        shape.table
                    );
                }
            }
        }
        let col_of = |col: &Col| format!("column {} of table {}", col.name, shape.table);
        let value = |flag: &str, col: &Col, v: &str| -> Result<Val> {
            col.kind.val(v).map_err(|what| {
                let article = if what == "integer" { "an" } else { "a" };
                anyhow!(
                    "{name}: {flag} {v:?} is not {article} {what}, but {} holds {what}s",
                    col_of(col)
                )
            })
        };
        let task = match value("--task", &shape.task, &opts.task) {
            // `status` of every task: no task is bound.
            Err(_) if mode == OpenMode::Status && opts.task.is_empty() => Val::Null,
            other => other?,
        };
        let failed = match value("--failed-status", &shape.status, opts.failed.as_str()) {
            // `status` counts every status and has no --failed-status: its default need
            // not fit an integer column (it is never used).
            Err(_) if mode == OpenMode::Status => Val::Null,
            other => other?,
        };
        if mode == OpenMode::Run {
            value("--ok-status", &shape.status, opts.ok.as_str())?;
            if let Some(nf) = &opts.not_found {
                value("--not-found-status", &shape.status, nf.as_str())?;
            }
            if let Some(dead) = &opts.dead {
                value("--dead-status", &shape.status, dead.as_str())?;
            }
        }
        let leasing = shape.lease.is_some() && !read_only && mode == OpenMode::Run;
        let inner = Inner {
            since: opts.started,
            b,
            opts,
            shape,
            leasing,
            task,
            failed,
            cursor: tokio::sync::Mutex::new(Cursor::default()),
            held: StdMutex::new(HashSet::new()),
            deferred: StdMutex::new(HashSet::new()),
            lock: tokio::sync::Mutex::new(None),
        };
        if mode == OpenMode::Run {
            // Every query of the run once, on nothing: a table the statements cannot use
            // (a view, WITHOUT ROWID, odd types) is a start-up error, not a mid-run one.
            let (sql, args) = inner.page_sql(0, None, SystemTime::now());
            inner.read(sql, args).await.with_context(|| {
                format!(
                    "{name}: table {} cannot be used as mapped",
                    inner.shape.table
                )
            })?;
            inner.check_task_exists().await?;
            inner.warn_null_ids().await?;
        }
        inner.start(mode, read_only).await
    }

    /// Takes the task's lock (tables without lease columns) or frees dead workers' leases
    /// and finds the round's start (tables with them).
    async fn start(mut self, mode: OpenMode, read_only: bool) -> Result<Inner<B>> {
        let name = self.b.name().to_string();
        if mode == OpenMode::Run && !read_only && self.shape.lease.is_none() {
            let lock = self.b.try_lock(&self.shape.table, &self.opts.task).await?;
            match lock {
                Some(l) => *self.lock.get_mut() = Some(l),
                None => bail!(
                    "{name}: another recheck run holds the task's lock (task {}; table {} has no \
                     lease columns, so one run at a time); add lease columns to share the work: \
                     recheck init --store {name} --table {}",
                    self.opts.task,
                    self.shape.table,
                    self.shape.table
                ),
            }
        }
        if self.leasing {
            self.since = self
                .reap_and_round_start()
                .await
                .with_context(|| format!("{name}: cannot free the leases of dead workers"))?;
        }
        Ok(self)
    }

    async fn read(&self, sql: String, args: Vec<Val>) -> Result<Vec<Row>> {
        let mut tx = self.b.begin_read().await?;
        let rows = tx.query(sql, args).await?;
        tx.commit().await?;
        Ok(rows)
    }

    fn sql(&self) -> Sql<'_, B> {
        Sql::new(&self.b)
    }

    fn q(&self, col: &Col) -> String {
        self.b.quote(col.name.as_str())
    }

    fn t(&self) -> String {
        self.b.quote(&self.shape.table)
    }

    /// The table in a statement that finds its rows by key (`key IN (...)`): SQLite must
    /// look them up by `rowid`, not scan the task's failed rows through the (task, status)
    /// index, which its planner prefers without statistics (measured: 16× the storage
    /// cost at 50,000 items, quadratic in the task's size).
    fn t_by_key(&self) -> String {
        self.b.by_key(&self.t())
    }

    /// `task = ? AND status = ?` as the columns compare.
    fn task_and_failed(&self, s: &mut Sql<'_, B>) {
        self.task_is(s);
        s.push(" AND ");
        let st = self.q_if(s, &self.shape.status);
        s.eq(&st, &self.shape.status, &self.failed);
    }

    fn task_is(&self, s: &mut Sql<'_, B>) {
        let t = self.q_if(s, &self.shape.task);
        s.eq(&t, &self.shape.task, &self.task);
    }

    /// The quoted column, or nothing for a builder that takes no text.
    fn q_if(&self, s: &Sql<'_, B>, col: &Col) -> String {
        if s.with_text() {
            self.q(col)
        } else {
            String::new()
        }
    }

    /// The key column's SQL (`rowid` or the quoted id, as compared).
    fn key_sql(&self) -> String {
        if self.shape.key_is_rowid {
            "rowid".into()
        } else {
            self.b.compare_expr(&self.q(&self.shape.id), &self.shape.id)
        }
    }

    /// `key IN (...)` for `keys`, padded to a statement shape.
    fn key_in(&self, s: &mut Sql<'_, B>, keys: &[&str]) {
        let key = &self.shape.key;
        let vals = keys
            .iter()
            .map(|v| match key.kind {
                Kind::Untyped => (Val::Text(v.to_string()), Kind::Text),
                kind => (
                    kind.val(v).unwrap_or_else(|_| Val::Text(v.to_string())),
                    kind,
                ),
            })
            .collect();
        self.key_in_vals(s, vals);
    }

    /// `key IN (...)` for keys already bound as their column compares, padded to a
    /// statement shape.
    fn key_in_vals(&self, s: &mut Sql<'_, B>, mut keys: Vec<(Val, Kind)>) {
        let key = &self.shape.key;
        if key.kind == Kind::Untyped {
            s.push_with(|| self.b.text(&self.q(key))).push(" IN (");
        } else {
            s.push_with(|| self.key_sql()).push(" IN (");
        }
        let k = shape_for(keys.len());
        if let Some(last) = keys.last().cloned() {
            keys.resize(k, last);
        }
        for (i, (val, kind)) in keys.into_iter().enumerate() {
            if i > 0 {
                s.push(", ");
            }
            s.bind(val, kind);
        }
        s.push(")");
    }

    /// A verdict's key as its column compares (`CASE` arms and `IN` lists of a save): a
    /// rowid is bound as it is, other keys as their column's kind says (the same values
    /// [`Inner::key_in`] binds for their text).
    fn key_val(&self, v: &Verdict) -> (Val, Kind) {
        let sh = &self.shape;
        if sh.key_is_rowid {
            return (Val::Int(v.key), Kind::Int);
        }
        let key = v.id.as_str();
        match sh.key.kind {
            Kind::Int => (Val::Int(key.parse().unwrap_or(0)), Kind::Int),
            Kind::Untyped => (Val::Text(key.to_string()), Kind::Text),
            kind => (
                kind.val(key).unwrap_or_else(|_| Val::Text(key.to_string())),
                kind,
            ),
        }
    }

    /// A time for a column of `kind`: "now" from the database's clock where it has one.
    fn now(&self, s: &mut Sql<'_, B>, kind: TimeKind, at: SystemTime) {
        match self.b.now(kind) {
            Some(e) => {
                s.push(&e);
            }
            None => {
                s.bind(Val::Time(at, kind), Kind::Other);
            }
        }
    }

    /// The next page after `after` (or from the start), with the columns an item is built
    /// from: key, id, url, extras, all as text. By lease: only free, not-yet-checked rows,
    /// locked against other claimers.
    fn page_sql(&self, n: usize, after: Option<&str>, now: SystemTime) -> (String, Vec<Val>) {
        let sh = &self.shape;
        let mut s = self.sql();
        let key = self.key_sql();
        s.push("SELECT ").push(&self.b.text(&key)).push(", ");
        s.push(&format!("COALESCE({}, '')", self.b.text(&self.q(&sh.id))));
        for col in sh.url.iter().chain(&sh.extras) {
            s.push(", ").push(&self.b.text(&self.q(col)));
        }
        if let Some(c) = &sh.checks {
            s.push(", ").push(&self.b.text(&self.q(c)));
        }
        if let Some((c, ck)) = &sh.first_checked_at {
            s.push(", ").push(&self.b.time_text(&self.q(c), *ck));
        }
        s.push(" FROM ").push(&self.t()).push(" WHERE ");
        self.task_and_failed(&mut s);
        self.due_now(&mut s, now);
        if !sh.key_is_rowid {
            // A NULL id is no key: such rows cannot be claimed on a shared server.
            s.push(" AND ").push(&self.q(&sh.id)).push(" IS NOT NULL");
        }
        if let Some(after) = after {
            s.push(" AND ").push(&key).push(" > ");
            let (val, kind) = match sh.key.kind {
                Kind::Int => (Val::Int(after.parse().unwrap_or(i64::MIN)), Kind::Int),
                _ => (Val::Text(after.to_string()), Kind::Text),
            };
            s.bind(val, kind);
        }
        if self.leasing
            && let (Some((owner, until, lk)), Some((checked, ck))) = (&sh.lease, &sh.checked_at)
        {
            let (owner, until, checked) = (self.q(owner), self.q(until), self.q(checked));
            s.push(&format!(
                " AND ({owner} IS NULL OR {until} IS NULL OR {until} < "
            ));
            self.now(&mut s, *lk, now);
            s.push(&format!(") AND ({checked} IS NULL OR NOT ({checked} >= "));
            s.bind(Val::Time(self.since, *ck), Kind::Other);
            s.push(&format!(" AND {checked} <= "));
            self.now(&mut s, *ck, now);
            s.push("))");
        }
        s.push(&format!(" ORDER BY {key} LIMIT {n}"));
        if self.leasing {
            s.push(self.b.for_update(true));
        }
        s.done()
    }

    /// ` AND` the item is due at `now` (`next_check_at` not ahead), unless
    /// `--ignore-schedule` or the table has no `next_check_at`. Compared with the checking
    /// worker's clock, which wrote the time (like `checked_at`).
    fn due_now(&self, s: &mut Sql<'_, B>, now: SystemTime) {
        if let Some((next, nk)) = &self.shape.next_check_at
            && !self.opts.ignore_schedule
        {
            let next = self.q(next);
            s.push(&format!(" AND ({next} IS NULL OR {next} <= "));
            s.bind(Val::Time(now, *nk), Kind::Other);
            s.push(")");
        }
    }

    /// A task id with no row at all is a typo, not "nothing to check" (docs/reference.md §2.5).
    async fn check_task_exists(&self) -> Result<()> {
        let mut s = self.sql();
        s.push("SELECT 1 FROM ").push(&self.t()).push(" WHERE ");
        self.task_is(&mut s);
        s.push(" LIMIT 1");
        let (sql, args) = s.done();
        let name = self.b.name();
        if !self
            .read(sql, args)
            .await
            .with_context(|| format!("{name}: cannot look up the task"))?
            .is_empty()
        {
            return Ok(());
        }
        let task = self.q(&self.shape.task);
        let known: Vec<String> = self
            .read(
                format!(
                    "SELECT DISTINCT {} FROM {} WHERE {task} IS NOT NULL LIMIT 10000",
                    self.b.text(&task),
                    self.t()
                ),
                Vec::new(),
            )
            .await
            .with_context(|| format!("{name}: cannot list the tasks"))?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        Err(crate::store::unknown_task(name, &self.opts.task, &known))
    }

    /// On a server a row is found by task and id: a NULL id is no key, so such rows cannot
    /// be claimed or written. Says so once, with how many there are.
    async fn warn_null_ids(&self) -> Result<()> {
        if self.shape.key_is_rowid {
            return Ok(());
        }
        let mut s = self.sql();
        s.push("SELECT COUNT(*) FROM ")
            .push(&self.t())
            .push(" WHERE ");
        self.task_and_failed(&mut s);
        s.push(" AND ")
            .push(&self.q(&self.shape.id))
            .push(" IS NULL");
        let (sql, args) = s.done();
        let rows = self.read(sql, args).await?;
        let n = rows.first().map_or(Ok(0), |r| int_of(r, 0))?;
        if n > 0 {
            tracing::warn!(
                "{n} failed items of task {} have a NULL {}: they cannot be claimed or written (no key), so they are skipped",
                self.opts.task,
                self.shape.id.name
            );
        }
        Ok(())
    }

    /// Frees the leases of this host's dead workers on the task, and returns when this
    /// round of checks started: this worker's start, or the start of the earliest live
    /// worker on the task (read from its `lease_owner` name), so a worker joining a run
    /// does not check again what the others already checked.
    async fn reap_and_round_start(&self) -> Result<SystemTime> {
        let Some((owner, until, lk)) = &self.shape.lease else {
            return Ok(self.opts.started);
        };
        let (owner, until) = (self.q(owner), self.q(until));
        let mut s = self.sql();
        s.push(&format!(
            "SELECT {}, MAX(CASE WHEN {until} >= ",
            self.b.text(&owner)
        ));
        self.now(&mut s, *lk, SystemTime::now());
        s.push(" THEN 1 ELSE 0 END) FROM ")
            .push(&self.t())
            .push(" WHERE ");
        self.task_is(&mut s);
        s.push(&format!(
            " AND {owner} IS NOT NULL GROUP BY {}",
            self.b.text(&owner)
        ));
        let (sql, args) = s.done();
        let owners = self.read(sql, args).await?;
        let mut since = self.opts.started;
        for row in &owners {
            let Some(name) = row.first().cloned().flatten() else {
                continue;
            };
            if crate::store::owner_is_dead_here(&name) {
                let mut s = self.sql();
                s.push(&format!(
                    "UPDATE {} SET {owner} = NULL, {until} = NULL WHERE ",
                    self.t()
                ));
                self.task_is(&mut s);
                s.push(&format!(" AND {owner} = "));
                s.bind(Val::Text(name.clone()), Kind::Text);
                let (sql, args) = s.done();
                let mut tx = self.b.begin().await?;
                let n = tx.exec(sql, args).await?;
                tx.commit().await?;
                tracing::info!(owner = %name, items = n, "took over the claims of a worker that is gone");
            } else if int_of(row, 1)? == 1
                && let Some(start) = crate::store::owner_started(&name)
            {
                since = since.min(start);
            }
        }
        Ok(since)
    }

    async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut cursor = self.cursor.lock().await;
        loop {
            let items = retrying(&self.b, || self.claim_page(n, cursor.last.as_deref()))
                .await
                .with_context(|| format!("{}: cannot claim items", self.b.name()))?;
            if let Some((last, _)) = items.last() {
                cursor.last = Some(last.clone());
                let deferred = held(&self.deferred);
                if !deferred.is_empty() {
                    // Claimed again by the second pass: still leased by this worker (it
                    // stays held, so the release at the end gives it back), never checked.
                    let fresh: Vec<Item> = items
                        .into_iter()
                        .filter(|(k, _)| !deferred.contains(k))
                        .map(|(_, item)| item)
                        .collect();
                    if fresh.is_empty() {
                        continue;
                    }
                    return Ok(fresh);
                }
            } else if self.leasing && !cursor.swept {
                // One more pass from the start picks up claims that were released or whose
                // worker died while this one walked past them.
                self.reap_and_round_start().await.with_context(|| {
                    format!("{}: cannot free the leases of dead workers", self.b.name())
                })?;
                cursor.swept = true;
                cursor.last = None;
                continue;
            }
            return Ok(items.into_iter().map(|(_, item)| item).collect());
        }
    }

    /// One page: `(key, item)` in key order. By lease, in one transaction: select and lock
    /// the page, then lease it.
    async fn claim_page(&self, n: usize, after: Option<&str>) -> Result<Vec<(String, Item)>> {
        let now = SystemTime::now();
        let (sql, args) = self.page_sql(n, after, now);
        let rows = if self.leasing {
            let mut tx = self.b.begin().await?;
            let rows = tx.query(sql, args).await?;
            let keys: Vec<&str> = rows
                .iter()
                .filter_map(|r| r.first().and_then(|k| k.as_deref()))
                .collect();
            for chunk in keys.chunks(IN_CHUNK) {
                let (sql, args) = self.lease_sql(chunk, now);
                tx.exec(sql, args).await?;
            }
            tx.commit().await?;
            rows
        } else {
            self.read(sql, args).await?
        };
        let extra = self.shape.extras.len();
        let has_url = self.shape.url.is_some();
        let (has_checks, has_first) = (
            self.shape.checks.is_some(),
            self.shape.first_checked_at.is_some(),
        );
        let items: Vec<(String, Item)> = rows
            .into_iter()
            .map(|r| {
                let mut cols = r.into_iter();
                let key = cols.next().flatten().unwrap_or_default();
                let id = cols.next().flatten().unwrap_or_default();
                let url = if has_url { cols.next().flatten() } else { None };
                let fields: Vec<Option<String>> = cols.by_ref().take(extra).collect();
                let checks = if has_checks {
                    cols.next()
                        .flatten()
                        .and_then(|c| c.trim().parse::<f64>().ok())
                        .map_or(0, |c| c.clamp(0.0, f64::from(u32::MAX)) as u32)
                } else {
                    0
                };
                // Text no one can read as a time (another program's) is no first check.
                let first_checked_at = if has_first {
                    cols.next().flatten().and_then(|t| parse_time(&t))
                } else {
                    None
                };
                let item = Item {
                    key: if self.shape.key_is_rowid {
                        key.parse().unwrap_or(0)
                    } else {
                        0
                    },
                    id,
                    url,
                    fields,
                    checks,
                    first_checked_at,
                };
                (key, item)
            })
            .collect();
        if self.leasing {
            held(&self.held).extend(items.iter().map(|(k, _)| k.clone()));
        }
        Ok(items)
    }

    /// `UPDATE ... SET lease_owner = me, lease_until = now + lease WHERE task AND key IN`.
    fn lease_sql(&self, keys: &[&str], now: SystemTime) -> (String, Vec<Val>) {
        let mut s = self.sql();
        if let Some((owner, until, lk)) = &self.shape.lease {
            s.push(&format!(
                "UPDATE {} SET {} = ",
                self.t_by_key(),
                self.q(owner)
            ));
            s.bind(Val::Text(self.opts.owner.clone()), Kind::Text);
            s.push(&format!(", {} = ", self.q(until)));
            self.lease_end(&mut s, *lk, now);
            s.push(" WHERE ");
            self.task_is(&mut s);
            s.push(" AND ");
            self.key_in(&mut s, keys);
        }
        s.done()
    }

    fn lease_end(&self, s: &mut Sql<'_, B>, kind: TimeKind, now: SystemTime) {
        let ms = millis(self.opts.lease);
        let mut placeholder = String::new();
        self.b
            .placeholder(&mut placeholder, s.args.len() + 1, &Val::Int(ms), Kind::Int);
        match self.b.now_plus_ms(kind, &placeholder) {
            Some(e) => {
                s.args.push(Val::Int(ms));
                s.push(&e);
            }
            None => {
                s.bind(Val::Time(now + self.opts.lease, kind), Kind::Other);
            }
        }
    }

    /// Extends (`renew`) or gives back the leases this worker holds on unsaved items.
    async fn touch_held(&self, renew: bool) -> Result<()> {
        let Some((owner, until, lk)) = self.shape.lease.clone() else {
            return Ok(());
        };
        if !self.leasing {
            return Ok(());
        }
        let keys: Vec<String> = if renew {
            held(&self.held).iter().cloned().collect()
        } else {
            held(&self.held).drain().collect()
        };
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut tx = self.b.begin().await?;
        for chunk in refs.chunks(IN_CHUNK) {
            let mut s = self.sql();
            s.push(&format!("UPDATE {} SET ", self.t_by_key()));
            if renew {
                s.push(&format!("{} = ", self.q(&until)));
                self.lease_end(&mut s, lk, SystemTime::now());
            } else {
                s.push(&format!(
                    "{} = NULL, {} = NULL",
                    self.q(&owner),
                    self.q(&until)
                ));
            }
            s.push(" WHERE ");
            self.task_is(&mut s);
            s.push(&format!(" AND {} = ", self.q(&owner)));
            s.bind(Val::Text(self.opts.owner.clone()), Kind::Text);
            s.push(" AND ");
            self.key_in(&mut s, chunk);
            let (sql, args) = s.done();
            tx.exec(sql, args).await?;
        }
        tx.commit().await
    }

    async fn save(self: &Arc<Self>, batch: &Arc<[Verdict]>) -> Result<Saved> {
        if self.opts.read_only || batch.is_empty() {
            return Ok(Saved::default());
        }
        let conflicts = retrying(&self.b, || self.save_tx(batch))
            .await
            .with_context(|| format!("{}: cannot save results", self.b.name()))?;
        if self.leasing {
            // A conflict's row may still carry this worker's lease (its status changed):
            // it stays held, so the release at the end gives it back.
            let mut held = held(&self.held);
            let mut conflict = conflicts.iter().peekable();
            for (i, v) in batch.iter().enumerate() {
                if conflict.next_if_eq(&&i).is_none() {
                    held.remove(&self.key_of(v));
                }
            }
        }
        let mut deferred = batch
            .iter()
            .filter(|v| v.outcome == crate::model::Outcome::Deferred)
            .peekable();
        if deferred.peek().is_some() {
            held(&self.deferred).extend(deferred.map(|v| self.key_of(v)));
        }
        Ok(Saved { conflicts })
    }

    fn key_of(&self, v: &Verdict) -> String {
        if self.shape.key_is_rowid {
            v.key.to_string()
        } else {
            v.id.clone()
        }
    }

    /// One transaction: per chunk, lock the rows that are still as claimed (the others are
    /// conflicts), then write those. Returns the positions of the conflicts.
    async fn save_tx(self: &Arc<Self>, batch: &Arc<[Verdict]>) -> Result<Vec<usize>> {
        if self.b.row_statements() {
            return self.save_rows_tx(batch).await;
        }
        let mut tx = self.b.begin().await?;
        let mut conflicts = Vec::new();
        for (n, chunk) in batch.chunks(SAVE_CHUNK).enumerate() {
            let keys: Vec<String> = chunk.iter().map(|v| self.key_of(v)).collect();
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            // Compare-and-set: the row as claimed.
            let mut s = self.sql();
            s.push("SELECT ")
                .push(&self.b.text(&self.key_sql()))
                .push(", ")
                .push(&format!(
                    "COALESCE({}, '')",
                    self.b.text(&self.q(&self.shape.id))
                ))
                .push(" FROM ")
                .push(&self.t_by_key())
                .push(" WHERE ");
            self.task_and_failed(&mut s);
            if self.leasing
                && let Some((owner, _, _)) = &self.shape.lease
            {
                s.push(&format!(" AND {} = ", self.q(owner)));
                s.bind(Val::Text(self.opts.owner.clone()), Kind::Text);
            }
            s.push(" AND ");
            self.key_in(&mut s, &refs);
            s.push(self.b.for_update(false));
            let (sql, args) = s.done();
            let live: HashSet<(String, String)> = tx
                .query(sql, args)
                .await?
                .into_iter()
                .map(|r| {
                    let mut c = r.into_iter();
                    (
                        c.next().flatten().unwrap_or_default(),
                        c.next().flatten().unwrap_or_default(),
                    )
                })
                .collect();
            let mut write: Vec<&Verdict> = Vec::with_capacity(chunk.len());
            for (i, v) in chunk.iter().enumerate() {
                if live.contains(&(keys[i].clone(), v.id.clone())) {
                    write.push(v);
                } else {
                    conflicts.push(n * SAVE_CHUNK + i);
                }
            }
            // Deferred items were not checked: only their next_check_at is written.
            let (deferred, write): (Vec<&Verdict>, Vec<&Verdict>) = write
                .into_iter()
                .partition(|v| v.outcome == crate::model::Outcome::Deferred);
            if !write.is_empty() {
                let (sql, args) = self.update_sql(&write, Write::Checked);
                tx.exec(sql, args).await?;
            }
            if let Some((sql, args)) = self.defer_sql(&deferred) {
                tx.exec(sql, args).await?;
            }
        }
        tx.commit().await?;
        Ok(conflicts)
    }

    /// [`Inner::save_tx`] where statements cost no round trip ([`Backend::row_statements`]):
    /// one transaction, each row written by its own compare-and-set `UPDATE`; a row it
    /// did not change is a conflict. The statement's text is made once per kind of write
    /// (checked, deferred); the rows' values are made where the statements run
    /// ([`Tx::exec_rows`]: SQLite's blocking pool, not the thread of the checks). Measured
    /// on SQLite (100-row chunks, the default schema): 1.6 µs per row against 2.9 µs for
    /// the `CASE` write plus 0.3 µs for the lock query.
    async fn save_rows_tx(self: &Arc<Self>, batch: &Arc<[Verdict]>) -> Result<Vec<usize>> {
        let mut tx = self.b.begin().await?;
        let kind = |v: &Verdict| {
            if v.outcome == crate::model::Outcome::Deferred {
                Write::Deferred
            } else {
                Write::Checked
            }
        };
        let mut changed = [Vec::new(), Vec::new()];
        for (slot, what) in [Write::Checked, Write::Deferred].into_iter().enumerate() {
            let rows: Vec<usize> = (0..batch.len())
                .filter(|&i| kind(&batch[i]) == what)
                .collect();
            let Some(&first) = rows.first() else {
                continue;
            };
            // The text, once; each row's values are made where the statement runs (the
            // blocking pool for SQLite), not on the thread that runs the checks.
            let mut s = self.sql();
            self.write_update(&mut s, &[&batch[first]], what, true);
            let (sql, _) = s.done();
            let (inner, page, n) = (Arc::clone(self), Arc::clone(batch), rows.len());
            changed[slot] = tx
                .exec_rows(sql, n, move |i| {
                    let mut s = Sql::args_only(&inner.b);
                    inner.write_update(&mut s, &[&page[rows[i]]], what, true);
                    s.args
                })
                .await?;
        }
        tx.commit().await?;
        let (mut c, mut d) = (changed[0].iter(), changed[1].iter());
        let conflicts = batch
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                let n = match kind(v) {
                    Write::Checked => c.next(),
                    Write::Deferred => d.next(),
                };
                n.copied().unwrap_or(0) == 0
            })
            .map(|(i, _)| i)
            .collect();
        Ok(conflicts)
    }

    /// The write of a chunk of verdicts whose rows are locked and as claimed: what `what`
    /// says of them, where the table has the column, and the lease cleared.
    fn update_sql(&self, rows: &[&Verdict], what: Write) -> (String, Vec<Val>) {
        let mut s = self.sql();
        self.write_update(&mut s, rows, what, false);
        s.done()
    }

    /// The `UPDATE` of `rows` (see [`Inner::update_sql`]) into `s`. With `cas` (one row),
    /// the `WHERE` also says "still as claimed" (task, failed status, this worker's lease,
    /// the same id), so the statement changes no row when the row changed meanwhile: the
    /// compare-and-set of [`Backend::row_statements`] (SQLite's: the id is compared
    /// `COLLATE BINARY`). Text is only made when `s` takes it (an [`Sql::args_only`]
    /// builder collects the values of the next row).
    fn write_update(&self, s: &mut Sql<'_, B>, rows: &[&Verdict], what: Write, cas: bool) {
        let sh = &self.shape;
        let checked = what == Write::Checked;
        let k = if cas { 1 } else { shape_for(rows.len()) };
        let row = |i: usize| rows[i.min(rows.len() - 1)];
        let keys: Vec<(Val, Kind)> = (0..k).map(|i| self.key_val(row(i))).collect();
        // One key (each row of a compare-and-set save): the WHERE clause already names the
        // row, so each column gets its value as it is, without a CASE on the key; SQLite
        // then compares no key per column and binds half the values.
        let single = keys.len() == 1;
        let text = s.with_text();
        let key_expr = if !text || single {
            String::new()
        } else if sh.key.kind == Kind::Untyped {
            self.b.text(&self.q(&sh.key))
        } else {
            self.key_sql()
        };
        s.push_with(|| format!("UPDATE {} SET ", self.t_by_key()));
        // Columns are joined by ", " (the first one without).
        let mut first = true;
        // `col = CASE key WHEN k1 THEN v1 ... ELSE col END`, one per column. A padded
        // repeat of the last row never matches (its first WHEN does).
        let mut case =
            |s: &mut Sql<'_, B>, col: &Col, how: Set, f: &dyn Fn(&Verdict) -> (Val, Kind)| {
                if !std::mem::take(&mut first) {
                    s.push(", ");
                }
                let q = self.q_if(s, col);
                s.push(&q).push(" = ");
                match how {
                    Set::Add => {
                        s.push("COALESCE(").push(&q).push(", 0) + ");
                    }
                    Set::IfNull => {
                        s.push("COALESCE(").push(&q).push(", ");
                    }
                    Set::To | Set::UnlessNull => {}
                }
                // One row's value; a NULL one keeps the column's under `UnlessNull`.
                let value = |s: &mut Sql<'_, B>, i: usize| {
                    let (v, vk) = f(row(i));
                    if how == Set::UnlessNull {
                        s.push("COALESCE(");
                        s.bind(v, vk);
                        s.push(", ").push(&q).push(")");
                    } else {
                        s.bind(v, vk);
                    }
                };
                if single {
                    value(s, 0);
                    if how == Set::IfNull {
                        s.push(")");
                    }
                    return;
                }
                s.push("CASE ").push(&key_expr);
                for (i, (kv, kk)) in keys.iter().enumerate() {
                    s.push(" WHEN ");
                    s.bind(kv.clone(), *kk);
                    s.push(" THEN ");
                    value(s, i);
                }
                match how {
                    Set::Add => s.push(" ELSE 0 END"),
                    Set::IfNull => s.push(" ELSE NULL END)"),
                    Set::To | Set::UnlessNull => s.push(" ELSE ").push(&q).push(" END"),
                };
            };
        if checked {
            case(s, &sh.status, Set::UnlessNull, &|v| {
                let val = self
                    .opts
                    .status_for(v.outcome)
                    .map_or(Val::Null, |sv| status_val(sv, sh.status.kind));
                (val, sh.status.kind)
            });
        }
        if checked && let Some(c) = &sh.http_status {
            case(s, c, Set::To, &|v| {
                (
                    v.http_status.map_or(Val::Null, |h| Val::Int(h.into())),
                    Kind::Int,
                )
            });
        }
        if checked && let Some(c) = &sh.attempts {
            case(s, c, Set::Add, &|v| {
                (Val::Int(v.attempts.into()), Kind::Int)
            });
        }
        if checked && let Some(c) = &sh.last_error {
            // NULL clears the previous error when the item is fine now.
            case(s, c, Set::To, &|v| {
                (v.error.clone().map_or(Val::Null, Val::Text), Kind::Text)
            });
        }
        if checked && let Some((c, ck)) = &sh.checked_at {
            case(s, c, Set::To, &|v| {
                (Val::Time(v.checked_at, *ck), Kind::Other)
            });
        }
        if checked && let Some(c) = &sh.checks {
            case(s, c, Set::Add, &|_| (Val::Int(1), Kind::Int));
        }
        if checked && let Some((c, ck)) = &sh.first_checked_at {
            case(s, c, Set::IfNull, &|v| {
                (Val::Time(v.checked_at, *ck), Kind::Other)
            });
        }
        if let Some((c, ck)) = &sh.next_check_at {
            case(s, c, Set::To, &|v| {
                let at = v
                    .next_check_at
                    .map_or(Val::NullTime(*ck), |t| Val::Time(t, *ck));
                (at, Kind::Other)
            });
        }
        let leased = self.leasing && sh.lease.is_some();
        if let (true, Some((owner, until, _))) = (leased, &sh.lease) {
            if !first {
                s.push(", ");
            }
            first = false;
            s.push_with(|| format!("{} = NULL, {} = NULL", self.q(owner), self.q(until)));
        }
        if first {
            // Nothing to write (a deferred item, no schedule column, no lease): a write
            // that changes nothing, so the compare-and-set still says whether it matched.
            s.push_with(|| {
                let st = self.q(&sh.status);
                format!("{st} = {st}")
            });
        }
        s.push(" WHERE ");
        if cas {
            self.task_and_failed(s);
            if let (true, Some((owner, _, _))) = (leased, &sh.lease) {
                s.push_with(|| format!(" AND {} = ", self.q(owner)));
                s.bind(Val::Text(self.opts.owner.clone()), Kind::Text);
            }
        } else {
            self.task_is(s);
        }
        s.push(" AND ");
        self.key_in_vals(s, keys);
        if cas {
            // The same item, not another one that took its key (the lock query of the
            // chunked save compares the same text). Byte for byte, whatever the
            // column's collation says.
            s.push(" AND COALESCE(")
                .push_with(|| self.b.text(&self.q(&sh.id)))
                .push(", '') = ");
            s.bind(Val::Text(rows[0].id.clone()), Kind::Text);
            s.push(" COLLATE BINARY");
        }
    }

    /// The write of deferred items (their host's circuit was open): `next_check_at` where
    /// the table has it, and the lease given back; nothing else of the row changes. `None`
    /// when there is nothing to write.
    fn defer_sql(&self, rows: &[&Verdict]) -> Option<(String, Vec<Val>)> {
        let sh = &self.shape;
        let leased = sh.lease.is_some() && self.leasing;
        if rows.is_empty() || (sh.next_check_at.is_none() && !leased) {
            return None;
        }
        Some(self.update_sql(rows, Write::Deferred))
    }

    async fn pending(&self) -> Result<u64> {
        let mut s = self.sql();
        s.push("SELECT COUNT(*) FROM ")
            .push(&self.t())
            .push(" WHERE ");
        self.task_and_failed(&mut s);
        self.due_now(&mut s, SystemTime::now());
        let (sql, args) = s.done();
        let rows = self
            .read(sql, args)
            .await
            .with_context(|| format!("{}: cannot count items", self.b.name()))?;
        Ok(rows.first().map_or(Ok(0), |r| int_of(r, 0))?.max(0) as u64)
    }

    /// Counts per status (and the schedule of the failed items) of the run's task, or of
    /// every task (`all`), by task.
    async fn status_by_task(&self, all: bool) -> Result<Vec<(String, StatusCounts)>> {
        let name = self.b.name();
        let sh = &self.shape;
        let task = self.b.text(&self.q(&sh.task));
        let st = self.b.text(&self.q(&sh.status));
        // Grouped by the columns themselves, shown as text: the task's rows come in the
        // order of the (task, status) index instead of being sorted by their text (at the
        // end of a 200,000-item SQLite run the text grouping cost 0.5 µs per item). Values
        // that differ but read the same (`5` and `'5'` in an untyped column) are merged
        // here.
        let (task_raw, st_raw) = (self.q(&sh.task), self.q(&sh.status));
        let mut by_task: std::collections::BTreeMap<String, StatusCounts> = Default::default();
        let scope = |s: &mut Sql<'_, B>| {
            if all {
                s.push(&format!("{} IS NOT NULL", self.q(&sh.task)));
            } else {
                self.task_is(s);
            }
        };
        let mut s = self.sql();
        s.push(&format!(
            "SELECT {task}, {st}, COUNT(*) FROM {} WHERE ",
            self.t()
        ));
        scope(&mut s);
        s.push(&format!(" GROUP BY {task_raw}, {st_raw}"));
        let (sql, args) = s.done();
        for r in self
            .read(sql, args)
            .await
            .with_context(|| format!("{name}: cannot count items"))?
        {
            let t = r.first().cloned().flatten().unwrap_or_default();
            let status = r.get(1).cloned().flatten().unwrap_or_else(|| "NULL".into());
            let n = int_of(&r, 2)?.max(0) as u64;
            let counts = &mut by_task.entry(t).or_default().counts;
            match counts.iter_mut().find(|(s, _)| *s == status) {
                Some((_, m)) => *m += n,
                None => counts.push((status, n)),
            }
        }
        if let Some((c, ck)) = &sh.checked_at {
            let q = self.q(c);
            let mut s = self.sql();
            s.push(&format!(
                "SELECT {task}, {}, {} FROM {} WHERE ",
                self.b.time_text(&format!("MIN({q})"), *ck),
                self.b.time_text(&format!("MAX({q})"), *ck),
                self.t()
            ));
            scope(&mut s);
            s.push(&format!(" GROUP BY {task_raw}"));
            let (sql, args) = s.done();
            for r in self
                .read(sql, args)
                .await
                .with_context(|| format!("{name}: cannot read checked_at"))?
            {
                let t = r.first().cloned().flatten().unwrap_or_default();
                if let Some(c) = by_task.get_mut(&t) {
                    // RFC 3339 UTC text in one format sorts as time.
                    let (oldest, newest) =
                        (r.get(1).cloned().flatten(), r.get(2).cloned().flatten());
                    c.oldest_checked_at = match (c.oldest_checked_at.take(), oldest) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    c.newest_checked_at = c.newest_checked_at.take().max(newest);
                }
            }
        }
        if let Some(schedule) = self
            .schedule_by_task(all)
            .await
            .with_context(|| format!("{name}: cannot count items by schedule"))?
        {
            // A task with no failed item has an empty schedule, not an unknown one.
            for c in by_task.values_mut() {
                c.schedule = Some(Default::default());
            }
            for (t, sc) in schedule {
                if let Some(c) = by_task.get_mut(&t) {
                    c.schedule = Some(sc);
                }
            }
        }
        for c in by_task.values_mut() {
            c.counts.sort();
        }
        Ok(by_task.into_iter().collect())
    }

    async fn status_counts(&self) -> Result<StatusCounts> {
        let counts = self.status_by_task(false).await?.pop().map(|(_, c)| c);
        Ok(counts.unwrap_or_else(|| StatusCounts {
            schedule: (self.shape.next_check_at.is_some() && self.failed != Val::Null)
                .then(Default::default),
            ..StatusCounts::default()
        }))
    }

    /// The failed items by schedule (see [`crate::store::ScheduleCounts`]), by task; `None`
    /// without a `next_check_at` column, or when the failed status does not fit the
    /// column (`status` with its default).
    async fn schedule_by_task(
        &self,
        all: bool,
    ) -> Result<Option<Vec<(String, crate::store::ScheduleCounts)>>> {
        let sh = &self.shape;
        let Some((next, nk)) = &sh.next_check_at else {
            return Ok(None);
        };
        if self.failed == Val::Null {
            return Ok(None);
        }
        let now = SystemTime::now();
        let next = self.q(next);
        let task = self.b.text(&self.q(&sh.task));
        // Grouped by the column itself (index order, no sort of its text); tasks that read
        // the same are merged below.
        let task_raw = self.q(&sh.task);
        let mut s = self.sql();
        // The earliest time is formatted outside the grouping query: MySQL's formatting
        // repeats its argument, which must not hold a placeholder.
        s.push(&format!(
            "SELECT rc_task, rc_not_due, {}, rc_never FROM (SELECT {task} AS rc_task, COUNT(CASE WHEN {next} > ",
            self.b.time_text("rc_next", *nk)
        ));
        s.bind(Val::Time(now, *nk), Kind::Other);
        if let Some((checked, ck)) = &sh.checked_at {
            let checked = self.q(checked);
            s.push(&format!(" AND ({checked} IS NULL OR {checked} < "));
            s.bind(Val::Time(self.since, *ck), Kind::Other);
            s.push(")");
        }
        s.push(&format!(
            " THEN 1 END) AS rc_not_due, MIN(CASE WHEN {next} > "
        ));
        s.bind(Val::Time(now, *nk), Kind::Other);
        s.push(&format!(" THEN {next} END) AS rc_next, COUNT(CASE WHEN "));
        // Checked before the schedule columns existed: a `checked_at` says so.
        let mut never = Vec::new();
        if let Some(c) = &sh.checks {
            never.push(format!("COALESCE({}, 0) = 0", self.q(c)));
        }
        if let Some((c, _)) = &sh.checked_at {
            never.push(format!("{} IS NULL", self.q(c)));
        }
        if never.is_empty() {
            never.push("1 = 1".into());
        }
        s.push(&never.join(" AND "));
        s.push(" THEN 1 END) AS rc_never FROM ")
            .push(&self.t())
            .push(" WHERE ");
        if all {
            s.push(&format!("{} IS NOT NULL AND ", self.q(&sh.task)));
            let stq = self.q(&sh.status);
            s.eq(&stq, &sh.status, &self.failed);
        } else {
            self.task_and_failed(&mut s);
        }
        s.push(&format!(" GROUP BY {task_raw}) rc_schedule"));
        let (sql, args) = s.done();
        let rows = self.read(sql, args).await?;
        let mut by_task: std::collections::BTreeMap<String, crate::store::ScheduleCounts> =
            Default::default();
        for r in rows {
            let t = r.first().cloned().flatten().unwrap_or_default();
            let c = by_task.entry(t).or_default();
            c.not_due += int_of(&r, 1)?.max(0) as u64;
            c.never_checked += int_of(&r, 3)?.max(0) as u64;
            c.next_due_at = match (c.next_due_at.take(), r.get(2).cloned().flatten()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(Some(by_task.into_iter().collect()))
    }

    /// Adds the ids that are new; an id already there is left as it is, or set back to
    /// failed with `reset`. One transaction per call.
    async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        let name = self.b.name();
        let sh = &self.shape;
        if items.is_empty() {
            return Ok(ImportCounts::default());
        }
        if sh.url.is_none() && items.iter().any(|i| i.url.is_some()) {
            bail!(
                "{name}: table {} has no {} column for the imported urls",
                sh.table,
                self.opts.columns.url
            );
        }
        if let Some(bad) = items.iter().find(|i| sh.id.kind.val(&i.id).is_err()) {
            bail!(
                "{name}: id {:?} cannot be imported: column {} of table {} holds numbers",
                bad.id,
                sh.id.name,
                sh.table
            );
        }
        retrying(&self.b, || self.import_tx(&items, reset))
            .await
            .with_context(|| format!("{name}: cannot import items"))
    }

    async fn import_tx(&self, items: &[NewItem], reset: bool) -> Result<ImportCounts> {
        let sh = &self.shape;
        let id_q = self.q(&sh.id);
        let id_text = self.b.text(&id_q);
        let mut counts = ImportCounts::default();
        let mut tx = self.b.begin().await?;
        for chunk in items.chunks(IN_CHUNK) {
            // The ids as the column gives them back (`7` for an integer column's `07`).
            let canon: Vec<String> = chunk
                .iter()
                .map(|i| match sh.id.kind.val(&i.id) {
                    Ok(Val::Int(n)) if sh.id.kind == Kind::Int => n.to_string(),
                    _ => i.id.clone(),
                })
                .collect();
            let mut s = self.sql();
            s.push(&format!("SELECT {id_text} FROM {} WHERE ", self.t()));
            self.task_is(&mut s);
            s.push(" AND ");
            let k = shape_for(chunk.len());
            if sh.id.kind == Kind::Untyped {
                s.push(&id_text);
            } else {
                s.push(&self.b.compare_expr(&id_q, &sh.id));
            }
            s.push(" IN (");
            for i in 0..k {
                if i > 0 {
                    s.push(", ");
                }
                let v = &canon[i.min(canon.len() - 1)];
                match sh.id.kind {
                    Kind::Untyped => s.bind(Val::Text(v.clone()), Kind::Text),
                    kind => s.bind(kind.val(v).unwrap_or(Val::Text(v.clone())), kind),
                };
            }
            s.push(")").push(self.b.for_update(false));
            let (sql, args) = s.done();
            let mut seen: HashSet<String> = tx
                .query(sql, args)
                .await?
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
                .collect();
            let mut new = Vec::new();
            for (item, id) in chunk.iter().zip(&canon) {
                if seen.insert(id.clone()) {
                    new.push(item);
                    continue;
                }
                if !reset {
                    counts.already += 1;
                    continue;
                }
                let st = self.q(&sh.status);
                let mut s = self.sql();
                s.push(&format!("UPDATE {} SET {st} = ", self.t()));
                s.bind(self.failed.clone(), sh.status.kind);
                if let (Some(u), Some(url)) = (&sh.url, &item.url) {
                    s.push(&format!(", {} = ", self.q(u)));
                    s.bind(Val::Text(url.clone()), Kind::Text);
                }
                s.push(" WHERE ");
                self.task_is(&mut s);
                s.push(" AND ");
                s.eq(
                    &id_q,
                    &sh.id,
                    &sh.id.kind.val(id).unwrap_or(Val::Text(id.clone())),
                );
                let (sql, args) = s.done();
                tx.exec(sql, args).await?;
                counts.reset += 1;
            }
            if new.is_empty() {
                continue;
            }
            let mut s = self.sql();
            s.push(&format!(
                "INSERT INTO {} ({}, {id_q}, {}",
                self.t(),
                self.q(&sh.task),
                self.q(&sh.status)
            ));
            if let Some(u) = &sh.url {
                s.push(", ").push(&self.q(u));
            }
            s.push(") VALUES ");
            for (i, item) in new.iter().enumerate() {
                s.push(if i == 0 { "(" } else { ", (" });
                s.bind(self.task.clone(), sh.task.kind);
                s.push(", ");
                let id = sh
                    .id
                    .kind
                    .val(&item.id)
                    .unwrap_or(Val::Text(item.id.clone()));
                s.bind(id, sh.id.kind);
                s.push(", ");
                s.bind(self.failed.clone(), sh.status.kind);
                if sh.url.is_some() {
                    s.push(", ");
                    s.bind(item.url.clone().map_or(Val::Null, Val::Text), Kind::Text);
                }
                s.push(")");
            }
            let (sql, args) = s.done();
            tx.exec(sql, args).await?;
            counts.added += new.len() as u64;
        }
        tx.commit().await?;
        Ok(counts)
    }

    async fn finish(&self) -> Result<()> {
        // Waits for a claim still running (its caller may have given up on it).
        let _cursor = self.cursor.lock().await;
        let released = retrying(&self.b, || self.touch_held(false))
            .await
            .with_context(|| format!("{}: cannot release leases", self.b.name()));
        if let Some(lock) = self.lock.lock().await.take() {
            self.b.unlock(lock).await;
        }
        self.b.finish().await;
        released
    }
}

/// What a save writes of its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Checked items: status (where the outcome sets one), bookkeeping and schedule.
    Checked,
    /// Deferred items (their host's circuit was open): only `next_check_at`.
    Deferred,
}

/// How one column of a save is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    /// To the value.
    To,
    /// To the value, or left as it is where the value is NULL.
    UnlessNull,
    /// The value added to what is there.
    Add,
    /// To the value where the column is NULL, else left as it is.
    IfNull,
}

/// A status value bound the way its column holds it.
fn status_val(v: &StatusValue, kind: Kind) -> Val {
    kind.val(v.as_str())
        .unwrap_or_else(|_| Val::Text(v.as_str().to_string()))
}

/// Reads the table's columns and checks the ones the run needs (docs/reference.md §2.3: a
/// missing column is a one-line error naming it and its flag).
fn inspect<B: Backend>(
    b: &B,
    name: &str,
    (table, cols): (Ident, Vec<Col>),
    opts: &StoreOptions,
) -> Result<Shape> {
    let c = &opts.columns;
    let find = |n: &str| -> Option<Col> {
        cols.iter()
            .find(|col| col.name.as_str() == n)
            .or_else(|| {
                cols.iter()
                    .find(|col| col.name.as_str().eq_ignore_ascii_case(n))
            })
            .cloned()
    };
    let need = |flag: &str, col: &Ident| -> Result<Col> {
        find(col.as_str()).ok_or_else(|| {
            anyhow!(
                "{name}: table {table} has no column {col} ({flag}; columns: {})",
                cols.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    };
    let task = need("--task-column", &c.task)?;
    let id = need("--id-column", &c.id)?;
    let status = need("--status-column", &c.status)?;
    let url = if opts.need_url {
        Some(need("--url-column (no --url given)", &c.url)?)
    } else {
        find(c.url.as_str())
    };
    let extras = opts
        .extra_columns
        .iter()
        .map(|col| need("placeholder in --url", col))
        .collect::<Result<Vec<_>>>()?;
    let time = |n: &str| -> Result<Option<(Col, TimeKind)>> {
        let Some(col) = find(n) else {
            return Ok(None);
        };
        let kind = col.time.ok_or_else(|| {
            anyhow!(
                "{name}: column {} of table {table} has type {}; recheck reads and writes it as a \
                 time type (UTC) or text (RFC 3339)",
                col.name,
                col.type_name
            )
        })?;
        Ok(Some((col, kind)))
    };
    let checked_at = time("checked_at")?;
    let lease_until = time("lease_until")?;
    let lease = match (find("lease_owner"), lease_until, &checked_at) {
        (Some(owner), Some((until, kind)), Some(_)) => Some((owner, until, kind)),
        _ => None,
    };
    let key_is_rowid = b.rowid().is_some();
    let key = if key_is_rowid {
        Col {
            name: Ident::new("rowid", "rowid")?,
            type_name: "INTEGER".into(),
            kind: Kind::Int,
            time: None,
        }
    } else {
        id.clone()
    };
    Ok(Shape {
        table: table.as_str().to_string(),
        task,
        id,
        status,
        key,
        key_is_rowid,
        url,
        extras,
        http_status: find("http_status"),
        attempts: find("attempts"),
        last_error: find("last_error"),
        checked_at,
        lease,
        checks: find("checks"),
        first_checked_at: time("first_checked_at")?,
        next_check_at: time("next_check_at")?,
    })
}

impl<B: Backend> Store for SqlStore<B> {
    async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        // On a task of its own: a caller that gives up (a stop) does not cut a claim off
        // between the server's commit and the bookkeeping of what this worker holds.
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { inner.claim(n).await })
            .await
            .context("claim task failed")?
    }

    async fn pending(&self) -> Result<u64> {
        self.inner.pending().await
    }

    async fn save(&self, batch: Arc<[Verdict]>) -> Result<Saved> {
        self.inner.save(&batch).await
    }

    async fn renew(&self) -> Result<()> {
        let inner = &self.inner;
        if let Some(lock) = inner.lock.lock().await.as_mut() {
            inner.b.keep_alive(lock).await?;
        }
        retrying(&inner.b, || inner.touch_held(true))
            .await
            .with_context(|| format!("{}: cannot renew leases", inner.b.name()))
    }

    async fn finish(&self) -> Result<()> {
        self.inner.finish().await
    }

    async fn status_counts(&self) -> Result<StatusCounts> {
        self.inner.status_counts().await
    }

    async fn status_all(&self) -> Result<Vec<(String, StatusCounts)>> {
        self.inner.status_by_task(true).await
    }

    async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        self.inner.import(items, reset).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::sqlite::SqliteDb;

    #[test]
    fn shapes_pad_up_to_a_handful_of_statement_sizes() {
        assert_eq!(shape_for(1), 1);
        assert_eq!(shape_for(2), 10);
        assert_eq!(shape_for(10), 10);
        assert_eq!(shape_for(11), 100);
        assert_eq!(shape_for(500), 500);
        assert_eq!(shape_for(501), 501);
    }

    #[test]
    fn kinds_bind_what_their_columns_hold() {
        assert_eq!(Kind::Int.val("5"), Ok(Val::Int(5)));
        assert_eq!(Kind::Int.val("failed"), Err("integer"));
        assert_eq!(Kind::Untyped.val("5"), Ok(Val::Int(5)));
        assert_eq!(Kind::Untyped.val("x"), Ok(Val::Text("x".into())));
        assert_eq!(Kind::Text.val("5"), Ok(Val::Text("5".into())));
        assert_eq!(Kind::Num.val("x"), Err("number"));
        assert_eq!(Kind::Other.val("x"), Ok(Val::Text("x".into())));
    }

    /// The statements a run uses, on a real SQLite file: a claim locks and leases a page,
    /// a save writes only the rows still as claimed and reports the others, a release gives
    /// back what was not saved.
    #[tokio::test]
    async fn claim_save_release_on_sqlite() {
        let (_dir, conn, store) = sqlite_store(
            "CREATE TABLE items(task_id TEXT, item_id TEXT, status TEXT, checked_at TEXT,
               lease_owner TEXT, lease_until TEXT, attempts INTEGER NOT NULL DEFAULT 0);
             INSERT INTO items(task_id, item_id, status) VALUES
               ('t', 'a', 'failed'), ('t', 'b', 'failed'), ('t', 'c', 'failed'), ('u', 'd', 'failed');",
            "failed",
            OpenMode::Run,
        )
        .await;
        let page = store.claim(2).await.unwrap();
        assert_eq!(
            page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let leased: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM items WHERE lease_owner IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leased, 2);
        // The pipeline moves b on while it is being checked.
        conn.execute(
            "UPDATE items SET status = 'cancelled' WHERE item_id = 'b'",
            [],
        )
        .unwrap();
        let verdict = |item: &Item| ok_verdict(item, crate::model::Outcome::Ok);
        let saved = store
            .save(page.iter().map(verdict).collect())
            .await
            .unwrap();
        assert_eq!(saved.conflicts, vec![1], "b changed meanwhile");
        let rest = store.claim(10).await.unwrap();
        assert_eq!(
            rest.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        store.finish().await.unwrap();
        let rows: Vec<(String, String, Option<String>, i64)> = conn
            .prepare("SELECT item_id, status, lease_owner, attempts FROM items ORDER BY item_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                ("a".into(), "ok".into(), None, 1),
                // Not written, and its lease given back at the end.
                ("b".into(), "cancelled".into(), None, 0),
                ("c".into(), "failed".into(), None, 0),
                ("d".into(), "failed".into(), None, 0),
            ]
        );
    }

    /// A SQLite file made by `schema` (table `items`), opened as a store of task `t` whose
    /// failed status is `failed`; the directory (keep it alive), a connection of its own
    /// to look at the rows, and the store.
    async fn sqlite_store(
        schema: &str,
        failed: &str,
        mode: OpenMode,
    ) -> (tempfile::TempDir, rusqlite::Connection, SqlStore<SqliteDb>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(schema).unwrap();
        let opts = StoreOptions::basic(
            "t",
            crate::store::Columns::default(),
            StatusValue::new(failed),
        );
        let db = SqliteDb::open(&path, mode, false).await.unwrap();
        let store = SqlStore::open(db, opts, mode).await.unwrap();
        (dir, conn, store)
    }

    fn ok_verdict(item: &Item, outcome: crate::model::Outcome) -> Verdict {
        Verdict {
            key: item.key,
            id: item.id.clone(),
            outcome,
            http_status: Some(200),
            attempts: 1,
            error: None,
            checked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            elapsed: Duration::ZERO,
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    fn rows_of(conn: &rusqlite::Connection, sql: &str) -> Vec<(String, String, Option<String>)> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// SQLite writes each row by its own compare-and-set: a row another worker leased,
    /// or whose key now holds another item, is a conflict and is left as it is; the rest
    /// of the batch is written.
    #[tokio::test]
    async fn each_row_is_written_only_while_still_as_claimed() {
        let (_dir, conn, store) = sqlite_store(
            "CREATE TABLE items(task_id TEXT, item_id TEXT, status TEXT, checked_at TEXT,
               lease_owner TEXT, lease_until TEXT);
             INSERT INTO items(task_id, item_id, status) VALUES
               ('t', 'a', 'failed'), ('t', 'b', 'failed'), ('t', 'c', 'failed'), ('t', 'd', 'failed');",
            "failed",
            OpenMode::Run,
        )
        .await;
        assert!(store.inner.b.row_statements());
        let page = store.claim(4).await.unwrap();
        assert_eq!(page.len(), 4);
        // b: another worker took its lease over; c: its row now holds another item.
        conn.execute_batch(
            "UPDATE items SET lease_owner = 'other' WHERE item_id = 'b';
             UPDATE items SET item_id = 'c2' WHERE item_id = 'c';",
        )
        .unwrap();
        let verdicts = vec![
            ok_verdict(&page[0], crate::model::Outcome::Ok),
            ok_verdict(&page[1], crate::model::Outcome::Ok),
            ok_verdict(&page[2], crate::model::Outcome::Ok),
            ok_verdict(&page[3], crate::model::Outcome::Deferred),
        ];
        let saved = store.save(verdicts.into()).await.unwrap();
        assert_eq!(saved.conflicts, vec![1, 2]);
        store.finish().await.unwrap();
        assert_eq!(
            rows_of(
                &conn,
                "SELECT item_id, status, lease_owner FROM items ORDER BY rowid"
            ),
            vec![
                ("a".into(), "ok".into(), None),
                ("b".into(), "failed".into(), Some("other".into())),
                ("c2".into(), "failed".into(), None),
                // Deferred: not checked, its lease given back.
                ("d".into(), "failed".into(), None),
            ]
        );
    }

    /// A deferred item in a table with nothing to write for it (no lease, no schedule
    /// columns) is still saved (not a conflict) and its row is left as it was.
    #[tokio::test]
    async fn a_deferred_row_with_nothing_to_write_is_no_conflict() {
        let (_dir, conn, store) = sqlite_store(
            "CREATE TABLE items(task_id TEXT, item_id TEXT, status TEXT);
             INSERT INTO items VALUES ('t', 'a', 'failed'), ('t', 'b', 'failed');",
            "failed",
            OpenMode::Run,
        )
        .await;
        let page = store.claim(2).await.unwrap();
        let saved = store
            .save(
                vec![
                    ok_verdict(&page[0], crate::model::Outcome::Deferred),
                    ok_verdict(&page[1], crate::model::Outcome::Ok),
                ]
                .into(),
            )
            .await
            .unwrap();
        assert!(saved.conflicts.is_empty(), "{:?}", saved.conflicts);
        store.finish().await.unwrap();
        assert_eq!(
            rows_of(
                &conn,
                "SELECT item_id, status, NULL FROM items ORDER BY rowid"
            ),
            vec![
                ("a".into(), "failed".into(), None),
                ("b".into(), "ok".into(), None),
            ]
        );
    }

    /// Counts are grouped by the stored values and merged by their text: `5` and `'5'` in
    /// an untyped column are one status, as `status` shows them.
    #[tokio::test]
    async fn status_counts_merge_values_that_read_the_same() {
        let (_dir, _conn, store) = sqlite_store(
            "CREATE TABLE items(task_id, item_id TEXT, status, checked_at TEXT);
             INSERT INTO items VALUES
               ('t', 'a', 5, '2026-01-02T00:00:00.000Z'),
               ('t', 'b', '5', '2026-01-01T00:00:00.000Z'),
               ('t', 'c', 'ok', NULL),
               (7, 'd', 'ok', '2026-01-03T00:00:00.000Z'),
               ('7', 'e', 'ok', '2026-01-04T00:00:00.000Z');",
            "5",
            OpenMode::Status,
        )
        .await;
        let counts = store.status_counts().await.unwrap();
        assert_eq!(counts.counts, vec![("5".into(), 2), ("ok".into(), 1)]);
        assert_eq!(
            counts.oldest_checked_at.as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        let all = store.status_all().await.unwrap();
        let seven = all.iter().find(|(t, _)| t == "7").unwrap();
        assert_eq!(seven.1.counts, vec![("ok".into(), 2)]);
        assert_eq!(
            seven.1.oldest_checked_at.as_deref(),
            Some("2026-01-03T00:00:00.000Z")
        );
        assert_eq!(
            seven.1.newest_checked_at.as_deref(),
            Some("2026-01-04T00:00:00.000Z")
        );
    }
}
