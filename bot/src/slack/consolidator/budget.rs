//! This process's share of the workspace's `chat.update` budget, when several
//! processes share one database (and so one Slack workspace).
//!
//! Each of the N live processes (unexpired leases in `instances`, counted at
//! every lease renewal) takes `per_minute / N` of the budget, at least 1; on
//! SQLite there is one process and it keeps the whole budget. The share is
//! enforced twice: a governor quota ([`update_quota`] of the share) spreads the
//! calls out, and a log of the calls of the last [`BUDGET_WINDOW`] caps them at
//! the share in every window, the calls made under an earlier quota included
//! (a rebuilt governor forgets them).
//!
//! The rule that keeps the sum within the budget when N changes:
//!
//! - **More processes**: the smaller share applies at once. The calls of the
//!   last window still count against it, so the process waits until they
//!   fall below it.
//! - **Fewer processes**: the larger share applies only once a whole window
//!   has passed since the larger count was last seen (the calls the departed
//!   process made in that window still count at Slack). The share is thus
//!   `per_minute / (largest count seen in the last window)`.
//! - **A process that joins others** (or restarts beside them) takes its
//!   share at once. It cannot know what the others, or its own previous
//!   incarnation, spent in the last window, and they learn of it only at their
//!   next renewal: in the window after a join Slack may see up to one share
//!   more than the budget, and answers 429, which pauses `chat.update` here
//!   for its `Retry-After`. Holding a joining process back to the burst for a
//!   window would remove that excess, but would leave every message of a
//!   restarted process nearly frozen for a minute at each step of a rolling
//!   restart: a worse trade for the people watching them.
//! - **A process whose own lease expired** (it could not renew it) is counted
//!   by no one: it makes no call until it renews it.
//!
//! In any window, a process makes at most the share it had at its last call
//! in that window (the log), and each process's share in a window counts
//! every process alive in it, but for the joining one's lag. This assumes a renewal reaches the database within a
//! [`LEASE_RENEW`](crate::app::LEASE_RENEW) or two.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use governor::RateLimiter;
use tokio::time::Instant;

use super::{BUDGET_WINDOW, Budget, update_quota};
use crate::clock::TokioClock;

/// This process's part of the per-workspace `chat.update` budget.
pub(super) struct SharedBudget {
    /// `BATON_SLACK_UPDATES_PER_MINUTE`: the whole workspace's budget.
    per_minute: u32,
    /// The live processes counted, and when: the last window's counts.
    seen: VecDeque<(Instant, u32)>,
    /// The latest count of live processes (0: this process's lease expired).
    live: u32,
    /// The share the governor was built for.
    limit: u32,
    /// Spreads the calls out: [`update_quota`] of `limit`.
    limiter: Budget,
    /// Per workspace, the calls of the last [`BUDGET_WINDOW`].
    log: HashMap<String, VecDeque<Instant>>,
}

