//! A local Slack stand-in for trying Baton without a Slack workspace
//! (`baton-local-slack`): the fake Slack Web API of [`crate::slack`], a
//! workspace read from a JSON config file, a web UI at `/` that shows the
//! channels as Slack would and lets a person act as any user, and a control
//! API under `/_control/` for scripts and tests.
//!
//! It stands in for `local-slack` (parvalabs), which is not published: what a
//! person types is sent to the bot the way Slack sends it (slash commands,
//! Events API callbacks and `block_actions`, all signed with the bot's signing
//! secret), and what the bot sends back (posts, edits, ephemerals, posts to a
//! command's `response_url`) is shown in the channel it belongs to.
//!
//! Not a security boundary: local use only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::slack::{FakeSlack, FakeUser, RESPONSE_URL, response_url_of};

/// The web UI: one page, vanilla JS, polling [`STATE_PATH`].
const UI: &str = include_str!("local_slack.html");

/// The control API's state endpoint, which the web UI polls.
pub const STATE_PATH: &str = "/_control/state";

/// The bot's user id, as the fake's `auth.test` says it.
pub const BOT_USER: &str = "UBATON";

/// The bot's display name: `@baton` in a message is a mention of [`BOT_USER`].
pub const BOT_NAME: &str = "baton";

/// The id of `user`'s direct conversation with the app (its Messages tab).
pub fn dm_channel(user: &str) -> String {
    format!("D{user}")
}

/// The workspace a config file describes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The workspace.
    pub team: Team,
    /// The bot's `SLACK_SIGNING_SECRET`: every request to the bot is signed with it.
    pub signing_secret: String,
    /// The bot's Events API request URL (`http://127.0.0.1:PORT/slack/events`);
    /// commands and clicks go to `/slack/commands` and `/slack/interactions`
    /// beside it.
    pub request_url: String,
    /// The people, exactly one of them an admin.
    pub users: Vec<User>,
    /// The channels, all of whose members are every user and the bot.
    pub channels: Vec<Channel>,
}

/// The workspace's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    /// Its id (`T...`), sent as `team_id` with everything.
    pub id: String,
    /// Its name, shown in the UI.
    pub name: String,
}

/// A person in the workspace.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Their id (`U...`).
    pub id: String,
    /// Their handle, without `@`.
    pub name: String,
    /// Whether they are the workspace's Baton admin (the bot's `BATON_ADMINS`).
    #[serde(default)]
    pub admin: bool,
}

/// A channel.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// Its id (`C...`).
    pub id: String,
    /// Its name, without `#`.
    pub name: String,
}

