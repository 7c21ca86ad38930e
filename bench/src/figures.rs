//! The measurements. Each starts the bot it needs, drives it with signed
//! slash commands and simulated agents, and records its figures and the
//! workload behind them in the report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::agent::{self, Agent, Probe, Work};
use crate::bot::{BotConfig, BotProcess, Db};
use crate::client::Client;
use crate::report::{AgentsPoint, EventsPoint, RateStep, Report, RowsPoint};
use crate::slack_log::{self, SlackLog};
use crate::stats::{percentile, round};

/// The Slack user every command comes from.
pub(crate) const USER: &str = "UBENCH";
/// Answers timed per listing (`/baton status`, `/baton-admin tasks`) on the rows curve.
const LISTING_SAMPLES: usize = 50;
/// Command rate of the latency figures (DESIGN: "at 200 commands/s").
const LATENCY_RATE: f64 = 200.0;
/// A step of the highest-rate search is sustained only if its p99 stays under this.
const STABLE_P99_MS: f64 = 50.0;
/// Simulated agents taking work in the throughput runs.
pub(crate) const WORKERS: usize = 8;
/// Concurrent slash commands in the lifecycle run (Slack's side of the load).
pub(crate) const COMMANDERS: usize = 32;
/// Lifecycles started and not yet shown final, at most, in the lifecycle run.
pub(crate) const OUTSTANDING_MAX: usize = 8000;
/// Concurrent WebSocket handshakes while connecting many agents.
const CONNECT_PARALLEL: usize = 128;
/// Gap between two progress events in the edit-rate run.
const EDIT_RUN_SPACING: Duration = Duration::from_millis(20);
/// How long the drain run's agent works on each task it accepted.
const DRAIN_TASK_TIME: Duration = Duration::from_secs(2);
/// Longest wait for a run's last task frames and final edits.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Durations and sizes of one run: the full figures or `--quick`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Seconds of the 200 commands/s latency run.
    pub latency_secs: f64,
    /// Offered rates of the highest-rate search.
    pub rates: Vec<f64>,
    /// Seconds per offered rate.
    pub rate_secs: f64,
    /// Progress events per task on the lifecycle curve.
    pub events: Vec<u32>,
    /// Seconds per lifecycle run.
    pub life_secs: f64,
    /// Seconds at the start of a lifecycle run left out of the rate.
    pub life_warmup: f64,
    /// Connected-agent counts on the agents curve.
    pub agent_counts: Vec<usize>,
    /// Task-table sizes on the rows curve.
    pub rows: Vec<u64>,
    /// Seconds of the 200 commands/s sample at each curve point.
    pub curve_secs: f64,
    /// Tasks queued before the drain.
    pub drain_tasks: usize,
    /// Progress events of each task in the edit-rate run.
    pub edit_events: u32,
    /// `BATON_HEARTBEAT_SECS` for the dead-agent run (None: the default).
    pub heartbeat_secs: Option<u64>,
    /// Time allowed for memory to settle before reading it.
    pub settle: Duration,
    /// `NOTIFY` round trips timed by the PostgreSQL mode.
    pub pg_notify_samples: usize,
    /// Seconds of each PostgreSQL dispatch-latency run (at 200/s and 20/s).
    pub pg_latency_secs: f64,
}

impl Plan {
    /// The figures.
    pub fn full() -> Plan {
        Plan {
            latency_secs: 15.0,
            rates: vec![
                500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0,
            ],
            rate_secs: 5.0,
            events: vec![1, 10, 100],
            life_secs: 10.0,
            life_warmup: 2.0,
            agent_counts: vec![10, 100, 1000, 10_000],
            rows: vec![1000, 10_000, 100_000, 1_000_000],
            curve_secs: 4.0,
            drain_tasks: 1000,
            edit_events: 150,
            heartbeat_secs: None,
            settle: Duration::from_secs(2),
            pg_notify_samples: 1000,
            pg_latency_secs: 5.0,
        }
    }

    /// Every measurement, in a few seconds: to keep the program working, not to judge speed.
    pub fn quick() -> Plan {
        Plan {
            latency_secs: 1.0,
            rates: vec![200.0, 400.0],
            rate_secs: 0.5,
            events: vec![1, 10, 100],
            life_secs: 1.6,
            life_warmup: 1.1,
            agent_counts: vec![10, 100, 1000],
            rows: vec![1000, 10_000],
            curve_secs: 0.3,
            drain_tasks: 200,
            edit_events: 30,
            heartbeat_secs: Some(1),
            settle: Duration::from_millis(300),
            pg_notify_samples: 50,
            pg_latency_secs: 0.5,
        }
    }

    /// Agent keys the agents curve needs.
    fn most_agents(&self) -> usize {
        self.agent_counts.iter().copied().max().unwrap_or(0)
    }
}

