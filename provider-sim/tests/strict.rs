//! The simulator refuses what the real providers refuse, in each provider's own error shape,
//! creates no call for it and logs it as `fault: "invalid_request"`; and the new providers'
//! happy paths (Vapi, Retell, Bland), 503s and the Ultravox agent-call endpoint.

mod support;

use provider_sim::provider_contract::default_spec_dir;
use provider_sim::{Provider, Rule, SimConfig, Simulator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use support::*;

fn spec_dir() -> PathBuf {
    default_spec_dir().expect(
        "provider spec directory not found: set PROVIDER_SPEC_DIR or keep shared/provider-specs \
         beside the repository (…/main and …/shared)",
    )
}

fn sim(spec: bool) -> Simulator {
    Simulator::start(
        SimConfig {
            api_key: Some(KEY.into()),
            call_duration_ms_min: 300,
            call_duration_ms_max: 300,
            spec_dir: spec.then(spec_dir),
            ..SimConfig::default()
        },
        0,
    )
    .expect("start simulator")
}

fn both() -> [(&'static str, Simulator); 2] {
    [("builtin", sim(false)), ("spec", sim(true))]
}

fn uv(sim: &Simulator, path: &str, body: &Value) -> Resp {
    finish(agent().post(&format!("{}{path}", sim.base_url())).set("X-API-Key", KEY).send_json(body))
}

fn uv_get(sim: &Simulator, path: &str) -> Resp {
    finish(agent().get(&format!("{}{path}", sim.base_url())).set("X-API-Key", KEY).call())
}

fn bearer(sim: &Simulator, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let req = agent().request(method, &format!("{}{path}", sim.base_url())).set("Authorization", &format!("Bearer {KEY}"));
    finish(match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    })
}

fn bland(sim: &Simulator, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let req = agent().request(method, &format!("{}{path}", sim.base_url())).set("authorization", KEY);
    finish(match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    })
}

fn medium(to: &str) -> Value {
    json!({"telnyx": {"outgoing": {"to": to, "from": "+15550000000"}}})
}

/// The last request was refused: no call, logged with the reason.
fn assert_refused(sim: &Simulator, needle: &str) {
    assert!(sim.calls().is_empty(), "a refused request creates no call");
    let rec = sim.requests().pop().expect("a request record");
    assert_eq!(rec.fault.as_deref(), Some("invalid_request"), "{rec:?}");
    let err = rec.error.unwrap_or_default();
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn ultravox_refusals_name_the_field() {
    for (mode, sim) in both() {
        let agent_path = format!("/api/agents/{AGENT}/calls");
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/api/calls",
                json!({"medium": {"telnyx": {"destinationPhoneNumber": "+15551230001", "outgoing": {"to": "+15551230001", "from": "+15550000000"}}}}),
                "medium.telnyx.destinationPhoneNumber: Message type \"ultravox.v1.CallMedium_TelnyxMedium\" has no field named \"destinationPhoneNumber\"",
            ),
            (
                "/api/calls",
                json!({"agentId": AGENT, "medium": medium("+15551230001")}),
                "agentId: Message type \"ultravox.v1.StartCallRequest\" has no field named \"agentId\"",
            ),
            (
                &agent_path,
                json!({"medium": medium("+15551230001"), "metadata": {"attempt": 1}}),
                "metadata.attempt: metadata values must be strings",
            ),
            (
                &agent_path,
                json!({"medium": {"telnyx": {"outgoing": {"to": "+15551230001", "from": "+15550000000"}}, "twilio": {"outgoing": {"to": "+15551230001", "from": "+15550000000"}}}}),
                "medium: at most one medium may be set, got 2",
            ),
            (
                &agent_path,
                json!({"medium": {"telnyx": {}}}),
                "medium.telnyx.outgoing: required: without outgoing Ultravox dials nobody",
            ),
            (
                &agent_path,
                json!({"templateContext": {"name": "Ada"}}),
                "no phone call would be placed: medium.<carrier>.outgoing is required",
            ),
        ];
        for (path, body, needle) in cases {
            let r = uv(&sim, path, &body);
            assert_eq!(r.status, 400, "{mode} {path} {body}: {:?}", r.body);
            let detail = r.body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(needle), "{mode}: {needle:?} not in {detail:?}");
            assert_refused(&sim, needle);
        }
        // The seed's old body, as it was sent.
        let old = json!({"agentId": AGENT, "medium": {"telnyx": {"destinationPhoneNumber": "+15551230001"}},
                         "firstSpeaker": "FIRST_SPEAKER_AGENT", "templateContext": {}});
        let r = uv(&sim, "/api/calls", &old);
        assert_eq!(r.status, 400, "{mode}");
        for needle in ["agentId", "templateContext", "destinationPhoneNumber", "medium.telnyx.outgoing: required"] {
            assert!(r.body["detail"].as_str().unwrap_or_default().contains(needle), "{mode}: {needle} in {:?}", r.body);
        }
        // Not a UUID: the agent route does not exist.
        let r = uv(&sim, "/api/agents/my-agent/calls", &json!({"medium": medium("+15551230001")}));
        assert_eq!(r.status, 404, "{mode}");
        assert!(r.body["detail"].as_str().unwrap_or_default().contains("agent_id"), "{:?}", r.body);
        assert_refused(&sim, "is not a UUID");
    }
}

