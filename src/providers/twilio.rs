//! Twilio Programmable Voice, to its published Calls resource:
//! `POST /2010-04-01/Accounts/{sid}/Calls.json`, form-encoded, HTTP basic auth (account SID,
//! auth token). The TwiML `Url`, `Twiml` or `ApplicationSid` comes from the agent mapping's
//! `request_template`; correlation fields ride on the `Url` / `StatusCallback` query strings,
//! since Twilio has no metadata field.

use super::base_url;
use super::prelude::*;
use base64::Engine;

pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// Parameters of Twilio's CreateCallRequest a template may set (To and From are ours); the spec
/// test checks this list against the published description.
pub const CREATE_CALL_FIELDS: TemplateFields = &[
    (
        Kind::String,
        &[
            "Url",
            "Twiml",
            "ApplicationSid",
            "Method",
            "FallbackUrl",
            "FallbackMethod",
            "StatusCallback",
            "StatusCallbackMethod",
            "SendDigits",
            "RecordingChannels",
            "RecordingStatusCallback",
            "RecordingStatusCallbackMethod",
            "SipAuthUsername",
            "SipAuthPassword",
            "MachineDetection",
            "Trim",
            "CallerId",
            "AsyncAmd",
            "AsyncAmdStatusCallback",
            "AsyncAmdStatusCallbackMethod",
            "Byoc",
            "CallReason",
            "CallToken",
            "RecordingTrack",
            "ClientNotificationUrl",
        ],
    ),
    (
        Kind::Integer,
        &[
            "Timeout",
            "MachineDetectionTimeout",
            "MachineDetectionSpeechThreshold",
            "MachineDetectionSpeechEndThreshold",
            "MachineDetectionSilenceTimeout",
            "TimeLimit",
        ],
    ),
    (Kind::Boolean, &["Record"]),
    (Kind::StringList, &["StatusCallbackEvent", "RecordingStatusCallbackEvent"]),
];
const OURS: &[&str] = &["To", "From"];
const INSTRUCTIONS: [&str; 3] = ["Url", "Twiml", "ApplicationSid"];

pub struct Twilio;

/// An AccountSid as Twilio issues them: `AC` and 32 hex digits.
fn account_sid(creds: &Credentials) -> Result<&str, String> {
    match creds.account_sid.as_deref() {
        Some(s) if is_account_sid(s) => Ok(s),
        _ => Err("twilio credentials need an account_sid (AC followed by 32 hex digits)".into()),
    }
}

pub fn is_account_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn basic_auth(sid: &str, token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}")))
}

