//! The Slack Web API at `SLACK_API_URL`: slack-morphism's client and models,
//! and for the busiest calls (`chat.postMessage`, `chat.update`) and those
//! whose answer's headers matter, plain hyper requests with the same models.
//!
//! A thin layer that turns every error into the three cases the bot branches
//! on: rate limited (with `Retry-After`), a Slack error code, and a transport
//! failure. [`ChatApi`] is the part of it the consolidator uses,
//! so its tests can stand in for Slack on tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

/// When Slack answers 429 without `Retry-After`, wait this long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Replies asked for per `conversations.replies` page (Slack's maximum is 1,000).
const REPLIES_PAGE: u16 = 200;
/// Most `conversations.replies` pages read for one thread.
const REPLIES_MAX_PAGES: usize = 20;

/// A failed Web API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackCallError {
    /// HTTP 429: wait before calling this method again.
    #[error("rate limited by Slack; retry after {retry_after:?}")]
    RateLimited {
        /// How long Slack asked us to wait.
        retry_after: Duration,
    },
    /// Slack answered `ok: false` with this error code.
    #[error("Slack refused the call: {0}")]
    Api(String),
    /// The request did not get an answer (network, HTTP error, bad JSON).
    #[error("cannot reach Slack: {0}")]
    Transport(String),
}

impl SlackCallError {
    /// Whether trying the same call again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SlackCallError::RateLimited { .. } | SlackCallError::Transport(_) => true,
            SlackCallError::Api(code) => {
                matches!(
                    code.as_str(),
                    "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout"
                )
            }
        }
    }
}

/// What the bot reads of a `chat.postMessage` or `chat.update` answer (the
/// rest, the message's echo, is skipped). Read leniently: once Slack said
/// `ok: true` the message exists or the edit is made, and a field missing
/// from the echo must never make the bot send it again.
#[derive(Debug, serde::Deserialize)]
struct ChatAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    /// The message's ts (`chat.postMessage`).
    #[serde(default)]
    ts: Option<String>,
}

/// An `ok: true` answer whose body the bot does not need.
#[derive(Debug, serde::Deserialize)]
struct Acknowledged {}

/// A `chat.postMessage` or `chat.update` request's body, as Slack reads it.
#[derive(Debug, serde::Serialize)]
struct ChatRequest<'a> {
    channel: &'a str,
    /// The message to edit (`chat.update`).
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
    /// The thread to post in (`chat.postMessage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_ts: Option<&'a str>,
    text: &'a str,
    blocks: &'a [SlackBlock],
}

impl From<SlackClientError> for SlackCallError {
    fn from(err: SlackClientError) -> Self {
        match err {
            SlackClientError::RateLimitError(e) => SlackCallError::RateLimited {
                retry_after: e.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            },
            SlackClientError::ApiError(e) => SlackCallError::Api(e.code),
            other => SlackCallError::Transport(other.to_string()),
        }
    }
}

/// A message's content: fallback text and blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageBody {
    /// Notification and fallback text.
    pub text: String,
    /// Block Kit blocks.
    pub blocks: Vec<SlackBlock>,
}

/// A file to share in a thread: a long result, uploaded whole.
#[derive(Debug, Clone, PartialEq)]
pub struct FileUpload {
    /// The file's name (`task-ID.md`).
    pub filename: String,
    /// The title Slack shows above it.
    pub title: String,
    /// The file's content.
    pub content: String,
    /// The message it is shared with; its blocks' ids let a thread read back
    /// show that it was shared.
    pub comment: MessageBody,
}

/// What `files.getUploadURLExternal` answers.
#[derive(Debug, serde::Deserialize)]
struct UploadUrl {
    /// Where to POST the file's bytes.
    upload_url: String,
    /// The file's id, for `files.completeUploadExternal`.
    file_id: String,
}

