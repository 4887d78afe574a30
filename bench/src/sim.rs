//! The provider simulator in a process of its own (this binary, re-run as `__sim`), so that its
//! CPU can be read from /proc apart from the bench's. Read over its control API.

use crate::cleanup;
use anyhow::{anyhow, bail, Context, Result};
use provider_sim::{RequestRecord, SimClient, SimConfig, Simulator};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

pub const API_KEY: &str = "sk-bench-5be0c7a1";

pub struct SimProcess {
    child: Child,
    // Closing it tells the simulator to exit.
    _stdin: Option<ChildStdin>,
    pub url: String,
    pub client: SimClient,
    cleanup_id: u64,
}

impl SimProcess {
    pub fn start(latency_ms: u64, call_ms: (u64, u64)) -> Result<SimProcess> {
        let exe = std::env::current_exe().context("find the bench's own executable")?;
        let mut child = Command::new(exe)
            .args(["__sim", "--latency-ms", &latency_ms.to_string(), "--call-ms", &format!("{}..{}", call_ms.0, call_ms.1)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("start the provider simulator process")?;
        let cleanup_id = cleanup::register(cleanup::Action::KillGroup(child.id() as i32));
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("simulator stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("read the simulator's first line")?;
        let url = line
            .trim()
            .strip_prefix("provider-sim listening on ")
            .ok_or_else(|| anyhow!("unexpected first line from the simulator: {line:?}"))?
            .to_string();
        let client = SimClient::new(url.clone());
        client.wait_ready(Duration::from_secs(10)).map_err(|e| anyhow!("simulator not ready: {e}"))?;
        let stdin = child.stdin.take();
        Ok(SimProcess { child, _stdin: stdin, url, client, cleanup_id })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn calls_created(&self) -> Result<u64> {
        Ok(self.client.counters().map_err(|e| anyhow!("{e}"))?.calls_created)
    }

    /// POSTs that created (or tried to create) calls, in arrival order.
    pub fn posts(&self) -> Result<Vec<RequestRecord>> {
        let mut v: Vec<RequestRecord> = self
            .client
            .requests()
            .map_err(|e| anyhow!("{e}"))?
            .into_iter()
            .filter(|r| {
                r.method == "POST" && (r.path == "/api/calls" || (r.path.starts_with("/api/agents/") && r.path.ends_with("/calls")))
            })
            .collect();
        v.sort_by_key(|r| r.seq);
        Ok(v)
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        self._stdin.take();
        for _ in 0..40 {
            if let Ok(Some(_)) = self.child.try_wait() {
                cleanup::unregister(self.cleanup_id);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cleanup::kill_group(self.child.id() as i32);
        let _ = self.child.wait();
        cleanup::unregister(self.cleanup_id);
    }
}

/// `pg_dialer_bench __sim --latency-ms N --call-ms A..B`: serve until stdin closes.
pub fn serve_main(args: &[String]) -> Result<()> {
    let mut latency_ms = 0;
    let mut call = (50, 100);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--latency-ms" => latency_ms = it.next().and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("--latency-ms N"))?,
            "--call-ms" => {
                let v = it.next().ok_or_else(|| anyhow!("--call-ms A..B"))?;
                call = provider_sim::parse_duration_range(v).map_err(|e| anyhow!(e))?;
            }
            other => bail!("__sim: unknown argument {other}"),
        }
    }
    let config = SimConfig {
        api_key: Some(API_KEY.to_string()),
        latency_ms,
        call_duration_ms_min: call.0,
        call_duration_ms_max: call.1,
        log_capacity: 4_000_000,
        ..SimConfig::default()
    };
    let sim = Simulator::start(config, 0).context("start the simulator")?;
    println!("provider-sim listening on {}", sim.base_url());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Parent gone or done: stdin reaches EOF.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    sim.shutdown();
    Ok(())
}
