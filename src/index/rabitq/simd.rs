//! The one-bit stage of [`ListQuery::scan`] eight rows at a time, with
//! AVX-512 (`VPOPCNTQ`) where the CPU has it (checked at run time).
//!
//! Each of a block's eight rows takes one 64-bit lane: word `k` of every
//! row's sign code is gathered into one register, ANDed with the query's
//! four bit planes' word `k` and popcounted in all lanes at once; the
//! counts then become the eight estimates and bounds in the same float
//! operations, in the same order, as [`ListQuery::estimate_one_bit`]
//! (no fused multiply-adds), so both paths give identical results.
//! Survivors go on as in the portable scan (the filter, the multi-bit
//! refinement), one by one; rows past the last full block take the
//! portable path.

use std::arch::x86_64::*;

use super::{words, ListCodes, ListQuery, QueryCode};
use crate::vocab::Metric;

/// Whether the CPU has what [`ListQuery::scan_avx512`] and
/// [`QueryCode::new_avx512`] use (checked once).
pub(super) fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
            && std::arch::is_x86_feature_detected!("popcnt")
    })
}

impl ListQuery {
    /// [`ListQuery::scan`] with the one-bit stage in blocks of eight
    /// rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, AVX-512DQ, AVX-512 VPOPCNTDQ and
    /// POPCNT ([`available`]).
    #[target_feature(enable = "avx512f,avx512dq,avx512vpopcntdq,popcnt")]
    pub(super) unsafe fn scan_avx512(
        &self,
        codes: &ListCodes,
        keep: &dyn Fn(usize) -> bool,
        cut: f32,
        out: &mut Vec<(f32, f32, u32)>,
    ) {
        let (n, w) = (codes.len(), codes.words);
        let multi = codes.code_bits > 1;
        let q = &self.code;
        let planes = &q.planes[..4 * q.words];
        let stride = w as i64;
        let lanes = _mm512_setr_epi64(
            0,
            stride,
            2 * stride,
            3 * stride,
            4 * stride,
            5 * stride,
            6 * stride,
            7 * stride,
        );
        let splat = _mm256_set1_ps;
        let (lo, delta, sum) = (splat(q.lo), splat(q.delta), splat(q.sum));
        let (two, inv_sqrt_d) = (splat(2.0), splat(self.inv_sqrt_d));
        let (per_spread, rounding) = (splat(self.per_spread), splat(self.rounding));
        let blocks = n / 8;
        for b in 0..blocks {
            let first = b * 8;
            prefetch_block(codes, first + PREFETCH_ROWS);
            // SAFETY: rows `first..first + 8` exist, so every gathered
            // word `(first + lane) * w + k` (k < w) is inside `bits`.
            let base = unsafe { codes.bits.as_ptr().add(first * w) } as *const i64;
            let (mut ones, mut weighted) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for k in 0..w {
                let at = _mm512_add_epi64(lanes, _mm512_set1_epi64(k as i64));
                // SAFETY: as above.
                let x = unsafe { _mm512_i64gather_epi64::<8>(at, base) };
                let plane = |p: usize| {
                    _mm512_popcnt_epi64(_mm512_and_si512(
                        x,
                        _mm512_set1_epi64(planes[p * w + k] as i64),
                    ))
                };
                let sum01 = _mm512_add_epi64(plane(0), _mm512_slli_epi64::<1>(plane(1)));
                let sum23 = _mm512_add_epi64(
                    _mm512_slli_epi64::<2>(plane(2)),
                    _mm512_slli_epi64::<3>(plane(3)),
                );
                ones = _mm512_add_epi64(ones, _mm512_popcnt_epi64(x));
                weighted = _mm512_add_epi64(weighted, _mm512_add_epi64(sum01, sum23));
            }
            // As `code_dot`: (2 (lo · ones + delta · weighted) - sum) / √D.
            let pos = _mm256_add_ps(
                _mm256_mul_ps(lo, _mm512_cvtepi64_ps(ones)),
                _mm256_mul_ps(delta, _mm512_cvtepi64_ps(weighted)),
            );
            let dot = _mm256_mul_ps(_mm256_sub_ps(_mm256_mul_ps(two, pos), sum), inv_sqrt_d);
            // SAFETY: rows `first..first + 8` exist in every factor array.
            let load = |v: &[f32]| unsafe { _mm256_loadu_ps(v.as_ptr().add(first)) };
            let (norm, inv_ip) = (load(&codes.norm), load(&codes.inv_ip));
            // As `estimate_one_bit` and `distance`.
            let ipr = _mm256_mul_ps(_mm256_mul_ps(norm, dot), inv_ip);
            let err = _mm256_mul_ps(
                norm,
                _mm256_add_ps(
                    _mm256_mul_ps(per_spread, load(&codes.spread)),
                    _mm256_mul_ps(rounding, inv_ip),
                ),
            );
            let (est, err) = match self.metric {
                Metric::Euclidean => (
                    _mm256_sub_ps(
                        _mm256_add_ps(splat(self.y_norm2), _mm256_mul_ps(norm, norm)),
                        _mm256_mul_ps(two, ipr),
                    ),
                    _mm256_mul_ps(two, err),
                ),
                Metric::Dot => (
                    _mm256_sub_ps(
                        _mm256_setzero_ps(),
                        _mm256_add_ps(
                            _mm256_add_ps(splat(self.q_dot_c), ipr),
                            load(&codes.cdot),
                        ),
                    ),
                    err,
                ),
                Metric::Cosine => (
                    _mm256_sub_ps(
                        splat(1.0),
                        _mm256_add_ps(
                            _mm256_add_ps(splat(self.q_dot_c), ipr),
                            load(&codes.cdot),
                        ),
                    ),
                    err,
                ),
            };
            let low = _mm256_sub_ps(est, err);
            // Rows whose lower bound is above the cut (not NaN) are
            // skipped, as the portable scan's `est - err > cut`.
            let over = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(low, splat(cut)));
            if over == 0xff {
                continue;
            }
            let (mut ests, mut errs) = ([0f32; 8], [0f32; 8]);
            // SAFETY: `ests` and `errs` hold eight floats.
            unsafe {
                _mm256_storeu_ps(ests.as_mut_ptr(), est);
                _mm256_storeu_ps(errs.as_mut_ptr(), err);
            }
            for lane in 0..8 {
                let i = first + lane;
                if over & (1 << lane) == 0 && keep(i) {
                    let ex_dot = || {
                        if codes.code_bits <= MAX_BYTE_CODE_BITS {
                            // SAFETY: the CPU has AVX-512F and BW (this
                            // kernel's own requirements), and the code's
                            // low bits fit the byte products.
                            unsafe { self.ex_dot_avx512(codes, i) }
                        } else {
                            self.ex_dot(codes, i)
                        }
                    };
                    self.survivor(codes, i, (ests[lane], errs[lane]), cut, multi, out, ex_dot);
                }
            }
        }
        for i in blocks * 8..n {
            self.scan_row(codes, i, keep, cut, multi, out);
        }
    }

    /// [`ListQuery::ex_dot`] 64 coordinates at a time, from the 8-bit
    /// query's values as bytes `u`: `Σ_j s_j u_j` (`s` the sign bits) is
    /// a sum of the bytes the sign word masks in, and `Σ_j l_j u_j` (`l`
    /// the low bits' value) a sum of byte products. The same integers as
    /// the portable popcounts, so the same floats.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW ([`available`]), and
    /// `codes.code_bits` must be at most [`MAX_BYTE_CODE_BITS`].
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn ex_dot_avx512(&self, codes: &ListCodes, i: usize) -> (f32, f32) {
        let fine = self.fine.get_or_init(|| QueryCode::new(&self.y, 8));
        let w = codes.words;
        debug_assert!(fine.values.len() >= 64 * w && codes.code_bits <= MAX_BYTE_CODE_BITS);
        let low = usize::from(codes.code_bits - 1);
        let sign = &codes.bits[i * w..(i + 1) * w];
        let planes = &codes.planes[i * low * w..(i + 1) * low * w];
        let zero = _mm512_setzero_si512();
        let pairs = _mm512_set1_epi16(1);
        let (mut signed, mut products, mut lows) = (zero, zero, zero);
        let mut ones_sign = 0u32;
        for (k, &s) in sign.iter().enumerate() {
            // SAFETY: `values` holds 64 bytes per word.
            let u = unsafe { _mm512_loadu_si512(fine.values.as_ptr().add(64 * k) as *const __m512i) };
            signed = _mm512_add_epi64(signed, _mm512_sad_epu8(_mm512_maskz_mov_epi8(s, u), zero));
            ones_sign += s.count_ones();
            let mut x = zero;
            for b in 0..low {
                x = _mm512_mask_add_epi8(x, planes[b * w + k], x, _mm512_set1_epi8(1 << b));
            }
            lows = _mm512_add_epi64(lows, _mm512_sad_epu8(x, zero));
            // `u` unsigned times `x` (< 64) signed, pairs summed: at most
            // 2 × 255 × 63, inside an i16.
            let prod = _mm512_maddubs_epi16(u, x);
            products = _mm512_add_epi32(products, _mm512_madd_epi16(prod, pairs));
        }
        let top = 1u32 << low;
        let ones_low = _mm512_reduce_add_epi64(lows) as u32;
        let sum_x = (top * ones_sign + ones_low) as f32;
        let signed = _mm512_reduce_add_epi64(signed) as u32;
        let products = _mm512_reduce_add_epi32(products) as u32;
        let weighted = top as f32 * signed as f32 + products as f32;
        let sum_xy = fine.lo * sum_x + fine.delta * weighted;
        (sum_xy - (top as f32 - 0.5) * fine.sum, fine.delta)
    }
}

