"""Helpers shared by the limited-memory matrix tests (imported as a top-level module by pytest)."""

from __future__ import annotations

import torch

from lightning_sqn.qn.base import LimitedMemoryMatrix


def active_pairs(mat: LimitedMemoryMatrix) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, Y) of the active pairs as rows, oldest first (read slot by slot: independent of the masks)."""
    mem = mat.memory
    idx = [i for i in range(mem.slots) if bool(mem.active[i])]
    idx.sort(key=lambda i: int(mem.serial[i]))
    return mem.S[idx].clone(), mem.Y[idx].clone()
