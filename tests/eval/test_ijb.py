import itertools

import numpy as np
import pytest
from sklearn.metrics import auc as sklearn_auc
from sklearn.metrics import roc_curve as sklearn_roc_curve

from otface.errors import ConfigError
from otface.eval.ijb import (
    FARS,
    curve_tar_at_far,
    evaluate_ijb,
    image_features,
    image_to_template_features,
    roc_curve,
    tar_at_far,
    template_pair_scores,
)

MODES = list(itertools.product([True, False], repeat=3))  # (norm_score, detector_score, flip_test)


# insightface's ijb_11.py, restated with explicit loops (float64 pooling).
def reference_image_features(raw, flipped, faceness, norm_score, detector_score, flip_test):
    feats = raw + flipped if flip_test else raw.copy()
    if not norm_score:
        feats = feats / np.sqrt(np.sum(feats**2, -1, keepdims=True))
    if detector_score:
        feats = feats * faceness[:, None]
    return feats


def reference_template_features(feats, templates, medias):
    unique = sorted(set(templates.tolist()))
    out = []
    for t in unique:
        rows = [i for i in range(len(templates)) if templates[i] == t]
        media_feats = []
        for m in sorted(set(medias[rows].tolist())):
            same = [i for i in rows if medias[i] == m]
            media_feats.append(feats[same].astype(np.float64).mean(0))  # one image: itself
        pooled = np.sum(media_feats, axis=0)
        norm = np.sqrt(np.sum(pooled**2))
        out.append(pooled / norm if norm > 0 else pooled)
    return np.array(unique), np.array(out)


def reference_scores(unique, template_feats, pairs):
    row = {t: k for k, t in enumerate(unique.tolist())}
    return np.array([float(np.dot(template_feats[row[a]], template_feats[row[b]])) for a, b in pairs.tolist()])


def reference_tar(labels, scores):
    fpr, tpr, _ = sklearn_roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    return [tpr[min(zip(abs(fpr - far), range(len(fpr))))[1]] for far in FARS]


def make_set(seed, n_images=300, dim=16, n_templates=40, n_ids=10):
    """Images of templates of identities (feature = identity centre + noise), several images per
    media, and pairs of templates (genuine when the identity is shared), some repeated or swapped
    so that scores tie exactly."""
    rng = np.random.default_rng(seed)
    template_ids = rng.choice(np.arange(100, 1000), n_templates, replace=False)
    identity = rng.integers(0, n_ids, n_templates)
    centres = rng.normal(size=(n_ids, dim))
    which = np.r_[np.arange(n_templates), rng.integers(0, n_templates, n_images - n_templates)]
    templates = template_ids[which]
    medias = rng.integers(0, 4, n_images) + 10 * (which % 3)  # one media id may recur in several templates
    raw = (centres[identity[which]] + rng.normal(scale=3.0, size=(n_images, dim))) * rng.uniform(0.5, 3, (n_images, 1))
    flipped = raw + rng.normal(scale=0.3, size=raw.shape)
    faceness = rng.uniform(0.1, 1.0, n_images)
    a, b = rng.integers(0, n_templates, (2, 500))
    a, b = a[a != b], b[a != b]
    a, b = np.r_[a, a[:20], b[20:40]], np.r_[b, b[:20], a[20:40]]
    pairs = np.stack([template_ids[a], template_ids[b]], 1)
    labels = (identity[a] == identity[b]).astype(int)
    return (raw.astype(np.float32), flipped.astype(np.float32), faceness.astype(np.float32), templates, medias,
            pairs, labels)


@pytest.mark.parametrize("norm_score,detector_score,flip_test", MODES)
def test_evaluate_matches_insightface_procedure(norm_score, detector_score, flip_test):
    raw, flipped, faceness, templates, medias, pairs, labels = make_set(0)
    assert 0 < labels.sum() < len(labels) // 2

    feats = reference_image_features(raw, flipped, faceness, norm_score, detector_score, flip_test)
    got_feats = image_features(raw, flipped, faceness, norm_score, detector_score, flip_test)
    np.testing.assert_allclose(got_feats, feats, rtol=1e-6, atol=1e-6)

    unique, template_feats = reference_template_features(feats, templates, medias)
    got_unique, got_template_feats = image_to_template_features(feats, templates, medias)
    np.testing.assert_array_equal(got_unique, unique)
    np.testing.assert_allclose(got_template_feats, template_feats, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(got_template_feats, axis=1), 1.0, rtol=1e-12)

    scores = reference_scores(unique, template_feats, pairs)
    np.testing.assert_allclose(template_pair_scores(got_unique, got_template_feats, pairs), scores, atol=1e-12)
    # rounding differences (< 1e-12) cannot reorder the scores: distinct ones lie further apart
    gaps = np.diff(np.sort(scores))
    assert gaps[gaps > 0].min() > 1e-9 and (gaps == 0).sum() >= 20

    result = evaluate_ijb(raw, flipped if flip_test else None, faceness if detector_score else None, templates,
                          medias, pairs, labels, norm_score=norm_score, detector_score=detector_score,
                          flip_test=flip_test)
    np.testing.assert_allclose(result["scores"], scores, atol=1e-12)
    assert list(result["tar_at_far"]) == list(FARS)
    np.testing.assert_array_equal(list(result["tar_at_far"].values()), reference_tar(labels, scores))
    assert len(set(result["tar_at_far"].values())) > 1
    fpr, tpr, _ = sklearn_roc_curve(labels, scores)
    np.testing.assert_array_equal(result["fpr"], fpr)
    np.testing.assert_array_equal(result["tpr"], tpr)
    assert result["auc"] == pytest.approx(sklearn_auc(fpr, tpr), abs=1e-12)
    assert (result["num_pairs"], result["num_genuine"], result["num_impostor"]) == (
        len(pairs), labels.sum(), len(pairs) - labels.sum())
    assert (result["num_images"], result["num_templates"], result["skipped_pairs"], result["zero_templates"]) == (
        len(raw), len(unique), 0, 0)
    assert result["scored"].all() and len(result["missing_templates"]) == 0


