//! Caller-ID pools, voicemail as an outcome, and expiry, on a real cluster dialing the strict
//! simulator.

use fallible_iterator::FallibleIterator;
use pg_dialer_integration::provider_sim::Rule;
use pg_dialer_integration::{call_posts, numbers, posts_to, wait_for, Scenario, API_KEY};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const POOL: [&str; 3] = ["+14155550101", "+12125550102", "+16465550103"];

fn from_counts(s: &mut Scenario) -> HashMap<String, i64> {
    s.db.query("SELECT from_number, count(*) FROM dialer.calls GROUP BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".into()), r.get(1)))
        .collect()
}

#[test]
fn a_caller_id_pool_balances_prefers_local_numbers_and_holds_caps() {
    let mut s = Scenario::new("d-pool", Scenario::sim_config(50, 100), &[]);
    let (agency, mapping) = (s.agency_id, s.mapping_id);
    for n in POOL {
        s.db.execute("SELECT dialer.add_caller_id($1, $2)", &[&agency, &n]).unwrap();
    }
    s.db.execute("SELECT dialer.use_caller_id_pool($1)", &[&mapping]).unwrap();
    let b = s.batch("pool", 6000, 50, 1);
    // 300 contacts local to none of the numbers (same country, area 555): balanced.
    s.add_numbers(b, &numbers("+1555760", 300));
    s.wait_batch_completed(b, Duration::from_secs(120));
    let counts = from_counts(&mut s);
    eprintln!("caller-ID pool over 300 calls: {counts:?}");
    let used: Vec<i64> = POOL.iter().map(|n| counts.get(*n).copied().unwrap_or(0)).collect();
    assert_eq!(used.iter().sum::<i64>(), 300, "every call from the pool: {counts:?}");
    assert!(used.iter().max().unwrap() - used.iter().min().unwrap() <= 1, "balanced within one call: {counts:?}");
    // The stored request (the audit) carries the number the calls row names.
    let mismatched: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.calls WHERE NOT strpos(request::text, from_number) > 0", &[]).unwrap().get(0);
    assert_eq!(mismatched, 0);

    // Caps: 3 more calls today for each of the first two numbers, none for the third.
    for (n, cap) in [(POOL[0], 103), (POOL[1], 103), (POOL[2], 100)] {
        s.db.execute("SELECT dialer.add_caller_id($1, $2, $3)", &[&agency, &n, &cap]).unwrap();
    }
    // Ten contacts in New York's 212: the 212 number first (local) until its cap, then the
    // other one with calls left; four wait, dialed from no number at all.
    let b2 = s.batch("pool capped", 6000, 50, 1);
    s.add_numbers(b2, &numbers("+1212761", 10));
    wait_for("six of ten dialed", Duration::from_secs(60), || {
        let c = from_counts(&mut s);
        (c.get(POOL[0]) == Some(&103) && c.get(POOL[1]) == Some(&103)).then_some(())
    });
    let first_three: Vec<String> =
        s.db.query("SELECT k.from_number FROM dialer.calls k WHERE k.batch_id = $1 ORDER BY k.id LIMIT 3", &[&b2])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(first_three, vec![POOL[1]; 3], "local number first");
    s.wake();
    let waiting: Vec<(i64, Value)> =
        s.db.query("SELECT id, dialer.why_not_dialed(id) FROM dialer.campaign_contacts WHERE batch_id = $1 AND status = 'queued'", &[&b2])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(waiting.len(), 4, "capped: the rest wait");
    for (_, why) in &waiting {
        assert!(why["reasons"].as_array().unwrap().iter().any(|r| r["code"] == "caller_ids_exhausted"), "{why}");
    }
    let counts = from_counts(&mut s);
    assert_eq!(counts.get(POOL[2]), Some(&100), "a capped number is never used: {counts:?}");
    assert_eq!(counts.len(), 3, "no call from a number outside the pool: {counts:?}");
    // (Claimed is not yet posted: the worker holds each request until its pacing slot.)
    wait_for("the six claimed calls posted", Duration::from_secs(10), || (call_posts(&s.sim).len() >= 306).then_some(()));
    assert_eq!(call_posts(&s.sim).len(), 306);

    // A number disabled is not used either; one added frees the waiting contacts.
    s.db.execute("SELECT dialer.add_caller_id($1, $2, NULL, false)", &[&agency, &POOL[0]]).unwrap();
    s.db.execute("SELECT dialer.add_caller_id($1, '+12125550199', 2)", &[&agency]).unwrap();
    wait_for("two more dialed from the new number", Duration::from_secs(30), || {
        (from_counts(&mut s).get("+12125550199") == Some(&2)).then_some(())
    });
    assert_eq!(from_counts(&mut s).get(POOL[0]), Some(&103));
}

fn twilio_mapping(s: &mut Scenario) -> i64 {
    let agency = s.agency_id;
    let base = s.sim.base_url();
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'twilio', $2, $3, $4)", &[&agency, &API_KEY, &base, &TWILIO_SID]).unwrap();
    let template = json!({"Twiml": "<Response><Say>Hi</Say></Response>", "MachineDetection": "Enable"});
    s.db.query_one("SELECT dialer.create_agent_mapping($1, 'twilio', NULL, NULL, '+14155550100', $2)", &[&agency, &template])
        .unwrap()
        .get(0)
}

