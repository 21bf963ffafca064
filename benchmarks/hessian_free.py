"""Where the time of one Hessian-free outer step goes: gradient, curvature products, CG algebra.

Runs ``lightning_sqn.HessianFree`` on

* ``mlp``: a small MLP classifier 784-200-10 (tanh, cross-entropy; 159,010 parameters), batch 1000;
* ``autoencoder``: the MNIST deep autoencoder of Hinton & Salakhutdinov (2006) used in Martens' slides
  ("Experimental parameters": encoder 784-1000-500-250-30, decoder mirrored, logistic units except the
  linear code layer, trained with cross-entropy: ``bce_with_logits`` on the 784 outputs;
  2,837,314 parameters), batch 500;

on synthetic data (N(0, 1) inputs and teacher labels for the MLP; Bernoulli pixels for the autoencoder),
float32, fixed seed, one fresh batch per outer step. Each configuration (curvature ``ggn`` with the
curvature mini-batch fraction, or ``hessian``; Martens' preconditioner on) runs ``--warmup`` untimed and
``--steps`` timed outer steps; per step the wall time is split into

* **gradient**: the closure evaluation at x_k (forward + backward; with ``hessian`` it keeps the graph);
* **products**: all curvature-vector products B v (for ``ggn`` including the one-off linearisation,
  a ``torch.func.vjp`` forward over the K examples), timed inside CG's matvec;
* **CG algebra**: ``solve_cg`` time minus the products (vector updates, dot products, host syncs);
* **precond**: the preconditioner's per-example gradients (``vmap(grad)`` over the K examples);
* **evals**: the other closure evaluations (CG backtracking over stored iterates, line search);
* **other**: the rest (flattening, bookkeeping).

Medians over the timed steps; ``products/step`` and ``CG iters/step`` are means. Timings are
machine-dependent: the script prints torch's version, threads and device with the table.

``python benchmarks/hessian_free.py --markdown`` prints the table of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import lightning_sqn
from lightning_sqn.optim import hessian_free


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", default="mlp,autoencoder", help="comma-separated: mlp, autoencoder")
    parser.add_argument("--steps", type=int, default=3, help="timed outer steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed outer steps first")
    parser.add_argument("--batch-mlp", type=int, default=1000)
    parser.add_argument("--batch-ae", type=int, default=500)
    parser.add_argument("--fractions", default="1.0,0.25", help="curvature_batch_fraction values (ggn)")
    parser.add_argument("--max-cg-iters", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: keep)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    return args


# ------------------------------------------------------------------------------------------ problems
@dataclass
class Problem:
    name: str
    model: nn.Module
    loss: str
    batch: Callable[[int], tuple[Tensor, Tensor]]
    loss_fn: Callable[[Tensor, Tensor], Tensor]


def mlp_problem(batch: int, device: torch.device, seed: int) -> Problem:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 10)).to(device)
    teacher = torch.randn(784, 10, device=device)

    def make(k: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator(device=device).manual_seed(seed * 1000 + k)
        X = torch.randn(batch, 784, generator=g, device=device)
        return X, (X @ teacher).argmax(1)

    return Problem("MLP 784-200-10", model, "cross_entropy", make, F.cross_entropy)


def autoencoder_problem(batch: int, device: torch.device, seed: int) -> Problem:
    torch.manual_seed(seed)
    widths = [784, 1000, 500, 250, 30]
    layers: list[nn.Module] = []
    dims = widths + widths[-2::-1]  # 784-1000-500-250-30-250-500-1000-784
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i not in (len(widths) - 2, len(dims) - 2):  # linear code layer and logits
            layers.append(nn.Sigmoid())
    model = nn.Sequential(*layers).to(device)
    means = torch.rand(784, device=device)

    def make(k: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator(device=device).manual_seed(seed * 1000 + k)
        X = torch.bernoulli(means.expand(batch, 784), generator=g)
        return X, X

    return Problem(
        "autoencoder 784-1000-500-250-30", model, "bce_with_logits", make, F.binary_cross_entropy_with_logits
    )


# ------------------------------------------------------------------------------------------- timing
@dataclass
class StepTimes:
    total: list[float] = field(default_factory=list)
    gradient: list[float] = field(default_factory=list)
    linearize: list[float] = field(default_factory=list)
    products: list[float] = field(default_factory=list)
    cg: list[float] = field(default_factory=list)
    precond: list[float] = field(default_factory=list)
    evals: list[float] = field(default_factory=list)
    num_products: list[int] = field(default_factory=list)
    cg_iters: list[int] = field(default_factory=list)
    closure_evals: list[int] = field(default_factory=list)


class Timers:
    """Per-step accumulators filled by the instrumented pieces of the optimizer."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.linearize = self.products = self.cg = self.precond = 0.0
        self.closure: list[float] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn: Callable, slot: str) -> Callable:
        def wrapper(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            setattr(self, slot, getattr(self, slot) + time.perf_counter() - t0)
            return out

        return wrapper


def instrument(opt: lightning_sqn.HessianFree, timers: Timers) -> None:
    """Time the curvature products (incl. building the operator), the preconditioner and CG."""
    make_products = opt._curvature_products

    def curvature_products(batch, fmod):
        timers.sync()
        t0 = time.perf_counter()
        matvec = make_products(batch, fmod)
        timers.sync()
        timers.linearize += time.perf_counter() - t0
        return timers.timed(matvec, "products")

    opt._curvature_products = curvature_products  # type: ignore[method-assign]
    opt._fisher_diagonal = timers.timed(opt._fisher_diagonal, "precond")  # type: ignore[method-assign]


def run_config(problem: Problem, curvature: str, fraction: float, args, device: torch.device) -> StepTimes:
    model = problem.model
    init = [p.detach().clone() for p in model.parameters()]
    opt = lightning_sqn.HessianFree(
        model.parameters(),
        curvature=curvature,
        loss=problem.loss,
        curvature_batch_fraction=fraction,
        max_cg_iters=args.max_cg_iters,
    )
    opt.watch_module(model)
    timers = Timers(device)
    instrument(opt, timers)
    real_cg = hessian_free.solve_cg
    hessian_free.solve_cg = timers.timed(real_cg, "cg")
    times = StepTimes()
    try:
        for k in range(args.warmup + args.steps):
            X, y = problem.batch(k)
            timers.reset()

            def closure(X: Tensor = X, y: Tensor = y) -> Tensor:
                timers.sync()
                t0 = time.perf_counter()
                opt.zero_grad()
                loss = problem.loss_fn(model(X), y)
                loss.backward(create_graph=opt.graph_requested)
                timers.sync()
                timers.closure.append(time.perf_counter() - t0)
                return loss

            timers.sync()
            t0 = time.perf_counter()
            opt.step(closure)
            timers.sync()
            total = time.perf_counter() - t0
            if k < args.warmup:
                continue
            stats = opt.last_step
            times.total.append(total)
            times.gradient.append(timers.closure[0])
            times.linearize.append(timers.linearize)
            times.products.append(timers.products)
            times.cg.append(timers.cg)
            times.precond.append(timers.precond)
            times.evals.append(sum(timers.closure[1:]))
            times.num_products.append(stats.curvature_products or 0)
            times.cg_iters.append(stats.cg_iterations or 0)
            times.closure_evals.append(stats.closure_evals)
    finally:
        hessian_free.solve_cg = real_cg
        with torch.no_grad():
            for p, q in zip(model.parameters(), init, strict=True):
                p.copy_(q)
    return times


def row(problem: Problem, curvature: str, fraction: float, batch: int, t: StepTimes) -> list[str]:
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    n = sum(p.numel() for p in problem.model.parameters())
    # the matvecs run inside solve_cg; the operator (its linearisation) is built before it
    products = [lin + p for lin, p in zip(t.linearize, t.products, strict=True)]
    cg_algebra = [c - p for c, p in zip(t.cg, t.products, strict=True)]
    parts = zip(t.total, t.gradient, t.linearize, t.cg, t.precond, t.evals, strict=True)
    other = [tot - g - lin - c - pre - e for tot, g, lin, c, pre, e in parts]
    per_product = [p / max(k, 1) for p, k in zip(t.products, t.num_products, strict=True)]
    K = max(1, math.ceil(fraction * batch)) if curvature == "ggn" else batch
    return [
        f"{problem.name} ({n:,})",
        curvature,
        f"{K}/{batch}",
        f"{ms(t.total):.0f}",
        f"{ms(t.gradient):.1f}",
        f"{ms(products):.0f}",
        f"{ms(cg_algebra):.1f}",
        f"{ms(t.precond):.0f}",
        f"{ms(t.evals):.0f}",
        f"{ms(other):.1f}",
        f"{mean(t.num_products):.1f}",
        f"{mean(t.cg_iters):.1f}",
        f"{mean(t.closure_evals):.1f}",
        f"{ms(per_product):.2f}",
    ]


HEADER = [
    "model (n)",
    "curvature",
    "K/B",
    "step ms",
    "gradient ms",
    "products ms",
    "CG algebra ms",
    "precond ms",
    "evals ms",
    "other ms",
    "products/step",
    "CG iters/step",
    "closure evals/step",
    "ms/product",
]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # the hessian configurations keep the graph with loss.backward(create_graph=True) (plain PyTorch)
    warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        if name == "mlp":
            problem, batch = mlp_problem(args.batch_mlp, device, args.seed), args.batch_mlp
        elif name == "autoencoder":
            problem, batch = autoencoder_problem(args.batch_ae, device, args.seed), args.batch_ae
        else:
            raise SystemExit(f"unknown model {name!r}")
        configs = [("ggn", f) for f in args.fractions] + [("hessian", 1.0)]
        for curvature, fraction in configs:
            times = run_config(problem, curvature, fraction, args, device)
            rows.append(row(problem, curvature, fraction, batch, times))
            if not args.markdown:
                print(" | ".join(rows[-1]), flush=True)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"# {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
