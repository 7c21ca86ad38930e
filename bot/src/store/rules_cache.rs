//! What every new task's access check reads of its project (its personas,
//! its access list), kept in memory on SQLite so that creating a task reads
//! nothing from the database.
//!
//! Only on a SQLite file, and only for the store of the process holding its
//! lock ([`Store::caching_project_rules`]): one process serves the file, and
//! every write of these rows goes through that process's [`Store`], which
//! forgets the whole cache after each one. On PostgreSQL another process may
//! change them, so every check reads the database; so does any other store
//! opened on the file (tools, tests).
//!
//! A read that raced a write is not kept: the cache has a generation, bumped
//! after each write commits, and a row read under an older generation is
//! returned but not stored.
//!
//! [`Store`]: super::Store

use std::collections::HashMap;
use std::sync::Mutex;

use super::AccessRow;
use crate::sync::lock;

/// Projects whose rules are kept at most; past it the cache starts over
/// (a bound on memory should names come from outside).
const MAX_PROJECTS: usize = 4096;

/// The cached rules, by project.
#[derive(Debug, Default)]
pub(super) struct RulesCache {
    /// Generation, and per project what was read.
    inner: Mutex<Cached>,
}

/// What the cache holds.
#[derive(Debug, Default)]
struct Cached {
    /// Bumped after every write of a project's rules.
    generation: u64,
    /// A project's personas column (None: all, or no such project).
    personas: HashMap<String, Option<String>>,
    /// A project's access list, oldest entry first.
    access: HashMap<String, Vec<AccessRow>>,
}

impl RulesCache {
    /// The generation a read starts under (pass it to `keep_*`).
    pub(super) fn generation(&self) -> u64 {
        lock(&self.inner).generation
    }

    /// The project's personas, if cached.
    pub(super) fn personas(&self, project: &str) -> Option<Option<String>> {
        lock(&self.inner).personas.get(project).cloned()
    }

    /// The project's access list, if cached.
    pub(super) fn access(&self, project: &str) -> Option<Vec<AccessRow>> {
        lock(&self.inner).access.get(project).cloned()
    }

    /// Keeps personas read under `generation`, unless a write came since.
    pub(super) fn keep_personas(&self, generation: u64, project: &str, v: Option<String>) {
        let mut c = lock(&self.inner);
        if c.generation == generation {
            if c.personas.len() >= MAX_PROJECTS {
                c.personas.clear();
            }
            c.personas.insert(project.to_owned(), v);
        }
    }

    /// Keeps an access list read under `generation`, unless a write came since.
    pub(super) fn keep_access(&self, generation: u64, project: &str, rows: Vec<AccessRow>) {
        let mut c = lock(&self.inner);
        if c.generation == generation {
            if c.access.len() >= MAX_PROJECTS {
                c.access.clear();
            }
            c.access.insert(project.to_owned(), rows);
        }
    }

    /// Forgets everything (after a write of projects or access lists has committed).
    pub(super) fn forget(&self) {
        let mut c = lock(&self.inner);
        c.generation += 1;
        c.personas.clear();
        c.access.clear();
    }
}
