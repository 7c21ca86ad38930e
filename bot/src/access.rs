//! Who may do what: the rule that decides whether a person may start a task
//! in a project from a channel, who may see and act on a task, and the Slack
//! facts behind them (guests, other organizations, user groups, channel
//! members), cached for [`SLACK_CACHE_TTL`]. Every rule fails closed: when
//! Slack cannot answer, the request is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use baton_shared::{Persona, TaskId};
use tokio::time::Instant;

use crate::app::{App, RequestError, TaskRequest};
use crate::replies;
use crate::settings::DefaultAccess;
use crate::slack::api::{SlackApi, SlackCallError, UserInfo};
use crate::store::{AccessRow, ProjectRules, Task};
use crate::sync::lock;

/// How long what Slack said about a person, a user group or a channel's
/// members is believed.
pub const SLACK_CACHE_TTL: Duration = Duration::from_secs(10 * 60);
/// Entries one cache keeps; past it, expired entries are dropped, then the
/// whole cache if that is not enough (it refills from Slack).
pub const CACHE_MAX_ENTRIES: usize = 10_000;

/// Someone or somewhere an access list (or an approvers list) names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Who {
    /// A Slack user (`U…` or `W…`).
    User(String),
    /// A Slack user group (`S…`).
    Group(String),
    /// A channel (`C…`, `G…`, `D…`).
    Channel(String),
}

/// Whether `id` looks like a Slack id: upper-case letters and digits.
fn slack_id(id: &str) -> bool {
    (2..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl Who {
    /// Reads a word as Slack escapes it: `<@U123>`, `<@U123|name>`,
    /// `<!subteam^S123|@name>`, `<#C123|name>`, or a bare id (`U123`,
    /// `S123`, `C123`). Err says what it expected.
    pub fn parse(word: &str) -> Result<Who, String> {
        let inner = word.strip_prefix('<').and_then(|w| w.strip_suffix('>'));
        let parsed = match inner {
            Some(inner) => {
                let id = |s: &str| s.split('|').next().unwrap_or("").to_owned();
                if let Some(rest) = inner.strip_prefix('@') {
                    Some(Who::User(id(rest)))
                } else if let Some(rest) = inner.strip_prefix("!subteam^") {
                    Some(Who::Group(id(rest)))
                } else {
                    inner.strip_prefix('#').map(|rest| Who::Channel(id(rest)))
                }
            }
            None => match word.as_bytes().first() {
                Some(b'U' | b'W') => Some(Who::User(word.to_owned())),
                Some(b'S') => Some(Who::Group(word.to_owned())),
                Some(b'C' | b'G' | b'D') => Some(Who::Channel(word.to_owned())),
                _ => None,
            },
        };
        match parsed {
            Some(who) if slack_id(who.id()) => Ok(who),
            _ => Err(format!(
                "`{word}` is not a person, user group or channel I can read. Mention them so Slack links them (`@someone`, `@a-group`, `#a-channel`), or give their id (`U0123`, `S0123`, `C0123`)."
            )),
        }
    }

    /// How it is stored: `user`, `group` or `channel`.
    pub fn kind(&self) -> &'static str {
        match self {
            Who::User(_) => "user",
            Who::Group(_) => "group",
            Who::Channel(_) => "channel",
        }
    }

    /// Its Slack id.
    pub fn id(&self) -> &str {
        match self {
            Who::User(id) | Who::Group(id) | Who::Channel(id) => id,
        }
    }

    /// Back from a stored kind and id.
    pub fn from_stored(kind: &str, id: &str) -> Option<Who> {
        let id = id.to_owned();
        match kind {
            "user" => Some(Who::User(id)),
            "group" => Some(Who::Group(id)),
            "channel" => Some(Who::Channel(id)),
            _ => None,
        }
    }

    /// How Slack shows it in a message.
    pub fn mention(&self) -> String {
        match self {
            Who::User(id) => format!("<@{id}>"),
            Who::Group(id) => format!("<!subteam^{id}>"),
            Who::Channel(id) => format!("<#{id}>"),
        }
    }
}

/// A project's access list, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    /// People named by id.
    pub users: Vec<String>,
    /// User groups.
    pub groups: Vec<String>,
    /// Channels.
    pub channels: Vec<String>,
}

