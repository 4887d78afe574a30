//! Scenario 2: immediate-call latency. `schedule_call` in autocommit at a steady rate; latency =
//! the simulator's receive time − the client's clock right after COMMIT returned.

use crate::bullmq::{NodeRun, Redis};
use crate::cluster::Setup;
use crate::common::*;
use crate::report::Row;
use crate::sim::{SimProcess, API_KEY};
use crate::stats::percentile;
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const RATE: f64 = 100.0;
const WARMUP: usize = 20;

pub struct LatResult {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub details: Vec<String>,
}

fn count(opts: &Opts) -> usize {
    // 100 calls/s for 20 s (quick: 3 s)
    if opts.quick {
        300
    } else {
        2000
    }
}

/// Matches (number, commit time) against the simulator's POSTs; latencies in ms.
fn latencies(sim: &SimProcess, sent: &[(String, i64)]) -> Result<(Vec<f64>, usize)> {
    let posts = sim.posts()?;
    let mut first: HashMap<&str, i64> = HashMap::new();
    for p in &posts {
        if let Some(to) = p.to.as_deref() {
            first.entry(to).or_insert(p.received_at_us);
        }
    }
    let mut out = Vec::with_capacity(sent.len());
    let mut missing = 0;
    for (to, t) in sent {
        match first.get(to.as_str()) {
            Some(r) => out.push((r - t) as f64 / 1000.0),
            None => missing += 1,
        }
    }
    Ok((out, missing))
}

fn summarize(who: &str, lat: &[f64], missing: usize, details: &mut Vec<String>) -> LatResult {
    let p = |q| percentile(lat, q);
    details.push(format!(
        "  {who}: {} calls matched, {missing} never reached the simulator; latency ms p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}, min {:.2}",
        lat.len(),
        p(50.0).unwrap_or(f64::NAN),
        p(90.0).unwrap_or(f64::NAN),
        p(99.0).unwrap_or(f64::NAN),
        p(100.0).unwrap_or(f64::NAN),
        percentile(lat, 0.0).unwrap_or(f64::NAN)
    ));
    LatResult { p50: p(50.0), p99: p(99.0), max: p(100.0), details: std::mem::take(details) }
}

pub fn pg(opts: &Opts) -> Result<LatResult> {
    let n = count(opts);
    let sim = SimProcess::start(0, (1000, 2000))?;
    let mut conf: Vec<String> = Vec::new();
    conf.extend(pgss_conf(opts));
    let mut s = Setup::new("latency", &sim.url, API_KEY, &conf)?;
    pgss_create(&mut s.db)?;
    s.db.execute("SELECT dialer.set_queue_options($1, calls_per_minute => 600000, max_concurrent => 10000)", &[&s.agency_id])?;
    let stmt = s.db.prepare("SELECT dialer.schedule_call($1, metadata => $2)")?;
    let mut sent = Vec::with_capacity(n);
    let mut rtt = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..WARMUP + n {
        let due = start + Duration::from_secs_f64(i as f64 / RATE);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if crate::cleanup::interrupted() {
            bail!("interrupted");
        }
        let to = format!("+1666{i:07}");
        let meta = serde_json::json!({"bench": "latency", "i": i});
        let t0 = Instant::now();
        s.db.query_one(&stmt, &[&to, &meta])?;
        let t = now_us();
        rtt.push(t0.elapsed().as_secs_f64() * 1000.0);
        if i >= WARMUP {
            sent.push((to, t));
        }
    }
    sleep_checked(Duration::from_secs(2))?;
    let (lat, missing) = latencies(&sim, &sent)?;
    let mut details = vec![format!(
        "Latency, pg_dialer: dialer.schedule_call in autocommit at {RATE} calls/s, {n} measured after {WARMUP} warm-up calls; queue calls_per_minute 600,000, max_concurrent 10,000; default worker settings (http_concurrency 16, status_poll_interval 5s); simulated calls 1–2 s; schedule_call round trip p50 {:.2} ms, p99 {:.2} ms",
        percentile(&rtt, 50.0).unwrap_or(f64::NAN),
        percentile(&rtt, 99.0).unwrap_or(f64::NAN)
    )];
    for l in pgss_top(&mut s.db, opts, 12) {
        details.push(format!("  {l}"));
    }
    details.extend(stages(&sim, &mut s.db, &sent));
    let mut r = summarize("pg_dialer", &lat, missing, &mut Vec::new());
    details.append(&mut r.details);
    r.details = details;
    Ok(r)
}

