-- The claim: due contacts of the given batches, each within its pacing, its limits and
-- compliance, in one statement. Not part of the extension's script: src/tick.rs prepares it once a
-- session and runs it for the batches a pass serves (the immediate-call path too, with its one
-- queue: a wake-up, this statement, one commit, one request).
--   $1 batch ids, in the order they are served   $2 budget (most calls to claim from one batch)
--   $3 lead, ms (slots up to this far ahead are claimed now; each row carries its send time)
--   $4 the server's calls a second (0: no cap; its row in pacing_state must exist)   $5 the
--   worker's start, unix ms (slots missed before it are made up; NULL: none)   $6 take the tick
--   lock here (the immediate-call path: its one statement; nothing is claimed while another pass
--   holds the lock)   $7 each batch's provider account (as the worker names it: the HTTP threads
--   it may fill)   $8 the calls each batch's account may still take this pass   $9 the calls all
--   the batches may take together (the HTTP pool's room)
-- Pacing is a schedule of send times: a batch's calls are spaced 60600 / calls_per_minute ms apart
-- (1% under its limit; next_slot_at, kept here so it survives restarts). Slots up to the lead ahead are claimed now
-- and the request is held until its slot. A worker that is a little late takes the slot as now
-- (spacing is never shortened). Slots missed while no worker ran are made up at a quarter of the
-- spacing, without ever letting more than calls_per_minute calls into any 60 seconds; slots a
-- batch skipped because it was at max_concurrent are not made up.
-- Batches that share a pacing row (a provider account with max_calls_per_second, the server's
-- cap) or a caller-ID pool with a batch before them here (an agency's such batches count as
-- sharing) are not claimed from: they come back as 'deferred' rows, for a statement after this
-- one (their slots follow its).
-- The room ($8, $9) goes to the batches in order, each counted for the most it may take; a batch
-- that the room held below $2 and below what it could take comes back as a 'room' row with the
-- room it had.
-- The claimed contacts go in_progress with attempts + 1 and a `calls` row in 'dialing' carrying
-- the idempotency key; all of it commits before any request is sent.
-- Every CTE reads one snapshot: where a later step must not see a contact an earlier one set
-- aside, it says so. Each batch's contacts are scanned with c.batch_id = pl.id (a lateral
-- subquery a batch), so that they come from campaign_contacts_claim_idx in order and the scan stops
-- at the batch's limit.
WITH t AS MATERIALIZED (
    SELECT clock_timestamp() AS now, make_interval(secs => $3 / 1000.0) AS lead
),
tick AS MATERIALIZED (
    SELECT 1 FROM dialer.tick_lock WHERE id = 1 AND $6 FOR UPDATE SKIP LOCKED
),
-- FOR NO KEY UPDATE: a transaction adding contacts or jobs to this batch holds a KEY SHARE lock
-- on it (their foreign key), which must not make the claim pass the batch by.
b AS MATERIALIZED (
    SELECT x.*, o.ord, ($7::text[])[o.ord] AS account, ($8::integer[])[o.ord] AS account_room,
           -- calls from the agency's caller-ID pool (see want)
           EXISTS (SELECT 1 FROM dialer.agent_mappings m
                    WHERE m.agency_id = x.agency_id AND m.use_caller_id_pool
                      AND (m.id = x.agent_mapping_id OR x.kind IN ('queue', 'leads'))) AS uses_pool
      FROM dialer.call_batches x CROSS JOIN LATERAL (SELECT array_position($1::bigint[], x.id) AS ord) o
     WHERE x.id = ANY ($1) AND x.status = 'processing' AND (NOT $6 OR EXISTS (SELECT 1 FROM tick))
       FOR NO KEY UPDATE OF x SKIP LOCKED
),
-- Jobs scheduled since the last count go into the counters (as dialer._count_arrivals does),
-- under the batch's lock.
arrived AS (
    DELETE FROM dialer.queue_arrivals a USING b WHERE a.batch_id = b.id AND b.kind = 'queue' RETURNING a.batch_id
),
cred AS MATERIALIZED (
    SELECT b.id AS batch_id, pc.agency_id, pc.provider, pc.max_calls_per_second, pc.next_slot_at, pc.rate_limited_until
      FROM b JOIN dialer.agent_mappings m ON m.id = b.agent_mapping_id
      JOIN dialer.provider_credentials pc ON pc.agency_id = m.agency_id AND pc.provider = m.provider
       FOR UPDATE OF pc
),
g AS MATERIALIZED (
    SELECT s.next_slot_at FROM dialer.pacing_state s WHERE s.key = 'global' AND $4 > 0 FOR UPDATE
),
-- What each batch may take. No row: nothing now (a back-off of the batch or of its provider
-- account, the batch's deadline: nothing is dialed after it, not even a slot claimed ahead).
-- The slots come from src/pacing.rs (the batch's spacing, 1% under its limit; a late worker takes
-- its slot as now; slots missed while no worker ran made up; the account's and the server's
-- caps); want, from the slots and the limits:
--   max_concurrent counts calls dialing or in progress, and attempts in doubt that may be live;
--   slots made up are counted over 60.6 s: the same 600 ms of margin as the spacing, for a send
--   that trails its claim (61 s counted two calls too many at the 1% spacing);
--   calls from the caller-ID pool: never more than its numbers have left today, so that every
--   claimed contact gets one (_take_caller_id) and none is dialed from an unlisted number.
want AS MATERIALIZED (
    SELECT b.id, b.agency_id, b.agent_mapping_id, b.kind, b.window_start, b.window_end, b.window_days,
           b.account, b.account_room, b.ord,
           a.timezone AS agency_tz, (t.now AT TIME ZONE a.timezone)::date AS agency_day,
           a.max_attempts_per_number_per_day AS day_cap,
           cred.agency_id AS cred_agency_id, cred.provider AS cred_provider,
           coalesce(1000.0 / cred.max_calls_per_second, 0)::float8 AS c_gap_ms,
           (CASE WHEN $4 > 0 THEN 1000.0 / $4 ELSE 0 END)::float8 AS g_gap_ms,
           p.slot_ms, p.start_ms, p.gap_ms, p.spacing_ms, p.batch_gap_ms, p.catching_up,
           greatest(least(p.slots,
                 b.max_concurrent - b.in_progress_count
                   - (SELECT count(*) FROM dialer.calls k
                       WHERE k.batch_id = b.id AND k.status = 'in_doubt' AND k.lookup_attempts < 5)::integer,
                 $2,
                 CASE WHEN p.catching_up THEN
                     b.calls_per_minute - (SELECT count(*) FROM dialer.calls k
                                            WHERE k.batch_id = b.id AND k.created_at > t.now - interval '60.6 seconds'
                                              AND k.status <> 'network_error')::integer
                 END,
                 CASE WHEN b.uses_pool THEN
                     dialer._caller_ids_left(b.agency_id, (t.now AT TIME ZONE a.timezone)::date)
                 END), 0) AS want,
           -- A batch whose account's or server's pacing row, or caller-ID pool, a batch before it
           -- here takes from (those of one agency are taken as one) waits for the next statement
           -- (pl): its slots are computed from where this one leaves that row.
           CASE WHEN $4 > 0 THEN 'server'
                WHEN cred.max_calls_per_second IS NOT NULL OR b.uses_pool THEN b.agency_id::text END AS shares
      FROM t CROSS JOIN b JOIN dialer.agencies a ON a.id = b.agency_id
      LEFT JOIN cred ON cred.batch_id = b.id LEFT JOIN g ON true
     CROSS JOIN LATERAL dialer._pacing_plan(
           extract(epoch FROM t.now)::float8 * 1000, $3, b.calls_per_minute,
           extract(epoch FROM b.next_slot_at)::float8 * 1000, $5,
           cred.max_calls_per_second::float8, extract(epoch FROM cred.next_slot_at)::float8 * 1000,
           $4::float8, extract(epoch FROM g.next_slot_at)::float8 * 1000) p
     WHERE (b.rate_limited_until IS NULL OR b.rate_limited_until <= t.now)
       AND NOT coalesce(b.expires_at <= t.now + t.lead, false)
       AND NOT coalesce(cred.rate_limited_until > t.now, false)
),
-- The room ($8, $9), to the batches in order, each counted for the most it may take.
-- (Running sums over the batches before each, not a join of want to itself: that was a nested
-- loop of batches × batches.)
pl AS MATERIALIZED (
    SELECT e.*, CASE WHEN e.deferred THEN 0 ELSE greatest(least(e.want, e.room_left), 0) END AS n,
           EXISTS (SELECT 1 FROM dialer.do_not_call) AS has_dnc
      FROM (SELECT w.*,
                   w.shares IS NOT NULL AND count(*) OVER same_shares > 0 AS deferred,
                   least(w.account_room - CASE WHEN w.account IS NULL THEN 0 ELSE coalesce(sum(w.want) OVER same_account, 0) END,
                         $9 - coalesce(sum(w.want) OVER earlier, 0))::integer AS room_left
              FROM want w
            WINDOW earlier AS (ORDER BY w.ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                   same_account AS (PARTITION BY w.account ORDER BY w.ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                   same_shares AS (PARTITION BY w.shares ORDER BY w.ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) e
),
-- Compliance, against live tables, for the contacts next in line only (a claim costs the same
-- whatever the size of the batch): a number on the do-not-call list is cancelled ('dnc'); a
-- contact outside its calling window, or whose number has had today's attempts, waits for the
-- moment it may be dialed (no opening within a year, every day a holiday: looked at again
-- tomorrow). No scan at all when the list is empty and the batch and agency set neither.
look AS MATERIALIZED (
    SELECT c.id, c.batch_id, c.dnc,
           CASE WHEN c.dnc THEN NULL
                WHEN c.opening IS DISTINCT FROM t.now AND (c.opening > t.now OR c.opening IS NULL)
                    THEN coalesce(c.opening, t.now + interval '1 day')
                WHEN pl.day_cap IS NOT NULL
                     AND dialer._attempts_today(pl.agency_id, c.phone_number, t.now, pl.agency_tz) >= pl.day_cap
                    THEN (date_trunc('day', t.now AT TIME ZONE pl.agency_tz) + interval '1 day') AT TIME ZONE pl.agency_tz
           END AS defer_to
      FROM t, pl, LATERAL (
           SELECT q.id, q.batch_id, q.phone_number,
                  pl.has_dnc AND EXISTS (SELECT 1 FROM dialer.do_not_call d
                                          WHERE d.phone_number = q.phone_number
                                            AND (d.agency_id IS NULL OR d.agency_id = pl.agency_id)) AS dnc,
                  CASE WHEN pl.window_start IS NULL THEN t.now
                       ELSE dialer._next_opening(t.now, coalesce(q.timezone, pl.agency_tz), pl.window_start,
                                                 pl.window_end, pl.window_days, pl.agency_id)
                  END AS opening
             FROM (SELECT c2.id, c2.batch_id, c2.phone_number, c2.timezone FROM dialer.campaign_contacts c2
                    WHERE c2.batch_id = pl.id AND c2.status = 'queued'
                      AND (c2.next_attempt_at IS NULL OR c2.next_attempt_at <= t.now)
                      AND pl.n > 0 AND (pl.has_dnc OR pl.window_start IS NOT NULL OR pl.day_cap IS NOT NULL)
                    ORDER BY c2.priority, c2.id
                    LIMIT greatest(pl.n * 4, 50)) q) c
),
set_aside AS (
    UPDATE dialer.campaign_contacts c
       SET status = CASE WHEN l.dnc THEN 'cancelled' ELSE c.status END,
           last_error = CASE WHEN l.dnc THEN 'dnc' ELSE c.last_error END,
           next_attempt_at = CASE WHEN l.dnc THEN c.next_attempt_at ELSE l.defer_to END,
           updated_at = (SELECT now FROM t)
      FROM look l
     WHERE c.id = l.id AND (l.dnc OR l.defer_to IS NOT NULL)
    RETURNING l.batch_id, l.dnc
),
candidates AS (
    -- Each carries what the steps after it need of its batch, so that none of them joins pl again
    -- (a CTE's rows are estimated at one: every such join was a nested loop, contacts × batches).
    SELECT cd.* FROM pl CROSS JOIN LATERAL (
        SELECT c.id, c.batch_id, c.phone_number, c.priority, pl.ord, pl.n,
               pl.agent_mapping_id AS batch_mapping_id, pl.agency_id, pl.agency_tz, pl.agency_day,
               pl.start_ms, pl.gap_ms, pl.batch_gap_ms, pl.c_gap_ms, pl.g_gap_ms,
               CASE WHEN pl.c_gap_ms > 0 THEN pl.cred_agency_id || ':' || pl.cred_provider END AS account_key
          FROM dialer.campaign_contacts c
         WHERE c.batch_id = pl.id AND c.status = 'queued'
           AND pl.n > 0
           AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= (SELECT now FROM t))
           AND (c.expires_at IS NULL OR c.expires_at > (SELECT now + lead FROM t))
           -- one live call per number, across every batch (the unique index enforces it); a scalar
           -- subquery, so that it stays one probe of that index per candidate
           AND (SELECT 1 FROM dialer.calls k WHERE k.phone_number = c.phone_number
                                              AND k.status IN ('dialing', 'in_progress', 'in_doubt') LIMIT 1) IS NULL
           -- never a number on the do-not-call list (look cancels those next in line)
           AND (NOT pl.has_dnc
                OR (SELECT 1 FROM dialer.do_not_call d
                     WHERE d.phone_number = c.phone_number
                       AND (d.agency_id IS NULL OR d.agency_id = pl.agency_id) LIMIT 1) IS NULL)
           -- set aside by look (this statement does not see its own updates)
           AND c.id NOT IN (SELECT l.id FROM look l WHERE l.dnc OR l.defer_to IS NOT NULL)
         ORDER BY c.priority, c.id
         -- a queue (or an attached leads table) may hold one number twice (one is picked below); a
         -- campaign's numbers are unique, and every contact locked here beyond n is a row lock for nothing
         LIMIT CASE WHEN pl.kind = 'campaign' THEN pl.n ELSE pl.n * 2 END
           FOR UPDATE OF c SKIP LOCKED) cd
), picked AS (
    -- One contact a number (the first batch here that has it), then each batch's n, best first.
    -- The call row's id is drawn here so the contact can point at it in the same statement.
    SELECT d.*, nextval('dialer.calls_id_seq'::regclass) AS new_call_id
      FROM (SELECT d.*, row_number() OVER (PARTITION BY d.batch_id ORDER BY d.priority, d.id) AS nth
              FROM (SELECT DISTINCT ON (cd.phone_number) cd.* FROM candidates cd
                     ORDER BY cd.phone_number, cd.ord, cd.priority, cd.id) d) d
     WHERE d.nth <= d.n
     ORDER BY d.batch_id, d.priority, d.id
), claimed_contacts AS (
    UPDATE dialer.campaign_contacts c
       SET status = 'in_progress', attempts = c.attempts + 1, updated_at = (SELECT now FROM t), next_attempt_at = NULL,
           call_id = p.new_call_id
      FROM picked p
     WHERE c.id = p.id
    RETURNING c.id, c.batch_id, c.phone_number, c.name, c.variables, c.lead_ref, c.priority,
              coalesce(c.agent_mapping_id, p.batch_mapping_id) AS mapping_id, c.metadata,
              coalesce(c.timezone, p.agency_tz) AS zone, c.call_id AS new_call_id,
              p.agency_id, p.agency_day, p.start_ms, p.gap_ms, p.batch_gap_ms, p.c_gap_ms, p.g_gap_ms, p.account_key
), claimed AS MATERIALIZED (
    -- The key names the attempt: its contact, and how many attempts the contact had before it
    -- (so it is unique even when a rate-limited attempt is repeated). A copy of this database
    -- restored from before the claim computes the same key for the same attempt, and can find it
    -- at the provider (dialer._hold_after_restore). Computed here, not returned by the insert,
    -- so that the rows this statement returns need no join back to the contacts.
    SELECT cc.*, m.provider,
           format('pgd-%s-%s', cc.id, 1 + (SELECT count(*) FROM dialer.calls k WHERE k.contact_id = cc.id)) AS idempotency_key,
           CASE WHEN m.use_caller_id_pool THEN dialer._take_caller_id(cc.agency_id, cc.phone_number, cc.agency_day)
                ELSE m.from_number END AS from_number
      FROM claimed_contacts cc JOIN dialer.agent_mappings m ON m.id = cc.mapping_id
), new_calls AS (
    -- (run to completion whether or not anything reads it, as every data-modifying WITH)
    INSERT INTO dialer.calls (id, contact_id, batch_id, agency_id, provider, idempotency_key, status, created_at,
                              phone_number, local_time, timezone, from_number)
    OVERRIDING SYSTEM VALUE
    SELECT o.new_call_id, o.id, o.batch_id, o.agency_id, o.provider, o.idempotency_key, 'dialing', t.now,
           o.phone_number, t.now AT TIME ZONE o.zone, o.zone, o.from_number
      FROM claimed o, t
), k AS MATERIALIZED (
    -- What each batch claimed, got and had cancelled, counted in one pass over each.
    SELECT x.batch_id, sum(x.claimed)::integer AS claimed, sum(x.arrived)::integer AS arrived,
           sum(x.cancelled)::integer AS cancelled
      FROM (SELECT o.batch_id, 1 AS claimed, 0 AS arrived, 0 AS cancelled FROM claimed o
            UNION ALL SELECT a.batch_id, 0, 1, 0 FROM arrived a
            UNION ALL SELECT s.batch_id, 0, 0, 1 FROM set_aside s WHERE s.dnc) x
     GROUP BY x.batch_id
), counted AS (
    -- Each batch goes on a spacing after this claim's last call; its counters follow.
    UPDATE dialer.call_batches x
       SET next_slot_at = CASE WHEN k.claimed > 0 THEN
               to_timestamp(dialer._pacing_next_slot_ms(pl.slot_ms, pl.start_ms, pl.gap_ms, pl.spacing_ms,
                                                        pl.catching_up, k.claimed) / 1000.0)
               ELSE x.next_slot_at END,
           total_contacts = x.total_contacts + k.arrived,
           queued_count = greatest(greatest(x.queued_count + k.arrived - k.cancelled, 0) - k.claimed, 0),
           in_progress_count = x.in_progress_count + k.claimed
      FROM k LEFT JOIN pl ON pl.id = k.batch_id
     WHERE x.id = k.batch_id
    RETURNING 1
), paced_account AS (
    -- The account's and the server's next slot: a gap after this claim's last call (one batch
    -- here at most takes from each: pl defers the others).
    UPDATE dialer.provider_credentials pc
       SET next_slot_at = to_timestamp((pl.start_ms + pl.gap_ms * (k.claimed - 1) + pl.c_gap_ms) / 1000.0)
      FROM pl JOIN k ON k.batch_id = pl.id
     WHERE pl.c_gap_ms > 0 AND k.claimed > 0 AND pc.agency_id = pl.cred_agency_id AND pc.provider = pl.cred_provider
    RETURNING 1
), paced_server AS (
    UPDATE dialer.pacing_state s
       SET next_slot_at = to_timestamp((pl.start_ms + pl.gap_ms * (k.claimed - 1) + pl.g_gap_ms) / 1000.0)
      FROM pl JOIN k ON k.batch_id = pl.id
     WHERE s.key = 'global' AND pl.g_gap_ms > 0 AND k.claimed > 0
    RETURNING 1
)
-- A row a claimed call ('call'), then a row a batch that was deferred, or whose room ($8, $9) was
-- less than $2 and than it could take ('room', with that room: the pass is short of room if the
-- batch took all of it).
SELECT 'call' AS kind, o.batch_id, o.new_call_id, o.id, o.phone_number, o.name, o.variables, o.lead_ref, o.idempotency_key,
       o.start_ms + o.gap_ms * (row_number() OVER (PARTITION BY o.batch_id ORDER BY o.priority, o.id) - 1),
       o.batch_gap_ms, o.mapping_id, o.metadata, o.account_key, o.c_gap_ms, o.g_gap_ms, o.from_number, NULL::integer
  FROM claimed o
UNION ALL
SELECT CASE WHEN pl.deferred THEN 'deferred' ELSE 'room' END, pl.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, pl.room_left
  FROM pl
 WHERE pl.deferred OR (pl.room_left < $2 AND pl.room_left <= pl.want)
