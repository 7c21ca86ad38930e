//! Markdown → Slack mrkdwn conversion, Slack escaping, and length-safe splitting/truncation.

/// Maximum characters in a Slack section block's `text`.
pub const SECTION_TEXT_MAX: usize = 3000;
/// Smallest `max_chars` that [`split_mrkdwn`] honours; smaller values are raised to this.
pub const MIN_SPLIT_CHARS: usize = 16;
/// A code fence line as emitted by [`markdown_to_mrkdwn`] (and recognised by [`split_mrkdwn`]).
pub const FENCE: &str = "```";
/// Prefix [`split_mrkdwn`] adds to a piece that starts inside a code block.
const REOPEN: &str = "```\n";
/// Suffix [`split_mrkdwn`] adds to a piece that ends inside a code block.
const CLOSE: &str = "\n```";
/// Character count of [`REOPEN`] and of [`CLOSE`].
const MARKER_CHARS: usize = 4;
/// Replaces a `-`/`*`/`+` list marker.
const BULLET: &str = "• ";
/// Replaces a horizontal rule.
const RULE: &str = "──────────";
/// Entities produced by [`escape`]; never cut in half.
const ENTITIES: [&str; 3] = ["&amp;", "&lt;", "&gt;"];
/// Lines longer than this many bytes are escaped without inline formatting (bounds the
/// quadratic worst case of delimiter matching on pathological input).
const MAX_INLINE_BYTES: usize = 8000;
/// URL schemes that may become Slack links.
const LINK_SCHEMES: [&str; 3] = ["http://", "https://", "mailto:"];

/// Escapes Slack's control characters: `&` → `&amp;`, `<` → `&lt;`, `>` → `&gt;` (nothing else).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    text.chars().for_each(|c| push_escaped(&mut out, c));
    out
}

/// Pushes `c` onto `out`, escaped like [`escape`].
fn push_escaped(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        _ => out.push(c),
    }
}

/// Escapes text shown as it is (a prompt, a step, a name): Slack's control
/// characters, and ``` runs broken up so they cannot open a code block.
pub fn escape_text(text: &str) -> String {
    break_fences(&escape(text))
}

/// Like [`escape_text`], except that user mentions (`<@U123ABC>`) stay
/// mentions. Only for text Baton writes itself (a "cancelled by" note), never
/// for what a person or an agent wrote.
pub fn escape_text_keeping_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("<@") {
        out.push_str(&escape_text(&rest[..i]));
        let after = &rest[i + 2..];
        let id = after
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            .count();
        if id > 0 && after[id..].starts_with('>') {
            out.push_str(&rest[i..i + 2 + id + 1]);
            rest = &after[id + 1..];
        } else {
            out.push_str("&lt;@");
            rest = after;
        }
    }
    out.push_str(&escape_text(rest));
    out
}

/// The end of `text` as shown inside a code block: the longest tail whose
/// escaped form has at most `max_chars` characters, escaped, with ``` runs
/// broken up so it cannot close the block. Never starts inside a character
/// or an entity.
pub fn code_tail(text: &str, max_chars: usize) -> String {
    let text = break_fences(text);
    let (mut width, mut start) = (0, text.len());
    for (i, c) in text.char_indices().rev() {
        let w = match c {
            '&' => "&amp;".len(),
            '<' | '>' => "&lt;".len(),
            _ => 1,
        };
        if width + w > max_chars {
            break;
        }
        width += w;
        start = i;
    }
    escape(&text[start..])
}

/// Escapes code content and breaks up ``` runs with a zero-width space so they cannot end
/// Slack's code block early (the only change made to code besides escaping); the same is
/// done to stray ``` outside code so only real fences ever read as ```.
fn code_text(text: &str) -> String {
    break_fences(&escape(text))
}

/// Puts zero-width spaces into every run of three or more backticks.
fn break_fences(text: &str) -> String {
    let mut out = text.to_string();
    while out.contains(FENCE) {
        out = out.replace(FENCE, "`\u{200B}`\u{200B}`");
    }
    out
}

