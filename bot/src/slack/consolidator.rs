//! The consolidator: one Slack message per task, edited in place, within Slack's limits.
//!
//! Callers hand it the task's latest state whenever it changes; the latest
//! render wins. For each message it keeps at most one call in flight, edits
//! at most once per `edit_interval`, draws every `chat.update` from a
//! per-workspace budget (governor) that holds in every 60-second window,
//! serves terminal states first (then the least recently edited message),
//! pauses a method for its `Retry-After` on a 429 and retries other failures
//! with backoff (backon). A terminal state is never dropped nor overwritten
//! by a late live one: once its final edit and the result's continuation
//! replies have landed, the task is marked synced; a task not marked synced
//! is shown again after a restart.
//!
//! Continuation replies are posted exactly once: each carries a block id
//! naming its task and part, the count of parts that landed is kept in memory
//! and in the database, and whenever that count may lag behind Slack (the
//! first time this process finishes a thread, or after a post whose answer
//! was lost) the thread is read back before anything more is posted.
//!
//! A result too long for the message and three replies goes as one file
//! (`task-ID.md`) instead; it counts as the thread's one part, and its
//! share message carries part 1's block id, so it is uploaded exactly once
//! the same way. Thread replies and files of one channel are paced: at most
//! one per [`CHANNEL_POST_INTERVAL`], Slack's per-channel posting limit.
//!
//! The outside world comes in through two seams, [`ChatApi`] (the Web API)
//! and [`MessageLog`] (the database), so the tests run it on tokio's paused
//! clock against an in-memory Slack.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

use baton_shared::TaskId;

use crate::clock::TokioClock;
use crate::model::{TaskState, now_ms};
use crate::slack::api::{ChatApi, MessageBody, SlackCallError};
use crate::slack::render::{self, Rendered};
use crate::store::{Store, Task};
use crate::sync::lock;

mod budget;
#[cfg(test)]
mod tests;

use budget::SharedBudget;

/// Shortest wait after a transient failure.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest wait between retries of one message.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(60);
/// Failed attempts at a live render before it is dropped (a newer one will
/// come), and at reading a thread before the stored count of parts is trusted.
const MAX_ATTEMPTS: u32 = 5;
/// Largest burst of the per-workspace `chat.update` budget.
const UPDATE_BURST: u32 = 5;
/// The burst is at most this fraction of the budget (a burst costs sustained rate).
const UPDATE_BURST_DIVISOR: u32 = 10;
/// The window Slack counts calls in; the budget holds in every window this long.
const BUDGET_WINDOW: Duration = Duration::from_secs(60);
/// How long a finished message is remembered after its final state landed,
/// so a late live render of it is recognised as stale.
const FINISHED_REMEMBERED: Duration = Duration::from_secs(600);
/// How often, at most, finished messages past [`FINISHED_REMEMBERED`] are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long the driver sleeps when nothing is due.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);
/// How often the shutdown flush looks again when nothing says when.
const FLUSH_POLL: Duration = Duration::from_millis(50);
/// How often a render handed over to the process that edits the message
/// (or a queue position that process shows) is claimed again, in case that
/// process is dead: it never heard the hand-over, and its claim lapses with
/// its lease.
const HANDOVER_RECHECK: Duration = Duration::from_secs(3);
/// For how long after its first hand-over: longer than a lease's time to
/// live (`app::LEASE_TTL`, 10 s), so that a dead editor's claim has lapsed
/// by the last recheck and this process shows the render itself.
const HANDOVER_WINDOW: Duration = Duration::from_secs(16);
/// Shortest interval between two thread posts (continuation replies, a
/// shared result file) in one channel: Slack allows about one message per
/// second per channel, beyond short bursts.
pub const CHANNEL_POST_INTERVAL: Duration = Duration::from_secs(1);

/// What the consolidator records about the messages it shows: where each one
/// is, what it shows, and how far a result's continuation got. The database
/// in production.
pub trait MessageLog: Send + Sync + 'static {
    /// The task's message was posted as `ts`.
    fn message_posted<'a>(&'a self, task: i64, ts: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Slack is about to show this live state of the task (a restart shows it again).
    fn progress_shown<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<()>>;
    /// The first `parts` continuation replies of the task's result are in its thread.
    fn parts_posted(&self, task: i64, parts: usize) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Slack shows the task's final state, its whole result included.
    fn final_shown(&self, task: i64) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Claims the task's message for this process before it is posted or
    /// edited: whether this process edits it now (one process at a time
    /// does, when several share the database), and if so what the database
    /// records of the task that another process may have written. Always
    /// this process's, with nothing recorded elsewhere, unless overridden.
    fn claim_message<'a>(&'a self, _task: &'a Task) -> BoxFuture<'a, anyhow::Result<Claim>> {
        Box::pin(async { Ok(Claim::Mine(Recorded::default())) })
    }
    /// Asks the process that edits the task's message to show the task
    /// again from the database (this one may not edit it). Nothing, unless
    /// overridden.
    fn hand_over(&self, _task: i64) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Whether this process edits a task's message now ([`MessageLog::claim_message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// It does; what the database records of the task.
    Mine(Recorded),
    /// Another process does.
    Elsewhere,
}

