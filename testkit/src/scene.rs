//! A scene for end-to-end tests of the bot: a temporary directory, the fake
//! Slack, the bot in-process with project `web` bound to channel C1, and
//! [`FakeAgent`]s speaking the wire protocol over real WebSockets. Inbound Slack
//! requests are signed like Slack signs them; every wait has a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_shared::protocol::{
    AgentMessage, BotMessage, Hello, PROTOCOL_VERSION, ProjectInfo, Submit, TaskResult,
};
use baton_shared::{ProjectName, TaskId};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::*;

/// How long any one outcome may take to show.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// The bot's user id in the events Slack sends.
pub const BOT_USER: &str = "UBATON";

/// A bot with project `web` bound to channel C1, no agent, and the fake Slack.
#[derive(Debug)]
pub struct Scene {
    pub slack: Arc<FakeSlack>,
    /// The fake Slack's Web API URL.
    pub slack_url: String,
    pub bot: Bot,
    pub store: baton_bot::store::Store,
    /// The temporary directory holding the database; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Scene {
    pub async fn start() -> Scene {
        Scene::start_with(|_| {}).await
    }

    /// Like [`Scene::start`], with `tweak` applied to the bot's settings.
    pub async fn start_with(tweak: impl FnOnce(&mut baton_bot::settings::Settings)) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let (slack, url) = fake_slack().await;
        let bot = Bot::start(&url, dir.path(), tweak).await;
        let bound = admin(bot.addr, "project bind web").await;
        assert!(bound.contains("project `web`"), "{bound}");
        let store = bot.store().await;
        Scene {
            slack,
            slack_url: url,
            bot,
            store,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.bot.addr
    }

