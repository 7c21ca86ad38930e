//! The app's Home tab: a person's recent tasks (with links to their messages)
//! and the projects they may use; for admins, the agents' health and the
//! queues too. Rendered when the person opens it (`app_home_opened` →
//! `views.publish`).

use std::sync::Arc;

use futures::future::join_all;
use slack_morphism::prelude::SlackBlock;

use crate::app::App;
use crate::breaker::CircuitState;
use crate::hub::AgentStatus;
use crate::slack::mrkdwn;
use crate::slack::render::{context, format_elapsed, section};
use crate::store::TaskSummary;

/// Tasks the Home tab lists.
pub const HOME_TASKS: u64 = 10;
/// Agents the Home tab lists for admins; the rest are counted.
pub const HOME_AGENTS: usize = 20;
/// Characters of a task's prompt shown on its line.
const PROMPT_SHOWN: usize = 80;

/// Renders `user`'s Home tab and publishes it. Failures are logged: the tab
/// then shows what it showed before.
pub async fn publish(app: &Arc<App>, user: &str, team: &str) {
    match render_for(app, user, team).await {
        Ok(blocks) => {
            if let Err(err) = app.slack.publish_home(user, blocks).await {
                tracing::warn!(user, error = %err, "cannot publish the Home tab");
            }
        }
        Err(err) => tracing::error!(user, error = ?err, "cannot render the Home tab"),
    }
}

/// What `user`'s Home tab shows now.
pub async fn render_for(app: &Arc<App>, user: &str, team: &str) -> anyhow::Result<Vec<SlackBlock>> {
    let tasks = app.store.tasks_of(user, HOME_TASKS).await?;
    // Links are a nicety: a task whose link Slack does not give is listed without one.
    let links = join_all(tasks.iter().map(|t| async move {
        let ts = t.message_ts.as_deref()?;
        app.slack.permalink(&t.channel_id, ts).await.ok()
    }))
    .await;
    let projects = app.usable_projects(user, team).await?;
    let now = app.clock.now_ms();

    let mut blocks = vec![section(
        "*Baton* runs coding agents on your team's machines. Start a task with `/baton PROMPT`, or write to me here; `/baton help` lists the commands.".to_owned(),
    )];
    blocks.push(section(tasks_text(&tasks, &links, now)));
    blocks.push(section(projects_text(user, &projects)));
    if app.is_admin(user) {
        blocks.push(section(agents_text(&app.hub.snapshot())));
        let queues = app.store.queue_depths().await?;
        blocks.push(section(queues_text(&queues)));
    }
    blocks.push(context(
        "Shown as it was when you opened this tab; open it again to refresh.".to_owned(),
    ));
    Ok(blocks)
}

/// The person's recent tasks, one line each.
fn tasks_text(tasks: &[TaskSummary], links: &[Option<String>], now_ms: i64) -> String {
    let mut out = String::from("*Your recent tasks*\n");
    if tasks.is_empty() {
        out.push_str("None yet. Start one with `/baton PROMPT`.");
        return out;
    }
    for (t, link) in tasks.iter().zip(links) {
        let id = match link {
            Some(url) => format!("<{url}|#{}>", t.id),
            None => format!("#{}", t.id),
        };
        out.push_str(&format!(
            "• *{id}* {} · `{}` · {} ago — {}\n",
            t.state,
            mrkdwn::escape(&t.project.replace('`', "")),
            format_elapsed((now_ms - t.created_at).max(0)),
            mrkdwn::escape(&mrkdwn::truncate_chars(
                t.prompt.lines().next().unwrap_or(""),
                PROMPT_SHOWN,
                "…"
            ))
        ));
    }
    out
}

/// The projects the person may use, with the channels they take tasks from.
fn projects_text(user: &str, projects: &[(String, Vec<String>)]) -> String {
    let mut out = String::from("*Projects you may use*\n");
    if projects.is_empty() {
        out.push_str(&format!(
            "None yet. An admin can let you in: `/baton-admin project allow PROJECT <@{user}>`."
        ));
        return out;
    }
    for (name, channels) in projects {
        out.push_str(&format!("• `{}`", name.replace('`', "")));
        if !channels.is_empty() {
            let list: Vec<String> = channels.iter().map(|c| format!("<#{c}>")).collect();
            out.push_str(&format!(" — from {}", list.join(", ")));
        }
        out.push('\n');
    }
    out
}

/// Every agent's connection, circuit and load (admins only).
fn agents_text(agents: &[AgentStatus]) -> String {
    let mut out = String::from("*Agents*\n");
    if agents.is_empty() {
        out.push_str(
            "None connected since the bot started. `/baton-admin agent add NAME` makes a key.",
        );
        return out;
    }
    for a in agents.iter().take(HOME_AGENTS) {
        let circuit = match a.breaker.state {
            CircuitState::Closed => "circuit closed",
            CircuitState::Open => "circuit *open*",
            CircuitState::HalfOpen => "circuit half-open",
        };
        out.push_str(&format!(
            "• *{}*: {} · {circuit} · {}/{} running\n",
            mrkdwn::escape(&a.name),
            if a.connected {
                if a.draining { "draining" } else { "connected" }
            } else {
                "disconnected"
            },
            a.running,
            a.capacity
        ));
    }
    if agents.len() > HOME_AGENTS {
        out.push_str(&format!(
            "+{} more: `/baton-admin health` lists them all.\n",
            agents.len() - HOME_AGENTS
        ));
    }
    out
}

/// The queues' depths (admins only).
fn queues_text(queues: &[(String, i64)]) -> String {
    let mut out = String::from("*Queues*\n");
    if queues.is_empty() {
        out.push_str("Every queue is empty.");
    }
    for (project, n) in queues {
        out.push_str(&format!("• `{}`: {n} waiting\n", project.replace('`', "")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: i64, ts: Option<&str>) -> TaskSummary {
        TaskSummary {
            id,
            state: "running".into(),
            persona: "code".into(),
            project: "web".into(),
            agent: None,
            prompt: "fix the *login*\nmore".into(),
            channel_id: "C1".into(),
            message_ts: ts.map(str::to_owned),
            created_at: 0,
        }
    }

    #[test]
    fn a_task_line_links_its_message_when_slack_gave_a_link() {
        let text = tasks_text(
            &[summary(1, Some("1.2")), summary(2, None)],
            &[Some("https://x.slack.com/archives/C1/p12".into()), None],
            125_000,
        );
        assert!(
            text.contains(
                "• *<https://x.slack.com/archives/C1/p12|#1>* running · `web` · 2m 5s ago"
            ),
            "{text}"
        );
        assert!(text.contains("• *#2* running"), "{text}");
        assert!(!text.contains("more"), "only the first line: {text}");
    }

    #[test]
    fn no_projects_says_how_to_get_one() {
        let text = projects_text("U1", &[]);
        assert!(
            text.contains("/baton-admin project allow PROJECT <@U1>"),
            "{text}"
        );
        let text = projects_text("U1", &[("web".into(), vec!["C9".into()])]);
        assert!(text.contains("• `web` — from <#C9>"), "{text}");
    }
}
