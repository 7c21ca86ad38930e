//! The `/baton` and `/baton-admin` command languages: parsing and help.
//!
//! Commands are enums with a doc line per variant; parsing is a table of small
//! parsers, each returning `None` when the text is not theirs, and the help
//! text is generated from the same table, so the two never disagree.

use baton_shared::limits::MAX_PROMPT_CHARS;
use baton_shared::{AgentName, Persona, ProjectName, TaskId};

use crate::model::TaskState;

/// A `/baton` command (or an `@baton` mention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start a task.
    Run {
        /// The persona (first word, when it is exactly one of the four).
        persona: Persona,
        /// `--project NAME`, when given.
        project: Option<ProjectName>,
        /// What to do.
        prompt: String,
    },
    /// Show a task, or your recent tasks.
    Status(Option<TaskId>),
    /// Cancel a task.
    Cancel(TaskId),
    /// Run a task again.
    Retry(TaskId),
    /// Show what is waiting in the queues.
    Queue,
    /// Show what Baton can do.
    Help,
}

/// A `/baton-admin` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// Every agent's health.
    Health,
    /// Close an agent's circuit.
    HealthReset(AgentName),
    /// List agents.
    Agents,
    /// Add an agent and show its key once.
    AgentAdd(AgentName),
    /// Revoke an agent's key and disconnect it.
    AgentRevoke(AgentName),
    /// Bind a project to a channel (this one when none is given).
    ProjectBind {
        /// The project.
        project: ProjectName,
        /// The channel id, when given.
        channel: Option<String>,
    },
    /// List projects.
    Projects,
    /// Show the queues, or one project's.
    Queue(Option<ProjectName>),
    /// Empty a project's queue.
    QueuePurge(ProjectName),
    /// List tasks, optionally in one state.
    Tasks(Option<TaskState>),
    /// Show the admin commands.
    Help,
}

/// Why a command did not parse; shown to the person as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

type Parser<C> = fn(&[&str], &str) -> Option<Result<C, ParseError>>;

/// One entry of a command table: usage, what it does, its parser.
struct Entry<C: 'static> {
    usage: &'static str,
    about: &'static str,
    parse: Parser<C>,
}

fn task_id(word: &str, usage: &str) -> Result<TaskId, ParseError> {
    word.parse().map_err(|_| {
        ParseError(format!(
            "`{word}` is not a task id (like `#42`). Usage: `{usage}`"
        ))
    })
}

/// A subcommand's word used with arguments it does not take: its usage line,
/// and how to start a task whose prompt begins with that word instead.
fn bad_subcommand(word: &str, usage: &str) -> ParseError {
    ParseError(format!(
        "`{word}` is a Baton command, and this is not how it is used. Usage: `{usage}`. To start a task whose prompt begins with \"{word}\", name the persona first: `/baton code {word} …`."
    ))
}

/// The words that are always subcommands of `/baton` when they come first.
pub const SUBCOMMANDS: [&str; 5] = ["help", "status", "cancel", "retry", "queue"];

