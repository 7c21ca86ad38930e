//! `baton-agent --config agent.toml`: runs tasks for the bot until SIGTERM or Ctrl-C.

use anyhow::Context;
use baton_agent::config::{Cli, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_format.eq_ignore_ascii_case("json") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = Config::load(&cli)?;
    if cli.check {
        return check(&cfg);
    }
    let agent = baton_agent::Agent::new(cfg).context("Cannot open the state directory")?;
    let on_second = agent.clone();
    agent
        .run(shutdown_signal(move || on_second.kill_tasks_now()))
        .await
}

/// Validates the executors without connecting.
fn check(cfg: &Config) -> anyhow::Result<()> {
    use baton_agent::config::ExecutorKind;
    for p in &cfg.projects {
        match p.executor {
            ExecutorKind::Claude => {
                let out = std::process::Command::new(&cfg.claude_bin)
                    .arg("--version")
                    .output()
                    .with_context(|| {
                        format!(
                            "project `{}`: cannot run the Claude CLI `{}`",
                            p.name, cfg.claude_bin
                        )
                    })?;
                anyhow::ensure!(
                    out.status.success(),
                    "project `{}`: `{} --version` failed",
                    p.name,
                    cfg.claude_bin
                );
                println!(
                    "project {}: claude {} in {}",
                    p.name,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    p.path.display()
                );
            }
            ExecutorKind::Command => println!(
                "project {}: command {:?} in {}",
                p.name,
                p.command,
                p.path.display()
            ),
        }
    }
    println!(
        "config OK: {} project(s), capacity {}, server {}",
        cfg.projects.len(),
        cfg.capacity,
        cfg.server
    );
    Ok(())
}

/// Resolves at the first SIGTERM or Ctrl-C; a second one runs `last_words`
/// and exits at once.
async fn shutdown_signal(last_words: impl FnOnce() + Send + 'static) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // A second signal exits at once.
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("second signal: stopping the tasks and exiting now");
        last_words();
        std::process::exit(130);
    });
}
