//! Statements a pass runs several times a second, prepared once per session and kept
//! (SPI_keepplan). Parsing and planning `SELECT dialer._record_accepted($1, …)` afresh on every
//! call cost about as much as running it. Postgres revalidates a kept plan when what it uses
//! changes (ALTER EXTENSION UPDATE, DROP and CREATE EXTENSION), so a kept plan is never stale.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;

/// A kept plan, and the argument types it was prepared for.
struct Kept {
    types: Vec<pg_sys::Oid>,
    plan: &'static OwnedPreparedStatement,
}

thread_local! {
    // Keyed by the statement's text; a handful of literals, so the plans are never freed (they
    // live as long as the session, as a plpgsql function's do).
    static KEPT: RefCell<HashMap<&'static str, Kept>> = RefCell::new(HashMap::new());
}

/// Runs `sql` read-write (as `SpiClient::update`) from its kept plan, prepared on first use for
/// these arguments' types. Arguments of other types than the plan's (a bug in the caller) run it
/// unprepared, rather than handing the plan datums it would misread.
pub fn run<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    limit: Option<i64>,
    args: &[DatumWithOid],
) -> SpiResult<SpiTupleTable<'conn>> {
    let types: Vec<pg_sys::Oid> = args.iter().map(DatumWithOid::oid).collect();
    let kept = KEPT.with(|k| k.borrow().get(sql).map(|kept| (kept.types == types).then_some(kept.plan)));
    let plan = match kept {
        Some(Some(plan)) => plan,
        Some(None) => return client.update(sql, limit, args),
        None => {
            let oids: Vec<PgOid> = types.iter().map(|&oid| PgOid::from(oid)).collect();
            let plan: &'static OwnedPreparedStatement = Box::leak(Box::new(client.prepare_mut(sql, &oids)?.keep()));
            KEPT.with(|k| k.borrow_mut().insert(sql, Kept { types, plan }));
            plan
        }
    };
    client.update(plan, limit, args)
}

/// Runs `body` with these settings, as a function's SET clause does: each in force until `body`
/// returns, then the value before it back. (An ERROR in `body` aborts the (sub)transaction,
/// which puts them back too.) Planner settings reach a kept plan only when it is planned: the
/// first run, or a run after Postgres invalidated it.
pub fn with_settings<R>(settings: &[(&std::ffi::CStr, &std::ffi::CStr)], body: impl FnOnce() -> R) -> R {
    // SAFETY: GUC calls on the backend's own thread, inside a transaction; names and values are
    // our literals, and elevel ERROR reports a bad one as a Postgres error.
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in settings {
        unsafe {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                pgrx::PgLogLevel::ERROR as i32,
                false,
            );
        }
    }
    let out = body();
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    out
}
