//! Twilio: `POST /2010-04-01/Accounts/{sid}/Calls.json` (form body, basic auth),
//! `GET .../Calls/{CallSid}.json`, `GET .../Calls.json?To=..&StartTime>=..`; status
//! callbacks to the request's own `StatusCallback`, signed with `X-Twilio-Signature`.
//!
//! Twilio has no metadata field: a call's metadata is taken from the query strings of
//! its `Url` and `StatusCallback` (e.g. `...?batch_id=7&contact_id=9`), `null` if none.

use crate::common::{form_to_json, header_str, json, page_size, parse_date_us, query_pairs, rfc2822, status_code};
use crate::config::Provider;
use crate::exchange::{self, Body, Exchange, Refusal};
use crate::faults::{ConnKill, FaultAnswers};
use crate::mutex::lock;
use crate::state::{CallState, NewCall, St, Stage};
use crate::webhooks::{twilio_signature, Outgoing};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use provider_contract::{Contract, Operation};
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub(crate) fn routes() -> Router<St> {
    Router::new()
        .route("/2010-04-01/Accounts/{sid}/Calls.json", post(create).get(list))
        .route("/2010-04-01/Accounts/{sid}/Calls/{call_file}", get(get_call))
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

/// 400 with Twilio's code for an invalid parameter.
fn invalid(errors: &[String]) -> Response {
    twilio_error(400, 21201, &errors.join("; "))
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
    let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Basic auth with the account's SID and the auth token (the API key).
fn auth(st: &St, headers: &HeaderMap, path_sid: &str) -> Result<(), Refusal> {
    let cfg = st.config();
    let ok = cfg.twilio_account_sid.as_deref().is_none_or(|s| s == path_sid)
        && match basic_auth(headers) {
            Some((user, pass)) => user == path_sid && cfg.api_key.as_deref().is_none_or(|k| k == pass),
            None => cfg.api_key.is_none(),
        };
    exchange::key_check(ok, unauthorized)
}

/// Twilio's error codes are 20000 + the status, but for 401.
const FAULTS: FaultAnswers = FaultAnswers {
    capacity: "Service Unavailable (simulated)",
    error: "Internal Server Error (simulated)",
    ..FaultAnswers::new("Too Many Requests", |status, _, message| {
        let status = status.as_u16();
        twilio_error(status, if status == 401 { 20003 } else { 20000 + status as u32 }, message)
    })
};

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.trim().is_empty())
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

/// The answering-machine verdict once the call is answered, if `MachineDetection` was asked.
fn answered_by(c: &CallState, now_us: i64) -> Option<&'static str> {
    let mode = c.machine_detection.as_deref()?;
    c.call.joined_at_us.filter(|j| *j <= now_us)?;
    Some(match (c.call.end_reason.as_str(), mode) {
        ("voicemail", "DetectMessageEnd") => "machine_end_beep",
        ("voicemail", _) => "machine_start",
        _ => "human",
    })
}

/// Seconds from answer to end (0 if never answered).
fn duration_secs(c: &CallState) -> i64 {
    match c.call.joined_at_us {
        Some(j) if final_status(&c.call.end_reason) == "completed" => ((c.call.ended_at_us - j) as f64 / 1e6).round() as i64,
        _ => 0,
    }
}

/// The Twilio call resource as of `now_us`.
pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let ringing_at = call.ringing_at_us();
    let ended = now_us >= call.ended_at_us;
    let status = match call.stage_at(now_us) {
        Stage::Ended => final_status(&call.end_reason),
        Stage::Answered => "in-progress",
        Stage::Ringing => "ringing",
        Stage::Queued => "queued",
    };
    let duration = if ended { Value::String(duration_secs(c).to_string()) } else { Value::Null };
    // Dialing starts when the call leaves the queue; until then start_time is empty.
    let start_time = if now_us >= ringing_at { rfc2822(ringing_at) } else { Value::Null };
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
        "start_time": start_time,
        "end_time": if ended { rfc2822(call.ended_at_us) } else { Value::Null },
        "duration": duration,
        "answered_by": answered_by(c, now_us),
        "price": null,
        "price_unit": "USD",
        "api_version": "2010-04-01",
        "parent_call_sid": null,
        "uri": format!("/2010-04-01/Accounts/{sid}/Calls/{}.json", call.call_id),
    })
}

