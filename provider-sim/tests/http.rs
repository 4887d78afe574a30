//! Drives an in-process simulator over real HTTP with ureq.
#![allow(clippy::result_large_err)]

mod support;

use provider_sim::{max_concurrent_calls, Provider, Rule, SimClient, SimConfig, Simulator};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{agent, basic, fresh_temp_file, poll_until, try_finish, Resp, KEY, SID};

fn uv_post(a: &ureq::Agent, sim: &Simulator, key: Option<&str>, body: &Value) -> Result<Resp, ureq::Transport> {
    let mut req = a.post(&format!("{}/api/calls", sim.base_url()));
    if let Some(k) = key {
        req = req.set("X-API-Key", k);
    }
    try_finish(req.send_json(body))
}

fn uv_get(a: &ureq::Agent, sim: &Simulator, path: &str) -> Resp {
    try_finish(a.get(&format!("{}{}", sim.base_url(), path)).set("X-API-Key", KEY).call()).expect("transport")
}

/// A `StartCallRequest` the real API accepts: the medium says whom to dial.
fn uv_body(to: &str, idem: &str) -> Value {
    json!({
        "systemPrompt": "You are a test agent",
        "medium": {"telnyx": {"outgoing": {"to": to, "from": "+15550000000"}}},
        "firstSpeaker": "FIRST_SPEAKER_AGENT",
        "metadata": {"batch_id": "b1", "contact_id": "c1", "idempotency_key": idem}
    })
}

fn keyed(config: SimConfig) -> Simulator {
    Simulator::start(SimConfig { api_key: Some(KEY.into()), ..config }, 0).expect("start simulator")
}

#[test]
fn ultravox_create_get_and_end() {
    let sim = keyed(SimConfig { call_duration_ms_min: 200, call_duration_ms_max: 200, ..SimConfig::default() });
    let a = agent();
    let r = uv_post(&a, &sim, Some(KEY), &uv_body("+15551230001", "k1")).unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["callId"].as_str().expect("callId").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(r.body["created"].as_str().unwrap()).is_ok());
    assert_eq!(r.body["joined"], Value::Null);
    assert_eq!(r.body["ended"], Value::Null);
    assert_eq!(r.body["endReason"], Value::Null);
    assert_eq!(r.body["metadata"]["idempotency_key"], "k1");
    assert_eq!(r.body["medium"]["telnyx"]["outgoing"]["to"], "+15551230001");
    assert_eq!(r.body["agentId"], Value::Null);
    assert_eq!(r.body["firstSpeaker"], "FIRST_SPEAKER_AGENT");
    assert_eq!(r.body["joinUrl"], format!("wss://sim.invalid/calls/{id}"));

    let g = uv_get(&a, &sim, &format!("/api/calls/{id}"));
    assert_eq!(g.status, 200);
    assert_eq!(g.body["callId"], id.as_str());
    let slash = uv_get(&a, &sim, &format!("/api/calls/{id}/"));
    assert_eq!((slash.status, &slash.body["callId"]), (200, &g.body["callId"]), "Ultravox also answers with a trailing slash");
    assert_eq!(uv_get(&a, &sim, "/api/calls/").status, 200);

    let ended = poll_until(Duration::from_secs(5), || {
        let g = uv_get(&a, &sim, &format!("/api/calls/{id}"));
        (!g.body["ended"].is_null()).then_some(g.body)
    });
    assert_eq!(ended["endReason"], "hangup");
    assert!(!ended["joined"].is_null());

    assert_eq!(uv_get(&a, &sim, "/api/calls/no-such-call").status, 404);
    assert_eq!(uv_get(&a, &sim, "/api/calls/no-such-call").body, json!({"detail": "Not found."}));

    let calls = sim.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].call_id, id);
    assert_eq!(calls[0].provider, Provider::Ultravox);
    assert_eq!(calls[0].to.as_deref(), Some("+15551230001"));
    assert_eq!(calls[0].ended_at_us - calls[0].created_at_us, 200_000);
    assert_eq!(calls[0].batch_id().as_deref(), Some("b1"));
}

