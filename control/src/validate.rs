//! Field validation. Each function returns the normalised value or an [`ApiError::InvalidField`] whose
//! message starts with the field's name.

use std::net::IpAddr;

use crate::error::{ApiError, ApiResult};

pub const MAX_URL: usize = 2048;
pub const MAX_EXTERNAL_ID: usize = 200;
pub const MAX_METADATA: usize = 16 * 1024;
pub const MAX_FRAME_ANCESTORS: usize = 32;
const MAX_SOURCE: usize = 512;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A display name: `min..=max` characters, not blank, no control characters.
pub fn name(field: &str, value: &str, max: usize) -> ApiResult<String> {
    let count = value.chars().count();
    if value.trim().is_empty() || count > max {
        return Err(ApiError::invalid(field, format!("must be 1 to {max} characters")));
    }
    if has_control(value) {
        return Err(ApiError::invalid(field, "must not contain control characters"));
    }
    Ok(value.to_string())
}

/// An absolute `https://` URL, normalised by the URL parser (which also percent-encodes quotes and
/// angle brackets, so the value is safe to place in an HTML attribute once escaped as usual).
pub fn https_url(field: &str, value: &str) -> ApiResult<String> {
    if value.len() > MAX_URL || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::invalid(field, format!("must be an https:// URL of at most {MAX_URL} bytes")));
    }
    let url =
        url::Url::parse(value).map_err(|_| ApiError::invalid(field, "must be an absolute https:// URL"))?;
    if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::invalid(field, "must be an absolute https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid(field, "must not carry credentials"));
    }
    let normalised = url.to_string();
    if normalised.len() > MAX_URL {
        return Err(ApiError::invalid(field, format!("must be at most {MAX_URL} bytes")));
    }
    Ok(normalised)
}

/// `#rrggbb`, returned lowercase.
pub fn accent_color(value: &str) -> ApiResult<String> {
    let ok =
        value.len() == 7 && value.starts_with('#') && value.bytes().skip(1).all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(ApiError::invalid("accent_color", "must be #rrggbb"));
    }
    Ok(value.to_ascii_lowercase())
}

/// CSP `frame-ancestors` sources: 1–32 of `'self'`, `'none'` (alone), `scheme:`, or
/// `[scheme://]host[:port][/path]`. Returned lowercase (scheme and host).
pub fn frame_ancestors(field: &str, sources: &[String]) -> ApiResult<Vec<String>> {
    if sources.is_empty() || sources.len() > MAX_FRAME_ANCESTORS {
        return Err(ApiError::invalid(field, format!("must list 1 to {MAX_FRAME_ANCESTORS} sources")));
    }
    let mut out = Vec::with_capacity(sources.len());
    for (i, source) in sources.iter().enumerate() {
        let normalised = csp_source(source).ok_or_else(|| {
            ApiError::invalid(&format!("{field}[{i}]"), "not a valid CSP source expression")
        })?;
        if !out.contains(&normalised) {
            out.push(normalised);
        }
    }
    if out.len() > 1 && out.iter().any(|s| s == "'none'") {
        return Err(ApiError::invalid(field, "'none' must be the only source"));
    }
    Ok(out)
}

fn csp_source(raw: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_SOURCE || !raw.is_ascii() {
        return None;
    }
    let lower = raw.to_ascii_lowercase();
    if lower == "'self'" || lower == "'none'" {
        return Some(lower);
    }
    if raw.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b";,'\"\\".contains(&b)) {
        return None;
    }
    // A bare scheme source such as `https:`.
    if let Some(scheme) = lower.strip_suffix(':') {
        return is_scheme(scheme).then_some(lower);
    }
    let (scheme, rest) = match lower.find("://") {
        Some(i) => (Some(&lower[..i]), &raw[i + 3..]),
        None => (None, raw),
    };
    if scheme.is_some_and(|s| !is_scheme(s)) {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let host = host.to_ascii_lowercase();
    let host_ok = host == "*" || {
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        !bare.is_empty() && bare.split('.').all(is_host_label)
    };
    let port_ok = port
        .is_none_or(|p| p == "*" || (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())));
    let path_ok = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&()*+=:@".contains(&b));
    if !host_ok || !port_ok || !path_ok {
        return None;
    }
    let mut out = String::new();
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    out.push_str(&host);
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    out.push_str(path);
    Some(out)
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

fn is_host_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Where the edge dials a sandbox: an IP literal or a DNS host name, without scheme or port.
/// Underscores are allowed in labels because container-network service names use them.
pub fn address(value: &str) -> ApiResult<String> {
    let unbracketed = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let host = value.strip_suffix('.').unwrap_or(value).to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(ApiError::invalid(
            "address",
            "must be an IP address or a host name, without scheme or port",
        ));
    }
    Ok(host)
}

pub fn external_id(field: &str, value: &str) -> ApiResult<String> {
    if value.chars().count() > MAX_EXTERNAL_ID || has_control(value) {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_EXTERNAL_ID} characters without control characters"),
        ));
    }
    Ok(value.to_string())
}

/// A JSON object of at most 16 KiB once serialised; stored as that serialisation.
pub fn metadata(value: &serde_json::Value) -> ApiResult<String> {
    if !value.is_object() {
        return Err(ApiError::invalid("metadata", "must be a JSON object"));
    }
    let text = serde_json::to_string(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    if text.len() > MAX_METADATA {
        return Err(ApiError::invalid(
            "metadata",
            format!("must be at most {MAX_METADATA} bytes serialised"),
        ));
    }
    Ok(text)
}

/// A caller-chosen preview-auth token: 16–256 visible ASCII characters (no spaces: it travels in
/// headers, query strings and cookies).
pub fn preview_auth_token(value: &str) -> ApiResult<String> {
    let ok = (16..=256).contains(&value.len()) && value.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if !ok {
        return Err(ApiError::invalid(
            "preview_auth.token",
            "must be \"auto\" or 16 to 256 visible ASCII characters",
        ));
    }
    Ok(value.to_string())
}

/// A tenant's preview domain: lowercase, no trailing dot, at least two DNS labels.
pub fn hostname(value: &str) -> ApiResult<String> {
    let host = value.strip_suffix('.').unwrap_or(value).to_ascii_lowercase();
    if !portico_wire::ids::is_hostname(&host) {
        return Err(ApiError::invalid("hostname", "must be a DNS host name such as preview.example.com"));
    }
    Ok(host)
}

pub fn rate(field: &str, value: u32, max: u32) -> ApiResult<u32> {
    if !(1..=max).contains(&value) {
        return Err(ApiError::invalid(field, format!("must be between 1 and {max}")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests;

/// An address (from `address`) checked against the upstream policy: an IP literal must lie inside it; a
/// host name passes here and is checked by the edge on every address it resolves to (SPEC §7).
pub fn upstream_address(
    field: &str,
    address: &str,
    allow: &[portico_wire::Cidr],
    narrow: Option<&[portico_wire::Cidr]>,
) -> ApiResult<()> {
    match address.parse::<IpAddr>() {
        Ok(ip) if !portico_wire::upstream::allowed(ip, allow, narrow) => Err(ApiError::invalid(
            field,
            format!("{ip} is outside the upstream policy (--upstream-allow, or the tenant's upstream_cidrs)"),
        )),
        _ => Ok(()),
    }
}
