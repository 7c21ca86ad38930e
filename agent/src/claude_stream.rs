//! Parses Claude Code's `--output-format stream-json --verbose` output into progress for Slack.
//!
//! The agent feeds [`StreamParser`] the CLI's stdout one line at a time and gets back
//! [`ClaudeEvent`]s: short steps for the progress list, assistant text, and the final result.
//! Parsing is deliberately forgiving: unknown event types, unknown fields, fields of an unexpected
//! type and lines that are not JSON never stop a task. Such lines produce no event; the last line
//! that could not be parsed is kept and quoted by [`StreamParser::finish`] if the process dies
//! without a `result` event (stray stdout is usually the only clue to a crash).

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;

use crate::stream::{add, clip, first_line, nonblank, step_text};

/// Longest [`ClaudeEvent::Step`], in characters; longer steps are cut and end with `…`.
pub const MAX_STEP_CHARS: usize = 120;

/// Longest stray line or error message, in characters, kept for [`StreamParser::finish`].
pub const MAX_REMEMBERED_CHARS: usize = 500;

/// The [`ClaudeResult::subtype`] of a result made up by [`StreamParser::finish`].
pub const NO_RESULT_SUBTYPE: &str = "no_result";

/// An assistant event's top-level `error` value when the CLI has no valid credentials.
const AUTH_FAILED_ERROR: &str = "authentication_failed";

/// Lower-case phrases that mark a failed result's text as an authentication problem.
const AUTH_FAILURE_PHRASES: &[&str] = &["not logged in", "invalid api key", "please run /login"];

/// One thing worth telling the user, produced from a line of stream-json output.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaudeEvent {
    /// A short, human, one-line step for the progress list (at most [`MAX_STEP_CHARS`] characters).
    Step(String),
    /// Assistant text from the main conversation, shown as output. The final text block usually
    /// repeats as [`ClaudeResult::text`].
    Output(String),
    /// The run's end, from the `result` event.
    Finished(ClaudeResult),
}

/// The outcome of a run: from the `result` event, or made up by [`StreamParser::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClaudeResult {
    /// The run failed. Taken from `is_error`, which wins over `subtype` (a failed run may still say
    /// `"success"`); when `is_error` is missing, any subtype other than `"success"` is a failure.
    pub is_error: bool,
    /// The result's `subtype` (`"success"`, `"error_max_turns"`, `"error_during_execution"`, …),
    /// `"unknown"` when missing, or [`NO_RESULT_SUBTYPE`].
    pub subtype: String,
    /// The `result` text; if absent or empty, the `errors` array joined with `"; "`; else a
    /// sentence naming the subtype.
    pub text: String,
    /// The session id, for `--resume`.
    pub session_id: Option<String>,
    /// `total_cost_usd`: the whole session's cost, all models included.
    pub cost_usd: Option<f64>,
    /// Input tokens including cache reads and cache writes. Summed over `modelUsage` (every model,
    /// like the cost) when that is non-empty, else taken from `usage`.
    pub input_tokens: Option<u64>,
    /// Output tokens, from the same source as [`ClaudeResult::input_tokens`].
    pub output_tokens: Option<u64>,
    /// `num_turns`.
    pub num_turns: Option<u64>,
    /// `duration_ms`: wall-clock time of the run.
    pub duration_ms: Option<u64>,
    /// Claude Code is not authenticated, so the agent is misconfigured rather than the task having
    /// failed: an assistant event had `"error":"authentication_failed"`, or a failed result's text
    /// says "Not logged in", "Invalid API key" or "Please run /login".
    pub auth_failure: bool,
}

/// Incremental parser: feed it the CLI's stdout line by line with [`StreamParser::feed_line`],
/// then call [`StreamParser::finish`] once the process has exited.
#[derive(Debug, Clone, Default)]
pub struct StreamParser {
    /// Latest `session_id` seen on any event.
    session_id: Option<String>,
    /// Model from `system/init`.
    model: Option<String>,
    /// Working directory from `system/init`; file paths under it are shown relative to it.
    cwd: Option<String>,
    /// A `result` event was seen (or `finish` already made one up).
    finished: bool,
    /// An assistant event reported `authentication_failed`.
    auth_failure: bool,
    /// Text of the last assistant event that carried a top-level `error`.
    last_error_text: Option<String>,
    /// The last line that could not be parsed as an event.
    last_stray_line: Option<String>,
}

