//! Files attached to a task in Slack, written into the task's directory
//! under `.baton/files/` and named in the prompt (see docs/protocol.md,
//! "Files attached to a task").

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_shared::TaskId;
use baton_shared::files::{FILES_DIR, sanitize_file_name};
use baton_shared::limits::MAX_FILE_BYTES;
use baton_shared::protocol::{FailureCause, Submit, SubmitFile};
use tokio::sync::watch;

use crate::exec::{ExecEnd, StopReason};
use secrecy::{ExposeSecret, SecretString};

/// Writes one attachment into `task_dir`'s [`FILES_DIR`] under its safe
/// name, creating the folder; returns the path relative to `task_dir`.
/// Refuses a name that is not already safe, a file over
/// [`MAX_FILE_BYTES`], and a `.baton` or `files` that is a symbolic link
/// (which could point outside the task's directory).
pub fn write_attachment(task_dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(name));
    }
    let path = attachment_path(task_dir, name)?;
    std::fs::write(&path, bytes)?;
    Ok(Path::new(FILES_DIR).join(name))
}

fn too_large(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name} is larger than {MAX_FILE_BYTES} bytes"),
    )
}

/// Where the attachment `name` goes in `task_dir`: checks the name is safe,
/// creates [`FILES_DIR`] (refusing a `.baton` or `files` that is a symbolic
/// link or not a folder), and removes a symbolic link in the file's place.
fn attachment_path(task_dir: &Path, name: &str) -> io::Result<PathBuf> {
    if sanitize_file_name(name) != name {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the file name {name:?} is not a safe name"),
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir)?;
                // A folder Baton made is Baton's: git leaves it out of the
                // task's changes (`git add -A` included).
                if dir.parent() == Some(task_dir) {
                    std::fs::write(dir.join(".gitignore"), IGNORE_ALL)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    let path = dir.join(name);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path)?;
    }
    Ok(path)
}

/// The `.gitignore` written in a `.baton` folder the agent creates: git
/// ignores the folder and everything in it.
const IGNORE_ALL: &str =
    "# Written by baton-agent: files attached to tasks, not part of the project.\n*\n";

/// The longest one file's fetch may take, from the request to its last byte
/// (20 MiB at a slow 100 KiB/s is under four minutes).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The plain HTTP client the files are fetched with.
type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// Where a task's files are fetched from: the bot, with the agent's key.
#[derive(Clone)]
pub struct FileSource {
    /// HTTP(S) client over rustls.
    client: Client,
    /// The agent key, sent as for the WebSocket.
    key: SecretString,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource").finish_non_exhaustive()
    }
}

impl FileSource {
    /// A source that authenticates with `key`.
    pub fn new(key: SecretString) -> io::Result<Self> {
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                // http:// still works; an https bot fails visibly at the fetch.
                tracing::warn!(error = %e, "no system TLS root certificates; fetching files over https will fail");
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(empty_tls_config()?)
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(FileSource { client, key })
    }

    /// Fetches each of `files` of `task` from the bot at `server` (the
    /// agent's WebSocket URL) into `task_dir`'s [`FILES_DIR`]; their paths
    /// relative to `task_dir`, with their sizes. The first file that cannot be
    /// fetched ends it, with the reason.
    pub async fn fetch_all(
        &self,
        server: &str,
        task: TaskId,
        files: &[SubmitFile],
        task_dir: &Path,
    ) -> Result<Vec<(PathBuf, u64)>, String> {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let url = file_url(server, task, &f.id)
                .ok_or_else(|| format!("the server URL {server} has no HTTP form"))?;
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch_one(&url, f, task_dir))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("it took longer than {}s", FETCH_TIMEOUT.as_secs()))
                });
            match fetched {
                Ok(size) => out.push((Path::new(FILES_DIR).join(&f.name), size)),
                Err(why) => {
                    return Err(format!(
                        "cannot fetch the attached file `{}`: {why}",
                        f.name
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Fetches one file into place, streamed to disk; its size.
    async fn fetch_one(
        &self,
        url: &str,
        file: &SubmitFile,
        task_dir: &Path,
    ) -> Result<u64, String> {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;
        let request = http::Request::get(url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.key.expose_secret()),
            )
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let answer = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("the bot did not answer: {e}"))?;
        let status = answer.status();
        if !status.is_success() {
            let body = answer.into_body().collect().await.map(|b| b.to_bytes());
            let reason = body
                .ok()
                .map(|b| {
                    String::from_utf8_lossy(&b[..b.len().min(MAX_REASON_BYTES)])
                        .trim()
                        .to_owned()
                })
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "no reason given".into());
            return Err(format!(
                "the bot answered HTTP {}: {reason}",
                status.as_u16()
            ));
        }
        let path = attachment_path(task_dir, &file.name).map_err(|e| e.to_string())?;
        let written = async {
            let mut out = tokio::fs::File::create(&path)
                .await
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let mut body = answer.into_body();
            let mut size = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("the download broke off: {e}"))?;
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                size += chunk.len() as u64;
                if size > MAX_FILE_BYTES {
                    return Err(too_large(&file.name).to_string());
                }
                out.write_all(&chunk)
                    .await
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            out.flush()
                .await
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(size)
        };
        let size = match written.await {
            Ok(size) => size,
            Err(why) => {
                // No partial file is left for the task to mistake for the whole.
                let _ = tokio::fs::remove_file(&path).await;
                return Err(why);
            }
        };
        Ok(size)
    }
}

