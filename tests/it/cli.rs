//! The other commands, and where options come from: flag > env > config file > default.

use crate::support::{self, Sandbox};

#[test]
fn precedence_flag_env_file_default() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
    std::fs::write(
        sb.path("recheck.toml"),
        format!(
            "format = \"json\"\nstore = \"s.db\"\nurl = \"{}\"\n",
            server.item_url_template()
        ),
    )
    .unwrap();
    let run = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = sb.cmd();
        cmd.args(["run", "--task", "t"]);
        if let Some(v) = env {
            cmd.env("RECHECK_FORMAT", v);
        }
        if let Some(v) = flag {
            cmd.args(["--format", v]);
        }
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    assert!(run(None, None).starts_with('{'), "file should give json");
    assert!(
        run(Some("text"), None).starts_with("task t"),
        "env beats file"
    );
    assert!(
        run(Some("text"), Some("json")).starts_with('{'),
        "flag beats env"
    );
    // Default when nothing says otherwise (another dir, no file).
    let other = Sandbox::new();
    support::sqlite_store(&other.path("recheck.db"), "t", &["ok-1"]);
    let out = other.run(&server, "t", "recheck.db").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("task t on sqlite:recheck.db"));
}

#[test]
fn explicit_config_file_and_lists() {
    let server = support::default_server();
    let sb = Sandbox::new();
    support::sqlite_store(&sb.path("s.db"), "t", &["fail-1", "ok-1"]);
    std::fs::write(
        sb.path("cfg.toml"),
        format!(
            "store = \"s.db\"\nurl = \"{}\"\nexpect_json = [\"/status=done\", \"/status=processing\"]\nretries = 0\ndry_run = true\n",
            server.item_url_template()
        ),
    )
    .unwrap();
    let out = sb
        .cmd()
        .args([
            "run", "--task", "t", "--config", "cfg.toml", "--format", "json",
        ])
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!(s["ok"], 2, "both values of the list apply");
    assert_eq!(s["dry_run"], true);
    sb.cmd()
        .args(["run", "--task", "t", "--config", "nope.toml"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("nope.toml"));
}

#[test]
fn init_import_status() {
    let sb = Sandbox::new();
    sb.cmd()
        .args(["init"])
        .assert()
        .success()
        .stdout("created table items in sqlite:recheck.db\n");
    sb.cmd()
        .args(["init"])
        .assert()
        .success()
        .stdout("table items in sqlite:recheck.db already has every column recheck uses\n");
    sb.cmd()
        .args(["import", "--task", "t"])
        .write_stdin("a\n\nb\n{\"id\": \"c\", \"url\": \"http://127.0.0.1:9/c\"}\n{\"id\": 4}\n")
        .assert()
        .success()
        .stdout("imported into task t on sqlite:recheck.db: added 4, already there 0, reset 0\n");
    let row = support::sqlite_row(&sb.path("recheck.db"), "t", "4");
    assert_eq!(row.status, "failed");
    let out = sb
        .cmd()
        .args(["status", "--task", "t", "--format", "json"])
        .output()
        .unwrap();
    let s = support::summary(&out);
    assert_eq!(s["total"], 4);
    assert_eq!(s["statuses"]["failed"], 4);
    let text = sb
        .cmd()
        .args(["status", "--task", "t"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        String::from_utf8(text).unwrap(),
        "task t on sqlite:recheck.db\n  failed              4\n  total               4\n  backlog             4  (failed: what the next runs check)\n  not due             0  (failed, waiting for their next_check_at)\n  unchecked           4  (failed, never checked yet)\n  dead                0  (given up on: failed for good)\n"
    );
    // A bad line imports nothing.
    sb.cmd()
        .args(["import", "--task", "u"])
        .write_stdin("x\n{bad\n")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("stdin:2"))
        .stderr(predicates::str::contains("nothing was imported"));
    let out = sb
        .cmd()
        .args(["status", "--task", "u", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(support::summary(&out)["total"], 0);
    // status of a store that does not exist is an error, and creates nothing.
    sb.cmd()
        .args(["status", "--task", "t", "--store", "none.db"])
        .assert()
        .code(2);
    assert!(!sb.path("none.db").exists());
}

#[test]
fn run_does_not_create_a_missing_sqlite_store() {
    // A mistyped path must not pass as "nothing to check" (docs/reference.md §2.5: run
    // never creates).
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--url", "http://127.0.0.1:9/{id}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("recheck.db: no such store"));
    assert!(!sb.path("recheck.db").exists());
}

#[test]
fn completions_and_help() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = sb.cmd().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("recheck"),
            "{shell}"
        );
    }
    let man = sb.cmd().arg("man").output().unwrap();
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(
        man.contains(".TH recheck 1") && man.contains("completions"),
        "{man}"
    );
    let help = sb.cmd().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "--concurrency <N>",
        "[default: 100]",
        "[default: 5s]",
        "[default: 200ms..30s]",
        "[env: RECHECK_TIMEOUT=]",
        "--expect-json",
    ] {
        assert!(help.contains(needle), "help lacks {needle}");
    }
}

