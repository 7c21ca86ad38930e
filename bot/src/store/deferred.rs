//! Marks nobody waits for, written in batches: a task's message ts (SQLite
//! only) and "Slack shows its final state". Each was one statement per
//! task, two of the five a lifecycle wrote; here every mark of a moment is
//! gathered and written every [`FLUSH_INTERVAL`], one statement per kind
//! for all the tasks that had one.
//!
//! Nothing is acknowledged on them, and both are recoverable if the process
//! stops before they are written: a task not marked synced is shown again
//! after a restart, and a task whose message has no recorded ts has it
//! looked for in Slack by its block id before anything is posted. Until it
//! is written, a task read by id gets its ts from memory, and a thread
//! reply naming a ts not yet written writes the waiting marks first
//! ([`Deferred::knows_ts`]), so it finds its task at once. The ts of a batch
//! is written before its synced marks, so a task is never marked synced
//! without its ts.
//!
//! On PostgreSQL the message ts is written at once: other processes read it
//! (the holder of the task's agent edits the message another one posted).
//! A synced mark only keeps the other processes' sweep of ended tasks whose
//! message lags (`Store::unshown_ends`) from showing the end again, and that
//! sweep waits seconds before it looks: 50 ms later changes nothing there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use super::group::GroupWriter;
use crate::sync::lock;

/// How long a mark waits at most before it is written (and so how many
/// tasks share its statement).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Sets each listed task's message ts: `?1` is a JSON object, task id → ts.
const SET_TS: &str = "UPDATE tasks SET message_ts = json_extract(?1, '$.\"' || id || '\"') \
     WHERE id IN (SELECT CAST(key AS INTEGER) FROM json_each(?1))";

/// Marks each listed task synced if it has ended: `?1` is a JSON array of ids.
const SET_SYNCED: &str = "UPDATE tasks SET slack_synced = 1 \
     WHERE id IN (SELECT value FROM json_each(?1)) \
     AND state IN ('completed', 'failed', 'cancelled', 'expired')";

/// [`SET_SYNCED`] on PostgreSQL.
const SET_SYNCED_PG: &str = "UPDATE tasks SET slack_synced = TRUE \
     WHERE id = ANY (ARRAY(SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb))) \
     AND state IN ('completed', 'failed', 'cancelled', 'expired')";

/// Where the marks are written.
#[derive(Debug)]
enum Sink {
    /// SQLite's group writer: both kinds of mark.
    Sqlite(GroupWriter),
    /// A PostgreSQL pool: synced marks only.
    Postgres(DatabaseConnection),
}

impl Sink {
    /// Runs `stmt`, written for this sink's database.
    async fn execute(&self, sql: &str, json: String) -> Result<(), DbErr> {
        match self {
            Sink::Sqlite(writer) => {
                let stmt = Statement::from_sql_and_values(DbBackend::Sqlite, sql, [json.into()]);
                writer.execute(stmt).await.map(drop)
            }
            Sink::Postgres(db) => {
                let stmt = Statement::from_sql_and_values(DbBackend::Postgres, sql, [json.into()]);
                db.execute(stmt).await.map(drop)
            }
        }
    }
}

/// Marks waiting to be written.
#[derive(Debug, Default)]
struct Pending {
    /// Message ts by task, until written (a write in flight included).
    ts: HashMap<i64, String>,
    /// Tasks whose final state Slack shows.
    synced: Vec<i64>,
    /// A flusher task runs (it stops when a round finds nothing).
    flushing: bool,
}

/// The marks not yet written, and the writer that writes them.
#[derive(Debug)]
pub(super) struct Deferred {
    /// What waits.
    pending: Mutex<Pending>,
    /// Where they are written.
    sink: Sink,
}

impl Deferred {
    /// Both kinds of mark, written through SQLite's group writer.
    pub(super) fn sqlite(writer: GroupWriter) -> Arc<Self> {
        Self::new(Sink::Sqlite(writer))
    }

    /// Synced marks, written to PostgreSQL through `db`.
    pub(super) fn postgres(db: DatabaseConnection) -> Arc<Self> {
        Self::new(Sink::Postgres(db))
    }

    fn new(sink: Sink) -> Arc<Self> {
        Arc::new(Deferred {
            pending: Mutex::new(Pending::default()),
            sink,
        })
    }

    /// Whether message ts are kept here for a moment (else written at once).
    pub(super) fn defers_ts(&self) -> bool {
        matches!(self.sink, Sink::Sqlite(_))
    }

    /// Records the task's message ts (written within [`FLUSH_INTERVAL`]).
    pub(super) fn message_ts(self: &Arc<Self>, task: i64, ts: &str) {
        let start = {
            let mut p = lock(&self.pending);
            p.ts.insert(task, ts.to_owned());
            !std::mem::replace(&mut p.flushing, true)
        };
        if start {
            self.spawn_flusher();
        }
    }

    /// Records that Slack shows the task's final state.
    pub(super) fn synced(self: &Arc<Self>, task: i64) {
        let start = {
            let mut p = lock(&self.pending);
            p.synced.push(task);
            !std::mem::replace(&mut p.flushing, true)
        };
        if start {
            self.spawn_flusher();
        }
    }

    /// Whether some task's message ts, not yet written, is `ts`.
    pub(super) fn knows_ts(&self, ts: &str) -> bool {
        lock(&self.pending).ts.values().any(|t| t == ts)
    }

    /// The task's message ts, if one waits to be written.
    pub(super) fn ts_of(&self, task: i64) -> Option<String> {
        lock(&self.pending).ts.get(&task).cloned()
    }

    fn spawn_flusher(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_INTERVAL).await;
                if !this.flush_once(true).await {
                    return;
                }
            }
        });
    }

    /// Writes what waits now (shutdown).
    pub(super) async fn flush(&self) {
        self.flush_once(false).await;
    }

    /// Writes what waits; false when nothing did (and, for the flusher
    /// task, `flushing` is then cleared: it stops).
    async fn flush_once(&self, flusher: bool) -> bool {
        let (ts, synced) = {
            let mut p = lock(&self.pending);
            if p.ts.is_empty() && p.synced.is_empty() {
                if flusher {
                    p.flushing = false;
                }
                return false;
            }
            (p.ts.clone(), std::mem::take(&mut p.synced))
        };
        if !ts.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = ts
                .iter()
                .map(|(id, ts)| (id.to_string(), serde_json::Value::String(ts.clone())))
                .collect();
            let json = serde_json::Value::Object(map).to_string();
            if let Err(err) = self.sink.execute(SET_TS, json).await {
                // Recoverable: found again by the message's block id.
                tracing::error!(error = %err, "Cannot record the tasks' message ts");
            }
            // Written (or given up on): forgotten, unless it changed meanwhile.
            let mut p = lock(&self.pending);
            for (id, written) in ts {
                if p.ts.get(&id) == Some(&written) {
                    p.ts.remove(&id);
                }
            }
        }
        if !synced.is_empty() {
            let json = serde_json::Value::from(synced).to_string();
            let sql = match self.sink {
                Sink::Sqlite(_) => SET_SYNCED,
                Sink::Postgres(_) => SET_SYNCED_PG,
            };
            if let Err(err) = self.sink.execute(sql, json).await {
                // Recoverable: shown again after a restart.
                tracing::error!(error = %err, "Cannot record that Slack is up to date");
            }
        }
        true
    }
}
