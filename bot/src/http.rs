//! The HTTP server: Slack routes (signature-checked first), the agents'
//! WebSocket, health, readiness and metrics.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use baton_shared::limits::MAX_FILE_BYTES;
use futures::StreamExt;

use crate::app::App;
use crate::model::TaskState;
use crate::slack::handlers::{EventEnvelope, Interaction, SlashCommand};
use crate::slack::intake;
use crate::slack::verify::{Verifier, verify_slack};

/// Builds the router.
pub fn router(app: Arc<App>, verifier: Option<Verifier>) -> Router {
    let slack = Router::new()
        .route("/slack/commands", post(slack_commands))
        .route("/slack/interactions", post(slack_interactions))
        .route("/slack/events", post(slack_events))
        .with_state(app.clone());
    let slack = match verifier {
        Some(v) => slack.route_layer(middleware::from_fn_with_state(v, verify_slack)),
        // Socket Mode without a signing secret: HTTP Slack routes are closed.
        None => Router::new()
            .route("/slack/commands", post(slack_disabled))
            .route("/slack/interactions", post(slack_disabled))
            .route("/slack/events", post(slack_disabled)),
    };
    Router::new()
        .route("/agents", get(crate::agents::upgrade))
        .route("/agents/files/{task}/{id}", get(agent_file))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
        .merge(slack)
}

async fn slack_disabled() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "HTTP Slack routes need SLACK_SIGNING_SECRET\n",
    )
        .into_response()
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

async fn slack_commands(State(app): State<Arc<App>>, body: Bytes) -> Response {
    command_from_form(&app, &body).await
}

