"""Contract-test registry: every public optimizer configuration the contract tests run over.

In the spirit of PyTorch's ``OptimizerInfo``: one :class:`OptimizerCase` per configuration, holding a
factory ``params -> optimizer`` and the few facts a test needs to know about it (which globalization it
uses, how it treats a non-finite trial point, which option value a parameter group may not set).
Adding an optimizer or a configuration means adding one entry to :data:`OPTIMIZER_CASES`; every contract
test in ``test_contract.py`` then runs over it.

This module also holds the small problems those tests share (a regression MLP with fixed mini-batches
and a closure that counts its calls). It contains no tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

import lightning_sqn

Params = Iterable[Tensor] | Iterable[dict[str, Any]]

#: How a step treats a trial point whose loss is not finite.
#: ``"reject"``: trust region, the step is rejected and the radius shrinks;
#: ``"backtrack"``: a line search tries a shorter step;
#: ``"restart"``: fixed step without line search, x stays and the memory is cleared.
NanTrial = Literal["reject", "backtrack", "restart"]


@dataclass(frozen=True)
class OptimizerCase:
    """One optimizer configuration under contract test.

    Attributes:
        name: test id.
        factory: builds the optimizer from parameters or parameter groups (keyword options may be added
            per group by the caller).
        trust_region: whether each step is a trust-region step (exactly two closure calls).
        nan_trial: how a non-finite trial loss is handled, see :data:`NanTrial`.
        group_option: an ``(option, value)`` pair, ``value`` different from what the factory passes; a
            parameter group (or a loaded state_dict) that sets it must raise a ValueError naming the
            option, since the optimizer reads its options from the constructor only.
    """

    name: str
    factory: Callable[[Params], torch.optim.Optimizer]
    trust_region: bool
    nan_trial: NanTrial
    group_option: tuple[str, Any]
    #: pairs are sampled afresh at every iterate (the step's own pair is never offered)
    sampled: bool = False
    #: which closure call of a step evaluates the trust-region trial point (1-based)
    trial_call: int = 2

    def __repr__(self) -> str:  # short ids in pytest output
        return self.name


OPTIMIZER_CASES: list[OptimizerCase] = [
    OptimizerCase(
        "lsr1_tr_scaled",
        lambda p: lightning_sqn.LSR1(p, method="trust_region", gamma="scaled"),
        trust_region=True,
        nan_trial="reject",
        group_option=("skip_tol", 1e-6),
    ),
    OptimizerCase(
        "lsr1_tr_eigen",
        lambda p: lightning_sqn.LSR1(p, method="trust_region", gamma="eigen"),
        trust_region=True,
        nan_trial="reject",
        group_option=("memory", 3),
    ),
    OptimizerCase(
        "lsr1_ls_scaled",
        lambda p: lightning_sqn.LSR1(p, method="line_search", gamma="scaled"),
        trust_region=False,
        nan_trial="backtrack",
        group_option=("gamma", "eigen"),
    ),
    OptimizerCase(
        "lsr1_ls_eigen",
        lambda p: lightning_sqn.LSR1(p, method="line_search", gamma="eigen"),
        trust_region=False,
        nan_trial="backtrack",
        group_option=("gamma_init", 2.0),
    ),
    OptimizerCase(
        "lbfgs",
        lambda p: lightning_sqn.LBFGS(p),
        trust_region=False,
        nan_trial="backtrack",
        group_option=("gamma", 2.0),
    ),
    OptimizerCase(
        "lbfgs_forget3",
        lambda p: lightning_sqn.LBFGS(p, forget_every=3),
        trust_region=False,
        nan_trial="backtrack",
        group_option=("forget_every", 2),
    ),
    OptimizerCase(
        "lbfgs_fixed_step",
        lambda p: lightning_sqn.LBFGS(p, line_search=None, lr=0.5),
        trust_region=False,
        nan_trial="restart",
        group_option=("curvature_eps", 1e-4),
    ),
    OptimizerCase(
        "bfgs",
        lambda p: lightning_sqn.BFGS(p),
        trust_region=False,
        nan_trial="backtrack",
        group_option=("curvature_eps", 1e-4),
    ),
    OptimizerCase(
        "sr1_tr",
        lambda p: lightning_sqn.SR1(p, method="trust_region"),
        trust_region=True,
        nan_trial="reject",
        group_option=("skip_tol", 1e-6),
    ),
    OptimizerCase(
        "sr1_ls",
        lambda p: lightning_sqn.SR1(p, method="line_search"),
        trust_region=False,
        nan_trial="backtrack",
        group_option=("gamma", 2.0),
    ),
    OptimizerCase(
        "sampled_lsr1_hessian",
        lambda p: lightning_sqn.SampledLSR1(p, memory=3, sample_radius=0.1, sampling="hessian", seed=0),
        trust_region=True,
        nan_trial="reject",
        group_option=("sample_radius", 0.5),
        sampled=True,
    ),
    OptimizerCase(
        "sampled_lsr1_gradient",
        lambda p: lightning_sqn.SampledLSR1(p, memory=3, sample_radius=1e-3, sampling="gradient", seed=0),
        trust_region=False,  # m + 2 evaluations per step
        nan_trial="reject",
        group_option=("sampling", "hessian"),
        sampled=True,
        trial_call=5,
    ),
    OptimizerCase(
        "sampled_lsr1_steihaug",
        lambda p: lightning_sqn.SampledLSR1(p, memory=3, sample_radius=0.1, subproblem="steihaug", seed=0),
        trust_region=True,
        nan_trial="reject",
        group_option=("subproblem", "obs"),
        sampled=True,
    ),
    OptimizerCase(
        "sampled_lbfgs_hessian",
        lambda p: lightning_sqn.SampledLBFGS(p, memory=3, sample_radius=0.1, sampling="hessian", seed=0),
        trust_region=False,
        nan_trial="backtrack",
        group_option=("memory", 2),
        sampled=True,
    ),
    # Hessian-free: the registry's closures are not a watched network (no GGN capture), so the graph
    # route without the preconditioner. A NaN at call 2 (the last stored CG iterate) is passed over by
    # CG backtracking and the line search. There is no pair memory, so, as for the sampled methods,
    # the step never stores a pair (``sampled=True`` makes the line-search contract expect that).
    OptimizerCase(
        "hessian_free_hessian",
        lambda p: lightning_sqn.HessianFree(p, curvature="hessian", preconditioner=False),
        trust_region=False,
        nan_trial="backtrack",
        group_option=("damping", 2.0),
        sampled=True,
    ),
    # Trust-region Newton: two evaluations per step. Its rejection of a NaN trial point is what the
    # "restart" branch of the line-search contract checks (two calls, x unchanged, nothing stored, an
    # empty memory); it has no pair memory to count skips in, so it cannot use the "reject" branch
    # (tests/optim/test_trust_region_newton.py checks the radius after a NaN trial point).
    OptimizerCase(
        "trust_region_newton_rmsprop",
        lambda p: lightning_sqn.TrustRegionNewton(p, norm="rmsprop"),
        trust_region=True,
        nan_trial="restart",
        group_option=("eta2", 0.9),
    ),
    OptimizerCase(
        "trust_region_newton_uniform_warmup",
        lambda p: lightning_sqn.TrustRegionNewton(p, norm="uniform", warmup_steps=2, lr=0.05),
        trust_region=False,  # the two warm-up steps evaluate once
        nan_trial="restart",
        group_option=("warmup_steps", 1),
    ),
]

TRUST_REGION_CASES = [c for c in OPTIMIZER_CASES if c.nan_trial == "reject"]
LINE_SEARCH_CASES = [c for c in OPTIMIZER_CASES if c.nan_trial != "reject"]


# ---------------------------------------------------------------------------------------------- problems
def make_mlp(seed: int = 0, dtype: torch.dtype = torch.float64, unused: bool = False) -> nn.Module:
    """A 3-8-1 tanh MLP; with ``unused=True`` it also owns a parameter that forward never touches."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    if unused:
        model.register_parameter("unused", nn.Parameter(torch.randn(4, dtype=dtype)))
    return model


