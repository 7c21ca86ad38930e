//! `baton-agent --config agent.toml`: runs tasks for the bot until SIGTERM or Ctrl-C;
//! `baton-agent hook` and `baton-agent approve` ask it for approval from inside a task.

use anyhow::Context;
use baton_agent::config::{AgentCommand, Cli, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `approve` answers with its exit code: a usage error must not look like 1 or 2.
        Err(e)
            if std::env::args().nth(1).as_deref() == Some("approve")
                && !matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
        {
            let _ = e.print();
            std::process::exit(baton_agent::ask::EXIT_USAGE);
        }
        Err(e) => e.exit(),
    };
    // What a task runs to ask: nothing on stdout but the answer, no logging.
    match &cli.command {
        Some(AgentCommand::Hook) => std::process::exit(baton_agent::ask::hook_main()),
        Some(AgentCommand::Approve { text }) => {
            std::process::exit(baton_agent::ask::approve_main(text))
        }
        _ => {}
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_format.eq_ignore_ascii_case("json") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        // Colours only on a terminal: not escape codes in a log file or journald.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(AgentCommand::Detect) = cli.command {
        return baton_agent::detect::run().await;
    }
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
    for p in &cfg.projects {
        let Some(cli) = cfg.cli(p.executor) else {
            println!(
                "project {}: command {:?} in {}",
                p.name,
                p.command,
                p.path.display()
            );
            continue;
        };
        let name = p.executor.display_name();
        let out = std::process::Command::new(&cli.bin)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "project `{}`: cannot run the {name} CLI `{}`",
                    p.name, cli.bin
                )
            })?;
        anyhow::ensure!(
            out.status.success(),
            "project `{}`: `{} --version` failed",
            p.name,
            cli.bin
        );
        let asks = p
            .approve
            .as_ref()
            .map(|a| format!(", approval asked for {}", a.matcher()))
            .unwrap_or_default();
        println!(
            "project {}: {} {} in {}{asks}",
            p.name,
            p.executor.as_str(),
            String::from_utf8_lossy(&out.stdout).trim(),
            p.path.display()
        );
    }
    println!(
        "config OK: {} project(s), capacity {}, server {}",
        cfg.projects.len(),
        cfg.capacity,
        cfg.servers.join(", ")
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
