//! The agent's configuration: `agent.toml`, overridden by flags and `BATON_*` variables.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_shared::ProjectName;
use secrecy::SecretString;
use serde::Deserialize;

/// Default tasks at once.
pub const DEFAULT_CAPACITY: u32 = 2;
/// Default maximum duration of a task.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(30 * 60);
/// Default time between SIGTERM and SIGKILL when a task is stopped.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);
/// Default time running tasks get to finish on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Variables passed to tasks by default (beside Baton's own).
pub const DEFAULT_ENV_ALLOW: &[&str] = &[
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "TERM", "TMPDIR", "SHELL",
];

/// How a project's tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// The Claude Code CLI.
    Claude,
    /// A configured command.
    Command,
    /// The OpenAI Codex CLI (`codex exec --json`).
    Codex,
    /// Gemini CLI (`gemini --output-format stream-json`).
    Gemini,
    /// OpenCode (`opencode run --format json`).
    Opencode,
}

impl ExecutorKind {
    /// The executors that drive a coding agent CLI, in the order `detect` lists them.
    pub const CLIS: [ExecutorKind; 4] = [
        ExecutorKind::Claude,
        ExecutorKind::Codex,
        ExecutorKind::Gemini,
        ExecutorKind::Opencode,
    ];

    /// The name in `executor = "..."`, and the CLI's default binary name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Claude => "claude",
            ExecutorKind::Command => "command",
            ExecutorKind::Codex => "codex",
            ExecutorKind::Gemini => "gemini",
            ExecutorKind::Opencode => "opencode",
        }
    }

    /// The CLI's name for people ("Claude Code", "Codex", …).
    pub fn display_name(self) -> &'static str {
        match self {
            ExecutorKind::Claude => "Claude Code",
            ExecutorKind::Command => "the command",
            ExecutorKind::Codex => "Codex",
            ExecutorKind::Gemini => "Gemini CLI",
            ExecutorKind::Opencode => "OpenCode",
        }
    }
}

/// How to run one coding agent CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliConfig {
    /// The binary (a name looked up on the PATH, or a path).
    pub bin: String,
    /// Extra arguments, placed after Baton's own (after `exec` for Codex, `run` for OpenCode).
    pub args: Vec<String>,
}

/// One `[[project]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The project's name.
    pub name: ProjectName,
    /// Where its tasks run (canonicalised at start-up).
    pub path: PathBuf,
    /// How its tasks run.
    pub executor: ExecutorKind,
    /// The argv for the `command` executor.
    #[serde(default)]
    pub command: Vec<String>,
    /// Tasks of this project at once (default 1: two tasks in one tree trample each other).
    #[serde(default = "one")]
    pub max_concurrent: u32,
    /// Maximum duration of this project's tasks, in seconds.
    #[serde(default)]
    pub max_duration_secs: Option<u64>,
    /// Where its tasks run: the project directory itself, or a git worktree per task.
    #[serde(default)]
    pub isolation: Isolation,
    /// Tasks of this project at once with `isolation = "worktree"` (sets `max_concurrent`).
    #[serde(default)]
    pub parallel: Option<u32>,
    /// Days a finished task's worktree is kept (default 7); its branch is kept for good.
    #[serde(default)]
    pub worktree_keep_days: Option<u64>,
    /// Claude Code tools whose every call waits for a person's yes in Slack
    /// (`["Bash", "Write"]`) or `"all"`; none by default (see [`crate::approvals`]).
    #[serde(default)]
    pub approve: Option<Approve>,
}

/// A project's `approve`: which Claude Code tool calls wait for a person.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Approve {
    /// These tools, by their Claude Code names.
    Tools(Vec<String>),
    /// A word: only `"all"` is valid (every tool call).
    Word(String),
    /// Anything else: refused at load with a message that says what fits.
    Other(toml::Value),
}

/// What `approve = "..."` accepts: every tool call asks.
pub const APPROVE_ALL: &str = "all";

