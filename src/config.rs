//! Stage "config": layers the sources (flag > `RECHECK_*` env > TOML file > default) and
//! turns raw flags into a validated [`RunConfig`]. Reads the config file and the environment;
//! touches no store and no network.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use reqwest::header::{
    AUTHORIZATION, COOKIE, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION,
};

use crate::check::client::HttpConfig;
use crate::check::fetch::FetchConfig;
use crate::check::jq::JqRule;
use crate::check::judge::{ExpectStatus, Expectations, JsonRule};
use crate::check::pool::UrlSource;
use crate::check::schedule::Schedule;
use crate::check::secrets::Secrets;
use crate::check::template::UrlTemplate;
use crate::cli::{Cli, FailOn, RunArgs, StoreArgs};
use crate::model::StatusValue;
use crate::report::Format;
use crate::store::{Columns, Ident, StoreOptions, StoreSpec};

/// The config file read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "recheck.toml";

/// Why the command line could not be turned into a [`Cli`].
#[derive(Debug)]
pub enum ArgsError {
    /// clap's own outcome: help, version, or a usage error (clap prints it).
    Clap(clap::Error),
    /// A config file problem: one line, exit 2.
    Config(anyhow::Error),
}

/// Parses `argv`, filling options that neither a flag nor an environment variable set from
/// the TOML config file (`--config FILE`, or `./recheck.toml` when present).
pub fn parse_args(argv: Vec<OsString>) -> Result<Cli, ArgsError> {
    // First pass, lenient: which command, which config file, which options were given.
    let lenient = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(argv.clone());
    let extra = match lenient {
        Ok(m) => file_args(&m).map_err(ArgsError::Config)?,
        Err(_) => None,
    };
    let (argv, file) = match extra {
        Some((file, extra)) if !extra.is_empty() => {
            let mut argv = argv;
            let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
            let keys: Vec<String> = extra.iter().map(|(k, _)| k.clone()).collect();
            argv.splice(at..at, extra.into_iter().map(|(_, a)| a));
            (argv, Some((file, keys)))
        }
        _ => (argv, None),
    };
    let matches = Cli::command()
        .try_get_matches_from(argv)
        .map_err(|e| blame_file(e, file.as_ref()))?;
    Cli::from_arg_matches(&matches).map_err(ArgsError::Clap)
}

/// A clap error about a value that came from the config file names the file.
fn blame_file(e: clap::Error, file: Option<&(PathBuf, Vec<String>)>) -> ArgsError {
    use clap::error::{ContextKind, ContextValue};
    if let Some((path, keys)) = file
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
    {
        let long = arg
            .trim_start_matches('-')
            .split([' ', '='])
            .next()
            .unwrap_or("");
        if keys.iter().any(|k| k == long) {
            return ArgsError::Config(anyhow!(
                "{}: option {long:?}: {}",
                path.display(),
                one_line(&e)
            ));
        }
    }
    ArgsError::Clap(e)
}

/// A clap error as one line, without "error: " and the usage hint.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    parts.join(" ")
}

/// The config file used, and `(long option name, "--name=value")` pairs taken from it.
type FileArgs = (PathBuf, Vec<(String, OsString)>);

