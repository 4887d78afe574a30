//! Shared simulator state: config, request log, created calls, fault decisions.

use crate::config::{Provider, SimConfig};
use crate::log::{Clock, RequestLog};
use crate::mutex::lock;
use crate::webhooks::{Outgoing, WebhookLog};
use provider_contract::Contract;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A call created by the simulator (as listed by `GET /_sim/calls`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SimCall {
    pub call_id: String,
    pub provider: Provider,
    pub to: Option<String>,
    pub from: Option<String>,
    /// Metadata sent at creation (`Value::Null` if none).
    #[serde(default)]
    pub metadata: Value,
    pub created_at_us: i64,
    /// When the callee "answers" (20% into the call); `None` if the call never connects.
    pub joined_at_us: Option<i64>,
    /// Scheduled end (created + simulated duration).
    pub ended_at_us: i64,
    /// "hangup" by default; a rule can choose another ("voicemail", "unjoined", "busy", ...).
    pub end_reason: String,
    /// The agent/assistant the request named (Ultravox agent id from the path, Vapi
    /// `assistantId`, Retell `override_agent_id`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

impl SimCall {
    /// `metadata.batch_id` as a string, if present.
    pub fn batch_id(&self) -> Option<String> {
        match self.metadata.get("batch_id")? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
    /// True while `created_at_us <= t < ended_at_us`.
    pub fn active_at(&self, t_us: i64) -> bool {
        self.created_at_us <= t_us && t_us < self.ended_at_us
    }
    /// When the callee's phone starts ringing (5% into the call): before it the call is queued.
    pub fn ringing_at_us(&self) -> i64 {
        self.created_at_us + (self.ended_at_us - self.created_at_us) / 20
    }
    /// Where the call stands at `t_us`; each provider's status names it in its own words.
    pub(crate) fn stage_at(&self, t_us: i64) -> Stage {
        if t_us >= self.ended_at_us {
            Stage::Ended
        } else if self.joined_at_us.is_some_and(|j| j <= t_us) {
            Stage::Answered
        } else if t_us >= self.ringing_at_us() {
            Stage::Ringing
        } else {
            Stage::Queued
        }
    }
}

/// A call's stage at a moment ([`SimCall::stage_at`]): queued, ringing (from 5% into the
/// call), answered (from `joined_at_us`, never for a call that does not connect), ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Queued,
    Ringing,
    Answered,
    Ended,
}

/// Greatest number of calls simultaneously in progress (a call ending at `t` does not
/// overlap one created at `t`).
pub fn max_concurrent_calls<'a>(calls: impl IntoIterator<Item = &'a SimCall>) -> usize {
    let mut ev: Vec<(i64, i32)> = Vec::new();
    for c in calls {
        ev.push((c.created_at_us, 1));
        ev.push((c.ended_at_us, -1));
    }
    ev.sort_unstable(); // -1 sorts before +1 at equal times
    let (mut cur, mut max) = (0i64, 0i64);
    for (_, d) in ev {
        cur += d as i64;
        max = max.max(cur);
    }
    max as usize
}

/// End reasons meaning the callee never answered.
pub(crate) fn never_connects(end_reason: &str) -> bool {
    matches!(end_reason, "unjoined" | "busy" | "no-answer" | "no_answer" | "failed" | "connection_error" | "canceled")
}

/// Counts exposed by `GET /_sim/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SimStats {
    pub requests: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_provider: BTreeMap<String, u64>,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Requests closed without an answer (dropped connection, client gone).
    pub unanswered: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub calls_created: u64,
    pub active_calls: u64,
    /// Greatest number of simultaneous calls seen overall.
    pub max_active_calls: u64,
    /// Greatest number of simultaneous calls per `metadata.batch_id`.
    pub max_active_calls_by_batch: BTreeMap<String, u64>,
    /// Webhook requests made (Ultravox events, Twilio status callbacks).
    #[serde(default)]
    pub webhooks_sent: u64,
    /// Of those, the ones not answered with a 2xx (error status, timeout, refused connection).
    #[serde(default)]
    pub webhooks_failed: u64,
    /// Webhooks not sent because the target was not a loopback URL.
    #[serde(default)]
    pub webhooks_skipped: u64,
}

pub(crate) struct CallState {
    pub call: SimCall,
    /// Request body (Ultravox echoes it back in the call object).
    pub body: Value,
    pub account_sid: Option<String>,
    /// Twilio `MachineDetection` (`Enable` / `DetectMessageEnd`); Bland `answered_by_enabled`
    /// is stored as `Enable`.
    pub machine_detection: Option<String>,
}

