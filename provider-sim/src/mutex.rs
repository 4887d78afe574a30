//! The one way the simulator takes its locks.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, carrying on after a panic elsewhere poisoned it (the data stays usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
