//! sea-orm entities, one per table of `baton-migrations`.

/// The `tasks` table.
pub mod task {
    use sea_orm::entity::prelude::*;

    /// One task row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "tasks")]
    pub struct Model {
        /// The task id, shown as `#N`.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// `code`, `review`, `plan` or `ops`.
        pub persona: String,
        /// The project it runs in.
        pub project: String,
        /// What to do.
        #[sea_orm(column_type = "Text")]
        pub prompt: String,
        /// The Slack user who asked.
        pub requester: String,
        /// The Slack workspace.
        pub team_id: String,
        /// The channel the task's message lives in.
        pub channel_id: String,
        /// The thread the request came from, if any.
        pub thread_ts: Option<String>,
        /// The task's one Slack message, once posted.
        pub message_ts: Option<String>,
        /// The lifecycle state (see `TaskState`).
        pub state: String,
        /// The agent it was dispatched to.
        pub agent: Option<String>,
        /// The task this one retries or follows up.
        pub parent_id: Option<i64>,
        /// The executor session: to resume (follow-up) or produced (result).
        pub session_id: Option<String>,
        /// The model to use, when chosen.
        pub model: Option<String>,
        /// Unix ms when created.
        pub created_at: i64,
        /// Unix ms of the last change.
        pub updated_at: i64,
        /// Unix ms when it (last) entered the queue; the TTL counts from here.
        pub queued_at: i64,
        /// Unix ms when last dispatched.
        pub dispatched_at: Option<i64>,
        /// Unix ms when the agent accepted it.
        pub started_at: Option<i64>,
        /// Unix ms when it reached a terminal state.
        pub finished_at: Option<i64>,
        /// The highest event sequence number applied.
        pub last_seq: i64,
        /// A cancel was asked for and not yet confirmed by the agent.
        pub cancel_requested: bool,
        /// Why it waits in the queue, for its message.
        pub wait_reason: Option<String>,
        /// The last steps, a JSON array of strings.
        #[sea_orm(column_type = "Text")]
        pub steps: String,
        /// How many steps there were in all.
        pub step_count: i64,
        /// The tail of the output.
        #[sea_orm(column_type = "Text")]
        pub output_tail: String,
        /// The result text, when completed.
        #[sea_orm(column_type = "Text", nullable)]
        pub result: Option<String>,
        /// Cost, tokens, turns, duration as JSON.
        #[sea_orm(column_type = "Text", nullable)]
        pub result_meta: Option<String>,
        /// The error, when failed.
        #[sea_orm(column_type = "Text", nullable)]
        pub error: Option<String>,
        /// The failure cause, when failed.
        pub failure_cause: Option<String>,
        /// Slack shows the task's final state.
        pub slack_synced: bool,
        /// Result continuation replies already posted in the thread.
        pub result_parts_posted: i32,
        /// The task that retried this one (0 while that retry is being created);
        /// read it through [`crate::store::Task::retry`].
        pub retried_as: Option<i64>,
        /// The task this follow-up waits for (a reply sent while the thread's
        /// task had not ended); None once it may run. Never dispatched while set.
        pub after_task: Option<i64>,
        /// The agent holding `session_id`: a task resuming a session goes to
        /// no other agent (the session only exists on that machine).
        pub session_agent: Option<String>,
        /// What its message shows of its approval requests (pending ones
        /// with their buttons, then the latest decisions); not a column: kept
        /// with the task's live view and read from the `approvals` table.
        #[sea_orm(ignore)]
        pub approvals: Vec<crate::model::ShownApproval>,
    }

    /// No relations are navigated through sea-orm.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `agents` table.
pub mod agent {
    use sea_orm::entity::prelude::*;

    /// One agent and its key's hash.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "agents")]
    pub struct Model {
        /// The agent's name; the key is bound to it.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// SHA-256 of the key, hex.
        pub key_hash: String,
        /// Unix ms when added.
        pub created_at: i64,
        /// Who added it (a Slack user id, or `BATON_AGENT_KEYS`).
        pub created_by: Option<String>,
        /// Unix ms when revoked.
        pub revoked_at: Option<i64>,
        /// Comma-separated projects the key may serve; None: any.
        #[sea_orm(column_type = "Text", nullable)]
        pub projects: Option<String>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `projects` table.
pub mod project {
    use sea_orm::entity::prelude::*;

