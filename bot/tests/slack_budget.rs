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
    let b_posts = slack_b.calls(POST);
    assert!(b_posts.is_empty(), "B posted a second message: {b_posts:?}");

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

/// The workspace's `chat.update` budget in the budget test: small, so that
/// two full budgets would show at once.
const PER_MINUTE: usize = 20;
/// The budget's burst for [`PER_MINUTE`] (a tenth, at most 5, at least 1).
const BURST: usize = 2;
/// Slack's window.
const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Two processes, each running a task on its own agent that reports a step
/// every 50 ms (an edit wanted every 100 ms: far more than two full budgets
/// of [`PER_MINUTE`]), for a window and 45 s more: Slack sees at most the
/// budget and its burst in any minute (two full budgets would make about 30),
/// never answers 429, the budget is used, and both processes edit after the
/// first window.
#[tokio::test]
async fn two_processes_share_the_workspace_s_update_budget() {
    let Some(_) = postgres_or_skip("two_processes_share_the_workspace_s_update_budget") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    // Slack itself: more than the budget and its burst in a minute is refused.
    slack.rate_limit(UPDATE, PER_MINUTE + BURST, WINDOW);
    let env = vec![
        ("BATON_SLACK_UPDATES_PER_MINUTE", PER_MINUTE.to_string()),
        ("BATON_EDIT_INTERVAL_MS", "100".to_owned()),
        (
            "BATON_AGENT_KEYS",
            format!("e2e:{AGENT_KEY},e2e-b:{}", baton_testkit::scene::SECOND_KEY),
        ),
    ];
    let started = tokio::time::Instant::now();
    let a = BotProcess::start(any_port(), &url, dir.path(), &env).await;
    let b = BotProcess::start(any_port(), &url, dir.path(), &env).await;
    let bound = admin(a.addr, "project bind web").await;
    assert!(bound.contains("project `web`"), "{bound}");
    let store = a.store().await;
    let mut agent_a = FakeAgent::connect_as(a.addr, AGENT_KEY, 1).await;
    let mut agent_b = FakeAgent::connect_as(b.addr, baton_testkit::scene::SECOND_KEY, 1).await;

    let id_a = start_task(a.addr, &store, "chatty job one").await;
    let task_a = agent_a.submitted().await.task;
    let id_b = start_task(b.addr, &store, "chatty job two").await;
    let task_b = agent_b.submitted().await.task;
    agent_a.send(AgentMessage::Accepted {
        task: task_a,
        seq: 1,
    });
    agent_b.send(AgentMessage::Accepted {
        task: task_b,
        seq: 1,
    });
    wait_state(&store, id_a, "running", 20).await;
    wait_state(&store, id_b, "running", 20).await;
    let ts_a = message_ts(&store, id_a).await;
    let ts_b = message_ts(&store, id_b).await;

    // Steps for a window and most of another: two full budgets would
    // overspend by then.
    let hold_over = started + WINDOW;
    let end = hold_over + std::time::Duration::from_secs(45);
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(50));
    let mut seq = 2;
    while tokio::time::Instant::now() < end {
        pace.tick().await;
        for (agent, task) in [(&agent_a, task_a), (&agent_b, task_b)] {
            agent.send(AgentMessage::Step {
                task,
                seq,
                text: format!("step {seq}"),
            });
        }
        seq += 1;
    }
    let steps = seq - 2;
    assert!(
        steps as usize > 4 * PER_MINUTE,
        "enough output to overspend two budgets: {steps} steps"
    );

    let attempts = slack.attempts(UPDATE);
    let refused: Vec<_> = attempts.iter().filter(|c| c.error.is_some()).collect();
    assert!(refused.is_empty(), "Slack refused edits: {refused:?}");
    for (i, first) in attempts.iter().enumerate() {
        let in_window = attempts[i..]
            .iter()
            .take_while(|c| c.at - first.at < WINDOW)
            .count();
        assert!(
            in_window <= PER_MINUTE + BURST,
            "{in_window} edits in a minute with a budget of {PER_MINUTE}"
        );
    }
    let last_minute = attempts.iter().filter(|c| end - c.at < WINDOW).count();
    assert!(
        last_minute >= PER_MINUTE / 2,
        "the budget is used, not starved: {last_minute} edits in the last minute"
    );
    let late = |ts: &str| {
        attempts
            .iter()
            .filter(|c| c.ts.as_deref() == Some(ts) && c.at >= hold_over)
            .count()
    };
    assert!(
        late(&ts_a) >= 1 && late(&ts_b) >= 1,
        "each process edits its task after the first window: {} and {}",
        late(&ts_a),
        late(&ts_b)
    );

    b.stop().await;
    a.stop().await;
}
