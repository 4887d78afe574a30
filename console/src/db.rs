//! Errors from Postgres, shown as Postgres said them (message and SQLSTATE).

use crate::html;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub message: String,
}

impl AppError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> AppError {
        AppError { status, message: message.into() }
    }
}

/// "message (SQLSTATE xxxxx)", with the detail and hint when Postgres gave them.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} (SQLSTATE {})", d.message(), d.code().code());
            if let Some(detail) = d.detail() {
                s.push_str(&format!(" — {detail}"));
            }
            if let Some(hint) = d.hint() {
                s.push_str(&format!(" Hint: {hint}"));
            }
            s
        }
        None => format!("database connection: {e}"),
    }
}

impl From<tokio_postgres::Error> for AppError {
    fn from(e: tokio_postgres::Error) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for AppError {
    fn from(e: deadpool_postgres::PoolError) -> AppError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => AppError::new(StatusCode::SERVICE_UNAVAILABLE, describe(&e)),
            other => AppError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database connection: {other}")),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = format!(
            "<div class=\"card error\"><h2>That did not work</h2><p class=\"pgerr\">{}</p><p><a href=\"/\" data-back>Back</a></p></div>",
            html::esc(&self.message)
        );
        (self.status, html::bare("Error", &body)).into_response()
    }
}

pub type Result<T> = std::result::Result<T, AppError>;
