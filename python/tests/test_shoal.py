"""The `shoal` Python package against every store in conftest.py: round
trips, newest-wins across processes, filters, consistency, bad input
(the right exception, nothing written), and the GIL released while the
engine works."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from typing import Any, List

import numpy as np
import pytest

import shoal
from conftest import Store

DIM = 8


def unit(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i % dim] = 1.0
    return v


def new_db(store: Store, **kw: Any) -> shoal.Db:
    opts = dict(dimensions=DIM, metric="euclidean", partitions=4)
    opts.update(kw)
    return shoal.open(store.url, **opts)


def test_upsert_search_get_delete_round_trip(store: Store) -> None:
    with new_db(store) as db:
        ids = [f"r{i}" for i in range(DIM)]
        vectors = np.eye(DIM, dtype=np.float32)
        meta = [{"n": i, "text": f"row {i}"} for i in range(DIM)]
        assert db.upsert(ids, vectors, meta) == DIM

        hits = db.search(unit(3), k=3, consistency="strong")
        assert hits[0].id == "r3" and hits[0].distance == pytest.approx(0.0)
        assert hits[0].metadata is not None and hits[0].metadata["n"] == 3
        assert hits.ids[0] == "r3" and hits.distances.dtype == np.float32
        assert len(hits) == 3 and list(hits.distances) == sorted(hits.distances)

        rec = db.get("r5", consistency="strong")
        assert rec is not None and rec.id == "r5"
        np.testing.assert_array_equal(rec.vector, vectors[5])
        assert rec.metadata["text"] == "row 5"
        got = db.get_many(["r1", "missing", "r2"])
        assert [r.id if r else None for r in got] == ["r1", None, "r2"]

        # A float64 list is converted (once, by numpy), and replaces r5.
        db.upsert(["r5"], [[0.0, 0, 0, 0, 0, 0.5, 0, 0]], [{"n": 55}])
        rec = db.get("r5", consistency="strong")
        assert rec is not None and rec.metadata["n"] == 55 and rec.vector[5] == 0.5

        assert db.delete(["r3", "never-there"]) == 2
        assert db.get("r3", consistency="strong") is None
        hits = db.search(unit(3), k=DIM, consistency="strong")
        assert "r3" not in hits.ids and len(hits) == DIM - 1

        many = db.search_many(np.eye(DIM, dtype=np.float32)[:4], k=1, consistency="strong")
        # Nearest to e3 now that r3 is gone: r5 (0.5 e5) at sqrt(1.25).
        assert [r.ids for r in many] == [["r0"], ["r1"], ["r2"], ["r5"]]

        st = db.status()
        assert st["config"]["settings"]["dimensions"] == DIM
        assert db.config["settings"]["partitionCount"] == 4
        report = db.compact(force=True)
        assert "partitions" in report and "index" in report
        # Still all there after compaction and indexing.
        assert db.search(unit(1), k=1, consistency="strong")[0].id == "r1"
        warmed = db.warm()
        # Everything is cached after the strong search: warming checks
        # freshness (one LIST of the manifests) and fetches nothing more.
        assert warmed["live_records"] == DIM - 1 and warmed["requests"]["list"] == 1
        assert warmed["cut_short"] is False
        # With no time to spend, it still loads the snapshot.
        cut = db.warm(seconds=0)
        assert cut["live_records"] == DIM - 1 and isinstance(cut["cut_short"], bool)
        with pytest.raises(shoal.InvalidInput, match="seconds"):
            db.warm(seconds=-1)
    assert db.closed
    with pytest.raises(shoal.ShoalError, match="closed"):
        db.search(unit(0), k=1)
    db.close()  # closing twice is fine


def test_add_is_durable_after_flush(store: Store) -> None:
    with new_db(store) as db:
        db.add(["a", "b"], np.eye(2, DIM, dtype=np.float32))
        assert db.flush() == 2
        assert db.get("b", consistency="strong") is not None


CHILD = r"""
import json, sys
import numpy as np
import shoal
url, action, id_, value = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
with shoal.open(url) as db:
    if action == "write":
        v = np.zeros(8, dtype=np.float32); v[0] = value
        db.upsert([id_], v[None, :], [{"v": value}])
    r = db.get(id_, consistency="strong")
    hits = db.search(np.eye(8, dtype=np.float32)[0], k=1, consistency="strong")
    print(json.dumps({"get": r.metadata["v"], "search": hits[0].metadata["v"]}))
