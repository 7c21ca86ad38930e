//! Socket Mode on the fake Slack: `apps.connections.open` (with an app-level
//! token) hands out a `ws://` URL on the same server; each connection gets
//! Slack's `hello`, then the envelopes a test pushes, and the test reads the
//! acks the bot sends back. A test can also send `disconnect` (Slack asking the
//! app to reconnect) or drop a connection without a close.
//!
//! Slack delivers each envelope over one of the app's open connections; the fake
//! uses the newest one unless told which, or spreads them over all of them in
//! turn ([`SocketMode::push_spread`]), those of several processes alike.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::slack::FakeSlack;

/// The app-level token the fake accepts.
pub const APP_TOKEN: &str = "xapp-1-A0BATON-1-test";
/// The Web API method that opens a connection.
pub const CONNECTIONS_OPEN: &str = "apps.connections.open";
/// The path the WebSocket URLs point at.
pub const WS_PATH: &str = "/socket-mode";
/// The app id in hellos and payloads.
pub const APP_ID: &str = "A0BATON";
/// The bot's user id in event authorizations (what `auth.test` answers too).
pub const BOT_USER: &str = "UBATON";

/// One `apps.connections.open` call.
#[derive(Debug, Clone)]
pub struct Open {
    /// The bearer token it came with (empty when none).
    pub token: String,
    /// What the fake answered: `None` for ok, else Slack's error code.
    pub error: Option<String>,
    /// When it arrived (tokio's clock).
    pub at: Instant,
}

/// One acknowledgement the bot sent.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The connection it came over.
    pub connection: u64,
    /// The envelope it acknowledges.
    pub envelope_id: String,
    /// The whole frame (`envelope_id` and the optional `payload`).
    pub frame: Value,
}

/// What the fake's side of one connection is told to do.
#[derive(Debug)]
enum Outgoing {
    /// Send this text frame.
    Frame(String),
    /// Drop the connection without a close frame (a network failure).
    Drop,
}

#[derive(Debug, Default)]
struct Inner {
    opens: Vec<Open>,
    /// Tickets handed out by `apps.connections.open`, not yet used.
    tickets: Vec<u64>,
    next_ticket: u64,
    next_connection: u64,
    next_envelope: u64,
    /// Open connections: id → what to send on it.
    live: BTreeMap<u64, mpsc::UnboundedSender<Outgoing>>,
    /// Connections ever accepted (ids), in order.
    accepted: Vec<u64>,
    /// Envelopes pushed by [`SocketMode::push_spread`] so far (picks the next connection).
    spread: usize,
    acks: Vec<Ack>,
    /// Text frames from the bot that are not acks.
    unexpected: Vec<(u64, String)>,
}

/// Socket Mode's side of the fake Slack; `FakeSlack::socket_mode()` gives it.
#[derive(Debug, Default)]
pub struct SocketMode {
    state: Mutex<Inner>,
}

impl FakeSlack {
    /// The fake's Socket Mode.
    pub fn socket_mode(&self) -> &SocketMode {
        &self.socket_mode
    }
}

impl SocketMode {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every `apps.connections.open` call so far.
    pub fn opens(&self) -> Vec<Open> {
        self.lock().opens.clone()
    }

    /// The `apps.connections.open` calls the fake accepted.
    pub fn accepted_opens(&self) -> usize {
        self.lock()
            .opens
            .iter()
            .filter(|o| o.error.is_none())
            .count()
    }

    /// The open connections' ids, oldest first.
    pub fn connections(&self) -> Vec<u64> {
        self.lock().live.keys().copied().collect()
    }

    /// Every connection accepted so far, oldest first (open or not).
    pub fn accepted_connections(&self) -> Vec<u64> {
        self.lock().accepted.clone()
    }

    /// Every ack so far, in arrival order.
    pub fn acks(&self) -> Vec<Ack> {
        self.lock().acks.clone()
    }

    /// The acks of one envelope (Slack expects exactly one).
    pub fn acks_of(&self, envelope_id: &str) -> Vec<Ack> {
        self.lock()
            .acks
            .iter()
            .filter(|a| a.envelope_id == envelope_id)
            .cloned()
            .collect()
    }

    /// Text frames from the bot that were not acks.
    pub fn unexpected_frames(&self) -> Vec<(u64, String)> {
        self.lock().unexpected.clone()
    }

    /// A one-line summary of the connections, for failure messages.
    pub fn describe(&self) -> String {
        let state = self.lock();
        format!(
            "opens: {:?}; accepted connections: {:?}; open: {:?}; acks: {}",
            state
                .opens
                .iter()
                .map(|o| o.error.as_deref().unwrap_or("ok"))
                .collect::<Vec<_>>(),
            state.accepted,
            state.live.keys().collect::<Vec<_>>(),
            state.acks.len()
        )
    }

