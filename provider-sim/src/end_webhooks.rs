//! The end-of-call webhooks of Vapi, Retell and Bland calls: sent once the call has ended,
//! each `webhook_redeliveries` more times (the providers' retries), built afresh (and freshly
//! signed) for every delivery. Each provider builds its own requests.

use crate::config::{Provider, SimConfig};
use crate::exchange::CallJson;
use crate::mutex::lock;
use crate::state::St;
use crate::webhooks::Outgoing;
use serde_json::Value;
use std::sync::Arc;

/// URL, JSON body and headers of one delivery.
pub(crate) type Delivery = (String, Vec<u8>, Vec<(&'static str, String)>);

/// Sends `events` (name, µs after the call's end) for the call: `build(config, event, call
/// object, now)` makes each delivery; `None` stops them all (no target any more).
pub(crate) fn schedule(
    st: &St,
    provider: Provider,
    call_id: String,
    events: &'static [(&'static str, i64)],
    call_json: CallJson,
    build: impl Fn(&SimConfig, &str, Value, i64) -> Option<Delivery> + Send + 'static,
) {
    let st = Arc::clone(st);
    tokio::spawn(async move {
        let ended_at = match lock(&st.calls).get(&call_id) {
            Some(c) => c.call.ended_at_us,
            None => return,
        };
        for (event, delay_us) in events {
            st.clock.sleep_until(ended_at + delay_us).await;
            let cfg = st.config();
            for _ in 0..=cfg.webhook_redeliveries {
                let now = st.clock.now_us();
                let call = match lock(&st.calls).get(&call_id) {
                    Some(c) => call_json(c, now.max(ended_at)),
                    None => return, // reset
                };
                let Some((url, body, headers)) = build(&cfg, event, call, now) else { return };
                st.deliver(Outgoing::json_post(provider, event, &call_id, url, body, headers)).await;
            }
        }
    });
}
