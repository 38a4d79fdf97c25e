//! RaBitQ codes: one bit per dimension with a proven error bound (Gao &
//! Long, "RaBitQ", SIGMOD 2024).
//!
//! A row `o` of an IVF list with centroid `c` is stored as the signs of
//! its rotated residual `P(o - c)` (packed in `u64` words) plus three
//! factors: `norm = |o - c|`, `ip = <x, o'>` (how well the sign vector
//! `x = sign(P(o - c)) / √D` matches the unit residual `o'`) and
//! `cdot = <c, o - c>`. A query `q` is rotated and quantized once
//! ([`QueryCode`]: 4 bits per coordinate) and serves every list: with
//! `y = Pq - Pc`, the reader estimates
//! `<o - c, q - c> ≈ norm · <x, y> / ip`, where `<x, y> = <x, Pq> - <x, Pc>`
//! and `<x, Pc>` is computed once per row when a code block is parsed.
//! The estimate is unbiased and, with high probability, within
//! `norm · |y| · √(1 - ip²) / ip · ε0 / √(D - 1)` of the truth (the
//! paper's Theorem 3.2; see [`EPSILON0`]). Every metric's ranking distance follows
//! from that inner product, so each estimate comes with a lower and an
//! upper bound, and a search can rerank exactly the rows whose lower
//! bound beats the `k`-th best upper bound.
//!
//! `<x, Pq>` costs a handful of AND + POPCNT per row: `Pq` is quantized to
//! 4 bits (its rounding error is added to the bound) and split into four
//! bit planes, so `Σ_{x_i > 0} q_i` is four popcounts per word.
//!
//! The rotation `P` is a randomized Hadamard transform (fixed seed, so
//! every writer and reader agrees without storing it): rounds of random
//! sign flips and fast Walsh-Hadamard transforms over the first and the
//! last `2^⌊log2 D⌋` coordinates. Each step is orthogonal, so distances
//! are unchanged, and it costs `O(D log D)` for any `D`, where a dense
//! random rotation would cost `D²` per vector and `D³` to make.

use crate::vocab::Metric;

pub(crate) mod ex;
mod rotation;
#[cfg(target_arch = "x86_64")]
mod simd;

pub(crate) use rotation::Rotation;

/// The bound's width in standard deviations of the estimator's error.
/// The error is close to normal with standard deviation
/// `|q⊥| √(1 - ip²) / ip / √(D - 1)`; the paper's 1.9 leaves about 6 % of
/// rows outside (measured), 3.0 about 0.3 %, which is what a search that
/// skips rows by their bound needs.
pub(crate) const EPSILON0: f32 = 3.0;

/// `u64` words per code of `dims` bits.
pub(crate) fn words(dims: usize) -> usize {
    dims.div_ceil(64)
}

/// Bytes one row takes in a list's code block of `bits` bits per
/// dimension: the sign words and three factors, plus, for more than one
/// bit, `bits - 1` low-bit planes and two more factors.
pub(crate) fn row_bytes(dims: usize, bits: u8) -> usize {
    let one = words(dims) * 8 + 12;
    match bits {
        1 => one,
        b => one + usize::from(b - 1) * words(dims) * 8 + 8,
    }
}

/// Writes `v - centroid` into `r` and returns its length, as the encoder
/// stores it (and [`ListCodes::block_matches`] checks it).
#[inline(always)]
fn residual(v: &[f32], centroid: &[f32], r: &mut [f32]) -> f32 {
    for ((r, x), c) in r.iter_mut().zip(v).zip(centroid) {
        *r = x - c;
    }
    super::dot(r, r).sqrt()
}