impl AccessList {
    /// The list from its rows.
    pub fn from_rows(rows: &[AccessRow]) -> Self {
        let mut list = AccessList::default();
        for r in rows {
            match Who::from_stored(&r.kind, &r.entry_id) {
                Some(Who::User(id)) => list.users.push(id),
                Some(Who::Group(id)) => list.groups.push(id),
                Some(Who::Channel(id)) => list.channels.push(id),
                None => tracing::warn!(kind = %r.kind, "unknown access list entry kind ignored"),
            }
        }
        list
    }

    /// Whether it names nothing at all (then `BATON_DEFAULT_ACCESS` decides).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.channels.is_empty()
    }

    /// Whether it names no person (no user, no group): anyone may, as far as people go.
    pub fn names_no_person(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// The rule in effect, in words.
    pub fn describe(&self, project: &str, default: DefaultAccess) -> String {
        if self.is_empty() {
            return match default {
                DefaultAccess::Members => format!(
                    "`{project}` has no access list, so every full member of the workspace may start tasks in it from any channel (guests and people of other organizations may not). `BATON_DEFAULT_ACCESS=members`."
                ),
                DefaultAccess::Admins => format!(
                    "`{project}` has no access list, so only admins may start tasks in it (`BATON_DEFAULT_ACCESS=admins`)."
                ),
            };
        }
        let people = if self.names_no_person() {
            "every full member of the workspace".to_owned()
        } else {
            let mut named: Vec<String> = self.users.iter().map(|u| format!("<@{u}>")).collect();
            named.extend(
                self.groups
                    .iter()
                    .map(|g| format!("members of <!subteam^{g}>")),
            );
            named.join(", ")
        };
        let channels = if self.channels.is_empty() {
            "from any channel".to_owned()
        } else {
            let c: Vec<String> = self.channels.iter().map(|c| format!("<#{c}>")).collect();
            format!("only from {}", c.join(", "))
        };
        format!(
            "In `{project}`, {people} may start tasks, {channels}. Admins always may. Guests and people of other organizations need to be named by id."
        )
    }
}

/// The personas a project takes, from its stored form (None: all).
pub fn personas_of(stored: Option<&str>) -> Option<Vec<Persona>> {
    let stored = stored?;
    Some(
        stored
            .split(',')
            .filter_map(|p| p.trim().parse::<Persona>().ok())
            .collect(),
    )
}

/// Why a person may not start a task; each says what would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The project does not take this persona.
    Persona {
        /// The personas it takes.
        allowed: Vec<Persona>,
    },
    /// A guest, or a person of another organization, not named by id.
    Outsider,
    /// The list names people, and not this one (nor a group of theirs).
    NotListed,
    /// The list names channels, and not this one.
    Channel,
    /// The list is empty and `BATON_DEFAULT_ACCESS=admins`.
    AdminsOnly,
    /// Slack could not say who the person is (fail closed).
    SlackUnavailable,
}

impl Refusal {
    /// The audit log's word for it.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Persona { .. } => "persona",
            Refusal::Outsider => "guest_or_outsider",
            Refusal::NotListed => "not_listed",
            Refusal::Channel => "channel_not_listed",
            Refusal::AdminsOnly => "admins_only",
            Refusal::SlackUnavailable => "slack_unavailable",
        }
    }
}

