#!/usr/bin/env python3
"""Compares shoal's BM25 with a reference implementation: bm25s
(https://github.com/xhluca/bm25s, method "lucene": Lucene's idf and
term-frequency normalization, k1 1.2, b 0.75), fed the very terms
shoal's analyzer made (`cargo bench --bench text -- --dump DIR` writes
them with shoal's top 10 per query).

shoal scores each term as idf * (k1 + 1) * tf / (tf + k1 * (...)), the
form tantivy and Lucene before 8 use; bm25s "lucene" drops the constant
(k1 + 1), which changes no ranking: shoal's score = 2.2 * bm25s's.

    python3 -m venv /tmp/bm25venv && /tmp/bm25venv/bin/pip install bm25s numpy scipy
    /tmp/bm25venv/bin/python scripts/bm25-reference.py /tmp/bm25

Prints, over every query: the largest score difference, how many top-10
sets are identical (a set may differ only where the reference ties at
rank 10), and exits 1 if any score differs by more than 1e-4.
"""
import json
import sys

import bm25s
import numpy as np

K1, B = 1.2, 0.75
TOLERANCE = 1e-4


def main(directory):
    docs = [json.loads(line) for line in open(f"{directory}/docs.jsonl")]
    queries = [json.loads(line) for line in open(f"{directory}/queries.jsonl")]
    ids = [d["id"] for d in docs]
    position = {d: i for i, d in enumerate(ids)}
    retriever = bm25s.BM25(method="lucene", k1=K1, b=B)
    retriever.index([d["terms"] for d in docs], show_progress=False)
    worst, identical, tied, compared, empty = 0.0, 0, 0, 0, 0
    for q in queries:
        if not q["terms"]:
            empty += 1
            continue
        scores = retriever.get_scores(q["terms"]) * (K1 + 1.0)
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
        ref_top = [i for i in order[:10] if scores[i] > 0]
        got = [(position[h[0]], h[1]) for h in q["top"]]
        compared += 1
        for i, s in got:
            diff = abs(float(scores[i]) - s)
            worst = max(worst, diff)
            if diff > TOLERANCE:
                print(f"query {q['query']} {q['text']!r}: doc {ids[i]} scores {s}, "
                      f"the reference {scores[i]}", file=sys.stderr)
        if {i for i, _ in got} == set(ref_top):
            identical += 1
        else:
            # Equal only up to a tie at the 10th score: every hit shoal
            # returned scores at least the reference's 10th.
            tenth = float(scores[ref_top[-1]]) if ref_top else 0.0
            if all(float(scores[i]) >= tenth - TOLERANCE for i, _ in got) and len(got) == len(ref_top):
                tied += 1
            else:
                print(f"query {q['query']} {q['text']!r}: top 10 differs\n  shoal {got}\n"
                      f"  reference {[(i, float(scores[i])) for i in ref_top]}", file=sys.stderr)
    print(f"{compared} queries compared ({empty} with no terms after analysis), "
          f"{len(docs)} documents")
    print(f"largest score difference: {worst:.2e} (tolerance {TOLERANCE:g})")
    print(f"top-10 sets identical: {identical}, equal up to a tie at rank 10: {tied}, "
          f"different: {compared - identical - tied}")
    ok = worst <= TOLERANCE and identical + tied == compared
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bm25")
