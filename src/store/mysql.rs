//! Store backend: MySQL / MariaDB, shared by any number of workers on any number of machines.
//! (Being implemented.)

use anyhow::{Result, bail};

use super::{Ident, NewItem, OpenMode, StatusCounts, Store, StoreOptions};
use crate::model::{Item, Verdict};

/// A MySQL / MariaDB store.
pub struct MyStore;

impl MyStore {
    /// Connects to `url` (`shown` is the URL with its password redacted, for messages),
    /// checks the table and columns, and prepares to claim the task's failed items.
    pub async fn open(_url: &str, shown: &str, _opts: StoreOptions, _mode: OpenMode) -> Result<MyStore> {
        bail!("{shown}: not implemented yet")
    }
}

/// `recheck init`: creates the default schema in `table`, or adds the columns it lacks.
pub async fn init(_url: &str, shown: &str, _table: &Ident) -> Result<String> {
    bail!("{shown}: not implemented yet")
}

impl Store for MyStore {
    async fn claim(&self, _n: usize) -> Result<Vec<Item>> {
        bail!("not implemented")
    }
    async fn pending(&self) -> Result<u64> {
        bail!("not implemented")
    }
    async fn save(&self, _batch: Vec<Verdict>) -> Result<()> {
        bail!("not implemented")
    }
    async fn finish(&self) -> Result<()> {
        bail!("not implemented")
    }
    async fn status_counts(&self) -> Result<StatusCounts> {
        bail!("not implemented")
    }
    async fn import(&self, _items: Vec<NewItem>) -> Result<u64> {
        bail!("not implemented")
    }
}
