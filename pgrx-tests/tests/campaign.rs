//! The Foundation slice end to end: worker + real cluster + simulator over loopback.
//! Every assertion about dialing is made from the simulator's own request log.

use pg_dialer_integration::provider_sim::{Provider, Rule};
use pg_dialer_integration::{numbers, wait_for, Scenario, AGENT_ID, API_KEY, FROM_NUMBER};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn posts_to_calls(s: &Scenario) -> Vec<pg_dialer_integration::provider_sim::RequestRecord> {
    s.sim
        .requests()
        .into_iter()
        .filter(|r| r.provider == Provider::Ultravox && r.method == "POST" && pg_dialer_integration::is_create_path(&r.path))
        .collect()
}

#[test]
fn fifty_contacts_at_600_per_minute_are_each_dialed_once_and_the_batch_completes() {
    let mut s = Scenario::new("fifty", Scenario::sim_config(200, 400), &[]);
    let batch = s.batch("fifty", 600, 20, 3);
    let nums = numbers("+1555010", 50);
    assert_eq!(s.add_numbers(batch, &nums), 50);
    s.wake();
    s.wait_batch_completed(batch, Duration::from_secs(60));

    let posts = posts_to_calls(&s);
    assert_eq!(posts.len(), 50, "one POST per contact");
    let dialed: HashSet<String> = posts.iter().filter_map(|p| p.to.clone()).collect();
    assert_eq!(dialed, nums.iter().cloned().collect::<HashSet<_>>(), "every number exactly once");

    let rows =
        s.db.query(
            "SELECT c.id, c.phone_number, c.status, c.attempts, k.provider_call_id, k.idempotency_key, k.status, k.request
               FROM dialer.campaign_contacts c JOIN dialer.calls k ON k.id = c.call_id WHERE c.batch_id = $1",
            &[&batch],
        )
        .unwrap();
    assert_eq!(rows.len(), 50);
    let by_number: HashMap<String, _> = posts.iter().map(|p| (p.to.clone().unwrap_or_default(), p)).collect();
    for row in rows {
        let contact_id: i64 = row.get(0);
        let phone: String = row.get(1);
        let status: String = row.get(2);
        let attempts: i32 = row.get(3);
        let provider_call_id: Option<String> = row.get(4);
        let key: String = row.get(5);
        let call_status: String = row.get(6);
        let request: Value = row.get(7);
        assert_eq!((status.as_str(), attempts, call_status.as_str()), ("completed", 1, "ended"), "{phone}");
        let post = by_number[&phone];
        assert!(post.auth_ok, "X-API-Key sent");
        assert_eq!(post.status, Some(201));
        assert_eq!(provider_call_id, post.call_id, "callId stored on the calls row");
        let body = &post.body;
        assert_eq!(post.path, format!("/api/agents/{AGENT_ID}/calls"), "a call with an agent goes to the agent's calls");
        assert_eq!(body["medium"], serde_json::json!({"telnyx": {"outgoing": {"to": phone, "from": FROM_NUMBER}}}));
        assert_eq!(body["firstSpeakerSettings"], serde_json::json!({"agent": {}}));
        assert!(body.get("agentId").is_none() && body.get("firstSpeaker").is_none(), "no field Ultravox refuses");
        assert!(body["metadata"].as_object().is_some_and(|m| m.values().all(Value::is_string)), "metadata values are strings");
        assert_eq!(body["metadata"]["batch_id"], batch.to_string());
        assert_eq!(body["metadata"]["contact_id"], contact_id.to_string());
        assert_eq!(body["metadata"]["idempotency_key"], key.as_str());
        assert!(body["templateContext"]["idx"].is_number());
        assert!(!request.to_string().contains(API_KEY), "no key in calls.request");
    }
    let counters =
        s.db.query_one(
            "SELECT total_contacts, queued_count, in_progress_count, completed_count, failed_count
               FROM dialer.batch_progress WHERE batch_id = $1",
            &[&batch],
        )
        .unwrap();
    let c: (i32, i32, i32, i32, i32) = (counters.get(0), counters.get(1), counters.get(2), counters.get(3), counters.get(4));
    assert_eq!(c, (50, 0, 0, 50, 0));
    let runs: i64 = s.db.query_one("SELECT count(*) FROM dialer.runs WHERE mode = 'worker' AND status = 'COMPLETED'", &[]).unwrap().get(0);
    assert!(runs > 0, "ticks are logged in runs");
}