#[test]
fn ultravox_outgoing_medium_rule_end_reason() {
    let sim = keyed(SimConfig::default());
    sim.set_rules(vec![Rule::new("+15550000009").duration_ms(100).end_reason("unjoined")]);
    let a = agent();
    let body = json!({"medium": {"plivo": {"outgoing": {"to": "+15550000009", "from": "+15550000000"}}}});
    let r = uv_post(&a, &sim, Some(KEY), &body).unwrap();
    assert_eq!(r.status, 201);
    let id = r.body["callId"].as_str().unwrap().to_string();
    let ended = poll_until(Duration::from_secs(5), || {
        let g = uv_get(&a, &sim, &format!("/api/calls/{id}"));
        (!g.body["ended"].is_null()).then_some(g.body)
    });
    assert_eq!(ended["endReason"], "unjoined");
    assert_eq!(ended["joined"], Value::Null);
    assert_eq!(sim.calls()[0].from.as_deref(), Some("+15550000000"));
}

#[test]
fn ultravox_auth_and_bad_requests() {
    let sim = keyed(SimConfig::default());
    let a = agent();
    let r = uv_post(&a, &sim, Some("wrong"), &uv_body("+15551230002", "k")).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.body, json!({"detail": "Invalid API key"}));
    assert_eq!(uv_post(&a, &sim, None, &uv_body("+15551230002", "k")).unwrap().status, 401);
    let g = try_finish(a.get(&format!("{}/api/calls/x", sim.base_url())).set("X-API-Key", "nope").call()).unwrap();
    assert_eq!(g.status, 401);

    // Malformed JSON, non-object, no destination: 400 with a JSON detail, never a panic.
    let url = format!("{}/api/calls", sim.base_url());
    for bad in ["{not json", "[1,2]", "{\"medium\":{}}", "{\"medium\":{\"telnyx\":{\"outgoing\":{\"to\":5}}}}", ""] {
        let r = try_finish(a.post(&url).set("X-API-Key", KEY).set("Content-Type", "application/json").send_string(bad)).unwrap();
        assert_eq!(r.status, 400, "body {bad:?} -> {:?}", r.body);
        assert!(r.body["detail"].is_string());
    }
    assert!(sim.calls().is_empty());
    let log = sim.requests();
    assert_eq!(log.len(), 8);
    assert!(!log[0].auth_ok && !log[1].auth_ok && !log[2].auth_ok && log[3].auth_ok);
    assert_eq!(log[0].status, Some(401));
    assert_eq!(log[3].body, Value::String("{not json".into()));
    for r in &log[3..] {
        assert_eq!(r.fault.as_deref(), Some("invalid_request"), "{r:?}");
        assert!(r.error.as_deref().is_some_and(|e| !e.is_empty()), "{r:?}");
    }
}

#[test]
fn rate_limit_rule_once_then_created() {
    let sim = keyed(SimConfig::default());
    sim.set_rules(vec![Rule::new("+15550000001").status(429).retry_after_secs(2).times(1)]);
    let a = agent();
    let r = uv_post(&a, &sim, Some(KEY), &uv_body("+15550000001", "k")).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.retry_after.as_deref(), Some("2"));
    assert!(r.body["detail"].is_string());
    assert!(sim.calls().is_empty(), "a rate-limited request creates no call");
    assert!(sim.config().rules.is_empty(), "rule consumed");
    let r = uv_post(&a, &sim, Some(KEY), &uv_body("+15550000001", "k")).unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(sim.calls().len(), 1);
    let log = sim.requests();
    assert_eq!(log[0].fault.as_deref(), Some("rate_limited"));
    assert_eq!(log[0].call_id, None);
    assert_eq!(log[1].call_id.as_deref(), r.body["callId"].as_str());
}

