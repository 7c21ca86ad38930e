//! Approval requests: a running task's tool call that waits for a person's
//! yes, kept until decided (approved, denied, timed out) or closed by the
//! task's end, so a request survives a bot restart and an agent reconnect
//! and its decision is applied exactly once.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The approvals table: one row per request of a task.
#[derive(DeriveIden)]
pub enum Approvals {
    Table,
    /// The task that asks.
    TaskId,
    /// The request's number within the task, from 1 (counted by the agent).
    Request,
    /// What asks: a Claude Code tool name, or `command`.
    Tool,
    /// A short view of what the tool wants to do.
    Input,
    /// `pending`, `approved`, `denied`, `timed_out`, or `closed` (the task
    /// ended first).
    State,
    /// The Slack user who decided; NULL while pending, for a timeout, or closed.
    DecidedBy,
    /// Unix ms (the bot's wall clock) when first received; the timeout counts from it.
    RequestedAt,
    /// Unix ms when decided or closed.
    DecidedAt,
    /// The thread reply that mentions the requester is in Slack.
    Posted,
}

/// The pending requests, which the sweep reads every second.
const STATE_INDEX: &str = "idx_approvals_state";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Approvals as A;
        manager
            .create_table(
                Table::create()
                    .table(A::Table)
                    .col(ColumnDef::new(A::TaskId).big_integer().not_null())
                    .col(ColumnDef::new(A::Request).big_integer().not_null())
                    .col(ColumnDef::new(A::Tool).string().not_null())
                    .col(ColumnDef::new(A::Input).text().not_null())
                    .col(ColumnDef::new(A::State).string().not_null())
                    .col(ColumnDef::new(A::DecidedBy).string().null())
                    .col(ColumnDef::new(A::RequestedAt).big_integer().not_null())
                    .col(ColumnDef::new(A::DecidedAt).big_integer().null())
                    .col(
                        ColumnDef::new(A::Posted)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .primary_key(Index::create().col(A::TaskId).col(A::Request))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(STATE_INDEX)
                    .table(A::Table)
                    .col(A::State)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Approvals::Table).to_owned())
            .await
    }
}
