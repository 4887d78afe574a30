//! Control API under `/_sim/` (no auth; the server only listens on loopback).

use crate::common::{json, query_pairs};
use crate::config::Rule;
use crate::mutex::lock;
use crate::state::St;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

pub(crate) fn routes() -> Router<St> {
    Router::new()
        .route("/_sim/health", get(|| async { json(StatusCode::OK, json!({ "ok": true })) }))
        .route("/_sim/requests", get(requests))
        .route("/_sim/calls", get(calls))
        .route("/_sim/config", get(get_config).post(post_config))
        .route("/_sim/rules", get(get_rules).post(post_rules))
        .route("/_sim/reset", post(reset))
        .route("/_sim/stats", get(stats))
        .route("/_sim/webhooks", get(webhooks))
}

fn bad_request(msg: impl Into<String>) -> Response {
    json(StatusCode::BAD_REQUEST, json!({ "error": msg.into() }))
}

async fn requests(State(st): State<St>, uri: Uri) -> Response {
    let q = query_pairs(uri.query());
    let since = match q.iter().find(|(k, _)| k == "since_seq") {
        None => None,
        Some((_, v)) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return bad_request("since_seq must be a non-negative integer"),
        },
    };
    json(StatusCode::OK, serde_json::to_value(st.log.snapshot(since)).unwrap_or(Value::Null))
}

async fn calls(State(st): State<St>, uri: Uri) -> Response {
    let q = query_pairs(uri.query());
    let batch = q.iter().find(|(k, _)| k == "batch_id").map(|(_, v)| v.clone());
    let mut calls = st.calls();
    if let Some(b) = batch {
        calls.retain(|c| c.batch_id().as_deref() == Some(b.as_str()));
    }
    json(StatusCode::OK, serde_json::to_value(calls).unwrap_or(Value::Null))
}

async fn get_config(State(st): State<St>) -> Response {
    json(StatusCode::OK, lock(&st.config).public_json())
}

async fn post_config(State(st): State<St>, body: Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("invalid JSON: {e}")),
    };
    let mut cfg = lock(&st.config);
    match cfg.apply_json(&patch) {
        Ok(()) => {
            st.log.set_capacity(cfg.log_capacity);
            json(StatusCode::OK, cfg.public_json())
        }
        Err(e) => bad_request(e),
    }
}

async fn get_rules(State(st): State<St>) -> Response {
    let rules = lock(&st.config).rules.clone();
    json(StatusCode::OK, serde_json::to_value(rules).unwrap_or(Value::Null))
}

async fn post_rules(State(st): State<St>, body: Bytes) -> Response {
    let rules: Vec<Rule> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("expected a JSON array of rules: {e}")),
    };
    for (i, r) in rules.iter().enumerate() {
        if let Err(e) = r.validate() {
            return bad_request(format!("rules[{i}]: {e}"));
        }
    }
    lock(&st.config).rules = rules.clone();
    json(StatusCode::OK, serde_json::to_value(rules).unwrap_or(Value::Null))
}

async fn reset(State(st): State<St>) -> Response {
    st.reset();
    json(StatusCode::OK, json!({ "ok": true }))
}

/// `?by_batch=false` leaves out the per-batch concurrency (see `AppState::stats_with`).
async fn stats(State(st): State<St>, uri: Uri) -> Response {
    let q = query_pairs(uri.query());
    let by_batch = match q.iter().find(|(k, _)| k == "by_batch").map(|(_, v)| v.as_str()) {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return bad_request("by_batch must be true or false"),
    };
    json(StatusCode::OK, serde_json::to_value(st.stats_with(by_batch)).unwrap_or(Value::Null))
}

async fn webhooks(State(st): State<St>) -> Response {
    json(StatusCode::OK, serde_json::to_value(st.webhooks.snapshot()).unwrap_or(Value::Null))
}
