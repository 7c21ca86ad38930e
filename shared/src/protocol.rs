//! The bot↔agent wire protocol, version 1.
//!
//! Every frame is one JSON object in a WebSocket text frame, tagged by its
//! `"type"` field. Unknown fields are ignored (additive changes keep the
//! version); a change that an older peer would misread bumps
//! [`PROTOCOL_VERSION`]. See `docs/protocol.md` for every message with an
//! example.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentName, Persona, ProjectName, SessionId, TaskId};
use crate::limits::{
    MAX_APPROVAL_INPUT_CHARS, MAX_APPROVAL_TOOL_CHARS, MAX_APPROVALS_PER_TASK, MAX_ERROR_BYTES,
    MAX_FILE_BYTES, MAX_FILES_PER_TASK, MAX_FRAME_BYTES, MAX_HELLO_TASKS, MAX_OUTPUT_CHUNK_BYTES,
    MAX_PROJECTS_PER_AGENT, MAX_PROMPT_CHARS, MAX_RESULT_BYTES, MAX_STEP_CHARS,
};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A per-task sequence number. The agent numbers every event of a task from 1
/// upwards; the bot applies an event only if its number is higher than the
/// last one it applied for that task.
pub type Seq = u64;

/// WebSocket close codes Baton uses, beside the standard ones (1000 normal,
/// 1001 going away, 1009 message too big).
pub mod close_code {
    /// The agent's protocol version is not supported; do not retry soon.
    pub const UNSUPPORTED_VERSION: u16 = 4000;
    /// Too many malformed frames in a row.
    pub const PROTOCOL_ERRORS: u16 = 4002;
    /// The agent's key was revoked; do not reconnect with it.
    pub const REVOKED: u16 = 4003;
    /// Another live connection already uses this key; back off for long.
    pub const DUPLICATE: u16 = 4009;
    /// The first frame was not a hello, or it came too late.
    pub const NO_HELLO: u16 = 4010;
}

/// A project an agent serves, as announced in its hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectInfo {
    /// The project's name.
    pub name: ProjectName,
    /// How many of this project's tasks the agent runs at once.
    #[serde(default = "one")]
    pub max_concurrent: u32,
}

fn one() -> u32 {
    1
}

/// The agent's first frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the agent speaks.
    pub protocol: u32,
    /// The agent's build, for logs and `/baton-admin health`.
    #[serde(default)]
    pub agent_version: String,
    /// How many tasks the agent runs at once.
    pub capacity: u32,
    /// The projects the agent serves.
    pub projects: Vec<ProjectInfo>,
    /// Tasks the agent is running now (accepted and not finished).
    #[serde(default)]
    pub running: Vec<TaskId>,
    /// Tasks whose final event the agent holds and will re-send.
    #[serde(default)]
    pub held_results: Vec<TaskId>,
}

/// What a task produced when it completed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskResult {
    /// The result text (Markdown for the `claude` executor, plain output for `command`).
    pub text: String,
    /// The executor's session id, to resume it in a follow-up task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Cost reported by the executor, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Input tokens used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Model turns taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u64>,
    /// How long the task ran, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Why a task failed. The circuit breaker counts only the causes that say
/// something about the agent's health (see [`FailureCause::counts_against_agent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// The task ran and reported its own failure (non-zero exit, an error result).
    Task,
    /// The executor could not be started.
    Spawn,
    /// The executor died abnormally (killed by a signal it was not sent).
    Crashed,
    /// The task exceeded its maximum duration.
    Timeout,
    /// The executor is misconfigured (for example the Claude CLI is not logged in).
    Misconfigured,
    /// The agent restarted and no longer knows the task.
    AgentRestarted,
    /// The agent was shutting down and stopped the task.
    AgentShutdown,
    /// The agent disconnected and did not come back within the grace period.
    AgentLost,
}

impl FailureCause {
    /// Whether this failure counts against the agent's circuit breaker.
    ///
    /// The task's own failure does not, and neither does a planned shutdown:
    /// deploying agents must not open their circuits.
    pub fn counts_against_agent(self) -> bool {
        !matches!(self, FailureCause::Task | FailureCause::AgentShutdown)
    }