impl Config {
    /// Reads and checks a JSON config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Cannot read the config file {}", path.display()))?;
        let config: Config = serde_json::from_str(&text)
            .with_context(|| format!("Cannot parse the config file {}", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// Checks what serde cannot: one admin, distinct ids and names, a usable request URL.
    pub fn check(&self) -> anyhow::Result<()> {
        let admins = self.users.iter().filter(|u| u.admin).count();
        if admins != 1 {
            bail!("the config needs exactly one user with \"admin\": true; it has {admins}");
        }
        let mut seen = std::collections::HashSet::new();
        for id in self
            .users
            .iter()
            .map(|u| &u.id)
            .chain(self.users.iter().map(|u| &u.name))
        {
            if !seen.insert(id.as_str()) {
                bail!("the user id or name {id} appears twice in the config");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.channels {
            if !seen.insert(c.id.as_str()) || !seen.insert(c.name.as_str()) {
                bail!(
                    "the channel {} ({}) appears twice in the config",
                    c.name,
                    c.id
                );
            }
        }
        if self.channels.is_empty() {
            bail!("the config needs at least one channel");
        }
        BotUrls::parse(&self.request_url)?;
        Ok(())
    }

    /// The user named by id or handle (`alice`, `@alice`, `UALICE`).
    fn user(&self, who: &str) -> Option<&User> {
        let who = who.trim_start_matches('@');
        self.users.iter().find(|u| u.id == who || u.name == who)
    }

    /// The channel named by id or name (`general`, `#general`, `CGENERAL`).
    fn channel(&self, which: &str) -> Option<&Channel> {
        let which = which.trim_start_matches('#');
        self.channels
            .iter()
            .find(|c| c.id == which || c.name == which)
    }
}

/// Where the bot receives what Slack sends.
#[derive(Debug, Clone)]
struct BotUrls {
    /// The bot's address.
    addr: SocketAddr,
    /// The Events API path (the request URL's own).
    events: String,
    /// The slash commands' path.
    commands: String,
    /// The interactivity path.
    interactions: String,
}

impl BotUrls {
    fn parse(request_url: &str) -> anyhow::Result<BotUrls> {
        let url = url::Url::parse(request_url)
            .with_context(|| format!("request_url {request_url:?} is not a URL"))?;
        if url.scheme() != "http" {
            bail!("request_url must be http://HOST:PORT/slack/events (local use only)");
        }
        let addr = url
            .socket_addrs(|| Some(80))
            .ok()
            .and_then(|a| a.into_iter().next())
            .with_context(|| format!("request_url {request_url:?} names no reachable address"))?;
        let events = url.path().to_owned();
        let base = events.rsplit_once('/').map_or("", |(b, _)| b);
        Ok(BotUrls {
            addr,
            commands: format!("{base}/commands"),
            interactions: format!("{base}/interactions"),
            events,
        })
    }
}

/// Who asked, where: what a `response_url` answers belongs to.
#[derive(Debug, Clone)]
struct Origin {
    /// The channel of the command.
    channel: String,
    /// Who typed it.
    user: String,
}

/// Something shown in a channel that the fake Slack did not record: what
/// people wrote, and what only their own screen shows.
#[derive(Debug, Clone)]
struct Local {
    /// When it happened (ordering against the bot's calls).
    at: Instant,
    /// The message as [`LocalSlack::messages`] lists it.
    message: Value,
}

/// What the stand-in keeps besides the fake Slack's record.
#[derive(Debug, Default)]
struct Said {
    /// People's messages and the ephemeral acknowledgements of their commands.
    local: Vec<Local>,
    /// The origin of each `response_url` key handed out.
    responses: HashMap<String, Origin>,
    /// Makes ts, event ids and response keys unique.
    counter: u64,
}

/// The stand-in: a workspace, the fake Slack serving it, and the bot's address.
#[derive(Debug)]
pub struct LocalSlack {
    /// The workspace.
    config: Config,
    /// The bot's routes.
    bot: BotUrls,
    /// The fake Web API the bot calls.
    slack: Arc<FakeSlack>,
    /// This server's own base URL (`http://127.0.0.1:PORT`), for `response_url`s.
    base: String,
    /// What the fake Slack does not record.
    said: Mutex<Said>,
}

/// A refusal of the control API: 400 (or 502 when the bot cannot be reached)
/// with `{"ok": false, "error": ...}`.
#[derive(Debug)]
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"ok": false, "error": self.1}))).into_response()
    }
}

fn bad(text: impl Into<String>) -> Refused {
    Refused(StatusCode::BAD_REQUEST, text.into())
}

impl LocalSlack {
    /// A stand-in for `config`, served at `addr`.
    pub fn new(config: Config, addr: SocketAddr) -> anyhow::Result<LocalSlack> {
        config.check()?;
        let bot = BotUrls::parse(&config.request_url)?;
        let slack = Arc::new(FakeSlack::default());
        let members: Vec<&str> = config
            .users
            .iter()
            .map(|u| u.id.as_str())
            .chain([BOT_USER])
            .collect();
        for u in &config.users {
            slack.set_user(
                &u.id,
                FakeUser {
                    team_id: config.team.id.clone(),
                    ..FakeUser::default()
                },
            );
        }
        for c in &config.channels {
            slack.set_members(&c.id, &members);
        }
        for u in &config.users {
            slack.set_members(&dm_channel(&u.id), &[u.id.as_str(), BOT_USER]);
        }
        Ok(LocalSlack {
            config,
            bot,
            slack,
            base: format!("http://{addr}"),
            said: Mutex::new(Said::default()),
        })
    }

    fn said(&self) -> MutexGuard<'_, Said> {
        self.said.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fake Slack behind the stand-in.
    pub fn slack(&self) -> &Arc<FakeSlack> {
        &self.slack
    }

    /// A fresh number, for ts and ids.
    fn next(&self) -> u64 {
        let mut said = self.said();
        said.counter += 1;
        said.counter
    }