def test_modes_change_the_scores():
    raw, flipped, faceness, templates, medias, pairs, labels = make_set(1)
    scores = {mode: evaluate_ijb(raw, flipped, faceness, templates, medias, pairs, labels, *mode)["scores"]
              for mode in MODES}
    for m1, m2 in itertools.combinations(MODES, 2):
        assert np.abs(scores[m1] - scores[m2]).max() > 1e-3, (m1, m2)


def random_curve_case(rng):
    n = int(rng.integers(2, 80))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # 0-2 decimals: many ties
    return labels, scores + 0.5 * labels * rng.integers(0, 2)


def test_roc_curve_equals_sklearn_with_and_without_drop_intermediate():
    rng = np.random.default_rng(2)
    for _ in range(300):
        labels, scores = random_curve_case(rng)
        for drop in (True, False):
            want = sklearn_roc_curve(labels, scores, drop_intermediate=drop)
            got = roc_curve(labels, scores, drop_intermediate=drop)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
    labels, scores = random_curve_case(rng)
    np.testing.assert_array_equal(roc_curve(labels.astype(bool), scores)[1], roc_curve(labels, scores)[1])


def test_tar_at_far_equals_insightface_rule_on_ties():
    rng = np.random.default_rng(3)
    for _ in range(300):
        labels, scores = random_curve_case(rng)
        np.testing.assert_array_equal(tar_at_far(labels, scores), reference_tar(labels, scores))


def test_nearest_rule_takes_the_last_of_equally_near_points():
    # ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1): at FAR 1e-6 both (0,0) and (0,.5) are nearest
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.8, 0.4, 0.35, 0.1])
    fpr, tpr, _ = roc_curve(labels, scores)
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])
    assert tar_at_far(labels, scores, fars=[1e-6])[0] == 0.5  # argmin (first) would give 0
    # FPR 0.25 and 0.75 are equally near the target 0.5: the later point wins
    np.testing.assert_array_equal(curve_tar_at_far(np.array([0, 0.25, 0.75, 1]), np.array([0, 0.2, 0.6, 1]), [0.5]),
                                  [0.6])


def test_zero_template_feature_scores_zero_and_is_counted():
    raw, flipped, faceness, templates, medias, pairs, labels = make_set(4)
    faceness = faceness.copy()
    faceness[templates == pairs[0, 0]] = 0.0
    result = evaluate_ijb(raw, flipped, faceness, templates, medias, pairs, labels)
    unique, feats = image_to_template_features(image_features(raw, flipped, faceness), templates, medias)
    assert not feats[unique == pairs[0, 0]].any()
    assert result["zero_templates"] == 1
    touches = (pairs == pairs[0, 0]).any(1)
    np.testing.assert_array_equal(result["scores"][touches], 0.0)


def test_pairs_of_templates_without_images_are_an_error_or_skipped():
    raw, flipped, faceness, templates, medias, pairs, labels = make_set(5)
    gone = templates[0]
    keep = templates != gone
    args = (raw[keep], flipped[keep], faceness[keep], templates[keep], medias[keep], pairs, labels)
    with pytest.raises(ValueError, match=f"templates without images, e.g. {gone}"):
        evaluate_ijb(*args)
    result = evaluate_ijb(*args, skip_missing=True)
    touches = (pairs == gone).any(1)
    assert touches.sum() > 0
    assert result["skipped_pairs"] == touches.sum() and result["num_pairs"] == len(pairs) - touches.sum()
    np.testing.assert_array_equal(result["scored"], ~touches)
    np.testing.assert_array_equal(result["missing_templates"], [gone])
    alone = evaluate_ijb(*args[:5], pairs[~touches], labels[~touches])
    assert result["tar_at_far"] == alone["tar_at_far"]
    np.testing.assert_array_equal(result["scores"], alone["scores"])


def test_invalid_inputs_are_refused():
    raw, flipped, faceness, templates, medias, pairs, labels = make_set(6)
    with pytest.raises(ValueError, match="flip_test needs flipped"):
        evaluate_ijb(raw, None, faceness, templates, medias, pairs, labels)
    with pytest.raises(ValueError, match="detector_score needs"):
        evaluate_ijb(raw, flipped, None, templates, medias, pairs, labels)
    zeroed = raw.copy()
    zeroed[3] = 0
    with pytest.raises(ValueError, match="1 image features are zero"):
        evaluate_ijb(zeroed, None, faceness, templates, medias, pairs, labels, norm_score=False, flip_test=False)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        evaluate_ijb(raw, flipped, faceness, templates, medias, pairs, labels * 2)
    with pytest.raises(ValueError, match="need genuine and impostor"):
        roc_curve(np.ones(4, int), np.arange(4.0))
    with pytest.raises(ValueError, match="integer ids"):
        image_to_template_features(raw, templates.astype(float), medias)
    with pytest.raises(ValueError, match="pairs name templates without features"):
        template_pair_scores(np.array([1, 2]), np.eye(2), np.array([[1, 3]]))
    with pytest.raises(ConfigError, match=r"target FARs must be in \(0, 1\], got 0.0"):
        tar_at_far(labels, np.arange(len(labels), dtype=float), fars=[0.0])
