//! Handlers for what Slack sends: slash commands, button clicks, events.
//!
//! Transport-neutral: the HTTP routes and Socket Mode both parse their input
//! into these types and call the same functions, so the behaviour is the same.

use std::sync::Arc;

use baton_shared::TaskId;
use baton_shared::protocol::Decision;
use serde::Deserialize;

use crate::admin;
use crate::app::{App, Attachment, RequestError, TaskRequest};
use crate::commands::{self, Command};
use crate::model::TaskState;
use crate::replies;
use crate::slack::render::{self, ACTION_CANCEL, ACTION_RETRY};

/// A slash command as Slack posts it (form fields).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlashCommand {
    /// `/baton` or `/baton-admin`.
    #[serde(default)]
    pub command: String,
    /// What follows the command.
    #[serde(default)]
    pub text: String,
    /// Who typed it.
    #[serde(default)]
    pub user_id: String,
    /// Where.
    #[serde(default)]
    pub channel_id: String,
    /// The workspace.
    #[serde(default)]
    pub team_id: String,
    /// Where later replies can go.
    #[serde(default)]
    pub response_url: String,
}

/// The answer to a command: shown only to the person, or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Acknowledge with no visible reply (the task's message is the answer).
    Empty,
    /// An ephemeral reply.
    Ephemeral(String),
}

impl Reply {
    /// The JSON body Slack expects, or None for an empty body.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        match self {
            Reply::Empty => None,
            Reply::Ephemeral(text) => {
                Some(serde_json::json!({"response_type": "ephemeral", "text": text}))
            }
        }
    }
}

/// Handles `/baton` and `/baton-admin`.
pub async fn handle_command(app: &Arc<App>, cmd: SlashCommand) -> Reply {
    let span = tracing::info_span!("command", command = %cmd.command, user = %cmd.user_id);
    // Instrumented, not entered: a guard held across an await leaves the span
    // entered on whichever thread polls next, and spans pile up in every log line.
    let work = async {
        match cmd.command.trim() {
            "/baton-admin" => {
                Reply::Ephemeral(admin::handle(app, &cmd.user_id, &cmd.channel_id, &cmd.text).await)
            }
            _ => {
                let at = Where {
                    team: &cmd.team_id,
                    channel: &cmd.channel_id,
                    thread_ts: None,
                    response_url: Some(cmd.response_url.as_str()).filter(|u| !u.is_empty()),
                    files: &[],
                };
                handle_baton(app, &cmd.text, &cmd.user_id, at).await
            }
        }
    };
    tracing::Instrument::instrument(work, span).await
}

/// Where a `/baton` (or a mention) came from.
#[derive(Debug, Clone, Copy)]
struct Where<'a> {
    /// The workspace.
    team: &'a str,
    /// The channel.
    channel: &'a str,
    /// The thread, for a mention in one.
    thread_ts: Option<&'a str>,
    /// The slash command's `response_url`, for a slash command.
    response_url: Option<&'a str>,
    /// The files attached to the message (a mention's; a slash command has none).
    files: &'a [SlackFile],
}

/// Handles the words of `/baton` (or a mention), from `user` at `at`.
async fn handle_baton(app: &Arc<App>, text: &str, user: &str, at: Where<'_>) -> Reply {
    let Where {
        team,
        channel,
        thread_ts,
        response_url,
        files,
    } = at;
    let command = match commands::parse(text) {
        Ok(c) => c,
        Err(e) => return Reply::Ephemeral(e.0),
    };
    let result = match command {
        Command::Help => Ok(commands::help()),
        Command::Run {
            persona,
            project,
            prompt,
        } => {
            let req = TaskRequest {
                persona,
                project,
                prompt,
                requester: user.to_owned(),
                team_id: team.to_owned(),
                channel_id: channel.to_owned(),
                thread_ts: thread_ts.map(str::to_owned),
                parent_id: None,
                session_id: None,
                session_agent: None,
                after_task: None,
                response_url: response_url.map(str::to_owned),
                files: files.iter().map(SlackFile::attachment).collect(),
            };
            match app.create_task(req).await {
                Ok(_) => return Reply::Empty,
                Err(e) => Err(e),
            }
        }
        Command::Cancel(id) => app.cancel(id, user).await,
        Command::Retry(id) => app.retry(id, user).await,
        Command::Status(id) => status(app, id, user).await,
        Command::Queue => queue(app, user).await,
    };
    Reply::Ephemeral(result.unwrap_or_else(|e| e.user_text()))
}

