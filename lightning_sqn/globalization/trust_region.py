"""Trust-region globalization: the ratio rho = ared/pred, step acceptance and the radius update.

Follows Algorithm 1 of Ramamurthy & Duffy, "L-SR1: a second order optimization method for deep
learning" (ICLR 2017 submission), lines 10–25:

.. math::

    \\text{pred} = -(\\nabla f(x_k)^T s_k + \\tfrac12 s_k^T B_k s_k), \\qquad
    \\text{ared} = f(x_k) - f(x_k + s_k), \\qquad \\rho_k = \\text{ared} / \\text{pred},

accept ``x_{k+1} = x_k + s_k`` iff ``rho_k > eta`` (lines 13–17), and

.. math::

    \\Delta_{k+1} = \\begin{cases}
      2 \\Delta_k & \\rho_k > 0.75 \\text{ and } \\|s_k\\| > 0.8 \\Delta_k \\quad \\text{(lines 19–22)}, \\\\
      0.5 \\Delta_k & \\rho_k < 0.1 \\quad \\text{(lines 23–24)}, \\\\
      \\Delta_k & \\text{otherwise (line 18)}.
    \\end{cases}

The methods take host floats (the optimizers' steppers decide on the host in float64) or tensors (with
``torch.where``, elementwise, never synchronising), with the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from lightning_sqn._checks import flag, instance, real

__all__ = ["DEFAULT_POLICY", "TrustRegionPolicy", "check_policy"]


def radius_floor(dtype: torch.dtype) -> float:
    """sqrt(tiny) / eps of ``dtype`` (6.7e-139 in float64, 9.2e-13 in float32): the smallest radius used.

    A step of that length still has a normal ``s^T s`` with room for the products formed from it.
    """
    info = torch.finfo(dtype)
    return info.tiny**0.5 / info.eps


@dataclass(frozen=True, kw_only=True)
class TrustRegionPolicy:
    """Step acceptance and radius update of L-SR1 Alg. 1 (lines 13–25), with the paper's defaults.

    Args:
        eta: accept the step iff ``rho > eta`` (line 13). The paper requires ``eta in (0, 1e-3)``; any
            ``0 <= eta < 1`` with ``eta <= low`` is allowed here.
        low: shrink the radius iff ``rho < low`` (line 23, ``l = 0.1``).
        high: grow the radius iff ``rho > high`` (line 19, ``u = 0.75``) ...
        boundary_fraction: ... and ``||s|| > boundary_fraction * radius`` (line 20, ``rho = 0.8`` in the
            paper, renamed to avoid a clash with the ratio), ``0 < boundary_fraction <= 1``.
        decrease: shrink factor (line 24, 0.5), ``0 < decrease < 1``.
        increase: growth factor (line 21, 2), ``increase > 1``.
        min_radius: lower clamp of the radius, ``>= 0``.
        max_radius: upper clamp of the radius, ``> min_radius`` (may be ``inf``).
        accept_decrease: also accept a trial point with ``f(x + s) <= f(x)`` whatever ``rho`` (the
            default of Kohler et al.'s code; ``accept_all_decreasing`` of
            :class:`~lightning_sqn.TrustRegionNewton`).

    Raises:
        ValueError: if the parameters violate ``0 <= eta <= low < high < 1``, ``eta < 1``,
            ``0 < decrease < 1 < increase``, ``0 < boundary_fraction <= 1`` or
            ``0 <= min_radius < max_radius``.

    Example:
        >>> policy = TrustRegionPolicy()
        >>> rho = policy.rho(torch.tensor(0.9), torch.tensor(1.0))
        >>> policy.update_radius(torch.tensor(1.0), rho, step_norm=torch.tensor(1.0))
        tensor(2.)
    """

    eta: float = 1e-4
    low: float = 0.1
    high: float = 0.75
    boundary_fraction: float = 0.8
    decrease: float = 0.5
    increase: float = 2.0
    min_radius: float = 0.0
    max_radius: float = math.inf
    #: also accept a trial point that does not increase f, whatever rho (Kohler et al.'s code)
    accept_decrease: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):  # numbers (e.g. not strings from a config file); max_radius may be inf
            if f.name == "accept_decrease":
                flag(f.name, self.accept_decrease)
            else:
                real(f.name, getattr(self, f.name), finite=f.name != "max_radius")
        if not 0.0 <= self.eta < 1.0:
            raise ValueError(f"eta must satisfy 0 <= eta < 1 (the paper uses (0, 1e-3)), got {self.eta}")
        if not (self.eta <= self.low < self.high < 1.0 and self.low > 0.0):
            raise ValueError(
                "need 0 <= eta <= low < high < 1 and low > 0, got "
                f"eta={self.eta}, low={self.low}, high={self.high}"
            )
        if not (0.0 < self.decrease < 1.0 < self.increase and math.isfinite(self.increase)):
            raise ValueError(
                "need 0 < decrease < 1 < increase < inf, got "
                f"decrease={self.decrease}, increase={self.increase}"
            )
        if not 0.0 < self.boundary_fraction <= 1.0:
            raise ValueError(
                f"boundary_fraction must satisfy 0 < boundary_fraction <= 1, got {self.boundary_fraction}"
            )
        if not 0.0 <= self.min_radius < self.max_radius:
            raise ValueError(
                "need 0 <= min_radius < max_radius, got "
                f"min_radius={self.min_radius}, max_radius={self.max_radius}"
            )

    def rho(self, ared: Tensor | float, pred: Tensor | float) -> Tensor | float:
        """The ratio ``rho = ared / pred`` of actual to predicted reduction (Alg. 1 lines 10–11, 13).

        Degenerate cases, chosen so that the policy rejects the step and shrinks the radius whenever the
        model cannot be trusted:

        * ``ared`` not finite (the trial loss ``f(x + s)`` is NaN or ``±inf``), or ``pred`` not finite or
          ``pred <= 0`` (the solver failed to reduce the model): ``rho = -inf``;
        * ``ared == pred == 0`` (a null step, e.g. at a stationary point): ``rho = 1``, i.e. model and
          function agree exactly. The step is accepted (it changes nothing) and, because ``||s|| = 0`` is
          never beyond ``boundary_fraction * radius``, the radius stays unchanged.

        Args:
            ared: ``f(x_k) - f(x_k + s_k)``, any shape.
            pred: ``-(g^T s_k + 1/2 s_k^T B_k s_k)``, broadcastable with ``ared``.

        Returns:
            ``rho`` in the promoted dtype of ``ared`` and ``pred`` (a float for float inputs); never NaN.
        """
        if not isinstance(ared, Tensor) and not isinstance(pred, Tensor):
            ared, pred = float(ared), float(pred)
            if ared == 0 and pred == 0:
                return 1.0
            valid = math.isfinite(ared) and math.isfinite(pred) and pred > 0
            return ared / pred if valid else -math.inf
        ared, pred = torch.as_tensor(ared), torch.as_tensor(pred)
        dtype = torch.promote_types(ared.dtype, pred.dtype)
        ared, pred = torch.broadcast_tensors(ared.to(dtype), pred.to(dtype))
        null_step = (ared == 0) & (pred == 0)
        valid = torch.isfinite(ared) & torch.isfinite(pred) & (pred > 0)
        safe_pred = torch.where(valid, pred, torch.ones_like(pred))
        ratio = torch.where(valid, ared / safe_pred, torch.full_like(ared, -math.inf))
        return torch.where(null_step, torch.ones_like(ratio), ratio)

    def accept(self, rho: Tensor | float) -> Tensor | bool:
        """Whether to take the step: ``rho > eta`` (Alg. 1 line 13). ``False`` for NaN."""
        return rho > self.eta

    def accept_step(self, rho: float, actual_reduction: float) -> bool:
        """Whether the stepper moves to the trial point (host numbers): ``rho > eta``, or with
        ``accept_decrease`` also ``f(x + s) <= f(x)``."""
        return bool(self.accept(rho)) or (self.accept_decrease and actual_reduction >= 0.0)

    def update_radius(
        self,
        radius: Tensor | float,
        rho: Tensor | float,
        step_norm: Tensor | float,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor | float:
        """The next radius ``Delta_{k+1}`` (Alg. 1 lines 18–25), clamped to ``[min_radius, max_radius]``.

        The radius also never falls below :func:`radius_floor` of its dtype: a run that keeps rejecting
        (a stalled or converged run) would otherwise halve it until ``s^T s`` underflows and the
        curvature pairs built from such steps become subnormal.

        ``increase * radius`` if ``rho > high`` and ``step_norm > boundary_fraction * radius``;
        ``decrease * radius`` if ``rho < low`` or ``rho`` is NaN; ``radius`` otherwise.

        Args:
            radius: current radius ``Delta_k``.
            rho: ratio from :meth:`rho`.
            step_norm: ``||s_k||_2``.
            dtype: for float inputs, the dtype whose :func:`radius_floor` applies (the parameters').

        Returns:
            ``Delta_{k+1}``, broadcast over the inputs, in the dtype of ``radius`` (a float for floats).
        """
        if not any(isinstance(v, Tensor) for v in (radius, rho, step_norm)):
            radius, rho = float(radius), float(rho)
            if rho > self.high and step_norm > self.boundary_fraction * radius:
                new = radius * self.increase
            elif rho < self.low or math.isnan(rho):
                new = radius * self.decrease
            else:
                new = radius
            return min(max(new, self.min_radius, radius_floor(dtype)), self.max_radius)
        radius = torch.as_tensor(radius)
        grow = (rho > self.high) & (step_norm > self.boundary_fraction * radius)
        shrink = (rho < self.low) | torch.isnan(rho)
        new = torch.where(grow, radius * self.increase, torch.where(shrink, radius * self.decrease, radius))
        return torch.clamp(new, min=max(self.min_radius, radius_floor(new.dtype)), max=self.max_radius)


#: the paper's defaults (Ramamurthy & Duffy, Alg. 1), the default of every trust-region optimizer
DEFAULT_POLICY = TrustRegionPolicy()


def check_policy(value: Any) -> TrustRegionPolicy:
    """The ``trust_region`` argument of the trust-region optimizers: a :class:`TrustRegionPolicy`."""
    return instance(
        "trust_region",
        value,
        TrustRegionPolicy,
        "a TrustRegionPolicy (e.g. TrustRegionPolicy(decrease=0.5, increase=2.0))",
    )
