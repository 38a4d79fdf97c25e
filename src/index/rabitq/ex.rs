//! Extended RaBitQ: more bits per dimension where one is too loose (Gao
//! et al., "Practical and Asymptotically Optimal Quantization of
//! High-Dimensional Vectors in Euclidean Space for Approximate Nearest
//! Neighbor Search", SIGMOD 2025).
//!
//! A `B`-bit code of a rotated unit residual `o'` is a grid point
//! `ȳ ∈ {±0.5, ±1.5, …, ±(2^(B-1) - 0.5)}^D` chosen to maximise the
//! cosine `<ȳ, o'> / |ȳ|`; the estimator `<ȳ, y> / <ȳ, o'>` of `<o', y>`
//! then has the one-bit code's error bound with that cosine in place of
//! one-bit's `ip` (the random rotation makes the part of `ȳ` orthogonal
//! to `o'` a uniformly random direction whatever the grid). Coordinate
//! `i` of the grid point is stored as `x_i = ȳ_i + 2^(B-1) - 0.5` in
//! `0..2^B`, whose top bit is the sign of `o'_i`: the one-bit code. So a
//! `B`-bit block is the one-bit block plus `B - 1` low-bit planes and two
//! factors per row, and a search estimates every row from the sign bits
//! first and refines only the rows that survive.
//!
//! The grid point for a given `o'` is `ȳ_i = sign(o'_i) (m_i + 0.5)` with
//! `m_i = min(⌊t |o'_i|⌋, 2^(B-1) - 1)` at the scale `t` that maximises
//! the cosine, found by a coarse-to-fine search over `t`
//! ([`search_levels`]; the paper sweeps every critical `t` exactly, which
//! the tests use as the reference).

/// Total bits per dimension for `dims`-dimensional codes: the fewest with
/// which the bound's half-width (`√(1 - ip²) / ip · ε0 / √(D - 1)` per
/// unit of query residual) is at most [`TARGET_WIDTH`], never more than
/// [`MAX_CODE_BITS`].
pub(crate) fn code_bits(dims: usize) -> u8 {
    let room = ((dims.max(2) - 1) as f32).sqrt() * TARGET_WIDTH / super::EPSILON0;
    (1..MAX_CODE_BITS)
        .find(|&b| typical_spread(b) <= room)
        .unwrap_or(MAX_CODE_BITS)
}

/// Most bits per dimension a code carries (a coordinate fits a byte).
pub(crate) const MAX_CODE_BITS: u8 = crate::segment::shard::MAX_CODE_BITS;

/// The bound's half-width per unit of query residual that codes are made
/// for. A search reranks every row whose interval reaches the `k`-th
/// best upper bound, so the width sets how many rows that is once
/// neighbours sit at nearly equal distances (low dimensions, isotropic
/// noise). Measured on the shared dataset and its PCA projections to 64
/// and 32 dimensions, rows reranked per query fall steeply with the width
/// down to about 0.04 and barely after (pca64: 4,587 / 208 / 46 / 21 / 15
/// rows at 1 to 5 bits, widths 0.29 / 0.14 / 0.076 / 0.038 / 0.019),
/// while every bit adds `D / 8` bytes per row to the code blocks a cold
/// query reads. So: 384-d gets 3 bits, 64-d 4, 32-d 5 (see
/// `docs/benchmarks.md`, "Recall without tuning").
pub(crate) const TARGET_WIDTH: f32 = 0.04;

/// The row's share of the bound, `√(1 - ip²) / ip`, that a `bits`-bit
/// code typically reaches on a random direction (measured at 32, 64 and
/// 384 dimensions, where it differs by under 10 %: it halves per bit).
fn typical_spread(bits: u8) -> f32 {
    match bits {
        1 => 0.76,
        2 => 0.37,
        3 => 0.20,
        4 => 0.10,
        5 => 0.05,
        6 => 0.025,
        7 => 0.013,
        _ => 0.007,
    }
}

/// The grid point of `r` (a rotated residual, any length) with `bits`
/// bits per coordinate: per coordinate the stored value `x_i` (in
/// `0..2^bits`), and the point's cosine with `r` and its length `|ȳ|`.
#[inline(always)]
pub(crate) fn encode(r: &[f32], bits: u8, x: &mut [u8]) -> (f32, f32) {
    let levels = 1u32 << (bits - 1);
    let abs: Vec<f32> = r.iter().map(|v| v.abs()).collect();
    let m = search_levels(&abs, levels);
    let (mut num, mut len2) = (0f32, 0f32);
    for (((x, v), a), m) in x.iter_mut().zip(r).zip(&abs).zip(&m) {
        let mag = *m as f32 + 0.5;
        num += a * mag;
        len2 += mag * mag;
        *x = if *v > 0.0 {
            (levels + m) as u8
        } else {
            (levels - 1 - m) as u8
        };
    }
    let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
    let len = len2.sqrt();
    let cos = if norm > 0.0 {
        (num / (len * norm)).clamp(1e-6, 1.0)
    } else {
        1.0
    };
    (cos, len)
}

