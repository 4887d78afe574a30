//! Pacing: when a batch's next calls may leave. One pure function decides the slots of a claim
//! (`plan`, called by the claim, sql/claim.sql, through `dialer._pacing_plan`), one where the batch
//! goes on from (`batch_next_slot_ms`), and the keys the HTTP pool spaces requests by at the
//! moment of sending (`spacing_keys`). Times are unix milliseconds.

/// A batch's calls are spaced 60,600 / calls_per_minute ms apart: 1% under its limit, so that a
/// request leaving up to 600 ms late (a busy machine, a worker restart) still never puts one too
/// many into any 60-second window.
pub const SPACING_MARGIN: f64 = 1.01;

/// How far ahead the worker claims slots (their requests wait in the worker until the slot:
/// held.rs), so that a paced campaign is about one claim a second however fast it dials; and
/// process_batches(), which returns only when its calls are answered.
pub const WORKER_AHEAD_MS: f64 = 1000.0;
pub const FUNCTION_AHEAD_MS: f64 = 25.0;

/// The worker's claim runs this long before the batch's next slot, so each claim takes about four
/// fifths of WORKER_AHEAD_MS of slots (a pass late by this much still sends on time).
pub fn claim_before_slot() -> std::time::Duration {
    std::time::Duration::from_micros((WORKER_AHEAD_MS * 200.0) as u64)
}

/// Slots missed while no worker ran are made up at this fraction of the spacing.
const CATCH_UP_PACE: f64 = 0.25;

/// How far back missed slots are made up.
const CATCH_UP_WINDOW_MS: f64 = 60_000.0;

/// A pacing that applies besides the batch's own: its provider account's max_calls_per_second,
/// or the server's dialer.max_calls_per_second. `next_ms`: its next free slot, if any was taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    pub gap_ms: f64,
    pub next_ms: Option<f64>,
}

impl Cap {
    /// A calls-per-second limit (None: no cap).
    pub fn per_second(calls_per_second: Option<f64>, next_ms: Option<f64>) -> Option<Cap> {
        calls_per_second.filter(|cps| *cps > 0.0).map(|cps| Cap { gap_ms: 1000.0 / cps, next_ms })
    }
}

/// What a claim may take, before the limits only the database knows (concurrency, budget,
/// calls in the last minute).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// The batch's slot this claim starts from.
    pub slot_ms: f64,
    /// When the first claimed call leaves, and the gap between the calls of this claim.
    pub start_ms: f64,
    pub gap_ms: f64,
    /// The batch's own spacing, and the gap its requests keep at sending (a quarter of it
    /// while catching up).
    pub spacing_ms: f64,
    pub batch_gap_ms: f64,
    pub catching_up: bool,
    /// How many slots this claim may fill.
    pub slots: i32,
}

/// The slots a claim at `now_ms` may fill, taking those up to `ahead_ms` ahead; None when the
/// batch's next slot (or its account's, or the server's) is further off than that.
/// `next_slot_ms`: where the batch left off (None: never dialed); `catch_up_before_ms`: when the
/// worker started (slots missed before it are made up, never more than the limit in 60 s).
pub fn plan(
    now_ms: f64,
    ahead_ms: f64,
    calls_per_minute: i32,
    next_slot_ms: Option<f64>,
    catch_up_before_ms: Option<f64>,
    account: Option<Cap>,
    global: Option<Cap>,
) -> Option<Plan> {
    let spacing_ms = 60_000.0 * SPACING_MARGIN / f64::from(calls_per_minute.max(1));
    let horizon = now_ms + ahead_ms;
    let mut batch_gap_ms = spacing_ms;
    let mut catching_up = false;
    let slot_ms = match next_slot_ms {
        None => now_ms,
        Some(slot) if slot < now_ms - spacing_ms && catch_up_before_ms.is_some_and(|before| slot < before) => {
            catching_up = true;
            batch_gap_ms = spacing_ms * CATCH_UP_PACE;
            slot.max(now_ms - CATCH_UP_WINDOW_MS)
        }
        Some(slot) if slot < now_ms => now_ms,
        Some(slot) if slot > horizon => return None,
        Some(slot) => slot,
    };
    let mut start_ms = if catching_up { now_ms } else { slot_ms };
    let mut gap_ms = batch_gap_ms;
    for cap in [account, global].into_iter().flatten() {
        start_ms = start_ms.max(cap.next_ms.unwrap_or(now_ms));
        gap_ms = gap_ms.max(cap.gap_ms);
    }
    if start_ms > horizon {
        return None;
    }
    let slots = if catching_up {
        let until = catch_up_before_ms.map_or(now_ms, |before| before.min(now_ms));
        1.0 + ((until - slot_ms) / spacing_ms).floor()
    } else {
        1.0 + ((horizon - start_ms) / gap_ms).floor()
    };
    Some(Plan { slot_ms, start_ms, gap_ms, spacing_ms, batch_gap_ms, catching_up, slots: slots.clamp(0.0, f64::from(i32::MAX)) as i32 })
}

impl Plan {
    /// When the `i`-th call of the claim (from 0) leaves.
    pub fn send_at_ms(&self, i: i32) -> f64 {
        self.start_ms + self.gap_ms * f64::from(i)
    }

    /// Where the batch goes on from after `claimed` calls: the slots they took (made-up slots
    /// at the batch's spacing, so a restart's backlog is not counted twice), and never sooner than
    /// a spacing after the last of them.
    pub fn batch_next_slot_ms(&self, claimed: i32) -> f64 {
        let by_slots = self.slot_ms + self.spacing_ms * f64::from(claimed);
        if self.catching_up {
            by_slots
        } else {
            by_slots.max(self.send_at_ms(claimed - 1) + self.spacing_ms)
        }
    }
}

