//! The end-of-run summary and the SQL to paste into psql.

use crate::cluster::Cluster;
use crate::{pg_err, Args, End, RETRY_AFTER_SECS, STATUS_POLL_MS};
use console::style;
use postgres::Client;
use provider_sim::{max_concurrent_calls, Simulator};
use std::time::Duration;

/// A contact worth looking at (most attempts, failed first), for the history query.
pub struct Example {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub attempts: i32,
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let m = (s / 60.0).floor();
        format!("{}m {:02.0}s", m as u64, (s - m * 60.0).floor())
    }
}

fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {:<18}{value}", style(label).bold());
}

fn mark(ok: bool) -> console::StyledObject<&'static str> {
    if ok {
        style("✓").green().bold()
    } else {
        style("✗").red().bold()
    }
}

fn q<T>(r: Result<T, postgres::Error>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("summary query ({what}) failed: {}", pg_err(&e)))
}

pub fn summary(
    db: &mut Client,
    sim: &Simulator,
    batch_id: i64,
    args: &Args,
    end: End,
    watched: Duration,
    wall: Duration,
) -> Result<Option<Example>, String> {
    println!();
    match end {
        End::Completed => {
            println!("{} {}", style("Campaign completed").bold().green(), style(format!("in {}", fmt_duration(watched))).bold())
        }
        End::Interrupted => println!(
            "{} {}",
            style("Stopped early").bold().yellow(),
            style(format!("after {} — the figures below are for what was done so far", fmt_duration(watched))).dim()
        ),
        End::Deadline => println!(
            "{} {}",
            style(format!("Not finished after {} s (--deadline)", args.deadline)).bold().yellow(),
            style("— the figures below are for what was done so far").dim()
        ),
    }
    println!();

    // Contacts.
    let rows = q(
        db.query("SELECT status, count(*) FROM dialer.campaign_contacts WHERE batch_id = $1 GROUP BY 1 ORDER BY 2 DESC", &[&batch_id]),
        "contacts by status",
    )?;
    let contacts: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let count_of = |s: &str| contacts.iter().find(|(k, _)| k == s).map(|(_, n)| *n).unwrap_or(0);
    let total: i64 = contacts.iter().map(|(_, n)| n).sum();
    let mut parts = vec![format!("{} completed", style(count_of("completed")).green().bold())];
    let failed = count_of("failed");
    parts.push(format!(
        "{} failed{}",
        style(failed).red().bold(),
        if failed > 0 { format!(" (after {} attempts)", args.attempts) } else { String::new() }
    ));
    for (k, n) in &contacts {
        if k != "completed" && k != "failed" {
            parts.push(format!("{n} {k}"));
        }
    }
    row("contacts", format!("{total}: {}", parts.join(", ")));

    // Attempts and retries.
    let attempt_rows = q(
        db.query("SELECT status, http_status, count(*) FROM dialer.calls WHERE batch_id = $1 GROUP BY 1, 2 ORDER BY 3 DESC", &[&batch_id]),
        "calls by status",
    )?;
    let attempts: i64 = attempt_rows.iter().map(|r| r.get::<_, i64>(2)).sum();
    let retries: i64 =
        q(db.query_one("SELECT count(*) - count(DISTINCT contact_id) FROM dialer.calls WHERE batch_id = $1", &[&batch_id]), "retries")?
            .get(0);
    let mut not_placed = Vec::new();
    let mut rate_limited = 0i64;
    for r in &attempt_rows {
        let status: String = r.get(0);
        let http: Option<i32> = r.get(1);
        let n: i64 = r.get(2);
        match status.as_str() {
            "in_progress" | "ended" | "dialing" => {}
            "rate_limited" => {
                rate_limited += n;
                not_placed.push(format!("{n} × 429"));
            }
            "failed" => not_placed.push(match http {
                Some(h) => format!("{n} × {h}"),
                None => format!("{n} failed"),
            }),
            other => not_placed.push(format!("{n} {other}")),
        }
    }
    row(
        "call attempts",
        format!(
            "{attempts}, of which {} retries{}",
            style(retries).bold(),
            if not_placed.is_empty() { String::new() } else { format!(" — refused by the provider: {}", not_placed.join(", ")) }
        ),
    );

    // Pace: the busiest 60 s as the provider saw it, and the average while dialing.
    let mut creates: Vec<i64> =
        sim.requests().iter().filter(|r| r.method == "POST" && r.path.starts_with("/api/")).map(|r| r.received_at_us).collect();
    creates.sort_unstable();
    let (mut busiest, mut lo) = (0usize, 0usize);
    for hi in 0..creates.len() {
        while creates[hi] - creates[lo] >= 60_000_000 {
            lo += 1;
        }
        busiest = busiest.max(hi - lo + 1);
    }
    let span_s = match (creates.first(), creates.last()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e6,
        _ => 0.0,
    };
    let mut gaps: Vec<i64> = creates.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let median_gap_ms = gaps.get(gaps.len() / 2).map(|g| *g as f64 / 1000.0).unwrap_or(0.0);
    let avg_rate = if span_s >= 1.0 { (creates.len() - 1) as f64 * 60.0 / span_s } else { 0.0 };
    let avg = if span_s >= 1.0 {
        format!("{} calls/min on average while dialing", style(format!("{avg_rate:.0}")).bold())
    } else {
        format!("{} requests within {:.1} s", creates.len(), span_s)
    };
    row("pace", format!("{avg} · busiest 60 s: {} requests (limit {}/min) {}", busiest, args.cpm, mark(busiest as i64 <= args.cpm as i64)));

    // Concurrency at the provider.
    let bid = batch_id.to_string();
    let calls: Vec<_> = sim.calls().into_iter().filter(|c| c.batch_id().as_deref() == Some(bid.as_str())).collect();
    let peak = max_concurrent_calls(calls.iter());
    row(
        "concurrency",
        format!(
            "peak {} calls at once at the provider (max_concurrent {}) {}",
            style(peak).bold(),
            args.concurrency,
            mark(peak as i64 <= args.concurrency as i64)
        ),
    );

    // Latency.
    let lat = q(
        db.query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms), count(latency_ms)
               FROM dialer.calls WHERE batch_id = $1 AND latency_ms IS NOT NULL",
            &[&batch_id],
        ),
        "latency",
    )?;
    let (p50, p99, nlat): (Option<f64>, Option<f64>, i64) = (lat.get(0), lat.get(1), lat.get(2));
    if let (Some(p50), Some(p99)) = (p50, p99) {
        row("provider latency", format!("p50 {p50:.0} ms · p99 {p99:.0} ms (over {nlat} requests)"));
    }

    // Outcomes.
    let reasons = q(
        db.query(
            "SELECT coalesce(end_reason, '(none)'), count(*) FROM dialer.calls
              WHERE batch_id = $1 AND status = 'ended' GROUP BY 1 ORDER BY 2 DESC, 1",
            &[&batch_id],
        ),
        "end reasons",
    )?;
    let mut outcome: Vec<String> = reasons
        .iter()
        .map(|r| {
            let reason: String = r.get(0);
            let n: i64 = r.get(1);
            let label = match reason.as_str() {
                "hangup" => "hangup (talked)".to_string(),
                "unjoined" => "unjoined (no answer)".to_string(),
                other => other.to_string(),
            };
            format!("{label} {}", style(n).bold())
        })
        .collect();
    let errors = q(
        db.query(
            "SELECT coalesce(last_error, '?'), count(*) FROM dialer.campaign_contacts
              WHERE batch_id = $1 AND status IN ('failed', 'in_doubt') GROUP BY 1 ORDER BY 2 DESC",
            &[&batch_id],
        ),
        "failures",
    )?;
    let failed_total: i64 = errors.iter().map(|r| r.get::<_, i64>(1)).sum();
    if failed_total > 0 {
        outcome.push(format!("not reached {}", style(failed_total).red().bold()));
    }
    if !outcome.is_empty() {
        row("outcomes", outcome.join(" · "));
    }
    for r in &errors {
        let e: String = r.get(0);
        let n: i64 = r.get(1);
        row("", style(format!("{n} × {}", shorten(&e, 100))).dim());
    }

    // The worker and pg_cron.
    let runs = q(
        db.query_one(
            "SELECT count(*) FILTER (WHERE mode = 'worker'), count(*) FILTER (WHERE mode = 'function'),
                    count(*) FILTER (WHERE status = 'ERROR') FROM dialer.runs",
            &[],
        ),
        "runs",
    )?;
    let (worker_runs, err_runs): (i64, i64) = (runs.get(0), runs.get(2));
    let cron = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE d.status = 'succeeded')
               FROM cron.job_run_details d JOIN cron.job j USING (jobid) WHERE j.jobname = 'pg_dialer-tick'",
            &[],
        )
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
    row(
        "worker ticks",
        format!(
            "{worker_runs} by the background worker{}{}",
            match cron {
                Ok((0, _)) => " · pg_cron has not fired yet (it runs on the minute)".to_string(),
                Ok((n, ok)) => format!(" · pg_cron ran dialer.process_batches() {n}× ({ok} succeeded)"),
                Err(_) => String::new(),
            },
            if err_runs > 0 { format!(" · {err_runs} ended in ERROR") } else { String::new() }
        ),
    );
    row("wall time", format!("{} from start to finish, setup included", fmt_duration(wall)));

    // Why the pace is what it is.
    // Only meaningful once there were enough calls for a steady state.
    if calls.len() as i64 > 2 * args.concurrency as i64 && creates.len() > 10 && end == End::Completed {
        let mean_s = calls.iter().map(|c| (c.ended_at_us - c.created_at_us) as f64 / 1e6).sum::<f64>() / calls.len() as f64;
        // A slot is held from the claim to the first status poll after the end.
        let hold_s = mean_s + STATUS_POLL_MS as f64 / 2000.0 + 0.2;
        let bound = args.concurrency as f64 * 60.0 / hold_s;
        println!();
        if bound < args.cpm as f64 * 0.95 {
            let suggest = (args.cpm as f64 * hold_s / 60.0 * 1.15).ceil() as i64;
            println!(
                "  {} {} calls at once × ~{:.1} s each (the call, then the status poll that sees it end) ≈ {:.0} calls/min:",
                style(format!("Why not {}/min?", args.cpm)).bold(),
                args.concurrency,
                hold_s,
                bound
            );
            println!(
                "  here {} is the binding limit, not calls_per_minute. Try `make demo DEMO_ARGS=\"--concurrency {suggest}\"`.",
                style("max_concurrent").bold()
            );
        } else {
            println!(
                "  {} calls_per_minute held the pace: calls went out {} apart (median gap), i.e. {}/min.",
                style("Pacing:").bold(),
                style(format!("{median_gap_ms:.0} ms")).bold(),
                style(format!("{:.0}", 60_000.0 / median_gap_ms.max(1.0))).bold()
            );
            println!(
                "  {}",
                style(format!(
                    "({} at once × ~{:.1} s per call would have allowed ≈ {:.0}/min, so max_concurrent was not what held it back.)",
                    args.concurrency, hold_s, bound
                ))
                .dim()
            );
        }
        if rate_limited > 0 {
            println!(
                "  The provider answered 429 {}: {} the whole batch paused for its Retry-After ({RETRY_AFTER_SECS} s),",
                if rate_limited == 1 { "once".to_string() } else { format!("{rate_limited} times") },
                if rate_limited == 1 { "then" } else { "each time" }
            );
            println!("  and the contact went back to the queue without using up an attempt.");
        }
    }

    let ex = q(
        db.query_opt(
            "SELECT id, name, status, attempts FROM dialer.campaign_contacts WHERE batch_id = $1
              ORDER BY (status = 'failed') DESC, attempts DESC, id LIMIT 1",
            &[&batch_id],
        ),
        "example contact",
    )?;
    Ok(ex.map(|r| Example { id: r.get(0), name: r.get::<_, Option<String>>(1).unwrap_or_default(), status: r.get(2), attempts: r.get(3) }))
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

