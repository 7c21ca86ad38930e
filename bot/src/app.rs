//! The bot's core: creating tasks, dispatching them, applying agents' events,
//! cancel and retry, the sweeps (accept timeouts, queue TTL, lost agents) and
//! recovery after a restart.
//!
//! Every state change goes through the database first (a guarded update);
//! memory (the hub, the live task views) follows what the database says.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_shared::protocol::{AgentMessage, BotMessage, ErrorCode, Hello, Submit};
use baton_shared::{Persona, ProjectName, TaskId};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::breaker::Outcome;
use crate::clock::{TokioClock, WallClock};
use crate::hub::{Hub, Route, WaitReason};
use crate::model::TaskState;
use crate::personas;
use crate::replies;
use crate::settings::Settings;
use crate::slack::api::{MessageBody, SlackApi};
use crate::slack::consolidator::{Consolidator, lock};
use crate::slack::render::{OUTPUT_TAIL_KEPT_CHARS, SHOWN_STEPS};
use crate::store::{Ending, NewTask, Progress, Requeued, Store, Task};

/// How often the sweeps run.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often old Slack event ids are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// How long a Slack event id is remembered (Slack retries for minutes).
pub const EVENT_ID_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How many times a cancel reads the task again when it moved meanwhile.
const CANCEL_ROUNDS: usize = 3;
/// Queued tasks a dispatch pass reads, routes and claims at once.
pub const DISPATCH_BATCH: u64 = 64;
/// How long a slash command's `response_url` is kept for its task (Slack
/// accepts posts to it for 30 minutes).
pub const RESPONSE_URL_KEPT: Duration = Duration::from_secs(30 * 60);

/// A request for a task, from a slash command, a mention, a thread reply or a retry.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// The persona.
    pub persona: Persona,
    /// `--project`, when given.
    pub project: Option<ProjectName>,
    /// What to do.
    pub prompt: String,
    /// The Slack user.
    pub requester: String,
    /// The workspace.
    pub team_id: String,
    /// The channel.
    pub channel_id: String,
    /// The thread the request came from.
    pub thread_ts: Option<String>,
    /// The task it retries or follows up.
    pub parent_id: Option<i64>,
    /// The session to resume.
    pub session_id: Option<String>,
    /// The slash command's `response_url`: where the person hears of what
    /// goes wrong after the acknowledgement (its message cannot be posted).
    pub response_url: Option<String>,
}

type UserLimiter = RateLimiter<
    String,
    governor::state::keyed::HashMapStateStore<String>,
    TokioClock,
    governor::middleware::NoOpMiddleware<std::time::Instant>,
>;

/// The bot's shared state.
pub struct App {
    /// Settings.
    pub settings: Settings,
    /// The database.
    pub store: Store,
    /// The Web API.
    pub slack: SlackApi,
    /// Task messages.
    pub consolidator: Consolidator,
    /// Connected agents.
    pub hub: Hub,
    /// Wall clock (queue TTL).
    pub clock: Arc<dyn WallClock>,
    /// Wakes the dispatcher.
    pub dispatch_wake: Notify,
    /// Dispatched tasks waiting for `accepted`: agent and deadline.
    awaiting: Mutex<HashMap<i64, (String, Instant)>>,
    /// Dispatched and running tasks, with their latest progress.
    live: Mutex<HashMap<i64, Task>>,
    /// What each queued task's message last showed: position and reason.
    queue_shown: Mutex<HashMap<i64, (u64, Option<String>)>>,
    /// Channel → bound project (None: not bound), as read from the database;
    /// cleared by [`App::bind_project`], which also bumps the generation (a
    /// read that raced a bind is not kept). Every `/baton` needs it.
    bindings: Mutex<(u64, HashMap<String, Option<String>>)>,
    /// Slack user ids allowed to use `/baton-admin`.
    admins: HashSet<String>,
    /// Per-user task creation limit.
    user_limiter: UserLimiter,
    /// Set on SIGTERM: no new work.
    pub shutting_down: AtomicBool,
    /// Time from a task entering its queue to its submit frame going out.
    pub dispatch_latency: crate::metrics::Histogram,
    /// The `response_url` of the slash command that created a task, and
    /// when it was kept (forgotten after [`RESPONSE_URL_KEPT`]).
    response_urls: Mutex<HashMap<i64, (String, Instant)>>,
    /// Tasks whose message Slack refused for good, from the consolidator;
    /// the dispatcher takes the receiver.
    unpostable: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Task, String)>>>,
    /// What Slack said about people, user groups and channels (access control).
    pub directory: crate::access::Directory,
    /// What is not ready, for `/readyz`.
    pub readiness: crate::selfcheck::Readiness,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// An error for the person, or an internal failure.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Shown to the person as is.
    #[error("{0}")]
    User(String),
    /// Logged; the person sees a generic message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl RequestError {
    /// The text the person sees.
    pub fn user_text(&self) -> String {
        match self {
            RequestError::User(s) => s.clone(),
            RequestError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                replies::internal_error()
            }
        }
    }
}

fn outcome_of(msg: &AgentMessage) -> Outcome {
    match msg {
        AgentMessage::Completed { .. } => Outcome::Success,
        AgentMessage::Failed { cause, .. } if cause.counts_against_agent() => Outcome::Failure,
        _ => Outcome::Ignored,
    }
}