/// `--name=value` arguments from the config file for options of the chosen command that no
/// flag and no environment variable set. `None` when no config file applies.
fn file_args(m: &clap::ArgMatches) -> Result<Option<FileArgs>> {
    let Some((sub_name, sub)) = m.subcommand() else {
        return Ok(None);
    };
    if matches!(sub_name, "completions" | "man") {
        return Ok(None);
    }
    let explicit = m.get_one::<PathBuf>("config").cloned();
    let path = match explicit {
        Some(p) => {
            if !p.exists() {
                bail!("--config {}: no such file", p.display());
            }
            p
        }
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => PathBuf::from(DEFAULT_CONFIG_FILE),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read config file", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: invalid TOML: {}",
            path.display(),
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        )
    })?;
    let cmd = Cli::command();
    let run_cmd = cmd
        .find_subcommand("run")
        .ok_or_else(|| anyhow!("internal: no run command"))?;
    let this_cmd = cmd
        .find_subcommand(sub_name)
        .ok_or_else(|| anyhow!("internal: no {sub_name} command"))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        if run_cmd.get_arguments().all(|a| a.get_long() != Some(&long)) {
            let longs: Vec<&str> = run_cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .collect();
            let hint = closest(&long, &longs)
                .map(|l| format!("; did you mean {:?}?", l.replace('-', "_")))
                .unwrap_or_default();
            bail!(
                "{}: unknown option {key:?} (keys are the long options of `recheck run`){hint}",
                path.display()
            );
        }
        let Some(arg) = this_cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(&long))
        else {
            continue; // a run option that this command does not take
        };
        let id = arg.get_id().as_str();
        if sub.value_source(id) == Some(ValueSource::CommandLine) {
            continue;
        }
        if arg
            .get_env()
            .is_some_and(|var| std::env::var_os(var).is_some())
        {
            continue;
        }
        let is_flag = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if is_flag => {
                    if *b {
                        out.push((long.clone(), OsString::from(format!("--{long}"))));
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                _ => bail!(
                    "{}: option {key:?} must be a string, number, boolean or a list of them",
                    path.display()
                ),
            };
            out.push((long.clone(), OsString::from(format!("--{long}={text}"))));
        }
    }
    Ok(Some((path, out)))
}

/// The candidate closest to `word`, when it is close enough to be what was meant.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (crate::store::edit_distance(word, c), *c))
        .min()
        .filter(|(d, _)| *d <= (word.chars().count() / 3).max(2))
        .map(|(_, c)| c)
}

/// `RECHECK_*` variables in the environment that name no option (a typo is otherwise
/// silently ignored), each with the closest real one when there is one.
/// `RECHECK_TEST_*` (the test suite's database servers) is not an option and not warned of.
pub fn unknown_env_vars() -> Vec<String> {
    let cmd = Cli::command();
    let mut known: Vec<String> = cmd
        .get_arguments()
        .chain(cmd.get_subcommands().flat_map(|s| s.get_arguments()))
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    known.sort();
    known.dedup();
    let names: Vec<&str> = known.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if !k.starts_with("RECHECK_")
            || k.starts_with("RECHECK_TEST_")
            || names.contains(&k.as_str())
        {
            continue;
        }
        let hint = closest(&k, &names)
            .map(|c| format!(" (did you mean {c}?)"))
            .unwrap_or_default();
        out.push(format!("{k} names no option and is ignored{hint}"));
    }
    out.sort();
    out
}

/// Everything `recheck run` needs, validated.
#[derive(Debug)]
pub struct RunConfig {
    /// The task whose failed items are checked.
    pub task: String,
    /// The store.
    pub store: StoreSpec,
    /// What the store serves and writes.
    pub store_opts: StoreOptions,
    /// Where URLs come from.
    pub urls: UrlSource,
    /// How each item is fetched and judged.
    pub fetch: FetchConfig,
    /// Most requests in flight.
    pub concurrency: usize,
    /// Most requests in flight to one host.
    pub per_host: Option<usize>,
    /// Most request starts per period.
    pub rate: Option<crate::check::gate::Rate>,
    /// Each host's limit adapts (`--adaptive`, the default; `--no-adaptive`).
    pub adaptive: bool,
    /// Consecutive failures that open a host's circuit (`--circuit`; 0: off).
    pub circuit: u32,
    /// Time limit for opening a connection.
    pub connect_timeout: Duration,
    /// Most items checked.
    pub limit: Option<u64>,
    /// Stop starting new checks after this long.
    pub deadline: Option<Duration>,
    /// Write nothing.
    pub dry_run: bool,
    /// Summary format.
    pub format: Format,
    /// `--report`, `--junit`, `--metrics-file`.
    pub outputs: crate::report::OutputConfig,
    /// `--progress`.
    pub progress: crate::cli::ProgressMode,
    /// When to exit 1.
    pub fail_on: FailOn,
    /// The schedule across runs: backoff and give-up.
    pub schedule: Schedule,
    /// How requests go out: TLS files, HTTP/2 (the files are read when the run starts).
    pub http: HttpConfig,
}

