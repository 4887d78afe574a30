//! The one error type of pg_dialer. Every variant maps to a SQLSTATE and a message that tells the
//! user what to do; none ever carries a secret.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DialerError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "no {provider} credentials for agency {agency_id}: call dialer.set_provider_credentials({agency_id}, '{provider}', <api key>)"
    )]
    MissingCredentials { agency_id: i64, provider: String },
    #[error("{0}")]
    MalformedInput(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("database error: {0}")]
    Database(DbError),
}

/// An error as Postgres reported it, kept whole across the Rust side: its SQLSTATE, message,
/// detail and hint reach the SQL caller (or the log) as they were raised.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{message}")]
pub struct DbError {
    /// Five characters, e.g. "40001".
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl DialerError {
    /// An internal error of ours (XX000): something the library itself got wrong or could not do.
    pub fn database(message: impl Into<String>) -> DialerError {
        DialerError::Database(DbError { sqlstate: "XX000".into(), message: message.into(), detail: None, hint: None })
    }

    /// The detail and hint a database error came with.
    pub fn detail(&self) -> Option<&str> {
        match self {
            DialerError::Database(e) => e.detail.as_deref(),
            _ => None,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            DialerError::Database(e) => e.hint.as_deref(),
            _ => None,
        }
    }

    /// The SQLSTATE reported when this error reaches a SQL caller.
    pub fn sqlstate(&self) -> &str {
        match self {
            DialerError::InvalidArgument(_) => "22023",
            DialerError::NotFound(_) => "P0002",
            DialerError::MissingCredentials { .. } => "28000",
            DialerError::MalformedInput(_) => "22P02",
            DialerError::TooLarge(_) => "54000",
            DialerError::Unauthorized(_) => "28000",
            DialerError::Forbidden(_) => "42501",
            DialerError::Database(e) => &e.sqlstate,
        }
    }
}

/// Postgres's packed form of a SQLSTATE (MAKE_SQLSTATE: six bits a character), from its text.
pub fn sqlstate_code(sqlstate: &str) -> Option<i32> {
    let bytes = sqlstate.as_bytes();
    if bytes.len() != 5 || !bytes.iter().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
        return None;
    }
    Some(bytes.iter().enumerate().map(|(i, b)| (((*b as i32) - ('0' as i32)) & 0x3F) << (6 * i)).sum())
}

/// The text of a packed SQLSTATE (the inverse of `sqlstate_code`).
pub fn sqlstate_text(code: i32) -> String {
    (0..5).map(|i| char::from((((code >> (6 * i)) & 0x3F) as u8).wrapping_add(b'0'))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_credentials_tells_what_to_do() {
        let e = DialerError::MissingCredentials { agency_id: 7, provider: "ultravox".into() };
        assert!(e.to_string().contains("dialer.set_provider_credentials(7, 'ultravox'"));
        assert_eq!(e.sqlstate(), "28000");
    }

    #[test]
    fn sqlstates_pack_as_postgres_packs_them() {
        // MAKE_SQLSTATE('2','2','0','2','3'): 2 + (2 << 6) + (0 << 12) + (2 << 18) + (3 << 24)
        assert_eq!(sqlstate_code("22023"), Some(2 + (2 << 6) + (2 << 18) + (3 << 24)));
        for s in ["22023", "P0002", "40001", "XX000", "57014", "23505", "42501"] {
            assert_eq!(sqlstate_text(sqlstate_code(s).unwrap()), s);
        }
        assert_eq!(sqlstate_code("2202"), None);
        assert_eq!(sqlstate_code("22o23"), None);
    }

    #[test]
    fn a_database_error_keeps_its_code_detail_and_hint() {
        let e = DialerError::Database(DbError {
            sqlstate: "23505".into(),
            message: "duplicate key".into(),
            detail: Some("Key (id)=(1) already exists.".into()),
            hint: Some("use another id".into()),
        });
        assert_eq!((e.sqlstate(), e.detail(), e.hint()), ("23505", Some("Key (id)=(1) already exists."), Some("use another id")));
        assert_eq!(e.to_string(), "database error: duplicate key");
        assert_eq!(DialerError::database("x").sqlstate(), "XX000");
    }
}
