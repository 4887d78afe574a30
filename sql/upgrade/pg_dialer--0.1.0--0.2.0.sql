-- pg_dialer 0.1.0 → 0.2.0 (ALTER EXTENSION pg_dialer UPDATE TO '0.2.0').
--
-- The worker's hot queries no longer depend on the planner's statistics: batches are probed
-- one by one through indexes (a freshly loaded campaign used to be scanned whole per batch),
-- status polls read an index, and the worker refreshes the statistics of a table that has
-- outgrown them. Nothing in the data changes; every function kept its result.
\echo Use "ALTER EXTENSION pg_dialer UPDATE TO '0.2.0'" to load this file. \quit

-- Attempts not yet settled (in doubt or dialing), per batch.
DROP INDEX dialer.calls_in_doubt_idx;
CREATE INDEX calls_unsettled_idx ON dialer.calls (batch_id) WHERE status IN ('in_doubt', 'dialing');
-- Status polls: the calls heard from longest ago first.
CREATE INDEX calls_poll_idx ON dialer.calls ((coalesce(last_polled_at, created_at)))
    WHERE status = 'in_progress' AND provider_call_id IS NOT NULL;
-- Contacts of batches not started yet.
CREATE INDEX campaign_contacts_pending_idx ON dialer.campaign_contacts (batch_id) WHERE status = 'pending';

-- _next_due takes the time of the next poll round as a third argument.
DROP FUNCTION dialer._next_due(timestamptz, interval);

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

-- _complete_batches
CREATE OR REPLACE FUNCTION dialer._complete_batches(p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE dialer.call_batches b SET status = 'completed', completed_at = p_now
     WHERE b.status = 'processing' AND b.kind = 'campaign' AND b.total_contacts > 0
       -- (scalar subqueries: per-batch index probes, whatever the statistics say; see _due_batches)
       AND (SELECT 1 FROM dialer.campaign_contacts c
             WHERE c.batch_id = b.id AND c.status IN ('pending', 'queued', 'in_progress') LIMIT 1) IS NULL
       -- an attempt in doubt that is still being looked up may yet be dialed again
       AND (SELECT 1 FROM dialer.calls k
             WHERE k.batch_id = b.id AND k.status IN ('in_doubt', 'dialing') AND k.lookup_attempts < 5 LIMIT 1) IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- _due_batches
CREATE OR REPLACE FUNCTION dialer._due_batches(p_now timestamptz, p_limit integer, p_lead interval DEFAULT '0')
RETURNS TABLE (batch_id bigint, agency_id bigint, agent_mapping_id bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT b.id, b.agency_id, b.agent_mapping_id
      FROM dialer.call_batches b
     WHERE b.status = 'processing'
       AND b.in_progress_count < b.max_concurrent
       AND (b.next_slot_at IS NULL OR b.next_slot_at <= p_now + p_lead)
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
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
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
    -- Batches in order of the first, so that the contact look-ups stop as soon as no batch can
    -- beat what is found; those with contacts counted as queued first.
    FOR r IN SELECT b.id, greatest(coalesce(b.next_slot_at, p_now), coalesce(b.rate_limited_until, p_now),
                                   coalesce(pc.next_slot_at, p_now), coalesce(pc.rate_limited_until, p_now)) AS slot_at
               FROM dialer.call_batches b
               LEFT JOIN dialer.agent_mappings m ON m.id = b.agent_mapping_id
               LEFT JOIN dialer.provider_credentials pc ON pc.agency_id = m.agency_id AND pc.provider = m.provider
              WHERE b.status = 'processing' AND b.in_progress_count < b.max_concurrent
              ORDER BY 2, b.queued_count > 0 DESC LOOP
        EXIT WHEN best IS NOT NULL AND (r.slot_at >= best OR best <= p_now);
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
    n integer := 0;
BEGIN
    -- Never wait behind autovacuum (or anyone else) for the lock: try again next time.
    SET LOCAL lock_timeout = '20ms';
    FOR t IN SELECT c.oid::regclass FROM pg_catalog.pg_class c
              WHERE c.oid IN ('dialer.campaign_contacts'::regclass, 'dialer.calls'::regclass, 'dialer.call_batches'::regclass)
                AND pg_catalog.pg_stat_get_mod_since_analyze(c.oid) > greatest(500, c.reltuples) LOOP
        BEGIN
            EXECUTE format('ANALYZE %s', t);
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
