//! Approval requests, end to end: a fake agent asks over a real WebSocket,
//! the task's message on the fake Slack shows the request with its buttons,
//! clicks arrive signed like Slack signs them, and the decision is a frame
//! on the agent's socket and a row in the database. Every wait is for an
//! observable outcome, with a deadline; the timeout runs on an injected clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use baton_bot::clock::ManualWallClock;
use baton_bot::model::ApprovalState;
use baton_shared::TaskId;
use baton_shared::protocol::{AgentMessage, BotMessage, Decision, ErrorCode};
use baton_testkit::scene::*;
use baton_testkit::*;
use sea_orm::ConnectionTrait;
use serde_json::Value;

/// A task id no agent holds: a request for it is refused, which serves as
/// a barrier (every frame the bot sent before that refusal has arrived).
const NOBODYS_TASK: TaskId = TaskId(9_999);

/// Starts a task for `requester` with `prompt`, has the agent accept it,
/// and returns its id and message ts once it shows running.
async fn running_task(
    rig: &Scene,
    agent: &mut FakeAgent,
    prompt: &str,
    requester: &str,
) -> (TaskId, String) {
    assert_eq!(rig.baton(prompt, requester).await, "");
    let task = agent.submitted().await.task;
    agent.start(task);
    rig.task_when(task.0, "the task running", |t| t.state == "running")
        .await;
    let ts = rig.message_ts(task.0).await;
    (task, ts)
}

/// The agent asks request `request` of `task`.
fn ask(agent: &FakeAgent, task: TaskId, request: u32, tool: &str, input: &str) {
    agent.send(AgentMessage::ApprovalRequest {
        task,
        request,
        tool: tool.into(),
        input: input.into(),
    });
}

/// The frames the bot sends the agent until its refusal of a request for
/// [`NOBODYS_TASK`], which the agent asks for now.
async fn frames_until_barrier(agent: &mut FakeAgent) -> Vec<BotMessage> {
    ask(agent, NOBODYS_TASK, 1, "Bash", "barrier");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let frame = tokio::time::timeout_at(deadline, agent.frames.recv())
            .await
            .unwrap_or_else(|_| panic!("no barrier in time; frames so far: {seen:?}"))
            .expect("the connection is open");
        if let BotMessage::Error { message, .. } = &frame
            && message.contains(&NOBODYS_TASK.to_string())
        {
            return seen;
        }
        seen.push(frame);
    }
}

/// The approval decisions among `frames`.
fn decisions(frames: &[BotMessage]) -> Vec<(TaskId, u32, Decision, Option<String>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            BotMessage::ApprovalDecision {
                task,
                request,
                decision,
                by,
            } => Some((*task, *request, *decision, by.clone())),
            _ => None,
        })
        .collect()
}

/// Waits for the agent's next approval decision (other frames are skipped).
async fn next_decision(agent: &mut FakeAgent) -> (TaskId, u32, Decision, Option<String>) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let frame = tokio::time::timeout_at(deadline, agent.frames.recv())
            .await
            .expect("a decision in time")
            .expect("the connection is open");
        if let Some(d) = decisions(&[frame]).pop() {
            return d;
        }
    }
}

