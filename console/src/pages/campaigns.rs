//! Campaigns: progress, pace against calls_per_minute, concurrency against max_concurrent,
//! failures with their reasons; one campaign's contacts with a status filter and why_not_dialed.

use crate::auth::{Current, Session};
use crate::db::Result;
use crate::frame;
use crate::html::{self, esc, opt};
use crate::live::{self, Batch};
use crate::{charts, App};
use axum::extract::{Path, Query, State};
use axum::response::Html;
use serde::Deserialize;

fn bar(key: &str, a: (&str, f64), b: Option<(&str, f64)>) -> String {
    let mut s = format!("<div class=\"bar\"><span class=\"{}\" data-live-w=\"{key}.{}\" data-w=\"{:.2}%\"></span>", a.0, wkey(a.0), a.1);
    if let Some((class, w)) = b {
        s.push_str(&format!("<span class=\"{class}\" data-live-w=\"{key}.{}\" data-w=\"{w:.2}%\"></span>", wkey(class)));
    }
    s + "</div>"
}

fn wkey(class: &str) -> &'static str {
    match class {
        "ok" => "done",
        "bad" => "failedw",
        "pace" => "pacew",
        _ => "concw",
    }
}

fn actions(s: &Session, b: &Batch, back: &str) -> String {
    let p = |op: &str| format!("/actions/batch/{}/{op}", b.id);
    let mut out = String::new();
    if matches!(b.status.as_str(), "processing" | "pending" | "scheduled") {
        out.push_str(&frame::action(s, &p("pause"), "Pause", back, ""));
    }
    if b.status == "paused" {
        out.push_str(&frame::action(s, &p("resume"), "Resume", back, "primary"));
    }
    if !matches!(b.status.as_str(), "completed" | "cancelled") {
        out.push_str(&frame::action(s, &p("cancel"), "Cancel", back, "danger"));
    }
    out
}

fn row(s: &Session, b: &Batch, back: &str) -> String {
    let k = format!("b{}", b.id);
    format!(
        "<tr id=\"batch-{id}\"><td><a href=\"/campaigns/{id}\"><b>{name}</b></a><div class=\"small muted\">#{id} · {agency}</div></td>\
         <td><span class=\"badge st-{st}\" data-live=\"{k}.status\">{st}</span></td>\
         <td class=\"w220\">{bar}<div class=\"small num\"><span data-live=\"{k}.percent\" class=\"pct\">{pct:.1}%</span> · \
         <span data-live=\"{k}.completed\" class=\"completed\">{c}</span> done, <span data-live=\"{k}.failed\">{f}</span> failed, \
         <span data-live=\"{k}.queued\">{q}</span> queued of <span data-live=\"{k}.total\">{t}</span></div></td>\
         <td class=\"w150\">{pace}<div class=\"small num\" data-live=\"{k}.pace\">{lm} / {cpm} per min</div></td>\
         <td class=\"w130\">{conc}<div class=\"small num\" data-live=\"{k}.concurrency\">{ip} / {mc}</div></td>\
         <td class=\"small\">{err}<div data-live-h=\"{k}.reasons\">{reasons}</div></td><td>{actions}</td></tr>",
        id = b.id,
        name = esc(&b.name),
        agency = esc(&b.agency),
        st = esc(&b.status),
        bar = bar(&k, ("ok", b.done_pct()), Some(("bad", b.failed_pct()))),
        pct = b.percent,
        c = b.completed,
        f = b.failed,
        q = b.queued,
        t = b.total,
        pace = bar(&k, ("pace", b.pace_pct()), None),
        lm = b.last_minute,
        cpm = b.cpm,
        conc = bar(&k, ("warn", b.conc_pct()), None),
        ip = b.in_progress,
        mc = b.max_concurrent,
        err = b.last_error.as_deref().map(|e| format!("<div>{}</div>", esc(e))).unwrap_or_default(),
        reasons = b.reasons_html(),
        actions = actions(s, b, back),
    )
}

const HEAD: &str = "<table><thead><tr><th>Campaign</th><th>Status</th><th>Progress</th><th>Pace</th><th>Concurrency</th><th>Failures</th><th></th></tr></thead><tbody>";

async fn charts_html(c: &tokio_postgres::Client, only: Option<i64>) -> Result<String> {
    let (minutes, limit) = live::per_minute(c, only).await?;
    let outs = live::outcomes(c, only).await?;
    Ok(format!(
        "<div class=\"row\"><div class=\"card flex2\"><h2>Calls per minute, last hour</h2><div data-live-h=\"chart\">{}</div></div>\
         <div class=\"card\"><h2>Outcomes</h2><div data-live-h=\"outcomes\">{}</div></div></div>",
        charts::per_minute(&minutes, limit),
        charts::outcomes(&outs)
    ))
}

