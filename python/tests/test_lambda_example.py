"""python/examples/: the Python reader Lambda (lambda_handler.py) answers
what a `shoal.Db` that wrote the index answers, in the Rust reader's
request and response shapes (checked against `shoal serve`, which shares
the Rust reader's route table), configured by the Rust functions'
variables; and quickstart.py is the README's example and prints what the
README says."""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pytest

import shoal
from conftest import Store

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
import lambda_handler  # noqa: E402

DIM = 4
IDS = [f"doc-{i}" for i in range(30)] + ["a/b"]  # an id with a slash, as paths carry it


def http_event(method: str, path: str, body: str = "", base64_body: bool = False) -> Dict[str, Any]:
    """A Function URL (API Gateway payload v2) event."""
    return {
        "version": "2.0",
        "rawPath": path,
        "requestContext": {"http": {"method": method, "path": path}},
        "body": base64.b64encode(body.encode()).decode() if base64_body else body,
        "isBase64Encoded": base64_body,
    }


def http_answer(resp: Dict[str, Any]) -> Any:
    assert resp["headers"] == {"content-type": "application/json"}
    return resp["statusCode"], json.loads(resp["body"])


def expected_hits(db: shoal.Db, **query: Any) -> List[Dict[str, Any]]:
    """What `shoal.Db.search` answers, as the handler's JSON."""
    vector = query.pop("vector")
    return [
        {"id": h.id, "score": h.score, "distance": h.distance, "metadata": h.metadata}
        for h in db.search(vector, consistency="strong", **query)
    ]


@pytest.fixture
def writer(store: Store) -> Iterator[shoal.Db]:
    """The index, written by a handle other than the handler's."""
    if store.name == "memory":
        pytest.skip("a Lambda reads a bucket another process wrote; memory:// is one process's")
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((len(IDS), DIM)).astype(np.float32)
    meta = [{"price": i} if i % 2 else {"symptoms": f"s{i}"} for i in range(len(IDS))]
    with shoal.open(store.url, dimensions=DIM, metric="cosine", partitions=4) as db:
        db.upsert(IDS, vectors, meta)
        yield db


