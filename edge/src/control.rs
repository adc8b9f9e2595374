//! The edge's client of control for everything but the feed: one HTTP client, the control URLs in
//! failover order, the edge token. A call goes to the first control that answers at all; an answer, of
//! any status, is final — another replica shares the same database and would say the same (and a wake
//! must never be asked for twice).

use std::time::Duration;

use pingora::server::ShutdownWatch;
use reqwest::{Client, RequestBuilder, Response};

pub struct Control {
    http: Client,
    urls: Vec<String>,
    token: String,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("no control service answered: {0}")]
pub struct Unreachable(pub String);

impl Control {
    pub fn new(urls: Vec<String>, token: String) -> Result<Self, reqwest::Error> {
        let http = Client::builder().connect_timeout(Duration::from_secs(3)).build()?;
        let urls = urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Ok(Self { http, urls, token })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Sends the request `build` makes for a control base URL (`build(client, "http://host:port")`),
    /// authenticated with the edge token, to each control in turn until one answers.
    pub async fn call(
        &self,
        build: impl Fn(&Client, &str) -> RequestBuilder,
    ) -> Result<Response, Unreachable> {
        let mut last = String::from("no control URL configured");
        for url in &self.urls {
            match self.at(url, &build).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    tracing::debug!(control = %url, error = %e, "control unreachable; trying the next");
                    last = format!("{url}: {e}");
                }
            }
        }
        Err(Unreachable(last))
    }

    /// The same request to one given control (for `--check`, which reports on each).
    pub async fn at(
        &self,
        url: &str,
        build: impl Fn(&Client, &str) -> RequestBuilder,
    ) -> reqwest::Result<Response> {
        build(&self.http, url).bearer_auth(&self.token).send().await
    }
}

/// Runs `report` every `period` until the server shuts down, and once more then: how the edge's batched
/// reports (activity, usage) reach control.
pub async fn report_every<F, Fut>(period: Duration, mut shutdown: ShutdownWatch, mut report: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => report().await,
            _ = shutdown.changed() => {
                report().await;
                return;
            }
        }
    }
}
