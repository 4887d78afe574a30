//! Metrics as Prometheus reads them (issue 25, item 2): the console's /metrics and
//! docs/queries.yaml through Debian's prometheus-postgres-exporter, each checked by Debian's
//! `promtool check metrics`; every family is there from the first scrape, with zero samples for
//! the label sets known in advance, and typed as dialer.metrics() types it.

mod common;

use common::*;
use pg_dialer_integration::{free_port, wait_for, Scenario};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const PROMTOOL: &str = "/usr/bin/promtool";
const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";

/// `promtool check metrics` on an exposition: its exit code and every line of its report that
/// names a pg_dialer_ series (parse errors name no series: the exit code 1 tells those).
fn promtool(text: &str) -> (i32, Vec<String>) {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; make setup installs it)");
    child.stdin.take().expect("promtool's stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let problems = report.lines().filter(|l| l.contains("pg_dialer")).map(str::to_string).collect();
    (out.status.code().unwrap_or(-1), problems)
}

fn assert_clean(what: &str, text: &str) {
    let (code, problems) = promtool(text);
    assert!(code != 1, "{what}: promtool cannot parse it:\n{text}");
    assert!(problems.is_empty(), "{what}: promtool's problems with pg_dialer_ series: {problems:#?}");
}

/// The value of the sample `name` whose labels include every `labels` pair (the first such line).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, lab) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        (n == name && labels.iter().all(|(k, v)| lab.split(',').any(|p| p == format!("{k}=\"{v}\"")))).then(|| value.parse().ok()).flatten()
    })
}

