//! Failover and restores. A streaming standby (`pg_basebackup -R`) dials nobody while in
//! recovery; the primary dies mid-campaign (`pg_ctl stop -m immediate`), the standby is promoted,
//! its worker starts and finishes the campaign: everyone called exactly once (counted at the
//! simulator), counters exact. With a synchronous standby, and with an asynchronous one whose WAL
//! receiver was cut off for a few seconds before the primary died (a network blip): the worker
//! holds calls until the standbys hold their claims (dialer.standby_wait). A base backup taken
//! mid-campaign and started in the primary's place notices it is behind the worker's last claim
//! and looks up what it cannot account for; a pg_dump restored into a fresh cluster carries on.

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
    let died_us = now_us();
    standby.pg_ctl(&["promote", "-w", "-t", "60"]);
    let promoted_us = now_us();

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
    // (a request already on the wire when the primary died may arrive just after: counted from
    // the end of the promotion)
    let first_after = nums.iter().flat_map(|n| posts_to(&s.sim, n)).map(|p| p.received_at_us).filter(|&t| t > promoted_us).min();
    println!(
        "{name}: {posted_before_the_crash} of {CONTACTS} dialed before the primary died; {} twice, {} never; promoted {:.2} s after \
         the primary died, first call from the new primary {:.2} s after it died",
        twice.len(),
        never.len(),
        (promoted_us - died_us) as f64 / 1e6,
        first_after.map(|t| (t - died_us) as f64 / 1e6).unwrap_or(f64::NAN)
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

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// COMMIT of `schedule_call` → the simulator receives the POST, in ms, for `n` immediate calls.
fn immediate_latencies(s: &mut Scenario, prefix: &str, n: usize) -> Vec<f64> {
    let mut sent = Vec::new();
    for to in numbers(prefix, n) {
        s.db.query_one("SELECT dialer.schedule_call($1, $2)", &[&to, &s.agency_id]).unwrap();
        sent.push((to, now_us()));
        std::thread::sleep(Duration::from_millis(20)); // a steady trickle, as the bench's latency scenario
    }
    let sim = &s.sim;
    wait_for("every immediate call posted", Duration::from_secs(30), || {
        sent.iter().all(|(to, _)| !posts_to(sim, to).is_empty()).then_some(())
    });
    let mut lat: Vec<f64> = sent.iter().map(|(to, t)| (posts_to(&s.sim, to)[0].received_at_us - t) as f64 / 1000.0).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    lat
}

/// What the standby wait costs an immediate call (printed, never asserted; run with --ignored).
#[test]
#[ignore]
fn immediate_call_latency_with_and_without_a_streaming_standby() {
    let mut s = Scenario::new("f-cost", Scenario::sim_config(1000, 2000), &[]);
    s.db.execute("SELECT dialer.set_queue_options($1, calls_per_minute => 600000, max_concurrent => 10000)", &[&s.agency_id]).unwrap();
    let alone = immediate_latencies(&mut s, "+1555630", 200);
    let standby = Cluster::standby_of(&s.cluster, "f-cost-standby", &[]);
    let db = &mut s.db;
    wait_for("the standby streaming", Duration::from_secs(30), || streaming(db, "f-cost-standby").then_some(()));
    let with = immediate_latencies(&mut s, "+1555631", 200);
    let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "immediate call, COMMIT -> POST received (200 calls each): no standby p50 {:.2} ms p99 {:.2} ms; \
         one asynchronous standby streaming (loopback) p50 {:.2} ms p99 {:.2} ms",
        p(&alone, 0.5),
        p(&alone, 0.99),
        p(&with, 0.5),
        p(&with, 0.99)
    );
    drop(standby);
}

/// The worker's note of its last claim (`<key file>.<system id>.state`, beside the key file),
/// copied from `from`'s folder to `to`'s: a restore on the same host finds it where it was.
fn carry_the_worker_note(from: &Cluster, to: &Cluster) {
    for entry in std::fs::read_dir(&from.dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("pg_dialer.key.") && name.ends_with(".state") {
            std::fs::copy(entry.path(), to.dir.join(&name)).unwrap();
            if unsafe { libc::geteuid() } == 0 {
                std::process::Command::new("chown").args(["postgres:postgres"]).arg(to.dir.join(&name)).status().unwrap();
            }
        }
    }
}

