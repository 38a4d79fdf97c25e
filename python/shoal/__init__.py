"""shoal in process: serverless vector search whose only shared state is an
S3 bucket (or a local directory), embedded in your Python program.

    import numpy as np, shoal
    with shoal.open("./shoal-data", dimensions=4) as db:
        db.upsert(["a", "b"], np.eye(2, 4, dtype=np.float32), [{"price": 3}, None])
        print(db.search([1, 0, 0, 0], k=1))

Any number of processes (and machines, on S3) may open the same index at
once; each write is committed with a conditional write, and the newest
write of an id wins. Every call releases the GIL while the engine works.
Errors are `shoal.ShoalError` subclasses (see `shoal.errors`).
"""
from __future__ import annotations

import atexit
import json
import math
import os
import weakref
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
import numpy.typing as npt

try:
    from . import _shoal
except ImportError as e:  # pragma: no cover - an environment problem, not a code path
    raise ImportError(
        f"shoal's native module is missing from {__path__[0]}: this is the source "
        "directory (python/shoal), not the installed package; install it with "
        "`pip install ./python` and run from another directory"
    ) from e
from .errors import Conflict, CorruptData, InvalidInput, NotFound, ShoalError, Unavailable

__all__ = [
    "open",
    "Db",
    "Hit",
    "Results",
    "Record",
    "ShoalError",
    "InvalidInput",
    "NotFound",
    "Conflict",
    "Unavailable",
    "CorruptData",
]

#: Anything numpy turns into a 1-D (`search`) or 2-D (`upsert`) array of
#: real numbers: a float32 array is used as is, others are converted once.
ArrayLike = npt.ArrayLike
Metadata = Dict[str, Any]
Filter = Mapping[str, Any]


class Record(NamedTuple):
    """A stored record: its newest live version."""

    id: str
    vector: npt.NDArray[np.float32]
    metadata: Metadata


class Hit(NamedTuple):
    """One search result. `distance`: lower is nearer; `score`: higher is
    more similar (both follow the index's metric)."""

    id: str
    distance: float
    score: float
    metadata: Optional[Metadata]


class Results(List[Hit]):
    """The hits of one search, best first (a list), with the columns as
    arrays: `ids`, `distances` and `scores`. A search with text also has
    `bm25` (per hit, its BM25 score in each key it matched) and `fused`
    (per hit, its reciprocal-rank fusion score; NaN when one ranked list
    stood alone). A hit found by text alone has distance NaN."""

    ids: List[str]
    distances: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]
    bm25: List[Dict[str, float]]
    fused: npt.NDArray[np.float32]

    @classmethod
    def _from_native(cls, raw: Tuple[List[str], Any, Any, str, str]) -> "Results":
        ids, distances, scores, metadata, text = raw
        metas = json.loads(metadata)
        texts = json.loads(text)
        out = cls(
            Hit(i, float(d), float(s), m) for i, d, s, m in zip(ids, distances, scores, metas)
        )
        out.ids, out.distances, out.scores = ids, distances, scores
        out.bm25 = [t["bm25"] if t else {} for t in texts]
        fused = [t["fused"] if t and t["fused"] is not None else math.nan for t in texts]
        out.fused = np.array(fused, dtype=np.float32)
        return out


def _floats(value: ArrayLike, ndim: int, what: str) -> npt.NDArray[np.float32]:
    """`value` as a C-ordered float32 array of `ndim` dimensions, or
    InvalidInput. Real numbers only (ints and floats); no Python loop."""
    try:
        a = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise InvalidInput(f"{what} is not an array of numbers: {e}") from None
    if a.dtype.kind not in "fiu":
        raise InvalidInput(f"{what} must hold real numbers (float32), not dtype {a.dtype}")
    if a.ndim != ndim:
        shape = "one vector" if ndim == 1 else "a 2-D array, one row per id"
        raise InvalidInput(f"{what} must be {shape}; got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _texts(
    text: Union[str, Mapping[str, str], None],
) -> Optional[List[Tuple[Optional[str], str]]]:
    """`search`'s `text` as (key, text) pairs (key None: the index's one
    searchable key), or InvalidInput."""
    if text is None:
        return None
    if isinstance(text, str):
        return [(None, text)]
    if isinstance(text, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in text.items()
    ):
        return [(k, v) for k, v in text.items()]
    raise InvalidInput("text must be a string or a mapping of searchable key to text")


