//! Files attached in Slack: the limits checked before a task is created, the
//! files carried by `submit`, and `GET /agents/files/{task}/{id}`, which
//! streams a task's file from the fake Slack (with the bot token) to the
//! agent the task is assigned to, and to no one else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use baton_shared::limits::{MAX_FILE_BYTES, MAX_FILES_PER_TASK};
use baton_shared::protocol::SubmitFile;
use baton_testkit::scene::*;
use baton_testkit::slack::BOT_TOKEN;
use baton_testkit::*;
use serde_json::{Value, json};

/// A mention in C1 with `files` (entries as the fake Slack's `attach_file` gives them).
fn mention_with_files(text: &str, ts: &str, files: Vec<Value>) -> Value {
    let mut m = mention("U1", text, ts, None);
    m["files"] = Value::Array(files);
    m
}

/// `GET path` on `addr` with `key` as the bearer token, if any.
async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, String)> = key
        .map(|k| vec![("Authorization", format!("Bearer {k}"))])
        .unwrap_or_default();
    http(addr, "GET", path, &headers, "").await
}

/// The fake Slack's address, from its Web API URL.
fn slack_addr(slack_url: &str) -> SocketAddr {
    slack_url
        .trim_start_matches("http://")
        .trim_end_matches("/api")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mentions_files_go_with_its_task_and_only_its_agent_may_fetch_them() {
    let rig = Scene::start_with(two_agents).await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let notes = rig.slack.attach_file(&rig.slack_url, "notes.txt", b"hello");
    let same_name = rig
        .slack
        .attach_file(&rig.slack_url, "dir/notes.txt", b"second");
    rig.event(
        "Ev1",
        mention_with_files(
            "read the notes",
            "1700000200.000100",
            vec![notes.clone(), same_name.clone()],
        ),
        None,
    )
    .await;

    // The submit names both files, with safe distinct names.
    let submit = agent.submitted().await;
    let (holder, stranger) = (AGENT_KEY, SECOND_KEY);
    // Another agent, connected and serving the same project.
    let _other = FakeAgent::connect_as(rig.addr(), SECOND_KEY, 2).await;
    assert_eq!(
        submit.files,
        [
            SubmitFile {
                id: notes["id"].as_str().unwrap().into(),
                name: "notes.txt".into(),
                size: 5
            },
            SubmitFile {
                id: same_name["id"].as_str().unwrap().into(),
                name: "notes-2.txt".into(),
                size: 6
            },
        ]
    );
    let files = rig.store.task_files(submit.task.0).await.unwrap();
    assert_eq!(files.len(), 2, "kept with the task: {files:?}");
    let path = format!("/agents/files/{}/{}", submit.task.0, submit.files[0].id);

    // No key: 401. Another agent's key: 404, saying nothing about the task.
    let (status, body) = get(rig.addr(), &path, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer KEY"), "{body}");
    let (status, body) = get(rig.addr(), &path, Some(stranger)).await;
    assert_eq!(status, 404, "{body}");
    let (status, unknown) = get(
        rig.addr(),
        &format!("/agents/files/{}/F404", submit.task.0),
        Some(holder),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body, unknown,
        "the same answer as for a file that does not exist"
    );
    let (status, _) = get(rig.addr(), &path, Some("not-a-key")).await;
    assert_eq!(status, 401);

    // The agent the task is assigned to gets the bytes Slack holds.
    let (status, body) = get(rig.addr(), &path, Some(holder)).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    let second = format!("/agents/files/{}/{}", submit.task.0, submit.files[1].id);
    assert_eq!(
        get(rig.addr(), &second, Some(holder)).await,
        (200, "second".to_owned())
    );

    // Once the task has ended, nobody may fetch its files.
    agent.start(submit.task);
    agent.complete(submit.task, "read them", "sess-1");
    rig.task_when(submit.task.0, "the task completed", |t| {
        t.state == "completed"
    })
    .await;
    let (status, _) = get(rig.addr(), &path, Some(holder)).await;
    assert_eq!(status, 404);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_files_are_refused_before_any_task_is_created() {
    let rig = Scene::start().await;
    let many: Vec<Value> = (0..=MAX_FILES_PER_TASK)
        .map(|i| {
            rig.slack
                .attach_file(&rig.slack_url, &format!("f{i}.txt"), b"x")
        })
        .collect();
    rig.event(
        "Ev1",
        mention_with_files("read these", "1700000300.000100", many),
        None,
    )
    .await;
    let refused = rig.ephemeral("U1", 1).await;
    assert_eq!(
        refused,
        baton_bot::replies::files_refused(&baton_shared::files::FileRefusal::TooMany {
            count: MAX_FILES_PER_TASK + 1
        })
    );
    assert!(refused.contains("at most 5. Attach fewer"), "{refused}");

    // Slack's size is what is checked: no need to hold 20 MiB here.
    let mut big = rig.slack.attach_file(&rig.slack_url, "disk.iso", b"x");
    big["size"] = json!(MAX_FILE_BYTES + 1);
    rig.event(
        "Ev2",
        mention_with_files("read this", "1700000300.000200", vec![big]),
        None,
    )
    .await;
    let refused = rig.ephemeral("U1", 2).await;
    assert!(refused.contains("`disk.iso`"), "{refused}");
    assert!(refused.contains("Attach a smaller file"), "{refused}");
    assert!(refused.contains("was not created"), "{refused}");

    // Exactly as many files as allowed, each at the limit, are taken.
    let five: Vec<Value> = (0..MAX_FILES_PER_TASK)
        .map(|i| {
            let mut f = rig
                .slack
                .attach_file(&rig.slack_url, &format!("ok{i}.txt"), b"x");
            f["size"] = json!(MAX_FILE_BYTES);
            f
        })
        .collect();
    rig.event(
        "Ev3",
        mention_with_files("read these", "1700000300.000300", five),
        None,
    )
    .await;
    let task = rig.task_when(1, "the task with five files", |_| true).await;
    assert_eq!(task.prompt, "read these");
    assert_eq!(
        rig.task_count().await,
        1,
        "the refused requests wrote nothing"
    );
    assert_eq!(
        rig.store.task_files(1).await.unwrap().len(),
        MAX_FILES_PER_TASK
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_reply_with_a_file_continues_the_task_with_it() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    rig.baton("plan the migration", "U1").await;
    let first = agent.submitted().await;
    assert!(first.files.is_empty());
    agent.start(first.task);
    agent.complete(first.task, "the plan", "sess-1");
    let root = rig.message_ts(1).await;
    rig.shows(&root, "Completed").await;

    // A reply with a file attached comes as the `file_share` subtype.
    let file = rig
        .slack
        .attach_file(&rig.slack_url, "schema.sql", b"create");
    let mut reply = message("U1", "use this schema", "1700000400.000200", Some(&root));
    reply["subtype"] = json!("file_share");
    reply["files"] = json!([file]);
    rig.event("Ev1", reply, None).await;
    let follow_up = agent.submitted().await;
    assert_eq!(follow_up.session_id.as_deref(), Some("sess-1"));
    assert_eq!(follow_up.files.len(), 1);
    assert_eq!(follow_up.files[0].name, "schema.sql");
    let path = format!(
        "/agents/files/{}/{}",
        follow_up.task.0, follow_up.files[0].id
    );
    assert_eq!(
        get(rig.addr(), &path, Some(AGENT_KEY)).await,
        (200, "create".to_owned())
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_slack_will_not_give_is_a_502_with_the_reason() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let mut gone = rig.slack.attach_file(&rig.slack_url, "gone.txt", b"x");
    // The event names a file the fake Slack does not hold.
    let url = gone["url_private_download"]
        .as_str()
        .unwrap()
        .replace("download", "nothing");
    gone["url_private_download"] = json!(url);
    let mut elsewhere = rig.slack.attach_file(&rig.slack_url, "elsewhere.txt", b"x");
    elsewhere["url_private_download"] = json!("https://attacker.example.com/f");
    rig.event(
        "Ev1",
        mention_with_files("read", "1700000500.000100", vec![gone, elsewhere]),
        None,
    )
    .await;
    let submit = agent.submitted().await;
    let path = |i: usize| format!("/agents/files/{}/{}", submit.task.0, submit.files[i].id);
    let (status, body) = get(rig.addr(), &path(0), Some(AGENT_KEY)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("Slack answered HTTP 404"), "{body}");
    // The bot token goes to Slack only.
    let (status, body) = get(rig.addr(), &path(1), Some(AGENT_KEY)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("not on Slack"), "{body}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_slack_serves_a_file_only_with_the_bot_token() {
    let (slack, slack_url) = fake_slack().await;
    let file = slack.attach_file(&slack_url, "notes.txt", b"hello");
    let url = file["url_private_download"].as_str().unwrap();
    let path = &url[url.find("/files-pri").unwrap()..];
    let addr = slack_addr(&slack_url);
    let (status, body) = http(addr, "GET", path, &[], "").await;
    assert_eq!(status, 403, "{body}");
    let wrong = [("Authorization", "Bearer xoxb-wrong".to_owned())];
    assert_eq!(http(addr, "GET", path, &wrong, "").await.0, 403);
    let token = [("Authorization", format!("Bearer {BOT_TOKEN}"))];
    assert_eq!(
        http(addr, "GET", path, &token, "").await,
        (200, "hello".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_takes_its_files_when_dispatched_later_and_a_retry_takes_them_again() {
    let rig = Scene::start().await;
    let file = rig.slack.attach_file(&rig.slack_url, "log.txt", b"boom");
    // No agent yet: the task waits in the queue, its files kept with it.
    rig.event(
        "Ev1",
        mention_with_files("why did it fail", "1700000700.000100", vec![file.clone()]),
        None,
    )
    .await;
    rig.task_when(1, "the task queued", |t| t.state == "queued")
        .await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let first = agent.submitted().await;
    let expected = [SubmitFile {
        id: file["id"].as_str().unwrap().into(),
        name: "log.txt".into(),
        size: 4,
    }];
    assert_eq!(first.files, expected, "the dispatcher read them back");
    agent.send(baton_shared::protocol::AgentMessage::Failed {
        task: first.task,
        seq: 1,
        error: "the CLI broke".into(),
        cause: baton_shared::protocol::FailureCause::Task,
        session_id: None,
    });
    rig.task_when(1, "the task failed", |t| t.state == "failed")
        .await;

    let answer = rig.baton("retry #1", "U1").await;
    assert!(answer.contains("#2"), "{answer}");
    let retried = agent.submitted().await;
    assert_eq!(retried.task.0, 2);
    assert_eq!(retried.files, expected, "a retry takes the task's files");
    let path = format!("/agents/files/2/{}", expected[0].id);
    assert_eq!(
        get(rig.addr(), &path, Some(AGENT_KEY)).await,
        (200, "boom".to_owned())
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_with_a_file_starts_a_task_with_it() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    let file = rig.slack.attach_file(&rig.slack_url, "report.pdf", b"%PDF");
    // A direct message with a file: a `message` of subtype `file_share` in an im.
    let mut dm = message("U1", "summarise this", "1700000800.000100", None);
    dm["channel"] = json!("D1");
    dm["channel_type"] = json!("im");
    dm["subtype"] = json!("file_share");
    dm["files"] = json!([file]);
    rig.event("Ev1", dm, None).await;
    let submit = agent.submitted().await;
    assert_eq!(submit.prompt, "summarise this");
    assert_eq!(submit.files.len(), 1);
    assert_eq!(
        (submit.files[0].name.as_str(), submit.files[0].size),
        ("report.pdf", 4)
    );
    rig.stop().await;
}
