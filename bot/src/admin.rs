//! `/baton-admin`: health, agents and keys, projects, queues, tasks. Admins only;
//! every action is written to the audit log.

use std::sync::Arc;

use crate::app::App;
use crate::breaker::CircuitState;
use crate::commands::{self, AdminCommand};
use crate::model::TaskState;
use crate::replies;
use crate::slack::mrkdwn;
use crate::slack::render::{summary_line, task_line};
use crate::store::Ending;

/// Tasks listed by `tasks`.
const TASKS_LISTED: u64 = 20;

/// Handles one admin command, `text`, from `user_id` in `channel_id`;
/// returns the ephemeral reply.
pub async fn handle(app: &Arc<App>, user_id: &str, channel_id: &str, text: &str) -> String {
    if !app.has_admins() {
        return replies::admins_not_configured();
    }
    if !app.is_admin(user_id) {
        tracing::warn!(user = %user_id, "admin command refused");
        return replies::not_an_admin();
    }
    let parsed = match commands::parse_admin(text) {
        Ok(c) => c,
        Err(e) => return e.0,
    };
    match run(app, user_id, channel_id, parsed).await {
        Ok(text) => text,
        Err(err) => {
            tracing::error!(error = ?err, "admin command failed");
            replies::internal_error()
        }
    }
}

