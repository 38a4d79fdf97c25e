//! Search kernels and indexes, all without I/O: distance kernels, the
//! top-k collector, exact scan, the per-segment ANN kinds behind the
//! [`SegmentAnn`] contract ([`ivf`], [`hnsw`]; a compacted segment or a
//! shard in the segment format carries one), the filter policy
//! ([`route`]), the RaBitQ quantizer ([`rabitq`]) and the shard index of
//! the read-optimized layer (`shard`: build, and a search that plans,
//! estimates from given code blocks and reranks given rows; the reader
//! fetches).
//!
//! Kernels are written so the compiler vectorizes them: contiguous `f32`
//! slices, sixteen independent accumulators (no loop-carried dependency
//! on one sum), `chunks_exact` so the hot loop has no bounds checks. With
//! plain SSE2 (the x86-64 baseline, and all a Lambda build may assume
//! without `x86-64-v3`) this is several times faster than
//! `iter().map().sum()`; on CPUs with AVX2 the same code runs compiled
//! for it ([`wide`], chosen at run time). `benches/kernels.rs` measures
//! both.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

pub mod hnsw;
pub mod ivf;
pub(crate) mod rabitq;
pub(crate) mod routing;
pub(crate) mod shard;

use crate::record::Prepared;
use crate::segment::Segment;
use crate::vocab::{AnnKind, IndexSettings, Metric};

/// Independent accumulators per kernel: thirty-two lanes are four AVX2
/// registers or eight SSE2 ones, enough that the adds never wait on one
/// another and a kernel is bound by its loads (sixteen measured the same
/// at 384-d; a single running sum is several times slower). Rows shorter
/// than that, or their last lanes, go eight at a time into the first
/// eight lanes, then one at a time.
const LANES: usize = 32;

/// Rows the nearest-centroid loops (k-means, routing assignment and
/// calibration) compare with each centroid in turn: about 16 KB of rows,
/// which stay in the L1 cache while the centroids pass them once, instead
/// of every row streaming every centroid from L2 or memory. Each row
/// still meets the centroids in the same order, so results are the same.
pub(crate) fn tile_rows(dims: usize) -> usize {
    (16 * 1024 / (dims.max(1) * 4)).clamp(1, 64)
}

/// Inner product.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if wide::available() {
        // SAFETY: the CPU has AVX2.
        return unsafe { wide::dot(a, b) };
    }
    lanes(a, b, |x, y| x * y)
}

/// Squared Euclidean distance.
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if wide::available() {
        // SAFETY: the CPU has AVX2.
        return unsafe { wide::l2_squared(a, b) };
    }
    lanes(a, b, |x, y| (x - y) * (x - y))
}

/// Inner product of `a` with bytes `b` taken as floats (a routing's `u8`
/// centroid codes): the same lanes and order as [`dot`], on AVX2 where
/// the CPU has it, so the same float everywhere.
#[inline]
pub(crate) fn dot_u8(a: &[f32], b: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if wide::available() {
        // SAFETY: the CPU has AVX2.
        return unsafe { wide::dot_u8(a, b) };
    }
    lanes(a, b, |x, y| x * f32::from(y))
}

/// `Σ term(a_i, b_i)` over [`LANES`] accumulators, the order every
/// build and CPU sums in.
#[inline(always)]
fn lanes<B: Copy>(a: &[f32], b: &[B], term: impl Fn(f32, B) -> f32) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let split = n - n % LANES;
    let (a, rest_a) = a[..n].split_at(split);
    let (b, rest_b) = b[..n].split_at(split);
    let mut acc = [0.0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        let x: &[f32; LANES] = x.try_into().expect("chunks of LANES");
        let y: &[B; LANES] = y.try_into().expect("chunks of LANES");
        for i in 0..LANES {
            acc[i] += term(x[i], y[i]);
        }
    }
    let (xs, ys) = (rest_a.chunks_exact(8), rest_b.chunks_exact(8));
    let (tail_a, tail_b) = (xs.remainder(), ys.remainder());
    for (x, y) in xs.zip(ys) {
        for i in 0..8 {
            acc[i] += term(x[i], y[i]);
        }
    }
    let mut tail = 0.0;
    for (x, y) in tail_a.iter().zip(tail_b) {
        tail += term(*x, *y);
    }
    sum_lanes(acc) + tail
}

