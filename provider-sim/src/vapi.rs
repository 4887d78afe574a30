//! Vapi: `POST /call` (`CreateCallDTO`), `GET /call/{id}`, `GET /call?assistantId=..&createdAtGt=..`;
//! `Authorization: Bearer <key>`; errors as NestJS writes them:
//! `{"message": [...], "error": "Bad Request", "statusCode": 400}`.
//!
//! Vapi's create request has no top-level metadata: `assistantOverrides.metadata` is what the
//! simulator records as the call's metadata.

use crate::common::*;
use crate::config::Provider;
use crate::log::RecordGuard;
use crate::state::{lock, CallState, NewCall};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use provider_contract::Operation;
use serde_json::{json, Map, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new().route("/call", post(create).get(list)).route("/call/{id}", get(get_call))
}

fn error(status: StatusCode, message: Value) -> Response {
    let name = status.canonical_reason().unwrap_or("Error");
    json(status, json!({ "message": message, "error": name, "statusCode": status.as_u16() }))
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        json!("Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa."),
    )
}

/// Vapi's `endedReason` for a simulated end reason (values from the spec's enum).
pub(crate) fn ended_reason(end_reason: &str) -> &'static str {
    match end_reason {
        "agent_hangup" => "assistant-ended-call",
        "voicemail" => "voicemail",
        "busy" => "customer-busy",
        "no-answer" | "no_answer" | "unjoined" => "customer-did-not-answer",
        "failed" | "connection_error" => "twilio-failed-to-connect-call",
        "canceled" => "manually-canceled",
        "timeout" => "exceeded-max-duration",
        "system_error" | "error" => "worker-shutdown",
        _ => "customer-ended-call",
    }
}

/// The Vapi `Call` as of `now_us` (absent fields are left out, as Vapi does).
pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let ended = now_us >= call.ended_at_us;
    let joined = call.joined_at_us.filter(|j| *j <= now_us);
    let ringing = now_us >= call.ringing_at_us();
    let status = if ended {
        "ended"
    } else if joined.is_some() {
        "in-progress"
    } else if ringing && !matches!(call.end_reason.as_str(), "failed" | "connection_error" | "canceled") {
        // Calls that fail to connect never ring.
        "ringing"
    } else {
        "queued"
    };
    let last_change = [Some(call.created_at_us), ringing.then(|| call.ringing_at_us()), joined, ended.then_some(call.ended_at_us)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(call.created_at_us);
    let mut o = Map::new();
    o.insert("id".into(), json!(call.call_id));
    o.insert("orgId".into(), json!("org-provider-sim"));
    o.insert("type".into(), json!("outboundPhoneCall"));
    o.insert("status".into(), json!(status));
    if ended {
        o.insert("endedReason".into(), json!(ended_reason(&call.end_reason)));
        o.insert("endedAt".into(), rfc3339(call.ended_at_us));
    }
    if let Some(j) = joined {
        o.insert("startedAt".into(), rfc3339(j));
    }
    o.insert("createdAt".into(), rfc3339(call.created_at_us));
    o.insert("updatedAt".into(), rfc3339(last_change));
    o.insert("phoneCallProvider".into(), json!("twilio"));
    o.insert("phoneCallTransport".into(), json!("pstn"));
    for k in [
        "assistantId",
        "assistant",
        "assistantOverrides",
        "squadId",
        "squad",
        "workflowId",
        "workflow",
        "phoneNumberId",
        "phoneNumber",
        "customerId",
        "customer",
        "name",
        "schedulePlan",
    ] {
        if let Some(v) = c.body.get(k).filter(|v| !v.is_null()) {
            o.insert(k.into(), v.clone());
        }
    }
    Value::Object(o)
}

async fn create(
    State(st): State<St>,
    Extension(kill): Extension<ConnKill>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rec = st.log.begin(Provider::Vapi, "POST", uri.path(), uri.query());
    let resp = create_inner(&st, &rec, &kill, &headers, body).await;
    rec.finish(resp.status().as_u16());
    resp
}

