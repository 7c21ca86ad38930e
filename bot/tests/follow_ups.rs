//! Follow-ups while a task runs (issue 15, item 2): a thread reply sent while
//! the thread's task has not ended is kept and runs when it ends, in order,
//! resuming the session on the agent that holds it; it survives a restart of
//! the bot. Driven the way Slack drives the bot (signed requests, the fake
//! Slack's Web API) with agents speaking the wire protocol over real
//! WebSockets. Every wait is for an observable outcome, with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_shared::TaskId;
use baton_shared::protocol::{AgentMessage, BotMessage};
use baton_testkit::scene::*;
use baton_testkit::*;
use serde_json::Value;

/// A reply by `user` in the thread of `root`; `n` makes its event id and ts.
async fn reply(rig: &Scene, n: u32, user: &str, text: &str, root: &str) {
    rig.event(
        &format!("EvReply{n}"),
        message(user, text, &format!("1700000300.{n:06}"), Some(root)),
        None,
    )
    .await;
}

/// The thread's note about kept task `id`, once posted.
async fn note(rig: &Scene, root: &str, id: i64) -> String {
    let wanted = format!("will run as task #{id} ");
    eventually(&format!("the thread's note about #{id}"), || async {
        rig.slack
            .thread(root)
            .into_iter()
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .find(|t| t.contains(&wanted))
    })
    .await
}

/// Task #1, `plan the migration` by U1, running on `agent`; its thread's root.
async fn first_task_running(rig: &Scene, agent: &mut FakeAgent) -> String {
    rig.baton("plan the migration", "U1").await;
    let first = agent.submitted().await;
    assert_eq!(first.task, TaskId(1));
    agent.start(first.task);
    rig.task_when(1, "task #1 running", |t| t.state == "running")
        .await;
    rig.message_ts(1).await
}

/// A reply while the task runs is kept (queued, waiting for it, its message
/// and the thread say so, mentioning the person) and starts only once the
/// task has ended, resuming the session it made, on its agent even though
/// the other agent is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_while_the_task_runs_is_kept_and_runs_after_it_in_its_session() {
    let rig = Scene::start_with(two_agents).await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    let root = first_task_running(&rig, &mut a).await;
    let mut b = FakeAgent::connect_as(rig.addr(), SECOND_KEY, 2).await;

    reply(&rig, 1, "U1", "now do step one", &root).await;
    let kept = rig
        .task_when(2, "the kept reply's message", |t| t.message_ts.is_some())
        .await;
    assert_eq!(
        (
            kept.state.as_str(),
            kept.after_task,
            kept.parent_id,
            kept.thread_ts.as_deref()
        ),
        ("queued", Some(1), Some(1), Some(root.as_str()))
    );
    assert_eq!(kept.agent, None);
    let shown = rig
        .shows(
            kept.message_ts.as_deref().unwrap(),
            "will run when #1 finishes",
        )
        .await;
    assert!(button(&shown, "Cancel").is_some(), "it can be cancelled");
    let said = note(&rig, &root, 2).await;
    assert!(
        said.contains("<@U1> Your reply will run as task #2 when #1 finishes"),
        "{said}"
    );
    let queue = rig.baton("queue", "U1").await;
    assert!(
        queue.contains("*#2*") && queue.contains("will run when #1 finishes"),
        "{queue}"
    );

    // The idle agent takes newer work, never the kept reply.
    rig.baton("update the changelog", "U1").await;
    let other = b.submitted().await;
    assert_eq!(other.task, TaskId(3));
    b.start(other.task);
    b.complete(other.task, "done", "sess-b");
    rig.task_when(3, "task #3 completed", |t| t.state == "completed")
        .await;
    assert_eq!(
        rig.store.task(2).await.unwrap().unwrap().state,
        "queued",
        "it waits while #1 runs"
    );

    // #1 ends: the reply runs, in #1's session, on #1's agent.
    a.complete(TaskId(1), "the plan", "sess-1");
    let second = a.submitted().await;
    assert_eq!(second.task, TaskId(2));
    assert_eq!(second.session_id.as_deref(), Some("sess-1"));
    assert_eq!(second.prompt, "now do step one");
    let first = rig.store.task(1).await.unwrap().unwrap();
    let second = rig
        .task_when(2, "the reply dispatched", |t| t.state != "queued")
        .await;
    assert_eq!(
        (
            second.agent.as_deref(),
            second.session_agent.as_deref(),
            second.after_task
        ),
        (Some("e2e"), Some("e2e"), None)
    );
    assert!(
        second.dispatched_at.unwrap() >= first.finished_at.unwrap(),
        "started only after the first run ended"
    );
    a.start(TaskId(2));
    a.complete(TaskId(2), "step one done", "sess-2");
    rig.task_when(2, "the reply completed", |t| t.state == "completed")
        .await;
    rig.stop().await;
}

