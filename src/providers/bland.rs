//! Bland AI, to its documentation (docs.bland.ai, "Send Call": `POST https://api.bland.ai/v1/calls`;
//! "Call Details": `GET /v1/calls/{call_id}`); Bland publishes no OpenAPI description we could
//! check against. Auth is the key itself in the `authorization` header. The body: `phone_number`,
//! `from` (the mapping's from number), `pathway_id` (the mapping's agent) or the template's
//! `task`, `request_data` (the contact's variables) and `metadata`.

use super::prelude::*;
const API: JsonApi = JsonApi {
    default_base_url: "https://api.bland.ai",
    auth: KeyHeader { name: "authorization", prefix: "" },
    call_id_field: "call_id",
    status_path: "/v1/calls",
    lookup_by_metadata: None,
};

/// Send Call parameters a template may set (from the documentation).
pub const SEND_CALL_FIELDS: TemplateFields = &[
    (
        Kind::String,
        &[
            "task",
            "voice",
            "first_sentence",
            "model",
            "transfer_phone_number",
            "language",
            "timezone",
            "start_time",
            "voicemail_message",
            "voicemail_action",
            "webhook",
            "summary_prompt",
            "background_track",
        ],
    ),
    (Kind::Number, &["temperature", "max_duration"]),
    (Kind::Integer, &["interruption_threshold", "pathway_version"]),
    (
        Kind::Boolean,
        &[
            "wait_for_greeting",
            "block_interruptions",
            "record",
            "answered_by_enabled",
            "noise_cancellation",
            "ignore_button_press",
            "local_dialing",
        ],
    ),
    (Kind::Object, &["transfer_list", "request_data", "retry", "metadata", "analysis_schema"]),
    (Kind::Array, &["keywords", "pronunciation_guide", "tools", "dynamic_data", "webhook_events"]),
];
const OURS: &[&str] = &["phone_number", "from", "pathway_id"];

pub struct Bland;

impl Adapter for Bland {
    fn json_api(&self) -> Option<&'static JsonApi> {
        Some(&API)
    }

    fn check_mapping(&self, mapping: &Mapping) -> Result<(), String> {
        let t = mapping.template()?;
        check_fields("Bland", "Bland's Send Call", t, SEND_CALL_FIELDS, OURS)?;
        if mapping.agent_id().is_none() && !t.get("task").is_some_and(Value::is_string) {
            return Err("a bland agent mapping needs external_agent_id (a pathway id) or request_template.task (the prompt)".into());
        }
        if let Some(f) = mapping.from_number.as_deref() {
            if !super::is_e164(f) {
                return Err(format!("from_number {f:?} is not an E.164 phone number"));
            }
        }
        Ok(())
    }

    fn call_request(&self, target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
        self.check_mapping(&target.mapping)?;
        let m = &target.mapping;
        let mut body = m.template()?.clone();
        body.insert("phone_number".into(), json!(call.phone_number));
        if let Some(from) = &m.from_number {
            body.insert("from".into(), json!(from));
        }
        if let Some(pathway) = m.agent_id() {
            body.insert("pathway_id".into(), json!(pathway));
        }
        extend_object(&mut body, "request_data", template_variables(call));
        extend_object(&mut body, "metadata", correlation_metadata(call));
        API.request(Method::Post, &target.credentials, "/v1/calls", Some(&Value::Object(body)))
    }

    /// `completed: true` (or a final `status`) → over; `answered_by` tells voicemail apart.
    fn status_of(&self, v: &Value) -> Option<CallStatus> {
        let status = v.get("status").and_then(Value::as_str).unwrap_or("");
        let ended = v.get("completed").and_then(Value::as_bool).unwrap_or(false)
            || matches!(status, "completed" | "complete" | "failed" | "busy" | "no-answer" | "canceled" | "cancelled");
        let status = if status == "complete" { "completed" } else { status };
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(CallStatus {
            ended,
            end_reason: ended.then(|| outcome::bland(status, v.get("answered_by").and_then(Value::as_str)).to_string()),
            answered_at: text("started_at"),
            ended_at: text("end_at").or_else(|| text("ended_at")),
        })
    }

    /// Bland's call list cannot be searched by our metadata: a lost attempt stays in doubt.
    fn lookup_request(&self, _attempt: &InDoubt, _creds: &Credentials) -> Result<HttpRequest, String> {
        Err("bland calls cannot be looked up by idempotency key: the attempt stays in doubt for review".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::{body, call, mapping, target};
    use crate::providers::HttpResponse;

    #[test]
    fn send_call_and_details() {
        let t = target("bland", mapping(Some("pw-1"), Some("+15559990000"), json!({"voice": "maya"})));
        let req = Bland.call_request(&t, &call()).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/v1/calls");
        assert!(req.headers.contains(&("authorization".into(), "k-secret-123".into())));
        let b = body(&req);
        assert_eq!(
            (b["phone_number"].as_str(), b["from"].as_str(), b["pathway_id"].as_str()),
            (Some("+15550001111"), Some("+15559990000"), Some("pw-1"))
        );
        assert_eq!(b["request_data"]["plan"], "gold");
        assert_eq!(b["metadata"]["idempotency_key"], "pgd-3-42-1");
        assert!(Bland.check_mapping(&mapping(None, None, json!({}))).unwrap_err().contains("task"));
        assert!(Bland.check_mapping(&mapping(None, None, json!({"task": "x", "taks": 1}))).unwrap_err().contains("no field named"));
        let s = Bland
            .parse_status(&HttpResponse {
                status: 200,
                retry_after: None,
                body: r#"{"call_id":"c","status":"completed","completed":true,"answered_by":"voicemail"}"#.into(),
            })
            .unwrap();
        assert_eq!((s.ended, s.end_reason.as_deref()), (true, Some("voicemail")));
    }
}
