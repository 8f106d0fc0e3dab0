"""Float64 ArcFace / CosFace logits written from the papers, for the tests of heads built on them."""

from __future__ import annotations

import math

import torch


def reference_logits(kind, emb, weight, labels, s, m):
    """Float64 ArcFace / CosFace logits written from the papers (differentiable), independent of otface.heads."""
    x, w = emb.double(), weight.double()
    cos = (x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()
    rows = []
    for i, y in enumerate(labels.tolist()):
        c = cos[i, y]
        if kind == "arcface":  # cos(theta + m), insightface's c - m sin(m) once theta + m > pi
            theta = torch.acos(c)
            target = torch.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
        else:
            target = c - m
        rows.append(torch.cat([cos[i, :y], target.reshape(1), cos[i, y + 1:]]))
    return s * torch.stack(rows)
