//! Helpers shared by the provider handlers: responses, queries, timestamps, fault gate.

use crate::config::Provider;
use crate::log::RecordGuard;
use crate::state::{AppState, Outcome};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Per-connection handle: notifying it makes the server drop the TCP connection unanswered.
#[derive(Clone, Default)]
pub(crate) struct ConnKill(pub Arc<Notify>);

pub(crate) type St = Arc<AppState>;

pub(crate) fn json(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

pub(crate) fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}

pub(crate) fn status_code(s: u16) -> StatusCode {
    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Decoded `key=value` pairs of a query string (lenient: never fails).
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn rfc3339(us: i64) -> Value {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

pub(crate) fn rfc2822(us: i64) -> Value {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| Value::String(d.format("%a, %d %b %Y %H:%M:%S +0000").to_string()))
        .unwrap_or(Value::Null)
}

/// The raw body as a string for the log when it is not valid JSON (bounded).
pub(crate) fn raw_body(bytes: &[u8]) -> Value {
    const MAX: usize = 64 * 1024;
    let cut = &bytes[..bytes.len().min(MAX)];
    Value::String(String::from_utf8_lossy(cut).into_owned())
}

/// Form fields as a JSON object; repeated keys become arrays.
pub(crate) fn form_to_json(pairs: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        match m.get_mut(k) {
            None => {
                m.insert(k.clone(), Value::String(v.clone()));
            }
            Some(Value::Array(a)) => a.push(Value::String(v.clone())),
            Some(other) => {
                let first = other.take();
                *other = Value::Array(vec![first, Value::String(v.clone())]);
            }
        }
    }
    Value::Object(m)
}

/// Why a create request got no call.
pub(crate) enum Fault {
    RateLimited {
        retry_after_secs: u64,
    },
    Error {
        status: u16,
        message: Option<String>,
    },
    /// A hung request whose hold time ran out with the client still connected.
    HangExpired,
}

/// Applies rules/random faults and latency to a create request. `Ok` = create the call
/// with this duration and end reason. A dropped connection never returns.
pub(crate) async fn gate(
    st: &AppState,
    rec: &RecordGuard,
    kill: &ConnKill,
    provider: Provider,
    to: &str,
) -> Result<(u64, Option<String>), Fault> {
    let (delay, outcome) = st.decide(provider, to);
    let fault = match &outcome {
        Outcome::Create { .. } => None,
        Outcome::RateLimited { .. } => Some("rate_limited"),
        Outcome::Error { .. } => Some("error"),
        Outcome::Hang { .. } => Some("hang"),
        Outcome::Drop => Some("drop_connection"),
    };
    if let Some(f) = fault {
        rec.update(|r| r.fault = Some(f.to_string()));
    }
    if let Outcome::Hang { secs } = outcome {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        return Err(Fault::HangExpired);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match outcome {
        Outcome::Create {
            duration_ms,
            end_reason,
        } => Ok((duration_ms, end_reason)),
        Outcome::RateLimited { retry_after_secs } => Err(Fault::RateLimited { retry_after_secs }),
        Outcome::Error { status, message } => Err(Fault::Error { status, message }),
        Outcome::Hang { .. } => Err(Fault::HangExpired),
        Outcome::Drop => {
            kill.0.notify_one();
            // The connection task drops this future together with the socket.
            std::future::pending::<Result<(u64, Option<String>), Fault>>().await
        }
    }
}

/// A positive page size from the first of `names` present, else `default`.
pub(crate) fn page_size(q: &[(String, String)], names: &[&str], default: usize) -> usize {
    q.iter()
        .find(|(k, _)| names.contains(&k.as_str()))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}
