//! Every provider adapter against the strict simulator (each request checked against the
//! provider's published spec, or for Bland its documented fields), and outcomes carried end to
//! end from the simulator's signed webhooks through an Edge-Function-like receiver into
//! `dialer.ingest_webhook`.

use pg_dialer_integration::provider_sim::Rule;
use pg_dialer_integration::{call_posts, posts_to, wait_for, Scenario, WebhookReceiver, AGENT_ID, API_KEY};
use serde_json::{json, Value};
use std::time::Duration;

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";

fn batch(s: &mut Scenario, mapping: i64, name: &str, numbers: &[&str]) -> i64 {
    let agency = s.agency_id;
    let b: i64 = s.db.query_one("SELECT dialer.create_batch($1, $2, $3, 600, 10)", &[&agency, &mapping, &name]).unwrap().get(0);
    let contacts: Vec<Value> = numbers.iter().enumerate().map(|(i, n)| json!({"phone_number": n, "name": format!("C{i}"), "variables": {"n": i}})).collect();
    s.db.execute("SELECT dialer.add_contacts($1, $2)", &[&b, &Value::Array(contacts)]).unwrap();
    b
}

fn mapping(s: &mut Scenario, provider: &str, agent: Option<&str>, from: Option<&str>, template: Value) -> i64 {
    let agency = s.agency_id;
    let base = s.sim.base_url();
    let base = if provider == "webhook" { format!("{base}/voiceapi/v1/calls") } else { base };
    let sid = (provider == "twilio").then_some(TWILIO_SID);
    s.db.execute("SELECT dialer.set_provider_credentials($1, $2, $3, $4, $5)", &[&agency, &provider, &API_KEY, &base, &sid]).unwrap();
    s.db.query_one("SELECT dialer.create_agent_mapping($1, $2, $3, NULL, $4, $5)", &[&agency, &provider, &agent, &from, &template])
        .unwrap_or_else(|e| panic!("{provider} mapping: {e}"))
        .get(0)
}

