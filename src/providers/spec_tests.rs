//! Every adapter's requests checked against the providers' published API descriptions
//! (`../shared/provider-specs/`, loaded by the `provider-contract` crate, the same checks the
//! simulator makes): a field outside the schema fails here. And the field lists the adapters use
//! to check templates at mapping time are checked against the same descriptions.

use super::test_support::{call, mapping, target, UUID};
use super::{adapter, field_kind, Kind, Mapping, TemplateFields};
use provider_contract::{Contract, Operation};
use serde_json::{json, Value};
use std::path::PathBuf;

fn spec_dir() -> PathBuf {
    provider_contract::default_spec_dir()
        .expect("the providers' specs (../shared/provider-specs) must be present: set PROVIDER_SPEC_DIR to their folder")
}

fn contract() -> Contract {
    Contract::load(&spec_dir()).unwrap_or_else(|e| panic!("loading the provider specs: {e}"))
}

fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.find('/').map(|i| &rest[i..]).unwrap_or("/")
}

/// Builds the request for (provider, mapping) and checks it as the provider would.
fn accepted(c: &Contract, provider: &str, m: Mapping) -> Operation {
    super::check_mapping(provider, &m).unwrap_or_else(|e| panic!("{provider} mapping refused: {e}"));
    let req = adapter(provider).unwrap().call_request(&target(provider, m), &call()).unwrap();
    let content_type = req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.as_str()).unwrap_or("");
    let path = path_of(&req.url);
    let path = path.split('?').next().unwrap_or(path);
    c.check_http("POST", path, content_type, req.body.as_deref().unwrap_or("").as_bytes())
        .unwrap_or_else(|e| panic!("{provider} request refused by its spec: {e:?}\n{}", req.body.as_deref().unwrap_or("")))
}

#[test]
fn ultravox_requests_pass_the_published_spec() {
    let c = contract();
    let from = Some("+15559990000");
    assert_eq!(accepted(&c, "ultravox", mapping(Some(UUID), from, json!({}))), Operation::UltravoxStartAgentCall);
    let rich = json!({"maxDuration": "300s", "joinTimeout": "30s", "recordingEnabled": true, "voice": "Mark",
                      "metadata": {"team": "north"}, "templateContext": {"offer": "10%"},
                      "firstSpeakerSettings": {"user": {}}});
    assert_eq!(accepted(&c, "ultravox", mapping(Some(UUID), from, rich)), Operation::UltravoxStartAgentCall);
    for carrier in ["twilio", "plivo"] {
        let mut m = mapping(Some(UUID), from, json!({}));
        m.carrier = Some(carrier.into());
        assert_eq!(accepted(&c, "ultravox", m), Operation::UltravoxStartAgentCall);
    }
    let no_agent = json!({"systemPrompt": "You are Ava.", "voice": "Mark", "temperature": 0.4});
    assert_eq!(accepted(&c, "ultravox", mapping(None, from, no_agent)), Operation::UltravoxStartCall);
}

#[test]
fn the_checks_are_real_the_seed_request_is_refused() {
    // What pg_dialer 0.2.0 sent: refused by the spec, so a test built on the contract cannot pass it.
    let c = contract();
    let seed = json!({"agentId": UUID, "medium": {"telnyx": {"destinationPhoneNumber": "+15550001111"}},
                      "firstSpeaker": "FIRST_SPEAKER_AGENT", "templateContext": {}, "metadata": {"n": 1}});
    let errors = c.check_http("POST", "/api/calls", "application/json", seed.to_string().as_bytes()).unwrap_err();
    let text = errors.join("\n");
    assert!(text.contains("destinationPhoneNumber"), "{text}");
    assert!(text.contains("templateContext") || text.contains("agentId"), "{text}");
}

#[test]
fn twilio_requests_pass_the_published_spec() {
    let c = contract();
    let from = Some("+15559990000");
    for template in [
        json!({"Url": "https://example.com/twiml"}),
        json!({"Twiml": "<Response><Say>Hi</Say></Response>", "MachineDetection": "Enable", "Timeout": 20, "Record": true,
               "StatusCallback": "https://example.com/status", "StatusCallbackEvent": ["initiated", "answered", "completed"]}),
        json!({"ApplicationSid": "AP0123456789abcdef0123456789abcdef"}),
    ] {
        assert_eq!(accepted(&c, "twilio", mapping(None, from, template)), Operation::TwilioCreateCall);
    }
}

