//! Cross-replica change signals on PostgreSQL: every write transaction sends `NOTIFY portico_feed,
//! '<version>'` before it commits (PostgreSQL delivers it on commit, and only then), and each control
//! replica LISTENs and feeds the versions into the same `watch` channel its own writes signal. A long-poll
//! held by replica B thus answers a change committed through replica A within milliseconds.
//!
//! The feed's timed re-check stays as the safety net for notifications lost while the listening
//! connection reconnects; after a reconnect the listener also re-reads the version at once.

use std::sync::Weak;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::AnyPool;
use tokio::sync::watch;

use crate::config::ControlError;
use crate::state::AppState;

/// The channel the feed version is sent on.
pub const CHANNEL: &str = "portico_feed";
/// Pause after a failed reconnect before trying again.
const RETRY: Duration = Duration::from_secs(1);

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

/// A listening connection for a PostgreSQL URL (separate from the pool: it stays in LISTEN mode), or
/// `None` for SQLite, where one process holds the database and its in-process signal is enough.
/// Listening starts before the caller reads the current version, so no commit falls between the two.
pub async fn listen(url: &str) -> Result<Option<PgListener>, ControlError> {
    if !is_postgres(url) {
        return Ok(None);
    }
    let mut listener = PgListener::connect(url)
        .await
        .map_err(|e| ControlError::Database(format!("cannot open the change listener: {e}")))?;
    listener.listen(CHANNEL).await.map_err(|e| ControlError::Database(format!("LISTEN {CHANNEL}: {e}")))?;
    Ok(Some(listener))
}

/// Raises the signalled version to `version`; receivers wake only when it moved forward (a replica also
/// hears its own commits, which it has already signalled).
pub fn bump(notify: &watch::Sender<u64>, version: u64) {
    notify.send_if_modified(|current| {
        let newer = version > *current;
        if newer {
            *current = version;
        }
        newer
    });
}

/// Forwards notifications into the state's signal until the control service is gone. `url` reopens the
/// listener when its connection fails for good.
pub async fn forward(url: String, mut listener: PgListener, state: Weak<AppState>) {
    loop {
        let received = listener.try_recv().await;
        let Some(app) = state.upgrade() else { return };
        match received {
            Ok(Some(notification)) => match notification.payload().parse::<u64>() {
                Ok(version) => bump(&app.notify, version),
                Err(_) => {
                    tracing::warn!(payload = notification.payload(), "ignoring a malformed feed notification")
                }
            },
            // The connection dropped and was re-established, LISTEN included: what was committed in
            // between sent notifications that never reached us.
            Ok(None) => {
                tracing::warn!("change listener reconnected to PostgreSQL");
                catch_up(&app.pool, &app.notify).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "change listener lost PostgreSQL; reconnecting every second");
                drop(app);
                listener = loop {
                    tokio::time::sleep(RETRY).await;
                    if state.strong_count() == 0 {
                        return;
                    }
                    if let Ok(Some(listener)) = listen(&url).await {
                        break listener;
                    }
                };
                tracing::info!("change listener connected again");
                let Some(app) = state.upgrade() else { return };
                catch_up(&app.pool, &app.notify).await;
            }
        }
    }
}

async fn catch_up(pool: &AnyPool, notify: &watch::Sender<u64>) {
    match sqlx::query_scalar::<_, i64>("SELECT version FROM feed_state WHERE id = 1").fetch_one(pool).await {
        Ok(version) => bump(notify, u64::try_from(version).unwrap_or_default()),
        Err(e) => tracing::warn!(error = %e, "reading the feed version after a reconnect"),
    }
}