/// The codes of one IVF list, struct-of-arrays. `spread`, `inv_ip`,
/// `ex_*` derived fields and `radius` are derived when a block is parsed
/// (never stored): they move per-row work out of every query's scan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ListCodes {
    words: usize,
    /// Bits per dimension (1: the sign only).
    code_bits: u8,
    bits: Vec<u64>,
    norm: Vec<f32>,
    ip: Vec<f32>,
    cdot: Vec<f32>,
    /// With more than one bit: per row, `code_bits - 1` planes of
    /// `words` words (plane `b`: bit `b` of each coordinate's value).
    planes: Vec<u64>,
    /// The grid point's cosine with the residual ([`ex`]).
    ex_ip: Vec<f32>,
    /// The grid point's length `|ȳ|`.
    ex_len: Vec<f32>,
    /// `√(1 - ip²) / ip`: the row's share of the bound.
    spread: Vec<f32>,
    /// `1 / ip`.
    inv_ip: Vec<f32>,
    /// The same two for the multi-bit code, and `1 / (|ȳ| ex_ip)`.
    ex_spread: Vec<f32>,
    ex_inv_ip: Vec<f32>,
    ex_scale: Vec<f32>,
    /// The largest `norm`: every row lies within it of the centroid.
    radius: f32,
}

impl ListCodes {
    /// Encodes `vectors` (`n × dims`) of a list with centroid `centroid`,
    /// `code_bits` bits per dimension (1 to [`ex::MAX_CODE_BITS`]). On
    /// CPUs with AVX2 it runs compiled for it (the rotation and the
    /// multi-bit search inlined), with the same result.
    pub(crate) fn encode(
        rot: &Rotation,
        centroid: &[f32],
        vectors: &[f32],
        code_bits: u8,
    ) -> Self {
        #[cfg(target_arch = "x86_64")]
        if crate::index::wide::available() {
            // SAFETY: the CPU has AVX2.
            return unsafe { Self::encode_avx2(rot, centroid, vectors, code_bits) };
        }
        Self::encode_rows(rot, centroid, vectors, code_bits)
    }

