//! Baton's bot: receives Slack commands, mentions and clicks, records each task,
//! dispatches it over WebSocket to an agent serving its project, and shows it in
//! one Slack message edited in place.
//!
//! # Layout
//!
//! - [`settings`]: every setting, from the environment and `.env`.
//! - [`store`]: the database (sea-orm), the single source of truth.
//! - [`app`]: the core, one module per concern, each an `impl App` block:
//!   `app/create` (new tasks: project, access check, queue bound, rate limit),
//!   `app/dispatch` (handing queued tasks out; the dispatcher loop),
//!   `app/events` (applying agents' events; reconciling a hello),
//!   `app/control` (cancel, retry, what people and admins do to tasks),
//!   `app/recovery` (the sweeps; rebuilding memory after a restart),
//!   `app/approvals` (agents' approval requests: shown, answered, timed out).
//! - [`model`]: the domain types the modules share (task states, a task's retry).
//! - [`hub`]: connected agents, routing, their circuit breakers ([`breaker`]).
//! - [`agents`]: the agents' WebSocket endpoint.
//! - [`slack`]: Web API, rendering (task messages and one-line task summaries),
//!   the consolidator, handlers, signature checks, Socket Mode.
//! - [`commands`]: the `/baton` and `/baton-admin` languages; [`admin`] runs the latter
//!   (from plain values: it does not depend on the Slack handlers).
//! - [`http`]: the axum router.
//! - [`metrics`]: the histogram behind `/metrics`' latencies.
//! - [`replies`]: every refusal and error text a person sees.
//! - [`notify`]: tells a task's requester that it ended (`BATON_NOTIFY`).
//! - [`access`]: who may start, see, cancel and retry which tasks.
//! - [`home`]: the app's Home tab.
//! - [`selfcheck`]: the bot token check at start, and what `/readyz` reports.
//! - [`sync`]: the mutex helper every module shares.
//!
//! Dependencies point one way: Slack's requests come in through [`http`] and
//! [`slack`] (handlers, Socket Mode) and go to [`commands`] and [`admin`];
//! agents' frames come in through [`agents`]. Both reach [`app`], which sends
//! to agents through [`hub`] and writes through [`store`]; [`app`] shows tasks
//! through `slack::consolidator` and `slack::render`, which read only
//! [`store`]'s rows and [`model`]'s types.

pub mod access;
pub mod admin;
pub mod agents;
pub mod app;
pub mod breaker;
pub mod clock;
pub mod commands;
pub mod home;
pub mod http;
pub mod hub;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod personas;
pub mod replies;
pub mod selfcheck;
pub mod settings;
pub mod slack;
pub mod store;
pub mod sync;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::app::App;
use crate::clock::WallClock;
use crate::settings::Settings;
use crate::slack::api::SlackApi;
use crate::store::Store;

/// How long shutdown waits for the last Slack updates.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);
/// How often SQLite's write-ahead log is copied into the database file, in
/// the background (see [`Store::checkpoint`]).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Checkpoints the database every [`CHECKPOINT_INTERVAL`] until `shutdown`.
async fn run_checkpoints(store: Store, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                if let Err(err) = store.checkpoint().await {
                    tracing::warn!(error = ?err, "background checkpoint failed");
                }
            }
        }
    }
}

/// Who the keys of `BATON_AGENT_KEYS` are recorded as created by.
const BOOTSTRAP: &str = "BATON_AGENT_KEYS";