impl App {
    /// Builds the state.
    pub fn new(
        settings: Settings,
        store: Store,
        slack: SlackApi,
        clock: Arc<dyn WallClock>,
    ) -> Self {
        let consolidator = Consolidator::new(
            Arc::new(slack.clone()),
            Arc::new(store.clone()),
            Duration::from_millis(settings.edit_interval_ms),
            settings.slack_updates_per_minute,
        );
        let window = Duration::from_secs(settings.rate_limit_window_secs.max(1));
        let burst = NonZeroU32::new(settings.rate_limit_tasks.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(window / burst.get())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let (unpostable_tx, unpostable) = tokio::sync::mpsc::unbounded_channel();
        consolidator.report_unpostable(unpostable_tx);
        App {
            hub: Hub::new(settings.breaker()),
            admins: settings.admin_ids().into_iter().collect(),
            settings,
            store,
            slack,
            consolidator,
            clock,
            dispatch_wake: Notify::new(),
            awaiting: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            queue_shown: Mutex::new(HashMap::new()),
            bindings: Mutex::new((0, HashMap::new())),
            user_limiter: RateLimiter::hashmap_with_clock(quota, TokioClock),
            shutting_down: AtomicBool::new(false),
            dispatch_latency: crate::metrics::Histogram::new(&crate::metrics::DISPATCH_BUCKETS),
            response_urls: Mutex::new(HashMap::new()),
            unpostable: Mutex::new(Some(unpostable)),
            directory: crate::access::Directory::default(),
            readiness: crate::selfcheck::Readiness::default(),
        }
    }

    /// Whether admins are configured at all.
    pub fn has_admins(&self) -> bool {
        !self.admins.is_empty()
    }

    /// Whether the user is an admin.
    pub fn is_admin(&self, user: &str) -> bool {
        self.admins.contains(user)
    }

    // ---- creating tasks ----

    /// Picks the task's project: `--project`, the channel's binding, or the only one.
    async fn resolve_project(
        &self,
        explicit: Option<&ProjectName>,
        channel: &str,
    ) -> Result<String, RequestError> {
        // The channel's binding first: the common case needs one query.
        if explicit.is_none()
            && let Some(bound) = self.binding(channel).await?
        {
            return Ok(bound);
        }
        let known = self.store.project_names().await?;
        if let Some(p) = explicit {
            return if known.iter().any(|k| k == p.as_str()) {
                Ok(p.to_string())
            } else {
                Err(RequestError::User(replies::unknown_project(
                    p.as_str(),
                    &known,
                )))
            };
        }
        match known.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(RequestError::User(replies::no_project(&known))),
        }
    }

    /// The project `channel` is bound to, if any (cached).
    async fn binding(&self, channel: &str) -> anyhow::Result<Option<String>> {
        let generation = {
            let cache = lock(&self.bindings);
            if let Some(known) = cache.1.get(channel) {
                return Ok(known.clone());
            }
            cache.0
        };
        let bound = self.store.project_for_channel(channel).await?;
        let mut cache = lock(&self.bindings);
        if cache.0 == generation {
            cache.1.insert(channel.to_owned(), bound.clone());
        }
        Ok(bound)
    }

    /// Forgets what a task's queued message last showed: the task left its
    /// queue another way than through the dispatcher or a cancel (a purge).
    pub fn forget_queued(&self, id: i64) {
        lock(&self.queue_shown).remove(&id);
    }

    /// Binds `channel` to `project`: its tasks go there from now on.
    pub async fn bind_project(&self, project: &str, channel: &str) -> anyhow::Result<()> {
        self.store.bind_project(project, channel).await?;
        // A binding moved: forget them all (binding is rare).
        let mut cache = lock(&self.bindings);
        cache.0 += 1;
        cache.1.clear();
        Ok(())
    }

    /// Validates, writes and dispatches a new task. Nothing is written when it is refused.
    ///
    /// Runs to its end even if the caller stops waiting (Slack's HTTP request
    /// closed): a task written dispatched must also be handed out, or nothing
    /// would ever time it out.
    pub async fn create_task(self: &Arc<Self>, req: TaskRequest) -> Result<Task, RequestError> {
        let app = self.clone();
        tokio::spawn(async move { app.create_task_now(req).await })
            .await
            .map_err(|e| RequestError::Internal(anyhow::anyhow!("task creation stopped: {e}")))?
    }

