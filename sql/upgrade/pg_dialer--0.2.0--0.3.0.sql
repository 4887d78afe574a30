-- pg_dialer 0.2.0 → 0.3.0 (ALTER EXTENSION pg_dialer UPDATE TO '0.3.0').
--
-- Real provider contracts: Ultravox calls with an agent go to /api/agents/{id}/calls with the
-- carrier's outgoing medium (new column agent_mappings.carrier, Telnyx by default, and a new
-- create_agent_mapping argument); mappings are checked against their provider's API whenever
-- they are stored (a trigger), and again before a batch or job uses one stored earlier. Vapi,
-- Retell and Bland join the providers. End reasons arrive in pg_dialer's own words.
-- Tenants: the JWT claim counts only for dialer.jwt_roles; NOTIFY events carry ids only; a
-- base_url is the owner's or dialer_admin's to set, only to dialer.allowed_hosts, and bound to its
-- key; webhooks that cannot be verified are refused; a contact whose calling window never opens
-- is not dialed. Provider keys and webhook secrets are encrypted at rest (dialer.key_file): the
-- keys already stored are encrypted by this update.
\echo Use "ALTER EXTENSION pg_dialer UPDATE TO '0.3.0'" to load this file. \quit

ALTER TABLE dialer.provider_credentials DROP CONSTRAINT provider_credentials_provider_check,
    ADD CONSTRAINT provider_credentials_provider_check
        CHECK (provider IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook'));
ALTER TABLE dialer.agent_mappings DROP CONSTRAINT agent_mappings_provider_check,
    ADD CONSTRAINT agent_mappings_provider_check
        CHECK (provider IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook')),
    ALTER COLUMN external_agent_id DROP NOT NULL,
    ADD COLUMN carrier text CHECK (carrier IN ('telnyx', 'twilio', 'plivo'));
-- Webhooks that cannot be verified are refused unless the operator allows them per account.
ALTER TABLE dialer.provider_credentials ADD COLUMN allow_unsigned_webhooks boolean NOT NULL DEFAULT false;
-- Existing Ultravox mappings dialed through Telnyx (the only medium 0.2.0 sent).
UPDATE dialer.agent_mappings SET carrier = 'telnyx' WHERE provider = 'ultravox';

-- create_agent_mapping takes the carrier.
DROP FUNCTION dialer.create_agent_mapping(bigint, text, text, text, text, jsonb);

CREATE FUNCTION dialer."_check_agent_mapping"(
	"provider" TEXT,
	"external_agent_id" TEXT,
	"from_number" TEXT,
	"carrier" TEXT,
	"request_template" jsonb
) RETURNS void
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_check_agent_mapping_wrapper';

CREATE FUNCTION dialer."_check_base_url"(
	"base_url" TEXT
) RETURNS void
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_check_base_url_wrapper';

CREATE FUNCTION dialer."_jwt_roles"() RETURNS TEXT[]
STABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_jwt_roles_wrapper';

CREATE FUNCTION dialer."_seal"(
	"plaintext" TEXT,
	"agency_id" bigint,
	"provider" TEXT,
	"column" TEXT
) RETURNS TEXT
VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_seal_wrapper';

CREATE FUNCTION dialer."_unseal"(
	"stored" TEXT,
	"agency_id" bigint,
	"provider" TEXT,
	"column" TEXT
) RETURNS TEXT
VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_unseal_wrapper';

CREATE FUNCTION dialer."rotate_encryption_key"() RETURNS bigint
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rotate_encryption_key_wrapper';

CREATE FUNCTION dialer."_json_depth"(
	"json" TEXT
) RETURNS INT
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_json_depth_wrapper';

-- Bounds on what a tenant gives: rates and counts the pacing arithmetic can take (values over
-- them, possible before, are brought down to the bound).
UPDATE dialer.call_batches SET calls_per_minute = least(calls_per_minute, 6000000),
       max_concurrent = least(max_concurrent, 1000000), max_attempts = least(max_attempts, 1000),
       retry_delay = least(retry_delay, interval '30 days'), retry_backoff = least(retry_backoff, 10)
 WHERE calls_per_minute > 6000000 OR max_concurrent > 1000000 OR max_attempts > 1000
    OR retry_delay > interval '30 days' OR retry_backoff > 10;
ALTER TABLE dialer.call_batches
    DROP CONSTRAINT call_batches_calls_per_minute_check,
    ADD CONSTRAINT call_batches_calls_per_minute_check CHECK (calls_per_minute BETWEEN 1 AND 6000000),
    DROP CONSTRAINT call_batches_max_concurrent_check,
    ADD CONSTRAINT call_batches_max_concurrent_check CHECK (max_concurrent BETWEEN 1 AND 1000000),
    DROP CONSTRAINT call_batches_max_attempts_check,
    ADD CONSTRAINT call_batches_max_attempts_check CHECK (max_attempts BETWEEN 1 AND 1000),
    DROP CONSTRAINT call_batches_retry_delay_check,
    ADD CONSTRAINT call_batches_retry_delay_check CHECK (retry_delay BETWEEN '0' AND '30 days'),
    DROP CONSTRAINT call_batches_retry_backoff_check,
    ADD CONSTRAINT call_batches_retry_backoff_check CHECK (retry_backoff BETWEEN 1 AND 10);

-- Functions new or changed since 0.2.0 (scripts/upgrade-functions.py lists them).
-- _agent_mapping_checked: new
CREATE OR REPLACE FUNCTION dialer._agent_mapping_checked()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._check_agent_mapping(NEW.provider, NEW.external_agent_id, NEW.from_number, NEW.carrier,
                                        NEW.request_template);
    RETURN NEW;
END $$;

-- _assign_followup: changed
CREATE OR REPLACE FUNCTION dialer._assign_followup(p_followup_id bigint)
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

-- _caller: new
CREATE OR REPLACE FUNCTION dialer._caller()
RETURNS name LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN current_user <> 'dialer_api' THEN current_user
                WHEN current_setting('role') <> 'none' THEN current_setting('role')::name
                ELSE session_user END
$$;

-- _caller_is_operator: new
CREATE OR REPLACE FUNCTION dialer._caller_is_operator()
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(bool_or(r.rolsuper OR r.rolbypassrls OR pg_has_role(r.oid, 'dialer_admin', 'MEMBER')
                            OR pg_has_role(r.oid, (SELECT e.extowner FROM pg_extension e WHERE e.extname = 'pg_dialer'), 'MEMBER')),
                    false)
      FROM pg_roles r WHERE r.rolname = dialer._caller()
$$;

-- _check_mapping_usable: new
CREATE OR REPLACE FUNCTION dialer._check_mapping_usable(p_mapping_id bigint)
RETURNS void LANGUAGE plpgsql STABLE AS $$
DECLARE
    m dialer.agent_mappings;
BEGIN
    SELECT * INTO m FROM dialer.agent_mappings WHERE id = p_mapping_id;
    IF FOUND THEN
        PERFORM dialer._check_agent_mapping(m.provider, m.external_agent_id, m.from_number, m.carrier, m.request_template);
    END IF;
END $$;

-- _check_provider: changed
CREATE OR REPLACE FUNCTION dialer._check_provider(p_provider text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
#variable_conflict use_column
BEGIN
    IF p_provider IS NULL OR p_provider NOT IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook') THEN
        RAISE EXCEPTION 'unknown provider %', coalesce(quote_literal(p_provider), 'NULL')
            USING ERRCODE = '22023',
            HINT = 'The providers are ''ultravox'', ''twilio'', ''vapi'', ''retell'', ''bland'' and ''webhook''.';
    END IF;
    RETURN p_provider;
END $$;

-- _compliance_prepare: changed
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
        -- No opening within a year (every day a holiday): not dialed; looked at again tomorrow.
        UPDATE dialer.campaign_contacts c
           SET next_attempt_at = coalesce(o.opening, p_now + interval '1 day'), updated_at = p_now
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

-- _hand_off: changed
CREATE OR REPLACE FUNCTION dialer._hand_off(p_contact_id bigint, p_reason text, p_priority boolean)
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

-- _json_bounded: new
CREATE OR REPLACE FUNCTION dialer._json_bounded()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_column_size(NEW.variables) > 65536 OR pg_column_size(NEW.metadata) > 65536 THEN
        RAISE EXCEPTION 'a contact''s variables and metadata are at most 64 kB each' USING ERRCODE = '54000';
    END IF;
    IF dialer._json_depth(NEW.variables::text) > 32 OR dialer._json_depth(NEW.metadata::text) > 32 THEN
        RAISE EXCEPTION 'a contact''s variables and metadata nest at most 32 levels deep' USING ERRCODE = '54000';
    END IF;
    RETURN NEW;
END $$;

-- _notify: changed
CREATE OR REPLACE FUNCTION dialer._notify(p_event text, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('dialer_events', (jsonb_build_object('event', p_event, 'at', clock_timestamp())
        || (SELECT coalesce(jsonb_object_agg(key, value), '{}') FROM jsonb_each(p_payload)
             WHERE key IN ('contact_id', 'batch_id', 'agency_id', 'telecaller_id', 'call_id', 'job_id',
                           'handoff', 'priority', 'attempts', 'attempt', 'http_status', 'review_at')
               AND jsonb_typeof(value) IN ('number', 'boolean', 'null')
                OR key IN ('handoff', 'review_at')))::text)
$$;

-- _outcome_of_end_reason: changed
CREATE OR REPLACE FUNCTION dialer._outcome_of_end_reason(p_reason text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_reason IN ('invalid_number', 'invalid-number') THEN 'trashed'
        WHEN p_reason IN ('no-answer', 'busy', 'voicemail', 'failed', 'canceled',
                          'no_answer', 'unjoined', 'connection_error', 'system_error', 'machine', 'cancelled') THEN 'ai_failed'
        ELSE NULL   -- ended normally: the application's disposition says how it went
    END
$$;

-- _provider_credentials_guarded: new
CREATE OR REPLACE FUNCTION dialer._provider_credentials_guarded()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_url text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.base_url END;
BEGIN
    IF NEW.base_url IS DISTINCT FROM old_url AND NEW.base_url IS NOT NULL THEN
        IF NOT dialer._caller_is_operator() THEN
            RAISE EXCEPTION 'only the extension owner or dialer_admin may set a base_url'
                USING ERRCODE = '42501', HINT = 'Store the key without base_url: requests go to the provider''s own API.';
        END IF;
        PERFORM dialer._check_base_url(NEW.base_url);
    END IF;
    -- Stored encrypted, whoever writes the row (a value already sealed is kept as it is).
    NEW.api_key := dialer._seal(NEW.api_key, NEW.agency_id, NEW.provider, 'api_key');
    NEW.webhook_secret := dialer._seal(NEW.webhook_secret, NEW.agency_id, NEW.provider, 'webhook_secret');
    IF TG_OP = 'UPDATE' AND NEW.base_url IS DISTINCT FROM OLD.base_url AND NEW.api_key IS NOT DISTINCT FROM OLD.api_key
       AND coalesce(current_setting('pg_dialer.key_given', true), '') <> 'on' THEN
        RAISE EXCEPTION 'changing base_url needs the api_key again: a key is bound to the host it was stored with'
            USING ERRCODE = '22023', HINT = 'Use dialer.set_provider_credentials(agency_id, provider, api_key, base_url, ...).';
    END IF;
    RETURN NEW;
END $$;

-- _record_dispatch: changed
CREATE OR REPLACE FUNCTION dialer._record_dispatch(p_results jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
    k dialer.calls;
    b dialer.call_batches;
    c dialer.campaign_contacts;
    outcome text;
    backoff interval;
    initiated integer := 0;
    failed integer := 0;
    rate_limited integer := 0;
    retried integer := 0;
    doubtful integer := 0;
    now_ts timestamptz := clock_timestamp();
BEGIN
    -- Accepted calls (nearly all of them) in one statement: the call row goes in_progress.
    UPDATE dialer.calls acc
       SET status = 'in_progress', provider_call_id = a.provider_call_id, http_status = a.http_status,
           latency_ms = a.latency_ms, request = a.request, response = a.response,
           dispatched_at = to_timestamp(a.dispatched_at_ms / 1000.0)
      FROM jsonb_to_recordset(p_results) AS a(call_id bigint, outcome text, provider_call_id text, http_status integer,
                                                latency_ms double precision, dispatched_at_ms double precision,
                                                request jsonb, response jsonb)
     WHERE a.outcome = 'accepted' AND acc.id = a.call_id AND acc.status = 'dialing';
    GET DIAGNOSTICS initiated = ROW_COUNT;

    FOR r IN SELECT value FROM jsonb_array_elements(p_results) WHERE value->>'outcome' <> 'accepted' LOOP
        SELECT * INTO k FROM dialer.calls WHERE id = (r->>'call_id')::bigint AND status = 'dialing' FOR UPDATE;
        CONTINUE WHEN NOT FOUND;  -- already settled (e.g. adopted by a reconcile)
        SELECT * INTO c FROM dialer.campaign_contacts WHERE id = k.contact_id FOR UPDATE;
        SELECT * INTO b FROM dialer.call_batches WHERE id = k.batch_id;
        outcome := r->>'outcome';

        UPDATE dialer.calls
           SET status = CASE outcome WHEN 'accepted' THEN 'in_progress' WHEN 'rate_limited' THEN 'rate_limited'
                                     WHEN 'network_error' THEN 'network_error' WHEN 'timeout' THEN 'in_doubt'
                                     ELSE 'failed' END,
               provider_call_id = r->>'provider_call_id',
               http_status = (r->>'http_status')::integer,
               latency_ms = (r->>'latency_ms')::double precision,
               error = r->>'error',
               request = r->'request',
               response = r->'response',
               dispatched_at = to_timestamp((r->>'dispatched_at_ms')::double precision / 1000.0)
         WHERE id = k.id;

        IF outcome = 'rate_limited' THEN
            -- Not an attempt: back to the queue, the whole batch waits for Retry-After.
            rate_limited := rate_limited + 1;
            backoff := make_interval(secs => greatest(coalesce((r->>'retry_after_secs')::double precision, 60), 0));
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
            PERFORM dialer.update_batch_progress(b.id, in_progress_delta => -1);
        ELSIF outcome = 'network_error' THEN
            -- The request never reached the provider: retried, and not counted as an attempt.
            retried := retried + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'queued', attempts = greatest(attempts - 1, 0),
                   next_attempt_at = now_ts + greatest(b.retry_delay, interval '1 second'),
                   updated_at = now_ts, last_error = r->>'error'
             WHERE id = c.id;
            UPDATE dialer.call_batches SET queued_count = queued_count + 1 WHERE id = b.id;
            PERFORM dialer.update_batch_progress(b.id, in_progress_delta => -1);
        ELSIF outcome = 'timeout' THEN
            -- The request may have reached the provider: never redialed blindly.
            doubtful := doubtful + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'in_doubt', updated_at = now_ts, last_error = r->>'error'
             WHERE id = c.id;
            PERFORM dialer.update_batch_progress(b.id, in_progress_delta => -1);
        ELSIF c.attempts < b.max_attempts THEN
            retried := retried + 1;
            backoff := b.retry_delay * power(b.retry_backoff, greatest(c.attempts - 1, 0))::double precision;
            UPDATE dialer.campaign_contacts
               SET status = 'queued', next_attempt_at = now_ts + backoff, updated_at = now_ts,
                   last_error = r->>'error'
             WHERE id = c.id;
            UPDATE dialer.call_batches SET queued_count = queued_count + 1 WHERE id = b.id;
            PERFORM dialer.update_batch_progress(b.id, in_progress_delta => -1);
        ELSE
            failed := failed + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'failed', updated_at = now_ts, last_error = r->>'error', outcome = 'ai_failed'
             WHERE id = c.id;
            UPDATE dialer.call_batches SET last_error = r->>'error' WHERE id = b.id;
            PERFORM dialer.update_batch_progress(b.id, failed_delta => 1, in_progress_delta => -1);
            PERFORM dialer._notify('max_retries_exceeded', jsonb_build_object('contact_id', c.id, 'batch_id', b.id,
                'agency_id', b.agency_id, 'attempts', c.attempts));
            -- The seed's fallback: the humans take over, first in line.
            PERFORM dialer._hand_off(c.id, r->>'error', true);
        END IF;
        IF outcome = 'failed' AND current_setting('dialer.notify_failures', true) = 'on' THEN
            PERFORM dialer._notify('call_failed', jsonb_build_object('contact_id', c.id, 'batch_id', b.id,
                'agency_id', b.agency_id, 'attempt', c.attempts, 'http_status', r->'http_status'));
        END IF;
    END LOOP;
    RETURN jsonb_build_object('initiated', initiated, 'failed', failed, 'rate_limited', rate_limited,
                              'retried', retried, 'in_doubt', doubtful);
END $$;

-- _resolve_mapping: changed
CREATE OR REPLACE FUNCTION dialer._resolve_mapping(p_agency_id bigint, p_mapping_id bigint)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    found_id bigint;
BEGIN
    IF p_mapping_id IS NULL THEN
        SELECT min(id) INTO found_id FROM dialer.agent_mappings WHERE agency_id = p_agency_id;
        IF found_id IS NULL THEN
            RAISE EXCEPTION 'agency % has no agent mapping', p_agency_id USING ERRCODE = 'P0002',
                HINT = 'Create one with dialer.create_agent_mapping(agency_id, provider, external_agent_id).';
        END IF;
        PERFORM dialer._check_mapping_usable(found_id);
        RETURN found_id;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM dialer.agent_mappings WHERE id = p_mapping_id AND agency_id = p_agency_id) THEN
        RAISE EXCEPTION 'agent mapping % does not exist for agency %', p_mapping_id, p_agency_id USING ERRCODE = 'P0002';
    END IF;
    PERFORM dialer._check_mapping_usable(p_mapping_id);
    RETURN p_mapping_id;
END $$;

-- _retry_outcome: changed
CREATE OR REPLACE FUNCTION dialer._retry_outcome(p_end_reason text)
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

-- _same_agency: new
CREATE OR REPLACE FUNCTION dialer._same_agency()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean;
BEGIN
    IF TG_TABLE_NAME = 'campaign_contacts' THEN
        IF NEW.agent_mapping_id IS NULL THEN
            RETURN NEW;
        END IF;
        SELECT m.agency_id = b.agency_id INTO ok FROM dialer.agent_mappings m, dialer.call_batches b
         WHERE m.id = NEW.agent_mapping_id AND b.id = NEW.batch_id;
    ELSE
        IF NEW.telecaller_id IS NULL THEN
            RETURN NEW;
        END IF;
        SELECT t.agency_id = b.agency_id INTO ok FROM dialer.telecallers t, dialer.campaign_contacts c
          JOIN dialer.call_batches b ON b.id = c.batch_id
         WHERE t.id = NEW.telecaller_id AND c.id = NEW.contact_id;
    END IF;
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION '% row refers to another agency''s %', TG_TABLE_NAME,
            CASE TG_TABLE_NAME WHEN 'campaign_contacts' THEN 'agent mapping' ELSE 'telecaller' END
            USING ERRCODE = '23503';
    END IF;
    RETURN NEW;
END $$;

-- allow_unsigned_webhooks: new
CREATE OR REPLACE FUNCTION dialer.allow_unsigned_webhooks(agency_id bigint, provider text, allow boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    UPDATE dialer.provider_credentials pc SET allow_unsigned_webhooks = coalesce(allow, false), updated_at = now()
     WHERE pc.agency_id = allow_unsigned_webhooks.agency_id AND pc.provider = allow_unsigned_webhooks.provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no % credentials for agency %', provider, agency_id USING ERRCODE = 'P0002',
            HINT = 'Store them first with dialer.set_provider_credentials(...).';
    END IF;
END $$;

-- create_agent_mapping: changed
CREATE OR REPLACE FUNCTION dialer.create_agent_mapping(agency_id bigint, provider text, external_agent_id text,
    agent_name text DEFAULT NULL, from_number text DEFAULT NULL, request_template jsonb DEFAULT '{}',
    carrier text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    PERFORM dialer._check_agency(agency_id);
    PERFORM dialer._check_provider(provider);
    IF from_number IS NOT NULL THEN
        PERFORM dialer._check_e164(from_number, 'from_number');
    END IF;
    IF request_template IS NULL OR jsonb_typeof(request_template) <> 'object' THEN
        RAISE EXCEPTION 'request_template must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF carrier IS NOT NULL AND provider <> 'ultravox' THEN
        RAISE EXCEPTION 'carrier is for Ultravox mappings only (a % mapping dials through its own account)', provider
            USING ERRCODE = '22023';
    END IF;
    -- The row's trigger checks the rest against the provider's API (dialer._check_agent_mapping).
    INSERT INTO dialer.agent_mappings (agency_id, provider, external_agent_id, agent_name, from_number, request_template,
                                       carrier)
    VALUES (create_agent_mapping.agency_id, provider, nullif(btrim(external_agent_id), ''), agent_name, from_number,
            request_template, CASE WHEN provider = 'ultravox' THEN coalesce(carrier, 'telnyx') END)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- create_batch: changed
CREATE OR REPLACE FUNCTION dialer.create_batch(agency_id bigint, agent_mapping_id bigint, name text,
    calls_per_minute integer DEFAULT 10, max_concurrent integer DEFAULT 5,
    scheduled_for timestamptz DEFAULT NULL, max_attempts integer DEFAULT 3)
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    PERFORM dialer._check_agency(agency_id);
    IF NOT EXISTS (SELECT 1 FROM dialer.agent_mappings m
                    WHERE m.id = create_batch.agent_mapping_id AND m.agency_id = create_batch.agency_id) THEN
        RAISE EXCEPTION 'agent mapping % does not exist for agency %', coalesce(agent_mapping_id::text, 'NULL'), agency_id
            USING ERRCODE = 'P0002', HINT = 'Create it with dialer.create_agent_mapping(...).';
    END IF;
    PERFORM dialer._check_mapping_usable(agent_mapping_id);
    IF name IS NULL OR length(btrim(name)) = 0 THEN
        RAISE EXCEPTION 'batch name must not be empty' USING ERRCODE = '22023';
    END IF;
    PERFORM dialer._check_positive(calls_per_minute, 'calls_per_minute');
    PERFORM dialer._check_positive(max_concurrent, 'max_concurrent');
    PERFORM dialer._check_positive(max_attempts, 'max_attempts');
    INSERT INTO dialer.call_batches (agency_id, agent_mapping_id, name, calls_per_minute, max_concurrent,
                                     scheduled_for, max_attempts, status)
    VALUES (create_batch.agency_id, create_batch.agent_mapping_id, create_batch.name, create_batch.calls_per_minute,
            create_batch.max_concurrent, create_batch.scheduled_for, create_batch.max_attempts,
            CASE WHEN create_batch.scheduled_for > now() THEN 'scheduled' ELSE 'pending' END)
    RETURNING id INTO new_id;
    PERFORM dialer._wake_on_commit();
    RETURN new_id;
END $$;

-- current_agency_ids: changed
CREATE OR REPLACE FUNCTION dialer.current_agency_ids()
RETURNS bigint[] LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids bigint[];
    claim text;
BEGIN
    SELECT coalesce(array_agg(DISTINCT m.agency_id), '{}') INTO ids
      FROM dialer.agency_members m
     WHERE m.role_name IN (SELECT r.rolname FROM pg_roles r WHERE pg_has_role(dialer._caller(), r.oid, 'MEMBER'));
    -- Any session can SET request.jwt.claims: the claim counts only for the roles PostgREST
    -- switches to after checking the JWT (dialer.jwt_roles, which only a superuser can change).
    IF NOT dialer._caller()::text = ANY (dialer._jwt_roles()) THEN
        RETURN ids;
    END IF;
    BEGIN
        claim := current_setting('request.jwt.claims', true)::jsonb ->> 'agency_id';
    EXCEPTION WHEN others THEN
        claim := NULL;  -- no claims, or not JSON: no agency from the JWT
    END;
    IF claim ~ '^[0-9]{1,18}$' THEN
        ids := ids || claim::bigint;
    END IF;
    RETURN ids;
END $$;

-- get_agency_credentials: changed
CREATE OR REPLACE FUNCTION dialer.get_agency_credentials(agency_id bigint, provider text DEFAULT 'ultravox')
RETURNS TABLE (api_key text, base_url text, account_sid text, webhook_secret text, max_calls_per_second integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT dialer._unseal(pc.api_key, pc.agency_id, pc.provider, 'api_key'), pc.base_url, pc.account_sid,
           dialer._unseal(pc.webhook_secret, pc.agency_id, pc.provider, 'webhook_secret'), pc.max_calls_per_second
      FROM dialer.provider_credentials pc
     WHERE pc.agency_id = get_agency_credentials.agency_id AND pc.provider = get_agency_credentials.provider
$$;

-- set_provider_credentials: changed
CREATE OR REPLACE FUNCTION dialer.set_provider_credentials(agency_id bigint, provider text, api_key text,
    base_url text DEFAULT NULL, account_sid text DEFAULT NULL, webhook_secret text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    attempt integer;
BEGIN
    PERFORM dialer._check_agency(agency_id);
    PERFORM dialer._check_provider(provider);
    IF api_key IS NULL OR length(api_key) = 0 THEN
        RAISE EXCEPTION 'api_key must not be empty' USING ERRCODE = '22023';
    END IF;
    IF base_url IS NOT NULL AND base_url !~ '^https?://[^[:space:]]+$' THEN
        RAISE EXCEPTION 'base_url % is not an http(s) URL', quote_literal(base_url) USING ERRCODE = '22023';
    END IF;
    IF webhook_secret IS NOT NULL AND length(btrim(webhook_secret)) = 0 THEN
        RAISE EXCEPTION 'webhook_secret must not be empty: give the secret, or NULL for none' USING ERRCODE = '22023';
    END IF;
    IF provider = 'twilio' AND account_sid IS NULL THEN
        RAISE EXCEPTION 'twilio credentials need account_sid' USING ERRCODE = '22023';
    END IF;
    IF provider = 'twilio' AND account_sid !~ '^AC[0-9a-fA-F]{32}$' THEN
        RAISE EXCEPTION 'account_sid % is not a Twilio account SID (AC followed by 32 hex digits)', quote_literal(account_sid)
            USING ERRCODE = '22023', HINT = 'Copy it from the Twilio console (Account Info).';
    END IF;
    -- The key is given with the host: the row's trigger lets the host change (transaction-local).
    PERFORM set_config('pg_dialer.key_given', 'on', true);
    -- Update, else insert: an application role may write keys but not read them, and
    -- INSERT ... ON CONFLICT DO UPDATE would need to read them.
    FOR attempt IN 1..2 LOOP
        UPDATE dialer.provider_credentials pc
           SET api_key = set_provider_credentials.api_key, base_url = rtrim(set_provider_credentials.base_url, '/'),
               account_sid = set_provider_credentials.account_sid,
               webhook_secret = set_provider_credentials.webhook_secret, updated_at = now()
         WHERE pc.agency_id = set_provider_credentials.agency_id AND pc.provider = set_provider_credentials.provider;
        EXIT WHEN FOUND;
        BEGIN
            -- Twilio accounts start at 1 call per second; raise it with set_provider_rate_limit.
            INSERT INTO dialer.provider_credentials (agency_id, provider, api_key, base_url, account_sid, webhook_secret,
                                                     max_calls_per_second)
            VALUES (set_provider_credentials.agency_id, set_provider_credentials.provider, set_provider_credentials.api_key,
                    rtrim(set_provider_credentials.base_url, '/'), set_provider_credentials.account_sid,
                    set_provider_credentials.webhook_secret,
                    CASE WHEN set_provider_credentials.provider = 'twilio' THEN 1 END);
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            NULL;  -- stored concurrently: update it on the next pass
        END;
    END LOOP;
    PERFORM set_config('pg_dialer.key_given', 'off', true);
END $$;

-- set_retry_delays: changed
CREATE OR REPLACE FUNCTION dialer.set_retry_delays(batch_id bigint, delays jsonb)
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

-- why_not_dialed: changed
CREATE OR REPLACE FUNCTION dialer.why_not_dialed(contact_id bigint)
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

    IF c.status IN ('completed', 'failed', 'cancelled') THEN
        reasons := reasons || jsonb_build_object('code', c.status,
            'message', CASE c.status WHEN 'completed' THEN 'already called: the call has ended'
                                     WHEN 'failed' THEN 'gave up after ' || c.attempts || ' attempt(s): ' || coalesce(c.last_error, 'failed')
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
        'dialable_now', c.status = 'queued' AND jsonb_array_length(reasons) = 0, 'reasons', reasons);
END $$;


CREATE TRIGGER agent_mappings_checked BEFORE INSERT OR UPDATE ON dialer.agent_mappings
    FOR EACH ROW EXECUTE FUNCTION dialer._agent_mapping_checked();
-- ==== Leads tables attached in place, caller-ID pools, voicemail policy, expiry (sql/attach.sql) ====
-- ==== end of attach ====

-- ==== Metrics and retention (sql/operations.sql) ====
-- Operations: metrics in SQL (dialer.metrics(), for postgres_exporter and the console's /metrics)
-- and retention (the worker prunes old detail when idle; dialer.prune() runs one pass).

-- Counters and histograms must never go down, but retention deletes rows they are counted from
-- (ticks in runs, finished queue jobs and their attempts). What a pass deletes is added here
-- first, in the same raw form the live figures take, and dialer.metrics() adds it back.
CREATE TABLE dialer.pruned_totals (
    agency_id bigint REFERENCES dialer.agencies(id) ON DELETE CASCADE,  -- NULL: the worker's (ticks)
    family    text NOT NULL,
    labels    jsonb NOT NULL,
    bucket    integer NOT NULL,  -- histogram bucket (bounds below it), -1 for counters
    n         double precision NOT NULL,
    s         double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (family, labels, bucket)
);
ALTER TABLE dialer.pruned_totals ENABLE ROW LEVEL SECURITY;
-- A tenant sees its agencies' totals (agencies is under row-level security itself); the ticks'
-- (no agency) are the operators' (their policy comes with the others in sql/security.sql).
CREATE POLICY tenant ON dialer.pruned_totals USING (agency_id IN (SELECT a.id FROM dialer.agencies a));
-- Grants to the roles: sql/security.sql (which creates them).

-- Retention reads these in created/received order: old rows first, without a scan of the table.
-- Calls whose bodies are still stored (the index shrinks as they are pruned).
CREATE INDEX calls_bodies_idx ON dialer.calls (created_at) WHERE request IS NOT NULL OR response IS NOT NULL;
CREATE INDEX webhook_events_received_at_idx ON dialer.webhook_events (received_at);
CREATE INDEX campaign_contacts_finished_jobs_idx ON dialer.campaign_contacts (updated_at)
    WHERE is_job AND status IN ('completed', 'failed', 'cancelled');

-- The metric families: name, type, HELP, histogram bounds (seconds). The raw functions below
-- compute buckets against the same bounds, written out there (a per-row function call would
-- cost more than the rest of the scan).
CREATE FUNCTION dialer._metric_families()
RETURNS TABLE (family text, kind text, help text, bounds double precision[])
LANGUAGE sql IMMUTABLE AS $$
    VALUES
    ('pg_dialer_calls_total', 'counter', 'Call attempts settled, by provider and outcome (ended, failed, rate_limited, network_error).', NULL::float8[]),
    ('pg_dialer_calls_open', 'gauge', 'Call attempts not settled yet, by provider and status (dialing, in_progress, in_doubt).', NULL),
    ('pg_dialer_attempts_in_doubt', 'gauge', 'Attempts whose outcome is unknown (the request may have reached the provider).', NULL),
    ('pg_dialer_contacts', 'gauge', 'Contacts and queue jobs by state.', NULL),
    ('pg_dialer_queue_depth', 'gauge', 'Queued contacts due now in running batches (kind campaign or queue).', NULL),
    ('pg_dialer_queue_oldest_due_age_seconds', 'gauge', 'Seconds since the oldest due queued contact became due (0 when none).', NULL),
    ('pg_dialer_pacing_lag_seconds', 'gauge', 'Seconds a running batch with due contacts is behind its next pacing slot (0 when on time).', NULL),
    ('pg_dialer_tick_duration_seconds', 'histogram', 'Duration of the worker''s ticks (dialer.runs, skipped ticks aside).',
        '{0.001,0.005,0.01,0.025,0.05,0.1,0.25,1,5}'),
    ('pg_dialer_provider_latency_seconds', 'histogram', 'Provider create-call request latency (calls.latency_ms).',
        '{0.05,0.1,0.25,0.5,1,2.5,5,10}'),
    ('pg_dialer_provider_throttled_total', 'counter', 'Provider answers 429 or 503 (capacity waits), by provider and code.', NULL)
$$;

-- Raw figures of calls (all of them, or those of the given contacts: what a prune deletes), one
-- scan grouped by agency, provider, status, HTTP status and latency bucket. bucket: how many of
-- the latency bounds are below the value (a bucket "le" holds every value whose bucket is lower
-- than its position), -1 for counters and gauges.
CREATE FUNCTION dialer._call_raw(p_contacts bigint[])
RETURNS TABLE (family text, labels jsonb, bucket integer, n double precision, s double precision)
LANGUAGE sql STABLE AS $$
    WITH g AS (
        SELECT k.agency_id, k.provider, k.status, k.http_status,
               -- bounds {0.05,0.1,0.25,0.5,1,2.5,5,10} s: 8 minus those >= the value
               8 - width_bucket(-k.latency_ms / 1000.0, '{-10,-5,-2.5,-1,-0.5,-0.25,-0.1,-0.05}'::float8[]) AS j,
               count(*)::float8 AS n, coalesce(sum(k.latency_ms) / 1000.0, 0) AS s
          FROM dialer.calls k
         WHERE p_contacts IS NULL OR k.contact_id = ANY (p_contacts)
         GROUP BY 1, 2, 3, 4, 5
    )
    SELECT f.family, f.labels, f.bucket, sum(f.n), sum(f.s)
      FROM g CROSS JOIN LATERAL (VALUES
          (CASE WHEN g.status IN ('ended', 'failed', 'rate_limited', 'network_error') THEN 'pg_dialer_calls_total' END,
           jsonb_build_object('agency_id', g.agency_id::text, 'provider', g.provider, 'outcome', g.status), -1, g.n, 0::float8),
          (CASE WHEN g.status IN ('dialing', 'in_progress', 'in_doubt') THEN 'pg_dialer_calls_open' END,
           jsonb_build_object('agency_id', g.agency_id::text, 'provider', g.provider, 'status', g.status), -1, g.n, 0),
          (CASE WHEN g.status = 'in_doubt' THEN 'pg_dialer_attempts_in_doubt' END,
           jsonb_build_object('agency_id', g.agency_id::text), -1, g.n, 0),
          (CASE WHEN g.j IS NOT NULL THEN 'pg_dialer_provider_latency_seconds' END,
           jsonb_build_object('agency_id', g.agency_id::text, 'provider', g.provider), g.j, g.n, g.s),
          (CASE WHEN g.http_status IN (429, 503) THEN 'pg_dialer_provider_throttled_total' END,
           jsonb_build_object('agency_id', g.agency_id::text, 'provider', g.provider, 'code', g.http_status::text), -1, g.n, 0)
      ) AS f(family, labels, bucket, n, s)
     WHERE f.family IS NOT NULL
     GROUP BY 1, 2, 3
$$;

-- Raw figures of ticks (all, or the given runs rows).
CREATE FUNCTION dialer._run_raw(p_runs bigint[])
RETURNS TABLE (family text, labels jsonb, bucket integer, n double precision, s double precision)
LANGUAGE sql STABLE AS $$
    SELECT 'pg_dialer_tick_duration_seconds', '{}'::jsonb,
           -- bounds {0.001,0.005,0.01,0.025,0.05,0.1,0.25,1,5} s
           9 - width_bucket(-r.duration_ms / 1000.0, '{-5,-1,-0.25,-0.1,-0.05,-0.025,-0.01,-0.005,-0.001}'::float8[]),
           count(*)::float8, coalesce(sum(r.duration_ms) / 1000.0, 0)
      FROM dialer.runs r
     WHERE r.status <> 'SKIPPED_CONCURRENT' AND r.duration_ms IS NOT NULL
       AND (p_runs IS NULL OR r.id = ANY (p_runs))
     GROUP BY 3
$$;

-- Every figure pg_dialer exposes, one row per Prometheus sample. SECURITY INVOKER: row-level
-- security decides what the caller sees (a tenant its agencies' samples; runs, and so the tick
-- histogram, are the operators').
CREATE FUNCTION dialer.metrics()
RETURNS TABLE (family text, kind text, help text, sample text, labels jsonb, value double precision)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    WITH running AS (
        SELECT b.id, b.agency_id, b.kind, b.next_slot_at, b.rate_limited_until, q.due, q.due_since
          FROM dialer.call_batches b
          CROSS JOIN LATERAL (
              -- campaign_contacts_due_idx: the queued contacts of one batch
              SELECT count(*) AS due,
                     min(coalesce(c.next_attempt_at, greatest(c.created_at, b.started_at))) AS due_since
                FROM dialer.campaign_contacts c
               WHERE c.batch_id = b.id AND c.status = 'queued'
                 AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= now())
          ) q
         WHERE b.status = 'processing'
    ), raw AS (
        SELECT * FROM dialer._call_raw(NULL)
        UNION ALL
        SELECT * FROM dialer._run_raw(NULL)
        UNION ALL
        SELECT p.family, p.labels, p.bucket, p.n, p.s FROM dialer.pruned_totals p
        UNION ALL
        -- campaign_contacts (batch_id, status): an index-only scan
        SELECT 'pg_dialer_contacts', jsonb_build_object('agency_id', b.agency_id::text, 'state', x.status), -1, sum(x.n), 0
          FROM (SELECT c.batch_id, c.status, count(*)::float8 AS n FROM dialer.campaign_contacts c GROUP BY 1, 2) x
          JOIN dialer.call_batches b ON b.id = x.batch_id
         GROUP BY b.agency_id, x.status
        UNION ALL
        SELECT 'pg_dialer_queue_depth', jsonb_build_object('agency_id', r.agency_id::text, 'kind', r.kind), -1, sum(r.due), 0
          FROM running r GROUP BY r.agency_id, r.kind
        UNION ALL
        SELECT 'pg_dialer_queue_oldest_due_age_seconds', jsonb_build_object('agency_id', r.agency_id::text, 'kind', r.kind), -1,
               coalesce(max(greatest(extract(epoch FROM now() - r.due_since), 0)), 0)::float8, 0
          FROM running r GROUP BY r.agency_id, r.kind
        UNION ALL
        -- Behind the pace: the batch could have placed a call since the later of its next slot,
        -- the provider's Retry-After hold and the moment its oldest due contact became due.
        SELECT 'pg_dialer_pacing_lag_seconds', jsonb_build_object('agency_id', r.agency_id::text, 'batch_id', r.id::text), -1,
               CASE WHEN r.due = 0 THEN 0
                    ELSE greatest(extract(epoch FROM now() - greatest(r.due_since, r.next_slot_at, r.rate_limited_until)), 0)
               END::float8, 0
          FROM running r
    ), agg AS (
        SELECT r.family, r.labels, r.bucket, sum(r.n) AS n, sum(r.s) AS s FROM raw r GROUP BY 1, 2, 3
    ), samples AS (
        SELECT a.family, a.family AS sample, a.labels, a.n AS value, 0 AS ord
          FROM agg a WHERE a.bucket < 0
        UNION ALL
        SELECT h.family, h.family || '_bucket',
               h.labels || jsonb_build_object('le', CASE WHEN b.k > cardinality(f.bounds) THEN '+Inf' ELSE b.le::text END),
               (SELECT coalesce(sum(a.n), 0) FROM agg a
                 WHERE a.family = h.family AND a.labels = h.labels AND a.bucket >= 0 AND a.bucket < b.k),
               b.k::integer
          FROM (SELECT DISTINCT a.family, a.labels FROM agg a WHERE a.bucket >= 0) h
          JOIN dialer._metric_families() f ON f.family = h.family
          CROSS JOIN LATERAL unnest(f.bounds || 'Infinity'::float8) WITH ORDINALITY AS b(le, k)
        UNION ALL
        SELECT a.family, a.family || '_sum', a.labels, sum(a.s), 1000 FROM agg a WHERE a.bucket >= 0 GROUP BY 1, 3
        UNION ALL
        SELECT a.family, a.family || '_count', a.labels, sum(a.n), 1001 FROM agg a WHERE a.bucket >= 0 GROUP BY 1, 3
    )
    SELECT s.family, f.kind, f.help, s.sample, s.labels, s.value
      FROM samples s JOIN dialer._metric_families() f ON f.family = s.family
     ORDER BY s.family, s.labels - 'le', s.ord
$$;

-- A retention setting: an interval; NULL (keep forever) for '', 'off', 'none' or an interval of
-- zero or less. Anything else is refused, naming the setting.
CREATE FUNCTION dialer._retention_interval(p_setting text, p_value text)
RETURNS interval LANGUAGE plpgsql STABLE AS $$
DECLARE
    v interval;
BEGIN
    IF p_value IS NULL OR lower(btrim(p_value)) IN ('', 'off', 'none') THEN
        RETURN NULL;
    END IF;
    BEGIN
        v := p_value::interval;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow OR syntax_error THEN
        RAISE EXCEPTION '% = % is not an interval', p_setting, quote_literal(p_value)
            USING ERRCODE = '22023', HINT = 'Give an interval such as ''30 days'', or ''off'' to keep everything.';
    END;
    IF v <= interval '0' THEN
        RETURN NULL;
    END IF;
    RETURN v;
END $$;

-- One retention pass: at most p_limit rows of each kind, oldest first, each in one statement.
-- Never deleted: campaign contacts and call rows (only their stored request/response bodies
-- are cleared), attempts not settled, queue jobs a human still has to follow up.
-- Returns {"runs": n, "bodies": n, "webhook_events": n, "jobs": n}.
CREATE FUNCTION dialer._prune(p_runs text, p_bodies text, p_webhook_events text, p_jobs text, p_limit integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    keep_runs interval := dialer._retention_interval('dialer.retention_runs', p_runs);
    keep_bodies interval := dialer._retention_interval('dialer.retention_bodies', p_bodies);
    keep_events interval := dialer._retention_interval('dialer.retention_webhook_events', p_webhook_events);
    keep_jobs interval := dialer._retention_interval('dialer.retention_jobs', p_jobs);
    now_ts timestamptz := clock_timestamp();
    ids bigint[];
    n_runs integer := 0;
    n_bodies integer := 0;
    n_events integer := 0;
    n_jobs integer := 0;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'a prune pass takes 1 to 100000 rows of each kind, not %', coalesce(p_limit::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;

    IF keep_runs IS NOT NULL THEN
        SELECT coalesce(array_agg(d.id), '{}') INTO ids FROM (
            SELECT r.id FROM dialer.runs r WHERE r.started_at < now_ts - keep_runs
             ORDER BY r.started_at LIMIT p_limit FOR UPDATE SKIP LOCKED) d;
        IF cardinality(ids) > 0 THEN
            PERFORM dialer._add_pruned(r.family, NULL, r.labels, r.bucket, r.n, r.s) FROM dialer._run_raw(ids) r;
            DELETE FROM dialer.runs WHERE id = ANY (ids);
            GET DIAGNOSTICS n_runs = ROW_COUNT;
        END IF;
    END IF;

    IF keep_bodies IS NOT NULL THEN
        UPDATE dialer.calls SET request = NULL, response = NULL
         WHERE id IN (SELECT k.id FROM dialer.calls k
                       WHERE (k.request IS NOT NULL OR k.response IS NOT NULL) AND k.created_at < now_ts - keep_bodies
                         AND k.status NOT IN ('dialing', 'in_progress', 'in_doubt')
                       ORDER BY k.created_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS n_bodies = ROW_COUNT;
    END IF;

    IF keep_events IS NOT NULL THEN
        DELETE FROM dialer.webhook_events
         WHERE (provider, event_id) IN (SELECT e.provider, e.event_id FROM dialer.webhook_events e
                                         WHERE e.received_at < now_ts - keep_events
                                         ORDER BY e.received_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS n_events = ROW_COUNT;
    END IF;

    IF keep_jobs IS NOT NULL THEN
        SELECT coalesce(array_agg(d.id), '{}') INTO ids FROM (
            SELECT c.id FROM dialer.campaign_contacts c JOIN dialer.call_batches b ON b.id = c.batch_id
             WHERE c.is_job AND b.kind = 'queue' AND c.status IN ('completed', 'failed', 'cancelled')
               AND c.updated_at < now_ts - keep_jobs
               AND c.handoff IS DISTINCT FROM 'manual_pending'
               AND NOT EXISTS (SELECT 1 FROM dialer.followups f WHERE f.contact_id = c.id AND f.status = 'open')
             ORDER BY c.updated_at LIMIT p_limit FOR UPDATE OF c SKIP LOCKED) d;
        IF cardinality(ids) > 0 THEN
            -- Their attempts go with them (as clean_jobs does): counted first.
            PERFORM dialer._add_pruned(r.family, (r.labels->>'agency_id')::bigint, r.labels, r.bucket, r.n, r.s)
               FROM dialer._call_raw(ids) r JOIN dialer._metric_families() f ON f.family = r.family
              WHERE f.kind <> 'gauge';
            UPDATE dialer.call_batches b
               SET total_contacts = greatest(total_contacts - x.cnt, 0),
                   completed_count = greatest(completed_count - x.done, 0),
                   failed_count = greatest(failed_count - x.failed, 0)
              FROM (SELECT c.batch_id, count(*) AS cnt,
                           count(*) FILTER (WHERE c.status = 'completed') AS done,
                           count(*) FILTER (WHERE c.status = 'failed') AS failed
                      FROM dialer.campaign_contacts c WHERE c.id = ANY (ids) GROUP BY c.batch_id) x
             WHERE b.id = x.batch_id;
            DELETE FROM dialer.calls WHERE contact_id = ANY (ids);
            DELETE FROM dialer.campaign_contacts WHERE id = ANY (ids);
            GET DIAGNOSTICS n_jobs = ROW_COUNT;
        END IF;
    END IF;

    RETURN jsonb_build_object('runs', n_runs, 'bodies', n_bodies, 'webhook_events', n_events, 'jobs', n_jobs);
END $$;

CREATE FUNCTION dialer._add_pruned(p_family text, p_agency_id bigint, p_labels jsonb, p_bucket integer,
    p_n double precision, p_s double precision)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO dialer.pruned_totals AS t (agency_id, family, labels, bucket, n, s)
    VALUES (p_agency_id, p_family, p_labels, p_bucket, p_n, p_s)
    ON CONFLICT (family, labels, bucket) DO UPDATE SET n = t.n + EXCLUDED.n, s = t.s + EXCLUDED.s
$$;

-- One retention pass now, with the server's dialer.retention_* settings (operators only).
CREATE FUNCTION dialer.prune()
RETURNS jsonb LANGUAGE sql AS $$
    SELECT dialer._prune(current_setting('dialer.retention_runs', true), current_setting('dialer.retention_bodies', true),
                         current_setting('dialer.retention_webhook_events', true), current_setting('dialer.retention_jobs', true),
                         1000)
$$;
REVOKE EXECUTE ON FUNCTION dialer.prune() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dialer._prune(text, text, text, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dialer._add_pruned(text, bigint, jsonb, integer, double precision, double precision) FROM PUBLIC;

-- What sql/security.sql does for these objects in a fresh install.
GRANT SELECT ON dialer.pruned_totals TO dialer_user;
GRANT ALL ON dialer.pruned_totals TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer.prune() TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer._prune(text, text, text, text, integer) TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer._add_pruned(text, bigint, jsonb, integer, double precision, double precision) TO dialer_admin;
-- The tenant policies call current_agency_ids() once per statement (a sub-SELECT), not per row.
ALTER POLICY read_dnc ON dialer.do_not_call USING (agency_id IS NULL OR agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY own_dnc ON dialer.do_not_call USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]))
    WITH CHECK (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY tenant ON dialer.agency_holidays USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY tenant ON dialer.agencies USING (id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY tenant ON dialer.provider_credentials USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY tenant ON dialer.agent_mappings USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY tenant ON dialer.call_batches USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY tenant ON dialer.calls USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY tenant ON dialer.recurring_calls USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER POLICY tenant ON dialer.telecallers USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
-- ==== end of operations ====

-- The keys stored by 0.2.0, in the clear until now.
UPDATE dialer.provider_credentials
   SET api_key = dialer._seal(api_key, agency_id, provider, 'api_key'),
       webhook_secret = dialer._seal(webhook_secret, agency_id, provider, 'webhook_secret');
CREATE TRIGGER provider_credentials_guarded BEFORE INSERT OR UPDATE ON dialer.provider_credentials
    FOR EACH ROW EXECUTE FUNCTION dialer._provider_credentials_guarded();
REVOKE EXECUTE ON FUNCTION dialer.allow_unsigned_webhooks(bigint, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialer.allow_unsigned_webhooks(bigint, text, boolean) TO dialer_admin;
REVOKE EXECUTE ON FUNCTION dialer._unseal(text, bigint, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dialer.rotate_encryption_key() FROM PUBLIC;
-- pg_dump backs up the extension's rows too (extension tables are skipped otherwise).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c
              WHERE c.relnamespace = 'dialer'::regnamespace AND c.relkind IN ('r', 'S')
                AND c.relname <> 'tick_lock'  -- its one row comes with CREATE EXTENSION
              ORDER BY c.relname LOOP
        PERFORM pg_catalog.pg_extension_config_dump(r.rel, '');
    END LOOP;
END $$;

CREATE TRIGGER campaign_contacts_json_bounded BEFORE INSERT OR UPDATE OF variables, metadata ON dialer.campaign_contacts
    FOR EACH ROW EXECUTE FUNCTION dialer._json_bounded();

-- Rows reference rows of their own agency only: composite foreign keys (rows 0.2.0 let a tenant
-- write across agencies make this update fail, naming the constraint: delete them first).
ALTER TABLE dialer.call_batches DROP CONSTRAINT call_batches_agent_mapping_id_fkey;
ALTER TABLE dialer.recurring_calls DROP CONSTRAINT recurring_calls_agent_mapping_id_fkey;
ALTER TABLE dialer.calls DROP CONSTRAINT calls_batch_id_fkey, DROP CONSTRAINT calls_contact_id_fkey;
ALTER TABLE dialer.agent_mappings ADD CONSTRAINT agent_mappings_agency_id_id_key UNIQUE (agency_id, id);
ALTER TABLE dialer.call_batches ADD CONSTRAINT call_batches_agency_id_id_key UNIQUE (agency_id, id);
ALTER TABLE dialer.campaign_contacts ADD CONSTRAINT campaign_contacts_batch_id_id_key UNIQUE (batch_id, id);
ALTER TABLE dialer.call_batches ADD CONSTRAINT call_batches_mapping_same_agency
    FOREIGN KEY (agency_id, agent_mapping_id) REFERENCES dialer.agent_mappings (agency_id, id);
ALTER TABLE dialer.recurring_calls ADD CONSTRAINT recurring_calls_mapping_same_agency
    FOREIGN KEY (agency_id, agent_mapping_id) REFERENCES dialer.agent_mappings (agency_id, id);
ALTER TABLE dialer.calls ADD CONSTRAINT calls_batch_of_agency
    FOREIGN KEY (agency_id, batch_id) REFERENCES dialer.call_batches (agency_id, id) ON DELETE CASCADE;
ALTER TABLE dialer.calls ADD CONSTRAINT calls_contact_of_batch
    FOREIGN KEY (batch_id, contact_id) REFERENCES dialer.campaign_contacts (batch_id, id) ON DELETE CASCADE;
CREATE TRIGGER followups_same_agency BEFORE INSERT OR UPDATE OF telecaller_id, contact_id ON dialer.followups
    FOR EACH ROW EXECUTE FUNCTION dialer._same_agency();
CREATE TRIGGER campaign_contacts_same_agency BEFORE INSERT OR UPDATE OF agent_mapping_id, batch_id ON dialer.campaign_contacts
    FOR EACH ROW EXECUTE FUNCTION dialer._same_agency();

-- Ticks serialize on a row lock no tenant can take (it was an advisory lock anyone could hold).
CREATE TABLE dialer.tick_lock (id integer PRIMARY KEY CHECK (id = 1));
INSERT INTO dialer.tick_lock VALUES (1);
REVOKE ALL ON dialer.tick_lock FROM PUBLIC;
GRANT ALL ON dialer.tick_lock TO dialer_admin;

-- Tenants write only through the API, whose functions run as dialer_api (see sql/security.sql).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dialer_api') THEN
        CREATE ROLE dialer_api NOLOGIN NOBYPASSRLS;
    END IF;
END $$;
REVOKE INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dialer FROM dialer_user;
REVOKE ALL ON dialer.pacing_state FROM dialer_user;
GRANT SELECT ON dialer.do_not_call, dialer.agency_holidays TO dialer_user;
GRANT USAGE ON SCHEMA dialer TO dialer_api;
GRANT SELECT (agency_id, provider, base_url, account_sid, max_calls_per_second, next_slot_at, rate_limited_until,
              updated_at, allow_unsigned_webhooks)
      ON dialer.provider_credentials TO dialer_user, dialer_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON dialer.agencies, dialer.agent_mappings, dialer.call_batches,
    dialer.campaign_contacts, dialer.calls, dialer.recurring_calls, dialer.telecallers, dialer.followups,
    dialer.webhook_events, dialer.do_not_call, dialer.agency_holidays, dialer.pacing_state, dialer.runs
    TO dialer_api;
GRANT INSERT, UPDATE ON dialer.provider_credentials TO dialer_api;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA dialer TO dialer_api;
GRANT SELECT ON dialer.agency_members TO dialer_api;
DROP POLICY own_roles ON dialer.agency_members;
CREATE POLICY own_roles ON dialer.agency_members
    USING (role_name IN (SELECT r.rolname FROM pg_roles r WHERE pg_has_role(dialer._caller(), r.oid, 'MEMBER')));

ALTER TABLE dialer.runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.pacing_state ENABLE ROW LEVEL SECURITY;

-- Operators see and change every agency, also through the API functions (which run as dialer_api,
-- a role row-level security applies to).
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT c.oid::regclass FROM pg_class c
              WHERE c.relnamespace = 'dialer'::regnamespace AND c.relkind = 'r' AND c.relrowsecurity ORDER BY c.relname LOOP
        EXECUTE format('CREATE POLICY operator ON %s USING ((SELECT dialer._caller_is_operator())) WITH CHECK ((SELECT dialer._caller_is_operator()))', t);
    END LOOP;
END $$;

-- The API a tenant calls: SECURITY DEFINER as dialer_api, search_path pinned. The list is the
-- contract of what a tenant may do; an upgrade script that replaces one of these functions
-- must run this block again (CREATE OR REPLACE resets SECURITY DEFINER).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'dialer'::regnamespace AND p.proname IN (
                  'add_contacts', 'add_do_not_call', 'add_holiday', 'add_telecaller', 'cancel_batch', 'cancel_job',
                  'cancel_recurring_call', 'clean_jobs', 'clear_calling_window', 'create_agent_mapping', 'create_batch',
                  'get_batch_contacts_to_call', 'job_status', 'list_jobs', 'pause_batch', 'pause_queue', 'queue_stats',
                  'remove_do_not_call', 'remove_holiday', 'resolve_in_doubt', 'resume_batch', 'resume_queue', 'retry_job',
                  'schedule_bulk_calls', 'schedule_call', 'schedule_recurring_call', 'set_agency_limits',
                  'set_calling_window', 'set_disposition', 'set_provider_credentials', 'set_provider_rate_limit',
                  'set_queue_calling_window', 'set_queue_options', 'set_retry_delays', 'set_telecaller_available',
                  'update_batch_progress', 'why_not_dialed')
              ORDER BY 1 LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
        EXECUTE format('ALTER FUNCTION %s OWNER TO dialer_api', f);
    END LOOP;
END $$;

-- Events are the API's and the worker's to send: nobody forges one.
REVOKE EXECUTE ON FUNCTION dialer._notify(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialer._notify(text, jsonb) TO dialer_api, dialer_admin;

