-- pg_dialer 0.3.0 → 0.4.0 (ALTER EXTENSION pg_dialer UPDATE TO '0.4.0').
--
-- Least privilege (docs/security.md): the worker runs as its own role dialer_worker, started by
-- a launcher; lead rows are written back in their table owner's own session (dialer.lead_writes
-- and a writer background worker per owner), never in the worker's; the trigger on an attached
-- table reads the row with its changer's rights and hands built-in values to dialer._lead_event;
-- Vault names are the agency's own (agency_<id>_…); due batches are served by turns across
-- agencies and a failed post waits at least a second; every text a tenant stores has a limit;
-- internal functions are no longer PUBLIC's; a key moves host only when given again.
\echo Use "ALTER EXTENSION pg_dialer UPDATE TO '0.4.0'" to load this file. \quit

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dialer_worker') THEN
        CREATE ROLE dialer_worker LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS PASSWORD NULL;
    END IF;
END $$;

-- Write-backs now go through dialer.lead_writes; those still pending under 0.3.0 are queued there.
CREATE TABLE dialer.lead_writes (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attachment_id bigint NOT NULL REFERENCES dialer.lead_attachments(id) ON DELETE CASCADE,
    contact_id    bigint REFERENCES dialer.campaign_contacts(id) ON DELETE CASCADE,
    lead_key      text,
    lead_values   text[],
    failures      integer NOT NULL DEFAULT 0,
    not_before    timestamptz NOT NULL DEFAULT now(),
    CHECK ((contact_id IS NULL) <> (lead_key IS NULL))
);
CREATE INDEX lead_writes_due_idx ON dialer.lead_writes (not_before, id);
CREATE INDEX lead_writes_contact_idx ON dialer.lead_writes (contact_id) WHERE contact_id IS NOT NULL;
CREATE INDEX lead_writes_attachment_idx ON dialer.lead_writes (attachment_id);
INSERT INTO dialer.lead_writes (attachment_id, contact_id)
SELECT c.lead_attachment_id, c.id FROM dialer.campaign_contacts c
 WHERE c.lead_sync_pending AND c.lead_attachment_id IS NOT NULL;
GRANT ALL ON dialer.lead_writes TO dialer_admin;
GRANT INSERT ON dialer.lead_writes TO dialer_api;
GRANT USAGE, SELECT ON SEQUENCE dialer.lead_writes_id_seq TO dialer_api, dialer_admin;
SELECT pg_catalog.pg_extension_config_dump('dialer.lead_writes', '');
SELECT pg_catalog.pg_extension_config_dump('dialer.lead_writes_id_seq', '');
-- Retention's index holds settled calls only (an accepted call adds no entry to it).
DROP INDEX dialer.calls_bodies_idx;
CREATE INDEX calls_bodies_idx ON dialer.calls (created_at)
    WHERE (request IS NOT NULL OR response IS NOT NULL) AND status NOT IN ('dialing', 'in_progress', 'in_doubt');
DROP TRIGGER campaign_contacts_lead_sync ON dialer.campaign_contacts;
DROP INDEX dialer.campaign_contacts_lead_sync_idx;
ALTER TABLE dialer.campaign_contacts DROP COLUMN lead_sync_pending;
DROP FUNCTION dialer._lead_resync(integer);
DROP FUNCTION dialer._lead_sync(bigint);
DROP FUNCTION dialer._lead_write(bigint, text, text[]);
DROP FUNCTION dialer._lead_queue(dialer.lead_attachments, jsonb);
DROP FUNCTION dialer._attach_register(regclass, bigint, bigint, jsonb, jsonb, jsonb, text, jsonb);
DROP TRIGGER campaign_contacts_json_bounded ON dialer.campaign_contacts;
DROP FUNCTION dialer._json_bounded();

CREATE OR REPLACE FUNCTION dialer._vault_prefix(p_agency_id bigint)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'agency_' || p_agency_id || '_'
$$;

CREATE OR REPLACE FUNCTION dialer._vault_secret(p_agency_id bigint, p_name text)
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

CREATE OR REPLACE FUNCTION dialer._contact_bounded()
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

CREATE OR REPLACE FUNCTION dialer._text_bounded()
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

CREATE OR REPLACE FUNCTION dialer._lead_write_later(p_attachment_id bigint, p_key text, p_values text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dialer.lead_writes (attachment_id, lead_key, lead_values) VALUES (p_attachment_id, p_key, p_values);
    PERFORM dialer._wake_on_commit();
END $$;

CREATE OR REPLACE FUNCTION dialer._lead_writes_take()
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = session_user);
    taken bigint;
BEGIN
    UPDATE dialer.lead_writes w
       SET failures = w.failures + 1,
           not_before = clock_timestamp() + make_interval(secs => least(power(2, least(w.failures, 9)), 300))
     WHERE w.id = (SELECT x.id FROM dialer.lead_writes x
                     JOIN dialer.lead_attachments la ON la.id = x.attachment_id
                     JOIN pg_class t ON t.oid = la.leads
                    WHERE t.relowner = me AND x.not_before <= clock_timestamp()
                    ORDER BY x.not_before, x.id
                    LIMIT 1
                      FOR UPDATE OF x SKIP LOCKED)
    RETURNING w.id INTO taken;
    RETURN taken;
END $$;

CREATE OR REPLACE FUNCTION dialer._lead_writes_read(p_write_id bigint)
RETURNS TABLE (writer regprocedure, lead_key text, lead_values text[], upto bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = session_user);
    w dialer.lead_writes;
    a dialer.lead_attachments;
    c dialer.campaign_contacts;
BEGIN
    SELECT x.* INTO w FROM dialer.lead_writes x
      JOIN dialer.lead_attachments la ON la.id = x.attachment_id
      JOIN pg_class t ON t.oid = la.leads
     WHERE x.id = p_write_id AND t.relowner = me;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = w.attachment_id;
    writer := to_regprocedure(format('dialer.%I(text, text[])', 'lead_writer_' || a.id));
    IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = writer AND p.proowner = me) THEN
        writer := NULL;
    END IF;
    upto := w.id;
    IF w.contact_id IS NOT NULL THEN
        SELECT max(x.id) INTO upto FROM dialer.lead_writes x WHERE x.contact_id = w.contact_id;
        SELECT * INTO c FROM dialer.campaign_contacts WHERE id = w.contact_id;
        lead_key := c.lead_ref;
        lead_values := dialer._lead_values(c, a);
    ELSE
        lead_key := w.lead_key;
        lead_values := w.lead_values;
    END IF;
    RETURN NEXT;
END $$;

CREATE OR REPLACE FUNCTION dialer._lead_apply(p_writer regprocedure, p_key text, p_values text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SELECT %s($1, $2)', p_writer::regproc) USING p_key, p_values;
    SET CONSTRAINTS ALL IMMEDIATE;
END $$;

CREATE OR REPLACE FUNCTION dialer._lead_writes_done(p_write_id bigint, p_upto bigint)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM dialer.lead_writes x USING dialer.lead_writes w, dialer.lead_attachments la, pg_class t
     WHERE w.id = p_write_id AND la.id = w.attachment_id AND t.oid = la.leads
       AND t.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = session_user)
       AND (x.id = w.id OR (x.contact_id = w.contact_id AND x.id <= p_upto));
