//! The operator's view: a progress bar when stderr is a terminal (run here in a
//! pseudo-terminal), log lines above it, the summary after it; nothing but plain log lines
//! when stderr is a pipe, unless `--progress always` asks for the bar.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, MockServer, Sandbox};

/// What a run in a pseudo-terminal printed: stdout and stderr both, as the terminal got
/// them (raw mode: no `\n` → `\r\n` translation, so every `\r` is recheck's own).
struct PtyRun {
    out: String,
    code: Option<i32>,
    took: Duration,
}

/// `recheck ARGS` in `sandbox` with stdout and stderr on a 120×40 pseudo-terminal.
fn run_in_pty(sandbox: &Sandbox, args: &[&str]) -> PtyRun {
    run_in_pty_with(sandbox, args, &[])
}

/// [`run_in_pty`], sending each signal once its delay after the start has passed.
fn run_in_pty_with(sandbox: &Sandbox, args: &[&str], signals: &[(Duration, i32)]) -> PtyRun {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the locals; the name may be null, and the termios
    // may be null (defaults); `size` outlives the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened by openpty and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill; `slave` is open.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(
            libc::tcgetattr(std::os::fd::AsRawFd::as_raw_fd(&slave), &mut t),
            0
        );
        libc::cfmakeraw(&mut t);
        assert_eq!(
            libc::tcsetattr(std::os::fd::AsRawFd::as_raw_fd(&slave), libc::TCSANOW, &t),
            0
        );
    }

    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("recheck"));
    cmd.current_dir(sandbox.dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave.try_clone().expect("dup pty")))
        .stderr(Stdio::from(slave))
        // CI may have no TERM (indicatif, like most tools, draws nothing on a dumb terminal).
        .env("TERM", "xterm-256color");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RECHECK_") {
            cmd.env_remove(k);
        }
    }
    for k in crate::support::PROXY_VARS {
        cmd.env_remove(k);
    }
    cmd.env_remove("RUST_LOG");
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn recheck");
    drop(cmd); // closes our copies of the slave side, so the reader sees the end

    // Read while it runs: a full pty buffer would block the child's writes.
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // Linux answers EIO once the last slave fd is closed.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        out
    });
    let mut pending: Vec<(Duration, i32)> = signals.to_vec();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if let Some(&(at, sig)) = pending.first()
            && started.elapsed() >= at
        {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe { libc::kill(child.id() as i32, sig) };
            pending.remove(0);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("recheck in a pty did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let out = reader.join().expect("pty reader");
    PtyRun {
        out: String::from_utf8_lossy(&out).into_owned(),
        code: status.code(),
        took,
    }
}

/// A SQLite store `file` of `n` items that each take the mock server `ms` milliseconds to
/// answer; returns its `--store` spelling.
fn slow_items(sandbox: &Sandbox, file: &str, n: usize, ms: u32) -> String {
    let ids: Vec<String> = (0..n).map(|i| format!("slow{ms}-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sandbox.path(file), "t", &ids);
    file.to_string()
}

fn run_args<'a>(server_template: &'a str, store: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--task",
        "t",
        "--store",
        store,
        "--url",
        server_template,
        "--backoff",
        "5ms..20ms",
    ];
    args.extend_from_slice(extra);
    args
}

/// A `checked  N` row of the text summary.
fn summary_row(text: &str, n: usize) -> Option<usize> {
    text.match_indices("checked").find_map(|(at, _)| {
        let rest = text[at + "checked".len()..].trim_start_matches(' ');
        rest.starts_with(&format!("{n}\n")).then_some(at)
    })
}

#[test]
fn bar_on_a_terminal_then_the_summary_in_its_place() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let store = slow_items(&sb, "items.db", 60, 300);
    let template = server.item_url_template();
    // 60 items, 10 at a time, 300 ms each: about 2 s of bar.
    let run = run_in_pty(&sb, &run_args(&template, &store, &["--concurrency", "10"]));
    assert_eq!(run.code, Some(0), "{}", run.out);
    assert!(
        run.took >= Duration::from_millis(1500),
        "took {:?}",
        run.took
    );

    let out = &run.out;
    let frames = out.matches("/60 checked").count();
    assert!(
        frames >= 5,
        "expected a redrawn bar, got {frames} frames:\n{out:?}"
    );
    // Redrawn at most ~10 times a second (plus the first draw and the redraws under log lines).
    let most = (run.took.as_secs_f64() * 10.0).ceil() as usize + 5;
    assert!(frames <= most, "{frames} frames in {:?}", run.took);
    assert!(out.contains('\r') && out.contains("\x1b[2K"), "{out:?}");
    assert!(out.contains("req/s, ETA"), "{out:?}");
    assert!(out.contains("ok "), "{out:?}");

    // The bar is cleared, then the summary (stdout) comes after its last frame.
    let last_frame = out.rfind("/60 checked").unwrap();
    let summary = summary_row(out, 60).unwrap_or_else(|| panic!("no summary in {out:?}"));
    assert!(
        summary > last_frame,
        "summary before the last bar frame:\n{out:?}"
    );
    let between = &out[last_frame..summary];
    assert!(between.contains("\x1b[2K"), "bar not cleared: {between:?}");
    assert!(!out[summary..].contains("/60 checked"));
    // Log lines are whole: the first one printed above the bar, the last after it.
    assert!(out.contains("checking failed items"), "{out:?}");
    assert!(between.contains(" done "), "{between:?}");
}

