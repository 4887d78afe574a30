-- pg_dialer 0.1.0 → 0.2.0 (ALTER EXTENSION pg_dialer UPDATE TO '0.2.0').
--
-- The worker's hot queries no longer depend on the planner's statistics: batches are probed
-- one by one through indexes (a freshly loaded campaign used to be scanned whole per batch),
-- status polls read an index, and the worker refreshes the statistics of a table that has
-- outgrown them. Changing a calling window releases only what the old window deferred. The
-- views read with the caller's rights (row-level security applies through them), webhook events
-- get row-level security, and dialer_admin may run process_batches(). No table changes.
\echo Use "ALTER EXTENSION pg_dialer UPDATE TO '0.2.0'" to load this file. \quit

-- Attempts not yet settled (in doubt or dialing), per batch.
DROP INDEX dialer.calls_in_doubt_idx;
CREATE INDEX calls_unsettled_idx ON dialer.calls (batch_id) WHERE status IN ('in_doubt', 'dialing');
-- Status polls: the calls heard from longest ago first.
CREATE INDEX calls_poll_idx ON dialer.calls ((coalesce(last_polled_at, created_at)))
    WHERE status = 'in_progress' AND provider_call_id IS NOT NULL;
-- Contacts of batches not started yet.
CREATE INDEX campaign_contacts_pending_idx ON dialer.campaign_contacts (batch_id) WHERE status = 'pending';

-- Batches in the order they are served, id included (the due-batch query stops at its limit).
DROP INDEX dialer.call_batches_status_priority_created_at_idx;
CREATE INDEX call_batches_serve_order_idx ON dialer.call_batches (status, priority, created_at, id)
    WHERE status IN ('pending', 'scheduled', 'processing');

-- Running batches by pacing slot (when the worker should look next).
CREATE INDEX call_batches_next_slot_idx ON dialer.call_batches (next_slot_at NULLS FIRST) WHERE status = 'processing';

-- New arguments: _next_due takes the time of the next poll round, _complete_batches whether to
-- trust the batch counters.
DROP FUNCTION dialer._next_due(timestamptz, interval);
DROP FUNCTION dialer._complete_batches(timestamptz);

-- Functions new or changed since 0.1.0 (scripts/upgrade-functions.py lists them).
-- _batch_due_at
CREATE OR REPLACE FUNCTION dialer._batch_due_at(p_batch_id bigint, p_now timestamptz)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
DECLARE
    due timestamptz;
BEGIN
    IF EXISTS (SELECT 1 FROM dialer.campaign_contacts c
                WHERE c.batch_id = p_batch_id AND c.status = 'queued' AND c.next_attempt_at IS NULL) THEN
        RETURN p_now;
    END IF;
    SELECT c.next_attempt_at INTO due FROM dialer.campaign_contacts c
     WHERE c.batch_id = p_batch_id AND c.status = 'queued' AND c.next_attempt_at IS NOT NULL
     ORDER BY c.next_attempt_at LIMIT 1;
    RETURN due;
END $$;

-- _claim_batch
CREATE OR REPLACE FUNCTION dialer._claim_batch(p_batch_id bigint, p_now timestamptz, p_budget integer,
    p_lead interval DEFAULT '0', p_global_cps integer DEFAULT 0, p_catch_up_before timestamptz DEFAULT NULL)
RETURNS TABLE (call_id bigint, contact_id bigint, phone_number text, name text, variables jsonb,
               lead_ref text, source text, attempts integer, idempotency_key text, slot_at_ms double precision,
               spacing_ms double precision, agent_mapping_id bigint, metadata jsonb, credential_key text,
               credential_gap_ms double precision, global_gap_ms double precision)
