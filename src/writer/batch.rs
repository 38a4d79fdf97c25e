//! Buffered bulk ingest ("smart batching").
//!
//! [`BatchWriter`] keeps one buffer per partition. A partition's buffer is
//! flushed as one segment when it reaches `batch_size` records, when it has
//! waited `flush_interval`, on [`BatchWriter::flush`], and on
//! [`BatchWriter::close`].
//!
//! **Records in a buffer are not acknowledged.** `add` returning Ok means
//! the records were valid and buffered, not that they are durable; they are
//! durable once a flush that covers them returns Ok (`flush`/`close`
//! report it). A process that dies with a non-empty buffer loses those
//! records. A failed flush keeps its records buffered, in order, for the
//! next flush.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{WriteError, Writer};
use crate::record::{prepare_batch, Prepared, Record, Schema};

#[derive(Clone, Debug)]
pub struct BatchWriterOptions {
    /// Records per partition that trigger a flush of that partition.
    pub batch_size: usize,
    /// Longest time a record waits in a buffer before a flush.
    pub flush_interval: Duration,
    /// Partitions flushed at once.
    pub flush_concurrency: usize,
    /// Called as each segment commits (from whichever task flushed it),
    /// naming the records that just became durable.
    pub on_durable: Option<DurableHook>,
}

/// See [`BatchWriterOptions::on_durable`].
#[derive(Clone)]
pub struct DurableHook(pub Arc<dyn Fn(Durable<'_>) + Send + Sync>);

impl std::fmt::Debug for DurableHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DurableHook")
    }
}

/// Records that just became durable: one committed segment's.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Durable<'a> {
    pub partition: u32,
    pub seq: u64,
    pub segment: &'a str,
    pub ids: &'a [String],
}

impl Default for BatchWriterOptions {
    fn default() -> Self {
        BatchWriterOptions {
            batch_size: 1_000,
            flush_interval: Duration::from_secs(5),
            flush_concurrency: 16,
            on_durable: None,
        }
    }
}

/// What a flush made durable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushReport {
    pub records: usize,
    pub segments: usize,
}

impl FlushReport {
    fn add(&mut self, other: &FlushReport) {
        self.records += other.records;
        self.segments += other.segments;
    }
}

impl std::ops::AddAssign for FlushReport {
    fn add_assign(&mut self, other: FlushReport) {
        self.add(&other);
    }
}

struct Buffer {
    records: Vec<Prepared>,
    /// When the oldest buffered record arrived.
    since: Option<Instant>,
}

/// One partition's buffer. `flush` is held while records are taken from
/// the buffer *and* committed, so a partition's segments are committed in
/// buffer order: an older version can never land with a higher seq than a
/// newer one, whichever of `add`, `flush` or the timer flushes it.
struct Part {
    buffer: Mutex<Buffer>,
    flush: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy, PartialEq)]
enum Drain {
    /// Only full `batch_size` chunks.
    Full,
    /// Everything.
    All,
}

struct Shared {
    writer: Writer,
    opts: BatchWriterOptions,
    parts: Vec<Part>,
}