#[test]
fn pacing_at_120_per_minute_and_max_concurrent_hold_at_the_provider() {
    let mut s = Scenario::new("pacing", Scenario::sim_config(1800, 2200), &[]);
    let batch = s.batch("paced", 120, 3, 3);
    let nums = numbers("+1555020", 12);
    s.add_numbers(batch, &nums);
    s.wake();
    s.wait_batch_completed(batch, Duration::from_secs(90));

    let posts = posts_to_calls(&s);
    assert_eq!(posts.len(), 12);
    let mut times: Vec<i64> = posts.iter().map(|p| p.received_at_us).collect();
    times.sort();
    let min_gap_us = times.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(i64::MAX);
    // Measured at the simulator, after loopback and its own scheduling: under load that adds a few
    // ms to some requests and not others (our send times themselves are spaced to the µs).
    if min_gap_us < 490_000 {
        let gaps: Vec<i64> = times.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
        let rows = s.db.query("SELECT (extract(epoch from created_at)*1000)::float8, (extract(epoch from dispatched_at)*1000)::float8 FROM dialer.calls WHERE batch_id = $1 ORDER BY id", &[&batch]).unwrap();
        let t: Vec<(f64, f64)> = rows.iter().map(|r| (r.get::<_, f64>(0), r.get::<_, f64>(1))).collect();
        eprintln!("gaps ms {gaps:?}\nclaims/dispatch {t:?}\nrecv {times:?}");
    }
    // 60000 / 120 = 500 ms between calls; a few ms of jitter allowed.
    assert!(min_gap_us >= 490_000, "two POSTs only {min_gap_us} µs apart");
    let calls = s.sim.calls();
    let peak = pg_dialer_integration::provider_sim::max_concurrent_calls(calls.iter());
    assert!(peak <= 3, "{peak} calls at once, max_concurrent is 3");
    assert_eq!(peak, 3, "the limit is reached, so it is what held the rate");
}

#[test]
fn a_429_requeues_and_redials_after_retry_after_and_a_500_fails_the_contact() {
    let mut s = Scenario::new("errors", Scenario::sim_config(100, 200), &[]);
    s.sim.set_rules(vec![
        Rule::new("+15550300001").status(429).retry_after_secs(2).times(1),
        Rule::new("+15550300002").status(500).message("agent overloaded"),
    ]);
    let limited = s.batch("limited", 600, 5, 3);
    s.add_numbers(limited, &["+15550300001".to_string()]);
    let failing = s.batch("failing", 600, 5, 1);
    s.add_numbers(failing, &["+15550300002".to_string()]);
    s.wake();

    // The 429: back to queued (not an attempt), then dialed again after Retry-After.
    let db = &mut s.db;
    wait_for("the 429 to be recorded", Duration::from_secs(20), || {
        let row = db.query_one("SELECT status, attempts FROM dialer.campaign_contacts WHERE phone_number = '+15550300001'", &[]).ok()?;
        let (st, attempts): (String, i32) = (row.get(0), row.get(1));
        let rl: i64 = db.query_one("SELECT count(*) FROM dialer.calls WHERE status = 'rate_limited'", &[]).ok()?.get(0);
        (rl == 1).then_some((st, attempts))
    });
    s.wait_batch_completed(limited, Duration::from_secs(30));
    let posts: Vec<_> = posts_to_calls(&s).into_iter().filter(|p| p.to.as_deref() == Some("+15550300001")).collect();
    assert_eq!(posts.len(), 2, "one 429, one redial");
    assert_eq!(posts[0].status, Some(429));
    assert_eq!(posts[1].status, Some(201));
    let gap = posts[1].received_at_us - posts[0].received_at_us;
    assert!(gap >= 1_990_000, "redialed {gap} µs after a Retry-After of 2 s");
    let status: String =
        s.db.query_one("SELECT status FROM dialer.campaign_contacts WHERE phone_number = '+15550300001'", &[]).unwrap().get(0);
    assert_eq!(status, "completed");

    // The 500: failed with the error text, counted on the batch.
    s.wait_batch_completed(failing, Duration::from_secs(30));
    let row = s.db.query_one("SELECT status, last_error FROM dialer.campaign_contacts WHERE phone_number = '+15550300002'", &[]).unwrap();
    let (st, err): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(st, "failed");
    let err = err.unwrap_or_default();
    assert!(err.contains("500") && err.contains("agent overloaded"), "{err}");
    let failed: i32 = s.db.query_one("SELECT failed_count FROM dialer.call_batches WHERE id = $1", &[&failing]).unwrap().get(0);
    assert_eq!(failed, 1);
}

