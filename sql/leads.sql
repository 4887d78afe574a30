-- Leads and the human fallback (lead-posting-scheduler seed): telecallers, follow-ups, call
-- outcomes from webhooks / polling / the application, NOTIFY events, and the health view.

CREATE TABLE dialer.telecallers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_id  bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (length(btrim(name)) > 0),
    source     text,          -- the lead source this telecaller works; NULL = any source
    available  boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON dialer.telecallers (agency_id) WHERE available;

CREATE TABLE dialer.followups (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id    bigint NOT NULL REFERENCES dialer.campaign_contacts(id) ON DELETE CASCADE,
    telecaller_id bigint REFERENCES dialer.telecallers(id) ON DELETE SET NULL,  -- NULL while pending
    review_at     timestamptz,
    notes         text,
    priority      boolean NOT NULL DEFAULT false,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON dialer.followups (telecaller_id) WHERE status = 'open';
CREATE UNIQUE INDEX followups_one_open_per_contact ON dialer.followups (contact_id) WHERE status = 'open';
-- Every follow-up of a contact, open or done: deleting a contact (retention of finished jobs,
-- clean_jobs) cascades here by contact, one look-up per contact (without it, a read of the whole
-- table each: 1,000 jobs beside 100,000 done follow-ups took 6 s, not 40 ms).
CREATE INDEX followups_contact_idx ON dialer.followups (contact_id);
-- A follow-up's telecaller, and a queue job's own agent mapping, are of the contact's agency.
CREATE TRIGGER followups_same_agency BEFORE INSERT OR UPDATE OF telecaller_id, contact_id ON dialer.followups
    FOR EACH ROW EXECUTE FUNCTION dialer._same_agency();
CREATE TRIGGER campaign_contacts_same_agency BEFORE INSERT OR UPDATE OF agent_mapping_id, batch_id ON dialer.campaign_contacts
    FOR EACH ROW EXECUTE FUNCTION dialer._same_agency();

CREATE TABLE dialer.webhook_events (
    provider    text NOT NULL,
    event_id    text NOT NULL,
    call_id     bigint REFERENCES dialer.calls(id) ON DELETE CASCADE,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb,
    PRIMARY KEY (provider, event_id)
);
-- A call's events: whether its webhooks reach us (a poll of it is then the safety net only,
-- dialer._poll_backoff), and the foreign key's cascade when a call is deleted.
CREATE INDEX webhook_events_call_idx ON dialer.webhook_events (call_id);

