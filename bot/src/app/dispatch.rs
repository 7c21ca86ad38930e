//! Dispatching: handing queued tasks to agents with room, showing the
//! queued ones' positions, and the dispatcher loop that drives it all.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use baton_shared::protocol::{BotMessage, Submit, SubmitFile};
use baton_shared::{Persona, ProjectName, TaskId};
use tokio::time::Instant;

use super::{App, SWEEP_INTERVAL};
use crate::breaker::Outcome;
use crate::hub::Route;
use crate::model::TaskState;
use crate::personas;
use crate::replies;
use crate::slack::render;
use crate::store::{Ending, Task, TaskFile};
use crate::sync::lock;

/// How often old Slack event ids are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// How long a Slack event id is remembered (Slack retries for minutes).
pub const EVENT_ID_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Queued tasks a dispatch pass reads, routes and claims at once.
pub const DISPATCH_BATCH: u64 = 64;
/// How long after a pass that could not claim a queued task (see
/// [`App::dispatch_pass`]) the next one runs; doubled for each further try.
const CLAIM_RETRY_FIRST: Duration = Duration::from_millis(2);
/// How many such passes follow one another before the next wake or tick.
const CLAIM_RETRIES: u32 = 4;

impl App {
    /// Sends a task claimed for `route`'s agent to it, starts its accept
    /// timeout and shows it. A task that cannot be sent (its project name is not
    /// a valid one, which the names' sources rule out) fails visibly rather than
    /// stay dispatched with nothing to time it out. `files` are the task's
    /// files when the caller knows them (it wrote them with the task); None
    /// reads them from the database.
    pub(super) async fn hand_out(&self, task: Task, route: &Route, files: Option<&[TaskFile]>) {
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
        // Its files go with every dispatch (a re-dispatch after a restart too).
        let read = match files {
            Some(known) => Ok(known.to_vec()),
            None => self.store.task_files(task.id).await,
        };
        let files = match read {
            Ok(files) => Some(
                files
                    .into_iter()
                    .map(|f| SubmitFile {
                        id: f.file_id,
                        name: f.name,
                        size: u64::try_from(f.size).unwrap_or_default(),
                    })
                    .collect::<Vec<_>>(),
            ),
            Err(err) => {
                // Not sent without its files: the accept timeout puts it back.
                tracing::error!(task = task.id, error = ?err, "cannot read the task's files");
                None
            }
        };
        let files_read = files.is_some();
        let submit = BotMessage::Submit(Box::new(Submit {
            task: TaskId(task.id),
            project,
            persona,
            prompt: task.prompt.clone(),
            session_id: task.session_id.clone(),
            system_prompt: Some(def.system_prompt.to_owned()),
            allowed_tools: def.allowed_tools.iter().map(|t| (*t).to_owned()).collect(),
            model: task.model.clone(),
            files: files.unwrap_or_default(),
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
        if files_read {
            let _ = route.tx.send(crate::hub::Outgoing::Frame(submit));
        }
        let waited = (self.clock.now_ms() - task.queued_at).max(0) as u64;
        self.dispatch_latency.observe(Duration::from_millis(waited));
        tracing::info!(task = task.id, agent = %route.agent, "task dispatched");
        self.consolidator.show(task, None);
    }

    /// Hands queued tasks to agents with room, in queue order, then refreshes
    /// what the still-queued tasks' messages say.
    ///
    /// Returns whether it passed over a task it read queued and routed but
    /// could not claim. Another process claimed it, or (PostgreSQL, whose
    /// claims skip locked rows so that no process waits for another's)
    /// another statement held its row for a moment: the process that created
    /// it writing its message's ts, say, which happens just as the others
    /// hear of the task. Such a task must not wait for the next second's
    /// pass: the dispatcher tries again within milliseconds.
    pub async fn dispatch_pass(&self) -> bool {
        self.pass(true).await
    }

    /// [`App::dispatch_pass`]; `show_queues`: and refresh the queued tasks'
    /// messages (not in the quick passes that follow a passed-over task:
    /// nothing they would show has changed in those milliseconds).
    async fn pass(&self, show_queues: bool) -> bool {
        let mut passed_over = false;
        self.release_follow_ups().await;
        let projects = match self.store.projects_with_queue().await {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(error = ?err, "cannot read the queues");
                return false;
            }
        };
        for project in projects {
            // Where the next read starts: a task pinned to a busy agent (it
            // holds the task's session) is passed over, never read again in
            // this pass, and never holds up the tasks behind it.
            let mut read_after = 0;
            'project: loop {
                let room = self.hub.projects_with_room();
                if !room.contains(&project) {
                    break;
                }
                let batch = match self
                    .store
                    .dispatchable(&project, read_after, DISPATCH_BATCH)
                    .await
                {
                    Ok(b) if !b.is_empty() => b,
                    _ => break,
                };
                read_after = batch.last().map_or(read_after, |t| t.id);
                // Route the batch in queue order (each route holds a slot on its
                // agent), then claim it with one statement per agent.
                let mut routed = Vec::with_capacity(batch.len());
                let mut full = false;
                for task in batch {
                    if let Some(agent) = task.session_agent.as_deref() {
                        // Only its agent; busy, it waits for a later pass.
                        if let Ok(route) = self.hub.route_to(agent, &task.project, task.id) {
                            routed.push((task, route));
                        }
                        continue;
                    }
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
                // The batch's files in one read (should it fail, each task's
                // are read as it goes).
                let ids: Vec<i64> = claimed.iter().copied().collect();
                let files = match self.store.files_of(&ids).await {
                    Ok(files) => Some(files),
                    Err(err) => {
                        tracing::warn!(error = ?err, "cannot read the batch's files; reading them one by one");
                        None
                    }
                };
                for (task, route) in routed {
                    if !claimed.contains(&task.id) {
                        // No longer queued (claimed elsewhere, cancelled), its
                        // row held for a moment, or the claim failed.
                        passed_over |= !failed;
                        self.hub.release(&route.agent, task.id, Outcome::Ignored);
                        continue;
                    }
                    let known = files
                        .as_ref()
                        .map(|f| f.get(&task.id).map_or(&[][..], Vec::as_slice));
                    self.hand_out(task, &route, known).await;
                }
                if full {
                    break 'project;
                }
            }
            if show_queues {
                self.show_queued(&project).await;
            }
        }
        passed_over
    }

    /// Runs a dispatch pass; when it passed over a task it could not claim,
    /// when to run the next one (the `tries`-th in a row).
    async fn pass_and_plan(&self, tries: u32) -> Option<(Instant, u32)> {
        let passed_over = self.pass(tries == 0).await;
        (passed_over && tries < CLAIM_RETRIES).then(|| {
            (
                Instant::now() + CLAIM_RETRY_FIRST * 2u32.pow(tries),
                tries + 1,
            )
        })
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

    /// Lets the follow-ups whose turn came run. A follow-up waits (its
    /// `after_task`) until every earlier task of its thread has ended (earlier
    /// waiting follow-ups included, so replies run in order, one at a time);
    /// then it joins its project's queue resuming the thread's latest session,
    /// pinned to the agent that holds it. How the earlier tasks ended does not
    /// matter: failed or cancelled, the follow-up still runs (with the
    /// session, if one was made). One that ended while it waited (cancelled,
    /// expired) is taken off the waiting list.
    async fn release_follow_ups(&self) {
        if !self.store.may_have_waiting() {
            return;
        }
        let waiting = match self.store.waiting_follow_ups().await {
            Ok(w) => w,
            Err(err) => {
                tracing::error!(error = ?err, "cannot read the waiting follow-ups");
                return;
            }
        };
        // Only those whose predecessor ended need a closer look (one read).
        let afters: Vec<i64> = waiting.iter().filter_map(|t| t.after_task).collect();
        let ended: HashSet<i64> = match self.store.ended_among(&afters).await {
            Ok(ended) => ended.into_iter().collect(),
            Err(err) => {
                tracing::error!(error = ?err, "cannot read the follow-ups' predecessors");
                return;
            }
        };
        for follow_up in waiting {
            let due = render::task_state(&follow_up) != TaskState::Queued
                || follow_up.after_task.is_some_and(|a| ended.contains(&a));
            if !due {
                continue;
            }
            if let Err(err) = self.release_follow_up(&follow_up).await {
                tracing::error!(task = follow_up.id, error = ?err, "cannot release a follow-up");
            }
        }
    }

    /// Releases one waiting follow-up if its turn came (see [`App::release_follow_ups`]).
    async fn release_follow_up(&self, follow_up: &Task) -> anyhow::Result<()> {
        let Some(after) = follow_up.after_task else {
            return Ok(());
        };
        if render::task_state(follow_up) != TaskState::Queued {
            return self.store.forget_waiting(follow_up.id).await;
        }
        // The tasks of its thread before it (a follow-up always has a thread;
        // without one, the task it waits for alone).
        let earlier: Vec<Task> = match follow_up.thread_ts.as_deref() {
            Some(root) => self
                .store
                .thread_tasks(&follow_up.channel_id, root)
                .await?
                .into_iter()
                .filter(|t| t.id < follow_up.id)
                .collect(),
            None => self.store.task(after).await?.into_iter().collect(),
        };
        if let Some(blocking) = earlier
            .iter()
            .rev()
            .find(|t| !render::task_state(t).is_terminal())
        {
            // Not yet. If what it waited for ended while an earlier task still
            // runs, it now waits for that one, and its message says so.
            if blocking.id != after {
                let reason = replies::waits_for_task(TaskId(blocking.id));
                if self
                    .store
                    .wait_after(follow_up.id, after, blocking.id, &reason)
                    .await?
                {
                    self.show_from_db(follow_up.id).await;
                }
            }
            return Ok(());
        }
        // The thread's latest session, on the agent that holds it: the agent
        // that ran the task, or (never run) the one it was pinned to.
        let holder = earlier.iter().rev().find(|t| {
            t.session_id
                .as_ref()
                .is_some_and(|s| baton_shared::SessionId::new(s.clone()).is_ok())
        });
        let (session_id, session_agent) = match holder {
            Some(t) => (
                t.session_id.clone(),
                t.agent.clone().or_else(|| t.session_agent.clone()),
            ),
            None => (
                follow_up.session_id.clone(),
                follow_up.session_agent.clone(),
            ),
        };
        if self
            .store
            .release_follow_up(
                follow_up.id,
                after,
                session_id,
                session_agent,
                self.clock.now_ms(),
            )
            .await?
        {
            tracing::info!(task = follow_up.id, after, "follow-up released");
            lock(&self.queue_shown).remove(&follow_up.id);
        }
        Ok(())
    }

    /// Updates the messages of a project's queued tasks whose position or reason changed.
    pub(super) async fn show_queued(&self, project: &str) {
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
        let mut pos = 0;
        for mut task in queued {
            // A follow-up waiting for its turn has no place in the queue yet;
            // a task pinned to its session's agent waits for that agent.
            let (position, reason) = match (task.after_task, task.session_agent.as_deref()) {
                (Some(after), _) => (None, Some(replies::waits_for_task(TaskId(after)))),
                (None, Some(agent)) => {
                    pos += 1;
                    let why = self.hub.why_waiting_for(agent, project);
                    (Some(pos), Some(replies::waits_for_agent(agent, why)))
                }
                (None, None) => {
                    pos += 1;
                    (Some(pos), reason.clone())
                }
            };
            let changed = {
                let mut shown = lock(&self.queue_shown);
                let now = (position.unwrap_or(0), reason.clone());
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
                self.consolidator.show(task, position);
            }
        }
    }

    /// The dispatcher: runs a pass when woken, and the sweeps every second.
    pub async fn run_dispatcher(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut unpostable = lock(&self.unpostable).take();
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry: Option<(Instant, u32)> = None;
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
                        retry = self.pass_and_plan(0).await;
                    }
                }
                _ = tick.tick() => {
                    self.sweep().await;
                    retry = self.pass_and_plan(0).await;
                }
                Some(tries) = async {
                    match retry {
                        Some((at, tries)) => {
                            tokio::time::sleep_until(at).await;
                            Some(tries)
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    retry = self.pass_and_plan(tries).await;
                }
                Some((task, why)) = async {
                    match unpostable.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // On its own task: telling the person may wait for
                    // Slack (and try again), the dispatcher does not.
                    let app = self.clone();
                    tokio::spawn(async move { app.task_unpostable(task, &why).await });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_shared::TaskId;
    use sea_orm::{ConnectionTrait, Database, Statement, TransactionTrait};

    use crate::app::test_support::{app_with_agent_on, submits};
    use crate::store::NewTask;

    /// On PostgreSQL a claim skips a row another statement holds (so that
    /// no process waits for another's claim). A queued task whose row is
    /// held at that moment (its creator writing its message ts, say) is
    /// passed over, and the pass says so: the dispatcher runs the next one
    /// within milliseconds, not at the next second's tick. Once the row is
    /// free, that pass hands it out and asks for no other.
    #[tokio::test]
    async fn a_task_whose_row_is_held_during_the_claim_is_tried_again() {
        let Some(server) = baton_testkit::db::postgres_or_skip(
            "a_task_whose_row_is_held_during_the_claim_is_tried_again",
        ) else {
            return;
        };
        let db = baton_testkit::db::TestDb::postgres(&server).await;
        let (app, store, mut frames) = app_with_agent_on(&db.url).await;
        let task = store
            .insert_queued_task(NewTask::sample(), 100)
            .await
            .expect("insert")
            .expect("queued");

        let other = Database::connect(db.url.as_str()).await.expect("connect");
        let held = other.begin().await.expect("begin");
        held.execute(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT id FROM tasks WHERE id = $1 FOR UPDATE",
            [task.id.into()],
        ))
        .await
        .expect("row held");
        assert!(app.dispatch_pass().await, "the held task is passed over");
        assert_eq!(submits(&mut frames), Vec::<TaskId>::new());
        let now = store.task(task.id).await.expect("read").expect("row");
        assert_eq!(now.state, "queued");

        held.commit().await.expect("row free");
        assert!(!app.dispatch_pass().await, "nothing was passed over");
        assert_eq!(submits(&mut frames), vec![TaskId(task.id)]);
    }
}