def _ids(ids: Iterable[str], what: str = "ids") -> List[str]:
    if isinstance(ids, (str, bytes)):
        raise InvalidInput(f"{what} must be a list of strings, not a single {type(ids).__name__}")
    return ids if isinstance(ids, list) else list(ids)


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} is not JSON: {e}") from None


_open_handles: "weakref.WeakSet[Db]" = weakref.WeakSet()


class Db:
    """An open index. Use `shoal.open` to get one; close it (or use it as
    a context manager) so its instance record is removed at once rather
    than expiring. Safe to share between threads. A handle belongs to the
    process that opened it: after `fork` it raises in the child; open a new
    one there (the child gets its own runtime)."""

    def __init__(self, handle: _shoal.Handle) -> None:
        self._h = handle
        self._pid = os.getpid()
        _open_handles.add(self)

    # -- writes ---------------------------------------------------------

    def upsert(
        self,
        ids: Sequence[str],
        vectors: ArrayLike,
        metadata: Optional[Sequence[Optional[Metadata]]] = None,
    ) -> int:
        """Inserts or replaces records, one per id (row of `vectors`, entry
        of `metadata`); returns once they are committed (durable). The
        whole batch is checked first: on InvalidInput nothing is written.
        At most 10,000 records per call (the engine's batch limit); for
        bulk loads use `add` and `flush`. Returns the number written."""
        ids = _ids(ids)
        if not ids and np.size(vectors) == 0:
            return 0
        rows = _floats(vectors, 2, "vectors")
        meta = None if metadata is None else _json(list(metadata), "metadata")
        return self._h.upsert(ids, rows, meta)

    def add(
        self,
        ids: Sequence[str],
        vectors: ArrayLike,
        metadata: Optional[Sequence[Optional[Metadata]]] = None,
    ) -> int:
        """Like `upsert`, for bulk ingest: validates and buffers the records
        (committing a partition's buffer when it fills). **Not durable**
        until a `flush` (or `close`) returns. Returns records committed
        on the way."""
        ids = _ids(ids)
        rows = _floats(vectors, 2, "vectors")
        meta = None if metadata is None else _json(list(metadata), "metadata")
        return self._h.add(ids, rows, meta)

    def flush(self) -> int:
        """Commits everything `add` buffered; returns how many records."""
        return self._h.flush()

    def delete(self, ids: Sequence[str]) -> int:
        """Deletes ids (an absent id is fine); returns once committed."""
        return self._h.delete(_ids(ids))

    # -- reads ----------------------------------------------------------

    def get(self, id: str, consistency: Optional[str] = None) -> Optional[Record]:
        """The newest live version of `id`, or None. `consistency`:
        "eventual", "bounded" (default) or "strong"."""
        raw = self._h.get(id, consistency)
        return None if raw is None else Record(raw[0], raw[1], json.loads(raw[2]))

    def get_many(
        self, ids: Sequence[str], consistency: Optional[str] = None
    ) -> List[Optional[Record]]:
        """`get` for each id, in order (None where there is none)."""
        return [
            None if r is None else Record(r[0], r[1], json.loads(r[2]))
            for r in self._h.get_many(_ids(ids), consistency)
        ]

    def search(
        self,
        vector: Optional[ArrayLike] = None,
        k: int = 10,
        *,
        text: Union[str, Mapping[str, str], None] = None,
        filter: Optional[Filter] = None,
        consistency: Optional[str] = None,
        exact: bool = False,
        nprobe: Optional[int] = None,
    ) -> Results:
        """The `k` records nearest to `vector`, nearest first; or, with
        `text`, the best by BM25 over the index's full-text searchable
        keys (`text_fields` at `open`): a string searches the index's one
        such key, a mapping `{key: text}` one key per entry. A vector and
        text together (or several texts) are fused by reciprocal rank
        (k = 60); `Results.bm25` and `Results.fused` carry the scores.

        `filter` is the JSON shape of `/v1/search`, e.g.
        `{"domain": "product", "price": {"$lt": 10}}` (`$eq $ne $lt $lte
        $gt $gte $in $nin $exists $and $or`). `consistency`: "eventual"
        (cached manifests), "bounded" (the default: revalidated when older
        than the reader's staleness bound) or "strong" (every manifest
        revalidated: sees every write committed before the call).
        `exact` skips the ANN indexes; `nprobe` overrides IVF probes."""
        if vector is None and text is None:
            raise InvalidInput("search needs a vector, text, or both")
        q = None if vector is None else _floats(vector, 1, "vector")
        f = None if filter is None else _json(filter, "filter")
        texts = _texts(text)
        return Results._from_native(
            self._h.search(q, k, f, consistency, exact, nprobe, texts=texts)
        )

    def search_many(
        self,
        queries: ArrayLike,
        k: int = 10,
        *,
        filter: Optional[Filter] = None,
        consistency: Optional[str] = None,
        exact: bool = False,
        nprobe: Optional[int] = None,
    ) -> List[Results]:
        """`search` for each row of the 2-D `queries`, several at a time
        (one call, the GIL released throughout)."""
        q = _floats(queries, 2, "queries")
        f = None if filter is None else _json(filter, "filter")
        raw = self._h.search_many(q, k, f, consistency, exact, nprobe)
        return [Results._from_native(r) for r in raw]

    # -- maintenance and introspection ------------------------------------

    def compact(self, force: bool = False) -> Dict[str, Any]:
        """Compacts partitions (by policy; every one with `force`) and runs
        the indexer, as `shoal compact` does. Returns its report."""
        return json.loads(self._h.compact(force))  # type: ignore[no-any-return]

    def warm(self, seconds: Optional[float] = None) -> Dict[str, Any]:
        """Fetches what queries plan with (manifests, shard heads, deletion
        vectors), then the codes of every list and then the metadata and
        rows, as far as the cache budget holds them, so the next query is
        warm; returns what it fetched (`live_records`, `shards`,
        `code_lists`, `row_chunks`, `cut_short`, `cache_bytes`,
        `requests`, `ms`). With `seconds`, it fetches no more codes or
        rows once that time has passed (`cut_short` says it stopped
        there): a Lambda's init phase is cut off after 10 seconds."""
        return json.loads(self._h.warm(seconds))  # type: ignore[no-any-return]

    def status(self, live: bool = False) -> Dict[str, Any]:
        """`shoal status --json` as a dict: config, instances, partitions,
        shards, request counters; with `live`, live and dead records
        (reads every segment)."""
        return json.loads(self._h.status(live))  # type: ignore[no-any-return]

    @property
    def config(self) -> Dict[str, Any]:
        """The bucket's config as this handle last read it."""
        return json.loads(self._h.config())  # type: ignore[no-any-return]

    @property
    def url(self) -> str:
        """Where the index lives, e.g. `s3://bucket/prefix`."""
        return self._h.describe()

    @property
    def closed(self) -> bool:
        return self._h.closed()

    def close(self) -> None:
        """Commits what `add` buffered, stops background work and removes
        this instance's record. Closing twice is fine."""
        self._h.close()

    def __enter__(self) -> "Db":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._h.closed() else "open"
        return f"<shoal.Db {state}>"