impl Approve {
    /// The `PreToolUse` matcher for Claude Code: `*` for all, else the tools
    /// joined with `|` (validated names, so no regex character but `|`).
    pub fn matcher(&self) -> String {
        match self {
            Approve::Tools(t) => t.join("|"),
            _ => "*".into(),
        }
    }

    /// Whether a call of `tool` asks.
    pub fn names(&self, tool: &str) -> bool {
        match self {
            Approve::Tools(t) => t.iter().any(|n| n == tool),
            _ => true,
        }
    }

    /// Checks the value; `Ok(None)` for an empty list (nothing asks).
    fn validated(self) -> Result<Option<Approve>, String> {
        const WHAT: &str = "write a list of Claude Code tool names like [\"Bash\", \"Write\", \"Edit\"] or \"all\"";
        match self {
            Approve::Word(w) if w == APPROVE_ALL => Ok(Some(Approve::Word(w))),
            Approve::Word(w) => Err(format!("`{w}` is not a valid value: {WHAT}")),
            Approve::Other(v) => Err(format!("`{v}` is not a valid value: {WHAT}")),
            Approve::Tools(t) if t.is_empty() => Ok(None),
            Approve::Tools(t) => {
                for name in &t {
                    if !valid_tool_name(name) {
                        return Err(format!(
                            "`{name}` is not a tool name (letters, digits, `_` and `-`, at most {} characters): {WHAT}",
                            baton_shared::limits::MAX_APPROVAL_TOOL_CHARS
                        ));
                    }
                }
                Ok(Some(Approve::Tools(t)))
            }
        }
    }
}

/// A Claude Code tool name as `approve` takes it (`Bash`, `mcp__github__create_issue`).
fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= baton_shared::limits::MAX_APPROVAL_TOOL_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Where a project's tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// In the project directory.
    #[default]
    None,
    /// Each in its own git worktree on branch `baton/task-ID` (see [`crate::worktree`]).
    Worktree,
}

fn one() -> u32 {
    1
}

