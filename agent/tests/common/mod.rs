//! Test harness: a fake Slack Web API over real HTTP, the bot in-process on a
//! temporary SQLite file, the real `baton-agent` binary, and signed Slack requests.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub const SIGNING_SECRET: &str = "test-signing-secret";
pub const AGENT_KEY: &str = "e2e-agent-key-0123456789";

/// One Web API call the fake Slack received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
}

/// The fake Slack Web API: records calls, enforces Slack's limits.
#[derive(Debug, Default)]
pub struct FakeSlack {
    pub calls: Mutex<Vec<Call>>,
    next_ts: Mutex<u64>,
}

impl FakeSlack {
    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }
}

fn slack_error(code: &str) -> Response {
    axum::Json(json!({"ok": false, "error": code})).into_response()
}

/// Checks a message payload the way Slack does.
fn check_limits(body: &Value) -> Option<&'static str> {
    if body["text"]
        .as_str()
        .is_some_and(|t| t.chars().count() > 4000)
    {
        return Some("msg_too_long");
    }
    if let Some(blocks) = body["blocks"].as_array() {
        if blocks.len() > 50 {
            return Some("invalid_blocks");
        }
        for b in blocks {
            if b["text"]["text"]
                .as_str()
                .is_some_and(|t| t.chars().count() > 3000)
            {
                return Some("invalid_blocks");
            }
        }
    }
    None
}

async fn api(
    State(slack): State<Arc<FakeSlack>>,
    AxPath(method): AxPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v != "Bearer xoxb-test")
    {
        return slack_error("not_authed");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return slack_error("invalid_json");
    };
    slack.calls.lock().unwrap().push(Call {
        method: method.clone(),
        body: body.clone(),
    });
    if let Some(err) = check_limits(&body) {
        return slack_error(err);
    }
    match method.as_str() {
        "chat.postMessage" => {
            let ts = {
                let mut n = slack.next_ts.lock().unwrap();
                *n += 1;
                format!("1700000000.{:06}", *n)
            };
            let channel = body["channel"].as_str().unwrap_or("C?").to_owned();
            axum::Json(json!({"ok": true, "channel": channel, "ts": ts, "message": {"ts": ts, "text": body["text"]}})).into_response()
        }
        "chat.update" => axum::Json(
            json!({"ok": true, "channel": body["channel"], "ts": body["ts"], "text": body["text"]}),
        )
        .into_response(),
        "chat.postEphemeral" => {
            axum::Json(json!({"ok": true, "message_ts": "1700000000.999999"})).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "unknown method").into_response(),
    }
}

/// Serves the fake Slack on 127.0.0.1; returns it and its base URL.
pub async fn fake_slack() -> (Arc<FakeSlack>, String) {
    let slack = Arc::new(FakeSlack::default());
    let app = Router::new()
        .route("/api/{method}", axum::routing::post(api))
        .with_state(slack.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (slack, format!("http://{addr}/api"))
}

/// A bot running in-process.
pub struct Bot {
    pub addr: SocketAddr,
    pub db_url: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Bot {
    pub async fn start(
        slack_url: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut baton_bot::settings::Settings),
    ) -> Bot {
        let db_url = format!("sqlite://{}?mode=rwc", dir.join("baton.db").display());
        let mut settings =
            baton_bot::settings::Settings::for_tests(slack_url, &db_url, SIGNING_SECRET);
        settings.agent_keys = format!("e2e:{AGENT_KEY}").into();
        settings.admins = vec!["UADMIN".into()];
        tweak(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let clock = Arc::new(baton_bot::clock::SystemWallClock);
        let handle = tokio::spawn(baton_bot::run(settings, listener, clock, async {
            let _ = rx.await;
        }));
        Bot {
            addr,
            db_url,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub async fn store(&self) -> baton_bot::store::Store {
        baton_bot::store::Store::connect(&self.db_url)
            .await
            .unwrap()
    }
}

/// Signs a body like Slack: `v0=hex(hmac_sha256(secret, "v0:{ts}:{body}"))`.
pub fn sign(secret: &str, ts: &str, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A minimal HTTP/1.1 request over a fresh connection; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match text.split_once("\r\n\r\n") {
        Some((head, b))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(b)
        }
        Some((_, b)) => b.to_owned(),
        None => String::new(),
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Posts a form to a Slack route, signed (or with a wrong signature).
pub async fn post_signed(
    addr: SocketAddr,
    path: &str,
    form: &[(&str, &str)],
    secret: &str,
) -> (u16, String) {
    let body = serde_urlencoded::to_string(form).unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sig = sign(secret, &ts, &body);
    http(
        addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded".into()),
            ("X-Slack-Request-Timestamp", ts),
            ("X-Slack-Signature", sig),
        ],
        &body,
    )
    .await
}

/// A slash command's form.
pub fn slash<'a>(command: &'a str, text: &'a str, user: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("command", command),
        ("text", text),
        ("user_id", user),
        ("channel_id", "C1"),
        ("team_id", "T1"),
        ("response_url", "http://127.0.0.1:9/response"),
    ]
}

/// A project directory with a `run.sh` that reports two steps and echoes the prompt.
pub fn project_dir(dir: &Path, script: &str) -> PathBuf {
    let p = dir.join("project");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("run.sh"), script).unwrap();
    p
}

/// The real agent binary, started with a config serving `project` from `path`.
pub fn start_agent(
    dir: &Path,
    bot: SocketAddr,
    path: &Path,
    capacity: u32,
) -> tokio::process::Child {
    let cfg = format!(
        "server = \"ws://{bot}/agents\"\nkey = \"{AGENT_KEY}\"\ncapacity = {capacity}\nstate_dir = \"{}\"\ncancel_grace_secs = 2\n\n[[project]]\nname = \"web\"\npath = \"{}\"\nexecutor = \"command\"\ncommand = [\"/bin/sh\", \"./run.sh\"]\nmax_concurrent = {capacity}\n",
        dir.join("agent-state").display(),
        path.display()
    );
    let cfg_path = dir.join("agent.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-agent"))
        .arg("--config")
        .arg(&cfg_path)
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for a condition, checking every 20 ms, failing after `secs`.
pub async fn wait_for<F: FnMut() -> bool>(secs: u64, what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the bot's metrics show `n` connected agents.
pub async fn wait_agents(addr: SocketAddr, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http(addr, "GET", "/metrics", &[], "").await;
        if body.contains(&format!("baton_agents_connected {n}\n")) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents never connected: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// All text of a message payload (fallback text and block texts).
pub fn message_text(body: &Value) -> String {
    let mut s = body["text"].as_str().unwrap_or("").to_owned();
    for b in body["blocks"].as_array().into_iter().flatten() {
        if let Some(t) = b["text"]["text"].as_str() {
            s.push('\n');
            s.push_str(t);
        }
        for e in b["elements"].as_array().into_iter().flatten() {
            if let Some(t) = e["text"].as_str().or(e["text"]["text"].as_str()) {
                s.push('\n');
                s.push_str(t);
            }
        }
    }
    s
}