/// Maps the store flags to a spec and the column names, refusing non-identifiers.
pub fn store_columns(args: &StoreArgs) -> Result<(StoreSpec, Columns)> {
    let spec = StoreSpec::parse(&args.store)?;
    let columns = Columns {
        table: Ident::new("--table", &args.table)?,
        task: Ident::new("--task-column", &args.task_column)?,
        id: Ident::new("--id-column", &args.id_column)?,
        status: Ident::new("--status-column", &args.status_column)?,
        url: Ident::new("--url-column", &args.url_column)?,
    };
    Ok((spec, columns))
}

impl RunConfig {
    /// Validates `run`'s flags. Reads `${VAR}`s of headers from the environment.
    pub fn from_args(a: &RunArgs) -> Result<RunConfig> {
        Self::from_args_with_env(a, |k| std::env::var(k).ok())
    }

    /// [`RunConfig::from_args`] with an injected environment (for tests).
    pub fn from_args_with_env(
        a: &RunArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<RunConfig> {
        if a.task.trim().is_empty() {
            bail!("--task is empty");
        }
        let (store, columns) = store_columns(&a.store)?;
        let mut secrets = Secrets::new(&a.secret_params, Vec::new());
        let (urls, extra_columns) = match &a.url {
            Some(t) => {
                let t = UrlTemplate::parse_env(t, &a.task, &env, &mut secrets)?;
                let cols = t.columns().to_vec();
                (UrlSource::Template(t), cols)
            }
            None => (UrlSource::ItemColumn, Vec::new()),
        };
        let started = std::time::SystemTime::now();
        let secret_headers = secret_header_names(&a.secret_headers)?;
        let headers = build_headers(&a.headers, &secret_headers, env)?;
        let expect = Expectations {
            status: ExpectStatus::parse(&a.expect_status)?,
            json: JsonRule::parse_all(&a.expect_json)?,
            jq: a
                .expect_jq
                .iter()
                .map(|f| JqRule::compile("--expect-jq", f))
                .collect::<Result<_>>()?,
            dead_json: JsonRule::parse_flag("--dead-json", &a.dead_json)?,
            dead_jq: a
                .dead_jq
                .iter()
                .map(|f| JqRule::compile("--dead-jq", f))
                .collect::<Result<_>>()?,
        };
        // `dead` is written only when a dead rule can produce it: a --dead-status alone would
        // be a flag that does nothing, so it is refused.
        let schedule = Schedule {
            backoff: a.recheck_backoff,
            give_up_after: a.give_up_after,
            give_up_age: a.give_up_age,
            not_found_settles: a.not_found_status.is_some(),
        };
        let dead = match (
            &a.dead_status,
            expect.has_dead_rules() || schedule.gives_up(),
        ) {
            (Some(_), false) => {
                bail!(
                    "--dead-status is written for outcome dead: give --dead-json, --dead-jq, \
                     --give-up-after or --give-up-age"
                )
            }
            (status, true) => Some(StatusValue::new(status.as_deref().unwrap_or("dead"))),
            (None, false) => None,
        };
        if let Some(d) = &dead
            && d.as_str() == a.failed_status
        {
            bail!(
                "--failed-status and --dead-status are both {:?}: dead items would be re-checked forever",
                a.failed_status
            );
        }
        let store_opts = StoreOptions {
            task: a.task.clone(),
            columns,
            failed: StatusValue::new(&a.failed_status),
            ok: StatusValue::new(&a.ok_status),
            not_found: a.not_found_status.as_deref().map(StatusValue::new),
            dead,
            ignore_schedule: a.ignore_schedule,
            schedule_columns: schedule.columns(),
            extra_columns,
            need_url: matches!(urls, UrlSource::ItemColumn),
            read_only: a.dry_run,
            lease: a.lease,
            owner: crate::store::owner_name(started),
            started,
            // The feeder claims, the sink saves, leases are renewed: a few connections do
            // whatever the concurrency; a little more for very wide runs.
            db_connections: (a.concurrency / 256 + 3).min(8),
        };
        if let Some(store_path) = store.path() {
            for (flag, out) in [
                ("--report", &a.report),
                ("--junit", &a.junit),
                ("--metrics-file", &a.metrics_file),
            ] {
                if let Some(out) = out
                    && same_file(out, store_path)
                {
                    bail!("{flag} {} is the store itself", out.display());
                }
            }
        }
        for (flag, d) in [
            ("--timeout", a.timeout),
            ("--connect-timeout", a.connect_timeout),
        ] {
            if d.is_zero() {
                bail!(
                    "{flag} must be more than 0 (an attempt with no time at all always times out)"
                );
            }
        }
        if a.lease < Duration::from_secs(1) {
            bail!(
                "--lease must be at least 1s (got {})",
                humantime::format_duration(a.lease)
            );
        }
        let method = match a.method {
            crate::cli::HttpMethod::Get => reqwest::Method::GET,
            crate::cli::HttpMethod::Head => reqwest::Method::HEAD,
        };
        if method == reqwest::Method::HEAD && expect.has_body_rules() {
            bail!(
                "--method HEAD gets no body: --expect-json, --expect-jq, --dead-json and \
                 --dead-jq cannot be used with it"
            );
        }
        if a.failed_status == a.ok_status {
            bail!(
                "--failed-status and --ok-status are both {:?}: OK items would be re-checked forever",
                a.ok_status
            );
        }
        Ok(RunConfig {
            task: a.task.clone(),
            store,
            store_opts,
            urls,
            fetch: FetchConfig {
                timeout: a.timeout,
                retries: a.retries,
                backoff_min: a.backoff.0,
                backoff_max: a.backoff.1,
                max_body: a.max_body,
                expect,
                headers,
                secret_headers,
                secrets,
                method,
                // Within one attempt's time, so waiting cannot time an item out by itself.
                first_contact_wait: a.connect_timeout.min(a.timeout / 2),
            },
            concurrency: a.concurrency as usize,
            per_host: a.per_host.map(|n| n as usize),
            rate: a.rate,
            adaptive: !a.no_adaptive,
            circuit: a.circuit,
            connect_timeout: a.connect_timeout,
            limit: a.limit,
            deadline: a.deadline,
            dry_run: a.dry_run,
            format: a.format,
            outputs: crate::report::OutputConfig {
                report: a.report.clone(),
                junit: a.junit.clone(),
                metrics: a.metrics_file.clone(),
                step_summary: step_summary_path(
                    a.step_summary.as_deref(),
                    std::env::var_os(GITHUB_STEP_SUMMARY).as_deref(),
                ),
            },
            progress: a.progress,
            fail_on: a.fail_on,
            schedule,
            http: HttpConfig {
                connect_timeout: a.connect_timeout,
                cacert: a.cacert.clone(),
                client_cert: a.cert.clone().zip(a.key.clone()),
                insecure: a.insecure,
                http2_prior_knowledge: a.http2,
            },
        })
    }
}

/// The variable GitHub Actions sets to the job page's step summary file.
pub const GITHUB_STEP_SUMMARY: &str = "GITHUB_STEP_SUMMARY";

/// `--step-summary`: the option when given (flag, `RECHECK_STEP_SUMMARY` or the config
/// file), where `''` is off; else `$GITHUB_STEP_SUMMARY` when set and not empty.
fn step_summary_path(
    option: Option<&std::ffi::OsStr>,
    github: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    match option.or(github) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => None,
    }
}

