//! The PostgreSQL mode (`--postgres URL`): real `baton-bot` processes on one
//! fresh database of the server at URL (created at the start, dropped at the
//! end), sharing one fake Slack. Two processes for the cross-process figures
//! (every command to the first, every agent on the second); one, two and
//! three for the growth of lifecycles per second; and the server's own
//! `NOTIFY` latency, the floor under any hand-over between processes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::sqlx::{Connection, Executor, PgConnection, Row};

use crate::agent::{self, Agent, Probe, Work};
use crate::bot::{BotProcess, Db, Slack, agent_key};
use crate::figures::{
    COMMANDERS, Ctx, OUTSTANDING_MAX, WORKERS, p50_p99, post_lags, wait_connected,
};
use crate::report::{ProcessesPoint, Report};
use crate::slack_log;
use crate::stats::{percentile, round};

/// How long the benchmark waits for the PostgreSQL server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `NOTIFY` may take to be heard before the probe gives up.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// The channel of the benchmark's own `NOTIFY` probe (not the bots').
const PROBE_CHANNEL: &str = "baton_bench_probe";
/// Agents (capacity 64 each) on the second process in the latency runs.
const LATENCY_AGENTS: usize = 4;
/// A command rate low enough that the processes are not busy: the
/// hand-over's own latency, apart from queueing for the CPU.
const LOW_RATE: f64 = 20.0;
/// Bot process counts of the growth curve.
const PROCESS_COUNTS: [usize; 3] = [1, 2, 3];

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Connects to `url`, or says clearly why not.
async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
        .await
        .with_context(|| {
            format!(
                "PostgreSQL at {} did not answer within {CONNECT_TIMEOUT:?}",
                redact(url)
            )
        })?
        .with_context(|| format!("Cannot connect to PostgreSQL at {}", redact(url)))
}

/// A database of the benchmark's own on the server, dropped with this value.
#[derive(Debug)]
pub struct PgDatabase {
    /// The server's URL, as given.
    server: String,
    /// The database's name.
    name: String,
    /// The database's URL (`DATABASE_URL` of the bots).
    pub url: String,
    /// The server's `version()`.
    pub version: String,
}

