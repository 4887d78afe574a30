//! Provider keys and webhook secrets encrypted at rest (XChaCha20-Poly1305), under a keyring kept
//! in a file outside the database, so the table, `COPY`, `pg_dump`, backups and replicas hold only
//! ciphertext. No pgrx here: the file and the cipher only.
//!
//! Stored form: `pgd1:<key id>:<base64(nonce ‖ ciphertext)>`, the additional data binding it to
//! its row and column (`agency:provider:column`), so a ciphertext copied into another row does not
//! decrypt. The keyring file has one `<key id>:<base64 key>` line per key, the current key first;
//! older keys stay readable until every value is re-encrypted under the new one.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

const PREFIX: &str = "pgd1:";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct Keyring {
    /// (id, cipher), the current key first.
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("key_ids", &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>()).finish()
    }
}

/// Which row and column a secret belongs to (the AEAD's additional data).
pub fn binding(agency_id: i64, provider: &str, column: &str) -> String {
    format!("{agency_id}:{provider}:{column}")
}

fn new_key_line() -> String {
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let id = format!("{:x}", chrono::Utc::now().timestamp_micros());
    format!("{id}:{}", B64.encode(key))
}

/// Writes a keyring file readable by its owner only, atomically (a temporary file, then rename).
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot create the key file {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| format!("cannot write the key file {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot install the key file {}: {e}", path.display()))
}

impl Keyring {
    /// Reads the keyring; creates it (mode 0600, one new key) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Keyring, String> {
        if !path.exists() {
            // Two backends may race here: create_new in write_file's rename target is not atomic,
            // so create under an exclusive lock file and re-check.
            let lock = path.with_extension("lock");
            if let Ok(mut l) = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&lock) {
                let _ = l.write_all(b"creating");
                let result = if path.exists() { Ok(()) } else { write_file(path, &format!("{}\n", new_key_line())) };
                let _ = std::fs::remove_file(&lock);
                result?;
            } else {
                // Someone else is creating it: wait briefly for the file to appear.
                for _ in 0..200 {
                    if path.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!("the key file {} is readable by others: chmod 600 it", path.display()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
        Keyring::parse(&text).map_err(|e| format!("the key file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#')) {
            let (id, b64) = line.split_once(':').ok_or_else(|| format!("line {} is not <id>:<base64 key>", n + 1))?;
            let raw = B64.decode(b64).map_err(|_| format!("line {}: the key is not base64", n + 1))?;
            let cipher = XChaCha20Poly1305::new_from_slice(&raw).map_err(|_| format!("line {}: a key is 32 bytes", n + 1))?;
            keys.push((id.to_string(), cipher));
        }
        if keys.is_empty() {
            return Err("it holds no key".into());
        }
        Ok(Keyring { keys })
    }

    /// Puts a new current key at the head of the file (older keys stay, to read older values).
    pub fn add_key(path: &Path) -> Result<Keyring, String> {
        let old = std::fs::read_to_string(path).map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
        write_file(path, &format!("{}\n{old}", new_key_line()))?;
        Keyring::load_or_create(path)
    }

    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn encrypt(&self, plaintext: &str, binding: &str) -> Result<String, String> {
        let (id, cipher) = &self.keys[0];
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: binding.as_bytes() })
            .map_err(|_| "encryption failed".to_string())?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!("{PREFIX}{id}:{}", B64.encode(blob)))
    }

    /// Whether a stored value is ciphertext (else plaintext from before encryption existed).
    pub fn is_encrypted(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// The id of the key a stored value was encrypted under.
    pub fn key_id_of(stored: &str) -> Option<&str> {
        stored.strip_prefix(PREFIX)?.split_once(':').map(|(id, _)| id)
    }

    /// Decrypts a stored value; one that is not ciphertext is refused (nothing stores plaintext).
    pub fn decrypt(&self, stored: &str, binding: &str) -> Result<String, String> {
        let rest = stored.strip_prefix(PREFIX).ok_or("the stored secret is not encrypted")?;
        let (id, b64) = rest.split_once(':').ok_or("the stored secret is malformed")?;
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| format!("the stored secret was encrypted under key {id}, which the key file no longer holds"))?;
        let blob = B64.decode(b64).map_err(|_| "the stored secret is malformed".to_string())?;
        if blob.len() < 24 {
            return Err("the stored secret is malformed".into());
        }
        let (nonce, ct) = blob.split_at(24);
        let plain = cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: binding.as_bytes() })
            .map_err(|_| "the stored secret does not decrypt (wrong key file, or copied from another row)".to_string())?;
        String::from_utf8(plain).map_err(|_| "the stored secret is not text".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pgd-secrets-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_bound_to_its_row() {
        let path = dir().join("pg_dialer.key");
        let ring = Keyring::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "created 0600");
        let b = binding(1, "ultravox", "api_key");
        let c = ring.encrypt("sk-live-123", &b).unwrap();
        assert!(c.starts_with("pgd1:") && !c.contains("sk-live-123"));
        assert_ne!(c, ring.encrypt("sk-live-123", &b).unwrap(), "a fresh nonce each time");
        assert_eq!(ring.decrypt(&c, &b).unwrap(), "sk-live-123");
        assert!(ring.decrypt(&c, &binding(2, "ultravox", "api_key")).unwrap_err().contains("another row"));
        assert!(ring.decrypt("sk-plain", &b).is_err());
        // The same file opened again reads it.
        assert_eq!(Keyring::load_or_create(&path).unwrap().decrypt(&c, &b).unwrap(), "sk-live-123");
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_writes_under_the_new_key() {
        let path = dir().join("pg_dialer.key");
        let old = Keyring::load_or_create(&path).unwrap();
        let b = binding(1, "twilio", "api_key");
        let c1 = old.encrypt("tok", &b).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let new = Keyring::add_key(&path).unwrap();
        assert_ne!(new.current_id(), old.current_id());
        assert_eq!(new.decrypt(&c1, &b).unwrap(), "tok", "older values still decrypt");
        let c2 = new.encrypt("tok", &b).unwrap();
        assert_eq!(Keyring::key_id_of(&c2), Some(new.current_id()));
        assert!(old.decrypt(&c2, &b).is_err(), "the old keyring cannot read the new key's values");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let path = dir().join("pg_dialer.key");
        Keyring::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Keyring::load_or_create(&path).unwrap_err().contains("chmod 600"));
        assert!(Keyring::parse("x").is_err());
        assert!(Keyring::parse("id:bm90LWEta2V5").unwrap_err().contains("32 bytes"));
    }
}