/// What every measurement shares.
#[derive(Debug)]
pub struct Ctx {
    /// The `baton-bot` binary.
    pub bin: PathBuf,
    /// Where each bot's database and log go.
    pub root: PathBuf,
    /// The HTTP client.
    pub client: Client,
    /// Durations and sizes.
    pub plan: Plan,
    /// `RUST_LOG` for the bot.
    pub bot_log: String,
}

/// The next command number (unique per benchmark process).
static NEXT_COMMAND: AtomicU64 = AtomicU64::new(1);

/// Commands that did not create a task, with the first reason.
#[derive(Debug, Default)]
struct Failures {
    /// How many.
    count: AtomicU64,
    /// The first one, to show.
    first: Mutex<Option<String>>,
}

impl Failures {
    fn note(&self, why: String) {
        self.note_many(1, why);
    }

    fn note_many(&self, n: u64, why: String) {
        if n > 0 && self.count.fetch_add(n, Ordering::Relaxed) == 0 {
            *self.first.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        }
    }

    fn first(&self) -> String {
        self.first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

/// Sends one `/baton` command; it counts as failed unless the task was created.
async fn send_one(client: &Client, addr: SocketAddr, probe: &Probe, failures: &Failures) {
    let n = NEXT_COMMAND.fetch_add(1, Ordering::Relaxed);
    probe.sending(n);
    match client.slash(addr, &agent::prompt(n), USER).await {
        Ok((200, body)) if body.is_empty() => {}
        Ok((status, body)) => {
            failures.note(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
        }
        Err(e) => failures.note(format!("{e:#}")),
    }
}

/// Commands sent by one load pattern: the window they were sent in.
#[derive(Debug)]
struct Sent {
    /// First command.
    from: Instant,
    /// After the last command was answered.
    to: Instant,
    /// How many.
    count: u64,
    /// The ones that did not create a task.
    failures: Arc<Failures>,
}

/// Sends commands at `rate` per second for `secs`, open loop: each on
/// schedule, whether or not the earlier ones were answered.
async fn paced(ctx: &Ctx, addr: SocketAddr, probe: &Arc<Probe>, rate: f64, secs: f64) -> Sent {
    let failures = Arc::new(Failures::default());
    let total = (rate * secs).round() as u64;
    let from = Instant::now();
    let mut pending = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = from + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (client, probe, failures) = (ctx.client.clone(), probe.clone(), failures.clone());
        pending.push(tokio::spawn(async move {
            send_one(&client, addr, &probe, &failures).await;
        }));
    }
    for p in pending {
        let _ = p.await;
    }
    // After the last answer: every command of this pattern was sent before it
    // (each notes its own send time when its task first runs).
    let to = Instant::now();
    Sent {
        from,
        to,
        count: total,
        failures,
    }
}

/// Waits until `cond` holds, checking every 10 ms.
async fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Waits until the bot's metrics say `n` agents are connected.
pub(crate) async fn wait_connected(
    client: &Client,
    addr: SocketAddr,
    n: usize,
) -> anyhow::Result<()> {
    let want = format!("baton_agents_connected {n}\n");
    let deadline = Instant::now() + QUIESCE_TIMEOUT;
    loop {
        if client.get_text(addr, "/metrics").await?.contains(&want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the bot never reported {n} connected agents");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A counter of the bot's `/metrics` (None when the bot does not report it).
async fn metric(client: &Client, addr: SocketAddr, name: &str) -> Option<f64> {
    let text = client.get_text(addr, "/metrics").await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until every command sent reached an agent and every task's final
/// state reached the Slack whose calls `log` holds.
async fn quiesce(log: &Mutex<SlackLog>, probe: &Probe, sent: u64) -> anyhow::Result<()> {
    // A command refused after its acknowledgement makes no task.
    wait_until("every task frame", QUIESCE_TIMEOUT, || {
        (probe.received_count() + probe.refused_count()) as u64 >= sent
    })
    .await?;
    let tasks = probe.tasks();
    wait_until("every final edit", QUIESCE_TIMEOUT, || {
        let log = slack_log::lock(log);
        tasks.iter().all(|t| log.final_at.contains_key(t))
    })
    .await
}

/// p50 and p99 of `samples`, rounded to µs.
pub(crate) fn p50_p99(samples: &[f64]) -> (f64, f64) {
    let p = |q| round(percentile(samples, q).unwrap_or(f64::NAN), 3);
    (p(50.0), p(99.0))
}

/// Task end (agent sent its final event) → final state shown in Slack, ms.
pub(crate) fn final_lags(log: &Mutex<SlackLog>, probe: &Probe, tasks: &[i64]) -> Vec<f64> {
    let ended = probe.ended();
    let log = slack_log::lock(log);
    tasks
        .iter()
        .filter_map(|t| {
            let end = ended.get(t)?;
            let shown = log.final_at.get(t)?;
            Some(shown.saturating_duration_since(*end).as_secs_f64() * 1e3)
        })
        .collect()
}

/// Slash command sent → the task's message posted to Slack, ms.
pub(crate) fn post_lags(log: &Mutex<SlackLog>, probe: &Probe, tasks: &[i64]) -> Vec<f64> {
    let sent = probe.sent_at(tasks);
    let log = slack_log::lock(log);
    tasks
        .iter()
        .filter_map(|t| {
            let posted = log.posted_at.get(t)?;
            Some(
                posted
                    .saturating_duration_since(*sent.get(t)?)
                    .as_secs_f64()
                    * 1e3,
            )
        })
        .collect()
}

impl Ctx {
    pub(crate) fn bot_config(&self, heartbeat_secs: Option<u64>) -> BotConfig {
        BotConfig {
            heartbeat_secs,
            log: self.bot_log.clone(),
        }
    }

    /// A fresh directory for one bot's database.
    pub(crate) fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("Cannot create {}", d.display()))?;
        Ok(d)
    }

    /// Sends `secs` of commands at 200/s to the bot at `addr` after a short
    /// warm-up; returns the dispatch latencies and the tasks sent in the
    /// measured window. `log` is what the bots' Slack saw.
    pub(crate) async fn latency_sample(
        &self,
        addr: SocketAddr,
        log: &Mutex<SlackLog>,
        probe: &Arc<Probe>,
        secs: f64,
    ) -> anyhow::Result<(Vec<f64>, Vec<i64>)> {
        self.latency_sample_at(addr, log, probe, LATENCY_RATE, secs)
            .await
    }

    /// [`Ctx::latency_sample`] at `rate` commands per second.
    pub(crate) async fn latency_sample_at(
        &self,
        addr: SocketAddr,
        log: &Mutex<SlackLog>,
        probe: &Arc<Probe>,
        rate: f64,
        secs: f64,
    ) -> anyhow::Result<(Vec<f64>, Vec<i64>)> {
        let warm = paced(self, addr, probe, rate, 0.25).await;
        let run = paced(self, addr, probe, rate, secs).await;
        let failed = warm.failures.count.load(Ordering::Relaxed)
            + run.failures.count.load(Ordering::Relaxed);
        if failed > 0 {
            bail!(
                "{failed} commands failed; first: {}{}",
                warm.failures.first(),
                run.failures.first()
            );
        }
        quiesce(log, probe, warm.count + run.count).await?;
        Ok((
            probe.dispatch_ms(run.from, run.to),
            probe.tasks_sent_between(run.from, run.to),
        ))
    }

    /// Idle memory, dispatch latency at 200/s, the edit rate of one message,
    /// the highest sustained rate, lifecycles/s and the queue drain, on one bot.
    pub async fn base(&self, report: &mut Report) -> anyhow::Result<()> {
        let plan = &self.plan;
        let db = Db::prepare(&self.dir("base")?, 64).await?;
        let bot = BotProcess::start(&self.bin, &db, &self.bot_config(None), &self.client).await?;
        let addr = bot.addr;

        // Idle memory: started, migrated, nothing connected.
        let rss = bot.settled_rss_kib(plan.settle).await?;
        report.bot_idle_rss_mib = Some(round(rss as f64 / 1024.0, 2));
        report.workloads.insert("bot_idle_rss_mib".into(), format!(
            "VmRSS of the release baton-bot process after start-up (migrations on a new SQLite file), no agent connected, no request served, lowest of 3 readings over {:?}",
            plan.settle));

        // Dispatch latency at 200 commands/s.
        println!(
            "· dispatch latency at 200 commands/s for {} s",
            plan.latency_secs
        );
        let probe = Probe::new();
        let agents = agent::connect_many(
            addr,
            0..4,
            64,
            Work {
                events: 10,
                spacing: None,
            },
            &probe,
            4,
        )
        .await?;
        let cpu0 = bot.cpu_secs()?;
        let (lat, tasks) = self
            .latency_sample(bot.addr, &bot.log, &probe, plan.latency_secs)
            .await?;
        report.extra.insert(
            "bot_cpu_share_at_200_per_s".into(),
            round((bot.cpu_secs()? - cpu0) / (plan.latency_secs + 0.25), 3),
        );
        let (p50, p99) = p50_p99(&lat);
        report.dispatch_p50_ms = Some(p50);
        report.dispatch_p99_ms = Some(p99);
        let posted = post_lags(&bot.log, &probe, &tasks);
        report.slash_to_message_p50_ms = percentile(&posted, 50.0).map(|v| round(v, 3));
        report.extra.insert(
            "slash_to_message_p99_ms".into(),
            round(percentile(&posted, 99.0).unwrap_or(f64::NAN), 3),
        );
        report.workloads.insert("slash_to_message_p50_ms".into(), format!(
            "the {} tasks of the 200 commands/s run: the signed /baton request being written → the fake Slack receiving the chat.postMessage that creates the task's message",
            posted.len()));
        let lags = final_lags(&bot.log, &probe, &tasks);
        report.final_edit_lag_ms = percentile(&lags, 99.0).map(|v| round(v, 1));
        report.extra.insert(
            "final_edit_lag_p50_ms".into(),
            round(percentile(&lags, 50.0).unwrap_or(f64::NAN), 1),
        );
        let w = format!(
            "{} signed /baton commands over kept-alive HTTP at 200/s (open loop), 4 simulated agents (capacity 64) that accept each task, send 10 progress events and complete it; {} samples; from the request being written to the submit frame read by the agent",
            tasks.len(),
            lat.len()
        );
        report.workloads.insert("dispatch_p50_ms".into(), w.clone());
        report.workloads.insert("dispatch_p99_ms".into(), w);
        report.workloads.insert("final_edit_lag_ms".into(), format!(
            "p99 over the {} tasks of the 200 commands/s run: the agent sends `completed` → the fake Slack receives the edit that shows it (the bot edits one message at most once per second, so a task that ends right after its previous edit waits up to 1 s)",
            lags.len()));
        drop(agents);
        wait_connected(&self.client, addr, 0).await?;

        // One message's edit rate: a task with many steps, spaced.
        println!(
            "· edit rate of one task message ({} steps, {:?} apart)",
            plan.edit_events, EDIT_RUN_SPACING
        );
        let probe = Probe::new();
        let work = Work {
            events: plan.edit_events,
            spacing: Some(EDIT_RUN_SPACING),
        };
        let agents = agent::connect_many(addr, 4..5, 4, work, &probe, 1).await?;
        let run = paced(self, addr, &probe, 50.0, 3.0 / 50.0).await;
        quiesce(&bot.log, &probe, run.count).await?;
        let tasks = probe.tasks_sent_between(run.from, run.to);
        let (min_interval, edits) = slack_log::lock(&bot.log).write_intervals(&tasks);
        let min_interval = min_interval.context("no task message was edited")?;
        report.edits_per_task_message_per_s = Some(round(1.0 / min_interval, 3));
        report
            .extra
            .insert("min_edit_interval_ms".into(), round(min_interval * 1e3, 1));
        report.extra.insert(
            "edits_per_task_message".into(),
            edits.values().copied().max().unwrap_or(0) as f64,
        );
        let lags = final_lags(&bot.log, &probe, &tasks);
        report.extra.insert(
            "final_edit_lag_max_spaced_ms".into(),
            round(lags.iter().copied().fold(0.0, f64::max), 1),
        );
        report.workloads.insert("edits_per_task_message_per_s".into(), format!(
            "{} tasks run at once, each {} progress events {:?} apart ({:.1} s) then completed; 1 / the shortest interval between two writes (post or edit) of one message, timed at the fake Slack",
            tasks.len(), plan.edit_events, EDIT_RUN_SPACING, plan.edit_events as f64 * EDIT_RUN_SPACING.as_secs_f64()));
        drop(agents);
        wait_connected(&self.client, addr, 0).await?;

        self.highest_rate(&bot, report).await?;
        self.lifecycles(&bot, report).await?;
        self.drain(&bot, report).await?;
        bot.stop().await
    }

    /// The highest offered command rate met with stable latency.
    async fn highest_rate(&self, bot: &BotProcess, report: &mut Report) -> anyhow::Result<()> {
        let plan = &self.plan;
        println!("· highest sustained dispatch rate");
        let probe = Probe::new();
        let agents = agent::connect_many(
            bot.addr,
            8..8 + WORKERS,
            1000,
            Work {
                events: 0,
                spacing: None,
            },
            &probe,
            WORKERS,
        )
        .await?;
        let mut best = 0.0;
        for &rate in &plan.rates {
            let cpu0 = bot.cpu_secs()?;
            let run = paced(self, bot.addr, &probe, rate, plan.rate_secs).await;
            // A sustained rate delivers every task frame soon after the last command.
            let _ = wait_until("the step's task frames", Duration::from_secs(2), || {
                probe.delivered(run.from, run.to).1 as u64 >= run.count
            })
            .await;
            let (sent, got) = probe.delivered(run.from, run.to);
            let lat = probe.dispatch_ms(run.from, run.to);
            let (p50, p99) = p50_p99(&lat);
            // Refused after the acknowledgement (answered through response_url).
            let (refused, why) = probe.refused_between(run.from, run.to);
            if let Some(why) = why {
                run.failures
                    .note_many(refused, format!("refused after the acknowledgement: {why}"));
            }
            let failed = run.failures.count.load(Ordering::Relaxed);
            let sustained = failed == 0 && got == sent && p99 <= STABLE_P99_MS;
            let delivered = got as f64 / plan.rate_secs;
            let cpu_ms = (bot.cpu_secs()? - cpu0) * 1e3 / (got.max(1) as f64);
            println!(
                "  {rate:>6.0}/s offered → {delivered:>6.0}/s delivered, p50 {p50:.3} ms, p99 {p99:.3} ms, failed {failed}{}",
                if failed > 0 {
                    format!(" ({})", run.failures.first())
                } else {
                    String::new()
                }
            );
            report.dispatch_steps.push(RateStep {
                offered_per_s: rate,
                delivered_per_s: round(delivered, 0),
                p50_ms: p50,
                p99_ms: p99,
                failed,
                bot_cpu_ms_per_task: round(cpu_ms, 3),
                sustained,
            });
            quiesce(&bot.log, &probe, probe.sent_count() as u64).await?;
            if !sustained {
                break;
            }
            best = rate;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        report.max_dispatch_per_s = Some(best);
        report.workloads.insert("max_dispatch_per_s".into(), format!(
            "signed /baton commands offered open loop at {} /s, {} s each, to {WORKERS} simulated agents (capacity 1000) that accept and complete every task at once; the highest offered rate where every command created a task, every task frame arrived and dispatch p99 stayed ≤ {STABLE_P99_MS} ms",
            plan.rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" → "), plan.rate_secs));
        drop(agents);
        wait_connected(&self.client, bot.addr, 0).await
    }

    /// Only the lifecycle runs, on a bot of their own (`--only lifecycles`).
    pub async fn lifecycles_only(&self, report: &mut Report) -> anyhow::Result<()> {
        let db = Db::prepare(&self.dir("lifecycles")?, 64).await?;
        let bot = BotProcess::start(&self.bin, &db, &self.bot_config(None), &self.client).await?;
        self.lifecycles(&bot, report).await?;
        bot.stop().await
    }

    /// Runs lifecycles for `plan.life_secs`: [`COMMANDERS`] concurrent signed
    /// `/baton` commands (closed loop, at most [`OUTSTANDING_MAX`] lifecycles
    /// unfinished), commander `i` sending to `addrs[i % addrs.len()]`; then
    /// waits for every task's final edit. Returns the lifecycles per second
    /// shown final in Slack (`log`) after `plan.life_warmup`, and the
    /// lifecycles started.
    pub(crate) async fn closed_loop(
        &self,
        addrs: &[SocketAddr],
        log: &Arc<Mutex<SlackLog>>,
        probe: &Arc<Probe>,
    ) -> anyhow::Result<(f64, u64)> {
        let plan = &self.plan;
        let finals_before = slack_log::lock(log).final_at.len();
        let failures = Arc::new(Failures::default());
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(plan.life_secs);
        let sent = Arc::new(AtomicU64::new(0));
        let mut commanders = Vec::new();
        for i in 0..COMMANDERS {
            let (client, probe, failures, sent, log) = (
                self.client.clone(),
                probe.clone(),
                failures.clone(),
                sent.clone(),
                log.clone(),
            );
            let addr = addrs[i % addrs.len()];
            commanders.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let finals = slack_log::lock(&log).final_at.len() - finals_before;
                    if sent.load(Ordering::Relaxed) as usize >= finals + OUTSTANDING_MAX {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    send_one(&client, addr, &probe, &failures).await;
                }
            }));
        }
        for c in commanders {
            let _ = c.await;
        }
        let from = start + Duration::from_secs_f64(plan.life_warmup);
        let total = sent.load(Ordering::Relaxed);
        if failures.count.load(Ordering::Relaxed) > 0 {
            bail!("commands failed in the lifecycle run: {}", failures.first());
        }
        quiesce(log, probe, total).await?;
        // Only the tasks of this run's commands: a Slack shared with earlier
        // runs has their finals too, and their agents may be sent tasks left
        // in the queue by an earlier run.
        let mine = probe.tasks_sent_between(start, end);
        let done = slack_log::lock(log).finals_between(&mine, from, end);
        let rate = round(done as f64 / end.duration_since(from).as_secs_f64(), 0);
        Ok((rate, total))
    }

    /// Complete lifecycles per second, for each number of progress events.
    async fn lifecycles(&self, bot: &BotProcess, report: &mut Report) -> anyhow::Result<()> {
        let plan = &self.plan;
        for &events in &plan.events {
            println!("· lifecycles/s with {events} progress events per task");
            let probe = Probe::new();
            let agents = agent::connect_many(
                bot.addr,
                16..16 + WORKERS,
                1000,
                Work {
                    events,
                    spacing: None,
                },
                &probe,
                WORKERS,
            )
            .await?;
            let writes0 = metric(&self.client, bot.addr, "baton_db_writes_total").await;
            let commits0 = metric(&self.client, bot.addr, "baton_db_commits_total").await;
            let (cpu0, own0) = (bot.cpu_secs()?, crate::bot::cpu_secs("/proc/self/stat")?);
            let slack0 = slack_log::lock(&bot.log).calls.len();
            let (rate, total) = self.closed_loop(&[bot.addr], &bot.log, &probe).await?;
            let slack_calls = slack_log::lock(&bot.log).calls.len() - slack0;
            let per = |secs: f64| round(secs * 1e3 / total.max(1) as f64, 3);
            let bot_cpu_ms = per(bot.cpu_secs()? - cpu0);
            let bench_cpu_ms = per(crate::bot::cpu_secs("/proc/self/stat")? - own0);
            // Database statements and commits per lifecycle (SQLite's group writer counts them).
            let per_task = |before: Option<f64>, after: Option<f64>| {
                Some(round((after? - before?) / total.max(1) as f64, 2))
            };
            let writes = per_task(
                writes0,
                metric(&self.client, bot.addr, "baton_db_writes_total").await,
            );
            let commits = per_task(
                commits0,
                metric(&self.client, bot.addr, "baton_db_commits_total").await,
            );
            report.curves.events_per_task.push(EventsPoint {
                events: events.into(),
                lifecycles_per_s: rate,
                bot_cpu_ms,
                bench_cpu_ms,
            });
            println!(
                "  {rate:.0} lifecycles/s ({total} tasks); CPU per lifecycle: bot {bot_cpu_ms:.3} ms, benchmark {bench_cpu_ms:.3} ms; database writes {}, commits {}",
                writes.map_or("-".into(), |w| w.to_string()),
                commits.map_or("-".into(), |c| c.to_string()),
            );
            if events == 10 {
                report.lifecycles_per_s = Some(rate);
                report.cpu_ms_per_lifecycle = Some(bot_cpu_ms);
                if let Some(w) = writes {
                    report.extra.insert("db_writes_per_lifecycle".into(), w);
                }
                if let Some(c) = commits {
                    report.extra.insert("db_commits_per_lifecycle".into(), c);
                }
                // Task-message posts and edits Slack accepted.
                report.extra.insert(
                    "slack_calls_per_lifecycle".into(),
                    round(slack_calls as f64 / total.max(1) as f64, 2),
                );
                report.workloads.insert("cpu_ms_per_lifecycle".into(), format!(
                    "the bot process's CPU time (utime + stime from /proc) over the whole lifecycles run with 10 progress events (warm-up and the wait for the last final edits included) / the lifecycles started ({total})"));
                report
                    .extra
                    .insert("bench_cpu_ms_per_lifecycle".into(), bench_cpu_ms);
                let tasks: Vec<i64> = probe.ended().keys().copied().collect();
                let lags = final_lags(&bot.log, &probe, &tasks);
                report.extra.insert(
                    "final_edit_lag_p99_at_max_ms".into(),
                    round(percentile(&lags, 99.0).unwrap_or(f64::NAN), 1),
                );
                report.workloads.insert("lifecycles_per_s".into(), format!(
                    "{COMMANDERS} concurrent signed /baton commands (closed loop, at most {OUTSTANDING_MAX} lifecycles unfinished) for {} s; {WORKERS} simulated agents (capacity 1000) answer each task with accepted, 10 progress events (steps and output alternating) and completed, all at once; a lifecycle counts when the fake Slack receives the edit that shows it completed; counted from {} s to the end, when the flow is steady ({total} tasks in all)",
                    plan.life_secs, plan.life_warmup));
            }
            drop(agents);
            wait_connected(&self.client, bot.addr, 0).await?;
        }
        Ok(())
    }

    /// Queued tasks → all handed out after an agent with room connects.
    async fn drain(&self, bot: &BotProcess, report: &mut Report) -> anyhow::Result<()> {
        let n = self.plan.drain_tasks;
        println!("· queue drain of {n} tasks");
        let probe = Probe::new();
        let posts_before = slack_log::lock(&bot.log).posts;
        let failures = Arc::new(Failures::default());
        for _ in 0..n {
            send_one(&self.client, bot.addr, &probe, &failures).await;
        }
        if failures.count.load(Ordering::Relaxed) > 0 {
            bail!("commands failed while queueing: {}", failures.first());
        }
        // As in life, the queue is long settled (its messages posted) when the agent comes.
        wait_until("the queued tasks' messages", QUIESCE_TIMEOUT, || {
            slack_log::lock(&bot.log).posts >= posts_before + n
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        let agent = Agent::connect(
            bot.addr,
            &crate::bot::agent_key(30),
            n as u32,
            // Accepts each task at once and works on it for a while, as an agent does.
            Work {
                events: 0,
                spacing: Some(DRAIN_TASK_TIME),
            },
            probe.clone(),
        )
        .await?;
        wait_until("the drain", QUIESCE_TIMEOUT, || probe.received_count() >= n).await?;
        let last = probe.last_received().context("no task arrived")?;
        report.queue_drain_ms = Some(round(last.duration_since(t0).as_secs_f64() * 1e3, 1));
        report.workloads.insert("queue_drain_ms".into(), format!(
            "{n} tasks queued by signed /baton commands while no agent serves the project (their messages posted); then one simulated agent with capacity {n} connects: from the start of its WebSocket handshake to the last submit frame it reads (it accepts each one as it arrives and completes it {DRAIN_TASK_TIME:?} later)"));
        quiesce(&bot.log, &probe, n as u64).await?;
        drop(agent);
        Ok(())
    }

    /// Memory as connected agents grow: one bot, agents added in steps, idle.
    pub async fn agents_memory(&self, report: &mut Report) -> anyhow::Result<()> {
        let plan = &self.plan;
        let most = plan.most_agents();
        println!("· memory with up to {most} idle agents");
        let db = Db::prepare(&self.dir("agents-memory")?, most).await?;
        let bot = BotProcess::start(&self.bin, &db, &self.bot_config(None), &self.client).await?;
        let rss0 = bot.settled_rss_kib(plan.settle).await?;
        let probe = Probe::new();
        let mut agents: Vec<Agent> = Vec::new();
        let mut points = Vec::new();
        for &n in &plan.agent_counts {
            let t = Instant::now();
            let more = agent::connect_many(
                bot.addr,
                agents.len()..n,
                4,
                Work {
                    events: 10,
                    spacing: None,
                },
                &probe,
                CONNECT_PARALLEL,
            )
            .await?;
            agents.extend(more);
            let connect_s = t.elapsed().as_secs_f64();
            let rss = bot.settled_rss_kib(plan.settle).await?;
            let per = (rss.saturating_sub(rss0)) as f64 / n as f64;
            println!(
                "  {n:>6} agents: RSS {:.1} MiB, {per:.2} KiB per connection (connected in {connect_s:.1} s)",
                rss as f64 / 1024.0
            );
            points.push((n, rss, per));
            report
                .extra
                .insert(format!("connect_{n}_agents_s"), round(connect_s, 2));
        }
        if let Some((n, _, per)) = points.last() {
            report.idle_conn_kib = Some(round(*per, 2));
            report.workloads.insert("idle_conn_kib".into(), format!(
                "(VmRSS with {n} simulated agents connected and idle − VmRSS before the first connected) / {n}; each agent: WebSocket handshake with its own key, hello (1 project, capacity 4), welcome; memory read after {:?} of quiet (lowest of 3 readings)",
                plan.settle));
        }
        for (n, rss, per) in points {
            report.curves.agents.push(AgentsPoint {
                agents: n as u64,
                rss_mib: round(rss as f64 / 1024.0, 2),
                per_conn_kib: round(per, 2),
                ..AgentsPoint::default()
            });
        }
        drop(agents);
        bot.stop().await
    }

    /// Dispatch latency as connected agents grow: one bot, agents added in steps.
    pub async fn agents_latency(&self, report: &mut Report) -> anyhow::Result<()> {
        let plan = &self.plan;
        println!(
            "· dispatch latency with up to {} connected agents",
            plan.most_agents()
        );
        let db = Db::prepare(&self.dir("agents-latency")?, plan.most_agents()).await?;
        let bot = BotProcess::start(&self.bin, &db, &self.bot_config(None), &self.client).await?;
        let probe = Probe::new();
        let mut agents: Vec<Agent> = Vec::new();
        for &n in &plan.agent_counts {
            let more = agent::connect_many(
                bot.addr,
                agents.len()..n,
                4,
                Work {
                    events: 10,
                    spacing: None,
                },
                &probe,
                CONNECT_PARALLEL,
            )
            .await?;
            agents.extend(more);
            // A welcome comes before the bot has finished with a new agent
            // (reconciliation writes): let the arrivals settle first.
            tokio::time::sleep(plan.settle).await;
            let (lat, _) = self
                .latency_sample(bot.addr, &bot.log, &probe, plan.curve_secs)
                .await?;
            let (p50, p99) = p50_p99(&lat);
            println!("  {n:>6} agents: dispatch p50 {p50:.3} ms, p99 {p99:.3} ms");
            match report
                .curves
                .agents
                .iter_mut()
                .find(|p| p.agents == n as u64)
            {
                Some(p) => {
                    p.dispatch_p50_ms = p50;
                    p.dispatch_p99_ms = p99;
                }
                None => report.curves.agents.push(AgentsPoint {
                    agents: n as u64,
                    dispatch_p50_ms: p50,
                    dispatch_p99_ms: p99,
                    ..AgentsPoint::default()
                }),
            }
        }
        report.workloads.insert("curves.agents".into(), format!(
            "memory: one bot, simulated agents connected in steps and left idle (VmRSS after {:?} of quiet); latency: a second bot, agents (capacity 4, 10 progress events per task) connected in steps, {:?} of quiet, then {} s of signed /baton commands at 200/s at each step; every agent serves the one project, so each dispatch chooses among all of them",
            plan.settle, plan.settle, plan.curve_secs));
        drop(agents);
        bot.stop().await
    }

    /// Dispatch latency as the task table grows: the table pre-filled, the bot restarted at each size.
    pub async fn task_rows(&self, report: &mut Report) -> anyhow::Result<()> {
        let plan = &self.plan;
        let db = Db::prepare(&self.dir("task-rows")?, 8).await?;
        for &rows in &plan.rows {
            println!("· dispatch latency with {rows} rows in the task table");
            let t = Instant::now();
            let rows = db.fill_tasks(rows).await?;
            let fill_s = t.elapsed().as_secs_f64();
            let bot =
                BotProcess::start(&self.bin, &db, &self.bot_config(None), &self.client).await?;
            let probe = Probe::new();
            let agents = agent::connect_many(
                bot.addr,
                0..4,
                64,
                Work {
                    events: 10,
                    spacing: None,
                },
                &probe,
                4,
            )
            .await?;
            let (lat, _) = self
                .latency_sample(bot.addr, &bot.log, &probe, plan.curve_secs)
                .await?;
            let (p50, p99) = p50_p99(&lat);
            // The listings that read the task table: a person's own tasks
            // (UOLD1 has a fiftieth of the pre-filled rows) and an admin's
            // newest tasks in one state. Both must stay flat.
            let status = self
                .answer_times(bot.addr, "/baton", "status", "UOLD1")
                .await?;
            let admin_tasks = self
                .answer_times(
                    bot.addr,
                    "/baton-admin",
                    "tasks completed",
                    crate::bot::ADMIN,
                )
                .await?;
            let (status_p50, _) = p50_p99(&status);
            let (admin_p50, _) = p50_p99(&admin_tasks);
            println!(
                "  p50 {p50:.3} ms, p99 {p99:.3} ms; start-up {:.0} ms (pre-fill {fill_s:.1} s); status {status_p50:.3} ms, admin tasks {admin_p50:.3} ms",
                bot.startup.as_secs_f64() * 1e3
            );
            report.curves.task_rows.push(RowsPoint {
                rows,
                dispatch_p50_ms: p50,
                dispatch_p99_ms: p99,
                startup_ms: round(bot.startup.as_secs_f64() * 1e3, 0),
                status_p50_ms: status_p50,
                admin_tasks_p50_ms: admin_p50,
            });
            drop(agents);
            bot.stop().await?;
        }
        report.workloads.insert("curves.task_rows".into(), format!(
            "the tasks table pre-filled with completed tasks (written straight into the SQLite file, its indexes maintained), the bot restarted on it; 4 simulated agents; {} s of signed /baton commands at 200/s; start-up is spawn → /readyz answering; status and admin tasks: {LISTING_SAMPLES} signed `/baton status` (as a requester with a fiftieth of the rows) and `/baton-admin tasks completed`, one after the other, request written → answer read",
            plan.curve_secs));
        Ok(())
    }

    /// How long [`LISTING_SAMPLES`] slash commands `command TEXT` as `user`
    /// take to be answered, one after the other, in ms.
    async fn answer_times(
        &self,
        addr: std::net::SocketAddr,
        command: &str,
        text: &str,
        user: &str,
    ) -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(LISTING_SAMPLES);
        for _ in 0..LISTING_SAMPLES {
            let t = Instant::now();
            let (status, body) = self.client.command(addr, command, text, user).await?;
            if status != 200 || body.is_empty() {
                bail!("`{command} {text}` was not answered: {status}");
            }
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(out)
    }

    /// A frozen agent (socket open, nothing read or written) → marked disconnected.
    pub async fn dead_agent(&self, report: &mut Report) -> anyhow::Result<()> {
        let hb = self.plan.heartbeat_secs;
        let db = Db::prepare(&self.dir("dead-agent")?, 2).await?;
        let bot = BotProcess::start(&self.bin, &db, &self.bot_config(hb), &self.client).await?;
        let hb = hb.unwrap_or(baton_shared::limits::DEFAULT_HEARTBEAT_SECS);
        let probe = Probe::new();
        let mut agent = Agent::connect(
            bot.addr,
            &crate::bot::agent_key(0),
            1,
            Work {
                events: 0,
                spacing: None,
            },
            probe.clone(),
        )
        .await?;
        wait_connected(&self.client, bot.addr, 1).await?;
        // Freeze just after answering a ping: the worst moment, the longest silence to notice.
        wait_until(
            "a ping from the bot",
            Duration::from_secs(3 * hb + 5),
            || probe.last_ping().is_some(),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        agent.freeze();
        let t0 = Instant::now();
        wait_connected(&self.client, bot.addr, 0).await?;
        let secs = t0.elapsed().as_secs_f64();
        report.dead_agent_detect_s = Some(round(secs, 2));
        report.extra.insert("heartbeat_secs".into(), hb as f64);
        report.workloads.insert("dead_agent_detect_s".into(), format!(
            "one simulated agent stops reading and writing with its socket open, 50 ms after it answered a ping (the worst moment); until /metrics (polled every 20 ms) shows it disconnected; BATON_HEARTBEAT_SECS = {hb}{}; target 2 × {hb} s",
            if self.plan.heartbeat_secs.is_some() { " (lowered by --quick)" } else { " (the default)" }));
        drop(agent);
        bot.stop().await
    }
}
