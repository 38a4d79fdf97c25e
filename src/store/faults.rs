//! Store decorators that misbehave on purpose, for tests.
//!
//! [`IgnoreConditions`] models servers that accept conditional headers and
//! ignore them, so tests can prove the probe refuses such a store;
//! [`FailNext`] fails the next N calls of one kind with a transient error.

use async_trait::async_trait;
use bytes::Bytes;

use super::{ByteRange, Conditional, DynStore, ETag, GetResult, ObjectMeta, ObjectStore, Result};

/// Turns every conditional write into an unconditional one.
#[derive(Debug)]
pub struct IgnoreConditions(pub DynStore);

#[async_trait]
impl ObjectStore for IgnoreConditions {
    async fn get(&self, key: &str) -> Result<GetResult> {
        self.0.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.0.get_range(key, range).await
    }
    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        self.0.get_if_changed(key, etag).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.0.head(key).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.0.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.0.put(key, bytes).await
    }
    async fn put_if_match(&self, key: &str, bytes: Bytes, _etag: &ETag) -> Result<ETag> {
        self.0.put(key, bytes).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.0.list(prefix).await
    }
    fn describe(&self) -> String {
        format!("{} (conditions ignored)", self.0.describe())
    }
}

/// Kinds of store call, for targeting faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
    List,
    Head,
    Delete,
}

/// Fails the next `n` calls of one kind with a transient error (like a 503
/// SlowDown), then behaves normally.
#[derive(Debug)]
pub struct FailNext {
    inner: DynStore,
    op: Op,
    remaining: std::sync::atomic::AtomicU64,
}

impl FailNext {
    pub fn new(inner: DynStore, op: Op, n: u64) -> Self {
        FailNext {
            inner,
            op,
            remaining: n.into(),
        }
    }

