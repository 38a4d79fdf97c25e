//! The routed shard format (DESIGN section 12, shard format version 3):
//! rows grouped by the clusters of the index's one routing
//! ([`crate::index::routing`]), with no per-row data in the head.
//!
//! A query routes once, then reads only its probed clusters' blocks from
//! each shard; finding an id goes through the shard's sorted id index,
//! whose fence keys are in the head. Format version 1 (a per-shard IVF,
//! [`super::shard`]) stays readable; shards of that format are legacy.
//!
//! # Layout
//!
//! All integers little-endian.
//!
//! ```text
//! prefix    magic "SHOALSHD" (8) | version u16 = 3 | reserved (6) |
//!           head length u64 | xxh3-64 of the head
//! head      dimensions u32 | metric u8 | code bits u8 | reserved (2) |
//!           rows u64 |
//!           created-at unix ms u64 | routing generation u64 |
//!           code row bytes u32 | clusters u32 | id blocks u32 |
//!           rows section offset u64 | writer id length u16 | writer id |
//!           per cluster, ascending id: cluster u32 | rows u32 |
//!             probe offset u64 | codes xxh3-64 | ids stored u32 |
//!             ids raw u32 | ids xxh3-64 | metadata offset u64 |
//!             metadata stored u32 | metadata raw u32 | metadata xxh3-64
//!           per id block: first id length u16 | first id | offset u64 |
//!             stored u32 | raw u32 | xxh3-64
//! probe     per cluster: its codes (rows × code row bytes, raw), then
//!           its ids: zstd(count u64, (count+1) u64 offsets, UTF-8 ids,
//!           count tombstone bytes)
//! rows      per cluster, per row: dimensions × f32 | xxh3-64 of those
//!           bytes (row r of the shard at rows offset + r × stride)
//! metadata  per cluster: zstd(count u64, (count+1) u64 offsets, JSON)
//! id index  per block: zstd(count u64, (count+1) u64 offsets, ids in
//!           byte order, count × u32 shard row)
//! end       magic "SHOALEND" (8)
//! ```
//!
//! Shard rows run through the clusters in order. A cluster's codes and
//! ids are one contiguous range (the *probe block*), and probe blocks of
//! consecutive clusters are adjacent, so the clusters a query probes
//! (consecutive ids within a routing group) come in a few ranged GETs.
//! Every part is checked against its checksum when it is parsed.

use bytes::Bytes;
use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use super::decode::{corrupt, open_section, push_ids, split_offsets, split_offsets_prefix};
use super::encode::push_offsets;
use super::shard::{ShardIds, PREFIX_LEN, SHARD_MAGIC};
use super::{SectionEntry, SegmentError, CODEC_ZSTD, END_MAGIC};
use crate::record::Prepared;
use crate::vocab::{Analyzer, Metric};

pub(crate) const ROUTED_VERSION: u16 = 3;
/// The version of routed shards with a text index ([`text`]).
pub(crate) const TEXT_VERSION: u16 = 4;
const FIXED_LEN: usize = 4 + 4 + 8 + 8 + 8 + 4 + 4 + 4 + 8 + 2;
const CLUSTER_LEN: usize = 4 + 4 + 8 + 8 + 4 + 4 + 8 + 8 + 4 + 4 + 8;
/// Ids per id-index block.
const IDS_PER_BLOCK: usize = 1024;
const LEVEL: i32 = 3;

/// A compressed part: where, how big stored and raw, its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub offset: u64,
    pub stored: u32,
    pub raw: u32,
    pub checksum: u64,
}

impl Part {
    pub(crate) fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.stored)
    }
}

/// One cluster of a routed shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterEntry {
    /// The routing's cluster id.
    pub cluster: u32,
    pub rows: u32,
    /// The cluster's first shard row.
    pub start: u64,
    /// Where its codes start (its ids follow them).
    pub probe_offset: u64,
    pub codes_checksum: u64,
    pub ids: Part,
    pub metadata: Part,
}

/// An id-index block and the first id it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdFence {
    pub first: String,
    pub block: Part,
}

