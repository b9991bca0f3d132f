//! Bad input is one line on stderr naming the culprit, exit 2, and the store's bytes
//! unchanged.

use crate::support::{self, Sandbox};

/// (what the store file holds, extra args, expected fragment of the message)
struct Case {
    store: &'static str,
    setup: fn(&Sandbox),
    args: &'static [&'static str],
    fragment: &'static str,
}

fn default_db(sb: &Sandbox) {
    support::sqlite_store(&sb.path("s.db"), "t", &["ok-1"]);
}

fn seed_db(sb: &Sandbox) {
    rusqlite::Connection::open(sb.path("s.db"))
        .unwrap()
        .execute_batch("CREATE TABLE data(task_id, content, status INTEGER); INSERT INTO data VALUES (1, 'ok-1', 5);")
        .unwrap();
}

fn text_file(sb: &Sandbox) {
    std::fs::write(
        sb.path("s.db"),
        "this is not a database, just text\n".repeat(100),
    )
    .unwrap();
}

fn not_json(sb: &Sandbox) {
    std::fs::write(
        sb.path("s.json"),
        "{\"items\": [ {\"task_id\": \"t\", \"item_id\": \"ok-1\", \"status\": \"failed\"} \n",
    )
    .unwrap();
}

fn json_ok(sb: &Sandbox) {
    std::fs::write(
        sb.path("s.json"),
        r#"[{"task_id": "t", "item_id": "ok-1", "status": "failed"}]"#,
    )
    .unwrap();
}

fn json_not_objects(sb: &Sandbox) {
    std::fs::write(
        sb.path("s.json"),
        r#"[{"task_id": "t", "item_id": "ok-1", "status": "failed"}, 7]"#,
    )
    .unwrap();
}

fn jsonl_bad_line(sb: &Sandbox) {
    std::fs::write(
        sb.path("s.jsonl"),
        "{\"task_id\": \"t\", \"item_id\": \"a\", \"status\": \"failed\"}\n{oops\n",
    )
    .unwrap();
}

fn config_unknown_key(sb: &Sandbox) {
    default_db(sb);
    std::fs::write(sb.path("recheck.toml"), "concurency = 5\n").unwrap();
}

fn config_bad_value(sb: &Sandbox) {
    default_db(sb);
    std::fs::write(sb.path("recheck.toml"), "timeout = \"soon\"\n").unwrap();
}

fn config_not_toml(sb: &Sandbox) {
    default_db(sb);
    std::fs::write(sb.path("recheck.toml"), "timeout = \n[[[\n").unwrap();
}

const URL: &str = "--url=http://127.0.0.1:9/items/{id}";