/// The lanes' total, halves added pairwise in a fixed order (every build,
/// every CPU: the same float).
#[inline(always)]
pub(crate) fn sum_lanes<const N: usize>(mut acc: [f32; N]) -> f32 {
    let mut half = N / 2;
    while half > 0 {
        for i in 0..half {
            acc[i] += acc[i + half];
        }
        half /= 2;
    }
    acc[0]
}

/// The `k` smallest upper bounds (or exact distances) seen so far: a row
/// whose lower bound exceeds the largest of them (the bar) cannot be
/// among the best `k`.
pub(crate) struct KthBest {
    k: usize,
    heap: BinaryHeap<OrdF32>,
}

impl KthBest {
    pub(crate) fn new(k: usize) -> Self {
        KthBest {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// The `k`-th best upper bound, infinite until `k` were offered.
    pub(crate) fn bar(&self) -> f32 {
        if self.heap.len() < self.k {
            return f32::INFINITY;
        }
        self.heap.peek().map_or(f32::INFINITY, |u| u.0)
    }

    pub(crate) fn offer(&mut self, upper: f32) {
        if self.heap.len() < self.k {
            self.heap.push(OrdF32(upper));
        } else if upper < self.bar() {
            self.heap.pop();
            self.heap.push(OrdF32(upper));
        }
    }
}

/// An `f32` ordered by `total_cmp`, for a heap of bounds.
#[derive(PartialEq)]
struct OrdF32(f32);

impl Eq for OrdF32 {}

impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The float kernels on AVX2, chosen at run time: the same per-lane
/// operations in the same order as the portable code (a multiply then an
/// add, never fused), so the same result to the bit, on registers twice
/// as wide as the SSE2 baseline's (which the compiler fills only two
/// lanes at a time for these loops). Index builds spend most of their
/// time here: distances to centroids, and encoding codes
/// ([`rabitq::ListCodes::encode`] runs compiled for AVX2 as a whole).
#[cfg(target_arch = "x86_64")]
pub(crate) mod wide {
    use super::{sum_lanes, LANES};
    use std::arch::x86_64::*;

    /// Whether this CPU has AVX2 (detected once).
    #[inline]
    pub(crate) fn available() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
    }

    /// A kernel `Σ term(a_i, b_i)` laid out as [`super::lanes`]: four
    /// registers of eight lanes, then eight at a time into the first,
    /// then one at a time.
    macro_rules! kernel {
        ($(#[$doc:meta])* $name:ident, $b:ty, $load_b:ident, |$x:ident, $y:ident| $term:expr, |$sx:ident, $sy:ident| $scalar:expr) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// The CPU must have AVX2 ([`available`]).
            #[target_feature(enable = "avx2")]
            pub(crate) unsafe fn $name(a: &[f32], b: &[$b]) -> f32 {
                debug_assert_eq!(a.len(), b.len());
                let n = a.len().min(b.len());
                let mut acc = [_mm256_setzero_ps(); LANES / 8];
                let mut i = 0;
                while i + LANES <= n {
                    for (k, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: `i + 8k + 8 <= n`, inside both slices.
                        let ($x, $y) = unsafe { (load(a, i + 8 * k), $load_b(b, i + 8 * k)) };
                        *acc = _mm256_add_ps(*acc, $term);
                    }
                    i += LANES;
                }
                while i + 8 <= n {
                    // SAFETY: `i + 8 <= n`, inside both slices.
                    let ($x, $y) = unsafe { (load(a, i), $load_b(b, i)) };
                    acc[0] = _mm256_add_ps(acc[0], $term);
                    i += 8;
                }
                let mut tail = 0.0;
                for (&$sx, &$sy) in a[i..n].iter().zip(&b[i..n]) {
                    tail += $scalar;
                }
                let mut out = [0f32; LANES];
                for (k, acc) in acc.iter().enumerate() {
                    // SAFETY: `out` holds eight floats at `8k`.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), *acc) };
                }
                sum_lanes(out) + tail
            }
        };
    }

    kernel!(
        /// [`super::dot`] on AVX2.
        dot,
        f32,
        load,
        |x, y| _mm256_mul_ps(x, y),
        |x, y| x * y
    );

    kernel!(
        /// [`super::l2_squared`] on AVX2.
        l2_squared,
        f32,
        load,
        |x, y| {
            let d = _mm256_sub_ps(x, y);
            _mm256_mul_ps(d, d)
        },
        |x, y| (x - y) * (x - y)
    );

    kernel!(
        /// [`super::dot_u8`] on AVX2: each eight bytes widened to floats
        /// before the multiply.
        dot_u8,
        u8,
        load_u8,
        |x, y| _mm256_mul_ps(x, y),
        |x, y| x * f32::from(y)
    );

    /// Eight bytes of `v` at `i`, as floats.
    ///
    /// # Safety
    /// AVX2, and `i + 8` within `v`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_u8(v: &[u8], i: usize) -> __m256 {
        // SAFETY: the caller keeps `i + 8` within `v`; an unaligned 8-byte load.
        let b = unsafe { _mm_loadl_epi64(v.as_ptr().add(i).cast::<__m128i>()) };
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
    }

    /// Whether this CPU has AVX-512F (detected once).
    #[inline]
    pub(crate) fn available_512() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }

    /// [`super::distance`] from each of two rows to each of two
    /// centroids, `[row][centroid]`, in one pass over the four vectors.
    ///
    /// # Safety
    /// The CPU must have AVX-512F ([`available_512`]).
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn block_2x2(
        metric: crate::vocab::Metric,
        rows: [&[f32]; 2],
        cents: [&[f32]; 2],
    ) -> [[f32; 2]; 2] {
        use crate::vocab::Metric;
        // SAFETY: the caller checked the CPU.
        let raw = unsafe {
            match metric {
                Metric::Cosine | Metric::Dot => dot_2x2(rows, cents),
                Metric::Euclidean => l2_2x2(rows, cents),
            }
        };
        raw.map(|r| r.map(|x| super::finish(metric, x)))
    }

    /// A kernel of [`kernel!`]'s sum for two rows and two centroids on
    /// AVX-512: each pair's 32 lanes are two registers of sixteen, the
    /// lanes [`super::lanes`] has (eight at a time into the first eight,
    /// masked), summed as [`super::sum_lanes`] sums them; so each pair's
    /// float is the portable kernel's, to the bit.
    macro_rules! block {
        ($name:ident, |$x:ident, $y:ident| $term:expr, |$sx:ident, $sy:ident| $scalar:expr) => {
            /// # Safety
            /// The CPU must have AVX-512F ([`available_512`]).
            #[target_feature(enable = "avx512f")]
            unsafe fn $name(a: [&[f32]; 2], b: [&[f32]; 2]) -> [[f32; 2]; 2] {
                let n = a[0].len().min(a[1].len()).min(b[0].len()).min(b[1].len());
                let mut acc = [[[_mm512_setzero_ps(); 2]; 2]; 2];
                let mut i = 0;
                while i + LANES <= n {
                    for h in 0..2 {
                        // SAFETY: `i + 16h + 16 <= n`, inside all four slices.
                        let (x, y) = unsafe {
                            (
                                [load16(a[0], i + 16 * h), load16(a[1], i + 16 * h)],
                                [load16(b[0], i + 16 * h), load16(b[1], i + 16 * h)],
                            )
                        };
                        for r in 0..2 {
                            for c in 0..2 {
                                let ($x, $y) = (x[r], y[c]);
                                acc[r][c][h] = _mm512_add_ps(acc[r][c][h], $term);
                            }
                        }
                    }
                    i += LANES;
                }
                while i + 8 <= n {
                    // SAFETY: `i + 8 <= n`, inside all four slices.
                    let (x, y) = unsafe {
                        (
                            [load8(a[0], i), load8(a[1], i)],
                            [load8(b[0], i), load8(b[1], i)],
                        )
                    };
                    for r in 0..2 {
                        for c in 0..2 {
                            let ($x, $y) = (x[r], y[c]);
                            let t = $term;
                            acc[r][c][0] = _mm512_mask_add_ps(acc[r][c][0], 0x00ff, acc[r][c][0], t);
                        }
                    }
                    i += 8;
                }
                let mut out = [[0f32; 2]; 2];
                for r in 0..2 {
                    for c in 0..2 {
                        let mut tail = 0.0;
                        for (&$sx, &$sy) in a[r][i..n].iter().zip(&b[c][i..n]) {
                            tail += $scalar;
                        }
                        // SAFETY: the caller checked the CPU.
                        out[r][c] = unsafe { sum_32(acc[r][c]) } + tail;
                    }
                }
                out
            }
        };
    }