/// What a database several processes share records of a task, as read
/// with the claim of its message: what another process may have written.
/// Alone on its database, a process knows it all, and this stays empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The message's ts, should another process have posted it.
    pub ts: Option<String>,
    /// Whether the task has ended (another process may have ended it, and
    /// a live render here is then stale).
    pub ended: bool,
}

impl MessageLog for Store {
    fn message_posted<'a>(&'a self, task: i64, ts: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.record_message_ts(task, ts))
    }

    fn progress_shown<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.save_progress(
            task.id,
            task.last_seq,
            &task.steps,
            task.step_count,
            &task.output_tail,
        ))
    }

    fn parts_posted(&self, task: i64, parts: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        let parts = i32::try_from(parts).unwrap_or(i32::MAX);
        Box::pin(self.set_result_parts_posted(task, parts))
    }

    fn final_shown(&self, task: i64) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(self.record_slack_synced(task))
    }
}

/// A Web API method the consolidator calls; a 429 pauses one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Method {
    /// `chat.postMessage`: task messages and continuation replies.
    Post,
    /// `chat.update`.
    Update,
    /// `conversations.replies` or `conversations.history`: reading Slack back.
    Replies,
    /// `files.getUploadURLExternal` and `files.completeUploadExternal`: a result as a file.
    Upload,
}

/// Scheduling priority: terminal states first, then running tasks, then queue positions.
fn priority(state: TaskState) -> u8 {
    match state {
        s if s.is_terminal() => 0,
        TaskState::Running | TaskState::Dispatched => 1,
        _ => 2,
    }
}

/// A message whose final state was settled.
#[derive(Debug)]
struct Finished {
    /// When.
    at: Instant,
    /// Its ts, if it was posted.
    ts: Option<String>,
    /// Left to the process that edits the message, not shown here.
    left: bool,
}

/// What the consolidator knows about one task's message.
#[derive(Debug, Default)]
struct Slot {
    /// The latest state not yet shown, with its queue position.
    pending: Option<(Task, Option<u64>)>,
    /// A call for this message is in flight; nothing else is sent for it meanwhile.
    in_flight: bool,
    /// The message's ts, once posted.
    ts: Option<String>,
    /// When the message was last posted or edited (the edit interval counts from here).
    last_sent: Option<Instant>,
    /// Not before this instant (backoff after a failure).
    retry_at: Option<Instant>,
    /// Failed attempts at the pending render; 429s only wait and do not count.
    attempts: u32,
    /// A terminal state was given: live renders arriving after it are stale.
    finished: bool,
    /// The message already shows the pending terminal render; only its thread is left.
    final_edited: bool,
    /// Continuation replies this process knows are in the thread; `None`:
    /// read the thread before posting more.
    parts_posted: Option<usize>,
    /// When the final state was settled (shown, or given up on): the slot
    /// then moves to `Inner::finished`.
    settled_at: Option<Instant>,
    /// No ts is known, but the message may exist (a post whose answer was
    /// lost, or one an earlier process made): look for it before posting.
    post_uncertain: bool,
    /// The requester was told that Slack refused the message (told once).
    told_unpostable: bool,
    /// When the pending render was first handed over to the process that
    /// edits the message; it is claimed again for [`HANDOVER_WINDOW`] (should
    /// that process have died, the hand-over was lost with it). `None`: the
    /// pending render is new, and a hand-over of it is announced.
    handed_over_at: Option<Instant>,
    /// The final render was left to the process that edits the message.
    final_left: bool,
}

impl Slot {
    /// The method the pending render starts with.
    fn first_method(&self) -> Method {
        match (&self.ts, self.final_edited) {
            (None, _) | (Some(_), true) => Method::Post,
            (Some(_), false) => Method::Update,
        }
    }
}

/// One render handed to a sender.
#[derive(Debug)]
struct Job {
    /// The task as it should be shown.
    task: Task,
    /// Its queue position, when queued.
    position: Option<u64>,
    /// The message's ts; `None` posts it.
    ts: Option<String>,
    /// The message already shows this terminal render.
    final_edited: bool,
    /// Continuation replies known to be in the thread.
    parts_posted: Option<usize>,
    /// Failed attempts so far.
    attempts: u32,
    /// Look for the message in Slack before posting it.
    post_uncertain: bool,
}

