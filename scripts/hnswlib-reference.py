#!/usr/bin/env python3
"""Reference numbers for docs/benchmarks.md: one in-memory hnswlib index
(M=16, ef_construction=200) over a TEXMEX dataset, queried one at a time
like `shoal bench`'s warm phase. Prints p50 latency and recall@10 per ef
(the second argument, comma-separated, replaces the default list).

    python3 -m venv /tmp/hv && /tmp/hv/bin/pip install hnswlib numpy
    /tmp/hv/bin/python scripts/hnswlib-reference.py ../shared/datasets/debian-pkgdesc-minilm384
    /tmp/hv/bin/python scripts/hnswlib-reference.py /tmp/syn200k 128,256,512,1024
"""
import sys
import time

import hnswlib
import numpy as np

from texmex import read_fvecs as fvecs, read_ivecs as ivecs


def main():
    d = sys.argv[1]
    base, queries, truth = fvecs(f"{d}/base.fvecs"), fvecs(f"{d}/query.fvecs"), ivecs(f"{d}/groundtruth.ivecs")
    index = hnswlib.Index(space="cosine", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=16, ef_construction=200)
    t = time.perf_counter()
    index.add_items(base, np.arange(len(base)))
    print(f"build {time.perf_counter() - t:.1f} s for {len(base)} vectors")
    index.set_num_threads(1)
    efs = [int(e) for e in sys.argv[2].split(",")] if len(sys.argv) > 2 else (10, 16, 24, 32, 48, 64, 96, 128)
    for ef in efs:
        index.set_ef(ef)
        times, hits = [], 0
        for q, gt in zip(queries, truth):
            t = time.perf_counter()
            labels, _ = index.knn_query(q.reshape(1, -1), k=10)
            times.append(time.perf_counter() - t)
            hits += len(set(labels[0].tolist()) & set(gt[:10].tolist()))
        times.sort()
        p50 = times[len(times) // 2] * 1e3
        print(f"ef {ef:3d}: p50 {p50:.3f} ms, recall@10 {hits / (10 * len(queries)):.4f}")


main()
