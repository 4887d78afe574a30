//! Vapi: `POST /call` (`CreateCallDTO`), `GET /call/{id}`, `GET /call?assistantId=..&createdAtGt=..`;
//! `Authorization: Bearer <key>`; errors as NestJS writes them:
//! `{"message": [...], "error": "Bad Request", "statusCode": 400}`.
//!
//! Vapi's create request has no top-level metadata: `assistantOverrides.metadata` is what the
//! simulator records as the call's metadata.

use crate::common::{bearer_ok, field_value, json, page_size, parse_date_us, query_pairs, rfc3339, str_at};
use crate::config::{Provider, SimConfig};
use crate::end_webhooks::{self, Delivery};
use crate::exchange::{self, Body, Exchange, Refusal};
use crate::faults::{ConnKill, FaultAnswers};
use crate::mutex::lock;
use crate::state::{CallState, NewCall, St, Stage};
use crate::webhooks::vapi_hmac_signature;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use provider_contract::Operation;
use serde_json::{json, Map, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new().route("/call", post(create).get(list)).route("/call/{id}", get(get_call))
}

fn error(status: StatusCode, message: Value) -> Response {
    let name = status.canonical_reason().unwrap_or("Error");
    json(status, json!({ "message": message, "error": name, "statusCode": status.as_u16() }))
}

fn bad_request(errors: &[String]) -> Response {
    error(StatusCode::BAD_REQUEST, json!(errors))
}

/// `Authorization: Bearer <key>`.
fn auth(st: &St, headers: &HeaderMap) -> Result<(), Refusal> {
    exchange::key_check(bearer_ok(st, headers), || {
        error(
            StatusCode::UNAUTHORIZED,
            json!("Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa."),
        )
    })
}

const FAULTS: FaultAnswers = FaultAnswers::new("Too Many Requests", |status, _, message| error(status, json!(message)));

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
    let status = match call.stage_at(now_us) {
        Stage::Ended => "ended",
        Stage::Answered => "in-progress",
        // Calls that fail to connect never ring.
        Stage::Ringing if !matches!(call.end_reason.as_str(), "failed" | "connection_error" | "canceled") => "ringing",
        Stage::Ringing | Stage::Queued => "queued",
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

async fn create(State(st): State<St>, kill: ConnKill, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let ex = Exchange::begin(&st, Provider::Vapi, "POST", &uri);
    let resp = async {
        let body = ex.checked_json(&body, auth(&st, &headers), Operation::VapiCreateCall, bad_request)?;
        let to = str_at(&body, "/customer/number").or_else(|| str_at(&body, "/customerId"));
        let to = ex.check(to.ok_or_else(|| vec!["customer.number is required".to_string()]), bad_request)?;
        let call = NewCall {
            from: str_at(&body, "/phoneNumber/number"),
            agent_id: str_at(&body, "/assistantId").or_else(|| str_at(&body, "/squadId")).or_else(|| str_at(&body, "/workflowId")),
            ..NewCall::new(Provider::Vapi, uuid::Uuid::new_v4().to_string(), to, field_value(&body, "/assistantOverrides/metadata"), body)
        };
        let id = ex.place(&kill, call, &FAULTS).await?;
        if lock(&st.config).vapi_webhook_url.is_some() {
            end_webhooks::schedule(&st, Provider::Vapi, id.clone(), &[("end-of-call-report", 0)], call_json, end_of_call_report);
        }
        Ok(ex.created(&id, call_json, |m| error(StatusCode::INTERNAL_SERVER_ERROR, json!(m))))
    }
    .await;
    ex.answer(resp)
}

/// The `end-of-call-report` server message, authenticated as `vapi_webhook_auth` says.
fn end_of_call_report(cfg: &SimConfig, _event: &str, call: Value, now: i64) -> Option<Delivery> {
    let url = cfg.vapi_webhook_url.clone()?;
    let field = |k: &str| call.get(k).cloned().unwrap_or(Value::Null);
    let body = serde_json::to_vec(&json!({"message": {
        "type": "end-of-call-report",
        "timestamp": now / 1000,
        "endedReason": field("endedReason"),
        "startedAt": field("startedAt"),
        "endedAt": field("endedAt"),
        "artifact": {"transcript": "AI: Hello.\nUser: Hi.", "messages": [], "recordingUrl": null},
        "analysis": {"summary": "simulated call"},
        "call": call,
    }}))
    .unwrap_or_default();
    let mut h = Vec::new();
    if let Some(secret) = &cfg.vapi_webhook_secret {
        match cfg.vapi_webhook_auth.as_str() {
            "bearer" => h.push(("Authorization", format!("Bearer {secret}"))),
            "hmac" => {
                let ts = (now / 1000).to_string();
                h.push(("x-signature", vapi_hmac_signature(secret, &body, &ts)));
                h.push(("x-timestamp", ts));
            }
            _ => h.push(("X-Vapi-Secret", secret.clone())),
        }
    }
    Some((url, body, h))
}

async fn get_call(State(st): State<St>, Path(id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::get_call(&st, Provider::Vapi, &uri, auth(&st, &headers), &id, call_json, || error(StatusCode::NOT_FOUND, json!("Not Found")))
}

/// `GET /call`: the spec's filters `id`, `assistantId`, `phoneNumberId`, `limit` and
/// `createdAt{Gt,Ge,Lt,Le}` (newest first). There is no metadata filter in the spec.
async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::read(&st, Provider::Vapi, &uri, auth(&st, &headers), |store, now| {
        let q = query_pairs(uri.query());
        let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let date = |name: &str| get(name).and_then(parse_date_us);
        let (gt, ge, lt, le) = (date("createdAtGt"), date("createdAtGe"), date("createdAtLt"), date("createdAtLe"));
        let limit = page_size(&q, &["limit"], 100).min(1000);
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
    })
}
