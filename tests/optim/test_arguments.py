"""Every numeric argument of every optimizer refuses strings, NaN, infinities and out-of-range values at
construction with a ValueError that names the argument (never a bare TypeError at the first step)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import lightning_sqn

#: (optimizer, fixed keyword arguments, numeric argument, kind): kind "real" (a float, finite),
#: "int" (an integer), "real_inf" (a float that may be +inf)
ARGUMENTS: list[tuple[type, dict[str, Any], str, str]] = []


def _add(
    cls: type, fixed: dict[str, Any], reals: tuple[str, ...], ints: tuple[str, ...] = (), infs=()
) -> None:
    ARGUMENTS.extend((cls, fixed, name, "real") for name in reals)
    ARGUMENTS.extend((cls, fixed, name, "int") for name in ints)
    ARGUMENTS.extend((cls, fixed, name, "real_inf") for name in infs)


_add(
    lightning_sqn.LSR1,
    {},
    ("gamma", "gamma_init", "skip_tol", "rank_tol", "initial_radius"),
    ("memory", "newton_iters"),
)
_add(lightning_sqn.LBFGS, {}, ("lr", "curvature_eps", "gamma"), ("memory", "forget_every"))
_add(lightning_sqn.BFGS, {}, ("lr", "curvature_eps", "gamma"))
_add(lightning_sqn.SR1, {}, ("gamma", "skip_tol", "initial_radius"))
_add(
    lightning_sqn.SampledLSR1,
    {},
    ("sample_radius", "gamma", "gamma_init", "skip_tol", "rank_tol", "initial_radius"),
    ("memory", "newton_iters", "cg_max_iters", "seed"),
)
_add(lightning_sqn.SampledLBFGS, {}, ("sample_radius", "lr", "curvature_eps", "gamma"), ("memory", "seed"))
_add(
    lightning_sqn.HessianFree,
    {"loss": "cross_entropy"},
    (
        "damping",
        "cg_eps",
        "cg_tol",
        "warm_start_decay",
        "preconditioner_exponent",
        "curvature_batch_fraction",
    ),
    ("max_cg_iters",),
)
_add(
    lightning_sqn.TrustRegionNewton,
    {"warmup_steps": 1, "lr": 0.1},
    ("initial_radius", "eta1", "eta2", "gamma1", "gamma2", "krylov_tol", "krylov_theta", "beta", "eps", "lr"),
    ("max_cg_iters", "warmup_steps"),
    infs=("max_radius",),
)

BAD = {
    "real": ["0.1", math.nan, math.inf, -math.inf, -1.0, None, True],
    "real_inf": ["10", math.nan, -math.inf, -1.0, None],
    "int": ["3", 2.5, math.nan, -1, True],
}
#: arguments for which None is a documented value (derived by the paper's rule)
NONE_OK = {"rank_tol", "initial_radius", "forget_every", "cg_max_iters", "seed", "gamma2"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize(
    ("cls", "fixed", "name", "kind"), ARGUMENTS, ids=lambda v: getattr(v, "__name__", str(v))
)
def test_bad_numeric_argument_is_refused_by_name(cls: type, fixed: dict, name: str, kind: str) -> None:
    for value in BAD[kind]:
        if value is None and name in NONE_OK:
            continue
        kwargs = {**fixed, name: value}
        with pytest.raises(ValueError, match=name) as err:
            cls(_model().parameters(), **kwargs)
        assert repr(value) in str(err.value) or str(value) in str(err.value), (name, value, str(err.value))


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (lightning_sqn.LSR1, {"method": "trust-region"}, "method"),
        (lightning_sqn.LSR1, {"method": "line_search", "line_search": "wolfe"}, "line_search"),
        (lightning_sqn.LBFGS, {"line_search": "wolfe"}, "line_search"),
        (lightning_sqn.BFGS, {"line_search": 1.0}, "line_search"),
        (lightning_sqn.SampledLBFGS, {"line_search": "armijo"}, "line_search"),
        (lightning_sqn.HessianFree, {"loss": "cross_entropy", "line_search": "armijo"}, "line_search"),
        (lightning_sqn.LSR1, {"trust_region": {"decrease": 0.5}}, "trust_region"),
        (lightning_sqn.SR1, {"trust_region": {"decrease": 0.5}}, "trust_region"),
        (lightning_sqn.SampledLSR1, {"trust_region": {"decrease": 0.5}}, "trust_region"),
        (
            lightning_sqn.HessianFree,
            {"loss": "cross_entropy", "damping_rule": {"boost": 2.0}},
            "damping_rule",
        ),
        (lightning_sqn.LSR1, {"full_batch": "yes"}, "full_batch"),
        (lightning_sqn.HessianFree, {"loss": "cross_entropy", "preconditioner": 1}, "preconditioner"),
        (lightning_sqn.HessianFree, {"loss": "mse_sum"}, "loss"),
        (lightning_sqn.TrustRegionNewton, {"norm": "adam"}, "norm"),
        (lightning_sqn.TrustRegionNewton, {"lr": 0.1}, "warmup_steps"),
        (lightning_sqn.SampledLSR1, {"subproblem": "cg"}, "subproblem"),
        (lightning_sqn.SampledLSR1, {"sampling": "hessian_vector"}, "sampling"),
    ],
)
def test_bad_component_or_choice_is_refused_by_name(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(_model().parameters(), **kwargs)


@pytest.mark.parametrize("field", ["eta", "low", "high", "decrease", "increase", "min_radius", "max_radius"])
def test_trust_region_policy_refuses_strings_by_name(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        lightning_sqn.TrustRegionPolicy(**{field: "0.5"})


def test_group_option_the_optimizer_does_not_have_is_refused() -> None:
    model = _model()
    with pytest.raises(ValueError, match="has no option 'weight_decay'"):
        lightning_sqn.LSR1([{"params": model.parameters(), "weight_decay": 1e-4}])
    with pytest.raises(ValueError, match="has no option 'lr'"):
        lightning_sqn.LSR1([{"params": model.parameters(), "lr": 0.1}])


def test_group_lr_is_honoured_where_the_optimizer_has_one() -> None:
    model = _model()
    opt = lightning_sqn.LBFGS([{"params": model.parameters(), "lr": 0.25}])
    assert opt.learning_rate() == 0.25