    /// The cause as a short phrase for people.
    pub fn describe(self) -> &'static str {
        match self {
            FailureCause::Task => "the task failed",
            FailureCause::Spawn => "the executor could not start",
            FailureCause::Crashed => "the executor crashed",
            FailureCause::Timeout => "timed out",
            FailureCause::Misconfigured => "the agent is misconfigured",
            FailureCause::AgentRestarted => "agent restarted",
            FailureCause::AgentShutdown => "agent shut down",
            FailureCause::AgentLost => "agent lost",
        }
    }
}

/// Why an agent refused a submitted task. The bot re-queues on the
/// transient reasons and fails the task on the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The agent is at capacity (for the agent or for the project).
    Busy,
    /// The agent is shutting down.
    Draining,
    /// The agent does not serve this project.
    UnknownProject,
    /// The agent already ran this task (a redelivered submit) and holds no result for it.
    AlreadySeen,
    /// The submit was invalid (for example a prompt over the limit).
    Invalid,
}

impl RejectReason {
    /// Whether the task should go back to its queue rather than fail.
    pub fn is_transient(self) -> bool {
        matches!(self, RejectReason::Busy | RejectReason::Draining)
    }
}

/// A frame from the agent to the bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First frame on a connection: who the agent is ready to be.
    Hello(Hello),
    /// The agent recorded the task and will run it.
    Accepted {
        /// The task.
        task: TaskId,
        /// This event's sequence number.
        seq: Seq,
    },
    /// The agent will not run the task.
    Rejected {
        /// The task.
        task: TaskId,
        /// This event's sequence number.
        seq: Seq,
        /// Why, as a code.
        reason: RejectReason,
        /// Why, for people.
        #[serde(default)]
        message: String,
    },
    /// A progress step ("Edit src/auth.rs").
    Step {
        /// The task.
        task: TaskId,
        /// This event's sequence number.
        seq: Seq,
        /// The step, one line.
        text: String,
    },
    /// A chunk of the task's output.
    Output {
        /// The task.
        task: TaskId,
        /// This event's sequence number.
        seq: Seq,
        /// The text, one or more lines.
        text: String,
    },
    /// The task ended successfully. Final: the agent keeps it until acknowledged.
    Completed {
        /// The task.
        task: TaskId,
        /// This event's sequence number.
        seq: Seq,
        /// What it produced.
        result: TaskResult,
    },
    /// The task ended in failure. Final: the agent keeps it until acknowledged.
    Failed {
        /// The task.
        task: TaskId,
        /// This event's sequence number.
        seq: Seq,
        /// What went wrong, for people (the tail of stderr, the error result).
        error: String,
        /// What kind of failure it was.
        cause: FailureCause,
        /// The executor's session id, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
    },
    /// The task was cancelled as asked. Final: the agent keeps it until acknowledged.
    Cancelled {
        /// The task.
        task: TaskId,
        /// This event's sequence number.
        seq: Seq,
    },
    /// The agent is shutting down: send it no more tasks.
    Draining,
    /// A running task asks a person's yes before a tool call. Not a sequenced
    /// event: `(task, request)` names it, the agent re-sends every undecided
    /// request after each `welcome`, and the bot records it once and answers
    /// (again) with `approval_decision` when it has one.
    ApprovalRequest {
        /// The task.
        task: TaskId,
        /// The request's number within the task, from 1.
        request: u32,
        /// What asks: a Claude Code tool name ("Bash", "Edit"), or
        /// `command` for a `"$BATON_AGENT" approve` from a command task.
        tool: String,
        /// A short view of what it wants to do (the command, the file), cut
        /// by the agent to [`MAX_APPROVAL_INPUT_CHARS`].
        #[serde(default)]
        input: String,
    },
}

impl AgentMessage {
    /// The task and sequence number of a task event; `None` for the others.
    pub fn task_seq(&self) -> Option<(TaskId, Seq)> {
        match self {
            AgentMessage::Accepted { task, seq }
            | AgentMessage::Rejected { task, seq, .. }
            | AgentMessage::Step { task, seq, .. }
            | AgentMessage::Output { task, seq, .. }
            | AgentMessage::Completed { task, seq, .. }
            | AgentMessage::Failed { task, seq, .. }
            | AgentMessage::Cancelled { task, seq } => Some((*task, *seq)),
            AgentMessage::Hello(_)
            | AgentMessage::Draining
            | AgentMessage::ApprovalRequest { .. } => None,
        }
    }

