//! Certificates the edges serve: rows uploaded by the admin or issued by ACME, what the feed carries of
//! them (with the key: edges need it) and what the API shows (never the key).

use portico_certs::Certificate;
use portico_wire as wire;
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::db::timestamp;
use crate::db::{now_ms, Kind, Write};
use crate::error::{ApiError, ApiResult};

pub const UPLOAD: &str = "upload";
pub const ACME: &str = "acme";

const COLUMNS: &str = "hostname, cert_pem, key_pem, source, names, not_before, not_after, updated_at";

/// A certificate as the API shows it: names and validity, never the key.
#[derive(Serialize, ToSchema)]
pub struct CertificateView {
    /// The record's name; `*.example.app` for a wildcard.
    pub hostname: String,
    /// The names in its SAN.
    pub names: Vec<String>,
    /// `upload` or `acme`.
    pub source: String,
    pub not_before: String,
    pub expires_at: String,
    pub updated_at: String,
    /// The ACME state, on certificates ACME manages (in the list only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Option<CertificateStatus>>,
}

/// Where a host's certificate stands; `null` where there is none and ACME does not manage the host.
#[derive(Serialize, ToSchema)]
pub struct CertificateStatus {
    /// `pending`, `issued` or `failed` (ACME), or `issued` for an uploaded certificate covering the host.
    pub state: String,
    /// Why the last ACME order failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
    /// When the certificate that covers the host now expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub expires_at: Option<String>,
}

#[derive(sqlx::FromRow)]
pub struct CertRow {
    pub hostname: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub source: String,
    pub names: String,
    /// Unix ms.
    pub not_before: i64,
    /// Unix ms.
    pub not_after: i64,
    pub updated_at: i64,
}

impl CertRow {
    /// The API's view: names and validity, no key material.
    pub fn view(&self) -> CertificateView {
        CertificateView {
            hostname: self.hostname.clone(),
            names: serde_json::from_str(&self.names).unwrap_or_default(),
            source: self.source.clone(),
            not_before: timestamp(self.not_before),
            expires_at: timestamp(self.not_after),
            updated_at: timestamp(self.updated_at),
            certificate: None,
        }
    }

    fn to_wire(&self) -> wire::Certificate {
        wire::Certificate {
            hostname: self.hostname.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// Whether this certificate serves `host` (exact, or by a one-label wildcard).
    pub fn covers(&self, host: &str) -> bool {
        let names: Vec<String> = serde_json::from_str(&self.names).unwrap_or_default();
        names.iter().any(|n| {
            n == host
                || n.strip_prefix("*.").is_some_and(|p| host.split_once('.').is_some_and(|(_, r)| r == p))
        })
    }
}

/// Stores (or replaces) the certificate named `hostname` and tells the edges.
pub async fn put(
    write: &mut Write,
    hostname: &str,
    cert_pem: &str,
    key_pem: &str,
    source: &str,
    parsed: &Certificate,
) -> ApiResult<()> {
    let names = serde_json::to_string(&parsed.names).map_err(|e| ApiError::Internal(e.to_string()))?;
    sqlx::query("DELETE FROM certificates WHERE hostname = $1").bind(hostname).execute(write.conn()).await?;
    sqlx::query(&format!("INSERT INTO certificates ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
        .bind(hostname)
        .bind(cert_pem)
        .bind(key_pem)
        .bind(source)
        .bind(names)
        .bind(parsed.not_before.saturating_mul(1000))
        .bind(parsed.not_after.saturating_mul(1000))
        .bind(now_ms())
        .execute(write.conn())
        .await?;
    write.touch(Kind::Certificate, hostname);
    Ok(())
}

/// Removes the certificate named `hostname`; `false` when there was none.
pub async fn remove(write: &mut Write, hostname: &str) -> ApiResult<bool> {
    let done = sqlx::query("DELETE FROM certificates WHERE hostname = $1")
        .bind(hostname)
        .execute(write.conn())
        .await?;
    if done.rows_affected() > 0 {
        write.touch(Kind::Certificate, hostname);
    }
    Ok(done.rows_affected() > 0)
}

pub async fn get(conn: &mut AnyConnection, hostname: &str) -> ApiResult<Option<CertRow>> {
    let sql = format!("SELECT {COLUMNS} FROM certificates WHERE hostname = $1");
    Ok(sqlx::query_as(&sql).bind(hostname).fetch_optional(conn).await?)
}

pub async fn list(conn: &mut AnyConnection) -> ApiResult<Vec<CertRow>> {
    let sql = format!("SELECT {COLUMNS} FROM certificates ORDER BY hostname");
    Ok(sqlx::query_as(&sql).fetch_all(conn).await?)
}

/// The feed's form of one certificate.
pub async fn wire(conn: &mut AnyConnection, hostname: &str) -> ApiResult<Option<wire::Certificate>> {
    Ok(get(conn, hostname).await?.map(|r| r.to_wire()))
}

pub async fn all_wire(conn: &mut AnyConnection) -> ApiResult<Vec<wire::Certificate>> {
    Ok(list(conn).await?.iter().map(CertRow::to_wire).collect())
}

pub async fn challenge(conn: &mut AnyConnection, token: &str) -> ApiResult<Option<wire::AcmeChallenge>> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT token, key_authorization FROM acme_challenges WHERE token = $1")
            .bind(token)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(token, key_authorization)| wire::AcmeChallenge { token, key_authorization }))
}

pub async fn challenges(conn: &mut AnyConnection) -> ApiResult<Vec<wire::AcmeChallenge>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT token, key_authorization FROM acme_challenges ORDER BY token")
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(token, key_authorization)| wire::AcmeChallenge { token, key_authorization })
        .collect())
}

/// `{state, reason?, expires_at?}` of the certificate for `hostname`, as `GET /v1/tenant` and
/// `GET /v1/deployments/{id}` show it: the ACME state when ACME manages the host, else `issued` when an
/// uploaded certificate covers it, else `null`.
pub async fn status(conn: &mut AnyConnection, hostname: &str) -> ApiResult<Option<CertificateStatus>> {
    let acme: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT state, reason FROM acme_hosts WHERE hostname = $1")
            .bind(hostname)
            .fetch_optional(&mut *conn)
            .await?;
    let covering = list(conn).await?.into_iter().filter(|c| c.covers(hostname)).max_by_key(|c| c.not_after);
    let expires_at = covering.as_ref().map(|c| timestamp(c.not_after));
    Ok(match (acme, &covering) {
        (Some((state, reason)), _) => Some(CertificateStatus { state, reason, expires_at }),
        (None, Some(_)) => Some(CertificateStatus { state: "issued".into(), reason: None, expires_at }),
        (None, None) => None,
    })
}
