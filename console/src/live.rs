//! The figures that move while a campaign runs: read for the page and again for each server-sent
//! update, so the page and its updates cannot disagree. Keys are "b{id}.{field}".

use crate::charts;
use crate::db::Result;
use crate::html::esc;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tokio_postgres::Client;

pub struct Batch {
    pub id: i64,
    pub name: String,
    pub agency: String,
    pub status: String,
    pub total: i32,
    pub queued: i32,
    pub in_progress: i32,
    pub completed: i32,
    pub failed: i32,
    pub percent: f64,
    pub cpm: i32,
    pub max_concurrent: i32,
    pub last_error: Option<String>,
    /// Attempts started in the last 60 seconds: the pace against calls_per_minute.
    pub last_minute: i64,
    pub reasons: Vec<(String, i64)>,
}

impl Batch {
    pub fn pace_pct(&self) -> f64 {
        pct(self.last_minute as f64, self.cpm as f64)
    }
    pub fn conc_pct(&self) -> f64 {
        pct(self.in_progress as f64, self.max_concurrent as f64)
    }
    pub fn done_pct(&self) -> f64 {
        pct(self.completed as f64, self.total as f64)
    }
    pub fn failed_pct(&self) -> f64 {
        pct(self.failed as f64, self.total as f64)
    }
    pub fn reasons_html(&self) -> String {
        if self.reasons.is_empty() {
            return String::new();
        }
        let items: String = self.reasons.iter().take(3).map(|(r, n)| format!("<li>{} × {}</li>", n, esc(r))).collect();
        format!("<ul class=\"reasons\">{items}</ul>")
    }
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        0.0
    } else {
        (100.0 * part / whole).clamp(0.0, 100.0)
    }
}

/// The batches the signed-in role may see (row-level security), or just `only`.
pub async fn batches(c: &Client, only: Option<i64>) -> Result<Vec<Batch>> {
    let rows = c
        .query(
            "SELECT p.batch_id, p.name, a.name, p.status, p.total_contacts, p.queued_count, p.in_progress_count,
                    p.completed_count, p.failed_count, p.percent_done::float8, p.calls_per_minute, p.max_concurrent, p.last_error,
                    (SELECT count(*) FROM dialer.calls k WHERE k.batch_id = p.batch_id AND k.created_at > now() - interval '1 minute')
               FROM dialer.batch_progress p JOIN dialer.agencies a ON a.id = p.agency_id
              WHERE $1::int8 IS NULL OR p.batch_id = $1
              ORDER BY (p.status IN ('processing', 'paused', 'scheduled', 'pending')) DESC, p.batch_id DESC LIMIT 100",
            &[&only],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Batch {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            agency: r.try_get(2)?,
            status: r.try_get(3)?,
            total: r.try_get(4)?,
            queued: r.try_get(5)?,
            in_progress: r.try_get(6)?,
            completed: r.try_get(7)?,
            failed: r.try_get(8)?,
            percent: r.try_get::<_, Option<f64>>(9)?.unwrap_or(0.0),
            cpm: r.try_get(10)?,
            max_concurrent: r.try_get(11)?,
            last_error: r.try_get(12)?,
            last_minute: r.try_get(13)?,
            reasons: Vec::new(),
        });
    }
    let ids: Vec<i64> = out.iter().map(|b| b.id).collect();
    let reasons = c
        .query(
            "SELECT batch_id, coalesce(error, end_reason, status), count(*) FROM dialer.calls
              WHERE batch_id = ANY($1) AND status IN ('failed', 'network_error', 'rate_limited', 'in_doubt')
              GROUP BY 1, 2 ORDER BY 3 DESC",
            &[&ids],
        )
        .await?;
    let mut by_batch: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
    for r in reasons {
        by_batch.entry(r.try_get(0)?).or_default().push((r.try_get(1)?, r.try_get(2)?));
    }
    for b in &mut out {
        b.reasons = by_batch.remove(&b.id).unwrap_or_default();
    }
    Ok(out)
}

/// Attempts per minute over the last hour (oldest first) and the limit they run against.
pub async fn per_minute(c: &Client, only: Option<i64>) -> Result<(Vec<i64>, i64)> {
    let rows = c
        .query(
            "SELECT (extract(epoch FROM date_trunc('minute', now()) - date_trunc('minute', created_at)) / 60)::int4, count(*)
               FROM dialer.calls WHERE created_at >= date_trunc('minute', now()) - interval '59 minutes'
                AND ($1::int8 IS NULL OR batch_id = $1) GROUP BY 1",
            &[&only],
        )
        .await?;
    let mut buckets = vec![0i64; 60];
    for r in rows {
        let ago: i32 = r.try_get(0)?;
        if (0..60).contains(&ago) {
            buckets[59 - ago as usize] = r.try_get(1)?;
        }
    }
    let limit: i64 = c
        .query_one(
            "SELECT coalesce(sum(calls_per_minute), 0)::int8 FROM dialer.call_batches
              WHERE CASE WHEN $1::int8 IS NULL THEN status = 'processing' ELSE id = $1 END",
            &[&only],
        )
        .await?
        .try_get(0)?;
    Ok((buckets, limit))
}

/// Calls by outcome (a batch's all, else the last 24 hours).
pub async fn outcomes(c: &Client, only: Option<i64>) -> Result<Vec<(String, i64)>> {
    let rows = c
        .query(
            "SELECT CASE WHEN status = 'ended' THEN coalesce(disposition, end_reason, 'ended') ELSE status END, count(*)
               FROM dialer.calls
              WHERE CASE WHEN $1::int8 IS NULL THEN created_at > now() - interval '1 day' ELSE batch_id = $1 END
              GROUP BY 1 ORDER BY 2 DESC",
            &[&only],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push((r.try_get(0)?, r.try_get(1)?));
    }
    Ok(out)
}

/// Everything a campaigns page updates in place.
pub async fn snapshot(c: &Client, only: Option<i64>) -> Result<Value> {
    let list = batches(c, only).await?;
    let (minutes, limit) = per_minute(c, only).await?;
    let outs = outcomes(c, only).await?;
    let (mut text, mut width, mut html) = (Map::new(), Map::new(), Map::new());
    for b in &list {
        let k = |f: &str| format!("b{}.{f}", b.id);
        text.insert(k("status"), json!(b.status));
        text.insert(k("completed"), json!(b.completed.to_string()));
        text.insert(k("failed"), json!(b.failed.to_string()));
        text.insert(k("in_progress"), json!(b.in_progress.to_string()));
        text.insert(k("queued"), json!(b.queued.to_string()));
        text.insert(k("total"), json!(b.total.to_string()));
        text.insert(k("percent"), json!(format!("{:.1}%", b.percent)));
        text.insert(k("pace"), json!(format!("{} / {} per min", b.last_minute, b.cpm)));
        text.insert(k("concurrency"), json!(format!("{} / {}", b.in_progress, b.max_concurrent)));
        width.insert(k("done"), json!(format!("{:.2}%", b.done_pct())));
        width.insert(k("failedw"), json!(format!("{:.2}%", b.failed_pct())));
        width.insert(k("pacew"), json!(format!("{:.2}%", b.pace_pct())));
        width.insert(k("concw"), json!(format!("{:.2}%", b.conc_pct())));
        html.insert(k("reasons"), json!(b.reasons_html()));
    }
    html.insert("chart".into(), json!(charts::per_minute(&minutes, limit)));
    html.insert("outcomes".into(), json!(charts::outcomes(&outs)));
    Ok(json!({"text": text, "width": width, "html": html}))
}
