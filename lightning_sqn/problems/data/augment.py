"""Batched training augmentation on the device: the transformation of a whole batch at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class BatchTransform(Protocol):
    """A random transformation of a whole batch on its device (training augmentation)."""

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Transform ``x`` of shape ``(N, C, H, W)``, drawing random numbers from the CPU ``generator``."""
        ...


class RandomCropFlip:
    """He et al. (2015b), Section 4.2 augmentation, batched: "4 pixels are padded on each side, and a 32x32
    crop is randomly sampled from the padded image or its horizontal flip".

    The offsets and flips are drawn on the CPU from the given generator (``2N`` integers and ``N``
    uniforms per batch) and copied to the batch's device; cropping is one gather.

    Args:
        padding: pixels added on each side.
        fill: value of the padded pixels, a scalar or one per channel (for normalized images the value of a
            black pixel, ``-mean / std``, reproduces padding the raw image with zeros).
        flip: also flip horizontally with probability 1/2.
    """

    def __init__(self, padding: int = 4, fill: float | Sequence[float] = 0.0, flip: bool = True) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding
        self.fill = fill
        self.flip = flip

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        N, C, H, W = x.shape
        p = self.padding
        device = x.device
        fill = torch.as_tensor(self.fill, dtype=x.dtype, device=device).reshape(-1, 1, 1)
        padded = fill.expand(C, H + 2 * p, W + 2 * p).repeat(N, 1, 1, 1)
        padded[:, :, p : p + H, p : p + W] = x
        offsets = torch.randint(0, 2 * p + 1, (2, N), generator=generator).to(device)
        rows = offsets[0, :, None] + torch.arange(H, device=device)
        cols = offsets[1, :, None] + torch.arange(W, device=device)
        if self.flip:
            flips = (torch.rand(N, generator=generator) < 0.5).to(device)
            cols = torch.where(flips[:, None], cols.flip(-1), cols)
        n = torch.arange(N, device=device)[:, None, None, None]
        c = torch.arange(C, device=device)[None, :, None, None]
        return padded[n, c, rows[:, None, :, None], cols[:, None, None, :]]


__all__ = ["BatchTransform", "RandomCropFlip"]
