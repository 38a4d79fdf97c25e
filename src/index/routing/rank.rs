//! How a reader ranks a snapped group's centroids for a query without
//! decoding them: from their `u8` codes ([`RankCodes`]), first by
//! integer inner products with the query in two levels of signed bytes
//! ([`RankQuery`]), which bound each distance closely enough that only
//! the few centroids a bound cannot place are ranked exactly.
//!
//! A query's route ranks the centroids of its whole beam (~10,000 at the
//! default probes on a large index), and the exact `u8` distance (a
//! byte widened to a float and multiplied per dimension) made that the
//! largest single cost of a warm query at 4M rows. The integer products
//! take one instruction per 64 dimensions where the CPU has AVX-512
//! VNNI (four per 16 on AVX2), and, being integers, they are the same on
//! every CPU, so the clusters a query probes do not depend on the
//! machine.
//!
//! The bound: the query is `hi_scale × hi + lo_scale × lo + e`, two
//! vectors of signed bytes and a remainder `e` (at most half of
//! `lo_scale` per coordinate), so `q · code` is the two exact integer
//! products, scaled, plus `e · code`, which Cauchy–Schwarz bounds by
//! `‖e‖ ‖code‖` (each code's norm kept from parse). With the rounding of
//! the float distance added, every centroid's float distance lies in
//! `[lower, upper]`; a centroid whose lower bound exceeds the `k`-th best
//! upper bound cannot be among the `k` nearest, and the rest are ranked
//! by the float distance: the same clusters, in the same order, as
//! ranking every centroid exactly.

use super::{f32_at, snapped_len};
use crate::index::dot_u8;
use crate::vocab::Metric;

/// A snapped group's centroids as a reader ranks them without decoding
/// them: per centroid its base and step, its offset's inner product with
/// the group's top centroid, its squared norm, its code's norm, and its
/// codes. A quarter of the memory a query's ranking pass reads from f32
/// centroids (which a wide beam reads from well beyond the CPU's caches:
/// ~10,000 centroids per query at the default probes).
#[derive(Debug)]
pub(crate) struct RankCodes {
    dims: usize,
    lo: Vec<f32>,
    step: Vec<f32>,
    top_dot: Vec<f32>,
    sq_norm: Vec<f32>,
    /// `step × ‖code‖`, rounded up: what the bound scales by.
    slack_coef: Vec<f32>,
    codes: Vec<u8>,
}

impl RankCodes {
    /// The codes of a snapped block (`8 + dims` bytes per centroid, as
    /// checked by the head) whose group's top centroid is `top`.
    pub(super) fn new(top: &[f32], bytes: &[u8], dims: usize) -> Self {
        let n = bytes.len() / snapped_len(dims);
        let mut r = RankCodes {
            dims,
            lo: Vec::with_capacity(n),
            step: Vec::with_capacity(n),
            top_dot: Vec::with_capacity(n),
            sq_norm: Vec::with_capacity(n),
            slack_coef: Vec::with_capacity(n),
            codes: Vec::with_capacity(n * dims),
        };
        for c in bytes.chunks_exact(snapped_len(dims)) {
            let (lo, step) = (f32_at(c, 0), f32_at(c, 4));
            let (mut td, mut sq, mut cn) = (0f64, 0f64, 0u64);
            for (&q, t) in c[8..].iter().zip(top) {
                let off = f64::from(lo + step * f32::from(q));
                td += off * f64::from(*t);
                sq += off * off;
                cn += u64::from(q) * u64::from(q);
            }
            r.lo.push(lo);
            r.step.push(step);
            r.top_dot.push(td as f32);
            r.sq_norm.push(sq as f32);
            // Rounded up, so the bound it enters stays a bound.
            r.slack_coef.push((f64::from(step) * (cn as f64).sqrt() * (1.0 + 1e-6)) as f32);
            r.codes.extend_from_slice(&c[8..]);
        }
        r
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.codes.len() + self.lo.len() * 20
    }

    fn code(&self, j: usize) -> &[u8] {
        &self.codes[j * self.dims..(j + 1) * self.dims]
    }

    /// Centroid `j`'s distance from the query by `metric` (the metric
    /// centroids are compared with): [`crate::index::distance`] of the
    /// query from the decoded centroid, up to rounding. `to_top` is that
    /// distance from the group's top centroid.
    pub(crate) fn distance(&self, j: usize, metric: Metric, q: &RankQuery, to_top: f32) -> f32 {
        // q · (c - top), the code's offset.
        let qr = self.lo[j] * q.sum + self.step[j] * dot_u8(q.q, self.code(j));
        let d = self.offset_distance(j, metric, to_top, qr);
        if d.is_nan() {
            f32::INFINITY
        } else {
            d
        }
    }

