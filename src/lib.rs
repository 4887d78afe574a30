//! pg_dialer: schedules and places outbound AI voice calls from inside PostgreSQL.

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use std::time::Duration;

pub mod api;
pub mod cron;
pub mod dispatch;
pub mod error;
pub mod gucs;
pub mod held;
pub mod hosts;
pub mod launcher;
pub mod lead_writer;
pub mod pacing;
pub mod pass;
pub mod plans;
pub mod polls;
pub mod providers;
pub mod restores;
pub mod retention;
pub mod sealed;
pub mod secrets;
pub mod sessions;
pub mod standbys;
pub mod statistics;
pub mod tick;
pub mod txn;
pub mod wait_set;
pub mod wake;
pub mod webhooks;
pub mod worker;
pub mod zones;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/tick.sql", name = "tick", requires = ["schema", api::queue::_changed_on_commit]);
extension_sql_file!("../sql/api.sql", name = "api", requires = ["tick"]);
extension_sql_file!("../sql/leads.sql", name = "leads", requires = ["queue"]);
extension_sql_file!(
    "../sql/queue.sql",
    name = "queue",
    requires = ["api", api::queue::_cron_next_epoch, api::queue::_wake_on_commit, api::queue::_wake_on_commit_for]
);
extension_sql_file!(
    "../sql/compliance.sql",
    name = "compliance",
    requires = ["leads", "queue", api::queue::_zone_for_number, api::queue::_changed_on_commit]
);
extension_sql_file!("../sql/caller_ids.sql", name = "caller_ids", requires = ["compliance"]);
extension_sql_file!("../sql/attach.sql", name = "attach", requires = ["caller_ids"]);
extension_sql_file!("../sql/operations.sql", name = "operations", requires = ["compliance"]);
extension_sql_file!("../sql/security.sql", name = "security", requires = ["attach", "operations"], finalize);

/// How soon the launcher comes back after it exits (crash, missing database). The dialing worker
/// is the launcher's to restart (src/launcher.rs).
const LAUNCHER_RESTART: Duration = Duration::from_secs(1);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::register(preloading);
    if !preloading {
        return;
    }
    wake::init_shmem();
    sealed::ensure_keyring();
    zones::warm_up();
    BackgroundWorkerBuilder::new("pg_dialer launcher")
        .set_type("pg_dialer launcher")
        .set_library("pg_dialer")
        .set_function("pg_dialer_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(LAUNCHER_RESTART))
        .load();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    // Kept in its own file; `#[pg_schema]` needs an inline module.
    include!("pg_tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["dialer.allowed_hosts = '127.0.0.1'"]
    }
}
