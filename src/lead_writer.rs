//! Lead rows are written back in their table owner's own session. The dialing worker and the API
//! only queue writes (dialer.lead_writes); for each role whose tables have writes due, the
//! dialing worker starts a background worker connected as that role (`Writers::start`), which
//! applies them one per transaction with a statement timeout (`pg_dialer_lead_writer_main`). The
//! table's triggers, casts and deferred constraints therefore run as its owner, never in the
//! dialing worker's session, and a slow one holds up nobody else: the dialing worker ends a
//! writer that runs past `WRITER_MAX_RUN`.

use crate::error::DialerError;
use crate::sessions::{self, Session};
use crate::tick::db;
use crate::txn;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Writer sessions running at once (one per owner role).
pub const MAX_WRITERS: usize = 2;
/// A writer stops after this long or this many writes, so that the owners take turns.
const WRITER_TURN: Duration = Duration::from_secs(20);
const WRITER_TURN_WRITES: usize = 500;
/// A writer with nothing due waits this long for more before it exits (a campaign's leads change
/// every few hundred milliseconds; a new session for each would cost more than the wait).
const WRITER_LINGER: Duration = Duration::from_secs(2);
const WRITER_LINGER_POLL: Duration = Duration::from_millis(50);
/// A writer still running after this is ended (a table's trigger that never returns).
const WRITER_MAX_RUN: Duration = Duration::from_secs(60);
/// Each write, the table's triggers included, is cancelled after this. (statement_timeout is
/// armed by the client protocol's loop only, never for a background worker's SPI, so the timer
/// is armed here; a trigger cannot turn it off with SET.)
const WRITE_TIMEOUT_MS: i32 = 5_000;
const WRITE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '1s'";
/// Postgres's timeout.h (`TimeoutId`): STATEMENT_TIMEOUT is 3 in every supported major.
const STATEMENT_TIMEOUT_ID: std::ffi::c_int = 3;

unsafe extern "C-unwind" {
    fn enable_timeout_after(id: std::ffi::c_int, delay_ms: std::ffi::c_int);
    fn disable_timeout(id: std::ffi::c_int, keep_indicator: bool);
}

