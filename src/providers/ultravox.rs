//! Ultravox: `POST {base_url}/api/calls` with `X-API-Key`; `GET /api/calls/{id}` for status.

use super::{merge_json, CallSpec, CallStatus, Credentials, HttpRequest, HttpResponse, Method, ProviderTarget};
use serde_json::{json, Value};

pub const DEFAULT_BASE_URL: &str = "https://api.ultravox.ai";

fn base_url(creds: &Credentials) -> &str {
    creds.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/')
}

pub fn build_call_request(target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
    if !target.request_template.is_object() {
        return Err("request_template must be a JSON object".into());
    }
    let medium = match &target.from_number {
        Some(from) => json!({"telnyx": {"outgoing": {"to": call.phone_number, "from": from}}}),
        None => json!({"telnyx": {"destinationPhoneNumber": call.phone_number}}),
    };
    let mut context = match &call.variables {
        Value::Object(map) => Value::Object(map.clone()),
        _ => json!({}),
    };
    if let (Some(name), Some(map)) = (&call.name, context.as_object_mut()) {
        map.entry("name").or_insert_with(|| Value::String(name.clone()));
    }
    // The caller's metadata goes through; our correlation fields cannot be overridden by it.
    let mut metadata = merge_json(
        &call.metadata,
        &json!({
            "batch_id": call.batch_id.to_string(),
            "contact_id": call.contact_id.to_string(),
            "idempotency_key": call.idempotency_key,
        }),
    );
    if let (Some(lead), Some(map)) = (&call.lead_ref, metadata.as_object_mut()) {
        map.insert("lead_ref".into(), Value::String(lead.clone()));
    }
    let ours = json!({
        "agentId": target.external_agent_id,
        "medium": medium,
        "firstSpeaker": "FIRST_SPEAKER_AGENT",
        "metadata": metadata,
        "templateContext": context,
    });
    // The template supplies defaults (voice, prompt, maxDuration...); the per-call fields win.
    let body = merge_json(&target.request_template, &ours);
    let url = format!("{}/api/calls", base_url(&target.credentials));
    let body_text = serde_json::to_string(&body).map_err(|e| e.to_string())?;
    Ok(HttpRequest {
        method: Method::Post,
        audit: json!({"method": "POST", "url": url, "body": body}),
        url,
        headers: vec![
            ("X-API-Key".into(), target.credentials.api_key.clone()),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: Some(body_text),
        secrets: vec![target.credentials.api_key.clone()],
    })
}

pub fn call_id_of(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    v.get("callId").and_then(Value::as_str).map(str::to_string)
}

pub fn build_status_request(creds: &Credentials, provider_call_id: &str) -> HttpRequest {
    let id: String = provider_call_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let url = format!("{}/api/calls/{}", base_url(creds), id);
    HttpRequest {
        method: Method::Get,
        audit: json!({"method": "GET", "url": url}),
        url,
        headers: vec![("X-API-Key".into(), creds.api_key.clone())],
        body: None,
        secrets: vec![creds.api_key.clone()],
    }
}

/// `ended` set → the call is over; 404 → the provider no longer knows it (treated as ended).
pub fn parse_status(response: &HttpResponse) -> Option<CallStatus> {
    if response.status == 404 {
        return Some(CallStatus { ended: true, end_reason: Some("not_found".into()), ..Default::default() });
    }
    if !(200..300).contains(&response.status) {
        return None;
    }
    let v: Value = serde_json::from_str(&response.body).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let ended_at = text("ended");
    Some(CallStatus {
        ended: ended_at.is_some(),
        end_reason: text("endReason"),
        answered_at: text("joined"),
        ended_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(from: Option<&str>, template: Value) -> ProviderTarget {
        ProviderTarget {
            provider: "ultravox".into(),
            external_agent_id: "agent-1".into(),
            agent_name: Some("Ava".into()),
            from_number: from.map(str::to_string),
            request_template: template,
            credentials: Credentials { api_key: "k-123".into(), base_url: Some("http://127.0.0.1:9/".into()), account_sid: None },
        }
    }

    fn call() -> CallSpec {
        CallSpec {
            call_id: 9,
            batch_id: 3,
            contact_id: 42,
            phone_number: "+15550001111".into(),
            name: Some("Ann".into()),
            variables: json!({"plan": "gold"}),
            lead_ref: None,
            idempotency_key: "pgd-3-42-1".into(),
            slot_at_ms: 0.0,
            spacing_ms: 0.0,
            agent_mapping_id: 1,
            metadata: json!({"campaign": "Q4", "contact_id": "spoofed"}),
            credential_key: None,
            credential_gap_ms: 0.0,
            global_gap_ms: 0.0,
        }
    }

    #[test]
    fn builds_the_seed_request() {
        let req = build_call_request(&target(None, json!({})), &call()).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/api/calls");
        assert_eq!(req.method, Method::Post);
        assert!(req.headers.contains(&("X-API-Key".to_string(), "k-123".to_string())));
        let body: Value = serde_json::from_str(req.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["medium"]["telnyx"]["destinationPhoneNumber"], "+15550001111");
        assert_eq!(body["firstSpeaker"], "FIRST_SPEAKER_AGENT");
        assert_eq!(body["metadata"]["contact_id"], "42");
        assert_eq!(body["metadata"]["batch_id"], "3");
        assert_eq!(body["metadata"]["idempotency_key"], "pgd-3-42-1");
        assert_eq!(body["metadata"]["campaign"], "Q4", "caller metadata passes through");
        assert_eq!(body["templateContext"], json!({"plan": "gold", "name": "Ann"}));
        assert!(!req.audit.to_string().contains("k-123"), "audit must not hold the key");
    }

    #[test]
    fn from_number_uses_outgoing_and_template_merges() {
        let t = target(Some("+15559990000"), json!({"voice": "Mark", "metadata": {"campaign": "x"}, "firstSpeaker": "FIRST_SPEAKER_USER"}));
        let req = build_call_request(&t, &call()).unwrap();
        let body: Value = serde_json::from_str(req.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["medium"]["telnyx"]["outgoing"], json!({"to": "+15550001111", "from": "+15559990000"}));
        assert_eq!(body["voice"], "Mark");
        assert_eq!(body["metadata"]["campaign"], "Q4", "the call's own metadata wins over the template's");
        assert_eq!(body["metadata"]["contact_id"], "42");
        assert_eq!(body["firstSpeaker"], "FIRST_SPEAKER_AGENT");
    }

    #[test]
    fn status_parsing() {
        let r = HttpResponse { status: 200, retry_after: None, body: r#"{"callId":"a","joined":"2026-01-01T00:00:00Z","ended":null}"#.into() };
        let s = parse_status(&r).unwrap();
        assert!(!s.ended);
        let r = HttpResponse { status: 200, retry_after: None, body: r#"{"ended":"2026-01-01T00:01:00Z","endReason":"hangup"}"#.into() };
        let s = parse_status(&r).unwrap();
        assert!(s.ended);
        assert_eq!(s.end_reason.as_deref(), Some("hangup"));
        assert!(parse_status(&HttpResponse { status: 500, retry_after: None, body: String::new() }).is_none());
        assert!(parse_status(&HttpResponse { status: 200, retry_after: None, body: "not json".into() }).is_none());
    }

    #[test]
    fn status_url_cannot_be_steered_by_the_id() {
        let creds = Credentials { api_key: "k".into(), base_url: None, account_sid: None };
        let r = build_status_request(&creds, "../../admin?x=1");
        assert_eq!(r.url, "https://api.ultravox.ai/api/calls/adminx1");
    }
}
