// `#[pg_test]`s: SQL functions and their errors, inside a rolled-back transaction.

use pgrx::prelude::*;

fn agency_with_mapping() -> (i64, i64) {
    let agency = Spi::get_one::<i64>("SELECT dialer.create_agency('Acme', 'Europe/Berlin')").unwrap().unwrap();
    let mapping = Spi::get_one_with_args::<i64>(
        "SELECT dialer.create_agent_mapping($1, 'ultravox', '5b7e2f0a-9c41-4d8e-b2a6-0f3c9d1e7a55', 'Ava', '+14155550100')",
        &[agency.into()],
    )
    .unwrap()
    .unwrap();
    (agency, mapping)
}

fn batch(agency: i64, mapping: i64) -> i64 {
    Spi::get_one_with_args::<i64>(
        "SELECT dialer.create_batch($1, $2, 'spring', 60, 2)",
        &[agency.into(), mapping.into()],
    )
    .unwrap()
    .unwrap()
}

/// Runs `sql` expecting an error; returns (sqlstate, message) and proves the statement wrote nothing.
fn expect_error(sql: &str) -> (String, String) {
    let result = PgTryBuilder::new(|| {
        Spi::run(sql).unwrap();
        None
    })
    .catch_others(|e| match e {
        pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => {
            Some((format!("{:?}", r.sql_error_code()), r.message().to_string()))
        }
        pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
            Some((format!("{:?}", ereport.sql_error_code()), ereport.message().to_string()))
        }
    })
    .execute();
    result.unwrap_or_else(|| panic!("expected an error from: {sql}"))
}

#[pg_test]
fn create_batch_and_add_contacts() {
    let (agency, mapping) = agency_with_mapping();
    let b = batch(agency, mapping);
    let added = Spi::get_one_with_args::<i32>(
        r#"SELECT dialer.add_contacts($1, '[{"phone_number":"+15550000001","name":"Ann","variables":{"x":1}},
                                             {"phone_number":"+15550000002","priority":1},
                                             {"phone_number":"+15550000001"}]'::jsonb)"#,
        &[b.into()],
    )
    .unwrap();
    assert_eq!(added, Some(2), "duplicate numbers are skipped");
    let counted = Spi::get_three_with_args::<i32, i32, String>(
        "SELECT b.total_contacts, b.queued_count, p.status
           FROM dialer.call_batches b JOIN dialer.batch_progress p ON p.batch_id = b.id WHERE b.id = $1",
        &[b.into()],
    )
    .unwrap();
    assert_eq!(counted, (Some(2), Some(2), Some("pending".to_string())));
}