    /// Whether this is a task's final event, which the bot acknowledges.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            AgentMessage::Completed { .. }
                | AgentMessage::Failed { .. }
                | AgentMessage::Cancelled { .. }
        )
    }

    /// Parses and validates a frame from an agent.
    pub fn decode(frame: &str) -> Result<Self, ProtocolError> {
        let msg: AgentMessage = decode_frame(frame, AGENT_TYPES)?;
        msg.validate()?;
        Ok(msg)
    }

    /// Serialises the frame.
    pub fn encode(&self) -> String {
        encode(self)
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            AgentMessage::Hello(h) => {
                if h.protocol != PROTOCOL_VERSION {
                    return Err(ProtocolError::UnsupportedVersion(h.protocol));
                }
                if h.capacity == 0 {
                    return Err(invalid("capacity must be at least 1"));
                }
                if h.projects.len() > MAX_PROJECTS_PER_AGENT {
                    return Err(too_large("projects", MAX_PROJECTS_PER_AGENT));
                }
                if h.running.len() + h.held_results.len() > MAX_HELLO_TASKS {
                    return Err(too_large("running and held_results", MAX_HELLO_TASKS));
                }
                Ok(())
            }
            AgentMessage::Step { text, .. } if text.chars().count() > MAX_STEP_CHARS => {
                Err(too_large("step text", MAX_STEP_CHARS))
            }
            AgentMessage::Output { text, .. } if text.len() > MAX_OUTPUT_CHUNK_BYTES => {
                Err(too_large("output text", MAX_OUTPUT_CHUNK_BYTES))
            }
            AgentMessage::Completed { result, .. } if result.text.len() > MAX_RESULT_BYTES => {
                Err(too_large("result text", MAX_RESULT_BYTES))
            }
            AgentMessage::Failed { error, .. } if error.len() > MAX_ERROR_BYTES => {
                Err(too_large("error text", MAX_ERROR_BYTES))
            }
            AgentMessage::Rejected { message, .. } if message.len() > MAX_ERROR_BYTES => {
                Err(too_large("message", MAX_ERROR_BYTES))
            }
            AgentMessage::ApprovalRequest {
                request,
                tool,
                input,
                ..
            } => {
                if *request == 0 || *request > MAX_APPROVALS_PER_TASK {
                    return Err(invalid(
                        "request must be between 1 and MAX_APPROVALS_PER_TASK",
                    ));
                }
                if tool.trim().is_empty() {
                    return Err(invalid("the tool is empty"));
                }
                if tool.chars().count() > MAX_APPROVAL_TOOL_CHARS {
                    return Err(too_large("tool", MAX_APPROVAL_TOOL_CHARS));
                }
                if input.chars().count() > MAX_APPROVAL_INPUT_CHARS {
                    return Err(too_large("input", MAX_APPROVAL_INPUT_CHARS));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A task handed to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    /// The task.
    pub task: TaskId,
    /// The project it runs in.
    pub project: ProjectName,
    /// The persona it runs as.
    pub persona: Persona,
    /// What to do.
    pub prompt: String,
    /// An executor session to resume (a follow-up in a task's thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The persona's system prompt, for executors that take one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The tools the persona may use, for executors that take a list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    /// The model to use, when one is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Files attached in Slack to the message that started the task or
    /// follow-up; the agent fetches each from the bot before it runs the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<SubmitFile>,
}

/// A file attached to a task: the agent fetches it with
/// `GET /agents/files/{task}/{id}` and writes it to `.baton/files/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitFile {
    /// Slack's file id (`F…`): the last part of the URL it is fetched from.
    pub id: String,
    /// The name it is written under, already made safe by the bot
    /// (`files::sanitize_file_name` / `files::unique_names`).
    pub name: String,
    /// Its size in bytes, as Slack announced it.
    pub size: u64,
}

/// A frame from the bot to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BotMessage {
    /// The answer to a valid hello.
    Welcome {
        /// The protocol version the bot speaks.
        protocol: u32,
        /// The agent's name, from its key.
        agent: AgentName,
        /// Heartbeat interval in seconds; silent for two intervals = dead.
        heartbeat_secs: u64,
    },
    /// Run this task. The agent records it, then answers `accepted`.
    /// Boxed: it is by far the largest frame, and a queue of frames sizes
    /// every slot by the largest variant (the bot keeps one queue per agent).
    Submit(Box<Submit>),
    /// Cancel this task; the agent answers `cancelled` (or the task's final event, if it already ended).
    Cancel {
        /// The task.
        task: TaskId,
    },
    /// The bot recorded this final event; the agent may forget it.
    Ack {
        /// The task.
        task: TaskId,
        /// The acknowledged event's sequence number.
        seq: Seq,
    },
    /// The answer to an `approval_request`. Sent once when decided, and
    /// again whenever the agent re-sends the request; the agent applies the
    /// first and ignores the rest.
    ApprovalDecision {
        /// The task.
        task: TaskId,
        /// The request's number within the task.
        request: u32,
        /// What was decided.
        decision: Decision,
        /// The Slack user who decided; `None` for a timeout.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The agent sent something the bot could not use; nothing was changed.
    Error {
        /// What kind of problem.
        code: ErrorCode,
        /// What was wrong, for the agent's log.
        message: String,
    },
}

impl BotMessage {
    /// Parses and validates a frame from the bot.
    pub fn decode(frame: &str) -> Result<Self, ProtocolError> {
        let msg: BotMessage = decode_frame(frame, BOT_TYPES)?;
        match &msg {
            BotMessage::Welcome { protocol, .. } if *protocol != PROTOCOL_VERSION => {
                Err(ProtocolError::UnsupportedVersion(*protocol))
            }
            BotMessage::Submit(s) if s.prompt.chars().count() > MAX_PROMPT_CHARS => {
                Err(too_large("prompt", MAX_PROMPT_CHARS))
            }
            BotMessage::Submit(s) if s.prompt.trim().is_empty() => {
                Err(invalid("the prompt is empty"))
            }
            BotMessage::Submit(s) if s.files.len() > MAX_FILES_PER_TASK => {
                Err(too_large("files", MAX_FILES_PER_TASK))
            }
            BotMessage::Submit(s) if let Some(why) = bad_file(&s.files) => Err(invalid(&why)),
            BotMessage::Submit(s) => match s.session_id.as_deref().map(SessionId::new) {
                // It would reach an executor's command line: refused, never passed on.
                Some(Err(e)) => Err(ProtocolError::Invalid(e.to_string())),
                _ => Ok(msg),
            },
            _ => Ok(msg),
        }
    }

    /// The task id of a frame that claims to be a `submit`, even one that
    /// [`BotMessage::decode`] refuses: the agent answers such a submit with a
    /// `rejected` (`invalid`) instead of leaving the bot waiting.
    pub fn submit_task_of(frame: &str) -> Option<TaskId> {
        let v: serde_json::Value = serde_json::from_str(frame).ok()?;
        if v.get("type")?.as_str()? != "submit" {
            return None;
        }
        v.get("task")?.as_i64().filter(|t| *t > 0).map(TaskId)
    }

    /// Serialises the frame.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// The protocol error frame for a decoding failure.
    pub fn error(err: &ProtocolError) -> Self {
        BotMessage::Error {
            code: err.code(),
            message: err.to_string(),
        }
    }
}

/// What a person (or the clock) decided about an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Go ahead.
    Approved,
    /// Do not.
    Denied,
    /// Nobody answered within `BATON_APPROVAL_TIMEOUT_SECS`: a no.
    TimedOut,
}

