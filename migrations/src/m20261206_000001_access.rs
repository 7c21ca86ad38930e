//! Who may do what: projects' access lists, personas and approvers, the
//! projects each agent key may serve, and the indexes behind a person's own
//! tasks and an admin's list of tasks in one state.

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

use crate::m20261121_000001_initial::{Agents, Projects, Tasks};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A project's access list: Slack users, user groups and channels.
#[derive(DeriveIden)]
pub enum ProjectAccess {
    Table,
    Id,
    /// The project's name.
    Project,
    /// `user`, `group` or `channel`.
    Kind,
    /// The Slack id (`U…`, `S…`, `C…`).
    EntryId,
    /// The admin who added it.
    AddedBy,
    /// Unix ms.
    AddedAt,
}

/// Who may answer a project's approval requests besides the requester and admins.
#[derive(DeriveIden)]
pub enum ProjectApprovers {
    Table,
    Id,
    /// The project's name.
    Project,
    /// `user` or `group`.
    Kind,
    /// The Slack id (`U…` or `S…`).
    EntryId,
    /// The admin who added it.
    AddedBy,
    /// Unix ms.
    AddedAt,
}

/// The new column of the projects table.
#[derive(DeriveIden)]
enum ProjectsAccess {
    /// Comma-separated personas the project takes; NULL: all of them.
    Personas,
}

/// The new column of the agents table.
#[derive(DeriveIden)]
enum AgentsGrant {
    /// Comma-separated projects the key may serve; NULL: any (keys made before
    /// this migration keep working as before).
    Projects,
}

/// One entry once per project.
const ACCESS_UNIQUE: &str = "idx_project_access_entry";
/// One approver once per project.
const APPROVERS_UNIQUE: &str = "idx_project_approvers_entry";
/// A person's own recent tasks (`/baton status`).
const REQUESTER_INDEX: &str = "idx_tasks_requester_id";
/// The newest tasks in one state (`/baton-admin tasks STATE`).
const STATE_INDEX: &str = "idx_tasks_state_id";

/// The columns both lists share.
fn list_table<T: IntoIden + 'static>(
    table: T,
    id: T,
    project: T,
    kind: T,
    entry: T,
    by: T,
    at: T,
) -> TableCreateStatement {
    Table::create()
        .table(table)
        .col(
            ColumnDef::new(id)
                .big_integer()
                .not_null()
                .auto_increment()
                .primary_key(),
        )
        .col(ColumnDef::new(project).string().not_null())
        .col(ColumnDef::new(kind).string().not_null())
        .col(ColumnDef::new(entry).string().not_null())
        .col(ColumnDef::new(by).string().not_null())
        .col(ColumnDef::new(at).big_integer().not_null())
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use ProjectAccess as A;
        use ProjectApprovers as P;
        manager
            .create_table(list_table(
                A::Table,
                A::Id,
                A::Project,
                A::Kind,
                A::EntryId,
                A::AddedBy,
                A::AddedAt,
            ))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ACCESS_UNIQUE)
                    .table(A::Table)
                    .col(A::Project)
                    .col(A::Kind)
                    .col(A::EntryId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(list_table(
                P::Table,
                P::Id,
                P::Project,
                P::Kind,
                P::EntryId,
                P::AddedBy,
                P::AddedAt,
            ))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(APPROVERS_UNIQUE)
                    .table(P::Table)
                    .col(P::Project)
                    .col(P::Kind)
                    .col(P::EntryId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // SQLite takes one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(Projects::Table)
                    .add_column(ColumnDef::new(ProjectsAccess::Personas).string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .add_column(ColumnDef::new(AgentsGrant::Projects).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(REQUESTER_INDEX)
                    .table(Tasks::Table)
                    .col(Tasks::Requester)
                    .col(Tasks::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(STATE_INDEX)
                    .table(Tasks::Table)
                    .col(Tasks::State)
                    .col(Tasks::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for index in [STATE_INDEX, REQUESTER_INDEX] {
            manager
                .drop_index(Index::drop().name(index).table(Tasks::Table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .drop_column(AgentsGrant::Projects)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Projects::Table)
                    .drop_column(ProjectsAccess::Personas)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(ProjectApprovers::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ProjectAccess::Table).to_owned())
            .await
    }
}
