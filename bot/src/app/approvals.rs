//! Approval requests: a running task asks a person's yes before a tool call.
//!
//! The request is recorded once (a repeat from the agent changes nothing and,
//! once decided, is answered with the decision again); the task's message
//! shows it with **Approve** and **Deny**, and one thread reply mentions the
//! requester. The requester, the admins and the project's approvers may
//! answer; the decision is one guarded update from `pending`, sent to the
//! agent at once if it is connected here, by the process holding it if it
//! is connected to another (a hand-over signal, and a poll of the decisions
//! not yet sent), otherwise when it asks again after reconnecting. The sweep times requests out after
//! `BATON_APPROVAL_TIMEOUT_SECS`, closes those whose task ended, and posts
//! the thread replies still missing (after a restart, only once Slack was
//! asked whether the reply is there).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_shared::TaskId;
use baton_shared::protocol::{BotMessage, Decision, ErrorCode};
use slack_morphism::prelude::*;
use tokio::time::Instant;

use super::App;
use crate::access::Who;
use crate::model::{ApprovalState, ShownApproval, TaskState};
use crate::replies;
use crate::slack::api::MessageBody;
use crate::store::Task;
use crate::store::approvals::Approval;
use crate::sync::lock;

/// How often the sweep reads the pending requests even when this process
/// recorded none since it found none: another process sharing the database
/// (PostgreSQL) may have recorded some, and may be gone.
pub const APPROVAL_RECHECK: Duration = Duration::from_secs(60);

/// The decisions, in the order of [`ApprovalDesk::decided`].
pub const DECISIONS: [Decision; 3] = [Decision::Approved, Decision::Denied, Decision::TimedOut];

/// The block id the thread reply about a request carries, by which Slack
/// shows whether it was posted.
pub fn notice_marker(task: i64, request: u32) -> String {
    format!("baton-approval-{task}-{request}")
}

/// What this process keeps about approval requests besides the database.
#[derive(Debug)]
pub struct ApprovalDesk {
    /// Thread replies this process is posting now, by (task, request): the
    /// sweep does not start a second one meanwhile.
    posting: Arc<Mutex<HashSet<(i64, u32)>>>,
    /// Unix ms (the bot's wall clock) when this process started: an unposted
    /// request older than this may have been posted by the process before,
    /// so Slack is asked first.
    started_at: i64,
    /// False only when no request can be pending: cleared just before the
    /// sweep reads, set after every new request. Spares the sweep its read.
    maybe_pending: AtomicBool,
    /// Decisions this process applied, by kind (see [`DECISIONS`]).
    decided: [AtomicU64; 3],
    /// When the sweep last read the pending requests (see [`APPROVAL_RECHECK`]).
    last_read: Mutex<Option<Instant>>,
}

impl ApprovalDesk {
    /// A desk for a process started at `started_at` (Unix ms).
    pub fn new(started_at: i64) -> Self {
        ApprovalDesk {
            posting: Arc::new(Mutex::new(HashSet::new())),
            started_at,
            maybe_pending: AtomicBool::new(true),
            decided: Default::default(),
            last_read: Mutex::new(None),
        }
    }