/// Whether `host` (as written in a URL, IPv6 in brackets) is this machine:
/// `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks the `server` URL: `wss://` anywhere, `ws://` only to a loopback
/// address, since the agent sends its key in the connection's first request.
/// The error says why and what would be accepted.
pub fn check_server(server: &str) -> Result<(), String> {
    let uri: http::Uri = server
        .parse()
        .map_err(|e| format!("`{server}` is not a URL ({e}): write it like wss://host/agents"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{server}` names no host: write it like wss://host/agents"))?;
    match uri.scheme_str() {
        Some("wss") => Ok(()),
        Some("ws") if is_loopback_host(host) => Ok(()),
        Some("ws") => Err(format!(
            "`{server}` would send the agent key unencrypted over the network: use wss:// \
             (ws:// is only accepted to a loopback address: localhost, 127.0.0.1 or [::1])"
        )),
        _ => Err(format!(
            "`{server}` must start with wss:// (or ws:// to a loopback address)"
        )),
    }
}

/// `server` in the file: one URL, or a list tried in turn.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ServerSetting {
    /// `server = "wss://host/agents"`.
    One(String),
    /// `server = ["wss://a/agents", "wss://b/agents"]`.
    Many(Vec<String>),
}

impl ServerSetting {
    /// The URLs, in order.
    pub fn urls(self) -> Vec<String> {
        match self {
            ServerSetting::One(url) => vec![url],
            ServerSetting::Many(urls) => urls,
        }
    }
}

/// The URLs of `BATON_SERVER` / `--server`: one, or several separated by commas.
pub fn split_servers(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks every URL of `servers` with [`check_server`]; the error names the
/// bad one (and its place, when there are several).
pub fn check_servers(servers: &[String]) -> Result<(), (String, String)> {
    if servers.is_empty() {
        return Err((
            "server".into(),
            "empty: give at least one URL, like wss://host/agents".into(),
        ));
    }
    for (i, url) in servers.iter().enumerate() {
        check_server(url).map_err(|problem| {
            let key = if servers.len() > 1 {
                format!("server[{i}]")
            } else {
                "server".into()
            };
            (key, problem)
        })?;
    }
    Ok(())
}

/// The file's shape.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `wss://host/agents`, or a list of such URLs tried in turn.
    pub server: Option<ServerSetting>,
    /// The agent key.
    pub key: Option<String>,
    /// Tasks at once.
    pub capacity: Option<u32>,
    /// Where the outbox and the task journal live.
    pub state_dir: Option<PathBuf>,
    /// Maximum task duration, in seconds.
    pub max_duration_secs: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL on cancel.
    pub cancel_grace_secs: Option<u64>,
    /// Seconds running tasks get on shutdown.
    pub shutdown_grace_secs: Option<u64>,
    /// Environment variables passed to tasks.
    pub env_allow: Option<Vec<String>>,
    /// The Claude CLI.
    pub claude_bin: Option<String>,
    /// Extra arguments for the Claude CLI.
    pub claude_args: Option<Vec<String>>,
    /// The Codex CLI.
    pub codex_bin: Option<String>,
    /// Extra arguments for `codex exec`.
    pub codex_args: Option<Vec<String>>,
    /// The Gemini CLI.
    pub gemini_bin: Option<String>,
    /// Extra arguments for the Gemini CLI.
    pub gemini_args: Option<Vec<String>>,
    /// The OpenCode CLI.
    pub opencode_bin: Option<String>,
    /// Extra arguments for `opencode run`.
    pub opencode_args: Option<Vec<String>>,
    /// The projects.
    #[serde(default)]
    pub project: Vec<ProjectConfig>,
}

/// Flags and environment variables that override the file.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "baton-agent",
    version,
    about = "Baton's agent: runs tasks for the bot."
)]
pub struct Cli {
    /// The config file.
    #[arg(long, env = "BATON_AGENT_CONFIG", default_value = "agent.toml")]
    pub config: PathBuf,
    /// The bot's agents endpoint (wss://host/agents); several, separated by
    /// commas, are tried in turn.
    #[arg(long, env = "BATON_SERVER")]
    pub server: Option<String>,
    /// The agent key.
    #[arg(long, env = "BATON_AGENT_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Tasks at once.
    #[arg(long, env = "BATON_CAPACITY")]
    pub capacity: Option<u32>,
    /// Where the outbox and task journal live.
    #[arg(long, env = "BATON_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The Claude CLI.
    #[arg(long, env = "BATON_CLAUDE_BIN")]
    pub claude_bin: Option<String>,
    /// The Codex CLI.
    #[arg(long, env = "BATON_CODEX_BIN")]
    pub codex_bin: Option<String>,
    /// The Gemini CLI.
    #[arg(long, env = "BATON_GEMINI_BIN")]
    pub gemini_bin: Option<String>,
    /// The OpenCode CLI.
    #[arg(long, env = "BATON_OPENCODE_BIN")]
    pub opencode_bin: Option<String>,
    /// Validate the config and executors, then exit.
    #[arg(long)]
    pub check: bool,
    /// Log format: text or json.
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// What to do instead of serving (nothing: connect and run tasks).
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

/// `baton-agent SUBCOMMAND`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AgentCommand {
    /// List the supported coding agent CLIs on the PATH, their versions and whether they look
    /// logged in, and print a `[[project]]` block for the current directory.
    Detect,
    /// Claude Code's PreToolUse hook (Baton passes it with --settings): asks the task's agent
    /// for a person's yes and prints the decision as Claude Code's hook output.
    Hook,
    /// For a command task: ask a person's yes in Slack. Exit 0 approved, 1 denied, 2 timed
    /// out, 3 could not ask (not in a Baton task, agent unreachable), 64 bad usage.
    Approve {
        /// What the task wants to do, shown in Slack.
        text: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The bot's agents endpoint: the first of [`Config::servers`].
    pub server: String,
    /// Every agents endpoint, tried in turn (a failed connection moves to the
    /// next; a whole round without one backs off).
    pub servers: Vec<String>,
    /// The key.
    pub key: SecretString,
    /// Tasks at once.
    pub capacity: u32,
    /// Outbox and journal.
    pub state_dir: PathBuf,
    /// Default maximum task duration.
    pub max_duration: Duration,
    /// SIGTERM → SIGKILL.
    pub cancel_grace: Duration,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Variables passed to tasks.
    pub env_allow: Vec<String>,
    /// The Claude CLI.
    pub claude_bin: String,
    /// Extra Claude CLI arguments.
    pub claude_args: Vec<String>,
    /// The Codex CLI.
    pub codex: CliConfig,
    /// Gemini CLI.
    pub gemini: CliConfig,
    /// OpenCode.
    pub opencode: CliConfig,
    /// Projects, with canonical paths.
    pub projects: Vec<ProjectConfig>,
}

/// A configuration error, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The key (`project[1].path`).
    pub key: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl Config {
    /// Reads the file, applies overrides, validates everything.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = cli.config.display().to_string();
        let err = |key: &str, problem: String| ConfigError {
            file: file.clone(),
            key: key.into(),
            problem,
        };
        let text = std::fs::read_to_string(&cli.config)
            .map_err(|e| err("(file)", format!("cannot read it: {e}")))?;
        let parsed: FileConfig = toml::from_str(&text).map_err(|e| {
            let key = e
                .span()
                .map(|s| format!("near byte {}", s.start))
                .unwrap_or_else(|| "(file)".into());
            err(&key, e.message().to_owned())
        })?;
        Self::from_parts(
            parsed,
            cli,
            &file,
            cli.config.parent().unwrap_or(Path::new(".")),
        )
    }