    /// [`ListCodes::encode`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2 ([`crate::index::wide::available`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn encode_avx2(rot: &Rotation, centroid: &[f32], vectors: &[f32], code_bits: u8) -> Self {
        Self::encode_rows(rot, centroid, vectors, code_bits)
    }

    #[inline(always)]
    fn encode_rows(rot: &Rotation, centroid: &[f32], vectors: &[f32], code_bits: u8) -> Self {
        assert!((1..=ex::MAX_CODE_BITS).contains(&code_bits));
        let dims = rot.dims();
        let w = words(dims);
        let n = vectors.len() / dims.max(1);
        let ex_planes = usize::from(code_bits - 1);
        let mut codes = ListCodes {
            words: w,
            code_bits,
            bits: vec![0; n * w],
            norm: Vec::with_capacity(n),
            ip: Vec::with_capacity(n),
            cdot: Vec::with_capacity(n),
            planes: vec![0; n * ex_planes * w],
            ex_ip: Vec::new(),
            ex_len: Vec::new(),
            spread: Vec::new(),
            inv_ip: Vec::new(),
            ex_spread: Vec::new(),
            ex_inv_ip: Vec::new(),
            ex_scale: Vec::new(),
            radius: 0.0,
        };
        let sqrt_d = (dims as f32).sqrt();
        let mut r = vec![0f32; dims];
        let mut x = vec![0u8; dims];
        for (i, v) in vectors.chunks_exact(dims).enumerate() {
            let norm = residual(v, centroid, &mut r);
            let cdot = super::dot(centroid, &r);
            rot.apply(&mut r);
            let out = &mut codes.bits[i * w..(i + 1) * w];
            for (word, r) in out.iter_mut().zip(r.chunks(64)) {
                *word = r
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (j, x)| acc | u64::from(*x > 0.0) << j);
            }
            let abs_sum = r.iter().fold(0f32, |acc, x| acc + x.abs());
            // <x, o'> = Σ|r_j| / (√D |r|); a zero residual estimates 0.
            let ip = if norm > 0.0 {
                (abs_sum / (sqrt_d * norm)).max(1e-6)
            } else {
                1.0
            };
            codes.norm.push(norm);
            codes.ip.push(ip);
            codes.cdot.push(cdot);
            if code_bits > 1 {
                let (cos, len) = ex::encode(&r, code_bits, &mut x);
                let planes = &mut codes.planes[i * ex_planes * w..(i + 1) * ex_planes * w];
                for (b, plane) in planes.chunks_exact_mut(w).enumerate() {
                    for (word, x) in plane.iter_mut().zip(x.chunks(64)) {
                        *word = x
                            .iter()
                            .enumerate()
                            .fold(0, |acc, (j, v)| acc | u64::from(v >> b & 1) << j);
                    }
                }
                codes.ex_ip.push(cos);
                codes.ex_len.push(len);
            }
        }
        codes.derive();
        codes
    }

    /// Fills the parse-time fields from the stored ones.
    fn derive(&mut self) {
        let spread = |ip: &f32| (1.0 - ip * ip).max(0.0).sqrt() / ip;
        self.spread = self.ip.iter().map(spread).collect();
        self.inv_ip = self.ip.iter().map(|ip| 1.0 / ip).collect();
        self.ex_spread = self.ex_ip.iter().map(spread).collect();
        self.ex_inv_ip = self.ex_ip.iter().map(|ip| 1.0 / ip).collect();
        self.ex_scale = self
            .ex_ip
            .iter()
            .zip(&self.ex_len)
            .map(|(ip, len)| 1.0 / (ip * len))
            .collect();
        self.radius = self.norm.iter().copied().fold(0.0, f32::max);
    }

    /// Asks memory for the first rows' codes ahead of a scan (a hint,
    /// where the CPU has the AVX-512 scan).
    pub(crate) fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            for first in (0..32).step_by(8) {
                simd::prefetch_block(self, first);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.norm.len()
    }

    /// A block of no rows in this block's shape, for [`ListCodes::push_row`].
    pub(crate) fn empty_like(&self) -> ListCodes {
        ListCodes::from_bytes(&[], self.words * 64, 0, self.code_bits).expect("an empty block parses")
    }

    /// Appends row `i` of `from` (a block of the same shape) as stored:
    /// how a merge carries a row's code into its output instead of
    /// encoding it again (codes are taken against the routing's centroid,
    /// so a row's code does not depend on the shard holding it). Call
    /// [`ListCodes::finish`] after the last row.
    pub(crate) fn push_row(&mut self, from: &ListCodes, i: usize) {
        assert_eq!((self.words, self.code_bits), (from.words, from.code_bits), "blocks of one shape");
        let w = self.words;
        self.bits.extend_from_slice(&from.bits[i * w..(i + 1) * w]);
        self.norm.push(from.norm[i]);
        self.ip.push(from.ip[i]);
        self.cdot.push(from.cdot[i]);
        if self.code_bits > 1 {
            let per = usize::from(self.code_bits - 1) * w;
            self.planes.extend_from_slice(&from.planes[i * per..(i + 1) * per]);
            self.ex_ip.push(from.ex_ip[i]);
            self.ex_len.push(from.ex_len[i]);
        }
    }

    /// Whether `block` (`rows` rows of `dims`-d codes, `code_bits` bits)
    /// was encoded from `vectors` against `centroid`: each row's stored
    /// residual length is the one the encoder computes, to the bit. A
    /// merge checks the blocks it gathered with this before writing them
    /// (a row's code taken for another row would otherwise go unnoticed:
    /// the search would only rank by it).
    pub(crate) fn block_matches<'a>(
        block: &[u8],
        centroid: &[f32],
        vectors: impl ExactSizeIterator<Item = &'a [f32]>,
        code_bits: u8,
    ) -> bool {
        let (dims, rows) = (centroid.len(), vectors.len());
        if dims == 0 || block.len() != rows * row_bytes(dims, code_bits) {
            return false;
        }
        let norms = &block[rows * words(dims) * 8..][..rows * 4];
        let mut r = vec![0f32; dims];
        vectors.zip(norms.chunks_exact(4)).all(|(v, n)| {
            v.len() == dims
                && residual(v, centroid, &mut r).to_bits()
                    == u32::from_le_bytes(n.try_into().expect("4 bytes"))
        })
    }

    /// Fills the parse-time fields after [`ListCodes::push_row`].
    pub(crate) fn finish(mut self) -> Self {
        self.derive();
        self
    }

    /// The block as stored: every row's sign words, then the factors
    /// `norm`, `ip`, `cdot` (a one-bit block ends there: the format of
    /// shards written before multi-bit codes), then every row's low-bit
    /// planes and the factors `ex_ip`, `ex_len`.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let dims = self.words * 64;
        let mut out = Vec::with_capacity(self.len() * row_bytes(dims, self.code_bits));
        let words = |out: &mut Vec<u8>, col: &[u64]| {
            col.iter().for_each(|w| out.extend_from_slice(&w.to_le_bytes()))
        };
        let floats = |out: &mut Vec<u8>, col: &[f32]| {
            col.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
        words(&mut out, &self.bits);
        for col in [&self.norm, &self.ip, &self.cdot] {
            floats(&mut out, col);
        }
        words(&mut out, &self.planes);
        for col in [&self.ex_ip, &self.ex_len] {
            floats(&mut out, col);
        }
        out
    }

    /// Parses a block of `rows` rows of `dims`-d codes with `code_bits`
    /// bits per dimension.
    pub(crate) fn from_bytes(
        b: &[u8],
        dims: usize,
        rows: usize,
        code_bits: u8,
    ) -> Result<Self, String> {
        if !(1..=ex::MAX_CODE_BITS).contains(&code_bits) {
            return Err(format!("codes of {code_bits} bits per dimension"));
        }
        let w = words(dims);
        let want = rows * row_bytes(dims, code_bits);
        if b.len() != want {
            return Err(format!(
                "code block is {} bytes, {rows} rows of {dims}-d {code_bits}-bit codes take {want}",
                b.len(),
            ));
        }
        let u64s = |b: &[u8]| -> Vec<u64> {
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let f32s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let ex_planes = usize::from(code_bits - 1);
        let (bits, rest) = b.split_at(rows * w * 8);
        let (factors, rest) = rest.split_at(rows * 12);
        let (planes, ex_factors) = rest.split_at(rows * ex_planes * w * 8);
        let floats = f32s(factors);
        let ex_floats = f32s(ex_factors);
        if floats.iter().chain(&ex_floats).any(|x| !x.is_finite()) {
            return Err("code block holds a non-finite factor".into());
        }
        let (norm, rest) = floats.split_at(rows);
        let (ip, cdot) = rest.split_at(rows);
        let (ex_ip, ex_len) = ex_floats.split_at(ex_floats.len() / 2);
        if ip.iter().chain(ex_ip).chain(ex_len).any(|x| *x <= 0.0)
            || norm.iter().any(|x| *x < 0.0)
        {
            return Err("code block holds an impossible factor".into());
        }
        let mut codes = ListCodes {
            words: w,
            code_bits,
            bits: u64s(bits),
            norm: norm.to_vec(),
            ip: ip.to_vec(),
            cdot: cdot.to_vec(),
            planes: u64s(planes),
            ex_ip: ex_ip.to_vec(),
            ex_len: ex_len.to_vec(),
            spread: Vec::new(),
            inv_ip: Vec::new(),
            ex_spread: Vec::new(),
            ex_inv_ip: Vec::new(),
            ex_scale: Vec::new(),
            radius: 0.0,
        };
        codes.derive();
        Ok(codes)
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        (self.bits.len() + self.planes.len()) * 8 + self.norm.len() * 20 + self.ex_ip.len() * 24
    }
}

