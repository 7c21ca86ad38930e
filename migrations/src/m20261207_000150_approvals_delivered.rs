//! Several bot processes on one database: an approval decided on a process
//! that does not hold the task's agent is sent by the one that does. This
//! column says whether a holding process sent it, so that a poll finds the
//! decisions whose hand-over notification was missed.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

use crate::m20261207_000120_approvals::Approvals;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The new column of the approvals table.
#[derive(DeriveIden)]
enum ApprovalsDelivered {
    /// The decision was sent to the task's agent (false while pending).
    Delivered,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Approvals::Table)
                    .add_column(
                        ColumnDef::new(ApprovalsDelivered::Delivered)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Approvals::Table)
                    .drop_column(ApprovalsDelivered::Delivered)
                    .to_owned(),
            )
            .await
    }
}