/// A failed step of a send: which method failed, and how.
#[derive(Debug)]
struct Failure {
    /// The method Slack refused or did not answer.
    method: Method,
    /// What happened.
    err: SlackCallError,
}

impl Failure {
    fn of(method: Method) -> impl FnOnce(SlackCallError) -> Failure {
        move |err| Failure { method, err }
    }
}

/// What became of a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Shown in Slack (or nothing was left to show).
    Shown,
    /// Handed over to the process that edits the message.
    HandedOver,
}

/// The per-workspace `chat.update` budget.
type Budget = RateLimiter<
    String,
    governor::state::keyed::HashMapStateStore<String>,
    TokioClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

/// A quota that lets at most `per_minute` calls into any 60-second window.
///
/// GCRA lets `burst` calls through at once and then one per period, so a
/// window of length W holds at most `burst + ceil(W / period) - 1` calls; the
/// period is chosen to make that `per_minute` (rounded up to the nanosecond,
/// so that the division's truncation cannot let one more in). The sustained rate is then
/// `per_minute - burst + 1` a minute, so the burst stays a small fraction.
fn update_quota(per_minute: u32) -> Quota {
    let n = per_minute.max(1);
    let burst = (n / UPDATE_BURST_DIVISOR).clamp(1, UPDATE_BURST);
    // Rounded up to the nanosecond, no more: a millisecond more capped the
    // rate near 1,000 a second whatever the budget.
    let window = u64::try_from(BUDGET_WINDOW.as_nanos()).unwrap_or(u64::MAX);
    let period = Duration::from_nanos(window.div_ceil(u64::from(n - burst + 1)));
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// Shared state behind the handle.
struct Inner {
    /// The Web API.
    api: Arc<dyn ChatApi>,
    /// Where messages' ts, progress and sync marks are recorded.
    log: Arc<dyn MessageLog>,
    /// Per task id, the messages in progress.
    slots: Mutex<HashMap<i64, Slot>>,
    /// The messages whose final state was settled (shown, or given up on)
    /// in the last [`FINISHED_REMEMBERED`]: a few bytes each, out of
    /// `slots` so that a busy hour of finished tasks does not slow every
    /// lookup of the live ones. Locked after `slots`, never before.
    finished: Mutex<HashMap<i64, Finished>>,
    /// Ids shown (or whose send ended) since the last pass.
    dirty: Mutex<HashSet<i64>>,
    /// Ids with a render waiting for its time (edit interval, backoff, a 429
    /// pause, the budget), by when it is due. A pass looks at these two sets
    /// only, never at every message: a busy bot has thousands of messages
    /// waiting for their next edit.
    waiting: Mutex<BTreeSet<(Instant, i64)>>,
    /// Wakes the driver.
    wake: Notify,
    /// Shortest interval between two sends for one message.
    edit_interval: Duration,
    /// This process's share of the `chat.update` budget per workspace.
    budget: Mutex<SharedBudget>,
    /// A method paused by a 429 until this instant.
    paused: Mutex<HashMap<Method, Instant>>,
    /// When finished slots were last pruned.
    pruned_at: Mutex<Option<Instant>>,
    /// Per channel, the earliest instant its next thread post may go
    /// (pacing by [`CHANNEL_POST_INTERVAL`]).
    channel_next: Mutex<HashMap<String, Instant>>,
    /// Counters for metrics.
    stats: Mutex<Stats>,
    /// Where a task whose message Slack refused for good is reported (the
    /// app stops it and tells its requester); without one the requester
    /// gets an ephemeral message.
    unpostable: Mutex<Option<tokio::sync::mpsc::UnboundedSender<(Task, String)>>>,
}

/// What the consolidator did, for metrics and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// `chat.postMessage` calls for task messages and continuations.
    pub posts: u64,
    /// `chat.update` calls.
    pub updates: u64,
    /// `conversations.replies` calls (reading a thread back).
    pub thread_reads: u64,
    /// Results uploaded as files (attempts).
    pub uploads: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Other failed calls.
    pub errors: u64,
    /// Renders left to the process that edits the task's message.
    pub handed_over: u64,
}

/// Handle to the consolidator. Cheap to clone.
#[derive(Clone)]
pub struct Consolidator {
    /// The shared state.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Consolidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consolidator").finish_non_exhaustive()
    }
}

impl Consolidator {
    /// A consolidator calling `api`, recording in `log`, editing a message at
    /// most once per `edit_interval` and making at most `updates_per_minute`
    /// `chat.update` calls per workspace in any 60 seconds.
    pub fn new(
        api: Arc<dyn ChatApi>,
        log: Arc<dyn MessageLog>,
        edit_interval: Duration,
        updates_per_minute: u32,
    ) -> Self {
        Consolidator {
            inner: Arc::new(Inner {
                api,
                log,
                slots: Mutex::new(HashMap::new()),
                finished: Mutex::new(HashMap::new()),
                dirty: Mutex::new(HashSet::new()),
                waiting: Mutex::new(BTreeSet::new()),
                wake: Notify::new(),
                edit_interval,
                budget: Mutex::new(SharedBudget::new(updates_per_minute)),
                paused: Mutex::new(HashMap::new()),
                pruned_at: Mutex::new(None),
                channel_next: Mutex::new(HashMap::new()),
                stats: Mutex::new(Stats::default()),
                unpostable: Mutex::new(None),
            }),
        }
    }

