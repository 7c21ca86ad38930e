//! Agent health end to end: a broken agent's circuit opens, work moves to a
//! healthy agent (or waits, saying why), `health reset` and a half-open probe
//! close it; a revoked key is disconnected and stays out; the per-user rate
//! limit. Real bot, real `baton-agent` binaries, fake Slack.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const OK: &str = "#!/bin/sh\necho \"ok $BATON_TASK_ID\"\n";
const SECOND_KEY: &str = "second-agent-key-0123456789";

/// Agent `e2e` serving `web` with an executor that cannot start.
fn broken_agent(dir: &Path, bot: std::net::SocketAddr, project: &Path) -> tokio::process::Child {
    let mut cfg = AgentConfig::new(dir, bot, project, 1);
    cfg.projects[0].2 = vec!["/nonexistent/baton-executor".to_owned()];
    start_agent_with(dir, &cfg)
}

fn second_agent(dir: &Path, bot: std::net::SocketAddr, project: &Path) -> tokio::process::Child {
    let mut cfg = AgentConfig::new(dir, bot, project, 1);
    cfg.key = SECOND_KEY.to_owned();
    cfg.state_dir = dir.join("second-state");
    start_agent_with(dir, &cfg)
}

fn with_second(s: &mut baton_bot::settings::Settings) {
    s.agent_keys = format!("e2e:{AGENT_KEY},second:{SECOND_KEY}").into();
}

/// Sends `n` tasks and waits for each to fail.
async fn fail_tasks(bot: &Bot, store: &baton_bot::store::Store, from: i64, n: i64) {
    for id in from..from + n {
        let (status, body) = baton(bot.addr, "--project web break", "U1").await;
        assert_eq!((status, body.as_str()), (200, ""));
        wait_state(store, id, "failed", 30).await;
        let task = store.task(id).await.unwrap().unwrap();
        assert_eq!(task.failure_cause.as_deref(), Some("spawn"), "#{id}");
    }
}

