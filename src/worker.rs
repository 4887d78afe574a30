//! The background worker: a latch loop that records finished requests, claims what is due,
//! hands requests to the HTTP pool, and sleeps until the next pacing slot.

use crate::dispatch::{unix_ms, JobKind, JobResult, Pool};
use crate::error::DialerError;
use crate::gucs::Settings;
use crate::held::Held;
use crate::polls::PollsInFlight;
use crate::tick::{self, Counts, TargetCache};
use crate::wait_set::WaitSet;
use crate::{lead_writer, pass, restores, retention, standbys, statistics, txn, wake};
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Status polls go in rounds (poll_round_every apart): at most this many a round, asked for a
/// chunk at a time (look-ups: one chunk a round). A round is not a full pass (see iteration).
const POLL_ROUND_LIMIT: usize = 500;
const POLL_CHUNK: i32 = 32;
/// A full pass (one that claims) runs at least this often while the worker is awake.
const FULL_PASS_EVERY: Duration = Duration::from_secs(1);
/// After a claim that ran out of room, the next waits this long at most for answers to make room.
const SHORT_OF_ROOM_WAIT: Duration = Duration::from_millis(50);
/// Requests claimed ahead of the HTTP threads, as a multiple of their number.
const CLAIM_AHEAD: usize = 8;
/// How often the hot tables' planner statistics are checked (see `dialer._refresh_statistics`).
const STATISTICS_CHECK_EVERY: Duration = Duration::from_secs(2);
/// Batches are promoted (started, their new contacts queued: `dialer._promote_batches`) when a
/// commit woke the worker or something is due, and at least this often (a change that did not).
const PROMOTE_EVERY: Duration = Duration::from_secs(2);
/// How often every processing batch is checked for completion, counters aside.
const FULL_COMPLETION_CHECK_EVERY: Duration = Duration::from_secs(2);
/// Answers (placed calls, status polls, look-ups) are recorded together, at most this long after
/// the first of them came back (a pass that claims or polls records them all first if one of them
/// is more than an accepted call). A call shows `dialing` this long after the provider took it.
const RECORD_EVERY: Duration = Duration::from_millis(500);
/// Status polls and look-ups recorded in one transaction at most (see record_answers): a poll
/// round's worth at 30 calls/s and the default 5 s interval (about 15), so that the round is one
/// statement and one commit; an immediate call waits for one chunk at most (about 1.4 ms; the
/// placed calls' answers are a transaction of their own before them).
const RECORD_CHUNK: usize = 16;
/// The tick log gets a row per full pass, and one at most this often for the passes between.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// A retention pass runs between pacing slots at least this far apart (a pass takes a few ms).
const RETENTION_ROOM: Duration = Duration::from_millis(5);
/// The longest the worker waits for a row lock (see pg_dialer_worker_main).
const LOCK_TIMEOUT: &std::ffi::CStr = c"500ms";

/// After an error, wait this long before trying again (never a hot loop).
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// How often status polls, look-ups and the upkeep that goes with them run: a tenth of the poll
/// interval, from 250 ms to 1 s. Each round has a fixed cost (its queries, a transaction, the next
/// due time), so rounds as often as a 100 ms poll interval needs would be most of a steady
/// campaign's upkeep at the default 5 s; a poll is at most one round late.
fn poll_round_every(status_poll_interval: Duration) -> Duration {
    (status_poll_interval / 10).clamp(Duration::from_millis(250), Duration::from_secs(1))
}

/// Whether a claim from a woken queue leaves work for a full pass: it took fewer than the
/// immediate jobs noted for the queue (a pacing slot or a calling window not yet come, a limit
/// reached: the full pass learns when they are due), or all it was allowed to (the HTTP pool's
/// room, or the claim's budget: more may be due).
fn woken_claim_leaves_work(taken: usize, noted: u64, short_of_room: bool, budget: i32) -> bool {
    taken == 0 || (taken as u64) < noted || short_of_room || taken >= usize::try_from(budget).unwrap_or(0)
}

/// Why a pass of the loop runs, and so what it does (see `Worker::iteration`).
#[derive(Clone, Copy, Default)]
struct Woken {
    /// Asked for: a commit whose change needs a full pass (wake::PASS_ASKED), a queue's job its
    /// own claim could not settle, a reload, or the last pass failed. A queue's immediate job
    /// that its claim served, or a webhook's request to record, wakes the worker without one.
    asked: bool,
    /// Something other than a pacing slot or a poll round is due (a start, a deadline, a
    /// recurring call).
    due: bool,
    /// A batch's pacing slot is within the claim's lead.
    slot_near: bool,
    /// The last claim found the HTTP pool full.
    pool_full: bool,
    /// The last claim ran out of room and too few answers have come back since to make another
    /// worth its fixed cost (`Worker::claims_held_back`).
    claims_held_back: bool,
    since_full_pass: Duration,
    /// A status-poll round is due.
    poll_round: bool,
    /// The next poll round is less than half its spacing away.
    poll_round_near: bool,
}

impl Woken {
    /// A full pass claims: something new or due, a slot near or room back in a full pool (unless
    /// claims are held back), and one a second at least (work that came without a wake-up). A
    /// poll round alone only polls: as full passes, rounds were a fifth of a 30 calls/s
    /// campaign's CPU.
    fn full_pass(&self) -> bool {
        self.asked || self.due || (!self.claims_held_back && (self.slot_near || self.pool_full)) || self.since_full_pass >= FULL_PASS_EVERY
    }

    /// Whether this pass polls: a round is due, or near on a full pass (which then does it, one
    /// transaction and one look at the next due time for both, where a round of its own a
    /// quarter second later would be another wake-up and another of each).
    fn polls(&self) -> bool {
        self.poll_round || (self.poll_round_near && self.full_pass())
    }