impl PgDatabase {
    /// Creates an empty database `baton_bench_<pid>_<time>` on `server`.
    pub async fn create(server: &str) -> anyhow::Result<PgDatabase> {
        let mut url = url::Url::parse(server).with_context(|| {
            format!(
                "--postgres {}: not a URL (postgres://user@host:port/db)",
                redact(server)
            )
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            bail!(
                "--postgres {}: not a PostgreSQL URL (postgres://user@host:port/db)",
                redact(server)
            );
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let name = format!("baton_bench_{}_{stamp}", std::process::id());
        let mut conn = connect(server).await?;
        let version: String = conn
            .fetch_one("SELECT version() AS v")
            .await?
            .try_get("v")?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("Cannot create the database {name}"))?;
        let _ = conn.close().await;
        url.set_path(&format!("/{name}"));
        Ok(PgDatabase {
            server: server.to_owned(),
            name,
            url: url.to_string(),
            version,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside the runtime, which cannot block: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = connect(&server).await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!(
                "warning: could not drop the benchmark's database {}",
                self.name
            );
        }
    }
}

/// `NOTIFY` on one connection → heard by a `LISTEN`ing one, `samples`
/// times one after the other, in ms.
async fn notify_latency(url: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut listener = PgListener::connect(url)
        .await
        .context("Cannot open a LISTEN connection")?;
    listener.listen(PROBE_CHANNEL).await?;
    let mut conn = connect(url).await?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        conn.execute(format!("NOTIFY {PROBE_CHANNEL}, '{i}'").as_str())
            .await?;
        loop {
            let n = tokio::time::timeout(NOTIFY_TIMEOUT, listener.recv())
                .await
                .context("a NOTIFY was not heard")??;
            if n.payload() == i.to_string() {
                break;
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = conn.close().await;
    Ok(out)
}

/// CPU seconds so far of each process of the PostgreSQL server (those
/// `pg_stat_activity` lists that this machine's /proc shows); empty when
/// the server runs elsewhere.
async fn server_cpu(url: &str) -> anyhow::Result<HashMap<i32, f64>> {
    let mut conn = connect(url).await?;
    let rows = conn
        .fetch_all("SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL")
        .await?;
    let _ = conn.close().await;
    let mut out = HashMap::new();
    for row in rows {
        let pid: i32 = row.try_get("pid")?;
        if let Ok(secs) = crate::bot::cpu_secs(&format!("/proc/{pid}/stat")) {
            out.insert(pid, secs);
        }
    }
    Ok(out)
}

/// CPU seconds the server's processes used between two [`server_cpu`] readings.
fn server_cpu_between(before: &HashMap<i32, f64>, after: &HashMap<i32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, secs)| secs - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// Where the lifecycle run's commands go and its agents connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Every command to the first process, every agent on the second.
    Cross,
    /// Commands round-robin over the processes, agents spread over them
    /// (as behind a load balancer).
    Spread,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Cross => "cross",
            Placement::Spread => "spread",
        }
    }
}

impl Ctx {
    /// The PostgreSQL figures, on a database created on `server` for the run.
    pub async fn postgres(&self, server: &str, report: &mut Report) -> anyhow::Result<()> {
        let plan = &self.plan;
        let pg = PgDatabase::create(server).await?;
        report.environment.postgres = Some(pg.version.clone());
        let dir = self.dir("postgres")?;
        let db = Db::prepare_at(&dir, &pg.url, 64).await?;

        println!(
            "· PostgreSQL: NOTIFY → heard on another connection ({} samples)",
            plan.pg_notify_samples
        );
        let notify = notify_latency(&pg.url, plan.pg_notify_samples).await?;
        let (p50, p99) = p50_p99(&notify);
        println!("  p50 {p50:.3} ms, p99 {p99:.3} ms");
        report.extra.insert("pg_notify_p50_ms".into(), p50);
        report.extra.insert("pg_notify_p99_ms".into(), p99);
        report.workloads.insert("pg_notify_p50_ms".into(), format!(
            "the benchmark's own connections to the bots' PostgreSQL server: `NOTIFY` on one connection (autocommit) → the notification read by another that `LISTEN`s (sqlx's PgListener, as the bots use), {} times one after the other; the floor under a hand-over between two processes", notify.len()));

        // Two processes: latency, then lifecycles, commands to A, agents on B.
        let slack = Slack::start().await;
        let procs = self.processes(&db, &slack, 2, "cross").await?;
        self.cross_latency(&procs, &slack, report).await?;
        println!("· PostgreSQL, 2 processes: lifecycles/s, every command to A, every agent on B");
        let cross = self
            .pg_lifecycles(&procs, &slack, Placement::Cross, &pg.url)
            .await?;
        report.pg_lifecycles_per_s = Some(cross.lifecycles_per_s);
        report
            .extra
            .insert("pg_bot_cpu_ms_per_lifecycle".into(), cross.bot_cpu_ms);
        report
            .extra
            .insert("pg_server_cpu_ms_per_lifecycle".into(), cross.pg_cpu_ms);
        report.workloads.insert("pg_lifecycles_per_s".into(), format!(
            "two baton-bot processes on one PostgreSQL database, one fake Slack; {COMMANDERS} concurrent signed /baton commands (closed loop, at most {OUTSTANDING_MAX} lifecycles unfinished), every one to process A, for {} s; {WORKERS} simulated agents (capacity 1000), every one connected to process B, answer each task with accepted, 10 progress events and completed, all at once; a lifecycle counts when the fake Slack receives the edit that shows it completed; counted from {} s to the end. CPU per lifecycle (extra.pg_bot_cpu_ms_per_lifecycle: both bots; extra.pg_server_cpu_ms_per_lifecycle: the server's processes from /proc) over the whole run",
            plan.life_secs, plan.life_warmup));
        let twice = {
            let log = slack_log::lock(&slack.log);
            log.posts.saturating_sub(log.posted_at.len())
        };
        report
            .extra
            .insert("pg_messages_posted_twice".into(), twice as f64);
        if twice > 0 {
            eprintln!(
                "warning: {twice} task messages were posted more than once with two processes"
            );
        }
        report.curves.pg_processes.push(cross);
        for p in procs {
            p.stop().await?;
        }

        // The growth: 1, 2, 3 processes, commands and agents spread.
        let mut by = BTreeMap::new();
        for n in PROCESS_COUNTS {
            println!(
                "· PostgreSQL, {n} process{}: lifecycles/s, commands and agents spread",
                if n == 1 { "" } else { "es" }
            );
            let slack = Slack::start().await;
            let procs = self.processes(&db, &slack, n, "spread").await?;
            let point = self
                .pg_lifecycles(&procs, &slack, Placement::Spread, &pg.url)
                .await?;
            by.insert(n.to_string(), point.lifecycles_per_s);
            report.curves.pg_processes.push(point);
            for p in procs {
                p.stop().await?;
            }
        }
        report.pg_lifecycles_per_s_by_processes = Some(by);
        report.workloads.insert("pg_lifecycles_per_s_by_processes".into(), format!(
            "1, 2 and 3 baton-bot processes on one PostgreSQL database (started afresh for each count, on the same database), one fake Slack; {COMMANDERS} concurrent signed /baton commands (closed loop) spread round-robin over the processes, {WORKERS} simulated agents (capacity 1000) spread over them, as behind a load balancer; otherwise as lifecycles_per_s (10 progress events, {} s, counted from {} s). curves.pg_processes also has the CPU per lifecycle of the bots, the server and the benchmark, and the cross run (pg_lifecycles_per_s)",
            plan.life_secs, plan.life_warmup));
        drop(pg);
        Ok(())
    }

