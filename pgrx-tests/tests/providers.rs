//! Every provider adapter against the strict simulator (each request checked against the
//! provider's published spec, or for Bland its documented fields), and outcomes carried end to
//! end from the simulator's signed webhooks (Ultravox, Twilio, Vapi, Retell, Bland) through an
//! Edge-Function-like receiver into `dialer.ingest_webhook`.

use pg_dialer_integration::provider_sim::Rule;
use pg_dialer_integration::{call_posts, posts_to, wait_for, Scenario, WebhookReceiver, AGENT_ID, API_KEY};
use serde_json::{json, Value};
use std::time::Duration;

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";

fn batch(s: &mut Scenario, mapping: i64, name: &str, numbers: &[&str]) -> i64 {
    let agency = s.agency_id;
    let b: i64 = s.db.query_one("SELECT dialer.create_batch($1, $2, $3, 600, 10)", &[&agency, &mapping, &name]).unwrap().get(0);
    let contacts: Vec<Value> =
        numbers.iter().enumerate().map(|(i, n)| json!({"phone_number": n, "name": format!("C{i}"), "variables": {"n": i}})).collect();
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
        (
            "twilio",
            mapping(&mut s, "twilio", None, from, json!({"Twiml": "<Response><Say>Hi</Say></Response>", "Timeout": 20})),
            "/Calls.json",
        ),
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

/// The simulator's Ultravox account sends its webhooks, signed with `secret`, to a receiver that
/// hands them to `dialer.ingest_webhook`; the agency's credentials hold the same secret.
fn ultravox_webhooks(s: &mut Scenario, secret: &str) -> WebhookReceiver {
    let receiver = WebhookReceiver::start(&s.cluster, "ultravox");
    s.sim.update(|c| {
        c.ultravox_webhook_url = Some(receiver.url.clone());
        c.ultravox_webhook_secret = Some(secret.into());
    });
    let (agency, base) = (s.agency_id, s.sim.base_url());
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3, NULL, $4)", &[&agency, &API_KEY, &base, &secret]).unwrap();
    receiver
}

#[test]
fn a_call_whose_webhooks_arrive_is_polled_only_as_a_safety_net() {
    // Polls 300 ms apart at first: a call of 6 s that no webhook reaches is asked about eight
    // times (the interval plus a quarter of its age between polls). This one's call.started comes
    // in as it is placed, so its next poll is a minute off, and its end comes by webhook first.
    let mut s = Scenario::new("p-uv-heard", Scenario::sim_config(6000, 6000), &["dialer.status_poll_interval = '300ms'"]);
    let _receiver = ultravox_webhooks(&mut s, "whsec_heard"); // (kept: it receives the webhooks)
    let m = s.mapping_id;
    let b = batch(&mut s, m, "heard", &["+15557200011"]);
    s.wait_batch_completed(b, Duration::from_secs(60));
    let (call_id, provider_call_id): (i64, String) =
        s.db.query_one("SELECT id, provider_call_id FROM dialer.calls WHERE batch_id = $1", &[&b]).map(|r| (r.get(0), r.get(1))).unwrap();
    let events: Vec<String> =
        s.db.query("SELECT split_part(event_id, ':', 1) FROM dialer.webhook_events WHERE call_id = $1 ORDER BY received_at", &[&call_id])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(events.contains(&"call.started".to_string()) && events.contains(&"call.ended".to_string()), "{events:?}");
    let polls = s.sim.requests().iter().filter(|r| r.method == "GET" && r.path.contains(&provider_call_id)).count();
    // (At most one: a poll round may pick the call between its accept being recorded and its
    // call.started being applied, a few milliseconds.)
    assert!(polls <= 1, "the call was polled {polls} times while its webhooks arrived");
}

