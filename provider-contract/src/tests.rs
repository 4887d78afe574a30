use super::*;
use serde_json::json;
use std::sync::OnceLock;

/// The real spec directory; these tests must not silently pass without it.
fn spec_dir() -> PathBuf {
    default_spec_dir().expect(
        "provider spec directory not found: set PROVIDER_SPEC_DIR or keep shared/provider-specs \
         beside the repository (…/main and …/shared)",
    )
}

fn loaded() -> &'static Contract {
    static C: OnceLock<Contract> = OnceLock::new();
    C.get_or_init(|| Contract::load(&spec_dir()).unwrap_or_else(|e| panic!("load: {e}")))
}

fn both() -> [(&'static str, &'static Contract); 2] {
    static B: OnceLock<Contract> = OnceLock::new();
    [("spec", loaded()), ("builtin", B.get_or_init(Contract::builtin))]
}

fn errs(c: &Contract, op: Operation, body: &Value) -> Vec<String> {
    match c.check(op, body) {
        Ok(()) => panic!("{op} accepted {body}"),
        Err(e) => e,
    }
}

fn has(errs: &[String], needle: &str) -> bool {
    errs.iter().any(|e| e.contains(needle))
}

fn outgoing(to: &str) -> Value {
    json!({"telnyx": {"outgoing": {"to": to, "from": "+15550000000"}}})
}

fn good(op: Operation) -> Value {
    match op {
        Operation::UltravoxStartAgentCall => json!({
            "templateContext": {"name": "Ada", "nested": {"x": 1}},
            "medium": outgoing("+15551230001"),
            "firstSpeakerSettings": {"agent": {"text": "Hello"}},
            "metadata": {"batch_id": "b1", "idempotency_key": "k1"},
            "maxDuration": "300s",
            "joinTimeout": "30s",
            "recordingEnabled": false
        }),
        Operation::UltravoxStartCall => json!({
            "systemPrompt": "You are a test agent",
            "voice": "Mark",
            "temperature": 0.4,
            "medium": {"twilio": {"outgoing": {"to": "+15551230002", "from": "+15550000000"}}},
            "firstSpeaker": "FIRST_SPEAKER_AGENT",
            "firstSpeakerSettings": {"agent": {"uninterruptible": true}},
            "metadata": {"batch_id": "b1"},
            "selectedTools": [{"toolName": "hangUp"}]
        }),
        Operation::TwilioCreateCall => json!({
            "To": "+15551230003", "From": "+15550000000",
            "Url": "https://example.com/twiml?batch_id=b1",
            "StatusCallback": "http://127.0.0.1:9/cb",
            "StatusCallbackEvent": ["initiated", "completed"],
            "StatusCallbackMethod": "POST",
            "MachineDetection": "DetectMessageEnd",
            "Timeout": "30", "Record": "true"
        }),
        Operation::VapiCreateCall => json!({
            "assistantId": "asst_1", "phoneNumberId": "pn_1",
            "customer": {"number": "+15551230004", "name": "Ada"},
            "assistantOverrides": {"variableValues": {"name": "Ada"}, "metadata": {"batch_id": "b1"}}
        }),
        Operation::RetellCreatePhoneCall => json!({
            "from_number": "+15550000000", "to_number": "+15551230005",
            "override_agent_id": "agent_1",
            "metadata": {"batch_id": "b1", "n": 3},
            "retell_llm_dynamic_variables": {"name": "Ada"}
        }),
        Operation::BlandSendCall => json!({
            "phone_number": "+15551230006", "task": "Say hello", "from": "+15550000000",
            "request_data": {"name": "Ada"}, "metadata": {"batch_id": "b1"}, "voice": "maya",
            "first_sentence": "Hi!", "wait_for_greeting": true, "max_duration": 5,
            "answered_by_enabled": true, "webhook": "http://127.0.0.1:9/bland", "record": false
        }),
    }
}

