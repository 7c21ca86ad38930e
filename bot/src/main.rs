//! `baton-bot`: reads its settings and runs until SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context;
use baton_bot::clock::SystemWallClock;
use baton_bot::settings::Settings;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is fine; a broken one is not silently ignored.
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        return Err(err).context("Cannot read .env");
    }
    let settings = Settings::parse();
    init_tracing(&settings.log_format);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("Cannot listen on {}", settings.listen))?;
    baton_bot::run(
        settings,
        listener,
        Arc::new(SystemWallClock),
        shutdown_signal(),
    )
    .await
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: not escape codes in a log file or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format.eq_ignore_ascii_case("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