/// The thread replies of `ts` about request `request` of `task`.
fn notices(rig: &Scene, ts: &str, task: TaskId, request: u32) -> Vec<Value> {
    let marker = baton_bot::app::notice_marker(task.0, request);
    rig.slack
        .thread(ts)
        .into_iter()
        .filter(|m| {
            m["blocks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["block_id"] == marker.as_str())
        })
        .collect()
}

/// Waits until message `ts` shows the button `label` of the request `value` names.
async fn shown_button(rig: &Scene, ts: &str, label: &str, value: &str) -> Value {
    eventually(&format!("{label} of {value} shown"), || async {
        let body = rig.shown(ts);
        body["blocks"]
            .as_array()?
            .iter()
            .flat_map(|b| b["elements"].as_array().into_iter().flatten())
            .find(|e| e["text"]["text"] == label && e["value"] == value)
            .cloned()
    })
    .await
}

/// The stored state of request `request` of `task`, and who decided it.
async fn stored(rig: &Scene, task: TaskId, request: u32) -> (ApprovalState, Option<String>) {
    let row = rig
        .store
        .approval(task.0, request)
        .await
        .unwrap()
        .expect("the request is recorded");
    (row.state(), row.decided_by)
}

/// The message shows the request with its buttons; one thread reply
/// mentions the requester. Approved by the requester: the agent gets the
/// decision with who decided, once; the message says who and runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requester_approves_and_the_agent_hears_it_once() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let (task, ts) = running_task(&rig, &mut agent, "clean the build", "U1").await;

    ask(&agent, task, 1, "Bash", "rm -rf build/ <&>");
    let waiting = rig.shows(&ts, "Waiting for approval").await;
    let text = message_text(&waiting);
    assert!(text.contains("`Bash`"), "{text}");
    assert!(
        text.contains("rm -rf build/ &lt;&amp;&gt;"),
        "escaped: {text}"
    );
    let approve = button(&waiting, "Approve").expect("an Approve button");
    assert!(button(&waiting, "Deny").is_some(), "a Deny button");
    assert_eq!(approve["value"], "1:1");
    let notice = eventually("the thread reply", || async {
        notices(&rig, &ts, task, 1).pop()
    })
    .await;
    assert!(
        message_text(&notice).contains("<@U1>"),
        "{}",
        message_text(&notice)
    );
    // `/baton status #1` says it waits.
    let status = rig.baton("status #1", "U1").await;
    assert!(status.contains("waiting for approval"), "{status}");

    rig.click("U1", &approve).await;
    assert_eq!(
        next_decision(&mut agent).await,
        (task, 1, Decision::Approved, Some("U1".into()))
    );
    let answer = rig.ephemeral("U1", 1).await;
    assert!(answer.contains("You approved"), "{answer}");
    let after = rig.shows(&ts, "approved by <@U1>").await;
    assert!(
        button(&after, "Approve").is_none(),
        "no buttons once decided"
    );
    assert!(message_text(&after).contains("Running"));
    assert_eq!(
        stored(&rig, task, 1).await,
        (ApprovalState::Approved, Some("U1".into()))
    );
    // Once: nothing more reaches the agent, and one thread reply in all.
    assert_eq!(decisions(&frames_until_barrier(&mut agent).await), []);
    assert_eq!(notices(&rig, &ts, task, 1).len(), 1);
    let (_, metrics) = http(rig.addr(), "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("baton_approval_decisions_total{decision=\"approved\"} 1\n"),
        "{metrics}"
    );
    rig.stop().await;
}

/// A project approver may deny (a user group's member too); an admin may
/// answer; anyone else is refused with what would allow it, audited, and
/// nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_and_admins_may_answer_and_an_outsider_is_refused() {
    let rig = Scene::start().await;
    rig.slack.set_group("S7", &["U4"]);
    let set = admin(rig.addr(), "project approvers web <@U3> <!subteam^S7>").await;
    assert!(set.contains("<@U3>"), "{set}");
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let (task, ts) = running_task(&rig, &mut agent, "deploy it", "U1").await;

    // An outsider: refused, told who may and how to become one; nothing sent.
    ask(&agent, task, 1, "Bash", "make deploy");
    let waiting = rig.shows(&ts, "Waiting for approval").await;
    let deny = button(&waiting, "Deny").unwrap();
    rig.click("U9", &deny).await;
    let refused = rig.ephemeral("U9", 1).await;
    assert!(
        refused.contains("Only <@U1>")
            && refused.contains("approver of project `web`")
            && refused.contains("/baton-admin project approvers web <@U3> <!subteam^S7> <@U9>`"),
        "{refused}"
    );
    assert_eq!(stored(&rig, task, 1).await, (ApprovalState::Pending, None));
    assert_eq!(decisions(&frames_until_barrier(&mut agent).await), []);
    let audit = rig.store.audit_log(10).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.actor == "U9" && r.action == "refused.approve"),
        "{audit:?}"
    );
    assert!(button(&rig.shown(&ts), "Deny").is_some(), "still pending");

    // A project approver denies.
    rig.click("U3", &deny).await;
    assert_eq!(
        next_decision(&mut agent).await,
        (task, 1, Decision::Denied, Some("U3".into()))
    );
    rig.shows(&ts, "denied by <@U3>").await;

    // A member of an approving user group approves the next one.
    ask(&agent, task, 2, "Write", "src/main.rs");
    let waiting = shown_button(&rig, &ts, "Approve", "1:2").await;
    rig.click("U4", &waiting).await;
    assert_eq!(
        next_decision(&mut agent).await,
        (task, 2, Decision::Approved, Some("U4".into()))
    );

    // An admin answers the third.
    ask(&agent, task, 3, "Edit", "README.md");
    let waiting = shown_button(&rig, &ts, "Approve", "1:3").await;
    rig.click("UADMIN", &waiting).await;
    assert_eq!(
        next_decision(&mut agent).await,
        (task, 3, Decision::Approved, Some("UADMIN".into()))
    );
    rig.shows(&ts, "approved by <@UADMIN>").await;
    rig.stop().await;
}

