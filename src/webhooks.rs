//! Provider webhooks: signature checks and event parsing. Pure: no pgrx.
//!
//! Ultravox signs `raw body || X-Ultravox-Webhook-Timestamp` with HMAC-SHA256 (hex); the
//! `X-Ultravox-Webhook-Signature` header may list several signatures, comma-separated (key
//! rotation). Twilio signs `URL || sorted(key || value)` with HMAC-SHA1 (base64) in
//! `X-Twilio-Signature`; since the URL Twilio called is not in the body, callers pass it in the
//! `X-Webhook-Url` header.

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
    let sent = chrono::DateTime::parse_from_rfc3339(ts.trim())
        .map(|t| t.timestamp())
        .or_else(|_| ts.trim().parse::<i64>())
        .map_err(|_| "X-Ultravox-Webhook-Timestamp is not a timestamp".to_string())?;
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
            end_reason: text("endReason"),
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
    Ok(Some(CallEvent {
        provider_call_id: sid.clone(),
        event_id: format!("{sid}:{status}:{seq}"),
        ended,
        end_reason: ended.then(|| status.clone()),
        answered_at: None,
        ended_at: None,
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
        assert_eq!(e.end_reason.as_deref(), Some("unjoined"));
        assert_eq!(parse_ultravox(r#"{"event":"call.billed","call":{"callId":"c1"}}"#).unwrap(), None);
        assert!(parse_ultravox("not json").is_err());
        assert!(parse_ultravox(r#"{"event":"call.ended"}"#).is_err());
        let t = parse_twilio("CallSid=CA1&CallStatus=busy&SequenceNumber=3").unwrap().unwrap();
        assert_eq!((t.ended, t.end_reason.as_deref(), t.event_id.as_str()), (true, Some("busy"), "CA1:busy:3"));
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
