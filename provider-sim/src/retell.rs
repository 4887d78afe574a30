//! Retell: `POST /v2/create-phone-call`, `GET /v2/get-call/{call_id}`, `POST /v2/list-calls`
//! (with `filter_criteria`, including metadata); `Authorization: Bearer <key>`; errors as
//! `{"error_message": ..}`. Timestamps are epoch milliseconds.

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
    Router::new()
        .route("/v2/create-phone-call", post(create))
        .route("/v2/get-call/{call_id}", get(get_call))
        .route("/v2/list-calls", post(list))
}

fn error(status: StatusCode, msg: &str) -> Response {
    json(status, json!({ "error_message": msg }))
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "Invalid API Key")
}

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
    if now_us >= call.ended_at_us {
        if matches!(call.end_reason.as_str(), "system_error" | "error") {
            "error"
        } else {
            "ended"
        }
    } else if call.joined_at_us.is_some_and(|j| j <= now_us) {
        "ongoing"
    } else {
        "registered"
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

async fn create(
    State(st): State<St>,
    Extension(kill): Extension<ConnKill>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rec = st.log.begin(Provider::Retell, "POST", uri.path(), uri.query());
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
            return error(StatusCode::BAD_REQUEST, &e);
        }
    };
    if let Err(errs) = st.contract.check(Operation::RetellCreatePhoneCall, &body) {
        refuse(rec, &errs);
        return error(StatusCode::BAD_REQUEST, &errs.join("; "));
    }
    let Some(to) = str_at(&body, "/to_number") else {
        let msg = "to_number is required".to_string();
        refuse(rec, std::slice::from_ref(&msg));
        return error(StatusCode::BAD_REQUEST, &msg);
    };
    let metadata = field_value(&body, "/metadata");
    rec.update(|r| {
        r.to = Some(to.clone());
        r.metadata = metadata.clone();
    });
    match gate(st, rec, kill, Provider::Retell, &to).await {
        Err(Fault::RateLimited { retry_after_secs }) => {
            with_retry_after(error(StatusCode::TOO_MANY_REQUESTS, "Too many requests (simulated rate limit)"), retry_after_secs)
        }
        Err(Fault::Capacity { retry_after_secs, message }) => with_retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, message.as_deref().unwrap_or("No capacity right now (simulated)")),
            retry_after_secs,
        ),
        Err(Fault::Error { status, message }) => {
            error(status_code(status), message.as_deref().unwrap_or("Internal server error (simulated)"))
        }
        Err(Fault::HangExpired) => error(StatusCode::GATEWAY_TIMEOUT, "Gateway timeout (simulated hang)"),
        Ok((duration_ms, end_reason)) => {
            let id = format!("call_{}", uuid::Uuid::new_v4().simple());
            st.create_call(
                NewCall {
                    provider: Provider::Retell,
                    call_id: id.clone(),
                    to,
                    from: str_at(&body, "/from_number"),
                    metadata,
                    agent_id: str_at(&body, "/override_agent_id"),
                    body,
                    account_sid: None,
                    machine_detection: None,
                },
                duration_ms,
                end_reason,
            );
            rec.update(|r| r.call_id = Some(id.clone()));
            crate::webhooks::schedule_end_webhooks(st, Provider::Retell, id.clone(), None);
            let store = lock(&st.calls);
            match store.get(&id) {
                Some(c) => json(StatusCode::CREATED, call_json(c, c.call.created_at_us)),
                None => error(StatusCode::INTERNAL_SERVER_ERROR, "call vanished (reset during create)"),
            }
        }
    }
}

async fn get_call(State(st): State<St>, Path(call_id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st.log.begin(Provider::Retell, "GET", uri.path(), uri.query());
    let ok = bearer_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        unauthorized()
    } else {
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        match store.get(&call_id).filter(|c| c.call.provider == Provider::Retell) {
            Some(c) => json(StatusCode::OK, call_json(c, now)),
            None => error(StatusCode::NOT_FOUND, "Call not found"),
        }
    };
    rec.finish(resp.status().as_u16());
    resp
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array().map(|a| a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect())
}

/// `POST /v2/list-calls`: `filter_criteria` (`call_id`, `agent_id`, `call_status`,
/// `from_number`, `to_number`, `metadata`: field → accepted values, `start_timestamp`
/// thresholds, compared with the creation time here), `sort_order`, `limit` (default 50).
async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let rec = st.log.begin(Provider::Retell, "POST", uri.path(), uri.query());
    let (logged, parsed) = parse_json_body(&body);
    let ok = bearer_ok(&st, &headers);
    rec.update(|r| {
        r.auth_ok = ok;
        r.body = logged;
    });
    let resp = if !ok {
        unauthorized()
    } else {
        match parsed {
            Ok(Value::Object(q)) => list_calls(&st, &q),
            Ok(other) => {
                let msg = format!("body must be a JSON object, got {other}");
                refuse(&rec, std::slice::from_ref(&msg));
                error(StatusCode::BAD_REQUEST, &msg)
            }
            Err(e) => {
                refuse(&rec, std::slice::from_ref(&e));
                error(StatusCode::BAD_REQUEST, &e)
            }
        }
    };
    rec.finish(resp.status().as_u16());
    resp
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
