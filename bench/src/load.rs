//! Scenario 5: a realistic load. One campaign at 1,800 calls/min (30 calls/s, the most a Telnyx
//! account allows) with calls of 2–4 s, the worker at its default settings, for 60 s: what it costs
//! in CPU (the worker process, every Postgres process, the simulator), and whether the rate is
//! kept. Then BullMQ with the same load (its pacing mode), not at the same time, so that each
//! system's CPU is its own. pg_stat_statements is always loaded here (track = top).

use crate::bullmq::{Backend, BullRuns, NodeRun, Store};
use crate::cluster::Setup;
use crate::common::*;
use crate::procstat;
use crate::report::{group, Row};
use crate::sim::{SimProcess, API_KEY};
use crate::stats;
use crate::throughput::post_times;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CPM: u32 = 1800;
/// The default warm-up (--load-warmup), in s: past BullMQ's start-up (about a third of its CPU in
/// a first minute) and past the first calls' ends, so every system is measured steady.
pub const WARMUP_S: u64 = 30;
/// Room for the calls in progress at the load's rate (250 with the default calls of 2–4 s).
fn max_concurrent(opts: &Opts) -> i32 {
    250.max((CPM as f64 / 60.0 * opts.load_call_ms.1 as f64 / 1000.0 * 1.2).ceil() as i32)
}
/// The top statements by total time printed into the details.
const PGSS_TOP: i64 = 10;

fn duration_s(opts: &Opts) -> u64 {
    if opts.quick {
        30
    } else {
        60
    }
}

/// The calls the limit allows over the run (30/s × duration).
fn allowed(d: u64) -> usize {
    (CPM as u64 * d / 60) as usize
}

struct LoadResult {
    /// The pg_dialer worker process (all its threads), seconds; None for BullMQ.
    worker_cpu: Option<f64>,
    /// Postgres (every process but the bench's own connection) | node + redis-server, seconds.
    system_cpu: f64,
    sim_cpu: f64,
    /// POSTs the simulator saw in the `d` s from the first one.
    placed: usize,
    /// The pg_dialer worker's private memory (RssAnon) and peak RSS (VmHWM) at the end, MB.
    anon_mb: Option<f64>,
    hwm_mb: Option<f64>,
    details: Vec<String>,
}

fn cpu_of(pid: i32, what: &str) -> Result<f64> {
    procstat::cpu_seconds(pid).ok_or_else(|| anyhow!("{what} (pid {pid}) is gone: no CPU figure"))
}

/// Waits (polling every 10 ms) until the simulator has seen a call; the measurement starts then.
fn wait_first_call(sim: &SimProcess, cap: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if sim.calls_created()? > 0 {
            return Ok(());
        }
        if start.elapsed() > cap {
            bail!("no call reached the simulator within {} s", cap.as_secs());
        }
        sleep_checked(Duration::from_millis(10))?;
    }
}

/// POSTs in [first POST + warm-up, that + d s), and the most in any 1 s of them (even pacing: 30).
fn in_window(sim: &SimProcess, warmup: u64, d: u64, details: &mut Vec<String>) -> Result<(usize, usize)> {
    let times = post_times(sim, details)?;
    let Some(first) = times.iter().min().copied() else { return Ok((0, 0)) };
    let from = first + warmup as i64 * 1_000_000;
    let times: Vec<i64> = times.into_iter().filter(|t| (from..from + d as i64 * 1_000_000).contains(t)).collect();
    Ok((times.len(), stats::max_in_window(&times, 1_000_000)))
}