    /// One project and the channel bound to it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "projects")]
    pub struct Model {
        /// The project's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The channel whose tasks go to this project.
        pub channel_id: Option<String>,
        /// Unix ms when first seen.
        pub created_at: i64,
        /// Comma-separated personas the project takes; None: all.
        pub personas: Option<String>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `slack_events` table.
pub mod slack_event {
    use sea_orm::entity::prelude::*;

    /// A Slack event id already handled.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "slack_events")]
    pub struct Model {
        /// Slack's `event_id`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        /// Unix ms when received.
        pub received_at: i64,
        /// The event envelope as received (JSON), kept until it is handled.
        pub payload: Option<String>,
        /// Unix ms when it was handled; None while it waits (or, with no
        /// payload, for ids recorded before payloads were kept).
        pub handled_at: Option<i64>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `audit_log` table.
pub mod audit {
    use sea_orm::entity::prelude::*;

    /// One admin action.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_log")]
    pub struct Model {
        /// Row id.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// Unix ms.
        pub at: i64,
        /// The Slack user who acted.
        pub actor: String,
        /// What they did (`agent.add`, `health.reset`, ...).
        pub action: String,
        /// What they did it to.
        pub target: String,
        /// Anything else worth keeping.
        #[sea_orm(column_type = "Text")]
        pub detail: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `project_access` table.
pub mod project_access {
    use sea_orm::entity::prelude::*;

    /// One entry of a project's access list.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "project_access")]
    pub struct Model {
        /// Row id.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The project.
        pub project: String,
        /// `user`, `group` or `channel`.
        pub kind: String,
        /// The Slack id.
        pub entry_id: String,
        /// The admin who added it.
        pub added_by: String,
        /// Unix ms.
        pub added_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `project_approvers` table.
pub mod project_approver {
    use sea_orm::entity::prelude::*;

    /// One person or user group who may answer a project's approvals.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "project_approvers")]
    pub struct Model {
        /// Row id.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The project.
        pub project: String,
        /// `user` or `group`.
        pub kind: String,
        /// The Slack id.
        pub entry_id: String,
        /// The admin who added it.
        pub added_by: String,
        /// Unix ms.
        pub added_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `approvals` table.
pub mod approval {
    use sea_orm::entity::prelude::*;

    /// One approval request of a task.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "approvals")]
    pub struct Model {
        /// The task that asks.
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: i64,
        /// The request's number within the task, from 1.
        #[sea_orm(primary_key, auto_increment = false)]
        pub request: i64,
        /// What asks: a Claude Code tool name, or `command`.
        pub tool: String,
        /// A short view of what the tool wants to do.
        #[sea_orm(column_type = "Text")]
        pub input: String,
        /// `pending`, `approved`, `denied`, `timed_out` or `closed` (see `ApprovalState`).
        pub state: String,
        /// The Slack user who decided.
        pub decided_by: Option<String>,
        /// Unix ms (the bot's wall clock) when first received.
        pub requested_at: i64,
        /// Unix ms when decided or closed.
        pub decided_at: Option<i64>,
        /// The thread reply that mentions the requester is in Slack.
        pub posted: bool,
        /// The decision was sent to the task's agent (by the process holding it).
        pub delivered: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `task_files` table.
pub mod task_file {
    use sea_orm::entity::prelude::*;

    /// One file attached in Slack to the message that started a task.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "task_files")]
    pub struct Model {
        /// The task.
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: i64,
        /// Slack's file id (`F…`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub file_id: String,
        /// Its place among the task's files, in the message's order.
        pub position: i32,
        /// The safe name it is written under in `.baton/files/`.
        pub name: String,
        /// Its size in bytes, as Slack announced it.
        pub size: i64,
        /// Slack's `url_private_download`, fetched with the bot token.
        #[sea_orm(column_type = "Text")]
        pub url: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
