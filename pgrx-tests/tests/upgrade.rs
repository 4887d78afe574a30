//! ALTER EXTENSION pg_dialer UPDATE from the previous release (0.2.0, its install script kept in
//! sql/upgrade/): the worker waits while the SQL is older than the library, the update keeps the
//! data and dialing resumes (with requests the strict simulator accepts), a mapping the previous
//! release let through is refused before use, and the upgraded catalog is the same as a fresh
//! install's. Keys stored in the clear by 0.2.0 are encrypted by the update.

use pg_dialer_integration::{numbers, wait_for, Scenario};
use postgres::Client;
use std::collections::BTreeSet;
use std::time::Duration;

const PREVIOUS: &str = "0.2.0";

/// Everything the extension defines in schema dialer, one line per object, in a form that does
/// not depend on the order objects were created in (column numbers, OIDs, the order of grants).
fn catalog(db: &mut Client) -> BTreeSet<String> {
    let sql = r#"
        SELECT 'function ' || p.oid::regprocedure::text || ' acl=' || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(p.proacl) x), '-')
               || ' definer=' || p.prosecdef || E'\n' || pg_get_functiondef(p.oid)
          FROM pg_proc p WHERE p.pronamespace = 'dialer'::regnamespace
        UNION ALL
        SELECT 'relation ' || c.relname || ' kind=' || c.relkind::text || ' acl=' || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(c.relacl) x), '-')
               || ' rls=' || c.relrowsecurity || ' options=' || coalesce(c.reloptions::text, '-')
          FROM pg_class c WHERE c.relnamespace = 'dialer'::regnamespace
        UNION ALL
        SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || ' notnull=' || a.attnotnull || ' identity=' || a.attidentity::text
               || ' statistics=' || coalesce(a.attstattarget::text, '-')
               || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') || ' acl=' || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) x), '-')
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'dialer'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'index ' || pg_get_indexdef(i.indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'dialer'::regnamespace
        UNION ALL
        SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'dialer'::regnamespace
        UNION ALL
        SELECT 'view ' || c.relname || E'\n' || pg_get_viewdef(c.oid)
          FROM pg_class c WHERE c.relnamespace = 'dialer'::regnamespace AND c.relkind IN ('v', 'm')
        UNION ALL
        SELECT 'policy ' || tablename || '.' || policyname || ' ' || cmd || ' ' || roles::text || ' '
               || coalesce(qual, '-') || ' ' || coalesce(with_check, '-')
          FROM pg_policies WHERE schemaname = 'dialer'
        UNION ALL
        SELECT 'trigger ' || pg_get_triggerdef(t.oid)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'dialer'::regnamespace AND NOT t.tgisinternal
        UNION ALL
        SELECT 'dumped ' || unnest(extconfig)::regclass::text FROM pg_extension WHERE extname = 'pg_dialer'
        UNION ALL
        SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
          FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
         WHERE e.extname = 'pg_dialer' AND d.deptype = 'e'
    "#;
    db.query(sql, &[]).expect("read the catalog").into_iter().map(|r| r.get::<_, String>(0)).collect()
}