/// The Web API calls the consolidator makes. [`SlackApi`] makes them over
/// HTTP; the consolidator's tests use an in-memory Slack on paused time.
pub trait ChatApi: Send + Sync + 'static {
    /// `chat.postMessage`, in a thread when `thread_ts` is given; returns the new message's ts.
    fn post_message<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: Option<&'a str>,
        body: &'a MessageBody,
    ) -> BoxFuture<'a, Result<String, SlackCallError>>;

    /// `chat.update`: replaces a message's content.
    fn update_message<'a>(
        &'a self,
        channel: &'a str,
        ts: &'a str,
        body: &'a MessageBody,
    ) -> BoxFuture<'a, Result<(), SlackCallError>>;

    /// `conversations.replies`: the block ids of every message in the thread of `thread_ts`.
    fn thread_block_ids<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, SlackCallError>>;

    /// `chat.postEphemeral`: a message only `user` sees, in a thread when given.
    fn post_ephemeral<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: Option<&'a str>,
        user: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), SlackCallError>>;

    /// Uploads `file` and shares it in the thread of `thread_ts`, with its
    /// comment's blocks: `files.getUploadURLExternal`, a POST of the bytes to
    /// the URL it returns, then `files.completeUploadExternal`. Nothing is
    /// shown in the channel before the last call succeeds.
    fn upload_file<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: &'a str,
        file: &'a FileUpload,
    ) -> BoxFuture<'a, Result<(), SlackCallError>>;

    /// The ts of the message carrying block `block_id`: in the thread of
    /// `thread_ts` (`conversations.replies`), or among the channel's messages
    /// since `oldest` (`conversations.history`).
    fn find_message<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: Option<&'a str>,
        oldest: &'a str,
        block_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SlackCallError>>;
}

/// The plain HTTP client beside slack-morphism's.
type RawClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// What `auth.test` says of the bot token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthTest {
    /// The bot's user id.
    pub user_id: String,
    /// The workspace.
    pub team_id: String,
    /// The scopes granted, when Slack said (`x-oauth-scopes`).
    pub scopes: Option<Vec<String>>,
}

/// The Web API client. Cheap to clone.
#[derive(Clone)]
pub struct SlackApi {
    /// slack-morphism's client over hyper, pointed at `SLACK_API_URL`.
    client: Arc<SlackHyperClient>,
    /// The bot token.
    token: Arc<SlackApiToken>,
    /// A plain HTTP client on the same connector, for the one call whose
    /// answer's headers matter (`auth.test`'s `x-oauth-scopes`).
    raw: RawClient,
    /// `SLACK_API_URL` without its trailing slash.
    api_url: Arc<str>,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi").finish_non_exhaustive()
    }
}

