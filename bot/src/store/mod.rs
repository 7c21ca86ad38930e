//! The database: every durable fact about tasks, agents, projects and the audit log.
//!
//! The database is the single source of truth; the bot recovers from it alone.
//! Every state change is one guarded `UPDATE` (`WHERE state IN (...)`), so two
//! racing writers cannot both move a task, and a late or repeated event changes
//! nothing.

pub mod approvals;
mod deferred;
pub mod entities;
pub mod file_lock;
mod group;
mod instances;
pub mod notifications;
mod rules_cache;
mod sql;
mod task_files;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use baton_migrations::{Migrator, MigratorTrait};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbErr, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Set, Statement, TransactionTrait,
};

use group::GroupWriter;

pub use entities::task::Model as Task;
use entities::{agent, audit, project, project_access, project_approver, slack_event, task};
pub use task_files::TaskFile;

use crate::model::{ResultMeta, Retry, TaskState, now_ms};
use sql::Sql;

/// The columns a new task's insert sets, in the order of [`new_task_values`].
macro_rules! new_task_columns {
    () => {
        "persona, project, prompt, requester, team_id, channel_id, thread_ts, state, agent, \
         parent_id, session_id, created_at, updated_at, queued_at, dispatched_at, after_task, \
         session_agent, editor"
    };
}

/// Connections that write to SQLite: one. SQLite takes one writer at a time;
/// a second writing connection only waits in SQLite's busy handler, which
/// sleeps in steps of milliseconds.
const SQLITE_WRITERS: u32 = 1;
/// Connections that read SQLite, beside the writer (WAL: readers never wait for it).
const SQLITE_READERS: u32 = 3;
/// WAL pages after which the writer checkpoints by itself, should the
/// background checkpoint ([`Store::checkpoint`]) not keep up; SQLite's default is 1,000.
const SQLITE_AUTOCHECKPOINT_PAGES: u32 = 10_000;
/// Connections kept to PostgreSQL.
const POSTGRES_POOL_SIZE: u32 = 16;
/// A PostgreSQL connection idle this long is tested (a round trip) before
/// it is used again: the server, a proxy or a restart may have closed it
/// meanwhile. One in steady use is not: the test would be one round trip
/// more per statement. See [`postgres_pool`].
const POSTGRES_PING_AFTER_IDLE: Duration = Duration::from_secs(1);
/// How long a writer waits for SQLite's lock before it fails.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The first key of the PostgreSQL advisory lock a project's queue-bound
/// insert holds (the second is the project's `hashtext`): several processes
/// inserting at the bound take turns. Taken by the database function
/// `baton_queue_take` (migration `m20261208_000010_queue_take`), which
/// writes it out.
#[cfg(test)]
const QUEUE_LOCK_CLASS: i32 = 0x6261_7100;

/// A task to create.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// When it entered its queue, on the bot's wall clock (the time to live counts from it).
    pub queued_at: i64,
    /// `code`, `review`, `plan` or `ops`.
    pub persona: String,
    /// The project.
    pub project: String,
    /// What to do.
    pub prompt: String,
    /// The Slack user who asked.
    pub requester: String,
    /// The workspace.
    pub team_id: String,
    /// The channel for its message.
    pub channel_id: String,
    /// The thread it was asked in, for follow-ups.
    pub thread_ts: Option<String>,
    /// The task it retries or follows up.
    pub parent_id: Option<i64>,
    /// The executor session to resume.
    pub session_id: Option<String>,
    /// The agent it goes to at once, when one was routed before it was
    /// written: it is written `dispatched` to that agent, not `queued`.
    pub agent: Option<String>,
    /// The task it waits for (a follow-up sent while the thread's task had
    /// not ended): written queued, and not dispatched until released.
    pub after_task: Option<i64>,
    /// The agent holding `session_id`: it goes to no other agent.
    pub session_agent: Option<String>,
    /// The process that posts and edits its message (`tasks.editor`): on a
    /// shared database, the one that queues it, so that no other process's
    /// dispatch pass shows it first; None otherwise (see
    /// [`Store::claim_editor`]).
    pub editor: Option<String>,
}

#[cfg(test)]
impl NewTask {
    /// A plain task for tests: persona `code` in project `web`, by `U1` in
    /// `C1`, queued now, for no agent yet.
    pub(crate) fn sample() -> NewTask {
        NewTask {
            queued_at: now_ms(),
            persona: "code".into(),
            project: "web".into(),
            prompt: "p".into(),
            requester: "U1".into(),
            team_id: "T1".into(),
            channel_id: "C1".into(),
            thread_ts: None,
            parent_id: None,
            session_id: None,
            agent: None,
            after_task: None,
            session_agent: None,
            editor: None,
        }
    }
}

/// How a task ended, as written by [`Store::finish`].
#[derive(Debug, Clone)]
pub enum Ending {
    /// Completed with a result.
    Completed {
        /// The result text.
        text: String,
        /// The session it produced.
        session_id: Option<String>,
        /// Cost and usage.
        meta: ResultMeta,
    },
    /// Failed.
    Failed {
        /// What went wrong.
        error: String,
        /// The cause code.
        cause: String,
        /// The session, if any.
        session_id: Option<String>,
    },
    /// Cancelled by a person.
    Cancelled {
        /// Who cancelled, or why.
        note: String,
    },
    /// Waited too long in the queue.
    Expired {
        /// Why.
        note: String,
    },
}

impl Ending {
    /// The terminal state this ending writes.
    pub fn state(&self) -> TaskState {
        match self {
            Ending::Completed { .. } => TaskState::Completed,
            Ending::Failed { .. } => TaskState::Failed,
            Ending::Cancelled { .. } => TaskState::Cancelled,
            Ending::Expired { .. } => TaskState::Expired,
        }
    }
}

/// What [`Store::requeue_or_cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// Back in its queue.
    Queued,
    /// Ended `cancelled`: a cancel had been asked for it.
    Cancelled,
    /// Nothing: it was not dispatched to that agent (any more).
    Unchanged,
}

/// An agent row, as the registry needs it.
pub type AgentRow = agent::Model;
/// A project row.
pub type ProjectRow = project::Model;
/// An audit log row.
pub type AuditRow = audit::Model;
/// An entry of a project's access list.
pub type AccessRow = project_access::Model;
/// What a new task's access check reads of its project ([`Store::project_rules`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectRules {
    /// The personas it takes (comma-separated); None: all, or no such project.
    pub personas: Option<String>,
    /// Its access list, oldest entry first.
    pub access: Vec<AccessRow>,
    /// Whether tasks an agent may take wait in its queue (not the
    /// follow-ups waiting for their turn), read with the rules in the same
    /// statement; None when the rules came from memory.
    pub queue_waiting: Option<bool>,
}
/// An approver of a project.
pub type ApproverRow = project_approver::Model;

/// What a one-line listing of a task shows, read without the rest of the row.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct TaskSummary {
    /// The task id.
    pub id: i64,
    /// Its state.
    pub state: String,
    /// Its persona.
    pub persona: String,
    /// Its project.
    pub project: String,
    /// The agent it went to.
    pub agent: Option<String>,
    /// The beginning of the prompt ([`SUMMARY_PROMPT_CHARS`] characters).
    pub prompt: String,
    /// The channel it was started in.
    pub channel_id: String,
    /// Its Slack message, once posted.
    pub message_ts: Option<String>,
    /// When it was created (Unix ms).
    pub created_at: i64,
}

/// Characters of the prompt a [`TaskSummary`] reads.
pub const SUMMARY_PROMPT_CHARS: u32 = 200;

/// Handle to the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    /// The pool that writes (and reads what it is about to change).
    db: DatabaseConnection,
    /// The pool for plain reads: SQLite's readers, or the same pool as `db`.
    read: DatabaseConnection,
    /// Whether `read` is a separate SQLite pool that can checkpoint.
    sqlite_file: bool,
    /// SQLite's group commit for the task writes; None for PostgreSQL, whose
    /// pool writes in parallel, and for an in-memory SQLite database.
    writer: Option<GroupWriter>,
    /// False only when no task can be queued: cleared just before
    /// [`Store::projects_with_queue`] reads, set after every write that
    /// queues a task. Lets the dispatcher skip its read when there is no queue.
    maybe_queued: Arc<AtomicBool>,
    /// Tasks this process ended, by terminal state (see [`Store::ended`]).
    ended: Arc<[AtomicU64; 4]>,
    /// False only when no follow-up can be waiting for its turn: cleared just
    /// before [`Store::waiting_follow_ups`] reads, set after every write of a
    /// waiting one. Lets the dispatcher skip its read when none waits.
    maybe_waiting: Arc<AtomicBool>,
    /// Projects' personas and access lists kept in memory; None unless
    /// [`Store::caching_project_rules`] (PostgreSQL, or a store that does
    /// not hold the SQLite file's lock: another may change them).
    rules: Option<Arc<rules_cache::RulesCache>>,
    /// Message ts (SQLite's group writer only) and synced marks written in
    /// batches (see `store/deferred.rs`); None (an in-memory SQLite
    /// database): each is written at once.
    deferred: Option<Arc<deferred::Deferred>>,
}

/// The terminal states, in the order of [`Store::ended`].
pub const TERMINAL: [TaskState; 4] = [
    TaskState::Completed,
    TaskState::Failed,
    TaskState::Cancelled,
    TaskState::Expired,
];

/// The view a task's message shows: its last steps and the tail of its output.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The last steps, a JSON array of strings.
    pub steps_json: &'a str,
    /// How many steps there were in all.
    pub step_count: i64,
    /// The tail of the output.
    pub output_tail: &'a str,
}

fn states(list: &[TaskState]) -> Vec<&'static str> {
    list.iter().map(|s| s.as_str()).collect()
}

/// `retried_as` while the retry is being created; read as [`Retry::Claimed`].
const RETRY_CLAIMED: i64 = 0;

impl Task {
    /// Whether this task was retried: its `retried_as` column as a [`Retry`].
    pub fn retry(&self) -> Retry {
        match self.retried_as {
            None => Retry::None,
            Some(RETRY_CLAIMED) => Retry::Claimed,
            Some(id) => Retry::As(baton_shared::TaskId(id)),
        }
    }
}

const ACTIVE: [TaskState; 3] = [TaskState::Queued, TaskState::Dispatched, TaskState::Running];

