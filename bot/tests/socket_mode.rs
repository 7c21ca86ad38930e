//! Socket Mode end to end: the in-process bot with `SLACK_APP_TOKEN` opens its
//! connections through the fake Slack's `apps.connections.open`, and the tests
//! push real envelopes over a real WebSocket on loopback and read the acks.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use baton_testkit::socket_mode::{self, APP_TOKEN};
use baton_testkit::*;
use serde_json::{Value, json};

/// How long a test waits for anything the bot does (a deadline, not a delay).
const WAIT_SECS: u64 = 20;

/// The connections the bot holds open.
const CONNECTIONS: usize = baton_bot::slack::socket_mode::CONNECTIONS as usize;

/// A bot in Socket Mode only (no signing secret: the HTTP Slack routes are
/// closed), or with both transports when `http_too`; returns once all its
/// connections are open.
async fn socket_bot(dir: &Path, http_too: bool) -> (Arc<FakeSlack>, Bot) {
    // The bot's and slack-morphism's logs, shown when a test fails.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,slack_morphism=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let (slack, slack_url) = fake_slack().await;
    let bot = Bot::start(&slack_url, dir, |s| {
        s.slack_app_token = Some(APP_TOKEN.to_owned().into());
        if !http_too {
            s.slack_signing_secret = None;
        }
    })
    .await;
    slack
        .socket_mode()
        .wait_connections(CONNECTIONS, WAIT_SECS)
        .await;
    (slack, bot)
}

