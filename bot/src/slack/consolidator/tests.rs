//! The consolidator on tokio's paused clock, against an in-memory Slack that
//! records every call with its virtual start and end, enforces a per-method
//! rate limit the way Slack does (429 with `Retry-After`), answers slowly
//! when told, fails chosen calls, and notices two edits of one message in
//! flight at once. No test waits on the wall clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::*;
use crate::slack::api::FileUpload;

/// `chat.postMessage`.
const POST: &str = "chat.postMessage";
/// `chat.postEphemeral`.
const EPHEMERAL: &str = "chat.postEphemeral";
/// `chat.update`.
const UPDATE: &str = "chat.update";
/// `conversations.replies`.
const REPLIES: &str = "conversations.replies";
/// A file upload (`files.getUploadURLExternal`, the bytes, `files.completeUploadExternal`).
const UPLOAD: &str = "files.upload";
/// The edit interval every test uses (the default setting).
const INTERVAL: Duration = Duration::from_secs(1);
/// Slack's Tier 3: the default `chat.update` budget.
const TIER3: u32 = 50;
/// A budget so large it never binds, to look at one rule alone.
const UNLIMITED: u32 = 100_000;

/// One call the fake Slack received.
#[derive(Debug, Clone)]
struct Call {
    /// The Web API method.
    method: &'static str,
    /// For an edit the message's ts; for a post the thread's ts, if any.
    ts: Option<String>,
    /// What was sent.
    body: Option<MessageBody>,
    /// When it arrived.
    started: Instant,
    /// When it was answered.
    ended: Instant,
    /// What it was answered.
    answer: Result<(), SlackCallError>,
}

/// How the fake answers one chosen call.
#[derive(Debug, Clone)]
enum Scripted {
    /// Refuse it with this error; nothing lands.
    Refuse(SlackCallError),
    /// It lands, but the answer is lost on the way back.
    LandThenLose,
}

/// A message in the fake's channel.
#[derive(Debug, Clone)]
struct Posted {
    /// The thread it replies in.
    thread_ts: Option<String>,
    /// Its content.
    body: MessageBody,
}

/// A sliding-window limit on one method.
#[derive(Debug)]
struct Limit {
    /// Calls served per window.
    max: usize,
    /// The window.
    window: Duration,
    /// When the calls in the window were served.
    served: VecDeque<Instant>,
}

/// The fake's state.
#[derive(Debug, Default)]
struct FakeState {
    /// Every call, in arrival order (appended when answered).
    calls: Vec<Call>,
    /// Calls so far per method, counting the one arriving.
    counts: HashMap<&'static str, usize>,
    /// Messages by ts.
    messages: BTreeMap<String, Posted>,
    /// The last ts handed out.
    next_ts: u64,
    /// Rate limits per method.
    limits: HashMap<&'static str, Limit>,
    /// Chosen answers by method and call number (from 0).
    script: HashMap<(&'static str, usize), Scripted>,
    /// How long each method takes to answer.
    latency: HashMap<&'static str, Duration>,
    /// Messages with an edit in flight.
    editing: HashSet<String>,
    /// Edits that arrived while another edit of the same message was in flight.
    races: usize,
    /// Files shared, in order.
    files: Vec<FileUpload>,
}

/// An in-memory Slack for the consolidator, on tokio's clock.
#[derive(Debug, Default)]
struct FakeSlack(Mutex<FakeState>);

impl FakeSlack {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        lock(&self.0)
    }

    /// Serve at most `max` calls of `method` per sliding `window`; answer 429 beyond.
    fn limit(&self, method: &'static str, max: usize, window: Duration) {
        self.state().limits.insert(
            method,
            Limit {
                max,
                window,
                served: VecDeque::new(),
            },
        );
    }

    /// Answer call number `n` (from 0) of `method` as scripted.
    fn script(&self, method: &'static str, n: usize, answer: Scripted) {
        self.state().script.insert((method, n), answer);
    }

    /// Every call of `method` takes this long to answer.
    fn latency(&self, method: &'static str, by: Duration) {
        self.state().latency.insert(method, by);
    }

