-- pg_dialer schema: tables, indexes and privileges. Loaded first (bootstrap).
-- The extension's schema `dialer` is created by CREATE EXTENSION (control file `schema`).

CREATE TABLE dialer.agencies (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (length(btrim(name)) > 0),
    timezone   text NOT NULL DEFAULT 'UTC',
    -- Compliance: most attempts per number per (agency-local) day across all batches; NULL = no cap.
    max_attempts_per_number_per_day integer CHECK (max_attempts_per_number_per_day IS NULL OR max_attempts_per_number_per_day > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Never readable by PUBLIC: only the extension owner (and SECURITY DEFINER functions).
CREATE TABLE dialer.provider_credentials (
    agency_id            bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    provider             text NOT NULL CHECK (provider IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook')),
    api_key              text NOT NULL,
    account_sid          text,
    base_url             text,
    webhook_secret       text,
    max_calls_per_second integer CHECK (max_calls_per_second IS NULL OR max_calls_per_second > 0),
    -- Pacing of the provider account, shared by every batch that uses it.
    next_slot_at         timestamptz,
    rate_limited_until   timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- Webhooks that cannot be verified (no secret stored) are refused unless the operator says
    -- otherwise for this account (dialer.allow_unsigned_webhooks).
    allow_unsigned_webhooks boolean NOT NULL DEFAULT false,
    PRIMARY KEY (agency_id, provider)
);
REVOKE ALL ON dialer.provider_credentials FROM PUBLIC;

CREATE TABLE dialer.agent_mappings (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_id         bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    provider          text NOT NULL CHECK (provider IN ('ultravox', 'twilio', 'vapi', 'retell', 'bland', 'webhook')),
    -- The provider's agent (Ultravox agent, Vapi assistant, Retell agent, Bland pathway); NULL where
    -- the provider can call without one (Ultravox from the template's systemPrompt, Retell, Bland task).
    external_agent_id text,
    agent_name        text,
    from_number       text CHECK (from_number IS NULL OR from_number ~ '^\+[1-9][0-9]{6,14}$'),
    request_template  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(request_template) = 'object'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- Ultravox only: the carrier account (imported into Ultravox) that places the call.
    carrier           text CHECK (carrier IN ('telnyx', 'twilio', 'plivo')),
    -- Calls dial from the agency's caller-ID pool (dialer.caller_ids), never from from_number.
    use_caller_id_pool boolean NOT NULL DEFAULT false
);
CREATE INDEX ON dialer.agent_mappings (agency_id);

CREATE TABLE dialer.call_batches (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_id          bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    agent_mapping_id   bigint NOT NULL,  -- of its own agency: call_batches_mapping_same_agency
    name               text NOT NULL,
    -- campaign: a batch of contacts (process-call-batches); queue: an agency's default call queue,
    -- where each contact is one job (call-queue-bullmq). One engine dials both.
    -- leads: the contacts of a leads table attached in place (dialer.attach_leads); like a queue,
    -- it never completes.
    kind               text NOT NULL DEFAULT 'campaign' CHECK (kind IN ('campaign', 'queue', 'leads')),
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'scheduled', 'processing', 'paused', 'completed', 'cancelled')),
    scheduled_for      timestamptz,
    -- Bounded so that no value a tenant gives can break the pacing arithmetic (6,000,000 a
    -- minute is 100,000 calls a second, 10 µs apart).
    calls_per_minute   integer NOT NULL DEFAULT 10 CHECK (calls_per_minute BETWEEN 1 AND 6000000),
    max_concurrent     integer NOT NULL DEFAULT 5 CHECK (max_concurrent BETWEEN 1 AND 1000000),
    max_attempts       integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 1000),
    retry_delay        interval NOT NULL DEFAULT '2 seconds' CHECK (retry_delay BETWEEN '0' AND '30 days'),
    retry_backoff      numeric NOT NULL DEFAULT 2 CHECK (retry_backoff BETWEEN 1 AND 10),
    priority           integer NOT NULL DEFAULT 2,
    total_contacts     integer NOT NULL DEFAULT 0,
    queued_count       integer NOT NULL DEFAULT 0,
    in_progress_count  integer NOT NULL DEFAULT 0,
    completed_count    integer NOT NULL DEFAULT 0,
    failed_count       integer NOT NULL DEFAULT 0,
    last_error         text,
    -- Calling window, in each contact's own time zone: [window_start, window_end) on window_days
    -- (ISO weekdays, 1 = Monday). NULL = any time.
    window_start       time,
    window_end         time,
    window_days        integer[],
    -- Retry delay per call outcome: {"no-answer": "1 hour", "busy": "10 minutes", "voicemail": ..., "failed": ...}.
    retry_delays       jsonb NOT NULL DEFAULT '{}',
    -- Pacing state lives here, not in the worker's memory, so it survives restarts.
    next_slot_at       timestamptz,
    rate_limited_until timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    completed_at       timestamptz,
    -- An answering machine: retry (after the voicemail retry delay, else retry_delay), done (the
    -- contact completes, outcome voicemail) or handoff (to the telecallers, with priority).
    on_voicemail       text NOT NULL DEFAULT 'retry' CHECK (on_voicemail IN ('retry', 'done', 'handoff')),
    -- Contacts not dialed by then end 'expired'; nothing is dialed after it.
    expires_at         timestamptz,
    voicemail_count    integer NOT NULL DEFAULT 0,  -- calls an answering machine took
    expired_count      integer NOT NULL DEFAULT 0   -- contacts that expired undialed
);
-- Batches in the order they are served: _due_batches reads it in order and stops at its limit.
CREATE INDEX call_batches_serve_order_idx ON dialer.call_batches (status, priority, created_at, id)
    WHERE status IN ('pending', 'scheduled', 'processing');
-- Running batches by pacing slot: when the worker should look next (_next_due) reads it in order.
CREATE INDEX call_batches_next_slot_idx ON dialer.call_batches (next_slot_at NULLS FIRST) WHERE status = 'processing';
-- Batches with a deadline: the expiry pass reads them by time.
CREATE INDEX call_batches_expiry_idx ON dialer.call_batches (expires_at) WHERE expires_at IS NOT NULL;
CREATE UNIQUE INDEX call_batches_one_queue_per_agency ON dialer.call_batches (agency_id) WHERE kind = 'queue';

CREATE TABLE dialer.campaign_contacts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id        bigint NOT NULL REFERENCES dialer.call_batches(id) ON DELETE CASCADE,
    phone_number    text NOT NULL CHECK (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
    name            text,
    variables       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(variables) = 'object'),
    lead_ref        text,
    source          text,
    priority        integer NOT NULL DEFAULT 2,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'queued', 'in_progress', 'completed', 'failed', 'cancelled', 'in_doubt', 'expired')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    call_id         bigint,
    last_error      text,
    handoff         text CHECK (handoff IS NULL OR handoff IN ('manual_pending', 'manual_assigned')),
    -- What came of it: success | not_interested | ai_failed | trashed (invalid number).
    outcome         text,
    -- Queue jobs: a per-job agent, the message and metadata passed to the provider, a dedupe key.
    is_job          boolean NOT NULL DEFAULT false,
    agent_mapping_id bigint REFERENCES dialer.agent_mappings(id),
    message         text,
    metadata        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    dedupe_key      text,
    recurring_call_id bigint,
    -- The contact's IANA zone: given, else from the number's country when it has one zone, else
    -- NULL (the agency's zone applies).
    timezone        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- A job's own deadline (the batch's expires_at applies too).
    expires_at      timestamptz,
    -- The leads table this contact mirrors (lead_ref is the lead's key); its state is written back.
    lead_attachment_id bigint
);
-- A campaign dials a number once; a queue may call the same number many times (reminders).
CREATE UNIQUE INDEX campaign_contacts_batch_id_phone_number_key ON dialer.campaign_contacts (batch_id, phone_number)
    WHERE NOT is_job;
