//! The dialled-in faults of a create request (latency, error statuses, 429/503 with
//! `Retry-After`, hangs, dropped connections) and the one place they become HTTP answers.

use crate::common::status_code;
use crate::config::Provider;
use crate::log::RecordGuard;
use crate::state::{AppState, Outcome};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Per-connection handle: notifying it makes the server drop the TCP connection unanswered.
/// A handler takes it as an argument (the server puts one in every request's extensions).
#[derive(Clone, Default)]
pub(crate) struct ConnKill(pub Arc<Notify>);

impl<S: Send + Sync> FromRequestParts<S> for ConnKill {
    type Rejection = <Extension<ConnKill> as FromRequestParts<S>>::Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Extension::<ConnKill>::from_request_parts(parts, state).await.map(|Extension(kill)| kill)
    }
}

/// A provider's answers to the faults: its wording (when a rule gives no message of its
/// own) and its error body. The statuses and `Retry-After` are the same for every provider.
pub(crate) struct FaultAnswers {
    /// 429 (`{secs}` stands for the `Retry-After` seconds).
    pub rate_limited: &'static str,
    /// 503, out of capacity.
    pub capacity: &'static str,
    /// Any other dialled-in error status.
    pub error: &'static str,
    /// 504, a hung request whose hold time ran out with the client still connected.
    pub hang: &'static str,
    /// The provider's error body: HTTP status, the fault as the request log names it
    /// (`rate_limited`, `capacity`, `error`, `hang`), the message.
    pub body: fn(StatusCode, &str, &str) -> Response,
}

impl FaultAnswers {
    /// The answers in the wording the providers share but for the 429's, each provider's own;
    /// one that words another fault its own way sets it over these (`..FaultAnswers::new(..)`).
    pub const fn new(rate_limited: &'static str, body: fn(StatusCode, &str, &str) -> Response) -> FaultAnswers {
        FaultAnswers {
            rate_limited,
            capacity: "No capacity right now (simulated)",
            error: "Internal server error (simulated)",
            hang: "Gateway timeout (simulated hang)",
            body,
        }
    }
}

/// Applies rules/random faults and latency to a create request. `Ok` = create the call
/// with this duration and end reason; `Err` = the provider's answer to the fault. A dropped
/// connection never returns.
pub(crate) async fn gate(
    st: &AppState,
    rec: &RecordGuard,
    kill: &ConnKill,
    provider: Provider,
    to: &str,
    answers: &FaultAnswers,
) -> Result<(u64, Option<String>), Response> {
    let (delay, outcome) = st.decide(provider, to);
    let fault = match &outcome {
        Outcome::Create { .. } => None,
        Outcome::RateLimited { .. } => Some("rate_limited"),
        Outcome::Capacity { .. } => Some("capacity"),
        Outcome::Error { .. } => Some("error"),
        Outcome::Hang { .. } => Some("hang"),
        Outcome::Drop => Some("drop_connection"),
    };
    if let Some(f) = fault {
        rec.update(|r| r.fault = Some(f.to_string()));
    }
    // A hung request is held instead of the latency.
    match &outcome {
        Outcome::Hang { secs } => tokio::time::sleep(Duration::from_secs(*secs)).await,
        _ if !delay.is_zero() => tokio::time::sleep(delay).await,
        _ => {}
    }
    let (status, message, retry_after) = match outcome {
        Outcome::Create { duration_ms, end_reason } => return Ok((duration_ms, end_reason)),
        Outcome::Drop => {
            kill.0.notify_one();
            // The connection task drops this future together with the socket.
            return std::future::pending().await;
        }
        Outcome::RateLimited { retry_after_secs } => {
            let text = answers.rate_limited.replace("{secs}", &retry_after_secs.to_string());
            (StatusCode::TOO_MANY_REQUESTS, text, Some(retry_after_secs))
        }
        Outcome::Capacity { retry_after_secs, message } => {
            (StatusCode::SERVICE_UNAVAILABLE, message.unwrap_or_else(|| answers.capacity.to_string()), Some(retry_after_secs))
        }
        Outcome::Error { status, message } => (status_code(status), message.unwrap_or_else(|| answers.error.to_string()), None),
        Outcome::Hang { .. } => (StatusCode::GATEWAY_TIMEOUT, answers.hang.to_string(), None),
    };
    let resp = (answers.body)(status, fault.unwrap_or_default(), &message);
    Err(match retry_after {
        Some(secs) => with_retry_after(resp, secs),
        None => resp,
    })
}

fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}
