//! A team's own leads table, attached in place (dialer.attach_leads): the lead-posting seed's
//! table and statuses, on a real cluster with the worker dialing the strict simulator.

use pg_dialer_integration::provider_sim::Rule;
use pg_dialer_integration::{posts_to, wait_for, Scenario};
use postgres::Client;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The seed's ExternalLead, its fields in snake_case.
const SEED_TABLE: &str = "
    CREATE TABLE public.leads (
        lead_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name                text,
        phone               text NOT NULL,
        status              text NOT NULL DEFAULT 'New',
        ai_call_status      text,
        ai_call_id          text,
        posted_to_ai_date   timestamp,
        ai_post_retry_count integer NOT NULL DEFAULT 0,
        ai_failure_reason   text,
        last_ai_attempt     timestamp,
        staff_id            bigint,
        assigned_date       timestamp,
        call_source_id      text,
        ai_provider_type    text
    )";

fn number(i: usize) -> String {
    format!("+1555741{i:04}")
}

fn insert_leads(db: &mut Client, rows: &[(String, &str, &str)]) {
    let mut tx = db.transaction().unwrap();
    for (phone, status, source) in rows {
        tx.execute("INSERT INTO leads (name, phone, status, call_source_id) VALUES ('Lead', $1, $2, $3)", &[phone, status, source])
            .unwrap();
    }
    tx.commit().unwrap();
}