#[test]
fn each_spec_loads() {
    let c = loaded();
    assert_eq!(c.spec_dir(), Some(spec_dir().as_path()));
    for op in Operation::ALL {
        assert_eq!(c.has_schema(op), op != Operation::BlandSendCall, "{op}");
    }
    assert!(!Contract::builtin().has_schema(Operation::UltravoxStartCall));
}

#[test]
fn load_errors_name_the_file() {
    let tmp = std::env::temp_dir().join(format!("provider-contract-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let e = Contract::load(&tmp).unwrap_err();
    assert!(e.contains("ultravox-openapi.json"), "{e}");
    std::fs::write(tmp.join("ultravox-openapi.json"), "{not json").unwrap();
    let e = Contract::load(&tmp).unwrap_err();
    assert!(e.contains("ultravox-openapi.json") && e.contains("not valid JSON"), "{e}");
    std::fs::copy(spec_dir().join("ultravox-openapi.json"), tmp.join("ultravox-openapi.json")).unwrap();
    std::fs::write(tmp.join("twilio-calls-openapi.json"), r#"{"openapi":"3.0.1","paths":{}}"#).unwrap();
    let e = Contract::load(&tmp).unwrap_err();
    assert!(e.contains("twilio-calls-openapi.json") && e.contains("no application/x-www-form-urlencoded"), "{e}");
    let e = Contract::load(&tmp.join("nope")).unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn known_good_requests_pass() {
    for (mode, c) in both() {
        for op in Operation::ALL {
            if let Err(e) = c.check(op, &good(op)) {
                panic!("{mode}: {op} refused a good request: {e:?}");
            }
        }
    }
}

#[test]
fn unknown_top_level_fields_are_named() {
    let cases = [
        (Operation::UltravoxStartCall, "agentId", "Message type \"ultravox.v1.StartCallRequest\" has no field named \"agentId\""),
        (Operation::UltravoxStartCall, "templateContext", "has no field named \"templateContext\""),
        (
            Operation::UltravoxStartAgentCall,
            "systemPrompt",
            "Message type \"ultravox.v1.StartAgentCallRequest\" has no field named \"systemPrompt\"",
        ),
        (Operation::TwilioCreateCall, "IfMachine", "unknown parameter \"IfMachine\""),
        (Operation::VapiCreateCall, "metadata", "property metadata should not exist"),
        (Operation::RetellCreatePhoneCall, "agent_id", "unknown field \"agent_id\""),
        (Operation::BlandSendCall, "bogus", "\"bogus\" is not a documented Send Call parameter"),
    ];
    for (mode, c) in both() {
        for (op, field, msg) in cases {
            let mut body = good(op);
            body[field] = json!("x");
            let e = errs(c, op, &body);
            assert!(e.iter().any(|x| x.starts_with(&format!("{field}: ")) && x.contains(msg)), "{mode} {op}: {e:?}");
        }
    }
}

#[test]
fn unknown_nested_fields_are_named_with_their_path() {
    for (mode, c) in both() {
        let mut body = good(Operation::UltravoxStartAgentCall);
        body["medium"]["telnyx"]["destinationPhoneNumber"] = json!("+15551230001");
        let e = errs(c, Operation::UltravoxStartAgentCall, &body);
        assert!(
            has(&e, "medium.telnyx.destinationPhoneNumber: Message type \"ultravox.v1.CallMedium_TelnyxMedium\" has no field named \"destinationPhoneNumber\""),
            "{mode}: {e:?}"
        );
        let mut body = good(Operation::UltravoxStartCall);
        body["medium"]["twilio"]["outgoing"]["callerName"] = json!("x");
        let e = errs(c, Operation::UltravoxStartCall, &body);
        assert!(
            has(&e, "medium.twilio.outgoing.callerName: Message type \"ultravox.v1.TwilioMedium_OutgoingRequestParams\""),
            "{mode}: {e:?}"
        );
        let mut body = good(Operation::VapiCreateCall);
        body["customer"]["phone"] = json!("x");
        let e = errs(c, Operation::VapiCreateCall, &body);
        assert!(has(&e, "customer.phone: property phone should not exist"), "{mode}: {e:?}");
    }
    // Deeper than the built-in lists go: only the schema sees these.
    let c = loaded();
    let mut body = good(Operation::UltravoxStartCall);
    body["firstSpeakerSettings"]["agent"]["greeting"] = json!("x");
    let e = errs(c, Operation::UltravoxStartCall, &body);
    assert!(has(&e, "firstSpeakerSettings.agent.greeting: Message type \"ultravox.v1.FirstSpeakerSettings_AgentGreeting\""), "{e:?}");
    let mut body = good(Operation::UltravoxStartCall);
    body["selectedTools"][0]["bogus"] = json!(1);
    let e = errs(c, Operation::UltravoxStartCall, &body);
    assert!(has(&e, "selectedTools[0].bogus: Message type \"ultravox.v1.SelectedTool\""), "{e:?}");
    let mut body = good(Operation::VapiCreateCall);
    body["assistantOverrides"]["firstMesage"] = json!("typo");
    let e = errs(c, Operation::VapiCreateCall, &body);
    assert!(has(&e, "assistantOverrides.firstMesage: property firstMesage should not exist"), "{e:?}");
    let mut body = good(Operation::RetellCreatePhoneCall);
    body["agent_override"] = json!({"agent": {"voice_idd": "x"}});
    let e = errs(c, Operation::RetellCreatePhoneCall, &body);
    assert!(has(&e, "agent_override.agent.voice_idd: unknown field"), "{e:?}");
}

#[test]
fn the_seeds_old_ultravox_body_is_refused() {
    let old = json!({
        "agentId": "7a2f5b8e-0000-4000-8000-000000000001",
        "medium": {"telnyx": {"destinationPhoneNumber": "+15551230001"}},
        "firstSpeaker": "FIRST_SPEAKER_AGENT",
        "templateContext": {}
    });
    let bytes = serde_json::to_vec(&old).unwrap();
    for (mode, c) in both() {
        let e = c.check_http("POST", "/api/calls", "application/json", &bytes).unwrap_err();
        for needle in [
            "agentId: Message type \"ultravox.v1.StartCallRequest\" has no field named \"agentId\"",
            "templateContext: Message type \"ultravox.v1.StartCallRequest\"",
            "medium.telnyx.destinationPhoneNumber: Message type",
            "medium.telnyx.outgoing: required",
        ] {
            assert!(has(&e, needle), "{mode}: missing {needle:?} in {e:?}");
        }
    }
}

#[test]
fn ultravox_semantics() {
    let op = Operation::UltravoxStartAgentCall;
    for (mode, c) in both() {
        let mut b = good(op);
        b["metadata"]["attempt"] = json!(2);
        let e = errs(c, op, &b);
        assert!(has(&e, "metadata.attempt: "), "{mode}: {e:?}");
        assert_eq!(e.len(), 1, "{mode}: one message per field: {e:?}");

        let mut b = good(op);
        b["metadata"]["ultravox.call"] = json!("x");
        assert!(has(&errs(c, op, &b), "may not start with \"ultravox.\""), "{mode}");

        let mut b = good(op);
        b["medium"]["twilio"] = json!({"outgoing": {"to": "+15551230001", "from": "+15550000000"}});
        let e = errs(c, op, &b);
        assert!(has(&e, "medium: at most one medium may be set, got 2"), "{mode}: {e:?}");

        let mut b = good(op);
        b["medium"] = json!({"telnyx": {}});
        let e = errs(c, op, &b);
        assert!(has(&e, "medium.telnyx.outgoing: required") && has(&e, "dials nobody"), "{mode}: {e:?}");

        let mut b = good(op);
        b.as_object_mut().unwrap().remove("medium");
        let e = errs(c, op, &b);
        assert!(has(&e, "no phone call would be placed: medium.<carrier>.outgoing is required"), "{mode}: {e:?}");

        let mut b = good(op);
        b["medium"] = json!({"webRtc": {}});
        assert!(has(&errs(c, op, &b), "no phone call would be placed"), "{mode}");

        let mut b = good(op);
        b["medium"] = outgoing("5551230001");
        assert!(has(&errs(c, op, &b), "medium.telnyx.outgoing.to: \"5551230001\" is not an E.164 number"), "{mode}");
        b["medium"] = json!({"plivo": {"outgoing": {"to": "+15551230001"}}});
        assert!(has(&errs(c, op, &b), "medium.plivo.outgoing.from: required"), "{mode}");

        let mut b = good(op);
        b["firstSpeakerSettings"] = json!({"user": {}, "agent": {}});
        assert!(has(&errs(c, op, &b), "firstSpeakerSettings: exactly one of user or agent"), "{mode}");

        let sc = Operation::UltravoxStartCall;
        let mut b = good(sc);
        b["firstSpeaker"] = json!("FIRST_SPEAKER_USER");
        assert!(has(&errs(c, sc, &b), "firstSpeaker: FIRST_SPEAKER_USER does not match firstSpeakerSettings.agent"), "{mode}");
    }
    // The schema's own rules: types and patterns, with paths.
    let c = loaded();
    let mut b = good(op);
    b["maxDuration"] = json!("5 minutes");
    assert!(has(&errs(c, op, &b), "maxDuration: \"5 minutes\" does not match the pattern"));
    let mut b = good(op);
    b["recordingEnabled"] = json!("yes");
    assert!(has(&errs(c, op, &b), "recordingEnabled: expected boolean, got string"));
}

#[test]
fn twilio_checks() {
    let op = Operation::TwilioCreateCall;
    for (mode, c) in both() {
        let mut b = good(op);
        b.as_object_mut().unwrap().remove("To");
        assert!(has(&errs(c, op, &b), "To: required"), "{mode}");
        let mut b = good(op);
        b.as_object_mut().unwrap().remove("Url");
        assert!(has(&errs(c, op, &b), "Url: one of Url, Twiml or ApplicationSid is required"), "{mode}");
        let mut b = good(op);
        b["Twiml"] = json!("<Response/>");
        assert!(has(&errs(c, op, &b), "exactly one of Url, Twiml or ApplicationSid"), "{mode}");
        // Empty values count as not given (Twilio's own example sends Url= with Twiml).
        b["Url"] = json!("");
        assert!(c.check(op, &b).is_ok(), "{mode}");
        let mut b = good(op);
        b["MachineDetection"] = json!("enable-please");
        assert!(has(&errs(c, op, &b), "MachineDetection: "), "{mode}");
        let mut b = good(op);
        b["StatusCallbackEvent"] = json!("completed");
        assert!(c.check(op, &b).is_ok(), "{mode}: a single event is a one-element array");
    }
    let c = loaded();
    let mut b = good(op);
    b["Timeout"] = json!("soon");
    assert!(has(&errs(c, op, &b), "Timeout: expected integer, got string \"soon\""));
    b["Timeout"] = json!("15");
    assert!(c.check(op, &b).is_ok());
    b["Method"] = json!("PUT");
    assert!(has(&errs(c, op, &b), "Method: \"PUT\" is not one of"));
    let e = c
        .check_http(
            "POST",
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Calls.json",
            "application/x-www-form-urlencoded; charset=utf-8",
            b"To=%2B15551230003&From=%2B15550000000&Twiml=%3CResponse%2F%3E&Foo=1",
        )
        .unwrap_err();
    assert_eq!(e, vec!["Foo: unknown parameter \"Foo\" (not a Calls create parameter)".to_string()]);
}

#[test]
fn vapi_retell_bland_required_fields() {
    for (mode, c) in both() {
        let op = Operation::VapiCreateCall;
        let e = errs(c, op, &json!({}));
        for n in ["customer.number: required", "phoneNumberId: required", "assistantId: required"] {
            assert!(has(&e, n), "{mode}: {n} in {e:?}");
        }
        let mut b = good(op);
        b["customer"]["number"] = json!("555");
        assert!(has(&errs(c, op, &b), "customer.number: \"555\" is not an E.164"), "{mode}");
        b["customer"]["numberE164CheckEnabled"] = json!(false);
        assert!(c.check(op, &b).is_ok(), "{mode}: E.164 check can be switched off");

        let op = Operation::RetellCreatePhoneCall;
        let e = errs(c, op, &json!({"override_agent_id": "a"}));
        assert!(has(&e, "from_number: required") && has(&e, "to_number: required"), "{mode}: {e:?}");
        let mut b = good(op);
        b["to_number"] = json!("15551230005");
        assert!(has(&errs(c, op, &b), "to_number: \"15551230005\" is not an E.164"), "{mode}");
        let mut b = good(op);
        b["retell_llm_dynamic_variables"]["age"] = json!(42);
        assert!(has(&errs(c, op, &b), "retell_llm_dynamic_variables.age: dynamic variable values must be strings"), "{mode}");

        let op = Operation::BlandSendCall;
        let e = errs(c, op, &json!({"task": "x"}));
        assert!(has(&e, "phone_number: required"), "{mode}: {e:?}");
        let e = errs(c, op, &json!({"phone_number": "+15551230006"}));
        assert!(has(&e, "task: one of task or pathway_id is required"), "{mode}: {e:?}");
        let e = errs(c, op, &json!({"phone_number": "+15551230006", "pathway_id": "p", "task": "t"}));
        assert!(has(&e, "task must not be given together with pathway_id"), "{mode}: {e:?}");
        let mut b = good(op);
        b["wait_for_greeting"] = json!("yes");
        assert!(has(&errs(c, op, &b), "wait_for_greeting: expected boolean, got string"), "{mode}");
    }
}

#[test]
fn not_an_object() {
    for (_, c) in both() {
        let e = errs(c, Operation::UltravoxStartCall, &json!([1]));
        assert_eq!(e, vec!["(body): ultravox.v1.StartCallRequest must be a JSON object, got array".to_string()]);
        let e = c.check_http("POST", "/api/calls", "application/json", b"{nope").unwrap_err();
        assert!(has(&e, "(body): invalid JSON"), "{e:?}");
        let e = c.check_http("POST", "/api/calls", "application/json", b"").unwrap_err();
        assert!(has(&e, "empty request body"), "{e:?}");
    }
}

#[test]
fn identify_by_method_and_path() {
    let uuid = "7a2f5b8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    let sid = "AC0123456789abcdef0123456789abcdef";
    let cases = [
        ("POST", "/api/calls".to_string(), Some(Operation::UltravoxStartCall)),
        ("post", "/api/calls/?x=1".to_string(), Some(Operation::UltravoxStartCall)),
        ("POST", format!("/api/agents/{uuid}/calls"), Some(Operation::UltravoxStartAgentCall)),
        ("POST", "/api/agents/my-agent/calls".to_string(), None),
        ("POST", format!("/2010-04-01/Accounts/{sid}/Calls.json"), Some(Operation::TwilioCreateCall)),
        ("POST", "/2010-04-01/Accounts/AC1/Calls.json".to_string(), None),
        ("POST", "/call".to_string(), Some(Operation::VapiCreateCall)),
        ("POST", "/v2/create-phone-call".to_string(), Some(Operation::RetellCreatePhoneCall)),
        ("POST", "/v1/calls".to_string(), Some(Operation::BlandSendCall)),
        ("GET", "/api/calls".to_string(), None),
        ("POST", "/voiceapi/v1/calls".to_string(), None),
    ];
    for (m, p, want) in cases {
        assert_eq!(Contract::identify(m, &p), want, "{m} {p}");
    }
    let e = Contract::check_path("POST", "/api/agents/my-agent/calls").unwrap_err();
    assert_eq!(e, vec!["agent_id: \"my-agent\" is not a UUID (the path parameter has format: uuid)".to_string()]);
    let e = Contract::check_path("POST", "/2010-04-01/Accounts/AC1/Calls.json").unwrap_err();
    assert!(has(&e, "AccountSid: \"AC1\" does not match ^AC[0-9a-fA-F]{32}$"), "{e:?}");
    let e = loaded().check_http("POST", "/nope", "application/json", b"{}").unwrap_err();
    assert!(has(&e, "not a create-call request"), "{e:?}");
    assert!(is_uuid(uuid) && !is_uuid("7a2f5b8e1c3d4e5f8a9b0c1d2e3f4a5b"));
    assert!(is_e164("+15551230001") && !is_e164("+0123") && !is_e164("+1") && !is_e164("15551230001"));
}

/// The built-in name lists must say exactly what the spec files say.
#[test]
fn builtin_name_lists_match_the_specs() {
    let dir = spec_dir();
    let load = |f: &str| openapi::load_json(&dir.join(f)).unwrap();
    let uv = load("ultravox-openapi.json");
    let tw = load("twilio-calls-openapi.json");
    let va = load("vapi-calls-openapi.json");
    let re = load("retell-calls-openapi.json");
    let props = |doc: &Value, ptr: &str| -> Vec<String> {
        let mut v: Vec<String> =
            doc.pointer(ptr).and_then(Value::as_object).unwrap_or_else(|| panic!("{ptr} not in spec")).keys().cloned().collect();
        v.sort();
        v
    };
    let list = |l: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = l.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let s = "/components/schemas/";
    use semantic::*;
    let cases: Vec<(&Value, String, &[&str])> = vec![
        (&uv, format!("{s}ultravox.v1.StartCallRequest/properties"), ULTRAVOX_START_CALL_FIELDS),
        (&uv, format!("{s}ultravox.v1.StartAgentCallRequest/properties"), ULTRAVOX_START_AGENT_CALL_FIELDS),
        (&uv, format!("{s}ultravox.v1.CallMedium/properties"), ULTRAVOX_MEDIUM_FIELDS),
        (&uv, format!("{s}ultravox.v1.FirstSpeakerSettings/properties"), ULTRAVOX_FIRST_SPEAKER_FIELDS),
        (&tw, "/paths/~12010-04-01~1Accounts~1{AccountSid}~1Calls.json/post/requestBody/content/application~1x-www-form-urlencoded/schema/properties".into(), TWILIO_CREATE_CALL_FIELDS),
        (&va, format!("{s}CreateCallDTO/properties"), VAPI_CREATE_CALL_FIELDS),
        (&va, format!("{s}CreateCustomerDTO/properties"), VAPI_CUSTOMER_FIELDS),
        (&re, "/paths/~1v2~1create-phone-call/post/requestBody/content/application~1json/schema/properties".into(), RETELL_CREATE_PHONE_CALL_FIELDS),
    ];
    for (doc, ptr, l) in cases {
        assert_eq!(list(l), props(doc, &ptr), "{ptr}");
    }
    for (_, medium, outgoing) in ULTRAVOX_PHONE_CARRIERS {
        let m = medium.trim_start_matches("ultravox.v1.");
        assert_eq!(list(ULTRAVOX_PHONE_MEDIUM_FIELDS), props(&uv, &format!("{s}ultravox.v1.{m}/properties")), "{medium}");
        assert_eq!(list(ULTRAVOX_OUTGOING_FIELDS), props(&uv, &format!("{s}{outgoing}/properties")), "{outgoing}");
    }
}

#[test]
fn nullable_fields_accept_null() {
    // Retell's agent override has nullable fields; `null` must pass, a wrong type must not.
    let c = loaded();
    let op = Operation::RetellCreatePhoneCall;
    let mut b = good(op);
    b["agent_override"] = json!({"retell_llm": {"kb_config": null}});
    assert!(c.check(op, &b).is_ok(), "{:?}", c.check(op, &b));
    b["agent_override"] = json!({"retell_llm": {"kb_config": 5}});
    assert!(c.check(op, &b).is_err());
}
