import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline
from torch import nn

from otface.errors import DataError, ModelFileError
from otface.eval import extract_embeddings, plot_roc, verification
from otface.eval.plots import plot_cmc
from otface.eval.verification import VAL_THRESHOLDS, curve_auc, far_threshold, kfold_indices, unbalanced_folds


def normalised_dist(e1, e2):
    e1 = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = e2 / np.linalg.norm(e2, axis=1, keepdims=True)
    return ((e1 - e2) ** 2).sum(1)


def fold_ranges(n, nfolds):
    sizes = [n // nfolds + (1 if f < n % nfolds else 0) for f in range(nfolds)]
    start = 0
    for size in sizes:
        test = list(range(start, start + size))
        yield [i for i in range(n) if i not in test], test
        start += size


def brute_force_accuracy(dist, issame, nfolds):
    """insightface's calculate_roc with explicit loops: first best threshold on the train folds."""
    thresholds = [i * 0.01 for i in range(400)]

    def acc(idx, t):
        return sum((dist[i] < t) == bool(issame[i]) for i in idx) / len(idx)

    accs, best_ts = [], []
    for train, test in fold_ranges(len(dist), nfolds):
        best_t, best_a = None, -1
        for t in thresholds:
            a = acc(train, t)
            if a > best_a:
                best_t, best_a = t, a
        accs.append(acc(test, best_t))
        best_ts.append(best_t)
    return np.mean(accs), np.std(accs), np.mean(best_ts)


def brute_force_val(dist, issame, nfolds, far_target):
    """insightface's calculate_val: FAR counted per threshold; threshold by interp1d(kind='slinear')
    as SciPy built it for insightface (a degree-1 B-spline with knots [x0, x, x_last]) ."""
    tars, fars = [], []
    for train, test in fold_ranges(len(dist), nfolds):
        d, s = dist[train], issame[train]
        far_train = np.array([np.sum((d < t) & ~s) / np.sum(~s) for t in VAL_THRESHOLDS])
        if far_train.max() >= far_target:
            spline = BSpline.construct_fast(np.r_[far_train[0], far_train, far_train[-1]], VAL_THRESHOLDS, 1)
            thr = float(spline(far_target))
        else:
            thr = 0.0
        d, s = dist[test], issame[test]
        tars.append(np.sum((d < thr) & s) / np.sum(s))
        fars.append(np.sum((d < thr) & ~s) / np.sum(~s))
    return np.mean(tars), np.std(tars), np.mean(fars)


def make_pairs(rng, p=200, dim=16, signal=1.0):
    issame = rng.random(p) < 0.5
    e1 = rng.normal(size=(p, dim))
    e2 = np.where(issame[:, None], e1 + rng.normal(size=(p, dim)) / signal, rng.normal(size=(p, dim)))
    return e1, e2, issame


@pytest.mark.parametrize("seed, signal, nfolds", [(0, 1.0, 10), (1, 0.5, 10), (2, 2.0, 7)])
def test_accuracy_equals_brute_force(seed, signal, nfolds):
    e1, e2, issame = make_pairs(np.random.default_rng(seed), p=203, signal=signal)
    r = verification(e1, e2, issame, nfolds=nfolds)
    acc, std, thr = brute_force_accuracy(normalised_dist(e1, e2), issame, nfolds)
    assert r["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert r["accuracy_std"] == pytest.approx(std, abs=1e-12)
    assert r["threshold"] == pytest.approx(thr, abs=1e-12)
    assert r["tpr"].shape == r["fpr"].shape == (400,)


@pytest.mark.parametrize("seed, far_target", [(3, 1e-3), (4, 0.05), (5, 1e-2)])
def test_tar_at_far_equals_brute_force(seed, far_target):
    e1, e2, issame = make_pairs(np.random.default_rng(seed), p=1500, signal=1.5)
    r = verification(e1, e2, issame, far_target=far_target)
    tar, tar_std, far = brute_force_val(normalised_dist(e1, e2), issame, 10, far_target)
    assert (r["tar_at_far"], r["tar_at_far_std"], r["far"]) == pytest.approx((tar, tar_std, far), abs=1e-12)
    assert r["far_target"] == far_target
    assert 0 < r["tar_at_far"] < 1


def test_far_target_on_a_plateau_takes_its_largest_threshold():
    # 1000 impostor pairs at distinct distances: FAR = 2/1000 exactly between the 2nd and 3rd
    dist = np.linspace(0.5, 3.5, 1000) + 0.0004
    issame = np.zeros(1000, bool)
    thr = far_threshold(dist, issame, 0.002)
    assert thr == pytest.approx(VAL_THRESHOLDS[VAL_THRESHOLDS <= dist[2]].max(), abs=1e-12)
    far = np.array([np.mean(dist < t) for t in VAL_THRESHOLDS])
    spline = BSpline.construct_fast(np.r_[far[0], far, far[-1]], VAL_THRESHOLDS, 1)
    assert thr == pytest.approx(float(spline(0.002)), abs=1e-12)
    assert far_threshold(dist, issame, 1e-4) == pytest.approx(np.interp(1e-4, far, VAL_THRESHOLDS))
    assert far_threshold(dist[:10] + 4.0, issame[:10], 1e-3) == 0.0  # FAR never reached


def test_roc_arrays_and_auc_by_counting():
    rng = np.random.default_rng(6)
    e1, e2, issame = make_pairs(rng, p=300)
    r = verification(e1, e2, issame, nfolds=3)
    dist = normalised_dist(e1, e2)
    for k, t in enumerate([0.5, 1.0, 1.7, 2.5]):
        i = int(round(t / 0.01))
        tprs = [np.sum((dist[te] < t) & issame[te]) / np.sum(issame[te]) for _, te in fold_ranges(300, 3)]
        fprs = [np.sum((dist[te] < t) & ~issame[te]) / np.sum(~issame[te]) for _, te in fold_ranges(300, 3)]
        assert (r["tpr"][i], r["fpr"][i]) == pytest.approx((np.mean(tprs), np.mean(fprs)), abs=1e-12)
    pos, neg = dist[issame], dist[~issame]
    auc = np.mean((pos[:, None] < neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert r["auc"] == pytest.approx(auc, abs=1e-12)


def test_perfect_and_random():
    rng = np.random.default_rng(7)
    e1 = rng.normal(size=(100, 8))
    issame = np.arange(100) % 2 == 0
    e2 = np.where(issame[:, None], 3.0 * e1, -e1)  # scale does not matter: normalised inside
    r = verification(e1, e2, issame)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0 and r["auc"] == 1.0
    # insightface's rule: no impostor is ever accepted on the train folds, so the FAR target is
    # never reached and the threshold is 0, which accepts nothing
    assert r["tar_at_far"] == 0.0 and r["far"] == 0.0
    r = verification(rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8)), np.arange(2000) % 2 == 0)
    assert abs(r["accuracy"] - 0.5) < 0.06 and abs(r["auc"] - 0.5) < 0.05
    assert r["accuracy_std"] > 0


def test_hand_computed_four_pairs():
    # squared distances 0, 2, 2, 4 for (same, same, diff, diff); 2 folds of 2 pairs
    e1 = np.array([[1.0, 0], [1, 0], [1, 0], [1, 0]])
    e2 = np.array([[1.0, 0], [0, 1], [0, 1], [-1, 0]])
    issame = np.array([True, True, False, False])
    r = verification(e1, e2, issame, nfolds=2)
    # fold 1 tests pairs 0, 1 and trains on 2, 3 (both impostors): every t <= 2 rejects both, so
    # t = 0 is the first best; on the test fold it rejects both genuine pairs: accuracy 0.
    # fold 2 tests pairs 2, 3 and trains on 0, 1 (genuine, d = 0 and 2): the first t accepting
    # both is 2.01 (0.01 * 201 > 2); it accepts pair 2 (d = 2) wrongly and rejects pair 3: 0.5.
    assert r["accuracy"] == pytest.approx(0.25)
    assert r["accuracy_std"] == pytest.approx(0.25)
    assert r["threshold"] == pytest.approx((0.0 + 2.01) / 2)
    # AUC: genuine {0, 2} vs impostor {2, 4}: pairs (0,2) (0,4) (2,4) ordered, (2,2) tied
    assert r["auc"] == pytest.approx(3.5 / 4)


def test_kfold_like_sklearn_and_lfold():
    folds = kfold_indices(11, 3)
    assert [t.tolist() for _, t in folds] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert folds[1][0].tolist() == [0, 1, 2, 3, 8, 9, 10]
    (train, test), = kfold_indices(4, 1)
    assert train.tolist() == test.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="nfolds"):
        kfold_indices(5, 6)
    with pytest.raises(ValueError, match="nfolds"):
        kfold_indices(5, 0)


def test_bad_input():
    mixed = np.arange(4) % 2 == 0
    with pytest.raises(ValueError, match="shape"):
        verification(np.zeros((4, 3)), np.zeros((5, 3)), mixed)
    with pytest.raises(ValueError, match="shape"):
        verification(np.ones((4, 3)), np.ones((4, 3)), np.ones(5, bool))
    with pytest.raises(ValueError, match="boolean"):
        verification(np.ones((4, 3)), np.ones((4, 3)), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        verification(np.full((20, 3), np.nan), np.ones((20, 3)), np.arange(20) % 2 == 0)
    with pytest.raises(ValueError, match="nfolds"):
        verification(np.ones((4, 3)), np.ones((4, 3)), mixed, nfolds=10)
    with pytest.raises(ValueError, match="far_target"):
        verification(np.ones((40, 3)), np.ones((40, 3)), np.arange(40) % 2 == 0, far_target=0)


@pytest.mark.parametrize("kind", [True, False])
def test_a_set_of_one_kind_of_pair_is_an_error(kind):
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match=f"all 40 pairs are {'genuine' if kind else 'impostor'} pairs"):
        verification(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), np.full(40, kind))


