//! Creating tasks: resolving the project, the access check, the queue's
//! bound and the rate limit, then one write (dispatched or queued).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use baton_shared::files::{check_attachments, unique_names};
use tokio::time::Instant;

use super::{App, RequestError, TaskRequest};
use crate::breaker::Outcome;
use crate::hub::{Route, WaitReason};
use crate::replies;
use crate::store::{NewTask, ProjectRules, Task, TaskFile};
use crate::sync::lock;

impl App {
    /// Picks the task's project: `--project`, the channel's binding, or the only one.
    /// A refusal lists only the projects the requester may use: the names
    /// of the others are not theirs to learn.
    async fn resolve_project(&self, req: &TaskRequest) -> Result<String, RequestError> {
        let explicit = req.project.as_ref();
        // The channel's binding first: the common case needs one query.
        if explicit.is_none()
            && let Some(bound) = self.binding(&req.channel_id).await?
        {
            return Ok(bound);
        }
        let known = self.store.project_names().await?;
        if let Some(p) = explicit
            && known.iter().any(|k| k == p.as_str())
        {
            return Ok(p.to_string());
        }
        if explicit.is_none()
            && let [only] = known.as_slice()
        {
            return Ok(only.clone());
        }
        let usable: Vec<String> = self
            .usable_projects(&req.requester, &req.team_id)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let any = !known.is_empty();
        Err(RequestError::User(match explicit {
            Some(p) => replies::unknown_project(p.as_str(), &usable, any),
            None => replies::no_project(&usable, any),
        }))
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
        // Files a task cannot take refuse the request before anything is written.
        let files = task_files(&req.files)?;
        let project = self.resolve_project(&req).await?;
        // Who may start what: one check for every way a task is created.
        let rules = self.check_start(&req, &project).await?;
        // An agent that can take it now is chosen before it is written, so it
        // is written dispatched to that agent: one write, not insert then claim.
        let mut routed = match (req.after_task, req.session_agent.as_deref()) {
            // A follow-up waiting for an earlier task goes to no agent yet.
            (Some(_), _) => Err(WaitReason::Busy),
            // A session exists only on the agent that made it.
            (None, Some(agent)) => self.hub.route_new_to(agent, &project),
            (None, None) => self.hub.route_new(&project),
        };
        // The queue is first in, first out: a task does not overtake the
        // tasks waiting in its project's queue (queued by another process a
        // moment ago, or here before an agent freed up). It joins the queue
        // behind them, and the dispatcher hands them out in order.
        let release = |routed: &Result<(Route, i64), WaitReason>| {
            if let Ok((route, placeholder)) = routed {
                self.hub
                    .release(&route.agent, *placeholder, Outcome::Ignored);
            }
        };
        let behind_queue = match &routed {
            Ok(_) => match self.queue_ahead(&project, &rules).await {
                Ok(ahead) => ahead,
                Err(err) => {
                    release(&routed);
                    return Err(err);
                }
            },
            Err(_) => false,
        };
        if behind_queue {
            release(&routed);
            routed = Err(WaitReason::Busy);
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
            after_task: req.after_task,
            session_agent: req.session_agent,
            // Its message is this process's to post (and to edit while it
            // waits, whoever shows the queue): written with it, so that its
            // first claim needs no statement (`MessageDesk::created_here`).
            editor: self
                .store
                .is_shared()
                .then(|| self.instance_id().to_owned()),
        };
        let written = match &routed {
            Ok(_) => self.store.insert_task_with_files(new, &files).await,
            // It joins the queue only if the queue has room: the bound is on
            // the queue (a task an agent takes now does not join it), and
            // checked by the insert itself.
            Err(_) => {
                let project = new.project.clone();
                let max = self.settings.queue_max;
                // An agent of another process may serve it: they hear of it
                // as its insert commits.
                let queued = super::Signal::Queued {
                    follow_up: new.after_task.is_some(),
                }
                .encode(self.instance_id());
                let notify = self
                    .store
                    .is_shared()
                    .then_some((super::CHANNEL, queued.as_str()));
                match self
                    .store
                    .insert_queued_task_with_files(new, max, &files, notify)
                    .await
                {
                    Ok(Some(task)) => {
                        if behind_queue {
                            // An agent here has room for the queue's head.
                            self.dispatch_wake.notify_one();
                        }
                        Ok(task)
                    }
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
        if self.store.is_shared() {
            self.desk.created_here(task.id);
        }
        if let Some(url) = response_url {
            lock(&self.response_urls).insert(task.id, (url, Instant::now()));
        }
        match routed {
            Ok((route, placeholder)) => {
                self.hub.bind_new(&route.agent, placeholder, task.id);
                // Its files were written with it: no read before the frame leaves.
                self.hand_out(task.clone(), &route, Some(&files)).await;
            }
            Err(_) if task.after_task.is_some() => {
                self.show_queued(&task.project).await;
                tracing::info!(
                    task = task.id,
                    after = task.after_task,
                    "follow-up waits for its turn"
                );
                // Its predecessor may have ended meanwhile.
                self.dispatch_wake.notify_one();
            }
            Err(reason) => {
                self.show_queued(&task.project).await;
                tracing::debug!(task = task.id, reason = reason.describe(), "task waits");
            }
        }
        Ok(task)
    }

    /// Whether tasks that an agent may take wait in `project`'s queue:
    /// as read with its `rules` when it was (PostgreSQL), else read only
    /// when one may wait: on a database other processes share, or when
    /// this process queued a task the dispatcher has not seen go.
    async fn queue_ahead(&self, project: &str, rules: &ProjectRules) -> Result<bool, RequestError> {
        if !self.store.is_shared() && !self.store.may_have_queue() {
            return Ok(false);
        }
        if let Some(waiting) = rules.queue_waiting {
            return Ok(waiting);
        }
        Ok(!self.store.dispatchable(project, 0, 1).await?.is_empty())
    }
}

/// The files of a request as the task keeps them, with safe distinct names;
/// refused (with what would allow them) when a task cannot take them.
fn task_files(files: &[super::Attachment]) -> Result<Vec<TaskFile>, RequestError> {
    check_attachments(files.iter().map(|f| (f.name.as_str(), f.size)))
        .map_err(|refusal| RequestError::User(replies::files_refused(&refusal)))?;
    let names = unique_names(files.iter().map(|f| f.name.as_str()));
    Ok(files
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (f, name))| TaskFile {
            task_id: 0,
            file_id: f.id.clone(),
            position: i32::try_from(i).unwrap_or(i32::MAX),
            name,
            size: i64::try_from(f.size).unwrap_or(i64::MAX),
            url: f.url.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use baton_shared::protocol::BotMessage;
    use baton_shared::{Persona, TaskId};
    use futures::StreamExt;

    use crate::app::test_support::*;
    use crate::app::{App, RequestError, TaskRequest};
    use crate::hub::{Outbox, Outgoing, Register};
    use crate::model::TaskState;
    use crate::settings::Settings;
    use crate::slack::api::SlackApi;
    use crate::store::Store;
    use crate::sync::lock;

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
        app.hub.reconciled("a");

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
            session_agent: None,
            after_task: None,
            response_url: None,
            files: Vec::new(),
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

    /// The queue is first in, first out: a task created while an agent has
    /// room but tasks still wait (the slot freed before the dispatcher ran;
    /// or, on PostgreSQL, queued by another process a moment ago) goes
    /// behind them, and the dispatcher hands the oldest out first.
    #[tokio::test]
    async fn a_new_task_does_not_overtake_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, store, mut frames) = app_with_agent(&dir).await;
        let first = app.create_task(request("first")).await.expect("first");
        let waiting = app.create_task(request("waiting")).await.expect("waiting");
        assert_eq!(submits(&mut frames), vec![TaskId(first.id)]);
        assert_eq!(waiting.state, "queued");

        // The agent's slot frees; the dispatcher has not run yet.
        app.hub
            .release("a", first.id, crate::breaker::Outcome::Success);
        let late = app.create_task(request("late")).await.expect("late");
        assert_eq!(late.state, "queued", "it waits behind #{}", waiting.id);
        assert_eq!(submits(&mut frames), Vec::<TaskId>::new());

        app.dispatch_pass().await;
        assert_eq!(submits(&mut frames), vec![TaskId(waiting.id)]);
        let late = store.task(late.id).await.expect("read").expect("written");
        assert_eq!(late.state, "queued");

        // With nothing waiting, a new task goes straight to an agent with room.
        app.hub
            .release("a", waiting.id, crate::breaker::Outcome::Success);
        app.dispatch_pass().await;
        assert_eq!(submits(&mut frames), vec![TaskId(late.id)]);
        app.hub
            .release("a", late.id, crate::breaker::Outcome::Success);
        app.dispatch_pass().await;
        let direct = app.create_task(request("direct")).await.expect("direct");
        assert_eq!(direct.state, "dispatched");
        assert_eq!(submits(&mut frames), vec![TaskId(direct.id)]);
    }
}
