//! The run's files: `--report` (JSON Lines, one object per item), `--junit` (JUnit XML)
//! and `--metrics-file` (Prometheus text format, replaced atomically).
//!
//! Opening is two steps, so a refused run touches no output file:
//!
//! 1. [`OutputFiles::check`], before the store is opened, checks every path without
//!    creating or truncating anything: not `-` (stdout carries the summary), an existing
//!    path must be a regular file (a FIFO, a device or a directory is refused from its
//!    metadata, never opened, so nothing can block), its directory must take a new file,
//!    and no two paths, nor any path and the store's file (or its `-wal`/`-shm`/`-journal`/
//!    `.lock` side files), may be one file: compared by device and inode for existing files,
//!    so hard links and symlinks are caught, and by canonical directory plus name for files
//!    that do not exist yet. A bad path is a one-line error naming the flag (exit 2).
//! 2. [`OutputPlan::open`], once the store was opened and validated, creates (or
//!    truncates) the `--report` file.
//!
//! | flag | written | memory |
//! | --- | --- | --- |
//! | `--report` | created (truncated) after the store was opened, one line per answer once its batch was saved, flushed after each batch | O(1) |
//! | `--junit` | at the end, atomically (temp file in the same directory, fsync, rename) | O(items) |
//! | `--metrics-file` | at the end, atomically | O(1) |
//! | `--step-summary` | at the end, appended (CI job pages: other steps write there too) | O(1): the first 50 not-OK items |
//!
//! An interrupted or deadline-stopped run still writes them all, with what was checked.
//!
//! An output that fails during the run (disk full, I/O error) never costs the store an
//! answer (docs/reference.md §5): it is disabled with one error line on stderr naming the
//! flag, the file and the cause, the run and the store writes go on, and the exit code is at
//! least 1 ([`OutputFiles::finish`] counts the failures).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};

use crate::model::Verdict;
use crate::report::jsonl::JsonlReport;
use crate::report::junit::JunitReport;
use crate::report::metrics::MetricsFile;
use crate::report::step_summary::StepSummary;
use crate::report::{Stored, Summary};

/// Which files to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputConfig {
    /// `--report FILE`.
    pub report: Option<PathBuf>,
    /// `--junit FILE`.
    pub junit: Option<PathBuf>,
    /// `--metrics-file FILE`.
    pub metrics: Option<PathBuf>,
    /// `--step-summary FILE` (or `$GITHUB_STEP_SUMMARY`): appended to at the end.
    pub step_summary: Option<PathBuf>,
}

/// The output paths of a run, checked ([`OutputFiles::check`]) but not created yet.
pub struct OutputPlan {
    report: Option<ReportTarget>,
    junit: Option<AtomicFile>,
    metrics: Option<AtomicFile>,
    step_summary: Option<PathBuf>,
}

/// The checked `--report` path.
struct ReportTarget {
    flag: &'static str,
    path: PathBuf,
    /// The path names an existing regular file.
    exists: bool,
    /// The existing file, opened for writing without truncating it (a regular file, so the
    /// open cannot block) once every check passed: the file truncated later is the very
    /// file that was checked.
    existing: Option<File>,
}

/// The open output files of a run. Owned by the sink, which sees every answer once its
/// store result is known.
pub struct OutputFiles {
    report: Option<JsonlReport>,
    junit: Option<JunitReport>,
    metrics: Option<MetricsFile>,
    step_summary: Option<StepSummary>,
    /// Outputs disabled by a failure during the run.
    failed: usize,
}

