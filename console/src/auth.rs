//! Sign-in with a Postgres role and password, sessions, and CSRF tokens.
//!
//! The cookie (encrypted and signed by axum-extra's PrivateCookieJar) holds only a random session
//! id; the role's connection pool and the CSRF token stay in this process, so a password never
//! leaves the server once it has opened the pool.

use crate::{html, App};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rand::RngCore;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const COOKIE: &str = "pg_dialer_session";
/// The sign-in form's own CSRF token (no session yet), so no other site can sign a browser in.
const LOGIN_COOKIE: &str = "pg_dialer_login";
/// A session ends after this long, whatever it does.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

pub struct Session {
    pub role: String,
    pub pool: Pool,
    pub csrf: String,
    /// dialer._caller_is_operator() at sign-in: sees every agency and the worker's own records.
    pub operator: bool,
    started: Instant,
    /// Set at sign-out or expiry: live streams that still hold the session stop.
    ended: AtomicBool,
}

impl Session {
    /// Whether a submitted token is this session's (constant time).
    pub fn csrf_ok(&self, token: &str) -> bool {
        self.csrf.as_bytes().ct_eq(token.as_bytes()).into()
    }

    pub fn is_live(&self) -> bool {
        !self.ended.load(Ordering::Relaxed) && self.started.elapsed() < SESSION_LIFETIME
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A pool that connects as `role` with `password` (host, port and database from --database-url).
pub fn pool_for(app: &App, role: &str, password: &str, size: usize) -> Option<Pool> {
    let mut cfg = app.0.pg.clone();
    cfg.user(role).password(password).application_name("pg_dialer_console").connect_timeout(Duration::from_secs(5));
    let mgr = Manager::from_config(cfg, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(mgr).max_size(size).build().ok()
}

/// The signed-in session of a request; pages without one send the browser to /login.
pub struct Current(pub Arc<Session>);

impl FromRequestParts<App> for Current {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let jar = match PrivateCookieJar::<Key>::from_request_parts(parts, app).await {
            Ok(j) => j,
            Err(never) => match never {},
        };
        let id = jar.get(COOKIE).map(|c| c.value().to_string());
        if let Some(id) = id {
            let found = app.0.sessions.read().await.get(&id).cloned();
            if let Some(s) = found {
                if s.is_live() {
                    return Ok(Current(s));
                }
                s.end();
                app.0.sessions.write().await.remove(&id);
            }
        }
        Err(if parts.uri.path() == "/events" { StatusCode::UNAUTHORIZED.into_response() } else { Redirect::to("/login").into_response() })
    }
}

fn login_form(jar: PrivateCookieJar<Key>, error: Option<&str>) -> (PrivateCookieJar<Key>, Html<String>) {
    let token = random_hex(32);
    let cookie = Cookie::build((LOGIN_COOKIE, token.clone())).http_only(true).same_site(SameSite::Strict).path("/login").build();
    (jar.add(cookie), login_html(&token, error))
}

fn login_html(token: &str, error: Option<&str>) -> Html<String> {
    let err = error.map(|e| format!("<p class=\"card error\" id=\"login-error\">{}</p>", html::esc(e))).unwrap_or_default();
    html::bare(
        "Sign in",
        &format!(
            "<div class=\"login\"><div class=\"card\"><h1>☎ pg_dialer</h1><p class=\"muted\">Sign in with your Postgres role: \
             you see what the database lets that role see.</p>{err}\
             <form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"csrf\" value=\"{token}\"><label>Role<input name=\"role\" id=\"role\" autocomplete=\"username\" required></label>\
             <label>Password<input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button class=\"primary\" id=\"sign-in\">Sign in</button></form></div></div>"
        ),
    )
}

pub async fn login_page(jar: PrivateCookieJar<Key>) -> (PrivateCookieJar<Key>, Html<String>) {
    login_form(jar, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    role: String,
    password: String,
}

pub async fn login(State(app): State<App>, jar: PrivateCookieJar<Key>, Form(f): Form<LoginForm>) -> Response {
    let expected = jar.get(LOGIN_COOKIE).map(|c| c.value().to_string()).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(f.csrf.as_bytes())) {
        return forged();
    }
    let role = f.role.trim();
    if role.is_empty() || role.len() > 63 {
        return (StatusCode::UNAUTHORIZED, login_form(jar, Some("Sign-in refused: wrong role or password."))).into_response();
    }
    let Some(pool) = pool_for(&app, role, &f.password, 4) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, login_form(jar, Some("Cannot set up a connection pool."))).into_response();
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            // Which of role or password was wrong is not said, to the browser or in the log.
            let code = match &e {
                deadpool_postgres::PoolError::Backend(b) => b.code().map(|c| c.code().to_string()).unwrap_or_else(|| "connection".into()),
                _ => "pool".into(),
            };
            eprintln!("pg_dialer_console: sign-in refused for role {role:?} ({code})");
            let msg = if code == "28P01" || code == "28000" { "Sign-in refused: wrong role or password." } else { "Sign-in failed: the database cannot be reached." };
            return (StatusCode::UNAUTHORIZED, login_form(jar, Some(msg))).into_response();
        }
    };
    let operator = match client.query_one("SELECT dialer._caller_is_operator()", &[]).await {
        Ok(r) => r.try_get::<_, bool>(0).unwrap_or(false),
        Err(e) => {
            let msg = format!("Signed in, but this role cannot use pg_dialer: {}", crate::db::describe(&e));
            return (StatusCode::FORBIDDEN, login_form(jar, Some(&msg))).into_response();
        }
    };
    drop(client);
    let id = random_hex(32);
    let session = Arc::new(Session {
        role: role.to_string(),
        pool,
        csrf: random_hex(32),
        operator,
        started: Instant::now(),
        ended: AtomicBool::new(false),
    });
    {
        let mut sessions = app.0.sessions.write().await;
        // Expired sessions go when someone signs in, so the map does not grow without end.
        sessions.retain(|_, s| {
            let live = s.is_live();
            if !live {
                s.end();
            }
            live
        });
        sessions.insert(id.clone(), session);
    }
    eprintln!("pg_dialer_console: {role:?} signed in{}", if operator { " (operator)" } else { "" });
    let cookie = Cookie::build((COOKIE, id)).http_only(true).same_site(SameSite::Strict).path("/").build();
    (jar.remove(Cookie::build(LOGIN_COOKIE).path("/login").build()).add(cookie), Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(State(app): State<App>, jar: PrivateCookieJar<Key>, Current(s): Current, Form(f): Form<CsrfForm>) -> Response {
    if !s.csrf_ok(&f.csrf) {
        return forged();
    }
    if let Some(id) = jar.get(COOKIE).map(|c| c.value().to_string()) {
        if let Some(old) = app.0.sessions.write().await.remove(&id) {
            old.end();
        }
    }
    (jar.remove(Cookie::build(COOKIE).path("/").build()), Redirect::to("/login")).into_response()
}

pub fn forged() -> Response {
    (StatusCode::FORBIDDEN, html::bare("Refused", "<div class=\"card error\" id=\"forbidden\"><h2>403 — refused</h2><p>The form's security token is not this session's. Reload the page and try again.</p></div>")).into_response()
}
