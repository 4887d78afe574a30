//! Provider adapters: pure request building and response parsing, no pgrx, no I/O.
//! One file per provider behind the [`Adapter`] trait; [`adapter`] is the factory that picks
//! one by the agent mapping's provider. Adding a provider is one file and one line there.

pub mod bland;
pub mod generic;
pub mod lookup;
pub mod outcome;
pub mod retell;
pub mod twilio;
pub mod ultravox;
pub mod vapi;

use lookup::{InDoubt, LookupResult};
use serde_json::{Map, Value};

/// What one provider's API looks like to the worker.
pub trait Adapter: Sync {
    /// Checks an agent mapping when it is created or changed, so that a request the provider
    /// would refuse is caught there and not at dial time. The error names the field.
    fn check_mapping(&self, mapping: &Mapping) -> Result<(), String>;
    /// The request that places one call.
    fn call_request(&self, target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String>;
    /// The provider's JSON API, when its key rides in one header: the default `call_id` and
    /// `status_request` follow it. None for an API that does not fit (the adapter then writes
    /// both itself).
    fn json_api(&self) -> Option<&'static JsonApi>;
    /// The provider's id of a call it accepted, from its answer.
    fn call_id(&self, body: &str) -> Option<String> {
        json_text(body, self.json_api()?.call_id_field)
    }
    /// A refusal that means "not now": the contact waits, the account is held, no attempt counts.
    fn is_capacity_wait(&self, response: &HttpResponse) -> bool {
        matches!(response.status, 429 | 503)
    }
    /// The request that asks how a call is going: `GET {base}{status_path}/{id}`.
    fn status_request(&self, creds: &Credentials, provider_call_id: &str) -> Result<HttpRequest, String> {
        let api = self.json_api().ok_or_else(|| "this adapter has no JsonApi and writes no status request of its own".to_string())?;
        api.request(Method::Get, creds, &format!("{}/{}", api.status_path, path_segment(provider_call_id)), None)
    }
    /// What the provider said about a call; None when the answer says nothing usable. A 404 is
    /// a call the provider no longer knows (over); any other refusal says nothing.
    fn parse_status(&self, response: &HttpResponse) -> Option<CallStatus> {
        not_found_status(response).or_else(|| self.status_of(&ok_json(response)?))
    }
    /// What a status answer (its JSON) says about the call.
    fn status_of(&self, answer: &Value) -> Option<CallStatus>;
    /// The request that looks for an attempt whose answer was lost; Err when this provider
    /// cannot be asked (the attempt then stays in doubt: never redialed blindly).
    fn lookup_request(&self, attempt: &InDoubt, creds: &Credentials) -> Result<HttpRequest, String>;
    /// For providers whose calls carry the idempotency key in their metadata: where a lookup's
    /// answer lists the calls and, in each, its id (JSON pointers). None: `parse_lookup` is the
    /// provider's own, or it cannot be asked.
    fn lookup_by_metadata(&self) -> Option<(&'static str, &'static str)> {
        self.json_api()?.lookup_by_metadata
    }
    fn parse_lookup(&self, attempt: &InDoubt, response: &HttpResponse) -> LookupResult {
        match self.lookup_by_metadata() {
            Some((calls, id)) => lookup::by_metadata_key(attempt, response, calls, id),
            None => LookupResult::Unknown,
        }
    }
}

/// What an adapter file works with, in one line (`use super::prelude::*;`): the trait and its
/// types, and the helpers several providers share.
pub(crate) mod prelude {
    pub(crate) use super::lookup::{InDoubt, LookupResult};
    pub(crate) use super::{
        check_fields, correlation_metadata, extend_object, json_text, need_agent_id, need_from_number, ok_json, outcome, path_segment,
        string_values, template_variables, Adapter, CallSpec, CallStatus, Credentials, HttpRequest, HttpResponse, JsonApi, KeyHeader, Kind,
        Mapping, Method, ProviderTarget, TemplateFields,
    };
    pub(crate) use serde_json::{json, Map, Value};
}

/// The factory: the adapter for a provider name (`agent_mappings.provider`).
pub fn adapter(provider: &str) -> Option<&'static dyn Adapter> {
    Some(match provider {
        "ultravox" => &ultravox::Ultravox,
        "twilio" => &twilio::Twilio,
        "vapi" => &vapi::Vapi,
        "retell" => &retell::Retell,
        "bland" => &bland::Bland,
        "webhook" => &generic::Webhook,
        _ => return None,
    })
}