    /// Every call of `method`, in the order answered.
    fn calls(&self, method: &str) -> Vec<Call> {
        let state = self.state();
        state
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// The calls of `method` Slack took.
    fn taken(&self, method: &str) -> Vec<Call> {
        let mut calls = self.calls(method);
        calls.retain(|c| c.answer.is_ok());
        calls
    }

    /// Block ids of the replies in the thread of `root`, in order.
    fn thread(&self, root: &str) -> Vec<String> {
        let state = self.state();
        state
            .messages
            .values()
            .filter(|m| m.thread_ts.as_deref() == Some(root))
            .flat_map(|m| block_ids(&m.body))
            .collect()
    }

    /// Edits that raced another edit of the same message.
    fn races(&self) -> usize {
        self.state().races
    }

    /// 429 answers so far.
    fn rate_limited(&self) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| matches!(c.answer, Err(SlackCallError::RateLimited { .. })))
            .count()
    }

    /// Takes one call: waits its latency, decides its answer, records it.
    async fn call(
        &self,
        method: &'static str,
        ts: Option<&str>,
        body: Option<&MessageBody>,
    ) -> Result<String, SlackCallError> {
        let started = Instant::now();
        let (n, latency) = {
            let mut state = self.state();
            let n = *state
                .counts
                .entry(method)
                .and_modify(|c| *c += 1)
                .or_insert(1)
                - 1;
            if method == UPDATE
                && let Some(ts) = ts
                && !state.editing.insert(ts.to_owned())
            {
                state.races += 1;
            }
            (n, state.latency.get(method).copied().unwrap_or_default())
        };
        tokio::time::sleep(latency).await;
        let now = Instant::now();
        let mut state = self.state();
        if method == UPDATE
            && let Some(ts) = ts
        {
            state.editing.remove(ts);
        }
        let scripted = state.script.remove(&(method, n));
        let limited = state.limits.get_mut(method).and_then(|limit| {
            while limit
                .served
                .front()
                .is_some_and(|t| now.duration_since(*t) >= limit.window)
            {
                limit.served.pop_front();
            }
            if limit.served.len() >= limit.max {
                let oldest = limit.served.front().copied().unwrap_or(now);
                let wait = limit.window.saturating_sub(now.duration_since(oldest));
                Some(SlackCallError::RateLimited {
                    retry_after: Duration::from_secs(wait.as_secs_f64().ceil() as u64),
                })
            } else {
                limit.served.push_back(now);
                None
            }
        });
        let (answer, lands) = match (scripted, limited) {
            (Some(Scripted::Refuse(err)), _) => (Err(err), false),
            (Some(Scripted::LandThenLose), _) => (
                Err(SlackCallError::Transport("connection reset".into())),
                true,
            ),
            (None, Some(err)) => (Err(err), false),
            (None, None) => (Ok(()), true),
        };
        let mut new_ts = String::new();
        if lands && (method == POST || method == UPLOAD) {
            state.next_ts += 1;
            new_ts = format!("1700000000.{:06}", state.next_ts);
            let posted = Posted {
                thread_ts: ts.map(str::to_owned),
                body: body.cloned().unwrap_or_else(|| {
                    plain(&MessageBody {
                        text: String::new(),
                        blocks: Vec::new(),
                    })
                }),
            };
            state.messages.insert(new_ts.clone(), posted);
        }
        if lands
            && method == UPDATE
            && let (Some(ts), Some(body)) = (ts, body)
            && let Some(m) = state.messages.get_mut(ts)
        {
            m.body = body.clone();
        }
        state.calls.push(Call {
            method,
            ts: ts.map(str::to_owned),
            body: body.cloned(),
            started,
            ended: now,
            answer: answer.clone(),
        });
        answer.map(|()| new_ts)
    }
}

/// The block ids of a message's blocks.
fn block_ids(body: &MessageBody) -> Vec<String> {
    let blocks = serde_json::to_value(&body.blocks).unwrap();
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["block_id"].as_str().map(str::to_owned))
        .collect()
}

impl ChatApi for FakeSlack {
    fn post_message<'a>(
        &'a self,
        _channel: &'a str,
        thread_ts: Option<&'a str>,
        body: &'a MessageBody,
    ) -> BoxFuture<'a, Result<String, SlackCallError>> {
        Box::pin(self.call(POST, thread_ts, Some(body)))
    }

    fn update_message<'a>(
        &'a self,
        _channel: &'a str,
        ts: &'a str,
        body: &'a MessageBody,
    ) -> BoxFuture<'a, Result<(), SlackCallError>> {
        Box::pin(async move { self.call(UPDATE, Some(ts), Some(body)).await.map(drop) })
    }

    fn thread_block_ids<'a>(
        &'a self,
        _channel: &'a str,
        thread_ts: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, SlackCallError>> {
        Box::pin(async move {
            self.call(REPLIES, Some(thread_ts), None).await?;
            let state = self.state();
            Ok(state
                .messages
                .iter()
                .filter(|(ts, m)| *ts == thread_ts || m.thread_ts.as_deref() == Some(thread_ts))
                .flat_map(|(_, m)| block_ids(&m.body))
                .collect())
        })
    }

    fn upload_file<'a>(
        &'a self,
        _channel: &'a str,
        thread_ts: &'a str,
        file: &'a FileUpload,
    ) -> BoxFuture<'a, Result<(), SlackCallError>> {
        Box::pin(async move {
            let before = self.state().messages.len();
            let answer = self
                .call(UPLOAD, Some(thread_ts), Some(&file.comment))
                .await;
            let mut state = self.state();
            if state.messages.len() > before {
                // It landed (whether or not its answer did).
                state.files.push(file.clone());
            }
            answer.map(drop)
        })
    }

    fn post_ephemeral<'a>(
        &'a self,
        _channel: &'a str,
        thread_ts: Option<&'a str>,
        _user: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), SlackCallError>> {
        Box::pin(async move {
            let body = MessageBody {
                text: text.to_owned(),
                blocks: Vec::new(),
            };
            self.call(EPHEMERAL, thread_ts, Some(&body)).await.map(drop)
        })
    }

    fn find_message<'a>(
        &'a self,
        _channel: &'a str,
        thread_ts: Option<&'a str>,
        _oldest: &'a str,
        block_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SlackCallError>> {
        Box::pin(async move {
            self.call(REPLIES, thread_ts, None).await?;
            let state = self.state();
            Ok(state
                .messages
                .iter()
                .find(|(ts, m)| {
                    let in_place = match thread_ts {
                        Some(root) => *ts == root || m.thread_ts.as_deref() == Some(root),
                        None => m.thread_ts.is_none(),
                    };
                    in_place && block_ids(&m.body).iter().any(|b| b == block_id)
                })
                .map(|(ts, _)| ts.clone()))
        })
    }
}

/// What the consolidator recorded, per task.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Logged {
    /// The message's ts.
    ts: Option<String>,
    /// Continuation parts recorded as posted.
    parts: usize,
    /// Marked as showing its final state.
    synced: bool,
    /// Live states recorded.
    progress: usize,
}

/// An in-memory [`MessageLog`]; another process may edit the messages.
#[derive(Debug, Default)]
struct MemLog {
    /// What is recorded of each task's message.
    rows: Mutex<HashMap<i64, Logged>>,
    /// Another process edits every message until then (its claim lapses
    /// with its lease); `None`: nobody else.
    other_editor_until: Mutex<Option<Instant>>,
    /// The hand-overs announced to it, by task, in order.
    handed_over: Mutex<Vec<i64>>,
    /// What other processes wrote of each task (its claim reads it).
    elsewhere: Mutex<HashMap<i64, Recorded>>,
}

