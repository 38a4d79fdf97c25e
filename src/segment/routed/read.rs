//! Reading routed shards: the head from the object's first bytes, then
//! each part by its range, every part checked; and a whole object
//! decoded for the indexer, `verify` and repair.

use xxhash_rust::xxh3::xxh3_64;

use super::{
    corrupt, open_part, push_ids, split_offsets, split_offsets_prefix, ClusterEntry, IdFence, Part,
    RoutedHead, ShardIds, CLUSTER_LEN, FIXED_LEN, PREFIX_LEN, ROUTED_VERSION, SHARD_MAGIC,
    TEXT_VERSION,
};
use crate::record::{MAX_ID_BYTES, MAX_METADATA_BYTES};
use crate::segment::shard::{cap, Salvage};
use crate::segment::{Segment, SegmentError, END_MAGIC, MAX_SEGMENT_RECORDS};
use crate::vocab::Metric;

/// One id-index block: ids in byte order and each one's shard row (and,
/// in a shard with a text index, its field lengths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdBlock {
    pub ids: Vec<String>,
    pub rows: Vec<u32>,
    /// Per text field (the head's order), per id: its row's field length
    /// (0: no term at the key).
    pub lengths: Vec<u32>,
}

impl IdBlock {
    /// The shard row holding `id`, if this block has it.
    pub(crate) fn get(&self, id: &str) -> Option<u32> {
        self.find(id).map(|i| self.rows[i])
    }

    /// `id`'s place in the block.
    pub(crate) fn find(&self, id: &str) -> Option<usize> {
        self.ids.binary_search_by(|x| x.as_str().cmp(id)).ok()
    }

    /// The field lengths of the row at place `i`, per text field.
    pub(crate) fn lengths_of(&self, i: usize) -> impl Iterator<Item = u32> + '_ {
        let n = self.ids.len();
        self.lengths.iter().skip(i).step_by(n.max(1)).copied()
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.ids.iter().map(|s| s.len() + 24).sum::<usize>()
            + self.rows.len() * 4
            + self.lengths.len() * 4
    }
}

impl RoutedHead {
    /// Bytes per stored row: the vector and its checksum.
    pub(crate) fn row_stride(&self) -> u64 {
        self.dimensions as u64 * 4 + 8
    }

    /// Bytes of the prefix and head: what a reader fetches first.
    #[cfg(test)]
    pub(crate) fn region_len(&self) -> u64 {
        self.clusters
            .first()
            .map_or(self.rows_offset, |c| c.probe_offset)
    }

    /// The index in [`Self::clusters`] of routing cluster `cluster`, if
    /// this shard holds rows of it.
    pub(crate) fn position(&self, cluster: u32) -> Option<usize> {
        // A shard holds a run of the routing's clusters: outside it is
        // answered without the search (a query asks every shard of an
        // index for each probed cluster).
        let (first, last) = (self.clusters.first()?, self.clusters.last()?);
        if cluster < first.cluster || cluster > last.cluster {
            return None;
        }
        self.clusters
            .binary_search_by_key(&cluster, |c| c.cluster)
            .ok()
    }

    /// The byte range of cluster `i`'s probe block (codes, then ids).
    pub(crate) fn probe_range(&self, i: usize) -> std::ops::Range<u64> {
        let c = &self.clusters[i];
        c.probe_offset..c.ids.offset + u64::from(c.ids.stored)
    }

