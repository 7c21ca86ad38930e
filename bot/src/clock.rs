//! Clocks the bot reads, injectable so time-dependent rules are tested without sleeping.
//!
//! Monotonic time is tokio's (`tokio::time::pause()` controls it in tests);
//! wall time (queue time to live, timestamps compared with stored ones) goes
//! through [`WallClock`], which tests replace with [`ManualWallClock`].

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock time in Unix milliseconds.
pub trait WallClock: Send + Sync + Debug {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_ms(&self) -> i64 {
        crate::model::now_ms()
    }
}

/// A wall clock that starts at the system time and moves only when told.
#[derive(Debug, Clone)]
pub struct ManualWallClock {
    /// Current Unix ms.
    now: Arc<AtomicI64>,
}

impl Default for ManualWallClock {
    fn default() -> Self {
        ManualWallClock {
            now: Arc::new(AtomicI64::new(crate::model::now_ms())),
        }
    }
}

impl ManualWallClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.now.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl WallClock for ManualWallClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// governor's clock on tokio's time, so paused time drives rate limits too.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl governor::clock::Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

impl governor::clock::ReasonablyRealtime for TokioClock {}
