//! shoal: serverless vector search whose only shared state is an S3 bucket.
//!
//! # Layout
//!
//! Each module owns one part of the design (see `ARCHITECTURE.md` and the
//! shared DESIGN.md it follows):
//!
//! - [`store`]: the [`store::ObjectStore`] trait (get, ranged get,
//!   conditional get, create-only and compare-and-swap put, delete, list),
//!   its three backends (S3, local directory, memory) chosen by URL, request
//!   counters, the conditional-write probe and the conformance suite every
//!   backend passes.
//!
//! - [`coord`]: the protocol on top of the store: the shared config
//!   `_brainy/config.json`, the instance registry and heartbeats, role
//!   detection, hash partitioning, the bucket key layout, the generic
//!   compare-and-swap loop and the injected clock. Depends only on the
//!   store trait.
//!
//! - [`record`]: the record model (id, vector, metadata, domain) and the
//!   validation every write passes before anything is written.
//! - [`segment`]: the versioned segment format: encode, and a decoder that
//!   never panics and names the object key in every error.
//!
//! - [`bench`]: benchmark phases (ingest, queries, recall) shared by
//!   `benches/` and the CLI.
//! - [`dataset`]: streaming readers for TEXMEX `.fvecs`/`.ivecs` files.
//! - [`writer`]: the write path: upsert/delete/get, group commit through
//!   partition manifests (`coord::manifest`), and the buffered
//!   [`writer::BatchWriter`] for bulk ingest.
//!
//! - [`filter`]: the metadata filter language (`$eq`, `$in`, `$lt`, `$and`, ...).
//! - [`index`]: distance kernels, the top-k collector and the per-segment
//!   search trait (exact scan; ANN kinds plug in behind it).
//! - [`inspect`]: `status` and `verify`: administrative views of a bucket.
//! - [`reader`]: the read path: manifest freshness, the segment cache,
//!   live-record views, fan-out search, `get`, `warm`.
//!
//! - [`compact`]: compaction of partition prefixes into indexed segments,
//!   and garbage collection with a grace period.
//!
//! - [`api`]: the service (a joined cluster with reader and writer) and the
//!   request/response/error types shared by HTTP and Lambda front ends.
//! - [`http`]: `shoal serve`, the axum HTTP API with auth and metrics.
//! - [`lambda`]: runtime-free Lambda handlers (reader, writer, compactor)
//!   for the thin binaries in `lambdas/`.

pub mod api;
pub mod bench;
pub mod compact;
pub mod coord;
pub mod dataset;
mod db;
mod error;
pub mod filter;
pub mod http;
pub mod index;
mod ingest;
mod inspect;
pub mod lambda;
pub mod reader;
pub mod record;
mod routes;
pub mod segment;
pub mod store;
pub mod vocab;
pub mod writer;

pub use db::{probe, Db, OpenOptions};
pub use error::{Error, ErrorKind};
