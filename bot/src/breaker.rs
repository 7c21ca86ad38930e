//! Per-agent circuit breaker with resilience4j semantics: a time-based sliding
//! window of call outcomes opens the circuit when too many calls fail, and
//! half-open probes decide when the agent gets traffic again.
//!
//! Time is always passed in (`now: Instant`); the module never reads a clock.
//! Times earlier than the latest one seen are treated as that latest time, so
//! calls in any order never panic.
//!
//! Transitions are timed by their deadlines, not by when someone looks: an Open
//! circuit is HalfOpen from `opened + open_wait` on, and a HalfOpen circuit that
//! has not closed after `max_half_open` is Open again from `half_open + max_half_open`
//! (and so on, cyclically, while nobody records anything); a zero `max_half_open`
//! means no limit. Outcomes count in the window at the time they are recorded.
//!
//! Late outcomes: every transition (and every reset) starts a new *generation*,
//! and a [`Permit`] remembers the generation it was issued in. An outcome
//! recorded for a permit from an earlier generation does not count in the
//! window and frees no probe slot (the slots it held belonged to a half-open
//! period that is over). One exception: a probe that outlived its half-open
//! period (`max_half_open` sent the circuit back to Open while it ran) still
//! counts as a probe result, as long as no verdict (a probe result, a
//! failure-rate trip, a reset) came meanwhile: a success counts towards
//! closing (from Open it starts a half-open period at once), a failure
//! reopens. Otherwise probes slower than `max_half_open` (Claude tasks take
//! minutes) would be thrown away and the circuit could stay open for good.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![deny(clippy::panic, clippy::indexing_slicing)]

use std::fmt;
use std::time::{Duration, Instant};

/// Default length of the time-based sliding window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Default number of calls in the window needed before any verdict.
pub const DEFAULT_MINIMUM_CALLS: u32 = 10;
/// Default failure rate, in percent, at or above which the circuit opens.
pub const DEFAULT_FAILURE_RATE_THRESHOLD: f64 = 50.0;
/// Default time the circuit stays Open before it turns HalfOpen.
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(60);
/// Default number of probe calls allowed in flight at once while HalfOpen.
pub const DEFAULT_HALF_OPEN_PROBES: u32 = 3;
/// Default number of probe successes that close a HalfOpen circuit.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 3;
/// Default longest time in HalfOpen before going back to Open: no limit (as
/// in resilience4j); the probes' own outcomes decide.
pub const DEFAULT_MAX_HALF_OPEN: Duration = Duration::ZERO;
/// Most buckets a window is split into; longer windows get wider buckets.
const MAX_BUCKETS: u128 = 600;
/// Nanoseconds in one second, the narrowest bucket.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Tuning of a [`CircuitBreaker`]; zero counts are treated as one.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Length of the sliding window, with a granularity of one bucket (one
    /// second for windows up to ten minutes, `window / 600` beyond).
    pub window: Duration,
    /// Calls in the window needed before the failure rate is judged.
    pub minimum_calls: u32,
    /// Failure rate in percent (0..=100) at or above which the circuit opens;
    /// values outside are clamped, NaN never opens.
    pub failure_rate_threshold: f64,
    /// Time spent Open before probes are allowed (HalfOpen).
    pub open_wait: Duration,
    /// Most probe permits outstanding at once while HalfOpen.
    pub half_open_probes: u32,
    /// Probe successes that close the circuit.
    pub success_threshold: u32,
    /// Longest stay in HalfOpen before going back to Open; zero means no limit.
    pub max_half_open: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            minimum_calls: DEFAULT_MINIMUM_CALLS,
            failure_rate_threshold: DEFAULT_FAILURE_RATE_THRESHOLD,
            open_wait: DEFAULT_OPEN_WAIT,
            half_open_probes: DEFAULT_HALF_OPEN_PROBES,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            max_half_open: DEFAULT_MAX_HALF_OPEN,
        }
    }
}

/// The state of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls flow; outcomes are counted in the window.
    Closed,
    /// No calls are permitted until the open wait is over.
    Open,
    /// A few probe calls decide whether to close or reopen.
    HalfOpen,
}

impl CircuitState {
    /// Lower-case name: "closed", "open" or "half-open".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finished call counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed because of the agent.
    Failure,
    /// A user cancel, or a task that ran and reported its own failure: never
    /// counts, but frees a half-open probe slot.
    Ignored,
}

