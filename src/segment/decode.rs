//! Segment decoding: never panics, never trusts a length.

use std::io::Read;

use xxhash_rust::xxh3::xxh3_64;

use super::{
    SectionEntry, SectionKind, Segment, SegmentError, SegmentHeader, CODEC_RAW, CODEC_ZSTD,
    DIR_ENTRY_LEN, END_MAGIC, FORMAT_VERSION, MAGIC, MAX_SEGMENT_RECORDS, TAIL_LEN,
};
use crate::record::{MAX_ID_BYTES, MAX_METADATA_BYTES};
use crate::vocab::Metric;

/// Little-endian reader over a byte slice with bounds checks.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// A [`SegmentError::Corrupt`] naming `key` (every format's decoder).
pub(super) fn corrupt(key: &str, reason: impl Into<String>) -> SegmentError {
    SegmentError::Corrupt {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parses and verifies the header at the start of `buf`; returns it and
/// where the header ends.
pub(super) fn decode_header(key: &str, buf: &[u8]) -> Result<(SegmentHeader, usize), SegmentError> {
    let short = || corrupt(key, format!("truncated header ({} bytes)", buf.len()));
    let mut c = Cursor { buf, at: 0 };
    let magic = c.take(8).ok_or_else(short)?;
    if magic != MAGIC {
        return Err(corrupt(key, "not a shoal segment (bad magic)"));
    }
    let version = c.u16().ok_or_else(short)?;
    if version != FORMAT_VERSION {
        return Err(SegmentError::UnsupportedVersion {
            key: key.to_string(),
            found: version,
        });
    }
    let body_len = c.u16().ok_or_else(short)? as usize;
    let body = c.take(body_len).ok_or_else(short)?;
    let header_end = c.at;
    let sum = c.u64().ok_or_else(short)?;
    if xxh3_64(&buf[..header_end]) != sum {
        return Err(corrupt(key, "header checksum mismatch"));
    }
    let mut b = Cursor { buf: body, at: 0 };
    let bad = || corrupt(key, "malformed header body");
    let dimensions = b.u32().ok_or_else(bad)?;
    let code = b.u8().ok_or_else(bad)?;
    let metric = Metric::from_code(code)
        .ok_or_else(|| corrupt(key, format!("unknown metric code {code}")))?;
    let flags = b.u8().ok_or_else(bad)?;
    b.u16().ok_or_else(bad)?;
    let record_count = b.u64().ok_or_else(bad)?;
    let created_at_ms = b.u64().ok_or_else(bad)?;
    let wlen = b.u16().ok_or_else(bad)? as usize;
    let writer_id = std::str::from_utf8(b.take(wlen).ok_or_else(bad)?)
        .map_err(|_| corrupt(key, "writer id is not UTF-8"))?
        .to_string();
    if dimensions == 0 || dimensions > crate::vocab::MAX_DIMENSIONS {
        return Err(corrupt(key, format!("invalid dimensions {dimensions}")));
    }
    if record_count > MAX_SEGMENT_RECORDS {
        return Err(corrupt(
            key,
            format!("record count {record_count} is implausible"),
        ));
    }
    Ok((
        SegmentHeader {
            format_version: version,
            dimensions,
            metric,
            record_count,
            created_at_ms,
            writer_id,
            has_index: flags & 1 == 1,
        },
        header_end + 8,
    ))
}

/// The directory read from the end of a segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Tail {
    pub entries: Vec<SectionEntry>,
    /// Where the directory starts (sections must end before it).
    pub directory_offset: u64,
}

/// Parses the directory from the last bytes of an object of `total_len`
/// bytes; `end` holds at least the tail (and the directory for success).
pub fn decode_tail(key: &str, end: &[u8], total_len: u64) -> Result<Tail, SegmentError> {
    if end.len() < TAIL_LEN {
        return Err(corrupt(
            key,
            format!("truncated: {total_len} bytes is too short"),
        ));
    }
    let tail = &end[end.len() - TAIL_LEN..];
    let mut c = Cursor { buf: tail, at: 0 };
    let count = c.u32().unwrap_or(0) as usize;
    c.u32();
    let dsum = c.u64().unwrap_or(0);
    if c.take(8) != Some(END_MAGIC.as_slice()) {
        return Err(corrupt(
            key,
            "missing end marker (truncated or not a shoal segment)",
        ));
    }
    let dir_len = count
        .checked_mul(DIR_ENTRY_LEN)
        .filter(|&l| l + TAIL_LEN <= end.len())
        .ok_or_else(|| corrupt(key, format!("directory of {count} entries does not fit")))?;
    let dir = &end[end.len() - TAIL_LEN - dir_len..end.len() - TAIL_LEN];
    if xxh3_64(dir) != dsum {
        return Err(corrupt(key, "directory checksum mismatch"));
    }
    let directory_offset = total_len - (TAIL_LEN + dir_len) as u64;
    let mut c = Cursor { buf: dir, at: 0 };
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let bad = || corrupt(key, "malformed directory entry");
        let kind = c.u8().ok_or_else(bad)?;
        let codec = c.u8().ok_or_else(bad)?;
        c.u16().ok_or_else(bad)?;
        let group = c.u32().ok_or_else(bad)?;
        let e = SectionEntry {
            kind,
            codec,
            group,
            offset: c.u64().ok_or_else(bad)?,
            stored_len: c.u64().ok_or_else(bad)?,
            raw_len: c.u64().ok_or_else(bad)?,
            checksum: c.u64().ok_or_else(bad)?,
        };
        let end = e.offset.checked_add(e.stored_len);
        if end.is_none_or(|end| end > directory_offset) {
            return Err(corrupt(
                key,
                format!(
                    "section {kind} at {}+{} overruns the object",
                    e.offset, e.stored_len
                ),
            ));
        }
        entries.push(e);
    }
    Ok(Tail {
        entries,
        directory_offset,
    })
}

