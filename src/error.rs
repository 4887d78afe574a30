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
    Database(String),
}

impl DialerError {
    /// The SQLSTATE reported when this error reaches a SQL caller.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            DialerError::InvalidArgument(_) => "22023",
            DialerError::NotFound(_) => "P0002",
            DialerError::MissingCredentials { .. } => "28000",
            DialerError::MalformedInput(_) => "22P02",
            DialerError::TooLarge(_) => "54000",
            DialerError::Unauthorized(_) => "28000",
            DialerError::Forbidden(_) => "42501",
            DialerError::Database(_) => "XX000",
        }
    }
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
}
