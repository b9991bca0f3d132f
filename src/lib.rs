//! `recheck` re-checks a task's failed items against an HTTP API, with bounded concurrency,
//! timeouts and retries, and writes the answers back to the store the items live in.
//!
//! # Layout
//!
//! Data flows one way and the modules follow it:
//!
//! ```text
//! cli -> config -> store (claim) -> check::pool [fetch -> judge] -> sink -> store (save) -> report
//! ```
//!
//! - [`cli`]: clap flags (the `--help` text); [`config`]: layering and validation.
//! - [`model`]: the shared vocabulary (items, outcomes, verdicts); no I/O.
//! - [`store`]: the batch-shaped [`store::Store`] trait; the JSON/JSONL file stores, and
//!   [`store::sql`]: one claim-and-write protocol over SQLite, PostgreSQL and MySQL.
//! - [`check`]: URL template, HTTP clients (TLS, HTTP/2, proxies, idle connections), fetch
//!   (timeouts, retries, body cap), judge, the pool.
//! - [`sink`]: the single writer; [`report`]: the summary.
//! - [`shutdown`]: signals to one cancellation token.
//!
//! Only [`run`] knows every stage.

pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod limits;
pub mod model;
pub mod report;
pub mod shutdown;
pub mod sink;
pub mod store;

pub use commands::{exit_code, run};
pub use config::RunConfig;
pub use model::{Item, Outcome, Verdict};
pub use report::Summary;
