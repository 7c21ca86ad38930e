//! End to end with the real `baton-agent` binary: files attached to a
//! mention reach the task's `.baton/files/` (fetched from the bot, which
//! fetches them from the fake Slack with its token) and are named in the
//! prompt; a file that cannot be fetched fails the task with the reason; and
//! an agent whose first server refuses connections reaches the second.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// Prints the prompt, then each attached file with its content.
const SCRIPT: &str = "#!/bin/sh\nprintf 'prompt: %s\\n' \"$BATON_PROMPT\"\nfor f in .baton/files/*; do printf '== %s: ' \"$f\"; cat \"$f\"; echo; done\n";

/// A mention of the bot in C1 by U1 with `files`, as Slack signs and sends it.
async fn mention_with_files(bot: &Bot, event_id: &str, text: &str, files: Vec<Value>) {
    let payload = json!({
        "type": "event_callback",
        "team_id": "T1",
        "event_id": event_id,
        "authorizations": [{"user_id": "UBATON"}],
        "event": {
            "type": "app_mention", "user": "U1", "text": format!("<@UBATON> {text}"),
            "channel": "C1", "ts": "1700000600.000100", "files": files,
        },
    });
    let (status, body) = post_event(bot.addr, &payload, None).await;
    assert_eq!(status, 200, "{body}");
}

/// Task `id` once it has ended.
async fn ended(bot: &Bot, id: i64) -> baton_bot::store::Task {
    let store = bot.store().await;
    eventually("the task to end", || async {
        store
            .task(id)
            .await
            .unwrap()
            .filter(|t| t.finished_at.is_some())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mentions_two_files_are_in_the_tasks_directory_and_named_in_its_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |_| {}).await;
    let project = project_dir(dir.path(), "project", SCRIPT);
    let _agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;

    let notes = slack.attach_file(&slack_url, "notes.txt", b"hello");
    let data = slack.attach_file(&slack_url, "../data.csv", b"a,b\n1,2");
    mention_with_files(&bot, "Ev1", "summarise the files", vec![notes, data]).await;

    let task = ended(&bot, 1).await;
    assert_eq!(task.state, "completed", "{:?}", task.error);
    let result = task.result.unwrap();
    assert!(
        result.contains("== .baton/files/notes.txt: hello"),
        "{result}"
    );
    assert!(
        result.contains("== .baton/files/data.csv: a,b\n1,2"),
        "the name made safe: {result}"
    );
    assert!(
        result.contains("prompt: summarise the files\n\nAttached: .baton/files/notes.txt (5 bytes)\nAttached: .baton/files/data.csv (7 bytes)"),
        "{result}"
    );
    assert_eq!(
        std::fs::read(project.join(".baton/files/notes.txt")).unwrap(),
        b"hello"
    );
    assert!(
        !dir.path().join("data.csv").exists(),
        "nothing outside the task's directory"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_fetched_fails_the_task_with_the_reason_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |_| {}).await;
    let ran = dir.path().join("ran");
    let script = format!("#!/bin/sh\ntouch '{}'\n", ran.display());
    let project = project_dir(dir.path(), "project", &script);
    let _agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;

    let mut gone = slack.attach_file(&slack_url, "gone.txt", b"x");
    let url = gone["url_private_download"]
        .as_str()
        .unwrap()
        .replace("download", "nothing");
    gone["url_private_download"] = json!(url);
    mention_with_files(&bot, "Ev1", "read it", vec![gone]).await;

    let task = ended(&bot, 1).await;
    assert_eq!(task.state, "failed");
    let error = task.error.unwrap();
    assert!(
        error.contains("cannot fetch the attached file `gone.txt`"),
        "{error}"
    );
    assert!(error.contains("HTTP 502"), "{error}");
    assert!(error.contains("Slack answered HTTP 404"), "{error}");
    assert_eq!(task.failure_cause.as_deref(), Some("task"));
    assert!(!ran.exists(), "the executor never started");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_first_server_refuses_connections_runs_tasks_through_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |_| {}).await;
    let project = project_dir(
        dir.path(),
        "project",
        "#!/bin/sh\necho \"ran: $BATON_PROMPT\"\n",
    );
    // A port nothing listens on: connections to it are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = AgentConfig::new(dir.path(), bot.addr, &project, 1);
    let one = format!("server = \"ws://{}/agents\"", bot.addr);
    let toml = config.toml();
    assert!(toml.contains(&one), "{toml}");
    let listed = toml.replacen(
        &one,
        &format!(
            "server = [\"ws://{dead}/agents\", \"ws://{}/agents\"]",
            bot.addr
        ),
        1,
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, listed).unwrap();
    let _agent = spawn_agent(&agent_bin(), &path);
    wait_agents(bot.addr, 1).await;

    let (status, _) = baton(bot.addr, "say hello", "U1").await;
    assert_eq!(status, 200);
    let task = ended(&bot, 1).await;
    assert_eq!(task.state, "completed", "{:?}", task.error);
    assert_eq!(task.agent.as_deref(), Some("e2e"));
    assert!(task.result.unwrap().contains("ran: say hello"));
    bot.stop().await;
}