/// A rotated query residual quantized to `bits` bits (4 for the one-bit
/// stage, 8 to refine multi-bit codes), split into bit planes
/// (`planes[b * words + k]`: bit `b` of coordinates `64k..64k + 64`).
struct QueryCode {
    words: usize,
    bits: usize,
    planes: Vec<u64>,
    lo: f32,
    delta: f32,
    /// `Σ ŷ_i` over the quantized residual.
    sum: f32,
    /// The integer values, one byte per coordinate, `64 × words` of them
    /// (zero past the last coordinate): made by the AVX-512 quantization
    /// only, for [`ListQuery::ex_dot_avx512`].
    values: Vec<u8>,
}

impl QueryCode {
    /// `y` is the rotated query residual.
    fn new(y: &[f32], bits: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // SAFETY: the CPU has what it uses (checked at run time).
            return unsafe { Self::new_avx512(y, bits) };
        }
        Self::new_portable(y, bits)
    }

    fn new_portable(y: &[f32], bits: usize) -> Self {
        debug_assert!((1..=8).contains(&bits));
        let dims = y.len();
        let (lo, hi) = y
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        let (lo, hi) = if dims == 0 { (0.0, 0.0) } else { (lo, hi) };
        let (top, delta, inv) = Self::grid(lo, hi, bits);
        let top = top as f32;
        let w = words(dims);
        let mut planes = vec![0u64; bits * w];
        let mut sum_u = 0u64;
        // Eight coordinates at a time: their values as the bytes of a
        // word, then each bit plane's eight bits gathered by one
        // multiply (bit b of byte t lands on bit t of the top byte).
        for (g, chunk) in y.chunks(8).enumerate() {
            let mut packed = 0u64;
            for (t, v) in chunk.iter().enumerate() {
                let u = (((v - lo) * inv + 0.5) as u32).min(top as u32);
                sum_u += u64::from(u);
                packed |= u64::from(u) << (8 * t);
            }
            let (k, shift) = (g / 8, (g % 8) * 8);
            for b in 0..bits {
                let bits = ((packed >> b) & 0x0101_0101_0101_0101)
                    .wrapping_mul(0x0102_0408_1020_4080)
                    >> 56;
                planes[b * w + k] |= bits << shift;
            }
        }
        Self::from_parts(dims, bits, planes, lo, delta, sum_u)
    }

    /// The grid of `bits` bits over `[lo, hi]`: its top value, its step
    /// and the step's inverse (0 for an empty range). Both
    /// quantizations take it from here, so they agree bit for bit.
    fn grid(lo: f32, hi: f32, bits: usize) -> (u32, f32, f32) {
        let top = (1u32 << bits) - 1;
        let delta = (hi - lo) / top as f32;
        let inv = if delta > 0.0 { 1.0 / delta } else { 0.0 };
        (top, delta, inv)
    }

    /// The code of `dims` coordinates from its planes, grid and the sum
    /// of its integer values.
    fn from_parts(dims: usize, bits: usize, planes: Vec<u64>, lo: f32, delta: f32, sum_u: u64) -> Self {
        QueryCode {
            words: words(dims),
            bits,
            planes,
            lo,
            delta,
            sum: lo * dims as f32 + delta * sum_u as f32,
            values: Vec::new(),
        }
    }

    /// `Σ_j v_j u_j` over the quantized coordinates `u_j` (the query's
    /// integer values) and a row's `v_j`, given as `plane_count` bit
    /// planes weighted `1, 2, 4, …` (`row_planes[b * words + k]`).
    #[inline(always)]
    fn weighted(&self, row_planes: &[u64], plane_count: usize) -> u32 {
        let w = self.words;
        let mut total = 0u32;
        for b in 0..plane_count {
            let row = &row_planes[b * w..(b + 1) * w];
            let mut sum = 0u32;
            for c in 0..self.bits {
                let q = &self.planes[c * w..(c + 1) * w];
                let ones: u32 = row.iter().zip(q).map(|(r, q)| (r & q).count_ones()).sum();
                sum += ones << c;
            }
            total += sum << b;
        }
        total
    }
}

