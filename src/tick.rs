//! The tick's database side: thin Rust over the SQL functions of `sql/tick.sql`.
//! Callers own the transaction; every statement uses `$n` parameters.

use crate::dispatch::{Job, JobKind, JobResult};
use crate::error::DialerError;
use crate::providers::lookup::{self, InDoubt, LookupResult};
use crate::providers::{self, CallSpec, Credentials, DispatchOutcome, Mapping, ProviderTarget};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::collections::HashMap;

/// What a claim hands back: the requests to send (each held to its pacing slot), the outcomes of
/// calls whose request could not be built (to be recorded as failed), and how many batches gave
/// calls.
#[derive(Default)]
pub struct Claimed {
    pub jobs: Vec<Job>,
    pub unbuildable: Outcomes,
    pub batches: i32,
    /// A batch got less than its budget, or nothing, because the HTTP threads (overall, or its
    /// provider account's share) had no more room.
    pub short_of_room: bool,
}

/// A batch with work due (`dialer._due_batches`).
#[derive(Clone, Copy)]
struct DueBatch {
    batch_id: i64,
    agency_id: i64,
    mapping_id: i64,
}

/// A database (SPI) error as the worker reports it.
pub(crate) fn db<E: std::fmt::Display>(e: E) -> DialerError {
    DialerError::database(e.to_string())
}

/// The library was upgraded and the SQL not yet: calling functions that do not exist (or mean
/// something else) would only fail. Says what to do (the launcher and the worker both wait).
pub fn warn_sql_older_than_library(database: &str, version: &str) {
    pgrx::warning!(
        "pg_dialer: the extension in database \"{database}\" is version {version} and the library {LIBRARY_VERSION}; \
         the worker waits until ALTER EXTENSION pg_dialer UPDATE has run there"
    );
}

/// The version of the extension's SQL installed in this database (None: not installed).
pub fn installed_version() -> Result<Option<String>, DialerError> {
    Spi::get_one::<String>("SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'pg_dialer'").map_err(db)
}

/// The extension is installed, at the version of this library (after a new library is installed,
/// its SQL arrives with ALTER EXTENSION pg_dialer UPDATE).
pub fn extension_ready() -> Result<bool, DialerError> {
    Ok(installed_version()?.as_deref() == Some(LIBRARY_VERSION))
}

pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Keeps ticks from overlapping, for the transaction: the row lock of dialer.tick_lock, which
/// only the owner and dialer_admin may take (an advisory lock anyone could hold, and so hold the
/// worker off).
pub fn try_tick_lock() -> Result<bool, DialerError> {
    one::<i64>("SELECT count(*) FROM (SELECT 1 FROM dialer.tick_lock WHERE id = 1 FOR UPDATE SKIP LOCKED) l", &[]).map(|v| v == 1)
}

pub fn promote() -> Result<i32, DialerError> {
    one::<i32>("SELECT dialer._promote_batches(clock_timestamp())", &[])
}

/// Calls still open long after dialer.call_timeout (the provider never said they ended).
pub fn close_abandoned(call_timeout_ms: f64) -> Result<i32, DialerError> {
    one::<i32>("SELECT dialer._close_abandoned(clock_timestamp(), make_interval(secs => $1 / 1000.0))", &[call_timeout_ms.into()])
}

/// Hand-offs waiting for a telecaller who has since become available.
pub fn assign_pending() -> Result<i32, DialerError> {
    one::<i32>(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM dialer.followups WHERE status = 'open' AND telecaller_id IS NULL)
                     THEN dialer._assign_pending() ELSE 0 END",
        &[],
    )
}

pub fn active_batch_count() -> Result<i64, DialerError> {
    one::<i64>("SELECT count(*) FROM dialer.call_batches WHERE status = 'processing'", &[])
}

/// Marks finished batches completed; `by_counters`: look only at batches whose counters say so.
pub fn complete_batches(by_counters: bool) -> Result<i32, DialerError> {
    one::<i32>("SELECT dialer._complete_batches(clock_timestamp(), $1)", &[by_counters.into()])
}

/// Milliseconds until what is due next but a pacing slot (a retry, scheduled start, deadline,
/// status poll or look-up, those two not before the next poll round), and until the next pacing
/// slot (the claim may take that one early); None when nothing waits.
pub fn ms_until_next_due(poll_every_ms: f64, next_round_in_ms: f64) -> Result<(Option<f64>, Option<f64>), DialerError> {
    Spi::connect_mut(|client| {
        let row = crate::plans::run(
            client,
            "SELECT (extract(epoch FROM d.due - n.now) * 1000)::float8, (extract(epoch FROM s.slot - n.now) * 1000)::float8
               FROM (SELECT clock_timestamp() AS now) n,
                    LATERAL (SELECT dialer._next_slot(n.now) AS slot) s,
                    LATERAL (SELECT dialer._next_due(n.now, make_interval(secs => $1 / 1000.0),
                                                     n.now + make_interval(secs => $2 / 1000.0)) AS due) d",
            Some(1),
            &[poll_every_ms.into(), next_round_in_ms.into()],
        )?;
        let mut out = (None, None);
        for r in row {
            out = (r.get::<f64>(1)?, r.get::<f64>(2)?);
        }
        Ok::<_, DialerError>(out)
    })
}

