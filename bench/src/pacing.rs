//! Scenario 3: pacing accuracy. Three batches (60, 300 and 1,200 calls/min) dialed for a few
//! minutes, pg_dialer, BullMQ on Redis and BullMQ on Postgres at the same time, each against its own
//! simulator (and BullMQ on Postgres on a cluster of its own); from the simulator logs:
//! the most calls in any sliding 60 s window, the achieved rate, and the calls per second.

use crate::bullmq::{Backend, NodeRun, Store};
use crate::chart::Series;
use crate::cluster::Setup;
use crate::common::*;
use crate::report::Row;
use crate::sim::{SimProcess, API_KEY};
use crate::stats;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::time::Duration;

pub const RATES: [u32; 3] = [60, 300, 1200];
const CALL_MS: (u64, u64) = (2000, 4000);
const MAX_CONCURRENT: i32 = 250;

fn duration_s(opts: &Opts) -> u64 {
    // A 60 s window needs more than 60 s of calls: the quick run keeps 70 s.
    if opts.quick {
        70
    } else {
        180
    }
}

fn contacts_for(cpm: u32, d: u64) -> usize {
    ((cpm as f64 * d as f64 / 60.0) * 1.2).ceil() as usize + 10
}

pub struct BatchStats {
    pub max_60s: usize,
    /// Index (in arrival order) of the first call of the fullest 60 s window.
    pub max_60s_from: usize,
    pub max_1s: usize,
    pub share: f64,
    pub calls: usize,
    pub per_second: Vec<u32>,
    /// ms between the first two calls (the spacing is 60000 / calls_per_minute).
    pub first_gap_ms: Option<f64>,
}

pub fn analyze(times: &[i64], cpm: u32, d: u64) -> Option<BatchStats> {
    let t0 = *times.iter().min()?;
    let in_run = times.iter().filter(|t| **t < t0 + d as i64 * 1_000_000).count();
    let (max_60s, max_60s_from) = stats::max_in_window_at(times, 60_000_000);
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let first_gap_ms = (sorted.len() >= 2).then(|| (sorted[1] - sorted[0]) as f64 / 1000.0);
    Some(BatchStats {
        max_60s,
        max_60s_from,
        max_1s: stats::max_in_window(times, 1_000_000),
        share: in_run as f64 / (cpm as f64 * d as f64 / 60.0),
        calls: times.len(),
        per_second: stats::per_second(times, t0, d as usize),
        first_gap_ms,
    })
}

/// POST times grouped by metadata.batch_id.
fn by_batch(sim: &SimProcess) -> Result<BTreeMap<String, Vec<i64>>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for p in sim.posts()? {
        let key = match &p.metadata["batch_id"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.entry(key).or_default().push(p.received_at_us);
    }
    Ok(out)
}

struct BullSide {
    backend: Backend,
    sim: SimProcess,
    store: Store,
    run: NodeRun,
}

fn prepare_bull(opts: &Opts, d: u64, backend: Backend) -> Result<BullSide> {
    let Some(node) = &opts.node else { bail!("BullMQ side not prepared") };
    let sim = SimProcess::start(0, CALL_MS)?;
    let store = Store::start(backend, "bull-pacing", opts)?;
    let mut cfg = serde_json::json!({
        "mode": "pacing", "sim_url": sim.url, "api_key": API_KEY,
        "rates": RATES, "duration_s": d, "concurrency": 64,
    });
    store.configure(&mut cfg);
    let mut run = NodeRun::start(node, &cfg)?;
    run.wait_event("loaded", Duration::from_secs(120))?;
    Ok(BullSide { backend, sim, store, run })
}

struct PgSide {
    sim: SimProcess,
    s: Setup,
    batches: Vec<i64>,
}

fn prepare_pg(opts: &Opts, d: u64) -> Result<PgSide> {
    let sim = SimProcess::start(0, CALL_MS)?;
    let mut conf = vec!["dialer.enabled = off".to_string(), "dialer.status_poll_interval = '1s'".into()];
    conf.extend(pgss_conf(opts));
    let mut s = Setup::new("pacing", &sim.url, API_KEY, &conf)?;
    pgss_create(&mut s.db)?;
    let mut batches = Vec::new();
    for (k, cpm) in RATES.iter().enumerate() {
        let id = s.batch(&format!("pacing {cpm}/min"), *cpm as i32, MAX_CONCURRENT)?;
        s.add_contacts(id, &format!("+12{k}"), 0, contacts_for(*cpm, d))?;
        batches.push(id);
    }
    Ok(PgSide { sim, s, batches })
}

