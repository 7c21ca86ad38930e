//! The requester is told once when a task ends (`BATON_NOTIFY`): a mention in
//! the task's thread, a direct message, or nothing; once, also across a
//! restart of the bot and an answer of Slack lost on the way. Driven through
//! the bot's real routes over the fake Slack; the task's end is written to
//! the database, which is all the notifier reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_bot::model::{ResultMeta, TaskState};
use baton_bot::settings::{NotifyMode, Settings};
use baton_bot::store::Ending;
use baton_testkit::scene::Scene;
use baton_testkit::*;
use serde_json::Value;

/// The scene (project `web` bound to C1, no agent: tasks stay queued until
/// the test ends them, the fake Slack) with `BATON_NOTIFY` = `mode`.
async fn start(mode: NotifyMode) -> Scene {
    Scene::start_with(move |s: &mut Settings| s.notify = mode).await
}

/// `/baton TEXT` as U1; the new task's id and message ts, once posted.
async fn task(rig: &Scene, text: &str) -> (i64, String) {
    assert_eq!(rig.baton(text, "U1").await, "");
    let id = eventually("the task", || async {
        rig.store
            .recent_tasks(1)
            .await
            .unwrap()
            .into_iter()
            .next()
            .map(|t| t.id)
    })
    .await;
    (id, rig.message_ts(id).await)
}

/// Ends queued task `id` as `ending`, and records that its message shows
/// it, as the bot does (the notification waits for that).
async fn end(rig: &Scene, id: i64, ending: Ending) {
    assert!(
        rig.store
            .finish(id, None, None, &[TaskState::Queued], &ending)
            .await
            .unwrap()
    );
    rig.store.mark_slack_synced(id).await.unwrap();
}

/// Waits until task `id`'s notification is settled.
async fn settled(rig: &Scene, id: i64) {
    eventually("the notification settled", || async {
        let (done, _) = rig.store.notice_state(id).await.unwrap()?;
        done.then_some(())
    })
    .await;
}

/// The accepted posts that carry task `id`'s notification.
fn posted(rig: &Scene, id: i64) -> Vec<Value> {
    notices(&rig.slack.calls("chat.postMessage"), id)
}

/// The calls among `calls` that carry task `id`'s notification.
fn notices(calls: &[Call], id: i64) -> Vec<Value> {
    let marker = baton_bot::notify::marker(id);
    calls
        .iter()
        .filter(|c| {
            c.body["blocks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["block_id"] == marker.as_str())
        })
        .map(|c| c.body.clone())
        .collect()
}

fn completed() -> Ending {
    Ending::Completed {
        text: "done".into(),
        session_id: None,
        meta: ResultMeta::default(),
    }
}

#[tokio::test]
async fn a_completed_task_mentions_its_requester_once_in_its_thread() {
    let rig = start(NotifyMode::Thread).await;
    let (id, ts) = task(&rig, "fix the login test").await;
    end(&rig, id, completed()).await;
    settled(&rig, id).await;
    let posted = posted(&rig, id);
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["channel"], "C1");
    assert_eq!(posted[0]["thread_ts"], ts.as_str());
    assert_eq!(
        posted[0]["text"],
        format!("<@U1> #{id} completed.").as_str()
    );
}

#[tokio::test]
async fn dm_mode_writes_to_the_requester_with_the_reason_of_a_failure() {
    let rig = start(NotifyMode::Dm).await;
    let (id, _) = task(&rig, "deploy the site").await;
    end(
        &rig,
        id,
        Ending::Failed {
            error: "disk <full>\nat /srv".into(),
            cause: "executor".into(),
            session_id: None,
        },
    )
    .await;
    settled(&rig, id).await;
    let posted = posted(&rig, id);
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["channel"], "U1", "a message to the person");
    assert!(posted[0]["thread_ts"].is_null(), "{posted:?}");
    assert_eq!(
        posted[0]["text"],
        format!(
            "Your task #{id} in <#C1> failed: disk &lt;full&gt; at /srv. Its message there shows the details."
        )
        .as_str()
    );
}

#[tokio::test]
async fn off_mode_tells_nobody() {
    let rig = start(NotifyMode::Off).await;
    let (id, _) = task(&rig, "tidy the docs").await;
    end(
        &rig,
        id,
        Ending::Cancelled {
            note: "cancelled by <@U1>".into(),
        },
    )
    .await;
    settled(&rig, id).await;
    assert!(posted(&rig, id).is_empty());
}

