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
//! - [`model`]: the shared vocabulary (items, outcomes, verdicts); no I/O.
//! - [`store`]: the [`store::Store`] trait and one module per backend.

pub mod model;
pub mod store;