/// Verifies and decompresses one section's stored bytes, refusing more
/// than `max_raw` bytes of output.
pub(super) fn open_section(
    key: &str,
    e: &SectionEntry,
    stored: &[u8],
    max_raw: u64,
) -> Result<Vec<u8>, SegmentError> {
    if xxh3_64(stored) != e.checksum {
        return Err(corrupt(
            key,
            format!("checksum mismatch in section {}", e.kind),
        ));
    }
    if e.raw_len > max_raw {
        return Err(corrupt(
            key,
            format!(
                "section {} claims {} bytes, more than possible ({max_raw})",
                e.kind, e.raw_len
            ),
        ));
    }
    let raw = match e.codec {
        CODEC_RAW => stored.to_vec(),
        CODEC_ZSTD => {
            let mut out = Vec::new();
            let decoder = zstd::stream::read::Decoder::new(stored)
                .map_err(|err| corrupt(key, format!("zstd: {err}")))?;
            // Grows with real output only, and never past raw_len + 1.
            decoder
                .take(e.raw_len + 1)
                .read_to_end(&mut out)
                .map_err(|err| {
                    corrupt(
                        key,
                        format!("section {} does not decompress: {err}", e.kind),
                    )
                })?;
            out
        }
        c => {
            return Err(corrupt(
                key,
                format!("unknown codec {c} in section {}", e.kind),
            ))
        }
    };
    if raw.len() as u64 != e.raw_len {
        return Err(corrupt(
            key,
            format!(
                "section {} is {} bytes, directory says {}",
                e.kind,
                raw.len(),
                e.raw_len
            ),
        ));
    }
    Ok(raw)
}

/// Splits a count-offsets-bytes section into its items' offsets and bytes.
pub(super) fn split_offsets(
    key: &str,
    what: &str,
    raw: &[u8],
) -> Result<(Vec<u64>, Vec<u8>), SegmentError> {
    let (offsets, body) = split_offsets_prefix(key, what, raw)?;
    if offsets[offsets.len() - 1] != body.len() as u64 {
        return Err(corrupt(key, format!("{what} offsets are inconsistent")));
    }
    Ok((offsets, body))
}

/// Like [`split_offsets`], but the items may be followed by more bytes
/// (returned with them, after the last offset).
pub(super) fn split_offsets_prefix(
    key: &str,
    what: &str,
    raw: &[u8],
) -> Result<(Vec<u64>, Vec<u8>), SegmentError> {
    let short = || corrupt(key, format!("{what} section is too short"));
    let count = u64::from_le_bytes(raw.get(..8).ok_or_else(short)?.try_into().expect("8 bytes"));
    let head = count
        .checked_add(1)
        .and_then(|c| c.checked_mul(8))
        .and_then(|h| h.checked_add(8))
        .filter(|&h| h <= raw.len() as u64)
        .ok_or_else(short)? as usize;
    let offsets: Vec<u64> = raw[8..head]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let body = &raw[head..];
    if offsets[0] != 0
        || offsets.windows(2).any(|w| w[0] > w[1])
        || offsets[offsets.len() - 1] > body.len() as u64
    {
        return Err(corrupt(key, format!("{what} offsets are inconsistent")));
    }
    Ok((offsets, body.to_vec()))
}

/// Appends the ids that `offsets` cut out of `bytes`, refusing one that
/// is not UTF-8.
pub(super) fn push_ids(
    key: &str,
    offsets: &[u64],
    bytes: &[u8],
    ids: &mut Vec<String>,
) -> Result<(), SegmentError> {
    for w in offsets.windows(2) {
        let s = std::str::from_utf8(&bytes[w[0] as usize..w[1] as usize])
            .map_err(|_| corrupt(key, "an id is not UTF-8"))?;
        ids.push(s.to_string());
    }
    Ok(())
}

