//! Waking the worker: its PID lives in shared memory; `wake()` sets its latch.

use pgrx::atomics::PgAtomic;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

pub static WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"pg_dialer_worker_pid") };

/// Set in the postmaster by `_PG_init` when loaded through shared_preload_libraries, and so
/// inherited by every backend: only then does the shared memory above exist.
pub static SHMEM_READY: AtomicBool = AtomicBool::new(false);

pub fn init_shmem() {
    pgrx::pg_shmem_init!(WORKER_PID);
    SHMEM_READY.store(true, Ordering::SeqCst);
}

pub fn publish_worker_pid(pid: i32) {
    if SHMEM_READY.load(Ordering::SeqCst) {
        WORKER_PID.get().store(pid, Ordering::SeqCst);
    }
}

/// Sets the worker's latch. Returns false when no worker is running.
pub fn wake_worker() -> bool {
    if !SHMEM_READY.load(Ordering::SeqCst) {
        return false;
    }
    let pid = WORKER_PID.get().load(Ordering::SeqCst);
    if pid <= 0 {
        return false;
    }
    unsafe {
        // BackendPidGetProc returns NULL for a PID that is no longer a live backend.
        let proc_ = pg_sys::BackendPidGetProc(pid);
        if proc_.is_null() {
            return false;
        }
        pg_sys::SetLatch(&raw mut (*proc_).procLatch);
    }
    true
}
