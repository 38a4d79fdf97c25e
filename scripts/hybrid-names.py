"""Hybrid search on exact-name lookups (issue 31's hybrid recall target),
through the Python package.

The shared dataset's 62,436 package descriptions, embedded with an
embedding model that installs offline from PyPI (WordLlama's bundled
256-d `l2_supercat` weights: the MiniLM vectors of the dataset cannot be
used, since a name query must be embedded by the same model), go into an
in-memory shoal index with two full-text keys: `package` (the name,
analyzer `standard`) and `text` (the description, `en`). For a seeded
sample of packages, the query is the package's name, as a user looking
one up would type it: the vector alone (its embedding), the text alone
(BM25 on `package`, and on `package` and `text` at once) and hybrid (the
vector with those texts, fused by reciprocal rank) each get k = 3, and the
script reports how often the named package is among them.

    python3 -m venv /tmp/hybridvenv
    /tmp/hybridvenv/bin/pip install wordllama==0.4.0.post1 maturin numpy
    /tmp/hybridvenv/bin/pip install ./python
    /tmp/hybridvenv/bin/python scripts/hybrid-names.py \
        ../shared/datasets/debian-pkgdesc-minilm384/docs.jsonl.gz --queries 1000
"""
import argparse
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import wordllama
from wordllama import WordLlama

import shoal

MAX_TEXT = 60_000  # shoal's metadata holds at most 64 KiB per record


def load_model() -> WordLlama:
    """WordLlama's bundled model, offline. (0.4.0 looks for its bundled
    tokenizer in a folder the wheel does not have, then downloads it; a
    cache folder holding the bundled file avoids that.)"""
    cache = Path(tempfile.mkdtemp(prefix="wordllama-"))
    (cache / "tokenizers").mkdir()
    bundled = Path(wordllama.__file__).parent / "tokenizers" / "l2_supercat_tokenizer_config.json"
    shutil.copy(bundled, cache / "tokenizers")
    return WordLlama.load(cache_dir=cache, disable_download=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("docs")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=31)
    args = ap.parse_args()
    with gzip.open(args.docs, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    wl = load_model()
    t = time.time()
    vectors = np.asarray(wl.embed([d["text"][:MAX_TEXT] for d in docs], norm=True), dtype=np.float32)
    print(f"embedded {len(docs)} descriptions ({vectors.shape[1]}-d) in {time.time() - t:.1f} s")
    db = shoal.open("memory://hybrid-names", dimensions=vectors.shape[1], metric="cosine",
                    text_fields={"package": "standard", "text": "en"})
    t = time.time()
    for start in range(0, len(docs), 5000):
        chunk = docs[start:start + 5000]
        db.upsert([str(d["id"]) for d in chunk], vectors[start:start + len(chunk)],
                  [{"package": d["package"], "text": d["text"][:MAX_TEXT]} for d in chunk])
    db.compact(force=True)
    text_status = {s["key"]: s["status"] for s in db.status()["index"]["text"]}
    print(f"indexed in {time.time() - t:.1f} s; text index {text_status}")
    rng = random.Random(args.seed)
    sample = rng.sample(docs, args.queries)
    names = [d["package"] for d in sample]
    qv = np.asarray(wl.embed(names, norm=True), dtype=np.float32)
    modes = {
        "vector alone": lambda v, name: db.search(v, k=3),
        "text: package": lambda v, name: db.search(text={"package": name}, k=3),
        "text: package + text": lambda v, name: db.search(
            text={"package": name, "text": name}, k=3),
        "hybrid: vector + package": lambda v, name: db.search(v, k=3, text={"package": name}),
        "hybrid: vector + package + text": lambda v, name: db.search(
            v, k=3, text={"package": name, "text": name}),
    }
    found = dict.fromkeys(modes, 0)
    for d, name, v in zip(sample, names, qv):
        want = str(d["id"])
        for mode, run in modes.items():
            found[mode] += want in run(v, name).ids
    n = len(sample)
    for mode, hits in found.items():
        print(f"{mode:>32}: the named package in the top 3 for {hits}/{n} = {100 * hits / n:.1f} %")
    db.close()


if __name__ == "__main__":
    main()
