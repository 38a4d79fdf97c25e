//! One-bit codes for candidate generation in index shards.
//!
//! Each row is stored as the signs of its vector minus the shard's mean
//! vector (one bit per dimension, packed in `u64` words), computed when a
//! reader loads the shard. A query computes its own code the same way and
//! ranks rows by Hamming distance, which tracks the angle between the
//! centered vectors: scanning codes costs a few XOR + POPCNT per row
//! instead of a full-precision distance. The best rows by code (at least
//! [`rerank_count`], and every row within a margin of the last of those)
//! are then scored exactly, so results carry exact distances and recall
//! depends only on whether the true neighbours make the candidate cut.
//!
//! Centering matters: sentence embeddings share a large common component,
//! and the signs of raw coordinates would mostly agree between any two
//! rows.

use super::ivf::IvfIndex;
use super::{distance, Candidate, QueryParams, ScanStats, SegmentView, TopK};

/// The codes of one shard's rows.
pub struct SignCodes {
    dims: usize,
    words: usize,
    mean: Vec<f32>,
    codes: Vec<u64>,
}

impl SignCodes {
    /// Codes for `vectors` (`n × dims`, row-major).
    pub fn build(vectors: &[f32], dims: usize) -> Self {
        let n = vectors.len() / dims.max(1);
        let mut sums = vec![0f64; dims];
        for v in vectors.chunks_exact(dims) {
            for (s, x) in sums.iter_mut().zip(v) {
                *s += f64::from(*x);
            }
        }
        let mean: Vec<f32> = sums.iter().map(|s| (s / n.max(1) as f64) as f32).collect();
        let words = dims.div_ceil(64);
        let mut codes = vec![0u64; n * words];
        for (v, out) in vectors
            .chunks_exact(dims)
            .zip(codes.chunks_exact_mut(words))
        {
            encode_into(v, &mean, out);
        }
        SignCodes {
            dims,
            words,
            mean,
            codes,
        }
    }

    /// The query's code.
    pub fn encode(&self, query: &[f32]) -> Vec<u64> {
        let mut out = vec![0u64; self.words];
        encode_into(query, &self.mean, &mut out);
        out
    }

    /// Hamming distance between row `i`'s code and `q`.
    #[inline]
    pub fn hamming(&self, i: usize, q: &[u64]) -> u32 {
        self.codes[i * self.words..(i + 1) * self.words]
            .iter()
            .zip(q)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum()
    }

    pub fn rows(&self) -> usize {
        self.codes.len() / self.words.max(1)
    }

    pub fn memory_bytes(&self) -> usize {
        self.codes.len() * 8 + self.mean.len() * 4
    }

    pub fn dims(&self) -> usize {
        self.dims
    }
}

fn encode_into(v: &[f32], mean: &[f32], out: &mut [u64]) {
    out.iter_mut().for_each(|w| *w = 0);
    for (j, (x, m)) in v.iter().zip(mean).enumerate() {
        if x > m {
            out[j / 64] |= 1 << (j % 64);
        }
    }
}

/// Appends (Hamming distance, row) for the allowed rows of `range`. With
/// the POPCNT instruction where the CPU has it (every x86-64 server CPU
/// since 2008, but not the x86-64 baseline a portable build assumes):
/// without it a popcount is a dozen instructions per word.
fn scan_rows(
    codes: &SignCodes,
    q: &[u64],
    range: std::ops::Range<usize>,
    mask: &[bool],
    out: &mut Vec<(u16, u32)>,
) {
    #[cfg(target_arch = "x86_64")]
    if has_popcnt() {
        // SAFETY: the CPU supports POPCNT (checked at run time just now).
        unsafe { scan_rows_popcnt(codes, q, range, mask, out) };
        return;
    }
    scan_rows_portable(codes, q, range, mask, out);
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_popcnt() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("popcnt"))
}

/// [`scan_rows_portable`] compiled with POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn scan_rows_popcnt(
    codes: &SignCodes,
    q: &[u64],
    range: std::ops::Range<usize>,
    mask: &[bool],
    out: &mut Vec<(u16, u32)>,
) {
    scan_rows_portable(codes, q, range, mask, out);
}

#[inline(always)]
fn scan_rows_portable(
    codes: &SignCodes,
    q: &[u64],
    range: std::ops::Range<usize>,
    mask: &[bool],
    out: &mut Vec<(u16, u32)>,
) {
    let w = codes.words;
    let rows = &codes.codes[range.start * w..range.end * w];
    for (j, row) in rows.chunks_exact(w).enumerate() {
        let i = range.start + j;
        if mask[i] {
            let h: u32 = row.iter().zip(q).map(|(a, b)| (a ^ b).count_ones()).sum();
            out.push((h as u16, i as u32));
        }
    }
}

/// A code scan probes this many IVF lists per `nprobe` of the query:
/// scanning a code costs a few instructions where a full-precision
/// distance costs hundreds, so it can afford to look much wider (on the
/// shared dataset 8 × 16 = 128 of 250 lists give recall@10 0.963 where
/// full-precision IVF needs 64 lists for 0.954 at six times the cost).
pub const PROBES_PER_NPROBE: usize = 16;

/// How many candidates a code scan hands to the exact rerank for `k`
/// results.
pub fn rerank_count(k: usize) -> usize {
    (20 * k).max(200)
}

