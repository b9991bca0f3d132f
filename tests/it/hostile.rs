//! Hostile servers: a server that hangs after accepting, dribbles its body, resets the
//! connection, sends invalid JSON, a body of gigabytes (with or without Content-Length), an
//! endless redirect loop, a redirect to another host, or a wrong Content-Length. Each must
//! give that item an `error` outcome with a clear `last_error` (the redirect to another host
//! may end OK, as long as the credentials did not travel), in bounded time
//! (timeout × attempts) and bounded memory, while the run goes on with the other items.
//!
//! Each case runs the real binary on a SQLite store holding the hostile item followed by
//! three `ok-N` items, with `--concurrency 1` so the hostile item holds the only request
//! slot while it is checked, and reaps it with `wait4(2)`.
//!
//! Peak memory: `ru_maxrss` of a child is not only the child's. At `execve` Linux folds the
//! old address space's high-water mark into the process's `maxrss`, and `Command::spawn`
//! uses `posix_spawn` (`CLONE_VM | CLONE_VFORK`), whose old address space is this test
//! process's: so `ru_maxrss` = max(the child's own peak, this process's peak so far). While
//! this process stays small (about 11 MiB) that is the child's; once it grew (a panicking
//! test symbolising a backtrace takes ~100 MiB) it would fail every case here for nothing.
//! So the child's own peak is `ru_maxrss` when that exceeds our own high-water mark (then
//! it can only be the child's), else the child's `VmHWM` (the high-water mark of its own
//! address space) as last read from `/proc` every 2 ms while it ran.

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Behavior, MockServer, Sandbox, sqlite_row};

/// `--timeout`, also spelled in [`TIMEOUT_ARG`].
const TIMEOUT: Duration = Duration::from_millis(300);
const TIMEOUT_ARG: &str = "300ms";
const RETRIES: i64 = 1;
/// `--backoff`, and its upper bound.
const BACKOFF_ARG: &str = "5ms..10ms";
const BACKOFF_MAX: Duration = Duration::from_millis(10);
const MAX_BODY: &str = "64KiB";
const SECRET: &str = "Bearer s3cret-hostile";
/// The items that must come out OK whatever the hostile one did.
const OK_IDS: [&str; 3] = ["ok-1", "ok-2", "ok-3"];

/// Time on top of `timeout × attempts + backoff`: process start-up, SQLite, the `ok-N`
/// items, and a loaded 2-core machine running the other tests. Measured runs take at most
/// ~0.7 s against bounds of 5.3–5.6 s. A hostile server that is not bounded blows this by
/// far: a dribbled 1000-byte body takes 100 s, a hang forever, and 2 GB takes seconds.
const SLACK: Duration = Duration::from_secs(5);
/// A run still going this long after its bound is killed (and fails the test).
const KILL_AFTER: Duration = Duration::from_secs(20);
/// Peak RSS allowed for one run, in KiB. `recheck` peaks at ~20 MiB in every case; reading
/// even one of the gigabyte bodies whole would need 2 GB.
const MAX_RSS_KIB: i64 = 100 * 1024;

/// What one case expects of the hostile item.
struct Case {
    id: &'static str,
    /// Status written: unchanged (`failed`) for an error.
    status: &'static str,
    http_status: Option<i64>,
    attempts: i64,
    /// Fragments `last_error` must contain (none: no error at all).
    error: &'static [&'static str],
    /// Fragments it must not contain.
    not: &'static [&'static str],
    /// Most requests the server may see for the id per attempt (redirects are requests).
    requests_per_attempt: u64,
    exit: i32,
}

impl Case {
    /// An `error` outcome: status unchanged, one request per attempt, exit 1.
    const fn error(
        id: &'static str,
        http_status: Option<i64>,
        attempts: i64,
        error: &'static [&'static str],
    ) -> Case {
        Case {
            id,
            status: "failed",
            http_status,
            attempts,
            error,
            not: &[],
            requests_per_attempt: 1,
            exit: 1,
        }
    }

    /// The longest a run may take: every attempt running into the timeout, every backoff at
    /// its maximum, plus [`SLACK`].
    fn time_bound(&self) -> Duration {
        let attempts = u32::try_from(self.attempts).expect("few attempts");
        TIMEOUT * attempts + BACKOFF_MAX * attempts.saturating_sub(1) + SLACK
    }
}

/// One finished run of the binary.
struct Measured {
    code: Option<i32>,
    elapsed: Duration,
    /// `ru_maxrss` from wait4, in KiB.
    ru_maxrss_kib: i64,
    /// The child's `VmHWM`, in KiB, as last read before it exited.
    vm_hwm_kib: i64,
    /// This process's `VmHWM` after the child was reaped, in KiB.
    parent_hwm_kib: i64,
    stdout: String,
    stderr: String,
}

