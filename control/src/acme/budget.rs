//! The ACME order budget per tenant (`--acme-orders-per-hour`, SPEC §7 "Certificates"): a tenant adding
//! names by the thousand, or names that always fail validation, must not spend the platform's rate limits at
//! the CA. Every order placed, failed ones included, is a row in `acme_orders`; the budget counts the last
//! hour's. Time is a parameter (`now`), so the tests drive the clock rather than wait on it.

use sqlx::{AnyConnection, AnyPool};

use crate::error::ApiResult;

const HOUR_MS: i64 = 60 * 60 * 1000;

/// Whether a tenant may place one more order now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    Granted,
    /// Spent; a slot frees at `retry_at` (unix ms), when the oldest order in the window turns an hour old.
    Exhausted {
        retry_at: i64,
    },
}

/// The budget at `now`, given when the tenant's earlier orders were placed (any age).
pub fn budget(now: i64, placed: &[i64], per_hour: u32) -> Budget {
    let mut recent: Vec<i64> = placed.iter().copied().filter(|t| *t > now - HOUR_MS).collect();
    let per_hour = usize::try_from(per_hour).unwrap_or(usize::MAX);
    if recent.len() < per_hour {
        return Budget::Granted;
    }
    recent.sort_unstable();
    // Once this order is an hour old, fewer than `per_hour` remain in the window.
    let freeing = recent.get(recent.len() - per_hour).copied().unwrap_or(now);
    Budget::Exhausted { retry_at: freeing + HOUR_MS }
}

/// Takes one order from `tenant_id`'s budget at `now`, recording it when granted. Replicas sharing a
/// PostgreSQL database may each grant the last slot at the same moment: the bound can be overshot by
/// the number of replicas, never more.
pub(super) async fn spend_budget(
    pool: &AnyPool,
    tenant_id: &str,
    hostname: &str,
    now: i64,
    per_hour: u32,
) -> ApiResult<Budget> {
    sqlx::query("DELETE FROM acme_orders WHERE tenant_id = $1 AND ordered_at <= $2")
        .bind(tenant_id)
        .bind(now - HOUR_MS)
        .execute(pool)
        .await?;
    let placed: Vec<i64> = sqlx::query_scalar("SELECT ordered_at FROM acme_orders WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_all(pool)
        .await?;
    let verdict = budget(now, &placed, per_hour);
    if verdict == Budget::Granted {
        sqlx::query("INSERT INTO acme_orders (tenant_id, hostname, ordered_at) VALUES ($1, $2, $3)")
            .bind(tenant_id)
            .bind(hostname)
            .bind(now)
            .execute(pool)
            .await?;
    }
    Ok(verdict)
}

/// The tenant a wanted name belongs to: the owner of the custom domain, or of the verified preview domain
/// it is (or is under).
pub(super) async fn tenant_of(conn: &mut AnyConnection, hostname: &str) -> ApiResult<Option<String>> {
    let custom: Option<String> =
        sqlx::query_scalar("SELECT tenant_id FROM deployment_domains WHERE hostname = $1")
            .bind(hostname)
            .fetch_optional(&mut *conn)
            .await?;
    if custom.is_some() {
        return Ok(custom);
    }
    let domains: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, preview_domain FROM tenants WHERE preview_domain IS NOT NULL AND preview_domain_status = 'verified'",
    )
    .fetch_all(conn)
    .await?;
    Ok(domains
        .into_iter()
        .find(|(_, d)| hostname == d || hostname.strip_suffix(d.as_str()).is_some_and(|h| h.ends_with('.')))
        .map(|(id, _)| id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_the_last_hour_and_frees_when_the_oldest_ages_out() {
        let now = 10 * HOUR_MS;
        assert_eq!(budget(now, &[], 2), Budget::Granted);
        assert_eq!(budget(now, &[now - 1000], 2), Budget::Granted);
        let placed = [now - 1000, now - 30 * 60 * 1000];
        assert_eq!(budget(now, &placed, 2), Budget::Exhausted { retry_at: now - 30 * 60 * 1000 + HOUR_MS });
        // An order exactly an hour old no longer counts.
        assert_eq!(budget(now, &[now - HOUR_MS, now - 1000], 2), Budget::Granted);
        // More recorded than the budget (a replica overshot): the slot frees when enough have aged out.
        let many = [now - 3000, now - 2000, now - 1000];
        assert_eq!(budget(now, &many, 2), Budget::Exhausted { retry_at: now - 2000 + HOUR_MS });
        assert_eq!(budget(now, &[], 0), Budget::Exhausted { retry_at: now + HOUR_MS });
    }

    /// The stored budget, driven by an explicit clock: 20 orders an hour per tenant, other tenants apart.
    #[tokio::test]
    async fn spent_budget_is_refused_until_an_hour_after_the_first_order() {
        let pool = crate::db::open("sqlite::memory:").await.expect("database");
        let start = 1_000 * HOUR_MS;
        for i in 0..20 {
            let b = spend_budget(&pool, "tn_a", &format!("h{i}.example.com"), start + i, 20)
                .await
                .expect("spend");
            assert_eq!(b, Budget::Granted, "order {i}");
        }
        let over = spend_budget(&pool, "tn_a", "x.example.com", start + 60_000, 20).await.expect("spend");
        assert_eq!(over, Budget::Exhausted { retry_at: start + HOUR_MS });
        // Refused orders are not recorded: still exhausted just before the hour, granted at it.
        let before =
            spend_budget(&pool, "tn_a", "x.example.com", start + HOUR_MS - 1, 20).await.expect("spend");
        assert_eq!(before, Budget::Exhausted { retry_at: start + HOUR_MS });
        let other = spend_budget(&pool, "tn_b", "y.example.com", start + 60_000, 20).await.expect("spend");
        assert_eq!(other, Budget::Granted, "another tenant has its own budget");
        let after = spend_budget(&pool, "tn_a", "x.example.com", start + HOUR_MS, 20).await.expect("spend");
        assert_eq!(after, Budget::Granted);
    }
}
