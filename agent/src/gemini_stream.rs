//! Parses Gemini CLI's `--output-format stream-json` output (JSON Lines) into progress for Slack.
//!
//! The stream: `init` (session id and model), the user's prompt echoed as a `message`, then
//! `tool_use` (`tool_name`, `tool_id`, `parameters`) and `tool_result` (matched on `tool_id`),
//! assistant `message` lines with `delta:true` (pieces of text to join), standalone `error`
//! events (`severity`, `message`), and a final `result` with `status` (`success`/`error`), an
//! optional `error.message` and `stats` (tokens, `duration_ms`). Gemini reports no cost. The
//! answer is the assistant text after the last tool call. Exit code 41 means no usable
//! credentials.

use serde_json::Value;

use crate::stream::{
    EventParser, Leftovers, RunResult, StreamEvent, mentions_auth_failure, nonblank, parse_line,
    step_text, tool_steps,
};

/// The CLI's name in messages.
const CLI: &str = "Gemini CLI";

/// Gemini CLI's exit code when no authentication is configured.
const EXIT_AUTH: i32 = 41;

/// Incremental parser for `gemini --output-format stream-json`.
#[derive(Debug, Clone, Default)]
pub struct GeminiParser {
    /// The project directory: file paths under it are shown relative to it.
    cwd: Option<String>,
    /// The session id, from `init`.
    session_id: Option<String>,
    /// The model, from `init`.
    model: Option<String>,
    /// Assistant text since the last tool call: the answer, if the run ends now.
    answer: String,
    /// Assistant text before the last tool call, the answer if none comes after it.
    earlier: String,
    /// A `result` event was seen.
    finished: bool,
    /// Errors and stray lines, to explain a failure.
    leftovers: Leftovers,
}

impl GeminiParser {
    /// A parser for a run in `cwd`.
    pub fn new(cwd: Option<&str>) -> Self {
        GeminiParser {
            cwd: cwd.map(str::to_owned),
            ..Default::default()
        }
    }

    /// The model named by `init`, if seen.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn on_result(&mut self, event: &Value) -> RunResult {
        self.finished = true;
        let failed = event.get("status").and_then(Value::as_str) != Some("success");
        let stats = event.get("stats").unwrap_or(&Value::Null);
        let count = |k: &str| stats.get(k).and_then(Value::as_u64);
        let text = if failed {
            event
                .get("error")
                .and_then(|e| nonblank(e.get("message")?))
                .map(str::to_owned)
                .or_else(|| self.leftovers.last_error.clone())
                .unwrap_or_else(|| format!("{CLI} failed without giving a reason"))
        } else {
            let answer = if self.answer.trim().is_empty() {
                &self.earlier
            } else {
                &self.answer
            };
            match answer.trim() {
                "" => format!("{CLI} finished without a final message"),
                a => a.to_owned(),
            }
        };
        RunResult {
            is_error: failed,
            no_result: false,
            auth_failure: failed && mentions_auth_failure(&text),
            text,
            session_id: self.session_id.clone(),
            cost_usd: None,
            input_tokens: count("input_tokens"),
            output_tokens: count("output_tokens"),
            num_turns: None,
            duration_ms: count("duration_ms"),
        }
    }
}