/// Converts GitHub-flavoured Markdown (as Claude writes it) to Slack mrkdwn.
///
/// Headings become bold lines, `**b**`/`__b__` → `*b*`, `*i*`/`_i_` → `_i_`, `~~s~~` → `~s~`,
/// `[t](url)` → `<url|t>` (only for safe http(s)/mailto URLs, otherwise plain text), bullets
/// → `•`, pipe tables → aligned code blocks, fenced code → bare ``` fences (an unclosed one
/// is closed). Everything else is escaped with [`escape`]; only a quote's leading `>` stays raw.
/// A ``` run that is not a fence (inside code or stray) gets zero-width spaces between its
/// backticks so Slack cannot end or start a code block there.
pub fn markdown_to_mrkdwn(md: &str) -> String {
    let md = md.replace("\r\n", "\n");
    let lines: Vec<&str> = md.split('\n').collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        if let Some((fence_char, fence_len, indent)) = fence_open(lines[i]) {
            out.push(FENCE.to_string());
            i += 1;
            while let Some(line) = lines.get(i) {
                i += 1;
                let t = line.trim();
                if t.len() >= fence_len && t.chars().all(|c| c == fence_char) {
                    break;
                }
                let strip = line.len() - line.trim_start_matches(' ').len();
                out.push(code_text(&line[strip.min(indent)..]));
            }
            out.push(FENCE.to_string());
        } else if let Some((table, used)) = parse_table(&lines[i..]) {
            out.push(table);
            i += used;
        } else {
            out.push(break_fences(&convert_line(lines[i])));
            i += 1;
        }
    }
    out.join("\n")
}

/// `(fence char, run length, indentation)` if `line` opens a ``` or ~~~ code fence.
fn fence_open(line: &str) -> Option<(char, usize, usize)> {
    let t = line.trim_start();
    let c = t.chars().next().filter(|&c| c == '`' || c == '~')?;
    let run = t.chars().take_while(|&x| x == c).count();
    let info = &t[run..];
    (run >= 3 && !(c == '`' && info.contains('`'))).then_some((c, run, line.len() - t.len()))
}

/// Converts one non-code, non-table line.
fn convert_line(line: &str) -> String {
    let t = line.trim_start();
    let indent = &line[..line.len() - t.len()];
    if t.is_empty() {
        return String::new();
    }
    if t.starts_with('>') {
        let rest = t.trim_start_matches(|c: char| c == '>' || c.is_whitespace());
        return format!("> {}", convert_line(rest)).trim_end().to_string();
    }
    let hashes = t.chars().take_while(|&c| c == '#').count();
    if (1..=6).contains(&hashes) && (t.len() == hashes || t[hashes..].starts_with([' ', '\t'])) {
        let text = t[hashes..].trim();
        let unclosed = text.trim_end_matches('#');
        let closing = unclosed.is_empty() || unclosed.ends_with([' ', '\t']);
        let inner = inline(if closing { unclosed.trim_end() } else { text }, true, true);
        if inner.is_empty() {
            return inner;
        }
        return format!("*{inner}*");
    }
    let marks: Vec<char> = t.chars().filter(|c| !c.is_whitespace()).collect();
    if marks.len() >= 3 && ['-', '*', '_'].iter().any(|m| marks.iter().all(|c| c == m)) {
        return RULE.to_string();
    }
    if t.starts_with(['-', '*', '+']) && t[1..].starts_with([' ', '\t']) {
        let rest = t[1..].trim_start();
        let (task, rest) = match rest.get(..4) {
            Some("[ ] ") => ("☐ ", &rest[4..]),
            Some("[x] " | "[X] ") => ("☑ ", &rest[4..]),
            _ => ("", rest),
        };
        return format!("{indent}{BULLET}{task}{}", inline(rest, true, false));
    }
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    if (1..=9).contains(&digits) && (t[digits..].starts_with(". ") || t[digits..].starts_with(") "))
    {
        let (num, rest) = t.split_at(digits + 2);
        let rest = inline(rest.trim_start(), true, false);
        return format!("{indent}{num}{rest}");
    }
    format!("{indent}{}", inline(t, true, false))
}