/// `recheck man` is one page with every option of every command (no `recheck-run(1)` pages
/// to look for elsewhere).
#[test]
fn man_covers_every_option_of_every_command() {
    let sb = Sandbox::new();
    let man = sb.cmd().arg("man").output().unwrap();
    assert!(man.status.success());
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(
        !man.contains("recheck\\-run(1)"),
        "points to a page nothing makes"
    );
    let cli = <recheck::cli::Cli as clap::CommandFactory>::command();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        assert!(
            man.contains(&format!(
                ".SH \"RECHECK {}\"",
                sub.get_name().to_uppercase()
            )),
            "no section for {}",
            sub.get_name()
        );
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
                if !man.contains(&roff) {
                    missing.push(format!("{} --{long}", sub.get_name()));
                }
            }
        }
    }
    assert!(missing.is_empty(), "not in the man page: {missing:?}");
}

/// Bare `recheck` is a usage error that lists the commands.
#[test]
fn bare_recheck_lists_the_commands() {
    let sb = Sandbox::new();
    let out = sb.cmd().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Usage: recheck"), "{err}");
    for command in ["run", "status", "import", "init", "completions", "man"] {
        assert!(
            err.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} not listed: {err}"
        );
    }
    assert!(out.stdout.is_empty());
}

/// `recheck run ... | true`: the summary cannot be printed, the exit code still says what
/// happened (1: items not OK; 3: the deadline).
#[test]
fn a_closed_stdout_keeps_the_exit_code() {
    let server = crate::support::default_server();
    let sb = Sandbox::new();
    crate::support::sqlite_store(&sb.path("s.db"), "t", &["fail-1", "ok-2"]);
    let closed = |extra: &[&str]| {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("recheck"))
            .current_dir(sb.dir.path())
            .args(["run", "--task", "t", "--store", "s.db", "--url"])
            .arg(server.item_url_template())
            .args(["--expect-json", "/status=done", "--progress", "never"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before recheck writes a byte, as `| true` does.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    };
    let out = closed(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    crate::support::sqlite_store(&sb.path("s.db"), "t", &["hang-3"]);
    let out = closed(&["--deadline", "1s", "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// A typo in `recheck.toml` is refused with the option it was meant to be; a `RECHECK_*`
/// variable that names no option is a warning with the closest one, not silence.
#[test]
fn typos_in_config_keys_and_variables_get_suggestions() {
    let sb = Sandbox::new();
    crate::support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
    std::fs::write(sb.path("recheck.toml"), "concurency = 5\n").unwrap();
    let out = sb
        .cmd()
        .args(["run", "--task", "t", "--store", "s.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"unknown option "concurency""#)
            && err.contains(r#"did you mean "concurrency"?"#),
        "{err}"
    );
    std::fs::remove_file(sb.path("recheck.toml")).unwrap();
    let out = sb
        .cmd()
        .env("RECHECK_CONCURENCY", "5")
        .env("RECHECK_TASK", "t")
        .args(["status", "--store", "s.db"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "RECHECK_CONCURENCY names no option and is ignored (did you mean RECHECK_CONCURRENCY?)"
        ),
        "{err}"
    );
    assert!(
        !err.contains("RECHECK_TASK"),
        "a real option is not warned of: {err}"
    );
}

/// The README's first cron line, run as written (but for a deadline short enough to fire
/// here): the one log file it appends to stays JSON Lines, the deadline's warning included.
#[test]
fn readme_cron_line_keeps_its_log_json_lines() {
    let command = crate::support::readme_cron_command("--log-format json")
        .replace("--deadline 9m", "--deadline 1s")
        .replace("/var/log/recheck.jsonl", "recheck.jsonl");
    let toml = crate::support::readme_toml(
        "store = \"jobs.db\"\nurl = \"https://api.example.com/v1/items/{id}\"",
    );
    let server = crate::support::default_server();
    let sb = Sandbox::new();
    std::fs::write(
        sb.path("recheck.toml"),
        toml.replace(
            "https://api.example.com/v1/items/{id}",
            &server.item_url_template(),
        ),
    )
    .unwrap();
    crate::support::sqlite_store(
        &sb.path("jobs.db"),
        "nightly-transcode",
        &["ok-1", "fail-2", "hang-3"],
    );
    let out = crate::support::shell(&sb, &command).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "the deadline fired: {out:?}");
    let log = std::fs::read_to_string(sb.path("recheck.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let summary = lines
        .iter()
        .find(|l| l.get("task").is_some())
        .unwrap_or_else(|| panic!("no summary: {log}"));
    assert_eq!(summary["deadline_reached"], true, "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l.to_string().contains("--deadline reached")),
        "the deadline's warning is a JSON line: {log}"
    );
}
