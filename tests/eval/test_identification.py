import numpy as np
import pytest

from otface.errors import ConfigError
from otface.eval import search
from otface.eval.identification import far_thresholds, impostors_above, megaface_identification

needs_faiss = pytest.mark.skipif(search._import_faiss() is None, reason="faiss is not installed")


def brute_force(x, labels, y, max_rank, fars):
    """The protocol with the full score matrix: one gallery (distractors + mate) per ordered probe
    pair, ranked by a sort in which the mate comes after distractors of equal score."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    probe_scores, impostors = x @ x.T, x @ y.T
    ranks, genuine = [], []
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j and labels[i] == labels[j]:
                gallery = np.append(impostors[i], probe_scores[i, j])  # mate last
                order = np.argsort(-gallery, kind="stable")
                ranks.append(int(np.flatnonzero(order == len(y))[0]) + 1)
                if i < j:
                    genuine.append(probe_scores[i, j])
    ranks, genuine, impostors = np.array(ranks), np.array(genuine), impostors.ravel()
    cmc = np.array([np.mean(ranks <= r) for r in range(1, max_rank + 1)])
    thresholds, tars = {}, {}
    # the lowest threshold (an impostor score, or -inf) with FAR = #{impostor > t} / M <= f
    candidates = np.concatenate([[-np.inf], np.unique(impostors)])
    above = len(impostors) - np.searchsorted(np.sort(impostors), candidates, side="right")
    for f in fars:
        thresholds[f] = candidates[above <= f * len(impostors) + 1e-9].min()
        tars[f] = np.mean(genuine > thresholds[f])
    return cmc, thresholds, tars, len(ranks), len(genuine)


def sign_features(seed, identities=12, per_identity=(1, 2, 3, 6), distractors=150, dim=16):
    """Features in {-1, 1}^16: normalised entries are +-1/4, every score is a multiple of 1/8 and
    exact in float32 whatever the summation order, so ties between mate and distractors are many
    and decided the same way by every engine. Distractors are near copies of the identities'
    centres, so the CMC is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    centres = rng.choice([-1.0, 1.0], size=(identities, dim))
    sizes = rng.choice(per_identity, size=identities)
    labels = np.repeat(np.arange(identities), sizes)

    def flip(rows, p):
        return rows * np.where(rng.random(rows.shape) < p, -1.0, 1.0)

    x = flip(centres[labels], 0.15)
    y = flip(centres[rng.integers(identities, size=distractors)], 0.3)
    return x.astype(np.float32), labels, y.astype(np.float32)


def gaussian_features(seed, identities=10, per_identity=5, distractors=300, dim=32, noise=1.2):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim))
    labels = np.repeat(np.arange(identities), per_identity)
    x = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    y = centres[rng.integers(identities, size=distractors)] + 1.5 * rng.normal(size=(distractors, dim))
    return x, labels, y


FARS = (1e-6, 1e-3, 0.01, 0.29, 1.0)


@pytest.mark.parametrize("options, probe_chunk", [
    ({"engine": "torch"}, 512),
    ({"engine": "torch", "database_chunk": 17}, 5),  # global top-K merged over many probe chunks
    pytest.param({"engine": "faiss"}, 4, marks=needs_faiss),
])
def test_ties_are_counted_against_the_mate_as_in_brute_force(options, probe_chunk):
    x, labels, y = sign_features(0)
    r = megaface_identification(x, labels, y, max_rank=20, fars=FARS, probe_chunk=probe_chunk,
                                search_options=options)
    cmc, thresholds, tars, trials, genuine = brute_force(x.astype(float), labels, y.astype(float), 20, FARS)
    scores = (x @ y.T / 16).ravel()
    assert np.isin(scores, x @ x.T / 16).mean() > 0.5  # ties are the rule, not the exception
    np.testing.assert_array_equal(r["cmc"], cmc)
    assert r["rank1"] == cmc[0] and 0 < cmc[0] < cmc[-1] < 1
    assert r["thresholds"] == thresholds and r["tar_at_far"] == pytest.approx(tars, abs=0)
    assert r["counts"]["trials"] == trials and r["counts"]["genuine"] == genuine