#[test]
fn voicemail_is_routed_by_each_batchs_policy() {
    let mut cfg = Scenario::sim_config(200, 300);
    cfg.twilio_account_sid = Some(TWILIO_SID.to_string());
    let mut s = Scenario::new("d-voicemail", cfg, &["dialer.status_poll_interval = '300ms'"]);
    let agency = s.agency_id;
    let m = twilio_mapping(&mut s);
    let mut batches = Vec::new();
    for (i, policy) in ["retry", "done", "handoff"].iter().enumerate() {
        let b: i64 =
            s.db.query_one("SELECT dialer.create_batch($1, $2, $3, 600, 5, NULL, 2)", &[&agency, &m, &format!("vm {policy}")])
                .unwrap()
                .get(0);
        s.db.execute("SELECT dialer.set_batch_options($1, $2)", &[&b, policy]).unwrap();
        s.db.execute("SELECT dialer.set_retry_delays($1, $2)", &[&b, &json!({"voicemail": "1 second"})]).unwrap();
        let number = format!("+1555770000{i}");
        s.sim.set_rules(vec![
            Rule::new("+15557700000").end_reason("voicemail"),
            Rule::new("+15557700001").end_reason("voicemail"),
            Rule::new("+15557700002").end_reason("voicemail"),
        ]);
        s.db.execute("SELECT dialer.add_contacts($1, $2)", &[&b, &json!([{"phone_number": number}])]).unwrap();
        batches.push((b, number));
    }
    for (b, _) in &batches {
        s.wait_batch_completed(*b, Duration::from_secs(60));
    }
    let row = |s: &mut Scenario, b: i64| {
        let r =
            s.db.query_one(
                "SELECT c.attempts, c.outcome, c.handoff, p.voicemail_count FROM dialer.campaign_contacts c
                   JOIN dialer.batch_progress p ON p.batch_id = c.batch_id WHERE c.batch_id = $1",
                &[&b],
            )
            .unwrap();
        (r.get::<_, i32>(0), r.get::<_, Option<String>>(1), r.get::<_, Option<String>>(2), r.get::<_, i32>(3))
    };
    // retry: dialed again after the voicemail delay, up to max_attempts, then the humans.
    assert_eq!(row(&mut s, batches[0].0), (2, Some("ai_failed".into()), Some("manual_pending".into()), 2));
    assert_eq!(posts_to(&s.sim, &batches[0].1).len(), 2);
    // done: the contact completes as voicemail, nobody is bothered.
    assert_eq!(row(&mut s, batches[1].0), (1, Some("voicemail".into()), None, 1));
    // handoff: straight to the telecallers.
    assert_eq!(row(&mut s, batches[2].0), (1, Some("ai_failed".into()), Some("manual_pending".into()), 1));
    let health: f64 = s.db.query_one("SELECT value FROM dialer.health WHERE metric = 'voicemail'", &[]).unwrap().get(0);
    assert_eq!(health, 4.0, "four calls reached a machine");
    let e = s.db.execute("SELECT dialer.set_batch_options($1, 'ignore')", &[&batches[0].0]).unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "22023");
}

#[test]
fn nothing_is_dialed_after_a_batch_or_job_expires() {
    let mut s = Scenario::new("d-expiry", Scenario::sim_config(200, 300), &[]);
    let mut listener = s.cluster.connect();
    listener.batch_execute("LISTEN dialer_events").unwrap();
    // 6 a minute: one call every 10 s; the batch expires 3 s after the first.
    let b = s.batch("expiring", 6, 5, 1);
    s.db.execute("SELECT dialer.set_batch_options($1, expires_at => now() + interval '3 seconds')", &[&b]).unwrap();
    s.add_numbers(b, &numbers("+1555780", 5));
    s.wait_batch_completed(b, Duration::from_secs(30));
    assert_eq!(call_posts(&s.sim).len(), 1, "only the first slot came before the deadline");
    let r =
        s.db.query_one("SELECT expired_count, completed_count, percent_done FROM dialer.batch_progress WHERE batch_id = $1", &[&b])
            .unwrap();
    assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (4, 1));
    let why: Value =
        s.db.query_one(
            "SELECT dialer.why_not_dialed(id) FROM dialer.campaign_contacts WHERE batch_id = $1 AND status = 'expired' LIMIT 1",
            &[&b],
        )
        .unwrap()
        .get(0);
    assert_eq!(why["reasons"][0]["code"], "expired", "{why}");
    let mut expired_events = 0;
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(2));
    while let Ok(Some(n)) = it.next() {
        let e: Value = serde_json::from_str(n.payload()).unwrap();
        if e["event"] == "expired" {
            assert_eq!(e["batch_id"], b);
            expired_events += 1;
        }
    }
    assert_eq!(expired_events, 4);

    // A job with a deadline, in a paused queue: it expires waiting, and says so.
    s.db.execute("SELECT dialer.pause_queue($1)", &[&s.agency_id]).unwrap();
    let job: i64 =
        s.db.query_one("SELECT dialer.schedule_call('+15557819999', expires_at => now() + interval '1 second')", &[]).unwrap().get(0);
    let status = s.wait_job_state(job, "expired", Duration::from_secs(20));
    assert_eq!(status["expiresAt"].is_string(), true, "{status}");
    s.db.execute("SELECT dialer.resume_queue($1)", &[&s.agency_id]).unwrap();
    let stats: Value = s.db.query_one("SELECT dialer.queue_stats()", &[]).unwrap().get(0);
    assert_eq!(stats["expired"], 1, "{stats}");
    s.wake();
    assert!(posts_to(&s.sim, "+15557819999").is_empty(), "an expired job is never dialed");
    let e =
        s.db.execute("SELECT dialer.schedule_call('+15557819998', delay => '1 hour', expires_at => now() + interval '1 minute')", &[])
            .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "22023", "a deadline before the call is due is refused");
}
