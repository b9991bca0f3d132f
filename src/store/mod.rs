//! Stage "store": where items live. Parses `--store` once into a [`StoreSpec`], opens the
//! backend, and hides it behind the small, batch-shaped [`Store`] trait. The checker never
//! sees which backend it talks to; a backend never sees HTTP.

pub mod json;
pub mod jsondoc;
pub mod jsonl;
pub mod lock;
pub mod sql;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::model::{Item, Outcome, StatusValue, Verdict};

/// The default store: a SQLite file in the working directory.
pub const DEFAULT_STORE: &str = "recheck.db";
/// The default table of SQL stores.
pub const DEFAULT_TABLE: &str = "items";

/// Which backend `--store` names, and where it is. Parsed once; never holds a password in
/// its `Debug`/`Display` form.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `sqlite:PATH`, or a path ending `.db`, `.sqlite`, `.sqlite3`.
    Sqlite(PathBuf),
    /// `json:PATH`, or a path ending `.json`.
    Json(PathBuf),
    /// `jsonl:PATH`, or a path ending `.jsonl`.
    Jsonl(PathBuf),
    /// `postgres://` / `postgresql://` URL.
    Postgres(String),
    /// `mysql://` / `mariadb://` URL.
    Mysql(String),
}

impl StoreSpec {
    /// Parses the `--store` spelling of docs/reference.md §2.1.
    pub fn parse(s: &str) -> Result<StoreSpec> {
        let s = s.trim();
        if s.is_empty() {
            bail!("--store is empty");
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(StoreSpec::Postgres(s.to_string()));
        }
        if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            return Ok(StoreSpec::Mysql(s.to_string()));
        }
        for (prefix, make) in [
            ("sqlite:", StoreSpec::Sqlite as fn(PathBuf) -> StoreSpec),
            ("json:", StoreSpec::Json),
            ("jsonl:", StoreSpec::Jsonl),
        ] {
            if let Some(rest) = s.strip_prefix(prefix) {
                // `sqlite://path` is a common spelling too.
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                if rest.is_empty() {
                    bail!("--store {s:?} names no file");
                }
                return Ok(make(PathBuf::from(rest)));
            }
        }
        let ext = Path::new(s)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("db" | "sqlite" | "sqlite3") => Ok(StoreSpec::Sqlite(s.into())),
            Some("json") => Ok(StoreSpec::Json(s.into())),
            Some("jsonl" | "ndjson") => Ok(StoreSpec::Jsonl(s.into())),
            _ => bail!(
                "--store {s:?}: cannot tell the backend; use a path ending .db/.sqlite/.sqlite3/.json/.jsonl, \
                 or a sqlite:/json:/jsonl: prefix, or a postgres:// or mysql:// URL"
            ),
        }
    }

    /// The file behind a file-based store.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StoreSpec::Sqlite(p) | StoreSpec::Json(p) | StoreSpec::Jsonl(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreSpec::Json(p) => write!(f, "json:{}", p.display()),
            StoreSpec::Jsonl(p) => write!(f, "jsonl:{}", p.display()),
            StoreSpec::Postgres(u) | StoreSpec::Mysql(u) => f.write_str(&redact_url_password(u)),
        }
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreSpec({self})")
    }
}

/// Replaces the password of a URL (`scheme://user:pass@host`, or a `password=` query
/// parameter, which libpq-style URLs accept) with `***`.
pub fn redact_url_password(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let secret_param = |k: &str| {
                let k = k.to_ascii_lowercase();
                k == "password" || k == "sslpassword" || k == "pass"
            };
            if parsed.query_pairs().any(|(k, _)| secret_param(&k)) {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret_param(&k) {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        // Unparseable: do not risk echoing a secret.
        Err(_) => match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            _ => u.split('?').next().unwrap_or_default().to_string(),
        },
    }
}

