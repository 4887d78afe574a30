//! The BullMQ peer: the Node program in `bench/peers/bullmq/` and its store, Redis (Debian's
//! redis-server, on a free loopback port, no persistence) or Postgres (BullMQ 6's PostgreSQL
//! backend, on a throwaway cluster of the same build and settings as pg_dialer's).

use crate::cleanup;
use crate::cluster::Cluster;
use crate::common::{pgss_create, pgss_top, Opts};
use crate::procstat::{self, PgCpu};
use crate::report::Row;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/bullmq")
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn run_logged(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}):\n{}", out.status, error_lines(&err).join("\n"));
    }
    Ok(())
}

/// The lines that say what went wrong: npm's own `npm error` lines (not the usage text it prints
/// after them), or the last lines of whatever else failed.
fn error_lines(stderr: &str) -> Vec<&str> {
    let lines: Vec<&str> = stderr.lines().collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .take_while(|l| !l.contains("npm error Clean install a project") && !l.contains("npm error Usage:"))
        .filter(|l| l.starts_with("npm error") || l.starts_with("npm ERR!"))
        .collect();
    if errors.is_empty() {
        lines[lines.len().saturating_sub(15)..].to_vec()
    } else {
        errors.into_iter().take(20).collect()
    }
}

/// Whether node_modules holds every dependency of package.json at its pinned version (an older
/// checkout's BullMQ 5 is replaced by `npm ci`).
fn installed_as_pinned(dir: &Path) -> bool {
    let read = |p: PathBuf| std::fs::read_to_string(p).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let Some(pkg) = read(dir.join("package.json")) else { return false };
    let Some(deps) = pkg["dependencies"].as_object() else { return false };
    deps.iter().all(|(name, want)| {
        read(dir.join("node_modules").join(name).join("package.json")).is_some_and(|p| p["version"].as_str() == want.as_str())
    })
}

