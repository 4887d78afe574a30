//! `dialer._check_agent_mapping(...)`: an agent mapping checked against its provider's API
//! (the adapter's rules) whenever it is stored, so a request the provider would refuse is
//! refused here, naming the field.

use crate::api::process::raise;
use crate::error::DialerError;
use crate::providers::{self, Mapping};
use pgrx::prelude::*;
use pgrx::JsonB;

#[pg_extern(stable, parallel_safe)]
fn _check_agent_mapping(
    provider: Option<&str>,
    external_agent_id: Option<&str>,
    from_number: Option<&str>,
    carrier: Option<&str>,
    request_template: Option<JsonB>,
) {
    let provider = provider.unwrap_or("");
    let mapping = Mapping {
        external_agent_id: external_agent_id.map(str::to_string),
        from_number: from_number.map(str::to_string),
        carrier: carrier.map(str::to_string),
        request_template: request_template.map(|j| j.0).unwrap_or_else(|| serde_json::json!({})),
        use_caller_id_pool: false,
    };
    if let Err(why) = providers::check_mapping(provider, &mapping) {
        raise(DialerError::InvalidArgument(format!("{provider} agent mapping refused: {why}")));
    }
}
