//! Parses the OpenAI Codex CLI's `codex exec --json` output (JSON Lines) into progress for Slack.
//!
//! The stream: `thread.started` (the thread id, also printed again by `codex exec resume`),
//! `turn.started`, items (`item.started` → `item.updated` → `item.completed`, matched on
//! `item.id`), then `turn.completed` with the usage or `turn.failed` with the error. The item
//! type is the tool: `command_execution`, `file_change`, `mcp_tool_call`, `web_search`,
//! `todo_list`; `agent_message` items are the model's text, the last one the answer; `reasoning`
//! items are not shown; `error` items are warnings. Top-level `error` events are retry notices
//! (`Reconnecting... 2/5 (…)`) or the fatal message. Codex reports no cost; on a resumed thread
//! its usage covers the whole thread.

use std::collections::HashSet;

use serde_json::Value;

use crate::stream::{
    EventParser, Leftovers, RunResult, StreamEvent, first_line, mentions_auth_failure, nonblank,
    parse_line, relative, shell_body, step_text, todo_steps,
};

/// The CLI's name in messages.
const CLI: &str = "Codex";

/// The prefix of Codex's retry notices.
const RETRY_PREFIX: &str = "Reconnecting...";

/// Incremental parser for `codex exec --json`.
#[derive(Debug, Clone, Default)]
pub struct CodexParser {
    /// The project directory: file paths under it are shown relative to it.
    cwd: Option<String>,
    /// The thread id, from `thread.started`.
    thread_id: Option<String>,
    /// Items already shown as steps (a command is shown when it starts, not again when done).
    shown: HashSet<String>,
    /// The text of the last `agent_message`: the answer.
    last_message: Option<String>,
    /// Turns started.
    turns: u64,
    /// A `turn.completed` or `turn.failed` was seen.
    finished: bool,
    /// Errors and stray lines, to explain a crash.
    leftovers: Leftovers,
}

impl CodexParser {
    /// A parser for a run in `cwd`.
    pub fn new(cwd: Option<&str>) -> Self {
        CodexParser {
            cwd: cwd.map(str::to_owned),
            ..Default::default()
        }
    }

    fn on_item(&mut self, item: &Value, completed: bool) -> Vec<StreamEvent> {
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
        let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "agent_message" if completed => match item.get("text").and_then(Value::as_str) {
                Some(text) if !text.trim().is_empty() => {
                    self.last_message = Some(text.to_owned());
                    vec![StreamEvent::Output(format!("{text}\n"))]
                }
                _ => Vec::new(),
            },
            "error" => {
                if let Some(m) = nonblank(item.get("message").unwrap_or(&Value::Null)) {
                    self.leftovers.error(m);
                }
                Vec::new()
            }
            // The to-do list changes as the model works: show each new state.
            "todo_list" if !completed => steps(todo_steps(item)),
            "command_execution" | "file_change" | "mcp_tool_call" | "web_search"
                if self.shown.insert(id.to_owned()) || id.is_empty() =>
            {
                steps(self.tool_steps(kind, item))
            }
            _ => Vec::new(),
        }
    }

    fn tool_steps(&self, kind: &str, item: &Value) -> Vec<String> {
        let field = |k: &str| nonblank(item.get(k).unwrap_or(&Value::Null));
        match kind {
            "command_execution" => {
                let command = field("command").map(shell_body).and_then(first_line);
                vec![command.map_or("Bash".to_owned(), |c| format!("Bash: {c}"))]
            }
            "file_change" => {
                let changes = item.get("changes").and_then(Value::as_array);
                let steps: Vec<String> = changes
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        let path = relative(nonblank(c.get("path")?)?, self.cwd.as_deref());
                        let verb = match c.get("kind").and_then(Value::as_str) {
                            Some("add") => "Write",
                            Some("delete") => "Delete",
                            _ => "Edit",
                        };
                        Some(format!("{verb} {path}"))
                    })
                    .collect();
                if steps.is_empty() {
                    vec!["Edit files".to_owned()]
                } else {
                    steps
                }
            }
            "mcp_tool_call" => {
                let server = field("server").unwrap_or("mcp");
                let tool = field("tool").unwrap_or("tool");
                vec![format!("{server}: {tool}")]
            }
            _ => vec![match field("query") {
                Some(q) => format!("Search \"{q}\""),
                None => "Search".to_owned(),
            }],
        }
    }

    fn end(&mut self, event: &Value, failed: bool) -> RunResult {
        self.finished = true;
        let usage = event.get("usage").unwrap_or(&Value::Null);
        let count = |k: &str| usage.get(k).and_then(Value::as_u64);
        let text = if failed {
            let message = event
                .get("error")
                .and_then(|e| nonblank(e.get("message")?))
                .map(str::to_owned)
                .or_else(|| self.leftovers.last_error.clone());
            message.unwrap_or_else(|| format!("{CLI} failed without giving a reason"))
        } else {
            self.last_message
                .clone()
                .unwrap_or_else(|| format!("{CLI} finished without a final message"))
        };
        RunResult {
            is_error: failed,
            no_result: false,
            auth_failure: failed && mentions_auth_failure(&text),
            text,
            session_id: self.thread_id.clone(),
            cost_usd: None,
            // `cached_input_tokens` is part of `input_tokens`, reasoning part of output.
            input_tokens: count("input_tokens"),
            output_tokens: count("output_tokens"),
            num_turns: Some(self.turns.max(1)),
            duration_ms: None,
        }
    }
}

