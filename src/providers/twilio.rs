//! Twilio Programmable Voice: `POST /2010-04-01/Accounts/{sid}/Calls.json`, form-encoded, HTTP
//! basic auth (account SID, auth token). The TwiML `Url` or `Twiml` comes from the agent mapping's
//! `request_template`; correlation fields ride on the `Url` / `StatusCallback` query strings,
//! since Twilio has no metadata field.

use super::{CallSpec, CallStatus, Credentials, HttpRequest, HttpResponse, Method, ProviderTarget};
use base64::Engine;
use serde_json::{json, Value};

pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

fn base_url(creds: &Credentials) -> &str {
    creds.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/')
}

fn account_sid(creds: &Credentials) -> Result<&str, String> {
    match creds.account_sid.as_deref() {
        Some(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()) => Ok(s),
        _ => Err("twilio credentials need an account_sid (letters and digits only)".into()),
    }
}

fn basic_auth(sid: &str, token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}")))
}

fn with_query(url: &str, pairs: &[(&str, String)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", ser.finish())
}

pub fn build_call_request(target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
    let sid = account_sid(&target.credentials)?;
    let from = target
        .from_number
        .as_deref()
        .ok_or("a twilio agent mapping needs from_number (the caller ID to dial from)")?;
    let template = target.request_template.as_object().ok_or("request_template must be a JSON object")?;
    let text = |k: &str| template.get(k).and_then(Value::as_str).map(str::to_string);
    let correlation = [
        ("batch_id", call.batch_id.to_string()),
        ("contact_id", call.contact_id.to_string()),
        ("idempotency_key", call.idempotency_key.clone()),
    ];
    let mut form: Vec<(String, String)> = vec![("To".into(), call.phone_number.clone()), ("From".into(), from.into())];
    match (text("Url"), text("Twiml")) {
        (Some(url), _) => form.push(("Url".into(), with_query(&url, &correlation))),
        (None, Some(twiml)) => form.push(("Twiml".into(), twiml)),
        (None, None) => return Err("a twilio agent mapping needs request_template.Url or request_template.Twiml".into()),
    }
    if let Some(cb) = text("StatusCallback") {
        form.push(("StatusCallback".into(), with_query(&cb, &correlation)));
        let events: Vec<String> = match template.get("StatusCallbackEvent") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => vec!["initiated".into(), "ringing".into(), "answered".into(), "completed".into()],
        };
        for e in events {
            form.push(("StatusCallbackEvent".into(), e));
        }
    }
    // Any other string or number field of the template is a Twilio parameter (MachineDetection, Timeout, Record...).
    for (k, v) in template {
        if ["Url", "Twiml", "StatusCallback", "StatusCallbackEvent", "To", "From"].contains(&k.as_str()) {
            continue;
        }
        match v {
            Value::String(s) => form.push((k.clone(), s.clone())),
            Value::Number(n) => form.push((k.clone(), n.to_string())),
            Value::Bool(b) => form.push((k.clone(), b.to_string())),
            _ => {}
        }
    }
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &form {
        ser.append_pair(k, v);
    }
    let url = format!("{}/2010-04-01/Accounts/{sid}/Calls.json", base_url(&target.credentials));
    let audit_form: serde_json::Map<String, Value> = form.iter().fold(serde_json::Map::new(), |mut m, (k, v)| {
        match m.get_mut(k) {
            Some(Value::Array(a)) => a.push(json!(v)),
            Some(existing) => *existing = json!([existing.clone(), v]),
            None => {
                m.insert(k.clone(), json!(v));
            }
        }
        m
    });
    Ok(HttpRequest {
        method: Method::Post,
        audit: json!({"method": "POST", "url": url, "form": audit_form}),
        url,
        headers: vec![
            ("Authorization".into(), basic_auth(sid, &target.credentials.api_key)),
            ("Content-Type".into(), "application/x-www-form-urlencoded".into()),
        ],
        body: Some(ser.finish()),
        secrets: vec![target.credentials.api_key.clone()],
    })
}

pub fn call_id_of(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    v.get("sid").and_then(Value::as_str).map(str::to_string)
}

/// Twilio reports its own rate limit as HTTP 429 or as error code 20429.
pub fn is_rate_limited(response: &HttpResponse) -> bool {
    response.status == 429
        || serde_json::from_str::<Value>(&response.body)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_i64))
            == Some(20429)
}

