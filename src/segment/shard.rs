//! The range-readable shard format (DESIGN section 11, format 2): an IVF
//! index laid out so a reader fetches the head first and then only the
//! lists, codes and rows a query needs, each with one ranged GET.
//!
//! # Layout
//!
//! All integers little-endian.
//!
//! ```text
//! prefix    magic "SHOALSHD" (8) | version u16 | reserved (6) |
//!           head length u64 | xxh3-64 of the head
//! head      dimensions u32 | metric u8 | code bits u8 | reserved (2) |
//!           rows u64 |
//!           created-at unix ms u64 | list count u32 | writer id length u16 |
//!           writer id | centroids (lists × dimensions f32) |
//!           per list: first row u64, rows u64, codes (offset, length,
//!           xxh3-64), rows offset u64, metadata (offset, stored length,
//!           raw length, xxh3-64) | ids (offset, stored, raw, xxh3-64)
//! ids       zstd(count u64, (count+1) u64 offsets, UTF-8 ids,
//!                count tombstone bytes), every row in list order
//! codes     per IVF list: its code block (opaque here; the indexer
//!           writes RaBitQ codes of the head's code bits per dimension,
//!           `index::rabitq`), raw
//! rows      per list, per row: dimensions × f32 | xxh3-64 of those bytes
//!           (raw, so row r of a list is at a computable offset)
//! metadata  per list: zstd(count u64, (count+1) u64 offsets, JSON objects)
//! end       magic "SHOALEND" (8)
//! ```
//!
//! The prefix, head and ids (the *head region*) are what a reader needs
//! before it can plan a query; its length is recorded in the index
//! manifest (`headBytes`), so one ranged GET of the object's first bytes
//! fetches it. Codes and metadata are checked against the head's
//! checksums, each row against its own, so a ranged read of any part is
//! verified.
//!
//! Versions: 2 records the code bits per dimension in the head; version
//! 1 (same layout, that byte reserved as 0) has one-bit codes, and is
//! still read.
//!
//! [`decode_shard`] turns a whole object into a [`Segment`] (records in
//! list order), which is how the indexer, `verify` and repair read shards.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::decode::{corrupt, open_section};
use super::encode::{metric_byte, push_offsets};
use super::{
    SectionEntry, Segment, SegmentError, SegmentHeader, CODEC_ZSTD, END_MAGIC, FORMAT_VERSION,
    MAX_SEGMENT_RECORDS,
};
use crate::record::{Prepared, MAX_ID_BYTES, MAX_METADATA_BYTES};

/// Most bits per dimension a code block may have (a coordinate of a code
/// fits a byte; `index::rabitq` writes at most this many).
pub(crate) const MAX_CODE_BITS: u8 = 8;
use crate::vocab::Metric;

pub(crate) const SHARD_MAGIC: &[u8; 8] = b"SHOALSHD";
/// The version written. Readers also take [`SHARD_VERSION_ONE_BIT`].
pub(crate) const SHARD_VERSION: u16 = 2;
/// Shards written before codes had more than one bit per dimension.
pub(crate) const SHARD_VERSION_ONE_BIT: u16 = 1;
pub(crate) const PREFIX_LEN: usize = 32;
const LIST_ENTRY_LEN: usize = 80;
/// zstd level for ids and metadata.
const LEVEL_TEXT: i32 = 3;

/// Whether `buf` starts like a shard of this format.
pub(crate) fn is_shard(buf: &[u8]) -> bool {
    buf.get(..8) == Some(SHARD_MAGIC.as_slice())
}

/// A compressed block: where it is, how big, and its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
    pub checksum: u64,
}

impl Block {
    pub(crate) fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.stored_len
    }
}

/// One IVF list in the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListEntry {
    /// The list's first row in the shard (rows run through lists in order).
    pub start: u64,
    pub rows: u64,
    /// The RaBitQ code block (raw: stored = raw length).
    pub codes: Block,
    /// Where the list's first row starts.
    pub rows_offset: u64,
    pub metadata: Block,
}

/// A shard's head: everything needed to plan a query on it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ShardHead {
    pub dimensions: usize,
    pub metric: Metric,
    /// Bits per dimension of the lists' code blocks.
    pub code_bits: u8,
    pub rows: u64,
    pub created_at_ms: u64,
    pub writer_id: String,
    /// `lists × dimensions`.
    pub centroids: Vec<f32>,
    pub lists: Vec<ListEntry>,
    pub ids: Block,
}

