//! WebSocket echo for benches/proxies.sh: `serve` is the origin, `load` drives echo round trips through a
//! proxy and prints what it measured.
//!
//!   ws-echo serve 127.0.0.2:9001
//!   ws-echo load 127.0.0.1:8080 <host> <path> <connections> <seconds> <message bytes>
//!
//! Each of the `load` connections sends a message and waits for its echo before sending the next (a hot
//! reload socket's pattern: small messages, one at a time), so messages/s is a round-trip rate. It prints
//! `messages`, `rate` (per second), `p50_us` and `p99_us` lines, and `errors` (connections that failed).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", addr] => serve(addr).await,
        ["load", proxy, host, path, connections, seconds, size] => {
            let seconds = Duration::from_secs_f64(seconds.parse().context("seconds")?);
            load(proxy, host, path, connections.parse().context("connections")?, seconds, size.parse()?).await
        }
        _ => bail!("usage: ws-echo serve ADDR | ws-echo load PROXY HOST PATH CONNECTIONS SECONDS BYTES"),
    }
}

async fn serve(addr: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn load(
    proxy: &str,
    host: &str,
    path: &str,
    connections: usize,
    seconds: Duration,
    size: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + seconds;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (proxy, url) = (proxy.to_string(), format!("ws://{host}{path}"));
        tasks.push(tokio::spawn(async move { echo_until(&proxy, &url, size, deadline).await }));
    }
    let (mut rtts, mut errors) = (Vec::new(), 0);
    for task in tasks {
        match task.await? {
            Ok(mut r) => rtts.append(&mut r),
            Err(e) => {
                errors += 1;
                eprintln!("connection: {e:#}");
            }
        }
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)));
    println!("messages {}", rtts.len());
    println!("rate {:.1}", rtts.len() as f64 / seconds.as_secs_f64());
    println!("p50_us {}", pct(0.5).copied().unwrap_or(0));
    println!("p99_us {}", pct(0.99).copied().unwrap_or(0));
    println!("errors {errors}");
    Ok(())
}

/// Round trips on one connection until the deadline; each one's time in µs.
async fn echo_until(proxy: &str, url: &str, size: usize, deadline: Instant) -> anyhow::Result<Vec<u64>> {
    let stream = TcpStream::connect(proxy).await.with_context(|| format!("connecting to {proxy}"))?;
    stream.set_nodelay(true)?;
    let request = url.into_client_request()?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await.context("upgrading")?;
    let payload = "x".repeat(size);
    let mut rtts = Vec::new();
    while Instant::now() < deadline {
        let sent = Instant::now();
        ws.send(Message::text(payload.clone())).await?;
        match ws.next().await {
            Some(Ok(Message::Text(echo))) if echo.len() == size => {}
            other => bail!("expected the echo, got {other:?}"),
        }
        rtts.push(sent.elapsed().as_micros() as u64);
    }
    let _ = ws.close(None).await;
    Ok(rtts)
}
