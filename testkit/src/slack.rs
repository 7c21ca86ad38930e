//! A fake Slack Web API served over real HTTP on 127.0.0.1.
//!
//! It records every call, answers the way Slack answers (`msg_too_long`,
//! `invalid_blocks`, `not_authed`), can be told to rate-limit a method (429 with
//! `Retry-After`, the way Slack's tiers do) and to fail the next calls of a method.
//! It keeps the messages posted, so `conversations.replies` reads a thread back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as AxPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The largest file the fake's upload URL takes.
const UPLOAD_MAX_BYTES: usize = 64 << 20;

/// The bot token the fake accepts.
pub const BOT_TOKEN: &str = "xoxb-test";

/// One Web API call the fake Slack received (including the ones it refused).
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
    /// When it arrived (tokio's clock, so paused-time tests see virtual time).
    pub at: Instant,
    /// What the fake answered: `None` for ok, else Slack's error code
    /// (`ratelimited` for a 429).
    pub error: Option<String>,
    /// The message it made or changed: the new ts of a post, the ts an edit names.
    pub ts: Option<String>,
}

#[derive(Debug)]
struct Limit {
    max: usize,
    window: Duration,
    served: VecDeque<Instant>,
}

/// A call as a tap sees it (see [`FakeSlack::tap`]): borrowed, nothing
/// copied for it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub method: &'a str,
    pub body: &'a Value,
    /// When it arrived.
    pub at: Instant,
    /// As [`Call::error`].
    pub error: Option<&'a str>,
    /// As [`Call::ts`].
    pub ts: Option<&'a str>,
}

/// Receives every call instead of the record (see [`FakeSlack::tap`]).
struct Tap(Box<dyn Fn(Seen<'_>) + Send + Sync>);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    tap: Option<Tap>,
    next_ts: u64,
    limits: HashMap<String, Limit>,
    failures: HashMap<String, VecDeque<String>>,
    delay: HashMap<String, Duration>,
    lose: HashMap<String, usize>,
    /// Messages posted, in order: their ts and the `chat.postMessage` body.
    posted: Vec<(String, Value)>,
    /// What `users.info` says of a user; anyone else is a full member of `T1`.
    users: HashMap<String, FakeUser>,
    /// User groups' members, for `usergroups.users.list`.
    groups: HashMap<String, Vec<String>>,
    /// Channels' members, for `conversations.members`; any other channel
    /// has [`DEFAULT_CHANNEL_MEMBERS`].
    members: HashMap<String, Vec<String>>,
    /// The scopes `auth.test` says the token has (`x-oauth-scopes`); None: every
    /// scope of [`ALL_SCOPES`].
    scopes: Option<String>,
    /// Files by id: uploaded by the bot, or attached by a test for the bot to download.
    files: Vec<FakeFile>,
    /// Ids of files whose download is sent in chunks without a length (see
    /// [`FakeSlack::serve_without_length`]).
    unannounced: std::collections::HashSet<String>,
}

/// A file the fake Slack holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeFile {
    /// Slack's file id (`F…`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its title, once shared.
    pub title: Option<String>,
    /// The length `files.getUploadURLExternal` announced.
    pub length: usize,
    /// Its bytes (empty until they are POSTed to the upload URL).
    pub bytes: Vec<u8>,
    /// Where it was shared by `files.completeUploadExternal`: channel and thread.
    pub shared_in: Option<(String, Option<String>)>,
}

/// The workspace of the people the fake Slack knows by default.
pub const TEAM: &str = "T1";

/// The members of a channel the test did not describe: the people tests use.
pub const DEFAULT_CHANNEL_MEMBERS: [&str; 4] = ["U1", "U2", "U3", "UADMIN"];

/// A person as `users.info` describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeUser {
    /// A multi-channel guest.
    pub is_restricted: bool,
    /// A single-channel guest.
    pub is_ultra_restricted: bool,
    /// Their own workspace.
    pub team_id: String,
}

