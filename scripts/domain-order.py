#!/usr/bin/env python3
"""Prints base row numbers sorted by domain (the dataset's docs.jsonl.gz
`domain`, ties by row): the order `cargo bench --bench drift` ingests
rows in, so later rows fall where the first routing had few.

    python3 scripts/domain-order.py DATASET_DIR [N] > order.txt

With N, for a set built by make-noisy-copies.py from DATASET_DIR (row i
is a copy of original i % the base's rows): its N rows, by their
original's domain.
"""
import gzip
import json
import sys


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    with gzip.open(f"{sys.argv[1]}/docs.jsonl.gz", "rt", encoding="utf-8") as f:
        domains = [json.loads(line)["domain"] for line in f]
    m = len(domains)
    n = int(sys.argv[2]) if len(sys.argv) == 3 else m
    rows = sorted(range(n), key=lambda i: (domains[i % m], i))
    sys.stdout.write("".join(f"{i}\n" for i in rows))


if __name__ == "__main__":
    main()