    /// A message ts for something a person wrote, like Slack's (Unix time,
    /// made unique; the fake's own ts count up from 1, these from 900000).
    fn new_ts(&self) -> String {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{secs}.{:06}", 900_000 + self.next() % 100_000)
    }

    fn remember(&self, message: Value) {
        self.said().local.push(Local {
            at: Instant::now(),
            message,
        });
    }

    /// Every message of `channel` in order, with its current text and blocks
    /// (the latest `chat.update` of each ts). Thread replies carry
    /// `thread_ts`; ephemerals carry `ephemeral_to`, the only user who sees them.
    pub fn messages(&self, channel: &str) -> Vec<Value> {
        let mut timeline: Vec<(Instant, Value)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let responses = self.said().responses.clone();
        for call in self.slack.all_calls() {
            if call.error.is_some() {
                continue;
            }
            let b = &call.body;
            let ts = call.ts.clone().unwrap_or_default();
            let thread = b["thread_ts"]
                .as_str()
                .filter(|t| !t.is_empty() && *t != ts);
            match call.method.as_str() {
                "chat.postMessage" if b["channel"] == channel => {
                    index.insert(ts.clone(), timeline.len());
                    timeline.push((
                        call.at,
                        json!({"ts": ts, "user": BOT_USER, "bot": true, "text": b["text"],
                               "blocks": b["blocks"], "thread_ts": thread, "edited": false}),
                    ));
                }
                "chat.update" if b["channel"] == channel => {
                    if let Some(m) = index.get(&ts).and_then(|i| timeline.get_mut(*i)) {
                        m.1["text"] = b["text"].clone();
                        m.1["blocks"] = b["blocks"].clone();
                        m.1["edited"] = json!(true);
                    }
                }
                "chat.postEphemeral" if b["channel"] == channel => timeline.push((
                    call.at,
                    json!({"ts": ts, "user": BOT_USER, "bot": true, "text": b["text"],
                           "blocks": b["blocks"], "thread_ts": thread,
                           "ephemeral_to": b["user"]}),
                )),
                RESPONSE_URL => {
                    if let Some(origin) = responses.get(&ts).filter(|o| o.channel == channel) {
                        timeline.push((
                            call.at,
                            json!({"ts": format!("r{}", timeline.len()), "user": BOT_USER,
                                   "bot": true, "text": b["text"], "blocks": b["blocks"],
                                   "thread_ts": null, "ephemeral_to": origin.user}),
                        ));
                    }
                }
                _ => {}
            }
        }
        for l in &self.said().local {
            if l.message["channel"] == channel {
                timeline.push((l.at, l.message.clone()));
            }
        }
        timeline.sort_by_key(|(at, _)| *at);
        timeline
            .into_iter()
            .map(|(_, mut m)| {
                if let Some(o) = m.as_object_mut() {
                    o.remove("channel");
                }
                m
            })
            .collect()
    }

    /// The workspace, the acting-user choices and every channel's messages.
    pub fn state(&self) -> Value {
        let dms: Vec<String> = self
            .config
            .users
            .iter()
            .map(|u| dm_channel(&u.id))
            .collect();
        let messages: serde_json::Map<String, Value> = self
            .config
            .channels
            .iter()
            .map(|c| c.id.clone())
            .chain(dms.iter().cloned())
            .map(|id| {
                let m = Value::Array(self.messages(&id));
                (id, m)
            })
            .collect();
        json!({
            "ok": true,
            "team": {"id": self.config.team.id, "name": self.config.team.name},
            "bot": {"user_id": BOT_USER, "name": BOT_NAME, "token": crate::slack::BOT_TOKEN},
            "api_url": format!("{}/api", self.base),
            "request_url": self.config.request_url,
            "users": self.config.users,
            "channels": self.config.channels,
            "dms": dms,
            "messages": messages,
        })
    }

    /// Resolves a user and a channel named in a control request.
    fn who_where(&self, user: &str, channel: &str) -> Result<(User, Channel), Refused> {
        let u = self.config.user(user).ok_or_else(|| {
            bad(format!(
                "unknown user {user:?}: use one of the config's ids or names"
            ))
        })?;
        if channel == dm_channel(&u.id) {
            let dm = Channel {
                id: channel.to_owned(),
                name: "directmessage".to_owned(),
            };
            return Ok((u.clone(), dm));
        }
        let c = self.config.channel(channel).ok_or_else(|| {
            bad(format!(
                "unknown channel {channel:?}: use one of the config's ids or names, or D+USER_ID for the user's direct messages with the app"
            ))
        })?;
        Ok((u.clone(), c.clone()))
    }

