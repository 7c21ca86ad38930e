//! Receipt of what Slack sends, shared by the HTTP routes and Socket Mode: what
//! goes into the acknowledgement, and what is handled after it.
//!
//! Each transport parses its input into the [`handlers`] types and calls these;
//! only the framing of the acknowledgement (an HTTP response, a Socket Mode ack
//! envelope) differs.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::replies;
use crate::slack::api::SlackCallError;
use crate::slack::handlers::{self, EventEnvelope, Interaction, Reply, SlashCommand};

/// The longest a slash command's acknowledgement waits for the command's
/// work: well inside Slack's 3 seconds, which also cover the network. Work
/// that takes longer (a slow database, a slow Slack) goes on after the
/// acknowledgement, and its answer goes through the command's `response_url`.
/// (The bot's `Settings::ack_budget`, which tests may change.)
pub const ACK_BUDGET: Duration = Duration::from_millis(1500);

/// Handles a slash command and returns the acknowledgement's body: the
/// ephemeral answer, or `None` for an empty acknowledgement (the task's own
/// message is the answer). The work runs on its own task: when it is not done
/// within the budget ([`ACK_BUDGET`]), the acknowledgement goes out empty and the answer
/// follows through `response_url`; nothing is lost and nothing runs twice.
pub async fn command(app: &Arc<App>, cmd: SlashCommand) -> Option<serde_json::Value> {
    let response_url = cmd.response_url.clone();
    let work = {
        let app = app.clone();
        tokio::spawn(async move { handlers::handle_command(&app, cmd).await })
    };
    let mut work = work;
    match tokio::time::timeout(app.settings.ack_budget, &mut work).await {
        Ok(Ok(reply)) => reply.to_json(),
        Ok(Err(err)) => {
            tracing::error!(error = %err, "a slash command's work stopped");
            Reply::Ephemeral(replies::internal_error()).to_json()
        }
        Err(_) => {
            tracing::info!(
                "a slash command takes longer than its acknowledgement may wait; its answer follows through response_url"
            );
            let app = app.clone();
            tokio::spawn(async move {
                let reply = work
                    .await
                    .unwrap_or_else(|_| Reply::Ephemeral(replies::internal_error()));
                if let Reply::Ephemeral(text) = reply {
                    respond(&app, &response_url, &text).await;
                }
            });
            None
        }
    }
}

/// How long each new try of a `response_url` post waits (a 429's own wait
/// when longer, up to [`RESPOND_WAIT_MAX`]): the answer is all the person
/// gets, so a failed post is tried again, a few times.
const RESPOND_RETRIES: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(8),
];
/// The longest wait before a new try, whatever a 429 asks.
const RESPOND_WAIT_MAX: Duration = Duration::from_secs(30);

/// Sends `text` to the person through a slash command's `response_url`,
/// trying again after a failure that may pass (network, Slack's 5xx or 429;
/// see [`RESPOND_RETRIES`]).
pub async fn respond(app: &App, response_url: &str, text: &str) {
    if response_url.is_empty() {
        tracing::warn!("no response_url to answer a slash command through");
        return;
    }
    let mut waits = RESPOND_RETRIES.iter();
    loop {
        let err = match app.slack.respond(response_url, text).await {
            Ok(()) => return,
            Err(err) => err,
        };
        let wait = match (&err, waits.next()) {
            (_, None) => None,
            (err, _) if !err.is_retryable() => None,
            (SlackCallError::RateLimited { retry_after }, Some(wait)) => {
                Some((*retry_after).max(*wait).min(RESPOND_WAIT_MAX))
            }
            (_, Some(wait)) => Some(*wait),
        };
        let Some(wait) = wait else {
            tracing::warn!(error = %err, "cannot answer a slash command through its response_url; given up");
            return;
        };
        tracing::info!(error = %err, ?wait, "cannot answer a slash command through its response_url yet; trying again");
        tokio::time::sleep(wait).await;
    }
}

/// Accepts a button click: acknowledged at once, handled after; its answer goes
/// to the clicker as an ephemeral message.
pub fn interaction(app: &Arc<App>, payload: Interaction) {
    let app = app.clone();
    tokio::spawn(async move { handlers::handle_interaction(&app, payload).await });
}

/// Accepts an Events API callback: the first sighting of its `event_id` is
/// handled after the acknowledgement; a repeat (Slack's retry, or the same
/// event over the other transport) is dropped. Other envelope types are ignored.
///
/// An error means the event id could not be recorded, and nothing was done.
pub async fn event(app: &Arc<App>, env: EventEnvelope) -> anyhow::Result<()> {
    if env.kind != "event_callback" {
        return Ok(());
    }
    if !env.event_id.is_empty() {
        let payload = serde_json::to_string(&env)?;
        if !app.store.record_event(&env.event_id, &payload).await? {
            tracing::debug!(event_id = %env.event_id, "repeated Slack event dropped");
            return Ok(());
        }
    }
    let app = app.clone();
    tokio::spawn(async move { handle_recorded(&app, env).await });
    Ok(())
}

/// Handles a recorded event, then marks it handled.
async fn handle_recorded(app: &Arc<App>, env: EventEnvelope) {
    let id = env.event_id.clone();
    handlers::handle_event(app, env).await;
    if !id.is_empty()
        && let Err(err) = app.store.event_handled(&id).await
    {
        tracing::warn!(event_id = %id, error = ?err, "cannot record that a Slack event was handled");
    }
}

/// Handles the events acknowledged but not handled before the last stop
/// (Slack does not send an acknowledged event again). Run at start.
pub async fn replay_unhandled(app: &Arc<App>) -> anyhow::Result<()> {
    for (id, payload) in app.store.unhandled_events().await? {
        match serde_json::from_str::<EventEnvelope>(&payload) {
            Ok(env) => {
                tracing::info!(event_id = %id, "handling a Slack event received before the restart");
                let app = app.clone();
                tokio::spawn(async move { handle_recorded(&app, env).await });
            }
            Err(err) => {
                tracing::warn!(event_id = %id, error = %err, "an unhandled Slack event cannot be read; dropped");
                app.store.event_handled(&id).await?;
            }
        }
    }
    Ok(())
}
