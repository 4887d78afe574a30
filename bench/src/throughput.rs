//! Scenario 1: throughput. Contacts in many batches with limits out of the way; calls/s from the
//! first to the last POST the simulator saw, and CPU per 1,000 calls.

use crate::bullmq::{Backend, BullRuns, NodeRun, Store};
use crate::cluster::Setup;
use crate::common::*;
use crate::procstat;
use crate::report::Row;
use crate::sim::{SimProcess, API_KEY};
use crate::stats;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::time::{Duration, Instant};

pub struct TpResult {
    pub rate: Option<f64>,
    /// Calls placed / seconds from the start signal to the last POST.
    pub rate_e2e: Option<f64>,
    pub placed: usize,
    pub wanted: usize,
    pub cpu_per_1k: f64,
    pub sim_cpu_per_1k: f64,
    /// pg_dialer worker's peak RSS (MB).
    pub hwm_mb: Option<f64>,
    /// pg_dialer worker's private memory at the end (RssAnon, MB).
    pub anon_mb: Option<f64>,
    pub details: Vec<String>,
}

const CALL_MS: (u64, u64) = (50, 100);

impl TpResult {
    /// Several rounds of one system as one: each figure's median round (memory: the most any
    /// round used); the details of the round with the median rate, and every round's figures.
    fn median(mut rounds: Vec<TpResult>) -> TpResult {
        if rounds.len() == 1 {
            return rounds.remove(0);
        }
        let median = |f: &dyn Fn(&TpResult) -> Option<f64>| stats::percentile(&rounds.iter().filter_map(f).collect::<Vec<_>>(), 50.0);
        let max = |f: &dyn Fn(&TpResult) -> Option<f64>| rounds.iter().filter_map(f).reduce(f64::max);
        let listed = |f: &dyn Fn(&TpResult) -> Option<f64>, digits: usize| {
            rounds.iter().map(|r| f(r).map_or("—".to_string(), |v| crate::report::group(v, digits))).collect::<Vec<_>>().join(" / ")
        };
        let rate = median(&|r| r.rate);
        let line = format!(
            "  {} rounds, each system in turn in every round; calls/s {}; CPU s / 1k calls {}; the table gives each figure's median round, these details are the median-rate round's",
            rounds.len(),
            listed(&|r| r.rate, 0),
            listed(&|r| Some(r.cpu_per_1k), 3)
        );
        let merged = TpResult {
            rate,
            rate_e2e: median(&|r| r.rate_e2e),
            placed: rounds.iter().map(|r| r.placed).min().unwrap_or(0),
            wanted: rounds[0].wanted,
            cpu_per_1k: median(&|r| Some(r.cpu_per_1k)).unwrap_or(f64::NAN),
            sim_cpu_per_1k: median(&|r| Some(r.sim_cpu_per_1k)).unwrap_or(f64::NAN),
            hwm_mb: max(&|r| r.hwm_mb),
            anon_mb: max(&|r| r.anon_mb),
            details: Vec::new(),
        };
        let at = rounds.iter().position(|r| r.rate == rate).unwrap_or(0);
        let mut details = rounds.swap_remove(at).details;
        details.insert(details.len().min(1), line);
        TpResult { details, ..merged }
    }
}

fn shape(opts: &Opts) -> (usize, usize) {
    if opts.quick {
        (100, 100)
    } else {
        (100, 1000)
    }
}

/// How long one throughput run may dial before it is measured as it stands.
fn cap(opts: &Opts, latency_ms: u64) -> Duration {
    match (opts.quick, latency_ms) {
        (true, 0) => Duration::from_secs(60),
        (true, _) => Duration::from_secs(90),
        (false, 0) => Duration::from_secs(150),
        (false, _) => Duration::from_secs(180),
    }
}

/// Waits until the simulator has created `n` calls, or `cap` has passed.
fn wait_calls(sim: &SimProcess, n: u64, cap: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        sleep_checked(Duration::from_millis(250))?;
        let got = sim.calls_created()?;
        if got >= n {
            return Ok(got);
        }
        if start.elapsed() > cap {
            eprintln!("bench: {got} of {n} calls after {cap:?}; measuring what there is");
            return Ok(got);
        }
    }
}

