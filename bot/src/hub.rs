//! The registry of agents: who is connected, what they serve, their load and circuit.
//!
//! In memory only; it is rebuilt as agents connect. A `std::sync::Mutex`
//! guards it: no `.await` happens while it is held.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Now, on tokio's clock (so paused time in tests moves breakers and grace periods too).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

use baton_shared::protocol::{BotMessage, Hello};

use crate::breaker::{BreakerConfig, BreakerSnapshot, CircuitBreaker, Outcome, Permit};
use crate::sync::lock;

/// Frames one connection's queue holds for its writer. A peer that lets
/// this many pile up is not reading: it is disconnected, not buffered for
/// ever. Above any burst a live agent sees (a submit per slot of its
/// capacity, plus acks and errors).
pub const OUTBOX_MAX_FRAMES: usize = 4096;

/// Frames queued for one connection's writer, at most a bound.
///
/// futures' unbounded channel, not tokio's: tokio's allocates a block of 32
/// slots when the channel is made (1.8 KiB with its shared state, per idle
/// agent); this one allocates a node per queued frame and about 250 bytes
/// up front. The bound is counted beside it.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The channel to the writer.
    tx: futures::channel::mpsc::UnboundedSender<Outgoing>,
    /// How full it is, shared with the writer's end.
    depth: Arc<Depth>,
}

/// How many frames wait in one [`Outbox`], and whether it overflowed.
#[derive(Debug)]
struct Depth {
    /// Frames queued and not yet taken by the writer.
    queued: AtomicUsize,
    /// The most it may hold.
    limit: usize,
    /// Set once, when a frame found it full.
    overflowed: AtomicBool,
    /// Wakes whoever waits for the overflow.
    wake: tokio::sync::Notify,
}

/// The writer's end of an [`Outbox`].
#[derive(Debug)]
pub struct OutboxReceiver {
    /// The channel from the senders.
    rx: futures::channel::mpsc::UnboundedReceiver<Outgoing>,
    /// Shared with the senders.
    depth: Arc<Depth>,
}

/// Resolves when its [`Outbox`] overflowed (see [`OutboxReceiver::overflow`]).
#[derive(Debug, Clone)]
pub struct Overflow(Arc<Depth>);

impl Overflow {
    /// Waits until a frame found the queue full.
    pub async fn wait(&self) {
        while !self.0.overflowed.load(Ordering::SeqCst) {
            self.0.wake.notified().await;
        }
    }
}

/// The writer's end is gone (the connection is closing), or the queue
/// overflowed (the connection is being dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Outbox {
    /// A queue for one connection's writer, of [`OUTBOX_MAX_FRAMES`].
    pub fn new() -> (Outbox, OutboxReceiver) {
        Self::bounded(OUTBOX_MAX_FRAMES)
    }

    /// A queue of at most `limit` frames.
    pub fn bounded(limit: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let depth = Arc::new(Depth {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        });
        (
            Outbox {
                tx,
                depth: depth.clone(),
            },
            OutboxReceiver { rx, depth },
        )
    }

    /// Queues a frame; Err when the connection's writer has stopped or the
    /// queue is full (then the connection is dropped: see [`Overflow`]).
    pub fn send(&self, out: Outgoing) -> Result<(), Closed> {
        let d = &self.depth;
        if d.overflowed.load(Ordering::Relaxed) {
            return Err(Closed);
        }
        if d.queued.fetch_add(1, Ordering::SeqCst) >= d.limit {
            d.queued.fetch_sub(1, Ordering::SeqCst);
            if !d.overflowed.swap(true, Ordering::SeqCst) {
                d.wake.notify_one();
            }
            return Err(Closed);
        }
        self.tx.unbounded_send(out).map_err(|_| {
            d.queued.fetch_sub(1, Ordering::SeqCst);
            Closed
        })
    }
}

impl OutboxReceiver {
    /// What resolves when the queue overflows: its peer does not read.
    pub fn overflow(&self) -> Overflow {
        Overflow(self.depth.clone())
    }
}

