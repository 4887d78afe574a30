//! How a call ended, in pg_dialer's own words. Every adapter maps its provider's end statuses
//! onto these, so retries, retry delays and hand-offs (in SQL: `dialer._retry_outcome`,
//! `dialer._outcome_of_end_reason`) need to know no provider's vocabulary.
//!
//! | end reason | meaning | what follows |
//! |---|---|---|
//! | `hangup` | the person hung up after the conversation | the disposition decides |
//! | `agent_hangup` | the AI agent ended the call | the disposition decides |
//! | `max_duration` | the call reached its time limit | the disposition decides |
//! | `no-answer` | nobody answered (or never joined) | retry delay `no-answer`, else hand-off |
//! | `busy` | the line was busy | retry delay `busy`, else hand-off |
//! | `voicemail` | an answering machine answered | retry delay `voicemail`, else hand-off |
//! | `failed` | the provider or carrier could not place or keep the call | retry delay `failed`, else hand-off with priority |
//! | `invalid_number` | the number cannot be called | the lead is trashed |
//! | `canceled` | the call was cancelled before it connected | hand-off |

pub const HANGUP: &str = "hangup";
pub const AGENT_HANGUP: &str = "agent_hangup";
pub const MAX_DURATION: &str = "max_duration";
pub const NO_ANSWER: &str = "no-answer";
pub const BUSY: &str = "busy";
pub const VOICEMAIL: &str = "voicemail";
pub const FAILED: &str = "failed";
pub const INVALID_NUMBER: &str = "invalid_number";
pub const CANCELED: &str = "canceled";

/// Ultravox `endReason` (the `Call` schema's EndReasonEnum).
pub fn ultravox(end_reason: Option<&str>) -> &'static str {
    match end_reason {
        Some("hangup") => HANGUP,
        Some("agent_hangup") => AGENT_HANGUP,
        // The call's maxDuration ran out (the person was on the line).
        Some("timeout") => MAX_DURATION,
        // The callee never joined: the phone was not answered.
        Some("unjoined") => NO_ANSWER,
        Some("connection_error") | Some("system_error") => FAILED,
        // Ended with no reason given: treat as an ordinary end, the disposition decides.
        None => HANGUP,
        Some(_) => FAILED,
    }
}

/// Twilio's final `status` with the answering-machine verdict (`answered_by`, `AnsweredBy`).
pub fn twilio(status: &str, answered_by: Option<&str>) -> &'static str {
    let machine = answered_by.is_some_and(|a| a.starts_with("machine") || a == "fax");
    match status {
        "completed" if machine => VOICEMAIL,
        "completed" => HANGUP,
        "busy" => BUSY,
        "no-answer" => NO_ANSWER,
        "canceled" => CANCELED,
        _ => FAILED,
    }
}

/// Vapi's `endedReason` (hundreds of values; grouped by what they mean for the contact).
pub fn vapi(ended_reason: Option<&str>) -> &'static str {
    let Some(r) = ended_reason else { return HANGUP };
    match r {
        "voicemail" => VOICEMAIL,
        "customer-busy" => BUSY,
        "customer-did-not-answer" | "silence-timed-out" => NO_ANSWER,
        "exceeded-max-duration" => MAX_DURATION,
        "manually-canceled" | "call-deleted" | "scheduled-call-deleted" => CANCELED,
        "twilio-reported-customer-misdialed" => INVALID_NUMBER,
        r if r.starts_with("customer-ended-call") => HANGUP,
        r if r.starts_with("assistant-ended-call") || r == "assistant-said-end-call-phrase" || r == "assistant-forwarded-call" => {
            AGENT_HANGUP
        }
        r if r.starts_with("call.ending.hook") => AGENT_HANGUP,
        _ => FAILED,
    }
}

/// Retell's `disconnection_reason`.
pub fn retell(reason: Option<&str>) -> &'static str {
    let Some(r) = reason else { return HANGUP };
    match r {
        "user_hangup" | "inactivity" => HANGUP,
        "agent_hangup" | "call_transfer" => AGENT_HANGUP,
        "max_duration_reached" => MAX_DURATION,
        "voicemail_reached" => VOICEMAIL,
        "dial_busy" => BUSY,
        "dial_no_answer" => NO_ANSWER,
        "invalid_destination" => INVALID_NUMBER,
        "user_declined" | "marked_as_spam" => NO_ANSWER,
        _ => FAILED,
    }
}

/// Bland's call `status` with its `answered_by`.
pub fn bland(status: &str, answered_by: Option<&str>) -> &'static str {
    match (status, answered_by) {
        (_, Some("voicemail")) => VOICEMAIL,
        ("completed", _) => HANGUP,
        ("busy", _) => BUSY,
        ("no-answer", _) | ("no_answer", _) => NO_ANSWER,
        ("canceled", _) | ("cancelled", _) => CANCELED,
        _ => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ultravox_end_reason_has_an_outcome() {
        // The spec's EndReasonEnum, each to a distinct meaning.
        let got: Vec<&str> = ["unjoined", "hangup", "agent_hangup", "timeout", "connection_error", "system_error"]
            .iter()
            .map(|r| ultravox(Some(r)))
            .collect();
        assert_eq!(got, [NO_ANSWER, HANGUP, AGENT_HANGUP, MAX_DURATION, FAILED, FAILED]);
    }

    #[test]
    fn twilio_answering_machine_is_voicemail() {
        assert_eq!(twilio("completed", Some("machine_start")), VOICEMAIL);
        assert_eq!(twilio("completed", Some("machine_end_beep")), VOICEMAIL);
        assert_eq!(twilio("completed", Some("human")), HANGUP);
        assert_eq!(twilio("completed", None), HANGUP);
        assert_eq!(twilio("no-answer", None), NO_ANSWER);
        assert_eq!(twilio("busy", None), BUSY);
        assert_eq!(twilio("failed", None), FAILED);
    }

    #[test]
    fn vapi_retell_bland_groups() {
        assert_eq!(vapi(Some("customer-ended-call")), HANGUP);
        assert_eq!(vapi(Some("assistant-ended-call-with-hangup-task")), AGENT_HANGUP);
        assert_eq!(vapi(Some("voicemail")), VOICEMAIL);
        assert_eq!(vapi(Some("customer-did-not-answer")), NO_ANSWER);
        assert_eq!(vapi(Some("call.in-progress.error-providerfault-openai-llm-failed")), FAILED);
        assert_eq!(retell(Some("voicemail_reached")), VOICEMAIL);
        assert_eq!(retell(Some("dial_no_answer")), NO_ANSWER);
        assert_eq!(retell(Some("error_llm_websocket_open")), FAILED);
        assert_eq!(bland("completed", Some("voicemail")), VOICEMAIL);
        assert_eq!(bland("completed", Some("human")), HANGUP);
    }
}
