-- Roles, privileges and row-level security.
--
-- dialer_admin: everything, including provider keys (an operator role; grant it to people who
--   run the dialer). The extension owner can do all of this too.
-- dialer_user: the application's role (e.g. GRANT dialer_user TO authenticated on Supabase).
--   It reads its own agencies' rows (row-level security keys every tenant table by agency) and
--   writes only through the SQL API: no INSERT, UPDATE or DELETE on any table. It can store
--   provider keys but never read them back.
-- dialer_api: owns the API functions a tenant calls (SECURITY DEFINER), and only it writes the
--   tables for tenants. It does not bypass row-level security: inside those functions the
--   policies still see the calling role (dialer._caller()), so each id a function touches must
--   belong to one of the caller's agencies. Never grant it to anyone.
-- dialer_worker: the background worker's own role (src/launcher.rs starts the worker connected
--   as it). It bypasses row-level security and reads and writes the dialer's tables, nothing else:
--   no superuser, no agency, no membership anyone is given. It may log in (before Postgres 17 a
--   background worker can connect only as such a role) but has no password: with pg_hba's
--   password or peer methods nobody can log in as it. Never grant it to anyone.
--
-- Which agencies a session belongs to: dialer.current_agency_ids(), from
--   1. dialer.agency_members rows naming a role the session is a member of, and
--   2. the `agency_id` claim of the request's JWT (PostgREST/Supabase set `request.jwt.claims`).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dialer_admin') THEN
        CREATE ROLE dialer_admin NOLOGIN BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dialer_user') THEN
        CREATE ROLE dialer_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dialer_api') THEN
        CREATE ROLE dialer_api NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dialer_worker') THEN
        CREATE ROLE dialer_worker LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS PASSWORD NULL;
    END IF;
END $$;

CREATE TABLE dialer.agency_members (
    agency_id bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    role_name name NOT NULL,
    PRIMARY KEY (agency_id, role_name)
);

-- The role a statement runs for. Inside the API's SECURITY DEFINER functions current_user is
-- dialer_api; the role the session chose (SET ROLE, as PostgREST does) is still the `role`
-- setting, else it is the session's own. No tenant's code runs in a session whose user is more
-- than that tenant (the worker runs as dialer_worker and never runs tenant code; lead rows are
-- written in their owner's own session), so the session's role is the caller.
CREATE FUNCTION dialer._caller()
RETURNS name LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN current_user <> 'dialer_api' THEN current_user
                WHEN current_setting('role') <> 'none' THEN current_setting('role')::name
                ELSE session_user END
$$;

-- The owner, superusers, roles that bypass row-level security and members of dialer_admin see
-- every agency, through the API functions too.
-- (plpgsql: row-level security runs this once per statement, and a sql function's body is
-- planned again on every call.)
CREATE FUNCTION dialer._caller_is_operator()
RETURNS boolean LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me name := dialer._caller();
BEGIN
    RETURN coalesce((SELECT r.rolsuper OR r.rolbypassrls OR pg_has_role(r.oid, 'dialer_admin', 'MEMBER')
                            OR pg_has_role(r.oid, (SELECT e.extowner FROM pg_extension e WHERE e.extname = 'pg_dialer'), 'MEMBER')
                       FROM pg_roles r WHERE r.rolname = me), false);
END $$;

-- Runs with the caller's rights (dialer._caller()); agency_members shows each caller only the
-- rows naming its own roles.
CREATE FUNCTION dialer.current_agency_ids()
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

GRANT USAGE ON SCHEMA dialer TO dialer_user, dialer_admin, dialer_api;
-- Tenants read; every change goes through the API (whose functions run as dialer_api).
GRANT SELECT ON dialer.agencies, dialer.agent_mappings, dialer.call_batches, dialer.campaign_contacts, dialer.calls,
    dialer.recurring_calls, dialer.telecallers, dialer.followups, dialer.webhook_events, dialer.do_not_call,
    dialer.agency_holidays TO dialer_user;
GRANT SELECT ON dialer.batch_progress, dialer.in_doubt, dialer.health, dialer.runs TO dialer_user;
-- Keys can be written (through the API), never read back: no SELECT on api_key or webhook_secret.
GRANT SELECT (agency_id, provider, base_url, account_sid, max_calls_per_second, next_slot_at, rate_limited_until,
              updated_at, allow_unsigned_webhooks)
      ON dialer.provider_credentials TO dialer_user, dialer_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON dialer.agencies, dialer.agent_mappings, dialer.call_batches,
    dialer.campaign_contacts, dialer.calls, dialer.recurring_calls, dialer.telecallers, dialer.followups,
    dialer.webhook_events, dialer.do_not_call, dialer.agency_holidays, dialer.pacing_state, dialer.runs
    TO dialer_api;
GRANT INSERT, UPDATE ON dialer.provider_credentials TO dialer_api;
-- schedule_call adds arrivals, cancel_job and add_do_not_call count them (dialer._count_arrivals).
GRANT SELECT, INSERT, DELETE ON dialer.queue_arrivals TO dialer_api;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA dialer TO dialer_api;
GRANT ALL ON ALL TABLES IN SCHEMA dialer TO dialer_admin;
-- process_batches() draws attempt ids from the calls sequence itself.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA dialer TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer.get_agency_credentials(bigint, text) TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer.allow_unsigned_webhooks(bigint, text, boolean) TO dialer_admin;
-- Metrics and retention (sql/operations.sql): a tenant reads its own pruned totals through
-- metrics(); a prune pass is the operators'.
GRANT SELECT ON dialer.pruned_totals TO dialer_user;
GRANT EXECUTE ON FUNCTION dialer.prune() TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer._prune(text, text, text, text, integer) TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer._add_pruned(text, bigint, jsonb, integer, double precision, double precision) TO dialer_admin;
-- Decrypting is for the owner (and its SECURITY DEFINER functions, get_agency_credentials) only.
REVOKE EXECUTE ON FUNCTION dialer._unseal(text, bigint, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dialer.rotate_encryption_key() FROM PUBLIC;

-- Row-level security: a tenant sees and touches only its agencies' rows. The policies call their
-- functions in a sub-SELECT, evaluated once per statement: called per row, as a plain call is,
-- a scan of 100k calls took 20-45 s (dialer.metrics() as a tenant or an operator). The owner and
-- dialer_admin (BYPASSRLS) see everything; the worker runs as the owner.
ALTER TABLE dialer.agencies ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.provider_credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.agent_mappings ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.call_batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.campaign_contacts ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.recurring_calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.telecallers ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.followups ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.agency_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.do_not_call ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.agency_holidays ENABLE ROW LEVEL SECURITY;
-- The worker's own records, of no agency: operators only (a tenant's health view shows no tick
-- figures rather than everyone's).
ALTER TABLE dialer.runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE dialer.pacing_state ENABLE ROW LEVEL SECURITY;
-- Everyone honours the global do-not-call list; only the owner and dialer_admin change it.
CREATE POLICY read_dnc ON dialer.do_not_call FOR SELECT USING (agency_id IS NULL OR agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY own_dnc ON dialer.do_not_call FOR ALL USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]))
    WITH CHECK (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY tenant ON dialer.agency_holidays USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));

