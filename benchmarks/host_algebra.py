"""Host (m x m, float64) cost of one quasi-Newton step against the memory size m.

On a GPU the passes over the pair buffer take microseconds; what a step then costs besides its kernel
launches is the host algebra between the two reads: offering the staged pair (skip rule, Gram update,
rank repair, gamma) and solving the subproblem (OBS for the trust region) or forming the compact
inverse coefficients (line search). This script measures that part on the CPU, where it is the same
code, for several memory sizes.

Problem: a convex quadratic f(x) = x^T A x / 2 - b^T x in float32, A diagonal with entries uniform in
[1, 10], n = 20,000 by default, and b drawn afresh for every step (as a new mini-batch would change
the loss; all evaluations of a step share it), so the runs never converge, every pair is exact
curvature (y = A s) and the memories fill up; L-SR1 with
the recipes' fixed gamma = 0.1 (below the spectrum, so rank repair keeps every pair; with the library
default ``"scaled"`` it keeps fewer, see docs/benchmarks.md). Each optimizer takes ``2 m`` untimed
steps, then ``--steps`` timed ones; ``time.perf_counter`` brackets the model's host phases:

* ``offer``: :meth:`LimitedMemoryModel.absorb` (the staged pair offered and the products kept);
* ``solve``: OBS on the host (trust region) or the inverse compact coefficients with g^T d and ||d||
  (line search), without the pass that forms the step (timed separately and subtracted);

medians per step in microseconds, and the pairs held. One optimizer at a time, so caches are as warm
as the step leaves them (after a pass over a 20,000 x 2(m + 1) buffer, i.e. mostly warm).

    python benchmarks/host_algebra.py                  # m = 5, 10, 20, 40
    python benchmarks/host_algebra.py --memories 5,10 --steps 100 --markdown
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import lightning_sqn


class _Timer:
    """Wall time of calls to one method of an object, per step."""

    def __init__(self, obj: Any, name: str) -> None:
        self.total = 0.0
        inner = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        setattr(obj, name, timed)

    def take(self) -> float:
        value, self.total = self.total, 0.0
        return value


OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], int], torch.optim.Optimizer]] = {
    "LSR1 trust_region": lambda p, m: lightning_sqn.LSR1(p, memory=m, gamma=0.1),
    "LSR1 line_search": lambda p, m: lightning_sqn.LSR1(p, memory=m, gamma=0.1, method="line_search"),
    "LBFGS line_search=None": lambda p, m: lightning_sqn.LBFGS(p, memory=m, line_search=None),
}


def run(name: str, m: int, n: int, steps: int, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    d = 1.0 + 9.0 * torch.rand(n, generator=gen)  # the diagonal of A
    b = torch.randn(n, generator=gen)
    x = torch.nn.Parameter(torch.zeros(n))
    opt = OPTIMIZERS[name]([x], m)
    model = opt._model  # the optimizer's curvature model (lightning_sqn/optim/models.py)
    offer = _Timer(model, "absorb")
    solve_name = "solve" if "trust_region" in name else "direction"
    solve = _Timer(model, solve_name)
    pass2 = _Timer(model.matrix.memory, "combine_step")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = 0.5 * (d * x * x).sum() - b @ x
        loss.backward()
        return loss

    rows: list[tuple[float, float]] = []
    pairs: list[int] = []
    for k in range(2 * m + steps):
        b.normal_(generator=gen)  # this step's "batch"
        opt.step(closure)
        o, s, p = offer.take(), solve.take(), pass2.take()
        if k >= 2 * m:
            rows.append((o, s - p))
            pairs.append(opt.last_step.pairs_in_memory)
    offer_us = statistics.median(r[0] for r in rows) * 1e6
    solve_us = statistics.median(r[1] for r in rows) * 1e6
    total_us = statistics.median(r[0] + r[1] for r in rows) * 1e6
    return {"offer": offer_us, "solve": solve_us, "total": total_us, "pairs": statistics.median(pairs)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--memories", default="5,10,20,40", help="comma-separated memory sizes m")
    p.add_argument("--n", type=int, default=20_000, help="problem dimension (default 20,000)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per run (default 60)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    memories = [int(v) for v in args.memories.split(",") if v.strip()]
    if not memories or min(memories) < 1 or args.n < 2 or args.steps < 1:
        p.error("--memories must be integers >= 1, --n >= 2 and --steps >= 1")
    torch.set_num_threads(args.threads)
    print(f"# python {shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])}")
    print(
        f"# torch {torch.__version__}, lightning_sqn {lightning_sqn.__version__}, n = {args.n}, float32, "
        f"{torch.get_num_threads()} thread(s), medians over {args.steps} steps, microseconds per step"
    )
    head = ["optimizer", "m", "pairs held", "offer us", "solve us", "host total us"]
    rows = []
    for name in OPTIMIZERS:
        for m in memories:
            r = run(name, m, args.n, args.steps, args.seed)
            rows.append([name, str(m), f"{r['pairs']:.0f}", f"{r['offer']:.0f}", f"{r['solve']:.0f}",
                         f"{r['total']:.0f}"])  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