/// The most of an error answer's body quoted in the task's failure.
const MAX_REASON_BYTES: usize = 300;

/// A TLS configuration with no roots, for a machine without any.
fn empty_tls_config() -> io::Result<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// The URL of a task's file on the bot: the agent's WebSocket URL, in its
/// HTTP form, with `/files/{task}/{id}` after its path
/// (`wss://bot/agents` → `https://bot/agents/files/7/F1`).
pub fn file_url(server: &str, task: TaskId, id: &str) -> Option<String> {
    let mut url = url::Url::parse(server).ok()?;
    let scheme = match url.scheme() {
        "wss" | "https" => "https",
        "ws" | "http" => "http",
        _ => return None,
    };
    url.set_scheme(scheme).ok()?;
    let path = format!("{}/files/{}/{id}", url.path().trim_end_matches('/'), task.0);
    url.set_path(&path);
    url.set_query(None);
    Some(url.to_string())
}

/// Where a task's files come from: the source, and the bot it fetches from
/// (the WebSocket URL the task came through).
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The HTTP client and the agent key.
    pub source: FileSource,
    /// The bot's WebSocket URL (its HTTP form serves the files).
    pub server: String,
}

/// Fetches `submit`'s files into `dir` before the executor starts; the
/// submit with its prompt naming them (`None` when it has no files), or how
/// the task ends: failed with the reason when one cannot be fetched,
/// cancelled or stopped when `stop` says so meanwhile.
pub async fn prepare(
    fetch: Option<&Fetch>,
    submit: &Submit,
    dir: &Path,
    mut stop: watch::Receiver<StopReason>,
) -> Result<Option<Submit>, ExecEnd> {
    if submit.files.is_empty() {
        return Ok(None);
    }
    let fetched = match fetch {
        None => Err("this agent has no bot to fetch the attached files from".to_owned()),
        Some(f) => {
            let stopped = async {
                let _ = stop.wait_for(|r| *r != StopReason::None).await;
            };
            tokio::select! {
                got = f.source.fetch_all(&f.server, submit.task, &submit.files, dir) => got,
                () = stopped => {
                    let reason = *stop.borrow();
                    return Err(match reason {
                        StopReason::Shutdown => ExecEnd::Failed {
                            error: "the agent shut down before the task started".into(),
                            cause: FailureCause::AgentShutdown,
                            session_id: None,
                        },
                        _ => ExecEnd::Cancelled,
                    });
                }
            }
        }
    };
    match fetched {
        Ok(paths) => {
            tracing::info!(
                task = submit.task.0,
                files = paths.len(),
                "attached files fetched"
            );
            let mut with_files = submit.clone();
            with_files.prompt = prompt_with_files(&submit.prompt, &paths);
            Ok(Some(with_files))
        }
        Err(error) => {
            tracing::warn!(task = submit.task.0, %error, "an attached file cannot be fetched; the task fails");
            Err(ExecEnd::Failed {
                error,
                cause: FailureCause::Task,
                session_id: None,
            })
        }
    }
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
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".baton/.gitignore")).unwrap(),
            IGNORE_ALL
        );
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

    #[test]
    fn files_are_fetched_from_the_http_form_of_the_server_url() {
        let url = |server: &str| file_url(server, TaskId(7), "F1");
        assert_eq!(
            url("wss://bot.example.com/agents").as_deref(),
            Some("https://bot.example.com/agents/files/7/F1")
        );
        assert_eq!(
            url("ws://127.0.0.1:8080/agents/").as_deref(),
            Some("http://127.0.0.1:8080/agents/files/7/F1")
        );
        assert_eq!(
            url("wss://example.com/baton/agents").as_deref(),
            Some("https://example.com/baton/agents/files/7/F1")
        );
        assert_eq!(url("ftp://example.com/agents"), None);
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
