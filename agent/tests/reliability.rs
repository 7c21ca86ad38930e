//! Nothing lost, nothing twice: kill -9 of the agent and of the bot mid-task,
//! a bot killed between a result and its Slack edit, a link that drops the
//! bot's answers, an agent gone longer than the grace period, the offline
//! queue (TTL on an injected clock, bound, order, cancel), a redelivered
//! submit and duplicate or stale events. Real `baton-agent` binary, the bot
//! in-process or (where it is killed) the real `baton-bot` binary, a real
//! SQLite file, fake Slack over HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_bot::clock::ManualWallClock;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Records each run in `runs.log`, reports a step, then waits until the test
/// drops `release-ID` (or `release-all`) in the project directory (two
/// minutes at most, so a failed test leaves nothing running for long).
const HOLD: &str = r#"#!/bin/sh
echo "$BATON_TASK_ID" >> ./runs.log
echo $$ > "./pid-$BATON_TASK_ID"
echo '::step:: started'
i=0
while [ ! -e "./release-$BATON_TASK_ID" ] && [ ! -e ./release-all ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done
echo "done $BATON_TASK_ID"
"#;

/// Any free port on loopback.
fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn release(project: &Path, id: i64) {
    std::fs::write(project.join(format!("release-{id}")), "").unwrap();
}

/// How many times each task ran, from `runs.log`.
fn runs(project: &Path) -> Vec<i64> {
    std::fs::read_to_string(project.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// What the message `ts` shows now.
fn last_edit(slack: &FakeSlack, ts: &str) -> Option<String> {
    slack.shown(ts)
}

async fn wait_edit(slack: &Arc<FakeSlack>, ts: &str, needle: &str) {
    wait_for(30, &format!("message {ts} showing {needle:?}"), || {
        last_edit(slack, ts).is_some_and(|t| t.contains(needle))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_task_fails_it_once_and_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let project = project_dir(dir.path(), "project", HOLD);
    let mut agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;
    let store = bot.store().await;

    let (status, _) = baton(bot.addr, "run and hold", "U1").await;
    assert_eq!(status, 200);
    wait_state(&store, 1, "running", 30).await;
    wait_for(30, "the task's process", || project.join("pid-1").exists()).await;
    let pid: i32 = std::fs::read_to_string(project.join("pid-1"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The script writes its pid as soon as it is spawned; the agent records
    // the process group just after (two fsyncs, slow on a loaded machine).
    // Killed before that, it could not know what to stop when it comes back.
    let recorded = dir.path().join("agent-state/running/1");
    wait_for(30, "the agent to record the task's process group", || {
        recorded.exists()
    })
    .await;

    kill9(&mut agent).await;
    assert!(
        alive(pid),
        "the task's process group outlives a kill -9 of the agent"
    );
    let mut agent = start_agent(dir.path(), bot.addr, &project, 1);

    wait_state(&store, 1, "failed", 30).await;
    let task = store.task(1).await.unwrap().unwrap();
    assert!(task.error.unwrap().contains("agent restarted"));
    wait_for(30, "the orphaned process to be killed", || !alive(pid)).await;
    let ts = message_ts(&store, 1).await;
    wait_edit(&slack, &ts, "agent restarted").await;
    assert!(last_edit(&slack, &ts).unwrap().contains("Retry"));
    assert_eq!(runs(&project), vec![1], "it ran once");
    assert_eq!(slack.calls("chat.postMessage").len(), 1, "one message");

    // The agent is healthy again and takes the next task.
    baton(bot.addr, "again", "U1").await;
    wait_state(&store, 2, "running", 30).await;
    release(&project, 2);
    wait_state(&store, 2, "completed", 30).await;
    kill9(&mut agent).await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_killed_mid_task_gets_the_result_after_restart_from_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = BotProcess::start(any_port(), &url, dir.path(), &[]).await;
    let addr = bot.addr;
    let project = project_dir(dir.path(), "project", HOLD);
    let mut agent = start_agent(dir.path(), addr, &project, 1);
    wait_agents(addr, 1).await;
    let store = bot.store().await;

    baton(addr, "survive the bot", "U1").await;
    wait_state(&store, 1, "running", 30).await;
    let ts = message_ts(&store, 1).await;
    bot.kill().await;

    // The task ends while the bot is gone: the result waits on the agent's disk.
    release(&project, 1);
    let outbox = dir.path().join("agent-state/outbox/1.json");
    wait_for(30, "the result in the agent's outbox", || outbox.exists()).await;
    // The agent survives its own restart with the result still held.
    kill9(&mut agent).await;
    assert!(outbox.exists());
    let mut agent = start_agent(dir.path(), addr, &project, 1);

    let bot = BotProcess::start(addr, &url, dir.path(), &[]).await;
    wait_state(&store, 1, "completed", 30).await;
    wait_edit(&slack, &ts, "done 1").await;
    wait_for(30, "the acknowledged result to leave the outbox", || {
        !outbox.exists()
    })
    .await;
    assert_eq!(runs(&project), vec![1]);
    assert_eq!(
        slack.calls("chat.postMessage").len(),
        1,
        "the same message is edited"
    );
    kill9(&mut agent).await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_killed_between_the_result_and_the_slack_edit_edits_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = BotProcess::start(any_port(), &url, dir.path(), &[]).await;
    let addr = bot.addr;
    let project = project_dir(dir.path(), "project", HOLD);
    let mut agent = start_agent(dir.path(), addr, &project, 1);
    wait_agents(addr, 1).await;
    let store = bot.store().await;

    baton(addr, "edit me later", "U1").await;
    wait_state(&store, 1, "running", 30).await;
    let ts = message_ts(&store, 1).await;
    // Slack stops answering edits: the final one cannot get out.
    slack.delay("chat.update", Duration::from_secs(3600));
    release(&project, 1);
    wait_state(&store, 1, "completed", 30).await;
    assert!(!store.task(1).await.unwrap().unwrap().slack_synced);
    bot.kill().await;

    slack.delay("chat.update", Duration::ZERO);
    let bot = BotProcess::start(addr, &url, dir.path(), &[]).await;
    wait_edit(&slack, &ts, "done 1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !store.task(1).await.unwrap().unwrap().slack_synced {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never marked as shown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slack.calls("chat.postMessage").len(), 1);
    assert_eq!(runs(&project), vec![1]);
    kill9(&mut agent).await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_killed_after_slack_posted_but_before_it_stored_the_ts_posts_once() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = BotProcess::start(any_port(), &url, dir.path(), &[]).await;
    let addr = bot.addr;
    let store = bot.store().await;
    store.ensure_project("web").await.unwrap();
    // Slack creates the message, but its answer never reaches the bot.
    slack.lose_answers("chat.postMessage", 1);
    baton(addr, "--project web posted once", "U1").await;
    wait_for(30, "the post to reach Slack", || {
        slack.calls("chat.postMessage").len() == 1
    })
    .await;
    bot.kill().await;
    assert_eq!(store.task(1).await.unwrap().unwrap().message_ts, None);

    let bot = BotProcess::start(addr, &url, dir.path(), &[]).await;
    let ts = message_ts(&store, 1).await;
    assert_eq!(Some(ts.clone()), slack.calls("chat.postMessage")[0].ts);
    wait_for(30, "the found message to be edited", || {
        slack
            .calls("chat.update")
            .iter()
            .any(|c| c.ts.as_deref() == Some(ts.as_str()))
    })
    .await;
    assert_eq!(
        slack.calls("chat.postMessage").len(),
        1,
        "one message, found again"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_loses_the_bots_answers_delivers_the_result_once() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |s| s.heartbeat_secs = 1).await;
    let proxy = Proxy::start(bot.addr).await;
    let project = project_dir(dir.path(), "project", HOLD);
    let mut agent = start_agent(dir.path(), proxy.addr, &project, 1);
    wait_agents(bot.addr, 1).await;
    let store = bot.store().await;

    baton(bot.addr, "lose the ack", "U1").await;
    wait_state(&store, 1, "running", 30).await;
    let ts = message_ts(&store, 1).await;
    // From now on the bot hears the agent, the agent hears nothing: the result
    // is applied, its ack is lost, the agent sends it again once it reconnects.
    proxy.set_mode(ProxyMode::DropReplies);
    release(&project, 1);
    wait_state(&store, 1, "completed", 30).await;
    let outbox = dir.path().join("agent-state/outbox/1.json");
    assert!(outbox.exists(), "unacknowledged, the result stays held");
    // Two silent heartbeats later the agent gives the link up...
    wait_for(30, "the agent to drop the silent link", || {
        proxy.closed() >= 1
    })
    .await;
    assert!(outbox.exists(), "still held");
    // ...and reconnects through a working one.
    proxy.set_mode(ProxyMode::Pass);
    wait_for(30, "the redelivered result to be acknowledged", || {
        !outbox.exists()
    })
    .await;
    wait_edit(&slack, &ts, "done 1").await;
    let task = store.task(1).await.unwrap().unwrap();
    assert_eq!(task.state, "completed");
    let finals = slack
        .calls("chat.update")
        .iter()
        .filter(|c| message_text(&c.body).contains("done 1"))
        .count();
    assert!(finals >= 1);
    assert_eq!(runs(&project), vec![1]);
    kill9(&mut agent).await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_for_an_offline_agent_is_delivered_when_it_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let proxy = Proxy::start(bot.addr).await;
    let project = project_dir(dir.path(), "project", HOLD);
    let mut agent = start_agent(dir.path(), proxy.addr, &project, 1);
    wait_agents(bot.addr, 1).await;
    let store = bot.store().await;
    baton(bot.addr, "please cancel me offline", "U1").await;
    wait_state(&store, 1, "running", 30).await;
    wait_for(30, "the task's process", || project.join("pid-1").exists()).await;
    let pid = read_pid(&project.join("pid-1"));

    // The link goes down; the agent keeps running the task meanwhile.
    proxy.set_mode(ProxyMode::Refuse);
    proxy.cut();
    wait_agents(bot.addr, 0).await;
    let (_, body) = baton(bot.addr, "cancel #1", "U1").await;
    assert!(body.contains("#1"), "{body}");
    assert_eq!(store.task(1).await.unwrap().unwrap().state, "running");
    assert!(store.task(1).await.unwrap().unwrap().cancel_requested);
    assert!(alive(pid));

    // Back online: the remembered cancel reaches the agent, which stops it.
    proxy.set_mode(ProxyMode::Pass);
    wait_state(&store, 1, "cancelled", 60).await;
    wait_for(30, "the task's processes to be gone", || !alive(pid)).await;
    let ts = message_ts(&store, 1).await;
    wait_edit(&slack, &ts, "Cancelled").await;
    assert_eq!(runs(&project), vec![1]);
    kill9(&mut agent).await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_gone_past_the_grace_period_fails_its_task_as_lost_with_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |s| s.agent_grace_secs = 1).await;
    let project = project_dir(dir.path(), "project", HOLD);
    let mut agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;
    let store = bot.store().await;

    baton(bot.addr, "lost", "U1").await;
    wait_state(&store, 1, "running", 30).await;
    let ts = message_ts(&store, 1).await;
    kill9(&mut agent).await;
    wait_state(&store, 1, "failed", 30).await;
    let task = store.task(1).await.unwrap().unwrap();
    assert!(task.error.unwrap().contains("agent lost"));
    assert_eq!(task.failure_cause.as_deref(), Some("agent_lost"));
    wait_edit(&slack, &ts, "agent lost").await;
    let text = last_edit(&slack, &ts).unwrap();
    assert!(text.contains("Retry"), "{text}");
    assert!(!text.contains("Cancel"), "{text}");

    // Retry makes a new task with the same prompt, and says so in the thread.
    let (_, body) = baton(bot.addr, "retry #1", "U1").await;
    assert!(body.contains("#2"), "{body}");
    let new = store.task(2).await.unwrap().unwrap();
    assert_eq!(new.prompt, "lost");
    assert_eq!(new.parent_id, Some(1));
    wait_for(30, "the note in the old thread", || {
        slack
            .calls("chat.postMessage")
            .iter()
            .any(|c| c.body["thread_ts"] == ts.as_str() && message_text(&c.body).contains("#2"))
    })
    .await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_queue_keeps_order_bound_cancel_and_time_to_live() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let clock = ManualWallClock::default();
    let bot = Bot::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(clock.clone()),
        &url,
        dir.path(),
        |s| s.queue_max = 4,
    )
    .await;
    let store = bot.store().await;
    // The project exists (an agent served it once) but nobody is connected.
    store.ensure_project("web").await.unwrap();

    for i in 1..=4 {
        let (status, body) = baton(bot.addr, &format!("--project web queued {i}"), "U1").await;
        assert_eq!(status, 200, "{body}");
    }
    for id in 1..=4 {
        wait_state(&store, id, "queued", 30).await;
    }
    let (_, body) = baton(bot.addr, "--project web one too many", "U1").await;
    assert!(body.contains("queue") && body.contains("full"), "{body}");
    assert!(
        store.task(5).await.unwrap().is_none(),
        "refused, not recorded"
    );

    // Each queued message says where it stands and why it waits.
    let ts2 = message_ts(&store, 2).await;
    wait_edit(&slack, &ts2, "no agent").await;
    assert!(last_edit(&slack, &ts2).unwrap().contains('2'));

    // Cancelling a queued task removes it for good.
    let (_, body) = baton(bot.addr, "cancel #1", "U1").await;
    assert!(body.contains("#1"), "{body}");
    wait_state(&store, 1, "cancelled", 30).await;
    let (_, body) = baton(bot.addr, "cancel #2", "USOMEONE").await;
    assert!(!body.is_empty());
    assert_eq!(
        store.task(2).await.unwrap().unwrap().state,
        "queued",
        "not theirs"
    );

    // A day later, what still waits has expired, and its message says so.
    clock.advance(Duration::from_secs(24 * 3600 + 1));
    baton(bot.addr, "--project web fresh", "U1").await;
    for id in 2..=4 {
        wait_state(&store, id, "expired", 30).await;
    }
    let ts3 = message_ts(&store, 3).await;
    wait_edit(&slack, &ts3, "Expired").await;
    assert!(last_edit(&slack, &ts3).unwrap().contains("Retry"));

    // An agent connects: the fresh task (and only it) runs; cancelled and expired never do.
    let project = project_dir(dir.path(), "project", HOLD);
    std::fs::write(project.join("release-all"), "").unwrap();
    let mut agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_state(&store, 5, "completed", 30).await;
    assert_eq!(runs(&project), vec![5]);
    kill9(&mut agent).await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_go_out_in_order_up_to_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    store.ensure_project("web").await.unwrap();
    for i in 1..=5 {
        baton(bot.addr, &format!("--project web job {i}"), "U1").await;
    }
    let project = project_dir(dir.path(), "project", HOLD);
    let mut agent = start_agent(dir.path(), bot.addr, &project, 2);
    wait_state(&store, 1, "running", 30).await;
    wait_state(&store, 2, "running", 30).await;
    assert_eq!(
        store.task(3).await.unwrap().unwrap().state,
        "queued",
        "capacity is 2"
    );
    for id in 1..=5 {
        release(&project, id);
        wait_state(&store, id, "completed", 30).await;
    }
    let order = runs(&project);
    assert_eq!(order.len(), 5);
    assert_eq!(&order[2..], &[3, 4, 5], "FIFO: {order:?}");
    kill9(&mut agent).await;
    bot.stop().await;
}

// ---- a fake bot in front of the real agent: redelivered and invalid submits ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_submit_never_runs_twice_even_across_agent_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBot::new().await;
    let addr = fake.listener.local_addr().unwrap();
    let project = project_dir(dir.path(), "project", HOLD);
    let mut agent = start_agent(dir.path(), addr, &project, 2);
    let (mut ws, hello) = fake.accept().await;
    assert_eq!(hello["running"], json!([]));

    send(&mut ws, submit(7, "once")).await;
    let first = next_json(&mut ws).await;
    assert_eq!(
        (first["type"].as_str(), first["task"].as_i64()),
        (Some("accepted"), Some(7))
    );
    // The same submit again while it runs: confirmed, not started again.
    send(&mut ws, submit(7, "once")).await;
    let mut finals = Vec::new();
    let mut accepted_again = false;
    while !accepted_again {
        let m = next_json(&mut ws).await;
        accepted_again = m["type"] == "accepted" && m["task"] == 7;
        assert!(m["seq"].as_u64() > first["seq"].as_u64());
    }
    release(&project, 7);
    while finals.is_empty() {
        let m = next_json(&mut ws).await;
        if m["type"] == "completed" {
            finals.push(m);
        }
    }
    let done = finals.remove(0);
    // Redelivered after it ended: the held result, not a second run.
    send(&mut ws, submit(7, "once")).await;
    let again = loop {
        let m = next_json(&mut ws).await;
        if m["task"] == 7 && m["type"] != "output" && m["type"] != "step" {
            break m;
        }
    };
    assert_eq!(again, done, "the held result is sent again as it was");
    send(
        &mut ws,
        json!({"type": "ack", "task": 7, "seq": done["seq"]}),
    )
    .await;

    // An invalid submit that names its task is refused at once, never ignored.
    send(&mut ws, submit(8, "   ")).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["type"], "rejected");
    assert_eq!(refused["task"], 8);
    assert_eq!(refused["reason"], "invalid");

    // The agent restarts: its journal still knows task 7.
    kill9(&mut agent).await;
    drop(ws);
    let mut agent = start_agent(dir.path(), addr, &project, 2);
    let (mut ws, hello) = fake.accept().await;
    assert_eq!(hello["held_results"], json!([]), "the acked result is gone");
    send(&mut ws, submit(7, "once")).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["type"], "rejected");
    assert_eq!(m["reason"], "already_seen");
    assert_eq!(runs(&project), vec![7], "ran exactly once");
    kill9(&mut agent).await;
}

// ---- a fake agent in front of the real bot: duplicate and stale events ----

async fn fake_agent(bot: std::net::SocketAddr) -> ClientWs {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{bot}/agents"),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {AGENT_KEY}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = json!({"type": "hello", "protocol": 1, "agent_version": "test", "capacity": 1,
        "projects": [{"name": "web", "max_concurrent": 1}], "running": [], "held_results": []});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let welcome = next_client_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    ws
}

type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_client_json(ws: &mut ClientWs) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame from the bot")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn say(ws: &mut ClientWs, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_stale_events_are_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    let store = bot.store().await;
    let mut ws = fake_agent(bot.addr).await;
    baton(bot.addr, "events", "U1").await;
    let sub = next_client_json(&mut ws).await;
    assert_eq!(sub["type"], "submit");
    let t = sub["task"].as_i64().unwrap();

    say(&mut ws, json!({"type":"accepted","task":t,"seq":1})).await;
    say(
        &mut ws,
        json!({"type":"step","task":t,"seq":3,"text":"third"}),
    )
    .await;
    say(
        &mut ws,
        json!({"type":"step","task":t,"seq":2,"text":"stale second"}),
    )
    .await;
    say(
        &mut ws,
        json!({"type":"step","task":t,"seq":3,"text":"duplicate third"}),
    )
    .await;
    // A malformed frame gets an error and changes nothing.
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let err = next_client_json(&mut ws).await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("malformed"))
    );
    // An event for a task that is not this agent's is refused.
    say(
        &mut ws,
        json!({"type":"step","task":999,"seq":9,"text":"not mine"}),
    )
    .await;
    let err = next_client_json(&mut ws).await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("unexpected"))
    );

    let done = json!({"type":"completed","task":t,"seq":4,"result":{"text":"all done"}});
    say(&mut ws, done.clone()).await;
    assert_eq!(
        next_client_json(&mut ws).await,
        json!({"type":"ack","task":t,"seq":4})
    );
    // The same result again (a redelivery): acknowledged again, applied once.
    say(&mut ws, done).await;
    assert_eq!(
        next_client_json(&mut ws).await,
        json!({"type":"ack","task":t,"seq":4})
    );
    // A late step after the end changes nothing.
    say(
        &mut ws,
        json!({"type":"step","task":t,"seq":5,"text":"after the end"}),
    )
    .await;
    let failed = json!({"type":"failed","task":t,"seq":6,"error":"late","cause":"task"});
    say(&mut ws, failed).await;
    assert_eq!(next_client_json(&mut ws).await["type"], "ack");

    let task = store.task(t).await.unwrap().unwrap();
    assert_eq!(task.state, "completed");
    assert_eq!(task.result.as_deref(), Some("all done"));
    assert_eq!(task.step_count, 1, "one step applied");
    assert!(
        task.steps.contains("third")
            && !task.steps.contains("stale")
            && !task.steps.contains("duplicate")
    );
    assert!(!task.steps.contains("after the end"));
    let ts = message_ts(&store, t).await;
    wait_edit(&slack, &ts, "all done").await;
    bot.stop().await;
}

