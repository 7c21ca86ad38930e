//! Hand-over between processes sharing PostgreSQL: what one process does that
//! concerns an agent connected to another (a task queued, a cancel, an
//! approval decided, an admin's revoke, circuit reset, queue purge or
//! channel binding) is announced with `NOTIFY` on
//! [`CHANNEL`]; every process `LISTEN`s (sqlx's `PgListener`) and acts on
//! what concerns the agents it holds. A notification can be missed (the
//! listening connection drops): a poll every [`HANDOVER_POLL`] delivers the
//! cancels asked for and the approval decisions not yet sent, and the dispatcher reads the queues every second anyway.
//!
//! On SQLite there is one process: nothing here runs.

use std::sync::Arc;
use std::time::Duration;

use baton_shared::TaskId;
use baton_shared::protocol::{BotMessage, close_code};
use sea_orm::sqlx::postgres::PgListener;

use super::App;
use crate::model::TaskState;
use crate::sync::lock;

/// The PostgreSQL notification channel the processes share.
pub const CHANNEL: &str = "baton_handover";
/// How often the cancels asked for and the approval decisions not yet sent
/// are delivered from the database, should a notification have been missed.
pub const HANDOVER_POLL: Duration = Duration::from_secs(2);
/// How long the listener waits before connecting again after a failure.
pub const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// What one process tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A task was queued: dispatch. `follow_up`: it may be a follow-up
    /// waiting for its thread's task (the receiver reads the waiting ones).
    Queued {
        /// Whether it may wait for an earlier task.
        follow_up: bool,
    },
    /// A cancel was asked for this task: tell its agent.
    Cancel(i64),
    /// This agent's key was revoked: close its connection.
    Revoke(String),
    /// An admin closed this agent's circuit.
    HealthReset(String),
    /// This task changed on a process that does not edit its Slack message:
    /// the one that does shows it again.
    Show(i64),
    /// Request `.1` of task `.0` was decided: send the decision to its agent.
    Decided(i64, u32),
    /// An admin purged this project's queue: forget what the purged tasks'
    /// messages showed.
    Purged(String),
    /// A channel was bound to a project: forget the cached bindings.
    Bound,
}

impl Signal {
    /// The notification's payload: the sending instance, the kind, its argument.
    pub fn encode(&self, from: &str) -> String {
        match self {
            // `queued` (what every version sends and hears) may be a
            // follow-up; `ready` is not one. A process that does not know
            // `ready` ignores it and dispatches at its next second's pass.
            Signal::Queued { follow_up: true } => format!("{from} queued"),
            Signal::Queued { follow_up: false } => format!("{from} ready"),
            Signal::Cancel(id) => format!("{from} cancel {id}"),
            Signal::Revoke(agent) => format!("{from} revoke {agent}"),
            Signal::HealthReset(agent) => format!("{from} reset {agent}"),
            Signal::Show(id) => format!("{from} show {id}"),
            Signal::Decided(task, request) => format!("{from} decided {task}:{request}"),
            Signal::Purged(project) => format!("{from} purged {project}"),
            Signal::Bound => format!("{from} bound"),
        }
    }

    /// The sender and the signal of a payload; None for anything else.
    pub fn decode(payload: &str) -> Option<(&str, Signal)> {
        let mut parts = payload.splitn(3, ' ');
        let from = parts.next()?;
        let signal = match (parts.next()?, parts.next()) {
            ("queued", None) => Signal::Queued { follow_up: true },
            ("ready", None) => Signal::Queued { follow_up: false },
            ("cancel", Some(id)) => Signal::Cancel(id.parse().ok()?),
            ("revoke", Some(agent)) if !agent.is_empty() => Signal::Revoke(agent.to_owned()),
            ("reset", Some(agent)) if !agent.is_empty() => Signal::HealthReset(agent.to_owned()),
            ("show", Some(id)) => Signal::Show(id.parse().ok()?),
            ("decided", Some(arg)) => {
                let (task, request) = arg.split_once(':')?;
                Signal::Decided(task.parse().ok()?, request.parse().ok()?)
            }
            ("purged", Some(project)) if !project.is_empty() => Signal::Purged(project.to_owned()),
            ("bound", None) => Signal::Bound,
            _ => return None,
        };
        Some((from, signal))
    }
}

