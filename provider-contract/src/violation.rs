//! What a check reports ([`Violation`]) and how it words it: the dotted paths of fields,
//! JSON type names, each provider's wording of an unknown field. Used by both the OpenAPI
//! (`openapi`) and our own (`semantic`) checks.

use crate::Operation;
use serde_json::Value;

/// One problem with a request: the dotted path of the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub path: String,
    pub message: String,
}

impl Violation {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Violation {
        Violation { path: path.into(), message: message.into() }
    }
}

pub(crate) fn render(v: Vec<Violation>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for x in v {
        let line = if x.path.is_empty() { format!("(body): {}", x.message) } else { format!("{}: {}", x.path, x.message) };
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `parent.field` (`field` at the root).
pub(crate) fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// The wording each provider uses for a field it does not know.
pub(crate) fn unknown_field_message(op: Operation, type_name: &str, field: &str) -> String {
    match op {
        Operation::UltravoxStartAgentCall | Operation::UltravoxStartCall => {
            format!("Message type \"{type_name}\" has no field named \"{field}\"")
        }
        Operation::VapiCreateCall => format!("property {field} should not exist"),
        Operation::TwilioCreateCall => {
            format!("unknown parameter \"{field}\" (not a Calls create parameter)")
        }
        Operation::RetellCreatePhoneCall => format!("unknown field \"{field}\""),
        Operation::BlandSendCall => format!("\"{field}\" is not a documented Send Call parameter"),
    }
}