async fn create(State(st): State<St>, kill: ConnKill, Path(sid): Path<String>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let ex = Exchange::begin(&st, Provider::Twilio, "POST", &uri);
    let resp = async {
        let pairs: Vec<(String, String)> = match &body {
            Ok(b) => form_urlencoded::parse(b).into_owned().collect(),
            Err(_) => Vec::new(),
        };
        let to = field(&pairs, "To").map(str::to_string);
        let metadata = metadata_from_urls(&pairs);
        let form = form_to_json(&pairs);
        ex.record().update(|r| {
            r.to = to.clone();
            r.metadata = metadata.clone();
        });
        ex.received(form.clone(), auth(&st, &headers, &sid))?;
        let not_found = |errs: &[String]| {
            twilio_error(404, 20404, &format!("The requested resource {} was not found: {}", uri.path(), errs.join("; ")))
        };
        ex.check(Contract::check_path("POST", uri.path()), not_found)?;
        ex.check(body.as_ref().map_err(|e| vec![format!("Unreadable request body: {}", e.body_text())]), invalid)?;
        ex.check(st.contract.check(Operation::TwilioCreateCall, &form), |errs| {
            // Twilio's own codes for the two commonest mistakes.
            if errs.iter().all(|e| e.starts_with("From:")) {
                twilio_error(400, 21213, &errs.join("; "))
            } else {
                invalid(errs)
            }
        })?;
        let to_from = to.zip(field(&pairs, "From").map(str::to_string));
        let (to, from) = ex.check(to_from.ok_or_else(|| vec!["To and From are required".to_string()]), invalid)?;
        let call = NewCall {
            from: Some(from),
            account_sid: Some(sid.clone()),
            machine_detection: field(&pairs, "MachineDetection").map(str::to_string),
            ..NewCall::new(Provider::Twilio, format!("CA{}", uuid::Uuid::new_v4().simple()), to, metadata, form)
        };
        let call_sid = ex.place(&kill, call, &FAULTS).await?;
        if let Some(url) = field(&pairs, "StatusCallback") {
            let method = match field(&pairs, "StatusCallbackMethod") {
                Some(m) if m.eq_ignore_ascii_case("GET") => "GET",
                _ => "POST",
            };
            schedule_callbacks(&st, call_sid.clone(), url.to_string(), method, callback_events(&pairs));
        }
        // The create answer always shows the call as just created ("queued").
        Ok(ex.created(&call_sid, call_json, |m| twilio_error(500, 20500, m)))
    }
    .await;
    ex.answer(resp)
}

/// The `StatusCallbackEvent`s asked for, in the order they happen (Twilio's default is
/// `completed` alone). Values may be repeated parameters or space-separated.
fn callback_events(pairs: &[(String, String)]) -> Vec<&'static str> {
    let asked: Vec<&str> = pairs.iter().filter(|(k, _)| k == "StatusCallbackEvent").flat_map(|(_, v)| v.split_whitespace()).collect();
    if asked.is_empty() {
        return vec!["completed"];
    }
    ["initiated", "ringing", "answered", "completed"].into_iter().filter(|e| asked.contains(e)).collect()
}