#[test]
fn process_batches_from_a_session_returns_the_seed_shapes() {
    // The worker stays out of the way: dialer.enabled = off.
    let mut s = Scenario::new("fn", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    let v: Value = s.db.query_one("SELECT dialer.process_batches()", &[]).unwrap().get(0);
    assert_eq!(v, serde_json::json!({"processed": 0, "message": "No batches to process"}));

    let batch = s.batch("manual", 1, 5, 3);
    s.add_numbers(batch, &numbers("+1555040", 3));
    let v: Value = s.db.query_one("SELECT dialer.process_batches()", &[]).unwrap().get(0);
    assert_eq!(v, serde_json::json!({"batches_processed": 1, "calls_initiated": 1, "calls_failed": 0}));
    assert_eq!(posts_to_calls(&s).len(), 1, "1 call per minute: one slot now");

    // A tick already running elsewhere: the loser says so and records it.
    let mut holder = s.cluster.connect();
    let mut tx = holder.transaction().unwrap();
    tx.execute("SELECT 1 FROM dialer.tick_lock WHERE id = 1 FOR UPDATE", &[]).unwrap();
    let v: Value = s.db.query_one("SELECT dialer.process_batches()", &[]).unwrap().get(0);
    assert_eq!(v, serde_json::json!({"status": "SKIPPED_CONCURRENT"}));
    tx.rollback().unwrap();
    let (mode, status): (String, String) = {
        let r = s.db.query_one("SELECT mode, status FROM dialer.runs ORDER BY id DESC LIMIT 1", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((mode.as_str(), status.as_str()), ("function", "SKIPPED_CONCURRENT"));
}

#[test]
fn the_worker_comes_back_after_pg_terminate_backend_and_finishes_the_batch() {
    let mut s = Scenario::new("restart", Scenario::sim_config(200, 300), &[]);
    let batch = s.batch("restart", 300, 10, 3);
    let nums = numbers("+1555050", 20);
    s.add_numbers(batch, &nums);
    let first_pid = wait_for("the worker", Duration::from_secs(20), || s.worker_pid());
    s.wake();
    wait_for("a few calls", Duration::from_secs(20), || (posts_to_calls(&s).len() >= 3).then_some(()));
    let killed: bool = s.db.query_one("SELECT pg_terminate_backend($1)", &[&first_pid]).unwrap().get(0);
    assert!(killed);
    let second_pid = wait_for("a new worker", Duration::from_secs(20), || s.worker_pid().filter(|p| *p != first_pid));
    assert_ne!(first_pid, second_pid);
    s.wait_batch_completed(batch, Duration::from_secs(60));
    let posts = posts_to_calls(&s);
    let mut seen = HashSet::new();
    for p in &posts {
        assert!(seen.insert(p.to.clone()), "{:?} dialed twice", p.to);
    }
    assert_eq!(seen.len(), 20);
}

#[test]
fn bad_input_over_a_real_connection_gets_sqlstates_and_writes_nothing() {
    let mut s = Scenario::new("badinput", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    let (agency, mapping) = (s.agency_id, s.mapping_id);
    let batch = s.batch("b", 10, 2, 3);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("SELECT dialer.add_contacts({batch}, '[{{\"phone_number\":\"+15550000001\"}},{{\"phone_number\":\"0044 20 7946\"}}]')"),
            "22023",
            "contacts[1].phone_number",
        ),
        (
            format!("SELECT dialer.add_contacts({batch}, '[{{\"phone_number\":\"+15550000001\"}},\"oops\"]')"),
            "22P02",
            "contacts[1] must be a JSON object",
        ),
        (format!("SELECT dialer.create_batch({agency}, {mapping}, 'x', 0)"), "22023", "calls_per_minute"),
        (format!("SELECT dialer.create_batch({agency}, {mapping}, 'x', -5)"), "22023", "calls_per_minute"),
        ("SELECT dialer.add_contacts(987654, '[]')".to_string(), "P0002", "batch 987654 does not exist"),
        (format!("SELECT dialer.create_batch(55555, {mapping}, 'x')"), "P0002", "agency 55555 does not exist"),
    ];
    for (sql, code, text) in cases {
        let err = s.db.batch_execute(&sql).expect_err(&sql);
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db_err.code().code(), code, "{sql}: {}", db_err.message());
        assert!(db_err.message().contains(text), "{sql}: {}", db_err.message());
    }
    let contacts: i64 = s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts", &[]).unwrap().get(0);
    let batches: i64 = s.db.query_one("SELECT count(*) FROM dialer.call_batches", &[]).unwrap().get(0);
    assert_eq!((contacts, batches), (0, 1));
}

/// Every node of an EXPLAIN (FORMAT JSON) plan under `node`, itself included.
fn plan_nodes<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(node);
    for child in node["Plans"].as_array().into_iter().flatten() {
        plan_nodes(child, out);
    }
}

