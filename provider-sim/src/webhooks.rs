//! Webhooks sent the way the real services send them: from a background task once the call's
//! state has changed, signed, best effort (short timeout, no retries), loopback targets only.
//! Each attempt is kept in an in-memory list (`GET /_sim/webhooks`, `Simulator::webhooks`).

use crate::config::{check_loopback_url, Provider};
use crate::log::Clock;
use crate::mutex::lock;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// One webhook the simulator sent (or chose not to send).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WebhookRecord {
    /// 1, 2, 3, ... in the order the attempts started.
    pub seq: u64,
    pub provider: Provider,
    /// Ultravox event (`call.started`, ...) or Twilio `StatusCallbackEvent` (`initiated`, ...).
    pub event: String,
    pub url: String,
    pub method: String,
    pub call_id: String,
    /// When the request was sent (unix epoch µs).
    pub sent_at_us: i64,
    /// HTTP status the receiver answered; `None` if it did not answer or nothing was sent.
    pub status: Option<u16>,
    pub answered_at_us: Option<i64>,
    /// Why it failed or was not sent.
    pub error: Option<String>,
    /// The body as sent (JSON for Ultravox, form for Twilio).
    #[serde(default)]
    pub body: String,
}

#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct WebhookCounters {
    pub sent: u64,
    pub failed: u64,
    pub skipped: u64,
}

struct Inner {
    records: VecDeque<WebhookRecord>,
    next_seq: u64,
    counters: WebhookCounters,
}

/// Most webhook records kept (oldest dropped first).
const CAPACITY: usize = 100_000;

pub(crate) struct WebhookLog {
    clock: Clock,
    inner: Mutex<Inner>,
    agent: ureq::Agent,
}

impl WebhookLog {
    pub fn new(clock: Clock) -> WebhookLog {
        WebhookLog {
            clock,
            inner: Mutex::new(Inner { records: VecDeque::new(), next_seq: 1, counters: WebhookCounters::default() }),
            // No redirects: a loopback receiver must not send us elsewhere.
            agent: ureq::AgentBuilder::new().redirects(0).build(),
        }
    }

    pub fn snapshot(&self) -> Vec<WebhookRecord> {
        lock(&self.inner).records.iter().cloned().collect()
    }

    pub fn counters(&self) -> WebhookCounters {
        lock(&self.inner).counters
    }

    pub fn clear(&self) {
        let mut g = lock(&self.inner);
        g.records.clear();
        g.counters = WebhookCounters::default();
    }

    /// Records an attempt (`skipped` = not sent at all) and returns its `seq`.
    fn push(&self, mut r: WebhookRecord, skipped: bool) -> u64 {
        let mut g = lock(&self.inner);
        r.seq = g.next_seq;
        g.next_seq += 1;
        if skipped {
            g.counters.skipped += 1;
        } else {
            g.counters.sent += 1;
        }
        while g.records.len() >= CAPACITY {
            g.records.pop_front();
        }
        let seq = r.seq;
        g.records.push_back(r);
        seq
    }

    fn finish(&self, seq: u64, status: Option<u16>, error: Option<String>) {
        let now = self.clock.now_us();
        let mut g = lock(&self.inner);
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        if !ok {
            g.counters.failed += 1;
        }
        if let Some(r) = g.records.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = status;
            r.answered_at_us = status.map(|_| now);
            r.error = error.or_else(|| (!ok).then(|| "no 2xx answer".to_string()));
        }
    }
}

/// A webhook to send.
pub(crate) struct Outgoing {
    pub provider: Provider,
    pub event: String,
    pub call_id: String,
    pub url: String,
    pub method: &'static str,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Outgoing {
    /// A JSON body `POST`ed to `url`.
    pub fn json_post(
        provider: Provider,
        event: &str,
        call_id: &str,
        url: String,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    ) -> Self {
        Outgoing {
            provider,
            event: event.to_string(),
            call_id: call_id.to_string(),
            url,
            method: "POST",
            content_type: "application/json",
            body,
            headers,
        }
    }
}