    /// POSTs `body` to the bot at `path`, signed; returns status and body.
    async fn to_bot(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(u16, String), Refused> {
        let headers = crate::signed_headers(&self.config.signing_secret, content_type, body);
        crate::try_http(self.bot.addr, "POST", path, &headers, body)
            .await
            .map_err(|e| {
                Refused(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the bot at {} cannot be reached ({e}): is baton-bot running there?",
                        self.config.request_url
                    ),
                )
            })
    }

    /// Sends a slash command as `user` in `channel`, the way Slack does; the
    /// acknowledgement's text and later posts to its `response_url` show as
    /// ephemerals for `user`.
    async fn command(&self, req: CommandReq) -> Result<Value, Refused> {
        let (user, channel) = self.who_where(&req.user, &req.channel)?;
        let command = format!("/{}", req.command.trim().trim_start_matches('/'));
        let key = format!("cmd{}", self.next());
        self.said().responses.insert(
            key.clone(),
            Origin {
                channel: channel.id.clone(),
                user: user.id.clone(),
            },
        );
        self.remember(
            json!({"channel": channel.id, "ts": self.new_ts(), "user": user.id,
            "bot": false, "text": format!("`{command} {}`", req.text), "blocks": null,
            "thread_ts": null, "ephemeral_to": user.id, "command": true}),
        );
        let form = serde_urlencoded::to_string([
            ("command", command.as_str()),
            ("text", req.text.as_str()),
            ("user_id", user.id.as_str()),
            ("user_name", user.name.as_str()),
            ("channel_id", channel.id.as_str()),
            ("channel_name", channel.name.as_str()),
            ("team_id", self.config.team.id.as_str()),
            ("team_domain", self.config.team.name.as_str()),
            (
                "response_url",
                response_url_of(&format!("{}/api", self.base), &key).as_str(),
            ),
            ("trigger_id", key.as_str()),
        ])
        .map_err(|e| bad(format!("cannot encode the command: {e}")))?;
        let (status, body) = self
            .to_bot(
                &self.bot.commands,
                "application/x-www-form-urlencoded",
                &form,
            )
            .await?;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if let Some(text) = answer["text"].as_str() {
            self.remember(
                json!({"channel": channel.id, "ts": self.new_ts(), "user": BOT_USER,
                "bot": true, "text": text, "blocks": answer["blocks"], "thread_ts": null,
                "ephemeral_to": user.id}),
            );
        }
        Ok(
            json!({"ok": (200..300).contains(&status), "status": status, "response": answer,
                  "response_url_key": key}),
        )
    }

    /// Posts a message as `user` and sends the bot its events: `message`
    /// always, `app_mention` too when it mentions the bot (`@baton` is
    /// written `<@UBATON>`, as Slack does).
    async fn message(&self, req: MessageReq) -> Result<Value, Refused> {
        let (user, channel) = self.who_where(&req.user, &req.channel)?;
        if req.text.trim().is_empty() {
            return Err(bad("the message is empty"));
        }
        let text = mention_bot(&req.text);
        let ts = self.new_ts();
        let thread = req.thread_ts.clone().filter(|t| !t.is_empty());
        self.remember(
            json!({"channel": channel.id, "ts": ts, "user": user.id, "bot": false,
            "text": text, "blocks": null, "thread_ts": thread}),
        );
        // In a direct conversation everything is a `message.im`; elsewhere a
        // mention also arrives as `app_mention`.
        let direct = channel.id == dm_channel(&user.id);
        let mut kinds = vec!["message"];
        if !direct && text.contains(&format!("<@{BOT_USER}>")) {
            kinds.push("app_mention");
        }
        let mut statuses = Vec::new();
        for kind in kinds {
            let mut event = json!({"type": kind, "user": user.id, "text": text,
                "channel": channel.id, "ts": ts, "event_ts": ts,
                "channel_type": if direct { "im" } else { "channel" }});
            if let Some(t) = &thread {
                event["thread_ts"] = json!(t);
            }
            let envelope = json!({
                "type": "event_callback", "token": "local", "team_id": self.config.team.id,
                "api_app_id": "ALOCAL", "event": event,
                "event_id": format!("EvLOCAL{}", self.next()), "event_time": ts.split('.').next(),
                "authorizations": [{"user_id": BOT_USER, "team_id": self.config.team.id, "is_bot": true}],
            });
            let (status, _) = self
                .to_bot(&self.bot.events, "application/json", &envelope.to_string())
                .await?;
            statuses.push(status);
        }
        Ok(
            json!({"ok": statuses.iter().all(|s| (200..300).contains(s)), "ts": ts,
                  "statuses": statuses}),
        )
    }

