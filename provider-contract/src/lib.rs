//! provider-contract: is this create-call request one the real provider would accept?
//!
//! Two layers, both strict:
//! - **Schema** (only with [`Contract::load`]): the request schema of each operation is read
//!   from the provider's published OpenAPI file at run time (never copied into this project),
//!   turned into a closed JSON Schema (unknown fields are refused at every depth, because
//!   Ultravox parses bodies as protobuf and Vapi whitelists properties) and checked with the
//!   `jsonschema` crate.
//! - **Semantic checks** (always, also in [`Contract::builtin`]): rules the schemas cannot
//!   express, written in our own code: a phone medium must say whom to dial, metadata values
//!   are strings, exactly one of `Url`/`Twiml`/`ApplicationSid`, ... Without a spec directory
//!   they also check top-level field names against lists kept here (a unit test compares those
//!   lists with the spec files so they cannot drift).
//!
//! ```no_run
//! use provider_contract::{default_spec_dir, Contract, Operation};
//! let contract = match default_spec_dir() {
//!     Some(dir) => Contract::load(&dir).expect("spec dir"),
//!     None => Contract::builtin(),
//! };
//! let body = serde_json::json!({"medium": {"telnyx": {"outgoing": {"to": "+15550001111", "from": "+15550002222"}}}});
//! assert!(contract.check(Operation::UltravoxStartCall, &body).is_ok());
//! ```

mod openapi;
mod paths;
mod semantic;
mod violation;

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use paths::is_uuid;
pub use semantic::{is_e164, BLAND_SEND_CALL_FIELDS};

/// A create-call operation of one provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `POST /api/agents/{agent_id}/calls`, body `ultravox.v1.StartAgentCallRequest`.
    UltravoxStartAgentCall,
    /// `POST /api/calls`, body `ultravox.v1.StartCallRequest`.
    UltravoxStartCall,
    /// `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`, form body.
    TwilioCreateCall,
    /// `POST /call`, body `CreateCallDTO`.
    VapiCreateCall,
    /// `POST /v2/create-phone-call`.
    RetellCreatePhoneCall,
    /// `POST /v1/calls` (Bland "Send Call"; no OpenAPI file, checked by our own code only).
    BlandSendCall,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::UltravoxStartAgentCall,
        Operation::UltravoxStartCall,
        Operation::TwilioCreateCall,
        Operation::VapiCreateCall,
        Operation::RetellCreatePhoneCall,
        Operation::BlandSendCall,
    ];

    /// `"ultravox"`, `"twilio"`, `"vapi"`, `"retell"` or `"bland"`.
    pub fn provider(self) -> &'static str {
        match self {
            Operation::UltravoxStartAgentCall | Operation::UltravoxStartCall => "ultravox",
            Operation::TwilioCreateCall => "twilio",
            Operation::VapiCreateCall => "vapi",
            Operation::RetellCreatePhoneCall => "retell",
            Operation::BlandSendCall => "bland",
        }
    }

    /// The request message/schema name, as used in error messages.
    pub fn request_type(self) -> &'static str {
        match self {
            Operation::UltravoxStartAgentCall => "ultravox.v1.StartAgentCallRequest",
            Operation::UltravoxStartCall => "ultravox.v1.StartCallRequest",
            Operation::TwilioCreateCall => "CreateCallRequest",
            Operation::VapiCreateCall => "CreateCallDTO",
            Operation::RetellCreatePhoneCall => "CreatePhoneCallRequest",
            Operation::BlandSendCall => "SendCall",
        }
    }

    /// The spec file this operation's schema comes from (`None` for Bland).
    pub fn spec_file(self) -> Option<&'static str> {
        self.spec_source().map(|s| s.file)
    }

    fn spec_source(self) -> Option<openapi::Source> {
        use openapi::Source;
        Some(match self {
            Operation::UltravoxStartAgentCall => {
                Source { file: "ultravox-openapi.json", path: "/api/agents/{agent_id}/calls", content_type: "application/json" }
            }
            Operation::UltravoxStartCall => Source { file: "ultravox-openapi.json", path: "/api/calls", content_type: "application/json" },
            Operation::TwilioCreateCall => Source {
                file: "twilio-calls-openapi.json",
                path: "/2010-04-01/Accounts/{AccountSid}/Calls.json",
                content_type: "application/x-www-form-urlencoded",
            },
            Operation::VapiCreateCall => Source { file: "vapi-calls-openapi.json", path: "/call", content_type: "application/json" },
            Operation::RetellCreatePhoneCall => {
                Source { file: "retell-calls-openapi.json", path: "/v2/create-phone-call", content_type: "application/json" }
            }
            Operation::BlandSendCall => return None,
        })
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.provider(), self.request_type())
    }
}

/// The checks for every create operation; cheap to share (`Send + Sync`).
pub struct Contract {
    spec_dir: Option<PathBuf>,
    schemas: HashMap<Operation, openapi::RequestSchema>,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract").field("spec_dir", &self.spec_dir).field("schemas", &self.schemas.keys().collect::<Vec<_>>()).finish()
    }
}