/// Waits for `cond` like [`wait_for`], failing with the state of the
/// connections.
async fn wait_connections_for(slack: &FakeSlack, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(WAIT_SECS);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            slack.socket_mode().describe()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Pushes a slash command envelope and returns its ack.
async fn command(slack: &FakeSlack, command: &str, text: &str, user: &str) -> Value {
    let sm = slack.socket_mode();
    let id = sm.push(
        "slash_commands",
        socket_mode::slash_command(command, text, user),
    );
    sm.ack(&id, WAIT_SECS).await
}

/// The ack's payload text (panics when there is none).
fn ack_text(ack: &Value) -> &str {
    ack["payload"]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no reply text in the ack {ack}"))
}

/// Binds channel C1 to project `web` (what makes `/baton PROMPT` create a
/// task with no agent around: it waits in the queue).
async fn bind_web(slack: &FakeSlack) {
    let ack = command(slack, "/baton-admin", "project bind web", "UADMIN").await;
    assert!(ack_text(&ack).contains("project `web`"), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_commands_get_the_same_answer_over_socket_mode_as_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, bot) = socket_bot(dir.path(), true).await;

    for (cmd, text, user, expect) in [
        ("/baton", "help", "U1", "/baton cancel #ID"),
        ("/baton", "--project nope hi", "U1", "no project `nope`"),
        ("/baton", "review", "U1", "empty"),
        ("/baton-admin", "health", "U1", "admins only"),
    ] {
        let (status, body) = post_signed(
            bot.addr,
            "/slack/commands",
            &slash(cmd, text, user),
            SIGNING_SECRET,
        )
        .await;
        assert_eq!(status, 200);
        let http: Value = serde_json::from_str(&body).unwrap();
        let ack = command(&slack, cmd, text, user).await;
        assert_eq!(
            ack["payload"], http,
            "`{cmd} {text}`: the ack carries the HTTP answer"
        );
        assert_eq!(ack["payload"]["response_type"], "ephemeral");
        assert!(ack_text(&ack).contains(expect), "{expect:?} not in {ack}");
    }
    let store = bot.store().await;
    assert!(
        store.task(1).await.unwrap().is_none(),
        "no task for bad input"
    );
    assert!(slack.calls("chat.postMessage").is_empty());
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_command_over_socket_mode_creates_a_task_with_a_bare_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, bot) = socket_bot(dir.path(), false).await;
    let opens = slack.socket_mode().opens();
    assert!(
        opens
            .iter()
            .all(|o| o.token == APP_TOKEN && o.error.is_none()),
        "apps.connections.open with the app-level token: {opens:?}"
    );

    // No signing secret: the HTTP Slack routes are closed.
    let (status, _) = baton(bot.addr, "say hello", "U1").await;
    assert_eq!(status, 401);

    bind_web(&slack).await;
    let ack = command(&slack, "/baton", "fix the flaky login test", "U1").await;
    assert_eq!(
        ack.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["envelope_id"],
        "the task's message is the answer; the ack has no payload: {ack}"
    );

    let store = bot.store().await;
    wait_state(&store, 1, "queued", WAIT_SECS).await;
    let task = store.task(1).await.unwrap().unwrap();
    assert_eq!(task.prompt, "fix the flaky login test");
    assert_eq!(
        (task.requester.as_str(), task.channel_id.as_str()),
        ("U1", "C1")
    );
    assert_eq!(
        (task.project.as_str(), task.team_id.as_str()),
        ("web", "T1")
    );
    wait_for(WAIT_SECS, "the task's message", || {
        !slack.calls("chat.postMessage").is_empty()
    })
    .await;
    assert_eq!(slack.calls("chat.postMessage")[0].body["channel"], "C1");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_button_over_socket_mode_cancels_a_queued_task() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, bot) = socket_bot(dir.path(), false).await;
    bind_web(&slack).await;
    command(&slack, "/baton", "write the changelog", "U1").await;
    let store = bot.store().await;
    wait_state(&store, 1, "queued", WAIT_SECS).await;

    let sm = slack.socket_mode();
    let click = sm.push(
        "interactive",
        socket_mode::block_actions("baton_cancel", "1", "U1", "1700000000.000001"),
    );
    let ack = sm.ack(&click, WAIT_SECS).await;
    assert_eq!(
        ack,
        json!({"envelope_id": click}),
        "a click gets a bare ack"
    );

    wait_state(&store, 1, "cancelled", WAIT_SECS).await;
    wait_for(WAIT_SECS, "the answer to the clicker", || {
        slack.calls("chat.postEphemeral").iter().any(|c| {
            c.body["user"] == "U1" && message_text(&c.body).contains("removed from the queue")
        })
    })
    .await;
    wait_for(WAIT_SECS, "the task's message to show the cancel", || {
        slack
            .calls("chat.update")
            .iter()
            .any(|c| message_text(&c.body).contains("Cancelled"))
    })
    .await;
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mention_over_socket_mode_creates_one_task_per_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, bot) = socket_bot(dir.path(), true).await;
    bind_web(&slack).await;
    let sm = slack.socket_mode();
    let store = bot.store().await;

    let mention = socket_mode::event_callback(
        "Ev001",
        socket_mode::app_mention("U2", "bump the version", "1700000100.000100"),
    );
    let first = sm.push("events_api", mention.clone());
    assert_eq!(
        sm.ack(&first, WAIT_SECS).await,
        json!({"envelope_id": first})
    );
    wait_state(&store, 1, "queued", WAIT_SECS).await;
    let task = store.task(1).await.unwrap().unwrap();
    assert_eq!(task.prompt, "bump the version");
    assert_eq!(task.requester, "U2");

    // Slack delivers the same event again, over Socket Mode and over HTTP.
    let again = sm.push("events_api", mention.clone());
    assert_eq!(
        sm.ack(&again, WAIT_SECS).await,
        json!({"envelope_id": again})
    );
    let (status, _) = post_event(bot.addr, &mention, Some(1)).await;
    assert_eq!(status, 200);

    // A new event after them is the next task: the repeats made none.
    let next = sm.push(
        "events_api",
        socket_mode::event_callback(
            "Ev002",
            socket_mode::app_mention("U2", "and tag it", "1700000100.000200"),
        ),
    );
    sm.ack(&next, WAIT_SECS).await;
    wait_state(&store, 2, "queued", WAIT_SECS).await;
    assert_eq!(store.task(2).await.unwrap().unwrap().prompt, "and tag it");
    assert!(
        store.task(3).await.unwrap().is_none(),
        "a repeat made a task"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_reconnects_when_slack_asks_or_the_socket_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, bot) = socket_bot(dir.path(), false).await;
    let sm = slack.socket_mode();
    let before = sm.accepted_opens();
    let old = sm.accepted_connections();

    // Slack asks for a refresh of one connection: the bot opens another one
    // through apps.connections.open.
    let asked = *old.last().unwrap();
    sm.disconnect(asked, "refresh_requested");
    wait_connections_for(&slack, "a new connection after the disconnect", || {
        sm.accepted_opens() > before && sm.accepted_connections().len() > old.len()
    })
    .await;
    let fresh = *sm.accepted_connections().last().unwrap();
    assert!(!old.contains(&fresh));
    // Then Slack drops the old connection (if the bot has not closed it yet):
    // the bot keeps its number of connections without opening another one.
    sm.drop_connection(asked);
    wait_connections_for(&slack, "the old connection gone", || {
        !sm.connections().contains(&asked) && sm.connections().len() == CONNECTIONS
    })
    .await;
    assert_eq!(sm.accepted_opens(), before + 1, "{}", sm.describe());
    let id = sm.push_on(
        Some(fresh),
        "slash_commands",
        socket_mode::slash_command("/baton", "help", "U1"),
    );
    let ack = sm.ack(&id, WAIT_SECS).await;
    assert!(ack_text(&ack).contains("/baton cancel #ID"), "{ack}");

    // The socket drops without a close: the bot reconnects too.
    let before = sm.accepted_opens();
    sm.drop_connection(fresh);
    wait_connections_for(&slack, "a new connection after the drop", || {
        sm.accepted_opens() > before
            && !sm.connections().contains(&fresh)
            && sm.connections().len() == CONNECTIONS
    })
    .await;
    let newest = *sm.accepted_connections().last().unwrap();
    bind_web(&slack).await;
    let id = sm.push_on(
        Some(newest),
        "slash_commands",
        socket_mode::slash_command("/baton", "still there?", "U1"),
    );
    sm.ack(&id, WAIT_SECS).await;
    wait_state(&bot.store().await, 1, "queued", WAIT_SECS).await;
    assert!(
        sm.unexpected_frames().is_empty(),
        "{:?}",
        sm.unexpected_frames()
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_envelope_is_acknowledged_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, bot) = socket_bot(dir.path(), false).await;
    bind_web(&slack).await;
    let sm = slack.socket_mode();
    let opens = sm.accepted_opens();
    let connection = *sm.connections().last().unwrap();

    let malformed = [
        // A slash command without the fields Slack always sends.
        json!({"envelope_id": "bad-1", "type": "slash_commands", "accepts_response_payload": true,
               "payload": {"text": 42}}),
        // An envelope type nobody knows.
        json!({"envelope_id": "bad-2", "type": "something_new", "payload": {"x": 1}}),
        // A click whose button carries no task id.
        json!({"envelope_id": "bad-3", "type": "interactive", "accepts_response_payload": true,
               "payload": socket_mode::block_actions("baton_cancel", "not-a-task", "U1", "1.1")}),
        // A mention without its author or text.
        json!({"envelope_id": "bad-4", "type": "events_api", "accepts_response_payload": false,
               "payload": socket_mode::event_callback("Ev-bad", json!({"type": "app_mention", "channel": "C1"}))}),
        // Not an envelope at all.
        json!({"envelope_id": "bad-5", "type": "slash_commands", "accepts_response_payload": true,
               "payload": "not an object"}),
    ];
    sm.send_raw(Some(connection), "this is not JSON {");
    for envelope in &malformed {
        sm.send_raw(Some(connection), &envelope.to_string());
    }
    for envelope in &malformed {
        let id = envelope["envelope_id"].as_str().unwrap();
        let ack = sm.ack(id, WAIT_SECS).await;
        assert_eq!(ack, json!({"envelope_id": id}), "a bare ack for {id}");
        assert_eq!(sm.acks_of(id).len(), 1);
    }

    // The connection is still the same one and still works.
    let ack = command(&slack, "/baton", "help", "U1").await;
    assert!(ack_text(&ack).contains("/baton cancel #ID"), "{ack}");
    assert_eq!(sm.accepted_opens(), opens, "no reconnection");
    assert!(sm.connections().contains(&connection));

    let store = bot.store().await;
    assert!(
        store.task(1).await.unwrap().is_none(),
        "no task was created"
    );
    assert!(slack.calls("chat.postMessage").is_empty());
    assert!(
        sm.unexpected_frames().is_empty(),
        "{:?}",
        sm.unexpected_frames()
    );
    bot.stop().await;
}
