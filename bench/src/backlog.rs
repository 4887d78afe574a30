//! Scenario 4: a large backlog. 1,000,000 queued contacts in 1,000 batches against 1,000
//! contacts in 10 batches, the same total dialing rate (1,000 calls/min): the time of each tick step
//! (timed from a client in rolled-back transactions, worker off), the worker's ticks from
//! dialer.runs while it dials, and its peak memory.

use crate::cluster::Setup;
use crate::common::*;
use crate::procstat;
use crate::report::Row;
use crate::sim::{SimProcess, API_KEY};
use crate::stats::percentile;
use anyhow::{Context, Result};
use postgres::Client;
use std::time::{Duration, Instant};

/// The same total dialing rate for both backlogs: 1,000 calls/min (16.7 calls/s), so that the
/// 1,000-contact backlog lasts the whole measurement (10 batches × 100/min; 1,000 batches × 1/min).
const TOTAL_CPM: i32 = 1000;

pub struct BacklogResult {
    pub contacts: usize,
    pub batches: usize,
    pub claim_ms: f64,
    pub steps: Vec<(String, f64)>,
    pub tick_p50: f64,
    pub tick_p95: f64,
    pub tick_ms_per_call: f64,
    pub ticks: i64,
    pub calls_per_s: f64,
    pub hwm_mb: Option<f64>,
    pub anon_mb: Option<f64>,
    pub details: Vec<String>,
}

/// Median ms of `run`, `n` times, each in a transaction that is rolled back (after `setup`).
fn time_rolled_back(
    db: &mut Client,
    setup: &str,
    n: usize,
    mut run: impl FnMut(&mut postgres::Transaction<'_>) -> Result<()>,
) -> Result<f64> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let mut tx = db.transaction()?;
        if !setup.is_empty() {
            tx.batch_execute(setup)?;
        }
        let t = Instant::now();
        run(&mut tx)?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
        tx.rollback()?;
    }
    Ok(percentile(&v, 50.0).unwrap_or(f64::NAN))
}

/// Median ms of `sql` (see `time_rolled_back`).
fn time_step(db: &mut Client, setup: &str, sql: &str, n: usize) -> Result<f64> {
    time_rolled_back(db, setup, n, |tx| tx.batch_execute(sql).with_context(|| format!("timing {sql}")))
}

/// The worker's claim statement, timed as `time_step` times the others (prepared with the
/// worker's argument types and settings, as src/tick.rs runs it).
fn time_claim(db: &mut Client, setup: &str, batch_id: i64, n: usize) -> Result<f64> {
    use postgres::types::Type;
    let claim = db.prepare_typed(
        include_str!("../../sql/claim.sql"),
        &[Type::INT8_ARRAY, Type::INT4, Type::FLOAT8, Type::INT4, Type::FLOAT8, Type::BOOL, Type::TEXT_ARRAY, Type::INT4_ARRAY, Type::INT4],
    )?;
    let setup = format!("{setup}; SET LOCAL enable_bitmapscan = off; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off");
    time_rolled_back(db, &setup, n, |tx| {
        let (batches, accounts, rooms) = (vec![batch_id], vec!["probe"], vec![10i32]);
        tx.query(&claim, &[&batches, &10i32, &0f64, &0i32, &None::<f64>, &false, &accounts, &rooms, &10i32]).context("timing the claim")?;
        Ok(())
    })
}

