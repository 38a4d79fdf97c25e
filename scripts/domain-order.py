#!/usr/bin/env python3
"""Prints the base row numbers of a dataset sorted by domain (its
docs.jsonl.gz `domain`, ties by row): the order a drift benchmark
ingests rows in, so later rows fall where the first routing had few.

    python3 scripts/domain-order.py DATASET_DIR > order.txt
"""
import gzip
import json
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with gzip.open(f"{sys.argv[1]}/docs.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    rows = sorted(range(len(docs)), key=lambda i: (docs[i]["domain"], i))
    sys.stdout.write("".join(f"{i}\n" for i in rows))


if __name__ == "__main__":
    main()
