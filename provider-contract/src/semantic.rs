//! Checks written in our own code: rules the OpenAPI schemas cannot express (always on), and
//! field-name lists used when no spec directory is given.
//!
//! The name lists state field names only (no spec text); `tests.rs` compares each with the
//! spec file so that a change on the provider's side shows up as a failing test.

use crate::violation::{join, type_name, unknown_field_message, Violation};
use crate::Operation;
use serde_json::{Map, Value};

/// `+` then 2 to 15 digits, the first not 0 (ITU-T E.164 as providers write it).
pub fn is_e164(s: &str) -> bool {
    let Some(d) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

/// Twilio treats `Url=` like no `Url` at all.
pub(crate) fn drop_empty_form_values(obj: &Map<String, Value>) -> Map<String, Value> {
    obj.iter().filter(|(_, v)| !matches!(v, Value::String(s) if s.is_empty())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

// ---- field-name lists (used without a spec directory) -------------------------------------

#[rustfmt::skip]
pub(crate) const ULTRAVOX_START_CALL_FIELDS: &[&str] = &[
    "systemPrompt", "temperature", "model", "voice", "externalVoice", "languageHint",
    "initialMessages", "joinTimeout", "maxDuration", "timeExceededMessage",
    "inactivityMessages", "selectedTools", "medium", "recordingEnabled", "firstSpeaker",
    "transcriptOptional", "initialOutputMedium", "vadSettings", "firstSpeakerSettings",
    "experimentalSettings", "metadata", "initialState", "dataConnection", "callbacks",
    "voiceOverrides", "retentionPolicy", "sharedSecrets",
];

// The spec lists `agentId` here too (ignored when the URL names the agent).
#[rustfmt::skip]
pub(crate) const ULTRAVOX_START_AGENT_CALL_FIELDS: &[&str] = &[
    "templateContext", "initialMessages", "metadata", "medium", "joinTimeout", "maxDuration",
    "recordingEnabled", "initialOutputMedium", "firstSpeakerSettings", "dataConnection",
    "experimentalSettings", "callbacks", "voice", "voiceOverrides", "toolOverrides",
    "retentionPolicy", "sharedSecrets", "agentId",
];

pub(crate) const ULTRAVOX_MEDIUM_FIELDS: &[&str] = &["webRtc", "twilio", "serverWebSocket", "telnyx", "plivo", "exotel", "sip"];
pub(crate) const ULTRAVOX_PHONE_MEDIUM_FIELDS: &[&str] = &["outgoing", "dtmfHandling"];
pub(crate) const ULTRAVOX_OUTGOING_FIELDS: &[&str] = &["to", "from", "additionalParams"];
pub(crate) const ULTRAVOX_FIRST_SPEAKER_FIELDS: &[&str] = &["user", "agent"];

/// The carriers through which Ultravox dials out itself, with their message type names.
#[rustfmt::skip]
pub(crate) const ULTRAVOX_PHONE_CARRIERS: &[(&str, &str, &str)] = &[
    ("telnyx", "ultravox.v1.CallMedium_TelnyxMedium", "ultravox.v1.TelnyxMedium_OutgoingRequestParams"),
    ("twilio", "ultravox.v1.CallMedium_TwilioMedium", "ultravox.v1.TwilioMedium_OutgoingRequestParams"),
    ("plivo", "ultravox.v1.CallMedium_PlivoMedium", "ultravox.v1.PlivoMedium_OutgoingRequestParams"),
];

#[rustfmt::skip]
pub(crate) const TWILIO_CREATE_CALL_FIELDS: &[&str] = &[
    "To", "From", "Method", "FallbackUrl", "FallbackMethod", "StatusCallback",
    "StatusCallbackEvent", "StatusCallbackMethod", "SendDigits", "Timeout", "Record",
    "RecordingChannels", "RecordingStatusCallback", "RecordingStatusCallbackMethod",
    "SipAuthUsername", "SipAuthPassword", "MachineDetection", "MachineDetectionTimeout",
    "RecordingStatusCallbackEvent", "Trim", "CallerId", "MachineDetectionSpeechThreshold",
    "MachineDetectionSpeechEndThreshold", "MachineDetectionSilenceTimeout", "AsyncAmd",
    "AsyncAmdStatusCallback", "AsyncAmdStatusCallbackMethod", "Byoc", "CallReason",
    "CallToken", "RecordingTrack", "TimeLimit", "ClientNotificationUrl", "Url", "Twiml",
    "ApplicationSid",
];

#[rustfmt::skip]
pub(crate) const VAPI_CREATE_CALL_FIELDS: &[&str] = &[
    "transport", "customers", "name", "schedulePlan", "assistantId", "assistant",
    "assistantOverrides", "squadId", "squad", "squadOverrides", "workflowId", "workflow",
    "workflowOverrides", "phoneNumberId", "phoneNumber", "customerId", "customer",
];
#[rustfmt::skip]
pub(crate) const VAPI_CUSTOMER_FIELDS: &[&str] = &[
    "numberE164CheckEnabled", "extension", "assistantOverrides", "number", "sipUri", "name",
    "email", "externalId",
];

#[rustfmt::skip]
pub(crate) const RETELL_CREATE_PHONE_CALL_FIELDS: &[&str] = &[
    "from_number", "to_number", "override_agent_id", "override_agent_version",
    "agent_override", "metadata", "retell_llm_dynamic_variables", "custom_sip_headers",
    "ignore_e164_validation",
];

/// Body parameters of Bland's "Send Call" (`POST https://api.bland.ai/v1/calls`), as listed
/// on docs.bland.ai, page "Send Call" (/api-v1/post/calls), with `start_node_id` (described
/// on that page) and `answered_by_enabled` (referred to by the "Call Details" page,
/// /api-v1/get/calls-id). Bland publishes no OpenAPI file; this list is the contract.
/// Each entry: name and the JSON types accepted (`null` is accepted for every optional one).
pub const BLAND_SEND_CALL_FIELDS: &[(&str, &[&str])] = &[
    ("phone_number", &["string"]),
    ("voice", &["string"]),
    ("pathway_id", &["string"]),
    ("pathway_version", &["integer"]),
    ("start_node_id", &["string"]),
    ("task", &["string"]),
    ("first_sentence", &["string"]),
    ("persona_id", &["string"]),
    ("model", &["string"]),
    ("language", &["string"]),
    ("wait_for_greeting", &["boolean"]),
    ("pronunciation_guide", &["array"]),
    ("temperature", &["number", "integer"]),
    ("interruption_threshold", &["number", "integer"]),
    ("from", &["string"]),
    ("dialing_strategy", &["object"]),
    ("timezone", &["string"]),
    ("start_time", &["string"]),
    ("transfer_phone_number", &["string"]),
    ("transfer_list", &["object"]),
    ("max_duration", &["number", "integer"]),
    ("tools", &["array"]),
    ("background_track", &["string"]),
    ("noise_cancellation", &["boolean"]),
    ("block_interruptions", &["boolean"]),
    ("record", &["boolean"]),
    ("voicemail", &["object"]),
    ("citation_schema_ids", &["array"]),
    ("summary_prompt", &["string"]),
    ("retry", &["object"]),
    ("dispositions", &["array"]),
    ("request_data", &["object"]),
    ("metadata", &["object"]),
    ("webhook", &["string"]),
    ("webhook_events", &["array"]),
    ("dynamic_data", &["array"]),
    ("keywords", &["array"]),
    ("ignore_button_press", &["boolean"]),
    ("precall_dtmf_sequence", &["string"]),
    ("guard_rails", &["array"]),
    ("answered_by_enabled", &["boolean"]),
];

fn names_at(op: Operation, obj: &Map<String, Value>, at: &str, type_name: &str, allowed: &[&str], out: &mut Vec<Violation>) {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            out.push(Violation::new(join(at, k), unknown_field_message(op, type_name, k)));
        }
    }
}

/// Field names, for a [`crate::Contract::builtin`] (the schema does this when loaded).
pub(crate) fn check_names(op: Operation, obj: &Map<String, Value>, out: &mut Vec<Violation>) {
    match op {
        Operation::UltravoxStartCall | Operation::UltravoxStartAgentCall => {
            let top = if op == Operation::UltravoxStartCall { ULTRAVOX_START_CALL_FIELDS } else { ULTRAVOX_START_AGENT_CALL_FIELDS };
            names_at(op, obj, "", op.request_type(), top, out);
            if let Some(m) = obj.get("medium").and_then(Value::as_object) {
                names_at(op, m, "medium", "ultravox.v1.CallMedium", ULTRAVOX_MEDIUM_FIELDS, out);
                for (carrier, medium_type, outgoing_type) in ULTRAVOX_PHONE_CARRIERS {
                    let Some(pm) = m.get(*carrier).and_then(Value::as_object) else {
                        continue;
                    };
                    let at = format!("medium.{carrier}");
                    names_at(op, pm, &at, medium_type, ULTRAVOX_PHONE_MEDIUM_FIELDS, out);
                    if let Some(o) = pm.get("outgoing").and_then(Value::as_object) {
                        let at = format!("{at}.outgoing");
                        names_at(op, o, &at, outgoing_type, ULTRAVOX_OUTGOING_FIELDS, out);
                    }
                }
            }
            if let Some(f) = obj.get("firstSpeakerSettings").and_then(Value::as_object) {
                let t = "ultravox.v1.FirstSpeakerSettings";
                names_at(op, f, "firstSpeakerSettings", t, ULTRAVOX_FIRST_SPEAKER_FIELDS, out);
            }
        }
        Operation::TwilioCreateCall => names_at(op, obj, "", op.request_type(), TWILIO_CREATE_CALL_FIELDS, out),
        Operation::VapiCreateCall => {
            names_at(op, obj, "", op.request_type(), VAPI_CREATE_CALL_FIELDS, out);
            if let Some(c) = obj.get("customer").and_then(Value::as_object) {
                names_at(op, c, "customer", "CreateCustomerDTO", VAPI_CUSTOMER_FIELDS, out);
            }
        }
        Operation::RetellCreatePhoneCall => names_at(op, obj, "", op.request_type(), RETELL_CREATE_PHONE_CALL_FIELDS, out),
        // Bland's names are checked in `check` (there is no schema to do it instead).
        Operation::BlandSendCall => {}
    }
}

// ---- semantic checks (always) -------------------------------------------------------------

pub(crate) fn check(op: Operation, obj: &Map<String, Value>, out: &mut Vec<Violation>) {
    match op {
        Operation::UltravoxStartCall | Operation::UltravoxStartAgentCall => ultravox(obj, out),
        Operation::TwilioCreateCall => twilio(obj, out),
        Operation::VapiCreateCall => vapi(obj, out),
        Operation::RetellCreatePhoneCall => retell(obj, out),
        Operation::BlandSendCall => bland(obj, out),
    }
}

fn present<'v>(obj: &'v Map<String, Value>, k: &str) -> Option<&'v Value> {
    obj.get(k).filter(|v| !v.is_null())
}