/// A thread's turn at making a reply its follow-up (see [`App::follow_up_turn`]).
pub struct FollowUpTurn<'a> {
    /// This process's turn (SQLite: one process, one lock for every thread).
    _here: Option<tokio::sync::MutexGuard<'a, ()>>,
    /// The turn among processes (PostgreSQL): the transaction holding the
    /// thread's advisory lock.
    shared: Option<sea_orm::DatabaseTransaction>,
}

impl std::fmt::Debug for FollowUpTurn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowUpTurn")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl FollowUpTurn<'_> {
    /// Ends the turn: the next reply to the thread, on any process, goes.
    /// (Dropped instead, the lock goes with the transaction's rollback.)
    pub async fn end(self) {
        if let Some(txn) = self.shared
            && let Err(err) = txn.commit().await
        {
            tracing::warn!(error = %err, "cannot end a thread's turn; it ends with its connection");
        }
    }
}

impl App {
    /// Waits for the turn of thread `root` of `channel` at making a reply
    /// its follow-up: replies arriving together are taken one after the
    /// other, the later one seeing the earlier one's task, whichever
    /// processes they land on (on PostgreSQL, under the thread's advisory
    /// lock alone: replies to other threads do not wait).
    pub async fn follow_up_turn(
        &self,
        channel: &str,
        root: &str,
    ) -> anyhow::Result<FollowUpTurn<'_>> {
        let shared = self.store.thread_turn(channel, root).await?;
        let here = match shared {
            Some(_) => None,
            None => Some(self.follow_ups.lock().await),
        };
        Ok(FollowUpTurn {
            _here: here,
            shared,
        })
    }

    /// Tells the other processes (PostgreSQL only; a failure is logged: the
    /// poll is the fallback).
    pub async fn announce(&self, signal: Signal) {
        if !self.store.is_shared() {
            return;
        }
        let payload = signal.encode(self.instance_id());
        if let Err(err) = self.store.notify(CHANNEL, &payload).await {
            tracing::warn!(error = ?err, payload, "cannot notify the other processes; they learn it at their next poll");
        }
    }

    /// Acts on what another process announced.
    pub async fn on_signal(&self, signal: Signal) {
        match signal {
            Signal::Queued { follow_up } => {
                self.store.mark_maybe_queued();
                if follow_up {
                    // It waits for its thread's task: read the waiting ones.
                    self.store.mark_maybe_waiting();
                }
                self.dispatch_wake.notify_one();
            }
            Signal::Cancel(id) => match self.store.task(id).await {
                Ok(Some(task)) => self.deliver_cancel(&task),
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(task = id, error = ?err, "cannot read a task to cancel")
                }
            },
            Signal::Revoke(agent) => {
                self.hub.close(&agent, close_code::REVOKED, "key revoked");
            }
            Signal::HealthReset(agent) => {
                if self.hub.reset_breaker(&agent) {
                    self.dispatch_wake.notify_one();
                }
            }
            Signal::Show(id) => self.show_handed_over(id).await,
            Signal::Decided(task, request) => self.deliver_decision(task, request).await,
            Signal::Purged(project) => {
                self.forget_ended_queued().await;
                self.show_queued(&project).await;
            }
            Signal::Bound => self.forget_bindings(),
        }
    }

    /// Forgets what the messages of queued tasks that ended meanwhile (on
    /// another process: purged, cancelled) last showed.
    async fn forget_ended_queued(&self) {
        let ids: Vec<i64> = lock(&self.queue_shown).keys().copied().collect();
        match self.store.ended_among(&ids).await {
            Ok(ended) => {
                let mut shown = lock(&self.queue_shown);
                for id in ended {
                    shown.remove(&id);
                }
            }
            Err(err) => tracing::error!(error = ?err, "cannot read which queued tasks ended"),
        }
    }

    /// Forgets the cached channel bindings: another process bound a channel.
    fn forget_bindings(&self) {
        let mut cache = lock(&self.bindings);
        cache.0 += 1;
        cache.1.clear();
    }

    /// Sends a cancel asked for `task` to its agent if this process holds
    /// the agent's connection and has not sent it yet.
    fn deliver_cancel(&self, task: &crate::store::Task) {
        let state: TaskState = task.state.parse().unwrap_or(TaskState::Failed);
        let Some(agent) = task.agent.as_deref() else {
            return;
        };
        if !task.cancel_requested
            || state.is_terminal()
            || state == TaskState::Queued
            || !self.hub.is_connected(agent)
        {
            return;
        }
        let first = match lock(&self.live).get_mut(&task.id) {
            Some(t) => !std::mem::replace(&mut t.cancel_requested, true),
            None => true,
        };
        if first
            && self.hub.send(
                agent,
                BotMessage::Cancel {
                    task: TaskId(task.id),
                },
            )
        {
            tracing::info!(task = task.id, agent, "cancel handed over to the agent");
        }
    }

    /// Delivers every cancel asked for to the agents this process holds.
    async fn deliver_cancels(&self) {
        match self.store.cancels_asked().await {
            Ok(tasks) => {
                for task in &tasks {
                    self.deliver_cancel(task);
                }
            }
            Err(err) => tracing::error!(error = ?err, "cannot read the cancels asked for"),
        }
    }

    /// Listens for the other processes' signals until `shutdown` (PostgreSQL
    /// only), polling every [`HANDOVER_POLL`] for what a missed one would have said.
    pub async fn run_handover(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if !self.store.is_shared() {
            return;
        }
        tokio::pin!(shutdown);
        let mut poll = tokio::time::interval(HANDOVER_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listener: Option<PgListener> = None;
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            let next = async {
                match listener.as_mut() {
                    Some(l) => l.try_recv().await,
                    None => {
                        tokio::time::sleep(LISTEN_RETRY).await;
                        Ok(None)
                    }
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = poll.tick() => {
                    self.deliver_cancels().await;
                    self.deliver_decisions().await;
                }
                got = next => match got {
                    Ok(Some(n)) => {
                        if let Some((from, signal)) = Signal::decode(n.payload())
                            && from != self.instance_id()
                        {
                            self.on_signal(signal).await;
                        }
                    }
                    // The connection dropped (and was made again): what was
                    // said meanwhile is lost; catch up from the database.
                    Ok(None) => {
                        self.store.mark_maybe_queued();
                        self.store.mark_maybe_waiting();
                        self.dispatch_wake.notify_one();
                        self.deliver_cancels().await;
                        self.deliver_decisions().await;
                        self.forget_bindings();
                        self.forget_ended_queued().await;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "the hand-over listener failed; connecting again");
                        listener = None;
                    }
                },
            }
        }
    }

    /// A listener on [`CHANNEL`]; None (logged) when it cannot be had now.
    async fn listen(&self) -> Option<PgListener> {
        let connected = async {
            let mut l = PgListener::connect(&self.settings.database_url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(l)
        };
        match connected.await {
            Ok(l) => Some(l),
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for the other processes; polling meanwhile");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::ConnectionTrait;

    use super::Signal;
    use crate::app::App;
    use crate::settings::Settings;
    use crate::slack::api::SlackApi;
    use crate::store::Store;
    use crate::sync::lock;

    /// A process on `url`'s database, with admin U1.
    async fn process(url: &str, store: &Store) -> Arc<App> {
        let mut settings = Settings::for_tests("http://127.0.0.1:9", url, "secret");
        // No Slack here to ask who U1 is: an admin needs no asking.
        settings.admins = vec!["U1".into()];
        let slack = SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
            .expect("slack client");
        Arc::new(App::new(
            settings,
            store.clone(),
            slack,
            Arc::new(crate::clock::SystemWallClock),
        ))
    }

    /// A queue purged on one process: another one that showed the purged
    /// tasks' positions forgets them when told; a binding made on one
    /// process is seen by another once told.
    #[tokio::test]
    async fn a_purge_and_a_binding_on_one_process_are_seen_by_another_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let store = Store::connect(&url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let (one, two) = (process(&url, &store).await, process(&url, &store).await);
        for prompt in ["one", "two"] {
            let mut req = crate::app::test_support::request(prompt);
            req.project = Some("web".parse().expect("a project name"));
            one.create_task(req).await.expect("queued");
        }
        assert_eq!(lock(&one.queue_shown).len(), 2);
        let answer = crate::admin::handle(&two, "U1", "C1", "queue purge web").await;
        assert!(answer.contains("Removed 2"), "{answer}");
        assert_eq!(lock(&one.queue_shown).len(), 2, "not told yet");
        one.on_signal(Signal::Purged("web".into())).await;
        assert!(lock(&one.queue_shown).is_empty());

        // With two projects, `one` refuses a task from unbound C2 (and
        // caches that C2 is not bound); then `two` binds C2 to `api`.
        store.ensure_project("api").await.expect("project");
        let mut from_c2 = crate::app::test_support::request("three");
        from_c2.channel_id = "C2".into();
        assert!(one.create_task(from_c2.clone()).await.is_err());
        let answer = crate::admin::handle(&two, "U1", "C2", "project bind api").await;
        assert!(answer.contains("project `api`"), "{answer}");
        one.on_signal(Signal::Bound).await;
        let task = one.create_task(from_c2).await.expect("bound now");
        assert_eq!(task.project, "api");
    }

    /// Two replies to one thread landing on two processes (PostgreSQL) are
    /// taken one after the other: the second waits for the first's turn to
    /// end; a reply to another thread does not wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_to_one_thread_on_two_processes_take_turns() {
        let Some(server) = baton_testkit::db::postgres_or_skip(
            "replies_to_one_thread_on_two_processes_take_turns",
        ) else {
            return;
        };
        let db = baton_testkit::db::TestDb::postgres(&server).await;
        let store = Store::connect(&db.url).await.expect("store");
        let (one, two) = (
            process(&db.url, &store).await,
            process(&db.url, &store).await,
        );
        let first = one.follow_up_turn("C1", "1.1").await.expect("a turn");
        let second = tokio::spawn({
            let two = two.clone();
            async move {
                let turn = two.follow_up_turn("C1", "1.1").await.expect("a turn");
                turn.end().await;
            }
        });
        // The second waits on the thread's lock in the database.
        let waiting = || async {
            let db = store.connection();
            let row = db
                .query_one(sea_orm::Statement::from_string(
                    db.get_database_backend(),
                    "SELECT COUNT(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                ))
                .await
                .expect("read the locks")
                .expect("a row");
            row.try_get::<i64>("", "n").expect("a count") > 0
        };
        baton_testkit::eventually("the second reply to wait", || async {
            waiting().await.then_some(())
        })
        .await;
        assert!(!second.is_finished());
        // Another thread's reply, on the other process, does not wait.
        two.follow_up_turn("C1", "2.2")
            .await
            .expect("a turn")
            .end()
            .await;
        first.end().await;
        second.await.expect("the second reply's turn came");
    }

    #[test]
    fn signals_survive_their_payload_and_junk_is_refused() {
        for signal in [
            Signal::Queued { follow_up: true },
            Signal::Queued { follow_up: false },
            Signal::Cancel(42),
            Signal::Revoke("laptop".into()),
            Signal::HealthReset("ci box".into()),
            Signal::Show(7),
            Signal::Decided(7, 2),
            Signal::Purged("web".into()),
            Signal::Bound,
        ] {
            let payload = signal.encode("abc");
            assert_eq!(Signal::decode(&payload), Some(("abc", signal)));
        }
        for junk in [
            "",
            "abc",
            "abc cancel",
            "abc cancel x",
            "abc queued 1",
            "abc what 1",
            "abc show x",
            "abc show",
            "abc decided 7",
            "abc decided 7:x",
            "abc purged",
            "abc bound web",
        ] {
            assert_eq!(Signal::decode(junk), None, "{junk:?}");
        }
    }
}