$$;

CREATE OR REPLACE FUNCTION dialer._lead_writes_failed(p_write_id bigint, p_error text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE dialer.lead_attachments la SET last_error = left(p_error, 500), last_error_at = clock_timestamp()
      FROM dialer.lead_writes x, pg_class t
     WHERE x.id = p_write_id AND la.id = x.attachment_id AND t.oid = la.leads
       AND t.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = session_user);
$$;

CREATE OR REPLACE FUNCTION dialer._lead_writes_due_owners(p_limit integer)
RETURNS TABLE (owner oid, can_login boolean)
LANGUAGE sql STABLE AS $$
    SELECT t.relowner, r.rolcanlogin
      FROM dialer.lead_writes x
      JOIN dialer.lead_attachments la ON la.id = x.attachment_id
      JOIN pg_class t ON t.oid = la.leads
      JOIN pg_roles r ON r.oid = t.relowner
     WHERE x.not_before <= clock_timestamp()
     GROUP BY t.relowner, r.rolcanlogin
     ORDER BY min(x.not_before)
     LIMIT p_limit
$$;

CREATE OR REPLACE FUNCTION dialer._lead_writes_blocked(p_owner oid, p_why text)
RETURNS void LANGUAGE sql AS $$
    UPDATE dialer.lead_attachments la SET last_error = p_why, last_error_at = clock_timestamp()
      FROM pg_class t WHERE t.oid = la.leads AND t.relowner = p_owner
       AND la.last_error IS DISTINCT FROM p_why;
    UPDATE dialer.lead_writes x SET not_before = clock_timestamp() + interval '60 seconds'
      FROM dialer.lead_attachments la, pg_class t
     WHERE la.id = x.attachment_id AND t.oid = la.leads AND t.relowner = p_owner;
$$;

CREATE OR REPLACE FUNCTION dialer._lead_fields_of(a dialer.lead_attachments, p_row jsonb)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('key', p_row ->> (a.columns->>'key'), 'status', p_row ->> (a.columns->>'status'),
                              'phone', p_row ->> (a.columns->>'phone'), 'name', p_row ->> (a.columns->>'name'),
                              'source', p_row ->> (a.columns->>'call_source_id'),
                              'provider', p_row ->> (a.columns->>'ai_provider_type'),
                              'agency', p_row ->> a.agency_column,
                              'variables', coalesce((SELECT jsonb_object_agg(v, p_row -> v)
                                                       FROM jsonb_array_elements_text(coalesce(a.columns->'variables', '[]')) v), '{}'))
$$;

CREATE FUNCTION dialer._lead_event_apply(p_attachment_id bigint, p_table oid, p_op text, p_lead jsonb, p_changed_by oid)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a dialer.lead_attachments;
BEGIN
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = p_attachment_id;
    IF NOT FOUND THEN
        RETURN;  -- detached (its agency deleted): the table goes on without the dialer
    END IF;
    IF a.leads <> p_table OR NOT has_table_privilege(p_changed_by, a.leads, 'INSERT, UPDATE, DELETE') THEN
        RAISE EXCEPTION 'lead attachment % is not for a table this role may change', a.id
            USING ERRCODE = '42501', HINT = 'Attach a table with dialer.attach_leads.';
    END IF;
    IF a.agency_column IS NOT NULL AND (p_lead ->> 'agency') IS DISTINCT FROM a.agency_id::text THEN
        RETURN;  -- another agency's lead in a shared table
    END IF;
    IF p_op = 'DELETE' THEN
        PERFORM dialer._lead_withdraw(a, p_lead ->> 'key', 'lead deleted before it was dialed');
    ELSIF (p_lead ->> 'status') IS DISTINCT FROM a.statuses->>'pending' THEN
        PERFORM dialer._lead_withdraw(a, p_lead ->> 'key', 'lead left the pending status before it was dialed');
    ELSE
        PERFORM dialer._lead_queue(a, p_lead);
    END IF;
END $$;
REVOKE EXECUTE ON FUNCTION dialer._lead_event_apply(bigint, oid, text, jsonb, oid) FROM PUBLIC;

CREATE FUNCTION dialer."_lead_event"(
	"p_attachment_id" bigint, /* i64 */
	"p_table" oid, /* pg_sys :: Oid */
	"p_op" TEXT, /* & str */
	"p_lead" jsonb /* pgrx :: JsonB */
) RETURNS void
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_lead_event_wrapper';


