//! `PATCH /v1/tenants/{id}`: the admin narrows one tenant's upstream policy and sets its quotas
//! (SPEC §7 "Tenants and sandboxes are untrusted").

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{json_text, view, TenantView};
use crate::api::doc::{
    BadRequest, Forbidden, Internal, InvalidField, NotFound, PayloadTooLarge, Unauthorized,
};
use crate::auth::Admin;
use crate::db::{self, Kind, Write};
use crate::error::{ApiError, ApiJson, ApiResult, PathId};
use crate::quotas::QuotaOverrides;
use crate::state::App;

/// Most CIDRs one tenant's narrowing may list.
const MAX_UPSTREAM_CIDRS: usize = 64;

/// The admin's changes to one tenant. Absent fields are kept; `null` goes back to the platform's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// Narrows `--upstream-allow` for this tenant: each CIDR must lie inside one of its CIDRs, and an
    /// address must lie inside both lists. `[]` lets the tenant reach nothing; `null` removes the narrowing.
    #[serde(default, deserialize_with = "crate::api::sandboxes::present")]
    #[schema(value_type = Option<Vec<String>>)]
    upstream_cidrs: Option<Option<Vec<String>>>,
    /// `null` puts every quota back to the platform default.
    #[serde(default, deserialize_with = "crate::api::sandboxes::present")]
    #[schema(value_type = Option<QuotasPatch>)]
    quotas: Option<Option<QuotasPatch>>,
}

/// Quotas to set: absent ones are kept, `null` ones follow the platform default (`--quota-*`) again.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotasPatch {
    /// Live sandboxes.
    #[serde(default, deserialize_with = "crate::api::sandboxes::present")]
    #[schema(value_type = Option<u64>)]
    sandboxes: Option<Option<u64>>,
    /// Live previews.
    #[serde(default, deserialize_with = "crate::api::sandboxes::present")]
    #[schema(value_type = Option<u64>)]
    previews: Option<Option<u64>>,
    #[serde(default, deserialize_with = "crate::api::sandboxes::present")]
    #[schema(value_type = Option<u64>)]
    deployments: Option<Option<u64>>,
    /// Custom domains of all its deployments, verified or not.
    #[serde(default, deserialize_with = "crate::api::sandboxes::present")]
    #[schema(value_type = Option<u64>)]
    custom_domains: Option<Option<u64>>,
    /// Bytes of all its uploaded releases.
    #[serde(default, deserialize_with = "crate::api::sandboxes::present")]
    #[schema(value_type = Option<u64>)]
    release_bytes: Option<Option<u64>>,
}

impl QuotasPatch {
    fn onto(self, mut stored: QuotaOverrides) -> ApiResult<QuotaOverrides> {
        let set = |field: &str, slot: &mut Option<u64>, value: Option<Option<u64>>| -> ApiResult<()> {
            if let Some(value) = value {
                // Counts and sums are BIGINT in the database.
                if value.is_some_and(|v| i64::try_from(v).is_err()) {
                    return Err(ApiError::invalid(&format!("quotas.{field}"), "is too large"));
                }
                *slot = value;
            }
            Ok(())
        };
        set("sandboxes", &mut stored.sandboxes, self.sandboxes)?;
        set("previews", &mut stored.previews, self.previews)?;
        set("deployments", &mut stored.deployments, self.deployments)?;
        set("custom_domains", &mut stored.custom_domains, self.custom_domains)?;
        set("release_bytes", &mut stored.release_bytes, self.release_bytes)?;
        Ok(stored)
    }
}

/// Each CIDR parsed and inside the global policy (a wider one could only confuse: edges intersect the
/// two lists anyway), without duplicates.
fn upstream_cidrs(app: &App, list: &[String]) -> ApiResult<Vec<portico_wire::Cidr>> {
    if list.len() > MAX_UPSTREAM_CIDRS {
        return Err(ApiError::invalid("upstream_cidrs", format!("must list at most {MAX_UPSTREAM_CIDRS}")));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        let field = format!("upstream_cidrs[{i}]");
        let cidr: portico_wire::Cidr = text.parse().map_err(|e| ApiError::invalid(&field, e))?;
        if !app.upstream_allow.iter().any(|g| cidr.within(g)) {
            let global: Vec<String> = app.upstream_allow.iter().map(ToString::to_string).collect();
            return Err(ApiError::invalid(
                &field,
                format!("{cidr} is not inside the upstream policy (--upstream-allow: {})", global.join(", ")),
            ));
        }
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    Ok(out)
}

/// Sets a tenant's upstream narrowing and quotas; edges enforce the narrowing from the next feed version.
#[utoipa::path(
    patch,
    operation_id = "tenants_update",
    path = "/v1/tenants/{id}",
    tag = "tenants",
    summary = "Narrow a tenant's upstream policy, set its quotas",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The tenant's id (`tn_…`)")),
    request_body = UpdateTenant,
    responses(
        (status = 200, description = "The tenant, updated", body = TenantView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 500, response = Internal),
    )
)]
pub async fn update(
    State(app): State<App>,
    _: Admin,
    PathId(id): PathId,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> ApiResult<Json<TenantView>> {
    let cidrs = match body.upstream_cidrs {
        None => None,
        Some(None) => Some(None),
        Some(Some(list)) => Some(Some(json_text(&upstream_cidrs(&app, &list)?)?)),
    };
    let mut write = Write::begin(&app.pool).await?;
    let Some(row) = db::tenant(write.conn(), &id).await? else {
        return Err(ApiError::not_found("tenant"));
    };
    if let Some(text) = cidrs {
        sqlx::query("UPDATE tenants SET upstream_cidrs = $1 WHERE id = $2")
            .bind(text)
            .bind(&id)
            .execute(write.conn())
            .await?;
    }
    if let Some(patch) = body.quotas {
        let merged = match patch {
            None => QuotaOverrides::default(),
            Some(patch) => patch.onto(crate::quotas::parse(row.quotas.as_deref())?)?,
        };
        let text = if merged.is_empty() { None } else { Some(json_text(&merged)?) };
        sqlx::query("UPDATE tenants SET quotas = $1 WHERE id = $2")
            .bind(text)
            .bind(&id)
            .execute(write.conn())
            .await?;
    }
    let row = db::tenant(write.conn(), &id).await?.ok_or_else(|| ApiError::not_found("tenant"))?;
    write.touch(Kind::Tenant, &id);
    write.commit(&app.notify).await?;
    Ok(Json(view(&app, &row)?))
}
