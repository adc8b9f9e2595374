use super::*;

async fn pool() -> AnyPool {
    db::open("sqlite::memory:").await.expect("in-memory db")
}

/// Inserts change rows for sandboxes that do not exist (so they resolve to deletes) and sets the version.
async fn add_changes(pool: &AnyPool, rows: &[(i64, &str)], created_at: i64) {
    for (version, id) in rows {
        sqlx::query(
            "INSERT INTO changes (version, kind, object_id, created_at) VALUES ($1, 'sandbox', $2, $3)",
        )
        .bind(*version)
        .bind(*id)
        .bind(created_at)
        .execute(pool)
        .await
        .expect("insert");
    }
    let max = rows.iter().map(|r| r.0).max().unwrap_or(0);
    sqlx::query("UPDATE feed_state SET version = $1 WHERE id = 1")
        .bind(max)
        .execute(pool)
        .await
        .expect("bump");
}

async fn count(pool: &AnyPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM changes").fetch_one(pool).await.expect("count")
}

#[tokio::test]
async fn answers_are_cut_on_a_version_boundary() {
    let pool = pool().await;
    let mut rows: Vec<(i64, String)> = (1..=4_999).map(|i| (i, format!("s{i}"))).collect();
    // Version 5000 has three rows: the page would split it, so it waits for the next answer.
    rows.extend((0..3).map(|i| (5_000, format!("big{i}"))));
    let rows: Vec<(i64, &str)> = rows.iter().map(|(v, s)| (*v, s.as_str())).collect();
    add_changes(&pool, &rows, now_ms()).await;
    let Some(FeedMessage::Changes { version, changes }) = answer(&pool, 1).await.expect("answer") else {
        panic!("expected changes")
    };
    assert_eq!(version, 4_999);
    assert_eq!(changes.len(), 4_998);
    let Some(FeedMessage::Changes { version, changes }) = answer(&pool, 4_999).await.expect("answer") else {
        panic!("expected changes")
    };
    assert_eq!((version, changes.len()), (5_000, 3));
}

#[tokio::test]
async fn one_version_larger_than_a_page_is_sent_whole() {
    let pool = pool().await;
    let ids: Vec<String> = (0..5_002).map(|i| format!("s{i}")).collect();
    let mut rows: Vec<(i64, &str)> = vec![(1, "first")];
    rows.extend(ids.iter().map(|s| (2, s.as_str())));
    add_changes(&pool, &rows, now_ms()).await;
    let Some(FeedMessage::Changes { version, changes }) = answer(&pool, 1).await.expect("answer") else {
        panic!("expected changes")
    };
    assert_eq!((version, changes.len()), (2, 5_002));
}

#[tokio::test]
async fn an_edge_behind_the_retained_changes_gets_a_snapshot() {
    let pool = pool().await;
    add_changes(&pool, &[(5, "a"), (6, "b")], now_ms()).await;
    assert!(matches!(answer(&pool, 4).await.expect("answer"), Some(FeedMessage::Changes { version: 6, .. })));
    assert!(matches!(answer(&pool, 3).await.expect("answer"), Some(FeedMessage::Snapshot { .. })));
    assert!(answer(&pool, 6).await.expect("answer").is_none());
}

#[tokio::test]
async fn pruning_drops_old_rows_but_keeps_the_last_ten_thousand() {
    let pool = pool().await;
    let day_ago = now_ms() - RETAIN_MS - 1;
    let ids: Vec<String> = (0..10_050).map(|i| format!("s{i}")).collect();
    let rows: Vec<(i64, &str)> = ids.iter().enumerate().map(|(i, s)| (i as i64 + 1, s.as_str())).collect();
    add_changes(&pool, &rows, day_ago).await;
    assert_eq!(prune(&pool, now_ms()).await.expect("prune"), 50);
    assert_eq!(count(&pool).await, 10_000);
    // Recent rows are never pruned, however many.
    let pool = pool_with_recent().await;
    assert_eq!(prune(&pool, now_ms()).await.expect("prune"), 0);
}

async fn pool_with_recent() -> AnyPool {
    let pool = pool().await;
    let ids: Vec<String> = (0..10_010).map(|i| format!("s{i}")).collect();
    let rows: Vec<(i64, &str)> = ids.iter().enumerate().map(|(i, s)| (i as i64 + 1, s.as_str())).collect();
    add_changes(&pool, &rows, now_ms()).await;
    pool
}

