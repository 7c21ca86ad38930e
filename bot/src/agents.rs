//! The agents' WebSocket endpoint: authentication, hello, reconciliation, then
//! a read loop and a write loop joined by `select!`, with heartbeats both ways.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_shared::AgentName;
use baton_shared::limits::{HEARTBEAT_MISSES_DEAD, MAX_FRAME_BYTES};
use baton_shared::protocol::{
    AgentMessage, BotMessage, Hello, PROTOCOL_VERSION, ProtocolError, close_code,
};
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;

use crate::app::App;
use crate::hub::{Outbox, Outgoing, Register};

/// How long a new connection has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Malformed frames in a row before the connection is closed.
pub const MAX_PROTOCOL_ERRORS: u32 = 5;
/// Read buffer of each agent's socket, and the most one read takes.
/// tungstenite's default, 128 KiB, is zero-filled at the first read: 128 KiB
/// resident per idle agent. Agents' frames are mostly pongs and events of a
/// few hundred bytes; a larger frame gets room for its whole length when its
/// header is read, and is read in steps of this size.
pub const READ_BUFFER_BYTES: usize = 512;

/// `GET /agents`: authenticates the key, then upgrades.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(key) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
    else {
        return (
            StatusCode::UNAUTHORIZED,
            "missing agent key: send Authorization: Bearer KEY\n",
        )
            .into_response();
    };
    let hash = crate::keys::hash(key);
    let row = match app.store.agent_by_key_hash(&hash).await {
        Ok(Some(row)) if crate::keys::matches(key, &row.key_hash) => row,
        Ok(_) => {
            tracing::warn!("agent connection refused: unknown or revoked key");
            return (StatusCode::UNAUTHORIZED, "unknown or revoked agent key\n").into_response();
        }
        Err(err) => {
            tracing::error!(error = ?err, "cannot check an agent key");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the key now; retry\n",
            )
                .into_response();
        }
    };
    let row_projects = row.projects.clone();
    let Ok(name) = AgentName::new(row.name) else {
        return (StatusCode::UNAUTHORIZED, "agent name is invalid\n").into_response();
    };
    if app.hub.is_connected(name.as_str()) {
        tracing::warn!(agent = %name, "second connection with the same key refused");
        return (
            StatusCode::CONFLICT,
            "another connection with this key is live; retry later\n",
        )
            .into_response();
    }
    if app.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "bot is shutting down\n").into_response();
    }
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            // Boxed until it is split: the futures that hand it on would
            // otherwise each keep a copy's worth of room for it, for the
            // life of the connection.
            let socket = Box::new(socket);
            async move {
                let span = tracing::info_span!("agent", agent = %name);
                let grant = crate::keys::granted(row_projects.as_deref());
                let _ =
                    tracing::Instrument::instrument(serve(app, name, grant, socket), span).await;
            }
        })
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

/// Waits for the hello, rejecting anything else.
async fn read_hello(
    socket: &mut WebSocket,
) -> Result<baton_shared::protocol::Hello, (u16, String)> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, socket.next()).await;
    let text = match first {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(_))) => {
            return Err((
                close_code::NO_HELLO,
                "the first frame must be a hello".into(),
            ));
        }
        _ => return Err((close_code::NO_HELLO, "no hello in time".into())),
    };
    match AgentMessage::decode(&text) {
        Ok(AgentMessage::Hello(h)) => Ok(h),
        Ok(_) => Err((
            close_code::NO_HELLO,
            "the first frame must be a hello".into(),
        )),
        Err(ProtocolError::UnsupportedVersion(v)) => Err((
            close_code::UNSUPPORTED_VERSION,
            format!("protocol {v} not supported; this bot speaks {PROTOCOL_VERSION}"),
        )),
        Err(e) => Err((close_code::NO_HELLO, format!("bad hello: {e}"))),
    }
}

/// Splits the projects `hello` announces into those `grant` allows (None:
/// any), kept in the hello, and those it does not, returned.
pub fn keep_granted(hello: &mut Hello, grant: Option<&[String]>) -> Vec<String> {
    let Some(grant) = grant else {
        return Vec::new();
    };
    let mut refused = Vec::new();
    hello.projects.retain(|p| {
        let ok = grant.iter().any(|g| g == p.name.as_str());
        if !ok {
            refused.push(p.name.to_string());
        }
        ok
    });
    refused
}

