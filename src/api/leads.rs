//! The entry point of the trigger on an attached leads table (sql/attach.sql, docs/security.md).

use crate::api::process::raise;
use crate::error::DialerError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

/// A lead changed in table `p_table` (dialer._lead_changed, the trigger, hands over the fields
/// the attachment names, built-in values only). SECURITY INVOKER on purpose: the role it runs as
/// is the role that changed the row (read here, where no caller can forge it; an argument could
/// be), and that role must be allowed to change the attached table. The rest is
/// dialer._lead_event_apply's, run as the extension's owner, which no other caller may run.
#[pg_extern(volatile)]
fn _lead_event(p_attachment_id: i64, p_table: pg_sys::Oid, p_op: &str, p_lead: pgrx::JsonB) {
    let changed_by = unsafe { pg_sys::GetUserId() };
    let owner = Spi::get_one::<pg_sys::Oid>("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pg_dialer'")
        .unwrap_or_else(|e| raise(DialerError::database(e.to_string())))
        .unwrap_or_else(|| raise(DialerError::NotFound("the pg_dialer extension is not installed in this database".into())));
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(owner, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let op = p_op.to_string();
    PgTryBuilder::new(move || {
        Spi::run_with_args(
            "SELECT dialer._lead_event_apply($1, $2, $3, $4, $5)",
            &[p_attachment_id.into(), p_table.into(), op.as_str().into(), p_lead.into(), changed_by.into()],
        )
        .unwrap_or_else(|e| raise(DialerError::database(e.to_string())))
    })
    .finally(move || unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) })
    .execute();
}