pub const PROVIDERS: [&str; 6] = ["ultravox", "twilio", "vapi", "retell", "bland", "webhook"];

fn unsupported(provider: &str) -> String {
    format!("provider '{provider}' is not supported by this version of pg_dialer (use one of {})", PROVIDERS.join(", "))
}

/// An agent mapping as stored: who calls, from which number, with what template.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// The provider's agent / assistant / pathway id; None or empty where the provider allows none.
    pub external_agent_id: Option<String>,
    pub from_number: Option<String>,
    /// Ultravox only: the carrier account Ultravox places the call through.
    pub carrier: Option<String>,
    pub request_template: Value,
    /// Calls take their caller ID from the agency's pool (chosen per call at the claim).
    pub use_caller_id_pool: bool,
}

impl Mapping {
    pub fn agent_id(&self) -> Option<&str> {
        self.external_agent_id.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    pub fn template(&self) -> Result<&Map<String, Value>, String> {
        self.request_template.as_object().ok_or_else(|| "request_template must be a JSON object".to_string())
    }
}

/// Checks an agent mapping with its provider's adapter.
pub fn check_mapping(provider: &str, mapping: &Mapping) -> Result<(), String> {
    let a = adapter(provider).ok_or_else(|| unsupported(provider))?;
    let size = mapping.request_template.to_string().len();
    if size > MAX_TEMPLATE_BYTES {
        return Err(format!("request_template is {size} bytes; at most {MAX_TEMPLATE_BYTES} are taken"));
    }
    if depth(&mapping.request_template) > MAX_TEMPLATE_DEPTH {
        return Err(format!("request_template nests deeper than {MAX_TEMPLATE_DEPTH} levels"));
    }
    a.check_mapping(mapping)
}

/// Bounds on a mapping's template, so that no stored template is too large or deep to read back.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
pub const MAX_TEMPLATE_DEPTH: usize = 32;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Everything needed to place one call, as read from the database at claim time.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub call_id: i64,
    pub batch_id: i64,
    pub contact_id: i64,
    pub phone_number: String,
    pub name: Option<String>,
    pub variables: Value,
    pub lead_ref: Option<String>,
    pub idempotency_key: String,
    /// The pacing slot (unix ms) this call was claimed for; it is not sent earlier.
    pub slot_at_ms: f64,
    /// 60000 / calls_per_minute of its batch.
    pub spacing_ms: f64,
    /// The agent mapping that places this call (a queue job may name its own).
    pub agent_mapping_id: i64,
    /// Caller metadata passed through to the provider (queue jobs).
    pub metadata: Value,
    /// Pacing of the provider account (`agency:provider`) when it has max_calls_per_second.
    pub credential_key: Option<String>,
    pub credential_gap_ms: f64,
    /// Pacing of the global dialer.max_calls_per_second (0 = none).
    pub global_gap_ms: f64,
}

/// The agent mapping and credentials of a batch, read once per tick.
#[derive(Debug, Clone)]
pub struct ProviderTarget {
    pub provider: String,
    pub mapping: Mapping,
    pub credentials: Credentials,
}

/// Provider credentials. `Debug` never prints the key.
#[derive(Clone)]
pub struct Credentials {
    pub api_key: String,
    pub base_url: Option<String>,
    pub account_sid: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &"[redacted]")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// An HTTP request ready to send. `audit` is what gets stored in `calls.request`: no secrets.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// The request as stored (`calls.request`): JSON text without the credentials.
    pub audit: String,
    /// Secret strings to scrub from any error text derived from this request.
    pub secrets: Vec<String>,
    /// Where the provider's call id is in its answer (a JSON pointer), when the mapping says so.
    pub call_id_pointer: Option<String>,
}