/// Recent tasks `/baton status` lists.
const STATUS_LISTED: u64 = 10;
/// Waiting tasks `/baton queue` lists.
const QUEUE_LISTED: usize = 20;

async fn status(app: &App, id: Option<TaskId>, user: &str) -> Result<String, RequestError> {
    match id {
        Some(id) => {
            let t = app.visible_task(id, user, "status").await?;
            let waiting = app.approval_status(&t).await.unwrap_or_default();
            Ok(format!("{}{waiting}", render::task_line(&t)))
        }
        None => {
            let mine = app.store.tasks_of(user, STATUS_LISTED).await?;
            if mine.is_empty() {
                return Ok("You have no tasks yet. Start one with `/baton PROMPT`.".into());
            }
            Ok(format!(
                "*Your recent tasks*\n{}",
                mine.iter()
                    .map(render::summary_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        }
    }
}

/// The waiting tasks `user` may see: id, project, position and why it waits.
async fn queue(app: &App, user: &str) -> Result<String, RequestError> {
    let projects = app.store.projects_with_queue().await?;
    let mut lines = Vec::new();
    let mut more = 0usize;
    for p in projects {
        let why = app
            .hub
            .why_waiting(&p)
            .map(|r| r.describe())
            .unwrap_or("about to be dispatched");
        let queued = app.store.queued(&p, app.settings.queue_max.max(1)).await?;
        // A follow-up waiting for an earlier task of its thread has no place yet.
        let total = queued.iter().filter(|t| t.after_task.is_none()).count();
        let mut position = 0;
        for t in &queued {
            let (place, why) = match (t.after_task, t.session_agent.as_deref()) {
                (Some(after), _) => (None, replies::waits_for_task(TaskId(after))),
                (None, Some(agent)) => {
                    position += 1;
                    let held = app.hub.why_waiting_for(agent, &p);
                    (Some(position), replies::waits_for_agent(agent, held))
                }
                (None, None) => {
                    position += 1;
                    (Some(position), why.to_owned())
                }
            };
            if !app.may_see(t, user).await {
                continue;
            }
            if lines.len() >= QUEUE_LISTED {
                more += 1;
                continue;
            }
            let place = place
                .map(|i| format!(" · position {i} of {total}"))
                .unwrap_or_default();
            lines.push(format!(
                "• *#{}* `{}`{place} — {why}",
                t.id,
                crate::slack::mrkdwn::escape(&t.project),
            ));
        }
    }
    if lines.is_empty() {
        return Ok("No task you can see is waiting: every queue is empty for you.".into());
    }
    let mut out = format!("*Waiting tasks*\n{}", lines.join("\n"));
    if more > 0 {
        out.push_str(&format!("\n…and {more} more."));
    }
    Ok(out)
}

/// A block_actions payload (the parts Baton uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Interaction {
    /// `block_actions` for buttons.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Who clicked.
    #[serde(default)]
    pub user: IdOnly,
    /// Where.
    #[serde(default)]
    pub channel: IdOnly,
    /// The buttons clicked.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// The message the buttons are on: its thread is where the answer goes.
    #[serde(default)]
    pub message: Option<ClickedMessage>,
}

/// The message a button was clicked on (the part Baton uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClickedMessage {
    /// The thread the message is in, when it is a reply.
    #[serde(default)]
    pub thread_ts: Option<String>,
}

/// An object of which only the id matters.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IdOnly {
    /// The id.
    #[serde(default)]
    pub id: String,
}

/// One clicked action.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Action {
    /// Which button.
    #[serde(default)]
    pub action_id: String,
    /// The task id it carries.
    #[serde(default)]
    pub value: String,
}

