//! The agent's executors end to end: a stand-in `claude` that replays the real
//! stream-json fixtures at a realistic pace (steps shown as they happen, result
//! and cost at the end, a follow-up resuming the session, a logged-out CLI as a
//! misconfigured agent), cancel leaving no process behind, time limits,
//! graceful shutdown and `--check`. Real bot, real `baton-agent`, fake Slack.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/claude-code")
        .join(name)
}

/// A stand-in `claude` that records its arguments and replays `fixture` line
/// by line, 20 ms apart, then exits with `code`.
/// A stand-in `claude` replaying `fixture` (see [`fake_cli`]).
fn fake_claude(dir: &Path, fixture: &Path, code: i32) -> PathBuf {
    fake_cli(dir, "claude", fixture, code)
}

/// Config for agent `e2e` with one project `web`, either `claude` or a command.
fn config(
    dir: &Path,
    bot: std::net::SocketAddr,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_tasks_show_steps_as_they_happen_and_end_with_result_and_cost() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", "");
    // The stand-in is found as `claude` on the PATH, like the real CLI.
    fake_claude(
        dir.path(),
        &fixture("success-many-tools-todowrite.jsonl"),
        0,
    );
    let cfg = config(dir.path(), bot.addr, &project, "executor = \"claude\"", "");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut agent = tokio::process::Command::new(agent_bin())
        .arg("--config")
        .arg(&cfg)
        .env("PATH", path)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_agents(bot.addr, 1).await;

    let (_, body) = baton(bot.addr, "implement it", "U1").await;
    assert!(body.is_empty(), "{body}");
    wait_state(&store, 1, "running", 30).await;
    let ts = message_ts(&store, 1).await;
    // While it runs, its message shows the tool steps.
    wait_for(30, "a tool step shown while running", || {
        slack
            .shown(&ts)
            .is_some_and(|t| t.contains("Running") && (t.contains("Read ") || t.contains("Glob")))
    })
    .await;
    wait_state(&store, 1, "completed", 60).await;
    let task = store.task(1).await.unwrap().unwrap();
    assert!(task.result.unwrap().contains("sqlite2json"));
    assert_eq!(
        task.session_id.as_deref(),
        Some("bfc86ca0-df6f-42d4-9fdc-c95b3c1da201")
    );
    wait_for(30, "the final edit with the result and its cost", || {
        slack.shown(&ts).is_some_and(|t| {
            t.contains("Completed") && t.contains("sqlite2json") && t.contains('$')
        })
    })
    .await;

    let args = std::fs::read_to_string(dir.path().join("claude-args")).unwrap();
    let first: Vec<&str> = args
        .split(&format!("{ARGS_END}\n"))
        .next()
        .unwrap()
        .lines()
        .collect();
    for a in [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--append-system-prompt",
        "--allowedTools",
    ] {
        assert!(first.contains(&a), "{a} missing from {first:?}");
    }
    assert!(!first.contains(&"--resume"));

    // A reply in the task's thread continues the same Claude session.
    let event = json!({
        "type": "event_callback", "team_id": "T1", "event_id": "EvFollowUp1",
        "authorizations": [{"user_id": "UBATON", "team_id": "T1"}],
        "event": {"type": "message", "channel": "C1", "user": "U1", "text": "now add tests",
                  "ts": "1700000999.000001", "thread_ts": ts}
    });
    let (status, _) = post_event(bot.addr, &event, None).await;
    assert_eq!(status, 200);
    wait_state(&store, 2, "completed", 60).await;
    let follow = store.task(2).await.unwrap().unwrap();
    assert_eq!(follow.parent_id, Some(1));
    let args = std::fs::read_to_string(dir.path().join("claude-args")).unwrap();
    let second: Vec<&str> = args
        .split(&format!("{ARGS_END}\n"))
        .nth(1)
        .unwrap()
        .lines()
        .collect();
    let at = second
        .iter()
        .position(|a| *a == "--resume")
        .expect("--resume passed");
    assert_eq!(second[at + 1], "bfc86ca0-df6f-42d4-9fdc-c95b3c1da201");
    agent.start_kill().unwrap();
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_claude_is_a_misconfigured_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", "");
    let claude = fake_claude(
        dir.path(),
        &fixture("error-is-error-not-logged-in.jsonl"),
        1,
    );
    let cfg = config(
        dir.path(),
        bot.addr,
        &project,
        "executor = \"claude\"",
        &format!("claude_bin = \"{}\"", claude.display()),
    );
    let mut agent = spawn_agent(&agent_bin(), &cfg);
    wait_agents(bot.addr, 1).await;
    baton(bot.addr, "anything", "U1").await;
    wait_state(&store, 1, "failed", 30).await;
    let task = store.task(1).await.unwrap().unwrap();
    assert_eq!(task.failure_cause.as_deref(), Some("misconfigured"));
    let ts = message_ts(&store, task.id).await;
    wait_for(30, "the failure in Slack", || {
        slack
            .shown(&ts)
            .is_some_and(|t| t.contains("misconfigured") && t.contains("Retry"))
    })
    .await;
    agent.start_kill().unwrap();
    bot.stop().await;
}