    /// Centroid `j`'s distance given `qr`, the query's inner product with
    /// its offset from the group's top centroid.
    #[inline]
    fn offset_distance(&self, j: usize, metric: Metric, to_top: f32, qr: f32) -> f32 {
        match metric {
            // -q·c, or 1 - q·c: `to_top` less q's part of the offset.
            Metric::Dot | Metric::Cosine => to_top - qr,
            // |q - top - r|² = |q - top|² - 2 (q - top)·r + |r|².
            Metric::Euclidean => to_top - 2.0 * (qr - self.top_dot[j]) + self.sq_norm[j],
        }
    }

    /// Every centroid's [`Self::distance`], handed to `visit(j, distance)`
    /// in order.
    #[cfg(test)]
    pub(crate) fn distances(&self, metric: Metric, q: &RankQuery, to_top: f32, mut visit: impl FnMut(usize, f32)) {
        for j in 0..self.lo.len() {
            visit(j, self.distance(j, metric, q, to_top));
        }
    }

    /// Bounds on every centroid's [`Self::distance`], from integer
    /// products, handed to `visit(j, lower, upper)` in order. A query
    /// whose bytes cannot stand for it (not finite) gets infinite bounds:
    /// every centroid is then ranked exactly.
    pub(crate) fn bounds(&self, metric: Metric, q: &RankQuery, to_top: f32, mut visit: impl FnMut(usize, f32, f32)) {
        let mut dots = vec![(0i32, 0i32); self.lo.len()];
        dot_codes_each(&self.codes, self.dims, &q.hi, &q.lo, &mut dots);
        let twice = if metric == Metric::Euclidean { 2.0 } else { 1.0 };
        // Per unit of a code's step × norm: the remainder's part and the
        // float kernel's rounding (relative to Σ|q_i| code_i ≤ ‖q‖ ‖code‖).
        let per_coef = twice * (q.rest_norm + q.norm * q.kernel_rounding);
        for (j, &(hi, lo)) in dots.iter().enumerate() {
            let dot = q.hi_scale * hi as f32 + q.lo_scale * lo as f32;
            let base = self.lo[j] * q.sum;
            let d = self.offset_distance(j, metric, to_top, base + self.step[j] * dot);
            // The rounding of this estimate and of the float distance's
            // last operations: a few units of f32 rounding of the terms.
            let coef = self.slack_coef[j];
            let terms = to_top.abs() + base.abs() + coef * q.norm + self.top_dot[j].abs() + self.sq_norm[j];
            let slack = coef * per_coef + terms * 2e-6;
            let (lower, upper) = (d - slack, d + slack);
            if lower.is_finite() && upper.is_finite() {
                visit(j, lower, upper);
            } else {
                visit(j, f32::NEG_INFINITY, f32::INFINITY);
            }
        }
    }
}

/// A query as the ranking takes it: the floats (for the exact
/// distances), and two levels of signed bytes with what they leave out.
pub(crate) struct RankQuery<'q> {
    q: &'q [f32],
    /// `Σ q`.
    sum: f32,
    hi: Vec<i8>,
    lo: Vec<i8>,
    hi_scale: f32,
    lo_scale: f32,
    /// `‖q - hi_scale × hi - lo_scale × lo‖`, rounded up.
    rest_norm: f32,
    /// `‖q‖`, rounded up.
    norm: f32,
    /// The float kernel's relative rounding over these dimensions.
    kernel_rounding: f32,
}

impl<'q> RankQuery<'q> {
    pub(crate) fn new(q: &'q [f32]) -> Self {
        let q64: Vec<f64> = q.iter().map(|&x| f64::from(x)).collect();
        let (hi, hi_scale) = signed_bytes(&q64);
        let rest: Vec<f64> = q64.iter().zip(&hi).map(|(x, &h)| x - hi_scale * f64::from(h)).collect();
        let (lo, lo_scale) = signed_bytes(&rest);
        let rest_sq: f64 = (rest.iter().zip(&lo))
            .map(|(r, &l)| (r - lo_scale * f64::from(l)).powi(2))
            .sum();
        RankQuery {
            q,
            sum: q.iter().sum(),
            hi,
            lo,
            hi_scale: hi_scale as f32,
            lo_scale: lo_scale as f32,
            rest_norm: (rest_sq.sqrt() * (1.0 + 1e-6)) as f32 + f32::MIN_POSITIVE,
            norm: (q64.iter().map(|x| x * x).sum::<f64>().sqrt() * (1.0 + 1e-6)) as f32,
            // The kernel sums `n` products in 32 lanes, then the lanes
            // pairwise (`crate::index::lanes`): each product is off by at
            // most ~(n / 32 + 16) units of rounding of the sum of their
            // magnitudes; twice that.
            kernel_rounding: 2.0 * (q.len() as f32 / 32.0 + 16.0) * f32::EPSILON,
        }
    }
}