    /// Starts `n` bot processes on `db`, all talking to `slack`.
    async fn processes(
        &self,
        db: &Db,
        slack: &Slack,
        n: usize,
        label: &str,
    ) -> anyhow::Result<Vec<BotProcess>> {
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            let log = format!("bot-{label}-{n}-{i}.log");
            procs.push(
                BotProcess::start_on(
                    &self.bin,
                    db,
                    &self.bot_config(None),
                    &self.client,
                    slack,
                    &log,
                )
                .await?,
            );
        }
        Ok(procs)
    }

    /// Dispatch latency at 200 commands/s with the agents on process B:
    /// commands to A (cross-process), then to B (same process), for the difference.
    async fn cross_latency(
        &self,
        procs: &[BotProcess],
        slack: &Slack,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let plan = &self.plan;
        let [a, b] = procs else {
            bail!("the cross-process run needs two processes");
        };
        let probe = Probe::new();
        let agents = agent::connect_many(
            b.addr,
            0..LATENCY_AGENTS,
            64,
            Work {
                events: 10,
                spacing: None,
            },
            &probe,
            LATENCY_AGENTS,
        )
        .await?;
        wait_connected(&self.client, b.addr, LATENCY_AGENTS).await?;
        println!(
            "· PostgreSQL, 2 processes: dispatch latency at 200 commands/s for {} s, commands to A, agents on B",
            plan.pg_latency_secs
        );
        let (lat, tasks) = self
            .latency_sample(a.addr, &slack.log, &probe, plan.pg_latency_secs)
            .await?;
        let (p50, p99) = p50_p99(&lat);
        println!("  p50 {p50:.3} ms, p99 {p99:.3} ms");
        report.pg_cross_dispatch_p50_ms = Some(p50);
        report.pg_cross_dispatch_p99_ms = Some(p99);
        let posted = post_lags(&slack.log, &probe, &tasks);
        report.extra.insert(
            "pg_slash_to_message_p50_ms".into(),
            round(percentile(&posted, 50.0).unwrap_or(f64::NAN), 3),
        );
        let w = format!(
            "two baton-bot processes A and B on one PostgreSQL database, one fake Slack; {} signed /baton commands over kept-alive HTTP at 200/s (open loop), every one to A; {LATENCY_AGENTS} simulated agents (capacity 64), every one connected to B, accept each task, send 10 progress events and complete it; {} samples; from the request to A being written to the submit frame read by the agent on B",
            tasks.len(),
            lat.len()
        );
        report
            .workloads
            .insert("pg_cross_dispatch_p50_ms".into(), w.clone());
        report
            .workloads
            .insert("pg_cross_dispatch_p99_ms".into(), w);

        println!(
            "  the same at {LOW_RATE} commands/s (the hand-over, without queueing for the CPU)"
        );
        let (lat, _) = self
            .latency_sample_at(a.addr, &slack.log, &probe, LOW_RATE, plan.pg_latency_secs)
            .await?;
        let (p50, p99) = p50_p99(&lat);
        println!("  p50 {p50:.3} ms, p99 {p99:.3} ms");
        report
            .extra
            .insert("pg_cross_dispatch_p50_at_20_per_s_ms".into(), p50);
        report
            .extra
            .insert("pg_cross_dispatch_p99_at_20_per_s_ms".into(), p99);
        report.workloads.insert("pg_cross_dispatch_p50_at_20_per_s_ms".into(), format!(
            "as pg_cross_dispatch_p50_ms, right after it on the same processes and agents, at {LOW_RATE} commands/s for {} s ({} samples)", plan.pg_latency_secs, lat.len()));

        println!("  the same with every command to B (same process as the agents)");
        let (lat, _) = self
            .latency_sample(b.addr, &slack.log, &probe, plan.pg_latency_secs)
            .await?;
        let (p50, p99) = p50_p99(&lat);
        println!("  p50 {p50:.3} ms, p99 {p99:.3} ms");
        report
            .extra
            .insert("pg_same_process_dispatch_p50_ms".into(), p50);
        report
            .extra
            .insert("pg_same_process_dispatch_p99_ms".into(), p99);
        report.workloads.insert("pg_same_process_dispatch_p50_ms".into(),
            "as pg_cross_dispatch_p50_ms, right after it on the same processes and agents, but every command to B, the process holding the agents: the cost of PostgreSQL without the hand-over".into());
        drop(agents);
        wait_connected(&self.client, b.addr, 0).await
    }

