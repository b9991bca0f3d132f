//! `recheck import`: memory flat in the input size (2,000,000 ids cost no more than
//! 200,000), ids already there left as they are unless `--reset`, and a bad line anywhere in
//! a streamed input imports nothing.
//!
//! Peak memory is read the way `hostile.rs` explains: `ru_maxrss` from `wait4(2)` also holds
//! this process's own high-water mark (the child is spawned from our address space), so it
//! is the child's only when it is above ours; otherwise the child's own `VmHWM`, polled from
//! `/proc` while it runs, is its peak.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Sandbox};

/// How much more the 2,000,000-id import may peak at than the 200,000-id one, in KiB. The
/// ids alone are 25 MB of input (and over 100 MB as 2,000,000 `String`s in a `Vec`), so
/// anything that holds the input, or even one `u64` per id, is far above this; a streaming
/// import peaks within about 0.5 MiB of the small one (SQLite's page cache is bounded by
/// its `cache_size`, not by the table).
const RSS_MARGIN_KIB: i64 = 8 * 1024;

/// What one reaped `recheck` run left.
struct Reaped {
    code: Option<i32>,
    /// The child's own peak RSS, in KiB (see the module doc).
    peak_kib: i64,
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

/// `VmHWM` of a live process, in KiB; `None` once it has exited.
fn vm_hwm_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs `recheck ARGS` in the sandbox with `stdin` as its standard input and reaps it with
/// `wait4`, for its peak RSS. A run past 10 minutes is killed (and fails the test).
fn run_reaped(sb: &Sandbox, args: &[&str], stdin: File) -> Reaped {
    let (out_path, err_path) = (sb.path("stdout.txt"), sb.path("stderr.txt"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recheck"));
    cmd.current_dir(sb.dir.path())
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .env_remove("RUST_LOG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RECHECK_") {
            cmd.env_remove(k);
        }
    }
    let started = Instant::now();
    #[allow(clippy::zombie_processes, reason = "reaped by wait4 below")]
    let mut child = cmd.spawn().expect("spawn recheck");
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; all-zero bytes are a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut child_hwm = 0;
    loop {
        // Not reaped yet, so this pid (and its /proc entry) is still our child's.
        if let Some(hwm) = vm_hwm_kib(child.id()) {
            child_hwm = hwm;
        }
        // SAFETY: `pid` is our own unreaped child; `status` and `usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "wait4: {}", std::io::Error::last_os_error());
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = started.elapsed();
    let own_hwm = vm_hwm_kib(std::process::id()).expect("own VmHWM");
    // c_long: i64 here, i32 on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let maxrss = usage.ru_maxrss as i64;
    Reaped {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        peak_kib: if maxrss > own_hwm { maxrss } else { child_hwm },
        elapsed,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Writes `n` ids, one per line (`item-0000001`...), to `path`.
fn id_file(path: &Path, n: u64) {
    let mut w = BufWriter::new(File::create(path).expect("id file"));
    for i in 1..=n {
        writeln!(w, "item-{i:07}").expect("write id");
    }
    w.flush().expect("flush ids");
}

/// Imports `n` ids from stdin (the path that copies its input to a temporary file: it does
/// all a FILE import does, and more) into a new store; returns the run.
fn import_n(sb: &Sandbox, n: u64) -> Reaped {
    let input = sb.path(&format!("ids-{n}.txt"));
    id_file(&input, n);
    let store = format!("s-{n}.db");
    let run = run_reaped(
        sb,
        &["import", "--task", "t", "--store", &store],
        File::open(&input).expect("open ids"),
    );
    assert_eq!(run.code, Some(0), "{n} ids: {}", run.stderr);
    assert_eq!(
        run.stdout,
        format!("imported into task t on sqlite:{store}: added {n}, already there 0, reset 0\n")
    );
    let conn = rusqlite::Connection::open(sb.path(&store)).expect("open store");
    let (rows, failed): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), SUM(status = 'failed') FROM items WHERE task_id = 't'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count");
    assert_eq!((rows, failed), (n as i64, n as i64), "{n} ids");
    run
}

#[test]
fn import_of_two_million_ids_keeps_memory_flat() {
    let sb = Sandbox::new();
    let small = import_n(&sb, 200_000);
    let large = import_n(&sb, 2_000_000);
    eprintln!(
        "import: 200,000 ids peak {} KiB in {:?}; 2,000,000 ids peak {} KiB in {:?}",
        small.peak_kib, small.elapsed, large.peak_kib, large.elapsed
    );
    assert!(small.peak_kib > 0 && large.peak_kib > 0, "no peak read");
    assert!(
        large.peak_kib <= small.peak_kib + RSS_MARGIN_KIB,
        "memory grows with the input: 2,000,000 ids peak at {} KiB, 200,000 at {} KiB",
        large.peak_kib,
        small.peak_kib
    );
}

/// `recheck import` with `input` on stdin; its stdout on success.
fn import(sb: &Sandbox, extra: &[&str], input: &str) -> String {
    let out = sb
        .cmd()
        .args(["import", "--task", "t", "--store", "s.db"])
        .args(extra)
        .write_stdin(input)
        .output()
        .expect("run import");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Status and url of item `id` of task `t`.
fn row(sb: &Sandbox, id: &str) -> (String, Option<String>) {
    let conn = rusqlite::Connection::open(sb.path("s.db")).expect("open store");
    conn.query_row(
        "SELECT status, url FROM items WHERE task_id = 't' AND item_id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap_or_else(|e| panic!("row {id}: {e}"))
}

#[test]
fn import_leaves_ids_already_there_unless_reset() {
    let sb = Sandbox::new();
    let line = |a: u64, b: u64, r: u64| {
        format!("imported into task t on sqlite:s.db: added {a}, already there {b}, reset {r}\n")
    };
    assert_eq!(
        import(
            &sb,
            &[],
            "a\nb\n{\"id\": \"c\", \"url\": \"http://127.0.0.1:9/c\"}\n"
        ),
        line(3, 0, 0)
    );
    // A run found b OK.
    let conn = rusqlite::Connection::open(sb.path("s.db")).expect("open store");
    conn.execute(
        "UPDATE items SET status = 'ok', http_status = 200, attempts = 1, \
         checked_at = '2026-12-01T08:00:00.000Z' WHERE task_id = 't' AND item_id = 'b'",
        [],
    )
    .expect("b is ok");
    drop(conn);
    // Importing the same ids again changes nothing of what is there: b stays OK, c keeps
    // its url (the line gives another one).
    assert_eq!(
        import(
            &sb,
            &[],
            "b\n{\"id\": \"c\", \"url\": \"http://127.0.0.1:9/new-c\"}\nd\n"
        ),
        line(1, 2, 0)
    );
    assert_eq!(row(&sb, "b").0, "ok", "an id already there was reset");
    let b = support::sqlite_row(&sb.path("s.db"), "t", "b");
    assert_eq!(
        (b.http_status, b.attempts, b.checked_at.as_deref()),
        (Some(200), 1, Some("2026-12-01T08:00:00.000Z"))
    );
    assert_eq!(
        row(&sb, "c"),
        ("failed".into(), Some("http://127.0.0.1:9/c".into()))
    );
    assert_eq!(row(&sb, "d").0, "failed");
    // --reset: b is failed again and takes the url its line gives; e is new.
    assert_eq!(
        import(
            &sb,
            &["--reset"],
            "{\"id\": \"b\", \"url\": \"http://127.0.0.1:9/new-b\"}\ne\n"
        ),
        line(1, 0, 1)
    );
    assert_eq!(
        row(&sb, "b"),
        ("failed".into(), Some("http://127.0.0.1:9/new-b".into()))
    );
    assert_eq!(row(&sb, "e").0, "failed");
}

#[test]
fn import_bad_line_after_the_first_batch_of_stdin_imports_nothing() {
    let sb = Sandbox::new();
    // Past the first batch of 10,000: a streaming import that wrote batches as it read
    // would have written 20,000 items by the time it reached the bad line.
    let mut input: String = (0..20_005).map(|i| format!("id-{i}\n")).collect();
    input.push_str("{\"id\": \"x\", \"url\": 7}\nlast\n");
    let out = sb
        .cmd()
        .args(["import", "--task", "t", "--store", "s.db"])
        .write_stdin(input)
        .output()
        .expect("run import");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stdin:20006: \"url\" must be a string; nothing was imported"),
        "{err}"
    );
    assert!(
        !sb.path("s.db").exists(),
        "a refused import created the store"
    );
}
