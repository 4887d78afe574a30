//! `make demo`: a newcomer's first five minutes with pg_dialer.
//!
//! Starts the provider simulator in-process and a throwaway Postgres 15 with pg_dialer's
//! background worker and pg_cron preloaded, sets up an agency and a campaign with the SQL API,
//! then watches the worker dial it (live progress from `dialer.batch_progress`) and prints a
//! summary plus SQL to look further. Everything is removed on exit unless `--keep`.

mod campaign;
mod cluster;
mod report;
mod web;

use clap::Parser;
use cluster::Cluster;
use console::style;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use postgres::Client;
use provider_sim::{SimConfig, Simulator};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Simulated call length, scaled down from real calls (minutes) so the demo takes about a minute.
pub const CALL_MS: (u64, u64) = (4_000, 12_000);
pub const STATUS_POLL_MS: u64 = 500;
pub const RETRY_AFTER_SECS: u64 = 2;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "pg_dialer_demo",
    about = "pg_dialer in action: a throwaway Postgres with the worker and pg_cron, a simulated voice-AI provider, and a live campaign",
    after_help = "Run it with `make demo` (installs the extension first), or e.g. `make demo DEMO_ARGS=\"--contacts 1000 --concurrency 100 --keep\"`."
)]
struct Args {
    /// Contacts in the campaign
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    contacts: u32,
    /// The campaign's calls_per_minute limit
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(i32).range(1..=100_000))]
    cpm: i32,
    /// The campaign's max_concurrent limit (calls in progress at once)
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    concurrency: i32,
    /// Attempts per contact (max_attempts)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=10))]
    attempts: i32,
    /// Give up watching after this many seconds
    #[arg(long, default_value_t = 600)]
    deadline: u64,
    /// Keep Postgres and the simulator running after the campaign, until Ctrl-C, to explore with psql
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum End {
    Completed,
    Interrupted,
    Deadline,
}

fn main() {
    let args = Args::parse();
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("\n{} {e}", style("error:").red().bold());
            1
        }
    };
    std::process::exit(code);
}

fn ok_line(text: impl std::fmt::Display) {
    println!("  {} {text}", style("✓").green().bold());
}

fn detail(text: impl std::fmt::Display) {
    println!("      {}", style(text).dim());
}