#[test]
fn error_rate_one_gives_500() {
    let sim = keyed(SimConfig { error_rate: 1.0, ..SimConfig::default() });
    let a = agent();
    for _ in 0..3 {
        let r = uv_post(&a, &sim, Some(KEY), &uv_body("+15551230003", "k")).unwrap();
        assert_eq!(r.status, 500);
        assert_eq!(r.body, json!({"detail": "Internal server error (simulated)"}));
    }
    assert!(sim.calls().is_empty());
    // A rule's message and status win over random faults.
    sim.set_rules(vec![Rule::new("+15551230004").status(503).message("boom")]);
    let r = uv_post(&a, &sim, Some(KEY), &uv_body("+15551230004", "k")).unwrap();
    assert_eq!((r.status, r.body["detail"].as_str()), (503, Some("boom")));
    sim.update(|c| c.error_rate = 0.0);
    assert_eq!(uv_post(&a, &sim, Some(KEY), &uv_body("+15551230003", "k")).unwrap().status, 201);
}

#[test]
fn drop_connection_is_a_transport_error() {
    let sim = keyed(SimConfig::default());
    sim.set_rules(vec![Rule::new("+15550000002").drop_connection().times(1)]);
    let a = agent();
    let err = uv_post(&a, &sim, Some(KEY), &uv_body("+15550000002", "k")).expect_err("transport error");
    assert!(matches!(err.kind(), ureq::ErrorKind::Io | ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::BadStatus), "{err}");
    assert!(sim.calls().is_empty());
    let rec = poll_until(Duration::from_secs(5), || sim.requests().pop().filter(|r| r.fault.is_some()));
    assert_eq!(rec.status, None);
    assert_eq!(rec.fault.as_deref(), Some("drop_connection"));
    // The server is fine afterwards.
    assert_eq!(uv_post(&agent(), &sim, Some(KEY), &uv_body("+15550000002", "k")).unwrap().status, 201);
}

#[test]
fn hang_makes_the_client_time_out_and_shutdown_is_prompt() {
    let sim = keyed(SimConfig::default());
    sim.set_rules(vec![Rule::new("+15550000003").hang()]);
    let a = ureq::AgentBuilder::new().timeout(Duration::from_millis(300)).build();
    let t0 = Instant::now();
    let err = uv_post(&a, &sim, Some(KEY), &uv_body("+15550000003", "k")).expect_err("timeout");
    assert!(t0.elapsed() >= Duration::from_millis(300), "{err}");
    assert!(sim.calls().is_empty());
    assert_eq!(sim.requests()[0].fault.as_deref(), Some("hang"));
    // The server notices the client went away and closes the record unanswered.
    poll_until(Duration::from_secs(5), || (sim.stats().in_flight == 0).then_some(()));
    assert_eq!(sim.requests()[0].status, None);
    assert_eq!(sim.stats().unanswered, 1);
    let t1 = Instant::now();
    sim.shutdown();
    assert!(t1.elapsed() < Duration::from_secs(3));
}

#[test]
fn latency_delays_posts() {
    let sim = keyed(SimConfig { latency_ms: 150, ..SimConfig::default() });
    let a = agent();
    let t0 = Instant::now();
    assert_eq!(uv_post(&a, &sim, Some(KEY), &uv_body("+15551230005", "k")).unwrap().status, 201);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    let rec = &sim.requests()[0];
    assert!(rec.answered_at_us.unwrap() - rec.received_at_us >= 150_000);
}

