//! Throughput probe: `cargo run -p provider-sim --release --example loadgen -- [REQUESTS] [THREADS] [URL]`.
//! Without URL it starts an in-process simulator (checking requests against the specs in
//! `PROVIDER_SPEC_DIR` when that is set). Each thread keeps one keep-alive connection.

use provider_sim::{SimConfig, Simulator};
use serde_json::json;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let total: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let (sim, base) = match args.get(3) {
        Some(url) => (None, url.trim_end_matches('/').to_string()),
        None => {
            let s = Simulator::start(
                SimConfig {
                    call_duration_ms_min: 1000,
                    call_duration_ms_max: 1000,
                    spec_dir: std::env::var_os("PROVIDER_SPEC_DIR").map(Into::into),
                    ..SimConfig::default()
                },
                0,
            )
            .expect("start");
            let b = s.base_url();
            (Some(s), b)
        }
    };
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).max_idle_connections_per_host(1).build();
                let mut ok = 0usize;
                for i in (t..total).step_by(threads) {
                    let body = json!({
                        "medium": {"telnyx": {"outgoing": {"to": format!("+1555{i:07}"), "from": "+15550000000"}}},
                        "metadata": {"batch_id": "load", "idempotency_key": format!("k{i}")}
                    });
                    if agent.post(&format!("{base}/api/calls")).send_json(body).is_ok() {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let secs = t0.elapsed().as_secs_f64();
    println!("{ok}/{total} created in {secs:.2}s = {:.0} req/s ({threads} client threads)", total as f64 / secs);
    if let Some(s) = sim {
        let st = s.stats();
        println!(
            "server: requests={} 2xx={} max_in_flight={} max_active_calls={}",
            st.requests, st.status_2xx, st.max_in_flight, st.max_active_calls
        );
    }
}
