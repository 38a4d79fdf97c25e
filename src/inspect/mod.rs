//! Looking at a bucket from outside the query path: `status` (config,
//! instances, per-partition numbers from the manifests) and `verify`
//! (reads every manifest and segment, checks checksums, counts and
//! references, lists orphans). Both are administrative: `verify` reads
//! everything and lists `vectors/`.
//!
//! - `status`: the numbers, from the manifests (live counts come from a reader).
//! - `verify`: the full read and its checks, partitions first, then the index.
//!
//! The one type both report with, [`Problem`], lives here.

use serde::Serialize;

mod routings;
mod status;
mod verify;

pub(crate) use status::{status, text_index_status};
pub use status::{PartitionStatus, RoutingStatus, Status, TextIndexStatus};
pub(crate) use verify::verify;
pub use verify::VerifyReport;

/// One thing wrong in the bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    pub key: String,
    pub message: String,
}