/// Handles a button click. The answer (if any) goes to the clicker as an ephemeral message.
pub async fn handle_interaction(app: &Arc<App>, payload: Interaction) {
    if payload.kind != "block_actions" {
        return;
    }
    let user = payload.user.id.clone();
    for action in &payload.actions {
        if let Some(decision) = approval_decision(&action.action_id) {
            let Some((id, request)) = render::parse_approval_value(&action.value) else {
                tracing::warn!(value = %action.value, "approval button with an unreadable value");
                continue;
            };
            let text = app.answer_approval(id, request, &user, decision).await;
            answer_click(app, &payload, &user, &text).await;
            continue;
        }
        let Ok(id) = action.value.parse::<TaskId>() else {
            tracing::warn!(value = %action.value, "button with an unreadable task id");
            continue;
        };
        let reply = match action.action_id.as_str() {
            ACTION_CANCEL => match app.visible_task(id, &user, "cancel").await {
                Ok(t) if t.state.parse::<TaskState>().is_ok_and(|s| s.is_terminal()) => Some(
                    replies::stale_button(id, t.state.parse().unwrap_or(TaskState::Failed)),
                ),
                Err(e) => Some(e.user_text()),
                Ok(_) => Some(
                    app.cancel(id, &user)
                        .await
                        .unwrap_or_else(|e| e.user_text()),
                ),
            },
            ACTION_RETRY => match app.visible_task(id, &user, "retry").await {
                Ok(t) if t.state.parse::<TaskState>().is_ok_and(|s| !s.can_retry()) => Some(
                    replies::stale_button(id, t.state.parse().unwrap_or(TaskState::Failed)),
                ),
                Err(e) => Some(e.user_text()),
                Ok(_) => Some(app.retry(id, &user).await.unwrap_or_else(|e| e.user_text())),
            },
            other => {
                tracing::debug!(action = other, "unknown action ignored");
                None
            }
        };
        let thread = payload
            .message
            .as_ref()
            .and_then(|m| m.thread_ts.as_deref());
        if let Some(text) = reply
            && !payload.channel.id.is_empty()
            && let Err(err) = app
                .slack
                .post_ephemeral_in(&payload.channel.id, thread, &user, &text)
                .await
        {
            tracing::warn!(error = %err, "cannot answer a button click");
        }
    }
}

/// The decision an approval button stands for; None for other buttons.
fn approval_decision(action_id: &str) -> Option<Decision> {
    match action_id {
        render::ACTION_APPROVE => Some(Decision::Approved),
        render::ACTION_DENY => Some(Decision::Denied),
        _ => None,
    }
}

/// Tells the person who clicked, privately, in the clicked message's thread.
async fn answer_click(app: &App, payload: &Interaction, user: &str, text: &str) {
    let thread = payload
        .message
        .as_ref()
        .and_then(|m| m.thread_ts.as_deref());
    if !payload.channel.id.is_empty()
        && let Err(err) = app
            .slack
            .post_ephemeral_in(&payload.channel.id, thread, user, text)
            .await
    {
        tracing::warn!(error = %err, "cannot answer a button click");
    }
}

/// An Events API envelope (the parts Baton uses; kept as JSON until handled).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct EventEnvelope {
    /// `event_callback` or `url_verification`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The challenge to echo for `url_verification`.
    #[serde(default)]
    pub challenge: Option<String>,
    /// The workspace.
    #[serde(default)]
    pub team_id: String,
    /// De-duplicates retries.
    #[serde(default)]
    pub event_id: String,
    /// The event.
    #[serde(default)]
    pub event: Option<Event>,
    /// Who the app is in this workspace (the bot user id).
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
}

/// One authorization of the app.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct Authorization {
    /// The bot's user id.
    #[serde(default)]
    pub user_id: String,
}

/// A message or mention event.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct Event {
    /// `app_mention` or `message`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Set for edits, joins, bot messages...: ignored.
    #[serde(default)]
    pub subtype: Option<String>,
    /// Set when a bot wrote it.
    #[serde(default)]
    pub bot_id: Option<String>,
    /// Who wrote it.
    #[serde(default)]
    pub user: String,
    /// The text.
    #[serde(default)]
    pub text: String,
    /// Where.
    #[serde(default)]
    pub channel: String,
    /// The message's ts.
    #[serde(default)]
    pub ts: String,
    /// The thread it is in.
    #[serde(default)]
    pub thread_ts: Option<String>,
    /// `im` for a direct message to the app (`message.im`).
    #[serde(default)]
    pub channel_type: Option<String>,
    /// The tab opened, for `app_home_opened`: `home` or `messages`.
    #[serde(default)]
    pub tab: Option<String>,
    /// The files attached to the message (`files:read`).
    #[serde(default)]
    pub files: Vec<SlackFile>,
}

