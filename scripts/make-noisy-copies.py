#!/usr/bin/env python3
"""A large set built from the shared dataset, for cost-scaling benchmarks
(bytes, requests, rounds, memory): every base vector plus noisy copies of
it until N vectors, the shared queries, and exact top-100 ground truth by
brute force. Copies are unit vectors at cosine ~0.96 from their original,
so neighbourhoods are real ones made denser; recall on it says little
about recall on real data of that size.

    /tmp/hv/bin/python scripts/make-noisy-copies.py DATASET_DIR OUT_DIR N [QUERIES] [NOISE]

DATASET_DIR holds base.fvecs and query.fvecs (e.g.
../shared/datasets/debian-pkgdesc-minilm384); QUERIES defaults to 1000,
NOISE (the copy's noise norm before renormalising) to 0.3.
"""
import os
import sys

import numpy as np

from texmex import exact_top, read_fvecs, write_fvecs, write_ivecs


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nq = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    noise = float(sys.argv[5]) if len(sys.argv) > 5 else 0.3
    base = unit(read_fvecs(f"{src}/base.fvecs"))
    queries = unit(read_fvecs(f"{src}/query.fvecs"))[:nq]
    m, d = base.shape
    if n < m:
        sys.exit(f"N ({n}) must be at least the base's {m} vectors")
    rng = np.random.default_rng(11)
    os.makedirs(out, exist_ok=True)
    # Row i is copy i // m of original i % m (copy 0 is the original).
    big = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, m):
        rows = min(m, n - start)
        chunk = base[:rows]
        if start > 0:
            chunk = unit(chunk + noise * rng.standard_normal((rows, d)).astype(np.float32) / np.sqrt(d))
        big[start : start + rows] = chunk
    write_fvecs(f"{out}/base.fvecs", big)
    write_fvecs(f"{out}/query.fvecs", queries)
    best = exact_top(queries, big, batch=100)
    write_ivecs(f"{out}/groundtruth.ivecs", best)
    print(f"wrote {n} x {d} base ({m} originals, noise {noise}), {len(queries)} queries, top-100 truth to {out}")


main()