/// Converts inline Markdown in one line. `links`: produce Slack links (false inside link
/// labels); `in_bold`: already inside bold, so bold markers are dropped.
fn inline(s: &str, links: bool, in_bold: bool) -> String {
    if s.len() > MAX_INLINE_BYTES {
        return escape(s);
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let next = chars.get(i + 1).copied();
        if c == '\\' && next.is_some_and(|n| n.is_ascii_punctuation()) {
            push_escaped(&mut out, chars[i + 1]);
            i += 2;
        } else if c == '`' {
            let run = run_len(&chars, i);
            if let Some(close) = code_close(&chars, i + run, run) {
                let content: String = chars[i + run..close].iter().collect();
                let trimmed = match content.strip_prefix(' ').and_then(|x| x.strip_suffix(' ')) {
                    Some(x) if !x.trim().is_empty() => x,
                    _ => &content,
                };
                out.push_str(&format!("`{}`", code_text(trimmed)));
                i = close + run;
            } else {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        } else if links
            && c == '<'
            && let Some((url, end)) = autolink(&chars, i)
        {
            out.push_str(&link(&url, ""));
            i = end;
        } else if links
            && (c == '[' || (c == '!' && next == Some('[')))
            && let Some((label, url, end)) = md_link(&chars, i + usize::from(c == '!'))
        {
            let label = inline(&label, false, in_bold);
            if is_safe_url(&url) {
                out.push_str(&link(&url, &label));
            } else {
                out.push_str(&format!("{label} ({})", escape(&url)));
            }
            i = end;
        } else if matches!(c, '*' | '_' | '~') {
            let run = run_len(&chars, i);
            if let Some(close) = emphasis_close(&chars, i, run) {
                let inner: String = chars[i + run..close].iter().collect();
                let (open, bold, shut) = match (c, run) {
                    ('~', _) => ("~", in_bold, "~"),
                    (_, 1) => ("_", in_bold, "_"),
                    (_, 2) if in_bold => ("", true, ""),
                    (_, 2) => ("*", true, "*"),
                    _ if in_bold => ("_", true, "_"),
                    _ => ("*_", true, "_*"),
                };
                out.push_str(&format!("{open}{}{shut}", inline(&inner, links, bold)));
                i = close + run;
            } else {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        } else {
            push_escaped(&mut out, c);
            i += 1;
        }
    }
    out
}

/// Length of the run of `chars[i]` starting at `i`.
fn run_len(chars: &[char], i: usize) -> usize {
    chars[i..].iter().take_while(|&&c| c == chars[i]).count()
}

/// Index of the backtick run of exactly `run` closing a code span opened before `from`.
fn code_close(chars: &[char], from: usize, run: usize) -> Option<usize> {
    let mut j = from;
    while j < chars.len() {
        let r = run_len(chars, j);
        if chars[j] == '`' && r == run {
            return Some(j);
        }
        j += r;
    }
    None
}

/// Index of the delimiter run closing emphasis opened by the `run` delimiters at `i`.
fn emphasis_close(chars: &[char], i: usize, run: usize) -> Option<usize> {
    let c = chars[i];
    let valid_run = matches!((c, run), ('~', 2) | ('*', 1..=3) | ('_', 1..=2));
    let alnum = |k: Option<&char>| k.is_some_and(|x| x.is_alphanumeric());
    if !valid_run
        || chars.get(i + run).is_none_or(|n| n.is_whitespace())
        || (c == '_' && i > 0 && alnum(chars.get(i - 1)))
    {
        return None;
    }
    let mut j = i + run;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            '`' => {
                let r = run_len(chars, j);
                j = code_close(chars, j + r, r).map_or(j + r, |k| k + r);
            }
            x if x == c => {
                let r = run_len(chars, j);
                let closes = r == run && j > i + run && !chars[j - 1].is_whitespace();
                if closes && !(c == '_' && alnum(chars.get(j + r))) {
                    return Some(j);
                }
                j += r;
            }
            _ => j += 1,
        }
    }
    None
}

/// A `<http://…>` autolink at `i`: `(url, index after '>')` if the URL is safe.
fn autolink(chars: &[char], i: usize) -> Option<(String, usize)> {
    let len = chars[i + 1..].iter().position(|&c| c == '>')?;
    let url: String = chars[i + 1..i + 1 + len].iter().collect();
    is_safe_url(&url).then_some((url, i + len + 2))
}

/// A `[label](url "title")` link at `i`: `(label, url, index after ')')`.
fn md_link(chars: &[char], i: usize) -> Option<(String, String, usize)> {
    let (mut depth, mut j) = (0usize, i);
    let close = loop {
        match chars.get(j)? {
            '\\' => j += 1,
            '[' => depth += 1,
            ']' if depth == 1 => break j,
            ']' => depth -= 1,
            _ => {}
        }
        j += 1;
    };
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let (mut k, mut parens, mut url) = (close + 2, 0usize, String::new());
    if chars.get(k) == Some(&'<') {
        let len = chars[k + 1..].iter().position(|&c| c == '>')?;
        url = chars[k + 1..k + 1 + len].iter().collect();
        k += len + 2;
    } else {
        while let Some(&c) = chars.get(k) {
            match c {
                ')' if parens == 0 => break,
                ')' => parens -= 1,
                '(' => parens += 1,
                c if c.is_whitespace() => break,
                _ => {}
            }
            url.push(c);
            k += 1;
        }
    }
    let skip_ws = |k: usize| k + chars[k..].iter().take_while(|c| c.is_whitespace()).count();
    k = skip_ws(k);
    if let Some(&q @ ('"' | '\'')) = chars.get(k) {
        k = skip_ws(k + 2 + chars[k + 1..].iter().position(|&c| c == q)?);
    }
    (chars.get(k) == Some(&')')).then(|| (chars[i + 1..close].iter().collect(), url, k + 1))
}

