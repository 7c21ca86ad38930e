//! Approval requests: recorded once per `(task, request)`, decided by one
//! guarded `UPDATE` that only moves a pending request (so two clicks at the
//! same moment decide it once), closed when their task ends first.

use anyhow::Context;
use baton_shared::protocol::Decision;
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Set,
};

use super::Store;
use super::entities::{approval, task};
use crate::model::{ApprovalState, ShownApproval};

/// One stored approval request.
pub type Approval = approval::Model;

/// Most pending requests one sweep looks at.
pub const PENDING_BATCH: u64 = 500;

impl Approval {
    /// Its state; an unreadable one counts as closed (nothing more to do with it).
    pub fn state(&self) -> ApprovalState {
        self.state.parse().unwrap_or(ApprovalState::Closed)
    }

    /// As a task's message shows it.
    pub fn shown(&self) -> ShownApproval {
        ShownApproval {
            request: u32::try_from(self.request).unwrap_or(u32::MAX),
            tool: self.tool.clone(),
            input: self.input.clone(),
            state: self.state(),
            decided_by: self.decided_by.clone(),
        }
    }
}

impl Store {
    /// Records request `request` of task `task` as pending at `now` (Unix
    /// ms), unless it is already recorded: true only for the first record.
    pub async fn record_approval(
        &self,
        task: i64,
        request: u32,
        tool: &str,
        input: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        let row = approval::ActiveModel {
            task_id: Set(task),
            request: Set(i64::from(request)),
            tool: Set(tool.to_owned()),
            input: Set(input.to_owned()),
            state: Set(ApprovalState::Pending.as_str().to_owned()),
            decided_by: Set(None),
            requested_at: Set(now),
            decided_at: Set(None),
            posted: Set(false),
            delivered: Set(false),
        };
        let insert = approval::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([approval::Column::TaskId, approval::Column::Request])
                    .do_nothing()
                    .to_owned(),
            )
            .build(self.db.get_database_backend());
        let inserted = self
            .write(insert)
            .await
            .context("Cannot record the approval request")?;
        Ok(inserted == 1)
    }

    /// Request `request` of task `task`, if recorded.
    pub async fn approval(&self, task: i64, request: u32) -> anyhow::Result<Option<Approval>> {
        approval::Entity::find_by_id((task, i64::from(request)))
            .one(&self.read)
            .await
            .context("Cannot read the approval request")
    }

    /// Every request of task `task`, in order.
    pub async fn approvals_of(&self, task: i64) -> anyhow::Result<Vec<Approval>> {
        approval::Entity::find()
            .filter(approval::Column::TaskId.eq(task))
            .order_by_asc(approval::Column::Request)
            .all(&self.read)
            .await
            .context("Cannot read the task's approval requests")
    }

    /// Decides request `request` of task `task` at `now`, by `by` (None for
    /// a timeout), if it is still pending. True for the one caller that
    /// decided it; false when it was decided (or closed) before.
    pub async fn decide_approval(
        &self,
        task: i64,
        request: u32,
        decision: Decision,
        by: Option<&str>,
        now: i64,
    ) -> anyhow::Result<bool> {
        let update = Query::update()
            .table(approval::Entity)
            .value(
                approval::Column::State,
                ApprovalState::of(decision).as_str(),
            )
            .value(approval::Column::DecidedBy, by.map(str::to_owned))
            .value(approval::Column::DecidedAt, now)
            .and_where(Expr::col(approval::Column::TaskId).eq(task))
            .and_where(Expr::col(approval::Column::Request).eq(i64::from(request)))
            .and_where(Expr::col(approval::Column::State).eq(ApprovalState::Pending.as_str()))
            .to_owned();
        let changed = self
            .write(self.db.get_database_backend().build(&update))
            .await
            .context("Cannot record the approval decision")?;
        Ok(changed == 1)
    }

    /// Closes task `task`'s pending requests at `now` (it ended before they
    /// were answered). The number closed.
    pub async fn close_approvals(&self, task: i64, now: i64) -> anyhow::Result<u64> {
        let update = Query::update()
            .table(approval::Entity)
            .value(approval::Column::State, ApprovalState::Closed.as_str())
            .value(approval::Column::DecidedAt, now)
            .and_where(Expr::col(approval::Column::TaskId).eq(task))
            .and_where(Expr::col(approval::Column::State).eq(ApprovalState::Pending.as_str()))
            .to_owned();
        self.write(self.db.get_database_backend().build(&update))
            .await
            .context("Cannot close the task's approval requests")
    }

    /// Records that the thread reply about request `request` of task `task` is in Slack.
    pub async fn approval_posted(&self, task: i64, request: u32) -> anyhow::Result<()> {
        let update = Query::update()
            .table(approval::Entity)
            .value(approval::Column::Posted, true)
            .and_where(Expr::col(approval::Column::TaskId).eq(task))
            .and_where(Expr::col(approval::Column::Request).eq(i64::from(request)))
            .to_owned();
        self.write(self.db.get_database_backend().build(&update))
            .await
            .context("Cannot record the approval's thread reply")?;
        Ok(())
    }

    /// Records that the decision of request `request` of task `task` was
    /// sent to the task's agent.
    pub async fn approval_delivered(&self, task: i64, request: u32) -> anyhow::Result<()> {
        let update = Query::update()
            .table(approval::Entity)
            .value(approval::Column::Delivered, true)
            .and_where(Expr::col(approval::Column::TaskId).eq(task))
            .and_where(Expr::col(approval::Column::Request).eq(i64::from(request)))
            .to_owned();
        self.write(self.db.get_database_backend().build(&update))
            .await
            .context("Cannot record that the approval decision was sent")?;
        Ok(())
    }

    /// The decided requests not yet sent to their agent, of the running tasks
    /// whose agent instance `me` holds, at most [`PENDING_BATCH`], each with
    /// its task's agent.
    pub async fn undelivered_decisions(&self, me: &str) -> anyhow::Result<Vec<(Approval, String)>> {
        let decided: Vec<&str> = [
            ApprovalState::Approved,
            ApprovalState::Denied,
            ApprovalState::TimedOut,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        let stmt = self.stmt(
            "SELECT a.*, t.agent AS task_agent FROM approvals a \
             JOIN tasks t ON t.id = a.task_id \
             JOIN agents g ON g.name = t.agent \
             WHERE g.instance = $1 AND t.state = $2 AND NOT a.delivered \
             AND a.state IN ($3, $4, $5) \
             ORDER BY a.decided_at LIMIT $6",
            vec![
                me.into(),
                crate::model::TaskState::Running.as_str().into(),
                decided[0].into(),
                decided[1].into(),
                decided[2].into(),
                (PENDING_BATCH as i64).into(),
            ],
        );
        let rows = self
            .read
            .query_all(stmt)
            .await
            .context("Cannot read the approval decisions to send")?;
        rows.iter()
            .map(|r| {
                let a = <approval::Model as sea_orm::FromQueryResult>::from_query_result(r, "")?;
                let agent: String = r.try_get("", "task_agent")?;
                Ok((a, agent))
            })
            .collect::<Result<_, sea_orm::DbErr>>()
            .context("an approval decision to send")
    }

    /// Pending requests, oldest first, at most [`PENDING_BATCH`], each with its task.
    pub async fn pending_approvals(&self) -> anyhow::Result<Vec<(Approval, super::Task)>> {
        let pending = approval::Entity::find()
            .filter(approval::Column::State.eq(ApprovalState::Pending.as_str()))
            .order_by_asc(approval::Column::RequestedAt)
            .limit(PENDING_BATCH)
            .all(&self.read)
            .await
            .context("Cannot read the pending approval requests")?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<i64> = pending.iter().map(|a| a.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let tasks = task::Entity::find()
            .filter(task::Column::Id.is_in(ids))
            .all(&self.read)
            .await
            .context("Cannot read the tasks of pending approval requests")?;
        Ok(pending
            .into_iter()
            .filter_map(|a| {
                let t = tasks.iter().find(|t| t.id == a.task_id)?.clone();
                Some((a, t))
            })
            .collect())
    }

    /// Whether any request is pending (a cheap look before a sweep).
    pub async fn any_pending_approval(&self) -> anyhow::Result<bool> {
        let one: Option<i64> = approval::Entity::find()
            .select_only()
            .column(approval::Column::TaskId)
            .filter(approval::Column::State.eq(ApprovalState::Pending.as_str()))
            .limit(1)
            .into_tuple()
            .one(&self.read)
            .await
            .context("Cannot read the pending approval requests")?;
        Ok(one.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        Store::connect(&url).await.expect("connect")
    }

    /// A request is recorded once; a repeat (even with another view) changes nothing.
    #[tokio::test]
    async fn a_request_is_recorded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        assert!(
            store
                .record_approval(7, 1, "Bash", "ls", 100)
                .await
                .expect("record")
        );
        assert!(
            !store
                .record_approval(7, 1, "Bash", "rm -rf /", 200)
                .await
                .expect("repeat")
        );
        let row = store.approval(7, 1).await.expect("read").expect("row");
        assert_eq!(
            (row.input.as_str(), row.requested_at, row.state()),
            ("ls", 100, ApprovalState::Pending)
        );
    }

    /// Two decisions at the same moment: exactly one is applied.
    #[tokio::test]
    async fn two_decisions_at_once_apply_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        store
            .record_approval(7, 1, "Bash", "ls", 100)
            .await
            .expect("record");
        let (a, b) = tokio::join!(
            store.decide_approval(7, 1, Decision::Approved, Some("U1"), 110),
            store.decide_approval(7, 1, Decision::Denied, Some("U2"), 110),
        );
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert!(a ^ b, "exactly one decision: {a} {b}");
        let row = store.approval(7, 1).await.expect("read").expect("row");
        let (state, by) = if a {
            (ApprovalState::Approved, "U1")
        } else {
            (ApprovalState::Denied, "U2")
        };
        assert_eq!((row.state(), row.decided_by.as_deref()), (state, Some(by)));
        // Nor can a decided request be closed.
        assert_eq!(store.close_approvals(7, 120).await.expect("close"), 0);
    }

    /// Closing a task's requests closes only its pending ones.
    #[tokio::test]
    async fn closing_moves_only_pending_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        for r in 1..=2 {
            store
                .record_approval(7, r, "Bash", "ls", 100)
                .await
                .expect("record");
        }
        store
            .decide_approval(7, 1, Decision::Approved, Some("U1"), 110)
            .await
            .expect("decide");
        assert!(store.any_pending_approval().await.expect("any"));
        assert_eq!(store.close_approvals(7, 120).await.expect("close"), 1);
        let states: Vec<ApprovalState> = store
            .approvals_of(7)
            .await
            .expect("read")
            .iter()
            .map(Approval::state)
            .collect();
        assert_eq!(states, [ApprovalState::Approved, ApprovalState::Closed]);
        assert!(!store.any_pending_approval().await.expect("any"));
        assert!(
            !store
                .decide_approval(7, 2, Decision::Denied, Some("U1"), 130)
                .await
                .expect("late")
        );
    }
}
