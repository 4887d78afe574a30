//! Provider webhooks: signature checks and event parsing. Pure: no pgrx.
//!
//! Ultravox signs `raw body || X-Ultravox-Webhook-Timestamp` with HMAC-SHA256 (hex); the
//! `X-Ultravox-Webhook-Signature` header may list several signatures, comma-separated (key
//! rotation). Twilio signs `URL || sorted(key || value)` with HMAC-SHA1 (base64) in
//! `X-Twilio-Signature`; since the URL Twilio called is not in the body, callers pass it in the
//! `X-Webhook-Url` header.
//!
//! Vapi (docs.vapi.ai/server-url/server-authentication) sends the server secret itself, as
//! `X-Vapi-Secret` (`X-Vapi-Signature` in its newer pages) or `Authorization: Bearer`, or with an
//! HMAC plan signs `{timestamp}.{body}` (hex HMAC-SHA256 in `x-signature`, the time in
//! `x-timestamp`). Retell (docs.retellai.com/features/secure-webhook, its SDKs' `verify`) sends
//! `x-retell-signature: v=<unix ms>,d=<hex HMAC-SHA256(api key, body ++ ms)>`, refused more than
//! 5 minutes off. Bland (docs.bland.ai/tutorials/webhook-signing) sends
//! `X-Webhook-Signature: <hex HMAC-SHA256(signing secret, body)>`, with no time in it.

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

impl CallEvent {
    /// A post-call report (Vapi, Retell, Bland): the call is over; its start counts as the answer
    /// only if the call was connected (a report of a call nobody picked up still has a start).
    fn end_report(event_id: String, provider_call_id: String, reason: &str, started: Option<&Value>, ended: Option<&Value>) -> Self {
        CallEvent {
            event_id,
            provider_call_id,
            ended: true,
            end_reason: Some(reason.to_string()),
            answered_at: provider_time(started).filter(|_| connected(reason)),
            ended_at: provider_time(ended),
        }
    }
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
    let ts = headers.get("x-ultravox-webhook-timestamp").ok_or("missing X-Ultravox-Webhook-Timestamp header")?;
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
    let url =
        headers.get("x-webhook-url").ok_or("missing X-Webhook-Url header (the full URL Twilio called, needed to check its signature)")?;
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
        ("completed", Some(t), Some(d)) => {
            chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| (t - chrono::Duration::seconds(d)).to_rfc3339())
        }
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

/// The end reasons of a call that connected (someone or something answered): only these take an
/// `answered_at` from a provider's end-of-call event.
fn connected(end_reason: &str) -> bool {
    matches!(end_reason, outcome::HANGUP | outcome::AGENT_HANGUP | outcome::MAX_DURATION | outcome::VOICEMAIL)
}

fn hmac_sha256_hex(key: &str, parts: &[&[u8]]) -> Result<String, String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|_| "unusable webhook secret".to_string())?;
    for p in parts {
        mac.update(p);
    }
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// A unix time in seconds or milliseconds (a value past 10^11 is milliseconds), as milliseconds.
fn epoch_ms(text: &str) -> Option<i64> {
    let n: i64 = text.trim().parse().ok()?;
    Some(if n.abs() >= 100_000_000_000 { n } else { n.checked_mul(1000)? })
}

fn check_skew(sent_ms: i64, now_ms: i64, what: &str) -> Result<(), String> {
    let off = (now_ms - sent_ms) / 1000;
    if off.abs() > MAX_SKEW_SECS {
        return Err(format!("stale webhook: {what} is {off}s from now (at most {MAX_SKEW_SECS}s allowed)"));
    }
    Ok(())
}

