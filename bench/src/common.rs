//! Helpers shared by the scenarios.

use crate::cleanup;
use crate::report::Row;
use anyhow::{bail, Result};
use postgres::Client;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct Opts {
    pub quick: bool,
    pub pgss: bool,
    pub skip_bullmq: bool,
    /// `node`, once the BullMQ side is prepared.
    pub node: Option<PathBuf>,
    /// dialer.max_claim_per_batch for the throughput runs.
    pub claim: i32,
    /// Simulator latencies of the pg_dialer throughput runs (0 and 100 by default).
    pub tp_latencies: Vec<u64>,
    /// Rounds of the throughput (0 ms) and latency scenarios (see --rounds).
    pub rounds: usize,
    /// Campaigns the realistic load is split over on the pg_dialer side (see --load-campaigns).
    pub load_campaigns: usize,
    /// The realistic load's simulated call length, ms (see --load-call-s).
    pub load_call_ms: (u64, u64),
    /// Seconds the realistic load runs before its window is measured (see --load-warmup).
    pub load_warmup_s: u64,
}

/// One system's rounds merged with `merge` (those that succeeded; a failed round is said on
/// stderr as it happens); the first error if none succeeded, None if none ran.
pub fn merge_rounds<T>(rounds: Vec<Result<T>>, merge: impl Fn(Vec<T>) -> T) -> Option<Result<T>> {
    let mut ok = Vec::new();
    let mut first_err = None;
    for r in rounds {
        match r {
            Ok(t) => ok.push(t),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if ok.is_empty() {
        first_err.map(Err)
    } else {
        Some(Ok(merge(ok)))
    }
}

/// Extra postgresql.conf lines for every cluster (--pg-conf) and where to keep server logs
/// (--logs), set once at start.
pub static EXTRA_CONF: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
pub static LOG_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// What a scenario hands back: table rows, detail lines for the report, and (pacing) the series
/// for the chart.
#[derive(Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub details: Vec<String>,
    pub pacing: Vec<crate::chart::Series>,
}

/// CLOCK_REALTIME in µs (the simulator's clock too).
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Sleeps, waking early (with an error) if the bench is interrupted.
pub fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        if cleanup::interrupted() {
            bail!("interrupted");
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// postgresql.conf lines that load pg_stat_statements: every scenario reports its costliest
/// statements. Top-level ones by default (the worker's own queries; a few µs each), every nested
/// statement too with --pgss (which slows plpgsql down noticeably).
pub fn pgss_conf(opts: &Opts) -> Vec<String> {
    vec![
        "+preload pg_stat_statements".into(),
        format!("pg_stat_statements.track = {}", pgss_track(opts)),
        "pg_stat_statements.max = 1000".into(),
        // (with --pgss: how often each statement was planned, and what that cost)
        format!("pg_stat_statements.track_planning = {}", if opts.pgss { "on" } else { "off" }),
    ]
}

pub fn pgss_create(db: &mut Client) -> Result<()> {
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();")?;
    Ok(())
}

/// pg_stat_statements.track of a scenario's cluster: "all" with --pgss, else "top".
pub fn pgss_track(opts: &Opts) -> &'static str {
    if opts.pgss {
        "all"
    } else {
        "top"
    }
}

/// The statements that took the most time (with --pgss, nested ones too: a function's total
/// includes them).
pub fn pgss_top(db: &mut Client, opts: &Opts, n: i64) -> Vec<String> {
    let track = pgss_track(opts);
    let rows = match db.query(
        "SELECT calls, total_exec_time, mean_exec_time, rows, plans, total_plan_time,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
           FROM pg_stat_statements
          WHERE query NOT ILIKE '%pg_stat_statements%'
          ORDER BY total_exec_time DESC LIMIT $1",
        &[&n],
    ) {
        Ok(r) => r,
        Err(e) => return vec![format!("pg_stat_statements: {e}")],
    };
    let how = if track == "all" {
        "nested statements are counted inside their callers too"
    } else {
        "statements run inside functions are not counted apart"
    };
    let mut out = vec![format!("pg_stat_statements (track = {track}; {how}), top {n} by total time:")];
    // (plans are counted only with --pgss: track_planning)
    let planning = |plans: String, plan_ms: String| if opts.pgss { format!(" {plans:>7} {plan_ms:>9}") } else { String::new() };
    out.push(format!(
        "{:>9} {:>11} {:>9} {:>9}{}  query",
        "calls",
        "total ms",
        "mean ms",
        "rows",
        planning("plans".into(), "plan ms".into())
    ));
    for r in rows {
        let calls: i64 = r.get(0);
        let total: f64 = r.get(1);
        let mean: f64 = r.get(2);
        let nrows: i64 = r.get(3);
        let (plans, plan_ms): (i64, f64) = (r.get(4), r.get(5));
        let q: String = r.get(6);
        let planned = planning(plans.to_string(), format!("{plan_ms:.1}"));
        out.push(format!("{calls:>9} {total:>11.1} {mean:>9.3} {nrows:>9}{planned}  {q}"));
    }
    out
}

/// "name 1.23 s (45%)" lines for a CPU split.
pub fn split_lines(title: &str, split: &BTreeMap<String, f64>) -> Vec<String> {
    let total: f64 = split.values().filter(|v| **v > 0.0).sum();
    let mut v: Vec<(&String, &f64)> = split.iter().filter(|(_, s)| **s >= 0.005).collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    let parts: Vec<String> =
        v.iter().map(|(k, s)| format!("{k} {s:.2} s ({:.0}%)", if total > 0.0 { **s / total * 100.0 } else { 0.0 })).collect();
    vec![format!("{title}: {total:.2} s = {}", parts.join(", "))]
}

/// Ticks logged by the worker in dialer.runs (optionally only those started after `since_us`
/// and before `until_us`): count, p50, p95, max duration and calls initiated.
/// The worker's ticks in the interval: (count, duration p50, p95, max, calls initiated, tick ms
/// per call placed over the ticks that placed calls: a fair comparison of ticks doing different
/// amounts of work).
pub fn tick_stats(db: &mut Client, since_us: Option<i64>, until_us: Option<i64>) -> Result<(i64, f64, f64, f64, i64, f64)> {
    let r = db.query_one(
        "SELECT count(*), coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), 0),
                coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms), 0),
                coalesce(max(duration_ms), 0), coalesce(sum(initiated), 0)::bigint,
                coalesce(sum(duration_ms) FILTER (WHERE initiated > 0) / nullif(sum(initiated), 0), 0)::float8
           FROM dialer.runs
          WHERE mode = 'worker' AND status = 'COMPLETED'
            AND ($1::float8 IS NULL OR started_at >= to_timestamp($1::float8 / 1e6))
            AND ($2::float8 IS NULL OR started_at < to_timestamp($2::float8 / 1e6))",
        &[&since_us.map(|v| v as f64), &until_us.map(|v| v as f64)],
    )?;
    Ok((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
}

/// The target for the worker's private memory (RssAnon), MB.
pub const PRIVATE_MB_TARGET: f64 = 50.0;

/// The pg_dialer worker's memory rows: private memory (RssAnon, what the worker itself holds),
/// judged against the target, and its peak RSS (VmHWM, which counts the shared buffers it
/// touched) apart.
pub fn memory_rows(scenario: &str, anon_mb: Option<f64>, hwm_mb: Option<f64>) -> Vec<Row> {
    vec![
        Row::new(scenario, "pg_dialer worker private memory MB (RssAnon, at the end)", anon_mb, None, 1)
            .target(&format!("< {PRIVATE_MB_TARGET:.0}"), anon_mb.map(|m| m < PRIVATE_MB_TARGET)),
        Row::new(scenario, "pg_dialer worker peak RSS MB (VmHWM, shared buffers included)", hwm_mb, None, 1),
    ]
}

pub fn memory_line(pid: i32) -> String {
    let kb = |f: &str| crate::procstat::status_kb(pid, f).map(|v| format!("{:.1} MB", v as f64 / 1024.0)).unwrap_or_else(|| "?".into());
    format!(
        "worker memory (pid {pid}): VmHWM {} (peak RSS, shared buffers it touched included); now VmRSS {}, RssAnon {}, RssShmem {}",
        kb("VmHWM"),
        kb("VmRSS"),
        kb("RssAnon"),
        kb("RssShmem")
    )
}