/// A small map whose entries are believed for [`SLACK_CACHE_TTL`].
#[derive(Debug)]
struct Cache<T> {
    /// Key → when it was learned, and what.
    map: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T: Clone> Cache<T> {
    fn new() -> Self {
        Cache {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &str) -> Option<T> {
        let map = lock(&self.map);
        let (at, value) = map.get(key)?;
        (at.elapsed() < SLACK_CACHE_TTL).then(|| value.clone())
    }

    fn put(&self, key: &str, value: T) {
        let mut map = lock(&self.map);
        if map.len() >= CACHE_MAX_ENTRIES {
            map.retain(|_, (at, _)| at.elapsed() < SLACK_CACHE_TTL);
            if map.len() >= CACHE_MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key.to_owned(), (Instant::now(), value));
    }
}

/// What Baton knows of people, user groups and channels from Slack, cached.
/// A failed call is not cached: the next request asks again.
#[derive(Debug)]
pub struct Directory {
    /// `users.info`, by user id.
    users: Cache<UserInfo>,
    /// `usergroups.users.list`, by group id.
    groups: Cache<Vec<String>>,
    /// `conversations.members`, by channel id.
    channels: Cache<Vec<String>>,
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            users: Cache::new(),
            groups: Cache::new(),
            channels: Cache::new(),
        }
    }
}

impl Directory {
    /// What `users.info` says of `user`.
    pub async fn person(&self, slack: &SlackApi, user: &str) -> Result<UserInfo, SlackCallError> {
        if let Some(known) = self.users.get(user) {
            return Ok(known);
        }
        let info = slack.user_info(user).await?;
        self.users.put(user, info.clone());
        Ok(info)
    }

    /// Whether `user` is in user group `group`.
    pub async fn in_group(
        &self,
        slack: &SlackApi,
        group: &str,
        user: &str,
    ) -> Result<bool, SlackCallError> {
        let members = match self.groups.get(group) {
            Some(m) => m,
            None => {
                let m = slack.usergroup_members(group).await?;
                self.groups.put(group, m.clone());
                m
            }
        };
        Ok(members.iter().any(|m| m == user))
    }

    /// Whether `user` is a member of `channel`.
    pub async fn in_channel(
        &self,
        slack: &SlackApi,
        channel: &str,
        user: &str,
    ) -> Result<bool, SlackCallError> {
        let members = match self.channels.get(channel) {
            Some(m) => m,
            None => {
                let m = slack.conversation_members(channel).await?;
                self.channels.put(channel, m.clone());
                m
            }
        };
        Ok(members.iter().any(|m| m == user))
    }
}

/// Whether what Slack says of a person makes them a guest or an outsider
/// for a request made in workspace `team` (an empty `team`: not known, so
/// only the guest flags count).
pub fn is_outsider(person: &UserInfo, team: &str) -> bool {
    if person.is_restricted || person.is_ultra_restricted {
        return true;
    }
    if team.is_empty() {
        return false;
    }
    let home = person.team_id.as_deref() == Some(team);
    let grid = person
        .enterprise_user
        .as_ref()
        .is_some_and(|e| e.teams.iter().any(|t| t == team));
    !(home || grid)
}

impl App {
    /// The one check every new task goes through (slash command, mention,
    /// thread follow-up, Retry, `--project`): may `req`'s requester start a
    /// task in `project` from `req`'s channel? A refusal is audited and says
    /// what would allow it. What was read of the project to decide (its
    /// queue's state among it: see [`ProjectRules::queue_waiting`]).
    pub(crate) async fn check_start(
        &self,
        req: &TaskRequest,
        project: &str,
    ) -> Result<ProjectRules, RequestError> {
        let rules = self.store.project_rules(project).await?;
        let Some(refusal) = self.why_refused(req, &rules).await? else {
            return Ok(rules);
        };
        tracing::info!(
            user = %req.requester,
            project,
            channel = %req.channel_id,
            reason = refusal.code(),
            "task refused by access control"
        );
        let detail = format!("{} in {}", refusal.code(), req.channel_id);
        if let Err(err) = self
            .store
            .audit(&req.requester, "refused.task", project, &detail)
            .await
        {
            tracing::error!(error = ?err, "cannot audit a refusal");
        }
        Err(RequestError::User(replies::task_refused(
            &refusal,
            project,
            &req.requester,
            &req.channel_id,
            req.persona,
        )))
    }

