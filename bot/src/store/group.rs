//! Group commit for SQLite: the writes of a busy moment share one transaction,
//! run by a thread that owns its connection.
//!
//! SQLite commits one transaction at a time, and each commit costs far more
//! than the statement in it: the changed pages are appended to the
//! write-ahead log, locks are taken and released (a dozen system calls). With
//! one commit per statement, a busy bot spent most of its database time on
//! commits. The writer here takes every write that is waiting, runs them in
//! order in one transaction and commits once; each caller hears its own
//! statement's outcome only after that commit, so nothing is reported done
//! before it is durable. A statement that fails (a constraint) fails alone:
//! SQLite undoes that statement, not the transaction. A single waiting write
//! runs on its own, without `BEGIN`/`COMMIT`, so an idle bot pays nothing.
//!
//! The writer is a thread of its own with its own SQLite connection
//! (`rusqlite`, prepared statements cached): a group of a hundred writes is
//! one hand-off to it and one back, where a pool's connection would hand
//! each statement to its worker thread and wait for the answer (two thread
//! wake-ups per statement, a quarter of the bot's CPU under load).
//!
//! Order is kept: writes run in the order they were handed in.
//!
//! Some errors make SQLite abort the whole transaction, not just the
//! statement (a full disk, an I/O error, a trigger's `RAISE(ROLLBACK)`); the
//! statements after it would then run outside any transaction and commit one
//! by one, while the writes before it are undone. So after a failed
//! statement the writer checks that its transaction is still open (SQLite's
//! autocommit flag); if it is not, the group stops, and every write of it
//! runs again on its own, so each caller hears the truth about its own
//! statement.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags, params_from_iter};
use sea_orm::{DbErr, Statement, Value};
use tokio::sync::{mpsc, oneshot};

use super::Task;

/// Most writes one transaction takes (a bound on how long a caller waits
/// behind others, and on the transaction's size).
const MAX_GROUP: usize = 256;

/// Prepared statements the writer's connection keeps (the store writes a
/// few dozen shapes of statement; a claim's `IN (…)` list makes one per length).
const STATEMENT_CACHE: usize = 256;

/// How the writer's connection is set up: as the store's pools are.
#[derive(Debug, Clone, Copy)]
pub struct Pragmas {
    /// How long a write waits for SQLite's lock (another connection writing).
    pub busy_timeout: Duration,
    /// WAL pages after which a commit checkpoints by itself.
    pub autocheckpoint_pages: u32,
}

/// What a write wants back.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// The number of rows it changed.
    Affected,
    /// The task rows of its `RETURNING` clause.
    Rows,
}

/// What a write got.
#[derive(Debug)]
enum Done {
    /// Rows changed.
    Affected(u64),
    /// Task rows returned.
    Rows(Vec<Task>),
}

/// One write and where its outcome goes.
struct Job {
    /// The statement.
    stmt: Statement,
    /// What it wants back.
    want: Want,
    /// Its outcome, sent after the commit.
    done: oneshot::Sender<Result<Done, DbErr>>,
}

/// What the writer thread is handed.
enum Msg {
    /// A write.
    Write(Job),
    /// Stop at once, as a crash would (tests).
    #[cfg(test)]
    Stop,
    /// Wait until the sender is dropped, then go on gathering (tests: what
    /// arrives meanwhile is one group, whatever the machine's speed).
    #[cfg(test)]
    Hold(std::sync::mpsc::Receiver<()>),
}

/// Handle to the writer thread. Cheap to clone; the thread ends with the last handle.
#[derive(Debug, Clone)]
pub struct GroupWriter {
    /// The writer's queue.
    jobs: mpsc::UnboundedSender<Msg>,
    /// Commits and statements so far.
    counts: Arc<Counts>,
}

/// What the writer counts.
#[derive(Debug, Default)]
struct Counts {
    /// Commits made (a group of one counts too).
    commits: AtomicU64,
    /// Statements run (a statement run again alone after its group was rolled back counts twice).
    writes: AtomicU64,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Write(job) => f.debug_struct("Job").field("stmt", &job.stmt.sql).finish(),
            #[cfg(test)]
            Msg::Stop => f.write_str("Stop"),
            #[cfg(test)]
            Msg::Hold(_) => f.write_str("Hold"),
        }
    }
}

