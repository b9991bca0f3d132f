//! Stage "report": what a run tells its users. The [`Summary`] (folded by the sink, one
//! verdict at a time) and its text/JSON forms; the per-item and CI files (`--report`,
//! `--junit`, `--metrics-file`); the progress display. Writes only to the files and
//! streams it is given; never touches the store or the network.

pub mod jsonl;
pub mod junit;
pub mod metrics;
pub mod outputs;
pub mod progress;
pub mod summary;

pub use outputs::{OutputConfig, OutputFiles};
pub use progress::Progress;
pub use summary::{Format, Summary};
