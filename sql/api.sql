-- pg_dialer SQL API for campaigns (process-call-batches seed).
-- Errors carry SQLSTATEs: 22023 bad argument value, P0002 unknown id, 22P02 malformed JSON element.

-- Raises an error with its SQLSTATE, message and hint (NULL: none), for the checks below, which
-- then say only what they check. VOLATILE: the planner never runs it ahead of the CASE around it.
CREATE FUNCTION dialer._refuse(p_sqlstate text, p_message text, p_hint text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message;
    END IF;
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, HINT = p_hint;
END $$;

-- (plpgsql, not sql like the checks after it: it runs once per job a bulk call schedules, and a
-- sql function that cannot be inlined is planned again on every call.)
CREATE FUNCTION dialer._check_e164(p_phone text, p_what text DEFAULT 'phone number')
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_phone IS NULL OR p_phone !~ '^\+[1-9][0-9]{6,14}$' THEN
        PERFORM dialer._refuse('22023', format('%s %s is not in E.164 form', p_what, coalesce(quote_literal(p_phone), 'NULL')),
                               'Write it as + country code and number, digits only, e.g. +14155550123.');
    END IF;
    RETURN p_phone;
END $$;

CREATE FUNCTION dialer._check_timezone(p_tz text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = p_tz) THEN p_tz
           ELSE dialer._refuse('22023', format('unknown time zone %s', coalesce(quote_literal(p_tz), 'NULL')),
                               'Use an IANA zone name such as ''Europe/Berlin'' or ''UTC''.') END
$$;

CREATE FUNCTION dialer._check_provider(p_provider text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_provider IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook') THEN p_provider
           ELSE dialer._refuse('22023', format('unknown provider %s', coalesce(quote_literal(p_provider), 'NULL')),
                               'The providers are ''ultravox'', ''twilio'', ''vapi'', ''retell'', ''bland'' and ''webhook''.') END
$$;

CREATE FUNCTION dialer._check_agency(p_agency_id bigint)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM dialer.agencies WHERE id = p_agency_id) THEN p_agency_id
           ELSE dialer._refuse('P0002', format('agency %s does not exist', coalesce(p_agency_id::text, 'NULL')),
                               'Create it with dialer.create_agency(name).')::bigint END
$$;

CREATE FUNCTION dialer._check_positive(p_value integer, p_name text)
RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_value > 0 THEN p_value
           ELSE dialer._refuse('22023', format('%s must be a positive integer, got %s', p_name, coalesce(p_value::text, 'NULL')))::integer END
$$;

-- An agency's account at a provider, as the functions that set one up name it.
CREATE FUNCTION dialer._check_account(p_agency_id bigint, p_provider text)
RETURNS void LANGUAGE sql STABLE AS $$
    SELECT FROM dialer._check_agency(p_agency_id), dialer._check_provider(p_provider)
$$;

CREATE FUNCTION dialer._batch_for_update(p_batch_id bigint)
RETURNS dialer.call_batches LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dialer.call_batches;
BEGIN
    SELECT * INTO b FROM dialer.call_batches WHERE id = p_batch_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch % does not exist', coalesce(p_batch_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
    RETURN b;
END $$;

CREATE FUNCTION dialer.create_agency(name text, timezone text DEFAULT 'UTC')
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    IF name IS NULL OR length(btrim(name)) = 0 THEN
        RAISE EXCEPTION 'agency name must not be empty' USING ERRCODE = '22023';
    END IF;
    PERFORM dialer._check_timezone(timezone);
    INSERT INTO dialer.agencies (name, timezone) VALUES (create_agency.name, create_agency.timezone)
    RETURNING id INTO new_id;
    RETURN new_id;
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'an agency named % already exists', quote_literal(create_agency.name)
        USING ERRCODE = '23505';
END $$;

-- Callers store keys without being able to read them back: dialer_user has INSERT and UPDATE on
-- provider_credentials but no SELECT on the key columns, so this function writes without reading
-- (an UPDATE, then an INSERT when no row was there; ON CONFLICT would need to read the row).
CREATE FUNCTION dialer.set_provider_credentials(agency_id bigint, provider text, api_key text,
    base_url text DEFAULT NULL, account_sid text DEFAULT NULL, webhook_secret text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    attempt integer;
BEGIN
    PERFORM dialer._check_account(agency_id, provider);
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

-- What a tenant stores is bounded (docs/security.md, "Limits"), so that nothing stored can be too
-- large or too deep for the worker to read back: a contact's texts (22001) and its JSON, in size
-- and depth (54000).
CREATE FUNCTION dialer._contact_bounded()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF length(NEW.name) > 200 OR length(NEW.lead_ref) > 200 OR length(NEW.source) > 100
       OR length(NEW.dedupe_key) > 200 OR length(NEW.message) > 4000 THEN
        RAISE EXCEPTION 'a contact''s text is too long: name, lead_ref and dedupe_key are at most 200 characters, source 100, message 4000'
            USING ERRCODE = '22001', DETAIL = format('name %s, lead_ref %s, dedupe_key %s, source %s, message %s characters',
                coalesce(length(NEW.name), 0), coalesce(length(NEW.lead_ref), 0), coalesce(length(NEW.dedupe_key), 0),
                coalesce(length(NEW.source), 0), coalesce(length(NEW.message), 0));
    END IF;
    IF pg_column_size(NEW.variables) > 65536 OR pg_column_size(NEW.metadata) > 65536 THEN
        RAISE EXCEPTION 'a contact''s variables and metadata are at most 64 kB each' USING ERRCODE = '54000';
    END IF;
    IF dialer._json_depth(NEW.variables::text) > 32 OR dialer._json_depth(NEW.metadata::text) > 32 THEN
        RAISE EXCEPTION 'a contact''s variables and metadata nest at most 32 levels deep' USING ERRCODE = '54000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER campaign_contacts_bounded
    BEFORE INSERT OR UPDATE OF variables, metadata, name, lead_ref, source, dedupe_key, message ON dialer.campaign_contacts
    FOR EACH ROW EXECUTE FUNCTION dialer._contact_bounded();

-- The other texts a tenant stores (names, sources, notes, reasons): each column's limit is an
-- argument of the trigger (column, characters, column, characters, …); too long is 22001.
CREATE FUNCTION dialer._text_bounded()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r jsonb := to_jsonb(NEW);
    i integer := 0;
BEGIN
    WHILE i + 1 < TG_NARGS LOOP
        IF length(r ->> TG_ARGV[i]) > TG_ARGV[i + 1]::integer THEN
            RAISE EXCEPTION '%.% is at most % characters, got %', TG_TABLE_NAME, TG_ARGV[i], TG_ARGV[i + 1],
                length(r ->> TG_ARGV[i]) USING ERRCODE = '22001';
        END IF;
        i := i + 2;
    END LOOP;
    RETURN NEW;
END $$;

-- What a foreign key cannot say, because the row has no agency of its own: a queue job's own
-- agent mapping and a follow-up's telecaller belong to the agency of the contact's batch. Runs
-- as the owner, to compare agencies whatever the writer may see.
CREATE FUNCTION dialer._same_agency()
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

-- The Vault names an agency's credentials may use: they start with agency_<id>_, so a tenant can
-- name only secrets made for its own agency (resolving is held to the same rule, src/api/credentials.rs).
CREATE FUNCTION dialer._vault_prefix(p_agency_id bigint)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'agency_' || p_agency_id || '_'
$$;

-- A Vault secret for an agency's credentials (the worker, get_agency_credentials): only a name of
-- that agency's. SECURITY DEFINER: Vault is readable by its owner's roles, not by dialer_worker.
CREATE FUNCTION dialer._vault_secret(p_agency_id bigint, p_name text)
RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    secret text;
BEGIN
    IF NOT starts_with(p_name, dialer._vault_prefix(p_agency_id)) THEN
        RAISE EXCEPTION 'Vault secret % is not agency %''s: its credentials may name only secrets whose names start with %',
            quote_literal(left(p_name, 100)), p_agency_id, dialer._vault_prefix(p_agency_id) USING ERRCODE = '42501';
    END IF;
    IF to_regclass('vault.decrypted_secrets') IS NULL THEN
        RAISE EXCEPTION 'the credentials name Vault secret %, but Supabase Vault (vault.decrypted_secrets) is not installed here',
            quote_literal(p_name) USING ERRCODE = 'P0002';
    END IF;
    EXECUTE 'SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = $1 LIMIT 1' INTO secret USING p_name;
    IF secret IS NULL THEN
        RAISE EXCEPTION 'Vault has no secret named %', quote_literal(p_name) USING ERRCODE = 'P0002';
    END IF;
    RETURN secret;
END $$;

-- A base_url decides where a provider key is sent, so only the owner and dialer_admin may set
-- one, only to a host in dialer.allowed_hosts, and a key is bound to the host it was stored
-- with: moving the host needs the key again in the same statement (a value not sealed yet: the
-- stored ciphertext copied over is not the key given), however the row is written.
CREATE FUNCTION dialer._provider_credentials_guarded()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_url text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.base_url END;
    vault_names text := 'vault:' || dialer._vault_prefix(NEW.agency_id);
BEGIN
    IF NEW.base_url IS DISTINCT FROM old_url AND NEW.base_url IS NOT NULL THEN
        IF NOT dialer._caller_is_operator() THEN
            RAISE EXCEPTION 'only the extension owner or dialer_admin may set a base_url'
                USING ERRCODE = '42501', HINT = 'Store the key without base_url: requests go to the provider''s own API.';
        END IF;
        PERFORM dialer._check_base_url(NEW.base_url);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.base_url IS DISTINCT FROM OLD.base_url AND starts_with(NEW.api_key, 'pgd1:') THEN
        RAISE EXCEPTION 'changing base_url needs the api_key again: a key is bound to the host it was stored with'
            USING ERRCODE = '22023', HINT = 'Use dialer.set_provider_credentials(agency_id, provider, api_key, base_url, ...).';
    END IF;
    IF (starts_with(NEW.api_key, 'vault:') AND NOT starts_with(NEW.api_key, vault_names))
       OR (starts_with(NEW.webhook_secret, 'vault:') AND NOT starts_with(NEW.webhook_secret, vault_names)) THEN
        RAISE EXCEPTION 'agency %''s credentials may name only Vault secrets whose names start with %',
            NEW.agency_id, dialer._vault_prefix(NEW.agency_id) USING ERRCODE = '42501',
            HINT = 'Store the secret in Vault as ' || dialer._vault_prefix(NEW.agency_id) || '<name> and give vault:' || dialer._vault_prefix(NEW.agency_id) || '<name>.';
    END IF;
    -- Stored encrypted, whoever writes the row (a value already sealed is kept as it is).
    NEW.api_key := dialer._seal(NEW.api_key, NEW.agency_id, NEW.provider, 'api_key');
    NEW.webhook_secret := dialer._seal(NEW.webhook_secret, NEW.agency_id, NEW.provider, 'webhook_secret');
    RETURN NEW;
END $$;
CREATE TRIGGER provider_credentials_guarded BEFORE INSERT OR UPDATE ON dialer.provider_credentials
    FOR EACH ROW EXECUTE FUNCTION dialer._provider_credentials_guarded();

-- An operator's explicit choice to take unsigned webhooks for one provider account (owner and
-- dialer_admin only): without it, a webhook that cannot be verified is refused.
CREATE FUNCTION dialer.allow_unsigned_webhooks(agency_id bigint, provider text, allow boolean DEFAULT true)
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
REVOKE EXECUTE ON FUNCTION dialer.allow_unsigned_webhooks(bigint, text, boolean) FROM PUBLIC;

-- The provider account's own limit, shared by every batch that uses it (NULL = none).
CREATE FUNCTION dialer.set_provider_rate_limit(agency_id bigint, provider text, max_calls_per_second integer)
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

CREATE FUNCTION dialer.get_agency_credentials(agency_id bigint, provider text DEFAULT 'ultravox')
RETURNS TABLE (api_key text, base_url text, account_sid text, webhook_secret text, max_calls_per_second integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT dialer._unseal(pc.api_key, pc.agency_id, pc.provider, 'api_key'), pc.base_url, pc.account_sid,
           dialer._unseal(pc.webhook_secret, pc.agency_id, pc.provider, 'webhook_secret'), pc.max_calls_per_second
      FROM dialer.provider_credentials pc
     WHERE pc.agency_id = get_agency_credentials.agency_id AND pc.provider = get_agency_credentials.provider
$$;
REVOKE EXECUTE ON FUNCTION dialer.get_agency_credentials(bigint, text) FROM PUBLIC;

CREATE FUNCTION dialer.create_agent_mapping(agency_id bigint, provider text, external_agent_id text,
    agent_name text DEFAULT NULL, from_number text DEFAULT NULL, request_template jsonb DEFAULT '{}',
    carrier text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    PERFORM dialer._check_account(agency_id, provider);
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

-- Every agent mapping, however written, is one its provider would accept: an unknown or mistyped
-- template field, a missing from number or agent id is refused here, not found at dial time.
-- A mapping row checked against its provider's API (dialer._check_agent_mapping).
CREATE FUNCTION dialer._check_mapping_row(m dialer.agent_mappings)
RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- A pool mapping's calls carry a number from the pool; its own from_number may be empty (the
    -- adapter checks a stand-in number's shape, the pool's numbers are checked when added).
    PERFORM dialer._check_agent_mapping(m.provider, m.external_agent_id,
                                        coalesce(m.from_number, CASE WHEN m.use_caller_id_pool THEN '+10000000000' END),
                                        m.carrier, m.request_template);
END $$;

CREATE FUNCTION dialer._agent_mapping_checked()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._check_mapping_row(NEW);
    RETURN NEW;
END $$;
CREATE TRIGGER agent_mappings_checked BEFORE INSERT OR UPDATE ON dialer.agent_mappings
    FOR EACH ROW EXECUTE FUNCTION dialer._agent_mapping_checked();

-- A mapping stored before its checks existed (an upgrade) is checked again before a batch or job
-- uses it, so nobody is queued for a request the provider will refuse.
CREATE FUNCTION dialer._check_mapping_usable(p_mapping_id bigint)
RETURNS void LANGUAGE plpgsql STABLE AS $$
DECLARE
    m dialer.agent_mappings;
BEGIN
    SELECT * INTO m FROM dialer.agent_mappings WHERE id = p_mapping_id;
    IF FOUND THEN
        PERFORM dialer._check_mapping_row(m);
    END IF;
END $$;

CREATE FUNCTION dialer.create_batch(agency_id bigint, agent_mapping_id bigint, name text,
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

-- The list a bulk function takes (add_contacts' contacts, schedule_bulk_calls' calls), named p_name
-- in errors: a JSON array of at most p_max elements (more: too many for one p_per of p_fn).
CREATE FUNCTION dialer._check_json_list(p_list jsonb, p_name text, p_max integer, p_per text, p_fn text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_list IS NULL OR jsonb_typeof(p_list) <> 'array' THEN
        RAISE EXCEPTION '% must be a JSON array of objects', p_name USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(p_list) > p_max THEN
        RAISE EXCEPTION 'too many % in one %: % (at most %)', p_name, p_per, jsonb_array_length(p_list), p_max
            USING ERRCODE = '54000', HINT = format('Split the list into several %s calls.', p_fn);
    END IF;
END $$;

-- Element p_idx of such a list: a JSON object (with no key outside p_keys, when they are given)
-- whose field p_phone is a number in E.164 form.
CREATE FUNCTION dialer._check_json_element(p_el jsonb, p_name text, p_idx integer, p_phone text,
    p_keys text[] DEFAULT NULL)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
BEGIN
    IF jsonb_typeof(p_el) <> 'object' THEN
        RAISE EXCEPTION '%[%] must be a JSON object, got %', p_name, p_idx, jsonb_typeof(p_el) USING ERRCODE = '22P02';
    END IF;
    IF p_keys IS NOT NULL THEN
        FOR k IN SELECT jsonb_object_keys(p_el) LOOP
            IF NOT k = ANY (p_keys) THEN
                RAISE EXCEPTION '%[%] has unknown field %', p_name, p_idx, quote_literal(k) USING ERRCODE = '22P02';
            END IF;
        END LOOP;
    END IF;
    IF jsonb_typeof(p_el->p_phone) IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION '%[%].% is missing or not a string', p_name, p_idx, p_phone USING ERRCODE = '22P02';
    END IF;
    IF (p_el->>p_phone) !~ '^\+[1-9][0-9]{6,14}$' THEN
        RAISE EXCEPTION '%[%].% % is not in E.164 form', p_name, p_idx, p_phone, quote_literal(p_el->>p_phone)
            USING ERRCODE = '22023', HINT = 'Write it as + country code and number, e.g. +14155550123.';
    END IF;
END $$;

-- An optional field of such an element: absent, or of one of the JSON types p_types (p_what names
-- them in the error: 'a string', 'a JSON object').
CREATE FUNCTION dialer._check_json_field(p_el jsonb, p_name text, p_idx integer, p_field text, p_types text[],
    p_what text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_el ? p_field AND NOT jsonb_typeof(p_el->p_field) = ANY (p_types) THEN
        RAISE EXCEPTION '%[%].% must be %', p_name, p_idx, p_field, p_what USING ERRCODE = '22P02';
    END IF;
END $$;

-- All or nothing: every element is checked before any row is written. A number already in
-- the batch is skipped (unique(batch_id, phone_number)); the count of rows added is returned.
CREATE FUNCTION dialer.add_contacts(batch_id bigint, contacts jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dialer.call_batches;
    el jsonb;
    idx integer := 0;
    added integer;
    max_elements constant integer := 100000;
BEGIN
    b := dialer._batch_for_update(batch_id);
    IF b.status IN ('completed', 'cancelled') THEN
        RAISE EXCEPTION 'batch % is %; contacts can only be added to an open batch', b.id, b.status
            USING ERRCODE = '55000';
    END IF;
    PERFORM dialer._check_json_list(contacts, 'contacts', max_elements, 'call', 'add_contacts');
    FOR el IN SELECT value FROM jsonb_array_elements(contacts) LOOP
        PERFORM dialer._check_json_element(el, 'contacts', idx, 'phone_number');
        PERFORM dialer._check_json_field(el, 'contacts', idx, 'name', ARRAY['string', 'null'], 'a string');
        PERFORM dialer._check_json_field(el, 'contacts', idx, 'variables', ARRAY['object', 'null'], 'a JSON object');
        IF el ? 'priority' AND (jsonb_typeof(el->'priority') <> 'number'
                                OR (el->>'priority') !~ '^-?[0-9]{1,6}$') THEN
            RAISE EXCEPTION 'contacts[%].priority must be an integer', idx USING ERRCODE = '22P02';
        END IF;
        PERFORM dialer._check_json_field(el, 'contacts', idx, 'lead_ref', ARRAY['string', 'number', 'null'], 'a string');
        PERFORM dialer._check_json_field(el, 'contacts', idx, 'source', ARRAY['string', 'null'], 'a string');
        IF el ? 'timezone' AND (jsonb_typeof(el->'timezone') <> 'string'
                                OR NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = el->>'timezone')) THEN
            RAISE EXCEPTION 'contacts[%].timezone % is not a known IANA time zone', idx, el->'timezone'
                USING ERRCODE = '22023';
        END IF;
        idx := idx + 1;
    END LOOP;

    WITH ins AS (
        INSERT INTO dialer.campaign_contacts (batch_id, phone_number, name, variables, priority, lead_ref, source, status,
                                              timezone)
        SELECT b.id, e->>'phone_number', e->>'name', coalesce(nullif(e->'variables', 'null'::jsonb), '{}'),
               coalesce((e->>'priority')::integer, 2), e->>'lead_ref', e->>'source',
               CASE WHEN b.status = 'processing' THEN 'queued' ELSE 'pending' END,
               coalesce(e->>'timezone', dialer._zone_for_number(e->>'phone_number'))
          FROM jsonb_array_elements(contacts) WITH ORDINALITY AS t(e, ord)
         ORDER BY ord
        ON CONFLICT (batch_id, phone_number) WHERE NOT is_job DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO added FROM ins;

    UPDATE dialer.call_batches
       SET total_contacts = total_contacts + added, queued_count = queued_count + added
     WHERE id = b.id;
    IF added > 0 THEN
        PERFORM dialer._wake_on_commit();
    END IF;
    RETURN added;
END $$;

-- The seed's RPC: the next queued contacts of a batch that are due, best priority first.
-- Rows are locked (SKIP LOCKED) so concurrent claimers never get the same contact.
CREATE FUNCTION dialer.get_batch_contacts_to_call(batch_id bigint, max_contacts integer)
RETURNS SETOF dialer.campaign_contacts LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM dialer._batch_for_update(batch_id);
    IF max_contacts IS NULL OR max_contacts < 0 THEN
        RAISE EXCEPTION 'max_contacts must be zero or more, got %', coalesce(max_contacts::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT c.* FROM dialer.campaign_contacts c
         WHERE c.batch_id = get_batch_contacts_to_call.batch_id AND c.status = 'queued'
           AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= clock_timestamp())
         ORDER BY c.priority, c.id
         LIMIT max_contacts
           FOR UPDATE SKIP LOCKED;
END $$;

-- Moves a batch's counters, with the caller's rights: the worker's steps and the functions that
-- end calls use this, not the API's update_batch_progress (a SECURITY DEFINER call under row
-- security cost the worker half a millisecond per ended call). Returns whether the batch exists.
CREATE FUNCTION dialer._move_batch_counters(p_batch_id bigint, p_failed integer DEFAULT 0,
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

-- The seed's RPC: atomically moves a batch's counters. queued_count follows in_progress so that
-- a contact leaving the queue for a call is counted once.
CREATE FUNCTION dialer.update_batch_progress(batch_id bigint, failed_delta integer DEFAULT 0,
    in_progress_delta integer DEFAULT 0, completed_delta integer DEFAULT 0)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT dialer._move_batch_counters(batch_id, failed_delta, in_progress_delta, completed_delta) THEN
        RAISE EXCEPTION 'batch % does not exist', coalesce(batch_id::text, 'NULL') USING ERRCODE = 'P0002';
    END IF;
END $$;

-- A batch's status moves to p_to from one of p_from, the batch locked (an id not the caller's is
-- P0002); from any other status nothing changes and the answer is false.
CREATE FUNCTION dialer._move_batch(p_batch_id bigint, p_from text[], p_to text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    b dialer.call_batches := dialer._batch_for_update(p_batch_id);
BEGIN
    UPDATE dialer.call_batches SET status = p_to WHERE id = b.id AND status = ANY (p_from);
    RETURN FOUND;
END $$;

CREATE FUNCTION dialer.pause_batch(batch_id bigint)
RETURNS boolean LANGUAGE sql AS $$
    SELECT dialer._move_batch(batch_id, '{pending,scheduled,processing}', 'paused')
$$;

-- Back to pending so the next tick promotes it (and queues contacts added meanwhile). Slots
-- skipped while paused are not made up.
CREATE FUNCTION dialer.resume_batch(batch_id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT dialer._move_batch(resume_batch.batch_id, '{paused}', 'pending') THEN
        RETURN false;
    END IF;
    UPDATE dialer.call_batches b SET next_slot_at = NULL WHERE b.id = resume_batch.batch_id;
    PERFORM dialer._wake_on_commit();
    RETURN true;
END $$;

-- Calls already placed go on; nothing further is dialed.
CREATE FUNCTION dialer.cancel_batch(batch_id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dialer.call_batches := dialer._batch_for_update(batch_id);
    n integer;
BEGIN
    IF b.status IN ('completed', 'cancelled') THEN
        RETURN false;
    END IF;
    UPDATE dialer.campaign_contacts SET status = 'cancelled', last_error = 'batch cancelled', updated_at = now()
     WHERE campaign_contacts.batch_id = b.id AND status IN ('pending', 'queued');
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE dialer.call_batches
       SET status = 'cancelled', queued_count = greatest(queued_count - n, 0), completed_at = now()
     WHERE id = b.id;
    RETURN true;
END $$;

CREATE FUNCTION dialer._check_on_voicemail(p_policy text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_policy IS NOT NULL AND p_policy NOT IN ('retry', 'done', 'handoff') THEN
        RAISE EXCEPTION 'on_voicemail must be retry, done or handoff, not %', quote_literal(p_policy)
            USING ERRCODE = '22023',
                  HINT = 'retry: dial again after the voicemail retry delay; done: the contact completes; handoff: to the telecallers.';
    END IF;
END $$;

-- Per batch / queue: what an answering machine means (on_voicemail: retry, done or handoff) and
-- when the batch expires (its contacts not dialed by then end 'expired'). NULL leaves a setting.
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

CREATE VIEW dialer.batch_progress AS
SELECT b.id AS batch_id, b.agency_id, b.name, b.status,
       b.total_contacts, b.queued_count, b.in_progress_count, b.completed_count, b.failed_count,
       CASE WHEN b.total_contacts = 0 THEN 0
            ELSE round(100.0 * (b.completed_count + b.failed_count + b.expired_count) / b.total_contacts, 1) END AS percent_done,
       b.calls_per_minute, b.max_concurrent, b.last_error,
       b.scheduled_for, b.created_at, b.started_at, b.completed_at,
       -- calls an answering machine took; contacts that expired undialed
       b.voicemail_count, b.expired_count, b.on_voicemail, b.expires_at
  FROM dialer.call_batches b;
