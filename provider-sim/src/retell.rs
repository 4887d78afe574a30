//! Retell: `POST /v2/create-phone-call`, `GET /v2/get-call/{call_id}`, `POST /v2/list-calls`
//! (with `filter_criteria`, including metadata); `Authorization: Bearer <key>`; errors as
//! `{"error_message": ..}`. Timestamps are epoch milliseconds.

use crate::common::{bearer_ok, epoch_ms, field_value, json, str_at};
use crate::config::{Provider, SimConfig};
use crate::end_webhooks::{self, Delivery};
use crate::exchange::{self, Body, Exchange, Refusal};
use crate::faults::{ConnKill, FaultAnswers};
use crate::mutex::lock;
use crate::state::{CallState, NewCall, St, Stage};
use crate::webhooks::retell_signature;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use provider_contract::Operation;
use serde_json::{json, Map, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new()
        .route("/v2/create-phone-call", post(create))
        .route("/v2/get-call/{call_id}", get(get_call))
        .route("/v2/list-calls", post(list))
}

fn error(status: StatusCode, msg: &str) -> Response {
    json(status, json!({ "error_message": msg }))
}

fn bad_request(errors: &[String]) -> Response {
    error(StatusCode::BAD_REQUEST, &errors.join("; "))
}

/// `Authorization: Bearer <key>`.
fn auth(st: &St, headers: &HeaderMap) -> Result<(), Refusal> {
    exchange::key_check(bearer_ok(st, headers), || error(StatusCode::UNAUTHORIZED, "Invalid API Key"))
}

const FAULTS: FaultAnswers = FaultAnswers::new("Too many requests (simulated rate limit)", |status, _, message| error(status, message));

/// The agent a call uses when the request does not override it (the number's own agent).
const DEFAULT_AGENT_ID: &str = "agent_provider_sim";

/// Retell's `disconnection_reason` for a simulated end reason (values from the spec's enum).
pub(crate) fn disconnection_reason(end_reason: &str) -> &'static str {
    match end_reason {
        "agent_hangup" => "agent_hangup",
        "voicemail" => "voicemail_reached",
        "no-answer" | "no_answer" | "unjoined" => "dial_no_answer",
        "busy" => "dial_busy",
        "failed" | "connection_error" | "canceled" => "dial_failed",
        "timeout" => "max_duration_reached",
        "system_error" | "error" => "error_retell",
        _ => "user_hangup",
    }
}

fn call_status(c: &CallState, now_us: i64) -> &'static str {
    let call = &c.call;
    match call.stage_at(now_us) {
        Stage::Ended if matches!(call.end_reason.as_str(), "system_error" | "error") => "error",
        Stage::Ended => "ended",
        Stage::Answered => "ongoing",
        Stage::Queued | Stage::Ringing => "registered",
    }
}

/// The `V2PhoneCallResponse` as of `now_us`.
pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let ended = now_us >= call.ended_at_us;
    let joined = call.joined_at_us.filter(|j| *j <= now_us);
    let obj_or_empty = |k: &str| c.body.get(k).filter(|v| v.is_object()).cloned().unwrap_or_else(|| json!({}));
    let mut o = Map::new();
    o.insert("call_id".into(), json!(call.call_id));
    o.insert("call_type".into(), json!("phone_call"));
    o.insert("agent_id".into(), json!(call.agent_id.as_deref().unwrap_or(DEFAULT_AGENT_ID)));
    o.insert("agent_version".into(), c.body.get("override_agent_version").cloned().filter(Value::is_i64).unwrap_or(json!(1)));
    o.insert("call_status".into(), json!(call_status(c, now_us)));
    o.insert("from_number".into(), json!(call.from));
    o.insert("to_number".into(), json!(call.to));
    o.insert("direction".into(), json!("outbound"));
    o.insert("metadata".into(), obj_or_empty("metadata"));
    o.insert("retell_llm_dynamic_variables".into(), obj_or_empty("retell_llm_dynamic_variables"));
    if let Some(j) = joined {
        o.insert("start_timestamp".into(), epoch_ms(j));
    }
    if ended {
        o.insert("end_timestamp".into(), epoch_ms(call.ended_at_us));
        let dur = call.joined_at_us.map(|j| (call.ended_at_us - j) / 1000).unwrap_or(0);
        o.insert("duration_ms".into(), json!(dur));
        o.insert("disconnection_reason".into(), json!(disconnection_reason(&call.end_reason)));
    }
    Value::Object(o)
}

