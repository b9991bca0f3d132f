//! `--step-summary FILE` and `$GITHUB_STEP_SUMMARY` (the CI job page), and `--format
//! markdown` on stdout.

use crate::support::{self, Sandbox};

/// An id that tries to end its table cell and to inject HTML.
const HOSTILE: &str = "fail-a|b<script>alert(1)</script>`x`";

/// Every Markdown table in `text` has one cell count for all its rows (an unescaped `|`
/// in an id or an error would add one), and no raw HTML got in.
fn check_markdown(text: &str) {
    assert!(!text.contains("<script"), "raw HTML in:\n{text}");
    let cells = |row: &str| row.replace("\\|", "").matches('|').count();
    let mut want = None;
    let mut tables = 0;
    for line in text.lines() {
        if line.starts_with('|') {
            let n = cells(line);
            if want.is_none() {
                tables += 1;
            }
            assert_eq!(*want.get_or_insert(n), n, "ragged table row: {line}");
        } else {
            want = None;
        }
    }
    assert!(tables >= 1, "no table in:\n{text}");
}

fn markdown_run(sb: &Sandbox, server: &support::MockServer) -> assert_cmd::Command {
    let mut cmd = sb.run(server, "t1", "s.db");
    // -q: stderr then holds only warnings and errors.
    cmd.args(["-q", "--expect-json", "/status=done", "--retries", "0"]);
    cmd
}

#[test]
fn github_step_summary_is_appended_to() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(
        &sb.path("s.db"),
        "t1",
        &["ok-1", "fail-1", "404-1", HOSTILE],
    );
    let earlier = "## Build\n\nAn earlier step wrote this.\n";
    std::fs::write(sb.path("summary.md"), earlier).unwrap();
    let out = markdown_run(&sb, &server)
        .env("GITHUB_STEP_SUMMARY", sb.path("summary.md"))
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = std::fs::read_to_string(sb.path("summary.md")).unwrap();
    assert!(text.starts_with(earlier), "earlier content lost:\n{text}");
    let ours = &text[earlier.len()..];
    assert!(
        ours.contains("### recheck: task t1 on sqlite:s.db\n"),
        "{ours}"
    );
    assert!(ours.contains("| checked | 4 |"), "{ours}");
    assert!(ours.contains("#### Not OK (first 3)"), "{ours}");
    assert!(
        ours.contains(
            "| fail-a\\|b&lt;script&gt;alert(1)&lt;/script&gt;&#96;x&#96; | still_failed | 200 |"
        ),
        "{ours}"
    );
    assert!(ours.contains("| 404-1 | not_found | 404 |"), "{ours}");
    assert!(!ours.contains("| ok-1 |"), "an OK item is listed:\n{ours}");
    check_markdown(ours);
    // A second run appends again: both summaries are there.
    markdown_run(&sb, &server)
        .env("GITHUB_STEP_SUMMARY", sb.path("summary.md"))
        .output()
        .unwrap();
    let again = std::fs::read_to_string(sb.path("summary.md")).unwrap();
    assert!(again.starts_with(&text));
    assert_eq!(again.matches("### recheck: task t1").count(), 2);
}

#[test]
fn empty_step_summary_turns_it_off() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t1", &["fail-1"]);
    let out = markdown_run(&sb, &server)
        .env("GITHUB_STEP_SUMMARY", sb.path("summary.md"))
        .args(["--step-summary", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        !sb.path("summary.md").exists(),
        "--step-summary '' wrote it"
    );
    // An empty variable is no file either (and no error).
    let out = markdown_run(&sb, &server)
        .env("GITHUB_STEP_SUMMARY", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn step_summary_from_the_config_file_and_dry_run() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t1", &["fail-1", "ok-1"]);
    std::fs::write(
        sb.path("recheck.toml"),
        "step_summary = \"ci/summary.md\"\n",
    )
    .unwrap();
    std::fs::create_dir(sb.path("ci")).unwrap();
    let out = markdown_run(&sb, &server)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = std::fs::read_to_string(sb.path("ci/summary.md")).unwrap();
    assert!(
        text.contains("### recheck: task t1 on sqlite:s.db (dry run: nothing written)"),
        "{text}"
    );
    check_markdown(&text);
    assert_eq!(
        support::sqlite_row(&sb.path("s.db"), "t1", "ok-1").status,
        "failed"
    );
}

#[test]
fn step_summary_on_a_directory_fails_alone() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t1", &["ok-1", "ok-2"]);
    std::fs::create_dir(sb.path("summary.md")).unwrap();
    let out = markdown_run(&sb, &server)
        .args(["--step-summary", "summary.md"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("--step-summary summary.md"), "{stderr}");
    // The store still got every answer.
    for id in ["ok-1", "ok-2"] {
        assert_eq!(support::sqlite_row(&sb.path("s.db"), "t1", id).status, "ok");
    }
}

#[test]
fn step_summary_as_the_store_is_refused() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t1", &["ok-1"]);
    let before = support::snapshot(&sb.path("s.db"));
    let out = markdown_run(&sb, &server)
        .args(["--step-summary", "./s.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--step-summary"));
    assert_eq!(support::snapshot(&sb.path("s.db")), before);
}

