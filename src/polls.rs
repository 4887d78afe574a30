//! The worker's status polls sent and not yet recorded. A call is marked polled only when its
//! answer is recorded (`dialer._record_status`): most polls find the call ended, and that write
//! would be wasted. Until then the call is still due in the table, so the worker names these
//! calls to every pick, which leaves them out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The pool answers every request (a timeout is an answer), so an entry outlives its poll only
/// when an answer could not be recorded. Dropped after this long at the latest: at worst that
/// call is asked about twice.
const FORGET_AFTER: Duration = Duration::from_secs(120);

#[derive(Default)]
pub struct PollsInFlight {
    sent_at: HashMap<i64, Instant>,
}

impl PollsInFlight {
    pub fn sent(&mut self, call_id: i64, now: Instant) {
        self.sent_at.insert(call_id, now);
    }

    /// The poll's answer was recorded (or could not be, and the call may be asked again).
    pub fn answered(&mut self, call_id: i64) {
        self.sent_at.remove(&call_id);
    }

    pub fn len(&self) -> usize {
        self.sent_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent_at.is_empty()
    }

    /// The calls to leave out of the next pick, once those sent too long ago are forgotten.
    pub fn call_ids(&mut self, now: Instant) -> Vec<i64> {
        self.sent_at.retain(|_, sent| now.saturating_duration_since(*sent) < FORGET_AFTER);
        self.sent_at.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_is_left_out_until_its_answer_is_recorded() {
        let now = Instant::now();
        let mut polls = PollsInFlight::default();
        polls.sent(7, now);
        polls.sent(9, now);
        let mut ids = polls.call_ids(now);
        ids.sort();
        assert_eq!(ids, vec![7, 9]);
        polls.answered(7);
        assert_eq!(polls.call_ids(now), vec![9]);
        assert_eq!(polls.len(), 1);
    }

    #[test]
    fn a_poll_never_answered_is_forgotten_and_its_call_asked_again() {
        let now = Instant::now();
        let mut polls = PollsInFlight::default();
        polls.sent(7, now);
        polls.sent(8, now + FORGET_AFTER / 2);
        assert_eq!(polls.call_ids(now + FORGET_AFTER), vec![8]);
        assert!(!polls.is_empty());
        assert!(polls.call_ids(now + FORGET_AFTER * 2).is_empty());
    }
}