impl MemLog {
    fn get(&self, task: i64) -> Logged {
        lock(&self.rows).get(&task).cloned().unwrap_or_default()
    }

    fn with(&self, task: i64, f: impl FnOnce(&mut Logged)) -> BoxFuture<'_, anyhow::Result<()>> {
        f(lock(&self.rows).entry(task).or_default());
        Box::pin(async { Ok(()) })
    }
}

impl MessageLog for MemLog {
    fn message_posted<'a>(&'a self, task: i64, ts: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        self.with(task, |l| l.ts = Some(ts.to_owned()))
    }

    fn progress_shown<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<()>> {
        self.with(task.id, |l| l.progress += 1)
    }

    fn parts_posted(&self, task: i64, parts: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        self.with(task, |l| l.parts = l.parts.max(parts))
    }

    fn final_shown(&self, task: i64) -> BoxFuture<'_, anyhow::Result<()>> {
        self.with(task, |l| l.synced = true)
    }

    fn claim_message<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<Claim>> {
        let mine = lock(&self.other_editor_until).is_none_or(|until| Instant::now() >= until);
        let claim = match mine {
            true => Claim::Mine(
                lock(&self.elsewhere)
                    .get(&task.id)
                    .cloned()
                    .unwrap_or_default(),
            ),
            false => Claim::Elsewhere,
        };
        Box::pin(async move { Ok(claim) })
    }

    fn hand_over(&self, task: i64) -> BoxFuture<'_, anyhow::Result<()>> {
        lock(&self.handed_over).push(task);
        Box::pin(async { Ok(()) })
    }
}

/// A fake Slack, a log, and a running consolidator with `per_minute` updates a minute.
struct Rig {
    slack: Arc<FakeSlack>,
    log: Arc<MemLog>,
    consolidator: Consolidator,
    driver: tokio::task::JoinHandle<()>,
}

impl Rig {
    fn new(per_minute: u32) -> Rig {
        Self::with(Arc::default(), Arc::default(), per_minute)
    }

    /// A consolidator (as after a restart) on an existing Slack and log.
    fn with(slack: Arc<FakeSlack>, log: Arc<MemLog>, per_minute: u32) -> Rig {
        let consolidator = Consolidator::new(slack.clone(), log.clone(), INTERVAL, per_minute);
        let driver = tokio::spawn(
            consolidator
                .clone()
                .run(std::future::pending::<()>(), Duration::ZERO),
        );
        Rig {
            slack,
            log,
            consolidator,
            driver,
        }
    }