/// A routed shard's head: what a reader holds for as long as the shard
/// is listed (a cluster directory and id fences; no per-row data).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RoutedHead {
    pub dimensions: usize,
    pub metric: Metric,
    pub rows: u64,
    pub created_at_ms: u64,
    pub generation: u64,
    /// Bits per dimension of the codes (`index::rabitq`).
    pub code_bits: u8,
    pub code_row_bytes: u32,
    pub writer_id: String,
    pub rows_offset: u64,
    pub clusters: Vec<ClusterEntry>,
    pub fences: Vec<IdFence>,
    /// The text index's fields (version 4; none before).
    pub text: Vec<TextFieldDir>,
}

/// One cluster's rows and code block, for [`encode_routed`].
pub(crate) struct ClusterRows<'a> {
    pub cluster: u32,
    pub rows: &'a [Prepared],
    pub codes: Vec<u8>,
}

/// A compressed part and its raw length.
type Packed = (Vec<u8>, usize);

fn compress(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, LEVEL).expect("zstd to memory")
}

/// Decompresses and checks a part; errors name `what`.
fn open_part(
    key: &str,
    what: &str,
    p: &Part,
    stored: &[u8],
    max_raw: u64,
) -> Result<Vec<u8>, SegmentError> {
    let e = SectionEntry {
        kind: 0,
        codec: CODEC_ZSTD,
        group: 0,
        offset: p.offset,
        stored_len: u64::from(p.stored),
        raw_len: u64::from(p.raw),
        checksum: p.checksum,
    };
    open_section(key, &e, stored, max_raw).map_err(|err| match err {
        SegmentError::Corrupt { reason, .. } => corrupt(
            key,
            format!("{what}: {}", reason.replace("section 0", "block")),
        ),
        other => other,
    })
}

fn part_bytes(p: &Part, out: &mut Vec<u8>) {
    out.extend_from_slice(&p.offset.to_le_bytes());
    out.extend_from_slice(&p.stored.to_le_bytes());
    out.extend_from_slice(&p.raw.to_le_bytes());
    out.extend_from_slice(&p.checksum.to_le_bytes());
}

/// What [`encode_routed`] made.
pub(crate) struct EncodedRouted {
    pub bytes: Bytes,
    /// Prefix and head: what a reader fetches first.
    pub head_bytes: u64,
}

/// What a routed shard's head says of all its rows.
pub(crate) struct RoutedMeta<'a> {
    pub dims: usize,
    pub metric: Metric,
    pub created_at_ms: u64,
    pub writer_id: &'a str,
    /// The routing's generation.
    pub generation: u64,
    pub code_bits: u8,
    pub code_row_bytes: usize,
    /// The searchable keys to index, in key order (none: version 3).
    pub text: &'a [(String, Analyzer)],
}

