//! Several real `baton-bot` processes on one PostgreSQL database, with fake
//! agents over real WebSockets: a task or a cancel that reaches one process
//! is handed to the process that holds the agent; a restart or a `kill -9`
//! of a process never makes a task run twice nor end as "agent lost" while
//! its agent is connected somewhere. Skipped without PostgreSQL
//! (`scripts/test-postgres run cargo nextest run -p baton-bot --test scale_out`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use baton_bot::store::Store;

use baton_migrations::{Migrator, MigratorTrait};
use baton_shared::TaskId;
use baton_shared::protocol::{AgentMessage, BotMessage};
use baton_testkit::db::postgres_or_skip;
// The helpers the tests here defined before [`Processes`] (tests may still call them).
use baton_testkit::processes::{Processes, ttl_in_renewals};
#[allow(unused_imports)]
use baton_testkit::processes::{any_port, frame, leases, renewed, start_task};
use baton_testkit::scene::{DEADLINE, FakeAgent};
use baton_testkit::{
    AGENT_KEY, BotProcess, admin, baton, eventually, fake_slack, http, wait_agents, wait_state,
};
use sea_orm::{ConnectionTrait, Statement};

/// Settings of every process here: an agent gone for a second is lost, so
/// that a process wrongly taking another's task over would fail it at once.
fn env() -> Vec<(&'static str, String)> {
    vec![("BATON_AGENT_GRACE_SECS", "1".to_owned())]
}

/// Two processes on one database, `web` bound to C1, the agent connected to
/// the second; the first has no agent.
#[allow(dead_code)] // for tests written before [`two`]
async fn two_processes(dir: &Path, slack_url: &str) -> (BotProcess, BotProcess, FakeAgent) {
    let a = BotProcess::start(any_port(), slack_url, dir, &env()).await;
    let b = BotProcess::start(any_port(), slack_url, dir, &env()).await;
    assert_eq!(a.db_url, b.db_url, "one database");
    let agent = FakeAgent::connect_as(b.addr, AGENT_KEY, 1).await;
    let bound = admin(a.addr, "project bind web").await;
    assert!(bound.contains("project `web`"), "{bound}");
    (a, b, agent)
}

/// Two processes with the settings of [`env`], `web` bound to C1, the agent
/// connected to the second (process 1); the first (process 0) has no agent.
async fn two() -> (Processes, FakeAgent) {
    let bots = Processes::start(2, &env()).await;
    let agent = bots.agent(1).await;
    (bots, agent)
}

#[tokio::test]
async fn a_task_queued_on_one_process_runs_on_the_agent_of_another() {
    let Some(_) = postgres_or_skip("a_task_queued_on_one_process_runs_on_the_agent_of_another")
    else {
        return;
    };
    let (bots, mut agent) = two().await;
    let store = &bots.store;

    let id = bots.start_task(0, "fix the flaky test").await;
    let submit = agent.submitted().await;
    assert_eq!(submit.task, TaskId(id));
    agent.start(submit.task);
    agent.complete(submit.task, "fixed", "s1");
    wait_state(store, id, "completed", 20).await;
    let task = store.task(id).await.unwrap().unwrap();
    assert_eq!(task.agent.as_deref(), Some("e2e"));
    assert_eq!(task.result.as_deref(), Some("fixed"));

    bots.stop().await;
}

#[tokio::test]
async fn a_cancel_on_one_process_reaches_the_agent_on_another() {
    let Some(_) = postgres_or_skip("a_cancel_on_one_process_reaches_the_agent_on_another") else {
        return;
    };
    let (bots, mut agent) = two().await;
    let store = &bots.store;
    let id = bots.start_task(1, "a long job").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(store, id, "running", 20).await;

    let (status, body) = baton(bots.addr(0), &format!("cancel #{id}"), "UADMIN").await;
    assert_eq!(status, 200, "{body}");
    frame(&mut agent, |f| {
        matches!(f, BotMessage::Cancel { task: t } if *t == task).then_some(())
    })
    .await;
    agent.send(AgentMessage::Cancelled { task, seq: 3 });
    wait_state(store, id, "cancelled", 20).await;

    bots.stop().await;
}