#[pg_test]
fn add_contacts_is_all_or_nothing_and_names_the_element() {
    let (agency, mapping) = agency_with_mapping();
    let b = batch(agency, mapping);
    let (code, msg) = expect_error(&format!(
        r#"SELECT dialer.add_contacts({b}, '[{{"phone_number":"+15550000001"}}, {{"phone_number":"555-1234"}}]')"#
    ));
    assert!(msg.contains("contacts[1].phone_number"), "{msg}");
    assert!(msg.contains("E.164"), "{msg}");
    assert_eq!(code, "ERRCODE_INVALID_PARAMETER_VALUE");
    let n = Spi::get_one_with_args::<i64>("SELECT count(*) FROM dialer.campaign_contacts WHERE batch_id = $1", &[b.into()]).unwrap();
    assert_eq!(n, Some(0));

    let (_, msg) = expect_error(&format!(r#"SELECT dialer.add_contacts({b}, '[{{"phone_number":"+15550000001"}}, 42]')"#));
    assert!(msg.contains("contacts[1] must be a JSON object"), "{msg}");
    let (_, msg) = expect_error(&format!(r#"SELECT dialer.add_contacts({b}, '{{"phone_number":"+15550000001"}}')"#));
    assert!(msg.contains("JSON array"), "{msg}");
    let (_, msg) = expect_error(&format!(r#"SELECT dialer.add_contacts({b}, '[{{"phone_number":"+15550000001","variables":[1]}}]')"#));
    assert!(msg.contains("contacts[0].variables"), "{msg}");
}

#[pg_test]
fn bad_arguments_are_refused_with_sqlstates() {
    let (agency, mapping) = agency_with_mapping();
    let (code, msg) = expect_error(&format!("SELECT dialer.create_batch({agency}, {mapping}, 'x', 0)"));
    assert_eq!(code, "ERRCODE_INVALID_PARAMETER_VALUE");
    assert!(msg.contains("calls_per_minute must be a positive integer"), "{msg}");
    let (_, msg) = expect_error(&format!("SELECT dialer.create_batch({agency}, {mapping}, 'x', 10, -1)"));
    assert!(msg.contains("max_concurrent"), "{msg}");
    let (code, msg) = expect_error(&format!("SELECT dialer.create_batch(999999, {mapping}, 'x')"));
    assert_eq!(code, "ERRCODE_NO_DATA_FOUND");
    assert!(msg.contains("agency 999999 does not exist"), "{msg}");
    let (code, msg) = expect_error("SELECT dialer.add_contacts(424242, '[]')");
    assert_eq!(code, "ERRCODE_NO_DATA_FOUND");
    assert!(msg.contains("batch 424242 does not exist"), "{msg}");
    let (_, msg) = expect_error("SELECT dialer.create_agency('Zed', 'Mars/Olympus')");
    assert!(msg.contains("unknown time zone"), "{msg}");
    let (_, msg) = expect_error(&format!("SELECT dialer.create_agent_mapping({agency}, 'skype', 'a')"));
    assert!(msg.contains("unknown provider"), "{msg}");
    let (_, msg) = expect_error(&format!("SELECT dialer.create_agent_mapping({agency}, 'ultravox', 'a', NULL, '0123')"));
    assert!(msg.contains("from_number"), "{msg}");
    let (code, msg) = expect_error(&format!(
        "SELECT dialer.create_agent_mapping({agency}, 'ultravox', '5b7e2f0a-9c41-4d8e-b2a6-0f3c9d1e7a55', NULL, NULL)"
    ));
    assert_eq!(code, "ERRCODE_INVALID_PARAMETER_VALUE");
    assert!(msg.contains("need a from_number"), "{msg}");
    let (_, msg) = expect_error(&format!(
        "SELECT dialer.create_agent_mapping({agency}, 'ultravox', '5b7e2f0a-9c41-4d8e-b2a6-0f3c9d1e7a55', NULL, '+14155550100', '{{\"firstSpeaker\": \"FIRST_SPEAKER_AGENT\"}}')"
    ));
    assert!(msg.contains("has no field named \"firstSpeaker\""), "{msg}");
    let (_, msg) = expect_error(&format!(
        "SELECT dialer.create_agent_mapping({agency}, 'twilio', NULL, NULL, '+14155550100', '{{}}', 'plivo')"
    ));
    assert!(msg.contains("carrier is for Ultravox"), "{msg}");
    let batches = Spi::get_one::<i64>("SELECT count(*) FROM dialer.call_batches").unwrap();
    assert_eq!(batches, Some(0), "nothing written by refused calls");
}

#[pg_test]
fn credentials_are_not_public() {
    let (agency, _) = agency_with_mapping();
    Spi::run_with_args(
        "SELECT dialer.set_provider_credentials($1, 'ultravox', 'sk-live-secret', 'http://127.0.0.1:1')",
        &[agency.into()],
    )
    .unwrap();
    let public_can = Spi::get_two::<bool, bool>(
        "SELECT has_table_privilege('public', 'dialer.provider_credentials', 'SELECT'),
                has_function_privilege('public', 'dialer.get_agency_credentials(bigint, text)', 'EXECUTE')",
    )
    .unwrap();
    assert_eq!(public_can, (Some(false), Some(false)), "PUBLIC can neither read the keys nor call what returns them");
    let key = Spi::get_one_with_args::<String>("SELECT api_key FROM dialer.get_agency_credentials($1)", &[agency.into()]).unwrap();
    assert_eq!(key.as_deref(), Some("sk-live-secret"));
}

#[pg_test]
fn pause_resume_cancel_and_progress_counters() {
    let (agency, mapping) = agency_with_mapping();
    let b = batch(agency, mapping);
    Spi::run(&format!(r#"SELECT dialer.add_contacts({b}, '[{{"phone_number":"+15550000001"}},{{"phone_number":"+15550000002"}}]')"#)).unwrap();
    assert_eq!(Spi::get_one::<bool>(&format!("SELECT dialer.pause_batch({b})")).unwrap(), Some(true));
    assert_eq!(Spi::get_one::<bool>(&format!("SELECT dialer.pause_batch({b})")).unwrap(), Some(false));
    assert_eq!(Spi::get_one::<bool>(&format!("SELECT dialer.resume_batch({b})")).unwrap(), Some(true));
    Spi::run(&format!("SELECT dialer.update_batch_progress({b}, failed_delta => 1, in_progress_delta => 2)")).unwrap();
    let (failed, in_progress) = Spi::get_two::<i32, i32>(&format!("SELECT failed_count, in_progress_count FROM dialer.call_batches WHERE id = {b}")).unwrap();
    assert_eq!((failed, in_progress), (Some(1), Some(2)));
    assert_eq!(Spi::get_one::<bool>(&format!("SELECT dialer.cancel_batch({b})")).unwrap(), Some(true));
    let cancelled = Spi::get_one::<i64>(&format!("SELECT count(*) FROM dialer.campaign_contacts WHERE batch_id = {b} AND status = 'cancelled'")).unwrap();
    assert_eq!(cancelled, Some(2));
    let (_, msg) = expect_error("SELECT dialer.update_batch_progress(777777, 1)");
    assert!(msg.contains("batch 777777 does not exist"), "{msg}");
}

#[pg_test]
fn get_batch_contacts_to_call_orders_by_priority() {
    let (agency, mapping) = agency_with_mapping();
    let b = batch(agency, mapping);
    Spi::run(&format!(
        r#"SELECT dialer.add_contacts({b}, '[{{"phone_number":"+15550000001","priority":3}},{{"phone_number":"+15550000002","priority":1}},{{"phone_number":"+15550000003"}}]')"#
    ))
    .unwrap();
    Spi::run("SELECT dialer._promote_batches(clock_timestamp())").unwrap();
    let first = Spi::get_one::<String>(&format!("SELECT phone_number FROM dialer.get_batch_contacts_to_call({b}, 1)")).unwrap();
    assert_eq!(first.as_deref(), Some("+15550000002"));
    let n = Spi::get_one::<i64>(&format!("SELECT count(*) FROM dialer.get_batch_contacts_to_call({b}, 10)")).unwrap();
    assert_eq!(n, Some(3));
}

#[pg_test]
fn process_batches_with_nothing_to_do() {
    let v = Spi::get_one::<pgrx::JsonB>("SELECT dialer.process_batches()").unwrap().unwrap();
    assert_eq!(v.0, serde_json::json!({"processed": 0, "message": "No batches to process"}));
    let status = Spi::get_one::<String>("SELECT status FROM dialer.runs ORDER BY id DESC LIMIT 1").unwrap();
    assert_eq!(status.as_deref(), Some("COMPLETED"));
}

#[pg_test]
fn agent_mappings_are_checked_however_they_are_written() {
    let (_, mapping) = agency_with_mapping();
    let (code, msg) = expect_error(&format!(
        "UPDATE dialer.agent_mappings SET request_template = '{{\"agentId\": \"x\"}}' WHERE id = {mapping}"
    ));
    assert_eq!(code, "ERRCODE_INVALID_PARAMETER_VALUE");
    assert!(msg.contains("request_template.agentId is set by pg_dialer"), "{msg}");
    let (_, msg) = expect_error(&format!("UPDATE dialer.agent_mappings SET from_number = NULL WHERE id = {mapping}"));
    assert!(msg.contains("need a from_number"), "{msg}");
    let carrier = Spi::get_one_with_args::<String>("SELECT carrier FROM dialer.agent_mappings WHERE id = $1", &[mapping.into()]).unwrap();
    assert_eq!(carrier.as_deref(), Some("telnyx"), "Ultravox mappings dial through Telnyx by default, as the seed");
}

#[pg_test]
fn json_depth_counts_nesting_outside_strings() {
    let depth = |s: &str| Spi::get_one_with_args::<i32>("SELECT dialer._json_depth($1)", &[s.into()]).unwrap().unwrap();
    assert_eq!(depth(r#"{"a": [1, {"b": 2}]}"#), 3);
    assert_eq!(depth(r#"{"a": "[[[{{{\"]]]"}"#), 1, "brackets inside strings do not count");
    assert_eq!(depth(&"[".repeat(300)), 300);
    let (agency, mapping) = agency_with_mapping();
    let b = batch(agency, mapping);
    let deep = format!(r#"[{{"phone_number": "+15550001234", "variables": {{"x": {}1{}}}}}]"#, "[".repeat(40), "]".repeat(40));
    let (code, msg) = expect_error(&format!("SELECT dialer.add_contacts({b}, '{deep}')"));
    assert_eq!(code, "ERRCODE_PROGRAM_LIMIT_EXCEEDED");
    assert!(msg.contains("32 levels"), "{msg}");
    let (_, msg) = expect_error(&format!("SELECT dialer.create_batch({agency}, {mapping}, 'fast', 2147483647)"));
    assert!(msg.contains("calls_per_minute"), "{msg}");
}
