"""Full-batch convergence on Rosenbrock problems, compared with SciPy's L-BFGS-B, and on a quadratic.

Every method must drive ||grad f|| (recomputed independently with ``torch.autograd.grad`` at the final
point) below 1e-6 within an iteration cap, in float64, on

* ``rosenbrock``: the Rosenbrock function in R^2 from (-1.2, 1);
* ``extended``: the extended Rosenbrock function in R^100 (Moré, Garbow & Hillstrom 1981, problem 21:
  50 uncoupled copies, sum_i 100 (x_{2i} - x_{2i-1}^2)^2 + (1 - x_{2i-1})^2) from (-1.2, 1, -1.2, 1, ...);
* ``chained``: the chained ("generalized") Rosenbrock function in R^100,
  sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 (``scipy.optimize.rosen``), from the same start; much
  harder.

The closure evaluations used are compared with ``scipy.optimize.minimize(method="L-BFGS-B",
options={"maxcor": 5})`` on the same start, counted up to SciPy's first evaluation with
||grad f|| <= 1e-6.

:func:`convergence_table` returns the rows (method, problem, n, iterations, closure evaluations, SciPy's
numbers) so that a benchmark script can print the same table; ``pytest -s`` prints it too.

Note on closure counts: by default every step of these optimizers evaluates f and g at x_k before
searching (``step()`` is built for mini-batches, where the batch changes between steps), so a run here
costs one evaluation per iteration more than SciPy, which reuses the last line-search evaluation;
``full_batch=True`` removes that evaluation (``tests/optim/test_full_batch.py``,
``benchmarks/mgh_full_batch.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import Tensor

import lightning_sqn

GRAD_TOL = 1e-6

#: (name, factory) of the methods in the table.
METHODS: dict[str, Callable[[list[Tensor]], torch.optim.Optimizer]] = {
    "LSR1-TR": lambda p: lightning_sqn.LSR1(p, method="trust_region"),
    "LSR1-LS": lambda p: lightning_sqn.LSR1(p, method="line_search"),
    "LBFGS": lambda p: lightning_sqn.LBFGS(p),
    "BFGS": lambda p: lightning_sqn.BFGS(p),
    "SR1-TR": lambda p: lightning_sqn.SR1(p, method="trust_region"),
    "SR1-LS": lambda p: lightning_sqn.SR1(p, method="line_search"),
}


def chained_rosenbrock(x: Tensor) -> Tensor:
    """sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2; minimum 0 at (1, ..., 1); n = 2 is Rosenbrock."""
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def extended_rosenbrock(x: Tensor) -> Tensor:
    """sum_i 100 (x_{2i} - x_{2i-1}^2)^2 + (1 - x_{2i-1})^2 (MGH problem 21); minimum 0 at (1, ..., 1)."""
    a, b = x[0::2], x[1::2]
    return (100.0 * (b - a**2) ** 2 + (1.0 - a) ** 2).sum()


#: name -> (function, dimension)
PROBLEMS: dict[str, tuple[Callable[[Tensor], Tensor], int]] = {
    "rosenbrock": (chained_rosenbrock, 2),
    "extended": (extended_rosenbrock, 100),
    "chained": (chained_rosenbrock, 100),
}

#: Iteration caps: two to three times the iterations measured when the test was written.
CAPS: dict[tuple[str, str], int] = {
    **{(m, "rosenbrock"): 200 for m in METHODS},
    **{(m, "extended"): 200 for m in METHODS},
    ("LSR1-LS", "rosenbrock"): 2000,
    ("LSR1-LS", "extended"): 2000,
    ("LSR1-TR", "chained"): 4000,
    ("LSR1-LS", "chained"): 3000,
    ("LBFGS", "chained"): 1200,
    ("BFGS", "chained"): 1200,
    ("SR1-TR", "chained"): 2500,
    ("SR1-LS", "chained"): 3000,
}

#: Runs that take more than a few seconds on one CPU core (thousands of cheap-but-not-free steps).
SLOW: set[tuple[str, str]] = set()  # all runs fit in CI (about 25 s together on 2 cores)


def rosenbrock_start(n: int) -> Tensor:
    """(-1.2, 1, -1.2, 1, ...)."""
    x = torch.empty(n, dtype=torch.float64)
    x[0::2] = -1.2
    x[1::2] = 1.0
    return x


def gradient(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """grad f(x) by a separate autograd call on a detached copy (independent of the optimizer)."""
    z = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(f(z), z)[0]


@dataclass(frozen=True)
class ConvergenceRow:
    method: str
    problem: str
    n: int
    iterations: int  #: optimizer steps taken
    closure_evals: int  #: closure calls actually made
    counted_evals: int  #: ``optimizer.counters.closure_evals``
    grad_norm: float  #: ||grad f|| at the final point, recomputed independently
    scipy_nit: int  #: SciPy L-BFGS-B iterations until ||grad f|| <= GRAD_TOL
    scipy_nfev: int  #: SciPy function evaluations until ||grad f|| <= GRAD_TOL

    @property
    def converged(self) -> bool:
        return self.grad_norm <= GRAD_TOL


def run_method(method: str, problem: str, cap: int | None = None) -> tuple[int, int, int, float]:
    """(iterations, closure calls, counted closure evals, final ||g||) of one method on one problem."""
    f, n = PROBLEMS[problem]
    cap = CAPS[(method, problem)] if cap is None else cap
    x = torch.nn.Parameter(rosenbrock_start(n))
    opt = METHODS[method]([x])
    calls = 0

    def closure() -> Tensor:
        nonlocal calls
        calls += 1
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    iterations = 0
    while iterations < cap and float(torch.linalg.vector_norm(gradient(f, x))) > GRAD_TOL:
        opt.step(closure)
        iterations += 1
    grad_norm = float(torch.linalg.vector_norm(gradient(f, x)))
    return iterations, calls, opt.counters.closure_evals, grad_norm


class _Reached(Exception):
    pass


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Single-threaded BLAS for SciPy's tiny L-BFGS-B products (threads make it ~20x slower on a busy box)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (dev extra)
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


_SCIPY: dict[str, tuple[int, int]] = {}


def scipy_lbfgsb(problem: str) -> tuple[int, int]:
    """(iterations, evaluations) of SciPy's L-BFGS-B (maxcor 5) until an evaluation has ||g|| <= GRAD_TOL."""
    if problem in _SCIPY:
        return _SCIPY[problem]
    f, n = PROBLEMS[problem]
    evals, iters = 0, 0

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evals
        evals += 1
        t = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        value = f(t)
        (g,) = torch.autograd.grad(value, t)
        if float(torch.linalg.vector_norm(g)) <= GRAD_TOL:
            raise _Reached
        return float(value.detach()), g.numpy()

    def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        nonlocal iters
        iters += 1

    options = {"maxcor": 5, "maxiter": 100_000, "maxfun": 100_000, "ftol": 0.0, "gtol": 0.0}
    try:
        with _one_blas_thread():
            res = scipy.optimize.minimize(
                fun,
                rosenbrock_start(n).numpy(),
                jac=True,
                method="L-BFGS-B",
                options=options,
                callback=callback,
            )
    except _Reached:
        _SCIPY[problem] = (iters, evals)
        return _SCIPY[problem]
    raise AssertionError(f"SciPy L-BFGS-B stopped before ||g|| <= {GRAD_TOL}: {res.message}")


