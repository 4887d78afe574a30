//! Ultravox: `POST /api/agents/{agent_id}/calls` (`StartAgentCallRequest`), `POST /api/calls`
//! (`StartCallRequest`), `GET /api/calls/{id}`, `GET /api/calls?metadata.<field>=<value>`;
//! `X-API-Key` auth; errors as `{"detail": ..}`; signed webhooks to `ultravox_webhook_url`.
//!
//! A call is only placed when the medium says whom to dial (`medium.<carrier>.outgoing.to`):
//! that is the destination, nothing else is read.

use crate::common::*;
use crate::config::Provider;
use crate::log::RecordGuard;
use crate::state::{lock, metadata_field_matches, CallState, NewCall};
use crate::webhooks::{deliver, naive_timestamp, sleep_until_us, ultravox_signature, Outgoing};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use provider_contract::{Contract, Operation};
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) fn routes() -> Router<St> {
    Router::new()
        .route("/api/calls", post(create).get(list))
        .route("/api/calls/", post(create).get(list))
        .route("/api/agents/{agent_id}/calls", post(create_agent_call))
        .route("/api/agents/{agent_id}/calls/", post(create_agent_call))
        .route("/api/calls/{call_id}", get(get_call))
        .route("/api/calls/{call_id}/", get(get_call))
}

fn detail(status: StatusCode, msg: &str) -> Response {
    json(status, json!({ "detail": msg }))
}

fn auth_ok(st: &St, headers: &HeaderMap) -> bool {
    match st.api_key() {
        None => true,
        Some(k) => header_str(headers, "x-api-key") == Some(k.as_str()),
    }
}

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

async fn create(
    State(st): State<St>,
    Extension(kill): Extension<ConnKill>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rec = st.log.begin(Provider::Ultravox, "POST", uri.path(), uri.query());
    let resp = create_inner(&st, &rec, &kill, &uri, &headers, body, None).await;
    rec.finish(resp.status().as_u16());
    resp
}

async fn create_agent_call(
    State(st): State<St>,
    Extension(kill): Extension<ConnKill>,
    Path(agent_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rec = st.log.begin(Provider::Ultravox, "POST", uri.path(), uri.query());
    let resp = create_inner(&st, &rec, &kill, &uri, &headers, body, Some(agent_id)).await;
    rec.finish(resp.status().as_u16());
    resp
}

async fn create_inner(
    st: &St,
    rec: &RecordGuard,
    kill: &ConnKill,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    agent_id: Option<String>,
) -> Response {
    let (logged, parsed) = parse_json_body(&body);
    let ok = auth_ok(st, headers);
    rec.update(|r| {
        r.auth_ok = ok;
        r.body = logged;
    });
    if !ok {
        return detail(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    // The real service only routes UUIDs; anything else is not found.
    if let Err(errs) = Contract::check_path("POST", uri.path()) {
        refuse(rec, &errs);
        return detail(StatusCode::NOT_FOUND, &format!("Not found. {}", errs.join("; ")));
    }
    let op = if agent_id.is_some() { Operation::UltravoxStartAgentCall } else { Operation::UltravoxStartCall };
    let body = match parsed {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("JSON parse error - {e}");
            refuse(rec, std::slice::from_ref(&msg));
            return detail(StatusCode::BAD_REQUEST, &msg);
        }
    };
    if let Err(errs) = st.contract.check(op, &body) {
        refuse(rec, &errs);
        return detail(StatusCode::BAD_REQUEST, &errs.join("; "));
    }
    let Some((to, from)) = outgoing(&body) else {
        // The contract refuses such bodies; this only guards against a gap in it.
        let msg = "no phone call would be placed: medium.<carrier>.outgoing.to is required".to_string();
        refuse(rec, std::slice::from_ref(&msg));
        return detail(StatusCode::BAD_REQUEST, &msg);
    };
    let metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
    rec.update(|r| {
        r.to = Some(to.clone());
        r.metadata = metadata.clone();
    });
    match gate(st, rec, kill, Provider::Ultravox, &to).await {
        Err(Fault::RateLimited { retry_after_secs }) => with_retry_after(
            detail(StatusCode::TOO_MANY_REQUESTS, &format!("Request was throttled. Expected available in {retry_after_secs} seconds.")),
            retry_after_secs,
        ),
        Err(Fault::Capacity { retry_after_secs, message }) => with_retry_after(
            detail(
                StatusCode::SERVICE_UNAVAILABLE,
                message.as_deref().unwrap_or("No capacity available for new calls right now (simulated). Retry later."),
            ),
            retry_after_secs,
        ),
        Err(Fault::Error { status, message }) => {
            detail(status_code(status), message.as_deref().unwrap_or("Internal server error (simulated)"))
        }
        Err(Fault::HangExpired) => detail(StatusCode::GATEWAY_TIMEOUT, "Gateway timeout (simulated hang)"),
        Ok((duration_ms, end_reason)) => {
            let id = uuid::Uuid::new_v4().to_string();
            st.create_call(
                NewCall {
                    provider: Provider::Ultravox,
                    call_id: id.clone(),
                    to,
                    from,
                    metadata,
                    body,
                    account_sid: None,
                    machine_detection: None,
                    agent_id,
                },
                duration_ms,
                end_reason,
            );
            rec.update(|r| r.call_id = Some(id.clone()));
            schedule_webhooks(st, id.clone());
            // The create answer shows the call as just created (never already joined).
            let store = lock(&st.calls);
            match store.get(&id) {
                Some(c) => json(StatusCode::CREATED, call_json(c, c.call.created_at_us)),
                None => detail(StatusCode::INTERNAL_SERVER_ERROR, "call vanished (reset during create)"),
            }
        }
    }
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
            sleep_until_us(&st, at).await;
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
            deliver(
                &st,
                Outgoing {
                    provider: Provider::Ultravox,
                    event: event.to_string(),
                    call_id: call_id.clone(),
                    url,
                    method: "POST",
                    content_type: "application/json",
                    body,
                    headers,
                },
            )
            .await;
        }
    });
}

async fn get_call(State(st): State<St>, Path(call_id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st.log.begin(Provider::Ultravox, "GET", uri.path(), uri.query());
    let ok = auth_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        detail(StatusCode::UNAUTHORIZED, "Invalid API key")
    } else {
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        match store.get(&call_id).filter(|c| c.call.provider == Provider::Ultravox) {
            Some(c) => json(StatusCode::OK, call_json(c, now)),
            None => detail(StatusCode::NOT_FOUND, "Not found."),
        }
    };
    rec.finish(resp.status().as_u16());
    resp
}

async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st.log.begin(Provider::Ultravox, "GET", uri.path(), uri.query());
    let ok = auth_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        detail(StatusCode::UNAUTHORIZED, "Invalid API key")
    } else {
        let q = query_pairs(uri.query());
        let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let filters: Vec<(&str, &str)> = q.iter().filter_map(|(k, v)| k.strip_prefix("metadata.").map(|f| (f, v.as_str()))).collect();
        let from_date = get("fromDate").and_then(parse_date_us);
        // A bare date as toDate includes that whole day.
        let to_date = get("toDate").and_then(|s| parse_date_us(s).map(|t| if s.trim().len() == 10 { t + 86_400_000_000 } else { t }));
        let limit = page_size(&q, &["pageSize", "page_size"], 100);
        let now = st.clock.now_us();
        let store = lock(&st.calls);
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
    };
    rec.finish(resp.status().as_u16());
    resp
}