    /// Decisions this process applied, by kind, in the order of [`DECISIONS`].
    pub fn decided(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.decided[i].load(Ordering::Relaxed))
    }

    fn count(&self, decision: Decision) {
        let i = DECISIONS.iter().position(|d| *d == decision).unwrap_or(0);
        self.decided[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// What a task's message shows of its requests: every pending one and the
/// latest decisions.
fn shown(rows: &[Approval]) -> Vec<ShownApproval> {
    let decided = rows
        .iter()
        .filter(|a| a.state().decision().is_some())
        .count();
    let skip = decided.saturating_sub(crate::slack::render::SHOWN_DECISIONS);
    let mut seen_decided = 0;
    rows.iter()
        .filter(|a| match a.state() {
            ApprovalState::Pending => true,
            ApprovalState::Closed => false,
            _ => {
                seen_decided += 1;
                seen_decided > skip
            }
        })
        .map(Approval::shown)
        .collect()
}

impl App {
    /// An `approval_request` from `agent`. Returns the frames to answer with.
    pub(super) async fn approval_requested(
        &self,
        agent: &str,
        task: TaskId,
        request: u32,
        tool: &str,
        input: &str,
    ) -> Vec<BotMessage> {
        let id = task.0;
        let row = match self.store.task(id).await {
            Ok(row) => row,
            Err(err) => {
                // Not recorded: the agent asks again after its next welcome.
                tracing::error!(task = id, error = ?err, "cannot read the task of an approval request");
                return Vec::new();
            }
        };
        let Some(row) = row.filter(|t| {
            t.agent.as_deref() == Some(agent) && t.state == TaskState::Running.as_str()
        }) else {
            return vec![BotMessage::Error {
                code: ErrorCode::Unexpected,
                message: format!(
                    "task {task} is not running on agent {agent}; approval request {request} ignored"
                ),
            }];
        };
        let now = self.clock.now_ms();
        match self
            .store
            .record_approval(id, request, tool, input, now)
            .await
        {
            Ok(true) => {
                self.approval_desk
                    .maybe_pending
                    .store(true, Ordering::SeqCst);
                tracing::info!(task = id, agent, request, tool, "approval requested");
                self.show_approvals(id).await;
                if let Ok(Some(a)) = self.store.approval(id, request).await {
                    self.post_approval_notice(&row, &a);
                }
                Vec::new()
            }
            Ok(false) => match self.store.approval(id, request).await {
                Ok(Some(a)) => match a.state().decision() {
                    // Decided: the agent asks again (it missed the answer).
                    Some(decision) => {
                        if !a.delivered {
                            self.mark_delivered(id, request).await;
                        }
                        vec![BotMessage::ApprovalDecision {
                            task,
                            request,
                            decision,
                            by: a.decided_by,
                        }]
                    }
                    None => Vec::new(),
                },
                Ok(None) => Vec::new(),
                Err(err) => {
                    tracing::error!(task = id, error = ?err, "cannot read an approval request");
                    Vec::new()
                }
            },
            Err(err) => {
                tracing::error!(task = id, error = ?err, "cannot record an approval request");
                Vec::new()
            }
        }
    }

    /// Shows task `id`'s requests on its message, as the database has them
    /// (a task this process does not hold live is left as it is).
    async fn show_approvals(&self, id: i64) {
        self.show_approvals_if(id, |_| true).await;
    }

    /// A task this process adopts from an agent that connected to it (after
    /// a restart, or from another process): its message keeps the requests
    /// the database has for it. Nothing is shown when it has none.
    pub(super) async fn adopt_approvals(&self, id: i64) {
        self.show_approvals_if(id, |rows| !rows.is_empty()).await;
    }

    async fn show_approvals_if(&self, id: i64, worth_showing: impl Fn(&[Approval]) -> bool) {
        let rows = match self.store.approvals_of(id).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::error!(task = id, error = ?err, "cannot read the task's approval requests");
                return;
            }
        };
        if !worth_showing(&rows) {
            return;
        }
        let approvals = shown(&rows);
        let task = {
            let mut live = lock(&self.live);
            let Some(task) = live.get_mut(&id) else {
                return;
            };
            task.approvals = approvals;
            task.clone()
        };
        self.consolidator.show(task, None);
    }

    /// After a restart: the live tasks' message views get their pending
    /// requests back (their buttons keep working: the database decides).
    pub(super) async fn restore_approvals(&self) -> anyhow::Result<()> {
        let mut ids: Vec<i64> = self
            .store
            .pending_approvals()
            .await?
            .into_iter()
            .map(|(a, _)| a.task_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.show_approvals(id).await;
        }
        Ok(())
    }

    /// `live`'s approvals view of the task, onto a row read from the database.
    pub(super) fn keep_shown_approvals(&self, task: &mut Task) {
        if let Some(mem) = lock(&self.live).get(&task.id) {
            task.approvals.clone_from(&mem.approvals);
        }
    }

    /// Whether `user` may answer `task`'s approval requests: its requester,
    /// an admin, or one of its project's approvers (a person, or a member of
    /// a user group, as Slack says; refused when Slack cannot answer).
    pub async fn may_approve(&self, task: &Task, user: &str) -> anyhow::Result<bool> {
        if task.requester == user || self.is_admin(user) {
            return Ok(true);
        }
        for row in self.store.approvers(&task.project).await? {
            match Who::from_stored(&row.kind, &row.entry_id) {
                Some(Who::User(id)) if id == user => return Ok(true),
                Some(Who::Group(group)) => {
                    match self.directory.in_group(&self.slack, &group, user).await {
                        Ok(true) => return Ok(true),
                        Ok(false) => {}
                        Err(err) => {
                            tracing::warn!(group, error = %err, "cannot read a user group from Slack")
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// A click on Approve or Deny of request `request` of task `task`, by
    /// `user`. Returns what they are told. Applied once: a request already
    /// decided (a double click, another approver first) changes nothing.
    pub async fn answer_approval(
        &self,
        task: TaskId,
        request: u32,
        user: &str,
        decision: Decision,
    ) -> String {
        self.try_answer_approval(task, request, user, decision)
            .await
            .unwrap_or_else(|err| {
                tracing::error!(task = task.0, error = ?err, "cannot answer an approval request");
                replies::internal_error()
            })
    }

    async fn try_answer_approval(
        &self,
        task: TaskId,
        request: u32,
        user: &str,
        decision: Decision,
    ) -> anyhow::Result<String> {
        let id = task.0;
        let Some(a) = self.store.approval(id, request).await? else {
            return Ok(replies::no_such_approval(task, request));
        };
        let Some(t) = self.store.task(id).await? else {
            return Ok(replies::no_such_task(task));
        };
        if !self.may_approve(&t, user).await? {
            tracing::info!(task = id, user, request, "approval answer refused");
            self.store
                .audit(
                    user,
                    "refused.approve",
                    &format!("#{id}"),
                    "not the requester, an admin or an approver",
                )
                .await?;
            let approvers: Vec<String> = self
                .store
                .approvers(&t.project)
                .await?
                .iter()
                .filter_map(|row| Who::from_stored(&row.kind, &row.entry_id))
                .map(|who| who.mention())
                .collect();
            return Ok(replies::not_an_approver(
                task,
                &t.requester,
                &t.project,
                user,
                &approvers,
            ));
        }
        if a.state() != ApprovalState::Pending {
            return Ok(already(&a));
        }
        let state: TaskState = t.state.parse().unwrap_or(TaskState::Failed);
        if state != TaskState::Running {
            // Ended (or put back) before anyone answered: nothing to decide.
            self.store.close_approvals(id, self.clock.now_ms()).await?;
            return Ok(replies::approval_already_decided(
                task,
                request,
                ApprovalState::Closed,
                None,
            ));
        }
        let now = self.clock.now_ms();
        if !self
            .store
            .decide_approval(id, request, decision, Some(user), now)
            .await?
        {
            let now_row = self.store.approval(id, request).await?.unwrap_or(a);
            return Ok(already(&now_row));
        }
        self.store
            .audit(
                user,
                &format!("approval.{}", ApprovalState::of(decision)),
                &format!("#{id}"),
                &format!("request {request}: {}", a.tool),
            )
            .await?;
        self.approval_decided(&t, request, decision, Some(user))
            .await;
        Ok(replies::approval_decided(task, request, decision.allows()))
    }

    /// A decision was recorded: the agent hears it now if connected here;
    /// if connected to another process, from it (hand-over); else when it
    /// asks again. The message shows it.
    async fn approval_decided(
        &self,
        task: &Task,
        request: u32,
        decision: Decision,
        by: Option<&str>,
    ) {
        self.approval_desk.count(decision);
        tracing::info!(task = task.id, request, ?decision, by, "approval decided");
        if let Some(agent) = task.agent.as_deref() {
            let frame = BotMessage::ApprovalDecision {
                task: TaskId(task.id),
                request,
                decision,
                by: by.map(str::to_owned),
            };
            if self.hub.send(agent, frame) {
                self.mark_delivered(task.id, request).await;
            } else {
                self.announce(super::Signal::Decided(task.id, request))
                    .await;
            }
        }
        self.show_approvals(task.id).await;
    }

    /// Records that a decision reached its agent (a failure is logged: at
    /// worst the poll sends it again, which the agent ignores).
    async fn mark_delivered(&self, task: i64, request: u32) {
        if let Err(err) = self.store.approval_delivered(task, request).await {
            tracing::warn!(task, request, error = ?err, "cannot record that the approval decision was sent");
        }
    }

    /// Sends the decision of request `request` of task `task`, made on
    /// another process, to its agent if this process holds it.
    pub(super) async fn deliver_decision(&self, task: i64, request: u32) {
        let read = async {
            let a = self.store.approval(task, request).await?;
            let t = self.store.task(task).await?;
            anyhow::Ok(a.zip(t))
        };
        match read.await {
            Ok(Some((a, t))) if !a.delivered && t.state == TaskState::Running.as_str() => {
                if let Some(agent) = t.agent {
                    self.send_decision(&a, &agent).await;
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::error!(task, request, error = ?err, "cannot read an approval decision to send")
            }
        }
    }

    /// Sends every decision not yet sent to the agents this process holds
    /// (the poll, should a hand-over notification have been missed).
    pub(super) async fn deliver_decisions(&self) {
        match self.store.undelivered_decisions(self.instance_id()).await {
            Ok(rows) => {
                for (a, agent) in rows {
                    self.send_decision(&a, &agent).await;
                }
            }
            Err(err) => tracing::error!(error = ?err, "cannot read the approval decisions to send"),
        }
    }

    /// Sends decided request `a` to `agent` if this process holds it, and
    /// records that it was sent.
    async fn send_decision(&self, a: &Approval, agent: &str) {
        let Some(decision) = a.state().decision() else {
            return;
        };
        let request = u32::try_from(a.request).unwrap_or(u32::MAX);
        let frame = BotMessage::ApprovalDecision {
            task: TaskId(a.task_id),
            request,
            decision,
            by: a.decided_by.clone(),
        };
        if self.hub.send(agent, frame) {
            tracing::info!(
                task = a.task_id,
                request,
                agent,
                "approval decision handed over to the agent"
            );
            self.mark_delivered(a.task_id, request).await;
        }
    }

    /// The approval part of the sweep: pending requests past
    /// `BATON_APPROVAL_TIMEOUT_SECS` time out, those whose task no longer
    /// runs are closed, and missing thread replies are posted.
    pub(super) async fn sweep_approvals(&self) {
        let desk = &self.approval_desk;
        let due = lock(&desk.last_read).is_none_or(|at| at.elapsed() >= APPROVAL_RECHECK);
        if !desk.maybe_pending.swap(false, Ordering::SeqCst) && !due {
            return;
        }
        *lock(&desk.last_read) = Some(Instant::now());
        let pending = match self.store.pending_approvals().await {
            Ok(p) => p,
            Err(err) => {
                desk.maybe_pending.store(true, Ordering::SeqCst);
                tracing::error!(error = ?err, "cannot read the pending approval requests");
                return;
            }
        };
        let mut left = pending.len() as u64 >= crate::store::approvals::PENDING_BATCH;
        let timeout_ms = i64::try_from(self.settings.approval_timeout_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let now = self.clock.now_ms();
        for (a, task) in pending {
            let request = u32::try_from(a.request).unwrap_or(u32::MAX);
            if task.state != TaskState::Running.as_str() {
                match self.store.close_approvals(task.id, now).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(
                            task = task.id,
                            closed = n,
                            "task ended; its approval requests are closed"
                        )
                    }
                    Ok(_) => {}
                    Err(err) => {
                        left = true;
                        tracing::error!(task = task.id, error = ?err, "cannot close approval requests")
                    }
                }
                continue;
            }
            if now.saturating_sub(a.requested_at) >= timeout_ms {
                match self
                    .store
                    .decide_approval(task.id, request, Decision::TimedOut, None, now)
                    .await
                {
                    Ok(true) => {
                        self.approval_decided(&task, request, Decision::TimedOut, None)
                            .await
                    }
                    Ok(false) => {}
                    Err(err) => {
                        left = true;
                        tracing::error!(task = task.id, error = ?err, "cannot time out an approval request")
                    }
                }
                continue;
            }
            left = true;
            if !a.posted {
                self.post_approval_notice(&task, &a);
            }
        }
        if left {
            desk.maybe_pending.store(true, Ordering::SeqCst);
        }
    }

    /// Posts the thread reply that mentions the requester of `task` about
    /// request `a`, once: in the background, not while another post of it
    /// runs, after looking in the thread when an earlier process may have
    /// posted it. Not yet possible (no message yet) or failed: the sweep
    /// tries again.
    fn post_approval_notice(&self, task: &Task, a: &Approval) {
        let Some(root) = task.thread_ts.clone().or(task.message_ts.clone()) else {
            return;
        };
        let request = u32::try_from(a.request).unwrap_or(u32::MAX);
        let key = (task.id, request);
        if !lock(&self.approval_desk.posting).insert(key) {
            return;
        }
        let posting = self.approval_desk.posting.clone();
        let look_first = a.requested_at < self.approval_desk.started_at;
        let (store, slack) = (self.store.clone(), self.slack.clone());
        let (channel, requester, tool) = (
            task.channel_id.clone(),
            task.requester.clone(),
            a.tool.clone(),
        );
        let id = task.id;
        tokio::spawn(async move {
            let marker = notice_marker(id, request);
            let done = async {
                // Another post of it may have just settled.
                if store
                    .approval(id, request)
                    .await?
                    .is_none_or(|row| row.posted)
                {
                    return anyhow::Ok(());
                }
                if look_first
                    && slack
                        .thread_block_ids(&channel, &root)
                        .await?
                        .contains(&marker)
                {
                    return store.approval_posted(id, request).await;
                }
                let text = replies::approval_needed(&requester, TaskId(id), &tool);
                let body = MessageBody {
                    text: text.clone(),
                    blocks: vec![
                        SlackSectionBlock::new()
                            .with_text(md!(text))
                            .with_block_id(marker.clone().into())
                            .into(),
                    ],
                };
                slack.post_message(&channel, Some(&root), &body).await?;
                store.approval_posted(id, request).await
            }
            .await;
            if let Err(err) = done {
                tracing::warn!(task = id, request, error = ?err, "cannot post the approval request's thread reply; will try again");
            }
            lock(&posting).remove(&(id, request));
        });
    }

    /// What `/baton status #ID` adds for a task that waits for approval.
    pub async fn approval_status(&self, task: &Task) -> Option<String> {
        if task.state != TaskState::Running.as_str() {
            return None;
        }
        let rows = self.store.approvals_of(task.id).await.ok()?;
        let tools: Vec<String> = rows
            .iter()
            .filter(|a| a.state() == ApprovalState::Pending)
            .map(|a| {
                format!(
                    "`{}`",
                    crate::slack::mrkdwn::escape_text(&a.tool.replace('`', "'"))
                )
            })
            .collect();
        (!tools.is_empty()).then(|| {
            format!(
                " · :raised_hand: waiting for approval to use {}",
                tools.join(", ")
            )
        })
    }
}

/// The answer to a click on a request that is no longer pending.
fn already(a: &Approval) -> String {
    replies::approval_already_decided(
        TaskId(a.task_id),
        u32::try_from(a.request).unwrap_or(u32::MAX),
        a.state(),
        a.decided_by.as_deref(),
    )
}
