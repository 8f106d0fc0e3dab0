"""IJB-B / IJB-C 1:1 template verification with insightface's protocol.

The numbers equal those of insightface's ``recognition/_evaluation_/ijb/ijb_11.py`` (and
``arcface_torch/eval_ijbc.py``) on the same network outputs, up to float rounding:

1. image features: each aligned face (see :mod:`otface.data.testpacks.ijb`) and its left-right flip are
   embedded; with ``flip_test`` the image feature is their sum, otherwise the unflipped feature;
   without ``norm_score`` it is L2-normalised (with it, its norm is kept as a quality weight);
   with ``detector_score`` it is multiplied by the image's faceness (detector) score.
   insightface's defaults, and ours, turn all three on;
2. media pooling: inside a template, the images of one media (one photo, or the frames of one
   video) are averaged; the template feature is the sum of its media features, L2-normalised
   (a zero feature stays zero, as with sklearn's ``normalize``);
3. a pair's score is the dot product of its two template features;
4. the ROC is sklearn's ``roc_curve(labels, scores)`` with its default ``drop_intermediate``
   (points collinear with their neighbours dropped), re-implemented in numpy in
   :func:`roc_curve`; the AUC is the trapezoidal area under it (sklearn's ``auc``);
5. TAR at a target FAR is the TPR of the ROC point whose FPR is nearest the target; of equally
   near points, the last one (highest TPR): insightface searches the reversed curve for the
   first minimum of ``(|fpr - target|, index)``. No interpolation: with few impostor pairs a
   small target reads a point of a larger FPR (IJB-C's FAR 1e-6 is 16 of 15.6M impostor pairs).

Where insightface's steps are ill-defined we raise instead: a pair naming a template without
features (insightface scores it against template row 0) is an error, or with
``skip_missing`` left out and counted; a zero image feature without ``norm_score`` (insightface
divides by 0) is an error.

Step 1 runs in float32 as insightface's; features are pooled in float64 (insightface: float32
means), so template features agree with insightface's to about 1e-7 relative.

Memory (IJB-C): the raw features of its 469,375 images take 0.96 GB (float32, 512-d), as many
again for the flips and for step 1's copy; pooling goes one feature dimension at a time and
scoring 100,000 pairs at a time, so no (pairs, E) array is formed. :func:`embed_ijb` streams the
images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from otface.data.testpacks.ijb import IJBMeta, iter_ijb_chunks, load_ijb_meta
from otface.data.transforms import network_input
from otface.errors import ConfigError, RunError
from otface.eval.embed import extract_embeddings
from otface.eval.verification import curve_auc

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
_PAIRS = 100_000  # pairs per step when scoring


def _vector(name: str, values: Any, n: int | None = None) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or (n is not None and len(values) != n):
        raise ValueError(f"{name} must be 1-D{f' of length {n}' if n is not None else ''}, got shape {values.shape}")
    return values


def _ids(name: str, values: Any, n: int) -> np.ndarray:
    values = _vector(name, values, n)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integer ids, got {values.dtype}")
    return values.astype(np.int64)


def image_features(
    features: np.ndarray,
    flipped: np.ndarray | None = None,
    faceness: np.ndarray | None = None,
    norm_score: bool = True,
    detector_score: bool = True,
    flip_test: bool = True,
) -> np.ndarray:
    """Step 1: (N, E) float32 image features from the raw network outputs.

    Args:
        features: (N, E) unnormalised embeddings of the aligned faces.
        flipped: (N, E) unnormalised embeddings of the flipped faces (needed with ``flip_test``).
        faceness: (N,) detector scores (needed with ``detector_score``).
        norm_score: keep the feature norm (else L2-normalise each image feature).
        detector_score: multiply each image feature by its faceness score.
        flip_test: add the flipped embedding.
    """
    out = np.array(features, dtype=np.float32)  # a copy, updated in place below (IJB-C: 0.96 GB)
    if out.ndim != 2 or len(out) == 0:
        raise ValueError(f"features must be (N, E) with N >= 1, got shape {out.shape}")
    if flip_test:
        if flipped is None or np.shape(flipped) != out.shape:
            raise ValueError(f"flip_test needs flipped features of shape {out.shape}, got "
                             f"{None if flipped is None else np.shape(flipped)}")
        out += np.asarray(flipped, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError("features contain NaN or inf")
    if not norm_score:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{int((norms == 0).sum())} image features are zero: they cannot be L2-normalised")
        out /= norms
    if detector_score:
        if faceness is None:
            raise ValueError("detector_score needs the faceness scores")
        scores = _vector("faceness", faceness, len(out)).astype(np.float32)
        if not np.isfinite(scores).all():
            raise ValueError("faceness contains NaN or inf")
        out *= scores[:, None]
    return out


def _group_sums(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, E) float64 sums of the rows of ``values`` (N, E) by group index (N,), one
    column at a time (no (N, E) float64 temporary)."""
    out = np.empty((n_groups, values.shape[1]))
    for j in range(values.shape[1]):
        out[:, j] = np.bincount(groups, weights=values[:, j], minlength=n_groups)
    return out


