//! baton-local-slack's control API against a tiny server standing in for the
//! bot: what reaches the bot is signed so that the bot's own verifier accepts
//! it, and what the bot sends back shows in the channel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::post;
use baton_bot::slack::verify::Verifier;
use baton_testkit::http;
use baton_testkit::local_slack::{self, Config};
use baton_testkit::slack::BOT_TOKEN;
use serde_json::{Value, json};

const SECRET: &str = "local-secret-0123456789";

/// One request the stand-in bot received: path, headers, body.
type Seen = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;

/// A bot stand-in that records every request and answers slash commands
/// with an ephemeral "got it".
async fn tiny_bot() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    async fn record(
        State(seen): State<Seen>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::Json<Value> {
        let body = String::from_utf8(body.to_vec()).unwrap();
        seen.lock()
            .unwrap()
            .push((uri.path().to_owned(), headers, body));
        axum::Json(json!({"response_type": "ephemeral", "text": "got it"}))
    }
    let app = Router::new()
        .route("/slack/commands", post(record))
        .route("/slack/events", post(record))
        .route("/slack/interactions", post(record))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// Starts the stand-in for a workspace whose bot is at `bot`.
async fn start(bot: SocketAddr) -> SocketAddr {
    let config: Config = serde_json::from_value(json!({
        "team": {"id": "TLOCAL", "name": "Local"},
        "signing_secret": SECRET,
        "request_url": format!("http://{bot}/slack/events"),
        "users": [{"id": "UALICE", "name": "alice", "admin": true}, {"id": "UBOB", "name": "bob"}],
        "channels": [{"id": "CGENERAL", "name": "general"}, {"id": "CWEB", "name": "web"}],
    }))
    .unwrap();
    config.check().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(local_slack::run(config, listener, std::future::pending()));
    addr
}

async fn post_json(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, body) = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json".to_owned())],
        &body.to_string(),
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn messages(addr: SocketAddr, channel: &str) -> Vec<Value> {
    let (status, body) = http(
        addr,
        "GET",
        &format!("/_control/messages/{channel}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["messages"].as_array().unwrap().clone()
}

/// Whether the bot's verifier accepts the request as signed by Slack.
fn verified(headers: &HeaderMap, body: &str) -> bool {
    let h = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    Verifier::new(SECRET)
        .0
        .verify(
            &h("x-slack-signature"),
            body,
            &h("x-slack-request-timestamp"),
        )
        .is_ok()
}

/// A Web API call as the bot makes it.
async fn api(addr: SocketAddr, method: &str, body: Value) -> Value {
    let (status, text) = http(
        addr,
        "POST",
        &format!("/api/{method}"),
        &[
            ("Content-Type", "application/json".to_owned()),
            ("Authorization", format!("Bearer {BOT_TOKEN}")),
        ],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_command_reaches_the_bot_signed_and_its_answers_show_to_the_person_only() {
    let (bot, seen) = tiny_bot().await;
    let ls = start(bot).await;

    let (status, out) = post_json(
        ls,
        "/_control/command",
        json!({"channel": "#general", "user": "alice", "command": "/baton", "text": "say hello"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["ok"], true, "{out}");

    let (path, headers, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/slack/commands");
    assert!(
        verified(&headers, &body),
        "the bot's verifier refuses {body}"
    );
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("command"), "/baton");
    assert_eq!(field("text"), "say hello");
    assert_eq!(field("user_id"), "UALICE");
    assert_eq!(field("channel_id"), "CGENERAL");
    assert_eq!(field("team_id"), "TLOCAL");

    // The bot answers later through response_url, as baton-bot does.
    let response_url = url::Url::parse(&field("response_url")).unwrap();
    assert_eq!(response_url.port(), Some(ls.port()));
    let (status, _) = post_json(
        ls,
        response_url.path(),
        json!({"text": "your task is queued"}),
    )
    .await;
    assert_eq!(status, 200);

    let shown = messages(ls, "general").await;
    let to_alice: Vec<&str> = shown
        .iter()
        .filter(|m| m["ephemeral_to"] == "UALICE" && m["bot"] == true)
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(to_alice, ["got it", "your task is queued"], "{shown:?}");
    assert!(
        messages(ls, "web").await.is_empty(),
        "nothing shows in another channel"
    );
}

#[tokio::test]
async fn a_mention_sends_message_and_app_mention_events_signed() {
    let (bot, seen) = tiny_bot().await;
    let ls = start(bot).await;

    let (status, out) = post_json(
        ls,
        "/_control/message",
        json!({"channel": "CWEB", "user": "UBOB", "text": "@baton fix it", "thread_ts": "1.000001"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");

    let seen = seen.lock().unwrap().clone();
    let kinds: Vec<String> = seen
        .iter()
        .map(|(path, headers, body)| {
            assert_eq!(path, "/slack/events");
            assert!(verified(headers, body), "the bot's verifier refuses {body}");
            let env: Value = serde_json::from_str(body).unwrap();
            assert_eq!(env["type"], "event_callback");
            assert_eq!(env["team_id"], "TLOCAL");
            assert_eq!(env["event"]["text"], "<@UBATON> fix it");
            assert_eq!(env["event"]["user"], "UBOB");
            assert_eq!(env["event"]["channel"], "CWEB");
            assert_eq!(env["event"]["thread_ts"], "1.000001");
            assert_eq!(env["event"]["ts"], out["ts"]);
            env["event"]["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["message", "app_mention"]);
    let shown = messages(ls, "web").await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["user"], "UBOB");
    assert_eq!(shown[0]["thread_ts"], "1.000001");
}

#[tokio::test]
async fn a_click_on_the_current_message_sends_block_actions_signed() {
    let (bot, seen) = tiny_bot().await;
    let ls = start(bot).await;
    let button = |label: &str| {
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": label}},
               {"type": "actions", "elements": [{"type": "button", "action_id": "baton_cancel",
                "value": "7", "text": {"type": "plain_text", "text": "Cancel"}}]}])
    };
    let posted = api(
        ls,
        "chat.postMessage",
        json!({"channel": "CGENERAL", "text": "#7 queued", "blocks": button("*Queued*")}),
    )
    .await;
    let ts = posted["ts"].as_str().unwrap().to_owned();
    api(
        ls,
        "chat.update",
        json!({"channel": "CGENERAL", "ts": ts, "text": "#7 running", "blocks": button("*Running*")}),
    )
    .await;
    let shown = messages(ls, "general").await;
    assert_eq!(shown.len(), 1, "an edit changes the message: {shown:?}");
    assert_eq!(shown[0]["text"], "#7 running");
    assert_eq!(shown[0]["edited"], true);

    let (status, out) = post_json(
        ls,
        "/_control/interact",
        json!({"user": "bob", "message_ts": ts, "action_id": "baton_cancel"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let (path, headers, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/slack/interactions");
    assert!(
        verified(&headers, &body),
        "the bot's verifier refuses {body}"
    );
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
    let payload: Value = serde_json::from_str(&form[0].1).unwrap();
    assert_eq!(payload["type"], "block_actions");
    assert_eq!(payload["user"]["id"], "UBOB");
    assert_eq!(payload["channel"]["id"], "CGENERAL");
    assert_eq!(payload["message"]["ts"], ts.as_str());
    assert_eq!(payload["actions"][0]["action_id"], "baton_cancel");
    assert_eq!(payload["actions"][0]["value"], "7");

    // The bot's ephemeral answer to the click shows to bob only.
    api(
        ls,
        "chat.postEphemeral",
        json!({"channel": "CGENERAL", "user": "UBOB", "text": "Cancelling task #7"}),
    )
    .await;
    let shown = messages(ls, "general").await;
    assert_eq!(shown.last().unwrap()["ephemeral_to"], "UBOB", "{shown:?}");
}

#[tokio::test]
async fn bad_requests_are_refused_with_what_would_work_and_nothing_is_sent() {
    let (bot, seen) = tiny_bot().await;
    let ls = start(bot).await;
    let cases = [
        (
            "/_control/command",
            json!({"channel": "general", "user": "mallory", "command": "/baton", "text": "x"}),
            "unknown user",
        ),
        (
            "/_control/message",
            json!({"channel": "random", "user": "alice", "text": "hi"}),
            "unknown channel",
        ),
        (
            "/_control/message",
            json!({"channel": "general", "user": "alice", "text": "  "}),
            "empty",
        ),
        (
            "/_control/interact",
            json!({"user": "alice", "message_ts": "1.2", "action_id": "baton_cancel"}),
            "GET /_control/messages",
        ),
        (
            "/_control/command",
            json!({"channel": "general"}),
            "cannot read the request",
        ),
    ];
    for (path, body, says) in cases {
        let (status, out) = post_json(ls, path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {out}");
        assert_eq!(out["ok"], false);
        assert!(
            out["error"].as_str().unwrap().contains(says),
            "{path} {body}: {out}"
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the bot");
    let (status, body) = http(ls, "GET", "/_control/messages/nope", &[], "").await;
    assert_eq!(status, 400, "{body}");
    let (_, state) = http(ls, "GET", local_slack::STATE_PATH, &[], "").await;
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["messages"]["CGENERAL"], json!([]), "{state}");
    assert_eq!(state["users"][0]["admin"], true);
}

#[test]
fn a_config_without_exactly_one_admin_is_refused() {
    let config: Config = serde_json::from_value(json!({
        "team": {"id": "T", "name": "T"}, "signing_secret": "s",
        "request_url": "http://127.0.0.1:1/slack/events",
        "users": [{"id": "U1", "name": "a"}], "channels": [{"id": "C1", "name": "c"}],
    }))
    .unwrap();
    let err = config.check().unwrap_err().to_string();
    assert!(
        err.contains("exactly one user with \"admin\": true"),
        "{err}"
    );
}

#[tokio::test]
async fn a_direct_message_to_the_app_is_a_message_im_of_its_own_person_only() {
    let (bot, seen) = tiny_bot().await;
    let ls = start(bot).await;
    let dm = local_slack::dm_channel("UBOB");

    let (status, out) = post_json(
        ls,
        "/_control/message",
        json!({"channel": dm, "user": "bob", "text": "say hi"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let seen_now = seen.lock().unwrap().clone();
    assert_eq!(seen_now.len(), 1, "one event: {seen_now:?}");
    let (_, headers, body) = &seen_now[0];
    assert!(verified(headers, body));
    let env: Value = serde_json::from_str(body).unwrap();
    assert_eq!(env["event"]["type"], "message");
    assert_eq!(env["event"]["channel_type"], "im");
    assert_eq!(env["event"]["channel"], dm.as_str());
    assert_eq!(messages(ls, &dm).await.len(), 1);

    // Someone else's direct messages are not theirs to write in.
    let (status, out) = post_json(
        ls,
        "/_control/message",
        json!({"channel": dm, "user": "alice", "text": "hi"}),
    )
    .await;
    assert_eq!(status, 400, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("D+USER_ID"),
        "{out}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "nothing more reached the bot"
    );
}