def make_batches(
    num_batches: int = 3, batch_size: int = 16, dtype: torch.dtype = torch.float64
) -> list[tuple[Tensor, Tensor]]:
    """Fixed mini-batches of a smooth regression target y = sin(x_0) + x_1 x_2 / 2 (seeded)."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(num_batches):
        X = torch.randn(batch_size, 3, generator=g, dtype=torch.float64)
        y = torch.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3]
        out.append((X.to(dtype), y.to(dtype)))
    return out


class CountingClosure:
    """The closure of step ``t`` on mini-batch ``t % len(batches)``; counts its calls.

    ``corrupt(call_in_step)`` may return True to make that call's loss NaN (1-based call index within
    the current step; :meth:`new_step` resets it).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: list[tuple[Tensor, Tensor]],
        corrupt: Callable[[int], bool] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.batches = batches
        self.corrupt = corrupt
        self.batch_index = 0
        self.calls = 0
        self.calls_this_step = 0

    def new_step(self, t: int) -> CountingClosure:
        self.batch_index = t % len(self.batches)
        self.calls_this_step = 0
        return self

    def __call__(self) -> Tensor:
        self.calls += 1
        self.calls_this_step += 1
        self.optimizer.zero_grad()
        X, y = self.batches[self.batch_index]
        loss = nn.functional.mse_loss(self.model(X), y)
        if self.corrupt is not None and self.corrupt(self.calls_this_step):
            loss = loss * float("nan")
        backward(loss, self.optimizer)
        return loss