/// The roles whose tables have writes due now, at most `limit`. Before Postgres 17 a background
/// worker can connect only as a role that may log in: the writes of other owners wait, noted on
/// their attachments.
pub fn due_owners(limit: usize) -> Result<Vec<pg_sys::Oid>, DialerError> {
    // (from a kept plan: this runs at every poll round)
    if !crate::tick::one::<bool>("SELECT EXISTS (SELECT 1 FROM dialer.lead_writes)", &[])? {
        return Ok(Vec::new());
    }
    let rows: Vec<(Option<pg_sys::Oid>, Option<bool>)> = Spi::connect(|client| {
        let table = client.select(
            "SELECT owner, can_login FROM dialer._lead_writes_due_owners($1)",
            None,
            &[(limit.min(i32::MAX as usize) as i32).into()],
        )?;
        table.map(|r| Ok((r.get::<pg_sys::Oid>(1)?, r.get::<bool>(2)?))).collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .map_err(db)?;
    let mut owners = Vec::new();
    for (owner, can_login) in rows {
        let Some(owner) = owner else { continue };
        if can_login == Some(true) || cfg!(any(feature = "pg17", feature = "pg18")) {
            owners.push(owner);
        } else {
            Spi::run_with_args(
                "SELECT dialer._lead_writes_blocked($1, $2)",
                &[
                    owner.into(),
                    "lead rows are written back as the table's owner, which cannot log in: ALTER ROLE ... LOGIN (no password is needed)"
                        .into(),
                ],
            )
            .map_err(db)?;
        }
    }
    Ok(owners)
}

struct Running {
    owner: pg_sys::Oid,
    session: Session,
}

/// The writer sessions the dialing worker has started.
#[derive(Default)]
pub struct Writers {
    running: Vec<Running>,
}

impl Writers {
    /// Forgets writers that ended, ends those that ran too long, and starts one for each owner
    /// given that has none (up to MAX_WRITERS). Call outside a transaction: the handles must
    /// outlive it.
    pub fn start(&mut self, owners: &[pg_sys::Oid]) {
        self.running = std::mem::take(&mut self.running)
            .into_iter()
            .filter_map(|w| w.session.still_running().map(|session| Running { owner: w.owner, session }))
            .collect();
        for &owner in owners {
            if self.running.len() >= MAX_WRITERS {
                break;
            }
            if self.running.iter().any(|w| w.owner == owner) {
                continue;
            }
            let database = unsafe { pg_sys::MyDatabaseId }.to_u32().to_string();
            let started = sessions::start(
                "pg_dialer lead writer",
                format!("lead writer of role {}", owner.to_u32()),
                "pg_dialer_lead_writer_main",
                Some(pg_sys::Datum::from(owner.to_u32())),
                &database,
                WRITER_MAX_RUN,
            );
            match started {
                Some(session) => self.running.push(Running { owner, session }),
                None => break, // no free slot now: the next round tries again
            }
        }
    }
}

/// One leased write, applied: Ok(false) when none was due.
fn write_one(taken: &std::cell::Cell<Option<i64>>) -> Result<bool, DialerError> {
    Spi::run(WRITE_LOCK_TIMEOUT).map_err(db)?;
    let Some(id) = taken.get() else { return Ok(false) };
    let read = Spi::connect(|client| {
        let mut t =
            client.select("SELECT writer::text, lead_key, lead_values, upto FROM dialer._lead_writes_read($1)", None, &[id.into()])?;
        match t.next() {
            Some(r) => Ok(Some((r.get::<String>(1)?, r.get::<String>(2)?, r.get::<Vec<Option<String>>>(3)?, r.get::<i64>(4)?))),
            None => Ok::<_, pgrx::spi::Error>(None),
        }
    })
    .map_err(db)?;
    let Some((writer, key, values, upto)) = read else { return Ok(true) };
    if let (Some(writer), Some(key), Some(values)) = (writer, key, values) {
        Spi::run_with_args("SELECT dialer._lead_apply($1::regprocedure, $2, $3)", &[writer.into(), key.into(), values.into()])
            .map_err(db)?;
    }
    Spi::run_with_args("SELECT dialer._lead_writes_done($1, $2)", &[id.into(), upto.unwrap_or(id).into()]).map_err(db)?;
    Ok(true)
}

fn take() -> Result<Option<i64>, DialerError> {
    Spi::get_one::<i64>("SELECT dialer._lead_writes_take()").map_err(db)
}

/// A writer session: connected as the role in its argument, to the database in its extra; applies
/// that role's due writes, each leased in one transaction and applied in the next, until none is
/// due or its turn is over.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_dialer_lead_writer_main(arg: pg_sys::Datum) {
    // (inside a table's trigger too; the dialing worker sends SIGTERM to a writer that runs too long)
    sessions::end_at_sigterm();
    let owner = pg_sys::Oid::from(arg.value() as u32);
    let Ok(database) = BackgroundWorker::get_extra().parse::<u32>() else {
        warning!("pg_dialer lead writer: no database given");
        return;
    };
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    let flags = pg_sys::BGWORKER_BYPASS_ROLELOGINCHECK;
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    let flags = 0;
    unsafe { pg_sys::BackgroundWorkerInitializeConnectionByOid(pg_sys::Oid::from(database), owner, flags) };
    let turn_ends = Instant::now() + WRITER_TURN;
    let mut idle_since: Option<Instant> = None;
    let mut written = 0;
    while written < WRITER_TURN_WRITES && Instant::now() < turn_ends {
        pgrx::check_for_interrupts!();
        let taken = std::cell::Cell::new(None);
        match txn::run(take) {
            Ok(Some(id)) => {
                taken.set(Some(id));
                idle_since = None;
                written += 1;
            }
            Ok(None) => {
                if idle_since.get_or_insert_with(Instant::now).elapsed() >= WRITER_LINGER {
                    break;
                }
                unsafe {
                    pg_sys::WaitLatch(
                        pg_sys::MyLatch,
                        (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                        WRITER_LINGER_POLL.as_millis() as std::ffi::c_long,
                        pg_sys::PG_WAIT_EXTENSION,
                    );
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
                continue;
            }
            Err(e) => {
                warning!("pg_dialer lead writer: {e}");
                break;
            }
        }
        unsafe { enable_timeout_after(STATEMENT_TIMEOUT_ID, WRITE_TIMEOUT_MS) };
        let outcome = txn::run(|| write_one(&taken));
        unsafe { disable_timeout(STATEMENT_TIMEOUT_ID, false) };
        if let Err(e) = outcome {
            let message = e.to_string();
            warning!("pg_dialer: a lead row could not be written back (tried again later): {message}");
            if let Some(id) = taken.get() {
                let _ = txn::run(|| {
                    Spi::run_with_args("SELECT dialer._lead_writes_failed($1, $2)", &[id.into(), message.as_str().into()]).map_err(db)
                });
            }
        }
    }
}