async fn create_inner(st: &St, rec: &RecordGuard, kill: &ConnKill, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let (logged, parsed) = parse_json_body(&body);
    let ok = bearer_ok(st, headers);
    rec.update(|r| {
        r.auth_ok = ok;
        r.body = logged;
    });
    if !ok {
        return unauthorized();
    }
    let body = match parsed {
        Ok(v) => v,
        Err(e) => {
            refuse(rec, std::slice::from_ref(&e));
            return error(StatusCode::BAD_REQUEST, json!([e]));
        }
    };
    if let Err(errs) = st.contract.check(Operation::VapiCreateCall, &body) {
        refuse(rec, &errs);
        return error(StatusCode::BAD_REQUEST, json!(errs));
    }
    let Some(to) = str_at(&body, "/customer/number").or_else(|| str_at(&body, "/customerId")) else {
        let msg = "customer.number is required".to_string();
        refuse(rec, std::slice::from_ref(&msg));
        return error(StatusCode::BAD_REQUEST, json!([msg]));
    };
    let metadata = field_value(&body, "/assistantOverrides/metadata");
    let agent_id = str_at(&body, "/assistantId").or_else(|| str_at(&body, "/squadId")).or_else(|| str_at(&body, "/workflowId"));
    rec.update(|r| {
        r.to = Some(to.clone());
        r.metadata = metadata.clone();
    });
    match gate(st, rec, kill, Provider::Vapi, &to).await {
        Err(Fault::RateLimited { retry_after_secs }) => {
            with_retry_after(error(StatusCode::TOO_MANY_REQUESTS, json!("Too Many Requests")), retry_after_secs)
        }
        Err(Fault::Capacity { retry_after_secs, message }) => with_retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, json!(message.as_deref().unwrap_or("No capacity right now (simulated)"))),
            retry_after_secs,
        ),
        Err(Fault::Error { status, message }) => {
            error(status_code(status), json!(message.as_deref().unwrap_or("Internal server error (simulated)")))
        }
        Err(Fault::HangExpired) => error(StatusCode::GATEWAY_TIMEOUT, json!("Gateway timeout (simulated hang)")),
        Ok((duration_ms, end_reason)) => {
            let id = uuid::Uuid::new_v4().to_string();
            let from = str_at(&body, "/phoneNumber/number");
            st.create_call(
                NewCall {
                    provider: Provider::Vapi,
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
            crate::webhooks::schedule_end_webhooks(st, Provider::Vapi, id.clone(), None);
            let store = lock(&st.calls);
            match store.get(&id) {
                Some(c) => json(StatusCode::CREATED, call_json(c, c.call.created_at_us)),
                None => error(StatusCode::INTERNAL_SERVER_ERROR, json!("call vanished (reset during create)")),
            }
        }
    }
}

async fn get_call(State(st): State<St>, Path(id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st.log.begin(Provider::Vapi, "GET", uri.path(), uri.query());
    let ok = bearer_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        unauthorized()
    } else {
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        match store.get(&id).filter(|c| c.call.provider == Provider::Vapi) {
            Some(c) => json(StatusCode::OK, call_json(c, now)),
            None => error(StatusCode::NOT_FOUND, json!("Not Found")),
        }
    };
    rec.finish(resp.status().as_u16());
    resp
}

/// `GET /call`: the spec's filters `id`, `assistantId`, `phoneNumberId`, `limit` and
/// `createdAt{Gt,Ge,Lt,Le}` (newest first). There is no metadata filter in the spec.
async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st.log.begin(Provider::Vapi, "GET", uri.path(), uri.query());
    let ok = bearer_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        unauthorized()
    } else {
        let q = query_pairs(uri.query());
        let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let date = |name: &str| get(name).and_then(parse_date_us);
        let (gt, ge, lt, le) = (date("createdAtGt"), date("createdAtGe"), date("createdAtLt"), date("createdAtLe"));
        let limit = page_size(&q, &["limit"], 100).min(1000);
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        let calls: Vec<Value> = store
            .calls
            .iter()
            .rev()
            .filter(|c| c.call.provider == Provider::Vapi)
            .filter(|c| get("id").is_none_or(|v| c.call.call_id == v))
            .filter(|c| get("assistantId").is_none_or(|v| c.body.get("assistantId").and_then(Value::as_str) == Some(v)))
            .filter(|c| get("phoneNumberId").is_none_or(|v| c.body.get("phoneNumberId").and_then(Value::as_str) == Some(v)))
            .filter(|c| {
                let t = c.call.created_at_us;
                gt.is_none_or(|x| t > x) && ge.is_none_or(|x| t >= x) && lt.is_none_or(|x| t < x) && le.is_none_or(|x| t <= x)
            })
            .take(limit)
            .map(|c| call_json(c, now))
            .collect();
        json(StatusCode::OK, Value::Array(calls))
    };
    rec.finish(resp.status().as_u16());
    resp
}
