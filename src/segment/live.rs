//! Newest version wins (DESIGN section 6), in one place.
//!
//! A record at (segment, position) is live when it is the newest version
//! of its id and not a tombstone. [`LiveSet`] absorbs segments oldest
//! first and keeps a live mask per segment plus the newest location of
//! every id. Absorbing a newer segment only switches older locations off,
//! so readers extend a set incrementally when a manifest appends, and
//! compaction builds one over the prefix it merges.

use std::collections::HashMap;
use std::sync::Arc;

use super::Segment;

/// Where the newest version of an id sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Index of the segment in absorption order.
    pub seg: u32,
    pub pos: u32,
    pub tombstone: bool,
}

/// Live masks and newest locations over segments absorbed oldest first.
#[derive(Clone, Debug, Default)]
pub struct LiveSet {
    masks: Vec<Arc<Vec<bool>>>,
    newest: HashMap<String, Loc>,
    live_count: u64,
}

impl LiveSet {
    /// Adds a segment newer than every segment absorbed so far.
    pub(crate) fn absorb(&mut self, seg: &Segment) {
        let j = self.masks.len() as u32;
        let mut mask = vec![false; seg.len()];
        let oldest_wins = crate::mutation::active(crate::mutation::Mutation::OldestWins);
        for (pos, id) in seg.ids().iter().enumerate() {
            if oldest_wins && self.newest.get(id).is_some_and(|o| o.seg != j) {
                continue; // broken on purpose
            }
            let tombstone = seg.is_tombstone(pos);
            let loc = Loc {
                seg: j,
                pos: pos as u32,
                tombstone,
            };
            if let Some(old) = self.newest.insert(id.clone(), loc) {
                if !old.tombstone {
                    if old.seg == j {
                        mask[old.pos as usize] = false;
                    } else {
                        Arc::make_mut(&mut self.masks[old.seg as usize])[old.pos as usize] = false;
                    }
                    self.live_count -= 1;
                }
            }
            if !tombstone {
                mask[pos] = true;
                self.live_count += 1;
            }
        }
        self.masks.push(Arc::new(mask));
    }

    /// Segments absorbed.
    pub fn segments(&self) -> usize {
        self.masks.len()
    }

    /// Which records of segment `j` are live.
    pub fn mask(&self, j: usize) -> &[bool] {
        &self.masks[j]
    }

    /// Live records in segment `j`.
    pub(crate) fn live_in(&self, j: usize) -> usize {
        self.masks[j].iter().filter(|l| **l).count()
    }

    /// Live records over every segment.
    pub(crate) fn live_count(&self) -> u64 {
        self.live_count
    }

    /// Every id with the location of its newest version, tombstones
    /// included, in no particular order.
    pub fn newest(&self) -> impl Iterator<Item = (&str, Loc)> {
        self.newest.iter().map(|(id, loc)| (id.as_str(), *loc))
    }

    /// The newest location of `id`, tombstone or not.
    pub(crate) fn newest_of(&self, id: &str) -> Option<Loc> {
        self.newest.get(id).copied()
    }

    /// The newest location of `id`, if it is live.
    #[cfg(test)]
    pub(crate) fn locate(&self, id: &str) -> Option<Loc> {
        self.newest.get(id).copied().filter(|l| !l.tombstone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Prepared;
    use crate::segment::{decode_segment, encode_segment, SegmentHeader, FORMAT_VERSION};
    use crate::vocab::Metric;

    fn seg(records: &[(&str, bool)]) -> Segment {
        let recs: Vec<Prepared> = records
            .iter()
            .map(|(id, tomb)| {
                if *tomb {
                    Prepared::tombstone(id.to_string())
                } else {
                    Prepared {
                        id: id.to_string(),
                        vector: vec![1.0],
                        metadata: Vec::new(),
                        tombstone: false,
                    }
                }
            })
            .collect();
        let h = SegmentHeader {
            format_version: FORMAT_VERSION,
            dimensions: 1,
            metric: Metric::Dot,
            record_count: 0,
            created_at_ms: 0,
            writer_id: "t".into(),
            has_index: false,
        };
        decode_segment("k", &encode_segment(&h, &recs, None)).unwrap()
    }

    #[test]
    fn newest_version_wins_and_tombstones_hide() {
        let mut v = LiveSet::default();
        v.absorb(&seg(&[("a", false), ("b", false), ("a", false)]));
        assert_eq!(v.mask(0), [false, true, true], "second a shadows the first");
        assert_eq!(v.live_count(), 2);
        // Incremental: a newer segment deletes b and re-adds a.
        v.absorb(&seg(&[("b", true), ("a", false), ("c", false)]));
        assert_eq!(v.mask(0), [false, false, false]);
        assert_eq!(v.mask(1), [false, true, true]);
        assert_eq!(v.live_count(), 2);
        assert_eq!(v.locate("b"), None);
        assert_eq!(v.locate("a").unwrap().seg, 1);
        // b comes back.
        v.absorb(&seg(&[("b", false)]));
        assert_eq!(v.live_count(), 3);
        assert_eq!(v.locate("b").unwrap().seg, 2);
        // Incremental equals a rebuild from scratch.
        let mut full = LiveSet::default();
        for s in [
            seg(&[("a", false), ("b", false), ("a", false)]),
            seg(&[("b", true), ("a", false), ("c", false)]),
            seg(&[("b", false)]),
        ] {
            full.absorb(&s);
        }
        assert_eq!(full.masks, v.masks);
        assert_eq!(full.live_count(), v.live_count());
    }
}
