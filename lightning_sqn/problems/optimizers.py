"""The optimizers compared in Ramamurthy & Duffy (2017), Section 4, built by name with the paper's settings.

:func:`build_optimizer` turns a name from :data:`OPTIMIZERS` and keyword overrides into an optimizer;
the defaults are those of the paper's appendix ("Network Architectures and Hyperparameter Settings",
MNIST), and every value the appendix gives per data set is in :data:`PAPER_EXPERIMENTS` so that a recipe
can pass it explicitly. L2 regularisation is not an optimizer option here: the paper trains with an L2
term in the loss (``ClassificationTask(weight_decay=...)``), which keeps the objective the quasi-Newton
methods see the same as the one the first-order methods minimise.

Example::

    >>> from torch import nn
    >>> from lightning_sqn.problems.optimizers import build_optimizer, needs_closure
    >>> opt = build_optimizer("nag", nn.Linear(2, 1).parameters(), lr=0.01)
    >>> opt.defaults["nesterov"], opt.defaults["momentum"], needs_closure(opt)
    (True, 0.9, False)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from lightning_sqn.globalization.trust_region import TrustRegionPolicy
from lightning_sqn.optim import LBFGS, LSR1
from lightning_sqn.optim.base import QuasiNewtonOptimizer


@dataclass(frozen=True)
class OptimizerSpec:
    """How one name of :data:`OPTIMIZERS` is built.

    Attributes:
        cls: the optimizer class.
        defaults: the paper's values, overridable by keyword.
        fixed: arguments the name itself sets (e.g. ``nesterov=True`` for ``"nag"``); not overridable.
        closure: whether ``step`` needs a closure that re-evaluates the loss (the quasi-Newton methods).
        description: what the name stands for in the paper.
    """

    cls: type[torch.optim.Optimizer]
    defaults: Mapping[str, Any]
    fixed: Mapping[str, Any]
    closure: bool
    description: str

    def options(self) -> tuple[str, ...]:
        """The keyword arguments ``build_optimizer`` accepts for this name (the constructor's, less
        ``params`` and :attr:`fixed`)."""
        names = [
            p.name
            for p in inspect.signature(self.cls.__init__).parameters.values()
            if p.name not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        return tuple(n for n in names if n not in self.fixed)


def _spec(
    cls: type[torch.optim.Optimizer],
    description: str,
    defaults: dict[str, Any],
    fixed: dict[str, Any] | None = None,
    closure: bool = False,
) -> OptimizerSpec:
    return OptimizerSpec(cls, MappingProxyType(defaults), MappingProxyType(fixed or {}), closure, description)


# The paper's defaults, one row per optimizer. Sources (Ramamurthy & Duffy 2017):
# - Section 4.1.1: "The memory size was set to 5 for both L-SR1 and L-BFGS"; Section 4: "L-BFGS with
#   forgetting every 5 steps"; Section 4.2.1: L-SR1 "default settings [...] a memory size of 5, a
#   trust-region radius decrease factor of 0.5, and a trust-region radius increase factor of 2.0" (the
#   defaults of TrustRegionPolicy, so not repeated here).
# - B_0 = gamma I: Algorithm 1 keeps B_0 fixed ("a diagonal matrix, typically gamma I_n", lines 32-33)
#   and gives no value; gamma = 0.1 is the value our sweep supports
#   (recipes/lsr1_ramamurthy2017/README.md, "B_0 = gamma I":
#   best or level with gamma = 1 on MNIST with and without BN, on the CIFAR-10 LeNet and ResNet-20
#   subsets; LSR1's own default "scaled" trains markedly worse here and is kept for its scale invariance
#   on badly scaled deterministic problems).
# - Appendix, MNIST: "In the case of the first order methods, the learning rate was set to 0.003 where
#   needed, and the momentum was set to 0.9, where needed. AdaDelta did not take any parameters."
#   (CIFAR10: "the learning rate was set to 0.01 where needed"; see PAPER_EXPERIMENTS.)
# - AdaDelta "did not take any parameters": Zeiler's (2012) rule has no learning rate, i.e. lr=1.0 in
#   torch.optim.Adadelta; rho=0.95 and eps=1e-6 are the values of Zeiler's own MNIST experiments (the
#   paper does not state them; torch's default rho is 0.9).
# - Adam: Section 4.2.1 "Adam, with default settings (Kingma & Ba, 2014)": lr=1e-3, betas=(0.9, 0.999),
#   eps=1e-8.
OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType(
    {
        "lsr1": _spec(
            LSR1,
            "L-SR1 with trust region (Alg. 1), B_0 = 0.1 I",
            {"memory": 5, "gamma": 0.1},
            {"method": "trust_region"},
            True,
        ),
        "lsr1_ls": _spec(
            LSR1,
            "L-SR1 with line search (Alg. 2), B_0 = 0.1 I",
            {"memory": 5, "gamma": 0.1},
            {"method": "line_search"},
            True,
        ),
        "lbfgs": _spec(
            LBFGS, "L-BFGS with forgetting every 5 steps", {"memory": 5, "forget_every": 5}, None, True
        ),
        "sgd": _spec(torch.optim.SGD, "SGD", {"lr": 0.003}, {"momentum": 0.0, "nesterov": False}),
        "momentum": _spec(
            torch.optim.SGD, "SGD with momentum", {"lr": 0.003, "momentum": 0.9}, {"nesterov": False}
        ),
        "nag": _spec(
            torch.optim.SGD,
            "Nesterov's accelerated gradient",
            {"lr": 0.003, "momentum": 0.9},
            {"nesterov": True},
        ),
        "adadelta": _spec(torch.optim.Adadelta, "AdaDelta", {"lr": 1.0, "rho": 0.95, "eps": 1e-6}),
        "adam": _spec(torch.optim.Adam, "Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}),
    }
)

# What the paper states per experiment (appendix and Section 4), for recipes to pass explicitly.
# lr/momentum: first-order methods; weight_decay: the L2 parameter ("trained with L2 regularization with
# parameter ..."); batch sizes: Section 4.1.1/4.1.2 (first order: NAG, SGD, AdaDelta, momentum; second
# order: L-SR1, L-BFGS); resnet20: Section 4.2.1 (SGD with momentum as in He et al. 2015b: lr 0.1, 0.01
# from epoch 80, 0.001 from epoch 120; He et al.'s weight decay 1e-4 and momentum 0.9; batch 128 for all).
PAPER_EXPERIMENTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "mnist": MappingProxyType(
            {
                "lr": 0.003,
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "batch_size_first_order": 20,
                "batch_size_second_order": 400,
                "epochs": 20,
            }
        ),
        "cifar10": MappingProxyType(
            {
                "lr": 0.01,
                "momentum": 0.9,
                "weight_decay": 1e-3,
                "batch_size_first_order": 96,
                "batch_size_second_order": 400,
                "epochs": 20,
            }
        ),
        "resnet20": MappingProxyType(
            {
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "lr_milestones": (80, 120),
                "lr_gamma": 0.1,
                "batch_size_first_order": 128,
                "batch_size_second_order": 128,
                "epochs": 200,
            }
        ),
    }
)


def _names() -> str:
    return ", ".join(repr(n) for n in OPTIMIZERS)


def _spec_for(name: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {_names()}")
    return OPTIMIZERS[name]


def build_optimizer(
    name: str, params: Iterable[Tensor] | Iterable[dict[str, Any]], **options: Any
) -> torch.optim.Optimizer:
    """Build the optimizer ``name`` over ``params`` with the paper's defaults, overridden by ``options``.

    Args:
        name: one of :data:`OPTIMIZERS`: ``"lsr1"`` (trust region), ``"lsr1_ls"`` (line search),
            ``"lbfgs"`` (ours, with ``forget_every``), ``"sgd"``, ``"momentum"``, ``"nag"``,
            ``"adadelta"``, ``"adam"``.
        params: parameters or parameter groups.
        **options: keyword arguments of the optimizer's constructor (see
            :meth:`OptimizerSpec.options`), e.g. ``lr=0.01`` or ``memory=10``. A mapping given as
            ``trust_region`` becomes ``TrustRegionPolicy(**mapping)`` (e.g. ``{"decrease": 0.2,
            "increase": 1.2}`` from a recipe's YAML).

    Raises:
        ValueError: an unknown name; an option the optimizer does not take, or one the name fixes
            (``nesterov`` for ``"nag"``, ``method`` for ``"lsr1"``); the message lists the valid ones.
    """
    spec = _spec_for(name)
    valid = spec.options()
    fixed = sorted(set(options) & set(spec.fixed))
    if fixed:
        raise ValueError(
            f"optimizer {name!r} sets {', '.join(f'{k}={spec.fixed[k]!r}' for k in fixed)} itself "
            f"({spec.description}); valid options: {', '.join(valid)}"
        )
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for optimizer {name!r} "
            f"({spec.cls.__module__}.{spec.cls.__qualname__}); valid options: {', '.join(valid)}"
        )
    if isinstance(options.get("trust_region"), Mapping):
        # from a YAML config: {"decrease": 0.2, "increase": 1.2} -> TrustRegionPolicy(decrease=0.2, ...)
        options = {**options, "trust_region": TrustRegionPolicy(**options["trust_region"])}
    return spec.cls(params, **{**spec.defaults, **spec.fixed, **options})


def needs_closure(optimizer: torch.optim.Optimizer | LightningOptimizer | str) -> bool:
    """Whether ``optimizer.step`` must be given a closure that re-evaluates the loss.

    True for this package's quasi-Newton optimizers (:class:`~lightning_sqn.optim.base.QuasiNewtonOptimizer`)
    and ``torch.optim.LBFGS``; False for first-order optimizers. Accepts an optimizer (also wrapped in
    Lightning's ``LightningOptimizer``) or a name of :data:`OPTIMIZERS`.
    """
    if isinstance(optimizer, str):
        return _spec_for(optimizer).closure
    if isinstance(optimizer, LightningOptimizer):
        optimizer = optimizer.optimizer
    return isinstance(optimizer, QuasiNewtonOptimizer | torch.optim.LBFGS)


__all__ = ["OPTIMIZERS", "PAPER_EXPERIMENTS", "OptimizerSpec", "build_optimizer", "needs_closure"]
