//! The files attached in Slack to the message that started a task: written
//! with the task, read to build its `submit` and to serve the agent's fetch.

use anyhow::Context;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QueryTrait, Set,
};

use super::Store;
use super::entities::task_file;

/// A file attached to a task.
pub use task_file::Model as TaskFile;

impl Store {
    /// Records the files attached to task `task_id`, in order.
    pub async fn add_task_files(&self, task_id: i64, files: &[TaskFile]) -> anyhow::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
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
        let insert = task_file::Entity::insert_many(rows).into_query();
        let stmt = self.db.get_database_backend().build(&insert);
        self.write(stmt)
            .await
            .context("Cannot write the task's files")?;
        Ok(())
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

    /// One file of a task, if the task has it.
    pub async fn task_file(&self, task_id: i64, file_id: &str) -> anyhow::Result<Option<TaskFile>> {
        task_file::Entity::find_by_id((task_id, file_id.to_owned()))
            .one(&self.read)
            .await
            .context("Cannot read the task's file")
    }
}
