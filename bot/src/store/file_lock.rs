//! One process per SQLite file: a bot holds an exclusive lock on a file beside
//! its database for as long as it runs, and a second bot on the same file is
//! refused (SQLite serves one process; several share PostgreSQL).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// What is appended to the database's path to name its lock file.
const LOCK_SUFFIX: &str = ".lock";

/// The lock on a SQLite database, held while this value lives. The kernel
/// releases it when the process ends, however it ends (`kill -9` included).
#[derive(Debug)]
pub struct SqliteLock {
    /// The locked lock file (unlocked when dropped).
    _file: Flock<File>,
    /// Its path, for logs.
    pub path: PathBuf,
}

/// The database file a `sqlite:` URL names; None for an in-memory database
/// and for any other database.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let memory =
        path.is_empty() || path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory");
    (!memory).then(|| PathBuf::from(path))
}

/// Takes the lock of the SQLite database at `url` (`<database>.lock`); None
/// when `url` is not a SQLite file. Fails, naming the process that holds it,
/// when another process has it.
pub fn lock_sqlite(url: &str) -> anyhow::Result<Option<SqliteLock>> {
    let Some(db) = sqlite_path(url) else {
        return Ok(None);
    };
    let mut path = db.clone().into_os_string();
    path.push(LOCK_SUFFIX);
    let path = PathBuf::from(path);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("Cannot open the lock file {}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            anyhow::bail!(already_running(&db, &path, holder(&mut file)))
        }
        Err((_, errno)) => {
            return Err(errno).with_context(|| format!("Cannot lock {}", path.display()));
        }
    };
    // Who holds it, for the message a second process prints.
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .with_context(|| format!("Cannot write the lock file {}", path.display()))?;
    Ok(Some(SqliteLock { _file: file, path }))
}

/// The process id written in a lock file, if it can be read.
fn holder(file: &mut File) -> Option<String> {
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The refusal a second process prints: what is wrong and what would allow it.
fn already_running(db: &Path, lock: &Path, pid: Option<String>) -> String {
    let who = match pid {
        Some(pid) => format!("another baton-bot process (pid {pid})"),
        None => "another baton-bot process".to_owned(),
    };
    format!(
        "Cannot start: {who} is already running on the SQLite database {} (it holds {}). \
         SQLite serves one bot process: stop the other one first, or run several \
         processes on PostgreSQL (DATABASE_URL=postgres://...).",
        db.display(),
        lock.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file_and_others_none() {
        let path = |u: &str| sqlite_path(u).map(|p| p.display().to_string());
        assert_eq!(
            path("sqlite://baton.db?mode=rwc").as_deref(),
            Some("baton.db")
        );
        assert_eq!(
            path("sqlite:///var/lib/b.db").as_deref(),
            Some("/var/lib/b.db")
        );
        assert_eq!(path("sqlite:b.db").as_deref(), Some("b.db"));
        assert_eq!(path("sqlite::memory:"), None);
        assert_eq!(path("sqlite://x.db?mode=memory&cache=shared"), None);
        assert_eq!(path("postgres://u@h/db"), None);
    }

    #[test]
    fn a_second_lock_on_one_file_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        let first = lock_sqlite(&url).expect("lock").expect("a file");
        let err = lock_sqlite(&url).expect_err("held").to_string();
        assert!(err.contains("already running"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(
            err.contains("PostgreSQL"),
            "says what would allow it: {err}"
        );
        drop(first);
        assert!(lock_sqlite(&url).expect("free again").is_some());
        assert!(lock_sqlite("sqlite::memory:").expect("memory").is_none());
    }
}
