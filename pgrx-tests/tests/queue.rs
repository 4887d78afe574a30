//! The call queue (call-queue-bullmq seed) against the worker and the simulator.

use pg_dialer_integration::provider_sim::Rule;
use pg_dialer_integration::{call_posts, posts_to, wait_for, Scenario};
use serde_json::{json, Value};
use std::time::Duration;

fn fast_queue(s: &mut Scenario) {
    // The seed's 10 calls / 60 s would make every test a minute long.
    let agency = s.agency_id;
    s.db.execute(
        "SELECT dialer.set_queue_options($1, calls_per_minute => 6000, max_concurrent => 10, retry_delay => '300 ms')",
        &[&agency],
    )
    .unwrap();
}

#[test]
fn an_immediate_call_is_posted_on_commit_and_a_rolled_back_one_never() {
    let mut s = Scenario::new("q-immediate", Scenario::sim_config(300, 500), &[]);
    fast_queue(&mut s);
    // Rolled back: nobody is called.
    let mut tx = s.db.transaction().unwrap();
    tx.execute("SELECT dialer.schedule_call('+15551110000', message => 'never')", &[]).unwrap();
    tx.rollback().unwrap();
    let job: i64 =
        s.db.query_one(
            "SELECT dialer.schedule_call('+15551110001', message => 'Hello from pg_dialer', lead_id => 'L-123',
                                         priority => 'high', metadata => '{\"campaign\": \"Q4 Outreach\"}')",
            &[],
        )
        .unwrap()
        .get(0);
    // poll_interval is 30 s: only the wake on commit can make this quick.
    let post = wait_for("the POST", Duration::from_secs(10), || posts_to(&s.sim, "+15551110001").into_iter().next());
    assert_eq!(post.body["templateContext"]["message"], "Hello from pg_dialer");
    assert_eq!(post.body["metadata"]["campaign"], "Q4 Outreach");
    assert_eq!(post.body["metadata"]["lead_ref"], "L-123");
    assert_eq!(post.body["metadata"]["contact_id"], job.to_string());
    let done = s.wait_job_state(job, "completed", Duration::from_secs(15));
    assert_eq!(done["progress"], 100);
    assert_eq!(done["attemptsMade"], 1);
    assert_eq!(done["data"]["priority"], "high");
    assert!(posts_to(&s.sim, "+15551110000").is_empty(), "a rolled-back schedule_call dialed someone");
}

#[test]
fn a_delayed_call_waits_for_its_time_then_goes_at_once() {
    let mut s = Scenario::new("q-delayed", Scenario::sim_config(200, 300), &[]);
    fast_queue(&mut s);
    // The delay counts from inside schedule_call, so a time taken before the call is earlier still.
    let scheduled_at: f64 = s.db.query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[]).unwrap().get(0);
    let job: i64 = s.db.query_one("SELECT dialer.schedule_call('+15551120001', delay => '2 seconds')", &[]).unwrap().get(0);
    assert_eq!(s.job_state(job), "delayed");
    let post = wait_for("the delayed POST", Duration::from_secs(15), || posts_to(&s.sim, "+15551120001").into_iter().next());
    let waited_s = post.received_at_us as f64 / 1e6 - scheduled_at;
    assert!(waited_s >= 1.99, "dialed {waited_s:.3} s after scheduling with a 2 s delay");
    assert!(waited_s < 3.5, "dialed {waited_s:.3} s after scheduling: not soon after its time");
    s.wait_job_state(job, "completed", Duration::from_secs(15));
}

