//! Receipt of what Slack sends, shared by the HTTP routes and Socket Mode: what
//! goes into the acknowledgement, and what is handled after it.
//!
//! Each transport parses its input into the [`handlers`] types and calls these;
//! only the framing of the acknowledgement (an HTTP response, a Socket Mode ack
//! envelope) differs.

use std::sync::Arc;

use crate::app::App;
use crate::slack::handlers::{self, EventEnvelope, Interaction, SlashCommand};

/// Handles a slash command and returns the acknowledgement's body: the
/// ephemeral answer, or `None` for an empty acknowledgement (the task's own
/// message is the answer).
pub async fn command(app: &Arc<App>, cmd: SlashCommand) -> Option<serde_json::Value> {
    handlers::handle_command(app, cmd).await.to_json()
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
    if !env.event_id.is_empty() && !app.store.first_sighting(&env.event_id).await? {
        tracing::debug!(event_id = %env.event_id, "repeated Slack event dropped");
        return Ok(());
    }
    let app = app.clone();
    tokio::spawn(async move { handlers::handle_event(&app, env).await });
    Ok(())
}
