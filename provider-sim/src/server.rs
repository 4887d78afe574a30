//! The HTTP server: router, accept loop (HTTP/1.1 keep-alive, per-connection kill switch
//! for `drop_connection`), and the in-process [`Simulator`] handle.

use crate::common::json;
use crate::config::{Rule, SimConfig};
use crate::faults::ConnKill;
use crate::log::RequestRecord;
use crate::mutex::lock;
use crate::state::{AppState, SimCall, SimStats};
use crate::webhooks::WebhookRecord;
use crate::{bland, control, generic, retell, twilio, ultravox, vapi};
use axum::http::{Request, StatusCode, Uri};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(ultravox::routes())
        .merge(twilio::routes())
        .merge(vapi::routes())
        .merge(retell::routes())
        .merge(bland::routes())
        .merge(generic::routes())
        .merge(control::routes())
        .fallback(|uri: Uri| async move { json(StatusCode::NOT_FOUND, json!({ "error": "not found", "path": uri.path() })) })
        .with_state(state)
}

async fn serve(listener: tokio::net::TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, router.clone(), shutdown.clone()));
                }
                // e.g. too many open files: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, router: Router, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let kill = ConnKill::default();
    let kill_ext = kill.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(kill_ext.clone());
        tower_service::Service::call(&mut router.clone(), req)
    });
    let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc);
    // Dropping `conn` closes the socket without a response.
    tokio::select! {
        _ = conn => {}
        _ = kill.0.notified() => {}
        _ = shutdown.changed() => {}
    }
}

/// A simulator running in this process on its own tokio runtime thread.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown_tx: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Simulator {
    /// Binds 127.0.0.1:port (0 = ephemeral), serves on its own tokio runtime thread(s),
    /// returns at once. Fails (`InvalidInput`) if `config.spec_dir` does not load or the
    /// webhook URL is not a loopback one.
    pub fn start(config: SimConfig, port: u16) -> std::io::Result<Simulator> {
        let state = Arc::new(AppState::new(config)?);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("provider-sim-worker").build()?;
        let listener = {
            let _ctx = rt.enter();
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.set_reuseaddr(true)?;
            sock.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
            sock.listen(4096)?
        };
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let app = router(Arc::clone(&state));
        let thread = std::thread::Builder::new().name("provider-sim".into()).spawn(move || {
            rt.block_on(serve(listener, app, rx));
            rt.shutdown_timeout(Duration::from_secs(2));
        })?;
        Ok(Simulator { addr, state, shutdown_tx: Some(tx), thread: Some(thread) })
    }

    /// `"http://127.0.0.1:PORT"`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// All request records in memory, in `seq` order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.log.snapshot(None)
    }

    /// Records with `seq > since_seq`.
    pub fn requests_since(&self, since_seq: u64) -> Vec<RequestRecord> {
        self.state.log.snapshot(Some(since_seq))
    }

    /// All created calls, in creation order.
    pub fn calls(&self) -> Vec<SimCall> {
        self.state.calls()
    }

    /// Replaces the rule list.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        lock(&self.state.config).rules = rules.into_iter().filter(|r| r.validate().is_ok()).collect();
    }

    /// Changes knobs at run time (invalid values are clamped, a non-loopback webhook URL is
    /// dropped; `log_file` and `spec_dir` cannot change).
    pub fn update(&self, f: impl FnOnce(&mut SimConfig)) {
        let mut cfg = lock(&self.state.config);
        let (log_file, spec_dir) = (cfg.log_file.clone(), cfg.spec_dir.clone());
        f(&mut cfg);
        cfg.log_file = log_file;
        cfg.spec_dir = spec_dir;
        cfg.sanitize();
        self.state.log.set_capacity(cfg.log_capacity);
    }

    /// Like [`Simulator::update`] but refuses an invalid result (nothing changes then).
    pub fn try_update(&self, f: impl FnOnce(&mut SimConfig)) -> Result<(), String> {
        let mut cfg = lock(&self.state.config);
        let mut next = cfg.clone();
        f(&mut next);
        next.log_file = cfg.log_file.clone();
        next.spec_dir = cfg.spec_dir.clone();
        next.validate()?;
        *cfg = next;
        self.state.log.set_capacity(cfg.log_capacity);
        Ok(())
    }

    /// Webhooks sent so far (Ultravox events, Twilio status callbacks), oldest first.
    pub fn webhooks(&self) -> Vec<WebhookRecord> {
        self.state.webhooks.snapshot()
    }

    /// The spec directory requests are checked against (`None` = built-in checks only).
    pub fn spec_dir(&self) -> Option<std::path::PathBuf> {
        self.state.contract.spec_dir().map(|d| d.to_path_buf())
    }

    /// The current config (including the API key: this is in-process).
    pub fn config(&self) -> SimConfig {
        self.state.config()
    }

    /// Clears the request log, calls, webhooks and rules (knobs stay).
    pub fn reset(&self) {
        self.state.reset();
    }

    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Stops serving (open connections and hung requests are cut) and flushes the log file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state.log.close();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("addr", &self.addr).finish()
    }
}