    /// Checks and splits cluster `i`'s probe block: its code block (for
    /// the quantizer to parse) and its rows' ids and tombstone flags.
    pub(crate) fn open_probe<'b>(
        &self,
        key: &str,
        i: usize,
        bytes: &'b [u8],
    ) -> Result<(&'b [u8], ShardIds), SegmentError> {
        let c = &self.clusters[i];
        let codes_len = (c.ids.offset - c.probe_offset) as usize;
        if bytes.len() as u64 != self.probe_range(i).end - c.probe_offset {
            return Err(corrupt(
                key,
                format!("the probe block of cluster {} is truncated", c.cluster),
            ));
        }
        let (codes, ids) = bytes.split_at(codes_len);
        if xxh3_64(codes) != c.codes_checksum {
            return Err(corrupt(
                key,
                format!("checksum mismatch in the codes of cluster {}", c.cluster),
            ));
        }
        Ok((codes, self.cluster_ids(key, i, ids)?))
    }

    /// Checks and parses cluster `i`'s ids (the end of its probe block,
    /// [`ClusterEntry::ids`]): its rows' ids and tombstone flags.
    pub(crate) fn cluster_ids(
        &self,
        key: &str,
        i: usize,
        ids: &[u8],
    ) -> Result<ShardIds, SegmentError> {
        let c = &self.clusters[i];
        let what = format!("the ids of cluster {}", c.cluster);
        let raw = open_part(
            key,
            &what,
            &c.ids,
            ids,
            cap(u64::from(c.rows), MAX_ID_BYTES + 1),
        )?;
        let n = c.rows as usize;
        let (offsets, body) = split_offsets_prefix(key, &what, &raw)?;
        if offsets.len() - 1 != n || body.len() != offsets[n] as usize + n {
            return Err(corrupt(
                key,
                format!("{what} do not hold one id and flag per row"),
            ));
        }
        let mut out = Vec::with_capacity(n);
        push_ids(key, &offsets, &body, &mut out)?;
        let flags = &body[offsets[n] as usize..];
        if flags.iter().any(|b| *b > 1) {
            return Err(corrupt(
                key,
                format!("{what}: tombstone flags are malformed"),
            ));
        }
        let tombstones = flags.iter().map(|b| *b == 1).collect();
        Ok(ShardIds {
            ids: out,
            tombstones,
        })
    }

    /// Byte range of rows `first..first + count` of cluster `i` (indexes
    /// within the cluster).
    pub(crate) fn rows_range(&self, i: usize, first: u64, count: u64) -> std::ops::Range<u64> {
        let s = self.rows_offset + (self.clusters[i].start + first) * self.row_stride();
        s..s + count * self.row_stride()
    }

    /// Checks and parses rows of cluster `i` from `first` (bytes as
    /// [`Self::rows_range`] addresses them): vectors, row-major.
    pub(crate) fn cluster_rows(
        &self,
        key: &str,
        i: usize,
        first: u64,
        bytes: &[u8],
    ) -> Result<Vec<f32>, SegmentError> {
        let what = format!("cluster {}", self.clusters[i].cluster);
        crate::segment::shard::checked_rows(key, &what, self.dimensions, first, bytes)
    }

    /// Checks and parses cluster `i`'s metadata: per row, the encoded JSON
    /// object (empty: none), as offsets into the bytes.
    pub(crate) fn cluster_metadata(
        &self,
        key: &str,
        i: usize,
        stored: &[u8],
    ) -> Result<(Vec<u64>, Vec<u8>), SegmentError> {
        let c = &self.clusters[i];
        let what = format!("the metadata of cluster {}", c.cluster);
        let raw = open_part(
            key,
            &what,
            &c.metadata,
            stored,
            cap(u64::from(c.rows), MAX_METADATA_BYTES),
        )?;
        let (offsets, bytes) = split_offsets(key, &what, &raw)?;
        if offsets.len() - 1 != c.rows as usize {
            return Err(corrupt(key, format!("{what} has a different row count")));
        }
        Ok((offsets, bytes))
    }

    /// The id-index block that would hold `id` (by the fence keys).
    pub(crate) fn fence_for(&self, id: &str) -> Option<usize> {
        self.fences
            .partition_point(|f| f.first.as_str() <= id)
            .checked_sub(1)
    }

    /// Checks and parses id-index block `b`.
    pub(crate) fn id_block(
        &self,
        key: &str,
        b: usize,
        stored: &[u8],
    ) -> Result<IdBlock, SegmentError> {
        let f = &self.fences[b];
        let what = format!("id-index block {b}");
        let raw = open_part(
            key,
            &what,
            &f.block,
            stored,
            cap(u64::from(u32::MAX), MAX_ID_BYTES + 4),
        )?;
        let (offsets, body) = split_offsets_prefix(key, &what, &raw)?;
        let n = offsets.len() - 1;
        let ids_end = offsets[n] as usize;
        let fields = self.text.len();
        if body.len() != ids_end + 4 * n * (1 + fields) {
            return Err(corrupt(key, format!("{what} does not hold one row per id")));
        }
        let mut ids = Vec::with_capacity(n);
        push_ids(key, &offsets, &body, &mut ids)?;
        let words = |s: &[u8]| -> Vec<u32> {
            s.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let rows = words(&body[ids_end..ids_end + 4 * n]);
        let lengths = words(&body[ids_end + 4 * n..]);
        if ids.first() != Some(&f.first)
            || ids.windows(2).any(|w| w[0] >= w[1])
            || rows.iter().any(|r| u64::from(*r) >= self.rows)
        {
            return Err(corrupt(
                key,
                format!("{what} is out of order or points past the shard"),
            ));
        }
        Ok(IdBlock { ids, rows, lengths })
    }

    /// The cluster (index in [`Self::clusters`]) holding shard row `row`,
    /// and the row's place in it.
    pub(crate) fn locate(&self, row: u64) -> (usize, u64) {
        let i = self
            .clusters
            .partition_point(|c| c.start + u64::from(c.rows) <= row);
        (i, row - self.clusters[i].start)
    }

    /// Parses the head from the object's first bytes (`region`, at least
    /// [`Self::region_len`] of them; `total_len` = the object's size).
    pub(crate) fn parse(key: &str, region: &[u8], total_len: u64) -> Result<Self, SegmentError> {
        let p = region
            .get(..PREFIX_LEN)
            .ok_or_else(|| corrupt(key, "shard is shorter than its prefix"))?;
        if &p[..8] != SHARD_MAGIC {
            return Err(corrupt(key, "not a shoal shard (bad magic)"));
        }
        let version = u16::from_le_bytes([p[8], p[9]]);
        if version != ROUTED_VERSION && version != TEXT_VERSION {
            return Err(SegmentError::UnsupportedVersion {
                key: key.into(),
                found: version,
            });
        }
        let len = u64::from_le_bytes(p[16..24].try_into().expect("8 bytes"));
        let sum = u64::from_le_bytes(p[24..32].try_into().expect("8 bytes"));
        let end = (PREFIX_LEN as u64)
            .checked_add(len)
            .filter(|e| *e <= region.len() as u64)
            .ok_or_else(|| corrupt(key, "the shard head is longer than the bytes read"))?;
        let b = &region[PREFIX_LEN..end as usize];
        if xxh3_64(b) != sum {
            return Err(corrupt(key, "shard head checksum mismatch"));
        }
        parse_head(key, b, end, total_len, version == TEXT_VERSION)
    }
}

