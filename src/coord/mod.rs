//! Coordination: the protocol over the store (DESIGN sections 1 to 6 and
//! 11): the shared config, the instance registry and heartbeats, roles,
//! hash partitioning, the partition manifests ([`manifest`]: every change
//! a named function), the index manifest of the shard layer
//! ([`index_manifest`]: its changes and the indexer lease), the S3
//! Vectors catalog ([`catalog`]) and the compactor cursor.
//!
//! This module depends only on the [`crate::store::ObjectStore`] trait, never
//! on a backend, so all of it runs on the in-memory store in tests, and
//! knows nothing of readers, writers or compaction. The key layout lives
//! in [`paths`]; the generic "read, mutate, conditional write, retry" loop
//! in [`cas`]; holding an object with its ETag and revalidating it in
//! [`watched`]; time and randomness come from [`clock`] and [`entropy`].

pub mod cas;
#[cfg(feature = "s3vectors")]
pub mod catalog;
pub mod clock;
mod cluster;
pub mod config;
pub mod cursor;
pub mod entropy;
mod error;
pub mod index_manifest;
pub mod instance;
pub(crate) mod layout;
pub mod manifest;
pub mod partition;
pub mod paths;
pub mod role;
pub(crate) mod skew;
pub mod watched;

pub use cluster::{Cluster, JoinOptions, DEFAULT_HEARTBEAT_INTERVAL};
pub use config::{Config, Metric, RequestedSettings, Settings};
pub use error::CoordError;
pub use partition::partition_of;
pub use role::{CachePreset, Role};
