"""The sampled quasi-Newton paper's toy study: iterations to 100% training accuracy, full batch.

Berahas, Jahani & Takáč compare GD, Adam, BFGS, L-BFGS, SR1, L-SR1, S-LSR1 and S-LBFGS on a 2-class,
2-D problem with sigmoid networks of d = 36, 176 and 908 parameters. This script runs every method on
the same data (:func:`~lightning_sqn.problems.toy.toy_xor_data`) and the same initial networks and
prints, per network and method: iterations until every training point is classified correctly (or
"-" within the budget), closure evaluations (function + gradient), Hessian-vector products, final
loss and wall time.

    python benchmarks/sampled_toy.py            # all three networks, about 2 minutes on 2 CPU cores
    python benchmarks/sampled_toy.py --sizes small --max-iters 200
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import lightning_sqn as sqn
from lightning_sqn.problems.toy import toy_sigmoid_network, toy_xor_data

Factory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

METHODS: dict[str, tuple[Factory, int]] = {
    # name: (factory, iteration budget multiplier: first-order methods get 10x the iterations)
    "S-LSR1 (II, Hv)": (lambda p: sqn.SampledLSR1(p, memory=10, sampling="hessian", seed=0), 1),
    "S-LSR1 (I, grad)": (
        lambda p: sqn.SampledLSR1(p, memory=10, sample_radius=1e-2, sampling="gradient", seed=0),
        1,
    ),
    "S-LBFGS (II, Hv)": (lambda p: sqn.SampledLBFGS(p, memory=10, sampling="hessian", seed=0), 1),
    "L-SR1 (TR)": (lambda p: sqn.LSR1(p, memory=10), 1),
    "L-BFGS": (lambda p: sqn.LBFGS(p, memory=10), 1),
    "SR1 (dense, TR)": (lambda p: sqn.SR1(p), 1),
    "BFGS (dense)": (lambda p: sqn.BFGS(p), 1),
    "Adam (lr 1e-2)": (lambda p: torch.optim.Adam(p, lr=1e-2), 10),
    "GD (lr 1.0)": (lambda p: torch.optim.SGD(p, lr=1.0), 10),
}


def run(size: str, name: str, max_iters: int) -> dict[str, object]:
    X, y = toy_xor_data()
    model = toy_sigmoid_network(size, seed=0)
    factory, budget = METHODS[name]
    opt = factory(list(model.parameters()))
    evals = {"n": 0}

    def closure() -> torch.Tensor:
        evals["n"] += 1
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        if getattr(opt, "graph_requested", False):
            loss.backward(create_graph=True)
        else:
            loss.backward()
        return loss

    products = 0
    reached = None
    start = time.perf_counter()
    for k in range(max_iters * budget):
        opt.step(closure)
        stats = getattr(opt, "last_step", None)
        products += (stats.hessian_products or 0) if stats is not None else 0
        with torch.no_grad():
            if bool((model(X).argmax(1) == y).all()):
                reached = k + 1
                break
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(X), y))
    return {
        "iters": reached,
        "evals": evals["n"],
        "products": products,
        "loss": loss,
        "time": elapsed,
        "d": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--max-iters", type=int, default=500, help="budget of the second-order methods")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
    columns = ("iterations to 100%", "f+g evaluations", "Hv products", "final loss", "time (s)")
    print("| network (d) | method | " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for name in METHODS:
            r = run(size, name, args.max_iters)
            it = "-" if r["iters"] is None else r["iters"]
            print(
                f"| {size} ({r['d']}) | {name} | {it} | {r['evals']} | {r['products']} | "
                f"{r['loss']:.4f} | {r['time']:.1f} |"
            )


if __name__ == "__main__":
    main()
