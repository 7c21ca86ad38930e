//! This process among others on one database: its lease (registered at start,
//! renewed every [`LEASE_RENEW`], removed at a graceful stop), which agents it
//! holds, taking over the tasks of processes whose lease expired, and showing
//! the ends whose message no process showed.
//!
//! On SQLite there is only this process (a second one is refused): the rows of
//! former processes are forgotten at start, and nothing is ever taken over
//! from another.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;

use super::App;
use super::handover::{CHANNEL, Signal};
use crate::clock::WallClock;
use crate::model::TaskState;
use crate::selfcheck::Part;
use crate::slack::consolidator::{Claim, MessageLog, Recorded};
use crate::slack::render;
use crate::store::{Store, Task};
use crate::sync::lock;

/// How often this process renews its lease (and, on PostgreSQL, takes over
/// the tasks of processes whose lease expired).
pub const LEASE_RENEW: Duration = Duration::from_secs(2);
/// How long a lease lasts unless renewed: a process not heard of for this
/// long is dead, and its tasks are taken over.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// An ended task's message is shown by the lease tick's poll only once it
/// lags by this much: the hand-over and its notification had their time.
const UNSHOWN_END_SETTLE: Duration = Duration::from_secs(5);
/// ...and only if it ended within this: a message Slack keeps refusing is
/// not tried for ever (a restart tries every unsynced one again).
const UNSHOWN_END_WINDOW: Duration = Duration::from_secs(300);
/// At most this many per tick.
const UNSHOWN_ENDS_PER_TICK: u64 = 50;

/// What the consolidator records of the task messages, in the database;
/// when several processes share it (PostgreSQL), the claim of each message
/// by one of them (`tasks.editor`: the holder of the task's agent, else the
/// process that posted it, else anyone once that one's lease expired) and
/// the hand-over of a change to the one that edits it ([`Signal::Show`]).
pub struct MessageDesk {
    /// The database.
    store: Store,
    /// This process's instance id.
    me: String,
    /// Wall clock (leases).
    clock: Arc<dyn WallClock>,
    /// Until when this process's lease runs, as last written (Unix ms, on
    /// `clock`; shared with the [`App`] that renews it).
    lease_until: Arc<AtomicI64>,
    /// Tasks created here whose message is not yet claimed: written with
    /// this process as their editor (see [`MessageDesk::created_here`]).
    fresh: Mutex<HashSet<i64>>,
}

/// Tasks [`MessageDesk::created_here`] remembers at most (a bound should
/// their messages never be shown: past it, their claims read the database).
const FRESH_MAX: usize = 10_000;

impl MessageDesk {
    /// The desk of instance `me`, whose lease runs until `lease_until`.
    pub fn new(
        store: Store,
        me: &str,
        clock: Arc<dyn WallClock>,
        lease_until: Arc<AtomicI64>,
    ) -> Self {
        MessageDesk {
            store,
            me: me.to_owned(),
            clock,
            lease_until,
            fresh: Mutex::new(HashSet::new()),
        }
    }

    /// Task `id` was just written here with this process as its message's
    /// editor: its first claim needs no statement. Until its message is
    /// posted (its ts recorded) no holder of its agent can take the message
    /// over, and while this process's lease runs nobody else can; so the
    /// claim would be won, and the database has nothing another process
    /// wrote to read with it. A lease not renewed lately is not trusted:
    /// the claim then reads the database.
    pub fn created_here(&self, id: i64) {
        let mut fresh = lock(&self.fresh);
        if fresh.len() >= FRESH_MAX {
            fresh.clear();
        }
        fresh.insert(id);
    }

    /// Whether this process's lease was renewed lately (within half its term).
    fn lease_fresh(&self) -> bool {
        let margin = LEASE_TTL.as_millis() as i64 / 2;
        self.clock.now_ms() < self.lease_until.load(Ordering::SeqCst) - margin
    }
}

