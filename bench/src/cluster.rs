//! A throwaway Postgres cluster with pg_dialer preloaded, like the integration harness's
//! `Cluster` (same settings), but with errors instead of panics.

use crate::cleanup;
use anyhow::{anyhow, bail, Context, Result};
use postgres::{Client, NoTls};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the Postgres programs are: `PG_DIALER_PG_BIN` (the Makefile points it at the private
/// copy the extension was installed into, target/pgNN), else the system's newest.
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

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The argv prefix that runs a Postgres program (as `postgres` when we are root).
fn pg_argv(program: &str) -> Vec<String> {
    let path = format!("{}/{program}", pg_bin());
    if running_as_root() {
        vec!["runuser".into(), "-u".into(), "postgres".into(), "--".into(), path]
    } else {
        vec![path]
    }
}

fn pg_command(program: &str) -> Command {
    let argv = pg_argv(program);
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    // Own process group: a Ctrl-C in the terminal reaches only the bench, which stops the
    // cluster itself.
    c.process_group(0);
    c
}

/// What the bench needs from Postgres, checked before anything starts.
pub fn preflight() -> Result<()> {
    let bin = pg_bin();
    for prog in ["initdb", "pg_ctl", "postgres", "pg_config"] {
        if !Path::new(&bin).join(prog).exists() {
            bail!("{bin}/{prog} is missing: Postgres is not installed there (run `make setup` or `make setup PG=17`, or point PG_DIALER_PG_BIN at the bin directory of the Postgres the extension was installed into)");
        }
    }
    let ask = |flag: &str| -> Result<PathBuf> {
        let out = Command::new(format!("{bin}/pg_config")).arg(flag).output().context("run pg_config")?;
        if !out.status.success() {
            bail!("pg_config {flag} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    let lib = ask("--pkglibdir")?;
    let share = ask("--sharedir")?;
    let so = lib.join("pg_dialer.so");
    let control = share.join("extension/pg_dialer.control");
    if !so.exists() || !control.exists() {
        bail!(
            "the pg_dialer extension is not installed into the Postgres at {bin} ({} or {} is missing): run `make install-release` (`make bench` does it first)",
            so.display(),
            control.display()
        );
    }
    if running_as_root() {
        let ok = Command::new("id").arg("postgres").output().map(|o| o.status.success()).unwrap_or(false);
        if !ok {
            bail!("running as root but there is no `postgres` user to run the clusters as (Postgres refuses root): run `make setup`, or run the bench as a normal user");
        }
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("path {p:?} is not UTF-8"))
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    cleanup_id: u64,
    name: String,
}

impl Cluster {
    /// initdb + start with `shared_preload_libraries = 'pg_dialer'` and `extra_conf` lines.
    pub fn start(name: &str, extra_conf: &[String]) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("pg_dialer_bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let data = dir.join("data");
        let pg_ctl = pg_argv("pg_ctl");
        let cleanup_id = cleanup::register(cleanup::Action::StopCluster { pg_ctl, data: data.clone(), dir: dir.clone() });
        let mut cluster = Cluster { dir, port: 0, cleanup_id, name: name.to_string() };
        if running_as_root() {
            let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&cluster.dir).output().context("run chown")?;
            if !out.status.success() {
                bail!("could not hand {} to the postgres user: {}", cluster.dir.display(), String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        let out = pg_command("initdb")
            .args(["-D", path_str(&data)?, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C"])
            .output()
            .context("run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        cluster.port = free_port()?;
        let mut conf = format!(
            "\n# --- pg_dialer_bench ---\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             dialer.database = 'postgres'\n\
             dialer.allowed_hosts = '127.0.0.1'\n\
             fsync = off\nsynchronous_commit = off\nlog_min_messages = warning\nlog_line_prefix = '%m [%p] %b '\n",
            cluster.port,
            path_str(&cluster.dir)?
        );
        let mut preload = vec!["pg_dialer".to_string()];
        let global = crate::common::EXTRA_CONF.get().cloned().unwrap_or_default();
        for line in extra_conf.iter().chain(global.iter()) {
            if let Some(lib) = line.strip_prefix("+preload ") {
                // Once each: a scenario's own preload and the same one from --pg-conf.
                if !preload.iter().any(|p| p == lib.trim()) {
                    preload.push(lib.trim().to_string());
                }
                continue;
            }
            conf.push_str(line);
            conf.push('\n');
        }
        conf.push_str(&format!("shared_preload_libraries = '{}'\n", preload.join(",")));
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).with_context(|| format!("read {}", conf_path.display()))?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).with_context(|| format!("write {}", conf_path.display()))?;
        cluster.pg_ctl(&["start", "-w", "-t", "60"])?;
        Ok(cluster)
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started; its WAL receiver is
    /// named `name`. The keyring is copied beside its data directory, as an operator must.
    pub fn standby(&self, name: &str) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("pg_dialer_bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::copy(self.dir.join("pg_dialer.key"), dir.join("pg_dialer.key")).context("copy the keyring")?;
        let data = dir.join("data");
        let pg_ctl = pg_argv("pg_ctl");
        let cleanup_id = cleanup::register(cleanup::Action::StopCluster { pg_ctl, data: data.clone(), dir: dir.clone() });
        let mut standby = Cluster { dir, port: free_port()?, cleanup_id, name: name.to_string() };
        if running_as_root() {
            let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&standby.dir).output().context("run chown")?;
            if !out.status.success() {
                bail!("could not hand {} to the postgres user: {}", standby.dir.display(), String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        let out = pg_command("pg_basebackup")
            .args(["-D", path_str(&data)?, "-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-U", "postgres", "--no-sync"])
            .args(["-p", &self.port.to_string()])
            .output()
            .context("run pg_basebackup")?;
        if !out.status.success() {
            bail!("pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let auto = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).with_context(|| format!("read {}", auto.display()))?;
        conf.push_str(&format!(
            "\nport = {}\nunix_socket_directories = '{}'\ncluster_name = '{name}'\n",
            standby.port,
            path_str(&standby.dir)?
        ));
        std::fs::write(&auto, conf).with_context(|| format!("write {}", auto.display()))?;
        standby.pg_ctl(&["start", "-w", "-t", "60"])?;
        standby.name = name.to_string();
        Ok(standby)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let data = self.data();
        let log = self.dir.join("server.log");
        let out = pg_command("pg_ctl").args(["-D", path_str(&data)?, "-l", path_str(&log)?]).args(args).output().context("run pg_ctl")?;
        if !out.status.success() {
            let tail: String = {
                let log = self.server_log();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            };
            bail!("pg_ctl {args:?} failed: {}\n{tail}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn connect(&self) -> Result<Client> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port), NoTls) {
                Ok(c) => return Ok(c),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => bail!("cannot connect to the bench cluster on port {}: {e}", self.port),
            }
        }
    }

    pub fn postmaster_pid(&self) -> Result<i32> {
        let p = self.data().join("postmaster.pid");
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        text.lines().next().and_then(|l| l.trim().parse().ok()).ok_or_else(|| anyhow!("no pid in {}", p.display()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl").arg("-D").arg(self.data()).args(["stop", "-m", "immediate", "-w", "-t", "20"]).output();
        if let Some(Some(logs)) = crate::common::LOG_DIR.get() {
            let _ = std::fs::create_dir_all(logs);
            let _ = std::fs::copy(self.dir.join("server.log"), logs.join(format!("{}.log", self.name)));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        cleanup::unregister(self.cleanup_id);
    }
}

/// A cluster with the extension created and one agency + Ultravox agent pointed at `sim_url`.
pub struct Setup {
    pub db: Client,
    pub agency_id: i64,
    pub mapping_id: i64,
    // Dropped last: the cluster outlives the connection.
    pub cluster: Cluster,
}

impl Setup {
    pub fn new(name: &str, sim_url: &str, api_key: &str, extra_conf: &[String]) -> Result<Setup> {
        let cluster = Cluster::start(name, extra_conf)?;
        let mut db = cluster.connect()?;
        db.batch_execute("CREATE EXTENSION pg_dialer").context("CREATE EXTENSION pg_dialer")?;
        let agency_id: i64 = db.query_one("SELECT dialer.create_agency('Bench Co', 'UTC')", &[])?.get(0);
        db.execute("SELECT dialer.set_provider_credentials($1, 'ultravox', $2, $3)", &[&agency_id, &api_key, &sim_url])?;
        let mapping_id: i64 = db
            .query_one(
                "SELECT dialer.create_agent_mapping($1, 'ultravox', '5b7e2f0a-9c41-4d8e-b2a6-0f3c9d1e7a55', 'Ava', '+14155550100')",
                &[&agency_id],
            )?
            .get(0);
        Ok(Setup { db, agency_id, mapping_id, cluster })
    }

    /// ALTER SYSTEM SET + reload, waiting until this session sees the new value.
    pub fn set_config(&mut self, name: &str, value: &str) -> Result<()> {
        self.db.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))?;
        self.db.batch_execute("SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: String = self.db.query_one("SELECT current_setting($1)", &[&name])?.get(0);
            if v == value {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} did not become {value} after reload (it is {v})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn worker_pid(&mut self) -> Option<i32> {
        self.db.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_dialer' LIMIT 1", &[]).ok().flatten().map(|r| r.get(0))
    }

    pub fn batch(&mut self, name: &str, cpm: i32, max_concurrent: i32) -> Result<i64> {
        Ok(self
            .db
            .query_one(
                "SELECT dialer.create_batch($1, $2, $3, $4, $5, NULL, 3)",
                &[&self.agency_id, &self.mapping_id, &name, &cpm, &max_concurrent],
            )?
            .get(0))
    }

    /// Adds `n` contacts `prefix` + 7 digits (from `first`), through `dialer.add_contacts`.
    pub fn add_contacts(&mut self, batch: i64, prefix: &str, first: usize, n: usize) -> Result<i32> {
        let mut added = 0;
        let mut i = first;
        while i < first + n {
            let end = (i + 10_000).min(first + n);
            let contacts: Vec<serde_json::Value> = (i..end)
                .map(|k| serde_json::json!({"phone_number": format!("{prefix}{k:07}"), "name": format!("Lead {k}"), "variables": {"idx": k}}))
                .collect();
            let got: i32 = self.db.query_one("SELECT dialer.add_contacts($1, $2)", &[&batch, &serde_json::Value::Array(contacts)])?.get(0);
            added += got;
            i = end;
        }
        Ok(added)
    }
}