    async fn create_task_now(&self, req: TaskRequest) -> Result<Task, RequestError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(RequestError::User(replies::shutting_down()));
        }
        let project = self
            .resolve_project(req.project.as_ref(), &req.channel_id)
            .await?;
        // Who may start what: one check for every way a task is created.
        self.check_start(&req, &project).await?;
        // An agent that can take it now is chosen before it is written, so it
        // is written dispatched to that agent: one write, not insert then claim.
        let routed = self.hub.route_new(&project);
        let release = |routed: &Result<(Route, i64), WaitReason>| {
            if let Ok((route, placeholder)) = routed {
                self.hub
                    .release(&route.agent, *placeholder, Outcome::Ignored);
            }
        };
        // The bound is on the queue: a task an agent takes now does not join it.
        if routed.is_err() && self.store.queue_len(&project).await? >= self.settings.queue_max {
            return Err(RequestError::User(replies::queue_full(
                &project,
                self.settings.queue_max,
            )));
        }
        if let Err(not_until) = self.user_limiter.check_key(&req.requester) {
            release(&routed);
            let wait = not_until.wait_time_from(tokio::time::Instant::now().into_std());
            return Err(RequestError::User(replies::rate_limited(
                wait.as_secs().max(1),
            )));
        }
        let response_url = req.response_url.clone().filter(|u| !u.is_empty());
        let new = NewTask {
            queued_at: self.clock.now_ms(),
            persona: req.persona.as_str().to_owned(),
            project,
            prompt: req.prompt,
            requester: req.requester,
            team_id: req.team_id,
            channel_id: req.channel_id,
            thread_ts: req.thread_ts,
            parent_id: req.parent_id,
            session_id: req.session_id,
            agent: routed.as_ref().ok().map(|(route, _)| route.agent.clone()),
        };
        let written = match &routed {
            Ok(_) => self.store.insert_task(new).await,
            // It joins the queue only if the queue has room: the bound is
            // checked by the insert itself (the check above is a fast path).
            Err(_) => {
                let project = new.project.clone();
                let max = self.settings.queue_max;
                match self.store.insert_queued_task(new, max).await {
                    Ok(Some(task)) => Ok(task),
                    Ok(None) => {
                        return Err(RequestError::User(replies::queue_full(&project, max)));
                    }
                    Err(err) => Err(err),
                }
            }
        };
        let task = match written {
            Ok(task) => task,
            Err(err) => {
                release(&routed);
                return Err(err.into());
            }
        };
        tracing::info!(task = task.id, project = %task.project, "task created");
        if let Some(url) = response_url {
            lock(&self.response_urls).insert(task.id, (url, Instant::now()));
        }
        match routed {
            Ok((route, placeholder)) => {
                self.hub.bind_new(&route.agent, placeholder, task.id);
                self.hand_out(task.clone(), &route).await;
            }
            Err(reason) => {
                self.show_queued(&task.project).await;
                tracing::debug!(task = task.id, reason = reason.describe(), "task waits");
            }
        }
        Ok(task)
    }

    /// Sends a task claimed for `route`'s agent to it, starts its accept
    /// timeout and shows it. A task that cannot be sent (its project name is not
    /// a valid one, which the names' sources rule out) fails visibly rather than
    /// stay dispatched with nothing to time it out.
    async fn hand_out(&self, task: Task, route: &Route) {
        let Ok(project) = ProjectName::new(task.project.clone()) else {
            tracing::error!(task = task.id, project = %task.project, "task has an invalid project name");
            self.hub.release(&route.agent, task.id, Outcome::Ignored);
            let ending = Ending::Failed {
                error: format!("`{}` is not a valid project name.", task.project),
                cause: "invalid".into(),
                session_id: None,
            };
            let from = [TaskState::Dispatched];
            if let Err(err) = self.store.finish(task.id, None, None, &from, &ending).await {
                tracing::error!(task = task.id, error = ?err, "cannot record the task's end");
            }
            self.show_from_db(task.id).await;
            return;
        };
        let persona: Persona = task.persona.parse().unwrap_or_default();
        let def = personas::definition(persona);
        let submit = BotMessage::Submit(Box::new(Submit {
            task: TaskId(task.id),
            project,
            persona,
            prompt: task.prompt.clone(),
            session_id: task.session_id.clone(),
            system_prompt: Some(def.system_prompt.to_owned()),
            allowed_tools: def.allowed_tools.iter().map(|t| (*t).to_owned()).collect(),
            model: task.model.clone(),
        }));
        let mut task = task;
        task.state = TaskState::Dispatched.as_str().to_owned();
        task.agent = Some(route.agent.clone());
        task.wait_reason = None;
        // As the claim wrote: a new holder's sequence numbers start over.
        task.last_seq = 0;
        lock(&self.live).insert(task.id, task.clone());
        lock(&self.queue_shown).remove(&task.id);
        let deadline = Instant::now() + Duration::from_secs(self.settings.dispatch_timeout_secs);
        lock(&self.awaiting).insert(task.id, (route.agent.clone(), deadline));
        // If the connection is gone, the accept timeout puts the task back.
        let _ = route.tx.send(crate::hub::Outgoing::Frame(submit));
        let waited = (self.clock.now_ms() - task.queued_at).max(0) as u64;
        self.dispatch_latency.observe(Duration::from_millis(waited));
        tracing::info!(task = task.id, agent = %route.agent, "task dispatched");
        self.consolidator.show(task, None);
    }

    /// Hands queued tasks to agents with room, in queue order, then refreshes
    /// what the still-queued tasks' messages say.
    pub async fn dispatch_pass(&self) {
        let projects = match self.store.projects_with_queue().await {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(error = ?err, "cannot read the queues");
                return;
            }
        };
        for project in projects {
            'project: loop {
                let room = self.hub.projects_with_room();
                if !room.contains(&project) {
                    break;
                }
                let batch = match self.store.queued(&project, DISPATCH_BATCH).await {
                    Ok(b) if !b.is_empty() => b,
                    _ => break,
                };
                // Route the batch in queue order (each route holds a slot on its
                // agent), then claim it with one statement per agent.
                let mut routed = Vec::with_capacity(batch.len());
                let mut full = false;
                for task in batch {
                    match self.hub.route(&task.project, task.id) {
                        Ok(route) => routed.push((task, route)),
                        Err(_) => {
                            full = true;
                            break;
                        }
                    }
                }
                let (claimed, failed) = self.claim_routed(&routed).await;
                // As for a single claim: a database error ends this pass.
                full |= failed;
                for (task, route) in routed {
                    if !claimed.contains(&task.id) {
                        // No longer queued (cancelled meanwhile), or the claim failed.
                        self.hub.release(&route.agent, task.id, Outcome::Ignored);
                        continue;
                    }
                    self.hand_out(task, &route).await;
                }
                if full {
                    break 'project;
                }
            }
            self.show_queued(&project).await;
        }
    }

    /// Claims routed tasks for their agents, one statement per agent. Returns
    /// the ids claimed, and whether a claim failed (then none of that agent's is).
    async fn claim_routed(&self, routed: &[(Task, Route)]) -> (HashSet<i64>, bool) {
        let mut by_agent: HashMap<&str, Vec<i64>> = HashMap::new();
        for (task, route) in routed {
            by_agent.entry(&route.agent).or_default().push(task.id);
        }
        let mut claimed = HashSet::new();
        let mut failed = false;
        for (agent, ids) in by_agent {
            match self.store.claim_many(&ids, agent).await {
                Ok(got) => claimed.extend(got),
                Err(err) => {
                    tracing::error!(agent, error = ?err, "cannot claim queued tasks");
                    failed = true;
                }
            }
        }
        (claimed, failed)
    }

    /// Updates the messages of a project's queued tasks whose position or reason changed.
    async fn show_queued(&self, project: &str) {
        let reason = self
            .hub
            .why_waiting(project)
            .map(|r| r.describe().to_owned());
        let Ok(queued) = self
            .store
            .queued(project, self.settings.queue_max.max(1))
            .await
        else {
            return;
        };
        for (i, mut task) in queued.into_iter().enumerate() {
            let pos = i as u64 + 1;
            let changed = {
                let mut shown = lock(&self.queue_shown);
                let now = (pos, reason.clone());
                let changed = shown.get(&task.id) != Some(&now);
                shown.insert(task.id, now);
                changed
            };
            if changed {
                if let Some(r) = &reason {
                    if task.wait_reason.as_deref() != Some(r) {
                        let _ = self.store.set_wait_reason(task.id, r).await;
                    }
                    task.wait_reason = Some(r.clone());
                }
                self.consolidator.show(task, Some(pos));
            }
        }
    }

    // ---- events from agents ----

    /// Applies one event from `agent`. Returns the frames to answer with.
    pub async fn apply_event(&self, agent: &str, msg: AgentMessage) -> Vec<BotMessage> {
        let Some((task_id, seq)) = msg.task_seq() else {
            return Vec::new();
        };
        let id = task_id.0;
        let seq_i = seq as i64;
        // Any event but a `busy` says the agent may have room again.
        match &msg {
            AgentMessage::Rejected {
                reason: baton_shared::protocol::RejectReason::Busy,
                ..
            } => self.hub.set_full(agent),
            _ => self.hub.heard_from(agent),
        }
        let ack = BotMessage::Ack { task: task_id, seq };
        let is_final = msg.is_final();

        let mut live = lock(&self.live).get(&id).cloned();
        if live.is_none() && matches!(msg, AgentMessage::Accepted { .. }) {
            live = self.rebind_late(agent, id).await;
        }
        let Some(mut task) = live.filter(|t| t.agent.as_deref() == Some(agent)) else {
            // Not a task this agent holds now: a duplicate of something applied,
            // a stale event, or another agent's task. Never applied.
            let known = self.store.task(id).await.ok().flatten();
            let ours = known
                .as_ref()
                .is_some_and(|t| t.agent.as_deref() == Some(agent));
            let mut out = Vec::new();
            if is_final {
                // Let the agent forget it: it was applied before, or can never be.
                out.push(ack);
            }
            if !ours {
                out.push(BotMessage::Error {
                    code: ErrorCode::Unexpected,
                    message: format!(
                        "task {task_id} is not assigned to agent {agent}; event ignored"
                    ),
                });
                if matches!(msg, AgentMessage::Accepted { .. }) {
                    out.push(BotMessage::Cancel { task: task_id });
                }
            }
            return out;
        };
        if seq_i <= task.last_seq {
            return if is_final { vec![ack] } else { Vec::new() };
        }

        match msg {
            AgentMessage::Accepted { .. } => {
                lock(&self.awaiting).remove(&id);
                match self.store.mark_running(id, agent, seq_i).await {
                    Ok(true) => {
                        task.state = TaskState::Running.as_str().to_owned();
                        task.last_seq = seq_i;
                        task.started_at = Some(crate::model::now_ms());
                        lock(&self.live).insert(id, task.clone());
                        let cancel = task.cancel_requested;
                        self.consolidator.show(task, None);
                        if cancel {
                            return vec![BotMessage::Cancel { task: task_id }];
                        }
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(task = id, error = ?err, "cannot mark task running")
                    }
                }
                Vec::new()
            }
            AgentMessage::Rejected {
                reason, message, ..
            } => {
                lock(&self.awaiting).remove(&id);
                lock(&self.live).remove(&id);
                self.hub.release(agent, id, Outcome::Ignored);
                if reason.is_transient() {
                    // A task with a cancel asked for ends here instead.
                    if let Ok(Requeued::Cancelled) = self
                        .store
                        .requeue_or_cancel(id, agent, reason_text(reason))
                        .await
                    {
                        self.show_from_db(id).await;
                    }
                } else {
                    let ending = Ending::Failed {
                        error: format!("Agent {agent} refused the task: {message}"),
                        cause: "rejected".into(),
                        session_id: None,
                    };
                    let _ = self
                        .store
                        .finish(
                            id,
                            Some(agent),
                            Some(seq_i),
                            &[TaskState::Dispatched],
                            &ending,
                        )
                        .await;
                    self.show_from_db(id).await;
                }
                self.dispatch_wake.notify_one();
                Vec::new()
            }
            AgentMessage::Step { text, .. } => {
                let mut steps: Vec<String> = serde_json::from_str(&task.steps).unwrap_or_default();
                steps.push(text);
                if steps.len() > SHOWN_STEPS {
                    steps.drain(..steps.len() - SHOWN_STEPS);
                }
                task.steps = serde_json::to_string(&steps).unwrap_or_else(|_| "[]".into());
                task.step_count += 1;
                self.progress(task, seq_i);
                Vec::new()
            }
            AgentMessage::Output { text, .. } => {
                task.output_tail.push_str(&text);
                let tail =
                    crate::slack::mrkdwn::tail_chars(&task.output_tail, OUTPUT_TAIL_KEPT_CHARS)
                        .to_owned();
                task.output_tail = tail;
                self.progress(task, seq_i);
                Vec::new()
            }
            AgentMessage::Completed { .. }
            | AgentMessage::Failed { .. }
            | AgentMessage::Cancelled { .. } => {
                let outcome = outcome_of(&msg);
                let ending = match msg {
                    AgentMessage::Completed { result, .. } => Ending::Completed {
                        meta: crate::model::ResultMeta {
                            cost_usd: result.cost_usd,
                            input_tokens: result.input_tokens,
                            output_tokens: result.output_tokens,
                            num_turns: result.num_turns,
                            duration_ms: result.duration_ms,
                        },
                        text: result.text,
                        session_id: result.session_id,
                    },
                    AgentMessage::Failed {
                        error,
                        cause,
                        session_id,
                        ..
                    } => Ending::Failed {
                        error: format!("{}: {error}", cause.describe()),
                        cause: serde_json::to_value(cause)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        session_id,
                    },
                    _ => Ending::Cancelled {
                        note: "Cancelled.".into(),
                    },
                };
                // The end and the progress shown so far, in one statement that returns the row.
                let progress = Progress {
                    steps_json: &task.steps,
                    step_count: task.step_count,
                    output_tail: &task.output_tail,
                };
                match self
                    .store
                    .finish_with_progress(
                        id,
                        agent,
                        seq_i,
                        &[TaskState::Dispatched, TaskState::Running],
                        &ending,
                        progress,
                    )
                    .await
                {
                    Ok(ended) => {
                        lock(&self.live).remove(&id);
                        lock(&self.awaiting).remove(&id);
                        self.hub.release(agent, id, outcome);
                        match ended {
                            Some(ended) => self.consolidator.show(ended, None),
                            None => self.show_from_db(id).await,
                        }
                        self.dispatch_wake.notify_one();
                        tracing::info!(task = id, agent, "task ended");
                        vec![ack]
                    }
                    Err(err) => {
                        // Not acknowledged: the agent keeps the result and sends it again.
                        tracing::error!(task = id, error = ?err, "cannot record the task's end");
                        Vec::new()
                    }
                }
            }
            AgentMessage::Hello(_) | AgentMessage::Draining => Vec::new(),
        }
    }

    /// A late `accepted` for a task whose accept timeout put it back in the
    /// queue: if it is still queued, it is bound to this agent again (the agent
    /// recorded it and runs it, so it must not go anywhere else).
    async fn rebind_late(&self, agent: &str, id: i64) -> Option<Task> {
        let task = self.store.task(id).await.ok().flatten()?;
        if task.state != TaskState::Queued.as_str() {
            return None;
        }
        if !self.hub.is_connected(agent) || !self.store.claim(id, agent).await.ok()? {
            return None;
        }
        tracing::info!(
            task = id,
            agent,
            "late accept: the task stays with this agent"
        );
        self.hub.adopt(agent, id, &task.project);
        lock(&self.queue_shown).remove(&id);
        let mut task = self.store.task(id).await.ok().flatten()?;
        task.last_seq = 0;
        lock(&self.live).insert(id, task.clone());
        Some(task)
    }

    fn progress(&self, mut task: Task, seq: i64) {
        task.last_seq = seq;
        lock(&self.live).insert(task.id, task.clone());
        self.consolidator.show(task, None);
    }

    async fn show_from_db(&self, id: i64) {
        match self.store.task(id).await {
            Ok(Some(task)) => self.consolidator.show(task, None),
            Ok(None) => {}
            Err(err) => tracing::error!(task = id, error = ?err, "cannot read the task to show it"),
        }
    }

    /// Reconciles what the bot believes an agent holds with its hello.
    pub async fn reconcile(&self, agent: &str, hello: &Hello) -> anyhow::Result<Vec<BotMessage>> {
        let running: HashSet<i64> = hello.running.iter().map(|t| t.0).collect();
        let held: HashSet<i64> = hello.held_results.iter().map(|t| t.0).collect();
        let mut out = Vec::new();
        let mine = self
            .store
            .agent_tasks(agent, &[TaskState::Dispatched, TaskState::Running])
            .await?;
        let mine_ids: HashSet<i64> = mine.iter().map(|t| t.id).collect();
        for mut task in mine {
            let state: TaskState = task.state.parse().unwrap_or(TaskState::Running);
            if running.contains(&task.id) || held.contains(&task.id) {
                self.hub.adopt(agent, task.id, &task.project);
                lock(&self.awaiting).remove(&task.id);
                if state == TaskState::Dispatched && running.contains(&task.id) {
                    self.store.force_running(task.id, agent).await?;
                    task.state = TaskState::Running.as_str().to_owned();
                    task.started_at = Some(crate::model::now_ms());
                    self.consolidator.show(task.clone(), None);
                }
                if task.cancel_requested {
                    out.push(BotMessage::Cancel {
                        task: TaskId(task.id),
                    });
                }
                // The database's row replaces what memory held (its state may
                // be stale: "dispatched" for a task that runs); progress
                // applied in memory but not yet written is kept.
                let mut live = lock(&self.live);
                if let Some(mem) = live.get(&task.id)
                    && mem.last_seq > task.last_seq
                {
                    task.steps.clone_from(&mem.steps);
                    task.step_count = mem.step_count;
                    task.output_tail.clone_from(&mem.output_tail);
                    task.last_seq = mem.last_seq;
                }
                live.insert(task.id, task);
            } else if state == TaskState::Dispatched {
                // The agent never recorded it: safe to send anywhere.
                lock(&self.awaiting).remove(&task.id);
                lock(&self.live).remove(&task.id);
                self.hub.release(agent, task.id, Outcome::Ignored);
                if self
                    .store
                    .requeue_or_cancel(task.id, agent, "agent reconnected without it")
                    .await?
                    == Requeued::Cancelled
                {
                    self.show_from_db(task.id).await;
                }
            } else {
                lock(&self.live).remove(&task.id);
                self.hub.release(agent, task.id, Outcome::Failure);
                let ending = Ending::Failed {
                    error: format!(
                        "agent restarted: {agent} came back without this task; use Retry to run it again"
                    ),
                    cause: "agent_restarted".into(),
                    session_id: None,
                };
                self.store
                    .finish(task.id, Some(agent), None, &[TaskState::Running], &ending)
                    .await?;
                self.show_from_db(task.id).await;
            }
        }
        // Tasks the agent runs that are no longer its own (re-queued, ended): stop them.
        for t in running.difference(&mine_ids) {
            out.push(BotMessage::Cancel { task: TaskId(*t) });
        }
        self.dispatch_wake.notify_one();
        Ok(out)
    }

    // ---- cancel and retry ----

    /// Cancels a task for `user`. Returns the reply for the person. A
    /// second cancel (a double click) changes nothing and says so.
    pub async fn cancel(&self, id: TaskId, user: &str) -> Result<String, RequestError> {
        let task = self.actionable_task(id, user, "cancel").await?;
        // The task may move between reading it and changing it (dispatched,
        // put back in its queue, ended): each change is guarded, so read again.
        let mut task = task;
        for _ in 0..CANCEL_ROUNDS {
            let state: TaskState = task.state.parse().unwrap_or(TaskState::Failed);
            if state.is_terminal() {
                return Err(RequestError::User(replies::already_ended(id, state)));
            }
            if state == TaskState::Queued {
                let ending = Ending::Cancelled {
                    note: format!("Cancelled by <@{user}> while queued."),
                };
                if self
                    .store
                    .finish(id.0, None, None, &[TaskState::Queued], &ending)
                    .await?
                {
                    lock(&self.queue_shown).remove(&id.0);
                    self.show_from_db(id.0).await;
                    self.show_queued(&task.project).await;
                    return Ok(replies::cancel_requested(id, true));
                }
            } else if task.cancel_requested {
                return Ok(replies::cancel_already_requested(id));
            } else if self.store.set_cancel_requested(id.0).await? {
                if let Some(agent) = task.agent.as_deref() {
                    if let Some(t) = lock(&self.live).get_mut(&id.0) {
                        t.cancel_requested = true;
                    }
                    // Delivered now if connected; otherwise on reconnect (reconciliation).
                    self.hub.send(agent, BotMessage::Cancel { task: id });
                }
                return Ok(replies::cancel_requested(id, false));
            }
            task = self
                .store
                .task(id.0)
                .await?
                .ok_or_else(|| RequestError::User(replies::no_such_task(id)))?;
        }
        Err(RequestError::User(replies::cancel_try_again(id)))
    }

    /// Runs an ended task again as a new task, once: a second retry of the
    /// same task (a double click) changes nothing and says so. Returns the reply.
    pub async fn retry(self: &Arc<Self>, id: TaskId, user: &str) -> Result<String, RequestError> {
        let task = self.actionable_task(id, user, "retry").await?;
        let state: TaskState = task.state.parse().unwrap_or(TaskState::Failed);
        let refusal = |t: &Task| match t.retried_as {
            Some(crate::store::RETRY_CLAIMED) => replies::retry_in_progress(id),
            Some(new) => replies::already_retried(id, TaskId(new)),
            None => replies::cannot_retry(id, state),
        };
        if !state.can_retry() || task.retried_as.is_some() {
            return Err(RequestError::User(refusal(&task)));
        }
        if !self.store.claim_retry(id.0).await? {
            let now = self.store.task(id.0).await?.unwrap_or(task);
            return Err(RequestError::User(refusal(&now)));
        }
        let created = self
            .create_task(TaskRequest {
                persona: task.persona.parse().unwrap_or_default(),
                project: ProjectName::new(task.project.clone()).ok(),
                prompt: task.prompt.clone(),
                requester: user.to_owned(),
                team_id: task.team_id.clone(),
                channel_id: task.channel_id.clone(),
                thread_ts: None,
                parent_id: Some(task.id),
                session_id: None,
                response_url: None,
            })
            .await;
        let new = match created {
            Ok(new) => new,
            Err(err) => {
                if let Err(e) = self.store.release_retry(id.0).await {
                    tracing::error!(task = id.0, error = ?e, "cannot release a failed retry");
                }
                return Err(err);
            }
        };
        self.store.set_retried_as(id.0, new.id).await?;
        // The old message loses its Retry button and points to the new task.
        self.show_from_db(id.0).await;
        // The note in the old thread is posted after the answer: the person
        // is not kept waiting for Slack (a slash command has 3 seconds).
        if let Some(root) = task.thread_ts.clone().or(task.message_ts.clone()) {
            let body = MessageBody {
                text: replies::retried_note(user, TaskId(new.id)),
                blocks: Vec::new(),
            };
            let slack = self.slack.clone();
            tokio::spawn(async move {
                if let Err(err) = slack
                    .post_message(&task.channel_id, Some(&root), &body)
                    .await
                {
                    tracing::warn!(task = task.id, error = %err, "cannot note the retry in the thread");
                }
            });
        }
        Ok(replies::retried(id, TaskId(new.id)))
    }

    /// A task whose message Slack refused for good (the app is not in the
    /// channel, the channel is archived...): it is not run unseen. It is
    /// cancelled (queued: at once; with an agent: the agent is asked to stop,
    /// and a task not yet accepted ends at its accept timeout), and the
    /// person is told what happened and what to do, through the slash
    /// command's `response_url` (an ephemeral message in the channel cannot
    /// reach them there either, but is tried when there is no such URL).
    pub async fn task_unpostable(&self, task: Task, why: &str) {
        let id = TaskId(task.id);
        tracing::warn!(
            task = task.id,
            why,
            "the task's message cannot be posted; cancelling it"
        );
        let ending = Ending::Cancelled {
            note: replies::not_run_unpostable(id, why),
        };
        match self
            .store
            .finish(task.id, None, None, &[TaskState::Queued], &ending)
            .await
        {
            Ok(true) => {
                lock(&self.queue_shown).remove(&task.id);
                self.dispatch_wake.notify_one();
            }
            Ok(false) => match self.store.set_cancel_requested(task.id).await {
                Ok(true) => {
                    if let Some(agent) = self
                        .store
                        .task(task.id)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|t| t.agent)
                    {
                        if let Some(t) = lock(&self.live).get_mut(&task.id) {
                            t.cancel_requested = true;
                        }
                        self.hub.send(&agent, BotMessage::Cancel { task: id });
                    }
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(task = task.id, error = ?err, "cannot cancel an unpostable task")
                }
            },
            Err(err) => {
                tracing::error!(task = task.id, error = ?err, "cannot cancel an unpostable task")
            }
        }
        let text = replies::not_run_unpostable(id, why);
        let url = lock(&self.response_urls)
            .remove(&task.id)
            .map(|(url, _)| url);
        match url {
            Some(url) => crate::slack::intake::respond(self, &url, &text).await,
            None => {
                if let Err(err) = self
                    .slack
                    .post_ephemeral_in(
                        &task.channel_id,
                        task.thread_ts.as_deref(),
                        &task.requester,
                        &text,
                    )
                    .await
                {
                    tracing::warn!(task = task.id, error = %err, "cannot tell the requester that the task's message cannot be posted");
                }
            }
        }
    }

    // ---- sweeps and recovery ----

    /// Accept timeouts, queue expiry, lost agents. Runs every [`SWEEP_INTERVAL`].
    pub async fn sweep(&self) {
        let now = Instant::now();
        lock(&self.response_urls)
            .retain(|_, (_, kept)| now.duration_since(*kept) < RESPONSE_URL_KEPT);
        let late: Vec<(i64, String)> = lock(&self.awaiting)
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, (agent, _))| (*id, agent.clone()))
            .collect();
        for (id, agent) in late {
            lock(&self.awaiting).remove(&id);
            match self
                .store
                .requeue_or_cancel(
                    id,
                    &agent,
                    "the agent did not accept it in time; waiting for another try",
                )
                .await
            {
                Ok(Requeued::Cancelled) => {
                    // Cancelled while it waited for the agent: it ends here,
                    // and never goes to another agent.
                    tracing::info!(
                        task = id,
                        agent,
                        "dispatch not accepted; cancelled as asked"
                    );
                    lock(&self.live).remove(&id);
                    self.hub.release(&agent, id, Outcome::Ignored);
                    self.show_from_db(id).await;
                    self.dispatch_wake.notify_one();
                }
                Ok(Requeued::Queued) => {
                    tracing::warn!(
                        task = id,
                        agent,
                        "dispatch not accepted in time; task back in its queue"
                    );
                    lock(&self.live).remove(&id);
                    // Not counted against the agent: a slow answer is not a failed task.
                    self.hub.release(&agent, id, Outcome::Ignored);
                    // No cancel: should the agent accept late while the task is
                    // still queued, it keeps it (see `rebind_late`); if the task
                    // went elsewhere meanwhile, the late accept gets a cancel.
                    self.dispatch_wake.notify_one();
                }
                Ok(Requeued::Unchanged) => {}
                Err(err) => tracing::error!(task = id, error = ?err, "cannot requeue"),
            }
        }

        let cutoff = self.clock.now_ms() - (self.settings.queue_ttl_secs as i64) * 1000;
        match self.store.queued_before(cutoff).await {
            Ok(expired) => {
                for task in expired {
                    let hours = self.settings.queue_ttl_secs as f64 / 3600.0;
                    let ending = Ending::Expired {
                        note: format!(
                            "Expired: no agent took it within {hours:.1} h. Use Retry to queue it again."
                        ),
                    };
                    if let Ok(true) = self
                        .store
                        .finish(task.id, None, None, &[TaskState::Queued], &ending)
                        .await
                    {
                        lock(&self.queue_shown).remove(&task.id);
                        self.show_from_db(task.id).await;
                    }
                }
            }
            Err(err) => tracing::error!(error = ?err, "cannot expire queued tasks"),
        }

        let grace = Duration::from_secs(self.settings.agent_grace_secs);
        for (agent, tasks) in self.hub.lost_agents(grace) {
            for id in tasks {
                let ending = Ending::Failed {
                    error: format!(
                        "agent lost: {agent} disconnected and did not come back within {} s. Use Retry to run it again.",
                        grace.as_secs()
                    ),
                    cause: "agent_lost".into(),
                    session_id: None,
                };
                lock(&self.live).remove(&id);
                lock(&self.awaiting).remove(&id);
                self.hub.release(&agent, id, Outcome::Failure);
                match self
                    .store
                    .finish(
                        id,
                        Some(&agent),
                        None,
                        &[TaskState::Dispatched, TaskState::Running],
                        &ending,
                    )
                    .await
                {
                    Ok(true) => self.show_from_db(id).await,
                    Ok(false) => {}
                    Err(err) => tracing::error!(task = id, error = ?err, "cannot fail lost task"),
                }
            }
        }
    }

    /// Rebuilds memory from the database after a start: tasks held by agents
    /// wait for them, and every message not up to date is shown again.
    pub async fn recover(&self) -> anyhow::Result<()> {
        self.store.release_stale_retry_claims().await?;
        for task in self
            .store
            .tasks_in(&[TaskState::Dispatched, TaskState::Running], u64::MAX)
            .await?
        {
            if let Some(agent) = task.agent.clone() {
                self.hub.adopt(&agent, task.id, &task.project);
                if task.state == TaskState::Dispatched.as_str() {
                    // No acknowledgement recorded: the agent may have accepted
                    // it just before the crash and be running it. It is put
                    // back only if the agent is not back within its grace
                    // period (agents take seconds to reconnect); when it comes
                    // back first, reconciliation settles it from its hello
                    // (running: it stays; unknown to it: back to the queue).
                    let wait = self
                        .settings
                        .dispatch_timeout_secs
                        .max(self.settings.agent_grace_secs);
                    let deadline = Instant::now() + Duration::from_secs(wait);
                    lock(&self.awaiting).insert(task.id, (agent, deadline));
                }
                lock(&self.live).insert(task.id, task);
            }
        }
        for task in self.store.unsynced_tasks().await? {
            if task.message_ts.is_none() {
                self.consolidator.may_have_posted(task.id);
            }
            let state: TaskState = task.state.parse().unwrap_or(TaskState::Failed);
            if state != TaskState::Queued {
                self.consolidator.show(task, None);
            }
        }
        for project in self.store.projects_with_queue().await? {
            self.show_queued(&project).await;
        }
        self.dispatch_wake.notify_one();
        Ok(())
    }

    /// The dispatcher: runs a pass when woken, and the sweeps every second.
    pub async fn run_dispatcher(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut unpostable = lock(&self.unpostable).take();
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = prune.tick() => {
                    let before = self.clock.now_ms() - EVENT_ID_RETENTION.as_millis() as i64;
                    match self.store.prune_events(before).await {
                        Ok(n) if n > 0 => tracing::info!(pruned = n, "old Slack event ids forgotten"),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = ?err, "cannot prune Slack event ids"),
                    }
                }
                // Woken by a task's end or an agent's arrival: nothing to do
                // without a queue (the tick's pass reads the database anyway).
                _ = self.dispatch_wake.notified() => {
                    if self.store.may_have_queue() {
                        self.dispatch_pass().await;
                    }
                }
                _ = tick.tick() => {
                    self.sweep().await;
                    self.dispatch_pass().await;
                }
                Some((task, why)) = async {
                    match unpostable.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.task_unpostable(task, &why).await,
            }
        }
    }
}