impl Contract {
    /// Loads every spec file it needs from `dir` (the error names the missing or bad file).
    pub fn load(dir: &Path) -> Result<Contract, String> {
        if !dir.is_dir() {
            return Err(format!("provider spec directory {} does not exist or is not a directory", dir.display()));
        }
        let mut docs: HashMap<&'static str, Value> = HashMap::new();
        let mut schemas = HashMap::new();
        for op in Operation::ALL {
            let Some(src) = op.spec_source() else {
                continue;
            };
            if !docs.contains_key(src.file) {
                let doc = openapi::load_json(&dir.join(src.file))?;
                docs.insert(src.file, doc);
            }
            let doc = &docs[src.file];
            let schema = openapi::RequestSchema::compile(doc, &src, op).map_err(|e| format!("{}: {e}", dir.join(src.file).display()))?;
            schemas.insert(op, schema);
        }
        Ok(Contract { spec_dir: Some(dir.to_path_buf()), schemas })
    }

    /// Without a spec directory: only the built-in checks, written in our own code.
    pub fn builtin() -> Contract {
        Contract { spec_dir: None, schemas: HashMap::new() }
    }

    /// The directory the schemas came from (`None` for [`Contract::builtin`]).
    pub fn spec_dir(&self) -> Option<&Path> {
        self.spec_dir.as_deref()
    }

    /// True when `op` is checked against its provider's OpenAPI schema (not only built-in checks).
    pub fn has_schema(&self, op: Operation) -> bool {
        self.schemas.contains_key(&op)
    }

    /// Which operation a create request is (by method and path), with its path parameters
    /// checked (Ultravox `agent_id` must be a UUID, Twilio `AccountSid` `^AC[0-9a-fA-F]{32}$`).
    /// `None` for anything else, including a create path whose parameters are invalid.
    pub fn identify(method: &str, path: &str) -> Option<Operation> {
        paths::check_path(method, path).ok().flatten()
    }

    /// Like [`Contract::identify`] but says why: `Ok(None)` = not a create request at all,
    /// `Err` = a create path with invalid path parameters (one message per parameter).
    pub fn check_path(method: &str, path: &str) -> Result<Option<Operation>, Vec<String>> {
        paths::check_path(method, path)
    }

    /// Validates a create request body. For Twilio the body is the form as a JSON object
    /// (repeated keys → arrays of strings). `Err` = human-readable violations, each starting
    /// with the field path (`medium.telnyx.destinationPhoneNumber: Message type ...`).
    pub fn check(&self, op: Operation, body: &Value) -> Result<(), Vec<String>> {
        let Some(obj) = body.as_object() else {
            return Err(vec![format!("(body): {} must be a JSON object, got {}", op.request_type(), violation::type_name(body))]);
        };
        let mut out: Vec<violation::Violation> = Vec::new();
        let schema = self.schemas.get(&op);
        // Twilio treats an empty parameter as not given; drop those before any check.
        let cleaned;
        let obj: &Map<String, Value> = if op == Operation::TwilioCreateCall {
            cleaned = semantic::drop_empty_form_values(obj);
            &cleaned
        } else {
            obj
        };
        match schema {
            Some(s) => s.validate(obj, &mut out),
            None => semantic::check_names(op, obj, &mut out),
        }
        // One message per field: our own wording says why, so it replaces the schema's.
        let mut extra = Vec::new();
        semantic::check(op, obj, &mut extra);
        out.retain(|o| !extra.iter().any(|v| v.path == o.path));
        out.extend(extra);
        if out.is_empty() {
            return Ok(());
        }
        Err(violation::render(out))
    }

    /// Convenience: path checks + [`Contract::check`] for an HTTP request; `content_type`
    /// decides between a JSON and a form body. `Err` also for a path that is no create request.
    pub fn check_http(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Result<Operation, Vec<String>> {
        let op = match paths::check_path(method, path)? {
            Some(op) => op,
            None => return Err(vec![format!("{method} {path} is not a create-call request of any known provider")]),
        };
        let value = parse_body(content_type, body).map_err(|e| vec![e])?;
        self.check(op, &value)?;
        Ok(op)
    }
}

/// Parses a request body: form-encoded (by `content_type`) into a JSON object (repeated keys
/// become arrays of strings), anything else as JSON. An empty JSON body is an error.
pub fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, String> {
    let ct = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if ct == "application/x-www-form-urlencoded" {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        return Ok(form_to_json(&pairs));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("(body): empty request body, expected a JSON object".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("(body): invalid JSON: {e}"))
}

/// Form fields as a JSON object; a key given more than once becomes an array of strings.
pub fn form_to_json(pairs: &[(String, String)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        match m.get_mut(k) {
            None => {
                m.insert(k.clone(), Value::String(v.clone()));
            }
            Some(Value::Array(a)) => a.push(Value::String(v.clone())),
            Some(other) => {
                let first = other.take();
                *other = Value::Array(vec![first, Value::String(v.clone())]);
            }
        }
    }
    Value::Object(m)
}

/// `PROVIDER_SPEC_DIR` if set, else the first existing `<ancestor>/shared/provider-specs`
/// walking up from `CARGO_MANIFEST_DIR` (at run time, then this crate's own) and the current
/// directory. (The layout is `<root>/main` beside `<root>/shared`, locally and in CI.)
pub fn default_spec_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PROVIDER_SPEC_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Some(m) = std::env::var_os("CARGO_MANIFEST_DIR") {
        starts.push(PathBuf::from(m));
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if let Ok(c) = std::env::current_dir() {
        starts.push(c);
    }
    starts.iter().find_map(|s| s.ancestors().map(|a| a.join("shared").join("provider-specs")).find(|c| c.is_dir()))
}

#[cfg(test)]
mod tests;
