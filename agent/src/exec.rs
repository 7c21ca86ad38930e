//! Runs one task as a child process in its own process group, in its
//! project's directory, with an explicit environment; streams its steps and
//! output; enforces the time limit and cancellation (SIGTERM to the group,
//! SIGKILL after a grace period); leaves no process behind. One line of
//! output is bounded ([`MAX_LINE_BYTES`]), so a task printing without
//! newlines cannot grow the agent's memory.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use baton_shared::limits::{
    MAX_ERROR_BYTES, MAX_OUTPUT_CHUNK_BYTES, MAX_RESULT_BYTES, MAX_STEP_CHARS,
};
use baton_shared::protocol::{FailureCause, Submit, TaskResult};
use baton_shared::{SessionId, TaskId};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::approvals::{
    AGENT_BIN_ENV, APPROVAL_SOCKET_ENV, APPROVAL_WAIT_CAP, HOOK_TIMEOUT_MARGIN, HookWatch, TaskLink,
};
use crate::attachments;
use crate::claude_stream::StreamParser;
use crate::codex_stream::CodexParser;
use crate::config::{Approve, Config, ExecutorKind, Isolation, ProjectConfig};
use crate::gemini_stream::GeminiParser;
use crate::opencode_stream::OpencodeParser;
use crate::stream::{EventParser, StreamEvent};
use crate::worktree;

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
/// Longest line of a task's output kept, in bytes; the rest of a longer line
/// is read and dropped, and the kept part ends with [`LINE_CUT_MARKER`].
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Appended to a line cut at [`MAX_LINE_BYTES`].
pub const LINE_CUT_MARKER: &str = " [… line cut at 1 MiB …]";
/// Longest prompt passed as a command-line argument, in bytes (Linux refuses
/// one argument over 128 KiB); a longer one goes to Gemini CLI on stdin.
pub const MAX_ARG_PROMPT_BYTES: usize = 96 * 1024;
/// Gemini CLI's `--prompt` when the prompt itself is on stdin (Gemini CLI
/// puts stdin first, then the `--prompt` text).
pub const GEMINI_STDIN_PROMPT: &str = "Do what the text above asks.";
/// Tools in a persona's list that change files: a persona without any of them
/// runs the other CLIs read-only (Codex's read-only sandbox, Gemini CLI's
/// default approval mode, OpenCode's `plan` agent).
pub const WRITE_TOOLS: &[&str] = &["Edit", "MultiEdit", "Write", "NotebookEdit"];

/// Reads lines of at most `limit` bytes: a longer line is cut there, the rest
/// of it read and dropped. Invalid UTF-8 is replaced, never an error. Safe to
/// cancel between calls (what was read stays in the reader).
#[derive(Debug)]
pub struct LineReader<R> {
    /// The source.
    inner: BufReader<R>,
    /// The line read so far.
    line: Vec<u8>,
    /// The line being read went past the limit.
    cut: bool,
    /// Bytes kept of one line.
    limit: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Lines of at most `limit` bytes from `inner`.
    pub fn new(inner: R, limit: usize) -> Self {
        LineReader {
            inner: BufReader::new(inner),
            line: Vec::new(),
            cut: false,
            limit,
        }
    }

    /// The next line without its `\n` (or `\r\n`), with whether it was cut;
    /// `None` at the end.
    pub async fn next_line(&mut self) -> std::io::Result<Option<(String, bool)>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if self.line.is_empty() && !self.cut {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let (chunk, used, end) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (&available[..i], i + 1, true),
                None => (available, available.len(), false),
            };
            let room = self.limit.saturating_sub(self.line.len());
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.cut |= chunk.len() > room;
            self.inner.consume(used);
            if end {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> (String, bool) {
        let mut bytes = std::mem::take(&mut self.line);
        let cut = std::mem::replace(&mut self.cut, false);
        if bytes.last() == Some(&b'\r') && !cut {
            bytes.pop();
        }
        let text = String::from_utf8_lossy(&bytes);
        // A cut may split a character: drop the broken end.
        let text = if cut {
            text.trim_end_matches('\u{FFFD}').to_owned()
        } else {
            text.into_owned()
        };
        (text, cut)
    }
}

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

/// How a task's process is started.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// Program and arguments; never through a shell.
    pub argv: Vec<String>,
    /// What is written to its stdin (then closed).
    pub stdin: String,
}

