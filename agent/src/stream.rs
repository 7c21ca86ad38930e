//! What the four stream executors (`claude`, `codex`, `gemini`, `opencode`) share: the events a
//! CLI's machine-readable output becomes, the result a run ends with, the [`EventParser`] each
//! CLI's parser implements, and the helpers that turn a tool call into a step people can read.
//!
//! Each CLI has its own parser module ([`crate::claude_stream`], [`crate::codex_stream`],
//! [`crate::gemini_stream`], [`crate::opencode_stream`]); `exec` drives them all the same way:
//! one line of stdout in, events out, and [`EventParser::finish`] once the process has exited.

use serde_json::Value;

use crate::claude_stream::{self, ClaudeEvent, ClaudeResult};

/// Longest step, in characters; longer steps are cut and end with `…`.
pub const MAX_STEP_CHARS: usize = claude_stream::MAX_STEP_CHARS;

/// Longest stray line or error message, in characters, kept to explain a run that ended
/// without a result.
pub const MAX_REMEMBERED_CHARS: usize = claude_stream::MAX_REMEMBERED_CHARS;

/// Lower-case phrases that mark a failed run's message as an authentication problem (the agent
/// is misconfigured, not the task failed).
const AUTH_FAILURE_PHRASES: &[&str] = &[
    "not logged in",
    "invalid api key",
    "please run /login",
    "unauthorized",
    "unauthenticated",
    "api key not valid",
    "authentication failed",
    "invalid_api_key",
];

/// One thing worth telling people, from a line of a CLI's output.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A short, one-line step for the progress list.
    Step(String),
    /// Text for the output, as it should be appended (it carries its own newlines).
    Output(String),
    /// The run's end, as the CLI reported it.
    Finished(RunResult),
}

/// How a run ended: reported by the CLI, or made up by [`EventParser::finish`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunResult {
    /// The run failed.
    pub is_error: bool,
    /// The CLI never reported an end (it crashed or was killed): made up from what was seen.
    pub no_result: bool,
    /// The final answer, or for a failure the CLI's own message.
    pub text: String,
    /// The session (thread) id, for resuming in a follow-up.
    pub session_id: Option<String>,
    /// Cost in US dollars, where the CLI reports it.
    pub cost_usd: Option<f64>,
    /// Input tokens (cache reads and writes included), where reported.
    pub input_tokens: Option<u64>,
    /// Output tokens, where reported.
    pub output_tokens: Option<u64>,
    /// Model turns, where reported.
    pub num_turns: Option<u64>,
    /// Wall-clock time of the run as the CLI measured it.
    pub duration_ms: Option<u64>,
    /// The CLI is not authenticated: the agent is misconfigured rather than the task failed.
    pub auth_failure: bool,
}

/// A parser for one CLI's machine-readable output.
pub trait EventParser: Send {
    /// Parses one line of stdout. Never fails and never panics: a line that is not an event
    /// gives nothing (and may be quoted by [`EventParser::finish`]).
    fn feed_line(&mut self, line: &str) -> Vec<StreamEvent>;

    /// Called once the process has exited, with its exit code (`None` if killed by a signal).
    /// Returns the run's result when none was reported during the stream, else `None`.
    fn finish(&mut self, exit_code: Option<i32>) -> Option<RunResult>;
}

impl From<ClaudeResult> for RunResult {
    fn from(r: ClaudeResult) -> Self {
        RunResult {
            is_error: r.is_error,
            no_result: r.subtype == claude_stream::NO_RESULT_SUBTYPE,
            text: r.text,
            session_id: r.session_id,
            cost_usd: r.cost_usd,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            num_turns: r.num_turns,
            duration_ms: r.duration_ms,
            auth_failure: r.auth_failure,
        }
    }
}

impl EventParser for claude_stream::StreamParser {
    fn feed_line(&mut self, line: &str) -> Vec<StreamEvent> {
        claude_stream::StreamParser::feed_line(self, line)
            .into_iter()
            .map(|e| match e {
                ClaudeEvent::Step(s) => StreamEvent::Step(s),
                // Each assistant text block is a paragraph of its own.
                ClaudeEvent::Output(t) => StreamEvent::Output(format!("{t}\n")),
                ClaudeEvent::Finished(r) => StreamEvent::Finished(r.into()),
            })
            .collect()
    }