-- The candidates must come from campaign_contacts_claim_idx in order, stopping at the limit; a
-- bitmap scan would read and sort the whole batch (the planner cannot tell how many candidates
-- the live-call and do-not-call tests let through, and guesses one).
LANGUAGE plpgsql SET enable_bitmapscan = off AS $$
DECLARE
    b dialer.call_batches;
    cred dialer.provider_credentials;
    has_cred boolean;
    g_next timestamptz;
    spacing interval;
    b_gap interval;
    c_gap interval := '0';
    g_gap interval := '0';
    gap interval;
    slot timestamptz;
    start timestamptz;
    last_send timestamptz;
    catching_up boolean := false;
    agency_tz text;
    n integer;
    claimed integer;
    recent integer;
    active integer;
BEGIN
    SELECT * INTO b FROM dialer.call_batches WHERE id = p_batch_id AND status = 'processing'
       FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR (b.rate_limited_until IS NOT NULL AND b.rate_limited_until > p_now) THEN
        RETURN;
    END IF;
    SELECT pc.* INTO cred FROM dialer.provider_credentials pc
      JOIN dialer.agent_mappings m ON m.agency_id = pc.agency_id AND m.provider = pc.provider
     WHERE m.id = b.agent_mapping_id
       FOR UPDATE OF pc;
    has_cred := FOUND;
    IF has_cred AND cred.rate_limited_until > p_now THEN
        RETURN;  -- the provider account told us to wait (429 on another batch, perhaps)
    END IF;

    -- 1% under calls_per_minute: calls k and k + calls_per_minute are then 60.6 s apart, so a
    -- request that leaves up to 600 ms late (a busy machine, a worker restart) still never puts
    -- one too many into any 60-second window. (A 20 ms margin was not enough under load.)
    spacing := make_interval(secs => 60.6 / b.calls_per_minute);
    b_gap := spacing;
    slot := b.next_slot_at;
    IF slot IS NULL THEN
        slot := p_now;
    ELSIF slot < p_now - spacing AND slot < p_catch_up_before THEN
        catching_up := true;
        slot := greatest(slot, p_now - interval '60 seconds');
        b_gap := spacing / 4;
    ELSIF slot < p_now THEN
        slot := p_now;
    ELSIF slot > p_now + p_lead THEN
        RETURN;
    END IF;
    start := CASE WHEN catching_up THEN p_now ELSE slot END;
    gap := b_gap;
    IF has_cred AND cred.max_calls_per_second IS NOT NULL THEN
        c_gap := make_interval(secs => 1.0 / cred.max_calls_per_second);
        start := greatest(start, coalesce(cred.next_slot_at, p_now));
        gap := greatest(gap, c_gap);
    END IF;
    IF p_global_cps > 0 THEN
        g_gap := make_interval(secs => 1.0 / p_global_cps);
        INSERT INTO dialer.pacing_state (key) VALUES ('global') ON CONFLICT DO NOTHING;
        SELECT next_slot_at INTO g_next FROM dialer.pacing_state WHERE key = 'global' FOR UPDATE;
        start := greatest(start, coalesce(g_next, p_now));
        gap := greatest(gap, g_gap);
    END IF;
    IF start > p_now + p_lead THEN
        RETURN;
    END IF;
    IF catching_up THEN
        n := 1 + floor(extract(epoch FROM (least(p_now, p_catch_up_before) - slot)) / extract(epoch FROM spacing))::integer;
    ELSE
        n := 1 + floor(extract(epoch FROM (p_now + p_lead - start)) / extract(epoch FROM gap))::integer;
    END IF;
    -- max_concurrent counts calls dialing or in progress, and attempts in doubt that may be live.
    active := b.in_progress_count
              + (SELECT count(*) FROM dialer.calls k WHERE k.batch_id = b.id AND k.status = 'in_doubt'
                                                      AND k.lookup_attempts < 5)::integer;
    n := least(n, b.max_concurrent - active, p_budget);
    IF catching_up THEN
        -- Spaced slots cannot put more than calls_per_minute into 60 s; compressed ones are
        -- counted over 60.6 s: the same 600 ms of margin as the spacing, for a send that trails
        -- its claim. (61 s counted two calls too many at the 1% spacing, so a restart's missed
        -- slots were never quite made up.)
        SELECT count(*) INTO recent FROM dialer.calls k
         WHERE k.batch_id = b.id AND k.created_at > p_now - interval '60.6 seconds' AND k.status <> 'network_error';
        n := least(n, b.calls_per_minute - recent);
    END IF;
    IF n <= 0 THEN
        RETURN;
    END IF;
    -- Compliance, against live tables: do-not-call, calling windows, attempt caps.
    PERFORM dialer._compliance_prepare(b, p_now, greatest(n * 4, 50));
    SELECT timezone INTO agency_tz FROM dialer.agencies WHERE id = b.agency_id;

    RETURN QUERY
    WITH candidates AS (
        SELECT c.id, c.phone_number, c.priority FROM dialer.campaign_contacts c
         WHERE c.batch_id = b.id AND c.status = 'queued'
           AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= p_now)
           -- one live call per number, across every batch (the unique index enforces it); a
           -- scalar subquery, so that it stays one probe of that index per candidate
           AND (SELECT 1 FROM dialer.calls k WHERE k.phone_number = c.phone_number
                                              AND k.status IN ('dialing', 'in_progress', 'in_doubt') LIMIT 1) IS NULL
           -- never a number on the do-not-call list (_compliance_prepare marks those next in line)
           AND NOT dialer._on_dnc(c.phone_number, b.agency_id)
         ORDER BY c.priority, c.id
         LIMIT n * 2
           FOR UPDATE SKIP LOCKED
    ), picked AS (
        -- The call row's id is drawn here so the contact can point at it in the same statement.
        SELECT d.id, nextval('dialer.calls_id_seq'::regclass) AS new_call_id
          FROM (SELECT DISTINCT ON (cd.phone_number) cd.id, cd.priority FROM candidates cd
                 ORDER BY cd.phone_number, cd.priority, cd.id) d
         ORDER BY d.priority, d.id
         LIMIT n
    ), claimed_contacts AS (
        UPDATE dialer.campaign_contacts c
           SET status = 'in_progress', attempts = c.attempts + 1, updated_at = p_now, next_attempt_at = NULL,
               call_id = picked.new_call_id
          FROM picked WHERE c.id = picked.id
        RETURNING c.id, c.phone_number, c.name, c.variables, c.lead_ref, c.source, c.attempts, c.priority,
                  coalesce(c.agent_mapping_id, b.agent_mapping_id) AS mapping_id, c.metadata,
                  coalesce(c.timezone, agency_tz) AS zone, c.call_id AS new_call_id
    ), new_calls AS (
        -- The key names the attempt and is unique even when a rate-limited attempt is repeated.
        INSERT INTO dialer.calls (id, contact_id, batch_id, agency_id, provider, idempotency_key, status, created_at,
                                  phone_number, local_time, timezone)
        OVERRIDING SYSTEM VALUE
        SELECT cc.new_call_id, cc.id, b.id, b.agency_id, m.provider,
               format('pgd-%s-%s-%s', cc.id, cc.attempts, left(md5(gen_random_uuid()::text), 12)), 'dialing', p_now,
               cc.phone_number, p_now AT TIME ZONE cc.zone, cc.zone
          FROM claimed_contacts cc JOIN dialer.agent_mappings m ON m.id = cc.mapping_id
        RETURNING id, calls.contact_id, calls.idempotency_key
    )
    SELECT nc.id, cc.id, cc.phone_number, cc.name, cc.variables, cc.lead_ref, cc.source, cc.attempts,
           nc.idempotency_key,
           extract(epoch FROM start + gap * (row_number() OVER (ORDER BY cc.priority, cc.id) - 1))::float8 * 1000,
           extract(epoch FROM b_gap)::float8 * 1000, cc.mapping_id, cc.metadata,
           CASE WHEN has_cred AND cred.max_calls_per_second IS NOT NULL THEN cred.agency_id || ':' || cred.provider END,
           extract(epoch FROM c_gap)::float8 * 1000, extract(epoch FROM g_gap)::float8 * 1000
      FROM claimed_contacts cc JOIN new_calls nc ON nc.contact_id = cc.id;

    GET DIAGNOSTICS claimed = ROW_COUNT;
    IF claimed > 0 THEN
        last_send := start + gap * (claimed - 1);
        UPDATE dialer.call_batches
           SET next_slot_at = CASE WHEN catching_up THEN slot + spacing * claimed
                                   ELSE greatest(slot + spacing * claimed, last_send + spacing) END,
               queued_count = greatest(queued_count - claimed, 0),
               in_progress_count = in_progress_count + claimed
         WHERE id = b.id;
        IF has_cred AND cred.max_calls_per_second IS NOT NULL THEN
            UPDATE dialer.provider_credentials SET next_slot_at = last_send + c_gap
             WHERE agency_id = cred.agency_id AND provider = cred.provider;
        END IF;
        IF p_global_cps > 0 THEN
            UPDATE dialer.pacing_state SET next_slot_at = last_send + g_gap WHERE key = 'global';
        END IF;
    END IF;