@pytest.mark.parametrize("engine", [pytest.param("faiss", marks=needs_faiss), "torch"])
def test_continuous_features_equal_brute_force(engine):
    x, labels, y = gaussian_features(1, noise=0.6)
    fars = (1e-5, 1e-3, 0.01, 0.07)  # f M = 0.015, 15, 150 (< D = 300) and 1050 (> D)
    r = megaface_identification(x, labels, y, max_rank=10, fars=fars, probe_chunk=16,
                                search_options={"engine": engine})
    cmc, thresholds, tars, trials, genuine = brute_force(x, labels, y, 10, fars)
    # no near-tie that float32 rounding could decide otherwise: mate vs distractor, genuine vs threshold
    xn, yn = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    probe_scores, impostors = xn @ xn.T, xn @ yn.T
    for i in range(len(x)):
        mates = probe_scores[i, (labels == labels[i]) & (np.arange(len(x)) != i)]
        assert np.abs(mates[:, None] - impostors[i][None, :]).min() > 1e-6
    genuine_scores = probe_scores[np.triu(labels[:, None] == labels[None, :], 1)]
    assert min(np.abs(genuine_scores - t).min() for t in thresholds.values()) > 1e-6
    np.testing.assert_array_equal(r["cmc"], cmc)
    assert 0.2 < r["rank1"] < r["cmc"][-1] < 1 and 0 < r["tar_at_far"][1e-5] < r["tar_at_far"][0.07] < 1
    for f in fars:
        assert r["thresholds"][f] == pytest.approx(thresholds[f], abs=1e-6)
        assert r["tar_at_far"][f] == tars[f]
    counts = r["counts"]
    assert (counts["trials"], counts["genuine"]) == (trials, genuine) == (10 * 5 * 4, 10 * 10)
    assert [counts[key] for key in ("probes", "identities", "distractors", "impostors")] == [50, 10, 300, 15000]


def test_far_thresholds_against_sorting_all_impostor_scores():
    rng = np.random.default_rng(2)
    impostors = rng.normal(size=1000).astype(np.float32)
    u = np.sort(impostors)[::-1]
    # only the largest scores are passed: n + 1 = 31 for f = 0.03
    want = {0.0005: u[0], 0.001: u[1], 0.0299: u[29], 0.03: u[30], 1.0: -np.inf}
    thresholds, reached = far_thresholds(rng.permutation(u[:31]), 1000, list(want))
    for f in want:
        assert thresholds[f] == want[f]
        assert reached[f] == np.mean(impostors > thresholds[f]) <= f
    assert reached[0.0005] == 0.0 and reached[0.03] == 0.03 and reached[1.0] == 1.0
    with pytest.raises(ValueError, match="FAR 0.5 needs the 501 largest impostor scores, got 31"):
        far_thresholds(u[:31], 1000, [0.5])


def test_impostor_count_is_exact_in_decimal():
    assert 0.29 * 100 < 29 and impostors_above(0.29, 100) == 29
    assert impostors_above(1e-6, 3530 * 10**6) == 3530
    assert impostors_above(1e-6, 999_999) == 0
    for bad in (0.0, -1e-6, 1.5):
        with pytest.raises(ConfigError, match=r"FAR must be in \(0, 1\]"):
            impostors_above(bad, 10)


def test_far_below_one_impostor_takes_the_largest_impostor_score():
    x, labels, y = gaussian_features(3, noise=0.5)
    r = megaface_identification(x, labels, y, fars=[1e-6, 1.0], search_options={"engine": "torch"})
    xn, yn = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    top = (xn @ yn.T).max()
    genuine = (xn @ xn.T)[np.triu(labels[:, None] == labels[None, :], 1)]
    assert 1e-6 * 50 * 300 < 1  # no impostor may be accepted
    assert r["thresholds"][1e-6] == pytest.approx(top, abs=1e-6) and r["far_reached"][1e-6] == 0.0
    assert r["tar_at_far"][1e-6] == np.mean(genuine > top) > 0
    assert r["thresholds"][1.0] == -np.inf and r["tar_at_far"][1.0] == 1.0 and r["far_reached"][1.0] == 1.0


