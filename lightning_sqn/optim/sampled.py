"""Sampled L-SR1 and sampled L-BFGS (Berahas, Jahani & Takáč, "Sampled quasi-Newton methods").

Both forget the memory at every iterate w_k and sample m new curvature pairs around it
(:mod:`~lightning_sqn.curvature.sampling`) before computing the step, so even the first step is
quasi-Newton. S-LSR1 (their Alg. 3) then solves the L-SR1 trust-region subproblem and updates the
radius as the L-SR1 trust-region loop does; S-LBFGS (their Alg. 2) takes p_k = -H_k g_k with a line
search.

Cost per step: option II (``sampling="hessian"``) two closure evaluations, the first keeping its
graph, plus one batched block of m Hessian-vector products; option I (``"gradient"``) m + 2 closure
evaluations (the gradients at w_k + sigma_i) and no graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_sqn import _checks as checks
from lightning_sqn._state import Part
from lightning_sqn.curvature.sampling import DirectionSampler, Sampling, check_sampling, sample_pairs
from lightning_sqn.globalization.linesearch import LineSearch, StrongWolfe, resolve_line_search
from lightning_sqn.globalization.trust_region import DEFAULT_POLICY, TrustRegionPolicy, check_policy
from lightning_sqn.optim.base import QuasiNewtonOptimizer
from lightning_sqn.optim.evaluation import Closure, Evaluation
from lightning_sqn.optim.krylov_models import SteihaugModel
from lightning_sqn.optim.line_search_stepper import LineSearchStepper
from lightning_sqn.optim.models import LimitedMemoryModel
from lightning_sqn.optim.stats import StepStats
from lightning_sqn.optim.steppers import TrustRegionStepper
from lightning_sqn.qn.lbfgs import LBFGSMatrix
from lightning_sqn.qn.lsr1 import GammaChoice, LSR1Matrix
from lightning_sqn.subproblem.obs import NEWTON_ITERS


class SampledPairs:
    """The pair refresh of both methods (Berahas et al. Alg. 1), as a stepper's ``refresh`` hook.

    Args:
        ev: the optimizer's closure evaluation (flat parameters, the kept graph, communicator).
        model: the limited-memory model whose pairs are replaced.
        sampler: draws the directions S.
        sampling: ``"hessian"`` (option II) or ``"gradient"`` (option I).
    """

    def __init__(
        self,
        ev: Evaluation,
        model: LimitedMemoryModel,
        sampler: DirectionSampler,
        sampling: Sampling,
    ) -> None:
        self.ev = ev
        self.model = model
        self.sampler = sampler
        self.sampling = sampling
        self.needs_graph = sampling == "hessian"
        self._g_sample = ev.flat.new_zeros() if sampling == "gradient" else None
        self._last: tuple[int, Tensor, int] | None = None

    def sample(self, closure: Closure, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """(S, Y) at x: directions and differences (rows). Option II uses the graph of the evaluation at x."""
        ev, flat = self.ev, self.ev.flat
        hvp = gradient_at = None
        if self.sampling == "hessian":
            if ev.graph is None:
                raise RuntimeError("option II needs the evaluation at x_k to keep its graph")
            hvp = ev.graph.hvp
        else:
            g_sample = self._g_sample
            assert g_sample is not None

            def gradient_at(sigma: Tensor) -> Tensor:
                flat.set_params(torch.add(x, sigma))
                ev(closure, g_sample)
                return g_sample

        # only parameters that have a gradient at x are perturbed (an unused parameter stays put)
        S, Y = sample_pairs(
            self.sampler,
            flat,
            self.sampling,
            x,
            communicator=ev.communicator,
            mask=flat.grad_mask(),
            hvp=hvp,
            gradient_at=gradient_at,
            g=g,
        )
        ev.graph = None  # free the saved activations before the trial evaluation
        return S, Y

    def refresh(self, closure: Closure, x: Tensor, g: Tensor) -> None:
        S, Y = self.sample(closure, x, g)
        kept = self.model.load_pairs(S, Y)
        products = S.shape[0] if self.sampling == "hessian" else 0
        self._last = (S.shape[0], kept, products)

    def annotate(self, stats: StepStats) -> None:
        if self._last is not None:
            stats.pairs_sampled, stats.pairs_kept, stats.hessian_products = self._last


class _SampledBase(QuasiNewtonOptimizer):
    """Shared construction: validation, the direction sampler and the pair refresh."""

    _model: LimitedMemoryModel
    _stepper: TrustRegionStepper | LineSearchStepper

    def _make_refresh(
        self, memory: int, sample_radius: float, sampling: Sampling, seed: int | None, full_batch: bool
    ) -> SampledPairs:
        full_batch = checks.flag("full_batch", full_batch)
        if full_batch and sampling == "hessian":
            raise ValueError(
                "full_batch=True reuses f and g at the accepted point, but sampling='hessian' needs the "
                "evaluation at x_k to keep its autograd graph for the Hessian-vector products, so it must "
                "evaluate anyway. Use sampling='gradient' with full_batch=True, or full_batch=False."
            )
        self.full_batch = full_batch
        self.needs_graph = sampling == "hessian"
        self._sampler = DirectionSampler(memory, sample_radius, self._flat.device, seed)
        self._refresh = SampledPairs(self.evaluation, self._model, self._sampler, sampling)
        return self._refresh

    def sample_pairs(self, closure: Closure) -> tuple[Tensor, Tensor]:
        """Sample (S, Y) at the current parameters without stepping (rows are pairs); for inspection.

        Evaluates the closure at x (keeping the graph for option II) and, for option I, at the m
        sampled points; the parameters are left at x. Advances the direction generator.
        """
        flat, ev = self._flat, self.evaluation
        x = flat.gather_params()
        g = flat.new_zeros()
        try:
            ev(closure, g, create_graph=self.needs_graph)
            return self._refresh.sample(closure, x, g)
        finally:
            ev.end_step()
            flat.set_params(x)

    def _parts(self) -> dict[str, Part]:
        return {**super()._parts(), "sampler": self._sampler}


class SampledLSR1(_SampledBase):
    """Sampled L-SR1 (S-LSR1, Berahas, Jahani & Takáč Alg. 3): fresh sampled pairs, trust-region step.

    Each step: evaluate f and g at w_k (keeping the graph for option II); forget the memory and sample
    m pairs around w_k; keep those that pass the SR1 skip rule (with rank repair, as in L-SR1); solve
    the trust-region subproblem for B_k (OBS, exact; or Steihaug-Toint CG); evaluate f at w_k + p_k
    on the same batch; accept if rho > eta and update the radius with
    :class:`~lightning_sqn.globalization.trust_region.TrustRegionPolicy`.

    Args:
        params: parameters or groups (one flat vector).
        memory: m, pairs sampled per step.
        sample_radius: r, length of each sampled direction.
        sampling: ``"hessian"`` (option II: Y = grad^2 F(w) S, one batched block of products; needs
            a closure whose backward keeps the graph, see
            :mod:`~lightning_sqn.curvature.graph`) or ``"gradient"`` (option I: m extra gradients).
        gamma: B_0 = gamma I, see :class:`~lightning_sqn.qn.lsr1.LSR1Matrix`. Default ``"eigen"``
            (gamma below the smallest eigenvalue of the sampled pencil (S^T Y, S^T S)): with
            ``"scaled"`` (y^T y / s^T y) gamma lies inside the sampled spectrum, and the SR1 matrix
            built from exact Hessian pairs then has large spurious negative eigenvalues (measured on a
            convex quadratic: lambda_min(B) = -12 for an SPD Hessian), which stalls the trust region.
        gamma_init: gamma until a pair is kept.
        skip_tol: r of the SR1 skip rule.
        rank_tol: rank threshold of the repair loop and of OBS.
        trust_region: acceptance and radius parameters.
        initial_radius: Delta_0; ``None`` for ||g(w_0)||.
        newton_iters: cap on the Newton iterations on the OBS secular equation (default
            :data:`~lightning_sqn.subproblem.obs.NEWTON_ITERS` = 12).
        subproblem: ``"obs"`` (exact solution, the default) or ``"steihaug"`` (Steihaug-Toint truncated
            CG on B v products, as in the authors' code; no eigenvalues are reported then).
        cg_max_iters: iteration cap of Steihaug CG (default 2 (m + 1)).
        seed: seed of the direction generator (``None``: drawn from the global generator on the first
            step; identical on all ranks either way).
        full_batch: reuse f and g at the accepted point as the next step's (see
            :class:`~lightning_sqn.LSR1`); only with ``sampling="gradient"`` (option II must evaluate
            x_k with its graph).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        memory: int = 5,
        sample_radius: float = 1.0,
        sampling: Sampling = "hessian",
        gamma: GammaChoice | float = "eigen",
        gamma_init: float = 1.0,
        skip_tol: float = 1e-8,
        rank_tol: float | None = None,
        trust_region: TrustRegionPolicy = DEFAULT_POLICY,
        initial_radius: float | None = None,
        newton_iters: int = NEWTON_ITERS,
        subproblem: Literal["obs", "steihaug"] = "obs",
        cg_max_iters: int | None = None,
        seed: int | None = None,
        full_batch: bool = False,
    ) -> None:
        check_sampling(memory, sample_radius, sampling)
        subproblem = checks.choice("subproblem", subproblem, ("obs", "steihaug"))
        cg_max_iters = checks.integer("cg_max_iters", cg_max_iters, 1, none=True)
        initial_radius = checks.positive(
            "initial_radius", initial_radius, none=True, allowed="a finite number > 0 or None (for ||g_0||)"
        )
        newton_iters = checks.integer("newton_iters", newton_iters, 1)
        checks.real("skip_tol", skip_tol, lambda v: v >= 0, "a finite number >= 0")
        rank_tol = checks.positive("rank_tol", rank_tol, none=True)
        trust_region = check_policy(trust_region)
        seed = checks.integer("seed", seed, 0, none=True)
        defaults = dict(
            memory=memory,
            sample_radius=sample_radius,
            sampling=sampling,
            gamma=gamma,
            gamma_init=gamma_init,
            skip_tol=skip_tol,
            subproblem=subproblem,
        )
        super().__init__(params, defaults)
        self.matrix = LSR1Matrix.for_params(
            memory,
            self._flat,
            form="B",
            gamma=gamma,
            gamma_init=gamma_init,
            skip_tol=skip_tol,
            rank_tol=rank_tol,
        )
        if subproblem == "obs":
            self._model = LimitedMemoryModel(self.matrix, newton_iters)
        else:
            self._model = SteihaugModel(self.matrix, max_iters=cg_max_iters)
        refresh = self._make_refresh(memory, sample_radius, sampling, seed, full_batch)
        self._stepper = TrustRegionStepper(self, self._model, trust_region, initial_radius, refresh=refresh)