    block!(dot_2x2, |x, y| _mm512_mul_ps(x, y), |x, y| x * y);

    block!(
        l2_2x2,
        |x, y| {
            let d = _mm512_sub_ps(x, y);
            _mm512_mul_ps(d, d)
        },
        |x, y| (x - y) * (x - y)
    );

    /// [`super::sum_lanes`] of 32 lanes held as two registers: lane `i`
    /// plus lane `i + 16`, then `i + 8`, `i + 4`, `i + 2`, `i + 1`.
    ///
    /// # Safety
    /// AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_32(acc: [__m512; 2]) -> f32 {
        let s = _mm512_add_ps(acc[0], acc[1]);
        let lo = _mm512_castps512_ps256(s);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1));
        let e = _mm256_add_ps(lo, hi);
        let f = _mm_add_ps(_mm256_castps256_ps128(e), _mm256_extractf128_ps(e, 1));
        let g = _mm_add_ps(f, _mm_movehl_ps(f, f));
        let h = _mm_add_ss(g, _mm_shuffle_ps(g, g, 1));
        _mm_cvtss_f32(h)
    }

    /// Sixteen floats of `v` at `i`.
    ///
    /// # Safety
    /// AVX-512F, and `i + 16` within `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(v: &[f32], i: usize) -> __m512 {
        // SAFETY: the caller keeps `i + 16` within `v`.
        unsafe { _mm512_loadu_ps(v.as_ptr().add(i)) }
    }

    /// Eight floats of `v` at `i` in the low lanes, zeros above.
    ///
    /// # Safety
    /// AVX-512F, and `i + 8` within `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load8(v: &[f32], i: usize) -> __m512 {
        // SAFETY: the caller keeps `i + 8` within `v`.
        unsafe { _mm512_zextps256_ps512(_mm256_loadu_ps(v.as_ptr().add(i))) }
    }

    /// Eight floats of `v` at `i`.
    ///
    /// # Safety
    /// AVX2, and `i + 8` within `v`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(v: &[f32], i: usize) -> __m256 {
        // SAFETY: the caller keeps `i + 8` within `v`.
        unsafe { _mm256_loadu_ps(v.as_ptr().add(i)) }
    }
}

/// The ranking distance of `v` from `q` under `metric`: lower is better.
/// Cosine vectors are unit length (normalized on write and on query), so
/// cosine distance is `1 - dot`; dot "distance" is `-dot`.
#[inline]
pub fn distance(metric: Metric, q: &[f32], v: &[f32]) -> f32 {
    let raw = match metric {
        Metric::Cosine | Metric::Dot => dot(q, v),
        Metric::Euclidean => l2_squared(q, v),
    };
    finish(metric, raw)
}

/// [`distance`] from its kernel's value (the inner product, or the
/// squared Euclidean distance).
#[inline(always)]
fn finish(metric: Metric, raw: f32) -> f32 {
    let d = match metric {
        Metric::Cosine => 1.0 - raw,
        Metric::Dot => -raw,
        Metric::Euclidean => raw,
    };
    // Writes refuse vectors whose scores could overflow (`check_vector`);
    // should an older one still overflow, it ranks last, never first.
    if d.is_nan() {
        f32::INFINITY
    } else {
        d
    }
}

/// [`distance`] from each of `rows` to each of `cents`, handed to
/// `visit(row, centroid, distance)`; each row meets the centroids in
/// their order. Where the CPU has AVX-512, two rows and two centroids at
/// a time ([`wide::block_2x2`]: four distances from one pass over the
/// four vectors, a quarter of the loads of one at a time); the same
/// floats as [`distance`] either way.
pub(crate) fn distances_in_order(
    metric: Metric,
    rows: &[&[f32]],
    cents: &[&[f32]],
    mut visit: impl FnMut(usize, usize, f32),
) {
    #[cfg(target_arch = "x86_64")]
    if wide::available_512() {
        let (r2, c2) = (rows.len() / 2 * 2, cents.len() / 2 * 2);
        for c in (0..c2).step_by(2) {
            for r in (0..r2).step_by(2) {
                // SAFETY: the CPU has AVX-512F.
                let d = unsafe {
                    wide::block_2x2(metric, [rows[r], rows[r + 1]], [cents[c], cents[c + 1]])
                };
                visit(r, c, d[0][0]);
                visit(r, c + 1, d[0][1]);
                visit(r + 1, c, d[1][0]);
                visit(r + 1, c + 1, d[1][1]);
            }
            for (r, row) in rows.iter().enumerate().skip(r2) {
                visit(r, c, distance(metric, row, cents[c]));
                visit(r, c + 1, distance(metric, row, cents[c + 1]));
            }
        }
        for (c, cent) in cents.iter().enumerate().skip(c2) {
            for (r, row) in rows.iter().enumerate() {
                visit(r, c, distance(metric, row, cent));
            }
        }
        return;
    }
    for (c, cent) in cents.iter().enumerate() {
        for (r, row) in rows.iter().enumerate() {
            visit(r, c, distance(metric, row, cent));
        }
    }
}

