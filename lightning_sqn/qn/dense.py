"""Dense quasi-Newton matrices: SR1 and BFGS with the full n x n B and H.

For tiny models (a few thousand parameters at most) and as test oracles for the limited-memory
matrices. Both classes keep the Hessian approximation :math:`B_k` and the inverse approximation
:math:`H_k` as dense tensors, started from

.. math::

    B_0 = \\gamma I, \\qquad H_0 = \\gamma^{-1} I,

and updated from curvature pairs :math:`(s_k, y_k)` (:math:`s_k = x_{k+1} - x_k`,
:math:`y_k = \\nabla f(x_{k+1}) - \\nabla f(x_k)`) with the formulas of Nocedal & Wright,
*Numerical Optimization*, 2nd ed. (2006), Sec. 6.1-6.2. Every update decides on the host
(``bool(...)``), which is fine for this dense path; the limited-memory matrices avoid it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from lightning_sqn._state import require_keys

MAX_DENSE_DIM = 10_000
"""Largest dimension n a dense matrix accepts; beyond it use the limited-memory LSR1/LBFGS."""

_STATE_KEYS = ("n", "B", "H", "gamma", "gamma_fixed", "auto_gamma", "num_updates", "num_skipped")


def _check_dim(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if n > MAX_DENSE_DIM:
        gib = n * n * 8 / 2**30
        raise ValueError(
            f"n = {n} exceeds MAX_DENSE_DIM = {MAX_DENSE_DIM}: one n x n float64 matrix would take "
            f"{gib:.2f} GiB and a dense quasi-Newton matrix keeps two (B and H). Use the limited-memory "
            "LSR1/LBFGS matrices instead."
        )


def _parse_gamma(gamma: str | float) -> float | None:
    """None for ``"auto"``, else the validated fixed gamma."""
    if isinstance(gamma, str):
        if gamma != "auto":
            raise ValueError(f'gamma must be "auto" or a float > 0, got {gamma!r}')
        return None
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise ValueError(f'gamma must be "auto" or a float > 0, got {gamma!r}')
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(
            f"a fixed gamma must be finite and > 0 (B_0 = gamma I positive definite), got {gamma}"
        )
    return float(gamma)


class DenseQuasiNewton(ABC):
    """Shared state and bookkeeping of the dense quasi-Newton matrices.

    Subclasses implement the scale rule :meth:`_initial_gamma` and the update :meth:`_update_pair`.

    Args:
        n: the dimension; at most :data:`MAX_DENSE_DIM`.
        dtype: dtype of B and H (and of the products :meth:`mv`, :meth:`inv_mv`).
        device: device of B and H.
        gamma: ``"auto"`` to pick the scale of :math:`B_0 = \\gamma I` from the first usable pair
            (see the subclass), or a fixed float > 0.

    Raises:
        ValueError: if n is not a positive int or exceeds :data:`MAX_DENSE_DIM`, or gamma is neither
            ``"auto"`` nor a finite float > 0.
    """

    def __init__(
        self,
        n: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        gamma: str | float = "auto",
    ) -> None:
        _check_dim(n)
        self._n = n
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._fixed_gamma = _parse_gamma(gamma)
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Back to the initial state: B = gamma I, H = I / gamma, no updates, no skips.

        With ``gamma="auto"`` the scale is forgotten too (gamma = 1 until the next usable pair).
        """
        self._gamma_fixed = self._fixed_gamma is not None
        self._gamma = self._fixed_gamma if self._fixed_gamma is not None else 1.0
        self._B = torch.eye(self._n, dtype=self._dtype, device=self._device) * self._gamma
        self._H = torch.eye(self._n, dtype=self._dtype, device=self._device) / self._gamma
        self._num_updates = 0
        self._num_skipped = 0

    def state_dict(self) -> dict[str, Any]:
        """The state as plain tensors, ints, floats and bools (loadable with ``weights_only=True``)."""
        return {
            "n": self._n,
            "B": self._B.clone(),
            "H": self._H.clone(),
            "gamma": self._gamma,
            "gamma_fixed": self._gamma_fixed,
            "auto_gamma": self._fixed_gamma is None,
            "num_updates": self._num_updates,
            "num_skipped": self._num_skipped,
        }

    def check_state(self, state_dict: Any) -> None:
        """ValueError on missing keys, a different n, or a state saved with the other gamma mode
        (``"auto"`` vs fixed); changes nothing."""
        require_keys(type(self).__name__, state_dict, _STATE_KEYS)
        if int(state_dict["n"]) != self._n:
            raise ValueError(f"state_dict is for n = {state_dict['n']}, this matrix has n = {self._n}")
        if bool(state_dict["auto_gamma"]) != (self._fixed_gamma is None):
            raise ValueError(
                "state_dict was saved with "
                + ('gamma="auto"' if state_dict["auto_gamma"] else "a fixed gamma")
                + " but this matrix uses the other mode"
            )
        shape = (self._n, self._n)
        if tuple(state_dict["B"].shape) != shape or tuple(state_dict["H"].shape) != shape:
            raise ValueError(f"state_dict matrices must have shape {shape}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` (B and H are cast to this matrix's dtype/device).

        Raises:
            ValueError: see :meth:`check_state`.
        """
        self.check_state(state_dict)
        self._B = state_dict["B"].to(dtype=self._dtype, device=self._device, copy=True)
        self._H = state_dict["H"].to(dtype=self._dtype, device=self._device, copy=True)
        self._gamma = float(state_dict["gamma"])
        self._gamma_fixed = bool(state_dict["gamma_fixed"])
        self._num_updates = int(state_dict["num_updates"])
        self._num_skipped = int(state_dict["num_skipped"])

    # ------------------------------------------------------------ transactions
    def begin(self) -> dict[str, Any]:
        """A step's undo token: the attributes by reference (B and H are replaced by every update,
        never modified in place, so the references keep the old matrices)."""
        return dict(self.__dict__)

    def commit(self) -> None:  # noqa: B027 - nothing to finish: the token holds references only
        pass

    def rollback(self, token: dict[str, Any]) -> None:
        self.__dict__.update(token)

    # ------------------------------------------------------------ properties

    @property
    def n(self) -> int:
        """The dimension."""
        return self._n

    @property
    def gamma(self) -> float:
        """The scale of B_0 = gamma I (1.0 while ``gamma="auto"`` has not seen a usable pair)."""
        return self._gamma

    @property
    def num_updates(self) -> int:
        """Number of stored pairs (those for which :meth:`update` returned True)."""
        return self._num_updates

    @property
    def num_skipped(self) -> int:
        """Number of pairs not stored, non-finite ones included."""
        return self._num_skipped

    # -------------------------------------------------------------- products

    def _check_operand(self, v: Tensor) -> Tensor:
        if v.dim() not in (1, 2) or v.shape[0] != self._n:
            raise ValueError(
                f"expected a tensor of shape ({self._n},) or ({self._n}, k), got {tuple(v.shape)}"
            )
        return v.to(dtype=self._dtype, device=self._device)

    def mv(self, v: Tensor) -> Tensor:
        """B v for v of shape (n,) or (n, k), in this matrix's dtype."""
        return self._B @ self._check_operand(v)

    def inv_mv(self, v: Tensor) -> Tensor:
        """H v for v of shape (n,) or (n, k), in this matrix's dtype."""
        return self._H @ self._check_operand(v)

    def to_dense(self) -> Tensor:
        """B as an (n, n) tensor (a copy)."""
        return self._B.clone()

    def to_dense_inverse(self) -> Tensor:
        """H as an (n, n) tensor (a copy)."""
        return self._H.clone()

    # ---------------------------------------------------------------- update

    def update(self, s: Tensor, y: Tensor) -> Tensor:
        """Offer the curvature pair (s, y); returns a 0-dim bool tensor: stored (True) or skipped.

        A pair with a non-finite entry is skipped and leaves B and H unchanged. With
        ``gamma="auto"``, the first pair for which :meth:`_initial_gamma` gives a scale fixes gamma
        and resets B = gamma I, H = I / gamma before the pair's own update; pairs offered before that
        are skipped.
        """
        s = self._check_pair_vector(s, "s")
        y = self._check_pair_vector(y, "y")
        if not bool(torch.isfinite(s).all() & torch.isfinite(y).all()):
            return self._record(False)
        if not self._gamma_fixed:
            gamma = self._initial_gamma(s, y)
            if gamma is None:
                return self._record(False)
            self._gamma = gamma
            self._gamma_fixed = True
            self._B = torch.eye(self._n, dtype=self._dtype, device=self._device) * gamma
            self._H = torch.eye(self._n, dtype=self._dtype, device=self._device) / gamma
        return self._record(self._update_pair(s, y))

    def _check_pair_vector(self, v: Tensor, name: str) -> Tensor:
        if tuple(v.shape) != (self._n,):
            raise ValueError(f"{name} must have shape ({self._n},), got {tuple(v.shape)}")
        return v.to(dtype=self._dtype, device=self._device)

    def _record(self, stored: bool) -> Tensor:
        if stored:
            self._num_updates += 1
        else:
            self._num_skipped += 1
        return torch.tensor(stored, device=self._device)

    @abstractmethod
    def _initial_gamma(self, s: Tensor, y: Tensor) -> float | None:
        """The scale gamma that the pair (s, y) fixes under ``gamma="auto"``, or None if it fixes none."""

    @abstractmethod
    def _update_pair(self, s: Tensor, y: Tensor) -> bool:
        """Apply the update to B and H in place of the old ones; True if the pair is stored."""


