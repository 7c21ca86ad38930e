//! Worktree isolation: each task of an `isolation = "worktree"` project runs in its own git
//! worktree on a new branch `baton/task-ID` from the project's current `HEAD`, so `parallel = N`
//! tasks of one project run at once without touching each other. A follow-up that resumes a
//! session continues in that session's worktree. The result names the branch and its diff
//! stat. A finished task's worktree is removed after `worktree_keep_days`; its branch is kept.
//!
//! Under `STATE_DIR/worktrees/PROJECT/`: `task-ID/` (the worktree), `task-ID.base` (the commit
//! it started from), `task-ID.done` (present while it is not running; its mtime is when it
//! last finished) and `session-SESSION` (the worktree a session's follow-ups continue in).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use baton_shared::{SessionId, TaskId};

use crate::config::ProjectConfig;

/// Default days a finished task's worktree is kept.
pub const DEFAULT_KEEP_DAYS: u64 = 7;
/// The branch of task N is this followed by N.
pub const BRANCH_PREFIX: &str = "baton/task-";
/// Longest diff stat shown in a result, in bytes (its end is kept: the summary line).
pub const MAX_DIFF_STAT_BYTES: usize = 4 * 1024;

/// A task's worktree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worktree {
    /// Where the task runs.
    pub dir: PathBuf,
    /// Its branch, `baton/task-ID` of the task that created it.
    pub branch: String,
    /// The commit it started from.
    pub base: String,
    /// The folder of the project's worktrees (markers live there).
    home: PathBuf,
    /// `task-ID`, the name of the worktree.
    name: String,
}

/// The folder of a project's worktrees.
pub fn project_root(state_dir: &Path, project: &str) -> PathBuf {
    state_dir.join("worktrees").join(project)
}

/// Runs git with `args` in `dir`; its trimmed stdout, or an error quoting its stderr.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    } else {
        Err(format!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why `path` cannot hold worktrees (not a git repository, or one without a commit), if so.
pub fn check_repository(path: &Path) -> Result<(), String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(path)
        .args(["rev-parse", "--verify", "--quiet", "HEAD"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git to check `{}`: {e}", path.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{}` is not a git repository with a commit, which isolation = \"worktree\" needs \
         (run `git init` and commit, or remove `isolation`)",
        path.display()
    ))
}

/// The worktree for task `task`: the one `session` continues in, if it still exists, else a
/// new one on branch `baton/task-ID` from the project's `HEAD`.
pub async fn prepare(
    state_dir: &Path,
    project: &ProjectConfig,
    task: TaskId,
    session: Option<&SessionId>,
) -> Result<Worktree, String> {
    let home = project_root(state_dir, project.name.as_str());
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    let continued = session
        .and_then(|s| std::fs::read_to_string(home.join(format!("session-{s}"))).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| home.join(name).is_dir());
    if let Some(name) = continued {
        let dir = home.join(&name);
        let base = std::fs::read_to_string(home.join(format!("{name}.base"))).unwrap_or_default();
        let branch = git(&dir, &["rev-parse", "--abbrev-ref", "HEAD"]).await?;
        // Running again: not to be removed while it runs.
        let _ = std::fs::remove_file(home.join(format!("{name}.done")));
        return Ok(Worktree {
            dir,
            branch,
            base: base.trim().to_owned(),
            home,
            name,
        });
    }
    let name = format!("task-{}", task.0);
    let dir = home.join(&name);
    let branch = format!("{BRANCH_PREFIX}{}", task.0);
    let base = git(&project.path, &["rev-parse", "HEAD"]).await?;
    let dir_arg = dir.to_string_lossy().into_owned();
    git(
        &project.path,
        &["worktree", "add", "--quiet", "-b", &branch, &dir_arg, &base],
    )
    .await?;
    std::fs::write(home.join(format!("{name}.base")), &base)
        .map_err(|e| format!("cannot record the worktree's base: {e}"))?;
    Ok(Worktree {
        dir,
        branch,
        base,
        home,
        name,
    })
}

impl Worktree {
    /// What the task changed: the branch and `git diff --stat` from where it started (new
    /// files included), for the end of the result.
    pub async fn summary(&self) -> String {
        // New files count too: intent-to-add puts them in the diff without staging content.
        let _ = git(&self.dir, &["add", "--all", "--intent-to-add"]).await;
        let short = self.base.get(..7).unwrap_or(&self.base);
        match git(&self.dir, &["diff", "--stat", &self.base]).await {
            Ok(stat) if stat.trim().is_empty() => {
                format!("Branch `{}` (from {short}): no changes.", self.branch)
            }
            Ok(stat) => {
                let mut start = stat.len().saturating_sub(MAX_DIFF_STAT_BYTES);
                while !stat.is_char_boundary(start) {
                    start += 1;
                }
                format!(
                    "Branch `{}` (from {short}):\n```\n{}\n```",
                    self.branch,
                    &stat[start..]
                )
            }
            Err(e) => format!("Branch `{}`: {e}", self.branch),
        }
    }