-- Agencies and their members are created by the owner or dialer_admin.
CREATE POLICY tenant ON dialer.agencies USING (id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY tenant ON dialer.provider_credentials USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY tenant ON dialer.agent_mappings USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY tenant ON dialer.call_batches USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY tenant ON dialer.calls USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY tenant ON dialer.recurring_calls USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY tenant ON dialer.telecallers USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
CREATE POLICY tenant ON dialer.campaign_contacts
    USING (batch_id IN (SELECT b.id FROM dialer.call_batches b WHERE b.agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[])));
CREATE POLICY tenant ON dialer.followups
    USING (contact_id IN (SELECT c.id FROM dialer.campaign_contacts c));
GRANT SELECT ON dialer.agency_members TO dialer_user;
GRANT SELECT ON dialer.agency_members TO dialer_api;
CREATE POLICY own_roles ON dialer.agency_members
    USING (role_name IN (SELECT r.rolname FROM pg_roles r WHERE pg_has_role((SELECT dialer._caller()), r.oid, 'MEMBER')));

-- The views read with the caller's rights, so row-level security applies through them: a tenant
-- sees its own batches, attempts in doubt and health figures only.
ALTER VIEW dialer.batch_progress SET (security_invoker = true);
ALTER VIEW dialer.in_doubt SET (security_invoker = true);
ALTER VIEW dialer.health SET (security_invoker = true);
-- Webhook events belong to the agency of their call (events matching no call: owner and admin).
ALTER TABLE dialer.webhook_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON dialer.webhook_events USING (call_id IN (SELECT k.id FROM dialer.calls k));

-- Attached leads tables and caller-ID pools (sql/attach.sql, sql/caller_ids.sql): the tenant's own.
ALTER TABLE dialer.lead_attachments ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON dialer.lead_attachments USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
ALTER TABLE dialer.caller_ids ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON dialer.caller_ids USING (agency_id = ANY ((SELECT dialer.current_agency_ids())::bigint[]));
GRANT EXECUTE ON FUNCTION dialer._lead_queue(dialer.lead_attachments, jsonb) TO dialer_api;
GRANT EXECUTE ON FUNCTION dialer._attach_install(bigint) TO dialer_api;
GRANT EXECUTE ON FUNCTION dialer._attach_uninstall(bigint) TO dialer_api;
GRANT SELECT ON dialer.lead_attachments, dialer.caller_ids TO dialer_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON dialer.lead_attachments, dialer.caller_ids TO dialer_api;
-- attach_leads queues the write-backs of the bad rows it finds (dialer._lead_write_later).
GRANT INSERT ON dialer.lead_writes TO dialer_api;

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

-- pg_dump backs up the extension's rows too (extension tables are skipped otherwise): a backup of
-- the database is a backup of its campaigns. Keys in it are ciphertext (src/secrets.rs).
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