/// Encodes a routed shard: `clusters` ascending by id, each with its rows
/// (at least one; no id twice in the shard) and its code block
/// (`rows × code_row_bytes` bytes). CPU-bound and parallel: the parts are
/// compressed and the rows written on the rayon pool, into one buffer of
/// the shard's exact size (the layout is known from the parts' sizes
/// before a byte of the body is written).
pub(crate) fn encode_routed(meta: &RoutedMeta<'_>, clusters: &[ClusterRows<'_>]) -> EncodedRouted {
    let RoutedMeta {
        dims,
        metric,
        created_at_ms,
        writer_id,
        generation,
        code_bits,
        code_row_bytes,
        text,
    } = *meta;
    assert!(
        clusters.windows(2).all(|w| w[0].cluster < w[1].cluster),
        "clusters ascending"
    );
    for c in clusters {
        assert_eq!(
            c.codes.len(),
            c.rows.len() * code_row_bytes,
            "one code per row"
        );
    }
    let rows: Vec<&Prepared> = clusters.iter().flat_map(|c| c.rows.iter()).collect();
    let n = rows.len();
    let writer = &writer_id.as_bytes()[..writer_id.len().min(1024)];
    // The id index: every row's id in byte order with its shard row.
    let mut sorted: Vec<(&str, u32)> = rows
        .iter()
        .enumerate()
        .map(|(row, r)| (r.id.as_str(), row as u32))
        .collect();
    sorted.par_sort_unstable();
    assert!(
        sorted.windows(2).all(|w| w[0].0 != w[1].0),
        "a shard holds one row per id"
    );
    // The text index: each searchable key's postings over the shard rows.
    let metadata: Vec<&[u8]> = rows.iter().map(|r| r.metadata.as_slice()).collect();
    let postings = crate::text::postings::build(text, &metadata);
    let version = if text.is_empty() {
        ROUTED_VERSION
    } else {
        TEXT_VERSION
    };
    let id_blocks: Vec<(String, Vec<u8>, usize)> = sorted
        .par_chunks(IDS_PER_BLOCK)
        .map(|chunk| {
            let mut raw = Vec::new();
            push_offsets(&mut raw, chunk.iter().map(|(id, _)| id.len()));
            for (id, _) in chunk {
                raw.extend_from_slice(id.as_bytes());
            }
            for (_, r) in chunk {
                raw.extend_from_slice(&r.to_le_bytes());
            }
            for p in &postings {
                for (_, r) in chunk {
                    raw.extend_from_slice(&p.lengths[*r as usize].to_le_bytes());
                }
            }
            (chunk[0].0.to_string(), compress(&raw), raw.len())
        })
        .collect();
    let term_blocks: Vec<Vec<(String, Vec<u8>, usize)>> =
        postings.par_iter().map(text::encode_blocks).collect();
    // Each cluster's ids (with tombstone flags) and metadata, compressed.
    let parts: Vec<(Packed, Packed)> = clusters
        .par_iter()
        .map(|c| {
            let mut ids = Vec::new();
            push_offsets(&mut ids, c.rows.iter().map(|r| r.id.len()));
            for r in c.rows {
                ids.extend_from_slice(r.id.as_bytes());
            }
            ids.extend(c.rows.iter().map(|r| u8::from(r.tombstone)));
            let mut meta = Vec::new();
            push_offsets(&mut meta, c.rows.iter().map(|r| r.metadata.len()));
            for r in c.rows {
                meta.extend_from_slice(&r.metadata);
            }
            ((compress(&ids), ids.len()), (compress(&meta), meta.len()))
        })
        .collect();
    // The text directory, its block offsets set below.
    let mut dirs: Vec<TextFieldDir> = text
        .iter()
        .zip(&postings)
        .zip(&term_blocks)
        .map(|(((key, analyzer), p), blocks)| TextFieldDir {
            key: key.clone(),
            analyzer: *analyzer,
            docs: p.docs,
            total_len: p.total_len,
            blocks: blocks
                .iter()
                .map(|(first, _, _)| TermFence {
                    first: first.clone(),
                    block: Part {
                        offset: 0,
                        stored: 0,
                        raw: 0,
                        checksum: 0,
                    },
                })
                .collect(),
        })
        .collect();
    let dir_len = if version == TEXT_VERSION {
        text::dir_len(&dirs)
    } else {
        0
    };
    let head_len = dir_len
        + FIXED_LEN
        + writer.len()
        + clusters.len() * CLUSTER_LEN
        + id_blocks
            .iter()
            .map(|(f, _, _)| 2 + f.len() + 24)
            .sum::<usize>();
    // The body's layout: probe blocks, then rows, then metadata, then id
    // blocks, then term blocks; every offset follows from the sizes.
    let mut at = (PREFIX_LEN + head_len) as u64;
    let part = |at: &mut u64, stored: &[u8], raw: usize| {
        let p = Part {
            offset: *at,
            stored: stored.len() as u32,
            raw: raw as u32,
            checksum: xxh3_64(stored),
        };
        *at += stored.len() as u64;
        p
    };
    let mut entries = Vec::with_capacity(clusters.len());
    let mut start = 0u64;
    for (c, ((ids, ids_raw), _)) in clusters.iter().zip(&parts) {
        let probe_offset = at;
        at += c.codes.len() as u64;
        entries.push(ClusterEntry {
            cluster: c.cluster,
            rows: c.rows.len() as u32,
            start,
            probe_offset,
            codes_checksum: xxh3_64(&c.codes),
            ids: part(&mut at, ids, *ids_raw),
            metadata: Part {
                offset: 0,
                stored: 0,
                raw: 0,
                checksum: 0,
            }, // set below
        });
        start += c.rows.len() as u64;
    }
    let rows_offset = at;
    let stride = dims * 4 + 8;
    at += (n * stride) as u64;
    for (e, (_, (meta, meta_raw))) in entries.iter_mut().zip(&parts) {
        e.metadata = part(&mut at, meta, *meta_raw);
    }
    let fences: Vec<IdFence> = id_blocks
        .iter()
        .map(|(first, stored, raw)| IdFence {
            first: first.clone(),
            block: part(&mut at, stored, *raw),
        })
        .collect();
    for (dir, blocks) in dirs.iter_mut().zip(&term_blocks) {
        for (fence, (_, stored, raw)) in dir.blocks.iter_mut().zip(blocks) {
            fence.block = part(&mut at, stored, *raw);
        }
    }
    let mut head = Vec::with_capacity(head_len);
    head.extend_from_slice(&(dims as u32).to_le_bytes());
    head.push(metric.code());
    head.push(code_bits);
    head.extend_from_slice(&[0; 2]);
    head.extend_from_slice(&(n as u64).to_le_bytes());
    head.extend_from_slice(&created_at_ms.to_le_bytes());
    head.extend_from_slice(&generation.to_le_bytes());
    head.extend_from_slice(&(code_row_bytes as u32).to_le_bytes());
    head.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    head.extend_from_slice(&(fences.len() as u32).to_le_bytes());
    head.extend_from_slice(&rows_offset.to_le_bytes());
    head.extend_from_slice(&(writer.len() as u16).to_le_bytes());
    head.extend_from_slice(writer);
    for e in &entries {
        head.extend_from_slice(&e.cluster.to_le_bytes());
        head.extend_from_slice(&e.rows.to_le_bytes());
        head.extend_from_slice(&e.probe_offset.to_le_bytes());
        head.extend_from_slice(&e.codes_checksum.to_le_bytes());
        head.extend_from_slice(&e.ids.stored.to_le_bytes());
        head.extend_from_slice(&e.ids.raw.to_le_bytes());
        head.extend_from_slice(&e.ids.checksum.to_le_bytes());
        part_bytes(&e.metadata, &mut head);
    }
    for f in &fences {
        head.extend_from_slice(&(f.first.len() as u16).to_le_bytes());
        head.extend_from_slice(f.first.as_bytes());
        part_bytes(&f.block, &mut head);
    }
    if version == TEXT_VERSION {
        text::push_dir(&dirs, &mut head);
    }
    debug_assert_eq!(head.len(), head_len);
    let mut out = Vec::with_capacity(at as usize + END_MAGIC.len());
    out.extend_from_slice(SHARD_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(&head).to_le_bytes());
    out.extend_from_slice(&head);
    for (c, ((ids, _), _)) in clusters.iter().zip(&parts) {
        out.extend_from_slice(&c.codes);
        out.extend_from_slice(ids);
    }
    debug_assert_eq!(out.len() as u64, rows_offset);
    // Each row's floats and their checksum, written in place.
    out.resize(out.len() + n * stride, 0);
    out[rows_offset as usize..]
        .par_chunks_mut(stride)
        .zip(rows.par_iter())
        .for_each(|(slot, r)| {
            let (floats, sum) = slot.split_at_mut(dims * 4);
            for (b, x) in floats.chunks_exact_mut(4).zip(r.stored_vector(dims).iter()) {
                b.copy_from_slice(&x.to_le_bytes());
            }
            sum.copy_from_slice(&xxh3_64(floats).to_le_bytes());
        });
    for (_, (meta, _)) in &parts {
        out.extend_from_slice(meta);
    }
    for (_, stored, _) in &id_blocks {
        out.extend_from_slice(stored);
    }
    for blocks in &term_blocks {
        for (_, stored, _) in blocks {
            out.extend_from_slice(stored);
        }
    }
    debug_assert_eq!(out.len() as u64, at);
    out.extend_from_slice(END_MAGIC);
    EncodedRouted {
        bytes: Bytes::from(out),
        head_bytes: (PREFIX_LEN + head_len) as u64,
    }
}

mod read;
pub(crate) mod text;

pub(crate) use read::{decode_routed, salvage_routed, IdBlock};
use text::{TermFence, TextFieldDir};

#[cfg(test)]
mod tests;