/// Whether the CPU has POPCNT (checked once).
#[cfg(target_arch = "x86_64")]
fn has_popcnt() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("popcnt"))
}

/// A query prepared for one list: its rotated residual, quantized, and
/// the scalars every row's estimate needs.
pub(crate) struct ListQuery {
    metric: Metric,
    /// The rotated query residual `y` (kept to refine multi-bit codes).
    y: Vec<f32>,
    /// `y` at 4 bits, for the one-bit stage.
    code: QueryCode,
    /// `y` at 8 bits, made the first time a multi-bit code is refined.
    fine: std::cell::OnceCell<QueryCode>,
    /// `|q - c|²` and `|q|`.
    y_norm2: f32,
    q_norm: f32,
    /// `<q, c>`.
    q_dot_c: f32,
    /// `1 / √D`.
    inv_sqrt_d: f32,
    /// The bound's two terms: `|q - c| ε0 / √(D - 1)` (per unit of a
    /// row's spread) and the query's 4-bit rounding, `<x, ŷ - y>`, whose
    /// standard deviation is `delta / √12`, three of them.
    per_spread: f32,
    rounding: f32,
}

impl ListQuery {
    /// `rq` is the rotated query, `q_norm` its norm, `rc` the list's
    /// rotated centroid and `q_dot_c` their inner product.
    pub(crate) fn new(metric: Metric, rq: &[f32], q_norm: f32, rc: &[f32], q_dot_c: f32) -> Self {
        let y: Vec<f32> = rq.iter().zip(rc).map(|(q, c)| q - c).collect();
        let dims = y.len();
        let y_norm2 = super::dot(&y, &y);
        let code = QueryCode::new(&y, 4);
        let eps = EPSILON0 / ((dims.max(2) - 1) as f32).sqrt();
        ListQuery {
            metric,
            y_norm2,
            q_norm,
            q_dot_c,
            inv_sqrt_d: 1.0 / (dims.max(1) as f32).sqrt(),
            per_spread: y_norm2.sqrt() * eps,
            rounding: 0.87 * code.delta,
            code,
            fine: std::cell::OnceCell::new(),
            y,
        }
    }

