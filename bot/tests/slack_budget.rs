//! Slack within its limits with several real `baton-bot` processes on one
//! PostgreSQL database: one process at a time edits a task's message (the
//! holder of its agent, or the one that posted it), the others hand their
//! changes over to it; and the workspace's `chat.update` budget is shared,
//! not spent once per process. Skipped without PostgreSQL
//! (`scripts/test-postgres run cargo nextest run -p baton-bot --test slack_budget`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use baton_bot::store::Store;
use baton_shared::protocol::{AgentMessage, BotMessage};
use baton_testkit::db::postgres_or_skip;
use baton_testkit::scene::{DEADLINE, FakeAgent};
use baton_testkit::{
    AGENT_KEY, BotProcess, FakeSlack, admin, baton, eventually, fake_slack, wait_state,
};

/// `chat.update`.
const UPDATE: &str = "chat.update";
/// `chat.postMessage`.
const POST: &str = "chat.postMessage";

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `/baton TEXT` on the process at `addr`; the new task's id, read from the database.
async fn start_task(addr: SocketAddr, store: &Store, text: &str) -> i64 {
    let before = store.recent_tasks(1_000).await.unwrap().len();
    let (status, body) = baton(addr, text, "UADMIN").await;
    assert_eq!(status, 200, "{body}");
    eventually("the task to be written", || async {
        let tasks = store.recent_tasks(1_000).await.unwrap();
        (tasks.len() > before).then(|| tasks.iter().map(|t| t.id).max().unwrap())
    })
    .await
}

/// The task's message ts, once posted.
async fn message_ts(store: &Store, id: i64) -> String {
    eventually("the task's message to be posted", || async {
        store.task(id).await.unwrap().and_then(|t| t.message_ts)
    })
    .await
}

/// Two processes on one database, each calling its own fake Slack (so that
/// every call says which process made it), `web` bound to C1.
async fn two_processes(
    dir: &Path,
) -> (
    (BotProcess, Arc<FakeSlack>),
    (BotProcess, Arc<FakeSlack>),
    Store,
) {
    let (slack_a, url_a) = fake_slack().await;
    let (slack_b, url_b) = fake_slack().await;
    let a = BotProcess::start(any_port(), &url_a, dir, &[]).await;
    let b = BotProcess::start(any_port(), &url_b, dir, &[]).await;
    assert_eq!(a.db_url, b.db_url, "one database");
    let bound = admin(a.addr, "project bind web").await;
    assert!(bound.contains("project `web`"), "{bound}");
    let store = a.store().await;
    ((a, slack_a), (b, slack_b), store)
}

/// The texts the accepted edits of message `ts` showed, in order.
fn edits_of(slack: &FakeSlack, ts: &str) -> Vec<String> {
    slack
        .calls(UPDATE)
        .iter()
        .filter(|c| c.ts.as_deref() == Some(ts))
        .map(|c| baton_testkit::message_text(&c.body))
        .collect()
}

/// A task asked for on A runs on B's agent and is cancelled on A: A posts
/// its message and never edits it; every edit comes from B (the holder of
/// the agent), and none shows an older state after the cancelled one.
#[tokio::test]
async fn a_cancel_on_the_process_without_the_agent_leaves_the_edits_to_the_agent_s_holder() {
    let Some(_) = postgres_or_skip(
        "a_cancel_on_the_process_without_the_agent_leaves_the_edits_to_the_agent_s_holder",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ((a, slack_a), (b, slack_b), store) = two_processes(dir.path()).await;
    let mut agent = FakeAgent::connect_as(b.addr, AGENT_KEY, 1).await;

    let id = start_task(a.addr, &store, "a long job").await;
    let ts = message_ts(&store, id).await;
    assert_eq!(slack_a.calls(POST).len(), 1, "A posted the message");
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(&store, id, "running", 20).await;

    let (status, body) = baton(a.addr, &format!("cancel #{id}"), "UADMIN").await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = tokio::time::timeout_at(deadline, agent.frames.recv())
            .await
            .expect("the cancel reaches the agent")
            .expect("the connection is open");
        if matches!(got, BotMessage::Cancel { task: t } if t == task) {
            break;
        }
    }
    agent.send(AgentMessage::Cancelled { task, seq: 3 });
    wait_state(&store, id, "cancelled", 20).await;
    eventually("B to show the task cancelled", || async {
        let shown = edits_of(&slack_b, &ts);
        shown.last()?.contains("Cancelled").then_some(())
    })
    .await;
    eventually("the final state to be marked shown", || async {
        store.task(id).await.unwrap()?.slack_synced.then_some(())
    })
    .await;

    // A edits the message at most while it waits in the queue, before B
    // takes it over with its agent.
    let b_first = slack_b.attempts(UPDATE)[0].at;
    let a_edits = slack_a.attempts(UPDATE);
    assert!(
        a_edits.iter().all(|c| c.at < b_first),
        "A edited after B took the message over: {a_edits:?}"
    );
    let edits = edits_of(&slack_b, &ts);
    let first_final = edits.iter().position(|t| t.contains("Cancelled")).unwrap();
    assert!(
        edits[first_final..].iter().all(|t| t.contains("Cancelled")),
        "an older state after the cancelled one: {edits:?}"
    );
    let holder = store.agent_instance("e2e").await.unwrap();
    assert!(holder.is_some());
    assert_eq!(store.task_editor(id).await.unwrap(), holder);
    assert_eq!(slack_b.calls(POST).len(), 0, "B posted nothing more");

    b.stop().await;
    a.stop().await;
}

/// A queued task (no agent anywhere) asked for on B is cancelled on A: A
/// hands the change over and B, which posted the message, shows it.
#[tokio::test]
async fn a_change_on_a_process_that_does_not_edit_the_message_is_shown_by_the_one_that_does() {
    let Some(_) = postgres_or_skip(
        "a_change_on_a_process_that_does_not_edit_the_message_is_shown_by_the_one_that_does",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ((a, slack_a), (b, slack_b), store) = two_processes(dir.path()).await;

    let id = start_task(b.addr, &store, "wait for an agent").await;
    let ts = message_ts(&store, id).await;
    let (status, body) = baton(a.addr, &format!("cancel #{id}"), "UADMIN").await;
    assert_eq!(status, 200, "{body}");
    wait_state(&store, id, "cancelled", 20).await;
    eventually("B to show the task cancelled", || async {
        slack_b.shown(&ts)?.contains("Cancelled").then_some(())
    })
    .await;
    eventually("the final state to be marked shown", || async {
        store.task(id).await.unwrap()?.slack_synced.then_some(())
    })
    .await;
    assert!(
        slack_a.attempts(UPDATE).is_empty() && slack_a.attempts(POST).is_empty(),
        "A called Slack about the message: {:?}",
        slack_a.all_calls()
    );

    b.stop().await;
    a.stop().await;
}
