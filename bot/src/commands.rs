//! The `/baton` and `/baton-admin` command languages: parsing and help.
//!
//! Commands are enums with a doc line per variant; parsing is a table of small
//! parsers, each returning `None` when the text is not theirs, and the help
//! text is generated from the same table, so the two never disagree.

use baton_shared::limits::MAX_PROMPT_CHARS;
use baton_shared::{AgentName, Persona, ProjectName, TaskId};

use crate::access::Who;
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
    AgentAdd {
        /// The agent's name.
        name: AgentName,
        /// The projects its key may serve; None: any (`*`, or none given).
        projects: Option<Vec<ProjectName>>,
    },
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
    /// Add people, user groups or channels to a project's access list.
    ProjectAllow {
        /// The project.
        project: ProjectName,
        /// Who or where.
        who: Vec<Who>,
    },
    /// Remove entries from a project's access list.
    ProjectDisallow {
        /// The project.
        project: ProjectName,
        /// Who or where.
        who: Vec<Who>,
    },
    /// Show a project's access list and the rule in effect.
    ProjectAccess(ProjectName),
    /// Set (or show, when None) the personas a project takes.
    ProjectPersonas {
        /// The project.
        project: ProjectName,
        /// The personas; `Some(None)`: all of them; None: show.
        personas: Option<Option<Vec<Persona>>>,
    },
    /// Set (or show, when empty) who may answer a project's approvals.
    ProjectApprovers {
        /// The project.
        project: ProjectName,
        /// People and user groups.
        who: Vec<Who>,
    },
    /// The latest audit entries.
    Audit(u64),
    /// Show the admin commands.
    Help,
}

/// Audit entries `/baton-admin audit` shows when no number is given.
pub const AUDIT_SHOWN: u64 = 20;
/// The most audit entries one `/baton-admin audit N` shows.
pub const AUDIT_SHOWN_MAX: u64 = 100;

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