fn parse_head(
    key: &str,
    b: &[u8],
    head_end: u64,
    total_len: u64,
    with_text: bool,
) -> Result<RoutedHead, SegmentError> {
    let bad = || corrupt(key, "malformed shard head");
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SegmentError> {
        let s = b
            .get(at..at.checked_add(n).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes"));
    let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
    let part = |s: &[u8]| Part {
        offset: u64_(&s[..8]),
        stored: u32_(&s[8..12]),
        raw: u32_(&s[12..16]),
        checksum: u64_(&s[16..24]),
    };
    let f = take(FIXED_LEN)?;
    let dims = u32_(&f[..4]) as usize;
    let metric = Metric::from_code(f[4])
        .ok_or_else(|| corrupt(key, format!("unknown metric code {}", f[4])))?;
    let code_bits = f[5];
    if !(1..=crate::segment::shard::MAX_CODE_BITS).contains(&code_bits) {
        return Err(corrupt(
            key,
            format!("codes of {code_bits} bits per dimension"),
        ));
    }
    let rows = u64_(&f[8..16]);
    let created_at_ms = u64_(&f[16..24]);
    let generation = u64_(&f[24..32]);
    let code_row_bytes = u32_(&f[32..36]);
    let nclusters = u32_(&f[36..40]) as usize;
    let nfences = u32_(&f[40..44]) as usize;
    let rows_offset = u64_(&f[44..52]);
    let wlen = u16::from_le_bytes([f[52], f[53]]) as usize;
    let writer_id = std::str::from_utf8(take(wlen)?)
        .map_err(|_| corrupt(key, "writer id is not UTF-8"))?
        .to_string();
    if dims == 0 || dims > crate::vocab::MAX_DIMENSIONS as usize {
        return Err(corrupt(key, format!("invalid dimensions {dims}")));
    }
    if rows == 0
        || rows > MAX_SEGMENT_RECORDS
        || nclusters == 0
        || nclusters as u64 > rows
        || code_row_bytes == 0
    {
        return Err(corrupt(
            key,
            format!("{rows} rows in {nclusters} clusters is implausible"),
        ));
    }
    let stride = dims as u64 * 4 + 8;
    let body_end = total_len.saturating_sub(END_MAGIC.len() as u64);
    let inside =
        |s: u64, len: u64| s >= head_end && s.checked_add(len).is_some_and(|e| e <= body_end);
    if !inside(rows_offset, rows.checked_mul(stride).ok_or_else(bad)?) {
        return Err(corrupt(key, "the shard head misplaces its rows"));
    }
    let mut clusters: Vec<ClusterEntry> = Vec::with_capacity(nclusters);
    let (mut start, mut next_probe) = (0u64, head_end);
    for _ in 0..nclusters {
        let s = take(CLUSTER_LEN)?;
        let cluster = u32_(&s[..4]);
        let n = u32_(&s[4..8]);
        let probe_offset = u64_(&s[8..16]);
        let codes_len = u64::from(n) * u64::from(code_row_bytes);
        let ids = Part {
            offset: probe_offset.saturating_add(codes_len),
            stored: u32_(&s[24..28]),
            raw: u32_(&s[28..32]),
            checksum: u64_(&s[32..40]),
        };
        let e = ClusterEntry {
            cluster,
            rows: n,
            start,
            probe_offset,
            codes_checksum: u64_(&s[16..24]),
            ids,
            metadata: part(&s[40..64]),
        };
        let ordered = clusters.last().is_none_or(|p| p.cluster < cluster);
        if !ordered
            || n == 0
            || probe_offset != next_probe
            || !inside(probe_offset, codes_len + u64::from(ids.stored))
            || !inside(e.metadata.offset, u64::from(e.metadata.stored))
        {
            return Err(corrupt(
                key,
                format!("cluster {cluster} of the shard head is inconsistent"),
            ));
        }
        next_probe = ids.offset + u64::from(ids.stored);
        start += u64::from(n);
        clusters.push(e);
    }
    if start != rows {
        return Err(corrupt(
            key,
            format!("clusters hold {start} rows, the head says {rows}"),
        ));
    }
    let mut fences: Vec<IdFence> = Vec::with_capacity(nfences);
    for i in 0..nfences {
        let flen = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let first = std::str::from_utf8(take(flen)?)
            .map_err(|_| corrupt(key, "an id fence is not UTF-8"))?
            .to_string();
        let block = part(take(24)?);
        if fences.last().is_some_and(|p| p.first >= first)
            || !inside(block.offset, u64::from(block.stored))
        {
            return Err(corrupt(
                key,
                format!("id fence {i} of the shard head is inconsistent"),
            ));
        }
        fences.push(IdFence { first, block });
    }
    let text = if with_text {
        let (dirs, read) = super::text::parse_dir(key, &b[at..], rows, inside)?;
        at += read;
        dirs
    } else {
        Vec::new()
    };
    if at != b.len() || fences.is_empty() {
        return Err(corrupt(
            key,
            "shard head has the wrong length for its clusters",
        ));
    }
    Ok(RoutedHead {
        dimensions: dims,
        metric,
        rows,
        created_at_ms,
        generation,
        code_bits,
        code_row_bytes,
        writer_id,
        rows_offset,
        clusters,
        fences,
        text,
    })
}

/// Reads what it can of a routed shard object (issue 28 F4, for
/// `repair --shard`): the head whole (else the error), each cluster's ids
/// from its probe block or, when that is damaged, from the id index; then
/// row by row. A row whose vector or metadata block fails its checksum is
/// lost by id; a row whose id neither place gives is lost, id unknown.
pub(crate) fn salvage_routed(key: &str, buf: &[u8]) -> Result<Salvage, SegmentError> {
    let head = RoutedHead::parse(key, buf, buf.len() as u64)?;
    let slice = |r: std::ops::Range<u64>| buf.get(r.start as usize..r.end as usize);
    let n = head.rows as usize;
    let mut ids: Vec<Option<String>> = vec![None; n];
    for (i, c) in head.clusters.iter().enumerate() {
        let probe = slice(head.probe_range(i)).and_then(|b| head.open_probe(key, i, b).ok());
        if let Some((_, cids)) = probe {
            for (j, id) in cids.ids.into_iter().enumerate() {
                if !cids.tombstones[j] {
                    ids[c.start as usize + j] = Some(id);
                }
            }
        }
    }
    if ids.iter().any(Option::is_none) {
        for (b, f) in head.fences.iter().enumerate() {
            let Some(block) = slice(f.block.range()).and_then(|x| head.id_block(key, b, x).ok())
            else {
                continue;
            };
            for (id, row) in block.ids.into_iter().zip(block.rows) {
                ids[row as usize].get_or_insert(id);
            }
        }
    }
    let (mut rows, mut lost, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    let stride = head.row_stride() as usize;
    for (i, c) in head.clusters.iter().enumerate() {
        let meta = slice(c.metadata.range()).and_then(|b| head.cluster_metadata(key, i, b).ok());
        let body = slice(head.rows_range(i, 0, u64::from(c.rows)));
        for j in 0..u64::from(c.rows) {
            let row = c.start + j;
            if ids[row as usize].is_none() {
                unknown.push(row);
                continue;
            }
            let at = j as usize * stride;
            let vector = body
                .and_then(|b| b.get(at..at + stride))
                .and_then(|r| head.cluster_rows(key, i, j, r).ok());
            match (vector, &meta) {
                (Some(v), Some((offsets, bytes))) => {
                    let md = bytes[offsets[j as usize] as usize..offsets[j as usize + 1] as usize]
                        .to_vec();
                    rows.push((row, v, md));
                }
                _ => lost.push(row),
            }
        }
    }
    Ok(Salvage {
        ids: ShardIds {
            ids: ids.into_iter().map(Option::unwrap_or_default).collect(),
            tombstones: vec![false; n],
        },
        rows,
        lost,
        unknown,
    })
}

/// Decodes a whole routed shard: its head, its rows as a [`Segment`] in
/// shard-row order, and each cluster's code block (a merge copies codes
/// of the same routing as they are).
pub(crate) fn decode_routed(
    key: &str,
    buf: &[u8],
) -> Result<(RoutedHead, Segment, Vec<Vec<u8>>), SegmentError> {
    if !buf.ends_with(END_MAGIC) {
        return Err(corrupt(key, "shard is truncated (no end magic)"));
    }
    let head = RoutedHead::parse(key, buf, buf.len() as u64)?;
    let slice = |r: std::ops::Range<u64>| &buf[r.start as usize..r.end as usize];
    let n = head.rows as usize;
    let (mut ids, mut tombstones) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut vectors = Vec::with_capacity(n * head.dimensions);
    let (mut meta_offsets, mut meta_bytes) = (vec![0u64], Vec::new());
    let mut codes = Vec::with_capacity(head.clusters.len());
    for (i, c) in head.clusters.iter().enumerate() {
        let (code, cids) = head.open_probe(key, i, slice(head.probe_range(i)))?;
        codes.push(code.to_vec());
        ids.extend(cids.ids);
        tombstones.extend(cids.tombstones);
        vectors.extend(head.cluster_rows(
            key,
            i,
            0,
            slice(head.rows_range(i, 0, u64::from(c.rows))),
        )?);
        let (offsets, bytes) = head.cluster_metadata(key, i, slice(c.metadata.range()))?;
        let base = meta_bytes.len() as u64;
        meta_offsets.extend(offsets[1..].iter().map(|o| o + base));
        meta_bytes.extend_from_slice(&bytes);
    }
    // The id index must name every row once, under its own id.
    let mut seen = 0usize;
    for (b, f) in head.fences.iter().enumerate() {
        let block = head.id_block(key, b, slice(f.block.range()))?;
        for (id, row) in block.ids.iter().zip(&block.rows) {
            if ids[*row as usize] != *id {
                return Err(corrupt(
                    key,
                    format!("the id index names row {row} under another id"),
                ));
            }
        }
        seen += block.ids.len();
    }
    if seen != n {
        return Err(corrupt(
            key,
            format!("the id index holds {seen} ids for {n} rows"),
        ));
    }
    let header = crate::segment::shard::whole_shard_header(
        head.dimensions,
        head.metric,
        head.rows,
        head.created_at_ms,
        &head.writer_id,
    );
    let segment = Segment {
        header,
        ids,
        vectors,
        meta_offsets,
        meta_bytes,
        tombstones,
        index: None,
        stored_bytes: buf.len() as u64,
        maps: Default::default(),
    };
    Ok((head, segment, codes))
}
