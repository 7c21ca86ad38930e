//! Renders a task as its one Slack message, with slack-morphism's Block Kit types.
//!
//! Header (state, persona, project, `#id`, elapsed), the prompt, why it waits,
//! the last steps, a tail of the output, the result or error, the buttons.
//! Every piece is cut to Slack's limits here, so no caller has to.

use slack_morphism::prelude::*;

use crate::model::{ResultMeta, TaskState};
use crate::slack::api::MessageBody;
use crate::slack::mrkdwn::{self, SECTION_TEXT_MAX};
use crate::store::Task;

/// Steps shown in the message; older ones are summarised as "+N earlier".
pub const SHOWN_STEPS: usize = 8;
/// Prompt characters shown in the message.
pub const PROMPT_SHOWN_CHARS: usize = 600;
/// Output tail characters shown while running.
pub const OUTPUT_TAIL_SHOWN_CHARS: usize = 1_200;
/// Output tail characters kept for the message (in memory and the database).
pub const OUTPUT_TAIL_KEPT_CHARS: usize = 4_000;
/// Longest fallback `text`: Slack rejects much less than its documented 40,000.
pub const FALLBACK_TEXT_MAX: usize = 3_000;
/// Most blocks in one message (Slack allows 50).
pub const MAX_BLOCKS: usize = 50;
/// Result sections in the message itself; the rest goes to the thread.
pub const RESULT_SECTIONS_IN_MESSAGE: usize = 2;
/// Longest single step line shown.
pub const STEP_SHOWN_CHARS: usize = 200;
/// Longest error text shown.
pub const ERROR_SHOWN_CHARS: usize = 2_000;

/// The action id of the Cancel button.
pub const ACTION_CANCEL: &str = "baton_cancel";
/// The action id of the Retry button.
pub const ACTION_RETRY: &str = "baton_retry";

/// Block id prefix of a result's continuation reply: `baton-result-{task}-{part}`.
const PART_BLOCK_PREFIX: &str = "baton-result-";

/// The block id of continuation part `part` (from 1) of `task`'s result, by
/// which a thread read back shows which parts are already there.
pub fn part_block_id(task: i64, part: usize) -> String {
    format!("{PART_BLOCK_PREFIX}{task}-{part}")
}

/// The task and part a continuation reply's block id names.
pub fn parse_part_block_id(block_id: &str) -> Option<(i64, usize)> {
    let (task, part) = block_id.strip_prefix(PART_BLOCK_PREFIX)?.split_once('-')?;
    Some((task.parse().ok()?, part.parse().ok()?))
}

/// A task rendered: the message and, for long results, the thread replies that continue it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The task's message.
    pub message: MessageBody,
    /// Continuation replies for the thread, in order.
    pub continuation: Vec<MessageBody>,
}

fn state_badge(state: TaskState) -> (&'static str, &'static str) {
    match state {
        TaskState::Queued => (":hourglass_flowing_sand:", "Queued"),
        TaskState::Dispatched => (":outbox_tray:", "Dispatched"),
        TaskState::Running => (":gear:", "Running"),
        TaskState::Completed => (":white_check_mark:", "Completed"),
        TaskState::Failed => (":x:", "Failed"),
        TaskState::Cancelled => (":no_entry_sign:", "Cancelled"),
        TaskState::Expired => (":alarm_clock:", "Expired"),
    }
}

/// "1h 2m", "3m 4s", "5s".
pub fn format_elapsed(ms: i64) -> String {
    let s = (ms.max(0) / 1000) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn section(text: String) -> SlackBlock {
    SlackSectionBlock::new().with_text(md!(text)).into()
}

fn context(text: String) -> SlackBlock {
    SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(
        SlackBlockMarkDownText::new(text),
    )])
    .into()
}

fn button(
    action: &str,
    label: &str,
    task: i64,
    style: Option<SlackBlockButtonStyle>,
) -> SlackActionBlockElement {
    SlackActionBlockElement::Button(
        SlackBlockButtonElement::new(pt!(label))
            .with_action_id(action.into())
            .with_value(task.to_string())
            .opt_style(style),
    )
}

/// The task's state as stored.
pub fn task_state(task: &Task) -> TaskState {
    task.state.parse().unwrap_or(TaskState::Failed)
}

/// The header line: state, persona, project, id, elapsed.
fn header(task: &Task, state: TaskState, now_ms: i64) -> String {
    let (emoji, label) = state_badge(state);
    let end = task.finished_at.unwrap_or(now_ms);
    format!(
        "{emoji} *{label}* · {} · `{}` · *#{}* · {}",
        mrkdwn::escape(&task.persona),
        mrkdwn::escape(&task.project),
        task.id,
        format_elapsed(end - task.created_at)
    )
}

/// Why a queued task waits, and where it is in the queue.
fn waiting_line(task: &Task, position: Option<u64>) -> String {
    let reason = task
        .wait_reason
        .as_deref()
        .unwrap_or("waiting for an agent");
    match position {
        Some(p) => format!(
            ":hourglass: Position {p} in the `{}` queue — {}",
            mrkdwn::escape(&task.project),
            mrkdwn::escape(reason)
        ),
        None => format!(":hourglass: {}", mrkdwn::escape(reason)),
    }
}

/// The stored steps.
pub fn steps_of(task: &Task) -> Vec<String> {
    serde_json::from_str(&task.steps).unwrap_or_default()
}