/// A permission to run one call, returned by [`CircuitBreaker::try_acquire`]
/// and handed back to [`CircuitBreaker::record`]. A dropped probe permit keeps
/// its slot until the half-open episode ends (see `max_half_open`).
#[derive(Debug)]
#[must_use = "hand the permit back to CircuitBreaker::record"]
pub struct Permit {
    /// Generation of the breaker state the permit was issued in.
    generation: u64,
    /// Verdict episode it was issued in (see [`CircuitBreaker`]'s `episode`).
    episode: u64,
    /// Whether it was issued while HalfOpen, as a probe.
    probe: bool,
}

impl Permit {
    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// A point-in-time view of a breaker, for admin pages and logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSnapshot {
    /// Current state.
    pub state: CircuitState,
    /// Calls counted in the window (only Closed counts; empty otherwise).
    pub calls: u64,
    /// Failures among those calls.
    pub failures: u64,
    /// Failure rate in percent; None below the minimum number of calls.
    pub failure_rate: Option<f64>,
    /// Probe permits outstanding (HalfOpen only).
    pub probes_in_flight: u32,
    /// Probe successes so far in this half-open episode.
    pub probe_successes: u32,
    /// When the current state began.
    pub since: Instant,
}

/// Counts of one bucket of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Calls recorded in this bucket.
    calls: u64,
    /// Failures recorded in this bucket.
    failures: u64,
}

/// Ring of buckets with running totals; covers bucket indices `(head - n, head]`.
#[derive(Debug, Clone)]
struct Window {
    /// Width of one bucket in nanoseconds (at least one second).
    width_ns: u128,
    /// Buckets in the ring.
    len: usize,
    /// The ring; absolute bucket `i` lives in slot `i % len`. Allocated at the
    /// first call and freed when the window empties: an agent with no call in
    /// its window (most idle agents) holds no buckets (600 of them are 9.6 KiB).
    buckets: Vec<Bucket>,
    /// Absolute index of the newest bucket.
    head: u64,
    /// Sum of calls over the ring.
    calls: u64,
    /// Sum of failures over the ring.
    failures: u64,
}

impl Window {
    /// An empty window of the given length.
    fn new(length: Duration) -> Self {
        let width_ns = length.as_nanos().div_ceil(MAX_BUCKETS).max(NANOS_PER_SEC);
        let n = length.as_nanos().div_ceil(width_ns).clamp(1, MAX_BUCKETS);
        let n = usize::try_from(n).unwrap_or(1);
        Self {
            width_ns,
            len: n,
            buckets: Vec::new(),
            head: 0,
            calls: 0,
            failures: 0,
        }
    }

    /// Absolute bucket index of `elapsed` since the breaker's epoch.
    fn index(&self, elapsed: Duration) -> u64 {
        u64::try_from(elapsed.as_nanos() / self.width_ns).unwrap_or(u64::MAX)
    }

    /// The bucket of absolute index `i`.
    fn slot(&mut self, i: u64) -> Option<&mut Bucket> {
        let n = u64::try_from(self.len).unwrap_or(1);
        let slot = usize::try_from(i.checked_rem(n).unwrap_or(0)).unwrap_or(0);
        self.buckets.get_mut(slot)
    }

    /// Moves the head to `i`, dropping buckets that fall out (amortised O(1)).
    fn advance(&mut self, i: u64) {
        if i <= self.head {
            return;
        }
        let n = u64::try_from(self.len).unwrap_or(1);
        if i - self.head >= n {
            self.clear();
        } else if !self.buckets.is_empty() {
            for j in self.head + 1..=i {
                if let Some(b) = self.slot(j) {
                    let old = std::mem::take(b);
                    self.calls = self.calls.saturating_sub(old.calls);
                    self.failures = self.failures.saturating_sub(old.failures);
                }
            }
        }
        self.head = i;
        if self.calls == 0 {
            self.buckets = Vec::new();
        }
    }

    /// Counts one outcome in the head bucket.
    fn add(&mut self, failure: bool) {
        let f = u64::from(failure);
        if self.buckets.is_empty() {
            self.buckets = vec![Bucket::default(); self.len];
        }
        if let Some(b) = self.slot(self.head) {
            b.calls = b.calls.saturating_add(1);
            b.failures = b.failures.saturating_add(f);
            self.calls = self.calls.saturating_add(1);
            self.failures = self.failures.saturating_add(f);
        }
    }

    /// Empties the window and frees its buckets.
    fn clear(&mut self) {
        self.buckets = Vec::new();
        self.calls = 0;
        self.failures = 0;
    }
}

/// Converts nanoseconds to a Duration, saturating.
fn duration_from_nanos(n: u128) -> Duration {
    let secs = u64::try_from(n / NANOS_PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, u32::try_from(n % NANOS_PER_SEC).unwrap_or(0))
}

