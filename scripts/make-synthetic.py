#!/usr/bin/env python3
"""Synthetic clustered vectors in TEXMEX format, for benchmarks at sizes
the shared dataset does not reach: N base vectors and Q queries around
C random unit centres (cosine), plus exact top-100 ground truth.

    /tmp/hv/bin/python scripts/make-synthetic.py OUT_DIR N Q [DIMS] [CENTRES]
"""
import os
import sys

import numpy as np


def write_fvecs(path, a):
    n, d = a.shape
    out = np.empty((n, d + 1), dtype=np.float32)
    out[:, 0] = np.array([d], dtype=np.int32).view(np.float32)[0]
    out[:, 1:] = a
    out.tofile(path)


def write_ivecs(path, a):
    n, d = a.shape
    out = np.empty((n, d + 1), dtype=np.int32)
    out[:, 0] = d
    out[:, 1:] = a
    out.tofile(path)


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
    best = np.empty((q, 100), dtype=np.int32)
    for i in range(0, q, 50):
        sims = queries[i : i + 50] @ base.T
        top = np.argpartition(-sims, 100, axis=1)[:, :100]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        best[i : i + 50] = np.take_along_axis(top, order, axis=1)
    write_ivecs(f"{out}/groundtruth.ivecs", best)
    print(f"wrote {n} x {d} base, {q} queries, top-100 truth to {out}")


main()