const CASES: &[Case] = &[
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--table", "nope", URL],
        fragment: "table nope not found (tables: items)",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--id-column", "content", URL],
        fragment: "no column content (--id-column",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--status-column", "state", URL],
        fragment: "no column state",
    },
    Case {
        store: "s.db",
        setup: seed_db,
        args: &["--table", "data", "--id-column", "content"],
        fragment: "--url-column",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--url=http://h/items/{kind}/{id}"],
        fragment: "no column kind (placeholder",
    },
    Case {
        store: "s.db",
        setup: text_file,
        args: &[URL],
        fragment: "not a SQLite database",
    },
    Case {
        store: "s.json",
        setup: not_json,
        args: &[URL],
        fragment: "s.json",
    },
    Case {
        store: "s.json",
        setup: json_not_objects,
        args: &[URL],
        fragment: "s.json",
    },
    Case {
        store: "s.jsonl",
        setup: jsonl_bad_line,
        args: &[URL],
        fragment: "s.jsonl",
    },
    Case {
        store: "missing.json",
        setup: default_db,
        args: &[URL],
        fragment: "missing.json",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--url", "http://h/items"],
        fragment: "no {id}",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--url", "http://h/items/{id"],
        fragment: "unclosed",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--url", "ftp://h/{id}"],
        fragment: "scheme",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--timeout", "5 parsecs", URL],
        fragment: "--timeout",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--connect-timeout", "x", URL],
        fragment: "--connect-timeout",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--backoff", "1s..10ms", URL],
        fragment: "--backoff",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--max-body", "big", URL],
        fragment: "--max-body",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--concurrency", "0", URL],
        fragment: "--concurrency",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["-H", "NoColonHere", URL],
        fragment: "-H #1",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["-H", "Bad Name: x", URL],
        fragment: "not a valid header name",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["-H", "Authorization: ${RECHECK_TEST_UNSET_VAR}", URL],
        fragment: "RECHECK_TEST_UNSET_VAR is not set",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--table", "it\"ems", URL],
        fragment: "--table",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--status-column", "st atus", URL],
        fragment: "--status-column",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--id-column", "id;drop table items", URL],
        fragment: "--id-column",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--expect-json", "status=done", URL],
        fragment: "--expect-json",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--expect-status", "2xy", URL],
        fragment: "--expect-status",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--failed-status", "ok", URL],
        fragment: "--failed-status",
    },
    Case {
        store: "s.db",
        setup: config_unknown_key,
        args: &[URL],
        fragment: "recheck.toml: unknown option \"concurency\"",
    },
    Case {
        store: "s.db",
        setup: config_bad_value,
        args: &[URL],
        fragment: "recheck.toml: option \"timeout\"",
    },
    Case {
        store: "s.db",
        setup: config_not_toml,
        args: &[URL],
        fragment: "recheck.toml: invalid TOML",
    },
    Case {
        store: "s.json",
        setup: json_ok,
        args: &["--report", "./s.json", URL],
        fragment: "--report ./s.json is the store itself",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--lease", "10ms", URL],
        fragment: "--lease",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--rate", "fast", URL],
        fragment: "--rate",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--per-host", "0", URL],
        fragment: "--per-host",
    },
    Case {
        store: "s.json",
        setup: json_ok,
        args: &["--retries=-1", URL],
        fragment: "--retries",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--recheck-backoff", "100ms..1s", URL],
        fragment: "at least 1s",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--recheck-backoff", "6h..10m", URL],
        fragment: "--recheck-backoff",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--recheck-backoff", "10m", URL],
        fragment: "10m..6h",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--give-up-after", "0", URL],
        fragment: "--give-up-after",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--give-up-age", "soon", URL],
        fragment: "--give-up-age",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--give-up-after", "3", "--dead-status", "failed", URL],
        fragment: "re-checked forever",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--lease", "8000y", URL],
        fragment: "longer than 100 years",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--timeout", "0", URL],
        fragment: "--timeout must be more than 0",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--connect-timeout", "0s", URL],
        fragment: "--connect-timeout must be more than 0",
    },
    // A table without the schedule's columns cannot keep a schedule: refused, not ignored.
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--recheck-backoff", "10m..6h", URL],
        fragment: "which --recheck-backoff needs; `recheck init",
    },
    Case {
        store: "s.db",
        setup: default_db,
        args: &["--give-up-age", "7d", URL],
        fragment: "no column first_checked_at, which --give-up-age needs",
    },
];

#[test]
fn bad_inputs_are_refused_cleanly() {
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let sb = Sandbox::new();
        (case.setup)(&sb);
        let store = sb.path(case.store);
        let before = support::snapshot(&store);
        let out = sb
            .cmd()
            .args(["run", "--task", "t", "--store", case.store])
            .args(case.args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let mut problems = Vec::new();
        if out.status.code() != Some(2) {
            problems.push(format!("exit {:?}", out.status.code()));
        }
        if !err.contains(case.fragment) {
            problems.push(format!("message lacks {:?}", case.fragment));
        }
        if err.trim_end().lines().count() != 1 {
            problems.push("message is not one line".into());
        }
        if !out.stdout.is_empty() {
            problems.push("stdout not empty".into());
        }
        if support::snapshot(&store) != before {
            problems.push("store changed".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "case {i} {:?}: {}\n  stderr: {err}",
                case.args,
                problems.join(", ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