impl Store {
    /// Connects and runs the migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let sqlite = url.starts_with("sqlite:");
        // An in-memory database exists once per connection: one pool for everything.
        let sqlite_file = sqlite && !url.contains(":memory:") && !url.contains("mode=memory");
        let connections = match (sqlite, sqlite_file) {
            (false, _) => POSTGRES_POOL_SIZE,
            (true, true) => SQLITE_WRITERS,
            (true, false) => SQLITE_WRITERS + SQLITE_READERS,
        };
        let open = |connections: u32| async move {
            let pool = if sqlite {
                Database::connect(pool_options(url, connections))
                    .await
                    .map_err(anyhow::Error::from)
            } else {
                postgres_pool(url, connections, POSTGRES_PING_AFTER_IDLE).await
            };
            pool.with_context(|| format!("Cannot open the database at {}", redact_url(url)))
        };
        let db = open(connections).await?;
        if sqlite {
            Migrator::up(&db, None)
                .await
                .context("Cannot run the database migrations")?;
        } else {
            let one = open(1).await?;
            let migrated = migrate_postgres(&one).await;
            let _ = one.close().await;
            migrated?;
        }
        let read = if sqlite_file {
            open(SQLITE_READERS).await?
        } else {
            db.clone()
        };
        // The group writer owns a connection of its own to the file (an
        // in-memory database is one per connection: it writes through `db`).
        let writer = match file_lock::sqlite_path(url) {
            Some(path) if sqlite_file => Some(GroupWriter::start(
                &path,
                group::Pragmas {
                    busy_timeout: SQLITE_BUSY_TIMEOUT,
                    autocheckpoint_pages: SQLITE_AUTOCHECKPOINT_PAGES,
                },
            )?),
            _ => None,
        };
        let deferred = match &writer {
            Some(writer) => Some(deferred::Deferred::sqlite(writer.clone())),
            None if !sqlite => Some(deferred::Deferred::postgres(db.clone())),
            None => None,
        };
        Ok(Store {
            db,
            read,
            sqlite_file,
            maybe_queued: Arc::new(AtomicBool::new(true)),
            ended: Arc::new(Default::default()),
            maybe_waiting: Arc::new(AtomicBool::new(true)),
            rules: None,
            deferred,
            writer,
        })
    }

    /// Keeps projects' personas and access lists in memory (see
    /// `store/rules_cache.rs`), on a SQLite file only. For the process that
    /// holds the file's lock (`file_lock`): every write of them then goes
    /// through this store (or a clone of it), which forgets them after each.
    pub fn caching_project_rules(mut self) -> Self {
        if self.sqlite_file {
            self.rules = Some(Default::default());
        }
        self
    }

    /// Copies SQLite's write-ahead log into the database file from a reader
    /// connection, so that writers never pay for it (nor for its fsync).
    /// Does not wait for readers; a no-op for PostgreSQL and in-memory SQLite.
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        if self.sqlite_file {
            self.read
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
                .context("Cannot checkpoint the database")?;
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        self.db.ping().await.is_ok() && self.read.ping().await.is_ok()
    }

    /// Whether tasks can be read and written, or why not (for `/readyz`):
    /// the database answers, and SQLite's group writer still runs.
    pub async fn health(&self) -> Result<(), &'static str> {
        if self.writer.as_ref().is_some_and(|w| !w.is_alive()) {
            return Err("the database writer has stopped");
        }
        if !self.ping().await {
            return Err("database unavailable");
        }
        Ok(())
    }

    /// Stops SQLite's group writer, as a crash of it would.
    #[cfg(test)]
    pub fn kill_writer(&self) {
        if let Some(w) = &self.writer {
            w.kill();
        }
    }

    /// Transactions the group writer committed; None without one (PostgreSQL).
    pub fn commits(&self) -> Option<u64> {
        self.writer.as_ref().map(GroupWriter::commits)
    }

    /// Statements the group writer ran; None without one (PostgreSQL).
    pub fn writes(&self) -> Option<u64> {
        self.writer.as_ref().map(GroupWriter::writes)
    }

    /// Runs a write: through the group writer when there is one.
    async fn write(&self, stmt: Statement) -> Result<u64, DbErr> {
        match &self.writer {
            Some(w) => w.execute(stmt).await,
            None => Ok(self.db.execute(stmt).await?.rows_affected()),
        }
    }

    /// Runs a write with a `RETURNING` clause of every task column; the tasks.
    async fn write_tasks(&self, stmt: Statement) -> Result<Vec<Task>, DbErr> {
        match &self.writer {
            Some(w) => w.query_tasks(stmt).await,
            None => self
                .db
                .query_all(stmt)
                .await?
                .iter()
                .map(|row| Task::from_query_result(row, ""))
                .collect(),
        }
    }

    /// Runs a hand-written write (see `store/sql.rs`).
    async fn write_sql(&self, q: Sql) -> Result<u64, DbErr> {
        self.write(q.build(self.db.get_database_backend())).await
    }

    /// Runs a hand-written write ending in [`sql::RETURNING_TASK`]; the tasks.
    async fn write_sql_tasks(&self, q: Sql) -> Result<Vec<Task>, DbErr> {
        self.write_tasks(q.build(self.db.get_database_backend()))
            .await
    }

    /// The underlying connection, for tests and tools.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    // ---- tasks ----

    /// Writes a new queued task and returns it.
    pub async fn insert_task(&self, new: NewTask) -> anyhow::Result<Task> {
        self.insert_task_with_files(new, &[]).await
    }

    /// Writes a new task with the files attached to it, in one transaction
    /// (no dispatcher may see the task without them); returns the task.
    pub async fn insert_task_with_files(
        &self,
        new: NewTask,
        files: &[TaskFile],
    ) -> anyhow::Result<Task> {
        let mut q = Sql::new(concat!(
            "INSERT INTO tasks (",
            new_task_columns!(),
            ") VALUES ("
        ));
        new_task_values(&mut q, new);
        q.push(")").push(sql::RETURNING_TASK);
        let stmt = q.build(self.db.get_database_backend());
        let rows = self
            .write_task_rows(stmt, files)
            .await
            .context("Cannot write the task")?;
        let task = rows
            .into_iter()
            .next()
            .context("The database returned no task")?;
        if task.agent.is_none() {
            self.maybe_queued.store(true, Ordering::SeqCst);
        }
        if task.after_task.is_some() {
            self.maybe_waiting.store(true, Ordering::SeqCst);
        }
        Ok(task)
    }

    /// Writes a new queued task unless `max` tasks already wait in its
    /// project's queue; None when the queue is full. The count and the insert
    /// are one statement: on SQLite (`INSERT … SELECT … WHERE (SELECT COUNT(*)
    /// …) < max`) no other write comes between them with its single writer;
    /// on PostgreSQL (READ COMMITTED), where two such statements could each
    /// count before the other's insert, the condition is the function
    /// `baton_queue_take`, which takes the project's advisory lock
    /// ([`QUEUE_LOCK_CLASS`]) before it counts (see its migration), so they
    /// take turns.
    pub async fn insert_queued_task(&self, new: NewTask, max: u64) -> anyhow::Result<Option<Task>> {
        self.insert_queued_task_with_files(new, max, &[], None)
            .await
    }

    /// [`Store::insert_queued_task`], with the files attached to the task
    /// written in the same transaction. On PostgreSQL, `notify` (a channel
    /// and a payload) is sent by the same statement if it queued the task:
    /// the other processes hear of it as it commits, with no statement of
    /// its own.
    pub async fn insert_queued_task_with_files(
        &self,
        new: NewTask,
        max: u64,
        files: &[TaskFile],
        notify: Option<(&str, &str)>,
    ) -> anyhow::Result<Option<Task>> {
        let project = new.project.clone();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let mut q = Sql::new(concat!(
            "INSERT INTO tasks (",
            new_task_columns!(),
            ") SELECT "
        ));
        new_task_values(&mut q, NewTask { agent: None, ..new });
        if self.is_shared() {
            let (channel, payload) = notify.unzip();
            q.push(" WHERE baton_queue_take(")
                .arg(project.as_str())
                .push(", ")
                .arg(max)
                .push(", ")
                .arg(channel)
                .push(", ")
                .arg(payload)
                .push(")");
        } else {
            q.push(" WHERE (SELECT COUNT(id) FROM tasks WHERE state = ")
                .state(TaskState::Queued)
                .push(" AND project = ")
                .arg(project.as_str())
                .push(") < ")
                .arg(max);
        }
        q.push(sql::RETURNING_TASK);
        let stmt = q.build(self.db.get_database_backend());
        let rows = self
            .write_task_rows(stmt, files)
            .await
            .context("Cannot write the task")?;
        let Some(task) = rows.into_iter().next() else {
            return Ok(None);
        };
        self.maybe_queued.store(true, Ordering::SeqCst);
        if task.after_task.is_some() {
            self.maybe_waiting.store(true, Ordering::SeqCst);
        }
        Ok(Some(task))
    }

    /// One task.
    pub async fn task(&self, id: i64) -> anyhow::Result<Option<Task>> {
        let mut task = task::Entity::find_by_id(id)
            .one(&self.read)
            .await
            .context("Cannot read the task")?;
        // Its message ts may not be written yet.
        if let (Some(t), Some(deferred)) = (task.as_mut(), &self.deferred)
            && t.message_ts.is_none()
        {
            t.message_ts = deferred.ts_of(id);
        }
        Ok(task)
    }

    /// The task whose message has this ts in this channel (thread replies).
    pub async fn task_by_message(&self, channel: &str, ts: &str) -> anyhow::Result<Option<Task>> {
        self.write_marks_naming(ts).await;
        task::Entity::find()
            .filter(task::Column::ChannelId.eq(channel))
            .filter(task::Column::MessageTs.eq(ts))
            .one(&self.read)
            .await
            .context("Cannot find the task for a thread")
    }

    /// Records the task's Slack message: at once, or on SQLite with the
    /// other messages' within [`deferred::FLUSH_INTERVAL`] (see
    /// `store/deferred.rs`: nobody waits for it, and a lost one is found
    /// again in Slack).
    pub async fn record_message_ts(&self, id: i64, ts: &str) -> anyhow::Result<()> {
        match &self.deferred {
            Some(deferred) if deferred.defers_ts() => {
                deferred.message_ts(id, ts);
                Ok(())
            }
            _ => self.set_message_ts(id, ts).await,
        }
    }

    /// Records that Slack shows the task's final state, with the others'
    /// within [`deferred::FLUSH_INTERVAL`] (a lost mark only shows the final
    /// state again after a restart); at once on an in-memory database.
    pub async fn record_slack_synced(&self, id: i64) -> anyhow::Result<()> {
        match &self.deferred {
            Some(deferred) => {
                deferred.synced(id);
                Ok(())
            }
            None => self.mark_slack_synced(id).await,
        }
    }

    /// Writes the waiting marks if a message ts not yet written is `ts`
    /// (a thread reply to that message must find its task).
    async fn write_marks_naming(&self, ts: &str) {
        if let Some(deferred) = &self.deferred
            && deferred.knows_ts(ts)
        {
            deferred.flush().await;
        }
    }

    /// Writes the marks [`Store::record_message_ts`] and
    /// [`Store::record_slack_synced`] keep for a moment (at shutdown).
    pub async fn flush_marks(&self) {
        if let Some(deferred) = &self.deferred {
            deferred.flush().await;
        }
    }

    /// Records the task's Slack message.
    pub async fn set_message_ts(&self, id: i64, ts: &str) -> anyhow::Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::MessageTs, Expr::value(ts))
            .filter(task::Column::Id.eq(id))
            .write(self)
            .await
            .context("Cannot record the task's message")?;
        Ok(())
    }

    /// Moves a queued task to `dispatched` for `agent`. False if it was no longer queued.
    pub async fn claim(&self, id: i64, agent: &str) -> anyhow::Result<bool> {
        let res = claim_query(agent)
            .filter(task::Column::Id.eq(id))
            .apply_if(skip_locked(self.is_shared(), &[id]), QueryFilter::filter)
            .write(self)
            .await
            .context("Cannot claim the task")?;
        Ok(res == 1)
    }

    /// Claims those of `ids` that are still queued for `agent` (as
    /// [`Store::claim`] does), in one statement. Returns the ids it moved.
    pub async fn claim_many(&self, ids: &[i64], agent: &str) -> anyhow::Result<Vec<i64>> {
        let rows = claim_query(agent)
            .filter(task::Column::Id.is_in(ids.iter().copied()))
            .apply_if(skip_locked(self.is_shared(), ids), QueryFilter::filter)
            .write_returning(self)
            .await
            .context("Cannot claim the tasks")?;
        Ok(rows.into_iter().map(|t| t.id).collect())
    }

    /// Marks a dispatched task as running on `agent` (its `accepted` event).
    pub async fn mark_running(&self, id: i64, agent: &str, seq: i64) -> anyhow::Result<bool> {
        let mut q = Sql::new("UPDATE tasks SET state = ");
        q.state(TaskState::Running)
            .push(", started_at = ")
            .arg(now_ms())
            .push(", updated_at = $1, last_seq = ")
            .arg(seq)
            .push(" WHERE id = ")
            .arg(id)
            .push(" AND agent = ")
            .arg(agent)
            .push(" AND state = ")
            .state(TaskState::Dispatched)
            .push(" AND last_seq < $2");
        let res = self
            .write_sql(q)
            .await
            .context("Cannot mark the task running")?;
        Ok(res == 1)
    }

    /// Marks a dispatched task running without an event (the agent's hello says it runs it).
    pub async fn force_running(&self, id: i64, agent: &str) -> anyhow::Result<bool> {
        let now = now_ms();
        let res = task::Entity::update_many()
            .col_expr(
                task::Column::State,
                Expr::value(TaskState::Running.as_str()),
            )
            .col_expr(task::Column::StartedAt, Expr::value(now))
            .col_expr(task::Column::UpdatedAt, Expr::value(now))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::Agent.eq(agent))
            .filter(task::Column::State.eq(TaskState::Dispatched.as_str()))
            .write(self)
            .await
            .context("Cannot mark the task running")?;
        Ok(res == 1)
    }

    /// Queued tasks that entered the queue before `cutoff_ms`. A follow-up
    /// waiting for its turn is not in the queue yet: it enters it when released.
    pub async fn queued_before(&self, cutoff_ms: i64) -> anyhow::Result<Vec<Task>> {
        task::Entity::find()
            .filter(task::Column::State.eq(TaskState::Queued.as_str()))
            .filter(task::Column::QueuedAt.lt(cutoff_ms))
            .filter(task::Column::AfterTask.is_null())
            .order_by_asc(task::Column::Id)
            .all(&self.read)
            .await
            .context("Cannot read the queue")
    }

    /// Puts a dispatched (not yet accepted) task back in its queue, keeping its
    /// place: the queue is ordered by id, so it goes back ahead of newer tasks.
    pub async fn requeue(&self, id: i64, from_agent: &str, reason: &str) -> anyhow::Result<bool> {
        let res = task::Entity::update_many()
            .col_expr(task::Column::State, Expr::value(TaskState::Queued.as_str()))
            .col_expr(task::Column::Agent, Expr::value(Option::<String>::None))
            .col_expr(task::Column::UpdatedAt, Expr::value(now_ms()))
            .col_expr(task::Column::WaitReason, Expr::value(reason))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::Agent.eq(from_agent))
            .filter(task::Column::State.eq(TaskState::Dispatched.as_str()))
            // A task with a cancel asked for never goes back: see `requeue_or_cancel`.
            .filter(task::Column::CancelRequested.eq(false))
            .write(self)
            .await
            .context("Cannot put the task back in its queue")?;
        if res == 1 {
            self.maybe_queued.store(true, Ordering::SeqCst);
        }
        Ok(res == 1)
    }

    /// Takes a dispatched (not yet accepted) task back from `from_agent`: it
    /// ends `cancelled` when a cancel was asked for it, and goes back to its
    /// queue otherwise (see [`Store::requeue`]), so a cancelled task is never
    /// dispatched again.
    pub async fn requeue_or_cancel(
        &self,
        id: i64,
        from_agent: &str,
        reason: &str,
    ) -> anyhow::Result<Requeued> {
        // The flag only goes from false to true while the task is with an
        // agent: if the requeue missed because it was set meanwhile, the
        // second cancel sees it.
        if self.cancel_if_asked(id, from_agent).await? {
            return Ok(Requeued::Cancelled);
        }
        if self.requeue(id, from_agent, reason).await? {
            return Ok(Requeued::Queued);
        }
        Ok(if self.cancel_if_asked(id, from_agent).await? {
            Requeued::Cancelled
        } else {
            Requeued::Unchanged
        })
    }

    /// Ends a task dispatched to `agent` as `cancelled` if a cancel was asked for it.
    async fn cancel_if_asked(&self, id: i64, agent: &str) -> anyhow::Result<bool> {
        let ending = Ending::Cancelled {
            note: "Cancelled before an agent started it.".into(),
        };
        let mut q = finish_query(
            id,
            Some(agent),
            None,
            &[TaskState::Dispatched],
            &ending,
            None,
        );
        q.push(" AND cancel_requested = TRUE");
        let res = self.write_sql(q).await.context("Cannot cancel the task")?;
        Ok(res == 1)
    }

    /// Records progress (the view the message shows) after events up to `seq`.
    pub async fn save_progress(
        &self,
        id: i64,
        seq: i64,
        steps_json: &str,
        step_count: i64,
        output_tail: &str,
    ) -> anyhow::Result<()> {
        let mut q = Sql::new("UPDATE tasks SET steps = ");
        q.arg(steps_json)
            .push(", step_count = ")
            .arg(step_count)
            .push(", output_tail = ")
            .arg(output_tail)
            .push(", last_seq = ")
            .arg(seq)
            .push(", updated_at = ")
            .arg(now_ms())
            .push(" WHERE id = ")
            .arg(id)
            .push(" AND last_seq < $4 AND state IN (")
            .states(&ACTIVE)
            .push(")");
        self.write_sql(q)
            .await
            .context("Cannot record the task's progress")?;
        Ok(())
    }

    /// Ends a task, once. `agent` (when given) must be the task's agent and
    /// `seq` (when given) newer than every applied event. `from` lists the
    /// states it may end from. Returns false when nothing changed (already
    /// ended, another agent's task, a stale event).
    pub async fn finish(
        &self,
        id: i64,
        agent: Option<&str>,
        seq: Option<i64>,
        from: &[TaskState],
        ending: &Ending,
    ) -> anyhow::Result<bool> {
        let res = self
            .write_sql(finish_query(id, agent, seq, from, ending, None))
            .await
            .context("Cannot record the task's end")?;
        if res == 1 {
            self.count_ended(ending.state());
        }
        Ok(res == 1)
    }

    /// Ends a task on its agent's final event (see [`Store::finish`]) and
    /// records the progress its message shows, in one statement. Returns
    /// the ended task, or None when nothing changed.
    pub async fn finish_with_progress(
        &self,
        id: i64,
        agent: &str,
        seq: i64,
        from: &[TaskState],
        ending: &Ending,
        progress: Progress<'_>,
    ) -> anyhow::Result<Option<Task>> {
        let mut q = finish_query(id, Some(agent), Some(seq), from, ending, Some(progress));
        q.push(sql::RETURNING_TASK);
        let rows = self
            .write_sql_tasks(q)
            .await
            .context("Cannot record the task's end")?;
        if !rows.is_empty() {
            self.count_ended(ending.state());
        }
        Ok(rows.into_iter().next())
    }

    /// Remembers that a cancel was asked for a task whose agent has it. False
    /// when the task is not with an agent or a cancel was already asked.
    pub async fn set_cancel_requested(&self, id: i64) -> anyhow::Result<bool> {
        let res = task::Entity::update_many()
            .col_expr(task::Column::CancelRequested, Expr::value(true))
            .col_expr(task::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::CancelRequested.eq(false))
            .filter(task::Column::State.is_in(states(&[TaskState::Dispatched, TaskState::Running])))
            .write(self)
            .await
            .context("Cannot record the cancel")?;
        Ok(res == 1)
    }

    /// Updates why a queued task waits.
    pub async fn set_wait_reason(&self, id: i64, reason: &str) -> anyhow::Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::WaitReason, Expr::value(reason))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::State.eq(TaskState::Queued.as_str()))
            .write(self)
            .await
            .context("Cannot record why the task waits")?;
        Ok(())
    }

    /// Marks the task's message as showing its final state (the result's
    /// continuation replies included).
    pub async fn mark_slack_synced(&self, id: i64) -> anyhow::Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::SlackSynced, Expr::value(true))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::State.is_in(states(&[
                TaskState::Completed,
                TaskState::Failed,
                TaskState::Cancelled,
                TaskState::Expired,
            ])))
            .write(self)
            .await
            .context("Cannot record that Slack is up to date")?;
        Ok(())
    }

    /// Records that the first `parts` result continuation replies are in the
    /// thread. Never lowers the count.
    pub async fn set_result_parts_posted(&self, id: i64, parts: i32) -> anyhow::Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::ResultPartsPosted, Expr::value(parts))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::ResultPartsPosted.lt(parts))
            .write(self)
            .await
            .context("Cannot record the posted result parts")?;
        Ok(())
    }

    /// Claims the right to retry an ended task: true for the one caller that
    /// gets it, false if the task was retried (or is being retried) already,
    /// or cannot be retried.
    pub async fn claim_retry(&self, id: i64) -> anyhow::Result<bool> {
        let res = task::Entity::update_many()
            .col_expr(task::Column::RetriedAs, Expr::value(RETRY_CLAIMED))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::RetriedAs.is_null())
            .filter(task::Column::State.is_in(states(&[
                TaskState::Failed,
                TaskState::Cancelled,
                TaskState::Expired,
            ])))
            .write(self)
            .await
            .context("Cannot claim the retry")?;
        Ok(res == 1)
    }

    /// Records the task a claimed retry created.
    pub async fn set_retried_as(&self, id: i64, new: i64) -> anyhow::Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::RetriedAs, Expr::value(new))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::RetriedAs.eq(RETRY_CLAIMED))
            .write(self)
            .await
            .context("Cannot record the retry")?;
        Ok(())
    }

    /// Gives up a claimed retry that created nothing.
    pub async fn release_retry(&self, id: i64) -> anyhow::Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::RetriedAs, Expr::value(Option::<i64>::None))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::RetriedAs.eq(RETRY_CLAIMED))
            .write(self)
            .await
            .context("Cannot release the retry")?;
        Ok(())
    }

    /// Releases retry claims a crash left behind (a claim lives for the few
    /// milliseconds it takes to create the retry). Run at start-up.
    pub async fn release_stale_retry_claims(&self) -> anyhow::Result<u64> {
        let res = task::Entity::update_many()
            .col_expr(task::Column::RetriedAs, Expr::value(Option::<i64>::None))
            .filter(task::Column::RetriedAs.eq(RETRY_CLAIMED))
            .write(self)
            .await
            .context("Cannot release stale retry claims")?;
        Ok(res)
    }

    /// The tasks of a thread, oldest first: the one whose message starts it
    /// and those posted in it.
    pub async fn thread_tasks(&self, channel: &str, root_ts: &str) -> anyhow::Result<Vec<Task>> {
        self.write_marks_naming(root_ts).await;
        task::Entity::find()
            .filter(task::Column::ChannelId.eq(channel))
            .filter(
                sea_orm::Condition::any()
                    .add(task::Column::MessageTs.eq(root_ts))
                    .add(task::Column::ThreadTs.eq(root_ts)),
            )
            .order_by_asc(task::Column::Id)
            .all(&self.read)
            .await
            .context("Cannot read the thread's tasks")
    }

    /// Queued tasks of a project in queue order, at most `limit`.
    pub async fn queued(&self, project: &str, limit: u64) -> anyhow::Result<Vec<Task>> {
        task::Entity::find()
            .filter(task::Column::State.eq(TaskState::Queued.as_str()))
            .filter(task::Column::Project.eq(project))
            .order_by_asc(task::Column::Id)
            .limit(limit.min(i64::MAX as u64))
            .all(&self.read)
            .await
            .context("Cannot read the queue")
    }

    /// How many tasks wait in a project's queue.
    pub async fn queue_len(&self, project: &str) -> anyhow::Result<u64> {
        task::Entity::find()
            .filter(task::Column::State.eq(TaskState::Queued.as_str()))
            .filter(task::Column::Project.eq(project))
            .count(&self.read)
            .await
            .context("Cannot count the queue")
    }

    /// Queued tasks of a project that may be dispatched, in queue order,
    /// after task `after_id` (0: from the head), at most `limit`: not the
    /// follow-ups waiting for their turn. Those pinned to an agent
    /// (`session_agent`) are among them; the caller routes them to that agent
    /// only. Read through the queue's index like [`Store::queued`].
    pub async fn dispatchable(
        &self,
        project: &str,
        after_id: i64,
        limit: u64,
    ) -> anyhow::Result<Vec<Task>> {
        dispatchable_query(project, after_id, limit)
            .all(&self.read)
            .await
            .context("Cannot read the queue")
    }

    /// Follow-ups written waiting for an earlier task, oldest first (through
    /// the partial index of [`baton_migrations::FOLLOW_UPS_WAITING`]). Bounded:
    /// they are queued tasks, which the queue's bound counts. Rows that ended
    /// while they waited (cancelled, expired) are among them until
    /// [`Store::forget_waiting`].
    pub async fn waiting_follow_ups(&self) -> anyhow::Result<Vec<Task>> {
        // Cleared before the read: a follow-up written meanwhile sets it again.
        self.maybe_waiting.store(false, Ordering::SeqCst);
        let waiting = waiting_query().all(&self.read).await;
        if !matches!(&waiting, Ok(w) if w.is_empty()) {
            self.maybe_waiting.store(true, Ordering::SeqCst);
        }
        waiting.context("Cannot read the waiting follow-ups")
    }

    /// Those of `ids` that have ended.
    pub async fn ended_among(&self, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        task::Entity::find()
            .select_only()
            .column(task::Column::Id)
            .filter(task::Column::Id.is_in(ids.iter().copied()))
            .filter(task::Column::State.is_in(states(&TERMINAL)))
            .into_tuple::<i64>()
            .all(&self.read)
            .await
            .context("Cannot read how tasks ended")
    }

    /// Whether a follow-up may be waiting (false: certainly none is).
    pub fn may_have_waiting(&self) -> bool {
        self.maybe_waiting.load(Ordering::SeqCst)
    }

    /// Lets a waiting follow-up run: it joins its project's queue now (its
    /// time to live counts from now), resuming `session_id` on
    /// `session_agent` only. False when it no longer waits for `after` (released
    /// already, cancelled).
    pub async fn release_follow_up(
        &self,
        id: i64,
        after: i64,
        session_id: Option<String>,
        session_agent: Option<String>,
        queued_at: i64,
    ) -> anyhow::Result<bool> {
        let res = task::Entity::update_many()
            .col_expr(task::Column::AfterTask, Expr::value(Option::<i64>::None))
            .col_expr(task::Column::SessionId, Expr::value(session_id))
            .col_expr(task::Column::SessionAgent, Expr::value(session_agent))
            .col_expr(task::Column::QueuedAt, Expr::value(queued_at))
            .col_expr(task::Column::UpdatedAt, Expr::value(now_ms()))
            .col_expr(
                task::Column::WaitReason,
                Expr::value(Option::<String>::None),
            )
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::AfterTask.eq(after))
            .filter(task::Column::State.eq(TaskState::Queued.as_str()))
            .write(self)
            .await
            .context("Cannot release the follow-up")?;
        if res == 1 {
            self.maybe_queued.store(true, Ordering::SeqCst);
        }
        Ok(res == 1)
    }

    /// A waiting follow-up now waits for `now` instead of `before` (which
    /// ended while an earlier task of the thread still runs), as `reason` says.
    pub async fn wait_after(
        &self,
        id: i64,
        before: i64,
        now: i64,
        reason: &str,
    ) -> anyhow::Result<bool> {
        let res = task::Entity::update_many()
            .col_expr(task::Column::AfterTask, Expr::value(now))
            .col_expr(task::Column::WaitReason, Expr::value(reason))
            .col_expr(task::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::AfterTask.eq(before))
            .filter(task::Column::State.eq(TaskState::Queued.as_str()))
            .write(self)
            .await
            .context("Cannot record what the follow-up waits for")?;
        Ok(res == 1)
    }

    /// Takes a follow-up that ended while it waited (cancelled, expired) out
    /// of the waiting ones' index.
    pub async fn forget_waiting(&self, id: i64) -> anyhow::Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::AfterTask, Expr::value(Option::<i64>::None))
            .filter(task::Column::Id.eq(id))
            .filter(task::Column::State.ne(TaskState::Queued.as_str()))
            .write(self)
            .await
            .context("Cannot forget an ended follow-up")?;
        Ok(())
    }

    /// How many tasks are in `state`.
    pub async fn count_in(&self, state: TaskState) -> anyhow::Result<u64> {
        task::Entity::find()
            .filter(task::Column::State.eq(state.as_str()))
            .count(&self.read)
            .await
            .context("Cannot count tasks")
    }

    fn count_ended(&self, state: TaskState) {
        if let Some(i) = TERMINAL.iter().position(|t| *t == state) {
            self.ended[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tasks this process ended since it started, by state (in [`TERMINAL`]'s
    /// order): counted as they end, so a metrics scrape reads no rows for them.
    pub fn ended(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.ended[i].load(Ordering::Relaxed))
    }

    /// How many tasks are queued, dispatched or running, by state, in one
    /// query. Bounded: queues are bounded, and running tasks by the agents'
    /// capacity.
    pub async fn active_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        task::Entity::find()
            .select_only()
            .column(task::Column::State)
            .column_as(task::Column::Id.count(), "n")
            .filter(task::Column::State.is_in(states(&ACTIVE)))
            .group_by(task::Column::State)
            .into_tuple::<(String, i64)>()
            .all(&self.read)
            .await
            .context("Cannot count active tasks")
    }

    /// Queued tasks per project, in one query.
    pub async fn queue_depths(&self) -> anyhow::Result<Vec<(String, i64)>> {
        task::Entity::find()
            .select_only()
            .column(task::Column::Project)
            .column_as(task::Column::Id.count(), "n")
            .filter(task::Column::State.eq(TaskState::Queued.as_str()))
            .group_by(task::Column::Project)
            .order_by_asc(task::Column::Project)
            .into_tuple::<(String, i64)>()
            .all(&self.read)
            .await
            .context("Cannot count the queues")
    }

    /// Projects that have queued tasks.
    pub async fn projects_with_queue(&self) -> anyhow::Result<Vec<String>> {
        // Cleared before the read: a task queued meanwhile sets it again.
        self.maybe_queued.store(false, Ordering::SeqCst);
        let projects = task::Entity::find()
            .select_only()
            .column(task::Column::Project)
            .distinct()
            .filter(task::Column::State.eq(TaskState::Queued.as_str()))
            .into_tuple::<String>()
            .all(&self.read)
            .await;
        if !matches!(&projects, Ok(p) if p.is_empty()) {
            self.maybe_queued.store(true, Ordering::SeqCst);
        }
        projects.context("Cannot read the queues")
    }

    /// Whether a task may be queued (false: certainly none is; see `maybe_queued`).
    pub fn may_have_queue(&self) -> bool {
        self.maybe_queued.load(Ordering::SeqCst)
    }

    /// Tasks in any of `states`, oldest first, at most `limit`.
    pub async fn tasks_in(&self, list: &[TaskState], limit: u64) -> anyhow::Result<Vec<Task>> {
        task::Entity::find()
            .filter(task::Column::State.is_in(states(list)))
            .order_by_asc(task::Column::Id)
            .limit(limit.min(i64::MAX as u64))
            .all(&self.read)
            .await
            .context("Cannot list tasks")
    }

    /// The newest tasks, in any state, at most `limit`.
    pub async fn recent_tasks(&self, limit: u64) -> anyhow::Result<Vec<Task>> {
        task::Entity::find()
            .order_by_desc(task::Column::Id)
            .limit(limit.min(i64::MAX as u64))
            .all(&self.read)
            .await
            .context("Cannot list tasks")
    }

    /// An agent's tasks in any of `states`.
    pub async fn agent_tasks(&self, agent: &str, list: &[TaskState]) -> anyhow::Result<Vec<Task>> {
        task::Entity::find()
            .filter(task::Column::Agent.eq(agent))
            .filter(task::Column::State.is_in(states(list)))
            .order_by_asc(task::Column::Id)
            .all(&self.read)
            .await
            .context("Cannot list the agent's tasks")
    }

    /// Tasks whose message does not show their latest state: all that are not
    /// ended, and ended ones whose final edit did not land.
    pub async fn unsynced_tasks(&self) -> anyhow::Result<Vec<Task>> {
        task::Entity::find()
            .filter(task::Column::SlackSynced.eq(false))
            .order_by_asc(task::Column::Id)
            .all(&self.read)
            .await
            .context("Cannot list tasks to show in Slack")
    }

    // ---- projects ----

    /// Every project, by name.
    pub async fn projects(&self) -> anyhow::Result<Vec<ProjectRow>> {
        project::Entity::find()
            .order_by_asc(project::Column::Name)
            .all(&self.read)
            .await
            .context("Cannot list projects")
    }

    /// The known projects' names, in name order.
    pub async fn project_names(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.projects().await?.into_iter().map(|p| p.name).collect())
    }

    /// Records that a project exists (an agent serves it).
    pub async fn ensure_project(&self, name: &str) -> anyhow::Result<()> {
        let res = insert_project(&self.db, name).await;
        self.rules_changed();
        res
    }

    /// Forgets the cached project rules: call after every write of them
    /// (and after a failed one: it may have committed).
    fn rules_changed(&self) {
        if let Some(rules) = &self.rules {
            rules.forget();
        }
    }

    /// Binds a channel to a project (one project per channel), in one
    /// transaction: the project is created if needed, the channel leaves its
    /// old project and joins the new one, or nothing changes.
    pub async fn bind_project(&self, name: &str, channel: &str) -> anyhow::Result<()> {
        let txn = self
            .db
            .begin()
            .await
            .context("Cannot start binding the project")?;
        insert_project(&txn, name).await?;
        project::Entity::update_many()
            .col_expr(
                project::Column::ChannelId,
                Expr::value(Option::<String>::None),
            )
            .filter(project::Column::ChannelId.eq(channel))
            .exec(&txn)
            .await
            .context("Cannot unbind the channel")?;
        project::Entity::update_many()
            .col_expr(project::Column::ChannelId, Expr::value(channel))
            .filter(project::Column::Name.eq(name))
            .exec(&txn)
            .await
            .context("Cannot bind the project")?;
        let res = txn.commit().await.context("Cannot bind the project");
        self.rules_changed();
        res
    }

    /// The project bound to a channel.
    pub async fn project_for_channel(&self, channel: &str) -> anyhow::Result<Option<String>> {
        Ok(project::Entity::find()
            .filter(project::Column::ChannelId.eq(channel))
            .one(&self.read)
            .await
            .context("Cannot read the channel's project")?
            .map(|p| p.name))
    }

    /// The newest tasks of `requester`, at most `limit`, as one-line summaries.
    pub async fn tasks_of(&self, requester: &str, limit: u64) -> anyhow::Result<Vec<TaskSummary>> {
        summaries()
            .filter(task::Column::Requester.eq(requester))
            .order_by_desc(task::Column::Id)
            .limit(limit.min(i64::MAX as u64))
            .into_model::<TaskSummary>()
            .all(&self.read)
            .await
            .context("Cannot list the person's tasks")
    }

    /// The newest tasks in `state` (any state when None), at most `limit`,
    /// as one-line summaries.
    pub async fn newest_tasks(
        &self,
        state: Option<TaskState>,
        limit: u64,
    ) -> anyhow::Result<Vec<TaskSummary>> {
        let mut q = summaries();
        if let Some(state) = state {
            q = q.filter(task::Column::State.eq(state.as_str()));
        }
        q.order_by_desc(task::Column::Id)
            .limit(limit.min(i64::MAX as u64))
            .into_model::<TaskSummary>()
            .all(&self.read)
            .await
            .context("Cannot list tasks")
    }

    // ---- access ----

    /// A project's access list, oldest entry first.
    pub async fn access_list(&self, project: &str) -> anyhow::Result<Vec<AccessRow>> {
        if let Some(rows) = self.rules.as_ref().and_then(|r| r.access(project)) {
            return Ok(rows);
        }
        let generation = self.rules.as_ref().map(|r| r.generation());
        let rows = project_access::Entity::find()
            .filter(project_access::Column::Project.eq(project))
            .order_by_asc(project_access::Column::Id)
            .all(&self.read)
            .await
            .context("Cannot read the project's access list")?;
        if let (Some(rules), Some(generation)) = (&self.rules, generation) {
            rules.keep_access(generation, project, rows.clone());
        }
        Ok(rows)
    }

    /// What a new task reads of its project before it is written: its
    /// personas (None: all, or no such project), its access list, oldest
    /// entry first, and whether its queue holds tasks an agent may take
    /// (the new task must not overtake them). From memory when cached
    /// (the queue then unread), else in one round trip: on PostgreSQL, two
    /// statements per task fewer than reading each.
    pub async fn project_rules(&self, project: &str) -> anyhow::Result<ProjectRules> {
        if self.rules.is_some() {
            return Ok(ProjectRules {
                personas: self.project_personas(project).await?,
                access: self.access_list(project).await?,
                queue_waiting: None,
            });
        }
        // One row with the personas when the list is empty, else one per
        // entry. The queue's head is read as [`dispatchable_query`] reads
        // it (through the `(state, id)` index, in order, the first match):
        // an `EXISTS` with the state as a parameter was planned as a scan
        // of the whole table on PostgreSQL (3.4 ms a task at 200,000 rows).
        let stmt = self.stmt(
            "SELECT (SELECT personas FROM projects WHERE name = $1) AS personas, \
             (SELECT q.id FROM tasks q WHERE q.state = 'queued' AND q.project = $1 \
              AND q.after_task IS NULL ORDER BY q.id LIMIT 1) AS queue_head, \
             a.id, a.project, a.kind, a.entry_id, a.added_by, a.added_at \
             FROM (SELECT 1 AS one) o LEFT JOIN project_access a ON a.project = $1 \
             ORDER BY a.id",
            vec![project.into()],
        );
        let rows = self
            .read
            .query_all(stmt)
            .await
            .context("Cannot read the project's personas and access list")?;
        let mut rules = ProjectRules::default();
        for row in &rows {
            rules.personas = row.try_get("", "personas")?;
            let head: Option<i64> = row.try_get("", "queue_head")?;
            rules.queue_waiting = Some(head.is_some());
            if row.try_get::<Option<i64>>("", "id")?.is_some() {
                rules.access.push(AccessRow::from_query_result(row, "")?);
            }
        }
        Ok(rules)
    }

    /// Adds an entry to a project's access list; false if it was there already.
    pub async fn allow(
        &self,
        project: &str,
        kind: &str,
        id: &str,
        by: &str,
    ) -> anyhow::Result<bool> {
        let row = project_access::ActiveModel {
            project: Set(project.to_owned()),
            kind: Set(kind.to_owned()),
            entry_id: Set(id.to_owned()),
            added_by: Set(by.to_owned()),
            added_at: Set(now_ms()),
            ..Default::default()
        };
        let res = project_access::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    project_access::Column::Project,
                    project_access::Column::Kind,
                    project_access::Column::EntryId,
                ])
                .do_nothing()
                .to_owned(),
            )
            .do_nothing()
            .exec(&self.db)
            .await;
        self.rules_changed();
        let res = res.context("Cannot add to the access list")?;
        Ok(matches!(res, sea_orm::TryInsertResult::Inserted(_)))
    }

    /// Removes an entry from a project's access list; false if it was not there.
    pub async fn disallow(&self, project: &str, kind: &str, id: &str) -> anyhow::Result<bool> {
        let res = project_access::Entity::delete_many()
            .filter(project_access::Column::Project.eq(project))
            .filter(project_access::Column::Kind.eq(kind))
            .filter(project_access::Column::EntryId.eq(id))
            .exec(&self.db)
            .await;
        self.rules_changed();
        let res = res.context("Cannot remove from the access list")?;
        Ok(res.rows_affected > 0)
    }

    /// The personas a project takes (comma-separated); None: all, or no such project.
    pub async fn project_personas(&self, project: &str) -> anyhow::Result<Option<String>> {
        if let Some(personas) = self.rules.as_ref().and_then(|r| r.personas(project)) {
            return Ok(personas);
        }
        let generation = self.rules.as_ref().map(|r| r.generation());
        let personas = project::Entity::find_by_id(project.to_owned())
            .one(&self.read)
            .await
            .context("Cannot read the project's personas")?
            .and_then(|p| p.personas);
        if let (Some(rules), Some(generation)) = (&self.rules, generation) {
            rules.keep_personas(generation, project, personas.clone());
        }
        Ok(personas)
    }

    /// Sets the personas a project takes (None: all), creating its row if needed.
    pub async fn set_project_personas(
        &self,
        project: &str,
        personas: Option<&str>,
    ) -> anyhow::Result<()> {
        self.ensure_project(project).await?;
        let res = project::Entity::update_many()
            .col_expr(
                project::Column::Personas,
                Expr::value(personas.map(str::to_owned)),
            )
            .filter(project::Column::Name.eq(project))
            .exec(&self.db)
            .await;
        self.rules_changed();
        res.context("Cannot set the project's personas")?;
        Ok(())
    }

    /// A project's approvers, oldest first.
    pub async fn approvers(&self, project: &str) -> anyhow::Result<Vec<ApproverRow>> {
        project_approver::Entity::find()
            .filter(project_approver::Column::Project.eq(project))
            .order_by_asc(project_approver::Column::Id)
            .all(&self.read)
            .await
            .context("Cannot read the project's approvers")
    }

    /// Replaces a project's approvers with `who` (kind, id pairs), in one transaction.
    pub async fn set_approvers(
        &self,
        project: &str,
        who: &[(&str, &str)],
        by: &str,
    ) -> anyhow::Result<()> {
        use sea_orm::TransactionTrait;
        let txn = self.db.begin().await.context("Cannot set the approvers")?;
        project_approver::Entity::delete_many()
            .filter(project_approver::Column::Project.eq(project))
            .exec(&txn)
            .await
            .context("Cannot clear the approvers")?;
        let now = now_ms();
        let mut seen = std::collections::HashSet::new();
        for (kind, id) in who {
            if !seen.insert((*kind, *id)) {
                continue;
            }
            project_approver::ActiveModel {
                project: Set(project.to_owned()),
                kind: Set((*kind).to_owned()),
                entry_id: Set((*id).to_owned()),
                added_by: Set(by.to_owned()),
                added_at: Set(now),
                ..Default::default()
            }
            .insert(&txn)
            .await
            .context("Cannot add an approver")?;
        }
        txn.commit().await.context("Cannot set the approvers")?;
        Ok(())
    }

    /// Sets the projects an agent's key may serve (None: any).
    pub async fn set_agent_projects(
        &self,
        name: &str,
        projects: Option<&str>,
    ) -> anyhow::Result<()> {
        agent::Entity::update_many()
            .col_expr(
                agent::Column::Projects,
                Expr::value(projects.map(str::to_owned)),
            )
            .filter(agent::Column::Name.eq(name))
            .exec(&self.db)
            .await
            .context("Cannot set the agent's projects")?;
        Ok(())
    }

    // ---- agents ----

    /// Every agent, by name.
    pub async fn agents(&self) -> anyhow::Result<Vec<AgentRow>> {
        agent::Entity::find()
            .order_by_asc(agent::Column::Name)
            .all(&self.read)
            .await
            .context("Cannot list agents")
    }

    /// The live (not revoked) agent whose key has this hash.
    pub async fn agent_by_key_hash(&self, hash: &str) -> anyhow::Result<Option<AgentRow>> {
        agent::Entity::find()
            .filter(agent::Column::KeyHash.eq(hash))
            .filter(agent::Column::RevokedAt.is_null())
            .one(&self.read)
            .await
            .context("Cannot look up the agent key")
    }

    /// Adds an agent, or gives a revoked or bootstrap agent a new key.
    /// Fails if a live agent already has the name and `replace` is false.
    pub async fn put_agent(
        &self,
        name: &str,
        key_hash: &str,
        created_by: &str,
        replace: bool,
    ) -> anyhow::Result<bool> {
        let existing = agent::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await
            .context("Cannot read the agent")?;
        match existing {
            Some(a) if a.revoked_at.is_none() && !replace => Ok(false),
            Some(a) => {
                let mut row: agent::ActiveModel = a.into();
                row.key_hash = Set(key_hash.to_owned());
                row.revoked_at = Set(None);
                row.created_at = Set(now_ms());
                row.created_by = Set(Some(created_by.to_owned()));
                row.update(&self.db)
                    .await
                    .context("Cannot update the agent")?;
                Ok(true)
            }
            None => {
                // Another process may add the same name at the same moment
                // (each bot stores BATON_AGENT_KEYS at start): one insert
                // wins, the other then finds the row as if it had been there.
                let inserted = agent::Entity::insert(agent::ActiveModel {
                    name: Set(name.to_owned()),
                    key_hash: Set(key_hash.to_owned()),
                    created_at: Set(now_ms()),
                    created_by: Set(Some(created_by.to_owned())),
                    revoked_at: Set(None),
                    projects: Set(None),
                })
                .on_conflict(
                    OnConflict::column(agent::Column::Name)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&self.db)
                .await
                .context("Cannot add the agent")?;
                if inserted == 1 {
                    Ok(true)
                } else {
                    Box::pin(self.put_agent(name, key_hash, created_by, replace)).await
                }
            }
        }
    }

    /// Revokes an agent's key. False if there was no live agent by that name.
    pub async fn revoke_agent(&self, name: &str) -> anyhow::Result<bool> {
        let res = agent::Entity::update_many()
            .col_expr(agent::Column::RevokedAt, Expr::value(now_ms()))
            .filter(agent::Column::Name.eq(name))
            .filter(agent::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await
            .context("Cannot revoke the agent")?;
        Ok(res.rows_affected == 1)
    }

    // ---- Slack events and audit ----

    /// Records a Slack event id; false if it was seen before (a retry).
    pub async fn first_sighting(&self, event_id: &str) -> anyhow::Result<bool> {
        let row = slack_event::ActiveModel {
            event_id: Set(event_id.to_owned()),
            received_at: Set(now_ms()),
            payload: Set(None),
            handled_at: Set(Some(now_ms())),
        };
        // Through the group writer: one connection writes SQLite, so an
        // event never waits in SQLite's busy handler behind a group.
        let insert = slack_event::Entity::insert(row)
            .on_conflict(
                OnConflict::column(slack_event::Column::EventId)
                    .do_nothing()
                    .to_owned(),
            )
            .build(self.db.get_database_backend());
        let inserted = self
            .write(insert)
            .await
            .context("Cannot record the Slack event")?;
        Ok(inserted == 1)
    }

    /// Records a Slack event with its envelope (JSON) before it is
    /// acknowledged; false if its id was seen before (a retry). It waits as
    /// unhandled until [`Store::event_handled`]: after a crash it is handled
    /// at the next start ([`Store::unhandled_events`]).
    pub async fn record_event(&self, event_id: &str, payload: &str) -> anyhow::Result<bool> {
        let row = slack_event::ActiveModel {
            event_id: Set(event_id.to_owned()),
            received_at: Set(now_ms()),
            payload: Set(Some(payload.to_owned())),
            handled_at: Set(None),
        };
        // Through the group writer: one connection writes SQLite, so an
        // event never waits in SQLite's busy handler behind a group.
        let insert = slack_event::Entity::insert(row)
            .on_conflict(
                OnConflict::column(slack_event::Column::EventId)
                    .do_nothing()
                    .to_owned(),
            )
            .build(self.db.get_database_backend());
        let inserted = self
            .write(insert)
            .await
            .context("Cannot record the Slack event")?;
        Ok(inserted == 1)
    }

    /// Marks a recorded Slack event handled (its payload is dropped).
    pub async fn event_handled(&self, event_id: &str) -> anyhow::Result<()> {
        let update = slack_event::Entity::update_many()
            .col_expr(slack_event::Column::HandledAt, Expr::value(now_ms()))
            .col_expr(
                slack_event::Column::Payload,
                Expr::value(Option::<String>::None),
            )
            .filter(slack_event::Column::EventId.eq(event_id))
            .build(self.db.get_database_backend());
        self.write(update)
            .await
            .context("Cannot record that the Slack event was handled")?;
        Ok(())
    }

    /// Slack events recorded and never handled (the process stopped between
    /// their acknowledgement and their end): id and envelope, oldest first.
    pub async fn unhandled_events(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(slack_event::Entity::find()
            .filter(slack_event::Column::HandledAt.is_null())
            .filter(slack_event::Column::Payload.is_not_null())
            .order_by_asc(slack_event::Column::ReceivedAt)
            .all(&self.read)
            .await
            .context("Cannot read the unhandled Slack events")?
            .into_iter()
            .filter_map(|e| Some((e.event_id, e.payload?)))
            .collect())
    }

    /// Forgets Slack event ids received before `before_ms` (Slack retries an
    /// event for minutes, never days). Returns how many were dropped.
    pub async fn prune_events(&self, before_ms: i64) -> anyhow::Result<u64> {
        let res = slack_event::Entity::delete_many()
            .filter(slack_event::Column::ReceivedAt.lt(before_ms))
            .exec(&self.db)
            .await
            .context("Cannot prune Slack event ids")?;
        Ok(res.rows_affected)
    }

    /// Writes one admin action to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        audit::ActiveModel {
            at: Set(now_ms()),
            actor: Set(actor.to_owned()),
            action: Set(action.to_owned()),
            target: Set(target.to_owned()),
            detail: Set(detail.to_owned()),
            ..Default::default()
        }
        .insert(&self.db)
        .await
        .context("Cannot write the audit log")?;
        Ok(())
    }

    /// The newest audit entries.
    pub async fn audit_log(&self, limit: u64) -> anyhow::Result<Vec<AuditRow>> {
        audit::Entity::find()
            .order_by_desc(audit::Column::Id)
            .limit(limit.min(i64::MAX as u64))
            .all(&self.read)
            .await
            .context("Cannot read the audit log")
    }
}