fn statuses(db: &mut Client) -> HashMap<String, String> {
    db.query("SELECT phone, status FROM leads", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[test]
fn the_seeds_leads_table_moves_through_the_seeds_statuses() {
    let mut s = Scenario::new("a-seed", Scenario::sim_config(300, 600), &[]);
    let (agency, mapping) = (s.agency_id, s.mapping_id);
    s.db.batch_execute(SEED_TABLE).unwrap();
    // One telecaller works the 'web' source; nobody works 'expo'.
    let tc: i64 = s.db.query_one("SELECT dialer.add_telecaller($1, 'Priya', 'web')", &[&agency]).unwrap().get(0);
    let att: i64 =
        s.db.query_one(
            "SELECT dialer.attach_leads('leads', $1, $2, $3)",
            &[&agency, &mapping, &json!({"calls_per_minute": 6000, "max_concurrent": 40, "max_attempts": 2, "retry_delay": "1 second"})],
        )
        .unwrap()
        .get(0);
    let batch: i64 = s.db.query_one("SELECT batch_id FROM dialer.lead_attachments WHERE id = $1", &[&att]).unwrap().get(0);

    // 200 leads in one transaction: 0-4 are refused by the provider every time, 5-7 never pick
    // up, 8-10 have no usable number; the rest are answered.
    let rules: Vec<Rule> = (0..5)
        .map(|i| Rule::new(&number(i)).status(500).message("agent unavailable"))
        .chain((5..8).map(|i| Rule::new(&number(i)).end_reason("unjoined")))
        .collect();
    s.sim.set_rules(rules);
    s.db.execute("SELECT dialer.pause_batch($1)", &[&batch]).unwrap();
    let mut rows: Vec<(String, &str, &str)> = (0..200)
        .map(|i| {
            (
                if (8..11).contains(&i) { format!("call me {i}") } else { number(i) },
                "Pending_AI_Call",
                if i % 2 == 0 { "web" } else { "expo" },
            )
        })
        .collect();
    // Leads that are withdrawn before they are dialed: deleted, or moved out of pending.
    rows.extend((200..206).map(|i| (number(i), "Pending_AI_Call", "web")));
    let started = Instant::now();
    insert_leads(&mut s.db, &rows);
    let insert_ms = started.elapsed().as_secs_f64() * 1000.0;
    let queued: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE batch_id = $1 AND status = 'queued'", &[&batch])
            .unwrap()
            .get(0);
    assert_eq!(queued, 203, "every pending lead with a number is queued in the inserting transaction");
    // An insert that rolls back dials nobody.
    {
        let mut tx = s.db.transaction().unwrap();
        for i in 300..305 {
            tx.execute("INSERT INTO leads (phone, status) VALUES ($1, 'Pending_AI_Call')", &[&number(i)]).unwrap();
        }
        tx.rollback().unwrap();
    }
    s.db.execute("DELETE FROM leads WHERE phone IN ($1, $2, $3)", &[&number(200), &number(201), &number(202)]).unwrap();
    s.db.execute("UPDATE leads SET status = 'Not Reachable' WHERE phone IN ($1, $2, $3)", &[&number(203), &number(204), &number(205)])
        .unwrap();
    s.db.execute("SELECT dialer.resume_batch($1)", &[&batch]).unwrap();

    let finals = ["Call Progress", "ASSIGNED_MANUAL", "MANUAL_QUEUE_PENDING", "Trashed"];
    let sync_started = Instant::now();
    wait_for("every lead in a final status", Duration::from_secs(120), || {
        let st = statuses(&mut s.db);
        let done = (0..200).filter(|&i| {
            let phone = if (8..11).contains(&i) { format!("call me {i}") } else { number(i) };
            st.get(&phone).is_some_and(|v| finals.contains(&v.as_str()))
        });
        (done.count() == 200).then_some(())
    });
    let sync_s = sync_started.elapsed().as_secs_f64();
    eprintln!(
        "attach: 206 leads inserted in one transaction in {insert_ms:.1} ms; 200 synced to a final status in {sync_s:.1} s ({:.1} leads/s)",
        200.0 / sync_s
    );

    let rows =
        s.db.query(
            "SELECT phone, status, ai_call_status, ai_call_id, posted_to_ai_date IS NOT NULL, ai_post_retry_count,
                    ai_failure_reason, last_ai_attempt IS NOT NULL, staff_id, assigned_date IS NOT NULL, call_source_id
               FROM leads ORDER BY lead_id",
            &[],
        )
        .unwrap();
    let mut seen = 0;
    for r in &rows {
        let phone: String = r.get(0);
        let i: usize = phone.trim_start_matches("call me ").trim_start_matches("+1555741").parse().unwrap();
        let status: String = r.get(1);
        let (call_status, call_id): (Option<String>, Option<String>) = (r.get(2), r.get(3));
        let (posted, retries, reason, last_attempt): (bool, i32, Option<String>, bool) = (r.get(4), r.get(5), r.get(6), r.get(7));
        let (staff, assigned, source): (Option<i64>, bool, String) = (r.get(8), r.get(9), r.get(10));
        let handoff = if source == "web" { "ASSIGNED_MANUAL" } else { "MANUAL_QUEUE_PENDING" };
        if i >= 200 {
            assert_eq!(status, "Not Reachable", "{phone}: moved out of pending by the team, left as it is");
            seen += 1;
            continue;
        }
        match i {
            0..=4 => {
                // Refused twice (max_attempts 2): AI_FAILED, then queued for a telecaller.
                assert_eq!(status, handoff, "{phone}");
                assert_eq!(retries, 2, "{phone}: two failed posts");
                assert!(reason.as_deref().unwrap_or("").contains("500"), "{phone}: {reason:?}");
                assert!(last_attempt, "{phone}");
                assert_eq!(posts_to(&s.sim, &phone).len(), 2, "{phone}");
            }
            5..=7 => {
                // Posted, never joined: the AI failed, the humans take over.
                assert_eq!(status, handoff, "{phone}");
                assert!(posted && call_id.is_some(), "{phone}");
                assert_eq!(posts_to(&s.sim, &phone).len(), 1, "{phone}");
            }
            8..=10 => {
                assert_eq!(status, "Trashed", "{phone}");
                assert!(reason.as_deref().unwrap_or("").contains("E.164"), "{phone}: {reason:?}");
            }
            _ => {
                assert_eq!(status, "Call Progress", "{phone}");
                assert_eq!(call_status.as_deref(), Some("AI_COMPLETED"), "{phone}");
                assert!(posted && retries == 0, "{phone}");
                let provider_id: Option<String> =
                    s.db.query_one("SELECT k.provider_call_id FROM dialer.calls k WHERE k.phone_number = $1", &[&phone]).unwrap().get(0);
                assert_eq!(call_id, provider_id, "{phone}: AICallId is the provider's call id");
                assert_eq!(posts_to(&s.sim, &phone).len(), 1, "{phone}: called once");
            }
        }
        if status == "ASSIGNED_MANUAL" {
            assert_eq!((staff, assigned), (Some(tc), true), "{phone}: StaffId and AssignedDate");
        } else {
            assert_eq!(staff, None, "{phone}");
        }
        seen += 1;
    }
    assert_eq!(seen, 203, "200, and the three moved out of pending");
    for i in (200..206).chain(300..305) {
        assert!(posts_to(&s.sim, &number(i)).is_empty(), "{}: withdrawn or rolled back, never dialed", number(i));
    }

    // The application's verdicts route the lead as the seed does.
    for (i, disposition, expected) in
        [(20, "success", "SV Fixed"), (22, "not_interested", "ASSIGNED_MANUAL"), (23, "invalid_number", "Trashed")]
    {
        let call: i64 = s.db.query_one("SELECT id FROM dialer.calls WHERE phone_number = $1", &[&number(i)]).unwrap().get(0);
        s.db.execute("SELECT dialer.set_disposition($1, $2)", &[&call, &disposition]).unwrap();
        let expected = if i % 2 == 1 && expected == "ASSIGNED_MANUAL" { "MANUAL_QUEUE_PENDING" } else { expected };
        // Written back by the table owner's writer session, moments after the verdict commits.
        let db = &mut s.db;
        wait_for(&format!("{disposition}: written back"), Duration::from_secs(10), || {
            let st: String = db.query_one("SELECT status FROM leads WHERE phone = $1", &[&number(i)]).ok()?.get(0);
            (st == expected).then_some(())
        });
    }

    // Pending again later (a lead the team wants called once more): a new call.
    s.db.execute("UPDATE leads SET status = 'Pending_AI_Call' WHERE phone = $1", &[&number(30)]).unwrap();
    wait_for("the re-pended lead called again", Duration::from_secs(30), || (posts_to(&s.sim, &number(30)).len() == 2).then_some(()));

    // Detached: the trigger and writer are gone, new pending rows are the table's own business.
    assert_eq!(s.db.query_one("SELECT dialer.detach_leads($1)", &[&att]).unwrap().get::<_, bool>(0), true);
    s.db.execute("INSERT INTO leads (phone, status) VALUES ($1, 'Pending_AI_Call')", &[&number(400)]).unwrap();
    let triggers: i64 =
        s.db.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'leads'::regclass AND NOT tgisinternal", &[]).unwrap().get(0);
    assert_eq!(triggers, 0);
    let contacts: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE phone_number = $1", &[&number(400)]).unwrap().get(0);
    assert_eq!(contacts, 0);
}

#[test]
fn bad_options_are_refused_naming_the_problem_and_tenants_need_the_owners_rights() {
    let mut s = Scenario::new("a-options", Scenario::sim_config(300, 600), &[]);
    let (agency, mapping) = (s.agency_id, s.mapping_id);
    s.db.batch_execute(SEED_TABLE).unwrap();
    s.db.batch_execute("CREATE TABLE nokey (phone text, status text); CREATE TABLE typed (id int PRIMARY KEY, phone text, status integer)")
        .unwrap();
    let attach = |db: &mut Client, table: &str, options: serde_json::Value| {
        db.query_one("SELECT dialer.attach_leads($1::text::regclass, $2, $3, $4)", &[&table, &agency, &mapping, &options])
            .map(|r| r.get::<_, i64>(0))
    };
    for (table, options, code, words) in [
        ("leads", json!({"columns": {"phone": "mobile"}}), "42703", "has no column mobile"),
        ("leads", json!({"columns": {"telephone": "phone"}}), "22023", "unknown field 'telephone'"),
        ("leads", json!({"colour": "blue"}), "22023", "unknown option 'colour'"),
        ("leads", json!({"statuses": {"pending": 7}}), "22023", "options.statuses.pending"),
        ("leads", json!({"calls_per_minute": 0}), "22023", "calls_per_minute must be a positive integer"),
        ("nokey", json!({}), "42P16", "has no primary key"),
        ("typed", json!({}), "42804", "is of type integer, not text"),
    ] {
        let e = attach(&mut s.db, table, options.clone()).expect_err(&format!("{options}"));
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), code, "{options}: {}", db.message());
        assert!(db.message().contains(words), "{options}: {}", db.message());
    }
    let n: i64 = s.db.query_one("SELECT count(*) FROM dialer.lead_attachments", &[]).unwrap().get(0);
    assert_eq!(n, 0, "nothing written");

    // A tenant of the agency who does not own the table cannot attach it, nor queue into
    // someone else's attachment, nor wire the dialer's trigger to a table of its own.
    s.db.batch_execute(&format!(
        "CREATE ROLE mallory LOGIN; GRANT dialer_user TO mallory; INSERT INTO dialer.agency_members VALUES ({agency}, 'mallory');
         CREATE TABLE mine (id int PRIMARY KEY, phone text, status text); ALTER TABLE mine OWNER TO mallory;
         GRANT INSERT, SELECT ON leads TO mallory"
    ))
    .unwrap();
    let att = attach(&mut s.db, "leads", json!({})).unwrap();
    let mut m = s.cluster.connect();
    m.batch_execute("SET ROLE mallory").unwrap();
    let e = m.query_one("SELECT dialer.attach_leads('leads', $1, $2)", &[&agency, &mapping]).unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501", "{e}");
    let e = m
        .query_one(
            "SELECT dialer._attach_queue($1, $2)",
            &[&att, &json!({"lead_id": 9, "phone": "+15557419999", "status": "Pending_AI_Call"})],
        )
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501", "{e}");
    // The leads trigger's arguments copied onto a table of hers: the attachment is for another table.
    m.batch_execute(&format!(
        "CREATE TRIGGER t AFTER INSERT ON mine FOR EACH ROW EXECUTE FUNCTION dialer._lead_changed('{att}', 'id', 'status', 'phone', '', '', '', '')"
    ))
    .unwrap();
    let e = m.execute("INSERT INTO mine VALUES (1, '+15557419998', 'Pending_AI_Call')", &[]).unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501", "{e}");
    // Inserting a lead into the attached table (what the app does) is all a writer needs.
    m.execute("INSERT INTO leads (phone, status) VALUES ('+15557419997', 'Pending_AI_Call')", &[]).unwrap();
    let queued: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE lead_attachment_id = $1", &[&att]).unwrap().get(0);
    assert_eq!(queued, 1);
    let numbers: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE phone_number IN ('+15557419999', '+15557419998')", &[])
            .unwrap()
            .get(0);
    assert_eq!(numbers, 0);
    // An application's SECURITY DEFINER function, the table owner's, inserts for a role that may
    // not (a Supabase RPC): the trigger runs as the function's owner, who may change the table.
    s.db.batch_execute(
        "CREATE ROLE visitor LOGIN;
         CREATE FUNCTION submit_lead(p text) RETURNS void LANGUAGE sql SECURITY DEFINER
             AS $$ INSERT INTO public.leads (phone, status) VALUES (p, 'Pending_AI_Call') $$;
         REVOKE EXECUTE ON FUNCTION submit_lead(text) FROM PUBLIC; GRANT EXECUTE ON FUNCTION submit_lead(text) TO visitor;",
    )
    .unwrap();
    let mut v = s.cluster.connect();
    v.batch_execute("SET ROLE visitor").unwrap();
    assert!(
        v.execute("INSERT INTO leads (phone, status) VALUES ('+15557419995', 'Pending_AI_Call')", &[]).is_err(),
        "visitor may not insert"
    );
    v.execute("SELECT submit_lead('+15557419996')", &[]).unwrap();
    let queued: i64 =
        s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts WHERE phone_number = '+15557419996'", &[]).unwrap().get(0);
    assert_eq!(queued, 1, "queued through the application's function");
}