impl SlackApi {
    /// A client for the Web API at `api_url` (`http://` allowed, for emulators).
    pub fn new(api_url: &str, token: &SecretString) -> anyhow::Result<Self> {
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                // Still usable for an http:// emulator; https calls will fail visibly.
                tracing::warn!(error = %e, "no system TLS root certificates; https to Slack will fail (install ca-certificates)");
                let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        let raw = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https.clone());
        let connector = SlackClientHyperConnector::with_connector(https)
            .with_slack_api_url(api_url.trim_end_matches('/'));
        Ok(SlackApi {
            client: Arc::new(SlackClient::new(connector)),
            token: Arc::new(SlackApiToken::new(token.expose_secret().into())),
            raw,
            api_url: api_url.trim_end_matches('/').into(),
        })
    }

    /// Calls `method` with `params` as a form POST, the one encoding every
    /// Web API method takes (read methods refuse JSON bodies, and emulators
    /// may not serve GET); returns the answer's JSON and the scopes Slack says
    /// the token has (`x-oauth-scopes`). A 429 and an `ok: false` are errors.
    pub async fn call_form(
        &self,
        method: &str,
        params: &[(&str, &str)],
    ) -> Result<(serde_json::Value, Option<Vec<String>>), SlackCallError> {
        let form = serde_urlencoded::to_string(params)
            .map_err(|e| SlackCallError::Transport(e.to_string()))?;
        let request = self.request(method, "application/x-www-form-urlencoded", form.into())?;
        let call = async {
            let (answer, body) = self.send(request).await?;
            let status = answer.status;
            let scopes = answer
                .headers
                .get("x-oauth-scopes")
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                });
            let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
                SlackCallError::Transport(format!("{method} answered HTTP {status} without JSON"))
            })?;
            if json["ok"] != true {
                let code = json["error"].as_str().unwrap_or("unknown_error");
                return Err(SlackCallError::Api(code.to_owned()));
            }
            Ok((json, scopes))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| SlackCallError::Transport(format!("{method} timed out")))?
    }

    /// Calls `chat.postMessage` or `chat.update` (`method`) with `request`
    /// as JSON, the encoding that carries blocks; the answer once Slack said
    /// `ok: true`. Written directly on hyper: this is the bot's busiest call.
    async fn call_chat(
        &self,
        method: &str,
        request: &ChatRequest<'_>,
    ) -> Result<ChatAnswer, SlackCallError> {
        let json =
            serde_json::to_vec(request).map_err(|e| SlackCallError::Transport(e.to_string()))?;
        let request = self.request(method, "application/json; charset=utf-8", json.into())?;
        let (answer, body) = self.send(request).await?;
        let status = answer.status;
        let answer: ChatAnswer = serde_json::from_slice(&body).map_err(|_| {
            SlackCallError::Transport(format!("{method} answered HTTP {status} without JSON"))
        })?;
        if !answer.ok {
            let code = answer.error.unwrap_or_else(|| "unknown_error".into());
            return Err(SlackCallError::Api(code));
        }
        Ok(answer)
    }

    /// A POST of `body` to Web API method `method`, with the bot's token.
    fn request(
        &self,
        method: &str,
        content_type: &'static str,
        body: bytes::Bytes,
    ) -> Result<http::Request<http_body_util::Full<bytes::Bytes>>, SlackCallError> {
        http::Request::post(format!("{}/{method}", self.api_url))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token.token_value.0),
            )
            .header(http::header::CONTENT_TYPE, content_type)
            .body(http_body_util::Full::new(body))
            .map_err(|e| SlackCallError::Transport(e.to_string()))
    }

    /// Sends `request`; the answer's head and body. A 429 is an error, with
    /// the wait Slack asks for.
    async fn send(
        &self,
        request: http::Request<http_body_util::Full<bytes::Bytes>>,
    ) -> Result<(http::response::Parts, bytes::Bytes), SlackCallError> {
        let answer = self
            .raw
            .request(request)
            .await
            .map_err(|e| SlackCallError::Transport(e.to_string()))?;
        if answer.status() == http::StatusCode::TOO_MANY_REQUESTS {
            let retry_after = answer
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
            return Err(SlackCallError::RateLimited { retry_after });
        }
        let (head, body) = answer.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| SlackCallError::Transport(e.to_string()))?
            .to_bytes();
        Ok((head, body))
    }

    /// Uploads `file` into the thread of `thread_ts` (see [`ChatApi::upload_file`]).
    pub async fn upload_file(
        &self,
        channel: &str,
        thread_ts: &str,
        file: &FileUpload,
    ) -> Result<(), SlackCallError> {
        let length = file.content.len().to_string();
        let (json, _) = self
            .call_form(
                "files.getUploadURLExternal",
                &[("filename", &file.filename), ("length", &length)],
            )
            .await?;
        let target: UploadUrl = serde_json::from_value(json)
            .map_err(|e| SlackCallError::Transport(format!("files.getUploadURLExternal: {e}")))?;
        self.send_bytes(&target.upload_url, &file.filename, file.content.as_bytes())
            .await?;
        let files = serde_json::json!([{"id": target.file_id, "title": file.title}]).to_string();
        let blocks = serde_json::to_string(&file.comment.blocks)
            .map_err(|e| SlackCallError::Transport(e.to_string()))?;
        self.call_form(
            "files.completeUploadExternal",
            &[
                ("files", &files),
                ("channel_id", channel),
                ("thread_ts", thread_ts),
                ("blocks", &blocks),
            ],
        )
        .await?;
        Ok(())
    }

    /// POSTs a file's bytes to the upload URL Slack gave. The bot token goes
    /// along only to Slack itself (a `slack.com` host, or `SLACK_API_URL`'s).
    async fn send_bytes(&self, url: &str, name: &str, bytes: &[u8]) -> Result<(), SlackCallError> {
        let parsed = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| {
                SlackCallError::Transport("the upload URL is not an http(s) URL".into())
            })?;
        let api_host = url::Url::parse(&self.api_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        let to_slack = parsed.host_str().is_some_and(|h| {
            h == "slack.com" || h.ends_with(".slack.com") || Some(h) == api_host.as_deref()
        });
        let mut request = http::Request::post(parsed.as_str())
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header("x-filename", name);
        if to_slack {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token.token_value.0),
            );
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                bytes,
            )))
            .map_err(|e| SlackCallError::Transport(e.to_string()))?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.raw.request(request))
            .await
            .map_err(|_| SlackCallError::Transport("the file upload timed out".into()))?
            .map_err(|e| SlackCallError::Transport(e.to_string()))?;
        match answer.status() {
            s if s.is_success() => Ok(()),
            http::StatusCode::TOO_MANY_REQUESTS => Err(SlackCallError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER,
            }),
            s if s.is_server_error() => Err(SlackCallError::Transport(format!(
                "the file upload answered HTTP {s}"
            ))),
            s => Err(SlackCallError::Api(format!("upload_http_{}", s.as_u16()))),
        }
    }

    /// GETs a file attached in Slack (its `url_private_download`) with the
    /// bot token; the answer's body is not read, so the caller streams it.
    /// The token goes only to Slack itself (a `slack.com` host over https, or
    /// `SLACK_API_URL`'s host): any other URL is refused. An answer other
    /// than 200, or a sign-in page instead of the file (what Slack gives a
    /// token without `files:read`), is an error.
    pub async fn download(&self, url: &str) -> Result<axum::response::Response, SlackCallError> {
        let parsed = url::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| {
                SlackCallError::Transport("Slack gave no download URL for the file".into())
            })?;
        let api = url::Url::parse(&self.api_url).ok();
        let slack_host = parsed.scheme() == "https"
            && parsed
                .host_str()
                .is_some_and(|h| h == "slack.com" || h.ends_with(".slack.com"));
        let api_host = api.as_ref().is_some_and(|a| {
            a.host_str().is_some() && a.host_str() == parsed.host_str() && a.port() == parsed.port()
        });
        if !slack_host && !api_host {
            return Err(SlackCallError::Transport(format!(
                "the file's URL is not on Slack ({}); the bot token is not sent there",
                parsed.host_str().unwrap_or("no host")
            )));
        }
        let request = http::Request::get(parsed.as_str())
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token.token_value.0),
            )
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .map_err(|e| SlackCallError::Transport(e.to_string()))?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.raw.request(request))
            .await
            .map_err(|_| SlackCallError::Transport("the file download timed out".into()))?
            .map_err(|e| SlackCallError::Transport(e.to_string()))?;
        let html = answer
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        match answer.status() {
            http::StatusCode::OK if html => Err(SlackCallError::Api(
                "Slack answered with a sign-in page: the bot token needs the files:read scope"
                    .into(),
            )),
            http::StatusCode::OK => Ok(answer.map(axum::body::Body::new)),
            http::StatusCode::TOO_MANY_REQUESTS => Err(SlackCallError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER,
            }),
            s => Err(SlackCallError::Api(format!(
                "Slack answered HTTP {} for the file",
                s.as_u16()
            ))),
        }
    }

    /// `auth.test`: who the bot token belongs to, and the scopes it grants
    /// (from the `x-oauth-scopes` header Slack adds to every answer).
    pub async fn auth_test(&self) -> Result<AuthTest, SlackCallError> {
        let (json, scopes) = self.call_form("auth.test", &[]).await?;
        let field = |name: &str| json[name].as_str().unwrap_or_default().to_owned();
        Ok(AuthTest {
            user_id: field("user_id"),
            team_id: field("team_id"),
            scopes,
        })
    }

    /// The underlying slack-morphism client (Socket Mode uses it).
    pub fn client(&self) -> Arc<SlackHyperClient> {
        self.client.clone()
    }

    /// Posts a message, in a thread when `thread_ts` is given; returns its ts.
    pub async fn post_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        body: &MessageBody,
    ) -> Result<String, SlackCallError> {
        let request = ChatRequest {
            channel,
            ts: None,
            thread_ts,
            text: &body.text,
            blocks: &body.blocks,
        };
        let answer = self.call_chat("chat.postMessage", &request).await?;
        answer.ts.ok_or_else(|| {
            // Posted, but no ts to edit it by: looked for again like an unanswered post.
            SlackCallError::Transport("chat.postMessage answered without a ts".into())
        })
    }

    /// Replaces a message's content.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        body: &MessageBody,
    ) -> Result<(), SlackCallError> {
        let request = ChatRequest {
            channel,
            ts: Some(ts),
            thread_ts: None,
            text: &body.text,
            blocks: &body.blocks,
        };
        self.call_chat("chat.update", &request).await?;
        Ok(())
    }

    /// The block ids of every message in a thread (its first message included).
    pub async fn thread_block_ids(
        &self,
        channel: &str,
        thread_ts: &str,
    ) -> Result<Vec<String>, SlackCallError> {
        let mut ids = Vec::new();
        self.read_back(channel, Some(thread_ts), "0", |message| {
            ids.extend(message.content.blocks.iter().flatten().filter_map(block_id));
            false
        })
        .await?;
        Ok(ids)
    }

    /// The ts of the message carrying block `wanted`, in a thread or among
    /// the channel's messages since `oldest` (see [`ChatApi::find_message`]).
    pub async fn find_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        oldest: &str,
        wanted: &str,
    ) -> Result<Option<String>, SlackCallError> {
        let mut found = None;
        self.read_back(channel, thread_ts, oldest, |message| {
            let carries = message
                .content
                .blocks
                .iter()
                .flatten()
                .any(|b| block_id(b).as_deref() == Some(wanted));
            if carries {
                found = Some(message.origin.ts.0.clone());
            }
            carries
        })
        .await?;
        Ok(found)
    }

    /// Reads messages back, page by page (at most [`REPLIES_MAX_PAGES`]): the
    /// thread of `thread_ts` (`conversations.replies`), or the channel's
    /// messages since `oldest` (`conversations.history`). `visit` returns true
    /// to stop.
    async fn read_back(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        oldest: &str,
        mut visit: impl FnMut(&SlackHistoryMessage) -> bool,
    ) -> Result<(), SlackCallError> {
        let session = self.client.open_session(&self.token);
        let mut cursor = None;
        for _ in 0..REPLIES_MAX_PAGES {
            let (messages, next) = match thread_ts {
                Some(thread) => {
                    let req =
                        SlackApiConversationsRepliesRequest::new(channel.into(), thread.into())
                            .with_limit(REPLIES_PAGE)
                            .opt_cursor(cursor);
                    let res = session.conversations_replies(&req).await?;
                    (res.messages, res.response_metadata)
                }
                None => {
                    let req = SlackApiConversationsHistoryRequest::new()
                        .with_channel(channel.into())
                        .with_oldest(oldest.into())
                        .with_limit(REPLIES_PAGE)
                        .opt_cursor(cursor);
                    let res = session.conversations_history(&req).await?;
                    (res.messages, res.response_metadata)
                }
            };
            if messages.iter().any(&mut visit) {
                return Ok(());
            }
            cursor = next.and_then(|m| m.next_cursor);
            if cursor.is_none() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Answers a slash command after its acknowledgement, through the
    /// command's `response_url` (JSON; Slack shows it only to the person who
    /// typed the command: ephemeral is the default for response URLs).
    pub async fn respond(&self, response_url: &str, text: &str) -> Result<(), SlackCallError> {
        let url = url::Url::parse(response_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            // Not a failure that passes: no use trying it again.
            .ok_or_else(|| SlackCallError::Api("invalid_response_url".into()))?;
        let req = SlackApiPostWebhookMessageRequest::new(
            SlackMessageContent::new().with_text(text.to_owned()),
        );
        self.client
            .respond_to_event(&SlackResponseUrl::new(url), &req)
            .await?;
        Ok(())
    }

    /// Shows `blocks` as `user`'s Home tab (`views.publish`).
    pub async fn publish_home(
        &self,
        user: &str,
        blocks: Vec<SlackBlock>,
    ) -> Result<(), SlackCallError> {
        let req = SlackApiViewsPublishRequest::new(
            user.into(),
            SlackView::Home(SlackHomeView::new(blocks)),
        );
        let _: Acknowledged = timed(async {
            Ok(self
                .client
                .open_session(&self.token)
                .http_session_api
                .http_post("views.publish", &req, None)
                .await?)
        })
        .await?;
        Ok(())
    }

    /// A link to message `ts` of `channel` (`chat.getPermalink`).
    pub async fn permalink(&self, channel: &str, ts: &str) -> Result<String, SlackCallError> {
        let (json, _) = self
            .call_form(
                "chat.getPermalink",
                &[("channel", channel), ("message_ts", ts)],
            )
            .await?;
        json["permalink"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                SlackCallError::Transport("chat.getPermalink without a permalink".into())
            })
    }

    /// Posts a message only `user` sees.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
    ) -> Result<(), SlackCallError> {
        self.post_ephemeral_in(channel, None, user, text).await
    }

    /// Posts a message only `user` sees, in a thread when `thread_ts` is given.
    pub async fn post_ephemeral_in(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        user: &str,
        text: &str,
    ) -> Result<(), SlackCallError> {
        let req = SlackApiChatPostEphemeralRequest::new(
            channel.into(),
            user.into(),
            SlackMessageContent::new().with_text(text.to_owned()),
        )
        .opt_thread_ts(thread_ts.map(Into::into));
        self.client
            .open_session(&self.token)
            .chat_post_ephemeral(&req)
            .await?;
        Ok(())
    }
}