#[tokio::test]
async fn a_restart_of_one_process_leaves_the_other_s_running_task_alone() {
    let Some(_) =
        postgres_or_skip("a_restart_of_one_process_leaves_the_other_s_running_task_alone")
    else {
        return;
    };
    let (mut bots, mut agent) = two().await;
    let id = bots.start_task(0, "a long job").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(&bots.store, id, "running", 20).await;

    // Process 0 stops and starts again while process 1's agent runs the task.
    bots.stop_one(0).await;
    bots.restart(0).await;
    bots.renewed(2, 2).await;
    let store = &bots.store;
    let now = store.task(id).await.unwrap().unwrap();
    assert_eq!(
        (now.state.as_str(), now.error),
        ("running", None),
        "the restarted process took the task over"
    );

    agent.complete(task, "done", "s1");
    wait_state(store, id, "completed", 20).await;
    let done = store.task(id).await.unwrap().unwrap();
    assert_eq!(
        (done.result.as_deref(), done.failure_cause),
        (Some("done"), None)
    );
    assert_eq!(store.recent_tasks(10).await.unwrap().len(), 1, "ran once");

    bots.stop().await;
}

#[tokio::test]
async fn a_killed_process_s_agent_moves_and_its_task_ends_once() {
    let Some(_) = postgres_or_skip("a_killed_process_s_agent_moves_and_its_task_ends_once") else {
        return;
    };
    let (mut bots, mut agent) = two().await;
    let id = bots.start_task(0, "a long job").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(&bots.store, id, "running", 20).await;

    // kill -9 of process 1: its agent comes back on process 0, still running the task.
    bots.kill(1).await;
    let mut agent = FakeAgent::connect_running(bots.addr(0), AGENT_KEY, 1, &[task]).await;
    agent.send(AgentMessage::Step {
        task,
        seq: 3,
        text: "still at it".into(),
    });
    agent.send(AgentMessage::Completed {
        task,
        seq: 4,
        result: baton_shared::protocol::TaskResult {
            text: "done".into(),
            ..Default::default()
        },
    });
    frame(&mut agent, |f| {
        matches!(f, BotMessage::Ack { task: t, .. } if *t == task).then_some(())
    })
    .await;
    let store = &bots.store;
    wait_state(store, id, "completed", 20).await;
    let done = store.task(id).await.unwrap().unwrap();
    assert_eq!(
        (done.result.as_deref(), done.error, done.failure_cause),
        (Some("done"), None, None)
    );
    assert_eq!(store.recent_tasks(10).await.unwrap().len(), 1, "ran once");
    // Once process 1's lease ran out (0 renewed past it), its task is still ended once.
    bots.renewed(1, ttl_in_renewals() + 1).await;
    assert_eq!(
        store.task(id).await.unwrap().unwrap().state,
        "completed",
        "ended once"
    );

    bots.stop().await;
}

#[tokio::test]
async fn a_retry_on_one_process_runs_on_the_agent_of_another() {
    let Some(_) = postgres_or_skip("a_retry_on_one_process_runs_on_the_agent_of_another") else {
        return;
    };
    let (bots, mut agent) = two().await;
    let store = &bots.store;
    let id = bots.start_task(1, "flaky job").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    agent.send(AgentMessage::Failed {
        task,
        seq: 3,
        error: "exit 1".into(),
        cause: baton_shared::protocol::FailureCause::Task,
        session_id: None,
    });
    wait_state(store, id, "failed", 20).await;

    let (status, body) = baton(bots.addr(0), &format!("retry #{id}"), "UADMIN").await;
    assert_eq!(status, 200, "{body}");
    let again = agent.submitted().await.task;
    assert_ne!(again, task, "a new task");
    assert_eq!(
        store.task(id).await.unwrap().unwrap().retried_as,
        Some(again.0)
    );
    agent.start(again);
    agent.complete(again, "passed this time", "s2");
    wait_state(store, again.0, "completed", 20).await;

    bots.stop().await;
}