impl StreamParser {
    /// Creates a parser with no state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one line of stream-json output (trailing `\r`/`\n` allowed).
    ///
    /// Blank lines give an empty vec. A line that is not a JSON object, or an event of an unknown
    /// type or shape, also gives an empty vec: it is never an error and never panics. Non-JSON
    /// text is not shown as output (it would leak CLI noise into Slack); the last such line is
    /// quoted by [`StreamParser::finish`] instead. `user` events (tool results) and `thinking`
    /// blocks give nothing, and neither do system events other than `api_retry`. Text is not
    /// output when it comes from a sub-agent (`parent_tool_use_id` set: its report to the main
    /// agent) or from an assistant event with a top-level `error` (the CLI's own message, such as
    /// "Not logged in · Please run /login", which [`ClaudeResult::text`] carries anyway).
    pub fn feed_line(&mut self, line: &str) -> Vec<ClaudeEvent> {
        let line = line.trim();
        if line.is_empty() {
            return Vec::new();
        }
        let Ok(event) = serde_json::from_str::<RawEvent>(line) else {
            self.last_stray_line = Some(clip(line, MAX_REMEMBERED_CHARS));
            return Vec::new();
        };
        if let Some(id) = nonblank(&event.session_id) {
            self.session_id = Some(id.to_owned());
        }
        match event.kind.as_str() {
            Some("system") => self.on_system(&event).into_iter().collect(),
            Some("assistant") => self.on_assistant(event),
            Some("result") => vec![ClaudeEvent::Finished(self.on_result(&event))],
            _ => Vec::new(),
        }
    }

    /// Called once the process has exited, with its exit code (`None` if killed by a signal).
    /// Returns a failed result when no `result` event was seen (e.g. a crash), quoting the last
    /// assistant error or stray line; returns `None` if a result was already produced.
    pub fn finish(&mut self, exit_code: Option<i32>) -> Option<ClaudeResult> {
        if std::mem::replace(&mut self.finished, true) {
            return None;
        }
        let mut text = match exit_code {
            Some(0) => "Claude Code exited without reporting a result".to_owned(),
            Some(code) => format!("Claude Code exited with code {code} without reporting a result"),
            None => "Claude Code was killed before reporting a result".to_owned(),
        };
        if let Some(detail) = self
            .last_error_text
            .as_ref()
            .or(self.last_stray_line.as_ref())
        {
            text = format!("{text}: {detail}");
        }
        Some(ClaudeResult {
            is_error: true,
            subtype: NO_RESULT_SUBTYPE.to_owned(),
            auth_failure: self.auth_failure || mentions_auth_failure(&text),
            text,
            session_id: self.session_id.clone(),
            cost_usd: None,
            input_tokens: None,
            output_tokens: None,
            num_turns: None,
            duration_ms: None,
        })
    }

