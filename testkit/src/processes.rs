//! Several real `baton-bot` processes ([`BotProcess`]) on one database with
//! the fake Slack, for the scale-out tests: started, killed (`kill -9`),
//! stopped and restarted by index, each where its agents expect it, with
//! project `web` bound to channel C1. Meant for PostgreSQL (see
//! [`crate::db::postgres_or_skip`]); the helpers around it wait on conditions
//! with deadlines, never for a fixed time.

use std::net::SocketAddr;
use std::sync::Arc;

use baton_bot::store::Store;
use baton_shared::protocol::BotMessage;
use sea_orm::{ConnectionTrait, Statement};

use crate::scene::{DEADLINE, FakeAgent};
use crate::{AGENT_KEY, BotProcess, FakeSlack, admin, baton, eventually, fake_slack};

/// Any free port on loopback (a port is picked at start and kept across restarts).
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// N real `baton-bot` processes on one database, the fake Slack they talk
/// to, and a connection to that database.
#[derive(Debug)]
pub struct Processes {
    /// The fake Slack every process talks to.
    pub slack: Arc<FakeSlack>,
    /// The fake Slack's Web API URL.
    pub slack_url: String,
    /// The processes by index; `None` while one is down.
    bots: Vec<Option<BotProcess>>,
    /// Where each process listens, kept across its restarts.
    addrs: Vec<SocketAddr>,
    /// The extra environment of every process (`BATON_*` settings).
    env: Vec<(&'static str, String)>,
    /// A connection to the processes' database.
    pub store: Store,
    /// The directory naming the database; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Processes {
    /// Starts `n` processes one after the other with the extra environment
    /// `env`, and binds project `web` to channel C1 (through the first).
    pub async fn start(n: usize, env: &[(&'static str, String)]) -> Processes {
        let (slack, slack_url) = fake_slack().await;
        let dir = tempfile::tempdir().unwrap();
        let mut bots = Vec::with_capacity(n);
        for _ in 0..n {
            bots.push(BotProcess::start(any_port(), &slack_url, dir.path(), env).await);
        }
        Self::bound(slack, slack_url, dir, bots, env).await
    }

    /// Like [`Processes::start`], starting the `n` processes at the same
    /// moment (on a database made before, so that they all share it).
    pub async fn start_at_once(n: usize, env: &[(&'static str, String)]) -> Processes {
        let (slack, slack_url) = fake_slack().await;
        let dir = tempfile::tempdir().unwrap();
        crate::db::url_for_dir(dir.path()).await;
        let bots = futures::future::join_all(
            (0..n).map(|_| BotProcess::start(any_port(), &slack_url, dir.path(), env)),
        )
        .await;
        Self::bound(slack, slack_url, dir, bots, env).await
    }

    async fn bound(
        slack: Arc<FakeSlack>,
        slack_url: String,
        dir: tempfile::TempDir,
        bots: Vec<BotProcess>,
        env: &[(&'static str, String)],
    ) -> Processes {
        let db_url = &bots[0].db_url;
        assert!(bots.iter().all(|b| &b.db_url == db_url), "one database");
        let store = bots[0].store().await;
        let bound = admin(bots[0].addr, "project bind web").await;
        assert!(bound.contains("project `web`"), "{bound}");
        Processes {
            slack,
            slack_url,
            addrs: bots.iter().map(|b| b.addr).collect(),
            bots: bots.into_iter().map(Some).collect(),
            env: env.to_vec(),
            store,
            dir,
        }
    }

    /// Starts one more process on the same database and Slack, with the
    /// same settings; its index.
    pub async fn add(&mut self) -> usize {
        let bot = BotProcess::start(any_port(), &self.slack_url, self.dir.path(), &self.env).await;
        self.addrs.push(bot.addr);
        self.bots.push(Some(bot));
        self.addrs.len() - 1
    }

    /// How many processes there are (up or down).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Where process `i` listens (also while it is down).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// Every process's agents URL (`ws://ADDR/agents`), in order.
    pub fn agent_urls(&self) -> Vec<String> {
        self.addrs
            .iter()
            .map(|a| format!("ws://{a}/agents"))
            .collect()
    }

    /// Whether process `i` is up.
    pub fn is_up(&self, i: usize) -> bool {
        self.bots[i].is_some()
    }

    /// Process `i`'s `kill -9`; it stays down until [`Processes::restart`].
    pub async fn kill(&mut self, i: usize) {
        self.bots[i].take().expect("the process is up").kill().await;
    }

    /// Process `i`'s graceful stop (SIGTERM); it stays down until
    /// [`Processes::restart`].
    pub async fn stop_one(&mut self, i: usize) {
        self.bots[i].take().expect("the process is up").stop().await;
    }

    /// Starts process `i` again where it listened, and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.bots[i].is_none(), "process {i} is still up");
        let bot =
            BotProcess::start(self.addrs[i], &self.slack_url, self.dir.path(), &self.env).await;
        self.bots[i] = Some(bot);
    }

    /// A connected [`FakeAgent`] `e2e` on process `i`.
    pub async fn agent(&self, i: usize) -> FakeAgent {
        FakeAgent::connect_as(self.addrs[i], AGENT_KEY, 1).await
    }

    /// `/baton TEXT` on process `i`; the new task's id.
    pub async fn start_task(&self, i: usize, text: &str) -> i64 {
        start_task(self.addrs[i], &self.store, text).await
    }

    /// Waits until `processes` processes renewed their lease `renewals` times
    /// after now (see [`renewed`]).
    pub async fn renewed(&self, processes: usize, renewals: u32) {
        renewed(&self.store, processes, renewals).await;
    }

    /// The processes' leases (see [`leases`]).
    pub async fn leases(&self) -> Vec<i64> {
        leases(&self.store).await
    }

    /// Stops every process that is up, the last first.
    pub async fn stop(mut self) {
        for bot in self.bots.iter_mut().rev() {
            if let Some(bot) = bot.take() {
                bot.stop().await;
            }
        }
    }
}

/// `/baton TEXT` as UADMIN on the process at `addr`; the new task's id, read
/// from the database.
pub async fn start_task(addr: SocketAddr, store: &Store, text: &str) -> i64 {
    let before = store.recent_tasks(1_000).await.unwrap().len();
    let (status, body) = baton(addr, text, "UADMIN").await;
    assert_eq!(status, 200, "{body}");
    eventually("the task to be written", || async {
        let tasks = store.recent_tasks(1_000).await.unwrap();
        (tasks.len() > before).then(|| tasks.iter().map(|t| t.id).max().unwrap())
    })
    .await
}

/// Waits for the frame `want` picks among those the bot sends `agent`.
pub async fn frame<T>(agent: &mut FakeAgent, mut want: impl FnMut(&BotMessage) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let got = tokio::time::timeout_at(deadline, agent.frames.recv())
            .await
            .unwrap_or_else(|_| panic!("not sent in time; frames so far: {seen:?}"))
            .expect("the connection is open");
        if let Some(out) = want(&got) {
            return out;
        }
        seen.push(got);
    }
}

/// The text column `row` of every row `sql` selects, to explain a failure.
pub async fn rows(store: &Store, sql: &str) -> Vec<String> {
    let db = store.connection();
    match db
        .query_all(Statement::from_string(db.get_database_backend(), sql))
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| r.try_get::<String>("", "row").unwrap_or_default())
            .collect(),
        Err(err) => vec![format!("cannot read: {err}")],
    }
}

/// The processes' leases, in Unix ms.
pub async fn leases(store: &Store) -> Vec<i64> {
    let db = store.connection();
    db.query_all(Statement::from_string(
        db.get_database_backend(),
        "SELECT lease_until FROM instances",
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<i64>("", "lease_until").unwrap())
    .collect()
}

/// Waits until `processes` processes renewed their lease `renewals` times
/// after now: each ran its sweeps meanwhile (a sweep runs every second, a
/// renewal every two).
pub async fn renewed(store: &Store, processes: usize, renewals: u32) {
    let now = baton_bot::model::now_ms();
    let past = now
        + (baton_bot::app::LEASE_TTL + baton_bot::app::LEASE_RENEW * renewals).as_millis() as i64;
    eventually("every process to renew its lease", || async {
        let leases = leases(store).await;
        (leases.iter().filter(|l| **l >= past).count() >= processes).then_some(())
    })
    .await;
}

/// How many lease renewals make a lease's whole time to live.
pub fn ttl_in_renewals() -> u32 {
    (baton_bot::app::LEASE_TTL.as_millis() / baton_bot::app::LEASE_RENEW.as_millis()) as u32
}