/// Writes the keys of `BATON_AGENT_KEYS` (as hashes). A key an admin revoked
/// stays revoked, and a key an admin made with `agent add` is never replaced;
/// a key that came from `BATON_AGENT_KEYS` follows it (rotation by restart).
async fn bootstrap_keys(store: &Store, settings: &Settings) -> anyhow::Result<()> {
    let keys =
        keys::parse_bootstrap(settings.agent_keys.expose_secret()).map_err(anyhow::Error::msg)?;
    let existing = store.agents().await?;
    for entry in keys {
        let name = &entry.name;
        let hash = keys::hash(&entry.key);
        let grant = entry.grant();
        match existing.iter().find(|a| a.name == name.as_str()) {
            Some(a) if a.revoked_at.is_some() => {
                tracing::warn!(agent = %name, "BATON_AGENT_KEYS names an agent an admin revoked; it stays revoked");
            }
            Some(a) if a.created_by.as_deref() != Some(BOOTSTRAP) => {
                if a.key_hash != hash {
                    tracing::warn!(agent = %name, "BATON_AGENT_KEYS names an agent an admin created; its key is kept");
                }
            }
            Some(a) if a.key_hash == hash => {
                // The same key: its projects follow the setting.
                if a.projects != grant {
                    store
                        .set_agent_projects(name.as_str(), grant.as_deref())
                        .await?;
                }
            }
            _ => {
                store
                    .put_agent(name.as_str(), &hash, BOOTSTRAP, true)
                    .await?;
                store
                    .set_agent_projects(name.as_str(), grant.as_deref())
                    .await?;
            }
        }
    }
    Ok(())
}

/// While Slack cannot be asked about the bot token, the bot is not ready; it
/// asks again every [`selfcheck::AUTH_RETRY`]. A refused token leaves it not
/// ready with the reason: it serves (`/healthz`, the agents, the work it
/// holds) but says plainly that it cannot reach Slack as itself.
async fn check_token_until_known(app: Arc<App>, mut check: selfcheck::TokenCheck) {
    loop {
        match check {
            selfcheck::TokenCheck::Valid(auth) => {
                app.readiness.ready(selfcheck::Part::Slack);
                selfcheck::report_scopes(&app.settings, &auth);
                return;
            }
            selfcheck::TokenCheck::Refused(why) => {
                tracing::error!("{why}");
                app.readiness.not_ready(selfcheck::Part::Slack, why);
                return;
            }
            selfcheck::TokenCheck::Unknown(why) => {
                tracing::warn!("{why}; asking again in {:?}", selfcheck::AUTH_RETRY);
                app.readiness.not_ready(selfcheck::Part::Slack, why);
            }
        }
        tokio::time::sleep(selfcheck::AUTH_RETRY).await;
        check = selfcheck::check_token(&app.slack).await;
    }
}