"""


def child(store: Store, action: str, value: float) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, store.url, action, "x", str(value)],
        capture_output=True, text=True, env=dict(os.environ), timeout=120,
        # Not python/: its shoal/ source directory would shadow the installed package.
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_newest_wins_across_two_processes(store: Store) -> None:
    if not store.shared:
        pytest.skip("memory:// is per process")
    with new_db(store) as db:
        v = np.zeros((1, DIM), dtype=np.float32)
        v[0, 0] = 1.0
        db.upsert(["x"], v, [{"v": 1.0}])
        db.search(v[0], k=1)  # this handle now caches its view
        # Another process, another handle, writes a newer version...
        assert child(store, "write", 2.0) == {"get": 2.0, "search": 2.0}
        # ...which this handle sees with strong consistency.
        r = db.get("x", consistency="strong")
        assert r is not None and r.metadata["v"] == 2.0
        assert db.search(v[0], k=1, consistency="strong")[0].metadata == {"v": 2.0, "domain": "general"}
        # And the other way round.
        v[0, 0] = 3.0
        db.upsert(["x"], v, [{"v": 3.0}])
        assert child(store, "read", 0) == {"get": 3.0, "search": 3.0}


def _forked_child(url: str, parent: shoal.Db, q: Any) -> None:
    try:
        try:
            parent.get("x")
            q.put("the parent's handle worked after fork")
            return
        except shoal.ShoalError as e:
            assert "fork" in str(e)
        with shoal.open(url) as db:
            db.upsert(["y"], np.ones((1, DIM), dtype=np.float32), [{"from": "child"}])
        q.put("ok")
    except BaseException as e:  # report, never hang the parent
        q.put(f"{type(e).__name__}: {e}")


def test_a_forked_child_gets_its_own_runtime(store: Store) -> None:
    if store.name == "memory":
        pytest.skip("memory:// is one store per process")
    # On S3 the parent has worker threads parked at fork time. With tokio's
    # `parking_lot` feature they parked in parking_lot's process-wide table;
    # the child reuses their stacks, so its first park read garbage and
    # aborted (4 runs in 12 against moto). Three children per run.
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    with new_db(store) as db:
        db.upsert(["x"], np.ones((1, DIM), dtype=np.float32))  # the runtime exists now
        ctx = multiprocessing.get_context("fork")
        for _ in range(3):
            q = ctx.Queue()
            p = ctx.Process(target=_forked_child, args=(store.url, db, q))
            p.start()
            p.join(timeout=120)
            if p.exitcode is None:
                p.kill()
                p.join()
            assert p.exitcode == 0, f"the child exited with {p.exitcode}"
            assert q.get(timeout=10) == "ok"
        r = db.get("y", consistency="strong")
        assert r is not None and r.metadata["from"] == "child"


def test_filters_take_the_v1_search_shape(store: Store) -> None:
    with new_db(store) as db:
        meta: List[Any] = [
            {"price": 3, "sku": "A1"},
            {"price": 12, "sku": "B2"},
            {"symptoms": "fever"},
            {"clause": 7, "tags": ["x", "y"]},
        ]
        db.upsert(["p3", "p12", "flu", "lease"], np.eye(4, DIM, dtype=np.float32), meta)
        q = np.full(DIM, 0.1, dtype=np.float32)

        def ids(f: Any) -> List[str]:
            return sorted(db.search(q, k=10, filter=f, consistency="strong").ids)

        assert ids({"domain": "product"}) == ["p12", "p3"]
        assert ids({"price": {"$lt": 10}}) == ["p3"]
        assert ids({"$or": [{"domain": "medical"}, {"clause": {"$gte": 7}}]}) == ["flu", "lease"]
        assert ids({"sku": {"$exists": False}}) == ["flu", "lease"]
        assert ids({"tags": {"$in": ["y"]}}) == ["lease"]
        assert ids({"domain": {"$nin": ["product", "legal"]}}) == ["flu"]
        with pytest.raises(shoal.InvalidInput, match=r"\$bogus"):
            db.search(q, k=1, filter={"price": {"$bogus": 1}})
        with pytest.raises(shoal.InvalidInput):
            db.search(q, k=1, filter={"price": {1, 2}})  # a set is not JSON


def test_text_and_hybrid_search(store: Store) -> None:
    """Full text (BM25) alone, with a vector (fused), in tails and in
    index shards; bad text input raises InvalidInput."""
    docs = [
        ("ini", "Small INI library for Python 3"),
        ("toml", "TOML parsing library for Python"),
        ("yaml", "YAML parser and emitter"),
        ("rustc", "Rust compiler"),
    ]
    with new_db(store, text_fields={"text": "en", "name": "standard"}) as db:
        meta = [{"text": t, "name": f"python3-{i}"} for i, t in docs]
        db.upsert([i for i, _ in docs], np.eye(4, DIM, dtype=np.float32), meta)
        for place in ("tails", "shards"):
            hits = db.search(text={"text": "python libraries"}, k=3, consistency="strong")
            # Both hold both (stemmed) terms; the shorter text ranks first.
            assert hits.ids == ["toml", "ini"], (place, hits.ids)
            assert all(np.isnan(hits.distances)), hits.distances
            assert hits.bm25[0]["text"] > hits.bm25[1]["text"] > 0, hits.bm25
            assert list(hits.scores) == [h["text"] for h in hits.bm25]
            assert all(np.isnan(hits.fused))
            assert hits[0].metadata is not None and hits[0].metadata["name"] == "python3-toml"
            # Hybrid: the vector is yaml's; the name query names ini.
            both = db.search(unit(2), k=4, text={"name": "python3-ini"}, consistency="strong")
            assert set(both.ids[:2]) == {"yaml", "ini"}, both.ids
            assert all(f > 0 for f in both.fused), both.fused
            assert both.bm25[both.ids.index("ini")]["name"] > 0
            assert not np.isnan(both.distances[both.ids.index("yaml")])
            db.compact(force=True)
        status = db.status()["index"]["text"]
        assert {s["key"]: s["status"] for s in status} == {"name": "ACTIVE", "text": "ACTIVE"}
        with pytest.raises(shoal.InvalidInput, match="search needs a vector, text, or both"):
            db.search(k=3)
        with pytest.raises(shoal.InvalidInput, match="not full-text searchable"):
            db.search(text={"price": "cheap"}, k=3)
        with pytest.raises(shoal.InvalidInput):
            db.search(text="python", k=3)  # two searchable keys: name one
        with pytest.raises(shoal.InvalidInput):
            db.search(text={"text": ""}, k=3)
        with pytest.raises(shoal.InvalidInput, match="mapping"):
            db.search(text=["python"], k=3)  # type: ignore[arg-type]
    with pytest.raises(shoal.InvalidInput, match="klingon"):
        shoal.open(store.url + "-bad-analyzer", dimensions=DIM, text_fields={"text": "klingon"})


def test_consistency(store: Store) -> None:
    with new_db(store) as a, shoal.open(store.url) as b:
        a.upsert(["first"], unit(0)[None, :])
        assert b.search(unit(0), k=1, consistency="eventual")[0].id == "first"
        a.upsert(["second"], unit(1)[None, :])
        # Strong revalidates every manifest: b sees a's newest commit.
        assert b.search(unit(1), k=1, consistency="strong")[0].id == "second"
        assert b.get("second", consistency="strong") is not None
        for c in ("eventual", "bounded", None):
            b.search(unit(1), k=1, consistency=c)
        with pytest.raises(shoal.InvalidInput, match="consistency"):
            b.search(unit(1), k=1, consistency="linearizable")
        with pytest.raises(ValueError):  # InvalidInput is a ValueError
            b.get("first", consistency="sometimes")


BAD_BATCHES = {
    "wrong dimension": (["ok", "bad"], np.ones((2, DIM - 1), dtype=np.float32), None),
    "NaN": (["ok", "bad"], np.array([[1.0] * DIM, [np.nan] + [1.0] * (DIM - 1)], dtype=np.float32), None),
    "infinity": (["ok", "bad"], np.array([[1.0] * DIM, [np.inf] * DIM]), None),
    "strings": (["ok", "bad"], np.array([["1"] * DIM, ["a"] * DIM]), None),
    "objects": (["ok", "bad"], np.array([[1.0] * DIM, [None] * DIM], dtype=object), None),
    "complex": (["ok", "bad"], np.ones((2, DIM), dtype=np.complex64), None),
    "booleans": (["ok", "bad"], np.ones((2, DIM), dtype=bool), None),
    "ragged": (["ok", "bad"], [[1.0] * DIM, [1.0]], None),
    "1-D vectors": (["ok"], np.ones(DIM, dtype=np.float32), None),
    "3-D vectors": (["ok", "bad"], np.ones((2, 1, DIM), dtype=np.float32), None),
    "more ids than rows": (["ok", "bad", "extra"], np.ones((2, DIM), dtype=np.float32), None),
    "metadata count": (["ok", "bad"], np.ones((2, DIM), dtype=np.float32), [{"a": 1}]),
    "metadata not an object": (["ok", "bad"], np.ones((2, DIM), dtype=np.float32), [{"a": 1}, [1, 2]]),
    "metadata not JSON": (["ok", "bad"], np.ones((2, DIM), dtype=np.float32), [{"a": 1}, {"b": {1}}]),
    "metadata NaN": (["ok", "bad"], np.ones((2, DIM), dtype=np.float32), [{"a": 1}, {"b": float("nan")}]),
    "empty id": (["ok", ""], np.ones((2, DIM), dtype=np.float32), None),
    "ids as one string": ("ok", np.ones((2, DIM), dtype=np.float32), None),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_input_raises_invalid_input_and_writes_nothing(store: Store, case: str) -> None:
    ids, vectors, metadata = BAD_BATCHES[case]
    with new_db(store) as db:
        before = db.status()["totals"]
        with pytest.raises(shoal.InvalidInput):
            db.upsert(ids, vectors, metadata)
        assert db.get_many(["ok", "bad", "extra"], consistency="strong") == [None, None, None]
        assert db.status()["totals"] == before


def test_bad_queries_and_options(store: Store) -> None:
    with new_db(store) as db:
        db.upsert(["a"], unit(0)[None, :])
        for bad in (np.ones(DIM - 1), np.ones((1, DIM)), ["x"] * DIM, [np.nan] * DIM):
            with pytest.raises(shoal.InvalidInput):
                db.search(bad, k=1)
        with pytest.raises(shoal.InvalidInput):
            db.search(unit(0), k=0)
        with pytest.raises(shoal.InvalidInput):
            db.search_many(unit(0), k=1)  # 1-D: one query is `search`
    with pytest.raises(shoal.Conflict, match="dimensions"):
        shoal.open(store.url, dimensions=DIM + 1)
    with pytest.raises(shoal.InvalidInput):
        shoal.open(store.url, metric="manhattan")
    with pytest.raises(shoal.InvalidInput):
        shoal.open(store.url, role="boss")


def test_a_missing_index_is_not_found(store: Store) -> None:
    url = store.url.rstrip("/") + "-absent"
    with pytest.raises(shoal.NotFound):
        shoal.open(url, create=False)
    with pytest.raises(LookupError):  # NotFound is a LookupError
        shoal.open(url, create=False)


def test_other_threads_run_while_the_engine_searches(store: Store) -> None:
    if store.name != "memory":
        pytest.skip("one store is enough; memory:// is quickest to fill")
    n, dim = 20_000, 128
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    with shoal.open(store.url, dimensions=dim, metric="euclidean", partitions=4) as db:
        db.add([str(i) for i in range(n)], vectors)
        db.flush()
        queries = rng.standard_normal((16, dim), dtype=np.float32)
        ticks = 0
        stop = threading.Event()

        def count() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1

        t = threading.Thread(target=count)
        t.start()
        try:
            # The counter's speed when it has the GIL to itself.
            before, start = ticks, time.perf_counter()
            time.sleep(0.1)
            rate = (ticks - before) / (time.perf_counter() - start)
            # The native call alone: the wrapper's Python code after it
            # would give the counter time slices of its own.
            before, start = ticks, time.perf_counter()
            raw = db._h.search_many(queries, 5, None, "strong", True, None)
            elapsed, advanced = time.perf_counter() - start, ticks - before
        finally:
            stop.set()
            t.join()
        nearest = [str(int(np.argmin(((vectors - q) ** 2).sum(axis=1)))) for q in queries]
        assert [r[0][0] for r in raw] == nearest
        assert [r.ids[0] for r in db.search_many(queries, k=5, exact=True)] == nearest
        # With the GIL held for the whole call the counter would get one
        # switch interval (5 ms) at its end; released, it runs throughout
        # (sharing the CPU with the search's threads).
        assert elapsed > 0.1, f"the search took only {elapsed:.3f} s: too quick to tell"
        expected = rate * elapsed
        assert advanced > 0.1 * expected, (
            f"the counter moved {advanced} times in {elapsed:.3f} s; alone it moves {rate:.0f}/s"
        )


def test_a_handle_dropped_unclosed_deregisters(store: Store) -> None:
    import gc

    db = new_db(store)
    db.upsert(["a"], unit(0)[None, :])
    with shoal.open(store.url) as other:
        assert len(other.status()["instances"]) == 2
        del db
        gc.collect()
        deadline = time.monotonic() + 10
        while len(other.status()["instances"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(other.status()["instances"]) == 1
