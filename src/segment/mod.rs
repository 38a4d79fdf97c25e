//! Segments: immutable, compressed, checksummed objects holding one batch
//! of records of one partition (DESIGN section 7).
//!
//! # Format, version 1
//!
//! All integers little-endian.
//!
//! ```text
//! header   magic "SHOALSEG" (8) | format version u16 | body length u16 |
//!          body: dimensions u32, metric u8, flags u8, reserved u16,
//!                record count u64, created-at unix ms u64,
//!                writer id length u16, writer id (UTF-8) |
//!          xxh3-64 of everything before it u64
//! sections each compressed on its own (zstd), back to back, per group
//! (one group normally; one per IVF cluster in indexed segments):
//!          ids       count u64, (count+1) u64 offsets, then the UTF-8 bytes
//!          vectors   count × dimensions f32, contiguous (tombstones hold zeros)
//!          metadata  count u64, (count+1) u64 offsets, then JSON objects (empty = none)
//!          tombstones count bytes, 0 or 1
//!          index     optional ANN index (filled by compaction), once
//! directory one 40-byte entry per section: kind u8, codec u8, reserved u16,
//!          group u32, offset u64, stored length u64, raw length u64,
//!          xxh3-64 of the stored bytes u64
//! tail     entry count u32 | reserved u32 | xxh3-64 of the directory u64 |
//!          magic "SHOALEND" (8)
//! ```
//!
//! The directory at the end lets a reader fetch the tail with one ranged
//! GET and then only the sections it needs, as Parquet and Lance footers
//! allow. Unknown section kinds are skipped, so later versions can add
//! sections (the `group` field leaves room for per-cluster sections).
//!
//! Decoding never trusts a length: every offset is bounds-checked, every
//! section's checksum is verified before it is decompressed, decompression
//! is capped at the declared raw length (and allocates only as real output
//! appears), and every problem is a [`SegmentError`] naming the object key.

pub mod batch;
mod decode;
pub mod deletions;
mod encode;
mod live;
mod load;
pub(crate) mod routed;
pub mod shard;

pub use decode::{decode_segment, decode_tail, Tail};
pub use encode::{encode_segment, encode_segment_groups};
pub use live::{LiveSet, Loc};
pub(crate) use load::load_routed_head;
pub use load::{decode_section, load, load_at, LoadError, ObjectCache, Shape};

use crate::vocab::Metric;

pub const MAGIC: &[u8; 8] = b"SHOALSEG";
pub(crate) const END_MAGIC: &[u8; 8] = b"SHOALEND";
pub const FORMAT_VERSION: u16 = 1;
pub const DIR_ENTRY_LEN: usize = 40;
pub const TAIL_LEN: usize = 24;
/// Most records one segment may hold (a guard against lying headers).
pub(crate) const MAX_SEGMENT_RECORDS: u64 = 16 * 1024 * 1024;

/// Section kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SectionKind {
    Ids = 1,
    Vectors = 2,
    Metadata = 3,
    Tombstones = 4,
    Index = 5,
}

pub(crate) const CODEC_RAW: u8 = 0;
pub(crate) const CODEC_ZSTD: u8 = 1;

/// One directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionEntry {
    /// Raw kind byte (unknown kinds are kept and skipped).
    pub kind: u8,
    pub codec: u8,
    pub group: u32,
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
    pub checksum: u64,
}

/// What the header says about a segment.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentHeader {
    pub format_version: u16,
    pub dimensions: u32,
    pub metric: Metric,
    pub record_count: u64,
    pub created_at_ms: u64,
    pub writer_id: String,
    pub has_index: bool,
}

/// A decoded segment: columns of records in write order. Read only
/// through its accessors, so the layout behind them can change (ranged
/// reads of single sections) without touching its users.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    header: SegmentHeader,
    ids: Vec<String>,
    /// `len() × dimensions` values, record `i` at `i*d..(i+1)*d`.
    vectors: Vec<f32>,
    meta_offsets: Vec<u64>,
    meta_bytes: Vec<u8>,
    tombstones: Vec<bool>,
    index: Option<Vec<u8>>,
    /// Size of the stored (compressed) object.
    stored_bytes: u64,
    /// Metadata parsed once, on first use by a filter.
    maps: std::sync::OnceLock<Vec<serde_json::Map<String, serde_json::Value>>>,
}