END $$;

-- _complete_batches
CREATE OR REPLACE FUNCTION dialer._complete_batches(p_now timestamptz, p_by_counters boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE dialer.call_batches b SET status = 'completed', completed_at = p_now
     WHERE b.status = 'processing' AND b.kind = 'campaign' AND b.total_contacts > 0
       AND (NOT p_by_counters OR (b.queued_count <= 0 AND b.in_progress_count <= 0))
       -- (scalar subqueries: per-batch index probes, whatever the statistics say; see _due_batches)
       AND (SELECT 1 FROM dialer.campaign_contacts c
             WHERE c.batch_id = b.id AND c.status IN ('pending', 'queued', 'in_progress') LIMIT 1) IS NULL
       -- an attempt in doubt that is still being looked up may yet be dialed again
       AND (SELECT 1 FROM dialer.calls k
             WHERE k.batch_id = b.id AND k.status IN ('in_doubt', 'dialing') AND k.lookup_attempts < 5 LIMIT 1) IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- _compliance_prepare
CREATE OR REPLACE FUNCTION dialer._compliance_prepare(p_batch dialer.call_batches, p_now timestamptz, p_limit integer)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    agency dialer.agencies;
    n integer;
BEGIN
    SELECT * INTO agency FROM dialer.agencies WHERE id = p_batch.agency_id;
    IF EXISTS (SELECT 1 FROM dialer.do_not_call) THEN
        -- The contacts next in line only (the claim itself skips any listed number it meets):
        -- a claim costs the same whatever the size of the batch.
        WITH dnc AS (
            UPDATE dialer.campaign_contacts c
               SET status = 'cancelled', last_error = 'dnc', updated_at = p_now
              FROM (SELECT c2.id FROM dialer.campaign_contacts c2
                     WHERE c2.batch_id = p_batch.id AND c2.status = 'queued'
                       AND (c2.next_attempt_at IS NULL OR c2.next_attempt_at <= p_now)
                     ORDER BY c2.priority, c2.id
                     LIMIT p_limit) o
             WHERE c.id = o.id AND dialer._on_dnc(c.phone_number, p_batch.agency_id)
            RETURNING 1
        )
        SELECT count(*) INTO n FROM dnc;
        IF n > 0 THEN
            UPDATE dialer.call_batches SET queued_count = greatest(queued_count - n, 0) WHERE id = p_batch.id;
        END IF;
    END IF;
    IF p_batch.window_start IS NOT NULL THEN
        UPDATE dialer.campaign_contacts c
           SET next_attempt_at = o.opening, updated_at = p_now
          FROM (SELECT c2.id, dialer._next_opening(p_now, coalesce(c2.timezone, agency.timezone), p_batch.window_start,
                                                  p_batch.window_end, p_batch.window_days, agency.id) AS opening
                  FROM dialer.campaign_contacts c2
                 WHERE c2.batch_id = p_batch.id AND c2.status = 'queued'
                   AND (c2.next_attempt_at IS NULL OR c2.next_attempt_at <= p_now)
                 ORDER BY c2.priority, c2.id
                 LIMIT p_limit) o
         WHERE c.id = o.id AND o.opening IS DISTINCT FROM p_now
           AND (o.opening > p_now OR o.opening IS NULL);
    END IF;
    IF agency.max_attempts_per_number_per_day IS NOT NULL THEN
        UPDATE dialer.campaign_contacts c
           SET next_attempt_at = (date_trunc('day', p_now AT TIME ZONE agency.timezone) + interval '1 day')
                                 AT TIME ZONE agency.timezone,
               updated_at = p_now
          FROM (SELECT c2.id FROM dialer.campaign_contacts c2
                 WHERE c2.batch_id = p_batch.id AND c2.status = 'queued'
                   AND (c2.next_attempt_at IS NULL OR c2.next_attempt_at <= p_now)
                 ORDER BY c2.priority, c2.id
                 LIMIT p_limit) o
         WHERE c.id = o.id
           AND dialer._attempts_today(agency.id, c.phone_number, p_now, agency.timezone)
               >= agency.max_attempts_per_number_per_day;
    END IF;
END $$;

-- _due_batches
CREATE OR REPLACE FUNCTION dialer._due_batches(p_now timestamptz, p_limit integer, p_lead interval DEFAULT '0')
RETURNS TABLE (batch_id bigint, agency_id bigint, agent_mapping_id bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- Batches whose pacing slot has come, from call_batches_next_slot_idx (two ranges: a slot
    -- that has come, or none yet), so that a thousand batches waiting for their slots cost nothing.
    RETURN QUERY
    SELECT b.id, b.agency_id, b.agent_mapping_id
      FROM (SELECT * FROM dialer.call_batches x WHERE x.status = 'processing' AND x.next_slot_at <= p_now + p_lead
            UNION ALL
            SELECT * FROM dialer.call_batches x WHERE x.status = 'processing' AND x.next_slot_at IS NULL) b
     WHERE b.in_progress_count < b.max_concurrent
       AND (b.rate_limited_until IS NULL OR b.rate_limited_until <= p_now)
       AND NOT EXISTS (SELECT 1 FROM dialer.agent_mappings m JOIN dialer.provider_credentials pc
                          ON pc.agency_id = m.agency_id AND pc.provider = m.provider
                        WHERE m.id = b.agent_mapping_id AND pc.rate_limited_until > p_now)
       AND dialer._batch_due_at(b.id, p_now) <= p_now
     ORDER BY b.priority, b.created_at, b.id
     LIMIT p_limit;
END $$;

-- _next_due
CREATE OR REPLACE FUNCTION dialer._next_due(p_now timestamptz, p_poll_every interval, p_rounds_from timestamptz DEFAULT NULL)
RETURNS timestamptz LANGUAGE plpgsql STABLE SET enable_sort = off AS $$
DECLARE
    best timestamptz;
    r record;
    due timestamptz;
BEGIN
    SELECT min(t) INTO best FROM (
        SELECT greatest(q.t, p_rounds_from) AS t FROM (
            (SELECT coalesce(k.last_polled_at, k.created_at) + p_poll_every AS t FROM dialer.calls k
              WHERE k.status = 'in_progress' AND k.provider_call_id IS NOT NULL
              ORDER BY coalesce(k.last_polled_at, k.created_at) LIMIT 1)
            UNION ALL
            SELECT min(coalesce(k.last_polled_at, k.created_at) + interval '1 second' * (1 + k.lookup_attempts * k.lookup_attempts))
              FROM dialer.calls k WHERE k.status = 'in_doubt' AND k.lookup_attempts < 5
        ) q WHERE q.t IS NOT NULL
        UNION ALL
        SELECT coalesce(min(scheduled_for), p_now) FROM dialer.call_batches
         WHERE status IN ('pending', 'scheduled')
        UNION ALL
        SELECT min(next_run_at) FROM dialer.recurring_calls WHERE active
    ) due_at;
    -- A batch is due at the later of its pacing / back-off time and its earliest queued contact.
    -- Batches are read in the order of their pacing slot (call_batches_next_slot_idx), a lower
    -- bound of that time, so the look-ups stop at the first batch that cannot beat what is found.
    FOR r IN SELECT b.id, b.next_slot_at,
                    greatest(coalesce(b.next_slot_at, p_now), coalesce(b.rate_limited_until, p_now),
                             coalesce(pc.next_slot_at, p_now), coalesce(pc.rate_limited_until, p_now)) AS slot_at
               FROM dialer.call_batches b
               LEFT JOIN dialer.agent_mappings m ON m.id = b.agent_mapping_id
               LEFT JOIN dialer.provider_credentials pc ON pc.agency_id = m.agency_id AND pc.provider = m.provider
              WHERE b.status = 'processing' AND b.in_progress_count < b.max_concurrent
              ORDER BY b.next_slot_at NULLS FIRST LOOP
        EXIT WHEN best IS NOT NULL AND (coalesce(r.next_slot_at, p_now) >= best OR best <= p_now);
        CONTINUE WHEN best IS NOT NULL AND r.slot_at >= best;
        due := dialer._batch_due_at(r.id, p_now);
        IF due IS NOT NULL THEN
            best := least(best, greatest(r.slot_at, due));
        END IF;
    END LOOP;
    RETURN best;
END $$;

-- _promote_batches
CREATE OR REPLACE FUNCTION dialer._promote_batches(p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM dialer._promote_recurring(p_now);
    IF NOT EXISTS (SELECT 1 FROM dialer.call_batches
                    WHERE status IN ('pending', 'scheduled') AND (scheduled_for IS NULL OR scheduled_for <= p_now))
       AND NOT EXISTS (SELECT 1 FROM dialer.campaign_contacts WHERE status = 'pending') THEN
        RETURN 0;
    END IF;
    WITH started AS (
        UPDATE dialer.call_batches
           SET status = 'processing', started_at = coalesce(started_at, p_now), next_slot_at = NULL
         WHERE status IN ('pending', 'scheduled') AND (scheduled_for IS NULL OR scheduled_for <= p_now)
        RETURNING id
    )
    UPDATE dialer.campaign_contacts c SET status = 'queued', updated_at = p_now
      FROM started s WHERE c.batch_id = s.id AND c.status = 'pending';
    GET DIAGNOSTICS n = ROW_COUNT;
    -- Contacts committed by add_contacts while the statement above ran were not in its snapshot;
    -- this statement's newer snapshot sees them.
    -- (campaign_contacts_pending_idx holds only pending contacts: this costs nearly nothing.)
    UPDATE dialer.campaign_contacts c SET status = 'queued', updated_at = p_now
     WHERE c.status = 'pending'
       AND c.batch_id IN (SELECT b.id FROM dialer.call_batches b WHERE b.status = 'processing');
    RETURN n;
END $$;

-- _refresh_statistics
CREATE OR REPLACE FUNCTION dialer._refresh_statistics()
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
    cols text;
    n integer := 0;
BEGIN
    -- Never wait behind autovacuum (or anyone else) for the lock: try again next time.
    SET LOCAL lock_timeout = '20ms';
    -- Only the columns the worker's queries filter and join on: the JSON columns are the costly
    -- part of a sample and no plan here depends on them.
    FOR t, cols IN SELECT c.oid::regclass, v.cols
                     FROM (VALUES ('dialer.campaign_contacts'::regclass,
                                   'batch_id, status, next_attempt_at, priority, phone_number, is_job, call_id'),
                                  ('dialer.calls'::regclass,
                                   'contact_id, batch_id, agency_id, status, phone_number, provider_call_id, created_at, last_polled_at, lookup_attempts'),
                                  ('dialer.call_batches'::regclass, NULL)) v(rel, cols)
                     JOIN pg_catalog.pg_class c ON c.oid = v.rel
                    WHERE pg_catalog.pg_stat_get_mod_since_analyze(c.oid) > greatest(500, c.reltuples) LOOP
        BEGIN
            EXECUTE format('ANALYZE %s %s', t, coalesce('(' || cols || ')', ''));
            n := n + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    RETURN n;
END $$;

-- _release_window_deferrals
CREATE OR REPLACE FUNCTION dialer._release_window_deferrals(p_old dialer.call_batches)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_old.window_start IS NULL THEN
        RETURN;
    END IF;
    UPDATE dialer.campaign_contacts c SET next_attempt_at = NULL
      FROM dialer.agencies a
     WHERE a.id = p_old.agency_id AND c.batch_id = p_old.id AND c.status = 'queued' AND c.next_attempt_at > now()
       AND c.next_attempt_at = dialer._next_opening(c.updated_at, coalesce(c.timezone, a.timezone), p_old.window_start,
                                                    p_old.window_end, p_old.window_days, a.id);
END $$;

-- clear_calling_window
CREATE OR REPLACE FUNCTION dialer.clear_calling_window(batch_id bigint)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dialer.call_batches := dialer._batch_for_update(batch_id);
BEGIN
    PERFORM dialer._release_window_deferrals(b);
    UPDATE dialer.call_batches SET window_start = NULL, window_end = NULL, window_days = NULL WHERE id = b.id;
    PERFORM dialer._wake_on_commit();
END $$;

-- queue_stats
CREATE OR REPLACE FUNCTION dialer.queue_stats(batch_id bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    result jsonb;
BEGIN
    IF batch_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM dialer.call_batches WHERE id = batch_id) THEN
        RAISE EXCEPTION 'batch % does not exist', batch_id USING ERRCODE = 'P0002';
    END IF;
    SELECT jsonb_build_object(
               'waiting', count(*) FILTER (WHERE st = 'waiting'),
               'active', count(*) FILTER (WHERE st = 'active'),
               'completed', count(*) FILTER (WHERE st = 'completed'),
               'failed', count(*) FILTER (WHERE st = 'failed'),
               'delayed', count(*) FILTER (WHERE st = 'delayed'),
               'paused', count(*) FILTER (WHERE st = 'paused'),
               'cancelled', count(*) FILTER (WHERE st = 'cancelled'),
               'total', count(*))
      INTO result
      FROM (SELECT dialer._job_state(c.status, c.next_attempt_at, b.status) AS st
              FROM dialer.campaign_contacts c JOIN dialer.call_batches b ON b.id = c.batch_id
             WHERE CASE WHEN queue_stats.batch_id IS NULL THEN b.kind = 'queue'
                        ELSE b.id = queue_stats.batch_id END) s;
    RETURN result;
END $$;

-- set_calling_window
CREATE OR REPLACE FUNCTION dialer.set_calling_window(batch_id bigint, start_time time, end_time time,
    days integer[] DEFAULT '{1,2,3,4,5,6,7}')
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dialer.call_batches := dialer._batch_for_update(batch_id);
BEGIN
    PERFORM dialer._check_window(start_time, end_time, days);
    PERFORM dialer._release_window_deferrals(b);
    UPDATE dialer.call_batches SET window_start = start_time, window_end = end_time, window_days = days WHERE id = b.id;
    PERFORM dialer._wake_on_commit();
END $$;

-- Row-level security reaches through the views and covers webhook events.
ALTER VIEW dialer.batch_progress SET (security_invoker = true);
ALTER VIEW dialer.in_doubt SET (security_invoker = true);
ALTER VIEW dialer.health SET (security_invoker = true);
ALTER TABLE dialer.webhook_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON dialer.webhook_events USING (call_id IN (SELECT k.id FROM dialer.calls k));
-- dialer_admin may run process_batches(), which draws attempt ids from the calls sequence.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA dialer TO dialer_admin;