def image_to_template_features(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: pool image features into L2-normalised template features.

    Args:
        features: (N, E) image features (from :func:`image_features`).
        templates, medias: (N,) integer template and media id of each image.
    Returns:
        unique_templates: (T,) sorted template ids;
        template_features: (T, E) float64, row t the L2-normalised sum over the medias of
        template t of the mean of that media's images (zero rows stay zero).
    """
    features = np.asarray(features)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"features must be (N, E) with N >= 1, got shape {features.shape}")
    templates = _ids("templates", templates, len(features))
    medias = _ids("medias", medias, len(features))
    unique_templates, template_index = np.unique(templates, return_inverse=True)
    groups, group_index, counts = np.unique(np.stack([template_index.ravel(), medias], 1), axis=0,
                                            return_inverse=True, return_counts=True)
    media_features = _group_sums(features, group_index.ravel(), len(groups)) / counts[:, None]  # media mean
    pooled = _group_sums(media_features, groups[:, 0], len(unique_templates))  # sum over medias
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return unique_templates, pooled / np.where(norms == 0, 1.0, norms)


def template_pair_scores(
    unique_templates: np.ndarray, template_features: np.ndarray, pairs: np.ndarray
) -> np.ndarray:
    """Step 3: (P,) float64 dot products of the template features of each pair.

    Args:
        unique_templates: (T,) sorted template ids; template_features: (T, E).
        pairs: (P, 2) template ids; every id must be in ``unique_templates``.
    """
    unique_templates = _vector("unique_templates", unique_templates)
    template_features = np.asarray(template_features, dtype=np.float64)
    if template_features.ndim != 2 or len(template_features) != len(unique_templates):
        raise ValueError(f"template_features must be ({len(unique_templates)}, E), got {template_features.shape}")
    if len(unique_templates) == 0 or (np.diff(unique_templates) <= 0).any():
        raise ValueError("unique_templates must be nonempty and strictly increasing (as np.unique returns them)")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2) template ids, got shape {pairs.shape}")
    rows = np.searchsorted(unique_templates, pairs).clip(0, len(unique_templates) - 1)
    unknown = unique_templates[rows] != pairs
    if unknown.any():
        raise ValueError(f"{int(unknown.any(1).sum())} pairs name templates without features, e.g. "
                         f"{int(pairs[unknown][0])}")
    scores = np.empty(len(pairs))
    for start in range(0, len(pairs), _PAIRS):
        r = rows[start : start + _PAIRS]
        scores[start : start + _PAIRS] = np.einsum("ij,ij->i", template_features[r[:, 0]], template_features[r[:, 1]])
    return scores


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's ``roc_curve(labels, scores, drop_intermediate=...)`` for 0/1 labels, in numpy.

    Pairs with score >= threshold are accepted. One point per distinct score, from the highest;
    ``drop_intermediate`` keeps only the first, last and corner points (where the second
    difference of the FP or TP counts is nonzero); the curve starts at (0, 0), threshold inf.

    Args:
        labels: (P,) 1 (or True) genuine, 0 impostor; both kinds must occur.
        scores: (P,) finite similarity scores.
    Returns:
        fpr, tpr, thresholds: (K,) each, fpr and tpr non-decreasing, thresholds decreasing.
    """
    labels = _vector("labels", labels)
    scores = _vector("scores", scores, len(labels)).astype(np.float64)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    n_genuine = int(np.count_nonzero(labels))
    if n_genuine in (0, len(labels)):
        raise ValueError(f"need genuine and impostor pairs, got {n_genuine} genuine of {len(labels)}")
    order = np.argsort(scores, kind="stable")[::-1]
    ranked = scores[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last pair of each distinct score
    tps = np.cumsum(labels[order] == 1, dtype=np.float64)[last]
    fps = 1.0 + last - tps
    thresholds = ranked[last]
    if drop_intermediate and len(fps) > 2:
        corner = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps, thresholds = fps[corner], tps[corner], thresholds[corner]
    return np.r_[0.0, fps] / fps[-1], np.r_[0.0, tps] / tps[-1], np.r_[np.inf, thresholds]


def curve_tar_at_far(fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float] = FARS) -> np.ndarray:
    """(F,) TPR of the ROC point nearest each target FAR in FPR; of equally near points the last
    (insightface's rule, see module doc)."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if fpr.ndim != 1 or fpr.shape != tpr.shape or len(fpr) == 0:
        raise ValueError(f"fpr and tpr must be 1-D of one nonzero length, got {fpr.shape}, {tpr.shape}")
    out = []
    for far in fars:
        if not 0.0 < far <= 1.0:
            raise ConfigError(f"target FARs must be in (0, 1], got {far}")
        distance = np.abs(fpr - far)
        out.append(tpr[len(distance) - 1 - np.argmin(distance[::-1])])
    return np.array(out)


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FARS) -> np.ndarray:
    """Step 5: (F,) TAR at each target FAR of these pairs (labels 0/1, scores (P,))."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return curve_tar_at_far(fpr, tpr, fars)


def evaluate_ijb(
    features: np.ndarray,
    flipped: np.ndarray | None,
    faceness: np.ndarray | None,
    templates: np.ndarray,
    medias: np.ndarray,
    pairs: np.ndarray,
    labels: np.ndarray,
    norm_score: bool = True,
    detector_score: bool = True,
    flip_test: bool = True,
    fars: Sequence[float] = FARS,
    skip_missing: bool = False,
) -> dict[str, Any]:
    """IJB 1:1 verification metrics (steps 1-5 of the module doc).

    Args:
        features, flipped: (N, E) unnormalised embeddings of the N images and of their flips
            (``flipped`` may be None without ``flip_test``).
        faceness: (N,) detector scores (may be None without ``detector_score``).
        templates, medias: (N,) template and media id of each image.
        pairs: (P, 2) template ids; labels: (P,) 1 genuine, 0 impostor.
        norm_score, detector_score, flip_test: the modes of step 1.
        fars: target FARs.
        skip_missing: leave out (and count) the pairs naming a template without images, e.g.
            one whose images all failed to load; otherwise such a pair is an error. ``RunError``
            when the pairs left lack genuine or impostor ones.
    Returns:
        tar_at_far: {target FAR: TAR}; auc; fpr, tpr: the ROC (for ``plot_roc``);
        scores: (P',) scores of the pairs evaluated, ``scored``: (P,) bool mask of those pairs;
        num_pairs, num_genuine, num_impostor: pairs evaluated; num_images, num_templates;
        skipped_pairs: pairs left out; missing_templates: sorted ids they named that have no
        image; zero_templates: templates whose pooled feature is zero (they score 0);
        norm_score, detector_score, flip_test.
    """
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2) template ids, got shape {pairs.shape}")
    labels = _vector("labels", labels, len(pairs))
    feats = image_features(features, flipped, faceness, norm_score, detector_score, flip_test)
    unique_templates, template_features = image_to_template_features(feats, templates, medias)
    known = np.isin(pairs, unique_templates)
    scored = known.all(1)
    missing = np.unique(pairs[~known])
    if len(missing) and not skip_missing:
        raise ValueError(f"{int((~scored).sum())} pairs name {len(missing)} templates without images, e.g. "
                         f"{int(missing[0])} (skip_missing=True leaves them out)")
    genuine = int(np.count_nonzero(labels[scored]))
    if len(missing) and genuine in (0, int(scored.sum())):
        raise RunError(f"{int((~scored).sum())} of {len(pairs)} pairs name templates without images: the "
                       f"{int(scored.sum())} left hold {genuine} genuine pairs, too few kinds for a ROC")
    scores = template_pair_scores(unique_templates, template_features, pairs[scored])
    fpr, tpr, _ = roc_curve(labels[scored], scores)
    return {
        "tar_at_far": {float(far): float(tar) for far, tar in zip(fars, curve_tar_at_far(fpr, tpr, fars))},
        "auc": curve_auc(fpr, tpr),
        "fpr": fpr,
        "tpr": tpr,
        "scores": scores,
        "scored": scored,
        "num_pairs": int(scored.sum()),
        "num_genuine": genuine,
        "num_impostor": int(scored.sum()) - genuine,
        "num_images": len(feats),
        "num_templates": len(unique_templates),
        "skipped_pairs": int((~scored).sum()),
        "missing_templates": missing,
        "zero_templates": int((np.abs(template_features).sum(1) == 0).sum()),
        "norm_score": norm_score,
        "detector_score": detector_score,
        "flip_test": flip_test,
    }


