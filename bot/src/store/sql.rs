//! Statements written by hand, for both databases.
//!
//! The writes of a task's busy path (its insert, start, progress and end)
//! run thousands of times a second under load. Building each with sea_query
//! (expression trees, boxed values, a generic printer) was a sixth of the
//! bot's CPU there (docs/performance.md); writing the text directly costs a
//! few string appends. The rest of the store keeps sea_orm's builders.
//!
//! Text is written with PostgreSQL's `$1`, `$2`… placeholders; for SQLite
//! they become its numbered `?1`, `?2`… (the same numbers, so a value may be
//! used twice or out of order on both). A `$` in the text is a placeholder,
//! never part of a literal.

use sea_orm::{DbBackend, Statement, Value};

/// Every task column in the model's order (`entities::task::Model`): the
/// `RETURNING` list of each write that hands back task rows, which the
/// SQLite writer reads by position.
macro_rules! task_columns {
    () => {
        "id, persona, project, prompt, requester, team_id, channel_id, thread_ts, \
         message_ts, state, agent, parent_id, session_id, model, created_at, updated_at, \
         queued_at, dispatched_at, started_at, finished_at, last_seq, cancel_requested, \
         wait_reason, steps, step_count, output_tail, result, result_meta, error, \
         failure_cause, slack_synced, result_parts_posted, retried_as, after_task, \
         session_agent"
    };
}

/// `RETURNING` every task column (see [`task_columns`]).
pub(super) const RETURNING_TASK: &str = concat!(" RETURNING ", task_columns!());

/// How many columns [`task_columns`] lists.
pub(super) const TASK_COLUMN_COUNT: usize = 35;

/// `sql`, written with `$N` placeholders, as `backend` numbers them.
pub(super) fn for_backend(sql: String, backend: DbBackend) -> String {
    match backend {
        DbBackend::Sqlite => sql.replace('$', "?"),
        _ => sql,
    }
}

/// A statement being written: text, and the values of its placeholders in
/// order.
#[derive(Debug, Default)]
pub(super) struct Sql {
    /// The text so far, with `$N` placeholders.
    text: String,
    /// The values of `$1`, `$2`…
    values: Vec<Value>,
}

impl Sql {
    /// A statement that begins with `text`.
    pub fn new(text: &str) -> Self {
        let mut sql = String::with_capacity(384);
        sql.push_str(text);
        Sql {
            text: sql,
            values: Vec::with_capacity(16),
        }
    }

    /// Appends `text`.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub fn arg(&mut self, value: impl Into<Value>) -> &mut Self {
        use std::fmt::Write;
        self.values.push(value.into());
        let _ = write!(self.text, "${}", self.values.len());
        self
    }

    /// Appends `'state'`, quoted: task states are fixed words (no quote in them).
    pub fn state(&mut self, state: crate::model::TaskState) -> &mut Self {
        self.text.push('\'');
        self.text.push_str(state.as_str());
        self.text.push('\'');
        self
    }

    /// Appends the quoted states of `list`, comma-separated (for `IN (…)`).
    pub fn states(&mut self, list: &[crate::model::TaskState]) -> &mut Self {
        for (i, state) in list.iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.state(*state);
        }
        self
    }

    /// The statement for `backend`.
    pub fn build(self, backend: DbBackend) -> Statement {
        Statement::from_sql_and_values(backend, for_backend(self.text, backend), self.values)
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::Iterable;

    use super::*;
    use crate::model::TaskState;
    use crate::store::entities::task;

    #[test]
    fn the_returned_columns_are_the_models_in_its_order() {
        let model: Vec<String> = task::Column::iter()
            .map(|c| sea_orm::IdenStatic::as_str(&c).to_owned())
            .collect();
        let listed: Vec<String> = task_columns!()
            .split(',')
            .map(|c| c.trim().to_owned())
            .collect();
        assert_eq!(listed, model);
        assert_eq!(listed.len(), TASK_COLUMN_COUNT);
    }

    #[test]
    fn placeholders_are_numbered_for_each_database() {
        let mut q = Sql::new("UPDATE tasks SET a = ");
        q.arg(1i64)
            .push(" WHERE b = ")
            .arg("x")
            .push(" AND state IN (")
            .states(&[TaskState::Queued, TaskState::Running])
            .push(")");
        let pg = Sql {
            text: q.text.clone(),
            values: q.values.clone(),
        }
        .build(DbBackend::Postgres);
        assert_eq!(
            pg.sql,
            "UPDATE tasks SET a = $1 WHERE b = $2 AND state IN ('queued', 'running')"
        );
        assert_eq!(pg.values.expect("values").0.len(), 2);
        let lite = q.build(DbBackend::Sqlite);
        assert_eq!(
            lite.sql,
            "UPDATE tasks SET a = ?1 WHERE b = ?2 AND state IN ('queued', 'running')"
        );
        assert_eq!(
            for_backend("x = $1, y = $1".into(), DbBackend::Sqlite),
            "x = ?1, y = ?1"
        );
    }
}