const MAX_BEHIND: u64 = snapshots::DEFAULT_LAG;
use snapshots::Form::{Json, Packed};

#[tokio::test]
async fn edges_starting_together_share_one_compressed_snapshot_per_version() {
    let pool = pool().await;
    add_changes(&pool, &[(3, "gone")], now_ms()).await;
    let snapshots = snapshots::Snapshots::new(MAX_BEHIND);
    let (a, b) = tokio::join!(snapshots.latest(&pool, Json), snapshots.latest(&pool, Json));
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.as_ptr(), b.as_ptr(), "one build, shared");
    let parsed: FeedMessage =
        serde_json::from_slice(&snapshots::decompress(Json, &a).expect("inflate")).expect("json");
    assert!(matches!(parsed, FeedMessage::Snapshot { snapshot } if snapshot.version == 3));

    // A version or two behind: served as it is; the edge asks for the changes after it next.
    add_changes(&pool, &[(4, "gone2")], now_ms()).await;
    let c = snapshots.latest(&pool, Json).await.expect("after a change");
    assert_eq!(c.as_ptr(), a.as_ptr(), "a recent snapshot is reused");
    // Too far behind: rebuilt.
    let far = 4 + MAX_BEHIND as i64 + 1;
    add_changes(&pool, &[(far, "gone3")], now_ms()).await;
    let d = snapshots.latest(&pool, Json).await.expect("far behind");
    let parsed: FeedMessage =
        serde_json::from_slice(&snapshots::decompress(Json, &d).expect("inflate")).expect("json");
    assert!(
        matches!(parsed, FeedMessage::Snapshot { snapshot } if snapshot.version == far as u64),
        "a snapshot too far behind is rebuilt"
    );
}

#[tokio::test]
async fn each_form_is_built_and_shared_on_its_own_and_both_hold_the_same_state() {
    let pool = pool().await;
    add_changes(&pool, &[(3, "gone")], now_ms()).await;
    let snapshots = snapshots::Snapshots::new(MAX_BEHIND);
    let json = snapshots.latest(&pool, Json).await.expect("json");
    let (a, b) = tokio::join!(snapshots.latest(&pool, Packed), snapshots.latest(&pool, Packed));
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.as_ptr(), b.as_ptr(), "one build, shared");
    assert_ne!(a.as_ptr(), json.as_ptr(), "a form of its own");
    let packed =
        portico_wire::packed::decode(&snapshots::decompress(Packed, &a).expect("zstd")).expect("decodes");
    let parsed: FeedMessage =
        serde_json::from_slice(&snapshots::decompress(Json, &json).expect("inflate")).expect("json");
    assert_eq!(parsed, FeedMessage::Snapshot { snapshot: packed });
    // Asking for JSON again reuses the JSON built first.
    assert_eq!(snapshots.latest(&pool, Json).await.expect("json").as_ptr(), json.as_ptr());
}

#[tokio::test]
async fn a_snapshot_whose_following_changes_were_pruned_is_rebuilt() {
    let pool = pool().await;
    add_changes(&pool, &[(3, "a")], now_ms()).await;
    let snapshots = snapshots::Snapshots::new(MAX_BEHIND);
    let a = snapshots.latest(&pool, Json).await.expect("first");
    // Version 4 is gone from the change log: an edge at 3 could not catch up from it.
    add_changes(&pool, &[(5, "b")], now_ms()).await;
    sqlx::query("DELETE FROM changes WHERE version < 5").execute(&pool).await.expect("prune");
    let b = snapshots.latest(&pool, Json).await.expect("second");
    assert_ne!(a.as_ptr(), b.as_ptr(), "rebuilt");
}

#[test]
fn a_listed_media_type_or_encoding_is_accepted_unless_its_weight_is_zero() {
    let headers = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
        h
    };
    assert!(accepts(&headers("zstd, gzip"), header::ACCEPT_ENCODING, "zstd"));
    assert!(accepts(&headers("GZIP;q=0.5"), header::ACCEPT_ENCODING, "gzip"));
    assert!(!accepts(&headers("zstd;q=0, gzip"), header::ACCEPT_ENCODING, "zstd"));
    assert!(!accepts(&headers("zstd ; q=0.000"), header::ACCEPT_ENCODING, "zstd"));
    assert!(!accepts(&headers("zstdx, br"), header::ACCEPT_ENCODING, "zstd"));
    assert!(!accepts(&HeaderMap::new(), header::ACCEPT_ENCODING, "zstd"));
}
