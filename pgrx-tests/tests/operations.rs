//! Operations: dialer.metrics() against the tables it summarises while the worker dials the
//! simulator, what a tenant and an operator see of it, and retention (the worker's idle passes
//! and dialer.prune()) keeping history tables level while every contact keeps its final state.

use pg_dialer_integration::{call_posts, numbers, texts, wait_for, Scenario, AGENT_ID, API_KEY};
use postgres::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Sample {
    family: String,
    kind: String,
    sample: String,
    labels: Value,
    value: f64,
}

fn metrics(db: &mut Client) -> Vec<Sample> {
    db.query("SELECT family, kind, help, sample, labels, value FROM dialer.metrics()", &[])
        .expect("dialer.metrics()")
        .into_iter()
        .map(|r| {
            let help: String = r.get(2);
            assert!(!help.is_empty() && !help.contains('\n'), "one-line HELP");
            Sample { family: r.get(0), kind: r.get(1), sample: r.get(3), labels: r.get(4), value: r.get(5) }
        })
        .collect()
}

/// The sum of a sample's values over the rows whose labels include `with`.
fn total(samples: &[Sample], sample: &str, with: &Value) -> f64 {
    let with = with.as_object().cloned().unwrap_or_default();
    samples.iter().filter(|s| s.sample == sample && with.iter().all(|(k, v)| s.labels.get(k) == Some(v))).map(|s| s.value).sum()
}

fn count(db: &mut Client, sql: &str, args: &[&(dyn postgres::types::ToSql + Sync)]) -> f64 {
    db.query_one(sql, args).unwrap_or_else(|e| panic!("{sql}: {e}")).get::<_, i64>(0) as f64
}

fn code(e: &postgres::Error) -> String {
    e.as_db_error().map(|d| format!("{} {}", d.code().code(), d.message())).unwrap_or_else(|| e.to_string())
}

/// Every sample is well formed: names, kinds, string labels, histograms cumulative up to +Inf.
fn check_shape(samples: &[Sample]) {
    for s in samples {
        assert!(s.family.starts_with("pg_dialer_"), "{}", s.family);
        assert!(["counter", "gauge", "histogram"].contains(&s.kind.as_str()), "{}", s.kind);
        let ok_name = if s.kind == "histogram" {
            ["_bucket", "_sum", "_count"].iter().any(|x| s.sample == format!("{}{x}", s.family))
        } else {
            s.sample == s.family
        };
        assert!(ok_name, "sample {} of family {}", s.sample, s.family);
        assert!(s.labels.as_object().map(|o| o.values().all(Value::is_string)).unwrap_or(false), "{}", s.labels);
        assert!(s.value.is_finite() && s.value >= 0.0, "{} {}", s.sample, s.value);
    }
    // Each histogram series: buckets never decrease, end with +Inf, which equals _count.
    let mut series: BTreeMap<(String, String), Vec<(String, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.sample.ends_with("_bucket")) {
        let mut key = s.labels.clone();
        let le = key.as_object_mut().and_then(|o| o.remove("le")).and_then(|v| v.as_str().map(String::from)).expect("le");
        series.entry((s.family.clone(), key.to_string())).or_default().push((le, s.value));
    }
    for ((family, labels), buckets) in &series {
        assert_eq!(buckets.last().map(|b| b.0.as_str()), Some("+Inf"), "{family} {labels} ends with +Inf");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family} {labels} cumulative: {buckets:?}");
        let labels_v: Value = serde_json::from_str(labels).unwrap_or(Value::Null);
        let n = total(samples, &format!("{family}_count"), &labels_v);
        assert_eq!(buckets.last().map(|b| b.1), Some(n), "{family} {labels}: +Inf equals _count");
    }
}

