//! Leads (lead-posting-scheduler seed): provider factory, retry counting, human fallback,
//! outcomes through webhooks and polling, health, NOTIFY — against the worker and the simulator.

use base64::Engine;
use fallible_iterator::FallibleIterator;
use hmac::{Hmac, Mac};
use pg_dialer_integration::provider_sim::{Provider, Rule};
use pg_dialer_integration::{call_posts, posts_to, wait_for, Scenario, API_KEY};
use serde_json::{json, Value};
use std::time::Duration;

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";

fn contact_state(s: &mut Scenario, phone: &str) -> (String, i32, Option<String>, Option<String>) {
    let r =
        s.db.query_one("SELECT status, attempts, handoff, outcome FROM dialer.campaign_contacts WHERE phone_number = $1", &[&phone])
            .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn batch_for_mapping(s: &mut Scenario, mapping: i64, name: &str, max_attempts: i32, contacts: Value) -> i64 {
    let agency = s.agency_id;
    let b: i64 =
        s.db.query_one("SELECT dialer.create_batch($1, $2, $3, 600, 10, NULL, $4)", &[&agency, &mapping, &name, &max_attempts])
            .unwrap()
            .get(0);
    s.db.execute("UPDATE dialer.call_batches SET retry_delay = '200 ms' WHERE id = $1", &[&b]).unwrap();
    s.db.execute("SELECT dialer.add_contacts($1, $2)", &[&b, &contacts]).unwrap();
    b
}

#[test]
fn twilio_and_generic_adapters_send_their_exact_requests() {
    let mut cfg = Scenario::sim_config(300, 500);
    cfg.twilio_account_sid = Some(TWILIO_SID.to_string());
    let mut s = Scenario::new("l-adapters", cfg, &[]);
    let (agency, base) = (s.agency_id, s.sim.base_url());
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'twilio', $2, $3, $4)", &[&agency, &API_KEY, &base, &TWILIO_SID]).unwrap();
    let twilio: i64 =
        s.db.query_one(
            r#"SELECT dialer.create_agent_mapping($1, 'twilio', 'flow-1', 'IVR', '+15550009999',
                 '{"Url": "https://app.example/twiml", "StatusCallback": "https://app.example/status",
                   "StatusCallbackEvent": ["answered", "completed"], "MachineDetection": "Enable"}')"#,
            &[&agency],
        )
        .unwrap()
        .get(0);
    let generic_url = format!("{base}/voiceapi/v1/calls");
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'webhook', $2, $3)", &[&agency, &API_KEY, &generic_url]).unwrap();
    let generic: i64 = s
        .db
        .query_one(r#"SELECT dialer.create_agent_mapping($1, 'webhook', 'voiceapi-agent', NULL, NULL, '{"voice": "warm"}')"#, &[&agency])
        .unwrap()
        .get(0);
    let tb = batch_for_mapping(&mut s, twilio, "twilio", 3, json!([{"phone_number": "+15552100001", "lead_ref": "L-1"}]));
    let gb = batch_for_mapping(
        &mut s,
        generic,
        "generic",
        3,
        json!([{"phone_number": "+15552100002", "lead_ref": "L-2", "variables": {"plan": "gold"}}]),
    );
    s.wait_batch_completed(tb, Duration::from_secs(30));
    s.wait_batch_completed(gb, Duration::from_secs(30));

    let t = posts_to(&s.sim, "+15552100001");
    assert_eq!(t.len(), 1);
    let t = &t[0];
    assert_eq!(t.provider, Provider::Twilio);
    assert_eq!(t.path, format!("/2010-04-01/Accounts/{TWILIO_SID}/Calls.json"));
    assert!(t.auth_ok, "basic auth with the account SID and token");
    assert_eq!(t.body["To"], "+15552100001");
    assert_eq!(t.body["From"], "+15550009999");
    assert_eq!(t.body["MachineDetection"], "Enable");
    assert!(t.body["Url"].as_str().unwrap_or("").starts_with("https://app.example/twiml?batch_id="));
    assert!(t.body["StatusCallback"].as_str().unwrap_or("").contains("idempotency_key="));
    assert_eq!(t.body["StatusCallbackEvent"], json!(["answered", "completed"]));

    let g = posts_to(&s.sim, "+15552100002");
    assert_eq!(g.len(), 1);
    let g = &g[0];
    assert_eq!((g.provider, g.path.as_str(), g.auth_ok), (Provider::Generic, "/voiceapi/v1/calls", true));
    assert_eq!(g.body["phone_number"], "+15552100002");
    assert_eq!(g.body["lead_ref"], "L-2");
    assert_eq!(g.body["variables"]["plan"], "gold");
    assert_eq!(g.body["voice"], "warm");
    assert!(g.body["metadata"]["idempotency_key"].is_string());

    // Both calls were followed to their end by polling each provider's status endpoint.
    let ended: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.calls WHERE status = 'ended' AND provider IN ('twilio', 'webhook')", &[])
            .unwrap()
            .get(0);
    assert_eq!(ended, 2);
}

