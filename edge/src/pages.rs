//! The edge's own responses (SPEC §4 "Error responses"): an HTML page for browsers navigating, JSON for
//! everything else, both carrying `X-Edge-Error`, `Cache-Control: no-store` and the tenant's CSP.
//! A branded tenant's page never names Portico; every tenant string is escaped.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use portico_wire::Branding;

use crate::error::EdgeError;

/// Where the error happened, for pages that name it.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageContext<'a> {
    pub branding: Option<&'a Branding>,
    pub sandbox: Option<&'a str>,
    pub port: Option<u16>,
    /// The CSRF token of a share's password form.
    pub csrf: Option<&'a str>,
    /// This request's `X-Request-Id`: shown as "Reference" and in the JSON, sent as a header.
    pub request_id: Option<&'a str>,
}

/// A browser navigation or a client that prefers HTML gets a page; fetch and API clients get JSON.
pub fn wants_html(req: &RequestHeader) -> bool {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("sec-fetch-mode").eq_ignore_ascii_case("navigate") {
        return true;
    }
    let accept = header("accept");
    match (accept.find("text/html"), accept.find("application/json")) {
        (Some(h), Some(j)) => h < j,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The full response for an error: header and body.
pub fn render(
    err: &EdgeError,
    ctx: PageContext<'_>,
    frame_ancestors: &str,
    html: bool,
) -> pingora::Result<(ResponseHeader, Bytes)> {
    let (content_type, body) = if html {
        ("text/html; charset=utf-8", html_page(err, ctx))
    } else {
        ("application/json", json_body(err, ctx.request_id))
    };
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-edge-error", err.code())?;
    resp.insert_header("content-security-policy", frame_ancestors)?;
    resp.insert_header("content-length", body.len().to_string())?;
    if let EdgeError::RateLimited { retry_after_secs } = err {
        resp.insert_header("retry-after", retry_after_secs.to_string())?;
    }
    if let Some(id) = ctx.request_id {
        resp.insert_header(crate::request_id::HEADER, id)?;
    }
    Ok((resp, Bytes::from(body)))
}

/// `303 See Other` to `location`, setting a cookie: where a correct share password leads.
pub fn redirect(location: &str, set_cookie: &str, frame_ancestors: &str) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(303, Some(5))?;
    resp.insert_header("location", location)?;
    resp.insert_header("set-cookie", set_cookie)?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("content-security-policy", frame_ancestors)?;
    resp.insert_header("content-length", "0")?;
    Ok(resp)
}

/// `{"error":{"code","message","request_id"}}` (`request_id` left out when there is none).
fn json_body(err: &EdgeError, request_id: Option<&str>) -> String {
    let mut error = serde_json::json!({"code": err.code(), "message": err.to_string()});
    if let Some(id) = request_id {
        error["request_id"] = id.into();
    }
    serde_json::json!({ "error": error }).to_string()
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value safe to embed in a `<script>` element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string().replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

fn is_hex_color(s: &str) -> bool {
    s.len() == 7 && s.starts_with('#') && s[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_https_url(s: &str) -> bool {
    s.starts_with("https://") && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn html_page(err: &EdgeError, ctx: PageContext<'_>) -> String {
    let branding = ctx.branding;
    let product = branding.and_then(|b| b.product_name.as_deref());
    let accent = branding.map(|b| b.accent_color.as_str()).filter(|c| is_hex_color(c)).unwrap_or("#4f46e5");
    let logo = branding
        .map(|b| b.logo_url.as_str())
        .filter(|u| is_https_url(u))
        .map(|u| format!(r#"<img class="logo" src="{}" alt="">"#, escape(u)))
        .unwrap_or_default();
    let support = branding
        .and_then(|b| b.support_url.as_deref())
        .filter(|u| is_https_url(u))
        .map(|u| format!(r#"<p class="support"><a href="{}">Contact support</a></p>"#, escape(u)))
        .unwrap_or_default();
    // Unbranded pages may say what served them; a tenant's users never see the name.
    let footer = match (branding, product) {
        (Some(_), Some(p)) => escape(p),
        (Some(_), None) => String::new(),
        (None, _) => "Portico".to_string(),
    };
    let title = match product {
        Some(p) => format!("{} · {}", err.title(), escape(p)),
        None => err.title().to_string(),
    };
    let (head_extra, detail, script) = extras(err, ctx);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title>{head_extra}
<style>
body{{margin:0;font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f7f7f8;color:#1f2937;display:flex;min-height:100vh;align-items:center;justify-content:center}}
main{{max-width:34rem;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.08);border-top:4px solid {accent}}}
h1{{font-size:1.4rem;margin:.5rem 0}} .logo{{max-height:40px}} code{{background:#f3f4f6;padding:.1rem .3rem;border-radius:4px}}
.code{{color:#6b7280;font-size:.85rem}} .warn{{color:#b91c1c}} input,button{{font:inherit;padding:.3rem .5rem}} a{{color:{accent}}} footer{{margin-top:1.5rem;color:#9ca3af;font-size:.8rem}}
</style></head>
<body><main>{logo}<h1>{heading}</h1><p>{message}</p>{detail}{support}<p class="code">Error: {code}{reference}</p><footer>{footer}</footer></main>{script}</body></html>
"#,
        heading = escape(err.title()),
        message = escape(&err.to_string()),
        code = err.code(),
        reference = ctx.request_id.map(|id| format!(" · Reference: {}", escape(id))).unwrap_or_default(),
    )
}

/// Per-error additions: auto-retry for a port that is not listening yet, the expiry message to the parent.
fn extras(err: &EdgeError, ctx: PageContext<'_>) -> (String, String, String) {
    match err {
        EdgeError::UpstreamUnreachable { .. } => (
            r#"<meta http-equiv="refresh" content="3">"#.to_string(),
            "<p>If your dev server is running, make sure it listens on <code>0.0.0.0</code>, not \
             <code>127.0.0.1</code> or <code>localhost</code>. This page retries by itself every few seconds.</p>"
                .to_string(),
            String::new(),
        ),
        EdgeError::UpstreamBadResponse { .. } => (
            String::new(),
            "<p>Something accepted the connection but answered in another protocol: a database, an SSH or \
             TLS server, or a dev server still starting. Point the preview at the port of the web server.</p>"
                .to_string(),
            String::new(),
        ),
        EdgeError::TokenExpired => {
            let msg = serde_json::json!({
                "type": "portico:preview:expired",
                "sandbox": ctx.sandbox,
                "port": ctx.port,
            });
            // The parent's origin is not known here and the message carries nothing secret.
            let script = format!(
                "<script>if(window.parent!==window){{window.parent.postMessage({},\"*\")}}</script>",
                script_json(&msg)
            );
            (String::new(), String::new(), script)
        }
        EdgeError::SharePassword { wrong, .. } => {
            let warning = if *wrong { r#"<p class="warn">That password did not work. Try again.</p>"# } else { "" };
            // Posts back to this very URL, which still carries the share token.
            let form = format!(
                r#"{warning}<form method="post"><input type="hidden" name="csrf" value="{}"><label>Password <input type="password" name="password" autocomplete="current-password" autofocus required></label> <button type="submit">Open</button></form>"#,
                escape(ctx.csrf.unwrap_or_default())
            );
            (String::new(), form, String::new())
        }
        _ => (String::new(), String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests;