impl EventParser for GeminiParser {
    fn feed_line(&mut self, line: &str) -> Vec<StreamEvent> {
        let Some(event) = parse_line(line, &mut self.leftovers) else {
            return Vec::new();
        };
        let field = |k: &str| nonblank(event.get(k).unwrap_or(&Value::Null));
        match event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "init" => {
                self.session_id = field("session_id").map(str::to_owned);
                self.model = field("model").map(str::to_owned);
                Vec::new()
            }
            "message" if field("role") == Some("assistant") => {
                match event.get("content").and_then(Value::as_str) {
                    Some(text) if !text.is_empty() => {
                        self.answer.push_str(text);
                        vec![StreamEvent::Output(text.to_owned())]
                    }
                    _ => Vec::new(),
                }
            }
            "tool_use" => {
                let mut events = Vec::new();
                if !self.answer.trim().is_empty() {
                    // Text before a tool call is a note on the way, not the answer.
                    if !self.answer.ends_with('\n') {
                        events.push(StreamEvent::Output("\n".into()));
                    }
                    self.earlier = std::mem::take(&mut self.answer);
                }
                let name = field("tool_name").unwrap_or("tool");
                let input = event.get("parameters").unwrap_or(&Value::Null);
                events.extend(
                    tool_steps(name, input, self.cwd.as_deref())
                        .iter()
                        .map(|s| StreamEvent::Step(step_text(s))),
                );
                events
            }
            "error" => {
                if let Some(m) = field("message") {
                    self.leftovers.error(m);
                }
                Vec::new()
            }
            "result" => vec![StreamEvent::Finished(self.on_result(&event))],
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, exit_code: Option<i32>) -> Option<RunResult> {
        if std::mem::replace(&mut self.finished, true) {
            return None;
        }
        let mut r = self.leftovers.no_result(CLI, exit_code);
        r.auth_failure |= exit_code == Some(EXIT_AUTH);
        r.session_id = self.session_id.clone();
        Some(r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOOL_USE: &str = include_str!("../tests/fixtures/gemini-cli/stream-json-tool-use.jsonl");
    const RESUME: &str = include_str!("../tests/fixtures/gemini-cli/stream-json-resume.jsonl");
    const INVALID_MODEL: &str =
        include_str!("../tests/fixtures/gemini-cli/stream-json-error-invalid-model.jsonl");
    const ERROR_AFTER_ANSWER: &str =
        include_str!("../tests/fixtures/gemini-cli/stream-json-error-event-after-answer.jsonl");
    const DOCS: &str = include_str!("../tests/fixtures/gemini-cli/docs-stream-json-example.jsonl");

    fn run(fixture: &str) -> (Vec<String>, String, RunResult) {
        let mut p = GeminiParser::new(Some("/work"));
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
    fn tool_use_becomes_steps_and_deltas_join_into_the_result() {
        let (steps, output, r) = run(TOOL_USE);
        assert_eq!(steps, ["Topic: Reading MARKER.txt", "Read MARKER.txt"]);
        assert_eq!(output, "SWITCHBOARD_GEMINI_PROBE_TOOL_5F8A21");
        assert!(!r.is_error);
        assert_eq!(r.text, "SWITCHBOARD_GEMINI_PROBE_TOOL_5F8A21");
        assert_eq!(
            r.session_id.as_deref(),
            Some("00000000-0000-4000-8000-000000000002")
        );
        assert_eq!(
            (r.input_tokens, r.output_tokens, r.duration_ms),
            (Some(20525), Some(100), Some(2855))
        );
        assert_eq!(r.cost_usd, None);
    }

    #[test]
    fn a_resumed_session_reports_the_same_id() {
        let (steps, _, r) = run(RESUME);
        assert!(steps.is_empty());
        assert_eq!(r.text, "Reply with 'ack' only.");
        assert_eq!(
            r.session_id.as_deref(),
            Some("00000000-0000-4000-8000-000000000001")
        );
    }

    #[test]
    fn errors_carry_the_clis_own_message() {
        let (_, output, r) = run(INVALID_MODEL);
        assert!(output.is_empty(), "the user's prompt echo is not output");
        assert!(r.is_error && !r.auth_failure);
        assert_eq!(r.text, "[API Error: Requested entity was not found.]");
        // A result without `error` after an error event: the event's message.
        let (steps, output, r) = run(ERROR_AFTER_ANSWER);
        assert_eq!(steps.len(), 8, "{steps:#?}");
        assert_eq!(steps[1], "List .");
        assert_eq!(steps[2], "Read example.py");
        assert_eq!(steps[7], "Topic: Summary Complete");
        assert!(output.starts_with("This directory contains a mix"));
        assert!(r.is_error);
        assert_eq!(
            r.text,
            "Invalid stream: The model returned an empty response or malformed tool call."
        );
        assert_eq!((r.input_tokens, r.output_tokens), (Some(59241), Some(521)));
    }

    #[test]
    fn the_answer_is_the_text_after_the_last_tool() {
        let (steps, output, r) = run(DOCS);
        assert_eq!(steps, ["Bash: ls -la"]);
        assert_eq!(output, "Here are the files...");
        assert_eq!(r.text, "Here are the files...");
        let mut p = GeminiParser::new(None);
        for l in [
            r#"{"type":"message","role":"assistant","content":"Let me look.","delta":true}"#,
            r#"{"type":"tool_use","tool_name":"read_file","tool_id":"1","parameters":{"file_path":"a"}}"#,
            r#"{"type":"message","role":"assistant","content":"Done","delta":true}"#,
        ] {
            p.feed_line(l);
        }
        let [StreamEvent::Finished(r)] =
            &p.feed_line(r#"{"type":"result","status":"success"}"#)[..]
        else {
            panic!()
        };
        assert_eq!(r.text, "Done");
    }

    #[test]
    fn no_credentials_is_an_auth_failure() {
        let mut p = GeminiParser::new(None);
        assert_eq!(p.feed_line("Please set an Auth method"), []);
        let r = p.finish(Some(EXIT_AUTH)).unwrap();
        assert!(r.is_error && r.no_result && r.auth_failure);
        assert_eq!(
            r.text,
            "Gemini CLI exited with code 41 without reporting a result: Please set an Auth method"
        );
    }
}