    /// The session id, once any event has carried one.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The model named by `system/init`, if seen.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn on_system(&mut self, event: &RawEvent) -> Option<ClaudeEvent> {
        match event.subtype.as_str() {
            Some("init") => {
                self.cwd = event.cwd.as_str().map(str::to_owned);
                self.model = event.model.as_str().map(str::to_owned);
                None
            }
            Some("api_retry") => {
                let n = |v: &Value| v.as_u64().map_or("?".to_owned(), |n| n.to_string());
                let (attempt, max) = (n(&event.attempt), n(&event.max_retries));
                Some(ClaudeEvent::Step(format!("API retry {attempt}/{max}")))
            }
            _ => None,
        }
    }

    fn on_assistant(&mut self, event: RawEvent) -> Vec<ClaudeEvent> {
        // A top-level `error` marks a synthetic message from the CLI itself ("Not logged in · …"):
        // it is kept for the result, not shown as model output.
        let is_error_message = !event.error.is_null();
        if event.error.as_str() == Some(AUTH_FAILED_ERROR) {
            self.auth_failure = true;
        }
        // Text written by a sub-agent is its report to the main agent, not output for the user.
        let from_subagent = event.parent_tool_use_id.is_string();
        let blocks = event.message.and_then(Lenient::ok).and_then(|m| m.content);
        let mut events = Vec::new();
        for block in blocks.and_then(Lenient::ok).unwrap_or_default() {
            let Some(block) = block.ok() else { continue };
            match block.kind.as_str() {
                Some("text") => {
                    let Some(text) = block.text.as_str().filter(|t| !t.trim().is_empty()) else {
                        continue;
                    };
                    if is_error_message {
                        self.last_error_text = Some(clip(text.trim(), MAX_REMEMBERED_CHARS));
                    } else if !from_subagent {
                        events.push(ClaudeEvent::Output(text.to_owned()));
                    }
                }
                Some("tool_use") => {
                    let name = nonblank(&block.name).unwrap_or("Tool");
                    let input = block.input.and_then(Lenient::ok).unwrap_or_default();
                    let steps = self.tool_steps(name, &input);
                    events.extend(steps.iter().map(|s| ClaudeEvent::Step(step_text(s))));
                }
                _ => {}
            }
        }
        events
    }

    fn on_result(&mut self, event: &RawEvent) -> ClaudeResult {
        self.finished = true;
        let subtype = nonblank(&event.subtype).unwrap_or("unknown");
        let is_error = event.is_error.as_bool().unwrap_or(subtype != "success");
        let errors: Vec<&str> = event
            .errors
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(nonblank)
            .collect();
        let text = match nonblank(&event.result) {
            Some(result) => result.to_owned(),
            None if !errors.is_empty() => errors.join("; "),
            None if is_error => format!("Claude Code failed ({subtype}) without giving a reason"),
            None => format!("Claude Code finished ({subtype}) without a result message"),
        };
        let (input_tokens, output_tokens) = token_totals(&event.model_usage, &event.usage);
        ClaudeResult {
            is_error,
            subtype: subtype.to_owned(),
            auth_failure: self.auth_failure || (is_error && mentions_auth_failure(&text)),
            text,
            session_id: self.session_id.clone(),
            cost_usd: event.total_cost_usd.as_f64(),
            input_tokens,
            output_tokens,
            num_turns: event.num_turns.as_u64(),
            duration_ms: event.duration_ms.as_u64(),
        }
    }

    /// The progress steps (before one-lining and clipping) for one `tool_use` block.
    fn tool_steps(&self, name: &str, input: &ToolInput) -> Vec<String> {
        let quoted = |key| input.str(&[key]).map(|value| format!("\"{value}\""));
        let step = match name {
            "Read" | "Write" | "Edit" | "MultiEdit" | "NotebookEdit" | "NotebookRead" | "LS" => {
                let path = input.str(&["file_path", "notebook_path", "path"]);
                path.map(|path| format!("{name} {}", self.relative(path)))
            }
            "Bash" => {
                let command = input.str(&["command"]).and_then(first_line);
                let command = command.or_else(|| input.str(&["description"]));
                command.map(|command| format!("Bash: {command}"))
            }
            "Grep" => quoted("pattern").map(|p| format!("Grep {p}{}", self.in_path(input))),
            "Glob" => input
                .str(&["pattern"])
                .map(|p| format!("Glob {p}{}", self.in_path(input))),
            "WebFetch" => input.str(&["url"]).map(|url| format!("Fetch {url}")),
            "WebSearch" => quoted("query").map(|query| format!("Search {query}")),
            "Task" | "Agent" => {
                let what = input.str(&["description", "prompt", "subagent_type"]);
                what.map(|what| format!("Agent: {what}"))
            }
            "TodoWrite" => return todo_steps(input),
            _ => {
                // `mcp__server__tool` is shown as `server: tool`.
                let mcp = name.strip_prefix("mcp__").filter(|rest| !rest.is_empty());
                let (display, separator) = match mcp.map(|rest| rest.split_once("__")) {
                    Some(Some((server, tool))) => (format!("{server}: {tool}"), " — "),
                    Some(None) => (mcp.unwrap_or(name).to_owned(), " — "),
                    None => (name.to_owned(), ": "),
                };
                let summary = input
                    .first_str()
                    .map(|s| format!("{display}{separator}{s}"));
                Some(summary.unwrap_or(display))
            }
        };
        vec![step.unwrap_or_else(|| name.to_owned())]
    }

    /// `" in PATH"` for a Grep/Glob `path` input other than the working directory, else `""`.
    fn in_path(&self, input: &ToolInput) -> String {
        match input.str(&["path"]).map(|p| self.relative(p)) {
            Some(path) if path != "." => format!(" in {path}"),
            _ => String::new(),
        }
    }

    /// `path` relative to the session's cwd when it lies under it (`"."` for the cwd itself);
    /// otherwise `path` unchanged. Windows paths (cwd with `\`) compare ASCII case-insensitively.
    fn relative<'a>(&self, path: &'a str) -> &'a str {
        let Some(full_cwd) = self.cwd.as_deref() else {
            return path;
        };
        let cwd = full_cwd.trim_end_matches(['/', '\\']);
        let Some(head) = path.get(..cwd.len()).filter(|_| !cwd.is_empty()) else {
            return path;
        };
        let windows = full_cwd.contains('\\');
        if head != cwd && !(windows && head.eq_ignore_ascii_case(cwd)) {
            return path;
        }
        let rest = path.get(cwd.len()..).unwrap_or_default();
        match rest.strip_prefix(['/', '\\']) {
            Some(rel) if !rel.is_empty() => rel,
            Some(_) => ".",
            None if rest.is_empty() => ".",
            None => path,
        }
    }
}

