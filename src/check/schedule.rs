//! Stage "check", across runs: after an item is judged, decides when it is due again
//! (`--recheck-backoff`) and whether to give up on it (`--give-up-after`,
//! `--give-up-age`), from what the store remembers of it (`checks`, `first_checked_at`).
//! Pure: no I/O, the clock is the verdict's `checked_at`.

use std::time::{Duration, SystemTime};

use crate::model::{Outcome, Verdict};

/// Jitter of `--recheck-backoff`: ±10 %, so items that failed together do not all come due
/// in the same second.
const JITTER: f64 = 0.10;

/// The schedule of a run (docs/reference.md §3.4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// `--recheck-backoff MIN..MAX`.
    pub backoff: Option<(Duration, Duration)>,
    /// `--give-up-after N`: an item still not OK after N checks becomes `dead`.
    pub give_up_after: Option<u32>,
    /// `--give-up-age DUR`: an item still not OK DUR after its first check becomes `dead`.
    pub give_up_age: Option<Duration>,
    /// A 404/410 writes `--not-found-status`: such an item leaves the failed ones, so it
    /// is settled, not rescheduled.
    pub not_found_settles: bool,
}

impl Schedule {
    /// The store columns the flags need, with the flag that needs each.
    pub fn columns(&self) -> Vec<(&'static str, &'static str)> {
        let mut cols = Vec::new();
        if self.backoff.is_some() {
            cols.push(("checks", "--recheck-backoff"));
            cols.push(("next_check_at", "--recheck-backoff"));
        }
        if self.give_up_after.is_some() {
            cols.push(("checks", "--give-up-after"));
        }
        if self.give_up_age.is_some() {
            cols.push(("first_checked_at", "--give-up-age"));
        }
        cols
    }

    /// Whether a give-up rule is set (they need a `--dead-status` to write).
    pub fn gives_up(&self) -> bool {
        self.give_up_after.is_some() || self.give_up_age.is_some()
    }

    /// Applies the schedule to the verdict of `item`: an item that stays failed may be
    /// given up on (outcome `dead`, the reason in front of its error), else gets its
    /// `next_check_at` (the later of the backoff and a `Retry-After` the fetch carried).
    /// A settled item (OK, dead, not found with a status to write) is due never again:
    /// `next_check_at` is cleared.
    /// `checks` and `first_checked_at` are the item's as claimed (before this check).
    pub fn apply(&self, checks: u32, first_checked_at: Option<SystemTime>, v: &mut Verdict) {
        self.apply_with(checks, first_checked_at, v, fastrand::f64());
    }

    /// [`Schedule::apply`] with the jitter's uniform draw in `[0, 1)` given (for tests).
    pub fn apply_with(
        &self,
        checks: u32,
        first_checked_at: Option<SystemTime>,
        v: &mut Verdict,
        draw: f64,
    ) {
        let settled = match v.outcome {
            Outcome::Ok | Outcome::Dead => true,
            Outcome::NotFound => self.not_found_settles,
            Outcome::StillFailed | Outcome::Error => false,
            // Not checked: its circuit decided when it is due; no check to count.
            Outcome::Deferred => return,
        };
        if settled {
            v.next_check_at = None;
            return;
        }
        // This check counts: the store adds it to `checks` with the verdict.
        let checks = checks.saturating_add(1);
        let first = first_checked_at.unwrap_or(v.checked_at);
        let why = v.error.as_deref().unwrap_or(v.outcome.as_str());
        if let Some(n) = self.give_up_after
            && checks >= n
        {
            v.error = Some(format!(
                "gave up after {checks} check{}: {why}",
                if checks == 1 { "" } else { "s" }
            ));
            v.outcome = Outcome::Dead;
            v.next_check_at = None;
            return;
        }
        if let Some(age) = self.give_up_age {
            let since = v.checked_at.duration_since(first).unwrap_or_default();
            if since >= age {
                v.error = Some(format!(
                    "gave up {} after the first check ({}), {checks} checks: {why}",
                    humantime::format_duration(round_secs(since)),
                    crate::model::rfc3339(first)
                ));
                v.outcome = Outcome::Dead;
                v.next_check_at = None;
                return;
            }
        }
        if let Some((min, max)) = self.backoff {
            let next = v.checked_at + delay(min, max, checks, draw);
            v.next_check_at = Some(v.next_check_at.map_or(next, |carried| carried.max(next)));
        }
    }
}