const BATON: &[Entry<Command>] = &[
    Entry {
        usage: "/baton help",
        about: "show this help",
        parse: |w, _| match w {
            ["help"] => Some(Ok(Command::Help)),
            ["help", ..] => Some(Err(bad_subcommand("help", "/baton help"))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton status [#ID]",
        about: "show a task, or your recent tasks",
        parse: |w, _| match w {
            ["status"] => Some(Ok(Command::Status(None))),
            ["status", id] => Some(
                task_id(id, "/baton status [#ID]")
                    .map(|id| Command::Status(Some(id)))
                    .map_err(|_| bad_subcommand("status", "/baton status [#ID]")),
            ),
            ["status", ..] => Some(Err(bad_subcommand("status", "/baton status [#ID]"))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton cancel #ID",
        about: "cancel a queued or running task",
        parse: |w, _| match w {
            ["cancel"] => Some(Err(ParseError(
                "Which task? Usage: `/baton cancel #ID`".into(),
            ))),
            ["cancel", id] => Some(task_id(id, "/baton cancel #ID").map(Command::Cancel)),
            ["cancel", ..] => Some(Err(bad_subcommand("cancel", "/baton cancel #ID"))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton retry #ID",
        about: "run a failed, cancelled or expired task again",
        parse: |w, _| match w {
            ["retry"] => Some(Err(ParseError(
                "Which task? Usage: `/baton retry #ID`".into(),
            ))),
            ["retry", id] => Some(task_id(id, "/baton retry #ID").map(Command::Retry)),
            ["retry", ..] => Some(Err(bad_subcommand("retry", "/baton retry #ID"))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton queue",
        about: "show what is waiting for an agent",
        parse: |w, _| match w {
            ["queue"] => Some(Ok(Command::Queue)),
            ["queue", ..] => Some(Err(bad_subcommand("queue", "/baton queue"))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton [code|review|plan|ops] [--project NAME] PROMPT",
        about: "start a task (persona `code` by default); reply in its thread to follow up",
        parse: |_, text| Some(parse_run(text)),
    },
];

fn parse_run(text: &str) -> Result<Command, ParseError> {
    let mut rest = text.trim();
    let mut persona = Persona::default();
    let mut project = None;
    // The first word is a persona only when it is exactly one of the four.
    if let Some((first, after)) = split_word(rest)
        && let Ok(p) = first.parse::<Persona>()
    {
        persona = p;
        rest = after;
    }
    if let Some((flag, after)) = split_word(rest) {
        if flag == "--project" {
            let Some((name, after)) = split_word(after) else {
                return Err(ParseError(
                    "`--project` needs a project name: `/baton --project NAME PROMPT`".into(),
                ));
            };
            project = Some(ProjectName::new(name).map_err(|e| ParseError(e.to_string()))?);
            rest = after;
        } else if let Some(name) = flag.strip_prefix("--project=") {
            project = Some(ProjectName::new(name).map_err(|e| ParseError(e.to_string()))?);
            rest = after;
        }
    }
    let prompt = rest.trim();
    if prompt.is_empty() {
        return Err(ParseError(
            "The prompt is empty. Write what the agent should do: `/baton fix the flaky login test`. `/baton help` lists every command.".into(),
        ));
    }
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(ParseError(format!(
            "The prompt is {chars} characters long; the limit is {MAX_PROMPT_CHARS}. Shorten it, or put the details in a file in the project and point to it."
        )));
    }
    Ok(Command::Run {
        persona,
        project,
        prompt: prompt.to_owned(),
    })
}

/// The first whitespace-separated word and the rest (trimmed at the start).
fn split_word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    match s.find(char::is_whitespace) {
        Some(i) => Some((&s[..i], s[i..].trim_start())),
        None => Some((s, "")),
    }
}

fn admin_name<T>(word: &str, make: fn(AgentName) -> T) -> Result<T, ParseError> {
    AgentName::new(word)
        .map(make)
        .map_err(|e| ParseError(e.to_string()))
}

fn project_name(word: &str) -> Result<ProjectName, ParseError> {
    ProjectName::new(word).map_err(|e| ParseError(e.to_string()))
}

/// A channel as Slack escapes it (`<#C123|name>`), or a bare channel id.
fn channel_id(word: &str) -> Result<String, ParseError> {
    let inner = word.strip_prefix("<#").and_then(|w| w.strip_suffix('>'));
    let id = match inner {
        Some(inner) => inner.split('|').next().unwrap_or(""),
        None => word,
    };
    if !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        Ok(id.to_owned())
    } else {
        Err(ParseError(format!(
            "`{word}` is not a channel I can read. Pick it with # so Slack links it, or give its id (like C0123456), or leave it out to bind this channel."
        )))
    }
}

const ADMIN: &[Entry<AdminCommand>] = &[
    Entry {
        usage: "/baton-admin health",
        about: "every agent: connection, circuit, success rate, load, queue, last seen",
        parse: |w, _| (w == ["health"]).then_some(Ok(AdminCommand::Health)),
    },
    Entry {
        usage: "/baton-admin health reset AGENT",
        about: "close an agent's circuit",
        parse: |w, _| match w {
            ["health", "reset", name] => Some(admin_name(name, AdminCommand::HealthReset)),
            ["health", "reset"] => Some(Err(ParseError(
                "Which agent? Usage: `/baton-admin health reset AGENT`".into(),
            ))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin agents",
        about: "list agents and their keys' state",
        parse: |w, _| (w == ["agents"]).then_some(Ok(AdminCommand::Agents)),
    },
    Entry {
        usage: "/baton-admin agent add NAME",
        about: "add an agent; its key is shown once, only to you",
        parse: |w, _| match w {
            ["agent", "add", name] => Some(admin_name(name, AdminCommand::AgentAdd)),
            ["agent", "add", ..] => Some(Err(ParseError(
                "Usage: `/baton-admin agent add NAME`".into(),
            ))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin agent revoke NAME",
        about: "revoke an agent's key and disconnect it",
        parse: |w, _| match w {
            ["agent", "revoke", name] => Some(admin_name(name, AdminCommand::AgentRevoke)),
            ["agent", "revoke", ..] => Some(Err(ParseError(
                "Usage: `/baton-admin agent revoke NAME`".into(),
            ))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin project bind PROJECT [#channel]",
        about: "send this channel's (or that channel's) tasks to PROJECT",
        parse: |w, _| match w {
            ["project", "bind", p] => {
                Some(project_name(p).map(|project| AdminCommand::ProjectBind {
                    project,
                    channel: None,
                }))
            }
            ["project", "bind", p, c] => Some(project_name(p).and_then(|project| {
                channel_id(c).map(|c| AdminCommand::ProjectBind {
                    project,
                    channel: Some(c),
                })
            })),
            ["project", ..] => Some(Err(ParseError(
                "Usage: `/baton-admin project bind PROJECT [#channel]`".into(),
            ))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin projects",
        about: "list projects, their channels and agents",
        parse: |w, _| (w == ["projects"]).then_some(Ok(AdminCommand::Projects)),
    },
    Entry {
        usage: "/baton-admin queue purge PROJECT",
        about: "remove every queued task of PROJECT",
        parse: |w, _| match w {
            ["queue", "purge", p] => Some(project_name(p).map(AdminCommand::QueuePurge)),
            ["queue", "purge"] => Some(Err(ParseError(
                "Which project? Usage: `/baton-admin queue purge PROJECT`".into(),
            ))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin queue [PROJECT]",
        about: "show the queues, or one project's",
        parse: |w, _| match w {
            ["queue"] => Some(Ok(AdminCommand::Queue(None))),
            ["queue", p] => Some(project_name(p).map(|p| AdminCommand::Queue(Some(p)))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin tasks [STATE]",
        about: "list recent tasks, optionally in one state",
        parse: |w, _| match w {
            ["tasks"] => Some(Ok(AdminCommand::Tasks(None))),
            ["tasks", s] => Some(
                s.parse::<TaskState>()
                    .map(|s| AdminCommand::Tasks(Some(s)))
                    .map_err(|_| {
                        let all: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                        ParseError(format!(
                            "`{s}` is not a task state. Use one of: {}",
                            all.join(", ")
                        ))
                    }),
            ),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin help",
        about: "show this help",
        parse: |w, _| (w.is_empty() || w == ["help"]).then_some(Ok(AdminCommand::Help)),
    },
];

fn parse_with<C>(table: &[Entry<C>], text: &str) -> Option<Result<C, ParseError>> {
    let words: Vec<&str> = text.split_whitespace().collect();
    table.iter().find_map(|e| (e.parse)(&words, text))
}

/// Parses the text of `/baton` (or of an `@baton` mention without the mention).
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Command::Help);
    }
    parse_with(BATON, text).unwrap_or_else(|| parse_run(text))
}

/// Parses the text of `/baton-admin`.
pub fn parse_admin(text: &str) -> Result<AdminCommand, ParseError> {
    parse_with(ADMIN, text).unwrap_or_else(|| {
        Err(ParseError(format!(
            "`{}` is not an admin command.\n{}",
            text.trim(),
            admin_help()
        )))
    })
}

fn help_for<C>(title: &str, table: &[Entry<C>]) -> String {
    let mut s = format!("*{title}*\n");
    for e in table {
        s.push_str(&format!("• `{}` — {}\n", e.usage, e.about));
    }
    s
}

/// The help for `/baton`, generated from the parser table.
pub fn help() -> String {
    let mut s = help_for("Baton runs coding tasks on your team's agents.", BATON);
    s.push_str("Personas: ");
    s.push_str(
        &Persona::ALL
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    s.push_str(
        ". Mention `@baton` with the same words, or reply in a task's thread to continue it.",
    );
    s
}

/// The help for `/baton-admin`, generated from the parser table.
pub fn admin_help() -> String {
    help_for("Baton admin commands", ADMIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(persona: Persona, project: Option<&str>, prompt: &str) -> Command {
        Command::Run {
            persona,
            project: project.map(|p| ProjectName::new(p).expect("valid")),
            prompt: prompt.into(),
        }
    }

    #[test]
    fn persona_only_when_exact_word() {
        assert_eq!(
            parse("say hello"),
            Ok(run(Persona::Code, None, "say hello"))
        );
        assert_eq!(
            parse("review the auth module"),
            Ok(run(Persona::Review, None, "the auth module"))
        );
        assert_eq!(
            parse("reviewer the auth module"),
            Ok(run(Persona::Code, None, "reviewer the auth module"))
        );
        assert_eq!(
            parse("Plan a migration"),
            Ok(run(Persona::Code, None, "Plan a migration"))
        );
        assert_eq!(
            parse("ops --project web restart it"),
            Ok(run(Persona::Ops, Some("web"), "restart it"))
        );
        assert_eq!(
            parse("--project=web hi"),
            Ok(run(Persona::Code, Some("web"), "hi"))
        );
    }

    #[test]
    fn bad_runs_say_what_to_do() {
        assert!(parse("review").is_err_and(|e| e.0.contains("empty")));
        assert!(parse("--project").is_err_and(|e| e.0.contains("needs a project")));
        assert!(parse("--project ../x hi").is_err());
        let long = "x".repeat(MAX_PROMPT_CHARS + 1);
        assert!(parse(&long).is_err_and(|e| e.0.contains("limit")));
    }

    #[test]
    fn subcommands_parse() {
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse(""), Ok(Command::Help));
        assert_eq!(parse("status"), Ok(Command::Status(None)));
        assert_eq!(parse("status #4"), Ok(Command::Status(Some(TaskId(4)))));
        assert_eq!(parse("cancel #7"), Ok(Command::Cancel(TaskId(7))));
        assert_eq!(parse("retry 9"), Ok(Command::Retry(TaskId(9))));
        assert_eq!(parse("queue"), Ok(Command::Queue));
    }

    /// Issue 13, finding 1: a first word that is a subcommand always means the
    /// subcommand; a bad argument gets its usage line, never a task.
    #[test]
    fn malformed_subcommands_get_their_usage_not_a_task() {
        for (text, usage) in [
            ("cancel 42 now", "/baton cancel #ID"),
            ("status foo", "/baton status [#ID]"),
            ("retry", "/baton retry #ID"),
            ("cancel #abc", "/baton cancel #ID"),
            ("cancel", "/baton cancel #ID"),
            ("cancel seven", "/baton cancel #ID"),
            ("retry #1 #2", "/baton retry #ID"),
            ("status of the build", "/baton status [#ID]"),
            ("status #4 please", "/baton status [#ID]"),
            ("queue up the jobs", "/baton queue"),
            ("help me", "/baton help"),
        ] {
            match parse(text) {
                Err(e) => assert!(e.0.contains(usage), "{text:?} answered {:?}", e.0),
                Ok(c) => panic!("{text:?} parsed as {c:?}"),
            }
        }
        // The way out, named in the answer: the persona first makes it a prompt.
        assert!(parse("queue up the jobs").is_err_and(|e| e.0.contains("/baton code queue")));
        assert_eq!(
            parse("code status of the build"),
            Ok(run(Persona::Code, None, "status of the build"))
        );
        for word in SUBCOMMANDS {
            assert!(parse(&format!("{word} x y")).is_err(), "{word}");
        }
    }

    #[test]
    fn admin_commands_parse() {
        let a = |s: &str| AgentName::new(s).expect("valid");
        let p = |s: &str| ProjectName::new(s).expect("valid");
        assert_eq!(parse_admin("health"), Ok(AdminCommand::Health));
        assert_eq!(
            parse_admin("health reset gpu-1"),
            Ok(AdminCommand::HealthReset(a("gpu-1")))
        );
        assert_eq!(parse_admin("agents"), Ok(AdminCommand::Agents));
        assert_eq!(
            parse_admin("agent add laptop"),
            Ok(AdminCommand::AgentAdd(a("laptop")))
        );
        assert_eq!(
            parse_admin("agent revoke laptop"),
            Ok(AdminCommand::AgentRevoke(a("laptop")))
        );
        assert_eq!(
            parse_admin("project bind web"),
            Ok(AdminCommand::ProjectBind {
                project: p("web"),
                channel: None
            })
        );
        assert_eq!(
            parse_admin("project bind web <#C0123|dev>"),
            Ok(AdminCommand::ProjectBind {
                project: p("web"),
                channel: Some("C0123".into())
            })
        );
        assert!(parse_admin("project bind web #dev").is_err());
        assert_eq!(parse_admin("projects"), Ok(AdminCommand::Projects));
        assert_eq!(parse_admin("queue"), Ok(AdminCommand::Queue(None)));
        assert_eq!(
            parse_admin("queue web"),
            Ok(AdminCommand::Queue(Some(p("web"))))
        );
        assert_eq!(
            parse_admin("queue purge web"),
            Ok(AdminCommand::QueuePurge(p("web")))
        );
        assert_eq!(
            parse_admin("tasks failed"),
            Ok(AdminCommand::Tasks(Some(TaskState::Failed)))
        );
        assert!(parse_admin("tasks sleepy").is_err_and(|e| e.0.contains("queued")));
        assert!(parse_admin("reboot everything").is_err_and(|e| e.0.contains("health")));
    }

    #[test]
    fn help_lists_every_command() {
        let h = help();
        for usage in [
            "/baton status",
            "/baton cancel #ID",
            "/baton retry #ID",
            "/baton queue",
            "/baton help",
            "--project",
        ] {
            assert!(h.contains(usage), "{usage} missing from help");
        }
        let h = admin_help();
        for usage in [
            "health reset AGENT",
            "agent add NAME",
            "agent revoke NAME",
            "project bind",
            "projects",
            "queue purge",
            "tasks [STATE]",
        ] {
            assert!(h.contains(usage), "{usage} missing from admin help");
        }
    }
}
