//! Parses OpenCode's `opencode run --format json` output (JSON Lines) into progress for Slack.
//!
//! Every event has `type`, `timestamp` and `sessionID`; payloads are under `part`. A run is
//! steps: `step_start`, then `tool_use` (one line per finished call: `part.tool`,
//! `part.state.input`, `part.state.status`) and `text` (`part.text`), then `step_finish` with
//! `part.reason` (`tool-calls` when another step follows, `stop` at the end), `part.tokens` and
//! `part.cost`, both per step. A failure is an `error` event (`error.name`,
//! `error.data.message`, `error.data.statusCode`). There is no final result event: the run ends
//! when the process exits, so the result is made by [`EventParser::finish`].

use serde_json::Value;

use crate::stream::{
    EventParser, Leftovers, RunResult, StreamEvent, add, mentions_auth_failure, nonblank,
    parse_line, step_text, tool_steps,
};

/// The CLI's name in messages.
const CLI: &str = "OpenCode";

/// HTTP statuses that mean the provider refused the credentials.
const AUTH_STATUSES: &[u64] = &[401, 403];

/// Incremental parser for `opencode run --format json`.
#[derive(Debug, Clone, Default)]
pub struct OpencodeParser {
    /// The project directory: file paths under it are shown relative to it.
    cwd: Option<String>,
    /// The session id, from any event.
    session_id: Option<String>,
    /// The last text part: the answer.
    last_text: Option<String>,
    /// Steps finished, with their summed tokens and cost.
    steps_finished: u64,
    /// Input tokens over all steps, cache reads and writes included.
    input_tokens: Option<u64>,
    /// Output tokens over all steps, reasoning included.
    output_tokens: Option<u64>,
    /// Cost over all steps, in US dollars.
    cost_usd: Option<f64>,
    /// The last step's `reason`.
    last_reason: Option<String>,
    /// An `error` event ended the run (or `finish` already made the result).
    finished: bool,
    /// Stray lines, to explain a crash.
    leftovers: Leftovers,
}

impl OpencodeParser {
    /// A parser for a run in `cwd`.
    pub fn new(cwd: Option<&str>) -> Self {
        OpencodeParser {
            cwd: cwd.map(str::to_owned),
            ..Default::default()
        }
    }

    fn result(&self, is_error: bool, text: String) -> RunResult {
        RunResult {
            is_error,
            no_result: false,
            auth_failure: false,
            text,
            session_id: self.session_id.clone(),
            cost_usd: self.cost_usd,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            num_turns: (self.steps_finished > 0).then_some(self.steps_finished),
            duration_ms: None,
        }
    }

    fn on_error(&mut self, event: &Value) -> RunResult {
        self.finished = true;
        let error = event.get("error").unwrap_or(&Value::Null);
        let data = error.get("data").unwrap_or(&Value::Null);
        let name = nonblank(error.get("name").unwrap_or(&Value::Null));
        let message = nonblank(data.get("message").unwrap_or(&Value::Null));
        let text = match (name, message) {
            (Some(n), Some(m)) => format!("{n}: {m}"),
            (None, Some(m)) => m.to_owned(),
            (Some(n), None) => n.to_owned(),
            (None, None) => format!("{CLI} failed without giving a reason"),
        };
        let status = data.get("statusCode").and_then(Value::as_u64);
        let mut r = self.result(true, text);
        r.auth_failure = status.is_some_and(|s| AUTH_STATUSES.contains(&s))
            || name.is_some_and(|n| n.contains("Auth"))
            || mentions_auth_failure(&r.text);
        r
    }

    fn on_step_finish(&mut self, part: &Value) {
        self.steps_finished += 1;
        self.last_reason = nonblank(part.get("reason").unwrap_or(&Value::Null)).map(str::to_owned);
        let tokens = part.get("tokens").unwrap_or(&Value::Null);
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let cache = tokens.get("cache").unwrap_or(&Value::Null);
        let input = add(add(n(tokens, "input"), n(cache, "read")), n(cache, "write"));
        let output = add(n(tokens, "output"), n(tokens, "reasoning"));
        self.input_tokens = add(self.input_tokens, input);
        self.output_tokens = add(self.output_tokens, output);
        if let Some(cost) = part.get("cost").and_then(Value::as_f64) {
            self.cost_usd = Some(self.cost_usd.unwrap_or(0.0) + cost);
        }
    }
}

