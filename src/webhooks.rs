//! Provider webhooks: signature checks and event parsing. Pure: no pgrx.
//!
//! Ultravox signs `raw body || X-Ultravox-Webhook-Timestamp` with HMAC-SHA256 (hex); the
//! `X-Ultravox-Webhook-Signature` header may list several signatures, comma-separated (key
//! rotation). Twilio signs `URL || sorted(key || value)` with HMAC-SHA1 (base64) in
//! `X-Twilio-Signature`; since the URL Twilio called is not in the body, callers pass it in the
//! `X-Webhook-Url` header.

use crate::providers::outcome;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha1::Sha1;
use sha2::Sha256;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// Webhook bodies larger than this are refused before any parsing.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// An Ultravox timestamp further than this from now is stale (replay protection).
pub const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq)]
pub struct CallEvent {
    pub provider_call_id: String,
    /// A stable id for this delivery, so a repeat is recognised.
    pub event_id: String,
    pub ended: bool,
    pub end_reason: Option<String>,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
}

/// Header lookup, case-insensitive, from the JSON object the caller passes.
pub fn headers_map(headers: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(obj) = headers.as_object() {
        for (k, v) in obj {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                other => other.to_string(),
            };
            out.insert(k.to_ascii_lowercase(), text);
        }
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn verify_ultravox(secret: &str, body: &str, headers: &HashMap<String, String>, now_epoch: i64) -> Result<(), String> {
    let ts = headers
        .get("x-ultravox-webhook-timestamp")
        .ok_or("missing X-Ultravox-Webhook-Timestamp header")?;
    let sent = webhook_timestamp(ts).ok_or("X-Ultravox-Webhook-Timestamp is not an ISO 8601 date-time")?;
    if (now_epoch - sent).abs() > MAX_SKEW_SECS {
        return Err(format!("stale webhook: timestamp is {}s from now (at most {MAX_SKEW_SECS}s allowed)", now_epoch - sent));
    }
    let given = headers.get("x-ultravox-webhook-signature").ok_or("missing X-Ultravox-Webhook-Signature header")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "unusable webhook secret".to_string())?;
    mac.update(body.as_bytes());
    mac.update(ts.as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    if given.split(',').any(|sig| ct_eq(sig.trim().to_ascii_lowercase().as_bytes(), expected.as_bytes())) {
        Ok(())
    } else {
        Err("webhook signature does not match".into())
    }
}

/// Ultravox's timestamp: an ISO 8601 date-time, sent without a UTC offset (its own example reads
/// it with Python's `datetime.fromisoformat`), which then means UTC; with an offset, or as unix
/// seconds, it is read as given.
pub fn webhook_timestamp(ts: &str) -> Option<i64> {
    let t = ts.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(d.timestamp());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, format) {
            return Some(d.and_utc().timestamp());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, format) {
            return Some(d.timestamp());
        }
    }
    t.parse::<i64>().ok()
}

pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> Result<String, String> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).map_err(|_| "unusable auth token".to_string())?;
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

pub fn verify_twilio(auth_token: &str, body: &str, headers: &HashMap<String, String>) -> Result<(), String> {
    let given = headers.get("x-twilio-signature").ok_or("missing X-Twilio-Signature header")?;
    let url = headers
        .get("x-webhook-url")
        .ok_or("missing X-Webhook-Url header (the full URL Twilio called, needed to check its signature)")?;
    let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let expected = twilio_signature(auth_token, url, &params)?;
    if ct_eq(given.trim().as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err("webhook signature does not match".into())
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub fn parse_ultravox(body: &str) -> Result<Option<CallEvent>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("webhook body is not JSON: {e}"))?;
    let event = v.get("event").and_then(Value::as_str).ok_or("webhook body has no \"event\"")?;
    let call = v.get("call").ok_or("webhook body has no \"call\"")?;
    let id = call.get("callId").and_then(Value::as_str).ok_or("webhook call has no callId")?;
    if id.is_empty() || id.len() > 200 {
        return Err("webhook callId is not a call id".into());
    }
    let text = |k: &str| call.get(k).and_then(Value::as_str).map(str::to_string);
    match event {
        "call.ended" => Ok(Some(CallEvent {
            provider_call_id: id.to_string(),
            event_id: format!("{event}:{id}"),
            ended: true,
            end_reason: Some(outcome::ultravox(call.get("endReason").and_then(Value::as_str)).to_string()),
            answered_at: text("joined"),
            ended_at: text("ended"),
        })),
        "call.joined" | "call.started" => Ok(Some(CallEvent {
            provider_call_id: id.to_string(),
            event_id: format!("{event}:{id}"),
            ended: false,
            end_reason: None,
            answered_at: text("joined"),
            ended_at: None,
        })),
        _ => Ok(None),
    }
}