fn families(s: &mut Scenario) -> Vec<(String, String)> {
    s.db.query("SELECT family, kind FROM dialer._metric_families()", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
}

fn assert_every_family_typed(what: &str, text: &str, families: &[(String, String)]) {
    for (f, kind) in families {
        assert!(text.contains(&format!("# TYPE {f} {kind}\n")), "{what}: no `# TYPE {f} {kind}`:\n{text}");
        assert!(text.contains(&format!("# HELP {f} ")), "{what}: no HELP for {f}");
    }
}

fn campaign(s: &mut Scenario, n: usize) -> i64 {
    let b = s.batch("metrics campaign", 600, 10, 1);
    s.add_numbers(b, &pg_dialer_integration::numbers("+1555790", n));
    s.wait_batch_completed(b, Duration::from_secs(60));
    b
}

#[test]
fn the_consoles_metrics_pass_promtool_fresh_and_after_a_campaign() {
    let mut s = Scenario::with_passwords("prom-console", Scenario::sim_config(200, 400), &[]);
    let agency = s.agency_id.to_string();
    let a = s.agency_id;
    tenant_role(&mut s, "tenant_a", "pw-a", a);
    admin_role(&mut s, "ops_admin", "pw-admin");
    let fams = families(&mut s);
    assert_eq!(fams.len(), 10, "{fams:?}");
    let console = Console::start(&s);

    // Fresh: no call made yet. Every family is announced, and the series known in advance are at 0.
    for (role, pw) in [("ops_admin", "pw-admin"), ("tenant_a", "pw-a")] {
        let (code, body) = metrics(&console.url, role, pw);
        assert_eq!(code, 200, "{role}: {body}");
        assert_every_family_typed(role, &body, &fams);
        assert_clean(&format!("{role}, fresh"), &body);
        for outcome in ["ended", "failed", "rate_limited", "network_error"] {
            let v = sample(&body, "pg_dialer_calls_total", &[("agency_id", &agency), ("provider", "ultravox"), ("outcome", outcome)]);
            assert_eq!(v, Some(0.0), "{role}: calls_total {outcome} at zero from the first scrape:\n{body}");
        }
        for state in ["pending", "queued", "in_progress", "completed", "failed", "cancelled", "in_doubt", "expired"] {
            assert_eq!(
                sample(&body, "pg_dialer_contacts", &[("agency_id", &agency), ("state", state)]),
                Some(0.0),
                "{role}: contacts {state}"
            );
        }
        for code in ["429", "503"] {
            assert_eq!(sample(&body, "pg_dialer_provider_throttled_total", &[("provider", "ultravox"), ("code", code)]), Some(0.0));
        }
        assert_eq!(sample(&body, "pg_dialer_calls_open", &[("provider", "ultravox"), ("status", "in_doubt")]), Some(0.0));
        assert_eq!(sample(&body, "pg_dialer_queue_depth", &[("agency_id", &agency), ("kind", "leads")]), Some(0.0));
        assert_eq!(sample(&body, "pg_dialer_provider_latency_seconds_count", &[("provider", "ultravox")]), Some(0.0));
        assert_eq!(sample(&body, "pg_dialer_provider_latency_seconds_bucket", &[("provider", "ultravox"), ("le", "+Inf")]), Some(0.0));
    }
    let (_, admin) = metrics(&console.url, "ops_admin", "pw-admin");
    assert!(sample(&admin, "pg_dialer_tick_duration_seconds_count", &[]).is_some(), "the operator has the tick histogram");
    let (_, tenant) = metrics(&console.url, "tenant_a", "pw-a");
    assert!(sample(&tenant, "pg_dialer_tick_duration_seconds_count", &[]).is_none(), "ticks are the operators'");

    // After a campaign of 5 calls: the same families, the counts moved, still clean.
    campaign(&mut s, 5);
    for (role, pw) in [("ops_admin", "pw-admin"), ("tenant_a", "pw-a")] {
        let (code, body) = metrics(&console.url, role, pw);
        assert_eq!(code, 200);
        assert_every_family_typed(role, &body, &fams);
        assert_clean(&format!("{role}, after a campaign"), &body);
        let ended = sample(&body, "pg_dialer_calls_total", &[("agency_id", &agency), ("provider", "ultravox"), ("outcome", "ended")]);
        assert_eq!(ended, Some(5.0), "{role}");
        assert_eq!(sample(&body, "pg_dialer_provider_latency_seconds_count", &[("provider", "ultravox")]), Some(5.0));
        assert_eq!(sample(&body, "pg_dialer_contacts", &[("agency_id", &agency), ("state", "completed")]), Some(5.0));
        assert_eq!(sample(&body, "pg_dialer_contacts", &[("agency_id", &agency), ("state", "failed")]), Some(0.0), "zeros stay");
    }
}

/// postgres_exporter as Debian packages it, on a free port, reading docs/queries.yaml.
struct Exporter {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl Exporter {
    fn start(s: &Scenario, role: &str, password: &str) -> Exporter {
        let port = free_port();
        let queries = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/queries.yaml");
        let log = std::env::temp_dir().join(format!("pg_dialer-exporter-{}-{port}.log", std::process::id()));
        let child = Command::new(EXPORTER)
            .env("DATA_SOURCE_NAME", format!("postgresql://{role}:{password}@127.0.0.1:{}/postgres?sslmode=disable", s.cluster.port))
            .args(["--extend.query-path", queries, "--web.listen-address", &format!("127.0.0.1:{port}"), "--disable-settings-metrics"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("exporter log file")))
            .spawn()
            .expect("prometheus-postgres-exporter (Debian package; make setup installs it)");
        let url = format!("http://127.0.0.1:{port}/metrics");
        wait_for("the exporter to listen", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        Exporter { child, url, log }
    }

    fn scrape(&self) -> String {
        match ureq::get(&self.url).call() {
            Ok(r) => r.into_string().unwrap_or_default(),
            Err(e) => panic!("scrape the exporter: {e}\n{}", std::fs::read_to_string(&self.log).unwrap_or_default()),
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[test]
fn postgres_exporter_with_the_documented_queries_types_every_series() {
    let mut s = Scenario::with_passwords("prom-exporter", Scenario::sim_config(200, 400), &[]);
    let agency = s.agency_id.to_string();
    admin_role(&mut s, "ops_admin", "pw-admin");
    let fams = families(&mut s);
    let exporter = Exporter::start(&s, "ops_admin", "pw-admin");

    // Fresh: every family typed, the zeros there.
    let body = wait_for("the exporter's pg_dialer_ series", Duration::from_secs(30), || {
        let b = exporter.scrape();
        b.contains("pg_dialer_calls_total{").then_some(b)
    });
    let ours: String = body.lines().filter(|l| l.contains("pg_dialer_")).map(|l| format!("{l}\n")).collect();
    // A family is announced with its samples: with no batch yet, pacing lag (per batch) has none.
    let but_lag: Vec<_> = fams.iter().filter(|(f, _)| f != "pg_dialer_pacing_lag_seconds").cloned().collect();
    assert_every_family_typed("exporter, fresh", &ours, &but_lag);
    assert!(!ours.contains("pg_dialer_pacing_lag_seconds"));
    assert_clean("exporter, fresh", &body);
    assert_eq!(
        sample(&body, "pg_dialer_calls_total", &[("agency_id", &agency), ("provider", "ultravox"), ("outcome", "ended")]),
        Some(0.0)
    );
    assert_eq!(sample(&body, "pg_dialer_calls_open", &[("provider", "ultravox"), ("status", "dialing")]), Some(0.0));
    assert_eq!(sample(&body, "pg_dialer_provider_latency_seconds_bucket", &[("provider", "ultravox"), ("le", "+Inf")]), Some(0.0));

    campaign(&mut s, 4);
    // A campaign for tomorrow: its batch is known, not behind.
    let (agency_id, mapping) = (s.agency_id, s.mapping_id);
    let later: i64 =
        s.db.query_one("SELECT dialer.create_batch($1, $2, 'tomorrow', 10, 5, now() + interval '1 day')", &[&agency_id, &mapping])
            .unwrap()
            .get(0);
    let body = exporter.scrape();
    assert_eq!(sample(&body, "pg_dialer_pacing_lag_seconds", &[("batch_id", &later.to_string())]), Some(0.0));
    let ours: String = body.lines().filter(|l| l.contains("pg_dialer_")).map(|l| format!("{l}\n")).collect();
    assert_every_family_typed("exporter, after a campaign", &ours, &fams);
    assert_clean("exporter, after a campaign", &body);
    assert_eq!(
        sample(&body, "pg_dialer_calls_total", &[("agency_id", &agency), ("provider", "ultravox"), ("outcome", "ended")]),
        Some(4.0)
    );
    assert_eq!(sample(&body, "pg_dialer_contacts", &[("agency_id", &agency), ("state", "completed")]), Some(4.0));
    // The histograms are histograms: buckets to +Inf, _sum and _count, as dialer.metrics() has them.
    assert_eq!(sample(&body, "pg_dialer_provider_latency_seconds_count", &[("provider", "ultravox")]), Some(4.0));
    assert_eq!(sample(&body, "pg_dialer_provider_latency_seconds_bucket", &[("provider", "ultravox"), ("le", "+Inf")]), Some(4.0));
    assert_eq!(sample(&body, "pg_dialer_provider_latency_seconds_bucket", &[("provider", "ultravox"), ("le", "10")]), Some(4.0));
    assert!(sample(&body, "pg_dialer_provider_latency_seconds_sum", &[("provider", "ultravox")]).is_some_and(|v| v > 0.0));
    let ticks = sample(&body, "pg_dialer_tick_duration_seconds_count", &[]).unwrap_or_default();
    assert!(ticks > 0.0, "the worker's ticks: {ticks}");
    let direct: f64 = s
        .db
        .query_one("SELECT value FROM dialer.metrics() WHERE sample = 'pg_dialer_provider_latency_seconds_bucket' AND labels->>'le' = '0.5' AND labels->>'provider' = 'ultravox'", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        sample(&body, "pg_dialer_provider_latency_seconds_bucket", &[("provider", "ultravox"), ("le", "0.5")]),
        Some(direct),
        "bucket by bucket"
    );
}