/// A required E.164 number at `path`.
fn e164_field(v: Option<&Value>, path: &str, what: &str, out: &mut Vec<Violation>) {
    match v {
        None | Some(Value::Null) => out.push(Violation::new(path, format!("required: {what}, an E.164 number like +14155552671"))),
        Some(Value::String(s)) if s.trim().is_empty() => {
            out.push(Violation::new(path, format!("must not be empty: {what}, an E.164 number like +14155552671")))
        }
        Some(Value::String(s)) if !is_e164(s) => {
            out.push(Violation::new(path, format!("{s:?} is not an E.164 number (+ then 2 to 15 digits, e.g. +14155552671)")))
        }
        Some(Value::String(_)) => {}
        Some(other) => out.push(Violation::new(path, format!("expected an E.164 string, got {}", type_name(other)))),
    }
}

fn string_map(v: &Value, path: &str, rule: &str, out: &mut Vec<Violation>) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, x) in m {
                if !x.is_string() {
                    out.push(Violation::new(join(path, k), format!("{rule}, got {} {}", type_name(x), x)));
                }
            }
        }
        other => out.push(Violation::new(path, format!("expected an object of strings, got {}", type_name(other)))),
    }
}

fn ultravox(obj: &Map<String, Value>, out: &mut Vec<Violation>) {
    if let Some(m) = obj.get("metadata") {
        string_map(m, "metadata", "metadata values must be strings", out);
        if let Some(m) = m.as_object() {
            for k in m.keys().filter(|k| k.starts_with("ultravox.")) {
                out.push(Violation::new(
                    join("metadata", k),
                    "metadata keys may not start with \"ultravox.\" (reserved for system-provided metadata)",
                ));
            }
        }
    }
    const NO_CALL: &str = "no phone call would be placed: medium.<carrier>.outgoing is required (carrier telnyx, twilio or plivo)";
    match obj.get("medium") {
        None | Some(Value::Null) => out.push(Violation::new("medium", NO_CALL)),
        Some(Value::Object(m)) => {
            let set: Vec<&String> = m.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k).collect();
            match set.as_slice() {
                [] => out.push(Violation::new("medium", NO_CALL)),
                [carrier] => ultravox_medium(carrier, &m[carrier.as_str()], out),
                many => out.push(Violation::new(
                    "medium",
                    format!(
                        "at most one medium may be set, got {}: {}",
                        many.len(),
                        many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )),
            }
        }
        Some(other) => out.push(Violation::new("medium", format!("expected an object, got {}", type_name(other)))),
    }
    let settings = present(obj, "firstSpeakerSettings");
    let mut chosen: Option<&str> = None;
    match settings {
        None => {}
        Some(Value::Object(s)) => {
            let set: Vec<&str> = ["user", "agent"].into_iter().filter(|k| present(s, k).is_some()).collect();
            if set.len() == 1 {
                chosen = Some(set[0]);
            } else {
                out.push(Violation::new("firstSpeakerSettings", format!("exactly one of user or agent must be set, got {}", set.len())));
            }
        }
        Some(other) => out.push(Violation::new("firstSpeakerSettings", format!("expected an object, got {}", type_name(other)))),
    }
    if let (Some(Value::String(first)), Some(chosen)) = (obj.get("firstSpeaker"), chosen) {
        let implied = match first.as_str() {
            "FIRST_SPEAKER_AGENT" => Some("agent"),
            "FIRST_SPEAKER_USER" => Some("user"),
            _ => None,
        };
        if implied.is_some_and(|i| i != chosen) {
            out.push(Violation::new(
                "firstSpeaker",
                format!("{first} does not match firstSpeakerSettings.{chosen} (when both are set they must agree)"),
            ));
        }
    }
}