impl MessageLog for MessageDesk {
    fn message_posted<'a>(&'a self, task: i64, ts: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        self.store.message_posted(task, ts)
    }

    fn progress_shown<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<()>> {
        self.store.progress_shown(task)
    }

    fn parts_posted(&self, task: i64, parts: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        self.store.parts_posted(task, parts)
    }

    fn final_shown(&self, task: i64) -> BoxFuture<'_, anyhow::Result<()>> {
        self.store.final_shown(task)
    }

    fn claim_message<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<Claim>> {
        Box::pin(async move {
            if !self.store.is_shared() {
                return Ok(Claim::Mine(Recorded::default()));
            }
            if lock(&self.fresh).remove(&task.id) && self.lease_fresh() {
                return Ok(Claim::Mine(Recorded::default()));
            }
            let claimed = self
                .store
                .claim_editor(task.id, &self.me, self.clock.now_ms())
                .await?;
            Ok(match claimed {
                Some(t) => Claim::Mine(Recorded {
                    ended: render::task_state(&t).is_terminal(),
                    ts: t.message_ts,
                }),
                None => Claim::Elsewhere,
            })
        })
    }

    fn hand_over(&self, task: i64) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            if !self.store.is_shared() {
                return Ok(());
            }
            self.store
                .notify(CHANNEL, &Signal::Show(task).encode(&self.me))
                .await
        })
    }
}