fn line_of<'a>(health: &'a str, agent: &str) -> &'a str {
    health
        .lines()
        .find(|l| l.contains(&format!("*{agent}*")))
        .unwrap_or_else(|| panic!("{agent} not in {health}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_opens_its_circuit_and_work_moves_to_a_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |s| {
        with_second(s);
        s.breaker_open_secs = 3600;
    })
    .await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", OK);
    let mut broken = broken_agent(dir.path(), bot.addr, &project);
    wait_agents(bot.addr, 1).await;

    fail_tasks(&bot, &store, 1, 9).await;
    let line = admin(bot.addr, "health").await;
    assert!(
        line_of(&line, "e2e").contains("circuit *closed* · too few calls to judge (9 calls"),
        "{line}"
    );
    fail_tasks(&bot, &store, 10, 1).await;
    let health = admin(bot.addr, "health").await;
    let line = line_of(&health, "e2e");
    assert!(line.contains("circuit *open*"), "{line}");

    // With no healthy agent the next task waits, and its message says why.
    baton(bot.addr, "--project web wait for a healthy agent", "U1").await;
    wait_state(&store, 11, "queued", 30).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ts = store.task(11).await.unwrap().unwrap().message_ts;
        if ts
            .and_then(|ts| slack.shown(&ts))
            .is_some_and(|t| t.contains("circuit open"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued message never said the circuit is open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A healthy agent for the same project takes it.
    let mut second = second_agent(dir.path(), bot.addr, &project);
    wait_state(&store, 11, "completed", 30).await;
    assert_eq!(
        store.task(11).await.unwrap().unwrap().agent.as_deref(),
        Some("second")
    );

    // Reset closes the circuit and is audited.
    let reply = admin(bot.addr, "health reset e2e").await;
    assert!(reply.contains("closed"), "{reply}");
    let line = admin(bot.addr, "health").await;
    assert!(line_of(&line, "e2e").contains("circuit *closed*"), "{line}");
    assert!(
        store
            .audit_log(10)
            .await
            .unwrap()
            .iter()
            .any(|a| a.action == "health.reset" && a.target == "e2e" && a.actor == "UADMIN")
    );
    broken.start_kill().unwrap();
    second.start_kill().unwrap();
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_probe_that_succeeds_closes_the_circuit() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |s| {
        s.breaker_open_secs = 1;
        s.breaker_success_threshold = 1;
        s.breaker_half_open_probes = 1;
    })
    .await;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", OK);
    let mut broken = broken_agent(dir.path(), bot.addr, &project);
    wait_agents(bot.addr, 1).await;
    fail_tasks(&bot, &store, 1, 10).await;
    assert!(line_of(&admin(bot.addr, "health").await, "e2e").contains("circuit *open*"));

    // The agent is fixed and comes back; its circuit (kept across reconnects)
    // lets one probe through once the open wait is over.
    broken.start_kill().unwrap();
    broken.wait().await.unwrap();
    wait_agents(bot.addr, 0).await;
    let mut fixed = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;
    baton(bot.addr, "--project web probe", "U1").await;
    wait_state(&store, 11, "completed", 30).await;
    let health = admin(bot.addr, "health").await;
    assert!(
        line_of(&health, "e2e").contains("circuit *closed*"),
        "{health}"
    );
    fixed.start_kill().unwrap();
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_disconnected_at_once_and_cannot_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;

    let reply = admin(bot.addr, "agent add laptop").await;
    let key = reply
        .split("```")
        .nth(1)
        .unwrap_or_else(|| panic!("no key in {reply}"))
        .trim()
        .to_owned();
    assert!(key.starts_with("baton_"), "{key}");
    let row = store
        .agents()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.name == "laptop")
        .unwrap();
    assert_ne!(row.key_hash, key, "only a hash is stored");
    // Someone else's `agents` shows nothing: admins only.
    let (_, body) = post_signed(
        bot.addr,
        "/slack/commands",
        &slash("/baton-admin", "agents", "U1"),
        SIGNING_SECRET,
    )
    .await;
    assert!(!body.contains("laptop"), "{body}");

    let project = project_dir(dir.path(), "project", OK);
    let mut cfg = AgentConfig::new(dir.path(), bot.addr, &project, 1);
    cfg.key = key;
    let mut agent = start_agent_with(dir.path(), &cfg);
    wait_agents(bot.addr, 1).await;
    assert!(
        admin(bot.addr, "agents")
            .await
            .contains("*laptop*: connected")
    );

    let reply = admin(bot.addr, "agent revoke laptop").await;
    assert!(reply.contains("revoked"), "{reply}");
    wait_agents(bot.addr, 0).await;
    // The agent keeps trying; the bot keeps refusing.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let (_, metrics) = http(bot.addr, "GET", "/metrics", &[], "").await;
        assert!(metrics.contains("baton_agents_connected 0\n"), "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        admin(bot.addr, "agents")
            .await
            .contains("*laptop*: revoked")
    );
    let audit = store.audit_log(10).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "agent.add" && a.target == "laptop")
    );
    assert!(
        audit
            .iter()
            .any(|a| a.action == "agent.revoke" && a.target == "laptop")
    );
    agent.start_kill().unwrap();
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_rate_limit_says_when_to_try_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |s| {
        s.rate_limit_tasks = 2;
        s.rate_limit_window_secs = 600;
    })
    .await;
    let store = bot.store().await;
    store.ensure_project("web").await.unwrap();
    for _ in 0..2 {
        let (_, body) = baton(bot.addr, "--project web hi", "U1").await;
        assert!(body.is_empty(), "{body}");
    }
    let (status, body) = baton(bot.addr, "--project web one more", "U1").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("ephemeral") && body.contains("Try again in"),
        "{body}"
    );
    assert!(
        store.task(3).await.unwrap().is_none(),
        "refused, not recorded"
    );
    // Another person is not affected.
    let (_, body) = baton(bot.addr, "--project web mine", "U2").await;
    assert!(body.is_empty(), "{body}");
    assert!(store.task(3).await.unwrap().is_some());
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_a_project_no_agent_serves_warns_of_a_typo() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    store.ensure_project("web").await.unwrap();
    let reply = admin(bot.addr, "project bind web").await;
    assert!(
        reply.contains("now go to project `web`") && !reply.contains("warning"),
        "{reply}"
    );
    let (_, body) = baton(bot.addr, "first", "U1").await;
    assert!(body.is_empty(), "{body}");
    assert_eq!(store.task(1).await.unwrap().unwrap().project, "web");
    let reply = admin(bot.addr, "project bind wbe").await;
    assert!(
        reply.contains("No agent has served `wbe`") && reply.contains("`web`"),
        "{reply}"
    );
    assert_eq!(
        store.project_for_channel("C1").await.unwrap().as_deref(),
        Some("wbe")
    );
    // The bot reads the new binding at once (it caches bindings).
    let (_, body) = baton(bot.addr, "second", "U1").await;
    assert!(body.is_empty(), "{body}");
    assert_eq!(store.task(2).await.unwrap().unwrap().project, "wbe");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_tasks_projects_and_purge_for_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    store.ensure_project("web").await.unwrap();
    for i in 1..=3 {
        baton(bot.addr, &format!("--project web waiting {i}"), "U1").await;
    }
    for id in 1..=3 {
        wait_state(&store, id, "queued", 30).await;
    }

    let queue = admin(bot.addr, "queue web").await;
    assert!(queue.contains("#1") && queue.contains("#3"), "{queue}");
    let tasks = admin(bot.addr, "tasks queued").await;
    assert!(tasks.contains("#2"), "{tasks}");
    let projects = admin(bot.addr, "projects").await;
    assert!(projects.contains("web"), "{projects}");

    // Every admin command is refused to others, revealing nothing.
    for cmd in [
        "queue web",
        "queue purge web",
        "tasks",
        "projects",
        "agents",
        "health reset e2e",
    ] {
        let (_, body) = post_signed(
            bot.addr,
            "/slack/commands",
            &slash("/baton-admin", cmd, "U1"),
            SIGNING_SECRET,
        )
        .await;
        assert!(
            body.contains("admins only") && !body.contains("#1"),
            "{cmd}: {body}"
        );
    }
    assert_eq!(store.queue_len("web").await.unwrap(), 3, "nothing changed");

    let reply = admin(bot.addr, "queue purge web").await;
    assert!(reply.contains("Removed 3"), "{reply}");
    for id in 1..=3 {
        wait_state(&store, id, "cancelled", 30).await;
        let ts = message_ts(&store, id).await;
        wait_for(30, "the purged task's message to say so", || {
            slack.shown(&ts).is_some_and(|t| t.contains("queue purge"))
        })
        .await;
    }
    let audit = store.audit_log(10).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "queue.purge" && a.target == "web")
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admins_configured_admin_commands_say_how_to_configure_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |s| s.admins = Vec::new()).await;
    let body = admin(bot.addr, "health").await;
    assert!(
        body.contains("BATON_ADMINS") && !body.contains("e2e"),
        "{body}"
    );
    bot.stop().await;
}
