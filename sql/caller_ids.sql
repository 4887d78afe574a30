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