impl HttpRequest {
    /// A JSON request with the given auth headers; the audit copy holds the body, not the headers.
    pub fn json(
        method: Method,
        url: String,
        auth: Vec<(String, String)>,
        body: Option<&Value>,
        secrets: Vec<String>,
    ) -> Result<HttpRequest, String> {
        let text = body.map(serde_json::to_string).transpose().map_err(|e| e.to_string())?;
        let mut headers = auth;
        if text.is_some() {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        let verb = if method == Method::Post { "POST" } else { "GET" };
        // Written around the body's text, not as a copy of the body serialized a second time: the
        // stored request holds the body as it was sent.
        let url_json = serde_json::to_string(&url).map_err(|e| e.to_string())?;
        let audit = match &text {
            Some(b) => format!(r#"{{"method":"{verb}","url":{url_json},"body":{b}}}"#),
            None => format!(r#"{{"method":"{verb}","url":{url_json}}}"#),
        };
        Ok(HttpRequest { method, url, headers, body: text, audit, secrets, call_id_pointer: None })
    }
}

/// How a provider takes the account's key: in one header, after a prefix.
pub struct KeyHeader {
    pub name: &'static str,
    pub prefix: &'static str,
}

impl KeyHeader {
    /// `Authorization: Bearer <key>`, the most common form.
    pub const BEARER: KeyHeader = KeyHeader { name: "Authorization", prefix: "Bearer " };

    /// A JSON request carrying the key (scrubbed from anything derived from the request).
    pub fn request(&self, method: Method, url: String, creds: &Credentials, body: Option<&Value>) -> Result<HttpRequest, String> {
        let header = (self.name.to_string(), format!("{}{}", self.prefix, creds.api_key));
        HttpRequest::json(method, url, vec![header], body, vec![creds.api_key.clone()])
    }
}

/// A provider's JSON API at an official host, with the account's key in one header.
pub struct JsonApi {
    /// The official host, for credentials without a base_url.
    pub default_base_url: &'static str,
    pub auth: KeyHeader,
    /// The field of the answer to a call request that holds the provider's call id.
    pub call_id_field: &'static str,
    /// Where a call's status is read: `GET {base}{status_path}/{id}`.
    pub status_path: &'static str,
    /// See `Adapter::lookup_by_metadata`.
    pub lookup_by_metadata: Option<(&'static str, &'static str)>,
}

impl JsonApi {
    /// A request to `path` (which follows the base URL) carrying the key.
    pub fn request(&self, method: Method, creds: &Credentials, path: &str, body: Option<&Value>) -> Result<HttpRequest, String> {
        let url = format!("{}{path}", base_url(creds, self.default_base_url));
        self.auth.request(method, url, creds, body)
    }
}

/// Extends the object at `key` of `obj` (made when missing) with `extra`, which wins.
pub fn extend_object(obj: &mut Map<String, Value>, key: &str, extra: Map<String, Value>) {
    let mut merged = obj.get(key).and_then(Value::as_object).cloned().unwrap_or_default();
    merged.extend(extra);
    obj.insert(key.into(), Value::Object(merged));
}

/// A string field of a JSON answer (the provider's call id). Read as the text streams by: the other
/// fields are skipped, not built into a value (a few microseconds a call on the worker's thread).
/// As for a parsed value: None when the text is not one JSON object, the field is missing or not a
/// string; the last of repeated fields counts.
pub fn json_text(body: &str, key: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::fmt;

    /// Whether a key is the one looked for, without allocating it.
    struct IsKey<'k>(&'k str);
    impl<'de> DeserializeSeed<'de> for IsKey<'_> {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for IsKey<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E>(self, v: &str) -> Result<bool, E> {
            Ok(v == self.0)
        }
    }
    /// The object's value at the key, if a string.
    struct Field<'k>(&'k str);
    impl<'de> Visitor<'de> for Field<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let mut found = None;
            while let Some(is_key) = map.next_key_seed(IsKey(self.0))? {
                if is_key {
                    found = map.next_value::<Value>()?.as_str().map(str::to_string);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(body);
    let found = de.deserialize_map(Field(key)).ok()?;
    de.end().ok()?;
    found
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

/// Why a request got no HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportError {
    /// Nothing reached the provider (DNS, connection refused): safe to retry.
    NotSent(String),
    /// The request may have reached the provider (timeout, reset mid-way): outcome unknown.
    Unknown(String),
    /// Not sent, and never will be as it stands (a host outside dialer.allowed_hosts).
    Refused(String),
}

/// The outcome of placing a call, as recorded by `dialer._record_dispatch`.
#[derive(Debug, Clone, PartialEq)]
pub enum DispatchOutcome {
    Accepted { provider_call_id: Option<String> },
    RateLimited { retry_after_secs: f64 },
    Failed { error: String },
    NetworkError { error: String },
    Timeout { error: String },
}

impl DispatchOutcome {
    pub fn kind(&self) -> &'static str {
        match self {
            DispatchOutcome::Accepted { .. } => "accepted",
            DispatchOutcome::RateLimited { .. } => "rate_limited",
            DispatchOutcome::Failed { .. } => "failed",
            DispatchOutcome::NetworkError { .. } => "network_error",
            DispatchOutcome::Timeout { .. } => "timeout",
        }
    }
}

