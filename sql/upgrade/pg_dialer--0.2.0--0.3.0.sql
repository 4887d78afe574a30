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

-- _agent_mapping_checked: changed
CREATE OR REPLACE FUNCTION dialer._agent_mapping_checked()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._check_mapping_row(NEW);
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
-- (plpgsql: row-level security runs this once per statement, and a sql function's body is
-- planned again on every call.)
CREATE OR REPLACE FUNCTION dialer._caller_is_operator()
RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me name := dialer._caller();
BEGIN
    RETURN coalesce((SELECT r.rolsuper OR r.rolbypassrls OR pg_has_role(r.oid, 'dialer_admin', 'MEMBER')
                            OR pg_has_role(r.oid, (SELECT e.extowner FROM pg_extension e WHERE e.extname = 'pg_dialer'), 'MEMBER')
                       FROM pg_roles r WHERE r.rolname = me), false);
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
    me name := dialer._caller();  -- once, not once per role
    ids bigint[];
    claim text;
BEGIN
    SELECT coalesce(array_agg(DISTINCT m.agency_id), '{}') INTO ids
      FROM dialer.agency_members m
     WHERE m.role_name IN (SELECT r.rolname FROM pg_roles r WHERE pg_has_role(me, r.oid, 'MEMBER'));
    -- Any session can SET request.jwt.claims: the claim counts only for the roles PostgREST
    -- switches to after checking the JWT (dialer.jwt_roles, which only a superuser can change).
    IF NOT me::text = ANY (dialer._jwt_roles()) THEN
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


CREATE TRIGGER agent_mappings_checked BEFORE INSERT OR UPDATE ON dialer.agent_mappings
    FOR EACH ROW EXECUTE FUNCTION dialer._agent_mapping_checked();
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

-- The role the tenant API runs as (see sql/security.sql).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dialer_api') THEN
        CREATE ROLE dialer_api NOLOGIN NOBYPASSRLS;
    END IF;
END $$;

-- ==== Leads tables attached in place, caller-ID pools, voicemail policy, expiry (sql/attach.sql, sql/caller_ids.sql) ====
-- Contacts of a leads table attached in place, voicemail per batch policy, deadlines, caller IDs.
ALTER TABLE dialer.call_batches DROP CONSTRAINT call_batches_kind_check,
    ADD CONSTRAINT call_batches_kind_check CHECK (kind IN ('campaign', 'queue', 'leads')),
    ADD COLUMN on_voicemail text NOT NULL DEFAULT 'retry' CHECK (on_voicemail IN ('retry', 'done', 'handoff')),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN voicemail_count integer NOT NULL DEFAULT 0,
    ADD COLUMN expired_count integer NOT NULL DEFAULT 0;
-- 0.2.0 handed voicemail to the telecallers unless the batch had a voicemail retry delay: kept.
UPDATE dialer.call_batches SET on_voicemail = CASE WHEN retry_delays ? 'voicemail' THEN 'retry' ELSE 'handoff' END;
UPDATE dialer.call_batches b SET voicemail_count = (SELECT count(*) FROM dialer.calls k WHERE k.batch_id = b.id AND k.end_reason = 'voicemail');
-- Batches with a deadline: the expiry pass reads them by time.
CREATE INDEX call_batches_expiry_idx ON dialer.call_batches (expires_at) WHERE expires_at IS NOT NULL;
ALTER TABLE dialer.campaign_contacts DROP CONSTRAINT campaign_contacts_status_check,
    ADD CONSTRAINT campaign_contacts_status_check
        CHECK (status IN ('pending', 'queued', 'in_progress', 'completed', 'failed', 'cancelled', 'in_doubt', 'expired')),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN lead_attachment_id bigint,
    ADD COLUMN lead_sync_pending boolean NOT NULL DEFAULT false;
CREATE INDEX campaign_contacts_expiry_idx ON dialer.campaign_contacts (expires_at)
    WHERE expires_at IS NOT NULL AND status IN ('pending', 'queued');
CREATE UNIQUE INDEX campaign_contacts_one_live_per_lead ON dialer.campaign_contacts (lead_attachment_id, lead_ref)
    WHERE lead_attachment_id IS NOT NULL AND status IN ('pending', 'queued', 'in_progress', 'in_doubt');
CREATE INDEX campaign_contacts_lead_sync_idx ON dialer.campaign_contacts (id) WHERE lead_sync_pending;
ALTER TABLE dialer.calls ADD COLUMN from_number text;
UPDATE dialer.calls k SET from_number = m.from_number
  FROM dialer.campaign_contacts c JOIN dialer.call_batches b ON b.id = c.batch_id
  JOIN dialer.agent_mappings m ON m.id = coalesce(c.agent_mapping_id, b.agent_mapping_id)
 WHERE c.id = k.contact_id;
ALTER TABLE dialer.agent_mappings ADD COLUMN use_caller_id_pool boolean NOT NULL DEFAULT false;

CREATE FUNCTION dialer."_number_locality"(
	"phone_number" TEXT
) RETURNS TEXT
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_number_locality_wrapper';

-- Caller-ID pools: an agency's own numbers to dial from. A mapping that uses the pool
-- (dialer.use_caller_id_pool) gives each call the number local to the contact (same country
-- calling code, then same area) that is least used today, never one disabled or at its daily cap.