/// Whether two paths name one file: the same canonical path when both exist, else the same
/// absolute spelling.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    }
}

/// Authorization, Cookie, Proxy-Authorization, and every `--secret-header`.
fn secret_header_names(extra: &[String]) -> Result<Vec<HeaderName>> {
    let mut names = vec![AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION];
    for n in extra {
        let name = HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| anyhow!("--secret-header {n:?} is not a valid header name"))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Parses `-H 'Name: value'`s, expanding `${VAR}`. Error messages never show a value.
fn build_headers(
    specs: &[String],
    secret: &[HeaderName],
    env: impl Fn(&str) -> Option<String>,
) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let Some((name, value)) = spec.split_once(':') else {
            bail!("-H #{}: expected 'Name: value' (no ':' found)", i + 1);
        };
        let name = name.trim();
        let hname = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow!("-H #{}: {name:?} is not a valid header name", i + 1))?;
        let value = expand_env(value.trim(), &env)
            .map_err(|var| anyhow!("-H {name}: environment variable {var} is not set"))?;
        let mut hvalue = HeaderValue::from_str(&value).map_err(|_| {
            anyhow!("-H {name}: the value has characters a header cannot carry (value not shown)")
        })?;
        if secret.contains(&hname) {
            hvalue.set_sensitive(true);
        }
        map.append(hname, hvalue);
    }
    Ok(map)
}

