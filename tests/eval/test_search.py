import numpy as np
import pytest
import torch

from otface.errors import ConfigError
from otface.eval import search
from otface.eval.search import build_search, default_nlist, knn

needs_faiss = pytest.mark.skipif(search._import_faiss() is None, reason="faiss is not installed")


def brute_force(queries, database, k):
    """Full float64 score matrix, every row sorted by descending score."""
    scores = np.asarray(queries, np.float64) @ np.asarray(database, np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def separated_data(seed, q, n, dim, k):
    """Gaussian features whose top k + 1 scores per query are at least 1e-4 apart (no near-ties
    for float32 rounding to reorder)."""
    rng = np.random.default_rng(seed)
    queries, database = rng.normal(size=(q, dim)), rng.normal(size=(n, dim))
    top, _ = brute_force(queries, database, min(k + 1, n))
    assert np.diff(top, axis=1).max() < -1e-4
    return queries, database


@pytest.mark.parametrize("engine, options", [
    pytest.param("faiss", {}, marks=needs_faiss),
    ("auto", {}),
    ("torch", {}),
    ("torch", {"query_chunk": 7, "database_chunk": 64}),  # many blocks merged into the top-k
    pytest.param("faiss", {"index": "ivf", "nlist": 8, "nprobe": 8}, marks=needs_faiss),  # all cells: exact
])
def test_exact_search_equals_full_sort(engine, options):
    queries, database = separated_data(0, 40, 700, 16, 10)
    scores, indices = knn(queries.astype(np.float32), database.astype(np.float32), 10, engine=engine, **options)
    want_scores, want_indices = brute_force(queries, database, 10)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    assert scores.shape == indices.shape == (40, 10)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("engine", [pytest.param("faiss", marks=needs_faiss), "torch"])
def test_k_equal_to_n_sorts_the_whole_database_and_accepts_float64_and_tensors(engine):
    queries, database = separated_data(1, 5, 50, 8, 50)
    scores, indices = knn(torch.from_numpy(queries), database, 50, engine=engine, database_chunk=16)
    want_scores, want_indices = brute_force(queries, database, 50)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-4)
    empty_scores, empty_indices = knn(np.zeros((0, 8)), database, 3, engine=engine)
    assert empty_scores.shape == empty_indices.shape == (0, 3)


def clustered(rng, clusters=32, per_cluster=200, dim=32, spread=0.15):
    centres = rng.normal(size=(clusters, dim))
    x = np.repeat(centres, per_cluster, axis=0) + spread * rng.normal(size=(clusters * per_cluster, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@needs_faiss
def test_ivf_recall_on_clustered_data():
    rng = np.random.default_rng(2)
    database = clustered(rng)
    queries = database[rng.choice(len(database), 100, replace=False)] + 0.05 * rng.normal(size=(100, 32))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    _, exact = brute_force(queries, database, 10)
    recall = {}
    for nprobe in (1, 4):  # 128 cells of 50 rows: a cluster spans several cells
        scores, approx = knn(queries, database, 10, engine="faiss", index="ivf", nlist=128, nprobe=nprobe)
        recall[nprobe] = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall[1] < 0.9 and recall[4] >= 0.95  # approximate, and good enough at 1/32 of the cells
    # whatever it finds is scored exactly and sorted
    np.testing.assert_allclose(scores, np.einsum("qe,qke->qk", queries, database[approx]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    # about 4 sqrt(n) cells, but at least 39 rows per cell
    assert [default_nlist(n) for n in (10**6, len(database), 100, 10)] == [4000, 164, 2, 1]


@needs_faiss
def test_ivf_pads_missing_neighbours_with_minus_one_and_minus_inf():
    database = clustered(np.random.default_rng(3), clusters=10, per_cluster=40, dim=8)
    scores, indices = knn(database[:5], database, 200, engine="faiss", index="ivf", nlist=10, nprobe=1)
    missing = indices == -1
    assert missing.any() and (~missing).sum(1).min() > 0
    np.testing.assert_array_equal(np.isneginf(scores), missing)
    assert (np.diff(missing.astype(int), axis=1) >= 0).all()  # padding only at the end of a row
    found = indices[~missing]
    assert found.min() >= 0 and found.max() < len(database)


@pytest.mark.parametrize("engine", [pytest.param("faiss", marks=needs_faiss), "torch"])
def test_build_search_reuses_one_index_for_many_query_batches(engine):
    queries, database = separated_data(4, 30, 300, 8, 5)
    run = build_search(database, engine=engine)
    parts = [run(queries[a:b], 5) for a, b in ((0, 11), (11, 30))]
    want_scores, want_indices = brute_force(queries, database, 5)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), want_indices)
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), want_scores, atol=1e-4)