/// The prompt for CLIs without a system prompt flag: the persona's prompt
/// first, on a new session only (a resumed one has it already).
fn prompt_with_system(submit: &Submit, session: Option<&SessionId>) -> String {
    match (&submit.system_prompt, session) {
        (Some(sp), None) => format!("{sp}\n\n{}", submit.prompt),
        _ => submit.prompt.clone(),
    }
}

/// Whether the persona may change files (see [`WRITE_TOOLS`]).
fn may_write(submit: &Submit) -> bool {
    submit.allowed_tools.is_empty()
        || submit
            .allowed_tools
            .iter()
            .any(|t| WRITE_TOOLS.contains(&t.as_str()))
}

/// How to start a task. A session id to resume is validated first: it is
/// always one argument of its own after its flag, and can never start with
/// `-`, so it cannot become a flag. The prompt is never parsed as a flag
/// either: on stdin, after `--`, or inside `--prompt=`.
pub fn invocation(
    cfg: &Config,
    project: &ProjectConfig,
    submit: &Submit,
) -> Result<Invocation, String> {
    let session = submit
        .session_id
        .as_deref()
        .map(SessionId::new)
        .transpose()
        .map_err(|e| format!("cannot resume the session: {e}"))?;
    let s = |v: &str| v.to_owned();
    let Some(cli) = cfg.cli(project.executor) else {
        return Ok(Invocation {
            argv: project.command.clone(),
            stdin: submit.prompt.clone(),
        });
    };
    let mut a = vec![cli.bin.clone()];
    let mut stdin = String::new();
    match project.executor {
        ExecutorKind::Command => {}
        ExecutorKind::Claude => {
            a.extend(cli.args.iter().cloned());
            a.extend(["-p", "--output-format", "stream-json", "--verbose"].map(s));
            if let Some(sp) = &submit.system_prompt {
                a.extend([s("--append-system-prompt"), sp.clone()]);
            }
            if !submit.allowed_tools.is_empty() {
                a.extend([s("--allowedTools"), submit.allowed_tools.join(",")]);
            }
            if let Some(m) = &submit.model {
                a.extend([s("--model"), m.clone()]);
            }
            if let Some(id) = &session {
                a.extend([s("--resume"), id.to_string()]);
            }
            stdin = submit.prompt.clone();
        }
        ExecutorKind::Codex => {
            a.push(s("exec"));
            if session.is_some() {
                a.push(s("resume"));
            }
            let sandbox = if may_write(submit) {
                "workspace-write"
            } else {
                "read-only"
            };
            a.extend([s("--json"), s("--skip-git-repo-check"), s("-c")]);
            a.push(format!("sandbox_mode=\"{sandbox}\""));
            a.extend(cli.args.iter().cloned());
            if let (Some(m), None) = (&submit.model, &session) {
                a.extend([s("-m"), m.clone()]);
            }
            if let Some(id) = &session {
                a.push(id.to_string());
            }
            // `-`: the prompt comes on stdin.
            a.push(s("-"));
            stdin = prompt_with_system(submit, session.as_ref());
        }
        ExecutorKind::Gemini => {
            let mode = if may_write(submit) { "yolo" } else { "default" };
            a.extend([s("--output-format"), s("stream-json")]);
            a.push(format!("--approval-mode={mode}"));
            a.extend(cli.args.iter().cloned());
            if let Some(m) = &submit.model {
                a.extend([s("-m"), m.clone()]);
            }
            if let Some(id) = &session {
                a.extend([s("--resume"), id.to_string()]);
            }
            // Gemini CLI reads stdin too, before the prompt: empty unless the
            // prompt is too long for one argument.
            let text = prompt_with_system(submit, session.as_ref());
            if text.len() > MAX_ARG_PROMPT_BYTES {
                a.push(format!("--prompt={GEMINI_STDIN_PROMPT}"));
                stdin = text;
            } else {
                a.push(format!("--prompt={text}"));
            }
        }
        ExecutorKind::Opencode => {
            a.extend([s("run"), s("--format"), s("json")]);
            if !may_write(submit) {
                a.extend([s("--agent"), s("plan")]);
            }
            a.extend(cli.args.iter().cloned());
            if let Some(m) = &submit.model {
                a.extend([s("-m"), m.clone()]);
            }
            if let Some(id) = &session {
                a.extend([s("--session"), id.to_string()]);
            }
            a.extend([s("--"), prompt_with_system(submit, session.as_ref())]);
        }
    }
    Ok(Invocation { argv: a, stdin })
}