/// The wait after the `checks`th not-OK check: MIN·2^(checks−1), at most MAX, ±10 %
/// jitter (`draw` uniform in `[0, 1)`), never above MAX.
pub fn delay(min: Duration, max: Duration, checks: u32, draw: f64) -> Duration {
    // In seconds as f64: 2^(checks−1) overflows no integer type this way, and the result
    // is capped at MAX anyway.
    let doublings = checks.saturating_sub(1).min(1023) as i32;
    let base = (min.as_secs_f64() * 2f64.powi(doublings)).min(max.as_secs_f64());
    let factor = 1.0 - JITTER + 2.0 * JITTER * draw.clamp(0.0, 1.0);
    Duration::from_secs_f64(base * factor).min(max)
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(600);
    const MAX: Duration = Duration::from_secs(6 * 3600);

    fn verdict(outcome: Outcome, at: SystemTime) -> Verdict {
        Verdict {
            key: 1,
            id: "a".into(),
            outcome,
            http_status: Some(200),
            attempts: 1,
            error: Some("/state is \"processing\", expected done".into()),
            checked_at: at,
            elapsed: Duration::ZERO,
            url: None,
            next_check_at: None,
            host_limit: None,
        }
    }

    #[test]
    fn delay_doubles_from_min_up_to_max_with_jitter() {
        assert_eq!(delay(MIN, MAX, 1, 0.5), MIN);
        assert_eq!(delay(MIN, MAX, 2, 0.5), MIN * 2);
        assert_eq!(delay(MIN, MAX, 5, 0.5), MIN * 16);
        assert_eq!(delay(MIN, MAX, 6, 0.5), MIN * 32, "10m·32 = 320m");
        assert_eq!(delay(MIN, MAX, 7, 0.5), MAX, "10m·64 = 640m, capped at 6h");
        assert_eq!(delay(MIN, MAX, 1000, 0.5), MAX);
        assert_eq!(delay(MIN, MAX, u32::MAX, 0.5), MAX);
        assert_eq!(delay(MIN, MAX, 1, 0.0), MIN.mul_f64(0.9));
        assert!(delay(MIN, MAX, 1, 0.999_999) <= MIN.mul_f64(1.1));
        assert!(delay(MIN, MAX, 1, 0.999_999) > MIN.mul_f64(1.099));
        assert_eq!(delay(MIN, MAX, 30, 0.999), MAX, "never above MAX");
    }

    #[test]
    fn not_ok_gets_next_check_at_and_settled_clears_it() {
        let s = Schedule {
            backoff: Some((MIN, MAX)),
            ..Schedule::default()
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut v = verdict(Outcome::StillFailed, now);
        s.apply_with(2, Some(now), &mut v, 0.5);
        assert_eq!(v.next_check_at, Some(now + MIN * 4), "third check: MIN·2²");
        for outcome in [Outcome::Ok, Outcome::Dead] {
            let mut v = verdict(outcome, now);
            v.next_check_at = Some(now);
            s.apply_with(2, None, &mut v, 0.5);
            assert_eq!(v.next_check_at, None, "{outcome}");
        }
        // A 404 that keeps the failed status is rescheduled like any other failure.
        let mut v = verdict(Outcome::NotFound, now);
        s.apply_with(0, None, &mut v, 0.5);
        assert_eq!(v.next_check_at, Some(now + MIN));
    }

    #[test]
    fn a_carried_retry_after_wins_when_it_is_later() {
        let s = Schedule {
            backoff: Some((MIN, MAX)),
            ..Schedule::default()
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut v = verdict(Outcome::Error, now);
        v.next_check_at = Some(now + Duration::from_secs(3600));
        s.apply_with(0, None, &mut v, 0.5);
        assert_eq!(v.next_check_at, Some(now + Duration::from_secs(3600)));
        // Without --recheck-backoff the carried time stays.
        let mut v = verdict(Outcome::Error, now);
        v.next_check_at = Some(now + Duration::from_secs(3600));
        Schedule::default().apply_with(0, None, &mut v, 0.5);
        assert_eq!(v.next_check_at, Some(now + Duration::from_secs(3600)));
    }

    #[test]
    fn gives_up_after_n_checks_or_an_age() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = Schedule {
            backoff: Some((MIN, MAX)),
            give_up_after: Some(3),
            ..Schedule::default()
        };
        let mut v = verdict(Outcome::StillFailed, now);
        s.apply_with(1, Some(now), &mut v, 0.5);
        assert_eq!(v.outcome, Outcome::StillFailed, "second check");
        let mut v = verdict(Outcome::StillFailed, now);
        s.apply_with(2, Some(now), &mut v, 0.5);
        assert_eq!(v.outcome, Outcome::Dead, "third check");
        assert_eq!(v.next_check_at, None);
        assert_eq!(
            v.error.as_deref(),
            Some("gave up after 3 checks: /state is \"processing\", expected done")
        );
        // OK on the last allowed check is OK.
        let mut v = verdict(Outcome::Ok, now);
        v.error = None;
        s.apply_with(2, Some(now), &mut v, 0.5);
        assert_eq!(v.outcome, Outcome::Ok);

        let week = Duration::from_secs(7 * 86_400);
        let s = Schedule {
            give_up_age: Some(week),
            ..Schedule::default()
        };
        let first = now - week - Duration::from_secs(5);
        let mut v = verdict(Outcome::Error, now);
        v.error = Some("HTTP 503".into());
        s.apply_with(40, Some(first), &mut v, 0.5);
        assert_eq!(v.outcome, Outcome::Dead);
        let e = v.error.unwrap();
        assert!(
            e.starts_with("gave up 7days 5s after the first check ("),
            "{e}"
        );
        assert!(e.ends_with("), 41 checks: HTTP 503"), "{e}");
        // Younger than the age: kept.
        let mut v = verdict(Outcome::Error, now);
        s.apply_with(40, Some(now - week / 2), &mut v, 0.5);
        assert_eq!(v.outcome, Outcome::Error);
        // The first check ever is age zero.
        let mut v = verdict(Outcome::Error, now);
        s.apply_with(0, None, &mut v, 0.5);
        assert_eq!(v.outcome, Outcome::Error);
    }

    /// The README's worked example, measured with the real schedule: a cron run every 10
    /// minutes with `--recheck-backoff 10m..6h --give-up-age 7d`, on an item that never
    /// recovers. Each run checks the item when its next_check_at has passed. Prints how
    /// many checks it gets before it is dead, over 1,000 items (different jitter).
    #[test]
    fn cron_worked_example() {
        let week = Duration::from_secs(7 * 86_400);
        let with_backoff = Schedule {
            backoff: Some((MIN, MAX)),
            give_up_age: Some(week),
            ..Schedule::default()
        };
        let without = Schedule {
            give_up_age: Some(week),
            ..Schedule::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts: Vec<u32> = (0..1000)
            .map(|_| checks_until_dead(&with_backoff, &mut rng))
            .collect();
        counts.sort_unstable();
        let (lo, median, hi) = (counts[0], counts[500], counts[999]);
        let plain = checks_until_dead(&without, &mut rng);
        println!(
            "cron every 10m, --recheck-backoff 10m..6h --give-up-age 7d: {lo}..{hi} checks \
             (median {median}) before dead; {plain} with --give-up-age 7d alone"
        );
        // 10m, 20m, 40m, 80m, 160m, 320m, then every 6h (±10 %, rounded up to the next
        // run) for the rest of the week, and the check at 7 days that gives up.
        assert!((30..=40).contains(&median), "{median}");
        assert!(hi - lo <= 6, "{lo}..{hi}");
        assert_eq!(
            plain,
            7 * 144 + 1,
            "every run of the week, and the one at 7 days"
        );
    }

    /// Checks an item that never recovers gets from a cron run every 10 minutes, until the
    /// schedule makes it dead.
    fn checks_until_dead(s: &Schedule, rng: &mut fastrand::Rng) -> u32 {
        let tick = Duration::from_secs(600);
        let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (mut checks, mut first, mut next) = (0u32, None, None::<SystemTime>);
        loop {
            if next.is_none_or(|t| t <= now) {
                let mut v = verdict(Outcome::StillFailed, now);
                s.apply_with(checks, first, &mut v, rng.f64());
                checks += 1;
                first.get_or_insert(now);
                if v.outcome == Outcome::Dead {
                    return checks;
                }
                next = v.next_check_at;
            }
            now += tick;
        }
    }
}
