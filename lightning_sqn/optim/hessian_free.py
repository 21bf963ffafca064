"""Hessian-free optimization (Martens, "Deep learning via Hessian-free optimization", ICML 2010).

The step is composed of pieces that live elsewhere: curvature products (:mod:`lightning_sqn.curvature`:
the gradient's graph or :mod:`~lightning_sqn.curvature.capture`), linear CG with Martens' extras
(:func:`~lightning_sqn.krylov.cg.solve_cg`, :func:`~lightning_sqn.krylov.cg.cg_backtrack`) and a
backtracking line search (:mod:`lightning_sqn.globalization.linesearch`). This module holds the
composition and the bookkeeping, in the notation of Martens, "Deep learning via Hessian-free
optimization" (ICML 2010) and of his slides of the same title.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from torch import Tensor, nn

from lightning_sqn import _checks as checks
from lightning_sqn._state import AttributeState, Part
from lightning_sqn.curvature.ggn import LOSSES, GGNLoss
from lightning_sqn.globalization.damping import LevenbergMarquardt
from lightning_sqn.globalization.linesearch import (
    ArmijoBacktracking,
    LineSearch,
    resolve_line_search,
)
from lightning_sqn.optim.base import QuasiNewtonOptimizer
from lightning_sqn.optim.damped_stepper import DampedStepper
from lightning_sqn.optim.evaluation import Closure
from lightning_sqn.optim.hessian_free_model import Curvature, HessianFreeModel
from lightning_sqn.optim.stats import StepStats


def _martens_line_search() -> ArmijoBacktracking:
    """The final backtracking line search (Martens & Sutskever 2012 constants, see :class:`HessianFree`)."""
    return ArmijoBacktracking(c1=1e-2, shrink=0.8, max_evals=20)


class HessianFree(QuasiNewtonOptimizer):
    """Hessian-free optimization with Martens' (2010) recipe.

    One step at x_k (slide "Standard Hessian-free Optimization", lines 2-6, with the ingredients of the
    slide that lists them):

    1. g = grad f(x_k) from one closure evaluation (line 2); under ``curvature="ggn"`` (or with the
       preconditioner) the watched module's input and output are captured
       (:mod:`~lightning_sqn.curvature.capture`).
    2. Damped curvature products ``B v = G v + lambda v`` (line 4; the Gauss-Newton matrix G of
       Schraudolph 2002, slide "The Gauss-Newton matrix") or ``H v + lambda v`` (``"hessian"``).
    3. Linear CG on the quadratic model (line 5; slide "Second motivating observation")

       .. math:: q(p) = g^T p + \\tfrac12 p^T (B + \\lambda I) p,

       preconditioned with ``M = [diag(sum_i grad f_i^2) + lambda I]^alpha`` (alpha = 0.75), started
       from ``zeta p_{k-1}`` (the previous run's last iterate, zeta = 0.95), stopped by Martens'
       relative-progress rule (slide "CG stopping conditions"; window ``k = max(10, 0.1 i)``, threshold
       ``k eps``, eps = 5e-4) or at the cap (``max_cg_iters``, Martens: 250).
    4. CG backtracking: the iterates stored at ``i = ceil(1.3^j)`` are evaluated with the closure from
       the last one backwards until one is worse than its successor; the best one is ``p``
       (:func:`~lightning_sqn.krylov.cg.cg_backtrack`). Each is an extra closure evaluation.
    5. Levenberg-Marquardt update of lambda (:class:`LevenbergMarquardt`) from

       .. math:: \\rho = \\frac{f(x_k + p) - f(x_k)}{q(p)},

       with ``q`` the *damped* model above, as in Martens (2010, Sec. 4.1), whose slides define
       ``q_theta(p) = f + grad f^T p + 1/2 p^T B p`` with "B = H or H + lambda I"; ``q(p)`` is CG's own
       recurrence value of the chosen iterate, so rho costs no product. (Martens & Sutskever 2012 use the
       undamped model; ``last_step.predicted_reduction = -q(p)`` is the damped one.)
    6. A backtracking (Armijo) line search along ``p`` from alpha = 1, whose value is known from step 4
       (``line_search``; the paper and slides name a "final backtracking line search" without
       constants; the default, Armijo with ``c1 = 1e-2`` and factor 0.8, are the values of Martens &
       Sutskever 2012 as we recall them, not checked against a source here). No sufficient decrease:
       x stays (``accepted=False``).

    **Curvature products.** ``curvature="ggn"`` (the paper's choice): products on the watched module,
    functional (:func:`~lightning_sqn.curvature.ggn.ggn_matvec`), for the loss named by ``loss``
    applied to the module's output with mean reduction; no autograd graph is kept, so any Lightning
    strategy of this package works, and under ``ddp_sqn`` every product is averaged over ranks.
    ``curvature_batch_fraction`` f < 1 uses the first ``K = ceil(f B)`` examples of the batch for the
    products (Martens' curvature mini-batch K, slide "Experimental parameters"; under ``ddp_sqn`` each
    rank takes the first ``ceil(f B_r)`` of its shard); the gradient, backtracking and line search use
    the whole batch. The products use the module's *current mode*: BatchNorm in training mode
    normalises with the batch statistics of the K examples as the functional forward sees them, and
    dropout draws a new mask per product; models with BatchNorm in training mode or dropout should use
    ``curvature="hessian"`` (or eval-mode BatchNorm / no dropout). ``curvature="hessian"``: exact
    Hessian-vector products by double backward through the graph of the evaluation at x_k on the full
    batch (the closure must call ``loss.backward(create_graph=optimizer.graph_requested)`` in plain
    PyTorch; Lightning needs ``strategy="sqn"``/``"ddp_sqn"``); B may be indefinite, and CG stops at a
    direction of negative curvature (lambda then grows).

    **Preconditioner** (``preconditioner=True``): ``D = (1/K) sum_{i<K} grad l_i ⊙ grad l_i``, the
    diagonal of the empirical Fisher matrix of the curvature mini-batch (see
    :func:`~lightning_sqn.curvature.capture.fisher_diagonal`): for networks of ``nn.Linear`` layers by
    the per-layer rule ``(delta^2)^T (a^2)`` from one forward and backward over the K examples, for
    other networks from per-example gradients (``vmap`` of ``grad``, in chunks): Martens'
    ``sum_i grad f_i ⊙ grad f_i``
    for his summed objective ``f = sum_i f_i``, scaled to our mean loss (the scale of G and lambda).
    It needs the captured input and output in both curvature modes (Lightning's ``sqn``/``ddp_sqn``
    watch the LightningModule automatically); without a watched module (e.g. a closure that is not a
    network, like Rosenbrock) a step raises :class:`~lightning_sqn.curvature.capture.CaptureError`:
    pass ``preconditioner=False`` there. No batch-gradient substitute is used (``g ⊙ g`` is a rank-one
    estimate, not Martens' preconditioner).

    **Cost per step**: 1 closure evaluation for g (keeping the graph with ``"hessian"``), one product
    per CG iteration (plus one for a warm start's initial residual), the preconditioner (one forward and
    backward over K examples by the per-layer rule; far more by per-example gradients), and ``b + l``
    further closure evaluations (backtracking over stored iterates, then line-search trials other than
    alpha = 1), which need f only: under ``strategy="sqn"``/``"ddp_sqn"`` they are forward passes
    (``loss_only_evals``) unless the line search reads slopes (e.g. :class:`StrongWolfe`); a plain
    PyTorch closure computes its gradient anyway. ``last_step`` reports them (``closure_evals``,
    ``loss_only_evals``, ``curvature_products``, ``cg_iterations``).

    ``last_step`` publishes ``damping`` (lambda used), ``rho``, ``cg_iterations``, ``cg_reason`` (a
    :class:`SolverStatus` code), ``backtrack_index`` (CG iteration of the chosen iterate),
    ``step_length`` (alpha), ``curvature_products``, ``predicted_reduction`` (``-q(p)``),
    ``actual_reduction`` (``f(x) - f(x + p)``), ``trial_loss`` (f at the point taken or last tried),
    ``accepted``, ``step_norm`` (``||alpha p||``).

    Args:
        params: parameters or groups (one flat vector).
        curvature: ``"ggn"`` or ``"hessian"``.
        damping: initial lambda > 0 (the slides give no value; Martens adapts it from any start).
        loss: for ``"ggn"``: the loss applied to the watched module's output, ``"cross_entropy"``,
            ``"mse"`` or ``"bce_with_logits"`` (mean reduction), which fixes ``H_l`` in closed form.
        max_cg_iters: cap on CG iterations (Martens: 250).
        cg_eps: epsilon of the relative-progress rule (5e-4).
        cg_tol: CG residual tolerance relative to ``||g||`` (0: only the progress rule and the cap stop
            CG, as in Martens' HF).
        warm_start_decay: zeta in ``x_0 = zeta p_{k-1}`` (0.95); 0 starts every CG run at 0.
        preconditioner: use Martens' diagonal preconditioner.
        preconditioner_exponent: alpha in ``M = (D + lambda)^alpha`` (0.75).
        curvature_batch_fraction: f in (0, 1], the share of the batch used for GGN products (and the
            preconditioner); < 1 needs ``curvature="ggn"``.
        line_search: a line search along the backtracked p (``"default"``: Armijo, ``c1 = 1e-2``,
            factor 0.8, at most 20 evaluations), or ``None``: take p if ``f(x + p) < f(x)``.
        damping_rule: the lambda update (default :class:`LevenbergMarquardt` with Martens' constants).

    Raises:
        ValueError: for an option outside its range (the message states the range), ``"ggn"`` without
            ``loss``, or a curvature fraction < 1 with ``"hessian"``.

    Example::

        model = nn.Sequential(nn.Linear(784, 250), nn.Tanh(), nn.Linear(250, 10))
        opt = HessianFree(model.parameters(), loss="cross_entropy")
        opt.watch_module(model)  # Lightning's sqn/ddp_sqn strategies watch the LightningModule

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), y)
            loss.backward()
            return loss

        opt.step(closure)
    """

    step_sizing = "Levenberg-Marquardt damping and a line search along the CG step"
    keeps_pairs = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        curvature: Curvature = "ggn",
        damping: float = 1.0,
        loss: GGNLoss | None = None,
        max_cg_iters: int = 250,
        cg_eps: float = 5e-4,
        cg_tol: float = 0.0,
        warm_start_decay: float = 0.95,
        preconditioner: bool = True,
        preconditioner_exponent: float = 0.75,
        curvature_batch_fraction: float = 1.0,
        line_search: LineSearch | Literal["default"] | None = "default",
        damping_rule: LevenbergMarquardt | None = None,
    ) -> None:
        curvature = checks.choice("curvature", curvature, ("ggn", "hessian"))
        damping = checks.positive("damping", damping)
        if curvature == "ggn" and (not isinstance(loss, str) or loss not in LOSSES):
            raise ValueError(
                f"curvature='ggn' needs loss= one of {LOSSES} (the loss applied to the watched module's "
                f"output, mean reduction; it fixes the loss Hessian of the Gauss-Newton matrix), got "
                f"{loss!r}. Use curvature='hessian' for any other loss."
            )
        if loss is not None:
            loss = checks.choice("loss", loss, LOSSES)
        max_cg_iters = checks.integer("max_cg_iters", max_cg_iters, 1)
        cg_eps = checks.positive("cg_eps", cg_eps)
        cg_tol = checks.real("cg_tol", cg_tol, lambda v: v >= 0, "finite and >= 0")
        warm_start_decay = checks.real(
            "warm_start_decay", warm_start_decay, lambda v: 0 <= v <= 1, "in [0, 1]"
        )
        preconditioner = checks.flag("preconditioner", preconditioner)
        preconditioner_exponent = checks.real(
            "preconditioner_exponent", preconditioner_exponent, lambda v: 0 <= v <= 1, "in [0, 1]"
        )
        curvature_batch_fraction = checks.real(
            "curvature_batch_fraction", curvature_batch_fraction, lambda v: 0 < v <= 1, "in (0, 1]"
        )
        line_search = resolve_line_search(line_search, _martens_line_search)
        damping_rule = checks.instance(
            "damping_rule", damping_rule, LevenbergMarquardt, "a LevenbergMarquardt rule or None", none=True
        )
        if curvature == "hessian" and curvature_batch_fraction < 1.0:
            raise ValueError(
                f"curvature_batch_fraction={curvature_batch_fraction} needs curvature='ggn': Hessian "
                "products come from the graph of the closure's evaluation at x_k, which covers the whole "
                "batch and cannot be restricted to a subset of examples afterwards. Use curvature='ggn' "
                "(functional products on the first ceil(fraction * batch) examples) or a smaller closure "
                "batch."
            )
        model_options = dict(
            curvature=curvature,
            loss=loss,
            max_cg_iters=max_cg_iters,
            cg_eps=cg_eps,
            cg_tol=cg_tol,
            warm_start_decay=warm_start_decay,
            preconditioner=preconditioner,
            preconditioner_exponent=preconditioner_exponent,
            curvature_batch_fraction=curvature_batch_fraction,
        )
        super().__init__(params, dict(damping=damping, **model_options))
        self.curvature: Curvature = curvature
        self.loss = loss
        self.max_cg_iters = max_cg_iters
        self.line_search: LineSearch | None = line_search
        self.damping_rule = damping_rule or LevenbergMarquardt()
        self.needs_graph = curvature == "hessian"
        what = f"{type(self).__name__}(curvature={curvature!r}, preconditioner={preconditioner})"
        self._model = HessianFreeModel(self.evaluation, what, **model_options)  # type: ignore[arg-type]
        self._stepper = DampedStepper(self.evaluation, line_search, self.damping_rule, curvature == "hessian")
        flat = self._flat
        self.damping = damping  #: lambda of the next step (a host float: the rule runs on the host)
        self._g = flat.new_zeros()
        self._damping_state = AttributeState(self, {"damping": "damping"}, "HessianFree")

    # ------------------------------------------------------------ watched module
    def watch_module(self, module: nn.Module) -> None:
        """Capture ``module``'s input and output at x_k (GGN products and the preconditioner).

        ``module`` must map the closure's single input tensor to the loss input in one call per
        closure evaluation, and own all optimized parameters. Watching another module replaces the
        previous one. The Lightning strategies ``sqn``/``ddp_sqn`` watch the LightningModule at fit
        start unless a module is watched already (so a ``training_step`` that calls ``self.net(x)``
        needs ``optimizer.watch_module(self.net)`` in ``configure_optimizers``).
        """
        self._model.watch(module)

    @property
    def watched_module(self) -> nn.Module | None:
        """The module whose forward is captured, or ``None``."""
        capture = self._model.capture
        return None if capture is None else capture.module

    # ------------------------------------------------------------ step
    def _step(self, closure: Closure) -> StepStats:
        model, ev, g = self._model, self.evaluation, self._g
        model.check_capture()
        capture = model.capture if model.needs_capture else None
        if capture is not None:
            capture.arm()
        try:
            f0_t = ev(closure, g, create_graph=self.curvature == "hessian")
        finally:
            if capture is not None:
                capture.disarm()
        try:
            ev.check_finite_start(f0_t, g)
            lam = self.damping
            res, warm = model.solve(g, lam)
        finally:
            ev.graph = None  # free the activations before the trial evaluations
            if model.capture is not None:
                model.capture.clear()
        stats, next_lam = self._stepper.step(closure, g, f0_t, lam, res, warm)
        self.damping = next_lam
        model.remember(res)
        return stats

    # ------------------------------------------------------------ state
    def _parts(self) -> dict[str, Part]:
        return {"model": self._model, "damping": self._damping_state}


__all__ = ["HessianFree"]