/// A provider time (RFC 3339, an ISO 8601 date-time without offset = UTC, or unix milliseconds)
/// as RFC 3339; None when it is none of these.
fn provider_time(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => n.as_i64().and_then(chrono::DateTime::from_timestamp_millis).map(|d| d.to_rfc3339()),
        Value::String(s) => {
            let t = s.trim();
            if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
                return Some(d.to_rfc3339());
            }
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|f| chrono::NaiveDateTime::parse_from_str(t, f).ok())
                .map(|d| d.and_utc().to_rfc3339())
                .or_else(|| {
                    ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"]
                        .iter()
                        .find_map(|f| chrono::DateTime::parse_from_str(t, f).ok())
                        .map(|d| d.to_rfc3339())
                })
        }
        _ => None,
    }
}

fn call_id_text(v: Option<&Value>, what: &str) -> Result<String, String> {
    let id = v.and_then(Value::as_str).ok_or_else(|| format!("webhook body has no {what}"))?;
    if id.is_empty() || id.len() > 200 {
        return Err(format!("webhook {what} is not a call id"));
    }
    Ok(id.to_string())
}

/// Vapi: the server secret as `X-Vapi-Secret` / `X-Vapi-Signature` / `Authorization: Bearer`, or
/// an HMAC plan's `x-signature` over `{x-timestamp}.{body}`. A message's own `timestamp` (unix ms)
/// further than 5 minutes from now is stale.
pub fn verify_vapi(secret: &str, body: &str, headers: &HashMap<String, String>, now_epoch: i64) -> Result<(), String> {
    let now_ms = now_epoch.saturating_mul(1000);
    if let Some(given) = headers.get("x-signature") {
        let ts = headers.get("x-timestamp").ok_or("x-signature without the x-timestamp header it signs")?;
        let sent = epoch_ms(ts).ok_or("x-timestamp is not a unix time")?;
        check_skew(sent, now_ms, "x-timestamp")?;
        let expected = hmac_sha256_hex(secret, &[ts.trim().as_bytes(), b".", body.as_bytes()])?;
        let given = given.trim();
        let given = given.strip_prefix("sha256=").unwrap_or(given).to_ascii_lowercase();
        if !ct_eq(given.as_bytes(), expected.as_bytes()) {
            return Err("webhook signature does not match".into());
        }
    } else {
        let given = headers
            .get("x-vapi-secret")
            .or_else(|| headers.get("x-vapi-signature"))
            .map(|s| s.trim().to_string())
            .or_else(|| {
                headers.get("authorization").and_then(|a| {
                    let a = a.trim();
                    a.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).and_then(|_| a.get(7..)).map(|t| t.trim().to_string())
                })
            })
            .ok_or("missing X-Vapi-Secret (or Authorization: Bearer, or an HMAC x-signature) header")?;
        if !ct_eq(given.as_bytes(), secret.as_bytes()) {
            return Err("webhook secret does not match".into());
        }
    }
    // The message's own time: a delivery replayed later is stale (a redelivery soon after is a duplicate).
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(sent) = v.pointer("/message/timestamp").and_then(Value::as_i64) {
            check_skew(sent, now_ms, "message.timestamp")?;
        }
    }
    Ok(())
}

/// Retell: `x-retell-signature: v=<unix ms>,d=<hex HMAC-SHA256(key, body ++ ms)>`, as its SDKs
/// verify it.
pub fn verify_retell(key: &str, body: &str, headers: &HashMap<String, String>, now_epoch: i64) -> Result<(), String> {
    let sig = headers.get("x-retell-signature").ok_or("missing X-Retell-Signature header")?;
    let rest = sig.trim().strip_prefix("v=").ok_or("X-Retell-Signature is not v=<timestamp>,d=<digest>")?;
    let (ts, digest) = rest.split_once(",d=").ok_or("X-Retell-Signature is not v=<timestamp>,d=<digest>")?;
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) || ts.len() > 15 {
        return Err("X-Retell-Signature's timestamp is not unix milliseconds".into());
    }
    let sent: i64 = ts.parse().map_err(|_| "X-Retell-Signature's timestamp is not unix milliseconds".to_string())?;
    check_skew(sent, now_epoch.saturating_mul(1000), "X-Retell-Signature's timestamp")?;
    let expected = hmac_sha256_hex(key, &[body.as_bytes(), ts.as_bytes()])?;
    if ct_eq(digest.trim().to_ascii_lowercase().as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err("webhook signature does not match".into())
    }
}

