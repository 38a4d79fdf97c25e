//! Deletion vectors (DESIGN section 11): which rows of an immutable shard
//! are dead (superseded by a newer version or deleted). One bit per row,
//! immutable once written: marking more rows dead writes a new vector that
//! replaces the old one in the same index-manifest commit.
//!
//! Layout, little-endian: magic `SHDV`, format version (u16), rows (u64),
//! dead rows (u64), the bitset (`ceil(rows / 64)` u64 words, row `i` is bit
//! `i % 64` of word `i / 64`), then (version 2, for a shard with a text
//! index) what the dead rows held per text field: fields (u16), per
//! field dead rows holding a term at the key (u64) and their field
//! lengths summed (u64); then an xxh3-64 checksum of everything before it. The
//! decoder never panics: anything else is [`SegmentError::Corrupt`]
//! naming the key.
//!
//! A reader subtracts the version-2 sums from the shard's text
//! statistics, so BM25 never counts a dead row; a shard whose vector
//! lacks them (written by an older shoal) is searched without its text
//! index.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::SegmentError;

const MAGIC: &[u8; 4] = b"SHDV";
const VERSION: u16 = 1;
/// The version with text statistics.
const TEXT_VERSION: u16 = 2;
const HEAD: usize = 4 + 2 + 8 + 8;

/// The dead rows of one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletionVector {
    rows: u64,
    words: Vec<u64>,
    dead: u64,
    /// Per text field of the shard: dead rows holding text at the key and
    /// their field lengths summed (`None`: not recorded).
    text: Option<Vec<(u64, u64)>>,
}

impl DeletionVector {
    /// No row of a `rows`-row shard dead.
    pub fn new(rows: u64) -> Self {
        DeletionVector {
            rows,
            words: vec![0; rows.div_ceil(64) as usize],
            dead: 0,
            text: None,
        }
    }

    /// No row dead, of a shard with a text index of `fields` fields.
    pub fn with_text(rows: u64, fields: usize) -> Self {
        DeletionVector {
            text: (fields > 0).then(|| vec![(0, 0); fields]),
            ..DeletionVector::new(rows)
        }
    }

    /// Per text field: dead rows holding a term at the key and their
    /// field lengths summed; `None` when the vector does not record them.
    pub fn text_dead(&self) -> Option<&[(u64, u64)]> {
        self.text.as_deref()
    }

    /// Marks row `i` dead as [`Self::mark`] does and, when it was live,
    /// records its field `lengths` (per text field; 0: no term).
    pub fn mark_with_lengths(&mut self, i: u64, lengths: impl Iterator<Item = u32>) -> bool {
        let was_live = self.mark(i);
        if let (true, Some(text)) = (was_live, self.text.as_mut()) {
            for (t, l) in text.iter_mut().zip(lengths) {
                if l > 0 {
                    t.0 += 1;
                    t.1 += u64::from(l);
                }
            }
        }
        was_live
    }

    #[cfg(any(test, feature = "test-util"))]
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Dead rows.
    pub fn dead(&self) -> u64 {
        self.dead
    }

