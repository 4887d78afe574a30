//! A generic HTTP "AI caller" (the lead seed's VoiceAPI): `POST {base_url}` with a bearer key and
//! a JSON body; `GET {base_url}/{id}` for status.

use super::{merge_json, CallSpec, CallStatus, Credentials, HttpRequest, HttpResponse, Method, ProviderTarget};
use serde_json::{json, Value};

fn base_url(creds: &Credentials) -> Result<&str, String> {
    creds
        .base_url
        .as_deref()
        .map(|u| u.trim_end_matches('/'))
        .ok_or_else(|| "webhook provider credentials need base_url (the AI caller's calls endpoint)".to_string())
}

pub fn build_call_request(target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
    if !target.request_template.is_object() {
        return Err("request_template must be a JSON object".into());
    }
    let url = base_url(&target.credentials)?.to_string();
    let metadata = merge_json(
        &call.metadata,
        &json!({
            "batch_id": call.batch_id.to_string(),
            "contact_id": call.contact_id.to_string(),
            "idempotency_key": call.idempotency_key,
        }),
    );
    let ours = json!({
        "phone_number": call.phone_number,
        "lead_ref": call.lead_ref,
        "agent_id": target.external_agent_id,
        "variables": call.variables,
        "metadata": metadata,
    });
    let body = merge_json(&target.request_template, &ours);
    let text = serde_json::to_string(&body).map_err(|e| e.to_string())?;
    Ok(HttpRequest {
        method: Method::Post,
        audit: json!({"method": "POST", "url": url, "body": body}),
        url,
        headers: vec![
            ("Authorization".into(), format!("Bearer {}", target.credentials.api_key)),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: Some(text),
        secrets: vec![target.credentials.api_key.clone()],
    })
}

pub fn call_id_of(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    ["id", "call_id", "callId"].iter().find_map(|k| match v.get(*k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

pub fn build_status_request(creds: &Credentials, call_id: &str) -> Result<HttpRequest, String> {
    let id: String = call_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    let url = format!("{}/{}", base_url(creds)?, id);
    Ok(HttpRequest {
        method: Method::Get,
        audit: json!({"method": "GET", "url": url}),
        url,
        headers: vec![("Authorization".into(), format!("Bearer {}", creds.api_key))],
        body: None,
        secrets: vec![creds.api_key.clone()],
    })
}

pub fn parse_status(response: &HttpResponse) -> Option<CallStatus> {
    if response.status == 404 {
        return Some(CallStatus { ended: true, end_reason: Some("not_found".into()), ..Default::default() });
    }
    if !(200..300).contains(&response.status) {
        return None;
    }
    let v: Value = serde_json::from_str(&response.body).ok()?;
    let status = v.get("status").and_then(Value::as_str)?.to_string();
    let ended = matches!(status.as_str(), "completed" | "failed" | "canceled" | "cancelled" | "ended");
    let reason = v.get("end_reason").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| status.clone());
    Some(CallStatus { ended, end_reason: ended.then_some(reason), answered_at: None, ended_at: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_json_request_and_id() {
        let t = ProviderTarget {
            provider: "webhook".into(),
            external_agent_id: "agent-7".into(),
            agent_name: None,
            from_number: None,
            request_template: json!({"voice": "warm"}),
            credentials: Credentials { api_key: "bk".into(), base_url: Some("http://127.0.0.1:9/v1/calls/".into()), account_sid: None },
        };
        let call = CallSpec {
            call_id: 1, batch_id: 2, contact_id: 3, phone_number: "+15550001111".into(), name: None,
            variables: json!({"x": 1}), lead_ref: Some("L1".into()), idempotency_key: "k".into(),
            slot_at_ms: 0.0, spacing_ms: 0.0, agent_mapping_id: 1, metadata: json!({}),
            credential_key: None, credential_gap_ms: 0.0, global_gap_ms: 0.0,
        };
        let req = build_call_request(&t, &call).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/v1/calls");
        assert!(req.headers.contains(&("Authorization".into(), "Bearer bk".into())));
        let body: Value = serde_json::from_str(req.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["phone_number"], "+15550001111");
        assert_eq!(body["lead_ref"], "L1");
        assert_eq!(body["variables"]["x"], 1);
        assert_eq!(body["voice"], "warm");
        assert_eq!(body["metadata"]["idempotency_key"], "k");
        assert_eq!(call_id_of(r#"{"id":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(call_id_of(r#"{"call_id":42}"#).as_deref(), Some("42"));
        let s = parse_status(&HttpResponse { status: 200, retry_after: None, body: r#"{"status":"failed","end_reason":"no_answer"}"#.into() }).unwrap();
        assert_eq!((s.ended, s.end_reason.as_deref()), (true, Some("no_answer")));
    }

    #[test]
    fn needs_base_url() {
        let creds = Credentials { api_key: "k".into(), base_url: None, account_sid: None };
        assert!(build_status_request(&creds, "x").unwrap_err().contains("base_url"));
    }
}
