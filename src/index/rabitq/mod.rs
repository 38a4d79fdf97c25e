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

/// The bound's width in standard deviations of the estimator's error.
/// The error is close to normal with standard deviation
/// `|q⊥| √(1 - ip²) / ip / √(D - 1)`; the paper's 1.9 leaves about 6 % of
/// rows outside (measured), 3.0 about 0.3 %, which is what a search that
/// skips rows by their bound needs.
pub(crate) const EPSILON0: f32 = 3.0;

const ROTATION_SEED: u64 = 0x5241_4249_5451_0001;
const ROTATION_ROUNDS: usize = 3;

/// The randomized Hadamard rotation for `dims` dimensions.
#[derive(Clone, Debug)]
pub(crate) struct Rotation {
    dims: usize,
    /// Largest power of two `<= dims`.
    block: usize,
    /// Per round, two sign vectors of `dims` entries (+1 / -1).
    signs: Vec<Vec<f32>>,
}

impl Rotation {
    pub(crate) fn new(dims: usize) -> Self {
        let block = if dims == 0 {
            0
        } else {
            1 << (usize::BITS - 1 - dims.leading_zeros())
        };
        let mut state = ROTATION_SEED ^ dims as u64;
        let mut next = || {
            // splitmix64: deterministic on every platform.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let signs = (0..2 * ROTATION_ROUNDS)
            .map(|_| {
                (0..dims)
                    .map(|_| if next() & 1 == 0 { 1.0 } else { -1.0 })
                    .collect()
            })
            .collect();
        Rotation { dims, block, signs }
    }

    pub(crate) fn dims(&self) -> usize {
        self.dims
    }

    /// Rotates `x` in place.
    pub(crate) fn apply(&self, x: &mut [f32]) {
        debug_assert_eq!(x.len(), self.dims);
        if self.dims == 0 {
            return;
        }
        let (b, d) = (self.block, self.dims);
        for round in self.signs.chunks_exact(2) {
            for (v, s) in x.iter_mut().zip(&round[0]) {
                *v *= s;
            }
            fwht(&mut x[..b]);
            for (v, s) in x.iter_mut().zip(&round[1]) {
                *v *= s;
            }
            fwht(&mut x[d - b..]);
        }
    }

    /// A rotated copy of `x`.
    pub(crate) fn rotated(&self, x: &[f32]) -> Vec<f32> {
        let mut v = x.to_vec();
        self.apply(&mut v);
        v
    }
}

/// Orthonormal fast Walsh-Hadamard transform (length a power of two).
fn fwht(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let scale = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= scale);
}

/// `u64` words per code of `dims` bits.
pub(crate) fn words(dims: usize) -> usize {
    dims.div_ceil(64)
}

/// Bytes one row takes in a list's code block.
pub(crate) fn row_bytes(dims: usize) -> usize {
    words(dims) * 8 + 12
}

/// The codes of one IVF list, struct-of-arrays. `spread`, `inv_ip` and
/// `radius` are derived when a block is parsed (never stored): they move
/// per-row work out of every query's scan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ListCodes {
    words: usize,
    bits: Vec<u64>,
    norm: Vec<f32>,
    ip: Vec<f32>,
    cdot: Vec<f32>,
    /// `√(1 - ip²) / ip`: the row's share of the bound.
    spread: Vec<f32>,
    /// `1 / ip`.
    inv_ip: Vec<f32>,
    /// The largest `norm`: every row lies within it of the centroid.
    radius: f32,
}

