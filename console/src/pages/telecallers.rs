//! Hand-offs and follow-ups per telecaller, and hand-offs still waiting for one.

use crate::auth::Current;
use crate::db::Result;
use crate::frame;
use crate::html::{self, esc, opt};
use crate::App;
use axum::extract::State;
use axum::response::Html;

pub async fn page(State(_): State<App>, Current(s): Current) -> Result<Html<String>> {
    let c = s.pool.get().await?;
    let rows = c
        .query(
            "SELECT t.id, t.name, t.source, t.available, a.name,
                    count(f.id) FILTER (WHERE f.status = 'open'), count(f.id) FILTER (WHERE f.status = 'open' AND f.priority),
                    count(f.id) FILTER (WHERE f.status = 'done'), to_char(min(f.review_at) FILTER (WHERE f.status = 'open'), 'YYYY-MM-DD HH24:MI')
               FROM dialer.telecallers t JOIN dialer.agencies a ON a.id = t.agency_id
               LEFT JOIN dialer.followups f ON f.telecaller_id = t.id
              GROUP BY t.id, a.name ORDER BY a.name, t.name",
            &[],
        )
        .await?;
    let pending: i64 =
        c.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE handoff = 'manual_pending'", &[]).await?.try_get(0)?;
    let mut body = format!(
        "<div class=\"row\"><div class=\"card\"><div class=\"small muted\">Hand-offs waiting for a telecaller</div><div class=\"stat num\" id=\"pending-handoffs\">{pending}</div></div></div>\
         <div class=\"card\"><table id=\"telecallers\"><thead><tr><th>Telecaller</th><th>Agency</th><th>Source</th><th>Available</th><th>Open follow-ups</th><th>Priority</th><th>Done</th><th>Next review</th><th></th></tr></thead><tbody>"
    );
    for r in &rows {
        let id: i64 = r.try_get(0)?;
        let available: bool = r.try_get(3)?;
        let act = if available {
            frame::action(&s, &format!("/actions/telecaller/{id}/unavailable"), "Mark away", "/telecallers", "")
        } else {
            frame::action(&s, &format!("/actions/telecaller/{id}/available"), "Mark available", "/telecallers", "primary")
        };
        body.push_str(&format!(
            "<tr><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"small\">{}</td><td>{act}</td></tr>",
            esc(&r.try_get::<_, String>(1)?),
            esc(&r.try_get::<_, String>(4)?),
            opt(&r.try_get(2)?),
            html::badge(if available { "ok" } else { "paused" }),
            r.try_get::<_, i64>(5)?,
            r.try_get::<_, i64>(6)?,
            r.try_get::<_, i64>(7)?,
            opt(&r.try_get(8)?),
        ));
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"9\" class=\"muted\">No telecallers visible to your role.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    let open = c
        .query(
            "SELECT f.id, t.name, c.phone_number, c.name, to_char(f.review_at, 'YYYY-MM-DD HH24:MI'), f.priority, f.notes
               FROM dialer.followups f JOIN dialer.campaign_contacts c ON c.id = f.contact_id
               LEFT JOIN dialer.telecallers t ON t.id = f.telecaller_id
              WHERE f.status = 'open' ORDER BY f.priority DESC, f.review_at NULLS LAST LIMIT 100",
            &[],
        )
        .await?;
    body.push_str("<div class=\"card\"><h2>Open follow-ups</h2><table><thead><tr><th>#</th><th>Telecaller</th><th>Phone</th><th>Name</th><th>Review at</th><th>Priority</th><th>Notes</th></tr></thead><tbody>");
    for r in &open {
        body.push_str(&format!(
            "<tr><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"small\">{}</td><td>{}</td><td class=\"small\">{}</td></tr>",
            r.try_get::<_, i64>(0)?,
            opt(&r.try_get(1)?),
            esc(&r.try_get::<_, String>(2)?),
            opt(&r.try_get(3)?),
            opt(&r.try_get(4)?),
            if r.try_get::<_, bool>(5)? { html::badge("failed") } else { String::new() },
            opt(&r.try_get(6)?),
        ));
    }
    if open.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"muted\">No open follow-ups.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    Ok(frame::page("Telecallers", &s, "/telecallers", None, &body))
}
