//! Follow-ups while a task runs: a thread reply is kept as a task that waits
//! (`after_task`) until the thread's earlier tasks have ended, and a task that
//! resumes a session goes only to the agent holding it (`session_agent`). A
//! partial index keeps the waiting ones cheap to find however many rows the
//! table holds.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

use crate::m20261121_000001_initial::Tasks;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The new columns of the tasks table.
#[derive(DeriveIden)]
enum TasksFollowUp {
    /// The task this follow-up waits for; NULL once it may run (or for any
    /// other task). Kept out of dispatch while set.
    AfterTask,
    /// The agent that holds `session_id` (a Claude session only exists on the
    /// machine that made it): the task goes to no other agent. NULL: any agent.
    SessionAgent,
}

/// The partial index of the follow-ups still waiting for their turn.
const WAITING_INDEX: &str = "idx_tasks_follow_ups_waiting";

/// The index's condition. The bot's query uses this very text, so that
/// SQLite sees the index applies. No state term: SQLite would prefer the
/// queue's index for it (see `PENDING` in the notifications' migration).
pub const WAITING: &str = "after_task IS NOT NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(
                        ColumnDef::new(TasksFollowUp::AfterTask)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(TasksFollowUp::SessionAgent).string().null())
                    .to_owned(),
            )
            .await?;
        // Raw SQL: sea-query builds no partial index for SQLite. Both
        // databases take this one.
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE INDEX {WAITING_INDEX} ON tasks (id) WHERE {WAITING}"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(WAITING_INDEX)
                    .table(Tasks::Table)
                    .to_owned(),
            )
            .await?;
        for column in [TasksFollowUp::SessionAgent, TasksFollowUp::AfterTask] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tasks::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
