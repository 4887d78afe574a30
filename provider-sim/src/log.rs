//! The request log: one [`RequestRecord`] per provider request, recorded on arrival,
//! completed when answered, optionally mirrored to a JSON-lines file.

use crate::config::Provider;
use crate::mutex::lock;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One request to a provider endpoint. Never contains the API key or `Authorization` value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    /// 1, 2, 3, ... in arrival order (continues across resets).
    pub seq: u64,
    /// Arrival time, unix epoch microseconds; non-decreasing in `seq`.
    pub received_at_us: i64,
    pub provider: Provider,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Destination number, for create requests.
    pub to: Option<String>,
    /// Parsed JSON body; Twilio form fields as an object; raw text (string) if unparseable.
    #[serde(default)]
    pub body: Value,
    pub auth_ok: bool,
    /// HTTP status answered; `None` while in flight, or if never answered (dropped/aborted).
    pub status: Option<u16>,
    pub answered_at_us: Option<i64>,
    pub call_id: Option<String>,
    /// The JSON metadata sent with a create request, if any.
    #[serde(default)]
    pub metadata: Value,
    /// Injected fault or abnormal end: "invalid_request" (refused by the request checks),
    /// "rate_limited", "capacity" (503), "error", "hang", "drop_connection",
    /// "client_gone" (the client went away before the answer).
    pub fault: Option<String>,
    /// Why the request was refused (`fault: "invalid_request"`): the violations, `; `-separated.
    pub error: Option<String>,
}

/// Monotonic wall clock: unix epoch at start plus a monotonic `Instant` offset.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base_us: i64,
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let base_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        Clock { base_us, base: Instant::now() }
    }
    pub fn now_us(&self) -> i64 {
        self.base_us + self.base.elapsed().as_micros() as i64
    }
    /// Sleeps until the clock reads `at_us`.
    pub async fn sleep_until(&self, at_us: i64) {
        let wait = at_us - self.now_us();
        if wait > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(wait as u64)).await;
        }
    }
}

#[derive(Default, Debug, Clone)]
pub(crate) struct Counters {
    pub total: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_provider: BTreeMap<&'static str, u64>,
    pub unanswered: u64,
    pub max_in_flight: u64,
}

struct Inner {
    records: VecDeque<RequestRecord>,
    next_seq: u64,
    capacity: usize,
    counters: Counters,
    in_flight: u64,
}

impl Inner {
    fn get_mut(&mut self, seq: u64) -> Option<&mut RequestRecord> {
        let first = self.records.front()?.seq;
        let idx = seq.checked_sub(first)? as usize;
        self.records.get_mut(idx)
    }
}

enum FileMsg {
    Record(Box<RequestRecord>),
    Close,
}

struct FileSink {
    tx: mpsc::Sender<FileMsg>,
    thread: JoinHandle<()>,
}

pub(crate) struct RequestLog {
    clock: Clock,
    inner: Mutex<Inner>,
    file: Mutex<Option<FileSink>>,
}

impl RequestLog {
    pub fn new(clock: Clock, capacity: usize, file: Option<&Path>) -> std::io::Result<RequestLog> {
        let file = match file {
            None => None,
            Some(p) => {
                let f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
                let (tx, rx) = mpsc::channel::<FileMsg>();
                let thread = std::thread::Builder::new()
                    .name("provider-sim-log".into())
                    .spawn(move || file_writer(BufWriter::with_capacity(1 << 16, f), rx))?;
                Some(FileSink { tx, thread })
            }
        };
        Ok(RequestLog {
            clock,
            inner: Mutex::new(Inner {
                records: VecDeque::new(),
                next_seq: 1,
                capacity: capacity.max(1),
                counters: Counters::default(),
                in_flight: 0,
            }),
            file: Mutex::new(file),
        })
    }

    /// Records the arrival of a request; the returned guard completes it.
    pub fn begin(self: &Arc<Self>, provider: Provider, method: &str, path: &str, query: Option<&str>) -> RecordGuard {
        let mut g = lock(&self.inner);
        let seq = g.next_seq;
        g.next_seq += 1;
        // now_us is monotonic and read under the lock, so received_at_us follows seq order.
        let received_at_us = self.clock.now_us();
        g.in_flight += 1;
        g.counters.max_in_flight = g.counters.max_in_flight.max(g.in_flight);
        g.counters.total += 1;
        *g.counters.by_provider.entry(provider.as_str()).or_default() += 1;
        while g.records.len() >= g.capacity {
            g.records.pop_front();
        }
        g.records.push_back(RequestRecord {
            seq,
            received_at_us,
            provider,
            method: method.to_string(),
            path: path.to_string(),
            query: query.filter(|q| !q.is_empty()).map(str::to_string),
            to: None,
            body: Value::Null,
            auth_ok: false,
            status: None,
            answered_at_us: None,
            call_id: None,
            metadata: Value::Null,
            fault: None,
            error: None,
        });
        RecordGuard { log: Arc::clone(self), seq, done: false }
    }