    fn finish(&mut self, exit_code: Option<i32>) -> Option<RunResult> {
        claude_stream::StreamParser::finish(self, exit_code).map(Into::into)
    }
}

/// What a parser remembers to explain a run that ended without a result.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    /// The last error message the CLI printed as an event.
    pub last_error: Option<String>,
    /// The last line that was not an event.
    pub last_stray: Option<String>,
}

impl Leftovers {
    /// Keeps `line` as the last stray line.
    pub fn stray(&mut self, line: &str) {
        self.last_stray = Some(clip(line.trim(), MAX_REMEMBERED_CHARS));
    }

    /// Keeps `message` as the last error.
    pub fn error(&mut self, message: &str) {
        self.last_error = Some(clip(message.trim(), MAX_REMEMBERED_CHARS));
    }

    /// The failed result of a run of `cli` that ended with `exit_code` and never reported an
    /// end, quoting the last error or stray line.
    pub fn no_result(&self, cli: &str, exit_code: Option<i32>) -> RunResult {
        let mut text = match exit_code {
            Some(0) => format!("{cli} exited without reporting a result"),
            Some(code) => format!("{cli} exited with code {code} without reporting a result"),
            None => format!("{cli} was killed before reporting a result"),
        };
        if let Some(detail) = self.last_error.as_ref().or(self.last_stray.as_ref()) {
            text = format!("{text}: {detail}");
        }
        RunResult {
            is_error: true,
            no_result: true,
            auth_failure: mentions_auth_failure(&text),
            text,
            ..Default::default()
        }
    }
}

/// Parses a line as a JSON object; blank lines and anything else give `None` (non-blank ones
/// are kept in `leftovers`).
pub fn parse_line(line: &str, leftovers: &mut Leftovers) -> Option<Value> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    match serde_json::from_str::<Value>(line) {
        Ok(v) if v.is_object() => Some(v),
        _ => {
            leftovers.stray(line);
            None
        }
    }
}

/// Whether a failed run's message says the CLI is not authenticated.
pub fn mentions_auth_failure(text: &str) -> bool {
    let text = text.to_lowercase();
    AUTH_FAILURE_PHRASES
        .iter()
        .any(|phrase| text.contains(phrase))
}

/// `value` trimmed, if it is a non-blank string.
pub fn nonblank(value: &Value) -> Option<&str> {
    value.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// The first non-blank line of `text`, trimmed.
pub fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|line| !line.is_empty())
}

/// A step as shown: whitespace runs (newlines included) become one space, then clipped.
pub fn step_text(step: &str) -> String {
    clip(
        &step.split_whitespace().collect::<Vec<_>>().join(" "),
        MAX_STEP_CHARS,
    )
}

/// `text` cut to at most `max` characters (on a char boundary), ending with `…` if cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().nth(max).is_none() {
        return text.to_owned();
    }
    let cut = text
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(text.len(), |(i, _)| i);
    format!("{}…", text.get(..cut).unwrap_or_default())
}

/// `path` relative to `cwd` when it lies under it (`"."` for `cwd` itself), else unchanged.
pub fn relative<'a>(path: &'a str, cwd: Option<&str>) -> &'a str {
    let Some(cwd) = cwd
        .map(|c| c.trim_end_matches('/'))
        .filter(|c| !c.is_empty())
    else {
        return path;
    };
    match path.strip_prefix(cwd) {
        Some("") | Some("/") => ".",
        Some(rest) if rest.starts_with('/') => &rest[1..],
        _ => path,
    }
}

/// The command a shell wrapper runs: `/bin/zsh -lc 'git status'` is `git status`; anything
/// else is returned as it is.
pub fn shell_body(command: &str) -> &str {
    let command = command.trim();
    let mut parts = command.splitn(3, char::is_whitespace);
    let (Some(program), Some(flag), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return command;
    };
    let shell = program.rsplit('/').next().unwrap_or(program);
    if !matches!(shell, "bash" | "zsh" | "sh") || !matches!(flag, "-c" | "-lc") {
        return command;
    }
    let rest = rest.trim();
    for quote in ['\'', '"'] {
        if let Some(inner) = rest.strip_prefix(quote).and_then(|r| r.strip_suffix(quote)) {
            return inner;
        }
    }
    rest
}

