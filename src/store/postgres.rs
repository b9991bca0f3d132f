//! Store backend: PostgreSQL, shared by any number of workers on any number of machines.
//! Validates the table and columns before anything is written, then claims pages of the
//! task's failed items by lease (`FOR UPDATE SKIP LOCKED` in one `UPDATE ... RETURNING`),
//! and saves each batch of verdicts in one statement. Knows nothing of HTTP.
//!
//! # How workers share a task
//!
//! The same contract as the SQLite store (`sqlite.rs`), on the server:
//!
//! - A claim leases the next failed items of the task after this worker's keyset cursor that
//!   no live worker holds (`lease_owner` NULL or `lease_until` past) and that nobody checked
//!   in this round (`checked_at` NULL or before `since`), setting `lease_owner` to this
//!   worker's name and `lease_until` to now + `--lease`. When a pass runs dry the worker
//!   frees the leases of dead workers of its own host and sweeps once more from the start.
//! - Lease expiry is judged by the database clock (`now()`), so workers whose clocks
//!   disagree still agree on whose lease has ended. `since` and `checked_at` come from the
//!   workers' own clocks (worker names carry their start time; verdicts carry theirs), as
//!   on every other backend.
//! - A save writes status (only where an outcome sets one), bookkeeping where the table has
//!   the column, and clears the lease if it is still ours. `renew` extends, and `finish`
//!   releases, the leases this worker holds on items it has not saved: the store keeps
//!   their ids (a few thousand at most: claimed pages not yet checked and saved).
//!
//! Rows are keyed by (task column, id column), which must be unique (the default schema's
//! primary key). There is no rowid: the keyset orders by the id column itself (integer ids
//! numerically, text ids by their collation, other types by their text).
//!
//! Without the lease columns a table cannot share work: one run per task holds a session
//! advisory lock (keyed by table and task) on a connection of its own, and a second run
//! fails fast. (Session advisory locks need a direct connection or session pooling, not a
//! transaction-pooling proxy.)
//!
//! `checked_at` and `lease_until` may be `timestamptz` (the default schema), `timestamp`
//! (read and written as UTC) or text (RFC 3339 UTC with milliseconds, like the SQLite
//! store; it sorts as text). Any other type is refused at open.

use std::collections::HashSet;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Postgres, Row};

use super::{Ident, ImportCounts, NewItem, OpenMode, Saved, StatusCounts, Store, StoreOptions};
use crate::model::{Item, StatusValue, Verdict};

/// How long connecting (TCP, TLS, authentication) may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a statement waits for a pooled connection mid-run.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);
/// `to_char` format giving the RFC 3339 text every store writes (`2026-01-02T03:04:05.678Z`).
const RFC3339_FMT: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"#;
/// Columns `recheck init` adds to an existing table, and their declarations.
const INIT_COLUMNS: [(&str, &str); 9] = [
    ("http_status", "INTEGER NULL"),
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("last_error", "TEXT NULL"),
    ("checked_at", "TIMESTAMPTZ NULL"),
    ("lease_owner", "TEXT NULL"),
    ("lease_until", "TIMESTAMPTZ NULL"),
    ("checks", "INTEGER NOT NULL DEFAULT 0"),
    ("first_checked_at", "TIMESTAMPTZ NULL"),
    ("next_check_at", "TIMESTAMPTZ NULL"),
];

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// A PostgreSQL store.
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    opts: StoreOptions,
    /// The URL with its password redacted, and the secrets to scrub from any message.
    names: Names,
    shape: Shape,
    sql: Sql,
    /// Claims are leases shared with other workers (the table has the lease columns and
    /// the run writes).
    leasing: bool,
    /// Items checked at or after this time were checked in this round, by this worker or
    /// one running alongside it: they are not claimed again. From the workers' clocks.
    since: DateTime<Utc>,
    /// The task and the failed status as the columns hold them.
    task: Val,
    failed: Val,
    /// Keyset position; held for the whole of a claim, so `finish` waits for one in flight.
    cursor: tokio::sync::Mutex<Cursor>,
    /// Ids this worker leased and has not saved yet.
    held: StdMutex<HashSet<String>>,
    /// The connection holding the task's advisory lock (tables without lease columns).
    lock: tokio::sync::Mutex<Option<AdvisoryLock>>,
}

#[derive(Debug, Default)]
struct Cursor {
    /// The id of the last item handed out, as text.
    last: Option<String>,
    /// The keyset pass has reached the end once and started over for abandoned claims.
    swept: bool,
}

struct AdvisoryLock {
    conn: PgConnection,
    keys: (String, String),
}

/// The redacted URL for messages, and what must never appear in one.
#[derive(Clone)]
struct Names {
    shown: String,
    secrets: Vec<String>,
}

impl Names {
    /// `shown: what: cause`, on one line, with every secret replaced by `***`.
    fn err(&self, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {what}: {}", self.shown, self.scrub(&e.to_string()))
    }

    fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(['\n', '\r'], " ");
        for s in &self.secrets {
            text = text.replace(s.as_str(), "***");
        }
        text
    }
}

/// A task or status value bound the way the column holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Int(i64),
    Text(String),
}

fn bind_val<'q>(q: Query<'q>, v: &Val) -> Query<'q> {
    match v {
        Val::Int(n) => q.bind(*n),
        Val::Text(s) => q.bind(s.clone()),
    }
}

/// How a column's values are compared with bound values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// smallint, integer, bigint: bound as int8.
    Int,
    /// text, varchar: bound as text.
    Text,
    /// Anything else: compared through its text form (`"col"::text`).
    Other,
}

impl Kind {
    fn of(typname: &str) -> Kind {
        match typname {
            "int2" | "int4" | "int8" => Kind::Int,
            "text" | "varchar" => Kind::Text,
            _ => Kind::Other,
        }
    }

    /// The column (already quoted and qualified) as compared with a bound value.
    fn expr(self, col: &str) -> String {
        match self {
            Kind::Other => format!("{col}::text"),
            Kind::Int | Kind::Text => col.to_string(),
        }
    }