fn end_reasons(s: &mut Scenario, batch: i64) -> Vec<(String, Option<String>)> {
    s.db.query(
        "SELECT c.phone_number, k.end_reason FROM dialer.campaign_contacts c JOIN dialer.calls k ON k.id = c.call_id
          WHERE c.batch_id = $1 ORDER BY 1",
        &[&batch],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn every_adapter_dials_the_strict_simulator_and_follows_calls_to_their_end() {
    let mut cfg = Scenario::sim_config(300, 600);
    cfg.twilio_account_sid = Some(TWILIO_SID.to_string());
    let mut s = Scenario::new("p-adapters", cfg, &[]);
    let from = Some("+14155550100");
    let cases: Vec<(&str, i64, &str)> = vec![
        ("ultravox", s.mapping_id, "/api/agents/"),
        ("ultravox", mapping(&mut s, "ultravox", None, from, json!({"systemPrompt": "You are Ava.", "voice": "Mark"})), "/api/calls"),
        ("twilio", mapping(&mut s, "twilio", None, from, json!({"Twiml": "<Response><Say>Hi</Say></Response>", "Timeout": 20})), "/Calls.json"),
        ("vapi", mapping(&mut s, "vapi", Some(AGENT_ID), None, json!({"phoneNumberId": "6f1c2a9e-0b7d-4c1e-9a55-2f0e6d8b7c41"})), "/call"),
        ("retell", mapping(&mut s, "retell", Some("agent_5b7e2f0a"), from, json!({})), "/v2/create-phone-call"),
        ("bland", mapping(&mut s, "bland", None, from, json!({"task": "Confirm the appointment.", "max_duration": 5})), "/v1/calls"),
        (
            "webhook",
            mapping(
                &mut s,
                "webhook",
                None,
                None,
                json!({"body": {"phone_number": "{{phone_number}}", "context": "{{variables}}", "metadata": "{{metadata}}",
                                "greeting": "Hello {{name}}"}, "call_id_pointer": "/id"}),
            ),
            "/voiceapi/v1/calls",
        ),
    ];
    let mut batches = Vec::new();
    for (i, (provider, m, _)) in cases.iter().enumerate() {
        let numbers: Vec<String> = (1..=3).map(|j| format!("+1555710{i}00{j}")).collect();
        let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
        batches.push((batch(&mut s, *m, provider, &refs), numbers));
    }
    for (b, _) in &batches {
        s.wait_batch_completed(*b, Duration::from_secs(60));
    }
    let vocabulary = ["hangup", "agent_hangup", "max_duration", "no-answer", "busy", "voicemail", "failed", "invalid_number", "canceled"];
    for ((provider, _, path), (b, numbers)) in cases.iter().zip(&batches) {
        for n in numbers {
            let posts = posts_to(&s.sim, n);
            assert_eq!(posts.len(), 1, "{provider}: {n} dialed once");
            let p = &posts[0];
            assert!(p.path.contains(path), "{provider}: posted to {}", p.path);
            assert!(p.status.is_some_and(|st| (200..300).contains(&st)), "{provider}: the strict simulator accepted it: {p:?}");
            assert!(p.auth_ok, "{provider}: authenticated as its API wants");
        }
        for (n, reason) in end_reasons(&mut s, *b) {
            let reason = reason.unwrap_or_default();
            assert!(vocabulary.contains(&reason.as_str()), "{provider} {n}: end reason {reason:?} is in pg_dialer's words");
        }
    }
    // The described body reached the AI caller as described.
    let g = &posts_to(&s.sim, &batches[6].1[0])[0];
    assert_eq!(g.body["greeting"], "Hello C0");
    assert_eq!(g.body["context"]["n"], 0);
    assert!(g.body["metadata"]["idempotency_key"].is_string());
    assert!(call_posts(&s.sim).iter().all(|p| p.fault.is_none()), "no request refused or faulted");
}

#[test]
fn ultravox_webhooks_carry_outcomes_end_to_end() {
    let mut s = Scenario::new("p-uv-hooks", Scenario::sim_config(400, 800), &["dialer.status_poll_interval = '10min'"]);
    let receiver = WebhookReceiver::start(&s.cluster, "ultravox");
    s.sim.update(|c| {
        c.ultravox_webhook_url = Some(receiver.url.clone());
        c.ultravox_webhook_secret = Some("whsec_e2e_42".into());
    });
    let (agency, base) = (s.agency_id, s.sim.base_url());
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3, NULL, 'whsec_e2e_42')", &[&agency, &API_KEY, &base]).unwrap();
    s.sim.set_rules(vec![Rule::new("+15557200003").end_reason("unjoined")]);
    let m = s.mapping_id;
    let b = batch(&mut s, m, "hooks", &["+15557200001", "+15557200002", "+15557200003"]);
    // Status polls are 10 minutes apart: only the webhooks can end these calls.
    s.wait_batch_completed(b, Duration::from_secs(60));
    let results = receiver.results();
    assert!(!results.is_empty() && results.iter().all(Result::is_ok), "every signed delivery accepted: {results:?}");
    let ended: i64 = s.db.query_one("SELECT count(*) FROM dialer.webhook_events WHERE provider = 'ultravox' AND event_id LIKE 'call.ended:%'", &[]).unwrap().get(0);
    assert_eq!(ended, 3);
    let reasons = end_reasons(&mut s, b);
    assert_eq!(reasons[2], ("+15557200003".to_string(), Some("no-answer".to_string())), "unjoined: nobody answered");
    assert_eq!(&reasons[..2], &[("+15557200001".into(), Some("hangup".into())), ("+15557200002".into(), Some("hangup".into()))]);
    let answered: i64 = s.db.query_one("SELECT count(*) FROM dialer.calls WHERE batch_id = $1 AND answered_at IS NOT NULL", &[&b]).unwrap().get(0);
    assert_eq!(answered, 2, "call.joined set answered_at for the calls that connected");
    let outcome: Option<String> = s.db.query_one("SELECT outcome FROM dialer.campaign_contacts WHERE phone_number = '+15557200003'", &[]).unwrap().get(0);
    assert_eq!(outcome.as_deref(), Some("ai_failed"));

    // A delivery signed with another secret is refused by the database, and the receiver says so.
    s.sim.update(|c| c.ultravox_webhook_secret = Some("whsec_wrong".into()));
    let b2 = batch(&mut s, m, "forged", &["+15557200004"]);
    let r = wait_for("a refused delivery", Duration::from_secs(30), || receiver.results().into_iter().find_map(|r| r.err()));
    assert!(r.contains("signature does not match"), "{r}");
    assert_eq!(s.batch_status(b2), "processing", "a forged event ends nothing");
}

#[test]
fn twilio_status_callbacks_are_verified_with_the_auth_token_and_voicemail_is_an_outcome() {
    let mut cfg = Scenario::sim_config(400, 800);
    cfg.twilio_account_sid = Some(TWILIO_SID.to_string());
    let mut s = Scenario::new("p-tw-hooks", cfg, &["dialer.status_poll_interval = '10min'"]);
    let receiver = WebhookReceiver::start(&s.cluster, "twilio");
    let m = mapping(
        &mut s,
        "twilio",
        None,
        Some("+14155550100"),
        json!({"Twiml": "<Response><Say>Hi</Say></Response>", "MachineDetection": "Enable",
               "StatusCallback": receiver.url, "StatusCallbackEvent": ["answered", "completed"]}),
    );
    // A webhook secret is not what Twilio signs with: it must not replace the auth token.
    let agency = s.agency_id;
    s.db.execute("UPDATE dialer.provider_credentials SET webhook_secret = 'not-the-auth-token' WHERE agency_id = $1 AND provider = 'twilio'", &[&agency]).unwrap();
    s.sim.set_rules(vec![Rule::new("+15557300002").end_reason("voicemail")]);
    let b = batch(&mut s, m, "twilio hooks", &["+15557300001", "+15557300002"]);
    s.wait_batch_completed(b, Duration::from_secs(60));
    let results = receiver.results();
    assert!(results.len() >= 2 && results.iter().all(Result::is_ok), "callbacks verified with the auth token: {results:?}");
    assert_eq!(
        end_reasons(&mut s, b),
        vec![("+15557300001".to_string(), Some("hangup".to_string())), ("+15557300002".to_string(), Some("voicemail".to_string()))]
    );
    let answered: Option<bool> = s
        .db
        .query_one("SELECT answered_at IS NOT NULL FROM dialer.calls k JOIN dialer.campaign_contacts c ON c.call_id = k.id WHERE c.phone_number = '+15557300001'", &[])
        .unwrap()
        .get(0);
    assert_eq!(answered, Some(true), "answered_at from the answered callback");
}

#[test]
fn capacity_answers_503_wait_without_counting_an_attempt() {
    let mut s = Scenario::new("p-503", Scenario::sim_config(200, 300), &[]);
    s.sim.set_rules(vec![Rule::new("+15557400001").status(503).retry_after_secs(1).times(2)]);
    let m = s.mapping_id;
    let b = batch(&mut s, m, "capacity", &["+15557400001"]);
    s.wait_batch_completed(b, Duration::from_secs(40));
    let posts = posts_to(&s.sim, "+15557400001");
    assert_eq!(posts.iter().map(|p| p.status).collect::<Vec<_>>(), vec![Some(503), Some(503), Some(201)]);
    let gap_us = posts[1].received_at_us - posts[0].received_at_us;
    assert!(gap_us >= 900_000, "Retry-After: 1 was honoured ({gap_us} µs)");
    let (status, attempts): (String, i32) =
        s.db.query_one("SELECT status, attempts FROM dialer.campaign_contacts WHERE batch_id = $1", &[&b]).map(|r| (r.get(0), r.get(1))).unwrap();
    assert_eq!((status.as_str(), attempts), ("completed", 1), "two capacity waits, one attempt");
}