    /// Whether upkeep (polls, look-ups, completion, when to look again) follows the answers
    /// recorded: on a full pass, a poll round, or when calls ended (a concurrency slot may be
    /// free, a retry set). None of these: a wake-up for held calls or answers only.
    fn upkeep(&self, calls_ended: bool) -> bool {
        self.full_pass() || self.polls() || calls_ended
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_dialer_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = BackgroundWorker::get_extra().to_string();
    // Started by the launcher (src/launcher.rs) once the extension and its role exist. The worker
    // runs as dialer_worker, never as a superuser; it runs no tenant's code either: lead rows are
    // written in their owners' sessions (src/lead_writer.rs).
    BackgroundWorker::connect_worker_to_spi(Some(&database), Some(crate::launcher::WORKER_ROLE));
    // A claim must be durable before its request leaves: whatever synchronous_commit the server
    // runs with, this worker's commits wait for the WAL flush. (With it off, a crash could forget
    // a claim whose call was already placed, and the person would be called again.)
    set_for_session(c"synchronous_commit", c"on", pg_sys::GucSource::PGC_S_OVERRIDE);
    // No tenant stops the worker by holding a row it must write (an API call in a transaction
    // left open): a longer wait fails that step, which is retried (a claim batch by batch, results
    // one by one, the rest next pass). A session value, so a step's own SET LOCAL still applies.
    set_for_session(c"lock_timeout", LOCK_TIMEOUT, pg_sys::GucSource::PGC_S_SESSION);
    // The worker's SQL names the extension's objects with their schema, but an operator whose
    // operand types pg_catalog has no exact match for (interval / integer) is looked up along the
    // search path: with the default one ("$user", public), an operator a tenant made in a public
    // it may write to would run here. Nothing but pg_catalog, then (and temporary objects last).
    // (A session value, as lock_timeout: a function's own SET search_path still applies in it.)
    set_for_session(c"search_path", c"pg_catalog, pg_temp", pg_sys::GucSource::PGC_S_SESSION);
    wake::publish_worker_pid(unsafe { pg_sys::MyProcPid });
    log!("pg_dialer worker started, serving database \"{database}\"");

    let mut worker = match Worker::new() {
        Ok(w) => w,
        Err(e) => {
            warning!("pg_dialer worker could not start its HTTP pool: {e}");
            unsafe { pg_sys::proc_exit(1) };
            // Postgres 18 spells noreturn so that bindgen no longer sees it: proc_exit returns ().
            #[cfg(feature = "pg18")]
            unreachable!("proc_exit does not return");
        }
    };
    worker.run();
    wake::publish_worker_pid(0);
    // Exit code 1 so that the postmaster restarts us after pg_terminate_backend; during a
    // shutdown it does not restart anything.
    unsafe { pg_sys::proc_exit(1) };
}

/// Sets a setting for the worker's session (a value the server's configuration cannot undo with
/// PGC_S_OVERRIDE).
fn set_for_session(name: &std::ffi::CStr, value: &std::ffi::CStr, source: pg_sys::GucSource::Type) {
    // SAFETY: the backend's own thread, after connecting; our literals, and a bad one is an ERROR.
    unsafe { pg_sys::SetConfigOption(name.as_ptr(), value.as_ptr(), pg_sys::GucContext::PGC_SUSET, source) };
}

struct Worker {
    settings: Settings,
    pool: Pool,
    rebuild_pool: bool,
    /// When something is due that a full pass does (a retry, a scheduled batch, a deadline).
    next_due: Option<Instant>,
    /// When the next poll round has polls or look-ups to send.
    next_poll_due: Option<Instant>,
    last_full_pass: Instant,
    /// The last claim ran out of room in the HTTP pool; when it ran; answers drained since.
    short_of_room: bool,
    claimed_at: Instant,
    answers_since_claim: usize,
    /// The next pacing slot (claimed up to pacing::WORKER_AHEAD_MS early; not in next_due).
    next_slot: Option<Instant>,
    next_poll_round: Instant,
    settled_at_start: bool,
    skipping: bool,
    extension_seen: bool,
    /// Passes in a row that found work due but could do none of it (see the end of iteration).
    idle_passes: u32,
    /// The extension version last warned about (its SQL older than this library).
    version_warned: Option<String>,
    next_statistics_check: Instant,
    next_full_completion_check: Instant,
    next_promote: Instant,
    /// When this worker started: pacing slots missed before it (no worker ran) are made up.
    started_ms: f64,
    /// When the next retention pass may run (passes run only when a tick found nothing to do).
    retention: retention::Schedule,
    /// The lead writer sessions started (one per table owner with writes due).
    writers: lead_writer::Writers,
    /// The session that refreshes the hot tables' planner statistics, when they need it.
    statistics: statistics::Refresher,
    /// The streaming standbys a claim must reach before its calls leave.
    standbys: standbys::Standbys,
    /// The last claim's WAL position, noted outside the data directory (a restore is noticed).
    notebook: restores::Notebook,
    /// Claimed calls waiting for their pacing slot (not yet handed to the HTTP pool).
    held: Held,
    /// Status polls sent whose answers are not recorded yet (their calls are not picked again).
    polls_in_flight: PollsInFlight,
    /// Agent mappings and credentials, kept across passes until they change.
    targets: TargetCache,
    /// Counts not yet in the tick log; when the log was last written.
    unlogged: Option<Counts>,
    logged_at: Instant,
    /// Answers drained from the pool, not yet recorded, and when the first of them came.
    unrecorded: Vec<JobResult>,
    unrecorded_since: Option<Instant>,
    /// The next pass is a full one (see Woken::asked): set by the worker itself.
    pass_needed: bool,
    /// The HTTP pool had no room at the last pass: its answers wake the worker at once.
    pool_full: bool,
    /// What the worker sleeps on: its latch, the postmaster, the HTTP pool's pipe.
    wait_set: WaitSet,
}

impl Worker {
    fn new() -> std::io::Result<Worker> {
        let settings = Settings::read();
        let pool = Pool::new(settings.http_concurrency, settings.http_timeout, settings.allow_list())?;
        let wait_set = WaitSet::new(pool.wake_fd());
        Ok(Worker {
            wait_set,
            settings,
            pool,
            rebuild_pool: false,
            next_due: None,
            next_poll_due: None,
            last_full_pass: Instant::now(),
            short_of_room: false,
            claimed_at: Instant::now(),
            answers_since_claim: 0,
            next_slot: None,
            next_poll_round: Instant::now(),
            settled_at_start: false,
            skipping: false,
            extension_seen: false,
            idle_passes: 0,
            version_warned: None,
            next_statistics_check: Instant::now(),
            next_full_completion_check: Instant::now(),
            next_promote: Instant::now(),
            started_ms: unix_ms(),
            retention: retention::Schedule::new(Instant::now()),
            writers: lead_writer::Writers::default(),
            statistics: statistics::Refresher::default(),
            standbys: standbys::Standbys::default(),
            notebook: restores::Notebook::default(),
            held: Held::default(),
            polls_in_flight: PollsInFlight::default(),
            targets: TargetCache::default(),
            unlogged: None,
            logged_at: Instant::now(),
            unrecorded: Vec::new(),
            unrecorded_since: None,
            pass_needed: true,
            pool_full: false,
        })
    }

