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
-- Settled calls whose bodies are still stored (the index shrinks as they are pruned). Not the live
-- ones, which retention leaves alone: an accepted call's row (its bodies written, not settled) then
-- adds no entry here.
CREATE INDEX calls_bodies_idx ON dialer.calls (created_at)
    WHERE (request IS NOT NULL OR response IS NOT NULL) AND status NOT IN ('dialing', 'in_progress', 'in_doubt');
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
            PERFORM dialer._uncount_contacts(ids);
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
