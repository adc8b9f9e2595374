//! PEM → a certificate the TLS listener can serve: the chain, its private key (checked to match), the DNS
//! names of the leaf's SAN and its validity. Errors name what is wrong, never the key material.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("no certificate in the PEM")]
    NoCertificate,
    #[error("no private key in the PEM")]
    NoKey,
    #[error("the PEM cannot be read")]
    BadPem,
    #[error("the certificate cannot be parsed")]
    BadCertificate,
    #[error("the certificate names no DNS host in its subject alternative names")]
    NoNames,
    #[error("the private key is not supported or does not belong to the certificate")]
    KeyMismatch,
}

/// One certificate chain with its key, ready for the handshake.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// DNS names of the leaf's SAN, lowercase, as given (`*.example.app` included).
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Hex serial number of the leaf, to tell one issuance from the next.
    pub serial: String,
    pub key: Arc<CertifiedKey>,
}

impl Certificate {
    /// Parses a full chain (leaf first) and its private key. Both may be in one PEM (pass it twice).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|_| CertError::BadPem)?;
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let (names, not_before, not_after, serial) = describe(leaf)?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|_| CertError::BadPem)?
            .ok_or(CertError::NoKey)?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|_| CertError::KeyMismatch)?;
        Ok(Self { names, not_before, not_after, serial, key: Arc::new(key) })
    }

    /// Whether this certificate serves `host` (exact or by a one-label wildcard).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| {
            *n == host
                || n.strip_prefix("*.").is_some_and(|parent| {
                    host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
                })
        })
    }
}

/// SAN DNS names, validity and serial of a DER certificate.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64, String), CertError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| CertError::BadCertificate)?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                let dns = dns.trim_end_matches('.').to_ascii_lowercase();
                if crate::valid_name(&dns) && !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    if names.is_empty() {
        return Err(CertError::NoNames);
    }
    let validity = cert.validity();
    Ok((names, validity.not_before.timestamp(), validity.not_after.timestamp(), cert.raw_serial_as_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` and its key, as PEM.
    pub fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(names).expect("params").self_signed(&key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn names_come_from_the_san_whatever_the_file_is_called() {
        let (cert, key) = self_signed(&["a.example.test", "*.apps.example.test"]);
        let c = Certificate::from_pem(cert.as_bytes(), key.as_bytes()).expect("parse");
        assert_eq!(c.names, ["a.example.test", "*.apps.example.test"]);
        assert!(c.not_after > c.not_before);
        assert!(c.covers("A.example.test."));
        assert!(c.covers("x.apps.example.test"));
        assert!(!c.covers("x.y.apps.example.test"));
        assert!(!c.covers("apps.example.test"));
    }

    #[test]
    fn chain_and_key_in_one_pem_parse() {
        let (cert, key) = self_signed(&["one.example.test"]);
        let both = format!("{cert}{key}");
        assert!(Certificate::from_pem(both.as_bytes(), both.as_bytes()).is_ok());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = self_signed(&["a.example.test"]);
        let (_, other_key) = self_signed(&["a.example.test"]);
        let err = Certificate::from_pem(cert.as_bytes(), other_key.as_bytes()).expect_err("mismatch");
        assert_eq!(err, CertError::KeyMismatch);
    }

    #[test]
    fn missing_parts_are_named_without_echoing_the_input() {
        let (cert, key) = self_signed(&["a.example.test"]);
        assert_eq!(
            Certificate::from_pem(b"", key.as_bytes()).expect_err("no cert"),
            CertError::NoCertificate
        );
        assert_eq!(Certificate::from_pem(cert.as_bytes(), b"").expect_err("no key"), CertError::NoKey);
        let err = Certificate::from_pem(cert.as_bytes(), b"").expect_err("no key").to_string();
        assert!(!err.contains("PRIVATE"), "{err}");
    }
}
