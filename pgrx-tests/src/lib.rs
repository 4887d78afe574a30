//! Integration-test harness: a throwaway Postgres 15 cluster with pg_dialer preloaded (the
//! extension installed by `cargo pgrx install`), real connections, and the provider simulator
//! in-process on loopback.

use postgres::{Client, NoTls};
use provider_sim::{SimConfig, Simulator};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use provider_sim;

/// Where the Postgres programs are: `PG_DIALER_PG_BIN` (the Makefile points it at the private
/// copy of the major the extension was built for and installed into, target/pgNN), else the
/// system's newest.
pub fn pg_bin() -> String {
    std::env::var("PG_DIALER_PG_BIN").unwrap_or_else(|_| system_pg_bin())
}

/// The newest Postgres the system has (`/usr/lib/postgresql/NN/bin` with an initdb in it), 15 if none.
fn system_pg_bin() -> String {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|m| std::path::Path::new(&format!("/usr/lib/postgresql/{m}/bin/initdb")).exists())
        .max();
    format!("/usr/lib/postgresql/{}/bin", newest.unwrap_or(15))
}
pub const API_KEY: &str = "sk-test-3f9a1c77e2";
/// The Ultravox agent of the default scenario (Ultravox agent ids are UUIDs).
pub const AGENT_ID: &str = "5b7e2f0a-9c41-4d8e-b2a6-0f3c9d1e7a55";
/// The caller ID the default scenario dials from.
pub const FROM_NUMBER: &str = "+14155550100";