    fn run(&mut self) {
        loop {
            if BackgroundWorker::sigterm_received() {
                self.shutdown();
                return;
            }
            if BackgroundWorker::sighup_received() {
                self.reload();
            }
            let wait = match self.iteration() {
                Ok(wait) => wait,
                Err(e) => {
                    if txn::run(tick::extension_ready).unwrap_or(false) {
                        warning!("pg_dialer: tick failed: {e}");
                        let _ = txn::run(|| tick::log_run(unix_ms(), "worker", Counts::default(), "ERROR", Some(&e.to_string())));
                    } else {
                        if self.extension_seen {
                            log!("pg_dialer: extension dropped; waiting for CREATE EXTENSION pg_dialer");
                        }
                        self.extension_seen = false;
                    }
                    self.pass_needed = true;
                    ERROR_BACKOFF
                }
            };
            // A background worker flushes its table statistics itself; without them autovacuum
            // never learns what this worker wrote (rate-limited inside to once a second).
            unsafe { pg_sys::pgstat_report_stat(false) };
            self.wait(wait);
        }
    }

    fn reload(&mut self) {
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        let new = Settings::read();
        if let Err(why) = &new.allowed_hosts {
            pgrx::warning!("{why}: no provider request is sent until it is fixed");
        }
        self.pool.set_allowed(new.allow_list());
        if new.http_concurrency != self.settings.http_concurrency || new.http_timeout != self.settings.http_timeout {
            self.rebuild_pool = true;
        }
        self.settings = new;
        // (dialer.enabled, the pool's size, the allowed hosts: what the last pass could not do)
        self.pass_needed = true;
    }

    /// One pass of the loop, in named phases (the same ones process_batches() runs: pass.rs).
    /// Returns how long to sleep.
    fn iteration(&mut self) -> Result<Duration, DialerError> {
        self.rebuild_pool_when_idle();
        self.targets.refresh();
        if let Some(wait) = self.wait_for_extension()? {
            return Ok(wait);
        }
        self.settle_at_start()?;
        // Held calls whose slot has come leave first (checked again if a pause, cancel or
        // do-not-call entry has committed since they were claimed).
        self.release_held()?;
        // A queue just given a job: claim from it before anything else (recording results,
        // promotions, other batches), so that an immediate call leaves within one short claim.
        let sent_woken = self.claim_woken()?;

        let started = unix_ms();
        let now = Instant::now();
        let woken = Woken {
            asked: wake::take_pass_asked() | std::mem::take(&mut self.pass_needed),
            due: self.next_due.is_some_and(|due| due <= now),
            slot_near: self.next_slot.is_some_and(|slot| slot <= now + crate::pacing::claim_before_slot()),
            pool_full: self.pool_full,
            claims_held_back: self.claims_held_back(now).is_some(),
            since_full_pass: now.saturating_duration_since(self.last_full_pass),
            poll_round: now >= self.next_poll_round,
            poll_round_near: now + poll_round_every(self.settings.status_poll_interval) / 2 >= self.next_poll_round,
        };
        let full = woken.full_pass();
        let do_poll = woken.polls();
        self.take_answers();
        // (after an immediate call too: answers recorded a few at a time, where half a second's
        // in one statement held up the immediate calls that came meanwhile)
        let (mut counts, ended) = self.record_answers(full || do_poll || sent_woken)?;
        // (and again after recording, which can take a few milliseconds)
        self.claim_woken()?;

        if !self.settings.enabled {
            return Ok(self.prune_when_idle(self.settings.poll_interval));
        }
        if !woken.upkeep(ended) {
            self.log_pass(started, counts, false)?;
            return Ok(self.between_passes(self.settings.poll_interval, crate::pacing::claim_before_slot()));
        }
        if do_poll {
            self.next_poll_round = now + poll_round_every(self.settings.status_poll_interval);
        }
        let submitted = if full {
            self.last_full_pass = now;
            let promote = woken.asked || woken.due || now >= self.next_promote;
            let Some(submitted) = self.claim(started, promote, &mut counts)? else {
                return Ok(self.settings.poll_interval.min(Duration::from_millis(50)));
            };
            // (and between the phases that follow: an immediate call waits for one of them at most)
            self.claim_woken()?;
            submitted
        } else {
            0
        };
        let polls = self.upkeep(now, do_poll)?;
        let progressed = submitted > 0 || polls > 0 || !counts.is_empty();
        self.log_pass(started, counts, full)?;
        Ok(self.next_wait(progressed))
    }

    fn rebuild_pool_when_idle(&mut self) {
        if self.rebuild_pool && self.pool.in_flight() == 0 {
            if let Ok(pool) = Pool::new(self.settings.http_concurrency, self.settings.http_timeout, self.settings.allow_list()) {
                self.pool = pool;
                // (its pipe is a new one; a closed pipe's fd number may be reused, so never compared)
                self.wait_set = WaitSet::new(self.pool.wake_fd());
            }
            self.rebuild_pool = false;
        }
    }