impl Decision {
    /// Whether the tool call may go ahead.
    pub fn allows(self) -> bool {
        self == Decision::Approved
    }
}

/// Kinds of protocol error, as sent in an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON, or not an object with a string `type`.
    Malformed,
    /// The `type` is not one this version knows.
    UnknownType,
    /// The fields do not fit the type, or break a rule.
    Invalid,
    /// The frame or one of its fields is over a limit.
    TooLarge,
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// The frame was valid but not expected now (a second hello, an event for
    /// a task that is not this agent's).
    Unexpected,
}

/// Why a frame could not be used. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame is not JSON, or not a JSON object with a `type`.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A `type` this protocol version does not have.
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// The right type with the wrong fields, or a broken rule.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// Over a size limit.
    #[error("{what} is over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit it broke.
        limit: usize,
    },
    /// A protocol version other than [`PROTOCOL_VERSION`].
    #[error("protocol version {0} is not supported; this side speaks version {PROTOCOL_VERSION}")]
    UnsupportedVersion(u32),
}

impl ProtocolError {
    /// The code sent in an `error` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Malformed(_) => ErrorCode::Malformed,
            ProtocolError::UnknownType(_) => ErrorCode::UnknownType,
            ProtocolError::Invalid(_) => ErrorCode::Invalid,
            ProtocolError::TooLarge { .. } => ErrorCode::TooLarge,
            ProtocolError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        }
    }
}

