//! A store's sidecar lock file (`<file>.lock`, holding the holder's pid): one writer per
//! file store, and per SQLite table without lease columns. Knows nothing of stores' contents.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

/// An exclusive lock on `<file>.lock`, holding our pid; removed and released on drop.
pub struct LockFile {
    path: PathBuf,
    _file: File,
}

impl LockFile {
    /// Takes the lock next to `target`, or fails at once naming the holder's pid. `label`
    /// names the store in messages.
    pub fn acquire(target: &Path, label: &str) -> Result<LockFile> {
        let mut path = target.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        for _ in 0..5 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| anyhow!("{label}: cannot create lock file {}: {e}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let pid = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok())
                        .map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"));
                    bail!("{label} is locked by another recheck run ({pid})");
                }
                Err(fs::TryLockError::Error(e)) => {
                    bail!("{label}: cannot lock {}: {e}", path.display())
                }
            }
            // The holder may have removed the file between our open and our lock: then we
            // hold a lock nobody else can see; start over on the new file.
            if !same_file(&file, &path) {
                continue;
            }
            let write_pid = |mut f: &File| -> io::Result<()> {
                f.set_len(0)?;
                writeln!(f, "{}", std::process::id())?;
                f.flush()
            };
            write_pid(&file)
                .map_err(|e| anyhow!("{label}: cannot write lock file {}: {e}", path.display()))?;
            return Ok(LockFile { path, _file: file });
        }
        bail!(
            "{label}: cannot lock {}: it keeps being replaced",
            path.display()
        )
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Best effort; the lock itself goes with the file handle, right after.
        let _ = fs::remove_file(&self.path);
    }
}
