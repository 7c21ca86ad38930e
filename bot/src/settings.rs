//! The bot's settings, read from the environment (and `.env`), listed by `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};

use crate::breaker::BreakerConfig;

/// Every setting of `baton-bot`. Each one is also an environment variable;
/// `.env.example` lists them with their defaults.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "baton-bot",
    version,
    about = "Baton's bot: Slack in, tasks out to agents."
)]
pub struct Settings {
    /// Slack bot token (xoxb-...).
    #[arg(long, env = "SLACK_BOT_TOKEN", hide_env_values = true)]
    pub slack_bot_token: SecretString,

    /// Verifies HTTP requests from Slack. Required unless SLACK_APP_TOKEN is set.
    #[arg(long, env = "SLACK_SIGNING_SECRET", hide_env_values = true)]
    pub slack_signing_secret: Option<SecretString>,

    /// App-level token (xapp-...); when set, Socket Mode is used instead of HTTP.
    #[arg(long, env = "SLACK_APP_TOKEN", hide_env_values = true)]
    pub slack_app_token: Option<SecretString>,

    /// Slack Web API base URL; http:// is allowed for local emulators.
    #[arg(long, env = "SLACK_API_URL", default_value = "https://slack.com/api")]
    pub slack_api_url: String,

    /// Database: sqlite://... or postgres://...
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://baton.db?mode=rwc"
    )]
    pub database_url: String,

    /// Address for the Slack routes, the agents' WebSocket, health and metrics.
    #[arg(long, env = "BATON_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Comma-separated Slack user ids allowed to use /baton-admin.
    #[arg(long, env = "BATON_ADMINS", default_value = "", value_delimiter = ',')]
    pub admins: Vec<String>,

    /// Who may start tasks in a project whose access list is empty: `members`
    /// (every full member of the workspace) or `admins` (BATON_ADMINS only).
    #[arg(
        long,
        env = "BATON_DEFAULT_ACCESS",
        value_enum,
        default_value_t = DefaultAccess::Members
    )]
    pub default_access: DefaultAccess,

    /// Bootstrap agent keys, `name:key` (any project) or `name:key:web+api`
    /// (only those projects), comma-separated; stored only as hashes.
    #[arg(
        long,
        env = "BATON_AGENT_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub agent_keys: SecretString,

    /// Log format: `text` or `json`.
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// When set, `GET /metrics` requires `Authorization: Bearer TOKEN` (the
    /// listener is public; metrics name agents and projects).
    #[arg(long, env = "BATON_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<SecretString>,

    /// Seconds an agent has to accept a dispatched task before it goes back to its queue.
    #[arg(long, env = "BATON_DISPATCH_TIMEOUT_SECS", default_value_t = 10)]
    pub dispatch_timeout_secs: u64,

    /// Seconds a task may wait in the offline queue before it expires.
    #[arg(long, env = "BATON_QUEUE_TTL_SECS", default_value_t = 24 * 3600)]
    pub queue_ttl_secs: u64,

    /// Most tasks waiting in one project's queue; beyond it new tasks are refused.
    #[arg(long, env = "BATON_QUEUE_MAX", default_value_t = 200)]
    pub queue_max: u64,

    /// Heartbeat interval in seconds, both ways; silent for two intervals = dead.
    #[arg(long, env = "BATON_HEARTBEAT_SECS", default_value_t = baton_shared::limits::DEFAULT_HEARTBEAT_SECS)]
    pub heartbeat_secs: u64,

    /// Seconds a disconnected agent keeps its running tasks before they fail as "agent lost".
    #[arg(long, env = "BATON_AGENT_GRACE_SECS", default_value_t = 300)]
    pub agent_grace_secs: u64,

    /// Seconds an approval request waits for a person's answer before it
    /// counts as denied (`timed_out`); the wait does not count toward the
    /// task's time limit.
    #[arg(long, env = "BATON_APPROVAL_TIMEOUT_SECS", default_value_t = 1800)]
    pub approval_timeout_secs: u64,

    /// Circuit breaker: sliding window in seconds.
    #[arg(long, env = "BATON_BREAKER_WINDOW_SECS", default_value_t = 600)]
    pub breaker_window_secs: u64,

    /// Circuit breaker: calls in the window before any verdict.
    #[arg(long, env = "BATON_BREAKER_MIN_CALLS", default_value_t = 10)]
    pub breaker_min_calls: u32,

    /// Circuit breaker: failure rate (percent) that opens the circuit.
    #[arg(long, env = "BATON_BREAKER_FAILURE_RATE", default_value_t = 50.0)]
    pub breaker_failure_rate: f64,

    /// Circuit breaker: seconds open before half-open.
    #[arg(long, env = "BATON_BREAKER_OPEN_SECS", default_value_t = 60)]
    pub breaker_open_secs: u64,

    /// Circuit breaker: probe tasks allowed at once while half-open.
    #[arg(long, env = "BATON_BREAKER_HALF_OPEN_PROBES", default_value_t = 3)]
    pub breaker_half_open_probes: u32,

    /// Circuit breaker: probe successes that close the circuit.
    #[arg(long, env = "BATON_BREAKER_SUCCESS_THRESHOLD", default_value_t = 3)]
    pub breaker_success_threshold: u32,

    /// Circuit breaker: longest time half-open before it opens again, in
    /// seconds; 0 (the default) means no limit.
    #[arg(long, env = "BATON_BREAKER_MAX_HALF_OPEN_SECS", default_value_t = 0)]
    pub breaker_max_half_open_secs: u64,

    /// Tasks one user may create per rate-limit window.
    #[arg(long, env = "BATON_RATE_LIMIT_TASKS", default_value_t = 30)]
    pub rate_limit_tasks: u32,

    /// The per-user rate-limit window, in seconds.
    #[arg(long, env = "BATON_RATE_LIMIT_WINDOW_SECS", default_value_t = 600)]
    pub rate_limit_window_secs: u64,

    /// chat.update calls per minute per workspace (Slack's Tier 3 is about 50).
    #[arg(long, env = "BATON_SLACK_UPDATES_PER_MINUTE", default_value_t = 50)]
    pub slack_updates_per_minute: u32,

    /// Shortest interval between two edits of one task message, in milliseconds.
    #[arg(long, env = "BATON_EDIT_INTERVAL_MS", default_value_t = 1000)]
    pub edit_interval_ms: u64,

    /// How a task's requester is told it ended: `thread` (a reply that
    /// mentions them in the task's thread), `dm` (a direct message), `off`.
    #[arg(
        long,
        env = "BATON_NOTIFY",
        value_enum,
        default_value_t = NotifyMode::Thread
    )]
    pub notify: NotifyMode,

    /// How long a slash command's acknowledgement waits for its work
    /// ([`crate::slack::intake::ACK_BUDGET`]). Not read from the environment:
    /// a test hook, so that tests on a loaded machine always find the answer
    /// in the acknowledgement.
    #[arg(skip = crate::slack::intake::ACK_BUDGET)]
    pub ack_budget: Duration,
}

