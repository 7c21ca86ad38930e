//! A task's requester is told once when it ends: `notified_at` is the claim
//! of whoever posts the notification, `notify_done` says it is settled
//! (posted, turned off, or given up), and a partial index keeps the ended
//! tasks still to notify cheap to find however many rows the table holds.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

use crate::m20261121_000001_initial::Tasks;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The new columns of the tasks table.
#[derive(DeriveIden)]
enum TasksNotify {
    /// Unix ms when a bot claimed the notification; NULL while unclaimed.
    NotifiedAt,
    /// The notification is settled: posted, not wanted, or given up.
    NotifyDone,
}

/// The partial index of the ended tasks whose notification is still to do.
const PENDING_INDEX: &str = "idx_tasks_notify_pending";

/// The index's condition. The bot's query uses this very text, so that both
/// SQLite and PostgreSQL see the index applies (SQLite matches terms as written).
/// `finished_at` is set exactly when a task ends; `slack_synced` once its
/// message shows the end (result continuations included), so the mention is
/// the thread's last word. Neither term may be one an index of its own
/// answers (`state IN`, `slack_synced = TRUE`): SQLite would prefer that index
/// and read every ended task.
pub const PENDING: &str = "notify_done = FALSE AND finished_at IS NOT NULL \
     AND message_ts IS NOT NULL AND slack_synced <> FALSE";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(TasksNotify::NotifiedAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(
                        ColumnDef::new(TasksNotify::NotifyDone)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        // Tasks that ended before the upgrade are old news: nobody is told.
        let db = manager.get_connection();
        db.execute_unprepared(
            "UPDATE tasks SET notify_done = TRUE \
             WHERE state IN ('completed', 'failed', 'cancelled', 'expired') \
             OR finished_at IS NOT NULL",
        )
        .await?;
        // Raw SQL: sea-query builds no partial index for SQLite. Both
        // databases take this one.
        db.execute_unprepared(&format!(
            "CREATE INDEX {PENDING_INDEX} ON tasks (id) WHERE {PENDING}"
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(PENDING_INDEX)
                    .table(Tasks::Table)
                    .to_owned(),
            )
            .await?;
        for column in [TasksNotify::NotifyDone, TasksNotify::NotifiedAt] {
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
