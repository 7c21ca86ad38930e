//! The files attached in Slack to the message that started a task: written
//! with the task, read to build its `submit` and to serve the agent's fetch.

use anyhow::Context;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    Set, Statement, TransactionTrait,
};

use super::entities::task_file;
use super::{Store, Task};

/// A file attached to a task.
pub use task_file::Model as TaskFile;

impl Store {
    /// Runs a task's insert (`stmt`, with a `RETURNING` clause) and writes
    /// `files` for the task it returns, in one transaction; without files,
    /// the insert alone, through the writer as any write. The insert's rows.
    pub(super) async fn write_task_rows(
        &self,
        stmt: Statement,
        files: &[TaskFile],
    ) -> Result<Vec<Task>, DbErr> {
        if files.is_empty() {
            return self.write_tasks(stmt).await;
        }
        let txn = self.db.begin().await?;
        let rows = txn.query_all(stmt).await?;
        if let Some(row) = rows.first() {
            let task_id: i64 = row.try_get("", "id")?;
            let rows = files
                .iter()
                .enumerate()
                .map(|(i, f)| task_file::ActiveModel {
                    task_id: Set(task_id),
                    file_id: Set(f.file_id.clone()),
                    position: Set(i32::try_from(i).unwrap_or(i32::MAX)),
                    name: Set(f.name.clone()),
                    size: Set(f.size),
                    url: Set(f.url.clone()),
                });
            task_file::Entity::insert_many(rows).exec(&txn).await?;
        }
        txn.commit().await?;
        rows.iter()
            .map(|row| Task::from_query_result(row, ""))
            .collect()
    }

    /// The files attached to a task, in the message's order.
    pub async fn task_files(&self, task_id: i64) -> anyhow::Result<Vec<TaskFile>> {
        task_file::Entity::find()
            .filter(task_file::Column::TaskId.eq(task_id))
            .order_by_asc(task_file::Column::Position)
            .all(&self.read)
            .await
            .context("Cannot read the task's files")
    }

    /// The files of each of `task_ids` that has some, in the message's
    /// order: one read for a dispatch pass's batch.
    pub async fn files_of(
        &self,
        task_ids: &[i64],
    ) -> anyhow::Result<std::collections::HashMap<i64, Vec<TaskFile>>> {
        let mut by_task: std::collections::HashMap<i64, Vec<TaskFile>> =
            std::collections::HashMap::new();
        if task_ids.is_empty() {
            return Ok(by_task);
        }
        let files = task_file::Entity::find()
            .filter(task_file::Column::TaskId.is_in(task_ids.iter().copied()))
            .order_by_asc(task_file::Column::TaskId)
            .order_by_asc(task_file::Column::Position)
            .all(&self.read)
            .await
            .context("Cannot read the tasks' files")?;
        for file in files {
            by_task.entry(file.task_id).or_default().push(file);
        }
        Ok(by_task)
    }

    /// One file of a task, if the task has it.
    pub async fn task_file(&self, task_id: i64, file_id: &str) -> anyhow::Result<Option<TaskFile>> {
        task_file::Entity::find_by_id((task_id, file_id.to_owned()))
            .one(&self.read)
            .await
            .context("Cannot read the task's file")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewTask;

    fn new_task() -> NewTask {
        NewTask {
            prompt: "read the files".into(),
            ..NewTask::sample()
        }
    }

    fn file(id: &str, name: &str) -> TaskFile {
        TaskFile {
            task_id: 0,
            file_id: id.into(),
            position: 0,
            name: name.into(),
            size: 5,
            url: format!("https://files.slack.com/files-pri/T1-{id}/download/{name}"),
        }
    }

    #[tokio::test]
    async fn a_tasks_files_are_written_with_it_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("f.db").display());
        let store = Store::connect(&url).await.expect("store");
        let files = [file("F2", "b.txt"), file("F1", "a.txt")];
        let task = store
            .insert_queued_task_with_files(new_task(), 1, &files, None)
            .await
            .expect("insert")
            .expect("the queue has room");
        let kept = store.task_files(task.id).await.expect("read");
        let names: Vec<_> = kept
            .iter()
            .map(|f| (f.file_id.as_str(), f.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [("F2", "b.txt"), ("F1", "a.txt")],
            "in the message's order"
        );
        assert!(kept.iter().all(|f| f.task_id == task.id));
        let one = store.task_file(task.id, "F1").await.expect("read");
        assert_eq!(one.map(|f| f.name), Some("a.txt".to_owned()));
        assert_eq!(
            store.task_file(task.id + 1, "F1").await.expect("read"),
            None
        );

        // The queue is full: neither the task nor its files are written.
        let refused = store
            .insert_queued_task_with_files(new_task(), 1, &[file("F3", "c.txt")], None)
            .await
            .expect("insert");
        assert!(refused.is_none());
        assert_eq!(
            task_file::Entity::find()
                .all(&store.read)
                .await
                .expect("all")
                .len(),
            2,
            "no files without their task"
        );

        let plain = store.insert_task(new_task()).await.expect("insert");
        assert!(store.task_files(plain.id).await.expect("read").is_empty());

        // A dispatch pass's batch: one read.
        let other = store
            .insert_queued_task_with_files(new_task(), 100, &[file("F9", "z.txt")], None)
            .await
            .expect("insert")
            .expect("room");
        let batch = store
            .files_of(&[task.id, plain.id, other.id])
            .await
            .expect("read");
        let ids = |t: i64| -> Vec<String> { batch[&t].iter().map(|f| f.file_id.clone()).collect() };
        assert_eq!(ids(task.id), ["F2", "F1"], "each task's, in order");
        assert_eq!(ids(other.id), ["F9"]);
        assert!(!batch.contains_key(&plain.id), "none for a task without");
        assert!(store.files_of(&[]).await.expect("read").is_empty());
    }
}