def backward(loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
    """``loss.backward()``, keeping the graph when the optimizer asks for Hessian-vector products.

    ``torch.autograd.backward`` warns about the parameter/gradient reference cycle that
    ``create_graph=True`` creates; the optimizer breaks it by detaching ``p.grad`` after reading it.
    """
    if getattr(optimizer, "graph_requested", False):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
            loss.backward(create_graph=True)
    else:
        loss.backward()


def extended_rosenbrock(x: Tensor) -> Tensor:
    """sum_i 100 (x_{2i} - x_{2i-1}^2)^2 + (1 - x_{2i-1})^2 (MGH problem 21); minimum 0 at (1, ..., 1)."""
    a, b = x[0::2], x[1::2]
    return (100.0 * (b - a**2) ** 2 + (1.0 - a) ** 2).sum()


def minimize_rosenbrock(
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer], n: int, max_steps: int
) -> Tensor:
    """Steps ``make_optimizer`` from (-1.2, 1, ...) on the extended Rosenbrock function until the
    independently recomputed ||grad f|| <= 1e-6 (or ``max_steps``); asserts it got there at (1, ..., 1)."""
    x = nn.Parameter(torch.tensor([-1.2, 1.0] * (n // 2), dtype=torch.float64))
    opt = make_optimizer([x])

    def closure() -> Tensor:
        opt.zero_grad()
        f = extended_rosenbrock(x)
        backward(f, opt)
        return f

    for _ in range(max_steps):
        opt.step(closure)
        (gx,) = torch.autograd.grad(extended_rosenbrock(x), x)
        if gx.norm() <= 1e-6:
            break
    assert gx.norm() <= 1e-6
    torch.testing.assert_close(x.detach(), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-5)
    return x.detach()


def full_loss(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    """Mean squared error over all batches."""
    with torch.no_grad():
        return sum(float(nn.functional.mse_loss(model(X), y)) for X, y in batches) / len(batches)


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[Tensor, Tensor]],
    steps: int,
    start: int = 0,
) -> tuple[list[float], list[dict[str, Any]]]:
    """Steps ``start, ..., start + steps - 1``; returns the losses f(x_t) and ``last_step.as_dict()``s."""
    closure = CountingClosure(model, optimizer, batches)
    losses, records = [], []
    for t in range(start, start + steps):
        losses.append(float(optimizer.step(closure.new_step(t))))
        records.append(optimizer.last_step.as_dict())
    return losses, records


def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """All tensors in a nested dict/list structure, with their paths."""
    if isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from iter_tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from iter_tensors(v, f"{prefix}/{i}")


_SAME_SIZE_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def bitwise_equal(a: Tensor, b: Tensor) -> bool:
    """Same dtype, shape and bits (so -0.0 != 0.0 and NaN == NaN with the same payload)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in _SAME_SIZE_INT:
        a = a.detach().contiguous().view(_SAME_SIZE_INT[a.dtype])
        b = b.detach().contiguous().view(_SAME_SIZE_INT[b.dtype])
    return torch.equal(a, b)


def assert_same_structure(a: Any, b: Any, path: str = "") -> None:
    """Bitwise equality of nested state (dicts, lists, tensors, numbers; NaN == NaN)."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), path
        assert bitwise_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: {a.keys()} != {b.keys()}"
        for k in a:
            assert_same_structure(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_structure(x, y, f"{path}/{i}")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