/// How the worker wrote its hot tables: updates, and how many of them were HOT (no index entry).
/// Statistics reach the view when a backend reports them (at most once a second): read as they
/// stand at the end of the run.
fn row_writes(db: &mut postgres::Client) -> Result<String> {
    let rows = db.query(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
          WHERE schemaname = 'dialer' AND relname IN ('calls', 'campaign_contacts', 'call_batches') ORDER BY relname",
        &[],
    )?;
    let parts: Vec<String> = rows
        .iter()
        .map(|r| {
            let (ins, upd, hot): (i64, i64, i64) = (r.get(1), r.get(2), r.get(3));
            format!("{} {ins} inserted, {upd} updated ({hot} HOT)", r.get::<_, String>(0))
        })
        .collect();
    let widths = db.query_one(
        "SELECT coalesce(avg(pg_column_size(k.*)), 0)::float8, coalesce(avg(pg_column_size(k.request)), 0)::float8,
                coalesce(avg(pg_column_size(k.response)), 0)::float8
           FROM dialer.calls k WHERE k.provider_call_id IS NOT NULL",
        &[],
    )?;
    let (row, request, response): (f64, f64, f64) = (widths.get(0), widths.get(1), widths.get(2));
    let size = db.query_one(
        "SELECT pg_relation_size('dialer.calls')::float8 / 1048576, pg_indexes_size('dialer.calls')::float8 / 1048576,
                (SELECT count(*) FROM dialer.calls)",
        &[],
    )?;
    let (heap_mb, indexes_mb, calls): (f64, f64, i64) = (size.get(0), size.get(1), size.get(2));
    Ok(format!(
        "row writes over the whole run: {}; an accepted call's row {row:.0} bytes (request {request:.0}, response {response:.0}); \
         dialer.calls {calls} rows, heap {heap_mb:.1} MB, indexes {indexes_mb:.1} MB at the end",
        parts.join("; ")
    ))
}

fn pct(cpu_s: f64, d: u64) -> f64 {
    cpu_s / d as f64 * 100.0
}

fn pg(opts: &Opts, d: u64) -> Result<LoadResult> {
    let sim = SimProcess::start(0, opts.load_call_ms)?;
    let track = pgss_track(opts);
    let mut conf = pgss_conf(opts);
    conf.insert(0, "dialer.enabled = off".into());
    let mut s = Setup::new("load", &sim.url, API_KEY, &conf)?;
    pgss_create(&mut s.db).context("CREATE EXTENSION pg_stat_statements")?;
    let (warmup, max_concurrent) = (opts.load_warmup_s, max_concurrent(opts));
    let contacts = (CPM as f64 / 60.0 * run_s(opts, d) as f64 * 1.2).ceil() as usize;
    let campaigns = opts.load_campaigns.max(1);
    let (cpm, per) = (CPM as usize / campaigns, contacts.div_ceil(campaigns));
    let mut batches = Vec::with_capacity(campaigns);
    for i in 0..campaigns {
        let batch = s.batch(&format!("load {cpm}/min #{i}"), cpm as i32, max_concurrent)?;
        s.add_contacts(batch, "+130", i * per, per)?;
        batches.push(batch);
    }
    let pm = s.cluster.postmaster_pid()?;
    let worker = s.worker_pid().context("the pg_dialer worker is not running (no pg_stat_activity row with backend_type 'pg_dialer')")?;
    let mut details = vec![format!(
        "pg_dialer: {} of {} contacts at {} calls/min, max_concurrent {max_concurrent}; worker settings at their defaults; pg_stat_statements loaded (track = {track})",
        if campaigns == 1 { "one campaign".to_string() } else { format!("{campaigns} campaigns, each") },
        group(per as f64, 0),
        group(cpm as f64, 0)
    )];
    s.db.batch_execute("SELECT pg_stat_statements_reset()")?;
    let enabled = Instant::now();
    s.set_config("dialer.enabled", "on")?;
    wait_first_call(&sim, Duration::from_secs(30))?;
    let startup_s = enabled.elapsed().as_secs_f64();
    if warmup > 0 {
        sleep_checked(Duration::from_secs(warmup))?;
        s.db.batch_execute("SELECT pg_stat_statements_reset()")?;
    }
    let cpu0 = procstat::pg_cpu(pm);
    let w0 = cpu_of(worker, "the pg_dialer worker")?;
    let thr0 = procstat::threads_cpu(worker);
    let sim0 = cpu_of(sim.pid(), "the simulator")?;
    let t0 = now_us();
    sleep_checked(Duration::from_secs(d))?;
    let cpu1 = procstat::pg_cpu(pm);
    let w1 = cpu_of(worker, "the pg_dialer worker")?;
    let thr1 = procstat::threads_cpu(worker);
    let sim1 = cpu_of(sim.pid(), "the simulator")?;
    let t1 = now_us();
    // Read before the bench's own statements below add to it.
    let top = pgss_top(&mut s.db, opts, PGSS_TOP);
    for batch in &batches {
        let _ = s.db.execute("SELECT dialer.cancel_batch($1)", &[batch]);
    }

    let mut dcpu = cpu1.delta(&cpu0);
    // The bench's own connection is not the engine's work.
    let own = dcpu.by_role.remove("client backends").unwrap_or(0.0);
    let mut thr = BTreeMap::new();
    for (name, v) in &thr1 {
        thr.insert(name.clone(), v - thr0.get(name).copied().unwrap_or(0.0));
    }
    let (placed, max_1s) = in_window(&sim, opts.load_warmup_s, d, &mut details)?;
    details.push(format!(
        "  first call {startup_s:.2} s after the worker was enabled; measured over the {d} s from {}: {placed} calls ({:.2}/s), most in any 1 s {max_1s}",
        window_start(opts),
        placed as f64 / d as f64
    ));
    details.push(format!("  pg_dialer worker process CPU {:.2} s ({:.1}% of one core)", w1 - w0, pct(w1 - w0, d)));
    details.extend(split_lines("  pg_dialer worker CPU by thread", &thr));
    details.extend(split_lines("  Postgres CPU by process (without the bench's own connection)", &dcpu.by_role));
    details.push(format!(
        "  the bench's own connection: {own:.2} s CPU; simulator CPU {:.2} s (it also answers the worker's status look-ups, which BullMQ does not make)",
        sim1 - sim0
    ));
    let (ticks, p50, p95, max, initiated, per_call) = tick_stats(&mut s.db, Some(t0), Some(t1))?;
    details.push(format!(
        "  dialer.runs over the window: {ticks} ticks, duration p50 {p50:.2} ms, p95 {p95:.2} ms, max {max:.1} ms; {initiated} calls initiated ({:.1} per tick, {per_call:.3} tick ms per call)",
        initiated as f64 / ticks.max(1) as f64
    ));
    details.push(format!("  {}", memory_line(worker)));
    details.push(format!("  {}", row_writes(&mut s.db)?));
    details.extend(top.into_iter().map(|l| format!("  {l}")));
    let (anon_mb, hwm_mb) = (procstat::status_mb(worker, "RssAnon"), procstat::status_mb(worker, "VmHWM"));
    Ok(LoadResult { worker_cpu: Some(w1 - w0), system_cpu: dcpu.total(), sim_cpu: sim1 - sim0, placed, anon_mb, hwm_mb, details })
}