@dataclass
class IJBFeatures:
    """Raw network outputs for the images of an IJB set that loaded (N' of N)."""

    indices: np.ndarray  # (N',) int64 rows of the meta lists
    features: np.ndarray  # (N', E) float32 unnormalised embeddings
    flipped: np.ndarray | None  # (N', E) float32 embeddings of the flipped faces
    failures: list[tuple[int, str]]  # (row, message) of the images left out


def embed_ijb(
    model: nn.Module,
    meta: IJBMeta,
    flip: bool = True,
    image_size: int = 112,
    batch_size: int = 256,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    on_error: str = "raise",
    progress: bool = True,
) -> IJBFeatures:
    """Embed every face of ``meta`` (and, with ``flip``, its left-right flip), unnormalised.

    Images are decoded, aligned and embedded ``chunk_size`` at a time (``num_workers`` decoding
    processes), so memory holds only the features: 2 KB per image and embedding of 512 floats
    (IJB-C: 0.96 GB, twice with ``flip``) plus a few chunks of images. Faces are resized to
    ``image_size`` for models trained at another input size, as the verification sets are.
    ``on_error="skip"`` leaves unreadable images out and lists them in ``failures``; ``RunError``
    when none is left.
    """
    indices, plain, flipped, failures = [], [], [], []
    for chunk in iter_ijb_chunks(meta, chunk_size, num_workers, on_error, progress):
        failures.extend(chunk.failures)
        if len(chunk.indices) == 0:
            continue
        x = network_input(chunk.images, image_size)
        indices.append(chunk.indices)
        plain.append(extract_embeddings(model, x, batch_size, device, flip=False, normalize=False).numpy())
        if flip:
            x = torch.flip(x, dims=[3])
            flipped.append(extract_embeddings(model, x, batch_size, device, flip=False, normalize=False).numpy())
    if not indices:
        raise RunError(f"{meta.paths['loose_crop']}: no image of {meta.name} could be loaded ({len(failures)} "
                       f"failed, first: {failures[0][1]})")
    return IJBFeatures(np.concatenate(indices), np.concatenate(plain), np.concatenate(flipped) if flip else None,
                       failures)


