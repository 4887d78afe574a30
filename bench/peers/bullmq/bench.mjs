// The BullMQ side of `make bench` (driven by pg_dialer_bench, which starts Redis and the
// provider simulator): the same Ultravox request, posted by a BullMQ worker with the same
// concurrency, retries and rate limit as pg_dialer.
//
//   node bench.mjs '<json config>'
//
// config: {"mode": "throughput" | "latency" | "pacing", "backend": "redis" (default) | "postgres",
//          "redis_port" | "pg_url", "sim_url", "api_key", ...}
// backend "postgres" is BullMQ 6's PostgreSQL backend (createPostgresBackend: a pg.Pool per Queue
// and per Worker, pg's default size 10 unless "pg_pool" says otherwise, plus a LISTEN connection),
// its schema created by BullMQ's own migrations on first connect.
// It writes JSON lines to stdout: {"event": "loaded"} (throughput: jobs are in Redis; it then
// waits for a line "go" on stdin), and finally {"event": "done", ...}. Errors go to stderr with a
// non-zero exit code.

import http from 'node:http';
import readline from 'node:readline';
import { performance } from 'node:perf_hooks';
import { Queue as RedisQueue, Worker as RedisWorker, withBackend, createPostgresBackend } from 'bullmq';

const cfg = JSON.parse(process.argv[2] ?? '{}');
const onPostgres = cfg.backend === 'postgres';
const { Queue, Worker } = onPostgres ? withBackend(createPostgresBackend) : { Queue: RedisQueue, Worker: RedisWorker };
const connection = onPostgres
  ? { connectionString: cfg.pg_url, migrate: true, ...(cfg.pg_pool ? { max: cfg.pg_pool } : {}) }
  : { host: '127.0.0.1', port: cfg.redis_port, maxRetriesPerRequest: null };
const sim = new URL(cfg.sim_url);
const concurrency = cfg.concurrency ?? 64;
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency * 3 });
// The seed's job options: 3 attempts, exponential back-off from 2 s.
const jobOptions = { attempts: 3, backoff: { type: 'exponential', delay: 2000 } };

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// CLOCK_REALTIME in µs, as the simulator and the Rust side read it. performance.timeOrigin may be
// off by up to a millisecond, so it is calibrated against the moment Date.now() (whole ms of the
// real-time clock) ticks over.
function calibrate() {
  const offsets = [];
  for (let k = 0; k < 7; k += 1) {
    const a = Date.now();
    let b = a;
    while (b === a) b = Date.now();
    offsets.push(b - (performance.timeOrigin + performance.now()));
  }
  offsets.sort((x, y) => x - y);
  return offsets[3];
}
const clockOffsetMs = calibrate();

function nowUs() {
  return Math.round((performance.timeOrigin + performance.now() + clockOffsetMs) * 1000);
}

