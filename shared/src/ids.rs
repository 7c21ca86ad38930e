//! Newtypes for the ids and names that cross the wire and reach people.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_NAME_CHARS;

/// A task's id: a positive integer shown to people as `#42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub i64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl FromStr for TaskId {
    type Err = NameError;

    /// Accepts `#42` and `42`; rejects zero, negatives and anything else.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim().strip_prefix('#').unwrap_or(s.trim());
        match digits.parse::<i64>() {
            Ok(n) if n > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(TaskId(n)),
            _ => Err(NameError::BadTaskId(s.to_owned())),
        }
    }
}

/// Why a name or id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, too long, or with characters outside `[A-Za-z0-9._-]`.
    #[error(
        "`{0}` is not a valid name: start with a letter or digit, then up to {MAX_NAME_CHARS} letters, digits, `.`, `_` or `-` in all"
    )]
    BadName(String),
    /// Not a task id like `#42`.
    #[error("`{0}` is not a task id: write it like #42")]
    BadTaskId(String),
    /// Not an executor session id.
    #[error(
        "`{0}` is not a valid session id: up to {MAX_SESSION_ID_CHARS} letters, digits, `-` or `_`, starting with a letter or digit"
    )]
    BadSessionId(String),
    /// Not one of the four personas.
    #[error("`{0}` is not a persona: use code, review, plan or ops")]
    BadPersona(String),
}

fn valid_name(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.chars().count() <= MAX_NAME_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                if valid_name(&s) { Ok(Self(s)) } else { Err(NameError::BadName(s)) }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// An agent's name. It comes from the agent's key, never from what the agent claims.
    AgentName
);
name_type!(
    /// A project's name, as agents serve it and channels are bound to it.
    ProjectName
);

/// Longest executor session id, in characters.
pub const MAX_SESSION_ID_CHARS: usize = 64;

/// An executor's session id (Claude Code's session, Codex's thread, Gemini's
/// or OpenCode's session), validated before it can reach a command line:
/// 1 to [`MAX_SESSION_ID_CHARS`] ASCII letters, digits, `-` or `_`, starting
/// with a letter or digit, so it is always one argument and never a flag.
/// (`_` is there because OpenCode's ids look like `ses_0053dc0a…`.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// Validates and wraps a session id.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        let valid = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.len() <= MAX_SESSION_ID_CHARS
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if valid {
            Ok(SessionId(s))
        } else {
            Err(NameError::BadSessionId(s))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SessionId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// How the agent is asked to work on a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    /// Write and change code (the default).
    #[default]
    Code,
    /// Review code without changing it.
    Review,
    /// Plan work without changing anything.
    Plan,
    /// Operate: inspect systems, run commands.
    Ops,
}

impl Persona {
    /// Every persona, in the order help lists them.
    pub const ALL: [Persona; 4] = [Persona::Code, Persona::Review, Persona::Plan, Persona::Ops];

    /// The word people type for this persona.
    pub fn as_str(self) -> &'static str {
        match self {
            Persona::Code => "code",
            Persona::Review => "review",
            Persona::Plan => "plan",
            Persona::Ops => "ops",
        }
    }
}

impl fmt::Display for Persona {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Persona {
    type Err = NameError;

    /// Exactly one of the four words, lower case; nothing else is a persona.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Persona::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| NameError::BadPersona(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_parses_with_and_without_hash() {
        assert_eq!("#42".parse::<TaskId>(), Ok(TaskId(42)));
        assert_eq!("42".parse::<TaskId>(), Ok(TaskId(42)));
        assert_eq!(TaskId(7).to_string(), "#7");
        for bad in [
            "",
            "#",
            "#0",
            "-3",
            "#-3",
            "#+3",
            "4 2",
            "#x",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(AgentName::new("laptop-1.dev_x").is_ok());
        assert!(AgentName::new("").is_err());
        assert!(AgentName::new("a b").is_err());
        assert!(ProjectName::new("x".repeat(65)).is_err());
        assert!(ProjectName::new("é").is_err());
        let err = serde_json::from_str::<ProjectName>("\"../etc\"");
        assert!(err.is_err());
    }

    #[test]
    fn session_ids_cannot_become_flags_or_shell() {
        for ok in [
            "bfc86ca0-df6f-42d4-9fdc-c95b3c1da201",
            "019ffc18-837b-7182-a0e7-89ae640fc2c2",
            "ses_0053dc0a6ffeLfOVWup0QCNjl2",
            "a",
            &"x".repeat(MAX_SESSION_ID_CHARS),
        ] {
            assert_eq!(SessionId::new(ok).map(|s| s.to_string()), Ok(ok.to_owned()));
        }
        for bad in [
            "",
            "--dangerously-skip-permissions",
            "-r",
            "_x",
            "x; rm -rf /",
            "a b",
            "a\nb",
            "$(id)",
            "a/b",
            "é",
            &"x".repeat(MAX_SESSION_ID_CHARS + 1),
        ] {
            assert!(SessionId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<SessionId>("\"-x\"").is_err());
    }

    #[test]
    fn persona_is_exact_word() {
        assert_eq!("review".parse::<Persona>(), Ok(Persona::Review));
        assert!("Review".parse::<Persona>().is_err());
        assert!("reviewer".parse::<Persona>().is_err());
        assert_eq!(Persona::default(), Persona::Code);
    }
}
