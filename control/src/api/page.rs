//! Pages of list endpoints: `?limit=N` (1 to [`MAX_LIMIT`], default [`MAX_LIMIT`]) and an opaque
//! `cursor`. Lists are ordered by `(created_at, id)` and a cursor names the last row of the page before
//! (keyset pagination), so a page costs the same at any depth and stays correct while rows are added. The
//! body stays a JSON array; when there is more, `Link: <…>; rel="next"` and `X-Next-Cursor` say where.

use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use sqlx::any::AnyArguments;
use sqlx::query::QueryAs;
use sqlx::Any;

use crate::error::{ApiError, ApiResult};

/// Rows a page holds at most, and when no `limit` is given.
pub const MAX_LIMIT: u32 = 1000;

/// The query of a list endpoint with no filters of its own.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Rows per page, 1 to 1000 (default 1000); the next page is in the `Link` header.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Where the page starts: the `X-Next-Cursor` of the page before.
    #[serde(default)]
    pub cursor: Option<String>,
}

pub type Select<'q, O> = QueryAs<'q, Any, O, AnyArguments<'q>>;

/// Where a page starts and how long it is.
pub struct Page {
    limit: u32,
    after: Option<(i64, String)>,
}

impl Page {
    pub fn new(limit: Option<u32>, cursor: Option<&str>) -> ApiResult<Self> {
        let limit = match limit {
            None => MAX_LIMIT,
            Some(n @ 1..=MAX_LIMIT) => n,
            Some(_) => return Err(ApiError::invalid("limit", format!("must be 1 to {MAX_LIMIT}"))),
        };
        let after = cursor.map(decode).transpose()?;
        Ok(Self { limit, after })
    }

    /// `AND` the rows after the cursor (placeholders numbered from `$n`), in list order, one row more than
    /// the page so that [`Page::respond`] knows whether another page follows.
    pub fn sql(&self, n: usize) -> String {
        let after = match self.after {
            Some(_) => format!(" AND (created_at > ${n} OR (created_at = ${n} AND id > ${}))", n + 1),
            None => String::new(),
        };
        format!("{after} ORDER BY created_at, id LIMIT {}", self.limit + 1)
    }

    /// Binds what [`Page::sql`] refers to.
    pub fn bind<'q, O>(&'q self, select: Select<'q, O>) -> Select<'q, O> {
        match &self.after {
            Some((created_at, id)) => select.bind(*created_at).bind(id.as_str()),
            None => select,
        }
    }

    /// The page's rows as a JSON array, with the link to the next page when there is one.
    pub fn respond<R, V: Serialize>(
        &self,
        uri: &Uri,
        mut rows: Vec<R>,
        key: impl Fn(&R) -> (i64, &str),
        view: impl Fn(&R) -> ApiResult<V>,
    ) -> ApiResult<Response> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next = rows.last().filter(|_| more).map(|r| encode(key(r)));
        let body: Vec<V> = rows.iter().map(view).collect::<ApiResult<_>>()?;
        let mut resp = Json(body).into_response();
        if let Some(cursor) = next {
            let link = format!("<{}>; rel=\"next\"", next_uri(uri, &cursor));
            for (name, value) in [("link", link), ("x-next-cursor", cursor)] {
                if let Ok(v) = HeaderValue::try_from(value) {
                    resp.headers_mut().insert(name, v);
                }
            }
        }
        Ok(resp)
    }
}

fn encode((created_at, id): (i64, &str)) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode(cursor: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::invalid("cursor", "not a cursor this API gave out");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (created_at, id) = raw.split_once(':').ok_or_else(bad)?;
    Ok((created_at.parse().map_err(|_| bad())?, id.to_string()))
}

/// The same path and query with `cursor` set to the next page's.
fn next_uri(uri: &Uri, cursor: &str) -> String {
    let mut params: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
        .collect();
    let cursor = format!("cursor={cursor}");
    params.push(&cursor);
    format!("{}?{}", uri.path(), params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_a_clear_422() {
        let c = encode((1_700_000_000_000, "sb_abc"));
        assert_eq!(decode(&c).expect("decodes"), (1_700_000_000_000, "sb_abc".to_string()));
        for bad in ["!!", "bm9jb2xvbg", ""] {
            assert!(matches!(decode(bad), Err(ApiError::InvalidField(_))), "{bad}");
        }
        assert!(Page::new(Some(0), None).is_err());
        assert!(Page::new(Some(MAX_LIMIT + 1), None).is_err());
    }

    #[test]
    fn the_next_link_keeps_filters_and_replaces_the_cursor() {
        let uri: Uri = "/v1/sandboxes?external_user_id=u1&cursor=old&limit=2".parse().expect("uri");
        assert_eq!(next_uri(&uri, "new"), "/v1/sandboxes?external_user_id=u1&limit=2&cursor=new");
    }
}
