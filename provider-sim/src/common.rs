//! Helpers shared by the provider handlers: responses, bodies, queries, timestamps, keys.

use crate::log::RecordGuard;
use crate::state::AppState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub(crate) fn json(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
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