    /// `/baton TEXT` as `user`: the acknowledgement's ephemeral text, or "" for none.
    pub async fn baton(&self, text: &str, user: &str) -> String {
        let (status, body) = baton(self.addr(), text, user).await;
        assert_eq!(status, 200, "{body}");
        if body.is_empty() {
            return body;
        }
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["response_type"], "ephemeral");
        json["text"].as_str().unwrap().to_owned()
    }

    /// The task row, once `pred` holds for it.
    pub async fn task_when(
        &self,
        id: i64,
        what: &str,
        pred: impl Fn(&baton_bot::store::Task) -> bool,
    ) -> baton_bot::store::Task {
        eventually(what, || async {
            self.store.task(id).await.unwrap().filter(|t| pred(t))
        })
        .await
    }

    /// Task `id`'s message ts, once posted.
    pub async fn message_ts(&self, id: i64) -> String {
        self.task_when(id, "the task's message", |t| t.message_ts.is_some())
            .await
            .message_ts
            .unwrap()
    }

    /// What message `ts` shows now: its last accepted edit, or as posted.
    pub fn shown(&self, ts: &str) -> Value {
        self.slack
            .calls("chat.update")
            .into_iter()
            .rev()
            .find(|c| c.body["ts"] == ts)
            .map(|c| c.body)
            .or_else(|| self.slack.thread(ts).into_iter().next())
            .expect("the message exists")
    }

    /// Waits until message `ts` shows something containing `text`; returns it.
    pub async fn shows(&self, ts: &str, text: &str) -> Value {
        eventually(&format!("message {ts} to show {text:?}"), || async {
            let body = self.shown(ts);
            message_text(&body).contains(text).then_some(body)
        })
        .await
    }

    /// The ephemeral answers `user` got so far, in order.
    pub fn ephemerals(&self, user: &str) -> Vec<Value> {
        self.slack
            .calls("chat.postEphemeral")
            .into_iter()
            .filter(|c| c.body["user"] == user)
            .map(|c| c.body)
            .collect()
    }

    /// Waits for `user`'s ephemeral answer number `n` (from 1); returns its text.
    pub async fn ephemeral(&self, user: &str, n: usize) -> String {
        eventually(&format!("answer {n} to {user}"), || async {
            self.ephemerals(user)
                .get(n - 1)
                .map(|b| b["text"].as_str().unwrap().to_owned())
        })
        .await
    }

    /// Clicks `button` (as rendered) on message `ts`, as `user`.
    pub async fn click(&self, user: &str, button: &Value) {
        let payload = json!({
            "type": "block_actions",
            "team": {"id": "T1"},
            "user": {"id": user},
            "channel": {"id": "C1"},
            "container": {"type": "message", "channel_id": "C1"},
            "actions": [{
                "type": "button",
                "block_id": "b",
                "action_id": button["action_id"],
                "value": button["value"],
                "action_ts": "1700000000.1",
            }],
        })
        .to_string();
        let (status, body) = post_signed(
            self.addr(),
            "/slack/interactions",
            &[("payload", payload.as_str())],
            SIGNING_SECRET,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    /// An Events API callback carrying `event`, as Slack signs and sends it.
    pub async fn event(&self, event_id: &str, event: Value, retry: Option<u32>) {
        let payload = json!({
            "type": "event_callback",
            "team_id": "T1",
            "event_id": event_id,
            "authorizations": [{"user_id": BOT_USER}],
            "event": event,
        });
        let (status, body) = post_event(self.addr(), &payload, retry).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Stops the bot, after checking that Slack took every call it made
    /// (a reply the bot could not read would show as an error here).
    pub async fn stop(self) {
        let (_, metrics) = http(self.addr(), "GET", "/metrics", &[], "").await;
        for counter in ["baton_slack_errors_total", "baton_slack_rate_limited_total"] {
            assert!(
                metrics.contains(&format!("{counter} 0\n")),
                "{counter} is not 0:\n{metrics}"
            );
        }
        self.bot.stop().await;
    }

    /// How many tasks exist.
    pub async fn task_count(&self) -> usize {
        self.store.recent_tasks(1_000).await.unwrap().len()
    }
}

/// The button labelled `label` in a message body, if it has one.
pub fn button(body: &Value, label: &str) -> Option<Value> {
    body["blocks"]
        .as_array()?
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .find(|e| e["text"]["text"] == label)
        .cloned()
}

/// A user's message in channel C1 (a thread reply when `thread` is given).
pub fn message(user: &str, text: &str, ts: &str, thread: Option<&str>) -> Value {
    let mut m = json!({"type": "message", "user": user, "text": text, "channel": "C1", "ts": ts});
    if let Some(thread) = thread {
        m["thread_ts"] = json!(thread);
    }
    m
}

/// A mention of the bot in channel C1.
pub fn mention(user: &str, text: &str, ts: &str, thread: Option<&str>) -> Value {
    let mut m = message(user, &format!("<@{BOT_USER}> {text}"), ts, thread);
    m["type"] = json!("app_mention");
    m
}

/// An agent speaking the wire protocol over a real WebSocket, serving `web`.
#[derive(Debug)]
pub struct FakeAgent {
    /// Frames to send.
    out: mpsc::UnboundedSender<AgentMessage>,
    /// Frames the bot sent.
    pub frames: mpsc::UnboundedReceiver<BotMessage>,
}

/// The key of a second agent, `e2e-b`, for the bots that know it (see [`two_agents`]).
pub const SECOND_KEY: &str = "e2e-second-agent-key-0123";

/// Bot settings with two agent keys: `e2e` ([`AGENT_KEY`]) and `e2e-b` ([`SECOND_KEY`]).
pub fn two_agents(s: &mut baton_bot::settings::Settings) {
    s.agent_keys = format!("e2e:{AGENT_KEY},e2e-b:{SECOND_KEY}").into();
}

impl FakeAgent {
    pub async fn connect(addr: SocketAddr) -> FakeAgent {
        Self::connect_as(addr, AGENT_KEY, 1).await
    }

    /// Connects with `key`, then waits until `connected` agents are connected.
    pub async fn connect_as(addr: SocketAddr, key: &str, connected: usize) -> FakeAgent {
        Self::connect_running(addr, key, connected, Vec::new()).await
    }

    /// Connects with `key` saying in its hello that it runs `running` (an
    /// agent coming back), then waits until `connected` agents are connected.
    pub async fn connect_running(
        addr: SocketAddr,
        key: &str,
        connected: usize,
        running: Vec<TaskId>,
    ) -> FakeAgent {
        let mut req = format!("ws://{addr}/agents").into_client_request().unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {key}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let (out, mut to_send) = mpsc::unbounded_channel::<AgentMessage>();
        let (got, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(msg) = to_send.recv().await {
                if sink.send(Message::Text(msg.encode().into())).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                if let Message::Text(text) = frame
                    && let Ok(msg) = BotMessage::decode(&text)
                    && got.send(msg).is_err()
                {
                    break;
                }
            }
        });
        let agent = FakeAgent { out, frames };
        agent.send(AgentMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "fake".into(),
            capacity: 1,
            projects: vec![ProjectInfo {
                name: ProjectName::new("web").unwrap(),
                max_concurrent: 1,
            }],
            running,
            held_results: Vec::new(),
        }));
        wait_agents(addr, connected).await;
        agent
    }

    /// The frames the bot sends up to and including the next task it hands over.
    pub async fn frames_until_submit(&mut self) -> Vec<BotMessage> {
        let mut seen = Vec::new();
        // One deadline for them all: heartbeats alone must not keep it waiting.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .unwrap_or_else(|_| panic!("no task in time; frames so far: {seen:?}"))
                .expect("the connection is open");
            let submit = matches!(frame, BotMessage::Submit(_));
            seen.push(frame);
            if submit {
                return seen;
            }
        }
    }

    pub fn send(&self, msg: AgentMessage) {
        self.out.send(msg).unwrap();
    }

    /// The next task the bot hands over.
    pub async fn submitted(&mut self) -> Submit {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .expect("a task in time")
                .expect("the connection is open");
            if let BotMessage::Submit(s) = frame {
                return *s;
            }
        }
    }

    /// The frames the bot sends until it acknowledges `task`'s final event.
    pub async fn frames_until_ack(&mut self, task: TaskId) -> Vec<BotMessage> {
        let mut seen = Vec::new();
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.frames.recv())
                .await
                .expect("the ack in time")
                .expect("the connection is open");
            if matches!(frame, BotMessage::Ack { task: t, .. } if t == task) {
                return seen;
            }
            seen.push(frame);
        }
    }

    /// Accepts `task`, one step.
    pub fn start(&self, task: TaskId) {
        self.send(AgentMessage::Accepted { task, seq: 1 });
        self.send(AgentMessage::Step {
            task,
            seq: 2,
            text: "thinking".into(),
        });
    }

    /// Completes `task` with `text`, producing `session`.
    pub fn complete(&self, task: TaskId, text: &str, session: &str) {
        self.send(AgentMessage::Completed {
            task,
            seq: 3,
            result: TaskResult {
                text: text.into(),
                session_id: Some(session.into()),
                ..TaskResult::default()
            },
        });
    }
}