/// See `dialer._refresh_statistics`: ANALYZE a hot table that has outgrown its statistics.
pub fn refresh_statistics() -> Result<i32, DialerError> {
    one::<i32>("SELECT dialer._refresh_statistics()", &[])
}

/// Whether a hot table has outgrown its statistics (`dialer._outgrown_statistics`).
pub fn statistics_outgrown() -> Result<bool, DialerError> {
    one::<bool>("SELECT EXISTS (SELECT FROM dialer._outgrown_statistics())", &[])
}

pub fn settle_stale_dialing(older_than_ms: f64) -> Result<i32, DialerError> {
    one::<i32>("SELECT dialer._settle_stale_dialing(clock_timestamp() - make_interval(secs => $1 / 1000.0))", &[older_than_ms.into()])
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub batches: i32,
    pub initiated: i32,
    pub failed: i32,
    pub rate_limited: i32,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.batches += other.batches;
        self.initiated += other.initiated;
        self.failed += other.failed;
        self.rate_limited += other.rate_limited;
    }
    pub fn is_empty(&self) -> bool {
        self.batches == 0 && self.initiated == 0 && self.failed == 0 && self.rate_limited == 0
    }
}

pub fn log_run(started: f64, mode: &str, counts: Counts, status: &str, error: Option<&str>) -> Result<(), DialerError> {
    let args = [
        started.into(),
        mode.into(),
        counts.batches.into(),
        counts.initiated.into(),
        counts.failed.into(),
        counts.rate_limited.into(),
        status.into(),
        error.into(),
    ];
    Spi::connect_mut(|client| {
        crate::plans::run(client, "SELECT dialer._log_run(to_timestamp($1 / 1000.0), $2, $3, $4, $5, $6, $7, $8)", None, &args).map(|_| ())
    })
    .map_err(db)
}

/// Agent mappings and credentials as read by the worker, kept across passes until one of them
/// changes (a trigger bumps wake::CONFIG_EPOCH at commit) and for CACHE_FOR at most (a Vault
/// secret changes without telling us).
#[derive(Default)]
pub struct TargetCache {
    targets: HashMap<i64, Result<ProviderTarget, String>>,
    credentials: HashMap<(i64, String), Option<Credentials>>,
    /// A queue's agency and agent mapping, for the immediate-call path: what the claim's room and
    /// request need before it runs (a stale mapping costs nothing: each claimed row names its own).
    queues: HashMap<i64, DueBatch>,
    read: Option<(u64, std::time::Instant)>,
}

const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl TargetCache {
    /// Forgets what may have changed since it was read; call before each pass.
    pub fn refresh(&mut self) {
        let epoch = crate::wake::current(crate::wake::Epoch::Config);
        let now = std::time::Instant::now();
        if !self.read.is_some_and(|(seen, at)| seen == epoch && now.duration_since(at) < CACHE_FOR) {
            self.targets.clear();
            self.credentials.clear();
            self.queues.clear();
            self.read = Some((epoch, now));
        }
    }

    pub fn target(&mut self, mapping_id: i64, agency_id: i64) -> Result<ProviderTarget, DialerError> {
        if let Some(found) = self.targets.get(&mapping_id) {
            return found.clone().map_err(DialerError::InvalidArgument);
        }
        let loaded = self.load(mapping_id, agency_id);
        match &loaded {
            Ok(t) => {
                self.targets.insert(mapping_id, Ok(t.clone()));
            }
            Err(e @ DialerError::MissingCredentials { .. }) | Err(e @ DialerError::NotFound(_)) => {
                self.targets.insert(mapping_id, Err(e.to_string()));
            }
            Err(_) => {}
        }
        loaded
    }

    fn load(&mut self, mapping_id: i64, agency_id: i64) -> Result<ProviderTarget, DialerError> {
        let row = Spi::connect(|client| {
            let table = client.select(
                "SELECT provider, external_agent_id, from_number, carrier, request_template, use_caller_id_pool
                   FROM dialer.agent_mappings WHERE id = $1",
                Some(1),
                &[mapping_id.into()],
            )?;
            let mut out = None;
            for r in table {
                out = Some((
                    required::<String>(&r, 1)?,
                    Mapping {
                        external_agent_id: r.get::<String>(2)?,
                        from_number: r.get::<String>(3)?,
                        carrier: r.get::<String>(4)?,
                        request_template: r.get::<JsonB>(5)?.map(|j| j.0).unwrap_or_else(|| json!({})),
                        use_caller_id_pool: r.get::<bool>(6)?.unwrap_or(false),
                    },
                ));
            }
            Ok::<_, DialerError>(out)
        })?;
        let Some((provider, mapping)) = row else {
            return Err(DialerError::NotFound(format!("agent mapping {mapping_id} does not exist")));
        };
        let credentials = self
            .credentials(agency_id, &provider)?
            .ok_or_else(|| DialerError::MissingCredentials { agency_id, provider: provider.clone() })?;
        Ok(ProviderTarget { provider, mapping, credentials })
    }

    pub fn credentials(&mut self, agency_id: i64, provider: &str) -> Result<Option<Credentials>, DialerError> {
        let key = (agency_id, provider.to_string());
        if let Some(c) = self.credentials.get(&key) {
            return Ok(c.clone());
        }
        let creds = Spi::connect(|client| {
            let table = client.select(
                "SELECT api_key, base_url, account_sid FROM dialer.provider_credentials
                  WHERE agency_id = $1 AND provider = $2",
                Some(1),
                &[agency_id.into(), provider.into()],
            )?;
            let mut out = None;
            for r in table {
                out = Some((required::<String>(&r, 1)?, r.get::<String>(2).map_err(db)?, r.get::<String>(3).map_err(db)?));
            }
            Ok::<_, DialerError>(out)
        })?;
        let creds = match creds {
            Some((key, base_url, account_sid)) => Some(Credentials {
                // A key that does not decrypt is this account's problem: its batches say so and wait.
                api_key: crate::sealed::unseal(&key, agency_id, provider, "api_key").map_err(|e| {
                    DialerError::InvalidArgument(format!("the stored {provider} key of agency {agency_id} cannot be used: {e}"))
                })?,
                base_url,
                account_sid,
            }),
            None => None,
        };
        self.credentials.insert(key, creds.clone());
        Ok(creds)
    }
}