#[test]
fn metrics_follow_the_dialing_and_match_the_tables() {
    let mut sim = Scenario::sim_config(50, 150);
    // Some 429s and 503s with Retry-After: capacity waits, counted per provider and code.
    sim.rate_limit_rate = 0.08;
    sim.capacity_rate = 0.05;
    sim.retry_after_secs = 1;
    let mut s = Scenario::new("ops-metrics", sim, &[]);
    let agency = json!({"agency_id": s.agency_id.to_string()});
    let before = metrics(&mut s.db);
    check_shape(&before);
    assert_eq!(total(&before, "pg_dialer_calls_total", &agency), 0.0, "nothing dialed yet");

    let batch = s.batch("metrics", 1200, 10, 3);
    s.add_numbers(batch, &numbers("+1555070", 60));
    let queued = metrics(&mut s.db);
    assert_eq!(total(&queued, "pg_dialer_contacts", &json!({"agency_id": s.agency_id.to_string()})), 60.0);
    s.wake();
    s.wait_batch_completed(batch, Duration::from_secs(90));

    let t0 = Instant::now();
    let after = metrics(&mut s.db);
    eprintln!("metrics(): {} samples in {:?} after the campaign", after.len(), t0.elapsed());
    check_shape(&after);

    // Counted independently from the tables (as the owner) and from the simulator.
    let db = &mut s.db;
    for outcome in ["ended", "failed", "rate_limited", "network_error"] {
        let n = count(db, "SELECT count(*) FROM dialer.calls WHERE status = $1 AND provider = 'ultravox'", &[&outcome]);
        let m = total(&after, "pg_dialer_calls_total", &json!({"provider": "ultravox", "outcome": outcome}));
        assert_eq!(m, n, "calls_total{{outcome={outcome}}}");
    }
    let posts = call_posts(&s.sim).len() as f64;
    assert_eq!(total(&after, "pg_dialer_calls_total", &json!({})), posts, "one settled attempt per create request the provider saw");
    for state in ["completed", "failed", "queued", "in_doubt"] {
        let n = count(db, "SELECT count(*) FROM dialer.campaign_contacts WHERE status = $1", &[&state]);
        assert_eq!(total(&after, "pg_dialer_contacts", &json!({"state": state})), n, "contacts{{state={state}}}");
    }
    for code in [429, 503] {
        let n = count(db, "SELECT count(*) FROM dialer.calls WHERE http_status = $1", &[&code]);
        let m = total(&after, "pg_dialer_provider_throttled_total", &json!({"provider": "ultravox", "code": code.to_string()}));
        assert_eq!(m, n, "throttled_total{{code={code}}}");
    }
    let throttled = total(&after, "pg_dialer_provider_throttled_total", &json!({}));
    assert!(throttled > 0.0, "the simulator answered some 429/503");
    let timed = count(db, "SELECT count(*) FROM dialer.calls WHERE latency_ms IS NOT NULL", &[]);
    assert_eq!(total(&after, "pg_dialer_provider_latency_seconds_count", &json!({"provider": "ultravox"})), timed);
    let sum: f64 = db.query_one("SELECT sum(latency_ms) / 1000.0 FROM dialer.calls", &[]).unwrap().get(0);
    let msum = total(&after, "pg_dialer_provider_latency_seconds_sum", &json!({}));
    assert!((msum - sum).abs() < 1e-6 * sum.max(1.0), "latency sum {msum} vs {sum}");
    let under_quarter = count(db, "SELECT count(*) FROM dialer.calls WHERE latency_ms <= 250", &[]);
    assert_eq!(total(&after, "pg_dialer_provider_latency_seconds_bucket", &json!({"le": "0.25"})), under_quarter);
    let ticks = count(db, "SELECT count(*) FROM dialer.runs WHERE status <> 'SKIPPED_CONCURRENT' AND duration_ms IS NOT NULL", &[]);
    assert!(ticks > 0.0);
    assert_eq!(total(&after, "pg_dialer_tick_duration_seconds_count", &json!({})), ticks);
    assert_eq!(
        total(&after, "pg_dialer_attempts_in_doubt", &json!({})),
        count(db, "SELECT count(*) FROM dialer.calls WHERE status = 'in_doubt'", &[])
    );
    // The batch is done: nothing is due, nobody lags.
    assert_eq!(total(&after, "pg_dialer_queue_depth", &json!({})), 0.0);
    assert_eq!(total(&after, "pg_dialer_pacing_lag_seconds", &json!({})), 0.0);
}