_ROWS: dict[tuple[str, str], ConvergenceRow] = {}


def convergence_row(method: str, problem: str) -> ConvergenceRow:
    """The row of one (method, problem), computed once per process."""
    if (method, problem) not in _ROWS:
        iterations, calls, counted, grad_norm = run_method(method, problem)
        nit, nfev = scipy_lbfgsb(problem)
        n = PROBLEMS[problem][1]
        _ROWS[(method, problem)] = ConvergenceRow(
            method, problem, n, iterations, calls, counted, grad_norm, nit, nfev
        )
    return _ROWS[(method, problem)]


def convergence_table(
    methods: tuple[str, ...] = tuple(METHODS), problems: tuple[str, ...] = tuple(PROBLEMS)
) -> list[ConvergenceRow]:
    """The rows for every (method, problem); each run is computed once per process."""
    return [convergence_row(m, p) for p in problems for m in methods]


def format_table(rows: list[ConvergenceRow]) -> str:
    head = (
        f"{'method':<8} {'problem':<10} {'n':>4} {'iters':>6} {'evals':>6} {'||g||':>9} "
        f"{'scipy nit':>9} {'scipy nfev':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.method:<8} {r.problem:<10} {r.n:>4} {r.iterations:>6} {r.closure_evals:>6} "
            f"{r.grad_norm:>9.2e} {r.scipy_nit:>9} {r.scipy_nfev:>10}"
        )
    return "\n".join(lines)