/// What a status look-up found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallStatus {
    pub ended: bool,
    /// The outcome in pg_dialer's own words (see [`outcome`]), whatever the provider called it.
    pub end_reason: Option<String>,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
}

/// Default back-off when a 429 carries no usable Retry-After (the seed's "next cron run").
pub const DEFAULT_RETRY_AFTER_SECS: f64 = 60.0;
const MAX_ERROR_LEN: usize = 500;

/// Builds the request that places a call, by provider.
pub fn build_call_request(target: &ProviderTarget, call: &CallSpec) -> Result<HttpRequest, String> {
    adapter(&target.provider).ok_or_else(|| unsupported(&target.provider))?.call_request(target, call)
}

/// Interprets the provider's answer to a call request.
pub fn interpret_call_response(provider: &str, request: &HttpRequest, result: Result<HttpResponse, TransportError>) -> DispatchOutcome {
    let secrets = &request.secrets;
    let response = match result {
        Ok(r) => r,
        Err(TransportError::NotSent(e)) => return DispatchOutcome::NetworkError { error: scrub(&e, secrets) },
        Err(TransportError::Unknown(e)) => return DispatchOutcome::Timeout { error: scrub(&e, secrets) },
        Err(TransportError::Refused(e)) => return DispatchOutcome::Failed { error: scrub(&e, secrets) },
    };
    let Some(a) = adapter(provider) else {
        return DispatchOutcome::Failed { error: unsupported(provider) };
    };
    match response.status {
        200..=299 => DispatchOutcome::Accepted {
            provider_call_id: match &request.call_id_pointer {
                Some(p) => generic::call_id_at(&response.body, p),
                None => a.call_id(&response.body),
            },
        },
        _ if a.is_capacity_wait(&response) => DispatchOutcome::RateLimited {
            retry_after_secs: response.retry_after.as_deref().and_then(parse_retry_after).unwrap_or(DEFAULT_RETRY_AFTER_SECS),
        },
        status => DispatchOutcome::Failed {
            error: scrub(&format!("{provider} answered HTTP {status}: {}", error_detail(&response.body)), secrets),
        },
    }
}

pub fn build_status_request(provider: &str, creds: &Credentials, provider_call_id: &str) -> Result<HttpRequest, String> {
    adapter(provider).ok_or_else(|| unsupported(provider))?.status_request(creds, provider_call_id)
}

pub fn interpret_status_response(provider: &str, response: &HttpResponse) -> Option<CallStatus> {
    adapter(provider)?.parse_status(response)
}

/// A provider's call id as a path segment: nothing that could steer the URL elsewhere.
pub fn path_segment(id: &str) -> String {
    id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
}

/// `base_url` of the credentials without its trailing slash, or the provider's official host.
pub fn base_url<'a>(creds: &'a Credentials, default: &'a str) -> &'a str {
    creds.base_url.as_deref().unwrap_or(default).trim_end_matches('/')
}

/// 404 on a status look-up: the provider no longer knows the call (treated as ended).
fn not_found_status(response: &HttpResponse) -> Option<CallStatus> {
    (response.status == 404).then(|| CallStatus { ended: true, end_reason: Some("not_found".into()), ..Default::default() })
}

/// The JSON body of a successful answer.
pub(crate) fn ok_json(response: &HttpResponse) -> Option<Value> {
    if !(200..300).contains(&response.status) {
        return None;
    }
    serde_json::from_str(&response.body).ok()
}

/// Metadata values as the providers that take only strings want them: strings stay, anything
/// else is JSON-encoded.
pub fn string_values(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }),
                )
            })
            .collect(),
        _ => Map::new(),
    }
}

/// The correlation fields every call carries (strings), after the caller's own metadata, which
/// cannot override them.
pub fn correlation_metadata(call: &CallSpec) -> Map<String, Value> {
    let mut m = string_values(&call.metadata);
    m.insert("batch_id".into(), Value::String(call.batch_id.to_string()));
    m.insert("contact_id".into(), Value::String(call.contact_id.to_string()));
    m.insert("idempotency_key".into(), Value::String(call.idempotency_key.clone()));
    if let Some(lead) = &call.lead_ref {
        m.insert("lead_ref".into(), Value::String(lead.clone()));
    }
    m
}