    /// A lower bound on the ranking distance of every row of `codes`
    /// (triangle inequality over the list's radius): a list whose bound
    /// exceeds the `k`-th best upper bound found so far cannot improve
    /// the top k and need not be scanned. Exact, so it never costs
    /// recall; it prunes where lists are tight around their centroids
    /// (near-duplicates, well-separated clusters) and rarely in high
    /// dimensions where residuals are long.
    pub(crate) fn list_bound(&self, codes: &ListCodes) -> f32 {
        let r = codes.radius;
        match self.metric {
            Metric::Euclidean => (self.y_norm2.sqrt() - r).max(0.0).powi(2),
            Metric::Dot => -self.q_dot_c - self.q_norm * r,
            Metric::Cosine => 1.0 - self.q_dot_c - self.q_norm * r,
        }
    }

    /// `<x, ŷ>` for row `i`'s one-bit code: `(2 Σ_{x_j > 0} ŷ_j - Σ ŷ_j) / √D`.
    #[inline(always)]
    fn code_dot(&self, codes: &ListCodes, i: usize) -> f32 {
        let (w, q) = (codes.words, &self.code);
        let row = &codes.bits[i * w..(i + 1) * w];
        let p = &q.planes[..4 * q.words];
        let (mut ones, mut weighted) = (0u32, 0u32);
        for (k, word) in row.iter().enumerate() {
            ones += word.count_ones();
            weighted += (word & p[k]).count_ones()
                + 2 * (word & p[w + k]).count_ones()
                + 4 * (word & p[2 * w + k]).count_ones()
                + 8 * (word & p[3 * w + k]).count_ones();
        }
        let pos = q.lo * ones as f32 + q.delta * weighted as f32;
        (2.0 * pos - q.sum) * self.inv_sqrt_d
    }

