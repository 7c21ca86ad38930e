//! `baton-agent hook` and `baton-agent approve "TEXT"`: a running task asks
//! the agent (over the socket in [`APPROVAL_SOCKET_ENV`], see
//! [`crate::approvals`]) whether it may go ahead, and waits.
//!
//! - `hook` is Claude Code's `PreToolUse` hook: the hook input JSON on
//!   stdin, exit 0. A no is Claude Code's hook output JSON on stdout
//!   (`permissionDecision: "deny"` with the reason). A yes prints nothing:
//!   no decision, so Claude Code's own permissions (the persona's allowed
//!   tools) still apply. A hook `allow` would skip them, and a person's yes
//!   would then give a read-only persona tools it does not have: an approval
//!   is an extra gate, never a grant. It fails closed: anything that keeps it
//!   from asking is a `deny`.
//! - `approve` is for `command` tasks: the exit code is the answer
//!   ([`EXIT_APPROVED`], [`EXIT_DENIED`], [`EXIT_TIMED_OUT`]), or
//!   [`EXIT_CANNOT_ASK`] / [`EXIT_USAGE`] with a message on stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use baton_shared::limits::MAX_APPROVAL_INPUT_CHARS;
use baton_shared::protocol::Decision;
use serde_json::{Value, json};

use crate::approvals::{APPROVAL_SOCKET_ENV, Answer, Ask, COMMAND_TOOL, cut_view};

/// `approve`: a person said yes.
pub const EXIT_APPROVED: i32 = 0;
/// `approve`: a person said no.
pub const EXIT_DENIED: i32 = 1;
/// `approve`: nobody answered in time.
pub const EXIT_TIMED_OUT: i32 = 2;
/// `approve`: could not ask (not run by a Baton task, or the agent is unreachable).
pub const EXIT_CANNOT_ASK: i32 = 3;
/// `approve`: bad usage (no text, or more than one argument).
pub const EXIT_USAGE: i32 = 64;
/// Lines of a file's new text shown for `Write` and `Edit`.
pub const VIEW_LINES: usize = 10;

/// Asks the agent over the socket in [`APPROVAL_SOCKET_ENV`].
pub fn ask_agent(ask: &Ask) -> Result<Answer, String> {
    let path = std::env::var_os(APPROVAL_SOCKET_ENV).ok_or_else(|| {
        format!(
            "{APPROVAL_SOCKET_ENV} is not set: only a task run by baton-agent can ask for approval"
        )
    })?;
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the agent at {}: {e} (is its task still running?)",
            std::path::Path::new(&path).display()
        )
    })?;
    let mut line = serde_json::to_string(ask).map_err(|e| e.to_string())?;
    line.push('\n');
    conn.write_all(line.as_bytes())
        .map_err(|e| format!("cannot ask the agent: {e}"))?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the agent: {e}"))?;
    serde_json::from_str(&answer).map_err(|_| "the agent's answer could not be read".to_owned())
}

/// A short view of what a tool call wants to do, at most
/// [`MAX_APPROVAL_INPUT_CHARS`] characters: Bash's command; the file and the
/// first [`VIEW_LINES`] lines of the new text for `Write` and `Edit`; the
/// input as JSON for other tools.
pub fn input_view(tool: &str, input: &Value) -> String {
    let text = |k: &str| input.get(k).and_then(Value::as_str);
    let view = match (tool, text("command"), text("file_path")) {
        ("Bash", Some(command), _) => command.to_owned(),
        ("Write" | "Edit" | "MultiEdit", _, Some(file)) => {
            // Write's content, Edit's new text, or MultiEdit's first edit's.
            let first_edit = input.pointer("/edits/0/new_string").and_then(Value::as_str);
            let new = text("content")
                .or_else(|| text("new_string"))
                .or(first_edit);
            match new {
                Some(new) => {
                    let lines: Vec<&str> = new.lines().take(VIEW_LINES + 1).collect();
                    let more = if lines.len() > VIEW_LINES {
                        "\n…"
                    } else {
                        ""
                    };
                    let shown = lines[..lines.len().min(VIEW_LINES)].join("\n");
                    format!("{file}\n{shown}{more}")
                }
                None => file.to_owned(),
            }
        }
        _ => input.to_string(),
    };
    cut_view(&view, MAX_APPROVAL_INPUT_CHARS)
}

/// Claude Code's `PreToolUse` hook output for an answer: a `deny` with the
/// reason for a no; nothing for a yes (no decision: Claude Code's own
/// permissions apply, see the module's documentation).
pub fn hook_output(answer: &Answer) -> Option<Value> {
    if answer.decision.allows() {
        return None;
    }
    Some(json!({
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": answer.reason,
        }
    }))
}

