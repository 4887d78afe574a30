//! Short transactions for the worker. Unlike `BackgroundWorker::transaction`, an error (ours or a
//! Postgres ERROR) rolls the transaction back and is returned, so one bad tick never ends the
//! worker.

use crate::error::{sqlstate_text, DbError, DialerError};
use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::panic::AssertUnwindSafe;

/// Runs `body` in a transaction of its own and commits it. The COMMIT is inside the guard too: an
/// error at commit (a table's deferred trigger, in a lead writer session) is returned like any
/// other, the transaction rolled back, rather than ending the process.
pub fn run<R>(body: impl FnOnce() -> Result<R, DialerError>) -> Result<R, DialerError> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let body = AssertUnwindSafe(body);
    let outcome = PgTryBuilder::new(move || {
        let body = body;
        let value = (body.0)()?;
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(value)
    })
    .catch_others(|caught| Err(DialerError::Database(db_error_of(&caught))))
    .execute();
    if outcome.is_err() {
        abort();
    }
    outcome
}

/// An error caught by PgTryBuilder, whatever raised it, with its SQLSTATE, detail and hint.
fn db_error_of(caught: &pgrx::pg_sys::panic::CaughtError) -> DbError {
    match caught {
        pgrx::pg_sys::panic::CaughtError::PostgresError(r)
        | pgrx::pg_sys::panic::CaughtError::ErrorReport(r)
        | pgrx::pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => DbError {
            sqlstate: sqlstate_text(r.sql_error_code() as i32),
            message: r.message().to_string(),
            detail: r.detail().map(str::to_string),
            hint: r.hint().map(str::to_string),
        },
    }
}

fn abort() {
    unsafe {
        // As PostgresMain does after an error: abort, back to a sane memory context.
        pg_sys::AbortCurrentTransaction();
        pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
    }
}

/// Runs `body` in a subtransaction of the current transaction: an error (ours or a Postgres
/// ERROR) rolls back only what `body` did and is returned, and the transaction goes on. The claim
/// runs each batch this way, so one batch whose rows cannot be claimed stops nobody else.
pub fn isolated<R>(body: impl FnOnce() -> Result<R, DialerError>) -> Result<R, DialerError> {
    let (context, owner) = unsafe {
        let saved = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        // BeginInternalSubTransaction switches to the subtransaction's context; work in ours.
        pg_sys::MemoryContextSwitchTo(saved.0);
        saved
    };
    let body = AssertUnwindSafe(body);
    let outcome = PgTryBuilder::new(move || {
        let body = body;
        Ok((body.0)())
    })
    .catch_others(|caught| Err(db_error_of(&caught)))
    .execute();
    unsafe {
        match &outcome {
            Ok(Ok(_)) => pg_sys::ReleaseCurrentSubTransaction(),
            _ => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    match outcome {
        Ok(r) => r,
        Err(caught) => Err(DialerError::Database(caught)),
    }
}

/// An SPI call that failed on our side (a statement or a type the library got wrong).
impl From<pgrx::spi::SpiError> for DialerError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        DialerError::database(e.to_string())
    }
}
