//! Certificates for the edge's TLS listener: choosing a certificate by SNI over the names each
//! certificate serves — exact name first, then a one-label wildcard (`*.example.app` serves `a.example.app`,
//! not `a.b.example.app` nor `example.app`), as browsers match them.
//!
//! [`pem`] turns PEM into a rustls [`CertifiedKey`](rustls::sign::CertifiedKey) with the names of its SAN,
//! [`resolver`] is the store behind one `ArcSwap` that the TLS handshake reads, and [`dir`] follows a
//! directory of PEM files.

pub mod dir;
pub mod pem;
pub mod resolver;

pub use pem::{CertError, Certificate};
pub use resolver::Resolver;

/// Makes ring rustls's process-wide provider, as Pingora's listener does. Libraries that build a rustls
/// config with the default provider (instant-acme's HTTP client) would otherwise panic in a build where
/// another crate also enables rustls's `aws-lc-rs` feature. Calling it again does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use std::collections::HashMap;
use std::sync::Arc;

/// Certificates by the names in their SAN. `C` is whatever the TLS stack needs (a rustls `CertifiedKey`).
#[derive(Debug)]
pub struct CertStore<C> {
    exact: HashMap<String, Arc<C>>,
    /// Keyed by the parent domain: `*.example.app` is stored under `example.app`.
    wildcard: HashMap<String, Arc<C>>,
}

impl<C> Default for CertStore<C> {
    fn default() -> Self {
        Self { exact: HashMap::new(), wildcard: HashMap::new() }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{0:?} is not a host name or one-label wildcard")]
    Invalid(String),
}

impl<C> CertStore<C> {
    /// Adds a certificate for each of its names. A later certificate for the same name replaces the earlier.
    pub fn insert<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        cert: impl Into<Arc<C>>,
    ) -> Result<(), NameError> {
        let cert = cert.into();
        for raw in names {
            let name = raw.trim_end_matches('.').to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) if valid_host(parent) && parent.contains('.') => {
                    self.wildcard.insert(parent.to_string(), cert.clone());
                }
                None if valid_host(&name) => {
                    self.exact.insert(name, cert.clone());
                }
                _ => return Err(NameError::Invalid(raw.to_string())),
            }
        }
        Ok(())
    }

    /// The certificate for a TLS client's SNI; `None` means the handshake must fail rather than show
    /// another tenant's certificate.
    pub fn select(&self, sni: &str) -> Option<&Arc<C>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&sni) {
            return Some(c);
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent)
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a certificate may be stored under `name`: a host name or a one-label wildcard of a name with at
/// least two labels.
pub fn valid_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match name.strip_prefix("*.") {
        Some(parent) => valid_host(parent) && parent.contains('.'),
        None => valid_host(name),
    }
}

fn valid_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> CertStore<&'static str> {
        let mut s = CertStore::default();
        s.insert(["*.sandbox.example.app"], "wildcard").expect("valid");
        s.insert(["special.sandbox.example.app", "www.acme.dev"], "exact").expect("valid");
        s
    }

    #[test]
    fn exact_name_wins_over_wildcard() {
        assert_eq!(store().select("special.sandbox.example.app").map(|c| **c), Some("exact"));
        assert_eq!(store().select("Other.Sandbox.Example.App.").map(|c| **c), Some("wildcard"));
    }

    #[test]
    fn wildcard_covers_exactly_one_label() {
        assert_eq!(store().select("a.b.sandbox.example.app"), None);
        assert_eq!(store().select("sandbox.example.app"), None);
    }

    #[test]
    fn unknown_sni_selects_nothing() {
        assert_eq!(store().select("evil.example.com"), None);
        assert_eq!(store().select(""), None);
    }

    #[test]
    fn bad_names_are_refused() {
        let mut s = CertStore::default();
        for bad in ["*.com", "*", "a.*.b", "-a.b", "a b.c", "*.*.b.c"] {
            assert!(s.insert([bad], ()).is_err(), "{bad}");
        }
        assert!(s.is_empty());
    }
}