    /// Placeholder `$n` with the cast matching [`Kind::expr`].
    fn param(self, n: usize) -> String {
        match self {
            Kind::Int => format!("${n}::int8"),
            Kind::Text | Kind::Other => format!("${n}::text"),
        }
    }

    /// Array placeholder `$n` with the cast matching [`Kind::expr`].
    fn array(self, n: usize) -> String {
        match self {
            Kind::Int => format!("${n}::int8[]"),
            Kind::Text | Kind::Other => format!("${n}::text[]"),
        }
    }

    /// A value for a column of this kind (`what` names the flag, for the message).
    fn val(self, text: &str, as_int: Option<i64>, what: &str, col: &str) -> Result<Val> {
        match (self, as_int) {
            (Kind::Int, Some(n)) => Ok(Val::Int(n)),
            (Kind::Int, None) => {
                bail!("{what} {text:?} is not an integer, but column {col} holds integers")
            }
            _ => Ok(Val::Text(text.to_string())),
        }
    }
}

/// How a time column holds its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeKind {
    /// timestamptz.
    Tz,
    /// timestamp without time zone, read and written as UTC.
    Naive,
    /// RFC 3339 UTC text with milliseconds.
    Text,
}

impl TimeKind {
    fn of(typname: &str) -> Option<TimeKind> {
        match typname {
            "timestamptz" => Some(TimeKind::Tz),
            "timestamp" => Some(TimeKind::Naive),
            "text" | "varchar" => Some(TimeKind::Text),
            _ => None,
        }
    }

    /// A `timestamptz` SQL expression in the column's representation.
    fn at(self, e: &str) -> String {
        match self {
            TimeKind::Tz => e.to_string(),
            TimeKind::Naive => format!("(({e}) AT TIME ZONE 'UTC')"),
            TimeKind::Text => format!("to_char(({e}) AT TIME ZONE 'UTC', {RFC3339_FMT})"),
        }
    }

    /// A value of the column (an SQL expression) as RFC 3339 text.
    fn to_text(self, e: &str) -> String {
        match self {
            TimeKind::Tz => format!("to_char(({e}) AT TIME ZONE 'UTC', {RFC3339_FMT})"),
            TimeKind::Naive => format!("to_char({e}, {RFC3339_FMT})"),
            TimeKind::Text => format!("({e})::text"),
        }
    }
}

/// One column of the table, as the catalog names it.
#[derive(Debug, Clone)]
struct Col {
    ident: Ident,
    kind: Kind,
}

impl Col {
    fn q(&self) -> String {
        self.ident.quoted()
    }

    /// `t."col"` (or `"col"` with an empty alias) as compared with bound values.
    fn cmp(&self, alias: &str) -> String {
        self.kind.expr(&qualified(alias, &self.ident))
    }
}

fn qualified(alias: &str, ident: &Ident) -> String {
    if alias.is_empty() {
        ident.quoted()
    } else {
        format!("{alias}.{}", ident.quoted())
    }
}

/// The parts of the table recheck uses, found in the catalog at open.
#[derive(Debug, Clone)]
struct Shape {
    table: Ident,
    oid: i64,
    task: Col,
    id: Col,
    status: Col,
    url: Option<Col>,
    extras: Vec<Col>,
    http_status: Option<Ident>,
    attempts: Option<Ident>,
    last_error: Option<Ident>,
    checked_at: Option<(Ident, TimeKind)>,
    /// `lease_owner`, `lease_until` (with `checked_at`): workers can share the task.
    lease: Option<(Ident, Ident, TimeKind)>,
}

impl Shape {
    /// The keyset's sort expression: the id itself, or its text for odd types.
    fn sort(&self, alias: &str) -> String {
        self.id.cmp(alias)
    }

    /// `id::text, url::text, extra::text...`: the columns an [`Item`] is built from.
    fn item_columns(&self, alias: &str) -> Vec<String> {
        let mut cols = vec![format!("{}::text", qualified(alias, &self.id.ident))];
        if let Some(u) = &self.url {
            cols.push(format!("{}::text", qualified(alias, &u.ident)));
        }
        cols.extend(
            self.extras
                .iter()
                .map(|c| format!("{}::text", qualified(alias, &c.ident))),
        );
        cols
    }
}

/// The statements of a run, built once at open (identifiers only, never values).
#[derive(Debug, Default)]
struct Sql {
    /// Claims: `{limit}` is replaced by the page size. First page, then after a cursor.
    claim_first: String,
    claim_next: String,
    save: Arc<str>,
    renew: Arc<str>,
    release: Arc<str>,
    pending: Arc<str>,
    counts: Arc<str>,
    checked_range: Option<Arc<str>>,
    import: Arc<str>,
}

impl PgStore {
    /// Connects to `url` (`shown` is the URL with its password redacted, for messages),
    /// checks the table and columns, and prepares to claim the task's failed items.
    pub async fn open(
        url: &str,
        shown: &str,
        opts: StoreOptions,
        mode: OpenMode,
    ) -> Result<PgStore> {
        let (connect, names) = connect_options(url, shown)?;
        let mut conn = connect_one(&connect, &names).await?;
        match Inner::open(&mut conn, connect, names, opts, mode).await {
            Ok((mut inner, lock_keys)) => {
                match lock_keys {
                    // This connection holds the task's advisory lock: keep it for the run.
                    Some(keys) => *inner.lock.get_mut() = Some(AdvisoryLock { conn, keys }),
                    None => {
                        let _ = conn.close().await;
                    }
                }
                Ok(PgStore {
                    inner: Arc::new(inner),
                })
            }
            Err(e) => {
                let _ = conn.close().await;
                Err(e)
            }
        }
    }
}

/// `recheck init`: creates the default schema in `table`, or adds the columns it lacks
/// (bookkeeping and leases), printing each statement it ran.
pub async fn init(url: &str, shown: &str, table: &Ident) -> Result<String> {
    let (connect, names) = connect_options(url, shown)?;
    let mut conn = connect_one(&connect, &names).await?;
    let result = init_on(&mut conn, &names, table).await;
    let _ = conn.close().await;
    result
}

