//! Approvals, the agent's side: a task's tool call waits for a person's yes
//! in Slack.
//!
//! Each task that may ask (a `claude` project with `approve`, every `command`
//! task) gets a Unix socket of its own in `STATE_DIR/approvals/` (a directory
//! only this user can enter; the peer's uid is checked too). Its path is in
//! the task's environment as [`APPROVAL_SOCKET_ENV`]; `baton-agent hook` and
//! `baton-agent approve` (see [`crate::ask`]) connect to it, send one
//! [`Ask`] line and wait for one [`Answer`] line.
//!
//! Each ask becomes a numbered request of its task (from 1), sent to the bot
//! as `approval_request` and sent again after every `welcome` until decided.
//! The first `approval_decision` for a pending request answers it; later
//! ones and unknown ones change nothing. While a task has a request pending
//! its time limit is paused ([`TaskLink::waiting`]). A cancelled or ended
//! task denies what it still waits for; a bot that never answers is capped by
//! [`APPROVAL_WAIT_CAP`].

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_shared::TaskId;
use baton_shared::limits::{
    MAX_APPROVAL_INPUT_CHARS, MAX_APPROVAL_TOOL_CHARS, MAX_APPROVALS_PER_TASK,
};
use baton_shared::protocol::{AgentMessage, Decision};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Longest an agent waits for a decision before it answers `timed_out`
/// itself: twice the bot's default `BATON_APPROVAL_TIMEOUT_SECS` (1,800), for
/// a bot that never answers.
pub const APPROVAL_WAIT_CAP: Duration = Duration::from_secs(3_600);
/// Added to [`APPROVAL_WAIT_CAP`] for the hook's `timeout` in Claude Code's
/// settings: a hook Claude Code times out decides nothing and the tool runs,
/// so the hook must always answer first.
pub const HOOK_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);
/// The variable that holds a task's approval socket.
pub const APPROVAL_SOCKET_ENV: &str = "BATON_APPROVAL_SOCKET";
/// The variable that holds the agent binary's path (`"$BATON_AGENT" approve`).
pub const AGENT_BIN_ENV: &str = "BATON_AGENT";
/// The sockets' directory under the state directory (mode 0700).
pub const SOCKET_DIR: &str = "approvals";
/// Longest path a Unix socket may have on Linux (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// Longest [`Ask`] line a task may send over its socket, in bytes.
pub const MAX_ASK_BYTES: u64 = 64 * 1024;
/// The tool named by `"$BATON_AGENT" approve`.
pub const COMMAND_TOOL: &str = "command";

/// What a task asks, one JSON line over its socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// The tool (`Bash`, `Write`, …, or [`COMMAND_TOOL`]).
    pub tool: String,
    /// A short view of what it wants to do.
    pub input: String,
}

/// The agent's answer, one JSON line over the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// What was decided.
    pub decision: Decision,
    /// Why, for Claude Code and the script's log ("denied by U1 in Slack").
    pub reason: String,
}

impl Answer {
    /// The answer for a decision from the bot.
    pub fn decided(decision: Decision, by: Option<&str>) -> Answer {
        let who = by.map(|b| format!(" by {b}")).unwrap_or_default();
        let reason = match decision {
            Decision::Approved => format!("approved{who} in Slack"),
            Decision::Denied => format!("denied{who} in Slack"),
            Decision::TimedOut => "no answer in time".into(),
        };
        Answer { decision, reason }
    }

    /// A denial the agent decides by itself.
    pub fn denied(reason: impl Into<String>) -> Answer {
        Answer {
            decision: Decision::Denied,
            reason: reason.into(),
        }
    }
}

/// The socket of the task `task` under the state directory `state_dir`.
pub fn socket_path(state_dir: &Path, task: TaskId) -> PathBuf {
    state_dir.join(SOCKET_DIR).join(format!("{}.sock", task.0))
}

/// Checks that the sockets of every task fit in a Unix socket path; the
/// error says what would fit.
pub fn check_socket_dir(state_dir: &Path) -> Result<(), String> {
    let abs = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let longest = socket_path(&abs, TaskId(i64::MAX));
    let len = longest.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(format!(
            "`{}` is too long for the approval sockets ({len} bytes with a socket's name, \
             at most {MAX_SOCKET_PATH_BYTES}): choose a shorter state_dir",
            abs.display()
        ));
    }
    Ok(())
}

/// Cuts `s` to at most `max` characters; a cut text ends with `…`.
pub fn cut_view(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) => {
            let keep = s
                .char_indices()
                .nth(max.saturating_sub(1))
                .map_or(s.len(), |(i, _)| i);
            format!("{}…", &s[..keep])
        }
    }
}