#[test]
fn alter_extension_update_from_the_previous_release_keeps_data_and_matches_a_fresh_install() {
    let create_old = format!("CREATE EXTENSION pg_dialer VERSION '{PREVIOUS}'");
    let mut s = Scenario::with_extension("upgrade", Scenario::sim_config(100, 200), &[], &create_old);
    let version: String = s.db.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_dialer'", &[]).unwrap().get(0);
    assert_eq!(version, PREVIOUS);

    // Data written through the previous release's API.
    let batch = s.batch("before the upgrade", 600, 10, 3);
    // 0.2.0 took an Ultravox mapping with no from number (it then sent a request Ultravox refuses).
    let no_from: i64 =
        s.db.query_one(
            "SELECT dialer.create_agent_mapping($1, 'ultravox', $2, 'No caller ID')",
            &[&s.agency_id, &pg_dialer_integration::AGENT_ID],
        )
        .unwrap()
        .get(0);
    let nums = numbers("+1555030", 20);
    assert_eq!(s.add_numbers(batch, &nums), 20);
    s.wake();

    // A library newer than the SQL: the worker says what to do and dials nobody.
    wait_for("the worker to ask for ALTER EXTENSION pg_dialer UPDATE", Duration::from_secs(30), || {
        s.cluster.server_log().contains("ALTER EXTENSION pg_dialer UPDATE").then_some(())
    });
    assert_eq!(s.sim.requests().len(), 0, "nothing is dialed while the SQL is older than the library");

    s.db.batch_execute("ALTER EXTENSION pg_dialer UPDATE").expect("ALTER EXTENSION pg_dialer UPDATE");
    let version: String = s.db.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_dialer'", &[]).unwrap().get(0);
    assert_ne!(version, PREVIOUS, "updated to the library's version");

    let carrier: Option<String> =
        s.db.query_one("SELECT carrier FROM dialer.agent_mappings WHERE id = $1", &[&s.mapping_id]).unwrap().get(0);
    assert_eq!(carrier.as_deref(), Some("telnyx"), "existing Ultravox mappings keep dialing through Telnyx");
    let key: String =
        s.db.query_one("SELECT api_key FROM dialer.provider_credentials WHERE agency_id = $1", &[&s.agency_id]).unwrap().get(0);
    assert!(key.starts_with("pgd1:") && !key.contains(pg_dialer_integration::API_KEY), "the stored key is encrypted by the update");
    let refused =
        s.db.query_one("SELECT dialer.create_batch($1, $2, 'no caller id')", &[&s.agency_id, &no_from])
            .expect_err("a mapping without a from number cannot be used after the upgrade");
    assert!(refused.as_db_error().map(|e| e.message().contains("need a from_number")).unwrap_or(false), "{refused}");

    // 0.2.0 handed voicemail to the telecallers (it had no voicemail retry delay): still so.
    let policy: String = s.db.query_one("SELECT on_voicemail FROM dialer.call_batches WHERE id = $1", &[&batch]).unwrap().get(0);
    assert_eq!(policy, "handoff");

    // The batch made before the update is dialed after it, each number once.
    s.wait_batch_completed(batch, Duration::from_secs(60));
    let from: Vec<Option<String>> =
        s.db.query("SELECT DISTINCT from_number FROM dialer.calls", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(from, vec![Some(pg_dialer_integration::FROM_NUMBER.to_string())], "each call names its caller ID");
    // This release's features work on an upgraded database: a leads table attached in place.
    s.db.batch_execute("CREATE TABLE leads (id int PRIMARY KEY, phone text, status text)").unwrap();
    s.db.query_one("SELECT dialer.attach_leads('leads', $1, $2)", &[&s.agency_id, &s.mapping_id]).unwrap();
    s.db.execute("INSERT INTO leads VALUES (1, '+15550319999', 'Pending_AI_Call')", &[]).unwrap();
    wait_for("the attached lead to be posted", Duration::from_secs(30), || {
        let st: String = s.db.query_one("SELECT status FROM leads WHERE id = 1", &[]).unwrap().get(0);
        (st != "Pending_AI_Call").then_some(())
    });
    // (its writer function is the table owner's, not the extension's: gone with the attachment)
    s.db.execute("SELECT dialer.detach_leads(id) FROM dialer.lead_attachments", &[]).unwrap();
    let posts = pg_dialer_integration::call_posts(&s.sim);
    let mut dialed: Vec<String> = posts.iter().filter_map(|p| p.to.clone()).collect();
    dialed.sort();
    let mut expected = nums.clone();
    expected.push("+15550319999".to_string()); // the attached lead
    expected.sort();
    assert_eq!(dialed, expected, "every contact added before the update dialed exactly once after it");
    let agent_path = format!("/api/agents/{}/calls", pg_dialer_integration::AGENT_ID);
    assert!(posts.iter().all(|p| p.path == agent_path && p.status == Some(201)), "agent calls, accepted by the strict simulator");

    // The upgraded catalog is what a fresh install of this version creates.
    s.db.batch_execute("CREATE DATABASE fresh_install").unwrap();
    let mut fresh = s.cluster.connect_to("fresh_install");
    fresh.batch_execute("CREATE EXTENSION pg_dialer").unwrap();
    let fresh_version: String = fresh.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_dialer'", &[]).unwrap().get(0);
    assert_eq!(fresh_version, version);
    let upgraded = catalog(&mut s.db);
    let installed = catalog(&mut fresh);
    let only_upgraded: Vec<&String> = upgraded.difference(&installed).collect();
    let only_fresh: Vec<&String> = installed.difference(&upgraded).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "the upgrade script does not produce a fresh install's catalog\n--- only after the upgrade:\n{}\n--- only in a fresh install:\n{}",
        only_upgraded.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
    );
    assert!(upgraded.len() > 300, "the comparison covers the whole extension ({} objects)", upgraded.len());
}

