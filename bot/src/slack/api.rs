//! The Slack Web API, through slack-morphism, at `SLACK_API_URL`.
//!
//! A thin layer that turns slack-morphism's errors into the three cases the
//! bot branches on: rate limited (with `Retry-After`), a Slack error code, and
//! a transport failure.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

/// When Slack answers 429 without `Retry-After`, wait this long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

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

/// What the bot needs of a `chat.postMessage` answer. Read leniently: once
/// Slack said `ok: true` the message exists, and a missing optional field in
/// the answer must not make the bot post it again.
#[derive(Debug, serde::Deserialize)]
struct Posted {
    ts: String,
}

/// An `ok: true` answer whose body the bot does not need. Failing to parse the
/// echo of an edit must never count as a failed edit (it would be re-sent).
#[derive(Debug, serde::Deserialize)]
struct Acknowledged {}

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

impl MessageBody {
    fn content(&self) -> SlackMessageContent {
        SlackMessageContent::new()
            .with_text(self.text.clone())
            .with_blocks(self.blocks.clone())
    }
}

/// The Web API client. Cheap to clone.
#[derive(Clone)]
pub struct SlackApi {
    /// slack-morphism's client over hyper, pointed at `SLACK_API_URL`.
    client: Arc<SlackHyperClient>,
    /// The bot token.
    token: Arc<SlackApiToken>,
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
        let connector = SlackClientHyperConnector::with_connector(https)
            .with_slack_api_url(api_url.trim_end_matches('/'));
        Ok(SlackApi {
            client: Arc::new(SlackClient::new(connector)),
            token: Arc::new(SlackApiToken::new(token.expose_secret().into())),
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
        let req = SlackApiChatPostMessageRequest::new(channel.into(), body.content())
            .opt_thread_ts(thread_ts.map(Into::into));
        let res: Posted = self
            .client
            .open_session(&self.token)
            .http_session_api
            .http_post("chat.postMessage", &req, None)
            .await?;
        Ok(res.ts)
    }

    /// Replaces a message's content.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        body: &MessageBody,
    ) -> Result<(), SlackCallError> {
        let req = SlackApiChatUpdateRequest::new(channel.into(), body.content(), ts.into());
        let _: Acknowledged = self
            .client
            .open_session(&self.token)
            .http_session_api
            .http_post("chat.update", &req, None)
            .await?;
        Ok(())
    }

    /// Posts a message only `user` sees.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
    ) -> Result<(), SlackCallError> {
        let req = SlackApiChatPostEphemeralRequest::new(
            channel.into(),
            user.into(),
            SlackMessageContent::new().with_text(text.to_owned()),
        );
        self.client
            .open_session(&self.token)
            .chat_post_ephemeral(&req)
            .await?;
        Ok(())
    }
}
