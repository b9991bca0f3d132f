//! JSON stores through the real binary: what recheck does not own survives byte for byte.

use crate::support::{self, Sandbox};

/// Replaces every `"checked_at": "<RFC 3339>"` value with `"<T>"`, the one thing that
/// differs between runs.
fn mask_times(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    let key = "\"checked_at\":";
    while let Some(at) = rest.find(key) {
        let (head, tail) = rest.split_at(at + key.len());
        out.push_str(head);
        let spaces = tail.len() - tail.trim_start().len();
        out.push_str(&tail[..spaces]);
        let tail = &tail[spaces..];
        let end = tail[1..].find('"').expect("closing quote") + 2;
        assert!(
            tail[..end].ends_with("Z\""),
            "not a UTC time: {}",
            &tail[..end]
        );
        out.push_str("\"<T>\"");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

const BEFORE: &str = r#"{
  "schema": 2,
  "generated": "2026-11-20T00:00:00Z",
  "items": [
    {
      "task_id": "t1",
      "item_id": "ok-1",
      "status": "failed",
      "meta": {"size": 1.0e3, "tags": ["a", "b"], "title": "caf\u00e9 \"quoted\""},
      "attempts": 2
    },
    {"task_id": "t1", "id": "fail-1", "status": "failed", "x": -0.0},
    {
      "task_id": "t2",
      "item_id": "ok-2",
      "status": "failed"
    },
    {"task_id":"t1","item_id":"404-1","status":"failed","last_error":"old","http_status":500}
  ],
  "trailer": [1,2,3]
}
"#;

const AFTER: &str = r#"{
  "schema": 2,
  "generated": "2026-11-20T00:00:00Z",
  "items": [
    {
      "task_id": "t1",
      "item_id": "ok-1",
      "status": "ok",
      "meta": {"size": 1.0e3, "tags": ["a", "b"], "title": "caf\u00e9 \"quoted\""},
      "attempts": 3,
      "http_status": 200,
      "last_error": null,
      "checked_at": "<T>"
    },
    {"task_id": "t1", "id": "fail-1", "status": "failed", "x": -0.0, "http_status": 200, "attempts": 1, "last_error": "/status is \"processing\", expected \"done\"", "checked_at": "<T>"},
    {
      "task_id": "t2",
      "item_id": "ok-2",
      "status": "failed"
    },
    {"task_id":"t1","item_id":"404-1","status":"failed","last_error":"HTTP 404 Not Found","http_status":404,"attempts":1,"checked_at":"<T>"}
  ],
  "trailer": [1,2,3]
}
"#;

#[test]
fn json_round_trip_keeps_every_byte_it_does_not_own() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let path = sb.path("items.json");
    std::fs::write(&path, BEFORE).unwrap();
    sb.run(&server, "t1", "items.json")
        .args(["--expect-json", "/status=done"])
        .assert()
        .code(1);
    let after = std::fs::read_to_string(&path).unwrap();
    assert_eq!(mask_times(&after), AFTER);
    // No lock file or temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["items.json"]);
}

#[test]
fn jsonl_keeps_lines_and_numeric_statuses() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let path = sb.path("items.jsonl");
    let before = "{\"task_id\": 7, \"item_id\": \"ok-1\", \"status\": 5, \"z\": {\"k\": [1, 2]}}\n\n{\"task_id\": 7, \"item_id\": \"fail-1\", \"status\": 5}\n{\"task_id\": 8, \"item_id\": \"ok-2\", \"status\": 5}\n";
    std::fs::write(&path, before).unwrap();
    sb.run(&server, "7", "items.jsonl")
        .args([
            "--failed-status",
            "5",
            "--ok-status",
            "1",
            "--expect-json",
            "/ok=true",
        ])
        .assert()
        .code(1);
    let after = mask_times(&std::fs::read_to_string(&path).unwrap());
    let expected = "{\"task_id\": 7, \"item_id\": \"ok-1\", \"status\": 1, \"z\": {\"k\": [1, 2]}, \"http_status\": 200, \"attempts\": 1, \"last_error\": null, \"checked_at\": \"<T>\"}\n\n{\"task_id\": 7, \"item_id\": \"fail-1\", \"status\": 5, \"http_status\": 200, \"attempts\": 1, \"last_error\": \"/ok is false, expected true\", \"checked_at\": \"<T>\"}\n{\"task_id\": 8, \"item_id\": \"ok-2\", \"status\": 5}\n";
    assert_eq!(after, expected);
}

#[test]
fn a_locked_file_store_fails_fast_naming_the_holder() {
    let sb = Sandbox::new();
    let path = sb.path("items.json");
    std::fs::write(
        &path,
        r#"[{"task_id": "t", "item_id": "hang-1", "status": "failed"}]"#,
    )
    .unwrap();
    let server = support::default_server();
    let mut first = std::process::Command::new(assert_cmd::cargo::cargo_bin("recheck"))
        .current_dir(sb.dir.path())
        .args([
            "run",
            "--task",
            "t",
            "--store",
            "items.json",
            "--timeout",
            "20s",
            "--url",
        ])
        .arg(server.item_url_template())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first run is inside its check (the server saw the request).
    let started = std::time::Instant::now();
    while server.requests("hang-1") == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "first run never asked"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = std::fs::read(&path).unwrap();
    let out = sb.run(&server, "t", "items.json").output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        server.requests("hang-1"),
        1,
        "the second run must not check anything"
    );
}