fn bull(opts: &Opts, d: u64, backend: Backend) -> Result<LoadResult> {
    let Some(node) = &opts.node else { bail!("BullMQ side not prepared") };
    let sim = SimProcess::start(0, opts.load_call_ms)?;
    let store = Store::start(backend, "bull-load", opts)?;
    let mut cfg = serde_json::json!({
        "mode": "pacing", "sim_url": sim.url, "api_key": API_KEY,
        "rates": [CPM], "duration_s": run_s(opts, d), "concurrency": 64, "limit_duration_ms": 1000,
    });
    store.configure(&mut cfg);
    let mut run = NodeRun::start(node, &cfg)?;
    run.wait_event("loaded", Duration::from_secs(120))?;
    let go = Instant::now();
    run.send_line("go")?;
    wait_first_call(&sim, Duration::from_secs(30))?;
    let startup_s = go.elapsed().as_secs_f64();
    sleep_checked(Duration::from_secs(opts.load_warmup_s))?;
    let node_pid = run.pid();
    cpu_of(node_pid, "node")?;
    let c0 = store.cpu(node_pid);
    let sim0 = cpu_of(sim.pid(), "the simulator")?;
    sleep_checked(Duration::from_secs(d))?;
    // node stops its worker d s after "go", so this window holds its whole run; once it has exited
    // its figures stay readable until it is reaped (by wait_event or finish, below).
    cpu_of(node_pid, "node")?;
    let c1 = store.cpu(node_pid);
    let sim1 = cpu_of(sim.pid(), "the simulator")?;
    let mut details = Vec::new();
    if let Err(e) = run.wait_event("done", Duration::from_secs(60)) {
        details.push(format!("  BullMQ load: {e:#}"));
    }
    run.finish();
    let (placed, max_1s) = in_window(&sim, opts.load_warmup_s, d, &mut details)?;
    details.insert(
        0,
        format!(
            "{}: pacing mode, one queue of {} jobs, Worker concurrency 64, limiter {{max: {}, duration: 1,000}} (the provider's 30 calls per second, as a BullMQ user would write it)",
            backend.label(),
            group((CPM as f64 * run_s(opts, d) as f64 / 60.0 * 1.2).ceil() + 10.0, 0),
            CPM / 60
        ),
    );
    details.push(format!(
        "  first call {startup_s:.2} s after \"go\"; measured over the {d} s from {}: {placed} calls ({:.2}/s), most in any 1 s {max_1s}",
        window_start(opts),
        placed as f64 / d as f64
    ));
    let dcpu = c1.delta(&c0);
    details.extend(split_lines(&format!("  CPU ({:.1}% of one core)", pct(dcpu.total(), d)), &dcpu.by_role));
    details.push(format!("  simulator CPU {:.2} s", sim1 - sim0));
    details.extend(store.top_statements(opts, PGSS_TOP));
    Ok(LoadResult { worker_cpu: None, system_cpu: dcpu.total(), sim_cpu: sim1 - sim0, placed, anon_mb: None, hwm_mb: None, details })
}