/// What a provider handler knows about a call it is about to create.
pub(crate) struct NewCall {
    pub provider: Provider,
    pub call_id: String,
    pub to: String,
    pub from: Option<String>,
    pub metadata: Value,
    pub body: Value,
    pub account_sid: Option<String>,
    pub machine_detection: Option<String>,
    pub agent_id: Option<String>,
}

impl NewCall {
    /// A call with no caller id, account, answering-machine detection or agent (set those after).
    pub fn new(provider: Provider, call_id: String, to: String, metadata: Value, body: Value) -> NewCall {
        NewCall { provider, call_id, to, from: None, metadata, body, account_sid: None, machine_detection: None, agent_id: None }
    }
}

#[derive(Default)]
pub(crate) struct CallStore {
    pub calls: Vec<CallState>,
    by_id: HashMap<String, usize>,
    active_ends: BinaryHeap<Reverse<i64>>,
    max_active: usize,
}

impl CallStore {
    pub fn insert(&mut self, c: CallState, now_us: i64) {
        self.active_at(now_us);
        self.active_ends.push(Reverse(c.call.ended_at_us));
        self.max_active = self.max_active.max(self.active_ends.len());
        self.by_id.insert(c.call.call_id.clone(), self.calls.len());
        self.calls.push(c);
    }
    pub fn get(&self, id: &str) -> Option<&CallState> {
        self.by_id.get(id).and_then(|&i| self.calls.get(i))
    }
    pub fn active_at(&mut self, now_us: i64) -> usize {
        while self.active_ends.peek().is_some_and(|Reverse(e)| *e <= now_us) {
            self.active_ends.pop();
        }
        self.active_ends.len()
    }
}

/// What to do with a create request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Create {
        duration_ms: u64,
        end_reason: Option<String>,
    },
    RateLimited {
        retry_after_secs: u64,
    },
    /// 503 with `Retry-After`: the provider is out of capacity.
    Capacity {
        retry_after_secs: u64,
        message: Option<String>,
    },
    Error {
        status: u16,
        message: Option<String>,
    },
    Hang {
        secs: u64,
    },
    Drop,
}

pub(crate) struct AppState {
    pub clock: Clock,
    pub config: Mutex<SimConfig>,
    pub log: Arc<RequestLog>,
    pub calls: Mutex<CallStore>,
    /// Request checks: the providers' OpenAPI files (`spec_dir`) or the built-in ones.
    pub contract: Contract,
    pub webhooks: WebhookLog,
}

/// The state as the request handlers hold it.
pub(crate) type St = Arc<AppState>;

