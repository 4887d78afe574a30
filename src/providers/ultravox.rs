//! Ultravox, to its published OpenAPI description. With an agent:
//! `POST {base}/api/agents/{agent_id}/calls`, a `StartAgentCallRequest`; without one:
//! `POST {base}/api/calls`, a `StartCallRequest` built from the template. `X-API-Key` auth.
//! Ultravox places the phone call itself through the agency's carrier account imported into
//! it: `medium: {CARRIER: {"outgoing": {"to", "from"}}}`. Ultravox parses bodies as protobuf
//! messages and refuses any field its schema does not name, so templates are checked against
//! the field lists below when a mapping is stored.

use super::prelude::*;
const API: JsonApi = JsonApi {
    default_base_url: "https://api.ultravox.ai",
    auth: KeyHeader { name: "X-API-Key", prefix: "" },
    call_id_field: "callId",
    status_path: "/api/calls",
    lookup_by_metadata: Some(("/results", "/callId")),
};

pub const CARRIERS: [&str; 3] = ["telnyx", "twilio", "plivo"];
pub const DEFAULT_CARRIER: &str = "telnyx";

/// Fields of `ultravox.v1.StartAgentCallRequest` a template may set (the spec test checks this
/// list against the published description).
pub const AGENT_CALL_FIELDS: TemplateFields = &[
    (Kind::String, &["initialOutputMedium", "voice", "retentionPolicy"]),
    (Kind::Duration, &["joinTimeout", "maxDuration"]),
    (Kind::Boolean, &["recordingEnabled"]),
    (
        Kind::Object,
        &[
            "templateContext",
            "metadata",
            "firstSpeakerSettings",
            "dataConnection",
            "experimentalSettings",
            "callbacks",
            "voiceOverrides",
            "toolOverrides",
        ],
    ),
    (Kind::Array, &["initialMessages", "sharedSecrets"]),
];

/// Fields of `ultravox.v1.StartCallRequest` a template may set (a call without an agent).
pub const CALL_FIELDS: TemplateFields = &[
    (
        Kind::String,
        &[
            "systemPrompt",
            "model",
            "voice",
            "languageHint",
            "timeExceededMessage",
            "firstSpeaker",
            "initialOutputMedium",
            "retentionPolicy",
        ],
    ),
    (Kind::Duration, &["joinTimeout", "maxDuration"]),
    (Kind::Number, &["temperature"]),
    (Kind::Boolean, &["recordingEnabled", "transcriptOptional"]),
    (
        Kind::Object,
        &[
            "externalVoice",
            "vadSettings",
            "firstSpeakerSettings",
            "experimentalSettings",
            "metadata",
            "initialState",
            "dataConnection",
            "callbacks",
            "voiceOverrides",
        ],
    ),
    (Kind::Array, &["initialMessages", "inactivityMessages", "selectedTools", "sharedSecrets"]),
];

/// Set by pg_dialer for every call, never by a template.
const OURS: &[&str] = &["medium", "agentId"];

pub struct Ultravox;

fn carrier(mapping: &Mapping) -> Result<&str, String> {
    let c = mapping.carrier.as_deref().unwrap_or(DEFAULT_CARRIER);
    if CARRIERS.contains(&c) {
        Ok(c)
    } else {
        Err(format!("carrier {c:?} is not one Ultravox dials through: use telnyx, twilio or plivo"))
    }
}