/// What a running task's executor needs to let it ask.
#[derive(Debug)]
pub struct TaskLink {
    /// The task's socket (for [`APPROVAL_SOCKET_ENV`]).
    pub socket: PathBuf,
    /// True while the task has a request pending: its time limit is paused.
    pub waiting: watch::Receiver<bool>,
    /// How many of its requests were approved (see [`HookWatch`]).
    pub approved: Arc<AtomicU32>,
}

/// One pending request.
#[derive(Debug)]
struct Pending {
    /// What asks.
    tool: String,
    /// The view of its input.
    input: String,
    /// Where the answer goes.
    reply: oneshot::Sender<Answer>,
}

/// A task's requests.
#[derive(Debug)]
struct TaskApprovals {
    /// The next request's number.
    next: u32,
    /// Undecided requests, by number.
    pending: BTreeMap<u32, Pending>,
    /// Whether anything is pending (the executor pauses the time limit).
    waiting: watch::Sender<bool>,
    /// Set once the task is cancelled: why new asks are denied.
    closed: Option<&'static str>,
    /// The socket's accept loop.
    server: Option<tokio::task::JoinHandle<()>>,
    /// The socket's file.
    socket: Option<PathBuf>,
    /// How many requests were approved.
    approved: Arc<AtomicU32>,
}

impl TaskApprovals {
    fn update_waiting(&self) {
        self.waiting.send_replace(!self.pending.is_empty());
    }
}

/// Reason given when a task is cancelled while it waits.
pub const REASON_CANCELLED: &str = "the task was cancelled";
/// Reason given when a task ended while a request was pending.
pub const REASON_ENDED: &str = "the task ended";

/// Every running task's approval requests.
#[derive(Debug, Clone)]
pub struct Approvals {
    /// Per task.
    tasks: Arc<Mutex<HashMap<TaskId, TaskApprovals>>>,
    /// Frames for the bot.
    out: mpsc::UnboundedSender<AgentMessage>,
    /// `STATE_DIR/approvals`.
    dir: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Approvals {
    /// Approvals whose requests go out through `out`, sockets under
    /// `state_dir`. Sockets an earlier process of this agent left behind
    /// (it was killed) are removed.
    pub fn new(state_dir: &Path, out: mpsc::UnboundedSender<AgentMessage>) -> Approvals {
        let dir = state_dir.join(SOCKET_DIR);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "sock") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Approvals {
            tasks: Arc::default(),
            out,
            dir,
        }
    }

    /// Registers a task without a socket (its asks come through [`Approvals::ask`]).
    pub fn register(&self, task: TaskId) -> watch::Receiver<bool> {
        let (waiting, rx) = watch::channel(false);
        lock(&self.tasks).insert(
            task,
            TaskApprovals {
                next: 1,
                pending: BTreeMap::new(),
                waiting,
                closed: None,
                server: None,
                socket: None,
                approved: Arc::default(),
            },
        );
        rx
    }

