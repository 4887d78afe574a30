-- Roles, privileges and row-level security.
--
-- dialer_admin: everything, including provider keys (an operator role; grant it to people who
--   run the dialer). The extension owner can do all of this too.
-- dialer_user: the application's role (e.g. GRANT dialer_user TO authenticated on Supabase).
--   It uses the SQL API and reads and writes its own agencies' rows only: row-level security
--   keys every tenant table by agency. It can store provider keys but never read them back.
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
END $$;

CREATE TABLE dialer.agency_members (
    agency_id bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    role_name name NOT NULL,
    PRIMARY KEY (agency_id, role_name)
);

-- Runs with the caller's rights (current_user is the caller); agency_members shows each
-- caller only the rows naming its own roles.
CREATE FUNCTION dialer.current_agency_ids()
RETURNS bigint[] LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids bigint[];
    claim text;
BEGIN
    SELECT coalesce(array_agg(DISTINCT m.agency_id), '{}') INTO ids
      FROM dialer.agency_members m
     WHERE m.role_name IN (SELECT r.rolname FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'MEMBER'));
    -- Any session can SET request.jwt.claims: the claim counts only for the roles PostgREST
    -- switches to after checking the JWT (dialer.jwt_roles, which only a superuser can change).
    IF NOT current_user::text = ANY (dialer._jwt_roles()) THEN
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

GRANT USAGE ON SCHEMA dialer TO dialer_user, dialer_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON dialer.agencies, dialer.agent_mappings, dialer.call_batches,
    dialer.campaign_contacts, dialer.calls, dialer.recurring_calls, dialer.telecallers, dialer.followups,
    dialer.webhook_events TO dialer_user;
GRANT SELECT ON dialer.batch_progress, dialer.in_doubt, dialer.health, dialer.runs TO dialer_user;
GRANT INSERT ON dialer.runs TO dialer_user;
-- Keys can be written, never read back: no SELECT on api_key or webhook_secret.
GRANT SELECT (agency_id, provider, base_url, account_sid, max_calls_per_second, next_slot_at, rate_limited_until,
              updated_at),
      INSERT, UPDATE ON dialer.provider_credentials TO dialer_user;
GRANT SELECT, INSERT, UPDATE ON dialer.pacing_state TO dialer_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON dialer.do_not_call, dialer.agency_holidays TO dialer_user;
GRANT ALL ON ALL TABLES IN SCHEMA dialer TO dialer_admin;
-- process_batches() draws attempt ids from the calls sequence itself.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA dialer TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer.get_agency_credentials(bigint, text) TO dialer_admin;
GRANT EXECUTE ON FUNCTION dialer.allow_unsigned_webhooks(bigint, text, boolean) TO dialer_admin;
-- Decrypting is for the owner (and its SECURITY DEFINER functions, get_agency_credentials) only.
REVOKE EXECUTE ON FUNCTION dialer._unseal(text, bigint, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dialer.rotate_encryption_key() FROM PUBLIC;

-- Row-level security: a tenant sees and touches only its agencies' rows. The owner and
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
-- Everyone honours the global do-not-call list; only the owner and dialer_admin change it.
CREATE POLICY read_dnc ON dialer.do_not_call FOR SELECT USING (agency_id IS NULL OR agency_id = ANY (dialer.current_agency_ids()));
CREATE POLICY own_dnc ON dialer.do_not_call FOR ALL USING (agency_id = ANY (dialer.current_agency_ids()))
    WITH CHECK (agency_id = ANY (dialer.current_agency_ids()));
CREATE POLICY tenant ON dialer.agency_holidays USING (agency_id = ANY (dialer.current_agency_ids()));

-- Agencies and their members are created by the owner or dialer_admin.
CREATE POLICY tenant ON dialer.agencies USING (id = ANY (dialer.current_agency_ids()));
CREATE POLICY tenant ON dialer.provider_credentials USING (agency_id = ANY (dialer.current_agency_ids()));
CREATE POLICY tenant ON dialer.agent_mappings USING (agency_id = ANY (dialer.current_agency_ids()));
CREATE POLICY tenant ON dialer.call_batches USING (agency_id = ANY (dialer.current_agency_ids()));
CREATE POLICY tenant ON dialer.calls USING (agency_id = ANY (dialer.current_agency_ids()));
CREATE POLICY tenant ON dialer.recurring_calls USING (agency_id = ANY (dialer.current_agency_ids()));
CREATE POLICY tenant ON dialer.telecallers USING (agency_id = ANY (dialer.current_agency_ids()));
CREATE POLICY tenant ON dialer.campaign_contacts
    USING (batch_id IN (SELECT b.id FROM dialer.call_batches b WHERE b.agency_id = ANY (dialer.current_agency_ids())));
CREATE POLICY tenant ON dialer.followups
    USING (contact_id IN (SELECT c.id FROM dialer.campaign_contacts c));
GRANT SELECT ON dialer.agency_members TO dialer_user;
CREATE POLICY own_roles ON dialer.agency_members
    USING (role_name IN (SELECT r.rolname FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'MEMBER')));

-- The views read with the caller's rights, so row-level security applies through them: a tenant
-- sees its own batches, attempts in doubt and health figures only.
ALTER VIEW dialer.batch_progress SET (security_invoker = true);
ALTER VIEW dialer.in_doubt SET (security_invoker = true);
ALTER VIEW dialer.health SET (security_invoker = true);
-- Webhook events belong to the agency of their call (events matching no call: owner and admin).
ALTER TABLE dialer.webhook_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON dialer.webhook_events USING (call_id IN (SELECT k.id FROM dialer.calls k));

-- pg_dump backs up the extension's rows too (extension tables are skipped otherwise): a backup of
-- the database is a backup of its campaigns. Keys in it are ciphertext (src/secrets.rs).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c
              WHERE c.relnamespace = 'dialer'::regnamespace AND c.relkind IN ('r', 'S') ORDER BY c.relname LOOP
        PERFORM pg_catalog.pg_extension_config_dump(r.rel, '');
    END LOOP;
END $$;