/// `s` as one word for `sh`: in single quotes, each `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Claude Code's `--settings` for a project with `approve`: a `PreToolUse`
/// hook on the project's tools that runs `'AGENT_BIN' hook` (a shell runs
/// it), with a timeout past [`APPROVAL_WAIT_CAP`] since a hook Claude Code
/// times out decides nothing (the tool would run).
pub fn approval_settings(approve: &Approve, agent_bin: &std::path::Path) -> String {
    let command = format!("{} hook", shell_quote(&agent_bin.to_string_lossy()));
    serde_json::json!({
        "hooks": {
            "PreToolUse": [{
                "matcher": approve.matcher(),
                "hooks": [{
                    "type": "command",
                    "command": command,
                    "timeout": (APPROVAL_WAIT_CAP + HOOK_TIMEOUT_MARGIN).as_secs(),
                }],
            }],
        },
    })
    .to_string()
}

/// Signals the task's whole process group; a group already gone is fine.
fn signal_group(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid as i32), sig);
    }
}

/// Turns output lines into events, per executor.
enum LineParser {
    /// Each line is output, `::step::` lines are steps.
    Command,
    /// A CLI's machine-readable stream.
    Stream(Box<dyn EventParser>),
}

/// The parser for a project's executor.
fn line_parser(project: &ProjectConfig, cwd: &std::path::Path) -> LineParser {
    let cwd = cwd.to_str();
    match project.executor {
        ExecutorKind::Command => LineParser::Command,
        ExecutorKind::Claude => LineParser::Stream(Box::new(StreamParser::new())),
        ExecutorKind::Codex => LineParser::Stream(Box::new(CodexParser::new(cwd))),
        ExecutorKind::Gemini => LineParser::Stream(Box::new(GeminiParser::new(cwd))),
        ExecutorKind::Opencode => LineParser::Stream(Box::new(OpencodeParser::new(cwd))),
    }
}

/// A session id as the bot may see it: only one that could be resumed.
fn valid_session(id: Option<String>) -> Option<String> {
    id.filter(|s| SessionId::new(s.as_str()).is_ok())
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

/// What connects a running task to its agent besides its events.
#[derive(Debug, Default)]
pub struct Links<'a> {
    /// The task may ask for approval (see [`crate::approvals`]): its socket is
    /// in its environment, and its time limit is paused while it waits.
    pub approval: Option<TaskLink>,
    /// Where its attached files come from: they are fetched into its
    /// directory before it starts (see [`attachments::prepare`]).
    pub files: Option<&'a attachments::Fetch>,
}