/// The first of `keys` in `input` that holds a non-blank string.
fn input_str<'a>(input: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| nonblank(input.get(k)?))
}

/// Keys that name a file in the tools of the CLIs (`file_path`, `filePath`, `path`, …).
const PATH_KEYS: &[&str] = &[
    "file_path",
    "filePath",
    "absolute_path",
    "path",
    "dir_path",
    "notebook_path",
];

/// The steps for one tool call of a CLI other than Claude Code, whose tool names differ
/// (`read_file`, `run_shell_command`, `bash`, `list_directory`, …): mapped onto the same verbs
/// as Claude's steps ("Read src/a.rs", "Bash: cargo test"). Paths are shown relative to `cwd`.
pub fn tool_steps(name: &str, input: &Value, cwd: Option<&str>) -> Vec<String> {
    let path = || input_str(input, PATH_KEYS).map(|p| relative(p, cwd));
    let verb = |v: &str| match path() {
        Some(p) => format!("{v} {p}"),
        None => v.to_owned(),
    };
    let lower = name.to_ascii_lowercase();
    let step = match lower.as_str() {
        "read" | "read_file" | "view" => verb("Read"),
        "read_many_files" => match input.get("paths").and_then(Value::as_array) {
            Some(paths) => {
                let names: Vec<&str> = paths
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|p| relative(p, cwd))
                    .collect();
                format!("Read {}", names.join(", "))
            }
            None => "Read files".to_owned(),
        },
        "write" | "write_file" | "create" => verb("Write"),
        "edit" | "replace" | "multiedit" | "patch" | "apply_patch" => verb("Edit"),
        "bash" | "shell" | "run_shell_command" => {
            match input_str(input, &["command", "cmd"]).and_then(first_line) {
                Some(c) => format!("Bash: {c}"),
                None => "Bash".to_owned(),
            }
        }
        "grep" | "search_file_content" | "grep_search" => {
            let pattern = input_str(input, &["pattern", "query"]).unwrap_or_default();
            let within = match path() {
                Some(p) if p != "." => format!(" in {p}"),
                _ => String::new(),
            };
            format!("Grep \"{pattern}\"{within}")
        }
        "glob" => format!(
            "Glob {}",
            input_str(input, &["pattern"]).unwrap_or_default()
        ),
        "list" | "ls" | "list_directory" => format!("List {}", path().unwrap_or(".")),
        "webfetch" | "web_fetch" => match input_str(input, &["url", "prompt"]) {
            Some(u) => format!("Fetch {u}"),
            None => "Fetch".to_owned(),
        },
        "websearch" | "web_search" | "google_web_search" => {
            format!(
                "Search \"{}\"",
                input_str(input, &["query"]).unwrap_or_default()
            )
        }
        "todowrite" | "write_todos" => return todo_steps(input),
        "task" => match input_str(input, &["description", "prompt"]) {
            Some(d) => format!("Agent: {d}"),
            None => "Agent".to_owned(),
        },
        // Gemini CLI names the phase it is in by itself; its title is a good step.
        "update_topic" => match input_str(input, &["title"]) {
            Some(t) => format!("Topic: {t}"),
            None => return Vec::new(),
        },
        _ => match input
            .as_object()
            .and_then(|o| o.values().find_map(nonblank))
        {
            Some(s) => format!("{name}: {s}"),
            None => name.to_owned(),
        },
    };
    vec![step]
}

/// One step per to-do item, with a status mark: `☑` completed, `◐` in progress, `☐` pending.
/// Items are `{content|description|text, status}` or `{text, completed}`.
pub fn todo_steps(input: &Value) -> Vec<String> {
    let Some(todos) = input
        .get("todos")
        .or_else(|| input.get("items"))
        .and_then(Value::as_array)
    else {
        return vec!["Todo list".to_owned()];
    };
    if todos.is_empty() {
        return vec!["Todo list cleared".to_owned()];
    }
    todos
        .iter()
        .filter_map(|todo| {
            let content = input_str(todo, &["content", "description", "text"])?;
            let mark = match (
                todo.get("status").and_then(Value::as_str),
                todo.get("completed").and_then(Value::as_bool),
            ) {
                (Some("completed"), _) | (_, Some(true)) => '☑',
                (Some("in_progress"), _) => '◐',
                (Some("pending"), _) | (_, Some(false)) => '☐',
                _ => '•',
            };
            Some(format!("{mark} {content}"))
        })
        .collect()
}

