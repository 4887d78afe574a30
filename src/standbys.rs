//! No call leaves before the streaming standbys hold its claim. A claim commits durably on the
//! primary before its request is sent; with asynchronous replication a standby may not have it
//! yet, and if that standby is promoted the contact is queued there again and called twice. So,
//! after each claim commits, the worker waits (at most `dialer.standby_wait`) until every standby
//! it has seen streaming has flushed the claim's WAL: a standby that is briefly cut off (a network
//! blip) holds the calls back, rather than the calls getting ahead of it. A standby that does not
//! confirm within the wait is given up (warned about) until it streams again, so that a standby
//! taken away for good does not stop the dialing; `dialer.standby_wait = -1` never gives up.
//! With no standby, this costs one look at pg_stat_replication a second.

use crate::error::DialerError;
use crate::txn;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// With no standby known, pg_stat_replication is looked at this often.
const DISCOVER_EVERY: Duration = Duration::from_secs(1);
/// A standby not seen streaming for this long is forgotten (it was removed).
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Between two looks while waiting for confirmation.
const POLL: Duration = Duration::from_micros(500);

/// A WAL position as Postgres prints it (`X/Y`), for a `$1::pg_lsn` parameter.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[derive(Default)]
pub struct Standbys {
    /// application_name → when it was last seen streaming.
    known: HashMap<String, Instant>,
    /// Standbys that did not confirm within the wait: not waited for until they stream again.
    given_up: HashMap<String, Instant>,
    next_discovery: Option<Instant>,
}

impl Standbys {
    /// Waits until every known standby has flushed the WAL up to the end of the transaction this
    /// session committed last (the claim), or `wait` has passed (None: no limit). Call right after
    /// the claim's commit, before its requests leave.
    pub fn confirm_last_commit(&mut self, wait: Option<Duration>) -> Result<(), DialerError> {
        if wait == Some(Duration::ZERO) {
            return Ok(());
        }
        let now = Instant::now();
        if self.known.is_empty() && self.next_discovery.is_some_and(|t| now < t) {
            return Ok(());
        }
        self.next_discovery = Some(now + DISCOVER_EVERY);
        let lsn = lsn_text(unsafe { pg_sys::XactLastCommitEnd });
        let deadline = wait.map(|w| now + w);
        loop {
            let streaming = txn::run(|| flushed_up_to(&lsn))?;
            let now = Instant::now();
            for (name, _) in &streaming {
                self.known.insert(name.clone(), now);
                self.given_up.remove(name);
            }
            self.known.retain(|_, seen| now.duration_since(*seen) < FORGET_AFTER);
            let waiting_for: Vec<String> = self
                .known
                .keys()
                .filter(|name| !self.given_up.contains_key(*name))
                .filter(|name| !streaming.iter().any(|(n, ok)| n == *name && *ok))
                .cloned()
                .collect();
            if waiting_for.is_empty() {
                return Ok(());
            }
            if deadline.is_some_and(|d| now >= d) {
                warning!(
                    "pg_dialer: standby {} did not confirm a claim within dialer.standby_wait: calls leave without it until it streams again \
                     (a failover to it now could call someone twice)",
                    waiting_for.join(", ")
                );
                for name in waiting_for {
                    self.given_up.insert(name, now);
                }
                return Ok(());
            }
            std::thread::sleep(POLL);
            pgrx::check_for_interrupts!();
        }
    }
}

/// The standbys streaming now (by application_name), and whether each has flushed up to `lsn`.
fn flushed_up_to(lsn: &str) -> Result<Vec<(String, bool)>, DialerError> {
    // (a kept plan: with no standby this runs once a second, and planning it cost more than running it)
    Spi::connect_mut(|client| {
        let rows = crate::plans::run(
            client,
            "SELECT application_name::text, coalesce(bool_and(flush_lsn >= $1::pg_lsn), false)
               FROM pg_catalog.pg_stat_replication WHERE state = 'streaming' GROUP BY application_name",
            None,
            &[lsn.into()],
        )?;
        rows.map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<bool>(2)?.unwrap_or(false))))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .map_err(crate::tick::db)
}

#[cfg(test)]
mod tests {
    use super::lsn_text;

    #[test]
    fn lsns_print_as_postgres_prints_them() {
        assert_eq!(lsn_text(0x0000_0001_0000_00A8), "1/A8");
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(lsn_text(0), "0/0");
    }
}
