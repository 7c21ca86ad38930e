//! Test harness for the agent's end-to-end tests: everything from
//! `baton-testkit`, plus the real `baton-agent` binary that Cargo built.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use baton_testkit::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The agent binary under test.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton-agent"))
}

/// The real agent binary, started with a config serving `web` from `path`.
pub fn start_agent(
    dir: &Path,
    bot: SocketAddr,
    path: &Path,
    capacity: u32,
) -> tokio::process::Child {
    start_agent_with(dir, &AgentConfig::new(dir, bot, path, capacity))
}

/// The real agent binary with the given config (written to `dir/agent.toml`).
pub fn start_agent_with(dir: &Path, config: &AgentConfig) -> tokio::process::Child {
    let path = dir.join(format!("agent-{}.toml", config.key));
    config.write(&path);
    spawn_agent(&agent_bin(), &path)
}

/// Whether a process is alive; a zombie (exited, not yet reaped by whoever
/// inherited it) is not.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().next() != Some("Z"))
        })
        .unwrap_or(false)
}

/// A pid a task script wrote to `path`.
pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// kill -9, and reap.
pub async fn kill9(agent: &mut tokio::process::Child) {
    agent.start_kill().unwrap();
    agent.wait().await.unwrap();
}

// ---- a fake bot in front of the real agent ----

/// A bot that only speaks the agents' protocol, for tests that send the agent
/// frames the real bot would never send.
pub struct FakeBot {
    /// Where the agent connects.
    pub listener: tokio::net::TcpListener,
}

/// The fake bot's side of an agent's connection.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

impl FakeBot {
    pub async fn new() -> Self {
        FakeBot {
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    /// Its address, for the agent's config.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Accepts the agent's connection, reads its hello and welcomes it.
    pub async fn accept(&self) -> (Ws, Value) {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(30), self.listener.accept())
            .await
            .expect("the agent connects")
            .unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["type"], "hello");
        send(
            &mut ws,
            json!({"type": "welcome", "protocol": 1, "agent": "e2e", "heartbeat_secs": 15}),
        )
        .await;
        (ws, hello)
    }
}

/// Sends a frame to the agent.
pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The agent's next text frame.
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame from the agent")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// A submit of `prompt` as task `task` in project `web`.
pub fn submit(task: i64, prompt: &str) -> Value {
    json!({"type": "submit", "task": task, "project": "web", "persona": "code", "prompt": prompt})
}

/// Frames for `task` up to and including its final one (completed, failed,
/// cancelled or rejected).
pub async fn frames_until_final(ws: &mut Ws, task: i64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let m = next_json(ws).await;
        if m["task"] != task {
            continue;
        }
        let done = matches!(
            m["type"].as_str(),
            Some("completed" | "failed" | "cancelled" | "rejected")
        );
        frames.push(m);
        if done {
            return frames;
        }
    }
}

// ---- stand-in coding agent CLIs ----

/// The line a stand-in CLI writes after each run's arguments.
pub const ARGS_END: &str = "@@end@@";

/// A stand-in CLI `dir/name` that answers `--version` with `VERSION (stand-in)`,
/// records its arguments (one per line, then [`ARGS_END`]) in `dir/name-args`,
/// replays `fixture` line by line 20 ms apart, then exits with `code`.
pub fn fake_cli(dir: &Path, name: &str, fixture: &Path, code: i32) -> PathBuf {
    let bin = dir.join(name);
    let args = dir.join(format!("{name}-args"));
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then echo '1.2.3 ({name} stand-in)'; exit 0; fi\n\
             printf '%s\\n' \"$@\" >> '{args}'\necho '{ARGS_END}' >> '{args}'\ncat > /dev/null\n\
             while IFS= read -r line; do printf '%s\\n' \"$line\"; sleep 0.02; done < '{fixture}'\nexit {code}\n",
            args = args.display(),
            fixture = fixture.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// The arguments of each run of the stand-in `name` in `dir` (none if it never ran).
pub fn recorded_args(dir: &Path, name: &str) -> Vec<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}-args"))) else {
        return Vec::new();
    };
    let mut runs = vec![Vec::new()];
    for line in text.lines() {
        if line == ARGS_END {
            runs.push(Vec::new());
        } else if let Some(run) = runs.last_mut() {
            run.push(line.to_owned());
        }
    }
    runs.pop();
    runs
}

/// A PATH with `dir` first.
pub fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A fixture of this crate's tests.
pub fn fixture_path(cli: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(cli)
        .join(name)
}

/// Config for agent `e2e` with one project `web` in `project`, its executor
/// given by `project_lines`, with `top` as extra top-level lines.
pub fn write_config(
    dir: &Path,
    bot: SocketAddr,
    project: &Path,
    project_lines: &str,
    top: &str,
) -> PathBuf {
    let cfg = format!(
        "server = \"ws://{bot}/agents\"\nkey = \"{AGENT_KEY}\"\ncapacity = 2\nstate_dir = \"{}\"\ncancel_grace_secs = 2\n{top}\n\n[[project]]\nname = \"web\"\npath = \"{}\"\n{project_lines}\n",
        dir.join("agent-state").display(),
        project.display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// The real agent with config `cfg`, the stand-ins in `bin_dir` first on its PATH.
pub fn spawn_agent_with_path(cfg: &Path, bin_dir: &Path) -> tokio::process::Child {
    tokio::process::Command::new(agent_bin())
        .arg("--config")
        .arg(cfg)
        .env("PATH", path_with(bin_dir))
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