/// A circuit breaker for one agent; see the module docs for the rules.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    /// Configuration, with zero counts raised to one.
    config: BreakerConfig,
    /// Current state.
    state: CircuitState,
    /// When the current state began.
    since: Instant,
    /// Bumped at every transition and reset; stamps permits.
    generation: u64,
    /// Bumped at every verdict (a transition caused by an outcome, and a
    /// reset), not by the timed ones: probes of the same episode still count
    /// after their half-open period timed out.
    episode: u64,
    /// Probe permits issued and not yet recorded (HalfOpen only).
    in_flight: u32,
    /// Probe successes recorded (HalfOpen only).
    successes: u32,
    /// Closed-state outcomes in the sliding window.
    window: Window,
    /// Zero point of bucket indices.
    epoch: Instant,
    /// Latest time seen; time never goes backwards inside the breaker.
    last_now: Instant,
}

impl CircuitBreaker {
    /// A Closed breaker with an empty window, starting at `now`.
    pub fn new(mut config: BreakerConfig, now: Instant) -> Self {
        config.minimum_calls = config.minimum_calls.max(1);
        config.half_open_probes = config.half_open_probes.max(1);
        config.success_threshold = config.success_threshold.max(1);
        config.failure_rate_threshold = config.failure_rate_threshold.clamp(0.0, 100.0);
        let window = Window::new(config.window);
        Self {
            config,
            state: CircuitState::Closed,
            since: now,
            generation: 0,
            episode: 0,
            in_flight: 0,
            successes: 0,
            window,
            epoch: now,
            last_now: now,
        }
    }

    /// The configuration in force (zero counts raised to one).
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Current state; Open turns HalfOpen once `open_wait` has elapsed, and
    /// HalfOpen turns Open once `max_half_open` has elapsed.
    pub fn state(&mut self, now: Instant) -> CircuitState {
        self.advance(now);
        self.state
    }