#[tokio::test]
async fn a_restart_right_after_the_end_still_mentions_once() {
    let rig = start(NotifyMode::Thread).await;
    let (id, _) = task(&rig, "bump the version").await;
    end(&rig, id, completed()).await;
    let rig = rig
        .kill_and_restart(|s: &mut Settings| s.notify = NotifyMode::Thread)
        .await;
    settled(&rig, id).await;
    assert_eq!(posted(&rig, id).len(), 1, "{:?}", posted(&rig, id));
}

#[tokio::test]
async fn a_post_whose_answer_was_lost_is_not_posted_again_after_a_restart() {
    let rig = start(NotifyMode::Thread).await;
    let (id, ts) = task(&rig, "rename the module").await;
    rig.slack.lose_answers("chat.postMessage", 1);
    end(&rig, id, completed()).await;
    // Slack has the notification, the bot never hears so.
    eventually("the notification posted", || async {
        (!notices(&rig.slack.attempts("chat.postMessage"), id).is_empty()).then_some(())
    })
    .await;
    let (done, claim) = rig.store.notice_state(id).await.unwrap().unwrap();
    assert!(!done && claim.is_some(), "claimed, not settled");
    let rig = rig
        .kill_and_restart(|s: &mut Settings| s.notify = NotifyMode::Thread)
        .await;
    settled(&rig, id).await;
    assert_eq!(posted(&rig, id).len(), 1, "{:?}", posted(&rig, id));
    assert!(
        rig.slack
            .calls("conversations.replies")
            .iter()
            .any(|c| c.body["ts"] == ts.as_str()),
        "the thread was read before deciding"
    );
}

#[tokio::test]
async fn a_notification_slack_refuses_for_good_is_given_up_not_retried() {
    let rig = start(NotifyMode::Thread).await;
    let (id, _) = task(&rig, "archive me").await;
    rig.slack
        .fail_next("chat.postMessage", 1, "channel_not_found");
    end(&rig, id, completed()).await;
    settled(&rig, id).await;
    let tried = notices(&rig.slack.attempts("chat.postMessage"), id);
    assert_eq!(tried.len(), 1, "tried once: {tried:?}");
    assert!(posted(&rig, id).is_empty(), "nothing posted");
}

#[tokio::test]
async fn a_rate_limited_notification_is_posted_once_slack_allows_it() {
    let rig = start(NotifyMode::Thread).await;
    let (id, _) = task(&rig, "slow down").await;
    rig.slack.fail_next("chat.postMessage", 1, "ratelimited");
    end(&rig, id, completed()).await;
    settled(&rig, id).await;
    let calls = rig.slack.attempts("chat.postMessage");
    let tried = notices(&calls, id);
    assert_eq!(tried.len(), 2, "refused, then posted: {tried:?}");
    assert_eq!(posted(&rig, id).len(), 1);
    let refused = calls.iter().find(|c| c.error.is_some()).unwrap().at;
    let posted = calls
        .iter()
        .rfind(|c| c.error.is_none() && !notices(std::slice::from_ref(c), id).is_empty())
        .unwrap()
        .at;
    assert!(
        posted.duration_since(refused) >= Duration::from_secs(1),
        "waited for Retry-After"
    );
}

/// Through the bot's own paths: a cancel ends the task, the message is
/// edited to show it, and only then is the requester mentioned.
#[tokio::test]
async fn a_cancelled_task_is_announced_after_its_message_shows_it() {
    let rig = start(NotifyMode::Thread).await;
    let (id, ts) = task(&rig, "never mind").await;
    rig.baton(&format!("cancel #{id}"), "U1").await;
    settled(&rig, id).await;
    let posted = posted(&rig, id);
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(
        posted[0]["text"],
        format!("<@U1> #{id} cancelled.").as_str()
    );
    let calls = rig.slack.all_calls();
    let edited = calls
        .iter()
        .position(|c| {
            c.method == "chat.update"
                && c.body["ts"] == ts.as_str()
                && message_text(&c.body).contains("Cancelled")
        })
        .expect("the message shows the cancel");
    let mentioned = calls
        .iter()
        .position(|c| !notices(std::slice::from_ref(c), id).is_empty())
        .unwrap();
    assert!(edited < mentioned, "edited first, then mentioned");
}
