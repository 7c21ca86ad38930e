//! What the fake Slack saw, kept compactly: for each accepted call, the task
//! it showed (from the message's fallback text, `#ID state: prompt`), the
//! state, and when it arrived.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use baton_testkit::slack::Seen;

/// A Web API method the bot calls for task messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `chat.postMessage`: the message is created.
    Post,
    /// `chat.update`: an edit.
    Update,
}

/// One accepted call that showed a task.
#[derive(Debug, Clone)]
pub struct SlackCall {
    /// Post or edit.
    pub method: Method,
    /// The task it showed.
    pub task: i64,
    /// When the fake Slack received it.
    pub at: Instant,
}

/// Every task-message call the fake Slack accepted, in arrival order.
#[derive(Debug, Default)]
pub struct SlackLog {
    /// The calls.
    pub calls: Vec<SlackCall>,
    /// When each task's terminal state first reached Slack.
    pub final_at: HashMap<i64, Instant>,
    /// Messages posted (created).
    pub posts: usize,
    /// When each task's message was first posted.
    pub posted_at: HashMap<i64, Instant>,
}

/// Locks the log (a poisoned lock still holds usable data).
pub fn lock(m: &Mutex<SlackLog>) -> MutexGuard<'_, SlackLog> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `#12 completed: fix it` → (12, "completed").
fn parse_fallback(text: &str) -> Option<(i64, &str)> {
    let rest = text.strip_prefix('#')?;
    let (id, rest) = rest.split_once(' ')?;
    let (state, _) = rest.split_once(':')?;
    Some((id.parse().ok()?, state))
}

impl SlackLog {
    /// Records a call if Slack accepted it and it showed a task.
    pub fn record(&mut self, call: Seen<'_>) {
        if call.error.is_some() {
            return;
        }
        let method = match call.method {
            "chat.postMessage" if call.body["thread_ts"].is_null() => Method::Post,
            "chat.update" => Method::Update,
            _ => return,
        };
        let Some((task, state)) = call.body["text"].as_str().and_then(parse_fallback) else {
            return;
        };
        let terminal = matches!(state, "completed" | "failed" | "cancelled" | "expired");
        let at = call.at.into_std();
        if terminal {
            self.final_at.entry(task).or_insert(at);
        }
        if method == Method::Post {
            self.posts += 1;
            self.posted_at.entry(task).or_insert(at);
        }
        self.calls.push(SlackCall { method, task, at });
    }

    /// How many of `tasks` had their terminal state reach Slack in `[from, to)`.
    pub fn finals_between(&self, tasks: &[i64], from: Instant, to: Instant) -> usize {
        tasks
            .iter()
            .filter_map(|t| self.final_at.get(t))
            .filter(|t| **t >= from && **t < to)
            .count()
    }

    /// The shortest interval between two writes (post or edit) of one task's
    /// message, over `tasks`, and how many edits each got.
    pub fn write_intervals(&self, tasks: &[i64]) -> (Option<f64>, HashMap<i64, usize>) {
        let mut times: HashMap<i64, Vec<Instant>> = HashMap::new();
        let mut edits: HashMap<i64, usize> = HashMap::new();
        for c in self.calls.iter().filter(|c| tasks.contains(&c.task)) {
            times.entry(c.task).or_default().push(c.at);
            if c.method == Method::Update {
                *edits.entry(c.task).or_default() += 1;
            }
        }
        let min = times
            .values()
            .flat_map(|t| t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()))
            .min_by(f64::total_cmp);
        (min, edits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_text_names_the_task_and_state() {
        assert_eq!(
            parse_fallback("#12 completed: fix: it"),
            Some((12, "completed"))
        );
        assert_eq!(parse_fallback("retried as #3"), None);
    }
}
