//! The running bot processes (`instances`, each with a lease it renews) and
//! which of them holds each agent's connection (`agents.instance`).
//!
//! With SQLite there is one process (a second one is refused), so every other
//! instance row is a dead one's; with PostgreSQL a row whose lease has not
//! expired is a live process, whose agents' tasks are its own. Leases are
//! written and compared on PostgreSQL's clock (`now()`), so that the
//! processes' machines need not agree on the time; with SQLite, on the
//! process's (injectable) clock.

use std::collections::HashSet;

use anyhow::Context;
use sea_orm::{ConnectionTrait, Statement, Value};

use super::Store;

/// PostgreSQL's clock in Unix ms, as SQL: leases are written and compared
/// on it, whatever the clocks of the processes' machines say.
const PG_NOW_MS: &str = "(EXTRACT(EPOCH FROM now()) * 1000)::BIGINT";

/// The first key of the PostgreSQL advisory lock a thread's follow-up takes
/// (the second is the `hashtext` of its channel and root): two replies to one
/// thread landing on two processes are taken one after the other.
pub const THREAD_LOCK_CLASS: i32 = 0x6261_7101;

impl Store {
    /// Whether several processes may share this database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.db.get_database_backend() == sea_orm::DatabaseBackend::Postgres
    }

    /// A statement for this database: `sql` with `$1`, `$2`… placeholders
    /// (rewritten to SQLite's numbered `?1`, `?2`… for SQLite, so that they
    /// may appear in any order, as on PostgreSQL).
    pub(super) fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        let backend = self.db.get_database_backend();
        let sql = super::sql::for_backend(sql.to_owned(), backend);
        Statement::from_sql_and_values(backend, sql, values)
    }

    /// A statement for this database whose `{now}` is the time leases are
    /// measured on, in Unix ms: PostgreSQL's own clock (`now()`; `now` is
    /// not used), so that the clocks of the processes' machines do not
    /// matter; with SQLite (one process), `now`, bound after `values`.
    fn stmt_at(&self, sql: &str, mut values: Vec<Value>, now: i64) -> Statement {
        if self.is_shared() {
            return self.stmt(&sql.replace("{now}", PG_NOW_MS), values);
        }
        values.push(now.into());
        let at = format!("${}", values.len());
        self.stmt(&sql.replace("{now}", &at), values)
    }

    /// Writes instance `id`'s lease, `ttl_ms` from `now` (see
    /// [`Store::stmt_at`]: on PostgreSQL, from the database's clock):
    /// registers it, or renews it (registers it again should its row have gone).
    pub async fn renew_instance(
        &self,
        id: &str,
        started_at: i64,
        now: i64,
        ttl_ms: i64,
    ) -> anyhow::Result<()> {
        let stmt = self.stmt_at(
            "INSERT INTO instances (id, started_at, lease_until) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
            vec![id.into(), started_at.into(), ttl_ms.into()],
            now,
        );
        self.write(stmt)
            .await
            .context("Cannot renew this process's lease")?;
        Ok(())
    }

    /// Removes instance `id` (graceful shutdown): the agents it held are
    /// held by none.
    pub async fn remove_instance(&self, id: &str) -> anyhow::Result<()> {
        let release = self.stmt(
            "UPDATE agents SET instance = NULL WHERE instance = $1",
            vec![id.into()],
        );
        self.write(release)
            .await
            .context("Cannot release this process's agents")?;
        let delete = self.stmt("DELETE FROM instances WHERE id = $1", vec![id.into()]);
        self.write(delete)
            .await
            .context("Cannot remove this process's lease")?;
        Ok(())
    }

    /// Forgets every instance but `id`, and what they held: for a database
    /// only one process uses (SQLite), where they are all dead.
    pub async fn forget_other_instances(&self, id: &str) -> anyhow::Result<()> {
        let release = self.stmt(
            "UPDATE agents SET instance = NULL WHERE instance IS NOT NULL AND instance <> $1",
            vec![id.into()],
        );
        self.write(release)
            .await
            .context("Cannot release the agents of former processes")?;
        let delete = self.stmt("DELETE FROM instances WHERE id <> $1", vec![id.into()]);
        self.write(delete)
            .await
            .context("Cannot forget former processes")?;
        Ok(())
    }

    /// Records that instance `id` holds agent `name`'s connection.
    pub async fn hold_agent(&self, name: &str, id: &str) -> anyhow::Result<()> {
        let stmt = self.stmt(
            "UPDATE agents SET instance = $1 WHERE name = $2",
            vec![id.into(), name.into()],
        );
        self.write(stmt)
            .await
            .context("Cannot record which process holds the agent")?;
        Ok(())
    }

    /// Records that agent `name`'s connection is held by none, if instance
    /// `id` still held it (a newer connection elsewhere keeps its claim).
    pub async fn release_agent(&self, name: &str, id: &str) -> anyhow::Result<()> {
        let stmt = self.stmt(
            "UPDATE agents SET instance = NULL WHERE name = $1 AND instance = $2",
            vec![name.into(), id.into()],
        );
        self.write(stmt)
            .await
            .context("Cannot record that the agent left this process")?;
        Ok(())
    }

    /// The agents whose connection another live instance than `me` holds
    /// (its lease runs past `now`, Unix ms; on PostgreSQL, past the
    /// database's clock): their tasks are that instance's.
    pub async fn agents_held_elsewhere(
        &self,
        me: &str,
        now: i64,
    ) -> anyhow::Result<HashSet<String>> {
        let stmt = self.stmt_at(
            "SELECT a.name AS name FROM agents a JOIN instances i ON i.id = a.instance \
             WHERE a.instance <> $1 AND i.lease_until > {now}",
            vec![me.into()],
            now,
        );
        let rows = self
            .read
            .query_all(stmt)
            .await
            .context("Cannot read which processes hold the agents")?;
        rows.iter()
            .map(|r| r.try_get::<String>("", "name").context("an agent's name"))
            .collect()
    }

    /// How many instances are alive at `now` (Unix ms; on PostgreSQL, the
    /// database's clock): their lease runs past it.
    pub async fn live_instances(&self, now: i64) -> anyhow::Result<u32> {
        let stmt = self.stmt_at(
            "SELECT COUNT(*) AS live FROM instances WHERE lease_until > {now}",
            Vec::new(),
            now,
        );
        let row = self
            .read
            .query_one(stmt)
            .await
            .context("Cannot count the live processes")?;
        let live = row
            .map(|r| r.try_get::<i64>("", "live"))
            .transpose()
            .context("a count")?
            .unwrap_or(0);
        Ok(u32::try_from(live).unwrap_or(u32::MAX))
    }

    /// When the oldest live instance started (Unix ms, by its own clock), at
    /// `now` (on PostgreSQL, the database's clock); none when no lease runs.
    pub async fn oldest_live_start(&self, now: i64) -> anyhow::Result<Option<i64>> {
        let stmt = self.stmt_at(
            "SELECT MIN(started_at) AS oldest FROM instances WHERE lease_until > {now}",
            Vec::new(),
            now,
        );
        let row = self
            .read
            .query_one(stmt)
            .await
            .context("Cannot read when the live processes started")?;
        Ok(row
            .map(|r| r.try_get::<Option<i64>>("", "oldest"))
            .transpose()
            .context("a start time")?
            .flatten())
    }

    /// Makes instance `me` the editor of task `id`'s Slack message, unless
    /// another instance edits it whose lease runs past `now` (Unix ms; on
    /// PostgreSQL, the database's clock) and
    /// `me` does not hold the task's agent: the holder of the agent takes
    /// the message over from the process that posted it (once its ts is
    /// recorded: never while it is being posted), and anyone takes it over
    /// from a dead process. The task as recorded when `me` edits it now
    /// (its message ts and state, which another process may have written),
    /// None when not. One guarded statement, so two processes never both
    /// win it, and the claim and the read are one round trip.
    pub async fn claim_editor(
        &self,
        id: i64,
        me: &str,
        now: i64,
    ) -> anyhow::Result<Option<super::Task>> {
        let sql = [
            "UPDATE tasks SET editor = $1 WHERE id = $2 AND (editor IS NULL OR editor = $3 \
             OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = tasks.editor AND i.lease_until > {now}) \
             OR (tasks.message_ts IS NOT NULL \
                 AND EXISTS (SELECT 1 FROM agents a WHERE a.name = tasks.agent AND a.instance = $4)))",
            super::sql::RETURNING_TASK,
        ]
        .concat();
        let stmt = self.stmt_at(&sql, vec![me.into(), id.into(), me.into(), me.into()], now);
        let rows = self
            .write_tasks(stmt)
            .await
            .context("Cannot claim the task's Slack message")?;
        Ok(rows.into_iter().next())
    }

    /// Task `id`, if instance `me` edits its Slack message (one read: who
    /// edits it, and what to show).
    pub async fn task_edited_by(&self, id: i64, me: &str) -> anyhow::Result<Option<super::Task>> {
        let stmt = self.stmt(
            "SELECT t.* FROM tasks t WHERE t.id = $1 AND t.editor = $2",
            vec![id.into(), me.into()],
        );
        let rows = self
            .read_tasks(stmt, "the task whose message this process edits")
            .await?;
        Ok(rows.into_iter().next())
    }

    /// The instance editing task `id`'s Slack message, as recorded.
    pub async fn task_editor(&self, id: i64) -> anyhow::Result<Option<String>> {
        let stmt = self.stmt("SELECT editor FROM tasks WHERE id = $1", vec![id.into()]);
        let row = self
            .read
            .query_one(stmt)
            .await
            .context("Cannot read who edits the task's message")?;
        Ok(row.and_then(|r| r.try_get::<Option<String>>("", "editor").ok().flatten()))
    }

    /// Every agent some instance is recorded as holding: the instance, and
    /// whether its lease runs past `now` (Unix ms; on PostgreSQL, past the
    /// database's clock; false: it stopped or died).
    pub async fn agent_holders(
        &self,
        now: i64,
    ) -> anyhow::Result<std::collections::HashMap<String, (String, bool)>> {
        let stmt = self.stmt_at(
            "SELECT a.name AS name, a.instance AS instance, \
             CASE WHEN i.lease_until > {now} THEN 1 ELSE 0 END AS live \
             FROM agents a LEFT JOIN instances i ON i.id = a.instance \
             WHERE a.instance IS NOT NULL",
            Vec::new(),
            now,
        );
        let rows = self
            .read
            .query_all(stmt)
            .await
            .context("Cannot read which processes hold the agents")?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get("", "name")?;
                let instance: String = r.try_get("", "instance")?;
                let live: i32 = r.try_get("", "live")?;
                Ok((name, (instance, live == 1)))
            })
            .collect::<Result<_, sea_orm::DbErr>>()
            .context("which process holds an agent")
    }

    /// The ended tasks whose message does not show their end yet although
    /// it should by now, and that instance `me` may edit: it edits them, or
    /// nobody does, or their editor's lease ran out by `lease_now` (see
    /// [`Store::stmt_at`]). Only those that ended between `window` and
    /// `settle` ago (Unix ms, on the clock that records a task's end): the
    /// normal path had time to show them, and one that Slack keeps refusing
    /// is not tried for ever. At most `limit`, oldest first.
    pub async fn unshown_ends(
        &self,
        me: &str,
        lease_now: i64,
        settle: i64,
        window: i64,
        limit: u64,
    ) -> anyhow::Result<Vec<super::Task>> {
        let ended = crate::model::now_ms();
        let stmt = self.stmt_at(
            &format!(
                "SELECT t.* FROM tasks t LEFT JOIN instances i ON i.id = t.editor \
                 WHERE t.slack_synced = FALSE AND t.finished_at IS NOT NULL \
                 AND t.finished_at >= $2 AND t.finished_at < $3 \
                 AND (t.editor IS NULL OR t.editor = $1 OR i.id IS NULL \
                      OR i.lease_until <= {{now}}) \
                 ORDER BY t.id LIMIT {limit}"
            ),
            vec![me.into(), (ended - window).into(), (ended - settle).into()],
            lease_now,
        );
        self.read_tasks(stmt, "the ended tasks whose message lags")
            .await
    }

    /// Runs `stmt`, a `SELECT t.*` of tasks; `what` names them in an error.
    async fn read_tasks(&self, stmt: Statement, what: &str) -> anyhow::Result<Vec<super::Task>> {
        use sea_orm::FromQueryResult;

        let rows = self
            .read
            .query_all(stmt)
            .await
            .with_context(|| format!("Cannot read {what}"))?;
        rows.iter()
            .map(|r| super::Task::from_query_result(r, ""))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("one of {what}"))
    }

    /// The dispatched and running tasks that may need taking over by
    /// instance `me`: those whose agent no instance holds, or an instance
    /// whose lease ran out by `now` (on PostgreSQL, by the database's clock)
    /// or whose row is gone. Filtered here, so that the periodic takeover
    /// reads none of the tasks live processes hold.
    pub async fn orphaned_tasks(&self, me: &str, now: i64) -> anyhow::Result<Vec<super::Task>> {
        use crate::model::TaskState;
        let stmt = self.stmt_at(
            "SELECT t.* FROM tasks t \
             LEFT JOIN agents a ON a.name = t.agent \
             LEFT JOIN instances i ON i.id = a.instance \
             WHERE t.state IN ($1, $2) AND t.agent IS NOT NULL \
             AND (a.instance IS NULL \
                  OR (a.instance <> $3 AND (i.id IS NULL OR i.lease_until <= {now}))) \
             ORDER BY t.id",
            vec![
                TaskState::Dispatched.as_str().into(),
                TaskState::Running.as_str().into(),
                me.into(),
            ],
            now,
        );
        self.read_tasks(stmt, "the tasks no live process holds")
            .await
    }

    /// The lease of instance `id` (Unix ms), if it is registered.
    pub async fn instance_lease(&self, id: &str) -> anyhow::Result<Option<i64>> {
        let stmt = self.stmt(
            "SELECT lease_until FROM instances WHERE id = $1",
            vec![id.into()],
        );
        let row = self
            .read
            .query_one(stmt)
            .await
            .context("Cannot read the lease")?;
        row.map(|r| r.try_get::<i64>("", "lease_until"))
            .transpose()
            .context("a lease")
    }

    /// Sends `payload` on the PostgreSQL notification channel `channel`
    /// (`pg_notify`: delivered to every listener once the statement commits).
    pub async fn notify(&self, channel: &str, payload: &str) -> anyhow::Result<()> {
        let stmt = self.stmt(
            "SELECT pg_notify($1, $2)",
            vec![channel.into(), payload.into()],
        );
        self.db
            .execute(stmt)
            .await
            .context("Cannot notify the other processes")?;
        Ok(())
    }

    /// Another process queued a task: the next dispatch pass reads the queues.
    pub fn mark_maybe_queued(&self) {
        self.maybe_queued
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Another process may have written a follow-up that waits: the next
    /// dispatch pass reads the waiting ones.
    pub fn mark_maybe_waiting(&self) {
        self.maybe_waiting
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits for the turn of thread `root` of `channel` at making a reply
    /// its follow-up, among the processes sharing the database: a
    /// transaction holding the thread's advisory lock ([`THREAD_LOCK_CLASS`]),
    /// released when it ends (committed, or dropped). None with SQLite (one
    /// process: its own lock suffices).
    pub async fn thread_turn(
        &self,
        channel: &str,
        root: &str,
    ) -> anyhow::Result<Option<sea_orm::DatabaseTransaction>> {
        use sea_orm::TransactionTrait;
        if !self.is_shared() {
            return Ok(None);
        }
        let txn = self
            .db
            .begin()
            .await
            .context("Cannot wait for the thread's turn")?;
        txn.execute(self.stmt(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            vec![THREAD_LOCK_CLASS.into(), format!("{channel}/{root}").into()],
        ))
        .await
        .context("Cannot wait for the thread's turn")?;
        Ok(Some(txn))
    }

    /// The dispatched and running tasks a cancel was asked for.
    pub async fn cancels_asked(&self) -> anyhow::Result<Vec<super::Task>> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

        use super::entities::task;
        use crate::model::TaskState;
        task::Entity::find()
            .filter(task::Column::CancelRequested.eq(true))
            .filter(
                task::Column::State
                    .is_in([TaskState::Dispatched.as_str(), TaskState::Running.as_str()]),
            )
            .all(&self.read)
            .await
            .context("Cannot read the tasks to cancel")
    }

    /// Ends task `id` of `agent` as lost (see [`Store::finish`]), unless
    /// another live instance than `me` holds the agent now (its lease runs
    /// past the database's clock): then it changes nothing and returns
    /// false. One statement, so an agent reconnecting elsewhere at that
    /// moment keeps its task. With SQLite (one process) there is no other.
    pub async fn finish_lost(
        &self,
        id: i64,
        agent: &str,
        me: &str,
        from: &[crate::model::TaskState],
        ending: &super::Ending,
    ) -> anyhow::Result<bool> {
        let mut q = super::finish_query(id, Some(agent), None, from, ending, None);
        if self.is_shared() {
            q.push(" AND NOT EXISTS (SELECT 1 FROM agents a JOIN instances i ON i.id = a.instance WHERE a.name = ")
                .arg(agent)
                .push(" AND a.instance <> ")
                .arg(me)
                .push(" AND i.lease_until > ")
                .push(PG_NOW_MS)
                .push(")");
        }
        let res = self
            .write_sql(q)
            .await
            .context("Cannot record the task's end")?;
        if res == 1 {
            self.count_ended(ending.state());
        }
        Ok(res == 1)
    }

    /// The instance holding agent `name`'s connection, as recorded.
    pub async fn agent_instance(&self, name: &str) -> anyhow::Result<Option<String>> {
        let stmt = self.stmt(
            "SELECT instance FROM agents WHERE name = $1",
            vec![name.into()],
        );
        let row = self
            .read
            .query_one(stmt)
            .await
            .context("Cannot read which process holds the agent")?;
        Ok(row.and_then(|r| r.try_get::<Option<String>>("", "instance").ok().flatten()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease makes its instance live until it runs out; an agent held by a
    /// live instance is "held elsewhere" for every other one, and only its
    /// holder releases it.
    #[tokio::test]
    async fn an_agent_is_held_by_a_live_instance_until_its_lease_runs_out() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store
            .put_agent("laptop", "hash", "UADMIN", false)
            .await
            .expect("agent");
        // The process's clock (SQLite), or PostgreSQL's own.
        let now = 1_000_000;
        store
            .renew_instance("a", now, now, 10_000)
            .await
            .expect("a");
        store
            .renew_instance("b", now, now, 10_000)
            .await
            .expect("b");
        store.hold_agent("laptop", "a").await.expect("hold");
        assert_eq!(
            store
                .agent_instance("laptop")
                .await
                .expect("read")
                .as_deref(),
            Some("a")
        );
        let elsewhere = |me: &'static str, at: i64| {
            let store = store.clone();
            async move { store.agents_held_elsewhere(me, at).await.expect("read") }
        };
        assert!(elsewhere("b", now).await.contains("laptop"));
        assert!(elsewhere("a", now).await.is_empty(), "not elsewhere: here");
        expire(&store, "a").await;
        assert!(
            elsewhere("b", now).await.is_empty(),
            "a lease that ran out holds nothing"
        );
        let holders = store.agent_holders(now).await.expect("read");
        assert_eq!(holders.get("laptop"), Some(&("a".to_owned(), false)));

        // Renewed, it holds again; only its holder releases the agent.
        store
            .renew_instance("a", now, now, 10_000)
            .await
            .expect("renew");
        assert!(elsewhere("b", now).await.contains("laptop"));
        let holders = store.agent_holders(now).await.expect("read");
        assert_eq!(holders.get("laptop"), Some(&("a".to_owned(), true)));
        store.release_agent("laptop", "b").await.expect("not b's");
        assert!(elsewhere("b", now).await.contains("laptop"));
        store.release_agent("laptop", "a").await.expect("a's");
        assert!(elsewhere("b", now).await.is_empty());
        assert_eq!(store.agent_instance("laptop").await.expect("read"), None);

        // A graceful stop removes the lease and lets go of the agents.
        store.hold_agent("laptop", "a").await.expect("hold");
        store.remove_instance("a").await.expect("remove");
        assert_eq!(store.instance_lease("a").await.expect("read"), None);
        assert_eq!(store.agent_instance("laptop").await.expect("read"), None);
        assert!(store.instance_lease("b").await.expect("read").is_some());
    }

    /// Makes instance `id`'s lease run out, on any clock.
    async fn expire(store: &Store, id: &str) {
        let stmt = store.stmt(
            "UPDATE instances SET lease_until = 0 WHERE id = $1",
            vec![id.into()],
        );
        store.write(stmt).await.expect("expire the lease");
    }

    /// On PostgreSQL a lease is written on the database's clock, whatever
    /// the process's clock says: a process whose clock is an hour behind
    /// (or ahead) still holds a lease of the TTL.
    #[tokio::test]
    async fn on_postgresql_a_lease_is_on_the_database_s_clock() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        if !store.is_shared() {
            return;
        }
        store
            .put_agent("laptop", "hash", "UADMIN", false)
            .await
            .expect("agent");
        let hour = 3_600_000;
        let wall = crate::model::now_ms();
        store
            .renew_instance("behind", 1, wall - hour, 10_000)
            .await
            .expect("behind");
        store.hold_agent("laptop", "behind").await.expect("hold");
        let lease = store
            .instance_lease("behind")
            .await
            .expect("read")
            .expect("row");
        assert!(
            (lease - (wall + 10_000)).abs() < 5_000,
            "lease {lease} not on the database's clock (now {wall})"
        );
        // Asked by a process whose clock is an hour ahead: still live.
        assert!(
            store
                .agents_held_elsewhere("ahead", wall + hour)
                .await
                .expect("read")
                .contains("laptop")
        );
    }

    /// On a database one process uses, the rows of former processes are
    /// forgotten with the agents they held.
    #[tokio::test]
    async fn former_instances_are_forgotten_with_their_agents() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store
            .put_agent("laptop", "hash", "UADMIN", false)
            .await
            .expect("agent");
        store.renew_instance("old", 1, 1, 99).await.expect("old");
        store.hold_agent("laptop", "old").await.expect("hold");
        store.renew_instance("new", 2, 2, 198).await.expect("new");
        store.forget_other_instances("new").await.expect("forget");
        assert_eq!(store.instance_lease("old").await.expect("read"), None);
        assert!(store.instance_lease("new").await.expect("read").is_some());
        assert_eq!(store.agent_instance("laptop").await.expect("read"), None);
    }

    /// The process's clock now, in Unix ms (on PostgreSQL the database's
    /// clock decides; both are the real time here).
    fn wall_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    /// The processes counted alive are those whose lease runs past now, and
    /// the oldest start is theirs.
    #[tokio::test]
    async fn the_live_processes_are_those_with_a_lease() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        let now = wall_ms();
        assert_eq!(store.live_instances(now).await.expect("count"), 0);
        assert_eq!(store.oldest_live_start(now).await.expect("oldest"), None);
        // c started first, then b, then a.
        for (id, started) in [("a", now - 10), ("b", now - 20), ("c", now - 30)] {
            store
                .renew_instance(id, started, now, 60_000)
                .await
                .expect("lease");
        }
        assert_eq!(
            store.oldest_live_start(now).await.expect("oldest"),
            Some(now - 30)
        );
        expire(&store, "c").await;
        assert_eq!(store.live_instances(now).await.expect("count"), 2);
        assert_eq!(
            store.oldest_live_start(now).await.expect("oldest"),
            Some(now - 20)
        );
        expire(&store, "b").await;
        assert_eq!(store.live_instances(now).await.expect("count"), 1);
        assert_eq!(
            store.oldest_live_start(now).await.expect("oldest"),
            Some(now - 10)
        );
        expire(&store, "a").await;
        assert_eq!(store.live_instances(now).await.expect("count"), 0);
        assert_eq!(store.oldest_live_start(now).await.expect("oldest"), None);
    }

    /// The message goes to the first claimer; another live process cannot
    /// take it, but the holder of the task's agent can, and anyone can once
    /// the editor's lease ran out (or it stopped).
    #[tokio::test]
    async fn one_process_edits_a_message_until_the_agent_s_holder_or_a_lease_s_end_moves_it() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        store
            .put_agent("laptop", "hash", "UADMIN", false)
            .await
            .expect("agent");
        let id = store.insert_task(queued_task()).await.expect("task").id;
        let now = wall_ms();
        for me in ["a", "b", "c"] {
            store
                .renew_instance(me, now, now, 60_000)
                .await
                .expect("lease");
        }
        let claim = |me: &'static str, at: i64| {
            let store = store.clone();
            async move {
                store
                    .claim_editor(id, me, at)
                    .await
                    .expect("claim")
                    .is_some()
            }
        };
        assert!(claim("a", now).await, "nobody edits it yet");
        assert!(claim("a", now).await, "its editor keeps it");
        assert!(!claim("b", now).await, "a live editor keeps it");
        assert_eq!(
            store.task_editor(id).await.expect("read").as_deref(),
            Some("a")
        );

        // b holds the task's agent: it takes the message over, once a has
        // posted it.
        let claimed = store.claim_many(&[id], "laptop").await.expect("dispatch");
        assert_eq!(claimed, vec![id]);
        store.hold_agent("laptop", "b").await.expect("hold");
        assert!(!claim("b", now).await, "a is posting it");
        store.set_message_ts(id, "1.000001").await.expect("posted");
        assert!(!claim("c", now).await, "c holds nothing");
        assert!(claim("b", now).await, "the agent's holder takes it");
        let read = store
            .claim_editor(id, "b", now)
            .await
            .expect("claim")
            .expect("b edits it");
        assert_eq!(
            (read.message_ts.as_deref(), read.state.as_str()),
            (Some("1.000001"), "dispatched"),
            "the claim reads what the poster recorded"
        );
        assert!(!claim("a", now).await, "the poster no longer edits it");
        let edited_by = |me: &'static str| {
            let store = store.clone();
            async move {
                store
                    .task_edited_by(id, me)
                    .await
                    .expect("read")
                    .map(|t| t.id)
            }
        };
        assert_eq!(edited_by("b").await, Some(id), "b shows it");
        assert_eq!(edited_by("a").await, None, "a hands its changes to b");
        assert_eq!(
            store.task_editor(id).await.expect("read").as_deref(),
            Some("b")
        );

        // b's lease runs out: anyone takes the message over.
        store.release_agent("laptop", "b").await.expect("release");
        assert!(!claim("c", now).await, "b's lease runs");
        expire(&store, "b").await;
        assert!(claim("c", now).await, "b's lease ran out");
        // c stops: its row is gone, a takes the message over.
        store.remove_instance("c").await.expect("stop");
        assert!(claim("a", now).await, "c stopped");
        assert_eq!(
            store.task_editor(id).await.expect("read").as_deref(),
            Some("a")
        );
        assert!(
            store
                .claim_editor(id + 1000, "a", now)
                .await
                .expect("claim")
                .is_none(),
            "no such task"
        );
    }

    fn queued_task() -> crate::store::NewTask {
        crate::store::NewTask {
            queued_at: 1,
            ..crate::store::NewTask::sample()
        }
    }

    /// Two processes claiming the same queued tasks at once: each task goes
    /// to exactly one of them.
    #[tokio::test]
    async fn racing_claims_hand_each_task_to_one_agent() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(store.insert_task(queued_task()).await.expect("task").id);
        }
        let (a, b) = tokio::join!(store.claim_many(&ids, "a"), store.claim_many(&ids, "b"));
        let (a, b) = (a.expect("a claims"), b.expect("b claims"));
        let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        assert_eq!(all, ids, "each task once: a {a:?}, b {b:?}");
    }

    /// On PostgreSQL a claim skips a task another process is claiming now
    /// (its row locked) instead of waiting for it.
    #[tokio::test]
    async fn a_claim_skips_a_task_locked_by_another_claim() {
        let Some(server) =
            baton_testkit::db::postgres_or_skip("a_claim_skips_a_task_locked_by_another_claim")
        else {
            return;
        };
        use sea_orm::TransactionTrait;
        let db = baton_testkit::db::TestDb::postgres(&server).await;
        let store = Store::connect(&db.url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let locked = store.insert_task(queued_task()).await.expect("task").id;
        let free = store.insert_task(queued_task()).await.expect("task").id;
        let other = store.connection().begin().await.expect("a transaction");
        other
            .execute(Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT id FROM tasks WHERE id = $1 FOR UPDATE",
                [locked.into()],
            ))
            .await
            .expect("lock the row");
        let got = store.claim_many(&[locked, free], "a").await.expect("claim");
        assert_eq!(got, vec![free]);
        other.rollback().await.expect("rollback");
        let got = store.claim_many(&[locked], "b").await.expect("claim");
        assert_eq!(got, vec![locked], "claimed once the other let go");
    }

    /// The ended tasks whose message lags are read by a process that may
    /// edit them (its own, nobody's, a dead or gone process's), not a live
    /// other's, nor a synced or live task, nor one that ended a moment ago.
    #[tokio::test]
    async fn ended_tasks_whose_message_lags_are_read_by_a_process_that_may_edit_them() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let now = wall_ms();
        for me in ["me", "b", "c"] {
            store
                .renew_instance(me, now, now, 60_000)
                .await
                .expect("lease");
        }
        expire(&store, "c").await;
        let cancelled = crate::store::Ending::Cancelled {
            note: "Cancelled.".into(),
        };
        let mut ids = std::collections::HashMap::new();
        for (name, editor) in [
            ("mine", Some("me")),
            ("live other", Some("b")),
            ("dead", Some("c")),
            ("gone", Some("d")),
            ("nobody", None),
            ("synced", Some("me")),
            ("running", Some("me")),
        ] {
            let id = store.insert_task(queued_task()).await.expect("task").id;
            if name != "running" {
                assert!(
                    store
                        .finish(
                            id,
                            None,
                            None,
                            &[crate::model::TaskState::Queued],
                            &cancelled
                        )
                        .await
                        .expect("end")
                );
            }
            if name == "synced" {
                store.mark_slack_synced(id).await.expect("synced");
            }
            let stmt = store.stmt(
                "UPDATE tasks SET editor = $1 WHERE id = $2",
                vec![editor.map(str::to_owned).into(), id.into()],
            );
            store.write(stmt).await.expect("editor");
            ids.insert(name, id);
        }
        let read = |settle: i64| {
            let store = store.clone();
            async move {
                store
                    .unshown_ends("me", now, settle, 600_000, 100)
                    .await
                    .expect("read")
                    .iter()
                    .map(|t| t.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            read(-1_000).await,
            vec![ids["mine"], ids["dead"], ids["gone"], ids["nobody"]]
        );
        assert!(read(60_000).await.is_empty(), "they ended a moment ago");
        let ended_long_ago = store
            .unshown_ends("me", now, -1_000, -500, 100)
            .await
            .expect("read");
        assert!(ended_long_ago.is_empty(), "outside the window");
    }

    /// The periodic takeover reads only the dispatched and running tasks
    /// whose agent no live process holds: not those of a live process's
    /// agent, nor this process's, nor queued ones.
    #[tokio::test]
    async fn only_the_tasks_no_live_process_holds_are_read_for_takeover() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let now = 1_000_000;
        let mut ids = std::collections::HashMap::new();
        for (agent, holder) in [
            ("live", Some("b")),
            ("dead", Some("c")),
            ("gone", Some("d")),
            ("free", None),
            ("mine", Some("me")),
        ] {
            store
                .put_agent(agent, &format!("hash-{agent}"), "UADMIN", false)
                .await
                .expect("agent");
            if let Some(holder) = holder {
                if holder != "d" {
                    store
                        .renew_instance(holder, now, now, 10_000)
                        .await
                        .expect("lease");
                }
                store.hold_agent(agent, holder).await.expect("hold");
            }
            let mut new = queued_task();
            new.agent = Some(agent.into());
            ids.insert(agent, store.insert_task(new).await.expect("task").id);
        }
        expire(&store, "c").await;
        store
            .insert_task(queued_task())
            .await
            .expect("a queued task");
        let got: Vec<i64> = store
            .orphaned_tasks("me", now)
            .await
            .expect("read")
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(got, vec![ids["dead"], ids["gone"], ids["free"]]);
    }

    /// The lost-agent sweep's end is one guarded statement: on PostgreSQL
    /// it fails nothing while another live instance holds the agent, and
    /// fails the task once that instance's lease has run out.
    #[tokio::test]
    async fn a_task_is_not_failed_as_lost_while_another_live_instance_holds_its_agent() {
        use crate::model::TaskState;
        use crate::store::Ending;
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        store
            .put_agent("laptop", "hash", "UADMIN", false)
            .await
            .expect("agent");
        let mut new = queued_task();
        new.agent = Some("laptop".into());
        let id = store.insert_task(new).await.expect("task").id;
        let now = 1_000_000;
        store
            .renew_instance("b", now, now, 10_000)
            .await
            .expect("b");
        store.hold_agent("laptop", "b").await.expect("hold");
        let ending = Ending::Failed {
            error: "agent lost".into(),
            cause: "agent_lost".into(),
            session_id: None,
        };
        let from = [TaskState::Dispatched, TaskState::Running];
        let lost = || store.finish_lost(id, "laptop", "a", &from, &ending);
        if store.is_shared() {
            assert!(!lost().await.expect("guarded"), "held by live b");
            assert_eq!(
                store.task(id).await.expect("read").expect("row").state,
                "dispatched"
            );
        }
        expire(&store, "b").await;
        assert!(lost().await.expect("b's lease ran out"));
        assert_eq!(
            store.task(id).await.expect("read").expect("row").state,
            "failed"
        );
        assert!(!lost().await.expect("once"), "ends once");
    }
}
