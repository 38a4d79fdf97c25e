#!/usr/bin/env python3
"""Checks the layering rules of ARCHITECTURE.md ("Code map") on the source.

- `coord` is a leaf above `store`: nothing under src/coord/ uses the
  reader, the writer or compaction; the reader never uses the writer.
- No two top-level modules of the library import each other in a cycle.
- Conditional writes (`put_if_absent`, `put_if_match`) are called only by
  `store` and `coord` (the protocol), nowhere else.
- The front ends reach the library only through the handle (`db`: `Db`,
  `OpenOptions`, `probe`), `api`, the error types (`error`) and what
  belongs to each (every `crate::`/`shoal::` path is checked, `use` trees
  expanded):
  - src/cli/, src/http/, src/lambda.rs, src/main.rs: also `auth`, the
    shared route table (`routes`), the HTTP server (`http`) and the S3
    Vectors service (`s3vectors`);
  - src/s3vectors/: also the S3 Vectors catalog (`coord::catalog`, coord
    protocol that owns the root of the store, and `coord::CoordError`, the
    error it returns), the clock seam (`coord::clock`: timestamps and the
    signature's time window) and the filter language (`filter`: S3
    Vectors filters are checked with it). No `store`, `reader`, `writer`: the
    indexes are reached through their `Db`s;
  - python/src/ (the `shoal` Python package's native module, a crate of
    its own: its `shoal::` paths): the handle, `api` and the error types
    only;
  - src/bench/: not `api`, which re-exports the bench helpers (that
    would be a module cycle), but the types `api` re-exports, at their
    homes: `reader::{SearchRequest, Consistency, ReaderOptions}`,
    `record::Record`, `coord::{RequestedSettings, Role, JoinOptions}`; also the shared
    words (`vocab`: index settings, metric), the dataset file readers
    (`dataset`) and two pure helpers with no I/O and no state:
    `index::distance` (exact ground truth) and `reader::memory_budget_bytes`
    (the machine line of a report). Readers, writers and stores are
    reached through `Db` (`Db::reading_copy` for cold queries).
- Release and Lambda builds carry no test helpers: the `test-util`
  feature is off in the normal dependency graph of every shipped crate.
- The read and index wing: nothing under src/index/ does I/O (the shard
  index is sans-I/O; the reader fetches); inside src/reader/ only the
  snapshot (and the shard set that defines them) calls `watermark(` or
  looks an id's shard row up (`row_of(id)`), so "a tail record hides its
  shard row" is written once; no `unreachable!` in the reader outside the
  part cache.

Prints every violation with file and line and exits 1 if there is any.
"""
import collections
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "src")
problems = []


def code_lines(path):
    """(line number, text) of the lines that are not comments, up to the
    first `#[cfg(test)]` module (unit tests, and a module's `tests.rs`,
    may use anything)."""
    if os.path.basename(path) == "tests.rs":
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if s.startswith("#[cfg(test)]"):
                return
            if s.startswith("//"):
                continue
            yield n, line


def rs_files(base):
    for dirpath, _, files in os.walk(base):
        for name in sorted(files):
            if name.endswith(".rs"):
                yield os.path.join(dirpath, name)


def rel(path):
    return os.path.relpath(path, ROOT)


def top_module(path):
    parts = os.path.relpath(path, SRC).split(os.sep)
    return parts[0][:-3] if parts[0].endswith(".rs") else parts[0]


# 1. coord is a leaf; the reader does not know the writer.
forbidden = {
    "coord": re.compile(r"crate::(reader|writer|compact|db)\b"),
    "reader": re.compile(r"crate::(writer|compact|db)\b"),
}
for path in rs_files(SRC):
    rule = forbidden.get(top_module(path))
    if not rule:
        continue
    for n, line in code_lines(path):
        if rule.search(line):
            problems.append(f"{rel(path)}:{n}: layering: {line.strip()}")

# 2. No cycles between top-level library modules.
deps = collections.defaultdict(set)
where = {}
for path in rs_files(SRC):
    mod = top_module(path)
    if mod in ("main", "cli", "lib"):
        continue
    for n, line in code_lines(path):
        for m in re.findall(r"crate::([a-z_]+)", line):
            if m != mod and m not in deps[mod]:
                deps[mod].add(m)
                where[(mod, m)] = f"{rel(path)}:{n}"


