//! The README's SQL examples run, in order, against a real cluster: they stay true.

use pg_dialer_integration::Scenario;

#[test]
fn every_sql_example_in_the_readme_runs() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap_or_default()),
            (Some(buf), _) => {
                buf.push_str(line);
                buf.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 3, "README has its SQL examples");
    // A fresh cluster with the worker off: the examples create agency 1 themselves.
    // pg_cron is preloaded: the pg_cron recipes run too.
    let mut s = Scenario::new(
        "readme",
        Scenario::sim_config(100, 200),
        &[
            "dialer.enabled = off",
            "shared_preload_libraries = 'pg_dialer,pg_cron'",
            "cron.database_name = 'postgres'",
            // As the README tells: the example AI caller's host is listed.
            "dialer.allowed_hosts = '127.0.0.1,api.voiceai.example'",
        ],
    );
    s.db.batch_execute("DROP EXTENSION pg_dialer CASCADE; CREATE EXTENSION pg_dialer;").unwrap();
    for block in blocks {
        s.db.batch_execute(&block).unwrap_or_else(|e| panic!("README example failed: {:?}\n{block}", e.as_db_error().map(|d| d.message().to_string())));
    }
    let jobs: i64 = s.db.query_one("SELECT count(*) FROM dialer.campaign_contacts", &[]).unwrap().get(0);
    assert!(jobs >= 7, "the examples scheduled their calls");
}