// ---- chaos: random kills of both sides while tasks flow ----

const CHAOS: &str = r#"#!/bin/sh
echo "$BATON_TASK_ID" >> ./runs.log
sleep "0.$(( BATON_TASK_ID % 4 ))"
echo "done $BATON_TASK_ID"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_random_kills_lose_nothing_and_run_nothing_twice() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (set CHAOS_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let env = [
        ("BATON_DISPATCH_TIMEOUT_SECS", "2".to_owned()),
        ("BATON_RATE_LIMIT_TASKS", "1000".to_owned()),
    ];
    let mut bot = BotProcess::start(any_port(), &url, dir.path(), &env).await;
    let addr = bot.addr;
    let store = bot.store().await;
    let project = project_dir(dir.path(), "project", CHAOS);
    let mut agent = start_agent(dir.path(), addr, &project, 4);
    wait_agents(addr, 1).await;

    let mut created = Vec::new();
    let (mut bot_kills, mut agent_kills) = (0, 0);
    while created.len() < 50 {
        for _ in 0..rng.random_range(1..=4) {
            let (status, body) = baton(addr, "chaos", "U1").await;
            assert_eq!(status, 200, "{body}");
            assert!(body.is_empty(), "{body}");
            created.push(created.len() as i64 + 1);
        }
        match rng.random_range(0..10) {
            0..=1 => {
                bot.kill().await;
                bot_kills += 1;
                bot = BotProcess::start(addr, &url, dir.path(), &env).await;
            }
            2..=3 => {
                kill9(&mut agent).await;
                agent_kills += 1;
                agent = start_agent(dir.path(), addr, &project, 4);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
    }
    eprintln!("{bot_kills} bot kills, {agent_kills} agent kills");

    let terminal = ["completed", "failed", "cancelled", "expired"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &created {
        loop {
            let task = store
                .task(*id)
                .await
                .unwrap()
                .expect("every task is recorded");
            if terminal.contains(&task.state.as_str()) && task.slack_synced {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task #{id} stuck in {} (synced {})",
                task.state,
                task.slack_synced
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let ran = runs(&project);
    let mut seen = std::collections::HashSet::new();
    for id in &ran {
        assert!(seen.insert(*id), "task #{id} ran twice: {ran:?}");
    }
    for id in &created {
        let task = store.task(*id).await.unwrap().unwrap();
        let ts = task.message_ts.clone().expect("every task has its message");
        let shown = slack.shown(&ts).unwrap_or_default();
        let label = match task.state.as_str() {
            "completed" => "Completed",
            "failed" => "Failed",
            "cancelled" => "Cancelled",
            _ => "Expired",
        };
        assert!(
            shown.contains(label),
            "#{id} is {} but Slack shows {shown}",
            task.state
        );
        let block = format!("baton-task-{id}");
        let posts = slack
            .calls("chat.postMessage")
            .iter()
            .filter(|c| c.body["blocks"][0]["block_id"] == block.as_str())
            .count();
        assert_eq!(posts, 1, "#{id} has exactly one message");
        if task.state == "completed" {
            assert!(seen.contains(id), "#{id} completed without running");
            assert_eq!(
                task.result.as_deref().map(str::trim),
                Some(format!("done {id}").as_str())
            );
        }
    }
    kill9(&mut agent).await;
    bot.stop().await;
}
