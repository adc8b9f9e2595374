//! The store the TLS handshake reads: one immutable [`CertStore`] behind one `ArcSwap`, replaced whole.
//! A handshake loads it once, without a lock and without any I/O.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{CertStore, Certificate};

/// What one store build holds: how many certificates were usable and the soonest expiry among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub served: usize,
    pub expired: usize,
    /// Unix seconds; `None` when nothing is served.
    pub soonest_not_after: Option<i64>,
}

#[derive(Debug)]
pub struct Resolver {
    store: ArcSwap<CertStore<CertifiedKey>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self { store: ArcSwap::from_pointee(CertStore::default()) }
    }
}

impl Resolver {
    /// Builds a new store from `certs` and swaps it in. Where two certificates name the same host, the
    /// one that expires last serves it, so a renewal takes over from the certificate it renews. Expired
    /// certificates are left out: a browser refuses them anyway, and another may cover the name.
    pub fn replace<'a>(&self, certs: impl IntoIterator<Item = &'a Certificate>, now_unix: i64) -> Summary {
        let mut certs: Vec<&Certificate> = certs.into_iter().collect();
        let total = certs.len();
        certs.retain(|c| c.not_after > now_unix);
        certs.sort_by_key(|c| c.not_after);
        let mut store = CertStore::default();
        for c in &certs {
            // Names were checked when parsed; a failure here would only skip that certificate.
            if store.insert(c.names.iter().map(String::as_str), c.key.clone()).is_err() {
                tracing::warn!(names = ?c.names, "certificate names refused by the store");
            }
        }
        self.store.store(Arc::new(store));
        Summary {
            served: certs.len(),
            expired: total - certs.len(),
            soonest_not_after: certs.first().map(|c| c.not_after),
        }
    }

    /// The certificate a handshake for `sni` gets.
    pub fn select(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.store.load().select(sni).cloned()
    }

    /// Whether a certificate serves `host` (for redirecting plain HTTP to HTTPS).
    pub fn serves(&self, host: &str) -> bool {
        self.store.load().select(host).is_some()
    }
}

impl ResolvesServerCert for Resolver {
    /// No SNI, or a name no certificate serves: `None` aborts the handshake rather than show another
    /// tenant's certificate.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(hello.server_name()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pem::tests::self_signed;

    fn cert(names: &[&str]) -> Certificate {
        let (c, k) = self_signed(names);
        Certificate::from_pem(c.as_bytes(), k.as_bytes()).expect("parse")
    }

    #[test]
    fn exact_certificate_wins_over_wildcard_and_unknown_names_get_none() {
        let wildcard = cert(&["*.apps.example.test"]);
        let exact = cert(&["special.apps.example.test"]);
        let r = Resolver::default();
        let summary = r.replace([&exact, &wildcard], 0);
        assert_eq!(summary.served, 2);
        assert!(Arc::ptr_eq(&r.select("special.apps.example.test").expect("exact"), &exact.key));
        assert!(Arc::ptr_eq(&r.select("other.apps.example.test").expect("wildcard"), &wildcard.key));
        assert!(r.select("evil.example.test").is_none());
        assert!(r.serves("x.apps.example.test") && !r.serves("apps.example.test"));
    }

    #[test]
    fn the_certificate_expiring_last_serves_a_shared_name() {
        let mut old = cert(&["a.example.test"]);
        let mut new = cert(&["a.example.test"]);
        old.not_after = 2_000;
        new.not_after = 3_000;
        let r = Resolver::default();
        r.replace([&new, &old], 1_000);
        assert!(Arc::ptr_eq(&r.select("a.example.test").expect("cert"), &new.key));
        let summary = r.replace([&old, &new], 1_000);
        assert!(Arc::ptr_eq(&r.select("a.example.test").expect("cert"), &new.key));
        assert_eq!(summary.soonest_not_after, Some(2_000));
    }

    #[test]
    fn expired_certificates_are_not_served() {
        let mut c = cert(&["a.example.test"]);
        c.not_after = 10;
        let r = Resolver::default();
        let summary = r.replace([&c], 11);
        assert_eq!((summary.served, summary.expired), (0, 1));
        assert!(r.select("a.example.test").is_none());
    }
}
