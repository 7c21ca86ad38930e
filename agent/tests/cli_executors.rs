//! The `codex`, `gemini` and `opencode` executors end to end, and `baton-agent
//! detect`: a stand-in CLI on the PATH replays each CLI's real captured stream
//! (steps, the result, tokens and cost, the session id), a follow-up in the
//! task's thread resumes the CLI's session, and a captured failure ends the
//! task with the CLI's own message. Real bot, real `baton-agent`, fake Slack.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

/// What one CLI's scenario expects.
struct Scenario {
    /// The executor and the stand-in's name.
    cli: &'static str,
    /// The fixture folder.
    folder: &'static str,
    /// A successful run.
    success: &'static str,
    /// Its result's beginning.
    result: &'static str,
    /// Its session id.
    session: &'static str,
    /// Its number of steps.
    steps: i64,
    /// Strings the result's cost and token line holds.
    meta: &'static [&'static str],
    /// The arguments before the session id on a follow-up (a flag, or `resume`).
    resume_flag: &'static str,
    /// A failed run, its exit code, the cause and a piece of its message.
    failure: (&'static str, i32, &'static str, &'static str),
}

/// Runs a scenario: a task, a follow-up in its thread, a failing task.
/// Returns each run's arguments.
async fn scenario(s: Scenario) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", "");
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    fake_cli(&bins, s.cli, &fixture_path(s.folder, s.success), 0);
    let cfg = write_config(
        dir.path(),
        bot.addr,
        &project,
        &format!("executor = \"{}\"", s.cli),
        "",
    );
    let mut agent = spawn_agent_with_path(&cfg, &bins);
    wait_agents(bot.addr, 1).await;

    let (_, body) = baton(bot.addr, "implement it", "U1").await;
    assert!(body.is_empty(), "{body}");
    wait_state(&store, 1, "completed", 60).await;
    let task = store.task(1).await.unwrap().unwrap();
    let result = task.result.clone().unwrap();
    assert!(result.starts_with(s.result), "{}: {result}", s.cli);
    assert_eq!(task.session_id.as_deref(), Some(s.session), "{}", s.cli);
    assert_eq!(task.step_count, s.steps, "{}: {}", s.cli, task.steps);
    let meta = task.result_meta.clone().unwrap_or_default();
    for m in s.meta {
        assert!(meta.contains(m), "{}: {m} not in {meta}", s.cli);
    }
    let ts = message_ts(&store, 1).await;
    let start: String = s.result.chars().take(3).collect();
    wait_for(30, "the final edit with the result", || {
        slack
            .shown(&ts)
            .is_some_and(|t| t.contains("Completed") && t.contains(&start))
    })
    .await;

    // A reply in the task's thread resumes the CLI's session.
    let event = json!({
        "type": "event_callback", "team_id": "T1", "event_id": "EvFollowUp1",
        "authorizations": [{"user_id": "UBATON", "team_id": "T1"}],
        "event": {"type": "message", "channel": "C1", "user": "U1", "text": "now add tests",
                  "ts": "1700000999.000001", "thread_ts": ts}
    });
    let (status, _) = post_event(bot.addr, &event, None).await;
    assert_eq!(status, 200);
    wait_state(&store, 2, "completed", 60).await;
    assert_eq!(store.task(2).await.unwrap().unwrap().parent_id, Some(1));

    // A captured failure: the CLI's own message, and the right cause.
    let (failure, code, cause, message) = s.failure;
    fake_cli(&bins, s.cli, &fixture_path(s.folder, failure), code);
    baton(bot.addr, "again", "U1").await;
    wait_state(&store, 3, "failed", 60).await;
    let failed = store.task(3).await.unwrap().unwrap();
    assert_eq!(failed.failure_cause.as_deref(), Some(cause), "{}", s.cli);
    let error = failed.error.unwrap_or_default();
    assert!(error.contains(message), "{}: {error}", s.cli);

    let runs = recorded_args(&bins, s.cli);
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(
        !runs[0].iter().any(|a| a == s.session),
        "a new task starts a new session"
    );
    let at = runs[1]
        .iter()
        .position(|a| a == s.resume_flag)
        .unwrap_or_else(|| panic!("{}: no {} in {:?}", s.cli, s.resume_flag, runs[1]));
    if s.resume_flag.starts_with("--") {
        assert_eq!(runs[1][at + 1], s.session, "{}: {:?}", s.cli, runs[1]);
    } else {
        // `codex exec resume [flags] THREAD_ID -`
        assert_eq!(runs[1][runs[1].len() - 2], s.session, "{:?}", runs[1]);
    }
    agent.start_kill().unwrap();
    bot.stop().await;
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_shows_commands_and_file_changes_and_resumes_its_thread() {
    let runs = scenario(Scenario {
        cli: "codex",
        folder: "codex",
        success: "success-command-and-file-change.jsonl",
        result: "已完成，产出文件：",
        session: "019e7ca6-71ac-7d63-9b17-5fdb750d36ff",
        steps: 11,
        meta: &["106286", "2089"],
        resume_flag: "resume",
        failure: (
            "error-401-unauthorized-retries.jsonl",
            1,
            "misconfigured",
            "401 Unauthorized: Missing bearer",
        ),
    })
    .await;
    assert_eq!(&runs[0][..3], ["exec", "--json", "--skip-git-repo-check"]);
    assert_eq!(
        runs[0].last().map(String::as_str),
        Some("-"),
        "the prompt on stdin"
    );
    assert_eq!(&runs[1][..2], ["exec", "resume"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_shows_tool_calls_and_resumes_its_session() {
    let runs = scenario(Scenario {
        cli: "gemini",
        folder: "gemini-cli",
        success: "stream-json-tool-use.jsonl",
        result: "SWITCHBOARD_GEMINI_PROBE_TOOL_5F8A21",
        session: "00000000-0000-4000-8000-000000000002",
        steps: 2,
        meta: &["20525", "100"],
        resume_flag: "--resume",
        failure: (
            "stream-json-error-invalid-model.jsonl",
            1,
            "task",
            "[API Error: Requested entity was not found.]",
        ),
    })
    .await;
    assert!(runs[0].contains(&"stream-json".to_owned()));
    assert!(
        runs[0].iter().any(|a| a.starts_with("--prompt=")),
        "{:?}",
        runs[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_shows_tools_reports_cost_and_continues_its_session() {
    let runs = scenario(Scenario {
        cli: "opencode",
        folder: "opencode",
        success: "success-bash-tool-real-model.jsonl",
        result: "DONE",
        session: "ses_0053dc0a6ffeLfOVWup0QCNjl2",
        steps: 1,
        meta: &["26663", "46", "0.0000552244"],
        resume_flag: "--session",
        failure: (
            "error-http-401.jsonl",
            1,
            "misconfigured",
            "stub injected HTTP 401",
        ),
    })
    .await;
    assert_eq!(&runs[0][..3], ["run", "--format", "json"]);
    assert!(
        runs[0].contains(&"--".to_owned()),
        "the prompt after --: {:?}",
        runs[0]
    );
}

/// Runs `baton-agent detect` in `cwd` with only `path` on the PATH and `home` as HOME.
fn detect(cwd: &Path, path: &Path, home: &Path) -> (bool, String) {
    let out = std::process::Command::new(agent_bin())
        .arg("detect")
        .current_dir(cwd)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

#[test]
fn detect_lists_the_clis_on_the_path_and_prints_a_project_block() {
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("bin");
    let home = dir.path().join("home");
    let cwd = dir.path().join("my-repo");
    for d in [&bins, &home.join(".codex"), &cwd] {
        std::fs::create_dir_all(d).unwrap();
    }
    let fixture = fixture_path("codex", "docs-sample-exec-json.jsonl");
    fake_cli(&bins, "gemini", &fixture, 0);
    fake_cli(&bins, "codex", &fixture, 0);
    std::fs::write(home.join(".codex/auth.json"), "{}").unwrap();

    let (ok, out) = detect(&cwd, &bins, &home);
    assert!(ok, "{out}");
    let line = |cli: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(cli))
            .unwrap_or_default()
            .to_owned()
    };
    let codex = line("codex");
    assert!(
        codex.contains("1.2.3 (codex stand-in)") && codex.contains("looks logged in"),
        "{out}"
    );
    assert!(
        codex.contains(&bins.join("codex").display().to_string()),
        "{out}"
    );
    let gemini = line("gemini");
    assert!(
        gemini.contains("1.2.3 (gemini stand-in)") && gemini.contains("not logged in"),
        "{out}"
    );
    assert!(
        gemini.contains("GEMINI_API_KEY"),
        "says how to log in: {out}"
    );
    assert!(line("claude").contains("not found"), "{out}");
    assert!(line("opencode").contains("not found"), "{out}");
    // The logged-in CLI is chosen, for this directory.
    let block = out.split("[[project]]").nth(1).unwrap();
    assert!(block.contains("name = \"my-repo\""), "{out}");
    assert!(
        block.contains(&format!("path = \"{}\"", cwd.display())),
        "{out}"
    );
    assert!(block.contains("executor = \"codex\""), "{out}");

    // Nothing on the PATH: still exit 0, saying so, with a command block.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, out) = detect(&cwd, &empty, &home);
    assert!(ok, "{out}");
    assert!(out.contains("No supported coding agent CLI"), "{out}");
    assert!(out.contains("executor = \"command\""), "{out}");
    assert_eq!(out.matches("not found").count(), 4, "{out}");
}

#[test]
fn check_runs_each_clis_version() {
    let dir = tempfile::tempdir().unwrap();
    let project = project_dir(dir.path(), "project", "");
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    let fixture = fixture_path("codex", "docs-sample-exec-json.jsonl");
    for cli in ["codex", "gemini", "opencode"] {
        fake_cli(&bins, cli, &fixture, 0);
        let cfg = write_config(
            dir.path(),
            "127.0.0.1:9".parse().unwrap(),
            &project,
            &format!("executor = \"{cli}\""),
            "",
        );
        let run = |path: &str| {
            std::process::Command::new(agent_bin())
                .args(["--check", "--config"])
                .arg(&cfg)
                .env("PATH", path)
                .output()
                .unwrap()
        };
        let out = run(&path_with(&bins));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cli}: {stdout}");
        assert!(
            stdout.contains(&format!("project web: {cli} 1.2.3 ({cli} stand-in)")),
            "{stdout}"
        );
        // Not installed: refused, naming the CLI.
        let out = run("/nonexistent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(&format!("`{cli}`")), "{stderr}");
    }
}
