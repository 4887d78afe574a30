//! /metrics in the Prometheus text format: HTTP Basic auth with a Postgres role and password,
//! `dialer.metrics()` run as that role (row-level security decides which samples it gets).
//!
//! A scrape uses the role's pool (roles.rs) only when it presents the very password Postgres
//! accepted within the last re-check interval; any other password is checked by Postgres on a
//! fresh connection, counted by the same throttle as the sign-in form.

use crate::roles::VerifyError;
use crate::throttle::Who;
use crate::{db, security, App};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::net::SocketAddr;

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"pg_dialer metrics\"")], "sign in with a Postgres role\n")
        .into_response()
}

fn too_many(secs: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.to_string())],
        "too many failed attempts for this role or from this address\n",
    )
        .into_response()
}

fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty() && user.len() <= 63).then(|| (user.to_string(), password.to_string()))
}

/// Label values: backslash, double quote and newline escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// HELP text: backslash and newline escaped.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

pub struct Sample {
    pub family: String,
    pub kind: String,
    pub help: String,
    pub sample: String,
    pub labels: serde_json::Value,
    pub value: f64,
}

/// A metric family as `dialer._metric_families()` lists it: name, type, HELP.
pub struct Family {
    pub family: String,
    pub kind: String,
    pub help: String,
}

/// The exposition: HELP and TYPE once per family, then its samples (families in first-seen order);
/// then every family of `families` that has no sample for this role (HELP and TYPE alone), so that
/// each family pg_dialer can produce is announced from the first scrape.
pub fn render(samples: &[Sample], families: &[Family]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut by_family: std::collections::HashMap<&str, Vec<&Sample>> = std::collections::HashMap::new();
    for s in samples {
        if !valid_name(&s.family) || !valid_name(&s.sample) {
            continue;
        }
        if !by_family.contains_key(s.family.as_str()) {
            order.push(&s.family);
        }
        by_family.entry(&s.family).or_default().push(s);
    }
    let mut out = String::new();
    for fam in order {
        let list = &by_family[fam];
        let first = list[0];
        let kind = match first.kind.as_str() {
            k @ ("counter" | "gauge" | "histogram" | "summary") => k,
            _ => "untyped",
        };
        out.push_str(&format!("# HELP {fam} {}\n# TYPE {fam} {kind}\n", escape_help(&first.help)));
        for s in list {
            out.push_str(&s.sample);
            if let Some(obj) = s.labels.as_object() {
                let labels: Vec<String> = obj
                    .iter()
                    .filter(|(k, _)| valid_name(k))
                    .map(|(k, v)| {
                        let text = match v {
                            serde_json::Value::String(t) => t.clone(),
                            other => other.to_string(),
                        };
                        format!("{k}=\"{}\"", escape_label(&text))
                    })
                    .collect();
                if !labels.is_empty() {
                    out.push('{');
                    out.push_str(&labels.join(","));
                    out.push('}');
                }
            }
            out.push(' ');
            out.push_str(&value(s.value));
            out.push('\n');
        }
    }
    for f in families {
        if by_family.contains_key(f.family.as_str()) || !valid_name(&f.family) {
            continue;
        }
        let kind = match f.kind.as_str() {
            k @ ("counter" | "gauge" | "histogram" | "summary") => k,
            _ => "untyped",
        };
        out.push_str(&format!("# HELP {} {}\n# TYPE {} {kind}\n", f.family, escape_help(&f.help), f.family));
    }
    out
}