/// For the rest of this transaction a row lock is waited for 50 ms at most (the worker's
/// session allows 500 ms): results recorded one by one after their group failed on a lock.
pub fn shorten_lock_waits() -> Result<(), DialerError> {
    Spi::run("SET LOCAL lock_timeout = '50ms'").map_err(db)
}

fn set_batch_error(batch_id: i64, error: &str) -> Result<(), DialerError> {
    Spi::run_with_args(
        "UPDATE dialer.call_batches SET last_error = $2 WHERE id = $1 AND last_error IS DISTINCT FROM $2",
        &[batch_id.into(), error.into()],
    )
    .map_err(db)
}

/// Step 2: claims due contacts of due batches (caller's transaction, committed before any
/// request is sent) and turns them into HTTP jobs. Calls whose request cannot be built are
/// recorded as failed results at once.
/// Returns the jobs to send, failed outcomes to record (requests that could not be built), and
/// the number of batches served.
pub fn claim(max_batches: i32, pacing: &Pacing, room_for: &dyn Fn(&str) -> usize, cache: &mut TargetCache) -> Result<Claimed, DialerError> {
    let due = batch_rows(
        "SELECT batch_id, agency_id, agent_mapping_id
           FROM dialer._due_batches(clock_timestamp(), $1, make_interval(secs => $2 / 1000.0))",
        &[max_batches.into(), pacing.ahead_ms.into()],
    )?;
    claim_from(due, pacing, room_for, cache, TickLock::Held)
}

/// How a claim paces: slots up to `ahead_ms` ahead are claimed now (their requests held until
/// the slot), at most `budget_per_batch` calls a batch, `global_cps` calls a second in all (0: no
/// cap); slots missed before `catch_up_before_ms` (the worker's start) are made up.
pub struct Pacing {
    pub ahead_ms: f64,
    pub budget_per_batch: i32,
    pub global_cps: i32,
    pub catch_up_before_ms: Option<f64>,
}

/// The immediate-call path: claims from one batch (a queue just given a job) without reading
/// any other; the claim (sql/claim.sql) checks its pacing, limits and compliance as for any batch,
/// and takes the tick lock itself, so that a wake-up is one statement and one commit (the queue's
/// agency and mapping are read once and kept).
pub fn claim_one(
    batch_id: i64,
    pacing: &Pacing,
    room_for: &dyn Fn(&str) -> usize,
    cache: &mut TargetCache,
) -> Result<Claimed, DialerError> {
    let queue = match cache.queues.get(&batch_id) {
        Some(&queue) => queue,
        None => {
            let Some(queue) = batch_rows(
                "SELECT id, agency_id, agent_mapping_id FROM dialer.call_batches WHERE id = $1 AND status = 'processing'",
                &[batch_id.into()],
            )?
            .pop() else {
                return Ok(Claimed::default());
            };
            cache.queues.insert(batch_id, queue);
            queue
        }
    };
    claim_from(vec![queue], pacing, room_for, cache, TickLock::Take)
}

/// Whether the claim statement takes the tick lock (the immediate-call path) or its caller holds it.
#[derive(Clone, Copy)]
enum TickLock {
    Held,
    Take,
}

fn batch_rows(query: &'static str, args: &[pgrx::datum::DatumWithOid]) -> Result<Vec<DueBatch>, DialerError> {
    Spi::connect_mut(|client| {
        let table = crate::plans::run(client, query, None, args).map_err(db)?;
        let mut out = Vec::new();
        for r in table {
            out.push(DueBatch { batch_id: required(&r, 1)?, agency_id: required(&r, 2)?, mapping_id: required(&r, 3)? });
        }
        Ok::<_, DialerError>(out)
    })
}

/// The one value a statement always returns: NULL is a bug between the Rust and the SQL of this
/// library, said as such rather than read as 0. (From a kept plan: plans.rs.)
pub(crate) fn one<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    query: &'static str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<T, DialerError> {
    Spi::connect_mut(|client| crate::plans::run(client, query, Some(1), args)?.first().get_one::<T>())
        .map_err(db)?
        .ok_or_else(|| DialerError::database(format!("no value from: {query}")))
}

