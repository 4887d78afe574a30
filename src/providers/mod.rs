//! Provider adapters: pure request building and response parsing, no pgrx, no I/O.
//! The factory picks the adapter by the agent mapping's provider.

pub mod generic;
pub mod lookup;
pub mod twilio;
pub mod ultravox;

use serde_json::{Map, Value};

/// Everything needed to place one call, as read from the database at claim time.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub call_id: i64,
    pub batch_id: i64,
    pub contact_id: i64,
    pub phone_number: String,
    pub name: Option<String>,
    pub variables: Value,
    pub lead_ref: Option<String>,
    pub idempotency_key: String,
    /// The pacing slot (unix ms) this call was claimed for; it is not sent earlier.
    pub slot_at_ms: f64,
    /// 60000 / calls_per_minute of its batch.
    pub spacing_ms: f64,
    /// The agent mapping that places this call (a queue job may name its own).
    pub agent_mapping_id: i64,
    /// Caller metadata passed through to the provider (queue jobs).
    pub metadata: Value,
    /// Pacing of the provider account (`agency:provider`) when it has max_calls_per_second.
    pub credential_key: Option<String>,
    pub credential_gap_ms: f64,
    /// Pacing of the global dialer.max_calls_per_second (0 = none).
    pub global_gap_ms: f64,
}

/// The agent mapping and credentials of a batch, read once per tick.
#[derive(Debug, Clone)]
pub struct ProviderTarget {
    pub provider: String,
    pub external_agent_id: String,
    pub agent_name: Option<String>,
    pub from_number: Option<String>,
    pub request_template: Value,
    pub credentials: Credentials,
}

/// Provider credentials. `Debug` never prints the key.
#[derive(Clone)]
pub struct Credentials {
    pub api_key: String,
    pub base_url: Option<String>,
    pub account_sid: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &"[redacted]")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// An HTTP request ready to send. `audit` is what gets stored in `calls.request`: no secrets.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub audit: Value,
    /// Secret strings to scrub from any error text derived from this request.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

/// Why a request got no HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportError {
    /// Nothing reached the provider (DNS, connection refused): safe to retry.
    NotSent(String),
    /// The request may have reached the provider (timeout, reset mid-way): outcome unknown.
    Unknown(String),
}

/// The outcome of placing a call, as recorded by `dialer._record_dispatch`.
#[derive(Debug, Clone, PartialEq)]
pub enum DispatchOutcome {
    Accepted { provider_call_id: Option<String> },
    RateLimited { retry_after_secs: f64 },
    Failed { error: String },
    NetworkError { error: String },
    Timeout { error: String },
}

impl DispatchOutcome {
    pub fn kind(&self) -> &'static str {
        match self {
            DispatchOutcome::Accepted { .. } => "accepted",
            DispatchOutcome::RateLimited { .. } => "rate_limited",
            DispatchOutcome::Failed { .. } => "failed",
            DispatchOutcome::NetworkError { .. } => "network_error",
            DispatchOutcome::Timeout { .. } => "timeout",
        }
    }
}

/// What a status look-up found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallStatus {
    pub ended: bool,
    pub end_reason: Option<String>,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
}

/// Default back-off when a 429 carries no usable Retry-After (the seed's "next cron run").
pub const DEFAULT_RETRY_AFTER_SECS: f64 = 60.0;
const MAX_ERROR_LEN: usize = 500;

/// Builds the request that places a call, by provider.
pub fn build_call_request(target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
    match target.provider.as_str() {
        "ultravox" => ultravox::build_call_request(target, call),
        "twilio" => twilio::build_call_request(target, call),
        "webhook" => generic::build_call_request(target, call),
        other => Err(format!("provider '{other}' is not supported by this version of pg_dialer")),
    }
}

/// Interprets the provider's answer to a call request.
pub fn interpret_call_response(provider: &str, result: Result<HttpResponse, TransportError>, secrets: &[String]) -> DispatchOutcome {
    let response = match result {
        Ok(r) => r,
        Err(TransportError::NotSent(e)) => return DispatchOutcome::NetworkError { error: scrub(&e, secrets) },
        Err(TransportError::Unknown(e)) => return DispatchOutcome::Timeout { error: scrub(&e, secrets) },
    };
    let rate_limited = response.status == 429 || (provider == "twilio" && twilio::is_rate_limited(&response));
    match response.status {
        200..=299 => DispatchOutcome::Accepted {
            provider_call_id: match provider {
                "twilio" => twilio::call_id_of(&response.body),
                "webhook" => generic::call_id_of(&response.body),
                _ => ultravox::call_id_of(&response.body),
            },
        },
        _ if rate_limited => DispatchOutcome::RateLimited {
            retry_after_secs: response
                .retry_after
                .as_deref()
                .and_then(parse_retry_after)
                .unwrap_or(DEFAULT_RETRY_AFTER_SECS),
        },
        status => DispatchOutcome::Failed {
            error: scrub(&format!("{provider} answered HTTP {status}: {}", error_detail(&response.body)), secrets),
        },
    }
}

