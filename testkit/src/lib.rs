//! Test support shared by Baton's tests and its benchmark: a fake Slack Web API
//! over real HTTP, requests signed like Slack signs them, a bot running
//! in-process on a SQLite file (or PostgreSQL, see [`db`]), and configs for
//! the real `baton-agent` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod db;
pub mod local_slack;
pub mod processes;
pub mod scene;
pub mod slack;
pub mod socket_mode;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub use slack::{Call, FakeFile, FakeSlack, FakeUser, fake_slack, message_text, response_url_of};

pub const SIGNING_SECRET: &str = "test-signing-secret";
pub const AGENT_KEY: &str = "e2e-agent-key-0123456789";

/// A bot running in-process, on its own thread and tokio runtime, so that
/// [`Bot::kill`] can take it down the way kill -9 would: every task dropped
/// mid-flight, sockets closed, nothing flushed; only the database remains.
#[derive(Debug)]
pub struct Bot {
    pub addr: SocketAddr,
    pub db_url: String,
    ctl: Option<oneshot::Sender<Stop>>,
    done: Option<oneshot::Receiver<anyhow::Result<()>>>,
}

#[derive(Debug)]
enum Stop {
    Graceful,
    Kill,
}

impl Bot {
    /// Starts a bot on `dir`'s database ([`db::url_for_dir`]) talking to the fake Slack at `slack_url`,
    /// with agent `e2e` (key [`AGENT_KEY`]) and admin `UADMIN`; `tweak` adjusts
    /// the settings before start.
    pub async fn start(
        slack_url: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut baton_bot::settings::Settings),
    ) -> Bot {
        Self::start_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(baton_bot::clock::SystemWallClock),
            slack_url,
            dir,
            tweak,
        )
        .await
    }

    /// Like [`Bot::start`], listening on `addr` (to restart a bot where its
    /// agents expect it) with the wall clock `clock`.
    pub async fn start_with(
        addr: SocketAddr,
        clock: Arc<dyn baton_bot::clock::WallClock>,
        slack_url: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut baton_bot::settings::Settings),
    ) -> Bot {
        init_tracing();
        let db_url = db::url_for_dir(dir).await;
        let mut settings =
            baton_bot::settings::Settings::for_tests(slack_url, &db_url, SIGNING_SECRET);
        settings.agent_keys = format!("e2e:{AGENT_KEY}").into();
        settings.admins = vec!["UADMIN".into()];
        // Tests count the posts; those that want notifications turn them on.
        settings.notify = baton_bot::settings::NotifyMode::Off;
        settings.ack_budget = ACK_BUDGET_IN_TESTS;
        tweak(&mut settings);
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().unwrap();
        let (ctl, ctl_rx) = oneshot::channel::<Stop>();
        let (done_tx, done) = oneshot::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let res = rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let (graceful_tx, graceful_rx) = oneshot::channel::<()>();
                let run = baton_bot::run(settings, listener, clock, async {
                    let _ = graceful_rx.await;
                });
                tokio::pin!(run);
                tokio::select! {
                    res = &mut run => res,
                    stop = ctl_rx => match stop {
                        Ok(Stop::Kill) => Ok(()),
                        _ => {
                            let _ = graceful_tx.send(());
                            run.await
                        }
                    },
                }
            });
            // Whatever is still running is dropped where it stands.
            rt.shutdown_background();
            let _ = done_tx.send(res);
        });
        let mut bot = Bot {
            addr,
            db_url,
            ctl: Some(ctl),
            done: Some(done),
        };
        bot.wait_ready().await;
        bot
    }

    /// Waits until the bot answers `/readyz` (its database is migrated and it
    /// serves); panics with the bot's error if it failed to start.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(done) = self.done.as_mut()
                && let Ok(res) = done.try_recv()
            {
                panic!("the bot stopped while starting: {res:?}");
            }
            if let Ok((200, _)) = try_http(self.addr, "GET", "/readyz", &[], "").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bot never became ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a bot again on `addr` (where its agents expect it) and the same
    /// database, with the system clock.
    pub async fn restart(
        addr: SocketAddr,
        slack_url: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut baton_bot::settings::Settings),
    ) -> Bot {
        let clock = Arc::new(baton_bot::clock::SystemWallClock);
        Self::start_with(addr, clock, slack_url, dir, tweak).await
    }

    /// Stops the bot gracefully and waits for it; panics if it failed.
    pub async fn stop(mut self) {
        if let Some(c) = self.ctl.take() {
            let _ = c.send(Stop::Graceful);
        }
        if let Some(d) = self.done.take() {
            d.await.unwrap().unwrap();
        }
    }

    /// Takes the bot down the hard way (see [`Bot`]) and waits until it is gone.
    pub async fn kill(mut self) {
        if let Some(c) = self.ctl.take() {
            let _ = c.send(Stop::Kill);
        }
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
    }

    /// A second connection to the bot's database.
    pub async fn store(&self) -> baton_bot::store::Store {
        baton_bot::store::Store::connect(&self.db_url)
            .await
            .unwrap()
    }
}

