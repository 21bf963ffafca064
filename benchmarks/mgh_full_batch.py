"""Evaluations to ||grad f|| <= 1e-6 on the first 12 Moré-Garbow-Hillstrom problems, against SciPy.

Moré, Garbow & Hillstrom (1981), "Testing unconstrained optimization software", ACM TOMS 7(1): problems
1-12, f(x) = sum_i f_i(x)^2 with the residuals f_i and the standard starting points x0 of the paper,
float64 (:data:`PROBLEMS`). Sizes where the paper leaves a choice: Jennrich-Sampson m = 10, Gulf research
and development m = 99, Box three-dimensional m = 10. In the Gulf function the paper's "y_i mi x_2" is
y_i - x_2 (a known typesetting error; with it f = 0 at (50, 25, 1.5) as published).

Every method starts at x0 and runs until ||grad f|| <= 1e-6 (``GRAD_TOL``) or the evaluation cap
(default 20,000); the table counts function + gradient evaluations (one evaluation computes both):

* ``LSR1-TR``: ``lightning_sqn.LSR1(params, memory=5, method="trust_region")``, with ``full_batch``
  False and True (``fb``);
* ``SR1-TR fb``: ``lightning_sqn.SR1(params, method="trust_region", full_batch=True)``, dense SR1 with
  the same trust-region rules and Delta_0 as ``LSR1-TR`` and an exact subproblem solution: what
  limited memory costs, apart from the trust-region rules;
* ``LBFGS``: ``lightning_sqn.LBFGS(params, memory=5)`` (strong Wolfe line search), ``full_batch`` False
  and True;
* ``trust-constr``: ``scipy.optimize.minimize(method="trust-constr", jac=True,
  hess=scipy.optimize.SR1())``;
* ``L-BFGS-B``: ``scipy.optimize.minimize(method="L-BFGS-B", jac=True, options={"maxcor": 5})``.

For the ``lightning_sqn`` optimizers the count is the number of closure calls (checked against
``opt.counters.closure_evals``) over the steps taken until ||grad f|| at the current point, recomputed
with a separate ``torch.autograd.grad`` call (not counted), is <= 1e-6. SciPy is counted up to its first
evaluation whose gradient has norm <= 1e-6 (its own tolerances are set to zero or tiny so that its
stopping test does not end the run first), the convention of ``tests/optim/test_convergence.py``.
"fail (g)" means the cap was reached, or the method stopped, with ||grad f|| = g at its final point.

Ratios: ``LSR1-TR fb / trust-constr`` and ``LBFGS fb / L-BFGS-B`` (evaluations). A count followed by
"(f ...)" reached ||grad f|| <= 1e-6 away from every published minimum (f not within 1e-4 relative plus
1e-8 absolute of one): Jennrich-Sampson's trust-region runs, whose first step of length Delta_0 = ||g_0||
lands where f is flat (f -> 2020 as x -> (-inf, -inf)), and SciPy on Powell badly scaled, which passes
||g|| <= 1e-6 at f ~ 1e-7 on its way. A second table gives f at the final point of each method, i.e.
which minimum it found (several problems have more than one).

The summary counts the problems where LSR1-TR fb needs at most as many evaluations as trust-constr (a
trust-constr failure where ours succeeds counts; an own failure never does), then the same counting only
ends at a published minimum; it gives the geometric mean and the maximum of LBFGS fb / L-BFGS-B over
the problems both solve, and over those both solve at a published minimum.

Meyer (10) is beyond 1e-6 in float64 for every method: at its least-squares minimiser ||grad f|| is about
2e-2, and it changes by about 1e-2 between neighbouring floating-point points (Hessian eigenvalues from
2.5e-2 to 2.5e14), so the column shows how close each method got.

    python benchmarks/mgh_full_batch.py                      # all 12, 1-2 minutes on one core
    python benchmarks/mgh_full_batch.py --markdown --problems 1,5,7 --cap 5000
    python benchmarks/mgh_full_batch.py --initial-radius 1     # Delta_0 = 1 (trust-constr's) for ours
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

import lightning_sqn

GRAD_TOL = 1e-6
DEFAULT_CAP = 20_000


# --------------------------------------------------------------------------------------------------
# The problems: residual vectors r(x), f(x) = ||r(x)||^2
# --------------------------------------------------------------------------------------------------


def _arange(m: int, x: Tensor) -> Tensor:
    """i = 1, ..., m as float64 on x's device."""
    return torch.arange(1, m + 1, dtype=x.dtype, device=x.device)


