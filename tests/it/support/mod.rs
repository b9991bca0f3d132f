//! Test helpers: a mock server on its own runtime, a temp dir per test, a `recheck` command
//! pointing at both, and store fixtures.
#![allow(dead_code)]

#[path = "../../support/mock_server.rs"]
pub mod mock_server;

pub mod db;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use mock_server::{Behavior, MockConfig, MockServer, MockTls};

/// One multi-threaded runtime for every mock server of the test binary, so tests can be
/// plain `#[test]`s that block on the binary while the server keeps serving.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// Starts a mock server (on 127.0.0.1:0).
pub fn server(config: MockConfig) -> MockServer {
    runtime().block_on(MockServer::start(config))
}

/// Starts a TLS mock server (on 127.0.0.1:0) with certificates made now.
pub fn tls_server(config: MockConfig, tls: MockTls) -> MockServer {
    runtime().block_on(MockServer::start_tls(config, tls))
}

/// The proxy variables reqwest reads: cleared for every `recheck` a test starts, so a proxy
/// set on the machine running the tests cannot send loopback requests elsewhere (tests that
/// test proxies set them again).
pub const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A mock server with default behaviour.
pub fn default_server() -> MockServer {
    server(MockConfig::default())
}

/// A temp dir for one test.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `recheck` with the sandbox as working directory and no inherited RECHECK_*, RUST_LOG,
    /// GITHUB_STEP_SUMMARY or proxy variables.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("recheck").expect("recheck binary");
        cmd.current_dir(self.dir.path());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RECHECK_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG");
        // Tests run in CI must not append to the job page's summary.
        cmd.env_remove("GITHUB_STEP_SUMMARY");
        for k in PROXY_VARS {
            cmd.env_remove(k);
        }
        cmd.timeout(std::time::Duration::from_secs(120));
        cmd
    }

    /// `recheck run --task T --store S --url <server template>` plus fast retry settings.
    pub fn run(&self, server: &MockServer, task: &str, store: &str) -> assert_cmd::Command {
        let mut cmd = self.cmd();
        cmd.args(["run", "--task", task, "--store", store, "--url"])
            .arg(server.item_url_template())
            .args(["--backoff", "5ms..20ms"]);
        cmd
    }
}

/// A SQLite store with the default schema holding `ids` as failed items of `task`.
pub fn sqlite_store(path: &Path, task: &str, ids: &[&str]) {
    let conn = rusqlite::Connection::open(path).expect("open sqlite");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS items(task_id TEXT NOT NULL, item_id TEXT NOT NULL,
            status TEXT NOT NULL, url TEXT NULL, http_status INTEGER NULL,
            attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NULL, checked_at TEXT NULL,
            lease_owner TEXT NULL, lease_until TEXT NULL, PRIMARY KEY (task_id, item_id));",
    )
    .expect("schema");
    let tx = conn.unchecked_transaction().expect("tx");
    {
        let mut st = tx
            .prepare("INSERT INTO items(task_id, item_id, status) VALUES (?1, ?2, 'failed')")
            .expect("prepare");
        for id in ids {
            st.execute([task, id]).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// One row of the default schema, as the tests look at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub status: String,
    pub http_status: Option<i64>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub checked_at: Option<String>,
}

/// Reads item `id` of `task` from a default-schema SQLite store.
pub fn sqlite_row(path: &Path, task: &str, id: &str) -> Row {
    let conn = rusqlite::Connection::open(path).expect("open sqlite");
    conn.query_row(
        "SELECT status, http_status, attempts, last_error, checked_at FROM items
         WHERE task_id = ?1 AND item_id = ?2",
        [task, id],
        |r| {
            Ok(Row {
                status: r.get(0)?,
                http_status: r.get(1)?,
                attempts: r.get(2)?,
                last_error: r.get(3)?,
                checked_at: r.get(4)?,
            })
        },
    )
    .unwrap_or_else(|e| panic!("row {task}/{id}: {e}"))
}

/// Every byte of a file and its SQLite side files, to prove a refused run wrote nothing.
pub fn snapshot(path: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    ["", "-wal", "-shm", "-journal", ".lock"]
        .iter()
        .map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            (p.display().to_string(), std::fs::read(&p).ok())
        })
        .collect()
}