/// What `hook` answers for the hook input `stdin`.
pub fn hook_answer(stdin: &str) -> Answer {
    let Ok(input) = serde_json::from_str::<Value>(stdin) else {
        return Answer::denied("Baton's hook could not read the hook input");
    };
    let tool = input
        .get("tool_name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let view = input_view(tool, input.get("tool_input").unwrap_or(&Value::Null));
    let ask = Ask {
        tool: tool.to_owned(),
        input: view,
    };
    ask_agent(&ask)
        .unwrap_or_else(|e| Answer::denied(format!("Baton could not ask for approval: {e}")))
}

/// `baton-agent hook`: prints the decision (nothing for a yes), always exits 0.
pub fn hook_main() -> i32 {
    let mut stdin = String::new();
    let answer = match std::io::stdin().read_to_string(&mut stdin) {
        Ok(_) => hook_answer(&stdin),
        Err(e) => Answer::denied(format!("Baton's hook could not read the hook input: {e}")),
    };
    if let Some(out) = hook_output(&answer) {
        println!("{out}");
    }
    0
}

/// `baton-agent approve TEXT`: the exit code is the answer.
pub fn approve_main(text: &str) -> i32 {
    let ask = Ask {
        tool: COMMAND_TOOL.into(),
        input: cut_view(text, MAX_APPROVAL_INPUT_CHARS),
    };
    match ask_agent(&ask) {
        Ok(a) => {
            eprintln!("baton-agent approve: {}", a.reason);
            match a.decision {
                Decision::Approved => EXIT_APPROVED,
                Decision::Denied => EXIT_DENIED,
                Decision::TimedOut => EXIT_TIMED_OUT,
            }
        }
        Err(e) => {
            eprintln!("baton-agent approve: {e}");
            EXIT_CANNOT_ASK
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/claude-code-hooks")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn view_of(payload: &str) -> String {
        let v: Value = serde_json::from_str(payload).unwrap();
        input_view(v["tool_name"].as_str().unwrap(), &v["tool_input"])
    }

    #[test]
    fn the_view_of_real_hook_inputs_is_the_command_or_the_file_and_its_first_lines() {
        let bash = view_of(&fixture("real-2025-11-pretooluse-input-bash.json"));
        let v: Value =
            serde_json::from_str(&fixture("real-2025-11-pretooluse-input-bash.json")).unwrap();
        assert_eq!(bash, v["tool_input"]["command"].as_str().unwrap());

        let edit = fixture("real-2025-11-pretooluse-input-edit.json");
        let v: Value = serde_json::from_str(&edit).unwrap();
        let file = v["tool_input"]["file_path"].as_str().unwrap();
        let new: Vec<&str> = v["tool_input"]["new_string"]
            .as_str()
            .unwrap()
            .lines()
            .collect();
        let view = view_of(&edit);
        assert!(view.starts_with(&format!("{file}\n{}", new[0])), "{view}");

        let write = fixture("real-2025-11-pretooluse-input-write.json");
        let v: Value = serde_json::from_str(&write).unwrap();
        let content = v["tool_input"]["content"].as_str().unwrap();
        assert!(content.lines().count() > VIEW_LINES);
        let view = view_of(&write);
        let file = v["tool_input"]["file_path"].as_str().unwrap();
        let first: Vec<&str> = content.lines().take(VIEW_LINES).collect();
        assert_eq!(view, format!("{file}\n{}\n…", first.join("\n")));

        for line in fixture("real-2.1.121-pretooluse-input-bash.jsonl").lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(view_of(line), v["tool_input"]["command"].as_str().unwrap());
        }
    }

    #[test]
    fn a_long_input_is_cut_to_the_protocol_limit() {
        let command = format!("echo {}", "y".repeat(5_000));
        let view = input_view("Bash", &json!({ "command": command }));
        assert_eq!(view.chars().count(), MAX_APPROVAL_INPUT_CHARS);
        assert!(view.starts_with("echo yyy") && view.ends_with('…'));
        let content = "é".repeat(3_000);
        let view = input_view("Write", &json!({"file_path": "/a.txt", "content": content}));
        assert_eq!(view.chars().count(), MAX_APPROVAL_INPUT_CHARS);
        let multi =
            json!({"file_path": "/a.rs", "edits": [{"old_string": "a", "new_string": "b\nc"}]});
        assert_eq!(input_view("MultiEdit", &multi), "/a.rs\nb\nc");
        assert_eq!(input_view("Edit", &json!({"file_path": "/a.rs"})), "/a.rs");
        // Another tool: its input as JSON.
        let view = input_view("WebFetch", &json!({"url": "https://example.com"}));
        assert_eq!(view, r#"{"url":"https://example.com"}"#);
    }

    #[test]
    fn the_hook_output_has_the_shape_of_the_documented_decision() {
        let doc: Value =
            serde_json::from_str(&fixture("docs-pretooluse-output-deny.json")).unwrap();
        let ours = hook_output(&Answer::decided(Decision::Denied, Some("U024BE7LH"))).unwrap();
        let doc_out = doc["hookSpecificOutput"].as_object().unwrap();
        let our_out = ours["hookSpecificOutput"].as_object().unwrap();
        let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(our_out), keys(doc_out));
        assert_eq!(our_out["hookEventName"], doc_out["hookEventName"]);
        assert_eq!(our_out["permissionDecision"], "deny");
        assert_eq!(
            our_out["permissionDecisionReason"],
            "denied by U024BE7LH in Slack"
        );
        // A yes decides nothing (the documented `allow` would skip the persona's permissions).
        assert_eq!(
            hook_output(&Answer::decided(Decision::Approved, Some("U1"))),
            None
        );
        let late = hook_output(&Answer::decided(Decision::TimedOut, None)).unwrap();
        assert_eq!(late["hookSpecificOutput"]["permissionDecision"], "deny");
        assert_eq!(
            late["hookSpecificOutput"]["permissionDecisionReason"],
            "no answer in time"
        );
    }

    #[test]
    fn a_hook_input_that_is_not_json_is_denied() {
        let a = hook_answer("not json");
        assert_eq!(a.decision, Decision::Denied);
        assert!(a.reason.contains("could not read"), "{}", a.reason);
    }
}
