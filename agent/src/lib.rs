//! Baton's agent: connects to the bot, says hello, runs the tasks it is sent
//! and streams their steps and output back. Final events are kept on disk
//! until the bot acknowledges them, so nothing is lost across disconnects or
//! the agent's own restart.
//!
//! # Layout
//!
//! - [`config`]: `agent.toml`, flags and `BATON_*` overrides, validated.
//! - [`state`]: the on-disk task journal (de-duplication) and outbox.
//! - [`exec`]: running one task as a process group (`command` and the CLIs).
//! - [`stream`]: what the CLI executors share (events, results, tool steps).
//! - [`claude_stream`], [`codex_stream`], [`gemini_stream`], [`opencode_stream`]:
//!   parsing each CLI's machine-readable output.
//! - [`detect`]: `baton-agent detect`, the CLIs installed on this machine.
//! - [`worktree`]: a git worktree per task for `isolation = "worktree"` projects.
//! - [`approvals`]: tool calls waiting for a person's yes in Slack: a socket
//!   per task, the requests sent to the bot and their decisions.
//! - [`ask`]: `baton-agent hook` (Claude Code's `PreToolUse` hook) and
//!   `baton-agent approve` (for command tasks), which ask over that socket.
//! - [`attachments`]: files attached in Slack, written to `.baton/files/` and
//!   named in the prompt.
//! - this module: the connection loop and the task table.

pub mod approvals;
pub mod ask;
pub mod attachments;
pub mod claude_stream;
pub mod codex_stream;
pub mod config;
pub mod detect;
pub mod exec;
pub mod gemini_stream;
pub mod opencode_stream;
pub mod state;
pub mod stream;
pub mod worktree;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use baton_shared::TaskId;
use baton_shared::limits::{DEFAULT_HEARTBEAT_SECS, HEARTBEAT_MISSES_DEAD, MAX_FRAME_BYTES};
use baton_shared::protocol::{
    AgentMessage, BotMessage, Hello, PROTOCOL_VERSION, ProjectInfo, RejectReason, Submit,
    close_code,
};
use futures::{SinkExt, StreamExt};
use secrecy::ExposeSecret;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::Config;
use crate::exec::{ExecEnd, ExecEvent, StopReason};
use crate::state::StateDir;

/// Shortest wait before reconnecting.
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Longest wait between reconnect attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Wait after the bot refused a second connection with our key, or the key itself.
pub const RECONNECT_REFUSED: Duration = Duration::from_secs(60);
/// How long to wait for the WebSocket handshake, and then for the welcome.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Task markers older than this are forgotten (see [`StateDir::prune_seen`]).
pub const SEEN_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long shutdown waits for the bot to acknowledge the last results.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A running task.
#[derive(Debug)]
struct Running {
    /// Asks it to stop.
    stop: watch::Sender<StopReason>,
    /// Its next event's sequence number.
    seq: Arc<AtomicU64>,
    /// Its project.
    project: String,
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    /// Validated configuration.
    cfg: Config,
    /// Journal and outbox.
    state: StateDir,
    /// Running tasks.
    tasks: Mutex<HashMap<i64, Running>>,
    /// Frames for the bot.
    out_tx: mpsc::UnboundedSender<AgentMessage>,
    /// Taken by the connection loop.
    out_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<AgentMessage>>,
    /// A connection is up: progress is worth sending.
    connected: AtomicBool,
    /// Shutting down: no new tasks.
    draining: AtomicBool,
    /// Signals task-table changes (shutdown waits on it).
    changed: Notify,
    /// Approval requests of the running tasks.
    approvals: approvals::Approvals,
    /// Fetches tasks' attached files from the bot.
    files: attachments::FileSource,
    /// The server URL of the current (or last) connection: tasks' files are
    /// fetched from the bot that handed them out.
    server_now: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a session ended.
enum SessionEnd {
    /// Reconnect with the normal backoff.
    Retry,
    /// The bot refused us; wait long.
    Refused,
    /// Shutting down.
    Stop,
}

impl Agent {
    /// An agent for a validated config.
    pub fn new(cfg: Config) -> std::io::Result<Arc<Self>> {
        let state = StateDir::open(&cfg.state_dir)?;
        for (task, pgid) in state.leftovers() {
            // An earlier process died with this task running: its processes
            // must not outlive it. The bot fails the task ("agent restarted").
            let killed = exec::kill_leftover(task, pgid);
            tracing::warn!(
                task = task.0,
                killed,
                "a task from before a crash was still running; stopped it"
            );
            state.clear_started(task);
        }
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let approvals = approvals::Approvals::new(&cfg.state_dir, out_tx.clone());
        let files = attachments::FileSource::new(cfg.key.clone())?;
        Ok(Arc::new(Agent {
            files,
            server_now: Mutex::new(cfg.server.clone()),
            cfg,
            state,
            tasks: Mutex::new(HashMap::new()),
            out_tx,
            out_rx: tokio::sync::Mutex::new(out_rx),
            connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            changed: Notify::new(),
            approvals,
        }))
    }