/// A file attached to a message, as the event gives it (the parts Baton uses).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct SlackFile {
    /// Slack's file id (`F…`).
    #[serde(default)]
    pub id: String,
    /// Its name as attached.
    #[serde(default)]
    pub name: Option<String>,
    /// Its title, when it has no name.
    #[serde(default)]
    pub title: Option<String>,
    /// Its size in bytes, as Slack says.
    #[serde(default)]
    pub size: u64,
    /// Where its bytes are, for a request with the bot token.
    #[serde(default)]
    pub url_private_download: Option<String>,
    /// The same, for files that have no download URL.
    #[serde(default)]
    pub url_private: Option<String>,
}

impl SlackFile {
    /// The file as a task request carries it.
    fn attachment(&self) -> Attachment {
        Attachment {
            id: self.id.clone(),
            name: self
                .name
                .clone()
                .or_else(|| self.title.clone())
                .unwrap_or_else(|| self.id.clone()),
            size: self.size,
            url: self
                .url_private_download
                .clone()
                .or_else(|| self.url_private.clone())
                .unwrap_or_default(),
        }
    }
}

impl Event {
    /// Whether it was written to the app in a direct conversation.
    fn is_direct(&self) -> bool {
        self.channel_type.as_deref() == Some("im")
    }
}

/// Strips `<@U...>` mentions of the bot (or any leading mention) from the text.
fn strip_mentions(text: &str, bot: Option<&str>) -> String {
    let mut out = text.to_owned();
    if let Some(bot) = bot {
        out = out.replace(&format!("<@{bot}>"), " ");
    }
    let trimmed = out.trim_start();
    if let Some(rest) = trimmed.strip_prefix("<@")
        && let Some(end) = rest.find('>')
    {
        return rest[end + 1..].trim().to_owned();
    }
    out.trim().to_owned()
}

/// Handles an Events API callback after its event id was seen for the first time.
pub async fn handle_event(app: &Arc<App>, env: EventEnvelope) {
    let Some(event) = env.event else { return };
    if event.kind == "app_home_opened" {
        if event.tab.as_deref() == Some("home") && !event.user.is_empty() {
            crate::home::publish(app, &event.user, &env.team_id).await;
        }
        return;
    }
    let bot = env
        .authorizations
        .first()
        .map(|a| a.user_id.as_str())
        .filter(|s| !s.is_empty());
    // A message with files attached comes as the `file_share` subtype.
    if event.bot_id.is_some()
        || event.subtype.as_deref().is_some_and(|s| s != "file_share")
        || event.user.is_empty()
        || Some(event.user.as_str()) == bot
    {
        return;
    }
    match event.kind.as_str() {
        "app_mention" => {}
        // Everything written to the app in a direct conversation is for it.
        "message" if event.is_direct() => {}
        "message" => {
            // Only thread replies to a task continue it; a message that mentions
            // the bot also arrives as app_mention and is handled there.
            let Some(thread) = event.thread_ts.as_deref() else {
                return;
            };
            if thread == event.ts
                || event.text.contains("<@")
                    && bot.is_none_or(|b| event.text.contains(&format!("<@{b}>")))
            {
                return;
            }
        }
        _ => return,
    }
    let text = strip_mentions(&event.text, bot);
    // A reply in the thread of a task's message continues that thread's session.
    let root = event
        .thread_ts
        .as_deref()
        .filter(|thread| *thread != event.ts);
    let task_thread = match root {
        Some(root) => match app.store.task_by_message(&event.channel, root).await {
            Ok(found) => found.map(|_| root),
            Err(err) => {
                tracing::error!(error = ?err, "cannot look up the thread's task");
                None
            }
        },
        None => None,
    };
    let reply = match task_thread {
        Some(root) => follow_up(app, root, &text, &event, &env.team_id).await,
        None if event.kind == "app_mention" || event.is_direct() => {
            let at = Where {
                team: &env.team_id,
                channel: &event.channel,
                thread_ts: event.thread_ts.as_deref(),
                response_url: None,
                files: &event.files,
            };
            handle_baton(app, &text, &event.user, at).await
        }
        None => Reply::Empty,
    };
    if let Reply::Ephemeral(text) = reply
        && let Err(err) = app
            .slack
            .post_ephemeral_in(
                &event.channel,
                event.thread_ts.as_deref(),
                &event.user,
                &text,
            )
            .await
    {
        tracing::warn!(error = %err, "cannot answer a mention");
    }
}

