"""The registry of auxiliary losses (SPEC §3), which register where they are defined.

An auxiliary loss is an ``nn.Module`` whose constructor takes what it needs among
``embedding_size`` and ``num_classes`` plus keyword hyper-parameters, with
``forward(embeddings, labels, head=None) -> scalar``; ``@AUX_LOSSES.register("name")`` on its class.
"""

from __future__ import annotations

from torch import nn

from otface.registry import Registry

AUX_LOSSES: Registry[nn.Module] = Registry("auxiliary loss")
