//! Waking the worker: its PID lives in shared memory; `wake()` sets its latch.

use pgrx::atomics::PgAtomic;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};

pub static WORKER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"pg_dialer_worker_pid") };

/// The batch whose new work woke the worker (a queue that was just given a job), so that its
/// next pass claims from it before anything else: 0 none, -1 several since the worker last looked.
pub static WOKEN_BATCH: PgAtomic<AtomicI64> = unsafe { PgAtomic::new(c"pg_dialer_woken_batch") };

/// How many immediate jobs the commits noted in WOKEN_BATCH gave it (at least: a count added by a
/// commit whose batch the worker has not taken yet may be in it too). A claim that took fewer
/// left some behind (a pacing slot, a calling window): a full pass learns when they are due.
pub static WOKEN_JOBS: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_dialer_woken_jobs") };

/// Bumped when a transaction that may stop claimed calls commits (a batch paused, cancelled or
/// ended; a number listed as do-not-call): calls the worker holds for a later pacing slot are
/// checked again before they leave (see `held::Held`).
pub static HOLDS_EPOCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_dialer_holds_epoch") };

/// Bumped when a transaction that changed an agent mapping or provider credentials commits: the
/// worker's cache of them (`tick::TargetCache`) is read again.
pub static CONFIG_EPOCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"pg_dialer_config_epoch") };

/// Set by a webhook that waits for its call's answer to be recorded (api/webhooks.rs): the worker
/// records the answers it holds at once, not at its recording clock, and clears it when it has.
pub static RECORD_ASKED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_dialer_record_asked") };

/// Set by a commit whose change needs one of the worker's full passes (a batch started or changed,
/// a delayed job, a pause, a config change, `dialer.wake()`). Not set by a queue's immediate job,
/// which its own claim serves (WOKEN_BATCH), nor by a webhook's request to record (RECORD_ASKED):
/// a full pass after each of those was 0.6 ms of queries per immediate call that changed nothing.
pub static PASS_ASKED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pg_dialer_pass_asked") };

/// Set in the postmaster by `_PG_init` when loaded through shared_preload_libraries, and so
/// inherited by every backend: only then does the shared memory above exist.
pub static SHMEM_READY: AtomicBool = AtomicBool::new(false);

pub fn init_shmem() {
    pgrx::pg_shmem_init!(WORKER_PID);
    pgrx::pg_shmem_init!(WOKEN_BATCH);
    pgrx::pg_shmem_init!(WOKEN_JOBS);
    pgrx::pg_shmem_init!(HOLDS_EPOCH);
    pgrx::pg_shmem_init!(CONFIG_EPOCH);
    pgrx::pg_shmem_init!(RECORD_ASKED);
    pgrx::pg_shmem_init!(PASS_ASKED);
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
    // The worker's own writes (a call it saw end) need no wake-up: it looks again at the end of
    // the pass it is in. (Waking itself cost an extra pass per recorded round.)
    if pid == unsafe { pg_sys::MyProcPid } {
        return true;
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

/// Asks the worker to record the answers it holds now (see RECORD_ASKED); its latch is set only
/// when the request is new, so a webhook may ask at every look.
pub fn ask_to_record() {
    if SHMEM_READY.load(Ordering::SeqCst) && !RECORD_ASKED.get().swap(true, Ordering::SeqCst) {
        wake_worker();
    }
}

/// Whether a webhook is waiting for answers to be recorded.
pub fn record_asked() -> bool {
    SHMEM_READY.load(Ordering::SeqCst) && RECORD_ASKED.get().load(Ordering::SeqCst)
}

/// The worker recorded what it held: a webhook still not finding its call asks again.
pub fn record_done() {
    if SHMEM_READY.load(Ordering::SeqCst) {
        RECORD_ASKED.get().store(false, Ordering::SeqCst);
    }
}

/// Tells the worker which batch its next wake-up is for, and how many immediate jobs it has (see
/// WOKEN_BATCH and WOKEN_JOBS). Several batches since the worker last looked are served by a full
/// pass, which this then asks for.
pub fn note_woken_batch(batch_id: i64, jobs: u64) {
    if !SHMEM_READY.load(Ordering::SeqCst) || batch_id == 0 {
        return;
    }
    // The count first: the worker takes the batch first, so a count it takes with a batch is never
    // short of that batch's notes.
    WOKEN_JOBS.get().fetch_add(jobs, Ordering::SeqCst);
    let slot = WOKEN_BATCH.get();
    let seen = slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |seen| match seen {
        0 => Some(batch_id),
        b if b == batch_id => None,
        _ => Some(-1),
    });
    // (asked even from the worker's own commit: another's note is then waiting for it)
    if matches!(seen, Ok(b) if b != 0) {
        PASS_ASKED.get().store(true, Ordering::SeqCst);
    }
}

/// Asks for a full pass at the worker's next wake-up (see PASS_ASKED); set before the latch. Not
/// from the worker's own commits (a call it saw end): it looks again at the end of the pass it is
/// in, as `wake_worker` does not wake it either.
pub fn ask_for_pass() {
    if SHMEM_READY.load(Ordering::SeqCst) && WORKER_PID.get().load(Ordering::SeqCst) != unsafe { pg_sys::MyProcPid } {
        PASS_ASKED.get().store(true, Ordering::SeqCst);
    }
}

/// Whether a full pass was asked for since the last call; clears the request.
pub fn take_pass_asked() -> bool {
    SHMEM_READY.load(Ordering::SeqCst) && PASS_ASKED.get().swap(false, Ordering::SeqCst)
}

/// The one batch woken for since the last call, if there was exactly one, with the immediate jobs
/// noted for it; clears the note.
pub fn take_woken_batch() -> Option<(i64, u64)> {
    if !SHMEM_READY.load(Ordering::SeqCst) {
        return None;
    }
    let b = WOKEN_BATCH.get().swap(0, Ordering::SeqCst);
    if b == 0 {
        // (a count without its batch yet belongs to a note still being made: left for it)
        return None;
    }
    let jobs = WOKEN_JOBS.get().swap(0, Ordering::SeqCst);
    (b > 0).then_some((b, jobs))
}

/// A change that others must notice, counted in shared memory after its commit.
#[derive(Clone, Copy)]
pub enum Epoch {
    /// May stop held calls (HOLDS_EPOCH).
    Holds,
    /// Agent mappings or provider credentials (CONFIG_EPOCH).
    Config,
}

impl Epoch {
    /// Its bit in a set of epochs (a transaction's changes, api::queue).
    pub fn bit(self) -> u8 {
        match self {
            Epoch::Holds => 1,
            Epoch::Config => 2,
        }
    }
}

fn counter(epoch: Epoch) -> &'static PgAtomic<AtomicU64> {
    match epoch {
        Epoch::Holds => &HOLDS_EPOCH,
        Epoch::Config => &CONFIG_EPOCH,
    }
}

/// Called after the commit of such a change.
pub fn bump(epoch: Epoch) {
    if SHMEM_READY.load(Ordering::SeqCst) {
        counter(epoch).get().fetch_add(1, Ordering::SeqCst);
    }
}

/// The counter now; 0 when the library was not preloaded (no shared memory, and so no worker
/// to read it).
pub fn current(epoch: Epoch) -> u64 {
    if SHMEM_READY.load(Ordering::SeqCst) {
        counter(epoch).get().load(Ordering::SeqCst)
    } else {
        0
    }
}