def _symmetrized(A: Tensor) -> Tensor:
    return 0.5 * (A + A.mT)


class DenseSR1(DenseQuasiNewton):
    """Dense symmetric rank-one (SR1) matrices B and H.

    The Hessian approximation follows Nocedal & Wright eq. (6.24) with the skip rule (6.26):

    .. math::

        r = y - B s, \\qquad
        B \\leftarrow B + \\frac{r r^T}{r^T s}
        \\quad\\text{if}\\quad |s^T r| \\ge \\tau \\, \\|s\\| \\, \\|r\\| \\text{ and } s^T r \\ne 0,

    and the inverse follows the dual formula (6.25) with the same test on its own denominator:

    .. math::

        u = s - H y, \\qquad
        H \\leftarrow H + \\frac{u u^T}{u^T y}
        \\quad\\text{if}\\quad |y^T u| \\ge \\tau \\, \\|y\\| \\, \\|u\\| \\text{ and } y^T u \\ne 0.

    B and H are updated **independently**: each takes the update its own test admits. The SR1
    update is self-dual (Sherman-Morrison turns (6.24) into (6.25)), so H = B^{-1} holds (in exact
    arithmetic) as long as both updates are taken for every pair; once one is taken and the other
    skipped, H and B^{-1} differ. The return value of :meth:`update`, :attr:`num_updates` and
    :attr:`num_skipped` follow B's test (6.26).

    With ``gamma="auto"``, the first finite pair with :math:`s^T y \\ne 0` and :math:`y \\ne 0` fixes

    .. math::

        \\gamma = \\frac{y^T y}{|s^T y|},

    the inverse of N&W's scale (6.20) with an absolute value: SR1 pairs may have negative curvature
    and B_0 = gamma I must stay positive definite. That pair then goes through the tests above with
    B_0, H_0 (and may still be skipped by them, as in SciPy's ``SR1``). Note that when
    :math:`s^T y > 0` the dual denominator of that first pair vanishes identically,
    :math:`y^T (s - \\gamma^{-1} y) = s^T y - s^T y = 0`, so H skips the first pair (SciPy's
    ``inv_hess`` SR1 does the same) and H differs from B^{-1} from then on. Use a fixed gamma when
    H = B^{-1} matters.

    Args:
        n: the dimension; at most :data:`MAX_DENSE_DIM`.
        dtype: dtype of B and H.
        device: device of B and H.
        gamma: ``"auto"`` or a fixed float > 0.
        skip_tol: tau in the skip rule, in [0, 1).

    Raises:
        ValueError: on a bad n, gamma or skip_tol.

    Example:
        >>> qn = DenseSR1(3, gamma=1.0)
        >>> bool(qn.update(torch.tensor([1.0, 0, 0]), torch.tensor([3.0, 0, 0])))
        True
        >>> qn.mv(torch.tensor([1.0, 0, 0])).tolist()
        [3.0, 0.0, 0.0]
    """

    def __init__(
        self,
        n: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        gamma: str | float = "auto",
        skip_tol: float = 1e-8,
    ) -> None:
        if not (0.0 <= skip_tol < 1.0):
            raise ValueError(f"skip_tol must lie in [0, 1), got {skip_tol}")
        self.skip_tol = float(skip_tol)
        super().__init__(n, dtype=dtype, device=device, gamma=gamma)

    def _initial_gamma(self, s: Tensor, y: Tensor) -> float | None:
        sy = float(s @ y)
        yy = float(y @ y)
        if sy == 0.0 or yy == 0.0:
            return None
        gamma = yy / abs(sy)
        return gamma if math.isfinite(gamma) and gamma > 0 else None

    def _rank_one(self, M: Tensor, w: Tensor, z: Tensor) -> Tensor | None:
        """M + (z - M w)(z - M w)^T / ((z - M w)^T w) if the skip test (6.26) admits it, else None."""
        r = z - M @ w
        den = float(w @ r)
        if den == 0.0 or abs(den) < self.skip_tol * float(
            torch.linalg.vector_norm(w) * torch.linalg.vector_norm(r)
        ):
            return None
        new = _symmetrized(torch.addr(M, r, r, alpha=1.0 / den))
        return new if bool(torch.isfinite(new).all()) else None

    def _update_pair(self, s: Tensor, y: Tensor) -> bool:
        B = self._rank_one(self._B, s, y)  # eq. (6.24)
        H = self._rank_one(self._H, y, s)  # eq. (6.25): the same update with (B, s, y) -> (H, y, s)
        if H is not None:
            self._H = H
        if B is None:
            return False
        self._B = B
        return True


