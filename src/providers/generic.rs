//! A generic HTTP "AI caller" (the lead seed's VoiceAPI): `POST {base_url}` with a bearer key and
//! a JSON body; `GET {base_url}/{id}` for status; `GET {base_url}?idempotency_key=K` to find a
//! lost attempt.
//!
//! The body is either pg_dialer's default (`phone_number`, `lead_ref`, `agent_id`, `variables`,
//! `metadata`, merged over the template) or, when the template has `"body"`, exactly the body
//! the mapping describes, with placeholders: a string `"{{variables}}"` becomes the value, and
//! `"Hi {{name}}"` has it spliced in. `"call_id_pointer": "/data/id"` says where the call id is
//! in the answer. So an AI caller we have no adapter for can be used without code.

use super::merge_json;
use super::prelude::*;

pub struct Webhook;

/// The placeholders a described body may use.
pub const PLACEHOLDERS: [&str; 10] =
    ["phone_number", "from_number", "name", "variables", "metadata", "idempotency_key", "agent_id", "lead_ref", "batch_id", "contact_id"];

fn base_url(creds: &Credentials) -> Result<&str, String> {
    creds
        .base_url
        .as_deref()
        .map(|u| u.trim_end_matches('/'))
        .ok_or_else(|| "webhook provider credentials need base_url (the AI caller's calls endpoint)".to_string())
}

const AUTH: KeyHeader = KeyHeader::BEARER;

/// Every `{{name}}` in a string.
fn placeholders_in(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        let Some(j) = rest[i + 2..].find("}}") else { break };
        out.push(rest[i + 2..i + 2 + j].trim());
        rest = &rest[i + 2 + j + 2..];
    }
    out
}

fn check_body(v: &Value, at: &str) -> Result<(), String> {
    match v {
        Value::String(s) => match placeholders_in(s).into_iter().find(|p| !PLACEHOLDERS.contains(p)) {
            Some(p) => Err(format!("{at}: unknown placeholder {{{{{p}}}}} (use one of {})", PLACEHOLDERS.join(", "))),
            None => Ok(()),
        },
        Value::Array(a) => a.iter().enumerate().try_for_each(|(i, x)| check_body(x, &format!("{at}[{i}]"))),
        Value::Object(m) => m.iter().try_for_each(|(k, x)| check_body(x, &format!("{at}.{k}"))),
        _ => Ok(()),
    }
}

fn fill(v: &Value, values: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) => {
            let t = s.trim();
            if let Some(name) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")).filter(|n| !n.contains("{{")) {
                return values.get(name.trim()).cloned().unwrap_or(Value::Null);
            }
            let mut out = s.clone();
            for p in placeholders_in(s) {
                let text = match values.get(p) {
                    Some(Value::String(x)) => x.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                out = out.replace(&format!("{{{{{p}}}}}"), &text);
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, values)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), fill(x, values))).collect()),
        other => other.clone(),
    }
}

fn check_template(mapping: &Mapping) -> Result<(), String> {
    let template = mapping.template()?;
    if let Some(body) = template.get("body") {
        if !body.is_object() {
            return Err("request_template.body must be a JSON object (the request body, with {{placeholders}})".into());
        }
        check_body(body, "request_template.body")?;
        for k in template.keys() {
            if !["body", "call_id_pointer"].contains(&k.as_str()) {
                return Err(format!("request_template.{k}: a described body takes only \"body\" and \"call_id_pointer\""));
            }
        }
    }
    match template.get("call_id_pointer") {
        None => Ok(()),
        Some(Value::String(p)) if p.starts_with('/') => Ok(()),
        Some(_) => Err("request_template.call_id_pointer must be a JSON pointer such as \"/data/id\"".into()),
    }
}

/// The call id at a JSON pointer of an answer.
pub fn call_id_at(body: &str, pointer: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    v.pointer(pointer).and_then(super::lookup::id_text)
}

