#!/usr/bin/env python3
"""What the S3 Vectors API costs over shoal's own API, from a boto3 client.

Starts `shoal serve --s3vectors` on a fresh local directory, creates a vector
bucket and a cosine index, loads a TEXMEX dataset with PutVectors (500
vectors per call), compacts it into index shards (`shoal compact --force`
on the index's prefix), then runs the queries three ways against the same
index: boto3 `query_vectors` (SigV4, strong reads: what AWS clients get),
and `POST /v1/search` from a second `serve` on the index's prefix with
`strong` and with `bounded` reads. Prints ingest rate, p50/p95 latency and
recall@10 against the dataset's ground truth.

    python3 -m venv /tmp/s3vb && /tmp/s3vb/bin/pip install boto3==1.44.8 numpy
    cargo build --release --bin shoal
    /tmp/s3vb/bin/python scripts/s3vectors-bench.py ../shared/datasets/debian-pkgdesc-minilm384
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3
import numpy as np
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from support import free_port  # noqa: E402
from texmex import read_fvecs, read_ivecs  # noqa: E402

SHOAL = os.path.join(ROOT, "target", "release", "shoal")


def serve(bucket, args, env):
    port = free_port()
    p = subprocess.Popen([SHOAL, "--bucket", bucket, "serve", "--listen", f"127.0.0.1:{port}"] + args,
                         env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline()  # "listening on ..."
    return p, port


def pct(xs, q):
    return float(np.percentile(np.array(xs) * 1000, q))


def recall(found, truth):
    return len(set(found) & set(truth[:10])) / 10


def main():
    data = sys.argv[1]
    base = read_fvecs(os.path.join(data, "base.fvecs"))
    queries = read_fvecs(os.path.join(data, "query.fvecs"))
    truth = read_ivecs(os.path.join(data, "groundtruth.ivecs"))
    n_queries = int(os.environ.get("QUERIES", "500"))
    work = tempfile.mkdtemp(prefix="shoal-s3vb-")
    root = os.path.join(work, "root")
    env = {"SHOAL_S3V_CREDENTIALS": "bench:bench-secret"}
    # No background compaction: the explicit compaction below builds the
    # shards, and nothing runs beside the queries.
    server, port = serve(root, ["--s3vectors", "--compact-every", "0"], env)
    procs = [server]
    try:
        s3v = boto3.client("s3vectors", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench-secret",
                           config=Config(retries={"max_attempts": 1}))
        s3v.create_vector_bucket(vectorBucketName="bench")
        s3v.create_index(vectorBucketName="bench", indexName="docs", dataType="float32",
                         dimension=int(base.shape[1]), distanceMetric="cosine")
        started = time.perf_counter()
        for i in range(0, len(base), 500):
            vectors = [{"key": str(j), "data": {"float32": base[j].tolist()}}
                       for j in range(i, min(i + 500, len(base)))]
            s3v.put_vectors(vectorBucketName="bench", indexName="docs", vectors=vectors)
        ingest = time.perf_counter() - started
        print(f"PutVectors: {len(base)} vectors in {ingest:.1f} s ({len(base) / ingest:.0f} vectors/s, "
              f"500 per call)")
        index_url = os.path.join(root, "bench", "docs")
        t = time.perf_counter()
        out = subprocess.run([SHOAL, "--bucket", index_url, "--json", "compact", "--force"],
                             check=True, capture_output=True, text=True).stdout
        ix = json.loads(out).get("index") or {}
        print(f"compact --force: {time.perf_counter() - t:.1f} s; index round: "
              f"{ix.get('rows_out', 0)} rows into {len(ix.get('shards_written', []))} shards")
        reader, rport = serve(index_url, [], {"BRAINY_ROLE": "reader"})
        procs.append(reader)

        def v1(q, consistency):
            body = json.dumps({"vector": q.tolist(), "k": 10, "consistency": consistency,
                               "include_metadata": False}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{rport}/v1/search", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req) as r:
                return [int(h["id"]) for h in json.loads(r.read())["results"]]

        def s3(q, _):
            out = s3v.query_vectors(vectorBucketName="bench", indexName="docs", topK=10,
                                    queryVector={"float32": q.tolist()})
            return [int(v["key"]) for v in out["vectors"]]

        paths = [("boto3 QueryVectors (strong)", s3, None),
                 ("/v1/search strong", v1, "strong"),
                 ("/v1/search bounded", v1, "bounded")]
        for _, fn, consistency in paths:
            for q in queries[:20]:  # warm the caches
                fn(q, consistency)
        # Interleaved, query by query, so the machine's drift hits all alike.
        lat = {name: [] for name, _, _ in paths}
        rec = {name: [] for name, _, _ in paths}
        for qi in range(n_queries):
            for name, fn, consistency in paths:
                t = time.perf_counter()
                found = fn(queries[qi], consistency)
                lat[name].append(time.perf_counter() - t)
                rec[name].append(recall(found, truth[qi]))
        rows = [(name, pct(lat[name], 50), pct(lat[name], 95), float(np.mean(rec[name])))
                for name, _, _ in paths]
        print(f"{n_queries} queries, k=10, one client:")
        print(f"{'path':<30} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10}")
        for name, p50, p95, r in rows:
            print(f"{name:<30} {p50:>8.2f} {p95:>8.2f} {r:>10.3f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
