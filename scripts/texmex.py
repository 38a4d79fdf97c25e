"""TEXMEX .fvecs/.ivecs reading and writing, and exact top-k by brute
force, shared by the dataset scripts (imported from the scripts folder:
`python scripts/make-....py` puts it on the path)."""
import numpy as np


def read_fvecs(path):
    a = np.fromfile(path, dtype=np.int32)
    d = a[0]
    return a.reshape(-1, d + 1)[:, 1:].view(np.float32)


def read_ivecs(path):
    a = np.fromfile(path, dtype=np.int32)
    d = a[0]
    return a.reshape(-1, d + 1)[:, 1:]


def write_fvecs(path, a):
    n, d = a.shape
    out = np.empty((n, d + 1), dtype=np.float32)
    out[:, 0] = np.array([d], dtype=np.int32).view(np.float32)[0]
    out[:, 1:] = a
    out.tofile(path)


def write_ivecs(path, a):
    n, d = a.shape
    out = np.empty((n, d + 1), dtype=np.int32)
    out[:, 0] = d
    out[:, 1:] = a
    out.tofile(path)


def exact_top(queries, base, k=100, batch=50):
    """The ids of each query's k most similar base rows by inner product
    (cosine for unit vectors), best first."""
    best = np.empty((len(queries), k), dtype=np.int32)
    for i in range(0, len(queries), batch):
        sims = queries[i : i + batch] @ base.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        best[i : i + batch] = np.take_along_axis(top, order, axis=1)
    return best