    /// Lifecycles per second on `procs` (10 progress events per task).
    async fn pg_lifecycles(
        &self,
        procs: &[BotProcess],
        slack: &Slack,
        placement: Placement,
        url: &str,
    ) -> anyhow::Result<ProcessesPoint> {
        let probe = Probe::new();
        let host = |j: usize| match placement {
            Placement::Cross => &procs[1 % procs.len()],
            Placement::Spread => &procs[j % procs.len()],
        };
        let mut agents: Vec<Agent> = Vec::with_capacity(WORKERS);
        for j in 0..WORKERS {
            agents.push(
                Agent::connect(
                    host(j).addr,
                    &agent_key(16 + j),
                    1000,
                    Work {
                        events: 10,
                        spacing: None,
                    },
                    probe.clone(),
                )
                .await
                .with_context(|| format!("agent {}", 16 + j))?,
            );
        }
        for (i, p) in procs.iter().enumerate() {
            let here = (0..WORKERS)
                .filter(|j| std::ptr::eq(host(*j), &procs[i]))
                .count();
            wait_connected(&self.client, p.addr, here).await?;
        }
        let addrs: Vec<SocketAddr> = match placement {
            Placement::Cross => vec![procs[0].addr],
            Placement::Spread => procs.iter().map(|p| p.addr).collect(),
        };
        let bots_cpu = || -> anyhow::Result<f64> {
            procs
                .iter()
                .map(|p| p.cpu_secs())
                .sum::<anyhow::Result<f64>>()
        };
        let server0 = server_cpu(url).await?;
        let (cpu0, own0) = (bots_cpu()?, crate::bot::cpu_secs("/proc/self/stat")?);
        let (rate, total) = self.closed_loop(&addrs, &slack.log, &probe).await?;
        let per = |secs: f64| round(secs * 1e3 / total.max(1) as f64, 3);
        let bot_cpu_ms = per(bots_cpu()? - cpu0);
        let bench_cpu_ms = per(crate::bot::cpu_secs("/proc/self/stat")? - own0);
        let pg_cpu_ms = per(server_cpu_between(&server0, &server_cpu(url).await?));
        println!(
            "  {rate:.0} lifecycles/s ({total} tasks); CPU per lifecycle: bots {bot_cpu_ms:.3} ms, PostgreSQL {pg_cpu_ms:.3} ms, benchmark {bench_cpu_ms:.3} ms"
        );
        drop(agents);
        for p in procs {
            wait_connected(&self.client, p.addr, 0).await?;
        }
        Ok(ProcessesPoint {
            processes: procs.len() as u64,
            placement: placement.name().into(),
            lifecycles_per_s: rate,
            bot_cpu_ms,
            pg_cpu_ms,
            bench_cpu_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_is_not_a_postgres_url_is_refused_clearly() {
        let err = PgDatabase::create("mysql://u@127.0.0.1/db")
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("not a PostgreSQL URL (postgres://"),
            "{err:#}"
        );
        let err = PgDatabase::create("localhost").await.unwrap_err();
        assert!(format!("{err:#}").contains("not a URL"), "{err:#}");
    }

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            redact("postgres://baton:secret@db:5432/baton"),
            "postgres://baton:***@db:5432/baton"
        );
        assert_eq!(redact("postgres://db/baton"), "postgres://db/baton");
    }

    #[test]
    fn server_cpu_counts_what_each_process_used_between_readings() {
        let before = HashMap::from([(1, 2.0), (2, 5.0)]);
        // Process 2 ended (its time is lost), 3 started during the run.
        let after = HashMap::from([(1, 2.5), (3, 0.25)]);
        assert_eq!(server_cpu_between(&before, &after), 0.75);
    }
}
