//! Baton's database schema, as a sea-orm-migration [`Migrator`].
//!
//! The same migrations run on SQLite (the default) and PostgreSQL. Timestamps
//! are Unix milliseconds in `BIGINT` columns, which both handle the same way.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_initial;
mod m20261201_000001_thread_and_retry;
mod m20261206_000001_access;
mod m20261206_000090_event_inbox;
mod m20261207_000010_notify;
mod m20261207_000100_task_files;
mod m20261207_000110_follow_ups;
mod m20261207_000120_approvals;
mod m20261207_000130_instances;
mod m20261207_000140_editor;
mod m20261207_000150_approvals_delivered;
mod m20261208_000010_queue_take;

/// The condition of the ended tasks whose requester is still to be told (the
/// partial index's condition, which queries must repeat word for word).
pub use m20261207_000010_notify::PENDING as NOTIFY_PENDING;

/// The condition of the follow-ups still waiting for their turn (the partial
/// index's condition, which queries must repeat word for word).
pub use m20261207_000110_follow_ups::WAITING as FOLLOW_UPS_WAITING;

/// Runs Baton's migrations in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_initial::Migration),
            Box::new(m20261201_000001_thread_and_retry::Migration),
            Box::new(m20261206_000001_access::Migration),
            Box::new(m20261206_000090_event_inbox::Migration),
            Box::new(m20261207_000010_notify::Migration),
            Box::new(m20261207_000100_task_files::Migration),
            Box::new(m20261207_000110_follow_ups::Migration),
            Box::new(m20261207_000120_approvals::Migration),
            Box::new(m20261207_000130_instances::Migration),
            Box::new(m20261207_000140_editor::Migration),
            Box::new(m20261207_000150_approvals_delivered::Migration),
            Box::new(m20261208_000010_queue_take::Migration),
        ]
    }
}
