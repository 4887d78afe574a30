//! pg_dialer's web console: each person signs in with their own Postgres role and password, the
//! console connects as that role, and row-level security decides what they see.

mod actions;
mod auth;
mod charts;
mod db;
mod events;
mod html;
mod live;
mod metrics;
mod pages;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::Key;
use clap::Parser;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, RwLock};

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
}

pub struct Inner {
    /// Host, port and database; the user and password are each person's own.
    pub pg: tokio_postgres::Config,
    pub key: Key,
    pub sessions: RwLock<HashMap<String, Arc<auth::Session>>>,
    /// /metrics scrapers' pools, by role (with a digest of the password they were opened with).
    pub scrapers: Mutex<HashMap<String, ([u8; 32], deadpool_postgres::Pool)>>,
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
        .with_state(app)
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
    let app = App(Arc::new(Inner { pg, key, sessions: RwLock::new(HashMap::new()), scrapers: Mutex::new(HashMap::new()) }));
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pg_dialer_console: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(args.listen.clone());
    eprintln!("pg_dialer_console: listening on http://{addr}/");
    if let Err(e) = axum::serve(listener, router(app)).await {
        eprintln!("pg_dialer_console: {e}");
        std::process::exit(1);
    }
}
