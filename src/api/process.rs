//! `dialer.process_batches()`: one tick in the caller's session (pg_cron's entry point), and
//! `dialer.wake()`.

use crate::dispatch::{unix_ms, JobKind, Pool};
use crate::error::DialerError;
use crate::gucs::Settings;
use crate::tick::{self, Counts};
use crate::{pass, wake};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Runs one tick now and returns the seed's response shapes:
/// `{"batches_processed","calls_initiated","calls_failed"}`, `{"processed":0,"message":"No batches to process"}`
/// or `{"status":"SKIPPED_CONCURRENT"}` when the worker (or another caller) is mid-tick.
///
/// It runs inside the caller's transaction, so its provider requests are sent before that
/// transaction commits; the worker, which commits each claim first, is the crash-safe path.
/// Its SQL is planned on a pinned search_path, as the worker's is: a tenant's operator in a
/// writable schema on the caller's path would otherwise run with the caller's rights.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn process_batches() -> JsonB {
    match run_tick() {
        Ok(v) => JsonB(v),
        Err(e) => raise(e),
    }
}

/// Wakes the worker now instead of at its next poll.
#[pg_extern]
fn wake() {
    wake::ask_for_pass();
    wake::wake_worker();
}

/// Raises `e` as a Postgres ERROR with its own SQLSTATE, detail and hint.
pub fn raise(e: DialerError) -> ! {
    let code = crate::error::sqlstate_code(e.sqlstate()).map_or(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, PgSqlErrorCode::from);
    let mut report = pgrx::pg_sys::panic::ErrorReport::new(code, e.to_string(), "pg_dialer");
    if let Some(detail) = e.detail() {
        report = report.set_detail(detail);
    }
    if let Some(hint) = e.hint() {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}

fn run_tick() -> Result<Value, DialerError> {
    let started = unix_ms();
    let settings = Settings::read();
    let unlimited = |_: &str| usize::MAX;
    // Slots only a moment ahead: this function returns when its calls are answered.
    let pacing = tick::Pacing {
        ahead_ms: crate::pacing::FUNCTION_AHEAD_MS,
        budget_per_batch: settings.max_claim_per_batch,
        global_cps: settings.max_calls_per_second,
        catch_up_before_ms: None,
    };
    let mut cache = tick::TargetCache::default();
    let Some(tick::Claimed { jobs, unbuildable, .. }) =
        pass::claim(pass::ClaimFrom::Due { max_batches: settings.max_batches_per_run, promote: true }, &pacing, &unlimited, &mut cache)?
    else {
        tick::log_run(started, "function", Counts::default(), "SKIPPED_CONCURRENT", None)?;
        return Ok(json!({"status": "SKIPPED_CONCURRENT"}));
    };
    let active = tick::active_batch_count()?;
    if active == 0 {
        tick::log_run(started, "function", Counts::default(), "COMPLETED", None)?;
        return Ok(json!({"processed": 0, "message": "No batches to process"}));
    }
    let mut counts = Counts { batches: active.min(settings.max_batches_per_run as i64) as i32, ..Counts::default() };
    counts.add(unbuildable.record()?);
    // The worker's upkeep but for attempts left dialing (the worker, if one runs, may be
    // sending them now).
    let polls = pass::upkeep(
        &pass::Upkeep {
            poll_every_ms: settings.status_poll_interval.as_secs_f64() * 1000.0,
            poll_limit: 500,
            // (its polls are recorded before it returns)
            polls_in_flight: Vec::new(),
            close_abandoned_ms: Some(settings.call_timeout.as_secs_f64() * 1000.0),
            settle_stale_ms: None,
            check_every_batch: false,
        },
        &mut cache,
    )?;

    if !jobs.is_empty() || !polls.is_empty() {
        let threads = settings.http_concurrency.min(jobs.len() + polls.len()).max(1);
        let mut pool = Pool::new(threads, settings.http_timeout, settings.allow_list())
            .map_err(|e| DialerError::database(format!("could not start HTTP threads: {e}")))?;
        let (mut pending, mut polls_pending): (HashSet<i64>, HashSet<i64>) = (HashSet::new(), HashSet::new());
        let jobs: Vec<_> = jobs.into_iter().chain(polls).collect();
        for job in &jobs {
            match job.kind {
                JobKind::Place { call_id, .. } => pending.insert(call_id),
                JobKind::Status { call_id, .. } => polls_pending.insert(call_id),
                _ => false,
            };
        }
        pool.submit_all(jobs);
        let results = pool.wait_all(Instant::now() + settings.http_timeout + Duration::from_secs(2));
        for r in &results {
            match r.kind {
                JobKind::Place { call_id, .. } => pending.remove(&call_id),
                JobKind::Status { call_id, .. } => polls_pending.remove(&call_id),
                _ => false,
            };
        }
        counts.add(pass::record(&results)?);
        // Polls still unanswered are asked again a poll interval from now, not at the next call.
        tick::record_unanswered_polls(polls_pending)?;
        // Requests still without an answer may have reached the provider: hold them in doubt.
        let mut unanswered = tick::Outcomes::default();
        for call_id in pending {
            unanswered.unanswered(call_id);
        }
        counts.add(unanswered.record()?);
    }
    tick::complete_batches(false)?;
    tick::log_run(started, "function", counts, "COMPLETED", None)?;
    Ok(json!({
        "batches_processed": counts.batches,
        "calls_initiated": counts.initiated,
        "calls_failed": counts.failed,
    }))
}
