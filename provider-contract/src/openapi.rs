//! OpenAPI 3.0 request schemas → closed JSON Schema 2020-12, validated with `jsonschema`.
//!
//! The rewrite (done on the loaded document, nothing is stored):
//! - `$ref: #/components/schemas/X` → `$ref: #/$defs/X`, only reachable schemas are kept;
//! - every object schema with `properties` and no `additionalProperties` gets
//!   `additionalProperties: false` (unknown fields are refused at every depth);
//! - `allOf` is flattened: a lone `allOf: [{$ref}]` (Ultravox's wrapper that only adds a
//!   description) becomes the `$ref`, several object members are merged into one object, so
//!   closing objects never refuses a field another member declares;
//! - `nullable: true` allows `null`; OpenAPI-only and annotation keywords are dropped.

use crate::violation::{join, type_name, unknown_field_message, Violation};
use crate::Operation;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::ValidationError;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Where in a spec file an operation's request body schema is.
pub(crate) struct Source {
    pub file: &'static str,
    pub path: &'static str,
    pub content_type: &'static str,
}

pub(crate) fn load_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    if doc.get("openapi").and_then(Value::as_str).is_none() {
        return Err(format!("{}: not an OpenAPI document (no \"openapi\" version field)", path.display()));
    }
    Ok(doc)
}

/// A compiled request schema of one operation.
pub(crate) struct RequestSchema {
    op: Operation,
    validator: jsonschema::Validator,
    /// Declared JSON type of each top-level property (Twilio form values are coerced by it).
    prop_types: BTreeMap<String, String>,
}

const ROOT: &str = "#/$defs/";

impl RequestSchema {
    pub(crate) fn compile(doc: &Value, src: &Source, op: Operation) -> Result<Self, String> {
        let body_schema = doc
            .pointer(&format!("/paths/{}/post/requestBody/content/{}/schema", escape(src.path), escape(src.content_type)))
            .ok_or_else(|| format!("no {} request body schema for POST {}", src.content_type, src.path))?;
        let empty = Map::new();
        let components = doc.pointer("/components/schemas").and_then(Value::as_object).unwrap_or(&empty);
        let mut conv = Converter { components, defs: BTreeMap::new(), pending: Vec::new(), errors: Vec::new() };
        // The root gets a $defs entry under the request's name, so errors at the top level
        // name it like any other message type.
        let root_name = match body_schema.get("$ref").and_then(Value::as_str) {
            Some(r) => conv.ref_name(r).unwrap_or(op.request_type()).to_string(),
            None => op.request_type().to_string(),
        };
        let root = conv.convert(body_schema);
        if body_schema.get("$ref").is_none() {
            conv.defs.insert(root_name.clone(), root.clone());
        }
        conv.drain();
        if !conv.errors.is_empty() {
            return Err(conv.errors.join("; "));
        }
        let prop_types = resolve_props(&conv.defs, &root);
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("{ROOT}{}", escape(&root_name)),
            "$defs": conv.defs,
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .offline()
            .build(&schema)
            .map_err(|e| format!("request schema for POST {} does not compile: {e}", src.path))?;
        Ok(RequestSchema { op, validator, prop_types })
    }

    pub(crate) fn validate(&self, obj: &Map<String, Value>, out: &mut Vec<Violation>) {
        let instance = if self.op == Operation::TwilioCreateCall { coerce_form(obj, &self.prop_types) } else { Value::Object(obj.clone()) };
        for e in self.validator.iter_errors(&instance) {
            render(self.op, &e, &instance, out);
        }
    }
}

/// The top-level property types of the (converted) root schema.
fn resolve_props(defs: &BTreeMap<String, Value>, root: &Value) -> BTreeMap<String, String> {
    let mut node = root;
    for _ in 0..8 {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix(ROOT).and_then(|n| defs.get(&unescape(n))) {
                Some(d) => node = d,
                None => break,
            },
            None => break,
        }
    }
    node.get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter_map(|(k, v)| {
                    let t = match v.get("type") {
                        Some(Value::String(t)) => t.clone(),
                        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null")?.to_string(),
                        _ => return None,
                    };
                    Some((k.clone(), t))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Form values are strings: turn them into what the schema declares so that types are
/// checked for real ("abc" for an integer is refused, "10" is fine).
fn coerce_form(obj: &Map<String, Value>, types: &BTreeMap<String, String>) -> Value {
    let mut out = Map::new();
    for (k, v) in obj {
        let t = types.get(k).map(String::as_str);
        let one = |s: &str| -> Value {
            match t {
                Some("integer") => s.trim().parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(s.into())),
                Some("number") => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                    .unwrap_or_else(|| Value::String(s.into())),
                Some("boolean") => match s.trim().to_ascii_lowercase().as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => Value::String(s.into()),
                },
                _ => Value::String(s.into()),
            }
        };
        let coerced = match (t, v) {
            (Some("array"), Value::String(s)) => Value::Array(vec![Value::String(s.clone())]),
            (_, Value::String(s)) => one(s),
            (Some("array"), Value::Array(a)) => Value::Array(a.clone()),
            (_, other) => other.clone(),
        };
        out.insert(k.clone(), coerced);
    }
    Value::Object(out)
}