impl Default for FakeUser {
    fn default() -> Self {
        FakeUser {
            is_restricted: false,
            is_ultra_restricted: false,
            team_id: TEAM.to_owned(),
        }
    }
}

/// The methods [`directory_answer`] serves, as GET or POST.
const DIRECTORY_METHODS: [&str; 3] = [
    "users.info",
    "usergroups.users.list",
    "conversations.members",
];

/// The scopes the fake grants unless told otherwise: those of the app manifest.
pub const ALL_SCOPES: &str = "commands,chat:write,app_mentions:read,channels:history,groups:history,im:history,users:read,usergroups:read,channels:read,groups:read,files:read,files:write";

/// The fake Slack Web API: records calls, enforces Slack's limits.
#[derive(Debug, Default)]
pub struct FakeSlack {
    inner: Mutex<Inner>,
    /// Socket Mode: connections, envelopes and acks.
    pub(crate) socket_mode: crate::socket_mode::SocketMode,
}

impl FakeSlack {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `auth.test` say the token has only `scopes` (comma-separated).
    pub fn grant_scopes(&self, scopes: &str) {
        self.lock().scopes = Some(scopes.to_owned());
    }

    /// Every call so far, in arrival order.
    pub fn all_calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls of one method that Slack accepted.
    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method && c.error.is_none())
            .cloned()
            .collect()
    }

    /// What message `ts` shows now: the text of its latest accepted post or edit.
    pub fn shown(&self, ts: &str) -> Option<String> {
        self.lock()
            .calls
            .iter()
            .rev()
            .find(|c| {
                c.error.is_none()
                    && (c.method == "chat.postMessage" || c.method == "chat.update")
                    && c.ts.as_deref() == Some(ts)
            })
            .map(|c| message_text(&c.body))
    }

    /// The calls of one method, accepted or not.
    pub fn attempts(&self, method: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Serve at most `max` calls of `method` per `window`; beyond that answer 429
    /// with `Retry-After` (seconds until the oldest call leaves the window).
    pub fn rate_limit(&self, method: &str, max: usize, window: Duration) {
        self.lock().limits.insert(
            method.to_owned(),
            Limit {
                max,
                window,
                served: VecDeque::new(),
            },
        );
    }

    /// Answer the next `n` calls of `method` with Slack error `error`
    /// (`"ratelimited"` answers a 429 with `Retry-After: 1`).
    pub fn fail_next(&self, method: &str, n: usize, error: &str) {
        let mut inner = self.lock();
        let q = inner.failures.entry(method.to_owned()).or_default();
        q.extend(std::iter::repeat_n(error.to_owned(), n));
    }

    /// The next `n` calls of `method` take effect but are never answered
    /// (the connection hangs, as when an answer is lost on the way).
    pub fn lose_answers(&self, method: &str, n: usize) {
        *self.lock().lose.entry(method.to_owned()).or_default() += n;
    }

    /// Hands every call to `tap` as it is answered, instead of keeping it:
    /// the benchmark makes more calls than it can afford to keep.
    pub fn tap(&self, tap: impl Fn(Seen<'_>) + Send + Sync + 'static) {
        self.lock().tap = Some(Tap(Box::new(tap)));
    }

    /// Delay every answer to `method` (a slow Slack); zero ends the delay.
    pub fn delay(&self, method: &str, by: Duration) {
        let mut inner = self.lock();
        if by.is_zero() {
            inner.delay.remove(method);
        } else {
            inner.delay.insert(method.to_owned(), by);
        }
    }

    /// The messages of the thread of `ts` (its first message included), as
    /// `conversations.replies` returns them.
    pub fn thread(&self, ts: &str) -> Vec<Value> {
        self.lock()
            .posted
            .iter()
            .filter(|(t, b)| t == ts || b["thread_ts"].as_str() == Some(ts))
            .map(|(t, b)| {
                json!({"type": "message", "ts": t, "bot_id": "BBATON", "text": b["text"],
                       "blocks": b.get("blocks").cloned().unwrap_or_else(|| json!([])),
                       "thread_ts": b.get("thread_ts").cloned().unwrap_or_else(|| json!(t))})
            })
            .collect()
    }

    /// Describes `user` for `users.info` (anyone not described is a full
    /// member of [`TEAM`]). Make the method fail with [`FakeSlack::fail_next`].
    pub fn set_user(&self, user: &str, described: FakeUser) {
        self.lock().users.insert(user.to_owned(), described);
    }

    /// Sets the members of user group `group` (`usergroups.users.list`);
    /// a group never set answers `no_such_subteam`.
    pub fn set_group(&self, group: &str, members: &[&str]) {
        self.lock().groups.insert(
            group.to_owned(),
            members.iter().map(|m| (*m).to_owned()).collect(),
        );
    }

    /// Sets the members of `channel` (`conversations.members`); a channel
    /// never set has [`DEFAULT_CHANNEL_MEMBERS`].
    pub fn set_members(&self, channel: &str, members: &[&str]) {
        self.lock().members.insert(
            channel.to_owned(),
            members.iter().map(|m| (*m).to_owned()).collect(),
        );
    }

    /// The files the bot uploaded and shared, in order.
    pub fn uploaded_files(&self) -> Vec<FakeFile> {
        self.lock()
            .files
            .iter()
            .filter(|f| f.shared_in.is_some())
            .cloned()
            .collect()
    }

    /// Holds a file a person attached in Slack; returns its `files` entry as
    /// an event carries it (with `url_private_download` on this fake, served
    /// only with the bot token). `base` is the fake's Web API URL.
    pub fn attach_file(&self, base: &str, name: &str, bytes: &[u8]) -> Value {
        let mut inner = self.lock();
        let id = format!("F{:08}", inner.files.len() + 1);
        inner.files.push(FakeFile {
            id: id.clone(),
            name: name.to_owned(),
            title: Some(name.to_owned()),
            length: bytes.len(),
            bytes: bytes.to_vec(),
            shared_in: None,
        });
        let url = format!(
            "{}/files-pri/T1-{id}/download/{}",
            base.trim_end_matches("/api"),
            url_segment(name)
        );
        json!({"id": id, "name": name, "title": name, "size": bytes.len(),
               "mimetype": "application/octet-stream", "url_private": url,
               "url_private_download": url})
    }

    /// Sends file `id`'s download in chunks without a `Content-Length`, as a
    /// proxy in front of Slack may: its size shows only as it arrives.
    pub fn serve_without_length(&self, id: &str) {
        self.lock().unannounced.insert(id.to_owned());
    }

    /// Whether this call's answer is to be lost.
    fn take_lost(&self, method: &str) -> bool {
        match self.lock().lose.get_mut(method) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// The channel's own messages (not thread replies) after `oldest`,
    /// newest first, as `conversations.history` returns them.
    pub fn history(&self, channel: &str, oldest: f64) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .lock()
            .posted
            .iter()
            .filter(|(t, b)| {
                b["channel"].as_str() == Some(channel)
                    && b.get("thread_ts").is_none_or(Value::is_null)
                    && t.parse::<f64>().is_ok_and(|t| t > oldest)
            })
            .map(|(t, b)| {
                json!({"type": "message", "ts": t, "bot_id": "BBATON", "text": b["text"],
                       "blocks": b.get("blocks").cloned().unwrap_or_else(|| json!([]))})
            })
            .collect();
        out.reverse();
        out
    }

    /// Decides the answer for one call and records it.
    fn answer(&self, method: &str, body: &Value) -> Result<String, Refusal> {
        let mut inner = self.lock();
        let now = Instant::now();
        let refusal = if let Some(err) = inner.failures.get_mut(method).and_then(|q| q.pop_front())
        {
            Some(if err == "ratelimited" {
                Refusal::RateLimited(1)
            } else {
                Refusal::Error(err)
            })
        } else if let Some(limit) = inner.limits.get_mut(method) {
            while limit
                .served
                .front()
                .is_some_and(|t| now.duration_since(*t) >= limit.window)
            {
                limit.served.pop_front();
            }
            if limit.served.len() >= limit.max {
                let oldest = limit.served.front().copied().unwrap_or(now);
                let wait = limit.window.saturating_sub(now.duration_since(oldest));
                Some(Refusal::RateLimited(wait.as_secs().max(1)))
            } else {
                limit.served.push_back(now);
                None
            }
        } else {
            None
        };
        let refusal = refusal.or_else(|| check_limits(body).map(|e| Refusal::Error(e.to_owned())));
        let ts = match (&refusal, body["ts"].as_str()) {
            (Some(_), _) => None,
            (None, Some(ts)) => Some(ts.to_owned()),
            (None, None) if method.starts_with("chat.post") => {
                inner.next_ts += 1;
                // Like Slack: the post's Unix time, made unique.
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Some(format!("{secs}.{:06}", inner.next_ts))
            }
            (None, None) => None,
        };
        let error = refusal.as_ref().map(Refusal::code);
        match &inner.tap {
            Some(tap) => (tap.0)(Seen {
                method,
                body,
                at: now,
                error: error.as_deref(),
                ts: ts.as_deref(),
            }),
            None => inner.calls.push(Call {
                method: method.to_owned(),
                body: body.clone(),
                at: now,
                error,
                ts: ts.clone(),
            }),
        }
        match refusal {
            Some(r) => Err(r),
            None => {
                let ts = ts.unwrap_or_default();
                // (Tapped, as the benchmark does, nothing is kept.)
                if method == "chat.postMessage" && inner.tap.is_none() {
                    inner.posted.push((ts.clone(), body.clone()));
                }
                Ok(ts)
            }
        }
    }
}

enum Refusal {
    RateLimited(u64),
    Error(String),
}

impl Refusal {
    fn code(&self) -> String {
        match self {
            Refusal::RateLimited(_) => "ratelimited".to_owned(),
            Refusal::Error(e) => e.clone(),
        }
    }
}

/// `chat.update`'s answer, as Slack's: the edited message echoed (borrowed
/// from the request, not copied).
#[derive(serde::Serialize)]
struct UpdateEcho<'a> {
    ok: bool,
    channel: &'a Value,
    ts: &'a Value,
    text: &'a Value,
    message: EchoedMessage<'a>,
}