    /// The task ended: follow-ups of `session` continue here, and the keep period starts.
    pub fn finished(&self, session: Option<&str>) {
        if let Some(s) = session.and_then(|s| SessionId::new(s).ok()) {
            let _ = std::fs::write(self.home.join(format!("session-{s}")), &self.name);
        }
        let _ = std::fs::write(self.home.join(format!("{}.done", self.name)), "");
    }
}

/// Removes the worktrees of `project` that finished more than `keep` before `now` (branches
/// are kept), with their markers; returns how many were removed.
pub fn prune(state_dir: &Path, project: &ProjectConfig, keep: Duration, now: SystemTime) -> usize {
    let home = project_root(state_dir, project.name.as_str());
    let Ok(entries) = std::fs::read_dir(&home) else {
        return 0;
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".done") else {
            continue;
        };
        let finished = entry.metadata().and_then(|m| m.modified());
        let old = finished.is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= keep));
        if !old {
            continue;
        }
        let dir = home.join(name);
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(&project.path)
            .args(["worktree", "remove", "--force"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) || !dir.exists() {
            let _ = std::fs::remove_file(entry.path());
            let _ = std::fs::remove_file(home.join(format!("{name}.base")));
            removed.push(name.to_owned());
        } else {
            tracing::warn!(worktree = %dir.display(), "cannot remove an expired worktree");
        }
    }
    // Sessions that pointed at a removed worktree start afresh.
    if let Ok(entries) = std::fs::read_dir(&home) {
        for entry in entries.flatten() {
            let is_session = entry.file_name().to_string_lossy().starts_with("session-");
            let target = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if is_session && removed.iter().any(|r| *r == target.trim()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    removed.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn repo(dir: &Path) -> ProjectConfig {
        let path = dir.join("repo");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("a.txt"), "a\n").unwrap();
        for args in [
            &["init", "--quiet"][..],
            &["add", "a.txt"],
            &[
                "-c",
                "user.email=t@e",
                "-c",
                "user.name=t",
                "commit",
                "--quiet",
                "-m",
                "a",
            ],
        ] {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(&path)
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "git {args:?}");
        }
        let text = format!(
            "name = \"web\"\npath = \"{}\"\nexecutor = \"command\"\ncommand = [\"x\"]\nisolation = \"worktree\"\n",
            path.display()
        );
        toml::from_str(&text).unwrap()
    }

    #[tokio::test]
    async fn a_follow_up_continues_in_its_sessions_worktree() {
        let dir = tempfile::tempdir().unwrap();
        let project = repo(dir.path());
        let state = dir.path().join("state");
        let first = prepare(&state, &project, TaskId(1), None).await.unwrap();
        assert_eq!(first.branch, "baton/task-1");
        std::fs::write(first.dir.join("b.txt"), "b\n").unwrap();
        let summary = first.summary().await;
        assert!(
            summary.contains("b.txt") && summary.contains("1 file changed"),
            "{summary}"
        );
        first.finished(Some("sess-1"));

        let session = SessionId::new("sess-1").unwrap();
        let follow = prepare(&state, &project, TaskId(2), Some(&session))
            .await
            .unwrap();
        assert_eq!(
            (&follow.dir, follow.branch.as_str()),
            (&first.dir, "baton/task-1")
        );
        assert!(follow.dir.join("b.txt").exists(), "the same tree");
        // Running again: not removable until it finishes.
        let far = SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
        assert_eq!(prune(&state, &project, Duration::ZERO, far), 0);
        follow.finished(Some("sess-1"));

        let other = SessionId::new("unknown").unwrap();
        let fresh = prepare(&state, &project, TaskId(3), Some(&other))
            .await
            .unwrap();
        assert_eq!(fresh.branch, "baton/task-3");
        assert!(!fresh.dir.join("b.txt").exists());
        assert_eq!(
            fresh.summary().await,
            format!(
                "Branch `baton/task-3` (from {}): no changes.",
                &fresh.base[..7]
            )
        );
        fresh.finished(None);

        assert_eq!(prune(&state, &project, Duration::ZERO, far), 2);
        let again = prepare(&state, &project, TaskId(4), Some(&session))
            .await
            .unwrap();
        assert_eq!(
            again.branch, "baton/task-4",
            "a pruned session starts afresh"
        );
        assert!(check_repository(&project.path).is_ok());
        assert!(
            check_repository(dir.path())
                .unwrap_err()
                .contains("not a git repository")
        );
    }
}