async fn init_on(conn: &mut PgConnection, names: &Names, table: &Ident) -> Result<String> {
    let shown = &names.shown;
    let Some((table, oid)) = resolve_table(conn, names, table).await? else {
        let stmts = create_schema_sql(table)?;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| names.err("cannot start a transaction", e))?;
        for s in &stmts {
            sqlx::query(AssertSqlSafe(s.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(|e| names.err(&format!("cannot create table {table}"), e))?;
        }
        tx.commit()
            .await
            .map_err(|e| names.err(&format!("cannot create table {table}"), e))?;
        return Ok(format!(
            "created table {table} (and index {table}_task_status) in {shown}"
        ));
    };
    let cols = table_columns(conn, names, oid).await?;
    let has = |name: &str| cols.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let stmts: Vec<String> = INIT_COLUMNS
        .iter()
        .filter(|(name, _)| !has(name))
        .map(|(name, decl)| {
            format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {name} {decl}",
                table.quoted()
            )
        })
        .collect();
    if stmts.is_empty() {
        return Ok(format!(
            "table {table} in {shown} already has every column recheck uses"
        ));
    }
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| names.err("cannot start a transaction", e))?;
    for s in &stmts {
        sqlx::query(AssertSqlSafe(s.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(|e| names.err(&format!("cannot alter table {table}"), e))?;
    }
    tx.commit()
        .await
        .map_err(|e| names.err(&format!("cannot alter table {table}"), e))?;
    let mut msg = format!(
        "table {table} in {shown} exists; added the columns recheck uses for bookkeeping and leases:"
    );
    for s in &stmts {
        msg.push('\n');
        msg.push_str(s);
        msg.push(';');
    }
    Ok(msg)
}

/// The SPEC §2 default schema (PostgreSQL types) and its index.
fn create_schema_sql(table: &Ident) -> Result<Vec<String>> {
    let t = table.quoted();
    let idx = Ident::new("index", &format!("{}_task_status", table.as_str()))?.quoted();
    Ok(vec![
        format!(
            "CREATE TABLE {t} (task_id TEXT NOT NULL, item_id TEXT NOT NULL, status TEXT NOT NULL, \
             url TEXT NULL, http_status INTEGER NULL, attempts INTEGER NOT NULL DEFAULT 0, \
             last_error TEXT NULL, checked_at TIMESTAMPTZ NULL, lease_owner TEXT NULL, \
             lease_until TIMESTAMPTZ NULL, checks INTEGER NOT NULL DEFAULT 0, \
             first_checked_at TIMESTAMPTZ NULL, next_check_at TIMESTAMPTZ NULL, \
             PRIMARY KEY (task_id, item_id))"
        ),
        format!("CREATE INDEX {idx} ON {t} (task_id, status)"),
    ])
}

/// Parses the URL into connect options, and collects the secrets to scrub from messages.
fn connect_options(url: &str, shown: &str) -> Result<(PgConnectOptions, Names)> {
    let mut secrets = Vec::new();
    if let Ok(u) = url::Url::parse(url) {
        if let Some(p) = u.password().filter(|p| !p.is_empty()) {
            secrets.push(p.to_string());
            if let Ok(decoded) = percent_encoding::percent_decode_str(p).decode_utf8() {
                secrets.push(decoded.into_owned());
            }
        }
        for (k, v) in u.query_pairs() {
            if k == "password" && !v.is_empty() {
                secrets.push(v.into_owned());
            }
        }
    }
    if let Ok(p) = std::env::var("PGPASSWORD")
        && !p.is_empty()
    {
        secrets.push(p);
    }
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let mut names = Names {
        shown: String::new(),
        secrets,
    };
    // `shown` redacts the password of the URL's user part; a `?password=` is scrubbed here.
    names.shown = names.scrub(shown);
    let mut options: PgConnectOptions = url
        .parse()
        .map_err(|e| names.err("not a usable PostgreSQL URL", e))?;
    if options.get_application_name().is_none() {
        options = options.application_name("recheck");
    }
    Ok((options, names))
}

/// One connection, made directly (not through the pool, which would retry a refused
/// connection until its timeout and then report only that it timed out).
async fn connect_one(options: &PgConnectOptions, names: &Names) -> Result<PgConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(names.err("cannot connect", e)),
        Err(_) => Err(names.err(
            "cannot connect",
            format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

/// The table named `table` as the search path finds it, with its oid: the exact name
/// first, then the name folded to lower case (how PostgreSQL stores unquoted names).
async fn resolve_table(
    conn: &mut PgConnection,
    names: &Names,
    table: &Ident,
) -> Result<Option<(Ident, i64)>> {
    let mut tries = vec![table.clone()];
    let lower = table.as_str().to_ascii_lowercase();
    if lower != table.as_str() {
        tries.push(Ident::new("--table", &lower)?);
    }
    for t in tries {
        let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1::text)::oid::int8")
            .bind(t.quoted())
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| names.err(&format!("cannot look up table {table}"), e))?;
        if let Some(oid) = oid {
            return Ok(Some((t, oid)));
        }
    }
    Ok(None)
}

/// `(name, type name)` of every column of the table, in order. Domains count as their
/// base type.
async fn table_columns(
    conn: &mut PgConnection,
    names: &Names,
    oid: i64,
) -> Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT a.attname::text, \
                (SELECT b.typname::text FROM pg_type b \
                  WHERE b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END) \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| names.err("cannot read the table's columns", e))
}

/// Up to 20 tables the search path shows, for the "table not found" message.
async fn visible_tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND pg_table_is_visible(c.oid) \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         ORDER BY 1 LIMIT 21",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default()
}

