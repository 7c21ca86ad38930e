//! Self-checks: the bot token at start (`auth.test`) and the scopes it lacks,
//! and what `/readyz` reports — each part that is not ready, with its reason.
//!
//! A token Slack refuses leaves the bot not ready, the reason in plain words in
//! its log (an error) and on `/readyz`; it keeps serving what does not need
//! Slack (agents, health), and a load balancer keeps Slack's traffic away. A
//! Slack that cannot be reached is not a verdict on the token: the bot is not
//! ready, says why on `/readyz`, and asks again until Slack answers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::settings::Settings;
use crate::slack::api::{AuthTest, SlackApi, SlackCallError};

/// How long to wait before asking `auth.test` again when Slack could not be reached.
pub const AUTH_RETRY: Duration = Duration::from_secs(10);

/// Slack's error codes that mean the token itself is wrong: no retry helps.
const REFUSED_TOKEN: &[&str] = &[
    "not_authed",
    "invalid_auth",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "not_allowed_token_type",
];

/// A part of the bot that can be not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The bot token and the Web API.
    Slack,
    /// The Socket Mode connections (with `SLACK_APP_TOKEN`).
    SocketMode,
    /// The database.
    Database,
    /// This process's lease in the database (see `app::LEASE_RENEW`).
    Lease,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Slack => "slack",
            Part::SocketMode => "socket mode",
            Part::Database => "database",
            Part::Lease => "lease",
        }
    }
}

/// What is not ready, and why.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Each part not ready, with the reason shown on `/readyz`.
    problems: Mutex<BTreeMap<Part, String>>,
}

impl Readiness {
    /// Marks `part` not ready for `reason`.
    pub fn not_ready(&self, part: Part, reason: impl Into<String>) {
        crate::sync::lock(&self.problems).insert(part, reason.into());
    }

    /// Marks `part` ready.
    pub fn ready(&self, part: Part) {
        crate::sync::lock(&self.problems).remove(&part);
    }

    /// One line per part not ready (`part: reason`); empty when all are.
    pub fn problems(&self) -> Vec<String> {
        crate::sync::lock(&self.problems)
            .iter()
            .map(|(part, why)| format!("{}: {why}", part.name()))
            .collect()
    }
}

/// The token check's verdict.
#[derive(Debug)]
pub enum TokenCheck {
    /// Slack knows the token.
    Valid(AuthTest),
    /// Slack refused it: the bot cannot work. The text says what to do.
    Refused(String),
    /// Slack could not be asked (network, rate limit, Slack's own error).
    Unknown(String),
}

/// Asks Slack who the bot token belongs to.
pub async fn check_token(slack: &SlackApi) -> TokenCheck {
    match slack.auth_test().await {
        Ok(auth) => TokenCheck::Valid(auth),
        Err(SlackCallError::Api(code)) if REFUSED_TOKEN.contains(&code.as_str()) => {
            TokenCheck::Refused(refused_token(&code))
        }
        Err(err) => {
            TokenCheck::Unknown(format!("cannot check the bot token with auth.test: {err}"))
        }
    }
}

/// What the person starting the bot reads when Slack refuses its token.
pub fn refused_token(code: &str) -> String {
    format!(
        "Slack refused SLACK_BOT_TOKEN ({code}). Copy the Bot User OAuth Token (xoxb-...) from \
         your Slack app's OAuth & Permissions page, install the app to the workspace if it is \
         not installed, and check that SLACK_API_URL points at Slack's Web API."
    )
}

/// The bot scopes Baton uses with these settings, each with what needs it.
pub fn needed_scopes(settings: &Settings) -> Vec<(&'static str, &'static str)> {
    let _ = settings;
    vec![
        ("commands", "the /baton and /baton-admin commands"),
        ("chat:write", "posting and editing task messages"),
        ("app_mentions:read", "@baton mentions"),
        ("channels:history", "thread replies in public channels"),
        ("groups:history", "thread replies in private channels"),
        ("im:history", "direct messages to the app"),
        ("files:write", "uploading a long result as a file"),
        ("files:read", "downloading the files attached to a task"),
    ]
}

/// The needed scopes the token lacks, with what each is for; empty when
/// Slack did not say which scopes it granted.
pub fn missing_scopes(settings: &Settings, granted: Option<&[String]>) -> Vec<String> {
    let Some(granted) = granted else {
        return Vec::new();
    };
    needed_scopes(settings)
        .into_iter()
        .filter(|(scope, _)| !granted.iter().any(|g| g == scope))
        .map(|(scope, why)| format!("{scope} ({why})"))
        .collect()
}

/// Logs, once, the scopes the token lacks.
pub fn report_scopes(settings: &Settings, auth: &AuthTest) {
    let missing = missing_scopes(settings, auth.scopes.as_deref());
    if missing.is_empty() {
        tracing::info!(bot_user = %auth.user_id, team = %auth.team_id, "Slack bot token checked");
    } else {
        tracing::warn!(
            bot_user = %auth.user_id,
            team = %auth.team_id,
            missing = %missing.join(", "),
            "the bot token lacks scopes Baton uses: add them to the app (OAuth & Permissions, or slack-app-manifest.yml) and reinstall it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_scopes_name_what_needs_them() {
        let settings = Settings::for_tests("http://127.0.0.1:9", "sqlite::memory:", "s");
        let granted: Vec<String> = ["commands", "chat:write", "app_mentions:read"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let missing = missing_scopes(&settings, Some(&granted));
        assert!(
            missing.contains(&"im:history (direct messages to the app)".to_owned()),
            "{missing:?}"
        );
        assert!(
            missing.contains(&"files:read (downloading the files attached to a task)".to_owned()),
            "{missing:?}"
        );
        assert!(!missing.iter().any(|m| m.starts_with("commands")));
        assert!(missing_scopes(&settings, None).is_empty());
    }

    #[test]
    fn readiness_lists_each_part_with_its_reason() {
        let r = Readiness::default();
        assert!(r.problems().is_empty());
        r.not_ready(Part::SocketMode, "no connection yet");
        r.not_ready(Part::Slack, "cannot reach Slack");
        assert_eq!(
            r.problems(),
            [
                "slack: cannot reach Slack",
                "socket mode: no connection yet"
            ]
        );
        r.ready(Part::Slack);
        assert_eq!(r.problems(), ["socket mode: no connection yet"]);
    }
}