@pytest.mark.parametrize("impostors, defined", [(300, False), (1000, False), (1300, True)])
def test_tar_at_far_is_marked_undefined_without_enough_impostors(impostors, defined):
    """FAR 1e-3 needs >= 1000 impostors in the other folds of every fold: counted by hand."""
    rng = np.random.default_rng(1)
    issame = rng.permutation(np.r_[np.ones(400, bool), np.zeros(impostors, bool)])
    e1, e2 = rng.normal(size=(len(issame), 8)), rng.normal(size=(len(issame), 8))
    e2[issame] = e1[issame] + 0.3 * rng.normal(size=(int(issame.sum()), 8))
    r = verification(e1, e2, issame)
    folds = np.array_split(np.arange(len(issame)), 10)
    fewest = min(int((~np.delete(issame, f)).sum()) for f in folds)
    assert r["min_impostors"] == fewest and r["tar_at_far_defined"] == (fewest >= 1000) == defined
    assert 0.0 <= r["far"] <= 1.0


def test_blocked_pair_order_is_reported_as_unbalanced_folds():
    rng = np.random.default_rng(2)
    blocked = np.r_[np.ones(300, bool), np.zeros(300, bool)]  # all genuine pairs first
    assert unbalanced_folds(blocked) == list(range(10))
    interleaved = np.arange(600) % 2 == 0
    assert unbalanced_folds(interleaved) == []
    shuffled = rng.permutation(blocked)
    expected = [i for i, f in enumerate(np.array_split(np.arange(600), 10))
                if abs(shuffled[f].mean() - 0.5) > 0.2]
    assert unbalanced_folds(shuffled) == expected
    e = rng.normal(size=(600, 8))
    assert verification(e, e + 0.1, blocked)["unbalanced_folds"] == list(range(10))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x)).flatten(1)))