pub fn post_times(sim: &SimProcess, details: &mut Vec<String>) -> Result<Vec<i64>> {
    let posts = sim.posts()?;
    let distinct: HashSet<&str> = posts.iter().filter_map(|p| p.to.as_deref()).collect();
    let not_201 = posts.iter().filter(|p| p.status != Some(201)).count();
    if distinct.len() != posts.len() || not_201 > 0 {
        details.push(format!(
            "  {} POSTs for {} distinct numbers; {not_201} not answered 201 (yet: still in flight when the log was read)",
            posts.len(),
            distinct.len()
        ));
    }
    Ok(posts.iter().map(|p| p.received_at_us).collect())
}

pub fn pg(opts: &Opts, latency_ms: u64) -> Result<TpResult> {
    let (nb, per) = shape(opts);
    let n = nb * per;
    let sim = SimProcess::start(latency_ms, CALL_MS)?;
    let mut conf = vec![
        "dialer.enabled = off".to_string(),
        "dialer.http_concurrency = 64".into(),
        format!("dialer.max_claim_per_batch = {}", opts.claim),
        "dialer.max_batches_per_run = 100".into(),
        // Status look-ups are not part of placing calls (BullMQ makes none): out of the way.
        "dialer.status_poll_interval = '10min'".into(),
        "dialer.http_timeout = '10s'".into(),
    ];
    conf.extend(pgss_conf(opts));
    let mut s = Setup::new(&format!("tp{latency_ms}"), &sim.url, API_KEY, &conf)?;
    pgss_create(&mut s.db)?;
    let load = Instant::now();
    for b in 0..nb {
        let id = s.batch(&format!("throughput {b}"), 1_000_000, 100_000)?;
        s.add_contacts(id, &format!("+1{:03}", b % 1000), 0, per)?;
    }
    s.db.batch_execute("ANALYZE")?;
    let load_s = load.elapsed().as_secs_f64();
    let pm = s.cluster.postmaster_pid()?;
    let worker = s.worker_pid().context("the pg_dialer worker is not running (no pg_stat_activity row with backend_type 'pg_dialer')")?;
    let mut details = vec![format!(
        "pg_dialer, simulator latency {latency_ms} ms: {n} contacts in {nb} batches (calls_per_minute 1,000,000, max_concurrent 100,000; loaded with add_contacts in {load_s:.1} s), http_concurrency 64, max_claim_per_batch {}, max_batches_per_run 100, status_poll_interval 10min, simulated calls {}–{} ms",
        opts.claim, CALL_MS.0, CALL_MS.1
    )];
    s.db.batch_execute("SELECT pg_stat_statements_reset()")?;
    let cpu0 = procstat::pg_cpu(pm);
    let thr0 = procstat::threads_cpu(worker);
    let sim0 = procstat::cpu_seconds(sim.pid()).unwrap_or(0.0);
    let t_start = now_us();
    s.set_config("dialer.enabled", "on")?;
    let cap = cap(opts, latency_ms);
    let got = wait_calls(&sim, n as u64, cap)?;
    if (got as usize) < n {
        details.push(format!("  stopped after {} s with {got} of {n} calls placed", cap.as_secs()));
    } else {
        // Wait for the worker to record every answer too: that is part of the work.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dialing: i64 = s.db.query_one("SELECT count(*) FROM dialer.calls WHERE status = 'dialing'", &[])?.get(0);
            if dialing == 0 || Instant::now() > deadline {
                if dialing > 0 {
                    details.push(format!("  {dialing} answers not yet recorded ('dialing') 30 s after the last POST"));
                }
                break;
            }
            sleep_checked(Duration::from_millis(500))?;
        }
    }
    let cpu1 = procstat::pg_cpu(pm);
    let thr1 = procstat::threads_cpu(worker);
    let sim1 = procstat::cpu_seconds(sim.pid()).unwrap_or(0.0);
    let times = post_times(&sim, &mut details)?;
    let rate = stats::rate_per_s(&times);
    let calls = times.len().max(got as usize);
    let mut dcpu = cpu1.delta(&cpu0);
    // The bench's own connection (progress queries) is not the engine's work.
    let own = dcpu.by_role.remove("client backends").unwrap_or(0.0);
    let k = calls.max(1) as f64 / 1000.0;
    let rate_e2e = times.iter().max().map(|last| times.len() as f64 / ((last - t_start) as f64 / 1e6));
    let mut thr = std::collections::BTreeMap::new();
    for (name, v) in &thr1 {
        thr.insert(name.clone(), v - thr0.get(name).copied().unwrap_or(0.0));
    }
    details.extend(split_lines("  Postgres CPU by process (without the bench's own connection)", &dcpu.by_role));
    details.push(format!("  the bench's own connection: {own:.2} s CPU"));
    details.extend(split_lines("  pg_dialer worker CPU by thread", &thr));
    details.push(format!(
        "  simulator CPU {:.2} s; {calls} POSTs; {}",
        sim1 - sim0,
        rate.map(|r| format!("{r:.0} calls/s")).unwrap_or_default()
    ));
    let (ticks, p50, p95, max, initiated, _) = tick_stats(&mut s.db, None, None)?;
    details.push(format!(
        "  dialer.runs: {ticks} ticks logged, duration p50 {p50:.1} ms, p95 {p95:.1} ms, max {max:.1} ms; {initiated} calls initiated; {:.0} calls per tick",
        initiated as f64 / ticks.max(1) as f64
    ));
    details.push(format!("  {}", memory_line(worker)));
    for l in pgss_top(&mut s.db, opts, 15) {
        details.push(format!("  {l}"));
    }
    let (hwm_mb, anon_mb) = (procstat::status_mb(worker, "VmHWM"), procstat::status_mb(worker, "RssAnon"));
    Ok(TpResult {
        rate,
        rate_e2e,
        placed: times.len(),
        wanted: n,
        cpu_per_1k: dcpu.total() / k,
        sim_cpu_per_1k: (sim1 - sim0) / k,
        hwm_mb,
        anon_mb,
        details,
    })
}

