//! The PostgreSQL backend of the SQL protocol: a small pool (claims, saves and renewals,
//! not one connection per HTTP request), the catalog, and PostgreSQL's spelling (`$N` with
//! casts, `FOR UPDATE SKIP LOCKED`, the server's clock for leases). Knows nothing of claims
//! or leases.
//!
//! `checked_at` and `lease_until` may be `timestamptz` (the default schema), `timestamp`
//! (read and written as UTC) or text (RFC 3339 UTC with milliseconds, like the SQLite
//! store; it sorts as text). Without lease columns, one run per task holds a session
//! advisory lock on a connection of its own (this needs a direct connection or session
//! pooling, not a transaction-pooling proxy).

use std::time::Duration;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Column, Connection, Postgres, Row as _, TypeInfo};

use super::protocol::SchemaType;
use super::{Backend, Col, Kind, Row, TimeKind, Tx, Val};
use crate::model::rfc3339;
use crate::store::{Ident, ServerError};

/// How long connecting (TCP, TLS, authentication) may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a statement waits for a pooled connection mid-run.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);
/// `to_char` format giving the RFC 3339 text every store writes (`2026-01-02T03:04:05.678Z`).
const RFC3339_FMT: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"#;

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// A PostgreSQL database.
pub struct PgDb {
    pool: PgPool,
    connect: PgConnectOptions,
    names: Names,
}

/// The redacted URL for messages, and what must never appear in one.
#[derive(Clone)]
struct Names {
    shown: String,
    secrets: Vec<String>,
}

impl Names {
    fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(['\n', '\r'], " ");
        for s in &self.secrets {
            text = text.replace(s.as_str(), "***");
        }
        text
    }

    /// `shown: what: cause` on one line, secrets scrubbed, telling `store::is_transient`
    /// whether trying again may help.
    fn err(&self, what: &str, e: sqlx::Error) -> anyhow::Error {
        anyhow::Error::new(ServerError::from_sqlx(
            &format!("{}: {what}", self.shown),
            &e,
            |t| self.scrub(t),
        ))
    }
}

impl PgDb {
    /// Connects to `url` (`shown` is the URL with its password redacted, for messages).
    pub async fn connect(url: &str, shown: &str, connections: u32) -> Result<PgDb> {
        let (connect, names) = connect_options(url, shown)?;
        // One connection first, so a refused connection says why, not that the pool timed
        // out.
        let probe = connect_one(&connect, &names).await?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(connect.clone());
        Ok(PgDb {
            pool,
            connect,
            names,
        })
    }
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
    let mut options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
        anyhow!(
            "{}: not a usable PostgreSQL URL: {}",
            names.shown,
            names.scrub(&e.to_string())
        )
    })?;
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
        Err(_) => Err(anyhow!(
            "{}: cannot connect: no answer within {}s",
            names.shown,
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

fn kind_of(typname: &str) -> Kind {
    match typname {
        "int2" | "int4" | "int8" => Kind::Int,
        "text" | "varchar" => Kind::Text,
        _ => Kind::Other,
    }
}

fn time_of(typname: &str) -> Option<TimeKind> {
    match typname {
        "timestamptz" => Some(TimeKind::Zoned),
        "timestamp" => Some(TimeKind::Naive),
        "text" | "varchar" => Some(TimeKind::Text),
        _ => None,
    }
}

/// A `timestamptz` expression in a column's representation.
fn at(kind: TimeKind, e: &str) -> String {
    match kind {
        TimeKind::Zoned => e.to_string(),
        TimeKind::Naive => format!("(({e}) AT TIME ZONE 'UTC')"),
        TimeKind::Text => format!("to_char(({e}) AT TIME ZONE 'UTC', {RFC3339_FMT})"),
    }
}

fn bind<'q>(q: Query<'q>, v: Val) -> Query<'q> {
    match v {
        Val::Null => q.bind(None::<String>),
        Val::Int(n) => q.bind(n),
        Val::Text(s) => q.bind(s),
        Val::Time(t, TimeKind::Text) => q.bind(rfc3339(t)),
        Val::Time(t, _) => q.bind(DateTime::<Utc>::from(t)),
        Val::NullTime(TimeKind::Text) => q.bind(None::<String>),
        Val::NullTime(_) => q.bind(None::<DateTime<Utc>>),
    }
}

fn query(sql: String, args: Vec<Val>) -> Query<'static> {
    args.into_iter().fold(sqlx::query(AssertSqlSafe(sql)), bind)
}

/// A row as text, whatever the column types the statement returns.
fn row_text(r: &PgRow) -> Result<Row, sqlx::Error> {
    (0..r.columns().len())
        .map(|i| {
            Ok(match r.columns()[i].type_info().name() {
                "INT8" => r.try_get::<Option<i64>, _>(i)?.map(|n| n.to_string()),
                "INT4" => r.try_get::<Option<i32>, _>(i)?.map(|n| n.to_string()),
                "INT2" => r.try_get::<Option<i16>, _>(i)?.map(|n| n.to_string()),
                "BOOL" => r.try_get::<Option<bool>, _>(i)?.map(|b| b.to_string()),
                _ => r.try_get::<Option<String>, _>(i)?,
            })
        })
        .collect()
}

/// A transaction on one pooled connection.
pub struct PgTx {
    tx: sqlx::Transaction<'static, Postgres>,
    names: Names,
}