CREATE TABLE dialer.caller_ids (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_id         bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    phone_number      text NOT NULL CHECK (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
    max_calls_per_day integer CHECK (max_calls_per_day IS NULL OR max_calls_per_day BETWEEN 1 AND 1000000),
    enabled           boolean NOT NULL DEFAULT true,
    -- "<country calling code>:<area>" (dialer._number_locality), for choosing a local number.
    locality          text,
    -- Calls placed from it on usage_day (the agency's local date).
    usage_day         date,
    calls_today       integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agency_id, phone_number)
);

-- Calls today as of p_day (a new day starts at zero).
CREATE FUNCTION dialer._caller_id_used(ci dialer.caller_ids, p_day date)
RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN ci.usage_day = p_day THEN ci.calls_today ELSE 0 END
$$;

-- How many calls the agency's pool can still place today (2^31 - 1 when a number has no cap).
CREATE FUNCTION dialer._caller_ids_left(p_agency_id bigint, p_day date)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT coalesce(least(sum(greatest(coalesce(ci.max_calls_per_day, 2147483647) - dialer._caller_id_used(ci, p_day), 0)),
                          2147483647), 0)::integer
      FROM dialer.caller_ids ci WHERE ci.agency_id = p_agency_id AND ci.enabled
$$;

-- Takes today's best number for a call to p_phone and counts the call on it; NULL when every
-- number is disabled or capped (the claim never asks for more than _caller_ids_left).
CREATE FUNCTION dialer._take_caller_id(p_agency_id bigint, p_phone text, p_day date)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    here text := dialer._number_locality(p_phone);
    chosen dialer.caller_ids;
BEGIN
    SELECT * INTO chosen FROM dialer.caller_ids ci
     WHERE ci.agency_id = p_agency_id AND ci.enabled
       AND (ci.max_calls_per_day IS NULL OR dialer._caller_id_used(ci, p_day) < ci.max_calls_per_day)
     ORDER BY ci.locality = here DESC NULLS LAST,
              split_part(ci.locality, ':', 1) = split_part(here, ':', 1) DESC NULLS LAST,
              dialer._caller_id_used(ci, p_day), ci.id
     LIMIT 1
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE dialer.caller_ids
       SET calls_today = dialer._caller_id_used(chosen, p_day) + 1, usage_day = p_day
     WHERE id = chosen.id;
    RETURN chosen.phone_number;
END $$;

-- Adds a number to the agency's pool, or changes its cap / enables it again. Returns its id.
CREATE FUNCTION dialer.add_caller_id(agency_id bigint, phone_number text, max_calls_per_day integer DEFAULT NULL,
    enabled boolean DEFAULT true)
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    new_id bigint;
BEGIN
    PERFORM dialer._check_agency(agency_id);
    PERFORM dialer._check_e164(phone_number, 'phone_number');
    IF max_calls_per_day IS NOT NULL AND max_calls_per_day NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'max_calls_per_day must be between 1 and 1000000 (or NULL for no cap), got %', max_calls_per_day
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO dialer.caller_ids AS ci (agency_id, phone_number, max_calls_per_day, enabled, locality)
    VALUES (agency_id, phone_number, max_calls_per_day, coalesce(enabled, true), dialer._number_locality(phone_number))
    ON CONFLICT ON CONSTRAINT caller_ids_agency_id_phone_number_key DO UPDATE
       SET max_calls_per_day = EXCLUDED.max_calls_per_day, enabled = EXCLUDED.enabled
    RETURNING ci.id INTO new_id;
    PERFORM dialer._wake_on_commit();  -- contacts waiting for a free number may go now
    RETURN new_id;
END $$;

-- Takes a number out of the pool (calls already placed from it keep it on their row).
CREATE FUNCTION dialer.remove_caller_id(agency_id bigint, phone_number text)
RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    PERFORM dialer._check_agency(agency_id);
    DELETE FROM dialer.caller_ids ci WHERE ci.agency_id = agency_id AND ci.phone_number = phone_number;
    RETURN FOUND;
END $$;

-- A mapping's calls dial from the pool (true) or from its own from_number (false).
CREATE FUNCTION dialer.use_caller_id_pool(agent_mapping_id bigint, enabled boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    IF enabled IS NULL THEN
        RAISE EXCEPTION 'enabled must be true or false' USING ERRCODE = '22023';
    END IF;
    UPDATE dialer.agent_mappings m SET use_caller_id_pool = enabled WHERE m.id = agent_mapping_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent mapping % does not exist', coalesce(agent_mapping_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
END $$;

-- A team's own leads table, attached in place (the lead-posting seed): a row that enters the
-- pending status is queued in the same transaction, a row deleted or moved out of it before it is
-- dialed is cancelled, and every state change is written back onto the row as the seed does.
--
-- Who runs what (a tenant with a SQL login is hostile):
-- * dialer._lead_changed, the trigger on the leads table, is SECURITY DEFINER (the extension
--   owner) so that whoever inserts a lead can queue it; it only acts for the table its attachment
--   names (TG_RELID), which only the table's owner could attach.
-- * Rows of the leads table are written by the attachment's writer function, created per
--   attachment and owned by the table's owner: the owner's rights, the owner's triggers and
--   policies, never the extension owner's (a tenant's trigger must not run as a superuser).

CREATE TABLE dialer.lead_attachments (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_id        bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    leads            regclass NOT NULL,
    batch_id         bigint NOT NULL,  -- its contacts (kind 'leads'): lead_attachments_batch_fk
    agent_mapping_id bigint NOT NULL,
    -- {"key", "phone", "status", ...}: the table's column for each of the seed's fields (absent
    -- where the table has none); "name", "variables" (columns passed to the agent).
    columns          jsonb NOT NULL,
    -- The status words: {"pending": "Pending_AI_Call", "processing": "Processing", ...}.
    statuses         jsonb NOT NULL,
    -- The seed's factory: the per-lead provider column's value → agent mapping.
    providers        jsonb NOT NULL DEFAULT '{}',
    -- Only rows whose agency column holds this attachment's agency (a table shared by tenants).
    agency_column    text,
    writer           regprocedure,
    last_error       text,
    last_error_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (leads, agency_id)
);
ALTER TABLE dialer.lead_attachments ADD CONSTRAINT lead_attachments_batch_fk
    FOREIGN KEY (agency_id, batch_id) REFERENCES dialer.call_batches (agency_id, id) ON DELETE CASCADE;
ALTER TABLE dialer.lead_attachments ADD CONSTRAINT lead_attachments_mapping_fk
    FOREIGN KEY (agency_id, agent_mapping_id) REFERENCES dialer.agent_mappings (agency_id, id);
ALTER TABLE dialer.campaign_contacts ADD CONSTRAINT campaign_contacts_lead_attachment_fk
    FOREIGN KEY (lead_attachment_id) REFERENCES dialer.lead_attachments(id) ON DELETE SET NULL;
CREATE INDEX campaign_contacts_lead_attachment_idx ON dialer.campaign_contacts (lead_attachment_id)
    WHERE lead_attachment_id IS NOT NULL;

-- The seed's fields, in the order the writer takes their values. The key, phone, status,
-- call_source_id and ai_provider_type columns are read, the others written.
CREATE FUNCTION dialer._lead_fields()
RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['status', 'ai_call_status', 'ai_call_id', 'posted_to_ai_date', 'ai_post_retry_count',
                 'ai_failure_reason', 'last_ai_attempt', 'staff_id', 'assigned_date']
$$;

CREATE FUNCTION dialer._lead_default_statuses()
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT '{"pending": "Pending_AI_Call", "processing": "Processing", "ai_failed": "AI_FAILED",
             "assigned_manual": "ASSIGNED_MANUAL", "manual_queue_pending": "MANUAL_QUEUE_PENDING",
             "success": "SV Fixed", "completed": "Call Progress", "trashed": "Trashed",
             "voicemail": "AI_VOICEMAIL", "expired": "AI_EXPIRED",
             "call_initiated": "INITIATED", "call_completed": "AI_COMPLETED", "call_failed": "AI_FAILED"}'::jsonb
$$;

-- Writes one lead row through the attachment's writer (the table owner's rights). Never raises:
-- a table that refuses the write (a constraint, a trigger, a lock held too long) must not stop
-- the dialing of anyone else. Returns false, and notes the error on the attachment, if it failed.
CREATE FUNCTION dialer._lead_write(p_attachment_id bigint, p_key text, p_values text[])
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- a lead row the application holds locked is written later (_lead_resync), not waited for
SET lock_timeout = '200ms' AS $$
DECLARE
    a dialer.lead_attachments;
    writer regprocedure;
BEGIN
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = p_attachment_id;
    -- The writer is found by its name, never taken from a column someone could have changed, and
    -- must be the one _attach_install made: SECURITY DEFINER, owned by the table's owner.
    writer := to_regprocedure(format('dialer.%I(text, text[])', 'lead_writer_' || p_attachment_id));
    IF a.id IS NULL OR writer IS NULL THEN
        RETURN true;  -- detached: nothing to write to
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_class c ON c.oid = a.leads
                    WHERE p.oid = writer AND p.prosecdef AND p.proowner = c.relowner) THEN
        RAISE WARNING 'pg_dialer: the writer of lead attachment % is not the table owner''s: not used', a.id;
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('SELECT %s($1, $2)', writer::regproc) USING p_key, p_values;
        RETURN true;
    EXCEPTION WHEN OTHERS THEN
        UPDATE dialer.lead_attachments SET last_error = left(SQLERRM, 500), last_error_at = clock_timestamp()
         WHERE id = a.id;
        RAISE WARNING 'pg_dialer: could not write lead % back to %: %', p_key, a.leads, SQLERRM;
        RETURN false;
    END;
END $$;
REVOKE EXECUTE ON FUNCTION dialer._lead_write(bigint, text, text[]) FROM PUBLIC;

-- What a contact's state means for its lead row: the writer's values (dialer._lead_fields()
-- order; NULL leaves a column as it is), or NULL when nothing is to be written.
CREATE FUNCTION dialer._lead_values(c dialer.campaign_contacts, a dialer.lead_attachments)
RETURNS text[] LANGUAGE plpgsql STABLE AS $$
DECLARE
    w jsonb := a.statuses;
    k dialer.calls;
    f dialer.followups;
    failed_posts integer;
    now_text text := clock_timestamp()::text;
BEGIN
    SELECT * INTO k FROM dialer.calls WHERE id = c.call_id;
    SELECT count(*) INTO failed_posts FROM dialer.calls x WHERE x.contact_id = c.id AND x.status = 'failed';
    IF c.handoff = 'manual_assigned' THEN
        SELECT * INTO f FROM dialer.followups o WHERE o.contact_id = c.id ORDER BY o.id DESC LIMIT 1;
        RETURN ARRAY[w->>'assigned_manual', NULL, NULL, NULL, failed_posts::text,
                     CASE WHEN c.status = 'failed' THEN c.last_error END, NULL, f.telecaller_id::text, now_text];
    ELSIF c.handoff = 'manual_pending' THEN
        RETURN ARRAY[w->>'manual_queue_pending', NULL, NULL, NULL, failed_posts::text,
                     CASE WHEN c.status = 'failed' THEN c.last_error END, NULL, NULL, NULL];
    ELSIF c.status = 'failed' THEN
        RETURN ARRAY[w->>'ai_failed', w->>'call_failed', NULL, NULL, failed_posts::text, c.last_error, now_text, NULL, NULL];
    ELSIF c.status = 'completed' THEN
        RETURN ARRAY[CASE c.outcome WHEN 'success' THEN w->>'success' WHEN 'trashed' THEN w->>'trashed'
                                    WHEN 'voicemail' THEN w->>'voicemail' ELSE w->>'completed' END,
                     w->>'call_completed', NULL, NULL, NULL, NULL, NULL, NULL, NULL];
    ELSIF c.status = 'expired' THEN
        RETURN ARRAY[w->>'expired', NULL, NULL, NULL, NULL, c.last_error, NULL, NULL, NULL];
    ELSIF c.status = 'queued' AND c.attempts > 0 THEN
        -- posting failed, or the call ended in a way the batch retries: pending again, as the seed
        RETURN ARRAY[w->>'pending', NULL, NULL, NULL, failed_posts::text, NULL, now_text, NULL, NULL];
    ELSIF c.status = 'in_progress' AND k.status = 'in_progress' THEN
        RETURN ARRAY[w->>'processing', w->>'call_initiated', k.provider_call_id,
                     coalesce(k.dispatched_at, clock_timestamp())::text, failed_posts::text, NULL, NULL, NULL, NULL];
    END IF;
    RETURN NULL;  -- waiting, being dialed, in doubt, cancelled: the row says what it already says