/// A new task's values, comma-separated, in the order of
/// [`new_task_columns`] (the columns it leaves out take their defaults:
/// NULL, no steps, no output, sequence 0, nothing posted).
fn new_task_values(q: &mut Sql, new: NewTask) {
    let now = now_ms();
    let state = match new.agent {
        Some(_) => TaskState::Dispatched,
        None => TaskState::Queued,
    };
    let dispatched_at = new.agent.is_some().then_some(now);
    q.arg(new.persona)
        .push(", ")
        .arg(new.project)
        .push(", ")
        .arg(new.prompt)
        .push(", ")
        .arg(new.requester)
        .push(", ")
        .arg(new.team_id)
        .push(", ")
        .arg(new.channel_id)
        .push(", ")
        .arg(new.thread_ts)
        .push(", ")
        .state(state)
        .push(", ")
        .arg(new.agent)
        .push(", ")
        .arg(new.parent_id)
        .push(", ")
        .arg(new.session_id)
        .push(", ")
        .arg(now)
        .push(", ")
        .arg(now)
        .push(", ")
        .arg(new.queued_at)
        .push(", ")
        .arg(dispatched_at)
        .push(", ")
        .arg(new.after_task)
        .push(", ")
        .arg(new.session_agent)
        .push(", ")
        .arg(new.editor);
}