    /// Shows `task` as it is now (the latest call wins). `position` is its
    /// place in its queue, when queued. A live state given after a terminal
    /// one is stale and ignored.
    pub fn show(&self, task: Task, position: Option<u64>) {
        let id = task.id;
        let terminal = render::task_state(&task).is_terminal();
        {
            let mut slots = lock(&self.inner.slots);
            let slot = match slots.entry(id) {
                Entry::Occupied(slot) => slot.into_mut(),
                Entry::Vacant(vacant) => {
                    let mut finished = lock(&self.inner.finished);
                    if !terminal && finished.contains_key(&id) {
                        // A late live render of a finished message.
                        return;
                    }
                    let slot = vacant.insert(Slot::default());
                    if let Some(done) = finished.remove(&id) {
                        // Its final state again (a recovery, a hand-over).
                        slot.finished = true;
                        slot.ts = done.ts;
                    }
                    slot
                }
            };
            if slot.ts.is_none() {
                slot.ts = task.message_ts.clone();
            }
            if slot.finished && !terminal {
                return;
            }
            slot.finished |= terminal;
            slot.final_edited = false;
            slot.settled_at = None;
            slot.attempts = 0;
            slot.handed_over_at = None;
            slot.final_left = false;
            slot.pending = Some((task, position));
        }
        self.mark_dirty(id);
    }

    /// Reports tasks whose message Slack refused for good (like
    /// `not_in_channel`) to `sink`, with Slack's reason, instead of telling
    /// their requester itself.
    pub fn report_unpostable(&self, sink: tokio::sync::mpsc::UnboundedSender<(Task, String)>) {
        *lock(&self.inner.unpostable) = Some(sink);
    }

    /// `live` processes share the workspace's budget now (counted at a lease
    /// renewal; 0: this process's own lease expired): this one takes its
    /// share by the rule of the [`budget`] module.
    pub fn share_budget(&self, live: u32) {
        lock(&self.inner.budget).set_live(live, Instant::now());
        self.inner.wake.notify_one();
    }

    /// The most `chat.update` calls per workspace this process makes in a
    /// window now.
    pub fn budget_share(&self) -> u32 {
        lock(&self.inner.budget).limit(Instant::now())
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        lock(&self.inner.stats).clone()
    }

    /// Whether this process has the task's final render in hand: pending,
    /// in flight, shown or given up on (not left to another process).
    pub fn has_final(&self, id: i64) -> bool {
        let slots = lock(&self.inner.slots);
        match slots.get(&id) {
            Some(slot) => slot.finished && !slot.final_left,
            None => lock(&self.inner.finished)
                .get(&id)
                .is_some_and(|done| !done.left),
        }
    }

    /// Whether nothing is pending or in flight.
    pub fn is_idle(&self) -> bool {
        lock(&self.inner.dirty).is_empty()
            && lock(&self.inner.slots)
                .values()
                .all(|s| !s.in_flight && s.pending.is_none())
    }