    /// Arms `n` more failures.
    pub fn fail_next(&self, n: u64) {
        self.remaining.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn trip(&self, op: Op, key: &str) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if op == self.op
            && self
                .remaining
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(super::StoreError::transient(
                key,
                "injected fault: 503 SlowDown",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FailNext {
    async fn get(&self, key: &str) -> Result<GetResult> {
        self.trip(Op::Get, key)?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.trip(Op::Get, key)?;
        self.inner.get_range(key, range).await
    }
    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        self.trip(Op::Get, key)?;
        self.inner.get_if_changed(key, etag).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.trip(Op::Head, key)?;
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.trip(Op::Put, key)?;
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.trip(Op::Put, key)?;
        self.inner.put_if_absent(key, bytes).await
    }
    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        self.trip(Op::Put, key)?;
        self.inner.put_if_match(key, bytes, etag).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.trip(Op::Delete, key)?;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.trip(Op::List, prefix)?;
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Forwards every call; conditional writes whose key contains a pattern can
/// be made to misbehave: applied but answered with a transient error (the
/// response was lost), or hung forever (a request that never completes,
/// e.g. a process frozen or killed mid-commit).
#[derive(Debug)]
pub struct WriteFaults {
    inner: DynStore,
    pattern: String,
    lose_responses: std::sync::atomic::AtomicU64,
    hang: std::sync::atomic::AtomicBool,
    /// Notified when a write starts hanging.
    pub hung: std::sync::Arc<tokio::sync::Notify>,
    gate: std::sync::Mutex<Option<std::sync::Arc<tokio::sync::Semaphore>>>,
    /// Matching writes currently held at the gate.
    pub waiting: std::sync::atomic::AtomicUsize,
    /// GETs of keys containing this pattern take this long first.
    slow: std::sync::Mutex<Option<(String, std::time::Duration)>>,
    /// Deletes of matching keys wait at the gate too (a deleter frozen
    /// half-way through).
    gate_deletes: std::sync::atomic::AtomicBool,
}

impl WriteFaults {
    pub fn new(inner: DynStore, key_pattern: &str) -> Self {
        WriteFaults {
            inner,
            pattern: key_pattern.to_string(),
            lose_responses: 0.into(),
            hang: false.into(),
            hung: Default::default(),
            gate: Default::default(),
            waiting: 0.into(),
            slow: Default::default(),
            gate_deletes: false.into(),
        }
    }

    /// From now on deletes of matching keys wait at the gate as
    /// conditional writes do (see [`WriteFaults::close_gate`]).
    pub fn gate_deletes(&self) {
        self.gate_deletes
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    async fn at_gate(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        /// Counts a held call out when it leaves, also if it is dropped.
        struct Held<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let gate = self.gate.lock().unwrap().clone();
        if let Some(g) = gate {
            self.waiting.fetch_add(1, SeqCst);
            let _held = Held(&self.waiting);
            let permit = g.acquire().await.expect("gate is never closed");
            permit.forget();
        }
    }

    /// From now on GETs of keys containing `pattern` wait `delay` first
    /// (a slow prefix: large objects, a throttled partition).
    pub fn slow_reads(&self, pattern: &str, delay: std::time::Duration) {
        *self.slow.lock().unwrap() = Some((pattern.to_string(), delay));
    }

    async fn maybe_slow(&self, key: &str) {
        let delay = match self.slow.lock().unwrap().as_ref() {
            Some((p, d)) if key.contains(p.as_str()) => Some(*d),
            _ => None,
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
    }

    /// From now on matching conditional writes wait at a gate until
    /// [`WriteFaults::open_gate`] lets them through (one permit each).
    pub fn close_gate(&self) {
        *self.gate.lock().unwrap() = Some(std::sync::Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets `n` held (or future) writes through the gate.
    pub fn open_gate(&self, n: usize) {
        if let Some(g) = self.gate.lock().unwrap().as_ref() {
            g.add_permits(n);
        }
    }

    /// The next `n` matching conditional writes are applied, then reported
    /// as a transient error.
    pub fn lose_next_responses(&self, n: u64) {
        self.lose_responses
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Matching conditional writes hang (never complete, never apply).
    pub fn hang_writes(&self, on: bool) {
        self.hang.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    async fn conditional(
        &self,
        key: &str,
        write: impl std::future::Future<Output = Result<ETag>>,
    ) -> Result<ETag> {
        use std::sync::atomic::Ordering::SeqCst;
        if !key.contains(&self.pattern) {
            return write.await;
        }
        self.at_gate().await;
        if self.hang.load(SeqCst) {
            self.hung.notify_one();
            return std::future::pending().await;
        }
        let lose = self
            .lose_responses
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let r = write.await;
        if lose && r.is_ok() {
            return Err(super::StoreError::transient(
                key,
                "injected fault: write applied but the response was lost (timeout)",
            ));
        }
        r
    }
}

#[async_trait]
impl ObjectStore for WriteFaults {
    async fn get(&self, key: &str) -> Result<GetResult> {
        self.maybe_slow(key).await;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        self.inner.get_if_changed(key, etag).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.inner.put(key, bytes).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        self.conditional(key, self.inner.put_if_absent(key, bytes))
            .await
    }
    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        self.conditional(key, self.inner.put_if_match(key, bytes, etag))
            .await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        let held = self.gate_deletes.load(std::sync::atomic::Ordering::SeqCst);
        if held && key.contains(&self.pattern) {
            self.at_gate().await;
        }
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Seeded, deterministic fault injection for simulations.
///
/// Each call's fate is a hash of (seed, operation, key, how many times
/// that key, or for segments that partition folder, was called), so the
/// same seed gives the same faults however tasks interleave and whatever
/// random ids segments get. Faults: transient errors (500/503/timeouts),
/// 409 ConditionalRequestConflict on conditional writes, ambiguous writes
/// (applied, but the caller gets an error), and latency (which, under a
/// paused tokio clock, makes concurrent commits interleave). A test-only
/// switch drops the conditions of conditional writes, to prove that the
/// checks catch a broken commit protocol.
///
/// For whole-run determinism it can also stamp objects with a simulated
/// clock (what `last_modified` reports, so GC judges ages in simulated
/// time), freeze the caller after a segment PUT (a process paused between
/// its segment PUT and its commit), and record every operation with its
/// outcome (the trace a determinism test compares).
pub struct Faulty {
    inner: DynStore,
    pub seed: u64,
    pub config: FaultConfig,
    calls: std::sync::Mutex<std::collections::HashMap<(u8, String), u64>>,
    /// Faults injected so far, by kind.
    pub injected: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    clock: Option<SimClock>,
    written: std::sync::Mutex<std::collections::HashMap<String, std::time::SystemTime>>,
    trace: std::sync::Mutex<Vec<String>>,
}

/// The simulated wall clock objects are stamped with.
pub(crate) type SimClock = std::sync::Arc<dyn Fn() -> std::time::SystemTime + Send + Sync>;

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty")
            .field("inner", &self.inner.describe())
            .field("seed", &self.seed)
            .field("config", &self.config)
            .finish()
    }
}

/// Rates are probabilities per call, 0.0 to 1.0.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    pub transient: f64,
    pub conflict: f64,
    pub ambiguous: f64,
    /// Up to this many milliseconds of latency per call.
    pub max_latency_ms: u64,
    /// BROKEN ON PURPOSE: conditional writes become unconditional.
    pub ignore_conditions: bool,
    /// Probability that a segment PUT is followed by a freeze of the
    /// writer for [`FaultConfig::pause`] (tokio time).
    pub pause_after_segment_put: f64,
    pub pause: std::time::Duration,
    /// Record every operation and its outcome ([`Faulty::trace`]).
    pub record: bool,
}

impl Faulty {
    pub fn new(inner: DynStore, seed: u64, config: FaultConfig) -> Self {
        Faulty {
            inner,
            seed,
            config,
            calls: Default::default(),
            injected: Default::default(),
            clock: None,
            written: Default::default(),
            trace: Default::default(),
        }
    }

    /// Stamps objects written from now on with `clock`'s time.
    pub fn with_clock(mut self, clock: SimClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Every operation so far with its outcome, in order (with
    /// [`FaultConfig::record`]).
    pub fn trace(&self) -> Vec<String> {
        self.trace.lock().unwrap().clone()
    }

    fn log<T>(&self, op: &str, key: &str, r: &Result<T>) {
        if self.config.record {
            let outcome = match r {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("{:?}", e.kind()),
            };
            self.trace
                .lock()
                .unwrap()
                .push(format!("{op} {key} {outcome}"));
        }
    }

    fn stamp(&self, key: &str, r: &Result<ETag>) {
        if let (Some(clock), Ok(_)) = (&self.clock, r) {
            self.written
                .lock()
                .unwrap()
                .insert(key.to_string(), clock());
        }
    }

    fn restamp(&self, mut meta: ObjectMeta) -> ObjectMeta {
        if let Some(t) = self.written.lock().unwrap().get(&meta.key) {
            meta.last_modified = Some(*t);
        }
        meta
    }

    /// A writer frozen right after its segment PUT, as the seed says.
    async fn maybe_pause(&self, key: &str, r: &Result<ETag>) {
        if r.is_ok()
            && key.ends_with(".seg")
            && self.roll(3, key, 4) < self.config.pause_after_segment_put
        {
            self.note("pause");
            tokio::time::sleep(self.config.pause).await;
        }
    }

    /// A number in [0, 1) fixed by (seed, op, key family, call count, salt).
    fn roll(&self, op: u8, key: &str, salt: u64) -> f64 {
        let family = if key.ends_with(".seg") {
            key.rsplit_once('/').map_or(key, |(dir, _)| dir).to_string() + "/*.seg"
        } else {
            key.to_string()
        };
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry((op, family.clone())).or_default();
            if salt == 0 {
                *c += 1;
            }
            *c
        };
        let h = xxhash_rust::xxh3::xxh3_64(
            format!("{}|{op}|{family}|{n}|{salt}", self.seed).as_bytes(),
        );
        (h >> 11) as f64 / (1u64 << 53) as f64
    }

    fn note(&self, kind: &'static str) {
        *self.injected.lock().unwrap().entry(kind).or_default() += 1;
    }

    async fn before(&self, op: u8, key: &str) -> Result<()> {
        let r = self.roll(op, key, 0);
        if self.config.max_latency_ms > 0 {
            // At least 1 ms: every call then waits on the (paused) clock, so
            // nothing races ahead while blocking work holds the clock still,
            // which keeps whole runs deterministic.
            let ms = 1 + (self.roll(op, key, 1) * self.config.max_latency_ms as f64) as u64;
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        if r < self.config.transient {
            self.note("transient");
            return Err(super::StoreError::transient(
                key,
                "injected fault: 503 SlowDown",
            ));
        }
        Ok(())
    }

    async fn conditional(
        &self,
        op: u8,
        key: &str,
        write: impl std::future::Future<Output = Result<ETag>>,
    ) -> Result<ETag> {
        self.before(op, key).await?;
        let r = self.roll(op, key, 2);
        if r < self.config.conflict {
            self.note("conflict");
            return Err(super::StoreError::PreconditionFailed {
                key: key.to_string(),
            });
        }
        let out = write.await;
        if out.is_ok() && self.roll(op, key, 3) < self.config.ambiguous {
            self.note("ambiguous");
            return Err(super::StoreError::transient(
                key,
                "injected fault: applied, response lost",
            ));
        }
        out
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn get(&self, key: &str) -> Result<GetResult> {
        let r = async {
            self.before(0, key).await?;
            self.inner.get(key).await
        }
        .await;
        self.log("get", key, &r);
        r
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let r = async {
            self.before(0, key).await?;
            self.inner.get_range(key, range).await
        }
        .await;
        self.log("get_range", key, &r);
        r
    }
    async fn get_if_changed(&self, key: &str, etag: &ETag) -> Result<Conditional> {
        let r = async {
            self.before(0, key).await?;
            self.inner.get_if_changed(key, etag).await
        }
        .await;
        self.log("get_if_changed", key, &r);
        r
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let r = async {
            self.before(1, key).await?;
            self.inner.head(key).await.map(|m| self.restamp(m))
        }
        .await;
        self.log("head", key, &r);
        r
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        let r = async {
            self.before(2, key).await?;
            self.inner.put(key, bytes).await
        }
        .await;
        self.stamp(key, &r);
        self.log("put", key, &r);
        r
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<ETag> {
        let r = if self.config.ignore_conditions {
            self.conditional(3, key, self.inner.put(key, bytes)).await
        } else {
            self.conditional(3, key, self.inner.put_if_absent(key, bytes))
                .await
        };
        self.stamp(key, &r);
        self.log("put_if_absent", key, &r);
        self.maybe_pause(key, &r).await;
        r
    }
    async fn put_if_match(&self, key: &str, bytes: Bytes, etag: &ETag) -> Result<ETag> {
        let r = if self.config.ignore_conditions {
            self.conditional(4, key, self.inner.put(key, bytes)).await
        } else {
            self.conditional(4, key, self.inner.put_if_match(key, bytes, etag))
                .await
        };
        self.stamp(key, &r);
        self.log("put_if_match", key, &r);
        r
    }
    async fn delete(&self, key: &str) -> Result<()> {
        let r = async {
            self.before(5, key).await?;
            self.inner.delete(key).await
        }
        .await;
        self.log("delete", key, &r);
        r
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let r = async {
            self.before(6, prefix).await?;
            self.inner
                .list(prefix)
                .await
                .map(|v| v.into_iter().map(|m| self.restamp(m)).collect())
        }
        .await;
        self.log("list", prefix, &r);
        r
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