impl OutputFiles {
    /// Checks every output path, creating or truncating nothing (see the module docs).
    /// `store` is the store's file, for file-based stores. The `--junit` and
    /// `--metrics-file` directories are probed with a temporary file, removed at once.
    pub fn check(cfg: &OutputConfig, store: Option<&Path>) -> Result<OutputPlan> {
        let metrics = match &cfg.metrics {
            Some(p) => Some(AtomicFile::check("--metrics-file", p)?),
            None => None,
        };
        let junit = match &cfg.junit {
            Some(p) => Some(AtomicFile::check("--junit", p)?),
            None => None,
        };
        let report = match &cfg.report {
            Some(p) => Some(ReportTarget::check("--report", p)?),
            None => None,
        };
        distinct(cfg, store)?;
        // Only now, with every path found fine, is an existing report opened (not
        // truncated): a report that is the store under another name is never opened.
        let report = match report {
            Some(r) => Some(r.open_existing()?),
            None => None,
        };
        // The step summary's path is only checked against the store and the other outputs
        // (above): it usually comes from the CI environment, not the user, so a path that
        // cannot take it is a failed output at the end (exit ≥ 1), never a refused run.
        Ok(OutputPlan {
            report,
            junit,
            metrics,
            step_summary: cfg.step_summary.clone(),
        })
    }

    /// Records one answer, once its store result is known: a line of the report now, a
    /// testcase and a histogram observation for the end. An output that fails is disabled
    /// (one error line); the others, and the store, go on.
    pub fn record(&mut self, v: &Verdict, stored: Stored) {
        if let Some(r) = &mut self.report
            && let Err(e) = r.record(v, stored)
        {
            self.disable_report(&e);
        }
        if let Some(j) = &mut self.junit {
            j.record(v);
        }
        if let Some(m) = &mut self.metrics {
            m.record(v);
        }
        if let Some(st) = &mut self.step_summary {
            st.record(v);
        }
    }

    /// Writes out the report's buffer (after each batch), so a reader follows the run and
    /// a full disk is noticed early.
    pub fn flush(&mut self) {
        if let Some(r) = &mut self.report
            && let Err(e) = r.flush()
        {
            self.disable_report(&e);
        }
    }

    /// Outputs disabled by a failure so far.
    pub fn failed(&self) -> usize {
        self.failed
    }

    fn disable_report(&mut self, e: &anyhow::Error) {
        if let Some(r) = self.report.take() {
            r.abandon();
        }
        self.failed += 1;
        tracing::error!(
            "{e:#}; --report is disabled for the rest of the run (the store still gets every answer)"
        );
    }

    /// Completes the files once the summary is final. Every file is attempted; each
    /// failure is one error line. Returns how many outputs failed during the whole run
    /// (those disabled earlier included): the run then exits with at least 1.
    pub fn finish(self, summary: &Summary) -> usize {
        let results = [
            self.report.map(JsonlReport::finish),
            self.junit.map(|j| j.finish(summary)),
            self.metrics.map(|m| m.finish(summary, SystemTime::now())),
            self.step_summary.map(|st| st.finish(summary)),
        ];
        let mut failed = self.failed;
        for e in results.into_iter().flatten().filter_map(Result::err) {
            tracing::error!("{e:#}");
            failed += 1;
        }
        failed
    }
}

impl OutputPlan {
    /// Creates (or truncates) the `--report` file, once the store was opened and validated.
    pub fn open(self, task: &str) -> Result<OutputFiles> {
        let started = SystemTime::now();
        let report = match self.report {
            Some(t) => Some(t.open(task)?),
            None => None,
        };
        Ok(OutputFiles {
            report,
            junit: self.junit.map(|f| JunitReport::new(f, task, started)),
            metrics: self.metrics.map(|f| MetricsFile::new(f, task)),
            step_summary: self.step_summary.as_deref().map(StepSummary::new),
            failed: 0,
        })
    }
}

