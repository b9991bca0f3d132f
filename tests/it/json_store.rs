//! JSON stores through the real binary: what recheck does not own survives byte for byte.

use crate::support::{self, Sandbox};

/// Replaces every `"checked_at": "<RFC 3339>"` value with `"<T>"`, the one thing that
/// differs between runs.
/// `checked_at` and `first_checked_at` values replaced by `"<T>"` (they must be UTC times).
fn mask_times(s: &str) -> String {
    mask_key(&mask_key(s, "\"checked_at\":"), "\"first_checked_at\":")
}

fn mask_key(s: &str, key: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
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
      "checked_at": "<T>",
      "checks": 1,
      "first_checked_at": "<T>",
      "next_check_at": null
    },
    {"task_id": "t1", "id": "fail-1", "status": "failed", "x": -0.0, "http_status": 200, "attempts": 1, "last_error": "/status is \"processing\", expected \"done\"", "checked_at": "<T>", "checks": 1, "first_checked_at": "<T>", "next_check_at": null},
    {
      "task_id": "t2",
      "item_id": "ok-2",
      "status": "failed"
    },
    {"task_id":"t1","item_id":"404-1","status":"failed","last_error":"HTTP 404 Not Found","http_status":404,"attempts":1,"checked_at":"<T>","checks":1,"first_checked_at":"<T>","next_check_at":null}
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
    let expected = "{\"task_id\": 7, \"item_id\": \"ok-1\", \"status\": 1, \"z\": {\"k\": [1, 2]}, \"http_status\": 200, \"attempts\": 1, \"last_error\": null, \"checked_at\": \"<T>\", \"checks\": 1, \"first_checked_at\": \"<T>\", \"next_check_at\": null}\n\n{\"task_id\": 7, \"item_id\": \"fail-1\", \"status\": 5, \"http_status\": 200, \"attempts\": 1, \"last_error\": \"/ok is false, expected true\", \"checked_at\": \"<T>\", \"checks\": 1, \"first_checked_at\": \"<T>\", \"next_check_at\": null}\n{\"task_id\": 8, \"item_id\": \"ok-2\", \"status\": 5}\n";
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
    let mut first = std::process::Command::new(assert_cmd::cargo::cargo_bin("recheck"));
    for k in crate::support::PROXY_VARS {
        first.env_remove(k);
    }
    let mut first = first
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

