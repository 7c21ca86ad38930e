//! Limits and intervals shared by the bot and the agent.
//!
//! One place to change each; both sides and the docs refer to these names.

/// Largest WebSocket frame either side accepts, in bytes.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Longest prompt a task may have, in characters.
pub const MAX_PROMPT_CHARS: usize = 100_000;

/// Longest progress step, in characters; longer steps are cut by the sender.
pub const MAX_STEP_CHARS: usize = 500;

/// Largest output chunk in one `output` message, in bytes.
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 16 * 1024;

/// Largest result text in a `completed` message, in bytes. The agent keeps the
/// head and the tail of longer results with a marker in between.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// Longest error text in a `failed` or `rejected` message, in bytes.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// Longest agent or project name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Most projects one agent may serve.
pub const MAX_PROJECTS_PER_AGENT: usize = 256;

/// Most task ids one hello may list as running or held.
pub const MAX_HELLO_TASKS: usize = 10_000;

/// Default interval between heartbeats, both ways, in seconds. A peer silent
/// for two intervals is dead.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 15;

/// How many heartbeat intervals of silence make a peer dead.
pub const HEARTBEAT_MISSES_DEAD: u32 = 2;

/// Largest file attached in Slack that a task takes, in bytes (20 MiB).
pub const MAX_FILE_BYTES: u64 = 20 * 1024 * 1024;

/// Most files one task (its first message or one follow-up) takes.
pub const MAX_FILES_PER_TASK: usize = 5;

/// Longest name of a file written into a task's `.baton/files/`, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 128;

/// Longest tool name in an `approval_request`, in characters.
pub const MAX_APPROVAL_TOOL_CHARS: usize = 100;

/// Longest view of a tool's input in an `approval_request`, in characters;
/// the agent cuts longer inputs (the person sees a short view, not the whole).
pub const MAX_APPROVAL_INPUT_CHARS: usize = 1_000;

/// Most approval requests one task may make; past it the agent denies by itself.
pub const MAX_APPROVALS_PER_TASK: u32 = 1_000;