/// `agent add NAME [PROJECT…|*]`: no project, or `*`, means any.
fn agent_add(name: &str, projects: &[&str]) -> Result<AdminCommand, ParseError> {
    let name = AgentName::new(name).map_err(|e| ParseError(e.to_string()))?;
    let projects = if projects.is_empty() || projects == ["*"] {
        None
    } else {
        Some(
            projects
                .iter()
                .map(|p| project_name(p))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    Ok(AdminCommand::AgentAdd { name, projects })
}

/// A project then people, user groups or channels; `needed`: at least one.
fn project_and_who(
    words: &[&str],
    usage: &str,
    needed: bool,
) -> Result<(ProjectName, Vec<Who>), ParseError> {
    let Some((p, rest)) = words.split_first() else {
        return Err(ParseError(format!("Usage: `{usage}`")));
    };
    let project = project_name(p)?;
    if needed && rest.is_empty() {
        return Err(ParseError(format!(
            "Who? Mention people, user groups or channels. Usage: `{usage}`"
        )));
    }
    let who = rest
        .iter()
        .map(|w| Who::parse(w).map_err(ParseError))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((project, who))
}

/// `code,review,…` (commas or spaces), or `all` (None).
fn persona_list(text: &str) -> Result<Option<Vec<Persona>>, ParseError> {
    let words: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    if words == ["all"] {
        return Ok(None);
    }
    let mut out = Vec::new();
    for w in words {
        let p = w.parse::<Persona>().map_err(|_| {
            ParseError(format!(
                "`{w}` is not a persona. Use some of: {}, or `all`.",
                Persona::ALL
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(ParseError(
            "Which personas? Usage: `/baton-admin project personas PROJECT code,review,…` (or `all`)".into(),
        ));
    }
    Ok(Some(out))
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
        usage: "/baton-admin agent add NAME [PROJECT…|*]",
        about: "add an agent whose key may serve only those projects (`*` or none: any); its key is shown once, only to you",
        parse: |w, _| match w {
            ["agent", "add", name, projects @ ..] => Some(agent_add(name, projects)),
            ["agent", "add"] => Some(Err(ParseError(
                "Usage: `/baton-admin agent add NAME [PROJECT…|*]`".into(),
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
        usage: "/baton-admin project allow PROJECT WHO…",
        about: "let people (@someone), user groups (@group) and channels (#channel) start tasks in PROJECT",
        parse: |w, _| match w {
            ["project", "allow", rest @ ..] => Some(
                project_and_who(rest, "/baton-admin project allow PROJECT WHO…", true)
                    .map(|(project, who)| AdminCommand::ProjectAllow { project, who }),
            ),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin project disallow PROJECT WHO…",
        about: "remove people, user groups or channels from PROJECT's access list",
        parse: |w, _| match w {
            ["project", "disallow", rest @ ..] => Some(
                project_and_who(rest, "/baton-admin project disallow PROJECT WHO…", true)
                    .map(|(project, who)| AdminCommand::ProjectDisallow { project, who }),
            ),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin project access PROJECT",
        about: "show PROJECT's access list and the rule in effect",
        parse: |w, _| match w {
            ["project", "access", p] => Some(project_name(p).map(AdminCommand::ProjectAccess)),
            ["project", "access", ..] => Some(Err(ParseError(
                "Usage: `/baton-admin project access PROJECT`".into(),
            ))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin project personas PROJECT [code,review,…|all]",
        about: "set (or show) the personas PROJECT takes (default: all)",
        parse: |w, _| match w {
            ["project", "personas", p, list @ ..] => Some(project_name(p).and_then(|project| {
                let personas = if list.is_empty() {
                    None
                } else {
                    Some(persona_list(&list.join(","))?)
                };
                Ok(AdminCommand::ProjectPersonas { project, personas })
            })),
            ["project", "personas"] => Some(Err(ParseError(
                "Usage: `/baton-admin project personas PROJECT code,review,…` (or `all`)".into(),
            ))),
            _ => None,
        },
    },
    Entry {
        usage: "/baton-admin project approvers PROJECT [WHO…]",
        about: "set (or show) the people and user groups who may answer PROJECT's approvals",
        parse: |w, _| match w {
            ["project", "approvers", rest @ ..] => Some(
                project_and_who(rest, "/baton-admin project approvers PROJECT WHO…", false)
                    .and_then(|(project, who)| {
                        match who.iter().find(|w| matches!(w, Who::Channel(_))) {
                            Some(c) => Err(ParseError(format!(
                                "Approvers are people or user groups, not channels ({}).",
                                c.mention()
                            ))),
                            None => Ok(AdminCommand::ProjectApprovers { project, who }),
                        }
                    }),
            ),
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
        usage: "/baton-admin audit [N]",
        about: "the latest audit entries: who did or was refused what",
        parse: |w, _| match w {
            ["audit"] => Some(Ok(AdminCommand::Audit(AUDIT_SHOWN))),
            ["audit", n] => Some(match n.parse::<u64>() {
                Ok(n) if (1..=AUDIT_SHOWN_MAX).contains(&n) => Ok(AdminCommand::Audit(n)),
                _ => Err(ParseError(format!(
                    "`{n}` is not a number of entries from 1 to {AUDIT_SHOWN_MAX}. Usage: `/baton-admin audit [N]`"
                ))),
            }),
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
            Ok(AdminCommand::AgentAdd {
                name: a("laptop"),
                projects: None
            })
        );
        assert_eq!(
            parse_admin("agent add laptop *"),
            Ok(AdminCommand::AgentAdd {
                name: a("laptop"),
                projects: None
            })
        );
        assert_eq!(
            parse_admin("agent add ci web api"),
            Ok(AdminCommand::AgentAdd {
                name: a("ci"),
                projects: Some(vec![p("web"), p("api")])
            })
        );
        assert!(parse_admin("agent add ci ../x").is_err());
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
    fn access_commands_parse_and_refuse_what_they_cannot_read() {
        let p = |s: &str| ProjectName::new(s).expect("valid");
        assert_eq!(
            parse_admin("project allow web <@U1|ann> <!subteam^S2|@devs> <#C3|dev>"),
            Ok(AdminCommand::ProjectAllow {
                project: p("web"),
                who: vec![
                    Who::User("U1".into()),
                    Who::Group("S2".into()),
                    Who::Channel("C3".into())
                ]
            })
        );
        assert_eq!(
            parse_admin("project disallow web U1"),
            Ok(AdminCommand::ProjectDisallow {
                project: p("web"),
                who: vec![Who::User("U1".into())]
            })
        );
        assert!(parse_admin("project allow web").is_err_and(|e| e.0.contains("Who?")));
        assert!(parse_admin("project allow").is_err_and(|e| e.0.contains("Usage")));
        assert!(parse_admin("project allow web @ann").is_err_and(|e| e.0.contains("`@ann`")));
        assert_eq!(
            parse_admin("project access web"),
            Ok(AdminCommand::ProjectAccess(p("web")))
        );
        assert_eq!(
            parse_admin("project personas web code, review"),
            Ok(AdminCommand::ProjectPersonas {
                project: p("web"),
                personas: Some(Some(vec![Persona::Code, Persona::Review]))
            })
        );
        assert_eq!(
            parse_admin("project personas web all"),
            Ok(AdminCommand::ProjectPersonas {
                project: p("web"),
                personas: Some(None)
            })
        );
        assert_eq!(
            parse_admin("project personas web"),
            Ok(AdminCommand::ProjectPersonas {
                project: p("web"),
                personas: None
            })
        );
        assert!(parse_admin("project personas web coder").is_err_and(|e| e.0.contains("`coder`")));
        assert_eq!(
            parse_admin("project approvers web <@U1> <!subteam^S2>"),
            Ok(AdminCommand::ProjectApprovers {
                project: p("web"),
                who: vec![Who::User("U1".into()), Who::Group("S2".into())]
            })
        );
        assert!(
            parse_admin("project approvers web <#C1>").is_err_and(|e| e.0.contains("not channels"))
        );
        assert_eq!(parse_admin("audit"), Ok(AdminCommand::Audit(AUDIT_SHOWN)));
        assert_eq!(parse_admin("audit 5"), Ok(AdminCommand::Audit(5)));
        assert!(parse_admin("audit 1000").is_err());
        assert!(parse_admin("audit x").is_err());
        // `project bind` still parses after the new project subcommands.
        assert!(matches!(
            parse_admin("project bind web"),
            Ok(AdminCommand::ProjectBind { .. })
        ));
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
            "project allow PROJECT WHO…",
            "project disallow PROJECT WHO…",
            "project access PROJECT",
            "project personas PROJECT",
            "project approvers PROJECT",
            "audit [N]",
        ] {
            assert!(h.contains(usage), "{usage} missing from admin help");
        }
    }
}