fn reason_text(reason: baton_shared::protocol::RejectReason) -> &'static str {
    use baton_shared::protocol::RejectReason::*;
    match reason {
        Busy => "the agent was busy; waiting for another",
        Draining => "the agent is shutting down; waiting for another",
        _ => "the agent refused it",
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::hub::{Outbox, Outgoing, Register};

    /// An app on a fresh database with project `web` and agent `a`
    /// (capacity 1, serving `web`) registered on the returned outbox.
    async fn app_with_agent(
        dir: &tempfile::TempDir,
    ) -> (Arc<App>, Store, crate::hub::OutboxReceiver) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let mut settings = Settings::for_tests("http://127.0.0.1:9", &url, "secret");
        // No Slack here to ask who U1 is: an admin needs no asking.
        settings.admins = vec!["U1".into()];
        let store = Store::connect(&url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let slack = SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
            .expect("slack client");
        let app = Arc::new(App::new(
            settings,
            store.clone(),
            slack,
            Arc::new(crate::clock::SystemWallClock),
        ));
        let (tx, frames) = Outbox::new();
        let hello = crate::hub::tests::hello(1, &[("web", 1)]);
        assert!(matches!(app.hub.register("a", tx, &hello), Register::Ok(_)));
        (app, store, frames)
    }

    fn request(prompt: &str) -> TaskRequest {
        TaskRequest {
            persona: Persona::default(),
            project: None,
            prompt: prompt.into(),
            requester: "U1".into(),
            team_id: "T1".into(),
            channel_id: "C1".into(),
            thread_ts: None,
            parent_id: None,
            session_id: None,
            response_url: None,
        }
    }

    /// The submits waiting in `frames` now.
    fn submits(frames: &mut crate::hub::OutboxReceiver) -> Vec<TaskId> {
        let mut out = Vec::new();
        while let Some(Some(frame)) = futures::FutureExt::now_or_never(frames.next()) {
            if let Outgoing::Frame(BotMessage::Submit(s)) = frame {
                out.push(s.task);
            }
        }
        out
    }

    /// Issue 13, finding 5: after a `busy`, the agent is full until it is
    /// heard from again, so the dispatcher does not send the task straight back.
    #[tokio::test]
    async fn after_busy_the_agent_gets_nothing_until_its_next_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, store, mut frames) = app_with_agent(&dir).await;
        let task = app.create_task(request("fix it")).await.expect("created");
        assert_eq!(submits(&mut frames), [TaskId(task.id)]);

        let busy = AgentMessage::Rejected {
            task: TaskId(task.id),
            seq: 1,
            reason: baton_shared::protocol::RejectReason::Busy,
            message: "at capacity".into(),
        };
        assert!(app.apply_event("a", busy).await.is_empty());
        let back = store.task(task.id).await.expect("read").expect("row");
        assert_eq!(back.state, "queued");
        app.dispatch_pass().await;
        assert_eq!(submits(&mut frames), [], "not sent straight back");
        assert_eq!(
            store.task(task.id).await.expect("read").expect("row").state,
            "queued"
        );

        // Its next event (here about a task it no longer has): room again.
        let later = AgentMessage::Output {
            task: TaskId(99),
            seq: 1,
            text: "x".into(),
        };
        app.apply_event("a", later).await;
        app.dispatch_pass().await;
        assert_eq!(submits(&mut frames), [TaskId(task.id)]);
    }

    /// Issue 13, finding 8: the queue's bound holds for requests that
    /// arrive together (it was checked, then inserted, separately).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_bound_holds_for_requests_arriving_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let mut settings = Settings::for_tests("http://127.0.0.1:9", &url, "secret");
        settings.queue_max = 3;
        // No Slack here to ask who they are: admins need no asking.
        settings.admins = (0..12).map(|i| format!("U{i}")).collect();
        let store = Store::connect(&url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let slack = SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
            .expect("slack client");
        let app = Arc::new(App::new(
            settings,
            store.clone(),
            slack,
            Arc::new(crate::clock::SystemWallClock),
        ));
        let requests = (0..12).map(|i| {
            let mut req = request(&format!("task {i}"));
            req.requester = format!("U{i}");
            app.create_task(req)
        });
        let outcomes = futures::future::join_all(requests).await;
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Err(RequestError::User(t)) if t.contains("queue is full")))
            .count();
        assert_eq!(store.count_in(TaskState::Queued).await.expect("count"), 3);
        assert_eq!(refused, 9, "{outcomes:?}");
    }

    /// Issue 13, finding 8: a queue purge forgets what the purged tasks'
    /// messages showed (it grew for good before).
    #[tokio::test]
    async fn a_queue_purge_forgets_the_queued_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let mut settings = Settings::for_tests("http://127.0.0.1:9", &url, "secret");
        // No Slack here to ask who U1 is: an admin needs no asking.
        settings.admins = vec!["UADMIN".into(), "U1".into()];
        let store = Store::connect(&url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let slack = SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
            .expect("slack client");
        let app = Arc::new(App::new(
            settings,
            store.clone(),
            slack,
            Arc::new(crate::clock::SystemWallClock),
        ));
        for prompt in ["one", "two"] {
            app.create_task(request(prompt)).await.expect("queued");
        }
        assert_eq!(lock(&app.queue_shown).len(), 2);
        let purge = crate::slack::handlers::SlashCommand {
            command: "/baton-admin".into(),
            text: "queue purge web".into(),
            user_id: "UADMIN".into(),
            channel_id: "C1".into(),
            team_id: "T1".into(),
            response_url: String::new(),
        };
        let answer = crate::admin::handle(&app, &purge).await;
        assert!(answer.contains("Removed 2"), "{answer}");
        assert!(lock(&app.queue_shown).is_empty());
    }

    /// Issue 13, finding 7: after a restart, a task the database shows
    /// dispatched (its agent may have accepted it just before the crash) is
    /// not put back before its agent had its grace period to reconnect; when
    /// the agent comes back running it, it is shown running, not "Dispatched".
    #[tokio::test]
    async fn a_recovered_dispatch_waits_for_its_agent_and_then_shows_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let store = Store::connect(&url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let mut req = NewTask {
            queued_at: crate::model::now_ms(),
            persona: "code".into(),
            project: "web".into(),
            prompt: "p".into(),
            requester: "U1".into(),
            team_id: "T1".into(),
            channel_id: "C1".into(),
            thread_ts: None,
            parent_id: None,
            session_id: None,
            agent: None,
        };
        req.agent = Some("a".into());
        let task = store.insert_task(req).await.expect("written dispatched");

        // The bot starts again from the database alone.
        let settings = Settings::for_tests("http://127.0.0.1:9", &url, "secret");
        let grace = Duration::from_secs(settings.agent_grace_secs);
        let slack = SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
            .expect("slack client");
        let app = Arc::new(App::new(
            settings,
            store.clone(),
            slack,
            Arc::new(crate::clock::SystemWallClock),
        ));
        let before = Instant::now();
        app.recover().await.expect("recover");
        let deadline = lock(&app.awaiting)[&task.id].1;
        assert!(
            deadline >= before + grace,
            "put back after {:?}, before the agent's grace period of {grace:?}",
            deadline - before
        );
        app.sweep().await;
        assert_eq!(
            store.task(task.id).await.expect("read").expect("row").state,
            "dispatched"
        );

        // The agent comes back running it.
        let (tx, _frames) = Outbox::new();
        let mut hello = crate::hub::tests::hello(1, &[("web", 1)]);
        hello.running = vec![TaskId(task.id)];
        assert!(matches!(app.hub.register("a", tx, &hello), Register::Ok(_)));
        app.reconcile("a", &hello).await.expect("reconcile");
        assert!(!lock(&app.awaiting).contains_key(&task.id));
        let step = AgentMessage::Step {
            task: TaskId(task.id),
            seq: 1,
            text: "Edit src/auth.rs".into(),
        };
        app.apply_event("a", step).await;
        let live = lock(&app.live)[&task.id].clone();
        assert_eq!((live.state.as_str(), live.step_count), ("running", 1));
        assert_eq!(
            store.task(task.id).await.expect("read").expect("row").state,
            "running"
        );
    }

    #[tokio::test]
    async fn a_task_is_created_and_handed_out_even_if_the_caller_stops_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let mut settings = Settings::for_tests("http://127.0.0.1:9", &url, "secret");
        // No Slack here to ask who U1 is: an admin needs no asking.
        settings.admins = vec!["U1".into()];
        let store = Store::connect(&url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let slack = SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
            .expect("slack client");
        let app = Arc::new(App::new(
            settings,
            store.clone(),
            slack,
            Arc::new(crate::clock::SystemWallClock),
        ));
        let (tx, mut frames) = Outbox::new();
        let hello = crate::hub::tests::hello(1, &[("web", 1)]);
        assert!(matches!(app.hub.register("a", tx, &hello), Register::Ok(_)));

        // The caller (Slack's HTTP request) gives up after the first poll.
        let mut creating = Box::pin(app.create_task(TaskRequest {
            persona: Persona::default(),
            project: None,
            prompt: "fix it".into(),
            requester: "U1".into(),
            team_id: "T1".into(),
            channel_id: "C1".into(),
            thread_ts: None,
            parent_id: None,
            session_id: None,
            response_url: None,
        }));
        assert!(futures::poll!(creating.as_mut()).is_pending());
        drop(creating);

        let frame = tokio::time::timeout(Duration::from_secs(10), frames.next())
            .await
            .expect("the task frame is sent")
            .expect("a frame");
        assert!(
            matches!(&frame, Outgoing::Frame(BotMessage::Submit(s)) if s.task == TaskId(1)),
            "{frame:?}"
        );
        let task = store.task(1).await.expect("read").expect("written");
        assert_eq!(
            (task.state.as_str(), task.agent.as_deref()),
            ("dispatched", Some("a"))
        );
        assert!(
            lock(&app.awaiting).contains_key(&1),
            "its accept timeout runs"
        );
    }
}
