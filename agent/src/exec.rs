//! Runs one task as a child process in its own process group, in its
//! project's directory, with an explicit environment; streams its steps and
//! output; enforces the time limit and cancellation (SIGTERM to the group,
//! SIGKILL after a grace period); leaves no process behind.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use baton_shared::TaskId;
use baton_shared::limits::{
    MAX_ERROR_BYTES, MAX_OUTPUT_CHUNK_BYTES, MAX_RESULT_BYTES, MAX_STEP_CHARS,
};
use baton_shared::protocol::{FailureCause, Submit, TaskResult};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::claude_stream::{ClaudeEvent, StreamParser};
use crate::config::{Config, ExecutorKind, ProjectConfig};

/// Output is sent when this many bytes are buffered...
pub const OUTPUT_FLUSH_BYTES: usize = 4 * 1024;
/// ...or when the oldest buffered output is this old.
pub const OUTPUT_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Bytes of stderr kept for a failure message.
pub const STDERR_TAIL_BYTES: usize = 4 * 1024;
/// The line a `command` task prints to report a step.
pub const STEP_PREFIX: &str = "::step::";
/// The marker between the head and the tail of a result that was too long.
pub const TRUNCATION_MARKER: &str = "\n\n[… output truncated …]\n\n";

/// Something the task produced while running.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// A progress step.
    Step(String),
    /// A chunk of output.
    Output(String),
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEnd {
    /// Success.
    Completed(TaskResult),
    /// Failure.
    Failed {
        /// For people.
        error: String,
        /// What kind.
        cause: FailureCause,
        /// The session, if any.
        session_id: Option<String>,
    },
    /// Stopped because it was asked to.
    Cancelled,
}

/// Why the run was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Keep running.
    None,
    /// A person cancelled it.
    Cancel,
    /// The agent is shutting down.
    Shutdown,
}

/// Keeps the head and the tail of a long text within a byte bound.
#[derive(Debug, Default)]
pub struct Bounded {
    head: String,
    tail: VecDeque<u8>,
    truncated: bool,
    limit: usize,
}

impl Bounded {
    /// At most `limit` bytes (plus the marker).
    pub fn new(limit: usize) -> Self {
        Bounded {
            limit,
            ..Default::default()
        }
    }

    /// Appends text.
    pub fn push(&mut self, s: &str) {
        let half = self.limit / 2;
        if !self.truncated && self.head.len() + s.len() <= self.limit {
            self.head.push_str(s);
            return;
        }
        if !self.truncated {
            // Move what exceeds the head's half into the tail.
            let mut cut = half.min(self.head.len());
            while !self.head.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = self.head.split_off(cut);
            self.tail.extend(rest.bytes());
            self.truncated = true;
        }
        self.tail.extend(s.bytes());
        let max_tail = self.limit - half;
        while self.tail.len() > max_tail {
            self.tail.pop_front();
        }
    }

    /// The kept text.
    pub fn finish(self) -> String {
        if !self.truncated {
            return self.head;
        }
        let tail: Vec<u8> = self.tail.into_iter().collect();
        let tail = String::from_utf8_lossy(&tail);
        // Drop a partial character at the start of the tail.
        let tail = tail.trim_start_matches('\u{FFFD}');
        format!("{}{TRUNCATION_MARKER}{}", self.head, tail)
    }
}

fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

fn tail_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// The argv of a task.
fn argv(cfg: &Config, project: &ProjectConfig, submit: &Submit) -> Vec<String> {
    match project.executor {
        ExecutorKind::Command => project.command.clone(),
        ExecutorKind::Claude => {
            let mut a = vec![cfg.claude_bin.clone()];
            a.extend(cfg.claude_args.iter().cloned());
            a.extend(["-p", "--output-format", "stream-json", "--verbose"].map(String::from));
            if let Some(sp) = &submit.system_prompt {
                a.extend(["--append-system-prompt".into(), sp.clone()]);
            }
            if !submit.allowed_tools.is_empty() {
                a.extend(["--allowedTools".into(), submit.allowed_tools.join(",")]);
            }
            if let Some(m) = &submit.model {
                a.extend(["--model".into(), m.clone()]);
            }
            if let Some(s) = &submit.session_id {
                a.extend(["--resume".into(), s.clone()]);
            }
            a
        }
    }
}

/// Signals the task's whole process group; a group already gone is fine.
fn signal_group(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid as i32), sig);
    }
}

/// Turns output lines into events, per executor.
enum LineParser {
    Command,
    Claude(Box<StreamParser>),
}

