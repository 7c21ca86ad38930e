//! Several real `baton-bot` processes on one database: refused on a SQLite
//! file (one process per file), allowed on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use baton_testkit::db::{postgres_or_skip, use_sqlite};
use baton_testkit::{BotProcess, admin, fake_slack, http};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn a_second_bot_on_the_same_sqlite_file_is_refused_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db = use_sqlite(dir.path());
    let (_slack, url) = fake_slack().await;
    let first = BotProcess::start(any_port(), &url, dir.path(), &[]).await;
    assert_eq!(first.db_url, db);

    let refusal = BotProcess::start_refused(&url, dir.path(), &[]).await;
    assert!(
        refusal.contains("another baton-bot process")
            && refusal.contains("is already running on the SQLite database"),
        "says what is wrong: {refusal}"
    );
    assert!(
        refusal.contains("stop the other one first") && refusal.contains("PostgreSQL"),
        "says what would allow it: {refusal}"
    );

    // The first bot is untouched: it serves and writes its database.
    assert_eq!(http(first.addr, "GET", "/readyz", &[], "").await.0, 200);
    let bound = admin(first.addr, "project bind web").await;
    assert!(bound.contains("project `web`"), "{bound}");
    let store = first.store().await;
    assert_eq!(
        store.project_for_channel("C1").await.unwrap().as_deref(),
        Some("web")
    );

    // Once the first is gone (kill -9 included), a new one may start.
    let addr = first.addr;
    first.kill().await;
    let second = BotProcess::start(addr, &url, dir.path(), &[]).await;
    assert_eq!(http(second.addr, "GET", "/readyz", &[], "").await.0, 200);
    second.stop().await;
}

#[tokio::test]
async fn two_bots_share_a_postgres_database() {
    let Some(_) = postgres_or_skip("two_bots_share_a_postgres_database") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_slack, url) = fake_slack().await;
    let first = BotProcess::start(any_port(), &url, dir.path(), &[]).await;
    let second = BotProcess::start(any_port(), &url, dir.path(), &[]).await;
    assert!(first.db_url.starts_with("postgres://"));
    assert_eq!(first.db_url, second.db_url, "one database");
    assert_eq!(http(second.addr, "GET", "/readyz", &[], "").await.0, 200);
    assert_eq!(http(first.addr, "GET", "/readyz", &[], "").await.0, 200);
    second.stop().await;
    first.stop().await;
}
