#!/usr/bin/env python3
"""Checks the layering rules of ARCHITECTURE.md ("Code map") on the source.

- `coord` is a leaf above `store`: nothing under src/coord/ uses the
  reader, the writer or compaction; the reader never uses the writer.
- No two top-level modules of the library import each other in a cycle.
- Conditional writes (`put_if_absent`, `put_if_match`) are called only by
  `store` and `coord` (the protocol), nowhere else.
- The front ends (src/cli/, src/http/, src/lambda.rs) reach the library
  only through the handle (`Db`, `OpenOptions`, `probe`), `api`, the error
  types, the shared route table and (for `serve`) the HTTP server.
- Release and Lambda builds carry no test helpers: the `test-util`
  feature is off in the normal dependency graph of every shipped crate.

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
    first `#[cfg(test)]` module (unit tests may use anything)."""
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

# 4. Front ends use the handle, api, errors, routes, auth and the HTTP server only.
front_ends = [p for p in rs_files(os.path.join(SRC, "cli"))]
front_ends += [p for p in rs_files(os.path.join(SRC, "http"))]
front_ends += [os.path.join(SRC, "main.rs"), os.path.join(SRC, "lambda.rs")]
allowed = re.compile(
    r"^(api|auth|db|error|routes|http|s3vectors|Db|OpenOptions|Error|ErrorKind|probe)\b"
)
for path in front_ends:
    for n, line in code_lines(path):
        for m in re.findall(r"\b(?:shoal|crate)::([A-Za-z_][A-Za-z0-9_]*)", line):
            if not allowed.match(m):
                problems.append(f"{rel(path)}:{n}: front end reaches into `{m}`: {line.strip()}")
        if re.search(r"\bshoal::\{", line) or re.search(r"\bcrate::\{", line):
            for m in re.findall(r"[:{,]\s*([A-Za-z_]+)", line.split("::{", 1)[1]):
                if not allowed.match(m):
                    problems.append(f"{rel(path)}:{n}: front end reaches into `{m}`: {line.strip()}")

# 5. No test helpers in shipped crates.
if "--no-cargo" not in sys.argv:
    for crate in ["shoal", "shoal-reader", "shoal-writer", "shoal-compactor"]:
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