pub fn build_status_request(creds: &Credentials, call_sid: &str) -> Result<HttpRequest, String> {
    let sid = account_sid(creds)?;
    let id: String = call_sid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let url = format!("{}/2010-04-01/Accounts/{sid}/Calls/{id}.json", base_url(creds));
    Ok(HttpRequest {
        method: Method::Get,
        audit: json!({"method": "GET", "url": url}),
        url,
        headers: vec![("Authorization".into(), basic_auth(sid, &creds.api_key))],
        body: None,
        secrets: vec![creds.api_key.clone()],
    })
}

pub const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "no-answer", "failed", "canceled"];

pub fn parse_status(response: &HttpResponse) -> Option<CallStatus> {
    if response.status == 404 {
        return Some(CallStatus { ended: true, end_reason: Some("not_found".into()), ..Default::default() });
    }
    if !(200..300).contains(&response.status) {
        return None;
    }
    let v: Value = serde_json::from_str(&response.body).ok()?;
    let status = v.get("status").and_then(Value::as_str)?.to_string();
    let ended = FINAL_STATUSES.contains(&status.as_str());
    Some(CallStatus {
        ended,
        end_reason: ended.then(|| status.clone()),
        answered_at: None,
        ended_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Credentials;

    fn target(template: Value) -> ProviderTarget {
        ProviderTarget {
            provider: "twilio".into(),
            external_agent_id: "flow-1".into(),
            agent_name: None,
            from_number: Some("+15550009999".into()),
            request_template: template,
            credentials: Credentials { api_key: "tok-secret".into(), base_url: Some("http://127.0.0.1:9".into()), account_sid: Some("AC123".into()) },
        }
    }

    fn call() -> CallSpec {
        CallSpec {
            call_id: 1,
            batch_id: 2,
            contact_id: 3,
            phone_number: "+15550001111".into(),
            name: None,
            variables: json!({}),
            lead_ref: None,
            idempotency_key: "k-1".into(),
            slot_at_ms: 0.0,
            spacing_ms: 0.0,
            agent_mapping_id: 1,
            metadata: json!({}),
            credential_key: None,
            credential_gap_ms: 0.0,
            global_gap_ms: 0.0,
        }
    }

    #[test]
    fn form_request_with_basic_auth_and_callbacks() {
        let t = target(json!({"Url": "https://example.com/twiml", "StatusCallback": "https://example.com/status",
                              "MachineDetection": "Enable", "StatusCallbackEvent": ["answered", "completed"]}));
        let req = build_call_request(&t, &call()).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/2010-04-01/Accounts/AC123/Calls.json");
        let auth = req.headers.iter().find(|(k, _)| k == "Authorization").unwrap();
        assert_eq!(auth.1, format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("AC123:tok-secret")));
        let pairs: Vec<(String, String)> = form_urlencoded::parse(req.body.as_deref().unwrap().as_bytes()).into_owned().collect();
        let get = |k: &str| pairs.iter().filter(|(a, _)| a == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        assert_eq!(get("To"), vec!["+15550001111"]);
        assert_eq!(get("From"), vec!["+15550009999"]);
        assert_eq!(get("Url"), vec!["https://example.com/twiml?batch_id=2&contact_id=3&idempotency_key=k-1"]);
        assert_eq!(get("StatusCallbackEvent"), vec!["answered", "completed"]);
        assert_eq!(get("MachineDetection"), vec!["Enable"]);
        assert!(!req.audit.to_string().contains("tok-secret"));
    }

    #[test]
    fn needs_twiml_and_from_number() {
        assert!(build_call_request(&target(json!({})), &call()).unwrap_err().contains("Url"));
        let mut t = target(json!({"Twiml": "<Response/>"}));
        t.from_number = None;
        assert!(build_call_request(&t, &call()).unwrap_err().contains("from_number"));
    }

    #[test]
    fn rate_limit_by_code_and_final_statuses() {
        assert!(is_rate_limited(&HttpResponse { status: 400, retry_after: None, body: r#"{"code":20429}"#.into() }));
        let s = parse_status(&HttpResponse { status: 200, retry_after: None, body: r#"{"status":"no-answer"}"#.into() }).unwrap();
        assert!(s.ended);
        assert_eq!(s.end_reason.as_deref(), Some("no-answer"));
        let s = parse_status(&HttpResponse { status: 200, retry_after: None, body: r#"{"status":"ringing"}"#.into() }).unwrap();
        assert!(!s.ended);
    }
}
