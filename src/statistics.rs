//! Planner statistics of the hot tables (`dialer._refresh_statistics`) are refreshed in a session
//! of their own, started by the dialing worker when a table has outgrown them. An ANALYZE takes 5
//! to 25 ms, and in the dialing loop an immediate call that came meanwhile waited for it.

use crate::error::DialerError;
use crate::gucs::Settings;
use crate::sessions::{self, Session};
use crate::txn;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::Duration;

/// A session still running after this is ended (an ANALYZE of a big table takes seconds).
const MAX_RUN: Duration = Duration::from_secs(60);

/// The statistics session the dialing worker started, if it may still run.
#[derive(Default)]
pub struct Refresher {
    running: Option<Session>,
}

impl Refresher {
    /// If a hot table has outgrown its statistics and no session is analysing already, starts one
    /// (connected as the dialing worker is); with no background worker slot free, analyses here.
    /// Call outside a transaction: the session's handle must outlive it.
    pub fn refresh(&mut self) -> Result<(), DialerError> {
        self.running = self.running.take().and_then(Session::still_running);
        if self.running.is_some() || !txn::run(crate::tick::statistics_outgrown)? {
            return Ok(());
        }
        self.running = sessions::start(
            "pg_dialer statistics",
            "statistics session".to_string(),
            "pg_dialer_statistics_main",
            None,
            &Settings::database(),
            MAX_RUN,
        );
        match self.running {
            Some(_) => Ok(()),
            // (max_worker_processes taken: the planner's statistics matter more than a pause)
            None => txn::run(crate::tick::refresh_statistics).map(|_| ()),
        }
    }
}

/// The statistics session: connected as the dialing worker (its role runs the SECURITY DEFINER
/// `dialer._refresh_statistics`, nothing else), it analyses the tables that need it and exits.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_dialer_statistics_main(_arg: pg_sys::Datum) {
    sessions::end_at_sigterm();
    let database = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&database), Some(crate::launcher::WORKER_ROLE));
    if let Err(e) = txn::run(crate::tick::refresh_statistics) {
        warning!("pg_dialer: the hot tables' statistics could not be refreshed: {e}");
    }
}