#[test]
fn ultravox_agent_call_records_the_agent() {
    let sim = sim(false);
    let body = json!({"templateContext": {"name": "Ada"}, "medium": medium("+15551230002"),
                      "firstSpeakerSettings": {"user": {}}, "metadata": {"batch_id": "b1"}});
    let r = uv(&sim, &format!("/api/agents/{AGENT}/calls"), &body);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["agentId"], AGENT);
    assert_eq!(r.body["firstSpeaker"], "FIRST_SPEAKER_USER");
    assert!(r.body.get("templateContext").is_none(), "not a Call field");
    let calls = sim.calls();
    assert_eq!(calls[0].agent_id.as_deref(), Some(AGENT));
    assert_eq!(calls[0].to.as_deref(), Some("+15551230002"));
    assert_eq!(calls[0].from.as_deref(), Some("+15550000000"));
    let id = r.body["callId"].as_str().unwrap();
    assert_eq!(uv_get(&sim, &format!("/api/calls/{id}")).body["agentId"], AGENT);
    let l = uv_get(&sim, "/api/calls?metadata.batch_id=b1&fromDate=2000-01-01&pageSize=5");
    assert_eq!(l.body["total"], 1);
    let l = uv_get(&sim, "/api/calls?metadata.batch_id=b1&fromDate=2999-01-01");
    assert_eq!(l.body["total"], 0);
}

#[test]
fn the_real_spec_dir_loads_and_is_stricter() {
    let dir = spec_dir();
    let sim = sim(true);
    assert_eq!(sim.spec_dir().as_deref(), Some(dir.as_path()));
    // A field deeper than the built-in lists reach: only the schema refuses it.
    let body = json!({"medium": medium("+15551230003"), "firstSpeakerSettings": {"agent": {"greeting": "hi"}}});
    let r = uv(&sim, "/api/calls", &body);
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains(
        "firstSpeakerSettings.agent.greeting: Message type \"ultravox.v1.FirstSpeakerSettings_AgentGreeting\" has no field named \"greeting\""
    ), "{:?}", r.body);
    let r = uv(&sim, "/api/calls", &json!({"medium": medium("+15551230003"), "maxDuration": "5m"}));
    assert_eq!(r.status, 400);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("maxDuration"));
    assert_eq!(uv(&sim, "/api/calls", &json!({"medium": medium("+15551230003"), "maxDuration": "300s"})).status, 201);
    // The control API shows which checks are on.
    let cfg = finish(agent().get(&format!("{}/_sim/config", sim.base_url())).call());
    assert_eq!(cfg.body["spec_dir"], dir.display().to_string());
    // A bad directory stops the simulator from starting, with the reason.
    let e = Simulator::start(SimConfig { spec_dir: Some(dir.join("no-such-dir")), ..SimConfig::default() }, 0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("no-such-dir"), "{e}");
}

