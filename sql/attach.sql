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

-- Accepted calls change only their call row: their leads are told here (_record_accepted).
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
