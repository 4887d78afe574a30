//! The BullMQ peer: Redis (Debian's redis-server, on a free loopback port, no persistence) and
//! the Node program in `bench/peers/bullmq/`.

use crate::cleanup;
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
        bail!("node {v} is too old for BullMQ 5 (18+ needed), or run with --skip-bullmq");
    }
    let dir = peer_dir();
    if !dir.join("node_modules/bullmq/package.json").exists() || !dir.join("node_modules/ioredis/package.json").exists() {
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
