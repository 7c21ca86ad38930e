//! The consolidator: one Slack message per task, edited in place, within Slack's limits.
//!
//! Callers hand it the task's latest state whenever it changes; the latest
//! render wins. For each message it keeps at most one call in flight, edits
//! at most once per `edit_interval`, draws every `chat.update` from a
//! per-workspace budget (governor), serves terminal states first, pauses a
//! method for its `Retry-After` on a 429 and retries other failures with
//! backoff (backon). A terminal state is never dropped: once its final edit
//! (and any result continuation in the thread) has landed, the task is marked
//! synced in the database; a task not marked synced is shown again after a
//! restart.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::TokioClock;
use crate::model::{TaskState, now_ms};
use crate::slack::api::{MessageBody, SlackApi, SlackCallError};
use crate::slack::render::{self, Rendered};
use crate::store::{Store, Task};

/// Shortest wait after a transient failure.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest wait between retries of one message.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(60);
/// Attempts at a non-terminal render before it is dropped (a newer one will come).
const MAX_ATTEMPTS_NON_TERMINAL: u32 = 5;
/// Burst of the per-workspace `chat.update` budget.
const UPDATE_BURST: u32 = 5;

/// A Web API method the consolidator calls; 429s pause one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    /// `chat.postMessage`.
    Post,
    /// `chat.update`.
    Update,
}

/// Scheduling priority: terminal states first, then running tasks, then queue positions.
fn priority(state: TaskState) -> u8 {
    match state {
        s if s.is_terminal() => 0,
        TaskState::Running | TaskState::Dispatched => 1,
        _ => 2,
    }
}

/// What the consolidator knows about one task's message.
#[derive(Debug, Default)]
struct Slot {
    /// The latest state not yet shown, with its queue position.
    pending: Option<(Task, Option<u64>)>,
    /// A call for this message is in flight.
    in_flight: bool,
    /// The message's ts, once posted.
    ts: Option<String>,
    /// When the last edit (or post) was sent.
    last_sent: Option<Instant>,
    /// Not before this instant (backoff after a failure).
    retry_at: Option<Instant>,
    /// Failed attempts at the pending render.
    attempts: u32,
}

/// Shared state behind the handle.
struct Inner {
    /// The Web API.
    api: SlackApi,
    /// Where messages' ts and sync marks are written.
    store: Store,
    /// Per task id.
    slots: Mutex<HashMap<i64, Slot>>,
    /// Ids with something pending, so a pass does not scan idle slots.
    dirty: Mutex<HashSet<i64>>,
    /// Wakes the driver.
    wake: Notify,
    /// Shortest interval between two sends for one message.
    edit_interval: Duration,
    /// `chat.update` budget per workspace.
    budget: RateLimiter<
        String,
        governor::state::keyed::HashMapStateStore<String>,
        TokioClock,
        governor::middleware::NoOpMiddleware<std::time::Instant>,
    >,
    /// A method paused by a 429 until this instant.
    paused: Mutex<HashMap<Method, Instant>>,
    /// Counters for metrics.
    stats: Mutex<Stats>,
}