/// A database error's message and hint, without the driver's wrapping.
pub fn pg_err(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(h) => format!("{} (hint: {h})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

fn sql(db: &mut Client, what: &str, q: &str) -> Result<(), String> {
    db.batch_execute(q).map_err(|e| format!("{what} failed: {}", pg_err(&e)))
}

fn run(args: &Args) -> Result<i32, String> {
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).map_err(|e| format!("could not install the Ctrl-C handler: {e}"))?;
    }

    println!();
    println!(
        "{} {}",
        style("pg_dialer demo").bold().cyan(),
        style("— outbound AI voice calls, scheduled and placed from inside PostgreSQL").bold()
    );
    println!(
        "{}",
        style("  Nothing real is dialed: the voice-AI provider is a simulator on 127.0.0.1, the numbers are fictional +1 555 ones.").dim()
    );
    println!();

    cluster::preflight()?;

    // 1. The provider.
    let n = args.contacts as usize;
    let (rules, dead_numbers) = campaign::rules(n);
    let sim = Simulator::start(
        SimConfig {
            api_key: Some(campaign::API_KEY.to_string()),
            call_duration_ms_min: CALL_MS.0,
            call_duration_ms_max: CALL_MS.1,
            error_rate: 0.03,
            rate_limit_rate: 0.02,
            retry_after_secs: RETRY_AFTER_SECS,
            latency_ms: 120,
            latency_jitter_ms: 180,
            rules,
            // As strict as Ultravox itself when the published specs are at hand.
            spec_dir: provider_contract::default_spec_dir(),
            ..SimConfig::default()
        },
        0,
    )
    .map_err(|e| format!("could not start the provider simulator on 127.0.0.1: {e}"))?;
    ok_line(format_args!("provider simulator (Ultravox API) listening on {}", style(sim.base_url()).bold()));
    detail(match provider_contract::default_spec_dir() {
        Some(dir) => format!("every request is checked against the published specs in {}", dir.display()),
        None => "no provider specs found (../shared/provider-specs): only the simulator's built-in checks apply".to_string(),
    });
    detail(format!(
        "calls last {}–{} s · ~3% answered 500 · ~2% answered 429 (Retry-After {RETRY_AFTER_SECS} s) · 120–300 ms per request",
        CALL_MS.0 / 1000,
        CALL_MS.1 / 1000
    ));

    // 2. The database.
    let started = Instant::now();
    let conf: Vec<String> = [
        "shared_preload_libraries = 'pg_dialer,pg_cron'",
        "dialer.database = 'postgres'",
        // The simulator is on loopback, which the worker reaches only when it is listed.
        "dialer.allowed_hosts = '127.0.0.1'",
        &format!("dialer.status_poll_interval = '{STATUS_POLL_MS}ms'"),
        "dialer.http_timeout = '5s'",
        "cron.database_name = 'postgres'",
        "cron.use_background_workers = on",
        "max_worker_processes = 16",
        "fsync = off",
        "synchronous_commit = off",
        "log_min_messages = warning",
        "log_line_prefix = '%m [%p] %b '",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cluster = Cluster::start(&conf)?;
    let mut db = cluster.connect()?;
    ok_line(format_args!(
        "Postgres {} on port {} with pg_dialer's background worker and pg_cron preloaded ({:.1} s)",
        cluster::pg_major(),
        style(cluster.port).bold(),
        started.elapsed().as_secs_f64()
    ));
    detail(format!("data and server log under {}", cluster.dir.display()));

    sql(&mut db, "CREATE EXTENSION pg_dialer", "CREATE EXTENSION pg_dialer")
        .map_err(|e| format!("{e}\nhint: is the installed extension up to date? run `make install-release`"))?;
    sql(&mut db, "CREATE EXTENSION pg_cron", "CREATE EXTENSION pg_cron")?;
    db.query_one("SELECT cron.schedule('pg_dialer-tick', '* * * * *', 'SELECT dialer.process_batches()')", &[])
        .map_err(|e| format!("cron.schedule failed: {}", pg_err(&e)))?;
    ok_line("CREATE EXTENSION pg_dialer; CREATE EXTENSION pg_cron");
    detail("cron.schedule('pg_dialer-tick', '* * * * *', 'SELECT dialer.process_batches()')  -- the seed's cron job");
    detail("(the worker does not need it: it wakes on dialer.wake() and at each pacing slot on its own)");
    let worker = wait_for_worker(&mut db, Duration::from_secs(5));
    if !worker {
        println!(
            "  {} the pg_dialer background worker is not in pg_stat_activity yet; see {}",
            style("!").yellow().bold(),
            cluster.log_path().display()
        );
    }

    // 3. Agency, credentials, agent, campaign.
    let agency_id: i64 = db
        .query_one("SELECT dialer.create_agency($1, $2)", &[&campaign::AGENCY, &campaign::TIMEZONE])
        .map_err(|e| format!("dialer.create_agency failed: {}", pg_err(&e)))?
        .get(0);
    db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3)", &[&agency_id, &campaign::API_KEY, &sim.base_url()])
        .map_err(|e| format!("dialer.set_provider_credentials failed: {}", pg_err(&e)))?;
    let mapping_id: i64 = db
        .query_one(
            "SELECT dialer.create_agent_mapping($1, 'ultravox', $2, $3, $4)",
            &[&agency_id, &campaign::AGENT_ID, &campaign::AGENT_NAME, &campaign::FROM_NUMBER],
        )
        .map_err(|e| format!("dialer.create_agent_mapping failed: {}", pg_err(&e)))?
        .get(0);
    ok_line(format_args!(
        "agency \"{}\" ({}) · Ultravox key + base_url → the simulator · agent \"{}\" ({})",
        campaign::AGENCY,
        campaign::TIMEZONE,
        campaign::AGENT_NAME,
        campaign::AGENT_ID
    ));

    // The batch and its contacts in one transaction: the worker sees the campaign whole, never
    // a batch it could start before its contacts are in.
    let list = campaign::contacts(n);
    let mut tx = db.transaction().map_err(|e| format!("BEGIN failed: {}", pg_err(&e)))?;
    let batch_id: i64 = tx
        .query_one(
            "SELECT dialer.create_batch($1, $2, $3, $4, $5, NULL, $6)",
            &[&agency_id, &mapping_id, &campaign::CAMPAIGN, &args.cpm, &args.concurrency, &args.attempts],
        )
        .map_err(|e| format!("dialer.create_batch failed: {}", pg_err(&e)))?
        .get(0);
    let mut added = 0i64;
    for payload in campaign::payloads(&list, 5000) {
        let k: i32 = tx
            .query_one("SELECT dialer.add_contacts($1, $2)", &[&batch_id, &payload])
            .map_err(|e| format!("dialer.add_contacts failed: {}", pg_err(&e)))?
            .get(0);
        added += k as i64;
    }
    tx.commit().map_err(|e| format!("COMMIT failed: {}", pg_err(&e)))?;
    ok_line(format_args!(
        "campaign \"{}\" (batch {batch_id}): {} contacts · {} calls/min · at most {} at once · {} attempt{} each",
        campaign::CAMPAIGN,
        style(added).bold(),
        style(args.cpm).bold(),
        style(args.concurrency).bold(),
        args.attempts,
        if args.attempts == 1 { "" } else { "s" }
    ));
    if let Some(c) = list.first() {
        let vars: Vec<String> = ["first_name", "clinic", "last_visit"]
            .iter()
            .filter_map(|k| c.variables.get(*k).and_then(|v| v.as_str()).map(|v| format!("{k}={v}")))
            .collect();
        detail(format!("e.g. {} {} · template variables {}, …", c.name, c.phone, vars.join(", ")));
    }
    if dead_numbers > 0 {
        detail(format!(
            "the simulator sends some numbers to voicemail or leaves them unanswered, and {dead_numbers} {} out of service",
            if dead_numbers == 1 { "is" } else { "are" }
        ));
    }
    if stop.load(Ordering::SeqCst) {
        println!("\n  {}", style("Interrupted during set-up: stopping Postgres and cleaning up.").yellow());
        return Ok(130);
    }
    // The web console beside the campaign, signed in to as an operator role made for the demo.
    let web = match web::start(&mut db, cluster.port) {
        Ok(w) => {
            ok_line(format_args!("web console on {}", style(&w.url).bold().underlined()));
            detail(format!(
                "sign in as role {} with password {} (an operator: sees every agency, can pause the campaign)",
                web::ROLE,
                w.password
            ));
            Some(w)
        }
        Err(e) => {
            println!("  {} web console not started: {e}", style("!").yellow().bold());
            None
        }
    };
    sql(&mut db, "dialer.wake()", "SELECT dialer.wake()")?;
    println!();
    println!("  The background worker is dialing. {}", style("(Ctrl-C stops early and cleans up)").dim());
    println!();

    // 4. Watch.
    let watch_started = Instant::now();
    let end = watch(&mut db, &cluster, batch_id, args, &stop)?;
    let watched = watch_started.elapsed();

    // 5. Summary.
    if db.is_closed() {
        db = cluster.connect()?;
    }
    let example = report::summary(&mut db, &sim, batch_id, args, end, watched, t0.elapsed())?;
    if end != End::Interrupted {
        report::sql_to_look_further(batch_id, example.as_ref(), args.keep, &cluster);
    }

    if args.keep && end != End::Interrupted {
        println!();
        println!("  {} Postgres and the simulator keep running. Connect with:", style("▶").cyan().bold());
        println!();
        println!("      psql \"{}\"", cluster.conninfo());
        println!();
        println!(
            "  {}",
            style(format!("Server log: {} · press Ctrl-C to stop everything and clean up.", cluster.log_path().display())).dim()
        );
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!();
    }

    // 6. Clean up: connection, then the cluster (before the simulator the worker talks to).
    println!();
    println!("  {}", style(format!("Stopping Postgres and removing {} …", cluster.dir.display())).dim());
    drop(web);
    drop(db);
    cluster.stop();
    drop(cluster);
    drop(sim);
    println!("  {}", style("Done.").dim());
    Ok(match end {
        End::Completed => 0,
        End::Interrupted => 130,
        End::Deadline => 2,
    })
}

