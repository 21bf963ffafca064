"""How many Newton iterations the OBS secular equation needs, on random hard problems.

The host solver (``solve_obs_host``, NumPy float64) stops once no iterate moves (4 eps relative) or at
the cap ``NEWTON_ITERS`` (12); the margin between what is needed and the cap is what this script
measures. Problems (float64): n in [4, 40), m in [1, 8), B_0 = gamma I with gamma in
[1e-3, 1e3], pairs (s, A s + 1e-3 noise) from a symmetric A whose spectrum spans up to 8 decades with
about 30% negative eigenvalues, ||g|| in [1e-6, 1e6], radius in [1e-8, 1e4]; every third gradient is made
nearly hard (its component on the eigenvector of lambda_min scaled to 1e-14 ... 1e-2 of ||g||).

    python benchmarks/obs_newton_iterations.py [--problems 3000] [--seed 0] [--oracle]

``--oracle`` also solves every problem with the dense Moré-Sorensen solver (``solve_exact`` on
``to_dense()``) and reports how far the OBS steps are from it: the largest ||p|| / Delta - 1 and the
largest (m(p_OBS) - m(p_exact)) / |m(p_exact)|, with m the quadratic model.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter

import torch

from lightning_sqn.qn.lsr1 import LSR1Matrix
from lightning_sqn.subproblem.exact import solve_exact
from lightning_sqn.subproblem.obs import solve_obs, solve_obs_projected
from lightning_sqn.subproblem.result import SolverStatus


def log_uniform(lo: float, hi: float, gen: torch.Generator) -> float:
    return 10 ** float(torch.empty(()).uniform_(lo, hi, generator=gen))


def problem(k: int, gen: torch.Generator):
    kw = {"dtype": torch.float64}
    n = int(torch.randint(4, 40, (), generator=gen))
    m = int(torch.randint(1, 8, (), generator=gen))
    spread = log_uniform(0, 8, gen)
    signs = torch.where(torch.rand(n, generator=gen) < 0.3, -1.0, 1.0).double()
    lam = torch.logspace(0, math.log10(spread), n, **kw) * signs
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, **kw))
    A = Q @ torch.diag(lam) @ Q.T
    mat = LSR1Matrix(m, n, gamma=log_uniform(-3, 3, gen), **kw)
    for _ in range(m + 2):
        s = torch.randn(n, generator=gen, **kw)
        mat.update(s, A @ s + 1e-3 * torch.randn(n, generator=gen, **kw))
    g = torch.randn(n, generator=gen, **kw) * log_uniform(-6, 6, gen)
    if k % 3 == 1:  # nearly hard case
        z = torch.linalg.eigh(mat.to_dense())[1][:, 0]
        g = g - (g @ z) * z + log_uniform(-14, -2, gen) * g.norm() * z
    radius = torch.tensor(log_uniform(-8, 4, gen), **kw)
    return mat, g, radius


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle", action="store_true", help="compare with the dense exact solver")
    parser.add_argument(
        "--newton-iters", type=int, default=None, help="cap for the --oracle solves (default: the solver's)"
    )
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    counts: Counter[int] = Counter()
    worst_residual, boundary = 0.0, 0
    outside, worst_gap, above = 0.0, 0.0, 0
    for k in range(args.problems):
        mat, g, radius = problem(k, gen)
        sol = solve_obs_projected(
            mat, mat.memory.project(g).numpy(), float(g @ g), float(radius), newton_iters=200
        )
        counts[sol.newton_iterations] += 1
        if args.oracle:
            cap = {} if args.newton_iters is None else {"newton_iters": args.newton_iters}
            res = solve_obs(mat, g, float(radius), **cap)
            B = mat.to_dense()
            B = 0.5 * (B + B.T)
            ex = solve_exact(B, g, radius)
            m_obs = float(g @ res.step + 0.5 * res.step @ (B @ res.step))
            m_ex = float(g @ ex.step + 0.5 * ex.step @ (B @ ex.step))
            outside = max(outside, float(torch.linalg.vector_norm(res.step) / radius) - 1.0)
            gap = (m_obs - m_ex) / abs(m_ex) if m_ex != 0 else 0.0
            worst_gap = max(worst_gap, gap)
            above += gap > 1e-8
        if int(sol.status) == SolverStatus.BOUNDARY:  # phi(sigma) = 0 defines sigma only there
            boundary += 1
            worst_residual = max(worst_residual, float(sol.residual_phi))
    print("command: python " + " ".join(sys.argv))
    print(f"{args.problems} problems, seed {args.seed}; Newton iterations until no iterate moved:")
    print("| iterations | problems |\n| ---: | ---: |")
    for its in sorted(counts):
        print(f"| {its} | {counts[its]} |")
    print(
        f"most: {max(counts)}; boundary solutions: {boundary}, largest |phi(sigma)| Delta among them: "
        f"{worst_residual:.1e}"
    )
    if args.oracle:
        print(
            f"dense oracle: largest ||p|| / Delta - 1: {outside:.1e}; largest model gap "
            f"(m_OBS - m_exact) / |m_exact|: {worst_gap:.1e}; problems with a gap above 1e-8: {above}"
        )


if __name__ == "__main__":
    main()