fn window_start(opts: &Opts) -> String {
    match opts.load_warmup_s {
        0 => "then".to_string(),
        w => format!("{w} s after it (the warm-up)"),
    }
}

/// How long the load runs: the warm-up, then the measured window of `d` s.
fn run_s(opts: &Opts, d: u64) -> u64 {
    opts.load_warmup_s + d
}

pub fn run(opts: &Opts) -> Outcome {
    let mut out = Outcome::default();
    let d = duration_s(opts);
    let (call_min, call_max) = opts.load_call_ms;
    let mut sc = format!("5. Realistic load, {} calls/s for {d} s", CPM / 60);
    if (call_min, call_max, opts.load_warmup_s) != (2000, 4000, WARMUP_S) {
        sc += &format!(" (calls of {}–{} s, after {} s)", call_min / 1000, call_max / 1000, opts.load_warmup_s);
    }
    out.details.push(format!(
        "Realistic load: {} calls/min ({} calls/s, the most a Telnyx account allows) for {d} s, simulated calls {call_min}–{call_max} ms; pg_dialer first, then BullMQ (never both at once). Each is measured over the {d} s from {}the first call the simulator saw.",
        group(CPM as f64, 0),
        CPM / 60,
        match opts.load_warmup_s {
            0 => String::new(),
            w => format!("{w} s after "),
        }
    ));
    let p = pg(opts, d);
    match &p {
        Ok(r) => out.details.extend(r.details.iter().cloned()),
        Err(e) => {
            eprintln!("bench: load (pg_dialer) failed: {e:#}");
            out.rows.push(Row::failed(&sc, &format!("{e:#}")));
        }
    }
    let bull = BullRuns::run(opts, "load", |b| bull(opts, d, b));
    out.details.extend(bull.details("load", |r| &r.details));
    let p = p.ok();
    if p.is_none() && !bull.any_ok() {
        return out;
    }
    let p = p.as_ref();
    let floor = CPM as f64 / 60.0 * 0.98;
    let worker_cpu = p.and_then(|r| r.worker_cpu).map(|c| pct(c, d));
    out.rows.push(Row::new(&sc, "pg_dialer worker process CPU, % of one core", worker_cpu, None, 1));
    out.rows.push(
        bull.fill(
            Row::new(
                &sc,
                "CPU, % of one core: Postgres (all processes) | node+redis | node+Postgres",
                p.map(|r| pct(r.system_cpu, d)),
                None,
                1,
            ),
            |r| Some(pct(r.system_cpu, d)),
        )
        .target_vs_bull("≤ BullMQ", |a, b| a <= b, ("", None)),
    );
    out.rows.push(
        bull.fill(Row::new(&sc, "CPU, % of one core: simulator", p.map(|r| pct(r.sim_cpu, d)), None, 1), |r| Some(pct(r.sim_cpu, d))),
    );
    let placed = |r: &LoadResult| Some(r.placed as f64);
    out.rows
        .push(bull.fill(Row::new(&sc, &format!("calls placed (of {})", group(allowed(d) as f64, 0)), p.and_then(placed), None, 0), placed));
    let rate = |r: &LoadResult| Some(r.placed as f64 / d as f64);
    out.rows.push(
        bull.fill(Row::new(&sc, "achieved rate, calls/s", p.and_then(rate), None, 2), rate)
            .target(&format!("≥ {floor:.1}/s (98%)"), p.and_then(rate).map(|r| r >= floor - 1e-9)),
    );
    if let Some(r) = p {
        out.rows.extend(memory_rows(&sc, r.anon_mb, r.hwm_mb));
    }
    out
}