/// Agency A (the tenant, as login role `tenant_a`) with its own campaign beside the scenario's
/// agency (B); an operator login `ops_person` in dialer_admin.
fn tenant_and_operator(s: &mut Scenario) -> (i64, i64, Client, Client) {
    let a: i64 = s.db.query_one("SELECT dialer.create_agency('Tenant A')", &[]).unwrap().get(0);
    s.db.batch_execute(
        "CREATE ROLE tenant_a LOGIN PASSWORD 'pw-a'; GRANT dialer_user TO tenant_a;
         CREATE ROLE ops_person LOGIN PASSWORD 'pw-o'; GRANT dialer_admin TO ops_person;",
    )
    .unwrap();
    s.db.execute("INSERT INTO dialer.agency_members VALUES ($1, 'tenant_a')", &[&a]).unwrap();
    let base = s.sim.base_url();
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3)", &[&a, &API_KEY, &base]).unwrap();
    let connect = |user: &str, pw: &str| {
        let conn = format!("host=127.0.0.1 port={} user={user} password={pw} dbname=postgres", s.cluster.port);
        Client::connect(&conn, postgres::NoTls).expect("connect")
    };
    let mut t = connect("tenant_a", "pw-a");
    let o = connect("ops_person", "pw-o");
    let ma: i64 =
        t.query_one("SELECT dialer.create_agent_mapping($1, 'ultravox', $2, 'A', '+14155550190')", &[&a, &AGENT_ID]).unwrap().get(0);
    let batch: i64 = t.query_one("SELECT dialer.create_batch($1, $2, 'a', 1200, 5)", &[&a, &ma]).unwrap().get(0);
    (a, batch, t, o)
}

#[test]
fn a_tenant_sees_only_its_own_figures_and_cannot_prune() {
    let mut s = Scenario::new("ops-tenants", Scenario::sim_config(50, 150), &[]);
    let (a, a_batch, mut t, mut o) = tenant_and_operator(&mut s);
    let contacts: Vec<Value> = numbers("+1555072", 7).into_iter().map(|n| json!({"phone_number": n})).collect();
    t.execute("SELECT dialer.add_contacts($1, $2)", &[&a_batch, &Value::Array(contacts)]).unwrap();
    let b_batch = s.batch("agency B", 1200, 5, 3);
    s.add_numbers(b_batch, &numbers("+1555073", 12));
    s.wake();
    s.wait_batch_completed(a_batch, Duration::from_secs(60));
    s.wait_batch_completed(b_batch, Duration::from_secs(60));

    let (a_s, b_s) = (a.to_string(), s.agency_id.to_string());
    let mine = metrics(&mut t);
    check_shape(&mine);
    assert!(!mine.is_empty());
    for m in &mine {
        assert_eq!(m.labels.get("agency_id").and_then(Value::as_str), Some(a_s.as_str()), "tenant sees {} {}", m.sample, m.labels);
    }
    assert!(mine.iter().all(|m| m.family != "pg_dialer_tick_duration_seconds"), "ticks are the operators'");
    assert_eq!(total(&mine, "pg_dialer_calls_total", &json!({})), 7.0, "A's seven calls, not B's twelve");
    assert_eq!(total(&mine, "pg_dialer_contacts", &json!({"state": "completed"})), 7.0);

    // An operator (a dialer_admin member, under row-level security like anyone) sees both.
    let all = metrics(&mut o);
    check_shape(&all);
    assert_eq!(total(&all, "pg_dialer_calls_total", &json!({"agency_id": a_s})), 7.0);
    assert_eq!(total(&all, "pg_dialer_calls_total", &json!({"agency_id": b_s})), 12.0);
    assert!(total(&all, "pg_dialer_tick_duration_seconds_count", &json!({})) > 0.0);
    let owner = metrics(&mut s.db);
    assert_eq!(owner.len(), all.len(), "an operator sees what the owner sees");

    // Pruning is the operators'.
    for sql in ["SELECT dialer.prune()", "SELECT dialer._prune('1 second', '1 second', '1 second', '1 second', 1000)"] {
        let e = t.query_one(sql, &[]).expect_err("a tenant cannot prune");
        assert!(code(&e).starts_with("42501"), "{sql}: {}", code(&e));
    }
    let pass: Value = o.query_one("SELECT dialer.prune()", &[]).unwrap().get(0);
    assert_eq!(pass, json!({"runs": 0, "bodies": 0, "webhook_events": 0, "jobs": 0}), "nothing a month old");
    // A setting that is not an interval is refused, naming it.
    let e = o.query_one("SELECT dialer._prune('soon', NULL, NULL, NULL, 10)", &[]).expect_err("not an interval");
    assert!(code(&e).starts_with("22023") && code(&e).contains("dialer.retention_runs"), "{}", code(&e));
}