/// One step per TodoWrite item, with a status mark: `☑` completed, `◐` in progress, `☐` pending.
fn todo_steps(input: &ToolInput) -> Vec<String> {
    let Some(todos) = input.get("todos").and_then(Value::as_array) else {
        return vec!["TodoWrite".to_owned()];
    };
    if todos.is_empty() {
        return vec!["Todo list cleared".to_owned()];
    }
    todos
        .iter()
        .filter_map(|todo| {
            let content = todo.get("content")?.as_str()?.trim();
            let mark = match todo.get("status").and_then(Value::as_str) {
                Some("completed") => '☑',
                Some("in_progress") => '◐',
                Some("pending") => '☐',
                _ => '•',
            };
            (!content.is_empty()).then(|| format!("{mark} {content}"))
        })
        .collect()
}

/// Input and output token totals: `modelUsage` summed over models if non-empty, else `usage`.
fn token_totals(model_usage: &Value, usage: &Value) -> (Option<u64>, Option<u64>) {
    let Some(models) = model_usage.as_object().filter(|models| !models.is_empty()) else {
        let input = [
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ];
        return (
            sum_fields(usage, &input),
            sum_fields(usage, &["output_tokens"]),
        );
    };
    let input = [
        "inputTokens",
        "cacheReadInputTokens",
        "cacheCreationInputTokens",
    ];
    let mut totals = (None, None);
    for model in models.values() {
        totals.0 = add(totals.0, sum_fields(model, &input));
        totals.1 = add(totals.1, sum_fields(model, &["outputTokens"]));
    }
    totals
}

/// Sum of the numeric fields `keys` of `object`; `None` if none is present.
fn sum_fields(object: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter()
        .filter_map(|key| object.get(key)?.as_u64())
        .reduce(u64::saturating_add)
}

fn mentions_auth_failure(text: &str) -> bool {
    let text = text.to_lowercase();
    AUTH_FAILURE_PHRASES
        .iter()
        .any(|phrase| text.contains(phrase))
}

/// Any value that parses as `T` is `Good`; anything else is skipped instead of failing the line.
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Good(T),
    Bad(IgnoredAny),
}

impl<T> Lenient<T> {
    fn ok(self) -> Option<T> {
        match self {
            Lenient::Good(value) => Some(value),
            Lenient::Bad(_) => None,
        }
    }
}

/// One stream-json line; every field is optional and loosely typed, so odd shapes never fail.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: Value,
    subtype: Value,
    session_id: Value,
    cwd: Value,
    model: Value,
    parent_tool_use_id: Value,
    error: Value,
    message: Option<Lenient<RawMessage>>,
    attempt: Value,
    max_retries: Value,
    is_error: Value,
    result: Value,
    errors: Value,
    total_cost_usd: Value,
    usage: Value,
    #[serde(rename = "modelUsage")]
    model_usage: Value,
    num_turns: Value,
    duration_ms: Value,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawMessage {
    content: Option<Lenient<Vec<Lenient<RawBlock>>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawBlock {
    #[serde(rename = "type")]
    kind: Value,
    text: Value,
    name: Value,
    input: Option<Lenient<ToolInput>>,
}

/// A tool's `input` object with its keys in the order the CLI wrote them (a `serde_json::Map`
/// without `preserve_order` sorts them), so "the first string input" means what it says.
#[derive(Default)]
struct ToolInput(Vec<(String, Value)>);

impl ToolInput {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The trimmed value of the first of `keys` that holds a non-blank string.
    fn str(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|key| nonblank(self.get(key)?))
    }

    fn first_str(&self) -> Option<&str> {
        self.0.iter().find_map(|(_, v)| nonblank(v))
    }
}