/// An agent id as the agent-call path wants it (the spec's `format: uuid`).
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_template(mapping: &Mapping) -> Result<(), String> {
    let template = mapping.template()?;
    let (what, fields) = match mapping.agent_id() {
        Some(_) => ("ultravox.v1.StartAgentCallRequest", AGENT_CALL_FIELDS),
        None => ("ultravox.v1.StartCallRequest", CALL_FIELDS),
    };
    check_fields("Ultravox", what, template, fields, OURS)?;
    if let Some(m) = template.get("metadata").and_then(Value::as_object) {
        check_metadata(m, "request_template.metadata")?;
    }
    if let Some(fs) = template.get("firstSpeakerSettings").and_then(Value::as_object) {
        let sides: Vec<&String> = fs.keys().collect();
        if sides.len() != 1 || !["user", "agent"].contains(&sides[0].as_str()) {
            return Err("request_template.firstSpeakerSettings must have exactly one of \"user\" or \"agent\"".into());
        }
        if !fs.values().all(Value::is_object) {
            return Err("request_template.firstSpeakerSettings.user/agent must be a JSON object".into());
        }
    }
    if template.contains_key("firstSpeaker") && template.contains_key("firstSpeakerSettings") {
        return Err("request_template: set firstSpeakerSettings only (firstSpeaker is deprecated and must match it)".into());
    }
    Ok(())
}

fn check_metadata(m: &Map<String, Value>, at: &str) -> Result<(), String> {
    for (k, v) in m {
        if k.starts_with("ultravox.") {
            return Err(format!("{at}.{k}: keys starting with \"ultravox.\" are reserved by Ultravox"));
        }
        if !v.is_string() {
            return Err(format!("{at}.{k} must be a string (Ultravox metadata values are strings)"));
        }
    }
    Ok(())
}

