//! The HTTP thread pool. Threads here never touch Postgres: they take requests, send them with
//! ureq, and hand results back to the worker's main thread through a channel, poking a pipe that
//! the main thread waits on beside its latch.

use crate::hosts::AllowList;
use crate::providers::{HttpRequest, HttpResponse, Method, TransportError};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a job is for; carried through unchanged to its result.
#[derive(Debug, Clone)]
pub enum JobKind {
    /// Place a call (POST).
    Place { call_id: i64, batch_id: i64, provider: String },
    /// Ask about a call in progress (GET).
    Status { call_id: i64, provider: String },
    /// Look for an attempt in doubt by its idempotency key (GET).
    Lookup { attempt: crate::providers::lookup::InDoubt },
}

pub struct Job {
    pub kind: JobKind,
    pub request: HttpRequest,
    /// Hold the request until this unix time (ms): its pacing slot.
    pub not_before_ms: Option<f64>,
    /// (pacing key, spacing ms): never send two requests of one key (a batch, a provider
    /// account, everything) closer than its spacing, measured at the moment of sending.
    pub spacing: Vec<(String, f64)>,
    /// The provider account this request goes to: requests in flight are counted per account so
    /// that a hanging provider cannot take every thread.
    pub flight_key: Option<String>,
}

pub struct JobResult {
    pub kind: JobKind,
    pub flight_key: Option<String>,
    pub request: HttpRequest,
    pub result: Result<HttpResponse, TransportError>,
    pub sent_at_ms: f64,
    pub latency_ms: f64,
}

pub struct Pool {
    shared: Arc<Shared>,
    results: Receiver<JobResult>,
    wake_read: UnixStream,
    threads: Vec<std::thread::JoinHandle<()>>,
    in_flight: usize,
    in_flight_by_key: HashMap<String, usize>,
    allowed: Arc<RwLock<AllowList>>,
}

/// The job queue the threads take from. A thread skips jobs of a provider account that already
/// has its share of the threads at work, so a slow or hanging provider delays only its own
/// requests while the others pass it in the queue.
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// Most threads one provider account (Job::flight_key) may occupy at once.
    share: usize,
    /// Answers sent to the worker and not yet drained.
    answers_waiting: AtomicUsize,
    /// Whether an answer that finds none waiting pokes the pipe (see Pool::wake_on_answers).
    wake_on_answer: AtomicBool,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    working: HashMap<String, usize>,
    closed: bool,
}

impl Shared {
    /// Blocks until a job this thread may take is queued; None once the pool is closed and empty.
    fn take(&self) -> Option<Job> {
        let mut q = self.queue.lock().ok()?;
        loop {
            let share = self.share;
            let pick = {
                let working = &q.working;
                // (a claim's jobs come a provider account at a time: its share is looked up once
                // for each run of them, not once a job)
                let mut last: Option<(&str, bool)> = None;
                q.jobs.iter().position(|j| match &j.flight_key {
                    Some(k) => match last {
                        Some((seen, free)) if seen == k.as_str() => free,
                        _ => {
                            let free = working.get(k).copied().unwrap_or(0) < share;
                            last = Some((k.as_str(), free));
                            free
                        }
                    },
                    None => true,
                })
            };
            if let Some(i) = pick {
                let job = q.jobs.remove(i)?;
                if let Some(k) = &job.flight_key {
                    *q.working.entry(k.clone()).or_insert(0) += 1;
                }
                return Some(job);
            }
            if q.closed && q.jobs.is_empty() {
                return None;
            }
            q = self.ready.wait(q).ok()?;
        }
    }

    fn done(&self, flight_key: &Option<String>) {
        if let Ok(mut q) = self.queue.lock() {
            count_down(&mut q.working, flight_key);
        }
        // No notify: a job of this account that waited for a free share is taken by this very
        // thread when it comes back to take() (waking every thread here cost more than the sends).
    }
}