CREATE OR REPLACE FUNCTION dialer._lead_queue(a dialer.lead_attachments, p_lead jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    key text := p_lead ->> 'key';
    phone text := regexp_replace(coalesce(p_lead ->> 'phone', ''), '[\s().-]', '', 'g');
    provider_type text := p_lead ->> 'provider';
    mapping bigint := a.agent_mapping_id;
    vars jsonb := coalesce(p_lead -> 'variables', '{}');
    new_id bigint;
BEGIN
    IF key IS NULL THEN
        RETURN NULL;
    END IF;
    IF phone !~ '^\+[1-9][0-9]{6,14}$' THEN
        PERFORM dialer._lead_write_later(a.id, key, ARRAY[a.statuses->>'trashed', NULL, NULL, NULL, NULL,
            format('invalid phone number %s: write it in E.164 form, e.g. +14155550123', left(coalesce(p_lead ->> 'phone', 'NULL'), 40)),
            clock_timestamp()::text, NULL, NULL]);
        RETURN NULL;
    END IF;
    IF provider_type IS NOT NULL THEN
        mapping := CASE WHEN a.providers ? provider_type THEN (a.providers ->> provider_type)::bigint
                        WHEN lower(provider_type) = (SELECT m.provider FROM dialer.agent_mappings m WHERE m.id = a.agent_mapping_id)
                        THEN a.agent_mapping_id END;
        IF mapping IS NULL THEN
            PERFORM dialer._lead_write_later(a.id, key, ARRAY[a.statuses->>'ai_failed', a.statuses->>'call_failed', NULL, NULL, NULL,
                format('no agent mapping for AI provider type %s (name it in the attachment''s "providers" option)',
                       quote_literal(left(provider_type, 100))),
                clock_timestamp()::text, NULL, NULL]);
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO dialer.campaign_contacts (batch_id, phone_number, name, variables, lead_ref, source, status, is_job,
                                          agent_mapping_id, timezone, lead_attachment_id)
    VALUES (a.batch_id, phone, p_lead ->> 'name', vars, key, p_lead ->> 'source', 'queued', true,
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

CREATE OR REPLACE FUNCTION dialer._lead_contact_changed()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'dialer.campaign_contacts'::regclass THEN
        RAISE EXCEPTION 'dialer._lead_contact_changed is pg_dialer''s own trigger' USING ERRCODE = '42501';
    END IF;
    INSERT INTO dialer.lead_writes (attachment_id, contact_id) VALUES (NEW.lead_attachment_id, NEW.id);
    PERFORM dialer._wake_on_commit();
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION dialer._lead_calls_accepted(p_call_ids bigint[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO dialer.lead_writes (attachment_id, contact_id)
    SELECT c.lead_attachment_id, c.id
      FROM dialer.calls k JOIN dialer.campaign_contacts c ON c.id = k.contact_id
     WHERE k.id = ANY (p_call_ids) AND c.lead_attachment_id IS NOT NULL;
$$;

CREATE OR REPLACE FUNCTION dialer._lead_changed()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r jsonb;
    vars jsonb := '{}';
    i integer;
BEGIN
    IF TG_NARGS < 8 OR TG_ARGV[0] !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'dialer._lead_changed takes the attachment id and its columns' USING ERRCODE = '22023';
    END IF;
    r := CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END;
    FOR i IN 8 .. TG_NARGS - 1 LOOP
        vars := vars || jsonb_build_object(TG_ARGV[i], r -> TG_ARGV[i]);
    END LOOP;
    PERFORM dialer._lead_event(TG_ARGV[0]::bigint, TG_RELID, TG_OP,
        jsonb_build_object('key', r ->> TG_ARGV[1], 'status', r ->> TG_ARGV[2], 'phone', r ->> TG_ARGV[3],
                           'name', r ->> TG_ARGV[4], 'source', r ->> TG_ARGV[5], 'provider', r ->> TG_ARGV[6],
                           'agency', r ->> TG_ARGV[7], 'variables', vars));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION dialer._attach_install(p_attachment_id bigint)
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
    args text[];
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
    EXECUTE format('CREATE OR REPLACE FUNCTION dialer.%I(p_key text, p_values text[]) RETURNS void LANGUAGE sql AS %L',
                   writer_name, format('UPDATE %s SET %s WHERE %I = $1::%s', a.leads, array_to_string(sets, ', '), a.columns->>'key', typ));
    EXECUTE format('ALTER FUNCTION dialer.%I(text, text[]) OWNER TO %s', writer_name, owner);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION dialer.%I(text, text[]) FROM PUBLIC', writer_name);
    UPDATE dialer.lead_attachments SET writer = format('dialer.%I(text, text[])', writer_name)::regprocedure WHERE id = a.id;
    args := ARRAY[a.id::text, a.columns->>'key', coalesce(a.columns->>'status', ''), coalesce(a.columns->>'phone', ''),
                  coalesce(a.columns->>'name', ''), coalesce(a.columns->>'call_source_id', ''),
                  coalesce(a.columns->>'ai_provider_type', ''), coalesce(a.agency_column, '')]
            || ARRAY(SELECT jsonb_array_elements_text(coalesce(a.columns->'variables', '[]')));
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT OR DELETE OR UPDATE OF %I ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION dialer._lead_changed(%s)',
                   'pg_dialer_leads_' || a.id, a.columns->>'status', a.leads,
                   (SELECT string_agg(quote_literal(x), ', ') FROM unnest(args) x));
END $$;

CREATE OR REPLACE FUNCTION dialer._attach_register(p_leads regclass, p_agency_id bigint, p_mapping_id bigint, p_options jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    o jsonb;
    pacing jsonb;
    b bigint;
    new_id bigint;
    owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = p_leads);
    k text;
BEGIN
    IF NOT dialer._caller_owns(p_leads) THEN
        RAISE EXCEPTION 'attaching % needs its owner''s rights (it belongs to %)', p_leads, owner::regrole
            USING ERRCODE = '42501';
    END IF;
    o := dialer._attach_options(p_leads, p_options);
    pacing := o->'pacing';
    PERFORM dialer._check_agency(p_agency_id);
    PERFORM dialer._resolve_mapping(p_agency_id, p_mapping_id);
    FOR k IN SELECT jsonb_object_keys(o->'providers') LOOP
        IF jsonb_typeof(o->'providers'->k) <> 'number' OR (o->'providers'->>k) !~ '^[0-9]{1,18}$' THEN
            RAISE EXCEPTION 'options.providers.% must be an agent mapping id', left(k, 100) USING ERRCODE = '22023';
        END IF;
        PERFORM dialer._resolve_mapping(p_agency_id, (o->'providers'->>k)::bigint);
    END LOOP;
    INSERT INTO dialer.call_batches (agency_id, agent_mapping_id, name, kind, status, calls_per_minute, max_concurrent,
                                     max_attempts, retry_delay, retry_backoff, started_at)
    VALUES (p_agency_id, p_mapping_id, left('leads: ' || p_leads::text, 200), 'leads', 'processing',
            (pacing->>'calls_per_minute')::integer, (pacing->>'max_concurrent')::integer,
            (pacing->>'max_attempts')::integer, (pacing->>'retry_delay')::interval, 1, now())
    RETURNING id INTO b;
    INSERT INTO dialer.lead_attachments (agency_id, leads, batch_id, agent_mapping_id, columns, statuses, providers, agency_column)
    VALUES (p_agency_id, p_leads, b, p_mapping_id, o->'columns', o->'statuses', o->'providers', o->>'agency_column')
    RETURNING id INTO new_id;
    PERFORM dialer._attach_install(new_id);
    RETURN new_id;
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION '% is already attached for agency %', p_leads, p_agency_id USING ERRCODE = '42710',
        HINT = 'dialer.detach_leads it first.';
END $$;

CREATE OR REPLACE FUNCTION dialer._attach_queue(p_attachment_id bigint, p_row jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    a dialer.lead_attachments;
BEGIN
    SELECT * INTO a FROM dialer.lead_attachments WHERE id = p_attachment_id;
    IF NOT FOUND OR NOT dialer._caller_owns(a.leads) THEN
        RAISE EXCEPTION 'lead attachment % does not exist or is not yours', p_attachment_id USING ERRCODE = '42501';
    END IF;
    RETURN dialer._lead_queue(a, dialer._lead_fields_of(a, p_row));
END $$;

CREATE OR REPLACE FUNCTION dialer.attach_leads(leads regclass, agency_id bigint, agent_mapping_id bigint, options jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    new_id bigint;
    a dialer.lead_attachments;
    r jsonb;
BEGIN
    new_id := dialer._attach_register(leads, agency_id, agent_mapping_id, options);
    SELECT * INTO a FROM dialer.lead_attachments x WHERE x.id = new_id;
    -- The leads already waiting, read with the caller's rights.
    FOR r IN EXECUTE format('SELECT to_jsonb(t) FROM %s t WHERE %I = $1', leads, a.columns->>'status') USING a.statuses->>'pending' LOOP
        IF a.agency_column IS NULL OR r->>a.agency_column = agency_id::text THEN
            PERFORM dialer._attach_queue(new_id, r);
        END IF;
    END LOOP;
    RETURN new_id;
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

CREATE OR REPLACE FUNCTION dialer._due_batches(p_now timestamptz, p_limit integer, p_lead interval DEFAULT '0')
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

-- Outcomes travel as typed parallel arrays (the outcome an enum), no longer as JSON.
DROP FUNCTION dialer._record_dispatch(jsonb);
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

CREATE OR REPLACE FUNCTION dialer._refresh_statistics()
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

CREATE OR REPLACE FUNCTION dialer._provider_credentials_guarded()
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

CREATE OR REPLACE FUNCTION dialer.set_provider_credentials(agency_id bigint, provider text, api_key text,
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

-- Idempotency keys a restored copy computes again (pgd-<contact>-<attempt number>), and what it
-- does with them (src/restores.rs).
-- The claim is one statement the worker prepares (sql/claim.sql); its plpgsql is gone.
DROP FUNCTION dialer._claim_batch(bigint, timestamptz, integer, interval, integer, timestamptz);
DROP FUNCTION dialer._compliance_prepare(dialer.call_batches, timestamptz, integer);

CREATE OR REPLACE FUNCTION dialer._hold_after_restore(p_since timestamptz)
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

-- What a contact's state means for its lead row: the writer's values (dialer._lead_fields()
-- order; NULL leaves a column as it is), or NULL when nothing is to be written. A state is written
-- with what the states before it wrote (the provider's call id, when it was posted): the owner's
-- writer applies the latest state only, and a call that ended before its Processing was written
-- must still leave its id on the row.
CREATE OR REPLACE FUNCTION dialer._lead_values(c dialer.campaign_contacts, a dialer.lead_attachments)
RETURNS text[] LANGUAGE plpgsql STABLE AS $$
DECLARE
    w jsonb := a.statuses;
    k dialer.calls;
    f dialer.followups;
    failed_posts integer;
    now_text text := clock_timestamp()::text;
    call_id_text text;
    posted_text text;
BEGIN
    SELECT * INTO k FROM dialer.calls WHERE id = c.call_id;
    SELECT count(*) INTO failed_posts FROM dialer.calls x WHERE x.contact_id = c.id AND x.status = 'failed';
    IF k.provider_call_id IS NOT NULL THEN
        call_id_text := k.provider_call_id;
        posted_text := coalesce(k.dispatched_at, k.created_at)::text;
    END IF;
    IF c.handoff = 'manual_assigned' THEN
        SELECT * INTO f FROM dialer.followups o WHERE o.contact_id = c.id ORDER BY o.id DESC LIMIT 1;
        RETURN ARRAY[w->>'assigned_manual', NULL, call_id_text, posted_text, failed_posts::text,
                     CASE WHEN c.status = 'failed' THEN c.last_error END, NULL, f.telecaller_id::text, now_text];
    ELSIF c.handoff = 'manual_pending' THEN
        RETURN ARRAY[w->>'manual_queue_pending', NULL, call_id_text, posted_text, failed_posts::text,
                     CASE WHEN c.status = 'failed' THEN c.last_error END, NULL, NULL, NULL];
    ELSIF c.status = 'failed' THEN
        RETURN ARRAY[w->>'ai_failed', w->>'call_failed', call_id_text, posted_text, failed_posts::text, c.last_error, now_text,
                     NULL, NULL];
    ELSIF c.status = 'completed' THEN
        RETURN ARRAY[CASE c.outcome WHEN 'success' THEN w->>'success' WHEN 'trashed' THEN w->>'trashed'
                                    WHEN 'voicemail' THEN w->>'voicemail' ELSE w->>'completed' END,
                     w->>'call_completed', call_id_text, posted_text, NULL, NULL, NULL, NULL, NULL];
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

CREATE TRIGGER campaign_contacts_lead_sync AFTER UPDATE ON dialer.campaign_contacts
    FOR EACH ROW WHEN (NEW.lead_attachment_id IS NOT NULL) EXECUTE FUNCTION dialer._lead_contact_changed();
CREATE TRIGGER campaign_contacts_bounded
    BEFORE INSERT OR UPDATE OF variables, metadata, name, lead_ref, source, dedupe_key, message ON dialer.campaign_contacts
    FOR EACH ROW EXECUTE FUNCTION dialer._contact_bounded();

-- Limits on the texts a tenant stores (docs/security.md, "Limits"; contacts: _contact_bounded).
CREATE TRIGGER agencies_bounded BEFORE INSERT OR UPDATE OF name ON dialer.agencies
    FOR EACH ROW EXECUTE FUNCTION dialer._text_bounded('name', '200');
CREATE TRIGGER agent_mappings_bounded BEFORE INSERT OR UPDATE OF agent_name, external_agent_id ON dialer.agent_mappings
    FOR EACH ROW EXECUTE FUNCTION dialer._text_bounded('agent_name', '200', 'external_agent_id', '200');
CREATE TRIGGER call_batches_bounded BEFORE INSERT OR UPDATE OF name ON dialer.call_batches
    FOR EACH ROW EXECUTE FUNCTION dialer._text_bounded('name', '200');
CREATE TRIGGER telecallers_bounded BEFORE INSERT OR UPDATE OF name, source ON dialer.telecallers
    FOR EACH ROW EXECUTE FUNCTION dialer._text_bounded('name', '200', 'source', '100');
CREATE TRIGGER followups_bounded BEFORE INSERT OR UPDATE OF notes ON dialer.followups
    FOR EACH ROW EXECUTE FUNCTION dialer._text_bounded('notes', '4000');
-- (set_disposition: only updates carry them, so the claim's inserts pay nothing)
CREATE TRIGGER calls_bounded BEFORE UPDATE OF notes, disposition ON dialer.calls
    FOR EACH ROW EXECUTE FUNCTION dialer._text_bounded('notes', '4000', 'disposition', '200');
CREATE TRIGGER do_not_call_bounded BEFORE INSERT OR UPDATE OF reason ON dialer.do_not_call
    FOR EACH ROW EXECUTE FUNCTION dialer._text_bounded('reason', '500');

-- Every attachment's trigger and writer, made again: the trigger takes its columns as arguments
-- now, and the writer runs only in its owner's session.
-- (A writer made inside this script would become a member of the extension: it is the table
-- owner's, as attach_leads makes it, so it is disowned again.)
DO $$
DECLARE
    att bigint;
BEGIN
    FOR att IN SELECT la.id FROM dialer.lead_attachments la
                WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = la.leads) ORDER BY la.id LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS dialer.%I(text, text[])', 'lead_writer_' || att);
        PERFORM dialer._attach_install(att);
        EXECUTE format('ALTER EXTENSION pg_dialer DROP FUNCTION dialer.%I(text, text[])', 'lead_writer_' || att);
    END LOOP;
END $$;

-- A function replaced above loses SECURITY DEFINER: the API's list is applied again (sql/security.sql).
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

REVOKE EXECUTE ON FUNCTION dialer._attach_install(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dialer._lead_queue(dialer.lead_attachments, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dialer._lead_queue(dialer.lead_attachments, jsonb) TO dialer_api;

-- Issue 25: the seed's throughput by default (an attachment has no concurrency cap unless given one); webhooks for Vapi, Retell and Bland; metrics from the first scrape.

CREATE OR REPLACE FUNCTION dialer._attach_options(leads regclass, options jsonb)
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
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
BEGIN
    IF jsonb_typeof(o) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object' USING ERRCODE = '22023';
    END IF;
    FOR k IN SELECT jsonb_object_keys(o) LOOP
        IF k NOT IN ('columns', 'statuses', 'providers', 'agency_column', 'variables', 'calls_per_minute',
                     'max_concurrent', 'max_attempts', 'retry_delay') THEN
            RAISE EXCEPTION 'unknown option %', quote_literal(left(k, 100)) USING ERRCODE = '22023',
                HINT = 'Options: columns, statuses, providers, agency_column, variables, calls_per_minute, max_concurrent, max_attempts, retry_delay.';
        END IF;
    END LOOP;
    SELECT * INTO rel FROM pg_class c WHERE c.oid = leads;
    IF rel.relkind = 'p' THEN
        RAISE EXCEPTION '% is a partitioned table', leads USING ERRCODE = '0A000',
            HINT = 'Attach each of its partitions (dialer.attach_leads on each): rows inserted through the parent reach their partition''s trigger.';
    ELSIF rel.relkind IS DISTINCT FROM 'r' THEN
        RAISE EXCEPTION '% is not a table', leads USING ERRCODE = '42809';
    END IF;
    IF rel.relforcerowsecurity THEN
        RAISE EXCEPTION '% forces row-level security on its owner', leads USING ERRCODE = '0A000',
            HINT = 'pg_dialer reads and writes an attached table with its owner''s rights; ALTER TABLE ... NO FORCE ROW LEVEL SECURITY, or give the owner a policy that lets it see its leads.';
    END IF;
    -- Lead rows are written back by a background worker connected as the table's owner; before
    -- Postgres 17 a background worker can connect only as a role that may log in.
    IF current_setting('server_version_num')::integer < 170000
       AND NOT (SELECT r.rolcanlogin FROM pg_roles r WHERE r.oid = rel.relowner) THEN
        RAISE EXCEPTION '% belongs to %, which cannot log in', leads, rel.relowner::regrole USING ERRCODE = '0A000',
            HINT = 'pg_dialer writes lead rows back as the table''s owner: ALTER ROLE ... LOGIN (no password is needed), or give the table to a role that can.';
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
            RAISE EXCEPTION 'options.columns: unknown field %', quote_literal(left(k, 100)) USING ERRCODE = '22023',
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
                RAISE EXCEPTION 'options.statuses.%: unknown state, or not a string', left(k, 100) USING ERRCODE = '22023',
                    HINT = 'States: ' || (SELECT string_agg(x, ', ') FROM jsonb_object_keys(statuses) x) || '.';
            END IF;
            IF length(o->'statuses'->>k) > 200 THEN
                RAISE EXCEPTION 'options.statuses.% is longer than 200 characters', k USING ERRCODE = '22001';
            END IF;
        END LOOP;
        statuses := statuses || (o->'statuses');
    END IF;
    IF o ? 'providers' AND jsonb_typeof(o->'providers') <> 'object' THEN
        RAISE EXCEPTION 'options.providers must be a JSON object of provider type → agent mapping id' USING ERRCODE = '22023';
    END IF;
    -- The seed's pacing: 10 leads per 30 s, 3 attempts, retried on the next cycle. A failed post
    -- waits at least a second before it is tried again (a tenant cannot make the worker spin).
    -- No concurrency cap by default (1000000, the most a batch takes): the seed posts 10 leads
    -- every 30 s whatever is still talking, so calls of several minutes need far more than 10 at
    -- once; the provider's own limit answers 429/503, which holds the account until Retry-After
    -- without counting an attempt. Give max_concurrent to stay under a plan's limit.
    BEGIN
        pacing := jsonb_build_object(
            'calls_per_minute', dialer._check_positive(coalesce((o->>'calls_per_minute')::integer, 20), 'calls_per_minute'),
            'max_concurrent', dialer._check_positive(coalesce((o->>'max_concurrent')::integer, 1000000), 'max_concurrent'),
            'max_attempts', dialer._check_positive(coalesce((o->>'max_attempts')::integer, 3), 'max_attempts'),
            'retry_delay', coalesce((o->>'retry_delay')::interval, '30 seconds'));
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'options: calls_per_minute, max_concurrent and max_attempts are integers, retry_delay an interval (%)', SQLERRM
            USING ERRCODE = '22023';
    END;
    IF (pacing->>'retry_delay')::interval < interval '1 second' THEN
        RAISE EXCEPTION 'options.retry_delay must be at least 1 second, got %', pacing->>'retry_delay' USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_build_object('columns', cols, 'statuses', statuses, 'providers', coalesce(o->'providers', '{}'),
                              'agency_column', o->'agency_column', 'pacing', pacing);
END $$;

CREATE OR REPLACE FUNCTION dialer.metrics()
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
        UNION ALL
        -- Every series whose labels are known in advance, at zero: each agency's contact states
        -- and batch kinds, each agency × provider it has an agent mapping for × outcome, status
        -- and throttle code, each batch not finished, and (for operators) the tick histogram. A fresh install, or a new
        -- agency, scrapes every family from the first scrape, and rate() has its starting point.
        SELECT z.family, z.labels, z.bucket, 0::float8, 0::float8
          FROM (
              SELECT 'pg_dialer_calls_total' AS family,
                     jsonb_build_object('agency_id', p.agency_id::text, 'provider', p.provider, 'outcome', o.v) AS labels, -1 AS bucket
                FROM (SELECT DISTINCT m.agency_id, m.provider FROM dialer.agent_mappings m) p
               CROSS JOIN unnest('{ended,failed,rate_limited,network_error}'::text[]) o(v)
              UNION ALL
              SELECT 'pg_dialer_calls_open', jsonb_build_object('agency_id', p.agency_id::text, 'provider', p.provider, 'status', o.v), -1
                FROM (SELECT DISTINCT m.agency_id, m.provider FROM dialer.agent_mappings m) p
               CROSS JOIN unnest('{dialing,in_progress,in_doubt}'::text[]) o(v)
              UNION ALL
              SELECT 'pg_dialer_provider_throttled_total', jsonb_build_object('agency_id', p.agency_id::text, 'provider', p.provider, 'code', o.v), -1
                FROM (SELECT DISTINCT m.agency_id, m.provider FROM dialer.agent_mappings m) p
               CROSS JOIN unnest('{429,503}'::text[]) o(v)
              UNION ALL
              SELECT 'pg_dialer_provider_latency_seconds', jsonb_build_object('agency_id', p.agency_id::text, 'provider', p.provider), 0
                FROM (SELECT DISTINCT m.agency_id, m.provider FROM dialer.agent_mappings m) p
              UNION ALL
              SELECT 'pg_dialer_attempts_in_doubt', jsonb_build_object('agency_id', a.id::text), -1 FROM dialer.agencies a
              UNION ALL
              SELECT 'pg_dialer_contacts', jsonb_build_object('agency_id', a.id::text, 'state', o.v), -1
                FROM dialer.agencies a
               CROSS JOIN unnest('{pending,queued,in_progress,completed,failed,cancelled,in_doubt,expired}'::text[]) o(v)
              UNION ALL
              SELECT f.f, jsonb_build_object('agency_id', a.id::text, 'kind', o.v), -1
                FROM dialer.agencies a
               CROSS JOIN unnest('{campaign,queue,leads}'::text[]) o(v)
               CROSS JOIN unnest('{pg_dialer_queue_depth,pg_dialer_queue_oldest_due_age_seconds}'::text[]) f(f)
              UNION ALL
              -- a batch not finished is not behind until it runs
              SELECT 'pg_dialer_pacing_lag_seconds', jsonb_build_object('agency_id', b.agency_id::text, 'batch_id', b.id::text), -1
                FROM dialer.call_batches b WHERE b.status IN ('pending', 'scheduled', 'processing', 'paused')
              UNION ALL
              SELECT 'pg_dialer_tick_duration_seconds', '{}'::jsonb, 0 WHERE pg_has_role('dialer_admin', 'USAGE')
          ) z
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

-- A change that others must notice (src/api/queue.rs): a counter in shared memory is bumped at
-- commit. 'holds': calls held for a later pacing slot (src/held.rs) are checked again before they
-- leave; 'config': the worker reads agent mappings and credentials again (tick::TargetCache).
CREATE FUNCTION dialer."_changed_on_commit"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', '_changed_on_commit_wrapper';
CREATE TRIGGER call_batches_holds AFTER UPDATE OF status ON dialer.call_batches
    FOR EACH ROW WHEN (OLD.status = 'processing' AND NEW.status <> 'processing') EXECUTE FUNCTION dialer._changed_on_commit('holds');
CREATE TRIGGER do_not_call_holds AFTER INSERT ON dialer.do_not_call
    FOR EACH STATEMENT EXECUTE FUNCTION dialer._changed_on_commit('holds');
CREATE TRIGGER agent_mappings_changed AFTER INSERT OR UPDATE OR DELETE ON dialer.agent_mappings
    FOR EACH STATEMENT EXECUTE FUNCTION dialer._changed_on_commit('config');
CREATE TRIGGER provider_credentials_changed AFTER INSERT OR DELETE OR UPDATE OF api_key, base_url, account_sid
    ON dialer.provider_credentials FOR EACH STATEMENT EXECUTE FUNCTION dialer._changed_on_commit('config');

-- Pacing in one place (src/pacing.rs), for the claim (sql/claim.sql).
CREATE FUNCTION dialer."_pacing_plan"(
	"now_ms" double precision, "ahead_ms" double precision, "calls_per_minute" INT,
	"next_slot_ms" double precision, "catch_up_before_ms" double precision,
	"account_cps" double precision, "account_next_ms" double precision,
	"global_cps" double precision, "global_next_ms" double precision
) RETURNS TABLE ("slot_ms" double precision, "start_ms" double precision, "gap_ms" double precision,
	"spacing_ms" double precision, "batch_gap_ms" double precision, "catching_up" bool, "slots" INT)
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pacing_plan_wrapper';
-- One row at most (the default estimate for a set-returning function is a thousand).
ALTER FUNCTION dialer._pacing_plan(double precision, double precision, integer, double precision, double precision, double precision, double precision, double precision, double precision) ROWS 1;

CREATE FUNCTION dialer."_pacing_next_slot_ms"(
	"slot_ms" double precision, "start_ms" double precision, "gap_ms" double precision,
	"spacing_ms" double precision, "catching_up" bool, "claimed" INT
) RETURNS double precision
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pacing_next_slot_ms_wrapper';

-- Status polls and look-ups are recorded from typed arrays, no longer from JSON.
DROP FUNCTION dialer._record_status(jsonb);
DROP FUNCTION dialer._record_lookup(jsonb);

-- A live call is polled less often as it goes on: its next poll counts from poll_interval_from.
ALTER TABLE dialer.calls ADD COLUMN poll_interval_from timestamptz;
UPDATE dialer.calls SET poll_interval_from = last_polled_at WHERE status = 'in_progress' AND last_polled_at IS NOT NULL;
DROP INDEX dialer.calls_poll_idx;
-- Status polls: the calls whose next poll is nearest first.
CREATE INDEX calls_poll_idx ON dialer.calls ((coalesce(poll_interval_from, created_at)))
    WHERE status = 'in_progress' AND provider_call_id IS NOT NULL;
-- A call's events: whether its webhooks reach us (a poll of it is then the safety net only,
-- dialer._poll_backoff), and the foreign key's cascade when a call is deleted.
CREATE INDEX webhook_events_call_idx ON dialer.webhook_events (call_id);
-- Every follow-up of a contact, open or done: deleting a contact (retention of finished jobs,
-- clean_jobs) cascades here by contact, one look-up per contact (without it, a read of the whole
-- table each: 1,000 jobs beside 100,000 done follow-ups took 6 s, not 40 ms).
CREATE INDEX followups_contact_idx ON dialer.followups (contact_id);

-- dialer.health read calls.*, fixed when it was made: it now names the columns it reads.
-- (CREATE OR REPLACE resets a view's options: security_invoker is given again, so the view keeps
-- reading calls with the tenant's row security, not its owner's rights.)
-- The seed's six monitoring metrics against their thresholds (last hour; failed leads: last day).
CREATE OR REPLACE VIEW dialer.health WITH (security_invoker = true) AS
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

-- The next time a batch may dial (NULL: none): the later of its pacing slot (or its account's, or a
-- back-off) and its earliest queued contact. The worker claims pacing slots up to a second before
-- this (src/pacing.rs); other due times (_next_due) it waits for. Batches are read in the order of
-- their pacing slot (call_batches_next_slot_idx), a lower bound of that time, so the look-ups stop
-- at the first batch that cannot beat what is found.
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

-- Pacing slots are no longer in it: the worker asks dialer._next_slot once, beside it.
-- One generic plan, kept: each branch has one index to probe whatever the values, and Postgres
-- otherwise planned it afresh at every call (1.2 ms against 0.14 with a thousand batches).
CREATE OR REPLACE FUNCTION dialer._next_due(p_now timestamptz, p_poll_every interval, p_rounds_from timestamptz DEFAULT NULL)
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
CREATE OR REPLACE FUNCTION dialer._check_e164(p_phone text, p_what text DEFAULT 'phone number')
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_phone IS NULL OR p_phone !~ '^\+[1-9][0-9]{6,14}$' THEN
        PERFORM dialer._refuse('22023', format('%s %s is not in E.164 form', p_what, coalesce(quote_literal(p_phone), 'NULL')),
                               'Write it as + country code and number, digits only, e.g. +14155550123.');
    END IF;
    RETURN p_phone;
END $$;

CREATE OR REPLACE FUNCTION dialer._check_timezone(p_tz text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = p_tz) THEN p_tz
           ELSE dialer._refuse('22023', format('unknown time zone %s', coalesce(quote_literal(p_tz), 'NULL')),
                               'Use an IANA zone name such as ''Europe/Berlin'' or ''UTC''.') END
$$;

CREATE OR REPLACE FUNCTION dialer._check_provider(p_provider text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_provider IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook') THEN p_provider
           ELSE dialer._refuse('22023', format('unknown provider %s', coalesce(quote_literal(p_provider), 'NULL')),
                               'The providers are ''ultravox'', ''twilio'', ''vapi'', ''retell'', ''bland'' and ''webhook''.') END
$$;

CREATE OR REPLACE FUNCTION dialer._check_agency(p_agency_id bigint)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM dialer.agencies WHERE id = p_agency_id) THEN p_agency_id
           ELSE dialer._refuse('P0002', format('agency %s does not exist', coalesce(p_agency_id::text, 'NULL')),
                               'Create it with dialer.create_agency(name).')::bigint END
$$;

CREATE OR REPLACE FUNCTION dialer._check_positive(p_value integer, p_name text)
RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_value > 0 THEN p_value
           ELSE dialer._refuse('22023', format('%s must be a positive integer, got %s', p_name, coalesce(p_value::text, 'NULL')))::integer END
$$;

-- An agency's account at a provider, as the functions that set one up name it.
CREATE FUNCTION dialer._check_account(p_agency_id bigint, p_provider text)
RETURNS void LANGUAGE sql STABLE AS $$
    SELECT FROM dialer._check_agency(p_agency_id), dialer._check_provider(p_provider)
$$;

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

CREATE OR REPLACE FUNCTION dialer.pause_batch(batch_id bigint)
RETURNS boolean LANGUAGE sql AS $$
    SELECT dialer._move_batch(batch_id, '{pending,scheduled,processing}', 'paused')
$$;

-- Back to pending so the next tick promotes it (and queues contacts added meanwhile). Slots
-- skipped while paused are not made up.
CREATE OR REPLACE FUNCTION dialer.resume_batch(batch_id bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT dialer._move_batch(resume_batch.batch_id, '{paused}', 'pending') THEN
        RETURN false;
    END IF;
    UPDATE dialer.call_batches b SET next_slot_at = NULL WHERE b.id = resume_batch.batch_id;
    PERFORM dialer._wake_on_commit();
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION dialer.create_agent_mapping(agency_id bigint, provider text, external_agent_id text,
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

-- Polls are no longer written when they are picked (the caller names its polls in flight).
DROP FUNCTION dialer._calls_to_poll(timestamptz, interval, integer);
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

CREATE OR REPLACE FUNCTION dialer._calls_to_look_up(p_now timestamptz, p_limit integer)
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

CREATE OR REPLACE FUNCTION dialer._log_run(p_started timestamptz, p_mode text, p_batches integer, p_initiated integer,
    p_failed integer, p_rate_limited integer, p_status text, p_error text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dialer.runs (started_at, duration_ms, mode, batches, initiated, failed, rate_limited, status, error)
    VALUES (p_started, extract(epoch FROM clock_timestamp() - p_started) * 1000, p_mode, p_batches, p_initiated,
            p_failed, p_rate_limited, p_status, p_error);
END $$;

-- Step 4, the common case: calls the provider accepted, as arrays (one element per call; request
-- and response as JSON text). The call row goes in_progress in one statement; attached leads learn
-- that they are Processing in this transaction. Returns the calls recorded (those still dialing).
-- One call (the usual case at a paced rate) has a statement of its own: its plan, on the primary
-- key, is kept for the session, where the statement over the arrays is planned again on every
-- call (a plan kept for it could not know how many elements the arrays hold).
CREATE OR REPLACE FUNCTION dialer._record_accepted(p_call_ids bigint[], p_provider_call_ids text[], p_http_status integer[],
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

-- When a batch's earliest queued contact is due: p_now if one is due already, the earliest retry
-- time otherwise, NULL when none is queued. Two probes of campaign_contacts_due_idx; plpgsql so
-- that each is planned on its own as a parameterised index scan. The first is ordered as the
-- index is: as an EXISTS, statistics that still counted the contacts already dialed as queued
-- made it a sequential scan from the table's start, past every one of them (0.25 ms, not 0.03).
CREATE OR REPLACE FUNCTION dialer._batch_due_at(p_batch_id bigint, p_now timestamptz)
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

-- No planner statistics for the bodies and free text no query filters on: ANALYZE sorted the
-- sampled request and response documents (jsonb comparisons), a third of its time on these
-- tables, and the worker analyses them as a campaign starts (dialer._refresh_statistics).
ALTER TABLE dialer.calls ALTER COLUMN request SET STATISTICS 0, ALTER COLUMN response SET STATISTICS 0,
    ALTER COLUMN notes SET STATISTICS 0, ALTER COLUMN error SET STATISTICS 0;
ALTER TABLE dialer.campaign_contacts ALTER COLUMN variables SET STATISTICS 0, ALTER COLUMN metadata SET STATISTICS 0,
    ALTER COLUMN message SET STATISTICS 0, ALTER COLUMN last_error SET STATISTICS 0;

-- A call's agency is checked through its batch's (calls_batch_of_agency, whose batch references
-- the agency, both ON DELETE CASCADE): its own foreign key was a second look-up per call claimed.
ALTER TABLE dialer.calls DROP CONSTRAINT calls_agency_id_fkey;

-- Every attempt is written twice (claimed, then accepted or failed), neither a HOT update: each
-- index costs an entry per write, so the attempt's indexes are only those a query needs, each
-- holding the states it is read in. The key names its contact: unique with its contact is unique,
-- and the contact's attempts are found through the same index.
ALTER TABLE dialer.calls DROP CONSTRAINT calls_idempotency_key_key,
    ADD CONSTRAINT calls_attempt_key UNIQUE (contact_id, idempotency_key);
DROP INDEX dialer.calls_contact_id_idx;
DROP INDEX dialer.calls_open_idx;
DROP INDEX dialer.calls_unsettled_idx;
CREATE INDEX calls_unsettled_idx ON dialer.calls (status, batch_id) WHERE status IN ('in_doubt', 'dialing');
CREATE INDEX calls_live_idx ON dialer.calls (created_at) WHERE status = 'in_progress';

-- A call the provider never reports as ended (its webhook lost, its status stuck) is closed after
-- twice dialer.call_timeout, so nothing stays open forever. It was looked up all along by polling.
-- Oldest first, in calls_live_idx's order: the plan reads only the calls past the limit, whatever
-- the values (ORDER BY id had a generic plan that walked the primary key through every call).
CREATE OR REPLACE FUNCTION dialer._close_abandoned(p_now timestamptz, p_call_timeout interval)
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

-- _enqueue: an immediate job wakes the worker for its queue alone (its claim is the whole wake-up);
-- a delayed one asks for a full pass.
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
    -- Immediate: dialed at once (the worker claims from this queue first, and that claim is all
    -- its wake-up does). Delayed: a full pass, where the worker learns its next wake-up time.
    IF p_run_at IS NULL THEN
        PERFORM dialer._wake_on_commit_for(q);
    ELSE
        PERFORM dialer._wake_on_commit();
    END IF;
    RETURN job;
END $$;

-- SQL written once (functions that shared repeated blocks, redefined here).

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

-- A locked batch's calling window set (NULLs: cleared); contacts deferred by the old one go now.
CREATE FUNCTION dialer._put_window(p_batch dialer.call_batches, p_start time, p_end time, p_days integer[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._release_window_deferrals(p_batch);
    UPDATE dialer.call_batches SET window_start = p_start, window_end = p_end, window_days = p_days WHERE id = p_batch.id;
    PERFORM dialer._wake_on_commit();
END $$;

-- All or nothing: every element is checked before any row is written. A number already in
-- the batch is skipped (unique(batch_id, phone_number)); the count of rows added is returned.
CREATE OR REPLACE FUNCTION dialer.add_contacts(batch_id bigint, contacts jsonb)
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

-- All or nothing: every element is checked first (a bad one is named by its index), then each
-- is scheduled; any error rolls all of them back.
CREATE OR REPLACE FUNCTION dialer.schedule_bulk_calls(calls jsonb)
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

CREATE OR REPLACE FUNCTION dialer.job_status(job_id bigint)
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
CREATE OR REPLACE FUNCTION dialer.cancel_job(job_id bigint)
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
CREATE OR REPLACE FUNCTION dialer.retry_job(job_id bigint)
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

-- Removes finished queue jobs (and their call records) older than grace. Returns how many.
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
    PERFORM dialer._uncount_contacts(doomed);
    UPDATE dialer.campaign_contacts SET call_id = NULL WHERE id = ANY (doomed);
    DELETE FROM dialer.calls WHERE contact_id = ANY (doomed);
    DELETE FROM dialer.campaign_contacts WHERE id = ANY (doomed);
    RETURN n;
END $$;

-- One retention pass: at most p_limit rows of each kind, oldest first, each in one statement.
-- Never deleted: campaign contacts and call rows (only their stored request/response bodies
-- are cleared), attempts not settled, queue jobs a human still has to follow up.
-- Returns {"runs": n, "bodies": n, "webhook_events": n, "jobs": n}.
CREATE OR REPLACE FUNCTION dialer._prune(p_runs text, p_bodies text, p_webhook_events text, p_jobs text, p_limit integer)
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
            PERFORM dialer._uncount_contacts(ids);
            DELETE FROM dialer.calls WHERE contact_id = ANY (ids);
            DELETE FROM dialer.campaign_contacts WHERE id = ANY (ids);
            GET DIAGNOSTICS n_jobs = ROW_COUNT;
        END IF;
    END IF;

    RETURN jsonb_build_object('runs', n_runs, 'bodies', n_bodies, 'webhook_events', n_events, 'jobs', n_jobs);
END $$;

CREATE OR REPLACE FUNCTION dialer._attach_uninstall(p_attachment_id bigint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t regclass;
BEGIN
    SELECT x.leads INTO t FROM dialer.lead_attachments x WHERE x.id = p_attachment_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pg_dialer_leads_' || p_attachment_id, t);
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS dialer.%I(text, text[])', 'lead_writer_' || p_attachment_id);
    UPDATE dialer.lead_attachments SET writer = NULL WHERE id = p_attachment_id;
END $$;

CREATE OR REPLACE FUNCTION dialer._resolve_mapping(p_agency_id bigint, p_mapping_id bigint)
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

-- Each due occurrence becomes one job, exactly once (the row is locked while it is promoted).
-- Occurrences missed while the worker was down give one catch-up job, not a burst.
CREATE OR REPLACE FUNCTION dialer._promote_recurring(p_now timestamptz)
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

CREATE OR REPLACE FUNCTION dialer.set_calling_window(batch_id bigint, start_time time, end_time time,
    days integer[] DEFAULT '{1,2,3,4,5,6,7}')
RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    b dialer.call_batches := dialer._batch_for_update(batch_id);
BEGIN
    PERFORM dialer._check_window(start_time, end_time, days);
    PERFORM dialer._put_window(b, start_time, end_time, days);
END $$;

CREATE OR REPLACE FUNCTION dialer.clear_calling_window(batch_id bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._put_window(dialer._batch_for_update(batch_id), NULL, NULL, NULL);
END $$;

CREATE OR REPLACE FUNCTION dialer.add_holiday(agency_id bigint, day date)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._check_agency(agency_id);
    IF day IS NULL THEN
        RAISE EXCEPTION 'day must not be NULL' USING ERRCODE = '22023';
    END IF;
    INSERT INTO dialer.agency_holidays VALUES (add_holiday.agency_id, add_holiday.day) ON CONFLICT DO NOTHING;
END $$;

CREATE OR REPLACE FUNCTION dialer.set_agency_limits(agency_id bigint, max_attempts_per_number_per_day integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dialer._check_agency(agency_id);
    IF max_attempts_per_number_per_day IS NOT NULL AND max_attempts_per_number_per_day <= 0 THEN
        RAISE EXCEPTION 'max_attempts_per_number_per_day must be a positive integer or NULL' USING ERRCODE = '22023';
    END IF;
    UPDATE dialer.agencies a SET max_attempts_per_number_per_day = set_agency_limits.max_attempts_per_number_per_day
     WHERE a.id = set_agency_limits.agency_id;
END $$;

-- A function replaced above loses SECURITY DEFINER: the API's list is applied again (sql/security.sql).
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

-- The worker's own role: the dialer's tables, sequences and functions, nothing else.
GRANT USAGE ON SCHEMA dialer TO dialer_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dialer TO dialer_worker;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA dialer TO dialer_worker;
-- The standbys' WAL positions (pg_stat_replication): no call leaves before they hold its claim.
GRANT pg_read_all_stats TO dialer_worker;

-- Internal functions (named _…) are not for PUBLIC: those it could run are kept for the dialer's
-- own roles (and dialer_user where they run with the caller's rights: the row-security helpers,
-- what API functions of the caller's rights call). The entry points a trigger on a tenant's table
-- and a lead writer session must reach check their caller themselves. What PUBLIC may run with
-- another role's rights is an allowlist that a test holds the catalog to (tenants.rs).
DO $$
DECLARE
    f regprocedure;
    definer boolean;
BEGIN
    FOR f, definer IN SELECT p.oid::regprocedure, p.prosecdef FROM pg_proc p
                       WHERE p.pronamespace = 'dialer'::regnamespace AND p.proname LIKE '\_%'
                         AND (p.proacl IS NULL OR aclcontains(p.proacl, makeaclitem(0, p.proowner, 'EXECUTE', false)))
                       ORDER BY 1 LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO dialer_api, dialer_admin', f);
        IF NOT definer THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO dialer_user', f);
        END IF;
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'dialer'::regnamespace
                AND p.proname IN ('_lead_event', '_lead_writes_take', '_lead_writes_read', '_lead_apply', '_lead_writes_done', '_lead_writes_failed',
                                  '_attach_register', '_attach_queue')
              ORDER BY 1 LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f);
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'dialer'::regnamespace AND p.proname NOT LIKE 'lead\_writer\_%'
              ORDER BY 1 LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO dialer_worker', f);
    END LOOP;
END $$;
-- A trigger function no tenant calls (only its triggers fire it, without asking for EXECUTE).
REVOKE EXECUTE ON FUNCTION dialer._changed_on_commit() FROM dialer_user;
-- The Rust functions a caller runs plan their SQL on a pinned path, not the caller's: a tenant's
-- operator in a writable schema on it would otherwise run with the caller's rights.
ALTER FUNCTION dialer.process_batches() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dialer.ingest_webhook(text, text, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dialer.rotate_encryption_key() SET search_path = pg_catalog, pg_temp;
