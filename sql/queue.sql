-- pg_dialer call queue (call-queue-bullmq seed): a single call is a job, i.e. a contact in its
-- agency's default queue batch (call_batches.kind = 'queue'), dialed by the same engine as campaigns.
-- Job ids are campaign_contacts ids.

CREATE FUNCTION dialer._cron_next(p_cron text, p_tz text, p_after timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT to_timestamp(dialer._cron_next_epoch(p_cron, p_tz, extract(epoch FROM p_after)::float8))
$$;

CREATE FUNCTION dialer._priority_code(p_priority text)
RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    CASE lower(coalesce(p_priority, 'normal'))
        WHEN 'high' THEN RETURN 1;
        WHEN 'normal' THEN RETURN 2;
        WHEN 'low' THEN RETURN 3;
        ELSE RAISE EXCEPTION 'unknown priority %', quote_literal(p_priority)
                 USING ERRCODE = '22023', HINT = 'Use ''high'', ''normal'' or ''low''.';
    END CASE;
END $$;

CREATE FUNCTION dialer._priority_name(p_code integer)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_code WHEN 1 THEN 'high' WHEN 2 THEN 'normal' WHEN 3 THEN 'low' ELSE p_code::text END
$$;

-- With no agency given, the only agency is meant; with several, the caller must say which.
CREATE FUNCTION dialer._resolve_agency(p_agency_id bigint)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    n bigint;
    only_id bigint;
BEGIN
    IF p_agency_id IS NOT NULL THEN
        RETURN dialer._check_agency(p_agency_id);
    END IF;
    SELECT count(*), min(id) INTO n, only_id FROM dialer.agencies;
    IF n = 1 THEN
        RETURN only_id;
    ELSIF n = 0 THEN
        RAISE EXCEPTION 'no agency exists yet' USING ERRCODE = 'P0002',
            HINT = 'Create one with dialer.create_agency(name) first.';
    END IF;
    RAISE EXCEPTION 'agency_id is required: there are % agencies', n USING ERRCODE = '22023';
END $$;

CREATE FUNCTION dialer._resolve_mapping(p_agency_id bigint, p_mapping_id bigint)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    m bigint := p_mapping_id;
BEGIN
    IF m IS NULL THEN
        SELECT min(id) INTO m FROM dialer.agent_mappings WHERE agency_id = p_agency_id;
        IF m IS NULL THEN
            RAISE EXCEPTION 'agency % has no agent mapping', p_agency_id USING ERRCODE = 'P0002',
                HINT = 'Create one with dialer.create_agent_mapping(agency_id, provider, external_agent_id).';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM dialer.agent_mappings WHERE id = m AND agency_id = p_agency_id) THEN
        RAISE EXCEPTION 'agent mapping % does not exist for agency %', m, p_agency_id USING ERRCODE = 'P0002';
    END IF;
    PERFORM dialer._check_mapping_usable(m);
    RETURN m;
END $$;