/// The contact's variables (and name) as string-keyed values for the agent's template.
pub fn template_variables(call: &CallSpec) -> Map<String, Value> {
    let mut m = match &call.variables {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    if let Some(name) = &call.name {
        m.entry("name").or_insert_with(|| Value::String(name.clone()));
    }
    m
}

/// A phone number in E.164 (`+` and 8 to 15 digits).
pub fn is_e164(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or("");
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// The from number a phone call needs, or an error that says where to set it.
pub fn need_from_number<'a>(provider: &str, mapping: &'a Mapping) -> Result<&'a str, String> {
    match mapping.from_number.as_deref() {
        Some(f) if is_e164(f) => Ok(f),
        Some(f) => Err(format!("from_number {f:?} is not an E.164 phone number (+ and 8 to 15 digits)")),
        None => Err(format!("{provider} phone calls need a from_number (the caller ID they dial from): give one to create_agent_mapping")),
    }
}

/// The agent id a provider needs, or an error that says so.
pub fn need_agent_id<'a>(provider: &str, what: &str, mapping: &'a Mapping) -> Result<&'a str, String> {
    mapping.agent_id().ok_or_else(|| format!("a {provider} agent mapping needs external_agent_id (the {what})"))
}

/// The fields a provider lets a template set, by the JSON type they take.
pub type TemplateFields = &'static [(Kind, &'static [&'static str])];

/// The type a template field takes, or None when the provider has no such field.
pub fn field_kind(fields: TemplateFields, name: &str) -> Option<Kind> {
    fields.iter().find_map(|(kind, names)| names.contains(&name).then_some(*kind))
}

/// Checks a template's fields against the ones the provider accepts, naming the first unknown
/// or mistyped field.
pub fn check_fields(
    provider: &str,
    what: &str,
    template: &Map<String, Value>,
    allowed: TemplateFields,
    ours: &[&str],
) -> Result<(), String> {
    for (k, v) in template {
        if ours.contains(&k.as_str()) {
            return Err(format!("request_template.{k} is set by pg_dialer for every call; remove it from the template"));
        }
        let Some(kind) = field_kind(allowed, k) else {
            return Err(format!("request_template.{k}: {what} has no field named {k:?} ({provider} refuses unknown fields)"));
        };
        if !kind.accepts(v) {
            return Err(format!("request_template.{k} must be {}, not {}", kind.name(), json_type(v)));
        }
    }
    Ok(())
}

/// JSON types of template fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    /// A duration string such as "30s" or "1.5s" (protobuf Duration in JSON).
    Duration,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    /// String, number or boolean: a form parameter.
    Scalar,
    /// A string or an array of strings (repeated form parameter).
    StringList,
}

impl Kind {
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            Kind::String => v.is_string(),
            Kind::Duration => v.as_str().is_some_and(is_duration),
            Kind::Number => v.is_number(),
            Kind::Integer => v.is_i64() || v.is_u64(),
            Kind::Boolean => v.is_boolean(),
            Kind::Object => v.is_object(),
            Kind::Array => v.is_array(),
            Kind::Scalar => v.is_string() || v.is_number() || v.is_boolean(),
            Kind::StringList => v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Duration => "a duration string such as \"30s\"",
            Kind::Number => "a number",
            Kind::Integer => "an integer",
            Kind::Boolean => "true or false",
            Kind::Object => "a JSON object",
            Kind::Array => "a JSON array",
            Kind::Scalar => "a string, number or boolean",
            Kind::StringList => "a string or an array of strings",
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// "30s", "1.5s", "-2s" (the JSON form of a protobuf Duration).
fn is_duration(s: &str) -> bool {
    let Some(n) = s.strip_suffix('s') else { return false };
    let n = n.strip_prefix('-').unwrap_or(n);
    let (int, frac) = n.split_once('.').unwrap_or((n, ""));
    !int.is_empty()
        && int.len() <= 12
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (frac.is_empty() == !n.contains('.'))
}

/// Retry-After is either delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<f64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then_some(secs.min(86_400.0));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.signed_duration_since(chrono::Utc::now()).num_milliseconds() as f64 / 1000.0;
    Some(delta.clamp(0.0, 86_400.0))
}