#[test]
fn an_immediate_and_a_delayed_call_in_one_transaction_each_go_at_their_time() {
    // An immediate job's wake-up is only its queue's claim; a delayed job beside it must still
    // reach the worker's next wake-up time (a full pass), or it waits for the worker's next poll.
    let mut s = Scenario::new("q-mixed", Scenario::sim_config(200, 300), &[]);
    fast_queue(&mut s);
    // Polls far apart, as by default: the immediate call's poll must not be what wakes the worker.
    s.set_config("dialer.status_poll_interval", "20s");
    let scheduled_at: f64 = s.db.query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[]).unwrap().get(0);
    let mut tx = s.db.transaction().unwrap();
    let now_job: i64 = tx.query_one("SELECT dialer.schedule_call('+15551125001')", &[]).unwrap().get(0);
    let later_job: i64 = tx.query_one("SELECT dialer.schedule_call('+15551125002', delay => '1500 ms')", &[]).unwrap().get(0);
    tx.commit().unwrap();
    let now_post = wait_for("the immediate POST", Duration::from_secs(10), || posts_to(&s.sim, "+15551125001").into_iter().next());
    let later_post = wait_for("the delayed POST", Duration::from_secs(15), || posts_to(&s.sim, "+15551125002").into_iter().next());
    let now_s = now_post.received_at_us as f64 / 1e6 - scheduled_at;
    let later_s = later_post.received_at_us as f64 / 1e6 - scheduled_at;
    assert!(now_s < 1.5, "the immediate call waited {now_s:.3} s for the delayed one's time");
    assert!(later_s >= 1.49, "dialed {later_s:.3} s after scheduling with a 1.5 s delay");
    // poll_interval is 30 s: only a wake-up time learned at the commit dials it this soon
    assert!(later_s < 4.0, "dialed {later_s:.3} s after scheduling: the worker did not learn its time");
    s.wait_job_state(now_job, "completed", Duration::from_secs(40));
    s.wait_job_state(later_job, "completed", Duration::from_secs(40));
}

#[test]
fn immediate_calls_a_paced_queue_cannot_take_at_once_go_at_their_slots() {
    // Two immediate jobs in one commit to a queue paced 3 s apart: the claim its wake-up makes
    // takes the first; the worker must still learn the second's slot (a full pass), or it waits
    // for the worker's next poll.
    let mut s = Scenario::new("q-paced-pair", Scenario::sim_config(200, 300), &[]);
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.set_queue_options($1, calls_per_minute => 20, max_concurrent => 10)", &[&agency]).unwrap();
    s.set_config("dialer.status_poll_interval", "20s");
    let mut tx = s.db.transaction().unwrap();
    tx.execute("SELECT dialer.schedule_call('+15551126001')", &[]).unwrap();
    tx.execute("SELECT dialer.schedule_call('+15551126002')", &[]).unwrap();
    tx.commit().unwrap();
    let first = wait_for("the first POST", Duration::from_secs(10), || posts_to(&s.sim, "+15551126001").into_iter().next());
    let second = wait_for("the second POST", Duration::from_secs(25), || posts_to(&s.sim, "+15551126002").into_iter().next());
    let apart_s = (second.received_at_us - first.received_at_us) as f64 / 1e6;
    assert!(apart_s >= 2.9, "the second call went {apart_s:.3} s after the first, closer than the queue's pacing");
    assert!(apart_s < 8.0, "the second call went {apart_s:.3} s after the first: the worker did not learn its slot");
}

