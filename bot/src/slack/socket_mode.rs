//! Socket Mode: with `SLACK_APP_TOKEN` set, slash commands, button clicks and
//! Events API events arrive over WebSockets the bot opens to Slack, and are
//! handled exactly as over HTTP, through [`intake`].
//!
//! slack-morphism's listener does the protocol: `apps.connections.open` through
//! the Web API client (so through `SLACK_API_URL`), `hello`, pings, a new
//! connection on a `disconnect` envelope or a dropped socket. Every envelope is
//! acknowledged: a slash command with its answer as the ack's payload (the body
//! the HTTP route would answer), a click or an event at once with its work
//! spawned after; a failure is logged and acknowledged all the same, and an
//! envelope that does not parse is logged and acknowledged by its `envelope_id`.

use std::sync::Arc;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use crate::app::App;
use crate::selfcheck::Part;
use crate::slack::handlers::EventEnvelope;
use crate::slack::intake;

/// Connections held open at once, so that one being refreshed by Slack never
/// leaves the app without a connection.
pub const CONNECTIONS: u32 = 2;
/// Seconds between opening one connection and the next at start.
pub const CONNECTION_STAGGER_SECS: u64 = 1;
/// Seconds before trying again when a connection cannot be opened
/// (`apps.connections.open` is a Tier 1 method: a few calls a minute).
pub const RETRY_OPEN_SECS: u64 = 10;
/// Seconds between two pings on an open connection.
pub const PING_SECS: u64 = 15;
/// Ping intervals without a pong after which a connection is replaced.
pub const PING_MISSES: u64 = 4;

/// What slack-morphism's callbacks fail with.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The prefix of an app-level token.
const APP_TOKEN_PREFIX: &str = "xapp-";

/// Refuses a `SLACK_APP_TOKEN` that is not an app-level token, before anything starts.
pub fn check_app_token(token: &SecretString) -> anyhow::Result<()> {
    if token.expose_secret().trim().starts_with(APP_TOKEN_PREFIX) {
        Ok(())
    } else {
        anyhow::bail!(
            "SLACK_APP_TOKEN must be an app-level token (xapp-...): create one in the Slack app's \
             Basic Information > App-Level Tokens with the connections:write scope"
        )
    }
}

/// The running Socket Mode listener.
pub struct SocketMode {
    /// slack-morphism's listener: its connections, reconnections and pings.
    listener: SlackClientSocketModeListener<SlackClientHyperHttpsConnector>,
}

impl std::fmt::Debug for SocketMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketMode").finish_non_exhaustive()
    }
}

impl SocketMode {
    /// Starts listening with the app-level token; the connections open in the
    /// background (a failure to open one is logged and retried).
    pub async fn start(app: Arc<App>, app_token: &SecretString) -> anyhow::Result<Self> {
        check_app_token(app_token)?;
        let app_ready = app.clone();
        let environment = Arc::new(
            SlackClientEventsListenerEnvironment::new(app.slack.client())
                .with_error_handler(acknowledge_anyway)
                .with_user_state(app),
        );
        let callbacks = SlackSocketModeListenerCallbacks::new()
            // (A closure: slack-morphism does not export the hello event's type.)
            .with_hello_events(|hello, _client, state| async move {
                tracing::info!(
                    connections = hello.num_connections,
                    host = %hello.debug_info.host,
                    "Socket Mode connected"
                );
                if let Ok(app) = app_of(&state).await {
                    app.readiness.ready(Part::SocketMode);
                }
            })
            .with_command_events(on_command)
            .with_interaction_events(on_interaction)
            .with_push_events(on_event);
        app_ready.readiness.not_ready(
            Part::SocketMode,
            "no Socket Mode connection to Slack yet (apps.connections.open with SLACK_APP_TOKEN)",
        );
        let config = SlackClientSocketModeConfig::new()
            .with_max_connections_count(CONNECTIONS)
            .with_initial_backoff_in_seconds(CONNECTION_STAGGER_SECS)
            .with_reconnect_timeout_in_seconds(RETRY_OPEN_SECS)
            .with_ping_interval_in_seconds(PING_SECS)
            .with_ping_failure_threshold_times(PING_MISSES);
        let listener = SlackClientSocketModeListener::new(&config, environment, callbacks);
        let token = SlackApiToken::new(app_token.expose_secret().trim().to_owned().into());
        listener
            .listen_for(&token)
            .await
            .context("Cannot set up Socket Mode")?;
        listener.start().await;
        tracing::info!(connections = CONNECTIONS, "Socket Mode starting");
        Ok(SocketMode { listener })
    }

    /// Closes the connections; no envelope is taken after this.
    pub async fn shutdown(&self) {
        self.listener.shutdown().await;
    }
}

/// The "error" a slash command callback returns to get a bare acknowledgement:
/// slack-morphism acks a command with a payload only from `Ok`, and Slack shows
/// nothing for an ack without one (what an empty HTTP 200 means).
#[derive(Debug, thiserror::Error)]
#[error("acknowledged without a reply")]
struct BareAck;

