"""1:1 verification with insightface's protocol (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW; SPEC §6).

The numbers equal those of insightface's ``eval/verification.py`` (``calculate_roc`` and
``calculate_val``) on the same embeddings:

- embeddings are L2-normalised and compared by squared Euclidean distance d in [0, 4]; a pair is
  predicted genuine when d < threshold;
- folds are contiguous and in order (sklearn's ``KFold(shuffle=False)``);
- accuracy: on each fold, the threshold of best accuracy on the other folds (the first best of
  ``np.arange(0, 4, 0.01)``, as ``np.argmax``) is applied to it;
- TAR at a target FAR: on each fold, the threshold at which the FAR of the other folds equals the
  target, interpolated linearly over ``np.arange(0, 4, 0.001)`` (0 when that FAR is never
  reached), is applied to it.

What insightface leaves unsaid, reported here: a FAR of f can be set only with at least 1/f
impostor pairs in the other folds (``tar_at_far_defined``; ``far`` is the FAR actually reached on
the test folds), and since the folds are contiguous the order of the pairs matters -- a list
with all genuine pairs first gives folds of one kind (``unbalanced_folds``). A set without
genuine or without impostor pairs has no verification accuracy and is an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from otface.errors import DataError

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FOLD_BALANCE_TOLERANCE = 0.2  # a fold whose genuine fraction is further than this from the set's is unbalanced


def kfold_indices(n: int, nfolds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous (train, test) index splits of range(n), in order.

    The first ``n % nfolds`` folds hold one extra item (as sklearn's KFold without shuffling).
    ``nfolds == 1`` trains and tests on everything (as insightface's ``LFold``).
    """
    if not 1 <= nfolds <= n:
        raise ValueError(f"nfolds must be in [1, {n}] for {n} pairs, got {nfolds}")
    idx = np.arange(n)
    if nfolds == 1:
        return [(idx, idx)]
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [(np.concatenate([idx[:a], idx[b:]]), idx[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def unbalanced_folds(issame: np.ndarray, nfolds: int = 10) -> list[int]:
    """The folds (0-based) whose fraction of genuine pairs differs from the whole set's by more
    than FOLD_BALANCE_TOLERANCE: the pair order, not chance, decides what they measure."""
    issame = np.asarray(issame, dtype=bool)
    overall = issame.mean()
    return [i for i, (_, test) in enumerate(kfold_indices(len(issame), nfolds))
            if abs(issame[test].mean() - overall) > FOLD_BALANCE_TOLERANCE]


def unbalanced_message(folds: list[int]) -> str:
    """What :func:`unbalanced_folds` found, in words (folds numbered from 1)."""
    return (f"verification folds {', '.join(str(i + 1) for i in folds)} hold far more or fewer genuine pairs than "
            "the set as a whole: the 10 folds are contiguous runs of the pair order, so mix genuine and impostor "
            "pairs through the list")


def rates(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tpr, fpr, accuracy), each (T,), of accepting the pairs with dist < threshold.

    Args:
        dist: (P,) pair distances.
        issame: (P,) bool ground truth.
        thresholds: (T,).
    A rate with an empty denominator is 0, as in insightface's ``calculate_accuracy``.
    """
    same, diff = np.sort(dist[issame]), np.sort(dist[~issame])
    tp = np.searchsorted(same, thresholds, side="left")  # number of d < t
    fp = np.searchsorted(diff, thresholds, side="left")
    tpr = tp / len(same) if len(same) else np.zeros(len(thresholds))
    fpr = fp / len(diff) if len(diff) else np.zeros(len(thresholds))
    return tpr, fpr, (tp + len(diff) - fp) / len(dist)


def roc_auc(dist: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC of the score -dist: P(d_genuine < d_impostor), ties counted half."""
    same, diff = dist[issame], np.sort(dist[~issame])
    if len(same) == 0 or len(diff) == 0:
        return float("nan")
    below = np.searchsorted(diff, same, side="left")
    above = len(diff) - np.searchsorted(diff, same, side="right")
    return float((above.sum() + 0.5 * (len(diff) - below - above).sum()) / (len(same) * len(diff)))


def far_threshold(dist: np.ndarray, issame: np.ndarray, far_target: float) -> float:
    """The threshold at which the FAR of these pairs equals ``far_target`` (insightface's rule).

    Linear interpolation of the thresholds against the non-decreasing FAR curve over
    VAL_THRESHOLDS. Where the target lies on a flat stretch of the curve, the largest threshold of
    that stretch is taken: this is what ``interp1d(kind='slinear')`` returned in the SciPy
    versions insightface was written for (recent SciPy refuses the repeated FAR values instead:
    insightface issue #2152), and what ``np.interp`` returns. 0 where the target is never reached.
    """
    _, far, _ = rates(dist, issame, VAL_THRESHOLDS)
    return float(np.interp(far_target, far, VAL_THRESHOLDS)) if far.max() >= far_target else 0.0


def verification(
    emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray, nfolds: int = 10, far_target: float = 1e-3
) -> dict[str, Any]:
    """Verification metrics of the pairs (emb1[i], emb2[i]) with ground truth issame[i].

    Args:
        emb1, emb2: (P, E) embeddings (L2-normalised here).
        issame: (P,) bool, True for genuine pairs.
        nfolds: number of contiguous folds.
        far_target: the FAR of ``tar_at_far``.
    Returns:
        accuracy, accuracy_std: mean and std over folds of the test-fold accuracy;
        threshold: mean best squared-L2 threshold over folds;
        tar_at_far, tar_at_far_std, far: mean and std of the test-fold TAR, and the mean test-fold
            FAR reached, at the thresholds chosen for ``far_target``;
        tar_at_far_defined: whether every fold's other folds hold >= 1 / far_target impostor
            pairs, so that the threshold can be set at the target FAR at all;
        min_impostors: the fewest impostor pairs of the other folds, over the folds;
        unbalanced_folds: :func:`unbalanced_folds`;
        far_target; auc: ROC AUC over all pairs;
        tpr, fpr: (400,) test-fold ROC over ACC_THRESHOLDS, averaged over folds.

    Raises :class:`DataError` when the pairs are all genuine or all impostors.
    """
    emb1, emb2 = np.asarray(emb1, dtype=np.float64), np.asarray(emb2, dtype=np.float64)
    issame = np.asarray(issame)
    if emb1.ndim != 2 or emb1.shape != emb2.shape or issame.shape != emb1.shape[:1]:
        raise ValueError(f"need emb1, emb2 of one shape (P, E) and issame (P,); got shapes "
                         f"{emb1.shape}, {emb2.shape}, {issame.shape}")
    if issame.dtype != bool:
        raise ValueError(f"issame must be boolean, got {issame.dtype}")
    if not (np.isfinite(emb1).all() and np.isfinite(emb2).all()):
        raise ValueError("embeddings contain NaN or inf")
    if not 0.0 < far_target <= 1.0:
        raise ValueError(f"far_target must be in (0, 1], got {far_target}")
    genuine = int(issame.sum())
    if genuine in (0, len(issame)):
        kind = "genuine" if genuine else "impostor"
        raise DataError(f"all {len(issame)} pairs are {kind} pairs: verification needs both kinds")
    e1 = emb1 / np.maximum(np.linalg.norm(emb1, axis=1, keepdims=True), 1e-12)
    e2 = emb2 / np.maximum(np.linalg.norm(emb2, axis=1, keepdims=True), 1e-12)
    dist = ((e1 - e2) ** 2).sum(1)

    acc, best_thr, tprs, fprs, tar, far, impostors = [], [], [], [], [], [], []
    for train, test in kfold_indices(len(dist), nfolds):
        impostors.append(int((~issame[train]).sum()))
        best = ACC_THRESHOLDS[np.argmax(rates(dist[train], issame[train], ACC_THRESHOLDS)[2])]
        tpr, fpr, _ = rates(dist[test], issame[test], ACC_THRESHOLDS)
        tprs.append(tpr)
        fprs.append(fpr)
        acc.append(rates(dist[test], issame[test], np.array([best]))[2][0])
        best_thr.append(best)

        t, f, _ = rates(dist[test], issame[test], np.array([far_threshold(dist[train], issame[train], far_target)]))
        tar.append(t[0])
        far.append(f[0])
    return {
        "accuracy": float(np.mean(acc)),
        "accuracy_std": float(np.std(acc)),
        "threshold": float(np.mean(best_thr)),
        "tar_at_far": float(np.mean(tar)),
        "tar_at_far_std": float(np.std(tar)),
        "far": float(np.mean(far)),
        "tar_at_far_defined": min(impostors) * far_target >= 1.0 - 1e-9,
        "min_impostors": min(impostors),
        "unbalanced_folds": unbalanced_folds(issame, nfolds),
        "far_target": float(far_target),
        "auc": roc_auc(dist, issame),
        "tpr": np.mean(tprs, 0),
        "fpr": np.mean(fprs, 0),
    }


def curve_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under a ROC curve given as points, closed by (0, 0) and (1, 1)."""
    order = np.argsort(fpr, kind="stable")
    x = np.concatenate([[0.0], np.asarray(fpr, dtype=float)[order], [1.0]])
    y = np.concatenate([[0.0], np.asarray(tpr, dtype=float)[order], [1.0]])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))
