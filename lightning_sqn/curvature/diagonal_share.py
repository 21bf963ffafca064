r"""How diagonal a Hessian is: the share of its absolute mass on the diagonal (Kohler, Adolphs & Lucchi,
Sec. 3.2 and App. D, after Becker & LeCun 1988),

.. math::
    \delta(A) = \frac{\sum_i |a_{ii}|}{\sum_{i,j} |a_{ij}|} \in (0, 1].

* :func:`diagonal_share`: :math:`\delta` of a dense matrix.
* :func:`wigner_share` (Prop. 1) and :func:`ols_share` (Prop. 2): the baselines a network's Hessian is set
  against, :math:`\delta(\mathbb{E}|W|)` of an :math:`n \times n` Gaussian Wigner matrix and
  :math:`\delta(\mathbb{E}|H|)` of an ordinary-least-squares Hessian :math:`H = X^\top X / b` of ``b``
  i.i.d. zero-mean inputs in :math:`\mathbb{R}^d`.
* :func:`hessian_diagonal_share`: :math:`\delta` of a network's loss Hessian from Hessian columns
  :math:`H e_i` (one Hessian-vector product each), all of them (exact, never storing :math:`H`) or a
  sample of them stratified by parameter tensor (the estimator of :class:`DiagonalShare`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_sqn.curvature.hvp import hvp_functional

__all__ = ["DiagonalShare", "diagonal_share", "hessian_diagonal_share", "ols_share", "wigner_share"]


def diagonal_share(A: Tensor) -> float:
    r""":math:`\delta(A) = \sum_i |a_{ii}| / \sum_{i,j} |a_{ij}|` of a square matrix.

    Raises:
        ValueError: ``A`` is not square or is zero.
    """
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
    total = A.abs().sum()
    if total == 0:
        raise ValueError("the diagonal share of a zero matrix is undefined")
    return float(A.diagonal().abs().sum() / total)


def wigner_share(n: int, sigma_diag: float = 1.0, sigma_off: float = 1.0) -> float:
    r"""Prop. 1: :math:`\delta(\mathbb{E}|W|)` of an ``n x n`` symmetric Wigner matrix with diagonal entries
    :math:`N(0, \sigma_d^2)` and off-diagonal entries :math:`N(0, \sigma_o^2)`.

    :math:`\mathbb{E}|N(0, \sigma^2)| = \sigma \sqrt{2/\pi}`, so
    :math:`\delta = n\sigma_d / (n\sigma_d + n(n-1)\sigma_o) = \sigma_d / (\sigma_d + (n-1)\sigma_o)`,
    which is :math:`1/n` for equal variances.

    Raises:
        ValueError: ``n`` < 1 or a non-positive sigma.
    """
    if n < 1 or sigma_diag <= 0 or sigma_off <= 0:
        raise ValueError(f"need n >= 1 and positive sigmas, got n={n}, {sigma_diag}, {sigma_off}")
    return sigma_diag / (sigma_diag + (n - 1) * sigma_off)


def ols_share(d: int, b: int) -> float:
    r"""Prop. 2: :math:`\delta(\mathbb{E}|H|)` of the OLS Hessian
    :math:`H = \frac1b \sum_{k=1}^b x_k x_k^\top`
    for ``b`` i.i.d. inputs :math:`x_k \in \mathbb{R}^d` with zero-mean, independent coordinates of variance
    :math:`\sigma^2`, for large ``b``.

    The diagonal entries average squares: :math:`\mathbb{E}|h_{ii}| = \sigma^2`. An off-diagonal entry is the
    mean of ``b`` i.i.d. products of variance :math:`\sigma^4`; by the central limit theorem it is close to
    :math:`N(0, \sigma^4/b)`, so :math:`\mathbb{E}|h_{ij}| \approx \sigma^2 \sqrt{2/(\pi b)}` and

    .. math::
        \delta \approx \frac{1}{1 + (d-1)\sqrt{2/(\pi b)}}.

    Raises:
        ValueError: ``d`` or ``b`` < 1.
    """
    if d < 1 or b < 1:
        raise ValueError(f"need d >= 1 and b >= 1, got d={d}, b={b}")
    return 1.0 / (1.0 + (d - 1) * math.sqrt(2.0 / (math.pi * b)))


@dataclass(frozen=True)
class DiagonalShare:
    r""":math:`\delta(H)` of a Hessian from ``columns`` of its ``n`` columns.

    The columns are sampled per parameter tensor (stratum :math:`l` of size :math:`n_l`; the columns of one
    tensor are alike, those of different tensors are not), :math:`k_l` of them uniformly without
    replacement, :math:`k_l \approx k\, n_l / n` and at least :math:`\min(n_l, 2)`. With
    :math:`a_i = |h_{ii}|` and :math:`c_i = \|H e_i\|_1`, the stratified sums
    :math:`\hat A = \sum_l \frac{n_l}{k_l} \sum_{i \in I_l} a_i` and
    :math:`\hat C = \sum_l \frac{n_l}{k_l} \sum_{i \in I_l} c_i` are unbiased for
    :math:`\sum_i |h_{ii}|` and :math:`\sum_{ij} |h_{ij}|`; ``value`` is their ratio
    :math:`\hat\delta = \hat A / \hat C` (consistent, with a bias of order :math:`1/k`). ``stderr`` is its
    delta-method standard error,
    :math:`\sqrt{\sum_l n_l^2 (1 - k_l/n_l)\, s_l^2 / k_l} / \hat C` with :math:`s_l^2` the sample variance
    of :math:`a_i - \hat\delta c_i` in stratum :math:`l`; zero when every column was used (then ``value``
    is exact).
    """

    value: float
    stderr: float
    n: int
    columns: int

    @property
    def exact(self) -> bool:
        return self.columns == self.n


def _allocate(sizes: Sequence[int], k: int) -> list[int]:
    """Columns per stratum: proportional to its size, at least ``min(size, 2)``, at most its size."""
    n = sum(sizes)
    return [min(size, max(2, round(k * size / n))) for size in sizes]


def hessian_diagonal_share(
    module: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    columns: int | None = None,
    chunk: int = 64,
    generator: torch.Generator | None = None,
) -> DiagonalShare:
    r""":math:`\delta` of the Hessian of ``loss_fn(module(inputs), targets)`` with respect to
    ``list(module.parameters())``, from Hessian columns :math:`H e_i` (:func:`hvp_functional`, ``chunk``
    columns per vmapped call; :math:`H` is never stored).

    Args:
        columns: about how many columns to sample, stratified by parameter tensor (see
            :class:`DiagonalShare`; ``generator`` draws them); ``None`` or ``n`` uses all of them, which makes
            the value exact (``n`` products).
        chunk: columns per batched product (memory: ``chunk`` n-vectors and ``chunk`` copies of the
            network's activations).

    Raises:
        ValueError: ``columns`` outside [2, n] or ``chunk`` < 1.
    """
    sizes = [p.numel() for p in module.parameters()]
    n = sum(sizes)
    k = n if columns is None else int(columns)
    if not 2 <= k <= n:
        raise ValueError(f"columns must be in [2, n = {n}], got {columns}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    dtype = next(module.parameters()).dtype
    device = next(module.parameters()).device
    per_stratum = sizes if k == n else _allocate(sizes, k)
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    strata = [
        offset + (torch.arange(size) if kl == size else torch.randperm(size, generator=generator)[:kl])
        for offset, size, kl in zip(offsets, sizes, per_stratum, strict=False)
    ]
    index = torch.cat(strata)
    diag = torch.empty(len(index), dtype=torch.float64)
    mass = torch.empty(len(index), dtype=torch.float64)
    for start in range(0, len(index), chunk):
        rows = index[start : start + chunk].to(device)
        cols = torch.arange(len(rows), device=device)
        E = torch.zeros(n, len(rows), dtype=dtype, device=device)
        E[rows, cols] = 1
        HE = hvp_functional(module, loss_fn, inputs, targets, E)  # (n, len(rows)): columns H e_i
        diag[start : start + len(rows)] = HE[rows, cols].abs().double().cpu()
        mass[start : start + len(rows)] = HE.abs().sum(dim=0).double().cpu()
    weights = torch.cat(
        [
            torch.full((kl,), size / kl, dtype=torch.float64)
            for size, kl in zip(sizes, per_stratum, strict=True)
        ]
    )
    A, C = float((weights * diag).sum()), float((weights * mass).sum())
    if C == 0:
        raise ValueError("the sampled Hessian columns are all zero: the diagonal share is undefined")
    value = A / C
    variance, at = 0.0, 0
    for size, kl in zip(sizes, per_stratum, strict=True):
        residual = diag[at : at + kl] - value * mass[at : at + kl]
        at += kl
        if kl < size:
            variance += size**2 * (1.0 - kl / size) * float(residual.var(unbiased=True)) / kl
    return DiagonalShare(value, math.sqrt(variance) / C, n, int(sum(per_stratum)))