struct Converter<'a> {
    components: &'a Map<String, Value>,
    defs: BTreeMap<String, Value>,
    pending: Vec<String>,
    errors: Vec<String>,
}

/// Keywords copied as they are (everything else is OpenAPI-only or an annotation).
const KEEP: &[&str] = &[
    "type",
    "enum",
    "const",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "required",
    "minProperties",
    "maxProperties",
];

impl<'a> Converter<'a> {
    fn ref_name<'r>(&self, r: &'r str) -> Option<&'r str> {
        r.strip_prefix("#/components/schemas/")
    }

    fn component(&mut self, r: &str) -> Option<&'a Value> {
        let Some(name) = self.ref_name(r) else {
            self.errors.push(format!("unsupported $ref {r:?} (only #/components/schemas/...)"));
            return None;
        };
        match self.components.get(name) {
            Some(s) => Some(s),
            None => {
                self.errors.push(format!("dangling $ref {r:?}"));
                None
            }
        }
    }

    fn ref_to(&mut self, r: &str) -> Value {
        if self.component(r).is_none() {
            return json!({});
        }
        let name = self.ref_name(r).unwrap_or_default().to_string();
        if !self.defs.contains_key(&name) && !self.pending.contains(&name) {
            self.pending.push(name.clone());
        }
        json!({ "$ref": format!("{ROOT}{}", escape(&name)) })
    }

    fn drain(&mut self) {
        while let Some(name) = self.pending.pop() {
            if self.defs.contains_key(&name) {
                continue;
            }
            // Placeholder first: recursive schemas refer to themselves.
            self.defs.insert(name.clone(), json!({}));
            let src = self.components.get(&name).cloned().unwrap_or(json!({}));
            let conv = self.convert(&src);
            self.defs.insert(name, conv);
        }
    }

    fn convert(&mut self, s: &Value) -> Value {
        let Some(obj) = s.as_object() else {
            return s.clone();
        };
        let out = self.convert_inner(obj);
        if obj.get("nullable") == Some(&Value::Bool(true)) {
            nullable(out)
        } else {
            out
        }
    }

    fn convert_inner(&mut self, obj: &Map<String, Value>) -> Value {
        // OpenAPI 3.0 ignores siblings of $ref (Vapi puts a title there).
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            return self.ref_to(r);
        }
        if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
            let own_props = obj.contains_key("properties");
            if all.len() == 1 && !own_props {
                return self.convert(&all[0]);
            }
            if let Some(merged) = self.flatten(obj, 0) {
                return self.convert_plain(&merged);
            }
        }
        self.convert_plain(obj)
    }

    /// Merges an object schema with its `allOf` object members into one object schema.
    /// `None` if some member is not an object schema (then `allOf` is kept as it is).
    fn flatten(&mut self, obj: &Map<String, Value>, depth: u32) -> Option<Map<String, Value>> {
        if depth > 16 {
            return None;
        }
        let mut props = obj.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut required: BTreeSet<String> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let mut extra = Map::new();
        for m in obj.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            let resolved: Map<String, Value> = match m.get("$ref").and_then(Value::as_str) {
                Some(r) => self.component(r)?.as_object()?.clone(),
                None => m.as_object()?.clone(),
            };
            let flat = if resolved.contains_key("allOf") { self.flatten(&resolved, depth + 1)? } else { resolved };
            let is_object = flat.contains_key("properties") || flat.get("type").and_then(Value::as_str) == Some("object");
            if !is_object {
                return None;
            }
            if let Some(p) = flat.get("properties").and_then(Value::as_object) {
                for (k, v) in p {
                    props.insert(k.clone(), v.clone());
                }
            }
            if let Some(r) = flat.get("required").and_then(Value::as_array) {
                required.extend(r.iter().filter_map(Value::as_str).map(str::to_string));
            }
            if let Some(a) = flat.get("additionalProperties") {
                extra.entry("additionalProperties").or_insert(a.clone());
            }
        }
        let mut out = Map::new();
        for (k, v) in obj {
            if k != "allOf" && k != "properties" && k != "required" {
                out.insert(k.clone(), v.clone());
            }
        }
        out.insert("type".into(), json!("object"));
        out.insert("properties".into(), Value::Object(props));
        if !required.is_empty() {
            out.insert("required".into(), json!(required));
        }
        for (k, v) in extra {
            out.entry(k).or_insert(v);
        }
        Some(out)
    }

    fn convert_plain(&mut self, obj: &Map<String, Value>) -> Value {
        let mut out = Map::new();
        for (k, v) in obj {
            match k.as_str() {
                "properties" => {
                    let props: Map<String, Value> =
                        v.as_object().map(|p| p.iter().map(|(n, s)| (n.clone(), self.convert(s))).collect()).unwrap_or_default();
                    out.insert(k.clone(), Value::Object(props));
                }
                "items" | "not" => {
                    out.insert(k.clone(), self.convert(v));
                }
                "additionalProperties" => {
                    let a = if v.is_boolean() { v.clone() } else { self.convert(v) };
                    out.insert(k.clone(), a);
                }
                "allOf" | "oneOf" | "anyOf" => {
                    let members: Vec<Value> = v.as_array().map(|a| a.iter().map(|m| self.convert(m)).collect()).unwrap_or_default();
                    out.insert(k.clone(), Value::Array(members));
                }
                // OpenAPI 3.0 has boolean exclusive bounds that modify minimum/maximum.
                "exclusiveMinimum" | "exclusiveMaximum" => match v {
                    Value::Bool(true) => {
                        let bound = if k == "exclusiveMinimum" { "minimum" } else { "maximum" };
                        if let Some(b) = obj.get(bound) {
                            out.insert(k.clone(), b.clone());
                        }
                    }
                    Value::Number(_) => {
                        out.insert(k.clone(), v.clone());
                    }
                    _ => {}
                },
                _ if KEEP.contains(&k.as_str()) => {
                    out.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
        for (flag, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
            if obj.get(flag) == Some(&Value::Bool(true)) {
                out.remove(bound);
            }
        }
        if out.contains_key("properties") && !out.contains_key("additionalProperties") {
            out.insert("additionalProperties".into(), Value::Bool(false));
        }
        Value::Object(out)
    }
}

fn nullable(mut s: Value) -> Value {
    if let Some(o) = s.as_object_mut() {
        if !o.contains_key("$ref") && !o.contains_key("oneOf") && !o.contains_key("anyOf") {
            if let Some(Value::String(t)) = o.get("type").cloned() {
                o.insert("type".into(), json!([t, "null"]));
                if let Some(Value::Array(e)) = o.get_mut("enum") {
                    if !e.contains(&Value::Null) {
                        e.push(Value::Null);
                    }
                }
                return s;
            }
        }
    }
    json!({ "anyOf": [{ "type": "null" }, s] })
}

/// JSON-pointer escaping of one segment.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

/// `/medium/telnyx/0/x` → `medium.telnyx[0].x` (empty for the root).
pub(crate) fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = unescape(seg);
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

/// The component (`$defs`) name an error's keyword belongs to.
fn schema_type_name(schema_path: &str) -> Option<String> {
    let mut segs = schema_path.split('/').skip(1);
    (segs.next()? == "$defs").then_some(())?;
    segs.next().map(unescape)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn render(op: Operation, e: &ValidationError<'_>, root: &Value, out: &mut Vec<Violation>) {
    let at = dotted(e.instance_path().as_str());
    let value = root.pointer(e.instance_path().as_str()).unwrap_or(&Value::Null);
    let msg = match e.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let t = schema_type_name(e.schema_path().as_str()).unwrap_or_else(|| op.request_type().to_string());
            for f in unexpected {
                out.push(Violation::new(join(&at, f), unknown_field_message(op, &t, f)));
            }
            return;
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().map(str::to_string).unwrap_or_else(|| property.to_string());
            out.push(Violation::new(join(&at, &name), "required field is missing"));
            return;
        }
        ValidationErrorKind::Type { kind } => {
            let want = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(ts) => ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
            };
            format!("expected {want}, got {} {}", type_name(value), short(value))
        }
        ValidationErrorKind::Enum { options } => {
            format!("{} is not one of {}", short(value), short(options))
        }
        ValidationErrorKind::Format { format } => {
            format!("{} is not a valid {format}", short(value))
        }
        ValidationErrorKind::Pattern { pattern } => {
            format!("{} does not match the pattern {pattern}", short(value))
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            match closest_branch(context, e.instance_path().as_str()) {
                Some(errs) => {
                    for sub in errs {
                        render(op, sub, root, out);
                    }
                    return;
                }
                None => format!("{} matches none of the allowed shapes", short(value)),
            }
        }
        ValidationErrorKind::OneOfMultipleValid { .. } => "matches more than one of the allowed shapes (ambiguous oneOf)".to_string(),
        _ => e.to_string(),
    };
    out.push(Violation::new(at, msg));
}

/// Of a failed `oneOf`/`anyOf`, the member the value came closest to: prefer a member that
/// got the value's type right (its errors are deeper or about constraints), then the fewest
/// errors. That is what a person means ("the medium object has a bad field", not "not null").
fn closest_branch<'c>(context: &'c [Vec<ValidationError<'static>>], at: &str) -> Option<&'c [ValidationError<'static>]> {
    context
        .iter()
        .filter(|errs| !errs.is_empty())
        .min_by_key(|errs| {
            let shallow_type =
                errs.iter().all(|x| matches!(x.kind(), ValidationErrorKind::Type { .. }) && x.instance_path().as_str() == at);
            (shallow_type, errs.len())
        })
        .map(Vec::as_slice)
}
