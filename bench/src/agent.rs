//! Simulated agents: real WebSocket clients speaking protocol v1 with
//! baton-shared's types, many per process. Each one says hello, then runs
//! every task it is sent the way it is told (accept, N progress events,
//! complete), and can be frozen: it stops reading and writing but keeps its
//! socket open, like a stopped process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_shared::protocol::{
    AgentMessage, BotMessage, Hello, PROTOCOL_VERSION, ProjectInfo, TaskResult,
};
use baton_shared::{ProjectName, TaskId};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Read buffer of each simulated agent's socket. tungstenite's default
/// (128 KiB, zero-filled on first read) would cost the benchmark 1.3 GB at
/// 10,000 agents; frames here are small.
const CLIENT_READ_BUFFER: usize = 4096;
/// How long the bot has to answer a hello with a welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// What an agent does with each task it is sent.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    /// Progress events between `accepted` and `completed` (steps and output, alternating).
    pub events: u32,
    /// Pause between two events; None sends the whole lifecycle at once.
    pub spacing: Option<Duration>,
}

/// Measurements the agents and the load generator share.
#[derive(Debug)]
pub struct Probe {
    /// Command number → when it was sent.
    sent: Mutex<HashMap<u64, Instant>>,
    /// Command number → when its task frame reached an agent.
    received: Mutex<HashMap<u64, Instant>>,
    /// Task id → command number.
    task_of: Mutex<HashMap<i64, u64>>,
    /// Task id → when the agent sent its final event.
    ended: Mutex<HashMap<i64, Instant>>,
    /// `submit` frames received.
    pub submits: AtomicU64,
    /// `ack` frames received.
    pub acks: AtomicU64,
    /// `error` frames received (the bot refused something; should stay 0).
    pub errors: AtomicU64,
    /// When an agent last received a WebSocket ping (it answers at once).
    last_ping: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The prompt of command number `n`; agents read `n` back from it.
pub fn prompt(n: u64) -> String {
    format!("bench {n}: fix the flaky login test and explain the cause")
}

/// The number of the command whose prompt is `prompt`.
pub fn command_number(prompt: &str) -> Option<u64> {
    prompt
        .strip_prefix("bench ")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

impl Probe {
    /// An empty probe.
    pub fn new() -> Arc<Probe> {
        Arc::new(Probe {
            sent: Mutex::new(HashMap::new()),
            received: Mutex::new(HashMap::new()),
            task_of: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
            submits: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_ping: Mutex::new(None),
        })
    }

    /// Notes that command `n` is being sent now.
    pub fn sending(&self, n: u64) {
        lock(&self.sent).insert(n, Instant::now());
    }

    fn on_submit(&self, task: i64, prompt: &str) {
        let now = Instant::now();
        self.submits.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = command_number(prompt) {
            lock(&self.received).insert(n, now);
            lock(&self.task_of).insert(task, n);
        }
    }

    /// When an agent last received a ping.
    pub fn last_ping(&self) -> Option<Instant> {
        *lock(&self.last_ping)
    }

    fn on_end(&self, task: i64) {
        lock(&self.ended).insert(task, Instant::now());
    }

    /// Command → task frame latencies, in ms, of commands sent in `[from, to)`.
    pub fn dispatch_ms(&self, from: Instant, to: Instant) -> Vec<f64> {
        let sent = lock(&self.sent);
        let received = lock(&self.received);
        sent.iter()
            .filter(|(_, t)| **t >= from && **t < to)
            .filter_map(|(n, t)| received.get(n).map(|r| (*r - *t).as_secs_f64() * 1e3))
            .collect()
    }

    /// Commands sent in `[from, to)`, and how many of them reached an agent.
    pub fn delivered(&self, from: Instant, to: Instant) -> (usize, usize) {
        let sent = lock(&self.sent);
        let received = lock(&self.received);
        let mine: Vec<_> = sent
            .iter()
            .filter(|(_, t)| **t >= from && **t < to)
            .collect();
        let got = mine
            .iter()
            .filter(|(n, _)| received.contains_key(n))
            .count();
        (mine.len(), got)
    }

    /// How many commands were sent.
    pub fn sent_count(&self) -> usize {
        lock(&self.sent).len()
    }

    /// The commands sent in `[from, to)` that the bot refused after their
    /// acknowledgement (through their `response_url`), and the first reason.
    pub fn refused_between(&self, from: Instant, to: Instant) -> (u64, Option<String>) {
        let sent = lock(&self.sent);
        let mut first = None;
        let mut count = 0;
        for (n, _) in sent.iter().filter(|(_, t)| **t >= from && **t < to) {
            if let Some(why) = crate::client::late_answer(*n) {
                count += 1;
                first.get_or_insert(why);
            }
        }
        (count, first)
    }

    /// How many of the commands sent were refused after their acknowledgement.
    pub fn refused_count(&self) -> usize {
        lock(&self.sent)
            .keys()
            .filter(|n| crate::client::late_answer(**n).is_some())
            .count()
    }

    /// Every task that reached an agent.
    pub fn tasks(&self) -> Vec<i64> {
        lock(&self.task_of).keys().copied().collect()
    }

    /// How many tasks reached an agent.
    pub fn received_count(&self) -> usize {
        lock(&self.received).len()
    }

    /// When the last task frame arrived.
    pub fn last_received(&self) -> Option<Instant> {
        lock(&self.received).values().max().copied()
    }

    /// Tasks whose final event was sent, with when.
    pub fn ended(&self) -> HashMap<i64, Instant> {
        lock(&self.ended).clone()
    }

    /// When the command that created each of `tasks` was sent.
    pub fn sent_at(&self, tasks: &[i64]) -> HashMap<i64, Instant> {
        let sent = lock(&self.sent);
        let task_of = lock(&self.task_of);
        tasks
            .iter()
            .filter_map(|t| Some((*t, *sent.get(task_of.get(t)?)?)))
            .collect()
    }

    /// Task ids of commands sent in `[from, to)`.
    pub fn tasks_sent_between(&self, from: Instant, to: Instant) -> Vec<i64> {
        let sent = lock(&self.sent);
        lock(&self.task_of)
            .iter()
            .filter(|(_, n)| sent.get(n).is_some_and(|t| *t >= from && *t < to))
            .map(|(task, _)| *task)
            .collect()
    }
}

/// A connected simulated agent.
#[derive(Debug)]
pub struct Agent {
    /// Freezes it: it stops reading and writing, the socket stays open.
    freeze: Option<oneshot::Sender<()>>,
    /// Its reader; dropping the agent aborts it and closes the socket.
    reader: tokio::task::JoinHandle<()>,
    /// Its writer.
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Agent {
    /// Connects as agent `key` serving the bench project with `capacity`,
    /// sends hello, waits for welcome, then works until dropped.
    pub async fn connect(
        addr: SocketAddr,
        key: &str,
        capacity: u32,
        work: Work,
        probe: Arc<Probe>,
    ) -> anyhow::Result<Agent> {
        let mut req = format!("ws://{addr}/agents").into_client_request()?;
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {key}").parse()?,
        );
        let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
            .await
            .context("WebSocket connect failed")?;
        let (mut sink, mut stream) = ws.split();
        let hello = AgentMessage::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "baton-bench".into(),
            capacity,
            projects: vec![ProjectInfo {
                name: ProjectName::new(crate::bot::PROJECT)?,
                max_concurrent: capacity,
            }],
            running: Vec::new(),
            held_results: Vec::new(),
        });
        sink.send(Message::Text(hello.encode().into())).await?;
        match tokio::time::timeout(WELCOME_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match BotMessage::decode(&t) {
                Ok(BotMessage::Welcome { .. }) => {}
                other => bail!("expected a welcome, got {other:?}"),
            },
            other => bail!("no welcome: {other:?}"),
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<AgentMessage>();
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if sink.feed(Message::Text(msg.encode().into())).await.is_err() {
                    return;
                }
                // Everything already queued goes out in the same flush.
                while let Ok(msg) = rx.try_recv() {
                    if sink.feed(Message::Text(msg.encode().into())).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        let (freeze, mut frozen) = oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut frozen => {
                        // Keep the socket open, never touch it again.
                        std::future::pending::<()>().await;
                    }
                    frame = stream.next() => {
                        let Some(Ok(frame)) = frame else { return };
                        let text = match frame {
                            Message::Text(text) => text,
                            // tungstenite queues the pong; the next read sends it.
                            Message::Ping(_) => {
                                *lock(&probe.last_ping) = Some(Instant::now());
                                continue;
                            }
                            _ => continue,
                        };
                        match BotMessage::decode(&text) {
                            Ok(BotMessage::Submit(s)) => {
                                probe.on_submit(s.task.0, &s.prompt);
                                run_task(s.task, work, tx.clone(), probe.clone());
                            }
                            Ok(BotMessage::Ack { .. }) => {
                                probe.acks.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(BotMessage::Error { .. }) | Err(_) => {
                                probe.errors.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                        }
                    }
                }
            }
        });
        Ok(Agent {
            freeze: Some(freeze),
            reader,
            writer,
        })
    }