pub fn run(opts: &Opts) -> Outcome {
    let mut out = Outcome::default();
    let d = duration_s(opts);
    let want_bull = !opts.skip_bullmq && opts.node.is_some();
    let mut bull = Vec::new();
    // Why BullMQ on Postgres has no figures, when it could not start.
    let mut pg_na = None;
    for backend in Backend::ALL.into_iter().filter(|_| want_bull) {
        match prepare_bull(opts, d, backend) {
            Ok(b) => bull.push(b),
            Err(e) => {
                eprintln!("bench: pacing ({}) could not start: {e:#}", backend.label());
                out.details.push(format!("{} pacing could not start: {e:#}", backend.label()));
                if backend == Backend::Postgres {
                    pg_na = Some("could not start (see details)");
                }
            }
        }
    }
    let mut pg = match prepare_pg(opts, d) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("bench: pacing (pg_dialer) could not start: {e:#}");
            out.rows.push(Row::failed("3. Pacing", &format!("{e:#}")));
            None
        }
    };
    eprintln!("bench: pacing for {d} s ...");
    for b in bull.iter_mut() {
        if let Err(e) = b.run.send_line("go") {
            out.details.push(format!("{} pacing: {e:#}", b.backend.label()));
        }
    }
    if let Some(p) = pg.as_mut() {
        if let Err(e) = p.s.set_config("dialer.enabled", "on") {
            out.rows.push(Row::failed("3. Pacing", &format!("{e:#}")));
            pg = None;
        }
    }
    if let Err(e) = sleep_checked(Duration::from_secs(d + 5)) {
        out.rows.push(Row::failed("3. Pacing", &format!("{e:#}")));
        return out;
    }

    let mut pg_stats: BTreeMap<u32, BatchStats> = BTreeMap::new();
    let mut bull_stats: [BTreeMap<u32, BatchStats>; 2] = Default::default();
    if let Some(mut p) = pg.take() {
        for b in &p.batches {
            let _ = p.s.db.execute("SELECT dialer.cancel_batch($1)", &[b]);
        }
        match by_batch(&p.sim) {
            Ok(map) => {
                for (k, cpm) in RATES.iter().enumerate() {
                    if let Some(st) = map.get(&p.batches[k].to_string()).and_then(|t| analyze(t, *cpm, d)) {
                        pg_stats.insert(*cpm, st);
                    }
                }
            }
            Err(e) => out.rows.push(Row::failed("3. Pacing", &format!("{e:#}"))),
        }
        for l in pgss_top(&mut p.s.db, opts, 12) {
            out.details.push(format!("  {l}"));
        }
    }
    for mut b in bull {
        let who = b.backend.label();
        if let Err(e) = b.run.wait_event("done", Duration::from_secs(60)) {
            out.details.push(format!("{who} pacing: {e:#}"));
        }
        match by_batch(&b.sim) {
            Ok(map) => {
                for cpm in RATES {
                    if let Some(st) = map.get(&format!("bull-{cpm}")).and_then(|t| analyze(t, cpm, d)) {
                        bull_stats[b.backend as usize].insert(cpm, st);
                    }
                }
            }
            Err(e) => out.details.push(format!("{who} pacing log: {e:#}")),
        }
        b.run.finish();
        out.details.extend(b.store.top_statements(opts, 8));
    }

    out.details.push(format!(
        "Pacing: {} calls/min, {d} s, simulated calls {}–{} ms. pg_dialer: batches with max_concurrent {MAX_CONCURRENT}, status_poll_interval 1s. BullMQ (on Redis and on Postgres, each with its own simulator; all three at once): one queue per rate, Worker concurrency 64, limiter {{max: calls_per_minute, duration: 60,000}} (the seed's form, \"N calls per 60 s\"), so its own limiter period is 60 s.",
        RATES.map(|r| r.to_string()).join(", "),
        CALL_MS.0,
        CALL_MS.1
    ));
    for cpm in RATES {
        let sc = format!("3. Pacing, {cpm} calls/min for {d} s");
        let p = pg_stats.get(&cpm);
        let b = [&bull_stats[0], &bull_stats[1]].map(|m| m.get(&cpm));
        if p.is_none() && b.iter().all(Option::is_none) {
            continue;
        }
        let row = |metric: &str, f: &dyn Fn(&BatchStats) -> f64, decimals| {
            let r = Row::new(&sc, metric, p.map(f), b[0].map(f), decimals).bull_pg(b[1].map(f));
            match pg_na {
                Some(why) => r.bull_pg_na(why),
                None => r,
            }
        };
        out.rows.push(
            row(&format!("most calls in any 60 s (limit {cpm})"), &|s| s.max_60s as f64, 0)
                .target(&format!("≤ {cpm}"), p.map(|s| s.max_60s <= cpm as usize)),
        );
        out.rows.push(row("achieved rate, % of limit", &|s| s.share * 100.0, 1).target("≥ 98%", p.map(|s| s.share >= 0.98)));
        out.rows.push(row(&format!("most calls in any 1 s (even pacing: {})", (cpm as f64 / 60.0).ceil()), &|s| s.max_1s as f64, 0));
        for (who, st) in [("pg_dialer", p), (Backend::Redis.label(), b[0]), (Backend::Postgres.label(), b[1])] {
            if let Some(st) = st {
                out.details.push(format!(
                    "  {who} {cpm}/min: {} calls in all, most in 60 s {} (the first such window starts at call #{}), most in 1 s {}, {:.1}% of the limit over the first {d} s; first two calls {:.1} ms apart (spacing {:.1} ms)",
                    st.calls,
                    st.max_60s,
                    st.max_60s_from + 1,
                    st.max_1s,
                    st.share * 100.0,
                    st.first_gap_ms.unwrap_or(f64::NAN),
                    60_000.0 / cpm as f64
                ));
                out.pacing.push(Series { system: who.to_string(), cpm, per_second: st.per_second.clone() });
            }
        }
    }
    out
}
