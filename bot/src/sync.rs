//! Small helpers for `std::sync` that every module shares.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering from poisoning: no invariant of the bot's state
/// spans a panic while one of its mutexes is held.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