/// A guarded `UPDATE` of the store, run by its writer.
trait Write {
    /// Runs it; the number of rows it changed.
    async fn write(self, store: &Store) -> Result<u64, DbErr>;
    /// Runs it; the rows it changed, as they are now.
    async fn write_returning(self, store: &Store) -> Result<Vec<Task>, DbErr>;
}

impl Write for sea_orm::UpdateMany<task::Entity> {
    async fn write(self, store: &Store) -> Result<u64, DbErr> {
        store
            .write(self.build(store.db.get_database_backend()))
            .await
    }

    async fn write_returning(self, store: &Store) -> Result<Vec<Task>, DbErr> {
        use sea_orm::Iterable;
        use sea_orm::sea_query::Query;
        let mut update = self.into_query();
        // Every column in the model's order: the SQLite writer reads them by position.
        update.returning(Query::returning().columns(task::Column::iter()));
        store
            .write_tasks(store.db.get_database_backend().build(&update))
            .await
    }
}

/// A query for [`TaskSummary`] rows: only the columns a listing shows.
fn summaries() -> sea_orm::Select<task::Entity> {
    task::Entity::find()
        .select_only()
        .columns([
            task::Column::Id,
            task::Column::State,
            task::Column::Persona,
            task::Column::Project,
            task::Column::Agent,
            task::Column::ChannelId,
            task::Column::MessageTs,
            task::Column::CreatedAt,
        ])
        .column_as(
            Expr::cust(format!("substr(prompt, 1, {SUMMARY_PROMPT_CHARS})")),
            "prompt",
        )
}