fn ultravox_medium(carrier: &str, m: &Value, out: &mut Vec<Violation>) {
    let at = format!("medium.{carrier}");
    let is_phone = ULTRAVOX_PHONE_CARRIERS.iter().any(|(c, _, _)| *c == carrier);
    if carrier == "sip" {
        let to = m.pointer("/outgoing/to").and_then(Value::as_str).unwrap_or("");
        if to.trim().is_empty() {
            out.push(Violation::new(format!("{at}.outgoing.to"), "required: without outgoing.to Ultravox dials nobody"));
        }
        return;
    }
    if !is_phone {
        out.push(Violation::new(
            at,
            format!(
                "no phone call would be placed: a {carrier} medium waits for a client to join; \
                 use medium.<telnyx|twilio|plivo>.outgoing"
            ),
        ));
        return;
    }
    let Some(mo) = m.as_object() else {
        out.push(Violation::new(at, format!("expected an object, got {}", type_name(m))));
        return;
    };
    match present(mo, "outgoing") {
        None => out.push(Violation::new(
            format!("{at}.outgoing"),
            format!(
                "required: without outgoing Ultravox dials nobody (the call would only wait for \
                 your own {carrier} call to join); no phone call would be placed"
            ),
        )),
        Some(Value::Object(o)) => {
            let to_path = format!("{at}.outgoing.to");
            // Twilio may also dial a SIP address.
            let sip_to = carrier == "twilio" && o.get("to").and_then(Value::as_str).is_some_and(|s| s.starts_with("sip:"));
            if !sip_to {
                e164_field(o.get("to"), &to_path, "the number to call", out);
            }
            e164_field(o.get("from"), &format!("{at}.outgoing.from"), "the caller ID", out);
        }
        Some(other) => out.push(Violation::new(format!("{at}.outgoing"), format!("expected an object, got {}", type_name(other)))),
    }
}

