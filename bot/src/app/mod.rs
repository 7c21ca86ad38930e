//! The bot's core: creating tasks, dispatching them, applying agents' events,
//! cancel and retry, the sweeps (accept timeouts, queue TTL, lost agents) and
//! recovery after a restart.
//!
//! Every state change goes through the database first (a guarded update);
//! memory (the hub, the live task views) follows what the database says.
//!
//! Each concern has its own module, each adding an `impl App` block:
//! `create` (new tasks), `dispatch` (handing queued tasks out),
//! `events` (what agents report), `control` (cancel, retry, what a
//! person or an admin does to a task), `recovery` (the sweeps, and
//! rebuilding memory after a restart) and `approvals` (a running task's
//! approval requests: shown, answered by a person, timed out).

mod approvals;
mod control;
mod create;
mod dispatch;
mod events;
mod handover;
mod instances;
mod recovery;
#[cfg(test)]
mod test_support;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use baton_shared::{Persona, ProjectName};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::{TokioClock, WallClock};
use crate::hub::Hub;
use crate::replies;
use crate::settings::Settings;
use crate::slack::api::SlackApi;
use crate::slack::consolidator::Consolidator;
use crate::store::{Store, Task};

pub use approvals::{ApprovalDesk, DECISIONS, notice_marker};
pub use dispatch::{DISPATCH_BATCH, EVENT_ID_RETENTION, PRUNE_INTERVAL};
pub use handover::{CHANNEL, FollowUpTurn, HANDOVER_POLL, LISTEN_RETRY, Signal};
pub use instances::{LEASE_RENEW, LEASE_TTL};
pub use recovery::{RESPONSE_URL_KEPT, SWEEP_INTERVAL};

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
    /// The agent holding `session_id`: the task goes to no other agent.
    pub session_agent: Option<String>,
    /// The thread's task this follow-up waits for (it had not ended when the
    /// reply came): the task is kept, and runs once the thread's earlier
    /// tasks have ended.
    pub after_task: Option<i64>,
    /// The slash command's `response_url`: where the person hears of what
    /// goes wrong after the acknowledgement (its message cannot be posted).
    pub response_url: Option<String>,
    /// The files attached in Slack to the message that asked for it.
    pub files: Vec<Attachment>,
}

/// A file attached in Slack to the message that asks for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Slack's file id (`F…`).
    pub id: String,
    /// Its name as attached (made safe when the task is written).
    pub name: String,
    /// Its size in bytes, as Slack says.
    pub size: u64,
    /// Slack's `url_private_download`, fetched with the bot token.
    pub url: String,
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
    /// Held while a thread reply becomes a task, so that two replies arriving
    /// together see each other (one waits for the other, never two runs of a
    /// session at once).
    pub follow_ups: tokio::sync::Mutex<()>,
    /// Approval requests: the thread replies being posted, decisions by kind.
    pub approval_desk: ApprovalDesk,
    /// This process's id among the processes sharing the database (random).
    instance_id: String,
    /// When this process started (Unix ms, on `clock`).
    started_at: i64,
    /// Until when this process's lease runs, as last written (Unix ms).
    lease_until: Arc<std::sync::atomic::AtomicI64>,
    /// The task messages' record and claims (the consolidator's log).
    desk: Arc<instances::MessageDesk>,
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

impl App {
    /// Builds the state.
    pub fn new(
        settings: Settings,
        store: Store,
        slack: SlackApi,
        clock: Arc<dyn WallClock>,
    ) -> Self {
        let instance_id = instances::new_instance_id();
        let lease_until = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let desk = Arc::new(instances::MessageDesk::new(
            store.clone(),
            &instance_id,
            clock.clone(),
            lease_until.clone(),
        ));
        let consolidator = Consolidator::new(
            Arc::new(slack.clone()),
            desk.clone(),
            Duration::from_millis(settings.edit_interval_ms),
            settings.slack_updates_per_minute,
        );
        let window = Duration::from_secs(settings.rate_limit_window_secs.max(1));
        let burst = NonZeroU32::new(settings.rate_limit_tasks.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(window / burst.get())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let (unpostable_tx, unpostable) = tokio::sync::mpsc::unbounded_channel();
        let clock_now = clock.now_ms();
        consolidator.report_unpostable(unpostable_tx);
        App {
            instance_id,
            started_at: clock.now_ms(),
            lease_until,
            desk,
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
            follow_ups: tokio::sync::Mutex::new(()),
            approval_desk: ApprovalDesk::new(clock_now),
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

    pub(super) async fn show_from_db(&self, id: i64) {
        match self.store.task(id).await {
            Ok(Some(task)) => self.consolidator.show(task, None),
            Ok(None) => {}
            Err(err) => tracing::error!(task = id, error = ?err, "cannot read the task to show it"),
        }
    }
}