#[test]
fn ultravox_webhooks_carry_outcomes_end_to_end() {
    let mut s = Scenario::new("p-uv-hooks", Scenario::sim_config(400, 800), &["dialer.status_poll_interval = '10min'"]);
    let receiver = ultravox_webhooks(&mut s, "whsec_e2e_42");
    s.sim.set_rules(vec![Rule::new("+15557200003").end_reason("unjoined")]);
    let m = s.mapping_id;
    let b = batch(&mut s, m, "hooks", &["+15557200001", "+15557200002", "+15557200003"]);
    // Status polls are 10 minutes apart: only the webhooks can end these calls.
    s.wait_batch_completed(b, Duration::from_secs(60));
    let results = receiver.results();
    assert!(!results.is_empty() && results.iter().all(Result::is_ok), "every signed delivery accepted: {results:?}");
    let ended: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.webhook_events WHERE provider = 'ultravox' AND event_id LIKE 'call.ended:%'", &[])
            .unwrap()
            .get(0);
    assert_eq!(ended, 3);
    let reasons = end_reasons(&mut s, b);
    assert_eq!(reasons[2], ("+15557200003".to_string(), Some("no-answer".to_string())), "unjoined: nobody answered");
    assert_eq!(&reasons[..2], &[("+15557200001".into(), Some("hangup".into())), ("+15557200002".into(), Some("hangup".into()))]);
    let answered: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.calls WHERE batch_id = $1 AND answered_at IS NOT NULL", &[&b]).unwrap().get(0);
    assert_eq!(answered, 2, "call.joined set answered_at for the calls that connected");
    let outcome: Option<String> =
        s.db.query_one("SELECT outcome FROM dialer.campaign_contacts WHERE phone_number = '+15557200003'", &[]).unwrap().get(0);
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
    s.db.execute(
        "UPDATE dialer.provider_credentials SET webhook_secret = 'not-the-auth-token' WHERE agency_id = $1 AND provider = 'twilio'",
        &[&agency],
    )
    .unwrap();
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
        s.db.query_one("SELECT status, attempts FROM dialer.campaign_contacts WHERE batch_id = $1", &[&b])
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("completed", 1), "two capacity waits, one attempt");
}

