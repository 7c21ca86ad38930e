//! Renders a task as its one Slack message, with slack-morphism's Block Kit types.
//!
//! Header (state, persona, project, `#id`, elapsed), the prompt, why it waits,
//! the last steps, a tail of the output, the result or error, the buttons.
//! Every piece is cut to Slack's limits here, so no caller has to.

use slack_morphism::prelude::*;

use crate::model::{ApprovalState, ResultMeta, Retry, ShownApproval, TaskState};
use crate::slack::api::{FileUpload, MessageBody};
use crate::slack::mrkdwn::{self, SECTION_TEXT_MAX};
use crate::store::{Task, TaskSummary};

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
/// Most thread replies a result continues in; a longer result is uploaded
/// as one file instead, its beginning shown in the message.
pub const MAX_CONTINUATION_REPLIES: usize = 3;
/// Longest single step line shown.
pub const STEP_SHOWN_CHARS: usize = 200;
/// Longest error text shown.
pub const ERROR_SHOWN_CHARS: usize = 2_000;
/// Longest persona, project or agent name shown.
pub const NAME_SHOWN_CHARS: usize = 64;
/// Prompt characters in the fallback text (notifications).
pub const PROMPT_FALLBACK_CHARS: usize = 200;

/// The action id of the Cancel button.
pub const ACTION_CANCEL: &str = "baton_cancel";
/// The action id of the Retry button.
pub const ACTION_RETRY: &str = "baton_retry";
/// The action id of an approval request's Approve button.
pub const ACTION_APPROVE: &str = "baton_approve";
/// The action id of an approval request's Deny button.
pub const ACTION_DENY: &str = "baton_deny";
/// Pending approval requests shown with their buttons (the agent asks one
/// at a time per tool call; more would crowd the message).
pub const SHOWN_PENDING_APPROVALS: usize = 5;
/// Decided approval requests shown (the latest), while the task runs.
pub const SHOWN_DECISIONS: usize = 3;
/// Characters of an approval request's input shown.
pub const APPROVAL_INPUT_SHOWN_CHARS: usize = 1_000;

/// The value an approval button carries: `TASK:REQUEST`.
pub fn approval_value(task: i64, request: u32) -> String {
    format!("{task}:{request}")
}

/// The task and request an approval button's value names.
pub fn parse_approval_value(value: &str) -> Option<(baton_shared::TaskId, u32)> {
    let (task, request) = value.split_once(':')?;
    Some((task.parse().ok()?, request.parse().ok()?))
}

/// Block id prefix of a result's continuation reply: `baton-result-{task}-{part}`.
const PART_BLOCK_PREFIX: &str = "baton-result-";

/// The block id of continuation part `part` (from 1) of `task`'s result, by
/// which a thread read back shows which parts are already there.
pub fn part_block_id(task: i64, part: usize) -> String {
    format!("{PART_BLOCK_PREFIX}{task}-{part}")
}

/// Block id of a task message's first block: `baton-task-{task}`, by which a
/// channel read back shows whether the message was already posted.
pub fn message_block_id(task: i64) -> String {
    format!("baton-task-{task}")
}

/// The task and part a continuation reply's block id names.
pub fn parse_part_block_id(block_id: &str) -> Option<(i64, usize)> {
    let (task, part) = block_id.strip_prefix(PART_BLOCK_PREFIX)?.split_once('-')?;
    Some((task.parse().ok()?, part.parse().ok()?))
}

/// A task rendered: the message and, for long results, the thread replies
/// that continue it or the file that holds the whole result.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The task's message.
    pub message: MessageBody,
    /// Continuation replies for the thread, in order (none when the result
    /// goes as a file).
    pub continuation: Vec<MessageBody>,
    /// The whole result as a file for the thread, when it is longer than the
    /// message and [`MAX_CONTINUATION_REPLIES`] replies. It counts as the
    /// thread's one continuation part (its message carries part 1's block id).
    pub file: Option<FileUpload>,
}

