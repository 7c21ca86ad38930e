//! Slack events are kept with their payload until handled, so an event
//! acknowledged just before a crash is handled after the restart (Slack does
//! not deliver an acknowledged event again).

use sea_orm_migration::async_trait;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The `slack_events` table and its new columns.
#[derive(DeriveIden)]
enum SlackEventsInbox {
    /// The table.
    #[sea_orm(iden = "slack_events")]
    Table,
    /// The event envelope as received (JSON), until it is handled.
    Payload,
    /// Unix ms when it was handled; NULL while it waits.
    HandledAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(SlackEventsInbox::Table)
                    .add_column(ColumnDef::new(SlackEventsInbox::Payload).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SlackEventsInbox::Table)
                    .add_column(
                        ColumnDef::new(SlackEventsInbox::HandledAt)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [SlackEventsInbox::HandledAt, SlackEventsInbox::Payload] {
            manager
                .alter_table(
                    Table::alter()
                        .table(SlackEventsInbox::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
