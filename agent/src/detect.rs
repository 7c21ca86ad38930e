//! `baton-agent detect`: which supported coding agent CLIs are on the PATH, their versions,
//! whether they look logged in, and a `[[project]]` block for the current directory to paste
//! into `agent.toml`. It only looks: it reads the PATH, runs `CLI --version` and checks for the
//! credential files and variables each CLI uses, never the network.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_shared::limits::MAX_NAME_CHARS;

use crate::config::ExecutorKind;

/// How long `CLI --version` may take.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a CLI keeps its login, and how to log in.
struct Credentials {
    /// Variables that hold a key.
    vars: &'static [&'static str],
    /// Files (relative to a base directory) that hold a login.
    files: &'static [&'static str],
    /// A variable naming the base directory, used instead of `$HOME/<default_base>`.
    base_var: Option<&'static str>,
    /// The base directory under `$HOME` when `base_var` is unset.
    default_base: &'static str,
    /// What to do when none is found.
    how: &'static str,
}

fn credentials(kind: ExecutorKind) -> Credentials {
    match kind {
        ExecutorKind::Codex => Credentials {
            vars: &["CODEX_API_KEY", "OPENAI_API_KEY"],
            files: &["auth.json"],
            base_var: Some("CODEX_HOME"),
            default_base: ".codex",
            how: "run `codex login`",
        },
        ExecutorKind::Gemini => Credentials {
            vars: &[
                "GEMINI_API_KEY",
                "GOOGLE_API_KEY",
                "GOOGLE_APPLICATION_CREDENTIALS",
            ],
            files: &["oauth_creds.json"],
            base_var: None,
            default_base: ".gemini",
            how: "run `gemini` once and sign in, or set GEMINI_API_KEY",
        },
        ExecutorKind::Opencode => Credentials {
            vars: &[],
            files: &["opencode/auth.json"],
            base_var: Some("XDG_DATA_HOME"),
            default_base: ".local/share",
            how: "run `opencode auth login`",
        },
        ExecutorKind::Claude | ExecutorKind::Command => Credentials {
            vars: &["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"],
            files: &[".credentials.json"],
            base_var: Some("CLAUDE_CONFIG_DIR"),
            default_base: ".claude",
            how: "run `claude` and /login, or set ANTHROPIC_API_KEY",
        },
    }
}

/// Whether a CLI looks logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// A credential was found: which one.
    Found(String),
    /// None was found: what to do.
    Missing(&'static str),
}

/// One supported CLI found on the PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Which executor it is for.
    pub kind: ExecutorKind,
    /// Where it is.
    pub path: PathBuf,
    /// The first line `--version` printed, or why there is none.
    pub version: String,
    /// Whether it looks logged in.
    pub login: Login,
}

/// The first executable file called `name` in the directories of `path_var`.
pub fn find_on_path(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether `kind` looks logged in, from the variables `env` gives and the files under `home`.
pub fn login(kind: ExecutorKind, env: &dyn Fn(&str) -> Option<String>) -> Login {
    let c = credentials(kind);
    if let Some(var) = c
        .vars
        .iter()
        .find(|v| env(v).is_some_and(|x| !x.trim().is_empty()))
    {
        return Login::Found(format!("${var} is set"));
    }
    let base = c
        .base_var
        .and_then(env)
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(c.default_base)));
    let found = base.and_then(|b| c.files.iter().map(|f| b.join(f)).find(|f| f.is_file()));
    match found {
        Some(f) => Login::Found(format!("found {}", f.display())),
        None => Login::Missing(c.how),
    }
}

/// The first line `bin --version` prints, or why there is none.
async fn version(bin: &Path) -> String {
    let run = tokio::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(VERSION_TIMEOUT, run).await {
        Err(_) => format!(
            "version unknown (`--version` took over {} s)",
            VERSION_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => format!("version unknown (cannot run it: {e})"),
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            match text.lines().map(str::trim).find(|l| !l.is_empty()) {
                Some(line) if out.status.success() => line.to_owned(),
                Some(line) => format!("version unknown (`--version` failed: {line})"),
                None => "version unknown (`--version` printed nothing)".to_owned(),
            }
        }
    }
}

