//! The Json store: one JSON document: an array of item objects, or an object with an `items` array (its other keys are kept).
//!
//! Written back by splicing new values into the original text, so everything recheck does
//! not own survives byte for byte; see [`super::jsondoc`] for how, and for durability and
//! locking.

use std::path::Path;

use anyhow::Result;

use super::jsondoc::{FileStore, Format};
use super::{NewItem, OpenMode, StatusCounts, Store, StoreOptions};
use crate::model::{Item, Verdict};

/// The Json store.
pub struct JsonStore(FileStore);

impl JsonStore {
    /// Opens and validates the file. A missing file is created only for
    /// [`OpenMode::Create`]; a store opened to write is locked (`<file>.lock`) until
    /// [`Store::finish`] or drop.
    pub fn open(path: &Path, opts: StoreOptions, mode: OpenMode) -> Result<JsonStore> {
        FileStore::open(path, opts, mode, Format::Json).map(JsonStore)
    }
}

/// `recheck init`: creates the file if missing, else validates it. Returns a line saying
/// which.
pub fn init(path: &Path) -> Result<String> {
    super::jsondoc::init(path, Format::Json)
}

impl Store for JsonStore {
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
    use crate::store::{Columns, Ident};

    fn opts(task: &str, failed: &str, ok: &str) -> StoreOptions {
        StoreOptions {
            ok: StatusValue::new(ok),
            need_url: true,
            ..StoreOptions::basic(task, Columns::default(), StatusValue::new(failed))
        }
    }

    const WHEN: &str = "2023-11-14T22:13:20.000Z";

    fn verdict(key: i64, outcome: Outcome, http: Option<u16>, attempts: u32) -> Verdict {
        Verdict {
            key,
            id: String::new(),
            outcome,
            http_status: http,
            attempts,
            error: match outcome {
                Outcome::Ok => None,
                _ => Some(format!("HTTP {} \"Service\"", http.unwrap_or(0))),
            },
            checked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            elapsed: Duration::ZERO,
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("items.json");
        fs::write(&p, text).unwrap();
        p
    }

    /// Opens for a run, claims everything, saves `verdicts(items)`, finishes; returns the
    /// claimed items and the file's new text.
    async fn run(
        path: &Path,
        o: StoreOptions,
        verdicts: impl FnOnce(&[Item]) -> Vec<Verdict>,
    ) -> (Vec<Item>, String) {
        let store = JsonStore::open(path, o, OpenMode::Run).unwrap();
        let items = store.claim(100).await.unwrap();
        assert!(
            store.claim(100).await.unwrap().is_empty(),
            "handed out twice"
        );
        store.save(verdicts(&items).into()).await.unwrap();
        store.finish().await.unwrap();
        (items, fs::read_to_string(path).unwrap())
    }

    const PRETTY: &str = r#"{
  "version": 2,
  "items": [
    {
      "task_id": "t1",
      "item_id": "a",
      "status": "failed",
      "url": "https://x.test/a?q=caf\u00e9",
      "meta": {"size": 1.0e3, "tags": ["x", "y\/z"], "neg": -0.0},
      "attempts": 2
    },
    {
      "task_id": "t2",
      "item_id": "b",
      "status": "failed",
      "note": "other task \"quoted\""
    },
    {
      "task_id": "t1",
      "item_id": "c",
      "status": "failed",
      "http_status": 500,
      "last_error": "boom",
      "big": 12345678901234567890123
    },
    {"task_id": "t1", "item_id": "d", "status": "ok", "x": 1E+2}
  ],
  "trailer": true
}
"#;