def _run_param(method: str, problem: str):
    marks = [pytest.mark.slow] if (method, problem) in SLOW else []
    return pytest.param(method, problem, marks=marks, id=f"{method}-{problem}")


@pytest.mark.parametrize(("method", "problem"), [_run_param(m, p) for p in PROBLEMS for m in METHODS])
def test_rosenbrock_converges(method: str, problem: str) -> None:
    row = convergence_row(method, problem)
    assert row.converged, asdict(row)
    assert row.iterations < CAPS[(method, problem)]
    assert row.closure_evals == row.counted_evals


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_lbfgs_search_evaluations_within_1_5x_scipy(problem: str) -> None:
    """Iterations, and evaluations beyond the one f(x_k) per step, within 1.5x of SciPy's L-BFGS-B."""
    row = convergence_row("LBFGS", problem)
    assert row.converged
    assert row.iterations <= 1.5 * row.scipy_nit, asdict(row)
    assert row.closure_evals - row.iterations <= 1.5 * row.scipy_nfev, asdict(row)


def test_convergence_table() -> None:
    """Print the table (``-s`` shows it): the runs not marked slow, and any slow run done before.

    Convergence itself is asserted per run by :func:`test_rosenbrock_converges`.
    """
    fast = [convergence_row(m, p) for p in PROBLEMS for m in METHODS if (m, p) not in SLOW]
    order = {(m, p): i for i, (p, m) in enumerate((p, m) for p in PROBLEMS for m in METHODS)}
    rows = sorted(_ROWS.values(), key=lambda r: order[(r.method, r.problem)])
    print(f"\n{format_table(rows)}")
    assert len(fast) == len(PROBLEMS) * len(METHODS) - len(SLOW)


def _quadratic() -> tuple[Tensor, Tensor]:
    """A = Q diag(1, ..., 100) Q^T in R^10 (SPD, condition number 100) and a minimizer x*."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(1.0, 100.0, 10, dtype=torch.float64)) @ Q.T
    b = torch.randn(10, generator=g, dtype=torch.float64)
    return A, torch.linalg.solve(A, b)


@pytest.mark.parametrize(
    ("options", "max_steps"),
    [
        pytest.param({}, 200, id="defaults"),
        # m = n pairs and B_0 below the spectrum: once 10 independent pairs are held, B = A on a
        # quadratic (S^T Y symmetric), so the next interior step is the exact Newton step.
        pytest.param({"memory": 10, "gamma": "eigen"}, 30, id="m10-eigen"),
    ],
)
def test_lsr1_trust_region_finds_exact_minimizer_of_quadratic(options: dict, max_steps: int) -> None:
    """f(x) = 1/2 (x - x*)^T A (x - x*), A SPD in R^10: LSR1 trust region reaches x* to 1e-10.

    The function is 1/2 x^T A x - b^T x up to a constant; writing it around x* keeps f(x*) = 0, so the
    actual reduction f(x_k) - f(x_k + s_k) is not lost to rounding of a large constant near x*.
    """
    A, x_star = _quadratic()
    x = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    opt = lightning_sqn.LSR1([x], method="trust_region", **options)

    def closure() -> Tensor:
        opt.zero_grad()
        e = x - x_star
        loss = 0.5 * e @ (A @ e)
        loss.backward()
        return loss

    steps = 0
    while steps < max_steps and float(torch.linalg.vector_norm(x.detach() - x_star)) > 1e-10:
        opt.step(closure)
        steps += 1
    error = float(torch.linalg.vector_norm(x.detach() - x_star))
    assert error <= 1e-10, (error, steps, opt.counters.as_dict())