async fn run(
    app: &Arc<App>,
    actor: &str,
    channel_id: &str,
    parsed: AdminCommand,
) -> anyhow::Result<String> {
    Ok(match parsed {
        AdminCommand::Help => commands::admin_help(),
        AdminCommand::Health => {
            let agents = app.hub.snapshot();
            let known = app.store.agents().await?;
            // Which process holds each agent (PostgreSQL: several share the database).
            let holders = if app.store.is_shared() {
                app.store.agent_holders(app.clock.now_ms()).await?
            } else {
                Default::default()
            };
            let mut out = String::from("*Agent health*\n");
            if known.is_empty() && agents.is_empty() {
                out.push_str("No agents yet. Add one with `/baton-admin agent add NAME`.");
            }
            for row in &known {
                let live = agents.iter().find(|a| a.name == row.name);
                let revoked = if row.revoked_at.is_some() {
                    " (revoked)"
                } else {
                    ""
                };
                let holder = holders.get(&row.name);
                if !live.is_some_and(|a| a.connected)
                    && let Some((instance, true)) = holder
                    && instance != app.instance_id()
                {
                    let running = app
                        .store
                        .agent_tasks(&row.name, &[TaskState::Dispatched, TaskState::Running])
                        .await?
                        .len();
                    out.push_str(&replies::health_held_elsewhere(
                        &row.name, revoked, instance, running,
                    ));
                    continue;
                }
                let here = if app.store.is_shared() && live.is_some_and(|a| a.connected) {
                    replies::health_on_this_process(app.instance_id())
                } else {
                    String::new()
                };
                match live {
                    Some(a) => {
                        let mut queued = 0;
                        for p in &a.projects {
                            queued += app.store.queue_len(p).await?;
                        }
                        let b = &a.breaker;
                        let circuit = match b.state {
                            CircuitState::Closed => format!(
                                "circuit *closed* · {} ({} calls in window)",
                                b.failure_rate
                                    .map(|r| format!("{r:.0}% failures"))
                                    .unwrap_or_else(|| "too few calls to judge".into()),
                                b.calls
                            ),
                            CircuitState::Open => format!(
                                "circuit *open* for {}s (half-open after {}s)",
                                b.since.elapsed().as_secs(),
                                app.settings.breaker_open_secs
                            ),
                            CircuitState::HalfOpen => format!(
                                "circuit *half-open* · {} probe(s) running, {} succeeded",
                                b.probes_in_flight, b.probe_successes
                            ),
                        };
                        let refused = if a.refused.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " · :no_entry: refused {}: its key does not grant them (give it a key that does: `agent revoke`, then `agent add {} PROJECT…`, or `{}:KEY:…` in `BATON_AGENT_KEYS`)",
                                a.refused
                                    .iter()
                                    .map(|p| format!("`{p}`"))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                row.name,
                                row.name
                            )
                        };
                        out.push_str(&format!(
                            "• *{}*{}: {}{here} · {} · {}/{} running · {} queued · last seen {}{refused}\n",
                            row.name,
                            revoked,
                            if a.connected {
                                if a.draining { "draining" } else { "connected" }
                            } else {
                                "disconnected"
                            },
                            circuit,
                            a.running,
                            a.capacity,
                            queued,
                            a.last_seen_secs
                                .map(|s| format!("{s}s ago"))
                                .unwrap_or_else(|| "never".into()),
                        ));
                    }
                    None if app.store.is_shared() => {
                        let stopped = holder
                            .filter(|(i, live)| !live && i != app.instance_id())
                            .map(|(i, _)| i.as_str());
                        out.push_str(&replies::health_not_connected(&row.name, revoked, stopped));
                    }
                    None => out.push_str(&format!(
                        "• *{}*{}: never connected since the bot started\n",
                        row.name, revoked
                    )),
                }
            }
            out
        }
        AdminCommand::HealthReset(name) => {
            app.store
                .audit(actor, "health.reset", name.as_str(), "")
                .await?;
            // The process holding the agent, if another, closes it there.
            app.announce(crate::app::Signal::HealthReset(name.to_string()))
                .await;
            let here = app.hub.reset_breaker(name.as_str());
            // Held by another process (PostgreSQL): that process resets it.
            let elsewhere = !here
                && app.store.is_shared()
                && app.store.agent_instance(name.as_str()).await?.is_some();
            if here || elsewhere {
                app.dispatch_wake.notify_one();
                format!("The circuit of `{name}` is closed; it receives tasks again.")
            } else {
                format!(
                    "There is no agent `{name}` with a circuit. `/baton-admin health` lists them."
                )
            }
        }
        AdminCommand::Agents => {
            let rows = app.store.agents().await?;
            if rows.is_empty() {
                return Ok("No agents yet. Add one with `/baton-admin agent add NAME`.".into());
            }
            // Connected to another live process counts (PostgreSQL).
            let holders = if app.store.is_shared() {
                app.store.agent_holders(app.clock.now_ms()).await?
            } else {
                Default::default()
            };
            let mut out = String::from("*Agents*\n");
            for r in rows {
                let state = if r.revoked_at.is_some() {
                    "revoked"
                } else if app.hub.is_connected(&r.name)
                    || holders.get(&r.name).is_some_and(|(_, live)| *live)
                {
                    "connected"
                } else {
                    "not connected"
                };
                out.push_str(&format!(
                    "• *{}*: {} (added by {})\n",
                    r.name,
                    state,
                    r.created_by.as_deref().unwrap_or("?")
                ));
            }
            out
        }
        AdminCommand::AgentAdd { name, projects } => {
            let key = crate::keys::generate();
            if !app
                .store
                .put_agent(name.as_str(), &crate::keys::hash(&key), actor, false)
                .await?
            {
                return Ok(format!(
                    "An agent named `{name}` already exists. Revoke it first (`/baton-admin agent revoke {name}`) to give it a new key."
                ));
            }
            let grant = projects
                .as_ref()
                .map(|ps| ps.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(","));
            app.store
                .set_agent_projects(name.as_str(), grant.as_deref())
                .await?;
            app.store
                .audit(
                    actor,
                    "agent.add",
                    name.as_str(),
                    &format!("projects: {}", grant.as_deref().unwrap_or("*")),
                )
                .await?;
            let serves = match &projects {
                Some(ps) => format!(
                    "Its key may serve only {}; any other project it announces is refused.",
                    ps.iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!(
                    "Its key may serve any project (`*`). To bind it to some, revoke it and add it again with them: `/baton-admin agent add {name} PROJECT…`."
                ),
            };
            format!(
                "Agent `{name}` added. {serves} Its key, shown this once — put it in the agent's config (`key = \"...\"`) or `BATON_AGENT_KEY`:\n```{key}```"
            )
        }
        AdminCommand::AgentRevoke(name) => {
            let revoked = app.store.revoke_agent(name.as_str()).await?;
            app.store
                .audit(actor, "agent.revoke", name.as_str(), "")
                .await?;
            if revoked {
                app.hub.close(
                    name.as_str(),
                    baton_shared::protocol::close_code::REVOKED,
                    "key revoked",
                );
                app.announce(crate::app::Signal::Revoke(name.to_string()))
                    .await;
                format!("Agent `{name}` is revoked and disconnected; its key no longer works.")
            } else {
                format!("There is no live agent `{name}`. `/baton-admin agents` lists them.")
            }
        }
        AdminCommand::ProjectBind { project, channel } => {
            let channel = channel.unwrap_or_else(|| channel_id.to_owned());
            let known = app.store.project_names().await?;
            app.bind_project(project.as_str(), &channel).await?;
            // The other processes forget the bindings they cached.
            app.announce(crate::app::Signal::Bound).await;
            app.store
                .audit(actor, "project.bind", project.as_str(), &channel)
                .await?;
            let mut reply = format!("Tasks from <#{channel}> now go to project `{project}`.");
            if !known.iter().any(|k| k == project.as_str()) {
                // Allowed (the agent may connect later), but a typo would go unnoticed.
                reply.push_str(&format!(
                    "\n:warning: No agent has served `{project}` yet; check the spelling. Known projects: {}.",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    }
                ));
            }
            reply
        }
        AdminCommand::Projects => {
            let rows = app.store.projects().await?;
            if rows.is_empty() {
                return Ok(
                    "No projects yet: they appear when an agent that serves them connects.".into(),
                );
            }
            let agents = app.hub.snapshot();
            let mut out = String::from("*Projects*\n");
            for p in rows {
                let serving: Vec<_> = agents
                    .iter()
                    .filter(|a| a.connected && a.projects.contains(&p.name))
                    .map(|a| format!("`{}`", a.name))
                    .collect();
                out.push_str(&format!(
                    "• *{}*: {} · agents: {} · {} queued\n",
                    p.name,
                    p.channel_id
                        .map(|c| format!("<#{c}>"))
                        .unwrap_or_else(|| "no channel".into()),
                    if serving.is_empty() {
                        "none connected".into()
                    } else {
                        serving.join(", ")
                    },
                    app.store.queue_len(&p.name).await?
                ));
            }
            out
        }
        AdminCommand::Queue(project) => {
            let projects = match project {
                Some(p) => vec![p.to_string()],
                None => app.store.projects_with_queue().await?,
            };
            if projects.is_empty() {
                return Ok("Every queue is empty.".into());
            }
            let mut out = String::new();
            for p in projects {
                let tasks = app.store.queued(&p, 50).await?;
                let why = app
                    .hub
                    .why_waiting(&p)
                    .map(|r| r.describe())
                    .unwrap_or("an agent can take them now");
                out.push_str(&format!(
                    "*Queue `{p}`*: {} waiting — {why}\n",
                    app.store.queue_len(&p).await?
                ));
                for t in tasks {
                    out.push_str(&task_line(&t));
                    out.push('\n');
                }
            }
            out
        }
        AdminCommand::QueuePurge(project) => {
            let tasks = app.store.queued(project.as_str(), u64::MAX).await?;
            let mut purged = 0;
            for t in tasks {
                let ending = Ending::Cancelled {
                    note: format!("Removed from the queue by admin <@{actor}> (queue purge)."),
                };
                if app
                    .store
                    .finish(t.id, None, None, &[TaskState::Queued], &ending)
                    .await?
                {
                    purged += 1;
                    app.forget_queued(t.id);
                    if let Some(t) = app.store.task(t.id).await? {
                        app.consolidator.show(t, None);
                    }
                }
            }
            // The other processes forget the purged tasks' queue positions.
            app.announce(crate::app::Signal::Purged(project.to_string()))
                .await;
            app.store
                .audit(
                    actor,
                    "queue.purge",
                    project.as_str(),
                    &format!("{purged} tasks"),
                )
                .await?;
            format!("Removed {purged} queued task(s) from `{project}`; their messages say so.")
        }
        AdminCommand::ProjectAllow { project, who } => {
            let mut added = Vec::new();
            let mut already = Vec::new();
            for w in &who {
                if app
                    .store
                    .allow(project.as_str(), w.kind(), w.id(), actor)
                    .await?
                {
                    app.store
                        .audit(actor, "project.allow", project.as_str(), &w.mention())
                        .await?;
                    added.push(w.mention());
                } else {
                    already.push(w.mention());
                }
            }
            let mut out = String::new();
            if !added.is_empty() {
                out.push_str(&format!(
                    "Added to the access list of `{project}`: {}.\n",
                    added.join(", ")
                ));
            }
            if !already.is_empty() {
                out.push_str(&format!("Already on it: {}.\n", already.join(", ")));
            }
            out.push_str(&rule_in_effect(app, project.as_str()).await?);
            out.push_str(&unknown_project_warning(app, project.as_str()).await?);
            out
        }
        AdminCommand::ProjectDisallow { project, who } => {
            let mut removed = Vec::new();
            let mut absent = Vec::new();
            for w in &who {
                if app
                    .store
                    .disallow(project.as_str(), w.kind(), w.id())
                    .await?
                {
                    app.store
                        .audit(actor, "project.disallow", project.as_str(), &w.mention())
                        .await?;
                    removed.push(w.mention());
                } else {
                    absent.push(w.mention());
                }
            }
            let mut out = String::new();
            if !removed.is_empty() {
                out.push_str(&format!(
                    "Removed from the access list of `{project}`: {}.\n",
                    removed.join(", ")
                ));
            }
            if !absent.is_empty() {
                out.push_str(&format!("Not on it: {}.\n", absent.join(", ")));
            }
            out.push_str(&rule_in_effect(app, project.as_str()).await?);
            out
        }
        AdminCommand::ProjectAccess(project) => {
            let rows = app.store.access_list(project.as_str()).await?;
            let mut out = format!("*Access to `{project}`*\n");
            if rows.is_empty() {
                out.push_str("The access list is empty.\n");
            }
            for r in &rows {
                let who = crate::access::Who::from_stored(&r.kind, &r.entry_id)
                    .map(|w| w.mention())
                    .unwrap_or_else(|| format!("`{}`", r.entry_id));
                out.push_str(&format!(
                    "• {who} ({}) — added by <@{}> {}\n",
                    r.kind,
                    r.added_by,
                    slack_date(r.added_at)
                ));
            }
            out.push_str(&rule_in_effect(app, project.as_str()).await?);
            out
        }
        AdminCommand::ProjectPersonas { project, personas } => match personas {
            None => {
                let stored = app.store.project_personas(project.as_str()).await?;
                format!(
                    "`{project}` takes {}.",
                    personas_words(crate::access::personas_of(stored.as_deref()).as_deref())
                )
            }
            Some(list) => {
                let stored = list
                    .as_ref()
                    .map(|ps| ps.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(","));
                app.store
                    .set_project_personas(project.as_str(), stored.as_deref())
                    .await?;
                app.store
                    .audit(
                        actor,
                        "project.personas",
                        project.as_str(),
                        stored.as_deref().unwrap_or("all"),
                    )
                    .await?;
                format!("`{project}` now takes {}.", personas_words(list.as_deref()))
            }
        },
        AdminCommand::ProjectApprovers { project, who } => {
            if who.is_empty() {
                let rows = app.store.approvers(project.as_str()).await?;
                let names: Vec<String> = rows
                    .iter()
                    .filter_map(|r| crate::access::Who::from_stored(&r.kind, &r.entry_id))
                    .map(|w| w.mention())
                    .collect();
                return Ok(if names.is_empty() {
                    format!(
                        "`{project}` has no approvers: its tasks' requests are answered by their requester or an admin. Set some with `/baton-admin project approvers {project} @someone @a-group`."
                    )
                } else {
                    format!(
                        "Approvers of `{project}` (besides the requester and admins): {}.",
                        names.join(", ")
                    )
                });
            }
            let pairs: Vec<(&str, &str)> = who.iter().map(|w| (w.kind(), w.id())).collect();
            app.store
                .set_approvers(project.as_str(), &pairs, actor)
                .await?;
            let names: Vec<String> = who.iter().map(|w| w.mention()).collect();
            app.store
                .audit(
                    actor,
                    "project.approvers",
                    project.as_str(),
                    &names.join(" "),
                )
                .await?;
            format!(
                "Approvers of `{project}` are now: {} (besides the requester and admins).",
                names.join(", ")
            )
        }
        AdminCommand::Audit(n) => {
            let rows = app.store.audit_log(n).await?;
            if rows.is_empty() {
                return Ok("The audit log is empty.".into());
            }
            let mut out = format!("*The latest {} audit entries*\n", rows.len());
            for r in rows {
                let who = match crate::access::Who::parse(&r.actor) {
                    Ok(w @ crate::access::Who::User(_)) => w.mention(),
                    _ => format!("`{}`", mrkdwn::escape(&r.actor)),
                };
                out.push_str(&format!(
                    "• {} {who} *{}* `{}`{}\n",
                    slack_date(r.at),
                    mrkdwn::escape(&r.action),
                    mrkdwn::escape(&r.target),
                    if r.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", mrkdwn::escape(&r.detail))
                    }
                ));
            }
            out
        }
        AdminCommand::Tasks(state) => {
            let tasks = app.store.newest_tasks(state, TASKS_LISTED).await?;
            if tasks.is_empty() {
                return Ok("No tasks.".into());
            }
            tasks
                .iter()
                .map(summary_line)
                .collect::<Vec<_>>()
                .join("\n")
        }
    })
}

