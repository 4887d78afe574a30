//! Signed webhooks: Ultravox events to the configured URL, Twilio status callbacks to the
//! request's `StatusCallback`. The signatures are recomputed here with the HMAC crates, the
//! way a receiver would, not with the simulator's own functions.

mod support;

use base64::Engine;
use hmac::{Hmac, Mac};
use provider_sim::{SimClient, SimConfig, Simulator};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const SECRET: &str = "whsec-test-1";

fn hmac_sha256_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

fn twilio_expected(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(&k);
        data.push_str(&v);
    }
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    m.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

fn uv_sim(rx: &Receiver, extra: impl FnOnce(&mut SimConfig)) -> Simulator {
    let mut c = SimConfig {
        api_key: Some(KEY.into()),
        call_duration_ms_min: 400,
        call_duration_ms_max: 400,
        ultravox_webhook_url: Some(rx.url("/hooks/ultravox?src=sim")),
        ultravox_webhook_secret: Some(SECRET.into()),
        ..SimConfig::default()
    };
    extra(&mut c);
    Simulator::start(c, 0).expect("start simulator")
}

fn uv_create(sim: &Simulator, to: &str) -> Value {
    let r = finish(agent().post(&format!("{}/api/agents/{AGENT}/calls", sim.base_url())).set("X-API-Key", KEY).send_json(json!({
        "medium": {"twilio": {"outgoing": {"to": to, "from": "+15550000000"}}},
        "metadata": {"batch_id": "b1"}
    })));
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body
}