/// A column the statement always fills: NULL (or a mismatched type) is a bug between the Rust
/// and the SQL of this library, said as such rather than read as 0.
fn required<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(
    row: &pgrx::spi::SpiHeapTupleData,
    column: usize,
) -> Result<T, DialerError> {
    row.get::<T>(column).map_err(db)?.ok_or_else(|| DialerError::database(format!("column {column} of a tick statement is NULL")))
}

/// A due batch to claim from, with what its requests need.
struct Asked {
    due: DueBatch,
    /// Its provider account as the HTTP pool counts it (`agency:provider`).
    account: String,
    target: ProviderTarget,
}

/// Claims from the given batches, in order, as far as the HTTP pool's room goes: all of them in
/// one statement, then any the statement deferred (they share a pacing row or caller-ID pool with
/// a batch before them) or gave less room than an earlier batch left unused, in the next.
fn claim_from(
    due: Vec<DueBatch>,
    pacing: &Pacing,
    room_for: &dyn Fn(&str) -> usize,
    cache: &mut TargetCache,
    lock: TickLock,
) -> Result<Claimed, DialerError> {
    let mut claimed = Claimed::default();
    // dialer.max_execution_time bounds one tick: batches not reached wait for the next one.
    let deadline = std::time::Instant::now() + crate::gucs::max_execution_time();
    // What the HTTP pool can take (room_for("") is the pool's room across all accounts).
    let mut total_left = room_for("");
    let mut claimed_now: HashMap<String, usize> = HashMap::new();
    let mut pending = Vec::with_capacity(due.len());
    for due in due {
        match cache.target(due.mapping_id, due.agency_id) {
            Ok(target) => pending.push(Asked { account: format!("{}:{}", due.agency_id, target.provider), due, target }),
            Err(e @ (DialerError::MissingCredentials { .. } | DialerError::NotFound(_) | DialerError::InvalidArgument(_))) => {
                // Do not burn contacts on a configuration problem: say so on the batch and wait.
                set_batch_error(due.batch_id, &e.to_string())?;
            }
            Err(e) => return Err(e),
        }
    }
    // After a statement failed, each batch goes on its own, so that one batch whose rows cannot be
    // claimed is set aside with its error while the rest go on.
    let mut one_at_a_time = false;
    // Every statement but a failed one serves its first batch for good (it is never deferred, and
    // it comes back only if it took all its room, which then runs out): so at most one a batch.
    for _ in 0..=pending.len() * 2 {
        if pending.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        // A provider account whose requests fill its share of the HTTP threads (it is slow or
        // hanging) gets no more until some come back; other accounts go on.
        let room_of = |account: &str| room_for(account).saturating_sub(claimed_now.get(account).copied().unwrap_or(0)).min(total_left);
        let before = pending.len();
        pending.retain(|a| room_of(&a.account) > 0);
        claimed.short_of_room |= pending.len() < before;
        if pending.is_empty() {
            break;
        }
        let ask: Vec<Asked> = pending.drain(..if one_at_a_time { 1 } else { pending.len() }).collect();
        let rooms: Vec<i32> = ask.iter().map(|a| room_of(&a.account).min(i32::MAX as usize) as i32).collect();
        let total = total_left.min(i32::MAX as usize) as i32;
        let out = match crate::txn::isolated(|| claim_batches(&ask, &rooms, total, pacing, lock)) {
            Ok(out) => out,
            Err(e) if ask.len() > 1 => {
                // The failing batch gets its error noted when it runs alone (below).
                pgrx::debug1!("pg_dialer: a claim of {} batches failed ({e}); claiming them one at a time", ask.len());
                one_at_a_time = true;
                pending.splice(0..0, ask);
                continue;
            }
            Err(e) => {
                // Noted in a subtransaction of its own: a batch row that cannot be written now
                // (locked past lock_timeout) must not end the tick for the others either.
                let batch_id = ask[0].due.batch_id;
                let note = format!("could not claim from this batch: {e}");
                if let Err(e) = crate::txn::isolated(|| set_batch_error(batch_id, &note)) {
                    pgrx::warning!("pg_dialer: batch {batch_id}: {note} ({e})");
                }
                continue;
            }
        };
        let mut taken: HashMap<i64, usize> = HashMap::new();
        for (spec, pool_number) in out.calls {
            let Some(asked) = ask.iter().find(|a| a.due.batch_id == spec.batch_id) else {
                return Err(DialerError::database(format!("the claim returned a call of batch {}, which it was not given", spec.batch_id)));
            };
            *taken.entry(spec.batch_id).or_insert(0) += 1;
            *claimed_now.entry(asked.account.clone()).or_insert(0) += 1;
            total_left = total_left.saturating_sub(1);
            claimed.add_call(asked, spec, pool_number, cache);
        }
        claimed.batches += taken.len() as i32;
        // Deferred batches, and those that took all the room they were given (less than a batch's
        // budget): the next statement, with the room left.
        let again: Vec<i64> = out
            .short
            .iter()
            .filter(|&&(batch_id, room)| room.is_none_or(|room| taken.get(&batch_id).copied().unwrap_or(0) as i64 >= room as i64))
            .map(|&(batch_id, _)| batch_id)
            .collect();
        let mut back: Vec<Asked> = ask.into_iter().filter(|a| again.contains(&a.due.batch_id)).collect();
        back.append(&mut pending);
        pending = back;
    }
    Ok(claimed)
}

