//! Every message a person sees for a refusal or an error, each built by a named
//! function: what happened and what to do next.

use baton_shared::TaskId;

use crate::model::TaskState;

/// Admin commands with no admins configured.
pub fn admins_not_configured() -> String {
    "Admin commands are turned off: no admins are configured. Set `BATON_ADMINS` to a comma-separated list of Slack user ids (like `U0123ABC`) and restart `baton-bot`.".into()
}

/// Admin command from a non-admin. Says nothing about the system.
pub fn not_an_admin() -> String {
    "Sorry, `/baton-admin` is for Baton admins only. Ask an admin if you need something changed."
        .into()
}

/// No such task.
pub fn no_such_task(id: TaskId) -> String {
    format!("There is no task {id}. `/baton status` lists your recent tasks.")
}

/// Someone else's task.
pub fn not_yours(id: TaskId, verb: &str) -> String {
    format!("Only the person who started task {id} (or an admin) can {verb} it.")
}

/// Cancel of a task that already ended.
pub fn already_ended(id: TaskId, state: TaskState) -> String {
    format!(
        "Task {id} already ended ({state}); there is nothing to cancel. `/baton retry {id}` runs it again."
    )
}

/// Retry of a task that has not failed.
pub fn cannot_retry(id: TaskId, state: TaskState) -> String {
    format!("Task {id} is {state}; only failed, cancelled or expired tasks can be retried.")
}

/// The queue of a project is full.
pub fn queue_full(project: &str, max: u64) -> String {
    format!(
        "The `{project}` queue is full ({max} tasks are waiting for an agent), so this task was not created. Try again once some have run, or ask an admin to check `/baton-admin health`."
    )
}

/// Unknown project.
pub fn unknown_project(name: &str, usable: &[String], any: bool) -> String {
    if !any {
        format!(
            "There is no project `{name}`: no agent has announced a project yet. Connect an agent that serves `{name}` (see the README), then try again."
        )
    } else if usable.is_empty() {
        format!(
            "There is no project `{name}` that you may use, and no other project you may use either. Ask an admin to add you: `/baton-admin project allow PROJECT @you`."
        )
    } else {
        format!(
            "There is no project `{name}`. Projects you may use: {}. Use `--project NAME`.",
            quote_list(usable)
        )
    }
}

/// No project could be chosen.
pub fn no_project(usable: &[String], any: bool) -> String {
    if !any {
        "No project is known yet: connect an agent (it announces the projects it serves), then try again.".into()
    } else if usable.is_empty() {
        "This channel is not bound to a project, and there is no project you may use. Ask an admin to add you: `/baton-admin project allow PROJECT @you`.".into()
    } else {
        format!(
            "This channel is not bound to a project. Projects you may use: {}. Add `--project NAME`, or ask an admin to run `/baton-admin project bind PROJECT` here.",
            quote_list(usable)
        )
    }
}

/// Per-user rate limit hit.
pub fn rate_limited(wait_secs: u64) -> String {
    format!(
        "You have started many tasks in a short time. Try again in {} (the limit keeps the agents fair for everyone).",
        human_secs(wait_secs)
    )
}

/// The bot is shutting down.
pub fn shutting_down() -> String {
    "Baton is restarting and not taking new tasks right now. Try again in a minute.".into()
}

/// Something went wrong inside.
pub fn internal_error() -> String {
    "Something went wrong on Baton's side and nothing was changed. Try again; if it keeps happening, tell an admin (the bot's log has the details).".into()
}

/// Cancel accepted.
pub fn cancel_requested(id: TaskId, queued: bool) -> String {
    if queued {
        format!("Task {id} was removed from the queue.")
    } else {
        format!("Cancelling task {id}; its message will show when the agent has stopped it.")
    }
}

/// Retry accepted.
pub fn retried(old: TaskId, new: TaskId) -> String {
    format!("Task {old} runs again as {new}.")
}