#[test]
fn metadata_lookup_finds_the_call() {
    let sim = keyed(SimConfig::default());
    let a = agent();
    let r1 = uv_post(&a, &sim, Some(KEY), &uv_body("+15551230006", "idem-1")).unwrap();
    let r2 = uv_post(&a, &sim, Some(KEY), &uv_body("+15551230007", "idem-2")).unwrap();
    let found = uv_get(&a, &sim, "/api/calls?metadata.idempotency_key=idem-2");
    assert_eq!(found.status, 200);
    assert_eq!(found.body["total"], 1);
    assert_eq!(found.body["next"], Value::Null);
    assert_eq!(found.body["results"][0]["callId"], r2.body["callId"]);
    let none = uv_get(&a, &sim, "/api/calls?metadata.idempotency_key=idem-3&pageSize=10");
    assert_eq!(none.body["total"], 0);
    let both = uv_get(&a, &sim, "/api/calls?metadata.batch_id=b1&pageSize=1");
    assert_eq!(both.body["total"], 2);
    assert_eq!(both.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(both.body["results"][0]["callId"], r2.body["callId"], "newest first");
    let _ = r1;
}

#[test]
fn twilio_form_post_and_status_progression() {
    let sim = keyed(SimConfig { call_duration_ms_min: 300, call_duration_ms_max: 300, ..SimConfig::default() });
    let a = agent();
    let sid = SID;
    let url = format!("{}/2010-04-01/Accounts/{sid}/Calls.json", sim.base_url());
    let form = [
        ("To", "+15551230010"),
        ("From", "+15550001111"),
        ("Url", "https://example.invalid/twiml?batch_id=b7&contact_id=c9"),
        ("StatusCallback", "https://example.invalid/cb"),
        ("StatusCallbackEvent", "initiated"),
        ("StatusCallbackEvent", "completed"),
        ("MachineDetection", "Enable"),
    ];
    let r = try_finish(a.post(&url).set("Authorization", &basic(sid, KEY)).send_form(&form)).unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    let call_sid = r.body["sid"].as_str().unwrap().to_string();
    assert!(call_sid.starts_with("CA") && call_sid.len() == 34);
    assert!(call_sid[2..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["to"], "+15551230010");
    assert_eq!(r.body["from"], "+15550001111");
    assert_eq!(r.body["account_sid"], sid);
    assert!(chrono::DateTime::parse_from_rfc2822(r.body["date_created"].as_str().unwrap()).is_ok());
    assert_eq!(r.body["start_time"], Value::Null, "no start_time while queued");
    assert_eq!(r.body["answered_by"], Value::Null);

    let rec = &sim.requests()[0];
    assert_eq!(rec.provider, Provider::Twilio);
    assert_eq!(rec.to.as_deref(), Some("+15551230010"));
    assert_eq!(rec.body["From"], "+15550001111");
    assert_eq!(rec.body["StatusCallbackEvent"], json!(["initiated", "completed"]));
    assert_eq!(rec.metadata["batch_id"], "b7");
    assert!(rec.auth_ok);
    assert_eq!(rec.call_id.as_deref(), Some(call_sid.as_str()));

    let get_url = format!("{}/2010-04-01/Accounts/{sid}/Calls/{call_sid}.json", sim.base_url());
    let mut seen = Vec::new();
    let done = poll_until(Duration::from_secs(5), || {
        let g = try_finish(a.get(&get_url).set("Authorization", &basic(sid, KEY)).call()).unwrap();
        assert_eq!(g.status, 200);
        let st = g.body["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&st) {
            seen.push(st.clone());
        }
        (st == "completed").then_some(g.body)
    });
    assert!(done["duration"].is_string());
    assert_eq!(done["answered_by"], "human");
    assert!(done["start_time"].is_string() && done["end_time"].is_string());
    for s in &seen {
        assert!(["queued", "ringing", "in-progress", "completed"].contains(&s.as_str()), "{seen:?}");
    }

    let list_url = format!("{}/2010-04-01/Accounts/{sid}/Calls.json?To=%2B15551230010&StartTime>=2000-01-01", sim.base_url());
    let l = try_finish(a.get(&list_url).set("Authorization", &basic(sid, KEY)).call()).unwrap();
    assert_eq!(l.body["calls"].as_array().unwrap().len(), 1);
    // `To=` alone is enough; the client filters by date_created itself.
    let l = try_finish(
        a.get(&format!("{}/2010-04-01/Accounts/{sid}/Calls.json?To=%2B15551230010", sim.base_url()))
            .set("Authorization", &basic(sid, KEY))
            .call(),
    )
    .unwrap();
    assert_eq!(l.body["calls"][0]["sid"], call_sid.as_str());
    assert!(l.body["calls"][0]["date_created"].is_string());
    // The StatusCallback is not on this machine: nothing is sent, the attempt is recorded.
    let hooks = poll_until(Duration::from_secs(5), || {
        let h = sim.webhooks();
        (h.len() == 2).then_some(h)
    });
    assert!(hooks.iter().all(|h| h.status.is_none() && h.error.as_deref().is_some_and(|e| e.contains("loopback"))));
    assert_eq!(sim.stats().webhooks_skipped, 2);
    assert_eq!(sim.stats().webhooks_sent, 0);
    let l = try_finish(
        a.get(&format!("{}&Bogus=1", list_url.replace("15551230010", "19999999999"))).set("Authorization", &basic(sid, KEY)).call(),
    )
    .unwrap();
    assert_eq!(l.body["calls"].as_array().unwrap().len(), 0);
}

#[test]
fn twilio_errors() {
    let sim = keyed(SimConfig::default());
    let a = agent();
    let sid = SID;
    let url = format!("{}/2010-04-01/Accounts/{sid}/Calls.json", sim.base_url());
    let form = [("To", "+15551230011"), ("From", "+15550001111"), ("Twiml", "<Response/>")];
    let r = try_finish(a.post(&url).set("Authorization", &basic(sid, "wrong")).send_form(&form)).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.body["code"], 20003);
    assert_eq!(r.body["status"], 401);
    let r = try_finish(a.post(&url).set("Authorization", &basic("AC2", KEY)).send_form(&form)).unwrap();
    assert_eq!(r.status, 401, "user must match the path AccountSid");
    // An AccountSid that cannot exist is not found (and named).
    let bad = "AC1";
    let r = try_finish(
        a.post(&format!("{}/2010-04-01/Accounts/{bad}/Calls.json", sim.base_url())).set("Authorization", &basic(bad, KEY)).send_form(&form),
    )
    .unwrap();
    assert_eq!((r.status, r.body["code"].as_i64()), (404, Some(20404)));
    assert!(r.body["message"].as_str().unwrap().contains("AccountSid"), "{:?}", r.body);
    let r = try_finish(a.post(&url).set("Authorization", &basic(sid, KEY)).send_form(&form[..2])).unwrap();
    assert_eq!((r.status, r.body["code"].as_i64()), (400, Some(21201)));
    let r = try_finish(a.post(&url).set("Authorization", &basic(sid, KEY)).send_form(&form[1..])).unwrap();
    assert_eq!((r.status, r.body["code"].as_i64()), (400, Some(21201)));
    sim.set_rules(vec![Rule::new("+15551230011").status(429).retry_after_secs(3).times(1)]);
    let r = try_finish(a.post(&url).set("Authorization", &basic(sid, KEY)).send_form(&form)).unwrap();
    assert_eq!((r.status, r.body["code"].as_i64()), (429, Some(20429)));
    assert_eq!(r.retry_after.as_deref(), Some("3"));
    sim.set_rules(vec![Rule::new("+15551230011").duration_ms(50).end_reason("busy")]);
    let r = try_finish(a.post(&url).set("Authorization", &basic(sid, KEY)).send_form(&form)).unwrap();
    assert_eq!(r.status, 201);
    let get_url = format!("{}/2010-04-01/Accounts/{sid}/Calls/{}.json", sim.base_url(), r.body["sid"].as_str().unwrap());
    let st = poll_until(Duration::from_secs(5), || {
        let g = try_finish(a.get(&get_url).set("Authorization", &basic(sid, KEY)).call()).unwrap();
        let s = g.body["status"].as_str().unwrap().to_string();
        (s != "queued" && s != "ringing").then_some(s)
    });
    assert_eq!(st, "busy");
    let g = try_finish(a.get(&get_url.replace("/Calls/CA", "/Calls/CAx")).set("Authorization", &basic(sid, KEY)).call()).unwrap();
    assert_eq!((g.status, g.body["code"].as_i64()), (404, Some(20404)));
}

#[test]
fn generic_create_get_list() {
    let sim = keyed(SimConfig { call_duration_ms_min: 100, call_duration_ms_max: 150, ..SimConfig::default() });
    let a = agent();
    let url = format!("{}/voiceapi/v1/calls", sim.base_url());
    let bearer = format!("Bearer {KEY}");
    let body = json!({"phone_number": "+15551230020", "lead_ref": "L1", "variables": {"x": 1},
                      "metadata": {"idempotency_key": "g-1", "batch_id": "b9"}});
    let r = try_finish(a.post(&url).set("Authorization", "Bearer nope").send_json(&body)).unwrap();
    assert_eq!(r.status, 401);
    let r = try_finish(a.post(&url).send_json(&body)).unwrap();
    assert_eq!(r.status, 401);
    let r = try_finish(a.post(&url).set("Authorization", &bearer).send_json(json!({"lead_ref": "x"}))).unwrap();
    assert_eq!(r.status, 400);
    let r = try_finish(a.post(&url).set("Authorization", &bearer).send_json(&body)).unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "queued");
    let id = r.body["id"].as_str().unwrap().to_string();
    let done = poll_until(Duration::from_secs(5), || {
        let g = try_finish(a.get(&format!("{url}/{id}")).set("Authorization", &bearer).call()).unwrap();
        assert_eq!(g.status, 200);
        (g.body["status"] == "completed").then_some(g.body)
    });
    assert_eq!(done["end_reason"], "hangup");
    assert_eq!(done["metadata"]["idempotency_key"], "g-1");
    let l = try_finish(a.get(&format!("{url}?idempotency_key=g-1")).set("Authorization", &bearer).call()).unwrap();
    assert_eq!(l.body["calls"][0]["id"], id.as_str());
    let l = try_finish(a.get(&format!("{url}?idempotency_key=zzz")).set("Authorization", &bearer).call()).unwrap();
    assert_eq!(l.body["calls"], json!([]));
    let g = try_finish(a.get(&format!("{url}/nope")).set("Authorization", &bearer).call()).unwrap();
    assert_eq!(g.status, 404);
    assert_eq!(sim.requests().iter().filter(|r| r.provider == Provider::Generic).count(), sim.requests().len());
}

