//! `dialer.ingest_webhook(provider, body, headers)`: provider call events, signature-checked,
//! applied once.

use crate::api::process::raise;
use crate::error::DialerError;
use crate::sealed::unseal;
use crate::webhooks::{self, CallEvent};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn ingest_webhook(provider: &str, body: &str, headers: default!(JsonB, "'{}'")) -> JsonB {
    match ingest(provider, body, &headers.0) {
        Ok(v) => JsonB(v),
        Err(e) => raise(e),
    }
}

fn ingest(provider: &str, body: &str, headers: &Value) -> Result<Value, DialerError> {
    if body.len() > webhooks::MAX_BODY_BYTES {
        return Err(DialerError::TooLarge(format!(
            "webhook body of {} bytes is larger than {} bytes",
            body.len(),
            webhooks::MAX_BODY_BYTES
        )));
    }
    if !headers.is_object() {
        return Err(DialerError::InvalidArgument("headers must be a JSON object of header names to values".into()));
    }
    let event = match provider {
        "ultravox" => webhooks::parse_ultravox(body),
        "twilio" => webhooks::parse_twilio(body),
        "vapi" => webhooks::parse_vapi(body),
        "retell" => webhooks::parse_retell(body),
        "bland" => webhooks::parse_bland(body),
        other => {
            return Err(DialerError::InvalidArgument(format!(
                "webhooks are accepted from 'ultravox', 'twilio', 'vapi', 'retell' and 'bland', not {:?}",
                other.chars().take(40).collect::<String>()
            )))
        }
    }
    .map_err(DialerError::MalformedInput)?;
    let Some(event) = event else {
        return Ok(json!({"status": "ignored", "reason": "event type not handled"}));
    };

    // The call, and the secret of the agency that placed it.
    let row = find_call(provider, &event.provider_call_id)?;
    let Some((call_id, agency_id, webhook_secret, api_key, allow_unsigned)) = row else {
        return Ok(json!({"status": "ignored", "reason": "no call with this provider call id"}));
    };
    // Only the secret this provider signs with is decrypted (Ultravox, Vapi, Bland: the webhook
    // secret; Twilio: the auth token; Retell: its webhook key, or else the API key, which is what
    // Retell signs with).
    let open = |v: Option<String>, column: &str| v.map(|s| unseal(&s, agency_id, provider, column)).transpose();
    let (webhook_secret, api_key) = match provider {
        "ultravox" | "vapi" | "bland" => (open(webhook_secret, "webhook_secret")?, None),
        "retell" => match open(webhook_secret, "webhook_secret")?.filter(|s| !s.is_empty()) {
            Some(s) => (Some(s), None),
            None => (None, open(api_key, "api_key")?),
        },
        _ => (None, open(api_key, "api_key")?),
    };

    let h = webhooks::headers_map(headers);
    let now = chrono::Utc::now().timestamp();
    let verified = match provider {
        // Ultravox: the agency's webhook secret. Without one nothing can be verified: refused,
        // unless the operator chose to take unsigned webhooks for this account.
        "ultravox" => match webhook_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(webhooks::verify_ultravox(s, body, &h, now)),
            None if allow_unsigned => None,
            None => Some(Err(format!(
                "no webhook secret is stored for agency {agency_id}, so this delivery cannot be verified: store Ultravox's \
                 webhook secret with dialer.set_provider_credentials(..., webhook_secret => ...), or accept unsigned \
                 webhooks with dialer.allow_unsigned_webhooks({agency_id}, 'ultravox')"
            ))),
        },
        "vapi" | "bland" => match webhook_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(s) if provider == "vapi" => Some(webhooks::verify_vapi(s, body, &h, now)),
            Some(s) => Some(webhooks::verify_bland(s, body, &h)),
            None if allow_unsigned => None,
            None => Some(Err(format!(
                "no webhook secret is stored for agency {agency_id}, so this delivery cannot be verified: store {} \
                 with dialer.set_provider_credentials(..., webhook_secret => ...), or accept unsigned webhooks with \
                 dialer.allow_unsigned_webhooks({agency_id}, '{provider}')",
                if provider == "vapi" {
                    "the Vapi server secret (server.secret or its HMAC plan's key)"
                } else {
                    "Bland's webhook signing secret"
                }
            ))),
        },
        // Retell signs with an API key of the account (the one marked for webhooks).
        "retell" => match webhook_secret.as_deref().or(api_key.as_deref()).filter(|s| !s.is_empty()) {
            Some(k) => Some(webhooks::verify_retell(k, body, &h, now)),
            None if allow_unsigned => None,
            None => Some(Err(format!(
                "no Retell key is stored for agency {agency_id}, so this delivery cannot be verified: store the API key \
                 with the webhook badge with dialer.set_provider_credentials(..., webhook_secret => ...)"
            ))),
        },
        // Twilio signs with the account's auth token, and only with it.
        _ => Some(match api_key.as_deref() {
            Some(token) => webhooks::verify_twilio(token, body, &h),
            None => Err("no twilio auth token is stored for the agency that placed this call".to_string()),
        }),
    };
    if let Some(Err(why)) = verified {
        return Err(DialerError::Unauthorized(format!("{provider} webhook refused: {why}")));
    }
    apply(provider, call_id, &event)
}

