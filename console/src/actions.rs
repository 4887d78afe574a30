//! Every action goes through the extension's SQL API as the signed-in role, so the same rules
//! and errors apply as for the application; a POST without this session's CSRF token is refused.

use crate::auth::{forged, Current};
use crate::db::AppError;
use crate::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    back: String,
}

/// Only paths of this console: no open redirect.
fn safe_back(back: &str) -> &str {
    if back.starts_with('/') && !back.starts_with("//") && !back.contains('\\') && !back.contains(['\r', '\n']) {
        back
    } else {
        "/"
    }
}

fn statement(kind: &str, op: &str) -> Option<&'static str> {
    Some(match (kind, op) {
        ("batch", "pause") => "SELECT dialer.pause_batch($1)::text",
        ("batch", "resume") => "SELECT dialer.resume_batch($1)::text",
        ("batch", "cancel") => "SELECT dialer.cancel_batch($1)::text",
        ("job", "retry") => "SELECT dialer.retry_job($1)::text",
        ("job", "cancel") => "SELECT dialer.cancel_job($1)::text",
        ("in-doubt", "redial") => "SELECT dialer.resolve_in_doubt($1, true)::text",
        ("in-doubt", "settle") => "SELECT dialer.resolve_in_doubt($1, false)::text",
        ("telecaller", "available") => "SELECT dialer.set_telecaller_available($1, true)::text",
        ("telecaller", "unavailable") => "SELECT dialer.set_telecaller_available($1, false)::text",
        _ => return None,
    })
}

pub async fn run(
    State(_): State<App>,
    Current(s): Current,
    Path((kind, id, op)): Path<(String, i64, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    if !s.csrf_ok(&f.csrf) {
        eprintln!("pg_dialer_console: refused a {kind}/{op} POST with a wrong CSRF token (role {:?})", s.role);
        return forged();
    }
    let Some(sql) = statement(&kind, &op) else {
        return AppError::new(StatusCode::NOT_FOUND, format!("no action {kind}/{op}")).into_response();
    };
    let client = match s.pool.get().await {
        Ok(c) => c,
        Err(e) => return AppError::from(e).into_response(),
    };
    match client.query_one(sql, &[&id]).await {
        Ok(row) => {
            let result: Option<String> = row.try_get(0).ok().flatten();
            if result.as_deref() == Some("false") {
                // The API said no without an error (e.g. a job no longer in a state that allows it).
                return AppError::new(StatusCode::CONFLICT, format!("Nothing changed: {kind} {id} is not in a state that allows {op}."))
                    .into_response();
            }
            Redirect::to(safe_back(&f.back)).into_response()
        }
        Err(e) => AppError::from(e).into_response(),
    }
}