impl AppState {
    /// Fails (`InvalidInput`) on a spec directory that does not load or a non-loopback
    /// webhook URL; other out-of-range knobs are clamped.
    pub fn new(mut config: SimConfig) -> std::io::Result<AppState> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        config.check_webhook_urls().map_err(invalid)?;
        let contract = match &config.spec_dir {
            Some(dir) => Contract::load(dir).map_err(|e| invalid(format!("spec_dir: {e}")))?,
            None => Contract::builtin(),
        };
        config.sanitize();
        let clock = Clock::new();
        let log = RequestLog::new(clock, config.log_capacity, config.log_file.as_deref())?;
        Ok(AppState {
            clock,
            config: Mutex::new(config),
            log: Arc::new(log),
            calls: Mutex::new(CallStore::default()),
            contract,
            webhooks: WebhookLog::new(clock),
        })
    }

    pub fn config(&self) -> SimConfig {
        lock(&self.config).clone()
    }

    pub fn api_key(&self) -> Option<String> {
        lock(&self.config).api_key.clone()
    }

    /// Sends one webhook within the configured timeout and records the outcome.
    pub async fn deliver(&self, o: Outgoing) {
        let timeout = Duration::from_millis(self.config().webhook_timeout_ms.max(1));
        self.webhooks.deliver(o, timeout).await;
    }

    /// Decides the fate of a create request (consuming a matching rule) and its delay.
    pub fn decide(&self, provider: Provider, to: &str) -> (Duration, Outcome) {
        let mut cfg = lock(&self.config);
        let mut rng = rand::rng();
        let rule = match cfg.rules.iter().position(|r| r.matches(provider, to)) {
            Some(i) => {
                let r = cfg.rules[i].clone();
                if let Some(t) = cfg.rules[i].times.as_mut() {
                    *t = t.saturating_sub(1);
                    if *t == 0 {
                        cfg.rules.remove(i);
                    }
                }
                Some(r)
            }
            None => None,
        };
        let jitter = if cfg.latency_jitter_ms > 0 { rng.random_range(0..=cfg.latency_jitter_ms) } else { 0 };
        let base = rule.as_ref().and_then(|r| r.latency_ms).unwrap_or(cfg.latency_ms);
        let delay = Duration::from_millis(base + jitter);
        let duration = |rng: &mut rand::rngs::ThreadRng| {
            rng.random_range(cfg.call_duration_ms_min..=cfg.call_duration_ms_max.max(cfg.call_duration_ms_min))
        };
        let outcome = match rule {
            Some(r) => {
                if r.drop_connection {
                    Outcome::Drop
                } else if r.hang {
                    Outcome::Hang { secs: r.hang_secs.unwrap_or(cfg.hang_secs) }
                } else {
                    match r.status {
                        Some(429) => Outcome::RateLimited { retry_after_secs: r.retry_after_secs.unwrap_or(cfg.retry_after_secs) },
                        Some(503) => Outcome::Capacity {
                            retry_after_secs: r.retry_after_secs.unwrap_or(cfg.retry_after_secs),
                            message: r.message.clone(),
                        },
                        Some(s) if s >= 400 => Outcome::Error { status: s, message: r.message.clone() },
                        _ => Outcome::Create {
                            duration_ms: r.duration_ms.unwrap_or_else(|| duration(&mut rng)),
                            end_reason: r.end_reason.clone(),
                        },
                    }
                }
            }
            None => {
                let x: f64 = rng.random();
                let t_drop = cfg.drop_rate;
                let t_hang = t_drop + cfg.hang_rate;
                let t_429 = t_hang + cfg.rate_limit_rate;
                let t_503 = t_429 + cfg.capacity_rate;
                let t_500 = t_503 + cfg.error_rate;
                if x < t_drop {
                    Outcome::Drop
                } else if x < t_hang {
                    Outcome::Hang { secs: cfg.hang_secs }
                } else if x < t_429 {
                    Outcome::RateLimited { retry_after_secs: cfg.retry_after_secs }
                } else if x < t_503 {
                    Outcome::Capacity { retry_after_secs: cfg.retry_after_secs, message: None }
                } else if x < t_500 {
                    Outcome::Error { status: 500, message: None }
                } else {
                    Outcome::Create { duration_ms: duration(&mut rng), end_reason: None }
                }
            }
        };
        (delay, outcome)
    }

    /// Stores a new call and returns a copy of its public record.
    pub fn create_call(&self, n: NewCall, duration_ms: u64, end_reason: Option<String>) -> SimCall {
        let now = self.clock.now_us();
        let dur_us = (duration_ms as i64).saturating_mul(1000);
        let end_reason = end_reason.unwrap_or_else(|| "hangup".to_string());
        let joined_at_us = if never_connects(&end_reason) { None } else { Some(now + dur_us / 5) };
        let call = SimCall {
            call_id: n.call_id,
            provider: n.provider,
            to: Some(n.to),
            from: n.from,
            metadata: n.metadata,
            created_at_us: now,
            joined_at_us,
            ended_at_us: now + dur_us,
            end_reason,
            agent_id: n.agent_id,
        };
        let out = call.clone();
        lock(&self.calls).insert(CallState { call, body: n.body, account_sid: n.account_sid, machine_detection: n.machine_detection }, now);
        out
    }

    pub fn calls(&self) -> Vec<SimCall> {
        lock(&self.calls).calls.iter().map(|c| c.call.clone()).collect()
    }

    pub fn reset(&self) {
        lock(&self.config).rules.clear();
        *lock(&self.calls) = CallStore::default();
        self.log.clear();
        self.webhooks.clear();
    }

    pub fn stats(&self) -> SimStats {
        self.stats_with(true)
    }

    /// The counters; `by_batch` adds each batch's greatest concurrency, which reads every call
    /// (a caller polling for progress leaves it out: with 100,000 calls it cost the simulator
    /// more CPU than answering the requests did).
    pub fn stats_with(&self, by_batch: bool) -> SimStats {
        let (c, in_flight) = self.log.counters();
        let now = self.clock.now_us();
        let (calls_created, active, max_active, by_batch) = {
            let mut store = lock(&self.calls);
            let active = store.active_at(now);
            let mut per_batch: BTreeMap<String, u64> = BTreeMap::new();
            if by_batch {
                let mut grouped: BTreeMap<String, Vec<&SimCall>> = BTreeMap::new();
                for stored in &store.calls {
                    if let Some(b) = stored.call.batch_id() {
                        grouped.entry(b).or_default().push(&stored.call);
                    }
                }
                per_batch = grouped.into_iter().map(|(b, v)| (b, max_concurrent_calls(v) as u64)).collect();
            }
            (store.calls.len(), active, store.max_active, per_batch)
        };
        let class = |lo: u16| c.by_status.iter().filter(|(s, _)| **s / 100 == lo / 100).map(|(_, n)| n).sum();
        let wh = self.webhooks.counters();
        SimStats {
            webhooks_sent: wh.sent,
            webhooks_failed: wh.failed,
            webhooks_skipped: wh.skipped,
            requests: c.total,
            by_status: c.by_status.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            by_provider: c.by_provider.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            status_2xx: class(200),
            status_4xx: class(400),
            status_5xx: class(500),
            unanswered: c.unanswered,
            in_flight,
            max_in_flight: c.max_in_flight,
            calls_created: calls_created as u64,
            active_calls: active as u64,
            max_active_calls: max_active as u64,
            max_active_calls_by_batch: by_batch,
        }
    }
}