/// The call's id and agency, the agency's webhook secret and API key (sealed), and whether it
/// takes unsigned webhooks.
type CallRow = (i64, i64, Option<String>, Option<String>, bool);

/// How long a webhook for a call not found waits for the worker to record its placed calls.
const WAIT_FOR_PLACED: Duration = Duration::from_secs(2);
const LOOK_AGAIN_EVERY: Duration = Duration::from_millis(5);

/// The call with this provider id. A webhook may come before the worker has recorded the answer
/// that gave the id (it records answers together, up to half a second apart, and the provider may
/// send an event within milliseconds): while calls of this provider are sent and not yet recorded,
/// the worker is asked to record what it holds now (wake::ask_to_record), and the call is looked
/// for again, each time in a fresh snapshot, for up to WAIT_FOR_PLACED.
fn find_call(provider: &str, provider_call_id: &str) -> Result<Option<CallRow>, DialerError> {
    let deadline = Instant::now() + WAIT_FOR_PLACED;
    Spi::connect_mut(|client| {
        loop {
            // (update, not select: a read-only SPI query would reuse the statement's snapshot and
            // never see the worker's commit)
            let mut t = client.update(
                "SELECT k.id, k.agency_id, pc.webhook_secret, pc.api_key, coalesce(pc.allow_unsigned_webhooks, false)
                   FROM dialer.calls k
                   LEFT JOIN dialer.provider_credentials pc ON pc.agency_id = k.agency_id AND pc.provider = k.provider
                  WHERE k.provider = $1 AND k.provider_call_id = $2
                  ORDER BY k.id DESC LIMIT 1",
                None,
                &[provider.into(), provider_call_id.into()],
            )?;
            if let Some(r) = t.next() {
                return Ok(Some((
                    r.get::<i64>(1)?.unwrap_or(0),
                    r.get::<i64>(2)?.unwrap_or(0),
                    r.get::<String>(3)?,
                    r.get::<String>(4)?,
                    r.get::<bool>(5)?.unwrap_or(false),
                )));
            }
            let placing = client
                .update("SELECT EXISTS (SELECT 1 FROM dialer.calls WHERE status = 'dialing' AND provider = $1)", None, &[provider.into()])?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            if !placing || Instant::now() >= deadline {
                return Ok(None);
            }
            crate::wake::ask_to_record();
            unsafe { pg_sys::pg_usleep(LOOK_AGAIN_EVERY.as_micros() as std::ffi::c_long) };
            pgrx::check_for_interrupts!();
        }
    })
    .map_err(|e: pgrx::spi::Error| DialerError::database(e.to_string()))
}

fn apply(provider: &str, call_id: i64, event: &CallEvent) -> Result<Value, DialerError> {
    let payload = json!({"ended": event.ended, "end_reason": event.end_reason});
    let first = Spi::get_one_with_args::<bool>(
        "SELECT dialer._webhook_first_delivery($1, $2, $3, $4)",
        &[provider.into(), event.event_id.as_str().into(), call_id.into(), JsonB(payload).into()],
    )
    .map_err(|e| DialerError::database(e.to_string()))?
    .unwrap_or(false);
    if !first {
        return Ok(json!({"status": "duplicate", "call_id": call_id}));
    }
    let answered = webhooks::clean_timestamp(event.answered_at.as_deref());
    if !event.ended {
        // This call's events reach us, so its end will too: its next poll is only the safety net
        // for a lost webhook, as far off as the poll back-off goes (never nearer than a poll
        // already put it: that is at most the same back-off from an earlier time).
        Spi::run_with_args(
            "UPDATE dialer.calls
                SET answered_at = coalesce(answered_at, $2::timestamptz),
                    poll_interval_from = clock_timestamp() + dialer._poll_backoff(clock_timestamp() - created_at, true)
              WHERE id = $1",
            &[call_id.into(), answered.into()],
        )
        .map_err(|e| DialerError::database(e.to_string()))?;
        return Ok(json!({"status": "applied", "call_id": call_id, "ended": false}));
    }
    let changed = Spi::get_one_with_args::<bool>(
        "SELECT dialer._end_call($1, $2, $3::timestamptz, $4::timestamptz)",
        &[call_id.into(), event.end_reason.clone().into(), answered.into(), webhooks::clean_timestamp(event.ended_at.as_deref()).into()],
    )
    .map_err(|e| DialerError::database(e.to_string()))?
    .unwrap_or(false);
    Ok(json!({"status": if changed { "applied" } else { "already_final" }, "call_id": call_id, "ended": true,
              "end_reason": event.end_reason}))
}