impl Claimed {
    /// A claimed call as a job for the HTTP pool (or, if its request cannot be built, an outcome).
    fn add_call(&mut self, asked: &Asked, spec: CallSpec, pool_number: Option<String>, cache: &mut TargetCache) {
        let DueBatch { batch_id, agency_id, mapping_id } = asked.due;
        // A queue job may name its own agent; its target is looked up (once per tick) too.
        let mut target = if spec.agent_mapping_id == mapping_id || spec.agent_mapping_id == 0 {
            asked.target.clone()
        } else {
            match cache.target(spec.agent_mapping_id, agency_id) {
                Ok(t) => t,
                Err(e) => {
                    self.unbuildable.not_built(spec.call_id, &e.to_string());
                    return;
                }
            }
        };
        // The caller ID the claim chose (the mapping's own, or one from the agency's pool).
        if target.mapping.use_caller_id_pool {
            target.mapping.from_number = pool_number;
        }
        let kind = JobKind::Place { call_id: spec.call_id, batch_id, provider: target.provider.clone() };
        match providers::build_call_request(&target, &spec) {
            Ok(request) => {
                let account = spec.credential_key.as_deref().map(|key| (key, spec.credential_gap_ms));
                let spacing = crate::pacing::spacing_keys(batch_id, spec.spacing_ms, account, spec.global_gap_ms);
                self.jobs.push(Job {
                    kind,
                    request,
                    not_before_ms: Some(spec.slot_at_ms),
                    spacing,
                    flight_key: Some(format!("{agency_id}:{}", target.provider)),
                })
            }
            Err(error) => self.unbuildable.not_built(spec.call_id, &error),
        }
    }
}

/// The claim statement (sql/claim.sql): the given batches, one statement, its plan kept for the session.
const CLAIM: &str = include_str!("../sql/claim.sql");

/// What one claim statement gave.
struct ClaimedBatches {
    /// The claimed calls, each with the caller ID the claim chose for it.
    calls: Vec<(CallSpec, Option<String>)>,
    /// Batches deferred to the next statement (None), or given less room than their budget (Some:
    /// how much).
    short: Vec<(i64, Option<i32>)>,
}

fn claim_batches(ask: &[Asked], rooms: &[i32], total_room: i32, pacing: &Pacing, lock: TickLock) -> Result<ClaimedBatches, DialerError> {
    let batch_ids: Vec<i64> = ask.iter().map(|a| a.due.batch_id).collect();
    let accounts: Vec<String> = ask.iter().map(|a| a.account.clone()).collect();
    Spi::connect_mut(|client| {
        if pacing.global_cps > 0 {
            // The server's pacing row, which the claim locks and moves on.
            crate::plans::run(client, "INSERT INTO dialer.pacing_state (key) VALUES ('global') ON CONFLICT DO NOTHING", None, &[])
                .map_err(db)?;
        }
        // The contacts must come from campaign_contacts_claim_idx in order, stopping at the
        // limit: a bitmap scan reads and sorts the whole batch (the planner cannot tell how many
        // candidates the live-call and do-not-call tests let through). One plan for every claim:
        // the parameters do not change its shape, and planning it afresh costs more than running it.
        // No JIT: the generic plan's estimates are above jit_above_cost, and compiling it took
        // 1.6 s (at its first row: every claim) to run a statement of a millisecond.
        let table = crate::plans::with_settings(
            &[(c"enable_bitmapscan", c"off"), (c"plan_cache_mode", c"force_generic_plan"), (c"jit", c"off")],
            || {
                crate::plans::run(
                    client,
                    CLAIM,
                    None,
                    &[
                        batch_ids.into(),
                        pacing.budget_per_batch.into(),
                        pacing.ahead_ms.into(),
                        pacing.global_cps.into(),
                        pacing.catch_up_before_ms.into(),
                        matches!(lock, TickLock::Take).into(),
                        accounts.into(),
                        rooms.to_vec().into(),
                        total_room.into(),
                    ],
                )
            },
        )
        .map_err(db)?;
        let mut out = ClaimedBatches { calls: Vec::new(), short: Vec::new() };
        for r in table {
            let kind: String = required(&r, 1)?;
            let batch_id: i64 = required(&r, 2)?;
            match kind.as_str() {
                "call" => {}
                "deferred" => {
                    out.short.push((batch_id, None));
                    continue;
                }
                "room" => {
                    out.short.push((batch_id, Some(required(&r, 18)?)));
                    continue;
                }
                other => return Err(DialerError::database(format!("the claim returned a row of unknown kind {other:?}"))),
            }
            let spec = CallSpec {
                call_id: required(&r, 3)?,
                batch_id,
                contact_id: required(&r, 4)?,
                phone_number: required(&r, 5)?,
                name: r.get::<String>(6).map_err(db)?,
                variables: r.get::<JsonB>(7).map_err(db)?.map(|j| j.0).unwrap_or_else(|| json!({})),
                lead_ref: r.get::<String>(8).map_err(db)?,
                idempotency_key: required(&r, 9)?,
                slot_at_ms: required(&r, 10)?,
                spacing_ms: required(&r, 11)?,
                agent_mapping_id: required(&r, 12)?,
                metadata: r.get::<JsonB>(13).map_err(db)?.map(|j| j.0).unwrap_or_else(|| json!({})),
                credential_key: r.get::<String>(14).map_err(db)?,
                credential_gap_ms: required(&r, 15)?,
                global_gap_ms: required(&r, 16)?,
            };
            out.calls.push((spec, r.get::<String>(17).map_err(db)?));
        }
        Ok::<_, DialerError>(out)
    })
}

