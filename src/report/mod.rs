//! Stage "report": the run's [`Summary`] (folded by the sink, one verdict at a time) and the
//! formats it is printed in. Writes only to the `Write` it is given.

pub mod summary;

pub use summary::{Format, Summary};
