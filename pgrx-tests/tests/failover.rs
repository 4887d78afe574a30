//! Failover: a streaming standby (`pg_basebackup -R`) dials nobody while in recovery; the
//! primary dies mid-campaign (`pg_ctl stop -m immediate`), the standby is promoted, its worker
//! starts and finishes the campaign: everyone called exactly once (counted at the simulator),
//! counters exact. With a synchronous standby, and with an asynchronous one whose WAL receiver
//! was cut off for a few seconds before the primary died (a network blip): the worker holds
//! calls until the standbys hold their claims (dialer.standby_wait).

use pg_dialer_integration::{numbers, posts_to, wait_for, Cluster, Scenario};
use postgres::Client;
use std::time::Duration;

const CONTACTS: usize = 120;

fn streaming(primary: &mut Client, name: &str) -> bool {
    primary
        .query_opt("SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'", &[&name])
        .ok()
        .flatten()
        .is_some()
}

fn dialing_processes(db: &mut Client) -> i64 {
    db.query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_dialer%'", &[]).map(|r| r.get(0)).unwrap_or(-1)
}

fn failover(name: &str, synchronous: bool, cut_before_the_crash: bool) {
    let mut s = Scenario::new(name, Scenario::sim_config(100, 200), &["dialer.standby_wait = '60s'"]);
    let standby_name = format!("{name}-standby");
    let standby = Cluster::standby_of(&s.cluster, &standby_name, &[]);
    let db = &mut s.db;
    wait_for("the standby streaming", Duration::from_secs(30), || streaming(db, &standby_name).then_some(()));
    if synchronous {
        s.db.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'").unwrap();
        s.db.batch_execute("SELECT pg_reload_conf()").unwrap();
    }
    let mut replica = standby.connect();
    assert_eq!(dialing_processes(&mut replica), 0, "no worker while the server is in recovery");

    let batch = s.batch("through a failover", 600, 10, 3);
    let nums = numbers(&format!("+1555{}", if synchronous { "61" } else { "62" }), CONTACTS);
    assert_eq!(s.add_numbers(batch, &nums), CONTACTS as i32);
    s.wake();
    let sim = &s.sim;
    wait_for("a third of the campaign dialed", Duration::from_secs(60), || {
        (nums.iter().filter(|n| !posts_to(sim, n).is_empty()).count() >= CONTACTS / 3).then_some(())
    });
    if cut_before_the_crash {
        // The standby stops receiving WAL (its primary_conninfo now leads nowhere) ...
        replica.batch_execute("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'").unwrap();
        replica.batch_execute("SELECT pg_reload_conf()").unwrap();
        let db = &mut s.db;
        wait_for("the standby cut off", Duration::from_secs(30), || (!streaming(db, &standby_name)).then_some(()));
        // ... for a few seconds, while the primary goes on (the scenario's blip, not a wait for
        // a condition).
        std::thread::sleep(Duration::from_secs(3));
    }
    let posted_before_the_crash = nums.iter().filter(|n| !posts_to(&s.sim, n).is_empty()).count();
    s.cluster.pg_ctl(&["stop", "-m", "immediate"]);
    standby.pg_ctl(&["promote", "-w", "-t", "60"]);

    // The promoted standby's worker finishes the campaign.
    let mut promoted = standby.connect();
    wait_for("the promoted server's worker", Duration::from_secs(30), || {
        promoted.query_opt("SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pg_dialer'", &[]).ok().flatten()
    });
    promoted.batch_execute("SELECT dialer.wake()").unwrap();
    wait_for("the campaign completed on the promoted server", Duration::from_secs(120), || {
        let st: String = promoted.query_one("SELECT status FROM dialer.call_batches WHERE id = $1", &[&batch]).ok()?.get(0);
        (st == "completed").then_some(())
    });
    let twice: Vec<&String> = nums.iter().filter(|n| posts_to(&s.sim, n).len() > 1).collect();
    let never: Vec<&String> = nums.iter().filter(|n| posts_to(&s.sim, n).is_empty()).collect();
    println!(
        "{name}: {posted_before_the_crash} of {CONTACTS} dialed before the primary died; {} twice, {} never",
        twice.len(),
        never.len()
    );
    assert!(twice.is_empty(), "called twice across the failover: {twice:?}");
    assert!(never.is_empty(), "never called: {never:?}");
    let (completed, failed, in_progress): (i32, i32, i32) = promoted
        .query_one("SELECT completed_count, failed_count, in_progress_count FROM dialer.call_batches WHERE id = $1", &[&batch])
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!((completed, failed, in_progress), (CONTACTS as i32, 0, 0), "counters exact");
}

#[test]
fn a_synchronous_standby_takes_over_with_nobody_called_twice_or_lost() {
    failover("f-sync", true, false);
}

#[test]
fn an_asynchronous_standby_cut_off_before_the_primary_dies_takes_over_with_nobody_called_twice() {
    failover("f-async", false, true);
}