pub fn bull(opts: &Opts, backend: Backend) -> Result<TpResult> {
    let Some(node) = &opts.node else { bail!("BullMQ side not prepared") };
    let (nb, per) = shape(opts);
    let n = nb * per;
    let sim = SimProcess::start(0, CALL_MS)?;
    let store = Store::start(backend, "bull-tp", opts)?;
    let mut cfg = serde_json::json!({
        "mode": "throughput", "sim_url": sim.url, "api_key": API_KEY,
        "n": n, "concurrency": 64, "limit_max": 1_000_000, "limit_duration_ms": 60_000, "timeout_s": 600,
    });
    store.configure(&mut cfg);
    let mut run = NodeRun::start(node, &cfg)?;
    let load = Instant::now();
    run.wait_event("loaded", Duration::from_secs(600))?;
    let load_s = load.elapsed().as_secs_f64();
    let c0 = store.cpu(run.pid());
    let sim0 = procstat::cpu_seconds(sim.pid()).unwrap_or(0.0);
    let t_start = now_us();
    run.send_line("go")?;
    let done = run.wait_event("done", Duration::from_secs(900))?;
    let c1 = store.cpu(run.pid());
    let sim1 = procstat::cpu_seconds(sim.pid()).unwrap_or(0.0);
    run.finish();
    let mut details = vec![format!(
        "{}, simulator latency 0 ms: {n} jobs added with addBulk in {load_s:.1} s (not timed), Worker concurrency 64, limiter {{max: 1,000,000, duration: 60,000}}, attempts 3, exponential back-off 2 s; worker reported {}",
        backend.label(),
        done
    )];
    let times = post_times(&sim, &mut details)?;
    let rate = stats::rate_per_s(&times);
    let rate_e2e = times.iter().max().map(|last| times.len() as f64 / ((last - t_start) as f64 / 1e6));
    let k = times.len().max(1) as f64 / 1000.0;
    let dcpu = c1.delta(&c0);
    details.extend(split_lines("  CPU (node and its store)", &dcpu.by_role));
    details.push(format!(
        "  simulator CPU {:.2} s; {} POSTs; {}",
        sim1 - sim0,
        times.len(),
        rate.map(|r| format!("{r:.0} calls/s")).unwrap_or_default()
    ));
    details.extend(store.top_statements(opts, 10));
    Ok(TpResult {
        rate,
        rate_e2e,
        placed: times.len(),
        wanted: n,
        cpu_per_1k: dcpu.total() / k,
        sim_cpu_per_1k: (sim1 - sim0) / k,
        hwm_mb: None,
        anon_mb: None,
        details,
    })
}

