//! The machine and the software measured, for the report.

use std::process::Command;

pub struct Machine {
    pub nproc: usize,
    pub mem_gib: f64,
    pub cpu: String,
    pub kernel: String,
    pub postgres: String,
    pub node: String,
    pub redis: String,
    pub bullmq: String,
    /// What pg_dialer build was measured: PG_DIALER_BENCH_ENGINE, else `git describe` of this checkout.
    pub engine: String,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|| "not found".into())
}

pub fn machine() -> Machine {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let version = |pkg: &str| {
        std::fs::read_to_string(crate::bullmq::peer_dir().join("node_modules").join(pkg).join("package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "not installed".into())
    };
    let bullmq = format!("{} (ioredis {}, pg {})", version("bullmq"), version("ioredis"), version("pg"));
    let engine = std::env::var("PG_DIALER_BENCH_ENGINE").unwrap_or_else(|_| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new("git").arg("-C").arg(&root).args(["describe", "--always", "--dirty"]).output();
        match out {
            Ok(o) if o.status.success() => format!("checkout {}", String::from_utf8_lossy(&o.stdout).trim()),
            _ => "unknown".into(),
        }
    });
    Machine {
        engine,
        nproc,
        mem_gib: mem_kb / 1024.0 / 1024.0,
        cpu,
        kernel: first_line("uname", &["-r"]),
        postgres: first_line(&format!("{}/postgres", crate::cluster::pg_bin()), &["--version"]),
        node: first_line("node", &["--version"]),
        redis: first_line("redis-server", &["--version"]),
        bullmq,
    }
}
