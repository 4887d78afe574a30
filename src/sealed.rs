//! Provider keys and webhook secrets as stored, made readable for the worker and the SQL
//! functions that need them: sealed under the keyring of dialer.key_file (src/secrets.rs), or a
//! Supabase Vault name of the agency's own.

use crate::error::DialerError;
use crate::gucs::Settings;
use crate::secrets::{binding, Keyring};
use pgrx::prelude::*;

/// The keyring of dialer.key_file, read once per backend and again after a rotation elsewhere.
static KEYRING: std::sync::Mutex<Option<std::sync::Arc<Keyring>>> = std::sync::Mutex::new(None);

fn keyring(reload: bool) -> Result<std::sync::Arc<Keyring>, DialerError> {
    let mut cached = KEYRING.lock().map_err(|_| DialerError::database("the keyring lock is poisoned"))?;
    if let (Some(k), false) = (cached.as_ref(), reload) {
        return Ok(k.clone());
    }
    let ring = Keyring::load_or_create(std::path::Path::new(&Settings::key_file()))
        .map(std::sync::Arc::new)
        .map_err(|e| DialerError::database(format!("provider secrets cannot be encrypted or read: {e}")))?;
    *cached = Some(ring.clone());
    Ok(ring)
}

/// Creates the keyring at server start when it is missing (the postmaster, preloading). Not
/// cached here: every backend reads the file itself, so none starts with a stale copy.
pub fn ensure_keyring() {
    if let Err(e) = Keyring::load_or_create(std::path::Path::new(&Settings::key_file())) {
        pgrx::warning!("provider secrets cannot be encrypted or read: {e}");
    }
}

/// A stored secret in the clear, for the worker and the functions that need it; never exposed
/// to PUBLIC. Plaintext left from before encryption is returned as it is. A value
/// `vault:<name>` names a Supabase Vault secret of the agency's own (`dialer._vault_secret`: the
/// name starts with `agency_<id>_`, else 42501).
pub fn unseal(stored: &str, agency_id: i64, provider: &str, column: &str) -> Result<String, DialerError> {
    let plain = decrypt(stored, agency_id, provider, column)?;
    match plain.strip_prefix(VAULT_PREFIX) {
        Some(name) => from_vault(agency_id, name),
        None => Ok(plain),
    }
}

const VAULT_PREFIX: &str = "vault:";

fn from_vault(agency_id: i64, name: &str) -> Result<String, DialerError> {
    let prefix = format!("agency_{agency_id}_");
    if !name.starts_with(&prefix) {
        return Err(DialerError::Forbidden(format!(
            "Vault secret {name:?} is not agency {agency_id}'s: its credentials may name only secrets whose names start with {prefix}"
        )));
    }
    Spi::get_one_with_args::<String>("SELECT dialer._vault_secret($1, $2)", &[agency_id.into(), name.into()])
        .map_err(|e| DialerError::database(e.to_string()))?
        .ok_or_else(|| DialerError::NotFound(format!("Vault has no secret named {name:?}")))
}

pub fn decrypt(stored: &str, agency_id: i64, provider: &str, column: &str) -> Result<String, DialerError> {
    if !Keyring::is_encrypted(stored) {
        return Ok(stored.to_string());
    }
    let b = binding(agency_id, provider, column);
    let ring = keyring(false)?;
    let ring = match Keyring::key_id_of(stored) {
        // Encrypted under a key this backend has not read yet (rotated in another session).
        Some(id) if ring.decrypt(stored, &b).is_err() && id != ring.current_id() => keyring(true)?,
        _ => ring,
    };
    ring.decrypt(stored, &b).map_err(DialerError::database)
}

pub fn seal_value(plaintext: &str, agency_id: i64, provider: &str, column: &str) -> Result<String, DialerError> {
    if Keyring::is_encrypted(plaintext) {
        return Ok(plaintext.to_string());
    }
    keyring(false)?.encrypt(plaintext, &binding(agency_id, provider, column)).map_err(DialerError::database)
}

/// After a rotation: this backend uses the new keyring from now on.
pub fn install_keyring(ring: std::sync::Arc<Keyring>) {
    if let Ok(mut cached) = KEYRING.lock() {
        *cached = Some(ring);
    }
}