    /// Kills every running task's process group at once (SIGKILL): the
    /// second shutdown signal, where nothing may be waited for.
    pub fn kill_tasks_now(&self) {
        for (task, pgid) in self.state.leftovers() {
            exec::kill_leftover(task, pgid);
        }
    }

    /// Removes the worktrees of finished tasks older than their project's
    /// `worktree_keep_days` at `now` (branches are kept); returns how many.
    pub fn prune_worktrees(&self, now: std::time::SystemTime) -> usize {
        self.cfg
            .projects
            .iter()
            .filter(|p| p.isolation == config::Isolation::Worktree)
            .map(|p| {
                let days = p.worktree_keep_days.unwrap_or(worktree::DEFAULT_KEEP_DAYS);
                let keep = Duration::from_secs(days * 24 * 3600);
                worktree::prune(&self.cfg.state_dir, p, keep, now)
            })
            .sum()
    }

    fn hello(&self) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capacity: self.cfg.capacity,
            projects: self
                .cfg
                .projects
                .iter()
                .map(|p| ProjectInfo {
                    name: p.name.clone(),
                    max_concurrent: p.max_concurrent,
                })
                .collect(),
            running: lock(&self.tasks).keys().map(|t| TaskId(*t)).collect(),
            held_results: self
                .state
                .outbox()
                .iter()
                .filter_map(|m| m.task_seq().map(|(t, _)| t))
                .collect(),
        }
    }

    /// Connects and serves until `shutdown` resolves; then drains: no new
    /// tasks, running ones get `shutdown_grace` to finish, then are stopped
    /// and reported, and the outbox is flushed.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let conn = tokio::spawn(self.clone().connection_loop(stop_rx));
        let state = self.state.clone();
        let agent = self.clone();
        let pruner = tokio::spawn(async move {
            let mut daily = tokio::time::interval(Duration::from_secs(24 * 3600));
            loop {
                daily.tick().await;
                let pruned = state.prune_seen(SEEN_RETENTION);
                if pruned > 0 {
                    tracing::info!(pruned, "forgot the markers of tasks older than 30 days");
                }
                let agent = agent.clone();
                let removed = tokio::task::spawn_blocking(move || {
                    agent.prune_worktrees(std::time::SystemTime::now())
                })
                .await
                .unwrap_or(0);
                if removed > 0 {
                    tracing::info!(
                        removed,
                        "removed finished task worktrees past their keep period"
                    );
                }
            }
        });
        shutdown.await;
        tracing::info!("shutting down: taking no new tasks");
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.out_tx.send(AgentMessage::Draining);
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        while !lock(&self.tasks).is_empty() && Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline, self.changed.notified()).await;
        }
        let left: Vec<_> = lock(&self.tasks).values().map(|r| r.stop.clone()).collect();
        if !left.is_empty() {
            tracing::warn!(
                tasks = left.len(),
                "stopping tasks still running at the shutdown deadline"
            );
            for s in left {
                let _ = s.send(StopReason::Shutdown);
            }
            while !lock(&self.tasks).is_empty() {
                self.changed.notified().await;
            }
        }
        let flush_deadline = Instant::now() + FLUSH_TIMEOUT;
        while !self.state.outbox().is_empty() && Instant::now() < flush_deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held = self.state.outbox().len();
        if held > 0 {
            tracing::warn!(
                held,
                "results not yet acknowledged stay on disk and are sent on the next start"
            );
        }
        let _ = stop_tx.send(true);
        let _ = conn.await;
        pruner.abort();
        Ok(())
    }

    async fn connection_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = new_backoff();
        let mut attempt = 0u32;
        // The servers are tried in turn: a failed session moves to the next
        // at once; a whole round of failures backs off before the next round.
        let servers = &self.cfg.servers;
        let mut next = 0usize;
        let mut failed_in_round = 0usize;
        loop {
            if *stop.borrow() {
                return;
            }
            let server = servers[next % servers.len()].clone();
            next = (next + 1) % servers.len();
            *lock(&self.server_now) = server.clone();
            let started = Instant::now();
            let end = tokio::select! {
                end = self.session(&server) => end,
                _ = stop.wait_for(|v| *v) => return,
            };
            self.connected.store(false, Ordering::SeqCst);
            if started.elapsed() >= RECONNECT_MAX {
                // A session that lasted was a success: start the backoff over.
                backoff = new_backoff();
                attempt = 0;
                failed_in_round = 0;
            }
            if matches!(end, SessionEnd::Retry) {
                failed_in_round += 1;
                if failed_in_round < servers.len() {
                    tracing::warn!(%server, next = %servers[next], "bot unreachable; trying the next server");
                    continue;
                }
            }
            failed_in_round = 0;
            let wait = match end {
                SessionEnd::Stop => return,
                SessionEnd::Refused => RECONNECT_REFUSED,
                SessionEnd::Retry => {
                    attempt += 1;
                    backoff.next().unwrap_or(RECONNECT_MAX)
                }
            };
            tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %server, "bot unreachable; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            if matches!(end, SessionEnd::Refused) {
                backoff = new_backoff();
            }
        }
    }

    async fn session(self: &Arc<Self>, server: &str) -> SessionEnd {
        let mut req = match server.into_client_request() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "bad server URL");
                return SessionEnd::Refused;
            }
        };
        let Ok(auth) = format!("Bearer {}", self.cfg.key.expose_secret()).parse() else {
            tracing::error!("the key contains characters that cannot go in a header");
            return SessionEnd::Refused;
        };
        req.headers_mut().insert(http::header::AUTHORIZATION, auth);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connect = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
        let Ok(connected) = tokio::time::timeout(WELCOME_TIMEOUT, connect).await else {
            tracing::warn!("the bot did not answer the connection in time");
            return SessionEnd::Retry;
        };
        let ws = match connected {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status();
                if status == http::StatusCode::CONFLICT {
                    tracing::error!(
                        "another agent process is connected with this key; waiting before trying again"
                    );
                    return SessionEnd::Refused;
                }
                if status == http::StatusCode::UNAUTHORIZED {
                    tracing::error!(
                        "the bot refused the key (unknown or revoked); check `key` / BATON_AGENT_KEY"
                    );
                    return SessionEnd::Refused;
                }
                tracing::warn!(%status, "the bot refused the connection");
                return SessionEnd::Retry;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to the bot");
                return SessionEnd::Retry;
            }
        };
        let (mut sink, mut stream) = ws.split();
        if sink
            .send(Message::Text(
                AgentMessage::Hello(self.hello()).encode().into(),
            ))
            .await
            .is_err()
        {
            return SessionEnd::Retry;
        }
        let heartbeat = match tokio::time::timeout(WELCOME_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match BotMessage::decode(&t) {
                Ok(BotMessage::Welcome {
                    agent,
                    heartbeat_secs,
                    ..
                }) => {
                    tracing::info!(%agent, "connected to the bot");
                    Duration::from_secs(heartbeat_secs.max(1))
                }
                other => {
                    tracing::error!(?other, "expected a welcome");
                    return SessionEnd::Retry;
                }
            },
            Ok(Some(Ok(Message::Close(frame)))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1000);
                tracing::error!(code, reason = ?frame.map(|f| f.reason.to_string()), "the bot closed the connection at hello");
                return if matches!(
                    code,
                    close_code::UNSUPPORTED_VERSION | close_code::REVOKED | close_code::DUPLICATE
                ) {
                    SessionEnd::Refused
                } else {
                    SessionEnd::Retry
                };
            }
            _ => return SessionEnd::Retry,
        };
        self.connected.store(true, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst)
            && sink
                .send(Message::Text(AgentMessage::Draining.encode().into()))
                .await
                .is_err()
        {
            return SessionEnd::Retry;
        }
        // Everything held is sent again; the bot applies each once and acknowledges.
        // So is every undecided approval request; the bot records each once.
        for msg in self
            .state
            .outbox()
            .into_iter()
            .chain(self.approvals.pending_requests())
        {
            if sink.send(Message::Text(msg.encode().into())).await.is_err() {
                return SessionEnd::Retry;
            }
        }
        let mut out_rx = self.out_rx.lock().await;
        let mut ping = tokio::time::interval(heartbeat);
        ping.tick().await;
        let dead_after = heartbeat * HEARTBEAT_MISSES_DEAD;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let Some(Ok(frame)) = frame else { return SessionEnd::Retry };
                    last_heard = Instant::now();
                    match frame {
                        Message::Text(t) => match BotMessage::decode(&t) {
                            Ok(msg) => self.handle(msg),
                            Err(e) => match BotMessage::submit_task_of(&t) {
                                // A submit we cannot run: say so, the bot must not wait for it.
                                Some(task) => {
                                    tracing::warn!(task = task.0, error = %e, "invalid submit refused");
                                    self.reject(task, RejectReason::Invalid, format!("the agent could not read the task: {e}"));
                                }
                                None => tracing::warn!(error = %e, "bad frame from the bot ignored"),
                            },
                        },
                        Message::Close(frame) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1000);
                            tracing::warn!(code, "the bot closed the connection");
                            return if code == close_code::REVOKED || code == close_code::DUPLICATE { SessionEnd::Refused } else { SessionEnd::Retry };
                        }
                        _ => {}
                    }
                }
                msg = out_rx.recv() => {
                    let Some(msg) = msg else { return SessionEnd::Stop };
                    if sink.send(Message::Text(msg.encode().into())).await.is_err() {
                        // A final event is in the outbox and will be sent again.
                        return SessionEnd::Retry;
                    }
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return SessionEnd::Retry;
                    }
                }
                _ = tokio::time::sleep_until(last_heard + dead_after) => {
                    tracing::warn!("the bot has been silent for two heartbeats; reconnecting");
                    return SessionEnd::Retry;
                }
            }
        }
    }

    fn send(&self, msg: AgentMessage) {
        let _ = self.out_tx.send(msg);
    }

    fn handle(self: &Arc<Self>, msg: BotMessage) {
        match msg {
            BotMessage::Submit(s) => self.submit(*s),
            BotMessage::Cancel { task } => {
                if let Some(r) = lock(&self.tasks).get(&task.0) {
                    tracing::info!(task = task.0, "cancelling");
                    let _ = r.stop.send(StopReason::Cancel);
                    // What it waits for is denied (after the stop: the task ends cancelled).
                    self.approvals.cancel(task);
                } else if let Some(held) = self.state.get_outbox(task) {
                    self.send(held);
                }
            }
            BotMessage::Ack { task, seq } => {
                if let Err(e) = self.state.ack(task, seq) {
                    tracing::error!(task = task.0, error = %e, "cannot drop an acknowledged result");
                }
            }
            BotMessage::Error { code, message } => {
                tracing::warn!(?code, message, "the bot reported a protocol error")
            }
            BotMessage::Welcome { .. } => {}
            BotMessage::ApprovalDecision {
                task,
                request,
                decision,
                by,
            } => {
                // The first decision for a pending request applies; any other changes nothing.
                if !self
                    .approvals
                    .decide(task, request, decision, by.as_deref())
                {
                    tracing::debug!(
                        task = task.0,
                        request,
                        "a decision for no pending approval; ignored"
                    )
                }
            }
        }
    }

    fn reject(&self, task: TaskId, reason: RejectReason, message: String) {
        self.send(AgentMessage::Rejected {
            task,
            seq: 1,
            reason,
            message,
        });
    }

    fn submit(self: &Arc<Self>, s: Submit) {
        let id = s.task;
        {
            let tasks = lock(&self.tasks);
            if let Some(r) = tasks.get(&id.0) {
                // A redelivered submit of a task we run: confirm, do not run twice.
                let seq = r.seq.fetch_add(1, Ordering::SeqCst);
                self.send(AgentMessage::Accepted { task: id, seq });
                return;
            }
        }
        if self.state.was_seen(id) {
            match self.state.get_outbox(id) {
                Some(held) => self.send(held),
                None => self.reject(
                    id,
                    RejectReason::AlreadySeen,
                    "this agent already ran this task".into(),
                ),
            }
            return;
        }
        if self.draining.load(Ordering::SeqCst) {
            return self.reject(
                id,
                RejectReason::Draining,
                "the agent is shutting down".into(),
            );
        }
        let Some(project) = self.cfg.project(s.project.as_str()).cloned() else {
            return self.reject(
                id,
                RejectReason::UnknownProject,
                format!("this agent does not serve `{}`", s.project),
            );
        };
        let mut tasks = lock(&self.tasks);
        let in_project = tasks
            .values()
            .filter(|r| r.project == project.name.as_str())
            .count() as u32;
        if tasks.len() as u32 >= self.cfg.capacity || in_project >= project.max_concurrent {
            drop(tasks);
            return self.reject(id, RejectReason::Busy, "the agent is at capacity".into());
        }
        // Recorded before it is accepted: a redelivery after a crash never runs it again.
        if let Err(e) = self.state.mark_seen(id) {
            drop(tasks);
            tracing::error!(task = id.0, error = %e, "cannot record the task");
            return self.reject(
                id,
                RejectReason::Busy,
                format!("cannot record the task: {e}"),
            );
        }
        let (stop_tx, stop_rx) = watch::channel(StopReason::None);
        let seq = Arc::new(AtomicU64::new(2));
        tasks.insert(
            id.0,
            Running {
                stop: stop_tx,
                seq: seq.clone(),
                project: project.name.to_string(),
            },
        );
        drop(tasks);
        self.send(AgentMessage::Accepted { task: id, seq: 1 });
        tracing::info!(task = id.0, project = %project.name, "task accepted");
        let agent = self.clone();
        tokio::spawn(async move {
            let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
            let forward = {
                let agent = agent.clone();
                let seq = seq.clone();
                async move {
                    while let Some(ev) = ev_rx.recv().await {
                        if !agent.connected.load(Ordering::Relaxed) {
                            continue; // progress is best effort; the result is kept on disk
                        }
                        let n = seq.fetch_add(1, Ordering::SeqCst);
                        agent.send(match ev {
                            ExecEvent::Step(text) => AgentMessage::Step {
                                task: id,
                                seq: n,
                                text,
                            },
                            ExecEvent::Output(text) => AgentMessage::Output {
                                task: id,
                                seq: n,
                                text,
                            },
                        });
                    }
                }
            };
            let started = |pgid| {
                if let Err(e) = agent.state.mark_started(id, pgid) {
                    tracing::warn!(task = id.0, error = %e, "cannot record the task's process group");
                }
            };
            // A command task may always ask; a claude task when its project has `approve`.
            let link = if project.executor == config::ExecutorKind::Command
                || project.approve.is_some()
            {
                agent
                    .approvals
                    .open(id)
                    .inspect_err(|e| {
                        tracing::error!(task = id.0, error = %e, "cannot open the task's approval socket; it cannot ask for approval")
                    })
                    .ok()
            } else {
                None
            };
            let fetch = attachments::Fetch {
                source: agent.files.clone(),
                server: lock(&agent.server_now).clone(),
            };
            let run = exec::run(
                &agent.cfg,
                &project,
                &s,
                ev_tx,
                stop_rx,
                started,
                exec::Links {
                    approval: link,
                    files: Some(&fetch),
                },
            );
            let (end, ()) = tokio::join!(run, forward);
            agent.approvals.close(id);
            let n = seq.fetch_add(1, Ordering::SeqCst);
            let msg = match end {
                ExecEnd::Completed(result) => AgentMessage::Completed {
                    task: id,
                    seq: n,
                    result,
                },
                ExecEnd::Failed {
                    error,
                    cause,
                    session_id,
                } => AgentMessage::Failed {
                    task: id,
                    seq: n,
                    error,
                    cause,
                    session_id,
                },
                ExecEnd::Cancelled => AgentMessage::Cancelled { task: id, seq: n },
            };
            if let Err(e) = agent.state.put_outbox(id, &msg) {
                tracing::error!(task = id.0, error = %e, "cannot keep the result on disk; sending it anyway");
            }
            agent.state.clear_started(id);
            lock(&agent.tasks).remove(&id.0);
            agent.changed.notify_waiters();
            tracing::info!(task = id.0, "task ended");
            agent.send(msg);
        });
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The default heartbeat, when the bot does not say.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(DEFAULT_HEARTBEAT_SECS);
