#!/usr/bin/env python3
"""The Python package against the Rust library, same data, same run.

    python3 -m venv /tmp/pyb && /tmp/pyb/bin/pip install maturin==1.16.0 numpy==2.4.6
    /tmp/pyb/bin/pip install ./python          # release build
    cargo build --release --bin shoal
    /tmp/pyb/bin/python scripts/python-bench.py ../shared/datasets/debian-pkgdesc-minilm384

1. `shoal bench` ingests the base file (batch writer, 1,000 records per
   batch), compacts, indexes and runs the queries warm: the Rust figures.
2. The same base, as one numpy array, through `Db.add` (chunks of 10,000
   rows, the bench's chunking) and `Db.flush` into a new index with the
   bench's settings (100 partitions, cosine, role writer): Python's records/s.
   Steps 1 and 2 alternate, three rounds each; medians compared.
3. Python queries the index `shoal bench` built: `warm()`, one untimed
   pass, then every query timed one by one with the bench's settings
   (k=10, nprobe 8, bounded consistency): p50 against step 1's and
   against step 4's (the Rust figure measured again right after, since
   the machine is shared and noisy). `search_many` is timed too.
4. `shoal bench --skip-ingest` on the same index: the Rust warm p50 again.

Also reports the installed wheel's size and `import shoal`'s time (the
median of 5 fresh interpreters). Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from texmex import read_fvecs, read_ivecs  # noqa: E402

import shoal  # noqa: E402


def rust_bench(shoal_bin: str, bucket: str, d: str, skip_ingest: bool) -> Dict[str, Any]:
    out = os.path.join(bucket + ".json")
    cmd = [shoal_bin, "--bucket", bucket, "bench",
           "--base", f"{d}/base.fvecs", "--queries", f"{d}/query.fvecs",
           "--truth", f"{d}/groundtruth.ivecs", "--cold-queries", "0",
           "--clients", "1", "--out", out]
    if skip_ingest:
        cmd.append("--skip-ingest")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)  # type: ignore[no-any-return]


def recall(ids: List[str], truth: np.ndarray) -> float:
    want = {str(i) for i in truth[:10] if i >= 0}
    return len(want.intersection(ids[:10])) / max(len(want), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="directory with base.fvecs, query.fvecs, groundtruth.ivecs")
    ap.add_argument("--shoal", default="target/release/shoal", help="the release CLI")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds of each (medians reported)")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="shoal-pybench-")
    base = np.ascontiguousarray(read_fvecs(f"{a.dataset}/base.fvecs"), dtype=np.float32)
    queries = np.ascontiguousarray(read_fvecs(f"{a.dataset}/query.fvecs"), dtype=np.float32)
    truth = read_ivecs(f"{a.dataset}/groundtruth.ivecs")
    n, dims = base.shape
    ids = [str(i) for i in range(n)]

    # Steps 1 and 2, alternating, `rounds` times each (the first ingest
    # into a new directory is the noisiest); medians are reported.
    runs: List[Dict[str, Any]] = []
    py_rps: List[float] = []
    for r in range(a.rounds):
        cli_dir, py_dir = os.path.join(work, f"cli{r}"), os.path.join(work, f"py{r}")
        for d in (cli_dir, py_dir):
            shutil.rmtree(d, ignore_errors=True)
        runs.append(rust_bench(a.shoal, cli_dir, a.dataset, skip_ingest=False))
        with shoal.open(py_dir, dimensions=dims, metric="cosine", partitions=100, role="writer") as db:
            t = time.perf_counter()
            for s in range(0, n, 10_000):
                db.add(ids[s:s + 10_000], base[s:s + 10_000])
            db.flush()
            py_rps.append(n / (time.perf_counter() - t))
    first = runs[-1]

    # 3. Python queries on the index the CLI built.
    lat: List[float] = []
    rec = 0.0
    with shoal.open(os.path.join(work, f"cli{a.rounds - 1}"), role="reader") as db:
        db.warm()
        for q in queries:
            db.search(q, k=10, nprobe=8, consistency="bounded")
        for i, q in enumerate(queries):
            t = time.perf_counter()
            r = db.search(q, k=10, nprobe=8, consistency="bounded")
            lat.append((time.perf_counter() - t) * 1e3)
            rec += recall(r.ids, truth[i])
        t = time.perf_counter()
        many = db.search_many(queries, k=10, nprobe=8, consistency="bounded")
        many_ms = (time.perf_counter() - t) * 1e3 / len(queries)
        many_rec = sum(recall(r.ids, truth[i]) for i, r in enumerate(many)) / len(queries)
    lat.sort()
    py_p50 = lat[(len(lat) + 1) // 2 - 1]

    # 4. The Rust warm figure again, right after.
    second = rust_bench(a.shoal, os.path.join(work, f"cli{a.rounds - 1}"), a.dataset, skip_ingest=True)

    # Wheel size and import time.
    pkg = os.path.dirname(shoal.__file__)
    wheel_bytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(pkg) for f in fs)
    imports = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import shoal"], check=True)
        imports.append((time.perf_counter() - t) * 1e3)
    base_py = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base_py.append((time.perf_counter() - t) * 1e3)

    rust_p50 = [first["warm"]["p50_ms"], second["warm"]["p50_ms"]]
    rust_rps = statistics.median(x["ingest"]["records_per_s"] for x in runs)
    summary = {
        "records": n, "dimensions": dims, "queries": len(queries),
        "ingest_records_per_s": {"cli": [round(x["ingest"]["records_per_s"]) for x in runs],
                                 "python": [round(x) for x in py_rps],
                                 "python_over_cli_medians": round(statistics.median(py_rps) / rust_rps, 3)},
        "warm_p50_ms": {"rust_before": rust_p50[0], "rust_after": rust_p50[1],
                        "python": round(py_p50, 4),
                        "python_minus_rust_mean": round(py_p50 - statistics.mean(rust_p50), 4),
                        "python_over_rust_mean": round(py_p50 / statistics.mean(rust_p50), 3)},
        "recall_at_10": {"rust": first["warm"]["recall_at_10"], "python": round(rec / len(queries), 4),
                         "python_search_many": round(many_rec, 4)},
        "search_many_ms_per_query": round(many_ms, 4),
        "installed_package_bytes": wheel_bytes,
        "import_ms_median": round(statistics.median(imports), 1),
        "bare_interpreter_ms_median": round(statistics.median(base_py), 1),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
