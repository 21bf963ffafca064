"""The toy classification problem of the sampled quasi-Newton paper (Berahas, Jahani & Takáč).

Two classes of 50 points each in 2-D that no line separates, and fully connected sigmoid networks
with d = 36, 176 and 908 parameters (the poster's "small", "medium" and "large"; hidden widths
2-2-2-2-2-2, 2-4-8-8-4-2 and 2-10-20-20-10-2, each layer followed by a sigmoid, then a final 2 -> 2
linear output layer). The poster does not publish its points; :func:`toy_xor_data` makes a seeded
XOR set: four Gaussian clusters at (+-1, +-1), opposite corners sharing a class.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

#: layer widths of the poster's three networks (input 2, output 2 before the final 2 -> 2 layer)
TOY_WIDTHS: dict[str, tuple[int, ...]] = {
    "small": (2, 2, 2, 2, 2, 2),
    "medium": (2, 4, 8, 8, 4, 2),
    "large": (2, 10, 20, 20, 10, 2),
}


def toy_xor_data(
    n_per_class: int = 50, seed: int = 0, noise: float = 0.35, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """(X, y): ``2 n_per_class`` points in 2-D, labels 0/1; class 0 around (1, 1) and (-1, -1).

    Args:
        n_per_class: points per class (even; half per cluster).
        seed: seed of the generator (the set is identical for equal arguments).
        noise: standard deviation of each cluster.
        dtype: dtype of X.

    Raises:
        ValueError: if ``n_per_class`` is not a positive even number.
    """
    if n_per_class < 2 or n_per_class % 2:
        raise ValueError(f"n_per_class must be a positive even number, got {n_per_class}")
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    k = n_per_class // 2
    X = torch.cat([c + noise * torch.randn(k, 2, generator=g, dtype=torch.float64) for c in centres])
    y = torch.cat([torch.zeros(2 * k, dtype=torch.long), torch.ones(2 * k, dtype=torch.long)])
    return X.to(dtype), y


def toy_sigmoid_network(size: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The poster's sigmoid network ``"small"`` (d = 36), ``"medium"`` (176) or ``"large"`` (908).

    PyTorch's default ``nn.Linear`` initialisation, seeded and drawn in float32 whatever ``dtype`` and
    the global default dtype are (so a seed gives the same network everywhere), then cast.

    Raises:
        ValueError: for an unknown size.
    """
    if size not in TOY_WIDTHS:
        raise ValueError(f"size must be one of {sorted(TOY_WIDTHS)}, got {size!r}")
    widths = TOY_WIDTHS[size]
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b, dtype=torch.float32), nn.Sigmoid()]
    layers.append(nn.Linear(widths[-1], 2, dtype=torch.float32))
    return nn.Sequential(*layers).to(dtype)


__all__ = ["TOY_WIDTHS", "toy_sigmoid_network", "toy_xor_data"]
