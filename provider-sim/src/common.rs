//! Helpers shared by the provider handlers: responses, queries, timestamps, fault gate.

use crate::config::Provider;
use crate::log::RecordGuard;
use crate::state::{AppState, Outcome};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
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
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
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
    provider_contract::form_to_json(pairs)
}

/// Marks a request as refused by the request checks (`fault: "invalid_request"`).
pub(crate) fn refuse(rec: &RecordGuard, errors: &[String]) {
    let text = errors.join("; ");
    rec.update(|r| {
        r.fault = Some("invalid_request".to_string());
        r.error = Some(text);
    });
}

/// The body as JSON for the log, or the raw text when it is not JSON; plus the parse result.
pub(crate) fn parse_json_body(
    body: &Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> (Value, Result<Value, String>) {
    match body {
        Ok(b) => match serde_json::from_slice::<Value>(b) {
            Ok(v) => (v.clone(), Ok(v)),
            Err(e) if b.iter().all(u8::is_ascii_whitespace) => (raw_body(b), Err(format!("empty request body ({e})"))),
            Err(e) => (raw_body(b), Err(format!("invalid JSON: {e}"))),
        },
        Err(e) => (Value::Null, Err(e.body_text())),
    }
}

/// `"metadata"`-like field as the call's metadata (`Null` if absent).
pub(crate) fn field_value(body: &Value, pointer: &str) -> Value {
    body.pointer(pointer).cloned().unwrap_or(Value::Null)
}

/// A non-empty string at `pointer`.
pub(crate) fn str_at(body: &Value, pointer: &str) -> Option<String> {
    body.pointer(pointer).and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_string)
}

/// `Authorization: Bearer <key>` (any key when none is configured).
pub(crate) fn bearer_ok(st: &AppState, headers: &HeaderMap) -> bool {
    match st.api_key() {
        None => true,
        Some(k) => header_str(headers, "authorization")
            .and_then(|v| v.trim().split_once(' '))
            .is_some_and(|(scheme, tok)| scheme.eq_ignore_ascii_case("bearer") && tok.trim() == k),
    }
}

/// Why a create request got no call.
pub(crate) enum Fault {
    RateLimited {
        retry_after_secs: u64,
    },
    /// 503 + `Retry-After` (out of capacity).
    Capacity {
        retry_after_secs: u64,
        message: Option<String>,
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
        Outcome::Capacity { .. } => Some("capacity"),
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
        Outcome::Create { duration_ms, end_reason } => Ok((duration_ms, end_reason)),
        Outcome::RateLimited { retry_after_secs } => Err(Fault::RateLimited { retry_after_secs }),
        Outcome::Capacity { retry_after_secs, message } => Err(Fault::Capacity { retry_after_secs, message }),
        Outcome::Error { status, message } => Err(Fault::Error { status, message }),
        Outcome::Hang { .. } => Err(Fault::HangExpired),
        Outcome::Drop => {
            kill.0.notify_one();
            // The connection task drops this future together with the socket.
            std::future::pending::<Result<(u64, Option<String>), Fault>>().await
        }
    }
}

/// Parses a date filter: `YYYY-MM-DD` (midnight UTC), RFC 3339 or RFC 2822; unix µs.
pub(crate) fn parse_date_us(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(d.timestamp_micros());
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc2822(s) {
        return Some(d.timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(d.and_utc().timestamp_micros());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|dt| dt.and_utc().timestamp_micros())
}

/// Unix µs as epoch milliseconds (Retell's timestamps).
pub(crate) fn epoch_ms(us: i64) -> Value {
    Value::from(us.div_euclid(1000))
}

/// A positive page size from the first of `names` present, else `default`.
pub(crate) fn page_size(q: &[(String, String)], names: &[&str], default: usize) -> usize {
    q.iter().find(|(k, _)| names.contains(&k.as_str())).and_then(|(_, v)| v.parse::<usize>().ok()).filter(|n| *n > 0).unwrap_or(default)
}