def open(
    url: Union[str, "os.PathLike[str]"],
    *,
    dimensions: Optional[int] = None,
    metric: Optional[str] = None,
    partitions: Optional[int] = None,
    model: Optional[str] = None,
    role: Optional[str] = None,
    create: bool = True,
    compact_every: Optional[float] = None,
    text_fields: Optional[Mapping[str, str]] = None,
) -> Db:
    """Opens the index at `url`, creating it if missing (with `create`;
    `dimensions` is then required).

    `url`: a local directory path or `file:///dir`, `s3://bucket/prefix`
    (credentials, region and endpoint from the standard AWS settings:
    `AWS_REGION`, `AWS_ENDPOINT_URL_S3`, profiles, ...), or
    `memory://name` (in this process only).

    `dimensions`, `metric` ("cosine" (default), "euclidean", "dot"),
    `partitions` (hash partitions, default 8) and `model` (the embedding
    model's name) create the index; given for an existing index they must
    match it (else Conflict). `role`: "both" (default: reads and writes),
    "writer" or "reader". `compact_every`: seconds between background
    compactions of the partitions this handle wrote (default: only on
    `compact()`). `text_fields` (at creation): the metadata keys searchable
    as full text, each with its analyzer ("standard", "en", "fr", "es",
    "pt", "it", "de", "nl", "zh", "ja", "ko"), e.g. `{"text": "en"}`."""
    handle = _shoal.open(
        os.fspath(url),
        dimensions=dimensions,
        metric=metric,
        partitions=partitions,
        model=model,
        role=role,
        create=create,
        compact_every=compact_every,
        text_fields=None if text_fields is None else list(dict(text_fields).items()),
    )
    return Db(handle)


@atexit.register
def _close_open_handles() -> None:
    # An unclosed handle's instance record would otherwise stay in the
    # bucket until it expires; only this process's handles are ours.
    for db in list(_open_handles):
        if db._pid == os.getpid():
            try:
                db.close()
            except Exception:
                pass
