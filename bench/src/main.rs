//! `baton-bench`: measures a real `baton-bot` against DESIGN's performance
//! table. It starts the release bot binary on a SQLite file in a temp dir,
//! with a fake Slack Web API on loopback, drives it with signed slash
//! commands and simulated agents speaking the real wire protocol over real
//! WebSockets, prints a table and writes the figures as JSON (`--json`) and
//! the growth curves as an SVG chart (`--svg`). With `--postgres URL` it also
//! runs two (and one and three) bot processes on a fresh PostgreSQL database
//! of that server.
//!
//! # Layout
//!
//! - [`bot`]: the bot process, its database (pre-filled with keys and old tasks).
//! - [`agent`]: simulated agents and the [`agent::Probe`] that times tasks.
//! - [`client`]: signed slash commands and GETs over kept-alive HTTP.
//! - [`slack_log`]: what the fake Slack saw, compactly.
//! - [`figures`]: the measurements; [`postgres`]: those on PostgreSQL.
//! - [`report`]: the JSON, the targets, the table; [`chart`]: the SVG.

mod agent;
mod bot;
mod chart;
mod client;
mod figures;
mod postgres;
mod report;
mod slack_log;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::figures::{Ctx, Plan};
use crate::report::Report;

/// File descriptors the benchmark wants: 10,000 agent sockets here and in the bot, and spare.
const WANTED_FDS: u64 = 20_000;

/// The measurements, by the name `--only` takes.
/// `lifecycles` is also part of `base`; alone, it runs on a bot of its own.
/// `pg` needs `--postgres URL`.
const MEASUREMENTS: &[&str] = &["base", "lifecycles", "agents", "rows", "dead-agent", "pg"];

#[derive(Debug, Parser)]
#[command(
    name = "baton-bench",
    about = "Measures baton-bot against DESIGN's performance targets: a real bot process, a fake Slack, simulated agents."
)]
struct Args {
    /// Every measurement in a few seconds (for CI: keeps the program working; not figures).
    #[arg(long)]
    quick: bool,
    /// Write the figures, the curves and each figure's workload as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the growth curves as an SVG chart here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// The baton-bot binary to measure [default: baton-bot next to this program].
    #[arg(long)]
    bot_bin: Option<PathBuf>,
    /// Only these measurements (comma-separated): base, lifecycles, agents,
    /// rows, dead-agent, pg. `lifecycles` alone (without base) runs only the
    /// lifecycle runs, on a bot of its own: for comparing CPU per lifecycle.
    /// `pg` needs --postgres.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Progress events per task of the lifecycle runs (comma-separated)
    /// [default: 1,10,100]; the headline figures come from the run with 10.
    #[arg(long, value_delimiter = ',')]
    events: Vec<u32>,
    /// RUST_LOG of the bot (production runs at info).
    #[arg(long, default_value = "info")]
    bot_log: String,
    /// Keep the bots' databases and logs in this directory instead of a temp dir.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// A PostgreSQL server (postgres://user@host:port/db, a role that may
    /// create databases): measures two bot processes (and one and three) on a
    /// database created in it for the run and dropped after.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draws the SVG chart from a JSON report written earlier.
    Chart {
        /// The report.
        #[arg(long)]
        json: PathBuf,
        /// Where the chart goes.
        #[arg(long)]
        svg: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Chart { json, svg }) = &args.command {
        let text = std::fs::read_to_string(json)
            .with_context(|| format!("Cannot read {}", json.display()))?;
        let report: Report = serde_json::from_str(&text).context("Cannot parse the report")?;
        return write(svg, &chart::svg(&report));
    }
    for m in &args.only {
        if !MEASUREMENTS.contains(&m.as_str()) {
            bail!(
                "unknown measurement `{m}`; choose from {}",
                MEASUREMENTS.join(", ")
            );
        }
    }
    let only_pg = args.only.iter().any(|o| o == "pg");
    if only_pg && args.postgres.is_none() {
        bail!("`--only pg` needs --postgres URL (a PostgreSQL server to create a database in)");
    }
    if args.postgres.is_some() && !args.only.is_empty() && !only_pg {
        bail!("--postgres is given but --only leaves out `pg`; add it to --only");
    }
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// Lifts the soft limit on open files to the hard one; the bot inherits it.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let want = hard.min(WANTED_FDS.max(soft));
            if want > soft
                && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard)
            {
                eprintln!("warning: cannot raise the open-file limit: {e}");
            }
            if want < WANTED_FDS {
                eprintln!(
                    "warning: open-file limit {want} (hard {hard}); 10,000 agents need about {WANTED_FDS}: raise it with `ulimit -Hn`"
                );
            }
        }
        Err(e) => eprintln!("warning: cannot read the open-file limit: {e}"),
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("Cannot write {}", path.display()))
}

