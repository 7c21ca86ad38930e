//! Helpers shared by the `app` modules' unit tests.

use std::sync::Arc;

use baton_shared::protocol::BotMessage;
use baton_shared::{Persona, TaskId};
use futures::StreamExt;

use super::{App, TaskRequest};
use crate::hub::{Outbox, Outgoing, Register};
use crate::settings::Settings;
use crate::slack::api::SlackApi;
use crate::store::Store;

/// An app on a fresh database with project `web` and agent `a`
/// (capacity 1, serving `web`) registered on the returned outbox.
pub(super) async fn app_with_agent(
    dir: &tempfile::TempDir,
) -> (Arc<App>, Store, crate::hub::OutboxReceiver) {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    app_with_agent_on(&url).await
}

/// [`app_with_agent`] on the database at `url`.
pub(super) async fn app_with_agent_on(url: &str) -> (Arc<App>, Store, crate::hub::OutboxReceiver) {
    let mut settings = Settings::for_tests("http://127.0.0.1:9", url, "secret");
    // No Slack here to ask who U1 is: an admin needs no asking.
    settings.admins = vec!["U1".into()];
    let store = Store::connect(url).await.expect("store");
    store.ensure_project("web").await.expect("project");
    let slack =
        SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token).expect("slack client");
    let app = Arc::new(App::new(
        settings,
        store.clone(),
        slack,
        Arc::new(crate::clock::SystemWallClock),
    ));
    let (tx, frames) = Outbox::new();
    let hello = crate::hub::tests::hello(1, &[("web", 1)]);
    assert!(matches!(app.hub.register("a", tx, &hello), Register::Ok(_)));
    app.hub.reconciled("a");
    (app, store, frames)
}

pub(super) fn request(prompt: &str) -> TaskRequest {
    TaskRequest {
        persona: Persona::default(),
        project: None,
        prompt: prompt.into(),
        requester: "U1".into(),
        team_id: "T1".into(),
        channel_id: "C1".into(),
        thread_ts: None,
        parent_id: None,
        session_id: None,
        session_agent: None,
        after_task: None,
        response_url: None,
        files: Vec::new(),
    }
}

/// The submits waiting in `frames` now.
pub(super) fn submits(frames: &mut crate::hub::OutboxReceiver) -> Vec<TaskId> {
    let mut out = Vec::new();
    while let Some(Some(frame)) = futures::FutureExt::now_or_never(frames.next()) {
        if let Outgoing::Frame(BotMessage::Submit(s)) = frame {
            out.push(s.task);
        }
    }
    out
}