impl ShardHead {
    pub(crate) fn nlist(&self) -> usize {
        self.lists.len()
    }

    pub(crate) fn centroid(&self, l: usize) -> &[f32] {
        &self.centroids[l * self.dimensions..(l + 1) * self.dimensions]
    }

    /// Bytes per stored row: the vector and its checksum.
    pub(crate) fn row_stride(&self) -> u64 {
        self.dimensions as u64 * 4 + 8
    }

    /// Byte range of rows `first..first + count` of list `l` (indexes
    /// within the list).
    pub(crate) fn rows_range(&self, l: usize, first: u64, count: u64) -> std::ops::Range<u64> {
        let e = &self.lists[l];
        let s = e.rows_offset + first * self.row_stride();
        s..s + count * self.row_stride()
    }

    /// The list holding shard row `row`.
    pub(crate) fn list_of(&self, row: u64) -> usize {
        self.lists.partition_point(|e| e.start + e.rows <= row)
    }

    /// The header a [`Segment`] decoded from this shard carries.
    pub(crate) fn segment_header(&self) -> SegmentHeader {
        whole_shard_header(
            self.dimensions,
            self.metric,
            self.rows,
            self.created_at_ms,
            &self.writer_id,
        )
    }

    /// Checks a list's code block against its checksum (the quantizer
    /// parses it).
    pub(crate) fn check_codes(
        &self,
        key: &str,
        l: usize,
        stored: &[u8],
    ) -> Result<(), SegmentError> {
        if xxh3_64(stored) != self.lists[l].codes.checksum {
            return Err(corrupt(
                key,
                format!("checksum mismatch in the codes of list {l}"),
            ));
        }
        Ok(())
    }

    /// Checks and parses `count` rows of list `l` starting at `first`
    /// (`bytes` as [`Self::rows_range`] addresses them): vectors, row-major.
    pub(crate) fn list_rows(
        &self,
        key: &str,
        l: usize,
        first: u64,
        bytes: &[u8],
    ) -> Result<Vec<f32>, SegmentError> {
        checked_rows(key, &format!("list {l}"), self.dimensions, first, bytes)
    }

    /// Checks and parses a list's metadata block: per row, the encoded
    /// JSON object (empty: none), as offsets into the bytes.
    pub(crate) fn list_metadata(
        &self,
        key: &str,
        l: usize,
        stored: &[u8],
    ) -> Result<(Vec<u64>, Vec<u8>), SegmentError> {
        let e = &self.lists[l];
        let raw = open_block(
            key,
            3,
            l as u32,
            &e.metadata,
            stored,
            cap(e.rows, MAX_METADATA_BYTES),
        )?;
        let (offsets, bytes) = super::decode::split_offsets(key, "metadata", &raw)?;
        if offsets.len() as u64 - 1 != e.rows {
            return Err(corrupt(
                key,
                format!("metadata of list {l} has a different row count"),
            ));
        }
        Ok((offsets, bytes))
    }
}

/// Every row's id and tombstone flag, in row order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ShardIds {
    pub ids: Vec<String>,
    pub tombstones: Vec<bool>,
}

/// What [`encode_shard`] made.
pub(crate) struct EncodedShard {
    pub bytes: Bytes,
    /// Length of the head region (ids block, head, footer).
    pub head_bytes: u64,
}

/// Checks and parses stored rows (each `dims` f32 and the xxh3-64 of
/// their bytes) of `what` (e.g. "list 3"), the first being row `first`:
/// vectors, row-major. Shared by both shard formats.
pub(super) fn checked_rows(
    key: &str,
    what: &str,
    dims: usize,
    first: u64,
    bytes: &[u8],
) -> Result<Vec<f32>, SegmentError> {
    let stride = dims * 4 + 8;
    if !bytes.len().is_multiple_of(stride) {
        return Err(corrupt(key, format!("rows of {what} are truncated")));
    }
    let mut out = Vec::with_capacity(bytes.len() / stride * dims);
    for (j, row) in bytes.chunks_exact(stride).enumerate() {
        let (v, sum) = row.split_at(stride - 8);
        if xxh3_64(v) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
            return Err(corrupt(
                key,
                format!("checksum mismatch in row {} of {what}", first + j as u64),
            ));
        }
        out.extend(
            v.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
    }
    Ok(out)
}

