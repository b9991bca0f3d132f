//! The run's files: `--report` (JSON Lines, one object per item), `--junit` (JUnit XML)
//! and `--metrics-file` (Prometheus text format, replaced atomically).
//!
//! Every path is checked by [`OutputFiles::open`], before the store is opened, so a bad
//! path is a one-line start-up error naming the flag (exit 2) and never a surprise after
//! the store was written. `-` is refused: stdout carries the summary.
//!
//! | flag | written | memory |
//! | --- | --- | --- |
//! | `--report` | created (truncated) at open, one line per verdict as it arrives, flushed at the end | O(1) |
//! | `--junit` | at the end, atomically (temp file in the same directory, fsync, rename) | O(items) |
//! | `--metrics-file` | at the end, atomically | O(1) |
//!
//! An interrupted or deadline-stopped run still writes all three, with what was checked.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};

use crate::model::Verdict;
use crate::report::Summary;
use crate::report::jsonl::JsonlReport;
use crate::report::junit::JunitReport;
use crate::report::metrics::MetricsFile;

/// Which files to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputConfig {
    /// `--report FILE`.
    pub report: Option<PathBuf>,
    /// `--junit FILE`.
    pub junit: Option<PathBuf>,
    /// `--metrics-file FILE`.
    pub metrics: Option<PathBuf>,
}

/// The open output files of a run. Owned by the sink, which sees every verdict.
pub struct OutputFiles {
    report: Option<JsonlReport>,
    junit: Option<JunitReport>,
    metrics: Option<MetricsFile>,
}

impl OutputFiles {
    /// Opens (creates) the files, before anything else happens, so a bad path is a start-up
    /// error (exit 2). The `--junit` and `--metrics-file` destinations are only checked
    /// (a temporary file is created in their directory and removed): they are written at
    /// [`finish`](Self::finish). The `--report` file is created, or truncated, last, so a
    /// refused run leaves an earlier report alone unless its own path was fine.
    pub fn open(cfg: &OutputConfig, task: &str) -> Result<OutputFiles> {
        distinct(cfg)?;
        let started = SystemTime::now();
        let metrics = match &cfg.metrics {
            Some(p) => Some(MetricsFile::new(
                AtomicFile::check("--metrics-file", p)?,
                task,
            )),
            None => None,
        };
        let junit = match &cfg.junit {
            Some(p) => Some(JunitReport::new(
                AtomicFile::check("--junit", p)?,
                task,
                started,
            )),
            None => None,
        };
        let report = match &cfg.report {
            Some(p) => Some(JsonlReport::create("--report", p, task)?),
            None => None,
        };
        Ok(OutputFiles {
            report,
            junit,
            metrics,
        })
    }

    /// Records one verdict: a line of the report now, a testcase and a histogram
    /// observation for the end.
    pub fn record(&mut self, v: &Verdict) -> Result<()> {
        if let Some(r) = &mut self.report {
            r.record(v)?;
        }
        if let Some(j) = &mut self.junit {
            j.record(v);
        }
        if let Some(m) = &mut self.metrics {
            m.record(v);
        }
        Ok(())
    }

    /// Completes the files once the summary is final. Every file is attempted; the first
    /// error is returned.
    pub fn finish(self, summary: &Summary) -> Result<()> {
        let results = [
            self.report.map(JsonlReport::finish),
            self.junit.map(|j| j.finish(summary)),
            self.metrics.map(|m| m.finish(summary, SystemTime::now())),
        ];
        results.into_iter().flatten().collect::<Result<Vec<()>>>()?;
        Ok(())
    }
}

/// Two flags naming one file would overwrite each other.
fn distinct(cfg: &OutputConfig) -> Result<()> {
    let named: Vec<(&str, PathBuf)> = [
        ("--report", &cfg.report),
        ("--junit", &cfg.junit),
        ("--metrics-file", &cfg.metrics),
    ]
    .into_iter()
    .filter_map(|(flag, p)| {
        let p = p.as_deref()?;
        Some((
            flag,
            std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
        ))
    })
    .collect();
    for (i, (a, pa)) in named.iter().enumerate() {
        for (b, pb) in &named[i + 1..] {
            if pa == pb {
                bail!("{a} and {b} name the same file {}", pa.display());
            }
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
        };
        let e = distinct(&cfg).unwrap_err().to_string();
        assert!(e.contains("--report and --metrics-file"), "{e}");
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
