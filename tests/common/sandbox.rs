//! A fake sandbox: a real HTTP server on its own 127.0.0.x address that reports what it received.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

pub struct FakeSandbox {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSandbox {
    /// Serves on `ip:port` (port 0 picks one).
    pub async fn start(ip: IpAddr, port: u16) -> FakeSandbox {
        let app = Router::new()
            .route("/ws", get(ws))
            .route("/respond", get(respond))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .fallback(echo);
        let listener = tokio::net::TcpListener::bind((ip, port)).await.expect("bind sandbox");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSandbox { addr, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Answers with what arrived, and with the headers a dev server might set that the edge must rewrite.
async fn echo(req: Request) -> Response {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers,
    });
    (
        [
            ("x-frame-options", "DENY"),
            ("content-security-policy", "default-src 'self'; frame-ancestors 'none'"),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Answers with the response headers the query names (`?h=name:value&h=…`, repeatable): what hostile
/// sandbox code could send back to widen its tenant's policies.
async fn respond(axum::extract::RawQuery(query): axum::extract::RawQuery) -> Response {
    let mut resp = "ok".into_response();
    for value in query.unwrap_or_default().split('&').filter_map(|p| p.strip_prefix("h=")) {
        let value = percent_decode(value);
        if let Some((name, v)) = value.split_once(':') {
            if let (Ok(n), Ok(v)) =
                (axum::http::HeaderName::try_from(name.trim()), axum::http::HeaderValue::try_from(v.trim()))
            {
                resp.headers_mut().append(n, v);
            }
        }
    }
    resp
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let hex = std::str::from_utf8(hex).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends the Host it saw, then echoes every message.
async fn ws(upgrade: WebSocketUpgrade, headers: HeaderMap) -> Response {
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        if socket.send(Message::Text(format!("host={host}").into())).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) || socket.send(msg).await.is_err() {
                break;
            }
        }
    })
}

/// The value of a header in an echo body.
pub fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"].as_array()?.iter().find_map(|h| {
        let pair = h.as_array()?;
        (pair.first()?.as_str()? == name).then(|| pair.get(1)?.as_str()).flatten()
    })
}