#[derive(serde::Serialize)]
struct EchoedMessage<'a> {
    text: &'a Value,
    blocks: &'a Value,
    user: &'static str,
    bot_id: &'static str,
}

impl<'a> UpdateEcho<'a> {
    fn of(body: &'a Value) -> Self {
        UpdateEcho {
            ok: true,
            channel: &body["channel"],
            ts: &body["ts"],
            text: &body["text"],
            message: EchoedMessage {
                text: &body["text"],
                blocks: &body["blocks"],
                user: "UBATON",
                bot_id: "BBATON",
            },
        }
    }
}

/// Slack's 429: `Retry-After` in seconds.
fn rate_limited(secs: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [("retry-after", secs.to_string())],
        axum::Json(json!({"ok": false, "error": "ratelimited"})),
    )
        .into_response()
}

fn slack_error(code: &str) -> Response {
    axum::Json(json!({"ok": false, "error": code})).into_response()
}

/// Checks a message payload the way Slack does.
pub fn check_limits(body: &Value) -> Option<&'static str> {
    if body["text"]
        .as_str()
        .is_some_and(|t| t.chars().count() > 4000)
    {
        return Some("msg_too_long");
    }
    if let Some(blocks) = body["blocks"].as_array() {
        if blocks.len() > 50 {
            return Some("invalid_blocks");
        }
        for b in blocks {
            if b["text"]["text"]
                .as_str()
                .is_some_and(|t| t.chars().count() > 3000)
            {
                return Some("invalid_blocks");
            }
            if b["block_id"].as_str().is_some_and(|t| t.len() > 255) {
                return Some("invalid_blocks");
            }
            for e in b["elements"].as_array().into_iter().flatten() {
                if b["type"] == "context"
                    && e["text"].as_str().is_some_and(|t| t.chars().count() > 3000)
                {
                    return Some("invalid_blocks");
                }
                if e["action_id"].as_str().is_some_and(|t| t.len() > 255)
                    || e["value"].as_str().is_some_and(|t| t.len() > 2000)
                    || e["text"]["text"]
                        .as_str()
                        .is_some_and(|t| t.chars().count() > 75 && e["type"] == "button")
                {
                    return Some("invalid_blocks");
                }
            }
        }
    }
    None
}