CREATE UNIQUE INDEX campaign_contacts_dedupe_key ON dialer.campaign_contacts (batch_id, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
-- The claim: queued contacts of a batch, best priority first, first in first out.
CREATE INDEX campaign_contacts_claim_idx ON dialer.campaign_contacts (batch_id, priority, id)
    WHERE status = 'queued';
CREATE INDEX ON dialer.campaign_contacts (batch_id, status);
-- Contacts of batches not started yet (few): promotion finds them here.
CREATE INDEX campaign_contacts_pending_idx ON dialer.campaign_contacts (batch_id) WHERE status = 'pending';
CREATE INDEX campaign_contacts_due_idx ON dialer.campaign_contacts (batch_id, next_attempt_at) WHERE status = 'queued';
-- Jobs with a deadline still waiting: the expiry pass reads them by time.
CREATE INDEX campaign_contacts_expiry_idx ON dialer.campaign_contacts (expires_at)
    WHERE expires_at IS NOT NULL AND status IN ('pending', 'queued');
-- A lead has one live contact at a time (re-entering the pending status while it is being dialed
-- changes nothing).
CREATE UNIQUE INDEX campaign_contacts_one_live_per_lead ON dialer.campaign_contacts (lead_attachment_id, lead_ref)
    WHERE lead_attachment_id IS NOT NULL AND status IN ('pending', 'queued', 'in_progress', 'in_doubt');

CREATE TABLE dialer.calls (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- A contact of its batch, a batch of its agency (calls_contact_of_batch, calls_batch_of_agency:
    -- the agency's own key is implied by the batch's, and checking it too cost a look-up per call).
    contact_id       bigint NOT NULL,
    batch_id         bigint NOT NULL,
    agency_id        bigint NOT NULL,
    provider         text NOT NULL,
    provider_call_id text,
    idempotency_key  text NOT NULL,
    -- Audit: the number, and the contact's local time and zone when it was dialed.
    phone_number     text,
    local_time       timestamp,
    timezone         text,
    -- dialing: claimed, request possibly on the wire; in_progress: the provider accepted it;
    -- ended: the provider reported its end; failed / rate_limited / network_error: not placed;
    -- in_doubt: the request may have reached the provider, outcome unknown.
    status           text NOT NULL DEFAULT 'dialing'
                     CHECK (status IN ('dialing', 'in_progress', 'ended', 'failed', 'rate_limited', 'network_error', 'in_doubt')),
    end_reason       text,
    disposition      text,
    notes            text,
    error            text,
    http_status      integer,
    latency_ms       double precision,
    request          jsonb,
    response         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    dispatched_at    timestamptz,
    answered_at      timestamptz,
    ended_at         timestamptz,
    last_polled_at   timestamptz,
    -- In-doubt attempts are looked up at the provider by idempotency key this many times at most.
    lookup_attempts  integer NOT NULL DEFAULT 0,
    -- The caller ID the call was placed from (the mapping's, or the one the pool chose).
    from_number      text,
    -- The next status poll comes a status_poll_interval after this (NULL: after created_at).
    -- A poll that finds the call live sets it a quarter of the call's age (at most a minute)
    -- past the poll, so a long call is asked less often as it goes on (dialer._poll_backoff).
    poll_interval_from timestamptz
);
-- Every attempt is written twice (claimed, then accepted or failed), and neither write is a HOT
-- update (the status is indexed), so each index here costs an entry per write: the indexes are
-- only those a query needs, each holding the states it is read in.
-- The idempotency key names its contact ('pgd-<contact>-<attempt>'): unique with its contact is
-- unique, and the contact's attempts are found through the same index.
ALTER TABLE dialer.calls ADD CONSTRAINT calls_attempt_key UNIQUE (contact_id, idempotency_key);
CREATE INDEX ON dialer.calls (batch_id, created_at);
-- Attempts not settled, by state then batch: max_concurrent counts a batch's in doubt, a batch
-- with any is not complete, the look-ups read those in doubt, a restart those still dialing.
CREATE INDEX calls_unsettled_idx ON dialer.calls (status, batch_id) WHERE status IN ('in_doubt', 'dialing');
-- Calls the provider accepted, oldest first (dialer._close_abandoned).
CREATE INDEX calls_live_idx ON dialer.calls (created_at) WHERE status = 'in_progress';
-- Status polls: the calls whose next poll is nearest first.
CREATE INDEX calls_poll_idx ON dialer.calls ((coalesce(poll_interval_from, created_at)))
    WHERE status = 'in_progress' AND provider_call_id IS NOT NULL;
CREATE INDEX ON dialer.calls (provider_call_id) WHERE provider_call_id IS NOT NULL;
-- Never two live calls to one number, whatever batch or agency: the database enforces it.
CREATE UNIQUE INDEX calls_one_live_call_per_number ON dialer.calls (phone_number)
    WHERE status IN ('dialing', 'in_progress', 'in_doubt');
CREATE INDEX calls_number_day_idx ON dialer.calls (agency_id, phone_number, created_at);

-- No planner statistics for the bodies and free text no query filters on: ANALYZE sorted the
-- sampled request and response documents (jsonb comparisons), a third of its time on these
-- tables, and the worker analyses them as a campaign starts (dialer._refresh_statistics).
ALTER TABLE dialer.calls ALTER COLUMN request SET STATISTICS 0, ALTER COLUMN response SET STATISTICS 0,
    ALTER COLUMN notes SET STATISTICS 0, ALTER COLUMN error SET STATISTICS 0;
ALTER TABLE dialer.campaign_contacts ALTER COLUMN variables SET STATISTICS 0, ALTER COLUMN metadata SET STATISTICS 0,
    ALTER COLUMN message SET STATISTICS 0, ALTER COLUMN last_error SET STATISTICS 0;

-- campaign_contacts.call_id (the latest attempt) is kept by the claim itself; a foreign key
-- would cost a look-up per claimed contact on the hottest path.

CREATE TABLE dialer.recurring_calls (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_id        bigint NOT NULL REFERENCES dialer.agencies(id) ON DELETE CASCADE,
    agent_mapping_id bigint NOT NULL,  -- of its own agency: recurring_calls_mapping_same_agency
    phone_number     text NOT NULL CHECK (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
    cron             text NOT NULL,
    timezone         text NOT NULL DEFAULT 'UTC',
    next_run_at      timestamptz,
    last_run_at      timestamptz,
    active           boolean NOT NULL DEFAULT true,
    -- The job each occurrence creates: message, priority, metadata, lead_id.
    template         jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON dialer.recurring_calls (next_run_at) WHERE active;
ALTER TABLE dialer.campaign_contacts
    ADD CONSTRAINT campaign_contacts_recurring_fk FOREIGN KEY (recurring_call_id)
    REFERENCES dialer.recurring_calls(id) ON DELETE SET NULL;

-- Rows reference rows of their own agency only, whoever writes them: composite foreign keys.
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

-- Ticks take this row's lock (FOR UPDATE SKIP LOCKED) so that two never overlap; taking it needs
-- UPDATE on the table, which no tenant has, so no tenant can hold the worker off.
CREATE TABLE dialer.tick_lock (id integer PRIMARY KEY CHECK (id = 1));
INSERT INTO dialer.tick_lock VALUES (1);
REVOKE ALL ON dialer.tick_lock FROM PUBLIC;

-- Jobs given to a queue and not yet in its batch's counters. schedule_call adds a row here rather
-- than updating the queue's batch row, which the worker's claim locks and updates: the two never
-- wait for each other (nor do concurrent schedule_calls). dialer._count_arrivals moves these into
-- the counters (the claim, each tick, and anything else that changes a queue's counters).
-- No foreign key: its check would lock the batch row for the scheduling transaction.
CREATE TABLE dialer.queue_arrivals (
    batch_id bigint NOT NULL
);

-- Pacing shared across batches (the global dialer.max_calls_per_second).
CREATE TABLE dialer.pacing_state (
    key          text PRIMARY KEY,
    next_slot_at timestamptz
);

CREATE TABLE dialer.runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    duration_ms  double precision,
    mode         text NOT NULL CHECK (mode IN ('worker', 'function')),
    batches      integer NOT NULL DEFAULT 0,
    initiated    integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    rate_limited integer NOT NULL DEFAULT 0,
    status       text NOT NULL CHECK (status IN ('COMPLETED', 'SKIPPED_CONCURRENT', 'ERROR')),
    error        text
);
CREATE INDEX ON dialer.runs (started_at);

GRANT USAGE ON SCHEMA dialer TO PUBLIC;