def test_extract_embeddings_sums_image_and_flip():
    torch.manual_seed(0)
    model = Tiny()
    model.train()
    model.bn.eval()  # e.g. frozen statistics: must stay in eval mode afterwards
    x = torch.randn(7, 3, 8, 8)
    got = extract_embeddings(model, x, batch_size=3, progress=False)
    assert model.training and model.drop.training and not model.bn.training
    assert got.dtype == torch.float32 and got.shape == (7, 5)

    model.eval()  # eval mode: dropout off, BN running statistics
    with torch.no_grad():
        plain = model(x)
        flipped = model(x[:, :, :, torch.arange(7, -1, -1)])  # columns reversed by hand
    manual = (plain + flipped) / (plain + flipped).norm(dim=1, keepdim=True)
    torch.testing.assert_close(got, manual)
    torch.testing.assert_close(extract_embeddings(model, x, flip=False), plain / plain.norm(dim=1, keepdim=True))


def test_extract_embeddings_errors_and_parameterless_model():
    x = torch.randn(3, 3, 4, 4)
    got = extract_embeddings(nn.Flatten(), x)
    flat = (x + x.flip(3)).flatten(1)
    torch.testing.assert_close(got, flat / flat.norm(dim=1, keepdim=True))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        extract_embeddings(nn.Flatten(), torch.randn(3, 1, 4, 4))
    with pytest.raises(ValueError, match="no images"):
        extract_embeddings(nn.Flatten(), torch.randn(0, 3, 4, 4))


def test_plot_roc_writes_png(tmp_path):
    e1, e2, issame = make_pairs(np.random.default_rng(8))
    r = verification(e1, e2, issame)
    curves = {"a": (r["fpr"], r["tpr"]), "b": (np.array([0.0, 0.01, 0.1, 1.0]), np.array([0.0, 0.5, 0.8, 1.0]))}
    path = plot_roc(curves, tmp_path / "sub" / "roc.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert curve_auc(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0])) == pytest.approx(0.75)
    assert curve_auc(np.array([0.5]), np.array([0.5])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no curves"):
        plot_roc({}, tmp_path / "x.png")


def test_plot_cmc_writes_png_and_rejects_bad_curves(tmp_path):
    path = plot_cmc({"a": [0.6, 0.7, 0.75], "b": np.array([0.9])}, tmp_path / "sub" / "cmc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no curves"):
        plot_cmc({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty 1-D"):
        plot_cmc({"a": []}, tmp_path / "x.png")


def test_a_model_giving_non_finite_embeddings_is_a_model_file_error():
    model = Tiny()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    x = torch.randn(5, 3, 8, 8)
    with pytest.raises(ModelFileError, match="NaN or infinite embeddings for 5 of 5 images"):
        extract_embeddings(model, x)
