"""benchmarks/ot_study.py's statistics: per-arm means and spreads, the paired difference and its
95 % interval (against scipy's paired t-test), the time cost from unshared runs only, and the
findings' verdicts."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_rel

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import ot_study  # noqa: E402


def run(arm, seed, easy, hard, seconds=300.0, shared=False):
    """A JSON entry with only the fields the statistics read."""
    return {"arm": arm, "seed": seed, "commit": "abc1234", "train_seconds": seconds, "shared": shared,
            "hard_groups_per_step": 0.0, "mean_terms": {},
            "verification": {"synth_easy": {"accuracy": easy / 100}, "synth_hard": {"accuracy": hard / 100}}}


BASE = {0: (97.0, 85.0), 1: (97.5, 86.0), 2: (96.8, 84.1), 3: (97.2, 85.5)}
OT = {0: (97.4, 85.2), 1: (97.1, 86.9), 2: (97.3, 84.0), 3: (97.9, 86.1)}


def runs(shift=0.0):
    return ([run("arcface", s, *v) for s, v in BASE.items()]
            + [run("arcface+ot", s, e + shift, h + shift, seconds=360.0, shared=s == 3) for s, (e, h) in OT.items()])


def test_paired_interval_is_scipys_paired_t_interval():
    stats = ot_study.summarise(runs())
    for name, column in (("synth_easy", 0), ("synth_hard", 1)):
        ot = [OT[s][column] for s in range(4)]
        base = [BASE[s][column] for s in range(4)]
        mean, lo, hi, n = stats["arcface+ot"]["paired"][f"{name}/accuracy"]
        want = ttest_rel(ot, base).confidence_interval(0.95)
        assert n == 4
        assert mean == pytest.approx(np.mean(np.subtract(ot, base)))
        assert (lo, hi) == pytest.approx((want.low, want.high))
        assert stats["arcface+ot"]["figures"][f"{name}/accuracy"] == pytest.approx((np.mean(ot), np.std(ot, ddof=1)))


def test_times_come_from_unshared_runs_only():
    stats = ot_study.summarise(runs())
    assert stats["arcface+ot"]["seconds"] == pytest.approx(360.0)
    assert stats["arcface+ot"]["time_ratio"] == pytest.approx((1.2, 3))  # seed 3 shared the machine
    only_shared = ot_study.summarise([run("arcface", 0, 97, 85, shared=True)])
    assert only_shared["arcface"]["seconds"] is None


def test_findings_say_whether_an_interval_excludes_zero():
    unclear = "\n".join(ot_study.findings(ot_study.summarise(runs())))
    assert "Both accuracy intervals contain 0" in unclear
    clear = "\n".join(ot_study.findings(ot_study.summarise(runs(shift=3.0))))  # OT 3 points better everywhere
    assert "arcface+ot (easy: better); arcface+ot (hard: better)" in clear
    assert "20 %" in clear  # 360 s against 300 s, unshared seeds only


def test_a_single_paired_seed_gives_a_difference_and_no_interval():
    stats = ot_study.summarise([run("arcface", 0, 97.0, 85.0), run("ot weight 10", 0, 96.5, 85.5)])
    assert stats["ot weight 10"]["paired"]["synth_easy/accuracy"] == pytest.approx((-0.5, None, None, 1))
    said = "\n".join(ot_study.findings(stats))
    assert "One paired seed so far" in said and "ot weight 10 (easy -0.50, hard +0.50)" in said
    assert "intervals contain 0" not in said


def test_the_plots_are_written_only_from_paired_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(ot_study, "IMAGES", tmp_path)
    assert not ot_study.plot_differences(ot_study.summarise([run("arcface", 0, 97.0, 85.0)]))
    assert not (tmp_path / ot_study.DIFFERENCES_PLOT).exists()
    assert ot_study.plot_differences(ot_study.summarise(runs() + [run("ot weight 10", 0, 96.5, 85.5)]))
    assert ot_study.plot(runs())
    for name in (ot_study.DIFFERENCES_PLOT, ot_study.MAIN_PLOT):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_findings_count_the_arms_below_their_baseline():
    said = "\n".join(ot_study.findings(ot_study.summarise(runs() + [run("ot weight 10", 0, 96.5, 85.5)])))
    # arcface+ot: easy +0.30, hard +0.40 on average; ot weight 10: easy -0.50, hard +0.50
    assert ("of the 2 arms with the OT term, 1 has a lower mean easy accuracy than their baseline, "
            "0 have a lower mean hard accuracy") in said


def test_the_report_says_how_many_planned_runs_are_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(ot_study, "DOC", tmp_path / "experiments.md")
    monkeypatch.setattr(ot_study, "IMAGES", tmp_path)
    data = {"runs": [{**r, "run_seconds": 1.3 * r["train_seconds"], "machine": "test"} for r in runs()]}
    ot_study.write_report(data)
    # 4 of 5 seeds in both main arms, none in the 11 ablation arms (3 seeds each): 2 + 33
    assert "43 runs) has 35 runs to go" in ot_study.DOC.read_text()
    assert (tmp_path / ot_study.DIFFERENCES_PLOT).is_file() and (tmp_path / ot_study.MAIN_PLOT).is_file()
