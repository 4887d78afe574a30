//! Blocking client of the control API, for tests that run the simulator as a separate process.

use crate::config::Rule;
use crate::log::RequestRecord;
use crate::state::{SimCall, SimStats};
use crate::webhooks::WebhookRecord;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::{Duration, Instant};

/// An error talking to the simulator's control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimClientError(pub String);

impl std::fmt::Display for SimClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "provider-sim control API: {}", self.0)
    }
}

impl std::error::Error for SimClientError {}

impl From<ureq::Error> for SimClientError {
    fn from(e: ureq::Error) -> Self {
        match e {
            ureq::Error::Status(code, resp) => {
                let body = resp.into_string().unwrap_or_default();
                SimClientError(format!("HTTP {code}: {body}"))
            }
            other => SimClientError(other.to_string()),
        }
    }
}

impl From<std::io::Error> for SimClientError {
    fn from(e: std::io::Error) -> Self {
        SimClientError(e.to_string())
    }
}

/// Blocking control-API client: `SimClient::new("http://127.0.0.1:8089")`.
#[derive(Clone, Debug)]
pub struct SimClient {
    base: String,
    agent: ureq::Agent,
}

impl SimClient {
    pub fn new(base_url: impl Into<String>) -> SimClient {
        let base = base_url.into().trim_end_matches('/').to_string();
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
        SimClient { base, agent }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, SimClientError> {
        let resp = self.agent.get(&format!("{}{}", self.base, path)).call()?;
        Ok(resp.into_json::<T>()?)
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, SimClientError> {
        let resp = self.agent.post(&format!("{}{}", self.base, path)).send_json(body)?;
        Ok(resp.into_json::<T>()?)
    }

    /// Polls `GET /_sim/health` until it answers or `timeout` passes (for a freshly spawned process).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), SimClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.get::<Value>("/_sim/health") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn requests(&self) -> Result<Vec<RequestRecord>, SimClientError> {
        self.get("/_sim/requests")
    }

    /// Records with `seq > since_seq`.
    pub fn requests_since(&self, since_seq: u64) -> Result<Vec<RequestRecord>, SimClientError> {
        self.get(&format!("/_sim/requests?since_seq={since_seq}"))
    }

    pub fn calls(&self) -> Result<Vec<SimCall>, SimClientError> {
        self.get("/_sim/calls")
    }

    /// Replaces the rule list.
    pub fn set_rules(&self, rules: Vec<Rule>) -> Result<(), SimClientError> {
        let body = serde_json::to_value(rules).map_err(|e| SimClientError(e.to_string()))?;
        self.post::<Value>("/_sim/rules", &body).map(|_| ())
    }

    /// Partial config update (`{"error_rate": 0.2}`); returns the full config (without the key).
    pub fn update_config(&self, patch: Value) -> Result<Value, SimClientError> {
        self.post("/_sim/config", &patch)
    }

    /// The current config (without the key; `api_key_set` tells whether one is set).
    pub fn config(&self) -> Result<Value, SimClientError> {
        self.get("/_sim/config")
    }

    /// Clears the request log, calls, webhooks and rules.
    pub fn reset(&self) -> Result<(), SimClientError> {
        self.post::<Value>("/_sim/reset", &Value::Null).map(|_| ())
    }

    pub fn stats(&self) -> Result<SimStats, SimClientError> {
        self.get("/_sim/stats")
    }

    /// The stats without the per-batch concurrency: cheap enough to poll for progress.
    pub fn counters(&self) -> Result<SimStats, SimClientError> {
        self.get("/_sim/stats?by_batch=false")
    }

    /// Webhooks the simulator sent (Ultravox events, Twilio status callbacks).
    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>, SimClientError> {
        self.get("/_sim/webhooks")
    }
}
