//! ACME (`--acme-directory`): a certificate for every host name that wants one, by HTTP-01.
//!
//! Once a second control reconciles [`wanted_hostnames`] with the `acme_hosts` table: new names become
//! `pending`, names no longer wanted lose their row and certificate, and due names are ordered one at a
//! time. A challenge is published through the feed (`acme_challenges`), so whichever edge the CA reaches
//! answers it. Success stores the chain and key as a certificate (edges pick it up from the feed) and
//! schedules the renewal at two thirds of its lifetime; failure records the CA's reason and retries with
//! exponential backoff. The account key is kept in the database, one account per directory URL.
//!
//! Each order is taken from its tenant's hourly budget first ([`budget`]); a spent budget makes the name
//! `failed` with reason `rate_limited` until a slot frees.
//!
//! Several control replicas sharing a database each run this loop; a replica orders a name only after
//! moving its `next_attempt_at` forward itself (a lease), so one order runs per name.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use portico_certs::Certificate;
use sqlx::AnyConnection;

use crate::certificates::{self, ACME, UPLOAD};
use crate::db::{now_ms, Kind, Write};
use crate::error::ApiResult;
use crate::state::AppState;

mod budget;

use budget::{spend_budget, tenant_of, Budget};

const TICK: Duration = Duration::from_secs(1);
/// Edges follow the feed within a second; the CA is told to validate only after that.
const PROPAGATION: Duration = Duration::from_millis(1500);
/// How long one order may take, all steps together, before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// A name being ordered is leased for this long (a replica that dies mid-order frees it then).
const LEASE_MS: i64 = 10 * 60 * 1000;
const FIRST_RETRY_MS: i64 = 10_000;
const MAX_RETRY_MS: i64 = 6 * 60 * 60 * 1000;

#[derive(Clone, Debug)]
pub struct AcmeConfig {
    pub directory: String,
    /// PEM of the CA that signed the ACME server's HTTPS certificate (a test CA).
    pub ca_file: Option<PathBuf>,
    /// Orders each tenant's names may cause per hour (`--acme-orders-per-hour`), failed ones included:
    /// a tenant adding names by the thousand must not spend the platform's rate limits at the CA.
    pub orders_per_hour: u32,
}

/// When a certificate valid from `not_before` to `not_after` (any unit) is renewed: two thirds in.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before).max(0) * 2 / 3
}

/// How long to wait after the `attempts`-th failure in a row: 10 s, 20 s, 40 s, … up to 6 h.
pub fn backoff_ms(attempts: i64) -> i64 {
    let doublings = u32::try_from(attempts.clamp(1, 40) - 1).unwrap_or(0);
    FIRST_RETRY_MS.saturating_mul(1i64 << doublings.min(30)).min(MAX_RETRY_MS)
}

/// The host names that want a certificate: each verified tenant preview domain, `{slug}.<domain>` of
/// each of that tenant's previews (HTTP-01 cannot prove a wildcard), and every deployment custom domain.
/// Names an uploaded certificate already covers are left out by the caller.
pub async fn wanted_hostnames(conn: &mut AnyConnection) -> ApiResult<Vec<String>> {
    let mut names: Vec<String> = sqlx::query_scalar(
        "SELECT preview_domain FROM tenants WHERE preview_domain IS NOT NULL AND preview_domain_status = 'verified'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let slugs: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.slug, t.preview_domain FROM previews p JOIN tenants t ON t.id = p.tenant_id \
         WHERE t.preview_domain IS NOT NULL AND t.preview_domain_status = 'verified'",
    )
    .fetch_all(&mut *conn)
    .await?;
    names.extend(slugs.into_iter().map(|(slug, domain)| format!("{slug}.{domain}")));
    names.extend(deployment_domains(conn).await);
    names.retain(|n| !n.contains('*'));
    names.sort();
    names.dedup();
    Ok(names)
}

/// Custom domains of deployments. Tolerant of a database where that table does not exist (yet).
async fn deployment_domains(conn: &mut AnyConnection) -> Vec<String> {
    match sqlx::query_scalar("SELECT hostname FROM deployment_domains WHERE verified_at IS NOT NULL")
        .fetch_all(conn)
        .await
    {
        Ok(names) => names,
        Err(e) => {
            tracing::debug!(error = %e, "no deployment domains to certify");
            Vec::new()
        }
    }
}

/// Runs the ACME loop while the control service is alive.
pub async fn run(state: Weak<AppState>, config: AcmeConfig) {
    portico_certs::install_crypto_provider();
    let mut account: Option<Account> = None;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(app) = state.upgrade() else { return };
        if let Err(e) = reconcile(&app, &config, &mut account).await {
            tracing::warn!(error = %e, "ACME: reconciling certificates failed");
        }
    }
}