/// 0.3.0 → this release with a leads table attached: the attachment's trigger and writer are made
/// again (the trigger now reads rows with its changer's rights, the writer runs in the owner's
/// session), a lead queued before the update is dialed and written back after it, and the worker
/// runs as dialer_worker.
#[test]
fn an_attachment_made_by_0_3_0_keeps_working_after_the_update() {
    let mut s = Scenario::with_extension("upgrade-030", Scenario::sim_config(100, 200), &[], "CREATE EXTENSION pg_dialer VERSION '0.3.0'");
    s.db.batch_execute("CREATE TABLE leads (id int PRIMARY KEY, phone text, status text, ai_call_id text)").unwrap();
    s.db.query_one("SELECT dialer.attach_leads('leads', $1, $2)", &[&s.agency_id, &s.mapping_id]).unwrap();
    s.db.execute("INSERT INTO leads VALUES (1, '+15550329001', 'Pending_AI_Call')", &[]).unwrap();
    let old_args: i16 =
        s.db.query_one("SELECT tgnargs FROM pg_trigger WHERE tgrelid = 'leads'::regclass AND NOT tgisinternal", &[]).unwrap().get(0);
    assert_eq!(old_args, 1, "0.3.0's trigger");

    s.db.batch_execute("ALTER EXTENSION pg_dialer UPDATE").expect("ALTER EXTENSION pg_dialer UPDATE");
    let (args, definer): (i16, bool) =
        s.db.query_one(
            "SELECT t.tgnargs, p.prosecdef FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
              WHERE t.tgrelid = 'leads'::regclass AND NOT t.tgisinternal",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(args >= 8 && !definer, "the trigger made again, with its changer's rights ({args} arguments)");
    s.db.execute("INSERT INTO leads VALUES (2, '+15550329002', 'Pending_AI_Call')", &[]).unwrap();
    s.wake();
    let db = &mut s.db;
    wait_for("both leads posted and written back", Duration::from_secs(30), || {
        let n: i64 =
            db.query_one("SELECT count(*) FROM leads WHERE status <> 'Pending_AI_Call' AND ai_call_id IS NOT NULL", &[]).ok()?.get(0);
        (n == 2).then_some(())
    });
    for n in ["+15550329001", "+15550329002"] {
        assert_eq!(pg_dialer_integration::posts_to(&s.sim, n).len(), 1, "{n} dialed once");
    }
    let user: String = s.db.query_one("SELECT usename::text FROM pg_stat_activity WHERE backend_type = 'pg_dialer'", &[]).unwrap().get(0);
    assert_eq!(user, "dialer_worker");
    let owned: i64 =
        s.db.query_one(
            "SELECT count(*) FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
              WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e' AND p.proname LIKE 'lead\\_writer\\_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owned, 0, "the attachment's writer is the table owner's, not the extension's");
}

/// Each shipped upgrade script defines each function once: a script is what it leaves behind, not
/// the diary of how it was written (a second definition of one signature is refused here).
#[test]
fn each_upgrade_script_defines_each_function_once() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/upgrade");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("read sql/upgrade").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // Upgrade scripts only (pg_dialer--A--B.sql), not the old releases' full install scripts.
        if !(name.starts_with("pg_dialer--") && name.matches("--").count() == 2 && name.ends_with(".sql")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read an upgrade script");
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("FUNCTION ") {
            let before = &rest[..at];
            rest = &rest[at + "FUNCTION ".len()..];
            if !(before.ends_with("CREATE ") || before.ends_with("CREATE OR REPLACE ")) {
                continue;
            }
            let Some(open) = rest.find('(') else { break };
            let Some(close) = rest[open..].find(')') else { break };
            let signature: String = format!("{}{}", &rest[..open], &rest[open..open + close + 1])
                .replace("dialer.", "")
                .replace('"', "")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            *seen.entry(signature).or_default() += 1;
        }
        let twice: Vec<&String> = seen.iter().filter(|(_, n)| **n > 1).map(|(s, _)| s).collect();
        assert!(twice.is_empty(), "{name} defines these more than once: {twice:?}");
        checked += 1;
    }
    assert!(checked >= 3, "the upgrade scripts were found ({checked})");
}