/// A fresh random id for this process.
pub fn new_instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl App {
    /// This process's instance id (random, drawn at start).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Registers this process with a lease. On SQLite, every other row is a
    /// dead process's: it is forgotten, and so are the agents it held.
    pub async fn register_instance(&self) -> anyhow::Result<()> {
        if !self.store.is_shared() {
            self.store.forget_other_instances(&self.instance_id).await?;
        }
        self.renew_lease().await?;
        self.count_live().await;
        Ok(())
    }

    /// Writes this process's lease, [`LEASE_TTL`] from now: on PostgreSQL's
    /// clock when several processes share it, on this process's otherwise.
    async fn renew_lease(&self) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        self.store
            .renew_instance(
                &self.instance_id,
                self.started_at,
                now,
                LEASE_TTL.as_millis() as i64,
            )
            .await?;
        // This process's view of its lease (its own clock): past it, the
        // others may count it gone and it stops spending the Slack budget.
        self.lease_until
            .store(now + LEASE_TTL.as_millis() as i64, Ordering::SeqCst);
        Ok(())
    }

    /// Counts the live processes (PostgreSQL): this one takes its share of
    /// the workspace's `chat.update` budget; the count, when it was read. On
    /// SQLite it keeps the whole.
    async fn count_live(&self) -> Option<u32> {
        if !self.store.is_shared() {
            return None;
        }
        match self.store.live_instances(self.clock.now_ms()).await {
            Ok(live) => {
                self.consolidator.share_budget(live.max(1));
                Some(live)
            }
            Err(err) => {
                tracing::warn!(error = ?err, "cannot count the live processes; keeping this one's share of the Slack budget");
                None
            }
        }
    }

    /// Renews the lease once; a failure is logged and makes the process not
    /// ready (`/readyz`) until a renewal succeeds. Then, on PostgreSQL, takes
    /// over the tasks no live process holds.
    pub async fn lease_tick(&self) {
        match self.renew_lease().await {
            Ok(()) => self.readiness.ready(Part::Lease),
            Err(err) => {
                tracing::error!(error = ?err, "cannot renew this process's lease; other processes take over its tasks when it expires");
                self.readiness.not_ready(
                    Part::Lease,
                    "cannot renew this process's lease in the database",
                );
                if self.store.is_shared()
                    && self.clock.now_ms() >= self.lease_until.load(Ordering::SeqCst)
                {
                    // The others count this process dead: it spends none of
                    // the Slack budget until it is back.
                    self.consolidator.share_budget(0);
                }
                return;
            }
        }
        self.count_live().await;
        if self.store.is_shared()
            && let Err(err) = self.take_over_orphans().await
        {
            tracing::error!(error = ?err, "cannot take over the tasks of stopped processes");
        }
        if self.store.is_shared()
            && let Err(err) = self.show_unshown_ends().await
        {
            tracing::error!(error = ?err, "cannot look for ended tasks whose message lags");
        }
    }

    /// Shows the ends that no process showed although this one may (see
    /// [`Store::unshown_ends`]): a hand-over whose notification was missed,
    /// or one left to a process that died before it showed it. The poll
    /// behind the notifications, like the dispatch pass's.
    async fn show_unshown_ends(&self) -> anyhow::Result<()> {
        let tasks = self
            .store
            .unshown_ends(
                &self.instance_id,
                self.clock.now_ms(),
                UNSHOWN_END_SETTLE.as_millis() as i64,
                UNSHOWN_END_WINDOW.as_millis() as i64,
                UNSHOWN_ENDS_PER_TICK,
            )
            .await?;
        for task in tasks {
            if self.consolidator.has_final(task.id) {
                continue;
            }
            tracing::info!(task = task.id, "showing an end no process showed");
            if task.message_ts.is_none() {
                // Its editor may have posted it and died before recording it.
                self.consolidator.may_have_posted(task.id);
            }
            self.consolidator.show(task, None);
        }
        Ok(())
    }

    /// Renews the lease every [`LEASE_RENEW`] until `shutdown`, then removes it.
    pub async fn run_lease(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(LEASE_RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => self.lease_tick().await,
            }
        }
        if let Err(err) = self.store.remove_instance(&self.instance_id).await {
            tracing::warn!(error = ?err, "cannot remove this process's lease; it expires by itself");
        }
    }

    /// Shows task `id` again if this process edits its message: another
    /// process changed it ([`Signal::Show`]).
    pub(super) async fn show_handed_over(&self, id: i64) {
        match self.store.task_edited_by(id, &self.instance_id).await {
            Ok(Some(task)) => self.consolidator.show(task, None),
            Ok(None) => {
                tracing::debug!(task = id, "a change handed over to another editor")
            }
            Err(err) => {
                tracing::warn!(task = id, error = ?err, "cannot read who edits the task's message")
            }
        }
    }

    /// Records that this process holds `agent`'s connection.
    pub async fn hold_agent(&self, agent: &str) {
        if let Err(err) = self.store.hold_agent(agent, &self.instance_id).await {
            tracing::error!(agent, error = ?err, "cannot record that this process holds the agent");
        }
    }

    /// Records that this process no longer holds `agent`'s connection
    /// (unless another process holds it by now).
    pub async fn release_agent(&self, agent: &str) {
        if let Err(err) = self.store.release_agent(agent, &self.instance_id).await {
            tracing::error!(agent, error = ?err, "cannot record that the agent left this process");
        }
    }

    /// The agents another live process holds (none on SQLite): their tasks
    /// are never failed nor taken over here.
    pub(super) async fn agents_held_elsewhere(&self) -> anyhow::Result<HashSet<String>> {
        if !self.store.is_shared() {
            return Ok(HashSet::new());
        }
        self.store
            .agents_held_elsewhere(&self.instance_id, self.clock.now_ms())
            .await
    }

    /// Starts waiting here for the agent of a dispatched or running task that
    /// no live process holds: it is failed as lost unless its agent is back
    /// (here or elsewhere) within its grace period.
    pub(super) fn adopt_task(&self, task: Task) {
        let Some(agent) = task.agent.clone() else {
            return;
        };
        self.hub.adopt(&agent, task.id, &task.project);
        if task.message_ts.is_none() {
            // The process that held it may have posted the message and
            // died before it stored the ts.
            self.consolidator.may_have_posted(task.id);
        }
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

    /// Takes over the dispatched and running tasks whose agent no live
    /// process holds and this one does not wait for: those of a process
    /// whose lease expired (killed, or cut off from the database). The
    /// database filters them: the tasks live processes hold are not read.
    pub async fn take_over_orphans(&self) -> anyhow::Result<()> {
        let tasks = self
            .store
            .orphaned_tasks(&self.instance_id, self.clock.now_ms())
            .await?;
        for task in tasks {
            let Some(agent) = task.agent.as_deref() else {
                continue;
            };
            if self.hub.holds(agent, task.id) || self.hub.is_connected(agent) {
                continue;
            }
            tracing::info!(
                task = task.id,
                agent,
                "taking over a task no live process holds"
            );
            self.adopt_task(task);
        }
        Ok(())
    }

    /// Forgets, without ending them, the tasks of `agent` that this process
    /// waited for: another live process holds the agent now.
    pub(super) fn let_go(&self, agent: &str, tasks: &[i64]) {
        for id in tasks {
            lock(&self.live).remove(id);
            lock(&self.awaiting).remove(id);
            self.hub
                .release(agent, *id, crate::breaker::Outcome::Ignored);
        }
        tracing::info!(
            agent,
            tasks = tasks.len(),
            "the agent is connected to another process; its tasks are that process's"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::app::App;
    use crate::clock::ManualWallClock;
    use crate::settings::Settings;
    use crate::slack::api::SlackApi;
    use crate::store::Store;

    use super::LEASE_TTL;

    async fn app(dir: &tempfile::TempDir, clock: ManualWallClock) -> (Arc<App>, Store) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let settings = Settings::for_tests("http://127.0.0.1:9", &url, "secret");
        let store = Store::connect(&url).await.expect("store");
        let slack = SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
            .expect("slack client");
        let app = Arc::new(App::new(settings, store.clone(), slack, Arc::new(clock)));
        (app, store)
    }

    /// A process registers with a lease of [`LEASE_TTL`] on its clock, and
    /// each renewal moves it on.
    #[tokio::test]
    async fn the_lease_is_registered_and_renewed_on_the_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualWallClock::default();
        let (app, store) = app(&dir, clock.clone()).await;
        let start = crate::clock::WallClock::now_ms(&clock);
        app.register_instance().await.expect("registered");
        let ttl = LEASE_TTL.as_millis() as i64;
        let lease = || store.instance_lease(app.instance_id());
        assert_eq!(lease().await.expect("read"), Some(start + ttl));
        clock.advance(super::LEASE_RENEW);
        app.lease_tick().await;
        assert_eq!(
            lease().await.expect("read"),
            Some(start + super::LEASE_RENEW.as_millis() as i64 + ttl)
        );
        assert!(app.readiness.problems().is_empty());
    }

    /// Issue 18: the first claim of a task's message on the process that
    /// created it reads nothing (its editor was written with it). Shown
    /// with a task recorded as another live process's, which the database
    /// would refuse: the fresh claim is this process's, the next one asks
    /// the database; and with a lease not renewed lately even the first
    /// claim asks it.
    #[tokio::test]
    async fn a_task_s_first_claim_where_it_was_created_reads_nothing_on_postgres() {
        use std::sync::atomic::AtomicI64;

        use crate::clock::WallClock;
        use crate::slack::consolidator::{Claim, MessageLog, Recorded};

        let test = "a_task_s_first_claim_where_it_was_created_reads_nothing_on_postgres";
        if baton_testkit::db::postgres_or_skip(test).is_none() {
            return;
        }
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let now = crate::model::now_ms();
        for id in ["me", "other"] {
            store
                .renew_instance(id, now, now, 60_000)
                .await
                .expect("lease");
        }
        let clock = ManualWallClock::default();
        let lease_until = Arc::new(AtomicI64::new(
            clock.now_ms() + LEASE_TTL.as_millis() as i64,
        ));
        let desk =
            super::MessageDesk::new(store.clone(), "me", Arc::new(clock.clone()), lease_until);
        let new = || crate::store::NewTask {
            editor: Some("other".into()),
            ..crate::store::NewTask::sample()
        };
        let a = store.insert_task(new()).await.expect("task");
        desk.created_here(a.id);
        assert_eq!(
            desk.claim_message(&a).await.expect("claim"),
            Claim::Mine(Recorded::default()),
            "no statement (the database would name the other process)"
        );
        assert_eq!(
            desk.claim_message(&a).await.expect("claim"),
            Claim::Elsewhere,
            "the next claim asks the database"
        );

        let b = store.insert_task(new()).await.expect("task");
        desk.created_here(b.id);
        clock.advance(LEASE_TTL / 2);
        assert_eq!(
            desk.claim_message(&b).await.expect("claim"),
            Claim::Elsewhere,
            "a lease renewed long ago is not trusted"
        );
    }

    /// A process that cannot renew its lease says so on `/readyz`.
    #[tokio::test]
    async fn a_process_that_cannot_renew_its_lease_is_not_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, store) = app(&dir, ManualWallClock::default()).await;
        app.register_instance().await.expect("registered");
        store.kill_writer();
        app.lease_tick().await;
        let problems = app.readiness.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("lease:") && p.contains("cannot renew")),
            "{problems:?}"
        );
    }
}