#[test]
fn vapi_retell_bland_requests_pass_their_contracts() {
    let c = contract();
    let vapi = json!({"phoneNumberId": "6f1c2a9e-0b7d-4c1e-9a55-2f0e6d8b7c41", "assistantOverrides": {"firstMessage": "Hi!"}});
    assert_eq!(accepted(&c, "vapi", mapping(Some(UUID), None, vapi)), Operation::VapiCreateCall);
    assert_eq!(accepted(&c, "retell", mapping(Some("agent_7f3a"), Some("+15559990000"), json!({}))), Operation::RetellCreatePhoneCall);
    assert_eq!(
        accepted(&c, "retell", mapping(None, Some("+15559990000"), json!({"metadata": {"crm": 7}}))),
        Operation::RetellCreatePhoneCall
    );
    assert_eq!(
        accepted(&c, "bland", mapping(Some("pw-1"), Some("+15559990000"), json!({"voice": "maya", "max_duration": 5}))),
        Operation::BlandSendCall
    );
    assert_eq!(accepted(&c, "bland", mapping(None, None, json!({"task": "Confirm the appointment."}))), Operation::BlandSendCall);
}

/// The schema object of `name` in a spec file, and the JSON type of each of its properties.
fn spec_fields(file: &str, name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(spec_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let schema = doc.pointer(name).unwrap_or_else(|| panic!("{file} has no {name}"));
    let props = schema.get("properties").and_then(Value::as_object).unwrap_or_else(|| panic!("{name} has no properties"));
    props
        .iter()
        .map(|(k, v)| {
            let t = v.get("type").and_then(Value::as_str).unwrap_or(if v.get("$ref").is_some() || v.get("allOf").is_some() {
                "object"
            } else {
                "any"
            });
            (k.clone(), t.to_string())
        })
        .collect()
}

fn kind_matches(kind: Kind, spec_type: &str) -> bool {
    if spec_type == "any" {
        return true; // the spec leaves the type open (oneOf of several)
    }
    match kind {
        Kind::String | Kind::Duration => spec_type == "string",
        Kind::Number => spec_type == "number",
        Kind::Integer => spec_type == "integer",
        Kind::Boolean => spec_type == "boolean",
        Kind::Object => spec_type == "object",
        Kind::Array => spec_type == "array",
        Kind::StringList => spec_type == "array" || spec_type == "string",
        Kind::Scalar => ["string", "number", "integer", "boolean"].contains(&spec_type),
    }
}

/// Every field an adapter lets a template set is in the spec with that type, and every field of
/// the spec is either settable or one pg_dialer sets itself.
fn same_fields(file: &str, schema: &str, ours: TemplateFields, set_by_us: &[&str]) {
    let spec = spec_fields(file, schema);
    for (kind, names) in ours {
        for name in *names {
            let found = spec.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("{schema} has no field {name}"));
            assert!(kind_matches(*kind, &found.1), "{schema}.{name}: spec says {}, we check {kind:?}", found.1);
        }
    }
    for (name, _) in &spec {
        assert!(
            field_kind(ours, name).is_some() || set_by_us.contains(&name.as_str()),
            "{schema}.{name} is in the spec but neither allowed in templates nor set by the adapter"
        );
    }
}

#[test]
fn template_field_lists_follow_the_specs() {
    use super::{retell, twilio, ultravox, vapi};
    same_fields(
        "ultravox-openapi.json",
        "/components/schemas/ultravox.v1.StartAgentCallRequest",
        ultravox::AGENT_CALL_FIELDS,
        &["medium", "agentId"],
    );
    same_fields("ultravox-openapi.json", "/components/schemas/ultravox.v1.StartCallRequest", ultravox::CALL_FIELDS, &["medium"]);
    same_fields(
        "twilio-calls-openapi.json",
        "/paths/~12010-04-01~1Accounts~1{AccountSid}~1Calls.json/post/requestBody/content/application~1x-www-form-urlencoded/schema",
        twilio::CREATE_CALL_FIELDS,
        &["To", "From"],
    );
    same_fields(
        "vapi-calls-openapi.json",
        "/components/schemas/CreateCallDTO",
        vapi::CREATE_CALL_FIELDS,
        &["assistantId", "customer", "customers", "customerId"],
    );
    same_fields(
        "retell-calls-openapi.json",
        "/paths/~1v2~1create-phone-call/post/requestBody/content/application~1json/schema",
        retell::CREATE_CALL_FIELDS,
        &["from_number", "to_number", "override_agent_id"],
    );
}