/// The claim (sql/claim.sql) reads a batch's contacts from campaign_contacts_claim_idx in order
/// and stops at its limit, however many the batch holds: no sort of the batch. Run as the worker
/// runs it (one generic plan, no bitmap scans, no JIT).
#[test]
fn the_claim_reads_a_batch_in_index_order_and_stops_at_its_limit() {
    let mut s = Scenario::new("claim-plan", Scenario::sim_config(200, 400), &["dialer.enabled = off"]);
    let batch = s.batch("big", 600_000, 100, 3);
    assert_eq!(s.add_numbers(batch, &numbers("+1555020", 3000)), 3000);
    s.db.batch_execute("SELECT dialer._promote_batches(clock_timestamp()); ANALYZE dialer.campaign_contacts").unwrap();
    let mut tx = s.db.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL enable_bitmapscan = off; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off;
         PREPARE claim(bigint[], integer, float8, integer, float8, boolean, text[], integer[], integer) AS {}",
        include_str!("../../sql/claim.sql")
    ))
    .unwrap();
    let explained: Value = tx
        .query_one(
            &format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim(ARRAY[{batch}::bigint], 10, 1000, 0, NULL, false, ARRAY['a'], ARRAY[10], 10)"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let root = &explained[0]["Plan"];
    assert_eq!(root["Actual Rows"], 10, "ten contacts claimed: {root}");
    let candidates = root["Plans"]
        .as_array()
        .and_then(|ctes| ctes.iter().find(|n| n["Subplan Name"] == "CTE candidates"))
        .unwrap_or_else(|| panic!("no candidates CTE in {root}"));
    let mut nodes = Vec::new();
    plan_nodes(candidates, &mut nodes);
    assert!(!nodes.iter().any(|n| n["Node Type"] == "Sort"), "the candidates are sorted: {candidates}");
    let scan = nodes
        .iter()
        .find(|n| n["Relation Name"] == "campaign_contacts")
        .unwrap_or_else(|| panic!("no scan of campaign_contacts in {candidates}"));
    assert_eq!(scan["Index Name"], "campaign_contacts_claim_idx", "{scan}");
    let read = scan["Actual Rows"].as_f64().unwrap_or(f64::MAX);
    assert!(read <= 11.0, "read {read} of 3,000 contacts to claim 10: {scan}");
    tx.rollback().unwrap();
}

/// One claim statement serves many batches: each gets its own budget and pacing, the HTTP pool's
/// room goes to them in order, and a batch that shares a capped provider account with one before
/// it is deferred (nothing claimed from it) to a statement of its own. Run as the worker runs it.
#[test]
fn one_claim_serves_many_batches_and_defers_those_sharing_a_capped_account() {
    let mut s = Scenario::new("claim-set", Scenario::sim_config(200, 400), &["dialer.enabled = off"]);
    let (first, second) = (s.batch("first", 600_000, 100, 3), s.batch("second", 600_000, 100, 3));
    assert_eq!(s.add_numbers(first, &numbers("+1555022", 20)), 20);
    assert_eq!(s.add_numbers(second, &numbers("+1555023", 20)), 20);
    s.db.batch_execute("SELECT dialer._promote_batches(clock_timestamp())").unwrap();
    // (kind, batch) → rows, and the room rows' room, for one claim rolled back afterwards.
    let mut claim = |rooms: [i32; 2], total: i32, cap: Option<i32>| {
        use postgres::types::Type;
        let mut tx = s.db.transaction().unwrap();
        tx.batch_execute("SET LOCAL enable_bitmapscan = off; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off").unwrap();
        tx.execute("SELECT dialer.set_provider_rate_limit($1, 'ultravox', $2)", &[&s.agency_id, &cap]).unwrap();
        let statement = tx
            .prepare_typed(
                include_str!("../../sql/claim.sql"),
                &[
                    Type::INT8_ARRAY,
                    Type::INT4,
                    Type::FLOAT8,
                    Type::INT4,
                    Type::FLOAT8,
                    Type::BOOL,
                    Type::TEXT_ARRAY,
                    Type::INT4_ARRAY,
                    Type::INT4,
                ],
            )
            .unwrap();
        let (batches, accounts) = (vec![first, second], vec!["acct", "acct"]);
        let rows =
            tx.query(&statement, &[&batches, &3i32, &1000f64, &0i32, &None::<f64>, &false, &accounts, &rooms.to_vec(), &total]).unwrap();
        let mut got: HashMap<(String, i64), (usize, Option<i32>)> = HashMap::new();
        for r in rows {
            let e = got.entry((r.get(0), r.get(1))).or_insert((0, None));
            e.0 += 1;
            e.1 = r.get(17);
        }
        tx.rollback().unwrap();
        got
    };
    let call = |b: i64| ("call".to_string(), b);
    let room = |b: i64| ("room".to_string(), b);

    let got = claim([10, 10], 10, None);
    assert_eq!(got.get(&call(first)).map(|g| g.0), Some(3), "the first batch's budget of 3: {got:?}");
    assert_eq!(got.get(&call(second)).map(|g| g.0), Some(3), "the second batch's, in the same statement: {got:?}");
    assert_eq!(got.len(), 2, "nothing deferred or short of room: {got:?}");

    // Room for 4 in all: the first batch takes its 3, the second the 1 left (and says so).
    let got = claim([10, 10], 4, None);
    assert_eq!(got.get(&call(first)).map(|g| g.0), Some(3), "{got:?}");
    assert_eq!(got.get(&call(second)).map(|g| g.0), Some(1), "{got:?}");
    assert_eq!(got.get(&room(second)).and_then(|g| g.1), Some(1), "{got:?}");

    // Their account capped at 5 calls a second: the account's slots go to the first batch; the
    // second is deferred, untouched.
    let got = claim([10, 10], 10, Some(5));
    assert!(got.get(&call(first)).is_some_and(|g| g.0 >= 1), "{got:?}");
    assert_eq!(got.get(&call(second)), None, "a batch sharing the capped account is not claimed from: {got:?}");
    assert!(got.contains_key(&("deferred".to_string(), second)), "it comes back deferred: {got:?}");
}