impl EventParser for OpencodeParser {
    fn feed_line(&mut self, line: &str) -> Vec<StreamEvent> {
        let Some(event) = parse_line(line, &mut self.leftovers) else {
            return Vec::new();
        };
        if let Some(id) = nonblank(event.get("sessionID").unwrap_or(&Value::Null)) {
            self.session_id = Some(id.to_owned());
        }
        let part = event.get("part").unwrap_or(&Value::Null);
        match event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "tool_use" => {
                let name = nonblank(part.get("tool").unwrap_or(&Value::Null)).unwrap_or("tool");
                let state = part.get("state").unwrap_or(&Value::Null);
                let input = state.get("input").unwrap_or(&Value::Null);
                tool_steps(name, input, self.cwd.as_deref())
                    .iter()
                    .map(|s| StreamEvent::Step(step_text(s)))
                    .collect()
            }
            "text" => match part.get("text").and_then(Value::as_str) {
                Some(text) if !text.trim().is_empty() => {
                    self.last_text = Some(text.trim().to_owned());
                    vec![StreamEvent::Output(format!("{text}\n"))]
                }
                _ => Vec::new(),
            },
            "step_finish" => {
                self.on_step_finish(part);
                Vec::new()
            }
            "error" => vec![StreamEvent::Finished(self.on_error(&event))],
            _ => Vec::new(),
        }
    }

    fn finish(&mut self, exit_code: Option<i32>) -> Option<RunResult> {
        if std::mem::replace(&mut self.finished, true) {
            return None;
        }
        if exit_code == Some(0) && self.steps_finished > 0 {
            let text = self
                .last_text
                .clone()
                .unwrap_or_else(|| format!("{CLI} finished without a final message"));
            return Some(self.result(false, text));
        }
        let mut r = self.leftovers.no_result(CLI, exit_code);
        r.session_id = self.session_id.clone();
        r.cost_usd = self.cost_usd;
        r.input_tokens = self.input_tokens;
        r.output_tokens = self.output_tokens;
        Some(r)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SUCCESS: &str =
        include_str!("../tests/fixtures/opencode/success-bash-tool-real-model.jsonl");
    const HTTP_401: &str = include_str!("../tests/fixtures/opencode/error-http-401.jsonl");
    const RESET: &str = include_str!("../tests/fixtures/opencode/error-connection-reset.jsonl");

    fn feed(fixture: &str) -> (OpencodeParser, Vec<StreamEvent>) {
        let mut p = OpencodeParser::new(Some("/repo"));
        let events = fixture.lines().flat_map(|l| p.feed_line(l)).collect();
        (p, events)
    }

    #[test]
    fn a_tool_step_text_and_summed_tokens_and_cost() {
        let (mut p, events) = feed(SUCCESS);
        assert_eq!(
            events,
            [
                StreamEvent::Step("Bash: ls".into()),
                StreamEvent::Output("DONE\n".into())
            ]
        );
        let r = p.finish(Some(0)).unwrap();
        assert!(!r.is_error && !r.no_result);
        assert_eq!(r.text, "DONE");
        assert_eq!(
            r.session_id.as_deref(),
            Some("ses_0053dc0a6ffeLfOVWup0QCNjl2")
        );
        assert_eq!(r.input_tokens, Some(98 + 13184 + 69 + 13312));
        assert_eq!(r.output_tokens, Some(43 + 3));
        assert_eq!(r.num_turns, Some(2));
        let cost = r.cost_usd.unwrap();
        assert!(
            (cost - (0.0000313376 + 0.0000238868)).abs() < 1e-12,
            "{cost}"
        );
        assert_eq!(p.finish(Some(0)), None);
        // The same stream from a process that failed is not a success.
        let (mut p, _) = feed(SUCCESS);
        let r = p.finish(Some(1)).unwrap();
        assert!(r.is_error && r.no_result);
    }

    #[test]
    fn a_401_is_an_auth_failure_with_the_providers_message() {
        let (mut p, events) = feed(HTTP_401);
        let [StreamEvent::Finished(r)] = &events[..] else {
            panic!("{events:?}")
        };
        assert!(r.is_error && r.auth_failure);
        assert_eq!(r.text, "APIError: stub injected HTTP 401");
        assert_eq!(
            r.session_id.as_deref(),
            Some("ses_ff92121f8ffe5S5YmstusODVwF")
        );
        assert_eq!(p.finish(Some(1)), None);
    }

    #[test]
    fn a_connection_reset_is_a_task_failure() {
        let (_, events) = feed(RESET);
        let [StreamEvent::Finished(r)] = &events[..] else {
            panic!("{events:?}")
        };
        assert!(r.is_error && !r.auth_failure);
        assert_eq!(r.text, "APIError: Connection reset by server");
    }

    #[test]
    fn a_crash_quotes_the_last_stray_line() {
        let mut p = OpencodeParser::new(None);
        for l in [
            "",
            "{",
            "[]",
            r#"{"type":"tool_use","part":7}"#,
            "panic: boom",
        ] {
            let _ = p.feed_line(l);
        }
        let r = p.finish(None).unwrap();
        assert_eq!(
            r.text,
            "OpenCode was killed before reporting a result: panic: boom"
        );
    }
}
