//! The codes' estimates and bounds against exact distances.

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
/// within the bound for (nearly) every row, for every metric, dimension
/// and number of bits per dimension; more bits make the bound tighter
/// and the estimate closer.
#[test]
fn estimates_are_close_and_the_bound_holds() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for metric in [Metric::Cosine, Metric::Euclidean, Metric::Dot] {
        for dims in [32usize, 96, 384] {
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
            let queries: Vec<(bool, Vec<f32>)> = (0..20)
                .map(|round| {
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
                    (round % 2 == 0, q)
                })
                .collect();
            let mut last: Option<(f64, f64)> = None;
            // 8-bit grids at 384-d (48k critical points a row) are most of
            // a debug build's time; 6 bits there still halves twice.
            let most = if dims >= 384 { 6 } else { 8 };
            for bits in [1u8, 2, 4, most] {
                let at = format!("{metric} {dims}-d {bits}-bit");
                let codes = ListCodes::encode(&rot, &c, &vectors, bits);
                let stored = codes.to_bytes();
                assert_eq!(stored.len(), n * row_bytes(dims, bits), "{at}");
                let back = ListCodes::from_bytes(&stored, dims, n, bits).expect("round trip");
                assert_eq!(back, codes);
                let (mut outside, mut total, mut abs_err, mut spread, mut width) =
                    (0, 0, 0f64, 0f64, 0f64);
                for (round, (near, q)) in queries.iter().enumerate() {
                    let lq = list_query(&rot, metric, q, &c);
                    let exact: Vec<f32> = vectors
                        .chunks_exact(dims)
                        .map(|v| distance(metric, q, v))
                        .collect();
                    let mean = exact.iter().sum::<f32>() / n as f32;
                    if *near {
                        // The row the query sits on: inside its bound,
                        // and ranked about where it truly is.
                        let j = round * 7;
                        let (est, bound) = lq.estimate(&codes, j);
                        assert!((est - exact[j]).abs() <= bound, "{at} row {j}");
                        let better = (0..n).filter(|&i| lq.estimate(&codes, i).0 < est).count();
                        let truly = (0..n).filter(|&i| exact[i] < exact[j]).count();
                        assert!(
                            better <= truly + 5 + truly / 10,
                            "{at}: {better} rows estimated closer, {truly} are"
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
                        width += f64::from(bound);
                    }
                }
                let outside = outside as f64 / total as f64;
                assert!(outside < 0.01, "{at}: {outside} outside the bound");
                // The estimate's error is well below how much distances
                // differ between rows: it ranks them.
                assert!(
                    abs_err < 0.5 * spread,
                    "{at}: mean error {} vs spread {}",
                    abs_err / total as f64,
                    spread / total as f64
                );
                // Each doubling of the bits at least halves the bound
                // and the error (they fall about 2x per bit).
                if let Some((w, e)) = last {
                    assert!(width < 0.5 * w, "{at}: bound {width} vs {w} with fewer bits");
                    assert!(abs_err < 0.5 * e, "{at}: error {abs_err} vs {e} with fewer bits");
                }
                last = Some((width, abs_err));
            }
        }
    }
}