/// The supported CLIs on `path_var`, with their versions and logins.
pub async fn detect(path_var: &OsStr, env: &dyn Fn(&str) -> Option<String>) -> Vec<Found> {
    let mut found = Vec::new();
    for kind in ExecutorKind::CLIS {
        if let Some(path) = find_on_path(kind.as_str(), path_var) {
            found.push(Found {
                kind,
                version: version(&path).await,
                login: login(kind, env),
                path,
            });
        }
    }
    found
}

/// A project name for a directory: its name with anything outside `[A-Za-z0-9._-]` made `-`.
fn project_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(MAX_NAME_CHARS)
        .collect();
    if name.is_empty() {
        "project".to_owned()
    } else {
        name
    }
}

/// What `detect` prints: one line per supported CLI, then a `[[project]]` block for `cwd`
/// using the first CLI that looks logged in (else the first found, else `command`).
pub fn report(found: &[Found], cwd: &Path) -> String {
    let mut out = String::from("Coding agent CLIs on the PATH:\n");
    for kind in ExecutorKind::CLIS {
        match found.iter().find(|f| f.kind == kind) {
            Some(f) => {
                let login = match &f.login {
                    Login::Found(how) => format!("looks logged in ({how})"),
                    Login::Missing(how) => format!("not logged in as far as can be seen: {how}"),
                };
                out.push_str(&format!(
                    "  {:<9} {} — {} — {login}\n",
                    kind.as_str(),
                    f.path.display(),
                    f.version
                ));
            }
            None => out.push_str(&format!("  {:<9} not found\n", kind.as_str())),
        }
    }
    let chosen = found
        .iter()
        .find(|f| matches!(f.login, Login::Found(_)))
        .or(found.first());
    let path = toml::Value::String(cwd.display().to_string()).to_string();
    let name = project_name(cwd);
    match chosen {
        Some(f) => out.push_str(&format!(
            "\nPaste into agent.toml:\n\n[[project]]\nname = \"{name}\"\npath = {path}\nexecutor = \"{}\"\n",
            f.kind.as_str()
        )),
        None => out.push_str(&format!(
            "\nNo supported coding agent CLI (claude, codex, gemini, opencode) was found on the PATH.\n\
             Install one and run `baton-agent detect` again, or run a script of your own with the\n\
             command executor. Paste into agent.toml:\n\n\
             [[project]]\nname = \"{name}\"\npath = {path}\nexecutor = \"command\"\ncommand = [\"./run-task.sh\"]   # the prompt on stdin and in BATON_PROMPT\n"
        )),
    }
    out
}

/// `baton-agent detect`, for this process's PATH, environment and directory.
pub async fn run() -> anyhow::Result<()> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let env = |k: &str| std::env::var(k).ok();
    let found = detect(&path_var, &env).await;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    print!("{}", report(&found, &cwd));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn logins_come_from_variables_then_files() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().display().to_string();
        let env = |k: &str| match k {
            "HOME" => Some(h.clone()),
            "GEMINI_API_KEY" => Some("x".into()),
            "CODEX_API_KEY" => Some(" ".into()),
            _ => None,
        };
        assert_eq!(
            login(ExecutorKind::Gemini, &env),
            Login::Found("$GEMINI_API_KEY is set".into())
        );
        assert_eq!(
            login(ExecutorKind::Codex, &env),
            Login::Missing("run `codex login`")
        );
        std::fs::create_dir_all(home.path().join(".codex")).unwrap();
        std::fs::write(home.path().join(".codex/auth.json"), "{}").unwrap();
        assert!(
            matches!(login(ExecutorKind::Codex, &env), Login::Found(f) if f.ends_with(".codex/auth.json"))
        );
        let xdg = |k: &str| (k == "XDG_DATA_HOME").then(|| h.clone());
        std::fs::create_dir_all(home.path().join("opencode")).unwrap();
        std::fs::write(home.path().join("opencode/auth.json"), "{}").unwrap();
        assert!(matches!(
            login(ExecutorKind::Opencode, &xdg),
            Login::Found(_)
        ));
    }

    #[test]
    fn project_names_are_valid_names() {
        for (dir, name) in [
            ("/srv/web", "web"),
            ("/srv/my repo!", "my-repo-"),
            ("/srv/.hidden", "hidden"),
            ("/", "project"),
        ] {
            let n = project_name(Path::new(dir));
            assert_eq!(n, name);
            assert!(baton_shared::ProjectName::new(n).is_ok());
        }
    }
}
