//! A restored database is noticed before anyone is dialed again. A restore (a base backup, a
//! point in time) goes back in time: claims committed after the restore point are gone, and the
//! people they called are 'queued' again. The database itself cannot tell (a restored copy holds
//! the state of its restore point), so the worker keeps a note outside the data directory, beside
//! the key file: `<dialer.key_file>.<system identifier>.state`, the WAL position of its last claim
//! (one note per cluster, so clusters sharing a key file do not mix them up). At start, a server
//! behind that position is a restored copy: every contact that could have been claimed since is
//! held in doubt and looked up at the provider first (`dialer._hold_after_restore`).

use crate::error::DialerError;
use crate::gucs::Settings;
use pgrx::prelude::*;
use std::path::PathBuf;

/// Where this cluster's note is: beside the key file (a relative path is the data directory's).
pub fn note_path() -> PathBuf {
    PathBuf::from(format!("{}.{}.state", Settings::key_file(), unsafe { pg_sys::GetSystemIdentifier() }))
}

/// The last claim's WAL position, as noted.
pub fn parse_note(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Whether a server now inserting WAL at `insert_lsn` has gone back before the noted claim.
pub fn restored(noted_claim_lsn: u64, insert_lsn: u64) -> bool {
    insert_lsn < noted_claim_lsn
}

/// Notes each claim (call right after it commits, before its requests leave). Written to a new
/// file and renamed over the old one, so a reader never sees half a note.
#[derive(Default)]
pub struct Notebook {
    last_written: u64,
    warned: bool,
}

impl Notebook {
    pub fn note_last_commit(&mut self) {
        let lsn = unsafe { pg_sys::XactLastCommitEnd };
        if lsn == self.last_written {
            return;
        }
        match write_note(lsn) {
            Ok(()) => {
                self.last_written = lsn;
                self.warned = false;
            }
            Err(e) if !self.warned => {
                warning!("pg_dialer: cannot note the last claim in {} ({e}): a restore would not be noticed", note_path().display());
                self.warned = true;
            }
            Err(_) => {}
        }
    }
}

fn write_note(lsn: u64) -> std::io::Result<()> {
    let path = note_path();
    let mut tmp = path.clone().into_os_string();
    tmp.push(".new");
    std::fs::write(&tmp, format!("{lsn}\n"))?;
    std::fs::rename(&tmp, &path)
}

/// At the worker's start: if this server is a restored copy, holds every contact that could have
/// been claimed since its restore point (in its own transaction) and says so. Returns how many
/// were held. The note is then brought up to this server.
pub fn check_at_start() -> Result<i32, DialerError> {
    let insert_lsn = unsafe { pg_sys::GetXLogInsertRecPtr() };
    let noted = std::fs::read_to_string(note_path()).ok().and_then(|t| parse_note(&t));
    let mut held = 0;
    if let Some(claim_lsn) = noted.filter(|&lsn| restored(lsn, insert_lsn)) {
        held = crate::txn::run(|| {
            Spi::get_one::<i32>(
                "SELECT dialer._hold_after_restore(coalesce((SELECT max(created_at) FROM dialer.calls), clock_timestamp()))",
            )
            .map(|v| v.unwrap_or(0))
            .map_err(crate::tick::db)
        })?;
        warning!(
            "pg_dialer: this database is behind the last claim noted in {} ({} < {}): a restored copy. {held} contact(s) that may \
             have been called since are held in doubt and looked up at the provider before anyone is dialed again",
            note_path().display(),
            crate::standbys::lsn_text(insert_lsn),
            crate::standbys::lsn_text(claim_lsn)
        );
    }
    if let Err(e) = write_note(insert_lsn) {
        warning!("pg_dialer: cannot write {} ({e}): a restore of this database would not be noticed", note_path().display());
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::{parse_note, restored};

    #[test]
    fn a_server_behind_the_last_noted_claim_is_a_restored_copy() {
        assert!(!restored(1000, 1000), "where it was");
        assert!(!restored(1000, 5000), "moved on (a crash recovered replays every committed claim)");
        assert!(restored(1000, 999), "behind the last claim");
        assert_eq!(parse_note("12345\n"), Some(12345));
        assert_eq!(parse_note("garbage"), None);
        assert_eq!(parse_note(""), None);
    }
}