impl futures::Stream for OutboxReceiver {
    type Item = Outgoing;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Outgoing>> {
        let polled = std::pin::Pin::new(&mut self.rx).poll_next(cx);
        if let std::task::Poll::Ready(Some(_)) = &polled {
            self.depth.queued.fetch_sub(1, Ordering::SeqCst);
        }
        polled
    }
}

/// What a connection's writer is asked to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Send this frame.
    Frame(BotMessage),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

/// A live connection of an agent.
#[derive(Debug)]
pub struct Conn {
    /// Tells this connection apart from an older or newer one of the same agent.
    pub id: u64,
    /// The writer's queue.
    pub tx: Outbox,
    /// Tasks the agent runs at once.
    pub capacity: u32,
    /// Projects served, with their per-project concurrency.
    pub projects: HashMap<String, u32>,
    /// The agent said it is shutting down.
    pub draining: bool,
    /// The agent answered `busy`: it is treated as full until its next event,
    /// whatever the bot's count of its free slots says (the two counts can
    /// differ for a moment; without this the task would go straight back).
    pub full_until_heard: bool,
    /// Its tasks are being reconciled with its hello: it takes no new task
    /// until [`Hub::reconciled`] (one handed out meanwhile would be taken for
    /// a task the agent came back without).
    pub reconciling: bool,
    /// The agent's build.
    pub version: String,
}

/// Everything the bot knows about one agent.
#[derive(Debug)]
pub struct AgentEntry {
    /// The live connection, if any.
    pub conn: Option<Conn>,
    /// Its circuit breaker; it survives reconnects.
    pub breaker: CircuitBreaker,
    /// Tasks dispatched to it or running on it, with their project and breaker
    /// permit. Changed only through `hold`, `adopt` and `drop_task`, which keep
    /// `per_project` in step.
    pub tasks: HashMap<i64, (String, Option<Permit>)>,
    /// How many of `tasks` each project has (routing reads it for every task).
    per_project: HashMap<String, u32>,
    /// When a frame last arrived from it.
    pub last_seen: Option<Instant>,
    /// When it disconnected (for the grace period).
    pub disconnected_at: Option<Instant>,
    /// Projects its last hello announced that its key does not grant.
    pub refused: Vec<String>,
}

impl AgentEntry {
    fn running_in(&self, project: &str) -> u32 {
        self.per_project.get(project).copied().unwrap_or(0)
    }

    /// Records that it holds `task` of `project` with `permit` (replacing
    /// what it held for that task).
    fn hold(&mut self, task: i64, project: &str, permit: Permit) {
        self.drop_task(task);
        self.tasks.insert(task, (project.to_owned(), Some(permit)));
        *self.per_project.entry(project.to_owned()).or_default() += 1;
    }

    /// Records that it holds `task` of `project`, known from the database or
    /// its hello (no permit), unless it already does.
    fn adopt(&mut self, task: i64, project: &str) {
        if let std::collections::hash_map::Entry::Vacant(v) = self.tasks.entry(task) {
            v.insert((project.to_owned(), None));
            *self.per_project.entry(project.to_owned()).or_default() += 1;
        }
    }

    /// Forgets `task`; its breaker permit, if it held it.
    fn drop_task(&mut self, task: i64) -> Option<Option<Permit>> {
        let (project, permit) = self.tasks.remove(&task)?;
        if let Some(n) = self.per_project.get_mut(&project) {
            *n -= 1;
            if *n == 0 {
                self.per_project.remove(&project);
            }
        }
        Some(permit)
    }

    /// Free slots for `project` now (0 when disconnected, draining or not serving it).
    pub fn free_for(&self, project: &str) -> u32 {
        let Some(conn) = &self.conn else { return 0 };
        if conn.draining || conn.full_until_heard || conn.reconciling {
            return 0;
        }
        let Some(per_project) = conn.projects.get(project) else {
            return 0;
        };
        let total_free = conn.capacity.saturating_sub(self.tasks.len() as u32);
        let project_free = per_project.saturating_sub(self.running_in(project));
        total_free.min(project_free)
    }
}