def rosenbrock(x: Tensor) -> Tensor:
    """MGH 1: f_1 = 10 (x_2 - x_1^2), f_2 = 1 - x_1."""
    return torch.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def freudenstein_roth(x: Tensor) -> Tensor:
    """MGH 2: f_1 = -13 + x_1 + ((5 - x_2) x_2 - 2) x_2, f_2 = -29 + x_1 + ((x_2 + 1) x_2 - 14) x_2."""
    x1, x2 = x[0], x[1]
    return torch.stack(
        [-13.0 + x1 + ((5.0 - x2) * x2 - 2.0) * x2, -29.0 + x1 + ((x2 + 1.0) * x2 - 14.0) * x2]
    )


def powell_badly_scaled(x: Tensor) -> Tensor:
    """MGH 3: f_1 = 10^4 x_1 x_2 - 1, f_2 = exp(-x_1) + exp(-x_2) - 1.0001."""
    return torch.stack([1e4 * x[0] * x[1] - 1.0, torch.exp(-x[0]) + torch.exp(-x[1]) - 1.0001])


def brown_badly_scaled(x: Tensor) -> Tensor:
    """MGH 4: f_1 = x_1 - 10^6, f_2 = x_2 - 2 10^-6, f_3 = x_1 x_2 - 2."""
    return torch.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


_BEALE_Y = (1.5, 2.25, 2.625)


def beale(x: Tensor) -> Tensor:
    """MGH 5: f_i = y_i - x_1 (1 - x_2^i), i = 1, 2, 3, y = (1.5, 2.25, 2.625)."""
    i = _arange(3, x)
    y = torch.tensor(_BEALE_Y, dtype=x.dtype, device=x.device)
    return y - x[0] * (1.0 - x[1] ** i)


def jennrich_sampson(x: Tensor, m: int = 10) -> Tensor:
    """MGH 6: f_i = 2 + 2i - (exp(i x_1) + exp(i x_2)), i = 1, ..., m."""
    i = _arange(m, x)
    return 2.0 + 2.0 * i - (torch.exp(i * x[0]) + torch.exp(i * x[1]))


def helical_valley(x: Tensor) -> Tensor:
    """MGH 7: f_1 = 10 (x_3 - 10 theta), f_2 = 10 (sqrt(x_1^2 + x_2^2) - 1), f_3 = x_3, with
    2 pi theta = arctan(x_2 / x_1) for x_1 > 0 and arctan(x_2 / x_1) + pi for x_1 < 0."""
    x1, x2, x3 = x[0], x[1], x[2]
    theta = torch.atan(x2 / x1) / (2.0 * math.pi) + 0.5 * (x1 < 0).to(x.dtype)
    return torch.stack([10.0 * (x3 - 10.0 * theta), 10.0 * (torch.sqrt(x1**2 + x2**2) - 1.0), x3])


_BARD_Y = (0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39)


def bard(x: Tensor) -> Tensor:
    """MGH 8: f_i = y_i - (x_1 + u_i / (v_i x_2 + w_i x_3)), u_i = i, v_i = 16 - i, w_i = min(u_i, v_i)."""
    u = _arange(15, x)
    v = 16.0 - u
    w = torch.minimum(u, v)
    y = torch.tensor(_BARD_Y, dtype=x.dtype, device=x.device)
    return y - (x[0] + u / (v * x[1] + w * x[2]))


_GAUSSIAN_Y = (0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989)


def gaussian(x: Tensor) -> Tensor:
    """MGH 9: f_i = x_1 exp(-x_2 (t_i - x_3)^2 / 2) - y_i, t_i = (8 - i) / 2, i = 1, ..., 15."""
    t = (8.0 - _arange(15, x)) / 2.0
    y = torch.tensor(_GAUSSIAN_Y + _GAUSSIAN_Y[-2::-1], dtype=x.dtype, device=x.device)
    return x[0] * torch.exp(-x[1] * (t - x[2]) ** 2 / 2.0) - y


