//! shoal: serverless vector search whose only shared state is an S3 bucket.
//!
//! # Use
//!
//! Open a handle on a bucket URL and call it; every front end (the CLI,
//! `shoal serve`, the Lambda functions, `shoal bench`, `shoal demo`) does
//! exactly this:
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal::Error> {
//! use shoal::api::{Record, SearchRequest};
//! let db = shoal::Db::open("./shoal-data", shoal::OpenOptions::default()).await?;
//! db.upsert(&[Record::new("a", vec![0.1, 0.2, 0.3])]).await?;
//! let found = db.search(&SearchRequest::new(vec![0.1, 0.2, 0.3], 10)).await?;
//! db.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Layers, bottom up; each module uses only the ones listed before it
//! (`scripts/check-structure.py` checks it; see `ARCHITECTURE.md`). The
//! API modules are `pub`; the internal rooms (marked *internal*) are
//! reached through [`Db`] and [`api`], and are `pub` only with the
//! `test-util` feature, for shoal's own tests, benches and fuzz targets.
//!
//! - `vocab`: the shared words: `Metric`, `AnnKind` and the other index
//!   settings, domain rules, [`ErrorKind`]. A leaf.
//! - `text` (*internal*): full-text search's words: which metadata keys
//!   are searchable (`TextFields`), the analyzers (tantivy's tokenizers
//!   and stemmers), BM25 and reciprocal rank fusion. Uses only `vocab`.
//! - `mutation` (*internal*): the deliberately broken variants the
//!   simulation must catch (switched on only in test builds). A leaf.
//! - `cpu` (*internal*): where CPU-heavy work runs: a blocking thread or
//!   the rayon pool, inline on a current-thread runtime. A leaf.
//! - `store`: the `ObjectStore` trait (get, ranged get, conditional get,
//!   create-only and compare-and-swap put, delete, list), its backends
//!   (S3, local directory, memory) chosen by URL, request counters and
//!   the conditional-write probe. The conformance suite and
//!   fault-injecting stores exist only with the `test-util` feature.
//! - `coord` (*internal*): the protocol over the store, knowing nothing of
//!   readers or writers: the config, instances and heartbeats, roles,
//!   partitioning, the key layout (`coord::paths`, where every key is
//!   minted), the generic compare-and-swap loop (`coord::cas`), the one
//!   conditional refresh of a held object (`coord::watched`), the rooms
//!   where manifests change, each change a named function
//!   (`coord::manifest`, `coord::index_manifest`), the S3 Vectors catalog,
//!   and the clock and entropy seams.
//! - `record` (*internal*): the record model and the validation every
//!   write passes.
//! - `segment` (*internal*): the segment format and the range-readable
//!   shard format (`segment::shard`); `segment::load`, the one way to read
//!   a segment; `segment::LiveSet`, the one newest-version-wins rule.
//! - `index` (*internal*): kernels, top-k, exact scan, the `SegmentAnn`
//!   contract the per-segment ANN kinds (IVF, HNSW) implement, the filter
//!   policy (`route`), the RaBitQ quantizer and the shard index
//!   (`index::shard`: build, and a search without I/O that plans,
//!   estimates from given code blocks and reranks given rows).
//! - `filter` (*internal*): the metadata filter language.
//! - `writer` (*internal*): upsert/delete with group commit; the batch
//!   writer.
//! - `reader` (*internal*): freshness (one rule), the segment and
//!   shard-part caches, partition views, the shard set, the read snapshot
//!   ("a tail record hides its shard row", once), the search-unit seam,
//!   and the services: search, get/list, warm-up.
//! - `compact` (*internal*): compaction of partition prefixes; garbage
//!   collection; repair; the indexer and its lease (`compact::lease`:
//!   renewed while a round works, released after); the maintenance schedule
//!   (`compact::schedule`: when the compactor and a writer's background
//!   task compact, index and collect garbage).
//! - `inspect` (*internal*): `status` and `verify`.
//! - `dataset` (*internal*): file readers (`.fvecs`, `.ivecs`, `.npy`,
//!   JSONL); `ingest` (*internal*): bulk ingest of files.
//! - `bench` (*internal*): benchmark phases and the `shoal bench` suite,
//!   reached through `api` by the CLI.
//! - [`Db`] (module `db`): the handle, the one door to all of the above.
//! - [`Error`] (module `error`): the error every handle call returns.
//! - [`api`]: the request/response types every front end shares, and the
//!   wire error `api::ApiError`.
//! - `routes` (*internal*): the one route table HTTP and Lambda serve.
//! - `s3vectors` (feature `s3vectors`, on by default): the Amazon S3
//!   Vectors API over many indexes in one store, for `shoal serve`.
//! - [`http`] (with its `/metrics` rendering and its accept loop: the
//!   connection limit and timeouts), [`lambda`]: `shoal serve` and the
//!   Lambda handlers; [`auth`]: the API keys `serve` checks.

// The library's API: the handle (`Db`, re-exported below), the shared
// request/response types (`api`), the front-end servers and handlers, the
// store trait (custom backends, `Db::open_store`) and the shared words.
pub mod api;
pub mod auth;
pub mod http;
pub mod lambda;
#[cfg(feature = "s3vectors")]
pub mod s3vectors;
pub mod store;
pub mod vocab;

// Internal rooms. A library user reaches them through `Db` and `api`;
// they are `pub` only with the `test-util` feature, for shoal's own
// integration tests, benches and fuzz targets (which test the protocol
// and formats directly), and private in every shipped build.
macro_rules! internal {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "test-util")]
        pub mod $name;
        // Without `test-util` their `pub` items are crate-visible, and
        // re-exports kept for the tests' paths go unused.
        #[cfg(not(feature = "test-util"))]
        #[allow(unreachable_pub, unused_imports)]
        mod $name;
    )*};
}
internal!(
    bench, compact, coord, dataset, filter, index, mutation, reader, record, segment, text, writer
);

mod cpu;
mod db;
mod error;
mod ingest;
mod inspect;
mod routes;

pub use db::{probe, Db, OpenOptions};
pub use error::{Error, ErrorKind};

/// The multi-threaded tokio runtime a shoal process runs on, built after
/// capping glibc's malloc arenas at one per core (the `MALLOC_ARENA_MAX`
/// environment variable overrides; elsewhere a no-op), which bounds the
/// memory a long-running process loses to its allocator. The cap holds
/// only for threads started after it, so shoal's binaries (the CLI,
/// `shoal serve`, the Lambda functions) call this first in `main`; a
/// program embedding shoal may too.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    cpu::limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
