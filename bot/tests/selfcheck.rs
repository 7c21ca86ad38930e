//! The bot checks itself: a token Slack refuses, or a Slack it cannot ask,
//! leaves it not ready with the reason on `/readyz` (and in its log); a Slack
//! that answers later makes it ready. The real `baton-bot` binary against the fake Slack.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use baton_testkit::*;

/// How long a test waits for anything the bot does (a deadline, not a delay).
const WAIT_SECS: u64 = 40;

/// The bot binary with `token`, on a free port, against the fake Slack at `slack_url`.
fn spawn_bot(dir: &Path, slack_url: &str, token: &str) -> (tokio::process::Child, SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-bot"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SLACK_BOT_TOKEN", token)
        .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
        .env("SLACK_API_URL", slack_url)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("baton.db").display()),
        )
        .env("BATON_LISTEN", addr.to_string())
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, addr)
}

#[tokio::test]
async fn a_token_slack_refuses_keeps_the_bot_not_ready_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_slack, slack_url) = fake_slack().await;
    // The README's own placeholder.
    let (mut child, addr) = spawn_bot(dir.path(), &slack_url, "xoxb-your-token");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECS);
    let (status, body) = loop {
        assert!(child.try_wait().unwrap().is_none(), "the bot exited");
        if let Ok(answer) = try_http(addr, "GET", "/readyz", &[], "").await {
            break answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("slack: Slack refused SLACK_BOT_TOKEN (not_authed)")
            && body.contains("OAuth & Permissions"),
        "{body}"
    );
    // It still serves: alive, and it says so.
    assert_eq!(
        try_http(addr, "GET", "/healthz", &[], "").await.unwrap().0,
        200
    );
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("ERROR") && log.contains("Slack refused SLACK_BOT_TOKEN (not_authed)"),
        "{log}"
    );
}

#[tokio::test]
async fn a_slack_that_cannot_answer_keeps_the_bot_not_ready_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    slack.fail_next("auth.test", 1, "service_unavailable");
    let (mut child, addr) = spawn_bot(dir.path(), &slack_url, slack::BOT_TOKEN);

    // Not ready, and /readyz says why.
    let mut first = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECS);
    while first.is_none() {
        assert!(child.try_wait().unwrap().is_none(), "the bot exited");
        if let Ok(answer) = try_http(addr, "GET", "/readyz", &[], "").await {
            first = Some(answer);
        }
        assert!(tokio::time::Instant::now() < deadline, "never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = first.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("slack: cannot check the bot token with auth.test")
            && body.contains("service_unavailable"),
        "{body}"
    );

    // Asked again, Slack answers: ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECS);
    loop {
        if let Ok((200, body)) = try_http(addr, "GET", "/readyz", &[], "").await {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(slack.attempts("auth.test").len(), 2);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn missing_scopes_are_listed_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, slack_url) = fake_slack().await;
    slack.grant_scopes("commands,chat:write");
    let (mut child, addr) = spawn_bot(dir.path(), &slack_url, slack::BOT_TOKEN);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECS);
    while !matches!(
        try_http(addr, "GET", "/readyz", &[], "").await,
        Ok((200, _))
    ) {
        assert!(tokio::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        log.matches("the bot token lacks scopes").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("app_mentions:read (@baton mentions)")
            && log.contains("im:history (direct messages to the app)"),
        "{log}"
    );
}