/// The keys the HTTP pool spaces a claimed request by when it sends it (never two requests of
/// one key closer than its gap): its batch, its provider account when that has a cap, and the
/// server's cap.
pub fn spacing_keys(batch_id: i64, batch_gap_ms: f64, account: Option<(&str, f64)>, global_gap_ms: f64) -> Vec<(String, f64)> {
    let mut keys = vec![(format!("batch:{batch_id}"), batch_gap_ms)];
    if let Some((account, gap)) = account {
        keys.push((format!("account:{account}"), gap));
    }
    if global_gap_ms > 0.0 {
        keys.push(("global".to_string(), global_gap_ms));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_000_000.0;

    #[test]
    fn a_new_batch_starts_now_and_takes_the_slots_ahead() {
        // 60 calls/min: 1,010 ms apart; a second ahead from now holds 1 slot, 2.5 s holds 3.
        let p = plan(NOW, 1000.0, 60, None, None, None, None).unwrap();
        assert_eq!((p.start_ms, p.spacing_ms, p.slots, p.catching_up), (NOW, 1010.0, 1, false));
        assert_eq!(plan(NOW, 2500.0, 60, None, None, None, None).unwrap().slots, 3);
        assert_eq!(p.batch_next_slot_ms(1), NOW + 1010.0);
    }

    #[test]
    fn a_slot_further_off_than_the_lead_waits_and_a_late_worker_takes_it_as_now() {
        assert_eq!(plan(NOW, 1000.0, 60, Some(NOW + 1500.0), None, None, None), None);
        let near = plan(NOW, 1000.0, 60, Some(NOW + 400.0), None, None, None).unwrap();
        assert_eq!((near.start_ms, near.slots), (NOW + 400.0, 1));
        // A little late (under a spacing): the slot is now, the spacing is never shortened.
        let late = plan(NOW, 0.0, 60, Some(NOW - 300.0), None, None, None).unwrap();
        assert_eq!((late.slot_ms, late.slots), (NOW, 1));
        assert_eq!(late.batch_next_slot_ms(1), NOW + 1010.0);
    }

    #[test]
    fn slots_missed_before_the_worker_started_are_made_up_at_a_quarter_of_the_spacing() {
        // Left off 10 s before a worker that started 2 s ago: slots from then to the start.
        let p = plan(NOW, 1000.0, 60, Some(NOW - 10_000.0), Some(NOW - 2000.0), None, None).unwrap();
        assert!(p.catching_up);
        assert_eq!((p.start_ms, p.batch_gap_ms), (NOW, 252.5));
        assert_eq!(p.slots, 1 + (8000.0f64 / 1010.0).floor() as i32);
        // The batch goes on from the slots it made up, at its own spacing.
        assert_eq!(p.batch_next_slot_ms(3), NOW - 10_000.0 + 3.0 * 1010.0);
        // Never more than a minute back.
        let long = plan(NOW, 0.0, 60, Some(NOW - 600_000.0), Some(NOW), None, None).unwrap();
        assert_eq!(long.slot_ms, NOW - 60_000.0);
        // Missed while this worker ran (the batch was at max_concurrent): not made up.
        let skipped = plan(NOW, 0.0, 60, Some(NOW - 10_000.0), Some(NOW - 60_000.0), None, None).unwrap();
        assert!(!skipped.catching_up);
        assert_eq!(skipped.slot_ms, NOW);
    }

    #[test]
    fn an_account_or_server_cap_spaces_and_delays_the_claim() {
        // 600 calls/min (101 ms) under an account cap of 5 calls/s (200 ms) whose next slot is 300 ms off.
        let account = Cap::per_second(Some(5.0), Some(NOW + 300.0));
        let p = plan(NOW, 1000.0, 600, None, None, account, None).unwrap();
        assert_eq!((p.start_ms, p.gap_ms, p.batch_gap_ms), (NOW + 300.0, 200.0, 101.0));
        assert_eq!(p.slots, 1 + (700.0f64 / 200.0).floor() as i32);
        assert_eq!(p.send_at_ms(2), NOW + 700.0);
        // The server's cap taken after the account's: beyond the lead, nothing now.
        let global = Cap::per_second(Some(1.0), Some(NOW + 2000.0));
        assert_eq!(plan(NOW, 1000.0, 600, None, None, account, global), None);
        assert_eq!(Cap::per_second(None, None), None);
        assert_eq!(Cap::per_second(Some(0.0), None), None);
    }

    #[test]
    fn the_batch_goes_on_a_spacing_after_its_last_call_when_a_cap_spread_them() {
        let p = plan(NOW, 1000.0, 600, None, None, Cap::per_second(Some(5.0), None), None).unwrap();
        // 3 calls 200 ms apart: the last leaves at +400, the batch goes on at +501, not +303.
        assert_eq!(p.batch_next_slot_ms(3), NOW + 400.0 + 101.0);
    }

    #[test]
    fn requests_are_spaced_by_batch_account_and_server() {
        assert_eq!(spacing_keys(7, 101.0, None, 0.0), vec![("batch:7".to_string(), 101.0)]);
        let keys = spacing_keys(7, 101.0, Some(("3:twilio", 200.0)), 50.0);
        assert_eq!(keys.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["batch:7", "account:3:twilio", "global"]);
    }
}
