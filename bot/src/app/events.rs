//! Applying agents' events (accepted, progress, endings, rejections) and
//! reconciling what an agent says it holds when it connects.

use std::collections::HashSet;

use baton_shared::TaskId;
use baton_shared::protocol::{AgentMessage, BotMessage, ErrorCode, Hello};

use super::App;
use crate::breaker::Outcome;
use crate::model::TaskState;
use crate::slack::render::{OUTPUT_TAIL_KEPT_CHARS, SHOWN_STEPS};
use crate::store::{Ending, Progress, Requeued, Task};
use crate::sync::lock;

fn outcome_of(msg: &AgentMessage) -> Outcome {
    match msg {
        AgentMessage::Completed { .. } => Outcome::Success,
        AgentMessage::Failed { cause, .. } if cause.counts_against_agent() => Outcome::Failure,
        _ => Outcome::Ignored,
    }
}

impl App {
    /// Applies one event from `agent`. Returns the frames to answer with.
    pub async fn apply_event(&self, agent: &str, msg: AgentMessage) -> Vec<BotMessage> {
        if let AgentMessage::ApprovalRequest {
            task,
            request,
            tool,
            input,
        } = msg
        {
            return self
                .approval_requested(agent, task, request, &tool, &input)
                .await;
        }
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

        // A progress event that applies takes the task out of the live map
        // (it goes back with the event applied): one copy of the row per
        // event, not two. Anything else works on a copy.
        let progress = matches!(msg, AgentMessage::Step { .. } | AgentMessage::Output { .. });
        let mut live = {
            let mut map = lock(&self.live);
            match map.get(&id) {
                Some(t) if progress && t.agent.as_deref() == Some(agent) && seq_i > t.last_seq => {
                    map.remove(&id)
                }
                other => other.cloned(),
            }
        };
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
            // Not task events: `task_seq` returned early for them.
            AgentMessage::Hello(_)
            | AgentMessage::Draining
            | AgentMessage::ApprovalRequest { .. } => Vec::new(),
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
        // Tasks this process did not hold live: their approval requests are
        // read from the database once they are.
        let mut adopted = Vec::new();
        for mut task in mine {
            let state: TaskState = task.state.parse().unwrap_or(TaskState::Running);
            if running.contains(&task.id) || held.contains(&task.id) {
                if task.message_ts.is_none() && !lock(&self.live).contains_key(&task.id) {
                    // Another process held it: it may have posted the message
                    // and died before it stored the ts.
                    self.consolidator.may_have_posted(task.id);
                }
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
                // applied in memory but not yet written is kept, and so is
                // what its message shows of its approval requests.
                self.keep_shown_approvals(&mut task);
                let mut live = lock(&self.live);
                if let Some(mem) = live.get(&task.id)
                    && mem.last_seq > task.last_seq
                {
                    task.steps.clone_from(&mem.steps);
                    task.step_count = mem.step_count;
                    task.output_tail.clone_from(&mem.output_tail);
                    task.last_seq = mem.last_seq;
                }
                if !live.contains_key(&task.id) {
                    adopted.push(task.id);
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
        for id in adopted {
            self.adopt_approvals(id).await;
        }
        self.dispatch_wake.notify_one();
        Ok(out)
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
    use baton_shared::TaskId;
    use baton_shared::protocol::AgentMessage;

    use crate::app::test_support::*;

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
}