/// Vapi, Retell and Bland webhooks end to end: the simulator sends each service's end-of-call
/// events, signed as that service signs them, redelivered once (and Retell's `call_analyzed`
/// after `call_ended`), to the Edge-Function-like receiver, into `dialer.ingest_webhook`. Status
/// polls are 10 minutes apart, so only the webhooks can settle these calls; then a forged delivery
/// is refused and polling is the fallback; then a call settled by its webhook is not polled again
/// while another call still is.
fn webhooks_end_to_end(provider: &'static str, prefix: &str) {
    let mut s = Scenario::new(&format!("p-{provider}-hooks"), Scenario::sim_config(1500, 2000), &["dialer.status_poll_interval = '10min'"]);
    let receiver = WebhookReceiver::start(&s.cluster, provider);
    let url = receiver.url.clone();
    let (agency, base) = (s.agency_id, s.sim.base_url());
    let from = Some("+14155550100");
    let (m, secret): (i64, Option<&str>) = match provider {
        "vapi" => {
            s.sim.update(|c| {
                c.vapi_webhook_url = Some(url.clone());
                c.vapi_webhook_secret = Some("vapi-server-secret".into());
                c.vapi_webhook_auth = "hmac".into();
                c.webhook_redeliveries = 1;
            });
            (
                mapping(&mut s, "vapi", Some(AGENT_ID), None, json!({"phoneNumberId": "6f1c2a9e-0b7d-4c1e-9a55-2f0e6d8b7c41"})),
                Some("vapi-server-secret"),
            )
        }
        // Retell signs with the account's API key: nothing more to store.
        "retell" => {
            s.sim.update(|c| {
                c.retell_webhook_url = Some(url.clone());
                c.webhook_redeliveries = 1;
            });
            (mapping(&mut s, "retell", Some("agent_5b7e2f0a"), from, json!({})), None)
        }
        _ => {
            s.sim.update(|c| {
                c.bland_webhook_secret = Some("bland-signing-secret".into());
                c.webhook_redeliveries = 1;
            });
            let t = json!({"task": "Confirm the appointment.", "answered_by_enabled": true, "webhook": url});
            (mapping(&mut s, "bland", None, from, t), Some("bland-signing-secret"))
        }
    };
    if let Some(secret) = secret {
        s.db.execute("SELECT dialer.set_provider_credentials($1, $2, $3, $4, NULL, $5)", &[&agency, &provider, &API_KEY, &base, &secret])
            .unwrap();
    }
    let n = |i: u32| format!("{prefix}{i}");
    s.sim.set_rules(vec![
        Rule::new(n(2)).end_reason("voicemail"),
        Rule::new(n(3)).end_reason("unjoined"),
        Rule::new(n(6)).duration_ms(8000),
    ]);
    let b = batch(&mut s, m, provider, &[&n(1), &n(2), &n(3)]);
    s.wait_batch_completed(b, Duration::from_secs(60));

    // Every delivery accepted; each call applied once, the repeats recognised. (The voicemail is
    // retried, by the batch's default on_voicemail: each attempt is a call of its own.)
    let calls: i64 = s.db.query_one("SELECT count(*) FROM dialer.calls WHERE batch_id = $1", &[&b]).unwrap().get(0);
    assert!(calls >= 4, "{provider}: {calls} calls\n{}", s.describe(b));
    let per_call = if provider == "retell" { 4 } else { 2 };
    let results = wait_for("every delivery and redelivery", Duration::from_secs(20), || {
        let r = receiver.results();
        (r.len() >= calls as usize * per_call).then_some(r)
    });
    assert!(results.iter().all(Result::is_ok), "{provider}: every signed delivery accepted: {results:?}");
    let statuses: Vec<String> = results.iter().flatten().map(|v| v["status"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(statuses.iter().filter(|s| *s == "applied").count() as i64, calls, "{provider}: one settle per call: {results:?}");
    assert!(statuses.iter().all(|s| ["applied", "duplicate", "already_final"].contains(&s.as_str())), "{statuses:?}");
    let events: i64 = s.db.query_one("SELECT count(*) FROM dialer.webhook_events WHERE provider = $1", &[&provider]).unwrap().get(0);
    assert_eq!(events, if provider == "retell" { 2 * calls } else { calls }, "{provider}: one row per event, none per redelivery");
    let reasons: Vec<(String, Vec<String>)> = s
        .db
        .query("SELECT phone_number, array_agg(DISTINCT end_reason) FROM dialer.calls WHERE batch_id = $1 GROUP BY 1 ORDER BY 1", &[&b])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        reasons,
        vec![(n(1), vec!["hangup".to_string()]), (n(2), vec!["voicemail".to_string()]), (n(3), vec!["no-answer".to_string()])],
        "{provider}: outcomes in pg_dialer's words"
    );
    let (completed, attempts): (i32, i64) = s
        .db
        .query_one("SELECT b.completed_count, (SELECT sum(attempts) FROM dialer.campaign_contacts WHERE batch_id = b.id) FROM dialer.call_batches b WHERE b.id = $1", &[&b])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((completed, attempts), (3, calls), "{provider}: nothing counted twice");
    // answered_at and ended_at are the provider's times, not the arrival's.
    let sim_calls = s.sim.calls();
    for r in s
        .db
        .query(
            "SELECT provider_call_id, (extract(epoch FROM answered_at) * 1e6)::int8, (extract(epoch FROM ended_at) * 1e6)::int8, phone_number
               FROM dialer.calls WHERE batch_id = $1",
            &[&b],
        )
        .unwrap()
    {
        let (id, answered, ended, phone): (String, Option<i64>, Option<i64>, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let c = sim_calls.iter().find(|c| c.call_id == id).expect("the simulator's call");
        let ended = ended.expect("ended_at");
        assert!((ended - c.ended_at_us).abs() <= 1000, "{provider} {phone}: ended_at {ended} is the call's end {}", c.ended_at_us);
        match (phone == n(3), answered) {
            (true, a) => assert_eq!(a, None, "{provider}: nobody answered {phone}"),
            (false, Some(a)) => {
                let joined = c.joined_at_us.expect("joined");
                assert!((a - joined).abs() <= 1000, "{provider} {phone}: answered_at {a} is when it was answered {joined}");
            }
            (false, None) => panic!("{provider} {phone}: no answered_at"),
        }
    }
    let polls = s.sim.requests().into_iter().filter(|r| r.method == "GET").count();
    assert_eq!(polls, 0, "{provider}: the webhooks alone settled the calls");

    // A forged delivery is refused without touching the call; polling is the fallback.
    match provider {
        "vapi" => s.sim.update(|c| c.vapi_webhook_secret = Some("not-the-server-secret".into())),
        "retell" => {
            s.db.execute(
                "SELECT dialer.set_provider_credentials($1, 'retell', $2, $3, NULL, 'key_with_the_webhook_badge')",
                &[&agency, &API_KEY, &base],
            )
            .unwrap();
        }
        _ => s.sim.update(|c| c.bland_webhook_secret = Some("forged-secret".into())),
    }
    let seen = receiver.results().len();
    let b2 = batch(&mut s, m, "forged", &[&n(4)]);
    let refused =
        wait_for("a refused delivery", Duration::from_secs(30), || receiver.results().into_iter().skip(seen).find_map(|r| r.err()));
    assert!(refused.contains("does not match"), "{refused}");
    assert!(
        !refused.contains("vapi-server-secret") && !refused.contains("bland-signing") && !refused.contains(API_KEY),
        "no secret in the error"
    );
    let status: String = s.db.query_one("SELECT k.status FROM dialer.calls k WHERE k.batch_id = $1", &[&b2]).unwrap().get(0);
    assert_eq!(status, "in_progress", "{provider}: a forged event ends nothing");
    s.set_config("dialer.status_poll_interval", "1s");
    s.wait_batch_completed(b2, Duration::from_secs(30));
    assert!(s.sim.requests().iter().any(|r| r.method == "GET"), "{provider}: polling settled the call whose webhook was refused");

    // With polls 1 s apart: the call settled by its webhook is not polled again; the long one is.
    match provider {
        "vapi" => s.sim.update(|c| c.vapi_webhook_secret = Some("vapi-server-secret".into())),
        "retell" => {
            s.db.execute("SELECT dialer.set_provider_credentials($1, 'retell', $2, $3)", &[&agency, &API_KEY, &base]).unwrap();
        }
        _ => s.sim.update(|c| c.bland_webhook_secret = Some("bland-signing-secret".into())),
    }
    let b3 = batch(&mut s, m, "polled", &[&n(5), &n(6)]);
    let short = wait_for("the short call's webhook applied", Duration::from_secs(30), || {
        let id: Option<String> =
            s.db.query_opt(
                "SELECT k.provider_call_id FROM dialer.calls k JOIN dialer.webhook_events e ON e.call_id = k.id
                  WHERE k.batch_id = $1 AND k.phone_number = $2 AND k.status = 'ended' LIMIT 1",
                &[&b3, &n(5)],
            )
            .ok()
            .flatten()
            .map(|r| r.get(0));
        id
    });
    let settled_at = wait_for("the webhook's answer", Duration::from_secs(10), || {
        s.sim.webhooks().iter().filter(|w| w.call_id == short).filter_map(|w| w.answered_at_us).min()
    });
    let long: String =
        s.db.query_one("SELECT provider_call_id FROM dialer.calls WHERE batch_id = $1 AND phone_number = $2", &[&b3, &n(6)])
            .unwrap()
            .get(0);
    wait_for("two polls of the long call after the short one settled", Duration::from_secs(20), || {
        let later = s
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.contains(&long) && r.received_at_us > settled_at + 100_000)
            .count();
        (later >= 2).then_some(())
    });
    let after: Vec<_> = s
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&short) && r.received_at_us > settled_at + 100_000)
        .collect();
    assert!(after.is_empty(), "{provider}: the call its webhook settled was polled again: {after:?}");
    s.wait_batch_completed(b3, Duration::from_secs(30));
}

