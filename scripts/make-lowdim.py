#!/usr/bin/env python3
"""Low-dimensional real vectors from the shared dataset, for recall at low
dimension: base and queries projected by PCA (fit on the base: centred by
the base mean, top principal axes) to DIMS dimensions, renormalised to
unit length, and exact top-100 ground truth by cosine (the metric `shoal
bench` uses), in TEXMEX format.

    /tmp/hv/bin/python scripts/make-lowdim.py DATASET_DIR OUT_DIR DIMS

DATASET_DIR holds base.fvecs and query.fvecs (e.g.
../shared/datasets/debian-pkgdesc-minilm384).
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
    src, out, dims = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = read_fvecs(f"{src}/base.fvecs").astype(np.float64)
    queries = read_fvecs(f"{src}/query.fvecs").astype(np.float64)
    if not 0 < dims <= base.shape[1]:
        sys.exit(f"DIMS must be in 1..{base.shape[1]}")
    mean = base.mean(axis=0)
    # Principal axes of the centred base: eigenvectors of its covariance,
    # largest eigenvalues first.
    cov = np.cov(base - mean, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    axes = vectors[:, np.argsort(values)[::-1][:dims]]
    kept = values[np.argsort(values)[::-1][:dims]].sum() / values.sum()
    low_base = unit((base - mean) @ axes)
    low_queries = unit((queries - mean) @ axes)
    os.makedirs(out, exist_ok=True)
    write_fvecs(f"{out}/base.fvecs", low_base)
    write_fvecs(f"{out}/query.fvecs", low_queries)
    write_ivecs(f"{out}/groundtruth.ivecs", exact_top(low_queries, low_base))
    print(
        f"wrote {len(low_base)} x {dims} base ({kept:.1%} of the variance), "
        f"{len(low_queries)} queries, top-100 truth to {out}"
    )


main()
