-- pg_dialer 0.2.0 → 0.3.0 (ALTER EXTENSION pg_dialer UPDATE TO '0.3.0').
--
-- Real provider contracts: Ultravox calls with an agent go to /api/agents/{id}/calls with the
-- carrier's outgoing medium (new column agent_mappings.carrier, Telnyx by default, and a new
-- create_agent_mapping argument); mappings are checked against their provider's API whenever
-- they are stored (a trigger), and again before a batch or job uses one stored earlier. Vapi,
-- Retell and Bland join the providers. End reasons arrive in pg_dialer's own words.
\echo Use "ALTER EXTENSION pg_dialer UPDATE TO '0.3.0'" to load this file. \quit

ALTER TABLE dialer.provider_credentials DROP CONSTRAINT provider_credentials_provider_check,
    ADD CONSTRAINT provider_credentials_provider_check
        CHECK (provider IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook'));
ALTER TABLE dialer.agent_mappings DROP CONSTRAINT agent_mappings_provider_check,
    ADD CONSTRAINT agent_mappings_provider_check
        CHECK (provider IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook')),
    ALTER COLUMN external_agent_id DROP NOT NULL,
    ADD COLUMN carrier text CHECK (carrier IN ('telnyx', 'twilio', 'plivo'));
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

-- Functions new or changed since 0.2.0 (scripts/upgrade-functions.py lists them).
-- _agent_mapping_checked: new
CREATE OR REPLACE FUNCTION dialer._agent_mapping_checked()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._check_agent_mapping(NEW.provider, NEW.external_agent_id, NEW.from_number, NEW.carrier,
                                        NEW.request_template);
    RETURN NEW;
END $$;

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
    IF provider = 'twilio' AND account_sid IS NULL THEN
        RAISE EXCEPTION 'twilio credentials need account_sid' USING ERRCODE = '22023';
    END IF;
    IF provider = 'twilio' AND account_sid !~ '^AC[0-9a-fA-F]{32}$' THEN
        RAISE EXCEPTION 'account_sid % is not a Twilio account SID (AC followed by 32 hex digits)', quote_literal(account_sid)
            USING ERRCODE = '22023', HINT = 'Copy it from the Twilio console (Account Info).';
    END IF;
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
END $$;


CREATE TRIGGER agent_mappings_checked BEFORE INSERT OR UPDATE ON dialer.agent_mappings
    FOR EACH ROW EXECUTE FUNCTION dialer._agent_mapping_checked();