#[test]
fn vapi_end_of_call_reports_settle_calls_once_signed_with_its_hmac_plan() {
    webhooks_end_to_end("vapi", "+1555751000");
}

#[test]
fn retell_call_ended_and_call_analyzed_settle_calls_once() {
    webhooks_end_to_end("retell", "+1555752000");
}

#[test]
fn bland_post_call_webhooks_settle_calls_once() {
    webhooks_end_to_end("bland", "+1555753000");
}

/// Calls that end within milliseconds of being placed: their end-of-call reports come before the
/// worker has recorded the answers that carry their ids (it records answers together, up to
/// 500 ms apart, unless a delivery asks it to record them now). Each delivery waits for its call
/// to be recorded and settles it; none is ignored. Status polls are 10 minutes apart, so only the
/// webhooks can end these calls.
#[test]
fn a_webhook_that_comes_before_its_call_is_recorded_waits_for_it() {
    let mut s = Scenario::new("p-early-hooks", Scenario::sim_config(1, 5), &["dialer.status_poll_interval = '10min'"]);
    let receiver = WebhookReceiver::start(&s.cluster, "vapi");
    let url = receiver.url.clone();
    s.sim.update(|c| {
        c.vapi_webhook_url = Some(url);
        c.vapi_webhook_secret = Some("vapi-server-secret".into());
        c.vapi_webhook_auth = "hmac".into();
    });
    let m = mapping(&mut s, "vapi", Some(AGENT_ID), None, json!({"phoneNumberId": "6f1c2a9e-0b7d-4c1e-9a55-2f0e6d8b7c41"}));
    let (agency, base) = (s.agency_id, s.sim.base_url());
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'vapi', $2, $3, NULL, 'vapi-server-secret')", &[&agency, &API_KEY, &base])
        .unwrap();
    let numbers: Vec<String> = (1..=6).map(|i| format!("+155575400{i:02}")).collect();
    let b = batch(&mut s, m, "early hooks", &numbers.iter().map(String::as_str).collect::<Vec<_>>());
    s.wait_batch_completed(b, Duration::from_secs(60));
    let results = wait_for("a delivery per call", Duration::from_secs(20), || {
        let r = receiver.results();
        (r.len() >= numbers.len()).then_some(r)
    });
    let statuses: Vec<String> =
        results.iter().map(|r| r.as_ref().map(|v| v["status"].as_str().unwrap_or("").to_string()).unwrap_or_else(|e| e.clone())).collect();
    assert_eq!(statuses, vec!["applied"; numbers.len()], "{results:?}");
    let ended: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.calls WHERE batch_id = $1 AND status = 'ended' AND end_reason IS NOT NULL", &[&b])
            .unwrap()
            .get(0);
    assert_eq!(ended, numbers.len() as i64, "{}", s.describe(b));
}