    /// Sends a raw text frame on connection `connection` (the newest when None).
    /// Panics when there is no such open connection.
    pub fn send_raw(&self, connection: Option<u64>, frame: &str) {
        let state = self.lock();
        let (id, tx) = match connection {
            Some(id) => (id, state.live.get(&id)),
            None => match state.live.iter().next_back() {
                Some((id, tx)) => (*id, Some(tx)),
                None => panic!("no open Socket Mode connection"),
            },
        };
        let tx = tx.unwrap_or_else(|| panic!("Socket Mode connection {id} is not open"));
        assert!(
            tx.send(Outgoing::Frame(frame.to_owned())).is_ok(),
            "Socket Mode connection {id} is closing"
        );
    }

    /// Pushes an envelope of `kind` (`slash_commands`, `interactive`,
    /// `events_api`) carrying `payload` on connection `connection` (the newest
    /// when None); returns its `envelope_id`.
    pub fn push_on(&self, connection: Option<u64>, kind: &str, payload: Value) -> String {
        let envelope_id = {
            let mut state = self.lock();
            state.next_envelope += 1;
            format!("env-{:04}-{kind}", state.next_envelope)
        };
        let envelope = json!({
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            // Slack accepts a response payload for commands and interactivity.
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": 0,
            "retry_reason": "",
        });
        self.send_raw(connection, &envelope.to_string());
        envelope_id
    }

    /// Pushes an envelope like Slack spreads them over an app's connections
    /// (those of every process): on each open connection in turn, oldest
    /// first. Returns the connection it went over and the `envelope_id`.
    pub fn push_spread(&self, kind: &str, payload: Value) -> (u64, String) {
        let connection = {
            let mut state = self.lock();
            let open: Vec<u64> = state.live.keys().copied().collect();
            assert!(!open.is_empty(), "no open Socket Mode connection");
            let pick = open[state.spread % open.len()];
            state.spread += 1;
            pick
        };
        (connection, self.push_on(Some(connection), kind, payload))
    }

    /// Pushes an envelope on the newest connection; see [`SocketMode::push_on`].
    pub fn push(&self, kind: &str, payload: Value) -> String {
        self.push_on(None, kind, payload)
    }

    /// Waits (up to `secs`) for the ack of `envelope_id` and returns its frame.
    pub async fn ack(&self, envelope_id: &str, secs: u64) -> Value {
        crate::wait_for(secs, &format!("the ack of {envelope_id}"), || {
            !self.acks_of(envelope_id).is_empty()
        })
        .await;
        self.acks_of(envelope_id)[0].frame.clone()
    }

    /// Sends Slack's `disconnect` envelope (`refresh_requested`, `warning`,
    /// `link_disabled`) on `connection`. The connection stays open until the app
    /// closes it; Slack itself drops it a little later, which
    /// [`SocketMode::drop_connection`] models.
    pub fn disconnect(&self, connection: u64, reason: &str) {
        let frame = json!({
            "type": "disconnect",
            "reason": reason,
            "debug_info": {"host": "fake-slack"},
        });
        self.send_raw(Some(connection), &frame.to_string());
    }

    /// Drops `connection` without a close frame, like a network failure.
    pub fn drop_connection(&self, connection: u64) {
        if let Some(tx) = self.lock().live.get(&connection) {
            let _ = tx.send(Outgoing::Drop);
        }
    }

    /// Waits (up to `secs`) until `n` connections are open.
    pub async fn wait_connections(&self, n: usize, secs: u64) {
        crate::wait_for(secs, &format!("{n} open Socket Mode connections"), || {
            self.connections().len() >= n
        })
        .await;
    }
}