/// Turns a ranking distance into what users see: `(score, distance)`,
/// score higher-is-better. Cosine: similarity and `1 - similarity`; dot:
/// the inner product and its negation; euclidean: `1 / (1 + d)` and the
/// distance `d` (not squared).
pub fn present(metric: Metric, ranking: f32) -> (f32, f32) {
    let ranking = if ranking.is_nan() {
        f32::INFINITY
    } else {
        ranking
    };
    let (score, distance) = match metric {
        Metric::Cosine => (1.0 - ranking, ranking),
        Metric::Dot => (-ranking, ranking),
        Metric::Euclidean => {
            let d = ranking.max(0.0).sqrt();
            (1.0 / (1.0 + d), d)
        }
    };
    // JSON has no infinity: an overflowed score is the worst finite one,
    // never `null`.
    let finite = |x: f32| x.clamp(-f32::MAX, f32::MAX);
    (finite(score), finite(distance))
}

/// A candidate: ranking distance and where the record lives.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub distance: f32,
    pub id: &'a str,
    /// Index of the segment within the partition's search list.
    pub segment: u32,
    pub position: u32,
}

impl Candidate<'_> {
    /// Total order: distance, then id (ties broken by id, ascending).
    pub(crate) fn rank_cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then_with(|| self.id.cmp(other.id))
    }
}

struct ByRank<'a>(Candidate<'a>);

impl PartialEq for ByRank<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.rank_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for ByRank<'_> {}
impl PartialOrd for ByRank<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByRank<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.rank_cmp(&other.0)
    }
}

/// Keeps the `k` best candidates seen (a max-heap of the current best).
pub struct TopK<'a> {
    k: usize,
    heap: BinaryHeap<ByRank<'a>>,
}

impl<'a> TopK<'a> {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// The distance a candidate must beat to enter (infinite until full).
    #[inline]
    pub(crate) fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::INFINITY
        } else {
            self.heap.peek().map_or(f32::INFINITY, |c| c.0.distance)
        }
    }

    #[inline]
    pub fn push(&mut self, c: Candidate<'a>) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(ByRank(c));
        } else if let Some(worst) = self.heap.peek() {
            if c.rank_cmp(&worst.0) == Ordering::Less {
                self.heap.pop();
                self.heap.push(ByRank(c));
            }
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    #[cfg(any(test, feature = "test-util"))]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<Candidate<'a>> {
        let mut v: Vec<Candidate<'a>> = self.heap.into_iter().map(|c| c.0).collect();
        v.sort_by(|a, b| a.rank_cmp(b));
        v
    }
}

/// Work counters of one search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanStats {
    pub segments: u64,
    /// Full-precision distances computed.
    pub vectors_compared: u64,
    /// Rows estimated from quantized codes.
    pub codes_scanned: u64,
    /// Shard rows whose exact distance a rerank computed (counted in
    /// `vectors_compared` too).
    pub rows_reranked: u64,
    /// Shard rows the codes' bounds could not rule out: their rows are
    /// fetched for the rerank, which may stop before reaching them all.
    pub rerank_candidates: u64,
}

/// One segment's view for a query.
pub struct SegmentView<'s> {
    pub segment: &'s Segment,
    /// `mask[i]`: record `i` may be returned (it is the newest version of
    /// its id, not a tombstone, and passes the query's filter).
    pub mask: &'s [bool],
    /// Share of live records that pass the filter (1.0 without a filter).
    pub selectivity: f64,
    /// Index of this segment in the partition's list (for candidates).
    pub ordinal: u32,
}

/// Per-query knobs for index kinds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryParams {
    pub metric: Metric,
    pub k: usize,
    /// IVF clusters to probe per segment.
    pub nprobe: usize,
    /// Ignore ANN indexes and scan exactly.
    pub exact: bool,
}