fn with_query(url: &str, pairs: &[(&str, String)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", ser.finish())
}

fn check_template(template: &Map<String, Value>) -> Result<(), String> {
    check_fields("Twilio", "Twilio's CreateCallRequest", template, CREATE_CALL_FIELDS, OURS)?;
    let given: Vec<&str> = INSTRUCTIONS.iter().copied().filter(|k| template.contains_key(*k)).collect();
    if given.len() != 1 {
        return Err(format!(
            "a twilio agent mapping needs exactly one of request_template.Url, .Twiml or .ApplicationSid (the call's instructions), got {}",
            if given.is_empty() { "none".to_string() } else { given.join(" and ") }
        ));
    }
    Ok(())
}

fn auth_headers(creds: &Credentials) -> Result<Vec<(String, String)>, String> {
    Ok(vec![("Authorization".into(), basic_auth(account_sid(creds)?, &creds.api_key))])
}

impl Adapter for Twilio {
    /// Form-encoded calls, basic auth and the account in every path: Twilio writes its own.
    fn json_api(&self) -> Option<&'static JsonApi> {
        None
    }

    fn check_mapping(&self, mapping: &Mapping) -> Result<(), String> {
        need_from_number("Twilio", mapping)?;
        check_template(mapping.template()?)
    }

    fn call_request(&self, target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
        let sid = account_sid(&target.credentials)?;
        let from = need_from_number("Twilio", &target.mapping)?;
        let template = target.mapping.template()?;
        check_template(template)?;
        let correlation = [
            ("batch_id", call.batch_id.to_string()),
            ("contact_id", call.contact_id.to_string()),
            ("idempotency_key", call.idempotency_key.clone()),
        ];
        let mut form: Vec<(String, String)> = vec![("To".into(), call.phone_number.clone()), ("From".into(), from.into())];
        for (k, v) in template {
            match (k.as_str(), v) {
                ("Url" | "StatusCallback", Value::String(url)) => form.push((k.clone(), with_query(url, &correlation))),
                (_, Value::Array(items)) => form.extend(items.iter().filter_map(Value::as_str).map(|e| (k.clone(), e.to_string()))),
                ("StatusCallbackEvent" | "RecordingStatusCallbackEvent", Value::String(s)) => {
                    form.extend(s.split_whitespace().map(|e| (k.clone(), e.to_string())))
                }
                (_, Value::String(s)) => form.push((k.clone(), s.clone())),
                (_, Value::Number(n)) => form.push((k.clone(), n.to_string())),
                (_, Value::Bool(b)) => form.push((k.clone(), b.to_string())),
                _ => {}
            }
        }
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &form {
            ser.append_pair(k, v);
        }
        let url = format!("{}/2010-04-01/Accounts/{sid}/Calls.json", base_url(&target.credentials, DEFAULT_BASE_URL));
        let audit_form: Map<String, Value> = form.iter().fold(Map::new(), |mut m, (k, v)| {
            match m.get_mut(k) {
                Some(Value::Array(a)) => a.push(json!(v)),
                Some(existing) => *existing = json!([existing.clone(), v]),
                None => {
                    m.insert(k.clone(), json!(v));
                }
            }
            m
        });
        let mut headers = auth_headers(&target.credentials)?;
        headers.push(("Content-Type".into(), "application/x-www-form-urlencoded".into()));
        Ok(HttpRequest {
            method: Method::Post,
            audit: json!({"method": "POST", "url": url, "form": audit_form}).to_string(),
            url,
            headers,
            body: Some(ser.finish()),
            secrets: vec![target.credentials.api_key.clone()],
            call_id_pointer: None,
        })
    }

    fn call_id(&self, body: &str) -> Option<String> {
        json_text(body, "sid")
    }

    /// Twilio reports its own rate limit as HTTP 429 or as error code 20429; 503 is a capacity wait too.
    fn is_capacity_wait(&self, response: &HttpResponse) -> bool {
        matches!(response.status, 429 | 503)
            || serde_json::from_str::<Value>(&response.body).ok().and_then(|v| v.get("code").and_then(Value::as_i64)) == Some(20429)
    }

    fn status_request(&self, creds: &Credentials, call_sid: &str) -> Result<HttpRequest, String> {
        let sid = account_sid(creds)?;
        let url = format!("{}/2010-04-01/Accounts/{sid}/Calls/{}.json", base_url(creds, DEFAULT_BASE_URL), path_segment(call_sid));
        HttpRequest::json(Method::Get, url, auth_headers(creds)?, None, vec![creds.api_key.clone()])
    }

    fn status_of(&self, v: &Value) -> Option<CallStatus> {
        Some(call_status(v, v.get("status").and_then(Value::as_str)?))
    }

    /// Twilio keeps no metadata, so a lost attempt is searched by number: the calls to it, newest
    /// first (not filtered by StartTime: a call queued over the account's rate has none yet).
    fn lookup_request(&self, attempt: &InDoubt, creds: &Credentials) -> Result<HttpRequest, String> {
        let sid = account_sid(creds)?;
        let url = format!(
            "{}/2010-04-01/Accounts/{sid}/Calls.json?To={}&PageSize=50",
            base_url(creds, DEFAULT_BASE_URL),
            super::lookup::enc(&attempt.phone_number)
        );
        HttpRequest::json(Method::Get, url, auth_headers(creds)?, None, vec![creds.api_key.clone()])
    }

    /// Adopts only a call to that number created at or after the claim (to the second, Twilio's
    /// resolution). Anything else stays in doubt: an earlier call of the day is someone else's
    /// attempt, and "none found" cannot prove this one was never placed.
    fn parse_lookup(&self, attempt: &InDoubt, response: &HttpResponse) -> LookupResult {
        let Some(v) = ok_json(response) else { return LookupResult::Unknown };
        let Some(Value::Array(calls)) = v.get("calls") else { return LookupResult::Unknown };
        let Ok(claimed) = chrono::DateTime::parse_from_rfc3339(&attempt.claimed_at) else { return LookupResult::Unknown };
        let claimed_sec = claimed.timestamp();
        let found = calls.iter().find(|c| {
            let to_matches = c.get("to").and_then(Value::as_str) == Some(attempt.phone_number.as_str());
            let created = c
                .get("date_created")
                .and_then(Value::as_str)
                .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
                .map(|d| d.timestamp());
            to_matches && created.is_some_and(|t| t >= claimed_sec)
        });
        match found {
            Some(c) => LookupResult::Found { provider_call_id: c.get("sid").and_then(Value::as_str).map(str::to_string) },
            None => LookupResult::Unknown,
        }
    }
}

