import pytest

from otface.train.schedule import lr_factor


def test_step_decay_at_milestones():
    # 10 steps per epoch, milestones at epochs 10, 18, 22 (the paper's recipe)
    f = [lr_factor(s, 10, [10, 18, 22]) for s in (0, 99, 100, 179, 180, 220, 239)]
    assert f == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_linear_warmup_then_flat():
    f = [lr_factor(s, 4, [100], warmup_epochs=1) for s in range(6)]
    assert f == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_bad_steps_per_epoch():
    with pytest.raises(ValueError):
        lr_factor(0, 0, [])
