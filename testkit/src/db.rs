//! A database for each test: a SQLite file in the test's directory by default,
//! or a fresh PostgreSQL database when [`DATABASE_URL_VAR`] names a server
//! (`scripts/test-postgres run cargo nextest run ...` starts one and sets it).

use std::path::Path;
use std::time::Duration;

use sea_orm::sqlx::{Connection, Executor, PgConnection};

/// The variable naming a PostgreSQL server the tests may create databases on
/// (`postgres://user@host:port/db`; the database is only used to connect).
pub const DATABASE_URL_VAR: &str = "BATON_TEST_DATABASE_URL";

/// The file in a test's directory that remembers the directory's database,
/// so a bot restarted on the same directory finds the same database.
const URL_FILE: &str = "baton-test-database-url";

/// How long a test waits for the PostgreSQL server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The PostgreSQL server the tests use, when [`DATABASE_URL_VAR`] is set.
pub fn postgres_server() -> Option<String> {
    std::env::var(DATABASE_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// Whether this run tests PostgreSQL; when not, prints why `test` skips
/// (for tests that only mean something on PostgreSQL).
pub fn postgres_or_skip(test: &str) -> Option<String> {
    let server = postgres_server();
    if server.is_none() {
        println!(
            "SKIPPED {test}: it needs PostgreSQL; set {DATABASE_URL_VAR} \
             (scripts/test-postgres run cargo nextest run ... does)"
        );
    }
    server
}

/// The database URL for the bot of directory `dir`: the same one on every
/// call for that directory. SQLite `dir/baton.db`, or a new PostgreSQL
/// database (left for the throwaway server to take away) when
/// [`DATABASE_URL_VAR`] is set.
pub async fn url_for_dir(dir: &Path) -> String {
    let file = dir.join(URL_FILE);
    if let Ok(url) = std::fs::read_to_string(&file) {
        return url;
    }
    let url = match postgres_server() {
        Some(server) => create_database(&server).await.1,
        None => sqlite_url(dir),
    };
    std::fs::write(&file, &url).expect("remember the test's database");
    url
}

/// Makes `dir`'s database the SQLite file `dir/baton.db` whatever
/// [`DATABASE_URL_VAR`] says (for tests of what only SQLite does).
pub fn use_sqlite(dir: &Path) -> String {
    let url = sqlite_url(dir);
    std::fs::write(dir.join(URL_FILE), &url).expect("remember the test's database");
    url
}

/// The SQLite file `dir/baton.db`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("baton.db").display())
}

/// A database of its own for one test, dropped with this value (when it is a
/// PostgreSQL database; a SQLite file goes with its temporary directory).
#[derive(Debug)]
pub struct TestDb {
    /// Where it is.
    pub url: String,
    /// The SQLite file's directory.
    _dir: Option<tempfile::TempDir>,
    /// The server and the database's name, to drop it.
    postgres: Option<(String, String)>,
}

impl TestDb {
    /// A new empty database: PostgreSQL when [`DATABASE_URL_VAR`] is set, else a
    /// SQLite file in a new temporary directory.
    pub async fn new() -> TestDb {
        match postgres_server() {
            Some(server) => Self::postgres(&server).await,
            None => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                TestDb {
                    url: sqlite_url(dir.path()),
                    _dir: Some(dir),
                    postgres: None,
                }
            }
        }
    }

    /// A new empty database on the PostgreSQL server at `server`.
    pub async fn postgres(server: &str) -> TestDb {
        let (name, url) = create_database(server).await;
        TestDb {
            url,
            _dir: None,
            postgres: Some((server.to_owned(), name)),
        }
    }

    /// Whether it is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // Drop may run inside a runtime, which cannot block: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&server).await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop a test database; the throwaway server takes it away");
        }
    }
}

/// Creates an empty database `baton_test_<random>` on `server`; its name and URL.
pub async fn create_database(server: &str) -> (String, String) {
    let name = format!("baton_test_{:016x}", rand::random::<u64>());
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(server))
        .await
        .unwrap_or_else(|_| panic!("{DATABASE_URL_VAR}: the server did not answer"))
        .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR}: cannot connect: {e}"));
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    let _ = conn.close().await;
    let mut url =
        url::Url::parse(server).unwrap_or_else(|e| panic!("{DATABASE_URL_VAR} is not a URL: {e}"));
    url.set_path(&format!("/{name}"));
    (name, url.to_string())
}