impl Segment {
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// Record ids in write order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// Every vector, contiguous: record `i` at `i*d..(i+1)*d`.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// The prebuilt ANN index section, if compaction wrote one.
    pub fn index_bytes(&self) -> Option<&[u8]> {
        self.index.as_deref()
    }

    /// Size of the object as stored (compressed), in bytes.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    #[cfg(any(test, feature = "test-util"))]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn dimensions(&self) -> usize {
        self.header.dimensions as usize
    }

    pub fn vector(&self, i: usize) -> &[f32] {
        let d = self.dimensions();
        &self.vectors[i * d..(i + 1) * d]
    }

    /// Record `i`'s metadata as encoded JSON (empty for tombstones).
    pub fn metadata_raw(&self, i: usize) -> &[u8] {
        &self.meta_bytes[self.meta_offsets[i] as usize..self.meta_offsets[i + 1] as usize]
    }

    /// Record `i`'s metadata parsed (None for tombstones or empty).
    pub fn metadata(&self, i: usize) -> Option<serde_json::Map<String, serde_json::Value>> {
        let raw = self.metadata_raw(i);
        if raw.is_empty() {
            return None;
        }
        serde_json::from_slice(raw).ok()
    }

    /// Every record's metadata parsed (empty maps for tombstones and
    /// records without metadata), computed once per segment.
    pub fn metadata_maps(&self) -> &[serde_json::Map<String, serde_json::Value>] {
        self.maps.get_or_init(|| {
            (0..self.len())
                .map(|i| self.metadata(i).unwrap_or_default())
                .collect()
        })
    }

    /// Record `i` as a live row to write again (a merge, a repair, a
    /// move to another routing).
    pub(crate) fn prepared(&self, i: usize) -> crate::record::Prepared {
        crate::record::Prepared {
            id: self.id(i).to_string(),
            vector: self.vector(i).to_vec(),
            metadata: self.metadata_raw(i).to_vec(),
            tombstone: false,
        }
    }

    pub fn is_tombstone(&self, i: usize) -> bool {
        self.tombstones[i]
    }

    pub fn tombstone_count(&self) -> usize {
        self.tombstones.iter().filter(|t| **t).count()
    }

    /// The last position holding `id` (the newest version in this segment).
    #[cfg(any(test, feature = "test-util"))]
    pub fn find_last(&self, id: &str) -> Option<usize> {
        self.ids.iter().rposition(|x| x == id)
    }

    /// Approximate decoded size in memory, for cache weighting.
    pub fn memory_bytes(&self) -> usize {
        self.ids.iter().map(|s| s.len() + 24).sum::<usize>()
            + self.vectors.len() * 4
            + self.meta_bytes.len()
            + self.meta_offsets.len() * 8
            + self.tombstones.len()
            + self.index.as_ref().map_or(0, |i| i.len())
    }
}

/// A segment that could not be read. Always names the object key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    #[error("corrupt segment {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "segment {key} has format version {found}, which this shoal cannot read (it reads \
         version {FORMAT_VERSION}); upgrade shoal"
    )]
    UnsupportedVersion { key: String, found: u16 },
    #[error("segment {key} does not belong to this index: {reason}")]
    Foreign { key: String, reason: String },
}

impl SegmentError {
    pub fn key(&self) -> &str {
        match self {
            SegmentError::Corrupt { key, .. }
            | SegmentError::UnsupportedVersion { key, .. }
            | SegmentError::Foreign { key, .. } => key,
        }
    }
}

#[cfg(test)]
mod shard_tests;
#[cfg(test)]
mod tests;

/// The routing clusters a routed shard object holds, in order (tests).
#[cfg(any(test, feature = "test-util"))]
pub fn routed_clusters(key: &str, bytes: &[u8]) -> Result<Vec<u32>, SegmentError> {
    let head = routed::RoutedHead::parse(key, bytes, bytes.len() as u64)?;
    Ok(head.clusters.iter().map(|c| c.cluster).collect())
}
