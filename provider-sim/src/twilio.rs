//! Twilio: `POST /2010-04-01/Accounts/{sid}/Calls.json` (form body, basic auth),
//! `GET .../Calls/{CallSid}.json`, `GET .../Calls.json?To=..&StartTime>=..`.
//!
//! Twilio has no metadata field: a call's metadata is taken from the query strings of
//! its `Url` and `StatusCallback` (e.g. `...?batch_id=7&contact_id=9`), `null` if none.

use crate::common::*;
use crate::config::Provider;
use crate::log::RecordGuard;
use crate::state::{lock, never_connects, CallState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine;
use serde_json::{json, Map, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Calls.json",
            post(create).get(list),
        )
        .route(
            "/2010-04-01/Accounts/{sid}/Calls/{call_file}",
            get(get_call),
        )
}

fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    json(
        status_code(status),
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }),
    )
}

fn unauthorized() -> Response {
    twilio_error(401, 20003, "Authenticate")
}

/// `user:password` from `Authorization: Basic ...`.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = header_str(headers, "authorization")?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn auth_ok(st: &St, headers: &HeaderMap, path_sid: &str) -> bool {
    let cfg = st.config();
    if cfg
        .twilio_account_sid
        .as_deref()
        .is_some_and(|s| s != path_sid)
    {
        return false;
    }
    match basic_auth(headers) {
        Some((user, pass)) => user == path_sid && cfg.api_key.as_deref().is_none_or(|k| k == pass),
        None => cfg.api_key.is_none(),
    }
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

fn metadata_from_urls(pairs: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for name in ["Url", "StatusCallback"] {
        if let Some(url) = field(pairs, name) {
            let no_frag = url.split('#').next().unwrap_or("");
            if let Some((_, q)) = no_frag.split_once('?') {
                for (k, v) in form_urlencoded::parse(q.as_bytes()).into_owned() {
                    m.insert(k, Value::String(v));
                }
            }
        }
    }
    if m.is_empty() {
        Value::Null
    } else {
        Value::Object(m)
    }
}

/// Twilio's final status for a simulated end reason.
fn final_status(end_reason: &str) -> &'static str {
    match end_reason {
        "busy" => "busy",
        "no-answer" | "no_answer" | "unjoined" => "no-answer",
        "failed" | "connection_error" | "error" | "system_error" => "failed",
        "canceled" => "canceled",
        _ => "completed",
    }
}

/// The Twilio call resource as of `now_us`.
pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let d = call.ended_at_us - call.created_at_us;
    let ringing_at = call.created_at_us + d / 20;
    let ended = now_us >= call.ended_at_us;
    let answered = call.joined_at_us.filter(|j| *j <= now_us);
    let status = if ended {
        final_status(&call.end_reason)
    } else if now_us < ringing_at {
        "queued"
    } else if answered.is_some() {
        "in-progress"
    } else {
        "ringing"
    };
    let duration = if ended {
        let secs = match (status, call.joined_at_us) {
            ("completed", Some(j)) => ((call.ended_at_us - j) as f64 / 1e6).round() as i64,
            _ => 0,
        };
        Value::String(secs.to_string())
    } else {
        Value::Null
    };
    let answered_by = match (c.machine_detection, answered) {
        (true, Some(_)) if call.end_reason == "voicemail" => json!("machine_end_beep"),
        (true, Some(_)) => json!("human"),
        (true, None) if ended && !never_connects(&call.end_reason) => json!("unknown"),
        _ => Value::Null,
    };
    let sid = c.account_sid.clone().unwrap_or_default();
    json!({
        "sid": call.call_id,
        "account_sid": sid,
        "to": call.to,
        "to_formatted": call.to,
        "from": call.from,
        "from_formatted": call.from,
        "status": status,
        "direction": "outbound-api",
        "date_created": rfc2822(call.created_at_us),
        "date_updated": rfc2822(now_us.min(call.ended_at_us)),
        "start_time": answered.map(rfc2822).unwrap_or(Value::Null),
        "end_time": if ended { rfc2822(call.ended_at_us) } else { Value::Null },
        "duration": duration,
        "answered_by": answered_by,
        "price": null,
        "price_unit": "USD",
        "api_version": "2010-04-01",
        "parent_call_sid": null,
        "uri": format!("/2010-04-01/Accounts/{sid}/Calls/{}.json", call.call_id),
    })
}

async fn create(
    State(st): State<St>,
    Extension(kill): Extension<ConnKill>,
    Path(sid): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rec = st
        .log
        .begin(Provider::Twilio, "POST", uri.path(), uri.query());
    let resp = create_inner(&st, &rec, &kill, &sid, &headers, body).await;
    rec.finish(resp.status().as_u16());
    resp
}

