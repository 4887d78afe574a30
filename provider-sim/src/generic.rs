//! Generic AI caller ("VoiceAPI"): `POST /voiceapi/v1/calls`, `GET /voiceapi/v1/calls/{id}`,
//! `GET /voiceapi/v1/calls?idempotency_key=K`; `Authorization: Bearer <key>`.
//! (It lives under `/voiceapi` because Bland owns `/v1/calls`.)

use crate::common::*;
use crate::config::Provider;
use crate::log::RecordGuard;
use crate::state::{lock, metadata_field_matches, never_connects, CallState, NewCall};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{json, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new().route("/voiceapi/v1/calls", post(create).get(list)).route("/voiceapi/v1/calls/{id}", get(get_call))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json(status, json!({ "error": code, "message": message }))
}

fn auth_ok(st: &St, headers: &HeaderMap) -> bool {
    bearer_ok(st, headers)
}

pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let ended = now_us >= call.ended_at_us;
    let status = if ended {
        if never_connects(&call.end_reason) {
            "failed"
        } else {
            "completed"
        }
    } else if call.joined_at_us.is_some_and(|j| j <= now_us) {
        "in_progress"
    } else {
        "queued"
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

async fn create(
    State(st): State<St>,
    Extension(kill): Extension<ConnKill>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rec = st.log.begin(Provider::Generic, "POST", uri.path(), uri.query());
    let resp = create_inner(&st, &rec, &kill, &headers, body).await;
    rec.finish(resp.status().as_u16());
    resp
}

async fn create_inner(st: &St, rec: &RecordGuard, kill: &ConnKill, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let parsed = match &body {
        Ok(b) => serde_json::from_slice::<Value>(b).map_err(|e| (raw_body(b), e.to_string())),
        Err(e) => Err((Value::Null, e.body_text())),
    };
    let ok = auth_ok(st, headers);
    rec.update(|r| {
        r.auth_ok = ok;
        r.body = match &parsed {
            Ok(v) => v.clone(),
            Err((raw, _)) => raw.clone(),
        };
    });
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid or missing bearer token");
    }
    let body = match parsed {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            let msg = "body must be a JSON object".to_string();
            refuse(rec, std::slice::from_ref(&msg));
            return error(StatusCode::BAD_REQUEST, "invalid_request", &msg);
        }
        Err((_, e)) => {
            refuse(rec, std::slice::from_ref(&e));
            return error(StatusCode::BAD_REQUEST, "invalid_json", &e);
        }
    };
    let Some(to) = body.get("phone_number").and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_string) else {
        let msg = "phone_number is required".to_string();
        refuse(rec, std::slice::from_ref(&msg));
        return error(StatusCode::BAD_REQUEST, "invalid_request", &msg);
    };
    let metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
    rec.update(|r| {
        r.to = Some(to.clone());
        r.metadata = metadata.clone();
    });
    match gate(st, rec, kill, Provider::Generic, &to).await {
        Err(Fault::RateLimited { retry_after_secs }) => {
            with_retry_after(error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests (simulated)"), retry_after_secs)
        }
        Err(Fault::Capacity { retry_after_secs, message }) => with_retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, "capacity", message.as_deref().unwrap_or("no capacity right now (simulated)")),
            retry_after_secs,
        ),
        Err(Fault::Error { status, message }) => {
            error(status_code(status), "internal_error", message.as_deref().unwrap_or("internal error (simulated)"))
        }
        Err(Fault::HangExpired) => error(StatusCode::GATEWAY_TIMEOUT, "timeout", "gateway timeout (simulated hang)"),
        Ok((duration_ms, end_reason)) => {
            let id = uuid::Uuid::new_v4().to_string();
            st.create_call(
                NewCall {
                    provider: Provider::Generic,
                    call_id: id.clone(),
                    to,
                    from: None,
                    metadata,
                    body,
                    account_sid: None,
                    machine_detection: None,
                    agent_id: None,
                },
                duration_ms,
                end_reason,
            );
            rec.update(|r| r.call_id = Some(id.clone()));
            // The create answer always shows the call as just created ("queued").
            let store = lock(&st.calls);
            match store.get(&id) {
                Some(c) => json(StatusCode::CREATED, call_json(c, c.call.created_at_us)),
                None => error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "call vanished (reset during create)"),
            }
        }
    }
}

async fn get_call(State(st): State<St>, Path(id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st.log.begin(Provider::Generic, "GET", uri.path(), uri.query());
    let ok = auth_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid or missing bearer token")
    } else {
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        match store.get(&id).filter(|c| c.call.provider == Provider::Generic) {
            Some(c) => json(StatusCode::OK, call_json(c, now)),
            None => error(StatusCode::NOT_FOUND, "not_found", "call not found"),
        }
    };
    rec.finish(resp.status().as_u16());
    resp
}

async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st.log.begin(Provider::Generic, "GET", uri.path(), uri.query());
    let ok = auth_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid or missing bearer token")
    } else {
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
        let now = st.clock.now_us();
        let store = lock(&st.calls);
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
    };
    rec.finish(resp.status().as_u16());
    resp
}