/// Bland: `X-Webhook-Signature: <hex HMAC-SHA256(signing secret, body)>`. Bland signs no time:
/// a replay is recognised only as a duplicate of the event it repeats.
pub fn verify_bland(secret: &str, body: &str, headers: &HashMap<String, String>) -> Result<(), String> {
    let given = headers.get("x-webhook-signature").ok_or("missing X-Webhook-Signature header")?;
    let expected = hmac_sha256_hex(secret, &[body.as_bytes()])?;
    if ct_eq(given.trim().to_ascii_lowercase().as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err("webhook signature does not match".into())
    }
}

/// Vapi's server message `end-of-call-report` (`message.call.id`, `endedReason`, `startedAt`,
/// `endedAt`); every other message type is ignored (polling and this report settle the call).
pub fn parse_vapi(body: &str) -> Result<Option<CallEvent>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("webhook body is not JSON: {e}"))?;
    let msg = v.get("message").ok_or("webhook body has no \"message\"")?;
    let kind = msg.get("type").and_then(Value::as_str).ok_or("webhook message has no \"type\"")?;
    if kind != "end-of-call-report" {
        return Ok(None);
    }
    let call = msg.get("call").ok_or("end-of-call-report has no \"call\"")?;
    let id = call_id_text(call.get("id"), "message.call.id")?;
    let field = |k: &str| msg.get(k).filter(|x| !x.is_null()).or_else(|| call.get(k));
    let reason = outcome::vapi(field("endedReason").and_then(Value::as_str));
    Ok(Some(CallEvent::end_report(format!("end-of-call-report:{id}"), id, reason, field("startedAt"), field("endedAt"))))
}

/// Retell's `call_ended` and, after it, `call_analyzed` (each settles the call; the second finds it
/// settled); `call_started` and others are ignored.
pub fn parse_retell(body: &str) -> Result<Option<CallEvent>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("webhook body is not JSON: {e}"))?;
    let event = v.get("event").and_then(Value::as_str).ok_or("webhook body has no \"event\"")?;
    if !matches!(event, "call_ended" | "call_analyzed") {
        return Ok(None);
    }
    let call = v.get("call").ok_or("webhook body has no \"call\"")?;
    let id = call_id_text(call.get("call_id"), "call.call_id")?;
    let status = call.get("call_status").and_then(Value::as_str).unwrap_or("ended");
    let disconnection = call.get("disconnection_reason").and_then(Value::as_str);
    let reason = if status == "ended" || disconnection.is_some() { outcome::retell(disconnection) } else { outcome::FAILED };
    Ok(Some(CallEvent::end_report(format!("{event}:{id}"), id, reason, call.get("start_timestamp"), call.get("end_timestamp"))))
}

/// Bland's post-call webhook: the call object (`call_id`, `status`, `completed`, `answered_by`,
/// `started_at`, `end_at`). A call not over yet is ignored.
pub fn parse_bland(body: &str) -> Result<Option<CallEvent>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("webhook body is not JSON: {e}"))?;
    let id = call_id_text(v.get("call_id").or_else(|| v.get("c_id")), "call_id")?;
    let status = v.get("status").and_then(Value::as_str).unwrap_or("");
    let ended = v.get("completed").and_then(Value::as_bool).unwrap_or(false)
        || matches!(status, "completed" | "complete" | "failed" | "busy" | "no-answer" | "canceled" | "cancelled");
    if !ended {
        return Ok(None);
    }
    let status = if status == "complete" { "completed" } else { status };
    let reason = outcome::bland(status, v.get("answered_by").and_then(Value::as_str));
    let ended_at = v.get("end_at").or_else(|| v.get("ended_at"));
    Ok(Some(CallEvent::end_report(format!("post-call:{id}"), id, reason, v.get("started_at"), ended_at)))
}

