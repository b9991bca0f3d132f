//! Stub: shared JSON splicing.
