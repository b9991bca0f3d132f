//! Stage "cli": the raw flags, as clap parses them. Doc comments here are the `--help` text.
//! Value parsers sit next to the flags they serve, with unit tests. No I/O, no validation
//! that needs more than one flag: that is `config`'s job.

// The doc comments are `--help` text, printed as written: URLs in them stay bare.
#![allow(rustdoc::bare_urls)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::report::Format;

/// Default `--concurrency`.
pub const DEFAULT_CONCURRENCY: &str = "100";
/// Default `--timeout`.
pub const DEFAULT_TIMEOUT: &str = "5s";
/// Default `--connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "2s";
/// Default `--retries`.
pub const DEFAULT_RETRIES: &str = "5";
/// Default `--backoff`.
pub const DEFAULT_BACKOFF: &str = "200ms..30s";
/// Default `--max-body`.
pub const DEFAULT_MAX_BODY: &str = "1MiB";

/// Re-check a task's failed items against an HTTP API and write the answers back.
#[derive(Debug, Parser)]
#[command(
    name = "recheck",
    version,
    about,
    max_term_width = 100,
    args_override_self = true
)]
#[command(
    after_help = "Exit codes: 0 all checked items OK (or nothing to check), 1 some items \
    not OK, 2 usage/config/store error, 3 --deadline reached, 4 the store failed during the run, \
    5 the API was unavailable (a host's circuit opened, items deferred), 130 interrupted \
    (SIGINT/SIGTERM/SIGHUP).\nOptions also come from RECHECK_<OPTION> \
    environment variables and a TOML file (--config, or ./recheck.toml); precedence: flag > env > \
    file > default."
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output on stderr (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RECHECK_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// TOML config file [default: ./recheck.toml when present].
    #[arg(long, global = true, value_name = "FILE", env = "RECHECK_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Re-check the task's failed items, write the answers back, print a summary.
    #[command(
        after_help = "Proxies: HTTPS_PROXY (https:// URLs), HTTP_PROXY (http:// URLs), ALL_PROXY \
        (both) and NO_PROXY (hosts or networks that go direct), or their lower-case spellings; \
        none by default. The proxy in use is logged at start (info, shown with -v too), its \
        password as ***."
    )]
    Run(Box<RunArgs>),
    /// Count a task's items per status.
    Status(StatusArgs),
    /// Add failed items to a task: one id per line, or JSON Lines {"id":..,"url":..}.
    ///
    /// An id the task already has is left as it is (counted as "already there"), unless
    /// --reset. The whole input is checked before anything is written: a bad line (named
    /// FILE:LINE) imports nothing. Stdin and pipes are first copied to a temporary file
    /// ($TMPDIR) for that; memory stays small whatever the input size. The items then go to
    /// the store in batches of 10,000, one transaction each in the SQL stores: if the store
    /// fails midway, the batches before stay imported and the error says up to which line.
    Import(ImportArgs),
    /// Create the default schema, or add the columns an existing table lacks (`run` never
    /// creates a store; `import` creates a new SQLite file too).
    Init(InitArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `recheck man > /usr/local/share/man/man1/recheck.1`.
    Man,
}

/// Where the items are and how the table maps to recheck's names.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Store: a SQLite file (.db/.sqlite/.sqlite3, or sqlite:PATH), a JSON document (.json,
    /// json:PATH), JSON Lines (.jsonl, jsonl:PATH), or a postgres:// or mysql:// (mariadb://)
    /// URL shared by several workers.
    #[arg(long, value_name = "S", default_value = crate::store::DEFAULT_STORE, env = "RECHECK_STORE")]
    pub store: String,
    /// Table holding the items (SQL stores).
    #[arg(long, value_name = "T", default_value = crate::store::DEFAULT_TABLE, env = "RECHECK_TABLE")]
    pub table: String,
    /// Column (or JSON field) holding the task id.
    #[arg(
        long,
        value_name = "COL",
        default_value = "task_id",
        env = "RECHECK_TASK_COLUMN"
    )]
    pub task_column: String,
    /// Column holding the item id (JSON also accepts `id`).
    #[arg(
        long,
        value_name = "COL",
        default_value = "item_id",
        env = "RECHECK_ID_COLUMN"
    )]
    pub id_column: String,
    /// Column holding the status.
    #[arg(
        long,
        value_name = "COL",
        default_value = "status",
        env = "RECHECK_STATUS_COLUMN"
    )]
    pub status_column: String,
    /// Column holding the item's own URL (used when --url is not given).
    #[arg(
        long,
        value_name = "COL",
        default_value = "url",
        env = "RECHECK_URL_COLUMN"
    )]
    pub url_column: String,
}

