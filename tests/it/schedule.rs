//! The schedule across runs as the README shows it: its cron line, run as written.
//! (The schedule on every SQL backend: `scenarios.rs` `scenario_schedule`; on JSON:
//! `json_store.rs` `json_items_carry_the_schedule`.)

use crate::support::{self, Sandbox};

/// The README's `recheck.toml` of the worked example, with the mock server as the API.
fn readme_config(api: &str) -> String {
    support::readme_toml("store = \"jobs.db\"\nurl = \"https://api.example.com/v1/jobs/{id}\"")
        .replace("https://api.example.com/v1/jobs/{id}", api)
}

#[test]
fn readme_cron_line_with_a_schedule() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(
        &sb.path("jobs.db"),
        "nightly-transcode",
        &["ok-1", "fail-2", "404-3"],
    );
    // A table of an older recheck: `init` adds the schedule's columns (and says so).
    sb.cmd()
        .args(["init", "--store", "jobs.db"])
        .assert()
        .success()
        .stdout(predicates::str::contains("next_check_at"));
    std::fs::write(
        sb.path("recheck.toml"),
        readme_config(&server.item_url_template()),
    )
    .unwrap();
    let command = support::readme_cron_command("--recheck-backoff 10m..6h");
    for _ in 0..2 {
        let out = support::shell(&sb, &command).output().unwrap();
        // Not OK items left: exit 1 on the first run; nothing due on the second: exit 0.
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    }
    let log = std::fs::read_to_string(sb.path("recheck.jsonl")).unwrap();
    let runs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(runs.len(), 2, "{log}");
    assert_eq!(
        (runs[0]["checked"].as_u64(), runs[0]["ok"].as_u64()),
        (Some(3), Some(1)),
        "{}",
        runs[0]
    );
    assert_eq!(
        (runs[1]["checked"].as_u64(), runs[1]["not_due"].as_u64()),
        (Some(0), Some(2)),
        "{}",
        runs[1]
    );
    assert!(runs[1]["next_due_at"].is_string(), "{}", runs[1]);
    assert_eq!(
        (server.requests("fail-2"), server.requests("404-3")),
        (1, 1),
        "the second run asks nothing"
    );
    assert_eq!(std::fs::read_to_string(sb.path("recheck.err")).unwrap(), "");
}