async fn api(
    State(slack): State<Arc<FakeSlack>>,
    AxPath(method): AxPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == crate::socket_mode::CONNECTIONS_OPEN {
        return crate::socket_mode::connections_open(&slack, &headers);
    }
    if !authorized(&headers) {
        return slack_error("not_authed");
    }
    // Like Slack: JSON, or a form (every method takes one).
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = if is_form {
        match serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) {
            Ok(pairs) => Value::Object(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            ),
            Err(_) => return slack_error("invalid_form_data"),
        }
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(body) => body,
            Err(_) => return slack_error("invalid_json"),
        }
    };
    let delay = slack.lock().delay.get(&method).copied();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if DIRECTORY_METHODS.contains(&method.as_str()) {
        let query = body
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        return directory_answer(&slack, &method, query);
    }
    let ts = match slack.answer(&method, &body) {
        Ok(ts) if slack.take_lost(&method) => {
            let _ = ts;
            std::future::pending::<()>().await;
            unreachable!("a lost answer never comes")
        }
        Ok(ts) => ts,
        Err(Refusal::RateLimited(secs)) => return rate_limited(secs),
        Err(Refusal::Error(e)) => return slack_error(&e),
    };
    match method.as_str() {
        "chat.postMessage" => {
            let channel = body["channel"].as_str().unwrap_or("C?").to_owned();
            axum::Json(json!({"ok": true, "channel": channel, "ts": ts, "message": {"ts": ts, "text": body["text"]}})).into_response()
        }
        "chat.update" => axum::Json(UpdateEcho::of(&body)).into_response(),
        "chat.postEphemeral" => axum::Json(json!({"ok": true, "message_ts": ts})).into_response(),
        "files.getUploadURLExternal" => upload_url(&slack, &headers, &body),
        "files.completeUploadExternal" => complete_upload(&slack, &body),
        "chat.getPermalink" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            let ts = body["message_ts"].as_str().unwrap_or_default();
            axum::Json(json!({"ok": true, "channel": channel,
                "permalink": format!("https://test.slack.com/archives/{channel}/p{}", ts.replace('.', ""))}))
            .into_response()
        }
        "views.publish" => axum::Json(
            json!({"ok": true, "view": {"id": "VHOME", "type": "home", "blocks": body["view"]["blocks"]}}),
        )
        .into_response(),
        "auth.test" => {
            let scopes = slack.lock().scopes.clone().unwrap_or_else(|| ALL_SCOPES.to_owned());
            (
                [("x-oauth-scopes", scopes)],
                axum::Json(
                    json!({"ok": true, "team_id": "T1", "user_id": "UBATON", "bot_id": "BBATON", "team": "Test", "user": "baton", "url": "https://test.slack.com/"}),
                ),
            )
                .into_response()
        }
        _ => (StatusCode::NOT_FOUND, "unknown method").into_response(),
    }
}