/// The JSON summary printed by `--format json`.
pub fn summary(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "summary is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A `recheck` process started in the background (for signals and kills).
pub struct Running {
    pub child: std::process::Child,
}

impl Sandbox {
    /// Starts `recheck ARGS` in the sandbox without waiting; stdout/stderr are captured.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("recheck"));
        cmd.current_dir(self.dir.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RECHECK_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG");
        for k in PROXY_VARS {
            cmd.env_remove(k);
        }
        Running {
            child: cmd.spawn().expect("spawn recheck"),
        }
    }
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (libc::SIGINT, SIGTERM, SIGKILL).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits for the exit, at most `limit`; kills and panics past it.
    pub fn wait(mut self, limit: std::time::Duration) -> std::process::Output {
        let started = std::time::Instant::now();
        loop {
            if self.child.try_wait().expect("try_wait").is_some() {
                return self.child.wait_with_output().expect("output");
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let out = self.child.wait_with_output().expect("output");
                panic!("recheck did not exit within {limit:?}: {out:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Polls `cond` every 5 ms until it holds; panics after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Every row of a default-schema SQLite store: item id → row.
pub fn sqlite_rows(path: &Path, task: &str) -> std::collections::HashMap<String, Row> {
    let conn = rusqlite::Connection::open(path).expect("open sqlite");
    let mut st = conn
        .prepare(
            "SELECT item_id, status, http_status, attempts, last_error, checked_at FROM items
             WHERE task_id = ?1",
        )
        .expect("prepare");
    st.query_map([task], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Row {
                status: r.get(1)?,
                http_status: r.get(2)?,
                attempts: r.get(3)?,
                last_error: r.get(4)?,
                checked_at: r.get(5)?,
            },
        ))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Ids the server answered with `status` (from its response log).
pub fn answered_with(server: &MockServer, status: u16) -> std::collections::HashSet<String> {
    server
        .answered()
        .into_iter()
        .filter(|(_, s, _)| *s == status)
        .map(|(id, _, _)| id)
        .collect()
}

/// (id, status, http_status, attempts, last_error fragment) expected after a run with
/// [`outcome_args`], whatever the store.
pub type Expected = (
    &'static str,
    &'static str,
    Option<i64>,
    i64,
    Option<&'static str>,
);

/// Ids whose mock behaviour covers every outcome row of docs/reference.md §3.4.
pub const OUTCOME_CASES: &[Expected] = &[
    ("ok-1", "ok", Some(200), 1, None),
    ("503x2-1", "ok", Some(200), 3, None),
    (
        "fail-1",
        "failed",
        Some(200),
        1,
        Some(r#"/status is "processing", expected "done""#),
    ),
    ("404-1", "gone", Some(404), 1, Some("HTTP 404 Not Found")),
    ("410-1", "gone", Some(410), 1, Some("HTTP 410 Gone")),
    (
        "s503-1",
        "failed",
        Some(503),
        3,
        Some("HTTP 503 Service Unavailable (after 3 attempts)"),
    ),
    (
        "s429-1",
        "failed",
        Some(429),
        3,
        Some("HTTP 429 Too Many Requests (after 3 attempts)"),
    ),
    (
        "s401-1",
        "failed",
        Some(401),
        1,
        Some("unexpected HTTP 401 Unauthorized"),
    ),
    ("garbage-1", "failed", Some(200), 1, Some("invalid JSON")),
    (
        "huge-1",
        "failed",
        Some(200),
        1,
        Some("larger than --max-body"),
    ),
    (
        "hang-1",
        "failed",
        None,
        3,
        Some("timed out after 300ms (after 3 attempts)"),
    ),
];

/// The run options the outcome cases expect.
pub fn outcome_args(cmd: &mut assert_cmd::Command) {
    cmd.args([
        "--expect-json",
        "/status=done",
        "--retries",
        "2",
        "--timeout",
        "300ms",
        "--max-body",
        "64KiB",
        "--not-found-status",
        "gone",
        "--format",
        "json",
    ]);
}

/// The summary of a run of [`OUTCOME_CASES`] with [`outcome_args`].
pub fn check_outcome_summary(out: &std::process::Output) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s = summary(out);
    assert_eq!(s["checked"], 11);
    assert_eq!(s["ok"], 2);
    assert_eq!(s["still_failed"], 1);
    assert_eq!(s["not_found"], 2);
    assert_eq!(s["errors"], 6);
    // 1+3+1+1+1+3+3+1+1+1+3
    assert_eq!(s["requests"], 19);
    assert_eq!(s["retries"], 8);
    assert_eq!(s["interrupted"], false);
    assert_eq!(s["dry_run"], false);
}

/// The README, for tests that run what it shows as written.
pub const README: &str = include_str!("../../../README.md");

/// The README cron line (`*/10 ...`) that contains `marker`, from `cd /srv/recheck && ` on:
/// the command its shell runs.
pub fn readme_cron_command(marker: &str) -> String {
    let line = README
        .lines()
        .find(|l| l.starts_with("*/10 ") && l.contains(marker))
        .unwrap_or_else(|| panic!("no README cron line with {marker:?}"));
    let (_, command) = line
        .split_once("cd /srv/recheck && ")
        .expect("the cron line changes to /srv/recheck");
    command.to_string()
}

/// The body of the README's ```toml block that starts with `first_lines`.
pub fn readme_toml(first_lines: &str) -> String {
    let fence = format!("```toml\n{first_lines}");
    let start = README
        .find(&fence)
        .unwrap_or_else(|| panic!("no README toml block starting {first_lines:?}"));
    let body = &README[start + "```toml\n".len()..];
    body[..body.find("```").expect("end of the toml block")].to_string()
}

/// `sh -c command` in the sandbox, as a user's shell runs a README line: the built
/// `recheck` first on PATH, no `RUST_LOG`.
pub fn shell(sb: &Sandbox, command: &str) -> std::process::Command {
    let bin = assert_cmd::cargo::cargo_bin("recheck");
    let path = format!(
        "{}:{}",
        bin.parent().expect("the binary's directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", command])
        .current_dir(sb.dir.path())
        .env("PATH", path)
        .env_remove("RUST_LOG");
    cmd
}
