//! SQL functions the claim calls (sql/claim.sql): the pacing of `src/pacing.rs`, times in unix milliseconds.

use crate::pacing::{self, Cap, Plan};
use pgrx::prelude::*;

/// The slots a claim may fill (no row: none now). See `pacing::plan`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe)]
fn _pacing_plan(
    now_ms: f64,
    ahead_ms: f64,
    calls_per_minute: i32,
    next_slot_ms: Option<f64>,
    catch_up_before_ms: Option<f64>,
    account_cps: Option<f64>,
    account_next_ms: Option<f64>,
    global_cps: Option<f64>,
    global_next_ms: Option<f64>,
) -> TableIterator<
    'static,
    (
        name!(slot_ms, f64),
        name!(start_ms, f64),
        name!(gap_ms, f64),
        name!(spacing_ms, f64),
        name!(batch_gap_ms, f64),
        name!(catching_up, bool),
        name!(slots, i32),
    ),
> {
    let account = Cap::per_second(account_cps, account_next_ms);
    let global = Cap::per_second(global_cps, global_next_ms);
    let plan = pacing::plan(now_ms, ahead_ms, calls_per_minute, next_slot_ms, catch_up_before_ms, account, global);
    TableIterator::new(plan.map(|p| (p.slot_ms, p.start_ms, p.gap_ms, p.spacing_ms, p.batch_gap_ms, p.catching_up, p.slots)))
}

// One row at most: the planner's default for a set-returning function is a thousand, which
// made every estimate of the claim after it a thousand times too high (a hash table sized for
// ten thousand set-aside contacts was built and cleared at every claim).
extension_sql!(
    "ALTER FUNCTION dialer._pacing_plan(double precision, double precision, integer, double precision, double precision, double precision, double precision, double precision, double precision) ROWS 1;",
    name = "pacing_plan_rows",
    requires = [_pacing_plan]
);

/// Where a batch goes on from after a claim of `claimed` calls (see `Plan::batch_next_slot_ms`).
#[pg_extern(immutable, parallel_safe)]
fn _pacing_next_slot_ms(slot_ms: f64, start_ms: f64, gap_ms: f64, spacing_ms: f64, catching_up: bool, claimed: i32) -> f64 {
    Plan { slot_ms, start_ms, gap_ms, spacing_ms, batch_gap_ms: spacing_ms, catching_up, slots: claimed }.batch_next_slot_ms(claimed)
}
