//! Scenario 6, failover: a paced campaign, an asynchronous standby cut off (its WAL receiver
//! pointed nowhere) for 3 s, then the primary killed (`pg_ctl stop -m immediate`) and the standby
//! promoted. Counted at the simulator: people never called, people called twice, and the seconds
//! from the primary's death to the first call from the new primary. (Correctness figures, not
//! speed: pg_dialer holds calls until the standbys hold their claims, dialer.standby_wait.)

use crate::cluster::Setup;
use crate::common::{now_us, sleep_checked, Opts, Outcome};
use crate::report::Row;
use crate::sim::{SimProcess, API_KEY};
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SCENARIO: &str = "6. Failover (async standby cut 3 s before the primary dies)";

struct Figures {
    contacts: usize,
    before_death: usize,
    lost: usize,
    doubled: usize,
    first_call_s: f64,
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep_checked(Duration::from_millis(50))?;
    }
    Ok(())
}

fn once(opts: &Opts) -> Result<Figures> {
    let contacts = if opts.quick { 150 } else { 300 };
    let sim = SimProcess::start(0, (200, 400))?;
    let mut s = Setup::new("failover", &sim.url, API_KEY, &[])?;
    let standby = s.cluster.standby("failover-standby")?;
    let db = &mut s.db;
    let streaming = |db: &mut postgres::Client| -> Result<bool> {
        Ok(db
            .query_opt("SELECT 1 FROM pg_stat_replication WHERE application_name = 'failover-standby' AND state = 'streaming'", &[])?
            .is_some())
    };
    wait_until("the standby streaming", Duration::from_secs(30), || streaming(db))?;
    let batch = s.batch("failover", 1200, 20)?;
    s.add_contacts(batch, "+1777", 0, contacts)?;
    s.db.batch_execute("SELECT dialer.wake()")?;
    let dialed = |sim: &SimProcess| -> Result<usize> {
        let mut seen = std::collections::HashSet::new();
        for p in sim.posts()? {
            if let Some(to) = p.to {
                seen.insert(to);
            }
        }
        Ok(seen.len())
    };
    wait_until("a third of the campaign dialed", Duration::from_secs(60), || Ok(dialed(&sim)? >= contacts / 3))?;
    let mut replica = standby.connect()?;
    replica.batch_execute("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'")?;
    replica.batch_execute("SELECT pg_reload_conf()")?;
    let db = &mut s.db;
    wait_until("the standby cut off", Duration::from_secs(30), || Ok(!streaming(db)?))?;
    sleep_checked(Duration::from_secs(3))?;
    let before_death = dialed(&sim)?;
    s.cluster.pg_ctl(&["stop", "-m", "immediate"])?;
    let died = now_us();
    standby.pg_ctl(&["promote", "-w", "-t", "60"])?;
    let promoted = now_us();
    let mut db = standby.connect()?;
    wait_until("the campaign completed on the promoted server", Duration::from_secs(180), || {
        let st: String = db.query_one("SELECT status FROM dialer.call_batches WHERE id = $1", &[&batch])?.get(0);
        Ok(st == "completed")
    })?;
    let posts = sim.posts()?;
    let mut per_number: HashMap<String, usize> = HashMap::new();
    for p in &posts {
        if let Some(to) = &p.to {
            *per_number.entry(to.clone()).or_default() += 1;
        }
    }
    let first_after = posts.iter().map(|p| p.received_at_us).filter(|&t| t > promoted).min();
    Ok(Figures {
        contacts,
        before_death,
        lost: contacts.saturating_sub(per_number.len()),
        doubled: per_number.values().filter(|&&n| n > 1).count(),
        first_call_s: first_after.map(|t| (t - died) as f64 / 1e6).unwrap_or(f64::NAN),
    })
}

pub fn run(opts: &Opts) -> Outcome {
    let mut out = Outcome::default();
    match once(opts) {
        Ok(f) => {
            out.rows.push(Row::new(SCENARIO, "calls lost", Some(f.lost as f64), None, 0).target("0", Some(f.lost == 0)));
            out.rows.push(Row::new(SCENARIO, "calls doubled", Some(f.doubled as f64), None, 0).target("0", Some(f.doubled == 0)));
            out.rows.push(Row::new(
                SCENARIO,
                "s from the primary's death to the first call from the new primary",
                Some(f.first_call_s),
                None,
                2,
            ));
            out.details.push(format!(
                "Failover, pg_dialer: {} contacts at 1,200 calls/min, max_concurrent 20, simulated calls 0.2–0.4 s; an asynchronous \
                 standby (pg_basebackup -R) cut off 3 s before the primary was stopped with -m immediate and the standby promoted; \
                 {} called before the primary died; dialer.standby_wait 10 s (default)",
                f.contacts, f.before_death
            ));
        }
        Err(e) => out.rows.push(Row::failed(SCENARIO, &format!("{e:#}"))),
    }
    out
}