/// Value of `metadata.<field>` compared as text (strings verbatim, others as JSON).
pub(crate) fn metadata_field_matches(metadata: &Value, field: &str, want: &str) -> bool {
    match metadata.get(field) {
        Some(Value::String(s)) => s == want,
        Some(Value::Null) | None => false,
        Some(other) => {
            let text = other.to_string();
            text == want
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(a: i64, b: i64) -> SimCall {
        SimCall {
            call_id: String::new(),
            provider: Provider::Generic,
            to: None,
            from: None,
            metadata: Value::Null,
            created_at_us: a,
            joined_at_us: None,
            ended_at_us: b,
            end_reason: "hangup".into(),
            agent_id: None,
        }
    }

    #[test]
    fn concurrency_sweep() {
        let cs = [call(0, 10), call(5, 15), call(10, 20), call(12, 13)];
        assert_eq!(max_concurrent_calls(&cs), 3);
        assert_eq!(max_concurrent_calls(&cs[..1]), 1);
        assert_eq!(max_concurrent_calls(&[]), 0);
    }

    #[test]
    fn stages_follow_the_clock() {
        // Rings 5% in (t=5), answered at 20% (t=20), ends at t=100.
        let answered = SimCall { joined_at_us: Some(20), ..call(0, 100) };
        let stages: Vec<Stage> = [0, 5, 19, 20, 99, 100].into_iter().map(|t| answered.stage_at(t)).collect();
        use Stage::*;
        assert_eq!(stages, [Queued, Ringing, Ringing, Answered, Answered, Ended]);
        // A call that never connects rings until it ends.
        assert_eq!(call(0, 100).stage_at(99), Ringing);
    }

    #[test]
    fn rules_consumed_and_first_match_wins() {
        use crate::config::Rule;
        let st = AppState::new(SimConfig {
            rules: vec![Rule::new("+1").status(429).times(1), Rule::new("+1").status(500)],
            ..SimConfig::default()
        })
        .unwrap();
        assert_eq!(st.decide(Provider::Ultravox, "+1").1, Outcome::RateLimited { retry_after_secs: 1 });
        assert_eq!(st.decide(Provider::Ultravox, "+1").1, Outcome::Error { status: 500, message: None });
        assert_eq!(st.decide(Provider::Ultravox, "+1").1, Outcome::Error { status: 500, message: None });
        assert!(matches!(st.decide(Provider::Ultravox, "+2").1, Outcome::Create { .. }));
    }

    #[test]
    fn capacity_from_rules_and_rate() {
        use crate::config::Rule;
        let st = AppState::new(SimConfig {
            rules: vec![Rule::new("+1").status(503).retry_after_secs(9).times(1)],
            retry_after_secs: 2,
            ..SimConfig::default()
        })
        .unwrap();
        assert_eq!(st.decide(Provider::Bland, "+1").1, Outcome::Capacity { retry_after_secs: 9, message: None });
        lock(&st.config).capacity_rate = 1.0;
        assert_eq!(st.decide(Provider::Vapi, "+2").1, Outcome::Capacity { retry_after_secs: 2, message: None });
    }
}
