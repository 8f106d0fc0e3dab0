"""1:1 verification with insightface's protocol (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW; SPEC §6).

Embeddings are L2-normalised and compared by squared Euclidean distance d in [0, 4]; a pair is
predicted genuine when d < threshold. Ten contiguous folds in order (no shuffling): on each fold,
the threshold of best accuracy on the other nine (first best of np.arange(0, 4, 0.01)) is applied
to it. TAR at a target FAR follows insightface's ``calculate_val``: per fold, the threshold whose
training-fold FAR equals the target (linear interpolation over np.arange(0, 4, 0.001)) is
applied to the test fold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)


def kfold_indices(n: int, nfolds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous (train, test) index splits; the first ``n % nfolds`` folds hold one extra item
    (as sklearn's KFold without shuffling)."""
    if not 2 <= nfolds <= n:
        raise ValueError(f"nfolds must be in [2, {n}], got {nfolds}")
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.arange(n)
    return [(np.concatenate([idx[:a], idx[b:]]), idx[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _rates(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tpr, fpr, accuracy) per threshold, each (T,); a rate with an empty denominator is 0."""
    accept = dist[None, :] < thresholds[:, None]
    tp = (accept & issame).sum(1)
    fp = (accept & ~issame).sum(1)
    n_same, n_diff = issame.sum(), (~issame).sum()
    tn = n_diff - fp
    tpr = tp / n_same if n_same else np.zeros(len(thresholds))
    fpr = fp / n_diff if n_diff else np.zeros(len(thresholds))
    return tpr, fpr, (tp + tn) / len(dist)


def _auc(dist: np.ndarray, issame: np.ndarray) -> float:
    """ROC AUC of the score -dist over all pairs (Mann-Whitney, ties counted half)."""
    pos, neg = -dist[issame], -dist[~issame]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def verification(
    emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray, nfolds: int = 10, far_target: float = 1e-3
) -> dict[str, Any]:
    """Verification metrics of pairs (emb1[i], emb2[i]) with ground truth issame[i].

    Args:
        emb1, emb2: (P, E) embeddings (normalised here).
        issame: (P,) bool, True for genuine pairs.
    Returns:
        accuracy, accuracy_std (over folds), threshold (mean best squared-L2 threshold),
        tar_at_far, tar_at_far_std, far (achieved, mean over folds), far_target, auc, and the ROC
        arrays tpr, fpr (mean over folds on the ACC_THRESHOLDS grid).
    """
    emb1, emb2 = np.asarray(emb1, dtype=np.float64), np.asarray(emb2, dtype=np.float64)
    issame = np.asarray(issame)
    if emb1.ndim != 2 or emb1.shape != emb2.shape or issame.shape != emb1.shape[:1]:
        raise ValueError(f"need emb1, emb2 of one shape (P, E) and issame (P,); got "
                         f"{emb1.shape}, {emb2.shape}, {issame.shape}")
    if issame.dtype != bool:
        raise ValueError(f"issame must be boolean, got {issame.dtype}")
    if not np.isfinite(emb1).all() or not np.isfinite(emb2).all():
        raise ValueError("embeddings contain NaN or inf")
    e1 = emb1 / np.maximum(np.linalg.norm(emb1, axis=1, keepdims=True), 1e-12)
    e2 = emb2 / np.maximum(np.linalg.norm(emb2, axis=1, keepdims=True), 1e-12)
    dist = ((e1 - e2) ** 2).sum(1)

    folds = kfold_indices(len(dist), nfolds)
    acc, best_thr, tprs, fprs, tar, far = [], [], [], [], [], []
    for train, test in folds:
        _, _, acc_train = _rates(dist[train], issame[train], ACC_THRESHOLDS)
        best = ACC_THRESHOLDS[np.argmax(acc_train)]
        tpr, fpr, _ = _rates(dist[test], issame[test], ACC_THRESHOLDS)
        tprs.append(tpr)
        fprs.append(fpr)
        acc.append(_rates(dist[test], issame[test], np.array([best]))[2][0])
        best_thr.append(best)

        _, far_train, _ = _rates(dist[train], issame[train], VAL_THRESHOLDS)
        thr = np.interp(far_target, far_train, VAL_THRESHOLDS) if far_train.max() >= far_target else 0.0
        t, f, _ = _rates(dist[test], issame[test], np.array([thr]))
        tar.append(t[0])
        far.append(f[0])
    return {
        "accuracy": float(np.mean(acc)),
        "accuracy_std": float(np.std(acc)),
        "threshold": float(np.mean(best_thr)),
        "tar_at_far": float(np.mean(tar)),
        "tar_at_far_std": float(np.std(tar)),
        "far": float(np.mean(far)),
        "far_target": float(far_target),
        "auc": _auc(dist, issame),
        "tpr": np.mean(tprs, 0),
        "fpr": np.mean(fprs, 0),
    }