#[test]
fn json_logs_stay_whole_lines_above_the_bar() {
    let server = support::default_server();
    let sb = Sandbox::new();
    // Retried items make debug log lines while the bar is up.
    let ids: Vec<String> = (0..40)
        .map(|i| match i % 2 {
            0 => format!("slow200-{i}"),
            _ => format!("503x1-{i}"),
        })
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    support::sqlite_store(&sb.path("items.db"), "t", &ids);
    let template = server.item_url_template();
    let run = run_in_pty(
        &sb,
        &run_args(
            &template,
            "items.db",
            &[
                "--concurrency",
                "4",
                "-v",
                "--log-format",
                "json",
                "--format",
                "json",
            ],
        ),
    );
    assert_eq!(run.code, Some(0), "{}", run.out);
    let out = &run.out;
    assert!(out.contains("/40 checked"), "no bar: {out:?}");
    let mut logs = 0;
    for (at, _) in out.match_indices("{\"timestamp\"") {
        // Each record starts at a line start or right after the bar was wiped, and is one
        // JSON object up to its newline.
        let before = &out[..at];
        assert!(
            before.is_empty() || before.ends_with('\n') || ends_with_cursor_up(before),
            "log line does not start a clean line: {:?}",
            &before[before.len().saturating_sub(40)..]
        );
        let line = &out[at..at + out[at..].find('\n').expect("log line ends")];
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {line:?}"));
        logs += 1;
    }
    assert!(logs >= 20, "expected retry logs, got {logs}:\n{out:?}");
}

/// Whether `s` ends with a cursor-up sequence (`ESC [ n A`), the end of a bar's erasure.
fn ends_with_cursor_up(s: &str) -> bool {
    s.strip_suffix('A')
        .map(|s| s.trim_end_matches(|c: char| c.is_ascii_digit()))
        .is_some_and(|s| s.ends_with("\x1b["))
}

#[test]
fn never_draws_even_on_a_terminal() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let store = slow_items(&sb, "items.db", 20, 100);
    let template = server.item_url_template();
    let run = run_in_pty(
        &sb,
        &run_args(
            &template,
            &store,
            &["--concurrency", "5", "--progress", "never"],
        ),
    );
    assert_eq!(run.code, Some(0), "{}", run.out);
    assert!(!run.out.contains("/20 checked"), "{:?}", run.out);
    assert!(
        !run.out.contains("\x1b[2K") && !run.out.contains('\r'),
        "{:?}",
        run.out
    );
    assert!(summary_row(&run.out, 20).is_some(), "{:?}", run.out);
}

fn piped(server: &MockServer, sb: &Sandbox, store: &str, extra: &[&str]) -> std::process::Output {
    let template = server.item_url_template();
    sb.cmd()
        .args(run_args(&template, store, extra))
        .env("TERM", "xterm-256color")
        .output()
        .expect("run recheck")
}

#[test]
fn a_pipe_gets_plain_log_lines_only() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let store = slow_items(&sb, "items.db", 20, 100);
    let out = piped(&server, &sb, &store, &["--concurrency", "5"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checking failed items"), "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "control characters on a pipe: {stderr:?}"
    );
    assert!(!stderr.contains("/20 checked"), "{stderr}");

    // JSON logs on a pipe: every line is one JSON object.
    let store = slow_items(&sb, "again.db", 20, 100);
    let out = piped(
        &server,
        &sb,
        &store,
        &["--concurrency", "5", "--log-format", "json", "-v"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
    }
}

#[test]
fn always_draws_on_a_pipe_too() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let store = slow_items(&sb, "items.db", 20, 100);
    let out = piped(
        &server,
        &sb,
        &store,
        &[
            "--concurrency",
            "5",
            "--progress",
            "always",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/20 checked"), "no bar: {stderr:?}");
    assert!(stderr.contains("\x1b[2K"), "{stderr:?}");
    // The summary on stdout is untouched by the bar.
    assert_eq!(support::summary(&out)["checked"], 20);
}

/// Ctrl-C mid-run, once (the run writes what was answered, then prints its summary) and
/// twice (it exits at once): either way the bar is cleared after its last frame, and
/// nothing of it is left below.
#[test]
fn the_bar_is_cleared_after_one_and_two_ctrl_c() {
    let server = support::default_server();
    for signals in [
        &[(Duration::from_millis(1200), libc::SIGINT)][..],
        &[
            (Duration::from_millis(1200), libc::SIGINT),
            (Duration::from_millis(1300), libc::SIGINT),
        ][..],
    ] {
        let sb = Sandbox::new();
        let store = slow_items(&sb, "items.db", 200, 300);
        let template = server.item_url_template();
        let run = run_in_pty_with(
            &sb,
            &run_args(&template, &store, &["--concurrency", "10"]),
            signals,
        );
        assert_eq!(run.code, Some(130), "{}", run.out);
        let out = &run.out;
        let last_frame = out
            .rfind("/200 checked")
            .unwrap_or_else(|| panic!("no bar drawn: {out:?}"));
        // Erasing the two-line bar moves the cursor up over its first line: without an
        // erasure, its last frame is the last thing on the screen.
        let after = &out[last_frame..];
        let erased = after.match_indices("\x1b[").any(|(at, _)| {
            ends_with_cursor_up(
                &after[..at
                    + 2
                    + after[at + 2..]
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(0)
                    + 1],
            )
        });
        assert!(
            erased,
            "{} signal(s): the bar's last frame is not cleared: {after:?}",
            signals.len()
        );
        if signals.len() == 1 {
            let summary = summary_row(out, 200)
                .map(|_| ())
                .or_else(|| out.contains("(interrupted)").then_some(()));
            assert!(summary.is_some(), "no summary after one Ctrl-C: {out:?}");
        }
    }
}