pub fn one(opts: &Opts, contacts: usize, batches: usize, measure_s: u64) -> Result<BacklogResult> {
    let per = contacts / batches;
    let cpm = (TOTAL_CPM / batches as i32).max(1);
    let demand = (cpm * batches as i32) as f64 / 60.0;
    let sim = SimProcess::start(0, (1000, 2000))?;
    let mut conf = vec!["dialer.enabled = off".to_string(), "dialer.status_poll_interval = '1s'".into()];
    conf.extend(pgss_conf(opts));
    let mut s = Setup::new(&format!("backlog{contacts}"), &sim.url, API_KEY, &conf)?;
    pgss_create(&mut s.db)?;
    let load = Instant::now();
    s.db.execute(
        "SELECT dialer.create_batch($1, $2, 'backlog ' || g, $3, 100) FROM generate_series(1, $4::int) g",
        &[&s.agency_id, &s.mapping_id, &cpm, &(batches as i32)],
    )?;
    // The probe: a paused batch like the others but with limits out of the way, so that a claim
    // on it always finds work (it is set processing inside each rolled-back timing transaction).
    let probe = s.batch("probe", 600_000, 100_000)?;
    s.db.execute(
        "INSERT INTO dialer.campaign_contacts (batch_id, phone_number, name, variables, status)
         SELECT b.id, '+1' || lpad(b.rn::text, 4, '0') || lpad(g::text, 6, '0'), 'Lead ' || g,
                jsonb_build_object('idx', g), 'queued'
           FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM dialer.call_batches WHERE kind = 'campaign') b,
                generate_series(1, $1::int) g",
        &[&(per as i32)],
    )?;
    s.db.execute(
        "UPDATE dialer.call_batches
            SET status = CASE WHEN id = $1 THEN 'paused' ELSE 'processing' END, started_at = now(),
                total_contacts = $2, queued_count = $2
          WHERE kind = 'campaign'",
        &[&probe, &(per as i32)],
    )?;
    for sql in ["VACUUM ANALYZE dialer.campaign_contacts", "VACUUM ANALYZE dialer.call_batches", "ANALYZE dialer.calls"] {
        s.db.batch_execute(sql)?;
    }
    let load_s = load.elapsed().as_secs_f64();

    // Tick steps, timed from a client with the worker off (median of rolled-back runs).
    let n = 30;
    let claim_setup = format!("UPDATE dialer.call_batches SET status = 'processing' WHERE id = {probe}");
    let claim = time_claim(&mut s.db, &claim_setup, probe, n)?;
    let mut steps = vec![("claim (sql/claim.sql) of 10 from the probe".to_string(), claim)];
    for (name, sql) in [
        ("_promote_batches", "SELECT dialer._promote_batches(clock_timestamp())"),
        ("_due_batches(limit 10)", "SELECT count(*) FROM dialer._due_batches(clock_timestamp(), 10, interval '25 ms')"),
        ("_complete_batches", "SELECT dialer._complete_batches(clock_timestamp())"),
        ("_next_due", "SELECT least(dialer._next_due(clock_timestamp(), interval '1 s'), dialer._next_slot(clock_timestamp()))"),
        ("_calls_to_poll(500)", "SELECT count(*) FROM dialer._calls_to_poll(clock_timestamp(), interval '1 s', 500, '{}')"),
    ] {
        steps.push((name.to_string(), time_step(&mut s.db, "", sql, n)?));
    }

    // The worker dials the backlog.
    s.db.batch_execute("SELECT pg_stat_statements_reset()")?;
    let worker = s.worker_pid().context("the pg_dialer worker is not running")?;
    let thr0 = procstat::threads_cpu(worker);
    let w0 = std::time::Instant::now();
    // Each batch's first slot at a random point of its first interval: the demand is then a steady
    // 16.7 calls/s from the start (all 1,000 batches due at once would be one burst, then a minute
    // with nothing due).
    s.db.execute(
        "UPDATE dialer.call_batches SET next_slot_at = clock_timestamp() + random() * make_interval(secs => 60.0 / calls_per_minute)
          WHERE status = 'processing'",
        &[],
    )?;
    s.set_config("dialer.enabled", "on")?;
    sleep_checked(Duration::from_secs(if opts.quick { 3 } else { 5 }))?;
    let t0 = now_us();
    let c0 = sim.calls_created()?;
    sleep_checked(Duration::from_secs(measure_s))?;
    let t1 = now_us();
    let c1 = sim.calls_created()?;
    let thr1 = procstat::threads_cpu(worker);
    let wall = w0.elapsed().as_secs_f64();
    let (ticks, p50, p95, max, initiated, per_call) = tick_stats(&mut s.db, Some(t0), Some(t1))?;
    let calls_per_s = (c1 - c0) as f64 / ((t1 - t0) as f64 / 1e6);
    let (hwm_mb, anon_mb) = (procstat::status_mb(worker, "VmHWM"), procstat::status_mb(worker, "RssAnon"));
    let mut thr = std::collections::BTreeMap::new();
    for (name, v) in &thr1 {
        thr.insert(name.clone(), v - thr0.get(name).copied().unwrap_or(0.0));
    }
    let mut details = vec![format!(
        "Backlog {contacts} contacts in {batches} batches ({per} each, {cpm} calls/min each = {demand:.1} calls/s in all, max_concurrent 100, simulated calls 1–2 s, status_poll_interval 1s; bulk-loaded with INSERT … SELECT generate_series + VACUUM ANALYZE in {load_s:.1} s)"
    )];
    details.push(format!(
        "  tick steps (client-timed, worker off, median of {n} rolled-back runs): {}",
        steps.iter().map(|(k, v)| format!("{k} {v:.2} ms")).collect::<Vec<_>>().join(", ")
    ));
    details.push(format!(
        "  worker dialing for {measure_s} s: {ticks} ticks, duration p50 {p50:.2} ms, p95 {p95:.2} ms, max {max:.1} ms; {initiated} calls initiated ({:.1} per tick); simulator saw {calls_per_s:.1} calls/s (demand {demand:.1})",
        initiated as f64 / ticks.max(1) as f64
    ));
    details.extend(split_lines(&format!("  pg_dialer worker CPU by thread over {wall:.1} s of dialing"), &thr));
    details.push(format!("  {}", memory_line(worker)));
    for l in pgss_top(&mut s.db, opts, 15) {
        details.push(format!("  {l}"));
    }
    Ok(BacklogResult {
        contacts,
        batches,
        claim_ms: claim,
        steps,
        tick_p50: p50,
        tick_p95: p95,
        tick_ms_per_call: per_call,
        ticks,
        calls_per_s,
        hwm_mb,
        anon_mb,
        details,
    })
}