/// Answers `apps.connections.open`: an app-level token gets a one-time `ws://`
/// URL on this server; anything else gets Slack's error for it.
pub(crate) fn connections_open(slack: &FakeSlack, headers: &HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    let error = if token.is_empty() {
        Some("not_authed")
    } else if !token.starts_with("xapp-") {
        Some("not_allowed_token_type")
    } else if token != APP_TOKEN {
        Some("invalid_auth")
    } else {
        None
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let mut state = slack.socket_mode.lock();
    state.opens.push(Open {
        token,
        error: error.map(str::to_owned),
        at: Instant::now(),
    });
    if let Some(code) = error {
        return axum::Json(json!({"ok": false, "error": code})).into_response();
    }
    state.next_ticket += 1;
    let ticket = state.next_ticket;
    state.tickets.push(ticket);
    axum::Json(json!({"ok": true, "url": format!("ws://{host}{WS_PATH}?ticket={ticket}")}))
        .into_response()
}

/// The WebSocket endpoint: a URL from `apps.connections.open`, used once.
pub(crate) async fn upgrade(
    State(slack): State<Arc<FakeSlack>>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let ticket = query.get("ticket").and_then(|t| t.parse::<u64>().ok());
    {
        let mut state = slack.socket_mode.lock();
        let Some(i) = state.tickets.iter().position(|t| Some(*t) == ticket) else {
            return (StatusCode::UNAUTHORIZED, "unknown or used ticket").into_response();
        };
        state.tickets.remove(i);
    }
    ws.on_upgrade(move |socket| serve(slack, socket))
}

/// One connection: `hello`, then the test's frames out and the bot's acks in,
/// until either side closes it.
async fn serve(slack: Arc<FakeSlack>, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = {
        let mut state = slack.socket_mode.lock();
        state.next_connection += 1;
        let id = state.next_connection;
        state.live.insert(id, tx);
        state.accepted.push(id);
        id
    };
    let hello = json!({
        "type": "hello",
        "num_connections": slack.socket_mode.connections().len(),
        "debug_info": {"host": "fake-slack", "build_number": 1, "approximate_connection_time": 18060},
        "connection_info": {"app_id": APP_ID},
    });
    let mut open = socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_ok();
    while open {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => record(&slack.socket_mode, id, text.as_str()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => open = false,
                // Pings are answered by the WebSocket layer.
                Some(Ok(_)) => {}
            },
            outgoing = rx.recv() => match outgoing {
                Some(Outgoing::Frame(text)) => {
                    open = socket.send(Message::Text(text.into())).await.is_ok();
                }
                Some(Outgoing::Drop) | None => {
                    // Dropping the socket closes the TCP connection without a close frame.
                    slack.socket_mode.lock().live.remove(&id);
                    return;
                }
            },
        }
    }
    slack.socket_mode.lock().live.remove(&id);
}

/// Records a frame from the bot: an ack, or something unexpected.
fn record(sm: &SocketMode, connection: u64, text: &str) {
    let frame: Option<Value> = serde_json::from_str(text).ok();
    let envelope_id = frame
        .as_ref()
        .and_then(|f| f["envelope_id"].as_str())
        .map(str::to_owned);
    let mut state = sm.lock();
    match (frame, envelope_id) {
        (Some(frame), Some(envelope_id)) => state.acks.push(Ack {
            connection,
            envelope_id,
            frame,
        }),
        _ => state.unexpected.push((connection, text.to_owned())),
    }
}

/// A slash command's Socket Mode payload: the same fields as the HTTP form
/// ([`crate::slash`]), plus the ones Slack always adds.
pub fn slash_command(command: &str, text: &str, user: &str) -> Value {
    let mut payload: serde_json::Map<String, Value> = crate::slash(command, text, user)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    for (k, v) in [
        ("token", "verification-token-unused"),
        ("team_domain", "test"),
        ("channel_name", "dev"),
        ("user_name", user),
        ("api_app_id", APP_ID),
        ("is_enterprise_install", "false"),
        ("trigger_id", "1700000000.1.abc"),
    ] {
        payload.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    Value::Object(payload)
}

/// A `block_actions` payload: `user` clicked the button `action_id` carrying
/// `value` on the message `message_ts` in channel `C1`.
pub fn block_actions(action_id: &str, value: &str, user: &str, message_ts: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user, "username": user, "name": user, "team_id": "T1"},
        "api_app_id": APP_ID,
        "token": "verification-token-unused",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": "C1", "is_ephemeral": false},
        "trigger_id": "1700000000.2.def",
        "team": {"id": "T1", "domain": "test"},
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": {"id": "C1", "name": "dev"},
        "response_url": "https://hooks.slack.com/actions/T1/1/x",
        "actions": [{
            "type": "button",
            "action_id": action_id,
            "block_id": "task",
            "text": {"type": "plain_text", "text": "Button", "emoji": true},
            "value": value,
            "action_ts": "1700000001.000100",
        }],
    })
}

/// An Events API callback (the `payload` of an `events_api` envelope) with
/// `event_id` around `event`, authorized for the bot user [`BOT_USER`].
pub fn event_callback(event_id: &str, event: Value) -> Value {
    json!({
        "token": "verification-token-unused",
        "team_id": "T1",
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1700000000,
        "authorizations": [{"enterprise_id": null, "team_id": "T1", "user_id": BOT_USER, "is_bot": true, "is_enterprise_install": false}],
        "is_ext_shared_channel": false,
        "event_context": "4-eyJldCI6ImFwcF9tZW50aW9uIn0",
    })
}

/// An `app_mention` event: `user` wrote `<@UBATON> text` in `C1` at `ts`.
pub fn app_mention(user: &str, text: &str, ts: &str) -> Value {
    json!({
        "type": "app_mention",
        "user": user,
        "text": format!("<@{BOT_USER}> {text}"),
        "ts": ts,
        "channel": "C1",
        "event_ts": ts,
        "client_msg_id": "5a8f1d6e-0000-4000-8000-000000000001",
        "team": "T1",
    })
}