/// Retry of a task that was already retried (a double click, or a second try).
pub fn already_retried(old: TaskId, new: TaskId) -> String {
    format!(
        "Task {old} was already retried as {new}; nothing new was started. `/baton status {new}` shows how it is doing, and `/baton retry {new}` runs it again if it failed too."
    )
}

/// Retry of a task whose retry is being created right now.
pub fn retry_in_progress(id: TaskId) -> String {
    format!("Task {id} is being retried right now; nothing more was started.")
}

/// A second cancel while the agent has not confirmed the first.
pub fn cancel_already_requested(id: TaskId) -> String {
    format!(
        "Task {id} is already being cancelled; its message will show when the agent has stopped it."
    )
}

/// A cancel that kept racing the task's own moves.
pub fn cancel_try_again(id: TaskId) -> String {
    format!("Task {id} changed while it was being cancelled; nothing was changed. Try again.")
}

/// The note in a task's thread when a reply came while a task of the thread
/// had not ended: the reply is kept as task `id`, which runs after `after`.
pub fn follow_up_waits(requester: &str, id: TaskId, after: TaskId) -> String {
    format!(
        "<@{requester}> Your reply will run as task {id} when {after} finishes, continuing the same session. `/baton cancel {n}` drops it.",
        n = id.0
    )
}

/// Why a follow-up waits (its message): an earlier task of its thread runs.
pub fn waits_for_task(after: TaskId) -> String {
    format!("will run when {after} finishes (one run of a thread's session at a time)")
}

/// Why a task that resumes a session waits (its message, `/baton queue`):
/// only agent `agent` holds the session. `why` is what keeps that agent from
/// taking it (None: nothing, it is about to go).
pub fn waits_for_agent(agent: &str, why: Option<crate::hub::WaitReason>) -> String {
    use crate::hub::WaitReason;
    let holds = format!(
        "waiting for agent `{agent}`, which holds this thread's session (a session exists only on the machine that made it)"
    );
    match why {
        None => format!("about to go to agent `{agent}`, which holds this thread's session"),
        Some(WaitReason::NoAgent) => {
            format!("{holds}; it runs when `{agent}` is connected and serves this project")
        }
        Some(WaitReason::Busy) => format!("{holds}; it runs when `{agent}` has a free slot"),
        Some(WaitReason::CircuitOpen) => format!(
            "{holds}; `{agent}` is failing and paused (circuit open), it runs when it recovers"
        ),
    }
}

/// The note in a task's thread when someone retried it.
pub fn retried_note(user: &str, new: TaskId) -> String {
    format!("<@{user}> retried this task as {new}.")
}

/// A click on a button of a task that moved on.
pub fn stale_button(id: TaskId, state: TaskState) -> String {
    format!("Task {id} is already {state}; that button no longer applies.")
}

fn quote_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn human_secs(s: u64) -> String {
    match s {
        0..=1 => "a second".into(),
        2..60 => format!("{s} seconds"),
        _ => format!(
            "{} minute{}",
            s.div_ceil(60),
            if s.div_ceil(60) == 1 { "" } else { "s" }
        ),
    }
}

/// Slack refused a task's message for good (for example `not_in_channel`).
pub fn cannot_post(id: TaskId, why: &str) -> String {
    format!(
        "Task {id} was created, but its message cannot be posted here ({why}). Invite the app to this channel (`/invite @Baton`) to follow it; `/baton status {id}` shows it meanwhile."
    )
}