/// Forks a background child, records both pids, then waits forever.
/// (Bounded to two minutes, so a failed test leaves nothing running for long.)
const FORKS: &str = "#!/bin/sh\nsleep 120 &\necho $! > ./child.pid\necho $$ > ./parent.pid\necho '::step:: forked'\ni=0; while [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", FORKS);
    let mut agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;
    baton(bot.addr, "fork and wait", "U1").await;
    wait_state(&store, 1, "running", 30).await;
    wait_for(30, "both processes", || {
        project.join("child.pid").exists() && project.join("parent.pid").exists()
    })
    .await;
    let (child, parent) = (
        read_pid(&project.join("child.pid")),
        read_pid(&project.join("parent.pid")),
    );
    assert!(alive(child) && alive(parent));

    // Someone else may not cancel it.
    let (_, body) = baton(bot.addr, "cancel #1", "U2").await;
    assert!(body.contains("ephemeral"), "{body}");
    assert_eq!(store.task(1).await.unwrap().unwrap().state, "running");

    let (_, body) = baton(bot.addr, "cancel #1", "U1").await;
    assert!(body.contains("#1"), "{body}");
    wait_state(&store, 1, "cancelled", 30).await;
    wait_for(30, "no process left", || !alive(child) && !alive(parent)).await;
    let ts = message_ts(&store, 1).await;
    wait_for(30, "the cancelled message", || {
        slack.shown(&ts).is_some_and(|t| t.contains("Cancelled"))
    })
    .await;
    // A cancel is not a failure: the circuit saw no failed call.
    let health = admin(bot.addr, "health").await;
    assert!(health.contains("(0 calls in window)"), "{health}");
    agent.start_kill().unwrap();
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_time_limit_ends_as_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", FORKS);
    let cfg = config(
        dir.path(),
        bot.addr,
        &project,
        "executor = \"command\"\ncommand = [\"/bin/sh\", \"./run.sh\"]\nmax_duration_secs = 1",
        "",
    );
    let mut agent = spawn_agent(&agent_bin(), &cfg);
    wait_agents(bot.addr, 1).await;
    baton(bot.addr, "never ends", "U1").await;
    wait_state(&store, 1, "failed", 30).await;
    let task = store.task(1).await.unwrap().unwrap();
    assert_eq!(task.failure_cause.as_deref(), Some("timeout"));
    wait_for(30, "no process left", || {
        !alive(read_pid(&project.join("child.pid")))
            && !alive(read_pid(&project.join("parent.pid")))
    })
    .await;
    let ts = message_ts(&store, task.id).await;
    wait_for(30, "timed out in Slack", || {
        slack.shown(&ts).is_some_and(|t| t.contains("timed out"))
    })
    .await;
    agent.start_kill().unwrap();
    bot.stop().await;
}

