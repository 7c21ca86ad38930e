//! The bot under test: a real `baton-bot` process on a SQLite file in a temp
//! dir (or, with `--postgres`, several on one PostgreSQL database), talking to
//! the fake Slack on loopback; its database pre-filled with agent keys (and,
//! for the table-growth curve, old tasks) before it starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_testkit::{SIGNING_SECRET, slack::BOT_TOKEN};
use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::client::Client;
use crate::slack_log::SlackLog;

/// Project every simulated agent serves.
pub const PROJECT: &str = "bench";
/// The Slack user the bot takes as its admin (`BATON_ADMINS`).
pub const ADMIN: &str = "UBENCHADMIN";
/// How long the bot has to answer `/readyz` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERM'd bot has to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Rows per multi-row INSERT when pre-filling agents.
const INSERT_CHUNK: usize = 500;

/// The name of simulated agent `i`.
pub fn agent_name(i: usize) -> String {
    format!("a{i}")
}

/// The key of simulated agent `i` (random enough for a benchmark, 16+ chars).
pub fn agent_key(i: usize) -> String {
    format!("bench-key-{i:08}-0123456789")
}

/// Settings that differ from the bot's defaults for one bot process.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// `BATON_HEARTBEAT_SECS`; None keeps the default.
    pub heartbeat_secs: Option<u64>,
    /// `RUST_LOG` for the bot.
    pub log: String,
}

/// A prepared database: the SQLite file (or PostgreSQL database) the bot will open.
#[derive(Debug)]
pub struct Db {
    /// The temp dir holding `baton.db` and the bots' logs.
    pub dir: PathBuf,
    /// `DATABASE_URL`.
    pub url: String,
}

impl Db {
    /// Creates the schema in `dir/baton.db` with `agents` keys and the project.
    pub async fn prepare(dir: &Path, agents: usize) -> anyhow::Result<Db> {
        let url = format!("sqlite://{}?mode=rwc", dir.join("baton.db").display());
        Db::prepare_at(dir, &url, agents).await
    }

    /// Creates the schema in the (empty) database at `url` with `agents`
    /// keys and the project; the bots' logs go to `dir`.
    pub async fn prepare_at(dir: &Path, url: &str, agents: usize) -> anyhow::Result<Db> {
        let url = url.to_owned();
        let store = baton_bot::store::Store::connect(&url)
            .await
            .context("Cannot create the benchmark database")?;
        let db = store.connection();
        let now = now_ms();
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!(
            "INSERT INTO projects (name, channel_id, created_at) VALUES ('{PROJECT}', 'C1', {now}) ON CONFLICT (name) DO NOTHING"
        ))
        .await?;
        let rows: Vec<String> = (0..agents)
            .map(|i| {
                format!(
                    "('{}', '{}', {now}, 'baton-bench', NULL)",
                    agent_name(i),
                    baton_bot::keys::hash(&agent_key(i))
                )
            })
            .collect();
        for chunk in rows.chunks(INSERT_CHUNK) {
            txn.execute_unprepared(&format!(
                "INSERT INTO agents (name, key_hash, created_at, created_by, revoked_at) VALUES {}
                 ON CONFLICT (name) DO UPDATE SET key_hash = excluded.key_hash, revoked_at = NULL",
                chunk.join(",")
            ))
            .await?;
        }
        txn.commit().await?;
        db.clone().close().await?;
        Ok(Db {
            dir: dir.to_owned(),
            url,
        })
    }

    /// Adds finished tasks until the table holds `rows` rows (as an old,
    /// busy installation would have: completed, their messages up to date).
    pub async fn fill_tasks(&self, rows: u64) -> anyhow::Result<u64> {
        let store = baton_bot::store::Store::connect(&self.url).await?;
        let db = store.connection();
        let have: u64 = match db
            .query_one(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM tasks",
            ))
            .await?
        {
            Some(row) => row.try_get::<i64>("", "n")? as u64,
            None => 0,
        };
        if have < rows {
            let t = now_ms() - 86_400_000;
            db.execute_unprepared(&format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {add})
                 INSERT INTO tasks (persona, project, prompt, requester, team_id, channel_id,
                   thread_ts, message_ts, state, agent, parent_id, session_id, model,
                   created_at, updated_at, queued_at, dispatched_at, started_at, finished_at,
                   last_seq, cancel_requested, wait_reason, steps, step_count, output_tail,
                   result, result_meta, error, failure_cause, slack_synced, result_parts_posted)
                 SELECT 'code', '{PROJECT}', 'old task ' || i || ': fix the flaky login test and say why it flaked',
                   'UOLD' || (i % 50), 'T1', 'C1', NULL, '1600000000.' || printf('%07d', i), 'completed',
                   'a' || (i % 4), NULL, 'session-' || i, NULL, {t}, {t}, {t}, {t}, {t}, {t},
                   12, 0, NULL, '[\"Edit src/auth.rs\",\"Bash: cargo test\"]', 10,
                   'test result: ok. 42 passed; 0 failed', 'Fixed the race in the login test.',
                   '{{\"cost_usd\":0.01,\"num_turns\":3}}', NULL, NULL, 1, 0
                 FROM n",
                add = rows - have
            ))
            .await
            .context("Cannot pre-fill the tasks table")?;
        }
        db.clone().close().await?;
        Ok(rows.max(have))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fake Slack Web API on loopback and what it saw: one workspace, which
