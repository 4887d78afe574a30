//! Sessions the dialing worker starts beside itself (the lead writers, the statistics session):
//! dynamic background workers of this library, never restarted, ended when they run too long,
//! and ended by SIGTERM in the middle of a statement.

use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// A session the dialing worker started, and how long it may run.
pub struct Session {
    /// Named in the warning when it is ended ("the lead writer of role 10").
    what: String,
    handle: DynamicBackgroundWorker,
    started: Instant,
    max_run: Duration,
}

/// Starts `function` of this library in a session of its own; None when no background worker
/// slot is free (max_worker_processes). Call outside a transaction: the handle must outlive it.
pub fn start(kind: &str, what: String, function: &str, argument: Option<pg_sys::Datum>, extra: &str, max_run: Duration) -> Option<Session> {
    let handle = BackgroundWorkerBuilder::new(kind)
        .set_type(kind)
        .set_library("pg_dialer")
        .set_function(function)
        .set_argument(argument)
        .set_extra(extra)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .ok()?;
    Some(Session { what, handle, started: Instant::now(), max_run })
}

impl Session {
    /// The session while it still runs; None once it ended, or once it ran past its time, in
    /// which case it is ended here with a warning.
    pub fn still_running(self) -> Option<Session> {
        match self.handle.pid() {
            Err(BackgroundWorkerStatus::Stopped) | Err(BackgroundWorkerStatus::PostmasterDied) => None,
            _ if self.started.elapsed() > self.max_run => {
                warning!("pg_dialer: the {} ran for over {:?}: ended", self.what, self.max_run);
                self.handle.terminate();
                None
            }
            _ => Some(self),
        }
    }
}

/// What Postgres's own `die` does: the session ends at the next CHECK_FOR_INTERRUPTS.
unsafe extern "C-unwind" fn die_at_next_interrupt_check(_signal: std::ffi::c_int) {
    unsafe {
        pg_sys::InterruptPending = 1;
        pg_sys::ProcDiePending = 1;
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

/// First thing in a started session: SIGTERM ends it at the next interrupt check, in the middle
/// of a statement too (the ordinary backend handler), and signals are unblocked.
pub fn end_at_sigterm() {
    unsafe {
        // Postgres 18 renamed the backend's pqsignal to pqsignal_be (pqsignal is now a macro).
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(libc::SIGTERM, Some(die_at_next_interrupt_check));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(libc::SIGTERM, Some(die_at_next_interrupt_check));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}