/// Reads the table's columns and checks the ones the run needs (SPEC §2: a missing table
/// or column is a one-line error naming it and its flag).
async fn inspect(conn: &mut PgConnection, names: &Names, opts: &StoreOptions) -> Result<Shape> {
    let shown = &names.shown;
    let c = &opts.columns;
    let Some((table, oid)) = resolve_table(conn, names, &c.table).await? else {
        let tables = visible_tables(conn).await;
        let listed = match tables.len() {
            0 => "the search path shows no tables".to_string(),
            1..=20 => format!("tables: {}", tables.join(", ")),
            _ => format!("tables: {}, ...", tables[..20].join(", ")),
        };
        bail!(
            "{shown}: table {} not found ({listed}; `recheck init --store URL --table {}` creates it)",
            c.table,
            c.table
        );
    };
    let cols = table_columns(conn, names, oid).await?;
    let find = |name: &str| -> Option<(Ident, String)> {
        let hit = cols
            .iter()
            .find(|(n, _)| n == name)
            .or_else(|| cols.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))?;
        // A case-insensitive match of a checked identifier is one too.
        Some((Ident::new("column", &hit.0).ok()?, hit.1.clone()))
    };
    let need = |flag: &str, col: &Ident| -> Result<Col> {
        let (ident, typ) = find(col.as_str()).ok_or_else(|| {
            anyhow!(
                "{shown}: table {table} has no column {col} ({flag}; columns: {})",
                cols.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Ok(Col {
            ident,
            kind: Kind::of(&typ),
        })
    };
    let task = need("--task-column", &c.task)?;
    let id = need("--id-column", &c.id)?;
    let status = need("--status-column", &c.status)?;
    let url = if opts.need_url {
        Some(need("--url-column (no --url given)", &c.url)?)
    } else {
        find(c.url.as_str()).map(|(ident, typ)| Col {
            ident,
            kind: Kind::of(&typ),
        })
    };
    let extras = opts
        .extra_columns
        .iter()
        .map(|col| need("placeholder in --url", col))
        .collect::<Result<Vec<_>>>()?;
    let time = |name: &str| -> Result<Option<(Ident, TimeKind)>> {
        let Some((ident, typ)) = find(name) else {
            return Ok(None);
        };
        let kind = TimeKind::of(&typ).ok_or_else(|| {
            anyhow!(
                "{shown}: column {ident} of table {table} has type {typ}; recheck reads and \
                 writes it as timestamptz, timestamp (UTC) or text (RFC 3339)"
            )
        })?;
        Ok(Some((ident, kind)))
    };
    let checked_at = time("checked_at")?;
    let lease_until = time("lease_until")?;
    let lease_owner = find("lease_owner").map(|(i, _)| i);
    let lease = match (lease_owner, lease_until, &checked_at) {
        (Some(owner), Some((until, kind)), Some(_)) => Some((owner, until, kind)),
        _ => None,
    };
    Ok(Shape {
        table,
        oid,
        task,
        id,
        status,
        url,
        extras,
        http_status: find("http_status").map(|(i, _)| i),
        attempts: find("attempts").map(|(i, _)| i),
        last_error: find("last_error").map(|(i, _)| i),
        checked_at,
        lease,
    })
}

/// Builds every statement of the store from the shape (identifiers only).
fn build_sql(s: &Shape, leasing: bool) -> Sql {
    let t = s.table.quoted();
    let (task, status) = (&s.task, &s.status);
    let mut sql = Sql::default();
    let sort = s.sort("");
    let base = format!(
        "{task} = {p1} AND {status} = {p2} AND {id} IS NOT NULL",
        task = task.cmp(""),
        status = status.cmp(""),
        id = s.id.q(),
        p1 = task.kind.param(1),
        p2 = status.kind.param(2),
    );
    if leasing && let (Some((owner, until, tk)), Some((checked, ck))) = (&s.lease, &s.checked_at) {
        // One statement: lock the next free rows (skipping rows another worker is claiming
        // right now), lease them, return them in keyset order. MATERIALIZED keeps the
        // planner from running the limited SELECT more than once.
        let (owner, until) = (owner.quoted(), until.quoted());
        // The UPDATE takes the locked rows by key, `= ANY(ARRAY(...))` (an index scan on
        // the key, whatever the plan cache decides). Joined to the CTE instead, a generic
        // plan may hash-join the page against a scan of the whole table (seen at 100,000
        // rows: 50 ms a page instead of 7).
        let claim = |next: &str| {
            format!(
                "WITH c AS MATERIALIZED (\
                   SELECT {id_q} AS k_id FROM {t} \
                   WHERE {base}{next} \
                     AND ({owner} IS NULL OR {until} IS NULL OR {until} < {now}) \
                     AND ({checked} IS NULL OR NOT ({checked} >= {since} AND {checked} <= {checked_now})) \
                   ORDER BY {sort} LIMIT {{limit}} \
                   FOR UPDATE SKIP LOCKED), \
                 u AS (\
                   UPDATE {t} AS t SET {owner} = $4::text, {until} = {lease_end} \
                   WHERE {task_t} = {p1} AND t.{id_q} = ANY(ARRAY(SELECT k_id FROM c)) \
                   RETURNING {sort_t} AS k_sort, {cols}) \
                 SELECT * FROM u ORDER BY k_sort",
                id_q = s.id.q(),
                task_t = task.cmp("t"),
                p1 = task.kind.param(1),
                sort_t = s.sort("t"),
                checked = checked.quoted(),
                now = tk.at("now()"),
                checked_now = ck.at("now()"),
                since = ck.at("$3::timestamptz"),
                lease_end = tk.at("now() + $5::int8 * interval '1 millisecond'"),
                cols = s.item_columns("t").join(", "),
            )
        };
        sql.claim_first = claim("");
        sql.claim_next = claim(&format!(" AND {sort} > {}", s.id.kind.param(6)));
        let ids = format!("{} = ANY({})", s.id.cmp(""), s.id.kind.array(2));
        sql.renew = format!(
            "UPDATE {t} SET {until} = {end} WHERE {task} = {p1} AND {ids} AND {owner} = $3::text",
            task = task.cmp(""),
            p1 = task.kind.param(1),
            end = tk.at("now() + $4::int8 * interval '1 millisecond'"),
        )
        .into();
        sql.release = format!(
            "UPDATE {t} SET {owner} = NULL, {until} = NULL \
             WHERE {task} = {p1} AND {ids} AND {owner} = $3::text",
            task = task.cmp(""),
            p1 = task.kind.param(1),
        )
        .into();
    } else {
        // Plain keyset reads: a dry run, or a run holding the task's advisory lock.
        let cols = s.item_columns("").join(", ");
        let read = |next: &str| {
            format!("SELECT {cols} FROM {t} WHERE {base}{next} ORDER BY {sort} LIMIT {{limit}}")
        };
        sql.claim_first = read("");
        sql.claim_next = read(&format!(" AND {sort} > {}", s.id.kind.param(3)));
    }

    // Save: one statement per batch, the verdicts as parallel arrays. A NULL status means
    // "leave it"; bookkeeping only where the table has the column.
    let st = status.q();
    let mut sets = vec![format!("{st} = COALESCE(v.st, t.{st})")];
    if let Some(c) = &s.http_status {
        sets.push(format!("{} = v.http", c.quoted()));
    }
    if let Some(c) = &s.attempts {
        sets.push(format!("{q} = COALESCE(t.{q}, 0) + v.att", q = c.quoted()));
    }
    if let Some(c) = &s.last_error {
        sets.push(format!("{} = v.err", c.quoted()));
    }
    if let Some((c, kind)) = &s.checked_at {
        sets.push(format!("{} = {}", c.quoted(), kind.at("v.at")));
    }
    // Compare-and-set: only the row as claimed (task, id, still failed and, with leases,
    // still leased by this worker) is written; RETURNING says which were.
    let mut cas = format!(
        "{task} = {p7} AND {id} = v.id AND {st_t} = {p8}",
        task = task.cmp("t"),
        p7 = task.kind.param(7),
        id = s.id.cmp("t"),
        st_t = status.cmp("t"),
        p8 = status.kind.param(8),
    );
    if leasing && let Some((owner, until, _)) = &s.lease {
        let (owner, until) = (owner.quoted(), until.quoted());
        sets.push(format!("{owner} = NULL, {until} = NULL"));
        cas.push_str(&format!(" AND t.{owner} = $9::text"));
    }
    sql.save = format!(
        "UPDATE {t} AS t SET {sets} \
         FROM UNNEST({ids}, {sts}, $3::int4[], $4::int4[], $5::text[], $6::timestamptz[]) \
           WITH ORDINALITY AS v(id, st, http, att, err, at, ord) \
         WHERE {cas} RETURNING v.ord",
        sets = sets.join(", "),
        ids = s.id.kind.array(1),
        sts = status_array(status.kind, 2),
    )
    .into();

    sql.pending = format!(
        "SELECT COUNT(*) FROM {t} WHERE {task} = {p1} AND {status} = {p2}",
        task = task.cmp(""),
        status = status.cmp(""),
        p1 = task.kind.param(1),
        p2 = status.kind.param(2),
    )
    .into();
    sql.counts = format!(
        "SELECT {st}::text, COUNT(*) FROM {t} WHERE {task} = {p1} GROUP BY 1",
        task = task.cmp(""),
        p1 = task.kind.param(1),
    )
    .into();
    sql.checked_range = s.checked_at.as_ref().map(|(c, kind)| {
        format!(
            "SELECT {min}, {max} FROM {t} WHERE {task} = {p1}",
            min = kind.to_text(&format!("MIN({})", c.quoted())),
            max = kind.to_text(&format!("MAX({})", c.quoted())),
            task = task.cmp(""),
            p1 = task.kind.param(1),
        )
        .into()
    });

    // Import: insert the new ids; with $5 (reset) set existing ones back to failed (url
    // replaced when one is given). One statement, one snapshot: the NOT EXISTS sees the
    // table as it was before the statement. Works without a unique index on (task, id).
    let (url_set, url_col, url_val) = match &s.url {
        Some(u) => (
            format!(", {q} = COALESCE(v.url, t.{q})", q = u.q()),
            format!(", {}", u.q()),
            ", v.url".to_string(),
        ),
        None => Default::default(),
    };
    sql.import = format!(
        "WITH v(id, url) AS (SELECT * FROM UNNEST({ids}, $2::text[])), \
         up AS (UPDATE {t} AS t SET {st} = {p3}{url_set} FROM v \
                WHERE $5::bool AND {task_t} = {p4} AND {id_t} = v.id RETURNING 1), \
         ins AS (INSERT INTO {t} ({task_q}, {id_q}, {st}{url_col}) \
                 SELECT {p4}, v.id, {p3}{url_val} FROM v \
                 WHERE NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {task_t} = {p4} AND {id_t} = v.id) \
                 RETURNING 1) \
         SELECT (SELECT COUNT(*) FROM ins), (SELECT COUNT(*) FROM up)",
        ids = s.id.kind.array(1),
        p3 = status.kind.param(3),
        p4 = task.kind.param(4),
        task_t = task.cmp("t"),
        id_t = s.id.cmp("t"),
        task_q = task.q(),
        id_q = s.id.q(),
    )
    .into();
    sql
}

/// Status values to write, one per verdict: int8 for integer columns, else text.
fn status_array(kind: Kind, n: usize) -> String {
    match kind {
        Kind::Int => format!("${n}::int8[]"),
        Kind::Text | Kind::Other => format!("${n}::text[]"),
    }
}

/// Ids bound as an array of the id column's kind.
fn bind_ids<'q>(q: Query<'q>, kind: Kind, ids: Vec<String>) -> Result<Query<'q>> {
    Ok(match kind {
        Kind::Int => q.bind(
            ids.iter()
                .map(|i| {
                    i.parse::<i64>()
                        .map_err(|_| anyhow!("item id {i:?} is not an integer"))
                })
                .collect::<Result<Vec<i64>>>()?,
        ),
        Kind::Text | Kind::Other => q.bind(ids),
    })
}

