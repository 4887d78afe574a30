-- The tick's database steps. Each is called by the worker (or process_batches) in its own short
-- transaction; no transaction stays open while a provider request is on the wire.

-- Step 1: due pending/scheduled batches start processing; their pending contacts are queued.
CREATE FUNCTION dialer._promote_batches(p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF EXISTS (SELECT 1 FROM dialer.queue_arrivals) THEN
        PERFORM dialer._count_arrivals(p_skip_locked => true);
    END IF;
    PERFORM dialer._promote_recurring(p_now);
    PERFORM dialer._expire_contacts(p_now);
    IF NOT EXISTS (SELECT 1 FROM dialer.call_batches
                    WHERE status IN ('pending', 'scheduled') AND (scheduled_for IS NULL OR scheduled_for <= p_now))
       -- (a probe in the pending index's order: an EXISTS read the whole table while its
       -- statistics still counted the contacts promoted since as pending)
       AND (SELECT c.batch_id FROM dialer.campaign_contacts c WHERE c.status = 'pending'
             ORDER BY c.batch_id LIMIT 1) IS NULL THEN
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

-- Jobs scheduled since the last count (dialer.queue_arrivals) go into their queue's counters; one
-- queue (p_batch_id) or all. Rows of transactions still open are not seen, nor are their jobs.
-- Only batches the caller can see are counted (the API runs under the tenant's row security).
CREATE FUNCTION dialer._count_arrivals(p_batch_id bigint DEFAULT NULL, p_skip_locked boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    locked bigint[];
    n integer;
BEGIN
    -- Arrivals are deleted only under their batch's row lock, taken first and in id order: a
    -- counter that deleted arrivals before locking the batch could hold rows another counter
    -- (holding the batch) must delete, and each would wait for the other. The worker skips the
    -- batches an open transaction holds (their arrivals wait for the next count).
    IF p_skip_locked THEN
        SELECT array_agg(v.id) INTO locked FROM (
            SELECT b.id FROM dialer.call_batches b
             WHERE b.id IN (SELECT a.batch_id FROM dialer.queue_arrivals a WHERE p_batch_id IS NULL OR a.batch_id = p_batch_id)
             ORDER BY b.id FOR NO KEY UPDATE SKIP LOCKED) v;
    ELSE
        SELECT array_agg(v.id) INTO locked FROM (
            SELECT b.id FROM dialer.call_batches b
             WHERE b.id IN (SELECT a.batch_id FROM dialer.queue_arrivals a WHERE p_batch_id IS NULL OR a.batch_id = p_batch_id)
             ORDER BY b.id FOR NO KEY UPDATE) v;
    END IF;
    IF locked IS NULL THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM dialer.queue_arrivals a WHERE a.batch_id = ANY (locked)
        RETURNING a.batch_id
    ), per_batch AS (
        SELECT g.batch_id, count(*)::integer AS n FROM gone g GROUP BY g.batch_id
    ), counted AS (
        UPDATE dialer.call_batches b SET total_contacts = b.total_contacts + x.n, queued_count = b.queued_count + x.n
          FROM per_batch x WHERE b.id = x.batch_id
        RETURNING x.n
    )
    SELECT coalesce(sum(counted.n), 0) INTO n FROM counted;
    RETURN n;
END $$;

-- Contacts whose batch or job deadline has passed before they were dialed end 'expired' (final,
-- counted, announced). A batch not started by its deadline completes with them.
CREATE FUNCTION dialer._expire_contacts(p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
    expired_in bigint[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM dialer.call_batches
                    WHERE expires_at <= p_now AND status IN ('pending', 'scheduled', 'processing', 'paused'))
       AND NOT EXISTS (SELECT 1 FROM dialer.campaign_contacts
                        WHERE expires_at <= p_now AND expires_at IS NOT NULL AND status IN ('pending', 'queued')) THEN
        RETURN 0;
    END IF;
    FOR r IN
        WITH gone AS (
            UPDATE dialer.campaign_contacts c
               SET status = 'expired', next_attempt_at = NULL, updated_at = p_now,
                   last_error = 'expired before it was dialed'
             WHERE c.status IN ('pending', 'queued')
               AND ((c.expires_at IS NOT NULL AND c.expires_at <= p_now)
                    OR c.batch_id IN (SELECT b.id FROM dialer.call_batches b
                                       WHERE b.expires_at <= p_now AND b.status IN ('pending', 'scheduled', 'processing', 'paused')))
            RETURNING c.id, c.batch_id, c.is_job
        )
        SELECT g.id, g.batch_id, g.is_job, b.agency_id FROM gone g JOIN dialer.call_batches b ON b.id = g.batch_id
    LOOP
        PERFORM dialer._notify('expired', jsonb_build_object('contact_id', r.id, 'batch_id', r.batch_id,
            'agency_id', r.agency_id, 'job_id', CASE WHEN r.is_job THEN r.id END));
        n := n + 1;
        expired_in := expired_in || r.batch_id;
    END LOOP;
    UPDATE dialer.call_batches b
       SET expired_count = b.expired_count + x.n, queued_count = greatest(b.queued_count - x.n, 0)
      FROM (SELECT e.batch_id, count(*)::integer AS n FROM unnest(expired_in) AS e(batch_id) GROUP BY e.batch_id) x
     WHERE b.id = x.batch_id;
    -- A campaign that never started has nothing left to do; one whose last contacts expired is done.
    UPDATE dialer.call_batches b SET status = 'completed', completed_at = p_now
     WHERE b.expires_at <= p_now AND b.status IN ('pending', 'scheduled') AND b.kind = 'campaign';
    IF n > 0 THEN
        PERFORM dialer._complete_batches(p_now, true);
    END IF;
    RETURN n;
END $$;

-- When a batch's earliest queued contact is due: p_now if one is due already, the earliest retry
-- time otherwise, NULL when none is queued. Two probes of campaign_contacts_due_idx; plpgsql so
-- that each is planned on its own as a parameterised index scan. The first is ordered as the
-- index is: as an EXISTS, statistics that still counted the contacts already dialed as queued
-- made it a sequential scan from the table's start, past every one of them (0.25 ms, not 0.03).
-- dialer._due_batches asks the same question with the same two probes written out in its own
-- statement (a call a batch cost more than the probes): a change to one is a change to both.
CREATE FUNCTION dialer._batch_due_at(p_batch_id bigint, p_now timestamptz)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
DECLARE
    due timestamptz;
BEGIN
    PERFORM FROM dialer.campaign_contacts c
      WHERE c.batch_id = p_batch_id AND c.status = 'queued' AND c.next_attempt_at IS NULL
      ORDER BY c.batch_id, c.next_attempt_at LIMIT 1;
    IF FOUND THEN
        RETURN p_now;
    END IF;
    SELECT c.next_attempt_at INTO due FROM dialer.campaign_contacts c
     WHERE c.batch_id = p_batch_id AND c.status = 'queued' AND c.next_attempt_at IS NOT NULL
     ORDER BY c.next_attempt_at LIMIT 1;
    RETURN due;
END $$;

-- Batches with work due now: queued contacts due, a free concurrency slot, a due pacing slot,
-- and no provider back-off in force. Agencies take turns: every agency's first batch comes before
-- any agency's second, so that one agency's many batches cannot fill the tick (p_limit) and starve
-- another's; within a turn, the seed's order: oldest first (priority before that).
-- The contact tests are scalar subqueries on purpose: they stay per-batch index probes whatever
-- the planner believes about campaign_contacts (right after a bulk load its statistics say the
-- table is empty, and an EXISTS pulled up into a join then scanned the whole index per batch).
-- (plpgsql rather than sql: its plan is cached, where a sql function's body is planned on every call.)
CREATE FUNCTION dialer._due_batches(p_now timestamptz, p_limit integer, p_lead interval DEFAULT '0')
RETURNS TABLE (batch_id bigint, agency_id bigint, agent_mapping_id bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- Batches whose pacing slot has come, from call_batches_next_slot_idx (two ranges: a slot
    -- that has come, or none yet), so that a thousand batches waiting for their slots cost nothing.
    RETURN QUERY
    SELECT d.id, d.agency_id, d.agent_mapping_id
      FROM (SELECT b.id, b.agency_id, b.agent_mapping_id, b.priority, b.created_at,
                   row_number() OVER (PARTITION BY b.agency_id ORDER BY b.priority, b.created_at, b.id) AS turn
              FROM (SELECT * FROM dialer.call_batches x WHERE x.status = 'processing' AND x.next_slot_at <= p_now + p_lead
                    UNION ALL
                    SELECT * FROM dialer.call_batches x WHERE x.status = 'processing' AND x.next_slot_at IS NULL) b
             WHERE b.in_progress_count < b.max_concurrent
               AND (b.rate_limited_until IS NULL OR b.rate_limited_until <= p_now)
               AND NOT EXISTS (SELECT 1 FROM dialer.agent_mappings m JOIN dialer.provider_credentials pc
                                  ON pc.agency_id = m.agency_id AND pc.provider = m.provider
                                WHERE m.id = b.agent_mapping_id AND pc.rate_limited_until > p_now)
               -- (dialer._batch_due_at(b.id, p_now) <= p_now, written out: a function call per batch
               -- cost more than its two probes)
               AND ((SELECT 1 FROM dialer.campaign_contacts c
                      WHERE c.batch_id = b.id AND c.status = 'queued' AND c.next_attempt_at IS NULL
                      ORDER BY c.batch_id, c.next_attempt_at LIMIT 1) IS NOT NULL
                    OR (SELECT 1 FROM dialer.campaign_contacts c
                         WHERE c.batch_id = b.id AND c.status = 'queued' AND c.next_attempt_at <= p_now
                         ORDER BY c.batch_id, c.next_attempt_at LIMIT 1) IS NOT NULL)) d
     ORDER BY d.turn, d.priority, d.created_at, d.id
     LIMIT p_limit;
END $$;

-- Step 2, the claim, is one statement the worker prepares: sql/claim.sql.

CREATE TYPE dialer.dispatch_outcome AS ENUM ('rate_limited', 'failed', 'network_error', 'timeout');

-- Step 4: record dispatch results other than accepted calls (those go to _record_accepted), each
-- with its own retry, back-off or hand-off. One element per call in parallel arrays (request and
-- response as JSON text); the outcome is an enum, so a kind this SQL does not know fails here.
-- Returns how many failed for good, were rate-limited, are retried and are held in doubt.
CREATE FUNCTION dialer._record_dispatch(p_call_ids bigint[], p_outcomes dialer.dispatch_outcome[], p_http_status integer[],
    p_errors text[], p_latency_ms double precision[], p_dispatched_at_ms double precision[],
    p_retry_after_secs double precision[], p_requests text[], p_responses text[],
    OUT n_failed integer, OUT n_rate_limited integer, OUT n_retried integer, OUT n_in_doubt integer)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    k dialer.calls;
    b dialer.call_batches;
    c dialer.campaign_contacts;
    outcome dialer.dispatch_outcome;
    backoff interval;
    now_ts timestamptz := clock_timestamp();
BEGIN
    n_failed := 0; n_rate_limited := 0; n_retried := 0; n_in_doubt := 0;
    FOR r IN SELECT * FROM unnest(p_call_ids, p_outcomes, p_http_status, p_errors, p_latency_ms, p_dispatched_at_ms,
                                  p_retry_after_secs, p_requests, p_responses)
                       AS a(call_id, outcome, http_status, error, latency_ms, dispatched_at_ms, retry_after_secs, request, response) LOOP
        SELECT * INTO k FROM dialer.calls WHERE id = r.call_id AND status = 'dialing' FOR UPDATE;
        CONTINUE WHEN NOT FOUND;  -- already settled (e.g. adopted by a reconcile)
        SELECT * INTO c FROM dialer.campaign_contacts WHERE id = k.contact_id FOR UPDATE;
        SELECT * INTO b FROM dialer.call_batches WHERE id = k.batch_id;
        outcome := r.outcome;

        UPDATE dialer.calls
           SET status = CASE outcome WHEN 'rate_limited' THEN 'rate_limited'
                                     WHEN 'network_error' THEN 'network_error' WHEN 'timeout' THEN 'in_doubt'
                                     ELSE 'failed' END,
               http_status = r.http_status,
               latency_ms = r.latency_ms,
               error = r.error,
               request = r.request::jsonb,
               response = r.response::jsonb,
               dispatched_at = to_timestamp(r.dispatched_at_ms / 1000.0)
         WHERE id = k.id;

        IF outcome = 'rate_limited' THEN
            -- Not an attempt: back to the queue, the whole batch waits for Retry-After.
            n_rate_limited := n_rate_limited + 1;
            backoff := make_interval(secs => greatest(coalesce(r.retry_after_secs, 60), 0));
            UPDATE dialer.campaign_contacts
               SET status = 'queued', attempts = greatest(attempts - 1, 0), next_attempt_at = now_ts + backoff,
                   updated_at = now_ts, last_error = 'rate limited by provider'
             WHERE id = c.id;
            UPDATE dialer.call_batches
               SET rate_limited_until = greatest(coalesce(rate_limited_until, now_ts), now_ts + backoff),
                   queued_count = queued_count + 1
             WHERE id = b.id;
            -- The limit is the provider account's: every batch sharing the credential waits.
            UPDATE dialer.provider_credentials
               SET rate_limited_until = greatest(coalesce(rate_limited_until, now_ts), now_ts + backoff)
             WHERE agency_id = k.agency_id AND provider = k.provider;
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        ELSIF outcome = 'network_error' THEN
            -- The request never reached the provider: retried, and not counted as an attempt.
            n_retried := n_retried + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'queued', attempts = greatest(attempts - 1, 0),
                   next_attempt_at = now_ts + greatest(b.retry_delay, interval '1 second'),
                   updated_at = now_ts, last_error = r.error
             WHERE id = c.id;
            UPDATE dialer.call_batches SET queued_count = queued_count + 1 WHERE id = b.id;
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        ELSIF outcome = 'timeout' THEN
            -- The request may have reached the provider: never redialed blindly.
            n_in_doubt := n_in_doubt + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'in_doubt', updated_at = now_ts, last_error = r.error
             WHERE id = c.id;
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        ELSIF c.attempts < b.max_attempts THEN
            n_retried := n_retried + 1;
            -- at least a second: a batch that fails every post cannot make the worker spin
            backoff := greatest(b.retry_delay * power(b.retry_backoff, greatest(c.attempts - 1, 0))::double precision,
                                interval '1 second');
            UPDATE dialer.campaign_contacts
               SET status = 'queued', next_attempt_at = now_ts + backoff, updated_at = now_ts,
                   last_error = r.error
             WHERE id = c.id;
            UPDATE dialer.call_batches SET queued_count = queued_count + 1 WHERE id = b.id;
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        ELSE
            n_failed := n_failed + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'failed', updated_at = now_ts, last_error = r.error, outcome = 'ai_failed'
             WHERE id = c.id;
            UPDATE dialer.call_batches SET last_error = r.error WHERE id = b.id;
            PERFORM dialer._move_batch_counters(b.id, p_failed => 1, p_in_progress => -1);
            PERFORM dialer._notify('max_retries_exceeded', jsonb_build_object('contact_id', c.id, 'batch_id', b.id,
                'agency_id', b.agency_id, 'attempts', c.attempts));
            -- The seed's fallback: the humans take over, first in line.
            PERFORM dialer._hand_off(c.id, r.error, true);
        END IF;
        IF outcome = 'failed' AND current_setting('dialer.notify_failures', true) = 'on' THEN
            PERFORM dialer._notify('call_failed', jsonb_build_object('contact_id', c.id, 'batch_id', b.id,
                'agency_id', b.agency_id, 'attempt', c.attempts, 'http_status', r.http_status));
        END IF;
    END LOOP;
END $$;

-- Step 4, the common case: calls the provider accepted, as arrays (one element per call; request
-- and response as JSON text). The call row goes in_progress in one statement; attached leads learn
-- that they are Processing in this transaction. Returns the calls recorded (those still dialing).
-- One call (the usual case at a paced rate) has a statement of its own: its plan, on the primary
-- key, is kept for the session, where the statement over the arrays is planned again on every
-- call (a plan kept for it could not know how many elements the arrays hold).
CREATE FUNCTION dialer._record_accepted(p_call_ids bigint[], p_provider_call_ids text[], p_http_status integer[],
    p_latency_ms double precision[], p_dispatched_at_ms double precision[], p_requests text[], p_responses text[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF cardinality(p_call_ids) = 1 THEN
        UPDATE dialer.calls
           SET status = 'in_progress', provider_call_id = p_provider_call_ids[1], http_status = p_http_status[1],
               latency_ms = p_latency_ms[1], request = p_requests[1]::jsonb, response = p_responses[1]::jsonb,
               dispatched_at = to_timestamp(p_dispatched_at_ms[1] / 1000.0)
         WHERE id = p_call_ids[1] AND status = 'dialing';
    ELSE
        UPDATE dialer.calls acc
           SET status = 'in_progress', provider_call_id = a.provider_call_id, http_status = a.http_status,
               latency_ms = a.latency_ms, request = a.request::jsonb, response = a.response::jsonb,
               dispatched_at = to_timestamp(a.dispatched_at_ms / 1000.0)
          FROM unnest(p_call_ids, p_provider_call_ids, p_http_status, p_latency_ms, p_dispatched_at_ms, p_requests, p_responses)
               AS a(call_id, provider_call_id, http_status, latency_ms, dispatched_at_ms, request, response)
         WHERE acc.id = a.call_id AND acc.status = 'dialing';
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 AND EXISTS (SELECT 1 FROM dialer.lead_attachments) THEN
        PERFORM dialer._lead_calls_accepted(p_call_ids);
    END IF;
    RETURN n;
END $$;

-- Step 5: calls the provider accepted whose next status poll is due, the longest due first: a
-- status_poll_interval after they were accepted, then after each poll that found them live a
-- status_poll_interval plus a quarter of their age (dialer._poll_backoff). Read, not written: a
-- call is marked polled when its answer is recorded (_record_status), so a poll that finds the
-- call ended (most of them) costs no write of its own.
-- p_in_flight: the caller's polls sent and not recorded yet, not asked for twice.
-- (plpgsql, as _calls_to_look_up and _log_run: a sql function that cannot be inlined is planned
-- again on every call, several times a second here.)
CREATE FUNCTION dialer._calls_to_poll(p_now timestamptz, p_every interval, p_limit integer, p_in_flight bigint[])
RETURNS TABLE (call_id bigint, agency_id bigint, provider text, provider_call_id text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT k.id, k.agency_id, k.provider, k.provider_call_id FROM dialer.calls k
     WHERE k.status = 'in_progress' AND k.provider_call_id IS NOT NULL
       AND coalesce(k.poll_interval_from, k.created_at) <= p_now - p_every
       AND k.id <> ALL (p_in_flight)
     ORDER BY coalesce(k.poll_interval_from, k.created_at)
     LIMIT p_limit;
END $$;

-- How much longer than status_poll_interval a live call waits for its next poll: a quarter of its
-- age, at most a minute. A call of a few seconds is asked every interval; one of minutes less and
-- less often (every 5 s at first, every 35 s at two minutes, at the default), so calls in
-- progress cost the provider and the worker a few polls each, not one every interval, and an end
-- is heard at most a quarter of the call's age (plus the interval) late. A call the provider's
-- webhooks reach (p_heard: an event of it came in) will have its end delivered the same way, so
-- its polls are only the safety net for a lost webhook: a minute apart from the start.
CREATE FUNCTION dialer._poll_backoff(p_age interval, p_heard boolean)
RETURNS interval LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_heard THEN interval '1 minute' ELSE least(greatest(p_age, interval '0') / 4, interval '1 minute') END
$$;

-- Records provider status look-ups, one element per call in parallel arrays. An ended call
-- completes its contact (whatever the outcome; the outcome is kept on the call). A call not ended
-- (p_ended false: still live, or a poll that got no usable answer) is marked polled now, with its
-- answer time if the provider gave one: its next poll is an interval and its back-off away.
-- The common end (no retry, no voicemail policy, no hand-off: what a poll round mostly brings) is
-- recorded for all its calls in one statement, as _end_call would record each; the others go
-- through _end_call one by one.
CREATE FUNCTION dialer._record_status(p_call_ids bigint[], p_ended boolean[], p_end_reasons text[],
    p_answered_at timestamptz[], p_ended_at timestamptz[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    ended_ids bigint[];
    batch_ids bigint[];
    n integer;
BEGIN
    -- Every call named is locked first, in id order: two of these (the worker's poll round and a
    -- process_batches() one) cannot deadlock, whichever of their answers say ended.
    PERFORM 1 FROM dialer.calls WHERE id = ANY (p_call_ids) ORDER BY id FOR UPDATE;
    UPDATE dialer.calls k
       SET last_polled_at = clock_timestamp(), answered_at = coalesce(k.answered_at, s.answered_at),
           poll_interval_from = clock_timestamp() + dialer._poll_backoff(clock_timestamp() - k.created_at,
               EXISTS (SELECT 1 FROM dialer.webhook_events e WHERE e.call_id = k.id))
      FROM unnest(p_call_ids, p_ended, p_answered_at) AS s(call_id, ended, answered_at)
     WHERE k.id = s.call_id AND NOT s.ended AND k.status = 'in_progress';

    WITH plain AS (
        SELECT k.id, k.contact_id, s.end_reason, s.answered_at, s.ended_at,
               dialer._outcome_of_end_reason(s.end_reason) AS outcome
          FROM (SELECT DISTINCT ON (s.call_id) s.*   -- a call named twice: its first end counts
                  FROM unnest(p_call_ids, p_ended, p_end_reasons, p_answered_at, p_ended_at) WITH ORDINALITY
                       AS s(call_id, ended, end_reason, answered_at, ended_at, i)
                 ORDER BY s.call_id, s.i) s
          JOIN dialer.calls k ON k.id = s.call_id
          JOIN dialer.call_batches b ON b.id = k.batch_id
         WHERE s.ended AND k.status = 'in_progress'
           AND (b.retry_delays ->> dialer._retry_outcome(s.end_reason)) IS NULL
           AND dialer._retry_outcome(s.end_reason) IS DISTINCT FROM 'voicemail'
           AND dialer._outcome_of_end_reason(s.end_reason) IS DISTINCT FROM 'ai_failed'
           AND dialer._outcome_of_end_reason(s.end_reason) IS DISTINCT FROM 'not_interested'
    ), ended AS (
        UPDATE dialer.calls k
           SET status = 'ended', end_reason = p.end_reason, answered_at = coalesce(k.answered_at, p.answered_at),
               ended_at = coalesce(p.ended_at, clock_timestamp())
          FROM plain p
         WHERE k.id = p.id
        RETURNING k.id
    ), completed AS (
        UPDATE dialer.campaign_contacts c
           SET status = 'completed', updated_at = clock_timestamp(), outcome = coalesce(p.outcome, c.outcome)
          FROM plain p
         WHERE c.id = p.contact_id AND c.status IN ('in_progress', 'in_doubt') AND c.call_id = p.id
        RETURNING c.batch_id
    ), counted AS (
        UPDATE dialer.call_batches b
           SET in_progress_count = greatest(b.in_progress_count - x.n, 0), completed_count = b.completed_count + x.n
          FROM (SELECT batch_id, count(*)::integer AS n FROM completed GROUP BY batch_id) x
         WHERE b.id = x.batch_id
        RETURNING b.id
    )
    SELECT (SELECT array_agg(id) FROM ended), (SELECT array_agg(id) FROM counted) INTO ended_ids, batch_ids;
    n := coalesce(cardinality(ended_ids), 0);
    IF n > 0 THEN
        -- A campaign whose last call this was is complete now; a slot is free for the worker.
        IF EXISTS (SELECT 1 FROM dialer.call_batches x
                    WHERE x.id = ANY (batch_ids) AND x.kind = 'campaign' AND x.status = 'processing'
                      AND x.queued_count <= 0 AND x.in_progress_count <= 0) THEN
            PERFORM dialer._complete_batches(clock_timestamp(), true);
        END IF;
        PERFORM dialer._wake_on_commit();
    END IF;

    FOR r IN SELECT * FROM unnest(p_call_ids, p_ended, p_end_reasons, p_answered_at, p_ended_at)
                       AS s(call_id, ended, end_reason, answered_at, ended_at)
              WHERE s.ended AND s.call_id <> ALL (coalesce(ended_ids, '{}')) LOOP
        PERFORM 1 FROM dialer.calls WHERE id = r.call_id AND status = 'in_progress' FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        -- _end_call writes answered_at with the end, in the same update
        IF dialer._end_call(r.call_id, r.end_reason, r.answered_at, r.ended_at) THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END $$;

-- Step 7: a batch is complete when nothing is left to dial and nothing is in progress. A batch
-- that has no contacts yet is waiting for them, not done.
-- With p_by_counters, only batches whose counters say nothing is queued or in progress are looked
-- at (a tick's quick pass, which then costs nothing per busy batch); the worker's poll rounds look
-- at every batch, so a counter that was ever wrong cannot keep a batch open.
CREATE FUNCTION dialer._complete_batches(p_now timestamptz, p_by_counters boolean DEFAULT false)
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

-- The next time a batch may dial (NULL: none): the later of its pacing slot (or its account's, or a
-- back-off) and its earliest queued contact. The worker claims pacing slots up to a second before
-- this (src/pacing.rs); other due times (_next_due) it waits for. Batches are read in the order of
-- their pacing slot (call_batches_next_slot_idx), a lower bound of that time, so the look-ups stop
-- at the first batch that cannot beat what is found.
-- (enable_sort off: the batches must come in index order, read only as far as needed; a sort
-- would read them all.)
CREATE FUNCTION dialer._next_slot(p_now timestamptz)
RETURNS timestamptz LANGUAGE plpgsql STABLE SET enable_sort = off AS $$
DECLARE
    best timestamptz;
    r record;
    due timestamptz;
BEGIN
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

-- When the worker should look again for anything but a pacing slot (dialer._next_slot): the
-- earliest retry, back-off, scheduled start, deadline, status poll or look-up. Polls and look-ups
-- are done in rounds: they count from p_rounds_from (the next round) at the earliest.
-- One generic plan, kept: each branch has one index to probe whatever the values, and Postgres
-- otherwise planned it afresh at every call (1.2 ms against 0.14 with a thousand batches).
CREATE FUNCTION dialer._next_due(p_now timestamptz, p_poll_every interval, p_rounds_from timestamptz DEFAULT NULL)
RETURNS timestamptz LANGUAGE plpgsql STABLE SET enable_sort = off SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    best timestamptz;
BEGIN
    SELECT min(t) INTO best FROM (
        SELECT greatest(q.t, p_rounds_from) AS t FROM (
            (SELECT coalesce(k.poll_interval_from, k.created_at) + p_poll_every AS t FROM dialer.calls k
              WHERE k.status = 'in_progress' AND k.provider_call_id IS NOT NULL
              ORDER BY coalesce(k.poll_interval_from, k.created_at) LIMIT 1)
            UNION ALL
            SELECT min(coalesce(k.last_polled_at, k.created_at) + interval '1 second' * (1 + k.lookup_attempts * k.lookup_attempts))
              FROM dialer.calls k WHERE k.status = 'in_doubt' AND k.lookup_attempts < 5
        ) q WHERE q.t IS NOT NULL
        UNION ALL
        -- a pending batch is due now, a scheduled one at its time; none: nothing to wake for
        SELECT min(coalesce(scheduled_for, p_now)) FROM dialer.call_batches
         WHERE status IN ('pending', 'scheduled')
        UNION ALL
        -- deadlines: the expiry pass runs when one passes (call_batches_expiry_idx, campaign_contacts_expiry_idx)
        SELECT min(expires_at) FROM dialer.call_batches
         WHERE expires_at > p_now AND status IN ('pending', 'scheduled', 'processing', 'paused')
        UNION ALL
        SELECT min(expires_at) FROM dialer.campaign_contacts
         WHERE expires_at IS NOT NULL AND status IN ('pending', 'queued')
        UNION ALL
        SELECT min(next_run_at) FROM dialer.recurring_calls WHERE active
    ) due_at;
    RETURN best;
END $$;

-- Calls the worker claimed for a pacing slot still to come wait in the worker, unsent (src/held.rs).
-- When a batch stops dialing or a number is listed as do-not-call meanwhile, those that may no
-- longer go are withdrawn here (p_all: every one, at shutdown): no request was sent, so the
-- attempt row goes and the contact is back as it was (queued; cancelled for a cancelled batch or a
-- listed number). At shutdown (p_all) each batch gets back the pacing slots of its withdrawn calls
-- (p_slots_ms: their send times), which were never used. Returns the calls withdrawn.
CREATE FUNCTION dialer._withdraw_held(p_call_ids bigint[], p_slots_ms double precision[], p_all boolean DEFAULT false)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE
    k record;
    why text;
    given_back bigint[] := '{}';
    given_back_ms double precision[] := '{}';
    now_ts timestamptz := clock_timestamp();
BEGIN
    FOR k IN SELECT c.id, c.contact_id, c.batch_id, c.phone_number, b.status AS batch_status, b.agency_id
               FROM dialer.calls c JOIN dialer.call_batches b ON b.id = c.batch_id
              WHERE c.id = ANY (p_call_ids) AND c.status = 'dialing'
              ORDER BY c.id FOR UPDATE OF c LOOP
        why := CASE WHEN k.batch_status = 'cancelled' THEN 'batch cancelled'
                    WHEN dialer._on_dnc(k.phone_number, k.agency_id) THEN 'dnc' END;
        CONTINUE WHEN why IS NULL AND k.batch_status = 'processing' AND NOT p_all;
        UPDATE dialer.campaign_contacts c
           SET status = CASE WHEN why IS NULL THEN 'queued' ELSE 'cancelled' END,
               attempts = greatest(c.attempts - 1, 0), updated_at = now_ts, last_error = coalesce(why, c.last_error),
               call_id = (SELECT max(e.id) FROM dialer.calls e WHERE e.contact_id = c.id AND e.id <> k.id)
         WHERE c.id = k.contact_id AND c.call_id = k.id;
        DELETE FROM dialer.calls WHERE id = k.id;
        IF why IS NULL THEN
            UPDATE dialer.call_batches SET queued_count = queued_count + 1 WHERE id = k.batch_id;
        END IF;
        PERFORM dialer._move_batch_counters(k.batch_id, p_in_progress => -1);
        given_back := given_back || k.batch_id;
        given_back_ms := given_back_ms || p_slots_ms[array_position(p_call_ids, k.id)];
        RETURN NEXT k.id;
    END LOOP;
    IF p_all THEN
        UPDATE dialer.call_batches b SET next_slot_at = least(b.next_slot_at, w.first_slot)
          FROM (SELECT g.batch_id, to_timestamp(min(g.slot_ms) / 1000.0) AS first_slot
                  FROM unnest(given_back, given_back_ms) AS g(batch_id, slot_ms) GROUP BY g.batch_id) w
         WHERE b.id = w.batch_id;
    END IF;
END $$;

-- At worker start: attempts left in 'dialing' by a dead backend may have reached the provider.
-- They are held in_doubt (never redialed blindly) until settled.
CREATE FUNCTION dialer._settle_stale_dialing(p_older_than timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    k dialer.calls;
    n integer := 0;
BEGIN
    FOR k IN SELECT * FROM dialer.calls WHERE status = 'dialing' AND created_at < p_older_than
              FOR UPDATE SKIP LOCKED LOOP
        UPDATE dialer.calls SET status = 'in_doubt', error = 'worker stopped while dialing; outcome unknown'
         WHERE id = k.id;
        UPDATE dialer.campaign_contacts SET status = 'in_doubt', updated_at = clock_timestamp(),
               last_error = 'worker stopped while dialing; outcome unknown'
         WHERE id = k.contact_id AND status = 'in_progress';
        IF FOUND THEN
            PERFORM dialer._move_batch_counters(k.batch_id, p_in_progress => -1);
        END IF;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION dialer._log_run(p_started timestamptz, p_mode text, p_batches integer, p_initiated integer,
    p_failed integer, p_rate_limited integer, p_status text, p_error text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dialer.runs (started_at, duration_ms, mode, batches, initiated, failed, rate_limited, status, error)
    VALUES (p_started, extract(epoch FROM clock_timestamp() - p_started) * 1000, p_mode, p_batches, p_initiated,
            p_failed, p_rate_limited, p_status, p_error);
END $$;

-- This database went back in time (restored from a backup, or from before a point in time; see
-- src/restores.rs): claims committed after its restore point are gone, and the people they called
-- are 'queued' here again. Before anyone is dialed again, every contact that could have been
-- claimed since is held in doubt with the attempt it would have had (the same idempotency key, see
-- the claim, sql/claim.sql), and looked up at the provider like any attempt in doubt: found → adopted and
-- followed to its end; never placed → queued again; no answer → held for review (dialer.in_doubt).
-- One contact per number (a number has one live call at most); the others wait for it. p_since:
-- the database's last known activity, where a look-up by time (Twilio) starts. Returns how many.
CREATE FUNCTION dialer._hold_after_restore(p_since timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
    r record;
BEGIN
    PERFORM dialer._promote_batches(clock_timestamp());
    FOR r IN
        SELECT DISTINCT ON (c.phone_number) c.id, c.batch_id, b.agency_id, m.provider, c.phone_number,
               format('pgd-%s-%s', c.id, 1 + (SELECT count(*) FROM dialer.calls k WHERE k.contact_id = c.id)) AS key
          FROM dialer.campaign_contacts c
          JOIN dialer.call_batches b ON b.id = c.batch_id
          JOIN dialer.agent_mappings m ON m.id = coalesce(c.agent_mapping_id, b.agent_mapping_id)
         WHERE c.status = 'queued' AND b.status = 'processing'
           AND NOT EXISTS (SELECT 1 FROM dialer.calls k WHERE k.phone_number = c.phone_number
                                                        AND k.status IN ('dialing', 'in_progress', 'in_doubt'))
         ORDER BY c.phone_number, c.priority, c.id
    LOOP
        WITH probe AS (
            INSERT INTO dialer.calls (contact_id, batch_id, agency_id, provider, idempotency_key, status, created_at,
                                      phone_number, error)
            VALUES (r.id, r.batch_id, r.agency_id, r.provider, r.key, 'in_doubt', p_since, r.phone_number,
                    'database restored: this attempt may have been placed after the restore point')
            RETURNING id
        )
        UPDATE dialer.campaign_contacts c
           SET status = 'in_doubt', attempts = c.attempts + 1, call_id = probe.id, updated_at = clock_timestamp(),
               last_error = 'database restored: looked up at the provider before it is dialed again'
          FROM probe WHERE c.id = r.id;
        UPDATE dialer.call_batches SET queued_count = greatest(queued_count - 1, 0) WHERE id = r.batch_id;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Step 5b: attempts in doubt to look up at the provider (by idempotency key), a few times at most.
CREATE FUNCTION dialer._calls_to_look_up(p_now timestamptz, p_limit integer)
RETURNS TABLE (call_id bigint, agency_id bigint, provider text, idempotency_key text, phone_number text,
               claimed_at text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE dialer.calls k SET last_polled_at = p_now, lookup_attempts = k.lookup_attempts + 1
      FROM dialer.campaign_contacts c
     WHERE c.id = k.contact_id
       AND k.id IN (SELECT id FROM dialer.calls
                     WHERE status = 'in_doubt' AND lookup_attempts < 5
                       AND coalesce(last_polled_at, created_at) <= p_now - interval '1 second' * (1 + lookup_attempts * lookup_attempts)
                     ORDER BY id LIMIT p_limit
                       FOR UPDATE SKIP LOCKED)
    RETURNING k.id, k.agency_id, k.provider, k.idempotency_key, c.phone_number,
              to_char(k.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
END $$;

-- Records look-ups, one element per call in parallel arrays (found, and the provider's call id
-- when it was). Found → adopted: the call is in progress after all. Not found (the provider answered) → the attempt never happened:
-- the contact is queued again, not counted as an attempt.
CREATE FUNCTION dialer._record_lookup(p_call_ids bigint[], p_found boolean[], p_provider_call_ids text[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    k dialer.calls;
    c dialer.campaign_contacts;
    b dialer.call_batches;
    n integer := 0;
BEGIN
    FOR r IN SELECT * FROM unnest(p_call_ids, p_found, p_provider_call_ids) AS l(call_id, found, provider_call_id) LOOP
        SELECT * INTO k FROM dialer.calls WHERE id = r.call_id AND status = 'in_doubt' FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO c FROM dialer.campaign_contacts WHERE id = k.contact_id FOR UPDATE;
        SELECT * INTO b FROM dialer.call_batches WHERE id = k.batch_id;
        IF r.found THEN
            UPDATE dialer.calls SET status = 'in_progress', provider_call_id = coalesce(r.provider_call_id, provider_call_id),
                   error = 'adopted: found at the provider by idempotency key', last_polled_at = NULL,
                   poll_interval_from = NULL
             WHERE id = k.id;
            IF c.status = 'in_doubt' AND c.call_id = k.id THEN
                UPDATE dialer.campaign_contacts SET status = 'in_progress', updated_at = clock_timestamp(), last_error = NULL
                 WHERE id = c.id;
                PERFORM dialer._move_batch_counters(b.id, p_in_progress => 1);
            END IF;
            n := n + 1;
        ELSE
            UPDATE dialer.calls SET status = 'network_error', error = 'no answer, and not found at the provider: never placed'
             WHERE id = k.id;
            IF c.status = 'in_doubt' AND c.call_id = k.id THEN
                UPDATE dialer.campaign_contacts
                   SET status = 'queued', attempts = greatest(attempts - 1, 0),
                       next_attempt_at = clock_timestamp() + greatest(b.retry_delay, interval '1 second'),
                       updated_at = clock_timestamp(), last_error = 'previous attempt never reached the provider'
                 WHERE id = c.id;
                UPDATE dialer.call_batches
                   SET queued_count = queued_count + 1,
                       status = CASE WHEN status = 'completed' THEN 'processing' ELSE status END, completed_at = NULL
                 WHERE id = b.id;
            END IF;
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END $$;

-- The hot tables that have changed more than their own size since their last ANALYZE (at least
-- 2,000 changes: see _refresh_statistics). The worker asks this every few seconds, and starts a
-- session to analyse them only when there are some.
CREATE FUNCTION dialer._outgrown_statistics()
RETURNS SETOF regclass LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid::regclass
      FROM pg_catalog.pg_class c
     WHERE c.oid IN ('dialer.campaign_contacts'::regclass, 'dialer.calls'::regclass, 'dialer.call_batches'::regclass)
       AND pg_catalog.pg_stat_get_mod_since_analyze(c.oid) > greatest(2000, c.reltuples)
$$;

-- Planner statistics of the hot tables, refreshed when a table has changed more than its own size
-- since its last ANALYZE (a campaign loaded into an empty table, a first burst of calls, a campaign
-- whose contacts all left 'pending'). Autovacuum catches up within a minute or so; until then the
-- planner would take a table of 100,000 rows for an empty one, or look for pending contacts by
-- reading all of them. Steady state is left to autovacuum. Returns the tables analysed.
-- A small sample (3,000 rows) is enough for what these plans depend on (how big, which statuses),
-- and is what keeps this cheap: with the default 30,000 these passes were 13% of a campaign's time.
-- At least 2,000 changes (not 500): a call is three (its insert, accepted, ended), and every
-- ANALYZE makes each plan on the table be made again; a campaign at 30 calls/s had calls
-- analysed every 5 to 13 s through its first minute.
-- SECURITY DEFINER: ANALYZE needs the tables' owner, and the worker runs as dialer_worker.
CREATE FUNCTION dialer._refresh_statistics()
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t regclass;
    n integer := 0;
BEGIN
    -- Never wait behind autovacuum (or anyone else) for the lock: try again next time.
    SET LOCAL lock_timeout = '20ms';
    SET LOCAL default_statistics_target = 10;
    -- Every column: an ANALYZE of some columns leaves the modification count as it was (only a
    -- whole-table ANALYZE resets it), so a busy table was analysed again at every check (every
    -- 2 s), and every plan on it was made again each time.
    FOR t IN SELECT * FROM dialer._outgrown_statistics() LOOP
        BEGIN
            EXECUTE format('ANALYZE %s', t);
            n := n + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    RETURN n;
END $$;

-- The worker keeps agent mappings and credentials across passes (tick::TargetCache): a change
-- to either tells it at commit to read them again.
CREATE TRIGGER agent_mappings_changed AFTER INSERT OR UPDATE OR DELETE ON dialer.agent_mappings
    FOR EACH STATEMENT EXECUTE FUNCTION dialer._changed_on_commit('config');
CREATE TRIGGER provider_credentials_changed AFTER INSERT OR DELETE OR UPDATE OF api_key, base_url, account_sid
    ON dialer.provider_credentials FOR EACH STATEMENT EXECUTE FUNCTION dialer._changed_on_commit('config');