def ijb_verification(
    model: nn.Module,
    root: str | Path,
    name: str,
    norm_score: bool = True,
    detector_score: bool = True,
    flip_test: bool = True,
    fars: Sequence[float] = FARS,
    on_error: str = "raise",
    **embed_options: Any,
) -> dict[str, Any]:
    """Load set ``name`` (``IJBB`` / ``IJBC``) from ``root``, embed it and evaluate it.

    ``embed_options`` go to :func:`embed_ijb` (image_size, batch_size, chunk_size, device,
    num_workers, progress). With ``on_error="skip"`` unreadable images are left out and the
    pairs of templates left without images skipped. Returns :func:`evaluate_ijb`'s dict plus
    ``set`` and ``failed_images``: [(image name, message)].
    """
    meta = load_ijb_meta(root, name)
    embedded = embed_ijb(model, meta, flip=flip_test, on_error=on_error, **embed_options)
    idx = embedded.indices
    result = evaluate_ijb(embedded.features, embedded.flipped, meta.faceness[idx], meta.templates[idx],
                          meta.medias[idx], meta.pairs, meta.labels, norm_score=norm_score,
                          detector_score=detector_score, flip_test=flip_test, fars=fars,
                          skip_missing=on_error == "skip")
    result["set"] = meta.name
    result["failed_images"] = [(meta.image_names[i], message) for i, message in embedded.failures]
    return result
