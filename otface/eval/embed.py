"""Embedding extraction for evaluation: image + horizontally flipped image, summed, normalised."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from otface.data.formats.folder import IMAGE_EXTENSIONS
from otface.data.text import numbered_lines
from otface.data.transforms import network_input, read_image, to_chw
from otface.errors import ConfigError, DataError, InputNotFoundError, ModelFileError
from otface.progress import progress_bar


def extract_embeddings(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    flip: bool = True,
    progress: bool = False,
    normalize: bool = True,
) -> torch.Tensor:
    """(N, 3, H, W) normalised float images -> (N, E) float32 L2-normalised embeddings on the CPU.

    With ``flip`` the embedding is model(x) + model(x flipped left-right) before normalisation
    (insightface's ``verification.test``); ``normalize=False`` returns it unnormalised, keeping
    the feature norm (the "norm score" of IJB templates). The model runs in eval mode under
    inference_mode on ``device`` (default: where its parameters are); every submodule's training
    flag is restored afterwards. ``progress`` shows a tqdm bar. A model that gives NaN or
    infinite embeddings (diverged or damaged weights) is a :class:`ModelFileError`.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in progress_bar(range(0, len(images), batch_size), desc="embed", enabled=progress):
                x = images[start : start + batch_size].to(device, non_blocking=True)
                emb = model(x).float()
                if flip:
                    emb = emb + model(torch.flip(x, dims=[3])).float()
                out.append((F.normalize(emb, dim=1) if normalize else emb).cpu())
    finally:
        for m, training in modes:
            m.training = training
    if not out:
        raise ValueError("no images to embed")
    emb = torch.cat(out)
    bad = int((~torch.isfinite(emb).all(dim=1)).sum())
    if bad:
        raise ModelFileError(f"the model gives NaN or infinite embeddings for {bad} of {len(emb)} images: "
                             "its weights are diverged or damaged")
    return emb


def embed_images(
    model: nn.Module,
    images: torch.Tensor,
    input_size: int,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) -> (N, E) L2-normalised flip-summed embeddings on the CPU.

    Batches become network inputs of side ``input_size`` (``transforms.network_input``) one at a
    time, so only ``batch_size`` float images exist at once.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"embed_images expects uint8 images, got {images.dtype}")
    chunks = []
    for start in range(0, len(images), batch_size):
        x = network_input(images[start : start + batch_size], input_size)
        chunks.append(extract_embeddings(model, x, batch_size=batch_size, device=device))
    if not chunks:
        raise ValueError("no images to embed")
    return torch.cat(chunks)


def image_list(source: str | os.PathLike) -> tuple[Path, list[str]]:
    """(root, names) of the images to embed: every image file under the folder ``source`` (sorted
    relative paths; hidden files and folders skipped), or the paths listed one per line in the
    text file ``source``, relative to its folder (blank lines skipped)."""
    source = Path(source)
    if source.is_dir():
        found = (p.relative_to(source) for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        names = sorted(p.as_posix() for p in found
                       if not any(part.startswith(".") for part in p.parts) and (source / p).is_file())
        root = source
    elif source.is_file():
        names = [line.strip() for _, line in numbered_lines(source) if line.strip()]
        root = source.parent
    else:
        raise InputNotFoundError(f"{source}: no such folder or image list")
    if not names:
        raise DataError(f"{source}: no image to embed (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return root, names


def embed_files(model: nn.Module, root: Path, names: list[str], input_size: int, batch_size: int = 256,
                device: torch.device | str | None = None, progress: bool = True) -> torch.Tensor:
    """(N, E) L2-normalised flip-summed embeddings of the images ``root / name`` (aligned faces of
    any size, resized to ``input_size``), in the order of ``names``; an image that cannot be read
    is a :class:`DataError` naming it."""
    chunks = []
    for start in progress_bar(range(0, len(names), batch_size), desc="embed", enabled=progress):
        inputs = []
        for name in names[start : start + batch_size]:
            try:
                image = read_image(root / name)
            except DataError as err:
                raise DataError(f"{root / name}: {err}") from None
            inputs.append(network_input(to_chw(image)[None], input_size))
        chunks.append(extract_embeddings(model, torch.cat(inputs), batch_size=batch_size, device=device))
    return torch.cat(chunks)