/// Two clicks at the same moment (Approve and Deny): one decision, sent
/// once; the later click is told it was already decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_click_decides_once() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let (task, ts) = running_task(&rig, &mut agent, "tidy up", "U1").await;
    ask(&agent, task, 1, "Bash", "git clean -fdx");
    let waiting = rig.shows(&ts, "Waiting for approval").await;
    let (approve, deny) = (
        button(&waiting, "Approve").unwrap(),
        button(&waiting, "Deny").unwrap(),
    );
    tokio::join!(rig.click("U1", &approve), rig.click("UADMIN", &deny));

    let first = next_decision(&mut agent).await;
    let mut answers = vec![
        rig.ephemeral("U1", 1).await,
        rig.ephemeral("UADMIN", 1).await,
    ];
    answers.sort();
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.contains("no longer applies"))
            .count(),
        1,
        "{answers:?}"
    );
    let (state, by) = stored(&rig, task, 1).await;
    assert_eq!(Some(first.2), state.decision());
    assert_eq!(first.3, by);
    assert_eq!(decisions(&frames_until_barrier(&mut agent).await), []);

    // The same button again later: said so, nothing changes.
    rig.click("U1", &approve).await;
    let again = rig.ephemeral("U1", 2).await;
    assert!(again.contains("already"), "{again}");
    assert_eq!(stored(&rig, task, 1).await, (state, by));
    assert_eq!(decisions(&frames_until_barrier(&mut agent).await), []);
    rig.stop().await;
}

/// Unanswered past `BATON_APPROVAL_TIMEOUT_SECS` on the bot's (injected)
/// wall clock: timed out, sent without `by`, shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let clock = ManualWallClock::default();
    let bot = Bot::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(clock.clone()),
        &url,
        dir.path(),
        |s| s.approval_timeout_secs = 600,
    )
    .await;
    admin(bot.addr, "project bind web").await;
    let store = bot.store().await;
    let mut agent = FakeAgent::connect(bot.addr).await;
    let (status, _) = baton(bot.addr, "wait for me", "U1").await;
    assert_eq!(status, 200);
    let task = agent.submitted().await.task;
    agent.start(task);
    wait_state(&store, task.0, "running", 20).await;
    ask(&agent, task, 1, "Bash", "sleep 1");
    eventually("the request recorded", || async {
        store.approval(task.0, 1).await.unwrap()
    })
    .await;

    // Not yet: the agent hears nothing before the timeout.
    clock.advance(Duration::from_secs(599));
    assert_eq!(decisions(&frames_until_barrier(&mut agent).await), []);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        next_decision(&mut agent).await,
        (task, 1, Decision::TimedOut, None)
    );
    let row = store.approval(task.0, 1).await.unwrap().unwrap();
    assert_eq!(
        (row.state(), row.decided_by),
        (ApprovalState::TimedOut, None)
    );
    let ts = message_ts(&store, task.0).await;
    eventually("the message shows the timeout", || async {
        slack
            .calls("chat.update")
            .into_iter()
            .rev()
            .find(|c| c.body["ts"] == ts.as_str())
            .filter(|c| message_text(&c.body).contains("timed out"))
    })
    .await;
    bot.stop().await;
}