async fn create(State(st): State<St>, kill: ConnKill, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let ex = Exchange::begin(&st, Provider::Retell, "POST", &uri);
    let resp = async {
        let body = ex.checked_json(&body, auth(&st, &headers), Operation::RetellCreatePhoneCall, bad_request)?;
        let to = ex.check(str_at(&body, "/to_number").ok_or_else(|| vec!["to_number is required".to_string()]), bad_request)?;
        let call = NewCall {
            from: str_at(&body, "/from_number"),
            agent_id: str_at(&body, "/override_agent_id"),
            ..NewCall::new(Provider::Retell, format!("call_{}", uuid::Uuid::new_v4().simple()), to, field_value(&body, "/metadata"), body)
        };
        let id = ex.place(&kill, call, &FAULTS).await?;
        if lock(&st.config).retell_webhook_url.is_some() {
            let events = &[("call_ended", 0), ("call_analyzed", 300_000)];
            end_webhooks::schedule(&st, Provider::Retell, id.clone(), events, call_json, call_event);
        }
        Ok(ex.created(&id, call_json, |m| error(StatusCode::INTERNAL_SERVER_ERROR, m)))
    }
    .await;
    ex.answer(resp)
}

/// `call_ended` or `call_analyzed` (with the analysis), signed with the API key.
fn call_event(cfg: &SimConfig, event: &str, mut call: Value, now: i64) -> Option<Delivery> {
    let url = cfg.retell_webhook_url.clone()?;
    if event == "call_analyzed" {
        if let Some(o) = call.as_object_mut() {
            o.insert(
                "call_analysis".into(),
                json!({"call_summary": "simulated call", "user_sentiment": "Neutral", "call_successful": true, "in_voicemail": false}),
            );
        }
    }
    let body = serde_json::to_vec(&json!({"event": event, "call": call})).unwrap_or_default();
    let sig = retell_signature(cfg.api_key.as_deref().unwrap_or(""), &body, now / 1000);
    Some((url, body, vec![("X-Retell-Signature", sig)]))
}

async fn get_call(State(st): State<St>, Path(call_id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::get_call(&st, Provider::Retell, &uri, auth(&st, &headers), &call_id, call_json, || {
        error(StatusCode::NOT_FOUND, "Call not found")
    })
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array().map(|a| a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect())
}

/// `POST /v2/list-calls`: `filter_criteria` (`call_id`, `agent_id`, `call_status`,
/// `from_number`, `to_number`, `metadata`: field → accepted values, `start_timestamp`
/// thresholds, compared with the creation time here), `sort_order`, `limit` (default 50).
async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let ex = Exchange::begin(&st, Provider::Retell, "POST", &uri);
    let resp = ex.received_json(&body, auth(&st, &headers)).and_then(|parsed| match parsed {
        Ok(Value::Object(q)) => Ok(list_calls(&st, &q)),
        Ok(other) => Err(ex.refuse(&[format!("body must be a JSON object, got {other}")], bad_request).into()),
        Err(e) => Err(ex.refuse(&[e], bad_request).into()),
    });
    ex.answer(resp)
}

fn list_calls(st: &St, q: &Map<String, Value>) -> Response {
    let empty = Map::new();
    let f = q.get("filter_criteria").and_then(Value::as_object).unwrap_or(&empty);
    let ids = strings(f.get("call_id"));
    let agents = strings(f.get("agent_id"));
    let statuses = strings(f.get("call_status"));
    let froms = strings(f.get("from_number"));
    let tos = strings(f.get("to_number"));
    let meta: Vec<(String, Vec<String>)> = f
        .get("metadata")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(Some(v)).unwrap_or_default())).collect())
        .unwrap_or_default();
    let bound = |k: &str| f.get("start_timestamp").and_then(|t| t.get(k)).and_then(Value::as_i64);
    let (lower, upper) = (bound("lower_threshold"), bound("upper_threshold"));
    let ascending = q.get("sort_order").and_then(Value::as_str) == Some("ascending");
    let limit = q.get("limit").and_then(Value::as_u64).filter(|n| *n > 0).unwrap_or(50).min(1000) as usize;
    let any = |list: &Option<Vec<String>>, v: Option<&str>| list.as_ref().is_none_or(|l| v.is_some_and(|v| l.iter().any(|x| x == v)));
    let now = st.clock.now_us();
    let store = lock(&st.calls);
    let mut calls: Vec<&CallState> = store
        .calls
        .iter()
        .filter(|c| c.call.provider == Provider::Retell)
        .filter(|c| any(&ids, Some(&c.call.call_id)))
        .filter(|c| any(&agents, Some(c.call.agent_id.as_deref().unwrap_or(DEFAULT_AGENT_ID))))
        .filter(|c| any(&statuses, Some(call_status(c, now))))
        .filter(|c| any(&froms, c.call.from.as_deref()))
        .filter(|c| any(&tos, c.call.to.as_deref()))
        .filter(|c| {
            meta.iter().all(|(k, vals)| {
                let v = match c.call.metadata.get(k) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                };
                v.is_some_and(|v| vals.contains(&v))
            })
        })
        .filter(|c| {
            let ms = c.call.created_at_us / 1000;
            lower.is_none_or(|l| ms >= l) && upper.is_none_or(|u| ms <= u)
        })
        .collect();
    if !ascending {
        calls.reverse();
    }
    let out: Vec<Value> = calls.into_iter().take(limit).map(|c| call_json(c, now)).collect();
    json(StatusCode::OK, Value::Array(out))
}