/// Deliveries crafted by hand: unsigned, forged and stale ones are refused (28000) without
/// touching the call; a good one settles it with the event's own times; its repeat is a duplicate.
#[test]
fn unsigned_forged_and_stale_vapi_retell_bland_deliveries_touch_nothing() {
    use pg_dialer_integration::provider_sim::{bland_signature, retell_signature, vapi_hmac_signature};
    let mut s = Scenario::new("p-hook-refusals", Scenario::sim_config(60_000, 60_000), &["dialer.status_poll_interval = '10min'"]);
    let (agency, base) = (s.agency_id, s.sim.base_url());
    let from = Some("+14155550100");
    let mv = mapping(&mut s, "vapi", Some(AGENT_ID), None, json!({"phoneNumberId": "6f1c2a9e-0b7d-4c1e-9a55-2f0e6d8b7c41"}));
    let mr = mapping(&mut s, "retell", Some("agent_5b7e2f0a"), from, json!({}));
    let mb = mapping(&mut s, "bland", None, from, json!({"task": "Confirm the appointment."}));
    let mut ids = Vec::new();
    for (p, m, number) in [("vapi", mv, "+15557610001"), ("retell", mr, "+15557610002"), ("bland", mb, "+15557610003")] {
        let b = batch(&mut s, m, p, &[number]);
        let id: String = wait_for("the call placed", Duration::from_secs(30), || {
            s.db.query_opt("SELECT provider_call_id FROM dialer.calls WHERE batch_id = $1 AND status = 'in_progress'", &[&b])
                .ok()
                .flatten()
                .map(|r| r.get(0))
        });
        ids.push((p, id, b));
    }
    let ingest = |db: &mut postgres::Client, p: &str, body: &str, h: Value| {
        db.query_one("SELECT dialer.ingest_webhook($1, $2, $3)", &[&p, &body, &h]).map(|r| r.get::<_, Value>(0)).map_err(|e| {
            e.as_db_error()
                .map(|d| format!("{} {} {}", d.code().code(), d.message(), d.hint().unwrap_or("")))
                .unwrap_or_else(|| e.to_string())
        })
    };
    let now_ms = chrono_now_ms();
    let ended = "2026-01-02T03:04:05.678Z"; // the event's own time, long before it arrives
    for (p, id, b) in &ids {
        let (body, good, forged, stale): (String, Value, Value, Option<Value>) = match *p {
            "vapi" => {
                let body = json!({"message": {"type": "end-of-call-report", "timestamp": now_ms, "call": {"id": id},
                    "endedReason": "customer-ended-call", "startedAt": "2026-01-02T03:03:05.678Z", "endedAt": ended,
                    "artifact": {"transcript": "AI: hello", "recordingUrl": "https://example.invalid/r.wav"}}})
                .to_string();
                let ts = now_ms.to_string();
                let old = (now_ms - 600_000).to_string();
                (
                    body.clone(),
                    json!({"x-signature": vapi_hmac_signature("vsec", body.as_bytes(), &ts), "x-timestamp": ts}),
                    json!({"X-Vapi-Secret": "not-vsec"}),
                    Some(json!({"x-signature": vapi_hmac_signature("vsec", body.as_bytes(), &old), "x-timestamp": old})),
                )
            }
            "retell" => {
                let body =
                    json!({"event": "call_ended", "call": {"call_id": id, "call_status": "ended", "disconnection_reason": "user_hangup",
                    "start_timestamp": 1767323045678i64, "end_timestamp": 1767323045678i64}})
                    .to_string();
                (
                    body.clone(),
                    json!({"X-Retell-Signature": retell_signature(API_KEY, body.as_bytes(), now_ms)}),
                    json!({"X-Retell-Signature": retell_signature("another-key", body.as_bytes(), now_ms)}),
                    Some(json!({"X-Retell-Signature": retell_signature(API_KEY, body.as_bytes(), now_ms - 600_000)})),
                )
            }
            _ => {
                let body = json!({"call_id": id, "status": "completed", "completed": true, "answered_by": "human",
                    "started_at": "2026-01-02T03:03:05.678Z", "end_at": ended, "call_length": 1.0, "corrected_duration": "60"})
                .to_string();
                (
                    body.clone(),
                    json!({"X-Webhook-Signature": bland_signature("bsec", body.as_bytes())}),
                    json!({"X-Webhook-Signature": bland_signature("other", body.as_bytes())}),
                    None, // Bland signs no time: a replay is only ever a duplicate
                )
            }
        };
        // No secret stored yet (Vapi, Bland): refused, saying what to store.
        if *p != "retell" {
            let e = ingest(&mut s.db, p, &body, good.clone()).unwrap_err();
            assert!(e.starts_with("28000") && e.contains("webhook_secret"), "{p}: {e}");
            let secret = if *p == "vapi" { "vsec" } else { "bsec" };
            s.db.execute("SELECT dialer.set_provider_credentials($1, $2, $3, $4, NULL, $5)", &[&agency, p, &API_KEY, &base, &secret])
                .unwrap();
        }
        let e = ingest(&mut s.db, p, &body, json!({})).unwrap_err();
        assert!(e.starts_with("28000") && e.contains("missing"), "{p} unsigned: {e}");
        let e = ingest(&mut s.db, p, &body, forged).unwrap_err();
        assert!(e.starts_with("28000") && e.contains("does not match") && !e.contains("vsec") && !e.contains(API_KEY), "{p} forged: {e}");
        if let Some(stale) = stale {
            let e = ingest(&mut s.db, p, &body, stale).unwrap_err();
            assert!(e.starts_with("28000") && e.contains("stale"), "{p} stale: {e}");
        }
        let (status, events): (String, i64) = s
            .db
            .query_one("SELECT k.status, (SELECT count(*) FROM dialer.webhook_events e WHERE e.call_id = k.id) FROM dialer.calls k WHERE k.batch_id = $1", &[b])
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!((status.as_str(), events), ("in_progress", 0), "{p}: refused deliveries touched nothing");
        // The good one: applied once, with the event's times; the repeat is a duplicate.
        let v = ingest(&mut s.db, p, &body, good.clone()).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!((v["status"].as_str(), v["end_reason"].as_str()), (Some("applied"), Some("hangup")), "{p}: {v}");
        let v = ingest(&mut s.db, p, &body, good).unwrap();
        assert_eq!(v["status"], "duplicate", "{p}");
        let (ended_at, answered_at, stored): (String, String, i64) = s
            .db
            .query_one(
                "SELECT to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS'), to_char(answered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS'),
                        (SELECT count(*) FROM dialer.webhook_events e WHERE e.call_id = k.id AND (e.payload::text LIKE '%AI: hello%' OR e.payload::text LIKE '%vsec%'))
                   FROM dialer.calls k WHERE k.batch_id = $1",
                &[b],
            )
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .unwrap();
        assert_eq!(ended_at, "2026-01-02T03:04:05.678", "{p}: ended_at is the event's");
        assert_eq!(
            answered_at,
            if *p == "retell" { "2026-01-02T03:04:05.678" } else { "2026-01-02T03:03:05.678" },
            "{p}: answered_at is the event's"
        );
        assert_eq!(stored, 0, "{p}: neither transcripts nor secrets are stored with the event");
    }
    let e = ingest(&mut s.db, "vonage", "{}", json!({})).unwrap_err();
    assert!(e.starts_with("22023") && e.contains("'vapi', 'retell' and 'bland'"), "{e}");
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