pub fn run(opts: &Opts) -> Outcome {
    let mut out = Outcome::default();
    let ours = || pg(opts, 0);
    let (pg0, bull) = BullRuns::in_rounds(
        opts,
        "throughput (0 ms)",
        opts.tp_latencies.contains(&0).then_some(&ours as &dyn Fn() -> Result<TpResult>),
        |b| bull(opts, b),
        TpResult::median,
    );
    let pg100 =
        if crate::cleanup::interrupted() || !opts.tp_latencies.contains(&100) { Err(anyhow::anyhow!("not run")) } else { pg(opts, 100) };
    if let Err(e) = &pg100 {
        if e.to_string() != "not run" {
            eprintln!("bench: throughput (pg_dialer, 100 ms) failed: {e:#}");
        }
    }

    let (nb, per) = shape(opts);
    let sc0 = format!("1. Throughput, {} contacts / {nb} batches, sim 0 ms", nb * per);
    match &pg0 {
        Ok(p) => {
            // The targets are BullMQ's figures of the same run (1.5× its rate, at most its CPU),
            // against each backend; without a BullMQ side, the goal of 10,000 calls/s on these 2 cores.
            out.rows.push(bull.fill(Row::new(&sc0, "calls/s (first→last POST)", p.rate, None, 0), |b| b.rate).target_vs_bull(
                "≥ 1.5× BullMQ",
                |a, b| a >= 1.5 * b,
                ("≥ 10,000", p.rate.map(|r| r >= 10_000.0)),
            ));
            out.rows.push(bull.fill(Row::new(&sc0, "calls/s (start → last POST)", p.rate_e2e, None, 0), |b| b.rate_e2e));
            if p.placed < p.wanted || Backend::ALL.iter().any(|k| bull.ok(*k).is_some_and(|b| b.placed < b.wanted)) {
                let metric = format!("calls placed (of {}) before the time cap", p.wanted);
                out.rows.push(bull.fill(Row::new(&sc0, &metric, Some(p.placed as f64), None, 0), |b| Some(b.placed as f64)));
            }
            out.rows.push(
                bull.fill(Row::new(&sc0, "CPU s / 1k calls: Postgres | node+redis | node+Postgres", Some(p.cpu_per_1k), None, 3), |b| {
                    Some(b.cpu_per_1k)
                })
                .target_vs_bull("≤ BullMQ", |a, b| a <= b, ("", None)),
            );
            out.rows.push(
                bull.fill(Row::new(&sc0, "CPU s / 1k calls: simulator", Some(p.sim_cpu_per_1k), None, 3), |b| Some(b.sim_cpu_per_1k)),
            );
            out.rows.extend(memory_rows(&sc0, p.anon_mb, p.hwm_mb));
            out.details.extend(p.details.iter().cloned());
        }
        Err(e) if e.to_string() == "not run" => {}
        Err(e) => out.rows.push(Row::failed(&sc0, &format!("{e:#}"))),
    }
    out.details.extend(bull.details("throughput", |b| &b.details));
    if pg0.is_err() {
        for (k, r) in Backend::ALL.iter().zip(&bull.0) {
            if let Some(Err(e)) = r {
                out.rows.push(Row::failed(&format!("{sc0} ({})", k.label()), &format!("{e:#}")));
            }
        }
    }
    let sc1 = format!("1. Throughput, {} contacts / {nb} batches, sim 100 ms", nb * per);
    match &pg100 {
        Ok(p) => {
            out.rows.push(
                Row::new(&sc1, "calls/s (first→last POST)", p.rate, None, 0)
                    .target("bound: 480 (¾ of 64 threads per provider account × 10/s)", None),
            );
            out.rows.push(Row::new(&sc1, "calls/s (start → last POST)", p.rate_e2e, None, 0));
            if p.placed < p.wanted {
                out.rows.push(Row::new(
                    &sc1,
                    &format!("calls placed (of {}) before the time cap", p.wanted),
                    Some(p.placed as f64),
                    None,
                    0,
                ));
            }
            out.rows.push(Row::new(&sc1, "CPU s / 1k calls: Postgres", Some(p.cpu_per_1k), None, 3));
            out.details.extend(p.details.iter().cloned());
        }
        Err(e) if e.to_string() == "not run" => {}
        Err(e) => out.rows.push(Row::failed(&sc1, &format!("{e:#}"))),
    }
    out
}
