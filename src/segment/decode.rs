//! Segment decoding: never panics, never trusts a length.

use std::io::Read;

use xxhash_rust::xxh3::xxh3_64;

use super::{
    SectionEntry, SectionKind, Segment, SegmentError, SegmentHeader, CODEC_RAW, CODEC_ZSTD,
    DIR_ENTRY_LEN, END_MAGIC, FORMAT_VERSION, MAGIC, MAX_SEGMENT_RECORDS, TAIL_LEN,
};
use crate::coord::Metric;
use crate::record::{MAX_ID_BYTES, MAX_METADATA_BYTES};

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

fn corrupt(key: &str, reason: impl Into<String>) -> SegmentError {
    SegmentError::Corrupt {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parses and verifies the header at the start of `buf`; returns it and
/// where the header ends.
pub fn decode_header(key: &str, buf: &[u8]) -> Result<(SegmentHeader, usize), SegmentError> {
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
    let metric = match b.u8().ok_or_else(bad)? {
        1 => Metric::Cosine,
        2 => Metric::Euclidean,
        3 => Metric::Dot,
        m => return Err(corrupt(key, format!("unknown metric code {m}"))),
    };
    let flags = b.u8().ok_or_else(bad)?;
    b.u16().ok_or_else(bad)?;
    let record_count = b.u64().ok_or_else(bad)?;
    let created_at_ms = b.u64().ok_or_else(bad)?;
    let wlen = b.u16().ok_or_else(bad)? as usize;
    let writer_id = std::str::from_utf8(b.take(wlen).ok_or_else(bad)?)
        .map_err(|_| corrupt(key, "writer id is not UTF-8"))?
        .to_string();
    if dimensions == 0 || dimensions > crate::coord::config::MAX_DIMENSIONS {
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
pub fn open_section(
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

/// Splits an offsets-then-bytes section into its `n` items.
fn split_offsets(
    key: &str,
    what: &str,
    raw: &[u8],
    n: usize,
) -> Result<(Vec<u64>, Vec<u8>), SegmentError> {
    let head = (n + 1) * 8;
    if raw.len() < head {
        return Err(corrupt(
            key,
            format!("{what} section too short for {n} records"),
        ));
    }
    let offsets: Vec<u64> = raw[..head]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let body = &raw[head..];
    if offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1]) || offsets[n] != body.len() as u64
    {
        return Err(corrupt(key, format!("{what} offsets are inconsistent")));
    }
    Ok((offsets, body.to_vec()))
}

/// Decodes a whole segment object.
pub fn decode_segment(key: &str, buf: &[u8]) -> Result<Segment, SegmentError> {
    let (header, header_end) = decode_header(key, buf)?;
    let tail = decode_tail(key, buf, buf.len() as u64)?;
    let n = header.record_count as usize;
    let d = header.dimensions as u64;
    let find = |kind: SectionKind| tail.entries.iter().find(|e| e.kind == kind as u8);
    let section = |kind: SectionKind, max_raw: u64| -> Result<Option<Vec<u8>>, SegmentError> {
        let Some(e) = find(kind) else { return Ok(None) };
        if e.offset < header_end as u64 {
            return Err(corrupt(
                key,
                format!("section {} overlaps the header", e.kind),
            ));
        }
        let stored = &buf[e.offset as usize..(e.offset + e.stored_len) as usize];
        open_section(key, e, stored, max_raw).map(Some)
    };
    let need = |kind: SectionKind, v: Option<Vec<u8>>| {
        v.ok_or_else(|| corrupt(key, format!("missing {kind:?} section")))
    };
    let n64 = n as u64;
    let ids_raw = need(
        SectionKind::Ids,
        section(SectionKind::Ids, (n64 + 1) * 8 + n64 * MAX_ID_BYTES as u64)?,
    )?;
    let (id_offsets, id_bytes) = split_offsets(key, "ids", &ids_raw, n)?;
    let mut ids = Vec::with_capacity(n);
    for w in id_offsets.windows(2) {
        let s = std::str::from_utf8(&id_bytes[w[0] as usize..w[1] as usize])
            .map_err(|_| corrupt(key, "an id is not UTF-8"))?;
        ids.push(s.to_string());
    }
    let vec_raw = need(
        SectionKind::Vectors,
        section(SectionKind::Vectors, n64 * d * 4)?,
    )?;
    if vec_raw.len() as u64 != n64 * d * 4 {
        return Err(corrupt(key, "vectors section has the wrong size"));
    }
    let vectors: Vec<f32> = vec_raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let meta_raw = need(
        SectionKind::Metadata,
        section(
            SectionKind::Metadata,
            (n64 + 1) * 8 + n64 * MAX_METADATA_BYTES as u64,
        )?,
    )?;
    let (meta_offsets, meta_bytes) = split_offsets(key, "metadata", &meta_raw, n)?;
    let tomb_raw = need(
        SectionKind::Tombstones,
        section(SectionKind::Tombstones, n64)?,
    )?;
    if tomb_raw.len() != n || tomb_raw.iter().any(|b| *b > 1) {
        return Err(corrupt(key, "tombstone section is malformed"));
    }
    let index = section(SectionKind::Index, buf.len() as u64 * 64)?;
    Ok(Segment {
        header,
        ids,
        vectors,
        meta_offsets,
        meta_bytes,
        tombstones: tomb_raw.into_iter().map(|b| b == 1).collect(),
        index,
        maps: Default::default(),
    })
}