impl GroupWriter {
    /// Opens the SQLite file at `path` (it exists, in WAL mode) and starts
    /// the writer thread on it.
    pub fn start(path: &Path, pragmas: Pragmas) -> anyhow::Result<Self> {
        use anyhow::Context;
        let conn = open(path, pragmas).with_context(|| {
            format!(
                "Cannot open the database's writer connection to {}",
                path.display()
            )
        })?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        let counter = counts.clone();
        std::thread::Builder::new()
            .name("baton-db-writer".into())
            .spawn(move || run(conn, rx, &counter))
            .context("Cannot start the database writer thread")?;
        Ok(GroupWriter { jobs, counts })
    }

    /// Whether the writer thread still runs (it stops only if it panicked):
    /// without it no task can change.
    pub fn is_alive(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Stops the writer, as a crash of it would.
    #[cfg(test)]
    pub fn kill(&self) {
        let _ = self.jobs.send(Msg::Stop);
    }

    /// Holds the writer until the returned guard is dropped: the writes
    /// handed in meanwhile make one group.
    #[cfg(test)]
    fn hold(&self) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel();
        let _ = self.jobs.send(Msg::Hold(held));
        release
    }

    /// Commits made so far.
    pub fn commits(&self) -> u64 {
        self.counts.commits.load(Ordering::Relaxed)
    }

    /// Statements run so far.
    pub fn writes(&self) -> u64 {
        self.counts.writes.load(Ordering::Relaxed)
    }

    /// Runs `stmt`; the rows it changed, once committed.
    pub async fn execute(&self, stmt: Statement) -> Result<u64, DbErr> {
        match self.submit(stmt, Want::Affected).await? {
            Done::Affected(n) => Ok(n),
            Done::Rows(rows) => Ok(rows.len() as u64),
        }
    }

    /// Runs `stmt` (with a `RETURNING` clause of every task column); the
    /// tasks, once committed.
    pub async fn query_tasks(&self, stmt: Statement) -> Result<Vec<Task>, DbErr> {
        match self.submit(stmt, Want::Rows).await? {
            Done::Rows(rows) => Ok(rows),
            Done::Affected(_) => Ok(Vec::new()),
        }
    }

    async fn submit(&self, stmt: Statement, want: Want) -> Result<Done, DbErr> {
        let (done, rx) = oneshot::channel();
        self.jobs
            .send(Msg::Write(Job { stmt, want, done }))
            .map_err(|_| DbErr::Custom("the database writer has stopped".into()))?;
        rx.await
            .map_err(|_| DbErr::Custom("the database writer stopped before committing".into()))?
    }
}

/// The writer's connection, set up as the store's pools are.
fn open(path: &Path, pragmas: Pragmas) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(pragmas.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = {};",
        pragmas.autocheckpoint_pages
    ))?;
    Ok(conn)
}

/// Takes what is waiting, runs it in one transaction, reports, repeats.
fn run(conn: Connection, mut rx: mpsc::UnboundedReceiver<Msg>, counts: &Counts) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(job) => group.push(job),
                #[cfg(test)]
                Msg::Stop => return,
                #[cfg(test)]
                Msg::Hold(held) => {
                    let _ = held.recv();
                }
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue;
        }
        counts.commits.fetch_add(1, Ordering::Relaxed);
        if group.len() == 1 {
            let job = group.remove(0);
            let res = one(&conn, &job.stmt, job.want, counts);
            let _ = job.done.send(res);
            continue;
        }
        if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
            let why = format!("cannot begin a transaction: {err}");
            for job in group.drain(..) {
                let _ = job.done.send(Err(DbErr::Custom(why.clone())));
            }
            continue;
        }
        let mut aborted = false;
        let mut outcomes = Vec::with_capacity(group.len());
        for job in &group {
            let res = one(&conn, &job.stmt, job.want, counts);
            // Still in the transaction? SQLite leaves autocommit mode only
            // when it rolled the whole transaction back.
            if res.is_err() && conn.is_autocommit() {
                aborted = true;
                break;
            }
            outcomes.push(res);
        }
        if aborted {
            // Nothing of the group is kept; each write runs again alone and
            // its caller hears what happened to it.
            if let Err(err) = conn.execute_batch("ROLLBACK") {
                tracing::debug!(error = %err, "the group's transaction was already rolled back");
            }
            for job in group.drain(..) {
                counts.commits.fetch_add(1, Ordering::Relaxed);
                let res = one(&conn, &job.stmt, job.want, counts);
                let _ = job.done.send(res);
            }
            continue;
        }
        let outcomes: Vec<_> = group.drain(..).map(|job| job.done).zip(outcomes).collect();
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                for (done, res) in outcomes {
                    let _ = done.send(res);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "a group of database writes failed to commit");
                if !conn.is_autocommit()
                    && let Err(err) = conn.execute_batch("ROLLBACK")
                {
                    tracing::error!(error = %err, "cannot roll back the failed group");
                }
                let why = format!("cannot commit: {err}");
                for (done, _) in outcomes {
                    let _ = done.send(Err(DbErr::Custom(why.clone())));
                }
            }
        }
    }
}