/// `recheck run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The task whose failed items are re-checked.
    #[arg(long, value_name = "ID", env = "RECHECK_TASK")]
    pub task: String,
    /// Where the items are.
    #[command(flatten)]
    pub store: StoreArgs,
    /// URL template, e.g. https://api.example.com/v1/items/{id}. {id}, {task} and {COLUMN}
    /// are filled in, percent-encoded as one path segment / query value. Without it, each
    /// item's url column is used.
    #[arg(long, value_name = "TEMPLATE", env = "RECHECK_URL")]
    pub url: Option<String>,
    /// Request header 'Name: value' (repeatable). ${VAR} in the value is read from the
    /// environment. Values of Authorization, Cookie and --secret-header headers are never
    /// shown.
    #[arg(
        short = 'H',
        long = "header",
        value_name = "'NAME: VALUE'",
        env = "RECHECK_HEADER"
    )]
    pub headers: Vec<String>,
    /// A query parameter whose value is secret (repeatable): shown as *** wherever a URL is
    /// shown. Always secret too: URL passwords, values that came from ${VAR}, and api_key,
    /// apikey, key, token, access_token, auth, sig, signature, password, secret,
    /// X-Amz-Signature, X-Amz-Credential, X-Goog-Signature (any case).
    #[arg(
        long = "secret-param",
        value_name = "NAME",
        env = "RECHECK_SECRET_PARAM"
    )]
    pub secret_params: Vec<String>,
    /// A header whose value is secret (repeatable): never logged or reported, and not sent
    /// to another host after a redirect.
    #[arg(
        long = "secret-header",
        value_name = "NAME",
        env = "RECHECK_SECRET_HEADER"
    )]
    pub secret_headers: Vec<String>,
    /// Most requests in flight at once.
    #[arg(long, value_name = "N", default_value = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..=100_000), env = "RECHECK_CONCURRENCY")]
    pub concurrency: u32,
    /// Most requests in flight to one host [default: = --concurrency].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000), env = "RECHECK_PER_HOST")]
    pub per_host: Option<u32>,
    /// Adapt each host's limit: down on 429/503/timeouts or a clear latency rise, back up
    /// while answers are healthy, never above --per-host (the default; --no-adaptive keeps
    /// it fixed).
    #[arg(long, overrides_with = "no_adaptive", env = "RECHECK_ADAPTIVE")]
    pub adaptive: bool,
    /// Keep each host's limit at --per-host.
    #[arg(long, overrides_with = "adaptive", env = "RECHECK_NO_ADAPTIVE")]
    pub no_adaptive: bool,
    /// After N consecutive connection failures, timeouts or 5xx from one host, its circuit
    /// opens: after a 5 s cool-down one probe goes; if it fails, the host's items are
    /// deferred (no request, status kept, next_check_at set) and the run exits 5. 0 turns
    /// it off.
    #[arg(long, value_name = "N", default_value_t = 20, env = "RECHECK_CIRCUIT")]
    pub circuit: u32,
    /// Most requests started per second, evenly spaced (200, 200/s, 5000/m) [default:
    /// unlimited].
    #[arg(long, value_name = "R", value_parser = crate::check::gate::Rate::parse, env = "RECHECK_RATE")]
    pub rate: Option<crate::check::gate::Rate>,
    /// Time limit of one attempt, connect to last body byte (500ms, 5s, 1m).
    #[arg(long, value_name = "DUR", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration, env = "RECHECK_TIMEOUT")]
    pub timeout: Duration,
    /// Time limit for opening a connection.
    #[arg(long, value_name = "DUR", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_duration, env = "RECHECK_CONNECT_TIMEOUT")]
    pub connect_timeout: Duration,
    /// Further attempts after the first, for timeouts, connection errors, 408, 429, 500, 502,
    /// 503 and 504.
    #[arg(long, value_name = "N", default_value = DEFAULT_RETRIES, value_parser = clap::value_parser!(u32).range(0..=100), env = "RECHECK_RETRIES")]
    pub retries: u32,
    /// Exponential backoff with full jitter between these bounds; a Retry-After from 429/503
    /// overrides it, capped by the upper bound.
    #[arg(long, value_name = "DUR..DUR", default_value = DEFAULT_BACKOFF, value_parser = parse_backoff, env = "RECHECK_BACKOFF")]
    pub backoff: (Duration, Duration),
    /// Statuses that count as an answer, e.g. 200,204 or 2xx.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "200",
        env = "RECHECK_EXPECT_STATUS"
    )]
    pub expect_status: String,
    /// POINTER OP VALUE (repeatable), OP one of = != < <= > >= =~ (regex); the first of
    /// these in the text is the operator, so a pointer cannot contain them. VALUE is JSON when
    /// valid, else a string. Numbers compare by value (100 = 100.0); < <= > >= compare two
    /// numbers or two strings (by bytes), any other pair fails; =~ matches strings only.
    /// Several = for one pointer mean any of them; all other rules must hold. A missing
    /// pointer fails the rule. E.g. /status=done, /progress>=100, /id=~^movie-
    #[arg(long, value_name = "RULE", env = "RECHECK_EXPECT_JSON")]
    pub expect_json: Vec<String>,
    /// A jq filter (repeatable; jq's language, compiled once at start): the item is OK when
    /// its first output on the answer's JSON is `true`, e.g. '(.renditions | length) >= 3'.
    /// A run-time error on one answer makes that item still_failed with jq's message.
    #[arg(long, value_name = "FILTER")]
    pub expect_jq: Vec<String>,
    /// RULE (repeatable; the --expect-json syntax): when any holds on an answer with an
    /// expected status, the item failed for good: outcome dead, written as --dead-status.
    /// Dead rules are checked before the expect rules. E.g. /status=failed
    #[arg(long, value_name = "RULE")]
    pub dead_json: Vec<String>,
    /// A jq filter (repeatable): when any gives `true` first, the item is dead (a filter that
    /// fails on an answer does not hold), e.g. '.status == "failed"'.
    #[arg(long, value_name = "FILTER")]
    pub dead_jq: Vec<String>,
    /// The status written for outcome dead [default: dead]; only with --dead-json/--dead-jq
    /// or --give-up-after/--give-up-age.
    #[arg(long, value_name = "V", env = "RECHECK_DEAD_STATUS")]
    pub dead_status: Option<String>,
    /// The schedule across runs: after a not-OK check the item is due again after
    /// MIN·2^(checks−1), at most MAX, ±10 % jitter (its next_check_at); runs skip items
    /// not yet due. E.g. 10m..6h [default: none, every run checks every failed item].
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_recheck_backoff, env = "RECHECK_RECHECK_BACKOFF")]
    pub recheck_backoff: Option<(Duration, Duration)>,
    /// An item still not OK after N checks (runs that judged it, this one included)
    /// becomes dead, written as --dead-status, its last_error saying why.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), env = "RECHECK_GIVE_UP_AFTER")]
    pub give_up_after: Option<u32>,
    /// An item still not OK this long after its first check becomes dead (e.g. 7d).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, env = "RECHECK_GIVE_UP_AGE")]
    pub give_up_age: Option<Duration>,
    /// Check the task's failed items even when they are not due yet (next_check_at in the
    /// future); the schedule is still written.
    #[arg(long, env = "RECHECK_IGNORE_SCHEDULE")]
    pub ignore_schedule: bool,
    /// The status value that marks an item to re-check.
    #[arg(
        long,
        value_name = "V",
        default_value = "failed",
        env = "RECHECK_FAILED_STATUS"
    )]
    pub failed_status: String,
    /// The status written when an item is now OK.
    #[arg(
        long,
        value_name = "V",
        default_value = "ok",
        env = "RECHECK_OK_STATUS"
    )]
    pub ok_status: String,
    /// The status written on 404/410 [default: keep the status].
    #[arg(long, value_name = "V", env = "RECHECK_NOT_FOUND_STATUS")]
    pub not_found_status: Option<String>,
    /// Larger answers are an error for the item, never read into memory whole (1MiB, 500KB).
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_MAX_BODY, value_parser = parse_size, env = "RECHECK_MAX_BODY")]
    pub max_body: u64,
    /// Stop starting new checks after this long, write back what was answered, exit 3 (a cron
    /// run must not overlap the next).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, env = "RECHECK_DEADLINE")]
    pub deadline: Option<Duration>,
    /// On a store shared by several workers, how long a claim on an item lasts before another
    /// worker may take it over; renewed while the worker is alive.
    #[arg(long, value_name = "DUR", default_value = crate::store::DEFAULT_LEASE, value_parser = parse_duration, env = "RECHECK_LEASE")]
    pub lease: Duration,
    /// Check at most N items.
    #[arg(long, value_name = "N", env = "RECHECK_LIMIT")]
    pub limit: Option<u64>,
    /// Check and report, write nothing.
    #[arg(long, env = "RECHECK_DRY_RUN")]
    pub dry_run: bool,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "RECHECK_FORMAT")]
    pub format: Format,
    /// Per-item results as JSON Lines (task, item_id, url, outcome, http_status, attempts,
    /// error, latency_ms, checked_at, store, host_limit). Not `-`: stdout carries the summary.
    #[arg(long, value_name = "FILE", env = "RECHECK_REPORT")]
    pub report: Option<PathBuf>,
    /// JUnit XML for CI: one testsuite, one testcase per item, failures for items not OK.
    /// Testcases are kept in memory until the end: meant for CI-sized runs.
    #[arg(long, value_name = "FILE", env = "RECHECK_JUNIT")]
    pub junit: Option<PathBuf>,
    /// Prometheus text format, written atomically (node_exporter textfile collector).
    #[arg(long, value_name = "FILE", env = "RECHECK_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Appends a Markdown summary (counts, top errors, the first 50 not-OK items; under
    /// 1 MiB) to FILE for the CI job page; `''` turns it off [default: $GITHUB_STEP_SUMMARY
    /// when set and not empty].
    // An OsString, not a PathBuf: clap refuses an empty path, and `''` means off.
    #[arg(long, value_name = "FILE", value_parser = clap::builder::OsStringValueParser::new(), env = "RECHECK_STEP_SUMMARY")]
    pub step_summary: Option<std::ffi::OsString>,
    /// Progress bar on stderr: `auto` when stderr is a terminal, else a log line every ~10 s.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, env = "RECHECK_PROGRESS")]
    pub progress: ProgressMode,
    /// When to exit 1: `any` item not OK, or `never`.
    #[arg(long, value_enum, default_value_t = FailOn::Any, env = "RECHECK_FAIL_ON")]
    pub fail_on: FailOn,

    // --- how requests go out: method, TLS, HTTP/2 (issue 11) ---
    /// HTTP method: GET, or HEAD to check existence only (no body rules with it:
    /// --expect-json, --expect-jq, --dead-json and --dead-jq need a body).
    #[arg(long, value_enum, default_value_t = HttpMethod::Get, ignore_case = true, env = "RECHECK_METHOD")]
    pub method: HttpMethod,
    /// Extra trusted CA certificates (PEM, one or several), on top of the system's roots
    /// [default: the system's roots only].
    #[arg(long, value_name = "FILE", env = "RECHECK_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM; a chain is fine); needs --key [default: none].
    #[arg(long, value_name = "FILE", requires = "key", env = "RECHECK_CERT")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PEM: PKCS#8, RSA or EC); needs --cert [default: none].
    #[arg(long, value_name = "FILE", requires = "cert", env = "RECHECK_KEY")]
    pub key: Option<PathBuf>,
    /// Accept any server certificate (expired, self-signed, another name); a warning says
    /// so. Certificate errors are otherwise final, never retried [default: off].
    #[arg(long, env = "RECHECK_INSECURE")]
    pub insecure: bool,
    /// HTTP/2 with prior knowledge on http:// URLs (h2c). Over https://, HTTP/2 is used
    /// whenever the server offers it (ALPN), with or without this flag [default: off,
    /// HTTP/1.1 on http://].
    #[arg(long, env = "RECHECK_HTTP2")]
    pub http2: bool,
}