    #[tokio::test]
    async fn pretty_round_trip_changes_only_owned_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, PRETTY);
        let (items, text) = run(&path, opts("t1", "failed", "ok"), |items| {
            vec![
                verdict(items[0].key, Outcome::Ok, Some(200), 1),
                verdict(items[1].key, Outcome::Error, Some(503), 6),
            ]
        })
        .await;
        let ids: Vec<_> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(items[0].key, 0);
        assert_eq!(items[1].key, 2);
        assert_eq!(items[0].url.as_deref(), Some("https://x.test/a?q=café"));
        assert_eq!(items[1].url, None);
        let expected = format!(
            r#"{{
  "version": 2,
  "items": [
    {{
      "task_id": "t1",
      "item_id": "a",
      "status": "ok",
      "url": "https://x.test/a?q=caf\u00e9",
      "meta": {{"size": 1.0e3, "tags": ["x", "y\/z"], "neg": -0.0}},
      "attempts": 3,
      "http_status": 200,
      "last_error": null,
      "checked_at": "{WHEN}",
      "checks": 1,
      "first_checked_at": "{WHEN}",
      "next_check_at": null
    }},
    {{
      "task_id": "t2",
      "item_id": "b",
      "status": "failed",
      "note": "other task \"quoted\""
    }},
    {{
      "task_id": "t1",
      "item_id": "c",
      "status": "failed",
      "http_status": 503,
      "last_error": "HTTP 503 \"Service\"",
      "big": 12345678901234567890123,
      "attempts": 6,
      "checked_at": "{WHEN}",
      "checks": 1,
      "first_checked_at": "{WHEN}",
      "next_check_at": null
    }},
    {{"task_id": "t1", "item_id": "d", "status": "ok", "x": 1E+2}}
  ],
  "trailer": true
}}
"#
        );
        assert_eq!(text, expected);
        // No temp files or lock left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["items.json"]);
    }

    #[tokio::test]
    async fn compact_array_round_trip_with_id_alias() {
        let dir = tempfile::tempdir().unwrap();
        let input = r#"{"meta":{"n":1.50,"s":"\u00e9"},"items":[{"task_id":"t1","item_id":"a","status":"failed","k":[1,2,{"z":null}]},{"task_id":"t1","id":7,"status":"failed"}],"z":0}"#;
        let path = file(&dir, input);
        let (items, text) = run(&path, opts("t1", "failed", "ok"), |items| {
            vec![
                verdict(items[0].key, Outcome::Ok, Some(200), 1),
                verdict(items[1].key, Outcome::NotFound, Some(404), 1),
            ]
        })
        .await;
        assert_eq!(items[1].id, "7");
        let expected = format!(
            r#"{{"meta":{{"n":1.50,"s":"\u00e9"}},"items":[{{"task_id":"t1","item_id":"a","status":"ok","k":[1,2,{{"z":null}}],"http_status":200,"attempts":1,"last_error":null,"checked_at":"{WHEN}","checks":1,"first_checked_at":"{WHEN}","next_check_at":null}},{{"task_id":"t1","id":7,"status":"failed","http_status":404,"attempts":1,"last_error":"HTTP 404 \"Service\"","checked_at":"{WHEN}","checks":1,"first_checked_at":"{WHEN}","next_check_at":null}}],"z":0}}"#
        );
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn not_found_status_is_written_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, r#"[{"task_id":"t","item_id":"a","status":"failed"}]"#);
        let mut o = opts("t", "failed", "ok");
        o.not_found = Some(StatusValue::new("gone"));
        let (_, text) = run(&path, o, |items| {
            vec![verdict(items[0].key, Outcome::NotFound, Some(410), 1)]
        })
        .await;
        assert!(
            text.starts_with(r#"[{"task_id":"t","item_id":"a","status":"gone","#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn numeric_status_stays_numeric() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"[{"task_id": 42, "item_id": 1, "status": 5}, {"task_id": "42", "item_id": "2", "status": "5"}, {"task_id": 42, "item_id": 3, "status": 1}, {"task_id": 4, "item_id": 4, "status": 5}]"#,
        );
        let (items, text) = run(&path, opts("42", "5", "1"), |items| {
            items
                .iter()
                .map(|i| verdict(i.key, Outcome::Ok, Some(200), 1))
                .collect()
        })
        .await;
        let ids: Vec<_> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["1", "2"]);
        let tail = format!(
            r#", "http_status": 200, "attempts": 1, "last_error": null, "checked_at": "{WHEN}", "checks": 1, "first_checked_at": "{WHEN}", "next_check_at": null}}"#
        );
        let expected = format!(
            r#"[{{"task_id": 42, "item_id": 1, "status": 1{tail}, {{"task_id": "42", "item_id": "2", "status": "1"{tail}, {{"task_id": 42, "item_id": 3, "status": 1}}, {{"task_id": 4, "item_id": 4, "status": 5}}]"#
        );
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn claim_filters_by_task_and_status_and_fills_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"[
  {"task_id": "t", "item_id": "a", "status": "failed", "region": "eu", "n": 3, "obj": {"k": [1, 2]}, "flag": true, "nil": null},
  {"task_id": "t", "item_id": "b", "status": "FAILED"},
  {"task_id": "u", "item_id": "c", "status": "failed"},
  {"task_id": "t", "id": "d", "status": "f\u0061iled", "region": "us"},
  {"task_id": "t", "item_id": "e", "id": "not-me", "status": "failed"},
  {"task_id": "t", "item_id": "f"},
  {"item_id": "g", "status": "failed"}
]"#,
        );
        let mut o = opts("t", "failed", "ok");
        o.extra_columns = ["region", "n", "obj", "flag", "nil", "absent"]
            .iter()
            .map(|c| Ident::new("col", c).unwrap())
            .collect();
        o.read_only = true;
        let store = JsonStore::open(&path, o, OpenMode::Run).unwrap();
        let mut items = store.claim(2).await.unwrap();
        assert_eq!(items.len(), 2);
        items.extend(store.claim(2).await.unwrap());
        assert!(store.claim(2).await.unwrap().is_empty());
        let ids: Vec<_> = items.iter().map(|i| (i.key, i.id.as_str())).collect();
        assert_eq!(ids, [(0, "a"), (3, "d"), (4, "e")]);
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            items[0].fields,
            [
                s("eu"),
                s("3"),
                s(r#"{"k": [1, 2]}"#),
                s("true"),
                None,
                None
            ]
        );
        assert_eq!(items[1].fields[0], s("us"));
    }

    #[tokio::test]
    async fn mapped_column_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"[{"job": "t", "content": "x1", "state": 5, "link": "http://h/x1", "status": "failed"}]"#,
        );
        let mut o = opts("t", "5", "1");
        o.columns.task = Ident::new("c", "job").unwrap();
        o.columns.id = Ident::new("c", "content").unwrap();
        o.columns.status = Ident::new("c", "state").unwrap();
        o.columns.url = Ident::new("c", "link").unwrap();
        let (items, text) = run(&path, o, |items| {
            vec![verdict(items[0].key, Outcome::Ok, Some(200), 1)]
        })
        .await;
        assert_eq!(items[0].id, "x1");
        assert_eq!(items[0].url.as_deref(), Some("http://h/x1"));
        assert!(
            text.starts_with(r#"[{"job": "t", "content": "x1", "state": 1, "link": "http://h/x1", "status": "failed", "http_status": 200"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn escaped_and_duplicated_keys_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"[{"t\u0061sk_id": "t", "item_id": "a", "st\u0061tus": "ok", "status": "failed", "attempts": 1, "attempts": 2}]"#,
        );
        let (items, text) = run(&path, opts("t", "failed", "ok"), |items| {
            vec![verdict(items[0].key, Outcome::Ok, Some(200), 1)]
        })
        .await;
        assert_eq!(items.len(), 1);
        let expected = format!(
            r#"[{{"t\u0061sk_id": "t", "item_id": "a", "st\u0061tus": "ok", "status": "ok", "attempts": 1, "attempts": 3, "http_status": 200, "last_error": null, "checked_at": "{WHEN}", "checks": 1, "first_checked_at": "{WHEN}", "next_check_at": null}}]"#
        );
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn validation_errors_name_file_and_place() {
        let dir = tempfile::tempdir().unwrap();
        let o = || opts("t", "failed", "ok");
        let open_err = |text: &str, mode| {
            let p = file(&dir, text);
            let e = JsonStore::open(&p, o(), mode).err().unwrap().to_string();
            assert!(!e.contains('\n'), "{e}");
            let name = format!("json:{}: ", p.display());
            assert!(e.starts_with(&name), "{e}");
            e[name.len()..].to_string()
        };
        assert_eq!(open_err("", OpenMode::Status), "not valid JSON: empty file");
        assert_eq!(
            open_err(
                "[\n  {\"task_id\": \"t\"},\n  {\"task_id\" \"t\"}\n]",
                OpenMode::Status
            ),
            "not valid JSON: expected `:` at line 3 column 14"
        );
        assert_eq!(
            open_err("[\n  {},\n  \"x\"\n]", OpenMode::Status),
            "item 1 (line 3) is not a JSON object"
        );
        assert!(open_err(r#"{"rows": []}"#, OpenMode::Status).contains("no \"items\" array"));
        assert_eq!(
            open_err(
                "[\n{\"task_id\": \"t\", \"status\": \"failed\"}]",
                OpenMode::Run
            ),
            "item 0 (line 2) has no \"item_id\" (or \"id\") field"
        );
        assert_eq!(
            open_err(
                r#"[{"task_id": "t", "item_id": true, "status": "failed"}]"#,
                OpenMode::Run
            ),
            "item 0 (line 1) \"item_id\" is not a string, a number or null"
        );
        // The failed open left no lock file behind and did not touch the store.
        assert!(!dir.path().join("items.json.lock").exists());

        let missing = dir.path().join("missing.json");
        for mode in [OpenMode::Run, OpenMode::Status] {
            let e = JsonStore::open(&missing, o(), mode)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("missing.json: no such file"), "{e}");
        }
        let mut dry = o();
        dry.read_only = true;
        assert!(JsonStore::open(&missing, dry, OpenMode::Create).is_err());
        assert!(!missing.exists());
        let store = JsonStore::open(&missing, o(), OpenMode::Create).unwrap();
        store.finish().await.unwrap();
        assert_eq!(fs::read_to_string(&missing).unwrap(), "{\"items\": []}\n");
    }

    #[tokio::test]
    async fn second_writer_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        // An item of the task: a run on a task the file has no item of is refused first.
        let path = file(
            &dir,
            r#"[{"task_id": "t", "item_id": "a", "status": "ok"}]"#,
        );
        let o = || opts("t", "failed", "ok");
        let first = JsonStore::open(&path, o(), OpenMode::Run).unwrap();
        let lock = dir.path().join("items.json.lock");
        assert_eq!(
            fs::read_to_string(&lock).unwrap().trim(),
            std::process::id().to_string()
        );
        let e = JsonStore::open(&path, o(), OpenMode::Create)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            format!(
                "json:{} is locked by another recheck run (pid {})",
                path.display(),
                std::process::id()
            )
        );
        // Readers and dry runs do not need the lock.
        JsonStore::open(&path, o(), OpenMode::Status).unwrap();
        let mut dry = o();
        dry.read_only = true;
        JsonStore::open(&path, dry, OpenMode::Run).unwrap();
        first.finish().await.unwrap();
        assert!(!lock.exists());
        let again = JsonStore::open(&path, o(), OpenMode::Run).unwrap();
        drop(again);
        assert!(!lock.exists());
        // A stale lock file (holder killed) does not block.
        fs::write(&lock, "999999\n").unwrap();
        JsonStore::open(&path, o(), OpenMode::Run).unwrap();
    }

    #[tokio::test]
    async fn dry_run_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, r#"[{"task_id":"t","item_id":"a","status":"failed"}]"#);
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut o = opts("t", "failed", "ok");
        o.read_only = true;
        let store = JsonStore::open(&path, o, OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        assert_eq!(items.len(), 1);
        store
            .save(vec![verdict(items[0].key, Outcome::Ok, Some(200), 1)].into())
            .await
            .unwrap();
        store.finish().await.unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            r#"[{"task_id":"t","item_id":"a","status":"failed"}]"#
        );
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn save_checkpoints_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let input = "[{\"task_id\":\"t\",\"item_id\":\"a\",\"status\":\"failed\"},\n {\"task_id\":\"t\",\"item_id\":\"b\",\"status\":\"failed\"}]";
        let path = file(&dir, input);
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        store
            .save(vec![verdict(items[0].key, Outcome::Ok, Some(200), 1)].into())
            .await
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), input, "wrote too early");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        store
            .save(vec![verdict(items[1].key, Outcome::Ok, Some(200), 1)].into())
            .await
            .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"status\":\"ok\"").count(), 2, "{text}");
        store.finish().await.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn permissions_and_symlinks_survive() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, r#"[{"task_id":"t","item_id":"a","status":"failed"}]"#);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let (_, text) = run(&link, opts("t", "failed", "ok"), |items| {
            vec![verdict(items[0].key, Outcome::Ok, Some(200), 1)]
        })
        .await;
        assert!(text.contains("\"status\":\"ok\""));
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[tokio::test]
    async fn import_appends_and_updates() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"{
  "items": [
    {
      "task_id": "t",
      "item_id": "a",
      "status": "ok",
      "url": "http://old/a"
    }
  ]
}
"#,
        );
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Create).unwrap();
        let n = store
            .import(
                vec![
                    NewItem {
                        id: "a".into(),
                        url: Some("http://new/a".into()),
                    },
                    NewItem {
                        id: "b".into(),
                        url: None,
                    },
                    NewItem {
                        id: "c\"1".into(),
                        url: Some("http://new/c".into()),
                    },
                ],
                true,
            )
            .await
            .unwrap();
        assert_eq!(n.added + n.reset, 3);
        // Written at once, before finish.
        let expected = r#"{
  "items": [
    {
      "task_id": "t",
      "item_id": "a",
      "status": "failed",
      "url": "http://new/a"
    },
    {
      "task_id": "t",
      "item_id": "b",
      "status": "failed"
    },
    {
      "task_id": "t",
      "item_id": "c\"1",
      "status": "failed",
      "url": "http://new/c"
    }
  ]
}
"#;
        assert_eq!(fs::read_to_string(&path).unwrap(), expected);
        // A second import sees the appended items.
        store
            .import(
                vec![NewItem {
                    id: "b".into(),
                    url: Some("http://b".into()),
                }],
                true,
            )
            .await
            .unwrap();
        store.finish().await.unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"item_id\": \"b\",\n      \"status\": \"failed\",\n      \"url\": \"http://b\"\n    },"),
            "{text}"
        );
        assert_eq!(text.matches("\"item_id\": \"b\"").count(), 1);
    }

    #[tokio::test]
    async fn import_into_new_and_empty_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.json");
        assert!(init(&path).unwrap().starts_with("created"));
        let mut o = opts("7", "5", "1");
        let store = JsonStore::open(&path, o.clone(), OpenMode::Create).unwrap();
        store
            .import(
                vec![
                    NewItem {
                        id: "x".into(),
                        url: None,
                    },
                    NewItem {
                        id: "y".into(),
                        url: Some("http://y".into()),
                    },
                ],
                true,
            )
            .await
            .unwrap();
        store.finish().await.unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            r#"{"items": [
  {
    "task_id": "7",
    "item_id": "x",
    "status": 5
  },
  {
    "task_id": "7",
    "item_id": "y",
    "status": 5,
    "url": "http://y"
  }
]}
"#
        );
        // The result is a valid store whose items are the task's failed items.
        o.read_only = true;
        let store = JsonStore::open(&path, o, OpenMode::Run).unwrap();
        assert_eq!(store.claim(10).await.unwrap().len(), 2);

        let path = file(&dir, "[]");
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Create).unwrap();
        store
            .import(
                vec![NewItem {
                    id: "1".into(),
                    url: None,
                }],
                true,
            )
            .await
            .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "[\n  {\n    \"task_id\": \"t\",\n    \"item_id\": \"1\",\n    \"status\": \"failed\"\n  }\n]"
        );
    }

    #[tokio::test]
    async fn status_counts_per_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"[
  {"task_id": "t", "item_id": "a", "status": "failed", "checked_at": "2024-01-02T00:00:00.000Z"},
  {"task_id": "t", "item_id": "b", "status": "ok", "checked_at": "2024-01-01T00:00:00.000Z"},
  {"task_id": "t", "item_id": "c", "status": 5},
  {"task_id": "t", "item_id": "d", "status": "failed"},
  {"task_id": "u", "item_id": "e", "status": "zzz", "checked_at": "2030-01-01T00:00:00.000Z"}
]"#,
        );
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Status).unwrap();
        let counts = store.status_counts().await.unwrap();
        assert_eq!(
            counts.counts,
            [
                ("5".to_string(), 1),
                ("failed".to_string(), 2),
                ("ok".to_string(), 1)
            ]
        );
        assert_eq!(
            counts.oldest_checked_at.as_deref(),
            Some("2024-01-01T00:00:00.000Z")
        );
        assert_eq!(
            counts.newest_checked_at.as_deref(),
            Some("2024-01-02T00:00:00.000Z")
        );

        // Unwritten verdicts count too.
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        store
            .save(vec![verdict(items[0].key, Outcome::Ok, Some(200), 1)].into())
            .await
            .unwrap();
        let counts = store.status_counts().await.unwrap();
        assert_eq!(
            counts.counts,
            [
                ("5".to_string(), 1),
                ("failed".to_string(), 1),
                ("ok".to_string(), 2)
            ]
        );
        assert_eq!(counts.oldest_checked_at.as_deref(), Some(WHEN));
        assert_eq!(
            counts.newest_checked_at.as_deref(),
            Some("2024-01-01T00:00:00.000Z")
        );
    }

    #[test]
    fn init_creates_or_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let msg = init(&path).unwrap();
        assert_eq!(
            msg,
            format!("created json:{} (an empty \"items\" array)", path.display())
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"items\": []}\n");
        fs::write(&path, "[{}, {}]").unwrap();
        assert!(
            init(&path)
                .unwrap()
                .contains("already exists and is valid (2 items)")
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "[{}, {}]");
        fs::write(&path, "[{},").unwrap();
        assert!(
            init(&path)
                .unwrap_err()
                .to_string()
                .contains("not valid JSON")
        );
    }

    /// Another process replaces the file (write to a temp file, rename: what editors and
    /// most pipelines do).
    fn foreign_write(path: &Path, text: &str) {
        let tmp = path.with_extension("other.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    fn ok_at(key: i64) -> Verdict {
        verdict(key, Outcome::Ok, Some(200), 1)
    }

    #[tokio::test]
    async fn a_foreign_edit_is_merged_by_id_and_its_items_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"[{"task_id":"t","item_id":"a","status":"failed"},{"task_id":"t","item_id":"b","status":"failed"},{"task_id":"t","item_id":"c","status":"failed"},{"task_id":"t","item_id":"d","status":"failed"},{"task_id":"u","item_id":"x","status":"failed"}]"#,
        );
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        let key = |id: &str| items.iter().find(|i| i.id == id).unwrap().key;
        assert_eq!(items.len(), 4);
        // Accepted, not written yet (the checkpoint is a second away).
        let saved = store.save(vec![ok_at(key("a"))].into()).await.unwrap();
        assert!(saved.conflicts.is_empty());
        // Another process rewrites the file in its own style: b is done, c removed, an
        // item added, another task's item annotated.
        let theirs = r#"[
  {"task_id": "t", "item_id": "d", "status": "failed"},
  {"task_id": "t", "item_id": "b", "status": "done", "by": "pipeline"},
  {"task_id": "t", "item_id": "a", "status": "failed"},
  {"task_id": "u", "item_id": "x", "status": "failed", "note": "kept"},
  {"task_id": "t", "item_id": "e", "status": "failed"}
]
"#;
        foreign_write(&path, theirs);
        let saved = store
            .save(vec![ok_at(key("b")), ok_at(key("c")), ok_at(key("d"))].into())
            .await
            .unwrap();
        // b changed since it was claimed, c is gone: both lose, d is merged.
        assert_eq!(saved.conflicts, [0, 1]);
        store.finish().await.unwrap();
        let tail = format!(
            r#", "http_status": 200, "attempts": 1, "last_error": null, "checked_at": "{WHEN}", "checks": 1, "first_checked_at": "{WHEN}", "next_check_at": null}}"#
        );
        let expected = format!(
            r#"[
  {{"task_id": "t", "item_id": "d", "status": "ok"{tail},
  {{"task_id": "t", "item_id": "b", "status": "done", "by": "pipeline"}},
  {{"task_id": "t", "item_id": "a", "status": "ok"{tail},
  {{"task_id": "u", "item_id": "x", "status": "failed", "note": "kept"}},
  {{"task_id": "t", "item_id": "e", "status": "failed"}}
]
"#
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), expected);
    }

    #[tokio::test]
    async fn written_or_accepted_answers_changed_later_are_left_to_the_other_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "[{\"task_id\":\"t\",\"item_id\":\"a\",\"status\":\"failed\"},\n{\"task_id\":\"t\",\"item_id\":\"b\",\"status\":\"failed\"},\n{\"task_id\":\"t\",\"item_id\":\"c\",\"status\":\"failed\"}]",
        );
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        store.save(vec![ok_at(items[0].key)].into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The checkpoint writes a.
        store.save(vec![].into()).await.unwrap();
        let written = fs::read_to_string(&path).unwrap();
        assert!(
            written.contains("\"item_id\":\"a\",\"status\":\"ok\""),
            "{written}"
        );
        // The other process cancels a (already written) ...
        let theirs = written.replacen("\"status\":\"ok\"", "\"status\":\"cancelled\"", 1);
        foreign_write(&path, &theirs);
        // ... b's answer is merged, no conflict ...
        let saved = store.save(vec![ok_at(items[1].key)].into()).await.unwrap();
        assert!(saved.conflicts.is_empty());
        store.save(vec![ok_at(items[2].key)].into()).await.unwrap();
        // ... and c, whose answer was accepted but not written yet, is set to done: the
        // later change wins, as a later UPDATE would.
        let theirs = theirs.replacen(
            "\"item_id\":\"c\",\"status\":\"failed\"",
            "\"item_id\":\"c\",\"status\":\"done\"",
            1,
        );
        fs::write(&path, &theirs).unwrap(); // in place, not atomic
        store.finish().await.unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"item_id\":\"a\",\"status\":\"cancelled\",\"http_status\":200"),
            "{text}"
        );
        assert!(
            text.contains("\"item_id\":\"b\",\"status\":\"ok\""),
            "{text}"
        );
        assert!(
            text.ends_with("{\"task_id\":\"t\",\"item_id\":\"c\",\"status\":\"done\"}]"),
            "{text}"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_same_size_edit_in_the_same_mtime_is_caught_before_the_write() {
        use std::io::{Seek, Write};
        let dir = tempfile::tempdir().unwrap();
        let text = r#"[{"task_id":"t","item_id":"a","status":"failed"},{"task_id":"t","item_id":"b","status":"failed"}]"#;
        let path = file(&dir, text);
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        // Overwrite b's status in place with a value of the same length and put the mtime
        // back: size, mtime and inode all look the same.
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        let at = text.rfind("failed").unwrap();
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
        f.write_all(b"paused").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let saved = store
            .save(vec![ok_at(items[0].key), ok_at(items[1].key)].into())
            .await
            .unwrap();
        assert!(saved.conflicts.is_empty(), "stat cannot tell");
        // The byte comparison before the write can: b keeps the other process's value.
        store.finish().await.unwrap();
        let out = fs::read_to_string(&path).unwrap();
        assert!(out.contains(r#""item_id":"a","status":"ok""#), "{out}");
        assert!(
            out.ends_with(r#"{"task_id":"t","item_id":"b","status":"paused"}]"#),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_foreign_edit_that_does_not_parse_fails_the_save_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, r#"[{"task_id":"t","item_id":"a","status":"failed"}]"#);
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        foreign_write(&path, "[{\"task_id\": \"t\",");
        let err = store
            .save(vec![ok_at(items[0].key)].into())
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(&format!(
                "json:{}: changed by another process",
                path.display()
            )) && msg.contains("no longer a valid store")
                && !msg.contains('\n'),
            "{msg}"
        );
        assert!(!crate::store::is_transient(&err), "{msg}");
        // Nothing of the batch was taken; the broken file is left as the other process
        // wrote it.
        store.finish().await.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "[{\"task_id\": \"t\",");
    }

    #[tokio::test]
    async fn empty_and_null_ids_are_handed_out_and_matched_by_occurrence() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            r#"[{"task_id":"t","item_id":"","status":"failed"},{"task_id":"t","item_id":null,"status":"failed"},{"task_id":"t","item_id":"a","status":"failed"}]"#,
        );
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Run).unwrap();
        let items = store.claim(10).await.unwrap();
        let ids: Vec<_> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["", "", "a"]);
        // Another process moves the null-id item first: both have the id "", so they are
        // told apart by their order among the task's items with that id.
        foreign_write(
            &path,
            r#"[{"task_id":"t","item_id":"","status":"failed","n":1},{"task_id":"t","item_id":"a","status":"failed"},{"task_id":"t","item_id":null,"status":"failed"}]"#,
        );
        let mut err = verdict(items[1].key, Outcome::Error, None, 0);
        err.error = Some("empty item id".into());
        let saved = store.save(vec![err].into()).await.unwrap();
        assert!(saved.conflicts.is_empty());
        store.finish().await.unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(&format!(
                r#"{{"task_id":"t","item_id":null,"status":"failed","http_status":null,"attempts":0,"last_error":"empty item id","checked_at":"{WHEN}","checks":1,"first_checked_at":"{WHEN}","next_check_at":null}}]"#
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_run_on_an_unknown_task_is_refused_naming_the_closest() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"[{"task_id":"nightly-41","item_id":"a","status":"failed"},{"task_id":"nightly-42","item_id":"b","status":"ok"},{"task_id":"weekly","item_id":"c","status":"failed"}]"#;
        let path = file(&dir, text);
        let err = JsonStore::open(&path, opts("nightly-43", "failed", "ok"), OpenMode::Run)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            format!(
                "json:{}: no task \"nightly-43\"; closest task ids: \"nightly-41\", \"nightly-42\", \"weekly\"",
                path.display()
            )
        );
        // A dry run too; the store is left as it was, no lock file remains.
        let mut dry = opts("nightly-43", "failed", "ok");
        dry.read_only = true;
        assert!(JsonStore::open(&path, dry, OpenMode::Run).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // `status` on it keeps answering (with no counts).
        let store =
            JsonStore::open(&path, opts("nightly-43", "failed", "ok"), OpenMode::Status).unwrap();
        assert!(store.status_counts().await.unwrap().counts.is_empty());
    }

    #[tokio::test]
    async fn import_leaves_existing_ids_unless_reset() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"[{"task_id":"t","item_id":"a","status":"ok","url":"http://old/a"}]"#;
        let path = file(&dir, text);
        let store = JsonStore::open(&path, opts("t", "failed", "ok"), OpenMode::Create).unwrap();
        let new = |id: &str, url: Option<&str>| NewItem {
            id: id.into(),
            url: url.map(Into::into),
        };
        let counts = store
            .import(
                vec![
                    new("a", Some("http://new/a")),
                    new("b", None),
                    new("b", None),
                ],
                false,
            )
            .await
            .unwrap();
        assert_eq!(
            counts,
            crate::store::ImportCounts {
                added: 1,
                already: 2,
                reset: 0
            }
        );
        let after = fs::read_to_string(&path).unwrap();
        assert!(
            after.starts_with(
                r#"[{"task_id":"t","item_id":"a","status":"ok","url":"http://old/a"},"#
            ),
            "{after}"
        );
        assert_eq!(after.matches("\"item_id\":\"b\"").count(), 1, "{after}");
        // Nothing new: the file is not rewritten.
        let counts = store.import(vec![new("a", None)], false).await.unwrap();
        assert_eq!(counts.already, 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), after);
        let counts = store
            .import(vec![new("a", Some("http://new/a"))], true)
            .await
            .unwrap();
        assert_eq!((counts.added, counts.already, counts.reset), (0, 0, 1));
        store.finish().await.unwrap();
        assert!(fs::read_to_string(&path).unwrap().starts_with(
            r#"[{"task_id":"t","item_id":"a","status":"failed","url":"http://new/a"},"#
        ));
    }
}
