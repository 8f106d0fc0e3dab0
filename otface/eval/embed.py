"""Embedding extraction for evaluation: image + horizontally flipped image, summed, normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def extract_embeddings(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    flip: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """(N, 3, H, W) normalised float images -> (N, E) float32 L2-normalised embeddings on the CPU.

    With ``flip`` the embedding is model(x) + model(flip(x)) before normalisation (insightface's
    protocol). The model is run in eval mode under inference_mode; its mode is restored after.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(images), batch_size), desc="embed", disable=not progress):
                x = images[start : start + batch_size].to(device, non_blocking=True)
                emb = model(x).float()
                if flip:
                    emb = emb + model(torch.flip(x, dims=[3])).float()
                out.append(F.normalize(emb, dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