impl Pool {
    /// `allowed`: where requests may go (dialer.allowed_hosts); [`Pool::set_allowed`] changes it
    /// for requests not yet sent.
    pub fn new(threads: usize, timeout: Duration, allowed: AllowList) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let (res_tx, res_rx) = mpsc::channel::<JobResult>();
        let (wake_read, wake_write) = UnixStream::pair()?;
        wake_read.set_nonblocking(true)?;
        wake_write.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            share: account_share(threads),
            answers_waiting: AtomicUsize::new(0),
            wake_on_answer: AtomicBool::new(true),
        });
        let last_send: Arc<Mutex<HashMap<String, f64>>> = Arc::new(Mutex::new(HashMap::new()));
        let wake_write = Arc::new(wake_write);
        let allowed = Arc::new(RwLock::new(allowed));
        let resolver_list = Arc::clone(&allowed);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .max_idle_connections_per_host(threads)
            // A provider's redirect is an answer, never a second request to a host nobody checked.
            .redirects(0)
            // DNS answers are checked too: a listed name that resolves inside is refused.
            .resolver(move |netloc: &str| match resolver_list.read() {
                Ok(list) => list.resolve(netloc),
                Err(_) => Err(std::io::Error::other("allowed hosts unavailable")),
            })
            .build();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            let res_tx = res_tx.clone();
            let wake = Arc::clone(&wake_write);
            let agent = agent.clone();
            let last_send = Arc::clone(&last_send);
            let allowed = Arc::clone(&allowed);
            let handle = std::thread::Builder::new().name(format!("pg_dialer-http-{i}")).spawn(move || {
                while let Some(job) = shared.take() {
                    let send_at = reserve_send_time(&last_send, &job);
                    let early_ms = send_at - unix_ms();
                    if early_ms > 0.0 {
                        std::thread::sleep(Duration::from_micros((early_ms.min(60_000.0) * 1000.0) as u64));
                    }
                    let sent_at_ms = unix_ms();
                    let started = Instant::now();
                    let result = match allowed.read().map(|l| l.check_url(&job.request.url)) {
                        Ok(Ok(_)) => send(&agent, &job.request),
                        Ok(Err(why)) => Err(TransportError::Refused(why)),
                        Err(_) => Err(TransportError::Refused("allowed hosts unavailable".into())),
                    };
                    shared.done(&job.flight_key);
                    let out = JobResult {
                        kind: job.kind,
                        flight_key: job.flight_key,
                        request: job.request,
                        result,
                        sent_at_ms,
                        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                    };
                    // (counted before it is sent, so never drained before it is counted; and
                    // before the flag is read, where the worker sets the flag before it reads the
                    // count: an answer is either poked or seen waiting)
                    let others_waiting = shared.answers_waiting.fetch_add(1, Ordering::SeqCst) > 0;
                    if res_tx.send(out).is_err() {
                        return;
                    }
                    // One poke for a run of answers: one that finds others waiting is seen with
                    // them (the worker reads the count before it sleeps), so a busy pool is not a
                    // system call and a wake-up of the worker for every answer.
                    if !others_waiting && shared.wake_on_answer.load(Ordering::SeqCst) {
                        // A full pipe already means "wake up"; nothing to do on WouldBlock.
                        let _ = (&*wake).write(&[1u8]);
                    }
                }
            })?;
            handles.push(handle);
        }
        Ok(Pool { shared, results: res_rx, wake_read, threads: handles, in_flight: 0, in_flight_by_key: HashMap::new(), allowed })
    }

    /// Where requests may go from now on (after a reload of dialer.allowed_hosts).
    pub fn set_allowed(&self, list: AllowList) {
        if let Ok(mut l) = self.allowed.write() {
            *l = list;
        }
    }

    /// The file descriptor that becomes readable when results are waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.wake_read.as_raw_fd()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Requests in flight (queued or on the wire) per provider account.
    pub fn in_flight_by_account(&self) -> HashMap<String, usize> {
        self.in_flight_by_key.clone()
    }

    /// Queues these jobs under one lock and wakes as many threads as there are jobs (all of them
    /// with one call for a claim's worth: a wake-up per job was a system call per call placed).
    pub fn submit_all(&mut self, jobs: Vec<Job>) {
        let n = jobs.len();
        if n == 0 {
            return;
        }
        let Ok(mut q) = self.shared.queue.lock() else { return };
        for job in jobs {
            if let Some(k) = &job.flight_key {
                match self.in_flight_by_key.get_mut(k) {
                    Some(c) => *c += 1,
                    None => {
                        self.in_flight_by_key.insert(k.clone(), 1);
                    }
                }
            }
            q.jobs.push_back(job);
        }
        drop(q);
        self.in_flight += n;
        if n >= self.threads.len() {
            self.shared.ready.notify_all();
        } else {
            (0..n).for_each(|_| self.shared.ready.notify_one());
        }
    }

    /// Whether answers poke the pipe from now on: the first answer of a run does (the worker's
    /// sleep ends at it), one that finds others waiting does not. Returns whether answers are
    /// waiting already (they will poke no more: the caller must not sleep while any are).
    pub fn wake_on_answers(&self, wake: bool) -> bool {
        self.shared.wake_on_answer.store(wake, Ordering::SeqCst);
        self.shared.answers_waiting.load(Ordering::SeqCst) > 0
    }

    /// Results that are ready now, without blocking.
    pub fn drain(&mut self) -> Vec<JobResult> {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.wake_read).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let out: Vec<JobResult> = self.results.try_iter().collect();
        for r in &out {
            self.finished(r);
        }
        out
    }

    fn finished(&mut self, r: &JobResult) {
        self.in_flight = self.in_flight.saturating_sub(1);
        count_down(&mut self.in_flight_by_key, &r.flight_key);
        self.shared.answers_waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Waits up to `deadline` for every job in flight to finish (for SIGTERM and for
    /// process_batches, which returns only when its calls are recorded).
    pub fn wait_all(&mut self, deadline: Instant) -> Vec<JobResult> {
        let mut out = Vec::new();
        while self.in_flight > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.results.recv_timeout(deadline - now) {
                Ok(r) => {
                    self.finished(&r);
                    out.push(r);
                }
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue ends the threads once it is empty and their requests are done.
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
        }
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// One request of `key` fewer in `counts`; a key whose count reaches zero is removed.
fn count_down(counts: &mut HashMap<String, usize>, key: &Option<String>) {
    let Some(k) = key else { return };
    if let Some(n) = counts.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(k);
        }
    }
}

/// When this job may be sent: its slot, and no sooner than `spacing` after the previous request
/// of its batch. Reserving under the lock keeps the order even when threads race.
fn reserve_send_time(last_send: &Mutex<HashMap<String, f64>>, job: &Job) -> f64 {
    let mut at = job.not_before_ms.unwrap_or(0.0).max(unix_ms());
    if job.spacing.is_empty() {
        return at;
    }
    if let Ok(mut map) = last_send.lock() {
        for (key, spacing_ms) in &job.spacing {
            if let Some(prev) = map.get(key) {
                at = at.max(prev + spacing_ms);
            }
        }
        for (key, _) in &job.spacing {
            map.insert(key.clone(), at);
        }
        if map.len() > 100_000 {
            let cutoff = unix_ms() - 120_000.0;
            map.retain(|_, t| *t > cutoff);
        }
    }
    at
}

/// Wall-clock time in milliseconds since the Unix epoch (what the database's send times are in).
pub fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// How many of `slots` one provider account may take: three quarters, at least one, so that a
/// slow or hanging provider leaves room for the others.
pub fn account_share(slots: usize) -> usize {
    (slots * 3 / 4).max(1)
}

/// Sends one request. HTTP error statuses are responses, not errors.
pub fn send(agent: &ureq::Agent, req: &HttpRequest) -> Result<HttpResponse, TransportError> {
    let mut r = match req.method {
        Method::Get => agent.get(&req.url),
        Method::Post => agent.post(&req.url),
    };
    for (k, v) in &req.headers {
        r = r.set(k, v);
    }
    let result = match &req.body {
        Some(body) => r.send_string(body),
        None => r.call(),
    };
    let response = match result {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(ureq::Error::Transport(t)) => {
            let text = t.to_string();
            return Err(match t.kind() {
                ureq::ErrorKind::Dns
                | ureq::ErrorKind::ConnectionFailed
                | ureq::ErrorKind::InvalidUrl
                | ureq::ErrorKind::UnknownScheme
                | ureq::ErrorKind::InsecureRequestHttpsOnly => TransportError::NotSent(text),
                _ => TransportError::Unknown(text),
            });
        }
    };
    let status = response.status();
    let retry_after = response.header("Retry-After").map(str::to_string);
    let mut body = String::new();
    // Provider bodies are small; cap what we keep so a hostile endpoint cannot exhaust memory.
    let _ = response.into_reader().take(256 * 1024).read_to_string(&mut body);
    Ok(HttpResponse { status, retry_after, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Method;

    /// A request the empty allow list refuses: its answer comes at once, with no network.
    fn refused_job(call_id: i64) -> Job {
        let request = HttpRequest::json(Method::Get, "http://127.0.0.1:9/calls".into(), Vec::new(), None, Vec::new())
            .unwrap_or_else(|e| panic!("request: {e}"));
        Job {
            kind: JobKind::Status { call_id, provider: "ultravox".into() },
            request,
            not_before_ms: None,
            spacing: Vec::new(),
            flight_key: None,
        }
    }

    fn pipe_poked(pool: &Pool) -> bool {
        let mut fds = [libc::pollfd { fd: pool.wake_fd(), events: libc::POLLIN, revents: 0 }];
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) == 1 }
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn an_answer_pokes_the_pipe_only_while_the_worker_asks_and_none_is_waiting() {
        let mut pool = Pool::new(1, Duration::from_secs(1), AllowList::parse("").unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("pool: {e}"));
        let waiting = |pool: &Pool| pool.shared.answers_waiting.load(Ordering::SeqCst);
        // Not asked: the answers wait without a poke, and say so. (The one thread takes the jobs
        // in turn: once it has counted an answer, it is past the poke of the one before.)
        assert!(!pool.wake_on_answers(false));
        pool.submit_all(vec![refused_job(1), refused_job(2)]);
        wait_until("two answers counted", || waiting(&pool) == 2);
        assert!(pool.wake_on_answers(false));
        assert!(!pipe_poked(&pool), "an answer the worker did not ask to be woken for poked the pipe");
        // Asked again: the waiting answers are reported (the worker then does not sleep), and the
        // next answers, finding them waiting, do not poke either.
        assert!(pool.wake_on_answers(true));
        pool.submit_all(vec![refused_job(3), refused_job(4)]);
        wait_until("four answers counted", || waiting(&pool) == 4);
        assert!(!pipe_poked(&pool), "an answer that found another waiting poked the pipe");
        // (an answer is counted before it is handed over: drained until all four are in)
        let (mut drained, deadline) = (0, Instant::now() + Duration::from_secs(10));
        while drained < 4 {
            assert!(Instant::now() < deadline, "timed out draining the answers");
            drained += pool.drain().len();
        }
        assert_eq!(drained, 4);
        // None waiting: the next answer pokes.
        assert!(!pool.wake_on_answers(true), "nothing waits after a drain");
        pool.submit_all(vec![refused_job(5)]);
        wait_until("the pipe poked", || pipe_poked(&pool));
        let answers = pool.drain();
        assert_eq!(answers.len(), 1);
        assert!(answers.iter().all(|a| matches!(a.result, Err(TransportError::Refused(_)))));
        assert!(!pool.wake_on_answers(true), "nothing waits after a drain");
        assert_eq!(pool.in_flight(), 0);
    }
}