@pytest.fixture
def handler(store: Store, writer: shoal.Db, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The handler in a fresh container, configured as infra/template.yaml
    configures the Rust reader."""
    monkeypatch.setenv("SHOAL_BUCKET", store.url)
    monkeypatch.setenv("SHOAL_DIMENSIONS", str(DIM))
    monkeypatch.setenv("SHOAL_METRIC", "cosine")
    monkeypatch.delenv("SHOAL_PARTITIONS", raising=False)
    monkeypatch.setenv("BRAINY_ROLE", "reader")
    monkeypatch.setattr(lambda_handler, "_db", None)
    yield lambda_handler.handler
    if lambda_handler._db is not None:
        lambda_handler._db.close()


def lambda_error(handler: Any, event: Any) -> lambda_handler.ApiError:
    """The error a direct invocation raises (Lambda reports its class name)."""
    with pytest.raises(lambda_handler.ApiError) as info:
        handler(event, None)
    return info.value


def test_search_answers_what_db_search_answers(store: Store, writer: shoal.Db, handler: Any) -> None:
    q = [0.3, -1.0, 0.2, 0.5]
    want = expected_hits(writer, vector=q, k=5)
    assert len(want) == 5
    direct = handler({"search": {"vector": q, "k": 5, "consistency": "strong"}}, None)
    assert direct == {"results": want, "partial": False}
    # A bare payload is a search; k defaults to 10, as in the Rust reader.
    bare = handler({"vector": q, "consistency": "strong"}, None)
    assert bare["results"] == expected_hits(writer, vector=q, k=10)
    # Filters take the /v1/search shape; the domain comes from the field names.
    filtered = handler({"search": {"vector": q, "k": 3, "filter": {"domain": "product"},
                                   "consistency": "strong"}}, None)
    assert filtered["results"] == expected_hits(writer, vector=q, k=3, filter={"domain": "product"})
    assert all(h["metadata"]["domain"] == "product" for h in filtered["results"])
    no_meta = handler({"search": {"vector": q, "k": 2, "include_metadata": False,
                                  "exact": True, "consistency": "strong"}}, None)
    assert [h["id"] for h in no_meta["results"]] == [h["id"] for h in want[:2]]
    assert all("metadata" not in h for h in no_meta["results"])
    # A Function URL event, plain and base64 body, and the shorter paths.
    body = json.dumps({"vector": q, "k": 5, "consistency": "strong"})
    for path in ("/v1/search", "/search", "/"):
        assert http_answer(handler(http_event("POST", path, body), None)) == (200, direct)
    assert http_answer(handler(http_event("POST", "/v1/search", body, True), None)) == (200, direct)


def test_get_answers_what_db_get_answers(writer: shoal.Db, handler: Any) -> None:
    for id in ("doc-3", "a/b"):
        want = writer.get(id, consistency="strong")
        assert want is not None
        got = handler({"get": {"id": id}}, None)
        assert got["id"] == id and got["metadata"] == want.metadata
        np.testing.assert_array_equal(np.array(got["vector"], dtype=np.float32), want.vector)
        assert http_answer(handler(http_event("GET", f"/v1/records/{id}"), None)) == (200, got)


def test_a_missing_id_is_404_not_found(handler: Any) -> None:
    e = lambda_error(handler, {"get": {"id": "nope"}})
    assert type(e).__name__ == "NonRetryable.not_found"
    assert (e.status, e.code, e.message) == (404, "not_found", 'no record with id "nope"')
    status, body = http_answer(handler(http_event("GET", "/v1/records/nope"), None))
    assert (status, body) == (404, {"error": {"code": "not_found", "message": 'no record with id "nope"'}})


BAD_DIRECT = {
    "unknown field": ({"hello": "world"}, "unknown field `hello`"),
    "a write to the reader": ({"upsert": {"records": []}}, "unknown field `upsert`"),
    "missing vector": ({"search": {"k": 3}}, "missing field `vector`"),
    "negative k": ({"search": {"vector": [1, 0, 0, 0], "k": -1}}, "`k` must be a non-negative integer"),
    "k a string": ({"search": {"vector": [1, 0, 0, 0], "k": "3"}}, "`k` must be a non-negative integer"),
    "vector not a list": ({"search": {"vector": "1,0,0,0"}}, "`vector` must be a list"),
    "get without id": ({"get": {}}, "missing field `id`"),
    "get id a number": ({"get": {"id": 7}}, "`id` must be a str"),
    "not an object": ([1, 2, 3], "expected a JSON object"),
    "rust-only option": ({"search": {"vector": [1, 0, 0, 0], "include_vectors": True}},
                         "`include_vectors` is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_DIRECT))
def test_bad_input_is_400_invalid_request(handler: Any, case: str) -> None:
    event, says = BAD_DIRECT[case]
    e = lambda_error(handler, event)
    assert type(e).__name__ == "NonRetryable.invalid_request"
    assert (e.status, e.code) == (400, "invalid_request")
    assert e.message.startswith("malformed reader event (") and says in e.message, e.message
    assert e.message.endswith("send " + lambda_handler.USAGE)


def test_bad_input_the_engine_finds_and_bad_http_requests(handler: Any) -> None:
    # Found by shoal itself (wrong dimensions), not by the handler's checks.
    e = lambda_error(handler, {"search": {"vector": [1, 0], "k": 1}})
    assert (type(e).__name__, e.status) == ("NonRetryable.invalid_request", 400)
    assert "dimensions" in e.message
    for event, status, says in [
        (http_event("POST", "/v1/search", "{not json"), 400, "bad JSON body: "),
        (http_event("POST", "/v1/search", json.dumps({"vector": [1, 0, 0, 0], "kk": 1})), 400,
         "unknown field `kk`"),
        (http_event("POST", "/v1/search", "%%%", True), 400, "bad JSON body: "),
        (http_event("POST", "/v1/search", json.dumps({"vector": [1, 0]})), 400, "dimensions"),
        (http_event("POST", "/v1/upsert", "{}"), 404, "no such endpoint: POST /v1/upsert"),
        (http_event("GET", "/v1/search"), 404, "no such endpoint: GET /v1/search"),
        (http_event("GET", "/v1/records/"), 404, "no such endpoint"),
    ]:
        got_status, body = http_answer(handler(event, None))
        assert got_status == status and list(body) == ["error"], body
        code = "invalid_request" if status == 400 else "not_found"
        assert body["error"]["code"] == code and says in body["error"]["message"], body


def test_one_handle_per_container_that_sees_later_writes(writer: shoal.Db, handler: Any) -> None:
    q = {"vector": [0.0, 0.0, 0.0, 1.0], "k": 1, "consistency": "strong"}
    handler({"search": q}, None)
    opened = lambda_handler._db
    assert opened is not None
    writer.upsert(["fresh"], np.array([[0.0, 0.0, 0.0, 1.0]], dtype=np.float32), [{"n": 1}])
    assert handler({"search": q}, None)["results"][0]["id"] == "fresh"
    assert lambda_handler._db is opened


def test_warm_fetches_what_queries_plan_with(store: Store, writer: shoal.Db, handler: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    writer.compact(force=True)  # a shard to warm
    report = handler({"warm": {}}, None)
    assert report["live_records"] == len(IDS) and report["shards"] >= 1
    assert lambda_error(handler, {"warm": {"x": 1}}).status == 400
    # SHOAL_WARM_ON_INIT warms the handle as it opens (and only then).
    warmed: List[Dict[str, Any]] = []
    real_warm = shoal.Db.warm
    limits: List[Optional[float]] = []

    def spy(self: shoal.Db, seconds: Optional[float] = None) -> Dict[str, Any]:
        limits.append(seconds)
        warmed.append(real_warm(self, seconds))
        return warmed[-1]
    monkeypatch.setattr(shoal.Db, "warm", spy)
    lambda_handler._db.close()  # type: ignore[union-attr]
    monkeypatch.setattr(lambda_handler, "_db", None)
    handler({"get": {"id": "doc-1"}}, None)
    assert warmed == []
    lambda_handler._db.close()  # type: ignore[union-attr]
    monkeypatch.setattr(lambda_handler, "_db", None)
    monkeypatch.setenv("SHOAL_WARM_ON_INIT", "true")
    opened = lambda_handler.db()
    assert len(warmed) == 1 and warmed[0]["live_records"] == len(IDS)
    # Bounded in time (Lambda cuts init off at 10 s), and not cut short here.
    assert limits == [lambda_handler.WARM_ON_INIT_SECONDS] and warmed[0]["cut_short"] is False
    opened.close()
    monkeypatch.setattr(lambda_handler, "_db", None)
    monkeypatch.setenv("SHOAL_WARM_ON_INIT", "2.5")
    opened = lambda_handler.db()
    assert limits[-1] == 2.5
    monkeypatch.setattr(lambda_handler, "_db", None)
    monkeypatch.setenv("SHOAL_WARM_ON_INIT", "sometimes")
    e = lambda_error(handler, {"get": {"id": "x"}})
    assert (e.status, e.code) == (500, "misconfigured") and "SHOAL_WARM_ON_INIT" in e.message
    assert lambda_handler._db is None  # nothing opened: the next invocation reports it again
    opened.close()


def test_configuration_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "index")
    monkeypatch.setattr(lambda_handler, "_db", None)
    monkeypatch.delenv("SHOAL_BUCKET", raising=False)
    e = lambda_error(lambda_handler.handler, {"get": {"id": "x"}})
    assert (type(e).__name__, e.status) == ("NonRetryable.misconfigured", 500)
    assert "SHOAL_BUCKET is not set" in e.message
    # A reader invoked before any writer: retryable, and it creates nothing.
    monkeypatch.setenv("SHOAL_BUCKET", url)
    monkeypatch.setenv("SHOAL_DIMENSIONS", str(DIM))
    e = lambda_error(lambda_handler.handler, {"get": {"id": "x"}})
    assert (type(e).__name__, e.status) == ("Retryable.no_index", 503)
    assert "never creates the index config" in e.message
    status, body = http_answer(lambda_handler.handler(http_event("GET", "/v1/records/x"), None))
    assert status == 503 and body["error"]["code"] == "no_index"
    assert lambda_handler._db is None
    with pytest.raises(shoal.NotFound):
        shoal.open(url, create=False)
    monkeypatch.setenv("SHOAL_DIMENSIONS", "four")
    e = lambda_error(lambda_handler.handler, {"get": {"id": "x"}})
    assert (e.status, e.code) == (500, "misconfigured") and "SHOAL_DIMENSIONS" in e.message


def test_quickstart_is_the_readme_example_and_prints_what_it_says(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent.parent / "README.md").read_text()
    section = readme[readme.index("### From Python"):]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1) in (EXAMPLES / "quickstart.py").read_text()
    out = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    # The README: [Hit(id='apple', distance=0.0061..., score=0.9938..., metadata={...})]
    assert re.fullmatch(r"\[Hit\(id='apple', distance=0\.0061\d*, score=0\.9938\d*, "
                        r"metadata=\{'price': 3, 'domain': 'product'\}\)\]\n", out), out
    assert (tmp_path / "shoal-py").is_dir()


def _shoal_binary() -> Path:
    """The `shoal` CLI the test command builds first (`cargo run -- demo`)."""
    path = Path(os.environ.get("SHOAL_BIN") or EXAMPLES.parent.parent / "target/debug/shoal")
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {path} is missing: scripts/test.sh builds it first")
        pytest.skip(f"{path} not built (cargo build, or SHOAL_BIN=...)")
    return path


def test_answers_are_the_rust_readers_less_what_the_package_lacks(
        store: Store, writer: shoal.Db, handler: Any, tmp_path: Path) -> None:
    """Against `shoal serve` (the Rust route table the reader Lambda uses):
    the same fields and values, less the documented ones."""
    if store.name not in ("local", "moto"):
        pytest.skip("one local and one S3 store are enough")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(
            [str(_shoal_binary()), "--bucket", store.url, "serve", "--listen", f"127.0.0.1:{port}"],
            env=dict(os.environ, BRAINY_ROLE="reader"), stdout=log, stderr=log)

    def call(path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        for _ in range(300):
            try:
                if call("/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        q = {"vector": [0.3, -1.0, 0.2, 0.5], "k": 5, "consistency": "strong",
             "filter": {"domain": "product"}}
        status, rust = call("/v1/search", q)
        assert status == 200
        python = handler({"search": q}, None)
        assert set(rust) - set(python) == {"stats"} and set(python) <= set(rust)
        assert python["partial"] == rust["partial"]
        assert len(python["results"]) == len(rust["results"]) > 0
        for p, r in zip(python["results"], rust["results"]):
            assert p == {k: v for k, v in r.items() if k != "partition"}
        status, rust = call("/v1/records/doc-3")
        python = handler({"get": {"id": "doc-3"}}, None)
        assert status == 200 and set(rust) - set(python) == {"partition", "seq", "position"}
        assert python == {k: v for k, v in rust.items() if k in python}
        status, rust = call("/v1/records/nope")
        assert http_answer(handler(http_event("GET", "/v1/records/nope"), None)) == (status, rust)
        status, rust = call("/v1/search", {"vector": [1, 0], "k": 1})
        python_status, python = http_answer(handler(http_event(
            "POST", "/v1/search", json.dumps({"vector": [1, 0], "k": 1})), None))
        assert (python_status, python) == (status, rust) == (400, rust)
    finally:
        server.terminate()
        server.wait(timeout=30)
