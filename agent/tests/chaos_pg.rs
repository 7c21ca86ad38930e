//! Chaos on PostgreSQL with two real `baton-bot` processes and two real
//! `baton-agent`s whose `server` lists both processes: 50 tasks through
//! signed slash commands spread over both processes, random `kill -9` of
//! bots and agents (seeded: the seed is printed, `CHAOS_SEED` replays it),
//! each restarted at once. Every task ends exactly once, with one Slack
//! message whose edits never leave its final state; no command runs twice.
//! And a rolling restart (each process stopped and started again in turn)
//! while tasks run: each ends once, completed, no agent lost.
//! Skipped without PostgreSQL
//! (`scripts/test-postgres run cargo nextest run -p baton-agent --test chaos_pg`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use baton_testkit::db::postgres_or_skip;
use baton_testkit::processes::Processes;
use baton_testkit::scene::SECOND_KEY;
use common::*;
use rand::{Rng, SeedableRng};

/// Records each run in `runs.log`, then takes 0 to 0.3 s.
const CHAOS: &str = r#"#!/bin/sh
echo "$BATON_TASK_ID" >> ./runs.log
sleep "0.$(( BATON_TASK_ID % 4 ))"
echo "done $BATON_TASK_ID"
"#;

/// The tasks the test creates.
const TASKS: usize = 50;

/// How long every task gets to end and show its end in Slack, once all are created.
const SETTLE: Duration = Duration::from_secs(75);

/// The task states that are final.
const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "expired"];

/// The settings of both processes: a dispatch unanswered for 2 s is redone,
/// an agent gone for 2 s is lost, no rate limit, agents `e2e` and `e2e-b`,
/// and a `chat.update` budget that 50 tasks ending within seconds do not
/// wait for (the shared budget is `bot/tests/slack_budget.rs`'s subject; with
/// the default 50 a minute, split between two processes, the last final
/// edits would come a minute or two later, past this test's deadlines).
fn env() -> Vec<(&'static str, String)> {
    vec![
        ("BATON_SLACK_UPDATES_PER_MINUTE", "3000".to_owned()),
        ("BATON_DISPATCH_TIMEOUT_SECS", "2".to_owned()),
        ("BATON_AGENT_GRACE_SECS", "2".to_owned()),
        ("BATON_RATE_LIMIT_TASKS", "1000".to_owned()),
        (
            "BATON_AGENT_KEYS",
            format!("e2e:{AGENT_KEY},e2e-b:{SECOND_KEY}"),
        ),
    ]
}

/// The real agent with key `key`, serving `web` from `project` with
/// capacity 2, its `server` the list `servers` (tried in turn).
fn start_listed_agent(
    dir: &Path,
    key: &str,
    servers: &[String],
    project: &Path,
) -> tokio::process::Child {
    let mut config = AgentConfig::new(dir, "127.0.0.1:9".parse().unwrap(), project, 2);
    config.key = key.to_owned();
    config.state_dir = dir.join(format!("agent-state-{key}"));
    let toml = config.toml();
    let (first, rest) = toml.split_once('\n').unwrap();
    assert!(first.starts_with("server = "), "{first}");
    let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    let path = dir.join(format!("agent-{key}.toml"));
    std::fs::write(&path, format!("server = [{}]\n{rest}", list.join(", "))).unwrap();
    spawn_agent(&agent_bin(), &path)
}

/// The label a message's text shows for a final state, if it shows one.
fn final_label(text: &str) -> Option<&'static str> {
    ["Completed", "Failed", "Cancelled", "Expired"]
        .into_iter()
        .find(|l| text.contains(l))
}