/// Decodes a whole segment object (or a whole range-readable shard, see
/// [`super::shard`], or a routed one, [`super::routed`], its rows in
/// shard-row order).
pub fn decode_segment(key: &str, buf: &[u8]) -> Result<Segment, SegmentError> {
    if super::shard::is_shard(buf) {
        let routed = [super::routed::ROUTED_VERSION, super::routed::TEXT_VERSION];
        if routed.iter().any(|v| buf.get(8..10) == Some(&v.to_le_bytes()[..])) {
            return super::routed::decode_routed(key, buf).map(|(_, seg, _)| seg);
        }
        return super::shard::decode_shard(key, buf);
    }
    let (header, header_end) = decode_header(key, buf)?;
    let tail = decode_tail(key, buf, buf.len() as u64)?;
    let n = header.record_count;
    let d = u64::from(header.dimensions);
    let section =
        |kind: SectionKind, group: u32, max_raw: u64| -> Result<Option<Vec<u8>>, SegmentError> {
            let Some(e) = tail
                .entries
                .iter()
                .find(|e| e.kind == kind as u8 && e.group == group)
            else {
                return Ok(None);
            };
            if e.offset < header_end as u64 {
                return Err(corrupt(
                    key,
                    format!("section {} overlaps the header", e.kind),
                ));
            }
            let stored = &buf[e.offset as usize..(e.offset + e.stored_len) as usize];
            open_section(key, e, stored, max_raw).map(Some)
        };
    let need = |kind: SectionKind, group: u32, v: Option<Vec<u8>>| {
        v.ok_or_else(|| corrupt(key, format!("missing {kind:?} section of group {group}")))
    };
    let groups = tail
        .entries
        .iter()
        .filter(|e| e.kind == SectionKind::Ids as u8)
        .count() as u32;
    if groups == 0 {
        return Err(corrupt(key, "missing Ids section"));
    }
    let cap = |per: u64| (n + 1) * 8 + 8 + n * per;
    let mut ids = Vec::with_capacity((n as usize).min(4096));
    let mut vectors = Vec::new();
    let mut meta_offsets = vec![0u64];
    let mut meta_bytes = Vec::new();
    let mut tombstones = Vec::new();
    for g in 0..groups {
        let ids_raw = need(
            SectionKind::Ids,
            g,
            section(SectionKind::Ids, g, cap(MAX_ID_BYTES as u64))?,
        )?;
        let (id_offsets, id_bytes) = split_offsets(key, "ids", &ids_raw)?;
        let count = id_offsets.len() - 1;
        if ids.len() as u64 + count as u64 > n {
            return Err(corrupt(
                key,
                format!("groups hold more than the {n} records in the header"),
            ));
        }
        push_ids(key, &id_offsets, &id_bytes, &mut ids)?;
        let want = count as u64 * d * 4;
        let vec_raw = need(
            SectionKind::Vectors,
            g,
            section(SectionKind::Vectors, g, want)?,
        )?;
        if vec_raw.len() as u64 != want {
            return Err(corrupt(
                key,
                format!("vectors section of group {g} has the wrong size"),
            ));
        }
        vectors.extend(
            vec_raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
        let meta_raw = need(
            SectionKind::Metadata,
            g,
            section(SectionKind::Metadata, g, cap(MAX_METADATA_BYTES as u64))?,
        )?;
        let (m_offsets, m_bytes) = split_offsets(key, "metadata", &meta_raw)?;
        if m_offsets.len() - 1 != count {
            return Err(corrupt(
                key,
                format!("metadata of group {g} has a different record count"),
            ));
        }
        let base = meta_bytes.len() as u64;
        meta_offsets.extend(m_offsets[1..].iter().map(|o| o + base));
        meta_bytes.extend_from_slice(&m_bytes);
        let tomb_raw = need(
            SectionKind::Tombstones,
            g,
            section(SectionKind::Tombstones, g, count as u64)?,
        )?;
        if tomb_raw.len() != count || tomb_raw.iter().any(|b| *b > 1) {
            return Err(corrupt(
                key,
                format!("tombstone section of group {g} is malformed"),
            ));
        }
        tombstones.extend(tomb_raw.into_iter().map(|b| b == 1));
    }
    if ids.len() as u64 != n {
        return Err(corrupt(
            key,
            format!("groups hold {} records, the header says {n}", ids.len()),
        ));
    }
    let index = section(SectionKind::Index, 0, buf.len() as u64 * 64)?;
    Ok(Segment {
        header,
        ids,
        vectors,
        meta_offsets,
        meta_bytes,
        tombstones,
        index,
        stored_bytes: buf.len() as u64,
        maps: Default::default(),
    })
}
