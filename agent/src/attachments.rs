//! Files attached to a task in Slack, written into the task's directory
//! under `.baton/files/` and named in the prompt (see docs/protocol.md,
//! "Files attached to a task").

use std::io;
use std::path::{Path, PathBuf};

use baton_shared::files::{FILES_DIR, sanitize_file_name};
use baton_shared::limits::MAX_FILE_BYTES;

/// Writes one attachment into `task_dir`'s [`FILES_DIR`] under its safe
/// name, creating the folder; returns the path relative to `task_dir`.
/// Refuses a name that is not already safe, a file over
/// [`MAX_FILE_BYTES`], and a `.baton` or `files` that is a symbolic link
/// (which could point outside the task's directory).
pub fn write_attachment(task_dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    if sanitize_file_name(name) != name {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the file name {name:?} is not a safe name"),
        ));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let mut dir = task_dir.to_path_buf();
    for part in Path::new(FILES_DIR).components() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a plain folder", dir.display()),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&dir)?,
            Err(e) => return Err(e),
        }
    }
    let path = dir.join(name);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path)?;
    }
    std::fs::write(&path, bytes)?;
    Ok(Path::new(FILES_DIR).join(name))
}

/// The prompt with one line per attached file, so the executor knows where
/// they are: `Attached: .baton/files/NAME (SIZE bytes)`.
pub fn prompt_with_files(prompt: &str, files: &[(PathBuf, u64)]) -> String {
    if files.is_empty() {
        return prompt.to_owned();
    }
    let mut out = prompt.trim_end().to_owned();
    out.push_str("\n\n");
    for (path, size) in files {
        out.push_str(&format!("Attached: {} ({size} bytes)\n", path.display()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_file_lands_in_the_files_folder_and_the_prompt_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let rel = write_attachment(dir.path(), "notes.txt", b"hello").unwrap();
        assert_eq!(rel, Path::new(".baton/files/notes.txt"));
        assert_eq!(std::fs::read(dir.path().join(&rel)).unwrap(), b"hello");
        let prompt = prompt_with_files("read it", &[(rel, 5)]);
        assert_eq!(
            prompt,
            "read it\n\nAttached: .baton/files/notes.txt (5 bytes)\n"
        );
        assert_eq!(prompt_with_files("as is", &[]), "as is");
    }

    #[test]
    fn unsafe_names_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../escape.txt", "a/b", ".hidden", "", ".."] {
            assert!(write_attachment(dir.path(), bad, b"x").is_err(), "{bad:?}");
        }
        assert!(!dir.path().join(".baton").exists());
        assert!(!dir.path().parent().unwrap().join("escape.txt").exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_files_folder_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".baton")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(".baton/files")).unwrap();
        assert!(write_attachment(dir.path(), "a.txt", b"x").is_err());
        assert!(!outside.path().join("a.txt").exists());
    }
}
