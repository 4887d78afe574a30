//! Bland: `POST /v1/calls` ("Send Call"), `GET /v1/calls/{call_id}` ("Call Details"), as
//! docs.bland.ai describes them (Bland publishes no OpenAPI file). The key goes in the
//! `authorization` header as it is, without `Bearer`. Errors as
//! `{"status": "error", "message": ..}`.

use crate::common::{field_value, header_str, json, rfc3339, str_at};
use crate::config::{Provider, SimConfig};
use crate::end_webhooks::{self, Delivery};
use crate::exchange::{self, Body, Exchange, Refusal};
use crate::faults::{ConnKill, FaultAnswers};
use crate::state::{CallState, NewCall, St, Stage};
use crate::webhooks::bland_signature;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use provider_contract::Operation;
use serde_json::{json, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new().route("/v1/calls", post(create)).route("/v1/calls/{call_id}", get(get_call))
}

fn error(status: StatusCode, msg: &str) -> Response {
    json(status, json!({ "status": "error", "message": msg }))
}

fn bad_request(errors: &[String]) -> Response {
    error(StatusCode::BAD_REQUEST, &errors.join("; "))
}

const FAULTS: FaultAnswers = FaultAnswers::new("Rate limit exceeded (simulated)", |status, _, message| error(status, message));

/// `Err` = the refusal of the `authorization` header.
fn auth(st: &St, headers: &HeaderMap) -> Result<(), Refusal> {
    auth_refusal(st, headers).map_err(|msg| Box::new(error(StatusCode::UNAUTHORIZED, msg)))
}

/// `Err` = why the `authorization` header is refused.
fn auth_refusal(st: &St, headers: &HeaderMap) -> Result<(), &'static str> {
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
    match call.stage_at(now_us) {
        Stage::Ended => {
            let s = match call.end_reason.as_str() {
                "busy" => "busy",
                "no-answer" | "no_answer" | "unjoined" => "no-answer",
                "failed" | "connection_error" | "canceled" | "system_error" | "error" => "failed",
                _ => "completed",
            };
            (s, "complete")
        }
        Stage::Ringing | Stage::Answered => ("in-progress", "started"),
        Stage::Queued => ("queued", "queued"),
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

async fn create(State(st): State<St>, kill: ConnKill, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let ex = Exchange::begin(&st, Provider::Bland, "POST", &uri);
    let resp = async {
        let body = ex.checked_json(&body, auth(&st, &headers), Operation::BlandSendCall, bad_request)?;
        let to = ex.check(str_at(&body, "/phone_number").ok_or_else(|| vec!["phone_number is required".to_string()]), bad_request)?;
        let amd = body.get("answered_by_enabled") == Some(&Value::Bool(true));
        let webhook = str_at(&body, "/webhook");
        let call = NewCall {
            from: str_at(&body, "/from"),
            machine_detection: amd.then(|| "Enable".to_string()),
            ..NewCall::new(Provider::Bland, uuid::Uuid::new_v4().to_string(), to, field_value(&body, "/metadata"), body)
        };
        let id = ex.place(&kill, call, &FAULTS).await?;
        if let Some(url) = webhook {
            // Bland posts to the call's own `webhook`.
            let post_call = move |cfg: &SimConfig, _: &str, call: Value, _| post_call(cfg, &url, call);
            end_webhooks::schedule(&st, Provider::Bland, id.clone(), &[("post-call", 0)], call_json, post_call);
        }
        Ok(json(StatusCode::OK, json!({ "status": "success", "message": "Call successfully queued.", "call_id": id, "batch_id": null })))
    }
    .await;
    ex.answer(resp)
}

/// The call details, signed when there is a signing secret.
fn post_call(cfg: &SimConfig, url: &str, call: Value) -> Option<Delivery> {
    let body = serde_json::to_vec(&call).unwrap_or_default();
    let h = cfg.bland_webhook_secret.as_deref().map(|s| vec![("X-Webhook-Signature", bland_signature(s, &body))]).unwrap_or_default();
    Some((url.to_string(), body, h))
}

async fn get_call(State(st): State<St>, Path(call_id): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    exchange::get_call(&st, Provider::Bland, &uri, auth(&st, &headers), &call_id, call_json, || {
        error(StatusCode::NOT_FOUND, "Call not found")
    })
}