/// Filters keeping less than this share of a segment's live records are
/// answered by an exact scan of the matching records (cheap, since few
/// match, and exact), so filtering never costs recall.
pub(crate) const SELECTIVE_FILTER: f64 = 0.1;

/// How one indexed segment is searched for one query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Route {
    /// Scan the allowed records exactly.
    Exact,
    /// Use the ANN index with these (possibly widened) parameters.
    Ann(QueryParams),
}

/// The filter policy, in one place. `selectivity` is the share of the
/// segment's live records the query's filter keeps (1.0 without one).
/// A selective filter (or `exact`) scans exactly; otherwise the probe
/// count grows by 1/selectivity, so a filter that keeps a tenth of the
/// records probes ten times the clusters and still finds `k` of them.
pub(crate) fn route(params: &QueryParams, selectivity: f64) -> Route {
    if params.exact || selectivity < SELECTIVE_FILTER {
        return Route::Exact;
    }
    let widened = (params.nprobe.max(1) as f64 / selectivity.max(1e-9)).ceil() as usize;
    Route::Ann(QueryParams {
        nprobe: widened,
        ..*params
    })
}

/// What an index kind's build hands to the segment encoder: the records
/// in the order they must be stored, in groups (one group of sections
/// each; IVF writes one per cluster), and the index section.
pub struct Built {
    pub groups: Vec<Vec<Prepared>>,
    pub bytes: Vec<u8>,
}

/// One kind of ANN index: build, serialize, load and search in one
/// contract (compare lance's `subindex.rs`). Adding a kind means one
/// implementation plus a line in [`build`] and [`AnnIndex::parse`].
pub(crate) trait SegmentAnn: Sized + Send + Sync {
    /// The `index.kind` setting that selects it.
    #[cfg(any(test, feature = "test-util"))]
    const KIND: AnnKind;
    /// Builds an index over `records` and decides their stored order.
    fn build(records: Vec<Prepared>, dims: usize, metric: Metric, ix: &IndexSettings) -> Built;
    /// Parses an index section of a segment of `records` records,
    /// refusing anything its search could not safely walk.
    fn from_bytes(bytes: &[u8], dims: usize, records: usize) -> Result<Self, String>;
    /// Offers the candidates it finds among the allowed records to `top`.
    /// Returns false, having pushed nothing, when it cannot find `k`
    /// allowed records; the caller then scans exactly.
    fn search<'s>(
        &self,
        view: &SegmentView<'s>,
        params: &QueryParams,
        query: &[f32],
        top: &mut TopK<'s>,
        stats: &mut ScanStats,
    ) -> bool;
}

/// Builds the index `ix.kind` names over `records`; `None` for `none`.
pub fn build(
    records: Vec<Prepared>,
    dims: usize,
    metric: Metric,
    ix: &IndexSettings,
) -> Option<Built> {
    match ix.kind {
        AnnKind::Hnsw => Some(<hnsw::HnswIndex as SegmentAnn>::build(
            records, dims, metric, ix,
        )),
        AnnKind::Ivf => Some(<ivf::IvfIndex as SegmentAnn>::build(
            records, dims, metric, ix,
        )),
        AnnKind::None => None,
    }
}

/// How one kind of segment is searched. Exact scan is the baseline; ANN
/// indexes (IVF, HNSW) implement the same call.
pub trait SegmentSearch: Send + Sync {
    /// Offers the candidates this method finds for `query` among the
    /// records of `view` allowed by its mask to `top`.
    fn search<'s>(
        &self,
        view: &SegmentView<'s>,
        params: &QueryParams,
        query: &[f32],
        top: &mut TopK<'s>,
        stats: &mut ScanStats,
    );
}

/// Compares the query with every allowed record.
pub struct ExactScan;

impl SegmentSearch for ExactScan {
    fn search<'s>(
        &self,
        view: &SegmentView<'s>,
        params: &QueryParams,
        query: &[f32],
        top: &mut TopK<'s>,
        stats: &mut ScanStats,
    ) {
        let seg = view.segment;
        let d = seg.dimensions();
        stats.segments += 1;
        let mut compared = 0u64;
        for (i, v) in seg.vectors().chunks_exact(d).enumerate() {
            if !view.mask[i] {
                continue;
            }
            compared += 1;
            let dist = distance(params.metric, query, v);
            if dist <= top.threshold() {
                top.push(Candidate {
                    distance: dist,
                    id: seg.id(i),
                    segment: view.ordinal,
                    position: i as u32,
                });
            }
        }
        stats.vectors_compared += compared;
    }
}