/// `--method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum HttpMethod {
    /// The answer's body can be judged (the default).
    Get,
    /// The status only; no body is read.
    Head,
}

/// `--progress`: when to draw a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal; periodic log lines otherwise.
    Auto,
    /// Always a bar (even when stderr is not a terminal).
    Always,
    /// Never a bar; periodic log lines.
    Never,
}

/// `--fail-on`: which results make the exit code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    /// Any checked item that is not OK.
    Any,
    /// Never: exit 0 whatever the items' outcomes (errors of recheck itself still exit 2).
    Never,
}

/// `recheck status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The task to count [default: every task in the store, one line each].
    #[arg(long, value_name = "ID", env = "RECHECK_TASK")]
    pub task: Option<String>,
    /// Where the items are.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The status that marks an item to re-check: counted as the backlog, and by schedule.
    #[arg(
        long,
        value_name = "V",
        default_value = "failed",
        env = "RECHECK_FAILED_STATUS"
    )]
    pub failed_status: String,
    /// The status of items given up on (outcome dead).
    #[arg(
        long,
        value_name = "V",
        default_value = "dead",
        env = "RECHECK_DEAD_STATUS"
    )]
    pub dead_status: String,
    /// Output format: text or json (markdown is refused: it is for `recheck run`).
    #[arg(long, value_enum, default_value_t = Format::Text, env = "RECHECK_FORMAT")]
    pub format: Format,
}