/// Records project `name` unless it exists, on `db` (a connection or a transaction).
async fn insert_project(db: &impl ConnectionTrait, name: &str) -> anyhow::Result<()> {
    let row = project::ActiveModel {
        name: Set(name.to_owned()),
        channel_id: Set(None),
        created_at: Set(now_ms()),
        personas: Set(None),
    };
    project::Entity::insert(row)
        .on_conflict(
            OnConflict::column(project::Column::Name)
                .do_nothing()
                .to_owned(),
        )
        .do_nothing()
        .exec(db)
        .await
        .context("Cannot record the project")?;
    Ok(())
}

/// The query of [`Store::dispatchable`].
fn dispatchable_query(project: &str, after_id: i64, limit: u64) -> sea_orm::Select<task::Entity> {
    task::Entity::find()
        .filter(task::Column::State.eq(TaskState::Queued.as_str()))
        .filter(task::Column::Project.eq(project))
        .filter(task::Column::Id.gt(after_id))
        .filter(task::Column::AfterTask.is_null())
        .order_by_asc(task::Column::Id)
        .limit(limit.min(i64::MAX as u64))
}

/// The query of [`Store::waiting_follow_ups`].
fn waiting_query() -> sea_orm::Select<task::Entity> {
    task::Entity::find()
        // Word for word the partial index's condition, so that it is used.
        .filter(Expr::cust(baton_migrations::FOLLOW_UPS_WAITING))
        .order_by_asc(task::Column::Id)
}

/// The guarded `UPDATE` that hands queued tasks to `agent`.
fn claim_query(agent: &str) -> sea_orm::UpdateMany<task::Entity> {
    let now = now_ms();
    task::Entity::update_many()
        .col_expr(
            task::Column::State,
            Expr::value(TaskState::Dispatched.as_str()),
        )
        .col_expr(task::Column::Agent, Expr::value(agent))
        .col_expr(task::Column::DispatchedAt, Expr::value(now))
        .col_expr(task::Column::UpdatedAt, Expr::value(now))
        // Sequence numbers are per task and agent: a new holder starts over.
        .col_expr(task::Column::LastSeq, Expr::value(0i64))
        .col_expr(
            task::Column::WaitReason,
            Expr::value(Option::<String>::None),
        )
        .filter(task::Column::State.eq(TaskState::Queued.as_str()))
        // Not a follow-up still waiting for its turn, nor one whose session
        // another agent holds.
        .filter(task::Column::AfterTask.is_null())
        .filter(
            sea_orm::Condition::any()
                .add(task::Column::SessionAgent.is_null())
                .add(task::Column::SessionAgent.eq(agent)),
        )
}

/// On PostgreSQL (`shared`), a claim's condition that skips the tasks
/// another process is claiming at this moment (`FOR UPDATE SKIP LOCKED`):
/// exactly one process dispatches a task, and none waits for another's
/// claim. None on SQLite (one writer: nothing to skip).
fn skip_locked(shared: bool, ids: &[i64]) -> Option<sea_orm::sea_query::SimpleExpr> {
    use sea_orm::sea_query::{LockBehavior, LockType, Query};
    if !shared {
        return None;
    }
    Some(
        Expr::col(task::Column::Id).in_subquery(
            Query::select()
                .column(task::Column::Id)
                .from(task::Entity)
                .and_where(task::Column::Id.is_in(ids.iter().copied()))
                .and_where(task::Column::State.eq(TaskState::Queued.as_str()))
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .to_owned(),
        ),
    )
}