class DenseBFGS(DenseQuasiNewton):
    """Dense BFGS matrices B and H.

    A pair is stored iff it satisfies the curvature condition

    .. math::

        s^T y > \\epsilon \\, \\|s\\| \\, \\|y\\|,

    and then, with :math:`\\rho = 1 / (y^T s)` (Nocedal & Wright eqs. 6.19 and 6.17),

    .. math::

        B \\leftarrow B - \\frac{B s s^T B}{s^T B s} + \\rho \\, y y^T, \\qquad
        H \\leftarrow (I - \\rho s y^T) H (I - \\rho y s^T) + \\rho \\, s s^T.

    Both are updated together, so H = B^{-1} throughout (in exact arithmetic) and both stay
    symmetric positive definite.

    With ``gamma="auto"``, the first stored pair fixes :math:`\\gamma = y^T y / s^T y` (> 0 by the
    curvature condition) before its own update, i.e. :math:`H_0 = (s^T y / y^T y) I`, N&W eq. (6.20).

    Args:
        n: the dimension; at most :data:`MAX_DENSE_DIM`.
        dtype: dtype of B and H.
        device: device of B and H.
        gamma: ``"auto"`` or a fixed float > 0.
        curvature_eps: epsilon of the curvature condition, in [0, 1).

    Raises:
        ValueError: on a bad n, gamma or curvature_eps.
    """

    def __init__(
        self,
        n: int,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        gamma: str | float = "auto",
        curvature_eps: float = 1e-8,
    ) -> None:
        if not (0.0 <= curvature_eps < 1.0):
            raise ValueError(f"curvature_eps must lie in [0, 1), got {curvature_eps}")
        self.curvature_eps = float(curvature_eps)
        super().__init__(n, dtype=dtype, device=device, gamma=gamma)

    def _curvature_ok(self, s: Tensor, y: Tensor) -> bool:
        sy = float(s @ y)
        return sy > self.curvature_eps * float(torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y))

    def _initial_gamma(self, s: Tensor, y: Tensor) -> float | None:
        if not self._curvature_ok(s, y):
            return None
        gamma = float(y @ y) / float(s @ y)
        return gamma if math.isfinite(gamma) else None

    def _update_pair(self, s: Tensor, y: Tensor) -> bool:
        if not self._curvature_ok(s, y):
            return False
        rho = 1.0 / float(s @ y)
        Bs = self._B @ s
        B = self._B - torch.outer(Bs, Bs) / float(s @ Bs) + rho * torch.outer(y, y)  # eq. (6.19)
        # eq. (6.17) expanded with H symmetric: H - rho (s (Hy)^T + Hy s^T) + (rho^2 y^T H y + rho) s s^T
        Hy = self._H @ y
        sHy = torch.outer(s, Hy)
        H = self._H - rho * (sHy + sHy.mT) + (rho * rho * float(y @ Hy) + rho) * torch.outer(s, s)
        B, H = _symmetrized(B), _symmetrized(H)
        if not bool(torch.isfinite(B).all() & torch.isfinite(H).all()):
            return False
        self._B, self._H = B, H
        return True