#[test]
fn due_probes_read_the_index_when_statistics_still_count_dialed_contacts_as_queued() {
    let mut s = Scenario::new("due-probes", Scenario::sim_config(200, 400), &["dialer.enabled = off"]);
    let batch = s.batch("probed", 600_000, 100, 3);
    assert_eq!(s.add_numbers(batch, &numbers("+1555021", 3000)), 3000);
    // Statistics taken while every contact was queued; then the first 2,900 are dialed (as claims
    // leave them) before the next ANALYZE.
    s.db.batch_execute(
        "SELECT dialer._promote_batches(clock_timestamp()); ANALYZE dialer.campaign_contacts;
         UPDATE dialer.campaign_contacts SET status = 'in_progress'
          WHERE id IN (SELECT id FROM dialer.campaign_contacts ORDER BY id LIMIT 2900)",
    )
    .unwrap();
    // Counted in this transaction: a sequential scan would read from the table's start, past the
    // 2,900 contacts already dialed, at every pass. (pg_stat_xact_* also shows what earlier
    // transactions of this session did until the session reports it: the difference is ours.)
    let seq_scans = |tx: &mut postgres::Transaction| -> i64 {
        tx.query_one("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'dialer.campaign_contacts'::regclass", &[])
            .unwrap()
            .get(0)
    };
    let mut tx = s.db.transaction().unwrap();
    let before = seq_scans(&mut tx);
    let due: bool = tx.query_one("SELECT dialer._batch_due_at($1, clock_timestamp()) IS NOT NULL", &[&batch]).unwrap().get(0);
    let promoted: i32 = tx.query_one("SELECT dialer._promote_batches(clock_timestamp())", &[]).unwrap().get(0);
    let scanned = seq_scans(&mut tx) - before;
    tx.rollback().unwrap();
    assert!(due, "queued contacts are due");
    assert_eq!(promoted, 0, "nothing pending to promote");
    assert_eq!(scanned, 0, "the probes of campaign_contacts used its indexes");
}

/// A campaign loaded into an empty table has outgrown the table's planner statistics: they are
/// refreshed in a session the worker starts for it (the postmaster says so at DEBUG1), not in the
/// dialing loop, where an ANALYZE held up the immediate calls that came meanwhile.
#[test]
fn outgrown_statistics_are_refreshed_in_a_session_of_their_own() {
    // (autovacuum off: its ANALYZE would leave nothing outgrown for the worker's)
    let mut s = Scenario::new(
        "stats-session",
        Scenario::sim_config(200, 400),
        &["log_min_messages = debug1", "autovacuum = off", "dialer.status_poll_interval = '1s'"],
    );
    let batch = s.batch("analysed", 600, 10, 1);
    assert_eq!(s.add_numbers(batch, &numbers("+1555041", 3000)), 3000);
    s.wake();
    wait_for("campaign_contacts analysed", Duration::from_secs(60), || {
        let analysed: i64 =
            s.db.query_one("SELECT analyze_count FROM pg_stat_user_tables WHERE relid = 'dialer.campaign_contacts'::regclass", &[])
                .unwrap()
                .get(0);
        (analysed > 0).then_some(())
    });
    let log = s.cluster.server_log();
    assert!(log.contains("starting background worker process \"pg_dialer statistics\""), "no statistics session in the log");
    assert!(!log.contains("statistics could not be refreshed"), "the statistics session failed");
}

