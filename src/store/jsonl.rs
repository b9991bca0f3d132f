//! The Jsonl store: JSON Lines: one item object per line (blank lines are kept).
//!
//! Written back by splicing new values into the original text, so everything recheck does
//! not own survives byte for byte; see [`super::jsondoc`] for how, and for durability and
//! locking.

use std::path::Path;

use anyhow::Result;

use super::jsondoc::{FileStore, Format};
use super::{NewItem, OpenMode, StatusCounts, Store, StoreOptions};
use crate::model::{Item, Verdict};

/// The Jsonl store.
pub struct JsonlStore(FileStore);

impl JsonlStore {
    /// Opens and validates the file. A missing file is created only for
    /// [`OpenMode::Create`]; a store opened to write is locked (`<file>.lock`) until
    /// [`Store::finish`] or drop.
    pub fn open(path: &Path, opts: StoreOptions, mode: OpenMode) -> Result<JsonlStore> {
        FileStore::open(path, opts, mode, Format::Jsonl).map(JsonlStore)
    }
}

/// `recheck init`: creates the file if missing, else validates it. Returns a line saying
/// which.
pub fn init(path: &Path) -> Result<String> {
    super::jsondoc::init(path, Format::Jsonl)
}

impl Store for JsonlStore {
    async fn claim(&self, n: usize) -> Result<Vec<Item>> {
        self.0.claim(n).await
    }
    async fn pending(&self) -> Result<u64> {
        Ok(self.0.pending())
    }
    async fn save(&self, batch: std::sync::Arc<[Verdict]>) -> Result<super::Saved> {
        self.0.save(batch).await
    }
    async fn finish(&self) -> Result<()> {
        self.0.finish().await
    }
    async fn status_counts(&self) -> Result<StatusCounts> {
        self.0.status_counts().await
    }
    async fn status_all(&self) -> Result<Vec<(String, StatusCounts)>> {
        self.0.status_all().await
    }
    async fn import(&self, items: Vec<NewItem>, reset: bool) -> Result<super::ImportCounts> {
        self.0.import(items, reset).await
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::model::{Outcome, StatusValue};
    use crate::store::Columns;

    fn opts(task: &str) -> StoreOptions {
        StoreOptions::basic(task, Columns::default(), StatusValue::new("failed"))
    }

    const WHEN: &str = "2023-11-14T22:13:20.000Z";

    fn ok(key: i64) -> Verdict {
        Verdict {
            key,
            id: String::new(),
            outcome: Outcome::Ok,
            http_status: Some(200),
            attempts: 1,
            error: None,
            checked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            elapsed: Duration::ZERO,
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("items.jsonl");
        fs::write(&p, text).unwrap();
        p
    }

    #[tokio::test]
    async fn round_trip_keeps_lines_blank_lines_and_style() {
        let dir = tempfile::tempdir().unwrap();
        let input = concat!(
            "{\"task_id\": \"t\", \"item_id\": \"a\", \"status\": \"failed\", \"n\": 1.0e3}\n",
            "\n",
            "   \n",
            "{\"task_id\":\"u\",\"item_id\":\"b\",\"status\":\"failed\"}\n",
            "{\"task_id\":\"t\",\"item_id\":\"c\",\"status\":\"failed\",\"x\":{\"y\":\"\\u00e9\"}}\r\n",
            "\t{ \"task_id\" : \"t\" , \"id\" : 4 , \"status\" : \"failed\" }",
        );
        let path = file(&dir, input);
        let store = JsonlStore::open(&path, opts("t"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        let keys: Vec<_> = items.iter().map(|i| (i.key, i.id.as_str())).collect();
        assert_eq!(keys, [(0, "a"), (2, "c"), (3, "4")]);
        store
            .save(items.iter().map(|i| ok(i.key)).collect())
            .await
            .unwrap();
        store.finish().await.unwrap();
        let expected = format!(
            concat!(
                "{{\"task_id\": \"t\", \"item_id\": \"a\", \"status\": \"ok\", \"n\": 1.0e3, \"http_status\": 200, \"attempts\": 1, \"last_error\": null, \"checked_at\": \"{w}\", \"checks\": 1, \"first_checked_at\": \"{w}\", \"next_check_at\": null}}\n",
                "\n",
                "   \n",
                "{{\"task_id\":\"u\",\"item_id\":\"b\",\"status\":\"failed\"}}\n",
                "{{\"task_id\":\"t\",\"item_id\":\"c\",\"status\":\"ok\",\"x\":{{\"y\":\"\\u00e9\"}},\"http_status\":200,\"attempts\":1,\"last_error\":null,\"checked_at\":\"{w}\",\"checks\":1,\"first_checked_at\":\"{w}\",\"next_check_at\":null}}\r\n",
                "\t{{ \"task_id\" : \"t\" , \"id\" : 4 , \"status\" : \"ok\" , \"http_status\" : 200 , \"attempts\" : 1 , \"last_error\" : null , \"checked_at\" : \"{w}\" , \"checks\" : 1 , \"first_checked_at\" : \"{w}\" , \"next_check_at\" : null }}",
            ),
            w = WHEN
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), expected);
    }

    #[tokio::test]
    async fn errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, "{\"a\": 1}\n\n{\"a\": 1,}\n");
        let e = JsonlStore::open(&path, opts("t"), OpenMode::Status)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            format!(
                "jsonl:{}: line 3 is not valid JSON: key must be a string at column 9",
                path.display()
            )
        );
        let path = file(&dir, "{}\n\"x\"\n");
        let e = JsonlStore::open(&path, opts("t"), OpenMode::Status)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            format!("jsonl:{}: line 2 is not a JSON object", path.display())
        );
        let missing = dir.path().join("none.jsonl");
        let e = JsonlStore::open(&missing, opts("t"), OpenMode::Run)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with(&format!("jsonl:{}: no such file", missing.display())));
        assert!(!missing.exists());
    }

    #[tokio::test]
    async fn empty_file_is_a_valid_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.jsonl");
        assert!(init(&path).unwrap().starts_with("created"));
        assert_eq!(fs::read(&path).unwrap(), b"");
        assert!(init(&path).unwrap().contains("valid (0 items)"));
        let store = JsonlStore::open(&path, opts("t"), OpenMode::Status).unwrap();
        assert_eq!(
            store.status_counts().await.unwrap(),
            StatusCounts {
                schedule: Some(Default::default()),
                ..StatusCounts::default()
            }
        );
        assert!(store.claim(5).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn import_appends_lines_like_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "{\"task_id\": \"t\", \"item_id\": \"a\", \"status\": \"ok\"}\n\n{\"task_id\": \"u\", \"item_id\": \"a\", \"status\": \"ok\"}",
        );
        let store = JsonlStore::open(&path, opts("t"), OpenMode::Create).unwrap();
        let n = store
            .import(
                vec![
                    NewItem {
                        id: "a".into(),
                        url: None,
                    },
                    NewItem {
                        id: "b".into(),
                        url: Some("http://b/é".into()),
                    },
                ],
                true,
            )
            .await
            .unwrap();
        assert_eq!(n.added + n.reset, 2);
        store.finish().await.unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"task_id\": \"t\", \"item_id\": \"a\", \"status\": \"failed\"}\n\n\
             {\"task_id\": \"u\", \"item_id\": \"a\", \"status\": \"ok\"}\n\
             {\"task_id\": \"t\", \"item_id\": \"b\", \"status\": \"failed\", \"url\": \"http://b/é\"}\n"
        );

        // Into a missing file (created by import), compact.
        let path = dir.path().join("fresh.jsonl");
        let store = JsonlStore::open(&path, opts("t"), OpenMode::Create).unwrap();
        store
            .import(
                vec![
                    NewItem {
                        id: "1".into(),
                        url: None,
                    },
                    NewItem {
                        id: "2".into(),
                        url: None,
                    },
                ],
                true,
            )
            .await
            .unwrap();
        store.finish().await.unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"task_id\":\"t\",\"item_id\":\"1\",\"status\":\"failed\"}\n{\"task_id\":\"t\",\"item_id\":\"2\",\"status\":\"failed\"}\n"
        );
    }

    #[tokio::test]
    async fn lock_conflict_names_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        // An item of the task: a run on a task the file has no item of is refused first.
        let path = file(
            &dir,
            "{\"task_id\":\"t\",\"item_id\":\"1\",\"status\":\"ok\"}\n",
        );
        let _first = JsonlStore::open(&path, opts("t"), OpenMode::Run).unwrap();
        let e = JsonlStore::open(&path, opts("t"), OpenMode::Run)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.ends_with(&format!(
                "is locked by another recheck run (pid {})",
                std::process::id()
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_foreign_append_and_edit_survive_and_conflicts_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "{\"task_id\":\"t\",\"item_id\":\"a\",\"status\":\"failed\"}\n{\"task_id\":\"t\",\"item_id\":\"b\",\"status\":\"failed\"}\n",
        );
        let store = JsonlStore::open(&path, opts("t"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        // A pipeline appends a line and marks b done, in place (`>>`-style writers do not
        // rename).
        fs::write(
            &path,
            "{\"task_id\":\"t\",\"item_id\":\"a\",\"status\":\"failed\"}\n{\"task_id\":\"t\",\"item_id\":\"b\",\"status\":\"done\"}\n{\"task_id\":\"t\",\"item_id\":\"c\",\"status\":\"failed\"}\n",
        )
        .unwrap();
        let saved = store
            .save(items.iter().map(|i| ok(i.key)).collect())
            .await
            .unwrap();
        assert_eq!(saved.conflicts, [1]);
        store.finish().await.unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!(
                "{{\"task_id\":\"t\",\"item_id\":\"a\",\"status\":\"ok\",\"http_status\":200,\"attempts\":1,\"last_error\":null,\"checked_at\":\"{WHEN}\",\"checks\":1,\"first_checked_at\":\"{WHEN}\",\"next_check_at\":null}}\n{{\"task_id\":\"t\",\"item_id\":\"b\",\"status\":\"done\"}}\n{{\"task_id\":\"t\",\"item_id\":\"c\",\"status\":\"failed\"}}\n"
            )
        );
    }
}