    fn finalize(&self, seq: u64, status: Option<u16>) {
        let now = self.clock.now_us();
        let snapshot = {
            let mut g = lock(&self.inner);
            g.in_flight = g.in_flight.saturating_sub(1);
            let counted = match g.get_mut(seq) {
                Some(r) => {
                    r.status = status;
                    if status.is_some() {
                        r.answered_at_us = Some(now);
                    } else if r.fault.is_none() {
                        r.fault = Some("client_gone".into());
                    }
                    Some(r.clone())
                }
                None => None,
            };
            if counted.is_some() {
                match status {
                    Some(s) => *g.counters.by_status.entry(s).or_default() += 1,
                    None => g.counters.unanswered += 1,
                }
            }
            counted
        };
        if let Some(rec) = snapshot {
            if let Some(sink) = lock(&self.file).as_ref() {
                let _ = sink.tx.send(FileMsg::Record(Box::new(rec)));
            }
        }
    }

    pub fn snapshot(&self, since_seq: Option<u64>) -> Vec<RequestRecord> {
        let g = lock(&self.inner);
        let since = since_seq.unwrap_or(0);
        let first = g.records.front().map(|r| r.seq).unwrap_or(0);
        let skip = since.saturating_sub(first.saturating_sub(1)) as usize;
        g.records.iter().skip(skip).cloned().collect()
    }

    pub fn counters(&self) -> (Counters, u64) {
        let g = lock(&self.inner);
        (g.counters.clone(), g.in_flight)
    }

    pub fn set_capacity(&self, capacity: usize) {
        let mut g = lock(&self.inner);
        g.capacity = capacity.max(1);
        while g.records.len() > g.capacity {
            g.records.pop_front();
        }
    }

    /// Clears records and counters (seq keeps counting; in-flight gauge stays live).
    pub fn clear(&self) {
        let mut g = lock(&self.inner);
        g.records.clear();
        g.counters = Counters { max_in_flight: g.in_flight, ..Counters::default() };
    }

    /// Flushes and closes the file sink (idempotent).
    pub fn close(&self) {
        let sink = lock(&self.file).take();
        if let Some(sink) = sink {
            let _ = sink.tx.send(FileMsg::Close);
            let _ = sink.thread.join();
        }
    }
}

fn file_writer(mut w: BufWriter<std::fs::File>, rx: mpsc::Receiver<FileMsg>) {
    let write = |w: &mut BufWriter<std::fs::File>, rec: &RequestRecord| {
        if serde_json::to_writer(&mut *w, rec).is_ok() {
            let _ = w.write_all(b"\n");
        }
    };
    'outer: while let Ok(msg) = rx.recv() {
        match msg {
            FileMsg::Record(r) => write(&mut w, &r),
            FileMsg::Close => break,
        }
        // Drain what is queued, then flush once: keeps up at high rates, and
        // the file is current whenever the simulator is idle.
        loop {
            match rx.try_recv() {
                Ok(FileMsg::Record(r)) => write(&mut w, &r),
                Ok(FileMsg::Close) => break 'outer,
                Err(_) => break,
            }
        }
        let _ = w.flush();
    }
    let _ = w.flush();
}

/// Completes a record: `finish(status)` on answer; if dropped unanswered the record is
/// closed with `status: None` (connection dropped, client gone, or shutdown).
pub(crate) struct RecordGuard {
    log: Arc<RequestLog>,
    seq: u64,
    done: bool,
}

impl RecordGuard {
    pub fn update(&self, f: impl FnOnce(&mut RequestRecord)) {
        let mut g = lock(&self.log.inner);
        if let Some(r) = g.get_mut(self.seq) {
            f(r);
        }
    }

    pub fn finish(mut self, status: u16) {
        self.done = true;
        self.log.finalize(self.seq, Some(status));
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if !self.done {
            self.log.finalize(self.seq, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_options_read_as_none() {
        // serde reads a missing `Option` field as `None`; only `body`/`metadata` need `default`.
        let line = r#"{"seq":1,"received_at_us":5,"provider":"vapi","method":"GET","path":"/call","auth_ok":true}"#;
        let r: RequestRecord = serde_json::from_str(line).unwrap();
        assert_eq!((r.query, r.to, r.status, r.answered_at_us, r.call_id, r.fault, r.error), (None, None, None, None, None, None, None));
        assert_eq!((r.body, r.metadata), (Value::Null, Value::Null));
    }
}
