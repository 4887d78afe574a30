//! Finding an attempt whose answer was lost (timeout, crash mid-request) at the provider, by its
//! idempotency key, so it is adopted instead of redialed. Pure: no pgrx.

use super::{Credentials, HttpRequest, HttpResponse, Method};
use base64::Engine;
use serde_json::{json, Value};

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

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn build_request(attempt: &InDoubt, creds: &Credentials) -> Result<HttpRequest, String> {
    let (url, headers) = match attempt.provider.as_str() {
        "ultravox" => {
            let base = creds.base_url.as_deref().unwrap_or(super::ultravox::DEFAULT_BASE_URL).trim_end_matches('/');
            (
                format!("{base}/api/calls?metadata.idempotency_key={}&pageSize=10", enc(&attempt.idempotency_key)),
                vec![("X-API-Key".to_string(), creds.api_key.clone())],
            )
        }
        "twilio" => {
            let base = creds.base_url.as_deref().unwrap_or(super::twilio::DEFAULT_BASE_URL).trim_end_matches('/');
            let sid = creds.account_sid.as_deref().filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric())).ok_or("twilio credentials need account_sid")?;
            let day = attempt.claimed_at.get(..10).unwrap_or("1970-01-01");
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{}", creds.api_key));
            (
                format!("{base}/2010-04-01/Accounts/{sid}/Calls.json?To={}&StartTime%3E={}", enc(&attempt.phone_number), enc(day)),
                vec![("Authorization".to_string(), format!("Basic {auth}"))],
            )
        }
        "webhook" => {
            let base = creds.base_url.as_deref().ok_or("webhook provider credentials need base_url")?.trim_end_matches('/');
            (
                format!("{base}?idempotency_key={}", enc(&attempt.idempotency_key)),
                vec![("Authorization".to_string(), format!("Bearer {}", creds.api_key))],
            )
        }
        other => return Err(format!("provider '{other}' cannot be asked about lost attempts")),
    };
    Ok(HttpRequest {
        method: Method::Get,
        audit: json!({"method": "GET", "url": url}),
        url,
        headers,
        body: None,
        secrets: vec![creds.api_key.clone()],
    })
}

pub fn parse(attempt: &InDoubt, response: &HttpResponse) -> LookupResult {
    if !(200..300).contains(&response.status) {
        return LookupResult::Unknown;
    }
    let Ok(v) = serde_json::from_str::<Value>(&response.body) else { return LookupResult::Unknown };
    let list = match attempt.provider.as_str() {
        "ultravox" => v.get("results"),
        _ => v.get("calls"),
    };
    let Some(Value::Array(calls)) = list else { return LookupResult::Unknown };
    let key_of = |c: &Value| c.get("metadata").and_then(|m| m.get("idempotency_key")).and_then(Value::as_str).map(str::to_string);
    let id_of = |c: &Value| {
        ["callId", "sid", "id"].iter().find_map(|k| c.get(*k).and_then(Value::as_str)).map(str::to_string)
    };
    let found = match attempt.provider.as_str() {
        // Twilio keeps no metadata: any call to this number since the attempt is taken as it,
        // which may adopt a stranger's call but never dials a person twice.
        "twilio" => calls
            .iter()
            .find(|c| key_of(c).map(|k| k == attempt.idempotency_key).unwrap_or(true)),
        _ => calls.iter().find(|c| key_of(c).as_deref() == Some(attempt.idempotency_key.as_str())),
    };
    match found {
        Some(c) => LookupResult::Found { provider_call_id: id_of(c) },
        None => LookupResult::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(provider: &str) -> InDoubt {
        InDoubt {
            call_id: 1,
            provider: provider.into(),
            idempotency_key: "pgd-1-1-abc".into(),
            phone_number: "+15550001111".into(),
            claimed_at: "2026-11-21T10:00:00Z".into(),
        }
    }
    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    #[test]
    fn ultravox_found_not_found_unknown() {
        let creds = Credentials { api_key: "k".into(), base_url: Some("http://h".into()), account_sid: None };
        let req = build_request(&attempt("ultravox"), &creds).unwrap();
        assert_eq!(req.url, "http://h/api/calls?metadata.idempotency_key=pgd-1-1-abc&pageSize=10");
        let a = attempt("ultravox");
        assert_eq!(
            parse(&a, &ok(r#"{"results":[{"callId":"c9","metadata":{"idempotency_key":"pgd-1-1-abc"}}]}"#)),
            LookupResult::Found { provider_call_id: Some("c9".into()) }
        );
        assert_eq!(parse(&a, &ok(r#"{"results":[{"callId":"c8","metadata":{"idempotency_key":"other"}}]}"#)), LookupResult::NotFound);
        assert_eq!(parse(&a, &ok(r#"{"results":[]}"#)), LookupResult::NotFound);
        assert_eq!(parse(&a, &ok("<html>")), LookupResult::Unknown);
        assert_eq!(parse(&a, &HttpResponse { status: 503, retry_after: None, body: String::new() }), LookupResult::Unknown);
    }

    #[test]
    fn twilio_adopts_any_call_to_the_number() {
        let a = attempt("twilio");
        assert_eq!(parse(&a, &ok(r#"{"calls":[{"sid":"CA1"}]}"#)), LookupResult::Found { provider_call_id: Some("CA1".into()) });
        assert_eq!(parse(&a, &ok(r#"{"calls":[]}"#)), LookupResult::NotFound);
        let creds = Credentials { api_key: "k".into(), base_url: Some("http://h".into()), account_sid: Some("AC1".into()) };
        let req = build_request(&a, &creds).unwrap();
        assert_eq!(req.url, "http://h/2010-04-01/Accounts/AC1/Calls.json?To=%2B15550001111&StartTime%3E=2026-11-21");
    }
}
