"""Projectors: patch tokens (N, P, C) of the vision tower -> visual tokens (N, T, D) in the LLM's width.

A string-to-constructor factory (``PROJECTORS``); an unknown name is a ValueError listing the known ones.
- ``mlp_downsample`` (LongVILA/VILA's default): concatenate each 2x2 neighbourhood of the g x g patch grid
  (4C channels; an odd grid is zero-padded on the bottom/right to even), then LayerNorm -> Linear -> GELU
  -> Linear into D. T = ceil(g/2)^2: 729 SigLIP patches -> 196 tokens; the tiny 2x2 grid -> 1 token.
- ``mlp_downsample_3x3``: the same with 3x3 neighbourhoods (9C channels), T = ceil(g/3)^2.
- ``linear``: one Linear C -> D per patch, T = g^2.
The patch tokens come in row-major grid order (see ``vision.py``); the merged tokens keep row-major order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import PROJECTOR_STRIDES, LongVILAConfig


def neighbourhood_concat(x: torch.Tensor, k: int) -> torch.Tensor:
    """Concatenate k x k neighbourhoods of a square patch grid.

    x: (N, g*g, C) in row-major order -> (N, ceil(g/k)^2, k*k*C). Channels are ordered by the
    neighbour's (row, column) within the block, then by the original channel.
    """
    n, p, c = x.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"projector: {p} patch tokens do not form a square grid")
    x = x.reshape(n, g, g, c)
    gp = math.ceil(g / k) * k
    if gp != g:
        x = F.pad(x, (0, 0, 0, gp - g, 0, gp - g))  # zero-pad columns then rows (bottom/right)
    b = gp // k
    x = x.reshape(n, b, k, b, k, c).permute(0, 1, 3, 2, 4, 5)  # (N, bi, bj, ki, kj, C)
    return x.reshape(n, b * b, k * k * c)


class MLPDownsampleProjector(nn.Module):
    """k x k neighbour concat -> LayerNorm -> Linear -> GELU -> Linear; (N, P, C) -> (N, T, D)."""

    def __init__(self, vision_hidden: int, llm_hidden: int, k: int = 2):
        super().__init__()
        self.k = k
        self.norm = nn.LayerNorm(k * k * vision_hidden)
        self.fc1 = nn.Linear(k * k * vision_hidden, llm_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(llm_hidden, llm_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(neighbourhood_concat(x, self.k)))))


class LinearProjector(nn.Module):
    """One Linear per patch token; (N, P, C) -> (N, P, D)."""

    def __init__(self, vision_hidden: int, llm_hidden: int):
        super().__init__()
        self.proj = nn.Linear(vision_hidden, llm_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


PROJECTORS = {
    "mlp_downsample": lambda c, d: MLPDownsampleProjector(c, d, k=2),
    "mlp_downsample_3x3": lambda c, d: MLPDownsampleProjector(c, d, k=3),
    "linear": LinearProjector,
}
assert set(PROJECTORS) == set(PROJECTOR_STRIDES)


def build_projector(config: LongVILAConfig) -> nn.Module:
    """The projector named by ``config.projector``: (N, P, vision_hidden_size) -> (N, T, text hidden)."""
    name = config.projector
    if name not in PROJECTORS:
        raise ValueError(f"projector: unknown projector {name!r}; known: {sorted(PROJECTORS)}")
    return PROJECTORS[name](config.vision_hidden_size, config.text_config.hidden_size)