/// Kills what is left of a task an earlier agent process started: every
/// process in group `pgid` whose environment says it belongs to `task`. The
/// check keeps a recycled process-group id from hitting unrelated processes.
pub fn kill_leftover(task: TaskId, pgid: u32) -> usize {
    let marker = format!("BATON_TASK_ID={}", task.0);
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // The process group is the 5th field of /proc/PID/stat, after "(comm)".
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<u32>().ok());
        if pgrp != Some(pgid) {
            continue;
        }
        let ours = std::fs::read(entry.path().join("environ"))
            .map(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
            .unwrap_or(false);
        if ours && nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}

/// Runs a task to its end. `stop` flips to a reason to stop it; `started`
/// learns the process group once the executor is running.
pub async fn run(
    cfg: &Config,
    project: &ProjectConfig,
    submit: &Submit,
    events: mpsc::UnboundedSender<ExecEvent>,
    mut stop: watch::Receiver<StopReason>,
    started: impl FnOnce(u32),
) -> ExecEnd {
    let argv = argv(cfg, project, submit);
    let Some((prog, args)) = argv.split_first() else {
        return ExecEnd::Failed {
            error: "no command configured".into(),
            cause: FailureCause::Misconfigured,
            session_id: None,
        };
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .current_dir(&project.path)
        .env_clear()
        .envs(
            cfg.env_allow
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))),
        )
        .env("BATON_PROMPT", &submit.prompt)
        .env("BATON_TASK_ID", submit.task.0.to_string())
        .env("BATON_PERSONA", submit.persona.as_str())
        .env("BATON_PROJECT", submit.project.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(s) = &submit.session_id {
        cmd.env("BATON_SESSION_ID", s);
    }
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ExecEnd::Failed {
                error: format!("cannot start `{prog}` in {}: {e}", project.path.display()),
                cause: if project.executor == ExecutorKind::Claude {
                    FailureCause::Misconfigured
                } else {
                    FailureCause::Spawn
                },
                session_id: None,
            };
        }
    };
    let pid = child.id();
    if let Some(pid) = pid {
        started(pid);
    }
    if let Some(mut stdin) = child.stdin.take() {
        let prompt = submit.prompt.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(prompt.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
    let stderr_task = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut tail = VecDeque::new();
            loop {
                buf.clear();
                buf.resize(4096, 0);
                match err.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend(&buf[..n]);
                        while tail.len() > STDERR_TAIL_BYTES {
                            tail.pop_front();
                        }
                    }
                }
            }
            String::from_utf8_lossy(&tail.into_iter().collect::<Vec<_>>()).into_owned()
        })
    });
    let mut lines = child.stdout.take().map(|o| BufReader::new(o).lines());

    let max = project
        .max_duration_secs
        .map(Duration::from_secs)
        .unwrap_or(cfg.max_duration);
    let deadline = Instant::now() + max;
    let mut parser = match project.executor {
        ExecutorKind::Command => LineParser::Command,
        ExecutorKind::Claude => LineParser::Claude(Box::default()),
    };
    let mut result_text = Bounded::new(MAX_RESULT_BYTES - TRUNCATION_MARKER.len());
    let mut claude_result = None;
    let mut pending = String::new();
    let mut pending_since: Option<Instant> = None;
    let mut stopped: Option<StopReason> = None;
    let mut timed_out = false;
    let mut kill_at: Option<Instant> = None;
    let mut status: Option<std::io::Result<ExitStatus>> = None;

    let flush = |pending: &mut String, since: &mut Option<Instant>| {
        while !pending.is_empty() {
            let mut cut = pending.len().min(MAX_OUTPUT_CHUNK_BYTES);
            while !pending.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = pending.split_off(cut);
            let _ = events.send(ExecEvent::Output(std::mem::replace(pending, rest)));
        }
        *since = None;
    };

    loop {
        let flush_at = pending_since.map(|t| t + OUTPUT_FLUSH_INTERVAL);
        tokio::select! {
            line = async { match lines.as_mut() { Some(l) => l.next_line().await, None => std::future::pending().await } } => {
                match line {
                    Ok(Some(line)) => {
                        match &mut parser {
                            LineParser::Command => {
                                if let Some(step) = line.strip_prefix(STEP_PREFIX) {
                                    let _ = events.send(ExecEvent::Step(cut_chars(step.trim(), MAX_STEP_CHARS)));
                                } else {
                                    result_text.push(&line);
                                    result_text.push("\n");
                                    pending.push_str(&line);
                                    pending.push('\n');
                                    pending_since.get_or_insert_with(Instant::now);
                                }
                            }
                            LineParser::Claude(p) => {
                                for ev in p.feed_line(&line) {
                                    match ev {
                                        ClaudeEvent::Step(s) => { let _ = events.send(ExecEvent::Step(cut_chars(&s, MAX_STEP_CHARS))); }
                                        ClaudeEvent::Output(t) => {
                                            pending.push_str(&t);
                                            pending.push('\n');
                                            pending_since.get_or_insert_with(Instant::now);
                                        }
                                        ClaudeEvent::Finished(r) => claude_result = Some(r),
                                    }
                                }
                            }
                        }
                        if pending.len() >= OUTPUT_FLUSH_BYTES {
                            flush(&mut pending, &mut pending_since);
                        }
                    }
                    _ => lines = None,
                }
            }
            st = child.wait(), if status.is_none() => {
                status = Some(st);
            }
            _ = stop.changed(), if stopped.is_none() => {
                let reason = *stop.borrow();
                if reason != StopReason::None {
                    stopped = Some(reason);
                    signal_group(pid, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + cfg.cancel_grace);
                }
            }
            _ = tokio::time::sleep_until(deadline), if !timed_out && stopped.is_none() => {
                timed_out = true;
                signal_group(pid, Signal::SIGTERM);
                kill_at = Some(Instant::now() + cfg.cancel_grace);
            }
            _ = async { match kill_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                signal_group(pid, Signal::SIGKILL);
                kill_at = None;
            }
            _ = async { match flush_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                flush(&mut pending, &mut pending_since);
            }
        }
        if status.is_some() && lines.is_none() {
            break;
        }
        if status.is_some() {
            // The main process is gone; anything left in its group must not outlive it.
            signal_group(pid, Signal::SIGKILL);
        }
    }
    signal_group(pid, Signal::SIGKILL);
    flush(&mut pending, &mut pending_since);
    let stderr = match stderr_task {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    let stderr = tail_bytes(stderr.trim(), MAX_ERROR_BYTES / 2);

    match stopped {
        Some(StopReason::Cancel) => return ExecEnd::Cancelled,
        Some(StopReason::Shutdown) => {
            return ExecEnd::Failed {
                error: "the agent shut down before the task finished".into(),
                cause: FailureCause::AgentShutdown,
                session_id: None,
            };
        }
        _ => {}
    }
    if timed_out {
        return ExecEnd::Failed {
            error: format!("timed out after {}", humanize(max)),
            cause: FailureCause::Timeout,
            session_id: None,
        };
    }
    let status = match status {
        Some(Ok(s)) => s,
        _ => {
            return ExecEnd::Failed {
                error: "lost track of the process".into(),
                cause: FailureCause::Crashed,
                session_id: None,
            };
        }
    };
    use std::os::unix::process::ExitStatusExt;
    match parser {
        LineParser::Command => {
            if status.success() {
                ExecEnd::Completed(TaskResult {
                    text: result_text.finish(),
                    ..Default::default()
                })
            } else if let Some(sig) = status.signal() {
                ExecEnd::Failed {
                    error: with_stderr(format!("killed by signal {sig}"), &stderr),
                    cause: FailureCause::Crashed,
                    session_id: None,
                }
            } else {
                ExecEnd::Failed {
                    error: with_stderr(
                        format!("exited with status {}", status.code().unwrap_or(-1)),
                        &stderr,
                    ),
                    cause: FailureCause::Task,
                    session_id: None,
                }
            }
        }
        LineParser::Claude(mut p) => {
            let result = claude_result.or_else(|| p.finish(status.code()));
            match result {
                Some(r) if !r.is_error => ExecEnd::Completed(TaskResult {
                    text: tail_bytes(&r.text, MAX_RESULT_BYTES),
                    session_id: r.session_id,
                    cost_usd: r.cost_usd,
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    num_turns: r.num_turns,
                    duration_ms: r.duration_ms,
                }),
                Some(r) => ExecEnd::Failed {
                    error: tail_bytes(
                        &with_stderr(r.text.clone(), if r.auth_failure { "" } else { &stderr }),
                        MAX_ERROR_BYTES,
                    ),
                    cause: if r.auth_failure {
                        FailureCause::Misconfigured
                    } else if r.subtype == crate::claude_stream::NO_RESULT_SUBTYPE {
                        FailureCause::Crashed
                    } else {
                        FailureCause::Task
                    },
                    session_id: r.session_id,
                },
                None => ExecEnd::Failed {
                    error: with_stderr("the Claude CLI ended without a result".into(), &stderr),
                    cause: FailureCause::Crashed,
                    session_id: None,
                },
            }
        }
    }
}

fn with_stderr(msg: String, stderr: &str) -> String {
    if stderr.is_empty() {
        msg
    } else {
        format!("{msg}\n{stderr}")
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_head_and_tail() {
        let mut b = Bounded::new(20);
        b.push("0123456789");
        b.push("abcdefghij");
        b.push("KLMNOPQRST");
        let s = b.finish();
        assert!(s.starts_with("0123456789"), "{s}");
        assert!(s.ends_with("KLMNOPQRST"), "{s}");
        assert!(s.contains("truncated"));
        let mut b = Bounded::new(100);
        b.push("short");
        assert_eq!(b.finish(), "short");
    }
}