impl<'de> Deserialize<'de> for ToolInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedMap;
        impl<'de> Visitor<'de> for OrderedMap {
            type Value = ToolInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tool input object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ToolInput, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(ToolInput(entries))
            }
        }
        deserializer.deserialize_map(OrderedMap)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SIMPLE: &str = include_str!("../tests/fixtures/claude-code/success-simple-write.jsonl");
    const MANY: &str =
        include_str!("../tests/fixtures/claude-code/success-many-tools-todowrite.jsonl");
    const MAX_TURNS: &str = include_str!("../tests/fixtures/claude-code/error-max-turns.jsonl");
    const ABORTED: &str =
        include_str!("../tests/fixtures/claude-code/error-during-execution-aborted.jsonl");
    const NOT_LOGGED_IN: &str =
        include_str!("../tests/fixtures/claude-code/error-is-error-not-logged-in.jsonl");

    /// One line per event: `step …`, `output …` (clipped) or `finished …` (text's first line).
    fn render(event: &ClaudeEvent) -> String {
        match event {
            ClaudeEvent::Step(step) => format!("step {step}"),
            ClaudeEvent::Output(text) => format!("output {}", clip(first_line(text).unwrap(), 60)),
            ClaudeEvent::Finished(r) => {
                let (tokens, session) =
                    ((r.input_tokens, r.output_tokens), r.session_id.as_deref());
                let (cost, turns, ms, auth) =
                    (r.cost_usd, r.num_turns, r.duration_ms, r.auth_failure);
                let head = format!(
                    "finished error={} {} {session:?} cost={cost:?}",
                    r.is_error, r.subtype
                );
                let text = first_line(&r.text).unwrap_or_default();
                format!("{head} tokens={tokens:?} turns={turns:?} ms={ms:?} auth={auth}: {text}")
            }
        }
    }

    /// Feeds a whole fixture, checks that exactly one `Finished` comes, last, and that `finish`
    /// then has nothing to add; returns the parser, the events and them rendered.
    fn transcript(fixture: &str) -> (StreamParser, Vec<ClaudeEvent>, String) {
        let mut parser = StreamParser::new();
        let events: Vec<_> = fixture.lines().flat_map(|l| parser.feed_line(l)).collect();
        let finished = events
            .iter()
            .filter(|e| matches!(e, ClaudeEvent::Finished(_)))
            .count();
        assert_eq!(finished, 1);
        assert!(matches!(events.last(), Some(ClaudeEvent::Finished(_))));
        assert_eq!(parser.finish(Some(1)), None);
        let rendered = events.iter().map(render).collect::<Vec<_>>().join("\n");
        (parser, events, rendered)
    }

    #[test]
    fn success_simple_write() {
        let (parser, _, transcript) = transcript(SIMPLE);
        assert_eq!(parser.model(), Some("claude-opus-4-20250514"));
        assert_eq!(
            parser.session_id(),
            Some("4e4fa00e-5e28-405f-a0bd-5f1f7d57511c")
        );
        // No modelUsage in this older shape: tokens come from `usage` (11 + 489 + 29482).
        let expected = r#"output I'll create a simple HTML file with "hello sheenapps" and t…
step Write index.html
output ABRACADABRA
finished error=false success Some("4e4fa00e-5e28-405f-a0bd-5f1f7d57511c") cost=Some(0.09007774999999998) tokens=(Some(29982), Some(235)) turns=Some(4) ms=Some(9974) auth=false: ABRACADABRA"#;
        assert_eq!(transcript, expected);
    }

    #[test]
    fn success_many_tools_todowrite() {
        let (parser, events, transcript) = transcript(MANY);
        assert_eq!(parser.model(), Some("claude-sonnet-4-5-20250929"));
        let [.., ClaudeEvent::Output(last), ClaudeEvent::Finished(result)] = &events[..] else {
            panic!()
        };
        assert_eq!(
            (last.len(), last),
            (1662, &result.text),
            "the result repeats the last text"
        );
        // Tokens are modelUsage over haiku, opus and sonnet, like the cost; `usage` alone would
        // give 438554/7295. There are 23 other tools and 5 TodoWrites of 4 items.
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, ClaudeEvent::Step(_)))
                .count(),
            23 + 20
        );
        let expected = r#"output I'll start by reading the project documentation to understa…
