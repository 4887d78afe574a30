-- A team's own leads table, attached in place (the lead-posting seed): a row that enters the
-- pending status is queued in the same transaction, a row deleted or moved out of it before it is
-- dialed is cancelled, and every state change is written back onto the row as the seed does.
--
-- Who runs what (a tenant with a SQL login is hostile; see docs/security.md):
-- * dialer._lead_changed, the trigger on the leads table, is SECURITY INVOKER: the row is read with
--   the rights of whoever changed it (to_jsonb runs the table's own casts as that role). Only the
--   fields the attachment names go on, as one jsonb, to dialer._lead_event, the one SECURITY DEFINER
--   entry point, which checks that the calling role may change the attached table.
-- * A lead row is written only in a session whose session user is the table's owner: a background
--   worker connected as that role (src/lead_writer.rs), one write per transaction, with a
--   statement timeout, the table's deferred triggers fired inside it. The dialing worker and the
--   API only queue the write (dialer.lead_writes): nothing a tenant defines runs in their sessions.

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

-- Writes of lead rows waiting for their table owner's writer session (src/lead_writer.rs): a
-- contact's state (read when the write is applied, so the latest state wins), or a lead's own
-- values (bad data written back when it arrives). A write the table refuses stays here, tried
-- again later (failures, not_before): never lost.
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

-- Queues a write of a lead's own values (dialer._lead_fields() order; NULL leaves a column as it is).
CREATE FUNCTION dialer._lead_write_later(p_attachment_id bigint, p_key text, p_values text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dialer.lead_writes (attachment_id, lead_key, lead_values) VALUES (p_attachment_id, p_key, p_values);
    PERFORM dialer._wake_on_commit();
END $$;

-- What a contact's state means for its lead row: the writer's values (dialer._lead_fields()
-- order; NULL leaves a column as it is), or NULL when nothing is to be written. A state is written
-- with what the states before it wrote (the provider's call id, when it was posted): the owner's
-- writer applies the latest state only, and a call that ended before its Processing was written
-- must still leave its id on the row.
CREATE FUNCTION dialer._lead_values(c dialer.campaign_contacts, a dialer.lead_attachments)
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

-- After any change to an attached contact: its lead row is to be written (by the owner's writer).
CREATE FUNCTION dialer._lead_contact_changed()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_RELID <> 'dialer.campaign_contacts'::regclass THEN
        RAISE EXCEPTION 'dialer._lead_contact_changed is pg_dialer''s own trigger' USING ERRCODE = '42501';
    END IF;
    INSERT INTO dialer.lead_writes (attachment_id, contact_id) VALUES (NEW.lead_attachment_id, NEW.id);
    PERFORM dialer._wake_on_commit();
    RETURN NULL;
END $$;
CREATE TRIGGER campaign_contacts_lead_sync AFTER UPDATE ON dialer.campaign_contacts
    FOR EACH ROW WHEN (NEW.lead_attachment_id IS NOT NULL) EXECUTE FUNCTION dialer._lead_contact_changed();

-- Accepted calls change only their call row: their leads are told here (_record_accepted).
CREATE FUNCTION dialer._lead_calls_accepted(p_call_ids bigint[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO dialer.lead_writes (attachment_id, contact_id)
    SELECT c.lead_attachment_id, c.id
      FROM dialer.calls k JOIN dialer.campaign_contacts c ON c.id = k.contact_id
     WHERE k.id = ANY (p_call_ids) AND c.lead_attachment_id IS NOT NULL;
$$;

-- The writer session's side (src/lead_writer.rs, connected as the table's owner). Each of these
-- acts only on tables whose owner is the session's user, and hands back built-in values only.
-- The owner's tables' next due write, leased: it is put back by its back-off (1, 2, 4 … 300 s) now,
-- in its own transaction, so that a write that fails, times out or is killed waits that long,
-- and one that succeeds is deleted (_lead_writes_done).
CREATE FUNCTION dialer._lead_writes_take()
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

-- What a leased write writes: the writer _attach_install made for this owner (NULL: none, the
-- table was detached), the lead's key and values (NULL: nothing to write), and the newest queued
-- write of the same contact, which this one writes too (the contact's state is read now).
CREATE FUNCTION dialer._lead_writes_read(p_write_id bigint)
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

-- Applies one write with the session's own rights: the owner's writer function, then the table's
-- deferred constraints and triggers, so that a refusal is this write's error, not the commit's.
CREATE FUNCTION dialer._lead_apply(p_writer regprocedure, p_key text, p_values text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SELECT %s($1, $2)', p_writer::regproc) USING p_key, p_values;
    SET CONSTRAINTS ALL IMMEDIATE;
END $$;

-- A write done: it, and the queued writes of its contact it wrote too (up to p_upto).
CREATE FUNCTION dialer._lead_writes_done(p_write_id bigint, p_upto bigint)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM dialer.lead_writes x USING dialer.lead_writes w, dialer.lead_attachments la, pg_class t
     WHERE w.id = p_write_id AND la.id = w.attachment_id AND t.oid = la.leads
       AND t.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = session_user)
       AND (x.id = w.id OR (x.contact_id = w.contact_id AND x.id <= p_upto));
$$;

-- A write the table refused (or that ran out of time): noted on the attachment; the lease's
-- back-off says when it is tried again.
CREATE FUNCTION dialer._lead_writes_failed(p_write_id bigint, p_error text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE dialer.lead_attachments la SET last_error = left(p_error, 500), last_error_at = clock_timestamp()
      FROM dialer.lead_writes x, pg_class t
     WHERE x.id = p_write_id AND la.id = x.attachment_id AND t.oid = la.leads
       AND t.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = session_user);
$$;

-- The roles whose tables have writes due (the dialing worker starts a writer session for each),
-- and whether they may log in (a background worker connects as a role that may, before 17).
CREATE FUNCTION dialer._lead_writes_due_owners(p_limit integer)
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

-- Writes whose table's owner cannot log in (before Postgres 17): noted on the attachment, tried later.
CREATE FUNCTION dialer._lead_writes_blocked(p_owner oid, p_why text)
RETURNS void LANGUAGE sql AS $$
    UPDATE dialer.lead_attachments la SET last_error = p_why, last_error_at = clock_timestamp()
      FROM pg_class t WHERE t.oid = la.leads AND t.relowner = p_owner
       AND la.last_error IS DISTINCT FROM p_why;
    UPDATE dialer.lead_writes x SET not_before = clock_timestamp() + interval '60 seconds'
      FROM dialer.lead_attachments la, pg_class t
     WHERE la.id = x.attachment_id AND t.oid = la.leads AND t.relowner = p_owner;
$$;

-- A lead row in the pending status: its contact, unless it has a live one. Bad data is written
-- back (Trashed for a phone number that is not one, AI_FAILED for an unknown provider type).
-- p_lead: the fields dialer._lead_changed reads (key, status, phone, name, source, provider,
-- agency, variables), built-in values only.
CREATE FUNCTION dialer._lead_queue(a dialer.lead_attachments, p_lead jsonb)
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

-- What the leads trigger's entry point (dialer._lead_event, src/api/leads.rs) does as the
-- extension's owner: a lead changed (p_op) in table p_table, its fields in p_lead, by role
-- p_changed_by (the role the trigger ran as, read by _lead_event itself). Only a role that may
-- change the attached table may say so. Nobody else may run it.
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

-- The trigger on an attached leads table. SECURITY INVOKER: to_jsonb reads the row with the rights
-- of whoever changed it (a SECURITY DEFINER function of the application that inserts a lead: its
-- owner's), and dialer._lead_event checks that this role may change the table. Arguments (_attach_install): the attachment id; the columns of the key,
-- status, phone, name, call_source_id, ai_provider_type and agency ('' for none); then the
-- columns passed to the agent as variables.
CREATE FUNCTION dialer._lead_changed()
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

-- The fields of a whole lead row (attach_leads, for the rows already there), as the trigger reads them.
CREATE FUNCTION dialer._lead_fields_of(a dialer.lead_attachments, p_row jsonb)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('key', p_row ->> (a.columns->>'key'), 'status', p_row ->> (a.columns->>'status'),
                              'phone', p_row ->> (a.columns->>'phone'), 'name', p_row ->> (a.columns->>'name'),
                              'source', p_row ->> (a.columns->>'call_source_id'),
                              'provider', p_row ->> (a.columns->>'ai_provider_type'),
                              'agency', p_row ->> a.agency_column,
                              'variables', coalesce((SELECT jsonb_object_agg(v, p_row -> v)
                                                       FROM jsonb_array_elements_text(coalesce(a.columns->'variables', '[]')) v), '{}'))
$$;

-- The caller may act as the table's owner (is it, or a member of its role).
CREATE FUNCTION dialer._caller_owns(p_table regclass)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT pg_catalog.pg_has_role(dialer._caller(), c.relowner, 'USAGE')
                       FROM pg_catalog.pg_class c WHERE c.oid = p_table), false)
$$;

-- Checks a table and the options of attach_leads; returns what the attachment stores:
-- {columns, statuses, providers, agency_column, pacing}. Reads only the catalog.
CREATE FUNCTION dialer._attach_options(leads regclass, options jsonb)
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

-- Checks and stores an attachment (the API's rights, so the agency and mapping must be the
-- caller's, and the caller must own the table); creates its batch, its trigger and its writer.
CREATE FUNCTION dialer._attach_register(p_leads regclass, p_agency_id bigint, p_mapping_id bigint, p_options jsonb)
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

-- Creates (or replaces) the attachment's writer (owned by the table's owner, run only in the
-- owner's writer session) and the trigger on its table. Built from the stored attachment only,
-- identifiers quoted; values always travel as parameters.
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
    RETURN dialer._lead_queue(a, dialer._lead_fields_of(a, p_row));
END $$;

-- Attaches a leads table: pending rows (those there now and every one that becomes pending) are
-- dialed with agent_mapping_id, and their fate is written back onto them. Runs with the caller's
-- rights (it reads the table as the caller); every check is _attach_register's.
CREATE FUNCTION dialer.attach_leads(leads regclass, agency_id bigint, agent_mapping_id bigint, options jsonb DEFAULT '{}')
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
REVOKE EXECUTE ON FUNCTION dialer._attach_uninstall(bigint) FROM PUBLIC;
