import numpy as np

from otface.synth import GENES, protocol_pair, render_face, sample_identity, sample_nuisance


def test_hard_is_harder_than_easy_in_pixel_space():
    """A pixel-space verifier (mean absolute difference of the face region) separates easy
    pairs but not hard ones, and hard genuine pairs differ more than easy ones."""
    stats = {}
    for level in ("easy", "hard"):
        genuine, impostor = [], []
        for k in range(40):
            a, b, na, nb, same = protocol_pair(7, level, k)
            d = np.abs(np.asarray(render_face(a, na).convert("L"), np.float32)
                       - np.asarray(render_face(b, nb).convert("L"), np.float32))[24:100, 24:88].mean()
            (genuine if same else impostor).append(d)
        auc = np.mean([g < i for g in genuine for i in impostor])
        stats[level] = (np.mean(genuine), auc)
    assert stats["hard"][0] > 1.5 * stats["easy"][0]
    assert stats["easy"][1] > 0.85 and stats["hard"][1] < stats["easy"][1] - 0.15


def test_rendering_is_deterministic_and_sized():
    rng = np.random.default_rng(11)
    ident, nuis = sample_identity(rng), sample_nuisance(rng, "hard")
    a, b = render_face(ident, nuis), render_face(ident, nuis)
    assert a.size == (112, 112) and a.mode == "RGB" and a.tobytes() == b.tobytes()
    assert render_face(ident, nuis, size=64).size == (64, 64)
    assert len(ident.genes) == len(GENES) and ((ident.genes >= 0) & (ident.genes <= 1)).all()