/// Held calls (claimed, not yet sent: see `held.rs`) that may no longer go are withdrawn, every
/// one with `all` (at shutdown: their batches get their slots back). Returns the calls withdrawn.
pub fn withdraw_held((call_ids, slots_ms): &(Vec<i64>, Vec<f64>), all: bool) -> Result<Vec<i64>, DialerError> {
    Spi::connect_mut(|client| {
        let table = crate::plans::run(
            client,
            "SELECT dialer._withdraw_held($1, $2, $3)",
            None,
            &[call_ids.clone().into(), slots_ms.clone().into(), all.into()],
        )?;
        let mut out = Vec::new();
        for r in table {
            out.push(required(&r, 1)?);
        }
        Ok::<_, DialerError>(out)
    })
}

/// Step 4: records the results of call requests in one short transaction (the caller's).
/// Accepted calls (nearly all) go in as arrays, one statement for all of them; the rest, which
/// each need their own retry or hand-off, as the arrays of `_record_dispatch`.
pub fn record_dispatch(results: &[JobResult]) -> Result<Counts, DialerError> {
    let mut others = Outcomes::default();
    let mut accepted = Accepted::default();
    for r in results {
        let JobKind::Place { call_id, provider, .. } = &r.kind else { continue };
        let outcome = providers::interpret_call_response(provider, &r.request, r.result.clone());
        match (&outcome, &r.result) {
            (DispatchOutcome::Accepted { provider_call_id }, Ok(resp)) => accepted.push(*call_id, provider_call_id, r, resp),
            _ => others.dispatched(*call_id, r, &outcome),
        }
    }
    let mut counts = Counts::default();
    if !accepted.call_ids.is_empty() {
        counts.initiated = accepted.record()?;
    }
    counts.add(others.record()?);
    Ok(counts)
}

/// Accepted calls as columns for `dialer._record_accepted` (request and response as JSON text,
/// parsed once, by Postgres).
#[derive(Default)]
struct Accepted {
    call_ids: Vec<i64>,
    provider_call_ids: Vec<Option<String>>,
    exchanges: Exchanges,
}

impl Accepted {
    fn push(&mut self, call_id: i64, provider_call_id: &Option<String>, r: &JobResult, resp: &providers::HttpResponse) {
        self.call_ids.push(call_id);
        self.provider_call_ids.push(provider_call_id.clone());
        self.exchanges.push(r, Some((resp.status, stored_response_text(&resp.body, &r.request.secrets))));
    }

    fn record(self) -> Result<i32, DialerError> {
        let mut args = vec![self.call_ids.into(), self.provider_call_ids.into()];
        args.extend(self.exchanges.into_args());
        one::<i32>("SELECT dialer._record_accepted($1, $2, $3, $4, $5, $6, $7)", &args)
    }
}

/// The exchange behind each recorded result, the columns both record functions take: the answer's
/// HTTP status, the latency, when the request left, the request as sent (secrets out) and the
/// answer as stored. NULL where there was no exchange (a request never built).
#[derive(Default)]
struct Exchanges {
    http_status: Vec<Option<i32>>,
    latency_ms: Vec<Option<f64>>,
    dispatched_at_ms: Vec<Option<f64>>,
    requests: Vec<Option<String>>,
    responses: Vec<Option<String>>,
}

impl Exchanges {
    /// A request that left, and its answer (HTTP status, as stored) if one came.
    fn push(&mut self, r: &JobResult, answer: Option<(u16, String)>) {
        let (status, stored) = answer.unzip();
        self.http_status.push(status.map(i32::from));
        self.latency_ms.push(Some(r.latency_ms));
        self.dispatched_at_ms.push(Some(r.sent_at_ms));
        self.requests.push(Some(r.request.audit.clone()));
        self.responses.push(stored);
    }

    /// A result without an exchange.
    fn push_none(&mut self) {
        self.http_status.push(None);
        self.latency_ms.push(None);
        self.dispatched_at_ms.push(None);
        self.requests.push(None);
        self.responses.push(None);
    }

    /// In the order both functions take them, after their own columns.
    fn into_args(self) -> [pgrx::datum::DatumWithOid<'static>; 5] {
        [self.http_status.into(), self.latency_ms.into(), self.dispatched_at_ms.into(), self.requests.into(), self.responses.into()]
    }
}

/// An accepted call's answer as stored: the provider's JSON (scrubbed of the request's secrets:
/// a provider that echoes the key must not put it in our tables), or its first 2,000 characters
/// as a JSON string when it is not JSON.
fn stored_response_text(body: &str, secrets: &[String]) -> String {
    let body = providers::scrub(body, secrets);
    // (Postgres's jsonb refuses \u0000, which JSON allows: such an answer is kept as text.)
    if !body.contains("\\u0000") && serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok() {
        body
    } else {
        Value::String(body.chars().filter(|c| *c != '\0').take(2000).collect()).to_string()
    }
}