/// A buffering writer for bulk ingest. See the module docs for when
/// records become durable.
pub struct BatchWriter {
    shared: Arc<Shared>,
    timer: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl BatchWriter {
    /// Starts a batch writer (and its interval flusher) over `writer`.
    pub fn new(writer: Writer, opts: BatchWriterOptions) -> Self {
        let parts = (0..writer.partition_count())
            .map(|_| Part {
                buffer: Mutex::new(Buffer {
                    records: Vec::new(),
                    since: None,
                }),
                flush: tokio::sync::Mutex::new(()),
            })
            .collect();
        let shared = Arc::new(Shared {
            writer,
            opts,
            parts,
        });
        let (stop, mut stopped) = oneshot::channel::<()>();
        let s = shared.clone();
        let timer = tokio::spawn(async move {
            let tick = (s.opts.flush_interval / 4).max(Duration::from_millis(10));
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(tick) => {}
                }
                let due = s.due_partitions(Instant::now());
                if let Err(e) = s.drain_partitions(due, Drain::All).await {
                    tracing::warn!(error = %e, "interval flush failed; records stay buffered");
                }
            }
        });
        BatchWriter {
            shared,
            timer: Some((stop, timer)),
        }
    }

    /// Validates `records` (all of them, before buffering any) and buffers
    /// them, flushing every partition that reaches `batch_size`. Returns
    /// what those flushes made durable.
    pub async fn add(&self, records: &[Record]) -> Result<FlushReport, WriteError> {
        let schema = Schema {
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            ..(*self.shared.writer.schema()).clone()
        };
        let prepared = prepare_batch(records, &schema)?;
        self.add_prepared(prepared).await
    }

    /// Buffers deletes (tombstones) like [`BatchWriter::add`].
    #[cfg(any(test, feature = "test-util"))]
    pub async fn delete(&self, ids: &[String]) -> Result<FlushReport, WriteError> {
        let schema = Schema {
            max_records: usize::MAX,
            ..(*self.shared.writer.schema()).clone()
        };
        let prepared = crate::record::prepare_deletes(ids, &schema)?;
        self.add_prepared(prepared).await
    }

    /// Buffers records already validated with [`crate::record::prepare_one`]
    /// or [`crate::record::prepare_batch`] (callers that report their own
    /// error locations, such as `shoal ingest`).
    pub(crate) async fn add_prepared(
        &self,
        prepared: Vec<Prepared>,
    ) -> Result<FlushReport, WriteError> {
        let n = self.shared.writer.partition_count();
        let now = Instant::now();
        let mut full = std::collections::BTreeSet::new();
        for r in prepared {
            let p = crate::coord::partition_of(&r.id, n) as usize;
            let mut b = self.shared.parts[p].buffer.lock().unwrap();
            b.records.push(r);
            b.since.get_or_insert(now);
            if b.records.len() >= self.shared.opts.batch_size {
                full.insert(p);
            }
        }
        self.shared
            .drain_partitions(full.into_iter().collect(), Drain::Full)
            .await
    }

    /// Records waiting in buffers (not yet acknowledged).
    pub fn buffered(&self) -> usize {
        self.shared
            .parts
            .iter()
            .map(|p| p.buffer.lock().unwrap().records.len())
            .sum()
    }

    /// Flushes every buffer; on Ok every record added before the call is
    /// durable.
    pub async fn flush(&self) -> Result<FlushReport, WriteError> {
        let all = (0..self.shared.parts.len()).collect();
        self.shared.drain_partitions(all, Drain::All).await
    }

    /// Graceful shutdown: stops the interval flusher and flushes.
    pub async fn close(mut self) -> Result<FlushReport, WriteError> {
        if let Some((stop, task)) = self.timer.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        self.flush().await
    }

    /// The writer underneath (for stats and `get`).
    #[cfg(any(test, feature = "test-util"))]
    pub fn writer(&self) -> &Writer {
        &self.shared.writer
    }
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.timer.take() {
            let _ = stop.send(());
        }
        let left = self.buffered();
        if left > 0 {
            tracing::warn!(
                records = left,
                "batch writer dropped with unflushed records; they were never acknowledged"
            );
        }
    }
}

impl Shared {
    fn due_partitions(&self, now: Instant) -> Vec<usize> {
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, part)| {
                part.buffer
                    .lock()
                    .unwrap()
                    .since
                    .is_some_and(|t| now.duration_since(t) >= self.opts.flush_interval)
            })
            .map(|(p, _)| p)
            .collect()
    }

    async fn drain_partitions(
        &self,
        partitions: Vec<usize>,
        mode: Drain,
    ) -> Result<FlushReport, WriteError> {
        let results: Vec<_> = futures::stream::iter(partitions)
            .map(|p| self.drain(p, mode))
            .buffer_unordered(self.opts.flush_concurrency.max(1))
            .collect()
            .await;
        let mut report = FlushReport::default();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(rep) => report.add(&rep),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Commits partition `p`'s buffer in `batch_size` chunks, one segment
    /// each, in order. A failed chunk goes back to the front of the buffer.
    async fn drain(&self, p: usize, mode: Drain) -> Result<FlushReport, WriteError> {
        let part = &self.parts[p];
        let _flushing = part.flush.lock().await;
        let size = self.opts.batch_size.max(1);
        let mut report = FlushReport::default();
        loop {
            let chunk: Vec<Prepared> = {
                let mut b = part.buffer.lock().unwrap();
                let len = b.records.len();
                if len == 0 || (mode == Drain::Full && len < size) {
                    break;
                }
                let chunk = b.records.drain(..len.min(size)).collect();
                if b.records.is_empty() {
                    b.since = None;
                }
                chunk
            };
            let n = chunk.len();
            match self.writer.write_prepared(chunk.clone()).await {
                Ok(receipt) => {
                    if let Some(hook) = &self.opts.on_durable {
                        let ids: Vec<String> = chunk.iter().map(|r| r.id.clone()).collect();
                        for c in &receipt.segments {
                            (hook.0)(Durable {
                                partition: c.partition,
                                seq: c.seq,
                                segment: &c.key,
                                ids: &ids,
                            });
                        }
                    }
                    report.add(&FlushReport {
                        records: n,
                        segments: receipt.segments.len(),
                    })
                }
                Err(e) => {
                    let mut b = part.buffer.lock().unwrap();
                    let newer = std::mem::replace(&mut b.records, chunk);
                    b.records.extend(newer);
                    b.since.get_or_insert(Instant::now());
                    return Err(e);
                }
            }
        }
        Ok(report)
    }
}
