//! Tells a task's requester that it ended (`BATON_NOTIFY`): an edit of the
//! task's message notifies nobody, so a reply mentions them in the task's
//! thread (`thread`), or the bot writes to them (`dm`), once per task.
//!
//! Driven by the database alone: every [`NOTIFY_INTERVAL`] a pass reads a
//! bounded batch of ended tasks not yet notified, claims each with a guarded
//! `UPDATE`, posts, then settles it. A claim whose holder is gone (a crash
//! between the post and the settlement, or an unanswered post) is taken over
//! only after Slack was asked whether the notification is there: it carries a
//! block whose id is [`marker`], so it is never posted twice.

use std::future::Future;
use std::time::Duration;

use baton_shared::TaskId;
use slack_morphism::prelude::*;

use crate::model::{TaskState, now_ms};
use crate::replies;
use crate::settings::NotifyMode;
use crate::slack::api::{CALL_TIMEOUT, ChatApi, MessageBody, SlackCallError};
use crate::store::Store;
use crate::store::notifications::{CLAIM_UNKNOWN, PendingNotice};

/// How often the database is looked at for tasks that ended.
pub const NOTIFY_INTERVAL: Duration = Duration::from_secs(1);
/// Most tasks one pass notifies.
pub const NOTIFY_BATCH: u64 = 20;
/// How long a claim protects a notification being posted; past it, the claim's
/// holder is taken for gone. Longer than a post may take ([`CALL_TIMEOUT`]).
pub const NOTIFY_LEASE: Duration = Duration::from_secs(2 * CALL_TIMEOUT.as_secs() + 30);
/// How long the notifier pauses after Slack could not be reached (a 429 says
/// how long itself).
pub const NOTIFY_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// How far before its claim a direct message is looked for in the
/// conversation's history (clocks of Slack and the bot differ a little).
const DM_LOOKBACK_SECS: i64 = 300;

/// The block id a notification carries, by which Slack shows whether it was posted.
pub fn marker(task: i64) -> String {
    format!("baton-notify-{task}")
}

/// The time (Unix ms) before which a notification's claim is taken for its
/// holder's that is gone: older than [`NOTIFY_LEASE`], or older than the start
/// of every live process (`oldest_live_start`). A claim is made by a live
/// process after it started, so one older than all of them was made by a
/// process that is gone: with SQLite, any earlier process's (this is the only
/// one); with PostgreSQL, a process whose lease lapsed. A process whose lease
/// lapsed while it still runs may be posting: the taker looks in Slack first.
fn stale_before(now: i64, lease: i64, oldest_live_start: i64) -> i64 {
    (now - lease).max(oldest_live_start)
}

