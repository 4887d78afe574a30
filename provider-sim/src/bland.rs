//! Bland: `POST /v1/calls` ("Send Call"), `GET /v1/calls/{call_id}` ("Call Details"), as
//! docs.bland.ai describes them (Bland publishes no OpenAPI file). The key goes in the
//! `authorization` header as it is, without `Bearer`. Errors as
//! `{"status": "error", "message": ..}`.

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
use serde_json::{json, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new().route("/v1/calls", post(create)).route("/v1/calls/{call_id}", get(get_call))
}

fn error(status: StatusCode, msg: &str) -> Response {
    json(status, json!({ "status": "error", "message": msg }))
}

/// `Err` = why the `authorization` header is refused.
fn auth(st: &St, headers: &HeaderMap) -> Result<(), &'static str> {
    let given = header_str(headers, "authorization").map(str::trim);
    // Bland takes the bare key; a Bearer prefix is a client bug even when any key is accepted.
    if given.is_some_and(|g| g.len() > 7 && g[..7].eq_ignore_ascii_case("bearer ")) {
        return Err("Invalid API key: send the key itself in the authorization header, without \"Bearer\"");
    }
    match st.api_key() {
        None => Ok(()),
        Some(k) if given == Some(k.as_str()) => Ok(()),
        Some(_) => Err("Invalid API key"),
    }
}

fn status_of(c: &CallState, now_us: i64) -> (&'static str, &'static str) {
    let call = &c.call;
    if now_us >= call.ended_at_us {
        let s = match call.end_reason.as_str() {
            "busy" => "busy",
            "no-answer" | "no_answer" | "unjoined" => "no-answer",
            "failed" | "connection_error" | "canceled" | "system_error" | "error" => "failed",
            _ => "completed",
        };
        (s, "complete")
    } else if now_us >= call.ringing_at_us() {
        ("in-progress", "started")
    } else {
        ("queued", "queued")
    }
}

/// The "Call Details" object as of `now_us`.
pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let ended = now_us >= call.ended_at_us;
    let joined = call.joined_at_us.filter(|j| *j <= now_us);
    let (status, queue_status) = status_of(c, now_us);
    let answered_by = match (c.machine_detection.is_some(), joined) {
        (true, Some(_)) if call.end_reason == "voicemail" => json!("voicemail"),
        (true, Some(_)) => json!("human"),
        (true, None) if ended => json!("no-answer"),
        _ => Value::Null,
    };
    let talk_us = match (ended, call.joined_at_us) {
        (true, Some(j)) => call.ended_at_us - j,
        _ => 0,
    };
    let obj = |k: &str| c.body.get(k).filter(|v| v.is_object()).cloned().unwrap_or_else(|| json!({}));
    json!({
        "call_id": call.call_id,
        "c_id": call.call_id,
        "status": status,
        "queue_status": queue_status,
        "completed": ended,
        "inbound": false,
        "to": call.to,
        "from": call.from,
        "answered_by": answered_by,
        "call_length": if ended { json!((talk_us as f64 / 60e6 * 100.0).round() / 100.0) } else { Value::Null },
        "corrected_duration": if ended { json!((talk_us / 1_000_000).to_string()) } else { Value::Null },
        "call_ended_by": match (ended, call.end_reason.as_str()) {
            (true, "hangup") => json!("USER"),
            (true, "agent_hangup") => json!("ASSISTANT"),
            _ => Value::Null,
        },
        "created_at": rfc3339(call.created_at_us),
        "started_at": joined.map(rfc3339).unwrap_or(Value::Null),
        "end_at": if ended { rfc3339(call.ended_at_us) } else { Value::Null },
        "max_duration": c.body.get("max_duration").cloned().unwrap_or(json!(30)),
        "metadata": obj("metadata"),
        "request_data": obj("request_data"),
        "variables": {},
        "record": c.body.get("record").cloned().unwrap_or(json!(false)),
        "recording_url": null,
        "batch_id": null,
        "error_message": null,
        "endpoint_url": "api.bland.ai",
        "transcripts": [],
        "concatenated_transcript": "",
    })
}

async fn create(
    State(st): State<St>,
    Extension(kill): Extension<ConnKill>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let rec = st.log.begin(Provider::Bland, "POST", uri.path(), uri.query());
    let resp = create_inner(&st, &rec, &kill, &headers, body).await;
    rec.finish(resp.status().as_u16());
    resp
}

async fn create_inner(st: &St, rec: &RecordGuard, kill: &ConnKill, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let (logged, parsed) = parse_json_body(&body);
    let auth = auth(st, headers);
    rec.update(|r| {
        r.auth_ok = auth.is_ok();
        r.body = logged;
    });
    if let Err(msg) = auth {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    let body = match parsed {
        Ok(v) => v,
        Err(e) => {
            refuse(rec, std::slice::from_ref(&e));
            return error(StatusCode::BAD_REQUEST, &e);
        }
    };
    if let Err(errs) = st.contract.check(Operation::BlandSendCall, &body) {
        refuse(rec, &errs);
        return error(StatusCode::BAD_REQUEST, &errs.join("; "));
    }
    let Some(to) = str_at(&body, "/phone_number") else {
        let msg = "phone_number is required".to_string();
        refuse(rec, std::slice::from_ref(&msg));
        return error(StatusCode::BAD_REQUEST, &msg);
    };
    let metadata = field_value(&body, "/metadata");
    rec.update(|r| {
        r.to = Some(to.clone());
        r.metadata = metadata.clone();
    });
    match gate(st, rec, kill, Provider::Bland, &to).await {
        Err(Fault::RateLimited { retry_after_secs }) => {
            with_retry_after(error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded (simulated)"), retry_after_secs)
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
            let id = uuid::Uuid::new_v4().to_string();
            let amd = body.get("answered_by_enabled") == Some(&Value::Bool(true));
            let webhook = str_at(&body, "/webhook");
            st.create_call(
                NewCall {
                    provider: Provider::Bland,
                    call_id: id.clone(),
                    to,
                    from: str_at(&body, "/from"),
                    metadata,
                    body,
                    account_sid: None,
                    machine_detection: amd.then(|| "Enable".to_string()),
                    agent_id: None,
                },
                duration_ms,
                end_reason,
            );
            rec.update(|r| r.call_id = Some(id.clone()));
            crate::webhooks::schedule_end_webhooks(st, Provider::Bland, id.clone(), webhook);
            json(
                StatusCode::OK,
                json!({
                    "status": "success",
                    "message": "Call successfully queued.",
                    "call_id": id,
                    "batch_id": null,
                }),
            )
        }
    }
}

async fn get_call(State(st): State<St>, Path(call_id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st.log.begin(Provider::Bland, "GET", uri.path(), uri.query());
    let auth = auth(&st, &headers);
    rec.update(|r| r.auth_ok = auth.is_ok());
    let resp = match auth {
        Err(msg) => error(StatusCode::UNAUTHORIZED, msg),
        Ok(()) => {
            let now = st.clock.now_us();
            let store = lock(&st.calls);
            match store.get(&call_id).filter(|c| c.call.provider == Provider::Bland) {
                Some(c) => json(StatusCode::OK, call_json(c, now)),
                None => error(StatusCode::NOT_FOUND, "Call not found"),
            }
        }
    };
    rec.finish(resp.status().as_u16());
    resp
}