/// `v` as signed bytes and their scale, a float the ranking multiplies
/// by as it is (`v_i ≈ scale × b_i`, off by at most about half the
/// scale).
fn signed_bytes(v: &[f64]) -> (Vec<i8>, f64) {
    let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        let scale = if max.is_finite() { 0.0 } else { f64::NAN };
        return (vec![0; v.len()], scale);
    }
    let scale = f64::from((max / 127.0) as f32);
    let bytes = v.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8).collect();
    (bytes, scale)
}

/// [`dot_codes`] of each `dims`-byte code in `codes`, into `out`.
pub(crate) fn dot_codes_each(codes: &[u8], dims: usize, hi: &[i8], lo: &[i8], out: &mut [(i32, i32)]) {
    #[cfg(target_arch = "x86_64")]
    {
        if bytes_simd::vnni() {
            // SAFETY: the CPU has AVX-512F, BW and VNNI.
            return unsafe { bytes_simd::each_vnni(codes, dims, hi, lo, out) };
        }
        if crate::index::wide::available() {
            // SAFETY: the CPU has AVX2.
            return unsafe { bytes_simd::each_avx2(codes, dims, hi, lo, out) };
        }
    }
    for (code, o) in codes.chunks_exact(dims.max(1)).zip(out) {
        *o = dot_codes_portable(code, hi, lo);
    }
}

/// `(Σ code_i × hi_i, Σ code_i × lo_i)`, exact: the same on every CPU
/// (each product at most 255 × 127, so 65,536 dimensions fit an `i32`).
#[cfg(test)]
fn dot_codes(code: &[u8], hi: &[i8], lo: &[i8]) -> (i32, i32) {
    let mut out = [(0, 0)];
    dot_codes_each(code, code.len(), hi, lo, &mut out);
    out[0]
}

fn dot_codes_portable(code: &[u8], hi: &[i8], lo: &[i8]) -> (i32, i32) {
    let (mut h, mut l) = (0i32, 0i32);
    for ((&c, &a), &b) in code.iter().zip(hi).zip(lo) {
        h = h.wrapping_add(i32::from(c) * i32::from(a));
        l = l.wrapping_add(i32::from(c) * i32::from(b));
    }
    (h, l)
}

#[cfg(target_arch = "x86_64")]
mod bytes_simd {
    use std::arch::x86_64::*;