#[test]
fn ultravox_webhooks_are_signed_over_body_and_naive_timestamp() {
    let rx = Receiver::start(200);
    let sim = uv_sim(&rx, |_| {});
    let call = uv_create(&sim, "+15551230101");
    let id = call["callId"].as_str().unwrap();
    let got = rx.wait_for(3, Duration::from_secs(5));
    let events: Vec<String> = got.iter().map(|r| r.json()["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events, ["call.started", "call.joined", "call.ended"]);
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/hooks/ultravox?src=sim");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let ts = r.header("x-ultravox-webhook-timestamp").expect("timestamp header");
        // Naive ISO 8601 with microseconds: no offset, no "Z".
        assert!(!ts.ends_with('Z') && !ts.contains('+') && ts.len() == 26, "{ts}");
        let parsed = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.6f").expect(ts);
        let skew = (chrono::Utc::now().naive_utc() - parsed).num_seconds().abs();
        assert!(skew < 30, "timestamp is UTC now: {ts}");
        let sig = r.header("x-ultravox-webhook-signature").expect("signature header");
        assert_eq!(sig, hmac_sha256_hex(SECRET, &[&r.body, ts.as_bytes()]));
        assert_eq!(r.json()["call"]["callId"], id);
    }
    let (started, joined, ended) = (got[0].json(), got[1].json(), got[2].json());
    assert_eq!(started["call"]["joined"], Value::Null);
    assert_eq!(started["call"]["agentId"], AGENT);
    assert!(joined["call"]["joined"].is_string() && joined["call"]["ended"].is_null());
    assert!(ended["call"]["ended"].is_string());
    assert_eq!(ended["call"]["endReason"], "hangup");
    assert_eq!(ended["call"]["metadata"]["batch_id"], "b1");
    // Sent as the state changed: joined at 20% of the call, ended at its end.
    assert!(got[2].at.duration_since(got[0].at) >= Duration::from_millis(250));

    let hooks = poll_until(Duration::from_secs(5), || {
        let h = sim.webhooks();
        (h.len() == 3 && h.iter().all(|w| w.status.is_some())).then_some(h)
    });
    assert!(hooks.iter().all(|h| h.status == Some(200) && h.error.is_none() && h.call_id == id));
    assert_eq!(hooks[0].event, "call.started");
    let st = sim.stats();
    assert_eq!((st.webhooks_sent, st.webhooks_failed), (3, 0));
    // The same list over the control API; the secret never shows.
    let c = SimClient::new(sim.base_url());
    assert_eq!(c.webhooks().unwrap().len(), 3);
    let cfg = c.config().unwrap();
    assert_eq!(cfg["ultravox_webhook_secret_set"], true);
    assert!(!cfg.to_string().contains(SECRET));
}

#[test]
fn stale_signature_comes_first_and_does_not_verify() {
    let rx = Receiver::start(200);
    let sim = uv_sim(&rx, |c| {
        c.ultravox_webhook_stale_signature = true;
        c.call_duration_ms_min = 100;
        c.call_duration_ms_max = 100;
    });
    uv_create(&sim, "+15551230102");
    let got = rx.wait_for(3, Duration::from_secs(5));
    for r in got {
        let ts = r.header("x-ultravox-webhook-timestamp").unwrap();
        let sigs: Vec<&str> = r.header("x-ultravox-webhook-signature").unwrap().split(',').collect();
        let want = hmac_sha256_hex(SECRET, &[&r.body, ts.as_bytes()]);
        assert_eq!(sigs.len(), 2);
        assert_ne!(sigs[0], want);
        assert_eq!(sigs[1], want);
    }
}

#[test]
fn unanswered_call_has_no_joined_event_and_failures_are_counted() {
    let rx = Receiver::start(500);
    let sim = uv_sim(&rx, |c| {
        c.call_duration_ms_min = 100;
        c.call_duration_ms_max = 100;
    });
    sim.set_rules(vec![provider_sim::Rule::new("+15551230103").end_reason("unjoined")]);
    uv_create(&sim, "+15551230103");
    let got = rx.wait_for(2, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    let events: Vec<String> = rx.received().iter().map(|r| r.json()["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events, ["call.started", "call.ended"]);
    assert_eq!(got[1].json()["call"]["endReason"], "unjoined");
    let st = poll_until(Duration::from_secs(5), || {
        let s = sim.stats();
        (s.webhooks_failed == 2).then_some(s)
    });
    assert_eq!(st.webhooks_sent, 2);
    assert!(sim.webhooks().iter().all(|w| w.status == Some(500)));

    // Nobody listening: counted as failed, the call itself is unaffected.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    sim.reset();
    sim.try_update(|c| c.ultravox_webhook_url = Some(format!("http://127.0.0.1:{dead}/gone"))).unwrap();
    uv_create(&sim, "+15551230104");
    let hooks = poll_until(Duration::from_secs(5), || {
        let h = sim.webhooks();
        (h.len() == 3 && h.iter().all(|w| w.error.is_some())).then_some(h)
    });
    assert!(hooks.iter().all(|h| h.status.is_none()), "{hooks:?}");
    assert_eq!(sim.stats().webhooks_failed, 3);
}

#[test]
fn only_loopback_webhook_targets_are_accepted() {
    let e = Simulator::start(SimConfig { ultravox_webhook_url: Some("http://192.168.1.10/hooks".into()), ..SimConfig::default() }, 0)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let sim = Simulator::start(SimConfig::default(), 0).unwrap();
    let c = SimClient::new(sim.base_url());
    let err = c.update_config(json!({"ultravox_webhook_url": "https://example.com/hooks"})).unwrap_err();
    assert!(err.0.contains("loopback") || err.0.contains("http://"), "{err}");
    assert!(sim.try_update(|c| c.ultravox_webhook_url = Some("http://10.1.2.3/".into())).is_err());
    let cfg = c.update_config(json!({"ultravox_webhook_url": "http://localhost:9/x", "ultravox_webhook_secret": "s"})).unwrap();
    assert_eq!(cfg["ultravox_webhook_url"], "http://localhost:9/x");
}

#[test]
fn twilio_status_callbacks_are_signed_and_sequenced() {
    let rx = Receiver::start(204);
    let sim = Simulator::start(
        SimConfig { api_key: Some(KEY.into()), call_duration_ms_min: 400, call_duration_ms_max: 400, ..SimConfig::default() },
        0,
    )
    .unwrap();
    let cb = rx.url("/twilio/status?batch_id=b7&contact_id=c9");
    let r = finish(
        agent().post(&format!("{}/2010-04-01/Accounts/{SID}/Calls.json", sim.base_url())).set("Authorization", &basic(SID, KEY)).send_form(
            &[
                ("To", "+15551230110"),
                ("From", "+15550000000"),
                ("Url", "http://127.0.0.1:9/twiml"),
                ("StatusCallback", cb.as_str()),
                ("StatusCallbackEvent", "initiated ringing"),
                ("StatusCallbackEvent", "answered"),
                ("StatusCallbackEvent", "completed"),
                ("MachineDetection", "Enable"),
            ],
        ),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let sid = r.body["sid"].as_str().unwrap().to_string();
    assert_eq!(sim.calls()[0].metadata["contact_id"], "c9");
    let got = rx.wait_for(4, Duration::from_secs(5));
    let mut statuses = Vec::new();
    for (i, req) in got.iter().enumerate() {
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, "/twilio/status?batch_id=b7&contact_id=c9");
        assert_eq!(req.header("content-type"), Some("application/x-www-form-urlencoded"));
        let params = req.form();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            req.header("x-twilio-signature"),
            Some(twilio_expected(KEY, &cb, &params).as_str()),
            "signature over the callback URL and the sorted parameters"
        );
        assert_eq!(get("CallSid"), Some(sid.as_str()));
        assert_eq!(get("AccountSid"), Some(SID));
        assert_eq!((get("From"), get("To")), (Some("+15550000000"), Some("+15551230110")));
        assert_eq!(get("ApiVersion"), Some("2010-04-01"));
        assert_eq!(get("Direction"), Some("outbound-api"));
        assert_eq!(get("CallbackSource"), Some("call-progress-events"));
        assert_eq!(get("SequenceNumber"), Some(i.to_string().as_str()));
        assert!(chrono::DateTime::parse_from_rfc2822(get("Timestamp").unwrap()).is_ok());
        statuses.push(get("CallStatus").unwrap().to_string());
        match i {
            0 | 1 => assert_eq!(get("AnsweredBy"), None),
            _ => assert_eq!(get("AnsweredBy"), Some("human")),
        }
        assert_eq!(get("CallDuration").is_some(), i == 3);
    }
    assert_eq!(statuses, ["initiated", "ringing", "in-progress", "completed"]);
    let hooks = poll_until(Duration::from_secs(5), || {
        let h = sim.webhooks();
        (h.len() == 4 && h.iter().all(|w| w.status.is_some())).then_some(h)
    });
    let events: Vec<&str> = hooks.iter().map(|h| h.event.as_str()).collect();
    assert_eq!(events, ["initiated", "ringing", "answered", "completed"]);
    assert!(hooks.iter().all(|h| h.status == Some(204)));
    assert_eq!((sim.stats().webhooks_sent, sim.stats().webhooks_failed), (4, 0));
}

#[test]
fn twilio_default_is_completed_only() {
    let rx = Receiver::start(200);
    let sim = Simulator::start(SimConfig { call_duration_ms_min: 150, call_duration_ms_max: 150, ..SimConfig::default() }, 0).unwrap();
    sim.set_rules(vec![provider_sim::Rule::new("+15551230111").end_reason("busy")]);
    let cb = rx.url("/cb");
    let r = finish(
        agent()
            .post(&format!("{}/2010-04-01/Accounts/{SID}/Calls.json", sim.base_url()))
            .set("Authorization", &basic(SID, "any"))
            .send_form(&[("To", "+15551230111"), ("From", "+15550000000"), ("Twiml", "<Response/>"), ("StatusCallback", cb.as_str())]),
    );
    assert_eq!(r.status, 201);
    let got = rx.wait_for(1, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rx.received().len(), 1);
    let params = got[0].form();
    assert!(params.contains(&("CallStatus".into(), "busy".into())), "{params:?}");
    assert!(params.contains(&("CallDuration".into(), "0".into())));
    // No API key configured: signed with an empty auth token.
    assert_eq!(got[0].header("x-twilio-signature"), Some(twilio_expected("", &cb, &params).as_str()));
}