    /// Clicks the button `action_id` of message `message_ts` as `user`
    /// (`block_actions`, signed, to the bot's interactivity URL).
    async fn interact(&self, req: InteractReq) -> Result<Value, Refused> {
        let user = self
            .config
            .user(&req.user)
            .cloned()
            .ok_or_else(|| bad(format!("unknown user {:?}", req.user)))?;
        let dm = Channel {
            id: dm_channel(&user.id),
            name: "directmessage".to_owned(),
        };
        let found = self.config.channels.iter().chain([&dm]).find_map(|c| {
            self.messages(&c.id)
                .into_iter()
                .find(|m| m["ts"] == req.message_ts.as_str() && m["ephemeral_to"].is_null())
                .map(|m| (c.clone(), m))
        });
        let Some((channel, message)) = found else {
            return Err(bad(format!(
                "no message with ts {:?}: GET /_control/messages/CHANNEL lists them",
                req.message_ts
            )));
        };
        let buttons: Vec<&Value> = message["blocks"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|b| b["elements"].as_array().into_iter().flatten())
            .filter(|e| e["type"] == "button")
            .collect();
        let Some(button) = buttons
            .iter()
            .find(|e| e["action_id"] == req.action_id.as_str())
            .map(|e| (*e).clone())
        else {
            let ids: Vec<&str> = buttons
                .iter()
                .filter_map(|e| e["action_id"].as_str())
                .collect();
            return Err(bad(format!(
                "message {} has no button {:?} now; its buttons: [{}]",
                req.message_ts,
                req.action_id,
                ids.join(", ")
            )));
        };
        let value = req
            .value
            .clone()
            .unwrap_or_else(|| button["value"].as_str().unwrap_or_default().to_owned());
        let key = format!("act{}", self.next());
        self.said().responses.insert(
            key.clone(),
            Origin {
                channel: channel.id.clone(),
                user: user.id.clone(),
            },
        );
        let mut msg =
            json!({"ts": req.message_ts, "text": message["text"], "blocks": message["blocks"]});
        if let Some(t) = message["thread_ts"].as_str() {
            msg["thread_ts"] = json!(t);
        }
        let payload = json!({
            "type": "block_actions",
            "team": {"id": self.config.team.id},
            "user": {"id": user.id, "name": user.name, "team_id": self.config.team.id},
            "channel": {"id": channel.id, "name": channel.name},
            "container": {"type": "message", "message_ts": req.message_ts, "channel_id": channel.id},
            "message": msg,
            "response_url": response_url_of(&format!("{}/api", self.base), &key),
            "trigger_id": key,
            "actions": [{"type": "button", "action_id": req.action_id, "block_id": "",
                         "value": value, "text": button["text"]}],
        });
        let form = serde_urlencoded::to_string([("payload", payload.to_string())])
            .map_err(|e| bad(format!("cannot encode the click: {e}")))?;
        let (status, _) = self
            .to_bot(
                &self.bot.interactions,
                "application/x-www-form-urlencoded",
                &form,
            )
            .await?;
        Ok(json!({"ok": (200..300).contains(&status), "status": status}))
    }
}

