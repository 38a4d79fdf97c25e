//! Segment encoding. See the format in the module docs.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::{
    SectionKind, SegmentHeader, CODEC_ZSTD, DIR_ENTRY_LEN, END_MAGIC, FORMAT_VERSION, MAGIC,
};
use crate::record::Prepared;

/// zstd level for ids, metadata and tombstones (text-like, compress well).
const LEVEL_TEXT: i32 = 3;
/// zstd level for vectors: floats gain little from harder work.
const LEVEL_VECTORS: i32 = 1;

/// Encodes `records` (in version order: later positions are newer) into
/// one segment object with a single group of sections.
pub fn encode_segment(header: &SegmentHeader, records: &[Prepared], index: Option<&[u8]>) -> Bytes {
    encode_segment_groups(header, &[records], index)
}

/// Encodes records split into groups (e.g. IVF clusters): each group gets
/// its own ids, vectors, metadata and tombstone sections, so a group is a
/// set of contiguous byte ranges listed in the directory. Positions run
/// through the groups in order.
pub fn encode_segment_groups(
    header: &SegmentHeader,
    groups: &[&[Prepared]],
    index: Option<&[u8]>,
) -> Bytes {
    let d = header.dimensions as usize;
    let n: usize = groups.iter().map(|g| g.len()).sum();
    let mut out = Vec::with_capacity(64 + n * (d * 4 + 64));

    // Header.
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let writer = header.writer_id.as_bytes();
    let writer = &writer[..writer.len().min(u16::MAX as usize - 64)];
    let body_len = (4 + 1 + 1 + 2 + 8 + 8 + 2 + writer.len()) as u16;
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&header.dimensions.to_le_bytes());
    out.push(metric_byte(header.metric));
    out.push(u8::from(index.is_some()));
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend_from_slice(&header.created_at_ms.to_le_bytes());
    out.extend_from_slice(&(writer.len() as u16).to_le_bytes());
    out.extend_from_slice(writer);
    let hsum = xxh3_64(&out);
    out.extend_from_slice(&hsum.to_le_bytes());

    let mut dir = Vec::new();
    let mut section = |out: &mut Vec<u8>, kind: SectionKind, group: u32, raw: &[u8], level: i32| {
        let stored = zstd::bulk::compress(raw, level).expect("zstd compress to memory");
        let offset = out.len() as u64;
        out.extend_from_slice(&stored);
        dir.push(kind as u8);
        dir.push(CODEC_ZSTD);
        dir.extend_from_slice(&0u16.to_le_bytes());
        dir.extend_from_slice(&group.to_le_bytes());
        dir.extend_from_slice(&offset.to_le_bytes());
        dir.extend_from_slice(&(stored.len() as u64).to_le_bytes());
        dir.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        dir.extend_from_slice(&xxh3_64(&stored).to_le_bytes());
    };
    for (g, records) in groups.iter().enumerate() {
        let g = g as u32;
        let n = records.len();
        let mut ids = Vec::with_capacity(8 * (n + 2) + n * 16);
        push_offsets(&mut ids, records.iter().map(|r| r.id.len()));
        for r in records.iter() {
            ids.extend_from_slice(r.id.as_bytes());
        }
        let mut vectors = Vec::with_capacity(n * d * 4);
        for r in records.iter() {
            if r.tombstone {
                vectors.resize(vectors.len() + d * 4, 0);
            } else {
                debug_assert_eq!(r.vector.len(), d);
                for x in &r.vector {
                    vectors.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let mut meta = Vec::with_capacity(8 * (n + 2));
        push_offsets(&mut meta, records.iter().map(|r| r.metadata.len()));
        for r in records.iter() {
            meta.extend_from_slice(&r.metadata);
        }
        let tombs: Vec<u8> = records.iter().map(|r| u8::from(r.tombstone)).collect();
        section(&mut out, SectionKind::Ids, g, &ids, LEVEL_TEXT);
        section(&mut out, SectionKind::Vectors, g, &vectors, LEVEL_VECTORS);
        section(&mut out, SectionKind::Metadata, g, &meta, LEVEL_TEXT);
        section(&mut out, SectionKind::Tombstones, g, &tombs, LEVEL_TEXT);
    }
    if let Some(ix) = index {
        section(&mut out, SectionKind::Index, 0, ix, LEVEL_TEXT);
    }
    debug_assert_eq!(dir.len() % DIR_ENTRY_LEN, 0);
    let entries = (dir.len() / DIR_ENTRY_LEN) as u32;
    let dsum = xxh3_64(&dir);
    out.extend_from_slice(&dir);
    out.extend_from_slice(&entries.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&dsum.to_le_bytes());
    out.extend_from_slice(END_MAGIC);
    Bytes::from(out)
}

/// Count, then `count + 1` offsets (all u64).
pub(super) fn push_offsets(out: &mut Vec<u8>, lens: impl ExactSizeIterator<Item = usize>) {
    out.extend_from_slice(&(lens.len() as u64).to_le_bytes());
    let mut at = 0u64;
    out.extend_from_slice(&at.to_le_bytes());
    for len in lens {
        at += len as u64;
        out.extend_from_slice(&at.to_le_bytes());
    }
}

pub(super) fn metric_byte(m: crate::vocab::Metric) -> u8 {
    m.code()
}
