//! One pass of the dialer, in named phases, for both of its callers: the worker's loop
//! (worker.rs) and `dialer.process_batches()` (api/process.rs). Each phase runs in its caller's
//! transaction; each caller brings its own policy (how far ahead to claim, what upkeep to do).

use crate::dispatch::{Job, JobResult};
use crate::error::DialerError;
use crate::tick::{self, Claimed, Counts, Pacing, TargetCache};

/// What a claim takes from.
pub enum ClaimFrom {
    /// Every batch with work due, up to `max_batches`; with `promote`, batches whose start has
    /// come (and queue arrivals, recurring calls, deadlines passed) are promoted first.
    Due { max_batches: i32, promote: bool },
    /// One queue just given a job (the immediate-call path): that batch only, checked for
    /// pacing, limits and compliance as any other.
    Queue(i64),
}

/// Claim: due contacts, within pacing and the HTTP pool's room. None: another pass holds the
/// tick (the worker, or a concurrent process_batches()); from a queue, nothing claimed then.
pub fn claim(
    from: ClaimFrom,
    pacing: &Pacing,
    room_for: &dyn Fn(&str) -> usize,
    cache: &mut TargetCache,
) -> Result<Option<Claimed>, DialerError> {
    let claimed = match from {
        ClaimFrom::Due { max_batches, promote } => {
            if !tick::try_tick_lock()? {
                return Ok(None);
            }
            if promote {
                tick::promote()?;
            }
            tick::claim(max_batches, pacing, room_for, cache)?
        }
        // (the claim takes the tick lock itself: nothing is claimed while another pass holds it)
        ClaimFrom::Queue(batch_id) => tick::claim_one(batch_id, pacing, room_for, cache)?,
    };
    Ok(Some(claimed))
}

/// Record: the answers of placed calls, status polls and look-ups, and the batches whose
/// counters say they are done.
pub fn record(results: &[JobResult]) -> Result<Counts, DialerError> {
    let counts = tick::record_dispatch(results)?;
    tick::record_status(results)?;
    tick::record_lookups(results)?;
    // Calls accepted end nothing: a batch can be done only after another kind of answer.
    if usize::try_from(counts.initiated).map_or(true, |accepted| accepted < results.len()) {
        tick::complete_batches(true)?;
    }
    Ok(counts)
}

/// What an upkeep round does, by caller.
pub struct Upkeep {
    pub poll_every_ms: f64,
    pub poll_limit: i32,
    /// The caller's status polls sent and not yet recorded: not picked again.
    pub polls_in_flight: Vec<i64>,
    /// Calls in progress longer than twice this dialer.call_timeout are closed (None: not this
    /// round; the worker closes them with its full checks, every 2 s, not at every poll round).
    pub close_abandoned_ms: Option<f64>,
    /// Attempts left 'dialing' longer than this are held in doubt (None: not this time; the
    /// worker does it only when none of its own requests is in flight).
    pub settle_stale_ms: Option<f64>,
    /// Every processing batch is checked for completion, not only those whose counters say so.
    pub check_every_batch: bool,
}

/// Upkeep: hand-offs to telecallers now free, attempts in doubt, calls abandoned by the
/// provider, batches that are done; returns the status polls and look-ups to send.
pub fn upkeep(policy: &Upkeep, cache: &mut TargetCache) -> Result<Vec<Job>, DialerError> {
    tick::assign_pending()?;
    if let Some(stale_ms) = policy.settle_stale_ms {
        tick::settle_stale_dialing(stale_ms)?;
    }
    if let Some(call_timeout_ms) = policy.close_abandoned_ms {
        tick::close_abandoned(call_timeout_ms)?;
    }
    let mut jobs = tick::poll_jobs(policy.poll_every_ms, policy.poll_limit, &policy.polls_in_flight, cache)?;
    jobs.extend(tick::lookup_jobs(policy.poll_limit, cache)?);
    if policy.check_every_batch {
        tick::complete_batches(false)?;
    }
    Ok(jobs)
}