pub async fn list(State(_): State<App>, Current(s): Current) -> Result<Html<String>> {
    let c = s.pool.get().await?;
    let list = live::batches(&c, None).await?;
    let mut body = charts_html(&c, None).await?;
    body.push_str("<div class=\"card\">");
    if list.is_empty() {
        body.push_str("<p class=\"muted\" id=\"no-campaigns\">No campaigns visible to your role.</p>");
    } else {
        body.push_str(HEAD);
        for b in &list {
            body.push_str(&row(&s, b, "/"));
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</div>");
    Ok(frame::page("Campaigns", &s, "/", Some("/events"), &body))
}

#[derive(Deserialize)]
pub struct Filter {
    status: Option<String>,
}

const STATUSES: [&str; 8] = ["pending", "queued", "in_progress", "completed", "failed", "cancelled", "in_doubt", "expired"];

pub async fn one(State(_): State<App>, Current(s): Current, Path(id): Path<i64>, Query(f): Query<Filter>) -> Result<Html<String>> {
    let c = s.pool.get().await?;
    let list = live::batches(&c, Some(id)).await?;
    let Some(b) = list.first() else {
        return Err(crate::db::AppError::new(axum::http::StatusCode::NOT_FOUND, format!("campaign {id} is not visible to your role")));
    };
    let status = f.status.filter(|st| STATUSES.contains(&st.as_str()));
    let back = format!("/campaigns/{id}");
    let mut body = format!("<div class=\"card\">{HEAD}{}</tbody></table></div>", row(&s, b, &back));
    body.push_str(&charts_html(&c, Some(id)).await?);
    let tabs: String = std::iter::once(("all", None))
        .chain(STATUSES.iter().map(|st| (*st, Some(*st))))
        .map(|(label, st)| {
            let href = st.map(|st| format!("{back}?status={st}")).unwrap_or(back.clone());
            let on = st == status.as_deref();
            format!("<a class=\"btn{}\" href=\"{href}\">{label}</a>", if on { " on" } else { "" })
        })
        .collect();
    let rows = c
        .query(
            "SELECT c.id, c.phone_number, c.name, c.status, c.attempts, to_char(c.next_attempt_at, 'YYYY-MM-DD HH24:MI:SS'),
                    c.last_error, c.handoff,
                    CASE WHEN c.status IN ('pending', 'queued', 'in_doubt') THEN dialer.why_not_dialed(c.id) END
               FROM dialer.campaign_contacts c
              WHERE c.batch_id = $1 AND ($2::text IS NULL OR c.status = $2)
              ORDER BY c.id LIMIT 200",
            &[&id, &status],
        )
        .await?;
    body.push_str(&format!("<div class=\"card\"><h2>Contacts</h2><p class=\"tabs\">{tabs}</p><table id=\"contacts\"><thead><tr><th>#</th><th>Phone</th><th>Name</th><th>Status</th><th>Attempts</th><th>Next attempt</th><th>Why not dialed / last error</th><th>Hand-off</th></tr></thead><tbody>"));
    for r in &rows {
        let why: Option<serde_json::Value> = r.try_get(8)?;
        let reasons = why
            .as_ref()
            .and_then(|w| w.get("reasons").and_then(|r| r.as_array()).cloned().or_else(|| w.as_array().cloned()))
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.get("message").and_then(|m| m.as_str()).map(|m| format!("<div>{}</div>", esc(m))))
            .collect::<String>();
        let err: Option<String> = r.try_get(6)?;
        body.push_str(&format!(
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"small\">{}</td><td class=\"small\">{}{}</td><td>{}</td></tr>",
            r.try_get::<_, i64>(0)?,
            esc(&r.try_get::<_, String>(1)?),
            opt(&r.try_get(2)?),
            html::badge(&r.try_get::<_, String>(3)?),
            r.try_get::<_, i32>(4)?,
            opt(&r.try_get(5)?),
            reasons,
            err.map(|e| format!("<div class=\"muted\">{}</div>", esc(&e))).unwrap_or_default(),
            opt(&r.try_get(7)?),
        ));
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">No contacts in this state.</td></tr>");
    }
    body.push_str("</tbody></table><p class=\"small muted\">The first 200 shown.</p></div>");
    Ok(frame::page(&format!("Campaign: {}", b.name), &s, "/", Some(&format!("/events?batch={id}")), &body))
}
