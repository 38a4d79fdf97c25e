//! Distance kernels: shoal's 32-lane dot product and squared L2 (on AVX2
//! where the CPU has it, chosen at run time) against the naive
//! `iter().map().sum()` they replace, over the real dataset's vectors (or
//! random ones if it is missing).
//!
//! ```sh
//! cargo bench --bench kernels
//! ```

use std::hint::black_box;
use std::time::Instant;

fn naive_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn naive_l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn time(
    label: &str,
    base: &[f32],
    dims: usize,
    q: &[f32],
    f: impl Fn(&[f32], &[f32]) -> f32,
) -> f64 {
    let rounds = 20;
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        let mut acc = 0.0f32;
        for v in base.chunks_exact(dims) {
            acc += f(black_box(q), black_box(v));
        }
        black_box(acc);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let n = base.len() / dims;
    let ns = best * 1e9 / n as f64;
    println!(
        "  {label:<22} {:>8.2} ms per pass over {n} vectors, {ns:>6.1} ns/vector",
        best * 1e3
    );
    best
}

fn main() {
    let path = "../shared/datasets/debian-pkgdesc-minilm384/base.fvecs";
    let rows = shoal::dataset::read_fvecs(path).unwrap_or_else(|_| {
        (0..62_436)
            .map(|i| {
                (0..384)
                    .map(|j| ((i * 31 + j * 7) % 97) as f32 / 97.0)
                    .collect()
            })
            .collect()
    });
    let dims = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let q = rows[rows.len() / 2].clone();
    // A partition's worth (cache-resident) shows compute speed; the whole
    // set (96 MB) shows memory bandwidth, which bounds a full exact scan.
    for (label, data) in [
        ("cache-resident, 1,000 vectors", &flat[..1000 * dims]),
        ("whole dataset", &flat[..]),
    ] {
        println!("kernels, {dims}-d, {label}, best of 20 passes, one thread:");
        let nd = time("naive dot", data, dims, &q, naive_dot);
        let sd = time("shoal::index::dot", data, dims, &q, shoal::index::dot);
        let nl = time("naive l2", data, dims, &q, naive_l2);
        let sl = time(
            "shoal::index::l2_squared",
            data,
            dims,
            &q,
            shoal::index::l2_squared,
        );
        println!("  speedup: dot {:.1}x, l2 {:.1}x", nd / sd, nl / sl);
    }
}