/// `files.getUploadURLExternal`: a file id and a URL on this fake to POST its bytes to.
fn upload_url(slack: &FakeSlack, headers: &HeaderMap, body: &Value) -> Response {
    let name = body["filename"].as_str().unwrap_or_default();
    let length = body["length"]
        .as_str()
        .and_then(|l| l.parse::<usize>().ok());
    let (true, Some(length)) = (!name.is_empty(), length) else {
        return slack_error("invalid_arguments");
    };
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let mut inner = slack.lock();
    let id = format!("F{:08}", inner.files.len() + 1);
    inner.files.push(FakeFile {
        id: id.clone(),
        name: name.to_owned(),
        title: None,
        length,
        bytes: Vec::new(),
        shared_in: None,
    });
    axum::Json(
        json!({"ok": true, "file_id": id, "upload_url": format!("http://{host}/upload/{id}")}),
    )
    .into_response()
}

/// `files.completeUploadExternal`: shares uploaded files in a channel or
/// thread, with the given blocks, as one message.
fn complete_upload(slack: &FakeSlack, body: &Value) -> Response {
    let files: Vec<Value> = body["files"]
        .as_str()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or_default();
    let blocks: Value = body["blocks"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or_else(|| json!([]));
    let channel = body["channel_id"].as_str().unwrap_or_default().to_owned();
    let thread = body["thread_ts"].as_str().map(str::to_owned);
    if files.is_empty() || channel.is_empty() {
        return slack_error("invalid_arguments");
    }
    let mut inner = slack.lock();
    let mut shared = Vec::new();
    for f in &files {
        let id = f["id"].as_str().unwrap_or_default();
        let Some(file) = inner.files.iter_mut().find(|x| x.id == id) else {
            return slack_error("file_not_found");
        };
        if file.bytes.len() != file.length {
            // Slack refuses a file whose bytes did not all arrive.
            return slack_error("file_upload_incomplete");
        }
        file.title = f["title"]
            .as_str()
            .map(str::to_owned)
            .or(Some(file.name.clone()));
        file.shared_in = Some((channel.clone(), thread.clone()));
        shared.push(json!({"id": file.id, "name": file.name, "title": file.title}));
    }
    inner.next_ts += 1;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ts = format!("{secs}.{:06}", inner.next_ts);
    let mut message = json!({"channel": channel, "text": "", "blocks": blocks, "files": shared});
    if let Some(t) = &thread {
        message["thread_ts"] = json!(t);
    }
    inner.posted.push((ts, message));
    axum::Json(json!({"ok": true, "files": shared})).into_response()
}

/// The upload URL: receives a file's bytes (raw, or a multipart form
/// field), only with the bot token.
async fn upload_bytes(
    State(slack): State<Arc<FakeSlack>>,
    AxPath(id): AxPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "not_authed").into_response();
    }
    let mut inner = slack.lock();
    match inner
        .files
        .iter_mut()
        .find(|f| f.id == id && f.shared_in.is_none())
    {
        Some(file) => {
            file.bytes = body.to_vec();
            (StatusCode::OK, format!("OK - {}", body.len())).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such upload").into_response(),
    }
}

