//! Runs the `provider-sim` binary as a separate process and drives it with `SimClient`.
#![allow(clippy::result_large_err)]

mod support;

use provider_sim::{Rule, SimClient};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{agent, fresh_temp_file, poll_until};

#[test]
fn binary_serves_logs_and_exits_on_sigterm() {
    let (dir, log) = fresh_temp_file("provider-sim-bin", "log.jsonl");
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
    let a = agent();
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
    let exit = poll_until(Duration::from_secs(10), || child.try_wait().unwrap());
    assert!(exit.success(), "{exit:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(!text.contains("bin-key"));
    let _ = std::fs::remove_dir_all(&dir);
}