    /// Registers a task and opens its socket (in a directory only this user
    /// can enter). On an error the task is not registered.
    pub fn open(&self, task: TaskId) -> std::io::Result<TaskLink> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let dir = self.dir.canonicalize()?;
        let owner = std::fs::metadata(&dir)?.uid();
        let socket = dir.join(format!("{}.sock", task.0));
        // A socket left by an earlier process of this agent.
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        let waiting = self.register(task);
        let me = self.clone();
        let server = tokio::spawn(async move {
            // The connections end with the accept loop (when the task ends).
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    Some(_) = conns.join_next() => continue,
                };
                let Ok((conn, _)) = conn else { return };
                let peer = conn.peer_cred().map(|c| c.uid()).ok();
                if peer != Some(owner) {
                    tracing::warn!(
                        task = task.0,
                        ?peer,
                        "an approval socket connection from another user refused"
                    );
                    continue;
                }
                let me = me.clone();
                conns.spawn(async move { me.serve(task, conn).await });
            }
        });
        let mut approved = Arc::default();
        if let Some(t) = lock(&self.tasks).get_mut(&task) {
            t.server = Some(server);
            t.socket = Some(socket.clone());
            approved = t.approved.clone();
        }
        Ok(TaskLink {
            socket,
            waiting,
            approved,
        })
    }

    /// One connection: an [`Ask`] line in, an [`Answer`] line out.
    async fn serve(&self, task: TaskId, conn: UnixStream) {
        let (read, mut write) = conn.into_split();
        let mut line = String::new();
        let read = BufReader::new(read.take(MAX_ASK_BYTES))
            .read_line(&mut line)
            .await;
        let answer = match read
            .ok()
            .and_then(|_| serde_json::from_str::<Ask>(&line).ok())
        {
            Some(ask) => self.ask(task, &ask.tool, &ask.input).await,
            None => Answer::denied("the agent could not read the request"),
        };
        let mut text = serde_json::to_string(&answer).unwrap_or_default();
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }

    /// Asks the bot about a tool call of `task` and waits for the answer.
    pub async fn ask(&self, task: TaskId, tool: &str, input: &str) -> Answer {
        let tool = match tool.trim() {
            "" => "unknown tool".to_owned(),
            t => cut_view(t, MAX_APPROVAL_TOOL_CHARS),
        };
        let input = cut_view(input, MAX_APPROVAL_INPUT_CHARS);
        let (reply, answer) = oneshot::channel();
        let request = {
            let mut tasks = lock(&self.tasks);
            let Some(t) = tasks.get_mut(&task) else {
                return Answer::denied(REASON_ENDED);
            };
            if let Some(why) = t.closed {
                return Answer::denied(why);
            }
            if t.next > MAX_APPROVALS_PER_TASK {
                return Answer::denied(format!(
                    "this task asked too often (at most {MAX_APPROVALS_PER_TASK} approval requests per task)"
                ));
            }
            let request = t.next;
            t.next += 1;
            t.pending.insert(
                request,
                Pending {
                    tool: tool.clone(),
                    input: input.clone(),
                    reply,
                },
            );
            t.update_waiting();
            request
        };
        tracing::info!(task = task.0, request, %tool, "waiting for approval");
        let _ = self.out.send(AgentMessage::ApprovalRequest {
            task,
            request,
            tool,
            input,
        });
        match tokio::time::timeout(APPROVAL_WAIT_CAP, answer).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => Answer::denied(REASON_ENDED),
            Err(_) => {
                tracing::warn!(
                    task = task.0,
                    request,
                    "no decision from the bot in time; denied"
                );
                if let Some(t) = lock(&self.tasks).get_mut(&task) {
                    t.pending.remove(&request);
                    t.update_waiting();
                }
                Answer::decided(Decision::TimedOut, None)
            }
        }
    }

    /// Applies the bot's decision to a pending request; a second decision,
    /// or one for a request that is not pending, changes nothing. Returns
    /// whether it was applied.
    pub fn decide(&self, task: TaskId, request: u32, decision: Decision, by: Option<&str>) -> bool {
        let mut tasks = lock(&self.tasks);
        let Some(t) = tasks.get_mut(&task) else {
            return false;
        };
        let Some(p) = t.pending.remove(&request) else {
            return false;
        };
        t.update_waiting();
        if decision.allows() {
            t.approved.fetch_add(1, Ordering::SeqCst);
        }
        tracing::info!(task = task.0, request, ?decision, by, "approval decided");
        let _ = p.reply.send(Answer::decided(decision, by));
        true
    }

    /// The requests still undecided, to send again after a `welcome`.
    pub fn pending_requests(&self) -> Vec<AgentMessage> {
        let tasks = lock(&self.tasks);
        let mut all: Vec<_> = tasks
            .iter()
            .flat_map(|(task, t)| {
                t.pending
                    .iter()
                    .map(|(n, p)| AgentMessage::ApprovalRequest {
                        task: *task,
                        request: *n,
                        tool: p.tool.clone(),
                        input: p.input.clone(),
                    })
            })
            .collect();
        all.sort_by_key(|m| match m {
            AgentMessage::ApprovalRequest { task, request, .. } => (task.0, *request),
            _ => (0, 0),
        });
        all
    }

    /// A task is being cancelled: what it waits for is denied, and so is
    /// whatever it asks from now on.
    pub fn cancel(&self, task: TaskId) {
        if let Some(t) = lock(&self.tasks).get_mut(&task) {
            t.closed = Some(REASON_CANCELLED);
            for (_, p) in std::mem::take(&mut t.pending) {
                let _ = p.reply.send(Answer::denied(REASON_CANCELLED));
            }
            t.update_waiting();
        }
    }

    /// A task ended: its socket is closed and removed, what it still waited
    /// for is denied.
    pub fn close(&self, task: TaskId) {
        let Some(t) = lock(&self.tasks).remove(&task) else {
            return;
        };
        if let Some(server) = t.server {
            server.abort();
        }
        if let Some(socket) = t.socket {
            let _ = std::fs::remove_file(socket);
        }
        for (_, p) in t.pending {
            let _ = p.reply.send(Answer::denied(REASON_ENDED));
        }
    }
}