    /// Waits (on virtual time) until nothing is pending or in flight.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(3600);
        while !self.consolidator.is_idle() {
            assert!(Instant::now() < deadline, "the consolidator never settled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The chat.update calls Slack took for message `ts`.
    fn edits_of(&self, ts: &str) -> Vec<Call> {
        let mut edits = self.slack.taken(UPDATE);
        edits.retain(|c| c.ts.as_deref() == Some(ts));
        edits
    }
}

/// A task in `state`, in channel C1 of workspace T1.
fn task(id: i64, state: TaskState) -> Task {
    Task {
        id,
        persona: "code".into(),
        project: "web".into(),
        prompt: format!("do thing {id}"),
        requester: "U1".into(),
        team_id: "T1".into(),
        channel_id: "C1".into(),
        thread_ts: None,
        message_ts: None,
        state: state.as_str().into(),
        agent: Some("a1".into()),
        parent_id: None,
        session_id: None,
        model: None,
        created_at: 0,
        updated_at: 0,
        queued_at: 0,
        dispatched_at: None,
        started_at: None,
        finished_at: None,
        last_seq: 0,
        cancel_requested: false,
        wait_reason: None,
        steps: "[]".into(),
        step_count: 0,
        output_tail: String::new(),
        result: None,
        result_meta: None,
        error: None,
        failure_cause: None,
        slack_synced: false,
        result_parts_posted: 0,
        retried_as: None,
        after_task: None,
        session_agent: None,
        approvals: Vec::new(),
    }
}

/// `t` after step number `n`.
fn stepped(t: &Task, n: i64) -> Task {
    let mut t = t.clone();
    t.step_count = n;
    t.last_seq = n;
    t.steps = serde_json::to_string(&[format!("step {n}")]).unwrap();
    t
}

/// `t`, completed with `result`.
fn completed(t: &Task, result: &str) -> Task {
    let mut t = t.clone();
    t.state = TaskState::Completed.as_str().into();
    t.result = Some(result.to_owned());
    t
}

/// Everything a message shows: fallback text and blocks.
fn shown(call: &Call) -> String {
    let body = call.body.as_ref().expect("a body");
    format!(
        "{}\n{}",
        body.text,
        serde_json::to_string(&body.blocks).unwrap()
    )
}

/// The step number a call shows.
fn step_of(call: &Call) -> u64 {
    let text = shown(call);
    let at = text.find("step ").expect("a step") + "step ".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// Whether a call shows a task's final state.
fn is_final(call: &Call) -> bool {
    shown(call).contains("*Completed*")
}

/// Posts task `id`'s message (running) and waits for its ts.
async fn posted(rig: &Rig, id: i64) -> (Task, String) {
    let t = task(id, TaskState::Running);
    rig.consolidator.show(t.clone(), None);
    rig.settle().await;
    let ts = rig.log.get(id).ts.expect("the message was posted");
    let mut t = t;
    t.message_ts = Some(ts.clone());
    (t, ts)
}

#[tokio::test(start_paused = true)]
async fn a_thousand_progress_events_in_a_minute_give_about_one_edit_a_second() {
    let rig = Rig::new(UNLIMITED);
    let (t, ts) = posted(&rig, 1).await;
    let start = Instant::now();
    for n in 1..=1000 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        rig.consolidator.show(stepped(&t, n), None);
    }
    let ended = Instant::now();
    assert_eq!(ended - start, Duration::from_secs(60));
    rig.consolidator
        .show(completed(&stepped(&t, 1000), "all done"), None);
    rig.settle().await;

    let edits = rig.edits_of(&ts);
    assert!(
        (55..=61).contains(&edits.len()),
        "about one edit a second, at most 61: {} edits",
        edits.len()
    );
    for pair in edits.windows(2) {
        assert!(
            pair[1].started - pair[0].started >= INTERVAL,
            "two edits less than a second apart"
        );
    }
    let last = edits.last().unwrap();
    assert!(is_final(last) && shown(last).contains("all done"));
    assert!(
        edits[..edits.len() - 1].iter().all(|c| !is_final(c)),
        "the final state is the last edit"
    );
    assert!(
        last.started - ended <= Duration::from_millis(1500),
        "final edit {:?} after the end",
        last.started - ended
    );
    assert_eq!(
        rig.slack.taken(POST).len(),
        1,
        "one message, never a second"
    );
    assert!(rig.log.get(1).synced);
}

#[tokio::test(start_paused = true)]
async fn two_hundred_chatty_tasks_stay_within_the_workspace_budget() {
    let rig = Rig::new(TIER3);
    // Slack's Tier 3, the way Slack answers it: beyond 50 a minute, 429.
    rig.slack.limit(UPDATE, TIER3 as usize, BUDGET_WINDOW);
    let tasks: Vec<Task> = (1..=200).map(|id| task(id, TaskState::Running)).collect();
    for t in &tasks {
        rig.consolidator.show(t.clone(), None);
    }
    for n in 1..=600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in &tasks {
            rig.consolidator.show(stepped(t, n), None);
        }
    }
    let ended = Instant::now();
    for t in &tasks {
        rig.consolidator.show(
            completed(&stepped(t, 600), &format!("result {}", t.id)),
            None,
        );
    }
    rig.settle().await;

    assert_eq!(
        rig.slack.rate_limited(),
        0,
        "no 429 at all, let alone a storm"
    );
    let edits = rig.slack.taken(UPDATE);
    for (i, first) in edits.iter().enumerate() {
        let in_window = edits[i..]
            .iter()
            .take_while(|c| c.started - first.started < BUDGET_WINDOW)
            .count();
        assert!(
            in_window <= TIER3 as usize,
            "{in_window} edits in the minute from {:?}",
            first.started
        );
    }
    let posts = rig.slack.taken(POST);
    assert_eq!(posts.len(), 200, "one message per task");
    let mut last_final = ended;
    for t in &tasks {
        let log = rig.log.get(t.id);
        assert!(log.synced, "task {} never showed its final state", t.id);
        let ts = log.ts.unwrap();
        let last = rig.edits_of(&ts).pop().expect("edited");
        assert!(
            is_final(&last) && shown(&last).contains(&format!("result {}", t.id)),
            "task {} ends on {}",
            t.id,
            shown(&last)
        );
        last_final = last_final.max(last.started);
    }
    // 200 final edits at about 46 a minute (50 in any minute, a burst of 5 included).
    assert!(
        last_final - ended <= Duration::from_secs(5 * 60),
        "the last final state took {:?}",
        last_final - ended
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_the_method_for_its_retry_after_and_loses_nothing() {
    let rig = Rig::new(UNLIMITED);
    let (t, ts) = posted(&rig, 1).await;
    let retry_after = Duration::from_secs(7);
    rig.slack.script(
        UPDATE,
        2,
        Scripted::Refuse(SlackCallError::RateLimited { retry_after }),
    );
    let mut second_posted = None;
    for n in 1..=200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rig.consolidator.show(stepped(&t, n), None);
        // A new task's message during the pause: posting is another method.
        if n == 40 {
            rig.consolidator.show(task(2, TaskState::Queued), None);
            second_posted = Some(Instant::now());
        }
    }
    rig.consolidator
        .show(completed(&stepped(&t, 200), "done despite 429"), None);
    rig.settle().await;

    let attempts: Vec<Call> = rig
        .slack
        .calls(UPDATE)
        .into_iter()
        .filter(|c| c.ts.as_deref() == Some(ts.as_str()))
        .collect();
    let refused = attempts
        .iter()
        .position(|c| c.answer.is_err())
        .expect("the 429");
    assert_eq!(rig.slack.rate_limited(), 1);
    assert_eq!(rig.consolidator.stats().rate_limited, 1);
    let next = &attempts[refused + 1];
    let waited = next.started - attempts[refused].ended;
    assert!(
        waited >= retry_after && waited < retry_after + INTERVAL,
        "waited {waited:?} after a 429 asking for {retry_after:?}"
    );
    // The edit after the pause shows the latest state, not the refused one.
    assert!(step_of(next) >= step_of(&attempts[refused]) + 60);
    let post_2 = rig.slack.taken(POST)[1].clone();
    assert!(
        post_2.started - second_posted.unwrap() < Duration::from_millis(50),
        "posting a new message waited for the chat.update pause"
    );
    let last = attempts.last().unwrap();
    assert!(last.answer.is_ok() && shown(last).contains("done despite 429"));
    assert!(rig.log.get(1).synced);
}

#[tokio::test(start_paused = true)]
async fn an_edit_in_flight_is_never_raced_by_another() {
    let rig = Rig::new(UNLIMITED);
    let (t, ts) = posted(&rig, 1).await;
    // Slack takes 2.5 s per edit, longer than the edit interval.
    rig.slack.latency(UPDATE, Duration::from_millis(2500));
    for n in 1..=600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        rig.consolidator.show(stepped(&t, n), None);
    }
    rig.consolidator
        .show(completed(&stepped(&t, 600), "slow but right"), None);
    rig.settle().await;

    assert_eq!(rig.slack.races(), 0, "two edits of one message in flight");
    let edits = rig.edits_of(&ts);
    for pair in edits.windows(2) {
        assert!(pair[1].started >= pair[0].ended, "overlapping edits");
    }
    assert!(edits.len() >= 10, "it kept editing: {}", edits.len());
    assert!(shown(edits.last().unwrap()).contains("slow but right"));
}

#[tokio::test(start_paused = true)]
async fn terminal_states_are_served_before_progress() {
    let rig = Rig::new(TIER3);
    let tasks: Vec<Task> = (1..=30).map(|id| task(id, TaskState::Running)).collect();
    for t in &tasks {
        rig.consolidator.show(t.clone(), None);
    }
    let mut n = 0;
    // 30 chatty tasks use up the budget...
    for _ in 0..300 {
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in &tasks {
            rig.consolidator.show(stepped(t, n), None);
        }
    }
    // ...when ten of them end; the others keep going for a minute.
    let ended = Instant::now();
    for t in &tasks[..10] {
        rig.consolidator
            .show(completed(&stepped(t, n), "over"), None);
    }
    for _ in 0..600 {
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in &tasks[10..] {
            rig.consolidator.show(stepped(t, n), None);
        }
    }
    rig.settle().await;

    let edits = rig.slack.taken(UPDATE);
    let finals: Vec<&Call> = edits.iter().filter(|c| is_final(c)).collect();
    assert_eq!(finals.len(), 10);
    let last_final = finals.iter().map(|c| c.started).max().unwrap();
    // Once due (an edit interval after the end at the latest), every edit
    // is a final one until all ten have landed.
    let progress_between: Vec<&Call> = edits
        .iter()
        .filter(|c| !is_final(c) && c.started >= ended + INTERVAL && c.started <= last_final)
        .collect();
    assert!(
        progress_between.is_empty(),
        "{} progress edits went before a final one",
        progress_between.len()
    );
    // Ten budget periods of about 1.3 s, and the interval.
    assert!(
        last_final - ended <= Duration::from_secs(15),
        "the finals took {:?}",
        last_final - ended
    );
}

#[tokio::test(start_paused = true)]
async fn the_final_edit_lands_within_a_second_and_a_half_when_the_budget_allows() {
    for offset_ms in (0..1300).step_by(100) {
        let rig = Rig::new(TIER3);
        let (t, ts) = posted(&rig, 1).await;
        let mut n = 0;
        let run_for = Duration::from_secs(20) + Duration::from_millis(offset_ms);
        let start = Instant::now();
        while Instant::now() - start < run_for {
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            rig.consolidator.show(stepped(&t, n), None);
        }
        let ended = Instant::now();
        rig.consolidator
            .show(completed(&stepped(&t, n), "fin"), None);
        rig.settle().await;
        let last = rig.edits_of(&ts).pop().unwrap();
        assert!(is_final(&last));
        assert!(
            last.started - ended <= Duration::from_millis(1500),
            "ended {offset_ms} ms into a second: final edit after {:?}",
            last.started - ended
        );
        rig.driver.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn other_failures_are_retried_with_backoff_and_the_final_state_lands() {
    let rig = Rig::new(UNLIMITED);
    let (t, ts) = posted(&rig, 1).await;
    for n in 0..3 {
        rig.slack.script(
            UPDATE,
            n,
            Scripted::Refuse(SlackCallError::Api("internal_error".into())),
        );
    }
    rig.consolidator
        .show(completed(&t, "after three failures"), None);
    rig.settle().await;
    let attempts = rig.slack.calls(UPDATE);
    assert_eq!(attempts.len(), 4, "three failures, then success");
    for pair in attempts.windows(2) {
        assert!(pair[1].started - pair[0].ended >= RETRY_MIN_DELAY);
    }
    assert!(shown(rig.edits_of(&ts).last().unwrap()).contains("after three failures"));
    assert_eq!(rig.consolidator.stats().errors, 3);
    assert!(rig.log.get(1).synced);
}

#[tokio::test(start_paused = true)]
async fn a_late_live_render_never_overwrites_the_final_state() {
    let rig = Rig::new(UNLIMITED);
    let (t, ts) = posted(&rig, 1).await;
    rig.consolidator.show(completed(&t, "the end"), None);
    rig.settle().await;
    rig.consolidator.show(stepped(&t, 99), None);
    rig.settle().await;
    let edits = rig.edits_of(&ts);
    assert_eq!(edits.len(), 1);
    assert!(is_final(&edits[0]));
}

/// A Markdown result of `sections` sections of about 1,800 characters.
fn result_of(sections: usize) -> String {
    (1..=sections)
        .map(|i| format!("## Part {i}\n\n{}\n", "All good here. ".repeat(120)))
        .collect()
}

/// A Markdown result long enough for the most continuation replies there are.
fn long_result() -> String {
    result_of(5)
}

/// A result of `lines` lines, far too long for the thread: it goes as a file.
fn huge_result(lines: usize) -> String {
    (1..=lines)
        .map(|i| format!("line {i} of the report\n"))
        .collect()
}

/// The parts `t`'s result renders to.
fn parts_of(t: &Task) -> usize {
    render::render(t, None, 0).continuation.len()
}

#[tokio::test(start_paused = true)]
async fn continuation_replies_are_posted_once_each_across_failed_posts() {
    let rig = Rig::new(UNLIMITED);
    let (t, ts) = posted(&rig, 1).await;
    let done = completed(&t, &long_result());
    let parts = parts_of(&done);
    assert_eq!(parts, render::MAX_CONTINUATION_REPLIES);
    // Post 0 was the message. Part 2 lands but its answer is lost; part 3 is
    // refused once, then rate limited once.
    rig.slack.script(POST, 2, Scripted::LandThenLose);
    rig.slack.script(
        POST,
        3,
        Scripted::Refuse(SlackCallError::Api("internal_error".into())),
    );
    rig.slack.script(
        POST,
        4,
        Scripted::Refuse(SlackCallError::RateLimited {
            retry_after: Duration::from_secs(3),
        }),
    );
    rig.consolidator.show(done, None);
    rig.settle().await;

    let want: Vec<String> = (1..=parts).map(|n| render::part_block_id(1, n)).collect();
    assert_eq!(rig.slack.thread(&ts), want, "each part once, in order");
    assert_eq!(rig.log.get(1).parts, parts);
    assert!(rig.log.get(1).synced);
    assert_eq!(
        rig.edits_of(&ts).len(),
        1,
        "the message is edited once; only the thread is retried"
    );
    assert!(rig.consolidator.stats().thread_reads >= 1);
}

#[tokio::test(start_paused = true)]
async fn continuation_replies_are_posted_once_each_across_a_restart() {
    let rig = Rig::new(UNLIMITED);
    let (t, ts) = posted(&rig, 1).await;
    let done = completed(&t, &long_result());
    let parts = parts_of(&done);
    // Part 3 lands, and the bot dies before it hears so: the log says 2.
    rig.slack.script(POST, 3, Scripted::LandThenLose);
    rig.consolidator.show(done.clone(), None);
    while rig.slack.calls(POST).len() < 4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rig.driver.abort();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(rig.log.get(1).parts, 2);
    assert!(!rig.log.get(1).synced);

    // The restarted bot shows the task again from the database.
    let restarted = Rig::with(rig.slack.clone(), rig.log.clone(), UNLIMITED);
    let mut from_db = done;
    from_db.result_parts_posted = restarted.log.get(1).parts as i32;
    restarted.consolidator.show(from_db, None);
    restarted.settle().await;

    let want: Vec<String> = (1..=parts).map(|n| render::part_block_id(1, n)).collect();
    assert_eq!(
        restarted.slack.thread(&ts),
        want,
        "each part once, in order"
    );
    assert_eq!(restarted.log.get(1).parts, parts);
    assert!(restarted.log.get(1).synced);
}

#[tokio::test(start_paused = true)]
async fn the_budget_never_lets_more_than_the_setting_into_a_minute() {
    for per_minute in [1, 3, 5, 6, 7, 20, 50, 120, 1_000] {
        let budget: Budget = RateLimiter::hashmap_with_clock(update_quota(per_minute), TokioClock);
        let mut allowed: Vec<Instant> = Vec::new();
        let start = Instant::now();
        while Instant::now() - start < Duration::from_secs(300) {
            while budget.check_key(&"T1".to_owned()).is_ok() {
                allowed.push(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        for (i, first) in allowed.iter().enumerate() {
            let in_window = allowed[i..]
                .iter()
                .take_while(|t| **t - *first < BUDGET_WINDOW)
                .count();
            assert!(
                in_window <= per_minute as usize,
                "{in_window} calls in a minute with a budget of {per_minute}"
            );
        }
        // And it is not much stricter than asked: over five minutes, at least
        // 85 % of the setting per minute.
        assert!(
            allowed.len() as f64 >= 5.0 * 0.85 * f64::from(per_minute),
            "{} calls in five minutes with a budget of {per_minute}",
            allowed.len()
        );
    }
}

/// A large budget is a large rate: the quota's period is not rounded up to
/// a whole millisecond (which capped it near 1,000 calls a second). Looked
/// at every millisecond (tokio's timer), the burst bounds it at 5,000.
#[tokio::test(start_paused = true)]
async fn a_large_budget_lets_thousands_of_edits_a_second_through() {
    let per_minute = 600_000;
    let budget: Budget = RateLimiter::hashmap_with_clock(update_quota(per_minute), TokioClock);
    let start = Instant::now();
    let mut allowed = 0u32;
    while Instant::now() - start < Duration::from_secs(1) {
        while budget.check_key(&"T1".to_owned()).is_ok() {
            allowed += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        allowed >= 4_500,
        "{allowed} calls in a second with a budget of {per_minute} a minute"
    );
}

/// The messages Slack holds for task `id` (by the block id of their first block).
fn messages_of(rig: &Rig, id: i64) -> usize {
    let want = render::message_block_id(id);
    rig.slack
        .state()
        .messages
        .values()
        .filter(|m| block_ids(&m.body).contains(&want))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_post_whose_answer_was_lost_is_found_not_posted_again() {
    let rig = Rig::new(UNLIMITED);
    rig.slack.script(POST, 0, Scripted::LandThenLose);
    let t = task(1, TaskState::Running);
    rig.consolidator.show(t.clone(), None);
    rig.settle().await;
    assert_eq!(messages_of(&rig, 1), 1, "one message for the task");
    let ts = rig
        .log
        .get(1)
        .ts
        .expect("its ts was learned by reading Slack");
    rig.consolidator.show(completed(&t, "done"), None);
    rig.settle().await;
    assert!(is_final(rig.edits_of(&ts).last().expect("edited")));
    assert_eq!(messages_of(&rig, 1), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_bot_finds_the_message_an_earlier_process_posted() {
    let rig = Rig::new(UNLIMITED);
    let t = task(1, TaskState::Running);
    rig.consolidator.show(t.clone(), None);
    rig.settle().await;
    let ts = rig.log.get(1).ts.expect("posted");
    rig.driver.abort();

    // The process died before it stored the ts: the database has none.
    let restarted = Rig::with(rig.slack.clone(), Arc::default(), UNLIMITED);
    restarted.consolidator.may_have_posted(1);
    restarted.consolidator.show(completed(&t, "done"), None);
    restarted.settle().await;
    assert_eq!(messages_of(&restarted, 1), 1, "not posted twice");
    assert_eq!(restarted.log.get(1).ts.as_deref(), Some(ts.as_str()));
    assert!(is_final(restarted.edits_of(&ts).last().expect("edited")));
    // A task that was never posted is posted once after the lookup.
    restarted.consolidator.may_have_posted(2);
    restarted
        .consolidator
        .show(task(2, TaskState::Queued), Some(1));
    restarted.settle().await;
    assert_eq!(messages_of(&restarted, 2), 1);
}

#[tokio::test(start_paused = true)]
async fn a_message_slack_refuses_for_good_is_explained_to_the_requester_once() {
    let rig = Rig::new(UNLIMITED);
    for n in 0..3 {
        rig.slack.script(
            POST,
            n,
            Scripted::Refuse(SlackCallError::Api("not_in_channel".into())),
        );
    }
    let t = task(1, TaskState::Running);
    rig.consolidator.show(t.clone(), None);
    rig.settle().await;
    rig.consolidator.show(stepped(&t, 1), None);
    rig.settle().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let told = rig.slack.taken(EPHEMERAL);
    assert_eq!(told.len(), 1, "told once");
    let text = shown(&told[0]);
    assert!(
        text.contains("#1") && text.contains("not_in_channel"),
        "{text}"
    );
}

/// The thread posts (continuation replies and shared files) that Slack took, in order.
fn thread_posts(rig: &Rig) -> Vec<Call> {
    let mut posts: Vec<Call> = rig
        .slack
        .taken(POST)
        .into_iter()
        .chain(rig.slack.taken(UPLOAD))
        .filter(|c| c.ts.is_some())
        .collect();
    posts.sort_by_key(|c| c.started);
    posts
}

#[tokio::test(start_paused = true)]
async fn a_result_of_three_replies_stays_in_the_thread_and_a_longer_one_goes_as_a_file() {
    let rig = Rig::new(UNLIMITED);
    let (t1, ts1) = posted(&rig, 1).await;
    let (t2, ts2) = posted(&rig, 2).await;
    let fits = completed(&t1, &result_of(5));
    let longer = completed(&t2, &result_of(6));
    assert_eq!(parts_of(&fits), render::MAX_CONTINUATION_REPLIES);
    rig.consolidator.show(fits, None);
    rig.consolidator.show(longer.clone(), None);
    rig.settle().await;

    let want: Vec<String> = (1..=3).map(|n| render::part_block_id(1, n)).collect();
    assert_eq!(rig.slack.thread(&ts1), want, "three replies, no file");
    assert_eq!(rig.log.get(1).parts, 3);
    let files = rig.slack.state().files.clone();
    assert_eq!(files.len(), 1, "one file, for the longer result");
    assert_eq!(files[0].filename, "task-2.md");
    assert_eq!(Some(files[0].content.as_str()), longer.result.as_deref());
    assert_eq!(
        rig.slack.thread(&ts2),
        vec![render::part_block_id(2, 1)],
        "only the file in the longer one's thread"
    );
    let final_edit = rig.edits_of(&ts2).pop().expect("the final edit");
    let text = shown(&final_edit);
    assert!(text.contains("Part 1") && text.contains("Part 2"), "{text}");
    assert!(!text.contains("Part 4"), "only the beginning: {text}");
    assert!(text.contains("the whole result is in the file `task-2.md`"));
    assert_eq!(rig.log.get(2).parts, 1);
    assert!(rig.log.get(1).synced && rig.log.get(2).synced);
}

#[tokio::test(start_paused = true)]
async fn a_six_thousand_line_result_is_uploaded_once_across_a_lost_answer() {
    let rig = Rig::new(UNLIMITED);
    let (t, ts) = posted(&rig, 1).await;
    let done = completed(&t, &huge_result(6_000));
    // The first upload is shared but its answer is lost; the second is refused.
    rig.slack.script(UPLOAD, 0, Scripted::LandThenLose);
    rig.consolidator.show(done.clone(), None);
    rig.settle().await;

    let files = rig.slack.state().files.clone();
    assert_eq!(files.len(), 1, "uploaded once");
    assert_eq!(Some(files[0].content.as_str()), done.result.as_deref());
    assert_eq!(
        rig.slack.calls(UPLOAD).len(),
        1,
        "not tried again once seen"
    );
    assert_eq!(rig.slack.thread(&ts), vec![render::part_block_id(1, 1)]);
    assert!(
        rig.slack.taken(POST).iter().all(|c| c.ts.is_none()),
        "no replies"
    );
    assert_eq!(rig.log.get(1).parts, 1);
    assert!(rig.log.get(1).synced);
    assert!(rig.consolidator.stats().thread_reads >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_bot_does_not_upload_the_file_again() {
    let rig = Rig::new(UNLIMITED);
    let (t, _ts) = posted(&rig, 1).await;
    let done = completed(&t, &huge_result(6_000));
    rig.slack.script(UPLOAD, 0, Scripted::LandThenLose);
    rig.consolidator.show(done.clone(), None);
    while rig.slack.calls(UPLOAD).is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rig.driver.abort();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(rig.log.get(1).parts, 0);

    let restarted = Rig::with(rig.slack.clone(), rig.log.clone(), UNLIMITED);
    restarted.consolidator.show(done, None);
    restarted.settle().await;
    assert_eq!(restarted.slack.state().files.len(), 1, "uploaded once");
    assert_eq!(restarted.log.get(1).parts, 1);
    assert!(restarted.log.get(1).synced);
}

#[tokio::test(start_paused = true)]
async fn thread_posts_of_one_channel_are_paced_and_other_channels_are_not_held() {
    let rig = Rig::new(UNLIMITED);
    let (t1, _) = posted(&rig, 1).await;
    let (t2, _) = posted(&rig, 2).await;
    let (t3, _) = posted(&rig, 3).await;
    let mut elsewhere = completed(&t3, &result_of(5));
    elsewhere.channel_id = "C2".into();
    elsewhere.message_ts = t3.message_ts.clone();
    // Two long results in C1 at once (six replies), and one in C2.
    rig.consolidator.show(completed(&t1, &result_of(5)), None);
    rig.consolidator
        .show(completed(&t2, &huge_result(6_000)), None);
    rig.consolidator.show(elsewhere, None);
    let start = Instant::now();
    rig.settle().await;

    let posts = thread_posts(&rig);
    assert_eq!(
        posts.len(),
        3 + 1 + 3,
        "three replies, a file, three replies"
    );
    let in_c1: Vec<&Call> = posts
        .iter()
        .filter(|c| c.ts.as_deref() != t3.message_ts.as_deref())
        .collect();
    assert_eq!(in_c1.len(), 4);
    for pair in in_c1.windows(2) {
        let gap = pair[1].started.duration_since(pair[0].started);
        assert!(gap >= CHANNEL_POST_INTERVAL, "a burst: {gap:?} apart");
    }
    let in_c2: Vec<&Call> = posts
        .iter()
        .filter(|c| c.ts.as_deref() == t3.message_ts.as_deref())
        .collect();
    assert!(
        in_c2[0].started.duration_since(start) < CHANNEL_POST_INTERVAL,
        "C2's first reply waited for C1's"
    );
    for pair in in_c2.windows(2) {
        assert!(pair[1].started.duration_since(pair[0].started) >= CHANNEL_POST_INTERVAL);
    }
}

/// Another process edits the message and dies without a word (it posted
/// the message, and did not live to record its ts): each new render is
/// handed over to it (announced, however many came before), then claimed
/// again until its lease lapses, past four rechecks in a row; the final
/// render then edits the message it posted.
#[tokio::test(start_paused = true)]
async fn a_render_handed_over_to_a_dead_editor_is_shown_once_its_claim_lapses() {
    let t = task(1, TaskState::Running);
    let editor = Rig::new(UNLIMITED);
    editor.consolidator.show(t.clone(), None);
    editor.settle().await;
    let ts = editor.log.get(1).ts.expect("posted");
    editor.driver.abort();

    let log = Arc::new(MemLog::default());
    let start = Instant::now();
    *lock(&log.other_editor_until) = Some(start + Duration::from_secs(14));
    let rig = Rig::with(editor.slack.clone(), log, UNLIMITED);
    rig.consolidator.show(stepped(&t, 1), None);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(rig.edits_of(&ts).is_empty(), "the other process edits it");
    rig.consolidator.show(completed(&t, "the end"), None);
    assert!(rig.consolidator.has_final(1));
    rig.settle().await;
    assert_eq!(
        *lock(&rig.log.handed_over),
        [1, 1],
        "one announcement per render"
    );
    assert_eq!(messages_of(&rig, 1), 1, "not posted twice");
    let edits = rig.edits_of(&ts);
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert!(is_final(&edits[0]));
    assert!(edits[0].started >= start + Duration::from_secs(14));
    assert!(rig.log.get(1).synced);
}

/// Another process posted the task's message and recorded its ts, then
/// the message came to this one (it took over the task's agent): the ts
/// read with the claim is edited, and nothing is posted again.
#[tokio::test(start_paused = true)]
async fn a_message_another_process_posted_is_edited_not_posted_again() {
    let t = task(1, TaskState::Running);
    let poster = Rig::new(UNLIMITED);
    poster.consolidator.show(t.clone(), None);
    poster.settle().await;
    let ts = poster.log.get(1).ts.expect("posted");
    poster.driver.abort();

    let log = Arc::new(MemLog::default());
    lock(&log.elsewhere).insert(
        1,
        Recorded {
            ts: Some(ts.clone()),
            ended: false,
        },
    );
    let rig = Rig::with(poster.slack.clone(), log, UNLIMITED);
    rig.consolidator.show(stepped(&t, 1), None);
    rig.settle().await;
    assert_eq!(messages_of(&rig, 1), 1, "not posted twice");
    assert_eq!(rig.edits_of(&ts).len(), 1, "the step is shown in it");
}

/// Another process ended the task (its agent moved there): a live render
/// this process still had is stale, and is not shown over the final one.
#[tokio::test(start_paused = true)]
async fn a_live_render_of_a_task_ended_elsewhere_is_not_shown() {
    let rig = Rig::new(UNLIMITED);
    let t = task(1, TaskState::Running);
    rig.consolidator.show(t.clone(), None);
    rig.settle().await;
    let ts = rig.log.get(1).ts.expect("posted");
    lock(&rig.log.elsewhere).insert(
        1,
        Recorded {
            ts: Some(ts.clone()),
            ended: true,
        },
    );
    rig.consolidator.show(stepped(&t, 1), None);
    rig.settle().await;
    assert!(rig.edits_of(&ts).is_empty(), "the stale render is dropped");
    assert_eq!(rig.log.get(1).progress, 0, "and not recorded as shown");

    // Without the other process's end the same render is shown.
    lock(&rig.log.elsewhere).remove(&1);
    rig.consolidator.show(stepped(&t, 2), None);
    rig.settle().await;
    assert_eq!(rig.edits_of(&ts).len(), 1);
}

/// A live editor keeps the message: the final render is announced to it,
/// claimed again for a while, then left to it, and this process no longer
/// counts it as its own to show.
#[tokio::test(start_paused = true)]
async fn a_final_render_is_left_to_a_live_editor() {
    let rig = Rig::new(UNLIMITED);
    *lock(&rig.log.other_editor_until) = Some(Instant::now() + Duration::from_secs(3600));
    let t = task(1, TaskState::Running);
    rig.consolidator.show(completed(&t, "the end"), None);
    assert!(rig.consolidator.has_final(1));
    rig.settle().await;
    assert_eq!(*lock(&rig.log.handed_over), [1]);
    assert!(
        rig.slack.state().calls.is_empty(),
        "nothing is sent to Slack"
    );
    assert!(!rig.consolidator.has_final(1), "left to the editor");
    assert!(!rig.log.get(1).synced);
    // A late live render of it is still stale here.
    rig.consolidator.show(stepped(&t, 3), None);
    rig.settle().await;
    assert_eq!(*lock(&rig.log.handed_over), [1], "nothing more to announce");
}