    /// `<ȳ, ŷ>` for row `i`'s multi-bit code, with `ŷ` at 8 bits: the
    /// stored value `x_j = ȳ_j + 2^(B-1) - 0.5` has the sign bit on top
    /// of the low-bit planes, so `Σ x_j ŷ_j` is popcounts of planes.
    /// Also returns the 8-bit query's step. Inlined into the scan, so it
    /// is compiled with POPCNT where the scan is.
    #[inline(always)]
    fn ex_dot(&self, codes: &ListCodes, i: usize) -> (f32, f32) {
        let fine = self.fine.get_or_init(|| QueryCode::new(&self.y, 8));
        let w = codes.words;
        let low = usize::from(codes.code_bits - 1);
        let sign = &codes.bits[i * w..(i + 1) * w];
        let planes = &codes.planes[i * low * w..(i + 1) * low * w];
        let top = 1u32 << low;
        let ones_sign: u32 = sign.iter().map(|x| x.count_ones()).sum();
        let ones_low: u32 = (0..low)
            .map(|b| planes[b * w..(b + 1) * w].iter().map(|x| x.count_ones()).sum::<u32>() << b)
            .sum();
        let sum_x = (top * ones_sign + ones_low) as f32;
        let weighted = top as f32 * fine.weighted(sign, 1) as f32
            + fine.weighted(planes, low) as f32;
        let sum_xy = fine.lo * sum_x + fine.delta * weighted;
        (sum_xy - (top as f32 - 0.5) * fine.sum, fine.delta)
    }

