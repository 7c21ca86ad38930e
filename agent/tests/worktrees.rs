//! Worktree isolation end to end on a real temporary git repository: two
//! tasks of one `isolation = "worktree"`, `parallel = 2` project run at once,
//! each in its own worktree on `baton/task-ID` (neither sees the other's
//! files, both branches exist, the results name the branch and diff stat),
//! finished worktrees are removed after the keep period (an injected "now")
//! with their branches kept, and `--check` refuses a project that is not a
//! git repository. Real `baton-agent` binary, a fake bot.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use baton_agent::config::{Cli, Config};
use common::*;

/// Runs git in `dir`, failing the test if it fails; its stdout.
fn git(dir: &Path, args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `mine-ID.txt`, then waits (two minutes at most) until both tasks
/// have started, then lists its directory.
fn script(meeting: &Path) -> String {
    format!(
        "#!/bin/sh\necho \"mine $BATON_TASK_ID\" > \"mine-$BATON_TASK_ID.txt\"\ntouch '{m}'/started-$BATON_TASK_ID\n\
         i=0; while [ $(ls '{m}' | grep -c started) -lt 2 ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done\nls\n",
        m = meeting.display()
    )
}

const PROJECT_LINES: &str = "executor = \"command\"\ncommand = [\"/bin/sh\", \"./run.sh\"]\nisolation = \"worktree\"\nparallel = 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_of_a_worktree_project_run_at_once_each_on_its_own_branch() {
    let dir = tempfile::tempdir().unwrap();
    let meeting = dir.path().join("meeting");
    std::fs::create_dir(&meeting).unwrap();
    let repo = project_dir(dir.path(), "repo", &script(&meeting));
    git(&repo, &["init", "--quiet"]);
    git(&repo, &["add", "run.sh"]);
    git(&repo, &["commit", "--quiet", "-m", "start"]);
    let fake = FakeBot::new().await;
    let cfg = write_config(dir.path(), fake.addr(), &repo, PROJECT_LINES, "");
    let mut agent = spawn_agent(&agent_bin(), &cfg);
    let (mut ws, hello) = fake.accept().await;
    assert_eq!(
        hello["projects"][0]["max_concurrent"], 2,
        "the slots are announced"
    );

    send(&mut ws, submit(1, "one")).await;
    send(&mut ws, submit(2, "two")).await;
    let mut results = std::collections::HashMap::new();
    while results.len() < 2 {
        let m = next_json(&mut ws).await;
        if matches!(m["type"].as_str(), Some("completed" | "failed")) {
            results.insert(m["task"].as_i64().unwrap(), m);
        }
    }
    for (me, other) in [(1, 2), (2, 1)] {
        let m = &results[&me];
        assert_eq!(m["type"], "completed", "{m}");
        let text = m["result"]["text"].as_str().unwrap();
        assert!(text.contains(&format!("mine-{me}.txt")), "{text}");
        assert!(
            !text.contains(&format!("mine-{other}.txt")),
            "task {me} saw the other's file: {text}"
        );
        assert!(
            text.contains(&format!("Branch `baton/task-{me}`")),
            "{text}"
        );
        assert!(text.contains("1 file changed"), "the diff stat: {text}");
    }
    let branches = git(&repo, &["branch", "--list", "baton/*"]);
    assert!(
        branches.contains("baton/task-1") && branches.contains("baton/task-2"),
        "{branches}"
    );
    assert!(!repo.join("mine-1.txt").exists() && !repo.join("mine-2.txt").exists());
    agent.start_kill().unwrap();
    agent.wait().await.unwrap();

    // After the keep period (7 days by default), the worktrees go and the branches stay.
    let config = Config::load(&Cli {
        config: cfg.clone(),
        ..Default::default()
    })
    .unwrap();
    let project = &config.projects[0];
    let keep = Duration::from_secs(7 * 24 * 3600);
    let state = &config.state_dir;
    let wt = baton_agent::worktree::project_root(state, "web").join("task-1");
    assert!(wt.join("mine-1.txt").exists());
    let soon = SystemTime::now() + Duration::from_secs(24 * 3600);
    assert_eq!(baton_agent::worktree::prune(state, project, keep, soon), 0);
    assert!(wt.exists());
    let later = SystemTime::now() + keep + Duration::from_secs(3600);
    assert_eq!(baton_agent::worktree::prune(state, project, keep, later), 2);
    assert!(!wt.exists());
    let listed = git(&repo, &["worktree", "list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let branches = git(&repo, &["branch", "--list", "baton/*"]);
    assert!(branches.contains("baton/task-1") && branches.contains("baton/task-2"));
}

#[test]
fn check_refuses_worktree_isolation_outside_a_git_repository() {
    let dir = tempfile::tempdir().unwrap();
    let plain = project_dir(dir.path(), "plain", "");
    let addr = "127.0.0.1:9".parse().unwrap();
    for (lines, says) in [
        (PROJECT_LINES, "not a git repository"),
        (
            "executor = \"command\"\ncommand = [\"./run.sh\"]\nparallel = 2",
            "needs isolation = \"worktree\"",
        ),
    ] {
        let cfg = write_config(dir.path(), addr, &plain, lines, "");
        let out = std::process::Command::new(agent_bin())
            .args(["--check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(says), "{says:?} not in {stderr}");
    }
    git(&plain, &["init", "--quiet"]);
    git(&plain, &["add", "run.sh"]);
    git(&plain, &["commit", "--quiet", "-m", "x"]);
    let cfg = write_config(dir.path(), addr, &plain, PROJECT_LINES, "");
    let out = std::process::Command::new(agent_bin())
        .args(["--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