/// Runs a task to its end. `stop` flips to a reason to stop it; `started`
/// learns the process group once the executor is running. A project with
/// `isolation = "worktree"` runs it in its own git worktree (see
/// [`crate::worktree`]) and ends its result with the branch and diff stat.
/// `links` connect it to the agent beyond its events (see [`Links`]).
pub async fn run(
    cfg: &Config,
    project: &ProjectConfig,
    submit: &Submit,
    events: mpsc::UnboundedSender<ExecEvent>,
    stop: watch::Receiver<StopReason>,
    started: impl FnOnce(u32),
    links: Links<'_>,
) -> ExecEnd {
    let Links { approval, files } = links;
    if project.isolation != Isolation::Worktree {
        let with_files =
            match attachments::prepare(files, submit, &project.path, stop.clone()).await {
                Ok(s) => s,
                Err(end) => return end,
            };
        let submit = with_files.as_ref().unwrap_or(submit);
        return run_in(
            cfg,
            project,
            &project.path,
            submit,
            events,
            stop,
            started,
            approval,
        )
        .await;
    }
    let session = submit
        .session_id
        .as_deref()
        .and_then(|s| SessionId::new(s).ok());
    let wt = match worktree::prepare(&cfg.state_dir, project, submit.task, session.as_ref()).await {
        Ok(w) => w,
        Err(e) => {
            return ExecEnd::Failed {
                error: format!("cannot prepare the task's git worktree: {e}"),
                cause: FailureCause::Misconfigured,
                session_id: None,
            };
        }
    };
    // The files go into the task's worktree, where it runs.
    let with_files = match attachments::prepare(files, submit, &wt.dir, stop.clone()).await {
        Ok(s) => s,
        Err(end) => {
            wt.finished(submit.session_id.as_deref());
            return end;
        }
    };
    let submit = with_files.as_ref().unwrap_or(submit);
    let mut end = run_in(
        cfg, project, &wt.dir, submit, events, stop, started, approval,
    )
    .await;
    let session = match &mut end {
        ExecEnd::Completed(r) => {
            let summary = wt.summary().await;
            let room = MAX_RESULT_BYTES.saturating_sub(summary.len() + 2);
            r.text = format!("{}\n\n{summary}", tail_bytes(r.text.trim_end(), room));
            r.session_id.clone()
        }
        ExecEnd::Failed { session_id, .. } => session_id.clone(),
        ExecEnd::Cancelled => None,
    };
    wt.finished(session.as_deref().or(submit.session_id.as_deref()));
    end
}