def find_cycle():
    state = {}

    def visit(n, stack):
        state[n] = "open"
        for d in sorted(deps.get(n, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d, stack + [d])
                if found:
                    return found
        state[n] = "done"
        return None

    for n in sorted(deps):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


cycle = find_cycle()
if cycle:
    edges = ", ".join(f"{a}->{b} ({where[(a, b)]})" for a, b in zip(cycle, cycle[1:]))
    problems.append(f"module cycle: {' -> '.join(cycle)}: {edges}")

# 3. Conditional writes only in store and coord.
for path in rs_files(SRC):
    if top_module(path) in ("store", "coord"):
        continue
    for n, line in code_lines(path):
        if re.search(r"\.put_if_(absent|match)\(", line):
            problems.append(f"{rel(path)}:{n}: conditional write outside store/coord: {line.strip()}")

# 4. Front ends use the handle, api, errors and what belongs to each.
HANDLE = ["api", "db", "error", "Db", "OpenOptions", "Error", "ErrorKind", "probe", "runtime"]
FRONT_ENDS = [
    (
        [*rs_files(os.path.join(SRC, "cli")), *rs_files(os.path.join(SRC, "http")),
         os.path.join(SRC, "main.rs"), os.path.join(SRC, "lambda.rs")],
        HANDLE + ["auth", "routes", "http", "s3vectors"],
    ),
    (
        list(rs_files(os.path.join(SRC, "s3vectors"))),
        HANDLE + ["s3vectors", "coord::catalog", "coord::CoordError", "coord::clock", "filter"],
    ),
    (
        list(rs_files(os.path.join(SRC, "bench"))),
        [h for h in HANDLE if h != "api"] + [
            "bench", "vocab", "dataset", "index::distance", "reader::memory_budget_bytes",
            "reader::SearchRequest", "reader::Consistency", "reader::ReaderOptions",
            "record::Record", "coord::RequestedSettings", "coord::Role", "coord::JoinOptions",
        ],
    ),
    (list(rs_files(os.path.join(ROOT, "python", "src"))), HANDLE),
]


def use_paths(text, start):
    """The paths of the use tree (or plain path) at text[start:], with the
    braces of `a::{b, c::{d, self}}` expanded: ["a::b", "a::c::d", "a::c"]."""
    ident = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|\*)")
    sep = re.compile(r"\s*::\s*")
    punct = re.compile(r"\s*([,}])")

    def group(i, base):
        # text[i] follows a `{`: subtrees up to the matching `}`.
        out = []
        while True:
            if re.compile(r"\s*}").match(text, i):
                return out, re.compile(r"\s*}").match(text, i).end()
            sub, i = tree(i, base)
            out += sub
            m = punct.match(text, i)
            if not m:
                return out, i
            i = m.end()
            if m.group(1) == "}":
                return out, i

    def tree(i, prefix):
        chain = []
        while True:
            m = re.compile(r"\s*{").match(text, i)
            if m:
                return group(m.end(), prefix + chain)
            m = ident.match(text, i)
            if not m:
                break
            chain.append(m.group(1))
            i = m.end()
            m = sep.match(text, i)
            if not m:
                break
            i = m.end()
        path = prefix + [c for c in chain if c != "self"]
        return ["::".join(path)] if path else [], i

    return tree(start, [])[0]


def statements(path):
    """(line number, text) of the code, a `use` statement joined into one."""
    pending = None
    for n, line in code_lines(path):
        if pending:
            pending = (pending[0], pending[1] + " " + line.strip())
        elif line.strip().startswith(("use ", "pub use ", "pub(crate) use ")):
            pending = (n, line.strip())
        else:
            yield n, line
            continue
        if pending[1].endswith(";"):
            yield pending
            pending = None


for files, allowed in FRONT_ENDS:
    for path in files:
        # In the library `crate::` is shoal; in the Python crate it is its own.
        outside = not os.path.abspath(path).startswith(os.path.abspath(SRC) + os.sep)
        prefix = r"\bshoal::" if outside else r"\b(?:shoal|crate)::"
        for n, text in statements(path):
            for m in re.finditer(prefix, text):
                for used in use_paths(text, m.end()):
                    if not any(used == a or used.startswith(a + "::") for a in allowed):
                        problems.append(
                            f"{rel(path)}:{n}: front end reaches into `{used}`: {text.strip()}"
                        )

# 6. The read and index wing (issue 27): the shard index does no I/O; in
#    the reader, only the snapshot pairs a tail with the shards (compares
#    a seq with a watermark, looks an id up in the shard set), and no
#    `unreachable!` tells search units apart (only the part cache's
#    blocks and sources, keyed by their part's kind, may use it).
io = re.compile(r"crate::store\b|\.await\b|\basync fn\b|tokio::")
for path in rs_files(os.path.join(SRC, "index")):
    for n, line in code_lines(path):
        if io.search(line):
            problems.append(f"{rel(path)}:{n}: the index room does I/O: {line.strip()}")
# The part cache and the parts it keys (shards of either format, routings).
PART_CACHE = ("src/reader/ranged.rs", "src/reader/routed/mod.rs")
snapshot_only = re.compile(r"\.watermark\(|\.row_of\(\s*id\b|\.row_of\(\s*&")
reader = os.path.join(SRC, "reader")
for path in rs_files(reader):
    name = os.path.basename(path)
    for n, line in code_lines(path):
        if name not in ("snapshot.rs", "shards.rs") and snapshot_only.search(line):
            problems.append(
                f"{rel(path)}:{n}: pairs a tail with the shards outside reader::snapshot: {line.strip()}"
            )
        if rel(path) not in PART_CACHE and "unreachable!" in line:
            problems.append(f"{rel(path)}:{n}: unreachable! in the reader: {line.strip()}")

# 5. No test helpers in shipped crates.
if "--no-cargo" not in sys.argv:
    for crate in ["shoal", "shoal-reader", "shoal-writer", "shoal-compactor", "shoal-python"]:
        out = subprocess.run(
            ["cargo", "tree", "--locked", "-p", crate, "-e", "features", "-i", "shoal", "--edges", "normal"],
            cwd=ROOT, capture_output=True, text=True,
        )
        if out.returncode != 0:
            problems.append(f"cargo tree -p {crate} failed: {out.stderr.strip()}")
        elif "test-util" in out.stdout:
            problems.append(f"{crate}: the test-util feature is on in a normal (shipped) build")

for p in problems:
    print(p)
if problems:
    print(f"check-structure: {len(problems)} problem(s)")
    sys.exit(1)
print("check-structure: layering, cycles, conditional writes, front ends and shipped features ok")
