//! Simulator knobs ([`SimConfig`]) and deterministic fault rules ([`Rule`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// Which provider API a request or call belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Ultravox,
    Twilio,
    Vapi,
    Retell,
    Bland,
    /// The generic "VoiceAPI" AI caller under `/voiceapi/v1/calls`.
    Generic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Ultravox => "ultravox",
            Provider::Twilio => "twilio",
            Provider::Vapi => "vapi",
            Provider::Retell => "retell",
            Provider::Bland => "bland",
            Provider::Generic => "generic",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// All behaviour knobs. `Default` = no faults, no latency, calls last 2000..=4000 ms, no API key,
/// built-in request checks only (no spec directory), no webhooks.
///
/// Serializing never includes `api_key`, `ultravox_webhook_secret` (nor `log_file`, `spec_dir`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SimConfig {
    /// Fixed delay before answering a POST that creates a call.
    pub latency_ms: u64,
    /// Extra uniform random delay in `0..=latency_jitter_ms` added to `latency_ms`.
    pub latency_jitter_ms: u64,
    /// Fraction (0..=1) of create POSTs answered 500.
    pub error_rate: f64,
    /// Fraction (0..=1) of create POSTs answered 429 with `Retry-After`.
    pub rate_limit_rate: f64,
    /// Fraction (0..=1) of create POSTs answered 503 with `Retry-After` (out of capacity).
    pub capacity_rate: f64,
    /// `Retry-After` value for random 429s/503s (and rules that give none).
    pub retry_after_secs: u64,
    /// Fraction (0..=1) of create POSTs held for `hang_secs` without an answer.
    pub hang_rate: f64,
    /// How long a hung request is held (then answered 504 if the client is still there).
    pub hang_secs: u64,
    /// Fraction (0..=1) of create POSTs whose TCP connection is closed without an answer.
    pub drop_rate: f64,
    /// Simulated call length (created → ended), uniform in `min..=max` ms.
    pub call_duration_ms_min: u64,
    pub call_duration_ms_max: u64,
    /// `None` = accept any key. Never serialized.
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// When set, Twilio requests must use this AccountSid (path and basic-auth user).
    pub twilio_account_sid: Option<String>,
    /// Deterministic rules, first match wins.
    pub rules: Vec<Rule>,
    /// Most request records kept in memory (oldest dropped first). The `--log` file keeps all.
    pub log_capacity: usize,
    /// JSON-lines request log file; fixed at start, ignored by run-time updates.
    #[serde(skip)]
    pub log_file: Option<PathBuf>,
    /// Directory with the providers' OpenAPI files: create requests are then checked against
    /// them (`provider_contract::Contract::load`); `None` = built-in checks only. Fixed at start.
    #[serde(skip)]
    pub spec_dir: Option<PathBuf>,
    /// Where Ultravox webhooks (`call.started`, `call.joined`, `call.ended`) go; loopback only.
    pub ultravox_webhook_url: Option<String>,
    /// HMAC-SHA256 key of `X-Ultravox-Webhook-Signature`. Never serialized.
    #[serde(skip_serializing)]
    pub ultravox_webhook_secret: Option<String>,
    /// Also send a second signature that does not verify (a rotated-out secret), first in the
    /// comma-separated list, so that receivers must check every entry.
    pub ultravox_webhook_stale_signature: bool,
    /// Time allowed for one webhook delivery (connect + answer).
    pub webhook_timeout_ms: u64,
    /// Where Vapi's server messages (`end-of-call-report`) go (the account's server URL); loopback only.
    pub vapi_webhook_url: Option<String>,
    /// Vapi's server secret (`server.secret`, or the HMAC plan's key). Never serialized.
    #[serde(skip_serializing)]
    pub vapi_webhook_secret: Option<String>,
    /// How Vapi authenticates: `secret` (`X-Vapi-Secret`), `bearer` (`Authorization: Bearer`) or
    /// `hmac` (`x-signature` over `{x-timestamp}.{body}`).
    pub vapi_webhook_auth: String,
    /// Where Retell's `call_ended` and `call_analyzed` go (the agent's webhook URL); loopback only.
    /// Signed with `api_key`, as Retell signs with the account's API key.
    pub retell_webhook_url: Option<String>,
    /// Bland's webhook signing secret (`X-Webhook-Signature`); Bland posts to each call's own
    /// `webhook`. Unsigned without it. Never serialized.
    #[serde(skip_serializing)]
    pub bland_webhook_secret: Option<String>,
    /// Each Vapi, Retell and Bland end-of-call webhook is sent this many more times (the
    /// providers' retries), freshly signed.
    pub webhook_redeliveries: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_ms: 0,
            latency_jitter_ms: 0,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            capacity_rate: 0.0,
            retry_after_secs: 1,
            hang_rate: 0.0,
            hang_secs: 3600,
            drop_rate: 0.0,
            call_duration_ms_min: 2000,
            call_duration_ms_max: 4000,
            api_key: None,
            twilio_account_sid: None,
            rules: Vec::new(),
            log_capacity: 1_000_000,
            log_file: None,
            spec_dir: None,
            ultravox_webhook_url: None,
            ultravox_webhook_secret: None,
            ultravox_webhook_stale_signature: false,
            webhook_timeout_ms: 2000,
            vapi_webhook_url: None,
            vapi_webhook_secret: None,
            vapi_webhook_auth: "secret".to_string(),
            retell_webhook_url: None,
            bland_webhook_secret: None,
            webhook_redeliveries: 0,
        }
    }
}