/// Members asked for per `conversations.members` page (Slack's maximum is 1,000).
const MEMBERS_PAGE: u16 = 1000;
/// Most `conversations.members` pages read for one channel (so a channel of
/// more than 20,000 people is read in part: those beyond are not seen as members).
const MEMBERS_MAX_PAGES: usize = 20;

/// What `users.info` says about a person that access control needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct UserInfo {
    /// The person's own workspace (another one for a person of another
    /// organization in a shared channel).
    #[serde(default)]
    pub team_id: Option<String>,
    /// A multi-channel guest.
    #[serde(default)]
    pub is_restricted: bool,
    /// A single-channel guest.
    #[serde(default)]
    pub is_ultra_restricted: bool,
    /// The workspaces of an Enterprise Grid member (any of them is "this team").
    #[serde(default)]
    pub enterprise_user: Option<EnterpriseUser>,
}

/// The Enterprise Grid part of a user.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct EnterpriseUser {
    /// The workspaces the person belongs to.
    #[serde(default)]
    pub teams: Vec<String>,
}

/// The `users.info` answer.
#[derive(Debug, serde::Deserialize)]
struct UserInfoAnswer {
    user: UserInfo,
}

/// The `usergroups.users.list` answer.
#[derive(Debug, serde::Deserialize)]
struct GroupUsersAnswer {
    #[serde(default)]
    users: Vec<String>,
}