    /// Validates a parsed file with overrides. Relative paths are relative to `base`.
    pub fn from_parts(
        f: FileConfig,
        cli: &Cli,
        file: &str,
        base: &Path,
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, problem: String| ConfigError {
            file: file.to_owned(),
            key: key.into(),
            problem,
        };
        let servers = match (cli.server.as_deref(), f.server) {
            (Some(flag), _) => split_servers(flag),
            (None, Some(setting)) => setting.urls(),
            (None, None) => {
                return Err(err(
                    "server",
                    "missing: set `server = \"wss://host/agents\"` or BATON_SERVER".into(),
                ));
            }
        };
        check_servers(&servers).map_err(|(key, problem)| err(&key, problem))?;
        let server = servers[0].clone();
        let key = cli.key.clone().or(f.key).filter(|k| !k.trim().is_empty()).ok_or_else(|| {
            err("key", "missing: set `key = \"...\"` or BATON_AGENT_KEY (from `/baton-admin agent add NAME`)".into())
        })?;
        let capacity = cli.capacity.or(f.capacity).unwrap_or(DEFAULT_CAPACITY);
        if capacity == 0 {
            return Err(err("capacity", "must be at least 1".into()));
        }
        if f.project.is_empty() {
            return Err(err(
                "project",
                "no [[project]] tables: the agent must serve at least one project".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut projects = Vec::new();
        for (i, mut p) in f.project.into_iter().enumerate() {
            let k = |field: &str| format!("project[{i}].{field}");
            if !names.insert(p.name.clone()) {
                return Err(err(&k("name"), format!("`{}` appears twice", p.name)));
            }
            let path = if p.path.is_absolute() {
                p.path.clone()
            } else {
                base.join(&p.path)
            };
            p.path = path.canonicalize().map_err(|e| {
                err(
                    &k("path"),
                    format!("`{}` must be an existing directory: {e}", path.display()),
                )
            })?;
            if !p.path.is_dir() {
                return Err(err(
                    &k("path"),
                    format!("`{}` is not a directory", p.path.display()),
                ));
            }
            match p.executor {
                ExecutorKind::Command if p.command.is_empty() => {
                    return Err(err(
                        &k("command"),
                        "the command executor needs `command = [\"prog\", \"arg\"]`".into(),
                    ));
                }
                kind if kind != ExecutorKind::Command && !p.command.is_empty() => {
                    return Err(err(
                        &k("command"),
                        "only the command executor takes `command`".into(),
                    ));
                }
                _ => {}
            }
            if p.max_concurrent == 0 {
                return Err(err(&k("max_concurrent"), "must be at least 1".into()));
            }
            if p.isolation == Isolation::Worktree {
                crate::worktree::check_repository(&p.path)
                    .map_err(|problem| err(&k("isolation"), problem))?;
            }
            p.approve = match p.approve.take().map(Approve::validated).transpose() {
                Ok(a) => a.flatten(),
                Err(problem) => return Err(err(&k("approve"), problem)),
            };
            if p.approve.is_some() && p.executor != ExecutorKind::Claude {
                return Err(err(
                    &k("approve"),
                    if p.executor == ExecutorKind::Command {
                        "only the claude executor takes `approve`: a command task asks by running \"$BATON_AGENT\" approve \"TEXT\" itself, so remove `approve` here".into()
                    } else {
                        format!(
                            "only the claude executor takes `approve`: {} has no hook Baton can use, so remove `approve` or use executor = \"claude\"",
                            p.executor.display_name()
                        )
                    },
                ));
            }
            match p.parallel {
                Some(_) if p.isolation != Isolation::Worktree => {
                    return Err(err(
                        &k("parallel"),
                        "needs isolation = \"worktree\": parallel tasks in one directory trample each other".into(),
                    ));
                }
                Some(0) => return Err(err(&k("parallel"), "must be at least 1".into())),
                Some(n) => p.max_concurrent = n,
                None => {}
            }
            projects.push(p);
        }
        let state_dir = cli
            .state_dir
            .clone()
            .or(f.state_dir)
            .map(|d| if d.is_absolute() { d } else { base.join(d) })
            .unwrap_or_else(|| base.join("baton-agent-state"));
        if projects.iter().any(|p| p.approve.is_some()) {
            crate::approvals::check_socket_dir(&state_dir)
                .map_err(|problem| err("state_dir", problem))?;
        }
        Ok(Config {
            server,
            servers,
            key: key.into(),
            capacity,
            state_dir,
            max_duration: f
                .max_duration_secs
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_MAX_DURATION),
            cancel_grace: f
                .cancel_grace_secs
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_CANCEL_GRACE),
            shutdown_grace: f
                .shutdown_grace_secs
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            env_allow: f
                .env_allow
                .unwrap_or_else(|| DEFAULT_ENV_ALLOW.iter().map(|s| (*s).to_owned()).collect()),
            claude_bin: cli
                .claude_bin
                .clone()
                .or(f.claude_bin)
                .unwrap_or_else(|| "claude".into()),
            claude_args: f.claude_args.unwrap_or_default(),
            codex: cli_config(cli.codex_bin.clone().or(f.codex_bin), f.codex_args, "codex"),
            gemini: cli_config(
                cli.gemini_bin.clone().or(f.gemini_bin),
                f.gemini_args,
                "gemini",
            ),
            opencode: cli_config(
                cli.opencode_bin.clone().or(f.opencode_bin),
                f.opencode_args,
                "opencode",
            ),
            projects,
        })
    }

    /// The binary and extra arguments of a CLI executor (`None` for `command`).
    pub fn cli(&self, kind: ExecutorKind) -> Option<CliConfig> {
        match kind {
            ExecutorKind::Command => None,
            ExecutorKind::Claude => Some(CliConfig {
                bin: self.claude_bin.clone(),
                args: self.claude_args.clone(),
            }),
            ExecutorKind::Codex => Some(self.codex.clone()),
            ExecutorKind::Gemini => Some(self.gemini.clone()),
            ExecutorKind::Opencode => Some(self.opencode.clone()),
        }
    }

    /// The project by name.
    pub fn project(&self, name: &str) -> Option<&ProjectConfig> {
        self.projects.iter().find(|p| p.name.as_str() == name)
    }
}

fn cli_config(bin: Option<String>, args: Option<Vec<String>>, default: &str) -> CliConfig {
    CliConfig {
        bin: bin.unwrap_or_else(|| default.to_owned()),
        args: args.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, dir: &Path) -> Result<Config, ConfigError> {
        let f: FileConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: "t".into(),
            key: "?".into(),
            problem: e.to_string(),
        })?;
        Config::from_parts(f, &Cli::default(), "agent.toml", dir)
    }

    #[test]
    fn valid_config_loads_and_canonicalises() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("web")).expect("mkdir");
        let c = load(
            "server = \"ws://127.0.0.1:1/agents\"\nkey = \"k\"\n[[project]]\nname = \"web\"\npath = \"web\"\nexecutor = \"command\"\ncommand = [\"./run.sh\"]\n",
            dir.path(),
        )
        .expect("loads");
        assert_eq!(c.capacity, DEFAULT_CAPACITY);
        assert!(c.projects[0].path.is_absolute());
        assert_eq!(c.projects[0].max_concurrent, 1);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = "server = \"wss://x/agents\"\nkey = \"k\"\n";
        let e = load(
            &format!("{base}[[project]]\nname = \"web\"\npath = \"nope\"\nexecutor = \"claude\"\n"),
            dir.path(),
        )
        .expect_err("missing dir");
        assert_eq!(e.key, "project[0].path");
        let e = load(
            &format!("{base}[[project]]\nname = \"web\"\npath = \".\"\nexecutor = \"command\"\n"),
            dir.path(),
        )
        .expect_err("no command");
        assert_eq!(e.key, "project[0].command");
        assert!(
            load(&format!("{base}colour = 1\n"), dir.path()).is_err(),
            "unknown keys are rejected"
        );
        let e = load("key = \"k\"\n", dir.path()).expect_err("no server");
        assert_eq!(e.key, "server");
    }

    #[test]
    fn approve_takes_tool_names_or_all_on_claude_projects_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = |executor: &str, approve: &str| {
            load(
                &format!(
                    "server = \"wss://x/agents\"\nkey = \"k\"\n[[project]]\nname = \"web\"\npath = \".\"\nexecutor = \"{executor}\"\n{approve}\n"
                ),
                dir.path(),
            )
        };
        let approve = |a: &str| cfg("claude", a).map(|c| c.projects[0].approve.clone());
        assert_eq!(approve("").expect("none"), None);
        assert_eq!(approve("approve = []").expect("empty"), None);
        let tools = approve("approve = [\"Bash\", \"Write\", \"mcp__github__create_issue\"]")
            .expect("tools")
            .expect("some");
        assert_eq!(tools.matcher(), "Bash|Write|mcp__github__create_issue");
        let all = approve("approve = \"all\"").expect("all").expect("some");
        assert_eq!(all.matcher(), "*");
        for (bad, says) in [
            (
                "approve = \"everything\"",
                "`everything` is not a valid value",
            ),
            ("approve = 3", "`3` is not a valid value"),
            (
                "approve = [\"Bash(rm *)\"]",
                "`Bash(rm *)` is not a tool name",
            ),
            ("approve = [\"\"]", "is not a tool name"),
        ] {
            let e = approve(bad).expect_err(bad);
            assert_eq!(e.key, "project[0].approve", "{bad}");
            assert!(
                e.problem.contains(says) && e.problem.contains("\"all\""),
                "{bad}: {}",
                e.problem
            );
        }
        let e = cfg("codex", "approve = \"all\"").expect_err("codex");
        assert_eq!(e.key, "project[0].approve");
        assert!(e.problem.contains("executor = \"claude\""), "{}", e.problem);
        let e =
            cfg("command", "command = [\"./run.sh\"]\napprove = [\"Bash\"]").expect_err("command");
        assert!(
            e.problem.contains("\"$BATON_AGENT\" approve"),
            "{}",
            e.problem
        );
    }

    #[test]
    fn server_must_be_wss_except_to_loopback() {
        for ok in [
            "wss://baton.example.com/agents",
            "wss://10.0.0.5:8443/agents",
            "ws://127.0.0.1:8080/agents",
            "ws://127.1.2.3/agents",
            "ws://localhost:8080/agents",
            "ws://LOCALHOST/agents",
            "ws://[::1]:8080/agents",
        ] {
            assert_eq!(check_server(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("ws://baton.example.com/agents", "unencrypted"),
            ("ws://10.0.0.5:8080/agents", "unencrypted"),
            ("ws://localhost.evil.com/agents", "unencrypted"),
            ("ws://127.0.0.1.nip.io/agents", "unencrypted"),
            ("ws://[::2]/agents", "unencrypted"),
            ("ws://0.0.0.0/agents", "unencrypted"),
            ("http://baton.example.com/agents", "must start with wss://"),
            ("baton.example.com/agents", "wss://"),
            ("wss:///agents", "wss://"),
            ("not a url", "wss://"),
        ] {
            let e = check_server(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load(
            "server = \"ws://baton.example.com/agents\"\nkey = \"k\"\n[[project]]\nname = \"web\"\npath = \".\"\nexecutor = \"claude\"\n",
            dir.path(),
        )
        .expect_err("ws:// to a remote host");
        assert_eq!(e.key, "server");
        assert!(e.problem.contains("loopback"), "{}", e.problem);
    }

    #[test]
    fn server_may_be_a_list_in_the_file_or_in_baton_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let project = "[[project]]\nname = \"web\"\npath = \".\"\nexecutor = \"claude\"\n";
        let c = load(
            &format!("server = \"wss://a/agents\"\nkey = \"k\"\n{project}"),
            dir.path(),
        )
        .expect("one URL, as before");
        assert_eq!(c.servers, ["wss://a/agents"]);
        assert_eq!(c.server, "wss://a/agents");
        let c = load(
            &format!(
                "server = [\"wss://a/agents\", \"ws://127.0.0.1:9/agents\"]\nkey = \"k\"\n{project}"
            ),
            dir.path(),
        )
        .expect("a list");
        assert_eq!(c.servers, ["wss://a/agents", "ws://127.0.0.1:9/agents"]);
        assert_eq!(c.server, "wss://a/agents");

        let f: FileConfig = toml::from_str(&format!("key = \"k\"\n{project}")).expect("parses");
        let cli = Cli {
            server: Some(" wss://a/agents, wss://b/agents ,".into()),
            ..Cli::default()
        };
        let c = Config::from_parts(f, &cli, "agent.toml", dir.path()).expect("BATON_SERVER list");
        assert_eq!(c.servers, ["wss://a/agents", "wss://b/agents"]);
    }

    #[test]
    fn each_listed_server_must_be_wss_and_the_bad_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let project = "[[project]]\nname = \"web\"\npath = \".\"\nexecutor = \"claude\"\n";
        let e = load(
            &format!(
                "server = [\"wss://a/agents\", \"ws://b.example.com/agents\"]\nkey = \"k\"\n{project}"
            ),
            dir.path(),
        )
        .expect_err("ws:// to a remote host in the list");
        assert_eq!(e.key, "server[1]");
        assert!(
            e.problem.contains("ws://b.example.com/agents"),
            "{}",
            e.problem
        );
        assert!(e.problem.contains("use wss://"), "{}", e.problem);
        let e = load(&format!("server = []\nkey = \"k\"\n{project}"), dir.path())
            .expect_err("an empty list");
        assert_eq!(e.key, "server");
        assert!(e.problem.contains("at least one URL"), "{}", e.problem);
    }
}
