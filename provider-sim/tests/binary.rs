//! Runs the `provider-sim` binary as a separate process and drives it with `SimClient`.
#![allow(clippy::result_large_err)]

use provider_sim::{Rule, SimClient};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn binary_serves_logs_and_exits_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("provider-sim-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log.jsonl");
    let _ = std::fs::remove_file(&log);
    let mut child = Command::new(env!("CARGO_BIN_EXE_provider-sim"))
        .args(["--port", "0", "--api-key", "bin-key", "--call-duration-ms", "100..200", "--quiet", "--log"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn provider-sim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base =
        line.trim().strip_prefix("provider-sim listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    assert!(base.starts_with("http://127.0.0.1:"));

    let c = SimClient::new(&base);
    c.wait_ready(Duration::from_secs(5)).unwrap();
    c.set_rules(vec![Rule::new("+15550000001").status(429).times(1)]).unwrap();
    let a = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let body = json!({"medium": {"telnyx": {"outgoing": {"to": "+15550000001", "from": "+15550000000"}}}});
    let post = || a.post(&format!("{base}/api/calls")).set("X-API-Key", "bin-key").send_json(&body);
    match post() {
        Err(ureq::Error::Status(429, r)) => assert_eq!(r.header("retry-after"), Some("1")),
        other => panic!("expected 429, got {other:?}"),
    }
    assert_eq!(post().unwrap().status(), 201);
    assert_eq!(c.requests().unwrap().len(), 2);
    assert_eq!(c.calls().unwrap().len(), 1);
    assert_eq!(c.config().unwrap()["call_duration_ms_max"], 200);

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "provider-sim did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(!text.contains("bin-key"));
    let _ = std::fs::remove_dir_all(&dir);
}
