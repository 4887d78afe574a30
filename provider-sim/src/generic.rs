//! Generic AI caller ("VoiceAPI"): `POST /voiceapi/v1/calls`, `GET /voiceapi/v1/calls/{id}`,
//! `GET /voiceapi/v1/calls?idempotency_key=K`; `Authorization: Bearer <key>`.
//! (It lives under `/voiceapi` because Bland owns `/v1/calls`.)

use crate::common::{bearer_ok, json, page_size, query_pairs, raw_body, rfc3339};
use crate::config::Provider;
use crate::exchange::{self, Body, Exchange, Refusal};
use crate::faults::{ConnKill, FaultAnswers};
use crate::state::{metadata_field_matches, never_connects, CallState, NewCall, St, Stage};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new().route("/voiceapi/v1/calls", post(create).get(list)).route("/voiceapi/v1/calls/{id}", get(get_call))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json(status, json!({ "error": code, "message": message }))
}

/// `Authorization: Bearer <key>`.
fn auth(st: &St, headers: &HeaderMap) -> Result<(), Refusal> {
    exchange::key_check(bearer_ok(st, headers), || error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid or missing bearer token"))
}

fn invalid_request(errors: &[String]) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", &errors.join("; "))
}

const FAULTS: FaultAnswers = FaultAnswers {
    rate_limited: "too many requests (simulated)",
    capacity: "no capacity right now (simulated)",
    error: "internal error (simulated)",
    hang: "gateway timeout (simulated hang)",
    body: |status, fault, message| {
        let code = match fault {
            "error" => "internal_error",
            "hang" => "timeout",
            named => named, // rate_limited, capacity
        };
        error(status, code, message)
    },
};

pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let ended = now_us >= call.ended_at_us;
    let status = match call.stage_at(now_us) {
        Stage::Ended if never_connects(&call.end_reason) => "failed",
        Stage::Ended => "completed",
        Stage::Answered => "in_progress",
        Stage::Queued | Stage::Ringing => "queued",
    };
    json!({
        "id": call.call_id,
        "status": status,
        "end_reason": if ended { Value::String(call.end_reason.clone()) } else { Value::Null },
        "phone_number": call.to,
        "lead_ref": c.body.get("lead_ref").cloned().unwrap_or(Value::Null),
        "variables": c.body.get("variables").cloned().unwrap_or(Value::Null),
        "metadata": call.metadata,
        "created_at": rfc3339(call.created_at_us),
        "answered_at": call.joined_at_us.filter(|j| *j <= now_us).map(rfc3339).unwrap_or(Value::Null),
        "ended_at": if ended { rfc3339(call.ended_at_us) } else { Value::Null },
    })
}

async fn create(State(st): State<St>, kill: ConnKill, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let ex = Exchange::begin(&st, Provider::Generic, "POST", &uri);
    let resp = async {
        let parsed = match &body {
            Ok(b) => serde_json::from_slice::<Value>(b).map_err(|e| (raw_body(b), e.to_string())),
            Err(e) => Err((Value::Null, e.body_text())),
        };
        let logged = match &parsed {
            Ok(v) => v.clone(),
            Err((raw, _)) => raw.clone(),
        };
        ex.received(logged, auth(&st, &headers))?;
        let body = match parsed {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err(ex.refuse(&["body must be a JSON object".to_string()], invalid_request).into()),
            Err((_, e)) => return Err(ex.refuse(&[e], |e| error(StatusCode::BAD_REQUEST, "invalid_json", &e[0])).into()),
        };
        let to = body.get("phone_number").and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_string);
        let to = ex.check(to.ok_or_else(|| vec!["phone_number is required".to_string()]), invalid_request)?;
        let metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
        let id = ex.place(&kill, NewCall::new(Provider::Generic, uuid::Uuid::new_v4().to_string(), to, metadata, body), &FAULTS).await?;
        // The create answer always shows the call as just created ("queued").
        Ok(ex.created(&id, call_json, |m| error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", m)))
    }
    .await;
    ex.answer(resp)
}

async fn get_call(State(st): State<St>, Path(id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::get_call(&st, Provider::Generic, &uri, auth(&st, &headers), &id, call_json, || {
        error(StatusCode::NOT_FOUND, "not_found", "call not found")
    })
}

async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::read(&st, Provider::Generic, &uri, auth(&st, &headers), |store, now| {
        let q = query_pairs(uri.query());
        // `idempotency_key=K` and `metadata.<field>=V` filter on metadata; `phone_number` on the number.
        let mut filters: Vec<(&str, &str)> = Vec::new();
        let mut phone: Option<&str> = None;
        for (k, v) in &q {
            if k == "idempotency_key" {
                filters.push(("idempotency_key", v));
            } else if let Some(f) = k.strip_prefix("metadata.") {
                filters.push((f, v));
            } else if k == "phone_number" {
                phone = Some(v);
            }
        }
        let limit = page_size(&q, &["limit", "page_size"], 100);
        let calls: Vec<Value> = store
            .calls
            .iter()
            .rev()
            .filter(|c| c.call.provider == Provider::Generic)
            .filter(|c| phone.is_none_or(|p| c.call.to.as_deref() == Some(p)))
            .filter(|c| filters.iter().all(|(f, v)| metadata_field_matches(&c.call.metadata, f, v)))
            .take(limit)
            .map(|c| call_json(c, now))
            .collect();
        json(StatusCode::OK, json!({ "calls": calls }))
    })
}