/// Accepts only `http://` URLs whose host is on this machine (127.0.0.0/8, `[::1]`,
/// `localhost`): the simulator must never send traffic anywhere else.
pub fn check_loopback_url(url: &str) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!("{url:?}: only http:// webhook targets are supported (loopback, no TLS)"));
    }
    let ok = match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{url:?}: webhook targets must be loopback (127.0.0.0/8, [::1] or localhost)"))
    }
}

impl SimConfig {
    /// `Err` names the first webhook URL that is not a loopback one.
    pub(crate) fn check_webhook_urls(&self) -> Result<(), String> {
        for (name, u) in [
            ("ultravox_webhook_url", &self.ultravox_webhook_url),
            ("vapi_webhook_url", &self.vapi_webhook_url),
            ("retell_webhook_url", &self.retell_webhook_url),
        ] {
            if let Some(u) = u {
                check_loopback_url(u).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Checks ranges; returns a human-readable reason on failure.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("capacity_rate", self.capacity_rate),
            ("hang_rate", self.hang_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 1, got {v}"));
            }
        }
        self.check_webhook_urls()?;
        if !matches!(self.vapi_webhook_auth.as_str(), "secret" | "bearer" | "hmac") {
            return Err(format!("vapi_webhook_auth must be secret, bearer or hmac, got {:?}", self.vapi_webhook_auth));
        }
        if self.webhook_redeliveries > 10 {
            return Err("webhook_redeliveries is at most 10".into());
        }
        if self.webhook_timeout_ms == 0 {
            return Err("webhook_timeout_ms must be at least 1".into());
        }
        if self.call_duration_ms_min > self.call_duration_ms_max {
            return Err(format!(
                "call_duration_ms_min ({}) > call_duration_ms_max ({})",
                self.call_duration_ms_min, self.call_duration_ms_max
            ));
        }
        if self.log_capacity == 0 {
            return Err("log_capacity must be at least 1".into());
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate().map_err(|e| format!("rules[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// Makes an arbitrary config valid (clamps rates, orders the duration range).
    pub(crate) fn sanitize(&mut self) {
        for v in [&mut self.error_rate, &mut self.rate_limit_rate, &mut self.capacity_rate, &mut self.hang_rate, &mut self.drop_rate] {
            *v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
        }
        if self.call_duration_ms_min > self.call_duration_ms_max {
            std::mem::swap(&mut self.call_duration_ms_min, &mut self.call_duration_ms_max);
        }
        self.log_capacity = self.log_capacity.max(1);
        self.webhook_timeout_ms = self.webhook_timeout_ms.max(1);
        self.rules.retain(|r| r.validate().is_ok());
        // Never a non-loopback target, whatever the caller set.
        for u in [&mut self.ultravox_webhook_url, &mut self.vapi_webhook_url, &mut self.retell_webhook_url] {
            if u.as_deref().is_some_and(|x| check_loopback_url(x).is_err()) {
                *u = None;
            }
        }
        if !matches!(self.vapi_webhook_auth.as_str(), "secret" | "bearer" | "hmac") {
            self.vapi_webhook_auth = "secret".into();
        }
        self.webhook_redeliveries = self.webhook_redeliveries.min(10);
    }

    /// Applies a partial JSON update (`{"error_rate":0.1,"rules":[...]}`); unknown keys are errors.
    /// `"api_key"` and `"ultravox_webhook_secret"` may be a string or null; `"spec_dir"` cannot
    /// change. Nothing changes unless the whole update is valid.
    pub fn apply_json(&mut self, patch: &Value) -> Result<(), String> {
        let obj = patch.as_object().ok_or_else(|| "config update must be a JSON object".to_string())?;
        let mut cur = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let mut api_key = self.api_key.clone();
        let mut secret = self.ultravox_webhook_secret.clone();
        let mut vapi_secret = self.vapi_webhook_secret.clone();
        let mut bland_secret = self.bland_webhook_secret.clone();
        let cur_obj = cur.as_object_mut().ok_or_else(|| "internal: config is not an object".to_string())?;
        for (k, v) in obj {
            match k.as_str() {
                "api_key" => api_key = string_or_null(k, v)?,
                "ultravox_webhook_secret" => secret = string_or_null(k, v)?,
                "vapi_webhook_secret" => vapi_secret = string_or_null(k, v)?,
                "bland_webhook_secret" => bland_secret = string_or_null(k, v)?,
                // Echoes of our own output; ignore.
                "api_key_set" | "ultravox_webhook_secret_set" | "vapi_webhook_secret_set" | "bland_webhook_secret_set" => {}
                "spec_dir" => {
                    let same = match (v, &self.spec_dir) {
                        (Value::Null, None) => true,
                        (Value::String(s), Some(d)) => std::path::Path::new(s) == d.as_path(),
                        _ => false,
                    };
                    if !same {
                        return Err("spec_dir is fixed at start (restart with --spec-dir DIR)".into());
                    }
                }
                "call_duration_ms" => {
                    let s = v.as_str().ok_or_else(|| "call_duration_ms must be a string like \"200..400\"".to_string())?;
                    let (a, b) = parse_duration_range(s)?;
                    cur_obj.insert("call_duration_ms_min".into(), a.into());
                    cur_obj.insert("call_duration_ms_max".into(), b.into());
                }
                _ if cur_obj.contains_key(k) => {
                    cur_obj.insert(k.clone(), v.clone());
                }
                _ => return Err(format!("unknown config field `{k}`")),
            }
        }
        let mut next: SimConfig = serde_json::from_value(cur).map_err(|e| e.to_string())?;
        next.api_key = api_key;
        next.ultravox_webhook_secret = secret;
        next.vapi_webhook_secret = vapi_secret;
        next.bland_webhook_secret = bland_secret;
        next.log_file = self.log_file.clone();
        next.spec_dir = self.spec_dir.clone();
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// The config as JSON without secrets, plus `"api_key_set"`, `"ultravox_webhook_secret_set"`
    /// and `"spec_dir"`.
    pub fn public_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("api_key_set".into(), Value::Bool(self.api_key.is_some()));
            o.insert("ultravox_webhook_secret_set".into(), Value::Bool(self.ultravox_webhook_secret.is_some()));
            o.insert("vapi_webhook_secret_set".into(), Value::Bool(self.vapi_webhook_secret.is_some()));
            o.insert("bland_webhook_secret_set".into(), Value::Bool(self.bland_webhook_secret.is_some()));
            o.insert("spec_dir".into(), self.spec_dir.as_ref().map(|d| Value::String(d.display().to_string())).unwrap_or(Value::Null));
        }
        v
    }
}

/// A secret's new value: a string, or null for none.
fn string_or_null(name: &str, v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(format!("{name} must be a string or null")),
    }
}

/// Parses `"MIN..MAX"`, `"MIN..=MAX"`, `"MIN-MAX"` or a single `"N"` (milliseconds).
pub fn parse_duration_range(s: &str) -> Result<(u64, u64), String> {
    let s = s.trim();
    let parts: Option<(&str, &str)> = s.split_once("..=").or_else(|| s.split_once("..")).or_else(|| s.split_once('-'));
    let num = |x: &str| x.trim().parse::<u64>().map_err(|_| format!("bad duration `{x}` in `{s}` (want MIN..MAX in ms)"));
    let (a, b) = match parts {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(s)?;
            (n, n)
        }
    };
    if a > b {
        return Err(format!("duration range `{s}`: MIN > MAX"));
    }
    Ok((a, b))
}

/// Declares a struct whose fields may each be absent from its JSON and are left out of it
/// while unset (`None`, `false`), so that a rule reads back as short as it was written.
macro_rules! sparse_json_struct {
    ($(#[$attr:meta])* pub struct $name:ident { $($(#[$field_attr:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$attr])*
        pub struct $name {
            $(
                $(#[$field_attr])*
                #[serde(skip_serializing_if = "is_unset")]
                pub $field: $ty,
            )*
        }
    };
}

fn is_unset<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

sparse_json_struct! {
    /// A deterministic behaviour for create requests to one destination number.
    ///
    /// First matching rule wins; it is consumed after `times` matches (absent = forever).
    /// A matching rule decides the outcome alone: random faults are not applied on top.
    /// Outcome precedence: `drop_connection`, then `hang`, then `status` >= 400
    /// (429 and 503 get `Retry-After`), else the call is created (with `duration_ms`/`end_reason`).
    #[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    pub struct Rule {
        /// Destination number to match exactly; absent = every number.
        pub to: Option<String>,
        /// Restrict to one provider; absent = all.
        pub provider: Option<Provider>,
        pub status: Option<u16>,
        pub retry_after_secs: Option<u64>,
        pub message: Option<String>,
        pub hang: bool,
        pub hang_secs: Option<u64>,
        pub drop_connection: bool,
        /// Overrides the configured latency for matching requests.
        pub latency_ms: Option<u64>,
        pub duration_ms: Option<u64>,
        /// e.g. "hangup" (default), "voicemail", "unjoined", "busy", "no-answer", "failed".
        pub end_reason: Option<String>,
        /// Remaining uses; absent = forever.
        pub times: Option<u32>,
    }
}

/// `pub fn field(self, value) -> Rule` for each `Option` field of [`Rule`] named.
macro_rules! option_setters {
    ($($field:ident: $ty:ty,)*) => {
        $(
            pub fn $field(mut self, value: $ty) -> Rule {
                self.$field = Some(value);
                self
            }
        )*
    };
}

impl Rule {
    /// A rule matching `to` that (until more is set) just creates the call normally.
    pub fn new(to: impl Into<String>) -> Rule {
        Rule { to: Some(to.into()), ..Rule::default() }
    }
    pub fn message(mut self, msg: impl Into<String>) -> Rule {
        self.message = Some(msg.into());
        self
    }
    pub fn end_reason(mut self, reason: impl Into<String>) -> Rule {
        self.end_reason = Some(reason.into());
        self
    }
    pub fn hang(mut self) -> Rule {
        self.hang = true;
        self
    }
    pub fn hang_secs(mut self, secs: u64) -> Rule {
        self.hang = true;
        self.hang_secs = Some(secs);
        self
    }
    pub fn drop_connection(mut self) -> Rule {
        self.drop_connection = true;
        self
    }
    option_setters! {
        status: u16,
        retry_after_secs: u64,
        latency_ms: u64,
        duration_ms: u64,
        times: u32,
        provider: Provider,
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.status {
            if !(200..=599).contains(&s) {
                return Err(format!("status {s} out of range 200..=599"));
            }
        }
        if self.times == Some(0) {
            return Err("times must be at least 1 (omit it for forever)".into());
        }
        Ok(())
    }

    pub(crate) fn matches(&self, provider: Provider, to: &str) -> bool {
        self.to.as_deref().is_none_or(|t| t == to) && self.provider.is_none_or(|p| p == provider)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partial_update_and_unknown_field() {
        let mut c = SimConfig::default();
        c.apply_json(&json!({"error_rate": 0.5, "api_key": "k", "rules": [{"to": "+1", "status": 429, "times": 1}]})).unwrap();
        assert_eq!(c.error_rate, 0.5);
        assert_eq!(c.api_key.as_deref(), Some("k"));
        assert_eq!(c.rules.len(), 1);
        assert!(c.apply_json(&json!({"eror_rate": 0.5})).is_err());
        assert!(c.apply_json(&json!({"error_rate": 2.0})).is_err());
        assert_eq!(c.error_rate, 0.5);
        let pub_json = c.public_json().to_string();
        assert!(!pub_json.contains("\"k\""), "{pub_json}");
        assert!(pub_json.contains("\"api_key_set\":true"));
        c.apply_json(&json!({"ultravox_webhook_secret": "whsec-1", "ultravox_webhook_url": "http://127.0.0.1:9/uv"})).unwrap();
        assert_eq!(c.ultravox_webhook_secret.as_deref(), Some("whsec-1"));
        let pub_json = c.public_json().to_string();
        assert!(!pub_json.contains("whsec-1"), "{pub_json}");
        assert!(pub_json.contains("\"ultravox_webhook_secret_set\":true"));
        let e = c.apply_json(&json!({"ultravox_webhook_url": "http://10.0.0.1/uv"})).unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(c.apply_json(&json!({"spec_dir": "/elsewhere"})).is_err());
        assert!(c.apply_json(&json!({"capacity_rate": 0.25})).is_ok());
        c.apply_json(&json!({"call_duration_ms": "100..200"})).unwrap();
        assert_eq!((c.call_duration_ms_min, c.call_duration_ms_max), (100, 200));
    }

    #[test]
    fn rules_json_holds_only_what_is_set() {
        let r = Rule::new("+1").status(429).hang();
        assert_eq!(serde_json::to_value(&r).unwrap(), json!({"to": "+1", "status": 429, "hang": true}));
        assert_eq!(serde_json::from_value::<Rule>(json!({"to": "+1", "status": 429, "hang": true})).unwrap(), r);
        assert!(serde_json::from_value::<Rule>(json!({"to": "+1", "stat": 429})).is_err());
    }

    #[test]
    fn loopback_only() {
        for ok in ["http://127.0.0.1:8080/x", "http://127.9.9.9/", "http://localhost:1/a?b=c", "http://[::1]:5/"] {
            assert!(check_loopback_url(ok).is_ok(), "{ok}");
        }
        for bad in ["https://127.0.0.1/", "http://10.0.0.1/", "http://example.com/", "http://192.168.1.1/", "nope", "http://0.0.0.0/"] {
            assert!(check_loopback_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_duration_range("2000..4000").unwrap(), (2000, 4000));
        assert_eq!(parse_duration_range("5..=6").unwrap(), (5, 6));
        assert_eq!(parse_duration_range("7").unwrap(), (7, 7));
        assert!(parse_duration_range("9..1").is_err());
        assert!(parse_duration_range("x").is_err());
    }
}
