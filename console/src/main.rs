//! pg_dialer's web console: each person signs in with their own Postgres role and password, the
//! console connects as that role, and row-level security decides what they see.

mod actions;
mod auth;
mod charts;
mod db;
mod events;
mod frame;
mod html;
mod live;
mod metrics;
mod pages;
mod roles;
mod security;
mod throttle;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::Key;
use clap::Parser;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;

#[derive(Parser, Debug)]
#[command(name = "pg_dialer_console", about = "pg_dialer's web console (sign in with a Postgres role)")]
struct Args {
    /// The database the extension is in, without credentials: postgresql://HOST:PORT/DB
    #[arg(long)]
    database_url: String,
    /// Where to listen (loopback unless told otherwise)
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A file of at least 64 random bytes that signs and encrypts the session cookies; a fresh
    /// random key at every start otherwise (sessions live in memory either way)
    #[arg(long)]
    cookie_key_file: Option<std::path::PathBuf>,
    /// Marks the session and sign-in cookies `Secure` (sent over HTTPS only): turn it on whenever
    /// the console is served behind TLS
    #[arg(long)]
    secure_cookie: bool,
    /// Connections per role at most (one pool per role, shared by all its sessions and scrapes)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pool_size: u16,
    /// A pooled connection unused for this many seconds is closed
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pool_idle_secs: u64,
    /// Every this many seconds (at most 60) each signed-in role is checked again in Postgres
    /// (password, LOGIN, expiry, pg_dialer membership and agencies); a role that fails is signed
    /// out everywhere. Also how long /metrics trusts a password Postgres accepted.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=60))]
    recheck_secs: u64,
    /// Failed sign-ins (per client address and per role) before each further attempt waits
    #[arg(long, default_value_t = 5)]
    auth_delay_after: u32,
    /// The first wait, in milliseconds; it doubles with each further failure
    #[arg(long, default_value_t = 250)]
    auth_delay_ms: u64,
    /// The longest wait, in milliseconds
    #[arg(long, default_value_t = 8000)]
    auth_max_delay_ms: u64,
    /// Failed sign-ins (per client address and per role, within --auth-window-secs) after which
    /// sign-in and /metrics answer 429 for --auth-lockout-secs
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    auth_lockout_after: u32,
    #[arg(long, default_value_t = 900)]
    auth_lockout_secs: u64,
    /// Failures older than this many seconds are forgotten
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    auth_window_secs: u64,
    /// Behind a reverse proxy: the header holding the client's address (e.g. X-Forwarded-For; its
    /// last address counts). Only with a proxy that sets it, or clients could pick their address.
    #[arg(long)]
    client_address_header: Option<axum::http::HeaderName>,
}

pub struct Inner {
    pub key: Key,
    pub sessions: RwLock<HashMap<String, Arc<auth::Session>>>,
    /// One pool per role, for its sessions and its /metrics scrapes.
    pub roles: roles::Roles,
    pub throttle: Arc<throttle::Throttle>,
    pub secure_cookie: bool,
    pub client_address_header: Option<axum::http::HeaderName>,
}

#[derive(Clone)]
pub struct App(pub Arc<Inner>);

impl FromRef<App> for Key {
    fn from_ref(app: &App) -> Key {
        app.0.key.clone()
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/", get(pages::campaigns::list))
        .route("/campaigns/{id}", get(pages::campaigns::one))
        .route("/queue", get(pages::queue::page))
        .route("/calls", get(pages::calls::page))
        .route("/telecallers", get(pages::telecallers::page))
        .route("/health", get(pages::health::page))
        .route("/events", get(events::stream))
        .route("/actions/{kind}/{id}/{op}", post(actions::run))
        .route("/metrics", get(metrics::scrape))
        .route("/static/console.css", get(security::css))
        .route("/static/console.js", get(security::js))
        .with_state(app)
        // Outermost, so every answer gets the headers: 404s, rejections and redirects too.
        .layer(axum::middleware::from_fn(security::headers))
}

/// Re-checks the signed-in roles every --recheck-secs, and closes idle connections.
fn maintain(app: App) {
    let a = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(a.0.roles.settings.recheck);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            a.0.roles.recheck_all().await;
            auth::purge_sessions(&a).await;
        }
    });
    tokio::spawn(async move {
        let every = (app.0.roles.settings.idle / 2).clamp(Duration::from_millis(250), Duration::from_secs(30));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            app.0.roles.reap_idle();
        }
    });
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let pg: tokio_postgres::Config = match args.database_url.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pg_dialer_console: --database-url is not a Postgres URL: {e}");
            std::process::exit(2);
        }
    };
    if pg.get_password().is_some() {
        eprintln!("pg_dialer_console: --database-url must not carry a password: each person signs in with their own");
        std::process::exit(2);
    }
    let key = match &args.cookie_key_file {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= 64 => Key::from(&bytes),
            Ok(_) => {
                eprintln!("pg_dialer_console: {} holds fewer than 64 bytes", path.display());
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("pg_dialer_console: cannot read {}: {e}", path.display());
                std::process::exit(2);
            }
        },
        None => Key::generate(),
    };
    let limits = throttle::Limits {
        delay_after: args.auth_delay_after,
        base_delay: Duration::from_millis(args.auth_delay_ms),
        max_delay: Duration::from_millis(args.auth_max_delay_ms.max(args.auth_delay_ms)),
        lockout_after: args.auth_lockout_after,
        lockout: Duration::from_secs(args.auth_lockout_secs),
        window: Duration::from_secs(args.auth_window_secs),
        ..throttle::Limits::default()
    };
    let settings = roles::PoolSettings {
        max_size: usize::from(args.pool_size),
        idle: Duration::from_secs(args.pool_idle_secs),
        recheck: Duration::from_secs(args.recheck_secs),
    };
    let app = App(Arc::new(Inner {
        // Host, port and database; the user and password are each person's own.
        roles: roles::Roles::new(pg, settings),
        key,
        sessions: RwLock::new(HashMap::new()),
        throttle: throttle::Throttle::new(limits),
        secure_cookie: args.secure_cookie,
        client_address_header: args.client_address_header.clone(),
    }));
    maintain(app.clone());
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pg_dialer_console: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(args.listen.clone());
    eprintln!("pg_dialer_console: listening on http://{addr}/");
    // The peer address is what sign-in throttling counts by (see security::client_addr).
    if let Err(e) = axum::serve(listener, router(app).into_make_service_with_connect_info::<SocketAddr>()).await {
        eprintln!("pg_dialer_console: {e}");
        std::process::exit(1);
    }
}
