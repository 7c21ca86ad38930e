//! The first schema: tasks, agents, projects, Slack event ids, the audit log.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The tasks table: one row per task, the single source of truth for its state.
#[derive(DeriveIden)]
pub enum Tasks {
    Table,
    Id,
    Persona,
    Project,
    Prompt,
    Requester,
    TeamId,
    ChannelId,
    ThreadTs,
    MessageTs,
    State,
    Agent,
    ParentId,
    SessionId,
    Model,
    CreatedAt,
    UpdatedAt,
    QueuedAt,
    DispatchedAt,
    StartedAt,
    FinishedAt,
    LastSeq,
    CancelRequested,
    WaitReason,
    Steps,
    StepCount,
    OutputTail,
    Result,
    ResultMeta,
    Error,
    FailureCause,
    SlackSynced,
    ResultPartsPosted,
}

/// Agents and their hashed keys.
#[derive(DeriveIden)]
pub enum Agents {
    Table,
    Name,
    KeyHash,
    CreatedAt,
    CreatedBy,
    RevokedAt,
}

/// Projects and the channels bound to them.
#[derive(DeriveIden)]
pub enum Projects {
    Table,
    Name,
    ChannelId,
    CreatedAt,
}

/// Slack event ids already handled, so retries never create a second task.
#[derive(DeriveIden)]
pub enum SlackEvents {
    Table,
    EventId,
    ReceivedAt,
}

/// Every admin action.
#[derive(DeriveIden)]
pub enum AuditLog {
    Table,
    Id,
    At,
    Actor,
    Action,
    Target,
    Detail,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tasks::Table)
                    .col(
                        ColumnDef::new(Tasks::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Tasks::Persona).string().not_null())
                    .col(ColumnDef::new(Tasks::Project).string().not_null())
                    .col(ColumnDef::new(Tasks::Prompt).text().not_null())
                    .col(ColumnDef::new(Tasks::Requester).string().not_null())
                    .col(ColumnDef::new(Tasks::TeamId).string().not_null())
                    .col(ColumnDef::new(Tasks::ChannelId).string().not_null())
                    .col(ColumnDef::new(Tasks::ThreadTs).string().null())
                    .col(ColumnDef::new(Tasks::MessageTs).string().null())
                    .col(ColumnDef::new(Tasks::State).string().not_null())
                    .col(ColumnDef::new(Tasks::Agent).string().null())
                    .col(ColumnDef::new(Tasks::ParentId).big_integer().null())
                    .col(ColumnDef::new(Tasks::SessionId).string().null())
                    .col(ColumnDef::new(Tasks::Model).string().null())
                    .col(ColumnDef::new(Tasks::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Tasks::UpdatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Tasks::QueuedAt).big_integer().not_null())
                    .col(ColumnDef::new(Tasks::DispatchedAt).big_integer().null())
                    .col(ColumnDef::new(Tasks::StartedAt).big_integer().null())
                    .col(ColumnDef::new(Tasks::FinishedAt).big_integer().null())
                    .col(
                        ColumnDef::new(Tasks::LastSeq)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(Tasks::CancelRequested)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ColumnDef::new(Tasks::WaitReason).string().null())
                    .col(ColumnDef::new(Tasks::Steps).text().not_null().default("[]"))
                    .col(
                        ColumnDef::new(Tasks::StepCount)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(Tasks::OutputTail)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(ColumnDef::new(Tasks::Result).text().null())
                    .col(ColumnDef::new(Tasks::ResultMeta).text().null())
                    .col(ColumnDef::new(Tasks::Error).text().null())
                    .col(ColumnDef::new(Tasks::FailureCause).string().null())
                    .col(
                        ColumnDef::new(Tasks::SlackSynced)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(Tasks::ResultPartsPosted)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        // The offline queue: a project's queued tasks in order.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_state_project_id")
                    .table(Tasks::Table)
                    .col(Tasks::State)
                    .col(Tasks::Project)
                    .col(Tasks::Id)
                    .to_owned(),
            )
            .await?;
        // An agent's tasks, for reconciliation and the grace period.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_agent_state")
                    .table(Tasks::Table)
                    .col(Tasks::Agent)
                    .col(Tasks::State)
                    .to_owned(),
            )
            .await?;
        // A thread reply finds its task by the task message's ts.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_channel_message")
                    .table(Tasks::Table)
                    .col(Tasks::ChannelId)
                    .col(Tasks::MessageTs)
                    .to_owned(),
            )
            .await?;
        // Messages not yet in their final state in Slack, for restarts.
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_slack_synced")
                    .table(Tasks::Table)
                    .col(Tasks::SlackSynced)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Agents::Table)
                    .col(
                        ColumnDef::new(Agents::Name)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Agents::KeyHash).string().not_null())
                    .col(ColumnDef::new(Agents::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Agents::CreatedBy).string().null())
                    .col(ColumnDef::new(Agents::RevokedAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_agents_key_hash")
                    .table(Agents::Table)
                    .col(Agents::KeyHash)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Projects::Table)
                    .col(
                        ColumnDef::new(Projects::Name)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Projects::ChannelId).string().null())
                    .col(ColumnDef::new(Projects::CreatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_projects_channel")
                    .table(Projects::Table)
                    .col(Projects::ChannelId)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SlackEvents::Table)
                    .col(
                        ColumnDef::new(SlackEvents::EventId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(SlackEvents::ReceivedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .col(
                        ColumnDef::new(AuditLog::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(AuditLog::At).big_integer().not_null())
                    .col(ColumnDef::new(AuditLog::Actor).string().not_null())
                    .col(ColumnDef::new(AuditLog::Action).string().not_null())
                    .col(ColumnDef::new(AuditLog::Target).string().not_null())
                    .col(
                        ColumnDef::new(AuditLog::Detail)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditLog::Table.into_iden(),
            SlackEvents::Table.into_iden(),
            Projects::Table.into_iden(),
            Agents::Table.into_iden(),
            Tasks::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