#[test]
fn metrics_time_on_a_hundred_thousand_contacts() {
    let mut s = Scenario::new("ops-size", Scenario::sim_config(50, 150), &["dialer.enabled = off"]);
    let (_, ab, mut t, mut o) = tenant_and_operator(&mut s);
    let b = s.batch("big", 600, 5, 3);
    // Written directly (the worker is off): 100k contacts in two agencies, 80k settled attempts
    // with bodies, 20k ticks.
    s.db.batch_execute(&format!(
        "INSERT INTO dialer.campaign_contacts (batch_id, phone_number, status, attempts, created_at)
         SELECT CASE WHEN i % 2 = 0 THEN {b} ELSE {ab} END, '+1555' || lpad(i::text, 7, '0'),
                (ARRAY['completed','failed','queued','in_doubt','completed'])[1 + i % 5], 1, now() - interval '1 hour'
           FROM generate_series(1, 100000) i;
         INSERT INTO dialer.calls (contact_id, batch_id, agency_id, provider, idempotency_key, phone_number, status,
                                   http_status, latency_ms, request, response, created_at)
         SELECT c.id, c.batch_id, k.agency_id, 'ultravox', 'k' || c.id, c.phone_number,
                CASE c.status WHEN 'in_doubt' THEN 'in_doubt' WHEN 'failed' THEN 'failed' ELSE 'ended' END,
                CASE WHEN c.id % 50 = 0 THEN 429 ELSE 201 END, 50 + c.id % 900, '{{\"a\": 1}}', '{{\"b\": 2}}', now() - interval '1 hour'
           FROM dialer.campaign_contacts c JOIN dialer.call_batches k ON k.id = c.batch_id WHERE c.status <> 'queued';
         INSERT INTO dialer.runs (started_at, duration_ms, mode, status)
         SELECT now() - i * interval '1 second', i % 100, 'worker', 'COMPLETED' FROM generate_series(1, 20000) i;
         UPDATE dialer.call_batches SET status = 'processing', started_at = now() - interval '1 hour';
         ANALYZE;"
    ))
    .unwrap();
    let mut report = Vec::new();
    for (who, db) in [("owner", &mut s.db), ("operator", &mut o), ("tenant", &mut t)] {
        metrics(db); // warm
        let mut times = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            let n = metrics(db).len();
            times.push((t0.elapsed(), n));
        }
        times.sort();
        report.push(format!("{who}: median {:?} ({} samples)", times[2].0, times[2].1));
    }
    eprintln!("metrics() on 100k contacts, 80k calls, 20k runs: {}", report.join("; "));
    let mine = metrics(&mut t);
    assert_eq!(total(&mine, "pg_dialer_contacts", &json!({})), 50_000.0, "the tenant's half");
    let all = metrics(&mut o);
    check_shape(&all);
    assert_eq!(total(&all, "pg_dialer_contacts", &json!({})), 100_000.0);
    // A backlog due for an hour (the worker is off): depth, age of the oldest due, pacing lag.
    let depth = total(&all, "pg_dialer_queue_depth", &json!({"kind": "campaign"}));
    let age = total(&mine, "pg_dialer_queue_oldest_due_age_seconds", &json!({"kind": "campaign"}));
    let lag = total(&mine, "pg_dialer_pacing_lag_seconds", &json!({"batch_id": ab.to_string()}));
    eprintln!("backlog: depth {depth}, tenant's oldest due {age:.0} s, its pacing lag {lag:.0} s");
    assert_eq!(depth, 20_000.0);
    assert!(age >= 3599.0 && lag >= 3599.0, "due for an hour: age {age}, lag {lag}");
}

