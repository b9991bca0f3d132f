//! Stub: replaced by the JSON Lines store.
use std::path::Path;
use anyhow::{Result, bail};
use super::{OpenMode, StoreOptions, Store, StatusCounts, NewItem};
use crate::model::{Item, Verdict};
/// JSON Lines store.
pub struct JsonlStore;
impl JsonlStore {
    /// Opens.
    pub fn open(_p: &Path, _o: StoreOptions, _m: OpenMode) -> Result<JsonlStore> { bail!("todo") }
}
/// Init.
pub fn init(_p: &Path) -> Result<String> { bail!("todo") }
impl Store for JsonlStore {
    async fn claim(&self, _n: usize) -> Result<Vec<Item>> { bail!("todo") }
    async fn save(&self, _b: Vec<Verdict>) -> Result<()> { bail!("todo") }
    async fn finish(&self) -> Result<()> { bail!("todo") }
    async fn status_counts(&self) -> Result<StatusCounts> { bail!("todo") }
    async fn import(&self, _i: Vec<NewItem>) -> Result<u64> { bail!("todo") }
}