    /// Runs the driver until `shutdown` resolves, then flushes what is
    /// pending for up to `flush_for`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>, flush_for: Duration) {
        tokio::pin!(shutdown);
        loop {
            let next = self.pass();
            let sleep =
                tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + IDLE_SLEEP));
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.inner.wake.notified() => {}
                _ = sleep => {}
            }
        }
        let deadline = Instant::now() + flush_for;
        while !self.is_idle() && Instant::now() < deadline {
            let next = self.pass().unwrap_or_else(|| Instant::now() + FLUSH_POLL);
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep_until(next.min(deadline)) => {}
            }
        }
    }

    /// Starts every send that is due; returns when the next one will be.
    fn pass(&self) -> Option<Instant> {
        let now = Instant::now();
        self.prune(now);
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        let paused = lock(&self.inner.paused).clone();
        let paused_until = |m: Method| paused.get(&m).copied().unwrap_or(now);
        // Taken, not drained: a drain walks the set's whole table, as large
        // as its busiest moment ever made it, on every pass.
        let dirty = std::mem::take(&mut *lock(&self.inner.dirty));
        let mut candidates: Vec<i64> = dirty.into_iter().collect();
        {
            let mut waiting = lock(&self.inner.waiting);
            while let Some(&(due, id)) = waiting.first() {
                if due > now {
                    break;
                }
                waiting.pop_first();
                candidates.push(id);
            }
        }
        // (priority, least recently sent first, id)
        let mut ready: Vec<(u8, Option<Instant>, i64)> = Vec::new();
        let mut later: Vec<(Instant, i64)> = Vec::new();
        {
            let slots = lock(&self.inner.slots);
            for id in candidates {
                let Some(slot) = slots.get(&id) else {
                    continue;
                };
                // An in-flight send marks its slot dirty again when it ends.
                let Some((task, _)) = slot.pending.as_ref().filter(|_| !slot.in_flight) else {
                    continue;
                };
                let state = render::task_state(task);
                let method = slot.first_method();
                let mut due = slot.retry_at.unwrap_or(now).max(paused_until(method));
                if (method == Method::Update || slot.ts.is_none())
                    && let Some(last) = slot.last_sent
                {
                    due = due.max(last + self.inner.edit_interval);
                }
                if state.is_terminal() {
                    // It may read the thread and post to it too.
                    due = due
                        .max(paused_until(Method::Post))
                        .max(paused_until(Method::Replies))
                        .max(paused_until(Method::Upload));
                }
                if due <= now {
                    ready.push((priority(state), slot.last_sent, id));
                } else {
                    later.push((due, id));
                }
            }
        }
        ready.sort_unstable();
        for (_, _, id) in ready {
            let job = {
                let mut slots = lock(&self.inner.slots);
                let Some(slot) = slots.get_mut(&id) else {
                    continue;
                };
                let Some((task, _)) = slot.pending.as_ref().filter(|_| !slot.in_flight) else {
                    continue;
                };
                let method = slot.first_method();
                if method == Method::Update
                    && let Err(not_until) = lock(&self.inner.budget).check(&task.team_id, now)
                {
                    later.push((not_until, id));
                    continue;
                }
                let Some((task, position)) = slot.pending.take() else {
                    continue;
                };
                slot.in_flight = true;
                if method == Method::Update || slot.ts.is_none() {
                    slot.last_sent = Some(now);
                }
                Job {
                    task,
                    position,
                    ts: slot.ts.clone(),
                    final_edited: slot.final_edited,
                    parts_posted: slot.parts_posted,
                    attempts: slot.attempts,
                    post_uncertain: slot.post_uncertain,
                }
            };
            let this = self.clone();
            tokio::spawn(async move { this.send(job).await });
        }
        let mut waiting = lock(&self.inner.waiting);
        waiting.extend(later);
        if let Some(&(due, _)) = waiting.first() {
            earliest(due);
        }
        next
    }

    /// Forgets finished messages whose final state landed long ago.
    fn prune(&self, now: Instant) {
        {
            let mut pruned_at = lock(&self.inner.pruned_at);
            if pruned_at.is_some_and(|t| now.duration_since(t) < PRUNE_EVERY) {
                return;
            }
            *pruned_at = Some(now);
        }
        lock(&self.inner.channel_next).retain(|_, next| *next > now);
        lock(&self.inner.budget).prune(now);
        lock(&self.inner.finished)
            .retain(|_, done| now.duration_since(done.at) < FINISHED_REMEMBERED);
    }

    /// Puts `id` before the next pass. Only the first id since the last
    /// pass wakes the driver: that pass takes the others with it.
    fn mark_dirty(&self, id: i64) {
        let first = {
            let mut dirty = lock(&self.inner.dirty);
            let first = dirty.is_empty();
            dirty.insert(id);
            first
        };
        if first {
            self.inner.wake.notify_one();
        }
    }

    /// Runs `f` on the task's slot, if it still has one.
    fn with_slot(&self, id: i64, f: impl FnOnce(&mut Slot)) {
        if let Some(slot) = lock(&self.inner.slots).get_mut(&id) {
            f(slot);
        }
    }

    /// Sends one render, then settles the slot: done, to retry, or given up.
    async fn send(&self, job: Job) {
        let id = job.task.id;
        let terminal = render::task_state(&job.task).is_terminal();
        let result = self.deliver(&job).await;
        let now = Instant::now();
        {
            let mut slots = lock(&self.inner.slots);
            let Some(slot) = slots.get_mut(&id) else {
                return;
            };
            slot.in_flight = false;
            match result {
                Ok(Delivered::HandedOver) => {
                    slot.attempts = 0;
                    if slot.pending.is_some() {
                        // A newer render came meanwhile: its own hand-over
                        // is announced.
                        slot.retry_at = None;
                    } else if now.duration_since(*slot.handed_over_at.get_or_insert(now))
                        < HANDOVER_WINDOW
                    {
                        // Claimed again a little later, in case the editor is dead.
                        tracing::debug!(
                            task = id,
                            "another process edits the task's message; handed over"
                        );
                        slot.pending = Some((job.task, job.position));
                        slot.retry_at = Some(now + HANDOVER_RECHECK);
                    } else {
                        tracing::debug!(
                            task = id,
                            "another process still edits the task's message; left to it"
                        );
                        slot.handed_over_at = None;
                        slot.retry_at = None;
                        slot.final_left = terminal;
                        if terminal {
                            slot.settled_at = Some(now);
                        }
                    }
                }
                Ok(_) => {
                    slot.handed_over_at = None;
                    slot.retry_at = None;
                    slot.attempts = 0;
                    if terminal && slot.pending.is_none() {
                        slot.settled_at = Some(now);
                    }
                }
                Err(Failure { method, err }) => {
                    let give_up = match &err {
                        SlackCallError::RateLimited { retry_after } => {
                            lock(&self.inner.stats).rate_limited += 1;
                            let until = now + *retry_after;
                            let mut paused = lock(&self.inner.paused);
                            let p = paused.entry(method).or_insert(until);
                            *p = (*p).max(until);
                            false
                        }
                        _ => {
                            lock(&self.inner.stats).errors += 1;
                            slot.attempts += 1;
                            slot.retry_at = Some(now + backoff(slot.attempts));
                            !err.is_retryable() || (!terminal && slot.attempts >= MAX_ATTEMPTS)
                        }
                    };
                    if give_up {
                        tracing::warn!(task = id, error = %err, "Slack did not take the task's message; giving up on this render");
                        if method == Method::Post && job.ts.is_none() && !slot.told_unpostable {
                            // The message cannot exist: say so to the person, once.
                            slot.told_unpostable = true;
                            self.tell_unpostable(job.task.clone(), err.to_string());
                        }
                        if terminal && slot.pending.is_none() {
                            slot.settled_at = Some(now);
                        }
                    } else if slot.pending.is_none() {
                        // Put this render back: no newer one arrived meanwhile.
                        slot.pending = Some((job.task, job.position));
                    }
                }
            }
            if slot.settled_at.is_some() && slot.pending.is_none() {
                // Nothing more to do for this message: remembered in brief.
                let slot = slots.remove(&id).unwrap_or_default();
                let done = Finished {
                    at: now,
                    ts: slot.ts,
                    left: slot.final_left,
                };
                lock(&self.inner.finished).insert(id, done);
                return;
            }
        }
        self.mark_dirty(id);
    }

    /// Posts or edits the task's message; for a terminal state, then finishes
    /// its thread. When another process edits the message, hands the change
    /// over to it instead (a queue position needs no hand-over: every
    /// process's dispatch pass shows the queues, the editor's too).
    async fn deliver(&self, job: &Job) -> Result<Delivered, Failure> {
        let task = &job.task;
        let state = render::task_state(task);
        let terminal = state.is_terminal();
        // The render was handed over before: another process edited the
        // message, and may have posted it without living to record it.
        let rechecking = lock(&self.inner.slots)
            .get(&task.id)
            .is_some_and(|s| s.handed_over_at.is_some());
        let recorded = match self.inner.log.claim_message(task).await {
            Ok(Claim::Mine(recorded)) => recorded,
            Ok(Claim::Elsewhere) => {
                lock(&self.inner.stats).handed_over += 1;
                if state != TaskState::Queued
                    && !rechecking
                    && let Err(err) = self.inner.log.hand_over(task.id).await
                {
                    tracing::warn!(task = task.id, error = ?err, "cannot hand the task's message over to the process that edits it");
                }
                return Ok(Delivered::HandedOver);
            }
            Err(err) => {
                // Better an edit from two processes than none.
                tracing::warn!(task = task.id, error = ?err, "cannot claim the task's message; editing it anyway");
                Recorded::default()
            }
        };
        let mut known_ts = job.ts.clone();
        if known_ts.is_none()
            && let Some(ts) = recorded.ts
        {
            // Another process posted it: edit that message.
            self.with_slot(task.id, |s| s.ts = Some(ts.clone()));
            known_ts = Some(ts);
        }
        let rendered = render::render(task, job.position, now_ms());
        let ts = match &known_ts {
            None => {
                let found = match job.post_uncertain || rechecking {
                    true => self.find_posted(task).await?,
                    false => None,
                };
                let ts = match found {
                    Some(ts) => {
                        // It was posted after all: bring it up to date instead.
                        self.update(&task.channel_id, &ts, &rendered.message)
                            .await
                            .map_err(Failure::of(Method::Update))?;
                        ts
                    }
                    None => self
                        .post(
                            &task.channel_id,
                            task.thread_ts.as_deref(),
                            &rendered.message,
                        )
                        .await
                        .map_err(|err| {
                            if matches!(err, SlackCallError::Transport(_)) {
                                // No answer: it may have landed. Look before posting again.
                                self.with_slot(task.id, |s| s.post_uncertain = true);
                            }
                            Failure::of(Method::Post)(err)
                        })?,
                };
                self.with_slot(task.id, |s| {
                    s.ts = Some(ts.clone());
                    s.post_uncertain = false;
                    s.final_edited = terminal && s.pending.is_none();
                });
                if let Err(err) = self.inner.log.message_posted(task.id, &ts).await {
                    tracing::error!(task = task.id, error = ?err, "Cannot record the task's message ts");
                }
                ts
            }
            Some(ts) if job.final_edited => ts.clone(),
            Some(ts) => {
                if !terminal && recorded.ended {
                    // Another process ended it meanwhile: its final edit is
                    // (or will be) there, and this live render would hide it.
                    return Ok(Delivered::Shown);
                }
                if !terminal && let Err(err) = self.inner.log.progress_shown(task).await {
                    tracing::warn!(task = task.id, error = ?err, "Cannot record the progress shown");
                }
                self.update(&task.channel_id, ts, &rendered.message)
                    .await
                    .map_err(Failure::of(Method::Update))?;
                if terminal {
                    self.with_slot(task.id, |s| s.final_edited = s.pending.is_none());
                }
                ts.clone()
            }
        };
        if terminal {
            self.finish_thread(job, &ts, &rendered).await?;
        }
        Ok(Delivered::Shown)
    }

    /// `chat.postMessage`; a render Slack refuses as too long goes again as plain text.
    async fn post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        body: &MessageBody,
    ) -> Result<String, SlackCallError> {
        lock(&self.inner.stats).posts += 1;
        match self.inner.api.post_message(channel, thread_ts, body).await {
            Err(SlackCallError::Api(code)) if refused_render(&code) => {
                tracing::warn!(code, "Slack refused the render; posting a plain one");
                lock(&self.inner.stats).posts += 1;
                self.inner
                    .api
                    .post_message(channel, thread_ts, &plain(body))
                    .await
            }
            other => other,
        }
    }

    /// `chat.update`; a render Slack refuses as too long goes again as plain text.
    async fn update(
        &self,
        channel: &str,
        ts: &str,
        body: &MessageBody,
    ) -> Result<(), SlackCallError> {
        lock(&self.inner.stats).updates += 1;
        match self.inner.api.update_message(channel, ts, body).await {
            Err(SlackCallError::Api(code)) if refused_render(&code) => {
                tracing::warn!(code, "Slack refused the render; sending a plain one");
                lock(&self.inner.stats).updates += 1;
                self.inner
                    .api
                    .update_message(channel, ts, &plain(body))
                    .await
            }
            other => other,
        }
    }

    /// Waits for the channel's next thread-posting slot, and takes it: the
    /// thread posts of one channel go at most one per [`CHANNEL_POST_INTERVAL`].
    async fn channel_slot(&self, channel: &str) {
        let at = {
            let now = Instant::now();
            let mut next = lock(&self.inner.channel_next);
            let at = next.get(channel).copied().map_or(now, |t| t.max(now));
            next.insert(channel.to_owned(), at + CHANNEL_POST_INTERVAL);
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Posts the result's continuation replies (or its file) not yet in the
    /// thread, in order, each once and paced per channel, then records that
    /// Slack shows the final state.
    async fn finish_thread(&self, job: &Job, ts: &str, rendered: &Rendered) -> Result<(), Failure> {
        let task = &job.task;
        let root = task.thread_ts.as_deref().unwrap_or(ts);
        let parts = match &rendered.file {
            Some(_) => 1,
            None => rendered.continuation.len(),
        };
        let mut posted = match job.parts_posted {
            Some(n) => n,
            None if parts == 0 => 0,
            None => {
                let seen = self.parts_in_thread(job, root).await?;
                if seen > usize::try_from(task.result_parts_posted).unwrap_or(0)
                    && let Err(err) = self.inner.log.parts_posted(task.id, seen).await
                {
                    tracing::error!(task = task.id, error = ?err, "Cannot record the posted result parts");
                }
                seen
            }
        };
        let first = posted;
        for i in first..parts {
            self.channel_slot(&task.channel_id).await;
            let (method, sent) = match (&rendered.file, rendered.continuation.get(i)) {
                (Some(file), _) => {
                    lock(&self.inner.stats).uploads += 1;
                    let sent = self
                        .inner
                        .api
                        .upload_file(&task.channel_id, root, file)
                        .await;
                    (Method::Upload, sent)
                }
                (None, Some(part)) => {
                    lock(&self.inner.stats).posts += 1;
                    let sent = self
                        .inner
                        .api
                        .post_message(&task.channel_id, Some(root), part)
                        .await;
                    (Method::Post, sent.map(drop))
                }
                (None, None) => break,
            };
            match sent {
                Ok(_) => {
                    posted = i + 1;
                    self.with_slot(task.id, |s| s.parts_posted = Some(posted));
                    if let Err(err) = self.inner.log.parts_posted(task.id, posted).await {
                        tracing::error!(task = task.id, error = ?err, "Cannot record the posted result parts");
                    }
                }
                Err(err) => {
                    // Without an answer the part may have landed: read the thread first next time.
                    let known = (!matches!(err, SlackCallError::Transport(_))).then_some(posted);
                    self.with_slot(task.id, |s| s.parts_posted = known);
                    return Err(Failure::of(method)(err));
                }
            }
        }
        self.with_slot(task.id, |s| s.parts_posted = Some(posted));
        if let Err(err) = self.inner.log.final_shown(task.id).await {
            tracing::error!(task = task.id, error = ?err, "Cannot record that the final state is shown");
        }
        Ok(())
    }

    /// Tells the requester, privately, that the task's message cannot be posted.
    fn tell_unpostable(&self, task: Task, why: String) {
        let (task, why) = match lock(&self.inner.unpostable).as_ref() {
            Some(sink) => match sink.send((task, why)) {
                Ok(()) => return,
                Err(back) => back.0,
            },
            None => (task, why),
        };
        let api = self.inner.api.clone();
        tokio::spawn(async move {
            let text = crate::replies::cannot_post(TaskId(task.id), &why);
            let thread = task.thread_ts.as_deref();
            if let Err(e) = api
                .post_ephemeral(&task.channel_id, thread, &task.requester, &text)
                .await
            {
                tracing::warn!(task = task.id, error = %e, "cannot tell the requester either");
            }
        });
    }

    /// The task's message, if Slack has it although this process never
    /// learned its ts. Read errors are retried like a failed post.
    async fn find_posted(&self, task: &Task) -> Result<Option<String>, Failure> {
        lock(&self.inner.stats).thread_reads += 1;
        // A minute before the task was created: room for clock skew.
        let oldest = format!("{}.000000", (task.created_at / 1000 - 60).max(0));
        let found = self
            .inner
            .api
            .find_message(
                &task.channel_id,
                task.thread_ts.as_deref(),
                &oldest,
                &render::message_block_id(task.id),
            )
            .await
            .map_err(Failure::of(Method::Replies))?;
        if let Some(ts) = &found {
            tracing::info!(
                task = task.id,
                ts,
                "the task's message was already posted; editing it"
            );
        }
        Ok(found)
    }

    /// Marks that task `id`'s message may already exist though no ts is
    /// known (an earlier process may have posted it just before it stopped):
    /// it is looked for in Slack before it is posted.
    pub fn may_have_posted(&self, id: i64) {
        let mut slots = lock(&self.inner.slots);
        if !slots.contains_key(&id)
            && lock(&self.inner.finished)
                .get(&id)
                .is_some_and(|done| !done.left)
        {
            // Settled here: its ts is known, or it was given up on.
            return;
        }
        let slot = slots.entry(id).or_default();
        if slot.ts.is_none() {
            slot.post_uncertain = true;
        }
    }

    /// How many of the task's continuation parts are in the thread: what
    /// Slack shows, never less than what the database recorded.
    async fn parts_in_thread(&self, job: &Job, root: &str) -> Result<usize, Failure> {
        let task = &job.task;
        let stored = usize::try_from(task.result_parts_posted).unwrap_or(0);
        lock(&self.inner.stats).thread_reads += 1;
        match self
            .inner
            .api
            .thread_block_ids(&task.channel_id, root)
            .await
        {
            Ok(ids) => {
                let seen = ids
                    .iter()
                    .filter_map(|b| render::parse_part_block_id(b))
                    .filter(|(t, _)| *t == task.id)
                    .map(|(_, n)| n)
                    .max()
                    .unwrap_or(0);
                Ok(seen.max(stored))
            }
            Err(err @ SlackCallError::RateLimited { .. }) => Err(Failure::of(Method::Replies)(err)),
            Err(err) if err.is_retryable() && job.attempts + 1 < MAX_ATTEMPTS => {
                Err(Failure::of(Method::Replies)(err))
            }
            Err(err) => {
                tracing::warn!(task = task.id, error = %err, stored, "Cannot read the task's thread; trusting the recorded count of result parts");
                Ok(stored)
            }
        }
    }
}

/// Whether Slack refused a render for its size or shape.
fn refused_render(code: &str) -> bool {
    code == "msg_too_long" || code == "invalid_blocks"
}

/// The message as plain fallback text, without blocks.
fn plain(body: &MessageBody) -> MessageBody {
    MessageBody {
        text: body.text.clone(),
        blocks: Vec::new(),
    }
}

/// The wait before retry number `attempt` (from 1) after a transient failure.
fn backoff(attempt: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(RETRY_MAX_DELAY)
}