/// A segment's ANN index, parsed from its index section.
pub enum AnnIndex {
    Ivf(ivf::IvfIndex),
    Hnsw(hnsw::HnswIndex),
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnnIndex::Ivf(ix) => write!(f, "Ivf({} lists)", ix.nlist()),
            AnnIndex::Hnsw(_) => f.write_str("Hnsw"),
        }
    }
}

impl AnnIndex {
    /// Parses an index section of a segment with `records` records.
    pub fn parse(bytes: &[u8], dims: usize, records: usize) -> Result<Self, String> {
        match bytes.get(..4) {
            Some(t) if t == ivf::TAG => {
                <ivf::IvfIndex as SegmentAnn>::from_bytes(bytes, dims, records).map(AnnIndex::Ivf)
            }
            Some(t) if t == hnsw::TAG => {
                <hnsw::HnswIndex as SegmentAnn>::from_bytes(bytes, dims, records)
                    .map(AnnIndex::Hnsw)
            }
            _ => Err("unknown index kind".into()),
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    pub fn kind(&self) -> AnnKind {
        match self {
            AnnIndex::Ivf(_) => <ivf::IvfIndex as SegmentAnn>::KIND,
            AnnIndex::Hnsw(_) => <hnsw::HnswIndex as SegmentAnn>::KIND,
        }
    }
}

impl SegmentSearch for AnnIndex {
    fn search<'s>(
        &self,
        view: &SegmentView<'s>,
        params: &QueryParams,
        query: &[f32],
        top: &mut TopK<'s>,
        stats: &mut ScanStats,
    ) {
        let params = match route(params, view.selectivity) {
            Route::Exact => return ExactScan.search(view, params, query, top, stats),
            Route::Ann(p) => p,
        };
        let found = match self {
            AnnIndex::Ivf(ix) => ix.search(view, &params, query, top, stats),
            AnnIndex::Hnsw(ix) => ix.search(view, &params, query, top, stats),
        };
        if !found {
            // The index could not find k allowed records (a filter removed
            // too many): answer exactly instead.
            ExactScan.search(view, &params, query, top, stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn kernels_match_a_naive_f64_computation() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for len in [1usize, 7, 8, 9, 31, 384, 1000] {
            let a: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            let nd: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let nl: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum();
            assert!((f64::from(dot(&a, &b)) - nd).abs() < 1e-4, "dot len {len}");
            assert!(
                (f64::from(l2_squared(&a, &b)) - nl).abs() < 1e-3,
                "l2 len {len}"
            );
        }
    }

    /// The AVX2 clones must give the portable kernels' floats to the bit:
    /// an index built on one CPU is read on another, and a distance that
    /// differed in the last bit could order ties differently.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_kernels_match_the_portable_ones() {
        if !wide::available() {
            eprintln!("this CPU lacks AVX2: the kernels cannot run here");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut compared = 0;
        for len in [1usize, 7, 8, 15, 16, 17, 31, 32, 33, 48, 100, 384, 1000] {
            for _ in 0..20 {
                let a: Vec<f32> = (0..len).map(|_| rng.random_range(-3.0..3.0)).collect();
                let b: Vec<f32> = (0..len).map(|_| rng.random_range(-3.0..3.0)).collect();
                // SAFETY: the CPU has AVX2 (checked above).
                let (d, l) = unsafe { (wide::dot(&a, &b), wide::l2_squared(&a, &b)) };
                let portable = (lanes(&a, &b, |x, y| x * y), lanes(&a, &b, |x, y| (x - y) * (x - y)));
                assert_eq!(d.to_bits(), portable.0.to_bits(), "dot len {len}");
                assert_eq!(l.to_bits(), portable.1.to_bits(), "l2 len {len}");
                let codes: Vec<u8> = (0..len).map(|_| rng.random_range(0..=255u8)).collect();
                // SAFETY: as above.
                let u = unsafe { wide::dot_u8(&a, &codes) };
                let portable = lanes(&a, &codes, |x, y| x * f32::from(y));
                assert_eq!(u.to_bits(), portable.to_bits(), "dot_u8 len {len}");
                compared += 1;
            }
        }
        assert_eq!(compared, 260);
    }

    /// The tiled distances (two rows by two centroids on AVX-512, where
    /// the CPU has it) hand every pair its [`distance`], to the bit, and
    /// each row meets the centroids in order; odd counts and every
    /// length class (32-lane blocks, 8-lane steps, a scalar tail).
    #[test]
    fn distances_in_order_give_each_pair_its_distance_in_order() {
        if !cfg!(target_arch = "x86_64") || !wide::available_512() {
            eprintln!("this CPU lacks AVX-512: the portable path is what runs");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut compared = 0;
        for len in [1usize, 7, 8, 15, 16, 17, 31, 32, 33, 48, 100, 384, 385] {
            for metric in [Metric::Euclidean, Metric::Cosine, Metric::Dot] {
                let vecs = |n: usize, rng: &mut rand::rngs::StdRng| -> Vec<Vec<f32>> {
                    (0..n)
                        .map(|_| (0..len).map(|_| rng.random_range(-3.0..3.0)).collect())
                        .collect()
                };
                let (rows, cents) = (vecs(5, &mut rng), vecs(7, &mut rng));
                let r: Vec<&[f32]> = rows.iter().map(|v| v.as_slice()).collect();
                let c: Vec<&[f32]> = cents.iter().map(|v| v.as_slice()).collect();
                let mut seen = vec![Vec::new(); rows.len()];
                distances_in_order(metric, &r, &c, |i, j, d| {
                    assert_eq!(
                        d.to_bits(),
                        distance(metric, r[i], c[j]).to_bits(),
                        "{metric:?} len {len} row {i} centroid {j}"
                    );
                    seen[i].push(j);
                    compared += 1;
                });
                for s in &seen {
                    assert_eq!(*s, (0..cents.len()).collect::<Vec<_>>(), "in order, each once");
                }
            }
        }
        assert_eq!(compared, 13 * 3 * 35);
    }

    #[test]
    fn top_k_keeps_the_best_and_breaks_ties_by_id() {
        let mut t = TopK::new(3);
        for (d, id) in [
            (0.5, "e"),
            (0.1, "b"),
            (0.1, "a"),
            (0.9, "z"),
            (0.3, "c"),
            (0.1, "c"),
        ] {
            t.push(Candidate {
                distance: d,
                id,
                segment: 0,
                position: 0,
            });
        }
        let got: Vec<(f32, &str)> = t.into_sorted().iter().map(|c| (c.distance, c.id)).collect();
        assert_eq!(got, vec![(0.1, "a"), (0.1, "b"), (0.1, "c")]);
    }

    #[test]
    fn the_filter_policy_widens_probes_and_goes_exact_when_selective() {
        let p = QueryParams {
            metric: Metric::Dot,
            k: 10,
            nprobe: 8,
            exact: false,
        };
        assert_eq!(route(&p, 1.0), Route::Ann(p));
        assert_eq!(route(&p, 0.25), Route::Ann(QueryParams { nprobe: 32, ..p }));
        assert_eq!(route(&p, SELECTIVE_FILTER / 2.0), Route::Exact);
        assert_eq!(route(&QueryParams { exact: true, ..p }, 1.0), Route::Exact);
    }

    /// Issue 28 F14: a score that overflows (vectors stored before writes
    /// refused such lengths) ranks last and presents as a finite number.
    #[test]
    fn overflowing_scores_rank_last_and_present_finite() {
        let huge = [3e38f32, 3e38];
        let d = distance(Metric::Dot, &huge, &[-3e38, 3e38]);
        assert!(!d.is_nan(), "NaN would rank first: {d}");
        assert!(d > distance(Metric::Dot, &huge, &[0.0, 0.0]));
        let (score, dist) = present(Metric::Dot, d);
        assert!(score.is_finite() && dist.is_finite(), "{score} {dist}");
        let (score, dist) = present(Metric::Euclidean, f32::INFINITY);
        assert!(score.is_finite() && dist.is_finite(), "{score} {dist}");
    }

    #[test]
    fn presented_scores_are_higher_is_better() {
        assert_eq!(present(Metric::Cosine, 0.25), (0.75, 0.25));
        assert_eq!(present(Metric::Dot, -3.0), (3.0, -3.0));
        assert_eq!(present(Metric::Euclidean, 9.0), (0.25, 3.0));
    }
}