/// The name of the file a long result of `task` is uploaded as.
pub fn result_file_name(task: i64) -> String {
    format!("task-{task}.md")
}

/// The file holding `task`'s whole result, with the message that shares it
/// in the thread (carrying part 1's block id, so a thread read back shows
/// whether it was shared).
fn result_file(task: &Task) -> FileUpload {
    let name = result_file_name(task.id);
    let note = format!(
        ":page_facing_up: The whole result of *#{}* is in `{name}`.",
        task.id
    );
    FileUpload {
        title: name.clone(),
        filename: name,
        content: task.result.clone().unwrap_or_default(),
        comment: MessageBody {
            text: mrkdwn::truncate_chars(&note, FALLBACK_TEXT_MAX, "…"),
            blocks: vec![
                SlackSectionBlock::new()
                    .with_text(md!(note))
                    .with_block_id(part_block_id(task.id, 1).into())
                    .into(),
            ],
        },
    }
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

/// A section block. Callers build text within [`SECTION_TEXT_MAX`]; the cut
/// here is only a last defence.
pub(crate) fn section(text: String) -> SlackBlock {
    SlackSectionBlock::new()
        .with_text(md!(within_section(text)))
        .into()
}

/// A context block with one mrkdwn element.
pub(crate) fn context(text: String) -> SlackBlock {
    SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(
        SlackBlockMarkDownText::new(within_section(text)),
    )])
    .into()
}

/// `text`, cut to [`SECTION_TEXT_MAX`] characters if longer.
fn within_section(text: String) -> String {
    if text.chars().count() <= SECTION_TEXT_MAX {
        text
    } else {
        mrkdwn::truncate_chars(&text, SECTION_TEXT_MAX, "…")
    }
}

/// `text` in a code block of at most [`SECTION_TEXT_MAX`] characters, its tail kept.
fn code_block_tail(text: &str) -> String {
    let fences = "```\n\n```".chars().count();
    format!(
        "```\n{}\n```",
        mrkdwn::code_tail(text, SECTION_TEXT_MAX - fences)
    )
}