/// Rows ahead of the scan whose sign words and factors are asked of
/// memory before the scan reaches them: the hardware's prefetchers
/// start late on a cluster's short arrays, and a scan of the shared
/// dataset's clusters ran ~5 % faster with these hints.
const PREFETCH_ROWS: usize = 32;

/// Asks memory for the sign words and one-bit factors of the block of
/// eight rows at `first` (nothing past the list's end). A hint: it reads
/// nothing and changes no result.
#[inline(always)]
pub(super) fn prefetch_block(codes: &ListCodes, first: usize) {
    if first >= codes.len() {
        return;
    }
    let w = codes.words;
    let bits = codes.bits[first * w..].as_ptr() as *const i8;
    let words = (8 * w).min((codes.len() - first) * w);
    for line in (0..words * 8).step_by(64) {
        // SAFETY: a prefetch only hints; the address is inside `bits`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(bits.add(line)) };
    }
    for v in [&codes.norm, &codes.inv_ip, &codes.spread, &codes.cdot] {
        // SAFETY: as above; row `first` exists.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(first) as *const i8) };
    }
}

/// Most bits per dimension [`ListQuery::ex_dot_avx512`] takes: its byte
/// products hold low bits' values below 64.
pub(super) const MAX_BYTE_CODE_BITS: u8 = 7;

