//! Shared fixtures of the adapter tests.

use super::{CallSpec, Credentials, Mapping, ProviderTarget};
use serde_json::{json, Value};

pub const UUID: &str = "3f1c2a9e-0b7d-4c1e-9a55-2f0e6d8b7c41";
pub const SID: &str = "AC0123456789abcdef0123456789abcdef";

pub fn call() -> CallSpec {
    CallSpec {
        call_id: 9,
        batch_id: 3,
        contact_id: 42,
        phone_number: "+15550001111".into(),
        name: Some("Ann".into()),
        variables: json!({"plan": "gold", "visits": 3}),
        lead_ref: Some("L-7".into()),
        idempotency_key: "pgd-3-42-1".into(),
        slot_at_ms: 0.0,
        spacing_ms: 0.0,
        agent_mapping_id: 1,
        metadata: json!({"campaign": "Q4", "score": 0.9, "tags": ["a"], "contact_id": "spoofed"}),
        credential_key: None,
        credential_gap_ms: 0.0,
        global_gap_ms: 0.0,
    }
}

pub fn mapping(agent: Option<&str>, from: Option<&str>, template: Value) -> Mapping {
    Mapping {
        external_agent_id: agent.map(str::to_string),
        from_number: from.map(str::to_string),
        carrier: None,
        request_template: template,
        use_caller_id_pool: false,
    }
}

pub fn target(provider: &str, mapping: Mapping) -> ProviderTarget {
    ProviderTarget {
        provider: provider.into(),
        mapping,
        credentials: Credentials {
            api_key: "k-secret-123".into(),
            base_url: Some("http://127.0.0.1:9/".into()),
            account_sid: Some(SID.into()),
        },
    }
}

pub fn body(req: &super::HttpRequest) -> Value {
    req.body.as_deref().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null)
}
