//! Sign-in with a Postgres role and password, sessions, and CSRF tokens.
//!
//! The cookie (encrypted and signed by axum-extra's PrivateCookieJar) holds only a random session
//! id; the CSRF token stays in this process, and the connections are the role's pool (roles.rs),
//! shared by all its sessions, so a password never leaves the server. Every sign-in is checked by
//! Postgres on a fresh connection and counted by the throttle (throttle.rs).

use crate::roles::{RolePool, VerifyError};
use crate::throttle::{Locked, Who};
use crate::{html, security, App};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
use deadpool_postgres::Pool;
use rand::RngCore;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const COOKIE: &str = "pg_dialer_session";
/// The sign-in form's own CSRF token (no session yet), so no other site can sign a browser in.
const LOGIN_COOKIE: &str = "pg_dialer_login";
/// A session ends after this long, whatever it does.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept per role, and in all: beyond, the oldest is ended (memory stays bounded however
/// often someone who knows a password signs in).
const MAX_SESSIONS_PER_ROLE: usize = 100;
const MAX_SESSIONS: usize = 10_000;

pub struct Session {
    pub role: String,
    /// The role's pool (shared with its other sessions).
    pub pool: Pool,
    role_pool: Arc<RolePool>,
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

    /// False once signed out, expired, or the role's pool was closed (the role failed a re-check).
    pub fn is_live(&self) -> bool {
        !self.ended.load(Ordering::Relaxed) && self.started.elapsed() < SESSION_LIFETIME && self.role_pool.is_alive()
    }

    pub fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Drops sessions that are no longer live (signed out, expired, role re-check failed).
pub async fn purge_sessions(app: &App) {
    app.0.sessions.write().await.retain(|_, s| {
        let live = s.is_live();
        if !live {
            s.end();
        }
        live
    });
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

fn login_form(app: &App, jar: PrivateCookieJar<Key>, error: Option<&str>) -> (PrivateCookieJar<Key>, Html<String>) {
    let token = random_hex(32);
    let cookie = Cookie::build((LOGIN_COOKIE, token.clone()))
        .http_only(true)
        .secure(app.0.secure_cookie)
        .same_site(SameSite::Strict)
        .path("/login")
        .build();
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

pub async fn login_page(State(app): State<App>, jar: PrivateCookieJar<Key>) -> (PrivateCookieJar<Key>, Html<String>) {
    login_form(&app, jar, None)
}

/// 429 with Retry-After: the address or the role used up its failed attempts.
fn locked_out(app: &App, jar: PrivateCookieJar<Key>, l: &Locked) -> Response {
    let secs = l.retry_after_secs();
    let msg = format!("Too many failed sign-ins from this address or for this role: try again in {} minute(s).", secs.div_ceil(60));
    (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, secs.to_string())], login_form(app, jar, Some(&msg))).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    role: String,
    password: String,
}

pub async fn login(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    jar: PrivateCookieJar<Key>,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = jar.get(LOGIN_COOKIE).map(|c| c.value().to_string()).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(f.csrf.as_bytes())) {
        return forged();
    }
    let role = f.role.trim();
    if role.is_empty() || role.len() > 63 {
        return (StatusCode::UNAUTHORIZED, login_form(&app, jar, Some("Sign-in refused: wrong role or password."))).into_response();
    }
    let who = Who::new(security::client_addr(&app, peer, &headers), role);
    let attempt = match app.0.throttle.begin(&who, "sign-in") {
        Ok(a) => a,
        Err(l) => return locked_out(&app, jar, &l),
    };
    if !attempt.delay.is_zero() {
        tokio::time::sleep(attempt.delay).await;
    }
    let access = match app.0.roles.verify(role, &f.password).await {
        Ok(a) => {
            attempt.succeeded();
            a
        }
        Err(VerifyError::Refused(code)) => {
            // Which of role or password was wrong is not said, to the browser or in the log.
            eprintln!("pg_dialer_console: sign-in refused for role {role:?} from {} ({code})", who.addr);
            return (StatusCode::UNAUTHORIZED, login_form(&app, jar, Some("Sign-in refused: wrong role or password."))).into_response();
        }
        Err(VerifyError::NoAccess(why)) => {
            attempt.succeeded();
            let msg = format!("Signed in, but this role cannot use pg_dialer: {why}");
            return (StatusCode::FORBIDDEN, login_form(&app, jar, Some(&msg))).into_response();
        }
        Err(VerifyError::Unavailable(why)) => {
            attempt.not_counted();
            eprintln!("pg_dialer_console: sign-in for role {role:?} failed: {why}");
            return (StatusCode::SERVICE_UNAVAILABLE, login_form(&app, jar, Some("Sign-in failed: the database cannot be reached.")))
                .into_response();
        }
    };
    let operator = access.operator;
    let role_pool = match app.0.roles.install(role, &f.password, access) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pg_dialer_console: sign-in for role {role:?}: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, login_form(&app, jar, Some("Cannot set up a connection pool."))).into_response();
        }
    };
    let id = random_hex(32);
    let session = Arc::new(Session {
        role: role.to_string(),
        pool: role_pool.pool.clone(),
        role_pool,
        csrf: random_hex(32),
        operator,
        started: Instant::now(),
        ended: AtomicBool::new(false),
    });
    {
        let mut sessions = app.0.sessions.write().await;
        // Sessions no longer live go when someone signs in, so the map does not grow without end.
        sessions.retain(|_, s| {
            let live = s.is_live();
            if !live {
                s.end();
            }
            live
        });
        evict_oldest(&mut sessions, |s| s.role == role, MAX_SESSIONS_PER_ROLE - 1);
        evict_oldest(&mut sessions, |_| true, MAX_SESSIONS - 1);
        sessions.insert(id.clone(), session);
    }
    eprintln!("pg_dialer_console: {role:?} signed in{}", if operator { " (operator)" } else { "" });
    let cookie = Cookie::build((COOKIE, id)).http_only(true).secure(app.0.secure_cookie).same_site(SameSite::Strict).path("/").build();
    (jar.remove(Cookie::build(LOGIN_COOKIE).path("/login").secure(app.0.secure_cookie).build()).add(cookie), Redirect::to("/"))
        .into_response()
}

/// Ends the oldest sessions matching `which` until at most `keep` of them remain.
fn evict_oldest(sessions: &mut std::collections::HashMap<String, Arc<Session>>, which: impl Fn(&Session) -> bool, keep: usize) {
    let mut mine: Vec<(Instant, String)> = sessions.iter().filter(|(_, s)| which(s)).map(|(id, s)| (s.started, id.clone())).collect();
    if mine.len() <= keep {
        return;
    }
    mine.sort();
    let excess = mine.len() - keep;
    for (_, id) in mine.into_iter().take(excess) {
        if let Some(s) = sessions.remove(&id) {
            s.end();
        }
    }
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
    (jar.remove(Cookie::build(COOKIE).path("/").secure(app.0.secure_cookie).build()), Redirect::to("/login")).into_response()
}

pub fn forged() -> Response {
    (StatusCode::FORBIDDEN, html::bare("Refused", "<div class=\"card error\" id=\"forbidden\"><h2>403 — refused</h2><p>The form's security token is not this session's. Reload the page and try again.</p></div>")).into_response()
}
