//! Batch objects: one write's records for several partitions in one
//! object, so a batch costs one PUT however many partitions it touches
//! (issue 30). Each partition's records are a complete segment (format 1,
//! see the module docs) at a byte range of the object; the partition's
//! manifest entry names the object and that range, so readers, compaction
//! and the indexer read a section exactly as they read a segment.
//!
//! # Format, version 1
//!
//! ```text
//! sections  complete segments, back to back, one per partition
//! directory one 20-byte entry per section: partition u32, offset u64,
//!           length u64 (ascending offsets, no overlap)
//! tail      entry count u32 | format version u16 | reserved u16 |
//!           xxh3-64 of the directory u64 | magic "SHOALBAT" (8)
//! ```
//!
//! Nothing reads the directory on the query path (manifests carry the
//! ranges); it lets `shoal repair` and `shoal verify` find a partition's
//! sections in objects no manifest names.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::SegmentError;

pub(crate) const BATCH_MAGIC: &[u8; 8] = b"SHOALBAT";
const BATCH_VERSION: u16 = 1;
const ENTRY_LEN: usize = 20;
const TAIL_LEN: usize = 24;

/// Where one partition's segment sits in a batch object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSection {
    pub partition: u32,
    pub offset: u64,
    pub length: u64,
}

/// Concatenates encoded segments (one per partition, partitions distinct)
/// into one batch object; returns it and where each landed.
pub fn encode_batch(sections: &[(u32, Bytes)]) -> (Bytes, Vec<BatchSection>) {
    let body: usize = sections.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(body + sections.len() * ENTRY_LEN + TAIL_LEN);
    let mut placed = Vec::with_capacity(sections.len());
    for (p, bytes) in sections {
        placed.push(BatchSection {
            partition: *p,
            offset: out.len() as u64,
            length: bytes.len() as u64,
        });
        out.extend_from_slice(bytes);
    }
    let mut dir = Vec::with_capacity(placed.len() * ENTRY_LEN);
    for s in &placed {
        dir.extend_from_slice(&s.partition.to_le_bytes());
        dir.extend_from_slice(&s.offset.to_le_bytes());
        dir.extend_from_slice(&s.length.to_le_bytes());
    }
    out.extend_from_slice(&dir);
    out.extend_from_slice(&(placed.len() as u32).to_le_bytes());
    out.extend_from_slice(&BATCH_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&xxh3_64(&dir).to_le_bytes());
    out.extend_from_slice(BATCH_MAGIC);
    (Bytes::from(out), placed)
}

/// Whether `buf` ends like a batch object.
pub fn is_batch(buf: &[u8]) -> bool {
    buf.len() >= TAIL_LEN && buf.ends_with(BATCH_MAGIC)
}

/// Reads a whole batch object's directory, checking every entry lies
/// inside the object, before the directory, without overlap.
pub fn decode_batch(key: &str, buf: &[u8]) -> Result<Vec<BatchSection>, SegmentError> {
    let bad = |reason: String| SegmentError::Corrupt {
        key: key.to_string(),
        reason,
    };
    if !is_batch(buf) {
        return Err(bad("not a batch object (no SHOALBAT tail)".into()));
    }
    let tail = &buf[buf.len() - TAIL_LEN..];
    let count = u32::from_le_bytes(tail[0..4].try_into().unwrap()) as usize;
    let version = u16::from_le_bytes(tail[4..6].try_into().unwrap());
    if version != BATCH_VERSION {
        return Err(SegmentError::UnsupportedVersion {
            key: key.to_string(),
            found: version,
        });
    }
    let sum = u64::from_le_bytes(tail[8..16].try_into().unwrap());
    let dir_len = count
        .checked_mul(ENTRY_LEN)
        .filter(|&n| n <= buf.len() - TAIL_LEN)
        .ok_or_else(|| bad(format!("directory of {count} entries exceeds the object")))?;
    let dir_start = buf.len() - TAIL_LEN - dir_len;
    let dir = &buf[dir_start..buf.len() - TAIL_LEN];
    if xxh3_64(dir) != sum {
        return Err(bad("directory checksum mismatch".into()));
    }
    let mut out = Vec::with_capacity(count);
    let mut next = 0u64;
    for e in dir.chunks_exact(ENTRY_LEN) {
        let s = BatchSection {
            partition: u32::from_le_bytes(e[0..4].try_into().unwrap()),
            offset: u64::from_le_bytes(e[4..12].try_into().unwrap()),
            length: u64::from_le_bytes(e[12..20].try_into().unwrap()),
        };
        let end = s.offset.checked_add(s.length);
        if s.offset < next || end.is_none_or(|end| end > dir_start as u64) {
            return Err(bad(format!(
                "section of partition {} at {}+{} overlaps another or the directory",
                s.partition, s.offset, s.length
            )));
        }
        if out
            .iter()
            .any(|o: &BatchSection| o.partition == s.partition)
        {
            return Err(bad(format!("partition {} has two sections", s.partition)));
        }
        next = s.offset + s.length;
        out.push(s);
    }
    Ok(out)
}

/// The bytes of `section` within a whole object of `buf`, or an error
/// naming `key` when the object is shorter than the manifest says.
pub fn slice_section<'a>(
    key: &str,
    buf: &'a [u8],
    offset: u64,
    length: u64,
) -> Result<&'a [u8], SegmentError> {
    offset
        .checked_add(length)
        .filter(|&end| end <= buf.len() as u64)
        .map(|end| &buf[offset as usize..end as usize])
        .ok_or_else(|| SegmentError::Corrupt {
            key: key.to_string(),
            reason: format!(
                "section {offset}+{length} lies beyond the object's {} bytes",
                buf.len()
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_come_back_where_they_were_put() {
        let a = Bytes::from_static(b"first segment bytes");
        let b = Bytes::from_static(b"second");
        let (obj, placed) = encode_batch(&[(3, a.clone()), (9, b.clone())]);
        assert_eq!(decode_batch("k", &obj).unwrap(), placed);
        assert_eq!(placed[0].partition, 3);
        let s = placed[1];
        assert_eq!(
            slice_section("k", &obj, s.offset, s.length).unwrap(),
            &b[..]
        );
        assert!(slice_section("k", &obj, s.offset, 10_000).is_err());
    }

    #[test]
    fn a_damaged_directory_is_reported_with_the_key() {
        let (obj, _) = encode_batch(&[(1, Bytes::from_static(b"abc"))]);
        let mut bad = obj.to_vec();
        let at = bad.len() - TAIL_LEN - 1;
        bad[at] ^= 0xff;
        let e = decode_batch("vectors/p000/1-bx.seg", &bad).unwrap_err();
        assert!(e.to_string().contains("vectors/p000/1-bx.seg"), "{e}");
        assert!(decode_batch("k", b"short").is_err());
        let truncated = &obj[..obj.len() - 3];
        assert!(decode_batch("k", truncated).is_err());
    }
}