impl ListCodes {
    /// Encodes `vectors` (`n × dims`) of a list with centroid `centroid`.
    pub(crate) fn encode(rot: &Rotation, centroid: &[f32], vectors: &[f32]) -> Self {
        let dims = rot.dims();
        let w = words(dims);
        let n = vectors.len() / dims.max(1);
        let mut codes = ListCodes {
            words: w,
            bits: vec![0; n * w],
            norm: Vec::with_capacity(n),
            ip: Vec::with_capacity(n),
            cdot: Vec::with_capacity(n),
            spread: Vec::new(),
            inv_ip: Vec::new(),
            radius: 0.0,
        };
        let sqrt_d = (dims as f32).sqrt();
        let mut r = vec![0f32; dims];
        for (i, v) in vectors.chunks_exact(dims).enumerate() {
            for ((r, x), c) in r.iter_mut().zip(v).zip(centroid) {
                *r = x - c;
            }
            let cdot = super::dot(centroid, &r);
            let norm = super::dot(&r, &r).sqrt();
            rot.apply(&mut r);
            let out = &mut codes.bits[i * w..(i + 1) * w];
            let mut abs_sum = 0f32;
            for (j, x) in r.iter().enumerate() {
                if *x > 0.0 {
                    out[j / 64] |= 1 << (j % 64);
                }
                abs_sum += x.abs();
            }
            // <x, o'> = Σ|r_j| / (√D |r|); a zero residual estimates 0.
            let ip = if norm > 0.0 {
                (abs_sum / (sqrt_d * norm)).max(1e-6)
            } else {
                1.0
            };
            codes.norm.push(norm);
            codes.ip.push(ip);
            codes.cdot.push(cdot);
        }
        codes.derive();
        codes
    }

    /// Fills the parse-time fields from the stored ones.
    fn derive(&mut self) {
        self.spread = self
            .ip
            .iter()
            .map(|ip| (1.0 - ip * ip).max(0.0).sqrt() / ip)
            .collect();
        self.inv_ip = self.ip.iter().map(|ip| 1.0 / ip).collect();
        self.radius = self.norm.iter().copied().fold(0.0, f32::max);
    }

    pub(crate) fn len(&self) -> usize {
        self.norm.len()
    }

