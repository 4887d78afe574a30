//! Ultravox: `POST /api/agents/{agent_id}/calls` (`StartAgentCallRequest`), `POST /api/calls`
//! (`StartCallRequest`), `GET /api/calls/{id}`, `GET /api/calls?metadata.<field>=<value>`;
//! `X-API-Key` auth; errors as `{"detail": ..}`; signed webhooks to `ultravox_webhook_url`.
//!
//! A call is only placed when the medium says whom to dial (`medium.<carrier>.outgoing.to`):
//! that is the destination, nothing else is read.

use crate::common::{header_str, json, page_size, parse_date_us, query_pairs, rfc3339};
use crate::config::Provider;
use crate::exchange::{self, Body, Exchange, Refusal};
use crate::faults::{ConnKill, FaultAnswers};
use crate::mutex::lock;
use crate::state::{metadata_field_matches, CallState, NewCall, St};
use crate::webhooks::{naive_timestamp, ultravox_signature, Outgoing};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use provider_contract::{Contract, Operation};
use serde_json::{json, Value};
use std::sync::Arc;

/// Each path also with a trailing slash, as Ultravox answers both.
pub(crate) fn routes() -> Router<St> {
    [
        ("/api/calls", post(create).get(list)),
        ("/api/agents/{agent_id}/calls", post(create_agent_call)),
        ("/api/calls/{call_id}", get(get_call)),
    ]
    .into_iter()
    .fold(Router::new(), |router, (path, handler)| router.route(path, handler.clone()).route(&format!("{path}/"), handler))
}

fn detail(status: StatusCode, msg: &str) -> Response {
    json(status, json!({ "detail": msg }))
}

fn bad_request(errors: &[String]) -> Response {
    detail(StatusCode::BAD_REQUEST, &errors.join("; "))
}

/// `X-API-Key: <key>`.
fn auth(st: &St, headers: &HeaderMap) -> Result<(), Refusal> {
    let ok = match st.api_key() {
        None => true,
        Some(k) => header_str(headers, "x-api-key") == Some(k.as_str()),
    };
    exchange::key_check(ok, || detail(StatusCode::UNAUTHORIZED, "Invalid API key"))
}

const FAULTS: FaultAnswers = FaultAnswers {
    capacity: "No capacity available for new calls right now (simulated). Retry later.",
    ..FaultAnswers::new("Request was throttled. Expected available in {secs} seconds.", |status, _, message| detail(status, message))
};

/// `medium.<carrier>.outgoing`: (to, from).
pub(crate) fn outgoing(body: &Value) -> Option<(String, Option<String>)> {
    body.get("medium")?.as_object()?.values().find_map(|m| {
        let o = m.get("outgoing")?;
        let to = o.get("to")?.as_str()?.trim();
        (!to.is_empty()).then(|| {
            let from = o.get("from").and_then(Value::as_str).map(str::to_string);
            (to.to_string(), from)
        })
    })
}

/// Request fields that are not part of the `Call` object.
const REQUEST_ONLY: &[&str] = &["templateContext", "initialMessages", "selectedTools", "toolOverrides", "sharedSecrets", "dataConnection"];

/// The Ultravox call object as of `now_us`.
pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let mut obj = c.body.as_object().cloned().unwrap_or_default();
    for k in REQUEST_ONLY {
        obj.remove(*k);
    }
    let joined = call.joined_at_us.filter(|j| *j <= now_us);
    let ended = call.ended_at_us <= now_us;
    obj.insert("callId".into(), Value::String(call.call_id.clone()));
    obj.insert("agentId".into(), call.agent_id.clone().map(Value::String).unwrap_or(Value::Null));
    obj.insert("created".into(), rfc3339(call.created_at_us));
    obj.insert("joined".into(), joined.map(rfc3339).unwrap_or(Value::Null));
    obj.insert("ended".into(), if ended { rfc3339(call.ended_at_us) } else { Value::Null });
    obj.insert("endReason".into(), if ended { Value::String(call.end_reason.clone()) } else { Value::Null });
    obj.insert("medium".into(), c.body.get("medium").cloned().unwrap_or(Value::Null));
    obj.insert("metadata".into(), if call.metadata.is_null() { json!({}) } else { call.metadata.clone() });
    let settings =
        c.body.get("firstSpeakerSettings").cloned().unwrap_or_else(|| match c.body.get("firstSpeaker").and_then(Value::as_str) {
            Some("FIRST_SPEAKER_USER") => json!({"user": {}}),
            _ => json!({"agent": {}}),
        });
    let first = if settings.get("user").is_some() { "FIRST_SPEAKER_USER" } else { "FIRST_SPEAKER_AGENT" };
    obj.insert("firstSpeaker".into(), json!(first));
    obj.insert("firstSpeakerSettings".into(), settings);
    obj.insert("joinUrl".into(), Value::String(format!("wss://sim.invalid/calls/{}", call.call_id)));
    obj.insert("errorCount".into(), json!(0));
    Value::Object(obj)
}

async fn create(State(st): State<St>, kill: ConnKill, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let ex = Exchange::begin(&st, Provider::Ultravox, "POST", &uri);
    let resp = create_call(&st, &ex, &kill, &uri, &headers, body, None).await;
    ex.answer(resp)
}