/// Replaces `${VAR}` with its value; `Err(VAR)` when one is unset. A `$` not followed by
/// `{` is kept.
fn expand_env(s: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[at..]);
            return Ok(out);
        };
        let var = &after[..end];
        out.push_str(&env(var).ok_or_else(|| var.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_summary_path_semantics() {
        use std::ffi::OsStr;
        let gh = Some(OsStr::new("/gh/summary"));
        let path = |opt: Option<&str>, gh| step_summary_path(opt.map(OsStr::new), gh);
        assert_eq!(path(None, None), None, "unset: none");
        assert_eq!(path(None, gh), Some(PathBuf::from("/gh/summary")));
        assert_eq!(
            path(None, Some(OsStr::new(""))),
            None,
            "empty variable: none"
        );
        assert_eq!(path(Some(""), gh), None, "'' turns it off");
        assert_eq!(path(Some("mine.md"), gh), Some(PathBuf::from("mine.md")));
    }
    use crate::cli::Command;
    use clap::Parser;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["recheck", "run", "--task", "t"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(r) => *r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn env_expansion() {
        let env = |k: &str| (k == "TOKEN").then(|| "s3cret".to_string());
        assert_eq!(
            expand_env("Bearer ${TOKEN}", &env).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(expand_env("a$b ${TOKEN}$", &env).unwrap(), "a$b s3cret$");
        assert_eq!(expand_env("${NOPE}", &env).unwrap_err(), "NOPE");
    }

    #[test]
    fn headers_are_checked_and_secrets_hidden() {
        let env = |k: &str| (k == "TOKEN").then(|| "s3cret".to_string());
        let a = run_args(&[
            "--url",
            "http://h/{id}",
            "-H",
            "Authorization: Bearer ${TOKEN}",
            "-H",
            "X-Api-Key: k1",
            "--secret-header",
            "x-api-key",
        ]);
        let c = RunConfig::from_args_with_env(&a, env).unwrap();
        assert_eq!(c.fetch.headers["authorization"], "Bearer s3cret");
        assert!(c.fetch.headers["authorization"].is_sensitive());
        assert!(c.fetch.headers["x-api-key"].is_sensitive());
        for (bad, fragment) in [
            ("Authorization Bearer s3cret", "no ':'"),
            ("Bad Name: x", "not a valid header name"),
            ("Authorization: ${MISSING}", "MISSING is not set"),
            ("Authorization: a\u{7}s3cret", "value not shown"),
        ] {
            let a = run_args(&["--url", "http://h/{id}", "-H", bad]);
            let err = RunConfig::from_args_with_env(&a, env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(fragment), "{bad}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn template_columns_go_to_the_store() {
        let a = run_args(&["--url", "http://h/{content}?t={task}"]);
        let c = RunConfig::from_args(&a).unwrap();
        assert_eq!(
            c.store_opts.extra_columns,
            [Ident::new("x", "content").unwrap()]
        );
        assert!(!c.store_opts.need_url);
        let c = RunConfig::from_args(&run_args(&[])).unwrap();
        assert!(c.store_opts.need_url);
    }

    #[test]
    fn refuses_bad_identifiers_and_statuses() {
        for (args, fragment) in [
            (vec!["--table", "it ems"], "--table"),
            (vec!["--id-column", "a\"b"], "--id-column"),
            (vec!["--failed-status", "ok"], "both"),
            (vec!["--expect-json", "status=done"], "--expect-json"),
            (vec!["--expect-status", "abc"], "--expect-status"),
            (vec!["--store", "items.csv"], "--store"),
            (
                vec!["--method", "HEAD", "--expect-json", "/a=1"],
                "--method HEAD",
            ),
            (vec!["--method", "HEAD", "--dead-jq", ".x"], "--method HEAD"),
        ] {
            let err = RunConfig::from_args(&run_args(&args))
                .unwrap_err()
                .to_string();
            assert!(err.contains(fragment), "{args:?}: {err}");
        }
    }
}
