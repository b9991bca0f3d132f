//! The MySQL / MariaDB backend of the SQL protocol: a small pool in READ COMMITTED (no gap
//! locks, so claimers do not get in each other's way), the catalog (`information_schema`),
//! and MySQL's spelling (`?` in order, backquotes, `FOR UPDATE SKIP LOCKED` on MySQL 8 and
//! MariaDB 10.6+, plain `FOR UPDATE` before, `UTC_TIMESTAMP(3)` for leases). Without lease
//! columns, one run per task holds a `GET_LOCK` on a connection of its own. Knows nothing
//! of claims or leases.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use sqlx::mysql::{
    MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions,
    MySqlRow,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row as _};

use super::protocol::SchemaType;
use super::{Backend, Col, Kind, Row, TimeKind, Tx, Val};
use crate::model::rfc3339;
use crate::store::{Ident, ServerError};

/// How long connecting may take before the store gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Query<'q> = sqlx::query::Query<'q, MySql, MySqlArguments>;

/// A MySQL / MariaDB database.
pub struct MyDb {
    pool: MySqlPool,
    options: MySqlConnectOptions,
    name: String,
    secrets: Vec<String>,
    /// The server knows `SKIP LOCKED`; older ones wait instead.
    skip_locked: bool,
}

fn scrub(msg: &str, secrets: &[String]) -> String {
    let mut msg = msg.replace(['\n', '\r'], " ");
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        msg = msg.replace(s.as_str(), "***");
    }
    msg
}

impl MyDb {
    fn err(&self, what: &str, e: sqlx::Error) -> anyhow::Error {
        err(&self.name, &self.secrets, what, e)
    }

    /// Parses the URL (`mysql://` or `mariadb://`) and connects a pool of `connections`.
    pub async fn connect(url: &str, shown: &str, connections: u32) -> Result<MyDb> {
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
        // One connection first, so the message says why it failed (refused, access
        // denied...) rather than that the pool timed out.
        let version: String = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Ok(Ok(mut probe)) => {
                let v = sqlx::query_scalar("SELECT CAST(VERSION() AS CHAR)")
                    .fetch_one(&mut probe)
                    .await
                    .map_err(|e| err(&name, &secrets, "cannot read the server version", e))?;
                let _ = probe.close().await;
                v
            }
            Ok(Err(e)) => return Err(err(&name, &secrets, "cannot connect", e)),
            Err(_) => bail!(
                "{name}: cannot connect: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        let pool = MySqlPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // No gap locks, and a locking read releases the rows it does not
                    // return: claimers do not get in each other's way.
                    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(|e| err(&name, &secrets, "cannot connect", e))?;
        Ok(MyDb {
            pool,
            options,
            skip_locked: has_skip_locked(&version),
            name,
            secrets,
        })
    }
}

fn err(name: &str, secrets: &[String], what: &str, e: sqlx::Error) -> anyhow::Error {
    anyhow::Error::new(ServerError::from_sqlx(
        &format!("{name}: {what}"),
        &e,
        |t| scrub(t, secrets),
    ))
}

/// MySQL 8 and MariaDB 10.6 brought `SKIP LOCKED`.
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

fn kind_of(t: &str) -> Kind {
    match t {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => Kind::Int,
        "decimal" | "numeric" | "float" | "double" | "real" | "bit" => Kind::Num,
        _ => Kind::Text,
    }
}

fn time_of(t: &str) -> Option<TimeKind> {
    match t {
        "datetime" | "timestamp" => Some(TimeKind::Naive),
        "char" | "varchar" | "text" | "tinytext" | "mediumtext" | "longtext" => {
            Some(TimeKind::Text)
        }
        _ => None,
    }
}

fn bind<'q>(q: Query<'q>, v: Val) -> Query<'q> {
    match v {
        Val::Null => q.bind(None::<String>),
        Val::Int(n) => q.bind(n),
        Val::Text(s) => q.bind(s),
        Val::Time(t, TimeKind::Text) => q.bind(rfc3339(t)),
        Val::Time(t, _) => q.bind(chrono::DateTime::<chrono::Utc>::from(t).naive_utc()),
        Val::NullTime(TimeKind::Text) => q.bind(None::<String>),
        Val::NullTime(_) => q.bind(None::<chrono::NaiveDateTime>),
    }
}

fn query(sql: String, args: Vec<Val>) -> Query<'static> {
    args.into_iter().fold(sqlx::query(AssertSqlSafe(sql)), bind)
}

/// A row as text, whatever the column types the statement returns.
fn row_text(r: &MySqlRow) -> Result<Row, sqlx::Error> {
    (0..r.len())
        .map(|i| {
            if let Ok(v) = r.try_get::<Option<String>, _>(i) {
                return Ok(v);
            }
            if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                return Ok(v.map(|n| n.to_string()));
            }
            if let Ok(v) = r.try_get::<Option<f64>, _>(i) {
                return Ok(v.map(|n| n.to_string()));
            }
            r.try_get::<Option<Vec<u8>>, _>(i)
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
        })
        .collect()
}

/// A transaction on one pooled connection.
pub struct MyTx {
    tx: sqlx::Transaction<'static, MySql>,
    name: String,
    secrets: Vec<String>,
}