/// Where an immediate call's time goes: COMMIT → the claim (the attempt row's created_at) → the
/// request handed to the socket (dispatched_at) → received by the simulator. Percentiles of each.
fn stages(sim: &SimProcess, db: &mut postgres::Client, sent: &[(String, i64)]) -> Vec<String> {
    let rows = match db.query(
        "SELECT phone_number, (extract(epoch FROM created_at) * 1e6)::int8, (extract(epoch FROM dispatched_at) * 1e6)::int8
           FROM dialer.calls WHERE dispatched_at IS NOT NULL",
        &[],
    ) {
        Ok(r) => r,
        Err(e) => return vec![format!("  stages: {e}")],
    };
    let attempts: HashMap<String, (i64, i64)> = rows.iter().map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2)))).collect();
    let Ok(posts) = sim.posts() else { return Vec::new() };
    let received: HashMap<&str, i64> = posts.iter().filter_map(|p| Some((p.to.as_deref()?, p.received_at_us))).collect();
    let (mut to_claim, mut to_send, mut to_sim) = (Vec::new(), Vec::new(), Vec::new());
    for (to, committed) in sent {
        let (Some((claimed, dispatched)), Some(got)) = (attempts.get(to), received.get(to.as_str())) else { continue };
        to_claim.push((claimed - committed) as f64 / 1000.0);
        to_send.push((dispatched - claimed) as f64 / 1000.0);
        to_sim.push((got - dispatched) as f64 / 1000.0);
    }
    let line = |name: &str, v: &[f64]| {
        format!(
            "  {name}: p50 {:.2}, p90 {:.2}, p99 {:.2} ms",
            percentile(v, 50.0).unwrap_or(f64::NAN),
            percentile(v, 90.0).unwrap_or(f64::NAN),
            percentile(v, 99.0).unwrap_or(f64::NAN)
        )
    };
    vec![
        format!("  stages of {} calls (one clock):", to_claim.len()),
        line("COMMIT → claim started (the worker woke and began its claim)", &to_claim),
        line("claim started → request sent (claim, commit, HTTP thread)", &to_send),
        line("request sent → simulator received it (loopback, simulator)", &to_sim),
    ]
}

pub fn bull(opts: &Opts) -> Result<LatResult> {
    let Some(node) = &opts.node else { bail!("BullMQ side not prepared") };
    let n = count(opts);
    let sim = SimProcess::start(0, (1000, 2000))?;
    let redis = Redis::start()?;
    let cfg = serde_json::json!({
        "mode": "latency", "redis_port": redis.port, "sim_url": sim.url, "api_key": API_KEY,
        "n": n, "warmup": WARMUP, "rate": RATE, "concurrency": 64, "limit_max": 600000, "limit_duration_ms": 60000,
        "prefix": "+1778",
    });
    let mut run = NodeRun::start(node, &cfg)?;
    let done = run.wait_event("done", Duration::from_secs(120 + (n as f64 / RATE) as u64))?;
    run.finish();
    let adds = done["adds"].as_array().ok_or_else(|| anyhow!("BullMQ peer gave no adds"))?;
    let sent: Vec<(String, i64)> = adds.iter().filter_map(|a| Some((a.get(0)?.as_str()?.to_string(), a.get(1)?.as_i64()?))).collect();
    let (lat, missing) = latencies(&sim, &sent)?;
    let mut details = vec![format!(
        "Latency, BullMQ: queue.add at {RATE} jobs/s from the worker's own process, {n} measured after {WARMUP} warm-up jobs; Worker concurrency 64, limiter {{max: 600,000, duration: 60,000}}; outcome {}/{} completed/failed",
        done["completed"], done["failed"]
    )];
    let mut r = summarize("BullMQ", &lat, missing, &mut Vec::new());
    details.append(&mut r.details);
    r.details = details;
    Ok(r)
}

pub fn run(opts: &Opts) -> Outcome {
    let mut out = Outcome::default();
    let sc = format!("2. Immediate-call latency, {RATE:.0}/s × {} calls", count(opts));
    let pg = pg(opts);
    let bull = if opts.skip_bullmq || opts.node.is_none() || crate::cleanup::interrupted() { None } else { Some(bull(opts)) };
    let b = bull.as_ref().and_then(|b| b.as_ref().ok());
    match &pg {
        Ok(p) => {
            // The target is BullMQ's figure of the same run (without it, the earlier 1.5 / 5 ms).
            let target = |ours: Option<f64>, theirs: Option<f64>, alone: f64| match (ours, theirs) {
                (Some(o), Some(t)) => ("≤ BullMQ".to_string(), Some(o <= t)),
                (o, _) => (format!("≤ {alone}"), o.map(|v| v <= alone)),
            };
            let (b50, b99) = (b.and_then(|b| b.p50), b.and_then(|b| b.p99));
            let (t50, m50) = target(p.p50, b50, 1.5);
            let (t99, m99) = target(p.p99, b99, 5.0);
            out.rows.push(Row::new(&sc, "p50 ms (COMMIT → POST received)", p.p50, b50, 2).target(&t50, m50));
            out.rows.push(Row::new(&sc, "p99 ms", p.p99, b99, 2).target(&t99, m99));
            out.rows.push(Row::new(&sc, "max ms", p.max, b.and_then(|b| b.max), 2));
            out.details.extend(p.details.iter().cloned());
        }
        Err(e) => {
            eprintln!("bench: latency (pg_dialer) failed: {e:#}");
            out.rows.push(Row::failed(&sc, &format!("{e:#}")));
        }
    }
    match &bull {
        Some(Ok(b)) => out.details.extend(b.details.iter().cloned()),
        Some(Err(e)) => {
            eprintln!("bench: latency (BullMQ) failed: {e:#}");
            out.details.push(format!("BullMQ latency failed: {e:#}"));
        }
        None => {}
    }
    out
}