/// Trigger overhead per insert, against the same table without the trigger (printed, not asserted).
#[test]
fn trigger_overhead_per_insert() {
    let mut s = Scenario::new("a-overhead", Scenario::sim_config(300, 600), &["dialer.enabled = off"]);
    let (agency, mapping) = (s.agency_id, s.mapping_id);
    s.db.batch_execute(SEED_TABLE).unwrap();
    s.db.batch_execute("CREATE TABLE plain (LIKE leads INCLUDING ALL)").unwrap();
    s.db.query_one("SELECT dialer.attach_leads('leads', $1, $2)", &[&agency, &mapping]).unwrap();
    let n: i32 = std::env::var("ATTACH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let time = |db: &mut Client, table: &str, status: &str| {
        let started = Instant::now();
        db.execute(
            &format!(
                "INSERT INTO {table} (phone, status) SELECT '+1555742' || lpad(g::text, 4, '0'), $1 FROM generate_series(1, $2::int) g"
            ),
            &[&status, &n],
        )
        .unwrap();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        db.execute(&format!("TRUNCATE {table}"), &[]).unwrap();
        ms
    };
    for round in 0..2 {
        let plain = time(&mut s.db, "plain", "Pending_AI_Call");
        let other = time(&mut s.db, "leads", "New");
        s.db.execute("DELETE FROM dialer.campaign_contacts", &[]).unwrap();
        let pending = time(&mut s.db, "leads", "Pending_AI_Call");
        s.db.execute("DELETE FROM dialer.campaign_contacts", &[]).unwrap();
        eprintln!(
            "attach overhead (round {round}, {n} rows): no trigger {:.1} µs/row; trigger, not pending {:.1} µs/row; trigger, pending (queued) {:.1} µs/row",
            plain * 1000.0 / n as f64,
            other * 1000.0 / n as f64,
            pending * 1000.0 / n as f64
        );
    }
}