    /// Why `req` may not start a task in the project of `rules`, or None when it may.
    async fn why_refused(
        &self,
        req: &TaskRequest,
        rules: &ProjectRules,
    ) -> anyhow::Result<Option<Refusal>> {
        let user = req.requester.as_str();
        // Personas are the project's own shape: they bind admins too.
        if let Some(allowed) = personas_of(rules.personas.as_deref())
            && !allowed.contains(&req.persona)
        {
            return Ok(Some(Refusal::Persona { allowed }));
        }
        if self.is_admin(user) {
            return Ok(None);
        }
        let list = AccessList::from_rows(&rules.access);
        if !list.channels.is_empty() && !list.channels.contains(&req.channel_id) {
            return Ok(Some(Refusal::Channel));
        }
        self.person_refused(user, &req.team_id, &list).await
    }

    /// The people part of the rule: why `user` (of workspace `team`) is not
    /// one of those `list` lets in, or None when they are. Admins are let in
    /// by the caller.
    async fn person_refused(
        &self,
        user: &str,
        team: &str,
        list: &AccessList,
    ) -> anyhow::Result<Option<Refusal>> {
        if list.users.iter().any(|u| u == user) {
            return Ok(None);
        }
        match self.directory.person(&self.slack, user).await {
            Ok(person) if is_outsider(&person, team) => return Ok(Some(Refusal::Outsider)),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(user, error = %err, "cannot learn who the person is from Slack");
                return Ok(Some(Refusal::SlackUnavailable));
            }
        }
        if list.is_empty() {
            return Ok(match self.settings.default_access {
                DefaultAccess::Members => None,
                DefaultAccess::Admins => Some(Refusal::AdminsOnly),
            });
        }
        if list.names_no_person() {
            return Ok(None);
        }
        let mut unanswered = false;
        for group in &list.groups {
            match self.directory.in_group(&self.slack, group, user).await {
                Ok(true) => return Ok(None),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(group, error = %err, "cannot read a user group from Slack");
                    unanswered = true;
                }
            }
        }
        Ok(Some(if unanswered {
            Refusal::SlackUnavailable
        } else {
            Refusal::NotListed
        }))
    }

    /// The projects `user` (of workspace `team`) may start tasks in, each
    /// with the channels it takes them from (empty: any channel), by name.
    pub async fn usable_projects(
        &self,
        user: &str,
        team: &str,
    ) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let mut usable = Vec::new();
        for project in self.store.project_names().await? {
            let list = AccessList::from_rows(&self.store.access_list(&project).await?);
            if self.is_admin(user) || self.person_refused(user, team, &list).await?.is_none() {
                usable.push((project, list.channels.clone()));
            }
        }
        Ok(usable)
    }

    /// Whether `user` may see `task`: its requester, an admin, or a member
    /// of the channel it was started in (asked of Slack, cached; refused
    /// when Slack cannot answer).
    pub async fn may_see(&self, task: &Task, user: &str) -> bool {
        if task.requester == user || self.is_admin(user) {
            return true;
        }
        match self
            .directory
            .in_channel(&self.slack, &task.channel_id, user)
            .await
        {
            Ok(member) => member,
            Err(err) => {
                tracing::warn!(channel = %task.channel_id, error = %err, "cannot read a channel's members from Slack");
                false
            }
        }
    }

    /// Whether `user` may cancel, retry or continue `task`: its requester or an admin.
    pub fn may_act(&self, task: &Task, user: &str) -> bool {
        task.requester == user || self.is_admin(user)
    }

    /// The task `id` as `user` may know it: the task when they may see it,
    /// else the same "no such task" as for a task that does not exist (the
    /// attempt is audited). `verb` names what they tried, for the audit log.
    pub async fn visible_task(
        &self,
        id: TaskId,
        user: &str,
        verb: &str,
    ) -> Result<Task, RequestError> {
        let task = self.store.task(id.0).await?;
        match task {
            Some(task) if self.may_see(&task, user).await => Ok(task),
            Some(task) => {
                if let Err(err) = self
                    .store
                    .audit(
                        user,
                        &format!("refused.{verb}"),
                        &format!("#{}", task.id),
                        "not visible",
                    )
                    .await
                {
                    tracing::error!(error = ?err, "cannot audit a refusal");
                }
                Err(RequestError::User(replies::no_such_task(id)))
            }
            None => Err(RequestError::User(replies::no_such_task(id))),
        }
    }

    /// The task `id` if `user` may cancel, retry or continue it. Someone who
    /// may see it is told whose it is; anyone else learns nothing (as for a
    /// task that does not exist). Refusals are audited.
    pub async fn actionable_task(
        &self,
        id: TaskId,
        user: &str,
        verb: &str,
    ) -> Result<Task, RequestError> {
        let task = self.visible_task(id, user, verb).await?;
        if self.may_act(&task, user) {
            return Ok(task);
        }
        if let Err(err) = self
            .store
            .audit(
                user,
                &format!("refused.{verb}"),
                &format!("#{}", task.id),
                "not the requester",
            )
            .await
        {
            tracing::error!(error = ?err, "cannot audit a refusal");
        }
        Err(RequestError::User(replies::not_yours(id, verb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_reads_slack_escapes_and_bare_ids() {
        assert_eq!(Who::parse("<@U123>"), Ok(Who::User("U123".into())));
        assert_eq!(Who::parse("<@U123|ann>"), Ok(Who::User("U123".into())));
        assert_eq!(Who::parse("W0ABC"), Ok(Who::User("W0ABC".into())));
        assert_eq!(
            Who::parse("<!subteam^S42|@devs>"),
            Ok(Who::Group("S42".into()))
        );
        assert_eq!(Who::parse("<!subteam^S42>"), Ok(Who::Group("S42".into())));
        assert_eq!(Who::parse("<#C9|dev>"), Ok(Who::Channel("C9".into())));
        assert_eq!(Who::parse("C9"), Ok(Who::Channel("C9".into())));
        for bad in [
            "@ann",
            "#dev",
            "<@>",
            "<!here>",
            "u123",
            "<@U1 x>",
            "<#c9|dev>",
        ] {
            let err = Who::parse(bad).expect_err(bad);
            assert!(err.contains("Mention them"), "{err}");
        }
        let who = Who::parse("<!subteam^S42|@devs>").expect("group");
        assert_eq!(Who::from_stored(who.kind(), who.id()), Some(who.clone()));
        assert_eq!(who.mention(), "<!subteam^S42>");
    }

    #[test]
    fn guests_and_other_organizations_are_outsiders() {
        let member = UserInfo {
            team_id: Some("T1".into()),
            ..UserInfo::default()
        };
        assert!(!is_outsider(&member, "T1"));
        assert!(is_outsider(&member, "T2"), "another organization");
        let guest = UserInfo {
            is_restricted: true,
            ..member.clone()
        };
        assert!(is_outsider(&guest, "T1"));
        let single = UserInfo {
            is_ultra_restricted: true,
            ..member.clone()
        };
        assert!(is_outsider(&single, "T1"));
        let grid = UserInfo {
            team_id: Some("T9".into()),
            enterprise_user: Some(crate::slack::api::EnterpriseUser {
                teams: vec!["T1".into()],
            }),
            ..UserInfo::default()
        };
        assert!(!is_outsider(&grid, "T1"), "a Grid member of this workspace");
    }

    #[test]
    fn the_rule_in_words() {
        let empty = AccessList::default();
        assert!(
            empty
                .describe("web", DefaultAccess::Members)
                .contains("every full member")
        );
        assert!(
            empty
                .describe("web", DefaultAccess::Admins)
                .contains("only admins")
        );
        let list = AccessList {
            users: vec!["U1".into()],
            groups: vec!["S1".into()],
            channels: vec!["C1".into()],
        };
        let words = list.describe("web", DefaultAccess::Members);
        assert!(
            words.contains("<@U1>")
                && words.contains("members of <!subteam^S1>")
                && words.contains("only from <#C1>"),
            "{words}"
        );
        assert_eq!(
            personas_of(Some("code, review,bogus")),
            Some(vec![Persona::Code, Persona::Review])
        );
        assert_eq!(personas_of(None), None);
    }
}
