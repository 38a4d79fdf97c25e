//! Coordination: the shared config, the instance registry, roles, hash
//! partitioning and the compare-and-swap loop they share (DESIGN sections
//! 1, 3, 4 and 5).
//!
//! This module depends only on the [`crate::store::ObjectStore`] trait, never
//! on a backend, so all of it runs on the in-memory store in tests. The key
//! layout lives in [`paths`]; the generic "read, mutate, conditional write,
//! retry" loop in [`cas`]; time comes from an injected [`clock::Clock`].

pub mod cas;
pub mod catalog;
pub mod clock;
mod cluster;
pub mod config;
pub mod cursor;
pub mod entropy;
mod error;
pub mod index_manifest;
pub mod instance;
pub mod manifest;
pub mod partition;
pub mod paths;
pub mod role;
pub mod watched;

pub use cluster::{Cluster, JoinOptions, DEFAULT_HEARTBEAT_INTERVAL};
pub use config::{Config, Metric, RequestedSettings, Settings};
pub use error::CoordError;
pub use partition::partition_of;
pub use role::{CachePreset, Role};