step Read README.md
step Glob ./specs/*.md
step Read ai-coder\PHILOSOPHY.md
output I can see the README.md has the requirements, but there are…
step Bash: ls -la
step Glob ./docs/**/*.md
step Bash: test -d ./code && ls -la ./code || echo "code directory does not exist"
step Bash: test -d ./released && ls -la ./released || echo "released directory does not exist"
output Good, there's already code in ./code/. Let me check the spe…
step Bash: ls -la ./specs
step Bash: ls -la ./reqs
step Read code\Cargo.toml
step Read code\build.py
step Bash: ls -la ./code/src
output Now let me read the specs and requirements to understand wh…
step Read specs\behavior.md
step Read specs\HELP.txt
step Read reqs\00_build-output.md
step Read reqs\01_cli.md
step Read reqs\02_value-mapping.md
step Read reqs\03_json-output-format.md
step Read code\src\main.rs
output Now I have a complete understanding. The current implementa…
step ◐ Analyze current implementation against requirements
step ☐ Rewrite main.rs to match all requirements
step ☐ Verify build.py is correct
step ☐ Verify Cargo.toml is correct
output Looking at the current implementation vs requirements, I ne…
step ☑ Analyze current implementation against requirements
step ◐ Rewrite main.rs to match all requirements
step ☐ Verify build.py is correct
step ☐ Verify Cargo.toml is correct
step Write code\src\main.rs
output Wait, I need to reread the spec. Let me check the exact out…
step Read specs\behavior.md"#;
        assert!(transcript.starts_with(expected), "{transcript}");
        let expected = r#"output The Cargo.toml looks correct too -- it has the required dep…
