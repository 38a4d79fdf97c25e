#!/usr/bin/env python3
"""Builds data/demo/ (shipped with shoal for `shoal demo`) from the shared
real dataset (debian-pkgdesc-minilm384: Debian package descriptions embedded
with all-MiniLM-L6-v2, 384-d, unit length).

Picks 12 queries (seeded), keeps the union of their exact top-100
neighbours plus a seeded random sample of other docs, 3,000 docs in all.
Writes:
  data/demo/vectors.f32.zst   3,000 x 384 little-endian f32, zstd
  data/demo/docs.jsonl.zst    {"id","package","domain","text"} per doc (text cut to 400 chars), zstd
  data/demo/queries.json      [{"text","domain","vector"}] for the 12 queries
Needs only the Python standard library and the `zstd` command.

  python3 scripts/make-demo-data.py ../shared/datasets/debian-pkgdesc-minilm384
"""
import gzip, json, random, struct, subprocess, sys, os

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/debian-pkgdesc-minilm384"
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "demo")
N_DOCS, N_QUERIES, SEED = 3000, 12, 20261121

def read_vecs(path, fmt):
    rows = []
    with open(path, "rb") as f:
        while True:
            h = f.read(4)
            if not h:
                return rows
            d = struct.unpack("<i", h)[0]
            rows.append(struct.unpack("<%d%s" % (d, fmt), f.read(4 * d)))

base = read_vecs(os.path.join(src, "base.fvecs"), "f")
queries = read_vecs(os.path.join(src, "query.fvecs"), "f")
truth = read_vecs(os.path.join(src, "groundtruth.ivecs"), "i")
qmeta = [json.loads(l) for l in open(os.path.join(src, "queries.jsonl"))]
docs = [json.loads(l) for l in gzip.open(os.path.join(src, "docs.jsonl.gz"), "rt")]

rng = random.Random(SEED)
qids = rng.sample(range(len(queries)), N_QUERIES)
keep = []
seen = set()
for q in qids:
    for i in truth[q][:100]:
        if i not in seen:
            seen.add(i); keep.append(i)
rest = [i for i in range(len(base)) if i not in seen]
keep += rng.sample(rest, N_DOCS - len(keep))
keep.sort()

raw = b"".join(struct.pack("<384f", *base[i]) for i in keep)
subprocess.run(["zstd", "-19", "-q", "-f", "-o", os.path.join(out, "vectors.f32.zst")], input=raw, check=True)
lines = []
for i in keep:
    d = docs[i]
    lines.append(json.dumps({"id": d["package"], "package": d["package"], "domain": d["domain"],
                             "text": d["text"][:400]}, ensure_ascii=False))
subprocess.run(["zstd", "-19", "-q", "-f", "-o", os.path.join(out, "docs.jsonl.zst")],
               input=("\n".join(lines) + "\n").encode(), check=True)
qs = [{"text": qmeta[q]["text"], "domain": qmeta[q]["domain"],
       "vector": [round(x, 7) for x in queries[q]]} for q in qids]
json.dump(qs, open(os.path.join(out, "queries.json"), "w"))
print(f"{len(keep)} docs, {len(qs)} queries -> {out}")
