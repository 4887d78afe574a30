//! Provider credentials as stored: `dialer._check_base_url(url)` checks a base_url against
//! dialer.allowed_hosts when it is stored (as well as where each request is sent, in
//! src/dispatch.rs); `_seal` / `_unseal` / `rotate_encryption_key` keep keys and webhook secrets
//! encrypted at rest under the keyring of dialer.key_file (src/sealed.rs, src/secrets.rs).

use crate::api::process::raise;
use crate::error::DialerError;
use crate::gucs::Settings;
use crate::sealed::{decrypt, install_keyring, seal_value, unseal};
use crate::secrets::Keyring;
use pgrx::prelude::*;

#[pg_extern(stable, parallel_safe)]
fn _check_base_url(base_url: Option<&str>) {
    let Some(url) = base_url else { return };
    let list = match crate::hosts::AllowList::parse(&Settings::allowed_hosts_text()) {
        Ok(l) => l,
        Err(why) => raise(DialerError::InvalidArgument(why)),
    };
    if let Err(why) = list.check_url(url) {
        raise(DialerError::InvalidArgument(format!("base_url refused: {why}")));
    }
}

/// Encrypts a secret for its row (the credentials trigger calls it on every write, so a key is
/// never stored in the clear however the row is written). Encrypting is harmless to expose.
#[pg_extern(volatile, parallel_safe)]
fn _seal(plaintext: Option<&str>, agency_id: i64, provider: &str, column: &str) -> Option<String> {
    let p = plaintext?;
    Some(seal_value(p, agency_id, provider, column).unwrap_or_else(|e| raise(e)))
}

/// Decrypts a stored secret (get_agency_credentials, as the owner). EXECUTE is revoked from PUBLIC.
#[pg_extern(volatile, parallel_safe)]
fn _unseal(stored: Option<&str>, agency_id: i64, provider: &str, column: &str) -> Option<String> {
    let s = stored?;
    Some(unseal(s, agency_id, provider, column).unwrap_or_else(|e| raise(e)))
}

/// Puts a new key at the head of the keyring and re-encrypts every stored secret under it.
/// Returns how many values were re-encrypted. Owner only (EXECUTE revoked from PUBLIC).
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_encryption_key() -> i64 {
    let path = Settings::key_file();
    let ring = match Keyring::add_key(std::path::Path::new(&path)) {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => raise(DialerError::database(format!("the key could not be rotated: {e}"))),
    };
    install_keyring(ring);
    let rows = Spi::connect_mut(|client| {
        let t =
            client.update("SELECT agency_id, provider, api_key, webhook_secret FROM dialer.provider_credentials FOR UPDATE", None, &[])?;
        let mut out = Vec::new();
        for r in t {
            out.push((r.get::<i64>(1)?.unwrap_or(0), r.get::<String>(2)?.unwrap_or_default(), r.get::<String>(3)?, r.get::<String>(4)?));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| raise(DialerError::database(e.to_string())));
    let mut n = 0i64;
    for (agency, provider, key, secret) in rows {
        let mut reseal = |v: Option<String>, column: &str| -> Option<String> {
            let v = v?;
            n += 1;
            // The stored value (a Vault reference stays a reference), not what it resolves to.
            let plain = decrypt(&v, agency, &provider, column).unwrap_or_else(|e| raise(e));
            Some(seal_value(&plain, agency, &provider, column).unwrap_or_else(|e| raise(e)))
        };
        let (key, secret) = (reseal(key, "api_key"), reseal(secret, "webhook_secret"));
        Spi::run_with_args(
            "UPDATE dialer.provider_credentials SET api_key = $3, webhook_secret = $4 WHERE agency_id = $1 AND provider = $2",
            &[agency.into(), provider.as_str().into(), key.into(), secret.into()],
        )
        .unwrap_or_else(|e| raise(DialerError::database(e.to_string())));
    }
    n
}