class SampledLBFGS(_SampledBase):
    """Sampled L-BFGS (S-LBFGS, Berahas, Jahani & Takáč Alg. 2): fresh sampled pairs, line search.

    Each step: evaluate f and g at w_k; forget the memory and sample m pairs around w_k; keep those
    with s^T y > curvature_eps ||s|| ||y|| (the curvature condition of their Lemma 7; H_k = I/gamma if
    none passes); p_k = -H_k g_k from the compact inverse; a line search along p_k.

    Args:
        params: parameters or groups (one flat vector).
        memory: m, pairs sampled per step.
        sample_radius: r, length of each sampled direction.
        sampling: ``"hessian"`` (option II) or ``"gradient"`` (option I), see :class:`SampledLSR1`.
        line_search: a line-search object (default :class:`StrongWolfe`), or ``None`` for a fixed step.
        lr: initial trial step length (and the fixed step without a line search).
        gamma: H_0 = I / gamma; ``"scaled"`` (y^T y / s^T y of the newest kept pair) or a float > 0.
        curvature_eps: epsilon of the curvature test.
        seed: seed of the direction generator, see :class:`SampledLSR1`.
        full_batch: see :class:`SampledLSR1`.
    """

    group_options = ("lr",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        memory: int = 5,
        sample_radius: float = 1.0,
        sampling: Sampling = "hessian",
        line_search: LineSearch | Literal["default"] | None = "default",
        lr: float = 1.0,
        gamma: Literal["scaled"] | float = "scaled",
        curvature_eps: float = 1e-8,
        seed: int | None = None,
        full_batch: bool = False,
    ) -> None:
        check_sampling(memory, sample_radius, sampling)
        lr = checks.positive("lr", lr)
        checks.real("curvature_eps", curvature_eps, lambda v: v >= 0, "a finite number >= 0")
        seed = checks.integer("seed", seed, 0, none=True)
        search = resolve_line_search(line_search, StrongWolfe)
        defaults = dict(
            memory=memory,
            sample_radius=sample_radius,
            sampling=sampling,
            lr=lr,
            gamma=gamma,
            curvature_eps=curvature_eps,
        )
        super().__init__(params, defaults)
        self.matrix = LBFGSMatrix.for_params(
            memory,
            self._flat,
            gamma=gamma,
            curvature_eps=curvature_eps,
        )
        self._model = LimitedMemoryModel(self.matrix)
        refresh = self._make_refresh(memory, sample_radius, sampling, seed, full_batch)
        self._stepper = LineSearchStepper(self, self._model, search, refresh=refresh)


__all__ = ["SampledLBFGS", "SampledLSR1", "SampledPairs"]