pub fn parse_twilio(body: &str) -> Result<Option<CallEvent>, String> {
    let params: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let sid = params.get("CallSid").ok_or("status callback has no CallSid")?;
    if sid.is_empty() || sid.len() > 64 {
        return Err("CallSid is not a call id".into());
    }
    let status = params.get("CallStatus").ok_or("status callback has no CallStatus")?;
    let ended = crate::providers::twilio::FINAL_STATUSES.contains(&status.as_str());
    let seq = params.get("SequenceNumber").cloned().unwrap_or_else(|| sha256_hex(body));
    let at = params.get("Timestamp").and_then(|t| chrono::DateTime::parse_from_rfc2822(t).ok()).map(|t| t.to_rfc3339());
    // Answered: the in-progress event's time, or on the final event its time less the seconds talked.
    let talked = params.get("CallDuration").and_then(|d| d.parse::<i64>().ok()).filter(|d| *d > 0);
    let answered_at = match (status.as_str(), &at, talked) {
        ("in-progress", Some(t), _) => Some(t.clone()),
        ("completed", Some(t), Some(d)) => chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| (t - chrono::Duration::seconds(d)).to_rfc3339()),
        _ => None,
    };
    Ok(Some(CallEvent {
        provider_call_id: sid.clone(),
        event_id: format!("{sid}:{status}:{seq}"),
        ended,
        end_reason: ended.then(|| outcome::twilio(status, params.get("AnsweredBy").map(String::as_str)).to_string()),
        answered_at,
        ended_at: if ended { at } else { None },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sign(secret: &str, body: &str, ts: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        mac.update(ts.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn ultravox_valid_rotated_tampered_stale() {
        let body = r#"{"event":"call.ended","call":{"callId":"c1","endReason":"hangup"}}"#;
        let ts = "2026-11-21T10:00:00Z";
        let now = chrono::DateTime::parse_from_rfc3339(ts).unwrap().timestamp();
        let good = sign("whsec", body, ts);
        let h = headers_map(&json!({"X-Ultravox-Webhook-Timestamp": ts, "X-Ultravox-Webhook-Signature": format!("deadbeef, {good}")}));
        assert_eq!(verify_ultravox("whsec", body, &h, now + 10), Ok(()));
        assert!(verify_ultravox("whsec", &body.replace("hangup", "unjoined"), &h, now).unwrap_err().contains("does not match"));
        assert!(verify_ultravox("whsec", body, &h, now + 3600).unwrap_err().contains("stale"));
        assert!(verify_ultravox("whsec", body, &HashMap::new(), now).unwrap_err().contains("missing"));
    }

    #[test]
    fn ultravox_timestamps_with_or_without_an_offset() {
        let utc = chrono::DateTime::parse_from_rfc3339("2026-12-01T20:01:02Z").unwrap().timestamp();
        for ts in ["2026-12-01T20:01:02.123456", "2026-12-01T20:01:02", "2026-12-01T20:01:02Z", "2026-12-01T21:01:02+01:00", "2026-12-01 20:01:02.5"] {
            assert_eq!(webhook_timestamp(ts), Some(utc), "{ts}");
        }
        assert_eq!(webhook_timestamp("yesterday"), None);
        let body = r#"{"event":"call.ended","call":{"callId":"c1"}}"#;
        let ts = "2026-12-01T20:01:02.123456";
        let h = headers_map(&json!({"X-Ultravox-Webhook-Timestamp": ts, "X-Ultravox-Webhook-Signature": sign("s", body, ts)}));
        assert_eq!(verify_ultravox("s", body, &h, utc + 5), Ok(()), "a naive timestamp (Ultravox's own form) is UTC");
    }

    #[test]
    fn twilio_known_vector() {
        // The example from Twilio's security documentation.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"), ("Caller", "+12349013030"), ("Digits", "1234"),
            ("From", "+12349013030"), ("To", "+18005551212"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let sig = twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &params).unwrap();
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }

    #[test]
    fn parsing() {
        let e = parse_ultravox(r#"{"event":"call.ended","call":{"callId":"c1","endReason":"unjoined"}}"#).unwrap().unwrap();
        assert!(e.ended);
        assert_eq!(e.end_reason.as_deref(), Some("no-answer"), "in pg_dialer's words");
        assert_eq!(parse_ultravox(r#"{"event":"call.billed","call":{"callId":"c1"}}"#).unwrap(), None);
        assert!(parse_ultravox("not json").is_err());
        assert!(parse_ultravox(r#"{"event":"call.ended"}"#).is_err());
        let t = parse_twilio("CallSid=CA1&CallStatus=busy&SequenceNumber=3").unwrap().unwrap();
        assert_eq!((t.ended, t.end_reason.as_deref(), t.event_id.as_str()), (true, Some("busy"), "CA1:busy:3"));
        let t = parse_twilio("CallSid=CA1&CallStatus=completed&AnsweredBy=machine_start&CallDuration=20&Timestamp=Tue,+01+Dec+2026+10:00:20+%2B0000")
            .unwrap()
            .unwrap();
        assert_eq!(t.end_reason.as_deref(), Some("voicemail"), "an answering machine is voicemail");
        assert_eq!(t.answered_at.as_deref(), Some("2026-12-01T10:00:00+00:00"));
        let t = parse_twilio("CallSid=CA1&CallStatus=in-progress&Timestamp=Tue,+01+Dec+2026+10:00:00+%2B0000").unwrap().unwrap();
        assert_eq!((t.ended, t.answered_at.as_deref()), (false, Some("2026-12-01T10:00:00+00:00")));
        assert!(parse_twilio("CallStatus=busy").is_err());
    }

    #[test]
    fn hostile_input_never_panics() {
        // Property-style sweep over generated junk: parsing and verification only return errors.
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for i in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|j| ((seed >> (j % 56)) as u8).wrapping_add(j as u8)).collect();
            let s = String::from_utf8_lossy(&bytes).to_string();
            let s = if i % 3 == 0 { format!(r#"{{"event":"call.ended","call":{{"callId":{s:?}}}}}"#) } else { s };
            let _ = parse_ultravox(&s);
            let _ = parse_twilio(&s);
            let h = headers_map(&json!({"x-ultravox-webhook-timestamp": s, "x-ultravox-webhook-signature": s, "x-twilio-signature": s, "x-webhook-url": s}));
            let _ = verify_ultravox("k", &s, &h, 0);
            let _ = verify_twilio("k", &s, &h);
        }
    }
}