/// The sign bits of a multi-bit code are the one-bit code: a block's
/// one-bit estimates (the first stage of a scan) equal those of the same
/// rows coded with one bit, and a scan returns exactly the rows whose
/// full-code lower bound reaches the cut.
#[test]
fn a_multi_bit_scan_refines_the_one_bit_stage() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let dims = 48;
    let rot = Rotation::new(dims);
    let centre: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
    let vectors = cluster(&mut rng, &centre, 300, Metric::Euclidean, |_| 0.5);
    let one = ListCodes::encode(&rot, &centre, &vectors, 1);
    let four = ListCodes::encode(&rot, &centre, &vectors, 4);
    let q: Vec<f32> = centre.iter().map(|c| c + rng.random_range(-0.5..0.5)).collect();
    let lq = list_query(&rot, Metric::Euclidean, &q, &centre);
    for i in 0..300 {
        assert_eq!(lq.estimate_one_bit(&one, i), lq.estimate_one_bit(&four, i));
    }
    let mut lowers: Vec<f32> = (0..300)
        .map(|i| {
            let (e, b) = lq.estimate(&four, i);
            e - b
        })
        .collect();
    lowers.sort_by(f32::total_cmp);
    let cut = lowers[30];
    let mut out = Vec::new();
    lq.scan(&four, &|i| i % 2 == 0, cut, &mut out);
    let want: Vec<u32> = (0..300u32)
        .filter(|&i| i % 2 == 0)
        .filter(|&i| {
            let (e, b) = lq.estimate(&four, i as usize);
            let (e1, b1) = lq.estimate_one_bit(&four, i as usize);
            e - b <= cut && e1 - b1 <= cut
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(out.iter().map(|r| r.2).collect::<Vec<_>>(), want);
    for &(lower, upper, i) in &out {
        let (e, b) = lq.estimate(&four, i as usize);
        assert_eq!((lower, upper), (e - b, e + b));
    }
}

/// Fewer dimensions get more bits: the bound's width per unit of query
/// residual stays about the same for every dimension.
#[test]
fn fewer_dimensions_get_more_bits() {
    let bits: Vec<u8> = [16usize, 32, 64, 128, 384, 1536]
        .iter()
        .map(|&d| ex::code_bits(d))
        .collect();
    assert!(bits.windows(2).all(|w| w[0] >= w[1]), "{bits:?}");
    assert!(bits[0] > bits[5], "{bits:?}");
    assert!(bits.iter().all(|b| (1..=ex::MAX_CODE_BITS).contains(b)));
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
            let codes = ListCodes::encode(&rot, &c, &vectors, 1);
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
    let codes = ListCodes::encode(&rot, &[0.0; 8], &[1.0; 16], 3);
    let b = codes.to_bytes();
    assert!(ListCodes::from_bytes(&b, 8, 3, 3).is_err(), "wrong row count");
    assert!(ListCodes::from_bytes(&b[1..], 8, 2, 3).is_err(), "truncated");
    let mut nan = b.clone();
    let at = nan.len() - 4;
    nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(
        ListCodes::from_bytes(&nan, 8, 2, 3).is_err(),
        "non-finite factor"
    );
    assert!(ListCodes::from_bytes(&b, 8, 2, 3).is_ok());
    assert!(ListCodes::from_bytes(&b, 8, 2, 2).is_err(), "other bits");
    assert!(ListCodes::from_bytes(&b, 8, 2, 0).is_err(), "no bits");
    assert!(ListCodes::from_bytes(&b, 8, 2, 9).is_err(), "too many bits");
}

/// The scale search finds grid points within 0.1 % of the exact sweep's
/// cosine (never better: the sweep is optimal), for every bit count and
/// for residuals of any length.
#[test]
fn the_scale_search_is_nearly_as_good_as_the_exact_sweep() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for dims in [8usize, 32, 96] {
        for bits in 2..=8u8 {
            let levels = 1u32 << (bits - 1);
            for round in 0..10 {
                let scale = [1e-3f32, 1.0, 1e3][round % 3];
                let r: Vec<f32> = (0..dims)
                    .map(|_| scale * rng.random_range(-1.0f32..1.0).powi(3))
                    .collect();
                let abs: Vec<f32> = r.iter().map(|v| v.abs()).collect();
                let exact = ex::cosine(&abs, &ex::exact_levels(&abs, levels));
                let mut x = vec![0u8; dims];
                let (cos, _) = ex::encode(&r, bits, &mut x);
                assert!(cos <= exact + 1e-5, "{dims}-d {bits}-bit: {cos} > {exact}");
                assert!(
                    cos >= exact * 0.999,
                    "{dims}-d {bits}-bit: {cos} vs exact {exact}"
                );
            }
        }
    }
}

