//! Test harness for the agent's end-to-end tests: everything from
//! `baton-testkit`, plus the real `baton-agent` binary that Cargo built.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use baton_testkit::*;

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
