//! What a person or an admin does to a task: cancel, retry, forgetting a
//! purged task's queued message, and cancelling a task whose message
//! Slack refuses.

use std::sync::Arc;

use baton_shared::protocol::BotMessage;
use baton_shared::{ProjectName, TaskId};

use super::{App, RequestError, TaskRequest};
use crate::model::{Retry, TaskState};
use crate::replies;
use crate::slack::api::MessageBody;
use crate::store::{Ending, Task};
use crate::sync::lock;

/// How many times a cancel reads the task again when it moved meanwhile.
const CANCEL_ROUNDS: usize = 3;

impl App {
    /// Forgets what a task's queued message last showed: the task left its
    /// queue another way than through the dispatcher or a cancel (a purge).
    pub fn forget_queued(&self, id: i64) {
        lock(&self.queue_shown).remove(&id);
    }

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
                    // Delivered now if connected here; if connected to another
                    // process, by it (hand-over); otherwise on reconnect
                    // (reconciliation).
                    if !self.hub.send(agent, BotMessage::Cancel { task: id }) {
                        self.announce(super::Signal::Cancel(id.0)).await;
                    }
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
        let refusal = |t: &Task| match t.retry() {
            Retry::Claimed => replies::retry_in_progress(id),
            Retry::As(new) => replies::already_retried(id, new),
            Retry::None => replies::cannot_retry(id, state),
        };
        if !state.can_retry() || task.retry() != Retry::None {
            return Err(RequestError::User(refusal(&task)));
        }
        // A retry takes the files the task was given (read before the
        // claim: nothing is left to undo if the read fails).
        let files = self
            .store
            .task_files(task.id)
            .await?
            .into_iter()
            .map(|f| super::Attachment {
                id: f.file_id,
                name: f.name,
                size: u64::try_from(f.size).unwrap_or_default(),
                url: f.url,
            })
            .collect();
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
                session_agent: None,
                after_task: None,
                response_url: None,
                files,
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
                        if !self.hub.send(&agent, BotMessage::Cancel { task: id }) {
                            self.announce(super::Signal::Cancel(task.id)).await;
                        }
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::app::App;
    use crate::settings::Settings;
    use crate::slack::api::SlackApi;
    use crate::store::Store;
    use crate::sync::lock;

    use crate::app::test_support::*;

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
        let answer = crate::admin::handle(&app, "UADMIN", "C1", "queue purge web").await;
        assert!(answer.contains("Removed 2"), "{answer}");
        assert!(lock(&app.queue_shown).is_empty());
    }
}