    /// Estimates every row of `codes` that `keep` allows, appending
    /// `(lower bound, upper bound, row)` for those whose lower bound is at
    /// most `cut` (rows that cannot beat it are not worth keeping). Rows
    /// are estimated from their sign bits first; with multi-bit codes,
    /// a row that survives that is refined from its full code, whose
    /// bound is the tighter one kept. Uses the POPCNT instruction where
    /// the CPU has it (checked at run time: a portable x86-64 build
    /// cannot assume it, and without it a popcount is a dozen
    /// instructions).
    pub(crate) fn scan(
        &self,
        codes: &ListCodes,
        keep: &dyn Fn(usize) -> bool,
        cut: f32,
        out: &mut Vec<(f32, f32, u32)>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // SAFETY: the CPU has what the kernel uses (checked at run time).
            unsafe { self.scan_avx512(codes, keep, cut, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if has_popcnt() {
            // SAFETY: the CPU supports POPCNT (checked at run time).
            unsafe { self.scan_popcnt(codes, keep, cut, out) };
            return;
        }
        self.scan_portable(codes, keep, cut, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    fn scan_popcnt(
        &self,
        codes: &ListCodes,
        keep: &dyn Fn(usize) -> bool,
        cut: f32,
        out: &mut Vec<(f32, f32, u32)>,
    ) {
        self.scan_portable(codes, keep, cut, out);
    }

    #[inline(always)]
    fn scan_portable(
        &self,
        codes: &ListCodes,
        keep: &dyn Fn(usize) -> bool,
        cut: f32,
        out: &mut Vec<(f32, f32, u32)>,
    ) {
        let multi = codes.code_bits > 1;
        for i in 0..codes.len() {
            self.scan_row(codes, i, keep, cut, multi, out);
        }
    }

    /// Row `i` of the scan: its one-bit estimate, then, if that can
    /// still beat `cut` and `keep` allows it, [`ListQuery::survivor`].
    #[inline(always)]
    fn scan_row(
        &self,
        codes: &ListCodes,
        i: usize,
        keep: &dyn Fn(usize) -> bool,
        cut: f32,
        multi: bool,
        out: &mut Vec<(f32, f32, u32)>,
    ) {
        let one = self.estimate_one_bit(codes, i);
        if one.0 - one.1 > cut || !keep(i) {
            return;
        }
        self.survivor(codes, i, one, cut, multi, out, || self.ex_dot(codes, i));
    }

    /// A row whose one-bit estimate `one` (estimate, half-width) can
    /// still beat `cut`: refined from its multi-bit code if it has one
    /// (`ex_dot` gives [`ListQuery::ex_dot`] of it), and kept as
    /// `(lower, upper, row)` if it still can.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn survivor(
        &self,
        codes: &ListCodes,
        i: usize,
        one: (f32, f32),
        cut: f32,
        multi: bool,
        out: &mut Vec<(f32, f32, u32)>,
        ex_dot: impl FnOnce() -> (f32, f32),
    ) {
        let (est, err) = if multi {
            self.multi_bit_estimate(codes, i, ex_dot())
        } else {
            one
        };
        if multi && est - err > cut {
            return;
        }
        out.push((est - err, est + err, i as u32));
    }

    /// Row `i`'s estimated ranking distance (as [`super::distance`]
    /// computes it: lower is better) and the half-width of its bound,
    /// from its full code.
    #[cfg(test)]
    pub(crate) fn estimate(&self, codes: &ListCodes, i: usize) -> (f32, f32) {
        if codes.code_bits > 1 {
            self.estimate_multi_bit(codes, i)
        } else {
            self.estimate_one_bit(codes, i)
        }
    }

    /// The estimate from row `i`'s sign bits alone.
    #[inline(always)]
    pub(crate) fn estimate_one_bit(&self, codes: &ListCodes, i: usize) -> (f32, f32) {
        let (norm, inv_ip) = (codes.norm[i], codes.inv_ip[i]);
        let ipr = norm * self.code_dot(codes, i) * inv_ip;
        let err = norm * (self.per_spread * codes.spread[i] + self.rounding * inv_ip);
        self.distance(codes, i, ipr, err)
    }

    /// The estimate from row `i`'s multi-bit code: `<ȳ, ŷ> / <ȳ, o'>`,
    /// whose bound has the grid point's cosine in place of `ip` and the
    /// 8-bit query's rounding (`|ȳ| delta / √12` standard deviation,
    /// three of them, over `<ȳ, o'>`).
    #[cfg(test)]
    fn estimate_multi_bit(&self, codes: &ListCodes, i: usize) -> (f32, f32) {
        self.multi_bit_estimate(codes, i, self.ex_dot(codes, i))
    }

    /// [`ListQuery::estimate_multi_bit`] from row `i`'s
    /// [`ListQuery::ex_dot`].
    #[inline(always)]
    fn multi_bit_estimate(&self, codes: &ListCodes, i: usize, (dot, delta): (f32, f32)) -> (f32, f32) {
        let norm = codes.norm[i];
        let ipr = norm * dot * codes.ex_scale[i];
        let err = norm
            * (self.per_spread * codes.ex_spread[i] + 0.87 * delta * codes.ex_inv_ip[i]);
        self.distance(codes, i, ipr, err)
    }

    /// The ranking distance and its half-width from `ipr`, the estimate
    /// of `<o - c, q - c>`, and `err`, its half-width.
    #[inline(always)]
    fn distance(&self, codes: &ListCodes, i: usize, ipr: f32, err: f32) -> (f32, f32) {
        let norm = codes.norm[i];
        match self.metric {
            Metric::Euclidean => (self.y_norm2 + norm * norm - 2.0 * ipr, 2.0 * err),
            Metric::Dot => (-(self.q_dot_c + ipr + codes.cdot[i]), err),
            Metric::Cosine => (1.0 - (self.q_dot_c + ipr + codes.cdot[i]), err),
        }
    }
}

#[cfg(test)]
mod tests;
