//! The fake Slack's files: uploads through `files.getUploadURLExternal`, the
//! upload URL and `files.completeUploadExternal`, and downloads of attached
//! files, each only with the bot token. Plain HTTP/1.1 on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_testkit::fake_slack;
use baton_testkit::slack::BOT_TOKEN;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request to `url`; returns the status and the body.
async fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let url = url::Url::parse(url).unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        url.path(),
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&answer[..split])
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, answer[split + 4..].to_vec())
}

/// A Web API call with a form body and the bot token; returns Slack's JSON.
async fn call(api: &str, method: &str, form: &[(&str, &str)]) -> Value {
    let body = serde_urlencoded::to_string(form).unwrap();
    let (status, body) = request(
        "POST",
        &format!("{api}/{method}"),
        Some(BOT_TOKEN),
        "application/x-www-form-urlencoded",
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn an_attached_file_downloads_only_with_the_bot_token() {
    let (slack, api) = fake_slack().await;
    let entry = slack.attach_file(&api, "../notes.txt", b"hello file");
    let url = entry["url_private_download"].as_str().unwrap();

    let (status, body) = request("GET", url, None, "text/plain", b"").await;
    assert_eq!(status, 403);
    assert_ne!(body, b"hello file");
    let (status, _) = request("GET", url, Some("xoxb-other"), "text/plain", b"").await;
    assert_eq!(status, 403);
    let (status, body) = request("GET", url, Some(BOT_TOKEN), "text/plain", b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"hello file");
    assert_eq!(entry["size"], 10);
}

#[tokio::test]
async fn an_upload_is_shared_once_its_bytes_arrived_with_the_bot_token() {
    let (slack, api) = fake_slack().await;
    let got = call(
        &api,
        "files.getUploadURLExternal",
        &[("filename", "task-1.md"), ("length", "5")],
    )
    .await;
    assert_eq!(got["ok"], true, "{got}");
    let upload = got["upload_url"].as_str().unwrap();
    let id = got["file_id"].as_str().unwrap();
    let files = format!(r#"[{{"id":"{id}","title":"task-1.md"}}]"#);
    let complete = [
        ("files", files.as_str()),
        ("channel_id", "C1"),
        ("thread_ts", "1700000000.000001"),
        (
            "blocks",
            r#"[{"type":"section","block_id":"b1","text":{"type":"mrkdwn","text":"x"}}]"#,
        ),
    ];

    // Without the bytes, it cannot be shared.
    let early = call(&api, "files.completeUploadExternal", &complete).await;
    assert_eq!(early["error"], "file_upload_incomplete");
    let (status, _) = request("POST", upload, None, "application/octet-stream", b"hello").await;
    assert_eq!(status, 401, "the upload URL wants the bot token");
    let (status, _) = request(
        "POST",
        upload,
        Some(BOT_TOKEN),
        "application/octet-stream",
        b"hello",
    )
    .await;
    assert_eq!(status, 200);
    assert!(slack.uploaded_files().is_empty(), "not shared yet");

    let done = call(&api, "files.completeUploadExternal", &complete).await;
    assert_eq!(done["ok"], true, "{done}");
    let shared = slack.uploaded_files();
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].name, "task-1.md");
    assert_eq!(shared[0].bytes, b"hello");
    assert_eq!(
        shared[0].shared_in,
        Some(("C1".into(), Some("1700000000.000001".into())))
    );
    // The share is a message of the thread, with its blocks.
    let thread = slack.thread("1700000000.000001");
    assert_eq!(thread.len(), 1);
    assert_eq!(thread[0]["blocks"][0]["block_id"], "b1");
}