/// A table or column name, checked against `[A-Za-z_][A-Za-z0-9_]*` so it can be quoted
/// into SQL safely. Never built from unchecked text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Checks `name` (what = the flag or option that gave it, for the error message).
    pub fn new(what: &str, name: &str) -> Result<Ident> {
        let mut chars = name.chars();
        let ok = match chars.next() {
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
            _ => false,
        };
        if !ok {
            bail!("{what} {name:?} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)");
        }
        Ok(Ident(name.to_string()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL (`"name"`: SQLite, PostgreSQL), safe because of the check in
    /// [`Ident::new`].
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the store's table (or JSON fields) map to recheck's names (docs/reference.md §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// `--table` (SQL stores only).
    pub table: Ident,
    /// `--task-column`, default `task_id`.
    pub task: Ident,
    /// `--id-column`, default `item_id` (JSON also accepts `id`).
    pub id: Ident,
    /// `--status-column`, default `status`.
    pub status: Ident,
    /// `--url-column`, default `url`.
    pub url: Ident,
}

impl Default for Columns {
    fn default() -> Self {
        let ident = |s: &str| Ident(s.to_string());
        Columns {
            table: ident(DEFAULT_TABLE),
            task: ident("task_id"),
            id: ident("item_id"),
            status: ident("status"),
            url: ident("url"),
        }
    }
}

/// The bookkeeping columns a store fills when it has them (docs/reference.md §3.4).
pub const BOOKKEEPING: [&str; 4] = ["http_status", "attempts", "last_error", "checked_at"];

/// Everything a store needs to know to serve one run (or one `status`/`import`).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The task whose items are served.
    pub task: String,
    /// Table and column names.
    pub columns: Columns,
    /// The status that marks an item to re-check.
    pub failed: StatusValue,
    /// Written when an item is OK.
    pub ok: StatusValue,
    /// Written on 404/410, when given.
    pub not_found: Option<StatusValue>,
    /// Written for outcome `dead` (`--dead-status`), when dead rules are given.
    pub dead: Option<StatusValue>,
    /// `--ignore-schedule`: claim failed items whose `next_check_at` is still ahead.
    pub ignore_schedule: bool,
    /// The schedule's columns the run's flags need, with the flag (`("next_check_at",
    /// "--recheck-backoff")`): a table without one is refused at open, so a schedule flag
    /// never does nothing.
    pub schedule_columns: Vec<(&'static str, &'static str)>,
    /// Extra columns the URL template reads (`{COLUMN}`), validated at open.
    pub extra_columns: Vec<Ident>,
    /// The run reads each item's own URL (no `--url`): the url column must exist.
    pub need_url: bool,
    /// `--dry-run`: never write, never create.
    pub read_only: bool,
    /// How long a claim lasts unless renewed (`--lease`), on stores that share work.
    pub lease: std::time::Duration,
    /// This worker's name in `lease_owner`: `host/pid/start-ms`, so another worker can tell
    /// when it started.
    pub owner: String,
    /// When this worker started: items checked since then are not checked again.
    pub started: std::time::SystemTime,
    /// Connections to a database server (PostgreSQL, MySQL): the feeder's claims, the
    /// sink's saves and lease renewals, not one per HTTP request.
    pub db_connections: u32,
}

/// Default `--lease`.
pub const DEFAULT_LEASE: &str = "2m";

/// This process's worker name for `lease_owner`: `host/pid/start-unix-ms`.
pub fn owner_name(started: std::time::SystemTime) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let ms = started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{host}/{}/{ms}", std::process::id())
}

/// Whether the owner is a process of this host that no longer runs (it crashed or was
/// killed): its leases need not wait for their expiry. `false` when unsure.
pub fn owner_is_dead_here(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, '/');
    let (Some(_start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    let me = owner_name(std::time::UNIX_EPOCH);
    let my_host = me.rsplitn(3, '/').nth(2).unwrap_or_default();
    // /proc tells on Linux; elsewhere assume alive and let the lease expire.
    host == my_host
        && pid != std::process::id()
        && Path::new("/proc/self").exists()
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// The start time encoded in an [`owner_name`], if it is one.
pub fn owner_started(owner: &str) -> Option<std::time::SystemTime> {
    let ms: u64 = owner.rsplit('/').next()?.parse().ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

impl StoreOptions {
    /// Options for `task` in the default layout: status `failed` marks items to check, `ok`
    /// is written, default lease, this process as the owner. For `status`, `import` and
    /// tests; `run` builds its options from the validated config.
    pub fn basic(task: &str, columns: Columns, failed: StatusValue) -> StoreOptions {
        let started = std::time::SystemTime::now();
        StoreOptions {
            task: task.to_string(),
            columns,
            failed,
            ok: StatusValue::new("ok"),
            not_found: None,
            dead: None,
            ignore_schedule: false,
            schedule_columns: Vec::new(),
            extra_columns: Vec::new(),
            need_url: false,
            read_only: false,
            lease: std::time::Duration::from_secs(120),
            owner: owner_name(started),
            started,
            db_connections: 2,
        }
    }

    /// The status to write for an outcome, or `None` to leave the status as it is.
    pub fn status_for(&self, outcome: Outcome) -> Option<&StatusValue> {
        match outcome {
            Outcome::Ok => Some(&self.ok),
            Outcome::NotFound => self.not_found.as_ref(),
            Outcome::Dead => self.dead.as_ref(),
            Outcome::StillFailed | Outcome::Error | Outcome::Deferred => None,
        }
    }
}

/// A new item for `recheck import`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    /// The item's id.
    pub id: String,
    /// Its URL, if the input gave one.
    pub url: Option<String>,
}

/// What one [`Store::save`] did with its batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    /// Positions (in the batch) of verdicts not written because their row changed or was
    /// replaced since it was claimed (compare-and-set on task, id and status): the other
    /// change is kept.
    pub conflicts: Vec<usize>,
}

/// What `recheck import` did with one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportCounts {
    /// New items, added with the failed status.
    pub added: u64,
    /// Ids the task already had, left as they were.
    pub already: u64,
    /// Ids the task already had, set back to failed (`--reset`).
    pub reset: u64,
}

impl std::ops::AddAssign for ImportCounts {
    fn add_assign(&mut self, o: ImportCounts) {
        self.added += o.added;
        self.already += o.already;
        self.reset += o.reset;
    }
}

/// A store failure that may pass if the write is tried again a little later: a lock held by
/// another process (SQLite `BUSY`/`LOCKED`), a deadlock or lock-wait timeout, a dropped or
/// refused connection to the database server. Anything else (disk full, permission lost, a
/// constraint) is final. Looks through the whole `anyhow` chain.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(t) = c.downcast_ref::<Transient>() {
            return t.0;
        }
        if let Some(t) = c.downcast_ref::<ServerError>() {
            return t.transient;
        }
        if let Some(r) = c.downcast_ref::<rusqlite::Error>() {
            return matches!(
                r.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            );
        }
        if let Some(s) = c.downcast_ref::<sqlx::Error>() {
            return sqlx_transient(s);
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::TimedOut
                    | K::UnexpectedEof
            );
        }
        false
    })
}