/// Normalises a provider timestamp so a malformed one can never break the SQL that stores it.
pub fn clean_timestamp(t: Option<&str>) -> Option<String> {
    t.and_then(|s| chrono::DateTime::parse_from_rfc3339(s.trim()).ok()).map(|d| d.to_rfc3339())
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
        for ts in [
            "2026-12-01T20:01:02.123456",
            "2026-12-01T20:01:02",
            "2026-12-01T20:01:02Z",
            "2026-12-01T21:01:02+01:00",
            "2026-12-01 20:01:02.5",
        ] {
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
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
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
        let t = parse_twilio(
            "CallSid=CA1&CallStatus=completed&AnsweredBy=machine_start&CallDuration=20&Timestamp=Tue,+01+Dec+2026+10:00:20+%2B0000",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.end_reason.as_deref(), Some("voicemail"), "an answering machine is voicemail");
        assert_eq!(t.answered_at.as_deref(), Some("2026-12-01T10:00:00+00:00"));
        let t = parse_twilio("CallSid=CA1&CallStatus=in-progress&Timestamp=Tue,+01+Dec+2026+10:00:00+%2B0000").unwrap().unwrap();
        assert_eq!((t.ended, t.answered_at.as_deref()), (false, Some("2026-12-01T10:00:00+00:00")));
        assert!(parse_twilio("CallStatus=busy").is_err());
    }

    fn hex_mac(key: &str, parts: &[&str]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        for p in parts {
            mac.update(p.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn vapi_secret_bearer_hmac_forged_stale() {
        let now = 1_796_155_262;
        let body = format!(
            r#"{{"message":{{"type":"end-of-call-report","timestamp":{},"call":{{"id":"v1"}},"endedReason":"voicemail","startedAt":"2026-12-01T20:00:00.000Z","endedAt":"2026-12-01T20:01:00.000Z"}}}}"#,
            now * 1000
        );
        for h in [json!({"X-Vapi-Secret": "srv"}), json!({"x-vapi-signature": "srv"}), json!({"Authorization": "Bearer srv"})] {
            assert_eq!(verify_vapi("srv", &body, &headers_map(&h), now), Ok(()), "{h}");
        }
        assert!(verify_vapi("srv", &body, &headers_map(&json!({"X-Vapi-Secret": "srx"})), now).unwrap_err().contains("does not match"));
        assert!(verify_vapi("srv", &body, &HashMap::new(), now).unwrap_err().contains("missing"));
        assert!(verify_vapi("srv", &body, &headers_map(&json!({"X-Vapi-Secret": "srv"})), now + 3600).unwrap_err().contains("stale"));
        let ts = (now * 1000).to_string();
        let sig = hex_mac("srv", &[&ts, ".", &body]);
        let h = headers_map(&json!({"x-signature": sig, "x-timestamp": ts}));
        assert_eq!(verify_vapi("srv", &body, &h, now + 10), Ok(()));
        assert!(verify_vapi("srv", &body.replace("voicemail", "customer-ended-call"), &h, now).unwrap_err().contains("does not match"));
        assert!(verify_vapi("srv", &body, &h, now + 900).unwrap_err().contains("stale"));
        let e = parse_vapi(&body).unwrap().unwrap();
        assert_eq!((e.ended, e.end_reason.as_deref(), e.event_id.as_str()), (true, Some("voicemail"), "end-of-call-report:v1"));
        assert_eq!(e.answered_at.as_deref(), Some("2026-12-01T20:00:00+00:00"));
        assert_eq!(e.ended_at.as_deref(), Some("2026-12-01T20:01:00+00:00"));
        let e = parse_vapi(r#"{"message":{"type":"end-of-call-report","call":{"id":"v2","startedAt":"2026-12-01T20:00:00Z"},"endedReason":"customer-did-not-answer"}}"#).unwrap().unwrap();
        assert_eq!((e.end_reason.as_deref(), e.answered_at), (Some("no-answer"), None), "nobody answered: no answered_at");
        assert_eq!(parse_vapi(r#"{"message":{"type":"status-update","call":{"id":"v1"}}}"#).unwrap(), None);
        assert!(parse_vapi(r#"{"message":{"type":"end-of-call-report"}}"#).is_err());
    }

    #[test]
    fn retell_signature_as_its_sdk_and_both_end_events() {
        let now = 1_796_155_262;
        let body = r#"{"event":"call_ended","call":{"call_id":"call_1","call_status":"ended","disconnection_reason":"dial_busy","end_timestamp":1796155260000}}"#;
        let ts = (now * 1000 - 2000).to_string();
        let h = headers_map(&json!({"x-retell-signature": format!("v={ts},d={}", hex_mac("key_r", &[body, &ts]))}));
        assert_eq!(verify_retell("key_r", body, &h, now), Ok(()));
        assert!(verify_retell("other", body, &h, now).unwrap_err().contains("does not match"));
        assert!(verify_retell("key_r", body, &h, now + 301).unwrap_err().contains("stale"));
        assert!(verify_retell("key_r", body, &headers_map(&json!({"x-retell-signature": "d=00"})), now).is_err());
        assert!(verify_retell("key_r", body, &HashMap::new(), now).unwrap_err().contains("missing"));
        let e = parse_retell(body).unwrap().unwrap();
        assert_eq!((e.end_reason.as_deref(), e.event_id.as_str(), e.answered_at.is_none()), (Some("busy"), "call_ended:call_1", true));
        assert_eq!(e.ended_at.as_deref(), Some("2026-12-01T20:01:00+00:00"));
        let a = parse_retell(&body.replace("call_ended", "call_analyzed")).unwrap().unwrap();
        assert_eq!(a.event_id, "call_analyzed:call_1");
        assert_eq!(parse_retell(r#"{"event":"call_started","call":{"call_id":"c"}}"#).unwrap(), None);
    }

    #[test]
    fn bland_signature_and_post_call_object() {
        let body = r#"{"call_id":"b-1","status":"completed","completed":true,"answered_by":"human","started_at":"2026-12-01T20:00:10.000Z","end_at":"2026-12-01T20:03:10.000Z","call_length":3,"corrected_duration":"180"}"#;
        let h = headers_map(&json!({"X-Webhook-Signature": hex_mac("bsec", &[body])}));
        assert_eq!(verify_bland("bsec", body, &h), Ok(()));
        assert!(verify_bland("bsec", &body.replace("human", "voicemail"), &h).unwrap_err().contains("does not match"));
        assert!(verify_bland("bsec", body, &HashMap::new()).unwrap_err().contains("missing"));
        let e = parse_bland(body).unwrap().unwrap();
        assert_eq!((e.end_reason.as_deref(), e.answered_at.as_deref()), (Some("hangup"), Some("2026-12-01T20:00:10+00:00")));
        assert_eq!(parse_bland(r#"{"call_id":"b-1","status":"in-progress","completed":false}"#).unwrap(), None);
        let e = parse_bland(r#"{"call_id":"b-2","status":"no-answer","completed":true,"answered_by":"no-answer"}"#).unwrap().unwrap();
        assert_eq!(e.end_reason.as_deref(), Some("no-answer"));
        assert!(parse_bland(r#"{"status":"completed"}"#).is_err());
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
            let _ = parse_vapi(&s);
            let _ = parse_retell(&s);
            let _ = parse_bland(&s);
            let h = headers_map(
                &json!({"x-ultravox-webhook-timestamp": s, "x-ultravox-webhook-signature": s, "x-twilio-signature": s, "x-webhook-url": s}),
            );
            let _ = verify_ultravox("k", &s, &h, 0);
            let _ = verify_twilio("k", &s, &h);
            let h2 = headers_map(
                &json!({"x-signature": s, "x-timestamp": s, "x-retell-signature": format!("v={s},d={s}"), "x-webhook-signature": s, "authorization": s}),
            );
            let _ = verify_vapi("k", &s, &h2, 0);
            let _ = verify_retell("k", &s, &h2, 0);
            let _ = verify_bland("k", &s, &h2);
        }
    }
}