/// The guarded `UPDATE` that ends a task (see [`Store::finish`]), with the
/// progress its message shows when given. It ends with its `WHERE` clause:
/// a caller may add conditions (` AND …`) and a `RETURNING` clause.
fn finish_query(
    id: i64,
    agent: Option<&str>,
    seq: Option<i64>,
    from: &[TaskState],
    ending: &Ending,
    progress: Option<Progress<'_>>,
) -> Sql {
    let mut q = Sql::new("UPDATE tasks SET state = ");
    q.state(ending.state())
        .push(", finished_at = ")
        .arg(now_ms())
        .push(", updated_at = $1, slack_synced = FALSE, cancel_requested = FALSE");
    if let Some(seq) = seq {
        q.push(", last_seq = ").arg(seq);
    }
    if let Some(p) = progress {
        q.push(", steps = ")
            .arg(p.steps_json)
            .push(", step_count = ")
            .arg(p.step_count)
            .push(", output_tail = ")
            .arg(p.output_tail);
    }
    match ending {
        Ending::Completed {
            text,
            session_id,
            meta,
        } => {
            q.push(", result = ")
                .arg(text.as_str())
                .push(", result_meta = ")
                .arg(serde_json::to_string(meta).unwrap_or_default())
                .push(", session_id = ")
                .arg(session_id.clone());
        }
        Ending::Failed {
            error,
            cause,
            session_id,
        } => {
            q.push(", error = ")
                .arg(error.as_str())
                .push(", failure_cause = ")
                .arg(cause.as_str());
            if let Some(s) = session_id {
                q.push(", session_id = ").arg(s.as_str());
            }
        }
        Ending::Cancelled { note } | Ending::Expired { note } => {
            q.push(", error = ").arg(note.as_str());
        }
    }
    q.push(" WHERE id = ")
        .arg(id)
        .push(" AND state IN (")
        .states(from)
        .push(")");
    if let Some(agent) = agent {
        q.push(" AND agent = ").arg(agent);
    }
    if let Some(seq) = seq {
        q.push(" AND last_seq < ").arg(seq);
    }
    q
}

/// The PostgreSQL advisory lock held while migrating: processes starting at
/// once migrate one after the other (the later ones find nothing to do).
/// Any fixed number; this one is "baton" in ASCII.
const MIGRATION_LOCK: i64 = 0x0062_6174_6f6e;

/// Runs the migrations on PostgreSQL under [`MIGRATION_LOCK`]. `db` is a pool
/// of one connection: the lock belongs to the session that took it, so the
/// lock, the migrations and the unlock all run on that one connection.
async fn migrate_postgres(db: &DatabaseConnection) -> anyhow::Result<()> {
    let backend = db.get_database_backend();
    db.execute(Statement::from_sql_and_values(
        backend,
        "SELECT pg_advisory_lock($1)",
        [MIGRATION_LOCK.into()],
    ))
    .await
    .context("Cannot take the migration lock")?;
    let migrated = Migrator::up(db, None).await;
    // Closing the connection would release the lock too; unlocking says so.
    let unlocked = db
        .execute(Statement::from_sql_and_values(
            backend,
            "SELECT pg_advisory_unlock($1)",
            [MIGRATION_LOCK.into()],
        ))
        .await;
    migrated.context("Cannot run the database migrations")?;
    unlocked.context("Cannot release the migration lock")?;
    Ok(())
}

/// A SQLite pool's settings: WAL, `synchronous = NORMAL` (a commit survives
/// the process dying; only an OS crash can lose the last ones), a busy
/// timeout, and no test query before each use (a connection to a local file
/// does not go stale; the test costs a round trip to its worker thread).
fn pool_options(url: &str, connections: u32) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .max_connections(connections)
        .min_connections(1)
        .test_before_acquire(false)
        .map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .pragma(
                    "wal_autocheckpoint",
                    SQLITE_AUTOCHECKPOINT_PAGES.to_string(),
                )
        });
    opts
}

/// A pool of `connections` to PostgreSQL at `url`.
///
/// sqlx tests a connection with a round trip to the server each time it is
/// taken from the pool and again each time it is given back; at nine
/// statements a lifecycle that was three round trips a statement. Here a
/// connection is tested when taken only if it sat idle `ping_after_idle` or
/// longer, the time in which a server restart or a proxy's idle timeout may
/// have closed it unseen. The test when given back stays (sqlx always makes
/// it): a connection that failed is closed then. So after a restart each
/// pooled connection fails at most one statement (one in use at the moment
/// fails anyway), and the pool reconnects; with the test on every take the
/// bound was the same, reached only by the connections in use.
async fn postgres_pool(
    url: &str,
    connections: u32,
    ping_after_idle: Duration,
) -> anyhow::Result<DatabaseConnection> {
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(1)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= ping_after_idle {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options.disable_statement_logging())
        .await?;
    Ok(sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(
        pool,
    ))
}