impl Tx for PgTx {
    async fn query(&mut self, sql: String, args: Vec<Val>) -> Result<Vec<Row>> {
        let rows = query(sql, args)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| self.names.err("query failed", e))?;
        rows.iter()
            .map(row_text)
            .collect::<Result<_, _>>()
            .map_err(|e| self.names.err("cannot read a row", e))
    }

    async fn exec(&mut self, sql: String, args: Vec<Val>) -> Result<u64> {
        Ok(query(sql, args)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| self.names.err("statement failed", e))?
            .rows_affected())
    }

    async fn commit(self) -> Result<()> {
        self.tx
            .commit()
            .await
            .map_err(|e| self.names.err("cannot commit", e))
    }
}

/// The advisory lock's connection and keys.
pub struct PgLock {
    conn: PgConnection,
    keys: (String, String),
}

impl Backend for PgDb {
    type Tx = PgTx;
    type Lock = PgLock;

    fn name(&self) -> &str {
        &self.names.shown
    }

    async fn begin(&self) -> Result<PgTx> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.names.err("cannot start a transaction", e))?;
        Ok(PgTx {
            tx,
            names: self.names.clone(),
        })
    }

    async fn begin_read(&self) -> Result<PgTx> {
        self.begin().await
    }

    async fn columns(&self, table: &Ident) -> Result<Option<(Ident, Vec<Col>)>> {
        // The exact name first, then folded to lower case (how PostgreSQL stores unquoted
        // names).
        let mut tries = vec![table.clone()];
        let lower = table.as_str().to_ascii_lowercase();
        if lower != table.as_str() {
            tries.push(Ident::new("--table", &lower)?);
        }
        for t in tries {
            let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1::text)::oid::int8")
                .bind(t.quoted())
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.names.err(&format!("cannot look up table {table}"), e))?;
            let Some(oid) = oid else { continue };
            // Domains count as their base type.
            let cols: Vec<(String, String)> = sqlx::query_as(
                "SELECT a.attname::text, \
                        (SELECT b.typname::text FROM pg_type b \
                          WHERE b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END) \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
            )
            .bind(oid)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.names.err("cannot read the table's columns", e))?;
            let cols = cols
                .into_iter()
                .filter_map(|(n, typ)| {
                    Some(Col {
                        name: Ident::new("column", &n).ok()?,
                        kind: kind_of(&typ),
                        time: time_of(&typ),
                        type_name: typ,
                    })
                })
                .collect();
            return Ok(Some((t, cols)));
        }
        Ok(None)
    }

    async fn tables(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND pg_table_is_visible(c.oid) \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1 LIMIT 21",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default()
    }

    async fn try_lock(&self, table: &str, task: &str) -> Result<Option<PgLock>> {
        let mut conn = connect_one(&self.connect, &self.names).await?;
        let keys = (format!("recheck:{table}"), task.to_string());
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))")
                .bind(&keys.0)
                .bind(&keys.1)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| self.names.err("cannot take the task's lock", e))?;
        if got {
            Ok(Some(PgLock { conn, keys }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    async fn unlock(&self, mut lock: PgLock) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))")
            .bind(&lock.keys.0)
            .bind(&lock.keys.1)
            .execute(&mut lock.conn)
            .await;
        let _ = lock.conn.close().await;
    }

    fn placeholder(&self, out: &mut String, n: usize, v: &Val, kind: Kind) {
        let (open, cast) = match v {
            Val::Int(_) => ("", "::int8"),
            Val::Time(_, TimeKind::Zoned) | Val::NullTime(TimeKind::Zoned) => ("", "::timestamptz"),
            Val::Time(_, TimeKind::Naive) | Val::NullTime(TimeKind::Naive) => {
                ("(", "::timestamptz AT TIME ZONE 'UTC')")
            }
            Val::Null if kind == Kind::Int => ("", "::int8"),
            _ => ("", "::text"),
        };
        out.push_str(open);
        out.push('$');
        crate::model::push_decimal(out, n as u64);
        out.push_str(cast);
    }

    fn quote(&self, ident: &str) -> String {
        format!("\"{ident}\"")
    }

    fn compare_expr(&self, col_sql: &str, col: &Col) -> String {
        match col.kind {
            Kind::Int | Kind::Text => col_sql.to_string(),
            _ => format!("{col_sql}::text"),
        }
    }

    fn text(&self, e: &str) -> String {
        format!("({e})::text")
    }

    fn time_text(&self, e: &str, kind: TimeKind) -> String {
        match kind {
            TimeKind::Zoned => format!("to_char(({e}) AT TIME ZONE 'UTC', {RFC3339_FMT})"),
            TimeKind::Naive => format!("to_char({e}, {RFC3339_FMT})"),
            TimeKind::Text => format!("({e})::text"),
        }
    }

    fn now(&self, kind: TimeKind) -> Option<String> {
        Some(at(kind, "now()"))
    }

    fn now_plus_ms(&self, kind: TimeKind, ms: &str) -> Option<String> {
        Some(at(
            kind,
            &format!("now() + {ms} * interval '1 millisecond'"),
        ))
    }

    fn for_update(&self, skip_locked: bool) -> &'static str {
        if skip_locked {
            " FOR UPDATE SKIP LOCKED"
        } else {
            " FOR UPDATE"
        }
    }

    fn column_type(&self, column: SchemaType) -> &'static str {
        match column {
            SchemaType::Int => "INTEGER",
            SchemaType::Time => "TIMESTAMPTZ",
            _ => "TEXT",
        }
    }
}