/// Sizes of what retention keeps level.
fn sizes(db: &mut Client) -> [i64; 4] {
    let r = db
        .query_one(
            "SELECT (SELECT count(*) FROM dialer.runs),
                    (SELECT count(*) FROM dialer.webhook_events),
                    (SELECT count(*) FROM dialer.calls WHERE request IS NOT NULL OR response IS NOT NULL),
                    (SELECT count(*) FROM dialer.campaign_contacts WHERE is_job AND status IN ('completed', 'failed', 'cancelled'))",
            &[],
        )
        .unwrap();
    [r.get(0), r.get(1), r.get(2), r.get(3)]
}

#[test]
fn retention_keeps_history_level_and_every_final_state() {
    let mut s = Scenario::new("ops-soak", Scenario::sim_config(50, 150), &["dialer.poll_interval = '1s'"]);
    let receiver = pg_dialer_integration::WebhookReceiver::start(&s.cluster, "ultravox");
    s.sim.update(|c| {
        c.ultravox_webhook_url = Some(receiver.url.clone());
        c.ultravox_webhook_secret = Some("whsec_soak".into());
    });
    let (agency, base) = (s.agency_id, s.sim.base_url());
    s.db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3, NULL, 'whsec_soak')", &[&agency, &API_KEY, &base])
        .unwrap();
    // The queue is paced like a campaign (10 a minute by default).
    s.db.execute("SELECT dialer.set_queue_options($1, 3000, 10)", &[&agency]).unwrap();
    for kind in ["runs", "bodies", "webhook_events", "jobs"] {
        s.set_config(&format!("dialer.retention_{kind}"), "2 seconds");
    }

    const WAVES: usize = 6;
    const PER_WAVE: usize = 25;
    const JOBS_PER_WAVE: i64 = 8;
    let mut campaign = Vec::new();
    let mut peak = [0i64; 4];
    eprintln!("soak: sizes [runs, webhook_events, calls with bodies, finished jobs] per wave");
    // Waves go on for at least 9 s, so that retention (2 s, passes every 1–5 s) has its turns
    // while the worker dials (a wave takes well under a second).
    let started = std::time::Instant::now();
    let mut wave = 0;
    while wave < WAVES || started.elapsed() < Duration::from_secs(9) {
        let b = s.batch(&format!("wave {wave}"), 3000, 10, 1);
        s.add_numbers(b, &numbers(&format!("+15550{:02}", 80 + wave), PER_WAVE));
        for j in 0..JOBS_PER_WAVE {
            let to = format!("+1555079{wave}{j:03}");
            s.db.execute("SELECT dialer.schedule_call($1, $2)", &[&to, &agency]).unwrap();
        }
        campaign.push(b);
        s.wake();
        s.wait_batch_completed(b, Duration::from_secs(60));
        // The wave's jobs finish (and may be pruned two seconds later): none left to run.
        let db = &mut s.db;
        wait_for("the wave's queue jobs to finish", Duration::from_secs(60), || {
            let open = count(
                db,
                "SELECT count(*) FROM dialer.campaign_contacts c JOIN dialer.call_batches b ON b.id = c.batch_id
                  WHERE b.kind = 'queue' AND c.status NOT IN ('completed', 'failed', 'cancelled')",
                &[],
            );
            (open == 0.0).then_some(())
        });
        let now = sizes(&mut s.db);
        for i in 0..4 {
            peak[i] = peak[i].max(now[i]);
        }
        eprintln!("soak: wave {wave}: {now:?}");
        wave += 1;
    }
    // Everything made during the waves: calls with bodies and jobs are known exactly.
    let waves = wave as i64;
    let calls_made: i64 = waves * (PER_WAVE as i64 + JOBS_PER_WAVE);
    assert!(peak[2] < calls_made, "bodies were cleared during the waves (peak {} of {calls_made})", peak[2]);
    assert!(peak[3] < waves * JOBS_PER_WAVE, "finished jobs were pruned during the waves (peak {})", peak[3]);

    // Idle now: every kind drains to what the last 2 s hold, i.e. nothing once the worker rests.
    let db = &mut s.db;
    let end = wait_for("history to level off after the waves", Duration::from_secs(60), || {
        let z = sizes(db);
        (z == [0, 0, 0, 0]).then_some(z)
    });
    eprintln!("soak: after the waves: {end:?} (peaks {peak:?})");

    // Every campaign contact keeps its final state, every call row stays.
    for b in &campaign {
        let done = count(&mut s.db, "SELECT count(*) FROM dialer.campaign_contacts WHERE batch_id = $1 AND status = 'completed'", &[b]);
        assert_eq!(done, PER_WAVE as f64, "batch {b}'s contacts keep their final state");
        let calls = count(&mut s.db, "SELECT count(*) FROM dialer.calls WHERE batch_id = $1 AND status = 'ended'", &[b]);
        assert_eq!(calls, PER_WAVE as f64, "batch {b}'s call rows remain");
    }
    let events_ingested = receiver.results().iter().filter(|r| r.is_ok()).count();
    assert!(events_ingested > 0, "webhooks were delivered and pruned");
    // Counters survive the pruning: every attempt ever made is counted, jobs' included.
    let m = metrics(&mut s.db);
    check_shape(&m);
    assert_eq!(total(&m, "pg_dialer_calls_total", &json!({})), call_posts(&s.sim).len() as f64, "calls_total after pruning");
    assert_eq!(total(&m, "pg_dialer_calls_total", &json!({})), calls_made as f64);
    assert!(total(&m, "pg_dialer_tick_duration_seconds_count", &json!({})) > 0.0, "ticks counted after their rows went");
    eprintln!("soak: {calls_made} calls, {events_ingested} webhook events ingested; all pruned to {end:?}");
}

