//! End to end: a signed `/baton say hello` through the in-process bot, the real
//! `baton-agent` binary and a fake Slack Web API, all over real sockets.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const SCRIPT: &str = "#!/bin/sh\necho '::step:: reading the prompt'\nread -r line\necho '::step:: answering'\necho \"agent says: $BATON_PROMPT ($BATON_PERSONA, task $BATON_TASK_ID)\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_command_runs_on_the_agent_and_ends_in_one_edited_message() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |_| {}).await;
    let project = project_dir(dir.path(), "project", SCRIPT);
    let _agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;

    // A bad signature is refused and changes nothing.
    let (status, _) = post_signed(
        bot.addr,
        "/slack/commands",
        &slash("/baton", "say hello", "U1"),
        "wrong-secret",
    )
    .await;
    assert_eq!(status, 401);

    let (status, body) = post_signed(
        bot.addr,
        "/slack/commands",
        &slash("/baton", "say hello", "U1"),
        SIGNING_SECRET,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.is_empty(),
        "the task's message is the answer, got {body:?}"
    );

    wait_for(30, "the final edit", || {
        slack
            .calls("chat.update")
            .iter()
            .any(|c| message_text(&c.body).contains("Completed"))
    })
    .await;

    let posts = slack.calls("chat.postMessage");
    assert_eq!(
        posts.len(),
        1,
        "exactly one message for the task: {posts:?}"
    );
    assert_eq!(posts[0].body["channel"], "C1");
    let last = slack.calls("chat.update").last().cloned().unwrap();
    let text = message_text(&last.body);
    assert!(
        text.contains("agent says: say hello (code, task 1)"),
        "{text}"
    );
    assert!(text.contains("answering"), "the steps are shown: {text}");
    assert!(
        !text.contains("Cancel"),
        "no Cancel button once completed: {text}"
    );

    let store = bot.store().await;
    let task = store.task(1).await.unwrap().expect("task row");
    assert_eq!(task.state, "completed");
    assert_eq!(task.requester, "U1");
    assert_eq!(task.agent.as_deref(), Some("e2e"));
    assert!(task.result.unwrap().contains("agent says: say hello"));
    assert_eq!(
        task.message_ts, posts[0].ts,
        "the posted message is the one stored"
    );
    assert!(
        store.task(2).await.unwrap().is_none(),
        "the refused request wrote nothing"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_no_task() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |_| {}).await;
    let project = project_dir(dir.path(), "project", SCRIPT);
    let _agent = start_agent(dir.path(), bot.addr, &project, 1);
    wait_agents(bot.addr, 1).await;

    let long = "x".repeat(100_001);
    for (text, expect) in [
        ("review", "empty"),
        (long.as_str(), "limit"),
        ("--project nope hi", "no project `nope`"),
    ] {
        let (status, body) = post_signed(
            bot.addr,
            "/slack/commands",
            &slash("/baton", text, "U1"),
            SIGNING_SECRET,
        )
        .await;
        assert_eq!(status, 200);
        assert!(body.contains(expect), "{expect:?} not in {body}");
        assert!(body.contains("ephemeral"));
    }
    // Admin commands: refused for non-admins without revealing anything.
    let (_, body) = post_signed(
        bot.addr,
        "/slack/commands",
        &slash("/baton-admin", "health", "U1"),
        SIGNING_SECRET,
    )
    .await;
    assert!(
        body.contains("admins only") && !body.contains("e2e"),
        "{body}"
    );
    let (_, body) = post_signed(
        bot.addr,
        "/slack/commands",
        &slash("/baton-admin", "health", "UADMIN"),
        SIGNING_SECRET,
    )
    .await;
    assert!(
        body.contains("e2e") && body.contains("connected") && body.contains("closed"),
        "{body}"
    );

    // The one URL for everything: a slash command posted to /slack/events works too.
    let (status, body) = post_signed(
        bot.addr,
        "/slack/events",
        &slash("/baton", "help", "U1"),
        SIGNING_SECRET,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("/baton cancel #ID"), "{body}");

    let store = bot.store().await;
    assert!(
        store.task(1).await.unwrap().is_none(),
        "no task row for bad input"
    );
    assert!(slack.calls("chat.postMessage").is_empty());
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir.path(), |s| {
        s.metrics_token = Some("metrics-secret".to_owned().into());
    })
    .await;
    let (status, body) = http(bot.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 401);
    assert!(!body.contains("baton_"), "{body}");
    let wrong = [("Authorization", "Bearer nope".to_owned())];
    assert_eq!(http(bot.addr, "GET", "/metrics", &wrong, "").await.0, 401);
    let right = [("Authorization", "Bearer metrics-secret".to_owned())];
    let (status, body) = http(bot.addr, "GET", "/metrics", &right, "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("baton_dispatch_latency_seconds_count 0"),
        "{body}"
    );
    bot.stop().await;
}

