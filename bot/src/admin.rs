//! `/baton-admin`: health, agents and keys, projects, queues, tasks. Admins only;
//! every action is written to the audit log.

use std::sync::Arc;

use crate::app::App;
use crate::breaker::CircuitState;
use crate::commands::{self, AdminCommand};
use crate::model::TaskState;
use crate::replies;
use crate::slack::handlers::SlashCommand;
use crate::slack::mrkdwn;
use crate::store::{Ending, Task};

/// Tasks listed by `tasks`.
const TASKS_LISTED: u64 = 20;

/// One line about a task.
pub fn task_line(t: &Task) -> String {
    let agent = t
        .agent
        .as_deref()
        .map(|a| format!(" on `{a}`"))
        .unwrap_or_default();
    format!(
        "• *#{}* {} · {} · `{}`{} — {}",
        t.id,
        t.state,
        t.persona,
        mrkdwn::escape(&t.project),
        mrkdwn::escape(&agent),
        mrkdwn::escape(&mrkdwn::truncate_chars(
            t.prompt.lines().next().unwrap_or(""),
            80,
            "…"
        ))
    )
}

/// Handles one admin command; returns the ephemeral reply.
pub async fn handle(app: &Arc<App>, cmd: &SlashCommand) -> String {
    if !app.has_admins() {
        return replies::admins_not_configured();
    }
    if !app.is_admin(&cmd.user_id) {
        tracing::warn!(user = %cmd.user_id, "admin command refused");
        return replies::not_an_admin();
    }
    let parsed = match commands::parse_admin(&cmd.text) {
        Ok(c) => c,
        Err(e) => return e.0,
    };
    match run(app, cmd, parsed).await {
        Ok(text) => text,
        Err(err) => {
            tracing::error!(error = ?err, "admin command failed");
            replies::internal_error()
        }
    }
}

async fn run(app: &Arc<App>, cmd: &SlashCommand, parsed: AdminCommand) -> anyhow::Result<String> {
    let actor = cmd.user_id.as_str();
    Ok(match parsed {
        AdminCommand::Help => commands::admin_help(),
        AdminCommand::Health => {
            let agents = app.hub.snapshot();
            let known = app.store.agents().await?;
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
                        out.push_str(&format!(
                            "• *{}*{}: {} · {} · {}/{} running · {} queued · last seen {}\n",
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
            if app.hub.reset_breaker(name.as_str()) {
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
            let mut out = String::from("*Agents*\n");
            for r in rows {
                let state = if r.revoked_at.is_some() {
                    "revoked"
                } else if app.hub.is_connected(&r.name) {
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
        AdminCommand::AgentAdd(name) => {
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
            app.store
                .audit(actor, "agent.add", name.as_str(), "")
                .await?;
            format!(
                "Agent `{name}` added. Its key, shown this once — put it in the agent's config (`key = \"...\"`) or `BATON_AGENT_KEY`:\n```{key}```"
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
                format!("Agent `{name}` is revoked and disconnected; its key no longer works.")
            } else {
                format!("There is no live agent `{name}`. `/baton-admin agents` lists them.")
            }
        }
        AdminCommand::ProjectBind { project, channel } => {
            let channel = channel.unwrap_or_else(|| cmd.channel_id.clone());
            let known = app.store.project_names().await?;
            app.bind_project(project.as_str(), &channel).await?;
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
        AdminCommand::Tasks(state) => {
            let tasks = match state {
                Some(s) => {
                    let mut t = app.store.tasks_in(&[s], u64::MAX).await?;
                    t.reverse();
                    t.truncate(TASKS_LISTED as usize);
                    t
                }
                None => app.store.recent_tasks(TASKS_LISTED).await?,
            };
            if tasks.is_empty() {
                return Ok("No tasks.".into());
            }
            tasks.iter().map(task_line).collect::<Vec<_>>().join("\n")
        }
    })
}