/// several bot processes may share.
#[derive(Debug)]
pub struct Slack {
    /// Its base URL (`SLACK_API_URL`).
    pub url: String,
    /// What it saw, compactly.
    pub log: Arc<Mutex<SlackLog>>,
}

impl Slack {
    /// Starts a fake Slack on a free port.
    pub async fn start() -> Slack {
        let (slack, url) = baton_testkit::fake_slack().await;
        let log = Arc::new(Mutex::new(SlackLog::default()));
        {
            let log = log.clone();
            slack.tap(move |call| crate::slack_log::lock(&log).record(call));
        }
        Slack { url, log }
    }
}

/// A running `baton-bot` process.
#[derive(Debug)]
pub struct BotProcess {
    /// The child.
    child: tokio::process::Child,
    /// Its process id, for /proc.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What the fake Slack saw, compactly.
    pub log: Arc<Mutex<SlackLog>>,
    /// How long it took from spawn to a ready `/readyz`.
    pub startup: Duration,
}

/// Clock ticks per second in /proc's `stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds of the process whose `stat` file is at `path`.
pub fn cpu_secs(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("Cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    // utime is field 14, stime field 15.
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// A free port on 127.0.0.1 (bound, then released for the bot to take).
fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

impl BotProcess {
    /// Starts `bin` on `db` with a fresh fake Slack, and waits until it is ready.
    pub async fn start(
        bin: &Path,
        db: &Db,
        cfg: &BotConfig,
        client: &Client,
    ) -> anyhow::Result<BotProcess> {
        let slack = Slack::start().await;
        BotProcess::start_on(bin, db, cfg, client, &slack, "bot.log").await
    }

    /// Starts `bin` on `db` talking to `slack` (which other processes may
    /// share), its output in `db.dir/log_name`, and waits until it is ready.
    pub async fn start_on(
        bin: &Path,
        db: &Db,
        cfg: &BotConfig,
        client: &Client,
        slack: &Slack,
        log_name: &str,
    ) -> anyhow::Result<BotProcess> {
        let (slack_url, log) = (&slack.url, slack.log.clone());
        let addr = free_addr()?;
        let log_path = db.dir.join(log_name);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("Cannot open the bot's log file")?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.current_dir(&db.dir)
            .env_clear()
            .env("SLACK_BOT_TOKEN", BOT_TOKEN)
            .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
            .env("SLACK_API_URL", slack_url)
            .env("DATABASE_URL", &db.url)
            .env("BATON_LISTEN", addr.to_string())
            .env("BATON_ADMINS", crate::bot::ADMIN)
            // One simulated requester sends thousands of commands: lift the
            // per-user limit, and the queue bound for the drain test.
            .env("BATON_RATE_LIMIT_TASKS", "1000000000")
            .env("BATON_QUEUE_MAX", "100000")
            // The fake Slack has no Tier 3 budget; the per-message interval stays.
            .env("BATON_SLACK_UPDATES_PER_MINUTE", "100000000")
            .env("RUST_LOG", &cfg.log)
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        if let Some(h) = cfg.heartbeat_secs {
            cmd.env("BATON_HEARTBEAT_SECS", h.to_string());
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("Cannot start {}", bin.display()))?;
        let pid = child.id().context("the bot exited at once")?;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "baton-bot exited with {status} before it was ready; see {}",
                    log_path.display()
                );
            }
            if client.get_status(addr, "/readyz").await == Some(200) {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("baton-bot was not ready after {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(BotProcess {
            child,
            pid,
            addr,
            log,
            startup: started.elapsed(),
        })
    }

    /// Resident memory now, in KiB (`VmRSS` in /proc/PID/status).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("Cannot read the bot's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc status")
    }

    /// CPU time the bot has used so far, user and system, in seconds.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        cpu_secs(&format!("/proc/{}/stat", self.pid))
    }

    /// Resident memory once it has settled: the lowest of a few readings
    /// `settle` apart (allocators return memory lazily).
    pub async fn settled_rss_kib(&self, settle: Duration) -> anyhow::Result<u64> {
        let mut best = u64::MAX;
        for _ in 0..3 {
            tokio::time::sleep(settle / 3).await;
            best = best.min(self.rss_kib()?);
        }
        Ok(best)
    }

    /// Asks the bot to shut down (SIGTERM) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("baton-bot exited with {status} after SIGTERM");
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("baton-bot did not exit within {STOP_TIMEOUT:?} of SIGTERM")
            }
        }
    }
}