#[tokio::test]
async fn admin_actions_on_one_process_reach_the_agent_on_another() {
    let Some(_) = postgres_or_skip("admin_actions_on_one_process_reach_the_agent_on_another")
    else {
        return;
    };
    let (bots, mut agent) = two().await;
    let answer = admin(bots.addr(0), "health reset e2e").await;
    assert!(
        answer.contains("is closed"),
        "reset where it is held: {answer}"
    );
    let answer = admin(bots.addr(0), "agent revoke e2e").await;
    assert!(answer.contains("is revoked"), "{answer}");
    // Process 1 closes the connection: the agent's frames end.
    let closed = tokio::time::timeout(DEADLINE, async {
        while agent.frames.recv().await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the agent is still connected to process 1");
    wait_agents(bots.addr(1), 0).await;

    bots.stop().await;
}

#[tokio::test]
async fn a_dead_process_s_task_is_taken_over_once_its_lease_expires() {
    let Some(_) = postgres_or_skip("a_dead_process_s_task_is_taken_over_once_its_lease_expires")
    else {
        return;
    };
    let (mut bots, mut agent) = two().await;
    let id = bots.start_task(0, "a long job").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(&bots.store, id, "running", 20).await;

    // Process 1 dies and its agent never comes back: once its lease has
    // expired, process 0 takes the task over, waits the grace period, and
    // fails it as lost.
    bots.kill(1).await;
    drop(agent);
    bots.renewed(1, ttl_in_renewals() + 2).await;
    let store = &bots.store;
    wait_state(store, id, "failed", 20).await;
    let failed = store.task(id).await.unwrap().unwrap();
    assert_eq!(failed.failure_cause.as_deref(), Some("agent_lost"));
    assert!(
        failed.error.as_deref().unwrap_or("").contains("agent lost"),
        "{:?}",
        failed.error
    );

    bots.stop().await;
}

#[tokio::test]
async fn three_processes_started_at_once_migrate_once() {
    let Some(_) = postgres_or_skip("three_processes_started_at_once_migrate_once") else {
        return;
    };
    let bots = Processes::start_at_once(3, &[]).await;
    for i in 0..3 {
        assert_eq!(http(bots.addr(i), "GET", "/readyz", &[], "").await.0, 200);
    }
    let db = bots.store.connection();
    let applied = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await
        .unwrap()
        .len();
    assert_eq!(applied, Migrator::migrations().len(), "each migration once");
    assert_eq!(bots.leases().await.len(), 3, "three processes registered");
    let store = bots.store.clone();
    bots.stop().await;
    assert!(leases(&store).await.is_empty(), "each removed its lease");
}

/// A click on Approve or Deny of request `request` of task `id`, on the
/// process at `addr`, by `user`, as Slack signs it.
async fn click_approval(addr: SocketAddr, action: &str, id: i64, request: u32, user: &str) {
    let payload = serde_json::json!({
        "type": "block_actions",
        "team": {"id": "T1"},
        "user": {"id": user},
        "channel": {"id": "C1"},
        "container": {"type": "message", "channel_id": "C1"},
        "actions": [{
            "type": "button",
            "block_id": "b",
            "action_id": action,
            "value": format!("{id}:{request}"),
            "action_ts": "1700000000.1",
        }],
    })
    .to_string();
    let (status, body) = baton_testkit::post_signed(
        addr,
        "/slack/interactions",
        &[("payload", payload.as_str())],
        baton_testkit::SIGNING_SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A running task on the agent of B whose agent asked request 1; its id.
async fn waiting_for_approval(a: &BotProcess, agent: &mut FakeAgent, store: &Store) -> TaskId {
    let id = start_task(a.addr, store, "clean the build").await;
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(store, id, "running", 20).await;
    agent.send(AgentMessage::ApprovalRequest {
        task,
        request: 1,
        tool: "Bash".into(),
        input: "rm -rf build/".into(),
    });
    eventually("the request to be recorded", || async {
        store.approval(id, 1).await.unwrap().map(|_| ())
    })
    .await;
    task
}

/// The approval decisions the agent is sent, until `want` is among them.
async fn decision(
    agent: &mut FakeAgent,
    task: TaskId,
) -> (u32, baton_shared::protocol::Decision, Option<String>) {
    frame(agent, |f| match f {
        BotMessage::ApprovalDecision {
            task: t,
            request,
            decision,
            by,
        } if *t == task => Some((*request, *decision, by.clone())),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn an_approval_decided_on_one_process_reaches_the_agent_on_another() {
    let Some(_) =
        postgres_or_skip("an_approval_decided_on_one_process_reaches_the_agent_on_another")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let (a, b, mut agent) = two_processes(dir.path(), &url).await;
    let store = a.store().await;
    let task = waiting_for_approval(&a, &mut agent, &store).await;

    // Approve is clicked on A, which does not hold the agent: B sends it.
    click_approval(a.addr, "baton_approve", task.0, 1, "UADMIN").await;
    assert_eq!(
        decision(&mut agent, task).await,
        (
            1,
            baton_shared::protocol::Decision::Approved,
            Some("UADMIN".into())
        )
    );
    let row = eventually("the decision recorded as sent", || async {
        store
            .approval(task.0, 1)
            .await
            .unwrap()
            .filter(|r| r.delivered)
    })
    .await;
    assert_eq!(row.state(), baton_bot::model::ApprovalState::Approved);

    agent.complete(task, "clean", "s1");
    wait_state(&store, task.0, "completed", 20).await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_decision_whose_notification_was_missed_reaches_the_agent_by_the_poll() {
    let Some(_) =
        postgres_or_skip("a_decision_whose_notification_was_missed_reaches_the_agent_by_the_poll")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let (a, b, mut agent) = two_processes(dir.path(), &url).await;
    let store = a.store().await;
    let task = waiting_for_approval(&a, &mut agent, &store).await;

    // Decided in the database with no notification at all (as if the
    // listener's connection had dropped): B's poll sends it.
    let db = store.connection();
    db.execute(Statement::from_sql_and_values(
        db.get_database_backend(),
        "UPDATE approvals SET state = 'denied', decided_by = 'U2', decided_at = 1 \
         WHERE task_id = $1 AND request = 1",
        [task.0.into()],
    ))
    .await
    .unwrap();
    assert_eq!(
        decision(&mut agent, task).await,
        (
            1,
            baton_shared::protocol::Decision::Denied,
            Some("U2".into())
        )
    );
    eventually("the decision recorded as sent", || async {
        store
            .approval(task.0, 1)
            .await
            .unwrap()
            .filter(|r| r.delivered)
            .map(|_| ())
    })
    .await;

    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn health_on_one_process_shows_the_agent_connected_to_another() {
    let Some(_) = postgres_or_skip("health_on_one_process_shows_the_agent_connected_to_another")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let (a, b, _agent) = two_processes(dir.path(), &url).await;
    let store = a.store().await;
    let held_by = store.agent_instance("e2e").await.unwrap().expect("held");

    let on_a = admin(a.addr, "health").await;
    assert!(
        on_a.contains(&format!("*e2e*: connected to process `{held_by}`")),
        "{on_a}"
    );
    assert!(
        on_a.contains("not shown here"),
        "says what it cannot know: {on_a}"
    );
    let on_b = admin(b.addr, "health").await;
    assert!(
        on_b.contains(&format!("*e2e*: connected · on this process `{held_by}`")),
        "{on_b}"
    );
    let agents = admin(a.addr, "agents").await;
    assert!(agents.contains("*e2e*: connected"), "{agents}");

    // B stops: nobody holds the agent, and A says so.
    b.stop().await;
    let gone = eventually("the agent let go", || async {
        let health = admin(a.addr, "health").await;
        health.contains("*e2e*: not connected").then_some(health)
    })
    .await;
    assert!(!gone.contains(&held_by), "{gone}");
    a.stop().await;
}
