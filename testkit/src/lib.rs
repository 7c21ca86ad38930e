//! Test support shared by Baton's tests and its benchmark: a fake Slack Web API
//! over real HTTP, requests signed like Slack signs them, a bot running
//! in-process on a SQLite file, and configs for the real `baton-agent` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod slack;
pub mod socket_mode;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub use slack::{Call, FakeSlack, fake_slack, message_text};

pub const SIGNING_SECRET: &str = "test-signing-secret";
pub const AGENT_KEY: &str = "e2e-agent-key-0123456789";

/// A bot running in-process.
#[derive(Debug)]
pub struct Bot {
    pub addr: SocketAddr,
    pub db_url: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Bot {
    /// Starts a bot on `dir/baton.db` talking to the fake Slack at `slack_url`,
    /// with agent `e2e` (key [`AGENT_KEY`]) and admin `UADMIN`; `tweak` adjusts
    /// the settings before start.
    pub async fn start(
        slack_url: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut baton_bot::settings::Settings),
    ) -> Bot {
        Self::start_on(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            slack_url,
            dir,
            tweak,
        )
        .await
    }

    /// Like [`Bot::start`], on a listener the caller bound (to restart a bot on
    /// the same address).
    pub async fn start_on(
        listener: tokio::net::TcpListener,
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

    /// Stops the bot gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    /// Stops the bot the hard way: its tasks are dropped mid-flight, nothing is
    /// flushed (what a kill -9 leaves behind, as far as the database and the
    /// sockets are concerned).
    pub async fn kill(mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
            let _ = h.await;
        }
    }

    /// A second connection to the bot's database.
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

/// The headers Slack sends with a signed request of `body` (timestamp now).
pub fn signed_headers(secret: &str, content_type: &str, body: &str) -> Vec<(&'static str, String)> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sig = sign(secret, &ts, body);
    vec![
        ("Content-Type", content_type.to_owned()),
        ("X-Slack-Request-Timestamp", ts),
        ("X-Slack-Signature", sig),
    ]
}

/// Posts a form to a Slack route, signed with `secret`.
pub async fn post_signed(
    addr: SocketAddr,
    path: &str,
    form: &[(&str, &str)],
    secret: &str,
) -> (u16, String) {
    let body = serde_urlencoded::to_string(form).unwrap();
    let headers = signed_headers(secret, "application/x-www-form-urlencoded", &body);
    http(addr, "POST", path, &headers, &body).await
}

/// Posts a JSON Events API payload to `/slack/events`, signed; `retry` adds
/// Slack's `X-Slack-Retry-Num` header.
pub async fn post_event(
    addr: SocketAddr,
    payload: &serde_json::Value,
    retry: Option<u32>,
) -> (u16, String) {
    let body = payload.to_string();
    let mut headers = signed_headers(SIGNING_SECRET, "application/json", &body);
    if let Some(n) = retry {
        headers.push(("X-Slack-Retry-Num", n.to_string()));
        headers.push(("X-Slack-Retry-Reason", "http_timeout".to_owned()));
    }
    http(addr, "POST", "/slack/events", &headers, &body).await
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

/// Sends `/baton TEXT` as `user`, signed; returns status and body.
pub async fn baton(addr: SocketAddr, text: &str, user: &str) -> (u16, String) {
    post_signed(
        addr,
        "/slack/commands",
        &slash("/baton", text, user),
        SIGNING_SECRET,
    )
    .await
}

/// Sends `/baton-admin TEXT` as `UADMIN`, signed; returns the body.
pub async fn admin(addr: SocketAddr, text: &str) -> String {
    post_signed(
        addr,
        "/slack/commands",
        &slash("/baton-admin", text, "UADMIN"),
        SIGNING_SECRET,
    )
    .await
    .1
}

/// A project directory `dir/NAME` with a `run.sh` holding `script`.
pub fn project_dir(dir: &Path, name: &str, script: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("run.sh"), script).unwrap();
    p
}

/// What an agent config needs; [`AgentConfig::write`] writes the TOML.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub bot: SocketAddr,
    pub key: String,
    pub capacity: u32,
    pub state_dir: PathBuf,
    /// `(project name, path, command)`.
    pub projects: Vec<(String, PathBuf, Vec<String>)>,
    /// Extra top-level TOML lines (e.g. `drain_secs = 5`).
    pub extra: String,
}

impl AgentConfig {
    /// An agent with key [`AGENT_KEY`] serving project `web` from `path` with
    /// `sh ./run.sh`, its state in `dir/agent-state`.
    pub fn new(dir: &Path, bot: SocketAddr, path: &Path, capacity: u32) -> Self {
        AgentConfig {
            bot,
            key: AGENT_KEY.to_owned(),
            capacity,
            state_dir: dir.join("agent-state"),
            projects: vec![(
                "web".to_owned(),
                path.to_owned(),
                vec!["/bin/sh".to_owned(), "./run.sh".to_owned()],
            )],
            extra: String::new(),
        }
    }

    /// The config as TOML.
    pub fn toml(&self) -> String {
        let mut s = format!(
            "server = \"ws://{}/agents\"\nkey = \"{}\"\ncapacity = {}\nstate_dir = \"{}\"\ncancel_grace_secs = 2\n{}\n",
            self.bot,
            self.key,
            self.capacity,
            self.state_dir.display(),
            self.extra
        );
        for (name, path, command) in &self.projects {
            let cmd: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
            s.push_str(&format!(
                "\n[[project]]\nname = \"{name}\"\npath = \"{}\"\nexecutor = \"command\"\ncommand = [{}]\nmax_concurrent = {}\n",
                path.display(),
                cmd.join(", "),
                self.capacity
            ));
        }
        s
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.toml()).unwrap();
    }
}

/// Starts the agent binary `bin` with the config at `config`.
pub fn spawn_agent(bin: &Path, config: &Path) -> tokio::process::Child {
    tokio::process::Command::new(bin)
        .arg("--config")
        .arg(config)
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

/// Waits until task `id` is in `state` in the bot's database.
pub async fn wait_state(store: &baton_bot::store::Store, id: i64, state: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = store.task(id).await.unwrap().map(|t| t.state);
        if now.as_deref() == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task #{id} never reached {state}: it is {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