/// Runs the bot on `listener` until `shutdown` resolves, then shuts down
/// gracefully: stop taking work, close agent sockets with "going away",
/// flush the last Slack updates.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    clock: Arc<dyn WallClock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let verifier = match &settings.slack_signing_secret {
        Some(s) if !s.expose_secret().is_empty() => {
            Some(slack::verify::Verifier::new(s.expose_secret()))
        }
        _ if settings.socket_mode_token().is_some() => None,
        _ => anyhow::bail!(
            "SLACK_SIGNING_SECRET is required for HTTP mode (or set SLACK_APP_TOKEN for Socket Mode)"
        ),
    };
    if let Some(token) = settings.socket_mode_token() {
        slack::socket_mode::check_app_token(token)?;
    }
    if let Some(warning) = http::metrics_exposure_warning(&settings) {
        tracing::warn!("SECURITY: {warning}");
        eprintln!("baton-bot: WARNING: {warning}");
    }
    // Held until `run` returns: a second process on this SQLite file is refused.
    let _sqlite_lock = store::file_lock::lock_sqlite(&settings.database_url)?;
    let store = Store::connect(&settings.database_url).await?;
    // This process alone writes the SQLite file it holds the lock of: what a
    // new task's access check reads of its project can be kept in memory.
    let store = match &_sqlite_lock {
        Some(_) => store.caching_project_rules(),
        None => store,
    };
    bootstrap_keys(&store, &settings)
        .await
        .context("Cannot store BATON_AGENT_KEYS")?;
    let slack = SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)?;
    let token = selfcheck::check_token(&slack).await;
    let checkpoint_store = store.clone();
    let (notify_store, notify_slack) = (store.clone(), slack.clone());
    let app = Arc::new(App::new(settings, store, slack, clock));
    // Not ready before anything is served when the token is not known good.
    match token {
        selfcheck::TokenCheck::Valid(auth) => selfcheck::report_scopes(&app.settings, &auth),
        selfcheck::TokenCheck::Refused(why) => {
            tracing::error!("{why}");
            app.readiness.not_ready(selfcheck::Part::Slack, why);
        }
        selfcheck::TokenCheck::Unknown(why) => {
            app.readiness.not_ready(selfcheck::Part::Slack, why.clone());
            tokio::spawn(check_token_until_known(
                app.clone(),
                selfcheck::TokenCheck::Unknown(why),
            ));
        }
    }
    app.register_instance()
        .await
        .context("Cannot register this process in the database")?;
    app.recover()
        .await
        .context("Cannot recover tasks from the database")?;
    slack::intake::replay_unhandled(&app)
        .await
        .context("Cannot read the Slack events left unhandled")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let consolidator = tokio::spawn(
        app.consolidator
            .clone()
            .run(stopped(stop_rx.clone()), SHUTDOWN_FLUSH),
    );
    let dispatcher = tokio::spawn(app.clone().run_dispatcher(stopped(stop_rx.clone())));
    let lease = tokio::spawn(app.clone().run_lease(stopped(stop_rx.clone())));
    let handover = tokio::spawn(app.clone().run_handover(stopped(stop_rx.clone())));
    let checkpointer = tokio::spawn(run_checkpoints(checkpoint_store, stopped(stop_rx.clone())));
    let notifier = tokio::spawn(notify::run(
        notify_store,
        notify_slack,
        app.settings.notify,
        stopped(stop_rx.clone()),
    ));

    let socket_mode = match app.settings.socket_mode_token() {
        Some(token) => Some(slack::socket_mode::SocketMode::start(app.clone(), token).await?),
        None => None,
    };

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, instance = app.instance_id(), "baton-bot listening");
    let router = http::router(app.clone(), verifier);
    let shutdown_app = app.clone();
    // Without TCP_NODELAY a task frame written while the agent has not yet
    // acknowledged the previous one (an ack, a ping) waits for its delayed
    // ACK: up to 40 ms per dispatch on Linux (measured by baton-bench).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(error = %err, "cannot set TCP_NODELAY on a connection");
        }
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new work, closing agent connections");
        shutdown_app.shutting_down.store(true, Ordering::SeqCst);
        if let Some(socket_mode) = socket_mode {
            socket_mode.shutdown().await;
        }
        shutdown_app.hub.close_all(1001, "bot shutting down");
    });
    server.await.context("HTTP server failed")?;
    let _ = stop_tx.send(true);
    let _ = dispatcher.await;
    let _ = lease.await;
    let _ = handover.await;
    let _ = consolidator.await;
    // The last message ts and synced marks, kept for a moment, are written.
    app.store.flush_marks().await;
    let _ = checkpointer.await;
    let _ = notifier.await;
    tracing::info!("bye");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, finding 8: as docs/operations.md says, `BATON_AGENT_KEYS`
    /// never replaces a key an admin made; it rotates its own keys.
    #[tokio::test]
    async fn bootstrap_keys_keep_admin_made_keys_and_rotate_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("k.db").display());
        let store = Store::connect(&url).await.expect("store");
        let admin_key = keys::generate();
        store
            .put_agent("laptop", &keys::hash(&admin_key), "UADMIN", false)
            .await
            .expect("agent add");
        let mut settings = Settings::for_tests("http://127.0.0.1:9", &url, "secret");
        settings.agent_keys = "laptop:bootstrap-key-0123456789,ci:ci-key-0123456789abcd"
            .to_owned()
            .into();
        bootstrap_keys(&store, &settings).await.expect("bootstrap");
        let hash_of = |name: &str, agents: &[store::AgentRow]| {
            agents
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.key_hash.clone())
        };
        let agents = store.agents().await.expect("agents");
        assert_eq!(hash_of("laptop", &agents), Some(keys::hash(&admin_key)));
        assert_eq!(
            hash_of("ci", &agents),
            Some(keys::hash("ci-key-0123456789abcd"))
        );

        settings.agent_keys = "ci:ci-rotated-0123456789ab".to_owned().into();
        bootstrap_keys(&store, &settings).await.expect("bootstrap");
        let agents = store.agents().await.expect("agents");
        assert_eq!(
            hash_of("ci", &agents),
            Some(keys::hash("ci-rotated-0123456789ab"))
        );
        assert_eq!(hash_of("laptop", &agents), Some(keys::hash(&admin_key)));
    }
}