/// A form value that must be given once.
fn single<'v>(obj: &'v Map<String, Value>, k: &str, out: &mut Vec<Violation>) -> Option<&'v str> {
    match obj.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        Some(Value::Array(a)) => {
            out.push(Violation::new(k, format!("given {} times, expected once", a.len())));
            None
        }
        _ => None,
    }
}

const TWILIO_MACHINE_DETECTION: &[&str] = &["Enable", "DetectMessageEnd"];
const TWILIO_CALLBACK_EVENTS: &[&str] = &["initiated", "ringing", "answered", "completed"];

fn twilio(obj: &Map<String, Value>, out: &mut Vec<Violation>) {
    for (k, what) in [("To", "the number to call"), ("From", "the caller ID")] {
        if obj.get(k).is_none() {
            out.push(Violation::new(k, format!("required: {what}")));
        } else {
            single(obj, k, out);
        }
    }
    let how: Vec<&str> = ["Url", "Twiml", "ApplicationSid"].into_iter().filter(|k| obj.contains_key(*k)).collect();
    match how.as_slice() {
        [] => out.push(Violation::new("Url", "one of Url, Twiml or ApplicationSid is required (what to do when the call is answered)")),
        [_] => {}
        many => {
            out.push(Violation::new(many[0], format!("exactly one of Url, Twiml or ApplicationSid may be given, got {}", many.join(", "))))
        }
    }
    if let Some(md) = single(obj, "MachineDetection", out) {
        if !TWILIO_MACHINE_DETECTION.contains(&md) {
            out.push(Violation::new("MachineDetection", format!("{md:?} is not one of Enable, DetectMessageEnd")));
        }
    }
    let events: Vec<&str> = match obj.get("StatusCallbackEvent") {
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).flat_map(str::split_whitespace).collect(),
        _ => Vec::new(),
    };
    for e in events {
        if !TWILIO_CALLBACK_EVENTS.contains(&e) {
            out.push(Violation::new("StatusCallbackEvent", format!("{e:?} is not one of initiated, ringing, answered, completed")));
        }
    }
}

