"""The toy classification problem of the sampled quasi-Newton paper (Berahas, Jahani & Takáč).

Two classes of 50 points each in 2-D and fully connected sigmoid networks with d = 36, 176 and 908
parameters (the poster's "small", "medium" and "large"). The networks (as in the authors' public code,
github.com/OptMLGroup/SQN, ``network.py``): five sigmoid hidden layers of widths 2-2-2-2-2, 4-8-8-4-2
and 10-20-20-10-2, then a linear 2-unit output layer, softmax cross entropy (mean over the points).

Data sets:

* :func:`toy_sin_data`, the authors' "sin classification problem" (their ``data_generation.py`` and
  README): ``x_i = i / n`` for ``i = 0..n-1``; class 1 at ``(x_i, sin(8 x_i) + 0.8)``, class 0 at
  ``(x_i, sin(8 x_i) - 0.8)``: two sine-shaped rows of points 1.6 apart vertically, separable only by
  a curved boundary. Deterministic (no noise, no seed). This is the poster's data set.
* :func:`toy_xor_data`: a seeded XOR set (four Gaussian clusters at (+-1, +-1), opposite corners sharing
  a class), kept as a second, noisier problem for the tests.

Initialisations: PyTorch's default ``nn.Linear`` one, or the authors' (``init="authors"``): every weight
and bias drawn from a normal with standard deviation ``1/d`` truncated at two standard deviations
(TensorFlow's ``truncated_normal``), so the network starts next to the point where every unit outputs
1/2, where first-order methods stall.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sqn.problems.data.batches import Split
from lightning_sqn.problems.data.datamodule import TensorDataModule

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


def toy_sin_data(
    n_per_class: int = 50, freq: float = 8.0, offset: float = 0.8, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """(X, y): the authors' sin problem (module docstring); class 1 first, as in their code.

    Args:
        n_per_class: points per class (the poster: 50).
        freq: the sine's frequency (8).
        offset: half the vertical distance between the classes (0.8).
        dtype: dtype of X.

    Raises:
        ValueError: if ``n_per_class < 1`` or ``offset <= 0``.
    """
    if not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    if not offset > 0:
        raise ValueError(f"offset must be > 0 (the classes would overlap), got {offset!r}")
    x = torch.arange(n_per_class, dtype=torch.float64) / n_per_class
    wave = torch.sin(freq * x)
    X = torch.cat([torch.stack([x, wave + offset], 1), torch.stack([x, wave - offset], 1)])
    y = torch.cat([torch.ones(n_per_class, dtype=torch.long), torch.zeros(n_per_class, dtype=torch.long)])
    return X.to(dtype), y


def toy_sigmoid_network(
    size: str,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
    init: str = "default",
) -> nn.Sequential:
    """The poster's sigmoid network ``"small"`` (d = 36), ``"medium"`` (176) or ``"large"`` (908).

    Drawn in float32 whatever ``dtype`` and the global default dtype are (so a seed gives the same
    network everywhere), then cast. A ``seed`` seeds the global RNG (``torch.manual_seed``) first.

    Args:
        size: ``"small"``, ``"medium"`` or ``"large"``.
        seed: seeds the initialisation (``None``: the global RNG, e.g. LightningCLI's
            ``seed_everything``).
        dtype: the parameters' dtype.
        init: ``"default"`` (PyTorch's ``nn.Linear`` initialisation) or ``"authors"`` (truncated normal
            with standard deviation ``1/d``, weights and biases; the module docstring).

    Raises:
        ValueError: for an unknown size or ``init``.
    """
    if size not in TOY_WIDTHS:
        raise ValueError(f"size must be one of {sorted(TOY_WIDTHS)}, got {size!r}")
    if init not in ("default", "authors"):
        raise ValueError(f"init must be 'default' or 'authors', got {init!r}")
    widths = TOY_WIDTHS[size]
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b, dtype=torch.float32), nn.Sigmoid()]
    layers.append(nn.Linear(widths[-1], 2, dtype=torch.float32))
    net = nn.Sequential(*layers)
    if init == "authors":
        d = sum(p.numel() for p in net.parameters())
        with torch.no_grad():
            for p in net.parameters():
                nn.init.trunc_normal_(p, std=1.0 / d, a=-2.0 / d, b=2.0 / d)
    return net.to(dtype)


class ToyDataModule(TensorDataModule):
    """A toy problem trained deterministically: every step sees all ``2 n_per_class`` points.

    The training split is the data set repeated ``steps_per_epoch`` times, unshuffled, in batches of the
    whole set: an "epoch" is ``steps_per_epoch`` full-batch iterations (Lightning's per-epoch overhead
    is paid once per that many iterations). The test split is the data set itself, so ``test/error`` is
    the training error. Under DDP each rank takes its share of every full batch (the global batch is the
    whole set), so the ranks together compute the full-batch loss and gradient.

    Args:
        problem: ``"sin"`` (:func:`toy_sin_data`, the poster's) or ``"xor"`` (:func:`toy_xor_data`).
        n_per_class: points per class (50).
        steps_per_epoch: full-batch iterations per epoch (>= 1).
        data_seed: seed of the ``"xor"`` points (the sin set has none).
        dtype: the inputs' dtype (float64, as the authors' code).
        **kwargs: the options of :class:`~lightning_sqn.problems.data.TensorDataModule` but
            ``batch_size``, ``shuffle``, ``train_subset`` and ``val_size`` (the batch is the whole set).

    Raises:
        ValueError: unknown ``problem``, ``steps_per_epoch < 1``, or one of the options above.
    """

    def __init__(
        self,
        problem: str = "sin",
        *,
        n_per_class: int = 50,
        steps_per_epoch: int = 50,
        data_seed: int = 0,
        dtype: torch.dtype = torch.float64,
        **kwargs: Any,
    ) -> None:
        if problem not in ("sin", "xor"):
            raise ValueError(f"problem must be 'sin' or 'xor', got {problem!r}")
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
        fixed = {"batch_size": None, "shuffle": None, "train_subset": None, "val_size": 0}
        given = sorted(k for k, default in fixed.items() if k in kwargs and kwargs[k] != default)
        if given:
            raise ValueError(f"ToyDataModule trains on the whole set at every step; drop {', '.join(given)}")
        kwargs = {k: v for k, v in kwargs.items() if k not in fixed}
        super().__init__(batch_size=2 * n_per_class, shuffle=False, dtype=dtype, **kwargs)
        self.problem, self.n_per_class = problem, n_per_class
        self.steps_per_epoch, self.data_seed = steps_per_epoch, data_seed

    def load_splits(self) -> dict[str, Split]:
        if self.problem == "sin":
            X, y = toy_sin_data(self.n_per_class)
        else:
            X, y = toy_xor_data(self.n_per_class, seed=self.data_seed)
        repeats = self.steps_per_epoch
        return {"train": (X.repeat(repeats, 1), y.repeat(repeats)), "test": (X, y)}


__all__ = ["TOY_WIDTHS", "ToyDataModule", "toy_sigmoid_network", "toy_sin_data", "toy_xor_data"]