/// `recheck import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The task the items belong to.
    #[arg(long, value_name = "ID", env = "RECHECK_TASK")]
    pub task: String,
    /// Where the items go.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The status the imported items get.
    #[arg(
        long,
        value_name = "V",
        default_value = "failed",
        env = "RECHECK_FAILED_STATUS"
    )]
    pub failed_status: String,
    /// Set ids the task already has back to the failed status (and replace their url when the
    /// line gives one), counted as "reset"; without it they are left as they are.
    #[arg(long)]
    pub reset: bool,
    /// Input: one id per line, or JSON Lines {"id":..,"url":..}; `-` or nothing is stdin.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `recheck init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Where to create the schema.
    #[arg(long, value_name = "S", default_value = crate::store::DEFAULT_STORE, env = "RECHECK_STORE")]
    pub store: String,
    /// Table to create (SQL stores).
    #[arg(long, value_name = "T", default_value = crate::store::DEFAULT_TABLE, env = "RECHECK_TABLE")]
    pub table: String,
}

/// `5s`, `500ms`, `1m`, `1h 30m` (humantime); a bare number is seconds, as in curl.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if let Ok(secs) = t.parse::<f64>() {
        if !(0.0..1e9).contains(&secs) {
            return Err(format!("{s:?} is not a duration"));
        }
        Duration::from_secs_f64(secs)
    } else {
        humantime::parse_duration(t)
            .map_err(|e| format!("{s:?} is not a duration like 500ms, 5s or 1m ({e})"))?
    };
    // Times are stored as RFC 3339 (four-digit years): "now + a duration" must stay one.
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than 100 years"));
    }
    Ok(d)
}