    /// Until the extension is installed at this library's version: how long to wait. Checked
    /// until the extension is seen; afterwards a DROP EXTENSION shows up as a failing tick, which
    /// clears extension_seen (see run), so the fast path spends no query on it.
    fn wait_for_extension(&mut self) -> Result<Option<Duration>, DialerError> {
        if self.extension_seen {
            return Ok(None);
        }
        match txn::run(tick::installed_version)? {
            None => return Ok(Some(self.settings.poll_interval)),
            Some(v) if v != tick::LIBRARY_VERSION => {
                if self.version_warned.as_deref() != Some(v.as_str()) {
                    tick::warn_sql_older_than_library(&Settings::database(), &v);
                    self.version_warned = Some(v);
                }
                return Ok(Some(ERROR_BACKOFF));
            }
            Some(_) => {}
        }
        if self.version_warned.take().is_some() {
            log!("pg_dialer: extension updated to {}; dialing resumes", tick::LIBRARY_VERSION);
        }
        self.extension_seen = true;
        Ok(None)
    }

    /// Once per worker: what a previous worker (or a restored copy) left behind.
    fn settle_at_start(&mut self) -> Result<(), DialerError> {
        if self.settled_at_start {
            return Ok(());
        }
        // A restored copy of the database: what was claimed after its restore point is looked
        // up at the provider before anyone is dialed again.
        restores::check_at_start()?;
        // Attempts left in 'dialing' by a previous worker may have reached the provider.
        let n = txn::run(|| tick::settle_stale_dialing(0.0))?;
        if n > 0 {
            log!("pg_dialer: {n} attempt(s) left dialing by a previous worker are now in_doubt");
        }
        self.settled_at_start = true;
        Ok(())
    }

    /// The claim phase, in its own short transaction so that requests leave as soon as it
    /// commits. Returns how many requests left (or are held for their slot); None when nothing
    /// could be claimed (the HTTP pool full, another pass holding the tick).
    fn claim(&mut self, started: f64, promote: bool, counts: &mut Counts) -> Result<Option<usize>, DialerError> {
        let pacing = self.pacing();
        let (pool_room, room_for) = self.room();
        self.pool_full = pool_room == 0;
        self.answers_since_claim = 0;
        self.claimed_at = Instant::now();
        self.short_of_room = pool_room == 0;
        if pool_room == 0 {
            counts.batches = 0;
            self.log_pass(started, std::mem::take(counts), true)?;
            return Ok(None);
        }
        let epoch = wake::current(wake::Epoch::Holds);
        let max_batches = self.settings.max_batches_per_run;
        let Some(tick::Claimed { jobs, unbuildable, batches, short_of_room }) =
            txn::run(|| pass::claim(pass::ClaimFrom::Due { max_batches, promote }, &pacing, &room_for, &mut self.targets))?
        else {
            if !self.skipping {
                self.skipping = true;
                txn::run(|| tick::log_run(started, "worker", Counts::default(), "SKIPPED_CONCURRENT", None))?;
            }
            return Ok(None);
        };
        self.skipping = false;
        if promote {
            self.next_promote = Instant::now() + PROMOTE_EVERY;
        }
        self.short_of_room = short_of_room;
        // The claim is committed: only now may requests leave.
        let submitted = self.send_claimed(jobs, epoch);
        if !unbuildable.is_empty() {
            counts.add(txn::run(|| unbuildable.record())?);
        }
        counts.batches = batches;
        Ok(Some(submitted))
    }

    /// The upkeep phase, after the requests are on their way: status polls and look-ups, lost
    /// attempts, hand-offs, completed batches, lead write-backs, statistics, and when to look
    /// again. Returns how many polls and look-ups it sent.
    fn upkeep(&mut self, now: Instant, do_poll: bool) -> Result<usize, DialerError> {
        let settings = &self.settings;
        // Batches whose calls ended are completed as their results are recorded (by the
        // counters); every batch is looked at now and then as well (calls ended by webhooks,
        // contacts cancelled, a counter that was ever wrong).
        let check_every_batch = do_poll && now >= self.next_full_completion_check;
        // Polls the pool has not answered yet are a round's worth: no more until it catches up.
        let poll_limit = if self.polls_in_flight.len() >= POLL_ROUND_LIMIT { 0 } else { POLL_CHUNK };
        let upkeep = pass::Upkeep {
            poll_every_ms: settings.status_poll_interval.as_secs_f64() * 1000.0,
            poll_limit,
            polls_in_flight: self.polls_in_flight.call_ids(now),
            close_abandoned_ms: check_every_batch.then_some(settings.call_timeout.as_secs_f64() * 1000.0),
            // Requests that should have been answered by now but were not recorded: their
            // process died mid-request. Held in doubt, then looked up. Only when nothing of ours
            // is in flight: under load our own requests may wait longer than that to be recorded.
            settle_stale_ms: (self.pool.in_flight() == 0 && self.held.is_empty())
                .then_some((settings.http_timeout.as_secs_f64() * 2.0 + 2.0) * 1000.0),
            check_every_batch,
        };
        // Polls and look-ups go in rounds: one due before the next round waits for it.
        let poll_every_ms = upkeep.poll_every_ms;
        let next_round_in_ms = self.next_poll_round.saturating_duration_since(Instant::now()).as_secs_f64() * 1000.0;
        let (polls, (next_due_ms, next_slot_ms), lead_owners) = txn::run(|| {
            let polls = if do_poll { pass::upkeep(&upkeep, &mut self.targets)? } else { Vec::new() };
            let next = tick::ms_until_next_due(poll_every_ms, next_round_in_ms)?;
            let lead_owners = if do_poll { lead_writer::due_owners(lead_writer::MAX_WRITERS)? } else { Vec::new() };
            Ok((polls, next, lead_owners))
        })?;
        if check_every_batch {
            self.next_full_completion_check = now + FULL_COMPLETION_CHECK_EVERY;
        }
        let at = |ms: f64| Instant::now() + Duration::from_micros((ms.max(0.0) * 1000.0) as u64);
        // Polls and look-ups are due at a round (their times are moved to the next one): what is
        // due then is a poll round's to do, not a full pass's. Anything else due by then is
        // earlier, or found when that round looks again.
        if next_due_ms.is_some_and(|ms| (ms - next_round_in_ms).abs() < 0.5) {
            self.next_poll_due = next_due_ms.map(at);
            self.next_due = None;
        } else {
            self.next_poll_due = None;
            self.next_due = next_due_ms.map(at);
        }
        self.next_slot = next_slot_ms.map(at);
        // Lead rows are written in their owners' sessions (outside this transaction: the
        // writers' handles outlive it).
        if do_poll {
            self.writers.start(&lead_owners);
        }
        if do_poll && now >= self.next_statistics_check {
            self.next_statistics_check = now + STATISTICS_CHECK_EVERY;
            self.claim_woken()?;
            // (outside a transaction: the session's handle outlives it)
            self.statistics.refresh()?;
        }
        let mut n = polls.len();
        let mut chunk_polls = polls.iter().filter(|j| matches!(j.kind, JobKind::Status { .. })).count();
        self.submit_polls(polls);
        // The rest of the round, a chunk at a time (an immediate call waits for one at most).
        let mut polled = chunk_polls;
        while do_poll && chunk_polls == POLL_CHUNK as usize && polled < POLL_ROUND_LIMIT {
            self.claim_woken()?;
            let in_flight = self.polls_in_flight.call_ids(Instant::now());
            let more = txn::run(|| tick::poll_jobs(poll_every_ms, POLL_CHUNK, &in_flight, &mut self.targets))?;
            chunk_polls = more.len();
            polled += chunk_polls;
            n += chunk_polls;
            self.submit_polls(more);
        }
        Ok(n)
    }

