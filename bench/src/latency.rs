//! Scenario 2: immediate-call latency. `schedule_call` in autocommit at a steady rate; latency =
//! the simulator's receive time − the client's clock right after COMMIT returned.

use crate::bullmq::{Backend, BullRuns, NodeRun, Store};
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
    /// Who was measured, every call's latency (ms), and the calls that never arrived.
    who: String,
    lat: Vec<f64>,
    missing: usize,
}

impl LatResult {
    /// Several rounds of one system as one: the percentiles of all their calls together; the
    /// first round's details, and every round's p50 and p99.
    fn pooled(mut rounds: Vec<LatResult>) -> LatResult {
        if rounds.len() == 1 {
            return rounds.remove(0);
        }
        let listed = |f: fn(&LatResult) -> Option<f64>| {
            rounds.iter().map(|r| f(r).map_or("—".to_string(), |v| format!("{v:.2}"))).collect::<Vec<_>>().join(" / ")
        };
        let line = format!(
            "  {} rounds, each system in turn in every round: p50 {} ms, p99 {} ms; the table gives the percentiles of every round's calls together (below), the details above are the first round's",
            rounds.len(),
            listed(|r| r.p50),
            listed(|r| r.p99)
        );
        let lat: Vec<f64> = rounds.iter().flat_map(|r| r.lat.iter().copied()).collect();
        let missing = rounds.iter().map(|r| r.missing).sum();
        let who = rounds[0].who.clone();
        let mut details = std::mem::take(&mut rounds[0].details);
        details.push(line);
        let mut r = summarize(&who, &lat, missing, &mut Vec::new());
        details.append(&mut r.details);
        r.details = details;
        r
    }
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
    LatResult {
        p50: p(50.0),
        p99: p(99.0),
        max: p(100.0),
        details: std::mem::take(details),
        who: who.to_string(),
        lat: lat.to_vec(),
        missing,
    }
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
    let worker = s
        .worker_pid()
        .ok_or_else(|| anyhow!("the pg_dialer worker is not running (no pg_stat_activity row with backend_type 'pg_dialer')"))?;
    let mut worker_cpu0 = None;
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
        if i == WARMUP {
            worker_cpu0 = crate::procstat::cpu_seconds(worker);
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
    let worker_cpu = worker_cpu0.zip(crate::procstat::cpu_seconds(worker)).map(|(a, b)| b - a);
    let (lat, missing) = latencies(&sim, &sent)?;
    let mut details = vec![format!(
        "Latency, pg_dialer: dialer.schedule_call in autocommit at {RATE} calls/s, {n} measured after {WARMUP} warm-up calls; queue calls_per_minute 600,000, max_concurrent 10,000; default worker settings (http_concurrency 16, status_poll_interval 5s); simulated calls 1–2 s; schedule_call round trip p50 {:.2} ms, p99 {:.2} ms",
        percentile(&rtt, 50.0).unwrap_or(f64::NAN),
        percentile(&rtt, 99.0).unwrap_or(f64::NAN)
    )];
    if let Some(cpu) = worker_cpu {
        details.push(format!(
            "  pg_dialer worker process CPU from the first measured call to 2 s after the last: {cpu:.2} s, {:.3} ms per call (its claim, sending, recording, and the status polls of calls that last 1–2 s)",
            cpu * 1000.0 / n.max(1) as f64
        ));
    }
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
        line("COMMIT → the claim's clock read (wake-up, and the claim statement's executor start)", &to_claim),
        line("clock read → request sent (the rest of the claim, commit, HTTP thread)", &to_send),
        line("request sent → simulator received it (loopback, simulator)", &to_sim),
    ]
}

pub fn bull(opts: &Opts, backend: Backend) -> Result<LatResult> {
    let Some(node) = &opts.node else { bail!("BullMQ side not prepared") };
    let n = count(opts);
    let sim = SimProcess::start(0, (1000, 2000))?;
    let store = Store::start(backend, "bull-latency", opts)?;
    let mut cfg = serde_json::json!({
        "mode": "latency", "sim_url": sim.url, "api_key": API_KEY,
        "n": n, "warmup": WARMUP, "rate": RATE, "concurrency": 64, "limit_max": 600000, "limit_duration_ms": 60000,
        "prefix": "+1778",
    });
    store.configure(&mut cfg);
    let mut run = NodeRun::start(node, &cfg)?;
    let done = run.wait_event("done", Duration::from_secs(120 + (n as f64 / RATE) as u64))?;
    run.finish();
    let adds = done["adds"].as_array().ok_or_else(|| anyhow!("BullMQ peer gave no adds"))?;
    let sent: Vec<(String, i64)> = adds.iter().filter_map(|a| Some((a.get(0)?.as_str()?.to_string(), a.get(1)?.as_i64()?))).collect();
    let (lat, missing) = latencies(&sim, &sent)?;
    let mut details = vec![format!(
        "Latency, {}: queue.add at {RATE} jobs/s from the worker's own process, {n} measured after {WARMUP} warm-up jobs; Worker concurrency 64, limiter {{max: 600,000, duration: 60,000}}; outcome {}/{} completed/failed",
        backend.label(),
        done["completed"],
        done["failed"]
    )];
    details.extend(store.top_statements(opts, 8));
    let mut r = summarize(backend.label(), &lat, missing, &mut Vec::new());
    details.append(&mut r.details);
    r.details = details;
    Ok(r)
}

pub fn run(opts: &Opts) -> Outcome {
    let mut out = Outcome::default();
    let sc = format!("2. Immediate-call latency, {RATE:.0}/s × {} calls", count(opts));
    let (pg, bull) = BullRuns::in_rounds(opts, "latency", Some(&|| pg(opts)), |b| bull(opts, b), LatResult::pooled);
    match &pg {
        Ok(p) => {
            // The target is BullMQ's figure of the same run, against each backend (without it,
            // the earlier 1.5 / 5 ms).
            let alone = |ours: Option<f64>, ms: f64| (format!("≤ {ms}"), ours.map(|v| v <= ms));
            let (a50, a99) = (alone(p.p50, 1.5), alone(p.p99, 5.0));
            let at_most = |a: f64, b: f64| a <= b;
            out.rows.push(bull.fill(Row::new(&sc, "p50 ms (COMMIT → POST received)", p.p50, None, 2), |b| b.p50).target_vs_bull(
                "≤ BullMQ",
                at_most,
                (&a50.0, a50.1),
            ));
            out.rows.push(bull.fill(Row::new(&sc, "p99 ms", p.p99, None, 2), |b| b.p99).target_vs_bull(
                "≤ BullMQ",
                at_most,
                (&a99.0, a99.1),
            ));
            out.rows.push(bull.fill(Row::new(&sc, "max ms", p.max, None, 2), |b| b.max));
            out.details.extend(p.details.iter().cloned());
        }
        Err(e) => out.rows.push(Row::failed(&sc, &format!("{e:#}"))),
    }
    out.details.extend(bull.details("latency", |b| &b.details));
    out
}