/// Outcomes other than an accepted call, as the parallel arrays of `dialer._record_dispatch` (the
/// outcome cast to the enum `dialer.dispatch_outcome` there: a kind the SQL does not know fails).
#[derive(Default)]
pub struct Outcomes {
    call_ids: Vec<i64>,
    kinds: Vec<&'static str>,
    errors: Vec<Option<String>>,
    retry_after_secs: Vec<Option<f64>>,
    exchanges: Exchanges,
}

impl Outcomes {
    fn push(&mut self, call_id: i64, kind: &'static str, error: Option<String>, retry_after_secs: Option<f64>) {
        self.call_ids.push(call_id);
        self.kinds.push(kind);
        self.errors.push(error);
        self.retry_after_secs.push(retry_after_secs);
    }

    /// A claimed call whose request could not be built: failed (retried, then handed off).
    pub fn not_built(&mut self, call_id: i64, error: &str) {
        self.push(call_id, "failed", Some(error.to_string()), None);
        self.exchanges.push_none();
    }

    /// A request without an answer in time: it may have reached the provider (held in doubt).
    pub fn unanswered(&mut self, call_id: i64) {
        self.push(call_id, "timeout", Some("no answer within dialer.http_timeout".to_string()), None);
        self.exchanges.push_none();
    }

    fn dispatched(&mut self, call_id: i64, r: &JobResult, outcome: &DispatchOutcome) {
        let (error, retry_after) = match outcome {
            DispatchOutcome::Accepted { .. } => (None, None),
            DispatchOutcome::RateLimited { retry_after_secs } => (None, Some(*retry_after_secs)),
            DispatchOutcome::Failed { error } | DispatchOutcome::NetworkError { error } | DispatchOutcome::Timeout { error } => {
                (Some(error.clone()), None)
            }
        };
        self.push(call_id, outcome.kind(), error, retry_after);
        let answer = r.result.as_ref().ok().map(|resp| {
            // A provider that echoes the request (key included) must not put the key in our tables.
            let body = providers::scrub(&resp.body, &r.request.secrets);
            let stored = if (200..300).contains(&resp.status) {
                serde_json::from_str::<Value>(&body).unwrap_or_else(|_| Value::String(body.chars().take(2000).collect()))
            } else {
                // A refusal keeps a short excerpt only: whatever answered, its page is not ours to keep.
                json!({"excerpt": body.chars().take(300).collect::<String>()})
            };
            (resp.status, stored.to_string())
        });
        self.exchanges.push(r, answer);
    }

    pub fn is_empty(&self) -> bool {
        self.call_ids.is_empty()
    }

    pub fn len(&self) -> usize {
        self.call_ids.len()
    }

    /// Records them, in the caller's transaction.
    pub fn record(self) -> Result<Counts, DialerError> {
        if self.is_empty() {
            return Ok(Counts::default());
        }
        let kinds: Vec<String> = self.kinds.iter().map(|k| k.to_string()).collect();
        let mut args = vec![self.call_ids.into(), kinds.into(), self.errors.into(), self.retry_after_secs.into()];
        args.extend(self.exchanges.into_args());
        Spi::connect_mut(|client| {
            // $5…$9: the exchanges (Exchanges::into_args).
            let table = crate::plans::run(
                client,
                "SELECT n_failed, n_rate_limited FROM dialer._record_dispatch($1, $2::text[]::dialer.dispatch_outcome[], $5, $3, $6, $7, $4, $8, $9)",
                Some(1),
                &args,
            )?;
            let mut counts = Counts::default();
            for r in table {
                counts.failed = required(&r, 1)?;
                counts.rate_limited = required(&r, 2)?;
            }
            Ok::<_, DialerError>(counts)
        })
    }
}

/// Step 5: status look-ups for calls in progress that we have not heard about for a while, but
/// those in `in_flight` (asked already, the answer not yet recorded). A call that cannot be asked
/// (its agency has no credentials for the provider) is marked polled: it waits a poll interval,
/// not at the head of every round.
pub fn poll_jobs(every_ms: f64, limit: i32, in_flight: &[i64], cache: &mut TargetCache) -> Result<Vec<Job>, DialerError> {
    let rows: Vec<(i64, i64, String, String)> = Spi::connect_mut(|client| {
        let table = crate::plans::run(
            client,
            "SELECT call_id, agency_id, provider, provider_call_id
               FROM dialer._calls_to_poll(clock_timestamp(), make_interval(secs => $1 / 1000.0), $2, $3)",
            None,
            &[every_ms.into(), limit.into(), in_flight.to_vec().into()],
        )?;
        let mut out = Vec::new();
        for r in table {
            out.push((required(&r, 1)?, required(&r, 2)?, required(&r, 3)?, required(&r, 4)?));
        }
        Ok::<_, DialerError>(out)
    })?;
    let mut jobs = Vec::new();
    let mut not_asked = StatusRows::default();
    for (call_id, agency_id, provider, provider_call_id) in rows {
        let request = match cache.credentials(agency_id, &provider) {
            Ok(Some(creds)) => providers::build_status_request(&provider, &creds, &provider_call_id).ok(),
            _ => None,
        };
        match request {
            Some(request) => jobs.push(Job {
                kind: JobKind::Status { call_id, provider },
                request,
                not_before_ms: None,
                spacing: Vec::new(),
                flight_key: None,
            }),
            None => not_asked.not_heard(call_id),
        }
    }
    not_asked.record()?;
    Ok(jobs)
}

