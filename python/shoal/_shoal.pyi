# The native module (python/src/*.rs). Use the `shoal` package instead:
# these calls take prepared arguments (C-ordered float32 arrays, JSON text).
from typing import List, Optional, Tuple

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]
_RecordTuple = Tuple[str, _F32, str]
_HitsTuple = Tuple[List[str], _F32, _F32, str, str]

def open(
    url: str,
    *,
    dimensions: Optional[int] = ...,
    metric: Optional[str] = ...,
    partitions: Optional[int] = ...,
    model: Optional[str] = ...,
    role: Optional[str] = ...,
    create: bool = ...,
    compact_every: Optional[float] = ...,
    text_fields: Optional[List[Tuple[str, str]]] = ...,
) -> Handle: ...

class Handle:
    def upsert(self, ids: List[str], vectors: _F32, metadata: Optional[str] = ...) -> int: ...
    def add(self, ids: List[str], vectors: _F32, metadata: Optional[str] = ...) -> int: ...
    def flush(self) -> int: ...
    def delete(self, ids: List[str]) -> int: ...
    def get(self, id: str, consistency: Optional[str] = ...) -> Optional[_RecordTuple]: ...
    def get_many(
        self, ids: List[str], consistency: Optional[str] = ...
    ) -> List[Optional[_RecordTuple]]: ...
    def search(
        self,
        vector: Optional[_F32],
        k: int,
        filter: Optional[str] = ...,
        consistency: Optional[str] = ...,
        exact: bool = ...,
        nprobe: Optional[int] = ...,
        texts: Optional[List[Tuple[Optional[str], str]]] = ...,
    ) -> _HitsTuple: ...
    def search_many(
        self,
        queries: _F32,
        k: int,
        filter: Optional[str] = ...,
        consistency: Optional[str] = ...,
        exact: bool = ...,
        nprobe: Optional[int] = ...,
    ) -> List[_HitsTuple]: ...
    def compact(self, force: bool = ...) -> str: ...
    def status(self, live: bool = ...) -> str: ...
    def warm(self, seconds: Optional[float] = None) -> str: ...
    def config(self) -> str: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...
    def closed(self) -> bool: ...