impl Adapter for Webhook {
    /// No official host (the credentials must name the endpoint) and the call id in any of
    /// several fields: the AI caller writes its own.
    fn json_api(&self) -> Option<&'static JsonApi> {
        None
    }

    fn check_mapping(&self, mapping: &Mapping) -> Result<(), String> {
        check_template(mapping)
    }

    fn call_request(&self, target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
        let m = &target.mapping;
        check_template(m)?;
        let template = m.template()?;
        let url = base_url(&target.credentials)?.to_string();
        let mut metadata = match &call.metadata {
            Value::Object(o) => o.clone(),
            _ => Map::new(),
        };
        // Our correlation fields win over the caller's; the caller's non-strings stay as given.
        for (k, v) in correlation_metadata(call) {
            if ["batch_id", "contact_id", "idempotency_key", "lead_ref"].contains(&k.as_str()) {
                metadata.insert(k, v);
            }
        }
        let body = match template.get("body") {
            Some(described) => {
                let values: Map<String, Value> = [
                    ("phone_number", json!(call.phone_number)),
                    ("from_number", json!(m.from_number)),
                    ("name", json!(call.name)),
                    ("variables", Value::Object(template_variables(call))),
                    ("metadata", Value::Object(metadata)),
                    ("idempotency_key", json!(call.idempotency_key)),
                    ("agent_id", json!(m.agent_id())),
                    ("lead_ref", json!(call.lead_ref)),
                    ("batch_id", json!(call.batch_id.to_string())),
                    ("contact_id", json!(call.contact_id.to_string())),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                fill(described, &values)
            }
            None => {
                let mut t = Value::Object(template.clone());
                if let Some(o) = t.as_object_mut() {
                    o.remove("call_id_pointer");
                }
                let ours = json!({
                    "phone_number": call.phone_number,
                    "lead_ref": call.lead_ref,
                    "agent_id": m.agent_id(),
                    "variables": call.variables,
                    "metadata": metadata,
                });
                merge_json(&t, &ours)
            }
        };
        let mut req = AUTH.request(Method::Post, url, &target.credentials, Some(&body))?;
        req.call_id_pointer = template.get("call_id_pointer").and_then(Value::as_str).map(str::to_string);
        Ok(req)
    }

    fn call_id(&self, body: &str) -> Option<String> {
        let v: Value = serde_json::from_str(body).ok()?;
        ["id", "call_id", "callId"].iter().find_map(|k| v.get(*k).and_then(super::lookup::id_text))
    }

    fn status_request(&self, creds: &Credentials, call_id: &str) -> Result<HttpRequest, String> {
        let url = format!("{}/{}", base_url(creds)?, path_segment(call_id));
        AUTH.request(Method::Get, url, creds, None)
    }

    /// `status` completed | failed | canceled | cancelled | ended → over; `end_reason` passes
    /// through as the AI caller names it (pg_dialer's own words are recommended: see outcome).
    fn status_of(&self, v: &Value) -> Option<CallStatus> {
        let status = v.get("status").and_then(Value::as_str)?.to_string();
        let ended = matches!(status.as_str(), "completed" | "failed" | "canceled" | "cancelled" | "ended");
        let reason = v.get("end_reason").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| status.clone());
        Some(CallStatus { ended, end_reason: ended.then_some(reason), answered_at: None, ended_at: None })
    }

    fn lookup_request(&self, attempt: &InDoubt, creds: &Credentials) -> Result<HttpRequest, String> {
        let url = format!("{}?idempotency_key={}", base_url(creds)?, super::lookup::enc(&attempt.idempotency_key));
        AUTH.request(Method::Get, url, creds, None)
    }

    fn lookup_by_metadata(&self) -> Option<(&'static str, &'static str)> {
        Some(("/calls", "/id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::{body, call, mapping, target};
    use crate::providers::HttpResponse;

    #[test]
    fn default_body_and_bearer() {
        let mut t = target("webhook", mapping(Some("agent-7"), None, json!({"voice": "warm"})));
        t.credentials.base_url = Some("http://127.0.0.1:9/voiceapi/v1/calls/".into());
        let req = Webhook.call_request(&t, &call()).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/voiceapi/v1/calls");
        assert!(req.headers.contains(&("Authorization".into(), "Bearer k-secret-123".into())));
        let b = body(&req);
        assert_eq!(b["phone_number"], "+15550001111");
        assert_eq!(b["lead_ref"], "L-7");
        assert_eq!(b["variables"]["plan"], "gold");
        assert_eq!(b["voice"], "warm");
        assert_eq!(b["metadata"]["idempotency_key"], "pgd-3-42-1");
        assert_eq!(b["metadata"]["contact_id"], "42");
        assert_eq!(Webhook.call_id(r#"{"id":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(Webhook.call_id(r#"{"call_id":42}"#).as_deref(), Some("42"));
        let s = Webhook
            .parse_status(&HttpResponse { status: 200, retry_after: None, body: r#"{"status":"failed","end_reason":"no-answer"}"#.into() })
            .unwrap();
        assert_eq!((s.ended, s.end_reason.as_deref()), (true, Some("no-answer")));
    }

    #[test]
    fn described_body_with_placeholders() {
        let template = json!({
            "body": {"to": "{{phone_number}}", "caller_id": "{{from_number}}", "ctx": "{{variables}}",
                     "greeting": "Hello {{name}}, ref {{lead_ref}}", "ref": {"key": "{{idempotency_key}}"}, "fixed": 3},
            "call_id_pointer": "/data/uuid"
        });
        let t = target("webhook", mapping(Some("a1"), Some("+15559990000"), template));
        let req = Webhook.call_request(&t, &call()).unwrap();
        assert_eq!(
            body(&req),
            json!({"to": "+15550001111", "caller_id": "+15559990000", "ctx": {"plan": "gold", "visits": 3, "name": "Ann"},
                   "greeting": "Hello Ann, ref L-7", "ref": {"key": "pgd-3-42-1"}, "fixed": 3})
        );
        assert_eq!(req.call_id_pointer.as_deref(), Some("/data/uuid"));
    }

    #[test]
    fn described_body_is_checked() {
        let e = |t: Value| Webhook.check_mapping(&mapping(Some("a"), None, t)).unwrap_err();
        assert!(e(json!({"body": {"to": "{{phone}}"}})).contains("unknown placeholder {{phone}}"));
        assert!(e(json!({"body": [], "call_id_pointer": "/id"})).contains("must be a JSON object"));
        assert!(e(json!({"body": {}, "voice": "x"})).contains("takes only"));
        assert!(e(json!({"call_id_pointer": "id"})).contains("JSON pointer"));
        assert!(Webhook.check_mapping(&mapping(None, None, json!({}))).is_ok());
    }

    #[test]
    fn needs_base_url() {
        let creds = Credentials { api_key: "k".into(), base_url: None, account_sid: None };
        assert!(Webhook.status_request(&creds, "x").unwrap_err().contains("base_url"));
    }
}