/// slack-morphism's error handler, for a failed callback, an envelope it cannot
/// read and a socket error. Answering OK acknowledges the envelope: a failure is
/// logged, never left for Slack to redeliver forever.
fn acknowledge_anyway(
    err: BoxError,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> HttpStatusCode {
    if err.downcast_ref::<BareAck>().is_none() {
        tracing::warn!(error = %err, "Socket Mode: envelope or connection failed (acknowledged)");
    }
    // A connection that failed or could not open: not ready until the next
    // `hello` says a connection is up again.
    if let Some(
        SlackClientError::SocketModeProtocolError(_)
        | SlackClientError::HttpError(_)
        | SlackClientError::HttpProtocolError(_)
        | SlackClientError::ApiError(_),
    ) = err.downcast_ref::<SlackClientError>()
        && let Ok(state) = state.try_read()
        && let Some(app) = state.get_user_state::<Arc<App>>()
    {
        app.readiness.not_ready(
            Part::SocketMode,
            format!("Socket Mode connection lost or refused, reconnecting: {err}"),
        );
    }
    HttpStatusCode::OK
}

/// The bot's state, which the environment carries to the callbacks.
async fn app_of(state: &SlackClientEventsUserState) -> Result<Arc<App>, BoxError> {
    state
        .read()
        .await
        .get_user_state::<Arc<App>>()
        .cloned()
        .ok_or_else(|| "Socket Mode listener without the bot's state".into())
}

/// slack-morphism's typed payload as one of Baton's handler types, which read
/// the same fields from it as from the HTTP routes' payloads.
fn retype<T: serde::de::DeserializeOwned>(
    payload: &impl serde::Serialize,
) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::to_value(payload)?)
}

async fn on_command(
    event: SlackCommandEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<SlackCommandEventResponse> {
    let app = app_of(&state).await?;
    match intake::command(&app, retype(&event)?).await {
        Some(body) => Ok(serde_json::from_value(body)?),
        None => Err(Box::new(BareAck)),
    }
}

async fn on_interaction(
    event: SlackInteractionEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    let app = app_of(&state).await?;
    intake::interaction(&app, retype(&event)?);
    Ok(())
}

async fn on_event(
    event: SlackPushEventCallback,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    let app = app_of(&state).await?;
    let mut env: EventEnvelope = retype(&event)?;
    // Socket Mode carries only callbacks, without their envelope's `type`.
    env.kind = "event_callback".to_owned();
    intake::event(&app, env).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slack::handlers::{Interaction, Reply, SlashCommand};
    use crate::slack::render::ACTION_CANCEL;

    #[test]
    fn an_ephemeral_reply_is_the_same_body_as_over_http() {
        let reply = Reply::Ephemeral("No project `nope`. *Known*: `web`".into());
        let http = reply.to_json().expect("a body");
        let ack: SlackCommandEventResponse =
            serde_json::from_value(http.clone()).expect("a command response");
        assert_eq!(serde_json::to_value(&ack).expect("serialises"), http);
    }

    #[test]
    fn only_app_level_tokens_are_accepted() {
        assert!(check_app_token(&"xapp-1-A1-123-abc".to_owned().into()).is_ok());
        let err = check_app_token(&"xoxb-123".to_owned().into()).expect_err("a bot token");
        assert!(err.to_string().contains("xapp-"), "{err}");
        assert!(
            !err.to_string().contains("xoxb-123"),
            "the token is not echoed"
        );
    }

    #[test]
    fn typed_payloads_read_as_the_handler_types() {
        let command: SlackCommandEvent = serde_json::from_value(serde_json::json!({
            "team_id": "T1", "channel_id": "C1", "user_id": "U1", "command": "/baton",
            "text": "review the diff", "response_url": "https://hooks.slack.com/x",
            "trigger_id": "1.2.3", "api_app_id": "A1"
        }))
        .expect("a command");
        let cmd: SlashCommand = retype(&command).expect("retyped");
        assert_eq!(
            (
                cmd.command.as_str(),
                cmd.text.as_str(),
                cmd.user_id.as_str()
            ),
            ("/baton", "review the diff", "U1")
        );
        assert_eq!(
            (cmd.channel_id.as_str(), cmd.team_id.as_str()),
            ("C1", "T1")
        );

        let click: SlackInteractionEvent = serde_json::from_value(serde_json::json!({
            "type": "block_actions", "team": {"id": "T1"}, "user": {"id": "U1"},
            "api_app_id": "A1", "trigger_id": "1.2.3",
            "container": {"type": "message", "message_ts": "1.1", "channel_id": "C1"},
            "channel": {"id": "C1", "name": "dev"},
            "actions": [{"type": "button", "action_id": ACTION_CANCEL, "value": "7",
                         "block_id": "b", "action_ts": "1.2"}]
        }))
        .expect("a click");
        let click: Interaction = retype(&click).expect("retyped");
        assert_eq!(click.kind, "block_actions");
        assert_eq!(
            (click.user.id.as_str(), click.channel.id.as_str()),
            ("U1", "C1")
        );
        assert_eq!(click.actions.len(), 1);
        assert_eq!(
            (
                click.actions[0].action_id.as_str(),
                click.actions[0].value.as_str()
            ),
            (ACTION_CANCEL, "7")
        );

        let event: SlackPushEventCallback = serde_json::from_value(serde_json::json!({
            "team_id": "T1", "api_app_id": "A1", "event_id": "Ev1", "event_time": 1700000000,
            "authorizations": [{"team_id": "T1", "user_id": "UBATON", "is_bot": true}],
            "event": {"type": "message", "user": "U1", "text": "and the tests too",
                      "channel": "C1", "ts": "1.3", "thread_ts": "1.1"}
        }))
        .expect("an event");
        let env: EventEnvelope = retype(&event).expect("retyped");
        assert_eq!(env.event_id, "Ev1");
        assert_eq!(env.team_id, "T1");
        assert_eq!(env.authorizations[0].user_id, "UBATON");
        let ev = env.event.expect("the event");
        assert_eq!(
            (ev.kind.as_str(), ev.user.as_str(), ev.text.as_str()),
            ("message", "U1", "and the tests too")
        );
        assert_eq!(
            (ev.channel.as_str(), ev.ts.as_str(), ev.thread_ts.as_deref()),
            ("C1", "1.3", Some("1.1"))
        );
    }
}