/// What the consolidator did, for metrics and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// `chat.postMessage` calls for task messages and continuations.
    pub posts: u64,
    /// `chat.update` calls.
    pub updates: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// Other failed calls.
    pub errors: u64,
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
    /// A consolidator with `updates_per_minute` `chat.update` calls per workspace.
    pub fn new(
        api: SlackApi,
        store: Store,
        edit_interval: Duration,
        updates_per_minute: u32,
    ) -> Self {
        let per_minute = NonZeroU32::new(updates_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(UPDATE_BURST.min(per_minute.get())).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Consolidator {
            inner: Arc::new(Inner {
                api,
                store,
                slots: Mutex::new(HashMap::new()),
                dirty: Mutex::new(HashSet::new()),
                wake: Notify::new(),
                edit_interval,
                budget: RateLimiter::hashmap_with_clock(quota, TokioClock),
                paused: Mutex::new(HashMap::new()),
                stats: Mutex::new(Stats::default()),
            }),
        }
    }

    /// Shows `task` as it is now (the latest call wins). `position` is its
    /// place in its queue, when queued.
    pub fn show(&self, task: Task, position: Option<u64>) {
        let id = task.id;
        {
            let mut slots = lock(&self.inner.slots);
            let slot = slots.entry(id).or_default();
            if slot.ts.is_none() {
                slot.ts = task.message_ts.clone();
            }
            // A terminal state is never replaced by an older, live one.
            let keep_old = matches!(&slot.pending, Some((old, _))
                if render::task_state(old).is_terminal() && !render::task_state(&task).is_terminal());
            if !keep_old {
                slot.pending = Some((task, position));
                slot.attempts = 0;
            }
        }
        lock(&self.inner.dirty).insert(id);
        self.inner.wake.notify_one();
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        lock(&self.inner.stats).clone()
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
            let sleep = tokio::time::sleep_until(
                next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.inner.wake.notified() => {}
                _ = sleep => {}
            }
        }
        let deadline = Instant::now() + flush_for;
        while !self.is_idle() && Instant::now() < deadline {
            let next = self
                .pass()
                .unwrap_or_else(|| Instant::now() + Duration::from_millis(50));
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep_until(next.min(deadline)) => {}
            }
        }
    }

    /// Starts every send that is due; returns when the next one will be.
    fn pass(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        let paused = lock(&self.inner.paused).clone();
        let mut ready: Vec<(u8, i64)> = Vec::new();
        {
            let mut dirty = lock(&self.inner.dirty);
            let slots = lock(&self.inner.slots);
            dirty.retain(|id| {
                let Some(slot) = slots.get(id) else {
                    return false;
                };
                let Some((task, _)) = &slot.pending else {
                    return slot.in_flight;
                };
                if slot.in_flight {
                    return true;
                }
                let method = if slot.ts.is_some() {
                    Method::Update
                } else {
                    Method::Post
                };
                let mut due = slot.retry_at.unwrap_or(now);
                if let Some(last) = slot.last_sent {
                    due = due.max(last + self.inner.edit_interval);
                }
                if let Some(p) = paused.get(&method) {
                    due = due.max(*p);
                }
                if due <= now {
                    ready.push((priority(render::task_state(task)), *id));
                } else {
                    earliest(due);
                }
                true
            });
        }
        ready.sort_unstable();
        for (_, id) in ready {
            let (task, position, ts) = {
                let mut slots = lock(&self.inner.slots);
                let Some(slot) = slots.get_mut(&id) else {
                    continue;
                };
                if slot.ts.is_some() {
                    let team = slot
                        .pending
                        .as_ref()
                        .map(|(t, _)| t.team_id.clone())
                        .unwrap_or_default();
                    if let Err(not_until) = self.inner.budget.check_key(&team) {
                        let wait = not_until.wait_time_from(tokio::time::Instant::now().into_std());
                        earliest(now + wait);
                        continue;
                    }
                }
                let Some((task, position)) = slot.pending.take() else {
                    continue;
                };
                slot.in_flight = true;
                slot.last_sent = Some(now);
                (task, position, slot.ts.clone())
            };
            let this = self.clone();
            tokio::spawn(async move { this.send(task, position, ts).await });
        }
        next
    }

    /// Sends one render: a post if the message does not exist yet, else an edit.
    async fn send(&self, task: Task, position: Option<u64>, ts: Option<String>) {
        let id = task.id;
        let state = render::task_state(&task);
        let rendered = render::render(&task, position, now_ms());
        let result = match ts {
            None => self.post(&task, &rendered).await,
            Some(ts) => self.update(&task, &ts, &rendered).await,
        };
        let mut slots = lock(&self.inner.slots);
        let Some(slot) = slots.get_mut(&id) else {
            return;
        };
        slot.in_flight = false;
        match result {
            Ok(new_ts) => {
                if let Some(ts) = new_ts {
                    slot.ts = Some(ts);
                }
                slot.retry_at = None;
                slot.attempts = 0;
                if state.is_terminal() && slot.pending.is_none() {
                    slots.remove(&id);
                }
            }
            Err(err) => {
                let method = if slot.ts.is_some() {
                    Method::Update
                } else {
                    Method::Post
                };
                slot.attempts += 1;
                let give_up = !err.is_retryable()
                    || (!state.is_terminal() && slot.attempts >= MAX_ATTEMPTS_NON_TERMINAL);
                match &err {
                    SlackCallError::RateLimited { retry_after } => {
                        lock(&self.inner.stats).rate_limited += 1;
                        let until = Instant::now() + *retry_after;
                        let mut paused = lock(&self.inner.paused);
                        let p = paused.entry(method).or_insert(until);
                        *p = (*p).max(until);
                    }
                    _ => {
                        lock(&self.inner.stats).errors += 1;
                        let delay = ExponentialBuilder::default()
                            .with_min_delay(RETRY_MIN_DELAY)
                            .with_max_delay(RETRY_MAX_DELAY)
                            .with_jitter()
                            .without_max_times()
                            .build()
                            .nth(slot.attempts.saturating_sub(1) as usize)
                            .unwrap_or(RETRY_MAX_DELAY);
                        slot.retry_at = Some(Instant::now() + delay);
                    }
                }
                if give_up {
                    tracing::warn!(task = id, error = %err, "Slack did not take the task's message; giving up on this render");
                } else if slot.pending.is_none() {
                    // Put this render back unless a newer one arrived meanwhile.
                    slot.pending = Some((task, position));
                }
            }
        }
        drop(slots);
        lock(&self.inner.dirty).insert(id);
        self.inner.wake.notify_one();
    }

    /// Posts the task's message and records its ts.
    async fn post(
        &self,
        task: &Task,
        rendered: &Rendered,
    ) -> Result<Option<String>, SlackCallError> {
        lock(&self.inner.stats).posts += 1;
        let ts = self
            .inner
            .api
            .post_message(
                &task.channel_id,
                task.thread_ts.as_deref(),
                &rendered.message,
            )
            .await?;
        if let Err(err) = self.inner.store.set_message_ts(task.id, &ts).await {
            tracing::error!(task = task.id, error = %err, "Cannot record the task's message ts");
        }
        if render::task_state(task).is_terminal() {
            self.finish_thread(task, &ts, rendered).await?;
        }
        Ok(Some(ts))
    }

    /// Edits the task's message; a terminal edit also completes the thread and marks it synced.
    async fn update(
        &self,
        task: &Task,
        ts: &str,
        rendered: &Rendered,
    ) -> Result<Option<String>, SlackCallError> {
        let state = render::task_state(task);
        if !state.is_terminal() {
            // What Slack is about to show is what a restart will show again.
            let _ = self
                .inner
                .store
                .save_progress(
                    task.id,
                    task.last_seq,
                    &task.steps,
                    task.step_count,
                    &task.output_tail,
                )
                .await;
        }
        lock(&self.inner.stats).updates += 1;
        match self
            .inner
            .api
            .update_message(&task.channel_id, ts, &rendered.message)
            .await
        {
            Err(SlackCallError::Api(code))
                if code == "msg_too_long" || code == "invalid_blocks" =>
            {
                tracing::warn!(
                    task = task.id,
                    code,
                    "Slack refused the render; sending a plain one"
                );
                let plain = MessageBody {
                    text: rendered.message.text.clone(),
                    blocks: Vec::new(),
                };
                self.inner
                    .api
                    .update_message(&task.channel_id, ts, &plain)
                    .await?;
            }
            other => other?,
        }
        if state.is_terminal() {
            self.finish_thread(task, ts, rendered).await?;
        }
        Ok(None)
    }

    /// Posts the result's continuation replies not yet posted, then marks the task synced.
    async fn finish_thread(
        &self,
        task: &Task,
        ts: &str,
        rendered: &Rendered,
    ) -> Result<(), SlackCallError> {
        let mut posted = task.result_parts_posted.max(0) as usize;
        for part in rendered.continuation.iter().skip(posted) {
            lock(&self.inner.stats).posts += 1;
            self.inner
                .api
                .post_message(&task.channel_id, Some(ts), part)
                .await?;
            posted += 1;
            let _ = self
                .inner
                .store
                .set_result_parts_posted(task.id, posted as i32)
                .await;
        }
        if let Err(err) = self
            .inner
            .store
            .mark_slack_synced(task.id, posted as i32)
            .await
        {
            tracing::error!(task = task.id, error = %err, "Cannot record that the final state is shown");
        }
        Ok(())
    }
}

/// Locks a mutex, recovering from poisoning (no invariant spans a panic here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
