#!/usr/bin/env python3
"""Synthetic clustered vectors in TEXMEX format, for benchmarks at sizes
the shared dataset does not reach: N base vectors and Q queries around
C random unit centres (cosine), plus exact top-100 ground truth.

    /tmp/hv/bin/python scripts/make-synthetic.py OUT_DIR N Q [DIMS] [CENTRES]
"""
import os
import sys

import numpy as np

from texmex import exact_top, write_fvecs, write_ivecs


def main():
    out, n, q = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    d = int(sys.argv[4]) if len(sys.argv) > 4 else 384
    c = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((c, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def sample(m):
        x = centres[rng.integers(0, c, m)] + 0.6 * rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d) * 4
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    os.makedirs(out, exist_ok=True)
    base = np.concatenate([sample(min(100_000, n - i)) for i in range(0, n, 100_000)])
    queries = sample(q)
    write_fvecs(f"{out}/base.fvecs", base)
    write_fvecs(f"{out}/query.fvecs", queries)
    best = exact_top(queries, base)
    write_ivecs(f"{out}/groundtruth.ivecs", best)
    print(f"wrote {n} x {d} base, {q} queries, top-100 truth to {out}")


main()