impl Measured {
    /// The child's own peak RSS, in KiB (see the module doc).
    fn peak_kib(&self) -> i64 {
        if self.ru_maxrss_kib > self.parent_hwm_kib {
            self.ru_maxrss_kib
        } else {
            self.vm_hwm_kib
        }
    }
}

/// `VmHWM` of a live process, in KiB (None once it is a zombie).
fn vm_hwm_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs `recheck ARGS` in the sandbox and reaps it with wait4, killing it if it outlives
/// `bound + KILL_AFTER`.
fn run_measured(sb: &Sandbox, args: &[String], bound: Duration) -> Measured {
    let out_path = sb.path("stdout.txt");
    let err_path = sb.path("stderr.txt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recheck"));
    cmd.current_dir(sb.dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .env_remove("RUST_LOG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RECHECK_") {
            cmd.env_remove(k);
        }
    }
    for k in crate::support::PROXY_VARS {
        cmd.env_remove(k);
    }
    let started = Instant::now();
    #[allow(clippy::zombie_processes, reason = "reaped by wait4 below")]
    let mut child = cmd.spawn().expect("spawn recheck");
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    let mut vm_hwm = 0;
    loop {
        // Until reaped below, the pid is this child's: its /proc entry cannot be another's.
        if let Some(hwm) = vm_hwm_kib(child.id()) {
            vm_hwm = hwm;
        }
        // SAFETY: `pid` is our own unreaped child; `status` and `usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if !killed && started.elapsed() > bound + KILL_AFTER {
            // Not reaped yet, so the pid is still this child's.
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = started.elapsed();
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        elapsed,
        // c_long: i64 here, i32 on 32-bit targets.
        ru_maxrss_kib: usage.ru_maxrss as i64,
        vm_hwm_kib: vm_hwm,
        parent_hwm_kib: vm_hwm_kib(std::process::id()).expect("own VmHWM"),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Runs one case against `server` and checks every promise.
fn check(server: &MockServer, case: &Case) {
    let sb = Sandbox::new();
    let db = sb.path("s.db");
    // The hostile item first (items are checked in rowid order), then the OK ones.
    let mut ids = vec![case.id];
    ids.extend(OK_IDS);
    support::sqlite_store(&db, "t", &ids);
    let template = server.item_url_template();
    let auth = format!("Authorization: {SECRET}");
    let retries = RETRIES.to_string();
    let args: Vec<String> = [
        "run",
        "--task",
        "t",
        "--store",
        "s.db",
        "--url",
        &template,
        "-H",
        &auth,
        "--timeout",
        TIMEOUT_ARG,
        "--retries",
        &retries,
        "--backoff",
        BACKOFF_ARG,
        "--max-body",
        MAX_BODY,
        "--expect-json",
        "/ok=true",
        "--concurrency",
        "1",
        "--format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bound = case.time_bound();
    let m = run_measured(&sb, &args, bound);
    let peak = m.peak_kib();
    let ctx = format!(
        "{}: exit {:?} in {:?}, peak RSS {peak} KiB (ru_maxrss {}, VmHWM {}, ours {})\n\
         stdout: {}\nstderr: {}",
        case.id,
        m.code,
        m.elapsed,
        m.ru_maxrss_kib,
        m.vm_hwm_kib,
        m.parent_hwm_kib,
        m.stdout,
        m.stderr
    );
    // For the record (`cargo test hostile -- --nocapture`).
    eprintln!(
        "hostile {:<24} {:>5} ms (bound {} ms)  peak RSS {:>6} KiB (ru_maxrss {}, VmHWM {}, ours {})  requests {}",
        case.id,
        m.elapsed.as_millis(),
        bound.as_millis(),
        peak,
        m.ru_maxrss_kib,
        m.vm_hwm_kib,
        m.parent_hwm_kib,
        server.requests(case.id),
    );

    assert_eq!(m.code, Some(case.exit), "{ctx}");
    let row = sqlite_row(&db, "t", case.id);
    let ctx = format!("{ctx}\n{}: {row:?}", case.id);
    assert_eq!(row.status, case.status, "{ctx}");
    assert_eq!(row.attempts, case.attempts, "{ctx}");
    let e = row.last_error.as_deref().unwrap_or_default();
    for fragment in case.error {
        assert!(e.contains(fragment), "{ctx}\nlast_error lacks {fragment:?}");
    }
    for fragment in case.not {
        assert!(!e.contains(fragment), "{ctx}\nlast_error has {fragment:?}");
    }
    if case.error.is_empty() {
        assert_eq!(row.last_error, None, "{ctx}");
    }
    assert_eq!(row.http_status, case.http_status, "{ctx}");
    assert!(row.checked_at.is_some(), "{ctx}");
    let seen = server.requests(case.id);
    let attempts = u64::try_from(case.attempts).expect("attempts");
    assert!(
        (attempts..=attempts * case.requests_per_attempt).contains(&seen),
        "{ctx}\n{seen} requests for {} attempts",
        case.attempts
    );
    // The run went on: every other item got its answer.
    for id in OK_IDS {
        let row = sqlite_row(&db, "t", id);
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("ok", 1),
            "{ctx}\n{id}: {row:?}"
        );
    }
    let s: serde_json::Value = serde_json::from_str(m.stdout.trim())
        .unwrap_or_else(|e| panic!("{ctx}\nsummary is not JSON: {e}"));
    assert_eq!(s["checked"], 4, "{ctx}");
    let ok = OK_IDS.len() + usize::from(case.status == "ok");
    assert_eq!(s["ok"], ok, "{ctx}");
    assert_eq!(s["errors"], 4 - ok, "{ctx}");
    assert_eq!(s["interrupted"], false, "{ctx}");

    // Bounded time and memory.
    assert!(m.elapsed < bound, "{ctx}\ntook longer than {bound:?}");
    assert!(
        peak > 0 && peak < MAX_RSS_KIB,
        "{ctx}\npeak RSS not below {MAX_RSS_KIB} KiB"
    );

    // The credentials never show up in what recheck prints or stores.
    let stored = support::snapshot(&db)
        .into_iter()
        .filter_map(|(_, bytes)| bytes)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect::<String>();
    for (what, text) in [
        ("stdout", &m.stdout),
        ("stderr", &m.stderr),
        ("store", &stored),
    ] {
        assert!(!text.contains("s3cret"), "{ctx}\ncredentials in {what}");
    }
}

fn with_default_server(case: &Case) {
    check(&support::default_server(), case);
}

#[test]
fn hang_after_accept_times_out() {
    with_default_server(&Case::error(
        "hang-1",
        None,
        RETRIES + 1,
        &["timed out after 300ms (after 2 attempts)"],
    ));
}

#[test]
fn dribbled_body_times_out() {
    // 200 with Content-Length 1000, then one byte per 100 ms: each attempt's timeout fires
    // mid-body (the timeout bounds connect to last body byte, not each read).
    with_default_server(&Case::error(
        "dribble-1",
        None,
        RETRIES + 1,
        &["timed out after 300ms (after 2 attempts)"],
    ));
}

#[test]
fn connection_reset_is_retried() {
    // The server reads the request and answers with a TCP RST.
    with_default_server(&Case::error(
        "reset-1",
        None,
        RETRIES + 1,
        &["Connection reset by peer", "(after 2 attempts)"],
    ));
}

#[test]
fn wrong_content_length_is_retried() {
    // 200, Content-Length 1000, 100 bytes, then the connection closes: the connection broke
    // mid-answer, which is retried like a reset; the message says how much of the body came.
    with_default_server(&Case {
        not: &["decoding"],
        ..Case::error(
            "badlen-1",
            None,
            RETRIES + 1,
            &["100 of 1000", "(after 2 attempts)"],
        )
    });
}

#[test]
fn invalid_json_is_final() {
    with_default_server(&Case::error("garbage-1", Some(200), 1, &["invalid JSON"]));
}

#[test]
fn gigabytes_with_content_length_are_refused() {
    // 2 GB, announced by Content-Length: refused before reading.
    with_default_server(&Case::error(
        "huge2000000000-1",
        Some(200),
        1,
        &["larger than --max-body (65536 bytes)"],
    ));
}

#[test]
fn gigabytes_chunked_are_cut_off() {
    // 2 GB without Content-Length: recheck can only stop by counting.
    with_default_server(&Case::error(
        "hugechunked2000000000-1",
        Some(200),
        1,
        &["larger than --max-body (65536 bytes)"],
    ));
}

#[test]
fn endless_redirect_loop_is_cut_off() {
    // 302 to itself forever: the first request and at most 10 redirects, one attempt.
    with_default_server(&Case {
        requests_per_attempt: 11,
        ..Case::error("loop-1", None, 1, &["too many redirects"])
    });
}

#[test]
fn redirect_to_another_host_drops_the_credentials() {
    let elsewhere = support::default_server();
    let server = support::default_server();
    server.set(
        "moved-1",
        Behavior::Redirect {
            to: format!("{}/items/ok-moved", elsewhere.url()),
        },
    );
    // The other host answers OK, so the item is OK: what matters is what it was sent.
    check(
        &server,
        &Case {
            status: "ok",
            http_status: Some(200),
            error: &[],
            exit: 0,
            ..Case::error("moved-1", None, 1, &[])
        },
    );
    let here = server.headers_seen("moved-1");
    assert!(
        here.iter()
            .any(|(k, v)| k == "authorization" && v == SECRET),
        "not sent to the host it was meant for: {here:?}"
    );
    assert_eq!(elsewhere.requests("ok-moved"), 1, "redirect not followed");
    let there = elsewhere.headers_seen("ok-moved");
    assert!(
        there.iter().all(|(k, _)| k != "authorization"),
        "credentials followed the redirect to another host: {there:?}"
    );
}