/// The bot killed while a request is pending: after the restart the
/// message still has its buttons, the click works, and the decision reaches
/// the agent once; the agent's re-sent request is not posted again and,
/// once decided, is answered with the same decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_request_survives_a_bot_restart() {
    let mut rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let (task, ts) = running_task(&rig, &mut agent, "migrate the db", "U1").await;
    ask(&agent, task, 1, "Bash", "psql -f migrate.sql");
    rig.shows(&ts, "Waiting for approval").await;
    eventually("the thread reply", || async {
        notices(&rig, &ts, task, 1).pop()
    })
    .await;
    eventually("the thread reply recorded", || async {
        rig.store
            .approval(task.0, 1)
            .await
            .unwrap()
            .filter(|a| a.posted)
    })
    .await;

    let addr = rig.addr();
    rig.bot.kill().await;
    // As if it died between posting the thread reply and recording it: the
    // new process finds the reply in the thread and does not post it again.
    rig.store
        .connection()
        .execute_unprepared("UPDATE approvals SET posted = FALSE")
        .await
        .unwrap();
    let edits_before = rig.slack.calls("chat.update").len();
    rig.bot = Bot::restart(addr, &rig.slack_url, rig.dir.path(), |_| {}).await;
    // The agent reconnects, says it still runs the task, and asks again.
    let mut agent = reconnect_running(addr, task).await;
    ask(&agent, task, 1, "Bash", "psql -f migrate.sql");
    assert_eq!(decisions(&frames_until_barrier(&mut agent).await), []);

    // The message, as the new process shows it, still has the buttons.
    let shown = eventually("the message shown again with its buttons", || async {
        let calls = rig.slack.calls("chat.update");
        calls[edits_before..]
            .iter()
            .rev()
            .find(|c| c.body["ts"] == ts.as_str())
            .map(|c| c.body.clone())
            .filter(|b| button(b, "Approve").is_some())
    })
    .await;
    eventually("the thread reply found and recorded again", || async {
        rig.store
            .approval(task.0, 1)
            .await
            .unwrap()
            .filter(|a| a.posted)
    })
    .await;
    assert_eq!(notices(&rig, &ts, task, 1).len(), 1);
    rig.click("U1", &button(&shown, "Approve").unwrap()).await;
    assert_eq!(
        next_decision(&mut agent).await,
        (task, 1, Decision::Approved, Some("U1".into()))
    );
    assert_eq!(decisions(&frames_until_barrier(&mut agent).await), []);

    // The agent reconnects again and repeats the request: the same decision,
    // and no new thread reply.
    agent.disconnect(addr, 0).await;
    let mut agent = reconnect_running(addr, task).await;
    ask(&agent, task, 1, "Bash", "psql -f migrate.sql");
    assert_eq!(
        decisions(&frames_until_barrier(&mut agent).await),
        [(task, 1, Decision::Approved, Some("U1".into()))]
    );
    assert_eq!(notices(&rig, &ts, task, 1).len(), 1);
    rig.stop().await;
}

/// An agent that connects running `task` (its hello lists it).
async fn reconnect_running(addr: std::net::SocketAddr, task: TaskId) -> FakeAgent {
    FakeAgent::connect_running(addr, AGENT_KEY, 1, &[task]).await
}

