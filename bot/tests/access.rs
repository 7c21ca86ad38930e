//! Who may do what, driven the way Slack drives it: signed HTTP requests to
//! the bot's real routes, `users.info`, `usergroups.users.list` and
//! `conversations.members` answered by the fake Slack, and agents speaking
//! the wire protocol over real WebSockets. Every rule is tried allowed and
//! refused; every refusal must say what would allow it, and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use baton_bot::model::Retry;
use baton_bot::settings::DefaultAccess;
use baton_shared::ProjectName;
use baton_shared::protocol::{AgentMessage, Hello, PROTOCOL_VERSION, ProjectInfo};
use baton_testkit::scene::Scene;
use baton_testkit::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How long any one outcome may take to show.
const DEADLINE: Duration = Duration::from_secs(20);

/// The scene (project `web` bound to channel C1, no agent, the fake Slack)
/// with project `api` too, bound nowhere.
async fn start_with(tweak: impl FnOnce(&mut baton_bot::settings::Settings)) -> Scene {
    let rig = Scene::start_with(tweak).await;
    rig.store.ensure_project("api").await.unwrap();
    rig
}

async fn start() -> Scene {
    start_with(|_| {}).await
}

/// Clicks a button `action` carrying task `id`, as `user` in C1; returns
/// the ephemeral answer (the `n`th to that user).
async fn click(rig: &Scene, user: &str, action: &str, id: i64, n: usize) -> String {
    rig.click(user, &json!({"action_id": action, "value": id.to_string()}))
        .await;
    rig.ephemeral(user, n).await
}

