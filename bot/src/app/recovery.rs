//! The sweeps (accept timeouts, queue expiry, lost agents, kept
//! `response_url`s) and recovery after a restart.

use std::time::Duration;

use tokio::time::Instant;

use super::App;
use crate::breaker::Outcome;
use crate::model::TaskState;
use crate::store::{Ending, Requeued};
use crate::sync::lock;

/// How often the sweeps run.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long a slash command's `response_url` is kept for its task (Slack
/// accepts posts to it for 30 minutes).
pub const RESPONSE_URL_KEPT: Duration = Duration::from_secs(30 * 60);

impl App {
    /// Accept timeouts, queue expiry, approval requests, lost agents. Runs every [`SWEEP_INTERVAL`].
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

        self.sweep_approvals().await;

        let grace = Duration::from_secs(self.settings.agent_grace_secs);
        let lost = self.hub.lost_agents(grace);
        // An agent connected to another live process is not lost: its
        // tasks are that process's (always none on SQLite).
        let elsewhere = if lost.is_empty() {
            Default::default()
        } else {
            match self.agents_held_elsewhere().await {
                Ok(held) => held,
                Err(err) => {
                    tracing::error!(error = ?err, "cannot read which processes hold the agents; no agent is declared lost now");
                    return;
                }
            }
        };
        for (agent, tasks) in lost {
            if elsewhere.contains(&agent) {
                self.let_go(&agent, &tasks);
                continue;
            }
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
                    .finish_lost(
                        id,
                        &agent,
                        self.instance_id(),
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
    /// wait for them, and every message not up to date is shown again. The
    /// tasks of agents another live process holds are left to it (none on
    /// SQLite); a stopped process's are taken over once its lease expires
    /// (see [`App::take_over_orphans`]).
    pub async fn recover(&self) -> anyhow::Result<()> {
        self.store.release_stale_retry_claims().await?;
        let elsewhere = self.agents_held_elsewhere().await?;
        for task in self
            .store
            .tasks_in(&[TaskState::Dispatched, TaskState::Running], u64::MAX)
            .await?
        {
            if task.agent.as_ref().is_some_and(|a| elsewhere.contains(a)) {
                continue;
            }
            self.adopt_task(task);
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
        // Last: the messages of tasks that wait for approval keep their buttons.
        self.restore_approvals().await?;
        self.dispatch_wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use baton_shared::TaskId;
    use baton_shared::protocol::AgentMessage;
    use tokio::time::Instant;

    use crate::app::App;
    use crate::hub::{Outbox, Register};
    use crate::settings::Settings;
    use crate::slack::api::SlackApi;
    use crate::store::{NewTask, Store};
    use crate::sync::lock;

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
        let req = NewTask {
            agent: Some("a".into()),
            ..NewTask::sample()
        };
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
        app.hub.reconciled("a");
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
}