_MEYER_Y = (
    34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0,
    8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0,
)  # fmt: skip


def meyer(x: Tensor) -> Tensor:
    """MGH 10: f_i = x_1 exp(x_2 / (t_i + x_3)) - y_i, t_i = 45 + 5i, i = 1, ..., 16."""
    t = 45.0 + 5.0 * _arange(16, x)
    y = torch.tensor(_MEYER_Y, dtype=x.dtype, device=x.device)
    return x[0] * torch.exp(x[1] / (t + x[2])) - y


def gulf(x: Tensor, m: int = 99) -> Tensor:
    """MGH 11: f_i = exp(-|y_i - x_2|^x_3 / x_1) - t_i, t_i = i / 100, y_i = 25 + (-50 ln t_i)^(2/3)."""
    t = _arange(m, x) / 100.0
    y = 25.0 + (-50.0 * torch.log(t)) ** (2.0 / 3.0)
    return torch.exp(-(torch.abs(y - x[1]) ** x[2]) / x[0]) - t


def box_3d(x: Tensor, m: int = 10) -> Tensor:
    """MGH 12: f_i = exp(-t_i x_1) - exp(-t_i x_2) - x_3 (exp(-t_i) - exp(-10 t_i)), t_i = 0.1 i."""
    t = 0.1 * _arange(m, x)
    return torch.exp(-t * x[0]) - torch.exp(-t * x[1]) - x[2] * (torch.exp(-t) - torch.exp(-10.0 * t))


@dataclass(frozen=True)
class Problem:
    """One MGH problem: residuals, x0 and what the paper reports about the minimum."""

    number: int
    name: str
    n: int
    m: int
    residuals: Callable[[Tensor], Tensor]
    x0: tuple[float, ...]
    #: the published minimum value f* (the one the paper lists first)
    f_min: float
    #: a published minimiser with f = f_min, where the paper gives one exactly (else None)
    x_min: tuple[float, ...] | None = None
    #: other published local minima: (f, minimiser or None)
    other_minima: tuple[tuple[float, tuple[float, ...] | None], ...] = ()

    def f(self, x: Tensor) -> Tensor:
        r = self.residuals(x)
        return (r * r).sum()

    def start(self) -> Tensor:
        return torch.tensor(self.x0, dtype=torch.float64)

    def published_minimum(self, f: float) -> bool:
        """Whether f is one of the published minimum values (to 1e-4 relative, plus 1e-8 absolute)."""
        values = (self.f_min, *(v for v, _ in self.other_minima))
        return any(abs(f - v) <= 1e-4 * abs(v) + 1e-8 for v in values)


PROBLEMS: dict[int, Problem] = {
    p.number: p
    for p in [
        Problem(1, "Rosenbrock", 2, 2, rosenbrock, (-1.2, 1.0), 0.0, (1.0, 1.0)),
        Problem(
            2, "Freudenstein-Roth", 2, 2, freudenstein_roth, (0.5, -2.0), 0.0, (5.0, 4.0),
            other_minima=((48.9842, None),),  # at (11.41..., -0.8968...)
        ),
        # f = 0 at (1.098...e-5, 9.106...)
        Problem(3, "Powell badly scaled", 2, 2, powell_badly_scaled, (0.0, 1.0), 0.0),
        Problem(4, "Brown badly scaled", 2, 3, brown_badly_scaled, (1.0, 1.0), 0.0, (1e6, 2e-6)),
        Problem(5, "Beale", 2, 3, beale, (1.0, 1.0), 0.0, (3.0, 0.5)),
        # f = 124.362 at x_1 = x_2 = 0.2578 (m = 10)
        Problem(6, "Jennrich-Sampson", 2, 10, jennrich_sampson, (0.3, 0.4), 124.362),
        Problem(7, "Helical valley", 3, 3, helical_valley, (-1.0, 0.0, 0.0), 0.0, (1.0, 0.0, 0.0)),
        Problem(
            8, "Bard", 3, 15, bard, (1.0, 1.0, 1.0), 8.21487e-3,
            other_minima=((17.4286, None),),  # at (0.8406..., -inf, -inf)
        ),
        Problem(9, "Gaussian", 3, 15, gaussian, (0.4, 1.0, 0.0), 1.12793e-8),
        Problem(10, "Meyer", 3, 16, meyer, (0.02, 4000.0, 250.0), 87.9458),
        Problem(11, "Gulf R&D", 3, 99, gulf, (5.0, 2.5, 0.15), 0.0, (50.0, 25.0, 1.5)),
        Problem(
            12, "Box 3-d", 3, 10, box_3d, (0.0, 10.0, 20.0), 0.0, (1.0, 10.0, 1.0),
            other_minima=((0.0, (10.0, 1.0, -1.0)),),  # and (a, a, 0) for every a
        ),
    ]
}  # fmt: skip