/// Asserts that `/baton` as `user` was refused with a text containing every
/// one of `says`, and that no task was created.
async fn refused(rig: &Scene, reply: &str, says: &[&str]) {
    for s in says {
        assert!(reply.contains(s), "{s:?} missing from the refusal: {reply}");
    }
    assert!(
        reply.to_lowercase().contains("nothing was started"),
        "{reply}"
    );
    assert_eq!(rig.task_count().await, 0, "a refusal creates nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_empty_list_members_may_and_guests_and_outsiders_may_not_unless_named() {
    let rig = start().await;
    rig.slack.set_user(
        "UGUEST",
        FakeUser {
            is_restricted: true,
            ..FakeUser::default()
        },
    );
    rig.slack.set_user(
        "USINGLE",
        FakeUser {
            is_ultra_restricted: true,
            ..FakeUser::default()
        },
    );
    rig.slack.set_user(
        "UOTHER",
        FakeUser {
            team_id: "T2".into(),
            ..FakeUser::default()
        },
    );
    for user in ["UGUEST", "USINGLE", "UOTHER"] {
        let reply = rig.baton("cat ~/.ssh/id_rsa", user).await;
        let allow = format!("/baton-admin project allow web <@{user}>");
        refused(
            &rig,
            &reply,
            &["Guests and people of other organizations", &allow],
        )
        .await;
    }
    let audit = rig.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a == "UOTHER refused.task web guest_or_outsider in C1"),
        "{audit:?}"
    );

    // A full member: allowed.
    assert_eq!(rig.baton("fix the flaky test", "U1").await, "");
    assert_eq!(rig.store.task(1).await.unwrap().unwrap().requester, "U1");

    // A guest named by id: allowed (no other entry names a person, so the
    // rest stay as they were: refused).
    let added = rig.admin("project allow web <@UGUEST|guest>").await;
    assert!(
        added.contains("Added to the access list of `web`: <@UGUEST>"),
        "{added}"
    );
    assert_eq!(rig.baton("fix it", "UGUEST").await, "");
    assert_eq!(
        rig.store.task(2).await.unwrap().unwrap().requester,
        "UGUEST"
    );
    let reply = rig.baton("fix it", "UOTHER").await;
    assert!(
        reply.contains("Guests and people of other organizations"),
        "{reply}"
    );
    assert_eq!(rig.task_count().await, 2);
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_slack_cannot_say_who_someone_is_the_task_is_refused() {
    let rig = start().await;
    rig.slack.fail_next("users.info", 1, "internal_error");
    let reply = rig.baton("fix it", "U1").await;
    refused(&rig, &reply, &["could not check with Slack", "users:read"]).await;
    let audit = rig.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a == "U1 refused.task web slack_unavailable in C1"),
        "{audit:?}"
    );
    // A failure is not remembered: the next try asks again, and is let in;
    // what Slack said is then cached (one call for two tasks).
    assert_eq!(rig.baton("fix it", "U1").await, "");
    assert_eq!(rig.baton("fix it again", "U1").await, "");
    assert_eq!(rig.task_count().await, 2);
    assert_eq!(rig.slack.calls("users.info").len(), 1);
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_naming_people_lets_in_them_and_their_user_groups_only() {
    let rig = start().await;
    rig.slack.set_group("S1", &["U2"]);
    let added = rig
        .admin("project allow web <@U1> <!subteam^S1|@devs>")
        .await;
    assert!(added.contains("<@U1>, <!subteam^S1>"), "{added}");
    assert!(
        added.contains("members of <!subteam^S1>"),
        "the rule: {added}"
    );

    let reply = rig.baton("fix it", "U3").await;
    refused(
        &rig,
        &reply,
        &[
            "not on the access list of project `web`",
            "/baton-admin project allow web <@U3>",
        ],
    )
    .await;
    assert_eq!(rig.baton("fix it", "U1").await, "", "named");
    assert_eq!(rig.baton("fix it", "U2").await, "", "through its group");
    assert_eq!(rig.baton("fix it", "UADMIN").await, "", "an admin always");
    assert_eq!(rig.task_count().await, 3);

    // Removed: refused again.
    let removed = rig.admin("project disallow web <@U1>").await;
    assert!(
        removed.contains("Removed from the access list of `web`: <@U1>"),
        "{removed}"
    );
    let reply = rig.baton("fix it", "U1").await;
    assert!(reply.contains("not on the access list"), "{reply}");
    // Retry goes through the same check: U1's own task #1 is not run again.
    assert!(
        rig.baton("cancel #1", "U1")
            .await
            .contains("removed from the queue")
    );
    let retry = rig.baton("retry #1", "U1").await;
    assert!(retry.contains("not on the access list"), "{retry}");
    assert_eq!(rig.task_count().await, 3);
    let first = rig.store.task(1).await.unwrap().unwrap();
    assert_eq!(
        first.retry(),
        Retry::None,
        "a refused retry can be tried again"
    );

    // The group cannot be read: refused, not allowed.
    let dir = tempfile::tempdir().unwrap();
    let (slack, url) = fake_slack().await;
    let bot = Bot::start(&url, dir.path(), |_| {}).await;
    admin(bot.addr, "project bind web").await;
    admin(bot.addr, "project allow web <!subteam^S1>").await;
    slack.fail_next("usergroups.users.list", 1, "missing_scope");
    let (_, body) = baton(bot.addr, "fix it", "U2").await;
    assert!(body.contains("could not check with Slack"), "{body}");
    assert!(bot.store().await.task(1).await.unwrap().is_none());
    bot.stop().await;
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_naming_channels_checks_the_channel_and_project_is_no_way_around_it() {
    let rig = start().await;
    rig.admin("project allow api <#C2|ops>").await;
    // From C1 (bound to web), naming api: refused.
    let reply = rig.baton("--project api drop the cache", "U1").await;
    refused(
        &rig,
        &reply,
        &[
            "<#C1> is not one of them",
            "/baton-admin project allow api <#C1>",
        ],
    )
    .await;
    // Nor through a mention in C1.
    let payload = json!({
        "type": "event_callback", "team_id": "T1", "event_id": "Ev1",
        "authorizations": [{"user_id": "UBATON"}],
        "event": {"type": "app_mention", "user": "U1", "channel": "C1",
                  "text": "<@UBATON> --project api drop the cache", "ts": "1700000100.000100"},
    });
    post_event(rig.addr(), &payload, None).await;
    let answer = rig.ephemeral("U1", 1).await;
    assert!(answer.contains("<#C1> is not one of them"), "{answer}");
    assert_eq!(rig.task_count().await, 0);
    // From C2: allowed.
    assert_eq!(
        rig.command("/baton", "--project api drop the cache", "U1", "C2")
            .await,
        ""
    );
    let task = rig.store.task(1).await.unwrap().unwrap();
    assert_eq!(
        (task.project.as_str(), task.channel_id.as_str()),
        ("api", "C2")
    );
    let audit = rig.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a == "U1 refused.task api channel_not_listed in C1"),
        "{audit:?}"
    );
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_access_admins_an_empty_list_lets_only_admins_in() {
    let rig = start_with(|s| s.default_access = DefaultAccess::Admins).await;
    let reply = rig.baton("fix it", "U1").await;
    refused(
        &rig,
        &reply,
        &[
            "BATON_DEFAULT_ACCESS=admins",
            "/baton-admin project allow web <@U1>",
        ],
    )
    .await;
    let access = rig.admin("project access web").await;
    assert!(access.contains("only admins may start tasks"), "{access}");
    assert_eq!(rig.baton("fix it", "UADMIN").await, "");
    assert_eq!(rig.task_count().await, 1);
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_takes_only_its_personas() {
    let rig = start().await;
    let set = rig.admin("project personas web code,review").await;
    assert!(set.contains("`web` now takes `code`, `review`"), "{set}");
    for user in ["U1", "UADMIN"] {
        let reply = rig.baton("ops restart the database", user).await;
        refused(
            &rig,
            &reply,
            &[
                "does not take `ops` tasks",
                "/baton-admin project personas web code,review,ops",
            ],
        )
        .await;
    }
    assert_eq!(rig.baton("review the auth module", "U1").await, "");
    assert_eq!(rig.baton("fix it", "U1").await, "", "code");
    let all = rig.admin("project personas web all").await;
    assert!(all.contains("every persona"), "{all}");
    assert_eq!(rig.baton("ops restart the database", "U1").await, "");
    assert_eq!(rig.task_count().await, 3);
    assert!(
        rig.admin("project personas web code,bogus")
            .await
            .contains("`bogus` is not a persona")
    );
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_seen_by_its_channel_and_handled_by_its_requester_or_an_admin() {
    let rig = start().await;
    rig.slack.set_members("C1", &["U1", "U2"]);
    assert_eq!(rig.baton("fix the private thing", "U1").await, "");
    rig.store.task(1).await.unwrap().unwrap();

    // U3 is not in C1: learns nothing, whatever they try.
    let nothing = "There is no task #1.";
    for text in ["status #1", "cancel #1", "retry #1"] {
        let reply = rig.baton(text, "U3").await;
        assert!(reply.starts_with(nothing), "{text}: {reply}");
    }
    assert!(
        click(&rig, "U3", "baton_cancel", 1, 1)
            .await
            .starts_with(nothing)
    );
    assert!(
        click(&rig, "U3", "baton_retry", 1, 2)
            .await
            .starts_with(nothing)
    );
    assert_eq!(
        rig.baton("status #1", "U3").await,
        rig.baton("status #99", "U3").await.replace("#99", "#1"),
        "the same answer as for a task that does not exist"
    );
    let queue = rig.baton("queue", "U3").await;
    assert!(!queue.contains("#1"), "{queue}");

    // U2 is in C1: sees it, may not cancel or retry it.
    let status = rig.baton("status #1", "U2").await;
    assert!(
        status.contains("#1") && status.contains("fix the private thing"),
        "{status}"
    );
    let queue = rig.baton("queue", "U2").await;
    assert!(queue.contains("*#1* `web` · position 1 of 1"), "{queue}");
    assert!(
        rig.baton("cancel #1", "U2")
            .await
            .contains("Only the person who started task #1 (or an admin)")
    );
    assert_eq!(rig.store.task(1).await.unwrap().unwrap().state, "queued");

    // Slack cannot list C1's members: nobody but the requester and admins sees it.
    rig.slack.set_members("C9", &["U2"]);
    rig.command("/baton", "--project web another in C9", "U1", "C9")
        .await;
    rig.slack
        .fail_next("conversations.members", 1, "missing_scope");
    assert!(
        rig.baton("status #2", "U2")
            .await
            .starts_with("There is no task #2.")
    );

    // The requester and an admin may.
    assert!(rig.baton("status #1", "U1").await.contains("#1"));
    assert!(rig.baton("status #1", "UADMIN").await.contains("#1"));
    let cancelled = rig.baton("cancel #1", "UADMIN").await;
    assert!(
        cancelled.contains("Task #1 was removed from the queue"),
        "{cancelled}"
    );
    let retry = rig.baton("retry #1", "U2").await;
    assert!(
        retry.contains("Only the person who started task #1"),
        "{retry}"
    );
    let retried = rig.baton("retry #1", "U1").await;
    assert!(retried.contains("runs again as #3"), "{retried}");

    let audit = rig.audit().await;
    for entry in [
        "U3 refused.status #1 not visible",
        "U2 refused.cancel #1 not the requester",
    ] {
        assert!(audit.iter().any(|a| a == entry), "{entry} not in {audit:?}");
    }
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_only_the_persons_own_tasks_and_queue_lists_what_they_may_see() {
    let rig = start().await;
    rig.slack.set_members("C1", &["U1", "U2"]);
    rig.slack.set_members("C9", &["U3"]);
    assert!(
        rig.baton("status", "U2")
            .await
            .contains("You have no tasks yet")
    );
    rig.baton("first", "U1").await;
    rig.baton("second", "U2").await;
    rig.command("/baton", "--project web third, elsewhere", "U3", "C9")
        .await;
    let mine = rig.baton("status", "U1").await;
    assert!(mine.contains("*#1*") && !mine.contains("*#2*"), "{mine}");
    let queue = rig.baton("queue", "U1").await;
    assert!(
        queue.contains("*#1* `web` · position 1 of 3")
            && queue.contains("*#2* `web` · position 2 of 3")
            && !queue.contains("*#3*"),
        "{queue}"
    );
    assert!(
        queue.contains("no agent serving this project"),
        "why it waits: {queue}"
    );
    let queue = rig.baton("queue", "U3").await;
    assert!(queue.contains("*#3*") && !queue.contains("*#1*"), "{queue}");
    let tasks = rig.admin("tasks queued").await;
    assert!(
        tasks.find("*#3*").unwrap() < tasks.find("*#1*").unwrap(),
        "newest first: {tasks}"
    );
    assert!(rig.admin("tasks completed").await.contains("No tasks"));

    // The metrics count them without reading ended rows.
    rig.baton("cancel #2", "U2").await;
    let (_, metrics) = http(rig.addr(), "GET", "/metrics", &[], "").await;
    for line in [
        "baton_tasks{state=\"queued\"} 2\n",
        "baton_tasks{state=\"running\"} 0\n",
        "baton_queue_depth{project=\"web\"} 2\n",
        "baton_tasks_ended_total{state=\"cancelled\"} 1\n",
        "baton_tasks_ended_total{state=\"completed\"} 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in {metrics}");
    }
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_threads_requester_or_an_admin_continues_it() {
    let rig = start().await;
    rig.baton("plan the migration", "U1").await;
    let root = eventually("task #1's message", || async {
        rig.store.task(1).await.unwrap().and_then(|t| t.message_ts)
    })
    .await;
    let reply = |user: &str, ts: &str| {
        json!({
            "type": "event_callback", "team_id": "T1", "event_id": format!("Ev{ts}"),
            "authorizations": [{"user_id": "UBATON"}],
            "event": {"type": "message", "user": user, "channel": "C1",
                      "text": "now do it", "ts": ts, "thread_ts": root},
        })
    };
    // The task is queued: end it so a follow-up may start.
    rig.baton("cancel #1", "U1").await;
    post_event(rig.addr(), &reply("U2", "1700000200.000100"), None).await;
    let answer = rig.ephemeral("U2", 1).await;
    assert!(
        answer.contains("Only the person who started task #1 (or an admin) can continue it"),
        "{answer}"
    );
    assert_eq!(rig.task_count().await, 1);
    post_event(rig.addr(), &reply("U1", "1700000200.000200"), None).await;
    let follow = eventually("the follow-up", || async {
        rig.store.task(2).await.unwrap()
    })
    .await;
    assert_eq!(
        (follow.requester.as_str(), follow.parent_id),
        ("U1", Some(1))
    );
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_access_commands_change_the_lists_and_are_audited() {
    let rig = start().await;
    let none = rig.admin("project access web").await;
    assert!(
        none.contains("The access list is empty") && none.contains("every full member"),
        "{none}"
    );

    let added = rig
        .admin("project allow web <@U1> <#C1|dev> <!subteam^S7|@ops>")
        .await;
    assert!(added.contains("<@U1>, <#C1>, <!subteam^S7>"), "{added}");
    let again = rig.admin("project allow web <@U1>").await;
    assert!(again.contains("Already on it: <@U1>"), "{again}");
    let access = rig.admin("project access web").await;
    assert!(
        access.contains("<@U1> (user)")
            && access.contains("<#C1> (channel)")
            && access.contains("<!subteam^S7> (group)")
            && access.contains("only from <#C1>"),
        "{access}"
    );
    let rows = rig.store.access_list("web").await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.added_by == "UADMIN"));

    // Bad input: a clear error, nothing changes.
    let bad = rig.admin("project allow web @someone").await;
    assert!(bad.contains("`@someone` is not a person"), "{bad}");
    assert!(rig.admin("project allow web").await.contains("Who?"));
    assert_eq!(rig.store.access_list("web").await.unwrap().len(), 3);

    let approvers = rig.admin("project approvers web <@U2> <!subteam^S7>").await;
    assert!(
        approvers.contains("now: <@U2>, <!subteam^S7>"),
        "{approvers}"
    );
    let stored: Vec<(String, String)> = rig
        .store
        .approvers("web")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.kind, r.entry_id))
        .collect();
    assert_eq!(
        stored,
        [("user".into(), "U2".into()), ("group".into(), "S7".into())]
    );
    assert!(
        rig.admin("project approvers web")
            .await
            .contains("<@U2>, <!subteam^S7>")
    );
    assert!(
        rig.admin("project approvers web <#C1>")
            .await
            .contains("not channels")
    );

    let removed = rig.admin("project disallow web <#C1> <@U9>").await;
    assert!(
        removed.contains("Removed") && removed.contains("Not on it: <@U9>"),
        "{removed}"
    );

    // Only admins.
    let no = rig
        .command("/baton-admin", "project allow web <@U2>", "U2", "C1")
        .await;
    assert!(no.contains("for Baton admins only"), "{no}");
    assert_eq!(rig.store.access_list("web").await.unwrap().len(), 2);

    let audit = rig.admin("audit 50").await;
    for line in [
        "*project.allow* `web` — &lt;@U1&gt;",
        "*project.approvers* `web`",
        "*project.disallow* `web` — &lt;#C1&gt;",
    ] {
        assert!(audit.contains(line), "{line} missing: {audit}");
    }
    assert!(rig.admin("audit 0").await.contains("from 1 to 100"));
    let help = rig.admin("help").await;
    for usage in [
        "project allow PROJECT WHO…",
        "project access PROJECT",
        "audit [N]",
        "agent add NAME [PROJECT…|*]",
    ] {
        assert!(help.contains(usage), "{usage} not in help");
    }
    rig.bot.stop().await;
}