def test_without_faiss_auto_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(search, "_import_faiss", lambda: None)
    queries, database = separated_data(5, 6, 80, 8, 4)
    _, indices = knn(queries, database, 4)
    np.testing.assert_array_equal(indices, brute_force(queries, database, 4)[1])
    with pytest.raises(ConfigError, match="needs the faiss package.*faiss-cpu"):
        knn(queries, database, 4, engine="faiss")
    with pytest.raises(ConfigError, match="index='ivf'.*needs engine='faiss'"):
        knn(queries, database, 4, index="ivf")


@pytest.mark.parametrize("queries, database, k, options, kind, message", [
    (np.ones((2, 4)), np.ones((5, 4)), 0, {}, ConfigError, r"k must be in \[1, N=5\]"),
    (np.ones((2, 4)), np.ones((5, 4)), 6, {}, ConfigError, r"k must be in \[1, N=5\]"),
    (np.ones((2, 3)), np.ones((5, 4)), 1, {}, ValueError, "queries have 3 features, the database 4"),
    (np.ones(4), np.ones((5, 4)), 1, {}, ValueError, r"queries must be a 2-d"),
    (np.ones((2, 4)), np.ones((0, 4)), 1, {}, ValueError, "database is empty"),
    (np.ones((2, 4), int), np.ones((5, 4)), 1, {}, ValueError,
     "queries must hold floating-point features, got dtype int"),
    (np.full((2, 4), np.nan), np.ones((5, 4)), 1, {}, ValueError, "queries contains NaN or inf"),
    (np.ones((2, 4)), np.full((5, 4), 1e39), 1, {}, ValueError, "database contains NaN or inf"),  # overflows float32
    (np.ones((2, 4)), np.ones((5, 4)), 1, {"engine": "annoy"}, ConfigError, "engine must be one of"),
    (np.ones((2, 4)), np.ones((5, 4)), 1, {"index": "hnsw"}, ConfigError, "index must be one of"),
    (np.ones((2, 4)), np.ones((5, 4)), 1, {"nprobe": 2}, ConfigError, "apply to index='ivf' only"),
    pytest.param(np.ones((2, 4)), np.ones((5, 4)), 1, {"index": "ivf", "nlist": 6}, ConfigError,
                 r"nlist must be in \[1, N=5\]", marks=needs_faiss),
    pytest.param(np.ones((2, 4)), np.ones((5, 4)), 1, {"index": "ivf", "nlist": 2, "nprobe": 3}, ConfigError,
                 r"nprobe must be in \[1, nlist=2\]", marks=needs_faiss),
    (np.ones((2, 4)), np.ones((5, 4)), 1, {"engine": "torch", "query_chunk": 0}, ConfigError, "must be >= 1"),
])
def test_invalid_input_is_a_clear_error(queries, database, k, options, kind, message):
    """A bad setting is a ConfigError; arrays our code passes wrongly stay plain ValueErrors."""
    with pytest.raises(kind, match=message) as caught:
        knn(queries, database, k, **options)
    assert type(caught.value) is kind