fn meta_line(meta: &ResultMeta) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(c) = meta.cost_usd {
        parts.push(format!("${c:.4}"));
    }
    match (meta.input_tokens, meta.output_tokens) {
        (Some(i), Some(o)) => parts.push(format!("{i} in / {o} out tokens")),
        (Some(i), None) => parts.push(format!("{i} input tokens")),
        (None, Some(o)) => parts.push(format!("{o} output tokens")),
        (None, None) => {}
    }
    if let Some(t) = meta.num_turns {
        parts.push(format!("{t} turns"));
    }
    if let Some(d) = meta.duration_ms {
        parts.push(format!("ran {}", format_elapsed(d as i64)));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// Renders the task's message as of `now_ms`. `position` is its place in the
/// queue when queued.
pub fn render(task: &Task, position: Option<u64>, now_ms: i64) -> Rendered {
    let state = task_state(task);
    let mut blocks: Vec<SlackBlock> = Vec::new();
    let mut continuation = Vec::new();

    blocks.push(section(header(task, state, now_ms)));
    let prompt = mrkdwn::truncate_chars(task.prompt.trim(), PROMPT_SHOWN_CHARS, "…");
    let quoted: String = prompt
        .lines()
        .map(|l| format!("> {}\n", mrkdwn::escape(l)))
        .collect();
    blocks.push(section(mrkdwn::truncate_chars(
        quoted.trim_end(),
        SECTION_TEXT_MAX,
        "…",
    )));

    if state == TaskState::Queued {
        blocks.push(context(mrkdwn::truncate_chars(
            &waiting_line(task, position),
            SECTION_TEXT_MAX,
            "…",
        )));
    }

    let steps = steps_of(task);
    if !steps.is_empty() {
        let earlier = (task.step_count as usize).saturating_sub(steps.len().min(SHOWN_STEPS));
        let mut text = String::new();
        if earlier > 0 {
            text.push_str(&format!("_+{earlier} earlier_\n"));
        }
        for step in steps.iter().rev().take(SHOWN_STEPS).rev() {
            text.push_str("• ");
            text.push_str(&mrkdwn::escape(&mrkdwn::truncate_chars(
                step,
                STEP_SHOWN_CHARS,
                "…",
            )));
            text.push('\n');
        }
        blocks.push(section(mrkdwn::truncate_chars(
            text.trim_end(),
            SECTION_TEXT_MAX,
            "…",
        )));
    }

    let live = !state.is_terminal();
    if live && !task.output_tail.trim().is_empty() {
        let tail = mrkdwn::tail_chars(task.output_tail.trim_end(), OUTPUT_TAIL_SHOWN_CHARS);
        blocks.push(section(format!(
            "```\n{}\n```",
            mrkdwn::escape(tail).replace("```", "ˋˋˋ")
        )));
    }

    match state {
        TaskState::Completed => {
            let text = task.result.as_deref().unwrap_or("");
            let converted = if text.trim().is_empty() {
                "_(no output)_".to_owned()
            } else {
                mrkdwn::markdown_to_mrkdwn(text)
            };
            let parts = mrkdwn::split_mrkdwn(&converted, SECTION_TEXT_MAX);
            let total = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                if i < RESULT_SECTIONS_IN_MESSAGE {
                    blocks.push(section(part));
                } else {
                    let n = continuation.len() + 1;
                    continuation.push(MessageBody {
                        text: mrkdwn::truncate_chars(&part, FALLBACK_TEXT_MAX, "…"),
                        blocks: vec![
                            SlackSectionBlock::new()
                                .with_text(md!(part))
                                .with_block_id(part_block_id(task.id, n).into())
                                .into(),
                        ],
                    });
                }
            }
            if total > RESULT_SECTIONS_IN_MESSAGE {
                blocks.push(context(format!(
                    ":thread: The result continues in this thread ({} more part{}).",
                    total - RESULT_SECTIONS_IN_MESSAGE,
                    if total - RESULT_SECTIONS_IN_MESSAGE == 1 {
                        ""
                    } else {
                        "s"
                    }
                )));
            }
            let meta: ResultMeta = task
                .result_meta
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or_default();
            if let Some(line) = meta_line(&meta) {
                blocks.push(context(line));
            }
        }
        TaskState::Failed | TaskState::Cancelled | TaskState::Expired => {
            if let Some(err) = task.error.as_deref().filter(|e| !e.trim().is_empty()) {
                let err = mrkdwn::tail_chars(err.trim(), ERROR_SHOWN_CHARS);
                let text = if state == TaskState::Failed {
                    format!("```\n{}\n```", mrkdwn::escape(err).replace("```", "ˋˋˋ"))
                } else {
                    mrkdwn::escape(err)
                };
                blocks.push(section(mrkdwn::truncate_chars(
                    &text,
                    SECTION_TEXT_MAX,
                    "…",
                )));
            }
        }
        _ => {}
    }

    if let Some(agent) = task.agent.as_deref() {
        blocks.push(context(format!("Agent `{}`", mrkdwn::escape(agent))));
    }

    let mut buttons = Vec::new();
    if state.can_cancel() {
        buttons.push(button(
            ACTION_CANCEL,
            "Cancel",
            task.id,
            Some(SlackBlockButtonStyle::Danger),
        ));
    }
    if state.can_retry() {
        buttons.push(button(
            ACTION_RETRY,
            "Retry",
            task.id,
            Some(SlackBlockButtonStyle::Primary),
        ));
    }
    if !buttons.is_empty() {
        blocks.push(
            SlackActionsBlock::new(buttons)
                .with_block_id(format!("task-{}", task.id).into())
                .into(),
        );
    }
    blocks.truncate(MAX_BLOCKS);

    let (_, label) = state_badge(state);
    let fallback = format!(
        "#{} {}: {}",
        task.id,
        label.to_lowercase(),
        mrkdwn::truncate_chars(task.prompt.trim(), 200, "…")
    );
    Rendered {
        message: MessageBody {
            text: mrkdwn::truncate_chars(&fallback, FALLBACK_TEXT_MAX, "…"),
            blocks,
        },
        continuation,
    }
}
