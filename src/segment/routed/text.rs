//! The text index of a routed shard (format version 4): per searchable
//! key, its statistics and a term dictionary whose blocks carry each
//! term's postings inline, with the first term of every block (its
//! fence) in the head. A text query reads one block per query term; a
//! term's postings never span blocks.
//!
//! # Layout
//!
//! ```text
//! head      (after the id fences) fields u16 |
//!           per field: key length u8 | key | analyzer length u8 |
//!             analyzer | docs u64 | total length u64 | term blocks u32 |
//!             per block: first term length u16 | first term |
//!             offset u64 | stored u32 | raw u32 | xxh3-64
//! terms     (after the id index) per field, per block:
//!           zstd(count u32, per term: length u16 | term | postings u32,
//!           then per term, per posting: row delta u32 | term frequency
//!           u32 | field length u32)
//! ```
//!
//! `docs` counts the shard's rows holding a term at the key and `total
//! length` sums their field lengths; id-index blocks of a version-4
//! shard carry each row's field lengths too (`read::IdBlock`), so the
//! indexer can record what the rows it marks dead held.

use super::{corrupt, open_part, Part, RoutedHead};
use crate::segment::SegmentError;
use crate::text::postings::FieldPostings;
use crate::vocab::Analyzer;

/// Raw bytes a term block holds before a new one starts (a term's
/// postings may make one bigger: they never span blocks).
const TERM_BLOCK_BYTES: usize = 32 << 10;
/// The most bytes one term block may decompress to.
const MAX_TERM_BLOCK_RAW: u64 = 1 << 30;

/// A term block and the first term it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TermFence {
    pub first: String,
    pub block: Part,
}

/// One searchable key of a shard's text index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TextFieldDir {
    pub key: String,
    pub analyzer: Analyzer,
    /// Rows holding a term at the key.
    pub docs: u64,
    /// Their field lengths, summed.
    pub total_len: u64,
    pub blocks: Vec<TermFence>,
}

/// One term block, parsed: its terms and their postings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TermBlock {
    terms: Vec<String>,
    /// Term `i`'s postings are `starts[i]..starts[i + 1]`.
    starts: Vec<usize>,
    pub rows: Vec<u32>,
    pub tfs: Vec<u32>,
    pub lens: Vec<u32>,
}

impl TermBlock {
    /// The postings of `term` (indexes into `rows`, `tfs`, `lens`).
    pub(crate) fn postings(&self, term: &str) -> std::ops::Range<usize> {
        match self.terms.binary_search_by(|t| t.as_str().cmp(term)) {
            Ok(i) => self.starts[i]..self.starts[i + 1],
            Err(_) => 0..0,
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.terms.iter().map(|t| t.len() + 24).sum::<usize>() + self.rows.len() * 12
    }
}

/// One field's term blocks, compressed: (first term, stored, raw length).
pub(super) fn encode_blocks(p: &FieldPostings) -> Vec<(String, Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.terms.len() {
        let (mut end, mut bytes) = (i, 0usize);
        while end < p.terms.len() && (end == i || bytes < TERM_BLOCK_BYTES) {
            bytes += 6 + p.terms[end].0.len() + 12 * p.terms[end].1.len();
            end += 1;
        }
        let terms = &p.terms[i..end];
        let mut raw = Vec::with_capacity(bytes + 4);
        raw.extend_from_slice(&(terms.len() as u32).to_le_bytes());
        for (t, posts) in terms {
            raw.extend_from_slice(&(t.len() as u16).to_le_bytes());
            raw.extend_from_slice(t.as_bytes());
            raw.extend_from_slice(&(posts.len() as u32).to_le_bytes());
        }
        for (_, posts) in terms {
            let mut prev = 0u32;
            for &(row, tf) in posts {
                raw.extend_from_slice(&(row - prev).to_le_bytes());
                raw.extend_from_slice(&tf.to_le_bytes());
                raw.extend_from_slice(&p.lengths[row as usize].to_le_bytes());
                prev = row;
            }
        }
        out.push((terms[0].0.clone(), super::compress(&raw), raw.len()));
        i = end;
    }
    out
}

/// Bytes the text directory takes in the head.
pub(super) fn dir_len(dirs: &[TextFieldDir]) -> usize {
    2 + dirs
        .iter()
        .map(|d| {
            1 + d.key.len()
                + 1
                + d.analyzer.as_str().len()
                + 8
                + 8
                + 4
                + d.blocks.iter().map(|b| 2 + b.first.len() + 24).sum::<usize>()
        })
        .sum::<usize>()
}

/// Appends the text directory to the head.
pub(super) fn push_dir(dirs: &[TextFieldDir], head: &mut Vec<u8>) {
    head.extend_from_slice(&(dirs.len() as u16).to_le_bytes());
    for d in dirs {
        head.push(d.key.len() as u8);
        head.extend_from_slice(d.key.as_bytes());
        head.push(d.analyzer.as_str().len() as u8);
        head.extend_from_slice(d.analyzer.as_str().as_bytes());
        head.extend_from_slice(&d.docs.to_le_bytes());
        head.extend_from_slice(&d.total_len.to_le_bytes());
        head.extend_from_slice(&(d.blocks.len() as u32).to_le_bytes());
        for b in &d.blocks {
            head.extend_from_slice(&(b.first.len() as u16).to_le_bytes());
            head.extend_from_slice(b.first.as_bytes());
            super::part_bytes(&b.block, head);
        }
    }
}

/// Parses the text directory from `b` (the rest of the head), checking
/// each block lies where `inside` allows; returns it and the bytes read.
pub(super) fn parse_dir(
    key: &str,
    b: &[u8],
    rows: u64,
    inside: impl Fn(u64, u64) -> bool,
) -> Result<(Vec<TextFieldDir>, usize), SegmentError> {
    let bad = || corrupt(key, "malformed text directory in the shard head");
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
    let text = |s: &[u8], what: &str| {
        std::str::from_utf8(s)
            .map(str::to_string)
            .map_err(|_| corrupt(key, format!("{what} in the text directory is not UTF-8")))
    };
    let n = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
    let mut dirs: Vec<TextFieldDir> = Vec::with_capacity(n);
    for _ in 0..n {
        let klen = take(1)?[0] as usize;
        let field = text(take(klen)?, "a key")?;
        let alen = take(1)?[0] as usize;
        let name = text(take(alen)?, "an analyzer")?;
        let analyzer: Analyzer = name.parse().map_err(|_| {
            corrupt(
                key,
                format!("text field {field:?} has an unknown analyzer {name:?}"),
            )
        })?;
        let s = take(20)?;
        let (docs, total_len, nblocks) = (u64_(&s[..8]), u64_(&s[8..16]), u32_(&s[16..20]));
        let mut blocks: Vec<TermFence> = Vec::with_capacity((nblocks as usize).min(1 << 16));
        for i in 0..nblocks {
            let flen = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            let first = text(take(flen)?, "a term fence")?;
            let s = take(24)?;
            let block = Part {
                offset: u64_(&s[..8]),
                stored: u32_(&s[8..12]),
                raw: u32_(&s[12..16]),
                checksum: u64_(&s[16..24]),
            };
            if blocks.last().is_some_and(|p| p.first >= first)
                || !inside(block.offset, u64::from(block.stored))
            {
                return Err(corrupt(
                    key,
                    format!("term block {i} of text field {field:?} is inconsistent"),
                ));
            }
            blocks.push(TermFence { first, block });
        }
        if docs > rows || dirs.last().is_some_and(|p| p.key >= field) {
            return Err(corrupt(
                key,
                format!("text field {field:?} of the shard head is inconsistent"),
            ));
        }
        dirs.push(TextFieldDir {
            key: field,
            analyzer,
            docs,
            total_len,
            blocks,
        });
    }
    Ok((dirs, at))
}

impl RoutedHead {
    /// The text field of `key` analyzed by `analyzer`, if this shard
    /// indexes it (by position in [`RoutedHead::text`]).
    pub(crate) fn text_field(&self, key: &str, analyzer: Analyzer) -> Option<usize> {
        self.text
            .iter()
            .position(|d| d.key == key && d.analyzer == analyzer)
    }