    /// Status polls and look-ups to the HTTP pool; the polls are noted in flight.
    fn submit_polls(&mut self, jobs: Vec<crate::dispatch::Job>) {
        let now = Instant::now();
        for job in &jobs {
            if let JobKind::Status { call_id, .. } = job.kind {
                self.polls_in_flight.sent(call_id, now);
            }
        }
        self.pool.submit_all(jobs);
    }

    /// The tick log (dialer.runs): what passes did, one row per full pass (its own start and
    /// duration), which also carries the counts of the passes between that only recorded answers;
    /// those are written at least every LOG_EVERY.
    fn log_pass(&mut self, started: f64, counts: Counts, full: bool) -> Result<(), DialerError> {
        if !counts.is_empty() {
            self.unlogged.get_or_insert_with(Counts::default).add(counts);
        }
        let due = full || self.logged_at.elapsed() >= LOG_EVERY;
        let Some(unlogged) = self.unlogged.take_if(|_| due) else { return Ok(()) };
        self.logged_at = Instant::now();
        txn::run(|| tick::log_run(started, "worker", unlogged, "COMPLETED", None))
    }

    /// How long to sleep after a full pass.
    fn next_wait(&mut self, progressed: bool) -> Duration {
        // Early only for what a claim can take early (pacing slots): a pass that found nothing
        // to do ahead of time waits for the due time itself (a status poll, a retry).
        let lead = if progressed { crate::pacing::claim_before_slot() } else { Duration::ZERO };
        let mut wait = self.between_passes(self.settings.poll_interval, lead);
        if !progressed && wait < Duration::from_millis(1) {
            // Something is due that this pass could not do (a provider account's share of the
            // HTTP threads is full, or every queued number is on a live call elsewhere): back off
            // 2, 4, 8 … 128 ms rather than spin. Results and new work wake us anyway.
            self.idle_passes = (self.idle_passes + 1).min(7);
            wait = Duration::from_millis(1 << self.idle_passes);
        } else {
            self.idle_passes = 0;
        }
        if !progressed || wait >= RETENTION_ROOM {
            // Nothing was placed or recorded, or nothing is due for a while (a paced campaign
            // between its slots): a retention pass cannot hold up a call. (Only after idle passes,
            // a campaign dialing all day kept its history all day.)
            wait = self.prune_when_idle(wait);
        }
        wait
    }

    /// Until when claims for pacing slots wait, if they do: the last claim ran out of room in the
    /// HTTP pool (overall, or a provider account's share), and not enough answers have come back
    /// since to make a claim worth its fixed cost. With a provider that answers in 100 ms, every
    /// answer started a pass that claimed one or two calls: 0.84 CPU s per 1,000 calls.
    fn claims_held_back(&self, now: Instant) -> Option<Instant> {
        let until = self.claimed_at + SHORT_OF_ROOM_WAIT;
        let room_back = self.answers_since_claim >= (self.settings.http_concurrency / 2).max(1);
        (self.short_of_room && !room_back && now < until).then_some(until)
    }

    /// What the HTTP pool can take: overall, and (the function) per provider account.
    fn room(&self) -> (usize, impl Fn(&str) -> usize + use<>) {
        let mut in_flight = self.pool.in_flight_by_account();
        for (account, n) in self.held.by_account() {
            *in_flight.entry(account).or_insert(0) += n;
        }
        // Claim no more than the pool can send soon: a huge claim would only wait in the queue
        // (and its results would wait to be recorded) while the next tick could have run.
        let pool_room = (self.settings.http_concurrency * CLAIM_AHEAD).saturating_sub(self.pool.in_flight() + self.held.len());
        // The pool lets one provider account work at most three quarters of its threads; its
        // queue holds as much for the account again, so a hanging provider's calls wait there
        // rather than being claimed while they cannot be sent.
        let share = crate::dispatch::account_share(self.settings.http_concurrency * CLAIM_AHEAD);
        // "" asks for the pool's room overall; an account name for that account's share.
        let room_for = move |account: &str| {
            if account.is_empty() {
                return pool_room;
            }
            share.saturating_sub(in_flight.get(account).copied().unwrap_or(0)).min(pool_room)
        };
        (pool_room, room_for)
    }