/// Every value the simulator writes into an enum field is one the spec lists.
#[test]
fn end_reasons_map_to_values_the_specs_list() {
    let dir = spec_dir();
    let load = |f: &str| -> Value { serde_json::from_slice(&std::fs::read(dir.join(f)).expect(f)).expect(f) };
    let vapi = load("vapi-calls-openapi.json");
    let retell = load("retell-calls-openapi.json");
    let enum_of = |doc: &Value, ptr: &str| -> Vec<String> {
        doc.pointer(ptr)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{ptr}"))
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    let vapi_reasons = enum_of(&vapi, "/components/schemas/Call/properties/endedReason/enum");
    let vapi_status = enum_of(&vapi, "/components/schemas/Call/properties/status/enum");
    let retell_reasons = enum_of(&retell, "/components/schemas/DisconnectionReason/enum");
    let retell_status = enum_of(&retell, "/components/schemas/V2CallBase/properties/call_status/enum");
    let sim = sim(false);
    let reasons = [
        "hangup",
        "agent_hangup",
        "voicemail",
        "busy",
        "no-answer",
        "unjoined",
        "failed",
        "connection_error",
        "canceled",
        "timeout",
        "system_error",
    ];
    let mut rules = Vec::new();
    for (i, reason) in reasons.iter().enumerate() {
        rules.push(Rule::new(format!("+1555444{i:04}")).duration_ms(60).end_reason(*reason));
    }
    sim.set_rules(rules);
    let mut ids = Vec::new();
    for i in 0..reasons.len() {
        let to = format!("+1555444{i:04}");
        let v = bearer(&sim, "POST", "/call", Some(&json!({"assistantId": "a", "phoneNumberId": "p", "customer": {"number": to}})));
        assert_eq!(v.status, 201, "{:?}", v.body);
        let r = bearer(&sim, "POST", "/v2/create-phone-call", Some(&json!({"from_number": "+15550000000", "to_number": to})));
        assert_eq!(r.status, 201, "{:?}", r.body);
        ids.push((v.body["id"].as_str().unwrap().to_string(), r.body["call_id"].as_str().unwrap().to_string()));
    }
    std::thread::sleep(Duration::from_millis(150));
    for (v, r) in ids {
        let v = bearer(&sim, "GET", &format!("/call/{v}"), None).body;
        assert!(vapi_reasons.contains(&v["endedReason"].as_str().unwrap().to_string()), "{v}");
        assert!(vapi_status.contains(&v["status"].as_str().unwrap().to_string()), "{v}");
        let r = bearer(&sim, "GET", &format!("/v2/get-call/{r}"), None).body;
        assert!(retell_reasons.contains(&r["disconnection_reason"].as_str().unwrap().to_string()), "{r}");
        assert!(retell_status.contains(&r["call_status"].as_str().unwrap().to_string()), "{r}");
    }
}

#[test]
fn twilio_refusals() {
    for (mode, sim) in both() {
        let url = format!("{}/2010-04-01/Accounts/{SID}/Calls.json", sim.base_url());
        let post = |form: &[(&str, &str)]| finish(agent().post(&url).set("Authorization", &basic(SID, KEY)).send_form(form));
        let r = post(&[("From", "+15550000000"), ("Url", "http://127.0.0.1:9/twiml")]);
        assert_eq!((r.status, r.body["code"].as_i64(), r.body["status"].as_i64()), (400, Some(21201), Some(400)), "{mode}");
        assert!(r.body["message"].as_str().unwrap().contains("To: required"), "{:?}", r.body);
        assert!(r.body["more_info"].as_str().unwrap().contains("21201"));
        assert_refused(&sim, "To: required");
        let r = post(&[("To", "+15551230004"), ("From", "+15550000000")]);
        assert_eq!(r.status, 400, "{mode}");
        assert!(r.body["message"].as_str().unwrap().contains("Url: one of Url, Twiml or ApplicationSid is required"), "{:?}", r.body);
        let r = post(&[("To", "+15551230004"), ("From", "+15550000000"), ("Twiml", "<Response/>"), ("IfMachine", "Continue")]);
        assert_eq!(r.status, 400, "{mode}");
        assert!(r.body["message"].as_str().unwrap().contains("IfMachine: unknown parameter"), "{:?}", r.body);
        let r = post(&[("To", "+15551230004"), ("Twiml", "<Response/>")]);
        assert_eq!((r.status, r.body["code"].as_i64()), (400, Some(21213)), "{mode}: missing From");
    }
}

#[test]
fn twilio_answered_by_follows_machine_detection() {
    let sim = sim(true);
    sim.set_rules(vec![
        Rule::new("+15551230005").duration_ms(200).end_reason("voicemail"),
        Rule::new("+15551230006").duration_ms(200).end_reason("voicemail"),
        Rule::new("+15551230007").duration_ms(200),
    ]);
    let url = format!("{}/2010-04-01/Accounts/{SID}/Calls.json", sim.base_url());
    let mut sids = Vec::new();
    for (to, md) in [("+15551230005", "Enable"), ("+15551230006", "DetectMessageEnd"), ("+15551230007", "Enable")] {
        let r = finish(agent().post(&url).set("Authorization", &basic(SID, KEY)).send_form(&[
            ("To", to),
            ("From", "+15550000000"),
            ("Twiml", "<Response/>"),
            ("MachineDetection", md),
        ]));
        assert_eq!(r.status, 201, "{:?}", r.body);
        sids.push(r.body["sid"].as_str().unwrap().to_string());
    }
    std::thread::sleep(Duration::from_millis(250));
    let got: Vec<Value> = sids
        .iter()
        .map(|s| {
            finish(
                agent()
                    .get(&format!("{}/2010-04-01/Accounts/{SID}/Calls/{s}.json", sim.base_url()))
                    .set("Authorization", &basic(SID, KEY))
                    .call(),
            )
            .body
        })
        .collect();
    assert_eq!(got[0]["answered_by"], "machine_start");
    assert_eq!(got[1]["answered_by"], "machine_end_beep");
    assert_eq!(got[2]["answered_by"], "human");
    for g in &got {
        assert_eq!(g["status"], "completed");
        for k in ["start_time", "end_time", "date_created"] {
            assert!(chrono::DateTime::parse_from_rfc2822(g[k].as_str().unwrap()).is_ok(), "{k}: {g}");
        }
    }
}

#[test]
fn vapi_create_get_list_and_refusals() {
    for (mode, sim) in both() {
        let body = json!({"assistantId": "asst_1", "phoneNumberId": "pn_1",
                          "customer": {"number": "+15551230010", "name": "Ada"},
                          "assistantOverrides": {"variableValues": {"name": "Ada"}, "metadata": {"batch_id": "b1", "idempotency_key": "v-1"}}});
        let r = finish(agent().post(&format!("{}/call", sim.base_url())).set("Authorization", "Bearer nope").send_json(&body));
        assert_eq!((r.status, r.body["statusCode"].as_i64()), (401, Some(401)), "{mode}");
        let r = bearer(&sim, "POST", "/call", Some(&body));
        assert_eq!(r.status, 201, "{mode}: {:?}", r.body);
        assert_eq!(r.body["status"], "queued");
        assert_eq!(r.body["assistantId"], "asst_1");
        assert_eq!(r.body["phoneNumberId"], "pn_1");
        assert_eq!(r.body["customer"]["number"], "+15551230010");
        assert!(r.body["createdAt"].is_string());
        let id = r.body["id"].as_str().unwrap().to_string();
        let calls = sim.calls();
        assert_eq!(calls[0].provider, Provider::Vapi);
        assert_eq!(calls[0].metadata["idempotency_key"], "v-1");
        assert_eq!(calls[0].agent_id.as_deref(), Some("asst_1"));
        let mut seen = Vec::new();
        let done = poll_until(Duration::from_secs(5), || {
            let g = bearer(&sim, "GET", &format!("/call/{id}"), None);
            assert_eq!(g.status, 200);
            let s = g.body["status"].as_str().unwrap().to_string();
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            (s == "ended").then_some(g.body)
        });
        assert_eq!(done["endedReason"], "customer-ended-call");
        assert!(done["startedAt"].is_string() && done["endedAt"].is_string());
        for s in &seen {
            assert!(["queued", "ringing", "in-progress", "ended"].contains(&s.as_str()), "{seen:?}");
        }
        let l = bearer(&sim, "GET", "/call?assistantId=asst_1&createdAtGt=2000-01-01T00:00:00Z&limit=10", None);
        assert_eq!(l.body.as_array().map(Vec::len), Some(1), "{:?}", l.body);
        let l = bearer(&sim, "GET", "/call?assistantId=other", None);
        assert_eq!(l.body, json!([]));
        assert_eq!(bearer(&sim, "GET", "/call/nope", None).status, 404);

        let r = bearer(&sim, "POST", "/call", Some(&json!({"assistantId": "a"})));
        assert_eq!(r.status, 400, "{mode}");
        assert_eq!((r.body["error"].as_str(), r.body["statusCode"].as_i64()), (Some("Bad Request"), Some(400)));
        let msgs: Vec<String> = r.body["message"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
        assert!(msgs.iter().any(|m| m.starts_with("customer.number: required")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("phoneNumberId: required")), "{msgs:?}");
        let mut bad = body.clone();
        bad["metadata"] = json!({"batch_id": "b1"});
        let r = bearer(&sim, "POST", "/call", Some(&bad));
        assert_eq!(r.status, 400, "{mode}");
        assert!(r.body["message"][0].as_str().unwrap().contains("property metadata should not exist"), "{:?}", r.body);
        assert_eq!(sim.calls().len(), 1, "refused requests create no call");
    }
}

#[test]
fn retell_create_get_list_and_refusals() {
    for (mode, sim) in both() {
        let body = json!({"from_number": "+15550000000", "to_number": "+15551230020", "override_agent_id": "agent_x",
                          "metadata": {"batch_id": "b1", "idempotency_key": "r-1"},
                          "retell_llm_dynamic_variables": {"name": "Ada"}});
        let r = bearer(&sim, "POST", "/v2/create-phone-call", Some(&body));
        assert_eq!(r.status, 201, "{mode}: {:?}", r.body);
        for (k, v) in [
            ("call_type", "phone_call"),
            ("call_status", "registered"),
            ("agent_id", "agent_x"),
            ("from_number", "+15550000000"),
            ("to_number", "+15551230020"),
            ("direction", "outbound"),
        ] {
            assert_eq!(r.body[k], v, "{k}");
        }
        assert_eq!(r.body["metadata"]["idempotency_key"], "r-1");
        assert_eq!(r.body["retell_llm_dynamic_variables"]["name"], "Ada");
        let id = r.body["call_id"].as_str().unwrap().to_string();
        let done = poll_until(Duration::from_secs(5), || {
            let g = bearer(&sim, "GET", &format!("/v2/get-call/{id}"), None);
            assert_eq!(g.status, 200);
            (g.body["call_status"] == "ended").then_some(g.body)
        });
        assert_eq!(done["disconnection_reason"], "user_hangup");
        let (s, e) = (done["start_timestamp"].as_i64().unwrap(), done["end_timestamp"].as_i64().unwrap());
        assert!(e > s && s > 1_600_000_000_000, "epoch ms: {s} {e}");
        let l = bearer(&sim, "POST", "/v2/list-calls", Some(&json!({"filter_criteria": {"metadata": {"idempotency_key": ["r-1"]}}})));
        assert_eq!(l.body[0]["call_id"], id.as_str(), "{:?}", l.body);
        let l = bearer(&sim, "POST", "/v2/list-calls", Some(&json!({"filter_criteria": {"metadata": {"idempotency_key": ["r-2"]}}})));
        assert_eq!(l.body, json!([]));
        assert_eq!(bearer(&sim, "GET", "/v2/get-call/nope", None).status, 404);

        let r = bearer(&sim, "POST", "/v2/create-phone-call", Some(&json!({"to_number": "5551230020"})));
        assert_eq!(r.status, 400, "{mode}");
        let m = r.body["error_message"].as_str().unwrap();
        assert!(m.contains("from_number: required") && m.contains("to_number: \"5551230020\" is not an E.164"), "{m}");
        let mut bad = body.clone();
        bad["retell_llm_dynamic_variables"]["age"] = json!(3);
        let r = bearer(&sim, "POST", "/v2/create-phone-call", Some(&bad));
        assert!(r.body["error_message"].as_str().unwrap().contains("retell_llm_dynamic_variables.age"), "{:?}", r.body);
        assert_refused_after(&sim, 1, "retell_llm_dynamic_variables.age");
    }
}

/// Like `assert_refused` when some calls were created before.
fn assert_refused_after(sim: &Simulator, calls: usize, needle: &str) {
    assert_eq!(sim.calls().len(), calls);
    let rec = sim.requests().into_iter().rev().find(|r| r.method == "POST").unwrap();
    assert_eq!(rec.fault.as_deref(), Some("invalid_request"));
    assert!(rec.error.unwrap_or_default().contains(needle));
}

#[test]
fn bland_send_call_and_details() {
    let sim = sim(false);
    let body = json!({"phone_number": "+15551230030", "task": "Say hello", "from": "+15550000000",
                      "request_data": {"name": "Ada"}, "metadata": {"batch_id": "b1"},
                      "answered_by_enabled": true, "max_duration": 5});
    let r = finish(agent().post(&format!("{}/v1/calls", sim.base_url())).set("authorization", &format!("Bearer {KEY}")).send_json(&body));
    assert_eq!(r.status, 401, "Bland takes the bare key");
    assert!(r.body["message"].as_str().unwrap().contains("without \"Bearer\""));
    let r = bland(&sim, "POST", "/v1/calls", Some(&body));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "success");
    assert!(r.body["message"].is_string());
    let id = r.body["call_id"].as_str().unwrap().to_string();
    let g = bland(&sim, "GET", &format!("/v1/calls/{id}"), None);
    assert_eq!(g.body["status"], "queued");
    assert_eq!(g.body["completed"], false);
    let done = poll_until(Duration::from_secs(5), || {
        let g = bland(&sim, "GET", &format!("/v1/calls/{id}"), None);
        (g.body["completed"] == true).then_some(g.body)
    });
    assert_eq!(done["status"], "completed");
    assert_eq!(done["answered_by"], "human");
    assert!(done["call_length"].as_f64().is_some());
    assert_eq!(done["to"], "+15551230030");
    assert_eq!(done["from"], "+15550000000");
    assert_eq!(done["metadata"]["batch_id"], "b1");
    assert_eq!(done["request_data"]["name"], "Ada");
    assert_eq!(sim.calls()[0].provider, Provider::Bland);

    for (bad, needle) in [
        (json!({"task": "x"}), "phone_number: required"),
        (json!({"phone_number": "+15551230031"}), "task: one of task or pathway_id is required"),
        (
            json!({"phone_number": "+15551230031", "task": "x", "language_code": "en"}),
            "\"language_code\" is not a documented Send Call parameter",
        ),
    ] {
        let r = bland(&sim, "POST", "/v1/calls", Some(&bad));
        assert_eq!((r.status, r.body["status"].as_str()), (400, Some("error")), "{bad}");
        assert!(r.body["message"].as_str().unwrap().contains(needle), "{:?}", r.body);
        assert_refused_after(&sim, 1, needle);
    }
}

#[test]
fn capacity_503_with_retry_after() {
    let sim = sim(false);
    sim.set_rules(vec![Rule::new("+15551230040").status(503).retry_after_secs(7).times(1)]);
    let r = uv(&sim, "/api/calls", &json!({"medium": medium("+15551230040")}));
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("7")));
    assert!(r.body["detail"].is_string());
    assert_eq!(sim.requests()[0].fault.as_deref(), Some("capacity"));
    assert!(sim.calls().is_empty());
    assert_eq!(uv(&sim, "/api/calls", &json!({"medium": medium("+15551230040")})).status, 201);

    sim.update(|c| {
        c.capacity_rate = 1.0;
        c.retry_after_secs = 4;
    });
    let r = bearer(&sim, "POST", "/v2/create-phone-call", Some(&json!({"from_number": "+15550000000", "to_number": "+15551230041"})));
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("4")));
    assert!(r.body["error_message"].is_string());
    let r = finish(
        agent()
            .post(&format!("{}/2010-04-01/Accounts/{SID}/Calls.json", sim.base_url()))
            .set("Authorization", &basic(SID, KEY))
            .send_form(&[("To", "+15551230042"), ("From", "+15550000000"), ("Twiml", "<Response/>")]),
    );
    assert_eq!((r.status, r.retry_after.as_deref(), r.body["status"].as_i64()), (503, Some("4"), Some(503)));
    let r = bearer(&sim, "POST", "/call", Some(&json!({"assistantId": "a", "phoneNumberId": "p", "customer": {"number": "+15551230043"}})));
    assert_eq!((r.status, r.body["statusCode"].as_i64()), (503, Some(503)));
    let r = bland(&sim, "POST", "/v1/calls", Some(&json!({"phone_number": "+15551230044", "task": "t"})));
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("4")));
    assert_eq!(sim.calls().len(), 1);
    assert_eq!(sim.stats().by_status.get("503"), Some(&5));
    // An invalid request is refused before any fault is drawn.
    let r = uv(&sim, "/api/calls", &json!({"medium": {}}));
    assert_eq!(r.status, 400);
}
