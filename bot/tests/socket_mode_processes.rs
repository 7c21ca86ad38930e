//! Socket Mode with several real `baton-bot` processes on one PostgreSQL
//! database: each holds its own connections to the fake Slack, which
//! delivers each envelope over one of them; whatever process receives a
//! command, a click or an event handles it once, wherever the agent is.
//! Skipped without PostgreSQL
//! (`scripts/test-postgres run cargo nextest run -p baton-bot --test socket_mode_processes`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_shared::TaskId;
use baton_shared::protocol::{AgentMessage, BotMessage};
use baton_testkit::db::postgres_or_skip;
use baton_testkit::processes::{Processes, frame};
use baton_testkit::socket_mode::{self, APP_TOKEN};
use baton_testkit::{FakeSlack, eventually, wait_state};
use serde_json::{Value, json};

/// How long a test waits for anything the bots do (a deadline, not a delay).
const WAIT_SECS: u64 = 20;

/// The connections each process holds open.
const CONNECTIONS: usize = baton_bot::slack::socket_mode::CONNECTIONS as usize;

/// Two processes in Socket Mode (HTTP too, for the project's binding) and
/// the connections of each: process 0's, then process 1's. An agent gone
/// for a second is lost, so that a task wrongly taken over shows at once.
async fn two_in_socket_mode() -> (Processes, Vec<u64>, Vec<u64>) {
    let env = [
        ("SLACK_APP_TOKEN", APP_TOKEN.to_owned()),
        ("BATON_AGENT_GRACE_SECS", "1".to_owned()),
    ];
    let mut bots = Processes::start(1, &env).await;
    let sm = bots.slack.socket_mode();
    sm.wait_connections(CONNECTIONS, WAIT_SECS).await;
    let first = sm.connections();
    bots.add().await;
    let sm = bots.slack.socket_mode();
    sm.wait_connections(2 * CONNECTIONS, WAIT_SECS).await;
    let second: Vec<u64> = sm
        .connections()
        .into_iter()
        .filter(|c| !first.contains(c))
        .collect();
    assert_eq!(
        (first.len(), second.len()),
        (CONNECTIONS, CONNECTIONS),
        "{}",
        sm.describe()
    );
    (bots, first, second)
}

/// Waits for the ack of `envelope_id`; checks it came over `connection`, once.
async fn acked_on(slack: &FakeSlack, envelope_id: &str, connection: u64) -> Value {
    let sm = slack.socket_mode();
    let ack = sm.ack(envelope_id, WAIT_SECS).await;
    let acks = sm.acks_of(envelope_id);
    assert_eq!(acks.len(), 1, "acknowledged once: {acks:?}");
    assert_eq!(acks[0].connection, connection, "acknowledged where it came");
    ack
}

