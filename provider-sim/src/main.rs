//! `provider-sim` binary: serves the simulator on 127.0.0.1 until SIGINT/SIGTERM.

use clap::Parser;
use provider_sim::{parse_duration_range, Rule, SimConfig, Simulator};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Simulates voice-AI call providers (Ultravox, Twilio, Vapi, Retell, Bland, generic) on loopback.
#[derive(Parser, Debug)]
#[command(name = "provider-sim", version, about)]
struct Args {
    /// TCP port on 127.0.0.1 (0 = ephemeral).
    #[arg(long, default_value_t = 8089)]
    port: u16,
    /// Required API key / Twilio auth token / bearer token (default: accept any).
    #[arg(long, env = "PROVIDER_SIM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Required Twilio AccountSid (default: any).
    #[arg(long)]
    twilio_account_sid: Option<String>,
    /// Delay before answering a create POST.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Extra random delay, uniform in 0..=N ms.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// Fraction of create POSTs answered 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fraction of create POSTs answered 429.
    #[arg(long, default_value_t = 0.0)]
    rate_limit_rate: f64,
    /// Fraction of create POSTs answered 503 (out of capacity).
    #[arg(long, default_value_t = 0.0)]
    capacity_rate: f64,
    /// Retry-After seconds on 429 and 503.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,
    /// Fraction of create POSTs held unanswered for --hang-secs.
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// How long a hung request is held before it is answered 504.
    #[arg(long, default_value_t = 3600)]
    hang_secs: u64,
    /// Fraction of create POSTs whose connection is closed without an answer.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Simulated call length range in ms, "MIN..MAX" (or a single value).
    #[arg(long, value_name = "MIN..MAX")]
    call_duration_ms: Option<String>,
    /// Shortest simulated call in ms (alternative to --call-duration-ms).
    #[arg(long)]
    call_duration_min_ms: Option<u64>,
    /// Longest simulated call in ms (alternative to --call-duration-ms).
    #[arg(long)]
    call_duration_max_ms: Option<u64>,
    /// JSON file with an array of rules.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Append every request record as a JSON line to FILE.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Request records kept in memory for the control API.
    #[arg(long, default_value_t = 1_000_000)]
    log_capacity: usize,
    /// Check create requests against the providers' OpenAPI files in DIR (default: built-in checks only).
    #[arg(long, env = "PROVIDER_SPEC_DIR", value_name = "DIR")]
    spec_dir: Option<PathBuf>,
    /// Send Ultravox webhooks (call.started, call.joined, call.ended) to URL (loopback only).
    #[arg(long, value_name = "URL")]
    ultravox_webhook_url: Option<String>,
    /// Sign Ultravox webhooks with this secret (X-Ultravox-Webhook-Signature).
    #[arg(long, env = "ULTRAVOX_WEBHOOK_SECRET", hide_env_values = true, value_name = "S")]
    ultravox_webhook_secret: Option<String>,
    /// Also send a stale second signature first in the list (receivers must try each).
    #[arg(long)]
    ultravox_webhook_stale_signature: bool,
    /// Time allowed for one webhook delivery.
    #[arg(long, default_value_t = 2000)]
    webhook_timeout_ms: u64,
    /// Send Vapi's end-of-call-report to URL (loopback only).
    #[arg(long, value_name = "URL")]
    vapi_webhook_url: Option<String>,
    /// Vapi's server secret.
    #[arg(long, env = "VAPI_WEBHOOK_SECRET", hide_env_values = true, value_name = "S")]
    vapi_webhook_secret: Option<String>,
    /// How Vapi authenticates: secret (X-Vapi-Secret), bearer or hmac.
    #[arg(long, default_value = "secret", value_name = "MODE")]
    vapi_webhook_auth: String,
    /// Send Retell's call_ended and call_analyzed to URL (loopback only), signed with --api-key.
    #[arg(long, value_name = "URL")]
    retell_webhook_url: Option<String>,
    /// Sign Bland's post-call webhooks (X-Webhook-Signature) with this secret.
    #[arg(long, env = "BLAND_WEBHOOK_SECRET", hide_env_values = true, value_name = "S")]
    bland_webhook_secret: Option<String>,
    /// Send each Vapi/Retell/Bland end-of-call webhook N more times.
    #[arg(long, default_value_t = 0)]
    webhook_redeliveries: u32,
    /// No periodic summary on stderr.
    #[arg(long)]
    quiet: bool,
}

