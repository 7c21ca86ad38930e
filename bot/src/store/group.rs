//! Group commit for SQLite: the writes of a busy moment share one transaction.
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
//! Order is kept: writes run in the order they were handed in.
//!
//! Some errors make SQLite abort the whole transaction, not just the
//! statement (a full disk, an I/O error, a trigger's `RAISE(ROLLBACK)`); the
//! statements after it would then run outside any transaction and commit one
//! by one, while the writes before it are undone. So after a failed
//! statement the writer checks that its transaction is still there (a
//! savepoint taken at the start of the group must still exist); if it is
//! not, the group stops, and every write of it runs again on its own, so
//! each caller hears the truth about its own statement.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, QueryResult, Statement, TransactionTrait,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

/// Most writes one transaction takes (a bound on how long a caller waits
/// behind others, and on the transaction's size).
const MAX_GROUP: usize = 256;

/// Taken at the start of a group's transaction: it exists as long as the
/// transaction does.
const GROUP_SAVEPOINT: &str = "SAVEPOINT baton_group";
/// Fails when the transaction (and so its savepoint) is gone.
const RELEASE_GROUP_SAVEPOINT: &str = "RELEASE SAVEPOINT baton_group";

/// What a write wants back.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// The number of rows it changed.
    Affected,
    /// The rows of its `RETURNING` clause.
    Rows,
}

/// What a write got.
#[derive(Debug)]
pub enum Done {
    /// Rows changed.
    Affected(u64),
    /// Rows returned.
    Rows(Vec<QueryResult>),
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

/// Handle to the writer task. Cheap to clone; the task ends with the last handle.
#[derive(Debug, Clone)]
pub struct GroupWriter {
    /// The writer's queue.
    jobs: mpsc::UnboundedSender<Job>,
    /// Commits made (a group of one counts too).
    commits: Arc<AtomicU64>,
    /// Statements run.
    writes: Arc<AtomicU64>,
    /// The writer task, to stop it in tests.
    #[cfg(test)]
    task: Arc<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("stmt", &self.stmt.sql).finish()
    }
}

impl GroupWriter {
    /// Starts the writer on `db` (a pool whose connections write).
    pub fn start(db: DatabaseConnection) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let _task = tokio::spawn(run(db, rx, commits.clone(), writes.clone()));
        GroupWriter {
            jobs,
            commits,
            writes,
            #[cfg(test)]
            task: Arc::new(_task.abort_handle()),
        }
    }

    /// Whether the writer task still runs (it stops only if it panicked, or
    /// its runtime is going away): without it no task can change.
    pub fn is_alive(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Stops the writer, as a crash of it would.
    #[cfg(test)]
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Commits made so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Statements run so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Runs `stmt`; the rows it changed, once committed.
    pub async fn execute(&self, stmt: Statement) -> Result<u64, DbErr> {
        match self.submit(stmt, Want::Affected).await? {
            Done::Affected(n) => Ok(n),
            Done::Rows(rows) => Ok(rows.len() as u64),
        }
    }

    /// Runs `stmt` (with a `RETURNING` clause); its rows, once committed.
    pub async fn query(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self.submit(stmt, Want::Rows).await? {
            Done::Rows(rows) => Ok(rows),
            Done::Affected(_) => Ok(Vec::new()),
        }
    }

    async fn submit(&self, stmt: Statement, want: Want) -> Result<Done, DbErr> {
        let (done, rx) = oneshot::channel();
        self.jobs
            .send(Job { stmt, want, done })
            .map_err(|_| DbErr::Custom("the database writer has stopped".into()))?;
        rx.await
            .map_err(|_| DbErr::Custom("the database writer stopped before committing".into()))?
    }
}

