"""MegaFace challenge 1 on features: rank-1 identification with distractors and TAR at FAR = 1e-6.

The protocol of the MegaFace devkit (Kemelmacher-Shlizerman et al., "The MegaFace Benchmark",
CVPR 2016) as insightface evaluates it: FaceScrub probe images, MegaFace distractors (up to 1M).
Features are L2-normalised here and compared by cosine similarity s (larger = more alike).

Identification. For every probe identity and every ordered pair (i, j), i != j, of its images,
image j is put in a gallery with all D distractors and image i is the query. The rank of the
trial is 1 + #{d : s(i, d) >= s(i, j)}: a distractor scoring exactly s(i, j) is counted ahead
of the mate (ties count against the method). The CMC at rank r is the fraction of trials of rank
<= r, i.e. with fewer than r distractors scoring >= s(i, j); rank-1 is its first value (success
iff s(i, j) > max_d s(i, d)). An identity with one image gives no trial. Only the top-R
distractor scores of each probe are needed (R = ``max_rank``): rank <= r <= R is decided by the
r-th largest one; they come from :mod:`otface.eval.search`, never from a P x D matrix.

Verification. Genuine scores: every unordered pair of images of one probe identity. Impostor
scores: all P x D probe x distractor scores (M = P D). A pair is accepted iff its score is > t.
The threshold at FAR f is t_f = u_(n+1), the (n+1)-th largest impostor score with
n = floor(f M) (f taken as the decimal it is written as): at most n impostors exceed it, so the
FAR reached is <= f, and every lower threshold accepts more than f M impostors; TAR at FAR f is
therefore the best TAR among thresholds of FAR <= f. When f M < 1, n = 0 and t_f is the largest
impostor score (no impostor accepted); when n >= M, t_f = -inf. The n + 1 largest impostor
scores are found exactly from each probe's top n + 1: a score among the n + 1 largest overall has
fewer than n + 1 larger scores overall, hence in its own row, so it is in its row's top n + 1; the
union of the per-row tops therefore holds the global top n + 1. Probes are searched in chunks
and the global top is merged as they come, so memory is about ``probe_chunk`` (n + 1) scores.

Exactness needs an exact search engine (the default). An approximate (IVF) index can miss
high-scoring distractors: the CMC can then only be overestimated, and a threshold can only come
out lower (its true FAR above f).
Differences from insightface's pipeline: its ``remove_noises.py`` replaces a mislabelled probe's
feature by its identity's mean feature instead of dropping the image (``otface.data.testpacks.megaface``
drops it), and the devkit can draw fixed random distractor subsets for galleries below 1M (here
every given distractor is used).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np

from otface.errors import ConfigError
from otface.eval.search import build_search


def _normalised(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (rows, E) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point features, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def impostors_above(far: float, num_impostors: int) -> int:
    """n = floor(far * num_impostors), the most impostors a threshold at FAR ``far`` may accept.

    ``far`` is taken as the decimal it prints as (0.29 is 29/100, not its binary approximation),
    so that f M is exact: in floating point 0.29 * 100 is 28.999999999999996.
    """
    if not 0.0 < far <= 1.0:
        raise ConfigError(f"FAR must be in (0, 1], got {far}")
    return math.floor(Fraction(repr(float(far))) * num_impostors)


def far_thresholds(
    top_impostors: np.ndarray, num_impostors: int, fars: Sequence[float]
) -> tuple[dict[float, float], dict[float, float]]:
    """Thresholds t_f = u_(n+1) (n = :func:`impostors_above`) and the FAR each reaches.

    Args:
        top_impostors: the K largest impostor scores, in any order, with K >= n + 1 for every
            f with n < num_impostors (all scores when K = num_impostors).
        num_impostors: M, the number of impostor scores.
        fars: the target FARs f, each in (0, 1].
    Returns:
        ({f: t_f}, {f: #{impostors > t_f} / M}); t_f = -inf (FAR 1) when n >= M.
    """
    u = np.sort(np.asarray(top_impostors))[::-1]
    thresholds, reached = {}, {}
    for f in fars:
        n = impostors_above(f, num_impostors)
        if n >= num_impostors:
            t = -np.inf
        elif n < len(u):
            t = float(u[n])
        else:
            raise ValueError(f"FAR {f} needs the {n + 1} largest impostor scores, got {len(u)}")
        thresholds[f] = t
        reached[f] = 1.0 if t == -np.inf else float(np.count_nonzero(u > t) / num_impostors)
    return thresholds, reached


def megaface_identification(
    probe_features: Any,
    probe_labels: Any,
    distractor_features: Any,
    max_rank: int = 10,
    fars: Sequence[float] = (1e-6,),
    probe_chunk: int = 512,
    search_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """MegaFace challenge 1 identification (CMC, rank-1) and verification (TAR at FAR).

    Args:
        probe_features: (P, E) float features of the probe images (FaceScrub).
        probe_labels: (P,) identity labels (any values comparable for equality).
        distractor_features: (D, E) float features of the distractors (MegaFace), D >= 1.
        max_rank: R, the last rank of the CMC.
        fars: target FARs, each in (0, 1].
        probe_chunk: probes searched at a time.
        search_options: keyword arguments of :func:`otface.eval.search.build_search` (engine,
            index, nlist, nprobe, ...), built once over the distractors.
    Returns:
        rank1: CMC at rank 1 (NaN when there is no trial);
        cmc: (R,) success rate at ranks 1..R;
        tar_at_far: {f: fraction of genuine scores > t_f} (NaN without genuine pairs);
        thresholds: {f: t_f}; far_reached: {f: fraction of impostor scores > t_f};
        counts: probes, identities, identities_with_trials, distractors, trials (ordered
            pairs), genuine (unordered pairs), impostors (P D).
    """
    x = _normalised(probe_features, "probe_features")
    y = _normalised(distractor_features, "distractor_features")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"probe features have {x.shape[1]} dimensions, distractor features {y.shape[1]}")
    labels = np.asarray(probe_labels)
    if labels.shape != x.shape[:1]:
        raise ValueError(f"probe_labels must have shape ({len(x)},), got {labels.shape}")
    if max_rank < 1:
        raise ConfigError(f"max_rank must be >= 1, got {max_rank}")
    if probe_chunk < 1:
        raise ConfigError(f"probe_chunk must be >= 1, got {probe_chunk}")
    fars = [float(f) for f in fars]
    p, d = len(x), len(y)
    m = p * d
    top_count = min(max((impostors_above(f, m) + 1 for f in fars), default=1), m)
    rank_k = min(max_rank, d)
    k = min(max(rank_k, top_count), d)

    search = build_search(y, **dict(search_options or {}))
    top_rank = np.empty((p, rank_k), dtype=np.float32)
    pool = np.empty(0, dtype=np.float32)  # running global top `top_count` impostor scores
    for start in range(0, p, probe_chunk):
        scores, _ = search(x[start : start + probe_chunk], k)
        top_rank[start : start + len(scores)] = scores[:, :rank_k]
        pool = np.concatenate([pool, scores[:, :top_count].ravel()])
        if len(pool) > top_count:
            pool = np.partition(pool, len(pool) - top_count)[len(pool) - top_count :]

    # rank_count[c] = trials with c distractors >= s(i, j), c capped at rank_k
    rank_count = np.zeros(rank_k + 1, dtype=np.int64)
    genuine = []
    identities, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    for c in np.flatnonzero(sizes >= 2):
        members = np.flatnonzero(inverse == c)
        g = x[members] @ x[members].T
        for a, i in enumerate(members):
            mates = np.delete(g[a], a)
            # -top_rank[i] ascends: count of t >= s is searchsorted(-t, -s, side="right")
            rank_count += np.bincount(np.searchsorted(-top_rank[i], -mates, side="right"),
                                      minlength=rank_k + 1)
        genuine.append(g[np.triu_indices(len(members), 1)])
    genuine = np.concatenate(genuine) if genuine else np.empty(0, dtype=np.float32)
    trials = int(rank_count.sum())
    # success at rank r iff count < r; a count capped at rank_k = D is exact, so r > D always succeeds
    cumulative = np.cumsum(rank_count)[np.minimum(np.arange(max_rank), rank_k)]
    cmc = cumulative / trials if trials else np.full(max_rank, np.nan)

    thresholds, far_reached = far_thresholds(pool, m, fars)
    tar = {f: float(np.mean(genuine > t)) if len(genuine) else float("nan") for f, t in thresholds.items()}
    return {
        "rank1": float(cmc[0]),
        "cmc": cmc,
        "tar_at_far": tar,
        "thresholds": thresholds,
        "far_reached": far_reached,
        "counts": {
            "probes": p,
            "identities": len(identities),
            "identities_with_trials": int(np.count_nonzero(sizes >= 2)),
            "distractors": d,
            "trials": trials,
            "genuine": len(genuine),
            "impostors": m,
        },
    }
