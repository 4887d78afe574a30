//! A throwaway Postgres cluster (15 or 17) for the demo, like `pg_dialer_integration::Cluster` but with
//! errors a newcomer can act on instead of panics, and `pg_dialer` + `pg_cron` preloaded.

use postgres::{Client, NoTls};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The Postgres programs: `PG_DIALER_PG_BIN` (set by the Makefile to the private copy the
/// extension was installed into, target/pgNN), else the system's newest.
pub fn pg_bin() -> String {
    std::env::var("PG_DIALER_PG_BIN").unwrap_or_else(|_| system_pg_bin())
}

/// The Postgres major of `pg_bin()` (its folder is …/postgresql/NN/bin), for messages and paths.
pub fn pg_major() -> String {
    Path::new(&pg_bin())
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .filter(|n| n.parse::<u32>().is_ok())
        .unwrap_or("15")
        .to_string()
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

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A Postgres program, run as `postgres` when we are root (Postgres refuses to run as root).
/// It gets its own process group so that a Ctrl-C in the terminal reaches only the demo, which
/// then shuts the cluster down in order.
fn pg_command(program: &str) -> Command {
    let path = format!("{}/{program}", pg_bin());
    let mut c = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    };
    c.process_group(0);
    c
}

fn run(mut cmd: Command, what: &str) -> Result<Output, String> {
    cmd.output().map_err(|e| format!("could not run {what}: {e}"))
}

/// Checks what the demo needs before touching anything, with the fix for each gap.
pub fn preflight() -> Result<(), String> {
    for prog in ["initdb", "pg_ctl", "postgres"] {
        if !Path::new(&pg_bin()).join(prog).exists() {
            return Err(format!("Postgres {} is not installed ({}/{prog} is missing): run `make setup`", pg_major(), pg_bin()));
        }
    }
    let pg_config = Path::new(&pg_bin()).join("pg_config");
    let ask = |flag: &str, fallback: &str| -> PathBuf {
        Command::new(&pg_config)
            .arg(flag)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_else(|| PathBuf::from(fallback))
    };
    let major = pg_major();
    let libdir = ask("--pkglibdir", &format!("/usr/lib/postgresql/{major}/lib"));
    let sharedir = ask("--sharedir", &format!("/usr/share/postgresql/{major}"));
    let ext = sharedir.join("extension");
    if !libdir.join("pg_dialer.so").exists() || !ext.join("pg_dialer.control").exists() {
        return Err(format!(
            "the pg_dialer extension is not installed into Postgres {major} ({} or {} is missing): \
             run `make install-release` (or `make demo`, which does it first)",
            libdir.join("pg_dialer.so").display(),
            ext.join("pg_dialer.control").display()
        ));
    }
    if !libdir.join("pg_cron.so").exists() || !ext.join("pg_cron.control").exists() {
        return Err(format!("pg_cron is not installed (Debian package postgresql-{major}-cron): run `make setup`"));
    }
    if running_as_root() {
        let ok = Command::new("id").arg("postgres").output().map(|o| o.status.success()).unwrap_or(false);
        if !ok {
            return Err("running as root, but there is no `postgres` user to run the cluster as \
                        (Postgres refuses root): run `make setup`, or run the demo as a normal user"
                .into());
        }
    }
    Ok(())
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    running: bool,
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("could not find a free port on 127.0.0.1: {e}"))
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str().ok_or_else(|| format!("path {p:?} is not UTF-8"))
}

impl Cluster {
    /// initdb + start. `conf` lines are appended to postgresql.conf.
    pub fn start(conf: &[String]) -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("pg_dialer_demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("could not create {}: {e}", dir.display()))?;
        // From here on, Drop removes the directory whatever happens.
        let mut cluster = Cluster { dir, port: 0, running: false };
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&cluster.dir);
            let out = run(chown, "chown")?;
            if !out.status.success() {
                return Err(format!(
                    "could not hand {} to the postgres user: {}",
                    cluster.dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let data = cluster.data();
        let mut initdb = pg_command("initdb");
        initdb.args(["-D", path_str(&data)?, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C"]);
        let out = run(initdb, "initdb")?;
        if !out.status.success() {
            return Err(format!("initdb failed:\n{}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        cluster.port = free_port()?;
        let mut text = format!(
            "\n# --- pg_dialer demo ---\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
            cluster.port,
            path_str(&cluster.dir)?
        );
        for line in conf {
            text.push_str(line);
            text.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).map_err(|e| format!("could not read {}: {e}", conf_path.display()))?;
        existing.push_str(&text);
        std::fs::write(&conf_path, existing).map_err(|e| format!("could not write {}: {e}", conf_path.display()))?;
        // The demo connects as postgres without a password; the web console's sign-in role needs its own.
        let hba = data.join("pg_hba.conf");
        std::fs::write(&hba, "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
            .map_err(|e| format!("could not write {}: {e}", hba.display()))?;

        let out = cluster.pg_ctl(&["start", "-w", "-t", "60"])?;
        if !out.status.success() {
            let log = cluster.server_log();
            let hint = if log.contains("could not access file \"pg_dialer\"") {
                "\nhint: the pg_dialer library is missing: run `make install-release`"
            } else if log.contains("could not access file \"pg_cron\"") {
                "\nhint: pg_cron is missing: run `make setup`"
            } else {
                ""
            };
            return Err(format!(
                "Postgres did not start: {}\n--- last lines of the server log ---\n{}{hint}",
                String::from_utf8_lossy(&out.stderr).trim(),
                tail(&log, 15)
            ));
        }
        cluster.running = true;
        Ok(cluster)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, String> {
        let mut c = pg_command("pg_ctl");
        c.args(["-D", path_str(&self.data())?, "-l", path_str(&self.log_path())?]).args(args);
        run(c, "pg_ctl")
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn connect(&self) -> Result<Client, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.conninfo(), NoTls) {
                Ok(c) => return Ok(c),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(format!("could not connect to the demo cluster on port {}: {e}", self.port)),
            }
        }
    }

    /// Fast shutdown (the worker finishes its step), immediate if that takes too long.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let fast = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "15"]);
        if !matches!(fast, Ok(ref o) if o.status.success()) {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "15"]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