/// Why a project's queued tasks are waiting, for their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// No connected agent serves the project.
    NoAgent,
    /// Agents serve it, but they are all at capacity.
    Busy,
    /// The agents that serve it have their circuit open.
    CircuitOpen,
}

impl WaitReason {
    /// The reason as shown in the task's message.
    pub fn describe(self) -> &'static str {
        match self {
            WaitReason::NoAgent => {
                "no agent serving this project is connected; it runs when one connects"
            }
            WaitReason::Busy => {
                "every agent serving this project is busy; it runs when one frees up"
            }
            WaitReason::CircuitOpen => {
                "the agents serving this project are failing and paused (circuit open); it runs when one recovers"
            }
        }
    }
}

/// A routing decision: the agent, and the breaker permit taken for it.
#[derive(Debug)]
pub struct Route {
    /// The agent's name.
    pub agent: String,
    /// The connection's id.
    pub conn_id: u64,
    /// The connection's writer.
    pub tx: Outbox,
}

/// The registry.
#[derive(Debug)]
pub struct Hub {
    /// Agents by name.
    agents: Mutex<HashMap<String, AgentEntry>>,
    /// Breaker settings for new entries.
    breaker: BreakerConfig,
    /// Next connection id.
    next_conn: std::sync::atomic::AtomicU64,
    /// Next placeholder id for a task routed before it is written (negative).
    next_placeholder: std::sync::atomic::AtomicI64,
}

/// Result of trying to register a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Register {
    /// Registered with this connection id.
    Ok(u64),
    /// Another live connection holds the name.
    Duplicate,
}

impl Hub {
    /// An empty registry.
    pub fn new(breaker: BreakerConfig) -> Self {
        Hub {
            agents: Mutex::new(HashMap::new()),
            breaker,
            next_conn: 1.into(),
            next_placeholder: (-1).into(),
        }
    }

