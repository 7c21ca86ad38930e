//! Buttons, mentions, threads and the read-only commands, driven the way Slack
//! drives them: signed HTTP requests to the bot's real routes, the Web API
//! answered by the fake Slack, and (where a task must run) an agent speaking
//! the wire protocol over a real WebSocket. Every wait is for an observable
//! outcome, with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use baton_bot::model::Retry;
use baton_shared::TaskId;
use baton_shared::protocol::BotMessage;
use baton_testkit::scene::*;
use baton_testkit::slack::RESPONSE_URL;
use baton_testkit::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_a_queued_task_removes_it_for_its_requester_or_an_admin_only() {
    let rig = Scene::start().await;
    assert_eq!(rig.baton("fix the flaky login test", "U1").await, "");
    let ts = rig.message_ts(1).await;
    let queued = rig.shows(&ts, "Queued").await;
    let cancel = button(&queued, "Cancel").expect("a Cancel button while queued");
    assert_eq!(
        (cancel["action_id"].as_str(), cancel["value"].as_str()),
        (Some("baton_cancel"), Some("1"))
    );

    // Someone else: refused, nothing changes.
    rig.click("U2", &cancel).await;
    let answer = rig.ephemeral("U2", 1).await;
    assert!(
        answer.contains("Only the person who started task #1 (or an admin)"),
        "{answer}"
    );
    assert_eq!(rig.store.task(1).await.unwrap().unwrap().state, "queued");

    // The requester: removed from the queue, and the message says so.
    rig.click("U1", &cancel).await;
    let answer = rig.ephemeral("U1", 1).await;
    assert!(
        answer.contains("Task #1 was removed from the queue"),
        "{answer}"
    );
    rig.task_when(1, "task #1 cancelled", |t| t.state == "cancelled")
        .await;
    let cancelled = rig.shows(&ts, "Cancelled").await;
    let text = message_text(&cancelled);
    assert!(text.contains("Cancelled by <@U1> while queued."), "{text}");
    assert!(
        button(&cancelled, "Cancel").is_none(),
        "no Cancel once cancelled"
    );
    assert!(
        button(&cancelled, "Retry").is_some(),
        "Retry once cancelled"
    );
    assert!(
        rig.baton("queue", "U1")
            .await
            .contains("every queue is empty")
    );

    // The old button again: a clear answer, and nothing changes (once the
    // final edit is recorded as landed, nothing more is written).
    rig.task_when(1, "task #1 synced", |t| t.slack_synced).await;
    let before = rig.store.task(1).await.unwrap().unwrap();
    let edits = rig.slack.calls("chat.update").len();
    rig.click("U1", &cancel).await;
    let answer = rig.ephemeral("U1", 2).await;
    assert!(
        answer.contains("already cancelled; that button no longer applies"),
        "{answer}"
    );
    assert_eq!(rig.store.task(1).await.unwrap().unwrap(), before);
    assert_eq!(rig.slack.calls("chat.update").len(), edits);

    // An admin may cancel someone else's task.
    assert_eq!(rig.baton("another one", "U1").await, "");
    let ts2 = rig.message_ts(2).await;
    let cancel2 = button(&rig.shows(&ts2, "Queued").await, "Cancel").unwrap();
    rig.click("UADMIN", &cancel2).await;
    assert!(
        rig.ephemeral("UADMIN", 1)
            .await
            .contains("Task #2 was removed from the queue")
    );
    rig.task_when(2, "task #2 cancelled", |t| t.state == "cancelled")
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_click_on_cancel_cancels_once_and_says_so() {
    let rig = Scene::start().await;
    rig.baton("fix the flaky login test", "U1").await;
    let ts = rig.message_ts(1).await;
    let cancel = button(&rig.shows(&ts, "Queued").await, "Cancel").unwrap();
    tokio::join!(rig.click("U1", &cancel), rig.click("U1", &cancel));
    rig.ephemeral("U1", 2).await;
    let answers: Vec<String> = rig
        .ephemerals("U1")
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_owned())
        .collect();
    let removed = answers
        .iter()
        .filter(|a| a.contains("removed from the queue"))
        .count();
    assert_eq!(removed, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|a| a.contains("already cancelled") || a.contains("already ended (cancelled)")),
        "{answers:?}"
    );
    let task = rig
        .task_when(1, "task #1 cancelled", |t| t.state == "cancelled")
        .await;
    assert_eq!(
        task.error.as_deref(),
        Some("Cancelled by <@U1> while queued.")
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_creates_one_new_task_and_says_so_in_the_old_thread() {
    let rig = Scene::start().await;
    rig.baton("review the auth module", "U1").await;
    let ts = rig.message_ts(1).await;
    let cancel = button(&rig.shows(&ts, "Queued").await, "Cancel").unwrap();
    rig.click("U1", &cancel).await;
    let retry = button(&rig.shows(&ts, "Cancelled").await, "Retry").unwrap();
    assert_eq!(retry["action_id"], "baton_retry");

    // Two clicks at once, by the two people who may (its requester and an
    // admin): one new task.
    tokio::join!(rig.click("U1", &retry), rig.click("UADMIN", &retry));
    let (a, b) = (
        rig.ephemeral("U1", 2).await,
        rig.ephemeral("UADMIN", 1).await,
    );
    let started: Vec<&String> = [&a, &b]
        .into_iter()
        .filter(|t| t.contains("runs again as #2"))
        .collect();
    assert_eq!(started.len(), 1, "{a:?} / {b:?}");
    let other = if a.contains("runs again") { &b } else { &a };
    assert!(
        other.contains("already retried as #2") || other.contains("being retried right now"),
        "{other}"
    );
    let new = rig
        .task_when(2, "the retry", |t| t.message_ts.is_some())
        .await;
    assert_eq!(
        (new.prompt.as_str(), new.persona.as_str()),
        ("the auth module", "review")
    );
    assert_eq!(new.parent_id, Some(1));
    assert_eq!(
        rig.store.task(1).await.unwrap().unwrap().retry(),
        Retry::As(TaskId(2))
    );

    // The old thread says so, once; the old message points to the new task.
    let notes = eventually("the note in the old thread", || async {
        let notes: Vec<Value> = rig
            .slack
            .calls("chat.postMessage")
            .into_iter()
            .filter(|c| c.body["thread_ts"] == ts.as_str())
            .map(|c| c.body)
            .collect();
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes.len(), 1);
    let note = notes[0]["text"].as_str().unwrap();
    assert!(note.ends_with("retried this task as #2."), "{note}");
    let old = rig.shows(&ts, "Retried as *#2*").await;
    assert!(button(&old, "Retry").is_none(), "retried: no Retry button");

    // Later, the old button once more: nothing new.
    rig.click("U1", &retry).await;
    let answer = rig.ephemeral("U1", 3).await;
    assert!(answer.contains("already retried as #2"), "{answer}");
    assert_eq!(rig.task_count().await, 2);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_a_finished_task_gets_a_clear_answer_and_changes_nothing() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    rig.baton("say hello", "U1").await;
    let submit = agent.submitted().await;
    agent.start(submit.task);
    let ts = rig.message_ts(1).await;
    let cancel = button(&rig.shows(&ts, "Running").await, "Cancel").unwrap();

    // Cancel twice while it runs: the agent is asked once.
    rig.click("U1", &cancel).await;
    let first = rig.ephemeral("U1", 1).await;
    assert!(first.contains("Cancelling task #1"), "{first}");
    rig.click("U1", &cancel).await;
    let second = rig.ephemeral("U1", 2).await;
    assert!(
        second.contains("Task #1 is already being cancelled"),
        "{second}"
    );

    // It finishes before it stops.
    agent.complete(submit.task, "hello", "sess-1");
    let frames = agent.frames_until_ack(submit.task).await;
    let cancels = frames
        .iter()
        .filter(|f| matches!(f, BotMessage::Cancel { task } if *task == submit.task))
        .count();
    assert_eq!(cancels, 1, "{frames:?}");
    rig.shows(&ts, "Completed").await;
    // Settled: the final state is shown and recorded as such.
    let before = rig
        .task_when(1, "the final state recorded as shown", |t| t.slack_synced)
        .await;

    rig.click("U1", &cancel).await;
    let answer = rig.ephemeral("U1", 3).await;
    assert!(
        answer.contains("Task #1 is already completed; that button no longer applies"),
        "{answer}"
    );
    assert_eq!(rig.store.task(1).await.unwrap().unwrap(), before);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_result_continues_in_the_thread_in_order_once() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    rig.baton("write the report", "U1").await;
    let submit = agent.submitted().await;
    agent.start(submit.task);
    // Long enough for the thread, short enough not to need a file.
    let result: String = (1..=8)
        .map(|i| {
            format!(
                "## Section {i}\n\n{}\n\n```\ncode {i} <&>\n```\n",
                "Findings & notes. ".repeat(50)
            )
        })
        .collect();
    agent.complete(submit.task, &result, "sess-1");
    let ts = rig.message_ts(1).await;
    rig.task_when(1, "the final state shown", |t| t.slack_synced)
        .await;

    let message = rig.shown(&ts);
    let text = message_text(&message);
    assert!(
        text.contains("*Section 1*") && text.contains("The result continues in this thread"),
        "{text}"
    );
    let replies: Vec<Value> = rig.slack.thread(&ts).into_iter().skip(1).collect();
    let ids: Vec<String> = replies
        .iter()
        .map(|m| m["blocks"][0]["block_id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (1..=ids.len())
        .map(|n| baton_bot::slack::render::part_block_id(1, n))
        .collect();
    assert!((2..=3).contains(&ids.len()), "{ids:?}");
    assert_eq!(ids, want, "each part once, in order");
    assert!(rig.slack.uploaded_files().is_empty(), "no file");
    let all = replies.iter().map(message_text).collect::<String>();
    assert!(
        all.contains("*Section 8*") && all.contains("code 8 &lt;&amp;&gt;"),
        "the end is there"
    );
    let task = rig.store.task(1).await.unwrap().unwrap();
    assert_eq!(task.result_parts_posted as usize, ids.len());
    // Before posting parts it read the thread back, and Slack took the call.
    assert_eq!(rig.slack.calls("conversations.replies").len(), 1);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_thousand_line_result_is_uploaded_as_one_file_with_its_beginning_shown() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    rig.baton("write the long report", "U1").await;
    let submit = agent.submitted().await;
    agent.start(submit.task);
    let result: String = (1..=6_000)
        .map(|i| format!("line {i}: everything checked & fine\n"))
        .collect();
    agent.complete(submit.task, &result, "sess-1");
    let ts = rig.message_ts(1).await;
    rig.task_when(1, "the final state shown", |t| t.slack_synced)
        .await;

    let files = rig.slack.uploaded_files();
    assert_eq!(files.len(), 1, "one file");
    assert_eq!(files[0].name, "task-1.md");
    assert_eq!(
        String::from_utf8(files[0].bytes.clone()).unwrap(),
        result,
        "the whole result"
    );
    assert_eq!(
        files[0].shared_in,
        Some(("C1".to_owned(), Some(ts.clone()))),
        "shared in the task's thread"
    );
    let text = message_text(&rig.shown(&ts));
    assert!(
        text.contains("line 1: everything checked &amp; fine"),
        "{text}"
    );
    assert!(!text.contains("line 6000:"), "only the beginning: {text}");
    assert!(
        text.contains("the whole result is in the file `task-1.md`"),
        "{text}"
    );
    let thread = rig.slack.thread(&ts);
    let replies = &thread[1..];
    assert!(replies.len() <= 3, "{} replies", replies.len());
    assert_eq!(
        replies[0]["blocks"][0]["block_id"],
        baton_bot::slack::render::part_block_id(1, 1)
    );
    // The upload went through both calls, with the bot token (the fake checks it).
    assert_eq!(rig.slack.calls("files.getUploadURLExternal").len(), 1);
    assert_eq!(rig.slack.calls("files.completeUploadExternal").len(), 1);
    let task = rig.store.task(1).await.unwrap().unwrap();
    assert_eq!(task.result_parts_posted, 1, "recorded as shared");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_posts_of_one_channel_never_burst_faster_than_the_pacing() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    // Two long results in one channel, one right after the other: three
    // replies, then a file while the replies are still going out.
    let replies: String = (1..=8)
        .map(|i| format!("## Section {i}\n\n{}\n", "Findings & notes. ".repeat(50)))
        .collect();
    let file: String = (1..=6_000).map(|i| format!("line {i}\n")).collect();
    // No thread post can be paced before the first result reaches the bot.
    let first_result_sent = tokio::time::Instant::now();
    for (prompt, result) in [("first report", &replies), ("second report", &file)] {
        rig.baton(prompt, "U1").await;
        let submit = agent.submitted().await;
        agent.start(submit.task);
        agent.complete(submit.task, result, "sess-1");
    }
    for id in [1, 2] {
        rig.task_when(id, "the final state shown", |t| t.slack_synced)
            .await;
    }

    let mut posts: Vec<Call> = rig
        .slack
        .calls("chat.postMessage")
        .into_iter()
        .filter(|c| c.body["thread_ts"].is_string())
        .chain(rig.slack.calls("files.completeUploadExternal"))
        .collect();
    posts.sort_by_key(|c| c.at);
    assert!(posts.len() >= 3, "{} thread posts", posts.len());
    // The fake records when a post arrives, which on a loaded machine can be
    // any time after the bot sent it: two arrivals may be closer than the
    // bot's pacing. What arrival times do show whatever the machine's speed:
    // the bot's N paced posts take N - 1 intervals at least, counted from
    // before the first result. (The gap between each two, on virtual time:
    // consolidator::tests::thread_posts_of_one_channel_are_paced….)
    let paced = baton_bot::slack::consolidator::CHANNEL_POST_INTERVAL
        * u32::try_from(posts.len() - 1).unwrap();
    let spread = posts.last().unwrap().at.duration_since(first_result_sent);
    assert!(
        spread >= paced,
        "{} thread posts within {spread:?} of the first result",
        posts.len()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_works_like_the_slash_command_once_per_event() {
    let rig = Scene::start().await;
    rig.event(
        "Ev1",
        mention("U1", "review the auth module", "1700000100.000100", None),
        None,
    )
    .await;
    let task = rig
        .task_when(1, "the mention's task", |t| t.message_ts.is_some())
        .await;
    assert_eq!(
        (
            task.persona.as_str(),
            task.prompt.as_str(),
            task.requester.as_str(),
            task.channel_id.as_str()
        ),
        ("review", "the auth module", "U1", "C1")
    );
    assert_eq!(
        task.thread_ts, None,
        "a channel mention starts a top-level message"
    );

    // Slack's retry of the same event, and the `message` event that
    // duplicates the mention, and the bot's own messages: nothing new.
    rig.event(
        "Ev1",
        mention("U1", "review the auth module", "1700000100.000100", None),
        Some(1),
    )
    .await;
    rig.event(
        "Ev2",
        message(
            "U1",
            &format!("<@{BOT_USER}> review the auth module"),
            "1700000100.000100",
            None,
        ),
        None,
    )
    .await;
    let ts = task.message_ts.clone().unwrap();
    let mut own = message(BOT_USER, "fix it", "1700000100.000300", Some(&ts));
    own["bot_id"] = json!("BBATON");
    own["subtype"] = json!("bot_message");
    rig.event("Ev3", own, None).await;
    rig.event(
        "Ev4",
        message(BOT_USER, "fix it", "1700000100.000400", Some(&ts)),
        None,
    )
    .await;
    // The next mention is the signal that the ones before it were handled.
    rig.event(
        "Ev5",
        mention("U1", "help", "1700000100.000500", None),
        None,
    )
    .await;
    let help = rig.ephemeral("U1", 1).await;
    assert_eq!(help, baton_bot::commands::help());
    assert_eq!(rig.task_count().await, 1, "one task for one mention");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_reply_continues_the_session_of_the_threads_latest_task() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    rig.baton("plan the migration", "U1").await;
    let first = agent.submitted().await;
    assert_eq!(first.session_id, None);
    agent.start(first.task);
    agent.complete(first.task, "the plan", "sess-1");
    let root = rig.message_ts(1).await;
    rig.shows(&root, "Completed").await;

    // A reply in the thread (by an admin; the requester may too): a
    // follow-up resuming the session, posted in the thread.
    rig.event(
        "Ev10",
        message(
            "UADMIN",
            "now do step one",
            "1700000200.000100",
            Some(&root),
        ),
        None,
    )
    .await;
    let second = agent.submitted().await;
    assert_eq!(second.task, TaskId(2));
    assert_eq!(second.session_id.as_deref(), Some("sess-1"));
    assert_eq!(second.prompt, "now do step one");
    let task = rig
        .task_when(2, "the follow-up's message", |t| t.message_ts.is_some())
        .await;
    assert_eq!(
        (task.parent_id, task.thread_ts.as_deref()),
        (Some(1), Some(root.as_str()))
    );
    assert_eq!(task.requester, "UADMIN");
    let posted_in_thread = rig.slack.thread(&root);
    assert!(
        posted_in_thread
            .iter()
            .any(|m| m["ts"] == task.message_ts.clone().unwrap().as_str()),
        "the follow-up's message is in the thread"
    );
    // Slack retries the reply's event: no second follow-up.
    rig.event(
        "Ev10",
        message(
            "UADMIN",
            "now do step one",
            "1700000200.000100",
            Some(&root),
        ),
        Some(1),
    )
    .await;

    // While it runs, another reply does not start a second run of the
    // session: it is kept, and the thread says so to the person.
    agent.start(second.task);
    rig.task_when(2, "the follow-up running", |t| t.state == "running")
        .await;
    rig.event(
        "Ev11",
        message("U1", "and step two", "1700000200.000200", Some(&root)),
        None,
    )
    .await;
    let waits = rig
        .task_when(3, "the kept reply", |t| t.message_ts.is_some())
        .await;
    assert_eq!(
        (waits.state.as_str(), waits.after_task, waits.parent_id),
        ("queued", Some(2), Some(2))
    );
    let note = eventually("the thread's note", || async {
        rig.slack
            .thread(&root)
            .into_iter()
            .find(|m| m["text"].as_str().is_some_and(|t| t.contains("will run")))
    })
    .await;
    assert!(
        note["text"]
            .as_str()
            .unwrap()
            .contains("<@U1> Your reply will run as task #3 when #2 finishes"),
        "{note}"
    );
    assert!(
        rig.ephemerals("U1").is_empty(),
        "{:?}",
        rig.ephemerals("U1")
    );

    // Once it ended, the kept reply runs in the session it made.
    agent.complete(second.task, "step one done", "sess-2");
    let third = agent.submitted().await;
    assert_eq!(third.task, TaskId(3));
    assert_eq!(third.session_id.as_deref(), Some("sess-2"));
    assert_eq!(third.prompt, "and step two");
    agent.start(third.task);
    agent.complete(third.task, "step two done", "sess-3");
    rig.task_when(3, "the kept reply completed", |t| t.state == "completed")
        .await;

    // A reply mentioning the bot (Slack sends it as both `app_mention` and
    // `message`) continues the latest session, once.
    let text = format!("<@{BOT_USER}> and step three");
    rig.event(
        "Ev12",
        message("U1", &text, "1700000200.000300", Some(&root)),
        None,
    )
    .await;
    rig.event(
        "Ev13",
        mention("U1", "and step three", "1700000200.000300", Some(&root)),
        None,
    )
    .await;
    let fourth = agent.submitted().await;
    assert_eq!(fourth.task, TaskId(4));
    assert_eq!(
        fourth.session_id.as_deref(),
        Some("sess-3"),
        "the thread's latest session"
    );
    assert_eq!(fourth.prompt, "and step three");
    agent.start(fourth.task);
    agent.complete(fourth.task, "step three done", "sess-4");
    rig.task_when(4, "the fourth task completed", |t| t.state == "completed")
        .await;
    assert_eq!(rig.task_count().await, 4);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_queue_and_help_answer() {
    let rig = Scene::start().await;
    assert_eq!(rig.baton("help", "U1").await, baton_bot::commands::help());
    assert_eq!(rig.baton("", "U1").await, baton_bot::commands::help());
    assert!(
        rig.baton("status", "U1")
            .await
            .contains("You have no tasks yet")
    );
    assert!(
        rig.baton("queue", "U1")
            .await
            .contains("every queue is empty")
    );

    rig.baton("fix the flaky login test", "U1").await;
    rig.baton("ops restart the cache", "U2").await;
    rig.message_ts(2).await;
    let status = rig.baton("status #1", "U2").await;
    assert!(
        status.contains("#1")
            && status.contains("queued")
            && status.contains("fix the flaky login test"),
        "{status}"
    );
    let mine = rig.baton("status", "U1").await;
    assert!(
        mine.contains("Your recent tasks") && mine.contains("#1") && !mine.contains("#2"),
        "{mine}"
    );
    assert!(
        rig.baton("status #99", "U1")
            .await
            .contains("There is no task #99")
    );
    let queue = rig.baton("queue", "U1").await;
    assert!(
        queue.contains("*#1* `web` · position 1 of 2")
            && queue.contains("*#2* `web` · position 2 of 2"),
        "{queue}"
    );
    assert!(
        rig.baton("cancel #1", "U2")
            .await
            .contains("Only the person who started task #1")
    );
    rig.stop().await;
}

/// Issue 13, finding 4: cancelling a dispatched task its agent has not
/// accepted yet, then letting the accept time out, ends it `cancelled`; it
/// never goes to another agent (nor back to the same one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_before_it_was_accepted_ends_cancelled_and_is_never_sent_again() {
    let rig = Scene::start_with(|s| {
        two_agents(s);
        s.dispatch_timeout_secs = 1;
    })
    .await;
    let mut a = FakeAgent::connect(rig.addr()).await;
    assert_eq!(rig.baton("fix the login", "U1").await, "");
    assert_eq!(
        a.submitted().await.task,
        TaskId(1),
        "a has it, says nothing"
    );
    let mut b = FakeAgent::connect_as(rig.addr(), SECOND_KEY, 2).await;

    let answer = rig.baton("cancel #1", "U1").await;
    assert!(answer.contains("#1"), "{answer}");
    let ended = rig
        .task_when(1, "task #1 to end", |t| {
            !matches!(t.state.as_str(), "dispatched" | "queued")
        })
        .await;
    assert_eq!(ended.state, "cancelled", "{ended:?}");
    let ts = rig.message_ts(1).await;
    rig.shows(&ts, "Cancelled").await;

    // One new task for each agent: whatever the bot sent them before arrives first.
    assert_eq!(rig.baton("two", "U1").await, "");
    assert_eq!(rig.baton("three", "U1").await, "");
    let mut handed = Vec::new();
    for agent in [&mut a, &mut b] {
        for frame in agent.frames_until_submit().await {
            if let BotMessage::Submit(s) = frame {
                handed.push(s.task);
            }
        }
    }
    handed.sort();
    assert_eq!(handed, [TaskId(2), TaskId(3)], "task #1 was sent again");
    rig.stop().await;
}

/// Issue 13, finding 6: a slash command is answered at once; what waits for
/// Slack happens after. Here Slack takes 10 s to post any message, and the
/// answers to `/baton retry` and to a new task arrive before any post lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_commands_are_answered_before_a_slow_slack_has_posted_anything() {
    let rig = Scene::start().await;
    rig.baton("review the auth module", "U1").await;
    let ts = rig.message_ts(1).await;
    let answer = rig.baton("cancel #1", "U1").await;
    assert!(answer.contains("#1"), "{answer}");
    rig.shows(&ts, "Cancelled").await;
    let posts_before = rig.slack.calls("chat.postMessage").len();

    rig.slack.delay("chat.postMessage", Duration::from_secs(10));
    let url = response_url_of(&rig.slack_url, "retry");
    let (status, body) = baton_replying_to(rig.addr(), "retry #1", "U1", &url).await;
    // The answer is here, and Slack has not finished a single post since.
    let posts_now = rig.slack.calls("chat.postMessage").len();
    assert_eq!(status, 200, "{body}");
    assert_eq!(posts_now, posts_before, "the answer waited for Slack");
    let answered = if body.is_empty() {
        rig.slack.responses("retry").join("\n")
    } else {
        body
    };
    assert!(answered.contains("runs again as #2"), "{answered}");
    let (status, body) = baton(rig.addr(), "write the report", "U1").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(
        rig.slack.calls("chat.postMessage").len(),
        posts_before,
        "the answer waited for Slack"
    );

    // The posts land in the end: the note in the old thread, the new messages.
    rig.slack.delay("chat.postMessage", Duration::ZERO);
    eventually("the note in the old thread", || async {
        rig.slack
            .calls("chat.postMessage")
            .iter()
            .any(|c| c.body["thread_ts"] == ts.as_str())
            .then_some(())
    })
    .await;
    rig.message_ts(3).await;
    rig.stop().await;
}

/// Issue 12, item 8: when the task's message cannot be posted (the app is
/// not in the channel), the person is told through the command's
/// `response_url` what happened and what to do, and the task does not run
/// unseen: it ends cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_message_cannot_be_posted_is_not_run_and_the_person_is_told_how_to_fix_it() {
    let rig = Scene::start().await;
    rig.slack.fail_next("chat.postMessage", 1, "not_in_channel");
    let url = response_url_of(&rig.slack_url, "run");
    let (status, body) = baton_replying_to(rig.addr(), "fix the login", "U1", &url).await;
    assert_eq!((status, body.as_str()), (200, ""));
    let told = eventually("the answer through response_url", || async {
        rig.slack.responses("run").into_iter().next()
    })
    .await;
    assert!(
        told.contains("#1") && told.contains("not_in_channel") && told.contains("/invite @baton"),
        "{told}"
    );
    let task = rig
        .task_when(1, "task #1 to end", |t| t.state != "queued")
        .await;
    assert_eq!(task.state, "cancelled");
    assert!(task.message_ts.is_none());
    // Slack refused one call on purpose: not the clean stop's check.
    rig.bot.stop().await;
}

/// A bot whose acknowledgements wait for nothing (budget zero), and a guest's
/// `/baton` to it whose refusal comes only after a slow `users.info`: its
/// answer can only come late, through the `response_url` keyed `late`.
/// `before` prepares the fake Slack first.
async fn a_late_refusal(
    dir: &std::path::Path,
    before: impl FnOnce(&FakeSlack),
) -> (std::sync::Arc<FakeSlack>, Bot, baton_bot::store::Store) {
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir, |s| s.ack_budget = Duration::ZERO).await;
    let store = bot.store().await;
    store.ensure_project("web").await.unwrap();
    slack.set_user(
        "UGUEST",
        FakeUser {
            is_restricted: true,
            ..FakeUser::default()
        },
    );
    slack.delay("users.info", Duration::from_millis(200));
    before(&slack);
    let reply_to = response_url_of(&url, "late");
    let (status, body) =
        baton_replying_to(bot.addr, "--project web fix the login", "UGUEST", &reply_to).await;
    assert_eq!((status, body.as_str()), (200, ""));
    (slack, bot, store)
}

/// What the `late` response URL was told first, once it was.
async fn told_late(slack: &FakeSlack) -> String {
    let told = eventually("the answer through response_url", || async {
        slack.responses("late").into_iter().next()
    })
    .await;
    assert!(
        told.contains("Guests and people of other organizations"),
        "{told}"
    );
    told
}

/// A slash command whose work outlasts the acknowledgement's budget (here
/// Slack takes a while to say who the person is; the budget is zero) is
/// acknowledged empty, and its answer follows through its `response_url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_outlasts_the_acknowledgement_follows_through_response_url() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, bot, store) = a_late_refusal(dir.path(), |_| {}).await;
    told_late(&slack).await;
    assert!(
        store.recent_tasks(10).await.unwrap().is_empty(),
        "a refusal creates nothing"
    );
    bot.stop().await;
}

/// A late answer whose `response_url` post fails (Slack answers 500 twice)
/// is tried again until it gets through: it is all the person is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_is_tried_again_until_its_response_url_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (slack, bot, _) = a_late_refusal(dir.path(), |slack| {
        slack.fail_next(RESPONSE_URL, 2, "service unavailable");
    })
    .await;
    told_late(&slack).await;
    let tries = slack.attempts(RESPONSE_URL);
    assert_eq!(tries.len(), 3, "two refused, then taken: {tries:?}");
    assert_eq!(slack.responses("late").len(), 1, "told once");
    bot.stop().await;
}