fn vapi(obj: &Map<String, Value>, out: &mut Vec<Violation>) {
    if present(obj, "customerId").is_none() {
        match present(obj, "customer") {
            Some(Value::Object(c)) => {
                let check = c.get("numberE164CheckEnabled") != Some(&Value::Bool(false));
                let number = present(c, "number");
                if check {
                    e164_field(number, "customer.number", "the number to call (or give customerId)", out);
                } else if number.and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
                    out.push(Violation::new("customer.number", "required: the number to call (or give customerId)"));
                }
            }
            Some(other) => out.push(Violation::new("customer", format!("expected an object, got {}", type_name(other)))),
            None => out.push(Violation::new("customer.number", "required: the number to call (customer.number, or customerId)")),
        }
    }
    if present(obj, "phoneNumberId").is_none() && present(obj, "phoneNumber").is_none() {
        out.push(Violation::new(
            "phoneNumberId",
            "required: the Vapi phone number to call from (phoneNumberId, or a transient phoneNumber)",
        ));
    }
    let who = ["assistantId", "assistant", "squadId", "squad", "workflowId", "workflow"];
    if who.iter().all(|k| present(obj, k).is_none()) {
        out.push(Violation::new("assistantId", "required: who talks (assistantId, or assistant, squadId/squad, workflowId/workflow)"));
    }
}

fn retell(obj: &Map<String, Value>, out: &mut Vec<Violation>) {
    let lenient = obj.get("ignore_e164_validation") == Some(&Value::Bool(true));
    for (k, what) in [("from_number", "the number to call from"), ("to_number", "the number to call")] {
        if lenient {
            if obj.get(k).and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
                out.push(Violation::new(k, format!("required: {what}")));
            }
        } else {
            e164_field(obj.get(k), k, what, out);
        }
    }
    if let Some(v) = obj.get("retell_llm_dynamic_variables") {
        string_map(v, "retell_llm_dynamic_variables", "dynamic variable values must be strings", out);
    }
}

fn bland(obj: &Map<String, Value>, out: &mut Vec<Violation>) {
    for (k, v) in obj {
        let Some((_, types)) = BLAND_SEND_CALL_FIELDS.iter().find(|(n, _)| n == k) else {
            out.push(Violation::new(k.as_str(), unknown_field_message(Operation::BlandSendCall, "", k)));
            continue;
        };
        if !v.is_null() && !types.contains(&type_name(v)) {
            out.push(Violation::new(k.as_str(), format!("expected {}, got {} {}", types.join(" or "), type_name(v), v)));
        }
    }
    e164_field(obj.get("phone_number"), "phone_number", "the number to call", out);
    match (present(obj, "task"), present(obj, "pathway_id")) {
        (None, None) => out.push(Violation::new("task", "one of task or pathway_id is required (what the agent should do)")),
        (Some(_), Some(_)) => out.push(Violation::new(
            "task",
            "task must not be given together with pathway_id (Send Call: do not specify task when using a pathway)",
        )),
        _ => {}
    }
}
