-- Compliance: calling windows in the contact's zone, holidays, do-not-call, attempt caps per
-- number and day, retry delays per outcome, and why a contact has not been dialed. Everything is
-- checked in the claim itself against live tables, so a change takes effect on the next tick.

CREATE TABLE dialer.do_not_call (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone_number text NOT NULL CHECK (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
    agency_id    bigint REFERENCES dialer.agencies(id) ON DELETE CASCADE,  -- NULL = every agency
    reason       text,
    added_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX do_not_call_number_agency ON dialer.do_not_call (phone_number, coalesce(agency_id, 0));

CREATE TABLE dialer.agency_holidays (
    agency_id bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    day       date NOT NULL,
    PRIMARY KEY (agency_id, day)
);

CREATE FUNCTION dialer._on_dnc(p_phone text, p_agency_id bigint)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM dialer.do_not_call d
                    WHERE d.phone_number = p_phone AND (d.agency_id IS NULL OR d.agency_id = p_agency_id))
$$;

-- The first moment at or after p_now inside the window [p_start, p_end) on p_days (ISO weekdays)
-- in zone p_tz, skipping the agency's holidays (local dates). Local times are turned into instants
-- by Postgres's own rules, so daylight-saving changes are handled.
CREATE FUNCTION dialer._next_opening(p_now timestamptz, p_tz text, p_start time, p_end time, p_days integer[],
    p_agency_id bigint)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    local_now timestamp := p_now AT TIME ZONE p_tz;
    d date;
    k integer;
BEGIN
    IF p_start IS NULL THEN
        RETURN p_now;
    END IF;
    FOR k IN 0..400 LOOP
        d := local_now::date + k;
        CONTINUE WHEN p_days IS NOT NULL AND NOT (extract(isodow FROM d)::integer = ANY (p_days));
        CONTINUE WHEN EXISTS (SELECT 1 FROM dialer.agency_holidays h WHERE h.agency_id = p_agency_id AND h.day = d);
        IF k = 0 THEN
            IF local_now::time >= p_start AND local_now::time < p_end THEN
                RETURN p_now;
            ELSIF local_now::time < p_start THEN
                RETURN (d + p_start) AT TIME ZONE p_tz;
            END IF;
        ELSE
            RETURN (d + p_start) AT TIME ZONE p_tz;
        END IF;
    END LOOP;
    RETURN NULL;  -- no opening within a year (every day a holiday)
END $$;

-- Attempts (requests that reached the provider) to a number today, in the agency's zone.
CREATE FUNCTION dialer._attempts_today(p_agency_id bigint, p_phone text, p_now timestamptz, p_tz text)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer FROM dialer.calls k
     WHERE k.agency_id = p_agency_id AND k.phone_number = p_phone
       AND k.created_at >= date_trunc('day', p_now AT TIME ZONE p_tz) AT TIME ZONE p_tz
       AND k.status NOT IN ('network_error', 'rate_limited')
$$;

CREATE FUNCTION dialer._check_window(p_start time, p_end time, p_days integer[])
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
#variable_conflict use_column
BEGIN
    IF p_start IS NULL OR p_end IS NULL THEN
        RAISE EXCEPTION 'a calling window needs a start and an end time' USING ERRCODE = '22023';
    END IF;
    IF p_end <= p_start THEN
        RAISE EXCEPTION 'calling window ends (%) before it starts (%)', p_end, p_start USING ERRCODE = '22023',
            HINT = 'Give the window in local time, e.g. ''09:00'' to ''20:00''.';
    END IF;
    IF p_days IS NULL OR cardinality(p_days) = 0 OR EXISTS (SELECT 1 FROM unnest(p_days) d WHERE d IS NULL OR d NOT BETWEEN 1 AND 7) THEN
        RAISE EXCEPTION 'days must be ISO weekdays 1 (Monday) to 7 (Sunday), got %', p_days USING ERRCODE = '22023';
    END IF;
END $$;

-- When a batch's window changes, the contacts its old window deferred are looked at again. They
-- are those whose next_attempt_at is the opening the old window gave them when they were last
-- looked at (the claim, sql/claim.sql, sets both at once); a job waiting for its own run_at, a retry
-- waiting out its back-off and a contact held by the daily cap keep their time.
CREATE FUNCTION dialer._release_window_deferrals(p_old dialer.call_batches)
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

-- A locked batch's calling window set (NULLs: cleared); contacts deferred by the old one go now.
CREATE FUNCTION dialer._put_window(p_batch dialer.call_batches, p_start time, p_end time, p_days integer[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._release_window_deferrals(p_batch);
    UPDATE dialer.call_batches SET window_start = p_start, window_end = p_end, window_days = p_days WHERE id = p_batch.id;
    PERFORM dialer._wake_on_commit();
END $$;

CREATE FUNCTION dialer.set_calling_window(batch_id bigint, start_time time, end_time time,
    days integer[] DEFAULT '{1,2,3,4,5,6,7}')
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dialer.call_batches := dialer._batch_for_update(batch_id);
BEGIN
    PERFORM dialer._check_window(start_time, end_time, days);
    PERFORM dialer._put_window(b, start_time, end_time, days);
END $$;

CREATE FUNCTION dialer.clear_calling_window(batch_id bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._put_window(dialer._batch_for_update(batch_id), NULL, NULL, NULL);
END $$;

-- The default queue's window (single calls).
CREATE FUNCTION dialer.set_queue_calling_window(agency_id bigint, start_time time, end_time time,
    days integer[] DEFAULT '{1,2,3,4,5,6,7}')
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM dialer._check_agency(agency_id);
    PERFORM dialer.set_calling_window(dialer._queue_batch(agency_id, dialer._resolve_mapping(agency_id, NULL)),
                                      start_time, end_time, days);
END $$;

CREATE FUNCTION dialer.add_holiday(agency_id bigint, day date)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._check_agency(agency_id);
    IF day IS NULL THEN
        RAISE EXCEPTION 'day must not be NULL' USING ERRCODE = '22023';
    END IF;
    INSERT INTO dialer.agency_holidays VALUES (add_holiday.agency_id, add_holiday.day) ON CONFLICT DO NOTHING;
END $$;

CREATE FUNCTION dialer.remove_holiday(agency_id bigint, day date)
RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM dialer.agency_holidays h WHERE h.agency_id = remove_holiday.agency_id AND h.day = remove_holiday.day;
    RETURN FOUND;
END $$;

-- A listed number is never posted: its waiting contacts are cancelled now (reason 'dnc'), and the
-- claim checks the list again right before dialing.
CREATE FUNCTION dialer.add_do_not_call(phone_number text, agency_id bigint DEFAULT NULL, reason text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    PERFORM dialer._check_e164(phone_number, 'do-not-call number');
    IF agency_id IS NOT NULL THEN
        PERFORM dialer._check_agency(agency_id);
    END IF;
    -- Queued jobs it cancels leave their queue's counters: the counters must hold them first.
    PERFORM dialer._count_arrivals();
    INSERT INTO dialer.do_not_call (phone_number, agency_id, reason)
    VALUES (add_do_not_call.phone_number, add_do_not_call.agency_id, add_do_not_call.reason)
    ON CONFLICT (phone_number, coalesce(agency_id, 0)) DO UPDATE SET reason = EXCLUDED.reason;
    FOR r IN
        WITH cancelled AS (
            UPDATE dialer.campaign_contacts c SET status = 'cancelled', last_error = 'dnc', updated_at = now()
              FROM dialer.call_batches b
             WHERE b.id = c.batch_id AND c.phone_number = add_do_not_call.phone_number
               AND c.status IN ('pending', 'queued')
               AND (add_do_not_call.agency_id IS NULL OR b.agency_id = add_do_not_call.agency_id)
            RETURNING c.batch_id
        )
        SELECT batch_id, count(*) AS n FROM cancelled GROUP BY batch_id
    LOOP
        UPDATE dialer.call_batches SET queued_count = greatest(queued_count - r.n, 0) WHERE id = r.batch_id;
    END LOOP;
END $$;

CREATE FUNCTION dialer.remove_do_not_call(phone_number text, agency_id bigint DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM dialer.do_not_call d
     WHERE d.phone_number = remove_do_not_call.phone_number
       AND d.agency_id IS NOT DISTINCT FROM remove_do_not_call.agency_id;
    RETURN FOUND;
END $$;

CREATE FUNCTION dialer.set_agency_limits(agency_id bigint, max_attempts_per_number_per_day integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._check_agency(agency_id);
    IF max_attempts_per_number_per_day IS NOT NULL AND max_attempts_per_number_per_day <= 0 THEN
        RAISE EXCEPTION 'max_attempts_per_number_per_day must be a positive integer or NULL' USING ERRCODE = '22023';
    END IF;
    UPDATE dialer.agencies a SET max_attempts_per_number_per_day = set_agency_limits.max_attempts_per_number_per_day
     WHERE a.id = set_agency_limits.agency_id;
END $$;

-- Retry delays per outcome of a call that ended without talking to the person.
CREATE FUNCTION dialer.set_retry_delays(batch_id bigint, delays jsonb)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dialer.call_batches := dialer._batch_for_update(batch_id);
    k text;
    v jsonb;
BEGIN
    IF delays IS NULL OR jsonb_typeof(delays) <> 'object' THEN
        RAISE EXCEPTION 'delays must be a JSON object like {"no-answer": "1 hour", "busy": "10 minutes"}'
            USING ERRCODE = '22023';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(delays) LOOP
        IF k NOT IN ('no-answer', 'busy', 'voicemail', 'failed') THEN
            RAISE EXCEPTION 'unknown outcome % in delays', quote_literal(k) USING ERRCODE = '22023',
                HINT = 'The outcomes are no-answer, busy, voicemail and failed.';
        END IF;
        BEGIN
            IF jsonb_typeof(v) <> 'string' OR (v #>> '{}')::interval < interval '0'
               OR (v #>> '{}')::interval > interval '30 days' THEN
                RAISE EXCEPTION 'bad';
            END IF;
        EXCEPTION WHEN others THEN
            RAISE EXCEPTION 'delays.% must be a non-negative interval of at most 30 days, such as ''30 minutes''', k USING ERRCODE = '22023';
        END;
    END LOOP;
    UPDATE dialer.call_batches SET retry_delays = delays WHERE id = b.id;
END $$;

-- The outcome a provider's end reason stands for, for retry_delays.
CREATE FUNCTION dialer._retry_outcome(p_end_reason text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    -- The adapters speak pg_dialer's own words (src/providers/outcome.rs); the others are the
    -- words a generic AI caller may use.
    SELECT CASE
        WHEN p_end_reason IN ('no-answer', 'no_answer', 'unjoined') THEN 'no-answer'
        WHEN p_end_reason = 'busy' THEN 'busy'
        WHEN p_end_reason IN ('voicemail', 'machine') THEN 'voicemail'
        WHEN p_end_reason IN ('failed', 'connection_error', 'system_error') THEN 'failed'
    END
$$;

-- Why a contact has not been dialed (yet), in plain words.
CREATE FUNCTION dialer.why_not_dialed(contact_id bigint)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    c dialer.campaign_contacts;
    b dialer.call_batches;
    a dialer.agencies;
    account_held_until timestamptz;
    zone text;
    opening timestamptz;
    now_ts timestamptz := clock_timestamp();
    reasons jsonb := '[]';
    dnc_reason text;
BEGIN
    SELECT * INTO c FROM dialer.campaign_contacts WHERE id = why_not_dialed.contact_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'contact % does not exist', coalesce(why_not_dialed.contact_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
    SELECT * INTO b FROM dialer.call_batches WHERE id = c.batch_id;
    SELECT * INTO a FROM dialer.agencies WHERE id = b.agency_id;
    zone := coalesce(c.timezone, a.timezone);

    IF c.status IN ('completed', 'failed', 'cancelled', 'expired') THEN
        reasons := reasons || jsonb_build_object('code', c.status,
            'message', CASE c.status WHEN 'completed' THEN 'already called: the call has ended'
                                     WHEN 'failed' THEN 'gave up after ' || c.attempts || ' attempt(s): ' || coalesce(c.last_error, 'failed')
                                     WHEN 'expired' THEN 'expired at ' || coalesce(c.expires_at, b.expires_at) || ' before it was dialed'
                                     ELSE 'cancelled' || coalesce(' (' || c.last_error || ')', '') END);
    ELSIF c.status = 'in_progress' THEN
        reasons := reasons || jsonb_build_object('code', 'in_progress', 'message', 'being dialed or in a call right now');
    ELSIF c.status = 'in_doubt' THEN
        reasons := reasons || jsonb_build_object('code', 'in_doubt',
            'message', 'the last attempt may have reached the provider; it is being looked up, or needs dialer.resolve_in_doubt');
    END IF;
    SELECT d.reason INTO dnc_reason FROM dialer.do_not_call d
     WHERE d.phone_number = c.phone_number AND (d.agency_id IS NULL OR d.agency_id = b.agency_id) LIMIT 1;
    IF FOUND THEN
        reasons := reasons || jsonb_build_object('code', 'dnc', 'message', 'on the do-not-call list' || coalesce(': ' || dnc_reason, ''));
    END IF;
    IF c.status IN ('pending', 'queued') THEN
        IF b.status = 'paused' THEN
            reasons := reasons || jsonb_build_object('code', CASE b.kind WHEN 'queue' THEN 'queue_paused' ELSE 'batch_paused' END,
                'message', CASE b.kind WHEN 'queue' THEN 'the call queue is paused (dialer.resume_queue)'
                                       ELSE 'batch ' || b.id || ' is paused (dialer.resume_batch)' END);
        ELSIF b.status IN ('pending', 'scheduled') AND b.scheduled_for > now_ts THEN
            reasons := reasons || jsonb_build_object('code', 'batch_scheduled', 'until', b.scheduled_for,
                'message', 'batch ' || b.id || ' starts at ' || b.scheduled_for);
        ELSIF b.status IN ('completed', 'cancelled') THEN
            reasons := reasons || jsonb_build_object('code', 'batch_' || b.status, 'message', 'batch ' || b.id || ' is ' || b.status);
        END IF;
        IF coalesce(c.expires_at, b.expires_at) IS NOT NULL THEN
            reasons := reasons || jsonb_build_object('code', 'expires', 'until', least(c.expires_at, b.expires_at),
                'message', 'expires at ' || least(c.expires_at, b.expires_at) || ' if not dialed by then');
        END IF;
        IF EXISTS (SELECT 1 FROM dialer.agent_mappings m
                    WHERE m.id = coalesce(c.agent_mapping_id, b.agent_mapping_id) AND m.use_caller_id_pool)
           AND dialer._caller_ids_left(a.id, (now_ts AT TIME ZONE a.timezone)::date) = 0 THEN
            reasons := reasons || jsonb_build_object('code', 'caller_ids_exhausted',
                'message', 'every caller ID in the agency''s pool is disabled or at its daily cap (dialer.add_caller_id)');
        END IF;
        IF b.window_start IS NOT NULL THEN
            opening := dialer._next_opening(now_ts, zone, b.window_start, b.window_end, b.window_days, a.id);
            IF opening IS NULL OR opening > now_ts THEN
                reasons := reasons || jsonb_build_object('code', 'outside_window', 'until', opening, 'zone', zone,
                    'message', format('outside its calling window (%s-%s %s local time) until %s',
                                      b.window_start, b.window_end, zone, coalesce(opening::text, 'never (no opening within a year)')));
            END IF;
        END IF;
        IF a.max_attempts_per_number_per_day IS NOT NULL
           AND dialer._attempts_today(a.id, c.phone_number, now_ts, a.timezone) >= a.max_attempts_per_number_per_day THEN
            opening := (date_trunc('day', now_ts AT TIME ZONE a.timezone) + interval '1 day') AT TIME ZONE a.timezone;
            reasons := reasons || jsonb_build_object('code', 'attempt_cap', 'until', opening,
                'message', format('reached %s attempt(s) today for this number; next attempt after %s',
                                  a.max_attempts_per_number_per_day, opening));
        END IF;
        IF c.next_attempt_at > now_ts AND NOT reasons @> '[{"code": "outside_window"}]' AND NOT reasons @> '[{"code": "attempt_cap"}]' THEN
            reasons := reasons || jsonb_build_object('code', CASE WHEN c.attempts > 0 THEN 'retry_wait' ELSE 'scheduled' END,
                'until', c.next_attempt_at,
                'message', CASE WHEN c.attempts > 0 THEN 'waiting to retry until ' ELSE 'scheduled for ' END || c.next_attempt_at);
        END IF;
        IF EXISTS (SELECT 1 FROM dialer.calls k WHERE k.phone_number = c.phone_number
                    AND k.status IN ('dialing', 'in_progress', 'in_doubt')) THEN
            reasons := reasons || jsonb_build_object('code', 'live_call', 'message', 'another call to this number is in progress');
        END IF;
        IF b.status = 'processing' THEN
            IF b.in_progress_count >= b.max_concurrent THEN
                reasons := reasons || jsonb_build_object('code', 'max_concurrent',
                    'message', format('batch is at max_concurrent (%s calls in progress)', b.in_progress_count));
            END IF;
            IF b.rate_limited_until > now_ts THEN
                reasons := reasons || jsonb_build_object('code', 'rate_limited', 'until', b.rate_limited_until,
                    'message', 'the provider asked to wait (429) until ' || b.rate_limited_until);
            END IF;
            -- The account's state, never its secrets (this runs for tenants).
            SELECT p.rate_limited_until INTO account_held_until FROM dialer.provider_credentials p
              JOIN dialer.agent_mappings m ON m.agency_id = p.agency_id AND m.provider = p.provider
             WHERE m.id = coalesce(c.agent_mapping_id, b.agent_mapping_id);
            IF NOT FOUND THEN
                reasons := reasons || jsonb_build_object('code', 'no_credentials',
                    'message', 'no provider credentials for this agency (dialer.set_provider_credentials)');
            ELSIF account_held_until > now_ts THEN
                reasons := reasons || jsonb_build_object('code', 'rate_limited', 'until', account_held_until,
                    'message', 'the provider account asked to wait (429) until ' || account_held_until);
            END IF;
            IF b.next_slot_at > now_ts THEN
                reasons := reasons || jsonb_build_object('code', 'pacing', 'until', b.next_slot_at,
                    'message', format('waiting for a pacing slot (%s calls/min) at %s', b.calls_per_minute, b.next_slot_at));
            END IF;
            IF EXISTS (SELECT 1 FROM dialer.campaign_contacts o
                        WHERE o.batch_id = b.id AND o.status = 'queued' AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now_ts)
                          AND (o.priority, o.id) < (c.priority, c.id)) THEN
                reasons := reasons || jsonb_build_object('code', 'queued_behind', 'message', 'others are ahead of it in the queue');
            END IF;
        END IF;
        IF coalesce(current_setting('dialer.enabled', true), 'on') = 'off' THEN
            reasons := reasons || jsonb_build_object('code', 'worker_disabled', 'message', 'dialer.enabled is off');
        END IF;
    END IF;
    RETURN jsonb_build_object('contact_id', c.id, 'status', c.status, 'phone_number', c.phone_number,
        -- (a deadline still ahead is said, but does not hold the contact back)
        'dialable_now', c.status = 'queued' AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(reasons) e WHERE e->>'code' <> 'expires'),
        'reasons', reasons);
END $$;

-- A batch that stops dialing, or a number listed as do-not-call: at commit the worker checks the
-- calls it holds for a pacing slot still to come before they leave (dialer._withdraw_held).
CREATE TRIGGER call_batches_holds AFTER UPDATE OF status ON dialer.call_batches
    FOR EACH ROW WHEN (OLD.status = 'processing' AND NEW.status <> 'processing') EXECUTE FUNCTION dialer._changed_on_commit('holds');
CREATE TRIGGER do_not_call_holds AFTER INSERT ON dialer.do_not_call
    FOR EACH STATEMENT EXECUTE FUNCTION dialer._changed_on_commit('holds');
