//! Signature checks for Slack's HTTP requests, as an axum middleware that runs
//! before any handler parses the body.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use slack_morphism::prelude::SlackSigningSecret;
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;

/// Largest body accepted from Slack.
pub const MAX_SLACK_BODY_BYTES: usize = 1024 * 1024;

/// The verifier, shared by the Slack routes.
#[derive(Clone)]
pub struct Verifier(pub SlackEventSignatureVerifier);

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    /// A verifier for the signing secret.
    pub fn new(secret: &str) -> Self {
        Verifier(SlackEventSignatureVerifier::new(&SlackSigningSecret::new(
            secret.to_owned(),
        )))
    }
}

/// Reads the body (bounded), checks `X-Slack-Signature` over
/// `v0:{timestamp}:{body}` and the 5-minute window, then passes the request on.
pub async fn verify_slack(State(verifier): State<Verifier>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_SLACK_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
        }
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header(SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER),
        header(SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP),
    ) else {
        return (StatusCode::UNAUTHORIZED, "missing Slack signature\n").into_response();
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return (StatusCode::BAD_REQUEST, "body is not UTF-8\n").into_response();
    };
    if let Err(err) = verifier.0.verify(signature, text, timestamp) {
        tracing::warn!(error = %err, "Slack request with a bad signature refused");
        return (StatusCode::UNAUTHORIZED, "bad Slack signature\n").into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
