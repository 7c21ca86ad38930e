//! The agent's durable state: which tasks it accepted (so a redelivered submit
//! never runs twice) and the final events it has not yet seen acknowledged (the
//! outbox, re-sent after a restart or reconnect). One small file per entry,
//! written to a temporary name, synced and renamed, so a crash never leaves a
//! half-written entry.

use std::io::Write;
use std::path::{Path, PathBuf};

use baton_shared::TaskId;
use baton_shared::protocol::AgentMessage;

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// Accepted task markers.
    seen: PathBuf,
    /// Unacknowledged final events.
    outbox: PathBuf,
    /// Process groups of tasks running now (to clean up after a crash).
    running: PathBuf,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl StateDir {
    /// Opens (creating) the state directory.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let seen = root.join("seen");
        let outbox = root.join("outbox");
        let running = root.join("running");
        std::fs::create_dir_all(&seen)?;
        std::fs::create_dir_all(&outbox)?;
        std::fs::create_dir_all(&running)?;
        Ok(StateDir {
            seen,
            outbox,
            running,
        })
    }

    /// Records the process group a task runs in, until [`StateDir::clear_started`].
    pub fn mark_started(&self, task: TaskId, pgid: u32) -> std::io::Result<()> {
        write_atomic(
            &self.running.join(task.0.to_string()),
            pgid.to_string().as_bytes(),
        )
    }

    /// Forgets a task's process group: it ended.
    pub fn clear_started(&self, task: TaskId) {
        let _ = std::fs::remove_file(self.running.join(task.0.to_string()));
    }

    /// Tasks an earlier process of this agent left running (it crashed or was
    /// killed), with their process groups.
    pub fn leftovers(&self) -> Vec<(TaskId, u32)> {
        let Ok(dir) = std::fs::read_dir(&self.running) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let task = e.file_name().to_str()?.parse().ok()?;
                let pgid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((TaskId(task), pgid))
            })
            .collect()
    }

    /// Records that a task was accepted. Done before answering `accepted`.
    pub fn mark_seen(&self, task: TaskId) -> std::io::Result<()> {
        write_atomic(&self.seen.join(task.0.to_string()), b"")
    }

    /// Whether the task was accepted before (by this process or an earlier one).
    pub fn was_seen(&self, task: TaskId) -> bool {
        self.seen.join(task.0.to_string()).exists()
    }

    /// Forgets the markers of tasks accepted longer than `age` ago that hold
    /// no result and are not running. The bot never re-sends a task that old
    /// (its queue time to live and grace period are far shorter), so the
    /// journal stays small without weakening de-duplication.
    pub fn prune_seen(&self, age: std::time::Duration) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.seen) else {
            return 0;
        };
        let cutoff = std::time::SystemTime::now() - age;
        let mut pruned = 0;
        for entry in dir.flatten() {
            let Some(task) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse().ok())
                .map(TaskId)
            else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            let busy = self.outbox.join(format!("{}.json", task.0)).exists()
                || self.running.join(task.0.to_string()).exists();
            if old && !busy && std::fs::remove_file(entry.path()).is_ok() {
                pruned += 1;
            }
        }
        pruned
    }

    /// Keeps a final event until the bot acknowledges it.
    pub fn put_outbox(&self, task: TaskId, msg: &AgentMessage) -> std::io::Result<()> {
        write_atomic(
            &self.outbox.join(format!("{}.json", task.0)),
            msg.encode().as_bytes(),
        )
    }

    /// Forgets a final event after the bot acknowledged it (if `seq` matches).
    pub fn ack(&self, task: TaskId, seq: u64) -> std::io::Result<bool> {
        let path = self.outbox.join(format!("{}.json", task.0));
        match self.get_outbox(task) {
            Some(msg) if msg.task_seq().is_some_and(|(_, s)| s == seq) => {
                std::fs::remove_file(path)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The held final event of a task.
    pub fn get_outbox(&self, task: TaskId) -> Option<AgentMessage> {
        let text = std::fs::read_to_string(self.outbox.join(format!("{}.json", task.0))).ok()?;
        AgentMessage::decode(&text).ok()
    }

    /// Every held final event, oldest task first. Unreadable entries are logged and skipped.
    pub fn outbox(&self) -> Vec<AgentMessage> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.outbox) else {
            return out;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read_to_string(&path).map(|t| AgentMessage::decode(&t)) {
                Ok(Ok(msg)) => out.push(msg),
                other => {
                    tracing::error!(path = %path.display(), ?other, "unreadable outbox entry kept aside")
                }
            }
        }
        out.sort_by_key(|m| m.task_seq().map(|(t, _)| t.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_survives_reopen_and_forgets_on_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateDir::open(dir.path()).expect("open");
        let msg = AgentMessage::Cancelled {
            task: TaskId(5),
            seq: 3,
        };
        s.mark_seen(TaskId(5)).expect("seen");
        s.put_outbox(TaskId(5), &msg).expect("put");
        let s = StateDir::open(dir.path()).expect("reopen");
        assert!(s.was_seen(TaskId(5)));
        assert!(!s.was_seen(TaskId(6)));
        assert_eq!(s.outbox(), vec![msg]);
        assert!(!s.ack(TaskId(5), 2).expect("ack"), "a stale ack keeps it");
        assert!(s.ack(TaskId(5), 3).expect("ack"));
        assert!(s.outbox().is_empty());
    }

    #[test]
    fn old_markers_are_pruned_unless_their_task_holds_a_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateDir::open(dir.path()).expect("open");
        for t in 1..=3 {
            s.mark_seen(TaskId(t)).expect("seen");
        }
        s.put_outbox(
            TaskId(2),
            &AgentMessage::Cancelled {
                task: TaskId(2),
                seq: 2,
            },
        )
        .expect("put");
        s.mark_started(TaskId(3), 1).expect("started");
        assert_eq!(
            s.prune_seen(std::time::Duration::from_secs(3600)),
            0,
            "all recent"
        );
        assert_eq!(s.prune_seen(std::time::Duration::ZERO), 1);
        assert!(!s.was_seen(TaskId(1)));
        assert!(s.was_seen(TaskId(2)) && s.was_seen(TaskId(3)));
    }

    #[test]
    fn started_tasks_are_remembered_until_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateDir::open(dir.path()).expect("open");
        s.mark_started(TaskId(9), 4242).expect("started");
        let s = StateDir::open(dir.path()).expect("reopen");
        assert_eq!(s.leftovers(), vec![(TaskId(9), 4242)]);
        s.clear_started(TaskId(9));
        assert!(s.leftovers().is_empty());
    }
}