async fn create_agent_call(
    State(st): State<St>,
    kill: ConnKill,
    Path(agent_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ex = Exchange::begin(&st, Provider::Ultravox, "POST", &uri);
    let resp = create_call(&st, &ex, &kill, &uri, &headers, body, Some(agent_id)).await;
    ex.answer(resp)
}

async fn create_call(
    st: &St,
    ex: &Exchange<'_>,
    kill: &ConnKill,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    agent_id: Option<String>,
) -> Result<Response, Refusal> {
    let parsed = ex.received_json(&body, auth(st, headers))?;
    // The real service only routes UUIDs; anything else is not found.
    ex.check(Contract::check_path("POST", uri.path()), |errs| detail(StatusCode::NOT_FOUND, &format!("Not found. {}", errs.join("; "))))?;
    let op = if agent_id.is_some() { Operation::UltravoxStartAgentCall } else { Operation::UltravoxStartCall };
    let body = ex.check(parsed.map_err(|e| vec![format!("JSON parse error - {e}")]), bad_request)?;
    ex.check(st.contract.check(op, &body), bad_request)?;
    // The contract refuses bodies that place no call; this only guards against a gap in it.
    let no_call = || vec!["no phone call would be placed: medium.<carrier>.outgoing.to is required".to_string()];
    let (to, from) = ex.check(outgoing(&body).ok_or_else(no_call), bad_request)?;
    let metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
    let call = NewCall { from, agent_id, ..NewCall::new(Provider::Ultravox, uuid::Uuid::new_v4().to_string(), to, metadata, body) };
    let id = ex.place(kill, call, &FAULTS).await?;
    schedule_webhooks(st, id.clone());
    // The create answer shows the call as just created (never already joined).
    Ok(ex.created(&id, call_json, |m| detail(StatusCode::INTERNAL_SERVER_ERROR, m)))
}

/// `call.started` now, `call.joined` when the callee answers (if ever), `call.ended` at the
/// end; each carries the call object as `GET` shows it at that moment.
fn schedule_webhooks(st: &St, call_id: String) {
    if lock(&st.config).ultravox_webhook_url.is_none() {
        return;
    }
    let st = Arc::clone(st);
    tokio::spawn(async move {
        let times = {
            let store = lock(&st.calls);
            match store.get(&call_id) {
                Some(c) => (c.call.created_at_us, c.call.joined_at_us, c.call.ended_at_us),
                None => return,
            }
        };
        let mut events = vec![("call.started", times.0)];
        if let Some(j) = times.1 {
            events.push(("call.joined", j));
        }
        events.push(("call.ended", times.2));
        for (event, at) in events {
            st.clock.sleep_until(at).await;
            let now = st.clock.now_us().max(at);
            let call = {
                let store = lock(&st.calls);
                match store.get(&call_id) {
                    Some(c) => call_json(c, now),
                    None => return, // reset
                }
            };
            let (url, secret, stale) = {
                let c = lock(&st.config);
                (c.ultravox_webhook_url.clone(), c.ultravox_webhook_secret.clone(), c.ultravox_webhook_stale_signature)
            };
            let Some(url) = url else { continue };
            let body = serde_json::to_vec(&json!({ "event": event, "call": call })).unwrap_or_default();
            let ts = naive_timestamp(st.clock.now_us());
            let mut headers = vec![("X-Ultravox-Webhook-Timestamp", ts.clone())];
            if let Some(secret) = secret {
                let good = ultravox_signature(&secret, &body, &ts);
                let sig = if stale {
                    let old = ultravox_signature(&format!("{secret}/rotated-out"), &body, &ts);
                    format!("{old},{good}")
                } else {
                    good
                };
                headers.push(("X-Ultravox-Webhook-Signature", sig));
            }
            st.deliver(Outgoing::json_post(Provider::Ultravox, event, &call_id, url, body, headers)).await;
        }
    });
}

async fn get_call(State(st): State<St>, Path(call_id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::get_call(&st, Provider::Ultravox, &uri, auth(&st, &headers), &call_id, call_json, || {
        detail(StatusCode::NOT_FOUND, "Not found.")
    })
}

async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::read(&st, Provider::Ultravox, &uri, auth(&st, &headers), |store, now| {
        let q = query_pairs(uri.query());
        let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let filters: Vec<(&str, &str)> = q.iter().filter_map(|(k, v)| k.strip_prefix("metadata.").map(|f| (f, v.as_str()))).collect();
        let from_date = get("fromDate").and_then(parse_date_us);
        // A bare date as toDate includes that whole day.
        let to_date = get("toDate").and_then(|s| parse_date_us(s).map(|t| if s.trim().len() == 10 { t + 86_400_000_000 } else { t }));
        let limit = page_size(&q, &["pageSize", "page_size"], 100);
        let matching: Vec<&CallState> = store
            .calls
            .iter()
            .rev()
            .filter(|c| c.call.provider == Provider::Ultravox)
            .filter(|c| from_date.is_none_or(|f| c.call.created_at_us >= f))
            .filter(|c| to_date.is_none_or(|t| c.call.created_at_us < t))
            .filter(|c| filters.iter().all(|(f, v)| metadata_field_matches(&c.call.metadata, f, v)))
            .collect();
        let total = matching.len();
        let results: Vec<Value> = matching.into_iter().take(limit).map(|c| call_json(c, now)).collect();
        json(StatusCode::OK, json!({ "results": results, "next": null, "previous": null, "total": total }))
    })
}