    /// Whether row `i` is dead (rows past the end count as dead).
    pub fn is_dead(&self, i: u64) -> bool {
        i >= self.rows || self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks row `i` dead; returns whether it was live.
    ///
    /// # Panics
    /// If `i` is not a row of the shard (a caller bug, not bad data).
    pub fn mark(&mut self, i: u64) -> bool {
        assert!(i < self.rows, "row {i} of a {}-row shard", self.rows);
        let (w, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let was_live = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.dead += u64::from(was_live);
        was_live
    }

    /// The stored form.
    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(HEAD + self.words.len() * 8 + 8);
        b.extend_from_slice(MAGIC);
        let version = if self.text.is_some() {
            TEXT_VERSION
        } else {
            VERSION
        };
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&self.rows.to_le_bytes());
        b.extend_from_slice(&self.dead.to_le_bytes());
        for w in &self.words {
            b.extend_from_slice(&w.to_le_bytes());
        }
        if let Some(text) = &self.text {
            b.extend_from_slice(&(text.len() as u16).to_le_bytes());
            for (docs, len) in text {
                b.extend_from_slice(&docs.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
            }
        }
        let sum = xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        Bytes::from(b)
    }

    /// Reads a stored vector; `expected_rows` is the shard's row count
    /// (from the index manifest), which the vector must match.
    pub fn decode(key: &str, bytes: &[u8], expected_rows: u64) -> Result<Self, SegmentError> {
        let bad = |reason: String| SegmentError::Corrupt {
            key: key.to_string(),
            reason,
        };
        if bytes.len() < HEAD + 8 || &bytes[..4] != MAGIC {
            return Err(bad(
                "not a shoal deletion vector (bad magic or too short)".into()
            ));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let sum = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
        if xxh3_64(body) != sum {
            return Err(bad("checksum mismatch (truncated or altered)".into()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let version = u16::from_le_bytes([body[4], body[5]]);
        if version != VERSION && version != TEXT_VERSION {
            return Err(bad(format!(
                "deletion vector format {version} (this shoal reads {VERSION} and {TEXT_VERSION})"
            )));
        }
        let (rows, dead) = (u64_at(6), u64_at(14));
        if rows != expected_rows {
            return Err(bad(format!(
                "covers {rows} rows, but its shard has {expected_rows}"
            )));
        }
        let n_words = rows.div_ceil(64);
        let bits_end = (n_words * 8)
            .checked_add(HEAD as u64)
            .filter(|e| *e <= body.len() as u64)
            .ok_or_else(|| bad(format!("{} bitset bytes for {rows} rows", body.len() - HEAD)))?
            as usize;
        let text = if version == TEXT_VERSION {
            let t = &body[bits_end..];
            let n = t
                .get(..2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .filter(|n| t.len() == 2 + 16 * n)
                .ok_or_else(|| bad("malformed text statistics".into()))?;
            let word = |at: usize| u64::from_le_bytes(t[at..at + 8].try_into().expect("8 bytes"));
            Some((0..n).map(|f| (word(2 + 16 * f), word(10 + 16 * f))).collect())
        } else if bits_end != body.len() {
            return Err(bad(format!(
                "{} bitset bytes for {rows} rows",
                body.len() - HEAD
            )));
        } else {
            None
        };
        let words: Vec<u64> = (0..n_words as usize)
            .map(|w| u64_at(HEAD + w * 8))
            .collect();
        if let (Some(last), tail @ 1..) = (words.last(), rows % 64) {
            if last >> tail != 0 {
                return Err(bad("bits set past the last row".into()));
            }
        }
        let counted: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
        if counted != dead {
            return Err(bad(format!(
                "says {dead} dead rows, its bits say {counted}"
            )));
        }
        if text
            .as_ref()
            .is_some_and(|t: &Vec<(u64, u64)>| t.iter().any(|(docs, _)| *docs > dead))
        {
            return Err(bad(format!(
                "text statistics count more rows than its {dead} dead ones"
            )));
        }
        Ok(DeletionVector {
            rows,
            words,
            dead,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_count() {
        let mut dv = DeletionVector::new(130);
        assert!(dv.mark(0) && dv.mark(64) && dv.mark(129));
        assert!(!dv.mark(64), "already dead");
        assert_eq!(dv.dead(), 3);
        let back = DeletionVector::decode("k", &dv.encode(), 130).unwrap();
        assert_eq!(back, dv);
        assert!(back.is_dead(129) && !back.is_dead(128) && back.is_dead(130));
        let empty = DeletionVector::new(0);
        assert_eq!(
            DeletionVector::decode("k", &empty.encode(), 0).unwrap(),
            empty
        );
    }

    #[test]
    fn text_statistics_add_what_newly_dead_rows_held() {
        let mut dv = DeletionVector::with_text(100, 2);
        assert!(dv.mark_with_lengths(5, [4, 0].into_iter()));
        assert!(dv.mark_with_lengths(7, [1, 3].into_iter()));
        assert!(!dv.mark_with_lengths(5, [4, 0].into_iter()), "already dead");
        assert_eq!(dv.text_dead(), Some(&[(2, 5), (1, 3)][..]));
        let back = DeletionVector::decode("k", &dv.encode(), 100).unwrap();
        assert_eq!(back, dv);
        assert_eq!(DeletionVector::new(100).text_dead(), None);
        let good = dv.encode().to_vec();
        for len in 0..good.len() {
            assert!(DeletionVector::decode("k", &good[..len], 100).is_err());
        }
    }

    #[test]
    fn every_damage_is_an_error_naming_the_key() {
        let mut dv = DeletionVector::new(70);
        dv.mark(3);
        let good = dv.encode().to_vec();
        for len in 0..good.len() {
            let e = DeletionVector::decode("index/dv/x.dv", &good[..len], 70).unwrap_err();
            assert!(e.to_string().contains("index/dv/x.dv"), "{e}");
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            assert!(DeletionVector::decode("k", &b, 70).is_err(), "flip at {i}");
        }
        let e = DeletionVector::decode("k", &good, 71)
            .unwrap_err()
            .to_string();
        assert!(e.contains("covers 70 rows, but its shard has 71"), "{e}");
        // Valid checksum, lying contents.
        let reseal = |mut b: Vec<u8>| {
            let n = b.len() - 8;
            let sum = xxh3_64(&b[..n]);
            b[n..].copy_from_slice(&sum.to_le_bytes());
            b
        };
        let mut lie = good.clone();
        lie[14] = 9; // dead count
        let e = DeletionVector::decode("k", &reseal(lie), 70)
            .unwrap_err()
            .to_string();
        assert!(e.contains("says 9 dead rows, its bits say 1"), "{e}");
        let mut past = good.clone();
        past[HEAD + 8 + 7] = 0x80; // bit 127: past row 69
        let e = DeletionVector::decode("k", &reseal(past), 70)
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the last row"), "{e}");
    }
}
