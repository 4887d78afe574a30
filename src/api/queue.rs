//! Rust helpers behind the call-queue SQL API (`sql/queue.sql`): cron evaluation and the
//! wake-on-commit that makes immediate calls immediate.

use crate::error::DialerError;
use crate::{cron, wake};
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgXactCallbackEvent};
use std::cell::Cell;

/// Next occurrence of a 5-field cron expression strictly after `after_epoch` (seconds), in `tz`.
#[pg_extern(immutable, parallel_safe)]
fn _cron_next_epoch(cron_expr: &str, tz: &str, after_epoch: f64) -> f64 {
    match cron::next_after_epoch(cron_expr, tz, after_epoch) {
        Ok(v) => v,
        Err(msg) => crate::api::process::raise(crate::error::DialerError::InvalidArgument(msg)),
    }
}

thread_local! {
    static WAKE_PENDING: Cell<bool> = const { Cell::new(false) };
    /// The batch this transaction gave new work to: 0 none yet, -1 several.
    static WAKE_BATCH: Cell<i64> = const { Cell::new(0) };
    /// The immediate jobs it gave that batch.
    static WAKE_JOBS: Cell<u64> = const { Cell::new(0) };
    /// The counters (wake::Epoch bits) this transaction bumps when it commits.
    static CHANGED: Cell<u8> = const { Cell::new(0) };
}

/// Wakes the worker when the current transaction commits (so it sees the new rows), once per
/// transaction however many jobs it schedules; nothing happens if it rolls back.
#[pg_extern]
fn _wake_on_commit() {
    wake_on_commit(None);
}

/// `_wake_on_commit` for new work in one batch (a queue's new immediate job): the worker claims
/// from that batch first, and that claim is all the wake-up does if it takes every such job.
/// (A function of its own: the library of a new release must still serve the
/// previous release's SQL until ALTER EXTENSION UPDATE.)
#[pg_extern]
fn _wake_on_commit_for(batch_id: i64) {
    wake_on_commit(Some(batch_id));
}

/// The trigger behind `call_batches_holds` and `do_not_call_holds` (argument 'holds': a batch
/// leaving 'processing', a number listed as do-not-call; the worker checks the calls it holds for
/// later slots again before they leave) and `agent_mappings_changed` and
/// `provider_credentials_changed` ('config': the worker reads them again). Either way the counter
/// is bumped when the transaction commits, and the worker woken.
#[pg_trigger]
fn _changed_on_commit<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, DialerError> {
    let args = trigger.extra_args().map_err(|e| DialerError::InvalidArgument(e.to_string()))?;
    let epoch = match args.as_slice() {
        [kind] if kind == "holds" => wake::Epoch::Holds,
        [kind] if kind == "config" => wake::Epoch::Config,
        _ => {
            return Err(DialerError::InvalidArgument(format!(
                "dialer._changed_on_commit takes one trigger argument, 'holds' or 'config', not {args:?}"
            )))
        }
    };
    CHANGED.with(|c| c.set(c.get() | epoch.bit()));
    wake_on_commit(None);
    Ok(None)
}

fn wake_on_commit(batch_id: Option<i64>) {
    // The batch this transaction gave work to; work elsewhere too (None) makes it "several",
    // and the worker's next pass a full one.
    WAKE_BATCH.with(|w| {
        w.set(match (w.get(), batch_id) {
            (0, Some(b)) => b,
            (seen, Some(b)) if seen == b => b,
            _ => -1,
        })
    });
    if batch_id.is_some() {
        WAKE_JOBS.with(|n| n.set(n.get().saturating_add(1)));
    }
    if WAKE_PENDING.with(|p| p.replace(true)) {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_PENDING.with(|p| p.set(false));
        // One queue given work: its own claim serves it. Anything else: a full pass.
        let b = WAKE_BATCH.with(|w| w.replace(0));
        let jobs = WAKE_JOBS.with(|n| n.replace(0));
        if b > 0 {
            wake::note_woken_batch(b, jobs);
        } else {
            wake::ask_for_pass();
        }
        let changed = CHANGED.with(|c| c.replace(0));
        for epoch in [wake::Epoch::Holds, wake::Epoch::Config] {
            if changed & epoch.bit() != 0 {
                wake::bump(epoch);
            }
        }
        wake::wake_worker();
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || {
        WAKE_PENDING.with(|p| p.set(false));
        WAKE_BATCH.with(|w| w.set(0));
        WAKE_JOBS.with(|n| n.set(0));
        CHANGED.with(|c| c.set(0));
    });
}

/// The IANA zone of a number's country when that country has only one; NULL otherwise.
/// How deeply a JSON text nests (objects and arrays), counted without parsing it, so that a value
/// too deep for any parser is measured too. Strings are skipped with their escapes.
#[pg_extern(immutable, strict, parallel_safe)]
fn _json_depth(json: &str) -> i32 {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0i32, 0i32, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    deepest
}

/// dialer.jwt_roles as an array. A C function, so calling it loads the library and with it the
/// setting's real definition (a placeholder a tenant set before that would not count).
#[pg_extern(stable, parallel_safe)]
fn _jwt_roles() -> Vec<String> {
    crate::gucs::Settings::jwt_roles()
}

#[pg_extern(immutable, parallel_safe)]
fn _zone_for_number(phone_number: &str) -> Option<&'static str> {
    crate::zones::zone_for_number(phone_number)
}

/// `"<calling code>:<area>"` of a number (see zones::locality), NULL if it does not parse.
#[pg_extern(immutable, parallel_safe)]
fn _number_locality(phone_number: &str) -> Option<String> {
    crate::zones::locality(phone_number)
}