/// Whether a database server's error may pass on a retry (see [`is_transient`]).
fn sqlx_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                // PostgreSQL: serialization failure, deadlock, lock not available, admin
                // shutdown / cannot connect now. MySQL/MariaDB: deadlock, lock wait timeout
                // (their SQLSTATE 40001 / HY000 carry the same meaning).
                Some("40001" | "40P01" | "55P03" | "57P01" | "57P03")
            ) || db.message().contains("Deadlock found")
                || db.message().contains("Lock wait timeout")
        }
        _ => false,
    }
}

/// A database server's error, its message scrubbed of secrets, and whether trying again
/// may help (see [`is_transient`]).
#[derive(Debug, Clone)]
pub struct ServerError {
    /// The message, on one line, with every secret replaced by `***`.
    pub message: String,
    /// Whether the cause may pass (deadlock, dropped connection...).
    pub transient: bool,
    /// The server rolled the transaction back for a deadlock, a lock wait timeout or a
    /// serialization failure: running the same transaction again is safe.
    pub rolled_back: bool,
}

impl ServerError {
    /// The error of a database server's driver, its message scrubbed by `scrub`.
    pub fn from_sqlx(what: &str, e: &sqlx::Error, scrub: impl Fn(&str) -> String) -> Self {
        let rolled_back = match e {
            sqlx::Error::Database(db) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
                    || db
                        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        .is_some_and(|m| matches!(m.number(), 1205 | 1213))
            }
            _ => false,
        };
        ServerError {
            message: format!("{what}: {}", scrub(&e.to_string())),
            transient: sqlx_transient(e) || rolled_back,
            rolled_back,
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerError {}

/// Marks an error as transient (`Transient(true)`) or final (`Transient(false)`) for
/// [`is_transient`], where the driver's own error does not tell.
#[derive(Debug, Clone, Copy)]
pub struct Transient(pub bool);

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 {
            "transient store error"
        } else {
            "store error"
        })
    }
}