/// `<ȳ, |r|> / |ȳ|` for the grid point at scale `t`:
/// `m_i = min(⌊t a_i⌋, top)`, `|ȳ_i| = m_i + 0.5`. Sums in
/// sixteen independent lanes: a search calls this 65
/// times per row, and one running sum per total left it waiting on each
/// add (a third of a 1M index build).
#[inline(always)]
fn score(abs: &[f32], top: u32, t: f32) -> f32 {
    const L: usize = 16;
    let top = top as f32;
    let level = |a: f32| {
        // SAFETY: `t a` is finite and non-negative and capped at `top`,
        // so it fits an i32; the unchecked conversion vectorizes (a
        // saturating `as` does not).
        unsafe { (t * a).min(top).to_int_unchecked::<i32>() as f32 + 0.5 }
    };
    let (mut num, mut den) = ([0f32; L], [0f32; L]);
    let chunks = abs.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        let c: &[f32; L] = c.try_into().expect("chunks of 16");
        for i in 0..L {
            let m = level(c[i]);
            num[i] += c[i] * m;
            den[i] += m * m;
        }
    }
    let (mut num, mut den) = (crate::index::sum_lanes(num), crate::index::sum_lanes(den));
    for &a in rest {
        let m = level(a);
        num += a * m;
        den += m * m;
    }
    num / den.sqrt()
}

/// Each coordinate's magnitude level `m_i` (`0..levels`) of the grid
/// point closest in angle to `abs`, by a search over the scale `t`: 32
/// steps up to `t · rms = 2 levels` (the best scale for a Gaussian
/// coordinate sits between 0.2 and 0.5 levels per rms at every bit
/// count), then 32 finer steps around the best. The exact sweep over
/// every critical `t` ([`exact_levels`], the paper's algorithm) sorts
/// `D (2^(B-1) - 1)` points per row and made building 384-d 3-bit shards
/// take twice as long; the search lands within 0.1 % of its cosine (a
/// test holds it there), and the bound is computed for whatever point is
/// chosen, so it stays honest either way.
#[inline(always)]
fn search_levels(abs: &[f32], levels: u32) -> Vec<u32> {
    let top = levels - 1;
    let rms = (abs.iter().map(|a| a * a).sum::<f32>() / abs.len().max(1) as f32).sqrt();
    if top == 0 || rms == 0.0 {
        return vec![0; abs.len()];
    }
    const STEPS: usize = 32;
    let step = 2.0 * levels as f32 / rms / STEPS as f32;
    let (mut best_t, mut best) = (0f32, score(abs, top, 0.0));
    for j in 1..=STEPS {
        let t = step * j as f32;
        let s = score(abs, top, t);
        if s > best {
            (best_t, best) = (t, s);
        }
    }
    let (lo, fine) = ((best_t - step).max(0.0), 2.0 * step / STEPS as f32);
    for j in 0..=STEPS {
        let t = lo + fine * j as f32;
        let s = score(abs, top, t);
        if s > best {
            (best_t, best) = (t, s);
        }
    }
    abs.iter()
        .map(|a| ((best_t * a) as u32).min(top))
        .collect()
}

/// The exact best levels: the cosine only changes where some `t a_i`
/// crosses an integer, so sweeping those critical `t` in order visits
/// every candidate grid point once (Gao et al.'s algorithm). The
/// reference [`search_levels`] is tested against.
#[cfg(test)]
pub(crate) fn exact_levels(abs: &[f32], levels: u32) -> Vec<u32> {
    let dims = abs.len();
    let mut m = vec![0u32; dims];
    let (mut num, mut den) = (0.5 * abs.iter().sum::<f32>(), 0.25 * dims as f32);
    let (mut best, mut best_at) = (num / den.sqrt(), 0usize);
    let mut events: Vec<(f32, u32)> = Vec::new();
    for (i, &a) in abs.iter().enumerate() {
        if a > 0.0 {
            for k in 1..levels {
                events.push((k as f32 / a, i as u32));
            }
        }
    }
    events.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    for (n, &(_, i)) in events.iter().enumerate() {
        let i = i as usize;
        m[i] += 1;
        num += abs[i];
        den += 2.0 * m[i] as f32;
        let cos = num / den.sqrt();
        if cos > best {
            (best, best_at) = (cos, n + 1);
        }
    }
    m.iter_mut().for_each(|v| *v = 0);
    for &(_, i) in &events[..best_at] {
        m[i as usize] += 1;
    }
    m
}

/// The cosine between `abs` and the grid point of levels `m`.
#[cfg(test)]
pub(crate) fn cosine(abs: &[f32], m: &[u32]) -> f32 {
    let (mut num, mut den) = (0f32, 0f32);
    for (a, m) in abs.iter().zip(m) {
        let mag = *m as f32 + 0.5;
        num += a * mag;
        den += mag * mag;
    }
    num / (den.sqrt() * abs.iter().map(|a| a * a).sum::<f32>().sqrt())
}