step ☑ Analyze current implementation against requirements
step ☑ Rewrite main.rs to match all requirements
step ☑ Verify build.py is correct
step ☑ Verify Cargo.toml is correct
output Perfect! I've successfully generated the complete implement…
finished error=false success Some("bfc86ca0-df6f-42d4-9fdc-c95b3c1da201") cost=Some(0.4550004) tokens=(Some(486638), Some(8062)) turns=Some(29) ms=Some(215056) auth=false: Perfect! I've successfully generated the complete implementation for sqlite2json. Here's what was done:"#;
        assert!(transcript.ends_with(expected), "{transcript}");
    }

    #[test]
    fn error_max_turns_text_comes_from_errors() {
        let (_, _, transcript) = transcript(MAX_TURNS);
        // `usage` is all zeros here; modelUsage has the real counts.
        let result = r#"finished error=true error_max_turns Some("1151236a-3078-4bb1-a96a-a897d61de908") cost=Some(0.0026249999999999993) tokens=(Some(150), Some(75)) turns=Some(16) ms=Some(542) auth=false: Reached maximum number of turns (15)"#;
        assert_eq!(
            transcript,
            format!("{}{result}", "step Bash: echo working\n".repeat(15))
        );
    }

    #[test]
    fn error_during_execution_aborted() {
        let (parser, _, transcript) = transcript(ABORTED);
        assert_eq!(parser.model(), Some("claude-opus-5[1m]"));
        let retries: String = (1..=9)
            .map(|n| format!("step API retry {n}/10\n"))
            .collect();
        let result = r#"finished error=true error_during_execution Some("180ea69f-8a7f-41ee-9a65-2270e5cd786a") cost=Some(0.0) tokens=(Some(0), Some(0)) turns=Some(2) ms=Some(396052) auth=false: [ede_diagnostic] result_type=user last_content_type=n/a stop_reason=null"#;
        assert_eq!(transcript, format!("{retries}{result}"));
        // The result line, whose "type" is not the first key, also parses on its own.
        let last = ABORTED.lines().last().unwrap();
        assert!(!last.starts_with(r#"{"type""#));
        assert_eq!(render(&StreamParser::new().feed_line(last)[0]), result);
    }

    #[test]
    fn not_logged_in_is_an_auth_failure() {
        // The CLI's own error message is not model output; subtype "success" still fails.
        let result = r#"finished error=true success Some("908335a9-a35b-45d7-b490-be0a5b929794") cost=Some(0.0) tokens=(Some(0), Some(0)) turns=Some(1) ms=Some(8) auth=true: Not logged in · Please run /login"#;
        assert_eq!(transcript(NOT_LOGGED_IN).2, result);
        // The failed result's text is enough on its own…
        let last = NOT_LOGGED_IN.lines().last().unwrap();
        assert_eq!(render(&StreamParser::new().feed_line(last)[0]), result);
        let ok = r#"{"type":"result","subtype":"success","is_error":false,"result":"Fixed Invalid API key"}"#;
        assert!(render(&StreamParser::new().feed_line(ok)[0]).contains("auth=false"));
        // …and so is the assistant error, if the process then dies.
        let mut parser = StreamParser::new();
        NOT_LOGGED_IN
            .lines()
            .take(2)
            .for_each(|l| assert_eq!(parser.feed_line(l), []));
        let crashed = ClaudeEvent::Finished(parser.finish(Some(1)).unwrap());
        let expected = r#"finished error=true no_result Some("908335a9-a35b-45d7-b490-be0a5b929794") cost=None tokens=(None, None) turns=None ms=None auth=true: Claude Code exited with code 1 without reporting a result: Not logged in · Please run /login"#;
        assert_eq!(render(&crashed), expected);
    }

    #[test]
    fn result_fallbacks_and_finish() {
        let mut parser = StreamParser::new();
        parser.feed_line(SIMPLE.lines().next().unwrap());
        parser.feed_line("Segmentation fault (core dumped)");
        let crashed = parser.finish(Some(139)).unwrap();
        let expected = "Claude Code exited with code 139 without reporting a result: Segmentation fault (core dumped)";
        assert_eq!(crashed.text, expected);
        assert!(crashed.is_error && !crashed.auth_failure && crashed.session_id.is_some());
        assert_eq!(parser.finish(Some(139)), None);
        let killed = StreamParser::new().finish(None).unwrap().text;
        assert_eq!(killed, "Claude Code was killed before reporting a result");
        let bare = StreamParser::new().feed_line(r#"{"type":"result","subtype":"error_x"}"#);
        let expected = "finished error=true error_x None cost=None tokens=(None, None) turns=None ms=None auth=false: Claude Code failed (error_x) without giving a reason";
        assert_eq!(render(&bare[0]), expected);
    }

    #[test]
    fn tool_steps() {
        // `tool input => steps`, with cwd /home/u/repo (C:\Projects\App for the last case).
        let cases = r#"Edit {"file_path":"/home/u/repo/src/auth.rs","old_string":"a"} => Edit src/auth.rs
Read {"file_path":"/home/u/repository/x.rs"} => Read /home/u/repository/x.rs
MultiEdit {"file_path":"rel/x.rs"} => MultiEdit rel/x.rs
NotebookEdit {"notebook_path":"/home/u/repo/a.ipynb"} => NotebookEdit a.ipynb
Write {} => Write
Bash {"description":"Run tests","command":"\n  cargo test\necho done"} => Bash: cargo test
Bash {"description":"Run tests"} => Bash: Run tests
Grep {"pattern":"TODO","path":"/home/u/repo/src"} => Grep "TODO" in src
Grep {"pattern":"TODO","path":"/home/u/repo/"} => Grep "TODO"
Glob {"pattern":"**/*.rs"} => Glob **/*.rs
WebFetch {"url":"https://x.dev/a","prompt":"p"} => Fetch https://x.dev/a
WebSearch {"query":"rust serde"} => Search "rust serde"
Task {"prompt":"long","description":"Find callers","subagent_type":"Explore"} => Agent: Find callers
Agent {"subagent_type":"Explore"} => Agent: Explore
mcp__neo4j_graph__read-cypher {"limit":5,"query":"MATCH (n)"} => neo4j_graph: read-cypher — MATCH (n)
Skill {"zeta":"first","alpha":"second"} => Skill: first
ExitPlanMode {"plan":"1. a\n\n2. b"} => ExitPlanMode: 1. a 2. b
KillShell {"id":7} => KillShell
TodoWrite {"todos":[{"content":"a","status":"completed"},{"content":"b","status":"in_progress"},{"content":"c","status":"pending"},{"content":"d"}]} => ☑ a|◐ b|☐ c|• d
TodoWrite {"todos":[]} => Todo list cleared
TodoWrite {"todos":"nope"} => TodoWrite
Read {"file_path":"c:\\projects\\app\\src\\a.rs"} => Read src\a.rs"#;
        for (i, case) in cases.lines().enumerate() {
            let (name, rest) = case.split_once(' ').unwrap();
            let (input, expected) = rest.rsplit_once(" => ").unwrap();
            let cwd = if i == 21 {
                r"C:\Projects\App"
            } else {
                "/home/u/repo"
            };
            let mut parser = StreamParser::new();
            let init = serde_json::json!({"type": "system", "subtype": "init", "cwd": cwd});
            assert_eq!(parser.feed_line(&init.to_string()), []);
            let line = format!(
                r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","name":"{name}","input":{input}}}]}}}}"#
            );
            let steps: Vec<_> = parser.feed_line(&line).iter().map(render).collect();
            assert_eq!(steps.join("|").replace("step ", ""), expected, "{case}");
        }
    }

    #[test]
    fn steps_are_clipped_on_char_boundaries() {
        let command = "é".repeat(1 << 20);
        let line = format!(
            r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","name":"Bash","input":{{"command":"{command}"}}}}]}}}}"#
        );
        let [ClaudeEvent::Step(step)] = &StreamParser::new().feed_line(&line)[..] else {
            panic!()
        };
        assert_eq!(step.chars().count(), MAX_STEP_CHARS);
        assert!(step.starts_with("Bash: éé") && step.ends_with("é…"));
        assert_eq!(
            (clip("abc", 3).as_str(), clip("abcd", 3).as_str()),
            ("abc", "ab…")
        );
    }

    #[test]
    fn subagent_text_and_thinking_are_not_output() {
        let mut parser = StreamParser::new();
        let sub = r#"{"type":"assistant","parent_tool_use_id":"t1","message":{"content":[{"type":"text","text":"report"},{"type":"tool_use","name":"Glob","input":{"pattern":"*"}}]}}"#;
        assert_eq!(parser.feed_line(sub), [ClaudeEvent::Step("Glob *".into())]);
        let main = r#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"hi"},{"type":"text","text":" "}]}}"#;
        assert_eq!(parser.feed_line(main), [ClaudeEvent::Output("hi".into())]);
    }

    #[test]
    fn tolerates_bad_lines() {
        let bad = r#"garbage
{
null
"text"
[1,2]
{}
{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","inp
{"type":"brand_new_event","x":{"y":[1,2]}}
{"type":"system","subtype":"new_thing","weird":true}
{"type":"user","message":{"role":"user","content":"plain string content"}}
{"type":"assistant","message":"not an object"}
{"type":"assistant","message":{"content":5}}
{"type":"assistant","message":{"content":[7,"x",null,{"type":"text","text":9}]}}
{"type":"system","subtype":"init","cwd":7,"model":[],"session_id":{}}
{"type":7,"session_id":null}"#;
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let huge = "x".repeat(1 << 20);
        let mut parser = StreamParser::new();
        for line in bad.lines().chain(["", "  ", "\r", &deep, &huge]) {
            assert_eq!(parser.feed_line(line), [], "{line:.80}");
        }
        // Unknown fields and odd types next to usable ones.
        let odd = r#"{"type":"assistant","new":{"a":1},"message":{"content":[{"type":"tool_use","name":"Read","input":[1]},{"type":"text","text":"ok","extra":1}]}}"#;
        assert_eq!(
            parser.feed_line(odd).iter().map(render).collect::<Vec<_>>(),
            ["step Read", "output ok"]
        );
        let odd = r#"{"type":"result","is_error":"yes","num_turns":"3","total_cost_usd":"1","errors":[1,"boom"],"usage":5,"modelUsage":[]}"#;
        let expected = "finished error=true unknown None cost=None tokens=(None, None) turns=None ms=None auth=false: boom";
        assert_eq!(render(&parser.feed_line(odd)[0]), expected);
        // Every fixture line cut short.
        let mut parser = StreamParser::new();
        for line in [SIMPLE, MANY, MAX_TURNS, ABORTED, NOT_LOGGED_IN]
            .iter()
            .flat_map(|f| f.lines())
        {
            for cut in [1, line.len() / 2, line.len() - 1] {
                let cut = (0..=cut).rev().find(|&i| line.is_char_boundary(i)).unwrap();
                assert_eq!(parser.feed_line(&line[..cut]), []);
            }
        }
        let text = parser.finish(Some(2)).unwrap().text;
        assert!(text.starts_with("Claude Code exited with code 2 without reporting a result: "));
    }
}