/// A `conversations.members` page.
#[derive(Debug, serde::Deserialize)]
struct MembersAnswer {
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    response_metadata: Option<NextCursor>,
}

/// Where the next page starts.
#[derive(Debug, serde::Deserialize)]
struct NextCursor {
    #[serde(default)]
    next_cursor: Option<String>,
}

impl SlackApi {
    /// `users.info`: whether the person is a guest and which workspace they belong to.
    pub async fn user_info(&self, user: &str) -> Result<UserInfo, SlackCallError> {
        let (json, _) = self.call_form("users.info", &[("user", user)]).await?;
        let answer: UserInfoAnswer = serde_json::from_value(json)
            .map_err(|e| SlackCallError::Transport(format!("users.info: {e}")))?;
        Ok(answer.user)
    }

    /// `usergroups.users.list`: the members of a user group.
    pub async fn usergroup_members(&self, group: &str) -> Result<Vec<String>, SlackCallError> {
        let (json, _) = self
            .call_form("usergroups.users.list", &[("usergroup", group)])
            .await?;
        let answer: GroupUsersAnswer = serde_json::from_value(json)
            .map_err(|e| SlackCallError::Transport(format!("usergroups.users.list: {e}")))?;
        Ok(answer.users)
    }

    /// `conversations.members`: the members of a channel, page by page (at
    /// most `MEMBERS_MAX_PAGES`).
    pub async fn conversation_members(&self, channel: &str) -> Result<Vec<String>, SlackCallError> {
        let limit = MEMBERS_PAGE.to_string();
        let mut members = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MEMBERS_MAX_PAGES {
            let mut params = vec![("channel", channel), ("limit", limit.as_str())];
            if let Some(c) = cursor.as_deref() {
                params.push(("cursor", c));
            }
            let (json, _) = self.call_form("conversations.members", &params).await?;
            let page: MembersAnswer = serde_json::from_value(json)
                .map_err(|e| SlackCallError::Transport(format!("conversations.members: {e}")))?;
            members.extend(page.members);
            cursor = page
                .response_metadata
                .and_then(|m| m.next_cursor)
                .filter(|c| !c.is_empty());
            if cursor.is_none() {
                break;
            }
        }
        Ok(members)
    }
}

