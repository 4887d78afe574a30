//! `make bench`: pg_dialer's throughput, immediate-call latency, pacing accuracy, behaviour under
//! a large backlog and CPU under a realistic load, side by side with BullMQ on the same machine and
//! the same simulator.
//! Figures are printed and written to bench/results/<date>.md (+ a pacing chart), never asserted.

mod backlog;
mod bullmq;
mod chart;
mod cleanup;
mod cluster;
mod common;
mod failover;
mod latency;
mod load;
mod machine;
mod pacing;
mod procstat;
mod report;
mod sim;
mod stats;
mod throughput;

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::{Opts, Outcome};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const SCENARIOS: [&str; 6] = ["throughput", "latency", "pacing", "backlog", "load", "failover"];

/// Benchmarks pg_dialer (and BullMQ beside it) on this machine.
#[derive(Parser, Debug)]
#[command(name = "pg_dialer_bench")]
struct Args {
    /// Everything about 10× smaller (pacing still runs 70 s: it measures 60 s windows).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma-separated or repeated): throughput, latency, pacing, backlog, load.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Leave out the BullMQ side (no Node, npm or Redis needed).
    #[arg(long)]
    skip_bullmq: bool,
    /// pg_stat_statements with track = all (statements inside functions too; slows plpgsql down).
    /// Without it every scenario still reports its costliest top-level statements (track = top).
    #[arg(long)]
    pgss: bool,
    /// dialer.max_claim_per_batch for the throughput runs (300 did best of 150, 300 and 1000 with
    /// the worker claiming up to 8× its HTTP threads ahead: larger claims make one tick's
    /// transaction long, smaller ones pay a tick's fixed costs more often).
    #[arg(long, default_value_t = 300)]
    claim: i32,
    /// Rounds of the throughput (simulator at 0 ms) and latency scenarios, each system in turn
    /// in every round, so that a slow spell of the machine falls on all of them (default 3; 1
    /// with --quick). Throughput reports each figure's median round; latency, the percentiles of
    /// every round's calls together.
    #[arg(long)]
    rounds: Option<usize>,
    /// The realistic load's 30 calls/s as this many campaigns of 1,800/N calls a minute each
    /// (pg_dialer only: BullMQ keeps its one queue), as a server of many tenants runs them; a
    /// divisor of 1,800.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1800))]
    load_campaigns: u16,
    /// The realistic load's simulated call length in seconds, MIN,MAX (default 2,4). Real AI calls
    /// last minutes: pg_dialer polls each call in progress at the provider until it ends (BullMQ
    /// tracks no call), so longer calls cost it more polls. Use with --load-warmup.
    #[arg(long, value_delimiter = ',', default_values_t = [2u64, 4])]
    load_call_s: Vec<u64>,
    /// Seconds the realistic load runs before its measured window opens: calls in progress build
    /// up for about a call's length, and BullMQ gets past its start-up, before the cost is steady.
    #[arg(long, default_value_t = load::WARMUP_S)]
    load_warmup: u64,
    /// Simulator latencies (ms) of the pg_dialer throughput runs.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 100])]
    tp_latency: Vec<u64>,
    /// Where results go (default: bench/results of this checkout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// An extra postgresql.conf line for every cluster (repeatable), e.g.
    /// --pg-conf "+preload auto_explain" --pg-conf "auto_explain.log_min_duration = '1s'".
    #[arg(long = "pg-conf", value_name = "LINE")]
    pg_conf: Vec<String>,
    /// Keep each cluster's server.log in this directory.
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__sim") {
        return match sim::serve_main(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("provider-sim: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let args = Args::parse();
    cleanup::install_handler();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pg_dialer_bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether every scenario ran (figures are reported either way).
fn run(args: Args) -> Result<bool> {
    for s in &args.only {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s:?} for --only (choose from {})", SCENARIOS.join(", "));
        }
    }
    if 1800 % args.load_campaigns != 0 {
        bail!("--load-campaigns {}: the load's 1,800 calls a minute must split evenly (a divisor of 1,800)", args.load_campaigns);
    }
    let load_call_ms = match args.load_call_s[..] {
        [min, max] if 1 <= min && min <= max && max <= 3600 => (min * 1000, max * 1000),
        _ => bail!("--load-call-s {:?}: give MIN,MAX seconds, 1 ≤ MIN ≤ MAX ≤ 3600", args.load_call_s),
    };
    let _ = common::EXTRA_CONF.set(args.pg_conf.clone());
    let _ = common::LOG_DIR.set(args.logs.clone());
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    cluster::preflight()?;
    let mut opts = Opts {
        quick: args.quick,
        pgss: args.pgss,
        skip_bullmq: args.skip_bullmq,
        node: None,
        claim: args.claim,
        tp_latencies: args.tp_latency.clone(),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        load_campaigns: args.load_campaigns.into(),
        load_call_ms,
        load_warmup_s: args.load_warmup,
    };
    let mut notes = Vec::new();
    let bull_needed = !args.skip_bullmq && ["throughput", "latency", "pacing", "load"].iter().any(|s| wanted(s));
    if bull_needed {
        match bullmq::prepare() {
            Ok(node) => opts.node = Some(node),
            Err(e) => {
                eprintln!("bench: the BullMQ side cannot run: {e:#}");
                notes.push(format!("BullMQ side not run: {e:#}"));
            }
        }
    }
    let started = Instant::now();
    let load_start = loadavg();
    let date = chrono::Local::now().format("%Y-%m-%d").to_string();
    let mut all = Outcome::default();
    let mut ok = true;
    for name in SCENARIOS {
        if !wanted(name) || cleanup::interrupted() {
            continue;
        }
        eprintln!("bench: {name}{} ...", if opts.quick { " (quick)" } else { "" });
        let t = Instant::now();
        let mut o = match name {
            "throughput" => throughput::run(&opts),
            "latency" => latency::run(&opts),
            "pacing" => pacing::run(&opts),
            "backlog" => backlog::run(&opts),
            "failover" => failover::run(&opts),
            _ => load::run(&opts),
        };
        eprintln!("bench: {name} took {:.0} s", t.elapsed().as_secs_f64());
        ok &= o.rows.iter().all(|r| r.error.is_none());
        // Show each scenario's rows as soon as they are known.
        eprint!("{}", report::text_table(&o.rows));
        all.rows.append(&mut o.rows);
        all.details.append(&mut o.details);
        all.pacing.append(&mut o.pacing);
    }
    let machine = machine::machine();
    let table = report::text_table(&all.rows);
    println!();
    println!(
        "pg_dialer bench {date}{} — {} CPUs ({}), {:.1} GiB; took {:.0} s",
        if opts.quick { " (quick)" } else { "" },
        machine.nproc,
        machine.cpu,
        machine.mem_gib,
        started.elapsed().as_secs_f64()
    );
    print!("{table}");
    for n in &notes {
        println!("note: {n}");
    }

    let out_dir = args.out.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let stem = if opts.quick { format!("{date}-quick") } else { date.clone() };
    let png_name = format!("{stem}-pacing.png");
    let mut png_ok = false;
    if !all.pacing.is_empty() {
        match chart::draw(&out_dir.join(&png_name), &all.pacing) {
            Ok(()) => png_ok = true,
            Err(e) => {
                eprintln!("bench: could not draw the pacing chart: {e:#}");
                notes.push(format!("pacing chart not drawn: {e:#}"));
            }
        }
    }
    notes.push(format!(
        "load average (1, 5, 15 min) at the start: {load_start}; at the end: {}. Other work on the machine shares its cores and shows in the figures.",
        loadavg()
    ));
    let md = markdown(&date, &opts, &machine, &all, &notes, png_ok.then_some(png_name.as_str()), started.elapsed().as_secs_f64());
    let md_path = out_dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, md).with_context(|| format!("write {}", md_path.display()))?;
    println!("results: {}{}", md_path.display(), if png_ok { format!(" (+ {png_name})") } else { String::new() });
    Ok(ok && !cleanup::interrupted())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn markdown(date: &str, opts: &Opts, m: &machine::Machine, all: &Outcome, notes: &[String], png: Option<&str>, took_s: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# pg_dialer bench, {date}{}\n", if opts.quick { " (quick: everything ~10× smaller)" } else { "" });
    let _ = writeln!(s, "Machine: {} CPUs ({}), {:.1} GiB memory, Linux {}.  ", m.nproc, m.cpu, m.mem_gib, m.kernel);
    let _ = writeln!(
        s,
        "Software: pg_dialer {}; {}; Node {}, BullMQ {}, {}. The whole run took {:.0} s.\n",
        m.engine, m.postgres, m.node, m.bullmq, m.redis, took_s
    );
    let _ = writeln!(
        s,
        "Every process (Postgres, the simulator, Node, Redis) runs on the same {} cores; each system posts to its own \
         provider simulator (`provider-sim` in a process of its own) on loopback. BullMQ on Postgres (BullMQ's \
         PostgreSQL backend) runs on the same Postgres build as pg_dialer, in a throwaway cluster of its own with \
         the same settings (never pg_dialer's cluster: pacing runs all three systems at once). Postgres runs with `fsync = off`, \
         `synchronous_commit = off` (the test harness's settings; the worker commits its claims synchronously whatever \
         the setting, which costs little without fsync), Redis with `--save '' --appendonly no`: neither side \
         pays for durability. Figures are measured, never asserted; `(MISSED)` marks a pg_dialer target not reached \
         (targets relative to BullMQ are judged against both backends). Throughput (at 0 ms) and latency run \
         in {}, each system in turn in every round: throughput gives each figure's median round, latency \
         the percentiles of every round's calls together. \
         Reproduce with `make bench` (`BENCH_ARGS=\"--quick\"` for the short run).\n",
        m.nproc,
        if opts.rounds == 1 { "one round".to_string() } else { format!("{} rounds", opts.rounds) }
    );
    s.push_str(&report::markdown_table(&all.rows));
    if let Some(p) = png {
        let _ = writeln!(s, "\n![calls per second against the limit, pg_dialer and BullMQ on Redis and on Postgres]({p})\n");
        let _ = writeln!(s, "Calls per second (left) and cumulative calls (right) against the limit, per rate: pg_dialer (blue), BullMQ on Redis (red), BullMQ on Postgres (green).\n");
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    let _ = writeln!(s, "\n## Details\n\n```text");
    for d in &all.details {
        let _ = writeln!(s, "{d}");
    }
    let _ = writeln!(s, "```");
    s
}