#[derive(sqlx::FromRow)]
struct HostRow {
    hostname: String,
    state: String,
    attempts: i64,
    next_attempt_at: i64,
}

async fn reconcile(app: &AppState, config: &AcmeConfig, account: &mut Option<Account>) -> ApiResult<()> {
    let mut conn = app.pool.acquire().await?;
    let uploads: Vec<certificates::CertRow> =
        certificates::list(&mut conn).await?.into_iter().filter(|c| c.source == UPLOAD).collect();
    let wanted: HashSet<String> = wanted_hostnames(&mut conn)
        .await?
        .into_iter()
        .filter(|h| !uploads.iter().any(|u| u.covers(h)))
        .collect();
    let rows: Vec<HostRow> =
        sqlx::query_as("SELECT hostname, state, attempts, next_attempt_at FROM acme_hosts ORDER BY hostname")
            .fetch_all(&mut *conn)
            .await?;
    drop(conn);
    let known: HashSet<&str> = rows.iter().map(|r| r.hostname.as_str()).collect();
    let now = now_ms();
    for name in wanted.iter().filter(|w| !known.contains(w.as_str())) {
        sqlx::query(
            "INSERT INTO acme_hosts (hostname, state, reason, attempts, next_attempt_at, updated_at) \
             VALUES ($1, 'pending', NULL, 0, $2, $2)",
        )
        .bind(name)
        .bind(now)
        .execute(&app.pool)
        .await
        .map(drop)
        .or_else(|e| if is_unique_violation(&e) { Ok(()) } else { Err(e) })?;
    }
    for row in rows.iter().filter(|r| !wanted.contains(&r.hostname)) {
        forget(app, &row.hostname).await?;
    }
    let due: Vec<&HostRow> =
        rows.iter().filter(|r| wanted.contains(&r.hostname) && r.next_attempt_at <= now).collect();
    for row in due {
        if !lease(app, row).await? {
            continue;
        }
        if let Budget::Exhausted { retry_at } = spend(app, config, &row.hostname).await? {
            rate_limited(app, row, retry_at).await?;
            continue;
        }
        let outcome = match account_for(app, config, account).await {
            Ok(acct) => match tokio::time::timeout(ORDER_TIMEOUT, order(app, &acct, &row.hostname)).await {
                Ok(result) => result,
                Err(_) => Err(format!("the order took longer than {} s", ORDER_TIMEOUT.as_secs())),
            },
            Err(e) => Err(e),
        };
        clear_challenges(app, &row.hostname).await?;
        record(app, row, outcome).await?;
    }
    // A name that was just added is ordered on the next tick (a second later).
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

/// Claims a due name for this replica by moving its next attempt forward; `false`: another took it.
async fn lease(app: &AppState, row: &HostRow) -> ApiResult<bool> {
    let done = sqlx::query(
        "UPDATE acme_hosts SET next_attempt_at = $1 WHERE hostname = $2 AND next_attempt_at = $3",
    )
    .bind(now_ms() + LEASE_MS)
    .bind(&row.hostname)
    .bind(row.next_attempt_at)
    .execute(&app.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A name no longer wanted (domain removed, preview gone, upload took over): its row and ACME
/// certificate go.
async fn forget(app: &AppState, hostname: &str) -> ApiResult<()> {
    let mut write = Write::begin(&app.pool).await?;
    sqlx::query("DELETE FROM acme_hosts WHERE hostname = $1").bind(hostname).execute(write.conn()).await?;
    let source: Option<String> = sqlx::query_scalar("SELECT source FROM certificates WHERE hostname = $1")
        .bind(hostname)
        .fetch_optional(write.conn())
        .await?;
    if source.as_deref() == Some(ACME) {
        certificates::remove(&mut write, hostname).await?;
    }
    write.commit(&app.notify).await
}

/// The ACME account, created (and stored) on first use, or restored from the database.
async fn account_for(
    app: &AppState,
    config: &AcmeConfig,
    cached: &mut Option<Account>,
) -> Result<Account, String> {
    if let Some(a) = cached {
        return Ok(a.clone());
    }
    let builder = || match &config.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let stored: Option<String> =
        sqlx::query_scalar("SELECT credentials FROM acme_account WHERE directory = $1")
            .bind(&config.directory)
            .fetch_optional(&app.pool)
            .await
            .map_err(|e| format!("reading the ACME account: {e}"))?;
    let account = match stored {
        Some(json) => {
            let creds =
                serde_json::from_str(&json).map_err(|e| format!("stored ACME account unreadable: {e}"))?;
            builder()
                .map_err(|e| format!("ACME client: {e}"))?
                .from_credentials(creds)
                .await
                .map_err(|e| format!("ACME account: {e}"))?
        }
        None => {
            let new = NewAccount { contact: &[], terms_of_service_agreed: true, only_return_existing: false };
            let (account, creds) = builder()
                .map_err(|e| format!("ACME client: {e}"))?
                .create(&new, config.directory.clone(), None)
                .await
                .map_err(|e| format!("creating the ACME account at {}: {e}", config.directory))?;
            let json = serde_json::to_string(&creds).map_err(|e| e.to_string())?;
            sqlx::query("INSERT INTO acme_account (directory, credentials, created_at) VALUES ($1, $2, $3)")
                .bind(&config.directory)
                .bind(json)
                .bind(now_ms())
                .execute(&app.pool)
                .await
                .map_err(|e| format!("storing the ACME account: {e}"))?;
            tracing::info!(directory = %config.directory, "ACME account created");
            account
        }
    };
    *cached = Some(account.clone());
    Ok(account)
}

/// One order for `hostname`: HTTP-01 through the edges, then the chain and its new key (PEM).
async fn order(app: &AppState, account: &Account, hostname: &str) -> Result<(String, String), String> {
    let ids = [Identifier::Dns(hostname.to_string())];
    let mut order =
        account.new_order(&NewOrder::new(&ids)).await.map_err(|e| format!("new order: {}", describe(e)))?;
    let mut published = false;
    let mut auths = order.authorizations();
    while let Some(auth) = auths.next().await {
        let mut auth = auth.map_err(|e| format!("authorization: {}", describe(e)))?;
        match auth.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge =
            auth.challenge(ChallengeType::Http01).ok_or("the CA offered no http-01 challenge")?;
        let key_authorization = challenge.key_authorization().as_str().to_string();
        publish(app, hostname, &challenge.token, &key_authorization).await.map_err(|e| e.to_string())?;
        if !published {
            tokio::time::sleep(PROPAGATION).await;
            published = true;
        }
        challenge.set_ready().await.map_err(|e| format!("challenge: {}", describe(e)))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retry).await.map_err(describe)?;
    if status != OrderStatus::Ready {
        return Err(challenge_failure(&mut order).await);
    }
    let key_pem = order.finalize().await.map_err(|e| format!("finalize: {}", describe(e)))?;
    let chain = order.poll_certificate(&retry).await.map_err(|e| format!("certificate: {}", describe(e)))?;
    Ok((chain, key_pem))
}

/// An ACME error in words: the CA's own detail for a problem document.
fn describe(e: instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(problem) => match (&problem.detail, &problem.r#type) {
            (Some(detail), Some(kind)) => format!("{detail} ({kind})"),
            (Some(detail), None) => detail.clone(),
            _ => problem.to_string(),
        },
        other => other.to_string(),
    }
}

/// Why an order went invalid, from the CA's challenge errors.
async fn challenge_failure(order: &mut instant_acme::Order) -> String {
    let mut auths = order.authorizations();
    while let Some(Ok(mut auth)) = auths.next().await {
        if let Ok(state) = auth.refresh().await {
            if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                return match &problem.detail {
                    Some(detail) => format!("challenge failed: {detail}"),
                    None => format!("challenge failed: {problem}"),
                };
            }
        }
    }
    "the order became invalid".into()
}

async fn publish(app: &AppState, hostname: &str, token: &str, key_authorization: &str) -> ApiResult<()> {
    let mut write = Write::begin(&app.pool).await?;
    sqlx::query("DELETE FROM acme_challenges WHERE token = $1").bind(token).execute(write.conn()).await?;
    sqlx::query(
        "INSERT INTO acme_challenges (token, key_authorization, hostname, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token)
    .bind(key_authorization)
    .bind(hostname)
    .bind(now_ms())
    .execute(write.conn())
    .await?;
    write.touch(Kind::AcmeChallenge, token);
    write.commit(&app.notify).await
}

async fn clear_challenges(app: &AppState, hostname: &str) -> ApiResult<()> {
    let tokens: Vec<String> = sqlx::query_scalar("SELECT token FROM acme_challenges WHERE hostname = $1")
        .bind(hostname)
        .fetch_all(&app.pool)
        .await?;
    if tokens.is_empty() {
        return Ok(());
    }
    let mut write = Write::begin(&app.pool).await?;
    sqlx::query("DELETE FROM acme_challenges WHERE hostname = $1")
        .bind(hostname)
        .execute(write.conn())
        .await?;
    tokens.iter().for_each(|t| write.touch(Kind::AcmeChallenge, t));
    write.commit(&app.notify).await
}

/// Stores an order's outcome: the certificate and the renewal time, or the reason and the next retry.
async fn record(app: &AppState, row: &HostRow, outcome: Result<(String, String), String>) -> ApiResult<()> {
    let now = now_ms();
    let parsed = outcome.and_then(|(chain, key)| {
        let cert = Certificate::from_pem(chain.as_bytes(), key.as_bytes())
            .map_err(|e| format!("the CA's certificate is unusable: {e}"))?;
        if !cert.covers(&row.hostname) {
            return Err(format!("the CA's certificate does not name {}", row.hostname));
        }
        Ok((chain, key, cert))
    });
    match parsed {
        Ok((chain, key, cert)) => {
            let mut write = Write::begin(&app.pool).await?;
            certificates::put(&mut write, &row.hostname, &chain, &key, ACME, &cert).await?;
            let renew = renew_at(cert.not_before, cert.not_after).saturating_mul(1000);
            sqlx::query(
                "UPDATE acme_hosts SET state = 'issued', reason = NULL, attempts = 0, next_attempt_at = $1, \
                 updated_at = $2 WHERE hostname = $3",
            )
            .bind(renew)
            .bind(now)
            .bind(&row.hostname)
            .execute(write.conn())
            .await?;
            write.commit(&app.notify).await?;
            tracing::info!(hostname = %row.hostname, serial = %cert.serial, "ACME: certificate issued");
        }
        Err(reason) => {
            let attempts = row.attempts + 1;
            // A renewal that fails leaves the current certificate serving: still `issued`, with the reason.
            // Only `acme_hosts` changes: nothing for the feed.
            let (state, reason) = if row.state == "issued" && has_valid(app, &row.hostname, now).await? {
                ("issued", format!("renewal failed: {reason}"))
            } else {
                ("failed", reason)
            };
            sqlx::query(
                "UPDATE acme_hosts SET state = $1, reason = $2, attempts = $3, next_attempt_at = $4, \
                 updated_at = $5 WHERE hostname = $6",
            )
            .bind(state)
            .bind(&reason)
            .bind(attempts)
            .bind(now + backoff_ms(attempts))
            .bind(now)
            .bind(&row.hostname)
            .execute(&app.pool)
            .await?;
            tracing::warn!(hostname = %row.hostname, attempts, reason = %reason, "ACME: order failed");
        }
    }
    Ok(())
}

/// Spends one order of the budget of the name's tenant (a name with no tenant has no budget to spend).
async fn spend(app: &AppState, config: &AcmeConfig, hostname: &str) -> ApiResult<Budget> {
    let mut conn = app.pool.acquire().await?;
    let Some(tenant) = tenant_of(&mut conn, hostname).await? else { return Ok(Budget::Granted) };
    drop(conn);
    spend_budget(&app.pool, &tenant, hostname, now_ms(), config.orders_per_hour).await
}

/// The tenant's budget is spent: the name is `failed` with reason `rate_limited` (a renewal keeps its
/// still-valid certificate `issued`) and is due again when the budget frees a slot. Not a CA failure: the
/// backoff does not grow.
async fn rate_limited(app: &AppState, row: &HostRow, retry_at: i64) -> ApiResult<()> {
    let now = now_ms();
    let state =
        if row.state == "issued" && has_valid(app, &row.hostname, now).await? { "issued" } else { "failed" };
    sqlx::query(
        "UPDATE acme_hosts SET state = $1, reason = $2, next_attempt_at = $3, updated_at = $4 WHERE hostname = $5",
    )
    .bind(state)
    .bind(RATE_LIMITED)
    .bind(retry_at)
    .bind(now)
    .bind(&row.hostname)
    .execute(&app.pool)
    .await?;
    tracing::warn!(hostname = %row.hostname, retry_at = %crate::db::timestamp(retry_at),
        "ACME: the tenant's order budget (--acme-orders-per-hour) is spent");
    Ok(())
}

/// The certificate's `reason` while the tenant's order budget is spent.
pub const RATE_LIMITED: &str = "rate_limited";

async fn has_valid(app: &AppState, hostname: &str, now_ms: i64) -> ApiResult<bool> {
    let not_after: Option<i64> = sqlx::query_scalar("SELECT not_after FROM certificates WHERE hostname = $1")
        .bind(hostname)
        .fetch_optional(&app.pool)
        .await?;
    Ok(not_after.is_some_and(|t| t > now_ms))
}

/// Makes a name due now (an admin asking for an early renewal); `false` when ACME does not manage it.
pub async fn renew_now(app: &AppState, hostname: &str) -> ApiResult<bool> {
    let done = sqlx::query("UPDATE acme_hosts SET next_attempt_at = $1 WHERE hostname = $2")
        .bind(now_ms())
        .bind(hostname)
        .execute(&app.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        assert_eq!(renew_at(0, 90), 60);
        assert_eq!(renew_at(1_000, 1_000 + 90 * 86_400), 1_000 + 60 * 86_400);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_six_hours() {
        assert_eq!(backoff_ms(1), 10_000);
        assert_eq!(backoff_ms(2), 20_000);
        assert_eq!(backoff_ms(5), 160_000);
        assert_eq!(backoff_ms(1_000), MAX_RETRY_MS);
    }
}
