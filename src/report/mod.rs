//! Stage "report": what a run tells its users. The [`Summary`] (folded by the sink, one
//! verdict at a time) and its text/JSON/Markdown forms; the per-item and CI files
//! (`--report`, `--junit`, `--metrics-file`, `--step-summary`); the progress display. Writes only to the files and
//! streams it is given; never touches the store or the network.

pub mod jsonl;
pub mod junit;
pub mod metrics;
pub mod outputs;
pub mod progress;
pub mod step_summary;
pub mod summary;

pub use outputs::{OutputConfig, OutputFiles};
pub use progress::Progress;
pub use summary::{Format, Summary};

/// What became of one answer in the store: the `store` field of each `--report` line, and
/// what the summary's `written`, `conflicts` and `unwritten` count. Known only once the
/// answer's batch was saved (or could not be), so the report is written after the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stored {
    /// Written to the store.
    Written,
    /// Not written because the row changed (or was replaced) since it was claimed: the
    /// other process's change is kept (compare-and-set, docs/reference.md §3.7).
    Conflict,
    /// Not written because the store failed during the run (exit 4).
    Unwritten,
    /// `--dry-run`: nothing is written.
    DryRun,
}

impl Stored {
    /// The name used in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Stored::Written => "written",
            Stored::Conflict => "conflict",
            Stored::Unwritten => "unwritten",
            Stored::DryRun => "dry_run",
        }
    }
}