    /// The block as stored: every row's words, then the factors.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * (self.words * 8 + 12));
        for w in &self.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for col in [&self.norm, &self.ip, &self.cdot] {
            for x in col.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Parses a block of `rows` rows of `dims`-d codes.
    pub(crate) fn from_bytes(b: &[u8], dims: usize, rows: usize) -> Result<Self, String> {
        let w = words(dims);
        if b.len() != rows * row_bytes(dims) {
            return Err(format!(
                "code block is {} bytes, {rows} rows of {dims}-d codes take {}",
                b.len(),
                rows * row_bytes(dims)
            ));
        }
        let (bits, rest) = b.split_at(rows * w * 8);
        let bits = bits
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let floats: Vec<f32> = rest
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if floats.iter().any(|x| !x.is_finite()) {
            return Err("code block holds a non-finite factor".into());
        }
        let (norm, rest) = floats.split_at(rows);
        let (ip, cdot) = rest.split_at(rows);
        if ip.iter().any(|x| *x <= 0.0) || norm.iter().any(|x| *x < 0.0) {
            return Err("code block holds an impossible factor".into());
        }
        let mut codes = ListCodes {
            words: w,
            bits,
            norm: norm.to_vec(),
            ip: ip.to_vec(),
            cdot: cdot.to_vec(),
            spread: Vec::new(),
            inv_ip: Vec::new(),
            radius: 0.0,
        };
        codes.derive();
        Ok(codes)
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.bits.len() * 8 + self.norm.len() * 20
    }
}

/// A rotated query residual quantized to 4 bits, split into bit planes
/// (`planes[b * words + k]`: bit `b` of coordinates `64k..64k + 64`).
pub(crate) struct QueryCode {
    words: usize,
    planes: Vec<u64>,
    lo: f32,
    delta: f32,
    /// `Σ ŷ_i` over the quantized residual.
    sum: f32,
    /// `1 / √D`.
    inv_sqrt_d: f32,
    /// `ε0 / √(D - 1)`.
    eps: f32,
}

impl QueryCode {
    /// `y` is the rotated query residual.
    pub(crate) fn new(y: &[f32]) -> Self {
        let dims = y.len();
        let (lo, hi) = y
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        let (lo, hi) = if dims == 0 { (0.0, 0.0) } else { (lo, hi) };
        let delta = (hi - lo) / 15.0;
        let inv = if delta > 0.0 { 1.0 / delta } else { 0.0 };
        let w = words(dims);
        let mut planes = vec![0u64; 4 * w];
        let mut sum_u = 0u32;
        // Eight coordinates at a time: their 4-bit values as the bytes of
        // a word, then each bit plane's eight bits gathered by one
        // multiply (bit b of byte t lands on bit t of the top byte).
        for (g, chunk) in y.chunks(8).enumerate() {
            let mut packed = 0u64;
            for (t, v) in chunk.iter().enumerate() {
                let u = (((v - lo) * inv + 0.5) as u32).min(15);
                sum_u += u;
                packed |= u64::from(u) << (8 * t);
            }
            let (k, shift) = (g / 8, (g % 8) * 8);
            for b in 0..4 {
                let bits = ((packed >> b) & 0x0101_0101_0101_0101)
                    .wrapping_mul(0x0102_0408_1020_4080)
                    >> 56;
                planes[b * w + k] |= bits << shift;
            }
        }
        QueryCode {
            words: w,
            planes,
            lo,
            delta,
            sum: lo * dims as f32 + delta * sum_u as f32,
            inv_sqrt_d: 1.0 / (dims.max(1) as f32).sqrt(),
            eps: EPSILON0 / ((dims.max(2) - 1) as f32).sqrt(),
        }
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
    code: QueryCode,
    /// `|q - c|²` and `|q|`.
    y_norm2: f32,
    q_norm: f32,
    /// `<q, c>`.
    q_dot_c: f32,
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
        let y_norm2 = super::dot(&y, &y);
        let code = QueryCode::new(&y);
        ListQuery {
            metric,
            y_norm2,
            q_norm,
            q_dot_c,
            per_spread: y_norm2.sqrt() * code.eps,
            rounding: 0.87 * code.delta,
            code,
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

    /// `<x, ŷ>` for row `i`: `(2 Σ_{x_j > 0} ŷ_j - Σ ŷ_j) / √D`.
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
        (2.0 * pos - q.sum) * q.inv_sqrt_d
    }

    /// Estimates every row of `codes` that `keep` allows, appending
    /// `(lower bound, upper bound, row)` for those whose lower bound is at
    /// most `cut` (rows that cannot beat it are not worth keeping). Uses
    /// the POPCNT instruction where the CPU has it (checked at run time: a
    /// portable x86-64 build cannot assume it, and without it a popcount
    /// is a dozen instructions).
    pub(crate) fn scan(
        &self,
        codes: &ListCodes,
        keep: &dyn Fn(usize) -> bool,
        cut: f32,
        out: &mut Vec<(f32, f32, u32)>,
    ) {
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
        for i in 0..codes.len() {
            let (est, err) = self.estimate(codes, i);
            if est - err <= cut && keep(i) {
                out.push((est - err, est + err, i as u32));
            }
        }
    }

    /// Row `i`'s estimated ranking distance (as [`super::distance`]
    /// computes it: lower is better) and the half-width of its bound.
    #[inline(always)]
    pub(crate) fn estimate(&self, codes: &ListCodes, i: usize) -> (f32, f32) {
        let (norm, inv_ip) = (codes.norm[i], codes.inv_ip[i]);
        let ipr = norm * self.code_dot(codes, i) * inv_ip;
        let err = norm * (self.per_spread * codes.spread[i] + self.rounding * inv_ip);
        match self.metric {
            Metric::Euclidean => (self.y_norm2 + norm * norm - 2.0 * ipr, 2.0 * err),
            Metric::Dot => (-(self.q_dot_c + ipr + codes.cdot[i]), err),
            Metric::Cosine => (1.0 - (self.q_dot_c + ipr + codes.cdot[i]), err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{distance, dot};
    use rand::{Rng, SeedableRng};

    fn normalize(v: &mut [f32]) {
        let n = dot(v, v).sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }

    /// `n` rows around `centre` (flattened), each `centre` plus uniform
    /// noise of the size `scale` draws for it, like one IVF list;
    /// normalized for cosine.
    fn cluster(
        rng: &mut rand::rngs::StdRng,
        centre: &[f32],
        n: usize,
        metric: Metric,
        mut scale: impl FnMut(&mut rand::rngs::StdRng) -> f32,
    ) -> Vec<f32> {
        let mut vectors = Vec::with_capacity(n * centre.len());
        for _ in 0..n {
            let s = scale(rng);
            let mut v: Vec<f32> = centre
                .iter()
                .map(|c| c + s * rng.random_range(-1.0..1.0))
                .collect();
            if metric == Metric::Cosine {
                normalize(&mut v);
            }
            vectors.extend(v);
        }
        vectors
    }

    /// The query `q` prepared for the list with centroid `c`.
    fn list_query(rot: &Rotation, metric: Metric, q: &[f32], c: &[f32]) -> ListQuery {
        ListQuery::new(
            metric,
            &rot.rotated(q),
            dot(q, q).sqrt(),
            &rot.rotated(c),
            dot(q, c),
        )
    }

    #[test]
    fn the_rotation_is_orthogonal_for_any_dimension() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for dims in [1usize, 2, 3, 7, 64, 100, 384, 1000] {
            let rot = Rotation::new(dims);
            let a: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (ra, rb) = (rot.rotated(&a), rot.rotated(&b));
            assert!((dot(&ra, &rb) - dot(&a, &b)).abs() < 1e-3, "dims {dims}");
            assert!((dot(&ra, &ra) - dot(&a, &a)).abs() < 1e-3, "dims {dims}");
            if dims >= 64 {
                assert!(ra.iter().zip(&a).any(|(x, y)| (x - y).abs() > 1e-3));
            }
        }
    }

    /// Estimates track the exact distance, and the exact distance lies
    /// within the bound for (nearly) every row, for every metric.
    #[test]
    fn estimates_are_close_and_the_bound_holds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for metric in [Metric::Cosine, Metric::Euclidean, Metric::Dot] {
            for dims in [96usize, 384] {
                let rot = Rotation::new(dims);
                let n = 500;
                // A cluster: a centre plus noise of varying size, like
                // one IVF list.
                let centre: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
                let vectors = cluster(&mut rng, &centre, n, metric, |r| r.random_range(0.1..1.0));
                let mut c = vec![0f32; dims];
                for v in vectors.chunks_exact(dims) {
                    c.iter_mut().zip(v).for_each(|(c, x)| *c += x / n as f32);
                }
                let codes = ListCodes::encode(&rot, &c, &vectors);
                let back = ListCodes::from_bytes(&codes.to_bytes(), dims, n).expect("round trip");
                assert_eq!(back, codes);
                let (mut outside, mut total, mut abs_err, mut spread) = (0, 0, 0f64, 0f64);
                for round in 0..20 {
                    // Half the queries near a row (where the estimate
                    // must be sharp), half anywhere in the cluster.
                    let near = &vectors[round * 7 * dims..(round * 7 + 1) * dims];
                    let mut q: Vec<f32> = if round % 2 == 0 {
                        near.iter()
                            .map(|x| x + rng.random_range(-0.05..0.05))
                            .collect()
                    } else {
                        centre
                            .iter()
                            .map(|c| c + rng.random_range(-0.8..0.8))
                            .collect()
                    };
                    if metric == Metric::Cosine {
                        normalize(&mut q);
                    }
                    let lq = list_query(&rot, metric, &q, &c);
                    let exact: Vec<f32> = vectors
                        .chunks_exact(dims)
                        .map(|v| distance(metric, &q, v))
                        .collect();
                    let mean = exact.iter().sum::<f32>() / n as f32;
                    if round % 2 == 0 {
                        // The row the query sits on: inside its bound,
                        // and ranked about where it truly is.
                        let j = round * 7;
                        let (est, bound) = lq.estimate(&codes, j);
                        assert!((est - exact[j]).abs() <= bound, "{metric} {dims}-d row {j}");
                        let better = (0..n).filter(|&i| lq.estimate(&codes, i).0 < est).count();
                        let truly = (0..n).filter(|&i| exact[i] < exact[j]).count();
                        assert!(
                            better <= truly + 5,
                            "{metric} {dims}-d: {better} rows estimated closer, {truly} are"
                        );
                    }
                    for (i, e) in exact.iter().enumerate() {
                        let (est, bound) = lq.estimate(&codes, i);
                        total += 1;
                        if (est - e).abs() > bound {
                            outside += 1;
                        }
                        abs_err += f64::from((est - e).abs());
                        spread += f64::from((e - mean).abs());
                    }
                }
                let outside = outside as f64 / total as f64;
                assert!(
                    outside < 0.01,
                    "{metric} {dims}-d: {outside} outside the bound"
                );
                // The estimate's error is well below how much distances
                // differ between rows: it ranks them.
                assert!(
                    abs_err < 0.5 * spread,
                    "{metric} {dims}-d: mean error {} vs spread {}",
                    abs_err / total as f64,
                    spread / total as f64
                );
            }
        }
    }

    /// A list's bound is below every row's exact distance (so skipping a
    /// list by it never loses a neighbour), and it is tight enough to
    /// rule out a far, tight list.
    #[test]
    fn the_list_bound_is_below_every_row_and_prunes_far_tight_lists() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let dims = 64;
        let rot = Rotation::new(dims);
        for metric in [Metric::Cosine, Metric::Euclidean, Metric::Dot] {
            for spread in [0.01f32, 0.3, 1.0] {
                let centre: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
                let vectors = cluster(&mut rng, &centre, 100, metric, |_| spread);
                let mut c = centre.clone();
                if metric == Metric::Cosine {
                    normalize(&mut c);
                }
                let codes = ListCodes::encode(&rot, &c, &vectors);
                // The row farthest from the centroid: a query next to it
                // has a neighbour at the list's very edge.
                let edge = vectors
                    .chunks_exact(dims)
                    .max_by(|a, b| {
                        distance(Metric::Euclidean, a, &c).total_cmp(&distance(
                            Metric::Euclidean,
                            b,
                            &c,
                        ))
                    })
                    .expect("rows")
                    .to_vec();
                for round in 0..20 {
                    let mut q: Vec<f32> = if round % 2 == 0 {
                        edge.iter()
                            .map(|x| x + rng.random_range(-0.001..0.001))
                            .collect()
                    } else {
                        (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect()
                    };
                    if metric == Metric::Cosine {
                        normalize(&mut q);
                    }
                    let lq = list_query(&rot, metric, &q, &c);
                    let bound = lq.list_bound(&codes);
                    let nearest = vectors
                        .chunks_exact(dims)
                        .map(|v| distance(metric, &q, v))
                        .fold(f32::INFINITY, f32::min);
                    assert!(
                        bound <= nearest + 1e-4,
                        "{metric} spread {spread}: {bound} > {nearest}"
                    );
                    if spread == 0.01 && metric != Metric::Dot && round % 2 == 1 {
                        // A tight list's bound is nearly its distance.
                        assert!(
                            nearest - bound < 0.2 * nearest.abs().max(0.1),
                            "{metric}: {bound} vs {nearest}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn garbage_code_blocks_are_refused() {
        let rot = Rotation::new(8);
        let codes = ListCodes::encode(&rot, &[0.0; 8], &[1.0; 16]);
        let b = codes.to_bytes();
        assert!(ListCodes::from_bytes(&b, 8, 3).is_err(), "wrong row count");
        assert!(ListCodes::from_bytes(&b[1..], 8, 2).is_err(), "truncated");
        let mut nan = b.clone();
        let at = nan.len() - 4;
        nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(
            ListCodes::from_bytes(&nan, 8, 2).is_err(),
            "non-finite factor"
        );
    }
}