fn steps(steps: Vec<String>) -> Vec<StreamEvent> {
    steps
        .iter()
        .map(|s| StreamEvent::Step(step_text(s)))
        .collect()
}

impl EventParser for CodexParser {
    fn feed_line(&mut self, line: &str) -> Vec<StreamEvent> {
        let Some(event) = parse_line(line, &mut self.leftovers) else {
            return Vec::new();
        };
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match kind {
            "thread.started" => {
                if let Some(id) = nonblank(event.get("thread_id").unwrap_or(&Value::Null)) {
                    self.thread_id = Some(id.to_owned());
                }
                Vec::new()
            }
            "turn.started" => {
                self.turns += 1;
                Vec::new()
            }
            "item.started" | "item.updated" | "item.completed" => match event.get("item") {
                Some(item) => self.on_item(item, kind == "item.completed"),
                None => Vec::new(),
            },
            "error" => {
                let Some(message) = nonblank(event.get("message").unwrap_or(&Value::Null)) else {
                    return Vec::new();
                };
                self.leftovers.error(message);
                match message.strip_prefix(RETRY_PREFIX) {
                    Some(rest) => {
                        let attempt = rest.split_whitespace().next().unwrap_or_default();
                        vec![StreamEvent::Step(step_text(&format!(
                            "Reconnecting {attempt}"
                        )))]
                    }
                    None => Vec::new(),
                }
            }
            "turn.completed" => vec![StreamEvent::Finished(self.end(&event, false))],
            "turn.failed" => vec![StreamEvent::Finished(self.end(&event, true))],
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, exit_code: Option<i32>) -> Option<RunResult> {
        if std::mem::replace(&mut self.finished, true) {
            return None;
        }
        let mut r = self.leftovers.no_result(CLI, exit_code);
        r.session_id = self.thread_id.clone();
        Some(r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SUCCESS: &str =
        include_str!("../tests/fixtures/codex/success-command-and-file-change.jsonl");
    const UNAUTHORIZED: &str =
        include_str!("../tests/fixtures/codex/error-401-unauthorized-retries.jsonl");
    const RESUME_1: &str = include_str!("../tests/fixtures/codex/resume-1-first-run.jsonl");
    const RESUME_2: &str = include_str!("../tests/fixtures/codex/resume-2-exec-resume.jsonl");
    const MCP: &str = include_str!("../tests/fixtures/codex/mcp-tool-call-failed.jsonl");
    const STUB: &str =
        include_str!("../tests/fixtures/codex/stub-error-item-and-failed-command.jsonl");
    const DOCS: &str = include_str!("../tests/fixtures/codex/docs-sample-exec-json.jsonl");

    /// Feeds a fixture; returns the steps, the output and the one result, which comes last.
    fn run(fixture: &str, cwd: Option<&str>) -> (Vec<String>, String, RunResult) {
        let mut p = CodexParser::new(cwd);
        let events: Vec<_> = fixture.lines().flat_map(|l| p.feed_line(l)).collect();
        let Some(StreamEvent::Finished(result)) = events.last().cloned() else {
            panic!("no result last: {events:?}")
        };
        assert_eq!(p.finish(Some(0)), None);
        let mut steps = Vec::new();
        let mut output = String::new();
        for e in events {
            match e {
                StreamEvent::Step(s) => steps.push(s),
                StreamEvent::Output(t) => output.push_str(&t),
                StreamEvent::Finished(_) => {}
            }
        }
        (steps, output, result)
    }

    #[test]
    fn commands_and_file_changes_become_steps_and_the_last_message_the_result() {
        let (steps, output, r) = run(SUCCESS, Some("/Users/bryan/think"));
        assert_eq!(steps.len(), 11, "{steps:#?}");
        assert_eq!(steps[0], "Bash: git status --short");
        assert!(
            steps[1].starts_with("Bash: find output -maxdepth 3"),
            "{}",
            steps[1]
        );
        assert!(
            steps.contains(
                &"Write output/workbench/think-agent-room-e2e-business-note.md".to_owned()
            )
        );
        assert!(steps.contains(&"Bash: ls -la output/workbench".to_owned()));
        assert!(output.matches('\n').count() >= 5);
        assert!(!r.is_error && !r.no_result);
        assert!(r.text.starts_with("已完成，产出文件："), "{}", r.text);
        assert!(output.ends_with(&format!("{}\n", r.text)));
        assert_eq!(
            r.session_id.as_deref(),
            Some("019e7ca6-71ac-7d63-9b17-5fdb750d36ff")
        );
        assert_eq!(
            (r.input_tokens, r.output_tokens),
            (Some(106286), Some(2089))
        );
        assert_eq!((r.cost_usd, r.num_turns), (None, Some(1)));
    }

    #[test]
    fn a_401_is_an_auth_failure_with_codexs_message_after_retry_steps() {
        let (steps, output, r) = run(UNAUTHORIZED, None);
        assert_eq!(steps.len(), 9);
        assert_eq!(steps[0], "Reconnecting 2/5");
        assert_eq!(steps[8], "Reconnecting 5/5");
        assert!(output.is_empty());
        assert!(r.is_error && r.auth_failure && !r.no_result);
        assert!(
            r.text
                .starts_with("unexpected status 401 Unauthorized: Missing bearer"),
            "{}",
            r.text
        );
        assert_eq!(
            r.session_id.as_deref(),
            Some("00000000-0000-7000-8000-000000000005")
        );
    }

    #[test]
    fn a_resumed_thread_keeps_its_id() {
        let (_, _, first) = run(RESUME_1, None);
        let (_, _, second) = run(RESUME_2, None);
        assert_eq!(first.session_id, second.session_id);
        assert_eq!(
            second.session_id.as_deref(),
            Some("019ffc18-837b-7182-a0e7-89ae640fc2c2")
        );
        assert_eq!(
            (second.input_tokens, second.output_tokens),
            (Some(240), Some(48))
        );
        assert!(second.text.starts_with("Done. Detail."));
    }

    #[test]
    fn mcp_calls_warnings_and_reasoning() {
        let (steps, _, r) = run(MCP, None);
        assert_eq!(steps, ["example_mcp_server: list_tags"]);
        assert!(r.text.contains("Invalid or expired token") && !r.is_error);
        // A warning item and a failed command do not fail the turn; no message is said so.
        let (steps, output, r) = run(STUB, None);
        assert_eq!(steps, ["Bash: stub"]);
        assert!(output.is_empty());
        assert!(!r.is_error);
        assert_eq!(r.text, "Codex finished without a final message");
        let (steps, output, r) = run(DOCS, None);
        assert_eq!(steps, ["Bash: ls"], "reasoning is not a step");
        assert_eq!(
            r.text,
            "Yep — there’s a `README.md` in the repository root."
        );
        assert_eq!(output, format!("{}\n", r.text));
    }

    #[test]
    fn a_crash_without_a_turn_end_quotes_the_last_error() {
        let mut p = CodexParser::new(None);
        for line in UNAUTHORIZED
            .lines()
            .take(5)
            .chain(["not json", "{\"type\":"])
        {
            p.feed_line(line);
        }
        let r = p.finish(Some(1)).unwrap();
        assert!(r.is_error && r.no_result && r.auth_failure);
        assert!(
            r.text.starts_with(
                "Codex exited with code 1 without reporting a result: Reconnecting... 4/5"
            ),
            "{}",
            r.text
        );
        assert_eq!(p.finish(Some(1)), None);
        let mut p = CodexParser::new(None);
        for line in [
            "",
            "[1]",
            "{}",
            "{\"type\":\"item.completed\",\"item\":5}",
            "{\"type\":\"error\",\"message\":7}",
        ] {
            assert_eq!(p.feed_line(line), []);
        }
    }
}