/// The form parameters of one status callback.
fn callback_params(c: &CallState, event: &str, seq: u32, now_us: i64) -> Vec<(String, String)> {
    let call = &c.call;
    let status = match event {
        "initiated" => "initiated",
        "ringing" => "ringing",
        "answered" => "in-progress",
        _ => final_status(&call.end_reason),
    };
    let ts = rfc2822(now_us).as_str().unwrap_or_default().to_string();
    let mut p: Vec<(String, String)> = [
        ("CallSid", call.call_id.clone()),
        ("AccountSid", c.account_sid.clone().unwrap_or_default()),
        ("From", call.from.clone().unwrap_or_default()),
        ("To", call.to.clone().unwrap_or_default()),
        ("CallStatus", status.to_string()),
        ("ApiVersion", "2010-04-01".to_string()),
        ("Direction", "outbound-api".to_string()),
        ("Timestamp", ts),
        ("CallbackSource", "call-progress-events".to_string()),
        ("SequenceNumber", seq.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if event == "completed" {
        p.push(("CallDuration".into(), duration_secs(c).to_string()));
    }
    if matches!(event, "answered" | "completed") {
        if let Some(ab) = answered_by(c, now_us) {
            p.push(("AnsweredBy".into(), ab.to_string()));
        }
    }
    p
}

/// Sends the asked-for status callbacks as the call moves on, signed with the auth token
/// (the configured API key; empty if none).
fn schedule_callbacks(st: &St, call_sid: String, url: String, method: &'static str, events: Vec<&'static str>) {
    let st = Arc::clone(st);
    tokio::spawn(async move {
        let plan: Vec<(&str, i64)> = {
            let store = lock(&st.calls);
            let Some(c) = store.get(&call_sid) else {
                return;
            };
            let fin = final_status(&c.call.end_reason);
            events
                .iter()
                .filter_map(|e| match *e {
                    "initiated" if fin != "canceled" => Some((*e, c.call.ringing_at_us())),
                    "ringing" if !matches!(fin, "failed" | "canceled" | "busy") => Some((*e, c.call.ringing_at_us())),
                    "answered" => c.call.joined_at_us.map(|j| (*e, j)),
                    "completed" => Some((*e, c.call.ended_at_us)),
                    _ => None,
                })
                .collect()
        };
        for (seq, (event, at)) in plan.into_iter().enumerate() {
            st.clock.sleep_until(at).await;
            let now = st.clock.now_us().max(at);
            let params = {
                let store = lock(&st.calls);
                match store.get(&call_sid) {
                    Some(c) => callback_params(c, event, seq as u32, now),
                    None => return, // reset
                }
            };
            let token = st.api_key().unwrap_or_default();
            let form: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(params.iter()).finish();
            // Twilio signs the URL plus the POST parameters; a GET carries them in the URL.
            let (target, body, signature) = if method == "GET" {
                let sep = if url.contains('?') { '&' } else { '?' };
                let full = format!("{url}{sep}{form}");
                let sig = twilio_signature(&token, &full, &[]);
                (full, Vec::new(), sig)
            } else {
                let sig = twilio_signature(&token, &url, &params);
                (url.clone(), form.into_bytes(), sig)
            };
            st.deliver(Outgoing {
                provider: Provider::Twilio,
                event: event.to_string(),
                call_id: call_sid.clone(),
                url: target,
                method,
                content_type: "application/x-www-form-urlencoded",
                body,
                headers: vec![("X-Twilio-Signature", signature)],
            })
            .await;
        }
    });
}

async fn get_call(State(st): State<St>, Path((sid, call_file)): Path<(String, String)>, uri: Uri, headers: HeaderMap) -> Response {
    let call_sid = call_file.strip_suffix(".json").unwrap_or(&call_file);
    exchange::read(&st, Provider::Twilio, &uri, auth(&st, &headers, &sid), |store, now| {
        match store.get(call_sid).filter(|c| c.call.provider == Provider::Twilio && c.account_sid.as_deref() == Some(sid.as_str())) {
            Some(c) => json(StatusCode::OK, call_json(c, now)),
            None => twilio_error(404, 20404, &format!("The requested resource {} was not found", uri.path())),
        }
    })
}

async fn list(State(st): State<St>, Path(sid): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::read(&st, Provider::Twilio, &uri, auth(&st, &headers, &sid), |store, now| {
        let q = query_pairs(uri.query());
        let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let to = get("To");
        let from = get("From");
        let status = get("Status");
        // `StartTime>=X` arrives as key "StartTime>" with value "X".
        let after = get("StartTime>").or_else(|| get("StartTime>=")).and_then(parse_date_us);
        let before = get("StartTime<").or_else(|| get("StartTime<=")).and_then(parse_date_us);
        let on_day = get("StartTime").and_then(parse_date_us);
        let limit = page_size(&q, &["PageSize"], 50);
        let calls: Vec<Value> = store
            .calls
            .iter()
            .rev()
            .filter(|c| c.call.provider == Provider::Twilio && c.account_sid.as_deref() == Some(sid.as_str()))
            .filter(|c| to.is_none_or(|t| c.call.to.as_deref() == Some(t)))
            .filter(|c| from.is_none_or(|f| c.call.from.as_deref() == Some(f)))
            .filter(|c| after.is_none_or(|a| c.call.created_at_us >= a))
            .filter(|c| before.is_none_or(|b| c.call.created_at_us <= b))
            .filter(|c| on_day.is_none_or(|d| c.call.created_at_us >= d && c.call.created_at_us < d + 86_400_000_000))
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
    })
}
