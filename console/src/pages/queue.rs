//! The call queue, as Bull Board shows it: counts by state, then the jobs of one state.

use crate::auth::Current;
use crate::db::Result;
use crate::frame;
use crate::html::{self, esc, opt};
use crate::App;
use axum::extract::{Query, State};
use axum::response::Html;
use serde::Deserialize;

const STATES: [&str; 7] = ["waiting", "active", "delayed", "paused", "completed", "failed", "cancelled"];

#[derive(Deserialize)]
pub struct Filter {
    state: Option<String>,
}

pub async fn page(State(_): State<App>, Current(s): Current, Query(f): Query<Filter>) -> Result<Html<String>> {
    let c = s.pool.get().await?;
    let state = f.state.filter(|st| STATES.contains(&st.as_str())).unwrap_or_else(|| "waiting".into());
    let stats: serde_json::Value = c.query_one("SELECT dialer.queue_stats()", &[]).await?.try_get(0)?;
    let mut body = String::from("<div class=\"row\">");
    for st in STATES {
        let n = stats.get(st).and_then(|v| v.as_i64()).unwrap_or(0);
        body.push_str(&format!(
            "<a class=\"card qcard{}\" href=\"/queue?state={st}\"><div class=\"small muted\">{st}</div><div class=\"stat num\" id=\"count-{st}\" data-live=\"q.{st}\">{n}</div></a>",
            if st == state { " on" } else { "" }
        ));
    }
    body.push_str("</div>");
    let rows = c.query("SELECT j FROM dialer.list_jobs($1, 0, 49) j", &[&state]).await?;
    body.push_str(&format!(
        "<div class=\"card\"><h2>{} jobs</h2><table id=\"jobs\"><thead><tr><th>Job</th><th>State</th><th>To</th><th>Priority</th><th>Run at</th><th>Lead</th><th>Metadata</th><th>Attempts</th><th>Failed reason</th><th></th></tr></thead><tbody>",
        esc(&state)
    ));
    let back = format!("/queue?state={state}");
    for r in &rows {
        let j: serde_json::Value = r.try_get(0)?;
        let id = j.get("jobId").and_then(|v| v.as_i64()).unwrap_or(0);
        let data = j.get("data").cloned().unwrap_or_default();
        let field = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let metadata = data.get("metadata").filter(|m| m.as_object().is_some_and(|o| !o.is_empty())).map(|m| m.to_string());
        let short: String = metadata.unwrap_or_default().chars().take(120).collect();
        let mut act = String::new();
        if matches!(state.as_str(), "failed" | "cancelled" | "completed") {
            act.push_str(&frame::action(&s, &format!("/actions/job/{id}/retry"), "Retry", &back, ""));
        }
        if matches!(state.as_str(), "waiting" | "delayed" | "paused") {
            act.push_str(&frame::action(&s, &format!("/actions/job/{id}/cancel"), "Cancel", &back, "danger"));
        }
        body.push_str(&format!(
            "<tr><td class=\"num\">{id}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"small num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"small\">{}</td><td>{act}</td></tr>",
            html::badge(j.get("state").and_then(|v| v.as_str()).unwrap_or("")),
            opt(&field("to")),
            opt(&field("priority")),
            opt(&field("run_at").map(|t| t.chars().take(19).collect::<String>().replace('T', " "))),
            opt(&field("lead_id")),
            if short.is_empty() { String::new() } else { format!("<code>{}</code>", esc(&short)) },
            j.get("attemptsMade").map(|v| v.to_string()).unwrap_or_default(),
            esc(j.get("failedReason").and_then(|v| v.as_str()).unwrap_or("")),
        ));
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"10\" class=\"muted\">No jobs in this state.</td></tr>");
    }
    body.push_str("</tbody></table><p class=\"small muted\">The first 50 shown.</p></div>");
    Ok(frame::page("Queue", &s, "/queue", Some("/events?page=queue"), &body))
}