fn invalid(msg: &str) -> ProtocolError {
    ProtocolError::Invalid(msg.to_owned())
}

fn too_large(what: &'static str, limit: usize) -> ProtocolError {
    ProtocolError::TooLarge { what, limit }
}

/// Longest file id a submit may carry (Slack's are about a dozen characters).
const MAX_FILE_ID_CHARS: usize = 64;

/// What is wrong with a submit's files, if anything: an id that cannot go
/// in a URL path, a name that is not already safe (it names a path on the
/// agent), two files of one name, or a size over [`MAX_FILE_BYTES`].
fn bad_file(files: &[SubmitFile]) -> Option<String> {
    for (i, f) in files.iter().enumerate() {
        if f.id.is_empty()
            || f.id.len() > MAX_FILE_ID_CHARS
            || !f.id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Some(format!("the file id {:?} is not a Slack file id", f.id));
        }
        if crate::files::sanitize_file_name(&f.name) != f.name {
            return Some(format!("the file name {:?} is not a safe name", f.name));
        }
        if files[..i].iter().any(|o| o.name == f.name) {
            return Some(format!("two files are named {:?}", f.name));
        }
        if f.size > MAX_FILE_BYTES {
            return Some(format!("{} is larger than {MAX_FILE_BYTES} bytes", f.name));
        }
    }
    None
}

const AGENT_TYPES: &[&str] = &[
    "hello",
    "accepted",
    "rejected",
    "step",
    "output",
    "completed",
    "failed",
    "cancelled",
    "draining",
    "approval_request",
];
const BOT_TYPES: &[&str] = &[
    "welcome",
    "submit",
    "cancel",
    "ack",
    "approval_decision",
    "error",
];

/// Decodes a frame, telling malformed JSON, an unknown type and bad fields apart.
fn decode_frame<T: serde::de::DeserializeOwned>(
    frame: &str,
    known: &[&str],
) -> Result<T, ProtocolError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(too_large("frame", MAX_FRAME_BYTES));
    }
    match serde_json::from_str::<T>(frame) {
        Ok(msg) => Ok(msg),
        Err(err) if err.is_syntax() || err.is_eof() => {
            Err(ProtocolError::Malformed(err.to_string()))
        }
        Err(err) => {
            // Only on the error path: look at the tag alone to name the problem.
            #[derive(Deserialize)]
            struct Tag {
                #[serde(rename = "type")]
                kind: Option<serde_json::Value>,
            }
            match serde_json::from_str::<Tag>(frame) {
                Ok(Tag {
                    kind: Some(serde_json::Value::String(kind)),
                }) => {
                    if known.contains(&kind.as_str()) {
                        Err(ProtocolError::Invalid(err.to_string()))
                    } else {
                        Err(ProtocolError::UnknownType(kind))
                    }
                }
                _ => Err(ProtocolError::Malformed(
                    "expected a JSON object with a string `type`".to_owned(),
                )),
            }
        }
    }
}