async fn serve(
    app: Arc<App>,
    name: AgentName,
    grant: Option<Vec<String>>,
    mut socket: Box<WebSocket>,
) {
    let mut hello = match read_hello(&mut socket).await {
        Ok(h) => h,
        Err((code, reason)) => {
            tracing::warn!(code, reason, "agent refused at hello");
            let _ = socket.send(close(code, &reason)).await;
            return;
        }
    };
    // A project the key does not grant is never created, never routed here.
    let refused = keep_granted(&mut hello, grant.as_deref());
    drop(grant);
    for project in &refused {
        tracing::warn!(
            project,
            "agent announced a project its key does not grant; refused for this agent"
        );
        if let Err(err) = app
            .store
            .audit(
                name.as_str(),
                "refused.project",
                project,
                "not granted to this agent's key",
            )
            .await
        {
            tracing::error!(error = ?err, "cannot audit a refused project");
        }
    }
    // Its projects exist before it can be seen as connected: a task sent the
    // moment it shows up must find them.
    for p in &hello.projects {
        if let Err(err) = app.store.ensure_project(p.name.as_str()).await {
            tracing::error!(error = ?err, "cannot record the agent's projects");
            let _ = socket
                .send(close(1011, "the bot cannot record this agent's projects"))
                .await;
            return;
        }
    }
    let (tx, mut rx) = Outbox::new();
    let overflow = rx.overflow();
    // The welcome goes first: once registered, the agent may be sent a task
    // at any moment (another process's notification wakes a dispatch).
    let welcome = BotMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        agent: name.clone(),
        heartbeat_secs: app.settings.heartbeat().as_secs(),
    };
    let _ = tx.send(Outgoing::Frame(welcome));
    let conn_id = match app.hub.register(name.as_str(), tx.clone(), &hello) {
        Register::Ok(id) => id,
        Register::Duplicate => {
            let _ = socket
                .send(close(
                    close_code::DUPLICATE,
                    "another connection with this key is live",
                ))
                .await;
            return;
        }
    };
    app.hub.set_refused(name.as_str(), refused);
    // Before its tasks are reconciled: from now on no other process takes them over.
    app.hold_agent(name.as_str()).await;
    tracing::info!(
        capacity = hello.capacity,
        projects = hello.projects.len(),
        "agent connected"
    );
    let heartbeat = app.settings.heartbeat();
    match Box::pin(app.reconcile(name.as_str(), &hello)).await {
        Ok(frames) => {
            for f in frames {
                let _ = tx.send(Outgoing::Frame(f));
            }
        }
        Err(err) => tracing::error!(error = ?err, "cannot reconcile the agent's tasks"),
    }
    // Only now may tasks go to it: one handed out before would have been
    // taken by the reconcile for a task the agent came back without.
    app.hub.reconciled(name.as_str());
    app.dispatch_wake.notify_one();
    // Not needed past this point; dropped now, it takes no room in the connection's task.
    drop(hello);

    let (mut sink, mut stream) = (*socket).split();
    let dead_after = heartbeat * HEARTBEAT_MISSES_DEAD;
    let last_heard = Arc::new(std::sync::Mutex::new(Instant::now()));

    let writer = {
        let last_heard = last_heard.clone();
        async move {
            let mut ping = tokio::time::interval(heartbeat);
            ping.tick().await;
            loop {
                let heard_deadline = *crate::sync::lock(&last_heard) + dead_after;
                tokio::select! {
                    out = rx.next() => match out {
                        Some(Outgoing::Frame(msg)) => {
                            if sink.send(Message::Text(msg.encode().into())).await.is_err() { break; }
                        }
                        Some(Outgoing::Close(code, reason)) => {
                            let _ = sink.send(close(code, &reason)).await;
                            break;
                        }
                        None => break,
                    },
                    _ = ping.tick() => {
                        if sink.send(Message::Ping(Vec::new().into())).await.is_err() { break; }
                    }
                    // Silence is checked when it would reach two intervals, not at the next
                    // ping: a dead peer is noticed `dead_after` after its last frame.
                    _ = tokio::time::sleep_until(heard_deadline) => {
                        let silent = crate::sync::lock(&last_heard).elapsed();
                        if silent >= dead_after {
                            tracing::warn!(silent_secs = silent.as_secs(), "agent silent for two heartbeats; dropping it");
                            let _ = sink.send(close(1001, "heartbeat timeout")).await;
                            break;
                        }
                    }
                }
            }
        }
    };

    let reader = {
        let app = app.clone();
        let name = name.clone();
        let tx = tx.clone();
        async move {
            let mut errors = 0u32;
            while let Some(frame) = stream.next().await {
                let Ok(frame) = frame else { break };
                *crate::sync::lock(&last_heard) = Instant::now();
                app.hub.seen(name.as_str());
                let decoded = match frame {
                    Message::Text(t) => AgentMessage::decode(&t),
                    Message::Close(_) => break,
                    Message::Binary(_) => Err(ProtocolError::Malformed(
                        "binary frames are not part of the protocol".into(),
                    )),
                    _ => continue,
                };
                match decoded {
                    Ok(AgentMessage::Hello(_)) => {
                        let _ = tx.send(Outgoing::Frame(BotMessage::Error {
                            code: baton_shared::protocol::ErrorCode::Unexpected,
                            message: "hello was already received on this connection".into(),
                        }));
                    }
                    Ok(AgentMessage::Draining) => {
                        tracing::info!("agent is draining");
                        app.hub.set_draining(name.as_str());
                        app.dispatch_wake.notify_one();
                    }
                    Ok(msg) => {
                        errors = 0;
                        // Boxed: its state lives on the heap only while an event is applied,
                        // not in every idle connection's task.
                        for reply in Box::pin(app.apply_event(name.as_str(), msg)).await {
                            let _ = tx.send(Outgoing::Frame(reply));
                        }
                    }
                    Err(err) => {
                        errors += 1;
                        tracing::warn!(error = %err, "protocol error from agent");
                        let _ = tx.send(Outgoing::Frame(BotMessage::error(&err)));
                        if errors >= MAX_PROTOCOL_ERRORS {
                            let _ = tx.send(Outgoing::Close(
                                close_code::PROTOCOL_ERRORS,
                                "too many protocol errors".into(),
                            ));
                        }
                    }
                }
            }
        }
    };

    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        // Dropping the writer drops the socket: the peer is cut off.
        _ = overflow.wait() => {
            tracing::warn!(
                frames = crate::hub::OUTBOX_MAX_FRAMES,
                "agent does not read what the bot sends (its queue is full); disconnecting it"
            );
        }
    }
    // Released before it is unregistered: a new connection of this agent
    // (refused while this one is registered) records its hold after this.
    app.release_agent(name.as_str()).await;
    app.hub.unregister(name.as_str(), conn_id);
    app.dispatch_wake.notify_one();
    tracing::info!("agent disconnected");
}