/// What a poll round's ends leave behind, per contact in order: the contact, its call, its
/// hand-off; then the batch's counters.
fn ends_left(s: &mut Scenario, batch: i64) -> (Vec<String>, String) {
    let contacts =
        s.db.query(
            "SELECT concat_ws(' | ', c.status, c.outcome, c.handoff, c.attempts, c.next_attempt_at IS NOT NULL, c.last_error,
                              k.status, k.end_reason, k.answered_at AT TIME ZONE 'UTC', k.ended_at AT TIME ZONE 'UTC',
                              (SELECT count(*) FROM dialer.followups f WHERE f.contact_id = c.id))
               FROM dialer.campaign_contacts c JOIN dialer.calls k ON k.id = c.call_id
              WHERE c.batch_id = $1 ORDER BY c.id",
            &[&batch],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let counters =
        s.db.query_one(
            "SELECT concat_ws(' | ', status, queued_count, in_progress_count, completed_count, failed_count, voicemail_count)
               FROM dialer.call_batches WHERE id = $1",
            &[&batch],
        )
        .unwrap()
        .get(0);
    (contacts, counters)
}

/// Two poll rounds recording the same calls at once (the worker's and a process_batches() one),
/// one hearing that a call ended which the other still heard live: each locks the calls it names
/// in id order before it writes, so neither waits on the other in a cycle (Postgres would end one
/// with a deadlock error, 40P01, and its answers with it).
#[test]
fn two_poll_rounds_recording_the_same_calls_at_once_never_deadlock() {
    let mut s = Scenario::new("c-poll-locks", Scenario::sim_config(3_600_000, 3_600_000), &["dialer.status_poll_interval = '1h'"]);
    let b = s.batch("locks", 600, 10, 3);
    s.add_numbers(b, &numbers("+1555031", 2));
    s.wake();
    let ids: Vec<i64> = wait_for("both calls in progress", Duration::from_secs(60), || {
        let ids: Vec<i64> =
            s.db.query(
                "SELECT id FROM dialer.calls WHERE batch_id = $1 AND status = 'in_progress' AND provider_call_id IS NOT NULL ORDER BY id",
                &[&b],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (ids.len() == 2).then_some(ids)
    });
    // A third session holds both rows, so that the two rounds start writing at the same moment.
    let mut holder = s.cluster.connect();
    let mut hold = holder.transaction().unwrap();
    hold.execute("SELECT 1 FROM dialer.calls WHERE id = ANY ($1) FOR UPDATE", &[&ids]).unwrap();
    // Round one heard the first call end and the second still live; round two the other way round.
    let rounds: Vec<_> = [[true, false], [false, true]]
        .into_iter()
        .map(|ended| {
            let (mut db, ids) = (s.cluster.connect(), ids.clone());
            std::thread::spawn(move || {
                let reasons: Vec<Option<String>> = ended.iter().map(|e| e.then(|| "hangup".to_string())).collect();
                db.query_one(
                    "SELECT dialer._record_status($1, $2, $3, '{NULL,NULL}'::timestamptz[], '{NULL,NULL}'::timestamptz[])",
                    &[&ids, &ended.to_vec(), &reasons],
                )
                .map(|r| r.get::<_, i32>(0))
                .map_err(|e| e.as_db_error().map(|d| format!("{} {}", d.code().code(), d.message())).unwrap_or_else(|| e.to_string()))
            })
        })
        .collect();
    wait_for("both rounds waiting for the held rows", Duration::from_secs(30), || {
        let waiting: i64 = s
            .db
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%dialer._record_status%'", &[])
            .unwrap()
            .get(0);
        (waiting == 2).then_some(())
    });
    hold.commit().unwrap();
    let results: Vec<Result<i32, String>> = rounds.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(results.iter().all(Result::is_ok), "both rounds recorded: {results:?}");
    let ended: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.calls WHERE id = ANY ($1) AND status = 'ended' AND end_reason = 'hangup'", &[&ids])
            .unwrap()
            .get(0);
    assert_eq!(ended, 2, "each round ended the call it heard end: {}", s.describe(b));
}

#[test]
fn a_poll_round_ends_many_calls_in_one_statement_as_end_call_ends_each() {
    // Calls that last an hour and are never polled: the test reports their ends itself.
    let mut s = Scenario::new("c-ends", Scenario::sim_config(3_600_000, 3_600_000), &["dialer.status_poll_interval = '1h'"]);
    // One of each kind of end, and a call still live that was answered.
    let reasons = ["hangup", "invalid_number", "busy", "voicemail", "no-answer", "hangup", "live"];
    let mut batches = Vec::new();
    for (i, name) in ["one statement", "one by one"].iter().enumerate() {
        let b = s.batch(name, 600, 10, 3);
        s.db.execute("SELECT dialer.set_retry_delays($1, $2)", &[&b, &serde_json::json!({"busy": "1 hour"})]).unwrap();
        s.db.execute("SELECT dialer.set_batch_options($1, 'done')", &[&b]).unwrap();
        s.add_numbers(b, &numbers(&format!("+155502{i}"), reasons.len()));
        batches.push(b);
    }
    s.wake();
    let calls_of = |s: &mut Scenario, b: i64| -> Vec<i64> {
        s.db.query(
            "SELECT k.id FROM dialer.campaign_contacts c JOIN dialer.calls k ON k.id = c.call_id
              WHERE c.batch_id = $1 AND k.status = 'in_progress' AND k.provider_call_id IS NOT NULL ORDER BY c.id",
            &[&b],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let all = wait_for("every call in progress", Duration::from_secs(60), || {
        let (a, b) = (calls_of(&mut s, batches[0]), calls_of(&mut s, batches[1]));
        (a.len() == reasons.len() && b.len() == reasons.len()).then_some((a, b))
    });
    let ended: Vec<bool> = reasons.iter().map(|r| *r != "live").collect();
    let end_reasons: Vec<Option<&str>> = reasons.iter().map(|r| (*r != "live").then_some(*r)).collect();
    let answered = "2026-01-01 10:00:00+00";
    let ended_at = "2026-01-01 10:05:00+00";
    let answered_at: Vec<Option<&str>> = reasons.iter().map(|_| Some(answered)).collect();
    let ended_ats: Vec<Option<&str>> = reasons.iter().map(|r| (*r != "live").then_some(ended_at)).collect();

    // All at once, as a poll round records them (an ended call named twice counts once).
    let mut ids = all.0.clone();
    ids.push(all.0[0]);
    let (mut e2, mut r2, mut a2, mut x2) = (ended.clone(), end_reasons.clone(), answered_at.clone(), ended_ats.clone());
    e2.push(true);
    r2.push(Some("hangup"));
    a2.push(None);
    x2.push(None);
    let mut tx = s.db.transaction().unwrap();
    tx.batch_execute("SET LOCAL track_functions = 'pl'").unwrap();
    let n: i32 = tx
        .query_one(
            "SELECT dialer._record_status($1, $2, $3, $4::text[]::timestamptz[], $5::text[]::timestamptz[])",
            &[&ids, &e2, &r2, &a2, &x2],
        )
        .unwrap()
        .get(0);
    let one_by_one: i64 = tx
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions WHERE schemaname = 'dialer' AND funcname = '_end_call'",
            &[],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(n, 6, "six calls ended");
    // The retry (busy), the voicemail policy and the hand-off (no-answer) are _end_call's; the
    // two plain ends and the invalid number are the one statement's.
    assert_eq!(one_by_one, 3, "only the ends with a policy go one by one");

    // The reference: each end through _end_call.
    for (i, id) in all.1.iter().enumerate() {
        if ended[i] {
            s.db.execute(
                "SELECT dialer._end_call($1, $2, $3::text::timestamptz, $4::text::timestamptz)",
                &[id, &end_reasons[i], &answered_at[i], &ended_ats[i]],
            )
            .unwrap();
        } else {
            s.db.execute("UPDATE dialer.calls SET answered_at = $2::text::timestamptz WHERE id = $1", &[id, &answered]).unwrap();
        }
    }
    let (got, got_counters) = ends_left(&mut s, batches[0]);
    let (want, want_counters) = ends_left(&mut s, batches[1]);
    assert_eq!(got, want, "each contact as _end_call leaves it");
    assert_eq!(got_counters, want_counters, "the batch's counters as _end_call leaves them");
    // And what that is, plainly.
    assert!(got[0].starts_with("completed | 1 | f | ended | hangup"), "{}", got[0]);
    assert!(got[1].starts_with("completed | trashed | 1 | f | ended | invalid_number"), "{}", got[1]);
    assert!(got[2].starts_with("queued | 1 | t | call ended: busy | ended | busy"), "{}", got[2]);
    assert!(got[3].starts_with("completed | voicemail | 1 | f | ended | voicemail"), "{}", got[3]);
    assert!(got[4].starts_with("completed | ai_failed | manual_pending | 1 | f | ended | no-answer"), "{}", got[4]);
    assert!(got[6].starts_with("in_progress | 1 | f | in_progress |"), "{}", got[6]);
    assert!(got.iter().all(|c| c.contains("2026-01-01 10:00:00")), "every call's answer time kept: {got:?}");
    assert_eq!(got_counters, "processing | 1 | 1 | 5 | 0 | 1");
}

#[test]
fn a_poll_writes_a_call_only_while_it_is_live_and_never_asks_twice_in_one_interval() {
    // Polls every 1 s, in rounds 250 ms apart. Short calls have ended by their first poll; long
    // ones are live at two or three polls and ended at the next.
    let mut s = Scenario::new("c-polls", Scenario::sim_config(400, 400), &["dialer.status_poll_interval = '1s'"]);
    let short = numbers("+1555031", 4);
    let long = numbers("+1555032", 4);
    s.sim.set_rules(long.iter().map(|n| Rule::new(n).duration_ms(3300)).collect());
    let batch = s.batch("polls", 6000, 10, 1);
    s.add_numbers(batch, &short.iter().chain(&long).cloned().collect::<Vec<_>>());
    s.wake();
    s.wait_batch_completed(batch, Duration::from_secs(60));

    let rows =
        s.db.query(
            "SELECT k.phone_number, k.provider_call_id, k.status, k.last_polled_at IS NOT NULL
               FROM dialer.calls k WHERE k.batch_id = $1",
            &[&batch],
        )
        .unwrap();
    assert_eq!(rows.len(), 8, "one call per contact");
    let gets = s.sim.requests();
    for row in rows {
        let (number, call_id, status, marked): (String, String, String, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(status, "ended", "{number}: ended by a poll");
        let polls = gets.iter().filter(|r| r.method == "GET" && r.path.ends_with(&format!("/calls/{call_id}"))).count();
        if short.contains(&number) {
            // Its one poll found it ended: the end is its only write (the poll wrote nothing).
            assert_eq!(polls, 1, "{number}: asked once");
            assert!(!marked, "{number}: a poll that found the call ended did not mark it polled");
        } else {
            // Asked about once a second: a poll not marked (or asked for again while in flight)
            // would be asked at every round, four times a second.
            assert!((2..=5).contains(&polls), "{number}: asked {polls} times in 3.3 s at one poll a second");
            assert!(marked, "{number}: the polls that found it live marked it polled");
        }
    }
}

#[test]
fn a_long_call_is_polled_less_often_as_it_goes_on_and_its_end_is_still_heard() {
    // Polls every 200 ms (in rounds 250 ms apart). A poll that finds the call live puts the next
    // one the interval plus a quarter of the call's age away: without that back-off, a call of
    // 7 s would be asked at every round, about 28 times.
    let interval_ms = 200.0;
    let mut s = Scenario::new("c-poll-backoff", Scenario::sim_config(7000, 7000), &["dialer.status_poll_interval = '200ms'"]);
    let number = numbers("+1555033", 1);
    let batch = s.batch("poll back-off", 600, 1, 1);
    s.add_numbers(batch, &number);
    s.wake();
    s.wait_batch_completed(batch, Duration::from_secs(60));

    let status: String = s.db.query_one("SELECT status FROM dialer.calls WHERE batch_id = $1", &[&batch]).unwrap().get(0);
    assert_eq!(status, "ended", "the end was heard by a poll");
    let posts = posts_to_calls(&s);
    assert_eq!(posts.len(), 1);
    let placed_us = posts[0].received_at_us;
    let polls: Vec<i64> =
        s.sim.requests().iter().filter(|r| r.method == "GET" && r.path.contains("/calls/")).map(|r| r.received_at_us).collect();
    assert!(polls.len() >= 3, "asked a few times while it lasted: {polls:?}");
    assert!(polls.len() <= 14, "asked {} times in 7 s: no back-off", polls.len());
    // Each poll that found the call live was recorded after it arrived, and the call was claimed
    // before its POST: so the next poll comes at least the interval plus a quarter of the age the
    // call had at this poll (as the POST saw it) later, whatever this machine's load.
    for pair in polls.windows(2) {
        let age_ms = (pair[0] - placed_us) as f64 / 1000.0;
        let gap_ms = (pair[1] - pair[0]) as f64 / 1000.0;
        let least_ms = interval_ms + age_ms / 4.0;
        assert!(gap_ms >= least_ms - 5.0, "poll at {age_ms:.0} ms of age followed after {gap_ms:.0} ms, under {least_ms:.0} ms: {polls:?}");
    }
}
