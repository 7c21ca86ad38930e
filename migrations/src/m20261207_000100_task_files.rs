//! Files attached in Slack to the message that started a task (or a
//! follow-up): kept with the task, so that a re-dispatch after a restart
//! hands them to the agent too, and the bot can fetch each from Slack when
//! the agent asks for it.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The `task_files` table.
#[derive(DeriveIden)]
pub enum TaskFiles {
    /// The table.
    Table,
    /// The task the file is attached to.
    TaskId,
    /// Its place among the task's files (0, 1, …), the order of the message.
    Position,
    /// Slack's file id (`F…`).
    FileId,
    /// The safe name it is written under in `.baton/files/`.
    Name,
    /// Its size in bytes, as Slack announced it.
    Size,
    /// Slack's `url_private_download`, fetched with the bot token.
    Url,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TaskFiles::Table)
                    .col(ColumnDef::new(TaskFiles::TaskId).big_integer().not_null())
                    .col(ColumnDef::new(TaskFiles::Position).integer().not_null())
                    .col(ColumnDef::new(TaskFiles::FileId).string().not_null())
                    .col(ColumnDef::new(TaskFiles::Name).string().not_null())
                    .col(ColumnDef::new(TaskFiles::Size).big_integer().not_null())
                    .col(ColumnDef::new(TaskFiles::Url).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(TaskFiles::TaskId)
                            .col(TaskFiles::FileId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(TaskFiles::Table).to_owned())
            .await
    }
}