/// A restore from a base backup taken mid-campaign, after more calls were placed: the restored
/// copy notices it is behind the worker's last noted claim, looks the contacts it cannot account
/// for up at the provider first, and calls nobody a second time.
#[test]
fn a_database_restored_from_a_backup_calls_nobody_a_second_time() {
    let mut s = Scenario::new("f-restore", Scenario::sim_config(100, 200), &[]);
    let batch = s.batch("restored", 600, 10, 3);
    let nums = numbers("+1555640", CONTACTS);
    assert_eq!(s.add_numbers(batch, &nums), CONTACTS as i32);
    s.wake();
    let sim = &s.sim;
    let dialed = |sim: &pg_dialer_integration::provider_sim::Simulator| nums.iter().filter(|n| !posts_to(sim, n).is_empty()).count();
    wait_for("a sixth of the campaign dialed", Duration::from_secs(60), || (dialed(sim) >= CONTACTS / 6).then_some(()));
    let backup = Cluster::base_backup_of(&s.cluster, "f-restore-copy", false, &[]);
    let at_backup = dialed(&s.sim);
    let sim = &s.sim;
    wait_for("more calls after the backup", Duration::from_secs(60), || (dialed(sim) >= at_backup + 20).then_some(()));
    s.cluster.pg_ctl(&["stop", "-m", "immediate"]);
    let at_stop = dialed(&s.sim);
    // The restore, on the same host: the worker's note beside the key file is where it was.
    carry_the_worker_note(&s.cluster, &backup);
    backup.pg_ctl(&["start", "-w", "-t", "60"]);
    let mut restored = backup.connect();
    wait_for("the campaign completed on the restored copy", Duration::from_secs(120), || {
        let st: String = restored.query_one("SELECT status FROM dialer.call_batches WHERE id = $1", &[&batch]).ok()?.get(0);
        (st == "completed").then_some(())
    });
    assert!(backup.server_log().contains("a restored copy"), "the restore was noticed");
    let twice: Vec<&String> = nums.iter().filter(|n| posts_to(&s.sim, n).len() > 1).collect();
    let never: Vec<&String> = nums.iter().filter(|n| posts_to(&s.sim, n).is_empty()).collect();
    println!(
        "f-restore: {at_backup} of {CONTACTS} dialed at the backup, {at_stop} when the primary stopped; after the restore {} twice, {} never",
        twice.len(),
        never.len()
    );
    assert!(twice.is_empty(), "called twice after the restore: {twice:?}");
    assert!(never.is_empty(), "never called: {never:?}");
    let (completed, in_doubt): (i32, i64) = restored
        .query_one(
            "SELECT completed_count, (SELECT count(*) FROM dialer.campaign_contacts WHERE batch_id = $1 AND status = 'in_doubt')
               FROM dialer.call_batches WHERE id = $1",
            &[&batch],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((completed, in_doubt), (CONTACTS as i32, 0));
}

/// pg_dump of a database in the middle of a campaign, pg_restore into a fresh cluster (the key file
/// copied along): campaigns, the queue, pacing state and settled calls come back, the keys still
/// work, and the new server's worker finishes the campaign without calling anyone twice.
#[test]
fn a_dump_restored_into_a_fresh_cluster_carries_on_where_it_was_taken() {
    let mut s = Scenario::new("f-dump", Scenario::sim_config(100, 200), &[]);
    let batch = s.batch("dumped", 600, 10, 3);
    let nums = numbers("+1555650", 60);
    assert_eq!(s.add_numbers(batch, &nums), 60);
    let job: i64 = s.db.query_one("SELECT dialer.schedule_call('+15556519999', $1, delay => '1 hour')", &[&s.agency_id]).unwrap().get(0);
    s.wake();
    let sim = &s.sim;
    wait_for("a third of the campaign dialed", Duration::from_secs(60), || {
        (nums.iter().filter(|n| !posts_to(sim, n).is_empty()).count() >= 20).then_some(())
    });
    // The dump is taken with the dialing paused, so that no claim is made after it.
    s.db.execute("SELECT dialer.pause_batch($1)", &[&batch]).unwrap();
    let db = &mut s.db;
    wait_for("no call in flight", Duration::from_secs(30), || {
        let n: i64 = db.query_one("SELECT count(*) FROM dialer.calls WHERE status IN ('dialing', 'in_progress')", &[]).ok()?.get(0);
        (n == 0).then_some(())
    });
    let before: (i64, i64) =
        s.db.query_one(
            "SELECT (SELECT count(*) FROM dialer.calls), (SELECT count(*) FROM dialer.campaign_contacts WHERE status = 'completed')",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let dump = std::env::temp_dir().join(format!("pg_dialer_it-f-dump-{}.dump", std::process::id()));
    let out = std::process::Command::new(format!("{}/pg_dump", pg_dialer_integration::pg_bin()))
        .args(["-Fc", "-h", "127.0.0.1", "-p", &s.cluster.port.to_string(), "-U", "postgres", "-f"])
        .arg(&dump)
        .arg("postgres")
        .output()
        .expect("run pg_dump");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    s.cluster.pg_ctl(&["stop", "-m", "immediate"]);

    let fresh = Cluster::start_with_keyring_of("f-dump-fresh", &[], &s.cluster);
    let out = std::process::Command::new(format!("{}/pg_restore", pg_dialer_integration::pg_bin()))
        .args(["-h", "127.0.0.1", "-p", &fresh.port.to_string(), "-U", "postgres", "-d", "postgres"])
        .arg(&dump)
        .output()
        .expect("run pg_restore");
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    let mut restored = fresh.connect();
    let after: (i64, i64) = restored
        .query_one(
            "SELECT (SELECT count(*) FROM dialer.calls), (SELECT count(*) FROM dialer.campaign_contacts WHERE status = 'completed')",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(after, before, "calls and settled contacts came back");
    let state: String = restored.query_one("SELECT (dialer.job_status($1))->>'state'", &[&job]).unwrap().get(0);
    assert_eq!(state, "delayed", "the queue came back");
    let key: String = restored.query_one("SELECT api_key FROM dialer.get_agency_credentials($1)", &[&s.agency_id]).unwrap().get(0);
    assert_eq!(key, pg_dialer_integration::API_KEY, "the key decrypts with the copied key file");
    restored.execute("SELECT dialer.resume_batch($1)", &[&batch]).unwrap();
    restored.batch_execute("SELECT dialer.wake()").unwrap();
    wait_for("the campaign completed on the fresh cluster", Duration::from_secs(120), || {
        let st: String = restored.query_one("SELECT status FROM dialer.call_batches WHERE id = $1", &[&batch]).ok()?.get(0);
        (st == "completed").then_some(())
    });
    let twice: Vec<&String> = nums.iter().filter(|n| posts_to(&s.sim, n).len() > 1).collect();
    assert!(twice.is_empty(), "called twice: {twice:?}");
    assert!(nums.iter().all(|n| posts_to(&s.sim, n).len() == 1), "everyone called");
    drop(fresh);
    let _ = std::fs::remove_file(&dump);
}

/// Point-in-time recovery: a base backup plus archived WAL, recovered to a moment in the middle of
/// the campaign (`recovery_target_time`), after which more calls had been placed: the recovered
/// server notices it is behind the worker's last claim and calls nobody a second time.
#[test]
fn a_point_in_time_recovery_calls_nobody_a_second_time() {
    let archive = std::env::temp_dir().join(format!("pg_dialer_it-f-pitr-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&archive);
    std::fs::create_dir_all(&archive).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        std::process::Command::new("chown").args(["postgres:postgres"]).arg(&archive).status().unwrap();
    }
    let archive_conf = ["archive_mode = on".to_string(), format!("archive_command = 'cp %p {}/%f'", archive.display())];
    let conf: Vec<&str> = archive_conf.iter().map(String::as_str).collect();
    let mut s = Scenario::new("f-pitr", Scenario::sim_config(100, 200), &conf);
    let copy = Cluster::base_backup_of(&s.cluster, "f-pitr-copy", false, &[]);
    let batch = s.batch("recovered to a point in time", 600, 10, 3);
    let nums = numbers("+1555660", CONTACTS);
    assert_eq!(s.add_numbers(batch, &nums), CONTACTS as i32);
    s.wake();
    let sim = &s.sim;
    let dialed = |sim: &pg_dialer_integration::provider_sim::Simulator| nums.iter().filter(|n| !posts_to(sim, n).is_empty()).count();
    wait_for("a sixth of the campaign dialed", Duration::from_secs(60), || (dialed(sim) >= CONTACTS / 6).then_some(()));
    let target: String = s.db.query_one("SELECT now()::text", &[]).unwrap().get(0);
    let at_target = dialed(&s.sim);
    let sim = &s.sim;
    wait_for("more calls after the recovery target", Duration::from_secs(60), || (dialed(sim) >= at_target + 20).then_some(()));
    // Everything up to here archived, then the primary is lost.
    let segment: String = s.db.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[]).unwrap().get(0);
    let db = &mut s.db;
    wait_for("the WAL archived", Duration::from_secs(30), || {
        let last: Option<String> = db.query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[]).ok()?.get(0);
        last.filter(|l| l.as_str() >= segment.as_str()).map(|_| ())
    });
    s.cluster.pg_ctl(&["stop", "-m", "immediate"]);
    let at_stop = dialed(&s.sim);
    carry_the_worker_note(&s.cluster, &copy);
    let data = copy.dir.join("data");
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let mut auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    auto.push_str(&format!(
        "restore_command = 'cp {}/%f %p'\nrecovery_target_time = '{target}'\nrecovery_target_action = 'promote'\narchive_mode = off\n",
        archive.display()
    ));
    std::fs::write(data.join("postgresql.auto.conf"), auto).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(&copy.dir).status().unwrap();
    }
    copy.pg_ctl(&["start", "-w", "-t", "60"]);
    let mut recovered = copy.connect();
    wait_for("the campaign completed on the recovered server", Duration::from_secs(120), || {
        let st: String = recovered.query_one("SELECT status FROM dialer.call_batches WHERE id = $1", &[&batch]).ok()?.get(0);
        (st == "completed").then_some(())
    });
    let twice: Vec<&String> = nums.iter().filter(|n| posts_to(&s.sim, n).len() > 1).collect();
    let never: Vec<&String> = nums.iter().filter(|n| posts_to(&s.sim, n).is_empty()).collect();
    println!(
        "f-pitr: {at_target} of {CONTACTS} dialed at the recovery target, {at_stop} when the primary was lost; after the recovery {} twice, {} never",
        twice.len(),
        never.len()
    );
    assert!(copy.server_log().contains("a restored copy"), "the recovery was noticed");
    assert!(twice.is_empty(), "called twice after the recovery: {twice:?}");
    assert!(never.is_empty(), "never called: {never:?}");
    drop(copy);
    let _ = std::fs::remove_dir_all(&archive);
}