#[test]
fn network_errors_are_retried_without_counting_and_other_failures_count() {
    let mut s = Scenario::new("l-retry", Scenario::sim_config(200, 300), &[]);
    // A dropped connection: the request may have arrived. It is looked up by idempotency key,
    // not found, and dialed again as the same attempt.
    s.sim.set_rules(vec![
        Rule::new("+15552200001").drop_connection().times(1),
        Rule::new("+15552200002").status(500).message("agent crashed"),
    ]);
    let mapping = s.mapping_id;
    let b = batch_for_mapping(&mut s, mapping, "retry", 3, json!([{"phone_number": "+15552200001"}, {"phone_number": "+15552200002"}]));
    s.wait_batch_completed(b, Duration::from_secs(40));
    let (st, attempts, _, _) = contact_state(&mut s, "+15552200001");
    assert_eq!((st.as_str(), attempts), ("completed", 1), "the dropped request did not count as an attempt");
    assert_eq!(posts_to(&s.sim, "+15552200001").len(), 2);
    let looked_up =
        s.sim.requests().iter().filter(|r| r.method == "GET" && r.query.as_deref().unwrap_or("").contains("idempotency_key")).count();
    assert!(looked_up >= 1, "the lost attempt was looked up at the provider");
    let (st, attempts, handoff, outcome) = contact_state(&mut s, "+15552200002");
    assert_eq!((st.as_str(), attempts), ("failed", 3), "three 500s: three attempts, then failed");
    assert_eq!(posts_to(&s.sim, "+15552200002").len(), 3);
    assert_eq!(handoff.as_deref(), Some("manual_pending"), "no telecaller yet");
    assert_eq!(outcome.as_deref(), Some("ai_failed"));

    // Nothing listening at all: not counted, retried until the provider is back.
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, 'http://127.0.0.1:9')", &[&agency, &API_KEY]).unwrap();
    let b2 = batch_for_mapping(&mut s, mapping, "down", 3, json!([{"phone_number": "+15552200003"}]));
    let db = &mut s.db;
    wait_for("two failed connection attempts", Duration::from_secs(20), || {
        let n: i64 =
            db.query_one("SELECT count(*) FROM dialer.calls WHERE batch_id = $1 AND status = 'network_error'", &[&b2]).ok()?.get(0);
        (n >= 2).then_some(())
    });
    let (_, attempts, _, _) = contact_state(&mut s, "+15552200003");
    assert_eq!(attempts, 0, "connection failures are not attempts");
    let base = s.sim.base_url();
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3)", &[&agency, &API_KEY, &base]).unwrap();
    s.wait_batch_completed(b2, Duration::from_secs(30));
}

