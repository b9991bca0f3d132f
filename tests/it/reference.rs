//! `docs/reference.md` is the user reference, and this keeps it honest against the code: every
//! command, every long option of every command (in that command's section, with clap's
//! default in its row), the environment-variable rule, every exit code, every outcome and
//! every key of the JSON summary. An option added without a row in the reference fails here.
//!
//! The option tables of the reference have the header `| option | default | meaning |`; the
//! first cell names the option (`` `--concurrency N` ``, `` `--header 'NAME: VALUE'`, `-H` ``),
//! the second shows a clap default in backticks (`` `100` ``).

use std::collections::BTreeSet;

use clap::CommandFactory;
use recheck::cli::Cli;

const REFERENCE: &str = include_str!("../../docs/reference.md");

/// The section of each command's options: its heading, exactly as in the reference.
const SECTIONS: [(&str, &str); 4] = [
    ("run", "## 3. `recheck run`"),
    ("status", "### 1.2 `recheck status`"),
    ("import", "### 1.3 `recheck import`"),
    ("init", "### 1.4 `recheck init`"),
];
/// The options every command takes.
const GLOBAL: &str = "### 1.1 Global options";
const COMMANDS: &str = "## 1. Commands";
const CONFIG: &str = "### 1.5 Config file and environment";
const RUN: &str = "## 3. `recheck run`";
const SUMMARY: &str = "## 4. Summary and exit codes";

/// The text under `heading` up to the next heading of the same or a higher level (headings
/// inside code blocks do not count).
fn section(heading: &str) -> &'static str {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let mut start = None;
    let mut fenced = false;
    let mut offset = 0;
    for line in REFERENCE.split_inclusive('\n') {
        let here = offset;
        offset += line.len();
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        let text = line.trim_end();
        match start {
            None if text == heading => start = Some(offset),
            Some(s) => {
                let hashes = text.chars().take_while(|&c| c == '#').count();
                if hashes > 0 && hashes <= level && text[hashes..].starts_with(' ') {
                    return &REFERENCE[s..here];
                }
            }
            None => {}
        }
    }
    match start {
        Some(s) => &REFERENCE[s..],
        None => panic!("docs/reference.md has no heading {heading:?}"),
    }
}

/// The cells of a table row (`\|` is a pipe inside a cell), trimmed.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .replace("\\|", "\u{0}")
        .split('|')
        .map(|c| c.replace('\u{0}', "|").trim().to_string())
        .collect()
}

/// The body rows of every table in `text` whose header's first cell is `first`.
fn table_rows(text: &str, first: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.trim_start().starts_with('|') || cells(line)[0] != first {
            continue;
        }
        lines.next(); // | --- | --- |
        while let Some(row) = lines.next_if(|l| l.trim_start().starts_with('|')) {
            rows.push(cells(row));
        }
    }
    rows
}

/// The long options a cell names: `--name` tokens.
fn longs(cell: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = cell;
    while let Some(at) = rest.find("--") {
        let name: String = rest[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if !name.is_empty() {
            out.push(name.clone());
        }
        rest = &rest[at + 2 + name.len()..];
    }
    out
}

/// Checks one command's long options against its section: a row for each, with clap's
/// default; and no row for an option the command does not have. Returns the problems.
fn check_options(what: &str, cmd: &clap::Command, heading: &str) -> Vec<String> {
    let rows = table_rows(section(heading), "option");
    let mut problems = Vec::new();
    let mut known = BTreeSet::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if matches!(long, "help" | "version") {
            continue;
        }
        known.insert(long.to_string());
        let Some(row) = rows.iter().find(|r| longs(&r[0]).iter().any(|l| l == long)) else {
            problems.push(format!(
                "{what}: --{long} has no row in the option table under {heading:?}"
            ));
            continue;
        };
        if !arg.get_action().takes_values() {
            continue;
        }
        for default in arg.get_default_values() {
            let want = format!("`{}`", default.to_string_lossy());
            if !row.get(1).is_some_and(|d| d.contains(&want)) {
                problems.push(format!(
                    "{what}: the row of --{long} shows default {:?}, clap has {want}",
                    row.get(1).map_or("", String::as_str)
                ));
            }
        }
    }
    for row in &rows {
        for long in longs(&row[0]) {
            if !known.contains(&long) {
                problems.push(format!(
                    "{what}: the reference lists --{long}, which the command does not have"
                ));
            }
        }
    }
    problems
}