/// The header of a shard decoded whole into a [`Segment`] (either shard
/// format): the segment format's version, no index section.
pub(super) fn whole_shard_header(
    dimensions: usize,
    metric: Metric,
    rows: u64,
    created_at_ms: u64,
    writer_id: &str,
) -> SegmentHeader {
    SegmentHeader {
        format_version: FORMAT_VERSION,
        dimensions: dimensions as u32,
        metric,
        record_count: rows,
        created_at_ms,
        writer_id: writer_id.to_string(),
        has_index: false,
    }
}

/// The most raw bytes a count-offsets-items block of `rows` items of at
/// most `per` bytes each can hold (a bound for decompression).
pub(super) fn cap(rows: u64, per: usize) -> u64 {
    (rows + 1) * 8 + 8 + rows * per as u64
}

fn open_block(
    key: &str,
    kind: u8,
    group: u32,
    b: &Block,
    stored: &[u8],
    max_raw: u64,
) -> Result<Vec<u8>, SegmentError> {
    let e = SectionEntry {
        kind,
        codec: CODEC_ZSTD,
        group,
        offset: b.offset,
        stored_len: b.stored_len,
        raw_len: b.raw_len,
        checksum: b.checksum,
    };
    open_section(key, &e, stored, max_raw)
}

/// Encodes an IVF shard: `groups[l]` are the rows of the list with
/// centroid `centroids[l]`, `codes[l]` its code block of `code_bits` bits
/// per dimension.
pub(crate) fn encode_shard(
    header: &SegmentHeader,
    centroids: &[f32],
    groups: &[&[Prepared]],
    codes: &[Vec<u8>],
    code_bits: u8,
) -> EncodedShard {
    assert_eq!(groups.len(), codes.len(), "one code block per list");
    let d = header.dimensions as usize;
    let code_bytes: usize = codes.iter().map(|c| c.len()).sum();
    let n: usize = groups.iter().map(|g| g.len()).sum();
    let compress = |raw: &[u8]| zstd::bulk::compress(raw, LEVEL_TEXT).expect("zstd to memory");
    // The ids block, then the body (codes, rows, metadata) with offsets
    // relative to its start; both are placed after the head below.
    let all = || groups.iter().flat_map(|g| g.iter());
    let mut ids_raw = Vec::new();
    push_offsets(
        &mut ids_raw,
        all().map(|r| r.id.len()).collect::<Vec<_>>().into_iter(),
    );
    for r in all() {
        ids_raw.extend_from_slice(r.id.as_bytes());
    }
    ids_raw.extend(all().map(|r| u8::from(r.tombstone)));
    let ids_stored = compress(&ids_raw);
    let mut body = Vec::with_capacity(code_bytes + n * (d * 4 + 8 + 48));
    let codes: Vec<(u64, u64, u64)> = codes
        .iter()
        .map(|c| {
            let at = body.len() as u64;
            body.extend_from_slice(c);
            (at, c.len() as u64, xxh3_64(c))
        })
        .collect();
    let mut rows_at = Vec::with_capacity(groups.len());
    for g in groups {
        rows_at.push(body.len() as u64);
        for r in g.iter() {
            let start = body.len();
            for x in r.stored_vector(d).iter() {
                body.extend_from_slice(&x.to_le_bytes());
            }
            let sum = xxh3_64(&body[start..]);
            body.extend_from_slice(&sum.to_le_bytes());
        }
    }
    let mut metas = Vec::with_capacity(groups.len());
    for g in groups {
        let mut raw = Vec::new();
        push_offsets(&mut raw, g.iter().map(|r| r.metadata.len()));
        for r in g.iter() {
            raw.extend_from_slice(&r.metadata);
        }
        let stored = compress(&raw);
        metas.push((
            body.len() as u64,
            stored.len() as u64,
            raw.len() as u64,
            xxh3_64(&stored),
        ));
        body.extend_from_slice(&stored);
    }
    // Where everything lands: prefix, head, ids, body.
    let writer = header.writer_id.as_bytes();
    let writer = &writer[..writer.len().min(1024)];
    let head_len = head_len(writer.len(), groups.len(), d);
    let ids_at = (PREFIX_LEN + head_len) as u64;
    let body_at = ids_at + ids_stored.len() as u64;
    let mut head = Vec::with_capacity(head_len);
    head.extend_from_slice(&(d as u32).to_le_bytes());
    head.push(metric_byte(header.metric));
    head.push(code_bits);
    head.extend_from_slice(&[0u8; 2]);
    head.extend_from_slice(&(n as u64).to_le_bytes());
    head.extend_from_slice(&header.created_at_ms.to_le_bytes());
    head.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    head.extend_from_slice(&(writer.len() as u16).to_le_bytes());
    head.extend_from_slice(writer);
    for x in centroids {
        head.extend_from_slice(&x.to_le_bytes());
    }
    let mut start = 0u64;
    for (l, g) in groups.iter().enumerate() {
        let (c_at, c_len, c_sum) = codes[l];
        let (m_at, m_len, m_raw, m_sum) = metas[l];
        for v in [
            start,
            g.len() as u64,
            body_at + c_at,
            c_len,
            c_sum,
            body_at + rows_at[l],
            body_at + m_at,
            m_len,
            m_raw,
            m_sum,
        ] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        start += g.len() as u64;
    }
    for v in [
        ids_at,
        ids_stored.len() as u64,
        ids_raw.len() as u64,
        xxh3_64(&ids_stored),
    ] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    debug_assert_eq!(head.len(), head_len);
    let mut out = Vec::with_capacity(body_at as usize + body.len() + END_MAGIC.len());
    out.extend_from_slice(SHARD_MAGIC);
    out.extend_from_slice(&SHARD_VERSION.to_le_bytes());
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&(head_len as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(&head).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&ids_stored);
    out.extend_from_slice(&body);
    out.extend_from_slice(END_MAGIC);
    EncodedShard {
        bytes: Bytes::from(out),
        head_bytes: body_at,
    }
}