/// A Twilio call resource (or status callback, as JSON) read as a status. `answered_at` is
/// derived: Twilio gives the end time and the seconds talked.
fn call_status(v: &Value, status: &str) -> CallStatus {
    let ended = FINAL_STATUSES.contains(&status);
    let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let end = text("end_time").and_then(|t| chrono::DateTime::parse_from_rfc2822(t).ok());
    let duration = text("duration").and_then(|d| d.parse::<i64>().ok()).or_else(|| v.get("duration").and_then(Value::as_i64));
    let answered = match (end, duration) {
        (Some(e), Some(d)) if d > 0 && status == "completed" => Some((e - chrono::Duration::seconds(d)).to_rfc3339()),
        _ => None,
    };
    CallStatus {
        ended,
        end_reason: ended.then(|| outcome::twilio(status, text("answered_by")).to_string()),
        answered_at: answered,
        ended_at: end.map(|e| e.to_rfc3339()),
    }
}

pub const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "no-answer", "failed", "canceled"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::{call, mapping, target, SID};

    fn form(req: &HttpRequest) -> Vec<(String, String)> {
        form_urlencoded::parse(req.body.as_deref().unwrap_or("").as_bytes()).into_owned().collect()
    }

    #[test]
    fn form_request_with_basic_auth_and_callbacks() {
        let t = target(
            "twilio",
            mapping(
                None,
                Some("+15550009999"),
                json!({"Url": "https://example.com/twiml", "StatusCallback": "https://example.com/status",
                              "MachineDetection": "Enable", "StatusCallbackEvent": ["answered", "completed"], "Timeout": 20}),
            ),
        );
        let req = Twilio.call_request(&t, &call()).unwrap();
        assert_eq!(req.url, format!("http://127.0.0.1:9/2010-04-01/Accounts/{SID}/Calls.json"));
        let auth = req.headers.iter().find(|(k, _)| k == "Authorization").unwrap();
        assert_eq!(auth.1, format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SID}:k-secret-123"))));
        let pairs = form(&req);
        let get = |k: &str| pairs.iter().filter(|(a, _)| a == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        assert_eq!(get("To"), vec!["+15550001111"]);
        assert_eq!(get("From"), vec!["+15550009999"]);
        assert_eq!(get("Url"), vec!["https://example.com/twiml?batch_id=3&contact_id=42&idempotency_key=pgd-3-42-1"]);
        assert_eq!(get("StatusCallbackEvent"), vec!["answered", "completed"]);
        assert_eq!(get("MachineDetection"), vec!["Enable"]);
        assert_eq!(get("Timeout"), vec!["20"]);
        assert!(!req.audit.to_string().contains("k-secret-123"));
    }

    #[test]
    fn mapping_checks() {
        let e = |from: Option<&str>, t: Value| Twilio.check_mapping(&mapping(None, from, t)).unwrap_err();
        assert!(e(Some("+15550009999"), json!({})).contains("exactly one of request_template.Url"));
        assert!(e(Some("+15550009999"), json!({"Url": "https://x", "Twiml": "<Response/>"})).contains("Url and Twiml"));
        assert!(e(None, json!({"Twiml": "<Response/>"})).contains("from_number"));
        assert!(e(Some("+15550009999"), json!({"Twiml": "<Response/>", "MachineDetecton": "Enable"}))
            .contains("no field named \"MachineDetecton\""));
        assert!(e(Some("+15550009999"), json!({"Twiml": "<Response/>", "Timeout": "20"})).contains("an integer"));
        assert!(Twilio.check_mapping(&mapping(None, Some("+15550009999"), json!({"ApplicationSid": "AP123"}))).is_ok());
        let mut t = target("twilio", mapping(None, Some("+15550009999"), json!({"Twiml": "<Response/>"})));
        t.credentials.account_sid = Some("AC123".into());
        assert!(Twilio.call_request(&t, &call()).unwrap_err().contains("32 hex digits"));
    }

    #[test]
    fn capacity_by_code_and_voicemail_status() {
        assert!(Twilio.is_capacity_wait(&HttpResponse { status: 400, retry_after: None, body: r#"{"code":20429}"#.into() }));
        let s = Twilio.parse_status(&HttpResponse { status: 200, retry_after: None, body: r#"{"status":"no-answer"}"#.into() }).unwrap();
        assert_eq!((s.ended, s.end_reason.as_deref()), (true, Some("no-answer")));
        let body = r#"{"status":"completed","answered_by":"machine_start","duration":"25","end_time":"Tue, 01 Dec 2026 10:00:25 +0000"}"#;
        let s = Twilio.parse_status(&HttpResponse { status: 200, retry_after: None, body: body.into() }).unwrap();
        assert_eq!(s.end_reason.as_deref(), Some("voicemail"));
        assert_eq!(s.answered_at.as_deref(), Some("2026-12-01T10:00:00+00:00"));
        let s = Twilio.parse_status(&HttpResponse { status: 200, retry_after: None, body: r#"{"status":"ringing"}"#.into() }).unwrap();
        assert!(!s.ended);
    }

    #[test]
    fn lookup_adopts_only_a_call_created_after_the_claim() {
        let a = InDoubt {
            call_id: 1,
            provider: "twilio".into(),
            idempotency_key: "k".into(),
            phone_number: "+15550001111".into(),
            claimed_at: "2026-11-21T10:00:00.400Z".into(),
        };
        let creds = Credentials { api_key: "k".into(), base_url: Some("http://h".into()), account_sid: Some(SID.into()) };
        assert_eq!(
            Twilio.lookup_request(&a, &creds).unwrap().url,
            format!("http://h/2010-04-01/Accounts/{SID}/Calls.json?To=%2B15550001111&PageSize=50")
        );
        let ok = |b: &str| HttpResponse { status: 200, retry_after: None, body: b.into() };
        let earlier = r#"{"sid":"CA0","to":"+15550001111","date_created":"Sat, 21 Nov 2026 09:00:00 +0000","start_time":"Sat, 21 Nov 2026 09:00:01 +0000"}"#;
        let queued = r#"{"sid":"CA1","to":"+15550001111","date_created":"Sat, 21 Nov 2026 10:00:00 +0000","start_time":null}"#;
        assert_eq!(
            Twilio.parse_lookup(&a, &ok(&format!(r#"{{"calls":[{queued},{earlier}]}}"#))),
            LookupResult::Found { provider_call_id: Some("CA1".into()) }
        );
        assert_eq!(
            Twilio.parse_lookup(&a, &ok(&format!(r#"{{"calls":[{earlier}]}}"#))),
            LookupResult::Unknown,
            "an earlier call is not ours"
        );
        assert_eq!(Twilio.parse_lookup(&a, &ok(r#"{"calls":[]}"#)), LookupResult::Unknown, "none found proves nothing: stays in doubt");
    }
}