/// Watches Claude Code's stream-json for a tool call of the project's
/// `approve` list that ran without a yes: the sign that Claude Code did not
/// run the `PreToolUse` hook (some builds skip hooks in `-p` mode). Every
/// such call that succeeded must have had its request approved first (the
/// hook answers before the tool runs), so more successful calls than
/// approvals means one ran unasked, and the executor stops the task.
#[derive(Debug)]
pub struct HookWatch {
    /// The project's `approve`.
    approve: crate::config::Approve,
    /// Tool calls of listed tools seen and not yet ended: id → tool.
    calls: HashMap<String, String>,
    /// Listed tool calls that succeeded.
    ran: u32,
    /// The task's approved requests.
    approved: Arc<AtomicU32>,
}

impl HookWatch {
    /// A watch for a task of a project with `approve`.
    pub fn new(approve: crate::config::Approve, approved: Arc<AtomicU32>) -> HookWatch {
        HookWatch {
            approve,
            calls: HashMap::new(),
            ran: 0,
            approved,
        }
    }

    /// Reads one stream-json line; the tool's name when a listed tool
    /// call ran without a yes.
    pub fn feed_line(&mut self, line: &str) -> Option<String> {
        if !line.contains("\"tool_use\"") && !line.contains("\"tool_result\"") {
            return None;
        }
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        let blocks = event.pointer("/message/content")?.as_array()?;
        let text =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let mut unasked = None;
        for b in blocks {
            match b.get("type").and_then(|t| t.as_str()) {
                Some("tool_use") => {
                    if let (Some(id), Some(name)) = (text(b, "id"), text(b, "name"))
                        && self.approve.names(&name)
                    {
                        self.calls.insert(id, name);
                    }
                }
                Some("tool_result") => {
                    let failed = b.get("is_error").and_then(|e| e.as_bool()) == Some(true);
                    let call = text(b, "tool_use_id").and_then(|id| self.calls.remove(&id));
                    if let (Some(name), false) = (call, failed) {
                        self.ran += 1;
                        if self.ran > self.approved.load(Ordering::SeqCst) {
                            unasked = Some(name);
                        }
                    }
                }
                _ => {}
            }
        }
        unasked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approvals() -> (Approvals, mpsc::UnboundedReceiver<AgentMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Approvals::new(Path::new("/nonexistent"), tx), rx)
    }

    fn request_of(m: AgentMessage) -> (i64, u32, String, String) {
        match m {
            AgentMessage::ApprovalRequest {
                task,
                request,
                tool,
                input,
            } => (task.0, request, tool, input),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_are_numbered_per_task_and_decided_once() {
        let (a, mut out) = approvals();
        let mut waiting = a.register(TaskId(7));
        a.register(TaskId(8));
        let first = tokio::spawn({
            let a = a.clone();
            async move { a.ask(TaskId(7), "Bash", "ls").await }
        });
        assert_eq!(
            request_of(out.recv().await.unwrap()),
            (7, 1, "Bash".into(), "ls".into())
        );
        waiting.wait_for(|w| *w).await.unwrap();
        let other = tokio::spawn({
            let a = a.clone();
            async move { a.ask(TaskId(8), "Write", "/x").await }
        });
        assert_eq!(
            request_of(out.recv().await.unwrap()).1,
            1,
            "numbered within its task"
        );
        let second = tokio::spawn({
            let a = a.clone();
            async move { a.ask(TaskId(7), "Bash", "rm -rf build").await }
        });
        assert_eq!(request_of(out.recv().await.unwrap()).1, 2);
        assert_eq!(a.pending_requests().len(), 3);

        assert!(
            !a.decide(TaskId(7), 9, Decision::Approved, Some("U1")),
            "unknown request"
        );
        assert!(a.decide(TaskId(7), 2, Decision::Denied, Some("U2")));
        assert!(
            !a.decide(TaskId(7), 2, Decision::Approved, Some("U1")),
            "only once"
        );
        let answer = second.await.unwrap();
        assert_eq!(answer, Answer::denied("denied by U2 in Slack"));
        assert!(*waiting.borrow(), "request 1 still waits");
        assert!(a.decide(TaskId(7), 1, Decision::Approved, Some("U1")));
        assert_eq!(first.await.unwrap().decision, Decision::Approved);
        waiting.wait_for(|w| !*w).await.unwrap();
        assert!(a.decide(TaskId(8), 1, Decision::TimedOut, None));
        assert_eq!(
            other.await.unwrap(),
            Answer {
                decision: Decision::TimedOut,
                reason: "no answer in time".into()
            }
        );
        assert!(a.pending_requests().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_task_denies_what_it_waits_for_and_what_it_asks_next() {
        let (a, mut out) = approvals();
        a.register(TaskId(1));
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.ask(TaskId(1), "Bash", "make").await }
        });
        out.recv().await.unwrap();
        a.cancel(TaskId(1));
        assert_eq!(waiter.await.unwrap(), Answer::denied(REASON_CANCELLED));
        assert_eq!(
            a.ask(TaskId(1), "Bash", "make").await,
            Answer::denied(REASON_CANCELLED)
        );
        assert!(!a.decide(TaskId(1), 1, Decision::Approved, None));
        a.close(TaskId(1));
        assert_eq!(
            a.ask(TaskId(1), "Bash", "x").await,
            Answer::denied(REASON_ENDED)
        );
        assert!(out.try_recv().is_err(), "nothing more was asked");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bot_that_never_answers_times_out_at_the_cap() {
        let (a, mut out) = approvals();
        let mut waiting = a.register(TaskId(3));
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.ask(TaskId(3), "Edit", "/src/main.rs").await }
        });
        out.recv().await.unwrap();
        tokio::time::advance(APPROVAL_WAIT_CAP - Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        let answer = waiter.await.unwrap();
        assert_eq!(answer.decision, Decision::TimedOut);
        waiting.wait_for(|w| !*w).await.unwrap();
        assert!(a.pending_requests().is_empty());
        assert!(
            !a.decide(TaskId(3), 1, Decision::Approved, None),
            "too late"
        );
    }