impl std::error::Error for Transient {}

/// Levenshtein distance between two strings, by characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The task ids of `known` closest to `task` (edit distance, then shared prefix), at most
/// `n`, for "no such task" messages.
pub fn closest_tasks(task: &str, known: &[String], n: usize) -> Vec<String> {
    let distance = edit_distance;
    let mut scored: Vec<(usize, &String)> = known.iter().map(|k| (distance(task, k), k)).collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, k)| k.clone()).collect()
}

/// The one-line refusal of a run on a task the store has no row of (docs/reference.md §2.5).
pub fn unknown_task(store: &str, task: &str, known: &[String]) -> anyhow::Error {
    if known.is_empty() {
        return anyhow::anyhow!("{store}: no task {task:?} (the store has no items)");
    }
    let close = closest_tasks(task, known, 3);
    anyhow::anyhow!(
        "{store}: no task {task:?}; closest task ids: {}",
        close
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Counts of a task's items per status, for `recheck status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatusCounts {
    /// `(status as text, count)`, sorted by status text.
    pub counts: Vec<(String, u64)>,
    /// Oldest `checked_at`, where the store has it.
    pub oldest_checked_at: Option<String>,
    /// Newest `checked_at`, where the store has it.
    pub newest_checked_at: Option<String>,
    /// The failed items by schedule, where the store has `next_check_at` (else `None`).
    pub schedule: Option<ScheduleCounts>,
}

/// A task's failed items by schedule (`next_check_at`), for `status` and the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleCounts {
    /// Failed items not due yet (`next_check_at` ahead) that nobody checked since the
    /// run started: the ones a run skips. For `status`, every failed item not due yet.
    pub not_due: u64,
    /// The earliest `next_check_at` still ahead among the failed items, RFC 3339 UTC.
    pub next_due_at: Option<String>,
    /// Failed items no run has checked yet (`checks` 0, or no `checked_at`).
    pub never_checked: u64,
}