async fn create_inner(
    st: &St,
    rec: &RecordGuard,
    kill: &ConnKill,
    sid: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let pairs: Vec<(String, String)> = match &body {
        Ok(b) => form_urlencoded::parse(b).into_owned().collect(),
        Err(_) => Vec::new(),
    };
    let ok = auth_ok(st, headers, sid);
    let to = field(&pairs, "To").map(str::to_string);
    let metadata = metadata_from_urls(&pairs);
    rec.update(|r| {
        r.auth_ok = ok;
        r.body = form_to_json(&pairs);
        r.to = to.clone();
        r.metadata = metadata.clone();
    });
    if !ok {
        return unauthorized();
    }
    if let Err(e) = &body {
        return twilio_error(
            400,
            21201,
            &format!("Unreadable request body: {}", e.body_text()),
        );
    }
    let Some(to) = to else {
        return twilio_error(400, 21201, "No 'To' number is specified");
    };
    let Some(from) = field(&pairs, "From").map(str::to_string) else {
        return twilio_error(400, 21201, "No 'From' number is specified");
    };
    if field(&pairs, "Url").is_none()
        && field(&pairs, "Twiml").is_none()
        && field(&pairs, "ApplicationSid").is_none()
    {
        return twilio_error(
            400,
            21201,
            "Either 'Url', 'Twiml' or 'ApplicationSid' is required",
        );
    }
    match gate(st, rec, kill, Provider::Twilio, &to).await {
        Err(Fault::RateLimited { retry_after_secs }) => with_retry_after(
            twilio_error(429, 20429, "Too Many Requests"),
            retry_after_secs,
        ),
        Err(Fault::Error { status, message }) => {
            let code = if status == 401 {
                20003
            } else {
                20000 + status as u32
            };
            twilio_error(
                status,
                code,
                message
                    .as_deref()
                    .unwrap_or("Internal Server Error (simulated)"),
            )
        }
        Err(Fault::HangExpired) => twilio_error(504, 20504, "Gateway timeout (simulated hang)"),
        Ok((duration_ms, end_reason)) => {
            let call_sid = format!("CA{}", uuid::Uuid::new_v4().simple());
            let machine_detection = field(&pairs, "MachineDetection").is_some();
            st.create_call(
                Provider::Twilio,
                call_sid.clone(),
                to,
                Some(from),
                metadata,
                form_to_json(&pairs),
                duration_ms,
                end_reason,
                Some(sid.to_string()),
                machine_detection,
            );
            rec.update(|r| r.call_id = Some(call_sid.clone()));
            // The create answer always shows the call as just created ("queued").
            let store = lock(&st.calls);
            match store.get(&call_sid) {
                Some(c) => json(StatusCode::CREATED, call_json(c, c.call.created_at_us)),
                None => twilio_error(500, 20500, "call vanished (reset during create)"),
            }
        }
    }
}

async fn get_call(
    State(st): State<St>,
    Path((sid, call_file)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let rec = st
        .log
        .begin(Provider::Twilio, "GET", uri.path(), uri.query());
    let ok = auth_ok(&st, &headers, &sid);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        unauthorized()
    } else {
        let call_sid = call_file.strip_suffix(".json").unwrap_or(&call_file);
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        match store.get(call_sid).filter(|c| {
            c.call.provider == Provider::Twilio && c.account_sid.as_deref() == Some(sid.as_str())
        }) {
            Some(c) => json(StatusCode::OK, call_json(c, now)),
            None => twilio_error(
                404,
                20404,
                &format!("The requested resource {} was not found", uri.path()),
            ),
        }
    };
    rec.finish(resp.status().as_u16());
    resp
}

/// Parses Twilio date filters: `YYYY-MM-DD`, RFC 3339 or RFC 2822; unix µs.
fn parse_date_us(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(d.timestamp_micros());
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc2822(s) {
        return Some(d.timestamp_micros());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
}

async fn list(
    State(st): State<St>,
    Path(sid): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let rec = st
        .log
        .begin(Provider::Twilio, "GET", uri.path(), uri.query());
    let ok = auth_ok(&st, &headers, &sid);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        unauthorized()
    } else {
        let q = query_pairs(uri.query());
        let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let to = get("To");
        let from = get("From");
        let status = get("Status");
        // `StartTime>=X` arrives as key "StartTime>" with value "X".
        let after = get("StartTime>")
            .or_else(|| get("StartTime>="))
            .and_then(parse_date_us);
        let before = get("StartTime<")
            .or_else(|| get("StartTime<="))
            .and_then(parse_date_us);
        let on_day = get("StartTime").and_then(parse_date_us);
        let limit = page_size(&q, &["PageSize"], 50);
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        let calls: Vec<Value> = store
            .calls
            .iter()
            .rev()
            .filter(|c| {
                c.call.provider == Provider::Twilio
                    && c.account_sid.as_deref() == Some(sid.as_str())
            })
            .filter(|c| to.is_none_or(|t| c.call.to.as_deref() == Some(t)))
            .filter(|c| from.is_none_or(|f| c.call.from.as_deref() == Some(f)))
            .filter(|c| after.is_none_or(|a| c.call.created_at_us >= a))
            .filter(|c| before.is_none_or(|b| c.call.created_at_us <= b))
            .filter(|c| {
                on_day.is_none_or(|d| {
                    c.call.created_at_us >= d && c.call.created_at_us < d + 86_400_000_000
                })
            })
            .map(|c| call_json(c, now))
            .filter(|v| status.is_none_or(|s| v.get("status").and_then(Value::as_str) == Some(s)))
            .take(limit)
            .collect();
        json(
            StatusCode::OK,
            json!({
                "calls": calls,
                "page": 0,
                "page_size": limit,
                "start": 0,
                "first_page_uri": uri.to_string(),
                "next_page_uri": null,
                "previous_page_uri": null,
                "uri": uri.to_string(),
            }),
        )
    };
    rec.finish(resp.status().as_u16());
    resp
}