pub async fn scrape(State(app): State<App>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    let Some((user, password)) = credentials(&headers) else {
        return unauthorized();
    };
    let who = Who::new(security::client_addr(&app, peer, &headers), &user);
    // A lock-out holds even for the right password (the same answer whichever was sent).
    if let Some(l) = app.0.throttle.locked(&who) {
        return too_many(l.retry_after_secs());
    }
    let role_pool = match app.0.roles.recently_verified(&user, &password) {
        Some(p) => p,
        None => {
            let attempt = match app.0.throttle.begin(&who, "/metrics") {
                Ok(a) => a,
                Err(l) => return too_many(l.retry_after_secs()),
            };
            if !attempt.delay.is_zero() {
                tokio::time::sleep(attempt.delay).await;
            }
            match app.0.roles.verify(&user, &password).await {
                Ok(access) => {
                    attempt.succeeded();
                    match app.0.roles.install(&user, &password, access) {
                        Ok(p) => p,
                        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
                    }
                }
                Err(VerifyError::Refused(code)) => {
                    eprintln!("pg_dialer_console: /metrics refused for role {user:?} from {} ({code})", who.addr);
                    return unauthorized();
                }
                Err(VerifyError::NoAccess(why)) => {
                    attempt.succeeded();
                    return (StatusCode::FORBIDDEN, format!("this role cannot use pg_dialer: {why}\n")).into_response();
                }
                Err(e @ VerifyError::Unavailable(_)) => {
                    attempt.not_counted();
                    return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
                }
            }
        }
    };
    let client = match role_pool.pool.get().await {
        Ok(c) => c,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", db::AppError::from(e).message)).into_response(),
    };
    let rows = match client.query("SELECT family, kind, help, sample, labels, value FROM dialer.metrics()", &[]).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{}\n", db::describe(&e))).into_response(),
    };
    let mut samples = Vec::with_capacity(rows.len());
    for r in rows {
        let get = || -> Result<Sample, tokio_postgres::Error> {
            Ok(Sample {
                family: r.try_get(0)?,
                kind: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                help: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                sample: r.try_get(3)?,
                labels: r.try_get::<_, Option<serde_json::Value>>(4)?.unwrap_or(serde_json::Value::Null),
                value: r.try_get::<_, Option<f64>>(5)?.unwrap_or(f64::NAN),
            })
        };
        match get() {
            Ok(s) => samples.push(s),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{}\n", db::describe(&e))).into_response(),
        }
    }
    // The families' list; a role that cannot read it gets its samples' families only.
    let families: Vec<Family> = match client.query("SELECT family, kind, help FROM dialer._metric_families()", &[]).await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| {
                Some(Family {
                    family: r.try_get(0).ok()?,
                    kind: r.try_get::<_, Option<String>>(1).ok()?.unwrap_or_default(),
                    help: r.try_get::<_, Option<String>>(2).ok()?.unwrap_or_default(),
                })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&samples, &families)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(family: &str, sample: &str, labels: serde_json::Value, value: f64) -> Sample {
        Sample { family: family.into(), kind: "counter".into(), help: "a\\b\nc".into(), sample: sample.into(), labels, value }
    }

    #[test]
    fn help_and_type_once_per_family_and_labels_escaped() {
        let out = render(
            &[
                s("pg_dialer_calls_total", "pg_dialer_calls_total", serde_json::json!({"outcome": "a\"b\\c\nd"}), 3.0),
                s("pg_dialer_x", "pg_dialer_x", serde_json::json!({}), f64::INFINITY),
                s("pg_dialer_calls_total", "pg_dialer_calls_total", serde_json::json!({"bad-name": "x", "p": "u"}), 1.5),
            ],
            &[],
        );
        assert_eq!(
            out,
            "# HELP pg_dialer_calls_total a\\\\b\\nc\n# TYPE pg_dialer_calls_total counter\n\
             pg_dialer_calls_total{outcome=\"a\\\"b\\\\c\\nd\"} 3\npg_dialer_calls_total{p=\"u\"} 1.5\n\
             # HELP pg_dialer_x a\\\\b\\nc\n# TYPE pg_dialer_x counter\npg_dialer_x +Inf\n"
        );
    }

    #[test]
    fn families_without_samples_are_announced() {
        let fam = |f: &str, k: &str| Family { family: f.into(), kind: k.into(), help: "h".into() };
        let out = render(
            &[s("pg_dialer_calls_total", "pg_dialer_calls_total", serde_json::json!({}), 0.0)],
            &[fam("pg_dialer_calls_total", "counter"), fam("pg_dialer_tick_duration_seconds", "histogram"), fam("bad name", "gauge")],
        );
        assert_eq!(
            out,
            "# HELP pg_dialer_calls_total a\\\\b\\nc\n# TYPE pg_dialer_calls_total counter\npg_dialer_calls_total 0\n\
             # HELP pg_dialer_tick_duration_seconds h\n# TYPE pg_dialer_tick_duration_seconds histogram\n"
        );
    }
}
