//! Approvals on the agent's side, end to end: the real `baton-agent` in front
//! of a fake bot that speaks the protocol, a stand-in `claude` that runs the
//! `PreToolUse` hook from `--settings` as Claude Code does (the hook input
//! JSON on stdin, the decision JSON on stdout) and honours it, and command
//! tasks asking with `"$BATON_AGENT" approve`. Approve, deny, time out, a
//! reconnect while a request waits (sent again, decided once), two tasks
//! waiting at once, cancel while waiting, and the hook with no socket.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

/// A real Bash hook input captured from Claude Code.
fn bash_input() -> PathBuf {
    fixture_path(
        "claude-code-hooks",
        "real-2025-11-pretooluse-input-bash.json",
    )
}

/// The command in [`bash_input`].
fn bash_command() -> String {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(bash_input()).unwrap()).unwrap();
    v["tool_input"]["command"].as_str().unwrap().to_owned()
}

/// A stand-in `claude` in `dir`: reads the `--settings` JSON (kept as
/// `settings-TASK.json` in the task's directory), announces a `tool` call,
/// and when the settings' `PreToolUse` matcher names the tool runs the
/// hook's command through `sh -c` with `hook_input` on stdin, as Claude
/// Code does (its stdout kept as `hook-out-TASK`). A hook `deny`: the result
/// carries the hook's reason. No decision: its own permissions apply, as in
/// `claude -p`: a tool the `--allowedTools` list does not name is refused
/// (no list: allowed). Allowed: the tool "runs" (`ran-TASK` appears) and
/// the result says so. With `no-hooks` in the task's directory it runs no
/// hook at all, like a Claude Code build that skips hooks.
fn fake_claude(dir: &Path, tool: &str, hook_input: &Path) -> PathBuf {
    let bin = dir.join("claude");
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo '2.1.0 (claude stand-in)'; exit 0; fi
cat > /dev/null
settings=""
allowed=""
prev=""
for a in "$@"; do
  if [ "$prev" = "--settings" ]; then settings="$a"; fi
  if [ "$prev" = "--allowedTools" ]; then allowed="$a"; fi
  prev="$a"
done
printf '%s\n' "$settings" > "./settings-$BATON_TASK_ID.json"
sid='5e0c7c52-0000-4000-8000-00000000000'"$BATON_TASK_ID"
tool='{tool}'
echo '{{"type":"system","subtype":"init","session_id":"'$sid'","tools":["Bash","Write","Edit"],"model":"stand-in"}}'
echo '{{"type":"assistant","message":{{"content":[{{"type":"tool_use","id":"toolu_1","name":"'$tool'","input":{{}}}}]}},"session_id":"'$sid'"}}'
matcher=$(printf '%s' "$settings" | sed -n 's/.*"matcher":"\([^"]*\)".*/\1/p')
command=$(printf '%s' "$settings" | sed -n 's/.*"command":"\([^"]*\)".*/\1/p')
decision=none
reason=""
# A build that skips hooks in -p mode, when the test asks for one.
[ -e ./no-hooks ] && matcher=""
case "|$matcher|" in
  "|*|"|*"|$tool|"*)
    out=$(sh -c "$command" < '{input}')
    printf '%s' "$out" > "./hook-out-$BATON_TASK_ID"
    case "$out" in
      *'"permissionDecision":"deny"'*) decision=deny ;;
      *'"permissionDecision":"allow"'*) decision=allow ;;
    esac
    reason=$(printf '%s' "$out" | sed -n 's/.*"permissionDecisionReason":"\([^"]*\)".*/\1/p')
    ;;
esac
if [ "$decision" = none ] && [ -n "$allowed" ]; then
  case ",$allowed," in
    *",$tool,"*) decision=allow ;;
    *) decision=deny; reason="Claude requested permissions to use $tool, but you haven't granted it yet." ;;
  esac
fi
if [ "$decision" = deny ]; then
  echo '{{"type":"user","message":{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","is_error":true,"content":"'"$reason"'"}}]}},"session_id":"'$sid'"}}'
  echo '{{"type":"result","subtype":"success","is_error":false,"result":"the tool was denied: '"$reason"'","session_id":"'$sid'","num_turns":2}}'
else
  touch "./ran-$BATON_TASK_ID"
  echo '{{"type":"user","message":{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","content":"ok"}}]}},"session_id":"'$sid'"}}'
  echo '{{"type":"result","subtype":"success","is_error":false,"result":"the tool ran","session_id":"'$sid'","num_turns":2}}'
