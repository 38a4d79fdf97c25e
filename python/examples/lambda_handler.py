"""shoal's reader Lambda function in Python: search and get over the bucket
the Rust functions (lambdas/) use, configured by the same variables, so one
template configures both. Handler: `lambda_handler.handler`; packaging and
IAM: docs/deploy.md, "A Python Lambda".

Environment: `SHOAL_BUCKET` (`s3://bucket/prefix`, required), `BRAINY_ROLE`
(default `reader`), and optionally `SHOAL_DIMENSIONS`, `SHOAL_METRIC`,
`SHOAL_PARTITIONS` (must agree with the index's config; a reader never
creates it), `SHOAL_WARM_ON_INIT` (`true`: fetch manifests, shard heads,
codes and rows for up to 7 seconds when the handle opens, so the first
query is warm; a number: that many seconds) and
`BRAINY_INSTANCE_PREFIX` (read by the engine itself).

Requests, as the Rust reader takes them:
- a direct invocation: `{"search": {"vector": [...], "k": 10}}`,
  `{"get": {"id": "..."}}`, `{"warm": {}}` or a bare search request;
- a Function URL / API Gateway HTTP (payload v2) event: `POST /v1/search`
  (also `/search` and `/`) or `GET /v1/records/{id}`, answered with
  `{statusCode, headers, body}`.
Errors are `{"error": {"code", "message"}}` with the Rust reader's HTTP
statuses; a failed direct invocation raises, and Lambda reports its type
as `Retryable.<code>` or `NonRetryable.<code>`, as for the Rust function.

What the `shoal` package does not expose is not answered: hits carry no
`partition`, a record no `partition`/`seq`/`position`, a search no `stats`;
`include_vectors`, `allow_partial`, `max_staleness_ms` and `deadline_ms`
are refused (400).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
from typing import Any, Dict, Optional, Tuple, Type, cast

import shoal

USAGE = '{"search": {"vector": [...], "k": 10}} or {"get": {"id": "..."}}'
REQUIRED = object()
# The fields of a search request: accepted type and default.
SEARCH_FIELDS: Dict[str, Tuple[type, Any]] = {
    "vector": (list, REQUIRED),
    "k": (int, 10),
    "filter": (object, None),
    "consistency": (str, "bounded"),
    "include_metadata": (bool, True),
    "exact": (bool, False),
    "nprobe": (int, None),
}
GET_FIELDS: Dict[str, Tuple[type, Any]] = {"id": (str, REQUIRED)}
# Fields of the Rust reader's search that the shoal package has no option for.
RUST_ONLY = ("include_vectors", "allow_partial", "max_staleness_ms", "deadline_ms")

_db: Optional[shoal.Db] = None  # one handle per container, opened on first use


class ApiError(Exception):
    """An error as the Rust functions answer it."""

    def __init__(self, status: int, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retryable = status, code, message, retryable

    def body(self) -> Dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class Malformed(Exception):
    """A request of the wrong shape; the caller says where it came from."""


# shoal's exception classes as the Rust API's status and code (the base
# class last: the first match wins).
STATUS = [
    (shoal.InvalidInput, 400, "invalid_request"),
    (shoal.NotFound, 404, "not_found"),
    (shoal.Conflict, 409, "conflict"),
    (shoal.Unavailable, 503, "store_unavailable"),
    (shoal.CorruptData, 500, "corrupt_data"),
    (shoal.ShoalError, 500, "internal"),
]


def api_error(e: shoal.ShoalError) -> ApiError:
    status, code = next((s, c) for cls, s, c in STATUS if isinstance(e, cls))
    return ApiError(status, code, str(e), e.retryable)


def env_int(name: str) -> Optional[int]:
    value = os.environ.get(name) or None
    if value is not None and not value.isdigit():
        raise ApiError(500, "misconfigured", f"{name}={value!r} is not a number")
    return None if value is None else int(value)


# How long a warm-up at init may fetch by default: Lambda ends an init
# phase that runs past 10 seconds (as the Rust reader).
WARM_ON_INIT_SECONDS = 7.0


def warm_on_init() -> Optional[float]:
    """Seconds to warm for at init (`true`/`1`: WARM_ON_INIT_SECONDS, or a
    number of seconds), or None for no warm-up (`false`/`0`/unset)."""
    value = (os.environ.get("SHOAL_WARM_ON_INIT") or "").strip()
    if value in ("", "0", "false"):
        return None
    if value in ("1", "true"):
        return WARM_ON_INIT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= 900):
        raise ApiError(500, "misconfigured",
                       f"SHOAL_WARM_ON_INIT must be true, false or a number of seconds to warm for, not {value!r}")
    return seconds


def db() -> shoal.Db:
    """The container's handle, opened on first use from the environment
    (a failed open is retried by the next invocation)."""
    global _db
    if _db is None:
        url = os.environ.get("SHOAL_BUCKET")
        if not url:
            raise ApiError(500, "misconfigured", "SHOAL_BUCKET is not set (e.g. s3://bucket/prefix)")
        warm = warm_on_init()
        try:
            _db = shoal.open(
                url,
                role=os.environ.get("BRAINY_ROLE") or "reader",
                create=False,
                dimensions=env_int("SHOAL_DIMENSIONS"),
                metric=os.environ.get("SHOAL_METRIC") or None,
                partitions=env_int("SHOAL_PARTITIONS"),
            )
        except shoal.InvalidInput as e:  # a bad SHOAL_METRIC or BRAINY_ROLE
            raise ApiError(500, "misconfigured", str(e)) from None
        except shoal.NotFound as e:
            raise ApiError(
                503, "no_index",
                f"{e}. A reader never creates the index config: invoke the writer or "
                "compactor function once, or run `shoal --bucket URL init --dimensions N`",
                retryable=True,
            ) from None
        except shoal.ShoalError as e:
            raise api_error(e) from None
        if warm is not None:
            try:
                _db.warm(seconds=warm)
            except shoal.ShoalError:
                pass  # as the Rust reader: queries load what they need
    return _db


def checked(body: Any, fields: Dict[str, Tuple[type, Any]]) -> Dict[str, Any]:
    """`body`'s fields with their defaults, or Malformed naming the problem."""
    if not isinstance(body, dict):
        raise Malformed(f"expected a JSON object, got {json.dumps(body)}")
    for name in body:
        if name in RUST_ONLY:
            raise Malformed(f"`{name}` is not supported by the Python reader")
        if name not in fields:
            raise Malformed(f"unknown field `{name}`, expected one of {', '.join(fields) or 'none'}")
    out = {}
    for name, (kind, default) in fields.items():
        value = body.get(name, default)
        if value is REQUIRED:
            raise Malformed(f"missing field `{name}`")
        if kind is int and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Malformed(f"`{name}` must be a non-negative integer, not {json.dumps(value)}")
        elif value is not None and not isinstance(value, kind):
            raise Malformed(f"`{name}` must be a {kind.__name__}, not {json.dumps(value)}")
        out[name] = value
    return out


