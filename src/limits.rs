//! Process limits: enough file descriptors for `--concurrency` sockets, and what is left for
//! idle keep-alive connections. The seed script died with "Too many open files"; recheck
//! raises the soft limit toward the hard one at start, or refuses to start with a message
//! that says what to change, and sizes the idle pool so the total stays inside the limit.

use anyhow::{Result, bail};

/// Descriptors beyond the sockets: stdio, the store and its WAL/SHM/lock files, the runtime's
/// epoll and wakers, DNS, with room to spare.
const OTHER_FDS: u64 = 64;

/// Hosts whose idle connections the soft limit is raised for, when the hard limit allows:
/// runs over a few hosts then keep full connection reuse on each.
const IDLE_HOSTS_WANTED: u64 = 8;

/// How many idle keep-alive connections the open-files budget leaves room for: at most
/// `idle_per_host` to each of `pooled_hosts` hosts (see `check::client::Clients`, which
/// enforces the product, since reqwest itself only bounds idle connections per host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// Most idle connections kept to one host (0: no keep-alive).
    pub idle_per_host: usize,
    /// Most hosts whose idle connections are kept at once.
    pub pooled_hosts: usize,
}

impl FdBudget {
    /// Splits `spare` descriptors (the limit less busy sockets and [`OTHER_FDS`]) between
    /// idle connections: a host may keep as many idle as it can have busy (`per_host`), so
    /// a one-host run reuses every connection; the hosts that fit share the rest.
    fn split(spare: u64, per_host: u64) -> FdBudget {
        let idle_per_host = per_host.min(spare);
        let pooled_hosts = spare
            .checked_div(idle_per_host)
            .map_or(1, |n| n.clamp(1, IDLE_HOSTS_WANTED));
        FdBudget {
            idle_per_host: idle_per_host as usize,
            pooled_hosts: pooled_hosts as usize,
        }
    }
}

/// Makes sure `concurrency` connections fit under RLIMIT_NOFILE, raising the soft limit when
/// needed (and, when the hard limit allows, further, for idle connections to a few hosts).
/// Fails (exit 2) when even the hard limit is too low for the busy sockets. Returns the idle
/// budget: busy sockets (≤ `concurrency`) + idle ones + 64 others stay within the limit.
pub fn ensure_open_files(concurrency: usize, per_host: Option<usize>) -> Result<FdBudget> {
    let busy = concurrency as u64;
    let per_host = per_host.map_or(busy, |p| (p as u64).min(busy));
    let need = busy + OTHER_FDS;
    let want = need + IDLE_HOSTS_WANTED * per_host;
    #[cfg(unix)]
    {
        use rlimit::Resource;
        let Ok((soft, hard)) = Resource::NOFILE.get() else {
            // Cannot tell: let the run try, with the idle pool of one host.
            return Ok(FdBudget::split(per_host, per_host));
        };
        if soft >= want {
            return Ok(FdBudget::split(soft - need, per_host));
        }
        if hard < need {
            bail!(
                "--concurrency {concurrency} needs about {need} open files, but the hard limit \
                 (RLIMIT_NOFILE) is {hard}: lower --concurrency or raise the limit (ulimit -Hn)"
            );
        }
        let target = want.min(hard);
        match Resource::NOFILE.set(target, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = target, "raised the open-files limit");
                Ok(FdBudget::split(target - need, per_host))
            }
            Err(_) if soft >= need => Ok(FdBudget::split(soft - need, per_host)),
            Err(e) => bail!(
                "--concurrency {concurrency} needs about {need} open files; the soft limit is \
                 {soft} and raising it failed ({e}): lower --concurrency or run `ulimit -n {need}`"
            ),
        }
        .inspect(|b| {
            if b.idle_per_host < per_host as usize {
                tracing::debug!(
                    idle_per_host = b.idle_per_host,
                    pooled_hosts = b.pooled_hosts,
                    "the open-files limit bounds the idle connections kept"
                );
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(FdBudget::split(want - need, per_host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_budget_never_exceeds_the_spare_descriptors() {
        for spare in [0u64, 1, 7, 32, 100, 1000, 100_000] {
            for per_host in [1u64, 10, 60, 100, 1000] {
                let b = FdBudget::split(spare, per_host);
                assert!(
                    (b.idle_per_host * b.pooled_hosts) as u64 <= spare,
                    "{spare} {per_host}: {b:?}"
                );
                assert!(b.pooled_hosts >= 1);
                assert!(b.idle_per_host as u64 <= per_host);
            }
        }
        // one host keeps every connection when there is room for it
        assert_eq!(
            FdBudget::split(800, 100),
            FdBudget {
                idle_per_host: 100,
                pooled_hosts: 8
            }
        );
        // no room at all: no keep-alive rather than "Too many open files"
        assert_eq!(FdBudget::split(0, 60).idle_per_host, 0);
    }
}
