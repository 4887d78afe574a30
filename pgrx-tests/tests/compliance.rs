//! Compliance: calling windows in the contact's zone, do-not-call, attempt caps, one live call
//! per number, why_not_dialed — checked in the claim against live tables.

use pg_dialer_integration::provider_sim::max_concurrent_calls;
use pg_dialer_integration::{numbers, posts_to, wait_for, Scenario};
use serde_json::{json, Value};
use std::time::Duration;

fn opening(s: &mut Scenario, now: &str, tz: &str, start: &str, end: &str) -> String {
    s.db.query_one(
        "SELECT to_char(dialer._next_opening($1::text::timestamptz, $2, $3::text::time, $4::text::time, '{1,2,3,4,5,6,7}', 1)
                        AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
        &[&now, &tz, &start, &end],
    )
    .unwrap()
    .get(0)
}

#[test]
fn windows_open_and_close_at_their_edges_in_each_zone_and_across_dst() {
    let mut s = Scenario::new("c-windows", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    // London in winter is UTC+0; Kolkata is UTC+5:30.
    let cases = [
        ("2026-01-15 08:59:59+00", "Europe/London", "2026-01-15 09:00:00"),
        ("2026-01-15 09:00:00+00", "Europe/London", "2026-01-15 09:00:00"),
        ("2026-01-15 19:59:59+00", "Europe/London", "2026-01-15 19:59:59"),
        ("2026-01-15 20:00:00+00", "Europe/London", "2026-01-16 09:00:00"),
        ("2026-01-15 03:29:59+00", "Asia/Kolkata", "2026-01-15 03:30:00"),
        ("2026-01-15 14:30:00+00", "Asia/Kolkata", "2026-01-16 03:30:00"),
        // New York, the night before clocks spring forward: 21:00 EST → 09:00 EDT (13:00Z, not 14:00Z).
        ("2026-03-08 02:00:00+00", "America/New_York", "2026-03-08 13:00:00"),
        // And the night they fall back: 21:00 EDT → 09:00 EST (14:00Z).
        ("2026-11-01 01:00:00+00", "America/New_York", "2026-11-01 14:00:00"),
    ];
    for (now, tz, want) in cases {
        assert_eq!(opening(&mut s, now, tz, "09:00", "20:00"), want, "at {now} in {tz}");
    }
    // Weekdays only: Saturday 2026-01-17 10:00 London → Monday 09:00.
    let got: String = s
        .db
        .query_one("SELECT to_char(dialer._next_opening('2026-01-17 10:00+00', 'Europe/London', '09:00', '20:00', '{1,2,3,4,5}', 1) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')", &[])
        .unwrap()
        .get(0);
    assert_eq!(got, "2026-01-19 09:00");
    // A holiday of the agency is skipped.
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.add_holiday($1, '2026-01-19')", &[&agency]).unwrap();
    let got: String = s
        .db
        .query_one("SELECT to_char(dialer._next_opening('2026-01-17 10:00+00', 'Europe/London', '09:00', '20:00', '{1,2,3,4,5}', $1) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')", &[&agency])
        .unwrap()
        .get(0);
    assert_eq!(got, "2026-01-20 09:00");
}

/// A fixed-offset zone whose local hour is `hour` now (Etc/GMT signs are inverted).
fn zone_at_local_hour(s: &mut Scenario, hour: i32) -> String {
    let utc_hour: i32 = s.db.query_one("SELECT extract(hour FROM now() AT TIME ZONE 'UTC')::int", &[]).unwrap().get(0);
    let mut offset = hour - utc_hour;
    if offset > 14 {
        offset -= 24;
    }
    if offset < -12 {
        offset += 24;
    }
    if offset == 0 {
        "Etc/GMT".into()
    } else if offset > 0 {
        format!("Etc/GMT-{offset}")
    } else {
        format!("Etc/GMT+{}", -offset)
    }
}

#[test]
fn only_contacts_inside_their_window_are_dialed_and_the_rest_wait_for_the_opening() {
    let mut s = Scenario::new("c-dialwin", Scenario::sim_config(200, 300), &[]);
    let noon = zone_at_local_hour(&mut s, 12);
    let night = zone_at_local_hour(&mut s, 3);
    let batch = s.batch("windowed", 600, 5, 3);
    s.db.execute("SELECT dialer.set_calling_window($1, '09:00', '20:00')", &[&batch]).unwrap();
    s.db.execute(
        "SELECT dialer.add_contacts($1, $2)",
        &[
            &batch,
            &json!([{"phone_number": "+15557100001", "timezone": noon}, {"phone_number": "+15557100002", "timezone": night},
                          {"phone_number": "+442079460001"}]),
        ],
    )
    .unwrap();
    // London numbers take Europe/London from the number itself.
    let tz: String =
        s.db.query_one("SELECT timezone FROM dialer.campaign_contacts WHERE phone_number = '+442079460001'", &[]).unwrap().get(0);
    assert_eq!(tz, "Europe/London");
    wait_for("the noon contact's call", Duration::from_secs(15), || posts_to(&s.sim, "+15557100001").into_iter().next());
    let db = &mut s.db;
    let why: Value = wait_for("the night contact to be deferred", Duration::from_secs(10), || {
        let v: Value = db
            .query_one("SELECT dialer.why_not_dialed(id) FROM dialer.campaign_contacts WHERE phone_number = '+15557100002'", &[])
            .ok()?
            .get(0);
        v["reasons"].as_array()?.iter().any(|r| r["code"] == "outside_window").then_some(v)
    });
    let reason = why["reasons"].as_array().unwrap().iter().find(|r| r["code"] == "outside_window").unwrap().clone();
    assert!(reason["message"].as_str().unwrap().contains("outside its calling window"), "{reason}");
    let next: bool =
        s.db.query_one(
            "SELECT next_attempt_at = dialer._next_opening(now(), timezone, '09:00', '20:00', '{1,2,3,4,5,6,7}', $2)
               FROM dialer.campaign_contacts WHERE phone_number = '+15557100002' AND batch_id = $1",
            &[&batch, &s.agency_id],
        )
        .unwrap()
        .get(0);
    assert!(next, "deferred to its next opening");
    assert!(posts_to(&s.sim, "+15557100002").is_empty());
    // The dial is auditable: UTC time, local time and zone.
    let row =
        s.db.query_one(
            "SELECT timezone, (local_time = created_at AT TIME ZONE timezone) FROM dialer.calls WHERE phone_number = '+15557100001'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), noon);
    assert!(row.get::<_, bool>(1));

    // A window change brings forward what the old window deferred, and nothing else: a job
    // delayed by its caller keeps its time.
    let job: i64 = s.db.query_one("SELECT dialer.schedule_call('+15557100009', delay => '1 day')", &[]).unwrap().get(0);
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.set_queue_calling_window($1, '00:00', '23:59')", &[&agency]).unwrap();
    s.db.execute("SELECT dialer.set_queue_calling_window($1, '00:30', '23:30')", &[&agency]).unwrap();
    assert_eq!(s.job_state(job), "delayed", "a window change does not bring a delayed job forward");
    s.db.execute("SELECT dialer.set_calling_window($1, '00:00', '23:59')", &[&batch]).unwrap();
    wait_for("the night contact, released by the wider window", Duration::from_secs(15), || {
        posts_to(&s.sim, "+15557100002").into_iter().next()
    });
    assert!(posts_to(&s.sim, "+15557100009").is_empty(), "the delayed job waits for its time");
}

#[test]
fn do_not_call_stops_queued_contacts_even_when_listed_late() {
    let mut s = Scenario::new("c-dnc", Scenario::sim_config(200, 300), &[]);
    let batch = s.batch("dnc", 600, 5, 3);
    s.db.execute("SELECT dialer.pause_batch($1)", &[&batch]).unwrap();
    s.add_numbers(batch, &["+15557200001".into(), "+15557200002".into(), "+15557200003".into()]);
    // Through the function: cancelled at once.
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.add_do_not_call('+15557200001', $1, 'asked to stop')", &[&agency]).unwrap();
    let st: (String, String) = {
        let r = s.db.query_one("SELECT status, last_error FROM dialer.campaign_contacts WHERE phone_number = '+15557200001'", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(st, ("cancelled".to_string(), "dnc".to_string()));
    // Written straight into the table after the contact was queued: the claim itself refuses it.
    s.db.execute("INSERT INTO dialer.do_not_call (phone_number, reason) VALUES ('+15557200002', 'regulator list')", &[]).unwrap();
    let why: Value =
        s.db.query_one("SELECT dialer.why_not_dialed(id) FROM dialer.campaign_contacts WHERE phone_number = '+15557200002'", &[])
            .unwrap()
            .get(0);
    assert!(
        why["reasons"].as_array().unwrap().iter().any(|r| r["code"] == "dnc" && r["message"].as_str().unwrap().contains("regulator list")),
        "{why}"
    );
    s.db.execute("SELECT dialer.resume_batch($1)", &[&batch]).unwrap();
    s.wait_batch_completed(batch, Duration::from_secs(20));
    assert!(posts_to(&s.sim, "+15557200001").is_empty() && posts_to(&s.sim, "+15557200002").is_empty(), "a listed number was posted");
    assert_eq!(posts_to(&s.sim, "+15557200003").len(), 1);
    let cancelled: i64 = s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE last_error = 'dnc'", &[]).unwrap().get(0);
    assert_eq!(cancelled, 2);
    assert!(s.db.query_one("SELECT dialer.remove_do_not_call('+15557200001', $1)", &[&agency]).unwrap().get::<_, bool>(0));
}

#[test]
fn a_daily_cap_per_number_holds_across_batches_and_one_number_never_has_two_live_calls() {
    let mut s = Scenario::new("c-caps", Scenario::sim_config(2000, 2500), &[]);
    // Two batches holding the same number: never two calls at once.
    let b1 = s.batch("first", 600, 5, 3);
    let b2 = s.batch("second", 600, 5, 3);
    s.add_numbers(b1, &["+15557300001".into()]);
    s.add_numbers(b2, &["+15557300001".into()]);
    s.wait_batch_completed(b1, Duration::from_secs(30));
    s.wait_batch_completed(b2, Duration::from_secs(30));
    let calls = s.sim.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(max_concurrent_calls(calls.iter()), 1, "the two calls to one number overlapped");

    // A cap of 2 attempts per number per day across the agency's batches.
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.set_agency_limits($1, 2)", &[&agency]).unwrap();
    let b3 = s.batch("third", 600, 5, 3);
    s.add_numbers(b3, &["+15557300001".into(), "+15557300002".into()]);
    wait_for("the uncapped number", Duration::from_secs(15), || posts_to(&s.sim, "+15557300002").into_iter().next());
    let db = &mut s.db;
    let why: Value = wait_for("the capped number to be deferred", Duration::from_secs(10), || {
        let v: Value = db
            .query_one(
                "SELECT dialer.why_not_dialed(id) FROM dialer.campaign_contacts WHERE batch_id = $1 AND phone_number = '+15557300001'",
                &[&b3],
            )
            .ok()?
            .get(0);
        v["reasons"].as_array()?.iter().any(|r| r["code"] == "attempt_cap").then_some(v)
    });
    assert!(why.to_string().contains("reached 2 attempt(s) today"), "{why}");
    let deferred: bool =
        s.db.query_one(
            "SELECT c.next_attempt_at = (date_trunc('day', now() AT TIME ZONE a.timezone) + interval '1 day') AT TIME ZONE a.timezone
               FROM dialer.campaign_contacts c, dialer.agencies a WHERE c.batch_id = $1 AND c.phone_number = '+15557300001' AND a.id = $2",
            &[&b3, &agency],
        )
        .unwrap()
        .get(0);
    assert!(deferred, "deferred to the agency's next local midnight");
    assert_eq!(posts_to(&s.sim, "+15557300001").len(), 2, "no third attempt today");
}

#[test]
fn why_not_dialed_names_every_reason() {
    let mut s = Scenario::new("c-why", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    let agency = s.agency_id;
    let reason = |s: &mut Scenario, contact: i64| -> Vec<String> {
        let v: Value = s.db.query_one("SELECT dialer.why_not_dialed($1)", &[&contact]).unwrap().get(0);
        v["reasons"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap_or("").to_string()).collect()
    };
    let batch = s.batch("why", 60, 2, 3);
    s.add_numbers(batch, &["+15557400001".into(), "+15557400002".into()]);
    s.db.execute("SELECT dialer._promote_batches(now())", &[]).unwrap();
    let c1: i64 = s.db.query_one("SELECT id FROM dialer.campaign_contacts WHERE phone_number = '+15557400001'", &[]).unwrap().get(0);
    let c2: i64 = s.db.query_one("SELECT id FROM dialer.campaign_contacts WHERE phone_number = '+15557400002'", &[]).unwrap().get(0);
    assert!(reason(&mut s, c1).contains(&"worker_disabled".to_string()));
    assert!(reason(&mut s, c2).contains(&"queued_behind".to_string()));

    s.db.execute(
        "UPDATE dialer.call_batches SET next_slot_at = now() + interval '30 seconds', in_progress_count = 2,
                         rate_limited_until = now() + interval '1 minute' WHERE id = $1",
        &[&batch],
    )
    .unwrap();
    let r = reason(&mut s, c1);
    for code in ["pacing", "max_concurrent", "rate_limited"] {
        assert!(r.contains(&code.to_string()), "{code} in {r:?}");
    }
    s.db.execute(
        "UPDATE dialer.call_batches SET next_slot_at = NULL, in_progress_count = 0, rate_limited_until = NULL WHERE id = $1",
        &[&batch],
    )
    .unwrap();
    s.db.execute("SELECT dialer.pause_batch($1)", &[&batch]).unwrap();
    assert!(reason(&mut s, c1).contains(&"batch_paused".to_string()));
    s.db.execute("SELECT dialer.resume_batch($1)", &[&batch]).unwrap();
    // Outside the window: a window that has just closed everywhere-local for this contact.
    s.db.execute("UPDATE dialer.campaign_contacts SET timezone = 'UTC' WHERE id = $1", &[&c1]).unwrap();
    s.db.execute(
        "SELECT dialer.set_calling_window($1, ((now() AT TIME ZONE 'UTC')::time - interval '2 hours')::time,
                                              ((now() AT TIME ZONE 'UTC')::time - interval '1 hour')::time)",
        &[&batch],
    )
    .ok(); // may be refused near midnight (end before start); then the window check is skipped below
    let windowed: bool =
        s.db.query_one("SELECT window_start IS NOT NULL FROM dialer.call_batches WHERE id = $1", &[&batch]).unwrap().get(0);
    if windowed {
        assert!(reason(&mut s, c1).contains(&"outside_window".to_string()));
        s.db.execute("SELECT dialer.clear_calling_window($1)", &[&batch]).unwrap();
    }
    s.db.execute("SELECT dialer.add_do_not_call('+15557400001')", &[]).unwrap();
    let r = reason(&mut s, c1);
    assert!(r.contains(&"dnc".to_string()) && r.contains(&"cancelled".to_string()), "{r:?}");
    // The cap, with an attempt already made today.
    s.db.execute("SELECT dialer.set_agency_limits($1, 1)", &[&agency]).unwrap();
    s.db.execute(
        "INSERT INTO dialer.calls (contact_id, batch_id, agency_id, provider, idempotency_key, status, phone_number)
         VALUES ($1, $2, $3, 'ultravox', 'manual-1', 'ended', '+15557400002')",
        &[&c2, &batch, &agency],
    )
    .unwrap();
    assert!(reason(&mut s, c2).contains(&"attempt_cap".to_string()));
    // The queue.
    let job: i64 = s.db.query_one("SELECT dialer.schedule_call('+15557400009')", &[]).unwrap().get(0);
    s.db.execute("SELECT dialer.pause_queue()", &[]).unwrap();
    assert!(reason(&mut s, job).contains(&"queue_paused".to_string()));
}

#[test]
fn bad_compliance_input_is_refused() {
    let mut s = Scenario::new("c-bad", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    let batch = s.batch("bad", 10, 2, 3);
    let cases = [
        (
            format!("SELECT dialer.add_contacts({batch}, '[{{\"phone_number\":\"+15557500001\",\"timezone\":\"Mars/Olympus\"}}]')"),
            "22023",
            "contacts[0].timezone",
        ),
        (format!("SELECT dialer.set_calling_window({batch}, '20:00', '09:00')"), "22023", "ends"),
        (format!("SELECT dialer.set_calling_window({batch}, '09:00', '20:00', '{{0,8}}')"), "22023", "ISO weekdays"),
        ("SELECT dialer.add_do_not_call('555-0100')".to_string(), "22023", "E.164"),
        ("SELECT dialer.set_agency_limits(1, 0)".to_string(), "22023", "positive"),
        (format!("SELECT dialer.set_retry_delays({batch}, '{{\"sometimes\": \"1 hour\"}}')"), "22023", "unknown outcome"),
        (format!("SELECT dialer.set_retry_delays({batch}, '{{\"busy\": \"-5 minutes\"}}')"), "22023", "non-negative"),
    ];
    for (sql, code, text) in cases {
        let err = s.db.batch_execute(&sql).expect_err(&sql);
        let e = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(e.code().code(), code, "{sql}: {}", e.message());
        assert!(e.message().contains(text), "{sql}: {}", e.message());
    }
    let n: i64 = s.db.query_one("SELECT count(*) FROM dialer.do_not_call", &[]).unwrap().get(0);
    assert_eq!(n, 0);
}

#[test]
fn retry_delays_per_outcome_bring_a_no_answer_back_later() {
    let mut s = Scenario::new("c-retry", Scenario::sim_config(300, 400), &[]);
    s.sim.set_rules(vec![pg_dialer_integration::provider_sim::Rule::new("+15557600001").end_reason("unjoined").duration_ms(300).times(1)]);
    let batch = s.batch("retry", 600, 5, 3);
    s.db.execute(r#"SELECT dialer.set_retry_delays($1, '{"no-answer": "2 seconds", "busy": "10 minutes"}')"#, &[&batch]).unwrap();
    s.add_numbers(batch, &["+15557600001".into()]);
    s.wait_batch_completed(batch, Duration::from_secs(30));
    let posts = posts_to(&s.sim, "+15557600001");
    assert_eq!(posts.len(), 2, "no answer, then dialed again");
    let gap = posts[1].received_at_us - posts[0].received_at_us;
    assert!(gap >= 2_000_000, "the no-answer delay was respected ({gap} µs)");
}

/// A call claimed for a pacing slot still to come (the worker claims the next second's slots in
/// one pass and holds their requests: src/held.rs) that has waited this long unsent is held; it
/// has at least ~200 ms to go (one call every ~505 ms, claimed ~500 ms before its slot).
fn a_held_call(s: &mut Scenario, batch: i64) -> (i64, i64, String) {
    wait_for("a call held for its slot", Duration::from_secs(20), || {
        let rows =
            s.db.query(
                "SELECT id, contact_id, phone_number FROM dialer.calls
                  WHERE batch_id = $1 AND status = 'dialing'
                    AND created_at BETWEEN clock_timestamp() - interval '300 ms' AND clock_timestamp() - interval '30 ms'
                  ORDER BY id DESC",
                &[&batch],
            )
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).find(|(_, _, number): &(i64, i64, String)| posts_to(&s.sim, number).is_empty())
    })
}

/// Some once no attempt of the batch is 'dialing' (claimed, not yet answered or withdrawn).
fn nothing_dialing(s: &mut Scenario, batch: i64) -> Option<()> {
    let n: i64 = s.db.query_one("SELECT count(*) FROM dialer.calls WHERE batch_id = $1 AND status = 'dialing'", &[&batch]).unwrap().get(0);
    (n == 0).then_some(())
}

/// What became of a held call once it is settled: None while it is still held or dialing.
fn settled(s: &mut Scenario, call_id: i64, contact_id: i64) -> Option<(bool, String, Option<String>)> {
    let call: Option<String> = s.db.query_opt("SELECT status FROM dialer.calls WHERE id = $1", &[&call_id]).unwrap().map(|r| r.get(0));
    if call.as_deref() == Some("dialing") {
        return None;
    }
    let r = s.db.query_one("SELECT status, last_error FROM dialer.campaign_contacts WHERE id = $1", &[&contact_id]).unwrap();
    Some((call.is_some(), r.get(0), r.get(1)))
}

#[test]
fn held_calls_honour_a_do_not_call_entry_a_pause_and_a_cancel_that_land_before_their_slot() {
    let mut s = Scenario::new("c-held", Scenario::sim_config(100, 200), &[]);
    let batch = s.batch("held", 120, 50, 3);
    s.add_numbers(batch, &numbers("+1555731", 60));
    let agency = s.agency_id;

    // A number listed while its call is held: withdrawn, cancelled as 'dnc', never posted.
    let (call, contact, number) = a_held_call(&mut s, batch);
    s.db.execute("INSERT INTO dialer.do_not_call (phone_number, agency_id) VALUES ($1, $2)", &[&number, &agency]).unwrap();
    let after = wait_for("the held call settled", Duration::from_secs(10), || settled(&mut s, call, contact));
    assert_eq!(after, (false, "cancelled".into(), Some("dnc".into())), "held call {call} to {number}");
    // The batch goes on: later calls are placed.
    wait_for("a later call posted", Duration::from_secs(10), || {
        let n: i64 =
            s.db.query_one("SELECT count(*) FROM dialer.calls WHERE batch_id = $1 AND id > $2 AND status <> 'dialing'", &[&batch, &call])
                .unwrap()
                .get(0);
        (n > 0).then_some(())
    });
    assert!(posts_to(&s.sim, &number).is_empty(), "a number listed before its slot was posted");

    // A pause while a call is held: the call is withdrawn and its contact waits again.
    let (call, contact, number) = a_held_call(&mut s, batch);
    let posts_before = pg_dialer_integration::call_posts(&s.sim).len();
    s.db.execute("SELECT dialer.pause_batch($1)", &[&batch]).unwrap();
    let after = wait_for("the held call settled", Duration::from_secs(10), || settled(&mut s, call, contact));
    assert_eq!(after, (false, "queued".into(), None), "held call {call} to {number}");
    wait_for("nothing dialing in the paused batch", Duration::from_secs(10), || nothing_dialing(&mut s, batch));
    // At most a call already handed to the HTTP threads (its slot under RELEASE_AHEAD_MS away).
    assert!(pg_dialer_integration::call_posts(&s.sim).len() <= posts_before + 1, "calls left after the pause");
    assert!(posts_to(&s.sim, &number).is_empty(), "a call held at the pause was posted");
    let (counted, actual): (i32, i64) = {
        let r =
            s.db.query_one(
                "SELECT b.queued_count, (SELECT count(*) FROM dialer.campaign_contacts c WHERE c.batch_id = b.id AND c.status = 'queued')
                   FROM dialer.call_batches b WHERE b.id = $1",
                &[&batch],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(counted as i64, actual, "the batch's queued counter after a withdrawal");

    // Resumed, the withdrawn contact is dialed; a cancel while another call is held stops that one.
    s.db.execute("SELECT dialer.resume_batch($1)", &[&batch]).unwrap();
    wait_for("the withdrawn contact dialed after the resume", Duration::from_secs(20), || {
        (!posts_to(&s.sim, &number).is_empty()).then_some(())
    });
    let (call, contact, number) = a_held_call(&mut s, batch);
    s.db.execute("SELECT dialer.cancel_batch($1)", &[&batch]).unwrap();
    let after = wait_for("the held call settled", Duration::from_secs(10), || settled(&mut s, call, contact));
    assert_eq!(after, (false, "cancelled".into(), Some("batch cancelled".into())), "held call {call} to {number}");
    assert!(posts_to(&s.sim, &number).is_empty(), "a call held at the cancel was posted");
}

#[test]
fn turning_dialing_off_withdraws_the_calls_held_for_later_slots() {
    let mut s = Scenario::new("c-held-off", Scenario::sim_config(100, 200), &[]);
    let batch = s.batch("held-off", 120, 50, 3);
    s.add_numbers(batch, &numbers("+1555732", 60));

    let (call, contact, number) = a_held_call(&mut s, batch);
    s.db.execute("ALTER SYSTEM SET dialer.enabled = off", &[]).unwrap();
    s.db.execute("SELECT pg_reload_conf()", &[]).unwrap();
    let after = wait_for("the held call settled", Duration::from_secs(10), || settled(&mut s, call, contact));
    assert_eq!(after, (false, "queued".into(), None), "held call {call} to {number}");
    wait_for("nothing dialing once dialing is off", Duration::from_secs(10), || nothing_dialing(&mut s, batch));
    assert!(posts_to(&s.sim, &number).is_empty(), "a call held when dialing was turned off was posted");

    // On again: the withdrawn contact is dialed.
    s.db.execute("ALTER SYSTEM RESET dialer.enabled", &[]).unwrap();
    s.db.execute("SELECT pg_reload_conf()", &[]).unwrap();
    wait_for("the withdrawn contact dialed once dialing is on", Duration::from_secs(20), || {
        (!posts_to(&s.sim, &number).is_empty()).then_some(())
    });
}