impl QueryCode {
    /// [`QueryCode::new`] sixteen coordinates at a time: the same float
    /// operations per coordinate, so the same integers; each bit plane's
    /// word is one byte-mask test over 64 coordinates' values.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn new_avx512(y: &[f32], bits: usize) -> QueryCode {
        debug_assert!((1..=8).contains(&bits));
        let dims = y.len();
        let w = words(dims);
        // The masked lanes of a last, partial chunk of sixteen.
        let lanes = |at: usize| -> __mmask16 {
            let left = dims - at;
            if left >= 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            }
        };
        // SAFETY (every masked load below): only lanes inside `y` are read.
        let load = |at: usize| unsafe { _mm512_maskz_loadu_ps(lanes(at), y.as_ptr().add(at)) };
        let (mut lo, mut hi) = (
            _mm512_set1_ps(f32::INFINITY),
            _mm512_set1_ps(f32::NEG_INFINITY),
        );
        for at in (0..dims).step_by(16) {
            let m = lanes(at);
            let v = load(at);
            lo = _mm512_mask_min_ps(lo, m, lo, v);
            hi = _mm512_mask_max_ps(hi, m, hi, v);
        }
        let (lo, hi) = if dims == 0 {
            (0.0, 0.0)
        } else {
            (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi))
        };
        let (top, delta, inv) = QueryCode::grid(lo, hi, bits);
        let (lo_v, inv_v, half) = (
            _mm512_set1_ps(lo),
            _mm512_set1_ps(inv),
            _mm512_set1_ps(0.5),
        );
        let top_v = _mm512_set1_epi32(top as i32);
        let mut planes = vec![0u64; bits * w];
        let mut sum_u = _mm512_setzero_si512();
        let mut values = vec![0u8; 64 * w];
        for k in 0..w {
            let bytes = &mut values[64 * k..64 * (k + 1)];
            for c in 0..4 {
                let at = 64 * k + 16 * c;
                let packed = if at < dims {
                    // As the portable `((v - lo) * inv + 0.5) as u32`, capped at `top`.
                    let t = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(load(at), lo_v), inv_v), half);
                    let u = _mm512_maskz_min_epu32(lanes(at), _mm512_cvttps_epu32(t), top_v);
                    sum_u = _mm512_add_epi32(sum_u, u);
                    _mm512_cvtepi32_epi8(u)
                } else {
                    _mm_setzero_si128()
                };
                // SAFETY: `bytes` holds 64 bytes; this writes 16 at 16 c.
                unsafe { _mm_storeu_si128(bytes.as_mut_ptr().add(16 * c) as *mut __m128i, packed) };
            }
            // SAFETY: `bytes` holds 64 bytes.
            let values = unsafe { _mm512_loadu_si512(bytes.as_ptr() as *const __m512i) };
            for (b, plane) in planes.chunks_exact_mut(w).enumerate() {
                plane[k] = _mm512_test_epi8_mask(values, _mm512_set1_epi8((1u8 << b) as i8));
            }
        }
        let sum_u = _mm512_reduce_add_epi32(sum_u) as u32;
        let mut code = QueryCode::from_parts(dims, bits, planes, lo, delta, u64::from(sum_u));
        code.values = values;
        code
    }
}