fn running_as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Runs a Postgres program, as `postgres` when we are root (Postgres refuses root).
fn pg_command(program: &str) -> Command {
    let path = format!("{}/{program}", pg_bin());
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(55432)
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// initdb + start, with `shared_preload_libraries = 'pg_dialer'` and the given extra settings.
    pub fn start(name: &str, extra_conf: &[&str]) -> Cluster {
        Cluster::start_opts(name, extra_conf, false, None)
    }

    /// As `start`, with another cluster's keyring (a restore elsewhere: the key file copied along).
    pub fn start_with_keyring_of(name: &str, extra_conf: &[&str], other: &Cluster) -> Cluster {
        Cluster::start_opts(name, extra_conf, false, Some(&other.dir.join("pg_dialer.key")))
    }

    /// As `start`, but TCP connections of every role except `postgres` (the harness's own) need
    /// their password (scram-sha-256), so a wrong one really fails (the console's sign-in tests).
    pub fn start_with_passwords(name: &str, extra_conf: &[&str]) -> Cluster {
        Cluster::start_opts(name, extra_conf, true, None)
    }

    fn start_opts(name: &str, extra_conf: &[&str], passwords: bool, keyring: Option<&Path>) -> Cluster {
        let dir = std::env::temp_dir().join(format!("pg_dialer_it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        if running_as_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().map(|s| s.success());
            assert_eq!(ok.ok(), Some(true), "chown {dir:?} to postgres");
        }
        let data = dir.join("data");
        let out = pg_command("initdb")
            .args(["-D", path_str(&data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C"])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_preload_libraries = 'pg_dialer'\ndialer.database = 'postgres'\n\
             dialer.allowed_hosts = '127.0.0.1'\n\
             dialer.status_poll_interval = '300ms'\ndialer.http_timeout = '5s'\n\
             fsync = off\nsynchronous_commit = off\nlog_min_messages = warning\nlog_line_prefix = '%m [%p] %b '\n",
            path_str(&dir)
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        if passwords {
            let hba = "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
            std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        if let Some(key) = keyring {
            std::fs::copy(key, dir.join("pg_dialer.key")).expect("copy the keyring");
            if running_as_root() {
                let ok = Command::new("chown").args(["postgres:postgres"]).arg(dir.join("pg_dialer.key")).status().map(|s| s.success());
                assert_eq!(ok.ok(), Some(true), "chown the keyring to postgres");
            }
        }
        let cluster = Cluster { dir, port };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started, its WAL receiver named
    /// `name` (cluster_name). The keyring is copied beside its data directory, as an operator
    /// must (dialer.key_file lives outside the data directory, so a base backup does not carry it).
    pub fn standby_of(primary: &Cluster, name: &str, extra_conf: &[&str]) -> Cluster {
        let standby = Cluster::base_backup_of(primary, name, true, extra_conf);
        standby.pg_ctl(&["start", "-w", "-t", "60"]);
        standby
    }

    /// A base backup of `primary` (`pg_basebackup`, with `-R` for a standby), not started. The
    /// keyring is copied beside its data directory.
    pub fn base_backup_of(primary: &Cluster, name: &str, standby: bool, extra_conf: &[&str]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("pg_dialer_it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create standby dir");
        std::fs::copy(primary.dir.join("pg_dialer.key"), dir.join("pg_dialer.key")).expect("copy the keyring");
        if running_as_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().map(|s| s.success());
            assert_eq!(ok.ok(), Some(true), "chown {dir:?} to postgres");
        }
        let data = dir.join("data");
        let port_text = primary.port.to_string();
        let out = pg_command("pg_basebackup")
            .args(["-D", path_str(&data), "-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-p", &port_text, "-U", "postgres", "--no-sync"])
            .args(if standby { &["-R"][..] } else { &[][..] })
            .output()
            .expect("run pg_basebackup");
        assert!(out.status.success(), "pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let mut conf = format!("\nport = {port}\nunix_socket_directories = '{}'\ncluster_name = '{name}'\n", path_str(&dir));
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let auto = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&auto).expect("read postgresql.auto.conf");
        existing.push_str(&conf);
        std::fs::write(&auto, existing).expect("write postgresql.auto.conf");
        Cluster { dir, port }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.join("server.log");
        let out = pg_command("pg_ctl").args(["-D", path_str(&data), "-l", path_str(&log)]).args(args).output().expect("run pg_ctl");
        assert!(out.status.success(), "pg_ctl {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.server_log());
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn connect(&self) -> Client {
        self.connect_to("postgres")
    }

    pub fn connect_to(&self, dbname: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&format!("host=127.0.0.1 port={} user=postgres dbname={dbname}", self.port), NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to test cluster: {e}"),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = pg_command("pg_ctl").args(["-D", path_str(&data), "stop", "-m", "immediate", "-w"]).output();
        if std::thread::panicking() {
            eprintln!("--- server log of {:?} ---\n{}", self.dir, self.server_log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The first column of every row a catalog query returns, as text (a list a test asserts on).
pub fn texts(db: &mut Client, sql: &str) -> Vec<String> {
    db.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect()
}

/// Polls `cond` until it returns Some or the deadline passes (then panics with `what`).
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    wait_for_on(&mut (), what, timeout, |_| cond(), |_| String::new())
}

/// As `wait_for`, on a state the condition reads (a scenario, say); on timeout the panic adds
/// `explain` of that state: what happened instead.
pub fn wait_for_on<S, T>(
    state: &mut S,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut(&mut S) -> Option<T>,
    explain: impl FnOnce(&mut S) -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond(state) {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", explain(state));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cluster with the extension created, a simulator, and one agency + Ultravox agent wired to it.
pub struct Scenario {
    pub sim: Simulator,
    pub db: Client,
    pub agency_id: i64,
    pub mapping_id: i64,
    // Dropped last: the cluster outlives the connection.
    pub cluster: Cluster,
}

impl Scenario {
    pub fn new(name: &str, sim_config: SimConfig, extra_conf: &[&str]) -> Scenario {
        Scenario::with_extension(name, sim_config, extra_conf, "CREATE EXTENSION pg_dialer")
    }

    /// As `new`, creating the extension with `create_extension` (e.g. an older version).
    /// The previous releases' install scripts (`CREATE EXTENSION pg_dialer VERSION '0.2.0'`) are
    /// test fixtures, never shipped (pgrx-tests/fixtures/): copied into the test Postgres here.
    pub fn with_extension(name: &str, sim_config: SimConfig, extra_conf: &[&str], create_extension: &str) -> Scenario {
        install_old_release_scripts();
        Scenario::build(Cluster::start(name, extra_conf), sim_config, create_extension)
    }

    /// As `new`, on a cluster where every role but `postgres` signs in with its password over TCP.
    pub fn with_passwords(name: &str, sim_config: SimConfig, extra_conf: &[&str]) -> Scenario {
        Scenario::build(Cluster::start_with_passwords(name, extra_conf), sim_config, "CREATE EXTENSION pg_dialer")
    }

    fn build(cluster: Cluster, sim_config: SimConfig, create_extension: &str) -> Scenario {
        let sim = Simulator::start(sim_config, 0).expect("start simulator");
        let mut db = cluster.connect();
        db.batch_execute(create_extension).expect("create extension");
        let agency_id: i64 = db.query_one("SELECT dialer.create_agency('Acme Loans', 'America/New_York')", &[]).unwrap().get(0);
        db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3)", &[&agency_id, &API_KEY, &sim.base_url()]).unwrap();
        let mapping_id: i64 = db
            .query_one("SELECT dialer.create_agent_mapping($1, 'ultravox', $2, 'Ava', $3)", &[&agency_id, &AGENT_ID, &FROM_NUMBER])
            .unwrap()
            .get(0);
        Scenario { sim, db, agency_id, mapping_id, cluster }
    }

    /// A simulator as strict as the real services: every request is checked against the
    /// providers' published specs (`../shared/provider-specs`).
    pub fn sim_config(min_ms: u64, max_ms: u64) -> SimConfig {
        SimConfig {
            api_key: Some(API_KEY.to_string()),
            spec_dir: Some(spec_dir()),
            call_duration_ms_min: min_ms,
            call_duration_ms_max: max_ms,
            ..SimConfig::default()
        }
    }

    pub fn batch(&mut self, name: &str, cpm: i32, max_concurrent: i32, max_attempts: i32) -> i64 {
        self.db
            .query_one(
                "SELECT dialer.create_batch($1, $2, $3, $4, $5, NULL, $6)",
                &[&self.agency_id, &self.mapping_id, &name, &cpm, &max_concurrent, &max_attempts],
            )
            .unwrap()
            .get(0)
    }

    /// Adds `n` contacts numbered from `first` (E.164, +1555…).
    pub fn add_numbers(&mut self, batch: i64, numbers: &[String]) -> i32 {
        let contacts: Vec<serde_json::Value> = numbers
            .iter()
            .enumerate()
            .map(|(i, n)| serde_json::json!({"phone_number": n, "name": format!("Lead {i}"), "variables": {"idx": i}}))
            .collect();
        self.db.query_one("SELECT dialer.add_contacts($1, $2)", &[&batch, &serde_json::Value::Array(contacts)]).unwrap().get(0)
    }

    pub fn wake(&mut self) {
        self.db.execute("SELECT dialer.wake()", &[]).unwrap();
    }

    pub fn batch_status(&mut self, batch: i64) -> String {
        self.db.query_one("SELECT status FROM dialer.call_batches WHERE id = $1", &[&batch]).unwrap().get(0)
    }

    pub fn wait_batch_completed(&mut self, batch: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.batch_status(batch) == "completed" {
                return;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for batch {batch} to complete\n{}", self.describe(batch));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where a batch stands: counters, contacts and calls by status (for failure messages).
    pub fn describe(&mut self, batch: i64) -> String {
        let q = |db: &mut Client, sql: &str| -> String {
            db.query(sql, &[&batch])
                .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n"))
                .unwrap_or_else(|e| e.to_string())
        };
        format!(
            "batch: {}\ncontacts: {}\ncalls: {}",
            q(&mut self.db, "SELECT row_to_json(b)::text FROM dialer.call_batches b WHERE id = $1"),
            q(&mut self.db, "SELECT status || ' ' || count(*) FROM dialer.campaign_contacts WHERE batch_id = $1 GROUP BY status"),
            q(
                &mut self.db,
                "SELECT status || ' ' || count(*) || ' ' || coalesce(max(error), '') FROM dialer.calls WHERE batch_id = $1 GROUP BY status"
            ),
        )
    }

    /// A fresh connection (after a crash restart the old one is gone).
    pub fn reconnect(&mut self) {
        self.db = self.cluster.connect();
    }

    /// Runs a query, reconnecting while the server restarts.
    pub fn query_retrying(&mut self, sql: &str, timeout: Duration) -> Vec<postgres::Row> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.db.query(sql, &[]) {
                Ok(rows) => return rows,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(c) =
                        Client::connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.cluster.port), NoTls)
                    {
                        self.db = c;
                    }
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
    }

    pub fn worker_pid(&mut self) -> Option<i32> {
        self.db.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_dialer'", &[]).ok().flatten().map(|r| r.get(0))
    }
}

/// Copies the previous releases' full install scripts (pgrx-tests/fixtures/pg_dialer--X.sql) into
/// the extension directory of the Postgres the tests run (its upgrade scripts are there already).
pub fn install_old_release_scripts() {
    let out = Command::new(format!("{}/pg_config", pg_bin())).arg("--sharedir").output().expect("run pg_config --sharedir");
    assert!(out.status.success(), "pg_config --sharedir failed");
    let extension_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("extension");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for entry in std::fs::read_dir(&fixtures).expect("read pgrx-tests/fixtures").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("pg_dialer--") && name.ends_with(".sql") {
            std::fs::copy(entry.path(), extension_dir.join(&name)).unwrap_or_else(|e| panic!("copy {name} into {extension_dir:?}: {e}"));
        }
    }
}

pub fn numbers(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

/// POSTs that created (or tried to create) calls, as the simulator received them.
/// The providers' published specs; the tests refuse to run against a lenient simulator.
pub fn spec_dir() -> PathBuf {
    provider_contract::default_spec_dir()
        .expect("the providers' specs (../shared/provider-specs) are needed: set PROVIDER_SPEC_DIR to their folder")
}

/// The create-call endpoints of every provider the simulator speaks.
pub fn is_create_path(path: &str) -> bool {
    path == "/api/calls"
        || (path.starts_with("/api/agents/") && path.ends_with("/calls"))
        || path.ends_with("/Calls.json")
        || ["/voiceapi/v1/calls", "/call", "/v2/create-phone-call", "/v1/calls"].contains(&path)
}

pub fn call_posts(sim: &Simulator) -> Vec<provider_sim::RequestRecord> {
    let mut v: Vec<_> = sim.requests().into_iter().filter(|r| r.method == "POST" && is_create_path(&r.path)).collect();
    v.sort_by_key(|r| r.seq);
    v
}

pub fn posts_to(sim: &Simulator, number: &str) -> Vec<provider_sim::RequestRecord> {
    call_posts(sim).into_iter().filter(|r| r.to.as_deref() == Some(number)).collect()
}

impl Scenario {
    /// Sets a server setting and reloads (SIGHUP), waiting until this session sees it.
    pub fn set_config(&mut self, name: &str, value: &str) {
        self.db.execute(&format!("ALTER SYSTEM SET {name} = '{value}'"), &[]).unwrap();
        self.db.execute("SELECT pg_reload_conf()", &[]).unwrap();
        let db = &mut self.db;
        wait_for(&format!("{name} = {value}"), Duration::from_secs(10), || {
            let v: String = db.query_one("SELECT current_setting($1)", &[&name]).ok()?.get(0);
            (v == value).then_some(())
        });
    }

    pub fn job_state(&mut self, job: i64) -> String {
        self.db.query_one("SELECT dialer.job_status($1)->>'state'", &[&job]).unwrap().get(0)
    }

    pub fn wait_job_state(&mut self, job: i64, state: &str, timeout: Duration) -> serde_json::Value {
        let db = &mut self.db;
        wait_for(&format!("job {job} to be {state}"), timeout, || {
            let v: serde_json::Value = db.query_one("SELECT dialer.job_status($1)", &[&job]).ok()?.get(0);
            (v["state"] == state).then_some(v)
        })
    }
}

/// What an application's webhook endpoint (a Supabase Edge Function, say) does: takes the
/// provider's POST on loopback and hands its body and headers, untouched, to
/// `dialer.ingest_webhook(provider, body, headers)`; for Twilio it adds `X-Webhook-Url`, the URL
/// it was called at (Twilio signs it). It answers 200 when the database took the event, else 500.
pub struct WebhookReceiver {
    pub url: String,
    results: std::sync::Arc<std::sync::Mutex<Vec<Result<serde_json::Value, String>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WebhookReceiver {
    pub fn start(cluster: &Cluster, provider: &'static str) -> WebhookReceiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let url = format!("http://{}/hooks/{provider}", listener.local_addr().expect("receiver address"));
        let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut db, results2, stop2, base) = (cluster.connect(), results.clone(), stop.clone(), url.clone());
        std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => continue,
                });
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut headers = serde_json::Map::new();
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        headers.insert(k.to_string(), serde_json::Value::String(v.trim().to_string()));
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let body = String::from_utf8_lossy(&body).into_owned();
                if provider == "twilio" {
                    let origin = base.split("/hooks/").next().unwrap_or("");
                    headers.insert("X-Webhook-Url".into(), serde_json::Value::String(format!("{origin}{target}")));
                }
                let outcome = db
                    .query_one("SELECT dialer.ingest_webhook($1, $2, $3)", &[&provider, &body, &serde_json::Value::Object(headers)])
                    .map(|r| r.get::<_, serde_json::Value>(0))
                    .map_err(|e| e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()));
                let status = if outcome.is_ok() { "200 OK" } else { "500 Internal Server Error" };
                if let Ok(mut r) = results2.lock() {
                    r.push(outcome);
                }
                let mut out = stream;
                let _ = out.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
            }
        });
        WebhookReceiver { url, results, stop }
    }

    /// What `ingest_webhook` answered for each delivery so far.
    pub fn results(&self) -> Vec<Result<serde_json::Value, String>> {
        self.results.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