/// Bytes of a head for a writer id of `writer` bytes, `nlist` lists
/// and `dims` dimensions.
fn head_len(writer: usize, nlist: usize, dims: usize) -> usize {
    30 + writer + nlist * (dims * 4 + LIST_ENTRY_LEN) + 32
}

/// The head's length from the prefix (the object's first
/// [`PREFIX_LEN`] bytes): a reader that does not know the head region's
/// length reads this much first.
pub(crate) fn prefix_head_len(key: &str, prefix: &[u8]) -> Result<u64, SegmentError> {
    check_prefix(key, prefix).map(|(_, len)| len)
}

/// The format version and the head's length, from the prefix.
fn check_prefix(key: &str, prefix: &[u8]) -> Result<(u16, u64), SegmentError> {
    let p = prefix
        .get(..PREFIX_LEN)
        .ok_or_else(|| corrupt(key, "shard is shorter than its prefix"))?;
    if !is_shard(p) {
        return Err(corrupt(key, "not a shoal shard (bad magic)"));
    }
    let version = u16::from_le_bytes(p[8..10].try_into().expect("2 bytes"));
    if version != SHARD_VERSION && version != SHARD_VERSION_ONE_BIT {
        return Err(SegmentError::UnsupportedVersion {
            key: key.to_string(),
            found: version,
        });
    }
    Ok((
        version,
        u64::from_le_bytes(p[16..24].try_into().expect("8 bytes")),
    ))
}

/// Parses the head region (`region` = the object's first bytes, at least
/// through the ids block; `total_len` = the object's size): the head and
/// every row's id.
pub(crate) fn decode_head_region(
    key: &str,
    region: &[u8],
    total_len: u64,
) -> Result<(ShardHead, ShardIds), SegmentError> {
    let (version, head_len) = check_prefix(key, region)?;
    let head_sum = u64::from_le_bytes(region[24..32].try_into().expect("8 bytes"));
    let head_end = (PREFIX_LEN as u64)
        .checked_add(head_len)
        .filter(|e| *e <= region.len() as u64)
        .ok_or_else(|| corrupt(key, "the shard head is longer than the bytes read"))?
        as usize;
    let head_bytes = &region[PREFIX_LEN..head_end];
    if xxh3_64(head_bytes) != head_sum {
        return Err(corrupt(key, "shard head checksum mismatch"));
    }
    let head = parse_head(key, version, head_bytes, head_end as u64, total_len)?;
    let stored = region
        .get(head.ids.range().start as usize..head.ids.range().end as usize)
        .ok_or_else(|| corrupt(key, "the ids block is longer than the bytes read"))?;
    let raw = open_block(
        key,
        1,
        0,
        &head.ids,
        stored,
        cap(head.rows, MAX_ID_BYTES + 1),
    )?;
    let n = head.rows as usize;
    let (offsets, body) = super::decode::split_offsets_prefix(key, "ids", &raw)?;
    if offsets.len() - 1 != n || body.len() != offsets[n] as usize + n {
        return Err(corrupt(
            key,
            "ids block does not hold one id and flag per row",
        ));
    }
    let mut ids = Vec::with_capacity(n);
    super::decode::push_ids(key, &offsets, &body, &mut ids)?;
    let flags = &body[offsets[n] as usize..];
    if flags.iter().any(|b| *b > 1) {
        return Err(corrupt(key, "tombstone flags are malformed"));
    }
    let tombstones = flags.iter().map(|b| *b == 1).collect();
    Ok((head, ShardIds { ids, tombstones }))
}