/// Issue 13, finding 8: a mention acknowledged just before the bot stopped
/// (Slack will not send it again) is handled when the bot starts again; a
/// later delivery of the same event changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_acknowledged_before_a_crash_is_handled_after_the_restart() {
    let rig = Scene::start().await;
    let payload = json!({
        "type": "event_callback",
        "team_id": "T1",
        "event_id": "EvCrash",
        "authorizations": [{"user_id": BOT_USER}],
        "event": mention("U1", "fix the login", "1700000000.000100", None),
    });
    let Scene {
        slack,
        slack_url,
        bot,
        store,
        dir,
    } = rig;
    let addr = bot.addr;
    bot.kill().await;
    // What the bot had written when it acknowledged the event, and no more.
    assert!(
        store
            .record_event("EvCrash", &payload.to_string())
            .await
            .unwrap()
    );
    assert!(store.task(1).await.unwrap().is_none());

    let bot = Bot::restart(addr, &slack_url, dir.path(), |_| {}).await;
    let task = eventually("the mention's task", || async {
        store.task(1).await.unwrap()
    })
    .await;
    assert_eq!(
        (task.prompt.as_str(), task.requester.as_str()),
        ("fix the login", "U1")
    );
    eventually("the event marked handled", || async {
        store
            .unhandled_events()
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    let (status, _) = post_event(addr, &payload, Some(1)).await;
    assert_eq!(status, 200);
    let rig = Scene {
        slack,
        slack_url,
        bot,
        store,
        dir,
    };
    assert_eq!(rig.task_count().await, 1, "handled once");
    rig.stop().await;
}

/// A direct message to the app, in its Messages tab (`message.im`).
fn direct_message(user: &str, text: &str, ts: &str) -> Value {
    json!({"type": "message", "channel_type": "im", "user": user, "text": text, "channel": "D1", "ts": ts})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_works_like_a_mention_and_is_never_left_unanswered() {
    let rig = Scene::start().await;
    rig.event(
        "Ev1",
        direct_message("U1", "--project web say hi", "1700000200.000100"),
        None,
    )
    .await;
    let task = rig
        .task_when(1, "the direct message's task", |t| t.message_ts.is_some())
        .await;
    assert_eq!(
        (
            task.prompt.as_str(),
            task.requester.as_str(),
            task.channel_id.as_str(),
            task.project.as_str()
        ),
        ("say hi", "U1", "D1", "web")
    );
    let posted = rig.slack.calls("chat.postMessage");
    assert!(
        posted.iter().any(|c| c.body["channel"] == "D1"),
        "the task's message is in the conversation: {posted:?}"
    );

    // Words it cannot act on get an answer that says what it can do.
    rig.event(
        "Ev2",
        direct_message("U2", "help", "1700000200.000200"),
        None,
    )
    .await;
    assert_eq!(rig.ephemeral("U2", 1).await, baton_bot::commands::help());
    rig.event(
        "Ev3",
        direct_message("U2", "   ", "1700000200.000300"),
        None,
    )
    .await;
    let answer = rig.ephemeral("U2", 2).await;
    assert!(answer.contains("/baton help"), "{answer}");
    assert_eq!(
        rig.ephemerals("U2")[1]["channel"],
        "D1",
        "answered where it was asked"
    );
    assert_eq!(rig.task_count().await, 1);
    rig.stop().await;
}

/// Opening the app's Home tab, as Slack tells the app.
fn home_opened(user: &str) -> Value {
    json!({"type": "app_home_opened", "user": user, "channel": "D1", "tab": "home", "event_ts": "1700000300.000100"})
}

/// The text of the Home tab last published for `user`, once there is one.
async fn home_of(rig: &Scene, user: &str, n: usize) -> String {
    let view = eventually(&format!("home tab {n} of {user}"), || async {
        rig.slack
            .calls("views.publish")
            .into_iter()
            .filter(|c| c.body["user_id"] == user)
            .nth(n - 1)
            .map(|c| c.body)
    })
    .await;
    assert_eq!(view["view"]["type"], "home", "{view}");
    message_text(&view["view"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_tab_shows_a_persons_tasks_and_projects_and_the_fleet_to_admins() {
    let rig = Scene::start().await;
    rig.baton("fix the flaky login test", "U1").await;
    let ts = rig.message_ts(1).await;

    rig.event("Ev1", home_opened("U1"), None).await;
    let member = home_of(&rig, "U1", 1).await;
    let link = format!(
        "https://test.slack.com/archives/C1/p{}",
        ts.replace('.', "")
    );
    assert!(
        member.contains(&format!("<{link}|#1>")) && member.contains("fix the flaky login test"),
        "the task, linked to its message: {member}"
    );
    assert!(
        member.contains("*Projects you may use*\n• `web`"),
        "{member}"
    );
    assert!(
        !member.contains("*Agents*") && !member.contains("*Queues*"),
        "members do not see the fleet: {member}"
    );

    // An admin sees the agents and the queues; someone with no tasks is told how to start.
    rig.event("Ev2", home_opened("UADMIN"), None).await;
    let fleet = home_of(&rig, "UADMIN", 1).await;
    assert!(
        fleet.contains("*Agents*") && fleet.contains("*Queues*"),
        "{fleet}"
    );
    assert!(fleet.contains("• `web`: 1 waiting"), "{fleet}");
    assert!(
        fleet.contains("None yet. Start one with `/baton PROMPT`"),
        "{fleet}"
    );
    assert!(
        !fleet.contains("fix the flaky"),
        "not someone else's task: {fleet}"
    );

    // A project whose list leaves U2 out is not offered to U2.
    rig.slack.set_user("U2", FakeUser::default());
    let answer = admin(rig.addr(), "project allow web <@U1>").await;
    assert!(answer.contains("web"), "{answer}");
    rig.event("Ev3", home_opened("U2"), None).await;
    let outsider = home_of(&rig, "U2", 1).await;
    assert!(
        outsider.contains("None yet. An admin can let you in"),
        "{outsider}"
    );
    rig.stop().await;
}

/// A session id an agent reports that could become a flag or shell words
/// on a command line is never handed back in a follow-up: it starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_never_resumes_a_session_id_that_is_not_one() {
    let rig = Scene::start().await;
    let mut agent = FakeAgent::connect(rig.addr()).await;
    rig.baton("plan the migration", "U1").await;
    let first = agent.submitted().await;
    agent.start(first.task);
    agent.complete(first.task, "the plan", "--dangerously-skip-permissions");
    let root = rig.message_ts(1).await;
    rig.shows(&root, "Completed").await;
    rig.event(
        "Ev20",
        message("U1", "now do step one", "1700000400.000100", Some(&root)),
        None,
    )
    .await;
    let second = agent.submitted().await;
    assert_eq!(second.task, TaskId(2));
    assert_eq!(second.session_id, None, "a new session, not the flag");
    rig.stop().await;
}