/// Two replies while the task runs: each runs after the one before, in the
/// session the one before made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replies_run_in_order_each_after_the_one_before() {
    let rig = Scene::start().await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    let root = first_task_running(&rig, &mut a).await;

    reply(&rig, 1, "U1", "step one", &root).await;
    rig.task_when(2, "the first reply kept", |t| t.after_task == Some(1))
        .await;
    reply(&rig, 2, "UADMIN", "step two", &root).await;
    let third = rig
        .task_when(3, "the second reply kept", |t| t.message_ts.is_some())
        .await;
    assert_eq!(
        (third.after_task, third.requester.as_str()),
        (Some(2), "UADMIN")
    );
    let said = note(&rig, &root, 3).await;
    assert!(
        said.contains("<@UADMIN> Your reply will run as task #3 when #2 finishes"),
        "{said}"
    );

    a.complete(TaskId(1), "the plan", "sess-1");
    let second = a.submitted().await;
    assert_eq!(
        (
            second.task,
            second.session_id.as_deref(),
            second.prompt.as_str()
        ),
        (TaskId(2), Some("sess-1"), "step one")
    );
    // #2 has not ended: #3 still waits for it.
    let waiting = rig.store.task(3).await.unwrap().unwrap();
    assert_eq!(
        (waiting.state.as_str(), waiting.after_task),
        ("queued", Some(2))
    );

    a.start(TaskId(2));
    a.complete(TaskId(2), "step one done", "sess-2");
    let next = a.submitted().await;
    assert_eq!(
        (next.task, next.session_id.as_deref(), next.prompt.as_str()),
        (TaskId(3), Some("sess-2"), "step two")
    );
    let second = rig.store.task(2).await.unwrap().unwrap();
    let third = rig
        .task_when(3, "the second reply dispatched", |t| t.state != "queued")
        .await;
    assert!(third.dispatched_at.unwrap() >= second.finished_at.unwrap());
    a.start(TaskId(3));
    a.complete(TaskId(3), "step two done", "sess-3");
    rig.task_when(3, "the second reply completed", |t| t.state == "completed")
        .await;
    rig.stop().await;
}

/// A follow-up resuming a session goes only to the agent that made it: it
/// waits while that agent is busy (its message and `/baton queue` say for
/// whom) without holding up the tasks queued behind it, and the other agent,
/// idle, never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_waits_for_the_busy_agent_holding_its_session() {
    let rig = Scene::start_with(two_agents).await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    let root = first_task_running(&rig, &mut a).await;
    a.complete(TaskId(1), "the plan", "sess-1");
    rig.task_when(1, "task #1 completed", |t| t.state == "completed")
        .await;
    // Agent e2e is busy with other work when the reply comes.
    rig.baton("update the changelog", "U1").await;
    assert_eq!(a.submitted().await.task, TaskId(2));
    a.start(TaskId(2));

    reply(&rig, 1, "U1", "now do step one", &root).await;
    let pinned = rig
        .task_when(3, "the follow-up's message", |t| t.message_ts.is_some())
        .await;
    assert_eq!(
        (
            pinned.state.as_str(),
            pinned.after_task,
            pinned.session_agent.as_deref(),
            pinned.session_id.as_deref()
        ),
        ("queued", None, Some("e2e"), Some("sess-1"))
    );
    rig.shows(
        pinned.message_ts.as_deref().unwrap(),
        "waiting for agent `e2e`, which holds this thread's session",
    )
    .await;
    let queue = rig.baton("queue", "U1").await;
    assert!(
        queue.contains("*#3*") && queue.contains("waiting for agent `e2e`"),
        "{queue}"
    );
    // A task queued behind it goes to the second agent when it connects; the
    // follow-up does not, then nor once that agent is idle again.
    rig.baton("fix the footer", "U1").await;
    rig.task_when(4, "task #4 queued", |t| t.message_ts.is_some())
        .await;
    let mut b = FakeAgent::connect_as(rig.addr(), SECOND_KEY, 2).await;
    let other = b.submitted().await;
    assert_eq!(other.task, TaskId(4));
    b.start(other.task);
    b.complete(other.task, "done", "sess-b");
    rig.task_when(4, "task #4 completed", |t| t.state == "completed")
        .await;
    assert_eq!(rig.store.task(3).await.unwrap().unwrap().state, "queued");

    a.complete(TaskId(2), "changelog updated", "sess-2");
    let follow_up = a.submitted().await;
    assert_eq!(
        (follow_up.task, follow_up.session_id.as_deref()),
        (TaskId(3), Some("sess-1"))
    );
    let row = rig
        .task_when(3, "the follow-up dispatched", |t| t.state != "queued")
        .await;
    assert_eq!(row.agent.as_deref(), Some("e2e"));
    a.start(TaskId(3));
    a.complete(TaskId(3), "step one done", "sess-3");
    rig.task_when(3, "the follow-up completed", |t| t.state == "completed")
        .await;
    rig.stop().await;
}