/// How far past the [`rerank_count`]-th best code distance the rerank
/// reaches: half a standard deviation of the Hamming distance between two
/// codes' estimates (`√D / 4` for `D` bits). On data whose neighbours
/// are well separated this adds a couple of hundred rows; on data where
/// many rows sit at nearly the same distance (isotropic clusters) it
/// reranks thousands, which is what keeps recall there (measured:
/// docs/benchmarks.md).
fn rerank_margin(dims: usize) -> usize {
    ((dims as f64).sqrt() / 4.0).round() as usize
}

/// Searches a shard by codes: the allowed rows of the probed IVF lists
/// (every row without an IVF index) ranked by Hamming distance, the best
/// [`rerank_count`] scored exactly into `top`. Returns false, having
/// pushed nothing, when the probed lists hold fewer than `k` allowed rows
/// (a filter removed too many); the caller then scans exactly.
#[allow(clippy::too_many_arguments)]
pub fn search<'s>(
    codes: &SignCodes,
    ivf: Option<&IvfIndex>,
    probes: usize,
    view: &SegmentView<'s>,
    params: &QueryParams,
    query: &[f32],
    top: &mut TopK<'s>,
    stats: &mut ScanStats,
) -> bool {
    let seg = view.segment;
    let q = codes.encode(query);
    stats.segments += 1;
    // Hamming distances of the allowed candidate rows.
    let mut scored: Vec<(u16, u32)> = Vec::new();
    match ivf {
        Some(ix) => {
            let lists = ix.nearest_lists(params.metric, query, probes);
            scored.reserve(lists.iter().map(|&c| ix.list(c).len()).sum());
            for c in lists {
                scan_rows(codes, &q, ix.list(c), view.mask, &mut scored);
            }
        }
        None => scan_rows(codes, &q, 0..codes.rows(), view.mask, &mut scored),
    }
    if scored.len() < params.k {
        return false;
    }
    // The best `want` by code, and every row within the margin of the
    // want-th: a histogram of distances gives the cut in one pass.
    let want = rerank_count(params.k);
    if scored.len() > want {
        let mut hist = vec![0usize; codes.dims() + 2];
        for (h, _) in &scored {
            hist[*h as usize] += 1;
        }
        let (mut cut, mut seen) = (0, 0);
        for (h, n) in hist.iter().enumerate() {
            seen += n;
            cut = h;
            if seen >= want {
                break;
            }
        }
        let cut = cut + rerank_margin(codes.dims());
        scored.retain(|(h, _)| *h as usize <= cut);
    }
    let d = seg.dimensions();
    let vectors = seg.vectors();
    for (_, i) in &scored {
        let i = *i as usize;
        let dist = distance(params.metric, query, &vectors[i * d..(i + 1) * d]);
        if dist <= top.threshold() {
            top.push(Candidate {
                distance: dist,
                id: seg.id(i),
                segment: view.ordinal,
                position: i as u32,
            });
        }
    }
    stats.vectors_compared += scored.len() as u64;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Metric;
    use rand::{Rng, SeedableRng};

    /// Codes rank rows like the exact distance does: of the exact top 10
    /// among 2,000 random rows with a shared offset (like embeddings), the
    /// 200 best codes (a tenth of the rows, so chance would hold 10 %)
    /// hold more than 80 %. Uniform noise is the hard case; real
    /// embeddings do better (docs/benchmarks.md).
    #[test]
    fn code_candidates_hold_the_true_neighbours() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (n, dims) = (2000, 96);
        let offset: Vec<f32> = (0..dims).map(|_| rng.random_range(0.5..1.0)).collect();
        let mut vectors = Vec::with_capacity(n * dims);
        for _ in 0..n {
            let v: Vec<f32> = offset
                .iter()
                .map(|o| o + rng.random_range(-0.3..0.3))
                .collect();
            vectors.extend(v);
        }
        let codes = SignCodes::build(&vectors, dims);
        assert_eq!(codes.rows(), n);
        let (mut found, mut total) = (0, 0);
        for _ in 0..50 {
            let q: Vec<f32> = offset
                .iter()
                .map(|o| o + rng.random_range(-0.3..0.3))
                .collect();
            let mut exact: Vec<(f32, usize)> = (0..n)
                .map(|i| {
                    let v = &vectors[i * dims..(i + 1) * dims];
                    (distance(Metric::Euclidean, &q, v), i)
                })
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            let qc = codes.encode(&q);
            let mut by_code: Vec<(u32, usize)> =
                (0..n).map(|i| (codes.hamming(i, &qc), i)).collect();
            by_code.sort();
            let cut: std::collections::HashSet<usize> = by_code[..rerank_count(10)]
                .iter()
                .map(|(_, i)| *i)
                .collect();
            found += exact[..10].iter().filter(|(_, i)| cut.contains(i)).count();
            total += 10;
        }
        let recall = found as f64 / total as f64;
        assert!(
            recall > 0.8,
            "code candidates hold {recall:.3} of the true top 10"
        );
    }

    #[test]
    fn hamming_counts_differing_signs() {
        let vectors = vec![1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0];
        let codes = SignCodes::build(&vectors, 4); // mean 0 in every dimension
        let q = codes.encode(&[1.0, 1.0, -1.0, -1.0]);
        assert_eq!(codes.hamming(0, &q), 0);
        assert_eq!(codes.hamming(1, &q), 2);
    }
}
