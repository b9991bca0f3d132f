//! Stub: replaced by the SQLite store.
use std::path::Path;
use anyhow::{Result, bail};
use super::{OpenMode, StoreOptions, Store, StatusCounts, NewItem};
use crate::model::{Item, Verdict};
/// SQLite store.
pub struct SqliteStore;
impl SqliteStore {
    /// Opens.
    pub async fn open(_p: std::path::PathBuf, _o: StoreOptions, _m: OpenMode) -> Result<SqliteStore> { bail!("todo") }
}
/// Init.
pub async fn init(_p: &Path, _t: &super::Ident) -> Result<String> { bail!("todo") }
impl Store for SqliteStore {
    async fn claim(&self, _n: usize) -> Result<Vec<Item>> { bail!("todo") }
    async fn save(&self, _b: Vec<Verdict>) -> Result<()> { bail!("todo") }
    async fn finish(&self) -> Result<()> { bail!("todo") }
    async fn status_counts(&self) -> Result<StatusCounts> { bail!("todo") }
    async fn import(&self, _i: Vec<NewItem>) -> Result<u64> { bail!("todo") }
}
