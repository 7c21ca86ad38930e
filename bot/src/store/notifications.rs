//! The requester's notification of a task's end: the ended tasks still to
//! notify, a guarded claim on each, and its settlement (see `crate::notify`).

use anyhow::Context;
use baton_migrations::NOTIFY_PENDING as PENDING;
use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::Store;
use super::entities::task;

/// `notified_at` of a claim whose post may or may not have reached Slack: it
/// is older than any lease, so the next pass takes it, and looks in Slack
/// for the notification before it posts again.
pub const CLAIM_UNKNOWN: i64 = 1;

/// What a notification needs of an ended task.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct PendingNotice {
    /// The task.
    pub id: i64,
    /// Who asked, to mention.
    pub requester: String,
    /// The channel of the task's message.
    pub channel_id: String,
    /// The thread the task was asked in, if any.
    pub thread_ts: Option<String>,
    /// The task's message (the pending query only returns posted ones).
    pub message_ts: Option<String>,
    /// How it ended.
    pub state: String,
    /// Why it failed, or who cancelled it.
    pub error: Option<String>,
    /// The claim this notice was read with (None: unclaimed); a new claim
    /// replaces exactly this value.
    pub notified_at: Option<i64>,
}

/// The `notified_at` column, which the `task` entity does not map.
fn notified_at() -> Alias {
    Alias::new("notified_at")
}

/// The `notify_done` column.
fn notify_done() -> Alias {
    Alias::new("notify_done")
}

impl Store {
    /// Ended tasks whose message is posted and whose requester is not yet
    /// notified, oldest first, at most `limit`: unclaimed, or claimed before
    /// `stale_before` (Unix ms; a claim whose holder is gone).
    pub async fn pending_notices(
        &self,
        stale_before: i64,
        limit: u64,
    ) -> anyhow::Result<Vec<PendingNotice>> {
        pending_query(stale_before, limit)
            .into_model::<PendingNotice>()
            .all(&self.read)
            .await
            .context("Cannot read the tasks whose requester is to be told")
    }

    /// Claims task `id`'s notification at `now` (Unix ms), if its claim is
    /// still `seen` (as read by [`Store::pending_notices`]) and it is not
    /// settled. True for the one caller that gets it.
    pub async fn claim_notice(&self, id: i64, seen: Option<i64>, now: i64) -> anyhow::Result<bool> {
        let claim = match seen {
            None => Expr::col(notified_at()).is_null(),
            Some(at) => Expr::col(notified_at()).eq(at),
        };
        self.set_claim(id, claim, Some(now))
            .await
            .context("Cannot claim the notification")
    }

    /// Gives up claim `claim` of task `id`: `Some(CLAIM_UNKNOWN)` when the post may
    /// have happened, None when it surely did not.
    pub async fn release_notice(
        &self,
        id: i64,
        claim: i64,
        to: Option<i64>,
    ) -> anyhow::Result<bool> {
        self.set_claim(id, Expr::col(notified_at()).eq(claim), to)
            .await
            .context("Cannot release the notification's claim")
    }

    /// Sets task `id`'s claim to `to` where `condition` holds and it is not settled.
    async fn set_claim(
        &self,
        id: i64,
        condition: sea_orm::sea_query::SimpleExpr,
        to: Option<i64>,
    ) -> Result<bool, sea_orm::DbErr> {
        let update = Query::update()
            .table(task::Entity)
            .value(notified_at(), to)
            .and_where(Expr::col(task::Column::Id).eq(id))
            .and_where(Expr::col(notify_done()).eq(false))
            .and_where(condition)
            .to_owned();
        let res = self
            .write(self.db.get_database_backend().build(&update))
            .await?;
        Ok(res == 1)
    }

    /// Settles task `id`'s notification: posted, found already posted, or given up.
    pub async fn notice_done(&self, id: i64) -> anyhow::Result<()> {
        let update = Query::update()
            .table(task::Entity)
            .value(notify_done(), true)
            .and_where(Expr::col(task::Column::Id).eq(id))
            .to_owned();
        self.write(self.db.get_database_backend().build(&update))
            .await
            .context("Cannot record the notification")?;
        Ok(())
    }

    /// Settles, unsent, the notifications of up to `limit` ended tasks
    /// (`BATON_NOTIFY=off`: turning it on later tells nobody about old news).
    /// The number settled.
    pub async fn skip_notices(&self, limit: u64) -> anyhow::Result<u64> {
        let ids: Vec<i64> = task::Entity::find()
            .select_only()
            .column(task::Column::Id)
            .filter(Expr::cust(PENDING))
            .order_by_asc(task::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.read)
            .await
            .context("Cannot read the tasks whose requester is to be told")?;
        if ids.is_empty() {
            return Ok(0);
        }
        let update = Query::update()
            .table(task::Entity)
            .value(notify_done(), true)
            .and_where(task::Column::Id.is_in(ids))
            .to_owned();
        self.write(self.db.get_database_backend().build(&update))
            .await
            .context("Cannot record the skipped notifications")
    }

    /// Whether task `id`'s notification is settled, and its claim; for tests and tools.
    pub async fn notice_state(&self, id: i64) -> anyhow::Result<Option<(bool, Option<i64>)>> {
        task::Entity::find()
            .select_only()
            .column_as(Expr::col(notify_done()), "done")
            .column_as(Expr::col(notified_at()), "at")
            .filter(task::Column::Id.eq(id))
            .into_tuple()
            .one(&self.db)
            .await
            .context("Cannot read the notification's state")
    }
}

/// The query of [`Store::pending_notices`].
fn pending_query(stale_before: i64, limit: u64) -> sea_orm::Select<task::Entity> {
    task::Entity::find()
        .select_only()
        .columns([
            task::Column::Id,
            task::Column::Requester,
            task::Column::ChannelId,
            task::Column::ThreadTs,
            task::Column::MessageTs,
            task::Column::State,
            task::Column::Error,
        ])
        .column_as(Expr::col(notified_at()), "notified_at")
        // Word for word the partial index's condition, so that it is used.
        .filter(Expr::cust(PENDING))
        .filter(
            sea_orm::Condition::any()
                .add(Expr::col(notified_at()).is_null())
                .add(Expr::col(notified_at()).lt(stale_before)),
        )
        .order_by_asc(task::Column::Id)
        .limit(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{DbBackend, QueryTrait, Statement};

    /// The pending notifications are found through the partial index, not by
    /// reading the table (which may hold a million ended tasks).
    #[tokio::test]
    async fn the_pending_query_uses_the_partial_index_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("n.db").display());
        let store = Store::connect(&url).await.expect("connect");
        let sql = pending_query(1_000, 20)
            .build(DbBackend::Sqlite)
            .to_string();
        let plan = store
            .connection()
            .query_all(Statement::from_string(
                DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {sql}"),
            ))
            .await
            .expect("plan");
        let plan: Vec<String> = plan
            .iter()
            .map(|r| r.try_get::<String>("", "detail").expect("detail"))
            .collect();
        assert!(
            plan.iter().any(|d| d.contains("idx_tasks_notify_pending")),
            "{plan:?}"
        );
    }
}