/// A name (persona, project, agent) as shown: escaped, at most
/// [`NAME_SHOWN_CHARS`], without backticks (it is shown in inline code, whose
/// own backticks would make a fence of the name's).
fn name(text: &str) -> String {
    let shown = mrkdwn::truncate_chars(text, NAME_SHOWN_CHARS, "…").replace('`', "'");
    mrkdwn::escape_text(&shown)
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

/// Whether the task's message shows a pending approval request.
fn waits_for_approval(task: &Task, state: TaskState) -> bool {
    !state.is_terminal()
        && task
            .approvals
            .iter()
            .any(|a| a.state == ApprovalState::Pending)
}

/// The badge of the task as its message shows it: a running task that
/// waits for approval says so.
fn shown_badge(task: &Task, state: TaskState) -> (&'static str, &'static str) {
    if waits_for_approval(task, state) {
        (":raised_hand:", "Waiting for approval")
    } else {
        state_badge(state)
    }
}

/// A pending approval request: the tool and what it wants to do.
fn approval_text(a: &ShownApproval) -> String {
    let head = format!(
        ":raised_hand: *Approval needed:* `{}` wants to:",
        name(&a.tool)
    );
    let input = a.input.trim();
    if input.is_empty() {
        return head;
    }
    let shown = mrkdwn::truncate_chars(input, APPROVAL_INPUT_SHOWN_CHARS, "…");
    let fences = "```\n\n```".chars().count() + head.chars().count() + 1;
    format!(
        "{head}\n```\n{}\n```",
        mrkdwn::code_tail(&shown, SECTION_TEXT_MAX.saturating_sub(fences))
    )
}

/// A decided approval request, in one line.
fn decision_line(a: &ShownApproval) -> Option<String> {
    let by = a
        .decided_by
        .as_deref()
        .filter(|b| b.bytes().all(|c| c.is_ascii_alphanumeric()))
        .map(|b| format!(" by <@{b}>"))
        .unwrap_or_default();
    let tool = name(&a.tool);
    Some(match a.state {
        ApprovalState::Approved => format!(":white_check_mark: `{tool}` approved{by}"),
        ApprovalState::Denied => format!(":no_entry: `{tool}` denied{by}"),
        ApprovalState::TimedOut => {
            format!(":alarm_clock: `{tool}` timed out unanswered: denied")
        }
        ApprovalState::Pending | ApprovalState::Closed => return None,
    })
}

/// The approval requests' blocks of a live task: the latest decisions, then
/// each pending request with its Approve and Deny buttons.
fn approval_blocks(task: &Task) -> Vec<SlackBlock> {
    let mut blocks = Vec::new();
    let decided: Vec<String> = task.approvals.iter().filter_map(decision_line).collect();
    let from = decided.len().saturating_sub(SHOWN_DECISIONS);
    if from < decided.len() {
        blocks.push(context(decided[from..].join("\n")));
    }
    for a in task
        .approvals
        .iter()
        .filter(|a| a.state == ApprovalState::Pending)
        .take(SHOWN_PENDING_APPROVALS)
    {
        blocks.push(section(approval_text(a)));
        let value = approval_value(task.id, a.request);
        let button = |action: &str, label: &str, style| {
            SlackActionBlockElement::Button(
                SlackBlockButtonElement::new(pt!(label))
                    .with_action_id(action.into())
                    .with_value(value.clone())
                    .with_style(style),
            )
        };
        blocks.push(
            SlackActionsBlock::new(vec![
                button(ACTION_APPROVE, "Approve", SlackBlockButtonStyle::Primary),
                button(ACTION_DENY, "Deny", SlackBlockButtonStyle::Danger),
            ])
            .with_block_id(format!("approval-{}-{}", task.id, a.request).into())
            .into(),
        );
    }
    blocks
}

/// The header line: state, persona, project, id, elapsed.
fn header(task: &Task, state: TaskState, now_ms: i64) -> String {
    let (emoji, label) = shown_badge(task, state);
    let end = task.finished_at.unwrap_or(now_ms);
    format!(
        "{emoji} *{label}* · {} · `{}` · *#{}* · {}",
        name(&task.persona),
        name(&task.project),
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
            name(&task.project),
            mrkdwn::escape_text(reason)
        ),
        None => format!(":hourglass: {}", mrkdwn::escape_text(reason)),
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

/// The steps section: the latest steps that fit, oldest first, after "+N earlier".
fn steps_text(task: &Task) -> Option<String> {
    let steps = steps_of(task);
    if steps.is_empty() {
        return None;
    }
    let total = (task.step_count.max(0) as usize).max(steps.len());
    // Room for the "+N earlier" line.
    let budget = SECTION_TEXT_MAX - "_+99999999999 earlier_\n".len();
    let mut lines: Vec<String> = Vec::new();
    let mut used = 0;
    for step in steps.iter().rev().take(SHOWN_STEPS) {
        let line = format!(
            "• {}",
            mrkdwn::escape_text(&mrkdwn::truncate_chars(step, STEP_SHOWN_CHARS, "…"))
        );
        let cost = line.chars().count() + 1;
        if used + cost > budget {
            break;
        }
        used += cost;
        lines.push(line);
    }
    lines.reverse();
    let earlier = total - lines.len();
    let mut text = String::new();
    if earlier > 0 {
        text.push_str(&format!("_+{earlier} earlier_\n"));
    }
    text.push_str(&lines.join("\n"));
    Some(text)
}

/// The prompt, shortened and quoted.
fn prompt_text(task: &Task) -> String {
    let prompt = mrkdwn::truncate_chars(task.prompt.trim(), PROMPT_SHOWN_CHARS, "…");
    let quoted: Vec<String> = prompt
        .lines()
        .map(|l| format!("> {}", mrkdwn::escape_text(l)))
        .collect();
    mrkdwn::truncate_chars(&quoted.join("\n"), SECTION_TEXT_MAX, "…")
}

/// Why a task failed, was cancelled or expired.
fn ending_text(task: &Task, state: TaskState) -> Option<String> {
    let err = task
        .error
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())?;
    let err = mrkdwn::tail_chars(err, ERROR_SHOWN_CHARS);
    if state == TaskState::Failed {
        return Some(code_block_tail(err));
    }
    // Cancel and expiry notes are Baton's own and may mention who cancelled.
    let note = mrkdwn::escape_text_keeping_mentions(err);
    Some(if note.chars().count() <= SECTION_TEXT_MAX {
        note
    } else {
        mrkdwn::truncate_chars(&mrkdwn::escape_text(err), SECTION_TEXT_MAX, "…")
    })
}

/// The result's sections: the first go in the message, the rest continue in the thread.
fn result_sections(task: &Task) -> Vec<String> {
    let text = task.result.as_deref().unwrap_or("");
    let converted = if text.trim().is_empty() {
        "_(no output)_".to_owned()
    } else {
        mrkdwn::markdown_to_mrkdwn(text)
    };
    mrkdwn::split_mrkdwn(&converted, SECTION_TEXT_MAX)
}

/// Renders the task's message as of `now_ms`. `position` is its place in the
/// queue when queued.
pub fn render(task: &Task, position: Option<u64>, now_ms: i64) -> Rendered {
    let state = task_state(task);
    let mut blocks: Vec<SlackBlock> = Vec::new();
    let mut continuation = Vec::new();
    let mut file = None;

    blocks.push(
        SlackSectionBlock::new()
            .with_text(md!(within_section(header(task, state, now_ms))))
            .with_block_id(message_block_id(task.id).into())
            .into(),
    );
    blocks.push(section(prompt_text(task)));
    if state == TaskState::Queued {
        blocks.push(context(waiting_line(task, position)));
    }
    if let Some(steps) = steps_text(task) {
        blocks.push(section(steps));
    }
    let live = !state.is_terminal();
    if live && !task.output_tail.trim().is_empty() {
        let tail = mrkdwn::tail_chars(task.output_tail.trim_end(), OUTPUT_TAIL_SHOWN_CHARS);
        blocks.push(section(code_block_tail(tail)));
    }
    if live {
        blocks.extend(approval_blocks(task));
    }

    match state {
        TaskState::Completed => {
            let parts = result_sections(task);
            let total = parts.len();
            let as_file = total > RESULT_SECTIONS_IN_MESSAGE + MAX_CONTINUATION_REPLIES;
            for (i, part) in parts.into_iter().enumerate() {
                if i < RESULT_SECTIONS_IN_MESSAGE {
                    blocks.push(section(part));
                } else if as_file {
                    break;
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
            if as_file {
                let f = result_file(task);
                blocks.push(context(format!(
                    ":page_facing_up: This is the beginning; the whole result is in the file `{}` in this thread.",
                    f.filename
                )));
                file = Some(f);
            } else if total > RESULT_SECTIONS_IN_MESSAGE {
                let more = total - RESULT_SECTIONS_IN_MESSAGE;
                blocks.push(context(format!(
                    ":thread: The result continues in this thread ({more} more part{}).",
                    if more == 1 { "" } else { "s" }
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
            if let Some(text) = ending_text(task, state) {
                blocks.push(section(text));
            }
        }
        _ => {}
    }

    if let Some(agent) = task.agent.as_deref() {
        blocks.push(context(format!("Agent `{}`", name(agent))));
    }
    let retried_as = match task.retry() {
        Retry::As(new) => Some(new),
        Retry::None | Retry::Claimed => None,
    };
    if let Some(new) = retried_as {
        blocks.push(context(format!(":repeat: Retried as *{new}*")));
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
    if state.can_retry() && retried_as.is_none() {
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

    let (_, label) = shown_badge(task, state);
    let fallback = format!(
        "#{} {}: {}",
        task.id,
        label.to_lowercase(),
        mrkdwn::escape_text(&mrkdwn::truncate_chars(
            task.prompt.trim(),
            PROMPT_FALLBACK_CHARS,
            "…"
        ))
    );
    Rendered {
        message: MessageBody {
            text: mrkdwn::truncate_chars(&fallback, FALLBACK_TEXT_MAX, "…"),
            blocks,
        },
        continuation,
        file,
    }
}

/// One line about a task.
pub fn task_line(t: &Task) -> String {
    summary_line(&TaskSummary {
        id: t.id,
        state: t.state.clone(),
        persona: t.persona.clone(),
        project: t.project.clone(),
        agent: t.agent.clone(),
        prompt: t.prompt.clone(),
        channel_id: t.channel_id.clone(),
        message_ts: t.message_ts.clone(),
        created_at: t.created_at,
    })
}

/// One line about a task, from its summary.
pub fn summary_line(t: &TaskSummary) -> String {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::slack::mrkdwn::tests::hostile;

    /// Slack's limit on a message's `text` (it documents 40,000; it refuses far less).
    const SLACK_TEXT_MAX: usize = 4_000;
    /// Slack's limit on a button's text.
    const BUTTON_TEXT_MAX: usize = 75;
    /// Slack's limit on a button's value.
    const BUTTON_VALUE_MAX: usize = 2_000;
    /// Slack's limit on a block_id or an action_id.
    const ID_MAX: usize = 255;
    /// Slack's limit on a context block's elements.
    const CONTEXT_ELEMENTS_MAX: usize = 10;
    /// Slack's limit on an actions block's elements.
    const ACTIONS_ELEMENTS_MAX: usize = 25;

    fn chars(v: &Value) -> usize {
        v.as_str().map_or(0, |s| s.chars().count())
    }

    /// Everything in `body` that Slack would refuse or that would break:
    /// Slack's limits, a code block left open, a channel-wide mention.
    fn violations(body: &MessageBody) -> Vec<String> {
        let mut out = Vec::new();
        let mut texts = vec![body.text.clone()];
        if body.text.chars().count() > SLACK_TEXT_MAX.min(FALLBACK_TEXT_MAX) {
            out.push(format!("text of {} chars", body.text.chars().count()));
        }
        if body.blocks.len() > MAX_BLOCKS {
            out.push(format!("{} blocks", body.blocks.len()));
        }
        let blocks = serde_json::to_value(&body.blocks).unwrap();
        for b in blocks.as_array().unwrap() {
            if b["block_id"].as_str().is_some_and(|id| id.len() > ID_MAX) {
                out.push("long block_id".into());
            }
            match b["type"].as_str() {
                Some("section") => {
                    if chars(&b["text"]["text"]) > SECTION_TEXT_MAX {
                        out.push(format!("section of {}", chars(&b["text"]["text"])));
                    }
                    texts.extend(b["text"]["text"].as_str().map(str::to_owned));
                }
                Some("context") => {
                    let elements = b["elements"].as_array().unwrap();
                    if elements.len() > CONTEXT_ELEMENTS_MAX {
                        out.push("too many context elements".into());
                    }
                    for e in elements {
                        if chars(&e["text"]) > SECTION_TEXT_MAX {
                            out.push(format!("context of {}", chars(&e["text"])));
                        }
                        texts.extend(e["text"].as_str().map(str::to_owned));
                    }
                }
                Some("actions") => {
                    let elements = b["elements"].as_array().unwrap();
                    if elements.len() > ACTIONS_ELEMENTS_MAX {
                        out.push("too many buttons".into());
                    }
                    for e in elements {
                        if chars(&e["text"]["text"]) > BUTTON_TEXT_MAX
                            || e["action_id"].as_str().is_none_or(|a| a.len() > ID_MAX)
                            || e["value"]
                                .as_str()
                                .is_some_and(|v| v.len() > BUTTON_VALUE_MAX)
                        {
                            out.push(format!("bad button {e}"));
                        }
                    }
                }
                other => out.push(format!("unexpected block {other:?}")),
            }
        }
        for t in texts {
            if t.matches(mrkdwn::FENCE).count() % 2 == 1 {
                out.push(format!("a code block left open: {t:?}"));
            }
            if t.contains("<!") {
                out.push(format!("a special mention: {t:?}"));
            }
        }
        out
    }

    /// The mrkdwn texts of a message's sections, in order.
    fn section_texts(body: &MessageBody) -> Vec<String> {
        let blocks = serde_json::to_value(&body.blocks).unwrap();
        blocks
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "section")
            .filter_map(|b| b["text"]["text"].as_str().map(str::to_owned))
            .collect()
    }

    /// `text` without fence lines and whitespace: what a reader sees of it.
    fn content(text: &str) -> String {
        text.lines()
            .filter(|l| *l != mrkdwn::FENCE)
            .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
            .collect()
    }

    fn task(id: i64, state: TaskState) -> Task {
        Task {
            id,
            persona: "code".into(),
            project: "web".into(),
            prompt: "fix it".into(),
            requester: "U1".into(),
            team_id: "T1".into(),
            channel_id: "C1".into(),
            thread_ts: None,
            message_ts: None,
            state: state.as_str().into(),
            agent: None,
            parent_id: None,
            session_id: None,
            model: None,
            created_at: 0,
            updated_at: 0,
            queued_at: 0,
            dispatched_at: None,
            started_at: None,
            finished_at: None,
            last_seq: 0,
            cancel_requested: false,
            wait_reason: None,
            steps: "[]".into(),
            step_count: 0,
            output_tail: String::new(),
            result: None,
            result_meta: None,
            error: None,
            failure_cause: None,
            slack_synced: false,
            result_parts_posted: 0,
            retried_as: None,
            after_task: None,
            session_agent: None,
            approvals: Vec::new(),
        }
    }

    /// Hostile text up to about 100,000 characters: hostile fragments,
    /// repeated, or one troublesome character many times.
    fn long_hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => hostile(),
            2 => (hostile(), 1..60usize).prop_map(|(s, k)| s.repeat(k)),
            1 => (
                prop::sample::select(vec!["&", "<", ">", "`", "```\n", "😀", "| a |\n", "x"]),
                1..100_000usize
            )
                .prop_map(|(c, n)| c.repeat(n).chars().take(100_000).collect()),
        ]
    }

    /// A name: usually a real one, sometimes hostile.
    fn any_name() -> impl Strategy<Value = String> {
        prop_oneof![3 => "[a-z][a-z0-9-]{0,20}", 1 => hostile()]
    }

    prop_compose! {
        fn any_task()(
            id in 1i64..i64::MAX,
            state in prop::sample::select(TaskState::ALL.to_vec()),
            names in (any_name(), any_name(), prop::option::of(any_name())),
            prompt in long_hostile(),
            steps in prop::collection::vec(hostile(), 0..=SHOWN_STEPS),
            step_count in 0i64..1_000_000,
            output in long_hostile(),
            result in long_hostile(),
            error in prop::option::of(long_hostile()),
            wait_reason in prop::option::of(hostile()),
            approvals in prop::collection::vec(any_approval(), 0..=12),
        ) -> Task {
            let mut t = task(id, state);
            (t.persona, t.project, t.agent) = names;
            t.prompt = prompt;
            t.steps = serde_json::to_string(&steps).unwrap();
            t.step_count = step_count;
            t.output_tail = output;
            t.result = Some(result);
            t.error = error;
            t.wait_reason = wait_reason;
            t.approvals = approvals;
            t
        }
    }

    prop_compose! {
        fn any_approval()(
            request in 1u32..=1_000,
            tool in any_name(),
            input in long_hostile(),
            state in prop::sample::select(ApprovalState::ALL.to_vec()),
            decided_by in prop::option::of(any_name()),
        ) -> ShownApproval {
            ShownApproval { request, tool, input, state, decided_by }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn every_render_respects_slacks_limits(t in any_task(), position in prop::option::of(0u64..1000)) {
            let rendered = render(&t, position, 0);
            let bad = violations(&rendered.message);
            prop_assert!(bad.is_empty(), "{bad:?}");
            for part in rendered.continuation.iter().chain(rendered.file.as_ref().map(|f| &f.comment)) {
                let bad = violations(part);
                prop_assert!(bad.is_empty(), "{bad:?}");
            }
            prop_assert!(!rendered.message.text.trim().is_empty());
        }

        #[test]
        fn a_long_result_continues_in_order_and_whole(mut t in any_task()) {
            t.state = TaskState::Completed.as_str().into();
            let rendered = render(&t, None, 0);
            let result = t.result.as_deref().unwrap();
            let whole = mrkdwn::markdown_to_mrkdwn(result);
            let in_message = section_texts(&rendered.message);
            let mut shown: Vec<String> = in_message
                .iter()
                .skip(2 + usize::from(!steps_of(&t).is_empty()))
                .take(RESULT_SECTIONS_IN_MESSAGE)
                .cloned()
                .collect();
            for (i, part) in rendered.continuation.iter().enumerate() {
                prop_assert_eq!(
                    block_ids(part),
                    vec![part_block_id(t.id, i + 1)]
                );
                shown.extend(section_texts(part));
            }
            prop_assert!(rendered.continuation.len() <= MAX_CONTINUATION_REPLIES);
            if let Some(file) = &rendered.file {
                // Too long for the thread: the whole result is the file, the
                // message shows its beginning.
                prop_assert!(rendered.continuation.is_empty());
                prop_assert_eq!(file.content.as_str(), result);
                prop_assert_eq!(file.filename.clone(), format!("task-{}.md", t.id));
                prop_assert_eq!(block_ids(&file.comment), vec![part_block_id(t.id, 1)]);
                let beginning: String = mrkdwn::split_mrkdwn(&whole, SECTION_TEXT_MAX)
                    .iter()
                    .take(RESULT_SECTIONS_IN_MESSAGE)
                    .map(|p| content(p))
                    .collect();
                let got: String = shown.iter().map(|p| content(p)).collect();
                prop_assert!(got == beginning, "the message does not show the beginning: {}", first_difference(&got, &beginning));
            } else if result.trim().is_empty() {
                prop_assert_eq!(shown, vec!["_(no output)_".to_owned()]);
            } else {
                let got: String = shown.iter().map(|p| content(p)).collect();
                let want = content(&whole);
                prop_assert!(got == want, "the parts differ from the result: {}", first_difference(&got, &want));
                // A code block is never broken across parts: fences are whole
                // lines and every part closes what it opens.
                for part in &shown {
                    prop_assert!(part.lines().all(|l| l == mrkdwn::FENCE || !l.contains(mrkdwn::FENCE)));
                }
            }
        }
    }

    /// Where two strings first differ, with a little context, for failure messages.
    fn first_difference(a: &str, b: &str) -> String {
        let at = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        let around =
            |s: &str| -> String { s.chars().skip(at.saturating_sub(40)).take(120).collect() };
        format!(
            "at char {at} of {}/{}: {:?} vs {:?}",
            a.chars().count(),
            b.chars().count(),
            around(a),
            around(b)
        )
    }

    fn block_ids(body: &MessageBody) -> Vec<String> {
        let blocks = serde_json::to_value(&body.blocks).unwrap();
        blocks
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["block_id"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn part_block_ids_read_back() {
        assert_eq!(parse_part_block_id(&part_block_id(42, 7)), Some((42, 7)));
        assert_eq!(parse_part_block_id("task-42"), None);
        assert_eq!(parse_part_block_id("baton-result-x-1"), None);
    }

    #[test]
    fn the_worst_characters_stay_within_limits() {
        for c in ["&", "<", "```", "😀", "\n"] {
            let mut t = task(1, TaskState::Failed);
            t.prompt = c.repeat(100_000);
            t.steps = serde_json::to_string(&vec![c.repeat(500); SHOWN_STEPS]).unwrap();
            t.step_count = 1_000;
            t.error = Some(c.repeat(8_000));
            let bad = violations(&render(&t, None, 0).message);
            assert!(bad.is_empty(), "{c:?}: {bad:?}");
            t.state = TaskState::Running.as_str().into();
            t.output_tail = c.repeat(OUTPUT_TAIL_KEPT_CHARS);
            let bad = violations(&render(&t, None, 0).message);
            assert!(bad.is_empty(), "{c:?}: {bad:?}");
        }
    }

    #[test]
    fn the_latest_steps_are_the_ones_shown() {
        let mut t = task(1, TaskState::Running);
        let steps: Vec<String> = (1..=8).map(|i| format!("{i}{}", "&".repeat(199))).collect();
        t.steps = serde_json::to_string(&steps).unwrap();
        t.step_count = 20;
        let text = section_texts(&render(&t, None, 0).message)[2].clone();
        assert!(text.contains("• 8&amp;"), "the newest step is shown");
        assert!(!text.contains("• 1&amp;"), "the oldest gives way");
        let shown = text.matches("• ").count();
        assert!(
            text.starts_with(&format!("_+{} earlier_", 20 - shown)),
            "{text}"
        );
    }

    /// A pending request shows its tool and input escaped (an agent wrote
    /// them: no mention, no link, no early end of the code block) with its
    /// buttons; a decision names who decided; none of it once the task ended.
    #[test]
    fn an_approval_request_is_shown_escaped_with_its_buttons() {
        let mut t = task(7, TaskState::Running);
        t.approvals = vec![
            ShownApproval {
                request: 1,
                tool: "Bash".into(),
                input: "rm -rf x".into(),
                state: ApprovalState::Approved,
                decided_by: Some("U1".into()),
            },
            ShownApproval {
                request: 2,
                tool: "Ba`sh <!here>".into(),
                input: "echo <!channel> && cat <<EOF\n```\nEOF".into(),
                state: ApprovalState::Pending,
                decided_by: None,
            },
        ];
        let message = render(&t, None, 0).message;
        let text = section_texts(&message).join("\n");
        assert!(text.contains("*Waiting for approval*"), "{text}");
        assert!(text.contains("`Ba'sh &lt;!here&gt;`"), "{text}");
        assert!(
            text.contains("echo &lt;!channel&gt; &amp;&amp; cat &lt;&lt;EOF"),
            "{text}"
        );
        assert!(
            !text.contains("\n```\nEOF"),
            "the input cannot close the block: {text}"
        );
        let json = serde_json::to_value(&message.blocks).unwrap().to_string();
        assert!(json.contains("approved by <@U1>"), "{json}");
        assert!(json.contains(r#""action_id":"baton_approve""#), "{json}");
        assert!(json.contains(r#""action_id":"baton_deny""#), "{json}");
        assert!(json.contains(r#""value":"7:2""#), "{json}");
        assert_eq!(
            parse_approval_value("7:2"),
            Some((baton_shared::TaskId(7), 2))
        );
        assert_eq!(parse_approval_value("7"), None);

        t.state = TaskState::Completed.as_str().into();
        let json = serde_json::to_value(&render(&t, None, 0).message.blocks)
            .unwrap()
            .to_string();
        assert!(!json.contains("baton_approve"), "{json}");
        assert!(!json.contains("Waiting for approval"), "{json}");
    }

    #[test]
    fn a_cancel_note_mentions_who_cancelled_and_nothing_else() {
        let mut t = task(1, TaskState::Cancelled);
        t.error = Some("Cancelled by <@U123ABC> while queued. <!channel> <@here>".into());
        let text = section_texts(&render(&t, None, 0).message).join("\n");
        assert!(
            text.contains("Cancelled by <@U123ABC> while queued."),
            "{text}"
        );
        assert!(text.contains("&lt;!channel&gt; &lt;@here&gt;"), "{text}");
        t.state = TaskState::Failed.as_str().into();
        let text = section_texts(&render(&t, None, 0).message).join("\n");
        assert!(
            text.contains("&lt;@U123ABC&gt;"),
            "an agent's error mentions no one: {text}"
        );
    }
}
