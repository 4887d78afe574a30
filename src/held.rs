//! Calls claimed for pacing slots still to come. A pass claims the slots of the next second
//! (`pacing::WORKER_AHEAD_MS`), so a campaign at 30 calls/s is about one claim a second, not
//! thirty; the claimed requests wait here, in the worker, until their slot is RELEASE_AHEAD_MS
//! away, and only then go to the HTTP pool (which sends each at its slot). Until then they can be
//! taken back: a batch paused or cancelled, or a number listed as do-not-call, bumps a counter in
//! shared memory (`wake::HOLDS_EPOCH`), and the worker asks the database which held calls may still
//! go (`dialer._withdraw_held`) before it releases any.
//! No Postgres here: the worker does the asking.

use crate::dispatch::{Job, JobKind};
use std::collections::HashMap;

/// Requests go to the HTTP pool this long before their slot (the pool holds them to the
/// millisecond). A pause that lands within this last stretch no longer stops that call.
pub const RELEASE_AHEAD_MS: f64 = 20.0;

#[derive(Default)]
pub struct Held {
    /// Sorted by slot.
    jobs: Vec<Job>,
    /// `wake::HOLDS_EPOCH` as it was before the oldest held call was claimed.
    epoch: u64,
}

fn slot_of(job: &Job) -> f64 {
    job.not_before_ms.unwrap_or(f64::NEG_INFINITY)
}

fn call_of(job: &Job) -> Option<i64> {
    match job.kind {
        JobKind::Place { call_id, .. } => Some(call_id),
        _ => None,
    }
}

impl Held {
    /// Keeps `jobs` whose slot is further off than RELEASE_AHEAD_MS and returns the rest (to be
    /// sent now). `epoch` is the counter read before these jobs were claimed.
    pub fn hold(&mut self, jobs: Vec<Job>, now_ms: f64, epoch: u64) -> Vec<Job> {
        let (later, now): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| slot_of(j) > now_ms + RELEASE_AHEAD_MS);
        if !later.is_empty() {
            if self.jobs.is_empty() {
                self.epoch = epoch;
            }
            self.jobs.extend(later);
            self.jobs.sort_by(|a, b| slot_of(a).total_cmp(&slot_of(b)));
        }
        now
    }

    /// The held jobs whose slot is now RELEASE_AHEAD_MS away or less.
    pub fn take_due(&mut self, now_ms: f64) -> Vec<Job> {
        let n = self.jobs.partition_point(|j| slot_of(j) <= now_ms + RELEASE_AHEAD_MS);
        self.jobs.drain(..n).collect()
    }

    /// When (unix ms) the next held job is to be released.
    pub fn next_release_ms(&self) -> Option<f64> {
        self.jobs.first().map(|j| slot_of(j) - RELEASE_AHEAD_MS)
    }

    /// Something that may stop held calls has committed since they were claimed.
    pub fn stale(&self, epoch: u64) -> bool {
        !self.jobs.is_empty() && epoch != self.epoch
    }

    /// The held calls and their slots (unix ms), for the database to check (`dialer._withdraw_held`).
    pub fn calls(&self) -> (Vec<i64>, Vec<f64>) {
        self.jobs.iter().filter_map(|j| Some((call_of(j)?, slot_of(j)))).unzip()
    }

    /// After a check at `epoch`: drops the calls the database withdrew.
    pub fn checked(&mut self, epoch: u64, withdrawn: &[i64]) {
        self.jobs.retain(|j| call_of(j).is_none_or(|id| !withdrawn.contains(&id)));
        self.epoch = epoch;
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Held requests per provider account (they count against its share of the HTTP threads).
    pub fn by_account(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for key in self.jobs.iter().filter_map(|j| j.flight_key.as_ref()) {
            *out.entry(key.clone()).or_insert(0) += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{HttpRequest, Method};

    fn job(call_id: i64, slot: f64) -> Job {
        Job {
            kind: JobKind::Place { call_id, batch_id: 1, provider: "ultravox".into() },
            request: HttpRequest::json(Method::Post, "http://127.0.0.1/".into(), Vec::new(), None, Vec::new()).unwrap(),
            not_before_ms: Some(slot),
            spacing: Vec::new(),
            flight_key: Some("1:ultravox".into()),
        }
    }

    fn ids(jobs: &[Job]) -> Vec<i64> {
        jobs.iter().filter_map(call_of).collect()
    }

    #[test]
    fn near_slots_leave_at_once_and_later_ones_in_slot_order() {
        let mut held = Held::default();
        let now = held.hold(vec![job(3, 1300.0), job(1, 1010.0), job(2, 1100.0)], 1000.0, 7);
        assert_eq!(ids(&now), vec![1]);
        assert_eq!(held.len(), 2);
        assert_eq!(held.next_release_ms(), Some(1080.0));
        assert!(held.take_due(1050.0).is_empty());
        assert_eq!(ids(&held.take_due(1080.0)), vec![2]);
        assert_eq!(held.by_account().get("1:ultravox"), Some(&1));
        assert_eq!(ids(&held.take_due(5000.0)), vec![3]);
        assert!(held.is_empty() && held.next_release_ms().is_none());
    }

    #[test]
    fn a_change_since_the_oldest_claim_makes_the_held_calls_stale_until_checked() {
        let mut held = Held::default();
        held.hold(vec![job(1, 2000.0)], 1000.0, 4);
        // Claimed later, after another change: the oldest call's epoch is the one that counts.
        held.hold(vec![job(2, 2100.0)], 1000.0, 5);
        assert!(!held.stale(4));
        assert!(held.stale(5));
        assert_eq!(held.calls(), (vec![1, 2], vec![2000.0, 2100.0]));
        held.checked(5, &[1]);
        assert!(!held.stale(5));
        assert_eq!(held.calls().0, vec![2]);
        // Nothing held: nothing is ever stale.
        held.take_due(9999.0);
        assert!(!held.stale(6));
    }
}