/// A kept reply survives a crash of the bot: after the restart, when the
/// task it waits for ends, it runs in that task's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_reply_runs_after_a_restart_of_the_bot() {
    let rig = Scene::start().await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    let root = first_task_running(&rig, &mut a).await;
    reply(&rig, 1, "U1", "now do step one", &root).await;
    rig.task_when(2, "the kept reply's message", |t| t.message_ts.is_some())
        .await;
    note(&rig, &root, 2).await;

    let Scene {
        slack,
        slack_url,
        bot,
        store,
        dir,
    } = rig;
    let addr = bot.addr;
    bot.kill().await;
    drop(a);
    let bot = Bot::restart(addr, &slack_url, dir.path(), |_| {}).await;
    let rig = Scene {
        slack,
        slack_url,
        bot,
        store,
        dir,
    };
    // The agent comes back, still running #1, and finishes it.
    let mut a = FakeAgent::connect_running(addr, AGENT_KEY, 1, &[TaskId(1)]).await;
    assert_eq!(
        rig.store.task(2).await.unwrap().unwrap().after_task,
        Some(1),
        "still waiting after the restart"
    );
    a.complete(TaskId(1), "the plan", "sess-1");
    let second = a.submitted().await;
    assert_eq!(
        (
            second.task,
            second.session_id.as_deref(),
            second.prompt.as_str()
        ),
        (TaskId(2), Some("sess-1"), "now do step one")
    );
    a.start(TaskId(2));
    a.complete(TaskId(2), "step one done", "sess-2");
    rig.task_when(2, "the reply completed", |t| t.state == "completed")
        .await;
    rig.bot.stop().await;
}

/// Cancelling the task a reply waits for does not cancel the reply; a kept
/// reply is cancelled like a queued task; the next one then waits for what
/// still runs in the thread, and runs in the session there is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_leave_the_other_kept_replies_to_run_in_turn() {
    let rig = Scene::start().await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    let root = first_task_running(&rig, &mut a).await;
    a.complete(TaskId(1), "the plan", "sess-1");
    // A follow-up runs #2 in the session; two more replies wait behind it.
    reply(&rig, 1, "U1", "step one", &root).await;
    let second = a.submitted().await;
    assert_eq!(
        (second.task, second.session_id.as_deref()),
        (TaskId(2), Some("sess-1"))
    );
    a.start(TaskId(2));
    rig.task_when(2, "#2 running", |t| t.state == "running")
        .await;
    reply(&rig, 2, "U1", "step two", &root).await;
    rig.task_when(3, "#3 kept", |t| t.after_task == Some(2))
        .await;
    reply(&rig, 3, "U1", "step three", &root).await;
    rig.task_when(4, "#4 kept", |t| t.after_task == Some(3))
        .await;

    // The waiting #3 is cancelled like a queued task.
    let answer = rig.baton("cancel 3", "U1").await;
    assert!(answer.contains("removed from the queue"), "{answer}");
    rig.task_when(3, "#3 cancelled and no longer waiting", |t| {
        t.state == "cancelled" && t.after_task.is_none()
    })
    .await;
    // #4 now waits for #2, which still runs, and says so.
    let fourth = rig
        .task_when(4, "#4 waiting for #2", |t| t.after_task == Some(2))
        .await;
    rig.shows(
        fourth.message_ts.as_deref().unwrap(),
        "will run when #2 finishes",
    )
    .await;

    // #2 is cancelled: #4 still runs, in the thread's session.
    rig.baton("cancel 2", "U1").await;
    tokio::time::timeout(DEADLINE, async {
        loop {
            match a.frames.recv().await.expect("the connection is open") {
                BotMessage::Cancel { task: TaskId(2) } => break,
                _ => continue,
            }
        }
    })
    .await
    .expect("the cancel reaches the agent in time");
    a.send(AgentMessage::Cancelled {
        task: TaskId(2),
        seq: 3,
    });
    let next = a.submitted().await;
    assert_eq!(
        (next.task, next.session_id.as_deref(), next.prompt.as_str()),
        (TaskId(4), Some("sess-1"), "step three")
    );
    assert_eq!(rig.store.task(2).await.unwrap().unwrap().state, "cancelled");
    a.start(TaskId(4));
    a.complete(TaskId(4), "step three done", "sess-4");
    rig.task_when(4, "#4 completed", |t| t.state == "completed")
        .await;
    rig.stop().await;
}

/// Someone who may not continue the thread's task (not its requester, not an
/// admin) is told so privately, and nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsiders_reply_is_refused_and_nothing_is_kept() {
    let rig = Scene::start().await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    let root = first_task_running(&rig, &mut a).await;
    reply(&rig, 1, "U2", "do something else", &root).await;
    let refused: Value = eventually("the refusal", || async {
        rig.ephemerals("U2").into_iter().next()
    })
    .await;
    let text = refused["text"].as_str().unwrap();
    assert!(
        text.contains("Only the person who started task #1 (or an admin)"),
        "{text}"
    );
    assert_eq!(rig.task_count().await, 1);
    assert!(
        !rig.slack
            .thread(&root)
            .iter()
            .any(|m| m["text"].as_str().is_some_and(|t| t.contains("will run"))),
        "no note in the thread"
    );
    a.complete(TaskId(1), "the plan", "sess-1");
    rig.task_when(1, "#1 completed", |t| t.state == "completed")
        .await;
    rig.stop().await;
}