impl Tx for MyTx {
    async fn query(&mut self, sql: String, args: Vec<Val>) -> Result<Vec<Row>> {
        let rows = query(sql, args)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| err(&self.name, &self.secrets, "query failed", e))?;
        rows.iter()
            .map(row_text)
            .collect::<Result<_, _>>()
            .map_err(|e| err(&self.name, &self.secrets, "cannot read a row", e))
    }

    async fn exec(&mut self, sql: String, args: Vec<Val>) -> Result<u64> {
        Ok(query(sql, args)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| err(&self.name, &self.secrets, "statement failed", e))?
            .rows_affected())
    }

    async fn commit(self) -> Result<()> {
        self.tx
            .commit()
            .await
            .map_err(|e| err(&self.name, &self.secrets, "cannot commit", e))
    }
}

/// The `GET_LOCK` and the connection that holds it.
pub struct MyLock {
    conn: MySqlConnection,
    name: String,
}

impl Backend for MyDb {
    type Tx = MyTx;
    type Lock = MyLock;

    fn name(&self) -> &str {
        &self.name
    }

    async fn begin(&self) -> Result<MyTx> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.err("cannot start a transaction", e))?;
        Ok(MyTx {
            tx,
            name: self.name.clone(),
            secrets: self.secrets.clone(),
        })
    }

    async fn begin_read(&self) -> Result<MyTx> {
        self.begin().await
    }

    async fn columns(&self, table: &Ident) -> Result<Option<(Ident, Vec<Col>)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ORDINAL_POSITION",
        )
        .bind(table.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(&format!("cannot read the columns of table {table}"), e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let cols = rows
            .into_iter()
            .filter_map(|(n, t)| {
                let t = t.to_ascii_lowercase();
                Some(Col {
                    name: Ident::new("column", &n).ok()?,
                    kind: kind_of(&t),
                    time: time_of(&t),
                    type_name: t,
                })
            })
            .collect();
        Ok(Some((table.clone(), cols)))
    }

    async fn tables(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.tables \
             WHERE table_schema = DATABASE() ORDER BY TABLE_NAME",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default()
    }

    async fn try_lock(&self, table: &str, task: &str) -> Result<Option<MyLock>> {
        let mut conn = self
            .options
            .connect()
            .await
            .map_err(|e| self.err("cannot connect", e))?;
        // MySQL allows 64 characters in a lock name: a hash of database, table and task.
        let name: String =
            sqlx::query_scalar("SELECT CONCAT('recheck:', SHA1(CONCAT_WS('/', DATABASE(), ?, ?)))")
                .bind(table)
                .bind(task)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| self.err("cannot name the task's lock", e))?;
        let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)")
            .bind(name.as_str())
            .fetch_one(&mut conn)
            .await
            .map_err(|e| self.err("cannot take the task's lock", e))?;
        if got == Some(1) {
            Ok(Some(MyLock { conn, name }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    async fn keep_alive(&self, lock: &mut MyLock) -> Result<()> {
        // Keeps the lock's idle connection from reaching the server's wait_timeout.
        lock.conn
            .ping()
            .await
            .map_err(|e| self.err("the connection holding the task's lock failed", e))
    }

    async fn unlock(&self, mut lock: MyLock) {
        let _ = sqlx::query("DO RELEASE_LOCK(?)")
            .bind(lock.name.as_str())
            .execute(&mut lock.conn)
            .await;
        let _ = lock.conn.close().await;
    }

    fn placeholder(&self, out: &mut String, _n: usize, _v: &Val, _kind: Kind) {
        out.push('?');
    }

    fn quote(&self, ident: &str) -> String {
        format!("`{ident}`")
    }

    fn text(&self, e: &str) -> String {
        format!("CAST({e} AS CHAR)")
    }

    fn time_text(&self, e: &str, kind: TimeKind) -> String {
        match kind {
            TimeKind::Text => e.to_string(),
            _ => format!(
                "CONCAT(DATE_FORMAT({e}, '%Y-%m-%dT%H:%i:%s.'), LPAD(FLOOR(MICROSECOND({e}) / 1000), 3, '0'), 'Z')"
            ),
        }
    }

    fn now(&self, kind: TimeKind) -> Option<String> {
        // Text columns get the worker's clock, bound in the same RFC 3339 form.
        (kind != TimeKind::Text).then(|| "UTC_TIMESTAMP(3)".to_string())
    }

    fn now_plus_ms(&self, kind: TimeKind, ms: &str) -> Option<String> {
        (kind != TimeKind::Text)
            .then(|| format!("(UTC_TIMESTAMP(3) + INTERVAL ({ms} * 1000) MICROSECOND)"))
    }

    fn for_update(&self, skip_locked: bool) -> &'static str {
        if skip_locked && self.skip_locked {
            " FOR UPDATE SKIP LOCKED"
        } else {
            " FOR UPDATE"
        }
    }

    fn column_type(&self, column: SchemaType) -> &'static str {
        match column {
            SchemaType::Key => "VARCHAR(191)",
            SchemaType::Status => "VARCHAR(64)",
            SchemaType::Owner => "VARCHAR(255)",
            SchemaType::Text => "TEXT",
            SchemaType::Int => "INT",
            SchemaType::Time => "DATETIME(3)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_locked_by_version() {
        assert!(has_skip_locked("8.0.36"));
        assert!(!has_skip_locked("5.7.44-log"));
        assert!(has_skip_locked("10.11.6-MariaDB-0+deb12u1"));
        assert!(!has_skip_locked("10.5.23-MariaDB"));
        assert!(has_skip_locked("11.4.2-MariaDB"));
    }

    #[test]
    fn scrub_hides_secrets() {
        let s = scrub(
            "access denied for hunter2\nagain hunter2",
            &["hunter2".into()],
        );
        assert_eq!(s, "access denied for *** again ***");
    }
}