#[test]
fn bulk_is_all_or_nothing_and_dedupe_keys_schedule_once() {
    let mut s = Scenario::new("q-bulk", Scenario::sim_config(200, 300), &["dialer.enabled = off"]);
    let err =
        s.db.query_one(
            r#"SELECT dialer.schedule_bulk_calls('[{"to":"+15551130001"},{"to":"+15551130002","priority":"high"},{"to":"12345"}]')"#,
            &[],
        )
        .unwrap_err();
    let e = err.as_db_error().unwrap();
    assert!(e.message().contains("calls[2].to"), "{}", e.message());
    assert_eq!(e.code().code(), "22023");
    let err = s.db.query_one(r#"SELECT dialer.schedule_bulk_calls('[{"to":"+15551130001"}, []]')"#, &[]).unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("calls[1] must be a JSON object"));
    let n: i64 = s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts", &[]).unwrap().get(0);
    assert_eq!(n, 0, "nothing written");

    let ids: Vec<i64> =
        s.db.query_one(
            r#"SELECT dialer.schedule_bulk_calls('[{"to":"+15551130001","message":"Emergency alert","priority":"high"},
                                                  {"to":"+15551130002","delay":"1 hour"},
                                                  {"to":"+15551130003","lead_id":"124"}]')"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ids.len(), 3);
    assert_eq!(s.job_state(ids[1]), "delayed");

    let a: i64 = s.db.query_one("SELECT dialer.schedule_call('+15551130009', dedupe_key => 'lead-9-followup')", &[]).unwrap().get(0);
    let b: i64 = s.db.query_one("SELECT dialer.schedule_call('+15551130009', dedupe_key => 'lead-9-followup')", &[]).unwrap().get(0);
    assert_eq!(a, b, "same dedupe key, same job");
    let n: i64 = s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE phone_number = '+15551130009'", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    let stats: Value = s.db.query_one("SELECT dialer.queue_stats()", &[]).unwrap().get(0);
    assert_eq!(
        stats,
        json!({"waiting": 3, "active": 0, "completed": 0, "failed": 0, "delayed": 1, "paused": 0, "cancelled": 0, "expired": 0, "total": 4})
    );
}

#[test]
fn priorities_order_dialing_and_pause_holds_everything() {
    let mut s = Scenario::new("q-priority", Scenario::sim_config(100, 200), &[]);
    let agency = s.agency_id;
    s.db.execute("SELECT dialer.set_queue_options($1, calls_per_minute => 600, max_concurrent => 10)", &[&agency]).unwrap();
    s.db.execute("SELECT dialer.pause_queue()", &[]).unwrap();
    let mut jobs = Vec::new();
    for (n, p) in [
        ("+15551140001", "low"),
        ("+15551140002", "normal"),
        ("+15551140003", "high"),
        ("+15551140004", "normal"),
        ("+15551140005", "high"),
    ] {
        let id: i64 = s.db.query_one("SELECT dialer.schedule_call($1, priority => $2)", &[&n, &p]).unwrap().get(0);
        jobs.push(id);
    }
    // A job scheduled after the pause proves the worker was awake and still posted nothing.
    assert_eq!(s.job_state(jobs[0]), "paused");
    let stats: Value = s.db.query_one("SELECT dialer.queue_stats()", &[]).unwrap().get(0);
    assert_eq!(stats["paused"], 5);
    let listed: Vec<Value> = s.db.query("SELECT dialer.list_jobs('paused', 0, 1)", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(listed.len(), 2, "end is inclusive");
    assert_eq!(listed[0]["data"]["to"], "+15551140003");
    // Another agency's queue is not paused... here there is one agency; wake the worker to prove it idles.
    s.wake();
    std::thread::sleep(Duration::from_millis(300)); // a negative: nothing may happen
    assert!(call_posts(&s.sim).is_empty(), "posted while paused");

    s.db.execute("SELECT dialer.resume_queue()", &[]).unwrap();
    wait_for("all five", Duration::from_secs(20), || (call_posts(&s.sim).len() == 5).then_some(()));
    let order: Vec<String> = call_posts(&s.sim).iter().map(|p| p.to.clone().unwrap_or_default()).collect();
    assert_eq!(order, vec!["+15551140003", "+15551140005", "+15551140002", "+15551140004", "+15551140001"]);
}

#[test]
fn cancel_retry_clean_and_states_through_a_jobs_life() {
    let mut s = Scenario::new("q-life", Scenario::sim_config(3000, 3500), &[]);
    fast_queue(&mut s);
    s.sim.set_rules(vec![Rule::new("+15551150002").status(500).message("carrier unavailable").times(3)]);

    // cancel: a delayed job can be, an active one cannot.
    let later: i64 = s.db.query_one("SELECT dialer.schedule_call('+15551150001', delay => '1 hour')", &[]).unwrap().get(0);
    assert!(s.db.query_one("SELECT dialer.cancel_job($1)", &[&later]).unwrap().get::<_, bool>(0));
    assert_eq!(s.job_state(later), "cancelled");
    let live: i64 = s.db.query_one("SELECT dialer.schedule_call('+15551150003')", &[]).unwrap().get(0);
    s.wait_job_state(live, "active", Duration::from_secs(10));
    assert!(!s.db.query_one("SELECT dialer.cancel_job($1)", &[&live]).unwrap().get::<_, bool>(0));

    // retry: three 500s exhaust the attempts (backoff 300 ms, 600 ms), retry_job starts again.
    let failing: i64 = s.db.query_one("SELECT dialer.schedule_call('+15551150002')", &[]).unwrap().get(0);
    let failed = s.wait_job_state(failing, "failed", Duration::from_secs(20));
    assert_eq!(failed["attemptsMade"], 3);
    assert!(failed["failedReason"].as_str().unwrap_or("").contains("carrier unavailable"), "{failed}");
    let posts = posts_to(&s.sim, "+15551150002");
    assert_eq!(posts.len(), 3);
    let gap1 = posts[1].received_at_us - posts[0].received_at_us;
    let gap2 = posts[2].received_at_us - posts[1].received_at_us;
    assert!(gap1 >= 290_000 && gap2 >= 590_000, "exponential backoff: {gap1} then {gap2} µs");
    let failed_list: Vec<Value> = s.db.query("SELECT dialer.list_jobs('failed')", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(failed_list.len(), 1);
    assert!(s.db.query_one("SELECT dialer.retry_job($1)", &[&failing]).unwrap().get::<_, bool>(0));
    assert!(!s.db.query_one("SELECT dialer.retry_job($1)", &[&live]).unwrap().get::<_, bool>(0), "only failed jobs");
    s.wait_job_state(failing, "completed", Duration::from_secs(20));
    s.wait_job_state(live, "completed", Duration::from_secs(20));

    let stats: Value = s.db.query_one("SELECT dialer.queue_stats()", &[]).unwrap().get(0);
    assert_eq!(
        stats,
        json!({"waiting": 0, "active": 0, "completed": 2, "failed": 0, "delayed": 0, "paused": 0, "cancelled": 1, "expired": 0, "total": 3})
    );
    let cleaned: i32 = s.db.query_one("SELECT dialer.clean_jobs('0 seconds', 1000, 'completed')", &[]).unwrap().get(0);
    assert_eq!(cleaned, 2);
    let left: i64 = s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts", &[]).unwrap().get(0);
    assert_eq!(left, 1, "only the cancelled job is left");
    let err = s.db.query_one("SELECT dialer.job_status($1)", &[&live]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "P0002");
}

#[test]
fn cancelling_a_job_while_the_worker_holds_its_queue_waits_and_never_deadlocks() {
    // The worker's claim holds the queue's row and then counts its new jobs; cancel_job counts
    // them too. Both must take the queue's row before the arrivals (they once deadlocked).
    let mut s = Scenario::new("q-lock-order", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    fast_queue(&mut s);
    let first: i64 = s.db.query_one("SELECT dialer.schedule_call('+15551170001', delay => '1 hour')", &[]).unwrap().get(0);
    s.db.query_one("SELECT dialer.schedule_call('+15551170002', delay => '1 hour')", &[]).unwrap();
    let queue: i64 = s.db.query_one("SELECT batch_id FROM dialer.campaign_contacts WHERE id = $1", &[&first]).unwrap().get(0);

    let mut worker_like = s.cluster.connect();
    let mut tx = worker_like.transaction().unwrap();
    tx.execute("SET LOCAL lock_timeout = '10s'", &[]).unwrap();
    tx.execute("SELECT 1 FROM dialer.call_batches WHERE id = $1 FOR NO KEY UPDATE", &[&queue]).unwrap();
    let mut tenant = s.cluster.connect();
    let pid: i32 = tenant.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let cancel = std::thread::spawn(move || tenant.query_one("SELECT dialer.cancel_job($1)", &[&first]).map(|r| r.get::<_, bool>(0)));
    wait_for("cancel_job to wait for the queue's row", Duration::from_secs(10), || {
        let waiting: Option<String> =
            s.db.query_one("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", &[&pid]).unwrap().get(0);
        (waiting.as_deref() == Some("Lock")).then_some(())
    });
    let counted: i32 = tx.query_one("SELECT dialer._count_arrivals($1)", &[&queue]).unwrap().get(0);
    assert_eq!(counted, 2, "the arrivals were free to count: cancel_job had not taken them");
    tx.commit().unwrap();
    assert!(cancel.join().unwrap().unwrap(), "cancel_job went on once the queue was free");
    let r = s.db.query_one("SELECT total_contacts, queued_count FROM dialer.call_batches WHERE id = $1", &[&queue]).unwrap();
    assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (2, 1));
    assert_eq!(s.job_state(first), "cancelled");
}

#[test]
fn recurring_calls_follow_new_york_across_dst_and_catch_up_once() {
    let mut s = Scenario::new("q-recurring", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    fast_queue(&mut s);
    let id: i64 =
        s.db.query_one(
            "SELECT dialer.schedule_recurring_call('+15551160001', '0 9 * * *', 'America/New_York', message => 'Daily reminder')",
            &[],
        )
        .unwrap()
        .get(0);
    // Walk the schedule through the 2026-03-08 spring-forward by promoting at chosen instants.
    s.db.execute("UPDATE dialer.recurring_calls SET next_run_at = '2026-03-07 14:00:00+00' WHERE id = $1", &[&id]).unwrap();
    let mut seen = Vec::new();
    for now in ["2026-03-07 14:00:05+00", "2026-03-08 13:00:05+00", "2026-03-09 13:00:05+00"] {
        let n: i32 = s.db.query_one("SELECT dialer._promote_recurring($1::text::timestamptz)", &[&now]).unwrap().get(0);
        assert_eq!(n, 1, "one job at {now}");
        let next: String =
            s.db.query_one(
                "SELECT to_char(next_run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM dialer.recurring_calls WHERE id = $1",
                &[&id],
            )
            .unwrap()
            .get(0);
        seen.push(next);
    }
    assert_eq!(seen, vec!["2026-03-08 13:00", "2026-03-09 13:00", "2026-03-10 13:00"], "09:00 New York: 14:00Z in EST, 13:00Z in EDT");
    let n: i32 = s.db.query_one("SELECT dialer._promote_recurring('2026-03-09 13:00:06+00')", &[]).unwrap().get(0);
    assert_eq!(n, 0, "an occurrence is promoted exactly once");
    assert!(s.db.query_one("SELECT dialer.cancel_recurring_call($1)", &[&id]).unwrap().get::<_, bool>(0));

    // A worker that was stopped past several occurrences makes one catch-up job, not a burst.
    let every_minute: i64 = s.db.query_one("SELECT dialer.schedule_recurring_call('+15551160002', '* * * * *')", &[]).unwrap().get(0);
    s.db.execute("UPDATE dialer.recurring_calls SET next_run_at = now() - interval '5 minutes' WHERE id = $1", &[&every_minute]).unwrap();
    s.set_config("dialer.enabled", "on");
    wait_for("the catch-up call", Duration::from_secs(15), || posts_to(&s.sim, "+15551160002").into_iter().next());
    let row = s
        .db
        .query_one("SELECT next_run_at > now(), (SELECT count(*) FROM dialer.campaign_contacts WHERE recurring_call_id = $1) FROM dialer.recurring_calls WHERE id = $1", &[&every_minute])
        .unwrap();
    let (future, jobs): (bool, i64) = (row.get(0), row.get(1));
    assert!(future, "next occurrence is in the future");
    assert_eq!(jobs, 1, "one catch-up job for five missed occurrences");
}

#[test]
fn bad_queue_input_is_refused_and_writes_nothing() {
    let mut s = Scenario::new("q-bad", Scenario::sim_config(100, 200), &["dialer.enabled = off"]);
    let cases = [
        ("SELECT dialer.schedule_recurring_call('+15551170001', '0 9 * *')", "22023", "fields"),
        ("SELECT dialer.schedule_recurring_call('+15551170001', '61 * * * *')", "22023", "invalid cron"),
        ("SELECT dialer.schedule_recurring_call('+15551170001', '0 9 * * *', 'Mars/Olympus')", "22023", "unknown time zone"),
        ("SELECT dialer.schedule_call('+15551170001', delay => '-5 seconds')", "22023", "delay must not be negative"),
        ("SELECT dialer.schedule_call('+15551170001', run_at => now() + interval '1 hour', delay => '5 seconds')", "22023", "not both"),
        ("SELECT dialer.schedule_call('+15551170001', priority => 'urgent')", "22023", "unknown priority"),
        ("SELECT dialer.schedule_call('5551170001')", "22023", "E.164"),
        (
            r#"SELECT dialer.schedule_bulk_calls('[{"to":"+15551170001"},{"to":"+15551170002","priority":"asap"}]')"#,
            "22023",
            "calls[1].priority",
        ),
        (r#"SELECT dialer.schedule_bulk_calls('[{"to":"+15551170001","delay":"soon"}]')"#, "22023", "calls[0]"),
        (r#"SELECT dialer.schedule_bulk_calls('[{"to":"+15551170001","colour":"red"}]')"#, "22P02", "unknown field"),
        ("SELECT dialer.job_status(424242)", "P0002", "job 424242 does not exist"),
        ("SELECT dialer.list_jobs('sleeping')", "22023", "unknown job state"),
    ];
    for (sql, code, text) in cases {
        let err = s.db.batch_execute(sql).expect_err(sql);
        let e = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(e.code().code(), code, "{sql}: {}", e.message());
        assert!(e.message().contains(text), "{sql}: {}", e.message());
    }
    let jobs: i64 = s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts", &[]).unwrap().get(0);
    let recurring: i64 = s.db.query_one("SELECT count(*) FROM dialer.recurring_calls", &[]).unwrap().get(0);
    assert_eq!((jobs, recurring), (0, 0));
}