/// True for http(s)/mailto URLs that cannot break out of Slack's `<url|label>` syntax.
fn is_safe_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let scheme = LINK_SCHEMES
        .iter()
        .any(|s| lower.starts_with(s) && url.len() > s.len());
    let unsafe_char = |c: char| matches!(c, '|' | '<' | '>') || c.is_whitespace() || c.is_control();
    scheme && !url.contains(unsafe_char)
}

/// `<url|label>` (or `<url>`), with `&` in the URL escaped; `label` is already mrkdwn.
fn link(url: &str, label: &str) -> String {
    let sep = if label.is_empty() { "" } else { "|" };
    format!("<{}{sep}{label}>", url.replace('&', "&amp;"))
}

/// A GFM pipe table starting at `lines[0]`: `(code block, lines used)`.
fn parse_table(lines: &[&str]) -> Option<(String, usize)> {
    let (header, delim) = (lines.first()?, lines.get(1)?);
    if !header.contains('|') || !delim.contains('|') {
        return None;
    }
    let aligns = split_row(delim)
        .iter()
        .map(|cell| {
            let dashes = cell.trim_matches(':');
            let ok = !dashes.is_empty() && dashes.chars().all(|c| c == '-');
            ok.then_some((cell.starts_with(':'), cell.ends_with(':')))
        })
        .collect::<Option<Vec<_>>>()?;
    let mut rows = vec![split_row(header)];
    if rows[0].len() != aligns.len() {
        return None;
    }
    let body = lines[2..]
        .iter()
        .take_while(|l| l.contains('|') && !l.trim().is_empty());
    rows.extend(body.map(|l| split_row(l)));
    let mut widths = vec![3; aligns.len()];
    for row in &mut rows {
        row.resize(aligns.len(), String::new());
        for (cell, w) in row.iter_mut().zip(&mut widths) {
            *cell = cell.replace("**", "").replace("__", "").replace('`', "");
            *w = cell.chars().count().max(*w);
        }
    }
    let render = |row: &[String]| {
        let padded: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(&aligns)
            .map(|((cell, &w), &(left, right))| {
                let gap = w - cell.chars().count();
                let before = match (left, right) {
                    (true, true) => gap / 2,
                    (false, true) => gap,
                    _ => 0,
                };
                format!("{}{cell}{}", " ".repeat(before), " ".repeat(gap - before))
            })
            .collect();
        code_text(padded.join(" | ").trim_end())
    };
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    let mut out = vec![FENCE.to_string(), render(&rows[0]), rule.join("-+-")];
    out.extend(rows[1..].iter().map(|r| render(r)));
    out.push(FENCE.to_string());
    Some((out.join("\n"), rows.len() + 1))
}

/// Splits a table row into trimmed cells on unescaped `|`.
fn split_row(line: &str) -> Vec<String> {
    let t = line.trim().replace("\\|", "\0");
    let t = t.strip_prefix('|').unwrap_or(&t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().replace('\0', "|")).collect()
}

/// Splits mrkdwn into pieces of at most `max_chars` characters (raised to
/// [`MIN_SPLIT_CHARS`]), preferring paragraph breaks, then line breaks, then spaces (each only
/// if it fills enough of the piece), then any char boundary that is not inside an
/// `&amp;`/`&lt;`/`&gt;` entity or a fence line, and never one leaving a partial line "```".
///
/// A code fence line is a line exactly equal to [`FENCE`]. A piece that starts inside a code
/// block gets [`FENCE`] + newline prepended, one that ends inside one gets newline +
/// [`FENCE`] appended (both counted in `max_chars`), so each piece has an even number of
/// fence lines. The run of newlines (or spaces) at a break is dropped, as is whitespace left
/// after the last piece. Empty input gives no pieces.
pub fn split_mrkdwn(text: &str, max_chars: usize) -> Vec<String> {
    let max = max_chars.max(MIN_SPLIT_CHARS);
    let line_start = |s: usize| s == 0 || text.as_bytes()[s - 1] == b'\n';
    let fences = text.match_indices(FENCE).map(|(s, _)| s);
    let fences: Vec<usize> = fences
        .filter(|&s| line_start(s) && fence_line_at(text, s))
        .collect();
    let (mut pieces, mut pos, mut open) = (Vec::new(), 0, false);
    while pos < text.len() && !(pos > 0 && text[pos..].trim().is_empty()) {
        let (end, next) = choose_cut(text, &fences, pos, open, max);
        let before = fences.partition_point(|&f| f < pos);
        let crossed = fences.partition_point(|&f| f + FENCE.len() <= end) - before;
        let open_after = open ^ (crossed % 2 == 1);
        let reopen = if open { REOPEN } else { "" };
        let close = if open_after { CLOSE } else { "" };
        pieces.push(format!("{reopen}{}{close}", &text[pos..end]));
        (pos, open) = (next, open_after);
    }
    pieces
}