/// 100,000 not-OK items: the appended text stays under 1 MiB, lists 50 and says how many
/// more there were. 100 of them are checked (still failed); the rest have an empty id, an
/// error without a request, so the test does not spend minutes on HTTP in a debug build.
#[test]
fn step_summary_size_bound_with_100000_items() {
    let server = support::default_server();
    let sb = Sandbox::new();
    let mut jsonl = String::new();
    for i in 0..100_000 {
        let id = if i < 100 {
            format!("fail-{i}")
        } else {
            String::new()
        };
        jsonl.push_str(&format!(
            "{{\"task_id\": \"big\", \"item_id\": \"{id}\", \"status\": \"failed\"}}\n"
        ));
    }
    std::fs::write(sb.path("s.jsonl"), jsonl).unwrap();
    let out = sb
        .run(&server, "big", "s.jsonl")
        .args(["--expect-json", "/status=done", "--concurrency", "200"])
        .args(["--step-summary", "summary.md", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(support::summary(&out)["still_failed"], 100);
    assert_eq!(support::summary(&out)["errors"], 99_900);
    assert_eq!(server.total_requests(), 100);
    let text = std::fs::read_to_string(sb.path("summary.md")).unwrap();
    assert!(text.len() < 1024 * 1024, "{} bytes", text.len());
    assert!(text.contains("| still failed | 100 |"), "{text}");
    assert!(text.contains("| errors | 99,900 |"), "{text}");
    assert!(text.contains("... and 99,950 more not-OK items"), "{text}");
    let listed = text
        .split("#### Not OK (first 50)")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .skip_while(|l| !l.starts_with("| ---"))
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .count();
    assert_eq!(listed, 50, "{text}");
    check_markdown(&text);
}

#[test]
fn format_markdown_on_stdout() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t1", &["ok-1", "fail-1", HOSTILE]);
    let out = markdown_run(&sb, &server)
        .args(["--format", "markdown"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("### recheck: task t1 on sqlite:s.db\n"),
        "{text}"
    );
    assert!(text.contains("| still failed | 2 |"), "{text}");
    assert!(text.contains("#### Most common errors"), "{text}");
    check_markdown(&text);
}

#[test]
fn status_refuses_markdown() {
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t1", &["ok-1"]);
    let out = sb
        .cmd()
        .args([
            "status", "--task", "t1", "--store", "s.db", "--format", "markdown",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--format markdown is for `recheck run`"),
        "{stderr}"
    );
}

/// The `run:` lines of the README's step-summary example, in order.
fn readme_step_commands() -> Vec<String> {
    let readme = support::README;
    let start = readme
        .find("- name: re-check the items, with a summary on the job page")
        .expect("the README's step summary example");
    let block = &readme[start..start + readme[start..].find("```").expect("end of block")];
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("run: "))
        .map(str::to_string)
        .collect()
}

/// The README's CI lines run as written (`sh -c`, `$TASK` and `$API` set as a workflow
/// would), with `$GITHUB_STEP_SUMMARY` set as on GitHub Actions.
#[test]
fn readme_step_summary_lines_run_as_written() {
    let server = support::default_server();
    let sb = Sandbox::new();
    std::fs::write(
        sb.path("items.json"),
        serde_json::json!([
            {"task_id": "nightly-transcode", "item_id": "ok-1", "status": "failed"},
            {"task_id": "nightly-transcode", "item_id": "ok-2", "status": "failed"},
            {"task_id": "nightly-transcode", "item_id": "fail-3", "status": "failed"},
            {"task_id": "nightly-transcode", "item_id": "404-4", "status": "failed"},
            {"task_id": "nightly-transcode", "item_id": "s500-5", "status": "failed"},
            {"task_id": "nightly-transcode", "item_id": "fail-<b>|6", "status": "failed"},
        ])
        .to_string(),
    )
    .unwrap();
    let api = server
        .item_url_template()
        .strip_suffix("/items/{id}")
        .expect("the mock's template ends /items/{id}")
        .to_string();
    let commands = readme_step_commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    let mut outputs = Vec::new();
    for command in &commands {
        let out = support::shell(&sb, command)
            .env("TASK", "nightly-transcode")
            .env("API", &api)
            .env("GITHUB_STEP_SUMMARY", sb.path("step-summary.md"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}: {out:?}");
        outputs.push(out);
    }
    let page = std::fs::read_to_string(sb.path("step-summary.md")).unwrap();
    // Printed for the README's rendering (`cargo test ... -- --nocapture`).
    println!("{page}");
    check_markdown(&page);
    // The second line turned its step summary off: one summary, the first line's.
    assert_eq!(
        page.matches("### recheck: task nightly-transcode").count(),
        1
    );
    assert!(page.contains("#### Not OK (first 4)"), "{page}");
    assert!(!page.contains("(dry run: nothing written)"), "{page}");
    let stdout = std::fs::read_to_string(sb.path("recheck-summary.md")).unwrap();
    assert!(
        stdout.starts_with(
            "### recheck: task nightly-transcode on json:items.json (dry run: nothing written)\n"
        ),
        "{stdout}"
    );
    check_markdown(&stdout);
}

/// A run stopped by `--deadline` still appends its summary, and says it was stopped.
#[test]
fn deadline_run_appends_its_step_summary() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(
        &sb.path("s.db"),
        "t1",
        &["fail-1", "slow2000-2", "slow2000-3", "slow2000-4"],
    );
    let out = markdown_run(&sb, &server)
        .args(["--concurrency", "1", "--deadline", "500ms"])
        .env("GITHUB_STEP_SUMMARY", sb.path("summary.md"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = std::fs::read_to_string(sb.path("summary.md")).unwrap();
    assert!(text.contains("(deadline reached)"), "{text}");
    check_markdown(&text);
}