pub fn run(opts: &Opts) -> Outcome {
    let mut out = Outcome::default();
    let measure = if opts.quick { 10 } else { 30 };
    let (big_n, big_b) = if opts.quick { (100_000, 100) } else { (1_000_000, 1000) };
    let small = one(opts, 1000, 10, measure);
    if let Err(e) = &small {
        eprintln!("bench: backlog (1,000) failed: {e:#}");
    }
    let big = if crate::cleanup::interrupted() { Err(anyhow::anyhow!("interrupted")) } else { one(opts, big_n, big_b, measure) };
    if let Err(e) = &big {
        eprintln!("bench: backlog ({big_n}) failed: {e:#}");
    }
    let sc = format!("4. Backlog {} vs 1,000 contacts", crate::report::group(big_n as f64, 0));
    match (&big, &small) {
        (Ok(b), Ok(s)) => {
            let r = b.claim_ms / s.claim_ms;
            out.rows.push(Row::new(&sc, &format!("claim ms (10 contacts): {} backlog", b.contacts), Some(b.claim_ms), None, 3));
            out.rows.push(Row::new(&sc, "claim ms (10 contacts): 1,000 backlog", Some(s.claim_ms), None, 3));
            out.rows.push(Row::new(&sc, "claim: big / small", Some(r), None, 2).target("≤ 2×", Some(r <= 2.0)));
            for ((name, bv), (_, sv)) in b.steps.iter().zip(&s.steps).skip(1) {
                out.rows
                    .push(Row::new(&sc, &format!("{name} ms: big | small"), Some(*bv), None, 3).target(&format!("small {sv:.3} ms"), None));
            }
            let tr = b.tick_p50 / s.tick_p50;
            out.rows.push(Row::new(&sc, &format!("tick p50 ms: {} backlog ({} ticks)", b.contacts, b.ticks), Some(b.tick_p50), None, 2));
            out.rows.push(Row::new(&sc, &format!("tick p50 ms: 1,000 backlog ({} ticks)", s.ticks), Some(s.tick_p50), None, 2));
            out.rows.push(Row::new(&sc, "tick p50: big / small", Some(tr), None, 2).target("≤ 2×", Some(tr <= 2.0)));
            let pr = b.tick_ms_per_call / s.tick_ms_per_call;
            out.rows.push(
                Row::new(&sc, "tick ms per call placed: big | small", Some(b.tick_ms_per_call), None, 3)
                    .target(&format!("small {:.3} ms", s.tick_ms_per_call), None),
            );
            out.rows.push(Row::new(&sc, "tick per call: big / small", Some(pr), None, 2).target("≤ 2×", Some(pr <= 2.0)));
            out.rows.push(
                Row::new(&sc, "tick p95 ms: big | small", Some(b.tick_p95), None, 2).target(&format!("small {:.2} ms", s.tick_p95), None),
            );
            out.rows.push(
                Row::new(&sc, "calls/s dialed: big | small (demand 16.7)", Some(b.calls_per_s), None, 1)
                    .target(&format!("small {:.1}", s.calls_per_s), None),
            );
            // The larger of the two runs' (each run's own figures are in the details).
            let max = |x: Option<f64>, y: Option<f64>| x.into_iter().chain(y).reduce(f64::max);
            out.rows.extend(memory_rows(&sc, max(b.anon_mb, s.anon_mb), max(b.hwm_mb, s.hwm_mb)));
        }
        _ => {
            for (r, label) in [(&big, "big"), (&small, "small")] {
                match r {
                    Ok(x) => {
                        out.rows.push(Row::new(&sc, &format!("claim ms, {label} ({})", x.contacts), Some(x.claim_ms), None, 3));
                        out.rows.push(Row::new(&sc, &format!("tick p50 ms, {label}"), Some(x.tick_p50), None, 2));
                        out.rows.extend(memory_rows(&format!("{sc} ({label})"), x.anon_mb, x.hwm_mb));
                    }
                    Err(e) => out.rows.push(Row::failed(&format!("{sc} ({label})"), &format!("{e:#}"))),
                }
            }
        }
    }
    for r in [&small, &big].into_iter().flatten() {
        let _ = r.batches;
        out.details.extend(r.details.iter().cloned());
    }
    out
}