/// A task's message cannot be posted (for example `not_in_channel`): the task
/// is not run unseen.
pub fn not_run_unpostable(id: TaskId, why: &str) -> String {
    format!(
        "Task {id} was not run: its message cannot be posted in this channel ({why}). Invite the app to the channel (`/invite @baton`), then `/baton retry {id}`."
    )
}
/// A task refused by a project's access rules: why, and what would allow it.
pub fn task_refused(
    refusal: &crate::access::Refusal,
    project: &str,
    user: &str,
    channel: &str,
    persona: baton_shared::Persona,
) -> String {
    use crate::access::Refusal;
    let allow_you = format!("ask an admin: `/baton-admin project allow {project} <@{user}>`");
    match refusal {
        Refusal::Persona { allowed } => {
            let list: Vec<String> = allowed.iter().map(|p| format!("`{p}`")).collect();
            let mut wanted: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
            wanted.push(persona.as_str());
            format!(
                "Project `{project}` does not take `{persona}` tasks; it takes {}. Nothing was started. To change that, ask an admin: `/baton-admin project personas {project} {}`.",
                if list.is_empty() {
                    "none".to_owned()
                } else {
                    list.join(", ")
                },
                wanted.join(",")
            )
        }
        Refusal::Outsider => format!(
            "Guests and people of other organizations cannot start tasks in `{project}` unless the project names them. Nothing was started. To be named, {allow_you}."
        ),
        Refusal::NotListed => format!(
            "You are not on the access list of project `{project}` (directly or through a user group), so nothing was started. `/baton-admin project access {project}` shows the list to admins; to be added, {allow_you}."
        ),
        Refusal::Channel => format!(
            "Project `{project}` takes tasks only from the channels on its access list, and <#{channel}> is not one of them. Nothing was started. Start it from one of its channels, or ask an admin: `/baton-admin project allow {project} <#{channel}>`."
        ),
        Refusal::AdminsOnly => format!(
            "Project `{project}` has no access list, and this Baton lets only admins start tasks in such projects (`BATON_DEFAULT_ACCESS=admins`). Nothing was started. To be allowed, {allow_you}."
        ),
        Refusal::SlackUnavailable => "Baton could not check with Slack who you are, so nothing was started (access is refused when it cannot be checked). Try again in a minute; if it keeps happening, an admin should check the app's `users:read` and `usergroups:read` scopes.".to_owned(),
    }
}

/// Most characters of a failure's reason that a notification quotes.
pub const NOTICE_REASON_CHARS: usize = 300;

/// How a task ended, for its notifications: "completed.", or "failed: why."
/// (the reason shortened to [`NOTICE_REASON_CHARS`] and escaped).
fn ending(state: TaskState, reason: Option<&str>) -> String {
    match (state, reason.map(str::trim).filter(|r| !r.is_empty())) {
        (TaskState::Failed, Some(why)) => {
            let one_line = why.split_whitespace().collect::<Vec<_>>().join(" ");
            let why = crate::slack::mrkdwn::truncate_chars(
                &crate::slack::mrkdwn::escape_text(&one_line),
                NOTICE_REASON_CHARS,
                "…",
            );
            format!("failed: {}.", why.trim_end_matches('.'))
        }
        _ => format!("{state}."),
    }
}

/// The thread reply that tells the requester their task ended (`BATON_NOTIFY=thread`).
pub fn task_ended_in_thread(
    user: &str,
    id: TaskId,
    state: TaskState,
    reason: Option<&str>,
) -> String {
    format!("<@{user}> {id} {}", ending(state, reason))
}

/// The direct message that tells the requester their task ended (`BATON_NOTIFY=dm`).
pub fn task_ended_dm(id: TaskId, channel: &str, state: TaskState, reason: Option<&str>) -> String {
    format!(
        "Your task {id} in <#{channel}> {} Its message there shows the details.",
        ending(state, reason)
    )
}

/// Who may answer approval requests, for a refusal: the requester, the
/// admins and the project's approvers. `approvers` are the project's
/// approvers as Slack mentions: the command that would allow `user` keeps
/// them (it replaces the list).
pub fn not_an_approver(
    id: TaskId,
    requester: &str,
    project: &str,
    user: &str,
    approvers: &[String],
) -> String {
    let mut who = approvers.to_vec();
    who.push(format!("<@{user}>"));
    format!(
        "Only <@{requester}> (who started task {id}), a Baton admin or an approver of project `{project}` can answer its approval requests. To answer them, ask an admin: `/baton-admin project approvers {project} {}`.",
        who.join(" ")
    )
}