/// Retention and clean_jobs delete attempts and finished jobs in bulk, and each foreign key onto
/// those rows is then looked up by its columns, once per deleted row. Each such key has an index
/// that leads with one of its columns (a partial one only if it keeps every non-NULL key), or
/// every look-up reads its whole table: deleting 1,000 jobs beside 100,000 done follow-ups took
/// 6 s, not 40 ms.
#[test]
fn every_key_onto_the_rows_retention_deletes_has_an_index() {
    let mut s = Scenario::new("o-fk-index", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    let unindexed = texts(
        &mut s.db,
        "SELECT c.conrelid::regclass::text || '.' || c.conname FROM pg_constraint c
          WHERE c.contype = 'f' AND c.confrelid IN ('dialer.calls'::regclass, 'dialer.campaign_contacts'::regclass)
            AND NOT EXISTS (
                SELECT 1 FROM pg_index i
                 WHERE i.indrelid = c.conrelid AND i.indkey[0] = ANY (c.conkey)
                   AND (i.indpred IS NULL OR pg_get_expr(i.indpred, i.indrelid) =
                        '(' || (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.conrelid AND a.attnum = i.indkey[0]) || ' IS NOT NULL)'))
          ORDER BY 1",
    );
    let keys: i64 = s
        .db
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid IN ('dialer.calls'::regclass, 'dialer.campaign_contacts'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(keys >= 4, "the keys onto calls and contacts are found ({keys})");
    assert!(unindexed.is_empty(), "foreign keys onto calls or campaign_contacts with no index on their columns: {unindexed:?}");
}