-- The agency's default queue, created on first use with the seed's settings: 10 calls per 60 s,
-- 5 at once (CALL_WORKER_CONCURRENCY), 3 attempts, exponential back-off from 2 s, x2.
CREATE FUNCTION dialer._queue_batch(p_agency_id bigint, p_mapping_id bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    q bigint;
BEGIN
    SELECT id INTO q FROM dialer.call_batches WHERE agency_id = p_agency_id AND kind = 'queue';
    IF q IS NOT NULL THEN
        RETURN q;
    END IF;
    INSERT INTO dialer.call_batches (agency_id, agent_mapping_id, name, kind, status, calls_per_minute,
                                     max_concurrent, max_attempts, retry_delay, retry_backoff, started_at)
    VALUES (p_agency_id, p_mapping_id, 'default queue', 'queue', 'processing', 10, 5, 3, '2 seconds', 2, now())
    ON CONFLICT (agency_id) WHERE kind = 'queue' DO NOTHING
    RETURNING id INTO q;
    IF q IS NULL THEN
        SELECT id INTO q FROM dialer.call_batches WHERE agency_id = p_agency_id AND kind = 'queue';
    END IF;
    RETURN q;
END $$;

-- Inserts one job (arguments already checked). Returns its id; with a dedupe key already used in
-- this queue, the first job's id and nothing new.
CREATE FUNCTION dialer._enqueue(p_agency_id bigint, p_mapping_id bigint, p_to text, p_message text,
    p_priority integer, p_run_at timestamptz, p_metadata jsonb, p_lead_id text, p_dedupe_key text,
    p_recurring_id bigint DEFAULT NULL, p_expires_at timestamptz DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    q bigint := dialer._queue_batch(p_agency_id, p_mapping_id);
    job bigint;
BEGIN
    IF p_dedupe_key IS NOT NULL THEN
        SELECT id INTO job FROM dialer.campaign_contacts WHERE batch_id = q AND dedupe_key = p_dedupe_key;
        IF job IS NOT NULL THEN
            RETURN job;
        END IF;
    END IF;
    INSERT INTO dialer.campaign_contacts (batch_id, phone_number, variables, lead_ref, priority, status,
        next_attempt_at, is_job, agent_mapping_id, message, metadata, dedupe_key, recurring_call_id, timezone, expires_at)
    VALUES (q, p_to, jsonb_strip_nulls(jsonb_build_object('message', p_message)), p_lead_id, p_priority, 'queued',
            p_run_at, true, p_mapping_id, p_message, coalesce(p_metadata, '{}'), p_dedupe_key, p_recurring_id,
            dialer._zone_for_number(p_to), p_expires_at)
    ON CONFLICT (batch_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING id INTO job;
    IF job IS NULL THEN  -- a concurrent caller used the same dedupe key first
        SELECT id INTO job FROM dialer.campaign_contacts WHERE batch_id = q AND dedupe_key = p_dedupe_key;
        RETURN job;
    END IF;
    INSERT INTO dialer.queue_arrivals (batch_id) VALUES (q);
    -- Immediate: dialed at once (the worker claims from this queue first, and that claim is all
    -- its wake-up does). Delayed: a full pass, where the worker learns its next wake-up time.
    IF p_run_at IS NULL THEN
        PERFORM dialer._wake_on_commit_for(q);
    ELSE
        PERFORM dialer._wake_on_commit();
    END IF;
    RETURN job;
END $$;

CREATE FUNCTION dialer.schedule_call("to" text, agency_id bigint DEFAULT NULL, agent_mapping_id bigint DEFAULT NULL,
    message text DEFAULT NULL, priority text DEFAULT 'normal', run_at timestamptz DEFAULT NULL,
    delay interval DEFAULT NULL, metadata jsonb DEFAULT '{}', lead_id text DEFAULT NULL,
    dedupe_key text DEFAULT NULL, expires_at timestamptz DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    a bigint;
    m bigint;
    p integer;
    due timestamptz;
BEGIN
    PERFORM dialer._check_e164("to", 'to');
    p := dialer._priority_code(priority);
    IF run_at IS NOT NULL AND delay IS NOT NULL THEN
        RAISE EXCEPTION 'give run_at or delay, not both' USING ERRCODE = '22023';
    END IF;
    IF delay IS NOT NULL AND delay < interval '0' THEN
        RAISE EXCEPTION 'delay must not be negative, got %', delay USING ERRCODE = '22023';
    END IF;
    IF metadata IS NOT NULL AND jsonb_typeof(metadata) <> 'object' THEN
        RAISE EXCEPTION 'metadata must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF dedupe_key IS NOT NULL AND length(dedupe_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'dedupe_key must be 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    a := dialer._resolve_agency(agency_id);
    m := dialer._resolve_mapping(a, agent_mapping_id);
    due := coalesce(run_at, clock_timestamp() + delay);
    IF expires_at IS NOT NULL AND expires_at <= coalesce(due, clock_timestamp()) THEN
        RAISE EXCEPTION 'expires_at % is not after the time the call is due', expires_at USING ERRCODE = '22023',
            HINT = 'A job expires if it has not been dialed by expires_at: give a later time.';
    END IF;
    IF due <= clock_timestamp() THEN
        due := NULL;  -- immediate
    END IF;
    RETURN dialer._enqueue(a, m, "to", message, p, due, metadata, lead_id, dedupe_key, NULL, expires_at);
END $$;

-- All or nothing: every element is checked first (a bad one is named by its index), then each
-- is scheduled; any error rolls all of them back.
CREATE FUNCTION dialer.schedule_bulk_calls(calls jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    el jsonb;
    idx integer := 0;
    ids bigint[] := '{}';
    max_elements constant integer := 10000;
    k text;
BEGIN
    PERFORM dialer._check_json_list(calls, 'calls', max_elements, 'request', 'schedule_bulk_calls');
    FOR el IN SELECT value FROM jsonb_array_elements(calls) LOOP
        PERFORM dialer._check_json_element(el, 'calls', idx, 'to',
            '{to,agency_id,agent_mapping_id,message,priority,run_at,delay,metadata,lead_id,dedupe_key,expires_at}');
        IF el ? 'priority' AND (jsonb_typeof(el->'priority') <> 'string'
                                OR lower(el->>'priority') NOT IN ('high', 'normal', 'low')) THEN
            RAISE EXCEPTION 'calls[%].priority must be ''high'', ''normal'' or ''low''', idx USING ERRCODE = '22023';
        END IF;
        PERFORM dialer._check_json_field(el, 'calls', idx, 'metadata', ARRAY['object', 'null'], 'a JSON object');
        PERFORM dialer._check_json_field(el, 'calls', idx, 'message', ARRAY['string', 'null'], 'a string');
        FOREACH k IN ARRAY ARRAY['agency_id', 'agent_mapping_id'] LOOP
            IF el ? k AND (jsonb_typeof(el->k) <> 'number' OR (el->>k) !~ '^[0-9]{1,18}$') THEN
                RAISE EXCEPTION 'calls[%].% must be an id (a positive integer)', idx, k USING ERRCODE = '22P02';
            END IF;
        END LOOP;
        IF el ? 'run_at' AND el ? 'delay' THEN
            RAISE EXCEPTION 'calls[%]: give run_at or delay, not both', idx USING ERRCODE = '22023';
        END IF;
        BEGIN
            PERFORM (el->>'run_at')::timestamptz, (el->>'delay')::interval, (el->>'expires_at')::timestamptz;
        EXCEPTION WHEN data_exception THEN
            RAISE EXCEPTION 'calls[%]: run_at and expires_at must be timestamps and delay an interval (%)', idx, SQLERRM
                USING ERRCODE = '22023';
        END;
        IF (el->>'delay')::interval < interval '0' THEN
            RAISE EXCEPTION 'calls[%].delay must not be negative', idx USING ERRCODE = '22023';
        END IF;
        idx := idx + 1;
    END LOOP;

    idx := 0;
    FOR el IN SELECT value FROM jsonb_array_elements(calls) LOOP
        BEGIN
            ids := ids || dialer.schedule_call(
                el->>'to', (el->>'agency_id')::bigint, (el->>'agent_mapping_id')::bigint, el->>'message',
                coalesce(el->>'priority', 'normal'), (el->>'run_at')::timestamptz, (el->>'delay')::interval,
                coalesce(nullif(el->'metadata', 'null'::jsonb), '{}'), el->>'lead_id', el->>'dedupe_key',
                (el->>'expires_at')::timestamptz);
        EXCEPTION WHEN OTHERS THEN
            -- Re-raised with the element's index; the whole call rolls back.
            RAISE EXCEPTION 'calls[%]: %', idx, SQLERRM USING ERRCODE = SQLSTATE;
        END;
        idx := idx + 1;
    END LOOP;
    RETURN ids;
END $$;

CREATE FUNCTION dialer.schedule_recurring_call("to" text, cron text, timezone text DEFAULT 'UTC',
    agency_id bigint DEFAULT NULL, agent_mapping_id bigint DEFAULT NULL, message text DEFAULT NULL,
    priority text DEFAULT 'normal', metadata jsonb DEFAULT '{}', lead_id text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    a bigint;
    m bigint;
    p integer;
    first_run timestamptz;
    new_id bigint;
BEGIN
    PERFORM dialer._check_e164("to", 'to');
    PERFORM dialer._check_timezone(timezone);
    p := dialer._priority_code(priority);
    IF metadata IS NOT NULL AND jsonb_typeof(metadata) <> 'object' THEN
        RAISE EXCEPTION 'metadata must be a JSON object' USING ERRCODE = '22023';
    END IF;
    first_run := dialer._cron_next(cron, timezone, clock_timestamp());  -- also validates cron and zone
    a := dialer._resolve_agency(agency_id);
    m := dialer._resolve_mapping(a, agent_mapping_id);
    INSERT INTO dialer.recurring_calls (agency_id, agent_mapping_id, phone_number, cron, timezone, next_run_at, template)
    VALUES (a, m, "to", btrim(cron), timezone, first_run,
            jsonb_strip_nulls(jsonb_build_object('message', message, 'priority', p,
                                                 'metadata', coalesce(metadata, '{}'), 'lead_id', lead_id)))
    RETURNING id INTO new_id;
    PERFORM dialer._wake_on_commit();  -- the worker's next wake-up includes this schedule
    RETURN new_id;
END $$;

CREATE FUNCTION dialer.cancel_recurring_call(id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dialer.recurring_calls r SET active = false, next_run_at = NULL
     WHERE r.id = cancel_recurring_call.id AND r.active;
    RETURN FOUND;
END $$;

-- Each due occurrence becomes one job, exactly once (the row is locked while it is promoted).
-- Occurrences missed while the worker was down give one catch-up job, not a burst.
CREATE FUNCTION dialer._promote_recurring(p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
    r dialer.recurring_calls;
BEGIN
    FOR r IN SELECT * FROM dialer.recurring_calls
              WHERE active AND next_run_at <= p_now
              ORDER BY next_run_at
                FOR UPDATE SKIP LOCKED LOOP
        PERFORM dialer._enqueue(r.agency_id, r.agent_mapping_id, r.phone_number, r.template->>'message',
            coalesce((r.template->>'priority')::integer, 2), NULL,
            coalesce(r.template->'metadata', '{}')
                || jsonb_build_object('recurring_call_id', r.id, 'occurrence', r.next_run_at),
            r.template->>'lead_id',
            format('recurring:%s:%s', r.id, extract(epoch FROM r.next_run_at)::bigint), r.id);
        UPDATE dialer.recurring_calls
           SET last_run_at = r.next_run_at,
               next_run_at = dialer._cron_next(r.cron, r.timezone, greatest(p_now, r.next_run_at))
         WHERE id = r.id;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION dialer._job_state(p_status text, p_next_attempt_at timestamptz, p_batch_status text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN p_status = 'in_progress' THEN 'active'
        WHEN p_status = 'completed' THEN 'completed'
        WHEN p_status IN ('failed', 'in_doubt') THEN 'failed'
        WHEN p_status = 'cancelled' THEN 'cancelled'
        WHEN p_status = 'expired' THEN 'expired'
        WHEN p_batch_status = 'paused' THEN 'paused'
        WHEN p_next_attempt_at > clock_timestamp() THEN 'delayed'
        ELSE 'waiting'
    END
$$;

CREATE FUNCTION dialer._job_json(c dialer.campaign_contacts, b dialer.call_batches)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'jobId', c.id,
        'state', dialer._job_state(c.status, c.next_attempt_at, b.status),
        'progress', CASE c.status WHEN 'completed' THEN 100 WHEN 'in_progress' THEN 50 ELSE 0 END,
        'data', jsonb_build_object(
            'to', c.phone_number, 'message', c.message, 'lead_id', c.lead_ref,
            'priority', dialer._priority_name(c.priority), 'metadata', c.metadata,
            'run_at', c.next_attempt_at, 'agency_id', b.agency_id, 'batch_id', c.batch_id,
            'agent_mapping_id', coalesce(c.agent_mapping_id, b.agent_mapping_id), 'call_id', c.call_id,
            'recurring_call_id', c.recurring_call_id, 'created_at', c.created_at),
        'attemptsMade', c.attempts,
        'failedReason', CASE WHEN c.status IN ('failed', 'in_doubt', 'cancelled', 'expired') THEN c.last_error END,
        'expiresAt', c.expires_at)
$$;

-- A job (p_lock: locked FOR UPDATE), or P0002 when there is none.
CREATE FUNCTION dialer._job(p_job_id bigint, p_lock boolean)
RETURNS dialer.campaign_contacts LANGUAGE plpgsql AS $$
DECLARE
    c dialer.campaign_contacts;
BEGIN
    IF p_lock THEN
        SELECT * INTO c FROM dialer.campaign_contacts WHERE id = p_job_id FOR UPDATE;
    ELSE
        SELECT * INTO c FROM dialer.campaign_contacts WHERE id = p_job_id;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', coalesce(p_job_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
    RETURN c;
END $$;

CREATE FUNCTION dialer.job_status(job_id bigint)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    c dialer.campaign_contacts := dialer._job(job_id, false);
    b dialer.call_batches;
BEGIN
    SELECT * INTO b FROM dialer.call_batches WHERE id = c.batch_id;
    RETURN dialer._job_json(c, b);
END $$;

-- A job moves to p_to from one of p_from, locked (p_last_error, if given, says why); from any
-- other status a notice says why not (p_refusal: a format() text given the job id and its status)
-- and the answer is NULL.
CREATE FUNCTION dialer._move_job(p_job_id bigint, p_from text[], p_to text, p_refusal text, p_last_error text DEFAULT NULL)
RETURNS dialer.campaign_contacts LANGUAGE plpgsql AS $$
DECLARE
    c dialer.campaign_contacts := dialer._job(p_job_id, true);
BEGIN
    IF c.status <> ALL (p_from) THEN
        RAISE NOTICE '%', format(p_refusal, p_job_id, replace(c.status, 'in_progress', 'dialing or in a call'));
        RETURN NULL;
    END IF;
    UPDATE dialer.campaign_contacts SET status = p_to, last_error = coalesce(p_last_error, last_error), updated_at = clock_timestamp()
     WHERE id = c.id RETURNING * INTO c;
    RETURN c;
END $$;

-- Only a job not yet dialing can be cancelled; a call already placed goes on.
CREATE FUNCTION dialer.cancel_job(job_id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c dialer.campaign_contacts := dialer._move_job(job_id, '{pending,queued}', 'cancelled',
                                                   'job %s is already %s and cannot be cancelled', 'cancelled by cancel_job');
BEGIN
    IF c.id IS NOT NULL THEN
        PERFORM dialer._count_arrivals(c.batch_id);
        UPDATE dialer.call_batches SET queued_count = greatest(queued_count - 1, 0) WHERE id = c.batch_id;
    END IF;
    RETURN c.id IS NOT NULL;
END $$;

-- A failed job goes back to waiting with a fresh set of attempts.
CREATE FUNCTION dialer.retry_job(job_id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c dialer.campaign_contacts := dialer._move_job(job_id, '{failed}', 'queued', 'job %s is %s, only failed jobs can be retried');
BEGIN
    IF c.id IS NULL THEN
        RETURN false;
    END IF;
    UPDATE dialer.campaign_contacts SET attempts = 0, next_attempt_at = NULL WHERE id = c.id;
    UPDATE dialer.call_batches
       SET queued_count = queued_count + 1, failed_count = greatest(failed_count - 1, 0),
           status = CASE WHEN status = 'completed' THEN 'processing' ELSE status END, completed_at = NULL
     WHERE id = c.batch_id;
    PERFORM dialer._wake_on_commit();
    RETURN true;
END $$;

CREATE FUNCTION dialer.queue_stats(batch_id bigint DEFAULT NULL)
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
               'expired', count(*) FILTER (WHERE st = 'expired'),
               'total', count(*))
      INTO result
      FROM (SELECT dialer._job_state(c.status, c.next_attempt_at, b.status) AS st
              FROM dialer.campaign_contacts c JOIN dialer.call_batches b ON b.id = c.batch_id
             WHERE CASE WHEN queue_stats.batch_id IS NULL THEN b.kind = 'queue'
                        ELSE b.id = queue_stats.batch_id END) s;
    RETURN result;
END $$;

CREATE FUNCTION dialer.list_jobs(state text, start integer DEFAULT 0, "end" integer DEFAULT 10)
RETURNS SETOF jsonb LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF state IS NULL OR state NOT IN ('waiting', 'active', 'completed', 'failed', 'delayed', 'paused', 'cancelled', 'expired') THEN
        RAISE EXCEPTION 'unknown job state %', coalesce(quote_literal(state), 'NULL') USING ERRCODE = '22023',
            HINT = 'Use waiting, active, completed, failed, delayed, paused or cancelled.';
    END IF;
    IF start IS NULL OR start < 0 OR "end" IS NULL OR "end" < start THEN
        RAISE EXCEPTION 'start and end must satisfy 0 <= start <= end (end is inclusive), got % and %', start, "end"
            USING ERRCODE = '22023';
    END IF;
    -- Waiting jobs in the order they will be dialed; delayed by due time; the rest newest first.
    RETURN QUERY
        SELECT dialer._job_json(c, b)
          FROM dialer.campaign_contacts c JOIN dialer.call_batches b ON b.id = c.batch_id
         WHERE b.kind = 'queue' AND dialer._job_state(c.status, c.next_attempt_at, b.status) = list_jobs.state
         ORDER BY CASE WHEN list_jobs.state IN ('waiting', 'paused') THEN c.priority END,
                  CASE WHEN list_jobs.state = 'delayed' THEN c.next_attempt_at END,
                  CASE WHEN list_jobs.state IN ('waiting', 'paused', 'delayed') THEN c.id END,
                  c.updated_at DESC, c.id DESC
         OFFSET start LIMIT "end" - start + 1;
END $$;

-- Contacts about to be deleted (clean_jobs, dialer._prune) leave their batches' counters.
CREATE FUNCTION dialer._uncount_contacts(p_ids bigint[])
RETURNS void LANGUAGE sql AS $$
    UPDATE dialer.call_batches b
       SET total_contacts = greatest(total_contacts - x.cnt, 0),
           completed_count = greatest(completed_count - x.done, 0),
           failed_count = greatest(failed_count - x.failed, 0)
      FROM (SELECT c.batch_id, count(*) AS cnt,
                   count(*) FILTER (WHERE c.status = 'completed') AS done,
                   count(*) FILTER (WHERE c.status = 'failed') AS failed
              FROM dialer.campaign_contacts c WHERE c.id = ANY (p_ids) GROUP BY c.batch_id) x
     WHERE b.id = x.batch_id
$$;

-- Removes finished queue jobs (and their call records) older than grace. Returns how many.
CREATE FUNCTION dialer.clean_jobs(grace interval, "limit" integer DEFAULT 1000, state text DEFAULT 'completed')
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    doomed bigint[];
    n integer;
BEGIN
    IF state IS NULL OR state NOT IN ('completed', 'failed', 'cancelled', 'expired') THEN
        RAISE EXCEPTION 'clean_jobs cleans completed, failed, cancelled or expired jobs, not %', coalesce(quote_literal(state), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF grace IS NULL OR grace < interval '0' THEN
        RAISE EXCEPTION 'grace must not be negative' USING ERRCODE = '22023';
    END IF;
    IF "limit" IS NULL OR "limit" <= 0 THEN
        RAISE EXCEPTION 'limit must be a positive integer' USING ERRCODE = '22023';
    END IF;
    SELECT coalesce(array_agg(id), '{}') INTO doomed FROM (
        SELECT c.id FROM dialer.campaign_contacts c JOIN dialer.call_batches b ON b.id = c.batch_id
         WHERE b.kind = 'queue'
           AND c.status = ANY (CASE clean_jobs.state WHEN 'failed' THEN ARRAY['failed', 'in_doubt']
                                                     ELSE ARRAY[clean_jobs.state] END)
           AND c.updated_at < clock_timestamp() - grace
         ORDER BY c.updated_at
         LIMIT "limit"
           FOR UPDATE OF c) d;
    n := cardinality(doomed);
    IF n = 0 THEN
        RETURN 0;
    END IF;
    PERFORM dialer._uncount_contacts(doomed);
    UPDATE dialer.campaign_contacts SET call_id = NULL WHERE id = ANY (doomed);
    DELETE FROM dialer.calls WHERE contact_id = ANY (doomed);
    DELETE FROM dialer.campaign_contacts WHERE id = ANY (doomed);
    RETURN n;
END $$;

-- Nothing is posted from a paused queue; its jobs keep their order.
CREATE FUNCTION dialer.pause_queue(agency_id bigint DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    a record;
BEGIN
    IF agency_id IS NOT NULL THEN
        PERFORM dialer._check_agency(agency_id);
    END IF;
    -- Create the queue of agencies that have none yet, so a job scheduled later is paused too.
    FOR a IN SELECT g.id, min(m.id) AS mapping_id FROM dialer.agencies g JOIN dialer.agent_mappings m ON m.agency_id = g.id
              WHERE pause_queue.agency_id IS NULL OR g.id = pause_queue.agency_id GROUP BY g.id LOOP
        PERFORM dialer._queue_batch(a.id, a.mapping_id);
    END LOOP;
    UPDATE dialer.call_batches b SET status = 'paused'
     WHERE b.kind = 'queue' AND b.status <> 'paused'
       AND (pause_queue.agency_id IS NULL OR b.agency_id = pause_queue.agency_id);
END $$;

CREATE FUNCTION dialer.resume_queue(agency_id bigint DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dialer.call_batches b SET status = 'processing'
     WHERE b.kind = 'queue' AND b.status = 'paused'
       AND (resume_queue.agency_id IS NULL OR b.agency_id = resume_queue.agency_id);
    PERFORM dialer._wake_on_commit();
END $$;

-- Per-agency queue settings (defaults are the seed's: 10 calls / 60 s, 5 at once, 3 attempts,
-- back-off 2 s x2).
CREATE FUNCTION dialer.set_queue_options(agency_id bigint, calls_per_minute integer DEFAULT NULL,
    max_concurrent integer DEFAULT NULL, max_attempts integer DEFAULT NULL, retry_delay interval DEFAULT NULL,
    retry_backoff numeric DEFAULT NULL, on_voicemail text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    q bigint;
BEGIN
    PERFORM dialer._check_agency(agency_id);
    IF calls_per_minute IS NOT NULL THEN PERFORM dialer._check_positive(calls_per_minute, 'calls_per_minute'); END IF;
    IF max_concurrent IS NOT NULL THEN PERFORM dialer._check_positive(max_concurrent, 'max_concurrent'); END IF;
    IF max_attempts IS NOT NULL THEN PERFORM dialer._check_positive(max_attempts, 'max_attempts'); END IF;
    IF retry_delay IS NOT NULL AND retry_delay < interval '0' THEN
        RAISE EXCEPTION 'retry_delay must not be negative' USING ERRCODE = '22023';
    END IF;
    IF retry_backoff IS NOT NULL AND retry_backoff < 1 THEN
        RAISE EXCEPTION 'retry_backoff must be 1 or more' USING ERRCODE = '22023';
    END IF;
    PERFORM dialer._check_on_voicemail(on_voicemail);
    q := dialer._queue_batch(agency_id, dialer._resolve_mapping(agency_id, NULL));
    UPDATE dialer.call_batches b
       SET calls_per_minute = coalesce(set_queue_options.calls_per_minute, b.calls_per_minute),
           max_concurrent = coalesce(set_queue_options.max_concurrent, b.max_concurrent),
           max_attempts = coalesce(set_queue_options.max_attempts, b.max_attempts),
           retry_delay = coalesce(set_queue_options.retry_delay, b.retry_delay),
           retry_backoff = coalesce(set_queue_options.retry_backoff, b.retry_backoff),
           on_voicemail = coalesce(set_queue_options.on_voicemail, b.on_voicemail),
           -- a new rate takes effect now, not after the old spacing
           next_slot_at = CASE WHEN set_queue_options.calls_per_minute IS NULL THEN b.next_slot_at END
     WHERE b.id = q;
    PERFORM dialer._wake_on_commit();  -- a higher rate or limit counts from now
END $$;
