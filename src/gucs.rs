//! Configuration (GUCs). Defaults follow DESIGN.md; times are in milliseconds (units accepted).

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;
use std::time::Duration;

pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static NOTIFY_FAILURES: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static MAX_BATCHES_PER_RUN: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static HTTP_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(16);
pub static HTTP_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static MAX_EXECUTION_TIME_MS: GucSetting<i32> = GucSetting::<i32>::new(25_000);
pub static MAX_CALLS_PER_SECOND: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static CALL_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30 * 60 * 1000);
pub static STATUS_POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
/// How long claimed calls wait for the standbys to hold their claim (src/standbys.rs); -1 = as
/// long as it takes, 0 = not at all.
pub static STANDBY_WAIT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"../pg_dialer.key"));
pub static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(crate::hosts::DEFAULT));
pub static JWT_ROLES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"authenticated"));
pub static RETENTION_RUNS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(crate::retention::DEFAULT_C));
pub static RETENTION_BODIES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(crate::retention::DEFAULT_C));
pub static RETENTION_WEBHOOK_EVENTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(crate::retention::DEFAULT_C));
pub static RETENTION_JOBS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(crate::retention::DEFAULT_C));

pub fn register(preloading: bool) {
    // dialer.database can only be set at server start, so only a preloaded library defines it.
    if preloading {
        GucRegistry::define_string_guc(
            c"dialer.database",
            c"Database the pg_dialer worker serves.",
            c"The worker waits quietly until CREATE EXTENSION pg_dialer has run there.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        // Outside the data directory by default, so a base backup or replica does not carry it.
        GucRegistry::define_string_guc(
            c"dialer.key_file",
            c"The keyring that encrypts provider keys and webhook secrets at rest.",
            c"Relative paths are from the data directory; created with mode 0600 at first start.",
            &KEY_FILE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_bool_guc(
        c"dialer.enabled",
        c"Whether the pg_dialer worker dispatches calls at all.",
        c"",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"dialer.allowed_hosts",
        c"Where the worker may send provider requests: host or host:port, comma-separated.",
        c"Loopback, link-local and private addresses only when the address itself is listed.",
        &ALLOWED_HOSTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SUSET: a session cannot widen whom it trusts (a tenant could otherwise name its own role).
    GucRegistry::define_string_guc(
        c"dialer.jwt_roles",
        c"Roles whose request.jwt.claims agency_id is trusted (comma-separated).",
        c"PostgREST/Supabase switch to these roles only after verifying the JWT; default authenticated.",
        &JWT_ROLES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"dialer.notify_failures",
        c"NOTIFY dialer_events on every failed attempt, not only when retries run out.",
        c"",
        &NOTIFY_FAILURES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // Retention: intervals as Postgres reads them ('30 days', '2 seconds'); 'off' or '0' keeps
    // everything of that kind. SIGHUP: how long history is kept is the server's choice.
    let retention: [(&'static std::ffi::CStr, &'static std::ffi::CStr, &'static GucSetting<Option<CString>>); 4] = [
        (c"dialer.retention_runs", c"How long the worker keeps its tick log (dialer.runs).", &RETENTION_RUNS),
        (
            c"dialer.retention_bodies",
            c"How long the request and response bodies of settled calls are kept (the call rows stay).",
            &RETENTION_BODIES,
        ),
        (c"dialer.retention_webhook_events", c"How long webhook deliveries (dialer.webhook_events) are kept.", &RETENTION_WEBHOOK_EVENTS),
        (c"dialer.retention_jobs", c"How long finished queue jobs (and their attempts) are kept.", &RETENTION_JOBS),
    ];
    for (name, short, setting) in retention {
        GucRegistry::define_string_guc(
            name,
            short,
            c"An interval ('30 days'); 'off' or '0' keeps everything of this kind.",
            setting,
            GucContext::Sighup,
            GucFlags::default(),
        );
    }
    let ints: [(&'static std::ffi::CStr, &'static std::ffi::CStr, &'static GucSetting<i32>, i32, i32, GucFlags); 10] = [
        (c"dialer.poll_interval", c"Longest idle sleep of the worker.", &POLL_INTERVAL_MS, 10, 3_600_000, GucFlags::UNIT_MS),
        (c"dialer.max_batches_per_run", c"Batches served per tick.", &MAX_BATCHES_PER_RUN, 1, 100_000, GucFlags::default()),
        (c"dialer.http_concurrency", c"Provider requests in flight at once.", &HTTP_CONCURRENCY, 1, 1024, GucFlags::default()),
        (c"dialer.http_timeout", c"Timeout of one provider request.", &HTTP_TIMEOUT_MS, 100, 600_000, GucFlags::UNIT_MS),
        (c"dialer.max_execution_time", c"Bound on one tick.", &MAX_EXECUTION_TIME_MS, 100, 3_600_000, GucFlags::UNIT_MS),
        (
            c"dialer.max_calls_per_second",
            c"Global cap on calls placed per second (0 = none).",
            &MAX_CALLS_PER_SECOND,
            0,
            1_000_000,
            GucFlags::default(),
        ),
        (
            c"dialer.call_timeout",
            c"An in-progress call without outcome after this long is reconciled.",
            &CALL_TIMEOUT_MS,
            1000,
            i32::MAX,
            GucFlags::UNIT_MS,
        ),
        (
            c"dialer.status_poll_interval",
            c"How often the provider is asked about a call in progress.",
            &STATUS_POLL_INTERVAL_MS,
            100,
            3_600_000,
            GucFlags::UNIT_MS,
        ),
        (
            c"dialer.max_claim_per_batch",
            c"Most contacts of one batch claimed in one tick.",
            &MAX_CLAIM_PER_BATCH,
            1,
            100_000,
            GucFlags::default(),
        ),
        (
            c"dialer.standby_wait",
            c"How long a claimed call waits for every streaming standby to hold its claim (-1: no limit, 0: no wait).",
            &STANDBY_WAIT_MS,
            -1,
            3_600_000,
            GucFlags::UNIT_MS,
        ),
    ];
    for (name, short, setting, min, max, flags) in ints {
        GucRegistry::define_int_guc(name, short, c"", setting, min, max, GucContext::Sighup, flags);
    }
}

pub static MAX_CLAIM_PER_BATCH: GucSetting<i32> = GucSetting::<i32>::new(1000);

fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting.get().and_then(|c| c.into_string().ok()).unwrap_or_default()
}

fn ms(setting: &GucSetting<i32>) -> Duration {
    Duration::from_millis(setting.get().max(0) as u64)
}

/// dialer.max_execution_time alone (read on every claim: Settings::read parses the allow-list too).
pub fn max_execution_time() -> Duration {
    ms(&MAX_EXECUTION_TIME_MS)
}

/// A snapshot of the settings, read at the top of each loop (after a SIGHUP reload).
#[derive(Debug, Clone)]
pub struct Settings {
    pub enabled: bool,
    pub poll_interval: Duration,
    pub max_batches_per_run: i32,
    pub http_concurrency: usize,
    pub http_timeout: Duration,
    pub max_calls_per_second: i32,
    pub call_timeout: Duration,
    pub status_poll_interval: Duration,
    pub max_claim_per_batch: i32,
    /// dialer.standby_wait: None = no limit.
    pub standby_wait: Option<Duration>,
    /// dialer.allowed_hosts; a list that does not parse allows nothing (and says why).
    pub allowed_hosts: Result<crate::hosts::AllowList, String>,
    /// dialer.retention_* as given (Postgres reads them as intervals when a pass runs).
    pub retention: crate::retention::Retention,
}

impl Settings {
    pub fn read() -> Settings {
        Settings {
            enabled: ENABLED.get(),
            poll_interval: ms(&POLL_INTERVAL_MS),
            max_batches_per_run: MAX_BATCHES_PER_RUN.get(),
            http_concurrency: HTTP_CONCURRENCY.get().max(1) as usize,
            http_timeout: ms(&HTTP_TIMEOUT_MS),
            max_calls_per_second: MAX_CALLS_PER_SECOND.get(),
            call_timeout: ms(&CALL_TIMEOUT_MS),
            status_poll_interval: ms(&STATUS_POLL_INTERVAL_MS),
            max_claim_per_batch: MAX_CLAIM_PER_BATCH.get(),
            standby_wait: (STANDBY_WAIT_MS.get() >= 0).then(|| ms(&STANDBY_WAIT_MS)),
            allowed_hosts: crate::hosts::AllowList::parse(&Self::allowed_hosts_text()),
            retention: crate::retention::Retention {
                runs: text(&RETENTION_RUNS),
                bodies: text(&RETENTION_BODIES),
                webhook_events: text(&RETENTION_WEBHOOK_EVENTS),
                jobs: text(&RETENTION_JOBS),
            },
        }
    }

    /// dialer.key_file (the default when the library is not preloaded).
    pub fn key_file() -> String {
        KEY_FILE.get().and_then(|c| c.into_string().ok()).unwrap_or_else(|| "../pg_dialer.key".to_string())
    }

    pub fn allowed_hosts_text() -> String {
        ALLOWED_HOSTS.get().and_then(|c| c.into_string().ok()).unwrap_or_default()
    }

    /// The list requests may go to now (nothing when the setting does not parse).
    pub fn allow_list(&self) -> crate::hosts::AllowList {
        self.allowed_hosts.clone().unwrap_or_default()
    }

    /// The roles of dialer.jwt_roles, trimmed.
    pub fn jwt_roles() -> Vec<String> {
        JWT_ROLES
            .get()
            .and_then(|c| c.into_string().ok())
            .unwrap_or_default()
            .split(',')
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect()
    }

    pub fn database() -> String {
        DATABASE.get().and_then(|c| c.into_string().ok()).unwrap_or_else(|| "postgres".to_string())
    }
}
