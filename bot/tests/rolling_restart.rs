//! Several real `baton-bot` processes on one PostgreSQL database while tasks
//! run: a rolling restart (each process stopped and started again in turn)
//! ends every task once with no agent lost, and a task's Slack message is
//! posted once whichever process shows it first. Skipped without PostgreSQL
//! (`scripts/test-postgres run cargo nextest run -p baton-bot --test rolling_restart`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_shared::TaskId;
use baton_shared::protocol::{AgentMessage, BotMessage, TaskResult};
use baton_testkit::db::postgres_or_skip;
use baton_testkit::processes::Processes;
use baton_testkit::scene::FakeAgent;
use baton_testkit::{AGENT_KEY, FakeSlack, eventually, wait_for, wait_state};

/// Settings of every process here: an agent gone for a second is lost, so
/// that a task wrongly failed as "agent lost" shows at once.
fn env() -> Vec<(&'static str, String)> {
    vec![("BATON_AGENT_GRACE_SECS", "1".to_owned())]
}

/// How many `chat.postMessage` calls made task `id`'s message.
fn posts_of(slack: &FakeSlack, id: i64) -> usize {
    let block = format!("baton-task-{id}");
    slack
        .calls("chat.postMessage")
        .iter()
        .filter(|c| c.body["blocks"][0]["block_id"] == block.as_str())
        .count()
}

/// Waits until task `id` shows its final state in Slack.
async fn synced(bots: &Processes, id: i64) {
    eventually(&format!("task #{id}'s end to show in Slack"), || async {
        bots.store
            .task(id)
            .await
            .unwrap()
            .filter(|t| t.slack_synced)
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_task_s_message_is_posted_once_when_another_process_shows_it_first() {
    let Some(_) =
        postgres_or_skip("a_task_s_message_is_posted_once_when_another_process_shows_it_first")
    else {
        return;
    };
    let bots = Processes::start(2, &env()).await;
    let mut agent = bots.agent(1).await;
    // A slow Slack: the creating process's post is still on its way when
    // the process holding the agent dispatches the task and shows it.
    bots.slack
        .delay("chat.postMessage", Duration::from_millis(500));
    let id = bots.start_task(0, "a job").await;
    let task = agent.submitted().await.task;
    assert_eq!(task, TaskId(id));
    agent.start(task);
    agent.complete(task, "done", "s1");
    wait_state(&bots.store, id, "completed", 20).await;
    synced(&bots, id).await;
    bots.slack.delay("chat.postMessage", Duration::ZERO);
    assert_eq!(posts_of(&bots.slack, id), 1, "one message for the task");
    let ts = bots
        .store
        .task(id)
        .await
        .unwrap()
        .unwrap()
        .message_ts
        .unwrap();
    assert!(
        bots.slack.shown(&ts).unwrap().contains("Completed"),
        "{:?}",
        bots.slack.shown(&ts)
    );
    drop(agent);
    bots.stop().await;
}

#[tokio::test]
async fn a_killed_process_s_posted_message_is_not_posted_again_where_its_agent_moves() {
    let Some(_) = postgres_or_skip(
        "a_killed_process_s_posted_message_is_not_posted_again_where_its_agent_moves",
    ) else {
        return;
    };
    let mut bots = Processes::start(2, &env()).await;
    let mut agent = bots.agent(1).await;
    // Process 1 creates the task for its agent and posts its message, but
    // dies before Slack's answer (the message's ts) reaches it.
    bots.slack.lose_answers("chat.postMessage", 1);
    let id = bots.start_task(1, "a long job").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(&bots.store, id, "running", 20).await;
    let slack = bots.slack.clone();
    wait_for(20, "the task's message to be posted", || {
        posts_of(&slack, id) == 1
    })
    .await;
    bots.kill(1).await;
    drop(agent);

    // Its agent comes back on process 0, still running the task, and ends it.
    let agent = FakeAgent::connect_running(bots.addr(0), AGENT_KEY, 1, &[task]).await;
    agent.complete(task, "done", "s1");
    wait_state(&bots.store, id, "completed", 20).await;
    synced(&bots, id).await;
    assert_eq!(posts_of(&bots.slack, id), 1, "one message for the task");
    let ts = bots
        .store
        .task(id)
        .await
        .unwrap()
        .unwrap()
        .message_ts
        .unwrap();
    let shown = bots.slack.shown(&ts).unwrap();
    assert!(shown.contains("Completed"), "{shown}");
    bots.stop().await;
}

#[tokio::test]
async fn a_late_live_edit_from_the_agent_s_old_process_does_not_hide_the_end() {
    let Some(_) =
        postgres_or_skip("a_late_live_edit_from_the_agent_s_old_process_does_not_hide_the_end")
    else {
        return;
    };
    // Edits of a message at most every 3 s: process 1 still holds an edit
    // of the running task when its agent has moved and the task has ended.
    let mut env = env();
    env.push(("BATON_EDIT_INTERVAL_MS", "3000".to_owned()));
    let bots = Processes::start(2, &env).await;
    let mut agent = bots.agent(1).await;
    let id = bots.start_task(1, "a long job").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(&bots.store, id, "running", 20).await;
    let ts = baton_testkit::message_ts(&bots.store, id).await;
    agent.send(AgentMessage::Step {
        task,
        seq: 3,
        text: "still at it".into(),
    });
    // The step is applied (recorded by process 1) before the agent moves.
    eventually("the step to be recorded", || async {
        let t = bots.store.task(id).await.unwrap().unwrap();
        (t.last_seq >= 3).then_some(())
    })
    .await;
    agent.disconnect(bots.addr(1), 0).await;
    let agent = FakeAgent::connect_running(bots.addr(0), AGENT_KEY, 1, &[task]).await;
    agent.send(AgentMessage::Completed {
        task,
        seq: 4,
        result: TaskResult {
            text: "done".into(),
            ..Default::default()
        },
    });
    wait_state(&bots.store, id, "completed", 20).await;
    synced(&bots, id).await;
    // Past process 1's edit interval: both processes renewed their lease twice (4 s).
    bots.renewed(2, 2).await;
    let shown = bots.slack.shown(&ts).unwrap();
    assert!(shown.contains("Completed"), "the end is hidden: {shown}");
    bots.stop().await;
}

#[tokio::test]
async fn an_agent_is_welcomed_before_any_task_a_process_hands_it() {
    let Some(_) = postgres_or_skip("an_agent_is_welcomed_before_any_task_a_process_hands_it")
    else {
        return;
    };
    let bots = Processes::start(2, &env()).await;
    for round in 0..5 {
        // A task queued on process 0 as the agent says hello to process 1:
        // process 0's notification wakes process 1's dispatch at once.
        let prompt = format!("job {round}");
        let (id, mut agent) = tokio::join!(bots.start_task(0, &prompt), bots.agent(1));
        let first = tokio::time::timeout(Duration::from_secs(20), agent.frames.recv())
            .await
            .expect("a frame in time")
            .expect("the connection is open");
        assert!(
            matches!(first, BotMessage::Welcome { .. }),
            "round {round}: the first frame is {first:?}"
        );
        let task = agent.submitted().await.task;
        assert_eq!(task, TaskId(id));
        agent.start(task);
        agent.complete(task, "done", "s");
        wait_state(&bots.store, id, "completed", 20).await;
        agent.disconnect(bots.addr(1), 0).await;
    }
    bots.stop().await;
}