async fn command_from_form(app: &Arc<App>, body: &[u8]) -> Response {
    match serde_urlencoded::from_bytes::<SlashCommand>(body) {
        Ok(cmd) => match intake::command(app, cmd).await {
            Some(json) => Json(json).into_response(),
            None => StatusCode::OK.into_response(),
        },
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("cannot read the slash command: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct PayloadForm {
    payload: String,
}

async fn slack_interactions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    interaction_from_form(&app, &body).await
}

async fn interaction_from_form(app: &Arc<App>, body: &[u8]) -> Response {
    let payload = serde_urlencoded::from_bytes::<PayloadForm>(body)
        .map_err(|e| e.to_string())
        .and_then(|f| serde_json::from_str::<Interaction>(&f.payload).map_err(|e| e.to_string()));
    match payload {
        Ok(p) => {
            intake::interaction(app, p);
            StatusCode::OK.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("cannot read the interaction: {e}\n"),
        )
            .into_response(),
    }
}

/// One Request URL for everything, like Bolt: slash commands and
/// interactivity are told apart by their form fields.
async fn slack_events(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if is_form(&headers) {
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        if fields.iter().any(|(k, _)| k == "payload") {
            return interaction_from_form(&app, &body).await;
        }
        if fields.iter().any(|(k, _)| k == "command") {
            return command_from_form(&app, &body).await;
        }
        return (StatusCode::BAD_REQUEST, "unrecognised form payload\n").into_response();
    }
    let env: EventEnvelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot read the event: {e}\n"),
            )
                .into_response();
        }
    };
    if env.kind == "url_verification" {
        return Json(serde_json::json!({"challenge": env.challenge.unwrap_or_default()}))
            .into_response();
    }
    match intake::event(&app, env).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => {
            // Slack retries it; the event id dedupes the retry.
            tracing::error!(error = ?err, "cannot record the event id");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The answer to a fetch of a file that is not this agent's to fetch (no such
/// task, another agent's, ended, or no such file): the same for all, so it
/// says nothing about other agents' tasks.
const NO_SUCH_FILE: &str = "no such file for this agent\n";

/// `GET /agents/files/{task}/{id}`: a file attached to a task, for the agent
/// the task is assigned to now (its key, as for the WebSocket), streamed
/// from Slack with the bot token and cut at [`MAX_FILE_BYTES`].
async fn agent_file(
    State(app): State<Arc<App>>,
    AxPath((task, file)): AxPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(key) = headers
        .get(header::AUTHORIZATION)
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
    let agent = match app.store.agent_by_key_hash(&crate::keys::hash(key)).await {
        Ok(Some(row)) if crate::keys::matches(key, &row.key_hash) => row.name,
        Ok(_) => {
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
    let Ok(task) = task.parse::<i64>() else {
        return (StatusCode::NOT_FOUND, NO_SUCH_FILE).into_response();
    };
    let found = async {
        let Some(t) = app.store.task(task).await? else {
            return Ok(None);
        };
        let active = matches!(
            t.state.parse::<TaskState>(),
            Ok(TaskState::Dispatched | TaskState::Running)
        );
        if !active || t.agent.as_deref() != Some(agent.as_str()) {
            return Ok(None);
        }
        app.store.task_file(task, &file).await
    };
    let file = match found.await {
        Ok(Some(f)) => f,
        Ok(None) => return (StatusCode::NOT_FOUND, NO_SUCH_FILE).into_response(),
        Err(err) => {
            tracing::error!(task, error = ?err, "cannot read a task's file");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the task now; retry\n",
            )
                .into_response();
        }
    };
    let answer = match app.slack.download(&file.url).await {
        Ok(a) => a,
        Err(err) => {
            tracing::warn!(task, file = %file.file_id, error = %err, "cannot fetch a task's file from Slack");
            return (
                StatusCode::BAD_GATEWAY,
                format!("cannot fetch the file from Slack: {err}\n"),
            )
                .into_response();
        }
    };
    let announced = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_FILE_BYTES) {
        return (
            StatusCode::BAD_GATEWAY,
            format!("the file is larger than {MAX_FILE_BYTES} bytes\n"),
        )
            .into_response();
    }
    tracing::info!(task, file = %file.file_id, %agent, "streaming a task's file to its agent");
    // Streamed as it arrives; a body that goes past the limit (a size in an
    // event is only a claim) is cut off with an error, so the agent sees an
    // incomplete answer, never a silently shortened file.
    let mut sent = 0u64;
    let body = answer.into_body().into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        sent += chunk.len() as u64;
        if sent > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "the file is larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        Ok(chunk)
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(n) = announced {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    }
    response
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let mut problems = app.readiness.problems();
    if let Err(why) = app.store.health().await {
        problems.push(format!("database: {why}"));
    }
    if problems.is_empty() {
        "ready\n".into_response()
    } else {
        let mut body = problems.join("\n");
        body.push('\n');
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// What to say loudly at start when `/metrics` is open to the network:
/// no `BATON_METRICS_TOKEN`, and a listener that is not on loopback.
pub fn metrics_exposure_warning(settings: &crate::settings::Settings) -> Option<String> {
    let token = settings
        .metrics_token
        .as_ref()
        .is_some_and(|t| !secrecy::ExposeSecret::expose_secret(t).trim().is_empty());
    if token || settings.listen.ip().is_loopback() {
        return None;
    }
    Some(format!(
        "GET /metrics on {} answers anyone who can reach it (it names agents and projects): set BATON_METRICS_TOKEN, or listen on a loopback address behind a proxy",
        settings.listen
    ))
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(token) = &app.settings.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = subtle::ConstantTimeEq::ct_eq(
            presented.as_bytes(),
            secrecy::ExposeSecret::expose_secret(token).as_bytes(),
        )
        .into();
        if !ok {
            return (StatusCode::UNAUTHORIZED, "metrics need the bearer token\n").into_response();
        }
    }
    let mut out = String::new();
    // One scrape reads a bounded number of rows: active tasks by state and
    // queue depths (both bounded by the queues' bound and the agents'
    // capacity); ended tasks are counted as they end.
    let _ = writeln!(
        out,
        "# HELP baton_tasks Queued, dispatched and running tasks.\n# TYPE baton_tasks gauge"
    );
    let active = app.store.active_counts().await.unwrap_or_default();
    for state in [TaskState::Queued, TaskState::Dispatched, TaskState::Running] {
        let n = active
            .iter()
            .find(|(s, _)| s == state.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "baton_tasks{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP baton_tasks_ended_total Tasks this process ended, by final state.\n# TYPE baton_tasks_ended_total counter"
    );
    for (state, n) in crate::store::TERMINAL.iter().zip(app.store.ended()) {
        let _ = writeln!(out, "baton_tasks_ended_total{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP baton_approval_decisions_total Approval requests this process decided, by decision.\n# TYPE baton_approval_decisions_total counter"
    );
    for (decision, n) in crate::app::DECISIONS
        .iter()
        .zip(app.approval_desk.decided())
    {
        let decision = crate::model::ApprovalState::of(*decision);
        let _ = writeln!(
            out,
            "baton_approval_decisions_total{{decision=\"{decision}\"}} {n}"
        );
    }
    let agents = app.hub.snapshot();
    let _ = writeln!(
        out,
        "# HELP baton_agents_connected Agents with a live connection.\n# TYPE baton_agents_connected gauge"
    );
    let _ = writeln!(
        out,
        "baton_agents_connected {}",
        agents.iter().filter(|a| a.connected).count()
    );
    let _ = writeln!(
        out,
        "# HELP baton_circuit_state Circuit state per agent (0 closed, 1 half-open, 2 open).\n# TYPE baton_circuit_state gauge"
    );
    for a in &agents {
        let v = match a.breaker.state {
            crate::breaker::CircuitState::Closed => 0,
            crate::breaker::CircuitState::HalfOpen => 1,
            crate::breaker::CircuitState::Open => 2,
        };
        let _ = writeln!(out, "baton_circuit_state{{agent=\"{}\"}} {v}", a.name);
    }
    let _ = writeln!(
        out,
        "# HELP baton_queue_depth Queued tasks per project.\n# TYPE baton_queue_depth gauge"
    );
    for (p, n) in app.store.queue_depths().await.unwrap_or_default() {
        let _ = writeln!(out, "baton_queue_depth{{project=\"{p}\"}} {n}");
    }
    app.dispatch_latency.render(
        "baton_dispatch_latency_seconds",
        "Time from a task entering its queue to its submit frame going to an agent.",
        &mut out,
    );
    let s = app.consolidator.stats();
    let _ = writeln!(
        out,
        "# HELP baton_slack_calls_total Slack Web API calls.\n# TYPE baton_slack_calls_total counter"
    );
    let _ = writeln!(
        out,
        "baton_slack_calls_total{{method=\"chat.postMessage\"}} {}",
        s.posts
    );
    let _ = writeln!(
        out,
        "baton_slack_calls_total{{method=\"chat.update\"}} {}",
        s.updates
    );
    let _ = writeln!(
        out,
        "# HELP baton_slack_rate_limited_total Slack 429 answers.\n# TYPE baton_slack_rate_limited_total counter"
    );
    let _ = writeln!(out, "baton_slack_rate_limited_total {}", s.rate_limited);
    let _ = writeln!(
        out,
        "# HELP baton_slack_errors_total Other failed Slack calls.\n# TYPE baton_slack_errors_total counter"
    );
    let _ = writeln!(out, "baton_slack_errors_total {}", s.errors);
    if let Some(commits) = app.store.commits() {
        let _ = writeln!(
            out,
            "# HELP baton_db_commits_total SQLite transactions committed by the group writer (each holds every write that was waiting).\n# TYPE baton_db_commits_total counter"
        );
        let _ = writeln!(out, "baton_db_commits_total {commits}");
    }
    if let Some(writes) = app.store.writes() {
        let _ = writeln!(
            out,
            "# HELP baton_db_writes_total Statements run by SQLite's group writer.\n# TYPE baton_db_writes_total counter"
        );
        let _ = writeln!(out, "baton_db_writes_total {writes}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_metrics_on_a_public_listener_are_warned_about() {
        let mut s =
            crate::settings::Settings::for_tests("http://127.0.0.1:9", "sqlite::memory:", "x");
        assert_eq!(metrics_exposure_warning(&s), None, "loopback");
        s.listen = "0.0.0.0:8080".parse().expect("addr");
        let warning = metrics_exposure_warning(&s).expect("public, no token");
        assert!(warning.contains("BATON_METRICS_TOKEN"), "{warning}");
        s.metrics_token = Some("  ".to_owned().into());
        assert!(
            metrics_exposure_warning(&s).is_some(),
            "a blank token is none"
        );
        s.metrics_token = Some("t0k3n".to_owned().into());
        assert_eq!(metrics_exposure_warning(&s), None, "token set");
        s.metrics_token = None;
        s.listen = "[::1]:8080".parse().expect("addr");
        assert_eq!(metrics_exposure_warning(&s), None, "IPv6 loopback");
    }
    /// Issue 13, finding 8: `/readyz` notices a dead database writer.
    #[tokio::test]
    async fn readyz_reports_a_dead_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let settings = crate::settings::Settings::for_tests("http://127.0.0.1:9", &url, "s");
        let store = crate::store::Store::connect(&url).await.expect("store");
        let slack =
            crate::slack::api::SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
                .expect("slack client");
        let app = Arc::new(App::new(
            settings,
            store.clone(),
            slack,
            Arc::new(crate::clock::SystemWallClock),
        ));
        assert_eq!(readyz(State(app.clone())).await.status(), StatusCode::OK);
        store.kill_writer();
        let mut status = StatusCode::OK;
        for _ in 0..100 {
            status = readyz(State(app.clone())).await.status();
            if status != StatusCode::OK {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let res = readyz(State(app)).await;
        let body = axum::body::to_bytes(res.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], b"database: the database writer has stopped\n");
    }
}