impl ReportTarget {
    /// Checks that `path` can be the report, creating and truncating nothing.
    fn check(flag: &'static str, path: &Path) -> Result<ReportTarget> {
        refuse_dash(flag, path)?;
        let shown = path.display();
        let meta = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => Some(fs::metadata(path).map_err(|e| {
                anyhow!("{flag} {shown}: cannot follow the symlink (its target is missing?): {e}")
            })?),
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => bail!("{flag} {shown}: {e}"),
        };
        match &meta {
            Some(m) => refuse_non_regular(flag, path, m)?,
            None => check_dir_takes_files(flag, path, parent_dir(path))?,
        }
        Ok(ReportTarget {
            flag,
            path: path.to_path_buf(),
            exists: meta.is_some(),
            existing: None,
        })
    }

    /// Opens an existing report for writing, without truncating it: proves it may be
    /// written before the store is opened. A regular file (checked), so this cannot block.
    fn open_existing(mut self) -> Result<ReportTarget> {
        if self.exists {
            let file = OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(|e| {
                    anyhow!(
                        "{} {}: cannot open for writing: {e}",
                        self.flag,
                        self.path.display()
                    )
                })?;
            let meta = file
                .metadata()
                .with_context(|| format!("{} {}", self.flag, self.path.display()))?;
            refuse_non_regular(self.flag, &self.path, &meta)?;
            self.existing = Some(file);
        }
        Ok(self)
    }

    fn open(self, task: &str) -> Result<JsonlReport> {
        let (flag, shown) = (self.flag, self.path.display());
        let file = match self.existing {
            Some(f) => {
                f.set_len(0)
                    .with_context(|| format!("{flag} {shown}: cannot truncate"))?;
                f
            }
            // `create_new` never opens what appeared meanwhile (a FIFO would block).
            None => OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.path)
                .with_context(|| format!("{flag} {shown}: cannot create"))?,
        };
        Ok(JsonlReport::new(flag, &self.path, file, task))
    }
}

/// An existing output path that is not a regular file is refused, from its metadata alone.
fn refuse_non_regular(flag: &str, path: &Path, m: &fs::Metadata) -> Result<()> {
    let shown = path.display();
    if m.is_dir() {
        bail!("{flag} {shown}: is a directory");
    }
    if m.is_file() {
        return Ok(());
    }
    #[cfg(unix)]
    let kind = {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_fifo() {
            "a named pipe (FIFO)"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        }
    };
    #[cfg(not(unix))]
    let kind = "not a regular file";
    bail!("{flag} {shown}: is {kind}; give a regular file")
}

/// The directory of a file to be created exists and takes a new file (a temporary one is
/// created and removed).
fn check_dir_takes_files(flag: &str, path: &Path, dir: &Path) -> Result<()> {
    let shown = path.display();
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{flag} {shown}: {} is not a directory", dir.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{flag} {shown}: directory {} does not exist", dir.display())
        }
        Err(e) => bail!("{flag} {shown}: {}: {e}", dir.display()),
    }
    // Dropped at once: it only proves the directory takes a new file.
    tempfile::Builder::new()
        .prefix(".recheck-probe.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| {
            anyhow!(
                "{flag} {shown}: cannot create a file in {}: {}",
                dir.display(),
                plain(&e)
            )
        })?;
    Ok(())
}

/// Which file a path names: device and inode when it exists (links and other spellings
/// lead to the same pair), else the canonical directory plus the name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileId {
    Inode(u64, u64),
    Path(PathBuf),
}

fn file_id(path: &Path) -> FileId {
    #[cfg(unix)]
    if let Ok(m) = fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        return FileId::Inode(m.dev(), m.ino());
    }
    if let Ok(p) = fs::canonicalize(path) {
        return FileId::Path(p);
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => FileId::Path(
            fs::canonicalize(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .join(name),
        ),
        _ => FileId::Path(abs),
    }
}

/// The side files SQLite and the file stores' lock keep next to the store's file.
const STORE_SIDE_FILES: [&str; 4] = ["-wal", "-shm", "-journal", ".lock"];

/// No two flags, and no flag and the store, may name one file: they would overwrite each
/// other (a report truncating the store through a hard link).
fn distinct(cfg: &OutputConfig, store: Option<&Path>) -> Result<()> {
    let named: Vec<(&str, &Path, FileId)> = [
        ("--report", &cfg.report),
        ("--junit", &cfg.junit),
        ("--metrics-file", &cfg.metrics),
        ("--step-summary", &cfg.step_summary),
    ]
    .into_iter()
    .filter_map(|(flag, p)| {
        let p = p.as_deref()?;
        Some((flag, p, file_id(p)))
    })
    .collect();
    for (i, (a, pa, ia)) in named.iter().enumerate() {
        for (b, pb, ib) in &named[i + 1..] {
            if ia == ib {
                bail!(
                    "{a} and {b} name the same file ({} and {})",
                    pa.display(),
                    pb.display()
                );
            }
        }
    }
    let Some(store) = store else {
        return Ok(());
    };
    let mut store_files = vec![(store.to_path_buf(), file_id(store))];
    for suffix in STORE_SIDE_FILES {
        let mut side = store.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        let id = file_id(&side);
        store_files.push((side, id));
    }
    for (flag, p, id) in &named {
        if let Some((sp, _)) = store_files.iter().find(|(_, sid)| sid == id) {
            bail!(
                "{flag} and --store name the same file ({} and {}): the output would overwrite the store",
                p.display(),
                sp.display()
            );
        }
    }
    Ok(())
}