/// The chunks a download without a length is sent in.
const UNANNOUNCED_CHUNK_BYTES: usize = 64 * 1024;

/// A file's `url_private_download`: its bytes, only with the bot token
/// (without it Slack answers with a sign-in page, not the file).
async fn download(
    State(slack): State<Arc<FakeSlack>>,
    AxPath((file, _name)): AxPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return (StatusCode::FORBIDDEN, "sign in to download").into_response();
    }
    let id = file.split('-').nth(1).unwrap_or_default();
    let (bytes, unannounced) = {
        let inner = slack.lock();
        let bytes = inner
            .files
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.bytes.clone());
        (bytes, inner.unannounced.contains(id))
    };
    match bytes {
        Some(bytes) if unannounced => {
            let chunks: Vec<Result<axum::body::Bytes, std::convert::Infallible>> = bytes
                .chunks(UNANNOUNCED_CHUNK_BYTES)
                .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
                .collect();
            (
                StatusCode::OK,
                [("content-type", "application/octet-stream")],
                axum::body::Body::from_stream(futures::stream::iter(chunks)),
            )
                .into_response()
        }
        Some(bytes) => (
            StatusCode::OK,
            [("content-type", "application/octet-stream")],
            bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// `name` as one URL path segment.
fn url_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether the request carries the bot token, as the Web API requires.
fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.strip_prefix("Bearer ") == Some(BOT_TOKEN))
}

