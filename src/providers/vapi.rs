//! Vapi, to its published OpenAPI description: `POST {base}/call` with `Authorization: Bearer`,
//! a `CreateCallDTO`: `assistantId` (the mapping's agent), `phoneNumberId` (a Vapi phone-number
//! id, from the template: Vapi dials from numbers it knows by id, not by E.164), `customer.number`,
//! and per-call `assistantOverrides.variableValues` / `.metadata`. `GET /call/{id}` for status;
//! `GET /call?createdAtGe=…` to find a lost attempt by the metadata it carried.

use super::prelude::*;
const API: JsonApi = JsonApi {
    default_base_url: "https://api.vapi.ai",
    auth: KeyHeader::BEARER,
    call_id_field: "id",
    status_path: "/call",
    lookup_by_metadata: None,
};

/// Fields of Vapi's CreateCallDTO a template may set (the spec test checks them).
pub const CREATE_CALL_FIELDS: TemplateFields = &[
    (Kind::String, &["name", "squadId", "workflowId", "phoneNumberId"]),
    (
        Kind::Object,
        &[
            "transport",
            "schedulePlan",
            "assistant",
            "assistantOverrides",
            "squad",
            "squadOverrides",
            "workflow",
            "workflowOverrides",
            "phoneNumber",
        ],
    ),
];
const OURS: &[&str] = &["assistantId", "customer", "customers", "customerId"];

pub struct Vapi;

impl Adapter for Vapi {
    fn json_api(&self) -> Option<&'static JsonApi> {
        Some(&API)
    }

    fn check_mapping(&self, mapping: &Mapping) -> Result<(), String> {
        need_agent_id("vapi", "Vapi assistant id", mapping)?;
        let t = mapping.template()?;
        check_fields("Vapi", "Vapi's CreateCallDTO", t, CREATE_CALL_FIELDS, OURS)?;
        if !t.contains_key("phoneNumberId") && !t.contains_key("phoneNumber") {
            return Err("a vapi agent mapping needs request_template.phoneNumberId (the id of the Vapi phone number to dial from)".into());
        }
        Ok(())
    }

    fn call_request(&self, target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
        self.check_mapping(&target.mapping)?;
        let m = &target.mapping;
        let mut body = m.template()?.clone();
        body.insert("assistantId".into(), json!(need_agent_id("vapi", "Vapi assistant id", m)?));
        body.insert("customer".into(), json!({"number": call.phone_number}));
        let mut overrides = body.get("assistantOverrides").and_then(Value::as_object).cloned().unwrap_or_default();
        extend_object(&mut overrides, "variableValues", template_variables(call));
        extend_object(&mut overrides, "metadata", correlation_metadata(call));
        body.insert("assistantOverrides".into(), Value::Object(overrides));
        API.request(Method::Post, &target.credentials, "/call", Some(&Value::Object(body)))
    }

    fn status_of(&self, v: &Value) -> Option<CallStatus> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let ended = text("status")? == "ended";
        Some(CallStatus {
            ended,
            end_reason: ended.then(|| outcome::vapi(v.get("endedReason").and_then(Value::as_str)).to_string()),
            answered_at: text("startedAt"),
            ended_at: text("endedAt"),
        })
    }

    /// The calls created since the claim; the one whose overrides carry the key is ours.
    fn lookup_request(&self, attempt: &InDoubt, creds: &Credentials) -> Result<HttpRequest, String> {
        let path = format!("/call?createdAtGe={}&limit=100", super::lookup::enc(&attempt.claimed_at));
        API.request(Method::Get, creds, &path, None)
    }

    fn parse_lookup(&self, attempt: &InDoubt, response: &HttpResponse) -> LookupResult {
        let Some(Value::Array(calls)) = ok_json(response) else { return LookupResult::Unknown };
        let found = calls.iter().find(|c| {
            c.pointer("/assistantOverrides/metadata/idempotency_key").and_then(Value::as_str) == Some(attempt.idempotency_key.as_str())
        });
        match found {
            Some(c) => LookupResult::Found { provider_call_id: c.get("id").and_then(Value::as_str).map(str::to_string) },
            // Up to 100 calls since the claim were listed; more than that cannot prove absence.
            None if calls.len() >= 100 => LookupResult::Unknown,
            None => LookupResult::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::{body, call, mapping, target, UUID};

    #[test]
    fn create_call_and_status() {
        let t = target("vapi", mapping(Some(UUID), None, json!({"phoneNumberId": "pn-1"})));
        let req = Vapi.call_request(&t, &call()).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/call");
        assert!(req.headers.contains(&("Authorization".into(), "Bearer k-secret-123".into())));
        let b = body(&req);
        assert_eq!(b["assistantId"], UUID);
        assert_eq!(b["phoneNumberId"], "pn-1");
        assert_eq!(b["customer"], json!({"number": "+15550001111"}));
        assert_eq!(b["assistantOverrides"]["variableValues"]["plan"], "gold");
        assert_eq!(b["assistantOverrides"]["metadata"]["idempotency_key"], "pgd-3-42-1");
        assert!(Vapi.check_mapping(&mapping(Some(UUID), None, json!({}))).unwrap_err().contains("phoneNumberId"));
        assert!(Vapi.check_mapping(&mapping(None, None, json!({"phoneNumberId": "p"}))).unwrap_err().contains("assistant id"));
        let s = Vapi
            .parse_status(&HttpResponse {
                status: 200,
                retry_after: None,
                body: r#"{"id":"c","status":"ended","endedReason":"voicemail"}"#.into(),
            })
            .unwrap();
        assert_eq!((s.ended, s.end_reason.as_deref()), (true, Some("voicemail")));
    }
}