fn wait_for_worker(db: &mut Client, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let found = db
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialer' LIMIT 1", &[])
            .map(|r| r.is_some())
            .unwrap_or(false);
        if found {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One look at the batch, from `dialer.batch_progress` and `dialer.calls`.
pub struct Snapshot {
    pub status: String,
    pub total: i32,
    pub queued: i32,
    pub in_progress: i32,
    pub completed: i32,
    pub failed: i32,
    pub in_doubt: i64,
    pub last_error: Option<String>,
    pub attempts: i64,
    pub last_60s: i64,
    pub since_first_call: Option<f64>,
}

impl Snapshot {
    fn take(db: &mut Client, batch_id: i64) -> Result<Snapshot, postgres::Error> {
        let r = db.query_one(
            "SELECT p.status, p.total_contacts, p.queued_count, p.in_progress_count, p.completed_count,
                    p.failed_count, p.last_error,
                    (SELECT count(*) FROM dialer.campaign_contacts c
                      WHERE c.batch_id = p.batch_id AND c.status = 'in_doubt'),
                    (SELECT count(*) FROM dialer.calls k WHERE k.batch_id = p.batch_id),
                    (SELECT count(*) FROM dialer.calls k
                      WHERE k.batch_id = p.batch_id AND k.created_at > now() - interval '60 seconds'),
                    (SELECT extract(epoch FROM now() - min(k.created_at))::float8 FROM dialer.calls k
                      WHERE k.batch_id = p.batch_id)
               FROM dialer.batch_progress p WHERE p.batch_id = $1",
            &[&batch_id],
        )?;
        Ok(Snapshot {
            status: r.get(0),
            total: r.get(1),
            queued: r.get(2),
            in_progress: r.get(3),
            completed: r.get(4),
            failed: r.get(5),
            last_error: r.get(6),
            in_doubt: r.get(7),
            attempts: r.get(8),
            last_60s: r.get(9),
            since_first_call: r.get(10),
        })
    }

    fn done(&self) -> u64 {
        (self.completed as i64 + self.failed as i64 + self.in_doubt).max(0) as u64
    }

    /// Attempts per minute over the last 60 s (or since the first call, when that is shorter).
    fn rate(&self) -> Option<f64> {
        let since = self.since_first_call?;
        (since >= 5.0).then(|| self.last_60s as f64 * 60.0 / since.min(60.0))
    }

    fn line(&self, args: &Args) -> String {
        let rate = match self.rate() {
            Some(r) => format!("{:.0}", r),
            None => "–".into(),
        };
        let mut s = format!(
            "queued {} · in call {}/{} · completed {} · failed {}",
            style(self.queued).yellow(),
            style(self.in_progress).cyan(),
            args.concurrency,
            style(self.completed).green(),
            style(self.failed).red(),
        );
        if self.in_doubt > 0 {
            s.push_str(&format!(" · in doubt {}", style(self.in_doubt).magenta()));
        }
        s.push_str(&format!(" · {} calls/min (limit {})", style(rate).bold(), args.cpm));
        s
    }
}

fn watch(db: &mut Client, cluster: &Cluster, batch_id: i64, args: &Args, stop: &AtomicBool) -> Result<End, String> {
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.deadline);
    let total = args.contacts as u64;
    let pb = if tty {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template(
            "  {spinner:.green} {elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} contacts done ({percent}%)\n    {msg}",
        )
        .map_err(|e| format!("progress bar template: {e}"))?
        .progress_chars("█▉▊▋▌▍▎▏ ")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓");
        pb.set_style(style);
        Some(pb)
    } else {
        None
    };
    let mut last_plain = Instant::now() - Duration::from_secs(10);
    let mut warned_stall = false;
    let mut lost_since: Option<Instant> = None;
    let mut told_lost = false;
    let end = loop {
        if stop.load(Ordering::SeqCst) {
            break End::Interrupted;
        }
        let snap = match Snapshot::take(db, batch_id) {
            Ok(s) => {
                lost_since = None;
                s
            }
            Err(e) => {
                // The server restarted (a backend crashed) or a query failed: reconnect and go
                // on for a while, then give up with the server log.
                let first = *lost_since.get_or_insert_with(Instant::now);
                if first.elapsed() > Duration::from_secs(20) {
                    if let Some(pb) = &pb {
                        pb.abandon();
                        println!();
                    }
                    let log = cluster.server_log();
                    let hint = if log.contains("signal 7: Bus error") {
                        "\nhint: a Bus error usually means pg_dialer.so was overwritten while this cluster was \
                         running (a `make install` or `cargo pgrx install` at the same time?): run the demo again"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "lost the connection to the demo cluster: {}\n--- last lines of the server log ---\n{}{hint}",
                        pg_err(&e),
                        cluster::tail(&log, 15)
                    ));
                }
                if !told_lost {
                    told_lost = true;
                    let msg = format!(
                        "{} lost the connection ({}); reconnecting… (server log: {})",
                        style("!").yellow().bold(),
                        pg_err(&e),
                        cluster.log_path().display()
                    );
                    match &pb {
                        Some(pb) => pb.println(format!("  {msg}")),
                        None => println!("  {msg}"),
                    }
                }
                if db.is_closed() {
                    if let Ok(c) = postgres::Client::connect(&cluster.conninfo(), postgres::NoTls) {
                        *db = c;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let finished = snap.status == "completed" || snap.status == "cancelled";
        if let Some(pb) = &pb {
            pb.set_length(snap.total.max(1) as u64);
            pb.set_position(snap.done());
            pb.set_message(snap.line(args));
            pb.tick();
        } else if finished || last_plain.elapsed() >= Duration::from_secs(2) {
            last_plain = Instant::now();
            println!("  [{:>4}s] {}/{} done · {}", started.elapsed().as_secs(), snap.done(), snap.total, snap.line(args));
        }
        if finished {
            if let Some(pb) = &pb {
                pb.finish();
                println!();
            }
            break End::Completed;
        }
        if !warned_stall && snap.attempts == 0 && started.elapsed() > Duration::from_secs(15) {
            warned_stall = true;
            let msg = format!(
                "{} no call placed after 15 s (batch status '{}'{}): is the worker running? see {}",
                style("!").yellow().bold(),
                snap.status,
                snap.last_error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default(),
                cluster.log_path().display()
            );
            match &pb {
                Some(pb) => pb.println(format!("  {msg}")),
                None => println!("  {msg}"),
            }
        }
        if Instant::now() >= deadline {
            if let Some(pb) = &pb {
                pb.abandon();
                println!();
            }
            break End::Deadline;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if end == End::Interrupted {
        if let Some(pb) = &pb {
            pb.abandon();
            println!();
        }
    }
    Ok(end)
}