/// Takes what is waiting, runs it in one transaction, reports, repeats.
async fn run(
    db: DatabaseConnection,
    mut rx: mpsc::UnboundedReceiver<Job>,
    commits: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        commits.fetch_add(1, Ordering::Relaxed);
        writes.fetch_add(group.len() as u64, Ordering::Relaxed);
        if group.len() == 1 {
            let job = group.remove(0);
            let res = one(&db, job.stmt, job.want).await;
            let _ = job.done.send(res);
            continue;
        }
        let txn = match db.begin().await {
            Ok(txn) => txn,
            Err(err) => {
                let why = format!("cannot begin a transaction: {err}");
                for job in group.drain(..) {
                    let _ = job.done.send(Err(DbErr::Custom(why.clone())));
                }
                continue;
            }
        };
        let mut aborted = txn.execute_unprepared(GROUP_SAVEPOINT).await.is_err();
        let mut outcomes = Vec::with_capacity(group.len());
        for job in &group {
            if aborted {
                break;
            }
            let res = one(&txn, job.stmt.clone(), job.want).await;
            if res.is_err() {
                // Still in the transaction? Its savepoint says so.
                aborted = txn
                    .execute_unprepared(RELEASE_GROUP_SAVEPOINT)
                    .await
                    .is_err()
                    || txn.execute_unprepared(GROUP_SAVEPOINT).await.is_err();
            }
            outcomes.push(res);
        }
        if aborted {
            // Nothing of the group is kept; each write runs again alone and
            // its caller hears what happened to it.
            if let Err(err) = txn.rollback().await {
                tracing::debug!(error = %err, "the group's transaction was already rolled back");
            }
            for job in group.drain(..) {
                commits.fetch_add(1, Ordering::Relaxed);
                writes.fetch_add(1, Ordering::Relaxed);
                let res = one(&db, job.stmt, job.want).await;
                let _ = job.done.send(res);
            }
            continue;
        }
        let outcomes: Vec<_> = group.drain(..).map(|job| job.done).zip(outcomes).collect();
        match txn.commit().await {
            Ok(()) => {
                for (done, res) in outcomes {
                    let _ = done.send(res);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "a group of database writes failed to commit");
                let why = format!("cannot commit: {err}");
                for (done, _) in outcomes {
                    let _ = done.send(Err(DbErr::Custom(why.clone())));
                }
            }
        }
    }
}

async fn one<C: ConnectionTrait>(c: &C, stmt: Statement, want: Want) -> Result<Done, DbErr> {
    match want {
        Want::Affected => Ok(Done::Affected(c.execute(stmt).await?.rows_affected())),
        Want::Rows => Ok(Done::Rows(c.query_all(stmt).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{Database, DbBackend};

    fn sql(text: &str) -> Statement {
        Statement::from_string(DbBackend::Sqlite, text.to_owned())
    }

    /// Issue 13, finding 8: a statement that makes SQLite abort the whole
    /// transaction (here a trigger's `RAISE(ROLLBACK)`) stops the group;
    /// every caller is told the truth about its own write.
    #[tokio::test]
    async fn an_aborted_group_tells_each_caller_the_truth() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("g.db").display());
        let db = Database::connect(&url).await.expect("connect");
        db.execute(sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            .await
            .expect("table");
        db.execute(sql(
            "CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.v = 'boom' \
             BEGIN SELECT RAISE(ROLLBACK, 'boom'); END",
        ))
        .await
        .expect("trigger");
        let w = GroupWriter::start(db.clone());
        let mut writes = Vec::new();
        for i in 0..40 {
            let v = if i == 20 {
                "boom".to_owned()
            } else {
                format!("v{i}")
            };
            writes.push(w.execute(sql(&format!("INSERT INTO t (id, v) VALUES ({i}, '{v}')"))));
        }
        let outcomes = futures::future::join_all(writes).await;
        // One commit per group, then one per write of the aborted group: more
        // than one per write only if the abort happened inside a group.
        assert!(w.commits() > 40, "{} commits", w.commits());
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
        let db = Database::connect("sqlite::memory:").await.expect("connect");
        let w = GroupWriter::start(db);
        assert!(w.is_alive());
        w.kill();
        for _ in 0..100 {
            if !w.is_alive() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!w.is_alive());
        assert!(w.execute(sql("SELECT 1")).await.is_err());
    }

    #[tokio::test]
    async fn writes_waiting_together_commit_together_in_order_and_fail_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("g.db").display());
        let db = Database::connect(&url).await.expect("connect");
        db.execute(sql(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)",
        ))
        .await
        .expect("table");
        let w = GroupWriter::start(db.clone());

        // Handed in together: one group. The duplicate fails, alone.
        let mut writes = Vec::new();
        for i in 0..100 {
            let v = if i == 50 { 0 } else { i };
            writes.push(w.execute(sql(&format!("INSERT INTO t (id, v) VALUES ({i}, 'v{v}')"))));
        }
        let outcomes = futures::future::join_all(writes).await;
        assert!(w.commits() <= 2, "{} commits for 100 writes", w.commits());
        for (i, res) in outcomes.iter().enumerate() {
            match i {
                50 => assert!(res.is_err(), "the duplicate fails"),
                _ => assert_eq!(res.as_ref().ok(), Some(&1), "write {i}"),
            }
        }
        let rows = w
            .query(sql("UPDATE t SET v = v || '!' WHERE id < 3 RETURNING id"))
            .await
            .expect("returning");
        assert_eq!(rows.len(), 3);
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
        futures::future::join_all(writes).await;
        let v = db
            .query_one(sql("SELECT v FROM t WHERE id = 1"))
            .await
            .expect("read")
            .expect("row")
            .try_get::<String>("", "v")
            .expect("v");
        assert_eq!(v, "last19");
    }
}