    /// Hands a committed claim's requests to the HTTP pool, once the standbys hold the claim (call
    /// right after the claim's commit); those for a slot further off are held (see held.rs).
    /// `epoch`: wake::current(wake::Epoch::Holds) read before the claim. Returns how many.
    fn send_claimed(&mut self, jobs: Vec<crate::dispatch::Job>, epoch: u64) -> usize {
        let n = jobs.len();
        if n > 0 {
            self.notebook.note_last_commit();
            if let Err(e) = self.standbys.confirm_last_commit(self.settings.standby_wait) {
                // A look that fails must not hold the calls for ever: they leave, said in the log.
                warning!("pg_dialer: could not read the standbys' positions ({e}); the calls leave anyway");
            }
        }
        let now = self.held.hold(jobs, unix_ms(), epoch);
        self.pool.submit_all(now);
        if n > 0 {
            // Let an HTTP thread have the core before this thread's housekeeping: on a busy
            // machine that was most of an immediate call's wait (p90 0.9 ms → 0.15 ms).
            std::thread::yield_now();
        }
        n
    }

    /// The immediate-call path (see iteration): if a queue was just given a job, one claim from
    /// it, committed, and its requests on their way; a full pass follows only if this claim left
    /// something to do (see Worker::pass_needed). Returns whether it sent anything.
    fn claim_woken(&mut self) -> Result<bool, DialerError> {
        if !self.settings.enabled {
            return Ok(false);
        }
        let Some((batch_id, noted)) = wake::take_woken_batch() else { return Ok(false) };
        // What this claim does not settle goes to a full pass (see woken_claim_leaves_work; the
        // tick lock held elsewhere, or no room in the pool, too). A claim that took the queue's
        // due jobs needs none. (The commit that noted the queue set the latch too: the next
        // pass comes without a sleep.)
        let (pool_room, room_for) = self.room();
        if pool_room == 0 {
            self.pass_needed = true;
            return Ok(false);
        }
        let pacing = self.pacing();
        let epoch = wake::current(wake::Epoch::Holds);
        let claimed = txn::run(|| pass::claim(pass::ClaimFrom::Queue(batch_id), &pacing, &room_for, &mut self.targets))?;
        let Some(tick::Claimed { jobs, unbuildable, short_of_room, .. }) = claimed else {
            self.pass_needed = true;
            return Ok(false);
        };
        let taken = jobs.len() + unbuildable.len();
        if woken_claim_leaves_work(taken, noted, short_of_room, pacing.budget_per_batch) {
            self.pass_needed = true;
        }
        let sent = self.send_claimed(jobs, epoch) > 0;
        if !unbuildable.is_empty() {
            txn::run(|| unbuildable.record())?;
        }
        Ok(sent)
    }

    fn pacing(&self) -> tick::Pacing {
        tick::Pacing {
            ahead_ms: crate::pacing::WORKER_AHEAD_MS,
            budget_per_batch: self.settings.max_claim_per_batch,
            global_cps: self.settings.max_calls_per_second,
            catch_up_before_ms: Some(self.started_ms),
        }
    }

    /// Held calls whose slot is near go to the HTTP pool. If something that may stop them (a
    /// pause, a cancel, a do-not-call entry) has committed since they were claimed, the database
    /// first withdraws those that may no longer go.
    fn release_held(&mut self) -> Result<(), DialerError> {
        // dialer.enabled off: nothing more leaves, not even what was claimed ahead.
        if !self.settings.enabled {
            return self.withdraw_held(true);
        }
        if self.held.stale(wake::current(wake::Epoch::Holds)) {
            self.withdraw_held(false)?;
        }
        let due = self.held.take_due(unix_ms());
        self.pool.submit_all(due);
        Ok(())
    }

    /// The held calls that may no longer go back to their queues; with `all`, every one, its
    /// batch given the unused slots (dialing turned off, or the worker stopping).
    fn withdraw_held(&mut self, all: bool) -> Result<(), DialerError> {
        let held = self.held.calls();
        if held.0.is_empty() {
            return Ok(());
        }
        // Read before the check: a change committed during it bumps the counter again.
        let epoch = wake::current(wake::Epoch::Holds);
        let withdrawn = txn::run(|| tick::withdraw_held(&held, all))?;
        self.held.checked(epoch, &withdrawn);
        Ok(())
    }

    /// Moves the pool's answers into `unrecorded`.
    fn take_answers(&mut self) {
        let answers = self.pool.drain();
        self.answers_since_claim += answers.len();
        if !answers.is_empty() && self.unrecorded.is_empty() {
            self.unrecorded_since = Some(Instant::now());
        }
        self.unrecorded.extend(answers);
    }

