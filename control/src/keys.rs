//! Secrets: API keys, the edge token, preview-auth tokens and random identifiers.
//!
//! Only SHA-256 hashes of keys reach the database; comparisons are made between hashes, so their timing
//! tells nothing useful about the secret.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::{Rng, RngCore};

use crate::config::ControlError;

/// 32 random bytes, base64url without padding (43 characters).
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn new_admin_key() -> String {
    format!("mpa_{}", random_secret())
}

pub fn new_tenant_key() -> String {
    format!("msk_{}", random_secret())
}

pub use portico_wire::tokens::sha256_hex;

/// Compares a presented secret with a stored hash: hash first, then compare digests in constant time.
pub fn matches_hash(presented: &str, stored_hex: &str) -> bool {
    let presented = sha256_hex(presented);
    presented.len() == stored_hex.len()
        && presented.bytes().zip(stored_hex.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// `len` characters of `[a-z0-9]`, the first a letter, so that it reads as a DNS label and an id.
pub fn random_label(len: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|i| {
            let set = if i == 0 { LETTERS } else { ALNUM };
            char::from(set[rng.gen_range(0..set.len())])
        })
        .collect()
}

/// `len` characters of `[a-z0-9]`, for ids behind a prefix.
pub fn random_alnum(len: usize) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len).map(|_| char::from(ALNUM[rng.gen_range(0..ALNUM.len())])).collect()
}

/// Where a bootstrapped secret came from, so the caller knows whether to announce it.
pub enum Bootstrapped {
    FromEnv(String),
    FromFile(String),
    Generated { secret: String, path: PathBuf },
}

impl Bootstrapped {
    pub fn secret(&self) -> &str {
        match self {
            Self::FromEnv(s) | Self::FromFile(s) | Self::Generated { secret: s, .. } => s,
        }
    }
}

/// The secret from the environment, else from `<data_dir>/<file>`, else a new one written there (0600).
pub fn bootstrap_secret(
    from_env: Option<&str>,
    data_dir: &Path,
    file: &str,
    generate: fn() -> String,
) -> Result<Bootstrapped, ControlError> {
    if let Some(secret) = from_env.map(str::trim).filter(|s| !s.is_empty()) {
        return Ok(Bootstrapped::FromEnv(secret.to_string()));
    }
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim();
            if secret.is_empty() {
                return Err(ControlError::EmptySecretFile(path));
            }
            return Ok(Bootstrapped::FromFile(secret.to_string()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ControlError::Io(path, e)),
    }
    std::fs::create_dir_all(data_dir).map_err(|e| ControlError::Io(data_dir.to_path_buf(), e))?;
    let secret = generate();
    write_private(&path, format!("{secret}\n").as_bytes())?;
    Ok(Bootstrapped::Generated { secret, path })
}

/// Creates `path` readable by its owner only, failing if it already exists (never clobber a secret).
fn write_private(path: &Path, contents: &[u8]) -> Result<(), ControlError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| ControlError::Io(path.to_path_buf(), e))?;
    file.write_all(contents).map_err(|e| ControlError::Io(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_prefix_and_43_base64url_chars() {
        let key = new_tenant_key();
        assert!(key.starts_with("msk_"));
        assert_eq!(key.len(), 4 + 43);
        assert!(key[4..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(new_admin_key().starts_with("mpa_"));
    }

    #[test]
    fn random_labels_start_with_a_letter() {
        for _ in 0..100 {
            let label = random_label(8);
            assert!(label.as_bytes()[0].is_ascii_lowercase());
            assert!(portico_wire::ids::is_host_id(&label));
        }
    }

    #[test]
    fn hashes_match_only_their_secret() {
        let stored = sha256_hex("secret");
        assert!(matches_hash("secret", &stored));
        assert!(!matches_hash("secreT", &stored));
        assert!(!matches_hash("secret", "short"));
    }

    #[test]
    fn generated_secret_is_written_0600_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = bootstrap_secret(None, dir.path(), "admin.key", new_admin_key).expect("generate");
        let Bootstrapped::Generated { secret, path } = &first else { panic!("expected a new secret") };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = bootstrap_secret(None, dir.path(), "admin.key", new_admin_key).expect("read");
        assert!(matches!(again, Bootstrapped::FromFile(ref s) if s == secret));
        let env = bootstrap_secret(Some("mpa_env"), dir.path(), "admin.key", new_admin_key).expect("env");
        assert_eq!(env.secret(), "mpa_env");
    }
}