pub fn build_status_request(provider: &str, creds: &Credentials, provider_call_id: &str) -> Result<HttpRequest, String> {
    match provider {
        "ultravox" => Ok(ultravox::build_status_request(creds, provider_call_id)),
        "twilio" => twilio::build_status_request(creds, provider_call_id),
        "webhook" => generic::build_status_request(creds, provider_call_id),
        other => Err(format!("provider '{other}' is not supported by this version of pg_dialer")),
    }
}

pub fn interpret_status_response(provider: &str, response: &HttpResponse) -> Option<CallStatus> {
    match provider {
        "ultravox" => ultravox::parse_status(response),
        "twilio" => twilio::parse_status(response),
        "webhook" => generic::parse_status(response),
        _ => None,
    }
}

/// Retry-After is either delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<f64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then_some(secs.min(86_400.0));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.signed_duration_since(chrono::Utc::now()).num_milliseconds() as f64 / 1000.0;
    Some(delta.clamp(0.0, 86_400.0))
}

/// A short, readable error detail from a provider's error body.
fn error_detail(body: &str) -> String {
    let detail = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        ["detail", "message", "error"].iter().find_map(|k| match v.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) if !other.is_null() => Some(other.to_string()),
            _ => None,
        })
    });
    let text = detail.unwrap_or_else(|| body.trim().to_string());
    truncate(&text, MAX_ERROR_LEN)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Removes every secret from a text that may reach a log, an error or a table.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .fold(text.to_string(), |acc, s| acc.replace(s.as_str(), "[redacted]"))
}

/// Deep merge: `overlay` wins, objects are merged key by key.
pub fn merge_json(base: &Value, overlay: &Value) -> Value {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out: Map<String, Value> = b.clone();
            for (k, v) in o {
                let merged = match out.get(k) {
                    Some(existing) => merge_json(existing, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, o) => o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(2.0));
        assert_eq!(parse_retry_after(" 1.5 "), Some(1.5));
        assert_eq!(parse_retry_after("-3"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0.0));
    }

    #[test]
    fn rate_limit_without_header_waits_default() {
        let r = HttpResponse { status: 429, retry_after: None, body: String::new() };
        assert_eq!(
            interpret_call_response("ultravox", Ok(r), &[]),
            DispatchOutcome::RateLimited { retry_after_secs: DEFAULT_RETRY_AFTER_SECS }
        );
    }

    #[test]
    fn errors_carry_detail_without_secrets() {
        let r = HttpResponse { status: 500, retry_after: None, body: r#"{"detail":"bad key sk-secret-123"}"#.into() };
        let out = interpret_call_response("ultravox", Ok(r), &["sk-secret-123".to_string()]);
        assert_eq!(out, DispatchOutcome::Failed { error: "ultravox answered HTTP 500: bad key [redacted]".into() });
    }

    #[test]
    fn transport_errors_split_by_whether_sent() {
        let not_sent = interpret_call_response("ultravox", Err(TransportError::NotSent("refused".into())), &[]);
        assert_eq!(not_sent.kind(), "network_error");
        let unknown = interpret_call_response("ultravox", Err(TransportError::Unknown("timed out".into())), &[]);
        assert_eq!(unknown.kind(), "timeout");
    }

    #[test]
    fn merge_is_deep_and_overlay_wins() {
        let base = json!({"a": 1, "m": {"x": 1, "y": 2}});
        let over = json!({"m": {"y": 3}, "b": 2});
        assert_eq!(merge_json(&base, &over), json!({"a": 1, "b": 2, "m": {"x": 1, "y": 3}}));
    }

    #[test]
    fn long_errors_are_truncated_on_char_boundary() {
        let s = "é".repeat(400);
        let t = truncate(&s, 501);
        assert!(t.ends_with('…'));
    }
}
