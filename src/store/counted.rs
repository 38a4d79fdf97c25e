//! Request counting: one decorator around every backend.
//!
//! Counts requests the way S3 bills them: every `get`, `get_range` and
//! `get_if_changed` is one GET, every kind of put one PUT, and a `list` is
//! one LIST per page of 1,000 keys (S3's page size; the local and memory
//! backends are counted as if they paged the same way). Outcomes that
//! matter for the protocol are counted too: 304 (not modified), 404 (not
//! found) and 412 (lost create-only or compare-and-swap).
//!
//! It can also add a fixed latency before every request
//! ([`Counted::with_latency`], `SHOAL_STORE_LATENCY_MS` in [`super::open`]),
//! so cold-path benchmarks on a local directory or a loopback server pay
//! what S3's first byte costs (about 20 ms) and measure round trips, not
//! memcpy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ByteRange, Conditional, DynStore, ETag, GetResult, ObjectMeta, ObjectStore, Result, StoreError,
};

/// A snapshot of request counters. Subtract two snapshots to get the
/// requests made in between (e.g. by one query).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCounts {
    pub get: u64,
    pub put: u64,
    pub list: u64,
    pub head: u64,
    pub delete: u64,
    /// Conditional GETs answered "not modified" (304).
    pub not_modified: u64,
    /// Requests answered "not found" (404).
    pub not_found: u64,
    /// Conditional writes that lost (412, 409 or If-Match on a missing key).
    pub precondition_failed: u64,
    /// Bytes received by GETs.
    pub bytes_read: u64,
    /// Bytes sent by PUTs.
    pub bytes_written: u64,
}

impl RequestCounts {
    /// All requests, of any kind.
    pub fn total(&self) -> u64 {
        self.get + self.put + self.list + self.head + self.delete
    }

    /// Counts made since `earlier` (saturating).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get.saturating_sub(earlier.get),
            put: self.put.saturating_sub(earlier.put),
            list: self.list.saturating_sub(earlier.list),
            head: self.head.saturating_sub(earlier.head),
            delete: self.delete.saturating_sub(earlier.delete),
            not_modified: self.not_modified.saturating_sub(earlier.not_modified),
            not_found: self.not_found.saturating_sub(earlier.not_found),
            precondition_failed: self
                .precondition_failed
                .saturating_sub(earlier.precondition_failed),
            bytes_read: self.bytes_read.saturating_sub(earlier.bytes_read),
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
        }
    }
}

#[derive(Default)]
struct Counters {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    not_modified: AtomicU64,
    not_found: AtomicU64,
    precondition_failed: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Sequential rounds: a request that starts after one of round `r`
    /// has finished is in round `r + 1` at least (see [`Counted::rounds`]).
    finished_round: AtomicU64,
    deepest_round: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A store that counts every request made through it.
#[derive(Clone)]
pub struct Counted {
    inner: DynStore,
    counters: Arc<Counters>,
    /// Added before every request (zero: none).
    latency: Duration,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Counted {
    pub fn new(inner: DynStore) -> Self {
        Counted {
            inner,
            counters: Arc::default(),
            latency: Duration::ZERO,
        }
    }

    /// The same store and counters, with `latency` added before every
    /// request (a simulated first-byte latency for benchmarks).
    pub fn with_latency(&self, latency: Duration) -> Self {
        Counted {
            latency,
            ..self.clone()
        }
    }

    /// The latency added before every request.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The most requests made one after another: a request that starts
    /// after another has finished is one round later than it. Parallel
    /// requests share a round; a query that reads manifests, then heads,
    /// then codes, then rows makes 4. What a cold query's latency is made
    /// of, and what `shoal bench` reports as `cold.rounds`.
    pub fn rounds(&self) -> u64 {
        self.counters.deepest_round.load(Ordering::Relaxed)
    }

    /// Runs one request: the added latency first, then `fut`, counting
    /// its round and its outcome.
    async fn request<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let c = &self.counters;
        let round = c.finished_round.load(Ordering::Relaxed) + 1;
        c.deepest_round.fetch_max(round, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let r = self.outcome(fut.await);
        c.finished_round.fetch_max(round, Ordering::Relaxed);
        r
    }

    /// The store being counted.
    pub fn inner(&self) -> &DynStore {
        &self.inner
    }

    /// The counts so far.
    pub fn counts(&self) -> RequestCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            get: l(&c.get),
            put: l(&c.put),
            list: l(&c.list),
            head: l(&c.head),
            delete: l(&c.delete),
            not_modified: l(&c.not_modified),
            not_found: l(&c.not_found),
            precondition_failed: l(&c.precondition_failed),
            bytes_read: l(&c.bytes_read),
            bytes_written: l(&c.bytes_written),
        }
    }