    /// Records the answers waiting, if the first of them has waited RECORD_EVERY, if a webhook is
    /// waiting for them (wake::ask_to_record), or if `now` (a claim or a poll round follows) and
    /// one of them may change what it does.
    /// Returns their counts, and whether any was more than an accepted call (a failure, a call
    /// that ended, a look-up: a concurrency slot or a retry may be due).
    fn record_answers(&mut self, now: bool) -> Result<(Counts, bool), DialerError> {
        let waited = self.until_record(Instant::now()) == Some(Duration::ZERO);
        // Placed calls' answers wait too: at 30 calls/s, one statement and one commit for every
        // fifteen instead of each (a webhook that comes first asks for them: api/webhooks.rs).
        // A claim need not see them first: a call accepted frees no slot (it was counted in
        // progress when claimed), and a poll round cannot ask for a call it does not know yet.
        // A pool's worth goes first all the same: at thousands of calls a second, half a second
        // of them was one statement of 1,700 rows (85 ms) that held up the next claims.
        let urgent = now && (self.unrecorded.len() >= self.settings.http_concurrency || self.unrecorded.iter().any(|r| !looks_accepted(r)));
        // A webhook looks for its call every few milliseconds, holding a connection: it does not
        // wait for the clock. Its request is cleared once something is recorded (a webhook whose
        // call was not in it asks again).
        let asked = wake::record_asked();
        if self.unrecorded.is_empty() || !(urgent || waited || asked) {
            return Ok((Counts::default(), false));
        }
        if asked {
            wake::record_done();
        }
        let answers = std::mem::take(&mut self.unrecorded);
        self.unrecorded_since = None;
        let (placed, mut others): (Vec<JobResult>, Vec<JobResult>) =
            answers.into_iter().partition(|r| matches!(r.kind, JobKind::Place { .. }));
        let polls_or_lookups = !others.is_empty();
        // The placed calls' answers: one transaction.
        let mut counts = self.record(&placed);
        let more_than_accepted = polls_or_lookups || placed.len() > counts.initiated.max(0) as usize;
        // Status polls and look-ups (a round's worth, a hundred or more, ~0.1 ms each) are
        // recorded a chunk at a time, each after a look for an immediate call: one that comes
        // meanwhile waits for one transaction at most. (The placed calls' answers and a chunk
        // were one transaction, 2 to 7 ms on a busy machine: 2% of immediate calls waited for it.)
        while !others.is_empty() {
            if let Err(e) = self.claim_woken() {
                self.unrecorded = others;
                self.unrecorded_since = Some(Instant::now());
                return Err(e);
            }
            let chunk: Vec<JobResult> = others.drain(..others.len().min(RECORD_CHUNK)).collect();
            counts.add(self.record(&chunk));
        }
        if counts.initiated > 0 {
            // Calls now in progress are polled one status_poll_interval from now at the latest:
            // the next pass must not sleep past that on a next_due computed before they were.
            let poll_at = Instant::now() + self.settings.status_poll_interval;
            self.next_poll_due = Some(self.next_poll_due.map_or(poll_at, |due| due.min(poll_at)));
        }
        Ok((counts, more_than_accepted))
    }

    /// How long to sleep at most, from what is known without a query: the next due time, the next
    /// pacing slot less `lead`, the next held call, answers waiting to be recorded, counts to be
    /// logged.
    fn between_passes(&self, at_most: Duration, lead: Duration) -> Duration {
        let now = Instant::now();
        let mut wait = at_most;
        for due in [self.next_due, self.next_poll_due].into_iter().flatten() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        match self.claims_held_back(now) {
            Some(until) => wait = wait.min(until.saturating_duration_since(now)),
            None => {
                if let Some(slot) = self.next_slot {
                    wait = wait.min(slot.saturating_duration_since(now + lead));
                }
            }
        }
        if let Some(release_ms) = self.held.next_release_ms() {
            wait = wait.min(Duration::from_micros(((release_ms - unix_ms()).max(0.0) * 1000.0) as u64));
        }
        if let Some(until) = self.until_record(now) {
            wait = wait.min(until);
        }
        if self.unlogged.is_some() {
            wait = wait.min((self.logged_at + LOG_EVERY).saturating_duration_since(now));
        }
        wait
    }

    /// A retention pass, if one is due: its own short transaction (at most PASS_LIMIT rows of
    /// each kind), run only when this pass had nothing to dial or nothing is due for a while, so
    /// dialing never waits for more than one small pass. A failure is logged (once per message)
    /// and never ends the worker.
    /// Returns how long to sleep.
    fn prune_when_idle(&mut self, wait: Duration) -> Duration {
        let now = Instant::now();
        if !self.retention.due(now) || !self.settings.retention.any_enabled() {
            return self.retention.cap(now, wait);
        }
        let r = self.settings.retention.clone();
        match txn::run(|| retention::pass(&r, retention::PASS_LIMIT)) {
            Ok(removed) => self.retention.done(Instant::now(), removed, retention::PASS_LIMIT),
            Err(e) => {
                let e = e.to_string();
                if self.retention.failed(Instant::now(), &e) {
                    warning!("pg_dialer: retention pass failed (tried again in a minute): {e}");
                }
            }
        }
        self.retention.cap(Instant::now(), wait)
    }

    /// Records answers together, or one by one if that fails (so a bad one never holds back the
    /// others; one that cannot be recorded is logged).
    fn record(&mut self, results: &[JobResult]) -> Counts {
        if results.is_empty() {
            return Counts::default();
        }
        // Whether they are recorded or not, these polls are no longer in flight (one that could
        // not be recorded leaves its call due, asked again at the next round).
        for r in results {
            if let JobKind::Status { call_id, .. } = r.kind {
                self.polls_in_flight.answered(call_id);
            }
        }
        let grouped = txn::run(|| pass::record(results));
        match grouped {
            Ok(counts) => counts,
            Err(e) => {
                // One bad result must not hold back the others: record them one by one.
                warning!("pg_dialer: recording {} results together failed ({e}); recording one by one", results.len());
                let mut counts = Counts::default();
                for r in results {
                    let one = std::slice::from_ref(r);
                    match txn::run(|| {
                        // A row still locked now (a tenant's open transaction) fails this result
                        // quickly: each of them would otherwise cost the whole LOCK_TIMEOUT again.
                        tick::shorten_lock_waits()?;
                        pass::record(one)
                    }) {
                        Ok(c) => counts.add(c),
                        Err(e) => warning!("pg_dialer: a result could not be recorded: {e}"),
                    }
                }
                counts
            }
        }
    }

    /// How long until the answers waiting are to be recorded (None: none is waiting).
    fn until_record(&self, now: Instant) -> Option<Duration> {
        self.unrecorded_since.map(|since| (since + RECORD_EVERY).saturating_duration_since(now))
    }

    /// Sleeps on the latch and the HTTP pool's pipe (the process exits if the postmaster died;
    /// SIGTERM is seen at the top of the loop).
    /// An answer wakes the worker only when none is waiting to be recorded (the first starts
    /// RECORD_EVERY's clock), the last claim ran out of room (answers make room) or a webhook
    /// waits for an answer; the clock wakes it for the others, so that 30 answers a second are
    /// not 30 wake-ups.
    fn wait(&mut self, timeout: Duration) {
        let wake_on_answer = self.unrecorded_since.is_none() || self.pool_full || self.short_of_room || wake::record_asked();
        let waiting = self.pool.wake_on_answers(wake_on_answer);
        let timeout = match self.until_record(Instant::now()) {
            _ if wake_on_answer && waiting => Duration::ZERO,
            Some(until) => timeout.min(until),
            None => timeout,
        };
        if self.wait_set.wait(timeout) {
            unsafe { pg_sys::proc_exit(1) };
        }
        pgrx::check_for_interrupts!();
    }