END $$;

-- Writes a contact's state onto its lead; on failure the contact is marked for another try.
CREATE FUNCTION dialer._lead_sync(p_contact_id bigint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c dialer.campaign_contacts;
    a dialer.lead_attachments;
    v text[];
    ok boolean;
BEGIN
    SELECT * INTO c FROM dialer.campaign_contacts WHERE id = p_contact_id;
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = c.lead_attachment_id;
    IF a.id IS NULL THEN
        RETURN;
    END IF;
    v := dialer._lead_values(c, a);
    IF v IS NULL THEN
        ok := true;
    ELSE
        ok := dialer._lead_write(a.id, c.lead_ref, v);
    END IF;
    IF ok IS DISTINCT FROM NOT c.lead_sync_pending THEN
        UPDATE dialer.campaign_contacts SET lead_sync_pending = NOT ok WHERE id = c.id;
    END IF;
END $$;
REVOKE EXECUTE ON FUNCTION dialer._lead_sync(bigint) FROM PUBLIC;

-- After any change to an attached contact (not the change of its sync flag itself).
CREATE FUNCTION dialer._lead_contact_changed()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'dialer.campaign_contacts'::regclass THEN
        RAISE EXCEPTION 'dialer._lead_contact_changed is pg_dialer''s own trigger' USING ERRCODE = '42501';
    END IF;
    PERFORM dialer._lead_sync(NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER campaign_contacts_lead_sync AFTER UPDATE ON dialer.campaign_contacts
    FOR EACH ROW WHEN (NEW.lead_attachment_id IS NOT NULL AND OLD.lead_sync_pending = NEW.lead_sync_pending)
    EXECUTE FUNCTION dialer._lead_contact_changed();

-- Accepted calls change only their call row: their leads are told here (_record_dispatch).
CREATE FUNCTION dialer._lead_calls_accepted(p_call_ids bigint[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._lead_sync(c.id)
       FROM dialer.calls k JOIN dialer.campaign_contacts c ON c.id = k.contact_id
      WHERE k.id = ANY (p_call_ids) AND c.lead_attachment_id IS NOT NULL;
END $$;

-- Write-backs that failed (the table refused them), tried again by the worker each tick.
CREATE FUNCTION dialer._lead_resync(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
    cid bigint;
BEGIN
    FOR cid IN SELECT c.id FROM dialer.campaign_contacts c WHERE c.lead_sync_pending ORDER BY c.id LIMIT p_limit LOOP
        PERFORM dialer._lead_sync(cid);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- A lead row in the pending status: its contact, unless it has a live one. Bad data is written
-- back (Trashed for a phone number that is not one, AI_FAILED for an unknown provider type).
CREATE FUNCTION dialer._lead_queue(a dialer.lead_attachments, p_row jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    col jsonb := a.columns;
    key text := p_row ->> (col->>'key');
    phone text := regexp_replace(coalesce(p_row ->> (col->>'phone'), ''), '[\s().-]', '', 'g');
    provider_type text := p_row ->> (col->>'ai_provider_type');
    mapping bigint := a.agent_mapping_id;
    vars jsonb := '{}';
    v text;
    new_id bigint;
BEGIN
    IF key IS NULL THEN
        RETURN NULL;
    END IF;
    IF phone !~ '^\+[1-9][0-9]{6,14}$' THEN
        PERFORM dialer._lead_write(a.id, key, ARRAY[a.statuses->>'trashed', NULL, NULL, NULL, NULL,
            format('invalid phone number %s: write it in E.164 form, e.g. +14155550123', coalesce(p_row ->> (col->>'phone'), 'NULL')),
            clock_timestamp()::text, NULL, NULL]);
        RETURN NULL;
    END IF;
    IF provider_type IS NOT NULL THEN
        mapping := CASE WHEN a.providers ? provider_type THEN (a.providers ->> provider_type)::bigint
                        WHEN lower(provider_type) = (SELECT m.provider FROM dialer.agent_mappings m WHERE m.id = a.agent_mapping_id)
                        THEN a.agent_mapping_id END;
        IF mapping IS NULL THEN
            PERFORM dialer._lead_write(a.id, key, ARRAY[a.statuses->>'ai_failed', a.statuses->>'call_failed', NULL, NULL, NULL,
                format('no agent mapping for AI provider type %s (name it in the attachment''s "providers" option)',
                       quote_literal(provider_type)),
                clock_timestamp()::text, NULL, NULL]);
            RETURN NULL;
        END IF;
    END IF;
    FOR v IN SELECT jsonb_array_elements_text(coalesce(col->'variables', '[]')) LOOP
        vars := vars || jsonb_build_object(v, p_row -> v);
    END LOOP;
    INSERT INTO dialer.campaign_contacts (batch_id, phone_number, name, variables, lead_ref, source, status, is_job,
                                          agent_mapping_id, timezone, lead_attachment_id)
    VALUES (a.batch_id, phone, p_row ->> (col->>'name'), vars, key, p_row ->> (col->>'call_source_id'), 'queued', true,
            nullif(mapping, a.agent_mapping_id), dialer._zone_for_number(phone), a.id)
    ON CONFLICT (lead_attachment_id, lead_ref)
       WHERE lead_attachment_id IS NOT NULL AND status IN ('pending', 'queued', 'in_progress', 'in_doubt')
       DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NOT NULL THEN
        UPDATE dialer.call_batches SET total_contacts = total_contacts + 1, queued_count = queued_count + 1
         WHERE id = a.batch_id;
        PERFORM dialer._wake_on_commit();
    END IF;
    RETURN new_id;
END $$;
REVOKE EXECUTE ON FUNCTION dialer._lead_queue(dialer.lead_attachments, jsonb) FROM PUBLIC;

-- A lead that leaves the pending status (or the table) before it is dialed: its contact is cancelled.
CREATE FUNCTION dialer._lead_withdraw(a dialer.lead_attachments, p_key text, p_why text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE dialer.campaign_contacts c SET status = 'cancelled', last_error = p_why, updated_at = clock_timestamp()
     WHERE c.lead_attachment_id = a.id AND c.lead_ref = p_key AND c.status IN ('pending', 'queued');
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        UPDATE dialer.call_batches SET queued_count = greatest(queued_count - n, 0) WHERE id = a.batch_id;
    END IF;
    RETURN n;
END $$;
REVOKE EXECUTE ON FUNCTION dialer._lead_withdraw(dialer.lead_attachments, text, text) FROM PUBLIC;

-- The trigger on an attached leads table (argument: the attachment id).
CREATE FUNCTION dialer._lead_changed()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a dialer.lead_attachments;
    r jsonb;
    key text;
BEGIN
    IF TG_NARGS <> 1 OR TG_ARGV[0] !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'dialer._lead_changed takes the attachment id' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = TG_ARGV[0]::bigint;
    IF NOT FOUND THEN
        RETURN NULL;  -- detached (its agency deleted): the table goes on without the dialer
    END IF;
    IF a.leads <> TG_RELID THEN
        RAISE EXCEPTION 'lead attachment % is for table %, not %', a.id, a.leads, TG_RELID::regclass
            USING ERRCODE = '42501', HINT = 'Attach a table with dialer.attach_leads.';
    END IF;
    r := CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END;
    IF a.agency_column IS NOT NULL AND (r ->> a.agency_column) IS DISTINCT FROM a.agency_id::text THEN
        RETURN NULL;  -- another agency's lead in a shared table
    END IF;
    key := r ->> (a.columns->>'key');
    IF TG_OP = 'DELETE' THEN
        PERFORM dialer._lead_withdraw(a, key, 'lead deleted before it was dialed');
    ELSIF (r ->> (a.columns->>'status')) IS DISTINCT FROM a.statuses->>'pending' THEN
        PERFORM dialer._lead_withdraw(a, key, 'lead left the pending status before it was dialed');
    ELSE
        PERFORM dialer._lead_queue(a, r);
    END IF;
    RETURN NULL;
END $$;

-- The caller may act as the table's owner (is it, or a member of its role).
CREATE FUNCTION dialer._caller_owns(p_table regclass)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT pg_catalog.pg_has_role(dialer._caller(), c.relowner, 'USAGE')
                       FROM pg_catalog.pg_class c WHERE c.oid = p_table), false)
$$;

-- Checks and stores an attachment (the API's rights, so the agency and mapping must be the
-- caller's); creates its batch.
CREATE FUNCTION dialer._attach_register(p_leads regclass, p_agency_id bigint, p_mapping_id bigint, p_columns jsonb,
    p_statuses jsonb, p_providers jsonb, p_agency_column text, p_pacing jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    b bigint;
    new_id bigint;
    owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = p_leads);
    k text;
BEGIN
    IF NOT dialer._caller_owns(p_leads) THEN
        RAISE EXCEPTION 'attaching % needs its owner''s rights (it belongs to %)', p_leads, owner::regrole
            USING ERRCODE = '42501';
    END IF;
    PERFORM dialer._check_agency(p_agency_id);
    PERFORM dialer._resolve_mapping(p_agency_id, p_mapping_id);
    FOR k IN SELECT jsonb_object_keys(p_providers) LOOP
        IF jsonb_typeof(p_providers->k) <> 'number' OR (p_providers->>k) !~ '^[0-9]{1,18}$' THEN
            RAISE EXCEPTION 'options.providers.% must be an agent mapping id', k USING ERRCODE = '22023';
        END IF;
        PERFORM dialer._resolve_mapping(p_agency_id, (p_providers->>k)::bigint);
    END LOOP;
    INSERT INTO dialer.call_batches (agency_id, agent_mapping_id, name, kind, status, calls_per_minute, max_concurrent,
                                     max_attempts, retry_delay, retry_backoff, started_at)
    VALUES (p_agency_id, p_mapping_id, 'leads: ' || p_leads::text, 'leads', 'processing',
            (p_pacing->>'calls_per_minute')::integer, (p_pacing->>'max_concurrent')::integer,
            (p_pacing->>'max_attempts')::integer, (p_pacing->>'retry_delay')::interval, 1, now())
    RETURNING id INTO b;
    INSERT INTO dialer.lead_attachments (agency_id, leads, batch_id, agent_mapping_id, columns, statuses, providers, agency_column)
    VALUES (p_agency_id, p_leads, b, p_mapping_id, p_columns, p_statuses, p_providers, p_agency_column)
    RETURNING id INTO new_id;
    PERFORM dialer._attach_install(new_id);
    RETURN new_id;
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION '% is already attached for agency %', p_leads, p_agency_id USING ERRCODE = '42710',
        HINT = 'dialer.detach_leads it first.';
END $$;

-- Creates the attachment's writer (owned by the table's owner) and the trigger on its table.
-- Built from the stored attachment only, identifiers quoted; values always travel as parameters.
CREATE FUNCTION dialer._attach_install(p_attachment_id bigint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a dialer.lead_attachments;
    sets text[] := '{}';
    f text;
    i integer := 0;
    col text;
    typ text;
    writer_name text := 'lead_writer_' || p_attachment_id;
    owner regrole;
BEGIN
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = p_attachment_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lead attachment % does not exist', p_attachment_id USING ERRCODE = 'P0002';
    END IF;
    SELECT c.relowner::regrole INTO owner FROM pg_class c WHERE c.oid = a.leads;
    FOREACH f IN ARRAY dialer._lead_fields() LOOP
        i := i + 1;
        col := a.columns->>f;
        CONTINUE WHEN col IS NULL;
        SELECT format_type(t.atttypid, t.atttypmod) INTO typ FROM pg_attribute t
         WHERE t.attrelid = a.leads AND t.attname = col AND t.attnum > 0 AND NOT t.attisdropped;
        sets := sets || format('%I = coalesce($2[%s]::%s, %I)', col, i, typ, col);
    END LOOP;
    SELECT format_type(t.atttypid, t.atttypmod) INTO typ FROM pg_attribute t
     WHERE t.attrelid = a.leads AND t.attname = a.columns->>'key' AND t.attnum > 0 AND NOT t.attisdropped;
    EXECUTE format('CREATE OR REPLACE FUNCTION dialer.%I(p_key text, p_values text[]) RETURNS void LANGUAGE sql '
                   'SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L',
                   writer_name, format('UPDATE %s SET %s WHERE %I = $1::%s', a.leads, array_to_string(sets, ', '), a.columns->>'key', typ));
    EXECUTE format('ALTER FUNCTION dialer.%I(text, text[]) OWNER TO %s', writer_name, owner);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION dialer.%I(text, text[]) FROM PUBLIC', writer_name);
    UPDATE dialer.lead_attachments SET writer = format('dialer.%I(text, text[])', writer_name)::regprocedure WHERE id = a.id;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR DELETE OR UPDATE OF %I ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION dialer._lead_changed(%L)',
                   'pg_dialer_leads_' || a.id, a.columns->>'status', a.leads, a.id::text);
END $$;
REVOKE EXECUTE ON FUNCTION dialer._attach_install(bigint) FROM PUBLIC;

-- Queues a pending lead of an attachment (attach_leads, for the rows already there). The caller
-- must own the table: a tenant cannot slip numbers into someone else's attachment.
CREATE FUNCTION dialer._attach_queue(p_attachment_id bigint, p_row jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    a dialer.lead_attachments;
BEGIN
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = p_attachment_id;
    IF NOT FOUND OR NOT dialer._caller_owns(a.leads) THEN
        RAISE EXCEPTION 'lead attachment % does not exist or is not yours', p_attachment_id USING ERRCODE = '42501';
    END IF;
    RETURN dialer._lead_queue(a, p_row);
END $$;

-- Attaches a leads table: pending rows (those there now and every one that becomes pending) are
-- dialed with agent_mapping_id, and their fate is written back onto them. Runs with the caller's
-- rights (it reads the table and checks its columns as the caller).
CREATE FUNCTION dialer.attach_leads(leads regclass, agency_id bigint, agent_mapping_id bigint, options jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    defaults constant jsonb := '{"phone": "phone", "status": "status", "ai_call_status": "ai_call_status",
        "ai_call_id": "ai_call_id", "posted_to_ai_date": "posted_to_ai_date", "ai_post_retry_count": "ai_post_retry_count",
        "ai_failure_reason": "ai_failure_reason", "last_ai_attempt": "last_ai_attempt", "staff_id": "staff_id",
        "assigned_date": "assigned_date", "call_source_id": "call_source_id", "ai_provider_type": "ai_provider_type",
        "name": "name"}';
    -- What each field's column may be: text-like, a number, a time, or anything (read as text).
    kinds constant jsonb := '{"phone": "text", "status": "text", "ai_call_status": "text", "ai_call_id": "text",
        "posted_to_ai_date": "time", "ai_post_retry_count": "number", "ai_failure_reason": "text",
        "last_ai_attempt": "time", "staff_id": "any", "assigned_date": "time", "call_source_id": "any",
        "ai_provider_type": "any", "name": "text"}';
    o jsonb := coalesce(options, '{}');
    given jsonb;
    cols jsonb := '{}';
    statuses jsonb;
    rel pg_class;
    pk text[];
    k text;
    col text;
    typ oid;
    cat char;
    pacing jsonb;
    new_id bigint;
    r jsonb;
BEGIN
    IF jsonb_typeof(o) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object' USING ERRCODE = '22023';
    END IF;
    FOR k IN SELECT jsonb_object_keys(o) LOOP
        IF k NOT IN ('columns', 'statuses', 'providers', 'agency_column', 'variables', 'calls_per_minute',
                     'max_concurrent', 'max_attempts', 'retry_delay') THEN
            RAISE EXCEPTION 'unknown option %', quote_literal(k) USING ERRCODE = '22023',
                HINT = 'Options: columns, statuses, providers, agency_column, variables, calls_per_minute, max_concurrent, max_attempts, retry_delay.';
        END IF;
    END LOOP;
    SELECT * INTO rel FROM pg_class c WHERE c.oid = leads;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', leads USING ERRCODE = '42809';
    END IF;
    IF rel.relforcerowsecurity THEN
        RAISE EXCEPTION '% forces row-level security on its owner', leads USING ERRCODE = '0A000',
            HINT = 'pg_dialer reads and writes an attached table with its owner''s rights; ALTER TABLE ... NO FORCE ROW LEVEL SECURITY, or give the owner a policy that lets it see its leads.';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO pk
      FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = leads AND i.indisprimary;
    IF pk IS NULL THEN
        RAISE EXCEPTION '% has no primary key', leads USING ERRCODE = '42P16',
            HINT = 'pg_dialer finds each lead again by its primary key: add one.';
    ELSIF array_length(pk, 1) > 1 THEN
        RAISE EXCEPTION '% has a primary key of % columns; pg_dialer needs a single-column key', leads, array_length(pk, 1)
            USING ERRCODE = '42P16';
    END IF;
    given := coalesce(o->'columns', '{}');
    IF jsonb_typeof(given) <> 'object' THEN
        RAISE EXCEPTION 'options.columns must be a JSON object of field → column name' USING ERRCODE = '22023';
    END IF;
    FOR k IN SELECT jsonb_object_keys(given) LOOP
        IF NOT defaults ? k THEN
            RAISE EXCEPTION 'options.columns: unknown field %', quote_literal(k) USING ERRCODE = '22023',
                HINT = 'Fields: ' || (SELECT string_agg(x, ', ') FROM jsonb_object_keys(defaults) x) || '.';
        END IF;
        IF jsonb_typeof(given->k) NOT IN ('string', 'null') THEN
            RAISE EXCEPTION 'options.columns.% must be a column name (or null for none)', k USING ERRCODE = '22023';
        END IF;
    END LOOP;
    cols := jsonb_build_object('key', pk[1]);
    FOR k IN SELECT jsonb_object_keys(defaults) LOOP
        col := CASE WHEN given ? k THEN given->>k ELSE defaults->>k END;
        CONTINUE WHEN col IS NULL;
        SELECT a.atttypid INTO typ FROM pg_attribute a
         WHERE a.attrelid = leads AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF typ IS NULL THEN
            IF given ? k OR k IN ('phone', 'status') THEN
                RAISE EXCEPTION '% has no column % (for %)', leads, quote_ident(col), k USING ERRCODE = '42703',
                    HINT = 'Name the column in options.columns, e.g. {"columns": {"' || k || '": "my_column"}}.';
            END IF;
            CONTINUE;  -- a default the table does not have: that field is not kept
        END IF;
        SELECT t.typcategory INTO cat FROM pg_type t WHERE t.oid = typ;
        IF (kinds->>k = 'text' AND cat <> 'S') OR (kinds->>k = 'number' AND cat <> 'N') OR (kinds->>k = 'time' AND cat <> 'D') THEN
            RAISE EXCEPTION 'column %.% (for %) is of type %, not %', leads, quote_ident(col), k, typ::regtype,
                CASE kinds->>k WHEN 'text' THEN 'text' WHEN 'number' THEN 'a number' ELSE 'a date or timestamp' END
                USING ERRCODE = '42804';
        END IF;
        cols := cols || jsonb_build_object(k, col);
    END LOOP;
    cols := cols || jsonb_build_object('variables', coalesce(o->'variables', '[]'));
    IF jsonb_typeof(cols->'variables') <> 'array' THEN
        RAISE EXCEPTION 'options.variables must be an array of column names' USING ERRCODE = '22023';
    END IF;
    FOR col IN SELECT jsonb_array_elements_text(cols->'variables') LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = leads AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION '% has no column % (in options.variables)', leads, quote_ident(col) USING ERRCODE = '42703';
        END IF;
    END LOOP;
    IF o ? 'agency_column' AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = leads
                                              AND a.attname = o->>'agency_column' AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION '% has no column % (options.agency_column)', leads, quote_ident(o->>'agency_column') USING ERRCODE = '42703';
    END IF;
    statuses := dialer._lead_default_statuses();
    IF o ? 'statuses' THEN
        IF jsonb_typeof(o->'statuses') <> 'object' THEN
            RAISE EXCEPTION 'options.statuses must be a JSON object of state → status word' USING ERRCODE = '22023';
        END IF;
        FOR k IN SELECT jsonb_object_keys(o->'statuses') LOOP
            IF NOT statuses ? k OR jsonb_typeof(o->'statuses'->k) <> 'string' THEN
                RAISE EXCEPTION 'options.statuses.%: unknown state, or not a string', k USING ERRCODE = '22023',
                    HINT = 'States: ' || (SELECT string_agg(x, ', ') FROM jsonb_object_keys(statuses) x) || '.';
            END IF;
        END LOOP;
        statuses := statuses || (o->'statuses');
    END IF;
    IF o ? 'providers' AND jsonb_typeof(o->'providers') <> 'object' THEN
        RAISE EXCEPTION 'options.providers must be a JSON object of provider type → agent mapping id' USING ERRCODE = '22023';
    END IF;
    -- The seed's pacing: 10 leads per 30 s, 3 attempts, retried on the next cycle.
    BEGIN
        pacing := jsonb_build_object(
            'calls_per_minute', dialer._check_positive(coalesce((o->>'calls_per_minute')::integer, 20), 'calls_per_minute'),
            'max_concurrent', dialer._check_positive(coalesce((o->>'max_concurrent')::integer, 10), 'max_concurrent'),
            'max_attempts', dialer._check_positive(coalesce((o->>'max_attempts')::integer, 3), 'max_attempts'),
            'retry_delay', coalesce((o->>'retry_delay')::interval, '30 seconds'));
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'options: calls_per_minute, max_concurrent and max_attempts are integers, retry_delay an interval (%)', SQLERRM
            USING ERRCODE = '22023';
    END;

    new_id := dialer._attach_register(leads, agency_id, agent_mapping_id, cols, statuses, coalesce(o->'providers', '{}'),
                                      o->>'agency_column', pacing);
    -- The leads already waiting, read with the caller's rights.
    FOR r IN EXECUTE format('SELECT to_jsonb(t) FROM %s t WHERE %I = $1', leads, cols->>'status') USING statuses->>'pending' LOOP
        IF o->>'agency_column' IS NULL OR r->>(o->>'agency_column') = agency_id::text THEN
            PERFORM dialer._attach_queue(new_id, r);
        END IF;
    END LOOP;
    RETURN new_id;
END $$;

-- Detaches a leads table: its trigger and writer go, its waiting contacts are cancelled (calls in
-- progress end normally; their outcome is no longer written back). Returns false if it was not attached.
CREATE FUNCTION dialer.detach_leads(id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    a dialer.lead_attachments;
BEGIN
    SELECT * INTO a FROM dialer.lead_attachments x WHERE x.id = id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF NOT dialer._caller_owns(a.leads) AND NOT dialer._caller_is_operator() THEN
        RAISE EXCEPTION 'detaching % needs its owner''s rights', a.leads USING ERRCODE = '42501';
    END IF;
    PERFORM dialer._attach_uninstall(a.id);
    UPDATE dialer.campaign_contacts c SET status = 'cancelled', last_error = 'leads table detached', updated_at = clock_timestamp()
     WHERE c.batch_id = a.batch_id AND c.status IN ('pending', 'queued');
    UPDATE dialer.call_batches b SET status = 'cancelled', queued_count = 0, completed_at = now() WHERE b.id = a.batch_id;
    DELETE FROM dialer.lead_attachments x WHERE x.id = a.id;
    RETURN true;
END $$;

CREATE FUNCTION dialer._attach_uninstall(p_attachment_id bigint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a dialer.lead_attachments;
BEGIN
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = p_attachment_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = a.leads) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pg_dialer_leads_' || a.id, a.leads);
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS dialer.%I(text, text[])', 'lead_writer_' || a.id);
    UPDATE dialer.lead_attachments SET writer = NULL WHERE id = a.id;
END $$;
REVOKE EXECUTE ON FUNCTION dialer._attach_uninstall(bigint) FROM PUBLIC;

-- _check_mapping_row: new
CREATE FUNCTION dialer._check_mapping_row(m dialer.agent_mappings)
RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- A pool mapping's calls carry a number from the pool; its own from_number may be empty (the
    -- adapter checks a stand-in number's shape, the pool's numbers are checked when added).
    PERFORM dialer._check_agent_mapping(m.provider, m.external_agent_id,
                                        coalesce(m.from_number, CASE WHEN m.use_caller_id_pool THEN '+10000000000' END),
                                        m.carrier, m.request_template);
END $$;

-- _check_mapping_usable: changed
CREATE OR REPLACE FUNCTION dialer._check_mapping_usable(p_mapping_id bigint)
RETURNS void LANGUAGE plpgsql STABLE AS $$
DECLARE
    m dialer.agent_mappings;
BEGIN
    SELECT * INTO m FROM dialer.agent_mappings WHERE id = p_mapping_id;
    IF FOUND THEN
        PERFORM dialer._check_mapping_row(m);
    END IF;
END $$;

-- _check_on_voicemail: new
CREATE FUNCTION dialer._check_on_voicemail(p_policy text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_policy IS NOT NULL AND p_policy NOT IN ('retry', 'done', 'handoff') THEN
        RAISE EXCEPTION 'on_voicemail must be retry, done or handoff, not %', quote_literal(p_policy)
            USING ERRCODE = '22023',
                  HINT = 'retry: dial again after the voicemail retry delay; done: the contact completes; handoff: to the telecallers.';
    END IF;
END $$;

-- _claim_batch: changed
DROP FUNCTION dialer._claim_batch(bigint, timestamptz, integer, interval, integer, timestamptz);

-- _enqueue: changed
DROP FUNCTION dialer._enqueue(bigint, bigint, text, text, integer, timestamptz, jsonb, text, text, bigint);

-- _job_json: changed
CREATE OR REPLACE FUNCTION dialer._job_json(c dialer.campaign_contacts, b dialer.call_batches)
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

-- _job_state: changed
CREATE OR REPLACE FUNCTION dialer._job_state(p_status text, p_next_attempt_at timestamptz, p_batch_status text)
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

-- clean_jobs: changed
CREATE OR REPLACE FUNCTION dialer.clean_jobs(grace interval, "limit" integer DEFAULT 1000, state text DEFAULT 'completed')
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
    UPDATE dialer.call_batches b
       SET total_contacts = greatest(total_contacts - x.cnt, 0),
           completed_count = greatest(completed_count - x.done, 0),
           failed_count = greatest(failed_count - x.failed, 0)
      FROM (SELECT c.batch_id, count(*) AS cnt,
                   count(*) FILTER (WHERE c.status = 'completed') AS done,
                   count(*) FILTER (WHERE c.status = 'failed') AS failed
              FROM dialer.campaign_contacts c WHERE c.id = ANY (doomed) GROUP BY c.batch_id) x
     WHERE b.id = x.batch_id;
    UPDATE dialer.campaign_contacts SET call_id = NULL WHERE id = ANY (doomed);
    DELETE FROM dialer.calls WHERE contact_id = ANY (doomed);
    DELETE FROM dialer.campaign_contacts WHERE id = ANY (doomed);
    RETURN n;
END $$;

-- list_jobs: changed
CREATE OR REPLACE FUNCTION dialer.list_jobs(state text, start integer DEFAULT 0, "end" integer DEFAULT 10)
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

-- queue_stats: changed
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
               'expired', count(*) FILTER (WHERE st = 'expired'),
               'total', count(*))
      INTO result
      FROM (SELECT dialer._job_state(c.status, c.next_attempt_at, b.status) AS st
              FROM dialer.campaign_contacts c JOIN dialer.call_batches b ON b.id = c.batch_id
             WHERE CASE WHEN queue_stats.batch_id IS NULL THEN b.kind = 'queue'
                        ELSE b.id = queue_stats.batch_id END) s;
    RETURN result;
END $$;

-- schedule_bulk_calls: changed
CREATE OR REPLACE FUNCTION dialer.schedule_bulk_calls(calls jsonb)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    el jsonb;
    idx integer := 0;
    ids bigint[] := '{}';
    max_elements constant integer := 10000;
    k text;
BEGIN
    IF calls IS NULL OR jsonb_typeof(calls) <> 'array' THEN
        RAISE EXCEPTION 'calls must be a JSON array of objects' USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(calls) > max_elements THEN
        RAISE EXCEPTION 'too many calls in one request: % (at most %)', jsonb_array_length(calls), max_elements
            USING ERRCODE = '54000', HINT = 'Split the list into several schedule_bulk_calls calls.';
    END IF;
    FOR el IN SELECT value FROM jsonb_array_elements(calls) LOOP
        IF jsonb_typeof(el) <> 'object' THEN
            RAISE EXCEPTION 'calls[%] must be a JSON object, got %', idx, jsonb_typeof(el) USING ERRCODE = '22P02';
        END IF;
        FOR k IN SELECT jsonb_object_keys(el) LOOP
            IF k NOT IN ('to', 'agency_id', 'agent_mapping_id', 'message', 'priority', 'run_at', 'delay',
                         'metadata', 'lead_id', 'dedupe_key', 'expires_at') THEN
                RAISE EXCEPTION 'calls[%] has unknown field %', idx, quote_literal(k) USING ERRCODE = '22P02';
            END IF;
        END LOOP;
        IF jsonb_typeof(el->'to') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'calls[%].to is missing or not a string', idx USING ERRCODE = '22P02';
        END IF;
        IF (el->>'to') !~ '^\+[1-9][0-9]{6,14}$' THEN
            RAISE EXCEPTION 'calls[%].to % is not in E.164 form', idx, quote_literal(el->>'to')
                USING ERRCODE = '22023', HINT = 'Write it as + country code and number, e.g. +14155550123.';
        END IF;
        IF el ? 'priority' AND (jsonb_typeof(el->'priority') <> 'string'
                                OR lower(el->>'priority') NOT IN ('high', 'normal', 'low')) THEN
            RAISE EXCEPTION 'calls[%].priority must be ''high'', ''normal'' or ''low''', idx USING ERRCODE = '22023';
        END IF;
        IF el ? 'metadata' AND jsonb_typeof(el->'metadata') NOT IN ('object', 'null') THEN
            RAISE EXCEPTION 'calls[%].metadata must be a JSON object', idx USING ERRCODE = '22P02';
        END IF;
        IF el ? 'message' AND jsonb_typeof(el->'message') NOT IN ('string', 'null') THEN
            RAISE EXCEPTION 'calls[%].message must be a string', idx USING ERRCODE = '22P02';
        END IF;
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

-- schedule_call: changed
DROP FUNCTION dialer.schedule_call(text, bigint, bigint, text, text, timestamptz, interval, jsonb, text, text);
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

-- set_batch_options: new
CREATE FUNCTION dialer.set_batch_options(batch_id bigint, on_voicemail text DEFAULT NULL,
    expires_at timestamptz DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    b dialer.call_batches := dialer._batch_for_update(batch_id);
BEGIN
    PERFORM dialer._check_on_voicemail(on_voicemail);
    UPDATE dialer.call_batches x
       SET on_voicemail = coalesce(on_voicemail, x.on_voicemail), expires_at = coalesce(expires_at, x.expires_at)
     WHERE x.id = b.id;
    PERFORM dialer._wake_on_commit();  -- an expiry now due is applied at once
END $$;

-- set_disposition: changed
CREATE OR REPLACE FUNCTION dialer.set_disposition(call_id bigint, disposition text, notes text DEFAULT NULL)
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

-- set_queue_options: changed
DROP FUNCTION dialer.set_queue_options(bigint, integer, integer, integer, interval, numeric);
CREATE OR REPLACE FUNCTION dialer.set_queue_options(agency_id bigint, calls_per_minute integer DEFAULT NULL,
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

CREATE OR REPLACE VIEW dialer.batch_progress AS
SELECT b.id AS batch_id, b.agency_id, b.name, b.status,
       b.total_contacts, b.queued_count, b.in_progress_count, b.completed_count, b.failed_count,
       CASE WHEN b.total_contacts = 0 THEN 0
            ELSE round(100.0 * (b.completed_count + b.failed_count + b.expired_count) / b.total_contacts, 1) END AS percent_done,
       b.calls_per_minute, b.max_concurrent, b.last_error,
       b.scheduled_for, b.created_at, b.started_at, b.completed_at,
       -- calls an answering machine took; contacts that expired undialed
       b.voicemail_count, b.expired_count, b.on_voicemail, b.expires_at
  FROM dialer.call_batches b;
ALTER VIEW dialer.batch_progress SET (security_invoker = true);
CREATE OR REPLACE VIEW dialer.health AS
WITH r AS (
    SELECT * FROM dialer.runs WHERE started_at > now() - interval '1 hour'
), k AS (
    SELECT * FROM dialer.calls WHERE created_at > now() - interval '1 hour' AND status <> 'dialing'
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
ALTER VIEW dialer.health SET (security_invoker = true);

-- Attached leads tables and caller-ID pools (sql/attach.sql, sql/caller_ids.sql): the tenant's own.
ALTER TABLE dialer.lead_attachments ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON dialer.lead_attachments USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER TABLE dialer.caller_ids ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON dialer.caller_ids USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
GRANT EXECUTE ON FUNCTION dialer._lead_write(bigint, text, text[]) TO dialer_api;
GRANT EXECUTE ON FUNCTION dialer._lead_sync(bigint) TO dialer_api, dialer_admin;
GRANT EXECUTE ON FUNCTION dialer._lead_queue(dialer.lead_attachments, jsonb) TO dialer_api;
GRANT EXECUTE ON FUNCTION dialer._attach_install(bigint) TO dialer_api;
GRANT EXECUTE ON FUNCTION dialer._attach_uninstall(bigint) TO dialer_api;
GRANT SELECT ON dialer.lead_attachments, dialer.caller_ids TO dialer_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON dialer.lead_attachments, dialer.caller_ids TO dialer_api;
GRANT ALL ON dialer.caller_ids, dialer.lead_attachments TO dialer_admin;
GRANT USAGE, SELECT ON SEQUENCE dialer.caller_ids_id_seq, dialer.lead_attachments_id_seq TO dialer_api, dialer_admin;
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
    WHERE is_job AND status IN ('completed', 'failed', 'cancelled', 'expired');

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
             WHERE c.is_job AND b.kind = 'queue' AND c.status IN ('completed', 'failed', 'cancelled', 'expired')
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

-- Ticks serialize on a row lock no tenant can take (it was an advisory lock anyone could hold).
CREATE TABLE dialer.tick_lock (id integer PRIMARY KEY CHECK (id = 1));
INSERT INTO dialer.tick_lock VALUES (1);
REVOKE ALL ON dialer.tick_lock FROM PUBLIC;
GRANT ALL ON dialer.tick_lock TO dialer_admin;

-- Tenants write only through the API, whose functions run as dialer_api (see sql/security.sql).
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
    USING (role_name IN (SELECT r.rolname FROM pg_roles r WHERE pg_has_role((SELECT dialer._caller()), r.oid, 'MEMBER')));
-- Once per statement, not once per batch.
ALTER POLICY tenant ON dialer.campaign_contacts
    USING (batch_id IN (SELECT b.id FROM dialer.call_batches b WHERE b.agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[])));

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
                  'update_batch_progress', 'why_not_dialed',
                  'add_caller_id', 'remove_caller_id', 'use_caller_id_pool', 'set_batch_options', 'detach_leads',
                  '_attach_register', '_attach_queue')
              ORDER BY 1 LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
        EXECUTE format('ALTER FUNCTION %s OWNER TO dialer_api', f);
    END LOOP;
END $$;

-- Events are the API's and the worker's to send: nobody forges one.
REVOKE EXECUTE ON FUNCTION dialer._notify(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialer._notify(text, jsonb) TO dialer_api, dialer_admin;

-- ==== Throughput and immediate calls (issue 15) ====

-- Jobs given to a queue are counted from an insert-only table, not on the batch row the claim locks.
CREATE TABLE dialer.queue_arrivals (
    batch_id bigint NOT NULL
);
GRANT SELECT, INSERT, DELETE ON dialer.queue_arrivals TO dialer_api;
GRANT ALL ON dialer.queue_arrivals TO dialer_admin;
SELECT pg_catalog.pg_extension_config_dump('dialer.queue_arrivals', '');

-- A queue given a job names itself in the wake-up, so the worker claims from it first.
CREATE FUNCTION dialer._wake_on_commit_for("batch_id" bigint) RETURNS void
STRICT LANGUAGE c AS 'MODULE_PATHNAME', '_wake_on_commit_for_wrapper';

CREATE OR REPLACE FUNCTION dialer._move_batch_counters(p_batch_id bigint, p_failed integer DEFAULT 0,
    p_in_progress integer DEFAULT 0, p_completed integer DEFAULT 0)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dialer.call_batches b
       SET failed_count      = b.failed_count + coalesce(p_failed, 0),
           in_progress_count = greatest(b.in_progress_count + coalesce(p_in_progress, 0), 0),
           completed_count   = b.completed_count + coalesce(p_completed, 0)
     WHERE b.id = p_batch_id;
    RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION dialer.update_batch_progress(batch_id bigint, failed_delta integer DEFAULT 0,
    in_progress_delta integer DEFAULT 0, completed_delta integer DEFAULT 0)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT dialer._move_batch_counters(batch_id, failed_delta, in_progress_delta, completed_delta) THEN
        RAISE EXCEPTION 'batch % does not exist', coalesce(batch_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION dialer._count_arrivals(p_batch_id bigint DEFAULT NULL, p_skip_locked boolean DEFAULT false)
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

CREATE OR REPLACE FUNCTION dialer._promote_batches(p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF EXISTS (SELECT 1 FROM dialer.queue_arrivals) THEN
        PERFORM dialer._count_arrivals(p_skip_locked => true);
    END IF;
    PERFORM dialer._promote_recurring(p_now);
    PERFORM dialer._expire_contacts(p_now);
    PERFORM dialer._lead_resync(20);
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

CREATE OR REPLACE FUNCTION dialer._expire_contacts(p_now timestamptz)
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

CREATE OR REPLACE FUNCTION dialer._claim_batch(p_batch_id bigint, p_now timestamptz, p_budget integer,
    p_lead interval DEFAULT '0', p_global_cps integer DEFAULT 0, p_catch_up_before timestamptz DEFAULT NULL)
RETURNS TABLE (call_id bigint, contact_id bigint, phone_number text, name text, variables jsonb,
               lead_ref text, source text, attempts integer, idempotency_key text, slot_at_ms double precision,
               spacing_ms double precision, agent_mapping_id bigint, metadata jsonb, credential_key text,
               credential_gap_ms double precision, global_gap_ms double precision, from_number text)
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
    agency_day date;
    n integer;
    claimed integer;
    recent integer;
    active integer;
    has_dnc boolean;
BEGIN
    -- FOR NO KEY UPDATE: a transaction adding contacts or jobs to this batch holds a KEY SHARE
    -- lock on it (their foreign key), which must not make the claim pass the batch by.
    SELECT * INTO b FROM dialer.call_batches WHERE id = p_batch_id AND status = 'processing'
       FOR NO KEY UPDATE SKIP LOCKED;
    IF FOUND AND b.kind = 'queue' THEN
        IF dialer._count_arrivals(b.id) > 0 THEN
            SELECT * INTO b FROM dialer.call_batches WHERE id = p_batch_id;
        END IF;
    END IF;
    IF NOT FOUND OR (b.rate_limited_until IS NOT NULL AND b.rate_limited_until > p_now)
       -- nothing is dialed after the batch's deadline, not even a slot claimed ahead
       OR b.expires_at <= p_now + p_lead THEN
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
    SELECT timezone INTO agency_tz FROM dialer.agencies WHERE id = b.agency_id;
    agency_day := (p_now AT TIME ZONE agency_tz)::date;
    -- Calls from the caller-ID pool: never more than its numbers have left today, so that every
    -- claimed contact gets one (_take_caller_id) and none is dialed from an unlisted number.
    IF EXISTS (SELECT 1 FROM dialer.agent_mappings m
                WHERE m.agency_id = b.agency_id AND m.use_caller_id_pool
                  AND (m.id = b.agent_mapping_id OR b.kind IN ('queue', 'leads'))) THEN
        n := least(n, dialer._caller_ids_left(b.agency_id, agency_day));
    END IF;
    IF n <= 0 THEN
        RETURN;
    END IF;
    -- Compliance, against live tables: do-not-call, calling windows, attempt caps.
    PERFORM dialer._compliance_prepare(b, p_now, greatest(n * 4, 50));
    has_dnc := EXISTS (SELECT 1 FROM dialer.do_not_call);

    RETURN QUERY
    WITH candidates AS (
        SELECT c.id, c.phone_number, c.priority FROM dialer.campaign_contacts c
         WHERE c.batch_id = b.id AND c.status = 'queued'
           AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= p_now)
           AND (c.expires_at IS NULL OR c.expires_at > p_now + p_lead)
           -- one live call per number, across every batch (the unique index enforces it); a
           -- scalar subquery, so that it stays one probe of that index per candidate
           AND (SELECT 1 FROM dialer.calls k WHERE k.phone_number = c.phone_number
                                              AND k.status IN ('dialing', 'in_progress', 'in_doubt') LIMIT 1) IS NULL
           -- never a number on the do-not-call list (_compliance_prepare marks those next in line);
           -- written out, not dialer._on_dnc: a sql function with a subquery is never inlined, so
           -- it was a function call per candidate (planned on each claim), the list empty or not
           AND (NOT has_dnc OR (SELECT 1 FROM dialer.do_not_call d
                                 WHERE d.phone_number = c.phone_number
                                   AND (d.agency_id IS NULL OR d.agency_id = b.agency_id) LIMIT 1) IS NULL)
         ORDER BY c.priority, c.id
         -- a queue (or an attached leads table) may hold one number twice (one is picked below); a campaign's
         -- numbers are unique, and every contact locked here beyond n is a row lock for nothing
         LIMIT CASE WHEN b.kind = 'campaign' THEN n ELSE n * 2 END
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
                                  phone_number, local_time, timezone, from_number)
        OVERRIDING SYSTEM VALUE
        SELECT cc.new_call_id, cc.id, b.id, b.agency_id, m.provider,
               format('pgd-%s-%s-%s', cc.id, cc.attempts, left(md5(gen_random_uuid()::text), 12)), 'dialing', p_now,
               cc.phone_number, p_now AT TIME ZONE cc.zone, cc.zone,
               CASE WHEN m.use_caller_id_pool THEN dialer._take_caller_id(b.agency_id, cc.phone_number, agency_day)
                    ELSE m.from_number END
          FROM claimed_contacts cc JOIN dialer.agent_mappings m ON m.id = cc.mapping_id
        RETURNING id, calls.contact_id, calls.idempotency_key, calls.from_number
    )
    SELECT nc.id, cc.id, cc.phone_number, cc.name, cc.variables, cc.lead_ref, cc.source, cc.attempts,
           nc.idempotency_key,
           extract(epoch FROM start + gap * (row_number() OVER (ORDER BY cc.priority, cc.id) - 1))::float8 * 1000,
           extract(epoch FROM b_gap)::float8 * 1000, cc.mapping_id, cc.metadata,
           CASE WHEN has_cred AND cred.max_calls_per_second IS NOT NULL THEN cred.agency_id || ':' || cred.provider END,
           extract(epoch FROM c_gap)::float8 * 1000, extract(epoch FROM g_gap)::float8 * 1000, nc.from_number
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

CREATE OR REPLACE FUNCTION dialer._refresh_statistics()
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
    cols text;
    n integer := 0;
BEGIN
    -- Never wait behind autovacuum (or anyone else) for the lock: try again next time.
    SET LOCAL lock_timeout = '20ms';
    SET LOCAL default_statistics_target = 10;
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

CREATE OR REPLACE FUNCTION dialer._record_dispatch(p_results jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
    k dialer.calls;
    b dialer.call_batches;
    c dialer.campaign_contacts;
    outcome text;
    backoff interval;
    failed integer := 0;
    rate_limited integer := 0;
    retried integer := 0;
    doubtful integer := 0;
    now_ts timestamptz := clock_timestamp();
BEGIN
    FOR r IN SELECT value FROM jsonb_array_elements(p_results) WHERE value->>'outcome' <> 'accepted' LOOP
        SELECT * INTO k FROM dialer.calls WHERE id = (r->>'call_id')::bigint AND status = 'dialing' FOR UPDATE;
        CONTINUE WHEN NOT FOUND;  -- already settled (e.g. adopted by a reconcile)
        SELECT * INTO c FROM dialer.campaign_contacts WHERE id = k.contact_id FOR UPDATE;
        SELECT * INTO b FROM dialer.call_batches WHERE id = k.batch_id;
        outcome := r->>'outcome';

        UPDATE dialer.calls
           SET status = CASE outcome WHEN 'rate_limited' THEN 'rate_limited'
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
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        ELSIF outcome = 'network_error' THEN
            -- The request never reached the provider: retried, and not counted as an attempt.
            retried := retried + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'queued', attempts = greatest(attempts - 1, 0),
                   next_attempt_at = now_ts + greatest(b.retry_delay, interval '1 second'),
                   updated_at = now_ts, last_error = r->>'error'
             WHERE id = c.id;
            UPDATE dialer.call_batches SET queued_count = queued_count + 1 WHERE id = b.id;
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        ELSIF outcome = 'timeout' THEN
            -- The request may have reached the provider: never redialed blindly.
            doubtful := doubtful + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'in_doubt', updated_at = now_ts, last_error = r->>'error'
             WHERE id = c.id;
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        ELSIF c.attempts < b.max_attempts THEN
            retried := retried + 1;
            backoff := b.retry_delay * power(b.retry_backoff, greatest(c.attempts - 1, 0))::double precision;
            UPDATE dialer.campaign_contacts
               SET status = 'queued', next_attempt_at = now_ts + backoff, updated_at = now_ts,
                   last_error = r->>'error'
             WHERE id = c.id;
            UPDATE dialer.call_batches SET queued_count = queued_count + 1 WHERE id = b.id;
            PERFORM dialer._move_batch_counters(b.id, p_in_progress => -1);
        ELSE
            failed := failed + 1;
            UPDATE dialer.campaign_contacts
               SET status = 'failed', updated_at = now_ts, last_error = r->>'error', outcome = 'ai_failed'
             WHERE id = c.id;
            UPDATE dialer.call_batches SET last_error = r->>'error' WHERE id = b.id;
            PERFORM dialer._move_batch_counters(b.id, p_failed => 1, p_in_progress => -1);
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
    RETURN jsonb_build_object('initiated', 0, 'failed', failed, 'rate_limited', rate_limited,
                              'retried', retried, 'in_doubt', doubtful);
END $$;

CREATE OR REPLACE FUNCTION dialer._record_accepted(p_call_ids bigint[], p_provider_call_ids text[], p_http_status integer[],
    p_latency_ms double precision[], p_dispatched_at_ms double precision[], p_requests text[], p_responses text[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE dialer.calls acc
       SET status = 'in_progress', provider_call_id = a.provider_call_id, http_status = a.http_status,
           latency_ms = a.latency_ms, request = a.request::jsonb, response = a.response::jsonb,
           dispatched_at = to_timestamp(a.dispatched_at_ms / 1000.0)
      FROM unnest(p_call_ids, p_provider_call_ids, p_http_status, p_latency_ms, p_dispatched_at_ms, p_requests, p_responses)
           AS a(call_id, provider_call_id, http_status, latency_ms, dispatched_at_ms, request, response)
     WHERE acc.id = a.call_id AND acc.status = 'dialing';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 AND EXISTS (SELECT 1 FROM dialer.lead_attachments) THEN
        PERFORM dialer._lead_calls_accepted(p_call_ids);
    END IF;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION dialer._record_lookup(p_results jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
    k dialer.calls;
    c dialer.campaign_contacts;
    b dialer.call_batches;
    n integer := 0;
BEGIN
    FOR r IN SELECT value FROM jsonb_array_elements(p_results) LOOP
        SELECT * INTO k FROM dialer.calls WHERE id = (r->>'call_id')::bigint AND status = 'in_doubt' FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO c FROM dialer.campaign_contacts WHERE id = k.contact_id FOR UPDATE;
        SELECT * INTO b FROM dialer.call_batches WHERE id = k.batch_id;
        IF r->>'result' = 'found' THEN
            UPDATE dialer.calls SET status = 'in_progress', provider_call_id = coalesce(r->>'provider_call_id', provider_call_id),
                   error = 'adopted: found at the provider by idempotency key', last_polled_at = NULL
             WHERE id = k.id;
            IF c.status = 'in_doubt' AND c.call_id = k.id THEN
                UPDATE dialer.campaign_contacts SET status = 'in_progress', updated_at = clock_timestamp(), last_error = NULL
                 WHERE id = c.id;
                PERFORM dialer._move_batch_counters(b.id, p_in_progress => 1);
            END IF;
            n := n + 1;
        ELSIF r->>'result' = 'not_found' THEN
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

CREATE OR REPLACE FUNCTION dialer._settle_stale_dialing(p_older_than timestamptz)
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

CREATE OR REPLACE FUNCTION dialer._end_call(p_call_id bigint, p_end_reason text, p_answered_at timestamptz,
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

CREATE OR REPLACE FUNCTION dialer.resolve_in_doubt(contact_id bigint, redial boolean)
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

CREATE OR REPLACE FUNCTION dialer._enqueue(p_agency_id bigint, p_mapping_id bigint, p_to text, p_message text,
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
    -- Immediate: dialed at once (the worker claims from this queue first). Delayed: the worker
    -- learns its next wake-up time.
    PERFORM dialer._wake_on_commit_for(q);
    RETURN job;
END $$;

CREATE OR REPLACE FUNCTION dialer.cancel_job(job_id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c dialer.campaign_contacts;
BEGIN
    SELECT * INTO c FROM dialer.campaign_contacts WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', coalesce(job_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
    IF c.status = 'in_progress' THEN
        RAISE NOTICE 'job % is already dialing or in a call and cannot be cancelled', job_id;
        RETURN false;
    ELSIF c.status NOT IN ('pending', 'queued') THEN
        RAISE NOTICE 'job % is already % and cannot be cancelled', job_id, c.status;
        RETURN false;
    END IF;
    UPDATE dialer.campaign_contacts SET status = 'cancelled', last_error = 'cancelled by cancel_job',
           updated_at = clock_timestamp()
     WHERE id = c.id;
    PERFORM dialer._count_arrivals(c.batch_id);
    UPDATE dialer.call_batches SET queued_count = greatest(queued_count - 1, 0) WHERE id = c.batch_id;
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION dialer.add_do_not_call(phone_number text, agency_id bigint DEFAULT NULL, reason text DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION dialer.set_provider_rate_limit(agency_id bigint, provider text, max_calls_per_second integer)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF max_calls_per_second IS NOT NULL AND max_calls_per_second <= 0 THEN
        RAISE EXCEPTION 'max_calls_per_second must be a positive integer or NULL, got %', max_calls_per_second
            USING ERRCODE = '22023';
    END IF;
    UPDATE dialer.provider_credentials pc
       SET max_calls_per_second = set_provider_rate_limit.max_calls_per_second, next_slot_at = NULL, updated_at = now()
     WHERE pc.agency_id = set_provider_rate_limit.agency_id AND pc.provider = set_provider_rate_limit.provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no % credentials for agency %', provider, agency_id USING ERRCODE = 'P0002',
            HINT = 'Store them first with dialer.set_provider_credentials(...).';
    END IF;
    PERFORM dialer._wake_on_commit();  -- a higher limit counts from now
END $$;

-- API functions replaced above: SECURITY DEFINER again, as in security.sql.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'dialer'::regnamespace AND p.proname IN ('update_batch_progress', 'resolve_in_doubt', 'cancel_job', 'add_do_not_call', 'set_queue_options', 'set_provider_rate_limit') LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION dialer._record_status(p_results jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r jsonb;
    k dialer.calls;
    n integer := 0;
BEGIN
    FOR r IN SELECT value FROM jsonb_array_elements(p_results) LOOP
        SELECT * INTO k FROM dialer.calls WHERE id = (r->>'call_id')::bigint AND status = 'in_progress' FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        -- A call's row is written only when something changed: a poll of a live call that learnt
        -- nothing new left a dead row version (and ten index entries) behind every few seconds.
        IF r ? 'response' THEN
            UPDATE dialer.calls SET response = r->'response' WHERE id = k.id;
        END IF;
        IF coalesce((r->>'ended')::boolean, false) THEN
            -- _end_call writes answered_at with the end, in the same update
            IF dialer._end_call(k.id, r->>'end_reason', (r->>'answered_at')::timestamptz, (r->>'ended_at')::timestamptz) THEN
                n := n + 1;
            END IF;
        ELSIF k.answered_at IS NULL AND r->>'answered_at' IS NOT NULL THEN
            UPDATE dialer.calls SET answered_at = (r->>'answered_at')::timestamptz WHERE id = k.id;
        END IF;
    END LOOP;
    RETURN n;
END $$;

-- ==== end of throughput ====