impl WebhookLog {
    /// Sends one webhook (blocking I/O off the async workers, at most `timeout`) and records the outcome.
    pub async fn deliver(&self, o: Outgoing, timeout: Duration) {
        let record = WebhookRecord {
            seq: 0,
            provider: o.provider,
            event: o.event.clone(),
            url: o.url.clone(),
            method: o.method.to_string(),
            call_id: o.call_id.clone(),
            sent_at_us: self.clock.now_us(),
            status: None,
            answered_at_us: None,
            error: None,
            body: String::from_utf8_lossy(&o.body).into_owned(),
        };
        if let Err(e) = check_loopback_url(&o.url) {
            self.push(WebhookRecord { error: Some(format!("not sent: {e}")), ..record }, true);
            return;
        }
        let seq = self.push(record, false);
        let agent = self.agent.clone();
        let sent = tokio::task::spawn_blocking(move || {
            let mut req = agent.request(o.method, &o.url).timeout(timeout).set("User-Agent", "provider-sim-webhooks");
            if o.method == "POST" {
                req = req.set("Content-Type", o.content_type);
            }
            for (k, v) in &o.headers {
                req = req.set(k, v);
            }
            let res = if o.method == "POST" { req.send_bytes(&o.body) } else { req.call() };
            match res {
                Ok(r) => (Some(r.status()), None),
                Err(ureq::Error::Status(code, _)) => (Some(code), None),
                Err(ureq::Error::Transport(t)) => (None, Some(t.to_string())),
            }
        })
        .await;
        let (status, error) = sent.unwrap_or_else(|e| (None, Some(format!("sender task failed: {e}"))));
        self.finish(seq, status, error);
    }
}

/// `X-Ultravox-Webhook-Signature` entry: hex HMAC-SHA256(secret, body ++ timestamp).
pub fn ultravox_signature(secret: &str, body: &[u8], timestamp: &str) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    mac.update(timestamp.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `X-Ultravox-Webhook-Timestamp`: naive ISO 8601 in UTC with microseconds and no offset
/// (what Python's `datetime.now().isoformat()` prints), e.g. `2026-12-01T20:01:02.123456`.
pub(crate) fn naive_timestamp(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map(|d| d.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string()).unwrap_or_default()
}

/// `X-Twilio-Signature`: base64(HMAC-SHA1(auth_token, url ++ each key+value, sorted by key)).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// hex HMAC-SHA256 of the parts, one after the other.
fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Retell's `X-Retell-Signature`: `v=<unix ms>,d=<hex HMAC-SHA256(api key, body ++ ms)>`.
pub fn retell_signature(api_key: &str, body: &[u8], at_ms: i64) -> String {
    let ts = at_ms.to_string();
    format!("v={ts},d={}", hmac_hex(api_key, &[body, ts.as_bytes()]))
}

/// Bland's `X-Webhook-Signature`: hex HMAC-SHA256(signing secret, body).
pub fn bland_signature(secret: &str, body: &[u8]) -> String {
    hmac_hex(secret, &[body])
}

/// A Vapi HMAC plan's `x-signature`: hex HMAC-SHA256(secret, "{timestamp}.{body}").
pub fn vapi_hmac_signature(secret: &str, body: &[u8], timestamp: &str) -> String {
    hmac_hex(secret, &[timestamp.as_bytes(), b".", body])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Twilio's "Validating requests" page (also in twilio-php's docs).
    #[test]
    fn twilio_documented_test_vector() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let params = [
            p("CallSid", "CA1234567890ABCDE"),
            p("Caller", "+14158675309"),
            p("Digits", "1234"),
            p("From", "+14158675309"),
            p("To", "+18005551212"),
        ];
        assert_eq!(twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    }

    #[test]
    fn retell_bland_vapi_signatures() {
        // RFC 4231 test case 2 (key "Jefe"): the message split where each service joins its parts.
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(bland_signature("Jefe", b"what do ya want for nothing?"), want);
        let r = retell_signature("k", b"{}", 1_796_155_262_123);
        assert!(r.starts_with("v=1796155262123,d=") && r.len() == "v=1796155262123,d=".len() + 64, "{r}");
        assert_eq!(vapi_hmac_signature("k", b"body", "17"), hmac_hex("k", &[b"17.body"]));
    }

    #[test]
    fn ultravox_signature_and_naive_timestamp() {
        // RFC 4231 test case 2 (key "Jefe"), split across body and timestamp.
        assert_eq!(
            ultravox_signature("Jefe", b"what do ya want ", "for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let ts = naive_timestamp(1_796_155_262_123_456);
        assert_eq!(ts, "2026-12-01T20:01:02.123456");
    }
}