def search(body: Any) -> Dict[str, Any]:
    req = checked(body, SEARCH_FIELDS)
    hits = db().search(
        req["vector"], req["k"], filter=req["filter"], consistency=req["consistency"],
        exact=req["exact"], nprobe=req["nprobe"],
    )
    results = []
    for h in hits:
        hit: Dict[str, Any] = {"id": h.id, "score": h.score, "distance": h.distance}
        if req["include_metadata"] and h.metadata is not None:
            hit["metadata"] = h.metadata
        results.append(hit)
    return {"results": results, "partial": False}


def get(id: str) -> Dict[str, Any]:
    # Reads are strong, as the Rust reader's: a client that just wrote an id sees it.
    record = db().get(id, consistency="strong")
    if record is None:
        raise ApiError(404, "not_found", f"no record with id {json.dumps(id)}")
    return {"id": record.id, "vector": record.vector.tolist(), "metadata": record.metadata}


def direct(event: Any) -> Dict[str, Any]:
    """`{"search": body}`, `{"get": {"id": ...}}`, `{"warm": {}}` or a bare
    search body."""
    op, body = "search", event
    if isinstance(event, dict) and len(event) == 1 and next(iter(event)) in ("search", "get", "warm"):
        op, body = next(iter(event.items()))
    try:
        if op == "warm":
            checked(body, {})
            return db().warm()
        return get(checked(body, GET_FIELDS)["id"]) if op == "get" else search(body)
    except Malformed as e:
        raise ApiError(400, "invalid_request", f"malformed reader event ({e}); send {USAGE}") from None


def http(event: Dict[str, Any]) -> Dict[str, Any]:
    """A Function URL / API Gateway v2 event, routed as the Rust reader does."""
    method = event["requestContext"].get("http", {}).get("method", "POST")
    path = event.get("rawPath") or "/"
    if method == "GET" and path.startswith("/v1/records/") and len(path) > len("/v1/records/"):
        return get(path[len("/v1/records/"):])
    if method == "POST" and path in ("/v1/search", "/search", "/"):
        raw = event.get("body") or ""
        try:
            text = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw
            body = json.loads(text)
        except (binascii.Error, ValueError) as e:
            raise ApiError(400, "invalid_request", f"bad JSON body: {e}") from None
        try:
            return search(body)
        except Malformed as e:
            raise ApiError(400, "invalid_request", f"bad JSON body: {e}") from None
    raise ApiError(404, "not_found", f"no such endpoint: {method} {path}")


def lambda_error(e: ApiError) -> ApiError:
    """`e` as an exception whose class is named `Retryable.<code>` or
    `NonRetryable.<code>`: Lambda reports that name as the error type."""
    name = f"{'Retryable' if e.retryable else 'NonRetryable'}.{e.code}"
    cls = cast(Type[ApiError], type(name, (ApiError,), {}))
    return cls(e.status, e.code, e.message, e.retryable)


def handler(event: Any, context: Any = None) -> Dict[str, Any]:
    is_http = isinstance(event, dict) and isinstance(event.get("requestContext"), dict)
    try:
        status, body = 200, (http(event) if is_http else direct(event))
    except (ApiError, shoal.ShoalError) as e:
        error = e if isinstance(e, ApiError) else api_error(e)
        if not is_http:
            raise lambda_error(error) from None
        status, body = error.status, error.body()
    if not is_http:
        return body
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}