def gradient(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """grad f(x) by a separate autograd call on a detached copy (independent of any optimizer)."""
    z = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(f(z), z)[0]


def grad_norm(f: Callable[[Tensor], Tensor], x: Tensor) -> float:
    return float(torch.linalg.vector_norm(gradient(f, x)))


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    evals: int  #: function + gradient evaluations (to the first point with ||g|| <= GRAD_TOL)
    grad_norm: float  #: ||grad f|| at the final point
    f: float  #: f at the final point
    steps: int | None = None  #: optimizer steps (lightning_sqn only)
    note: str = ""  #: why a run ended early (exception, SciPy message)

    @property
    def solved(self) -> bool:
        return self.grad_norm <= GRAD_TOL


#: keyword arguments of every trust-region optimizer (``--initial-radius`` sets Delta_0 here)
TR_OPTIONS: dict[str, float] = {}

#: label -> factory of the lightning_sqn optimizers
OURS: dict[str, Callable[[list[Tensor]], torch.optim.Optimizer]] = {
    "LSR1-TR": lambda p: lightning_sqn.LSR1(p, memory=5, method="trust_region", **TR_OPTIONS),
    "LSR1-TR fb": lambda p: lightning_sqn.LSR1(
        p, memory=5, method="trust_region", full_batch=True, **TR_OPTIONS
    ),
    "SR1-TR fb": lambda p: lightning_sqn.SR1(p, method="trust_region", full_batch=True, **TR_OPTIONS),
    "LBFGS": lambda p: lightning_sqn.LBFGS(p, memory=5),
    "LBFGS fb": lambda p: lightning_sqn.LBFGS(p, memory=5, full_batch=True),
}


def run_ours(problem: Problem, label: str, cap: int = DEFAULT_CAP) -> Run:
    """Steps of ``OURS[label]`` from x0 until ||grad f|| <= GRAD_TOL or ``cap`` closure calls."""
    f = problem.f
    x = torch.nn.Parameter(problem.start())
    opt = OURS[label]([x])
    calls = 0

    def closure() -> Tensor:
        nonlocal calls
        calls += 1
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    steps, note = 0, ""
    try:
        while calls < cap and grad_norm(f, x) > GRAD_TOL:
            opt.step(closure)
            steps += 1
    except (FloatingPointError, RuntimeError) as err:  # NonFiniteLossError is a FloatingPointError
        note = f"{type(err).__name__}: {err}"
    if not note and calls != opt.counters.closure_evals:
        raise AssertionError(f"{label}: {calls} closure calls but counters say {opt.counters.closure_evals}")
    with torch.no_grad():
        fx = float(f(x))
    return Run(calls, grad_norm(f, x), fx, steps, note)


class _Reached(Exception):
    pass


class _Capped(Exception):
    pass


def _one_blas_thread() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def run_scipy(problem: Problem, method: str, cap: int = DEFAULT_CAP) -> Run:
    """SciPy's ``method`` ("trust-constr" with SR1, or "L-BFGS-B" with maxcor 5) counted up to its first
    evaluation with ||grad f|| <= GRAD_TOL (or ``cap`` evaluations, or its own stop)."""
    f = problem.f
    evals = 0
    last: list[np.ndarray] = [np.array(problem.x0)]

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evals
        if evals >= cap:
            raise _Capped
        evals += 1
        last[0] = np.array(z, dtype=np.float64)
        t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        value = f(t)
        (g,) = torch.autograd.grad(value, t)
        if float(torch.linalg.vector_norm(g)) <= GRAD_TOL:
            raise _Reached
        return float(value.detach()), g.numpy().copy()

    if method == "trust-constr":
        kwargs = dict(
            hess=scipy.optimize.SR1(),
            options={"gtol": 1e-12, "xtol": 1e-300, "maxiter": 10 * cap},
        )
    elif method == "L-BFGS-B":
        kwargs = dict(
            options={"maxcor": 5, "gtol": 0.0, "ftol": 0.0, "maxiter": 10 * cap, "maxfun": 10 * cap}
        )
    else:
        raise ValueError(method)
    note = ""
    try:
        with _one_blas_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = scipy.optimize.minimize(fun, np.array(problem.x0), jac=True, method=method, **kwargs)
        note = str(res.message)
        x_end = torch.tensor(res.x, dtype=torch.float64)
    except _Reached:
        x_end = torch.tensor(last[0], dtype=torch.float64)
    except _Capped:
        note = "evaluation cap"
        x_end = torch.tensor(last[0], dtype=torch.float64)
    except (FloatingPointError, ValueError, np.linalg.LinAlgError) as err:
        note = f"{type(err).__name__}: {err}"
        x_end = torch.tensor(last[0], dtype=torch.float64)
    with torch.no_grad():
        fx = float(f(x_end))
    return Run(evals, grad_norm(f, x_end), fx, None, note)


SCIPY = ("trust-constr", "L-BFGS-B")
COLUMNS = ("LSR1-TR", "LSR1-TR fb", "SR1-TR fb", "trust-constr", "LBFGS", "LBFGS fb", "L-BFGS-B")


def run_problem(problem: Problem, cap: int) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    for label in COLUMNS:
        if label in SCIPY:
            runs[label] = run_scipy(problem, label, cap)
        else:
            runs[label] = run_ours(problem, label, cap)
    return runs


# --------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------


def _cell(run: Run, problem: Problem) -> str:
    if not run.solved:
        return f"fail ({run.grad_norm:.1e})"
    return str(run.evals) if problem.published_minimum(run.f) else f"{run.evals} (f {run.f:.4g})"


def _ratio(ours: Run, theirs: Run) -> str:
    return f"{ours.evals / theirs.evals:.2f}" if ours.solved and theirs.solved else "-"


def summary(results: dict[int, dict[str, Run]]) -> list[str]:
    def at_min(k: int, label: str) -> bool:
        run = results[k][label]
        return run.solved and PROBLEMS[k].published_minimum(run.f)

    tr_le = [
        k
        for k, r in results.items()
        if r["LSR1-TR fb"].solved
        and (not r["trust-constr"].solved or r["LSR1-TR fb"].evals <= r["trust-constr"].evals)
    ]
    dense_le = [
        k
        for k, r in results.items()
        if r["SR1-TR fb"].solved
        and (not r["trust-constr"].solved or r["SR1-TR fb"].evals <= r["trust-constr"].evals)
    ]
    tr_le_min = [
        k
        for k, r in results.items()
        if at_min(k, "LSR1-TR fb")
        and (not at_min(k, "trust-constr") or r["LSR1-TR fb"].evals <= r["trust-constr"].evals)
    ]

    def ratio_line(pairs: dict[int, float], what: str) -> str:
        if not pairs:
            return f"LBFGS fb / L-BFGS-B: no problem {what}"
        gmean = math.exp(sum(map(math.log, pairs.values())) / len(pairs))
        worst = max(pairs, key=pairs.__getitem__)
        return (
            f"LBFGS fb / L-BFGS-B over the {len(pairs)} problems {what}: geometric mean {gmean:.2f}, "
            f"max {pairs[worst]:.2f} (problem {worst})"
        )

    both = {
        k: r["LBFGS fb"].evals / r["L-BFGS-B"].evals
        for k, r in results.items()
        if r["LBFGS fb"].solved and r["L-BFGS-B"].solved
    }
    both_min = {k: q for k, q in both.items() if at_min(k, "LBFGS fb") and at_min(k, "L-BFGS-B")}
    lines = [
        f"LSR1-TR fb evaluations <= trust-constr (SR1)'s on {len(tr_le)} of {len(results)} problems "
        f"({', '.join(map(str, tr_le)) or 'none'}); counting only ends at a published minimum: "
        f"{len(tr_le_min)} ({', '.join(map(str, tr_le_min)) or 'none'})",
        f"SR1-TR fb (dense SR1, the same trust-region rules) evaluations <= trust-constr's on "
        f"{len(dense_le)} of {len(results)} problems ({', '.join(map(str, dense_le)) or 'none'})",
        f"||grad f|| <= {GRAD_TOL:g} reached (of {len(results)}; at a published minimum): "
        + ", ".join(
            f"{c} {sum(r[c].solved for r in results.values())} ({sum(at_min(k, c) for k in results)})"
            for c in COLUMNS
        ),
        ratio_line(both, "both solve"),
        ratio_line(both_min, "both solve at a published minimum"),
    ]
    return lines


def format_tables(results: dict[int, dict[str, Run]], markdown: bool) -> str:
    head = ["#", "problem", "n", *COLUMNS, "TR fb / tc", "LBFGS fb / L-BFGS-B"]
    rows = []
    for k, runs in results.items():
        p = PROBLEMS[k]
        rows.append(
            [
                str(k),
                p.name,
                str(p.n),
                *(_cell(runs[c], p) for c in COLUMNS),
                _ratio(runs["LSR1-TR fb"], runs["trust-constr"]),
                _ratio(runs["LBFGS fb"], runs["L-BFGS-B"]),
            ]
        )
    head2 = ["#", "problem", "published f*", *(f"f {c}" for c in COLUMNS)]
    rows2 = []
    for k, runs in results.items():
        p = PROBLEMS[k]
        published = ", ".join(f"{v:.6g}" for v in (p.f_min, *(fm for fm, _ in p.other_minima)))
        rows2.append([str(k), p.name, published, *(f"{runs[c].f:.6g}" for c in COLUMNS)])
    return _table(head, rows, markdown) + "\n\nf at the final point:\n\n" + _table(head2, rows2, markdown)


def _table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if j == 1 else f"{{:>{w}}}" for j, w in enumerate(widths))
    lines = [fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--problems",
        type=lambda s: [int(v) for v in s.split(",")],
        default=list(PROBLEMS),
        help="comma-separated MGH numbers (default 1,...,12)",
    )
    parser.add_argument("--cap", type=int, default=DEFAULT_CAP, help="evaluation cap per run")
    parser.add_argument(
        "--initial-radius",
        type=float,
        default=None,
        help="Delta_0 of the trust-region optimizers (default: theirs, ||g_0||; trust-constr uses 1)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--markdown", action="store_true", help="markdown tables")
    args = parser.parse_args(argv)
    unknown = [k for k in args.problems if k not in PROBLEMS]
    if unknown:
        parser.error(f"unknown problems {unknown}: choose from 1-12")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.initial_radius is not None:
        TR_OPTIONS["initial_radius"] = args.initial_radius
    start = time.perf_counter()
    results: dict[int, dict[str, Run]] = {}
    for k in args.problems:
        t0 = time.perf_counter()
        results[k] = run_problem(PROBLEMS[k], args.cap)
        if not args.markdown:
            print(f"# problem {k} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    print(f"# {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(
        f"# torch {torch.__version__}, scipy {scipy.__version__}, {torch.get_num_threads()} threads, "
        f"float64, ||grad f|| <= {GRAD_TOL:g}, cap {args.cap} evaluations, {elapsed:.1f} s"
    )
    print()
    print(format_tables(results, args.markdown))
    print()
    for line in summary(results):
        print(f"{'- ' if args.markdown else ''}{line}")
    notes = [
        f"problem {k} {c}: {r.note}"
        for k, runs in results.items()
        for c, r in runs.items()
        if r.note and not r.solved
    ]
    if notes:
        print()
        for line in notes:
            print(f"{'- ' if args.markdown else ''}{line}")


if __name__ == "__main__":
    main()