    /// Whether this CPU has AVX-512 VNNI (with F and BW; detected once).
    #[inline]
    pub(super) fn vnni() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }

    /// [`super::dot_codes`] 64 bytes per instruction (the last ones
    /// masked).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VNNI ([`vnni`]).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_codes_vnni(code: &[u8], hi: &[i8], lo: &[i8]) -> (i32, i32) {
        let n = code.len().min(hi.len()).min(lo.len());
        let (mut h, mut l) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let mut i = 0;
        while i < n {
            let mask: __mmask64 = if n - i >= 64 { !0 } else { (1u64 << (n - i)) - 1 };
            // SAFETY: the mask loads only bytes below `n`, inside all three.
            let (c, a, b) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(mask, code.as_ptr().add(i).cast()),
                    _mm512_maskz_loadu_epi8(mask, hi.as_ptr().add(i).cast()),
                    _mm512_maskz_loadu_epi8(mask, lo.as_ptr().add(i).cast()),
                )
            };
            h = _mm512_dpbusd_epi32(h, c, a);
            l = _mm512_dpbusd_epi32(l, c, b);
            i += 64;
        }
        (_mm512_reduce_add_epi32(h), _mm512_reduce_add_epi32(l))
    }

    /// [`super::dot_codes_each`] with [`dot_codes_vnni`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VNNI ([`vnni`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn each_vnni(codes: &[u8], dims: usize, hi: &[i8], lo: &[i8], out: &mut [(i32, i32)]) {
        for (code, o) in codes.chunks_exact(dims.max(1)).zip(out) {
            // SAFETY: the caller checked the CPU.
            *o = unsafe { dot_codes_vnni(code, hi, lo) };
        }
    }

    /// [`super::dot_codes_each`] with [`dot_codes_avx2`].
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn each_avx2(codes: &[u8], dims: usize, hi: &[i8], lo: &[i8], out: &mut [(i32, i32)]) {
        for (code, o) in codes.chunks_exact(dims.max(1)).zip(out) {
            // SAFETY: the caller checked the CPU.
            *o = unsafe { dot_codes_avx2(code, hi, lo) };
        }
    }

    /// [`super::dot_codes`] sixteen bytes at a time, widened to 16 bits.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_codes_avx2(code: &[u8], hi: &[i8], lo: &[i8]) -> (i32, i32) {
        let n = code.len().min(hi.len()).min(lo.len());
        let (mut h, mut l) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n`, inside all three; unaligned loads.
            let (c, a, b) = unsafe {
                (
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(code.as_ptr().add(i).cast())),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(hi.as_ptr().add(i).cast())),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(lo.as_ptr().add(i).cast())),
                )
            };
            h = _mm256_add_epi32(h, _mm256_madd_epi16(c, a));
            l = _mm256_add_epi32(l, _mm256_madd_epi16(c, b));
            i += 16;
        }
        let (mut hs, mut ls) = ([0i32; 8], [0i32; 8]);
        // SAFETY: each array holds eight i32s.
        unsafe {
            _mm256_storeu_si256(hs.as_mut_ptr().cast(), h);
            _mm256_storeu_si256(ls.as_mut_ptr().cast(), l);
        }
        let (mut th, mut tl) = super::dot_codes_portable(&code[i..n], &hi[i..n], &lo[i..n]);
        for k in 0..8 {
            th = th.wrapping_add(hs[k]);
            tl = tl.wrapping_add(ls[k]);
        }
        (th, tl)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The integer products are exact: every kernel this CPU has gives
    /// the portable loop's integers, at lengths around the registers'.
    #[test]
    fn every_kernel_gives_the_exact_integer_products() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut checked = 0;
        for n in [0, 1, 7, 15, 16, 17, 31, 63, 64, 65, 100, 128, 383, 384, 385, 1000] {
            for _ in 0..20 {
                let code: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                let hi: Vec<i8> = (0..n).map(|_| rng.random_range(-127..=127)).collect();
                let lo: Vec<i8> = (0..n).map(|_| rng.random_range(-127..=127)).collect();
                let exact = |b: &[i8]| -> i64 { code.iter().zip(b).map(|(&c, &x)| i64::from(c) * i64::from(x)).sum() };
                let want = (exact(&hi) as i32, exact(&lo) as i32);
                assert_eq!(dot_codes_portable(&code, &hi, &lo), want, "portable, {n}");
                assert_eq!(dot_codes(&code, &hi, &lo), want, "dispatched, {n}");
                #[cfg(target_arch = "x86_64")]
                {
                    if bytes_simd::vnni() {
                        // SAFETY: checked.
                        assert_eq!(unsafe { bytes_simd::dot_codes_vnni(&code, &hi, &lo) }, want, "vnni, {n}");
                        checked += 1;
                    }
                    if crate::index::wide::available() {
                        // SAFETY: checked.
                        assert_eq!(unsafe { bytes_simd::dot_codes_avx2(&code, &hi, &lo) }, want, "avx2, {n}");
                        checked += 1;
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        assert!(checked > 0 || !crate::index::wide::available());
    }

    /// The two byte levels stand for the query within the remainder the
    /// bound uses.
    #[test]
    fn the_query_bytes_leave_out_no_more_than_the_remainder() {
        let mut rng = StdRng::seed_from_u64(6);
        for dims in [1, 3, 32, 384] {
            let q: Vec<f32> = (0..dims).map(|_| rng.random_range(-2.0..2.0)).collect();
            let rq = RankQuery::new(&q);
            let rest: f64 = q
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let (h, l) = (f64::from(rq.hi_scale), f64::from(rq.lo_scale));
                    (f64::from(x) - h * f64::from(rq.hi[i]) - l * f64::from(rq.lo[i])).powi(2)
                })
                .sum::<f64>()
                .sqrt();
            assert!(rest <= f64::from(rq.rest_norm), "{dims}: {rest} > {}", rq.rest_norm);
            // Two levels of bytes: the remainder is tiny next to the query.
            assert!(rq.rest_norm < 1e-4 * rq.norm, "{dims}: {} of {}", rq.rest_norm, rq.norm);
        }
        let zero = RankQuery::new(&[0.0; 8]);
        assert_eq!((zero.hi_scale, zero.lo_scale), (0.0, 0.0));
    }
}
