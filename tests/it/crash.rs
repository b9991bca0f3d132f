//! `kill -9` at random moments: the store always opens, never holds a status that no answer
//! justified, and a re-run finishes the task.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::{self, MockConfig, Sandbox};

const TRIALS: usize = 20;
const ITEMS: usize = 1500;

fn ids() -> Vec<String> {
    (0..ITEMS)
        .map(|i| {
            if i % 5 == 0 {
                format!("fail-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect()
}

/// Runs, kills at a random moment, checks, re-runs to the end, checks. `store` is the file
/// name; `read` returns (id → status) of every item after a kill.
fn trials(store: &str, make: fn(&Sandbox, &[String]), read: fn(&Sandbox) -> Vec<(String, String)>) {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut killed_mid_run = 0;
    for trial in 0..TRIALS {
        let server = support::server(MockConfig {
            latency: Duration::from_millis(10),
            ..MockConfig::default()
        });
        let sb = Sandbox::new();
        let ids = ids();
        make(&sb, &ids);
        let tmpl = server.item_url_template();
        let args = [
            "run",
            "--task",
            "t",
            "--store",
            store,
            "--concurrency",
            "50",
            "--expect-json",
            "/status=done",
            "--url",
            &tmpl,
        ];
        let run = sb.spawn(&args);
        std::thread::sleep(Duration::from_millis(rng.u64(0..450)));
        run.signal(libc::SIGKILL);
        let out = run.wait(Duration::from_secs(10));
        if out.status.code().is_none() {
            killed_mid_run += 1;
        }
        // The store opens, and only answers justified each OK.
        let ok_answers = support::answered_with(&server, 200);
        let rows = read(&sb);
        assert_eq!(rows.len(), ITEMS, "trial {trial}: items lost");
        for (id, status) in &rows {
            if status == "ok" {
                assert!(id.starts_with("ok-"), "trial {trial}: {id} became ok");
                assert!(
                    ok_answers.contains(id),
                    "trial {trial}: {id} ok without an answer"
                );
            } else {
                assert_eq!(status, "failed", "trial {trial}: {id}");
            }
        }
        // A re-run finishes the task.
        let out = sb.cmd().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "trial {trial}: {out:?}");
        let rows = read(&sb);
        let not_ok: HashSet<&str> = rows
            .iter()
            .filter(|(_, s)| s != "ok")
            .map(|(id, _)| id.as_str())
            .collect();
        let expected: HashSet<&str> = ids
            .iter()
            .filter(|id| id.starts_with("fail-"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            not_ok, expected,
            "trial {trial}: the re-run did not finish the task"
        );
    }
    // The timing must actually hit runs mid-way, or the test proves little.
    assert!(
        killed_mid_run >= TRIALS / 2,
        "only {killed_mid_run} kills landed mid-run"
    );
}

#[test]
fn kill_9_sqlite() {
    trials(
        "s.db",
        |sb, ids| {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            support::sqlite_store(&sb.path("s.db"), "t", &refs);
        },
        |sb| {
            let conn = rusqlite::Connection::open(sb.path("s.db")).expect("store opens");
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok");
            support::sqlite_rows(&sb.path("s.db"), "t")
                .into_iter()
                .map(|(id, r)| (id, r.status))
                .collect()
        },
    );
}

#[test]
fn kill_9_json() {
    trials(
        "s.json",
        |sb, ids| {
            let items: Vec<serde_json::Value> = ids
                .iter()
                .map(|id| serde_json::json!({"task_id": "t", "item_id": id, "status": "failed"}))
                .collect();
            std::fs::write(
                sb.path("s.json"),
                serde_json::to_string_pretty(&items).unwrap(),
            )
            .unwrap();
        },
        |sb| {
            let text = std::fs::read(sb.path("s.json")).unwrap();
            let doc: Vec<serde_json::Value> = serde_json::from_slice(&text).expect("store parses");
            doc.iter()
                .map(|v| {
                    (
                        v["item_id"].as_str().unwrap().to_string(),
                        v["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        },
    );
}