#[test]
fn log_never_contains_the_key_and_is_monotonic() {
    let (dir, log_path) = fresh_temp_file("provider-sim-test", "requests.jsonl");
    let sim = keyed(SimConfig { log_file: Some(log_path.clone()), ..SimConfig::default() });
    let base = sim.base_url();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                let a = agent();
                for i in 0..25 {
                    let to = format!("+1555{t}{i:04}");
                    match i % 3 {
                        0 => {
                            let _ = a.post(&format!("{base}/api/calls")).set("X-API-Key", KEY).send_json(uv_body(&to, "k"));
                        }
                        1 => {
                            let _ = a
                                .post(&format!("{base}/2010-04-01/Accounts/{SID}/Calls.json"))
                                .set("Authorization", &basic(SID, KEY))
                                .send_form(&[("To", to.as_str()), ("From", "+1"), ("Url", "http://x.invalid/")]);
                        }
                        _ => {
                            let _ = a
                                .post(&format!("{base}/voiceapi/v1/calls"))
                                .set("Authorization", &format!("Bearer {KEY}"))
                                .send_json(json!({"phone_number": to}));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = sim.requests();
    assert_eq!(log.len(), 100);
    assert!(log.iter().all(|r| r.status == Some(201) && r.auth_ok));
    for w in log.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert!(w[1].received_at_us >= w[0].received_at_us, "{:?} then {:?}", w[0], w[1]);
    }
    let text = serde_json::to_string(&log).unwrap();
    let b64 = basic(SID, KEY);
    assert!(!text.contains(KEY) && !text.contains(&b64[6..]) && !text.contains("Bearer"));
    assert_eq!(sim.stats().max_active_calls as usize, max_concurrent_calls(&sim.calls()));
    sim.shutdown();
    let file = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(file.lines().count(), 100);
    assert!(!file.contains(KEY));
    for line in file.lines() {
        let rec: provider_sim::RequestRecord = serde_json::from_str(line).unwrap();
        assert_eq!(rec.status, Some(201));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_api_over_http() {
    let sim = Simulator::start(SimConfig::default(), 0).unwrap();
    let c = SimClient::new(sim.base_url());
    c.wait_ready(Duration::from_secs(5)).unwrap();
    c.set_rules(vec![Rule::new("+15550000005").status(500).message("boom").times(2)]).unwrap();
    let cfg =
        c.update_config(json!({"latency_ms": 5, "api_key": "k2", "call_duration_ms_min": 1000, "call_duration_ms_max": 1000})).unwrap();
    assert_eq!(cfg["latency_ms"], 5);
    assert_eq!(cfg["api_key_set"], true);
    assert!(cfg.get("api_key").is_none());
    assert_eq!(cfg["rules"][0]["times"], 2);
    assert!(c.update_config(json!({"error_rate": 7})).is_err());
    assert!(c.update_config(json!({"no_such_knob": 1})).is_err());

    let a = agent();
    let post = |to: &str, idem: &str| {
        try_finish(a.post(&format!("{}/api/calls", sim.base_url())).set("X-API-Key", "k2").send_json(uv_body(to, idem))).unwrap()
    };
    let r = post("+15550000005", "a");
    assert_eq!((r.status, r.body["detail"].as_str()), (500, Some("boom")));
    assert_eq!(post("+15551230030", "b").status, 201);
    assert_eq!(post("+15551230031", "c").status, 201);
    let reqs = c.requests().unwrap();
    assert_eq!(reqs.len(), 3);
    assert_eq!(c.requests_since(reqs[0].seq).unwrap().len(), 2);
    let calls = c.calls().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(max_concurrent_calls(&calls), 2);
    let stats = c.stats().unwrap();
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.status_5xx, 1);
    assert_eq!(stats.status_2xx, 2);
    assert_eq!(stats.max_active_calls_by_batch.get("b1"), Some(&2));
    assert_eq!(c.config().unwrap()["rules"][0]["times"], 1);
    c.reset().unwrap();
    assert!(c.requests().unwrap().is_empty());
    assert!(c.calls().unwrap().is_empty());
    assert_eq!(c.config().unwrap()["rules"], json!([]));
    assert_eq!(c.config().unwrap()["latency_ms"], 5, "reset keeps knobs");
}

#[test]
fn unknown_paths_are_json_404() {
    let sim = Simulator::start(SimConfig::default(), 0).unwrap();
    let r = try_finish(agent().get(&format!("{}/nope", sim.base_url())).call()).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"], "not found");
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn start_and_drop_inside_an_async_runtime() {
    let sim = Simulator::start(SimConfig::default(), 0).unwrap();
    let base = sim.base_url();
    let status = tokio::task::spawn_blocking(move || {
        agent().post(&format!("{base}/voiceapi/v1/calls")).send_json(json!({"phone_number": "+1555"})).map(|r| r.status())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 201);
    drop(sim);
}