/// Runs one statement on the writer's connection.
fn one(conn: &Connection, stmt: &Statement, want: Want, counts: &Counts) -> Result<Done, DbErr> {
    counts.writes.fetch_add(1, Ordering::Relaxed);
    let params = stmt.values.iter().flat_map(|v| v.0.iter().map(Param));
    let mut prepared = conn.prepare_cached(&stmt.sql).map_err(db_err)?;
    if let Want::Rows = want
        && prepared.column_count() != super::sql::TASK_COLUMN_COUNT
    {
        return Err(DbErr::Custom(format!(
            "a write returning tasks must return every task column in the model's order: {}",
            stmt.sql
        )));
    }
    let mut rows = prepared.query(params_from_iter(params)).map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        if let Want::Rows = want {
            out.push(task_from_row(row).map_err(db_err)?);
        }
    }
    drop(rows);
    Ok(match want {
        Want::Affected => Done::Affected(conn.changes()),
        Want::Rows => Done::Rows(out),
    })
}

fn db_err(err: rusqlite::Error) -> DbErr {
    DbErr::Custom(format!("database error: {err}"))
}

/// A statement's value, bound as SQLite stores it: text and blobs by
/// reference (a task's steps, output and result are not copied again).
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        fn int(v: Option<i64>) -> ToSqlOutput<'static> {
            ToSqlOutput::Owned(v.map_or(SqlValue::Null, SqlValue::Integer))
        }
        fn real(v: Option<f64>) -> ToSqlOutput<'static> {
            ToSqlOutput::Owned(v.map_or(SqlValue::Null, SqlValue::Real))
        }
        let null = ToSqlOutput::Owned(SqlValue::Null);
        Ok(match self.0 {
            Value::Bool(b) => int(b.map(i64::from)),
            Value::TinyInt(x) => int(x.map(i64::from)),
            Value::SmallInt(x) => int(x.map(i64::from)),
            Value::Int(x) => int(x.map(i64::from)),
            Value::BigInt(x) => int(*x),
            Value::TinyUnsigned(x) => int(x.map(i64::from)),
            Value::SmallUnsigned(x) => int(x.map(i64::from)),
            Value::Unsigned(x) => int(x.map(i64::from)),
            Value::BigUnsigned(x) => match x {
                Some(x) => {
                    int(Some(i64::try_from(*x).map_err(|_| {
                        cannot_bind(format!("{x} is too large for SQLite"))
                    })?))
                }
                None => null,
            },
            Value::Float(x) => real(x.map(f64::from)),
            Value::Double(x) => real(*x),
            Value::String(s) => s.as_ref().map_or(null, |s| {
                ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
            }),
            Value::Char(c) => c.map_or(null, |c| ToSqlOutput::Owned(SqlValue::Text(c.to_string()))),
            Value::Bytes(b) => b
                .as_ref()
                .map_or(null, |b| ToSqlOutput::Borrowed(ValueRef::Blob(b))),
            Value::Json(j) => j
                .as_ref()
                .map_or(null, |j| ToSqlOutput::Owned(SqlValue::Text(j.to_string()))),
            #[allow(unreachable_patterns)]
            other => {
                return Err(cannot_bind(format!(
                    "the SQLite writer cannot bind {other:?}"
                )));
            }
        })
    }
}

fn cannot_bind(why: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(why.into())
}

