//! The HTTP side of the load: signed slash commands (as Slack sends them) and
//! plain GETs, over kept-alive connections (hyper's pooled client).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Idle connections kept per host: enough for the highest offered rate.
const POOL_IDLE_PER_HOST: usize = 4096;

/// A pooled HTTP/1.1 client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    /// hyper's client.
    inner: Hyper<HttpConnector, Full<Bytes>>,
    /// The base of the commands' `response_url`s (a fake Slack of its own):
    /// an answer the bot sends there came after the acknowledgement.
    answers: Option<Arc<str>>,
}

/// Commands answered through their `response_url` (after the
/// acknowledgement, which said nothing): number → text. Every such answer
/// of `/baton` is a refusal (a created task's answer is its message).
static LATE_ANSWERS: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);

fn late_answers() -> MutexGuard<'static, Option<HashMap<u64, String>>> {
    LATE_ANSWERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the bot answered command `n` through its `response_url`, if anything.
pub fn late_answer(n: u64) -> Option<String> {
    late_answers().as_ref()?.get(&n).cloned()
}

/// Serves the commands' `response_url`s on a fake Slack of their own, and
/// records what the bot posts there (see [`late_answer`]); the URLs' base.
pub async fn serve_answers() -> String {
    let (answers, url) = baton_testkit::fake_slack().await;
    answers.tap(|call| {
        if call.method != baton_testkit::slack::RESPONSE_URL {
            return;
        }
        let Some(n) = call.ts.and_then(|k| k.parse().ok()) else {
            return;
        };
        let text = call.body["text"].as_str().unwrap_or("").to_owned();
        late_answers()
            .get_or_insert_with(HashMap::new)
            .insert(n, text);
    });
    url
}

impl Client {
    /// A client with `TCP_NODELAY`, as any latency-minded HTTP client sets.
    pub fn new() -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Hyper::builder(TokioExecutor::new())
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .build(connector);
        Client {
            inner,
            answers: None,
        }
    }

    /// The same client, giving each command a `response_url` under `base`
    /// (what [`serve_answers`] returned).
    pub fn answering_to(self, base: &str) -> Client {
        Client {
            answers: Some(base.into()),
            ..self
        }
    }

    /// GETs `path`; the status, or None when the bot does not answer.
    pub async fn get_status(&self, addr: SocketAddr, path: &str) -> Option<u16> {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .ok()?;
        let res = self.inner.request(req).await.ok()?;
        let status = res.status().as_u16();
        let _ = res.into_body().collect().await;
        Some(status)
    }

    /// GETs `path` and returns the body.
    pub async fn get_text(&self, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
        let req =
            http::Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new()))?;
        let res = self.inner.request(req).await.context("GET failed")?;
        let body = res.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends `/baton TEXT` as `user`, signed like Slack signs it. Returns the
    /// status and the body (empty when the task was created).
    pub async fn slash(
        &self,
        addr: SocketAddr,
        text: &str,
        user: &str,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.command(addr, "/baton", text, user).await
    }

    /// Sends slash command `command` (`/baton`, `/baton-admin`) with `text`
    /// as `user`, signed; the status and the body.
    pub async fn command(
        &self,
        addr: SocketAddr,
        command: &str,
        text: &str,
        user: &str,
    ) -> anyhow::Result<(u16, Bytes)> {
        let mut form = baton_testkit::slash(command, text, user);
        let response_url = self.answers.as_ref().map(|base| {
            let key = crate::agent::command_number(text).unwrap_or(0);
            baton_testkit::slack::response_url_of(base, &key.to_string())
        });
        if let Some(url) = &response_url {
            for (k, v) in form.iter_mut() {
                if *k == "response_url" {
                    *v = url;
                }
            }
        }
        let body = serde_urlencoded::to_string(&form)?;
        let headers = baton_testkit::signed_headers(
            baton_testkit::SIGNING_SECRET,
            "application/x-www-form-urlencoded",
            &body,
        );
        let mut req = http::Request::post(format!("http://{addr}/slack/commands"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let res = self
            .inner
            .request(req.body(Full::new(Bytes::from(body)))?)
            .await
            .context("slash command failed")?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
