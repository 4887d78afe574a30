//! Server-sent events: each open campaigns page gets its figures again every 1.5 s, read as the
//! signed-in role (so row-level security applies to the updates too).

use crate::auth::Current;
use crate::{live, App};
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

#[derive(Deserialize)]
pub struct Which {
    batch: Option<i64>,
    /// "queue": the queue page's counters; otherwise the campaigns (all, or `batch`).
    page: Option<String>,
}

async fn queue_counts(c: &tokio_postgres::Client) -> Result<serde_json::Value, crate::db::AppError> {
    let stats: serde_json::Value = c.query_one("SELECT dialer.queue_stats()", &[]).await?.try_get(0)?;
    let mut text = serde_json::Map::new();
    if let Some(obj) = stats.as_object() {
        for (k, v) in obj {
            text.insert(format!("q.{k}"), serde_json::json!(v.to_string()));
        }
    }
    Ok(serde_json::json!({ "text": text }))
}

pub async fn stream(
    State(_): State<App>,
    Current(s): Current,
    Query(w): Query<Which>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(Duration::from_millis(1500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let queue = w.page.as_deref() == Some("queue");
    let st = stream::unfold((s, tick, w.batch), move |(s, mut tick, batch)| async move {
        tick.tick().await;
        if !s.is_live() {
            return None; // signed out: the stream ends, the browser's EventSource gets 401 on reconnect
        }
        let data = match s.pool.get().await {
            Ok(c) => match if queue { queue_counts(&c).await } else { live::snapshot(&c, batch).await } {
                Ok(v) => v.to_string(),
                Err(e) => serde_json::json!({"error": e.message}).to_string(),
            },
            Err(e) => serde_json::json!({"error": e.to_string()}).to_string(),
        };
        Some((Ok(Event::default().data(data)), (s, tick, batch)))
    });
    Sse::new(st).keep_alive(KeepAlive::default())
}