fn encode<T: Serialize>(msg: &T) -> String {
    // Serialising these types cannot fail: every map key is a string and no
    // field has a fallible Serialize impl.
    serde_json::to_string(msg).unwrap_or_else(|err| {
        format!(r#"{{"type":"error","code":"invalid","message":"cannot encode: {err}"}}"#)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(name: &str) -> ProjectName {
        ProjectName::new(name).expect("valid name")
    }

    fn agent_messages() -> Vec<AgentMessage> {
        let t = TaskId(42);
        vec![
            AgentMessage::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
                capacity: 2,
                projects: vec![ProjectInfo {
                    name: project("web"),
                    max_concurrent: 1,
                }],
                running: vec![TaskId(40)],
                held_results: vec![TaskId(39)],
            }),
            AgentMessage::Accepted { task: t, seq: 1 },
            AgentMessage::Rejected {
                task: t,
                seq: 1,
                reason: RejectReason::Busy,
                message: "at capacity".into(),
            },
            AgentMessage::Step {
                task: t,
                seq: 2,
                text: "Edit src/auth.rs".into(),
            },
            AgentMessage::Output {
                task: t,
                seq: 3,
                text: "ok\n".into(),
            },
            AgentMessage::Completed {
                task: t,
                seq: 4,
                result: TaskResult {
                    text: "Done".into(),
                    session_id: Some("s-1".into()),
                    cost_usd: Some(0.25),
                    input_tokens: Some(10),
                    output_tokens: Some(20),
                    num_turns: Some(3),
                    duration_ms: Some(1500),
                },
            },
            AgentMessage::Failed {
                task: t,
                seq: 4,
                error: "exit status 1".into(),
                cause: FailureCause::Task,
                session_id: None,
            },
            AgentMessage::Cancelled { task: t, seq: 5 },
            AgentMessage::Draining,
            AgentMessage::ApprovalRequest {
                task: t,
                request: 1,
                tool: "Bash".into(),
                input: "rm -rf build/".into(),
            },
        ]
    }

    fn bot_messages() -> Vec<BotMessage> {
        vec![
            BotMessage::Welcome {
                protocol: PROTOCOL_VERSION,
                agent: AgentName::new("laptop").expect("valid"),
                heartbeat_secs: 15,
            },
            BotMessage::Submit(Box::new(Submit {
                task: TaskId(42),
                project: project("web"),
                persona: Persona::Review,
                prompt: "say hello".into(),
                session_id: Some("s-1".into()),
                system_prompt: Some("You review.".into()),
                allowed_tools: vec!["Read".into()],
                model: None,
                files: vec![SubmitFile {
                    id: "F0001".into(),
                    name: "notes.txt".into(),
                    size: 5,
                }],
            })),
            BotMessage::Cancel { task: TaskId(42) },
            BotMessage::Ack {
                task: TaskId(42),
                seq: 4,
            },
            BotMessage::ApprovalDecision {
                task: TaskId(42),
                request: 1,
                decision: Decision::Approved,
                by: Some("U1".into()),
            },
            BotMessage::ApprovalDecision {
                task: TaskId(42),
                request: 2,
                decision: Decision::TimedOut,
                by: None,
            },
            BotMessage::Error {
                code: ErrorCode::Malformed,
                message: "x".into(),
            },
        ]
    }

    #[test]
    fn every_agent_message_round_trips() {
        for msg in agent_messages() {
            let frame = msg.encode();
            assert_eq!(AgentMessage::decode(&frame), Ok(msg), "{frame}");
        }
    }

    #[test]
    fn every_bot_message_round_trips() {
        for msg in bot_messages() {
            let frame = msg.encode();
            assert_eq!(BotMessage::decode(&frame), Ok(msg), "{frame}");
        }
    }

    #[test]
    fn an_approval_request_out_of_bounds_is_refused() {
        let too_long = "x".repeat(MAX_APPROVAL_INPUT_CHARS + 1);
        for (frame, what) in [
            (
                r#"{"type":"approval_request","task":1,"request":0,"tool":"Bash"}"#.to_owned(),
                "request",
            ),
            (
                r#"{"type":"approval_request","task":1,"request":1,"tool":" "}"#.to_owned(),
                "tool",
            ),
            (
                format!(
                    r#"{{"type":"approval_request","task":1,"request":1,"tool":"Bash","input":"{too_long}"}}"#
                ),
                "input",
            ),
        ] {
            let err = AgentMessage::decode(&frame).expect_err(what);
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
        assert_eq!(
            BotMessage::decode(
                r#"{"type":"approval_decision","task":1,"request":1,"decision":"timed_out"}"#
            ),
            Ok(BotMessage::ApprovalDecision {
                task: TaskId(1),
                request: 1,
                decision: Decision::TimedOut,
                by: None,
            })
        );
    }

    #[test]
    fn wire_shape_is_flat_and_tagged() {
        let frame = AgentMessage::Step {
            task: TaskId(7),
            seq: 2,
            text: "x".into(),
        }
        .encode();
        assert_eq!(frame, r#"{"type":"step","task":7,"seq":2,"text":"x"}"#);
    }

    #[test]
    fn malformed_json_is_a_typed_error() {
        for frame in [
            "",
            "{",
            "not json",
            "[1,2]",
            "42",
            "null",
            r#"{"type":7}"#,
            r#"{"task":1}"#,
        ] {
            match AgentMessage::decode(frame) {
                Err(ProtocolError::Malformed(_)) => {}
                other => panic!("{frame:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_type_is_named() {
        assert_eq!(
            AgentMessage::decode(r#"{"type":"teleport","task":1}"#),
            Err(ProtocolError::UnknownType("teleport".into()))
        );
        assert_eq!(
            BotMessage::decode(r#"{"type":"hello"}"#),
            Err(ProtocolError::UnknownType("hello".into()))
        );
    }

    #[test]
    fn missing_or_wrong_fields_are_invalid() {
        for frame in [
            r#"{"type":"step","task":1}"#,
            r#"{"type":"step","task":"x","seq":1,"text":"a"}"#,
            r#"{"type":"failed","task":1,"seq":2,"error":"e","cause":"gremlins"}"#,
            r#"{"type":"hello","protocol":1,"capacity":0,"projects":[]}"#,
            r#"{"type":"hello","protocol":1,"capacity":1,"projects":[{"name":"../x"}]}"#,
        ] {
            match AgentMessage::decode(frame) {
                Err(ProtocolError::Invalid(_)) => {}
                other => panic!("{frame:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let frame = r#"{"type":"accepted","task":1,"seq":1,"future":"field"}"#;
        assert_eq!(
            AgentMessage::decode(frame),
            Ok(AgentMessage::Accepted {
                task: TaskId(1),
                seq: 1
            })
        );
    }

    #[test]
    fn wrong_version_is_refused() {
        let frame = r#"{"type":"hello","protocol":2,"capacity":1,"projects":[]}"#;
        assert_eq!(
            AgentMessage::decode(frame),
            Err(ProtocolError::UnsupportedVersion(2))
        );
        let frame = r#"{"type":"welcome","protocol":9,"agent":"a","heartbeat_secs":15}"#;
        assert_eq!(
            BotMessage::decode(frame),
            Err(ProtocolError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn oversized_input_is_refused() {
        let big = "x".repeat(MAX_FRAME_BYTES + 1);
        assert!(matches!(
            AgentMessage::decode(&big),
            Err(ProtocolError::TooLarge { .. })
        ));
        let step = AgentMessage::Step {
            task: TaskId(1),
            seq: 1,
            text: "é".repeat(MAX_STEP_CHARS + 1),
        };
        assert!(matches!(
            AgentMessage::decode(&step.encode()),
            Err(ProtocolError::TooLarge {
                what: "step text",
                ..
            })
        ));
        let output = AgentMessage::Output {
            task: TaskId(1),
            seq: 1,
            text: "x".repeat(MAX_OUTPUT_CHUNK_BYTES + 1),
        };
        assert!(AgentMessage::decode(&output.encode()).is_err());
        let mut submit = match bot_messages().remove(1) {
            BotMessage::Submit(s) => *s,
            _ => unreachable!(),
        };
        submit.prompt = "p".repeat(MAX_PROMPT_CHARS + 1);
        assert!(matches!(
            BotMessage::decode(&BotMessage::Submit(Box::new(submit)).encode()),
            Err(ProtocolError::TooLarge { what: "prompt", .. })
        ));
    }

    #[test]
    fn a_submit_with_unsafe_or_too_many_files_is_refused() {
        let base = match bot_messages().remove(1) {
            BotMessage::Submit(s) => *s,
            _ => unreachable!(),
        };
        let file = |id: &str, name: &str, size: u64| SubmitFile {
            id: id.into(),
            name: name.into(),
            size,
        };
        let decode = |files: Vec<SubmitFile>| {
            let mut s = base.clone();
            s.files = files;
            BotMessage::decode(&BotMessage::Submit(Box::new(s)).encode())
        };
        assert!(decode(vec![file("F1", "a.txt", 1), file("F2", "b.txt", 2)]).is_ok());
        for bad in [
            vec![file("F1", "../etc/passwd", 1)],
            vec![file("F1", ".env", 1)],
            vec![file("../x", "a.txt", 1)],
            vec![file("F1", "a.txt", 1), file("F2", "a.txt", 1)],
            vec![file("F1", "a.txt", MAX_FILE_BYTES + 1)],
        ] {
            assert!(
                matches!(decode(bad.clone()), Err(ProtocolError::Invalid(_))),
                "{bad:?}"
            );
        }
        let many = (0..=MAX_FILES_PER_TASK)
            .map(|i| file(&format!("F{i}"), &format!("{i}.txt"), 1))
            .collect();
        assert!(matches!(
            decode(many),
            Err(ProtocolError::TooLarge { what: "files", .. })
        ));
    }

    #[test]
    fn error_frames_carry_the_code() {
        let err = ProtocolError::UnknownType("x".into());
        assert_eq!(
            BotMessage::error(&err),
            BotMessage::Error {
                code: ErrorCode::UnknownType,
                message: err.to_string()
            }
        );
    }

    #[test]
    fn task_seq_and_finality() {
        let msgs = agent_messages();
        assert_eq!(msgs[0].task_seq(), None);
        assert_eq!(msgs[3].task_seq(), Some((TaskId(42), 2)));
        assert_eq!(msgs.iter().filter(|m| m.is_final()).count(), 3);
    }

    #[test]
    fn a_broken_submit_still_names_its_task() {
        let frame =
            r#"{"v":1,"type":"submit","task":7,"project":"web","persona":"code","prompt":""}"#;
        assert!(BotMessage::decode(frame).is_err());
        assert_eq!(BotMessage::submit_task_of(frame), Some(TaskId(7)));
        assert_eq!(
            BotMessage::submit_task_of(r#"{"type":"cancel","task":7}"#),
            None
        );
        assert_eq!(BotMessage::submit_task_of("not json"), None);
        assert_eq!(
            BotMessage::submit_task_of(r#"{"type":"submit","task":-1}"#),
            None
        );
    }

    #[test]
    fn a_submit_with_a_session_id_that_could_become_a_flag_is_invalid() {
        let frame = |sid: &str| {
            serde_json::json!({"type": "submit", "task": 3, "project": "web", "persona": "code",
                               "prompt": "go on", "session_id": sid})
            .to_string()
        };
        for bad in ["--dangerously-skip-permissions", "x; rm -rf /", ""] {
            let err = BotMessage::decode(&frame(bad)).expect_err(bad);
            assert!(err.to_string().contains("session id"), "{err}");
            assert_eq!(BotMessage::submit_task_of(&frame(bad)), Some(TaskId(3)));
        }
        assert!(BotMessage::decode(&frame("bfc86ca0-df6f-42d4-9fdc-c95b3c1da201")).is_ok());
    }

    #[test]
    fn only_health_failures_count() {
        assert!(!FailureCause::Task.counts_against_agent());
        assert!(FailureCause::Spawn.counts_against_agent());
        assert!(FailureCause::AgentLost.counts_against_agent());
        assert!(!FailureCause::AgentShutdown.counts_against_agent());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(s in ".{0,400}") {
            let _ = AgentMessage::decode(&s);
            let _ = BotMessage::decode(&s);
        }

        #[test]
        fn decoding_mutated_frames_never_panics(idx in 0usize..9, cut in 0usize..200, junk in "[{}\":,a-z0-9]{0,8}") {
            let frame = agent_messages()[idx].encode();
            let cut = cut.min(frame.len());
            if frame.is_char_boundary(cut) {
                let mutated = format!("{}{}{}", &frame[..cut], junk, &frame[cut..]);
                let _ = AgentMessage::decode(&mutated);
            }
        }
    }
}