/// The longest duration any option takes.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `MIN..MAX`, e.g. `200ms..30s`.
pub fn parse_backoff(s: &str) -> Result<(Duration, Duration), String> {
    let Some((a, b)) = s.split_once("..") else {
        return Err(format!("{s:?} is not a range like 200ms..30s"));
    };
    let (lo, hi) = (parse_duration(a)?, parse_duration(b)?);
    if lo > hi {
        return Err(format!("{s:?}: the lower bound is above the upper bound"));
    }
    Ok((lo, hi))
}

/// `--recheck-backoff`: a `MIN..MAX` range whose lower bound is at least a second (a
/// schedule across runs in milliseconds would be a retry loop, which `--backoff` is for).
pub fn parse_recheck_backoff(s: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = parse_backoff(s).map_err(|e| e.replace("200ms..30s", "10m..6h"))?;
    if lo < Duration::from_secs(1) {
        return Err(format!("{s:?}: the lower bound must be at least 1s"));
    }
    Ok((lo, hi))
}

/// `1MiB`, `500KB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size like 1MiB or 500KB ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["recheck", "run", "--task", "t"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_reference() {
        let r = run_args(&[]);
        assert_eq!(r.store.store, "recheck.db");
        assert_eq!(r.concurrency, 100);
        assert_eq!(r.timeout, Duration::from_secs(5));
        assert_eq!(r.connect_timeout, Duration::from_secs(2));
        assert_eq!(r.retries, 5);
        assert_eq!(
            r.backoff,
            (Duration::from_millis(200), Duration::from_secs(30))
        );
        assert_eq!(r.max_body, 1024 * 1024);
        assert_eq!(r.failed_status, "failed");
        assert_eq!(r.ok_status, "ok");
        assert_eq!(r.fail_on, FailOn::Any);
        assert!(!r.dry_run);
    }

    #[test]
    fn later_flags_win_and_repeat() {
        let r = run_args(&[
            "--concurrency",
            "5",
            "--concurrency",
            "7",
            "-H",
            "A: 1",
            "-H",
            "B: 2",
        ]);
        assert_eq!(r.concurrency, 7);
        assert_eq!(r.headers, ["A: 1", "B: 2"]);
        assert!(
            Cli::try_parse_from(["recheck", "run", "--task", "t", "--concurrency", "0"]).is_err()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        for bad in ["", "5 parsecs", "-1", "abc", "1e99"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_backoff("10ms..1s").unwrap(),
            (Duration::from_millis(10), Duration::from_secs(1))
        );
        assert!(parse_backoff("1s..10ms").is_err());
        assert!(parse_backoff("1s").is_err());
    }

    #[test]
    fn request_flags() {
        let r = run_args(&[]);
        assert_eq!(r.method, HttpMethod::Get);
        assert!(r.cacert.is_none() && r.cert.is_none() && r.key.is_none());
        assert!(!r.insecure && !r.http2);
        let r = run_args(&["--method", "head", "--http2", "--insecure"]);
        assert_eq!(r.method, HttpMethod::Head);
        assert!(r.insecure && r.http2);
        assert_eq!(run_args(&["--method", "HEAD"]).method, HttpMethod::Head);
        for one_alone in [["--cert", "c.pem"], ["--key", "k.pem"]] {
            let mut argv = vec!["recheck", "run", "--task", "t"];
            argv.extend_from_slice(&one_alone);
            assert!(Cli::try_parse_from(argv).is_err(), "{one_alone:?}");
        }
        assert!(
            Cli::try_parse_from(["recheck", "run", "--task", "t", "--method", "POST"]).is_err()
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("500KB").unwrap(), 500_000);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("lots").is_err());
    }
}