impl SharedBudget {
    /// The whole budget of `per_minute` calls, for one process.
    pub(super) fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        SharedBudget {
            per_minute,
            seen: VecDeque::new(),
            live: 1,
            limit: per_minute,
            limiter: RateLimiter::hashmap_with_clock(update_quota(per_minute), TokioClock),
            log: HashMap::new(),
        }
    }

    /// `live` processes are alive now (0: not even this one, whose lease expired).
    pub(super) fn set_live(&mut self, live: u32, now: Instant) {
        self.live = live;
        self.seen.push_back((now, live));
    }

    /// The most calls this process may make in any window from `now` on.
    pub(super) fn limit(&mut self, now: Instant) -> u32 {
        while self
            .seen
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= BUDGET_WINDOW)
        {
            self.seen.pop_front();
        }
        if self.live == 0 {
            return 0;
        }
        let most = self.seen.iter().map(|(_, n)| *n).fold(self.live, u32::max);
        (self.per_minute / most).max(1)
    }

    /// Takes one call for workspace `team` at `now`, or says when to ask again.
    pub(super) fn check(&mut self, team: &str, now: Instant) -> Result<(), Instant> {
        let limit = self.limit(now);
        if limit != self.limit && limit > 0 {
            self.limit = limit;
            self.limiter = RateLimiter::hashmap_with_clock(update_quota(limit), TokioClock);
        }
        let log = self.log.entry(team.to_owned()).or_default();
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= BUDGET_WINDOW)
        {
            log.pop_front();
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if log.len() >= limit {
            // When enough of the window's calls have left it; with no share
            // at all, at the next renewal's worth of waiting.
            let at = match log.len().checked_sub(limit).and_then(|i| log.get(i)) {
                Some(t) if limit > 0 => *t + BUDGET_WINDOW,
                _ => now + Duration::from_secs(1),
            };
            return Err(at);
        }
        if let Err(not_until) = self.limiter.check_key(&team.to_owned()) {
            return Err(now + not_until.wait_time_from(now.into_std()));
        }
        log.push_back(now);
        Ok(())
    }

    /// Forgets the workspaces whose calls all left the window.
    pub(super) fn prune(&mut self, now: Instant) {
        self.log.retain(|_, log| {
            log.back()
                .is_some_and(|t| now.duration_since(*t) < BUDGET_WINDOW)
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Takes every call the budget allows, every 25 ms, for `secs` seconds;
    /// returns when each was taken.
    async fn drain(budget: &mut SharedBudget, secs: u64) -> Vec<Instant> {
        let mut taken = Vec::new();
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            while budget.check("T1", Instant::now()).is_ok() {
                taken.push(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        taken
    }

    /// The most calls of `taken` in any window of [`BUDGET_WINDOW`].
    fn most_in_a_window(taken: &[Instant]) -> usize {
        (0..taken.len())
            .map(|i| {
                taken[i..]
                    .iter()
                    .take_while(|t| **t - taken[i] < BUDGET_WINDOW)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The share follows the count of live processes: 1 → 2 → 3 at once
    /// (the calls already made count against the smaller share), 3 → 1 only
    /// a window after three were last seen.
    #[tokio::test(start_paused = true)]
    async fn the_share_follows_one_two_three_then_one_process() {
        let mut budget = SharedBudget::new(60);
        let t0 = Instant::now();
        assert_eq!(budget.limit(t0), 60);
        budget.set_live(1, t0);
        assert_eq!(budget.limit(t0), 60);

        // One process spends its whole budget.
        let one = drain(&mut budget, 60).await;
        assert!(one.len() >= 55, "{}", one.len());
        assert!(most_in_a_window(&one) <= 60);

        // A second process: half the budget, at once.
        let t1 = Instant::now();
        budget.set_live(2, t1);
        assert_eq!(budget.limit(t1), 30);
        // What was spent in the last window counts: no call while 30 or more
        // of them are still in it.
        let in_window = one.iter().filter(|t| t1 - **t < BUDGET_WINDOW).count();
        assert!(in_window > 30, "{in_window}");
        assert!(budget.check("T1", t1).is_err());
        let two = drain(&mut budget, 60).await;
        let all: Vec<Instant> = one.iter().chain(&two).copied().collect();
        let after: Vec<Instant> = all.iter().filter(|t| **t >= t1).copied().collect();
        // Every window that starts once the second process is counted holds
        // at most the half.
        for (i, first) in after.iter().enumerate() {
            let n = after[i..]
                .iter()
                .take_while(|t| **t - *first < BUDGET_WINDOW)
                .count();
            assert!(n <= 30, "{n} calls in a window with a share of 30");
        }

        // A third: a third of the budget.
        let t2 = Instant::now();
        budget.set_live(3, t2);
        assert_eq!(budget.limit(t2), 20);
        let three = drain(&mut budget, 120).await;
        let since = |from: Instant| -> Vec<Instant> {
            three.iter().filter(|t| **t >= from).copied().collect()
        };
        assert!(most_in_a_window(&since(t2 + BUDGET_WINDOW)) <= 20);
        assert!(since(t2 + BUDGET_WINDOW).len() >= 17);

        // Back to one: the share stays a third for a window after three were
        // last seen, then grows to the whole budget.
        let t3 = Instant::now();
        budget.set_live(3, t3);
        budget.set_live(1, t3 + Duration::from_secs(2));
        tokio::time::sleep_until(t3 + Duration::from_secs(2)).await;
        assert_eq!(budget.limit(Instant::now()), 20);
        let back = drain(&mut budget, 120).await;
        let late: Vec<Instant> = back
            .iter()
            .filter(|t| **t >= t3 + BUDGET_WINDOW)
            .copied()
            .collect();
        assert!(late.len() >= 50, "the whole budget again: {}", late.len());
        assert!(most_in_a_window(&back) <= 60);
        let early = back.iter().filter(|t| **t < t3 + BUDGET_WINDOW).count();
        assert!(early <= 20, "{early} calls while three may still be alive");
        assert_eq!(budget.limit(Instant::now()), 60);
    }

    /// A process that joins others takes its share at once; one whose lease
    /// expired makes none until it renews it.
    #[tokio::test(start_paused = true)]
    async fn a_joining_process_takes_its_share_and_an_expired_one_stops() {
        let mut budget = SharedBudget::new(50);
        let t0 = Instant::now();
        budget.set_live(2, t0);
        assert_eq!(budget.limit(t0), 25);
        let joined = drain(&mut budget, 60).await;
        assert!(
            most_in_a_window(&joined) <= 25,
            "{} calls in the first window",
            joined.len()
        );
        assert!(!drain(&mut budget, 10).await.is_empty());

        budget.set_live(0, Instant::now());
        assert_eq!(budget.limit(Instant::now()), 0);
        assert!(drain(&mut budget, 5).await.is_empty());
        budget.set_live(2, Instant::now());
        assert!(!drain(&mut budget, 60).await.is_empty());
    }
}