/// Status poll answers as `_record_status` takes them, one element per call.
#[derive(Default)]
struct StatusRows {
    call_ids: Vec<i64>,
    ended: Vec<bool>,
    end_reasons: Vec<Option<String>>,
    answered_at: Vec<Option<String>>,
    ended_at: Vec<Option<String>>,
}

impl StatusRows {
    /// A poll that learnt nothing (no answer, or one we could not read): the call counts as
    /// polled, so it is asked again a poll interval later, not at every round.
    fn not_heard(&mut self, call_id: i64) {
        self.push(call_id, false, None, None, None);
    }

    fn push(&mut self, call_id: i64, ended: bool, end_reason: Option<String>, answered_at: Option<String>, ended_at: Option<String>) {
        self.call_ids.push(call_id);
        self.ended.push(ended);
        self.end_reasons.push(end_reason);
        self.answered_at.push(answered_at);
        self.ended_at.push(ended_at);
    }

    fn record(self) -> Result<i32, DialerError> {
        if self.call_ids.is_empty() {
            return Ok(0);
        }
        one::<i32>(
            "SELECT dialer._record_status($1, $2, $3, $4::text[]::timestamptz[], $5::text[]::timestamptz[])",
            &[self.call_ids.into(), self.ended.into(), self.end_reasons.into(), self.answered_at.into(), self.ended_at.into()],
        )
    }
}

/// Records status polls' answers; a poll without a usable answer marks its call polled.
pub fn record_status(results: &[JobResult]) -> Result<i32, DialerError> {
    let mut rows = StatusRows::default();
    for r in results {
        let JobKind::Status { call_id, provider } = &r.kind else { continue };
        match r.result.as_ref().ok().and_then(|resp| providers::interpret_status_response(provider, resp)) {
            Some(status) => rows.push(
                *call_id,
                status.ended,
                status.end_reason,
                crate::webhooks::clean_timestamp(status.answered_at.as_deref()),
                crate::webhooks::clean_timestamp(status.ended_at.as_deref()),
            ),
            None => rows.not_heard(*call_id),
        }
    }
    rows.record()
}

/// Marks polled the calls whose polls got no answer at all (process_batches() stops waiting).
pub fn record_unanswered_polls(call_ids: impl IntoIterator<Item = i64>) -> Result<i32, DialerError> {
    let mut rows = StatusRows::default();
    for call_id in call_ids {
        rows.not_heard(call_id);
    }
    rows.record()
}

/// Step 5b: look-ups of attempts in doubt (timeouts, a worker that died mid-request).
pub fn lookup_jobs(limit: i32, cache: &mut TargetCache) -> Result<Vec<Job>, DialerError> {
    let rows: Vec<(i64, InDoubt)> = Spi::connect_mut(|client| {
        let table = crate::plans::run(
            client,
            "SELECT call_id, agency_id, provider, idempotency_key, phone_number, claimed_at
               FROM dialer._calls_to_look_up(clock_timestamp(), $1)",
            None,
            &[limit.into()],
        )?;
        let mut out = Vec::new();
        for r in table {
            let attempt = InDoubt {
                call_id: required(&r, 1)?,
                provider: required(&r, 3)?,
                idempotency_key: required(&r, 4)?,
                phone_number: required(&r, 5)?,
                claimed_at: required(&r, 6)?,
            };
            out.push((required(&r, 2)?, attempt));
        }
        Ok::<_, DialerError>(out)
    })?;
    let mut jobs = Vec::new();
    for (agency_id, attempt) in rows {
        // Without credentials the provider cannot be asked: the attempt stays in doubt.
        let Ok(Some(creds)) = cache.credentials(agency_id, &attempt.provider) else { continue };
        if let Ok(request) = lookup::build_request(&attempt, &creds) {
            jobs.push(Job { kind: JobKind::Lookup { attempt }, request, not_before_ms: None, spacing: Vec::new(), flight_key: None });
        }
    }
    Ok(jobs)
}

pub fn record_lookups(results: &[JobResult]) -> Result<i32, DialerError> {
    let (mut call_ids, mut found, mut provider_call_ids) = (vec![], vec![], vec![]);
    for r in results {
        let JobKind::Lookup { attempt } = &r.kind else { continue };
        let Ok(resp) = &r.result else { continue };
        let (is_found, provider_call_id) = match lookup::parse(attempt, resp) {
            LookupResult::Found { provider_call_id } => (true, provider_call_id),
            LookupResult::NotFound => (false, None),
            LookupResult::Unknown => continue,
        };
        call_ids.push(attempt.call_id);
        found.push(is_found);
        provider_call_ids.push(provider_call_id);
    }
    if call_ids.is_empty() {
        return Ok(0);
    }
    one::<i32>("SELECT dialer._record_lookup($1, $2, $3)", &[call_ids.into(), found.into(), provider_call_ids.into()])
}