fn parse_head(
    key: &str,
    version: u16,
    b: &[u8],
    head_end: u64,
    total_len: u64,
) -> Result<ShardHead, SegmentError> {
    let bad = || corrupt(key, "malformed shard head");
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SegmentError> {
        let s = b
            .get(at..at.checked_add(n).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
    let dims = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
    let kind = take(4)?;
    let metric = match kind[0] {
        1 => Metric::Cosine,
        2 => Metric::Euclidean,
        3 => Metric::Dot,
        m => return Err(corrupt(key, format!("unknown metric code {m}"))),
    };
    // Version 1 shards hold one-bit codes (the byte was reserved, 0).
    let code_bits = match (version, kind[1]) {
        (SHARD_VERSION_ONE_BIT, _) => 1,
        (_, b @ 1..=MAX_CODE_BITS) => b,
        (_, b) => return Err(corrupt(key, format!("codes of {b} bits per dimension"))),
    };
    let rows = u64_(take(8)?);
    let created_at_ms = u64_(take(8)?);
    let nlist = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
    let wlen = u16::from_le_bytes(take(2)?.try_into().expect("2")) as usize;
    let writer_id = std::str::from_utf8(take(wlen)?)
        .map_err(|_| corrupt(key, "writer id is not UTF-8"))?
        .to_string();
    if dims == 0 || dims > crate::vocab::MAX_DIMENSIONS as usize {
        return Err(corrupt(key, format!("invalid dimensions {dims}")));
    }
    if rows > MAX_SEGMENT_RECORDS || nlist == 0 || nlist as u64 > rows.max(1) {
        return Err(corrupt(
            key,
            format!("{rows} rows in {nlist} lists is implausible"),
        ));
    }
    let want = nlist * dims * 4 + nlist * LIST_ENTRY_LEN + 32;
    if b.len() != 30 + wlen + want {
        return Err(corrupt(
            key,
            "shard head has the wrong length for its lists",
        ));
    }
    let centroids: Vec<f32> = take(nlist * dims * 4)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    if centroids.iter().any(|x| !x.is_finite()) {
        return Err(corrupt(key, "a centroid is not finite"));
    }
    let mut lists = Vec::with_capacity(nlist);
    let mut next_row = 0u64;
    for l in 0..nlist {
        let v: Vec<u64> = take(LIST_ENTRY_LEN)?.chunks_exact(8).map(u64_).collect();
        let e = ListEntry {
            start: v[0],
            rows: v[1],
            codes: Block {
                offset: v[2],
                stored_len: v[3],
                raw_len: v[3],
                checksum: v[4],
            },
            rows_offset: v[5],
            metadata: Block {
                offset: v[6],
                stored_len: v[7],
                raw_len: v[8],
                checksum: v[9],
            },
        };
        let stride = dims as u64 * 4 + 8;
        // Every part lies after the head and before the end magic.
        let body_end = total_len.saturating_sub(END_MAGIC.len() as u64);
        let inside = |s: u64, len: Option<u64>| {
            s >= head_end
                && len
                    .and_then(|l| s.checked_add(l))
                    .is_some_and(|end| end <= body_end)
        };
        if e.start != next_row
            || !inside(e.codes.offset, Some(e.codes.stored_len))
            || !inside(e.rows_offset, e.rows.checked_mul(stride))
            || !inside(e.metadata.offset, Some(e.metadata.stored_len))
        {
            return Err(corrupt(
                key,
                format!("list {l} of the shard head is inconsistent"),
            ));
        }
        next_row += e.rows;
        lists.push(e);
    }
    if next_row != rows {
        return Err(corrupt(
            key,
            format!("lists hold {next_row} rows, the head says {rows}"),
        ));
    }
    let v: Vec<u64> = take(32)?.chunks_exact(8).map(u64_).collect();
    let ids = Block {
        offset: v[0],
        stored_len: v[1],
        raw_len: v[2],
        checksum: v[3],
    };
    if ids.offset != head_end
        || ids
            .offset
            .checked_add(ids.stored_len)
            .is_none_or(|e| e > total_len)
    {
        return Err(corrupt(key, "the shard head misplaces the ids block"));
    }
    Ok(ShardHead {
        dimensions: dims,
        metric,
        code_bits,
        rows,
        created_at_ms,
        writer_id,
        centroids,
        lists,
        ids,
    })
}

/// Decodes a whole shard object into a [`Segment`]: rows in list order,
/// with an IVF index section of its centroids and list boundaries.
pub(crate) fn decode_shard(key: &str, buf: &[u8]) -> Result<Segment, SegmentError> {
    prefix_head_len(key, buf)?;
    if !buf.ends_with(END_MAGIC) {
        return Err(corrupt(key, "shard is truncated (no end magic)"));
    }
    let (head, ids) = decode_head_region(key, buf, buf.len() as u64)?;
    let d = head.dimensions;
    let slice = |r: std::ops::Range<u64>| &buf[r.start as usize..r.end as usize];
    let mut vectors = Vec::with_capacity(head.rows as usize * d);
    let mut meta_offsets = vec![0u64];
    let mut meta_bytes = Vec::new();
    for (l, e) in head.lists.iter().enumerate() {
        head.check_codes(key, l, slice(e.codes.range()))?;
        vectors.extend(head.list_rows(key, l, 0, slice(head.rows_range(l, 0, e.rows)))?);
        let (offsets, bytes) = head.list_metadata(key, l, slice(e.metadata.range()))?;
        let base = meta_bytes.len() as u64;
        meta_offsets.extend(offsets[1..].iter().map(|o| o + base));
        meta_bytes.extend_from_slice(&bytes);
    }
    Ok(Segment {
        header: head.segment_header(),
        ids: ids.ids,
        vectors,
        meta_offsets,
        meta_bytes,
        tombstones: ids.tombstones,
        // Read whole, a shard is searched without its IVF lists (only
        // shards listed without `headBytes` are, which this format never
        // is); the range-read path uses them.
        index: None,
        stored_bytes: buf.len() as u64,
        maps: Default::default(),
    })
}

/// What could be read of a damaged shard (issue 28 F4): every row whose
/// vector and metadata pass their checksums, and the rows that do not.
/// The head (and its ids) must be readable: without it nothing is known.
pub(crate) struct Salvage {
    pub ids: ShardIds,
    /// (row, vector, encoded metadata) of each readable row, in row order.
    pub rows: Vec<(u64, Vec<f32>, Vec<u8>)>,
    /// Rows whose vector or metadata failed its checksum.
    pub lost: Vec<u64>,
    /// Rows whose id could not be read (their place in `ids` is empty):
    /// lost, ids unknown.
    pub unknown: Vec<u64>,
}

/// Reads what it can of a shard object: the head whole (else the error),
/// then row by row (a list whose metadata block is damaged loses all its
/// rows: a row without its metadata is not the row that was written).
pub(crate) fn salvage_shard(key: &str, buf: &[u8]) -> Result<Salvage, SegmentError> {
    let (head, ids) = decode_head_region(key, buf, buf.len() as u64)?;
    let stride = head.row_stride() as usize;
    let slice = |r: std::ops::Range<u64>| buf.get(r.start as usize..r.end as usize);
    let mut rows = Vec::new();
    let mut lost = Vec::new();
    for (l, e) in head.lists.iter().enumerate() {
        let meta = slice(e.metadata.range()).and_then(|b| head.list_metadata(key, l, b).ok());
        let body = slice(head.rows_range(l, 0, e.rows));
        for j in 0..e.rows {
            let at = j as usize * stride;
            let vector = body
                .and_then(|b| b.get(at..at + stride))
                .and_then(|r| head.list_rows(key, l, j, r).ok());
            match (vector, &meta) {
                (Some(v), Some((offsets, bytes))) => {
                    let md = bytes[offsets[j as usize] as usize..offsets[j as usize + 1] as usize]
                        .to_vec();
                    rows.push((e.start + j, v, md));
                }
                _ => lost.push(e.start + j),
            }
        }
    }
    Ok(Salvage {
        ids,
        rows,
        lost,
        unknown: Vec::new(),
    })
}