/// A short, readable error detail from a provider's error body.
fn error_detail(body: &str) -> String {
    let detail = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        ["detail", "message", "error"].iter().find_map(|k| match v.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) if !other.is_null() => Some(other.to_string()),
            _ => None,
        })
    });
    let text = detail.unwrap_or_else(|| body.trim().to_string());
    truncate(&text, MAX_ERROR_LEN)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Removes every secret from a text that may reach a log, an error or a table.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    secrets.iter().filter(|s| s.len() >= 4).fold(text.to_string(), |acc, s| acc.replace(s.as_str(), "[redacted]"))
}

/// Deep merge: `overlay` wins, objects are merged key by key.
pub fn merge_json(base: &Value, overlay: &Value) -> Value {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            let mut out: Map<String, Value> = b.clone();
            for (k, v) in o {
                let merged = match out.get(k) {
                    Some(existing) => merge_json(existing, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (_, o) => o.clone(),
    }
}

#[cfg(test)]
mod spec_tests;
#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(secrets: &[&str]) -> HttpRequest {
        let mut r =
            HttpRequest::json(Method::Post, "http://h/x".into(), vec![], None, secrets.iter().map(|s| s.to_string()).collect()).unwrap();
        r.call_id_pointer = None;
        r
    }

    #[test]
    fn a_string_field_is_read_from_an_object_and_nothing_else() {
        let body = r#"{"callId": "c-1", "nested": {"callId": "inner", "list": [1, "x", null]}, "n": 2.5}"#;
        assert_eq!(json_text(body, "callId").as_deref(), Some("c-1"));
        // escaped keys and values, as a parser reads them
        assert_eq!(json_text(r#"{"call\u0049d": "c\"2"}"#, "callId").as_deref(), Some("c\"2"));
        // the last of repeated fields, as serde_json's value keeps it
        assert_eq!(json_text(r#"{"sid": "a", "sid": "b"}"#, "sid").as_deref(), Some("b"));
        for none in [r#"{"callId": 7}"#, r#"{"other": "x"}"#, r#"["callId"]"#, r#"{"callId": "x"} trailing"#, "not json", ""] {
            assert_eq!(json_text(none, "callId"), None, "{none}");
        }
        // the request as stored: the body's text as sent, inside method and URL
        let r = HttpRequest::json(Method::Post, "http://h/x?a=\"b\"".into(), vec![], Some(&json!({"k": [1, "é"]})), vec![]).unwrap();
        let audit: Value = serde_json::from_str(&r.audit).unwrap();
        assert_eq!(audit, json!({"method": "POST", "url": "http://h/x?a=\"b\"", "body": {"k": [1, "é"]}}));
        assert_eq!(r.body.as_deref(), Some(r#"{"k":[1,"é"]}"#));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(2.0));
        assert_eq!(parse_retry_after(" 1.5 "), Some(1.5));
        assert_eq!(parse_retry_after("-3"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0.0));
    }

    #[test]
    fn capacity_answers_429_and_503_wait() {
        for provider in PROVIDERS {
            let r = HttpResponse { status: 429, retry_after: None, body: String::new() };
            assert_eq!(
                interpret_call_response(provider, &req(&[]), Ok(r)),
                DispatchOutcome::RateLimited { retry_after_secs: DEFAULT_RETRY_AFTER_SECS },
                "{provider} 429"
            );
            let r = HttpResponse { status: 503, retry_after: Some("7".into()), body: String::new() };
            assert_eq!(
                interpret_call_response(provider, &req(&[]), Ok(r)),
                DispatchOutcome::RateLimited { retry_after_secs: 7.0 },
                "{provider} 503"
            );
            let r = HttpResponse { status: 500, retry_after: None, body: String::new() };
            assert_eq!(interpret_call_response(provider, &req(&[]), Ok(r)).kind(), "failed", "{provider} 500");
        }
    }

    #[test]
    fn errors_carry_detail_without_secrets() {
        let r = HttpResponse { status: 400, retry_after: None, body: r#"{"detail":"bad key sk-secret-123"}"#.into() };
        let out = interpret_call_response("ultravox", &req(&["sk-secret-123"]), Ok(r));
        assert_eq!(out, DispatchOutcome::Failed { error: "ultravox answered HTTP 400: bad key [redacted]".into() });
    }

    #[test]
    fn transport_errors_split_by_whether_sent() {
        let not_sent = interpret_call_response("ultravox", &req(&[]), Err(TransportError::NotSent("refused".into())));
        assert_eq!(not_sent.kind(), "network_error");
        let unknown = interpret_call_response("ultravox", &req(&[]), Err(TransportError::Unknown("timed out".into())));
        assert_eq!(unknown.kind(), "timeout");
    }

    #[test]
    fn call_id_pointer_of_the_mapping_wins() {
        let mut r = req(&[]);
        r.call_id_pointer = Some("/data/call/uuid".into());
        let ok = HttpResponse { status: 201, retry_after: None, body: r#"{"data":{"call":{"uuid":"u-1"}},"id":"other"}"#.into() };
        assert_eq!(interpret_call_response("webhook", &r, Ok(ok)), DispatchOutcome::Accepted { provider_call_id: Some("u-1".into()) });
    }

    #[test]
    fn templates_are_bounded() {
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({"x": deep});
        }
        let m = Mapping { request_template: json!({"body": deep}), ..Default::default() };
        assert!(check_mapping("webhook", &m).unwrap_err().contains("deeper than 32"));
        let m = Mapping { request_template: json!({"body": {"x": "a".repeat(70_000)}}), ..Default::default() };
        assert!(check_mapping("webhook", &m).unwrap_err().contains("bytes"));
    }

    #[test]
    fn unknown_provider_is_named() {
        let e = check_mapping("acme", &Mapping::default()).unwrap_err();
        assert!(e.contains("'acme'") && e.contains("ultravox, twilio, vapi, retell, bland, webhook"), "{e}");
    }

    #[test]
    fn metadata_values_become_strings() {
        let m = string_values(&json!({"n": 5, "o": {"a": 1}, "s": "x", "b": true}));
        assert_eq!(Value::Object(m), json!({"n": "5", "o": "{\"a\":1}", "s": "x", "b": "true"}));
    }

    #[test]
    fn template_kinds() {
        assert!(Kind::Duration.accepts(&json!("30s")));
        assert!(Kind::Duration.accepts(&json!("1.5s")));
        assert!(!Kind::Duration.accepts(&json!("30")));
        assert!(!Kind::Duration.accepts(&json!("1.s")));
        assert!(!Kind::Duration.accepts(&json!(30)));
        assert!(Kind::StringList.accepts(&json!(["a", "b"])));
        assert!(!Kind::StringList.accepts(&json!([1])));
        let allowed: TemplateFields = &[(Kind::String, &["voice"])];
        let t = json!({"voice": 3}).as_object().cloned().unwrap();
        assert!(check_fields("X", "X's request", &t, allowed, &[]).unwrap_err().contains("request_template.voice must be a string"));
        let t = json!({"voise": "a"}).as_object().cloned().unwrap();
        assert!(check_fields("X", "X's request", &t, allowed, &[]).unwrap_err().contains("has no field named \"voise\""));
        let t = json!({"medium": {}}).as_object().cloned().unwrap();
        assert!(check_fields("X", "X's request", &t, allowed, &["medium"]).unwrap_err().contains("set by pg_dialer"));
    }

    #[test]
    fn template_fields_name_each_field_once() {
        let tables = [
            bland::SEND_CALL_FIELDS,
            retell::CREATE_CALL_FIELDS,
            twilio::CREATE_CALL_FIELDS,
            ultravox::AGENT_CALL_FIELDS,
            ultravox::CALL_FIELDS,
            vapi::CREATE_CALL_FIELDS,
        ];
        for fields in tables {
            let names: Vec<&str> = fields.iter().flat_map(|(_, names)| names.iter().copied()).collect();
            let distinct: std::collections::HashSet<&str> = names.iter().copied().collect();
            assert_eq!(names.len(), distinct.len(), "a field listed under two kinds: {names:?}");
        }
    }

    #[test]
    fn e164() {
        assert!(is_e164("+15550001111"));
        assert!(!is_e164("15550001111"));
        assert!(!is_e164("+0555000111"));
        assert!(!is_e164("+1555"));
    }

    #[test]
    fn merge_is_deep_and_overlay_wins() {
        let base = json!({"a": 1, "m": {"x": 1, "y": 2}});
        let over = json!({"m": {"y": 3}, "b": 2});
        assert_eq!(merge_json(&base, &over), json!({"a": 1, "b": 2, "m": {"x": 1, "y": 3}}));
    }

    #[test]
    fn long_errors_are_truncated_on_char_boundary() {
        let s = "é".repeat(400);
        let t = truncate(&s, 501);
        assert!(t.ends_with('…'));
    }
}
