//! Calls in progress, and attempts in doubt with their provider look-ups.

use crate::auth::Current;
use crate::db::Result;
use crate::frame;
use crate::html::{self, esc, opt};
use crate::App;
use axum::extract::State;
use axum::response::Html;

pub async fn page(State(_): State<App>, Current(s): Current) -> Result<Html<String>> {
    let c = s.pool.get().await?;
    let live = c
        .query(
            "SELECT k.id, k.batch_id, b.name, k.provider, k.provider_call_id, k.phone_number, k.status,
                    to_char(k.created_at, 'HH24:MI:SS'), extract(epoch FROM now() - coalesce(k.answered_at, k.created_at))::int8
               FROM dialer.calls k JOIN dialer.call_batches b ON b.id = k.batch_id
              WHERE k.status IN ('dialing', 'in_progress') ORDER BY k.id DESC LIMIT 200",
            &[],
        )
        .await?;
    let mut body = format!(
        "<div class=\"card\"><h2>In progress ({})</h2><table id=\"live-calls\"><thead><tr><th>Call</th><th>Campaign</th><th>Provider</th><th>Provider call id</th><th>Phone</th><th>Status</th><th>Started</th><th>For</th></tr></thead><tbody>",
        live.len()
    );
    for r in &live {
        body.push_str(&format!(
            "<tr><td class=\"num\">{}</td><td><a href=\"/campaigns/{1}\">{2}</a></td><td>{3}</td><td><code>{4}</code></td><td class=\"num\">{5}</td><td>{6}</td><td class=\"num\">{7}</td><td class=\"num\">{8} s</td></tr>",
            r.try_get::<_, i64>(0)?,
            r.try_get::<_, i64>(1)?,
            esc(&r.try_get::<_, String>(2)?),
            esc(&r.try_get::<_, String>(3)?),
            opt(&r.try_get(4)?),
            opt(&r.try_get(5)?),
            html::badge(&r.try_get::<_, String>(6)?),
            opt(&r.try_get(7)?),
            r.try_get::<_, Option<i64>>(8)?.unwrap_or(0),
        ));
    }
    if live.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">No call in progress.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    let doubt = c
        .query(
            "SELECT contact_id, batch_id, phone_number, attempts, last_error, call_id, provider, idempotency_key,
                    to_char(claimed_at, 'YYYY-MM-DD HH24:MI:SS'), lookup_attempts
               FROM dialer.in_doubt ORDER BY contact_id LIMIT 200",
            &[],
        )
        .await?;
    body.push_str(&format!(
        "<div class=\"card\"><h2>In doubt ({})</h2><p class=\"small muted\">The request may have reached the provider and a look-up by idempotency key has not settled it. \
         Redial only if you know the person was not called.</p><table id=\"in-doubt\"><thead><tr><th>Contact</th><th>Campaign</th><th>Phone</th><th>Provider</th><th>Idempotency key</th><th>Claimed</th><th>Look-ups</th><th>Last error</th><th></th></tr></thead><tbody>",
        doubt.len()
    ));
    for r in &doubt {
        let id: i64 = r.try_get(0)?;
        let acts = frame::action(&s, &format!("/actions/in-doubt/{id}/settle"), "Mark as called", "/calls", "")
            + &frame::action(&s, &format!("/actions/in-doubt/{id}/redial"), "Redial", "/calls", "danger");
        body.push_str(&format!(
            "<tr><td class=\"num\">{id}</td><td class=\"num\"><a href=\"/campaigns/{0}\">{0}</a></td><td class=\"num\">{1}</td><td>{2}</td><td><code>{3}</code></td><td class=\"small\">{4}</td><td class=\"num\">{5}</td><td class=\"small\">{6}</td><td>{acts}</td></tr>",
            r.try_get::<_, i64>(1)?,
            esc(&r.try_get::<_, String>(2)?),
            opt(&r.try_get(6)?),
            opt(&r.try_get(7)?),
            opt(&r.try_get(8)?),
            r.try_get::<_, Option<i32>>(9)?.unwrap_or(0),
            opt(&r.try_get(4)?),
        ));
    }
    if doubt.is_empty() {
        body.push_str("<tr><td colspan=\"9\" class=\"muted\">Nothing in doubt.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    Ok(frame::page("Calls", &s, "/calls", None, &body))
}