#[test]
fn hand_offs_go_to_available_telecallers_and_wait_when_none_is() {
    let mut s = Scenario::new("l-handoff", Scenario::sim_config(200, 300), &[]);
    s.sim.set_rules((1..=4).map(|i| Rule::new(format!("+1555230000{i}")).status(500).message("AI service down")).collect());
    let agency = s.agency_id;
    let ana: i64 = s.db.query_one("SELECT dialer.add_telecaller($1, 'Ana', 'facebook')", &[&agency]).unwrap().get(0);
    let ben: i64 = s.db.query_one("SELECT dialer.add_telecaller($1, 'Ben', 'facebook')", &[&agency]).unwrap().get(0);
    let mapping = s.mapping_id;
    let b = batch_for_mapping(
        &mut s,
        mapping,
        "handoff",
        1,
        json!([{"phone_number": "+15552300001", "source": "facebook"}, {"phone_number": "+15552300002", "source": "facebook"},
               {"phone_number": "+15552300003", "source": "facebook"}, {"phone_number": "+15552300004", "source": "web"}]),
    );
    s.wait_batch_completed(b, Duration::from_secs(30));
    let rows =
        s.db.query(
            "SELECT c.phone_number, c.handoff, f.telecaller_id, f.priority, f.review_at IS NOT NULL
               FROM dialer.campaign_contacts c JOIN dialer.followups f ON f.contact_id = c.id ORDER BY c.phone_number",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 4);
    let mut per_tc = std::collections::HashMap::new();
    for r in &rows[..3] {
        assert_eq!(r.get::<_, Option<String>>(1).as_deref(), Some("manual_assigned"));
        assert!(r.get::<_, bool>(3), "AI failure: priority follow-up");
        assert!(r.get::<_, bool>(4));
        *per_tc.entry(r.get::<_, Option<i64>>(2).unwrap_or(0)).or_insert(0) += 1;
    }
    let mut counts: Vec<i32> = per_tc.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2], "least open follow-ups first: work is shared");
    assert!(per_tc.contains_key(&ana) && per_tc.contains_key(&ben));
    assert_eq!(rows[3].get::<_, Option<String>>(1).as_deref(), Some("manual_pending"), "nobody works 'web' leads yet");
    assert_eq!(rows[3].get::<_, Option<i64>>(2), None);

    // A 'web' telecaller comes on shift: the waiting lead is assigned at once.
    let cleo: i64 = s.db.query_one("SELECT dialer.add_telecaller($1, 'Cleo', 'web', false)", &[&agency]).unwrap().get(0);
    let (_, _, h, _) = contact_state(&mut s, "+15552300004");
    assert_eq!(h.as_deref(), Some("manual_pending"), "an unavailable telecaller takes nothing");
    s.db.execute("SELECT dialer.set_telecaller_available($1, true)", &[&cleo]).unwrap();
    let r = s
        .db
        .query_one("SELECT c.handoff, f.telecaller_id FROM dialer.campaign_contacts c JOIN dialer.followups f ON f.contact_id = c.id WHERE c.phone_number = '+15552300004'", &[])
        .unwrap();
    assert_eq!((r.get::<_, Option<String>>(0).as_deref(), r.get::<_, Option<i64>>(1)), (Some("manual_assigned"), Some(cleo)));
}