/// A command task that asks with `"$BATON_AGENT" approve` and prints what it heard.
const ASKING: &str =
    "#!/bin/sh\n\"$BATON_AGENT\" approve \"deploy to prod\"\necho \"approve said $?\"\n";

/// Approvals through the whole stack: the real agent binary's command task
/// asks, the bot shows Approve and Deny on the task's message, someone who
/// may not answer is refused privately and changes nothing, the requester's
/// signed click reaches the script as exit code 0, and the message records
/// who decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_asked_by_the_agent_is_answered_in_slack_and_reaches_the_task() {
    use baton_testkit::scene::{Scene, button};

    let rig = Scene::start().await;
    let project = project_dir(rig.dir.path(), "project", ASKING);
    let _agent = start_agent(rig.dir.path(), rig.addr(), &project, 1);
    wait_agents(rig.addr(), 1).await;
    assert_eq!(rig.baton("deploy the site", "U1").await, "");
    let ts = rig.message_ts(1).await;

    let asking = rig.shows(&ts, "deploy to prod").await;
    let approve = button(&asking, "Approve").expect("an Approve button");
    assert!(button(&asking, "Deny").is_some(), "{asking}");

    // U2 did not start the task and is no approver: told so, nothing decided.
    rig.click("U2", &approve).await;
    let refusal = rig.ephemeral("U2", 1).await;
    assert!(
        refusal.contains("/baton-admin project approvers web"),
        "{refusal}"
    );
    assert_eq!(
        rig.store.approval(1, 1).await.unwrap().unwrap().state,
        "pending"
    );

    rig.click("U1", &approve).await;
    let done = rig.shows(&ts, "Completed").await;
    assert!(
        message_text(&done).contains("approve said 0"),
        "the script heard the yes: {done}"
    );
    let decided = rig.store.approval(1, 1).await.unwrap().unwrap();
    assert_eq!(
        (decided.state.as_str(), decided.decided_by.as_deref()),
        ("approved", Some("U1"))
    );
    rig.stop().await;
}

/// The same with a no: an admin's Deny reaches the script as exit code 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_deny_in_slack_reaches_the_task_as_a_no() {
    use baton_testkit::scene::{Scene, button};

    let rig = Scene::start().await;
    let project = project_dir(rig.dir.path(), "project", ASKING);
    let _agent = start_agent(rig.dir.path(), rig.addr(), &project, 1);
    wait_agents(rig.addr(), 1).await;
    assert_eq!(rig.baton("deploy the site", "U1").await, "");
    let ts = rig.message_ts(1).await;
    let asking = rig.shows(&ts, "deploy to prod").await;
    rig.click("UADMIN", &button(&asking, "Deny").expect("a Deny button"))
        .await;
    let done = rig.shows(&ts, "approve said").await;
    assert!(
        message_text(&done).contains("approve said 1"),
        "the script heard the no: {done}"
    );
    rig.stop().await;
}