/// `conversations.replies` (a GET): the thread's messages.
async fn replies(
    State(slack): State<Arc<FakeSlack>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return slack_error("not_authed");
    }
    let ts = query.get("ts").cloned().unwrap_or_default();
    let body = json!({"channel": query.get("channel"), "ts": ts});
    match slack.answer("conversations.replies", &body) {
        Ok(_) => {}
        Err(Refusal::RateLimited(secs)) => return rate_limited(secs),
        Err(Refusal::Error(e)) => return slack_error(&e),
    }
    let messages = slack.thread(&ts);
    if messages.is_empty() {
        return slack_error("thread_not_found");
    }
    axum::Json(json!({"ok": true, "messages": messages, "has_more": false})).into_response()
}

/// `conversations.history` (a GET): the channel's messages after `oldest`.
async fn history(
    State(slack): State<Arc<FakeSlack>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return slack_error("not_authed");
    }
    let channel = query.get("channel").cloned().unwrap_or_default();
    let oldest = query
        .get("oldest")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0.0);
    let body = json!({"channel": channel, "oldest": query.get("oldest")});
    match slack.answer("conversations.history", &body) {
        Ok(_) => {}
        Err(Refusal::RateLimited(secs)) => return rate_limited(secs),
        Err(Refusal::Error(e)) => return slack_error(&e),
    }
    let messages = slack.history(&channel, oldest);
    axum::Json(json!({"ok": true, "messages": messages, "has_more": false})).into_response()
}

/// What a slash command's `response_url` receives (any path under
/// `/response/`): recorded as a call of method [`RESPONSE_URL`], its path's
/// last part as the call's `ts`.
async fn response_url(
    State(slack): State<Arc<FakeSlack>>,
    AxPath(key): AxPath<String>,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid_json").into_response();
    };
    let at = Instant::now();
    let mut inner = slack.lock();
    // `fail_next(RESPONSE_URL, …)`: refused with an HTTP error, as Slack's
    // response URLs refuse (not an `ok: false` answer).
    let error = inner
        .failures
        .get_mut(RESPONSE_URL)
        .and_then(VecDeque::pop_front);
    match &inner.tap {
        Some(tap) => (tap.0)(Seen {
            method: RESPONSE_URL,
            body: &body,
            at,
            error: error.as_deref(),
            ts: Some(&key),
        }),
        None => inner.calls.push(Call {
            method: RESPONSE_URL.to_owned(),
            body,
            at,
            error: error.clone(),
            ts: Some(key),
        }),
    }
    match error {
        Some(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        None => axum::Json(json!({"ok": true})).into_response(),
    }
}

/// The method name under which posts to a `response_url` are recorded.
pub const RESPONSE_URL: &str = "response_url";

/// A `response_url` served by the fake Slack whose Web API is at `slack_url`
/// (what [`fake_slack`] returns); posts to it are recorded under `key`.
pub fn response_url_of(slack_url: &str, key: &str) -> String {
    format!("{}/response/{key}", slack_url.trim_end_matches("/api"))
}