fi
"#,
        input = hook_input.display()
    );
    std::fs::write(&bin, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A fake bot, the stand-in `claude` on the agent's PATH and the real agent
/// serving `web` (a claude project with `project_lines`).
struct Claude {
    dir: tempfile::TempDir,
    project: PathBuf,
    fake: FakeBot,
    agent: tokio::process::Child,
}

impl Claude {
    async fn start(tool: &str, project_lines: &str) -> (Claude, Ws) {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeBot::new().await;
        let project = project_dir(dir.path(), "project", "");
        let bins = dir.path().join("bin");
        std::fs::create_dir(&bins).unwrap();
        fake_claude(&bins, tool, &bash_input());
        let cfg = write_config(
            dir.path(),
            fake.addr(),
            &project,
            &format!("executor = \"claude\"\n{project_lines}"),
            "",
        );
        let agent = spawn_agent_with_path(&cfg, &bins);
        let (ws, _) = fake.accept().await;
        (
            Claude {
                dir,
                project,
                fake,
                agent,
            },
            ws,
        )
    }

    fn ran(&self, task: i64) -> bool {
        self.project.join(format!("ran-{task}")).exists()
    }
}

/// The `code` persona's tools.
const CODE_TOOLS: &[&str] = &["Read", "Edit", "MultiEdit", "Write", "Glob", "Grep", "Bash"];

/// A submit of `prompt` as task `task` whose persona allows `tools`.
fn submit_with(task: i64, prompt: &str, tools: &[&str]) -> Value {
    let mut s = submit(task, prompt);
    s["allowed_tools"] = json!(tools);
    s
}

/// The agent's next frame of type `ty`, skipping the others.
async fn next_of(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let m = next_json(ws).await;
        if m["type"] == ty {
            return m;
        }
    }
}

/// The bot's answer to request `request` of `task`.
fn decision(task: i64, request: u32, decision: &str, by: Option<&str>) -> Value {
    let mut d = json!({"type": "approval_decision", "task": task, "request": request, "decision": decision});
    if let Some(by) = by {
        d["by"] = json!(by);
    }
    d
}