    /// Stops reading and writing; the socket stays open. Returns when the
    /// reader has stopped.
    pub fn freeze(&mut self) {
        if let Some(f) = self.freeze.take() {
            let _ = f.send(());
        }
        self.writer.abort();
    }
}

/// Sends a task's lifecycle: accepted, `events` progress events, completed.
fn run_task(task: TaskId, work: Work, tx: mpsc::UnboundedSender<AgentMessage>, probe: Arc<Probe>) {
    let event = move |seq: u64| {
        if seq.is_multiple_of(2) {
            AgentMessage::Step {
                task,
                seq,
                text: format!("Edit src/module_{seq}.rs"),
            }
        } else {
            AgentMessage::Output {
                task,
                seq,
                text: format!("test module_{seq}::works ... ok\n"),
            }
        }
    };
    let completed = move |seq: u64| AgentMessage::Completed {
        task,
        seq,
        result: TaskResult {
            text: "Fixed: the login test waited on a timer instead of the login event.".into(),
            duration_ms: Some(1),
            ..TaskResult::default()
        },
    };
    let last = u64::from(work.events) + 2;
    match work.spacing {
        None => {
            let _ = tx.send(AgentMessage::Accepted { task, seq: 1 });
            for seq in 2..last {
                let _ = tx.send(event(seq));
            }
            probe.on_end(task.0);
            let _ = tx.send(completed(last));
        }
        Some(gap) => {
            tokio::spawn(async move {
                let _ = tx.send(AgentMessage::Accepted { task, seq: 1 });
                for seq in 2..last {
                    tokio::time::sleep(gap).await;
                    let _ = tx.send(event(seq));
                }
                tokio::time::sleep(gap).await;
                probe.on_end(task.0);
                let _ = tx.send(completed(last));
            });
        }
    }
}

/// Connects agents `from..to` (keys from [`crate::bot::agent_key`]), at most
/// `parallel` handshakes at once.
pub async fn connect_many(
    addr: SocketAddr,
    range: std::ops::Range<usize>,
    capacity: u32,
    work: Work,
    probe: &Arc<Probe>,
    parallel: usize,
) -> anyhow::Result<Vec<Agent>> {
    let agents: Vec<anyhow::Result<Agent>> = futures::stream::iter(range)
        .map(|i| {
            let probe = probe.clone();
            async move {
                Agent::connect(addr, &crate::bot::agent_key(i), capacity, work, probe)
                    .await
                    .with_context(|| format!("agent {i}"))
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    agents.into_iter().collect()
}