#[test]
fn review_times_follow_the_agency_zone_on_both_sides_of_two_pm() {
    let mut s = Scenario::new("l-review", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    let cases = [
        // 09:30 in Kolkata (UTC+5:30) → same day 17:00 local.
        ("2026-11-21 04:00:00+00", "Asia/Kolkata", "2026-11-21 17:00"),
        // 13:59 → still the morning rule.
        ("2026-11-21 08:29:00+00", "Asia/Kolkata", "2026-11-21 17:00"),
        // 14:00 → next day 09:00.
        ("2026-11-21 08:30:00+00", "Asia/Kolkata", "2026-11-22 09:00"),
        // New York across the DST change: Saturday 15:00 EDT → Sunday 09:00 EST.
        ("2026-10-31 19:00:00+00", "America/New_York", "2026-11-01 09:00"),
    ];
    for (now, tz, want) in cases {
        let got: String = s
            .db
            .query_one("SELECT to_char(dialer._review_time($1::text::timestamptz, $2) AT TIME ZONE $2, 'YYYY-MM-DD HH24:MI')", &[&now, &tz])
            .unwrap()
            .get(0);
        assert_eq!(got, want, "handed off at {now} in {tz}");
    }
}

fn ultravox_sign(secret: &str, body: &str, ts: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    mac.update(ts.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn twilio_sign(token: &str, url: &str, form: &[(&str, &str)]) -> String {
    let mut sorted = form.to_vec();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[test]
fn webhooks_are_verified_deduplicated_and_applied_for_both_providers() {
    let mut cfg = Scenario::sim_config(60_000, 60_000); // calls stay up: only the webhook ends them
    cfg.twilio_account_sid = Some(TWILIO_SID.to_string());
    let mut s = Scenario::new("l-webhooks", cfg, &["dialer.status_poll_interval = '10min'"]);
    let (agency, base) = (s.agency_id, s.sim.base_url());
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3, NULL, 'whsec_test_123')", &[&agency, &API_KEY, &base])
        .unwrap();
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'twilio', $2, $3, $4)", &[&agency, &API_KEY, &base, &TWILIO_SID]).unwrap();
    let twilio: i64 = s
        .db
        .query_one(r#"SELECT dialer.create_agent_mapping($1, 'twilio', 'flow', NULL, '+15550009999', '{"Twiml": "<Response><Say>Hi</Say></Response>"}')"#, &[&agency])
        .unwrap()
        .get(0);
    let mapping = s.mapping_id;
    batch_for_mapping(&mut s, mapping, "uv", 3, json!([{"phone_number": "+15552400001"}, {"phone_number": "+15552400002"}]));
    batch_for_mapping(&mut s, twilio, "tw", 3, json!([{"phone_number": "+15552400003"}]));
    let db = &mut s.db;
    let ids: Vec<(String, String)> = wait_for("three calls in progress", Duration::from_secs(20), || {
        let rows = db
            .query("SELECT c.phone_number, k.provider_call_id FROM dialer.calls k JOIN dialer.campaign_contacts c ON c.id = k.contact_id WHERE k.status = 'in_progress' ORDER BY 1", &[])
            .ok()?;
        (rows.len() == 3).then(|| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    });
    let now = chrono::Utc::now().to_rfc3339();
    let ingest = |db: &mut postgres::Client, provider: &str, body: &str, headers: Value| {
        db.query_one("SELECT dialer.ingest_webhook($1, $2, $3)", &[&provider, &body, &headers]).map(|r| r.get::<_, Value>(0))
    };

    // Ultravox, valid: the call ends, the contact completes.
    let body = json!({"event": "call.ended", "call": {"callId": ids[0].1, "endReason": "hangup", "ended": now}}).to_string();
    let sig = ultravox_sign("whsec_test_123", &body, &now);
    let h = json!({"X-Ultravox-Webhook-Timestamp": now, "X-Ultravox-Webhook-Signature": format!("00ff, {sig}")});
    let v = ingest(&mut s.db, "ultravox", &body, h.clone()).unwrap();
    assert_eq!(v["status"], "applied");
    assert_eq!(contact_state(&mut s, "+15552400001").0, "completed");
    // Duplicate delivery: nothing changes.
    assert_eq!(ingest(&mut s.db, "ultravox", &body, h).unwrap()["status"], "duplicate");
    // Tampered: refused, nothing changes.
    let body2 = json!({"event": "call.ended", "call": {"callId": ids[1].1, "endReason": "unjoined"}}).to_string();
    let forged = json!({"X-Ultravox-Webhook-Timestamp": now, "X-Ultravox-Webhook-Signature": ultravox_sign("wrong", &body2, &now)});
    let err = ingest(&mut s.db, "ultravox", &body2, forged).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "28000");
    assert_eq!(contact_state(&mut s, "+15552400002").0, "in_progress");
    // Missing signature: refused.
    let err = ingest(&mut s.db, "ultravox", &body2, json!({})).unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("missing"));
    // Stale: refused.
    let old = (chrono::Utc::now() - chrono::Duration::minutes(20)).to_rfc3339();
    let stale = json!({"X-Ultravox-Webhook-Timestamp": old, "X-Ultravox-Webhook-Signature": ultravox_sign("whsec_test_123", &body2, &old)});
    assert!(ingest(&mut s.db, "ultravox", &body2, stale).unwrap_err().as_db_error().unwrap().message().contains("stale"));
    assert_eq!(contact_state(&mut s, "+15552400002").0, "in_progress");
    // Valid 'unjoined': the AI failed → manual follow-up with priority.
    let sig = ultravox_sign("whsec_test_123", &body2, &now);
    let v =
        ingest(&mut s.db, "ultravox", &body2, json!({"x-ultravox-webhook-timestamp": now, "x-ultravox-webhook-signature": sig})).unwrap();
    assert_eq!(v["status"], "applied");
    let (st, _, handoff, outcome) = contact_state(&mut s, "+15552400002");
    assert_eq!((st.as_str(), handoff.as_deref(), outcome.as_deref()), ("completed", Some("manual_pending"), Some("ai_failed")));

    // Twilio status callback, signed with the auth token over URL + sorted params.
    let url = "https://app.example/twilio/status?agency=1";
    let form = [("CallSid", ids[2].1.as_str()), ("CallStatus", "completed"), ("AccountSid", TWILIO_SID), ("SequenceNumber", "2")];
    let body3: String = form.iter().map(|(k, v)| format!("{k}={}", v.replace('+', "%2B"))).collect::<Vec<_>>().join("&");
    let tampered = body3.replace("completed", "busy");
    let h3 = json!({"X-Twilio-Signature": twilio_sign(API_KEY, url, &form), "X-Webhook-Url": url});
    assert_eq!(ingest(&mut s.db, "twilio", &tampered, h3.clone()).unwrap_err().as_db_error().unwrap().code().code(), "28000");
    assert_eq!(contact_state(&mut s, "+15552400003").0, "in_progress");
    assert_eq!(ingest(&mut s.db, "twilio", &body3, h3.clone()).unwrap()["status"], "applied");
    assert_eq!(ingest(&mut s.db, "twilio", &body3, h3).unwrap()["status"], "duplicate");
    assert_eq!(contact_state(&mut s, "+15552400003").0, "completed");

    // Unknown calls and malformed bodies.
    let v = ingest(&mut s.db, "ultravox", r#"{"event":"call.ended","call":{"callId":"nope"}}"#, json!({})).unwrap();
    assert_eq!(v["status"], "ignored");
    let err = ingest(&mut s.db, "ultravox", "{not json", json!({})).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22P02");
    let big = "x".repeat(2 * 1024 * 1024);
    assert_eq!(ingest(&mut s.db, "ultravox", &big, json!({})).unwrap_err().as_db_error().unwrap().code().code(), "54000");
}

#[test]
fn dispositions_route_outcomes_and_polling_closes_calls_without_webhooks() {
    let mut s = Scenario::new("l-dispositions", Scenario::sim_config(400, 600), &[]);
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.add_telecaller($1, 'Dee')", &[&agency]).unwrap();
    let mapping = s.mapping_id;
    let b = batch_for_mapping(
        &mut s,
        mapping,
        "dispo",
        3,
        json!([{"phone_number": "+15552500001"}, {"phone_number": "+15552500002"}, {"phone_number": "+15552500003"}, {"phone_number": "+15552500004"}]),
    );
    // No webhook ever comes: the provider's status endpoint closes every call.
    s.wait_batch_completed(b, Duration::from_secs(30));
    let ended: Vec<String> =
        s.db.query("SELECT end_reason FROM dialer.calls WHERE batch_id = $1", &[&b]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ended, vec!["hangup"; 4]);
    let call_of = |s: &mut Scenario, phone: &str| -> i64 {
        s.db.query_one("SELECT call_id FROM dialer.campaign_contacts WHERE phone_number = $1", &[&phone]).unwrap().get(0)
    };
    for (phone, dispo) in
        [("+15552500001", "success"), ("+15552500002", "not_interested"), ("+15552500003", "failed"), ("+15552500004", "invalid_number")]
    {
        let call = call_of(&mut s, phone);
        s.db.execute("SELECT dialer.set_disposition($1, $2, 'from the CRM')", &[&call, &dispo]).unwrap();
    }
    let rows =
        s.db.query(
            "SELECT c.outcome, c.handoff, f.priority FROM dialer.campaign_contacts c LEFT JOIN dialer.followups f ON f.contact_id = c.id
              WHERE c.batch_id = $1 ORDER BY c.phone_number",
            &[&b],
        )
        .unwrap();
    let got: Vec<(Option<String>, Option<String>, Option<bool>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![
            (Some("success".into()), None, None),
            (Some("not_interested".into()), Some("manual_assigned".into()), Some(false)),
            (Some("ai_failed".into()), Some("manual_assigned".into()), Some(true)),
            (Some("trashed".into()), None, None),
        ]
    );
    let err = s.db.query_one("SELECT dialer.set_disposition(1, 'maybe')", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22023");
}

#[test]
fn health_view_and_notify_payloads_after_a_known_run() {
    let mut s = Scenario::new("l-health", Scenario::sim_config(200, 300), &[]);
    s.sim.set_rules(vec![Rule::new("+15552600004").status(500).message("quota exceeded")]);
    let mut listener = s.cluster.connect();
    listener.batch_execute("LISTEN dialer_events").unwrap();
    let mapping = s.mapping_id;
    let b = batch_for_mapping(
        &mut s,
        mapping,
        "health",
        1,
        json!([{"phone_number": "+15552600001"}, {"phone_number": "+15552600002"}, {"phone_number": "+15552600003"}, {"phone_number": "+15552600004"}]),
    );
    s.wait_batch_completed(b, Duration::from_secs(30));

    let mut events = Vec::new();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(5));
    while let Ok(Some(n)) = it.next() {
        events.push(serde_json::from_str::<Value>(n.payload()).unwrap());
        if events.len() >= 2 {
            break;
        }
    }
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, vec!["max_retries_exceeded", "handoff"]);
    assert_eq!(events[0]["attempts"], 1);
    assert!(events[0]["contact_id"].is_number() && events[0]["batch_id"].is_number());
    for e in &events {
        // Anyone can LISTEN: no number, name or error text ever rides on an event.
        let text = e.to_string();
        assert!(!text.contains("+1555") && !text.contains("quota exceeded") && e.get("error").is_none(), "{text}");
    }
    assert_eq!(events[1]["handoff"], "manual_pending");

    let rows = s.db.query("SELECT metric, value, ok FROM dialer.health", &[]).unwrap();
    let health: std::collections::HashMap<String, (Option<f64>, bool)> = rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();
    assert_eq!(health.len(), 7, "the seed's six and voicemail");
    assert_eq!(health["voicemail"], (Some(0.0), true));
    assert_eq!(health["posting_success_rate"], (Some(75.0), false), "3 of 4 posts accepted is under 95%");
    assert_eq!(health["failed_lead_accumulation"], (Some(1.0), true));
    assert_eq!(health["concurrent_executions"], (Some(0.0), true));
    assert!(health["execution_duration"].1 && health["provider_latency"].1 && health["batch_size_variation"].1);
    assert!(call_posts(&s.sim).len() == 4);
}

#[test]
fn a_call_the_provider_never_ends_is_closed_after_the_call_timeout() {
    // The provider keeps saying "in progress" (a 10-minute call); no webhook ever comes.
    let mut s = Scenario::new("l-abandoned", Scenario::sim_config(600_000, 600_000), &["dialer.call_timeout = '1s'"]);
    let mapping = s.mapping_id;
    let b = batch_for_mapping(&mut s, mapping, "abandoned", 3, json!([{"phone_number": "+15552700001"}]));
    s.wait_batch_completed(b, Duration::from_secs(30));
    let (status, reason): (String, String) = {
        let r = s.db.query_one("SELECT status, end_reason FROM dialer.calls WHERE batch_id = $1", &[&b]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), reason.as_str()), ("ended", "no_outcome"));
    let polled = s.sim.requests().iter().filter(|r| r.method == "GET" && r.path.starts_with("/api/calls/")).count();
    assert!(polled >= 1, "the provider was asked before the call was given up");
}
