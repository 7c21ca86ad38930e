//! Tasks remember which task retried them (so a double click on Retry runs it
//! once), and a thread's tasks are found by the thread's ts (so a reply
//! continues the latest session in it).

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

use crate::m20261121_000001_initial::Tasks;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The new column of the tasks table.
#[derive(DeriveIden)]
enum TasksRetry {
    /// The task that retried this one; 0 while a retry is being created.
    RetriedAs,
}

/// The index of a thread's tasks.
const THREAD_INDEX: &str = "idx_tasks_channel_thread";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(TasksRetry::RetriedAs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(THREAD_INDEX)
                    .table(Tasks::Table)
                    .col(Tasks::ChannelId)
                    .col(Tasks::ThreadTs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(THREAD_INDEX)
                    .table(Tasks::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .drop_column(TasksRetry::RetriedAs)
                    .to_owned(),
            )
            .await
    }
}
