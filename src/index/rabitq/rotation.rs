//! The randomized Hadamard rotation every code is taken in (see the
//! parent module: fixed seed, so writers and readers agree without
//! storing it; `O(D log D)` for any `D`).

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

    /// Rotates `x` in place. Inlined, so the code encoder's AVX2 clone
    /// ([`crate::index::wide`]) runs it on wide registers too.
    #[inline(always)]
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
/// Each stage pairs the two halves of every `2h`-run as whole slices, so
/// the butterflies of a stage vectorize; the first three stages run per
/// run of eight in registers. The butterflies are the same whatever the
/// loop order, so is the result.
#[inline(always)]
fn fwht(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    if n >= 8 {
        for run in x.chunks_exact_mut(8) {
            let v: &mut [f32; 8] = run.try_into().expect("runs of eight");
            let mut h = 1;
            while h < 8 {
                for i in (0..8).step_by(2 * h) {
                    for j in i..i + h {
                        let (a, b) = (v[j], v[j + h]);
                        v[j] = a + b;
                        v[j + h] = a - b;
                    }
                }
                h *= 2;
            }
        }
        h = 8;
    }
    while h < n {
        for run in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = run.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (u, v) = (*a, *b);
                *a = u + v;
                *b = u - v;
            }
        }
        h *= 2;
    }
    let scale = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= scale);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The transform as textbooks write it, one butterfly at a time.
    fn textbook(x: &mut [f32]) {
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

    /// Stages reordered for speed must give the textbook's floats to the
    /// bit: every code ever written was taken in this rotation.
    #[test]
    fn the_transform_matches_the_textbook_loop_to_the_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for n in [1usize, 2, 4, 8, 16, 32, 256, 512, 1024] {
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-4.0..4.0)).collect();
            let (mut fast, mut slow) = (x.clone(), x.clone());
            fwht(&mut fast);
            textbook(&mut slow);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "length {n}");
            assert!(n == 1 || fast != x);
        }
    }
}
