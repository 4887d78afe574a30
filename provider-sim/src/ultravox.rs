//! Ultravox: `POST /api/calls`, `POST /api/agents/{agentId}/calls`, `GET /api/calls/{id}`,
//! `GET /api/calls?metadata.<field>=<value>`; `X-API-Key` auth; errors as `{"detail": ..}`.

use crate::common::*;
use crate::config::Provider;
use crate::log::RecordGuard;
use crate::state::{lock, metadata_field_matches, CallState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{json, Value};

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

/// Destination number: `medium.<any>.destinationPhoneNumber`, `medium.outgoing.to`,
/// `medium.<any>.outgoing.to` or `medium.<any>.to`.
pub(crate) fn destination(body: &Value) -> Option<String> {
    let medium = body.get("medium")?.as_object()?;
    let s = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    };
    if let Some(to) = s(medium.get("outgoing").and_then(|o| o.get("to"))) {
        return Some(to);
    }
    medium.values().find_map(|m| {
        s(m.get("destinationPhoneNumber"))
            .or_else(|| s(m.get("outgoing").and_then(|o| o.get("to"))))
            .or_else(|| s(m.get("to")))
    })
}

fn source(body: &Value) -> Option<String> {
    let medium = body.get("medium")?.as_object()?;
    let from = |m: &Value| {
        m.get("outgoing")
            .and_then(|o| o.get("from"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    from(&Value::Object(medium.clone())).or_else(|| medium.values().find_map(from))
}

/// The Ultravox call object as of `now_us`.
pub(crate) fn call_json(c: &CallState, now_us: i64) -> Value {
    let call = &c.call;
    let mut obj = c.body.as_object().cloned().unwrap_or_default();
    let joined = call.joined_at_us.filter(|j| *j <= now_us);
    let ended = call.ended_at_us <= now_us;
    obj.insert("callId".into(), Value::String(call.call_id.clone()));
    obj.insert("created".into(), rfc3339(call.created_at_us));
    obj.insert("joined".into(), joined.map(rfc3339).unwrap_or(Value::Null));
    obj.insert(
        "ended".into(),
        if ended {
            rfc3339(call.ended_at_us)
        } else {
            Value::Null
        },
    );
    obj.insert(
        "endReason".into(),
        if ended {
            Value::String(call.end_reason.clone())
        } else {
            Value::Null
        },
    );
    obj.insert(
        "medium".into(),
        c.body.get("medium").cloned().unwrap_or(Value::Null),
    );
    obj.insert(
        "metadata".into(),
        if call.metadata.is_null() {
            json!({})
        } else {
            call.metadata.clone()
        },
    );
    obj.insert(
        "firstSpeaker".into(),
        c.body
            .get("firstSpeaker")
            .cloned()
            .unwrap_or_else(|| json!("FIRST_SPEAKER_AGENT")),
    );
    obj.insert(
        "joinUrl".into(),
        Value::String(format!("wss://sim.invalid/calls/{}", call.call_id)),
    );
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
    let rec = st
        .log
        .begin(Provider::Ultravox, "POST", uri.path(), uri.query());
    let resp = create_inner(&st, &rec, &kill, &headers, body, None).await;
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
    let rec = st
        .log
        .begin(Provider::Ultravox, "POST", uri.path(), uri.query());
    let resp = create_inner(&st, &rec, &kill, &headers, body, Some(agent_id)).await;
    rec.finish(resp.status().as_u16());
    resp
}

async fn create_inner(
    st: &St,
    rec: &RecordGuard,
    kill: &ConnKill,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    agent_id: Option<String>,
) -> Response {
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
        return detail(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let mut body = match parsed {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return detail(
                StatusCode::BAD_REQUEST,
                "JSON parse error - expected an object",
            )
        }
        Err((_, e)) => return detail(StatusCode::BAD_REQUEST, &format!("JSON parse error - {e}")),
    };
    let Some(to) = destination(&body) else {
        return detail(
            StatusCode::BAD_REQUEST,
            "medium: a destination phone number is required \
             (medium.<provider>.destinationPhoneNumber or medium[.<provider>].outgoing.to)",
        );
    };
    let metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
    rec.update(|r| {
        r.to = Some(to.clone());
        r.metadata = metadata.clone();
    });
    match gate(st, rec, kill, Provider::Ultravox, &to).await {
        Err(Fault::RateLimited { retry_after_secs }) => with_retry_after(
            detail(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Request was throttled. Expected available in {retry_after_secs} seconds."
                ),
            ),
            retry_after_secs,
        ),
        Err(Fault::Error { status, message }) => detail(
            status_code(status),
            message
                .as_deref()
                .unwrap_or("Internal server error (simulated)"),
        ),
        Err(Fault::HangExpired) => detail(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway timeout (simulated hang)",
        ),
        Ok((duration_ms, end_reason)) => {
            if let (Some(a), Some(o)) = (agent_id, body.as_object_mut()) {
                o.insert("agentId".into(), Value::String(a));
            }
            let id = uuid::Uuid::new_v4().to_string();
            let from = source(&body);
            let call = st.create_call(
                Provider::Ultravox,
                id.clone(),
                to,
                from,
                metadata,
                body,
                duration_ms,
                end_reason,
                None,
                false,
            );
            rec.update(|r| r.call_id = Some(id.clone()));
            // The create answer shows the call as just created (never already joined).
            let store = lock(&st.calls);
            match store.get(&call.call_id) {
                Some(c) => json(StatusCode::CREATED, call_json(c, c.call.created_at_us)),
                None => detail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "call vanished (reset during create)",
                ),
            }
        }
    }
}

async fn get_call(
    State(st): State<St>,
    Path(call_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let rec = st
        .log
        .begin(Provider::Ultravox, "GET", uri.path(), uri.query());
    let ok = auth_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        detail(StatusCode::UNAUTHORIZED, "Invalid API key")
    } else {
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        match store
            .get(&call_id)
            .filter(|c| c.call.provider == Provider::Ultravox)
        {
            Some(c) => json(StatusCode::OK, call_json(c, now)),
            None => detail(StatusCode::NOT_FOUND, "Not found."),
        }
    };
    rec.finish(resp.status().as_u16());
    resp
}

async fn list(State(st): State<St>, uri: Uri, headers: HeaderMap) -> Response {
    let rec = st
        .log
        .begin(Provider::Ultravox, "GET", uri.path(), uri.query());
    let ok = auth_ok(&st, &headers);
    rec.update(|r| r.auth_ok = ok);
    let resp = if !ok {
        detail(StatusCode::UNAUTHORIZED, "Invalid API key")
    } else {
        let q = query_pairs(uri.query());
        let filters: Vec<(&str, &str)> = q
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("metadata.").map(|f| (f, v.as_str())))
            .collect();
        let limit = page_size(&q, &["pageSize", "page_size"], 100);
        let now = st.clock.now_us();
        let store = lock(&st.calls);
        let matching: Vec<&CallState> = store
            .calls
            .iter()
            .rev()
            .filter(|c| c.call.provider == Provider::Ultravox)
            .filter(|c| {
                filters
                    .iter()
                    .all(|(f, v)| metadata_field_matches(&c.call.metadata, f, v))
            })
            .collect();
        let total = matching.len();
        let results: Vec<Value> = matching
            .into_iter()
            .take(limit)
            .map(|c| call_json(c, now))
            .collect();
        json(
            StatusCode::OK,
            json!({ "results": results, "next": null, "previous": null, "total": total }),
        )
    };
    rec.finish(resp.status().as_u16());
    resp
}