#[test]
fn reference_lists_every_option_of_every_command_with_its_default() {
    let cli = Cli::command();
    let mut problems = check_options("global options", &cli, GLOBAL);
    let commands = section(COMMANDS);
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        if !commands.contains(&format!("`recheck {name}")) {
            problems.push(format!("command {name} is not in {COMMANDS:?}"));
        }
        let has_longs = sub
            .get_arguments()
            .any(|a| a.get_long().is_some_and(|l| l != "help"));
        match SECTIONS.iter().find(|(n, _)| *n == name) {
            Some((_, heading)) => problems.extend(check_options(name, sub, heading)),
            None if has_longs => problems.push(format!(
                "command {name} has options but no section in docs/reference.md (add one to SECTIONS)"
            )),
            None => {}
        }
    }
    assert!(
        problems.is_empty(),
        "docs/reference.md is out of date:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn reference_states_the_environment_variable_rule_and_its_exceptions() {
    let cli = Cli::command();
    let mut without_env = BTreeSet::new();
    let args = cli
        .get_arguments()
        .chain(cli.get_subcommands().flat_map(|s| s.get_arguments()));
    for arg in args {
        let Some(long) = arg.get_long() else {
            continue;
        };
        match arg.get_env() {
            Some(env) => {
                let want = format!("RECHECK_{}", long.to_uppercase().replace('-', "_"));
                assert_eq!(
                    env.to_string_lossy(),
                    want,
                    "--{long}: the reference says its variable is {want}"
                );
            }
            None => {
                without_env.insert(long.to_string());
            }
        }
    }
    let config = section(CONFIG);
    let line = config
        .split("\n\n")
        .find(|p| p.starts_with("Options without an environment variable:"))
        .expect("1.5 lists the options without an environment variable");
    let listed: BTreeSet<String> = longs(line).into_iter().collect();
    assert_eq!(
        listed, without_env,
        "the options without an environment variable, as listed in 1.5, and as clap has them"
    );
}

#[test]
fn reference_lists_every_exit_code_and_their_priority() {
    use recheck::commands::{EXIT_API_UNAVAILABLE, EXIT_DEADLINE, EXIT_STORE_FAILED};
    use recheck::shutdown::EXIT_INTERRUPTED;
    let codes = [
        0,
        1,
        2,
        EXIT_DEADLINE,
        EXIT_STORE_FAILED,
        EXIT_API_UNAVAILABLE,
        EXIT_INTERRUPTED,
    ];
    assert_eq!(codes, [0, 1, 2, 3, 4, 5, 130]);
    let text = section(SUMMARY);
    let listed: Vec<String> = table_rows(text, "exit")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let want: Vec<String> = codes.iter().map(u8::to_string).collect();
    assert_eq!(listed, want, "the exit code table of section 4");
    assert!(
        text.contains("**4, 130, 3, 5, 1**"),
        "section 4 gives the priority of the exit codes"
    );
}

#[test]
fn reference_lists_every_outcome() {
    let listed: Vec<String> = table_rows(section(RUN), "outcome")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let want: Vec<String> = recheck::Outcome::ALL
        .iter()
        .map(|o| format!("`{}`", o.as_str()))
        .collect();
    assert_eq!(listed, want, "the outcome table of section 3");
}

#[test]
fn reference_lists_every_key_of_the_json_summary() {
    let mut out = Vec::new();
    recheck::Summary::new("t", "sqlite:recheck.db", false)
        .write(recheck::report::Format::Json, &mut out)
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let keys: BTreeSet<String> = json.as_object().unwrap().keys().cloned().collect();
    let rows = table_rows(section(SUMMARY), "key");
    let listed: BTreeSet<String> = rows.iter().map(|r| r[0].trim_matches('`').into()).collect();
    assert_eq!(listed, keys, "the keys of the JSON summary in section 4");
    // The stable keys are a promise to scripts: none may lose the label.
    let stable: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r[1] == "stable")
        .map(|r| r[0].trim_matches('`'))
        .collect();
    assert_eq!(
        stable,
        BTreeSet::from(recheck::report::summary::STABLE_KEYS),
        "the stable keys"
    );
}
