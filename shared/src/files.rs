//! Files attached in Slack, handed to a task: the limits check and the safe
//! name each is written under in the task's `.baton/files/`.

use crate::limits::{MAX_FILE_BYTES, MAX_FILE_NAME_BYTES, MAX_FILES_PER_TASK};

/// The folder, inside a task's directory, its attached files are written to.
pub const FILES_DIR: &str = ".baton/files";

/// An attachment a task cannot take, with what would allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileRefusal {
    /// More files than a task takes.
    #[error(
        "{count} files are attached; a task takes at most {MAX_FILES_PER_TASK}. Attach fewer (or zip them into one)."
    )]
    TooMany {
        /// How many were attached.
        count: usize,
    },
    /// One file is larger than a task takes.
    #[error(
        "`{name}` is {size} bytes; a task takes files of at most {MAX_FILE_BYTES} bytes (20 MiB). Attach a smaller file, or put it where the project can reach it and name it in the prompt."
    )]
    TooLarge {
        /// The file's name as attached.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// Checks the attachments of one message, as `(name, size)` pairs, against
/// [`MAX_FILES_PER_TASK`] and [`MAX_FILE_BYTES`].
pub fn check_attachments<'a>(
    files: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), FileRefusal> {
    let files: Vec<(&str, u64)> = files.into_iter().collect();
    if files.len() > MAX_FILES_PER_TASK {
        return Err(FileRefusal::TooMany { count: files.len() });
    }
    match files.iter().find(|(_, size)| *size > MAX_FILE_BYTES) {
        Some((name, size)) => Err(FileRefusal::TooLarge {
            name: (*name).to_owned(),
            size: *size,
        }),
        None => Ok(()),
    }
}

/// A name safe to write under [`FILES_DIR`]: the last path component only,
/// no control characters, no leading dots (so never `.`/`..` nor hidden), at
/// most [`MAX_FILE_NAME_BYTES`] bytes with the extension kept; `file` when
/// nothing is left. Two attachments may still share a name: see
/// [`unique_names`].
pub fn sanitize_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| match c {
            c if c.is_control() => '_',
            ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        return "file".to_owned();
    }
    if cleaned.len() <= MAX_FILE_NAME_BYTES {
        return cleaned.to_owned();
    }
    let (stem, ext) = match cleaned.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => (stem, format!(".{ext}")),
        _ => (cleaned, String::new()),
    };
    let mut cut = MAX_FILE_NAME_BYTES - ext.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ext}", &stem[..cut])
}

/// Safe, distinct names for a task's attachments, in order: a repeated name
/// gets `-2`, `-3`… before its extension.
pub fn unique_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let safe = sanitize_file_name(name);
        let mut candidate = safe.clone();
        let mut n = 2;
        while out.contains(&candidate) {
            candidate = numbered(&safe, n);
            n += 1;
        }
        out.push(candidate);
    }
    out
}

/// `safe` with `-n` before its extension, its stem cut so that the whole
/// stays within [`MAX_FILE_NAME_BYTES`] (and so stays a safe name).
fn numbered(safe: &str, n: usize) -> String {
    let (stem, ext) = match safe.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => (stem, format!(".{ext}")),
        _ => (safe, String::new()),
    };
    let suffix = format!("-{n}{ext}");
    let mut cut = stem
        .len()
        .min(MAX_FILE_NAME_BYTES.saturating_sub(suffix.len()));
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", stem[..cut].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_leave_the_files_folder() {
        for hostile in [
            "../../etc/passwd",
            "..\\..\\windows\\system32",
            "/etc/shadow",
            "..",
            ".",
            "a/../../b",
            "\u{0}evil\n.txt",
            "...",
            "",
        ] {
            let safe = sanitize_file_name(hostile);
            assert!(!safe.is_empty(), "{hostile:?}");
            assert!(
                !safe.contains('/') && !safe.contains('\\'),
                "{hostile:?} -> {safe}"
            );
            assert!(!safe.starts_with('.'), "{hostile:?} -> {safe}");
            assert!(!safe.chars().any(char::is_control), "{hostile:?} -> {safe}");
        }
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name(".env"), "env");
        assert_eq!(sanitize_file_name(".."), "file");
        assert_eq!(sanitize_file_name("report final.pdf"), "report final.pdf");
    }

    #[test]
    fn long_names_are_cut_keeping_the_extension() {
        let name = format!("{}.tar.gz", "é".repeat(200));
        let safe = sanitize_file_name(&name);
        assert!(safe.len() <= MAX_FILE_NAME_BYTES, "{}", safe.len());
        assert!(safe.ends_with(".gz"));
    }

    #[test]
    fn repeated_names_become_distinct() {
        assert_eq!(
            unique_names(["a.txt", "dir/a.txt", "a.txt", "b"]),
            ["a.txt", "a-2.txt", "a-3.txt", "b"]
        );
    }

    #[test]
    fn repeated_long_names_stay_distinct_safe_and_within_the_limit() {
        let long = format!("{}.txt", "é".repeat(100));
        let names = unique_names([long.as_str(), long.as_str(), long.as_str()]);
        for name in &names {
            assert!(name.len() <= MAX_FILE_NAME_BYTES, "{}", name.len());
            assert_eq!(&sanitize_file_name(name), name, "a safe name as it is");
            assert!(name.ends_with(".txt"), "{name}");
        }
        assert!(names[1].ends_with("-2.txt") && names[2].ends_with("-3.txt"));
        assert_ne!(names[0], names[1]);
    }

    #[test]
    fn five_files_of_twenty_mib_are_taken() {
        let files = vec![("a", MAX_FILE_BYTES); MAX_FILES_PER_TASK];
        assert_eq!(check_attachments(files), Ok(()));
        assert_eq!(check_attachments([]), Ok(()));
    }

    #[test]
    fn a_sixth_file_is_refused_saying_what_would_allow_it() {
        let files = vec![("a", 1); MAX_FILES_PER_TASK + 1];
        let err = check_attachments(files).unwrap_err();
        assert_eq!(err, FileRefusal::TooMany { count: 6 });
        assert!(err.to_string().contains("at most 5. Attach fewer"));
    }

    #[test]
    fn a_file_over_twenty_mib_is_refused_by_name() {
        let err = check_attachments([("ok.txt", 10), ("big.iso", MAX_FILE_BYTES + 1)]).unwrap_err();
        assert_eq!(
            err,
            FileRefusal::TooLarge {
                name: "big.iso".into(),
                size: MAX_FILE_BYTES + 1
            }
        );
        assert!(err.to_string().contains("`big.iso`"));
        assert!(err.to_string().contains("Attach a smaller file"));
    }
}