    /// SIGTERM: let requests in flight finish (or time out) and record them before exit.
    fn shutdown(&mut self) {
        // Held calls never left: back to their queues (else the next start holds them in doubt).
        if let Err(e) = self.withdraw_held(true) {
            warning!("pg_dialer: could not withdraw the held calls at shutdown: {e}");
        }
        let deadline = Instant::now() + self.settings.http_timeout + Duration::from_secs(1);
        let mut results = std::mem::take(&mut self.unrecorded);
        results.extend(self.pool.wait_all(deadline));
        let started = unix_ms();
        let counts = self.record(&results);
        if let Err(e) = self.log_pass(started, counts, true) {
            warning!("pg_dialer: could not write the tick log at shutdown: {e}");
        }
        log!("pg_dialer worker stopping");
    }
}

/// A provider's 2xx to a placed call: almost always accepted (the adapter decides when it is
/// recorded; one that is not frees its slot RECORD_EVERY later, no more).
fn looks_accepted(answer: &JobResult) -> bool {
    matches!(answer.kind, JobKind::Place { .. }) && answer.result.as_ref().is_ok_and(|r| (200..300).contains(&r.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Woken {
        Woken { since_full_pass: Duration::from_millis(200), ..Woken::default() }
    }

    fn answer(kind: JobKind, result: Result<u16, &str>) -> JobResult {
        use crate::providers::{HttpRequest, HttpResponse, Method, TransportError};
        let request = HttpRequest::json(Method::Post, "http://127.0.0.1/calls".into(), Vec::new(), None, Vec::new()).unwrap();
        let result = result
            .map(|status| HttpResponse { status, retry_after: None, body: "{}".into() })
            .map_err(|why| TransportError::Unknown(why.into()));
        JobResult { kind, flight_key: None, request, result, sent_at_ms: 0.0, latency_ms: 0.0 }
    }

    #[test]
    fn only_a_2xx_to_a_placed_call_waits_behind_a_claim() {
        let place = || JobKind::Place { call_id: 1, batch_id: 1, provider: "ultravox".into() };
        assert!(looks_accepted(&answer(place(), Ok(201))));
        // a refusal, a 429 or a lost answer may free a slot or set a retry: recorded first
        assert!(!looks_accepted(&answer(place(), Ok(429))));
        assert!(!looks_accepted(&answer(place(), Ok(500))));
        assert!(!looks_accepted(&answer(place(), Err("timed out"))));
        // a poll's answer may end a call, even a 200
        assert!(!looks_accepted(&answer(JobKind::Status { call_id: 1, provider: "ultravox".into() }, Ok(200))));
    }

    #[test]
    fn a_wake_up_a_due_time_or_a_second_without_a_full_pass_makes_one() {
        assert!(!quiet().full_pass());
        assert!(Woken { asked: true, ..quiet() }.full_pass());
        assert!(Woken { due: true, ..quiet() }.full_pass());
        assert!(Woken { since_full_pass: FULL_PASS_EVERY, ..quiet() }.full_pass());
        // held back claims do not hold back what is due or new
        assert!(Woken { due: true, claims_held_back: true, ..quiet() }.full_pass());
        assert!(Woken { asked: true, claims_held_back: true, ..quiet() }.full_pass());
    }

    #[test]
    fn a_woken_queue_s_claim_settles_its_wake_up_only_when_it_took_its_due_jobs() {
        // every immediate job noted claimed: no full pass
        assert!(!woken_claim_leaves_work(1, 1, false, 300));
        assert!(!woken_claim_leaves_work(299, 120, false, 300));
        // some left behind: a pacing slot or a calling window to come, a limit reached
        assert!(woken_claim_leaves_work(0, 1, false, 300));
        assert!(woken_claim_leaves_work(1, 2, false, 300));
        assert!(woken_claim_leaves_work(0, 0, false, 300));
        // all it could take: more may be due
        assert!(woken_claim_leaves_work(300, 300, false, 300));
        assert!(woken_claim_leaves_work(5, 5, true, 300));
        assert!(woken_claim_leaves_work(1, 1, false, 0));
    }

    #[test]
    fn a_near_slot_or_a_full_pool_claims_unless_claims_are_held_back() {
        assert!(Woken { slot_near: true, ..quiet() }.full_pass());
        assert!(Woken { pool_full: true, ..quiet() }.full_pass());
        assert!(!Woken { slot_near: true, claims_held_back: true, ..quiet() }.full_pass());
        assert!(!Woken { pool_full: true, claims_held_back: true, ..quiet() }.full_pass());
    }

    #[test]
    fn poll_rounds_come_a_tenth_of_the_poll_interval_apart_from_250_ms_to_1_s() {
        assert_eq!(poll_round_every(Duration::from_millis(100)), Duration::from_millis(250));
        assert_eq!(poll_round_every(Duration::from_secs(5)), Duration::from_millis(500));
        assert_eq!(poll_round_every(Duration::from_secs(60)), Duration::from_secs(1));
    }

    #[test]
    fn a_full_pass_does_the_poll_round_that_is_near_a_quiet_pass_waits_for_it() {
        let near = Woken { poll_round_near: true, ..quiet() };
        assert!(!near.polls() && !near.upkeep(false));
        assert!(Woken { asked: true, ..near }.polls());
        assert!(Woken { slot_near: true, ..near }.polls());
        assert!(!Woken { slot_near: true, ..quiet() }.polls());
    }

    #[test]
    fn a_poll_round_or_ended_calls_do_upkeep_without_a_claim() {
        let round = Woken { poll_round: true, ..quiet() };
        assert!(!round.full_pass() && round.upkeep(false));
        assert!(!quiet().full_pass() && quiet().upkeep(true));
        // answers alone (placed calls recorded): nothing more
        assert!(!quiet().upkeep(false));
    }
}
