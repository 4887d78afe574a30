//! Retell AI, to its published OpenAPI description: `POST {base}/v2/create-phone-call` with
//! `Authorization: Bearer`: `from_number`, `to_number` (E.164), `override_agent_id` (the
//! mapping's agent, when given), `retell_llm_dynamic_variables` (string values) and `metadata`.
//! `GET /v2/get-call/{call_id}` for status; `POST /v2/list-calls` filtered by metadata to find a
//! lost attempt.

use super::prelude::*;
const API: JsonApi = JsonApi {
    default_base_url: "https://api.retellai.com",
    auth: KeyHeader::BEARER,
    call_id_field: "call_id",
    status_path: "/v2/get-call",
    lookup_by_metadata: Some(("", "/call_id")),
};

/// Fields of create-phone-call a template may set (the spec test checks them).
pub const CREATE_CALL_FIELDS: TemplateFields = &[
    (Kind::Integer, &["override_agent_version"]),
    (Kind::Boolean, &["ignore_e164_validation"]),
    (Kind::Object, &["agent_override", "metadata", "retell_llm_dynamic_variables", "custom_sip_headers"]),
];
const OURS: &[&str] = &["from_number", "to_number", "override_agent_id"];

pub struct Retell;

fn ms_to_rfc3339(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_i64).and_then(chrono::DateTime::from_timestamp_millis).map(|d| d.to_rfc3339())
}

impl Adapter for Retell {
    fn json_api(&self) -> Option<&'static JsonApi> {
        Some(&API)
    }

    fn check_mapping(&self, mapping: &Mapping) -> Result<(), String> {
        need_from_number("Retell", mapping)?;
        check_fields("Retell", "Retell's create-phone-call", mapping.template()?, CREATE_CALL_FIELDS, OURS)
    }

    fn call_request(&self, target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
        self.check_mapping(&target.mapping)?;
        let m = &target.mapping;
        let mut body = m.template()?.clone();
        body.insert("from_number".into(), json!(need_from_number("Retell", m)?));
        body.insert("to_number".into(), json!(call.phone_number));
        if let Some(agent) = m.agent_id() {
            body.insert("override_agent_id".into(), json!(agent));
        }
        let mut vars = body.get("retell_llm_dynamic_variables").map(string_values).unwrap_or_default();
        vars.extend(string_values(&Value::Object(template_variables(call))));
        body.insert("retell_llm_dynamic_variables".into(), Value::Object(vars));
        extend_object(&mut body, "metadata", correlation_metadata(call));
        API.request(Method::Post, &target.credentials, "/v2/create-phone-call", Some(&Value::Object(body)))
    }

    /// `call_status` ended | error | not_connected → over.
    fn status_of(&self, v: &Value) -> Option<CallStatus> {
        let status = v.get("call_status").and_then(Value::as_str)?;
        let ended = matches!(status, "ended" | "error" | "not_connected");
        let reason = v.get("disconnection_reason").and_then(Value::as_str);
        Some(CallStatus {
            ended,
            end_reason: ended
                .then(|| if status == "ended" || reason.is_some() { outcome::retell(reason) } else { outcome::FAILED }.to_string()),
            answered_at: ms_to_rfc3339(v.get("start_timestamp")),
            ended_at: ms_to_rfc3339(v.get("end_timestamp")),
        })
    }

    fn lookup_request(&self, attempt: &InDoubt, creds: &Credentials) -> Result<HttpRequest, String> {
        let body = json!({"filter_criteria": {"metadata.idempotency_key": [attempt.idempotency_key]}, "limit": 10});
        API.request(Method::Post, creds, "/v2/list-calls", Some(&body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::{body, call, mapping, target};
    use crate::providers::HttpResponse;

    #[test]
    fn create_phone_call_and_status() {
        let t = target("retell", mapping(Some("agent_1"), Some("+15559990000"), json!({"retell_llm_dynamic_variables": {"offer": 10}})));
        let req = Retell.call_request(&t, &call()).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/v2/create-phone-call");
        let b = body(&req);
        assert_eq!((b["from_number"].as_str(), b["to_number"].as_str()), (Some("+15559990000"), Some("+15550001111")));
        assert_eq!(b["override_agent_id"], "agent_1");
        let vars = b["retell_llm_dynamic_variables"].as_object().unwrap();
        assert!(vars.values().all(Value::is_string), "{vars:?}");
        assert_eq!(vars["offer"], "10");
        assert_eq!(vars["visits"], "3");
        assert!(Retell.check_mapping(&mapping(None, None, json!({}))).unwrap_err().contains("from_number"));
        let s = Retell
            .parse_status(&HttpResponse {
                status: 200,
                retry_after: None,
                body: r#"{"call_id":"c","call_status":"ended","disconnection_reason":"dial_busy","start_timestamp":1764583200000,"end_timestamp":1764583260000}"#.into(),
            })
            .unwrap();
        assert_eq!((s.ended, s.end_reason.as_deref()), (true, Some("busy")));
        assert!(s.ended_at.is_some());
    }
}
