//! One editor per task message: `tasks.editor` names the bot process that
//! edits the task's Slack message now (the one holding its agent, or the one
//! that posted it while it has none); NULL before anyone posted it. Another
//! process takes it over only when that process's lease has expired, or when
//! it holds the task's agent.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

use crate::m20261121_000001_initial::Tasks;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The new column of the tasks table.
#[derive(DeriveIden)]
enum TasksEditor {
    /// The instance (`instances.id`) editing the task's message; NULL: none yet.
    Editor,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(TasksEditor::Editor).string().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .drop_column(TasksEditor::Editor)
                    .to_owned(),
            )
            .await
    }
}