/// The AVX-512 scan gives the portable scan's rows and bounds, bit for
/// bit, for every metric, one and several bits, dimensions that fill
/// their last word or not, rows past the last block of eight, a filter
/// and cuts that keep all, some or no rows.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx512_scan_matches_the_portable_one() {
    if !simd::available() {
        eprintln!("this CPU lacks AVX-512 VPOPCNTDQ: the kernel cannot run here");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut compared = 0;
    for dims in [24, 64, 100, 384, 700] {
        let rot = Rotation::new(dims);
        for metric in [Metric::Cosine, Metric::Euclidean, Metric::Dot] {
            let centre: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
            let vectors = cluster(&mut rng, &centre, 61, metric, |r| r.random_range(0.1..0.8));
            let q: Vec<f32> = centre.iter().map(|c| c + rng.random_range(-0.6..0.6)).collect();
            // 1 bit; 3, 5 and 7 refined from byte products; 8 through
            // the popcounts.
            for bits in [1, 3, 5, 7, 8] {
                let codes = ListCodes::encode(&rot, &centre, &vectors, bits);
                let lq = list_query(&rot, metric, &q, &centre);
                let keep = |i: usize| i % 7 != 3;
                let scans = |cut: f32| {
                    let (mut simd, mut portable) = (Vec::new(), Vec::new());
                    // SAFETY: the CPU has the kernel's features (checked above).
                    unsafe { lq.scan_avx512(&codes, &keep, cut, &mut simd) };
                    lq.scan_portable(&codes, &keep, cut, &mut portable);
                    let raw = |v: &[(f32, f32, u32)]| -> Vec<(u32, u32, u32)> {
                        v.iter()
                            .map(|(l, u, i)| (l.to_bits(), u.to_bits(), *i))
                            .collect()
                    };
                    assert_eq!(raw(&simd), raw(&portable), "{dims}-d {metric:?} {bits} bits cut {cut}");
                    simd
                };
                let all = scans(f32::INFINITY);
                assert_eq!(all.len(), (0..61).filter(|i| keep(*i)).count());
                let mut lowers: Vec<f32> = all.iter().map(|r| r.0).collect();
                lowers.sort_by(f32::total_cmp);
                let some = scans(lowers[lowers.len() / 2]);
                assert!(!some.is_empty() && some.len() < all.len());
                assert!(scans(lowers[0] - 1.0).is_empty());
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 75);
}

/// The AVX-512 query quantization gives the portable one's planes and
/// scalars, bit for bit, at every bit count and for dimensions that
/// fill their last chunk of sixteen and word of 64 or not.
#[cfg(target_arch = "x86_64")]
/// The encoder's AVX2 clone writes the portable encoder's codes, bit for
/// bit: shards built on different CPUs must read the same.
#[test]
fn the_avx2_encoder_matches_the_portable_one() {
    if !crate::index::wide::available() {
        eprintln!("this CPU lacks AVX2: the encoder's clone cannot run here");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut compared = 0;
    for dims in [5, 24, 64, 100, 384, 700] {
        let rot = Rotation::new(dims);
        let centre: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
        let vectors = cluster(&mut rng, &centre, 37, Metric::Euclidean, |r| r.random_range(0.1..0.8));
        for bits in [1, 3, 4, 5, 8] {
            // SAFETY: the CPU has AVX2 (checked above).
            let wide = unsafe { ListCodes::encode_avx2(&rot, &centre, &vectors, bits) };
            let portable = ListCodes::encode_rows(&rot, &centre, &vectors, bits);
            assert_eq!(wide.to_bytes(), portable.to_bytes(), "{dims}-d {bits} bits");
            assert!(wide.planes.iter().any(|w| *w != 0) || bits == 1);
            compared += 1;
        }
    }
    assert_eq!(compared, 30);
}

#[test]
fn the_avx512_query_code_matches_the_portable_one() {
    if !simd::available() {
        eprintln!("this CPU lacks AVX-512: the kernel cannot run here");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut compared = 0;
    for dims in [1, 15, 16, 17, 63, 64, 65, 100, 384, 700] {
        let y: Vec<f32> = (0..dims).map(|_| rng.random_range(-2.0..3.0)).collect();
        for bits in 1..=8 {
            let a = QueryCode::new_portable(&y, bits);
            // SAFETY: the CPU has the kernel's features (checked above).
            let b = unsafe { QueryCode::new_avx512(&y, bits) };
            let scalars = |c: &QueryCode| (c.words, c.bits, c.lo.to_bits(), c.delta.to_bits(), c.sum.to_bits());
            assert_eq!(scalars(&a), scalars(&b), "{dims}-d {bits} bits");
            assert_eq!(a.planes, b.planes, "{dims}-d {bits} bits");
            assert!(dims == 1 || a.planes.iter().any(|w| *w != 0));
            compared += 1;
        }
    }
    assert_eq!(compared, 80);
}