/// Picks the end of the piece starting at `pos`: `(chunk end, start of the next chunk)`.
fn choose_cut(text: &str, fences: &[usize], pos: usize, open: bool, max: usize) -> (usize, usize) {
    let prefix = if open { MARKER_CHARS } else { 0 };
    let mut fi = fences.partition_point(|&f| f < pos);
    let (mut n, mut now_open, mut in_angle, mut prev, mut line_start) = (0, open, false, None, pos);
    // Latest candidate (end, chars) per class: paragraph, line, space; then any boundary.
    let mut best: [Option<(usize, usize)>; 3] = [None; 3];
    let (mut any, mut consumed) = (None, pos);
    for (off, c) in text[pos..].char_indices() {
        let b = pos + off;
        let in_fence = matches!(fences.get(fi), Some(&f) if f < b && b < f + FENCE.len());
        let cost = prefix + n + if now_open { MARKER_CHARS } else { 0 };
        // A mid-line cut must not leave a partial line reading "```" in either piece.
        let fake_end = c != '\n' && &text[line_start..b] == FENCE;
        if b > pos && cost <= max && !in_fence && !fake_end && entity_start(text, b).is_none() {
            if prev == Some('\n') || !fence_line_at(text, b) {
                any = Some(b);
            }
            let after_spaces = || text.len() - text[b..].trim_start_matches(' ').len();
            let class = match c {
                '\n' if prev != Some('\n') && text[b..].starts_with("\n\n") => Some(0),
                '\n' if prev != Some('\n') => Some(1),
                ' ' if prev != Some(' ') && !in_angle && !fence_line_at(text, after_spaces()) => {
                    Some(2)
                }
                _ => None,
            };
            if let Some(k) = class {
                best[k] = Some((b, n));
            }
        }
        if prefix + n + 1 > max {
            break;
        }
        (n, prev, consumed) = (n + 1, Some(c), b + c.len_utf8());
        if c == '\n' {
            line_start = b + 1;
        }
        in_angle = match c {
            '<' => true,
            '>' | '\n' => false,
            _ => in_angle,
        };
        while fences.get(fi).is_some_and(|&f| f + FENCE.len() <= consumed) {
            now_open = !now_open;
            fi += 1;
        }
    }
    if consumed == text.len() && prefix + n + usize::from(now_open) * MARKER_CHARS <= max {
        return (text.len(), text.len());
    }
    // A paragraph break filling half the budget, else a line break or space filling a third,
    // else the latest of those, else the latest valid boundary.
    let skip = |end: usize, class: usize| {
        let ch = if class == 2 { ' ' } else { '\n' };
        (end, text.len() - text[end..].trim_start_matches(ch).len())
    };
    let budget = max - prefix;
    let min_fill = [budget / 2, budget / 3, budget / 3];
    for (class, cand) in best.iter().enumerate() {
        if let Some((e, n)) = *cand
            && n >= min_fill[class]
        {
            return skip(e, class);
        }
    }
    let latest = (0..3).filter_map(|k| best[k].map(|(e, _)| (e, k))).max();
    if let Some((e, class)) = latest {
        return skip(e, class);
    }
    let e = any.unwrap_or_else(|| pos + text[pos..].chars().next().map_or(0, char::len_utf8));
    (e, e)
}

/// True if a line reading exactly [`FENCE`] would start at byte `s`.
fn fence_line_at(text: &str, s: usize) -> bool {
    text[s..].starts_with(FENCE)
        && matches!(text.as_bytes().get(s + FENCE.len()), None | Some(b'\n'))
}

/// Start of the `&amp;`/`&lt;`/`&gt;` entity that byte index `b` falls strictly inside.
fn entity_start(text: &str, b: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    (1..5).filter(|&k| k <= b).map(|k| b - k).find(|&s| {
        ENTITIES
            .iter()
            .any(|e| bytes[s..].starts_with(e.as_bytes()) && s + e.len() > b)
    })
}

/// At most `max_chars` characters of `text`; when cut, the text is cut at a char boundary
/// (never inside an escape entity), trailing whitespace is trimmed and `marker` appended,
/// all within `max_chars` (a marker longer than `max_chars` is itself cut).
pub fn truncate_chars(text: &str, max_chars: usize, marker: &str) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let keep = max_chars.saturating_sub(marker.chars().count());
    if keep == 0 {
        return marker.chars().take(max_chars).collect();
    }
    let mut end = text.char_indices().nth(keep).map_or(text.len(), |(b, _)| b);
    if let Some(s) = entity_start(text, end) {
        end = s;
    }
    format!("{}{marker}", text[..end].trim_end())
}