/// Runs notification passes every [`NOTIFY_INTERVAL`] until `shutdown`.
pub async fn run<A: ChatApi>(
    store: Store,
    slack: A,
    mode: NotifyMode,
    shutdown: impl Future<Output = ()>,
) {
    let mut notifier = Notifier {
        store,
        slack,
        mode,
        started_at: now_ms(),
        failures: 0,
    };
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(NOTIFY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let pause = match notifier.pass().await {
            Ok(pause) => pause,
            Err(err) => {
                tracing::warn!(error = ?err, "notification pass failed");
                Some(NOTIFY_RETRY_PAUSE)
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The notifier's state between passes.
struct Notifier<A> {
    /// The database: which tasks ended, and the claims.
    store: Store,
    /// Slack, to post and to look for posted notifications.
    slack: A,
    /// `BATON_NOTIFY`.
    mode: NotifyMode,
    /// Unix ms when this process started notifying: a claim older than this
    /// and than every live process's start belongs to a process that is
    /// gone (see [`stale_before`]).
    started_at: i64,
    /// Notifications Slack did not take so far, for the logs.
    failures: u64,
}

/// What became of one notification.
enum Outcome {
    /// Settled: posted, found, or given up.
    Done,
    /// Slack must not be called for a while; the pass stops.
    Pause(Duration),
}

impl<A: ChatApi> Notifier<A> {
    /// One pass; how long to pause after it, when Slack asked for a pause.
    async fn pass(&mut self) -> anyhow::Result<Option<Duration>> {
        if self.mode == NotifyMode::Off {
            let skipped = self.store.skip_notices(NOTIFY_BATCH).await?;
            if skipped > 0 {
                tracing::debug!(skipped, "BATON_NOTIFY=off: nobody told");
            }
            return Ok(None);
        }
        let now = now_ms();
        let lease = i64::try_from(NOTIFY_LEASE.as_millis()).unwrap_or(i64::MAX);
        let oldest = self
            .store
            .oldest_live_start(now)
            .await?
            .map_or(self.started_at, |t| t.min(self.started_at));
        let stale_before = stale_before(now, lease, oldest);
        for notice in self
            .store
            .pending_notices(stale_before, NOTIFY_BATCH)
            .await?
        {
            let claim = now_ms();
            if !self
                .store
                .claim_notice(notice.id, notice.notified_at, claim)
                .await?
            {
                continue; // Another pass got it.
            }
            if let Outcome::Pause(pause) = self.notify(&notice, claim).await? {
                return Ok(Some(pause));
            }
        }
        Ok(None)
    }

    /// Posts one claimed notification (after looking for it in Slack when an
    /// earlier claim may have posted it) and settles it.
    async fn notify(&mut self, notice: &PendingNotice, claim: i64) -> anyhow::Result<Outcome> {
        let Some(message_ts) = notice.message_ts.as_deref() else {
            self.store.notice_done(notice.id).await?;
            return Ok(Outcome::Done);
        };
        let state: TaskState = notice
            .state
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let id = TaskId(notice.id);
        let reason = notice.error.as_deref();
        let (channel, thread, text) = match self.mode {
            NotifyMode::Dm => (
                notice.requester.as_str(),
                None,
                replies::task_ended_dm(id, &notice.channel_id, state, reason),
            ),
            _ => (
                notice.channel_id.as_str(),
                Some(notice.thread_ts.as_deref().unwrap_or(message_ts)),
                replies::task_ended_in_thread(&notice.requester, id, state, reason),
            ),
        };
        let marker = marker(notice.id);
        if let Some(earlier) = notice.notified_at {
            let found = match thread {
                Some(root) => self
                    .slack
                    .thread_block_ids(channel, root)
                    .await
                    .map(|ids| ids.contains(&marker)),
                None => {
                    let oldest = earlier_secs(earlier).to_string();
                    self.slack
                        .find_message(channel, None, &oldest, &marker)
                        .await
                        .map(|ts| ts.is_some())
                }
            };
            match found {
                Ok(true) => {
                    tracing::info!(
                        task = notice.id,
                        "notification was posted before; not again"
                    );
                    self.store.notice_done(notice.id).await?;
                    return Ok(Outcome::Done);
                }
                Ok(false) => {}
                Err(err) => return self.failed(notice, claim, err, true).await,
            }
        }
        let body = MessageBody {
            text: text.clone(),
            blocks: vec![
                SlackSectionBlock::new()
                    .with_text(md!(text))
                    .with_block_id(marker.into())
                    .into(),
            ],
        };
        match self.slack.post_message(channel, thread, &body).await {
            Ok(_) => {
                self.store.notice_done(notice.id).await?;
                Ok(Outcome::Done)
            }
            Err(err) => self.failed(notice, claim, err, false).await,
        }
    }

    /// Slack refused or did not answer (a look-up when `looking`, else the post).
    async fn failed(
        &mut self,
        notice: &PendingNotice,
        claim: i64,
        err: SlackCallError,
        looking: bool,
    ) -> anyhow::Result<Outcome> {
        self.failures += 1;
        let failures = self.failures;
        match err {
            SlackCallError::RateLimited { retry_after } => {
                // Slack took nothing: the claim goes back as it was.
                let back = if looking { Some(CLAIM_UNKNOWN) } else { None };
                self.store.release_notice(notice.id, claim, back).await?;
                tracing::warn!(
                    task = notice.id,
                    ?retry_after,
                    failures,
                    "notification rate limited by Slack"
                );
                Ok(Outcome::Pause(retry_after))
            }
            err if err.is_retryable() => {
                // It may have been posted: the next try looks first.
                self.store
                    .release_notice(notice.id, claim, Some(CLAIM_UNKNOWN))
                    .await?;
                tracing::warn!(task = notice.id, error = %err, failures, "notification not confirmed by Slack; will look for it and try again");
                Ok(Outcome::Pause(NOTIFY_RETRY_PAUSE))
            }
            err => {
                // Refused for good (channel gone, user gone, thread deleted):
                // trying again would fail the same way.
                tracing::warn!(task = notice.id, requester = %notice.requester, error = %err, failures, "Slack refuses the notification; giving up on it");
                self.store.notice_done(notice.id).await?;
                Ok(Outcome::Done)
            }
        }
    }
}

/// Unix seconds a little before claim `at` (Unix ms), where a look-up for
/// the post starts; from the beginning for a claim whose time is unknown.
fn earlier_secs(at: i64) -> i64 {
    if at <= CLAIM_UNKNOWN {
        return 0;
    }
    (at / 1000 - DM_LOOKBACK_SECS).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Ending, NewTask};

    /// A claim made just before this process started: with SQLite it is an
    /// earlier process's, taken over at once; on PostgreSQL, where another
    /// live process started before it, it may be that process's posting
    /// now, and is left alone until its lease runs out.
    #[tokio::test]
    async fn a_recent_claim_is_another_live_process_s_only_on_a_shared_database() {
        let db = baton_testkit::db::TestDb::new().await;
        let store = Store::connect(&db.url).await.expect("store");
        store.ensure_project("web").await.expect("project");
        let task = store
            .insert_task(NewTask {
                agent: Some("a".into()),
                ..NewTask::sample()
            })
            .await
            .expect("task");
        store.set_message_ts(task.id, "1.1").await.expect("ts");
        let ending = Ending::Cancelled {
            note: "stopped".into(),
        };
        assert!(
            store
                .finish(task.id, None, None, &[TaskState::Dispatched], &ending)
                .await
                .expect("ended")
        );
        store.mark_slack_synced(task.id).await.expect("synced");
        // Another process claimed it a second ago, then this one started.
        let claimed = now_ms() - 1_000;
        if store.is_shared() {
            // That process is alive: it started before its claim.
            store
                .renew_instance("other", claimed - 1_000, now_ms(), 60_000)
                .await
                .expect("a live process");
        }
        assert!(
            store
                .claim_notice(task.id, None, claimed)
                .await
                .expect("claim")
        );
        let settings =
            crate::settings::Settings::for_tests("http://127.0.0.1:9", &db.url, "secret");
        let slack =
            crate::slack::api::SlackApi::new(&settings.slack_api_url, &settings.slack_bot_token)
                .expect("slack client");
        let mut notifier = Notifier {
            store: store.clone(),
            slack,
            mode: NotifyMode::Thread,
            started_at: now_ms(),
            failures: 0,
        };
        notifier.pass().await.expect("a pass");
        let (done, claim) = store
            .notice_state(task.id)
            .await
            .expect("read")
            .expect("row");
        assert!(!done);
        if store.is_shared() {
            assert_eq!(claim, Some(claimed), "left to the live process");
        } else {
            assert_ne!(claim, Some(claimed), "taken over");
        }
    }
}