pub fn sql_to_look_further(batch_id: i64, example: Option<&Example>, keeping: bool, cluster: &Cluster) {
    println!();
    println!("{}", style("SQL to look further").bold().cyan());
    if keeping {
        println!("  {}", style(format!("psql \"{}\", then:", cluster.conninfo())).dim());
    } else {
        println!(
            "  {}",
            style("(the database is removed on exit: run `make demo DEMO_ARGS=--keep` to keep it up and paste these into psql)").dim()
        );
    }
    println!();
    let mut items: Vec<(String, String)> = vec![
        ("the campaign at a glance".into(), "SELECT * FROM dialer.batch_progress;".into()),
        (
            "every attempt, by outcome".into(),
            "SELECT status, http_status, end_reason, count(*), round(avg(latency_ms)) AS avg_ms\n    FROM dialer.calls GROUP BY 1, 2, 3 ORDER BY 4 DESC;".into(),
        ),
        (
            "the pacing, second by second".into(),
            format!("SELECT date_trunc('second', created_at) AS second, count(*)\n    FROM dialer.calls WHERE batch_id = {batch_id} GROUP BY 1 ORDER BY 1;"),
        ),
        (
            "the worker's last ticks".into(),
            "SELECT started_at, mode, initiated, failed, rate_limited, status, round(duration_ms) AS ms\n    FROM dialer.runs ORDER BY id DESC LIMIT 10;".into(),
        ),
    ];
    if let Some(ex) = example {
        items.push((
            format!("one contact's history: {} ({}, {} attempt{})", ex.name, ex.status, ex.attempts, if ex.attempts == 1 { "" } else { "s" }),
            format!(
                "SELECT k.id, k.status, k.http_status, k.error, k.end_reason, k.created_at, k.ended_at\n    FROM dialer.calls k WHERE k.contact_id = {} ORDER BY k.id;",
                ex.id
            ),
        ));
    }
    items.push((
        "the pg_cron job and its runs".into(),
        "SELECT j.jobname, j.schedule, j.command, d.status, d.start_time\n    FROM cron.job j LEFT JOIN cron.job_run_details d USING (jobid) ORDER BY d.start_time DESC NULLS LAST LIMIT 5;".into(),
    ));
    for (what, q) in items {
        println!("  {}", style(format!("-- {what}")).dim());
        println!("  {q}");
    }
}
