"""k-nearest-neighbour search by inner product, for galleries of up to millions of faces.

Scores are inner products of float32 features: cosine similarities when the features are
L2-normalised (the caller normalises). Two engines:

- ``"faiss"`` (`FAISS <https://github.com/facebookresearch/faiss>`_, an optional dependency:
  ``pip install faiss-cpu``): ``index="flat"`` is the exact ``IndexFlatIP``; ``index="ivf"`` is the
  approximate ``IndexIVFFlat`` (the database is split into ``nlist`` k-means cells and a query
  visits the ``nprobe`` cells of nearest centroid), for when exact search is too slow; its k-means
  training takes minutes for 1M rows on a few cores, so it pays only for many queries;
- ``"torch"``: exact, a matmul and ``topk`` over blocks of ``query_chunk`` queries by
  ``database_chunk`` database rows, merged into a running top-k, so memory is bounded by the block
  size (a 1M x 512 database needs no 1M-wide score row). ``device`` runs it on a GPU.

``"auto"`` takes faiss when it can be imported, torch otherwise. Both exact searches return the
same neighbours up to float32 rounding; the order among equal scores is unspecified.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from otface.errors import ConfigError

ENGINES = ("auto", "faiss", "torch")
INDEXES = ("flat", "ivf")

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _import_faiss() -> Any:
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _features(x: Any, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 (rows, E) array, after checking shape, dtype and values."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (rows, E) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point features, got dtype {x.dtype}")
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf (after conversion to float32)")
    return x


def default_nlist(n: int) -> int:
    """IVF cell count for n database rows: about 4 sqrt(n), with at least 39 rows per cell (faiss's
    k-means asks for 39 training points per centroid), at least 1."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_search(
    database: Any,
    engine: str = "auto",
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    query_chunk: int = 256,
    database_chunk: int = 65536,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Search:
    """Index ``database`` once; return ``search(queries, k) -> (scores, indices)`` (see :func:`knn`).

    Args:
        database: (N, E) float features, N >= 1.
        engine: "auto", "faiss" or "torch".
        index: "flat" (exact) or "ivf" (approximate; faiss only).
        nlist: IVF cells, in [1, N] (default :func:`default_nlist`).
        nprobe: IVF cells visited per query, in [1, nlist] (default max(1, nlist // 16)).
        query_chunk, database_chunk: torch engine block size (queries x database rows).
        device: torch engine device.
        seed: IVF k-means seed.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    if index not in INDEXES:
        raise ConfigError(f"index must be one of {INDEXES}, got {index!r}")
    db = _features(database, "database")
    n, dim = db.shape
    if n == 0:
        raise ValueError("database is empty")
    faiss = _import_faiss() if engine in ("auto", "faiss") else None
    if engine == "faiss" and faiss is None:
        raise ConfigError("engine='faiss' needs the faiss package (pip install faiss-cpu); "
                          "engine='torch' searches exactly without it")
    if engine == "auto":
        engine = "faiss" if faiss is not None else "torch"
    if index == "ivf" and engine != "faiss":
        raise ConfigError("index='ivf' (approximate search) needs engine='faiss'; "
                          "the torch engine is exact only")
    if (nlist is not None or nprobe is not None) and index != "ivf":
        raise ConfigError("nlist and nprobe apply to index='ivf' only")

    def check(queries: Any, k: int) -> np.ndarray:
        q = _features(queries, "queries")
        if q.shape[1] != dim:
            raise ValueError(f"queries have {q.shape[1]} features, the database {dim}")
        if not 1 <= k <= n:
            raise ConfigError(f"k must be in [1, N={n}] (the database size), got {k}")
        return q

    if engine == "torch":
        if query_chunk < 1 or database_chunk < 1:
            raise ConfigError(f"query_chunk and database_chunk must be >= 1, got {query_chunk}, {database_chunk}")
        db_t = torch.from_numpy(db).to(device)  # moved once, searched block by block

        def torch_search(queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
            q = check(queries, k)
            scores = np.empty((len(q), k), dtype=np.float32)
            indices = np.empty((len(q), k), dtype=np.int64)
            with torch.inference_mode():
                for q0 in range(0, len(q), query_chunk):
                    qb = torch.from_numpy(q[q0 : q0 + query_chunk]).to(device)
                    best_s = torch.empty((len(qb), 0), dtype=torch.float32, device=device)
                    best_i = torch.empty((len(qb), 0), dtype=torch.int64, device=device)
                    for d0 in range(0, n, database_chunk):
                        block = qb @ db_t[d0 : d0 + database_chunk].T
                        top = block.topk(min(k, block.shape[1]), dim=1)
                        cand_s = torch.cat([best_s, top.values], 1)
                        cand_i = torch.cat([best_i, top.indices + d0], 1)
                        keep = cand_s.topk(min(k, cand_s.shape[1]), dim=1)  # sorted descending
                        best_s, best_i = keep.values, cand_i.gather(1, keep.indices)
                    scores[q0 : q0 + len(qb)] = best_s.cpu().numpy()
                    indices[q0 : q0 + len(qb)] = best_i.cpu().numpy()
            return scores, indices

        return torch_search

    if index == "flat":
        fx = faiss.IndexFlatIP(dim)
    else:
        nlist = default_nlist(n) if nlist is None else nlist
        if not 1 <= nlist <= n:
            raise ConfigError(f"nlist must be in [1, N={n}], got {nlist}")
        nprobe = max(1, nlist // 16) if nprobe is None else nprobe
        if not 1 <= nprobe <= nlist:
            raise ConfigError(f"nprobe must be in [1, nlist={nlist}], got {nprobe}")
        fx = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        fx.cp.seed = seed
        fx.train(db)
        fx.nprobe = nprobe
    fx.add(db)

    def faiss_search(queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = check(queries, k)
        scores, indices = fx.search(q, k)
        # IVF: fewer than k rows in the visited cells -> index -1 (faiss scores it -FLT_MAX)
        scores[indices < 0] = -np.inf
        return scores, indices.astype(np.int64, copy=False)

    return faiss_search


def knn(queries: Any, database: Any, k: int, engine: str = "auto", **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """The k database rows of largest inner product with each query.

    Args:
        queries: (Q, E) float features.
        database: (N, E) float features, N >= 1.
        k: neighbours per query, in [1, N] (a larger k is an error, not clamped).
        engine: "auto", "faiss" or "torch"; ``options`` as :func:`build_search`.
    Returns:
        scores: (Q, k) float32 inner products, descending along each row;
        indices: (Q, k) int64 database rows. An approximate (IVF) search that finds fewer than k
        rows pads with index -1 and score -inf.
    """
    return build_search(database, engine=engine, **options)(queries, k)