    fn entry<'a>(
        &self,
        map: &'a mut HashMap<String, AgentEntry>,
        name: &str,
    ) -> &'a mut AgentEntry {
        map.entry(name.to_owned()).or_insert_with(|| AgentEntry {
            conn: None,
            breaker: CircuitBreaker::new(self.breaker.clone(), now()),
            tasks: HashMap::new(),
            per_project: HashMap::new(),
            last_seen: None,
            disconnected_at: None,
            refused: Vec::new(),
        })
    }

    /// Whether the agent has a live connection.
    pub fn is_connected(&self, name: &str) -> bool {
        lock(&self.agents)
            .get(name)
            .is_some_and(|e| e.conn.is_some())
    }

    /// Registers a connection after its hello. The first live connection wins:
    /// a second one with the same key is refused, so two processes sharing a
    /// key cannot kick each other off in a loop.
    pub fn register(&self, name: &str, tx: Outbox, hello: &Hello) -> Register {
        let mut map = lock(&self.agents);
        let entry = self.entry(&mut map, name);
        if entry.conn.is_some() {
            return Register::Duplicate;
        }
        let id = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        entry.conn = Some(Conn {
            id,
            tx,
            capacity: hello.capacity,
            projects: hello
                .projects
                .iter()
                .map(|p| (p.name.to_string(), p.max_concurrent.max(1)))
                .collect(),
            draining: false,
            full_until_heard: false,
            reconciling: true,
            version: hello.agent_version.clone(),
        });
        entry.last_seen = Some(now());
        entry.disconnected_at = None;
        Register::Ok(id)
    }

    /// Records the projects the agent announced that its key does not
    /// grant (never routed to it; shown in health).
    pub fn set_refused(&self, name: &str, projects: Vec<String>) {
        let mut map = lock(&self.agents);
        self.entry(&mut map, name).refused = projects;
    }

    /// Removes a connection (only if it is still the registered one).
    pub fn unregister(&self, name: &str, conn_id: u64) {
        let mut map = lock(&self.agents);
        if let Some(e) = map.get_mut(name)
            && e.conn.as_ref().is_some_and(|c| c.id == conn_id)
        {
            e.conn = None;
            e.disconnected_at = Some(now());
        }
    }

    /// Sends a frame to the agent's live connection; false if it has none.
    pub fn send(&self, name: &str, msg: BotMessage) -> bool {
        let map = lock(&self.agents);
        match map.get(name).and_then(|e| e.conn.as_ref()) {
            Some(c) => c.tx.send(Outgoing::Frame(msg)).is_ok(),
            None => false,
        }
    }

    /// Closes the agent's live connection with a code.
    pub fn close(&self, name: &str, code: u16, reason: &str) {
        let map = lock(&self.agents);
        if let Some(c) = map.get(name).and_then(|e| e.conn.as_ref()) {
            let _ = c.tx.send(Outgoing::Close(code, reason.to_owned()));
        }
    }

    /// Closes every live connection (shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for e in lock(&self.agents).values() {
            if let Some(c) = &e.conn {
                let _ = c.tx.send(Outgoing::Close(code, reason.to_owned()));
            }
        }
    }

    /// Notes that a frame arrived from the agent.
    pub fn seen(&self, name: &str) {
        if let Some(e) = lock(&self.agents).get_mut(name) {
            e.last_seen = Some(now());
        }
    }

    /// The agent answered `busy`: no task goes to it until [`Hub::heard_from`].
    pub fn set_full(&self, name: &str) {
        if let Some(c) = lock(&self.agents)
            .get_mut(name)
            .and_then(|e| e.conn.as_mut())
        {
            c.full_until_heard = true;
        }
    }

    /// The agent's tasks are reconciled with its hello: it may take new ones.
    pub fn reconciled(&self, name: &str) {
        if let Some(c) = lock(&self.agents)
            .get_mut(name)
            .and_then(|e| e.conn.as_mut())
        {
            c.reconciling = false;
        }
    }

    /// An event arrived from the agent: a `busy` it answered before no longer holds.
    pub fn heard_from(&self, name: &str) {
        if let Some(c) = lock(&self.agents)
            .get_mut(name)
            .and_then(|e| e.conn.as_mut())
        {
            c.full_until_heard = false;
        }
    }

    /// Marks the agent as draining: no new tasks.
    pub fn set_draining(&self, name: &str) {
        if let Some(c) = lock(&self.agents)
            .get_mut(name)
            .and_then(|e| e.conn.as_mut())
        {
            c.draining = true;
        }
    }

    /// Why a task of `project` would wait now; None when an agent could take it.
    pub fn why_waiting(&self, project: &str) -> Option<WaitReason> {
        pick(&mut lock(&self.agents), project, now()).err()
    }

    /// Picks the least loaded agent that can take a task of `project` now and
    /// takes a breaker permit for it. Err says why none can.
    pub fn route(&self, project: &str, task: i64) -> Result<Route, WaitReason> {
        let now = now();
        let mut map = lock(&self.agents);
        let name = pick(&mut map, project, now)?;
        let e = map.get_mut(&name).ok_or(WaitReason::NoAgent)?;
        let permit = e.breaker.try_acquire(now).ok_or(WaitReason::CircuitOpen)?;
        let conn = e.conn.as_ref().ok_or(WaitReason::NoAgent)?;
        let route = Route {
            agent: name.clone(),
            conn_id: conn.id,
            tx: conn.tx.clone(),
        };
        e.hold(task, project, permit);
        Ok(route)
    }

    /// Routes a task that is not written yet: like [`Hub::route`], with the
    /// slot held under a placeholder id until [`Hub::bind_new`] names the task
    /// (or [`Hub::release`] gives it back).
    pub fn route_new(&self, project: &str) -> Result<(Route, i64), WaitReason> {
        let placeholder = self
            .next_placeholder
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Ok((self.route(project, placeholder)?, placeholder))
    }

    /// The task routed under `placeholder` was written as `task`.
    pub fn bind_new(&self, agent: &str, placeholder: i64, task: i64) {
        if let Some(e) = lock(&self.agents).get_mut(agent)
            && let Some(held) = e.tasks.remove(&placeholder)
        {
            e.tasks.insert(task, held);
        }
    }

    /// Records that the agent holds a task (reconciliation, restart recovery).
    pub fn adopt(&self, name: &str, task: i64, project: &str) {
        let mut map = lock(&self.agents);
        let e = self.entry(&mut map, name);
        if e.conn.is_none() && e.disconnected_at.is_none() {
            // Known only from the database: the grace period starts now.
            e.disconnected_at = Some(now());
        }
        e.adopt(task, project);
    }

    /// Releases a task from its agent and records its outcome in the breaker.
    pub fn release(&self, name: &str, task: i64, outcome: Outcome) {
        let mut map = lock(&self.agents);
        if let Some(e) = map.get_mut(name)
            && let Some(permit) = e.drop_task(task)
        {
            let now = now();
            match permit {
                Some(p) => e.breaker.record(p, outcome, now),
                None if outcome != Outcome::Ignored => {
                    // A task adopted after a restart has no permit; count it as a normal call.
                    if let Some(p) = e.breaker.try_acquire(now) {
                        e.breaker.record(p, outcome, now);
                    }
                }
                None => {}
            }
        }
    }

    /// Whether the agent holds this task.
    pub fn holds(&self, name: &str, task: i64) -> bool {
        lock(&self.agents)
            .get(name)
            .is_some_and(|e| e.tasks.contains_key(&task))
    }

    /// Closes an agent's circuit.
    pub fn reset_breaker(&self, name: &str) -> bool {
        let mut map = lock(&self.agents);
        match map.get_mut(name) {
            Some(e) => {
                e.breaker.reset(now());
                true
            }
            None => false,
        }
    }

    /// Agents disconnected for longer than `grace`, with their tasks.
    pub fn lost_agents(&self, grace: std::time::Duration) -> Vec<(String, Vec<i64>)> {
        let now = now();
        lock(&self.agents)
            .iter()
            .filter(|(_, e)| e.conn.is_none() && !e.tasks.is_empty())
            .filter(|(_, e)| {
                e.disconnected_at
                    .is_none_or(|d| now.duration_since(d) >= grace)
            })
            .map(|(n, e)| (n.clone(), e.tasks.keys().copied().collect()))
            .collect()
    }

    /// Projects some connected agent could take work for now.
    pub fn projects_with_room(&self) -> HashSet<String> {
        let map = lock(&self.agents);
        let mut out = HashSet::new();
        for e in map.values() {
            if let Some(c) = &e.conn {
                for p in c.projects.keys() {
                    if e.free_for(p) > 0 {
                        out.insert(p.clone());
                    }
                }
            }
        }
        out
    }

    /// A view of every agent for `/baton-admin health` and metrics.
    pub fn snapshot(&self) -> Vec<AgentStatus> {
        let now = now();
        let mut map = lock(&self.agents);
        let mut out: Vec<AgentStatus> = map
            .iter_mut()
            .map(|(name, e)| AgentStatus {
                name: name.clone(),
                connected: e.conn.is_some(),
                draining: e.conn.as_ref().is_some_and(|c| c.draining),
                breaker: e.breaker.snapshot(now),
                running: e.tasks.len() as u32,
                capacity: e.conn.as_ref().map_or(0, |c| c.capacity),
                projects: e
                    .conn
                    .as_ref()
                    .map(|c| {
                        let mut p: Vec<_> = c.projects.keys().cloned().collect();
                        p.sort();
                        p
                    })
                    .unwrap_or_default(),
                last_seen_secs: e.last_seen.map(|t| now.duration_since(t).as_secs()),
                refused: e.refused.clone(),
                version: e
                    .conn
                    .as_ref()
                    .map(|c| c.version.clone())
                    .unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Why a task of `project` pinned to agent `name` (it holds the task's
    /// session) would wait now; None when that agent could take it.
    pub fn why_waiting_for(&self, name: &str, project: &str) -> Option<WaitReason> {
        let mut map = lock(&self.agents);
        pick_one(&mut map, name, project, now()).err()
    }

    /// Like [`Hub::route`], to agent `name` only (it holds the task's session).
    pub fn route_to(&self, name: &str, project: &str, task: i64) -> Result<Route, WaitReason> {
        let now = now();
        let mut map = lock(&self.agents);
        pick_one(&mut map, name, project, now)?;
        let e = map.get_mut(name).ok_or(WaitReason::NoAgent)?;
        let permit = e.breaker.try_acquire(now).ok_or(WaitReason::CircuitOpen)?;
        let conn = e.conn.as_ref().ok_or(WaitReason::NoAgent)?;
        let route = Route {
            agent: name.to_owned(),
            conn_id: conn.id,
            tx: conn.tx.clone(),
        };
        e.hold(task, project, permit);
        Ok(route)
    }

    /// Like [`Hub::route_new`], to agent `name` only.
    pub fn route_new_to(&self, name: &str, project: &str) -> Result<(Route, i64), WaitReason> {
        let placeholder = self
            .next_placeholder
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Ok((self.route_to(name, project, placeholder)?, placeholder))
    }
}

/// Whether agent `name` can take a task of `project` now (connected, serving
/// it, with room, its circuit letting a task through), or why not.
fn pick_one(
    map: &mut HashMap<String, AgentEntry>,
    name: &str,
    project: &str,
    now: Instant,
) -> Result<(), WaitReason> {
    let e = map.get_mut(name).ok_or(WaitReason::NoAgent)?;
    let Some(conn) = &e.conn else {
        return Err(WaitReason::NoAgent);
    };
    if !conn.projects.contains_key(project) || conn.draining {
        return Err(WaitReason::NoAgent);
    }
    if e.free_for(project) == 0 {
        return Err(WaitReason::Busy);
    }
    if !e.breaker.would_allow(now) {
        return Err(WaitReason::CircuitOpen);
    }
    Ok(())
}

/// The least loaded connected agent that serves `project`, has room and whose
/// circuit would let a task through now; or why there is none (no agent
/// serves it, every circuit that could take it is open, or all are busy). Among
/// idle agents the first found is taken; ties among busy ones go by name.
fn pick(
    map: &mut HashMap<String, AgentEntry>,
    project: &str,
    now: Instant,
) -> Result<String, WaitReason> {
    let mut serving = false;
    let mut open = false;
    let mut best: Option<(&String, u32, u32)> = None; // name, load, capacity
    for (name, e) in map.iter_mut() {
        let Some(conn) = &e.conn else { continue };
        if !conn.projects.contains_key(project) || conn.draining {
            continue;
        }
        serving = true;
        if e.free_for(project) == 0 {
            continue;
        }
        if !e.breaker.would_allow(now) {
            open = true;
            continue;
        }
        let load = e.tasks.len() as u32;
        let cap = conn.capacity;
        // Least loaded first: compare load/capacity without floats.
        let better = match best {
            None => true,
            Some((bn, bl, bc)) => (load as u64 * bc as u64, name) < (bl as u64 * cap as u64, bn),
        };
        if better {
            best = Some((name, load, cap));
        }
        // An idle agent is as little loaded as can be: stop looking (with
        // 10,000 agents the full scan cost a millisecond per task).
        if load == 0 {
            break;
        }
    }
    match best {
        Some((name, _, _)) => Ok(name.clone()),
        None if !serving => Err(WaitReason::NoAgent),
        None if open => Err(WaitReason::CircuitOpen),
        None => Err(WaitReason::Busy),
    }
}

/// One agent as `/baton-admin health` shows it.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    /// Its name.
    pub name: String,
    /// Whether it has a live connection.
    pub connected: bool,
    /// Whether it is shutting down.
    pub draining: bool,
    /// Its circuit.
    pub breaker: BreakerSnapshot,
    /// Tasks dispatched to or running on it.
    pub running: u32,
    /// Tasks it runs at once.
    pub capacity: u32,
    /// Projects it serves (while connected).
    pub projects: Vec<String>,
    /// Seconds since a frame last arrived.
    pub last_seen_secs: Option<u64>,
    /// Projects it announced that its key does not grant (refused).
    pub refused: Vec<String>,
    /// Its build.
    pub version: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use baton_shared::ids::ProjectName;
    use baton_shared::protocol::{Hello, ProjectInfo};

    use super::*;

    /// A hello from an agent of `capacity` serving `projects` (name, at most at once).
    pub(crate) fn hello(capacity: u32, projects: &[(&str, u32)]) -> Hello {
        Hello {
            protocol: baton_shared::protocol::PROTOCOL_VERSION,
            agent_version: "test".into(),
            capacity,
            projects: projects
                .iter()
                .map(|(name, max)| ProjectInfo {
                    name: ProjectName::new(*name).expect("name"),
                    max_concurrent: *max,
                })
                .collect(),
            running: Vec::new(),
            held_results: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_frames_and_says_so_once() {
        use futures::StreamExt;
        let (tx, mut rx) = Outbox::bounded(2);
        let overflow = rx.overflow();
        let frame = || {
            Outgoing::Frame(BotMessage::Cancel {
                task: baton_shared::TaskId(1),
            })
        };
        assert_eq!(tx.send(frame()), Ok(()));
        assert_eq!(tx.send(frame()), Ok(()));
        // Taken by the writer: room again.
        assert!(rx.next().await.is_some());
        assert_eq!(tx.send(frame()), Ok(()));
        assert_eq!(
            tx.send(frame()),
            Err(Closed),
            "full: the peer does not read"
        );
        overflow.wait().await;
        assert!(rx.next().await.is_some());
        assert_eq!(tx.send(frame()), Err(Closed), "overflowed for good");
        drop(rx);
        let (tx, rx) = Outbox::bounded(2);
        drop(rx);
        assert_eq!(tx.send(frame()), Err(Closed), "the writer is gone");
    }

    #[test]
    fn slots_per_project_follow_routes_adoptions_and_releases() {
        let hub = Hub::new(BreakerConfig::default());
        let (tx, _rx) = Outbox::new();
        assert!(matches!(
            hub.register("a", tx, &hello(3, &[("web", 2), ("api", 3)])),
            Register::Ok(_)
        ));
        let free = |p: &str| lock(&hub.agents)["a"].free_for(p);
        assert_eq!((free("web"), free("api")), (0, 0), "not reconciled yet");
        assert!(hub.route("web", 1).is_err());
        assert!(hub.projects_with_room().is_empty());
        hub.reconciled("a");
        assert_eq!((free("web"), free("api")), (2, 3));

        hub.route("web", 1).expect("a slot");
        hub.adopt("a", 2, "web");
        hub.adopt("a", 2, "web"); // known twice, held once
        assert_eq!(
            (free("web"), free("api")),
            (0, 1),
            "web full; one slot left"
        );
        assert_eq!(hub.route("web", 3).err(), Some(WaitReason::Busy));
        hub.route("api", 4).expect("the last slot");
        assert_eq!(free("api"), 0, "the agent is full");

        hub.release("a", 2, Outcome::Ignored);
        hub.release("a", 2, Outcome::Ignored); // released twice, freed once
        assert_eq!((free("web"), free("api")), (1, 1));
        hub.release("a", 1, Outcome::Ignored);
        hub.release("a", 4, Outcome::Ignored);
        assert_eq!((free("web"), free("api")), (2, 3));
        assert!(lock(&hub.agents)["a"].per_project.is_empty());
    }

    #[test]
    fn a_task_routed_before_it_is_written_keeps_its_slot_under_its_new_id() {
        let hub = Hub::new(BreakerConfig::default());
        let (tx, _rx) = Outbox::new();
        hub.register("a", tx, &hello(2, &[("web", 2)]));
        hub.reconciled("a");
        let free = || lock(&hub.agents)["a"].free_for("web");

        let (route, placeholder) = hub.route_new("web").expect("a slot");
        assert!(placeholder < 0, "placeholders never collide with task ids");
        let (_, refused) = hub.route_new("web").expect("the other slot");
        assert_eq!(free(), 0);
        // Refused after routing (rate limit): the slot comes back.
        hub.release(&route.agent, refused, Outcome::Ignored);
        assert_eq!(free(), 1);

        hub.bind_new(&route.agent, placeholder, 7);
        assert!(hub.holds("a", 7) && !hub.holds("a", placeholder));
        assert_eq!(free(), 1, "still held, under its id");
        hub.release("a", 7, Outcome::Success);
        assert_eq!(free(), 2);
    }
}
