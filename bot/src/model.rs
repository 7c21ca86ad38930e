//! Domain types the bot's modules share: task states and the live task view.

use std::fmt;
use std::str::FromStr;

use baton_shared::TaskId;
use serde::{Deserialize, Serialize};

/// A task's place in its lifecycle:
/// `queued → dispatched → running → completed | failed | cancelled | expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting in its project's queue for an agent.
    Queued,
    /// Sent to an agent that has not accepted it yet.
    Dispatched,
    /// Accepted by its agent and running.
    Running,
    /// Ended successfully.
    Completed,
    /// Ended in failure.
    Failed,
    /// Cancelled by a person.
    Cancelled,
    /// Waited in the queue past its time to live.
    Expired,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Dispatched,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Expired,
    ];

    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Dispatched => "dispatched",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
        }
    }

    /// Whether the task has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
        )
    }

    /// Whether the Cancel button applies.
    pub fn can_cancel(self) -> bool {
        matches!(
            self,
            TaskState::Queued | TaskState::Dispatched | TaskState::Running
        )
    }

    /// Whether the Retry button applies.
    pub fn can_retry(self) -> bool {
        matches!(
            self,
            TaskState::Failed | TaskState::Cancelled | TaskState::Expired
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a task state"))
    }
}

/// Cost and usage of a completed task, stored as JSON beside its result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// Cost in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Model turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u64>,
    /// Run time in ms, as the executor measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Whether an ended task was run again, as read from its row by
/// [`crate::store::Task::retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not retried: a retry may start (if its state allows one).
    None,
    /// A retry is being created right now (claimed, its task not yet written).
    Claimed,
    /// Retried as this task.
    As(TaskId),
}

/// Where an approval request stands (the `approvals.state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalState {
    /// Waiting for a person (or the timeout).
    Pending,
    /// A person said yes.
    Approved,
    /// A person said no.
    Denied,
    /// Nobody answered within `BATON_APPROVAL_TIMEOUT_SECS`.
    TimedOut,
    /// The task ended before anyone answered: nothing more to decide.
    Closed,
}

impl ApprovalState {
    /// Every state, for parsing.
    pub const ALL: [ApprovalState; 5] = [
        ApprovalState::Pending,
        ApprovalState::Approved,
        ApprovalState::Denied,
        ApprovalState::TimedOut,
        ApprovalState::Closed,
    ];

    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::TimedOut => "timed_out",
            ApprovalState::Closed => "closed",
        }
    }

    /// The state a decision leaves a request in.
    pub fn of(decision: baton_shared::protocol::Decision) -> Self {
        use baton_shared::protocol::Decision;
        match decision {
            Decision::Approved => ApprovalState::Approved,
            Decision::Denied => ApprovalState::Denied,
            Decision::TimedOut => ApprovalState::TimedOut,
        }
    }

    /// The decision this state records, if it is one.
    pub fn decision(self) -> Option<baton_shared::protocol::Decision> {
        use baton_shared::protocol::Decision;
        match self {
            ApprovalState::Approved => Some(Decision::Approved),
            ApprovalState::Denied => Some(Decision::Denied),
            ApprovalState::TimedOut => Some(Decision::TimedOut),
            ApprovalState::Pending | ApprovalState::Closed => None,
        }
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApprovalState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApprovalState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not an approval state"))
    }
}

/// One approval request as a task's message shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownApproval {
    /// The request's number within the task.
    pub request: u32,
    /// What asks.
    pub tool: String,
    /// What it wants to do.
    pub input: String,
    /// Where it stands.
    pub state: ApprovalState,
    /// Who decided, for a person's decision.
    pub decided_by: Option<String>,
}