fn build_config(a: &Args) -> Result<SimConfig, String> {
    let mut c = SimConfig {
        latency_ms: a.latency_ms,
        latency_jitter_ms: a.latency_jitter_ms,
        error_rate: a.error_rate,
        rate_limit_rate: a.rate_limit_rate,
        capacity_rate: a.capacity_rate,
        retry_after_secs: a.retry_after_secs,
        hang_rate: a.hang_rate,
        hang_secs: a.hang_secs,
        drop_rate: a.drop_rate,
        api_key: a.api_key.clone(),
        twilio_account_sid: a.twilio_account_sid.clone(),
        log_capacity: a.log_capacity,
        log_file: a.log.clone(),
        spec_dir: a.spec_dir.clone(),
        ultravox_webhook_url: a.ultravox_webhook_url.clone(),
        ultravox_webhook_secret: a.ultravox_webhook_secret.clone(),
        ultravox_webhook_stale_signature: a.ultravox_webhook_stale_signature,
        webhook_timeout_ms: a.webhook_timeout_ms,
        vapi_webhook_url: a.vapi_webhook_url.clone(),
        vapi_webhook_secret: a.vapi_webhook_secret.clone(),
        vapi_webhook_auth: a.vapi_webhook_auth.clone(),
        retell_webhook_url: a.retell_webhook_url.clone(),
        bland_webhook_secret: a.bland_webhook_secret.clone(),
        webhook_redeliveries: a.webhook_redeliveries,
        ..SimConfig::default()
    };
    if let Some(r) = &a.call_duration_ms {
        let (lo, hi) = parse_duration_range(r)?;
        c.call_duration_ms_min = lo;
        c.call_duration_ms_max = hi;
    }
    if let Some(lo) = a.call_duration_min_ms {
        c.call_duration_ms_min = lo;
        c.call_duration_ms_max = c.call_duration_ms_max.max(lo);
    }
    if let Some(hi) = a.call_duration_max_ms {
        c.call_duration_ms_max = hi;
        c.call_duration_ms_min = c.call_duration_ms_min.min(hi);
    }
    if let Some(path) = &a.rules {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--rules {}: {e}", path.display()))?;
        c.rules = serde_json::from_str::<Vec<Rule>>(&text).map_err(|e| format!("--rules {}: {e}", path.display()))?;
    }
    c.validate()?;
    Ok(c)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn summaries(sim: &Simulator) {
    let mut last = u64::MAX;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = sim.stats();
        if s.requests == last && s.active_calls == 0 && s.in_flight == 0 {
            continue;
        }
        last = s.requests;
        eprintln!(
            "provider-sim: requests={} 2xx={} 4xx={} 5xx={} unanswered={} in_flight={} calls={} active_calls={} max_active_calls={} webhooks={} webhooks_failed={}",
            s.requests, s.status_2xx, s.status_4xx, s.status_5xx, s.unanswered, s.in_flight, s.calls_created,
            s.active_calls, s.max_active_calls, s.webhooks_sent, s.webhooks_failed
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provider-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let sim = match Simulator::start(config, args.port) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            eprintln!("provider-sim: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("provider-sim: cannot listen on 127.0.0.1:{}: {e}", args.port);
            return ExitCode::from(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "provider-sim listening on {}", sim.base_url());
        if !args.quiet {
            match sim.spec_dir() {
                Some(d) => eprintln!("provider-sim: checking requests against the specs in {}", d.display()),
                None => eprintln!("provider-sim: built-in request checks only (no --spec-dir)"),
            }
        }
        let _ = out.flush();
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("provider-sim: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        if args.quiet {
            wait_for_signal().await;
        } else {
            tokio::select! {
                _ = wait_for_signal() => {}
                _ = summaries(&sim) => {}
            }
        }
    });
    if !args.quiet {
        let s = sim.stats();
        eprintln!("provider-sim: shutting down after {} requests, {} calls", s.requests, s.calls_created);
    }
    sim.shutdown();
    ExitCode::SUCCESS
}