/// How a task's requester is told it ended (`BATON_NOTIFY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NotifyMode {
    /// A reply in the task's thread that mentions them.
    Thread,
    /// A direct message from the bot.
    Dm,
    /// Nobody is told; the task's message still shows how it ended.
    Off,
}

/// Who may start tasks in a project whose access list is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultAccess {
    /// Every full member of the workspace (not guests, not other organizations).
    Members,
    /// Only the admins.
    Admins,
}

impl DefaultAccess {
    /// The setting's value, as written in `BATON_DEFAULT_ACCESS`.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAccess::Members => "members",
            DefaultAccess::Admins => "admins",
        }
    }
}

impl Settings {
    /// Settings with every default, for tests and tools; the token and secret are given.
    pub fn for_tests(slack_api_url: &str, database_url: &str, signing_secret: &str) -> Self {
        let mut s = Settings::parse_from([
            "baton-bot",
            "--slack-bot-token",
            "xoxb-test",
            "--slack-api-url",
            slack_api_url,
            "--database-url",
            database_url,
            "--listen",
            "127.0.0.1:0",
        ]);
        s.slack_signing_secret = Some(signing_secret.to_owned().into());
        s
    }

    /// The app-level token when Socket Mode is on: `SLACK_APP_TOKEN` set and not blank.
    pub fn socket_mode_token(&self) -> Option<&SecretString> {
        self.slack_app_token
            .as_ref()
            .filter(|t| !t.expose_secret().trim().is_empty())
    }

    /// The circuit breaker's settings.
    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(self.breaker_window_secs),
            minimum_calls: self.breaker_min_calls,
            failure_rate_threshold: self.breaker_failure_rate,
            open_wait: Duration::from_secs(self.breaker_open_secs),
            half_open_probes: self.breaker_half_open_probes,
            success_threshold: self.breaker_success_threshold,
            max_half_open: Duration::from_secs(self.breaker_max_half_open_secs),
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }

    /// Admins, without blanks.
    pub fn admin_ids(&self) -> Vec<String> {
        self.admins
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect()
    }
}
