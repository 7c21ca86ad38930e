//! `baton-local-slack`: a local Slack stand-in with a web UI, to try Baton
//! without a Slack workspace (see `testkit::local_slack` and
//! `scripts/try-locally`).
//!
//! ```text
//! baton-local-slack --config workspace.json [--port N]   # N = 0: a free port
//! baton-local-slack --free-port                         # prints a free port and exits
//! ```

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use baton_testkit::local_slack::{self, Config};

/// The port served when `--port` is not given.
const DEFAULT_PORT: u16 = 3000;

const USAGE: &str = "usage: baton-local-slack --config PATH [--port N]  (N = 0: any free port)\n       baton-local-slack --free-port";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config: Option<PathBuf> = None;
    let mut port = DEFAULT_PORT;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--port" => {
                let n = args.next().unwrap_or_default();
                port = n
                    .parse()
                    .with_context(|| format!("--port {n:?} is not a port number\n{USAGE}"))?;
            }
            "--free-port" => {
                let l = std::net::TcpListener::bind("127.0.0.1:0")
                    .context("Cannot find a free port")?;
                println!("{}", l.local_addr()?.port());
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let Some(config) = config else {
        bail!("--config PATH is required\n{USAGE}");
    };
    let config = Config::load(&config)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("Cannot listen on 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    println!(
        "baton-local-slack: http://{addr}/ (Web API: http://{addr}/api, bot token {}, bot at {})",
        baton_testkit::slack::BOT_TOKEN,
        config.request_url
    );
    std::io::stdout().flush()?;
    local_slack::run(config, listener, shutdown()).await
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