/// The label of task state `state`.
fn label_of(state: &str) -> &'static str {
    match state {
        "completed" => "Completed",
        "failed" => "Failed",
        "cancelled" => "Cancelled",
        _ => "Expired",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_postgres_with_two_processes_loses_nothing_and_runs_nothing_twice() {
    let Some(_) = postgres_or_skip(
        "chaos_on_postgres_with_two_processes_loses_nothing_and_runs_nothing_twice",
    ) else {
        return;
    };
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (set CHAOS_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut bots = Processes::start(2, &env()).await;
    let dir = bots.dir.path().to_owned();
    let project = project_dir(&dir, "project", CHAOS);
    let urls = bots.agent_urls();
    let reversed: Vec<String> = urls.iter().rev().cloned().collect();
    let agent_servers = [(AGENT_KEY, urls), (SECOND_KEY, reversed)];
    let mut agents: Vec<tokio::process::Child> = agent_servers
        .iter()
        .map(|(key, servers)| start_listed_agent(&dir, key, servers, &project))
        .collect();

    let mut sent = 0;
    let (mut bot_kills, mut agent_kills) = (0, 0);
    // What the test did when, to explain a failure.
    let began = tokio::time::Instant::now();
    let mut history: Vec<String> = Vec::new();
    while sent < TASKS {
        for _ in 0..rng.random_range(1..=4).min(TASKS - sent) {
            let on = rng.random_range(0..bots.len());
            let (status, body) = baton(bots.addr(on), &format!("chaos {sent}"), "U1").await;
            assert_eq!(status, 200, "{body}");
            assert!(body.is_empty(), "{body}");
            history.push(format!("{:?} task {sent} on {on}", began.elapsed()));
            sent += 1;
        }
        match rng.random_range(0..10) {
            0..=1 => {
                let i = rng.random_range(0..bots.len());
                history.push(format!("{:?} kill bot {i}", began.elapsed()));
                bots.kill(i).await;
                bot_kills += 1;
                bots.restart(i).await;
                history.push(format!("{:?} bot {i} back", began.elapsed()));
            }
            2..=3 => {
                let i = rng.random_range(0..agents.len());
                history.push(format!("{:?} kill agent {i}", began.elapsed()));
                kill9(&mut agents[i]).await;
                agent_kills += 1;
                let (key, servers) = &agent_servers[i];
                agents[i] = start_listed_agent(&dir, key, servers, &project);
            }
            _ => {}
        }
        // Pacing: the kills land at random points of the tasks' lives.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
    }
    eprintln!("{bot_kills} bot kills, {agent_kills} agent kills");

    let store = &bots.store;
    let deadline = tokio::time::Instant::now() + SETTLE;
    let tasks = loop {
        let tasks = store.recent_tasks(1_000).await.unwrap();
        let open: Vec<String> = tasks
            .iter()
            .filter(|t| !TERMINAL.contains(&t.state.as_str()) || !t.slack_synced)
            .map(|t| format!("#{} {} (synced {})", t.id, t.state, t.slack_synced))
            .collect();
        if tasks.len() >= TASKS && open.is_empty() {
            break tasks;
        }
        if tokio::time::Instant::now() >= deadline {
            let rows = baton_testkit::processes::rows(
                    store,
                    "SELECT 'task ' || id || ' editor ' || COALESCE(editor, '-') || ' ts ' || \
                     COALESCE(message_ts, '-') || ' agent ' || COALESCE(agent, '-') AS row \
                     FROM tasks WHERE NOT slack_synced \
                     UNION ALL SELECT 'instance ' || id || ' lease in ' || \
                     (lease_until - (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint) || ' ms' \
                     FROM instances \
                     UNION ALL SELECT 'agent ' || name || ' held by ' || COALESCE(instance, '-') FROM agents",
            )
            .await;
            panic!(
                "seed {seed}: {} of {TASKS} tasks recorded; not ended: {open:?}; database: {rows:#?}; history: {history:#?}",
                tasks.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut prompts: HashMap<&str, Vec<String>> = HashMap::new();
    for t in &tasks {
        prompts.entry(t.prompt.as_str()).or_default().push(format!(
            "#{} {} created {} (parent {:?})",
            t.id, t.state, t.created_at, t.parent_id
        ));
    }
    let repeated: Vec<_> = prompts.iter().filter(|(_, ts)| ts.len() > 1).collect();
    assert!(
        repeated.is_empty() && tasks.len() == TASKS,
        "seed {seed}: one task per command; {} tasks, repeated: {repeated:?}",
        tasks.len()
    );

    let ran = std::fs::read_to_string(project.join("runs.log")).unwrap_or_default();
    let mut runs: HashMap<i64, usize> = HashMap::new();
    for line in ran.lines() {
        *runs.entry(line.trim().parse().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: ran more than once: {twice:?}"
    );

    let slack = &bots.slack;
    let posts = slack.calls("chat.postMessage");
    let edits = slack.attempts("chat.update");
    for task in &tasks {
        let id = task.id;
        let ts = task.message_ts.clone().expect("every task has its message");
        let block = format!("baton-task-{id}");
        let posted: Vec<String> = posts
            .iter()
            .filter(|c| c.body["blocks"][0]["block_id"] == block.as_str())
            .map(|c| {
                format!(
                    "{:?} {}",
                    c.at - began,
                    final_label(&message_text(&c.body)).unwrap_or("live")
                )
            })
            .collect();
        assert_eq!(
            posted.len(),
            1,
            "seed {seed}: #{id} has exactly one message; posts at {posted:?}; history: {history:#?}"
        );
        let label = label_of(&task.state);
        let shown = slack.shown(&ts).unwrap_or_default();
        let over_time: Vec<String> = edits
            .iter()
            .filter(|c| c.ts.as_deref() == Some(ts.as_str()))
            .map(|c| {
                let text = message_text(&c.body);
                let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                format!("{:?} {:?} {line}", c.at - began, c.error)
            })
            .collect();
        assert!(
            shown.contains(label),
            "seed {seed}: #{id} is {} but Slack shows {shown}; its edits: {over_time:#?}; history: {history:#?}",
            task.state
        );
        // Ended once: from its first final edit on, the message shows that
        // same end (never another end, never a live state again).
        let shown_over_time: Vec<Option<&str>> = edits
            .iter()
            .filter(|c| c.error.is_none() && c.ts.as_deref() == Some(ts.as_str()))
            .map(|c| final_label(&message_text(&c.body)))
            .skip_while(Option::is_none)
            .collect();
        assert!(
            shown_over_time.iter().all(|l| *l == Some(label)),
            "seed {seed}: #{id} ({}) showed, from its first end on: {shown_over_time:?}",
            task.state
        );
        if task.state == "completed" {
            assert_eq!(
                runs.get(&id),
                Some(&1),
                "seed {seed}: #{id} completed without running"
            );
            assert_eq!(
                task.result.as_deref().map(str::trim),
                Some(format!("done {id}").as_str()),
                "seed {seed}"
            );
        }
    }
    let ended: HashMap<&str, usize> = tasks.iter().fold(HashMap::new(), |mut m, t| {
        *m.entry(t.state.as_str()).or_default() += 1;
        m
    });
    eprintln!("ended: {ended:?}");
    for agent in &mut agents {
        kill9(agent).await;
    }
    bots.stop().await;
}

// ---- a rolling restart while tasks run ----

/// Records each run in `runs.log`, reports a step, then waits until the test
/// drops `release-all` in the project directory (two minutes at most).
const HOLD: &str = r#"#!/bin/sh
echo "$BATON_TASK_ID" >> ./runs.log
echo '::step:: started'
i=0
while [ ! -e ./release-all ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done
echo "done $BATON_TASK_ID"
"#;

/// How many agents the processes that are up hold, together.
async fn agents_connected(bots: &Processes) -> usize {
    let mut n = 0;
    for i in (0..bots.len()).filter(|i| bots.is_up(*i)) {
        let (_, metrics) = http(bots.addr(i), "GET", "/metrics", &[], "").await;
        n += metrics
            .lines()
            .find_map(|l| l.strip_prefix("baton_agents_connected "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
    }
    n
}

/// Waits until the processes that are up hold `n` agents together.
async fn wait_connected(bots: &Processes, n: usize) {
    eventually(&format!("{n} agents connected"), || async {
        (agents_connected(bots).await == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_ends_every_task_once_and_loses_no_agent() {
    let Some(_) = postgres_or_skip("a_rolling_restart_ends_every_task_once_and_loses_no_agent")
    else {
        return;
    };
    // Nothing is killed here: the default dispatch timeout and a long grace,
    // so that a loaded machine's slow accept or reconnect is not mistaken for
    // a lost dispatch or a lost agent.
    let mut env = env();
    env.retain(|(k, _)| *k != "BATON_DISPATCH_TIMEOUT_SECS" && *k != "BATON_AGENT_GRACE_SECS");
    env.push(("BATON_AGENT_GRACE_SECS", "120".to_owned()));
    let mut bots = Processes::start(2, &env).await;
    let dir = bots.dir.path().to_owned();
    let project = project_dir(&dir, "project", HOLD);
    let mut agent = start_listed_agent(&dir, AGENT_KEY, &bots.agent_urls(), &project);
    wait_connected(&bots, 1).await;

    // Two tasks through each process: the agent (capacity 2) runs two, the
    // others wait in the queue.
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(bots.start_task(i % 2, &format!("job {i}")).await);
    }
    for id in &ids[..2] {
        wait_state(&bots.store, *id, "running", 30).await;
    }

    // Each process in turn: stopped (SIGTERM), a task sent to the other one
    // meanwhile, started again; the agent is back before the next.
    for i in 0..bots.len() {
        bots.stop_one(i).await;
        wait_connected(&bots, 1).await;
        let other = (i + 1) % bots.len();
        ids.push(
            bots.start_task(other, &format!("job during restart {i}"))
                .await,
        );
        bots.restart(i).await;
        wait_connected(&bots, 1).await;
        for id in &ids {
            let task = bots.store.task(*id).await.unwrap().unwrap();
            assert!(
                !TERMINAL.contains(&task.state.as_str()),
                "#{id} ended during the restart: {} {:?}",
                task.state,
                task.error
            );
        }
    }

    std::fs::write(project.join("release-all"), "").unwrap();
    let store = &bots.store;
    for id in &ids {
        eventually(&format!("#{id} to complete and show it"), || async {
            let task = store.task(*id).await.unwrap().unwrap();
            assert!(
                task.state != "failed" && task.state != "cancelled",
                "#{id} ended as {}: {:?}",
                task.state,
                task.error
            );
            (task.state == "completed" && task.slack_synced).then_some(())
        })
        .await;
    }
    let ran = std::fs::read_to_string(project.join("runs.log")).unwrap();
    let mut runs: Vec<i64> = ran.lines().map(|l| l.trim().parse().unwrap()).collect();
    runs.sort_unstable();
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(runs, expected, "each task ran once");
    let posts = bots.slack.calls("chat.postMessage");
    for id in &ids {
        let block = format!("baton-task-{id}");
        let posted = posts
            .iter()
            .filter(|c| c.body["blocks"][0]["block_id"] == block.as_str())
            .count();
        assert_eq!(posted, 1, "#{id} has exactly one message");
        let task = store.task(*id).await.unwrap().unwrap();
        let shown = bots.slack.shown(&task.message_ts.unwrap()).unwrap();
        assert!(shown.contains("Completed"), "#{id} shows {shown}");
    }
    kill9(&mut agent).await;
    bots.stop().await;
}