/// Two tasks wait for approval at once (two agents); each decision goes to
/// its own task's agent and message only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pending_requests_are_decided_independently() {
    let rig = Scene::start_with(two_agents).await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    let mut b = FakeAgent::connect_as(rig.addr(), SECOND_KEY, 2).await;
    assert_eq!(rig.baton("first", "U1").await, "");
    assert_eq!(rig.baton("second", "U2").await, "");
    // Each agent takes one (capacity 1 each).
    let (ta, tb) = tokio::join!(a.submitted(), b.submitted());
    let (ta, tb) = (ta.task, tb.task);
    a.start(ta);
    b.start(tb);
    for t in [ta, tb] {
        rig.task_when(t.0, "running", |row| row.state == "running")
            .await;
    }
    let (tsa, tsb) = (rig.message_ts(ta.0).await, rig.message_ts(tb.0).await);
    ask(&a, ta, 1, "Bash", "one");
    ask(&b, tb, 1, "Bash", "two");
    let wa = rig.shows(&tsa, "Waiting for approval").await;
    let wb = rig.shows(&tsb, "Waiting for approval").await;
    let requester = |t: TaskId| if t == TaskId(1) { "U1" } else { "U2" };

    rig.click(requester(tb), &button(&wb, "Deny").unwrap())
        .await;
    assert_eq!(
        next_decision(&mut b).await,
        (tb, 1, Decision::Denied, Some(requester(tb).into()))
    );
    assert_eq!(decisions(&frames_until_barrier(&mut a).await), []);
    assert_eq!(stored(&rig, ta, 1).await, (ApprovalState::Pending, None));
    assert!(button(&rig.shown(&tsa), "Approve").is_some());

    rig.click(requester(ta), &button(&wa, "Approve").unwrap())
        .await;
    assert_eq!(
        next_decision(&mut a).await,
        (ta, 1, Decision::Approved, Some(requester(ta).into()))
    );
    assert_eq!(decisions(&frames_until_barrier(&mut b).await), []);
    assert_eq!(
        stored(&rig, tb, 1).await,
        (ApprovalState::Denied, Some(requester(tb).into()))
    );
    rig.stop().await;
}

/// A request for a task that is not running on the asking agent: an
/// `unexpected` error, nothing recorded, nothing shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_task_not_assigned_to_the_agent_is_refused() {
    let rig = Scene::start_with(two_agents).await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    let (task, ts) = running_task(&rig, &mut a, "only mine", "U1").await;
    let mut b = FakeAgent::connect_as(rig.addr(), SECOND_KEY, 2).await;
    ask(&b, task, 1, "Bash", "not yours");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (code, message) = loop {
        let frame = tokio::time::timeout_at(deadline, b.frames.recv())
            .await
            .expect("an answer in time")
            .expect("open");
        match frame {
            BotMessage::Error { code, message } => break (code, message),
            BotMessage::Welcome { .. } => {}
            other => panic!("expected an error, got {other:?}"),
        }
    };
    assert_eq!(code, ErrorCode::Unexpected);
    assert!(message.contains("not running on agent e2e-b"), "{message}");
    assert!(rig.store.approval(task.0, 1).await.unwrap().is_none());
    assert!(rig.store.approvals_of(task.0).await.unwrap().is_empty());
    assert!(!message_text(&rig.shown(&ts)).contains("Waiting for approval"));
    assert_eq!(decisions(&frames_until_barrier(&mut a).await), []);
    rig.stop().await;
}

/// A task that ends while a request is pending: the request is closed and
/// the final message has no approval buttons; an old button says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_closes_its_pending_request() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let (task, ts) = running_task(&rig, &mut agent, "quick one", "U1").await;
    ask(&agent, task, 1, "Bash", "ls");
    let waiting = rig.shows(&ts, "Waiting for approval").await;
    agent.complete(task, "done", "s1");
    let done = rig.shows(&ts, "Completed").await;
    assert!(
        button(&done, "Approve").is_none(),
        "no approval buttons at the end"
    );
    eventually("the request closed", || async {
        rig.store
            .approval(task.0, 1)
            .await
            .unwrap()
            .filter(|a| a.state() == ApprovalState::Closed)
    })
    .await;
    rig.click("U1", &button(&waiting, "Approve").unwrap()).await;
    let answer = rig.ephemeral("U1", 1).await;
    assert!(answer.contains("closed"), "{answer}");
    rig.stop().await;
}