/// The bot binary: `--bot-bin`, or `baton-bot` beside this program.
fn bot_binary(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match arg {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("this program has no directory")?
            .join("baton-bot"),
    };
    if !bin.is_file() {
        bail!(
            "no bot binary at {}: build it with `cargo build --release -p baton-bot -p baton-bench`, or pass --bot-bin",
            bin.display()
        );
    }
    // The bot runs in its database's directory: a relative path would not be found there.
    Ok(std::path::absolute(&bin)?)
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let bin = bot_binary(args.bot_bin)?;
    let temp = tempfile::Builder::new().prefix("baton-bench-").tempdir()?;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => temp.path().to_owned(),
    };
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if !args.events.is_empty() {
        plan.events = args.events.clone();
    }
    let ctx = Ctx {
        bin: bin.clone(),
        root,
        client: client::Client::new().answering_to(&client::serve_answers().await),
        plan,
        bot_log: args.bot_log.clone(),
    };
    let wants = |m: &str| args.only.is_empty() || args.only.iter().any(|o| o == m);
    let mut report = Report::default();
    report.environment = report::Environment {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        quick: args.quick,
        bot_bin: bin.display().to_string(),
        bot_log: args.bot_log.clone(),
        load_avg_start: load_avg(),
        ..Default::default()
    };
    println!(
        "baton-bench{}: bot {}, {} cores, load average {:.2}",
        if args.quick { " --quick" } else { "" },
        bin.display(),
        report.environment.cores,
        report.environment.load_avg_start
    );

    // The dead-agent run mostly waits for heartbeats: it runs beside the others.
    let dead = if wants("dead-agent") {
        let ctx = Ctx {
            bin: ctx.bin.clone(),
            root: ctx.root.clone(),
            client: ctx.client.clone(),
            plan: ctx.plan.clone(),
            bot_log: ctx.bot_log.clone(),
        };
        println!("· frozen-agent detection (runs beside the others)");
        Some(tokio::spawn(async move {
            let mut r = Report::default();
            ctx.dead_agent(&mut r).await.map(|_| r)
        }))
    } else {
        None
    };
    if wants("base") {
        ctx.base(&mut report).await.context("base measurements")?;
    } else if args.only.iter().any(|o| o == "lifecycles") {
        ctx.lifecycles_only(&mut report)
            .await
            .context("lifecycles")?;
    }
    if wants("agents") {
        ctx.agents_memory(&mut report)
            .await
            .context("memory vs agents")?;
        ctx.agents_latency(&mut report)
            .await
            .context("latency vs agents")?;
    }
    if wants("rows") {
        ctx.task_rows(&mut report)
            .await
            .context("latency vs task rows")?;
    }
    if let Some(dead) = dead {
        let r = dead.await?.context("frozen-agent detection")?;
        report.dead_agent_detect_s = r.dead_agent_detect_s;
        report.extra.extend(r.extra);
        report.workloads.extend(r.workloads);
    }
    match &args.postgres {
        Some(server) if wants("pg") => {
            ctx.postgres(server, &mut report)
                .await
                .context("PostgreSQL measurements")?;
        }
        _ => {
            for key in report::PG_KEYS {
                report
                    .workloads
                    .insert(key.into(), report::PG_SKIPPED.into());
            }
        }
    }
    report.environment.load_avg_end = load_avg();
    report.environment.run_secs = stats::round(started.elapsed().as_secs_f64(), 1);

    println!("\n{}", report.table());
    if args.quick {
        println!("(--quick: a smoke run; these numbers are not the figures)");
    }
    if let Some(path) = &args.json {
        write(path, &serde_json::to_string_pretty(&report)?)?;
        println!("figures written to {}", path.display());
    }
    if let Some(path) = &args.svg {
        write(path, &chart::svg(&report))?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}