-- NOTIFY dialer_events with a JSON payload (delivered when the transaction commits).
-- Anyone may LISTEN on a channel, so an event carries ids and states only: never a phone number,
-- a name or an error text. A listener reads the rest through the API, under row-level security.
CREATE FUNCTION dialer._notify(p_event text, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('dialer_events', (jsonb_build_object('event', p_event, 'at', clock_timestamp())
        || (SELECT coalesce(jsonb_object_agg(key, value), '{}') FROM jsonb_each(p_payload)
             WHERE key IN ('contact_id', 'batch_id', 'agency_id', 'telecaller_id', 'call_id', 'job_id',
                           'handoff', 'priority', 'attempts', 'attempt', 'http_status', 'review_at')
               AND jsonb_typeof(value) IN ('number', 'boolean', 'null')
                OR key IN ('handoff', 'review_at')))::text)
$$;

-- The seed's intent (its code has the branches swapped): handed off in the morning (before 14:00)
-- → reviewed the same day at 17:00; otherwise the next day at 09:00 — in the agency's zone.
CREATE FUNCTION dialer._review_time(p_now timestamptz, p_tz text)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN extract(hour FROM p_now AT TIME ZONE p_tz) < 14
                THEN (date_trunc('day', p_now AT TIME ZONE p_tz) + interval '17 hours') AT TIME ZONE p_tz
                ELSE (date_trunc('day', p_now AT TIME ZONE p_tz) + interval '1 day 9 hours') AT TIME ZONE p_tz
           END
$$;

-- Gives an open follow-up to the available telecaller of the contact's source (a generalist
-- if none) with the fewest open follow-ups. Returns the telecaller, or NULL if nobody is free.
CREATE FUNCTION dialer._assign_followup(p_followup_id bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    f dialer.followups;
    c dialer.campaign_contacts;
    agency dialer.agencies;
    tc bigint;
    review timestamptz;
BEGIN
    SELECT * INTO f FROM dialer.followups WHERE id = p_followup_id AND status = 'open' AND telecaller_id IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO c FROM dialer.campaign_contacts WHERE id = f.contact_id;
    SELECT a.* INTO agency FROM dialer.agencies a JOIN dialer.call_batches b ON b.agency_id = a.id WHERE b.id = c.batch_id;
    SELECT t.id INTO tc
      FROM dialer.telecallers t
     WHERE t.agency_id = agency.id AND t.available
       AND (t.source IS NOT DISTINCT FROM c.source OR t.source IS NULL)
     ORDER BY (t.source IS NULL),
              (SELECT count(*) FROM dialer.followups o WHERE o.telecaller_id = t.id AND o.status = 'open'),
              t.id
     LIMIT 1;
    IF tc IS NULL THEN
        RETURN NULL;
    END IF;
    review := dialer._review_time(clock_timestamp(), agency.timezone);
    UPDATE dialer.followups SET telecaller_id = tc, review_at = review WHERE id = f.id;
    UPDATE dialer.campaign_contacts SET handoff = 'manual_assigned', updated_at = clock_timestamp() WHERE id = c.id;
    PERFORM dialer._notify('handoff', jsonb_build_object('contact_id', c.id, 'batch_id', c.batch_id,
        'agency_id', agency.id, 'handoff', 'manual_assigned', 'telecaller_id', tc, 'review_at', review,
        'priority', f.priority));
    RETURN tc;
END $$;

-- Hands a contact to the humans: a follow-up, assigned now if someone is available, else the
-- contact waits as manual_pending. Once per contact.
CREATE FUNCTION dialer._hand_off(p_contact_id bigint, p_reason text, p_priority boolean)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c dialer.campaign_contacts;
    f bigint;
BEGIN
    SELECT * INTO c FROM dialer.campaign_contacts WHERE id = p_contact_id FOR UPDATE;
    IF NOT FOUND OR c.handoff IS NOT NULL THEN
        RETURN c.handoff;
    END IF;
    INSERT INTO dialer.followups (contact_id, notes, priority)
    VALUES (c.id, 'Escalated from AI auto-call: manual outreach required'
                  || coalesce(' (' || left(p_reason, 300) || ')', ''), p_priority)
    RETURNING id INTO f;
    UPDATE dialer.campaign_contacts SET handoff = 'manual_pending', updated_at = clock_timestamp() WHERE id = c.id;
    IF dialer._assign_followup(f) IS NULL THEN
        PERFORM dialer._notify('handoff', jsonb_build_object('contact_id', c.id, 'batch_id', c.batch_id,
            'handoff', 'manual_pending', 'priority', p_priority));
        RETURN 'manual_pending';
    END IF;
    RETURN 'manual_assigned';
END $$;

-- Assigns waiting follow-ups (priority ones first, oldest first) while telecallers are available.
CREATE FUNCTION dialer._assign_pending(p_agency_id bigint DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    f record;
    n integer := 0;
BEGIN
    FOR f IN SELECT o.id FROM dialer.followups o
               JOIN dialer.campaign_contacts c ON c.id = o.contact_id
               JOIN dialer.call_batches b ON b.id = c.batch_id
              WHERE o.status = 'open' AND o.telecaller_id IS NULL
                AND (p_agency_id IS NULL OR b.agency_id = p_agency_id)
              ORDER BY o.priority DESC, o.created_at, o.id LOOP
        IF dialer._assign_followup(f.id) IS NOT NULL THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION dialer.add_telecaller(agency_id bigint, name text, source text DEFAULT NULL,
    available boolean DEFAULT true)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM dialer._check_agency(agency_id);
    IF name IS NULL OR length(btrim(name)) = 0 THEN
        RAISE EXCEPTION 'telecaller name must not be empty' USING ERRCODE = '22023';
    END IF;
    INSERT INTO dialer.telecallers (agency_id, name, source, available)
    VALUES (add_telecaller.agency_id, add_telecaller.name, add_telecaller.source, coalesce(add_telecaller.available, true))
    RETURNING id INTO new_id;
    PERFORM dialer._assign_pending(add_telecaller.agency_id);
    RETURN new_id;
END $$;

CREATE FUNCTION dialer.set_telecaller_available(id bigint, available boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    agency bigint;
BEGIN
    IF available IS NULL THEN
        RAISE EXCEPTION 'available must be true or false' USING ERRCODE = '22023';
    END IF;
    UPDATE dialer.telecallers t SET available = set_telecaller_available.available
     WHERE t.id = set_telecaller_available.id
    RETURNING t.agency_id INTO agency;
    IF agency IS NULL THEN
        RAISE EXCEPTION 'telecaller % does not exist', coalesce(id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
    IF available THEN
        PERFORM dialer._assign_pending(agency);
    END IF;
END $$;

-- What an ended call means for its contact, by the provider's end reason.
CREATE FUNCTION dialer._outcome_of_end_reason(p_reason text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_reason IN ('invalid_number', 'invalid-number') THEN 'trashed'
        WHEN p_reason IN ('no-answer', 'busy', 'voicemail', 'failed', 'canceled',
                          'no_answer', 'unjoined', 'connection_error', 'system_error', 'machine', 'cancelled') THEN 'ai_failed'
        ELSE NULL   -- ended normally: the application's disposition says how it went
    END
$$;

-- Applies an outcome to a contact: success → done; not interested → manual follow-up;
-- AI failed → manual with priority; invalid number → trashed.
CREATE FUNCTION dialer._route_outcome(p_contact_id bigint, p_outcome text, p_reason text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_outcome IS NULL THEN
        RETURN;
    END IF;
    UPDATE dialer.campaign_contacts SET outcome = p_outcome, updated_at = clock_timestamp() WHERE id = p_contact_id;
    IF p_outcome = 'not_interested' THEN
        PERFORM dialer._hand_off(p_contact_id, coalesce(p_reason, 'not interested'), false);
    ELSIF p_outcome = 'ai_failed' THEN
        PERFORM dialer._hand_off(p_contact_id, coalesce(p_reason, 'AI call failed'), true);
    END IF;
END $$;

-- Ends a call (from a webhook, a status look-up or a disposition): the call row closes, its
-- contact completes, counters move, the outcome is routed. Idempotent.
CREATE FUNCTION dialer._end_call(p_call_id bigint, p_end_reason text, p_answered_at timestamptz,
    p_ended_at timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    k dialer.calls;
    b dialer.call_batches;
    c dialer.campaign_contacts;
    retry_after interval;
    voicemail boolean;
BEGIN
    SELECT * INTO k FROM dialer.calls WHERE id = p_call_id FOR UPDATE;
    IF NOT FOUND OR k.status NOT IN ('in_progress', 'dialing', 'in_doubt') THEN
        RETURN false;
    END IF;
    UPDATE dialer.calls
       SET status = 'ended', end_reason = p_end_reason,
           answered_at = coalesce(answered_at, p_answered_at),
           ended_at = coalesce(p_ended_at, clock_timestamp())
     WHERE id = k.id;
    -- Per-outcome retry delays (no-answer, busy, voicemail, failed): try again later instead.
    SELECT * INTO b FROM dialer.call_batches WHERE id = k.batch_id;
    SELECT * INTO c FROM dialer.campaign_contacts WHERE id = k.contact_id FOR UPDATE;
    retry_after := (b.retry_delays ->> dialer._retry_outcome(p_end_reason))::interval;
    voicemail := dialer._retry_outcome(p_end_reason) = 'voicemail';
    IF voicemail THEN
        -- An answering machine, by the batch's policy: retry (after the voicemail delay, else the
        -- batch's retry delay and back-off), done, or hand-off.
        UPDATE dialer.call_batches SET voicemail_count = voicemail_count + 1 WHERE id = b.id;
        retry_after := CASE WHEN b.on_voicemail = 'retry'
                            THEN coalesce(retry_after, b.retry_delay * power(b.retry_backoff, greatest(c.attempts - 1, 0))::double precision)
                       END;
    END IF;
    IF retry_after IS NOT NULL AND c.attempts < b.max_attempts AND c.call_id = k.id
       AND c.status IN ('in_progress', 'in_doubt') THEN
        UPDATE dialer.campaign_contacts
           SET status = 'queued', next_attempt_at = clock_timestamp() + retry_after, updated_at = clock_timestamp(),
               last_error = 'call ended: ' || p_end_reason
         WHERE id = c.id;
        UPDATE dialer.call_batches SET queued_count = queued_count + 1 WHERE id = b.id;
        IF c.status = 'in_progress' THEN
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        END IF;
        PERFORM dialer._wake_on_commit();  -- the worker learns when the retry is due
        RETURN true;
    END IF;
    UPDATE dialer.campaign_contacts SET status = 'completed', updated_at = clock_timestamp()
     WHERE id = k.contact_id AND status IN ('in_progress', 'in_doubt') AND call_id = k.id;
    IF FOUND THEN
        IF k.status = 'in_doubt' THEN
            PERFORM dialer._move_batch_counters(k.batch_id, p_completed => 1);
        ELSE
            PERFORM dialer._move_batch_counters(k.batch_id, p_in_progress => -1, p_completed => 1);
        END IF;
        PERFORM dialer._route_outcome(k.contact_id,
            CASE WHEN voicemail AND b.on_voicemail = 'done' THEN 'voicemail' ELSE dialer._outcome_of_end_reason(p_end_reason) END,
            p_end_reason);
        -- The campaign's last call ended (by a webhook, perhaps, while the worker sleeps): it is
        -- complete now, not at the worker's next look.
        IF EXISTS (SELECT 1 FROM dialer.call_batches x
                    WHERE x.id = k.batch_id AND x.kind = 'campaign' AND x.status = 'processing'
                      AND x.queued_count <= 0 AND x.in_progress_count <= 0) THEN
            PERFORM dialer._complete_batches(clock_timestamp(), true);
        END IF;
    END IF;
    -- A concurrency slot is free, perhaps a retry queued: the worker (asleep while its batches
    -- were full) looks again.
    PERFORM dialer._wake_on_commit();
    RETURN true;
END $$;

-- The application's verdict on a call.
CREATE FUNCTION dialer.set_disposition(call_id bigint, disposition text, notes text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    k dialer.calls;
    outcome text;
BEGIN
    outcome := CASE disposition WHEN 'success' THEN 'success' WHEN 'not_interested' THEN 'not_interested'
                                WHEN 'failed' THEN 'ai_failed' WHEN 'invalid_number' THEN 'trashed'
                                WHEN 'voicemail' THEN 'voicemail' END;
    IF outcome IS NULL THEN
        RAISE EXCEPTION 'unknown disposition %', coalesce(quote_literal(disposition), 'NULL') USING ERRCODE = '22023',
            HINT = 'Use success, not_interested, failed, invalid_number or voicemail.';
    END IF;
    SELECT * INTO k FROM dialer.calls WHERE id = set_disposition.call_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'call % does not exist', coalesce(set_disposition.call_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
    UPDATE dialer.calls SET disposition = set_disposition.disposition, notes = set_disposition.notes
     WHERE id = k.id;
    IF outcome = 'voicemail' THEN
        -- The application heard an answering machine (an Ultravox agent's tool, say: Ultravox's
        -- call object has no such field): a live call ends as voicemail, under the batch's policy.
        IF k.status IN ('in_progress', 'dialing', 'in_doubt') THEN
            PERFORM dialer._end_call(k.id, 'voicemail', NULL, NULL);
            RETURN;
        END IF;
        outcome := CASE WHEN (SELECT b.on_voicemail FROM dialer.call_batches b WHERE b.id = k.batch_id) = 'done'
                        THEN 'voicemail' ELSE 'ai_failed' END;
    ELSIF k.status IN ('in_progress', 'dialing', 'in_doubt') THEN
        PERFORM dialer._end_call(k.id, 'disposition', NULL, NULL);
    END IF;
    PERFORM dialer._route_outcome(k.contact_id, outcome, coalesce(notes, disposition));
END $$;

-- Records a webhook delivery once; false when it was seen before.
CREATE FUNCTION dialer._webhook_first_delivery(p_provider text, p_event_id text, p_call_id bigint, p_payload jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dialer.webhook_events (provider, event_id, call_id, payload)
    VALUES (p_provider, p_event_id, p_call_id, p_payload)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $$;

-- The seed's six monitoring metrics against their thresholds (last hour; failed leads: last day).
CREATE VIEW dialer.health AS
WITH r AS (
    SELECT * FROM dialer.runs WHERE started_at > now() - interval '1 hour'
), k AS (
    -- (the columns read, not *: a view's * is fixed when it is made, and a column added to calls
    -- would make an upgraded database's view differ from a fresh install's)
    SELECT status, latency_ms FROM dialer.calls WHERE created_at > now() - interval '1 hour' AND status <> 'dialing'
), m (metric, value, threshold, ok, unit, alert) AS (
    SELECT 'execution_duration', (SELECT max(duration_ms) FROM r WHERE status <> 'SKIPPED_CONCURRENT'),
           20000::float8, coalesce((SELECT max(duration_ms) FROM r WHERE status <> 'SKIPPED_CONCURRENT'), 0) <= 20000,
           'ms (max)', 'Check database load'
    UNION ALL
    SELECT 'posting_success_rate',
           (SELECT 100.0 * count(*) FILTER (WHERE status IN ('in_progress', 'ended')) / nullif(count(*), 0) FROM k)::float8,
           95, coalesce((SELECT 100.0 * count(*) FILTER (WHERE status IN ('in_progress', 'ended')) / nullif(count(*), 0) FROM k), 100) >= 95,
           '% (min)', 'Investigate API errors'
    UNION ALL
    SELECT 'batch_size_variation',
           (SELECT max(initiated)::float8 / nullif(avg(initiated), 0) FROM r WHERE initiated > 0),
           2, coalesce((SELECT max(initiated)::float8 / nullif(avg(initiated), 0) FROM r WHERE initiated > 0), 1) <= 2,
           'x normal (max)', 'Check lead queue buildup'
    UNION ALL
    SELECT 'provider_latency', (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM k WHERE latency_ms IS NOT NULL),
           3000, coalesce((SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM k WHERE latency_ms IS NOT NULL), 0) <= 3000,
           'ms (p95)', 'Contact AI provider'
    UNION ALL
    SELECT 'failed_lead_accumulation',
           (SELECT count(*) FROM dialer.campaign_contacts WHERE status = 'failed' AND updated_at > now() - interval '1 day')::float8,
           100, (SELECT count(*) FROM dialer.campaign_contacts WHERE status = 'failed' AND updated_at > now() - interval '1 day') <= 100,
           'per day (max)', 'Review fallback process'
    UNION ALL
    SELECT 'concurrent_executions', (SELECT count(*) FROM r WHERE status = 'SKIPPED_CONCURRENT')::float8,
           0, (SELECT count(*) FROM r WHERE status = 'SKIPPED_CONCURRENT') = 0,
           'skipped ticks (max)', 'Critical - scheduler locking issue'
    UNION ALL
    -- Not one of the seed's: answering machines, counted apart from the failures (no threshold).
    SELECT 'voicemail', (SELECT count(*) FROM dialer.calls v
                          WHERE v.end_reason = 'voicemail' AND v.ended_at > now() - interval '1 hour')::float8,
           NULL, true, 'calls (last hour)', 'See on_voicemail (dialer.set_batch_options)'
)
SELECT metric, value, threshold, ok, unit, alert FROM m;

-- Attempts whose outcome is unknown and that the provider could not settle: for a human.
CREATE VIEW dialer.in_doubt AS
SELECT c.id AS contact_id, c.batch_id, b.agency_id, c.phone_number, c.attempts, c.last_error,
       k.id AS call_id, k.provider, k.idempotency_key, k.created_at AS claimed_at, k.lookup_attempts
  FROM dialer.campaign_contacts c
  JOIN dialer.call_batches b ON b.id = c.batch_id
  LEFT JOIN dialer.calls k ON k.id = c.call_id
 WHERE c.status = 'in_doubt';

-- Settles an in-doubt contact: redial → queued for a fresh attempt; otherwise it is taken as
-- called (completed) and its attempt closed.
CREATE FUNCTION dialer.resolve_in_doubt(contact_id bigint, redial boolean)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c dialer.campaign_contacts;
BEGIN
    IF redial IS NULL THEN
        RAISE EXCEPTION 'redial must be true or false' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM dialer.campaign_contacts WHERE id = resolve_in_doubt.contact_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % does not exist', coalesce(resolve_in_doubt.contact_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
    IF c.status <> 'in_doubt' THEN
        RAISE NOTICE 'contact % is %, not in doubt', c.id, c.status;
        RETURN false;
    END IF;
    IF redial THEN
        UPDATE dialer.calls SET status = 'failed', error = 'in doubt; redial chosen by resolve_in_doubt'
         WHERE id = c.call_id AND status = 'in_doubt';
        UPDATE dialer.campaign_contacts SET status = 'queued', next_attempt_at = NULL, updated_at = clock_timestamp()
         WHERE id = c.id;
        UPDATE dialer.call_batches
           SET queued_count = queued_count + 1,
               status = CASE WHEN status = 'completed' THEN 'processing' ELSE status END, completed_at = NULL
         WHERE id = c.batch_id;
        PERFORM dialer._wake_on_commit();
    ELSE
        UPDATE dialer.calls SET status = 'ended', end_reason = 'settled_in_doubt', ended_at = clock_timestamp()
         WHERE id = c.call_id AND status = 'in_doubt';
        UPDATE dialer.campaign_contacts SET status = 'completed', updated_at = clock_timestamp() WHERE id = c.id;
        PERFORM dialer._move_batch_counters(c.batch_id, p_completed => 1);
    END IF;
    RETURN true;
END $$;

-- A call the provider never reports as ended (its webhook lost, its status stuck) is closed after
-- twice dialer.call_timeout, so nothing stays open forever. It was looked up all along by polling.
-- Oldest first, in calls_live_idx's order: the plan reads only the calls past the limit, whatever
-- the values (ORDER BY id had a generic plan that walked the primary key through every call).
CREATE FUNCTION dialer._close_abandoned(p_now timestamptz, p_call_timeout interval)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    k record;
    n integer := 0;
BEGIN
    FOR k IN SELECT id FROM dialer.calls
              WHERE status = 'in_progress' AND created_at < p_now - p_call_timeout * 2
              ORDER BY created_at LIMIT 500 FOR UPDATE SKIP LOCKED LOOP
        IF dialer._end_call(k.id, 'no_outcome', NULL, NULL) THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END $$;
