r"""Data sets of Martens (2010) that are not files here: CURVES (regenerated) and FACES (user-supplied).

**CURVES** (Hinton & Salakhutdinov 2006; Martens 2010, 20,000 training / 10,000 test images) is itself
synthetic: 28 x 28 grey images of one smooth curve each, drawn from three randomly chosen points in the
plane, which is why its autoencoder has a 6-unit code (3 points x 2 coordinates). The original files are
not available offline and their generator is not published with the papers, so :func:`make_curves`
regenerates the set from that description; what it fixes that the description does not is our choice:

* three control points :math:`P_0, P_1, P_2` uniform in the square ``[margin, 27 - margin]^2`` of pixel
  centres (pixel ``(r, c)`` has centre ``(c, r)``, 0-based), independently per image;
* the curve is the quadratic through them, :math:`\gamma(t) = P_0 \ell_0(t) + P_1 \ell_1(t) + P_2
  \ell_2(t)` with the Lagrange basis of the nodes ``t = 0, 1/2, 1`` (so it passes through all three),
  sampled at ``samples`` equally spaced ``t`` in [0, 1];
* a pixel's intensity is :math:`\max_t \exp(-\|c - \gamma(t)\|^2 / (2 w^2))` for its centre ``c`` and
  stroke width ``w`` (0.7 pixels): an anti-aliased stroke with values in [0, 1], as the logistic output
  units and the cross-entropy loss need.

Every number measured on it is on *regenerated data, comparable in scale only* with the papers'.

**FACES** (625 = 25 x 25 pixels; 103,500 training images in Martens' table) cannot be obtained offline:
:class:`FacesDataModule` reads it from ``<data_dir>/FACES/{train,test}.npz`` that a user supplies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_sqn.problems.data.batches import Split
from lightning_sqn.problems.data.datamodule import TensorDataModule

#: the image side of CURVES (28 x 28 pixels, as MNIST)
CURVES_SIDE = 28


def make_curves(
    n: int,
    seed: int,
    *,
    width: float = 0.7,
    margin: float = 2.0,
    samples: int = 64,
    chunk: int = 500,
) -> Tensor:
    """``n`` CURVES images ``(n, 1, 28, 28)`` in float32 with values in [0, 1] (see the module docstring).

    The set is a function of its arguments only (a seeded ``torch.Generator`` on the CPU).

    Args:
        n: number of images (>= 1).
        seed: seed of the control points.
        width: stroke width ``w`` in pixels (> 0).
        margin: distance of the control points from the border, in pixels (in [0, 13)).
        samples: points sampled along each curve (>= 3).
        chunk: images rendered at once (memory ``chunk x samples x 784`` floats).

    Raises:
        ValueError: an argument outside its range.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    if not 0 <= margin < (CURVES_SIDE - 1) / 2:
        raise ValueError(f"margin must be in [0, {(CURVES_SIDE - 1) / 2}), got {margin!r}")
    if not isinstance(samples, int) or samples < 3:
        raise ValueError(f"samples must be an integer >= 3, got {samples!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    g = torch.Generator().manual_seed(seed)
    span = CURVES_SIDE - 1 - 2 * margin
    points = margin + span * torch.rand(n, 3, 2, generator=g, dtype=torch.float64)  # (n, P_i, (x, y))
    t = torch.linspace(0.0, 1.0, samples, dtype=torch.float64)
    # Lagrange basis of the nodes 0, 1/2, 1: the quadratic passes through P_0, P_1, P_2
    basis = torch.stack([2 * (t - 0.5) * (t - 1), -4 * t * (t - 1), 2 * t * (t - 0.5)], dim=1)  # (samples, 3)
    curves = torch.einsum("sk,nkd->nsd", basis, points)  # (n, samples, 2)
    rows, cols = torch.meshgrid(
        torch.arange(CURVES_SIDE, dtype=torch.float64),
        torch.arange(CURVES_SIDE, dtype=torch.float64),
        indexing="ij",
    )
    centres = torch.stack([cols.flatten(), rows.flatten()], dim=1)  # (784, (x, y))
    images = torch.empty(n, CURVES_SIDE * CURVES_SIDE, dtype=torch.float64)
    for start in range(0, n, chunk):
        part = curves[start : start + chunk]
        d2 = torch.cdist(centres.expand(part.shape[0], -1, -1), part).pow(2).amin(dim=2)  # (chunk, 784)
        images[start : start + chunk] = torch.exp(-d2 / (2 * width**2))
    return images.reshape(n, 1, CURVES_SIDE, CURVES_SIDE).float()


class CurvesDataModule(TensorDataModule):
    """CURVES, regenerated (:func:`make_curves`): 20,000 training and 10,000 test images by default.

    Inputs ``(N, 1, 28, 28)`` in [0, 1] (the autoencoder's BCE targets); labels are zeros (an
    autoencoder ignores them). The training set uses ``data_seed``, the test set ``data_seed + 1``, so the
    two are disjoint draws of the same distribution and a seed gives the same set on every machine.

    Args:
        batch_size: global training batch size.
        num_train: training images (Martens: 20,000).
        num_test: test images (10,000).
        data_seed: seed of the images (independent of ``seed``, which shuffles the batches).
        **kwargs: the options of :class:`TensorDataModule`.
    """

    def __init__(
        self,
        batch_size: int,
        *,
        num_train: int = 20_000,
        num_test: int = 10_000,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        for name, value in (("num_train", num_train), ("num_test", num_test)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.num_train, self.num_test, self.data_seed = num_train, num_test, data_seed

    def load_splits(self) -> dict[str, Split]:
        splits = {}
        for name, n, seed in (
            ("train", self.num_train, self.data_seed),
            ("test", self.num_test, self.data_seed + 1),
        ):
            x = make_curves(n, seed)
            splits[name] = (x, torch.zeros(n, dtype=torch.long))
        return splits


class FacesDataModule(TensorDataModule):
    """FACES (Martens 2010: 625-pixel images, 103,500 for training), read from files a user supplies.

    Expects ``<data_dir>/FACES/train.npz`` and ``test.npz``, each with an array ``x`` of shape
    ``(N, 625)`` or ``(N, 25, 25)`` and values in [0, 1] (the BCE targets of
    :class:`~lightning_sqn.problems.reconstruction.ReconstructionTask`). Inputs become ``(N, 1, 25, 25)``
    float; labels are zeros. Nothing is downloaded: the set is not distributed with a license that lets
    this package fetch it.

    Args:
        data_dir: the root holding ``FACES/``.
        batch_size: global training batch size.
        **kwargs: the options of :class:`TensorDataModule`.

    Raises:
        FileNotFoundError: (at ``setup``) a file is missing; the message names both.
        ValueError: (at ``setup``) an array without ``x``, of the wrong size, or with values outside [0, 1].
    """

    SIDE = 25

    def __init__(self, data_dir: str | Path, batch_size: int, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.data_dir = Path(data_dir)

    def load_splits(self) -> dict[str, Split]:
        folder = self.data_dir / "FACES"
        splits = {}
        for name in ("train", "test"):
            path = folder / f"{name}.npz"
            if not path.is_file():
                raise FileNotFoundError(
                    f"FACES needs {folder / 'train.npz'} and {folder / 'test.npz'} (arrays 'x' of shape "
                    f"(N, 625) with values in [0, 1]); {path} is missing. The set cannot be downloaded here."
                )
            with np.load(path) as data:
                if "x" not in data:
                    raise ValueError(f"{path} has no array 'x' (found {sorted(data.files)})")
                x = torch.from_numpy(np.asarray(data["x"], dtype=np.float32))
            if x[0].numel() != self.SIDE * self.SIDE:
                raise ValueError(
                    f"{path}: images must have {self.SIDE * self.SIDE} pixels, got shape {tuple(x.shape)}"
                )
            if x.numel() and (x.min() < 0 or x.max() > 1):
                raise ValueError(f"{path}: pixel values must be in [0, 1] (they are the BCE targets)")
            splits[name] = (x.reshape(-1, 1, self.SIDE, self.SIDE), torch.zeros(x.shape[0], dtype=torch.long))
        return splits


__all__ = ["CURVES_SIDE", "CurvesDataModule", "FacesDataModule", "make_curves"]
