//! Store and output faults: a store that fills up mid-run (SQLite and JSON on a small
//! tmpfs), a SQLite lock held by another process for 15 s, and a `--report` on a disk that
//! fills. What must hold: a failing store stops new checks and exits 4 with what was
//! written intact and what was not counted (`unwritten`); a transient lock is waited out;
//! a failing output never costs the store an answer.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, MockConfig, Sandbox};

/// A tmpfs mounted on a directory for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`; `None` (and a
    /// "skipped" line) where mounting is not permitted.
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            println!("skipped: {test} needs root to mount tmpfs");
            return None;
        }
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Bytes still free for files.
    fn free(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs(3) fills the struct we own; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}", self.dir.display());
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Writes a padding file so that only about `room` bytes stay free (real bytes: a
    /// sparse file would take no room on tmpfs).
    fn leave(&self, room: u64) {
        let free = self.free();
        assert!(free > room, "tmpfs too small: {free} free, {room} wanted");
        let mut pad = std::fs::File::create(self.dir.join("padding")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut left = (free - room) / 4096 * 4096;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            pad.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        pad.sync_all().unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file still open somewhere must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A rule on a 1,500-character pointer no answer has: every item is `still_failed` with
/// a ~1.5 KB `last_error` naming the pointer, so each written answer makes the store grow
/// while the rows themselves (and so the claims, which touch a page of rows) stay small.
fn long_rule() -> String {
    format!("/{}=x", "p".repeat(1500))
}

fn short_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ok-{i}")).collect()
}

/// Answers after 20 ms: with 4 workers about 200 answers a second, so a run of thousands
/// of items spans many batches and checkpoints.
fn slow_server() -> support::MockServer {
    support::server(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
}

const CONCURRENCY: u64 = 4;

fn run_until_full(
    sb: &Sandbox,
    server: &support::MockServer,
    store: &str,
    rule: &str,
) -> std::process::Output {
    sb.run(server, "t", store)
        .args(["--concurrency", &CONCURRENCY.to_string()])
        .args(["--expect-json", rule, "--format", "json"])
        .args(["--report", "r.jsonl"])
        .output()
        .unwrap()
}

/// The report's lines by what became of them in the store.
fn report_by_store(path: &Path) -> std::collections::HashMap<String, HashSet<String>> {
    let mut by: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let id = v["item_id"].as_str().unwrap().to_string();
        by.entry(v["store"].as_str().unwrap().to_string())
            .or_default()
            .insert(id);
    }
    by
}

/// What a run that hit a full store must show, whatever the store: exit 4, one stderr line
/// with the counts, `checked = written + unwritten`, no request after the failure (the
/// requests are those answered plus at most the in-flight ones), the run stopped early,
/// and the report holding every answer with the right `store` field. Returns the ids the
/// report says were written.
fn check_store_full(
    out: &std::process::Output,
    server: &support::MockServer,
    n: u64,
    sb: &Sandbox,
) -> HashSet<String> {
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("the store failed"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("could not be written (unwritten)"),
        "{stderr}"
    );
    assert!(!stderr.contains("nothing was written"), "{stderr}");
    let s = support::summary(out);
    println!("summary: {s}");
    let (checked, written, unwritten) = (
        s["checked"].as_u64().unwrap(),
        s["written"].as_u64().unwrap(),
        s["unwritten"].as_u64().unwrap(),
    );
    assert_eq!(s["conflicts"], 0, "{s}");
    assert_eq!(checked, written + unwritten, "{s}");
    assert!(written > 0, "the store filled before the first write: {s}");
    assert!(unwritten > 0, "{s}");
    assert!(
        lines[0].contains(&format!(
            "{written} answers written, {unwritten} could not be written"
        )),
        "{stderr}"
    );
    let store_error = s["store_error"].as_str().unwrap_or_default();
    assert!(
        store_error.contains("full") || store_error.contains("No space"),
        "{s}"
    );
    // No new request after the failure: every request belongs to an answer the summary
    // counts, or to one of the few checks in flight at the stop.
    let requests = server.total_requests();
    assert!(
        requests <= checked + 2 * CONCURRENCY,
        "{requests} requests for {checked} answers: {s}"
    );
    assert!(requests < n, "the run went on through every item: {s}");
    let by = report_by_store(&sb.path("r.jsonl"));
    let count = |k: &str| by.get(k).map_or(0, HashSet::len) as u64;
    assert_eq!(count("written"), written, "{s}");
    assert_eq!(count("unwritten"), unwritten, "{s}");
    assert_eq!(by.values().map(HashSet::len).sum::<usize>() as u64, checked);
    by.get("written").cloned().unwrap_or_default()
}

#[test]
fn sqlite_disk_full_mid_run_stops_and_exits_4() {
    let sb = Sandbox::new();
    let Some(fs) = Tmpfs::mount(
        &sb.path("full"),
        "8m",
        "sqlite_disk_full_mid_run_stops_and_exits_4",
    ) else {
        return;
    };
    let n = 3000;
    let ids = short_ids(n);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let db = sb.path("full/s.db");
    support::sqlite_store(&db, "t", &refs);
    // Every answer adds ~1.5 KB to the rows (and more to a journal or WAL): room for the
    // first claim and a few hundred answers, far fewer than 3,000.
    fs.leave(1024 * 1024);
    let server = slow_server();
    let out = run_until_full(&sb, &server, "full/s.db", &long_rule());
    let written = check_store_full(&out, &server, n as u64, &sb);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    // What was written stays, and it is exactly what the report says was written.
    let rows = support::sqlite_rows(&db, "t");
    assert_eq!(rows.len(), n);
    let in_store: HashSet<String> = rows
        .iter()
        .filter(|(_, r)| r.checked_at.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(in_store, written);
    for id in &in_store {
        let r = &rows[id];
        assert_eq!(r.http_status, Some(200));
        assert!(
            r.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("is missing"),
            "{r:?}"
        );
    }
    drop(fs);
}

#[test]
fn json_disk_full_mid_run_stops_and_exits_4() {
    let sb = Sandbox::new();
    let Some(fs) = Tmpfs::mount(
        &sb.path("full"),
        "8m",
        "json_disk_full_mid_run_stops_and_exits_4",
    ) else {
        return;
    };
    let n = 3000;
    let ids = short_ids(n);
    let items: Vec<Value> = ids
        .iter()
        .map(|id| serde_json::json!({"task_id": "t", "item_id": id, "status": "failed"}))
        .collect();
    let path = sb.path("full/items.json");
    let text = serde_json::to_string_pretty(&serde_json::json!({ "items": items })).unwrap();
    std::fs::write(&path, &text).unwrap();
    // A checkpoint writes the whole file next to the old one: room for the file and
    // 600 KiB more, i.e. the first checkpoint (at most ~200 answers, ~1.6 KB each) and not
    // the whole run.
    fs.leave(text.len() as u64 + 600 * 1024);
    let server = slow_server();
    let out = run_until_full(&sb, &server, "json:full/items.json", &long_rule());
    let written = check_store_full(&out, &server, n as u64, &sb);

    // The file is whole (the failed writes went to temporary files, now removed) and holds
    // exactly the answers the report says were written.
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items.len(), n);
    let in_store: HashSet<String> = items
        .iter()
        .filter(|i| !i["checked_at"].is_null())
        .map(|i| i["item_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_store, written);
    let names: Vec<String> = std::fs::read_dir(sb.path("full"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    drop(fs);
}

#[test]
fn sqlite_lock_held_15s_is_waited_out() {
    let server = support::server(MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    });
    let sb = Sandbox::new();
    let n = 2000;
    let ids: Vec<String> = (0..n).map(|i| format!("ok-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &refs);

    let held = Duration::from_secs(15);
    let locker = {
        let db = db.clone();
        std::thread::spawn(move || {
            // Once the first answers are written, another process takes the write lock.
            support::wait_until("the first rows written", Duration::from_secs(60), || {
                let conn = rusqlite::Connection::open(&db).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.query_row("SELECT COUNT(*) FROM items WHERE status = 'ok'", [], |r| {
                    r.get::<_, i64>(0)
                })
                .is_ok_and(|c| c >= 20)
            });
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            let taken = Instant::now();
            let done_then: i64 = conn
                .query_row("SELECT COUNT(*) FROM items WHERE status = 'ok'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            std::thread::sleep(held);
            conn.execute_batch("COMMIT").unwrap();
            (taken, Instant::now(), done_then)
        })
    };
    let started = Instant::now();
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--concurrency", "4", "--format", "json"])
        .output()
        .unwrap();
    let ended = Instant::now();
    let (taken, released, done_then) = locker.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        (done_then as usize) < n,
        "the run was over before the lock was taken"
    );
    assert!(ended > released, "the run ended while the lock was held");
    assert!(ended - started >= held, "{:?}", ended - started);
    assert!(taken > started);
    let s = support::summary(&out);
    assert_eq!(s["checked"], n);
    assert_eq!(s["written"], n);
    assert_eq!(s["unwritten"], 0);
    assert!(s["store_error"].is_null(), "{s}");
    let rows = support::sqlite_rows(&db, "t");
    assert_eq!(rows.len(), n);
    for (id, r) in &rows {
        assert_eq!(r.status, "ok", "{id}: {r:?}");
        assert_eq!(r.attempts, 1, "{id}: {r:?}");
    }
    assert_eq!(server.total_requests(), n as u64, "each item checked once");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trying again"), "{stderr}");
}

#[test]
fn report_on_a_full_disk_costs_the_store_nothing() {
    let sb = Sandbox::new();
    let Some(_fs) = Tmpfs::mount(
        &sb.path("small"),
        "1m",
        "report_on_a_full_disk_costs_the_store_nothing",
    ) else {
        return;
    };
    let server = support::default_server();
    let n = 4000;
    // ~450-byte report lines: 4,000 of them are ~1.8 MB, more than the 1 MiB disk.
    let pad = "b".repeat(200);
    let ids: Vec<String> = (0..n).map(|i| format!("ok-{i}-{pad}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let db = sb.path("s.db");
    support::sqlite_store(&db, "t", &refs);
    let out = sb
        .run(&server, "t", "s.db")
        .args(["--concurrency", "20", "--format", "json"])
        .args(["--report", "small/r.jsonl"])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(code >= 1 && code != 2 && code != 4, "{out:?}");
    assert_eq!(code, 1, "every item is OK: only the report failed: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("--report")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("small/r.jsonl"), "{stderr}");
    assert!(lines[0].contains("No space left on device"), "{stderr}");
    let s = support::summary(&out);
    assert_eq!(s["checked"], n);
    assert_eq!(s["written"], n);
    assert_eq!(s["output_errors"], 1);
    // The store got every answer.
    let rows = support::sqlite_rows(&db, "t");
    assert_eq!(rows.len(), n);
    for (id, r) in &rows {
        assert_eq!(r.status, "ok", "{id}: {r:?}");
        assert!(r.checked_at.is_some(), "{id}");
    }
    // The lines written before the disk filled are whole.
    let text = std::fs::read_to_string(sb.path("small/r.jsonl")).unwrap();
    let whole = text
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .count();
    assert!(whole > 0 && whole < n, "{whole}");
}