    #[tokio::test]
    async fn past_the_most_requests_a_task_is_denied_without_asking() {
        let (a, mut out) = approvals();
        a.register(TaskId(4));
        lock(&a.tasks).get_mut(&TaskId(4)).unwrap().next = MAX_APPROVALS_PER_TASK + 1;
        let answer = a.ask(TaskId(4), "Bash", "ls").await;
        assert_eq!(answer.decision, Decision::Denied);
        assert!(answer.reason.contains("at most 1000"), "{}", answer.reason);
        assert!(out.try_recv().is_err());
    }

    #[test]
    fn a_listed_tool_that_ran_without_a_yes_is_caught() {
        let approved = Arc::new(AtomicU32::new(0));
        let approve = crate::config::Approve::Tools(vec!["Bash".into()]);
        let mut w = HookWatch::new(approve, approved.clone());
        let call = |id: &str, name: &str| {
            format!(
                r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","id":"{id}","name":"{name}","input":{{}}}}]}}}}"#
            )
        };
        let result = |id: &str, error: bool| {
            format!(
                r#"{{"type":"user","message":{{"content":[{{"type":"tool_result","tool_use_id":"{id}","is_error":{error},"content":"x"}}]}}}}"#
            )
        };
        // A tool outside the list, and a listed call that was refused: fine.
        assert_eq!(w.feed_line(&call("t1", "Read")), None);
        assert_eq!(w.feed_line(&result("t1", false)), None);
        assert_eq!(w.feed_line(&call("t2", "Bash")), None);
        assert_eq!(w.feed_line(&result("t2", true)), None);
        // Approved, then ran: fine.
        approved.fetch_add(1, Ordering::SeqCst);
        assert_eq!(w.feed_line(&call("t3", "Bash")), None);
        assert_eq!(w.feed_line(&result("t3", false)), None);
        // Ran with no yes: caught.
        assert_eq!(w.feed_line(&call("t4", "Bash")), None);
        assert_eq!(w.feed_line(&result("t4", false)), Some("Bash".into()));
        assert_eq!(w.feed_line("not json \"tool_use\""), None);
    }

    #[test]
    fn a_view_is_cut_to_its_limit_with_a_mark() {
        assert_eq!(cut_view("short", 10), "short");
        assert_eq!(cut_view("exactly10!", 10), "exactly10!");
        assert_eq!(cut_view("ééééééééééé", 10), "ééééééééé…");
        assert_eq!(
            cut_view(&"x".repeat(5000), MAX_APPROVAL_INPUT_CHARS)
                .chars()
                .count(),
            MAX_APPROVAL_INPUT_CHARS
        );
    }

    #[test]
    fn a_state_dir_too_long_for_a_socket_is_refused_with_what_fits() {
        assert_eq!(check_socket_dir(Path::new("/var/lib/baton")), Ok(()));
        let long = PathBuf::from(format!("/{}", "d".repeat(80)));
        let e = check_socket_dir(&long).unwrap_err();
        assert!(
            e.contains("shorter state_dir") && e.contains("at most 107"),
            "{e}"
        );
    }
}