/// The URL without a password, for error messages.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_testkit::db::TestDb;

    /// A store on a database of its own: SQLite, or PostgreSQL when the
    /// tests run with `BATON_TEST_DATABASE_URL` (see testkit's `db`).
    async fn store() -> (TestDb, Store) {
        let db = TestDb::new().await;
        let s = Store::connect(&db.url).await.expect("connect");
        (db, s)
    }

    async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        Store::connect(&url).await.expect("connect")
    }

    #[tokio::test]
    async fn event_ids_dedupe_until_pruned() {
        let (_db, s) = store().await;
        assert!(s.first_sighting("Ev1").await.expect("insert"));
        assert!(!s.first_sighting("Ev1").await.expect("again"), "a retry");
        assert_eq!(s.prune_events(now_ms() - 60_000).await.expect("prune"), 0);
        assert_eq!(s.prune_events(now_ms() + 1).await.expect("prune"), 1);
        assert!(s.first_sighting("Ev1").await.expect("forgotten"));
    }

    #[tokio::test]
    async fn guarded_updates_change_only_the_expected_state() {
        let (_db, s) = store().await;
        let t = s.insert_task(new_task()).await.expect("insert");
        assert!(
            !s.mark_running(t.id, "a", 1).await.expect("run"),
            "not dispatched yet"
        );
        assert!(s.claim(t.id, "a").await.expect("claim"));
        assert!(!s.claim(t.id, "b").await.expect("claim"), "claimed once");
        assert!(
            !s.requeue(t.id, "b", "x").await.expect("requeue"),
            "not b's"
        );
        assert!(s.requeue(t.id, "a", "x").await.expect("requeue"));
        assert!(s.claim(t.id, "b").await.expect("claim again"));
        assert!(s.mark_running(t.id, "b", 1).await.expect("run"));
        assert!(
            !s.requeue(t.id, "b", "x").await.expect("requeue"),
            "running stays"
        );
    }

    #[tokio::test]
    async fn a_task_with_a_cancel_asked_never_goes_back_to_its_queue() {
        let (_db, s) = store().await;
        let t = s.insert_task(new_task()).await.expect("insert");
        assert!(s.claim(t.id, "a").await.expect("claim"));
        assert!(s.set_cancel_requested(t.id).await.expect("cancel"));
        assert!(!s.requeue(t.id, "a", "x").await.expect("requeue"));
        assert_eq!(
            s.requeue_or_cancel(t.id, "b", "x").await.expect("other"),
            Requeued::Unchanged
        );
        assert_eq!(
            s.requeue_or_cancel(t.id, "a", "x")
                .await
                .expect("take back"),
            Requeued::Cancelled
        );
        let ended = s.task(t.id).await.expect("read").expect("row");
        assert_eq!(ended.state, TaskState::Cancelled.as_str());
        assert!(
            s.claim(t.id, "b").await.is_ok_and(|c| !c),
            "never claimed again"
        );

        let t = s.insert_task(new_task()).await.expect("insert");
        assert!(s.claim(t.id, "a").await.expect("claim"));
        assert_eq!(
            s.requeue_or_cancel(t.id, "a", "x")
                .await
                .expect("take back"),
            Requeued::Queued
        );
    }

    /// Issue 13, finding 8: `project bind` is one transaction. Here the
    /// last statement fails (a trigger refuses it): the channel keeps its
    /// old project and the new one is not created.
    #[tokio::test]
    async fn a_bind_that_fails_half_way_changes_nothing() {
        // A SQLite trigger makes the second statement fail: SQLite only.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sqlite_store(&dir).await;
        s.bind_project("web", "C1").await.expect("bind");
        s.connection()
            .execute_unprepared(
                "CREATE TRIGGER refuse_bad BEFORE UPDATE OF channel_id ON projects \
                 WHEN NEW.name = 'bad' AND NEW.channel_id IS NOT NULL \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .await
            .expect("trigger");
        assert!(s.bind_project("bad", "C1").await.is_err());
        assert_eq!(
            s.project_for_channel("C1").await.expect("read").as_deref(),
            Some("web")
        );
        assert_eq!(s.project_names().await.expect("names"), ["web"]);
    }

    fn new_task() -> NewTask {
        NewTask::sample()
    }

    #[tokio::test]
    async fn readers_see_each_committed_write_and_the_log_checkpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sqlite_store(&dir).await;
        assert!(s.sqlite_file, "a file gets a reader pool of its own");
        for _ in 0..50 {
            let t = s.insert_task(new_task()).await.expect("insert");
            assert!(s.claim(t.id, "a").await.expect("claim"));
            // Read at once through the reader pool: the write is there.
            let seen = s.task(t.id).await.expect("read").expect("row");
            assert_eq!(seen.state, TaskState::Dispatched.as_str());
        }
        s.checkpoint().await.expect("checkpoint");
        let wal = dir.path().join("t.db-wal");
        let before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(before > 0, "writes went to the log");
        s.insert_task(new_task()).await.expect("insert");
        assert_eq!(s.count_in(TaskState::Queued).await.expect("count"), 1);

        let memory = Store::connect("sqlite::memory:").await.expect("memory");
        assert!(!memory.sqlite_file, "in memory: one pool");
        memory.checkpoint().await.expect("a no-op");
        let t = memory.insert_task(new_task()).await.expect("insert");
        assert_eq!(
            memory.task(t.id).await.expect("read").expect("row").id,
            t.id
        );
    }

    #[tokio::test]
    async fn a_final_event_ends_the_task_with_its_progress_once() {
        let (_db, s) = store().await;
        let t = s.insert_task(new_task()).await.expect("insert");
        assert!(s.claim(t.id, "a").await.expect("claim"));
        assert!(s.mark_running(t.id, "a", 1).await.expect("run"));
        let ending = Ending::Cancelled {
            note: "Cancelled.".into(),
        };
        let progress = Progress {
            steps_json: r#"["one","two"]"#,
            step_count: 2,
            output_tail: "out",
        };
        let from = [TaskState::Dispatched, TaskState::Running];
        let other = s
            .finish_with_progress(t.id, "b", 5, &from, &ending, progress)
            .await
            .expect("finish");
        assert!(other.is_none(), "another agent's event changes nothing");
        let ended = s
            .finish_with_progress(t.id, "a", 5, &from, &ending, progress)
            .await
            .expect("finish")
            .expect("ended");
        assert_eq!(ended.state, TaskState::Cancelled.as_str());
        assert_eq!((ended.step_count, ended.output_tail.as_str()), (2, "out"));
        assert_eq!(ended.last_seq, 5);
        assert_eq!(s.task(t.id).await.expect("read"), Some(ended));
        let again = s
            .finish_with_progress(t.id, "a", 6, &from, &ending, progress)
            .await
            .expect("finish");
        assert!(again.is_none(), "ended once");
    }

    #[tokio::test]
    async fn a_batch_claim_takes_only_what_is_still_queued() {
        let (_db, s) = store().await;
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(s.insert_task(new_task()).await.expect("insert").id);
        }
        assert!(
            s.claim(ids[1], "b").await.expect("claim"),
            "one went elsewhere"
        );
        let mut got = s.claim_many(&ids, "a").await.expect("claim many");
        got.sort_unstable();
        assert_eq!(got, vec![ids[0], ids[2], ids[3]]);
        for id in &got {
            let t = s.task(*id).await.expect("read").expect("row");
            assert_eq!(t.agent.as_deref(), Some("a"));
            assert_eq!((t.state.as_str(), t.last_seq), ("dispatched", 0));
        }
        assert!(s.claim_many(&ids, "c").await.expect("again").is_empty());
    }

    #[tokio::test]
    async fn the_queue_hint_is_false_only_when_no_task_can_be_queued() {
        let (_db, s) = store().await;
        assert!(s.may_have_queue(), "unknown at start");
        assert!(s.projects_with_queue().await.expect("read").is_empty());
        assert!(!s.may_have_queue());

        let dispatched = s
            .insert_task(NewTask {
                agent: Some("a".into()),
                ..new_task()
            })
            .await
            .expect("insert");
        assert!(!s.may_have_queue(), "written dispatched: no queue");
        let queued = s.insert_task(new_task()).await.expect("insert");
        assert!(s.may_have_queue());
        assert_eq!(s.projects_with_queue().await.expect("read"), ["web"]);
        assert!(s.may_have_queue(), "still queued");
        assert!(s.claim(queued.id, "a").await.expect("claim"));
        assert!(s.projects_with_queue().await.expect("read").is_empty());
        assert!(!s.may_have_queue());
        assert!(
            s.requeue(dispatched.id, "a", "busy")
                .await
                .expect("requeue")
        );
        assert!(s.may_have_queue(), "put back in its queue");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn processes_starting_at_once_on_postgres_migrate_once() {
        let test = "processes_starting_at_once_on_postgres_migrate_once";
        let Some(server) = baton_testkit::db::postgres_or_skip(test) else {
            return;
        };
        let db = TestDb::postgres(&server).await;
        let connect = || {
            let url = db.url.clone();
            tokio::spawn(async move { Store::connect(&url).await })
        };
        let starts = [connect(), connect(), connect()];
        let mut stores = Vec::new();
        for start in starts {
            stores.push(start.await.expect("joined").expect("every start succeeds"));
        }
        let applied = stores[0]
            .connection()
            .query_all(Statement::from_string(
                stores[0].connection().get_database_backend(),
                "SELECT version FROM seaql_migrations ORDER BY version",
            ))
            .await
            .expect("read the migrations");
        assert_eq!(
            applied.len(),
            Migrator::migrations().len(),
            "each migration recorded once"
        );
        for s in &stores {
            let t = s
                .insert_task(new_task())
                .await
                .expect("the schema is there");
            assert!(s.task(t.id).await.expect("read").is_some());
        }
    }

    #[tokio::test]
    async fn projects_agents_and_the_audit_log_keep_what_was_written() {
        let (_db, s) = store().await;
        s.ensure_project("web").await.expect("project");
        s.ensure_project("web")
            .await
            .expect("again: nothing changes");
        s.bind_project("web", "C1").await.expect("bind");
        s.bind_project("api", "C1")
            .await
            .expect("rebind the channel");
        assert_eq!(s.project_names().await.expect("names"), ["api", "web"]);
        assert_eq!(
            s.project_for_channel("C1").await.expect("read").as_deref(),
            Some("api")
        );
        let web = s.projects().await.expect("projects");
        assert_eq!(web[1].channel_id, None, "one project per channel");

        assert!(s.put_agent("a", "h1", "U1", false).await.expect("add"));
        assert!(!s.put_agent("a", "h2", "U1", false).await.expect("taken"));
        assert!(s.put_agent("a", "h2", "U1", true).await.expect("replace"));
        assert!(s.agent_by_key_hash("h1").await.expect("read").is_none());
        assert_eq!(
            s.agent_by_key_hash("h2")
                .await
                .expect("read")
                .map(|a| a.name),
            Some("a".to_owned())
        );
        assert!(s.revoke_agent("a").await.expect("revoke"));
        assert!(!s.revoke_agent("a").await.expect("once"));
        assert!(s.agent_by_key_hash("h2").await.expect("read").is_none());
        assert!(
            s.put_agent("a", "h3", "U1", false)
                .await
                .expect("a new key")
        );
        assert_eq!(s.agents().await.expect("agents")[0].revoked_at, None);

        for n in 0..3 {
            s.audit("U1", "agent add", &format!("a{n}"), "")
                .await
                .expect("audit");
        }
        let log = s.audit_log(2).await.expect("log");
        let targets: Vec<&str> = log.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["a2", "a1"], "newest first");
    }

    #[tokio::test]
    async fn retries_threads_and_the_slack_flags_of_a_task() {
        let (_db, s) = store().await;
        let t = s.insert_task(new_task()).await.expect("insert");
        s.set_message_ts(t.id, "1.5").await.expect("ts");
        assert_eq!(
            s.task_by_message("C1", "1.5")
                .await
                .expect("read")
                .map(|t| t.id),
            Some(t.id)
        );
        let reply = s
            .insert_task(NewTask {
                thread_ts: Some("1.5".into()),
                parent_id: Some(t.id),
                ..new_task()
            })
            .await
            .expect("a reply");
        let thread: Vec<i64> = s
            .thread_tasks("C1", "1.5")
            .await
            .expect("thread")
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(thread, [t.id, reply.id]);
        assert_eq!(s.queue_len("web").await.expect("len"), 2);
        assert_eq!(s.queued("web", 1).await.expect("queue")[0].id, t.id);
        assert_eq!(s.queued_before(now_ms() + 1).await.expect("old").len(), 2);
        s.set_wait_reason(t.id, "no agent").await.expect("reason");

        assert!(!s.claim_retry(t.id).await.expect("not ended"));
        assert!(s.claim(t.id, "a").await.expect("claim"));
        assert!(s.set_cancel_requested(t.id).await.expect("cancel"));
        assert!(!s.set_cancel_requested(t.id).await.expect("asked once"));
        let failed = Ending::Failed {
            error: "boom".into(),
            cause: "executor".into(),
            session_id: None,
        };
        let from = [TaskState::Dispatched, TaskState::Running];
        assert!(
            s.finish(t.id, Some("a"), None, &from, &failed)
                .await
                .expect("end")
        );
        let ended = s.task(t.id).await.expect("read").expect("row");
        assert!(!ended.cancel_requested && !ended.slack_synced);
        assert_eq!(ended.error.as_deref(), Some("boom"));
        assert!(
            s.unsynced_tasks()
                .await
                .expect("unsynced")
                .iter()
                .any(|u| u.id == t.id)
        );
        s.mark_slack_synced(t.id).await.expect("synced");
        assert!(
            !s.unsynced_tasks()
                .await
                .expect("unsynced")
                .iter()
                .any(|u| u.id == t.id)
        );
        s.set_result_parts_posted(t.id, 3).await.expect("parts");
        s.set_result_parts_posted(t.id, 2)
            .await
            .expect("never lower");
        assert_eq!(
            s.task(t.id)
                .await
                .expect("read")
                .expect("row")
                .result_parts_posted,
            3
        );

        assert!(s.claim_retry(t.id).await.expect("retry"));
        assert_eq!(
            s.task(t.id).await.expect("read").expect("row").retry(),
            Retry::Claimed
        );
        assert!(!s.claim_retry(t.id).await.expect("claimed once"));
        s.release_retry(t.id).await.expect("release");
        assert!(s.claim_retry(t.id).await.expect("free again"));
        assert_eq!(s.release_stale_retry_claims().await.expect("stale"), 1);
        assert!(s.claim_retry(t.id).await.expect("after a crash"));
        s.set_retried_as(t.id, reply.id).await.expect("retried");
        assert_eq!(
            s.task(t.id).await.expect("read").expect("row").retry(),
            Retry::As(baton_shared::TaskId(reply.id))
        );
        assert!(!s.claim_retry(t.id).await.expect("retried once"));

        let ids = |list: Vec<Task>| list.iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.recent_tasks(5).await.expect("recent")),
            [reply.id, t.id]
        );
        assert_eq!(
            ids(s.tasks_in(&[TaskState::Failed], 5).await.expect("failed")),
            [t.id]
        );
        assert_eq!(
            ids(s.agent_tasks("a", &[TaskState::Failed]).await.expect("a's")),
            [t.id]
        );
        assert_eq!(s.count_in(TaskState::Queued).await.expect("count"), 1);
    }

    /// A queued task is written with the process that edits its message
    /// (no claim after it, which another process's pass could precede), and
    /// that process keeps it; another may not take it while its lease runs.
    #[tokio::test]
    async fn a_queued_task_is_written_with_its_editor() {
        let (_db, s) = store().await;
        let now = now_ms();
        s.renew_instance("me", now, now, 60_000)
            .await
            .expect("lease");
        let queued = s
            .insert_queued_task(
                NewTask {
                    editor: Some("me".into()),
                    ..new_task()
                },
                10,
            )
            .await
            .expect("insert")
            .expect("room");
        assert_eq!(
            s.task_editor(queued.id).await.expect("read").as_deref(),
            Some("me")
        );
        let claimed = s.claim_editor(queued.id, "me", now).await.expect("claim");
        assert_eq!(claimed.map(|t| t.id), Some(queued.id));
        assert!(
            s.claim_editor(queued.id, "other", now)
                .await
                .expect("claim")
                .is_none()
        );
    }

    /// A follow-up waiting for its turn is never claimed nor expired; once
    /// released it joins the queue pinned to its session's agent, which alone
    /// may claim it.
    #[tokio::test]
    async fn a_waiting_follow_up_is_claimed_only_once_released_and_only_by_its_agent() {
        let (_db, s) = store().await;
        let first = s.insert_task(new_task()).await.expect("insert");
        let follow_up = s
            .insert_queued_task(
                NewTask {
                    after_task: Some(first.id),
                    session_id: Some("sess-0".into()),
                    session_agent: Some("a".into()),
                    ..new_task()
                },
                10,
            )
            .await
            .expect("insert")
            .expect("room");
        let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert!(s.may_have_waiting());
        assert_eq!(
            ids(s.waiting_follow_ups().await.expect("read")),
            [follow_up.id]
        );
        assert!(
            !s.claim(follow_up.id, "a").await.expect("claim"),
            "it waits"
        );
        assert_eq!(
            ids(s.dispatchable("web", 0, 10).await.expect("read")),
            [first.id]
        );
        assert!(
            ids(s.queued_before(now_ms() + 1).await.expect("read")) == [first.id],
            "its time to live has not started"
        );
        assert_eq!(
            s.ended_among(&[first.id]).await.expect("read"),
            Vec::<i64>::new()
        );

        assert!(
            !s.release_follow_up(follow_up.id, first.id + 7, None, None, now_ms())
                .await
                .expect("release"),
            "not what it waits for"
        );
        assert!(
            s.release_follow_up(
                follow_up.id,
                first.id,
                Some("sess-1".into()),
                Some("a".into()),
                now_ms()
            )
            .await
            .expect("release")
        );
        assert!(
            !s.release_follow_up(follow_up.id, first.id, None, None, now_ms())
                .await
                .expect("again"),
            "released once"
        );
        assert!(s.waiting_follow_ups().await.expect("read").is_empty());
        assert!(!s.may_have_waiting());
        let released = s.task(follow_up.id).await.expect("read").expect("row");
        assert_eq!(
            (released.session_id.as_deref(), released.after_task),
            (Some("sess-1"), None)
        );
        assert_eq!(
            ids(s.dispatchable("web", 0, 10).await.expect("read")),
            [first.id, follow_up.id]
        );
        assert_eq!(
            ids(s.dispatchable("web", first.id, 10).await.expect("read")),
            [follow_up.id]
        );
        assert_eq!(
            ids(s.queued_before(now_ms() + 1).await.expect("read")),
            [first.id, follow_up.id],
            "released, it may expire like any queued task"
        );
        assert!(
            !s.claim(follow_up.id, "b").await.expect("claim"),
            "not b's session"
        );
        assert!(s.claim(follow_up.id, "a").await.expect("claim"));
    }

    /// The waiting follow-ups are read through their partial index, and the
    /// dispatcher's read of a queue through the queue's index, however many
    /// ended tasks the table holds.
    #[tokio::test]
    async fn the_follow_up_queries_use_their_indexes_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sqlite_store(&dir).await;
        let plan = |sql: String| {
            let s = s.clone();
            async move {
                s.connection()
                    .query_all(Statement::from_string(
                        sea_orm::DbBackend::Sqlite,
                        format!("EXPLAIN QUERY PLAN {sql}"),
                    ))
                    .await
                    .expect("plan")
                    .iter()
                    .map(|r| r.try_get::<String>("", "detail").expect("detail"))
                    .collect::<Vec<_>>()
            }
        };
        let waiting = plan(
            waiting_query()
                .build(sea_orm::DbBackend::Sqlite)
                .to_string(),
        )
        .await;
        assert!(
            waiting
                .iter()
                .any(|d| d.contains("idx_tasks_follow_ups_waiting")),
            "{waiting:?}"
        );
        let queue = plan(
            dispatchable_query("web", 7, 64)
                .build(sea_orm::DbBackend::Sqlite)
                .to_string(),
        )
        .await;
        assert!(
            queue
                .iter()
                .any(|d| d.contains("idx_tasks_state_project_id")),
            "{queue:?}"
        );
    }

    /// Many inserts at once into a queue at its bound never take it past
    /// the bound (on PostgreSQL, under the project's advisory lock; on
    /// SQLite, through its single writer), with or without files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_inserts_at_the_bound_never_exceed_it() {
        const BOUND: u64 = 5;
        let (_db, s) = store().await;
        s.ensure_project("web").await.expect("project");
        let file = TaskFile {
            task_id: 0,
            file_id: "F1".into(),
            position: 0,
            name: "a.txt".into(),
            size: 1,
            url: "https://files.slack.com/a.txt".into(),
        };
        let inserts = (0..40).map(|i| {
            let s = s.clone();
            let files = if i % 2 == 0 {
                vec![file.clone()]
            } else {
                Vec::new()
            };
            tokio::spawn(async move {
                s.insert_queued_task_with_files(new_task(), BOUND, &files, None)
                    .await
                    .expect("insert")
            })
        });
        let written = futures::future::join_all(inserts)
            .await
            .into_iter()
            .map(|r| r.expect("joined"))
            .filter(Option::is_some)
            .count();
        assert_eq!(written as u64, BOUND);
        assert_eq!(s.queue_len("web").await.expect("count"), BOUND);
    }

    /// On PostgreSQL a queued insert notifies the other processes in its
    /// own statement: the payload is heard once the task is written, and an
    /// insert the full queue refused sends nothing.
    #[tokio::test]
    async fn a_queued_insert_notifies_only_when_it_queued_the_task() {
        if baton_testkit::db::postgres_or_skip(
            "a_queued_insert_notifies_only_when_it_queued_the_task",
        )
        .is_none()
        {
            return;
        }
        let (db, s) = store().await;
        s.ensure_project("web").await.expect("project");
        let mut listener = sea_orm::sqlx::postgres::PgListener::connect(&db.url)
            .await
            .expect("listener");
        listener.listen("test_channel").await.expect("listen");
        let queue = |payload: &'static str, project: &'static str| {
            let s = s.clone();
            async move {
                let new = NewTask {
                    project: project.into(),
                    ..new_task()
                };
                s.insert_queued_task_with_files(new, 1, &[], Some(("test_channel", payload)))
                    .await
                    .expect("insert")
            }
        };
        let first = queue("first", "web").await.expect("queued");
        let heard = listener.recv().await.expect("notification");
        assert_eq!(heard.payload(), "first");
        let committed = s.task(first.id).await.expect("read").expect("written");
        assert_eq!(committed.state, "queued", "heard once the task was written");

        assert!(queue("refused", "web").await.is_none(), "the queue is full");
        s.ensure_project("api").await.expect("project");
        queue("second", "api").await.expect("queued");
        // Notifications arrive in commit order: nothing came between.
        let heard = listener.recv().await.expect("notification");
        assert_eq!(heard.payload(), "second");
    }

    /// `baton_queue_take` holds the queue's advisory lock of
    /// [`QUEUE_LOCK_CLASS`] until its statement's transaction ends.
    #[tokio::test]
    async fn the_queue_function_holds_the_queue_lock_until_commit() {
        if baton_testkit::db::postgres_or_skip(
            "the_queue_function_holds_the_queue_lock_until_commit",
        )
        .is_none()
        {
            return;
        }
        let (db, s) = store().await;
        let other = Database::connect(db.url.as_str()).await.expect("connect");
        let txn = other.begin().await.expect("begin");
        let room = txn
            .query_one(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT baton_queue_take('web', 1, NULL, NULL) AS room",
            ))
            .await
            .expect("take")
            .expect("row")
            .try_get::<bool>("", "room")
            .expect("room");
        assert!(room, "an empty queue has room");
        let held = |conn: DatabaseConnection| async move {
            conn.query_one(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_locks \
                 WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objsubid = 2",
                [i64::from(QUEUE_LOCK_CLASS).into()],
            ))
            .await
            .expect("locks")
            .expect("row")
            .try_get::<i64>("", "n")
            .expect("count")
        };
        assert_eq!(
            held(s.connection().clone()).await,
            1,
            "held in the transaction"
        );
        txn.commit().await.expect("commit");
        assert_eq!(held(s.connection().clone()).await, 0, "released with it");
    }

    /// Issue 18: synced marks are written in batches on every database (on
    /// PostgreSQL too, in one statement of its own dialect): after the
    /// flush each ended task is marked, a live one never is, and a message
    /// ts is on the row (on PostgreSQL written at once: other processes
    /// read it).
    #[tokio::test]
    async fn synced_marks_in_a_batch_mark_the_ended_tasks_only() {
        let (_db, s) = store().await;
        let cancelled = Ending::Cancelled {
            note: "Cancelled.".into(),
        };
        let live = s.insert_task(new_task()).await.expect("insert");
        let mut ended = Vec::new();
        for i in 0..5 {
            let t = s.insert_task(new_task()).await.expect("insert");
            s.record_message_ts(t.id, &format!("1.{i}"))
                .await
                .expect("ts");
            s.finish(t.id, None, None, &[TaskState::Queued], &cancelled)
                .await
                .expect("finish");
            ended.push(t.id);
        }
        if s.is_shared() {
            let row = task::Entity::find_by_id(ended[0])
                .one(s.connection())
                .await
                .expect("read")
                .expect("row");
            assert_eq!(row.message_ts.as_deref(), Some("1.0"), "written at once");
        }
        for id in ended.iter().chain([&live.id]) {
            s.record_slack_synced(*id).await.expect("synced");
        }
        s.flush_marks().await;
        for (i, id) in ended.iter().enumerate() {
            let row = s.task(*id).await.expect("read").expect("row");
            assert!(row.slack_synced, "task {id}");
            assert_eq!(row.message_ts, Some(format!("1.{i}")));
        }
        let row = s.task(live.id).await.expect("read").expect("row");
        assert!(!row.slack_synced, "not ended: not synced");
    }

    /// Issue 18: on SQLite a task's message ts and its synced mark are
    /// written in batches; a thread reply finds its task at once, the rows
    /// get both, one statement takes many marks, and a task that has not
    /// ended is never marked synced.
    #[tokio::test]
    async fn batched_marks_reach_the_rows_and_a_thread_reply_finds_its_task_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sqlite_store(&dir).await;
        let ended = s.insert_task(new_task()).await.expect("insert");
        let live = s.insert_task(new_task()).await.expect("insert");
        s.record_message_ts(ended.id, "1.1").await.expect("ts");
        s.record_message_ts(live.id, "1.2").await.expect("ts");
        let read = |id| {
            let s = s.clone();
            async move { s.task(id).await.expect("read").expect("row") }
        };
        assert_eq!(read(ended.id).await.message_ts.as_deref(), Some("1.1"));
        let by_message = s.task_by_message("C1", "1.2").await.expect("read");
        assert_eq!(by_message.map(|t| t.id), Some(live.id));
        let thread: Vec<i64> = s
            .thread_tasks("C1", "1.1")
            .await
            .expect("thread")
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(thread, [ended.id]);

        let cancelled = Ending::Cancelled {
            note: "Cancelled.".into(),
        };
        assert!(
            s.finish(ended.id, None, None, &[TaskState::Queued], &cancelled)
                .await
                .expect("finish")
        );
        let mut others = Vec::new();
        for _ in 0..20 {
            let t = s.insert_task(new_task()).await.expect("insert");
            s.finish(t.id, None, None, &[TaskState::Queued], &cancelled)
                .await
                .expect("finish");
            others.push(t.id);
        }
        let before = s.writes().expect("a group writer");
        s.record_slack_synced(ended.id).await.expect("synced");
        s.record_slack_synced(live.id).await.expect("synced");
        for id in &others {
            s.record_slack_synced(*id).await.expect("synced");
        }
        s.flush_marks().await;
        let statements = s.writes().expect("a group writer") - before;
        assert!(statements <= 2, "22 marks took {statements} statements");
        let row = read(ended.id).await;
        assert!(row.slack_synced);
        assert_eq!(row.message_ts.as_deref(), Some("1.1"));
        assert!(!read(live.id).await.slack_synced, "not ended: not synced");
        for id in others {
            assert!(read(id).await.slack_synced, "task {id}");
        }
    }

    /// Issue 18: a new task's check reads a project's personas and access
    /// list in one statement, and reads what the two reads of each give:
    /// for no such project, a project without a list, and one with entries.
    #[tokio::test]
    async fn project_rules_read_at_once_what_the_two_reads_give() {
        let (_db, s) = store().await;
        let both = |project: &'static str| {
            let s = s.clone();
            async move {
                ProjectRules {
                    personas: s.project_personas(project).await.expect("personas"),
                    access: s.access_list(project).await.expect("list"),
                    queue_waiting: Some(false),
                }
            }
        };
        assert_eq!(
            s.project_rules("none").await.expect("rules"),
            ProjectRules {
                queue_waiting: Some(false),
                ..ProjectRules::default()
            }
        );
        s.ensure_project("web").await.expect("project");
        s.set_project_personas("web", Some("code,review"))
            .await
            .expect("personas");
        let read = s.project_rules("web").await.expect("rules");
        assert_eq!(read.personas.as_deref(), Some("code,review"));
        assert!(read.access.is_empty());
        assert_eq!(read, both("web").await);
        for id in ["U2", "U1", "C9"] {
            let kind = if id.starts_with('C') {
                "channel"
            } else {
                "user"
            };
            assert!(s.allow("web", kind, id, "UADMIN").await.expect("allow"));
        }
        let read = s.project_rules("web").await.expect("rules");
        let ids: Vec<&str> = read.access.iter().map(|r| r.entry_id.as_str()).collect();
        assert_eq!(ids, ["U2", "U1", "C9"], "oldest first");
        assert_eq!(read, both("web").await);

        // The queue, read with them: a follow-up waiting for its turn is
        // not a task an agent may take; a plain queued task is.
        let waiting =
            |s: Store| async move { s.project_rules("web").await.expect("rules").queue_waiting };
        let first = s.insert_task(new_task()).await.expect("insert");
        s.claim(first.id, "laptop").await.expect("claim");
        s.insert_task(NewTask {
            after_task: Some(first.id),
            ..new_task()
        })
        .await
        .expect("follow-up");
        assert_eq!(
            waiting(s.clone()).await,
            Some(false),
            "only a follow-up waits"
        );
        s.insert_task(new_task()).await.expect("insert");
        assert_eq!(waiting(s.clone()).await, Some(true));
    }

    /// Issue 18: a project's personas and access list are kept in memory on
    /// SQLite (a new task's check reads nothing); every change made through
    /// the store is seen by the next read.
    #[tokio::test]
    async fn cached_project_rules_follow_every_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sqlite_store(&dir).await.caching_project_rules();
        s.ensure_project("web").await.expect("project");
        assert_eq!(s.project_personas("web").await.expect("read"), None);
        assert!(s.access_list("web").await.expect("read").is_empty());

        s.set_project_personas("web", Some("code,review"))
            .await
            .expect("personas");
        assert_eq!(
            s.project_personas("web").await.expect("read").as_deref(),
            Some("code,review")
        );
        assert!(s.allow("web", "user", "U1", "UADMIN").await.expect("allow"));
        let ids = |rows: Vec<AccessRow>| rows.into_iter().map(|r| r.entry_id).collect::<Vec<_>>();
        assert_eq!(ids(s.access_list("web").await.expect("read")), ["U1"]);
        assert!(s.allow("web", "user", "U2", "UADMIN").await.expect("allow"));
        assert_eq!(ids(s.access_list("web").await.expect("read")), ["U1", "U2"]);
        assert!(s.disallow("web", "user", "U1").await.expect("disallow"));
        assert_eq!(ids(s.access_list("web").await.expect("read")), ["U2"]);
        s.set_project_personas("web", None).await.expect("personas");
        assert_eq!(s.project_personas("web").await.expect("read"), None);
        assert_eq!(ids(s.access_list("web").await.expect("read")), ["U2"]);

        // Served from memory: a row removed behind the store's back (which
        // one process per SQLite file rules out) is still listed.
        s.connection()
            .execute_unprepared("DELETE FROM project_access")
            .await
            .expect("delete");
        assert_eq!(ids(s.access_list("web").await.expect("read")), ["U2"]);
    }

    /// The server closes every connection of a pool (as a restart does),
    /// then the pool is used one statement at a time; what failed.
    async fn failures_after_the_server_closed_the_pool(ping_after_idle: Duration) -> usize {
        const POOL: u32 = 4;
        let server = baton_testkit::db::postgres_server().expect("postgres");
        let db = TestDb::postgres(&server).await;
        let pool = postgres_pool(&db.url, POOL, ping_after_idle)
            .await
            .expect("pool");
        // Every connection of the pool opened: one per transaction held at once.
        let mut held = Vec::new();
        for _ in 0..POOL {
            let txn = pool.begin().await.expect("begin");
            txn.execute_unprepared("SELECT 1").await.expect("select");
            held.push(txn);
        }
        for txn in held {
            txn.commit().await.expect("commit");
        }
        let admin = Database::connect(db.url.as_str()).await.expect("admin");
        let closed = admin
            .query_one(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) AS n \
                 FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            ))
            .await
            .expect("terminate")
            .expect("row")
            .try_get::<i64>("", "n")
            .expect("count");
        assert!(
            closed >= i64::from(POOL),
            "the pool's connections were closed"
        );
        let mut failed = 0;
        for _ in 0..2 * POOL {
            if pool.execute_unprepared("SELECT 1").await.is_err() {
                failed += 1;
            }
        }
        // Whatever failed, the pool works again now.
        pool.execute_unprepared("SELECT 1")
            .await
            .expect("the pool reconnected");
        failed
    }

    /// A connection in steady use is not tested before each statement: after
    /// a restart, each one fails one statement, and no more (sqlx's test as
    /// it goes back to the pool closes it), and the pool then reconnects.
    #[tokio::test]
    async fn after_a_restart_each_connection_in_use_fails_at_most_one_statement() {
        if baton_testkit::db::postgres_or_skip(
            "after_a_restart_each_connection_in_use_fails_at_most_one_statement",
        )
        .is_none()
        {
            return;
        }
        let failed = failures_after_the_server_closed_the_pool(Duration::from_secs(3600)).await;
        assert!(
            (1..=4).contains(&failed),
            "{failed} statements failed: one per connection of the pool (4) at most, and the closed connections were used untested"
        );
    }

    /// A connection idle for the time set is tested before use: the server
    /// closed them all, and no statement fails.
    #[tokio::test]
    async fn a_connection_idle_for_a_while_is_tested_before_use() {
        if baton_testkit::db::postgres_or_skip("a_connection_idle_for_a_while_is_tested_before_use")
            .is_none()
        {
            return;
        }
        assert_eq!(
            failures_after_the_server_closed_the_pool(Duration::ZERO).await,
            0
        );
    }
}
