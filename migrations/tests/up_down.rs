//! The migrations go up and down on a real SQLite file, and on a real
//! PostgreSQL database when the tests have one (`BATON_TEST_DATABASE_URL`).

use baton_migrations::{Migrator, MigratorTrait};
use sea_orm_migration::sea_orm::{
    ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, Statement,
};

async fn tables(db: &DatabaseConnection) -> Vec<String> {
    let sql = match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' \
             AND tablename <> 'seaql_migrations' ORDER BY tablename"
        }
        _ => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> 'seaql_migrations' ORDER BY name"
        }
    };
    let rows = db
        .query_all(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("list tables");
    rows.iter()
        .map(|r| r.try_get::<String>("", "name").expect("name"))
        .collect()
}

#[tokio::test]
async fn up_down_up_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("baton.db").display()
    );
    up_down_up(&url).await;
}

#[tokio::test]
async fn up_down_up_on_postgres() {
    let Some(server) = baton_testkit::db::postgres_or_skip("up_down_up_on_postgres") else {
        return;
    };
    let test_db = baton_testkit::db::TestDb::postgres(&server).await;
    up_down_up(&test_db.url).await;
}

async fn up_down_up(url: &str) {
    let db = Database::connect(url).await.expect("connect");

    Migrator::up(&db, None).await.expect("up");
    let first = tables(&db).await;
    assert_eq!(
        first,
        [
            "agents",
            "approvals",
            "audit_log",
            "instances",
            "project_access",
            "project_approvers",
            "projects",
            "slack_events",
            "task_files",
            "tasks"
        ]
    );

    // The schema takes a task row with its defaults.
    db.execute_unprepared(
        "INSERT INTO tasks (persona, project, prompt, requester, team_id, channel_id, state, \
         created_at, updated_at, queued_at) VALUES ('code','web','hi','U1','T1','C1','queued',1,1,1)",
    )
    .await
    .expect("insert task");

    Migrator::down(&db, None).await.expect("down");
    assert!(tables(&db).await.is_empty());

    Migrator::up(&db, None).await.expect("up again");
    assert_eq!(tables(&db).await, first);
    assert!(
        Migrator::get_pending_migrations(&db)
            .await
            .expect("pending")
            .is_empty()
    );
}

/// Tasks that ended before the notifications' migration are not announced
/// after it; those still running are, once they end.
#[tokio::test]
async fn tasks_ended_before_the_upgrade_are_not_notified() {
    let test_db = baton_testkit::db::TestDb::new().await;
    let db = Database::connect(&test_db.url).await.expect("connect");
    // Up to the one before the notifications' migration (later ones may follow it).
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name() == "m20261207_000010_notify")
        .expect("the notifications' migration");
    Migrator::up(&db, Some(u32::try_from(before).expect("count")))
        .await
        .expect("up to the one before");
    for (id, state, finished) in [
        (1, "completed", "1"),
        (2, "running", "NULL"),
        (3, "failed", "1"),
    ] {
        db.execute_unprepared(&format!(
            "INSERT INTO tasks (id, persona, project, prompt, requester, team_id, channel_id, \
             message_ts, state, created_at, updated_at, queued_at, finished_at) \
             VALUES ({id}, 'code','web','hi','U1','T1','C1','1.1','{state}',1,1,1,{finished})"
        ))
        .await
        .expect("insert task");
    }
    Migrator::up(&db, None).await.expect("up");
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT id FROM tasks WHERE {} ORDER BY id",
                baton_migrations::NOTIFY_PENDING
            ),
        ))
        .await
        .expect("pending");
    assert!(
        rows.is_empty(),
        "nothing ended is pending after the upgrade"
    );
    db.execute_unprepared(
        "UPDATE tasks SET state = 'completed', finished_at = 2, slack_synced = TRUE WHERE id = 2",
    )
    .await
    .expect("end the running one");
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT id FROM tasks WHERE {} ORDER BY id",
                baton_migrations::NOTIFY_PENDING
            ),
        ))
        .await
        .expect("pending");
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r.try_get::<i64>("", "id").expect("id"))
        .collect();
    assert_eq!(ids, [2]);
}