/// An approval button of a request that is already decided (or closed).
pub fn approval_already_decided(
    id: TaskId,
    request: u32,
    state: crate::model::ApprovalState,
    by: Option<&str>,
) -> String {
    use crate::model::ApprovalState as S;
    let what = match (state, by) {
        (S::Approved, Some(by)) => format!("was already approved by <@{by}>"),
        (S::Denied, Some(by)) => format!("was already denied by <@{by}>"),
        (S::Approved, None) => "was already approved".into(),
        (S::Denied, None) => "was already denied".into(),
        (S::TimedOut, _) => "timed out unanswered (denied)".into(),
        (S::Closed, _) | (S::Pending, _) => "is closed: the task ended".into(),
    };
    format!("Approval request {request} of task {id} {what}; that button no longer applies.")
}

/// An approval button of an unknown request.
pub fn no_such_approval(id: TaskId, request: u32) -> String {
    format!("Task {id} has no approval request {request}. `/baton status {id}` shows the task.")
}

/// What the person who answered an approval request is told.
pub fn approval_decided(id: TaskId, request: u32, approved: bool) -> String {
    let verb = if approved { "approved" } else { "denied" };
    format!("You {verb} approval request {request} of task {id}; the agent is told.")
}

/// The thread reply that tells the requester an approval request waits for them.
pub fn approval_needed(requester: &str, id: TaskId, tool: &str) -> String {
    let tool = crate::slack::mrkdwn::escape_text(&tool.replace('`', "'"));
    format!(
        "<@{requester}> task {id} waits for approval to use `{tool}`: *Approve* or *Deny* it on the task's message."
    )
}

/// Files attached to a request that a task cannot take: nothing was created,
/// and the text says what would allow it (fewer or smaller files).
pub fn files_refused(refusal: &baton_shared::files::FileRefusal) -> String {
    use baton_shared::files::FileRefusal;
    use baton_shared::limits::{MAX_FILE_BYTES, MAX_FILES_PER_TASK};
    let why = match refusal {
        FileRefusal::TooMany { count } => format!(
            "{count} files are attached, and a task takes at most {MAX_FILES_PER_TASK}. Attach fewer (or zip them into one), then ask again."
        ),
        FileRefusal::TooLarge { name, size } => format!(
            "`{}` is {size} bytes, and a task takes files of at most {MAX_FILE_BYTES} bytes (20 MiB). Attach a smaller file, or put it where the project can reach it and name it in the prompt.",
            crate::slack::mrkdwn::escape_text(&name.replace('`', "'"))
        ),
    };
    format!("This task was not created: {why}")
}

/// `/baton-admin health`'s line for an agent connected to another process
/// (PostgreSQL): what the database knows, and where the rest is.
pub fn health_held_elsewhere(name: &str, revoked: &str, instance: &str, running: usize) -> String {
    format!(
        "• *{name}*{revoked}: connected to process `{instance}` (not the one answering) · {running} running · its circuit, capacity and last contact are kept in that process's memory, not shown here (`/baton-admin health reset {name}` reaches it there)\n"
    )
}

/// `/baton-admin health`'s line for an agent no live process holds
/// (PostgreSQL); `stopped`: the process that held it last, if it stopped
/// without letting go.
pub fn health_not_connected(name: &str, revoked: &str, stopped: Option<&str>) -> String {
    match stopped {
        Some(instance) => format!(
            "• *{name}*{revoked}: disconnected (the process `{instance}` that held it stopped; it reconnects to another one)\n"
        ),
        None => format!(
            "• *{name}*{revoked}: not connected to any process (start it, or check its `server` and key)\n"
        ),
    }
}

/// What `/baton-admin health` adds to an agent this process holds, when
/// several processes share the database.
pub fn health_on_this_process(instance: &str) -> String {
    format!(" · on this process `{instance}`")
}