/// The id after which the next page starts, bound like the id column.
fn bind_cursor<'q>(q: Query<'q>, kind: Kind, last: &str) -> Result<Query<'q>> {
    Ok(match kind {
        Kind::Int => q.bind(
            last.parse::<i64>()
                .map_err(|_| anyhow!("item id {last:?} is not an integer"))?,
        ),
        Kind::Text | Kind::Other => q.bind(last.to_string()),
    })
}

fn item_from(
    row: &sqlx::postgres::PgRow,
    offset: usize,
    has_url: bool,
    extra: usize,
) -> Result<Item> {
    let text = |i: usize| row.try_get::<Option<String>, _>(offset + i);
    let id = text(0)?.unwrap_or_default();
    let mut col = 1;
    let url = if has_url {
        col += 1;
        text(1)?
    } else {
        None
    };
    let fields = (0..extra)
        .map(|i| text(col + i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Item {
        key: 0,
        id,
        url,
        fields,
    })
}

fn held(m: &StdMutex<HashSet<String>>) -> MutexGuard<'_, HashSet<String>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Inner {
    /// Validates the table and prepares the run. Returns the advisory lock's keys when
    /// `conn` took the task's lock and must be kept for the run.
    async fn open(
        conn: &mut PgConnection,
        connect: PgConnectOptions,
        names: Names,
        opts: StoreOptions,
        mode: OpenMode,
    ) -> Result<(Inner, Option<(String, String)>)> {
        let shown = names.shown.clone();
        let shape = inspect(conn, &names, &opts).await?;
        let read_only = opts.read_only || mode == OpenMode::Status;
        let leasing = shape.lease.is_some() && !read_only && mode == OpenMode::Run;
        let table = shape.table.clone();
        let col_name = |c: &Col| format!("{} of table {table}", c.ident);
        let task = shape.task.kind.val(
            &opts.task,
            opts.task.parse().ok(),
            "--task",
            &col_name(&shape.task),
        )?;
        let status_val = |flag: &str, v: &StatusValue| {
            shape
                .status
                .kind
                .val(v.as_str(), v.as_int(), flag, &col_name(&shape.status))
        };
        let failed = match status_val("--failed-status", &opts.failed) {
            // `recheck status` counts every status and has no --failed-status: its default
            // need not fit an integer column (it then matches nothing, and is never used).
            Err(_) if mode == OpenMode::Status => Val::Int(i64::MIN),
            other => other?,
        };
        if mode == OpenMode::Run {
            status_val("--ok-status", &opts.ok)?;
            if let Some(nf) = &opts.not_found {
                status_val("--not-found-status", nf)?;
            }
        }
        let sql = build_sql(&shape, leasing);
        let mut inner = Inner {
            pool: PgPoolOptions::new()
                .max_connections(opts.db_connections.max(1))
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(connect),
            since: DateTime::<Utc>::from(opts.started),
            opts,
            names,
            shape,
            sql,
            leasing,
            task,
            failed,
            cursor: tokio::sync::Mutex::new(Cursor::default()),
            held: StdMutex::new(HashSet::new()),
            lock: tokio::sync::Mutex::new(None),
        };
        inner.validate(conn, mode, read_only).await?;
        if mode == OpenMode::Run {
            inner.check_task_exists(conn).await?;
        }

        // Without lease columns two runs on the task would both check everything: the
        // second one is refused instead.
        let lock_keys = if mode == OpenMode::Run && !read_only && inner.shape.lease.is_none() {
            let keys = (
                format!("recheck:{}", inner.shape.oid),
                task_key(&inner.task),
            );
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))")
                    .bind(&keys.0)
                    .bind(&keys.1)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| inner.names.err("cannot take the task's lock", e))?;
            if !got {
                bail!(
                    "{shown}: another recheck run holds the task's lock (task {}; table {table} \
                     has no lease columns, so one run at a time); add lease columns to share the \
                     work: recheck init --store {shown} --table {table}",
                    inner.opts.task
                );
            }
            Some(keys)
        } else {
            None
        };
        if leasing {
            let since = inner
                .reap_and_round_start(conn)
                .await
                .with_context(|| format!("{shown}: cannot free the leases of dead workers"))?;
            inner.since = DateTime::<Utc>::from(since);
        }
        Ok((inner, lock_keys))
    }

    /// Runs every statement the mode will use once, on nothing (a page of 0, empty
    /// arrays), in a transaction that is rolled back: a type the statements cannot handle
    /// is a start-up error naming the table, not a mid-run one, and nothing is written.
    async fn validate(
        &self,
        conn: &mut PgConnection,
        mode: OpenMode,
        read_only: bool,
    ) -> Result<()> {
        let what = format!("table {} cannot be used as mapped", self.shape.table);
        let err = |e: anyhow::Error| self.names.err(&what, format!("{e:#}"));
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| self.names.err("cannot start a transaction", e))?;
        let run = async {
            if mode == OpenMode::Run {
                for next in [false, true] {
                    let q = self.claim_query(0, next.then(|| self.id_zero()).as_deref())?;
                    q.fetch_all(&mut *tx).await?;
                }
                if !read_only {
                    self.save_query(&[])?.execute(&mut *tx).await?;
                }
                if self.leasing {
                    for renew in [true, false] {
                        self.held_query(renew, Vec::new())?
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            if mode == OpenMode::Create {
                self.import_query(Vec::new(), false)?
                    .execute(&mut *tx)
                    .await?;
            }
            let q = bind_val(
                bind_val(
                    sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.pending))),
                    &self.task,
                ),
                &self.failed,
            );
            q.fetch_one(&mut *tx).await?;
            anyhow::Ok(())
        };
        let result = run.await.map_err(err);
        let _ = tx.rollback().await;
        result
    }

    /// A task id with no row at all is a typo, not "nothing to check" (SPEC §2).
    async fn check_task_exists(&self, conn: &mut PgConnection) -> Result<()> {
        let (t, task) = (self.shape.table.quoted(), &self.shape.task);
        let found = bind_val(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT 1 FROM {t} WHERE {} = {} LIMIT 1",
                task.cmp(""),
                task.kind.param(1)
            ))),
            &self.task,
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.names.err("cannot look up the task", e))?;
        if found.is_some() {
            return Ok(());
        }
        let known: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT DISTINCT {q}::text FROM {t} WHERE {q} IS NOT NULL LIMIT 10000",
            q = task.q()
        )))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.names.err("cannot list the tasks", e))?;
        Err(super::unknown_task(
            &self.names.shown,
            &self.opts.task,
            &known,
        ))
    }

    /// A cursor value of the id column's kind, for validation.
    fn id_zero(&self) -> String {
        match self.shape.id.kind {
            Kind::Int => "0".into(),
            Kind::Text | Kind::Other => String::new(),
        }
    }

    /// The claim (or, without leases, the keyset read) of one page of `n` items after
    /// `after` (the last id handed out), or from the start.
    fn claim_query(&self, n: usize, after: Option<&str>) -> Result<Query<'static>> {
        let sql = match after {
            None => &self.sql.claim_first,
            Some(_) => &self.sql.claim_next,
        };
        // The page size is spliced as a number (it is one), so the planner sees it.
        let mut q = sqlx::query(AssertSqlSafe(sql.replace("{limit}", &n.to_string())));
        q = bind_val(bind_val(q, &self.task), &self.failed);
        if self.leasing {
            q = q
                .bind(self.since)
                .bind(self.opts.owner.clone())
                .bind(millis(self.opts.lease));
        }
        if let Some(last) = after {
            q = bind_cursor(q, self.shape.id.kind, last)?;
        }
        Ok(q)
    }

    fn save_query(&self, batch: &[Verdict]) -> Result<Query<'static>> {
        let q = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.save)));
        let mut q = bind_ids(
            q,
            self.shape.id.kind,
            batch.iter().map(|v| v.id.clone()).collect(),
        )?;
        let statuses = batch.iter().map(|v| self.opts.status_for(v.outcome));
        q = match self.shape.status.kind {
            Kind::Int => q.bind(
                statuses
                    .map(|s| s.and_then(StatusValue::as_int))
                    .collect::<Vec<Option<i64>>>(),
            ),
            Kind::Text | Kind::Other => q.bind(
                statuses
                    .map(|s| s.map(|s| s.as_str().to_string()))
                    .collect::<Vec<Option<String>>>(),
            ),
        };
        q = q
            .bind(
                batch
                    .iter()
                    .map(|v| v.http_status.map(i32::from))
                    .collect::<Vec<Option<i32>>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|v| i32::try_from(v.attempts).unwrap_or(i32::MAX))
                    .collect::<Vec<i32>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|v| v.error.clone())
                    .collect::<Vec<Option<String>>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|v| DateTime::<Utc>::from(v.checked_at))
                    .collect::<Vec<DateTime<Utc>>>(),
            );
        q = bind_val(bind_val(q, &self.task), &self.failed);
        if self.leasing {
            q = q.bind(self.opts.owner.clone());
        }
        Ok(q)
    }

    /// `renew` / `release` on the given ids of this worker.
    fn held_query(&self, renew: bool, ids: Vec<String>) -> Result<Query<'static>> {
        let sql = if renew {
            &self.sql.renew
        } else {
            &self.sql.release
        };
        let q = bind_val(sqlx::query(AssertSqlSafe(Arc::clone(sql))), &self.task);
        let mut q = bind_ids(q, self.shape.id.kind, ids)?.bind(self.opts.owner.clone());
        if renew {
            q = q.bind(millis(self.opts.lease));
        }
        Ok(q)
    }

    fn import_query(&self, items: Vec<NewItem>, reset: bool) -> Result<Query<'static>> {
        let (ids, urls): (Vec<String>, Vec<Option<String>>) =
            items.into_iter().map(|i| (i.id, i.url)).unzip();
        let q = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.import)));
        let q = bind_ids(q, self.shape.id.kind, ids)?.bind(urls);
        let q = bind_val(q, &self.failed);
        Ok(bind_val(q, &self.task).bind(reset))
    }

    /// Frees the leases held by workers of this host that are no longer running (killed,
    /// crashed): their items need not wait for the lease to expire. Returns when this round
    /// of checks started: this worker's start, or the start of the earliest live worker on
    /// the task (read from its `lease_owner` name), so a worker joining a run does not
    /// check again what the others already checked.
    async fn reap_and_round_start(&self, conn: &mut PgConnection) -> Result<SystemTime> {
        let Some((owner, until, tk)) = &self.shape.lease else {
            return Ok(self.opts.started);
        };
        let (t, task, p1) = (
            self.shape.table.quoted(),
            self.shape.task.cmp(""),
            self.shape.task.kind.param(1),
        );
        let (owner, until) = (owner.quoted(), until.quoted());
        let owners: Vec<(String, Option<bool>)> = bind_val(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {owner}::text, bool_or({until} >= {now}) FROM {t}                  WHERE {task} = {p1} AND {owner} IS NOT NULL GROUP BY 1",
                now = tk.at("now()"),
            ))),
            &self.task,
        )
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
        let free = format!(
            "UPDATE {t} SET {owner} = NULL, {until} = NULL WHERE {task} = {p1} AND {owner} = $2::text"
        );
        let mut since = self.opts.started;
        for (name, live) in &owners {
            if super::owner_is_dead_here(name) {
                let n = bind_val(sqlx::query(AssertSqlSafe(free.as_str())), &self.task)
                    .bind(name.as_str())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                tracing::info!(owner = %name, items = n, "took over the claims of a worker that is gone");
            } else if live.unwrap_or(false)
                && let Some(start) = super::owner_started(name)
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
            let items = self.claim_page(n, cursor.last.as_deref()).await?;
            if let Some(last) = items.last() {
                cursor.last = Some(last.id.clone());
            } else if self.leasing && !cursor.swept {
                // One more pass from the start picks up claims that were released or whose
                // worker died while this one walked past them.
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| self.names.err("cannot get a connection", e))?;
                self.reap_and_round_start(&mut conn).await.map_err(|e| {
                    self.names
                        .err("cannot free the leases of dead workers", format!("{e:#}"))
                })?;
                cursor.swept = true;
                cursor.last = None;
                continue;
            }
            return Ok(items);
        }
    }

    async fn claim_page(&self, n: usize, after: Option<&str>) -> Result<Vec<Item>> {
        let rows = self
            .claim_query(n, after)?
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.names.err("cannot claim items", e))?;
        // A leased claim's rows start with the sort key.
        let offset = usize::from(self.leasing);
        let (has_url, extra) = (self.shape.url.is_some(), self.shape.extras.len());
        let items = rows
            .iter()
            .map(|r| item_from(r, offset, has_url, extra))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| {
                self.names
                    .err("cannot read claimed items", format!("{e:#}"))
            })?;
        if self.leasing {
            held(&self.held).extend(items.iter().map(|i| i.id.clone()));
        }
        Ok(items)
    }

    async fn save(&self, batch: Vec<Verdict>) -> Result<Saved> {
        if self.opts.read_only || batch.is_empty() {
            return Ok(Saved::default());
        }
        // One statement: atomic on its own, one round trip.
        let rows = self
            .save_query(&batch)?
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.store_err("cannot save results", e))?;
        let mut written = vec![false; batch.len()];
        for r in &rows {
            let ord: i64 = r.try_get(0)?;
            if let Some(w) = usize::try_from(ord - 1)
                .ok()
                .and_then(|i| written.get_mut(i))
            {
                *w = true;
            }
        }
        if self.leasing {
            let mut held = held(&self.held);
            for v in &batch {
                held.remove(&v.id);
            }
        }
        Ok(Saved {
            conflicts: (0..batch.len()).filter(|&i| !written[i]).collect(),
        })
    }

    /// A driver error with the URL's secrets scrubbed, still telling the sink (through
    /// [`super::Transient`]) whether trying again may help.
    fn store_err(&self, what: &str, e: sqlx::Error) -> anyhow::Error {
        let transient = super::sqlx_transient(&e);
        self.names.err(what, e).context(super::Transient(transient))
    }

    async fn renew(&self) -> Result<()> {
        if !self.leasing {
            return Ok(());
        }
        let ids: Vec<String> = held(&self.held).iter().cloned().collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.held_query(true, ids)?
            .execute(&self.pool)
            .await
            .map_err(|e| self.names.err("cannot renew leases", e))?;
        Ok(())
    }

    async fn finish(&self) -> Result<()> {
        // Waits for a claim still running (its caller may have given up on it).
        let _cursor = self.cursor.lock().await;
        let mut result = Ok(());
        if self.leasing {
            let ids: Vec<String> = held(&self.held).drain().collect();
            if !ids.is_empty() {
                // Give back the claims of items that got no verdict (a stop, a limit), so
                // another worker can take them at once instead of after the lease.
                result = match self.held_query(false, ids) {
                    Ok(q) => q
                        .execute(&self.pool)
                        .await
                        .map(|_| ())
                        .map_err(|e| self.names.err("cannot release leases", e)),
                    Err(e) => Err(e),
                };
            }
        }
        if let Some(mut lock) = self.lock.lock().await.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))")
                .bind(&lock.keys.0)
                .bind(&lock.keys.1)
                .execute(&mut lock.conn)
                .await;
            let _ = lock.conn.close().await;
        }
        result
    }

    async fn pending(&self) -> Result<u64> {
        let q = bind_val(
            bind_val(
                sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.pending))),
                &self.task,
            ),
            &self.failed,
        );
        let row = q
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.names.err("cannot count items", e))?;
        let n: i64 = row.try_get(0)?;
        Ok(n.max(0) as u64)
    }

    async fn status_counts(&self) -> Result<StatusCounts> {
        let rows = bind_val(
            sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.counts))),
            &self.task,
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.names.err("cannot count items", e))?;
        let mut counts = rows
            .iter()
            .map(|r| {
                let status: Option<String> = r.try_get(0)?;
                let n: i64 = r.try_get(1)?;
                Ok((status.unwrap_or_else(|| "NULL".into()), n.max(0) as u64))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        counts.sort();
        let (oldest, newest) = match &self.sql.checked_range {
            Some(sql) => {
                let row = bind_val(sqlx::query(AssertSqlSafe(Arc::clone(sql))), &self.task)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| self.names.err("cannot read checked_at", e))?;
                (row.try_get(0)?, row.try_get(1)?)
            }
            None => (None, None),
        };
        Ok(StatusCounts {
            counts,
            oldest_checked_at: oldest,
            newest_checked_at: newest,
        })
    }

    async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        let given = items.len() as u64;
        if items.is_empty() {
            return Ok(ImportCounts::default());
        }
        if self.shape.url.is_none() && items.iter().any(|i| i.url.is_some()) {
            bail!(
                "{}: table {} has no {} column for the imported urls",
                self.names.shown,
                self.shape.table,
                self.opts.columns.url
            );
        }
        if self.shape.id.kind == Kind::Int
            && let Some(bad) = items.iter().find(|i| i.id.parse::<i64>().is_err())
        {
            bail!(
                "{}: id {:?} is not an integer, but column {} of table {} holds integers",
                self.names.shown,
                bad.id,
                self.shape.id.ident,
                self.shape.table
            );
        }
        // One row per id: a later line's url wins, as if the lines were applied in turn.
        let mut merged: Vec<NewItem> = Vec::with_capacity(items.len());
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for item in items {
            match at.get(&item.id) {
                Some(&i) => {
                    if item.url.is_some() {
                        merged[i].url = item.url;
                    }
                }
                None => {
                    at.insert(item.id.clone(), merged.len());
                    merged.push(item);
                }
            }
        }
        let row = self
            .import_query(merged, reset)?
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.names.err("cannot import items", e))?;
        let (added, reset): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let (added, reset) = (added.max(0) as u64, reset.max(0) as u64);
        Ok(ImportCounts {
            added,
            reset,
            already: given.saturating_sub(added + reset),
        })
    }
}

/// The task as the advisory lock's second key: integers in canonical form.
fn task_key(task: &Val) -> String {
    match task {
        Val::Int(n) => n.to_string(),
        Val::Text(s) => s.clone(),
    }
}

impl Store for PgStore {
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