/// Connects to the bot as an agent with `key`, announcing `projects`;
/// returns the socket (not read from unless the caller does).
async fn raw_agent(
    addr: SocketAddr,
    key: &str,
    projects: &[&str],
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = format!("ws://{addr}/agents").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = AgentMessage::Hello(hello(projects));
    ws.send(Message::Text(hello.encode().into())).await.unwrap();
    ws
}

fn hello(projects: &[&str]) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "raw".into(),
        capacity: 2,
        projects: projects
            .iter()
            .map(|p| ProjectInfo {
                name: ProjectName::new(*p).unwrap(),
                max_concurrent: 2,
            })
            .collect(),
        running: Vec::new(),
        held_results: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_key_serves_only_the_projects_it_grants() {
    let rig = start_with(|s| {
        s.agent_keys = format!("e2e:{AGENT_KEY}:web").into();
    })
    .await;
    let mut ws = raw_agent(rig.addr(), AGENT_KEY, &["web", "secret"]).await;
    wait_agents(rig.addr(), 1).await;
    let names = rig.store.project_names().await.unwrap();
    assert!(
        !names.contains(&"secret".to_owned()),
        "never created: {names:?}"
    );
    let health = rig.admin("health").await;
    assert!(
        health.contains(":no_entry: refused `secret`: its key does not grant them"),
        "{health}"
    );
    let audit = rig.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a == "e2e refused.project secret not granted to this agent's key"),
        "{audit:?}"
    );
    // A task for `secret` has nowhere to go; one for `web` reaches the agent.
    let reply = rig.baton("--project secret read the keys", "U1").await;
    assert!(reply.contains("There is no project `secret`"), "{reply}");
    assert_eq!(rig.baton("fix it", "U1").await, "");
    let submit = loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("the web task at the agent in time")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(t) = frame
            && let Ok(baton_shared::protocol::BotMessage::Submit(s)) =
                baton_shared::protocol::BotMessage::decode(&t)
        {
            break s;
        }
    };
    assert_eq!(submit.project.as_str(), "web");

    // A key an admin adds for `api` only: `web` is refused for it.
    let added = rig.admin("agent add ci api").await;
    assert!(added.contains("may serve only `api`"), "{added}");
    let key = added
        .split("```")
        .nth(1)
        .expect("the key in a code block")
        .to_owned();
    let _ci = raw_agent(rig.addr(), &key, &["web", "api"]).await;
    wait_agents(rig.addr(), 2).await;
    let health = rig.admin("health").await;
    assert!(health.contains("refused `web`"), "{health}");
    let any = rig.admin("agent add laptop").await;
    assert!(any.contains("may serve any project (`*`)"), "{any}");
    let audit = rig.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a == "UADMIN agent.add ci projects: api"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|a| a == "UADMIN agent.add laptop projects: *"),
        "{audit:?}"
    );
    rig.bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_reads_is_disconnected_not_buffered_for_ever() {
    let rig = start().await;
    // A small receive buffer, and no reads: what the bot sends piles up.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(rig.addr()).await.unwrap();
    let mut req = format!("ws://{}/agents", rig.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {AGENT_KEY}").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let (mut sink, _never_read) = ws.split();
    let frame = AgentMessage::Hello(hello(&["web"])).encode();
    sink.send(Message::Text(frame.clone().into()))
        .await
        .unwrap();
    wait_agents(rig.addr(), 1).await;
    // Each further hello gets an error frame back, which it never reads.
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        while sink.send(Message::Text(frame.clone().into())).await.is_ok() {
            sent += 1;
            if sent > 2_000_000 {
                break;
            }
        }
        sent
    });
    wait_agents(rig.addr(), 0).await;
    let sent = sender.await.unwrap();
    assert!(
        sent < 2_000_000,
        "the bot cut the connection (after {sent} frames)"
    );
    assert!(
        sent as usize > baton_bot::hub::OUTBOX_MAX_FRAMES,
        "cut because its queue filled up, not before ({sent} frames)"
    );
    rig.bot.stop().await;
}

/// A refusal for an unknown or missing project lists only the projects the
/// person may use: the names of the others are not theirs to learn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_project_is_answered_with_only_the_projects_the_person_may_use() {
    let rig = start().await;
    let allowed = rig.admin("project allow api <@U2>").await;
    assert!(allowed.contains("api"), "{allowed}");

    let reply = rig.command("/baton", "--project nope hi", "U1", "C9").await;
    assert!(reply.contains("There is no project `nope`"), "{reply}");
    assert!(reply.contains("`web`"), "{reply}");
    assert!(!reply.contains("api"), "U1 may not use api: {reply}");
    let reply = rig.command("/baton", "hi", "U1", "C9").await;
    assert!(reply.contains("`web`") && !reply.contains("api"), "{reply}");

    // U2 is on api's list, and web's list is empty: both.
    let reply = rig.command("/baton", "--project nope hi", "U2", "C9").await;
    assert!(
        reply.contains("`web`") && reply.contains("`api`"),
        "{reply}"
    );
    assert_eq!(rig.task_count().await, 0, "a refusal creates nothing");
}