/// Binds `addr` (a port just released by a killed bot may take a moment).
async fn bind_retrying(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true).unwrap();
                return l;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

/// Logs of the in-process bot, when `RUST_LOG` is set (shown by the test runner).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
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
    try_http(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http`], with connection errors returned.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
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
    Ok((status, body))
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

/// Sends `/baton TEXT` as `user`, signed, with `response_url` as the
/// command's response URL (see [`slack::response_url_of`]); returns status and body.
pub async fn baton_replying_to(
    addr: SocketAddr,
    text: &str,
    user: &str,
    response_url: &str,
) -> (u16, String) {
    let mut form = slash("/baton", text, user);
    for field in form.iter_mut() {
        if field.0 == "response_url" {
            field.1 = response_url;
        }
    }
    post_signed(addr, "/slack/commands", &form, SIGNING_SECRET).await
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

/// How long a test waits for an outcome to show (a deadline, not a delay).
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// How long the in-process bot's slash command acknowledgements wait for
/// their work (its `ack_budget`; 1.5 s in production): a loaded machine can
/// take longer than 1.5 s, and the answer would then go to a `response_url`
/// no test reads. Tests of the budget itself set their own.
pub const ACK_BUDGET_IN_TESTS: Duration = EVENTUALLY;

/// Waits until `probe` returns something, looking again every 20 ms, and
/// fails naming `what` after [`EVENTUALLY`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// What a [`Proxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ProxyMode {
    /// Forward both ways.
    Pass = 0,
    /// Forward client→server, silently drop server→client (a half-dead link:
    /// the server's answers never arrive, nothing is closed).
    DropReplies = 1,
    /// Close every new connection at once (the server looks unreachable).
    Refuse = 2,
}

/// A TCP proxy on 127.0.0.1 in front of `target`, to break links on purpose.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<std::sync::atomic::AtomicU8>,
    cut: Arc<tokio::sync::Notify>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    /// Starts forwarding new connections to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(std::sync::atomic::AtomicU8::new(ProxyMode::Pass as u8)),
            cut: Arc::new(tokio::sync::Notify::new()),
            closed: Arc::default(),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if p.mode.load(std::sync::atomic::Ordering::SeqCst) == ProxyMode::Refuse as u8 {
                    drop(client);
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let p = p.clone();
                tokio::spawn(async move {
                    p.pipe(client, server).await;
                    p.closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        proxy
    }

    /// Sets what happens to traffic from now on.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode
            .store(mode as u8, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many proxied connections have ended.
    pub fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops every open connection at once (both sides see the link reset).
    pub fn cut(&self) {
        self.cut.notify_waiters();
    }

    async fn pipe(&self, client: tokio::net::TcpStream, server: tokio::net::TcpStream) {
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let up = async {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = cr.read(&mut buf).await {
                if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let mode = self.mode.clone();
        let down = async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if mode.load(std::sync::atomic::Ordering::SeqCst) == ProxyMode::DropReplies as u8 {
                    continue;
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = self.cut.notified() => {}
        }
    }
}

/// The ts of task `id`'s Slack message, once the bot has posted it.
pub async fn message_ts(store: &baton_bot::store::Store, id: i64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(ts) = store.task(id).await.unwrap().and_then(|t| t.message_ts) {
            return ts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task #{id} has no message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `baton-bot` binary of this workspace. Tests of other packages
/// cannot name it through `CARGO_BIN_EXE_*`; `cargo nextest run --workspace`
/// (the README's test command) builds it next to the test binaries, in
/// `target/<profile>/`.
pub fn bot_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .join("baton-bot");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo nextest run --workspace` (or `cargo build -p baton-bot` first)",
        bin.display()
    );
    bin
}

/// The real `baton-bot` as a child process, on `dir`'s database
/// ([`db::url_for_dir`]), with agent
/// `e2e` (key [`AGENT_KEY`]) and admin `UADMIN`. [`BotProcess::kill`] is a
/// real `kill -9`.
#[derive(Debug)]
pub struct BotProcess {
    pub addr: SocketAddr,
    pub db_url: String,
    child: tokio::process::Child,
}

impl BotProcess {
    /// Starts the bot listening on `addr` (port 0: any) with the extra
    /// environment `env` (`BATON_*` settings), and waits until it is ready.
    pub async fn start(
        addr: SocketAddr,
        slack_url: &str,
        dir: &Path,
        env: &[(&str, String)],
    ) -> BotProcess {
        let addr = if addr.port() == 0 {
            // Pick a free port now: agents need to know it across restarts.
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.local_addr())
                .unwrap()
        } else {
            addr
        };
        let db_url = db::url_for_dir(dir).await;
        let child = Self::command(addr, slack_url, dir, &db_url, env)
            .spawn()
            .expect("baton-bot starts");
        let mut bot = BotProcess {
            addr,
            db_url,
            child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = bot.child.try_wait() {
                panic!("baton-bot exited while starting: {status}");
            }
            if let Ok((200, _)) = try_http(addr, "GET", "/readyz", &[], "").await {
                return bot;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "baton-bot never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the bot as [`BotProcess::start`] does (on any port), expecting
    /// it to refuse to start: waits for it to exit, checks that it failed,
    /// and returns what it printed on stderr.
    pub async fn start_refused(slack_url: &str, dir: &Path, env: &[(&str, String)]) -> String {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let db_url = db::url_for_dir(dir).await;
        let out = Self::command(addr, slack_url, dir, &db_url, env)
            .stderr(std::process::Stdio::piped())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("baton-bot refused to start and exited")
            .expect("baton-bot ran");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "baton-bot was expected to refuse to start; it exited with {}: {stderr}",
            out.status
        );
        stderr
    }

    /// The command that runs the bot (see [`BotProcess::start`]).
    fn command(
        addr: SocketAddr,
        slack_url: &str,
        dir: &Path,
        db_url: &str,
        env: &[(&str, String)],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bot_binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SLACK_BOT_TOKEN", slack::BOT_TOKEN)
            .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
            .env("SLACK_API_URL", slack_url)
            .env("DATABASE_URL", db_url)
            .env("BATON_LISTEN", addr.to_string())
            .env("BATON_AGENT_KEYS", format!("e2e:{AGENT_KEY}"))
            .env("BATON_ADMINS", "UADMIN")
            // Tests count the posts; those that want notifications set it.
            .env("BATON_NOTIFY", "off")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .current_dir(dir)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// kill -9, and reap.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, and wait for a clean exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("baton-bot stops after SIGTERM")
            .expect("reaped");
        assert!(status.success(), "baton-bot exited with {status}");
    }

    /// A connection to the bot's database.
    pub async fn store(&self) -> baton_bot::store::Store {
        baton_bot::store::Store::connect(&self.db_url)
            .await
            .unwrap()
    }
}
