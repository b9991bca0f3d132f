//! The quick start: a real `recheck run` on the embedded default store.
//!
//! Starts the repo's mock status server on 127.0.0.1 (20 ms per answer), fills a new SQLite
//! store with 5,000 failed items of task `demo` (most now fine, some still processing, some
//! gone, some flaky, a few broken), runs `recheck run` on it with the same argument parsing
//! as the binary, and prints the summary and the store's counts.
//!
//! ```text
//! cargo run --release --example demo [-- ITEMS]
//! ```

#[path = "../tests/support/mock_server.rs"]
mod mock_server;

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mock_server::{MockConfig, MockServer};
use recheck::cli::Command;
use recheck::config::{self, ArgsError};

const DEFAULT_ITEMS: usize = 5_000;

#[tokio::main]
async fn main() -> Result<()> {
    let items: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("usage: demo [ITEMS]")?,
        None => DEFAULT_ITEMS,
    };
    let server = MockServer::start(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("recheck-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("recheck.db");
    fill(&db, items)?;
    println!(
        "mock server: {}   store: {}   items: {items}\n",
        server.url(),
        db.display()
    );

    let argv = [
        "recheck",
        "run",
        "--task",
        "demo",
        "--store",
        &db.display().to_string(),
        "--url",
        &server.item_url_template(),
        "--expect-json",
        "/status=done",
        "--not-found-status",
        "gone",
        "--timeout",
        "2s",
        "--backoff",
        "50ms..2s",
    ]
    .map(OsString::from)
    .to_vec();
    println!("$ {}\n", shown(&argv));
    let cli = match config::parse_args(argv) {
        Ok(cli) => cli,
        Err(ArgsError::Clap(e)) => bail!("{e}"),
        Err(ArgsError::Config(e)) => return Err(e),
    };
    let Command::Run(args) = cli.command else {
        bail!("not a run command");
    };
    let cfg = recheck::RunConfig::from_args(&args)?;
    let format = cfg.format;
    let summary = recheck::run(cfg, tokio_util::sync::CancellationToken::new()).await?;
    summary.write(format, &mut std::io::stdout().lock())?;
    println!(
        "\nserver saw {} requests, at most {} in flight (--concurrency 100)",
        server.total_requests(),
        server.high_water()
    );

    println!("\n$ recheck status --task demo --store {}", db.display());
    let status = recheck::cli::StatusArgs {
        task: Some("demo".into()),
        store: store_args(&db),
        failed_status: "failed".into(),
        dead_status: "dead".into(),
        format: recheck::report::Format::Text,
    };
    recheck::commands::status(&status, &mut std::io::stdout().lock()).await?;
    println!(
        "\n(the store is kept at {}; run the demo again for a fresh one)",
        db.display()
    );
    Ok(())
}

/// A new SQLite store with `n` failed items whose ids pick the mock server's behaviour:
/// 85% fine now, 5% still processing, 3% gone (404), 5% flaky (503 twice, then fine),
/// 2% broken (500 every time).
fn fill(db: &std::path::Path, n: usize) -> Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    conn.execute_batch(
        "CREATE TABLE items(task_id TEXT NOT NULL, item_id TEXT NOT NULL, status TEXT NOT NULL,
            url TEXT NULL, http_status INTEGER NULL, attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NULL, checked_at TEXT NULL, lease_owner TEXT NULL, lease_until TEXT NULL,
            PRIMARY KEY (task_id, item_id));
         CREATE INDEX items_task_status ON items(task_id, status);",
    )?;
    let tx = conn.unchecked_transaction()?;
    {
        let mut st = tx
            .prepare("INSERT INTO items(task_id, item_id, status) VALUES ('demo', ?1, 'failed')")?;
        for i in 0..n {
            let kind = match i % 100 {
                0..=84 => "ok",
                85..=89 => "fail",
                90..=92 => "404",
                93..=97 => "503x2",
                _ => "s500",
            };
            st.execute([format!("{kind}-{i}")])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn store_args(db: &std::path::Path) -> recheck::cli::StoreArgs {
    recheck::cli::StoreArgs {
        store: db.display().to_string(),
        table: "items".into(),
        task_column: "task_id".into(),
        id_column: "item_id".into(),
        status_column: "status".into(),
        url_column: "url".into(),
    }
}

fn shown(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(['{', ' ', '/']) && !a.starts_with('/') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