/// The task created by the prompt `prompt`, once there is one.
async fn task_of(bots: &Processes, prompt: &str) -> i64 {
    eventually(&format!("the task of {prompt:?}"), || async {
        bots.store
            .recent_tasks(1_000)
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.prompt == prompt)
            .map(|t| t.id)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_one_process_s_connection_runs_on_the_agent_of_another() {
    let Some(_) =
        postgres_or_skip("a_command_over_one_process_s_connection_runs_on_the_agent_of_another")
    else {
        return;
    };
    let (bots, first, _) = two_in_socket_mode().await;
    let mut agent = bots.agent(1).await;
    let sm = bots.slack.socket_mode();

    let envelope = sm.push_on(
        Some(first[0]),
        "slash_commands",
        socket_mode::slash_command("/baton", "fix the flaky test", "U1"),
    );
    let ack = acked_on(&bots.slack, &envelope, first[0]).await;
    assert_eq!(ack, json!({"envelope_id": envelope}), "a bare ack");
    let id = task_of(&bots, "fix the flaky test").await;
    let submit = agent.submitted().await;
    assert_eq!(submit.task, TaskId(id));
    agent.start(submit.task);
    agent.complete(submit.task, "fixed", "s1");
    wait_state(&bots.store, id, "completed", WAIT_SECS).await;
    let task = bots.store.task(id).await.unwrap().unwrap();
    assert_eq!(
        (task.agent.as_deref(), task.result.as_deref()),
        (Some("e2e"), Some("fixed"))
    );
    assert_eq!(bots.store.recent_tasks(10).await.unwrap().len(), 1);
    bots.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_over_one_process_s_connection_cancels_the_task_of_another_s_agent() {
    let Some(_) = postgres_or_skip(
        "a_click_over_one_process_s_connection_cancels_the_task_of_another_s_agent",
    ) else {
        return;
    };
    let (bots, first, second) = two_in_socket_mode().await;
    // The agent is on process 0; the command arrives on process 1.
    let mut agent = bots.agent(0).await;
    let sm = bots.slack.socket_mode();
    let envelope = sm.push_on(
        Some(second[1]),
        "slash_commands",
        socket_mode::slash_command("/baton", "a long job", "U1"),
    );
    acked_on(&bots.slack, &envelope, second[1]).await;
    let id = task_of(&bots, "a long job").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(&bots.store, id, "running", WAIT_SECS).await;
    let ts = baton_testkit::message_ts(&bots.store, id).await;

    // Cancel clicked; Slack delivers the click over process 1's other connection.
    let click = sm.push_on(
        Some(second[0]),
        "interactive",
        socket_mode::block_actions("baton_cancel", &id.to_string(), "U1", &ts),
    );
    let ack = acked_on(&bots.slack, &click, second[0]).await;
    assert_eq!(
        ack,
        json!({"envelope_id": click}),
        "a click gets a bare ack"
    );
    frame(&mut agent, |f| {
        matches!(f, BotMessage::Cancel { task: t } if *t == task).then_some(())
    })
    .await;
    agent.send(AgentMessage::Cancelled { task, seq: 3 });
    wait_state(&bots.store, id, "cancelled", WAIT_SECS).await;
    assert!(
        sm.acks().iter().all(|a| !first.contains(&a.connection)),
        "process 0 received nothing: {:?}",
        sm.acks()
    );
    drop(agent);
    bots.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_over_both_processes_makes_one_task() {
    let Some(_) = postgres_or_skip("an_event_delivered_over_both_processes_makes_one_task") else {
        return;
    };
    let (bots, first, second) = two_in_socket_mode().await;
    let sm = bots.slack.socket_mode();
    let mention = socket_mode::event_callback(
        "Ev001",
        socket_mode::app_mention("U2", "bump the version", "1700000100.000100"),
    );
    // Slack sends it over process 0 and, as if unacknowledged, again over
    // process 1 at the same moment, and once more later.
    let once = sm.push_on(Some(first[0]), "events_api", mention.clone());
    let again = sm.push_on(Some(second[0]), "events_api", mention.clone());
    acked_on(&bots.slack, &once, first[0]).await;
    acked_on(&bots.slack, &again, second[0]).await;
    let id = task_of(&bots, "bump the version").await;
    let later = sm.push_on(Some(second[1]), "events_api", mention);
    acked_on(&bots.slack, &later, second[1]).await;

    // A new event after them is the next task: the repeats made none.
    let next = sm.push_on(
        Some(first[1]),
        "events_api",
        socket_mode::event_callback(
            "Ev002",
            socket_mode::app_mention("U2", "and tag it", "1700000100.000200"),
        ),
    );
    acked_on(&bots.slack, &next, first[1]).await;
    let next_id = task_of(&bots, "and tag it").await;
    assert!(next_id > id);
    let tasks = bots.store.recent_tasks(10).await.unwrap();
    assert_eq!(tasks.len(), 2, "one task per event: {tasks:?}");
    let task = bots.store.task(id).await.unwrap().unwrap();
    assert_eq!(task.requester, "U2");
    bots.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_spread_over_every_connection_each_run_once() {
    let Some(_) = postgres_or_skip("commands_spread_over_every_connection_each_run_once") else {
        return;
    };
    let (bots, first, second) = two_in_socket_mode().await;
    let mut agent = bots.agent(1).await;
    let sm = bots.slack.socket_mode();
    let n = 2 * (first.len() + second.len());
    let mut over = Vec::new();
    for i in 0..n {
        let (connection, envelope) = sm.push_spread(
            "slash_commands",
            socket_mode::slash_command("/baton", &format!("job {i}"), "U1"),
        );
        acked_on(&bots.slack, &envelope, connection).await;
        over.push(connection);
    }
    for c in first.iter().chain(&second) {
        assert!(over.contains(c), "connection {c} got none: {over:?}");
    }
    // The agent runs one at a time: each is handed over once, and ends.
    let mut ran = Vec::new();
    for _ in 0..n {
        let task = agent.submitted().await.task;
        agent.start(task);
        agent.complete(task, "done", "s");
        wait_state(&bots.store, task.0, "completed", WAIT_SECS).await;
        ran.push(task.0);
    }
    ran.sort_unstable();
    ran.dedup();
    assert_eq!(ran.len(), n, "each task handed over once");
    let tasks = bots.store.recent_tasks(100).await.unwrap();
    assert_eq!(tasks.len(), n, "one task per command");
    assert!(tasks.iter().all(|t| t.state == "completed"));
    drop(agent);
    bots.stop().await;
}