    /// Whether a call would be permitted now, without taking a permit.
    pub fn would_allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => self.in_flight < self.config.half_open_probes,
        }
    }

    /// Takes a permit to run one call, or None if the circuit refuses it.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Permit> {
        if !self.would_allow(now) {
            return None;
        }
        let probe = self.state == CircuitState::HalfOpen;
        self.in_flight += u32::from(probe);
        Some(Permit {
            generation: self.generation,
            episode: self.episode,
            probe,
        })
    }

    /// Records how the call of `permit` ended. Outcomes of permits from an
    /// earlier generation are discarded (see the module docs).
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) {
        let now = self.advance(now);
        if permit.generation != self.generation {
            if permit.probe && permit.episode == self.episode {
                self.record_late_probe(outcome, now);
            }
            return;
        }
        match (self.state, permit.probe, outcome) {
            (CircuitState::Closed, false, Outcome::Success | Outcome::Failure) => {
                self.window.add(outcome == Outcome::Failure);
                let (calls, failures) = (self.window.calls, self.window.failures);
                if calls >= u64::from(self.config.minimum_calls)
                    && failures as f64 * 100.0 >= self.config.failure_rate_threshold * calls as f64
                {
                    self.transition(CircuitState::Open, now);
                }
            }
            (CircuitState::HalfOpen, true, _) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if outcome == Outcome::Failure {
                    self.transition(CircuitState::Open, now);
                } else if outcome == Outcome::Success {
                    self.successes = self.successes.saturating_add(1);
                    if self.successes >= self.config.success_threshold {
                        self.transition(CircuitState::Closed, now);
                    }
                }
            }
            _ => {}
        }
    }

    /// A probe whose half-open period timed out while it ran, with no
    /// verdict since: its outcome still counts (its slot was freed already).
    fn record_late_probe(&mut self, outcome: Outcome, now: Instant) {
        match (self.state, outcome) {
            (CircuitState::HalfOpen | CircuitState::Open, Outcome::Failure) => {
                self.transition(CircuitState::Open, now);
            }
            (CircuitState::HalfOpen, Outcome::Success) => {
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.config.success_threshold {
                    self.transition(CircuitState::Closed, now);
                }
            }
            (CircuitState::Open, Outcome::Success) => {
                // The agent works: probe again now rather than after the wait.
                self.timed_transition(CircuitState::HalfOpen, now);
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.config.success_threshold {
                    self.transition(CircuitState::Closed, now);
                }
            }
            _ => {}
        }
    }

    /// Admin reset: back to Closed with an empty window; outstanding permits
    /// become stale.
    pub fn reset(&mut self, now: Instant) {
        let now = self.advance(now);
        self.transition(CircuitState::Closed, now);
    }

    /// A view of the state and counts at `now`.
    pub fn snapshot(&mut self, now: Instant) -> BreakerSnapshot {
        let state = self.state(now);
        let (calls, failures) = (self.window.calls, self.window.failures);
        let failure_rate = (calls >= u64::from(self.config.minimum_calls))
            .then(|| failures as f64 * 100.0 / calls as f64);
        let (probes_in_flight, probe_successes, since) =
            (self.in_flight, self.successes, self.since);
        BreakerSnapshot {
            state,
            calls,
            failures,
            failure_rate,
            probes_in_flight,
            probe_successes,
            since,
        }
    }

    /// Enters `state` at `at` on a verdict: new generation and episode, no
    /// probes, empty window.
    fn transition(&mut self, state: CircuitState, at: Instant) {
        self.timed_transition(state, at);
        self.successes = 0;
        self.episode = self.episode.wrapping_add(1);
    }

    /// Enters `state` at `at` because a deadline passed: new generation (the
    /// same episode: probe successes so far still count), no probes in
    /// flight, empty window.
    fn timed_transition(&mut self, state: CircuitState, at: Instant) {
        (self.state, self.since, self.in_flight) = (state, at, 0);
        self.generation = self.generation.wrapping_add(1);
        self.window.clear();
    }

    /// Clamps `now` to be monotonic, slides the window, and applies the timed
    /// transitions that are due, in closed form (no loop over missed cycles).
    fn advance(&mut self, now: Instant) -> Instant {
        self.last_now = self.last_now.max(now);
        let now = self.last_now;
        let index = self.window.index(now.saturating_duration_since(self.epoch));
        self.window.advance(index);
        let half_start = match self.state {
            CircuitState::Closed => return now,
            CircuitState::Open => match self.since.checked_add(self.config.open_wait) {
                Some(t) if t <= now => t,
                _ => return now,
            },
            CircuitState::HalfOpen => self.since,
        };
        let max_half = self.config.max_half_open;
        let elapsed = now.saturating_duration_since(half_start);
        if max_half.is_zero() || elapsed < max_half {
            if self.state == CircuitState::Open {
                self.timed_transition(CircuitState::HalfOpen, half_start);
            }
            return now;
        }
        // Cycles of (HalfOpen for max_half, Open for open_wait) from half_start.
        let cycle = max_half
            .saturating_add(self.config.open_wait)
            .as_nanos()
            .max(1);
        let elapsed = elapsed.as_nanos();
        let start = half_start.checked_add(duration_from_nanos(elapsed - elapsed % cycle));
        let start = start.unwrap_or(now);
        if elapsed % cycle < max_half.as_nanos() {
            self.timed_transition(CircuitState::HalfOpen, start);
        } else {
            self.timed_transition(
                CircuitState::Open,
                start.checked_add(max_half).unwrap_or(now),
            );
        }
        now
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use CircuitState::{Closed, HalfOpen, Open};
    use Outcome::{Failure, Ignored, Success};
    use proptest::prelude::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Runs `n` calls ending with `outcome` at `now`.
    fn calls(b: &mut CircuitBreaker, n: u32, outcome: Outcome, now: Instant) {
        for _ in 0..n {
            let p = b.try_acquire(now).expect("permit");
            b.record(p, outcome, now);
        }
    }

    /// The defaults, with half-open periods limited to 120 s.
    fn limited() -> BreakerConfig {
        BreakerConfig {
            max_half_open: secs(120),
            ..BreakerConfig::default()
        }
    }

    /// A breaker with [`limited`] settings; opened by ten failures at `t0` if `open`.
    fn breaker(t0: Instant, open: bool) -> CircuitBreaker {
        let mut b = CircuitBreaker::new(limited(), t0);
        calls(&mut b, if open { 10 } else { 0 }, Failure, t0);
        b
    }

    /// A breaker that turned HalfOpen at `t0 + 60 s`.
    fn half_open(t0: Instant) -> CircuitBreaker {
        let mut b = breaker(t0, true);
        assert_eq!(b.state(t0 + secs(60)), HalfOpen);
        b
    }

    #[test]
    fn verdicts_need_minimum_calls_and_open_at_exactly_threshold() {
        let t0 = Instant::now();
        let mut b = breaker(t0, false);
        calls(&mut b, 9, Failure, t0);
        let s = b.snapshot(t0);
        assert_eq!((s.state, s.failures, s.failure_rate), (Closed, 9, None));
        let mut b = breaker(t0, false);
        calls(&mut b, 6, Success, t0);
        calls(&mut b, 4, Failure, t0);
        let s = b.snapshot(t0);
        assert_eq!((s.state, s.failure_rate), (Closed, Some(40.0)));
        let mut b = breaker(t0, false);
        calls(&mut b, 5, Success, t0);
        calls(&mut b, 5, Failure, t0);
        let s = b.snapshot(t0);
        assert_eq!((s.state, s.calls, s.since), (Open, 0, t0));
    }

    #[test]
    fn old_failures_slide_out() {
        let t0 = Instant::now();
        let mut b = breaker(t0, false);
        calls(&mut b, 9, Failure, t0);
        let mut inside = b.clone();
        calls(&mut inside, 1, Failure, t0 + secs(9 * 60));
        assert_eq!(inside.state(t0 + secs(9 * 60)), Open);
        calls(&mut b, 1, Failure, t0 + secs(11 * 60));
        let s = b.snapshot(t0 + secs(11 * 60));
        assert_eq!((s.state, s.calls, s.failures), (Closed, 1, 1));
    }

    #[test]
    fn open_turns_half_open_after_wait_not_before() {
        let t0 = Instant::now();
        let mut b = breaker(t0, true);
        let before = t0 + secs(60) - Duration::from_millis(1);
        assert_eq!(b.state(before), Open);
        assert!(!b.would_allow(before) && b.try_acquire(before).is_none());
        let s = b.snapshot(t0 + secs(60));
        assert_eq!((s.state, s.since), (HalfOpen, t0 + secs(60)));
    }

    #[test]
    fn half_open_allows_three_concurrent_probes() {
        let t0 = Instant::now();
        let t = t0 + secs(61);
        let mut b = half_open(t0);
        let probes: Vec<Permit> = (0..3).map(|_| b.try_acquire(t).expect("probe")).collect();
        assert!(probes.iter().all(Permit::is_probe));
        assert!(!b.would_allow(t) && b.try_acquire(t).is_none());
        let mut probes = probes.into_iter();
        b.record(probes.next().expect("probe"), Success, t);
        assert!(b.try_acquire(t).is_some());
        assert_eq!(b.snapshot(t).probes_in_flight, 3);
    }

    #[test]
    fn three_probe_successes_close_one_failure_reopens() {
        let t0 = Instant::now();
        let mut b = half_open(t0);
        for i in 1..=3 {
            calls(&mut b, 1, Success, t0 + secs(60 + i));
        }
        let s = b.snapshot(t0 + secs(64));
        assert_eq!((s.state, s.calls, s.since), (Closed, 0, t0 + secs(63)));
        // One failure reopens, and the open wait restarts.
        let mut b = half_open(t0);
        calls(&mut b, 1, Success, t0 + secs(65));
        calls(&mut b, 1, Failure, t0 + secs(70));
        assert_eq!(b.snapshot(t0 + secs(70)).since, t0 + secs(70));
        assert_eq!(b.state(t0 + secs(129)), Open);
        let s = b.snapshot(t0 + secs(130));
        assert_eq!((s.state, s.probe_successes), (HalfOpen, 0));
    }

    #[test]
    fn half_open_too_long_goes_back_to_open() {
        let t0 = Instant::now();
        let mut b = half_open(t0);
        let stuck = b.try_acquire(t0 + secs(61)).expect("probe");
        assert_eq!(b.state(t0 + secs(179)), HalfOpen);
        let s = b.snapshot(t0 + secs(180));
        assert_eq!((s.state, s.since), (Open, t0 + secs(180)));
        // The probe that outlived its period still counts: it reopens.
        b.record(stuck, Failure, t0 + secs(181));
        assert_eq!(b.snapshot(t0 + secs(181)).since, t0 + secs(181));
        // Untouched for a long time: the deadlines are applied in closed form.
        let s = b.snapshot(t0 + secs(241 + 180 * 1000 + 5));
        assert_eq!((s.state, s.since), (HalfOpen, t0 + secs(241 + 180 * 1000)));
        // Zero means no limit.
        let no_limit = BreakerConfig {
            max_half_open: Duration::ZERO,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(no_limit, t0);
        calls(&mut b, 10, Failure, t0);
        assert_eq!(b.snapshot(t0 + secs(86_400)).since, t0 + secs(60));
    }

    /// Issue 13, finding 2: no half-open limit by default, and probes that
    /// take longer than a configured limit still close the circuit.
    #[test]
    fn slow_probes_still_close_the_circuit() {
        assert_eq!(BreakerConfig::default().max_half_open, Duration::ZERO);
        let settings =
            crate::settings::Settings::for_tests("http://127.0.0.1:9", "sqlite::memory:", "s");
        assert_eq!(
            settings.breaker().max_half_open,
            Duration::ZERO,
            "BATON_BREAKER_MAX_HALF_OPEN_SECS"
        );
        let t0 = Instant::now();
        // By default a probe may take as long as it takes.
        let mut b = CircuitBreaker::new(BreakerConfig::default(), t0);
        calls(&mut b, 10, Failure, t0);
        let probes: Vec<Permit> = (0..3)
            .map(|_| b.try_acquire(t0 + secs(60)).expect("probe"))
            .collect();
        let late = t0 + secs(60 + 20 * 60);
        assert_eq!(b.state(late), HalfOpen, "twenty minutes later");
        probes.into_iter().for_each(|p| b.record(p, Success, late));
        assert_eq!(b.state(late), Closed);

        // With a limit: the period times out while the probes run (Open at
        // 180 s, HalfOpen again at 240 s); their successes still count.
        let mut b = half_open(t0);
        let probes: Vec<Permit> = (0..3)
            .map(|_| b.try_acquire(t0 + secs(61)).expect("probe"))
            .collect();
        assert_eq!(b.state(t0 + secs(180)), Open);
        let mut probes = probes.into_iter();
        b.record(probes.next().expect("probe"), Success, t0 + secs(200));
        let s = b.snapshot(t0 + secs(200));
        assert_eq!(
            (s.state, s.since, s.probe_successes),
            (HalfOpen, t0 + secs(200), 1),
            "a success while Open probes again at once"
        );
        // Open again at 320 s, HalfOpen at 380 s: the successes so far still count.
        b.record(probes.next().expect("probe"), Success, t0 + secs(400));
        assert_eq!(b.snapshot(t0 + secs(400)).probe_successes, 2);
        b.record(probes.next().expect("probe"), Success, t0 + secs(401));
        assert_eq!(b.state(t0 + secs(401)), Closed);

        // A verdict in between makes them stale: a reset, here.
        let mut b = half_open(t0);
        let probe = b.try_acquire(t0 + secs(61)).expect("probe");
        assert_eq!(b.state(t0 + secs(180)), Open);
        b.reset(t0 + secs(181));
        calls(&mut b, 9, Failure, t0 + secs(182));
        b.record(probe, Failure, t0 + secs(183));
        let s = b.snapshot(t0 + secs(183));
        assert_eq!((s.state, s.calls), (Closed, 9), "not counted");
    }

    #[test]
    fn ignored_never_counts_and_frees_a_probe_slot() {
        let t0 = Instant::now();
        let t = t0 + secs(61);
        let mut b = breaker(t0, false);
        calls(&mut b, 20, Ignored, t0);
        assert_eq!(b.snapshot(t0).calls, 0);
        let mut b = half_open(t0);
        let probes: Vec<Permit> = (0..3).map(|_| b.try_acquire(t).expect("probe")).collect();
        probes.into_iter().for_each(|p| b.record(p, Ignored, t));
        let s = b.snapshot(t);
        assert_eq!(
            (s.state, s.probes_in_flight, s.probe_successes),
            (HalfOpen, 0, 0)
        );
    }

    #[test]
    fn reset_closes_and_clears() {
        let t0 = Instant::now();
        let mut b = breaker(t0, true);
        b.reset(t0 + secs(5));
        let s = b.snapshot(t0 + secs(5));
        assert_eq!((s.state, s.calls, s.since), (Closed, 0, t0 + secs(5)));
        calls(&mut b, 9, Failure, t0 + secs(5));
        b.reset(t0 + secs(5));
        calls(&mut b, 1, Failure, t0 + secs(5));
        assert_eq!(b.snapshot(t0 + secs(5)).calls, 1);
    }

    #[test]
    fn late_outcomes_from_earlier_generations_are_ignored() {
        let t0 = Instant::now();
        let (t1, t) = (t0 + secs(1), t0 + secs(61));
        let mut b = breaker(t0, false);
        let mut late = (0..3)
            .map(|_| b.try_acquire(t0))
            .collect::<Vec<_>>()
            .into_iter()
            .flatten();
        calls(&mut b, 10, Failure, t0);
        let before = b.snapshot(t1);
        b.record(late.next().expect("late"), Failure, t1);
        assert_eq!(b.snapshot(t1), before);
        let probe = b.try_acquire(t).expect("probe");
        let before = b.snapshot(t);
        b.record(late.next().expect("late"), Success, t);
        assert_eq!(b.snapshot(t), before);
        b.reset(t);
        b.record(probe, Failure, t);
        b.record(late.next().expect("late"), Failure, t);
        assert_eq!(b.snapshot(t).calls, 0);
        // Time going backwards is clamped, never a panic.
        assert_eq!(b.state(t0), Closed);
    }

    #[test]
    fn long_windows_get_wider_buckets_and_odd_configs_never_panic() {
        let t0 = Instant::now();
        let hour = BreakerConfig {
            window: secs(3600),
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(hour, t0);
        calls(&mut b, 1, Failure, t0 + secs(5));
        assert_eq!(b.snapshot(t0 + secs(3599)).calls, 1);
        assert_eq!(b.snapshot(t0 + secs(3600)).calls, 0);
        let zero = BreakerConfig {
            window: Duration::ZERO,
            minimum_calls: 0,
            failure_rate_threshold: f64::NAN,
            open_wait: Duration::ZERO,
            half_open_probes: 0,
            success_threshold: 0,
            max_half_open: Duration::ZERO,
        };
        let mut b = CircuitBreaker::new(zero.clone(), t0);
        calls(&mut b, 50, Failure, t0);
        assert_eq!(b.state(t0), Closed);
        let huge = Duration::MAX;
        let cfg = BreakerConfig {
            failure_rate_threshold: 0.0,
            window: huge,
            open_wait: huge,
            ..zero
        };
        let mut b = CircuitBreaker::new(cfg, t0);
        calls(&mut b, 1, Success, t0);
        assert_eq!(b.state(t0 + secs(u64::from(u32::MAX))), Open);
    }

    #[test]
    fn display_names() {
        assert_eq!(
            (Closed.to_string(), Open.as_str()),
            ("closed".into(), "open")
        );
        assert_eq!(HalfOpen.to_string(), "half-open");
    }

    /// One step of a random scenario.
    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Acquire,
        Record(usize, Outcome),
        Reset,
        Backwards(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let outcome = prop_oneof![Just(Success), Just(Failure), Just(Ignored)];
        prop_oneof![
            6 => (0..4_000u64).prop_map(Op::Advance),
            1 => (0..60_000u64).prop_map(Op::Advance),
            6 => Just(Op::Acquire),
            8 => (any::<usize>(), outcome).prop_map(|(i, o)| Op::Record(i, o)),
            1 => Just(Op::Reset),
            1 => (0..10_000u64).prop_map(Op::Backwards),
        ]
    }

    /// Naive model: a log of counted outcomes, recounted from scratch.
    struct Model {
        /// The breaker's epoch.
        t0: Instant,
        /// The breaker's configuration.
        cfg: BreakerConfig,
        /// Bumped whenever (state, since) changes, and on reset.
        epoch: u64,
        /// Last (state, since) observed.
        seen: (CircuitState, Instant),
        /// (time, failure) of outcomes counted in the current Closed episode.
        log: Vec<(Instant, bool)>,
        /// When a recorded outcome last opened the circuit.
        opened_at: Option<Instant>,
        /// Permits held, with the model epoch and episode they were issued in.
        held: Vec<(Permit, u64, u64)>,
        /// Bumped at every verdict: an outcome that changed the state, a reset.
        episode: u64,
    }

    impl Model {
        fn recount(&self, now: Instant) -> (u64, u64) {
            let age = |t: Instant| (now - self.t0).as_secs() - (t - self.t0).as_secs();
            let live = self
                .log
                .iter()
                .filter(|(t, _)| age(*t) < self.cfg.window.as_secs());
            live.fold((0, 0), |(c, f), (_, fail)| (c + 1, f + u64::from(*fail)))
        }

        /// Snapshots the breaker, tracks episodes and checks the invariants.
        fn observe(&mut self, b: &mut CircuitBreaker, now: Instant) -> BreakerSnapshot {
            let s = b.snapshot(now);
            if (s.state, s.since) != self.seen {
                (self.seen, self.epoch) = ((s.state, s.since), self.epoch + 1);
                self.log.clear();
            }
            assert!(s.since <= now);
            let probes = self
                .held
                .iter()
                .filter(|(p, e, _)| p.is_probe() && *e == self.epoch);
            match s.state {
                Closed => assert_eq!((s.calls, s.failures), self.recount(now)),
                Open => assert!(now < s.since + self.cfg.open_wait),
                HalfOpen => assert_eq!(s.probes_in_flight as usize, probes.count()),
            }
            assert!(s.probes_in_flight <= self.cfg.half_open_probes);
            s
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn breaker_matches_naive_model(
            (w, min, thr, wait) in (5..30u64, 1..8u32, 1..=100u32, 1..20u64),
            (probes, succ, max_half) in (1..5u32, 1..5u32, 0..30u64),
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let (window, open_wait, max_half_open) = (secs(w), secs(wait), secs(max_half));
            let failure_rate_threshold = f64::from(thr);
            let cfg = BreakerConfig { window, minimum_calls: min, failure_rate_threshold, open_wait,
                half_open_probes: probes, success_threshold: succ, max_half_open };
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = CircuitBreaker::new(cfg.clone(), t0);
            let (log, held) = (Vec::new(), Vec::new());
            let mut m = Model { t0, cfg, epoch: 0, seen: (Closed, t0), log, opened_at: None, held, episode: 0 };
            for op in ops {
                let pre = m.observe(&mut b, now);
                let is_record = matches!(op, Op::Record(..));
                match op {
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Backwards(ms) => {
                        let past = now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
                        prop_assert_eq!(b.state(past), pre.state);
                        prop_assert_eq!(b.would_allow(past), b.would_allow(now));
                    }
                    Op::Acquire => {
                        let allow = b.would_allow(now);
                        let permit = b.try_acquire(now);
                        prop_assert_eq!(allow, permit.is_some());
                        if let Some(p) = permit {
                            prop_assert!(pre.state != Open);
                            prop_assert!(m.opened_at.is_none_or(|at| now >= at + m.cfg.open_wait));
                            prop_assert_eq!(p.is_probe(), pre.state == HalfOpen);
                            m.held.push((p, m.epoch, m.episode));
                        } else {
                            let full = pre.probes_in_flight >= m.cfg.half_open_probes;
                            prop_assert!(pre.state == Open || full);
                        }
                    }
                    Op::Record(i, outcome) => {
                        if m.held.is_empty() { continue; }
                        let (p, epoch, episode) = m.held.swap_remove(i % m.held.len());
                        let current = epoch == m.epoch && p.is_probe() == (pre.state == HalfOpen);
                        let late_probe = !current && p.is_probe() && episode == m.episode;
                        let closed = pre.state == Closed;
                        if current && closed && outcome != Ignored {
                            m.log.push((now, outcome == Failure));
                        }
                        let (calls, failures) = m.recount(now);
                        b.record(p, outcome, now);
                        let s = b.snapshot(now);
                        let successes = pre.probe_successes + u32::from(outcome == Success);
                        if late_probe && pre.state != Closed && outcome != Ignored {
                            // A probe that outlived its half-open period still counts.
                            m.episode += 1;
                            if outcome == Failure {
                                prop_assert_eq!((s.state, s.since), (Open, now));
                                m.opened_at = Some(now);
                            } else {
                                if successes >= succ {
                                    prop_assert_eq!((s.state, s.since), (Closed, now));
                                } else {
                                    m.episode -= 1;
                                    prop_assert_eq!((s.state, s.probe_successes), (HalfOpen, successes));
                                    if pre.state == Open {
                                        prop_assert_eq!(s.since, now);
                                        m.opened_at = None;
                                    }
                                }
                            }
                        } else if !current || (closed && outcome == Ignored) {
                            prop_assert_eq!(s, pre);
                        } else if closed {
                            let rate_hit = failures as f64 * 100.0 >= f64::from(thr) * calls as f64;
                            let trips = calls >= u64::from(min) && rate_hit;
                            prop_assert_eq!(s.state == Open, trips);
                            if trips {
                                prop_assert!(calls >= u64::from(min));
                                m.opened_at = Some(now);
                                m.episode += 1;
                            }
                        } else if outcome == Failure {
                            prop_assert_eq!((s.state, s.since), (Open, now));
                            m.opened_at = Some(now);
                            m.episode += 1;
                        } else if successes >= succ {
                            prop_assert_eq!((s.state, s.since), (Closed, now));
                            m.episode += 1;
                        } else {
                            prop_assert_eq!((s.state, s.probe_successes), (HalfOpen, successes));
                        }
                    }
                    Op::Reset => {
                        b.reset(now);
                        (m.epoch, m.seen, m.opened_at) = (m.epoch + 1, (Closed, now), None);
                        m.episode += 1;
                        m.log.clear();
                    }
                }
                let post = m.observe(&mut b, now);
                if pre.state == Closed && post.state != Closed {
                    prop_assert!(is_record, "only a recorded outcome opens a closed circuit");
                }
            }
        }
    }
}