fn sigterm(child: &tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_stops_late_tasks_reports_them_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", FORKS);
    let cfg = config(
        dir.path(),
        bot.addr,
        &project,
        "executor = \"command\"\ncommand = [\"/bin/sh\", \"./run.sh\"]",
        "shutdown_grace_secs = 1",
    );
    let mut agent = spawn_agent(&agent_bin(), &cfg);
    wait_agents(bot.addr, 1).await;
    baton(bot.addr, "long one", "U1").await;
    wait_state(&store, 1, "running", 30).await;

    sigterm(&agent);
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the agent exits after its shutdown grace")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let task = store.task(1).await.unwrap().unwrap();
    assert_eq!(task.state, "failed");
    assert_eq!(task.failure_cause.as_deref(), Some("agent_shutdown"));
    assert!(
        !dir.path().join("agent-state/outbox/1.json").exists(),
        "the report was delivered and acknowledged before exit"
    );
    let health = admin(bot.addr, "health").await;
    assert!(
        health.contains("circuit *closed*") && health.contains("(0 calls in window)"),
        "a planned shutdown is not a failure: {health}"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_takes_no_new_task_and_a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", FORKS);
    let cfg = config(
        dir.path(),
        bot.addr,
        &project,
        "executor = \"command\"\ncommand = [\"/bin/sh\", \"./run.sh\"]\nmax_concurrent = 2",
        "shutdown_grace_secs = 3600",
    );
    let mut agent = spawn_agent(&agent_bin(), &cfg);
    wait_agents(bot.addr, 1).await;
    baton(bot.addr, "long one", "U1").await;
    wait_state(&store, 1, "running", 30).await;
    // Running is reported before the script has forked, and the process
    // group is recorded (what the second signal kills) just after the spawn:
    // both must have happened for the end to be checked, whatever the speed.
    let recorded = dir.path().join("agent-state/running/1");
    wait_for(30, "both processes, and their group recorded", || {
        project.join("child.pid").exists()
            && project.join("parent.pid").exists()
            && recorded.exists()
    })
    .await;

    sigterm(&agent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !admin(bot.addr, "health").await.contains("draining") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never shown as draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    baton(bot.addr, "must wait", "U1").await;
    wait_state(&store, 2, "queued", 30).await;
    assert_eq!(
        store.task(1).await.unwrap().unwrap().state,
        "running",
        "the running task may finish"
    );

    sigterm(&agent);
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("a second signal exits at once")
        .unwrap();
    assert!(!status.success());
    // Even exiting at once, it leaves no task process behind.
    let (child, parent) = (
        read_pid(&project.join("child.pid")),
        read_pid(&project.join("parent.pid")),
    );
    wait_for(30, "no process left", || !alive(child) && !alive(parent)).await;
    assert_eq!(
        store.task(2).await.unwrap().unwrap().state,
        "queued",
        "never sent to a draining agent"
    );
    bot.stop().await;
}

#[test]
fn check_validates_the_config_and_the_claude_cli_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let project = project_dir(dir.path(), "project", "");
    let claude = fake_claude(dir.path(), &fixture("success-simple-write.jsonl"), 0);
    let cfg = config(
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
        &project,
        "executor = \"claude\"",
        &format!("claude_bin = \"{}\"", claude.display()),
    );
    let out = std::process::Command::new(agent_bin())
        .args(["--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("stand-in") && stdout.contains("config OK"),
        "{stdout}"
    );

    // A project directory that does not exist, and an unknown key: clear errors naming file and key.
    for (lines, top, expect) in [
        ("executor = \"claude\"", "colour = \"blue\"", "colour"),
        (
            "executor = \"claude\"",
            "claude_bin = \"/nonexistent/claude\"",
            "/nonexistent/claude",
        ),
    ] {
        let cfg = config(
            dir.path(),
            "127.0.0.1:9".parse().unwrap(),
            &project,
            lines,
            top,
        );
        let out = std::process::Command::new(agent_bin())
            .args(["--check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expect), "{expect:?} not in {stderr}");
    }
    std::fs::remove_dir_all(&project).unwrap();
    let cfg = config(
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
        &project,
        "executor = \"claude\"",
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
        stderr.contains("agent.toml") && stderr.contains("path"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_that_could_become_a_flag_never_reaches_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBot::new().await;
    let project = project_dir(dir.path(), "project", "");
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    fake_cli(&bins, "claude", &fixture("success-simple-write.jsonl"), 0);
    let cfg = config(
        dir.path(),
        fake.addr(),
        &project,
        "executor = \"claude\"",
        "",
    );
    let mut agent = spawn_agent_with_path(&cfg, &bins);
    let (mut ws, _) = fake.accept().await;

    for (task, bad) in [(1, "--dangerously-skip-permissions"), (2, "x; rm -rf /")] {
        let mut s = submit(task, "go on");
        s["session_id"] = json!(bad);
        send(&mut ws, s).await;
        let frames = frames_until_final(&mut ws, task).await;
        let [refused] = &frames[..] else {
            panic!("{frames:?}")
        };
        assert_eq!(refused["type"], "rejected");
        assert_eq!(refused["reason"], "invalid");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("not a valid session id") && message.contains(bad),
            "{message}"
        );
    }
    assert_eq!(
        recorded_args(&bins, "claude"),
        Vec::<Vec<String>>::new(),
        "the CLI never ran"
    );

    // A valid one is passed as one argument right after --resume.
    let mut s = submit(3, "go on");
    s["session_id"] = json!("4e4fa00e-5e28-405f-a0bd-5f1f7d57511c");
    send(&mut ws, s).await;
    let frames = frames_until_final(&mut ws, 3).await;
    assert_eq!(frames.last().unwrap()["type"], "completed", "{frames:?}");
    let runs = recorded_args(&bins, "claude");
    let at = runs[0].iter().position(|a| a == "--resume").unwrap();
    assert_eq!(runs[0][at + 1], "4e4fa00e-5e28-405f-a0bd-5f1f7d57511c");
    agent.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_printing_20_mb_without_a_newline_is_cut_to_one_bounded_line() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBot::new().await;
    let project = project_dir(
        dir.path(),
        "project",
        "#!/bin/sh\nhead -c 20000000 /dev/zero | tr '\\0' x\necho\necho after\n",
    );
    let mut agent = start_agent(dir.path(), fake.addr(), &project, 1);
    let (mut ws, _) = fake.accept().await;
    send(&mut ws, submit(1, "flood")).await;
    let frames = frames_until_final(&mut ws, 1).await;
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "completed", "{done}");
    let output: String = frames
        .iter()
        .filter(|f| f["type"] == "output")
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    let marker = baton_agent::exec::LINE_CUT_MARKER;
    let max = baton_agent::exec::MAX_LINE_BYTES;
    // The long line, cut and marked, then the reading went on.
    assert_eq!(output.len(), max + marker.len() + "\nafter\n".len());
    assert!(output.ends_with(&format!("x{marker}\nafter\n")));
    let result = done["result"]["text"].as_str().unwrap();
    assert!(result.ends_with("after\n") && result.len() <= baton_shared::limits::MAX_RESULT_BYTES);
    agent.start_kill().unwrap();
}

#[test]
fn ws_to_another_host_is_refused_by_check_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let project = project_dir(dir.path(), "project", "");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server = \"ws://baton.example.com/agents\"\nkey = \"k\"\n[[project]]\nname = \"web\"\npath = \"{}\"\nexecutor = \"command\"\ncommand = [\"./run.sh\"]\n",
            project.display()
        ),
    )
    .unwrap();
    for args in [&["--check", "--config"][..], &["--config"][..]] {
        let out = std::process::Command::new(agent_bin())
            .args(args)
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {stderr}");
        assert!(
            stderr.contains("server")
                && stderr.contains("unencrypted")
                && stderr.contains("wss://"),
            "{args:?}: {stderr}"
        );
    }
    // The same through --server, and wss:// or a loopback ws:// pass.
    for (server, ok) in [
        ("ws://10.1.2.3:8080/agents", false),
        ("wss://baton.example.com/agents", true),
        ("ws://localhost:9/agents", true),
    ] {
        let out = std::process::Command::new(agent_bin())
            .args(["--check", "--server", server, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            ok,
            "{server}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