/// Runs a task to its end in `cwd`.
#[allow(clippy::too_many_arguments)]
async fn run_in(
    cfg: &Config,
    project: &ProjectConfig,
    cwd: &std::path::Path,
    submit: &Submit,
    events: mpsc::UnboundedSender<ExecEvent>,
    mut stop: watch::Receiver<StopReason>,
    started: impl FnOnce(u32),
    approval: Option<TaskLink>,
) -> ExecEnd {
    let Invocation {
        mut argv,
        stdin: input,
    } = match invocation(cfg, project, submit) {
        Ok(i) => i,
        Err(error) => {
            return ExecEnd::Failed {
                error,
                cause: FailureCause::Task,
                session_id: None,
            };
        }
    };
    // The agent's own binary, for `"$BATON_AGENT" approve` and Claude Code's hook.
    let agent_bin = std::env::current_exe().ok();
    if let (ExecutorKind::Claude, Some(approve)) = (project.executor, &project.approve) {
        let (Some(bin), Some(_)) = (&agent_bin, &approval) else {
            return ExecEnd::Failed {
                error: "the project's `approve` needs the task's approval socket and the agent's own path, and the agent could not get them (see its log; a state_dir it cannot write to?)".into(),
                cause: FailureCause::Misconfigured,
                session_id: None,
            };
        };
        argv.extend(["--settings".to_owned(), approval_settings(approve, bin)]);
    }
    let Some((prog, args)) = argv.split_first() else {
        return ExecEnd::Failed {
            error: "no command configured".into(),
            cause: FailureCause::Misconfigured,
            session_id: None,
        };
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .current_dir(cwd)
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
    if let Some(s) = valid_session(submit.session_id.clone()) {
        cmd.env("BATON_SESSION_ID", s);
    }
    if let Some(link) = &approval {
        cmd.env(APPROVAL_SOCKET_ENV, &link.socket);
    }
    if let (Some(bin), true) = (
        &agent_bin,
        approval.is_some() || project.executor == ExecutorKind::Command,
    ) {
        cmd.env(AGENT_BIN_ENV, bin);
    }
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ExecEnd::Failed {
                error: format!("cannot start `{prog}` in {}: {e}", cwd.display()),
                cause: if project.executor == ExecutorKind::Command {
                    FailureCause::Spawn
                } else {
                    FailureCause::Misconfigured
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
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
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
    let mut lines = child
        .stdout
        .take()
        .map(|o| LineReader::new(o, MAX_LINE_BYTES));

    let max = project
        .max_duration_secs
        .map(Duration::from_secs)
        .unwrap_or(cfg.max_duration);
    let mut deadline = Instant::now() + max;
    // A listed tool that ran without a yes (Claude Code skipped the hook) stops the task.
    let mut hook_watch = match (project.executor, &project.approve, &approval) {
        (ExecutorKind::Claude, Some(approve), Some(link)) => {
            Some(HookWatch::new(approve.clone(), link.approved.clone()))
        }
        _ => None,
    };
    let mut unasked: Option<String> = None;
    // While the task waits for a person, its time limit is paused.
    let mut waiting = approval.map(|l| l.waiting);
    let mut paused_since: Option<Instant> = waiting
        .as_mut()
        .is_some_and(|w| *w.borrow_and_update())
        .then(Instant::now);
    let mut parser = line_parser(project, cwd);
    let mut result_text = Bounded::new(MAX_RESULT_BYTES - TRUNCATION_MARKER.len());
    let mut stream_result = None;
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
                    Ok(Some((mut line, cut))) => {
                        if cut {
                            line.push_str(LINE_CUT_MARKER);
                        }
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
                            LineParser::Stream(p) => {
                                if let Some(tool) = hook_watch.as_mut().and_then(|w| w.feed_line(&line))
                                    && unasked.is_none()
                                {
                                    tracing::error!(task = submit.task.0, %tool, "a tool that needs approval ran without asking: Claude Code did not run the hook; stopping the task");
                                    unasked = Some(tool);
                                    signal_group(pid, Signal::SIGTERM);
                                    kill_at = Some(Instant::now() + cfg.cancel_grace);
                                }
                                for ev in p.feed_line(&line) {
                                    match ev {
                                        StreamEvent::Step(s) => { let _ = events.send(ExecEvent::Step(cut_chars(&s, MAX_STEP_CHARS))); }
                                        StreamEvent::Output(t) => {
                                            pending.push_str(&t);
                                            pending_since.get_or_insert_with(Instant::now);
                                        }
                                        StreamEvent::Finished(r) => stream_result = Some(r),
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
            changed = async { match waiting.as_mut() { Some(w) => w.changed().await, None => std::future::pending().await } } => {
                let now_waiting = match (changed, waiting.as_mut()) {
                    (Ok(()), Some(w)) => *w.borrow_and_update(),
                    _ => {
                        waiting = None;
                        false
                    }
                };
                match (now_waiting, paused_since) {
                    (true, None) => paused_since = Some(Instant::now()),
                    (false, Some(since)) => {
                        deadline += since.elapsed();
                        paused_since = None;
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(deadline), if !timed_out && stopped.is_none() && paused_since.is_none() => {
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

    // A cancel asked for before the end was seen wins over the end (a task
    // whose approval its cancel denied may exit before the cancel is read).
    let stopped = stopped.or((*stop.borrow() == StopReason::Cancel).then_some(StopReason::Cancel));
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
    if let Some(tool) = unasked {
        return ExecEnd::Failed {
            error: format!(
                "Claude Code ran {tool} without asking for approval: it did not run Baton's PreToolUse hook (passed with --settings), so the task was stopped; \
                 check that this Claude Code version runs hooks in -p mode (docs/operations.md, Approvals)"
            ),
            cause: FailureCause::Misconfigured,
            session_id: None,
        };
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
        LineParser::Stream(mut p) => {
            let result = stream_result.or_else(|| p.finish(status.code()));
            let cli = project.executor.display_name();
            match result {
                Some(r) if !r.is_error => ExecEnd::Completed(TaskResult {
                    text: tail_bytes(&r.text, MAX_RESULT_BYTES),
                    session_id: valid_session(r.session_id),
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
                    } else if r.no_result {
                        FailureCause::Crashed
                    } else {
                        FailureCause::Task
                    },
                    session_id: valid_session(r.session_id),
                },
                None => ExecEnd::Failed {
                    error: with_stderr(format!("{cli} ended without a result"), &stderr),
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

    #[tokio::test]
    async fn a_line_without_a_newline_is_cut_at_the_limit_and_reading_goes_on() {
        let input = format!(
            "short\r\n{}\nnext\n{}é\nlast",
            "x".repeat(100),
            "y".repeat(9)
        );
        let mut r = LineReader::new(input.as_bytes(), 10);
        let mut lines = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            lines.push(l);
        }
        let expected = [
            ("short", false),
            ("xxxxxxxxxx", true),
            ("next", false),
            ("yyyyyyyyy", true),
            ("last", false),
        ];
        let lines: Vec<(&str, bool)> = lines.iter().map(|(s, c)| (s.as_str(), *c)).collect();
        assert_eq!(lines, expected);
        // A huge line through a small buffer: memory stays at the limit.
        let big = vec![b'z'; 5 * 1024 * 1024];
        let mut r = LineReader::new(&big[..], 1024);
        let (line, cut) = r.next_line().await.unwrap().unwrap();
        assert_eq!((line.len(), cut), (1024, true));
        assert!(r.line.capacity() <= 2048);
        assert_eq!(r.next_line().await.unwrap(), None);
        let mut r = LineReader::new(&b"\xff\xfeok\n"[..], 100);
        assert_eq!(
            r.next_line().await.unwrap(),
            Some(("\u{FFFD}\u{FFFD}ok".into(), false))
        );
    }

    fn submit(session: Option<&str>, tools: &[&str]) -> Submit {
        Submit {
            task: TaskId(1),
            project: baton_shared::ProjectName::new("web").unwrap(),
            persona: baton_shared::Persona::Code,
            prompt: "--help me".into(),
            session_id: session.map(str::to_owned),
            system_prompt: Some("Be careful.".into()),
            allowed_tools: tools.iter().map(|t| (*t).to_owned()).collect(),
            model: None,
            files: Vec::new(),
        }
    }

    fn config(kind: ExecutorKind) -> (Config, ProjectConfig) {
        let text = format!(
            "server = \"wss://x/agents\"\nkey = \"k\"\n[[project]]\nname = \"web\"\npath = \".\"\nexecutor = \"{}\"\n",
            kind.as_str()
        );
        let f: crate::config::FileConfig = toml::from_str(&text).unwrap();
        let cfg = Config::from_parts(
            f,
            &crate::config::Cli::default(),
            "agent.toml",
            std::path::Path::new("."),
        )
        .unwrap();
        let p = cfg.projects[0].clone();
        (cfg, p)
    }

    /// An invocation test case: executor, session, persona's tools, argv, stdin.
    type Case<'a> = (
        ExecutorKind,
        Option<&'a str>,
        &'a [&'a str],
        &'a str,
        &'a str,
    );

    #[test]
    fn each_cli_gets_its_stream_flags_and_resume_and_the_prompt_never_as_a_flag() {
        let id = "019ffc18-837b-7182-a0e7-89ae640fc2c2";
        // (executor, session, persona's tools, argv, stdin)
        let cases: [Case; 8] = [
            (
                ExecutorKind::Codex,
                None,
                &["Edit"],
                "codex exec --json --skip-git-repo-check -c sandbox_mode=\"workspace-write\" -",
                "Be careful.\n\n--help me",
            ),
            (
                ExecutorKind::Codex,
                Some(id),
                &["Read"],
                "codex exec resume --json --skip-git-repo-check -c sandbox_mode=\"read-only\" 019ffc18-837b-7182-a0e7-89ae640fc2c2 -",
                "--help me",
            ),
            (
                ExecutorKind::Gemini,
                None,
                &[],
                "gemini --output-format stream-json --approval-mode=yolo --prompt=Be careful.\n\n--help me",
                "",
            ),
            (
                ExecutorKind::Gemini,
                Some(id),
                &["Read"],
                "gemini --output-format stream-json --approval-mode=default --resume 019ffc18-837b-7182-a0e7-89ae640fc2c2 --prompt=--help me",
                "",
            ),
            (
                ExecutorKind::Opencode,
                None,
                &["Write"],
                "opencode run --format json -- Be careful.\n\n--help me",
                "",
            ),
            (
                ExecutorKind::Opencode,
                Some("ses_0053dc0a6ffeLfOVWup0QCNjl2"),
                &["Read"],
                "opencode run --format json --agent plan --session ses_0053dc0a6ffeLfOVWup0QCNjl2 -- --help me",
                "",
            ),
            (
                ExecutorKind::Claude,
                Some(id),
                &["Read"],
                "claude -p --output-format stream-json --verbose --append-system-prompt Be careful. --allowedTools Read --resume 019ffc18-837b-7182-a0e7-89ae640fc2c2",
                "--help me",
            ),
            (ExecutorKind::Command, Some(id), &[], "", "--help me"),
        ];
        for (kind, session, tools, argv, stdin) in cases {
            let (cfg, mut project) = config(if kind == ExecutorKind::Command {
                ExecutorKind::Claude
            } else {
                kind
            });
            project.executor = kind;
            let inv = invocation(&cfg, &project, &submit(session, tools)).unwrap();
            assert_eq!(
                (inv.argv.join(" ").as_str(), inv.stdin.as_str()),
                (argv, stdin),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_prompt_too_long_for_an_argument_goes_to_gemini_on_stdin() {
        let (cfg, project) = config(ExecutorKind::Gemini);
        let mut s = submit(None, &[]);
        s.prompt = "é".repeat(MAX_ARG_PROMPT_BYTES / 2);
        let inv = invocation(&cfg, &project, &s).unwrap();
        assert_eq!(
            inv.argv.last().map(String::as_str),
            Some("--prompt=Do what the text above asks.")
        );
        assert!(inv.stdin.ends_with(&s.prompt) && inv.stdin.starts_with("Be careful."));
    }

    #[test]
    fn a_session_id_that_could_become_a_flag_is_refused_before_any_argv() {
        for kind in ExecutorKind::CLIS {
            let (cfg, project) = config(kind);
            for bad in ["--dangerously-skip-permissions", "x; rm -rf /", "-r"] {
                let e = invocation(&cfg, &project, &submit(Some(bad), &[])).expect_err(bad);
                assert!(e.contains("not a valid session id"), "{e}");
            }
        }
        assert_eq!(valid_session(Some("--x".into())), None);
        assert_eq!(
            valid_session(Some("abc-1".into())).as_deref(),
            Some("abc-1")
        );
    }

    #[test]
    fn the_approval_hook_settings_run_the_agent_through_a_shell_on_the_projects_tools() {
        let dir = tempfile::tempdir().unwrap();
        // A path a shell would split or unquote: spaces, quotes, a `$`.
        let sub = dir.path().join("it's a $HOME \"dir\"");
        std::fs::create_dir(&sub).unwrap();
        let bin = sub.join("baton-agent");
        std::fs::write(&bin, "#!/bin/sh\nprintf '%s|' \"$0\" \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let approve = Approve::Tools(vec!["Bash".into(), "Write".into()]);
        let settings: serde_json::Value =
            serde_json::from_str(&approval_settings(&approve, &bin)).unwrap();
        // The shape of the documented settings block.
        let doc: serde_json::Value =
            serde_json::from_str(
                &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
                    "tests/fixtures/claude-code-hooks/docs-settings-two-pretooluse-hooks.json",
                ))
                .unwrap(),
            )
            .unwrap();
        let entry = &settings["hooks"]["PreToolUse"][0];
        let doc_entry = &doc["hooks"]["PreToolUse"][0];
        assert_eq!(entry["matcher"], "Bash|Write");
        assert_eq!(entry["hooks"][0]["type"], doc_entry["hooks"][0]["type"]);
        assert_eq!(
            entry["hooks"][0]["timeout"],
            (APPROVAL_WAIT_CAP + HOOK_TIMEOUT_MARGIN).as_secs()
        );
        // Run as Claude Code runs it: through a shell.
        let command = entry["hooks"][0]["command"].as_str().unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", command])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}|hook|", bin.display())
        );
        let all: serde_json::Value =
            serde_json::from_str(&approval_settings(&Approve::Word("all".into()), &bin)).unwrap();
        assert_eq!(all["hooks"]["PreToolUse"][0]["matcher"], "*");
    }

    /// A command task that waits until the test writes to `dir/go` (a fifo),
    /// with a one-second time limit.
    fn waiting_task(dir: &std::path::Path) -> (Config, ProjectConfig) {
        let fifo = dir.join("go");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (cfg, mut project) = config(ExecutorKind::Claude);
        project.executor = ExecutorKind::Command;
        project.command = vec!["sh".into(), "-c".into(), "cat ./go; echo done".into()];
        project.path = dir.to_owned();
        project.max_duration_secs = Some(1);
        (cfg, project)
    }

    /// Runs `project`'s task 1 with `link`.
    fn start(
        cfg: &Config,
        project: &ProjectConfig,
        link: TaskLink,
    ) -> (tokio::task::JoinHandle<ExecEnd>, watch::Sender<StopReason>) {
        let (events, _) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(StopReason::None);
        let (cfg, project) = (cfg.clone(), project.clone());
        let task = tokio::spawn(async move {
            run(
                &cfg,
                &project,
                &submit(None, &[]),
                events,
                stop,
                |_| {},
                Links {
                    approval: Some(link),
                    files: None,
                },
            )
            .await
        });
        (task, stop_tx)
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_waiting_for_approval_does_not_count_toward_the_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, project) = waiting_task(dir.path());
        let (out, _requests) = mpsc::unbounded_channel();
        let approvals = crate::approvals::Approvals::new(dir.path(), out);
        let waiting = approvals.register(TaskId(1));
        let ask = tokio::spawn({
            let a = approvals.clone();
            async move { a.ask(TaskId(1), "command", "deploy").await }
        });
        let mut w = waiting.clone();
        w.wait_for(|w| *w).await.unwrap();
        let link = TaskLink {
            socket: dir.path().join("none.sock"),
            waiting,
            approved: Default::default(),
        };
        let (task, _stop) = start(&cfg, &project, link);
        // A hundred times the limit passes while a person is asked.
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!task.is_finished(), "the limit is paused while waiting");
        // Decided: the limit runs again, with the second it had left.
        assert!(approvals.decide(
            TaskId(1),
            1,
            baton_shared::protocol::Decision::Approved,
            None
        ));
        ask.await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let end = task.await.unwrap();
        assert!(
            matches!(&end, ExecEnd::Failed { cause: FailureCause::Timeout, error, .. } if error == "timed out after 1 s"),
            "{end:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_finishes_while_waiting_is_not_timed_out() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, project) = waiting_task(dir.path());
        // A request pending from the start to the end (no timer of its own:
        // the paused clock jumps to the next timer whenever the test idles).
        let (_pending, waiting) = watch::channel(true);
        let link = TaskLink {
            socket: dir.path().join("none.sock"),
            waiting,
            approved: Default::default(),
        };
        let (task, _stop) = start(&cfg, &project, link);
        tokio::time::sleep(Duration::from_secs(100)).await;
        let fifo = dir.path().join("go");
        tokio::task::spawn_blocking(move || std::fs::write(fifo, "go\n"))
            .await
            .unwrap()
            .unwrap();
        let end = task.await.unwrap();
        assert!(
            matches!(&end, ExecEnd::Completed(r) if r.text == "go\ndone\n"),
            "{end:?}"
        );
        // Without a pending request the same task is timed out.
        let dir = tempfile::tempdir().unwrap();
        let (cfg, project) = waiting_task(dir.path());
        let (_tx, waiting) = watch::channel(false);
        let link = TaskLink {
            socket: dir.path().join("none.sock"),
            waiting,
            approved: Default::default(),
        };
        let (task, _stop) = start(&cfg, &project, link);
        tokio::time::sleep(Duration::from_secs(100)).await;
        let end = task.await.unwrap();
        assert!(
            matches!(
                &end,
                ExecEnd::Failed {
                    cause: FailureCause::Timeout,
                    ..
                }
            ),
            "{end:?}"
        );
    }

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