/// A sum of optional counts: `None` only when both are.
pub fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_calls_of_other_clis_read_like_claudes() {
        let cwd = Some("/home/u/repo");
        let cases = [
            (
                "read_file",
                json!({"file_path": "/home/u/repo/src/a.rs"}),
                "Read src/a.rs",
            ),
            (
                "read",
                json!({"filePath": "/elsewhere/x"}),
                "Read /elsewhere/x",
            ),
            (
                "write_file",
                json!({"file_path": "notes.md", "content": "x"}),
                "Write notes.md",
            ),
            (
                "replace",
                json!({"file_path": "/home/u/repo/b.rs"}),
                "Edit b.rs",
            ),
            (
                "run_shell_command",
                json!({"command": "cargo test\necho"}),
                "Bash: cargo test",
            ),
            ("bash", json!({"command": "ls"}), "Bash: ls"),
            (
                "list_directory",
                json!({"dir_path": "/home/u/repo"}),
                "List .",
            ),
            ("list", json!({}), "List ."),
            (
                "grep",
                json!({"pattern": "TODO", "path": "/home/u/repo/src"}),
                "Grep \"TODO\" in src",
            ),
            ("glob", json!({"pattern": "**/*.rs"}), "Glob **/*.rs"),
            (
                "google_web_search",
                json!({"query": "serde"}),
                "Search \"serde\"",
            ),
            (
                "webfetch",
                json!({"url": "https://x.dev"}),
                "Fetch https://x.dev",
            ),
            (
                "update_topic",
                json!({"title": "Reading", "summary": "long"}),
                "Topic: Reading",
            ),
            ("mystery", json!({"n": 1, "what": "it"}), "mystery: it"),
            ("mystery", json!([1]), "mystery"),
        ];
        for (name, input, expected) in cases {
            assert_eq!(tool_steps(name, &input, cwd), [expected], "{name} {input}");
        }
        assert!(tool_steps("update_topic", &json!({}), cwd).is_empty());
        let todos = json!({"todos": [{"description": "a", "status": "completed"}, {"content": "b", "status": "in_progress"}]});
        assert_eq!(tool_steps("write_todos", &todos, cwd), ["☑ a", "◐ b"]);
        let items =
            json!({"items": [{"text": "x", "completed": true}, {"text": "y", "completed": false}]});
        assert_eq!(todo_steps(&items), ["☑ x", "☐ y"]);
    }

    #[test]
    fn shell_wrappers_are_unwrapped() {
        assert_eq!(
            shell_body("/bin/zsh -lc 'git status --short'"),
            "git status --short"
        );
        assert_eq!(shell_body("bash -lc ls"), "ls");
        assert_eq!(shell_body("/bin/bash -c \"a && b\""), "a && b");
        assert_eq!(shell_body("python3 -c 'x'"), "python3 -c 'x'");
        assert_eq!(shell_body("ls"), "ls");
    }

    #[test]
    fn leftovers_explain_a_missing_result() {
        let mut l = Leftovers::default();
        assert_eq!(
            l.no_result("Codex", None).text,
            "Codex was killed before reporting a result"
        );
        l.stray("Segmentation fault");
        let r = l.no_result("Codex", Some(139));
        assert!(r.is_error && r.no_result && !r.auth_failure);
        assert_eq!(
            r.text,
            "Codex exited with code 139 without reporting a result: Segmentation fault"
        );
        l.error("401 Unauthorized");
        assert!(l.no_result("Codex", Some(1)).auth_failure);
        assert_eq!(parse_line("[1]", &mut l), None);
        assert_eq!(l.last_stray.as_deref(), Some("[1]"));
        assert_eq!(parse_line("   ", &mut l), None);
        assert!(parse_line("{\"type\":1}", &mut l).is_some());
    }
}