/// The last `max_chars` characters of `text`, starting at a char boundary.
pub fn tail_chars(text: &str, max_chars: usize) -> &str {
    if max_chars == 0 {
        return "";
    }
    match text.char_indices().rev().nth(max_chars - 1) {
        Some((b, _)) => &text[b..],
        None => text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A realistic Claude result: heading, bullets, numbered item, table, code, link, quote.
    const CLAUDE: &str = "## Summary\n\nFixed the **race** in `Queue<T>` & added tests.\n\n- Updated *parser*\n  - nested _item_\n1. First step\n\n| File | Lines |\n|:-----|------:|\n| src/lib.rs | 42 |\n| a.rs | 7 |\n\n```rust\nfn f<T: Copy>(a: bool, b: bool) -> bool { a && b } // **not bold** [x](http://y)\n```\n\nSee [the PR](https://github.com/o/r/pull/1?a=1&b=2) ~~maybe~~.\n> quoted > text";

    /// `converts! { md => want, … }` asserts `markdown_to_mrkdwn(md) == want` for each pair.
    macro_rules! converts {
        ($($md:expr => $want:expr),* $(,)?) => {
            $(assert_eq!(markdown_to_mrkdwn($md), $want, "input: {:?}", $md);)*
        };
    }

    /// `splits! { (text, max) => [pieces…], … }` asserts `split_mrkdwn(text, max)`.
    macro_rules! splits {
        ($(($text:expr, $max:expr) => [$($piece:expr),*]),* $(,)?) => {
            $({
                let want: &[&str] = &[$($piece),*];
                assert_eq!(split_mrkdwn($text, $max), want, "{:?}", $text);
            })*
        };
    }

    #[test]
    fn converts_realistic_claude_summary() {
        converts! {
            CLAUDE => "*Summary*\n\nFixed the *race* in `Queue&lt;T&gt;` &amp; added tests.\n\n\
                • Updated _parser_\n  • nested _item_\n1. First step\n\n\
                ```\nFile       | Lines\n-----------+------\nsrc/lib.rs |    42\na.rs       |     7\n```\n\n\
                ```\nfn f&lt;T: Copy&gt;(a: bool, b: bool) -&gt; bool { a &amp;&amp; b } \
                // **not bold** [x](http://y)\n```\n\n\
                See <https://github.com/o/r/pull/1?a=1&amp;b=2|the PR> ~maybe~.\n> quoted &gt; text",
        }
    }

    #[test]
    fn escapes_and_neutralises_hostile_input() {
        assert_eq!(escape("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
        assert_eq!(escape("*_~`|\"'"), "*_~`|\"'");
        converts! {
            "<!channel> <@U123> <!here|x>" => "&lt;!channel&gt; &lt;@U123&gt; &lt;!here|x&gt;",
            "<https://evil|click> <b>" => "&lt;https://evil|click&gt; &lt;b&gt;",
            "[<!channel>](https://a.b)" => "<https://a.b|&lt;!channel&gt;>",
            "`<@U1>` &" => "`&lt;@U1&gt;` &amp;",
        }
    }

    #[test]
    fn converts_headings_and_emphasis() {
        converts! {
            "# Title\n###### **Deep** `x` ##" => "*Title*\n*Deep `x`*",
            "# C#\n#hashtag\n#" => "*C#*\n#hashtag\n",
            "**b** __b__ *i* _i_ ~~s~~" => "*b* *b* _i_ _i_ ~s~",
            "***bi*** **a *b* c**" => "*_bi_* *a _b_ c*",
            "snake_case_name 2 * 3 * 4 ~5 min" => "snake_case_name 2 * 3 * 4 ~5 min",
            "**unclosed and \\*escaped\\*" => "**unclosed and *escaped*",
            "`**code**` **`code`**" => "`**code**` *`code`*",
        }
    }

    #[test]
    fn converts_links() {
        converts! {
            "[docs](https://x.io/a_(b))" => "<https://x.io/a_(b)|docs>",
            "[**b**](http://x \"title\")" => "<http://x|*b*>",
            "![img](https://x/i.png) [m](mailto:a@b.c)" => "<https://x/i.png|img> <mailto:a@b.c|m>",
            "[x](javascript:alert(1))" => "x (javascript:alert(1))",
            "[x](#anchor) [y](<https://a|b>)" => "x (#anchor) y (https://a|b)",
            "<https://a.b/c?d=1&e=2> [no link]" => "<https://a.b/c?d=1&amp;e=2> [no link]",
        }
    }

    #[test]
    fn converts_lists_quotes_and_rules() {
        converts! {
            "- a\n* b\n+ c\n  - nested\n    * deeper" => "• a\n• b\n• c\n  • nested\n    • deeper",
            "- [ ] todo\n- [x] done\n10. ten\n2) two" => "• ☐ todo\n• ☑ done\n10. ten\n2) two",
            "---\n* * *\n> **b** > x\n>> y" => "──────────\n──────────\n> *b* &gt; x\n> y",
        }
    }

    #[test]
    fn converts_tables() {
        converts! {
            "| Name | Status | n |\n| --- | :---: | ---: |\n| `a` | **ok** | 1 |\n\
             | long name | fail \\| x | 100 |\nafter"
                => "```\nName      |  Status  |   n\n----------+----------+----\n\
                    a         |    ok    |   1\nlong name | fail | x | 100\n```\nafter",
            "a | b\nno table" => "a | b\nno table",
            "|a|b|\n|-|-|\n|<!x>|" => "```\na    | b\n-----+----\n&lt;!x&gt; |\n```",
        }
    }

    #[test]
    fn converts_code_blocks() {
        converts! {
            "~~~py\nx = a<b and c>d  # *x*\n~~~" => "```\nx = a&lt;b and c&gt;d  # *x*\n```",
            "1. step\n   ```sh\n   echo **hi** && ls\n   ```"
                => "1. step\n```\necho **hi** &amp;&amp; ls\n```",
            "````\n```\n````" => "```\n`\u{200B}`\u{200B}`\n```",
            "text\n```rust\nlet x = 1;" => "text\n```\nlet x = 1;\n```",
            "```one``` and ``` stray" => "`one` and `\u{200B}`\u{200B}` stray",
        }
    }

    #[test]
    fn splits_at_preferred_boundaries() {
        assert!(split_mrkdwn("", 100).is_empty());
        splits! {
            ("short", 100) => ["short"],
            ("paragraph number one\n\nline two\nline three", 30) => ["paragraph number one", "line two\nline three"],
            ("para\n\nline one is long\nline two", 30) => ["para\n\nline one is long", "line two"],
            ("word word word word", 16) => ["word word word", "word"],
            ("😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀", 16) => ["😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀", "😀😀"],
            ("aaaaaaaaaaaaa&amp;b", 16) => ["aaaaaaaaaaaaa", "&amp;b"],
            ("intro\n```\nline one\nline two\nline three\n```\nend", 24)
                => ["intro\n```\nline one\n```", "```\nline two\n```", "```\nline three\n```\nend"],
        }
    }

    #[test]
    fn split_keeps_realistic_output_within_limits() {
        let md = markdown_to_mrkdwn(&CLAUDE.repeat(40));
        for max in [16, 30, 80, SECTION_TEXT_MAX] {
            let pieces = split_mrkdwn(&md, max);
            let fits = |p: &String| p.chars().count() <= max && fence_lines(p).is_multiple_of(2);
            assert!(pieces.iter().all(fits) && reconstructs(&md, &pieces));
        }
    }

    #[test]
    fn truncates_and_tails() {
        assert_eq!(truncate_chars("hello", 5, "…"), "hello");
        assert_eq!(truncate_chars("hello world", 8, "…"), "hello w…");
        assert_eq!(truncate_chars("hello world", 7, "…"), "hello…");
        assert_eq!(truncate_chars("ab&amp;cd", 5, "…"), "ab…");
        assert_eq!(truncate_chars("日本語テキスト", 4, "…"), "日本語…");
        assert_eq!(truncate_chars("abcdef", 2, "[cut]"), "[c");
        assert_eq!(tail_chars("日本語テキスト", 3), "キスト");
        assert_eq!((tail_chars("abc", 10), tail_chars("abc", 0)), ("abc", ""));
    }

    fn fence_lines(s: &str) -> usize {
        s.split('\n').filter(|l| *l == FENCE).count()
    }

    /// Whether `input` is inside a code block at byte `end` (odd number of fence lines before).
    fn open_at(input: &str, end: usize) -> bool {
        let line_done = input[end..].is_empty() || input[end..].starts_with('\n');
        let partial = !line_done && input[..end].rsplit('\n').next() == Some(FENCE);
        (fence_lines(&input[..end]) - usize::from(partial)) % 2 == 1
    }

    /// The reconstruction property: `input` == c1 g1 c2 g2 … cn gn, where each gap `gi` is
    /// whitespace only and `ci` is piece i minus the markers split added: a leading "```\n"
    /// iff input is inside a code block at ci's start, a trailing "\n```" iff it is at ci's
    /// end. Both "marker added" and "original fence" readings of a trailing "\n```" are tried.
    /// Chunk ends must also not fall inside an `&amp;`/`&lt;`/`&gt;` entity of the input.
    fn reconstructs(input: &str, pieces: &[String]) -> bool {
        let mut todo = vec![(0, 0, false)]; // (piece index, input position, inside code)
        while let Some((i, pos, open)) = todo.pop() {
            if i == pieces.len() && input[pos..].trim().is_empty() {
                return true;
            }
            let reopen = if open { REOPEN } else { "" };
            let Some(body) = pieces.get(i).and_then(|p| p.strip_prefix(reopen)) else {
                continue;
            };
            let mut readings = vec![(body, false)];
            readings.extend(body.strip_suffix(CLOSE).map(|b| (b, true)));
            for (chunk, closed_by_split) in readings {
                let gap = input[pos..].len() - input[pos..].trim_start().len();
                let Some(k) = (pos..=pos + gap)
                    .find(|&k| input.is_char_boundary(k) && input[k..].starts_with(chunk))
                else {
                    continue;
                };
                let end = k + chunk.len();
                if !chunk.is_empty()
                    && entity_start(input, k).is_none()
                    && entity_start(input, end).is_none()
                    && open_at(input, end) == closed_by_split
                {
                    todo.push((i + 1, end, closed_by_split));
                }
            }
        }
        false
    }

    /// Every `<` opens a link we made (safe URL, label without `<`/`>`); every other `>` is
    /// a quote marker at a line start.
    fn only_own_links(out: &str) -> bool {
        out.split('\n').all(|line| {
            let body = match line.strip_prefix('>') {
                Some(r) if r.is_empty() || r.starts_with(' ') => r,
                _ => line,
            };
            let mut parts = body.split('<');
            !parts.next().unwrap().contains('>')
                && parts.all(|seg| {
                    seg.split_once('>').is_some_and(|(inner, after)| {
                        let url = inner.split('|').next().unwrap().replace("&amp;", "&");
                        is_safe_url(&url) && !after.contains('>')
                    })
                })
        })
    }

    /// Short hostile fragments: Markdown/Slack syntax, whitespace, multi-byte text.
    #[rustfmt::skip]
    const ATOMS: &[&str] = &[
        "```\n", "\n```\n", "```rust\n", "~~~\n", "`", "*", "**", "_", "__", "~~", "<", ">", "&",
        "|", "#", "# ", "- ", "> ", "\n", "\n\n", " ", "  ", "<@U1>", "😀", "漢字", "e\u{301}",
        "👩‍👩‍👧", "&amp;", "<a|b>",
    ];
    /// Longer hostile fragments: mentions, Slack links, Markdown links, a table.
    const CHUNKS: &[&str] = &[
        "<!channel>",
        "<http://a|b>",
        "[a](http://x.y)",
        "|a|b|\n|-|-|\n",
    ];

    /// Long, hostile, multi-byte text: a mix of Markdown/Slack syntax, emoji, CJK,
    /// combining characters, words and arbitrary chars.
    pub(crate) fn hostile() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            prop::sample::select(ATOMS).prop_map(String::from),
            prop::sample::select(CHUNKS).prop_map(String::from),
            "[a-zA-Z0-9 ]{1,12}",
            any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(atom, 0..400).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn conversion_is_safe(md in hostile()) {
            let out = markdown_to_mrkdwn(&md);
            prop_assert!(!out.contains("<!") && !out.contains("<@"), "{out:?}");
            prop_assert!(only_own_links(&out), "{out:?}");
            prop_assert!(fence_lines(&out).is_multiple_of(2), "{out:?}");
            prop_assert!(out.split('\n').all(|l| l == FENCE || !l.contains(FENCE)), "{out:?}");
        }

        #[test]
        fn split_respects_limits_and_content(md in hostile(), max in 16usize..400, convert: bool) {
            let text = if convert { markdown_to_mrkdwn(&md) } else { md };
            let pieces = split_mrkdwn(&text, max);
            prop_assert_eq!(pieces.is_empty(), text.is_empty());
            for p in &pieces {
                prop_assert!(p.chars().count() <= max, "{p:?}");
                prop_assert!(fence_lines(p).is_multiple_of(2), "{p:?}");
            }
            prop_assert!(reconstructs(&text, &pieces), "{text:?} -> {pieces:?}");
        }

        #[test]
        fn truncate_and_tail_respect_bounds(text in hostile(), max in 0usize..200) {
            let count = text.chars().count();
            let t = truncate_chars(&text, max, "…");
            prop_assert!(t.chars().count() <= max);
            if count <= max {
                prop_assert_eq!(&t, &text);
            } else if max > 0 {
                prop_assert!(text.starts_with(t.strip_suffix('…').unwrap()));
            }
            let tail = tail_chars(&text, max);
            prop_assert_eq!(tail.chars().count(), count.min(max));
            prop_assert!(text.ends_with(tail));
        }
    }
}