/// `-` would mean stdout, which carries the summary.
pub(crate) fn refuse_dash(flag: &str, path: &Path) -> Result<()> {
    if path.as_os_str() == "-" {
        bail!("{flag} -: stdout carries the summary; give a file name (./- for a file named -)");
    }
    Ok(())
}

/// The directory a file is created in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// An I/O error without the temporary file's name that `tempfile` adds to it.
fn plain(e: &io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.source())
        .map_or_else(|| e.to_string(), ToString::to_string)
}

/// A file replaced as a whole: written to a temporary file in the same directory, fsynced,
/// renamed over the destination, and the directory fsynced. A reader (node_exporter's
/// textfile collector, a CI uploader) sees the old file or the new one, never half of one.
/// The temporary file is `.NAME.XXXXXX.tmp`, which the textfile collector (`*.prom`) skips.
#[derive(Debug, Clone)]
pub(crate) struct AtomicFile {
    flag: &'static str,
    /// As the user wrote it, for messages.
    shown: PathBuf,
    /// Where the file is renamed to: a symlink's target, so the link survives.
    target: PathBuf,
}

impl AtomicFile {
    /// Checks that `path` can be replaced: not `-`, not a directory or another non-regular
    /// file, and its directory exists and takes a new file (one is created and removed).
    pub(crate) fn check(flag: &'static str, path: &Path) -> Result<AtomicFile> {
        refuse_dash(flag, path)?;
        let shown = path.display();
        let target = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path)
                .map_err(|e| anyhow!("{flag} {shown}: cannot follow the symlink: {e}"))?,
            _ => path.to_path_buf(),
        };
        match fs::metadata(&target) {
            Ok(m) if m.is_dir() => bail!("{flag} {shown}: is a directory"),
            Ok(m) if !m.is_file() => bail!(
                "{flag} {shown}: not a regular file (it is replaced by renaming a new file over it)"
            ),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bail!("{flag} {shown}: {e}"),
        }
        let dir = parent_dir(&target).to_path_buf();
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("{flag} {shown}: {} is not a directory", dir.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("{flag} {shown}: directory {} does not exist", dir.display())
            }
            Err(e) => bail!("{flag} {shown}: {}: {e}", dir.display()),
        }
        let file = AtomicFile {
            flag,
            shown: path.to_path_buf(),
            target,
        };
        // Dropped at once: it only proves the directory takes a new file.
        file.temp().map_err(|e| {
            anyhow!(
                "{flag} {shown}: cannot create a file in {}: {}",
                dir.display(),
                plain(&e)
            )
        })?;
        Ok(file)
    }

    fn temp(&self) -> io::Result<tempfile::NamedTempFile> {
        let name = self
            .target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix).suffix(".tmp");
        // Like File::create (0666 less the umask), not tempfile's 0600: the textfile
        // collector usually runs as another user.
        #[cfg(unix)]
        b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        b.tempfile_in(parent_dir(&self.target))
    }

    /// Replaces the file with what `fill` writes.
    pub(crate) fn write(&self, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
        let what = || format!("{} {}: cannot write", self.flag, self.shown.display());
        let tmp = self
            .temp()
            .map_err(|e| anyhow!("{}: {}", what(), plain(&e)))?;
        // An existing file keeps its permissions.
        if let Ok(meta) = fs::metadata(&self.target) {
            tmp.as_file()
                .set_permissions(meta.permissions())
                .with_context(what)?;
        }
        {
            let mut w = BufWriter::new(tmp.as_file());
            fill(&mut w).with_context(what)?;
            w.flush().with_context(what)?;
        }
        tmp.as_file().sync_all().with_context(what)?;
        tmp.persist(&self.target)
            .map_err(|e| anyhow!("{}: {}", what(), e.error))?;
        if let Ok(d) = File::open(parent_dir(&self.target)) {
            // Not possible everywhere (Windows); the rename itself is atomic anyway.
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dash_is_refused() {
        let e = AtomicFile::check("--junit", Path::new("-")).unwrap_err();
        assert!(e.to_string().starts_with("--junit -: stdout"), "{e}");
    }

    #[test]
    fn same_file_twice_is_refused() {
        let cfg = OutputConfig {
            report: Some("out/x".into()),
            junit: None,
            metrics: Some("out/./x".into()),
            step_summary: None,
        };
        let e = distinct(&cfg, None).unwrap_err().to_string();
        assert!(e.contains("--report and --metrics-file"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn links_and_side_files_are_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        fs::write(&db, "store").unwrap();
        let hard = dir.path().join("hard.jsonl");
        fs::hard_link(&db, &hard).unwrap();
        let report = dir.path().join("r.jsonl");
        fs::write(&report, "r").unwrap();
        let link = dir.path().join("j.xml");
        std::os::unix::fs::symlink(&report, &link).unwrap();
        let cfg = |report: Option<&Path>, junit: Option<&Path>| OutputConfig {
            report: report.map(Path::to_path_buf),
            junit: junit.map(Path::to_path_buf),
            metrics: None,
            step_summary: None,
        };
        let e = distinct(&cfg(Some(&hard), None), Some(&db)).unwrap_err();
        assert!(e.to_string().contains("--report and --store"), "{e}");
        let e = distinct(&cfg(Some(&report), Some(&link)), None).unwrap_err();
        assert!(e.to_string().contains("--report and --junit"), "{e}");
        let wal = dir.path().join("s.db-wal");
        let e = distinct(&cfg(None, Some(&wal)), Some(&db)).unwrap_err();
        assert!(e.to_string().contains("--junit and --store"), "{e}");
        // Files that do not exist yet compare by canonical directory and name.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let a = sub.join("new.jsonl");
        let b = dir.path().join("sub/../sub/./new.jsonl");
        let e = distinct(&cfg(Some(&a), Some(&b)), None).unwrap_err();
        assert!(e.to_string().contains("name the same file"), "{e}");
        distinct(&cfg(Some(&a), Some(&report)), Some(&db)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn report_check_creates_nothing_and_refuses_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = ReportTarget::check("--report", &fifo).err().unwrap();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let cfg = OutputConfig {
            report: Some(dir.path().join("r.jsonl")),
            ..OutputConfig::default()
        };
        let plan = OutputFiles::check(&cfg, None).unwrap();
        assert!(!dir.path().join("r.jsonl").exists(), "checked, not created");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "probe left");
        let mut out = plan.open("t").unwrap();
        assert!(dir.path().join("r.jsonl").exists());
        out.flush();
        assert_eq!(out.finish(&Summary::new("t", "x", false)), 0);
    }

    #[test]
    fn atomic_checks() {
        let dir = tempfile::tempdir().unwrap();
        let e = AtomicFile::check("--junit", dir.path()).unwrap_err();
        assert!(e.to_string().ends_with("is a directory"), "{e}");
        let missing = dir.path().join("nope/j.xml");
        let e = AtomicFile::check("--junit", &missing).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let ok = dir.path().join("j.xml");
        let f = AtomicFile::check("--junit", &ok).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "probe left");
        f.write(|w| Ok(w.write_all(b"one")?)).unwrap();
        f.write(|w| Ok(w.write_all(b"two")?)).unwrap();
        assert_eq!(fs::read(&ok).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temp left");
        // A failing writer leaves the old file as it was, and no temp file.
        assert!(f.write(|_| bail!("boom")).is_err());
        assert_eq!(fs::read(&ok).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_survives_and_mode_is_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.prom");
        fs::write(&real, "old").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.prom");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let f = AtomicFile::check("--metrics-file", &link).unwrap();
        f.write(|w| Ok(w.write_all(b"new")?)).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"new");
        let mode = fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
