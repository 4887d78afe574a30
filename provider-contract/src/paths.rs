//! Which create operation a method + path is, and whether its path parameters are valid.

use crate::Operation;

/// `8-4-4-4-12` hex digits (the textual form `format: uuid` means).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_account_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|c| c.is_ascii_hexdigit())
}

pub(crate) fn check_path(method: &str, path: &str) -> Result<Option<Operation>, Vec<String>> {
    if !method.eq_ignore_ascii_case("POST") {
        return Ok(None);
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    match segs.as_slice() {
        ["api", "calls"] => Ok(Some(Operation::UltravoxStartCall)),
        ["api", "agents", agent_id, "calls"] => {
            if is_uuid(agent_id) {
                Ok(Some(Operation::UltravoxStartAgentCall))
            } else {
                Err(vec![format!("agent_id: {agent_id:?} is not a UUID (the path parameter has format: uuid)")])
            }
        }
        ["2010-04-01", "Accounts", sid, "Calls.json"] => {
            if is_account_sid(sid) {
                Ok(Some(Operation::TwilioCreateCall))
            } else {
                Err(vec![format!("AccountSid: {sid:?} does not match ^AC[0-9a-fA-F]{{32}}$")])
            }
        }
        ["call"] => Ok(Some(Operation::VapiCreateCall)),
        ["v2", "create-phone-call"] => Ok(Some(Operation::RetellCreatePhoneCall)),
        ["v1", "calls"] => Ok(Some(Operation::BlandSendCall)),
        _ => Ok(None),
    }
}
