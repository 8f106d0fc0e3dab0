import io

import numpy as np
import pytest
import torch
from PIL import Image

from otface.data import transforms
from otface.data.transforms import decode_image, normalize, resize, to_chw


def _encode(array: np.ndarray, mode: str, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, fmt)
    return buf.getvalue()


def test_decode_png_is_exact_and_rgb_ordered():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)
    out = decode_image(_encode(image, "RGB"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, image)
    assert out[0, 0].tolist() == [255, 0, 0]  # red stays in channel 0


def test_decode_grey_and_rgba_become_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = decode_image(_encode(grey, "L"))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 255
    np.testing.assert_array_equal(decode_image(_encode(rgba, "RGBA")), rgba[..., :3])


@pytest.fixture(params=["simplejpeg", "pillow"])
def decoder(request, monkeypatch):
    """decode_image through the fast JPEG path and through the Pillow fallback."""
    if request.param == "simplejpeg":
        pytest.importorskip("simplejpeg")
    else:
        monkeypatch.setattr(transforms, "simplejpeg", None)
    return transforms.decode_image


@pytest.mark.parametrize("mode,subsampling", [("RGB", 0), ("RGB", 1), ("RGB", 2), ("L", 0), ("CMYK", 0)])
def test_decode_jpeg_gives_pillows_pixels(decoder, mode, subsampling):
    """The fast path (simplejpeg) and the Pillow fallback agree with Pillow pixel for pixel."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, subsampling=subsampling)
    with Image.open(io.BytesIO(buf.getvalue())) as reference:
        expected = np.asarray(reference.convert("RGB"))
    np.testing.assert_array_equal(decoder(buf.getvalue()), expected)


def test_decode_rejects_garbage_and_truncation(decoder):
    with pytest.raises(ValueError, match="cannot decode image"):
        decoder(b"not an image")
    jpeg = _encode(np.full((32, 32, 3), 90, np.uint8), "RGB", "JPEG")
    with pytest.raises(ValueError, match="cannot decode image"):
        decoder(jpeg[: len(jpeg) // 2])



def test_decode_rejects_damaged_jpeg_scan():
    pytest.importorskip("simplejpeg")  # Pillow decodes such data with a libjpeg warning only
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = bytearray(_encode(noise, "RGB", "JPEG"))
    jpeg[len(jpeg) // 2 : len(jpeg) // 2 + 40] = bytes(40)  # zeros inside the entropy-coded scan
    with pytest.raises(ValueError, match="damaged JPEG"):
        decode_image(bytes(jpeg))


def test_to_chw_layout():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = to_chw(image)
    assert t.shape == (3, 2, 3) and t.dtype == torch.uint8
    assert t[2, 1, 0].item() == image[1, 0, 2]
    with pytest.raises(ValueError):
        to_chw(image.astype(np.float32))


def test_normalize_values_and_shape():
    x = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    y = normalize(x)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 1, 4)
    expected = torch.tensor([-1.0, (64 - 127.5) / 127.5, (128 - 127.5) / 127.5, 1.0])
    torch.testing.assert_close(y[1, 2, 0], expected)
    with pytest.raises(TypeError):
        normalize(x.float())
    with pytest.raises(ValueError):
        normalize(torch.zeros(4, 5, 5, dtype=torch.uint8))


def test_resize_keeps_size_or_averages_when_shrinking():
    x = torch.rand(3, 8, 8)
    assert resize(x, 8) is x
    checker = torch.zeros(2, 3, 8, 8)
    checker[..., ::2, ::2] = checker[..., 1::2, 1::2] = 1.0  # mean 0.5 everywhere at half size
    y = resize(checker, 4)
    assert y.shape == (2, 3, 4, 4)
    torch.testing.assert_close(y, torch.full_like(y, 0.5), atol=0.05, rtol=0)


def test_items_are_uint8_and_network_input_normalises_then_resizes():
    image = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = transforms.to_chw(image)
    assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(image).permute(2, 0, 1))
    batch = torch.stack([x, transforms.to_chw(image[:, ::-1].copy())])
    torch.testing.assert_close(transforms.network_input(batch, 8), (batch.float() - 127.5) / 127.5)
    torch.testing.assert_close(transforms.network_input(batch, 4), resize(normalize(batch), 4))


def test_read_image_gives_the_reason_for_the_caller_to_name_the_file(tmp_path):
    image = np.random.default_rng(4).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(_encode(image, "RGB"))
    np.testing.assert_array_equal(transforms.read_image(tmp_path / "a.png", (6, 9)), image)
    with pytest.raises(ValueError, match=r"^image is 9x6, expected 9x9$"):
        transforms.read_image(tmp_path / "a.png", (9, 9))
    with pytest.raises(ValueError, match=r"^cannot read \(FileNotFoundError"):
        transforms.read_image(tmp_path / "missing.png")
    (tmp_path / "b.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="^cannot decode image"):
        transforms.read_image(tmp_path / "b.png")


def test_flip_draws_are_a_function_of_seed_epoch_and_batch():
    draws = {(seed, epoch, batch): transforms.flip_draws(seed, epoch, batch, 64)
             for seed in (0, 1) for epoch in (0, 3) for batch in (0, 7)}
    for key, flips in draws.items():
        assert flips.dtype == torch.bool and flips.shape == (64,)
        assert torch.equal(flips, transforms.flip_draws(*key, 64))  # the same whenever drawn
        assert torch.equal(transforms.flip_draws(*key, 10), flips[:10])  # a short batch: its first draws
    assert len({tuple(f.tolist()) for f in draws.values()}) == len(draws)  # every position its own draws
    rate = torch.stack([transforms.flip_draws(0, 0, b, 256) for b in range(100)]).float().mean()
    assert abs(rate - 0.5) < 0.01  # p = 1/2: 25600 draws, std 0.003


def test_flip_images_mirrors_exactly_the_chosen_images():
    images = torch.arange(4 * 3 * 2 * 5, dtype=torch.uint8).reshape(4, 3, 2, 5)
    flips = torch.tensor([True, False, False, True])
    out = transforms.flip_images(images, flips)
    for i in range(4):
        expected = images[i, :, :, torch.arange(4, -1, -1)] if flips[i] else images[i]
        assert torch.equal(out[i], expected)
    with pytest.raises(ValueError, match=r"flips must be \(4,\)"):
        transforms.flip_images(images, flips[:3])