/// `@baton` written as Slack writes a mention of the bot.
fn mention_bot(text: &str) -> String {
    let at = format!("@{BOT_NAME}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(&at) {
        let after = &rest[i + at.len()..];
        let before_ok = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '<');
        let after_ok = !after.starts_with(|c: char| c.is_alphanumeric() || c == '-' || c == '_');
        out.push_str(&rest[..i]);
        if before_ok && after_ok {
            out.push_str(&format!("<@{BOT_USER}>"));
        } else {
            out.push_str(&at);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `POST /_control/command`.
#[derive(Debug, Deserialize)]
struct CommandReq {
    /// Channel id or name.
    channel: String,
    /// User id or name.
    user: String,
    /// `/baton` or `/baton-admin`.
    command: String,
    /// What follows the command.
    #[serde(default)]
    text: String,
}

/// `POST /_control/message`.
#[derive(Debug, Deserialize)]
struct MessageReq {
    /// Channel id or name.
    channel: String,
    /// User id or name.
    user: String,
    /// The message (`@baton` mentions the bot).
    text: String,
    /// The thread to reply in.
    #[serde(default)]
    thread_ts: Option<String>,
}

/// `POST /_control/interact`.
#[derive(Debug, Deserialize)]
struct InteractReq {
    /// User id or name.
    user: String,
    /// The ts of the message whose button is clicked.
    message_ts: String,
    /// The button's `action_id`.
    action_id: String,
    /// The button's value; its own when left out.
    #[serde(default)]
    value: Option<String>,
}

/// A JSON body, or a 400 that says what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| bad(format!("cannot read the request: {e}")))
}

fn answer(result: Result<Value, Refused>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn control_command(State(ls): State<Arc<LocalSlack>>, body: axum::body::Bytes) -> Response {
    answer(async { ls.command(parse(&body)?).await }.await)
}

async fn control_message(State(ls): State<Arc<LocalSlack>>, body: axum::body::Bytes) -> Response {
    answer(async { ls.message(parse(&body)?).await }.await)
}

async fn control_interact(State(ls): State<Arc<LocalSlack>>, body: axum::body::Bytes) -> Response {
    answer(async { ls.interact(parse(&body)?).await }.await)
}

async fn control_messages(
    State(ls): State<Arc<LocalSlack>>,
    AxPath(channel): AxPath<String>,
) -> Response {
    let dm = ls
        .config
        .users
        .iter()
        .map(|u| dm_channel(&u.id))
        .find(|d| *d == channel);
    match ls.config.channel(&channel).map(|c| c.id.clone()).or(dm) {
        Some(id) => axum::Json(json!({"ok": true, "channel": id, "messages": ls.messages(&id)}))
            .into_response(),
        None => bad(format!(
            "unknown channel {channel:?}: use one of the config's ids or names"
        ))
        .into_response(),
    }
}

async fn control_state(State(ls): State<Arc<LocalSlack>>) -> Response {
    axum::Json(ls.state()).into_response()
}

async fn ui() -> Html<&'static str> {
    Html(UI)
}

/// The stand-in's router: the UI, the control API and the fake Slack.
pub fn router(ls: Arc<LocalSlack>) -> Router {
    Router::new()
        .route("/", get(ui))
        .route("/_control/command", post(control_command))
        .route("/_control/message", post(control_message))
        .route("/_control/interact", post(control_interact))
        .route("/_control/messages/{channel}", get(control_messages))
        .route(STATE_PATH, get(control_state))
        .with_state(ls.clone())
        .merge(crate::slack::router(ls.slack.clone()))
}

/// Serves `config` on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("Cannot read the listener's address")?;
    let ls = Arc::new(LocalSlack::new(config, addr)?);
    axum::serve(listener, router(ls))
        .with_graceful_shutdown(shutdown)
        .await
        .context("Cannot serve")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_baton_becomes_a_mention() {
        assert_eq!(mention_bot("@baton say hi"), "<@UBATON> say hi");
        assert_eq!(mention_bot("hey @baton, go"), "hey <@UBATON>, go");
        assert_eq!(mention_bot("@batonette hi"), "@batonette hi");
        assert_eq!(mention_bot("mail@baton"), "mail@baton");
    }

    #[test]
    fn bot_urls_sit_beside_the_request_url() {
        let u = BotUrls::parse("http://127.0.0.1:8080/slack/events").unwrap();
        assert_eq!(u.addr.port(), 8080);
        assert_eq!(u.commands, "/slack/commands");
        assert_eq!(u.interactions, "/slack/interactions");
        assert!(BotUrls::parse("https://example.com/slack/events").is_err());
    }
}