    /// The term block of field `f` that would hold `term`.
    pub(crate) fn term_fence(&self, f: usize, term: &str) -> Option<usize> {
        self.text[f]
            .blocks
            .partition_point(|b| b.first.as_str() <= term)
            .checked_sub(1)
    }

    /// Checks and parses term block `b` of field `f`.
    pub(crate) fn term_block(
        &self,
        key: &str,
        f: usize,
        b: usize,
        stored: &[u8],
    ) -> Result<TermBlock, SegmentError> {
        let d = &self.text[f];
        let fence = &d.blocks[b];
        let what = format!("term block {b} of text field {:?}", d.key);
        let raw = open_part(key, &what, &fence.block, stored, MAX_TERM_BLOCK_RAW)?;
        let bad = || corrupt(key, format!("{what} is malformed"));
        let count = u32::from_le_bytes(raw.get(..4).ok_or_else(bad)?.try_into().expect("4"));
        let mut at = 4usize;
        let mut terms = Vec::with_capacity((count as usize).min(raw.len()));
        let mut starts = vec![0usize];
        for _ in 0..count {
            let len = u16::from_le_bytes(raw.get(at..at + 2).ok_or_else(bad)?.try_into().expect("2"));
            at += 2;
            let t = raw.get(at..at + len as usize).ok_or_else(bad)?;
            let t = std::str::from_utf8(t).map_err(|_| bad())?.to_string();
            at += len as usize;
            let n = u32::from_le_bytes(raw.get(at..at + 4).ok_or_else(bad)?.try_into().expect("4"));
            at += 4;
            if terms.last().is_some_and(|p: &String| *p >= t) {
                return Err(corrupt(key, format!("{what} is out of order")));
            }
            terms.push(t);
            starts.push(starts.last().expect("one") + n as usize);
        }
        let total = *starts.last().expect("one");
        if terms.first() != Some(&fence.first)
            || raw.len().checked_sub(at) != total.checked_mul(12)
        {
            return Err(corrupt(
                key,
                format!("{what} does not hold the postings it lists"),
            ));
        }
        let (mut rows, mut tfs, mut lens) = (
            Vec::with_capacity(total),
            Vec::with_capacity(total),
            Vec::with_capacity(total),
        );
        let word = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        for w in starts.windows(2) {
            let mut row = 0u64;
            for (j, i) in (w[0]..w[1]).enumerate() {
                let p = at + 12 * i;
                let delta = word(p);
                row += u64::from(delta);
                if (j > 0 && delta == 0) || row >= self.rows {
                    return Err(corrupt(
                        key,
                        format!("{what} has postings out of order or past the shard"),
                    ));
                }
                rows.push(row as u32);
                tfs.push(word(p + 4));
                lens.push(word(p + 8));
            }
        }
        Ok(TermBlock {
            terms,
            starts,
            rows,
            tfs,
            lens,
        })
    }
}