// The agent call pg_dialer sends (see src/providers/ultravox.rs): a StartAgentCallRequest to
// POST /api/agents/{agent}/calls, which the simulator checks as strictly as Ultravox does.
const AGENT_ID = '5b7e2f0a-9c41-4d8e-b2a6-0f3c9d1e7a55';
const FROM_NUMBER = '+14155550100';
function postCall(job) {
  const d = job.data;
  const body = JSON.stringify({
    medium: { telnyx: { outgoing: { to: d.to, from: FROM_NUMBER } } },
    firstSpeakerSettings: { agent: {} },
    metadata: {
      batch_id: String(d.batch),
      contact_id: String(job.id),
      idempotency_key: `bull-${job.id}-${job.attemptsMade + 1}`,
    },
    templateContext: { ...(d.variables ?? {}), name: d.name },
  });
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: sim.hostname,
        port: sim.port,
        path: `/api/agents/${AGENT_ID}/calls`,
        method: 'POST',
        headers: {
          'X-API-Key': cfg.api_key,
          'Content-Type': 'application/json',
          'Content-Length': Buffer.byteLength(body),
        },
        timeout: 10000,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode >= 200 && res.statusCode < 300) {
            let callId = null;
            try { callId = JSON.parse(text).callId ?? null; } catch { /* keep null */ }
            resolve({ callId });
          } else {
            reject(new Error(`provider answered ${res.statusCode}: ${text.slice(0, 200)}`));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

function contact(batch, i, prefix) {
  return {
    to: `${prefix}${String(i).padStart(7, '0')}`,
    name: `Lead ${i}`,
    variables: { idx: i },
    batch,
  };
}

function makeWorker(name, limiter) {
  const w = new Worker(name, postCall, { connection, concurrency, limiter });
  w.on('error', (e) => process.stderr.write(`bullmq worker error: ${e.message}\n`));
  return w;
}

function counter(worker, target) {
  let completed = 0;
  let failed = 0;
  let resolveDone;
  const done = new Promise((r) => { resolveDone = r; });
  const check = () => { if (completed + failed >= target) resolveDone(); };
  worker.on('completed', () => { completed += 1; check(); });
  worker.on('failed', (job) => {
    if (job && job.attemptsMade >= (job.opts.attempts ?? 1)) { failed += 1; check(); }
  });
  return { done, counts: () => ({ completed, failed }) };
}

async function addMany(queue, items) {
  for (let i = 0; i < items.length; i += 1000) {
    await queue.addBulk(items.slice(i, i + 1000).map((data) => ({ name: 'call', data, opts: jobOptions })));
  }
}

function waitForLine(expected) {
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => { if (line.trim() === expected) { resolve(); rl.close(); } });
    rl.on('close', () => reject(new Error(`stdin closed before "${expected}"`)));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function throughput() {
  const name = `tp-${process.pid}`;
  const queue = new Queue(name, { connection });
  await queue.obliterate({ force: true }).catch(() => {});
  const items = [];
  for (let i = 0; i < cfg.n; i += 1) items.push(contact('bull-tp', i, cfg.prefix ?? '+1777'));
  await addMany(queue, items);
  emit({ event: 'loaded', jobs: cfg.n });
  await waitForLine('go');
  const worker = makeWorker(name, { max: cfg.limit_max ?? 1000000, duration: cfg.limit_duration_ms ?? 60000 });
  const c = counter(worker, cfg.n);
  const timeout = sleep((cfg.timeout_s ?? 600) * 1000).then(() => 'timeout');
  const how = await Promise.race([c.done.then(() => 'done'), timeout]);
  emit({ event: 'done', how, ...c.counts() });
  await worker.close();
  await queue.close();
}

async function latency() {
  const name = `lat-${process.pid}`;
  const queue = new Queue(name, { connection });
  await queue.obliterate({ force: true }).catch(() => {});
  const worker = makeWorker(name, { max: cfg.limit_max ?? 600000, duration: cfg.limit_duration_ms ?? 60000 });
  await worker.waitUntilReady();
  const total = cfg.warmup + cfg.n;
  const c = counter(worker, total);
  const adds = [];
  const start = performance.now();
  for (let i = 0; i < total; i += 1) {
    const due = start + (i * 1000) / cfg.rate;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const data = contact('bull-lat', i, cfg.prefix ?? '+1778');
    await queue.add('call', data, jobOptions);
    const t = nowUs();
    if (i >= cfg.warmup) adds.push([data.to, t]);
  }
  const how = await Promise.race([c.done.then(() => 'done'), sleep(30000).then(() => 'timeout')]);
  emit({ event: 'done', how, ...c.counts(), adds });
  await worker.close();
  await queue.close();
}

async function pacing() {
  const queues = [];
  const workers = [];
  for (const [k, cpm] of cfg.rates.entries()) {
    const name = `pace-${cpm}-${process.pid}`;
    const queue = new Queue(name, { connection });
    await queue.obliterate({ force: true }).catch(() => {});
    const n = Math.ceil((cpm * cfg.duration_s) / 60 * 1.2) + 10;
    const items = [];
    for (let i = 0; i < n; i += 1) items.push(contact(`bull-${cpm}`, i, `+178${k}`));
    await addMany(queue, items);
    queues.push(queue);
  }
  emit({ event: 'loaded' });
  await waitForLine('go');
  cfg.rates.forEach((cpm, k) => {
    // "calls_per_minute" as BullMQ's limiter says it: at most `cpm` jobs per 60 000 ms, or the
    // same rate over a shorter period (limit_duration_ms: 1000 is "30 calls per second").
    const duration = cfg.limit_duration_ms ?? 60000;
    workers.push(makeWorker(queues[k].name, { max: Math.max(1, Math.round((cpm * duration) / 60000)), duration }));
  });
  await sleep(cfg.duration_s * 1000);
  await Promise.all(workers.map((w) => w.close(true)));
  emit({ event: 'done' });
  await Promise.all(queues.map((q) => q.close()));
}

const modes = { throughput, latency, pacing };
const run = modes[cfg.mode];
if (!run) {
  process.stderr.write(`unknown mode ${JSON.stringify(cfg.mode)}\n`);
  process.exit(2);
}
run()
  .then(() => process.exit(0))
  .catch((e) => {
    process.stderr.write(`bullmq bench failed: ${e.stack ?? e}\n`);
    process.exit(1);
  });