/// Replaces the file the way another process would: a temp file renamed over it.
fn foreign_write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("other-writer.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A run that lasts a few seconds (`n` items, one at a time, 300 ms each) on a file store,
/// edited by "another process" after recheck's first checkpoint: one written item set to
/// `cancelled`, the last (not yet checked) item set to `done`, one item appended. Both
/// sides' edits must survive. Returns the file's final text and the id cancelled.
fn foreign_edit_during_a_run(
    name: &str,
    render: impl Fn(&[(String, String)]) -> String,
    appended: &str,
) -> (String, String) {
    let server = support::server(support::MockConfig {
        latency: std::time::Duration::from_millis(300),
        ..Default::default()
    });
    let sb = Sandbox::new();
    let path = sb.path(name);
    let items: Vec<(String, String)> = (1..=16)
        .map(|i| (format!("ok-{i:02}"), "failed".to_string()))
        .collect();
    std::fs::write(&path, render(&items)).unwrap();
    let template = server.item_url_template();
    let run = sb.spawn(&[
        "run",
        "--task",
        "t",
        "--store",
        name,
        "--url",
        &template,
        "--concurrency",
        "1",
        "--format",
        "json",
    ]);
    // Wait for the first checkpoint, then cancel one item it wrote.
    support::wait_until(
        "the first checkpoint",
        std::time::Duration::from_secs(60),
        || std::fs::read_to_string(&path).is_ok_and(|t| t.contains("\"checked_at\"")),
    );
    let now = std::fs::read_to_string(&path).unwrap();
    let cancelled = (1..16)
        .map(|i| format!("ok-{i:02}"))
        .find(|id| now.contains(&format!("\"item_id\": \"{id}\", \"status\": \"ok\"")))
        .unwrap_or_else(|| panic!("no answer written: {now}"));
    let written = format!("\"item_id\": \"{cancelled}\", \"status\": \"ok\"");
    let last_failed = "\"item_id\": \"ok-16\", \"status\": \"failed\"}";
    assert!(now.contains(last_failed), "the run went too fast: {now}");
    let theirs = now
        .replacen(&written, &written.replace("\"ok\"", "\"cancelled\""), 1)
        .replacen(
            last_failed,
            "\"item_id\": \"ok-16\", \"status\": \"done\"}",
            1,
        );
    let theirs = match name.ends_with(".jsonl") {
        true => format!("{theirs}{appended}\n"),
        false => {
            let end = theirs.rfind(']').unwrap();
            format!(
                "{},\n{appended}{}",
                &theirs[..end].trim_end(),
                &theirs[end..]
            )
        }
    };
    foreign_write(&path, &theirs);
    let out = run.wait(std::time::Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(support::summary(&out)["ok"], 16, "every check answered ok");
    (std::fs::read_to_string(&path).unwrap(), cancelled)
}

/// Asserts the outcome of [`foreign_edit_during_a_run`] on the file's items.
fn assert_both_edits_survived(items: &[serde_json::Value], cancelled: &str, appended_id: &str) {
    let status = |id: &str| {
        let it = items
            .iter()
            .find(|i| i["item_id"] == id)
            .unwrap_or_else(|| panic!("{id} is gone: {items:?}"));
        (
            it["status"].as_str().unwrap().to_string(),
            it.get("checked_at").is_some(),
        )
    };
    assert_eq!(
        status(cancelled),
        ("cancelled".into(), true),
        "the other process's edit of a written item"
    );
    assert_eq!(
        status("ok-16"),
        ("done".into(), false),
        "the other process wins: recheck's answer is a conflict"
    );
    assert_eq!(
        status(appended_id),
        ("failed".into(), false),
        "the appended item stays"
    );
    for i in (1..=15).filter(|i| format!("ok-{i:02}") != cancelled) {
        assert_eq!(
            status(&format!("ok-{i:02}")),
            ("ok".into(), true),
            "recheck's answers for untouched items"
        );
    }
    assert_eq!(items.len(), 17);
}

#[test]
fn a_foreign_json_edit_during_a_run_survives() {
    let appended = "    {\"task_id\": \"t\", \"item_id\": \"added-1\", \"status\": \"failed\", \"by\": \"pipeline\"}";
    let (text, cancelled) = foreign_edit_during_a_run(
        "items.json",
        |items| {
            let lines: Vec<String> = items
                .iter()
                .map(|(id, s)| {
                    format!(
                        "    {{\"task_id\": \"t\", \"item_id\": \"{id}\", \"status\": \"{s}\"}}"
                    )
                })
                .collect();
            format!(
                "{{\"schema\": 1, \"items\": [\n{}\n]}}\n",
                lines.join(",\n")
            )
        },
        appended,
    );
    assert!(text.contains(appended), "byte for byte: {text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["schema"], 1);
    assert_both_edits_survived(doc["items"].as_array().unwrap(), &cancelled, "added-1");
}

#[test]
fn a_foreign_jsonl_edit_during_a_run_survives() {
    let appended = "{\"task_id\": \"t\", \"item_id\": \"added-1\", \"status\": \"failed\"}";
    let (text, cancelled) = foreign_edit_during_a_run(
        "items.jsonl",
        |items| {
            items
                .iter()
                .map(|(id, s)| {
                    format!("{{\"task_id\": \"t\", \"item_id\": \"{id}\", \"status\": \"{s}\"}}\n")
                })
                .collect()
        },
        appended,
    );
    assert!(text.ends_with(&format!("{appended}\n")), "{text}");
    let items: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_both_edits_survived(&items, &cancelled, "added-1");
}

#[test]
fn run_on_an_unknown_task_of_a_json_store_is_exit_2_naming_the_closest() {
    let server = support::default_server();
    let sb = Sandbox::new();
    for name in ["items.json", "items.jsonl"] {
        let path = sb.path(name);
        let text = if name.ends_with(".json") {
            r#"[{"task_id": "nightly-41", "item_id": "ok-1", "status": "failed"}, {"task_id": "nightly-42", "item_id": "ok-2", "status": "ok"}]"#.to_string()
        } else {
            "{\"task_id\": \"nightly-41\", \"item_id\": \"ok-1\", \"status\": \"failed\"}\n{\"task_id\": \"nightly-42\", \"item_id\": \"ok-2\", \"status\": \"ok\"}\n".to_string()
        };
        std::fs::write(&path, &text).unwrap();
        let before = support::snapshot(&path);
        let out = sb.run(&server, "nightly-43", name).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(
                "no task \"nightly-43\"; closest task ids: \"nightly-41\", \"nightly-42\""
            ),
            "{err}"
        );
        assert_eq!(
            support::snapshot(&path),
            before,
            "{name} must be left as it was"
        );
    }
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn run_never_creates_a_json_store() {
    let server = support::default_server();
    let sb = Sandbox::new();
    for name in ["missing.json", "missing.jsonl"] {
        let out = sb.run(&server, "t", name).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no such file"), "{err}");
        assert!(!sb.path(name).exists());
    }
    assert_eq!(std::fs::read_dir(sb.dir.path()).unwrap().count(), 0);
}

#[test]
fn json_import_leaves_an_existing_ok_item_as_it_is() {
    let sb = Sandbox::new();
    let path = sb.path("items.json");
    let ok = r#"{"task_id": "t", "item_id": "a", "status": "ok", "checked_at": "2026-01-01T00:00:00.000Z"}"#;
    std::fs::write(&path, format!("[{ok}]")).unwrap();
    std::fs::write(sb.path("ids.txt"), "a\nb\n").unwrap();
    sb.cmd()
        .args(["import", "--task", "t", "--store", "items.json", "ids.txt"])
        .assert()
        .success();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(&format!("[{ok},")),
        "a is left as it was: {text}"
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc[1]["item_id"], "b");
    assert_eq!(doc[1]["status"], "failed");
    assert_eq!(doc.as_array().unwrap().len(), 2);
}

/// A JSON store keeps the schedule in the items' own fields: an item whose next_check_at is
/// ahead is skipped (and counted), `--give-up-after 1` makes a still-failed item dead at
/// once, `--ignore-schedule` checks the skipped one too.
#[test]
fn json_items_carry_the_schedule() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let path = sb.path("items.json");
    std::fs::write(
        &path,
        r#"[{"task_id": "t", "item_id": "fail-a", "status": "failed", "checks": 4, "first_checked_at": "2026-01-01T00:00:00.000Z", "next_check_at": "2099-01-01T00:00:00.000Z"},
{"task_id": "t", "item_id": "fail-b", "status": "failed"}]"#,
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = sb
            .run(&server, "t", "items.json")
            .args(["--format", "json", "--expect-json", "/status=done"])
            .args(["--give-up-after", "1", "--dead-status", "given-up"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        support::summary(&out)
    };
    let s = run(&[]);
    assert_eq!(
        (s["dead"].as_u64(), s["not_due"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["next_due_at"], "2099-01-01T00:00:00.000Z");
    assert_eq!(
        (server.requests("fail-a"), server.requests("fail-b")),
        (0, 1)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let b = &doc[1];
    assert_eq!(b["status"], "given-up");
    assert_eq!(b["checks"], 1);
    assert_eq!(b["first_checked_at"], b["checked_at"]);
    assert_eq!(b["next_check_at"], serde_json::Value::Null);
    assert!(
        b["last_error"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 1 check: "),
        "{b}"
    );
    assert_eq!(doc[0]["checks"], 4, "not due: untouched");

    let s = run(&["--ignore-schedule"]);
    assert_eq!(s["dead"], 1, "{s}");
    assert_eq!(server.requests("fail-a"), 1);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let a = &doc[0];
    assert_eq!(a["status"], "given-up");
    assert_eq!(a["checks"], 5);
    assert_eq!(
        a["first_checked_at"], "2026-01-01T00:00:00.000Z",
        "the first check stays"
    );
}