impl FakeSlack {
    /// The texts posted to the `response_url` recorded under `key`, in order.
    pub fn responses(&self, key: &str) -> Vec<String> {
        self.calls(RESPONSE_URL)
            .into_iter()
            .filter(|c| c.ts.as_deref() == Some(key))
            .map(|c| c.body["text"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}
/// `users.info`, `usergroups.users.list` and `conversations.members` (GETs):
/// what the fake was told about people, groups and channels.
async fn directory(
    State(slack): State<Arc<FakeSlack>>,
    AxPath(method): AxPath<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return slack_error("not_authed");
    }
    directory_answer(&slack, &method, query)
}

/// The directory methods' answer, to a GET or a POST.
fn directory_answer(slack: &FakeSlack, method: &str, query: HashMap<String, String>) -> Response {
    let body = json!(query);
    match slack.answer(method, &body) {
        Ok(_) => {}
        Err(Refusal::RateLimited(secs)) => return rate_limited(secs),
        Err(Refusal::Error(e)) => return slack_error(&e),
    }
    let arg = |name: &str| query.get(name).cloned().unwrap_or_default();
    let inner = slack.lock();
    match method {
        "users.info" => {
            let id = arg("user");
            let u = inner.users.get(&id).cloned().unwrap_or_default();
            axum::Json(json!({"ok": true, "user": {
                "id": id, "team_id": u.team_id, "name": id.to_lowercase(),
                "is_restricted": u.is_restricted, "is_ultra_restricted": u.is_ultra_restricted,
                "is_bot": false, "deleted": false,
            }}))
            .into_response()
        }
        "usergroups.users.list" => match inner.groups.get(&arg("usergroup")) {
            Some(users) => axum::Json(json!({"ok": true, "users": users})).into_response(),
            None => slack_error("no_such_subteam"),
        },
        "conversations.members" => {
            let members: Vec<String> =
                inner
                    .members
                    .get(&arg("channel"))
                    .cloned()
                    .unwrap_or_else(|| {
                        DEFAULT_CHANNEL_MEMBERS
                            .iter()
                            .map(|m| (*m).to_owned())
                            .collect()
                    });
            axum::Json(
                json!({"ok": true, "members": members, "response_metadata": {"next_cursor": ""}}),
            )
            .into_response()
        }
        _ => (StatusCode::NOT_FOUND, "unknown method").into_response(),
    }
}

/// The fake Slack's router, for callers that serve it themselves.
pub fn router(slack: Arc<FakeSlack>) -> Router {
    Router::new()
        .route("/response/{key}", axum::routing::post(response_url))
        .route(
            "/upload/{id}",
            axum::routing::post(upload_bytes)
                .layer(axum::extract::DefaultBodyLimit::max(UPLOAD_MAX_BYTES)),
        )
        .route(
            "/files-pri/{file}/download/{name}",
            axum::routing::get(download),
        )
        .route("/api/conversations.replies", axum::routing::get(replies))
        .route("/api/conversations.history", axum::routing::get(history))
        .route("/api/{method}", axum::routing::post(api).get(directory))
        .route(
            crate::socket_mode::WS_PATH,
            axum::routing::get(crate::socket_mode::upgrade),
        )
        .with_state(slack)
}

/// Serves a fake Slack on 127.0.0.1; returns it and its Web API base URL
/// (what `SLACK_API_URL` takes).
pub async fn fake_slack() -> (Arc<FakeSlack>, String) {
    let slack = Arc::new(FakeSlack::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake Slack");
    let addr = listener.local_addr().expect("local addr");
    let app = router(slack.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (slack, format!("http://{addr}/api"))
}

/// All text of a message payload (fallback text and block texts).
pub fn message_text(body: &Value) -> String {
    let mut s = body["text"].as_str().unwrap_or("").to_owned();
    for b in body["blocks"].as_array().into_iter().flatten() {
        if let Some(t) = b["text"]["text"].as_str() {
            s.push('\n');
            s.push_str(t);
        }
        for e in b["elements"].as_array().into_iter().flatten() {
            if let Some(t) = e["text"].as_str().or(e["text"]["text"].as_str()) {
                s.push('\n');
                s.push_str(t);
            }
        }
    }
    s
}