/// The final frame of `task`, which must be a `completed`; its result text.
async fn completed_text(ws: &mut Ws, task: i64) -> String {
    let frames = frames_until_final(ws, task).await;
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "completed", "{frames:?}");
    last["result"]["text"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_tool_call_runs_and_the_task_completes() {
    let (mut c, mut ws) = Claude::start("Bash", "approve = [\"Bash\", \"Write\"]").await;
    send(&mut ws, submit_with(1, "clean the build", CODE_TOOLS)).await;
    let req = next_of(&mut ws, "approval_request").await;
    assert_eq!(
        req,
        json!({"type": "approval_request", "task": 1, "request": 1, "tool": "Bash", "input": bash_command()})
    );
    assert!(!c.ran(1), "the tool waits for the answer");
    // It asked over the task's own socket, in a directory only this user can enter.
    let sockets = c.dir.path().join("agent-state/approvals");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mode = std::fs::metadata(&sockets).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(
        std::fs::metadata(sockets.join("1.sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    send(&mut ws, decision(1, 1, "approved", Some("U024BE7LH"))).await;
    assert_eq!(completed_text(&mut ws, 1).await, "the tool ran");
    assert!(c.ran(1));
    // A yes is no decision: Claude Code's own permissions (the persona's tools) apply.
    assert_eq!(
        std::fs::read_to_string(c.project.join("hook-out-1")).unwrap(),
        ""
    );
    // Claude Code got the hook through --settings, on the project's tools.
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(c.project.join("settings-1.json")).unwrap())
            .unwrap();
    let entry = &settings["hooks"]["PreToolUse"][0];
    assert_eq!(entry["matcher"], "Bash|Write");
    let command = entry["hooks"][0]["command"].as_str().unwrap();
    assert_eq!(
        command,
        format!("'{}' hook", agent_bin().canonicalize().unwrap().display())
    );
    // The task's socket is gone with it.
    wait_for(30, "the task's socket removed", || {
        !sockets.join("1.sock").exists()
    })
    .await;
    c.agent.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_tool_call_does_not_run_and_the_result_says_who_denied_it() {
    let (mut c, mut ws) = Claude::start("Bash", "approve = \"all\"").await;
    send(&mut ws, submit_with(1, "clean the build", CODE_TOOLS)).await;
    let req = next_of(&mut ws, "approval_request").await;
    assert_eq!(
        (req["task"].clone(), req["request"].clone()),
        (json!(1), json!(1))
    );
    send(&mut ws, decision(1, 1, "denied", Some("U2"))).await;
    assert_eq!(
        completed_text(&mut ws, 1).await,
        "the tool was denied: denied by U2 in Slack"
    );
    assert!(!c.ran(1));

    // Unanswered in time: denied too, and said so.
    send(&mut ws, submit_with(2, "clean again", CODE_TOOLS)).await;
    next_of(&mut ws, "approval_request").await;
    send(&mut ws, decision(2, 1, "timed_out", None)).await;
    assert_eq!(
        completed_text(&mut ws, 2).await,
        "the tool was denied: no answer in time"
    );
    assert!(!c.ran(2));
    c.agent.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yes_never_gives_a_persona_a_tool_it_does_not_have() {
    let (mut c, mut ws) = Claude::start("Bash", "approve = [\"Bash\"]").await;
    // The review persona: Bash only for `git diff`.
    let review = ["Read", "Glob", "Grep", "Bash(git diff:*)"];
    send(&mut ws, submit_with(1, "review it", &review)).await;
    next_of(&mut ws, "approval_request").await;
    send(&mut ws, decision(1, 1, "approved", Some("U1"))).await;
    assert_eq!(
        completed_text(&mut ws, 1).await,
        "the tool was denied: Claude requested permissions to use Bash, but you haven't granted it yet."
    );
    assert!(!c.ran(1));
    c.agent.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_outside_the_approve_list_runs_without_asking() {
    let (mut c, mut ws) = Claude::start("Bash", "approve = [\"Write\"]").await;
    send(&mut ws, submit_with(1, "list files", CODE_TOOLS)).await;
    let frames = frames_until_final(&mut ws, 1).await;
    assert!(
        frames.iter().all(|f| f["type"] != "approval_request"),
        "{frames:?}"
    );
    assert_eq!(frames.last().unwrap()["result"]["text"], "the tool ran");
    assert!(c.ran(1));
    c.agent.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pending_across_a_reconnect_is_sent_again_and_decided_once() {
    let (mut c, mut ws) = Claude::start("Bash", "approve = [\"Bash\"]").await;
    send(&mut ws, submit_with(1, "clean the build", CODE_TOOLS)).await;
    let first = next_of(&mut ws, "approval_request").await;
    // The link drops while the request waits.
    drop(ws);
    let (mut ws, hello) = c.fake.accept().await;
    assert_eq!(hello["running"], json!([1]));
    let again = next_of(&mut ws, "approval_request").await;
    assert_eq!(again, first, "the same request, the same number");
    // The bot answers twice (the second time with something else): the first applies.
    send(&mut ws, decision(1, 1, "approved", Some("U1"))).await;
    send(&mut ws, decision(1, 1, "denied", Some("U2"))).await;
    send(&mut ws, decision(1, 7, "denied", Some("U2"))).await;
    send(&mut ws, decision(99, 1, "denied", Some("U2"))).await;
    assert_eq!(completed_text(&mut ws, 1).await, "the tool ran");
    assert!(c.ran(1));
    c.agent.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_waiting_at_once_are_decided_independently() {
    let (mut c, mut ws) = Claude::start("Bash", "approve = [\"Bash\"]\nmax_concurrent = 2").await;
    send(&mut ws, submit_with(1, "first", CODE_TOOLS)).await;
    send(&mut ws, submit_with(2, "second", CODE_TOOLS)).await;
    let mut asked = [
        next_of(&mut ws, "approval_request").await,
        next_of(&mut ws, "approval_request").await,
    ];
    asked.sort_by_key(|r| r["task"].as_i64());
    assert_eq!(
        asked
            .iter()
            .map(|r| (r["task"].as_i64().unwrap(), r["request"].as_u64().unwrap()))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)],
        "each task numbers its own requests"
    );
    send(&mut ws, decision(2, 1, "approved", Some("U1"))).await;
    assert_eq!(completed_text(&mut ws, 2).await, "the tool ran");
    assert!(!c.ran(1), "task 1 still waits");
    send(&mut ws, decision(1, 1, "denied", Some("U3"))).await;
    assert_eq!(
        completed_text(&mut ws, 1).await,
        "the tool was denied: denied by U3 in Slack"
    );
    assert!(c.ran(2) && !c.ran(1));
    c.agent.start_kill().unwrap();
}

/// Asks with `"$BATON_AGENT" approve`, then prints its exit code.
const ASKS: &str = r#"#!/bin/sh
"$BATON_AGENT" approve "deploy task $BATON_TASK_ID"
echo "exit=$?"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_task_asks_with_baton_agent_approve_and_gets_0_1_or_2() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBot::new().await;
    let project = project_dir(dir.path(), "project", ASKS);
    let mut agent = start_agent(dir.path(), fake.addr(), &project, 1);
    let (mut ws, _) = fake.accept().await;
    for (task, answer, by, code) in [
        (1, "approved", Some("U1"), 0),
        (2, "denied", Some("U1"), 1),
        (3, "timed_out", None, 2),
    ] {
        send(&mut ws, submit(task, "deploy")).await;
        let req = next_of(&mut ws, "approval_request").await;
        assert_eq!(
            req,
            json!({"type": "approval_request", "task": task, "request": 1, "tool": "command", "input": format!("deploy task {task}")})
        );
        send(&mut ws, decision(task, 1, answer, by)).await;
        assert_eq!(
            completed_text(&mut ws, task).await,
            format!("exit={code}\n"),
            "{answer}"
        );
    }
    agent.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_while_it_waits_is_cancelled_and_its_request_denied() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBot::new().await;
    let project = project_dir(dir.path(), "project", ASKS);
    let mut agent = start_agent(dir.path(), fake.addr(), &project, 1);
    let (mut ws, _) = fake.accept().await;
    send(&mut ws, submit(1, "deploy")).await;
    next_of(&mut ws, "approval_request").await;
    send(&mut ws, json!({"type": "cancel", "task": 1})).await;
    let frames = frames_until_final(&mut ws, 1).await;
    assert_eq!(frames.last().unwrap()["type"], "cancelled", "{frames:?}");
    // A decision after the end changes nothing; the agent goes on.
    send(&mut ws, decision(1, 1, "approved", Some("U1"))).await;
    send(&mut ws, submit(2, "deploy")).await;
    next_of(&mut ws, "approval_request").await;
    send(&mut ws, decision(2, 1, "approved", Some("U1"))).await;
    assert_eq!(completed_text(&mut ws, 2).await, "exit=0\n");
    agent.start_kill().unwrap();
}

#[test]
fn the_hook_denies_and_approve_exits_3_when_they_cannot_ask() {
    let input = std::fs::read(bash_input()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for socket in [None, Some(dir.path().join("gone.sock"))] {
        let mut cmd = std::process::Command::new(agent_bin());
        cmd.arg("hook")
            .env_remove("BATON_APPROVAL_SOCKET")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some(s) = &socket {
            cmd.env("BATON_APPROVAL_SOCKET", s);
        }
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let hook = &v["hookSpecificOutput"];
        assert_eq!(hook["hookEventName"], "PreToolUse");
        assert_eq!(hook["permissionDecision"], "deny", "fails closed: {v}");
        let reason = hook["permissionDecisionReason"].as_str().unwrap();
        let says = if socket.is_some() {
            "cannot reach the agent"
        } else {
            "BATON_APPROVAL_SOCKET is not set"
        };
        assert!(reason.contains(says), "{reason}");

        let mut cmd = std::process::Command::new(agent_bin());
        cmd.args(["approve", "deploy"])
            .env_remove("BATON_APPROVAL_SOCKET");
        if let Some(s) = &socket {
            cmd.env("BATON_APPROVAL_SOCKET", s);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
    // Bad usage is neither a yes nor a no.
    for args in [&["approve"][..], &["approve", "a", "b"][..]] {
        let out = std::process::Command::new(agent_bin())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn check_refuses_an_invalid_approve_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let project = project_dir(dir.path(), "project", "");
    let cfg = write_config(
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
        &project,
        "executor = \"claude\"\napprove = \"some\"",
        "",
    );
    let out = std::process::Command::new(agent_bin())
        .args(["--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("project[0].approve") && stderr.contains("\"all\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_code_that_skips_the_hook_has_its_task_stopped_as_misconfigured() {
    let (mut c, mut ws) = Claude::start("Bash", "approve = [\"Bash\"]").await;
    std::fs::write(c.project.join("no-hooks"), "").unwrap();
    send(&mut ws, submit_with(1, "clean the build", CODE_TOOLS)).await;
    let frames = frames_until_final(&mut ws, 1).await;
    assert!(
        frames.iter().all(|f| f["type"] != "approval_request"),
        "{frames:?}"
    );
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "failed", "{frames:?}");
    assert_eq!(last["cause"], "misconfigured");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains("Claude Code ran Bash without asking for approval"),
        "{error}"
    );
    c.agent.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_approval_socket_a_task_that_must_ask_fails_before_it_runs() {
    let (mut c, mut ws) = Claude::start("Bash", "approve = [\"Bash\"]").await;
    // Something that is not a directory where the sockets go.
    std::fs::write(c.dir.path().join("agent-state/approvals"), "").unwrap();
    send(&mut ws, submit_with(1, "clean the build", CODE_TOOLS)).await;
    let frames = frames_until_final(&mut ws, 1).await;
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "failed", "{frames:?}");
    assert_eq!(last["cause"], "misconfigured");
    assert!(
        last["error"].as_str().unwrap().contains("approval socket"),
        "{last}"
    );
    assert!(!c.ran(1));
    assert!(
        recorded_claude_runs(&c.project).is_empty(),
        "Claude Code never ran"
    );
    c.agent.start_kill().unwrap();
}

/// The tasks the stand-in `claude` ran in `project` (it writes their settings).
fn recorded_claude_runs(project: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(project)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("settings-"))
        })
        .collect()
}