/// A reply in a task's thread: a follow-up task that resumes the session of
/// the thread's latest task, posted in the same thread, on the agent that
/// holds that session. While a task of the thread has not ended, the reply
/// is kept and runs when it has (the thread says so, mentioning the person):
/// two runs never resume one session at once.
async fn follow_up(app: &Arc<App>, root: &str, text: &str, event: &Event, team: &str) -> Reply {
    let (persona, prompt) = match commands::parse(text) {
        Ok(Command::Run {
            persona, prompt, ..
        }) => (persona, prompt),
        Ok(_) => {
            let at = Where {
                team,
                channel: &event.channel,
                thread_ts: Some(root),
                response_url: None,
                files: &event.files,
            };
            return handle_baton(app, text, &event.user, at).await;
        }
        Err(e) => return Reply::Ephemeral(e.0),
    };
    // Replies arriving together are taken one after the other: the later one
    // sees the earlier one's task and waits for it.
    let turn = match app.follow_up_turn(&event.channel, root).await {
        Ok(turn) => turn,
        Err(err) => return Reply::Ephemeral(RequestError::Internal(err).user_text()),
    };
    let tasks = match app.store.thread_tasks(&event.channel, root).await {
        Ok(tasks) => tasks,
        Err(err) => return Reply::Ephemeral(RequestError::Internal(err).user_text()),
    };
    // The thread's latest task that has not ended: the reply waits for it.
    let busy = tasks
        .iter()
        .rev()
        .find(|t| !render::task_state(t).is_terminal());
    let Some(parent) = tasks
        .iter()
        .rev()
        .find(|t| t.session_id.is_some())
        .or(tasks.first())
    else {
        return Reply::Empty;
    };
    // Only the requester of the thread's task (or an admin) continues it.
    let root_task = tasks.first().map_or(parent.id, |t| t.id);
    if let Err(e) = app
        .actionable_task(TaskId(root_task), &event.user, "continue")
        .await
    {
        return Reply::Ephemeral(e.user_text());
    }
    // What an agent reported as its session: resumed only when it is a
    // session id (never a flag or shell words on the agent's command line);
    // otherwise the follow-up starts a new session.
    let session_id = parent
        .session_id
        .clone()
        .filter(|s| baton_shared::SessionId::new(s.clone()).is_ok());
    let req = TaskRequest {
        persona,
        project: baton_shared::ProjectName::new(parent.project.clone()).ok(),
        prompt,
        requester: event.user.clone(),
        team_id: if team.is_empty() {
            parent.team_id.clone()
        } else {
            team.to_owned()
        },
        channel_id: parent.channel_id.clone(),
        thread_ts: Some(root.to_owned()),
        parent_id: Some(busy.map_or(parent.id, |b| b.id)),
        // The session and its agent are taken again when a waiting follow-up
        // is released: the task it waited for may make a newer one.
        session_agent: session_id.as_ref().and(
            parent
                .agent
                .clone()
                .or_else(|| parent.session_agent.clone()),
        ),
        session_id,
        after_task: busy.map(|b| b.id),
        response_url: None,
        files: event.files.iter().map(SlackFile::attachment).collect(),
    };
    let created = app.create_task(req).await;
    turn.end().await;
    match created {
        Ok(task) => {
            if let Some(after) = task.after_task {
                let body = crate::slack::api::MessageBody {
                    text: replies::follow_up_waits(&task.requester, TaskId(task.id), TaskId(after)),
                    blocks: Vec::new(),
                };
                if let Err(err) = app
                    .slack
                    .post_message(&task.channel_id, Some(root), &body)
                    .await
                {
                    tracing::warn!(task = task.id, error = %err, "cannot say in the thread that the reply waits");
                }
            }
            Reply::Empty
        }
        Err(e) => Reply::Ephemeral(e.user_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_stripped() {
        assert_eq!(strip_mentions("<@UBOT> fix it", Some("UBOT")), "fix it");
        assert_eq!(strip_mentions("<@UOTHER> fix it", None), "fix it");
        assert_eq!(
            strip_mentions("please <@UBOT> fix it", Some("UBOT")),
            "please   fix it"
        );
    }
}