/// The seed posts 10 leads every 30 s whatever is still on the phone. With calls of 10 minutes
/// the attachment's defaults must not stall it at a concurrency cap: 20 leads are all posted
/// within the seed's two cycles (60 s), and more than 10 calls are up at once.
#[test]
fn default_pacing_posts_the_seeds_twenty_leads_in_two_cycles_with_ten_minute_calls() {
    let mut s = Scenario::new("a-throughput", Scenario::sim_config(600_000, 600_000), &[]);
    let (agency, mapping) = (s.agency_id, s.mapping_id);
    s.db.batch_execute(SEED_TABLE).unwrap();
    let att: i64 = s.db.query_one("SELECT dialer.attach_leads('leads', $1, $2)", &[&agency, &mapping]).unwrap().get(0);
    let (cpm, max_concurrent): (i32, i32) = s
        .db
        .query_one("SELECT b.calls_per_minute, b.max_concurrent FROM dialer.lead_attachments la JOIN dialer.call_batches b ON b.id = la.batch_id WHERE la.id = $1", &[&att])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(cpm, 20, "the seed's 10 leads per 30 s");
    assert!(max_concurrent >= 200, "10-minute calls at 20 a minute need 200 at once; the default is {max_concurrent}");
    let rows: Vec<(String, &str, &str)> = (0..20).map(|i| (format!("+1555742{i:04}"), "Pending_AI_Call", "web")).collect();
    let started = Instant::now();
    insert_leads(&mut s.db, &rows);
    let posted = wait_for("all 20 leads posted", Duration::from_secs(75), || {
        let ok: Vec<_> = rows.iter().filter(|(n, _, _)| posts_to(&s.sim, n).iter().any(|p| p.status == Some(201))).collect();
        (ok.len() == 20).then_some(started.elapsed())
    });
    assert!(posted <= Duration::from_secs(62), "20 leads posted in {posted:?}: more than the seed's two 30 s cycles");
    let active = s.sim.stats().max_active_calls;
    assert!(active > 10, "the calls overlapped: at most {active} were up at once");
    eprintln!("attach throughput: 20 leads posted in {posted:?}, {active} calls up at once");
    wait_for("every lead Processing (its call still talking)", Duration::from_secs(20), || {
        let st = statuses(&mut s.db);
        rows.iter().all(|(n, _, _)| st.get(n).map(String::as_str) == Some("Processing")).then_some(())
    });
}
