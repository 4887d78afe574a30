//! The seed's six monitoring metrics against their thresholds, and the worker's recent ticks.

use crate::auth::Current;
use crate::db::Result;
use crate::frame;
use crate::html::{self, esc, opt};
use crate::App;
use axum::extract::State;
use axum::response::Html;

pub async fn page(State(_): State<App>, Current(s): Current) -> Result<Html<String>> {
    let c = s.pool.get().await?;
    let rows = c.query("SELECT metric, value, threshold, ok, unit, alert FROM dialer.health", &[]).await?;
    let mut body = String::from("<div class=\"card\"><h2>Health, last hour</h2><table id=\"health\"><thead><tr><th>Metric</th><th>Value</th><th>Threshold</th><th>State</th><th>If not</th></tr></thead><tbody>");
    for r in &rows {
        let ok: Option<bool> = r.try_get(3)?;
        let value: Option<f64> = r.try_get(1)?;
        let threshold: Option<f64> = r.try_get(2)?;
        body.push_str(&format!(
            "<tr><td><b>{}</b></td><td class=\"num\">{}</td><td class=\"num\">{} <span class=\"muted small\">{}</span></td><td>{}</td><td class=\"small\">{}</td></tr>",
            esc(&r.try_get::<_, String>(0)?),
            value.map(|v| format!("{:.1}", v)).unwrap_or_else(|| "<span class=\"muted\">no data</span>".into()),
            threshold.map(|v| format!("{v}")).unwrap_or_default(),
            opt(&r.try_get(4)?),
            html::badge(if ok.unwrap_or(true) { "ok" } else { "bad" }),
            opt(&r.try_get(5)?),
        ));
    }
    body.push_str("</tbody></table></div><div class=\"card\"><h2>Recent ticks</h2>");
    if !s.operator {
        body.push_str("<p class=\"muted\" id=\"runs-hidden\">The worker's ticks (dialer.runs) are not visible to your role.</p></div>");
        return Ok(frame::page("Health", &s, "/health", None, &body));
    }
    let runs = c
        .query(
            "SELECT id, to_char(started_at, 'YYYY-MM-DD HH24:MI:SS.MS'), duration_ms, mode, batches, initiated, failed, rate_limited, status, error
               FROM dialer.runs ORDER BY id DESC LIMIT 50",
            &[],
        )
        .await?;
    body.push_str("<table id=\"runs\"><thead><tr><th>#</th><th>Started</th><th>Duration</th><th>Mode</th><th>Batches</th><th>Initiated</th><th>Failed</th><th>Rate-limited</th><th>Status</th><th>Error</th></tr></thead><tbody>");
    for r in &runs {
        body.push_str(&format!(
            "<tr><td class=\"num\">{}</td><td class=\"num small\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"small\">{}</td></tr>",
            r.try_get::<_, i64>(0)?,
            opt(&r.try_get(1)?),
            r.try_get::<_, Option<f64>>(2)?.map(|d| format!("{d:.1} ms")).unwrap_or_default(),
            esc(&r.try_get::<_, String>(3)?),
            r.try_get::<_, i32>(4)?,
            r.try_get::<_, i32>(5)?,
            r.try_get::<_, i32>(6)?,
            r.try_get::<_, i32>(7)?,
            html::badge(&r.try_get::<_, String>(8)?),
            opt(&r.try_get(9)?),
        ));
    }
    if runs.is_empty() {
        body.push_str("<tr><td colspan=\"10\" class=\"muted\">No ticks yet.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    Ok(frame::page("Health", &s, "/health", None, &body))
}
