//! Process limits: enough file descriptors for `--concurrency` sockets. The seed script died
//! with "Too many open files"; recheck raises the soft limit toward the hard one at start, or
//! refuses to start with a message that says what to change.

use anyhow::{Result, bail};

/// Descriptors beyond the sockets: stdio, the store and its WAL/SHM/lock files, the runtime's
/// epoll and wakers, DNS, with room to spare.
const OTHER_FDS: u64 = 64;

/// Makes sure `concurrency` connections fit under RLIMIT_NOFILE, raising the soft limit when
/// needed. Fails (exit 2) when even the hard limit is too low.
pub fn ensure_open_files(concurrency: usize) -> Result<()> {
    let need = concurrency as u64 + OTHER_FDS;
    #[cfg(unix)]
    {
        use rlimit::Resource;
        let Ok((soft, hard)) = Resource::NOFILE.get() else {
            return Ok(()); // cannot tell: let the run try
        };
        if soft >= need {
            return Ok(());
        }
        if hard < need {
            bail!(
                "--concurrency {concurrency} needs about {need} open files, but the hard limit \
                 (RLIMIT_NOFILE) is {hard}: lower --concurrency or raise the limit (ulimit -Hn)"
            );
        }
        if let Err(e) = Resource::NOFILE.set(need, hard) {
            bail!(
                "--concurrency {concurrency} needs about {need} open files; the soft limit is \
                 {soft} and raising it failed ({e}): lower --concurrency or run `ulimit -n {need}`"
            );
        }
        tracing::debug!(from = soft, to = need, "raised the open-files limit");
    }
    Ok(())
}