/// The block id of the blocks Baton posts (sections, context and actions).
fn block_id(block: &SlackBlock) -> Option<String> {
    match block {
        SlackBlock::Section(b) => b.block_id.as_ref().map(|id| id.0.clone()),
        SlackBlock::Context(b) => b.block_id.as_ref().map(|id| id.0.clone()),
        SlackBlock::Actions(b) => b.block_id.as_ref().map(|id| id.0.clone()),
        _ => None,
    }
}

/// The longest a Web API call may take before it counts as unanswered (a
/// transport failure: retried, and a post is looked for before it is repeated).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds a call by [`CALL_TIMEOUT`].
async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, SlackCallError>>,
) -> Result<T, SlackCallError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(SlackCallError::Transport("no answer in time".into())))
}

impl ChatApi for SlackApi {
    fn post_message<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: Option<&'a str>,
        body: &'a MessageBody,
    ) -> BoxFuture<'a, Result<String, SlackCallError>> {
        Box::pin(timed(SlackApi::post_message(
            self, channel, thread_ts, body,
        )))
    }

    fn update_message<'a>(
        &'a self,
        channel: &'a str,
        ts: &'a str,
        body: &'a MessageBody,
    ) -> BoxFuture<'a, Result<(), SlackCallError>> {
        Box::pin(timed(SlackApi::update_message(self, channel, ts, body)))
    }

    fn thread_block_ids<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, SlackCallError>> {
        Box::pin(timed(SlackApi::thread_block_ids(self, channel, thread_ts)))
    }

    fn find_message<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: Option<&'a str>,
        oldest: &'a str,
        block_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SlackCallError>> {
        Box::pin(timed(SlackApi::find_message(
            self, channel, thread_ts, oldest, block_id,
        )))
    }

    fn post_ephemeral<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: Option<&'a str>,
        user: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), SlackCallError>> {
        Box::pin(timed(SlackApi::post_ephemeral_in(
            self, channel, thread_ts, user, text,
        )))
    }

    fn upload_file<'a>(
        &'a self,
        channel: &'a str,
        thread_ts: &'a str,
        file: &'a FileUpload,
    ) -> BoxFuture<'a, Result<(), SlackCallError>> {
        Box::pin(SlackApi::upload_file(self, channel, thread_ts, file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> MessageBody {
        MessageBody {
            text: text.into(),
            blocks: vec![
                SlackSectionBlock::new()
                    .with_text(SlackBlockText::MarkDown(format!("*{text}*").into()))
                    .with_block_id("b1".into())
                    .into(),
            ],
        }
    }

    /// A post, a reply in its thread and an edit reach Slack as JSON with
    /// their blocks; Slack's refusals come back as the bot branches on them:
    /// its error code, and a 429 with the wait it asked for.
    #[tokio::test]
    async fn chat_calls_reach_slack_and_its_refusals_come_back_as_they_were() {
        let (fake, url) = baton_testkit::slack::fake_slack().await;
        let api = SlackApi::new(&url, &SecretString::from("xoxb-test")).expect("client");

        let ts = api
            .post_message("C1", None, &body("first"))
            .await
            .expect("posted");
        let reply = api
            .post_message("C1", Some(&ts), &body("reply"))
            .await
            .expect("replied");
        assert_ne!(reply, ts);
        assert_eq!(fake.thread(&ts).len(), 2, "the reply is in the thread");
        api.update_message("C1", &ts, &body("edited"))
            .await
            .expect("edited");
        assert_eq!(fake.shown(&ts).as_deref(), Some("edited\n*edited*"));
        let edit = fake.calls("chat.update").pop().expect("the edit");
        assert_eq!(edit.body["blocks"][0]["block_id"], "b1");

        fake.fail_next("chat.update", 1, "message_not_found");
        assert_eq!(
            api.update_message("C1", &ts, &body("gone")).await,
            Err(SlackCallError::Api("message_not_found".into()))
        );
        fake.fail_next("chat.postMessage", 1, "ratelimited");
        assert_eq!(
            api.post_message("C1", None, &body("later")).await,
            Err(SlackCallError::RateLimited {
                retry_after: Duration::from_secs(1)
            })
        );
        assert_eq!(fake.shown(&ts).as_deref(), Some("edited\n*edited*"));
    }
}