def test_single_image_identities_give_no_trial():
    x, labels, y = gaussian_features(4)
    extra = np.random.default_rng(5).normal(size=(3, 32))
    with_singletons = megaface_identification(
        np.vstack([x, extra]), np.concatenate([labels, [100, 101, 102]]), y, search_options={"engine": "torch"})
    plain = megaface_identification(x, labels, y, search_options={"engine": "torch"})
    np.testing.assert_array_equal(with_singletons["cmc"], plain["cmc"])
    counts = with_singletons["counts"]
    assert (counts["identities"], counts["identities_with_trials"]) == (13, 10)
    assert (counts["trials"], counts["genuine"], counts["impostors"]) == (200, 100, 53 * 300)

    only = megaface_identification(extra, [1, 2, 3], y, max_rank=3, search_options={"engine": "torch"})
    assert np.isnan(only["rank1"]) and np.isnan(only["cmc"]).all() and np.isnan(only["tar_at_far"][1e-6])
    assert only["counts"]["trials"] == only["counts"]["genuine"] == 0


def test_ranks_beyond_the_distractor_count_always_succeed():
    x, labels, _ = sign_features(6)
    # three copies of probe 0: its trials as query, and as mate (a tie), rank 4
    y = np.repeat(x[:1], 3, axis=0)
    r = megaface_identification(x, labels, y, max_rank=6, fars=(), search_options={"engine": "torch"})
    cmc, *_ = brute_force(x.astype(np.float64), labels, y.astype(np.float64), 6, ())
    np.testing.assert_array_equal(r["cmc"], cmc)
    assert r["cmc"][2] < 1 and (r["cmc"][3:] == 1).all()


@needs_faiss
def test_approximate_index_through_search_options():
    x, labels, y = gaussian_features(7, distractors=2000)
    exact = megaface_identification(x, labels, y, fars=(1e-3,), search_options={"engine": "torch"})
    full = megaface_identification(x, labels, y, fars=(1e-3,),
                                   search_options={"index": "ivf", "nlist": 16, "nprobe": 16})
    np.testing.assert_array_equal(full["cmc"], exact["cmc"])  # every cell visited: exact
    assert full["tar_at_far"] == exact["tar_at_far"]
    partial = megaface_identification(x, labels, y, fars=(1e-3,),
                                      search_options={"index": "ivf", "nlist": 16, "nprobe": 1})
    # missed distractors only help the mates, and lower the thresholds
    assert (partial["cmc"] >= exact["cmc"]).all() and (partial["cmc"] > exact["cmc"]).any()
    assert partial["thresholds"][1e-3] <= exact["thresholds"][1e-3]


@pytest.mark.parametrize("args, kwargs, kind, message", [
    ((np.ones((3, 4)), [0, 0], np.ones((5, 4))), {}, ValueError, r"probe_labels must have shape \(3,\)"),
    ((np.ones((3, 4)), [0, 0, 1], np.ones((5, 3))), {}, ValueError, "4 dimensions, distractor features 3"),
    ((np.ones((3, 4)), [0, 0, 1], np.ones((0, 4))), {}, ValueError, "distractor_features must be a non-empty"),
    ((np.full((3, 4), np.nan), [0, 0, 1], np.ones((5, 4))), {}, ValueError, "probe_features contains NaN"),
    ((np.ones((3, 4), int), [0, 0, 1], np.ones((5, 4))), {}, ValueError, "must hold floating-point features"),
    ((np.ones((3, 4)), [0, 0, 1], np.ones((5, 4))), {"max_rank": 0}, ConfigError, "max_rank must be >= 1"),
    ((np.ones((3, 4)), [0, 0, 1], np.ones((5, 4))), {"fars": [0.0]}, ConfigError, r"FAR must be in \(0, 1\]"),
])
def test_invalid_input_is_a_clear_error(args, kwargs, kind, message):
    """A bad setting is a ConfigError; arrays our code passes wrongly stay plain ValueErrors."""
    with pytest.raises(kind, match=message) as caught:
        megaface_identification(*args, **kwargs)
    assert type(caught.value) is kind