    fn outcome<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            match e {
                StoreError::NotFound { .. } => bump(&self.counters.not_found, 1),
                StoreError::AlreadyExists { .. } | StoreError::PreconditionFailed { .. } => {
                    bump(&self.counters.precondition_failed, 1)
                }
                _ => {}
            }
        }
        r
    }

    fn written(&self, n: usize) {
        bump(&self.counters.put, 1);
        bump(&self.counters.bytes_written, n as u64);
    }
}

#[async_trait]
impl ObjectStore for Counted {
    async fn get(&self, key: &str) -> Result<GetResult> {
        bump(&self.counters.get, 1);
        let r = self.request(self.inner.get(key)).await;
        if let Ok(g) = &r {
            bump(&self.counters.bytes_read, g.bytes.len() as u64);
        }
        r
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        bump(&self.counters.get, 1);
        let r = self.request(self.inner.get_range(key, range)).await;
        if let Ok(b) = &r {
            bump(&self.counters.bytes_read, b.len() as u64);
        }
        r
    }

    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        bump(&self.counters.get, 1);
        let r = self.request(self.inner.get_if_changed(key, etag)).await;
        match &r {
            Ok(Conditional::NotModified) => bump(&self.counters.not_modified, 1),
            Ok(Conditional::Modified(g)) => bump(&self.counters.bytes_read, g.bytes.len() as u64),
            Err(_) => {}
        }
        r
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        bump(&self.counters.head, 1);
        self.request(self.inner.head(key)).await
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.written(bytes.len());
        self.request(self.inner.put(key, bytes)).await
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.written(bytes.len());
        self.request(self.inner.put_if_absent(key, bytes)).await
    }

    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        self.written(bytes.len());
        self.request(self.inner.put_if_match(key, bytes, etag))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        bump(&self.counters.delete, 1);
        self.request(self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let r = self.request(self.inner.list(prefix)).await;
        let pages = match &r {
            Ok(v) => v.len().div_ceil(1000).max(1),
            Err(_) => 1,
        };
        bump(&self.counters.list, pages as u64);
        r
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// Every request waits the added latency first; the counters are
    /// shared with the handle it was made from.
    #[tokio::test(start_paused = true)]
    async fn added_latency_delays_every_request_and_shares_the_counters() {
        let plain = Counted::new(Arc::new(MemoryStore::unique()));
        let slow = plain.with_latency(Duration::from_millis(20));
        let t = tokio::time::Instant::now();
        slow.put("a", Bytes::from_static(b"x")).await.unwrap();
        slow.get("a").await.unwrap();
        slow.get_range("a", ByteRange::new(0, 1)).await.unwrap();
        assert_eq!(t.elapsed(), Duration::from_millis(60));
        let t = tokio::time::Instant::now();
        plain.get("a").await.unwrap();
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert_eq!(plain.counts().get, 3);
        assert_eq!(slow.counts().put, 1);
        // put, get, get_range, get: one after another.
        assert_eq!(plain.rounds(), 4);
    }

    /// Requests in parallel share a round; one started after they
    /// finished is the next.
    #[tokio::test(start_paused = true)]
    async fn rounds_count_requests_made_one_after_another() {
        let store =
            Counted::new(Arc::new(MemoryStore::unique())).with_latency(Duration::from_millis(20));
        store.put("a", Bytes::from_static(b"x")).await.unwrap();
        let fresh = Counted::new(store.inner().clone()).with_latency(Duration::from_millis(20));
        let gets = (0..5).map(|_| fresh.get("a"));
        assert!(futures::future::join_all(gets)
            .await
            .iter()
            .all(|r| r.is_ok()));
        assert_eq!(fresh.rounds(), 1);
        let (a, b) =
            futures::future::join(fresh.get("a"), fresh.get_range("a", ByteRange::new(0, 1))).await;
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(fresh.rounds(), 2);
        assert_eq!(fresh.counts().get, 7);
    }
}