/// Runs git in `dir`, failing the test if it fails.
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_tasks_files_land_in_its_worktree_not_the_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |_| {}).await;
    let repo = project_dir(
        dir.path(),
        "repo",
        "#!/bin/sh\nprintf 'in %s: ' \"$(git rev-parse --abbrev-ref HEAD)\"\ncat .baton/files/spec.md\nprintf '\\nstatus: [%s]\\n' \"$(git status --porcelain)\"\n",
    );
    git(&repo, &["init", "--quiet"]);
    git(&repo, &["add", "run.sh"]);
    git(&repo, &["commit", "--quiet", "-m", "start"]);
    let cfg = write_config(
        dir.path(),
        bot.addr,
        &repo,
        "executor = \"command\"\ncommand = [\"/bin/sh\", \"./run.sh\"]\nisolation = \"worktree\"",
        "",
    );
    let _agent = spawn_agent(&agent_bin(), &cfg);
    wait_agents(bot.addr, 1).await;

    let spec = slack.attach_file(&slack_url, "spec.md", b"the spec");
    mention_with_files(&bot, "Ev1", "build it", vec![spec]).await;
    let task = ended(&bot, 1).await;
    assert_eq!(task.state, "completed", "{:?}", task.error);
    let result = task.result.unwrap();
    assert!(result.contains("in baton/task-1: the spec"), "{result}");
    assert!(
        result.contains("status: []"),
        "git leaves the attached files out of the task's changes: {result}"
    );
    assert!(
        !repo.join(".baton").exists(),
        "the checkout itself is untouched"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_its_event_claimed_is_not_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |_| {}).await;
    let ran = dir.path().join("ran");
    let script = format!("#!/bin/sh\ntouch '{}'\n", ran.display());
    let project = project_dir(dir.path(), "project", &script);
    let _agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;

    let limit = usize::try_from(baton_shared::limits::MAX_FILE_BYTES).unwrap();
    let mut big = slack.attach_file(&slack_url, "big.bin", &vec![b'x'; limit + 1]);
    // A size in an event is only a claim.
    big["size"] = json!(10);
    mention_with_files(&bot, "Ev1", "read it", vec![big]).await;

    let task = ended(&bot, 1).await;
    assert_eq!(task.state, "failed");
    let error = task.error.unwrap();
    assert!(
        error.contains("cannot fetch the attached file `big.bin`"),
        "{error}"
    );
    assert!(error.contains("larger than 20971520 bytes"), "{error}");
    assert!(!ran.exists(), "the executor never started");
    assert!(!project.join(".baton/files/big.bin").exists());
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_goes_past_the_limit_unannounced_is_cut_off_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |_| {}).await;
    let ran = dir.path().join("ran");
    let script = format!("#!/bin/sh\ntouch '{}'\n", ran.display());
    let project = project_dir(dir.path(), "project", &script);
    let _agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;

    let limit = usize::try_from(baton_shared::limits::MAX_FILE_BYTES).unwrap();
    let mut big = slack.attach_file(&slack_url, "big.bin", &vec![b'x'; limit + 1]);
    big["size"] = json!(10);
    // No length up front: the bot learns the size only as the bytes arrive.
    slack.serve_without_length(big["id"].as_str().unwrap());
    mention_with_files(&bot, "Ev1", "read it", vec![big]).await;

    let task = ended(&bot, 1).await;
    assert_eq!(task.state, "failed");
    let error = task.error.unwrap();
    assert!(
        error.contains("cannot fetch the attached file `big.bin`"),
        "{error}"
    );
    assert!(!ran.exists(), "the executor never started");
    assert!(
        error.contains("the download broke off"),
        "the bot cut it: {error}"
    );
    assert!(
        !project.join(".baton/files/big.bin").exists(),
        "no partial file is left"
    );
    bot.stop().await;
}