impl Adapter for Ultravox {
    fn json_api(&self) -> Option<&'static JsonApi> {
        Some(&API)
    }

    fn check_mapping(&self, mapping: &Mapping) -> Result<(), String> {
        if let Some(id) = mapping.agent_id() {
            if !is_uuid(id) {
                return Err(format!(
                    "external_agent_id {id:?} is not an Ultravox agent id (a UUID such as 3f1c2a9e-0b7d-4c1e-9a55-2f0e6d8b7c41); leave it NULL to start calls from the template's systemPrompt"
                ));
            }
        }
        carrier(mapping)?;
        need_from_number("Ultravox", mapping)?;
        check_template(mapping)
    }

    fn call_request(&self, target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
        let m = &target.mapping;
        check_template(m)?;
        let from = need_from_number("Ultravox", m)?;
        let mut body = m.template()?.clone();
        body.insert("medium".into(), json!({carrier(m)?: {"outgoing": {"to": call.phone_number, "from": from}}}));
        // The template's metadata first, then the call's own; our correlation fields win over both.
        let mut metadata = body.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        metadata.extend(correlation_metadata(call));
        metadata.retain(|k, _| !k.starts_with("ultravox."));
        body.insert("metadata".into(), Value::Object(metadata));
        let path = match m.agent_id() {
            Some(agent) => {
                // templateContext: the template's defaults, then the contact's variables.
                extend_object(&mut body, "templateContext", template_variables(call));
                body.entry("firstSpeakerSettings").or_insert_with(|| json!({"agent": {}}));
                format!("/api/agents/{}/calls", path_segment(agent))
            }
            None => {
                if !body.contains_key("firstSpeaker") {
                    body.entry("firstSpeakerSettings").or_insert_with(|| json!({"agent": {}}));
                }
                "/api/calls".to_string()
            }
        };
        API.request(Method::Post, &target.credentials, &path, Some(&Value::Object(body)))
    }

    /// `ended` set → the call is over; 404 → the provider no longer knows it (treated as ended).
    fn status_of(&self, v: &Value) -> Option<CallStatus> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let ended_at = text("ended");
        Some(CallStatus {
            ended: ended_at.is_some(),
            end_reason: ended_at.is_some().then(|| outcome::ultravox(v.get("endReason").and_then(Value::as_str)).to_string()),
            answered_at: text("joined"),
            ended_at,
        })
    }

    /// Calls carrying the attempt's idempotency key in their metadata.
    fn lookup_request(&self, attempt: &InDoubt, creds: &Credentials) -> Result<HttpRequest, String> {
        let path = format!("/api/calls?metadata.idempotency_key={}&pageSize=10", super::lookup::enc(&attempt.idempotency_key));
        API.request(Method::Get, creds, &path, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::lookup::LookupResult;
    use crate::providers::test_support::{body, call, mapping, target, UUID};
    use crate::providers::HttpResponse;

    #[test]
    fn agent_call_to_the_published_shape() {
        let t = target("ultravox", mapping(Some(UUID), Some("+15559990000"), json!({"maxDuration": "300s"})));
        let req = Ultravox.call_request(&t, &call()).unwrap();
        assert_eq!(req.url, format!("http://127.0.0.1:9/api/agents/{UUID}/calls"));
        assert_eq!(req.method, Method::Post);
        assert!(req.headers.contains(&("X-API-Key".to_string(), "k-secret-123".to_string())));
        let b = body(&req);
        assert_eq!(b["medium"], json!({"telnyx": {"outgoing": {"to": "+15550001111", "from": "+15559990000"}}}));
        assert_eq!(b["firstSpeakerSettings"], json!({"agent": {}}));
        assert!(b.get("firstSpeaker").is_none() && b.get("agentId").is_none());
        assert_eq!(b["templateContext"], json!({"plan": "gold", "visits": 3, "name": "Ann"}));
        assert_eq!(b["maxDuration"], "300s");
        let meta = b["metadata"].as_object().unwrap();
        assert!(meta.values().all(Value::is_string), "metadata values are strings: {meta:?}");
        assert_eq!(b["metadata"]["contact_id"], "42", "the caller cannot override correlation fields");
        assert_eq!(b["metadata"]["batch_id"], "3");
        assert_eq!(b["metadata"]["idempotency_key"], "pgd-3-42-1");
        assert_eq!(b["metadata"]["lead_ref"], "L-7");
        assert_eq!(b["metadata"]["score"], "0.9");
        assert_eq!(b["metadata"]["tags"], "[\"a\"]");
        assert!(!req.audit.to_string().contains("k-secret-123"), "audit must not hold the key");
    }

    #[test]
    fn carrier_and_first_speaker_from_the_mapping() {
        let mut m = mapping(Some(UUID), Some("+15559990000"), json!({"firstSpeakerSettings": {"user": {}}}));
        m.carrier = Some("plivo".into());
        let b = body(&Ultravox.call_request(&target("ultravox", m), &call()).unwrap());
        assert_eq!(b["medium"]["plivo"]["outgoing"]["to"], "+15550001111");
        assert_eq!(b["firstSpeakerSettings"], json!({"user": {}}));
    }

    #[test]
    fn without_an_agent_a_start_call_request() {
        let t = target("ultravox", mapping(None, Some("+15559990000"), json!({"systemPrompt": "You are Ava.", "voice": "Mark"})));
        let req = Ultravox.call_request(&t, &call()).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/api/calls");
        let b = body(&req);
        assert_eq!(b["systemPrompt"], "You are Ava.");
        assert!(b.get("templateContext").is_none() && b.get("agentId").is_none());
    }

    #[test]
    fn mapping_checks_name_the_problem() {
        let check = |agent: Option<&str>, from: Option<&str>, t: Value| Ultravox.check_mapping(&mapping(agent, from, t)).unwrap_err();
        assert!(check(Some(UUID), None, json!({})).contains("need a from_number"));
        assert!(check(Some("agent-1"), Some("+15559990000"), json!({})).contains("not an Ultravox agent id"));
        let e = check(Some(UUID), Some("+15559990000"), json!({"firstSpeaker": "FIRST_SPEAKER_AGENT"}));
        assert!(e.contains("has no field named \"firstSpeaker\""), "{e}");
        assert!(check(Some(UUID), Some("+15559990000"), json!({"systemPrompt": "x"})).contains("StartAgentCallRequest"));
        assert!(check(None, Some("+15559990000"), json!({"templateContext": {}})).contains("StartCallRequest"));
        assert!(check(Some(UUID), Some("+15559990000"), json!({"medium": {}})).contains("set by pg_dialer"));
        assert!(check(Some(UUID), Some("+15559990000"), json!({"maxDuration": 300})).contains("duration string"));
        assert!(check(Some(UUID), Some("+15559990000"), json!({"metadata": {"n": 1}})).contains("must be a string"));
        assert!(check(Some(UUID), Some("+15559990000"), json!({"metadata": {"ultravox.x": "1"}})).contains("reserved"));
        assert!(check(Some(UUID), Some("+15559990000"), json!({"firstSpeakerSettings": {"user": {}, "agent": {}}})).contains("exactly one"));
        let mut m = mapping(Some(UUID), Some("+15559990000"), json!({}));
        m.carrier = Some("vonage".into());
        assert!(Ultravox.check_mapping(&m).unwrap_err().contains("telnyx, twilio or plivo"));
        assert!(Ultravox.check_mapping(&mapping(Some(UUID), Some("+15559990000"), json!({"voice": "Mark"}))).is_ok());
    }

    #[test]
    fn status_and_end_reasons() {
        let r =
            HttpResponse { status: 200, retry_after: None, body: r#"{"callId":"a","joined":"2026-01-01T00:00:00Z","ended":null}"#.into() };
        let s = Ultravox.parse_status(&r).unwrap();
        assert!(!s.ended && s.end_reason.is_none());
        let r = HttpResponse { status: 200, retry_after: None, body: r#"{"ended":"2026-01-01T00:01:00Z","endReason":"unjoined"}"#.into() };
        let s = Ultravox.parse_status(&r).unwrap();
        assert!(s.ended);
        assert_eq!(s.end_reason.as_deref(), Some("no-answer"));
        assert!(Ultravox.parse_status(&HttpResponse { status: 500, retry_after: None, body: String::new() }).is_none());
        assert!(Ultravox.parse_status(&HttpResponse { status: 200, retry_after: None, body: "not json".into() }).is_none());
    }

    #[test]
    fn status_url_cannot_be_steered_by_the_id() {
        let creds = Credentials { api_key: "k".into(), base_url: None, account_sid: None };
        let r = Ultravox.status_request(&creds, "../../admin?x=1").unwrap();
        assert_eq!(r.url, "https://api.ultravox.ai/api/calls/adminx1");
    }

    #[test]
    fn lookup_by_idempotency_key() {
        let creds = Credentials { api_key: "k".into(), base_url: Some("http://h".into()), account_sid: None };
        let a = InDoubt {
            call_id: 1,
            provider: "ultravox".into(),
            idempotency_key: "pgd-1-1-abc".into(),
            phone_number: "+15550001111".into(),
            claimed_at: "2026-11-21T10:00:00Z".into(),
        };
        assert_eq!(Ultravox.lookup_request(&a, &creds).unwrap().url, "http://h/api/calls?metadata.idempotency_key=pgd-1-1-abc&pageSize=10");
        let ok = |b: &str| HttpResponse { status: 200, retry_after: None, body: b.into() };
        assert_eq!(
            Ultravox.parse_lookup(&a, &ok(r#"{"results":[{"callId":"c9","metadata":{"idempotency_key":"pgd-1-1-abc"}}]}"#)),
            LookupResult::Found { provider_call_id: Some("c9".into()) }
        );
        assert_eq!(
            Ultravox.parse_lookup(&a, &ok(r#"{"results":[{"callId":"c8","metadata":{"idempotency_key":"other"}}]}"#)),
            LookupResult::NotFound
        );
        assert_eq!(Ultravox.parse_lookup(&a, &ok("<html>")), LookupResult::Unknown);
        assert_eq!(Ultravox.parse_lookup(&a, &HttpResponse { status: 503, retry_after: None, body: String::new() }), LookupResult::Unknown);
    }
}