/// A task row of a `RETURNING` clause, whose columns are the model's in
/// its order (`store/sql.rs`): read by position, not looked up by name.
fn task_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Task> {
    Ok(Task {
        id: row.get(0)?,
        persona: row.get(1)?,
        project: row.get(2)?,
        prompt: row.get(3)?,
        requester: row.get(4)?,
        team_id: row.get(5)?,
        channel_id: row.get(6)?,
        thread_ts: row.get(7)?,
        message_ts: row.get(8)?,
        state: row.get(9)?,
        agent: row.get(10)?,
        parent_id: row.get(11)?,
        session_id: row.get(12)?,
        model: row.get(13)?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        queued_at: row.get(16)?,
        dispatched_at: row.get(17)?,
        started_at: row.get(18)?,
        finished_at: row.get(19)?,
        last_seq: row.get(20)?,
        cancel_requested: row.get(21)?,
        wait_reason: row.get(22)?,
        steps: row.get(23)?,
        step_count: row.get(24)?,
        output_tail: row.get(25)?,
        result: row.get(26)?,
        result_meta: row.get(27)?,
        error: row.get(28)?,
        failure_cause: row.get(29)?,
        slack_synced: row.get(30)?,
        result_parts_posted: row.get(31)?,
        retried_as: row.get(32)?,
        after_task: row.get(33)?,
        session_agent: row.get(34)?,
        // Not a column: read from the `approvals` table where it is shown.
        approvals: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend};

    fn sql(text: &str) -> Statement {
        Statement::from_string(DbBackend::Sqlite, text.to_owned())
    }

    fn pragmas() -> Pragmas {
        Pragmas {
            busy_timeout: Duration::from_secs(10),
            autocheckpoint_pages: 1000,
        }
    }

    /// A SQLite file in WAL mode with `schema`, its pool, and a writer on it.
    async fn setup(dir: &tempfile::TempDir, schema: &[&str]) -> (DatabaseConnection, GroupWriter) {
        let path = dir.path().join("g.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let db = Database::connect(&url).await.expect("connect");
        db.execute_unprepared("PRAGMA journal_mode = WAL")
            .await
            .expect("wal");
        for s in schema {
            db.execute(sql(s)).await.expect("schema");
        }
        let w = GroupWriter::start(&path, pragmas()).expect("writer");
        (db, w)
    }

    /// Hands all of `writes` in while the writer is held, so they make one
    /// group however fast the writer thread is; their outcomes.
    async fn together<F: std::future::Future>(w: &GroupWriter, writes: Vec<F>) -> Vec<F::Output> {
        let release = w.hold();
        let mut all = std::pin::pin!(futures::future::join_all(writes));
        // One poll hands every write in; none can finish while held.
        assert!(futures::poll!(&mut all).is_pending());
        drop(release);
        all.await
    }

    /// Issue 13, finding 8: a statement that makes SQLite abort the whole
    /// transaction (here a trigger's `RAISE(ROLLBACK)`) stops the group;
    /// every caller is told the truth about its own write.
    #[tokio::test]
    async fn an_aborted_group_tells_each_caller_the_truth() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, w) = setup(
            &dir,
            &[
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
                "CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.v = 'boom' \
                 BEGIN SELECT RAISE(ROLLBACK, 'boom'); END",
            ],
        )
        .await;
        let mut writes = Vec::new();
        for i in 0..40 {
            let v = if i == 20 {
                "boom".to_owned()
            } else {
                format!("v{i}")
            };
            writes.push(w.execute(sql(&format!("INSERT INTO t (id, v) VALUES ({i}, '{v}')"))));
        }
        let outcomes = together(&w, writes).await;
        // The group's transaction is rolled back, then each of its writes runs
        // (and commits) alone.
        assert_eq!(w.commits(), 41, "one group, then each write alone");
        for (i, res) in outcomes.iter().enumerate() {
            let kept = db
                .query_one(sql(&format!("SELECT id FROM t WHERE id = {i}")))
                .await
                .expect("read")
                .is_some();
            assert_eq!(res.is_ok(), kept, "write {i} was told {res:?}");
            assert_eq!(kept, i != 20, "write {i}");
        }
    }

    #[tokio::test]
    async fn a_dead_writer_is_noticed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, w) = setup(&dir, &["CREATE TABLE t (id INTEGER PRIMARY KEY)"]).await;
        assert!(w.is_alive());
        w.kill();
        w.jobs.closed().await;
        assert!(!w.is_alive());
        assert!(
            w.execute(sql("INSERT INTO t (id) VALUES (1)"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn writes_waiting_together_commit_together_in_order_and_fail_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, w) = setup(
            &dir,
            &["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"],
        )
        .await;

        // Handed in together: one group. The duplicate fails, alone.
        let mut writes = Vec::new();
        for i in 0..100 {
            let v = if i == 50 { 0 } else { i };
            writes.push(w.execute(sql(&format!("INSERT INTO t (id, v) VALUES ({i}, 'v{v}')"))));
        }
        let outcomes = together(&w, writes).await;
        assert_eq!(w.commits(), 1, "commits for 100 writes");
        for (i, res) in outcomes.iter().enumerate() {
            match i {
                50 => assert!(res.is_err(), "the duplicate fails"),
                _ => assert_eq!(res.as_ref().ok(), Some(&1), "write {i}"),
            }
        }
        let changed = w
            .execute(sql("UPDATE t SET v = v || '!' WHERE id < 3"))
            .await
            .expect("update");
        assert_eq!(changed, 3);
        let count = db
            .query_one(sql("SELECT COUNT(*) AS n FROM t"))
            .await
            .expect("count")
            .expect("row")
            .try_get::<i64>("", "n")
            .expect("n");
        assert_eq!(count, 99);

        // Order is kept within a group: the last write wins.
        let mut writes = Vec::new();
        for i in 0..20 {
            writes.push(w.execute(sql(&format!("UPDATE t SET v = 'last{i}' WHERE id = 1"))));
        }
        together(&w, writes).await;
        let v = db
            .query_one(sql("SELECT v FROM t WHERE id = 1"))
            .await
            .expect("read")
            .expect("row")
            .try_get::<String>("", "v")
            .expect("v");
        assert_eq!(v, "last19");
    }

    /// Values go in and come back as the model's fields: booleans, 32-bit
    /// integers, nulls, quoted text; the row reads the same through the pool.
    #[tokio::test]
    async fn returned_rows_read_as_the_model_declares_them() {
        use crate::store::entities::task;
        use sea_orm::{EntityTrait, QueryTrait};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let store = crate::store::Store::connect(&url).await.expect("store");
        drop(store);
        let db = Database::connect(&url).await.expect("connect");
        let w = GroupWriter::start(&path, pragmas()).expect("writer");
        let row = task::ActiveModel {
            persona: sea_orm::Set("code".into()),
            project: sea_orm::Set("p".into()),
            prompt: sea_orm::Set("it's \"quoted\"".into()),
            requester: sea_orm::Set("U1".into()),
            team_id: sea_orm::Set("T1".into()),
            channel_id: sea_orm::Set("C1".into()),
            thread_ts: sea_orm::Set(None),
            state: sea_orm::Set("queued".into()),
            created_at: sea_orm::Set(1),
            updated_at: sea_orm::Set(2),
            queued_at: sea_orm::Set(3),
            last_seq: sea_orm::Set(0),
            cancel_requested: sea_orm::Set(true),
            steps: sea_orm::Set("[]".into()),
            step_count: sea_orm::Set(0),
            output_tail: sea_orm::Set(String::new()),
            slack_synced: sea_orm::Set(false),
            result_parts_posted: sea_orm::Set(7),
            ..Default::default()
        };
        let mut insert = task::Entity::insert(row).into_query();
        insert.returning(
            sea_orm::sea_query::Query::returning()
                .columns(<task::Column as sea_orm::Iterable>::iter()),
        );
        let stmt = DbBackend::Sqlite.build(&insert);
        let rows = w.query_tasks(stmt).await.expect("insert");
        let t = rows.into_iter().next().expect("a task");
        assert_eq!(t.prompt, "it's \"quoted\"");
        assert!(t.cancel_requested);
        assert!(!t.slack_synced);
        assert_eq!(t.result_parts_posted, 7);
        assert_eq!(t.thread_ts, None);
        assert_eq!(t.queued_at, 3);
        let read = task::Entity::find_by_id(t.id)
            .one(&db)
            .await
            .expect("read")
            .expect("row");
        assert_eq!(read, t);
    }
}
