//! Several bot processes on one database: each registers in `instances` with
//! a lease it renews, and `agents.instance` says which process holds the
//! agent's socket now (NULL: none). A task whose agent is held by a live
//! process is never taken over by another.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

use crate::m20261121_000001_initial::Agents;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The table of running bot processes.
#[derive(DeriveIden)]
enum Instances {
    Table,
    /// A random id the process drew at start.
    Id,
    /// Unix ms when it started.
    StartedAt,
    /// Unix ms until which it is alive unless it renews.
    LeaseUntil,
}

/// The new column of the agents table.
#[derive(DeriveIden)]
enum AgentsInstance {
    /// The instance holding the agent's connection; NULL when none does.
    Instance,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Instances::Table)
                    .col(
                        ColumnDef::new(Instances::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Instances::StartedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Instances::LeaseUntil)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .add_column(ColumnDef::new(AgentsInstance::Instance).string().null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .drop_column(AgentsInstance::Instance)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Instances::Table).to_owned())
            .await?;
        Ok(())
    }
}