/// The rule in effect for `project`, with its personas, in words.
async fn rule_in_effect(app: &App, project: &str) -> anyhow::Result<String> {
    let rows = app.store.access_list(project).await?;
    let list = crate::access::AccessList::from_rows(&rows);
    let personas = app.store.project_personas(project).await?;
    Ok(format!(
        "{} It takes {}.",
        list.describe(project, app.settings.default_access),
        personas_words(crate::access::personas_of(personas.as_deref()).as_deref())
    ))
}

/// A warning when no agent has served `project` yet (a typo would go unnoticed).
async fn unknown_project_warning(app: &App, project: &str) -> anyhow::Result<String> {
    let known = app.store.project_names().await?;
    if known.iter().any(|k| k == project) {
        return Ok(String::new());
    }
    Ok(format!(
        "\n:warning: No agent has served `{project}` yet; check the spelling. Known projects: {}.",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ))
}

/// "every persona" or "`code`, `review`".
fn personas_words(personas: Option<&[baton_shared::Persona]>) -> String {
    match personas {
        None => "every persona".into(),
        Some([]) => "no persona".into(),
        Some(list) => list
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A Unix-ms time as Slack shows dates in the reader's own time zone.
fn slack_date(ms: i64) -> String {
    let secs = ms / 1000;
    format!("<!date^{secs}^{{date_short}} {{time_secs}}|{secs}>")
}
