//! The launcher: the one static background worker. It starts the dialing worker (src/worker.rs)
//! connected as the extension's own role `dialer_worker`, not a superuser, once the extension is
//! installed, and starts it again whenever it exits. It reads two catalog rows and nothing else,
//! so no tenant's code ever runs in its session (pg_cron's launcher likewise starts each job's
//! worker as the job's owner).

use crate::error::DialerError;
use crate::gucs::Settings;
use crate::txn;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::Duration;

/// The dialing worker's role (sql/security.sql): the dialer's tables and functions, no more.
pub const WORKER_ROLE: &str = "dialer_worker";
/// How often the launcher looks for the extension, and how soon a worker that exited comes back.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_dialer_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = Settings::database();
    // The bootstrap superuser, for the catalog reads below only. A database that does not exist
    // yet ends this start (FATAL); the restart time brings us back.
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    let mut worker: Option<DynamicBackgroundWorker> = None;
    let mut version_warned: Option<String> = None;
    loop {
        if BackgroundWorker::sigterm_received() {
            // The postmaster stops the dialing worker itself at shutdown.
            return;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if let Some(w) = &worker {
            if matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)) {
                worker = None;
            }
        }
        if worker.is_none() {
            match txn::run(installed) {
                Ok((Some(version), true)) if version == crate::tick::LIBRARY_VERSION => {
                    if version_warned.take().is_some() {
                        log!("pg_dialer: extension updated to {version}; dialing resumes");
                    }
                    // Outside any transaction: the handle lives in TopMemoryContext as long as we do.
                    worker = start_worker(&database);
                }
                Ok((Some(version), _)) if version != crate::tick::LIBRARY_VERSION => {
                    if version_warned.as_deref() != Some(version.as_str()) {
                        crate::tick::warn_sql_older_than_library(&database, &version);
                        version_warned = Some(version);
                    }
                }
                _ => {}
            }
        }
        if !BackgroundWorker::wait_latch(Some(CHECK_EVERY)) {
            return; // the postmaster died
        }
    }
}

/// The installed extension's version (None: not installed), and whether the worker's role exists.
fn installed() -> Result<(Option<String>, bool), DialerError> {
    let version = crate::tick::installed_version()?;
    let role = Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dialer_worker')")
        .map_err(crate::tick::db)?
        .unwrap_or(false);
    Ok((version, role))
}

fn start_worker(database: &str) -> Option<DynamicBackgroundWorker> {
    let started = BackgroundWorkerBuilder::new("pg_dialer worker")
        .set_type("pg_dialer")
        .set_library("pg_dialer")
        .set_function("pg_dialer_worker_main")
        .set_extra(database)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        // The postmaster tells us (our latch) when it starts and stops.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    match started {
        Ok(w) => Some(w),
        Err(_) => {
            warning!("pg_dialer: no background worker slot for the dialing worker (raise max_worker_processes); trying again");
            None
        }
    }
}