/// Node, the npm packages and redis-server: installs what is missing, or says what to do.
pub fn prepare() -> Result<PathBuf> {
    let node = which("node").ok_or_else(|| {
        anyhow!(
            "node is not installed: the BullMQ side needs Node.js 18+ (Debian: apt-get install -y nodejs npm), or run with --skip-bullmq"
        )
    })?;
    let out = Command::new(&node).arg("--version").output().context("run node --version")?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major: u32 = v.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < 18 {
        bail!("node {v} is too old for the BullMQ peer (18+ needed), or run with --skip-bullmq");
    }
    let dir = peer_dir();
    if !installed_as_pinned(&dir) {
        let npm =
            which("npm").ok_or_else(|| anyhow!("npm is not installed (Debian: apt-get install -y npm), or run with --skip-bullmq"))?;
        let sub = if dir.join("package-lock.json").exists() { "ci" } else { "install" };
        eprintln!("bench: npm {sub} in {} ...", dir.display());
        run_logged(Command::new(npm).arg(sub).args(["--no-audit", "--no-fund"]).current_dir(&dir), &format!("npm {sub}"))?;
    }
    if which("redis-server").is_none() {
        if !crate::cluster::running_as_root() {
            bail!("redis-server is not installed: run `sudo apt-get install -y redis-server`, or run with --skip-bullmq");
        }
        eprintln!("bench: installing redis-server (apt-get) ...");
        let first = run_logged(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "redis-server"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get install redis-server",
        );
        if first.is_err() {
            run_logged(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"), "apt-get update")?;
            run_logged(
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends", "redis-server"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                "apt-get install redis-server",
            )?;
        }
        if which("redis-server").is_none() {
            bail!("redis-server is still missing after apt-get install");
        }
    }
    Ok(node)
}

pub struct Redis {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    cleanup_id: u64,
    dir_cleanup_id: u64,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        let exe = which("redis-server").ok_or_else(|| anyhow!("redis-server is not installed"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("pg_dialer_bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(exe)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("start redis-server")?;
        let cleanup_id = cleanup::register(cleanup::Action::KillGroup(child.id() as i32));
        let dir_cleanup_id = cleanup::register(cleanup::Action::RemoveDir(dir.clone()));
        let r = Redis { child, port, dir, cleanup_id, dir_cleanup_id };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).map(|n| buf[..n].starts_with(b"+PONG")).unwrap_or(false) {
                    return Ok(r);
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        cleanup::kill_group(self.child.id() as i32);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        cleanup::unregister(self.cleanup_id);
        cleanup::unregister(self.dir_cleanup_id);
    }
}

/// Which store BullMQ runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Postgres,
}

impl Backend {
    /// In the order of the table's columns (`Row::bull`).
    pub const ALL: [Backend; 2] = [Backend::Redis, Backend::Postgres];

    pub fn label(self) -> &'static str {
        match self {
            Backend::Redis => "BullMQ on Redis",
            Backend::Postgres => "BullMQ on Postgres",
        }
    }
}

/// The store of one BullMQ run: a redis-server of its own, or a throwaway Postgres cluster started
/// like pg_dialer's (same binaries, same settings; pg_dialer preloaded but off and not created),
/// so that its processes are BullMQ's alone.
pub enum Store {
    Redis(Redis),
    Postgres(Cluster),
}

impl Store {
    /// `name` names the cluster; it loads pg_stat_statements as `opts` says (like pg_dialer's).
    pub fn start(backend: Backend, name: &str, opts: &Opts) -> Result<Store> {
        match backend {
            Backend::Redis => Ok(Store::Redis(Redis::start()?)),
            Backend::Postgres => {
                let mut conf = vec!["dialer.enabled = off".to_string()];
                conf.extend(crate::common::pgss_conf(opts));
                let cluster = Cluster::start(name, &conf)?;
                pgss_create(&mut cluster.connect()?)?;
                Ok(Store::Postgres(cluster))
            }
        }
    }

    /// Points the Node program's config at it.
    pub fn configure(&self, cfg: &mut Value) {
        match self {
            Store::Redis(r) => {
                cfg["backend"] = "redis".into();
                cfg["redis_port"] = r.port.into();
            }
            Store::Postgres(c) => {
                cfg["backend"] = "postgres".into();
                cfg["pg_url"] = format!("postgres://postgres@127.0.0.1:{}/postgres", c.port).into();
            }
        }
    }

    /// CPU seconds of node (`node_pid`) and of the store: redis-server, or every process of the
    /// cluster by role (BullMQ's own connections are its "client backends").
    pub fn cpu(&self, node_pid: i32) -> PgCpu {
        let mut cpu = match self {
            Store::Redis(r) => PgCpu { by_role: [("redis-server".to_string(), procstat::cpu_seconds(r.pid()).unwrap_or(0.0))].into() },
            Store::Postgres(c) => c.postmaster_pid().map(procstat::pg_cpu).unwrap_or_default(),
        };
        cpu.by_role.insert("node".into(), procstat::cpu_seconds(node_pid).unwrap_or(0.0));
        cpu
    }

    /// The store's costliest statements (Postgres), for the details.
    pub fn top_statements(&self, opts: &Opts, n: i64) -> Vec<String> {
        match self {
            Store::Redis(_) => Vec::new(),
            Store::Postgres(c) => match c.connect() {
                Ok(mut db) => pgss_top(&mut db, opts, n).into_iter().map(|l| format!("  {l}")).collect(),
                Err(e) => vec![format!("  pg_stat_statements: {e:#}")],
            },
        }
    }
}

/// A scenario's BullMQ runs, one per backend in `Backend::ALL` order (None: not run).
pub struct BullRuns<T>(pub [Option<Result<T>>; 2]);

impl<T> BullRuns<T> {
    /// `f` for each backend, one after the other, unless the BullMQ side is off or the bench is
    /// interrupted; failures are printed as they happen.
    pub fn run(opts: &Opts, what: &str, f: impl Fn(Backend) -> Result<T>) -> BullRuns<T> {
        BullRuns(Backend::ALL.map(|b| {
            if opts.skip_bullmq || opts.node.is_none() || cleanup::interrupted() {
                return None;
            }
            let r = f(b);
            if let Err(e) = &r {
                eprintln!("bench: {what} ({}) failed: {e:#}", b.label());
            }
            Some(r)
        }))
    }

    /// A scenario in rounds (`opts.rounds`; see --rounds): pg_dialer (`ours`, unless None), then
    /// each backend, and again, so that a slow spell of the machine falls on every system; each
    /// system's rounds merged with `merge`. pg_dialer's result is an error "not run" without `ours`.
    pub fn in_rounds(
        opts: &Opts,
        what: &str,
        ours: Option<&dyn Fn() -> Result<T>>,
        theirs: impl Fn(Backend) -> Result<T>,
        merge: impl Fn(Vec<T>) -> T,
    ) -> (Result<T>, BullRuns<T>) {
        let (mut our_rounds, mut their_rounds) = (Vec::new(), Vec::new());
        for round in 0..opts.rounds {
            if round > 0 && cleanup::interrupted() {
                break;
            }
            if let Some(ours) = ours {
                let r = ours();
                if let Err(e) = &r {
                    eprintln!("bench: {what} (pg_dialer) failed: {e:#}");
                }
                our_rounds.push(r);
            }
            their_rounds.push(BullRuns::run(opts, what, &theirs));
        }
        let ours = crate::common::merge_rounds(our_rounds, &merge).unwrap_or_else(|| Err(anyhow!("not run")));
        (ours, BullRuns::merge(their_rounds, merge))
    }

    /// Each backend's rounds merged (see common::merge_rounds).
    fn merge(rounds: Vec<BullRuns<T>>, merge: impl Fn(Vec<T>) -> T) -> BullRuns<T> {
        let mut by_backend: [Vec<Result<T>>; 2] = [Vec::new(), Vec::new()];
        for round in rounds {
            for (i, r) in round.0.into_iter().enumerate() {
                if let Some(r) = r {
                    by_backend[i].push(r);
                }
            }
        }
        BullRuns(by_backend.map(|rs| crate::common::merge_rounds(rs, &merge)))
    }

    pub fn ok(&self, b: Backend) -> Option<&T> {
        self.0[b as usize].as_ref().and_then(|r| r.as_ref().ok())
    }

    pub fn any_ok(&self) -> bool {
        Backend::ALL.iter().any(|b| self.ok(*b).is_some())
    }

    /// `row` with the BullMQ figures `f` gives (a failed Postgres run says so in its cell).
    pub fn fill(&self, mut row: Row, f: impl Fn(&T) -> Option<f64>) -> Row {
        row.bull = Backend::ALL.map(|b| self.ok(b).and_then(&f));
        if matches!(self.0[1], Some(Err(_))) {
            row = row.bull_pg_na("failed (see details)");
        }
        row
    }

    /// Each run's details, or its error.
    pub fn details(&self, what: &str, f: impl Fn(&T) -> &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (b, r) in Backend::ALL.iter().zip(&self.0) {
            match r {
                Some(Ok(t)) => out.extend(f(t).iter().cloned()),
                Some(Err(e)) => out.push(format!("{} {what} failed: {e:#}", b.label())),
                None => {}
            }
        }
        out
    }
}

/// One run of `node bench.mjs '<config>'`.
pub struct NodeRun {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    cleanup_id: u64,
}

impl NodeRun {
    pub fn start(node: &Path, config: &Value) -> Result<NodeRun> {
        let mut child = Command::new(node)
            .arg("bench.mjs")
            .arg(config.to_string())
            .current_dir(peer_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("start node bench.mjs")?;
        let cleanup_id = cleanup::register(cleanup::Action::KillGroup(child.id() as i32));
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("node stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(NodeRun { child, stdin, lines: rx, cleanup_id })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the JSON line whose "event" is `event`.
    pub fn wait_event(&mut self, event: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if cleanup::interrupted() {
                bail!("interrupted");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("BullMQ peer: no \"{event}\" within {timeout:?}");
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(line) => {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                    if v["event"] == event {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        bail!("BullMQ peer exited ({status}) before \"{event}\" (see its stderr above)");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!("BullMQ peer exited ({status:?}) before \"{event}\" (see its stderr above)");
                }
            }
        }
    }

    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("node stdin closed"))?;
        writeln!(stdin, "{line}").context("write to node")?;
        stdin.flush()?;
        Ok(())
    }

    pub fn finish(mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeRun {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            cleanup::kill_group(self.child.id() as i32);
            let _ = self.child.wait();
        }
        cleanup::unregister(self.cleanup_id);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn npm_errors_come_before_its_usage_text() {
        let stderr = "npm error code EUSAGE\nnpm error\nnpm error `npm ci` can only install packages when your package.json and package-lock.json are in sync.\nnpm error Missing: @msgpackr-extract/msgpackr-extract-linux-x64@3.0.3 from lock file\nnpm error\nnpm error Clean install a project\nnpm error\nnpm error Usage:\nnpm error npm ci\nnpm error Options:\nnpm error [--install-strategy <hoisted|nested|shallow|linked>]\n";
        let lines = super::error_lines(stderr);
        assert!(lines.iter().any(|l| l.contains("Missing: @msgpackr-extract")), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("Options")), "{lines:?}");
    }
}
