"""Models from outside: a bare backbone state dict in insightface's key layout (written here from
our own builder at insightface's settings) evaluated and exported with --arch; ``otface embed``."""

import numpy as np
import pytest
import torch
from PIL import Image

from otface.cli import main
from otface.data.transforms import to_chw
from otface.eval.embed import embed_images
from otface.eval.model import load_model
from otface.models import build_backbone


@pytest.fixture(scope="module")
def state_dict(tmp_path_factory):
    """mbf at insightface's settings (112 px, 512-d), its weights as a model-zoo backbone.pth."""
    torch.manual_seed(5)
    model = build_backbone("mbf", embedding_size=512, input_size=112).eval()
    path = tmp_path_factory.mktemp("zoo") / "backbone.pth"
    torch.save(model.state_dict(), path)
    return model, path


def faces(n, size=112, seed=0):
    g = np.random.default_rng(seed)
    return [g.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_a_state_dict_with_arch_embeds_as_the_model_it_came_from(state_dict):
    model, path = state_dict
    loaded = load_model(path, "cpu", arch="mbf")
    assert loaded.input_size == 112 and loaded.description == f"mbf weights ({path})"
    images = torch.stack([to_chw(f) for f in faces(3)])
    torch.testing.assert_close(embed_images(loaded.model, images, 112), embed_images(model, images, 112))


def test_a_state_dict_without_arch_or_of_another_arch_is_one_line(state_dict, tmp_path, capsys):
    _, path = state_dict
    (tmp_path / "a.bin").write_bytes(b"")
    for extra, message in [([], "a bare state dict, no otface checkpoint: name its architecture with --arch"),
                           (["--arch", "r18"], "its weights do not fit r18 at insightface's settings"),
                           (["--arch", "r7"], "unknown backbone 'r7'")]:
        capsys.readouterr()
        assert main(["eval", str(path), "--bin", str(tmp_path / "a.bin"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("otface: error") == 1 and "Traceback" not in err, err


def test_export_with_arch_to_onnx_and_embed_from_it(state_dict, tmp_path, capsys):
    model, path = state_dict
    assert main(["export", str(path), str(tmp_path / "mbf.onnx"), "--arch", "mbf"]) == 0
    folder = tmp_path / "faces"
    (folder / "b").mkdir(parents=True)
    images = faces(3)
    for name, image in zip(["a.png", "b/c.png", "b/d.jpg"], images):
        Image.fromarray(image).save(folder / name, quality=100)
    for which in (str(path), str(tmp_path / "mbf.onnx")):
        out = tmp_path / f"{len(which)}.npy"
        assert main(["embed", which, str(folder), str(out), "--arch", "mbf"]) == 0
        emb = np.load(out)
        assert (tmp_path / f"{len(which)}.names.txt").read_text().splitlines() == ["a.png", "b/c.png", "b/d.jpg"]
        decoded = torch.stack([to_chw(np.asarray(Image.open(folder / n).convert("RGB")))
                               for n in ["a.png", "b/c.png", "b/d.jpg"]])
        want = embed_images(model, decoded, 112).numpy()
        assert emb.shape == (3, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
        assert np.abs(emb - want).max() <= 1e-4


def test_embed_a_list_and_raw_photos_with_landmarks(state_dict, tmp_path, capsys):
    _, path = state_dict
    photo = np.zeros((150, 150, 3), np.uint8)
    photo[40:110, 40:110] = 200
    (tmp_path / "raw").mkdir()
    Image.fromarray(photo).save(tmp_path / "raw" / "1.png")
    Image.fromarray(photo[:, ::-1].copy()).save(tmp_path / "raw" / "2.png")
    points = "38.3 51.7 73.5 51.5 56.0 71.7 41.5 92.4 70.7 92.2"
    (tmp_path / "lm.txt").write_text(f"1.png {points}\n2.png {points}\n")
    out = tmp_path / "raw.npy"
    assert main(["embed", str(path), str(tmp_path / "raw"), str(out), "--arch", "mbf",
                 "--landmarks", str(tmp_path / "lm.txt")]) == 0
    assert np.load(out).shape == (2, 512)
    assert (tmp_path / "raw.names.txt").read_text().splitlines() == ["1.jpg", "2.jpg"]  # the aligned crops
    (tmp_path / "list.txt").write_text("raw/2.png\n\nraw/1.png\n")
    assert main(["embed", str(path), str(tmp_path / "list.txt"), str(tmp_path / "list.npy"), "--arch", "mbf"]) == 0
    assert (tmp_path / "list.names.txt").read_text().splitlines() == ["raw/2.png", "raw/1.png"]
    assert np.load(tmp_path / "list.npy").shape == (2, 512)
    (tmp_path / "same.names.txt").write_text("raw/1.png\n")  # the index would replace the list
    same = tmp_path / "same.names.txt"
    assert main(["embed", str(path), str(same), str(tmp_path / "same.npy"), "--arch", "mbf"]) == 2
    assert (tmp_path / "same.names.txt").read_text() == "raw/1.png\n"


def test_embed_bad_input_is_one_line(state_dict, tmp_path, capsys):
    _, path = state_dict
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "x.png").write_bytes(b"not a png")
    for args, message in [([str(tmp_path / "faces"), str(tmp_path / "e.bin")], "name the output file *.npy"),
                          ([str(tmp_path / "none"), str(tmp_path / "e.npy")], "no such folder or image list"),
                          ([str(tmp_path / "faces"), str(tmp_path / "e.npy")], "x.png"),
                          ([str(tmp_path), str(tmp_path / "e.npy")], "x.png")]:
        capsys.readouterr()
        assert main(["embed", str(path), *args, "--arch", "mbf"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("otface: error") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize("command", ["embed", "eval"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_batch_size_that_is_no_positive_integer_is_one_line(state_dict, tmp_path, capsys, command, value):
    _, path = state_dict
    args = [str(tmp_path), str(tmp_path / "e.npy")] if command == "embed" else ["--bin", str(tmp_path / "a.bin")]
    with pytest.raises(SystemExit) as exit_:
        main([command, str(path), *args, "--arch", "mbf", "--batch-size", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size: expected an integer >= 1" in err and "Traceback" not in err

