//! Retention: the worker prunes old history in small passes when a tick found nothing to do
//! (SQL: `dialer._prune` in sql/operations.sql). What to keep and when to run is decided here,
//! without Postgres; only `pass` runs SQL.

use crate::error::DialerError;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The default of every dialer.retention_* setting.
pub const DEFAULT: &str = "30 days";
pub const DEFAULT_C: &std::ffi::CStr = c"30 days";
/// Rows of each kind one pass removes at most (each kind is one statement).
pub const PASS_LIMIT: i32 = 1000;
/// Spacing of passes: soon while a kind had more than a pass could take, else unhurried.
const SOON: Duration = Duration::from_millis(250);
const AFTER_SOME: Duration = Duration::from_secs(1);
const WHEN_CLEAN: Duration = Duration::from_secs(5);
const AFTER_ERROR: Duration = Duration::from_secs(60);

/// The dialer.retention_* settings as text; Postgres reads them as intervals in the pass, so
/// that '30 days', '2 seconds' and '1 mon' mean what they mean in SQL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    pub runs: String,
    pub bodies: String,
    pub webhook_events: String,
    pub jobs: String,
}

impl Retention {
    /// 'off', 'none', '' or zero: keep everything of that kind (the SQL side agrees; this only
    /// spares the worker a pass when every kind is off).
    pub fn keeps_forever(value: &str) -> bool {
        let v = value.trim().to_ascii_lowercase();
        v.is_empty() || v == "off" || v == "none" || v.trim_start_matches(['0', '.', ' ']).is_empty()
    }

    pub fn any_enabled(&self) -> bool {
        [&self.runs, &self.bodies, &self.webhook_events, &self.jobs].iter().any(|v| !Self::keeps_forever(v))
    }
}

/// What one pass removed (rows deleted; for bodies, calls whose bodies were cleared).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Removed {
    pub runs: i64,
    pub bodies: i64,
    pub webhook_events: i64,
    pub jobs: i64,
}

impl Removed {
    pub fn from_json(v: &Value) -> Removed {
        let n = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
        Removed { runs: n("runs"), bodies: n("bodies"), webhook_events: n("webhook_events"), jobs: n("jobs") }
    }

    pub fn total(&self) -> i64 {
        self.runs + self.bodies + self.webhook_events + self.jobs
    }

    /// A kind filled its pass: more of it is probably waiting.
    pub fn more_left(&self, limit: i32) -> bool {
        [self.runs, self.bodies, self.webhook_events, self.jobs].iter().any(|&n| n >= limit as i64)
    }
}

/// When the next pass may run, and which errors were already reported.
#[derive(Debug)]
pub struct Schedule {
    next_at: Instant,
    more_left: bool,
    last_error: Option<String>,
}

impl Schedule {
    pub fn new(now: Instant) -> Schedule {
        Schedule { next_at: now, more_left: false, last_error: None }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_at
    }

    /// After a pass: soon again if it could not take everything.
    pub fn done(&mut self, now: Instant, removed: Removed, limit: i32) {
        self.more_left = removed.more_left(limit);
        let gap = if self.more_left {
            SOON
        } else if removed.total() > 0 {
            AFTER_SOME
        } else {
            WHEN_CLEAN
        };
        self.next_at = now + gap;
        self.last_error = None;
    }

    /// After a failed pass: wait a minute; true when this error was not reported yet (a bad
    /// setting is logged once, not every minute).
    pub fn failed(&mut self, now: Instant, error: &str) -> bool {
        self.next_at = now + AFTER_ERROR;
        self.more_left = false;
        let new = self.last_error.as_deref() != Some(error);
        self.last_error = Some(error.to_string());
        new
    }

    /// How long the worker may sleep without holding up a pass that has work left.
    pub fn cap(&self, now: Instant, wait: Duration) -> Duration {
        if self.more_left {
            wait.min(self.next_at.saturating_duration_since(now))
        } else {
            wait
        }
    }
}

/// One pass, in the caller's transaction. Parameters only; the SQL is in sql/operations.sql.
pub fn pass(r: &Retention, limit: i32) -> Result<Removed, DialerError> {
    let v = pgrx::Spi::get_one_with_args::<pgrx::JsonB>(
        "SELECT dialer._prune($1, $2, $3, $4, $5)",
        &[r.runs.as_str().into(), r.bodies.as_str().into(), r.webhook_events.as_str().into(), r.jobs.as_str().into(), limit.into()],
    )
    .map_err(|e| DialerError::database(e.to_string()))?;
    Ok(v.map(|j| Removed::from_json(&j.0)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn off_and_zero_keep_forever() {
        for v in ["off", "OFF", "", " none ", "0", "0.0", "00"] {
            assert!(Retention::keeps_forever(v), "{v:?}");
        }
        for v in ["30 days", "2 seconds", "1 mon", "0.5 days", "10"] {
            assert!(!Retention::keeps_forever(v), "{v:?}");
        }
        let all_off = Retention { runs: "off".into(), bodies: "0".into(), webhook_events: "".into(), jobs: "none".into() };
        assert!(!all_off.any_enabled());
        assert!(Retention { jobs: DEFAULT.into(), ..all_off }.any_enabled());
    }

    #[test]
    fn a_full_pass_comes_back_soon_and_errors_are_reported_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert!(s.due(t0));
        let full = Removed::from_json(&json!({"runs": 1000, "bodies": 3, "webhook_events": 0, "jobs": 0}));
        s.done(t0, full, 1000);
        assert!(!s.due(t0));
        assert_eq!(s.cap(t0, Duration::from_secs(30)), SOON);
        s.done(t0, Removed::default(), 1000);
        assert_eq!(s.cap(t0, Duration::from_secs(30)), Duration::from_secs(30), "nothing left: sleep as long as the tick wants");
        assert!(s.due(t0 + WHEN_CLEAN));
        assert!(s.failed(t0, "bad interval"));
        assert!(!s.failed(t0, "bad interval"), "the same error is not logged again");
        assert!(s.failed(t0, "another"));
        assert!(!s.due(t0 + Duration::from_secs(59)));
    }
}