/// A backend. Shaped for batches: a run claims pages of items and saves pages of verdicts,
/// so any number of items streams through a fixed amount of memory.
pub trait Store: Send + Sync + 'static {
    /// Claims up to `n` more failed items of the task. An empty page means none are left.
    /// An item is handed out at most once per run.
    fn claim(&self, n: usize) -> impl Future<Output = Result<Vec<Item>>> + Send;

    /// How many failed items of the task are waiting now (for progress; a snapshot, other
    /// workers may take some).
    fn pending(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Writes a batch of verdicts (status per [`StoreOptions::status_for`], bookkeeping
    /// where the store has it) durably, in one transaction where the backend has them.
    /// A row that changed since it was claimed is left alone and reported in
    /// [`Saved::conflicts`]. An error means nothing of the batch was written; callers ask
    /// [`is_transient`] whether trying again may help.
    fn save(&self, batch: std::sync::Arc<[Verdict]>) -> impl Future<Output = Result<Saved>> + Send;

    /// Extends this worker's claims on items it has not saved yet (stores that share work
    /// between workers; a no-op elsewhere).
    fn renew(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Ends the run: makes everything saved durable and releases whatever the store holds
    /// (locks, claims of items that got no verdict).
    fn finish(&self) -> impl Future<Output = Result<()>> + Send;

    /// Counts the task's items per status.
    fn status_counts(&self) -> impl Future<Output = Result<StatusCounts>> + Send;

    /// Counts every task's items per status, by task id (sorted).
    fn status_all(&self) -> impl Future<Output = Result<Vec<(String, StatusCounts)>>> + Send;

    /// Adds items to the task with the failed status. An id the task already has is left
    /// as it is, unless `reset`: then it is set back to failed (and its url replaced when
    /// one is given).
    fn import(
        &self,
        items: Vec<NewItem>,
        reset: bool,
    ) -> impl Future<Output = Result<ImportCounts>> + Send;
}

/// Every backend behind one type, chosen once from the [`StoreSpec`].
pub enum AnyStore {
    /// SQLite file.
    Sqlite(sql::SqlStore<sql::sqlite::SqliteDb>),
    /// One JSON document.
    Json(json::JsonStore),
    /// JSON Lines.
    Jsonl(jsonl::JsonlStore),
    /// PostgreSQL, shared by several workers.
    Postgres(sql::SqlStore<sql::postgres::PgDb>),
    /// MySQL / MariaDB, shared by several workers.
    Mysql(sql::SqlStore<sql::mysql::MyDb>),
}

/// Why a store is being opened: decides whether it may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `run`: the store must exist (a missing file is exit 2; a run never creates one).
    Run,
    /// `status`: read only; a missing store is an error.
    Status,
    /// `import` / `init`: create what is missing.
    Create,
}

/// Opens the store named by `spec`, validating the table and columns before anything is
/// written.
pub async fn open(spec: &StoreSpec, opts: StoreOptions, mode: OpenMode) -> Result<AnyStore> {
    match spec {
        StoreSpec::Sqlite(p) => {
            let read_only = opts.read_only || mode == OpenMode::Status;
            let db = sql::sqlite::SqliteDb::open(p, mode, read_only).await?;
            Ok(AnyStore::Sqlite(sql::SqlStore::open(db, opts, mode).await?))
        }
        StoreSpec::Json(p) => Ok(AnyStore::Json(json::JsonStore::open(p, opts, mode)?)),
        StoreSpec::Jsonl(p) => Ok(AnyStore::Jsonl(jsonl::JsonlStore::open(p, opts, mode)?)),
        StoreSpec::Postgres(url) => {
            let db =
                sql::postgres::PgDb::connect(url, &spec.to_string(), opts.db_connections).await?;
            Ok(AnyStore::Postgres(
                sql::SqlStore::open(db, opts, mode).await?,
            ))
        }
        StoreSpec::Mysql(url) => {
            let db = sql::mysql::MyDb::connect(url, &spec.to_string(), opts.db_connections).await?;
            Ok(AnyStore::Mysql(sql::SqlStore::open(db, opts, mode).await?))
        }
    }
}

/// Creates the default schema (`recheck init`). Returns a line saying what was done.
pub async fn init(spec: &StoreSpec, table: &Ident) -> Result<String> {
    match spec {
        StoreSpec::Sqlite(p) => {
            let db = sql::sqlite::SqliteDb::open(p, OpenMode::Create, false).await?;
            sql::protocol::init(&db, table).await
        }
        StoreSpec::Json(p) => json::init(p),
        StoreSpec::Jsonl(p) => jsonl::init(p),
        StoreSpec::Postgres(url) => {
            let db = sql::postgres::PgDb::connect(url, &spec.to_string(), 1).await?;
            sql::protocol::init(&db, table).await
        }
        StoreSpec::Mysql(url) => {
            let db = sql::mysql::MyDb::connect(url, &spec.to_string(), 1).await?;
            sql::protocol::init(&db, table).await
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $call,
            AnyStore::Json($s) => $call,
            AnyStore::Jsonl($s) => $call,
            AnyStore::Postgres($s) => $call,
            AnyStore::Mysql($s) => $call,
        }
    };
}

impl Store for AnyStore {
    async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        delegate!(self, s => s.claim(n).await)
    }
    async fn pending(&self) -> Result<u64> {
        delegate!(self, s => s.pending().await)
    }
    async fn save(&self, batch: std::sync::Arc<[Verdict]>) -> Result<Saved> {
        delegate!(self, s => s.save(batch).await)
    }
    async fn renew(&self) -> Result<()> {
        delegate!(self, s => s.renew().await)
    }
    async fn finish(&self) -> Result<()> {
        delegate!(self, s => s.finish().await)
    }
    async fn status_counts(&self) -> Result<StatusCounts> {
        delegate!(self, s => s.status_counts().await)
    }
    async fn status_all(&self) -> Result<Vec<(String, StatusCounts)>> {
        delegate!(self, s => s.status_all().await)
    }
    async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<ImportCounts> {
        delegate!(self, s => s.import(items, reset).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_spellings() {
        assert_eq!(
            StoreSpec::parse("recheck.db").unwrap(),
            StoreSpec::Sqlite("recheck.db".into())
        );
        assert_eq!(
            StoreSpec::parse("sqlite:x").unwrap(),
            StoreSpec::Sqlite("x".into())
        );
        assert_eq!(
            StoreSpec::parse("a/b.SQLITE3").unwrap(),
            StoreSpec::Sqlite("a/b.SQLITE3".into())
        );
        assert_eq!(
            StoreSpec::parse("items.json").unwrap(),
            StoreSpec::Json("items.json".into())
        );
        assert_eq!(
            StoreSpec::parse("json:items.txt").unwrap(),
            StoreSpec::Json("items.txt".into())
        );
        assert_eq!(
            StoreSpec::parse("x.jsonl").unwrap(),
            StoreSpec::Jsonl("x.jsonl".into())
        );
        assert!(matches!(
            StoreSpec::parse("postgresql://u:p@h/db").unwrap(),
            StoreSpec::Postgres(_)
        ));
        assert!(StoreSpec::parse("items.csv").is_err());
        assert!(StoreSpec::parse("").is_err());
        assert!(StoreSpec::parse("json:").is_err());
    }

    #[test]
    fn spec_display_hides_password() {
        let s = StoreSpec::parse("postgres://bob:hunter2@db.example/x").unwrap();
        assert!(!format!("{s} {s:?}").contains("hunter2"));
        assert!(format!("{s}").contains("bob"));
        let s = StoreSpec::parse("postgres://db/x?sslmode=require&password=hunter2").unwrap();
        assert!(!s.to_string().contains("hunter2"), "{s}");
        assert!(s.to_string().contains("sslmode=require"), "{s}");
    }

    #[test]
    fn idents() {
        for good in ["items", "_x", "Task_ID2"] {
            assert!(Ident::new("--table", good).is_ok(), "{good}");
        }
        for bad in ["", "1x", "a b", "a\"b", "a;drop", "ü", "a-b"] {
            let err = Ident::new("--table", bad).unwrap_err().to_string();
            assert!(err.contains("--table"), "{err}");
        }
        assert_eq!(Ident::new("t", "x").unwrap().quoted(), "\"x\"");
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn owner_names_carry_the_start() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let name = owner_name(t);
        assert!(
            name.ends_with(&format!("/{}/1700000000123", std::process::id())),
            "{name}"
        );
        assert_eq!(owner_started(&name), Some(t));
        assert_eq!(owner_started("someone-else"), None);
        assert!(!owner_is_dead_here(&name), "this process is alive");
        assert!(!owner_is_dead_here("other-host/1/5"));
        assert!(!owner_is_dead_here("garbage"));
        let host = name.rsplitn(3, '/').nth(2).unwrap();
        // pid_max is at most 2^22 on Linux: this pid cannot exist.
        assert!(owner_is_dead_here(&format!("{host}/4294967/5")));
    }
}
