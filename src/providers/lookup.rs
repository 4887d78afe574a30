//! Finding an attempt whose answer was lost (timeout, crash mid-request) at the provider, by its
//! idempotency key, so it is adopted instead of redialed. Pure: no pgrx.

use super::{Credentials, HttpRequest, HttpResponse};
use serde_json::Value;

/// An attempt in doubt.
#[derive(Debug, Clone)]
pub struct InDoubt {
    pub call_id: i64,
    pub provider: String,
    pub idempotency_key: String,
    pub phone_number: String,
    /// When the attempt was claimed (RFC 3339, UTC).
    pub claimed_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LookupResult {
    /// The provider has the call: adopt it.
    Found { provider_call_id: Option<String> },
    /// The provider answered and has no such call: safe to dial again.
    NotFound,
    /// The provider could not be asked (error, unreadable answer): stay in doubt.
    Unknown,
}

pub(crate) fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn build_request(attempt: &InDoubt, creds: &Credentials) -> Result<HttpRequest, String> {
    super::adapter(&attempt.provider)
        .ok_or_else(|| format!("provider '{}' cannot be asked about lost attempts", attempt.provider))?
        .lookup_request(attempt, creds)
}

pub fn parse(attempt: &InDoubt, response: &HttpResponse) -> LookupResult {
    match super::adapter(&attempt.provider) {
        Some(a) => a.parse_lookup(attempt, response),
        None => LookupResult::Unknown,
    }
}

/// A list answer (`list_pointer` to an array of calls) searched for the call whose
/// `metadata.idempotency_key` is the attempt's; `id_pointer` is where a call's id is.
pub fn by_metadata_key(attempt: &InDoubt, response: &HttpResponse, list_pointer: &str, id_pointer: &str) -> LookupResult {
    let Some(v) = super::ok_json(response) else { return LookupResult::Unknown };
    let Some(Value::Array(calls)) = v.pointer(list_pointer) else { return LookupResult::Unknown };
    let found =
        calls.iter().find(|c| c.pointer("/metadata/idempotency_key").and_then(Value::as_str) == Some(attempt.idempotency_key.as_str()));
    match found {
        Some(c) => LookupResult::Found { provider_call_id: c.pointer(id_pointer).and_then(id_text) },
        None => LookupResult::NotFound,
    }
}

/// A call id given as a string or a number.
pub fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
