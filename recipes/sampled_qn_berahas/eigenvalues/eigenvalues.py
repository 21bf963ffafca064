"""The poster's eigenvalue comparison: the true Hessian against the SR1, L-SR1 and S-LSR1 matrices B.

Berahas, Jahani & Takáč show "the eigenvalues of SR1, LSR1 and S-LSR1 at points A, B and C for a toy
classification problem". The poster gives no more than that; this script fixes the rest (our design):

* **one run**: S-LSR1 (Option II, memory 10, initial radius 1) on the sin problem from the authors'
  initialisation (seed ``--seed``), float64, full batch, ``--iters`` iterations; its iterates x_k and
  gradients g_k are kept;
* **points**: A = x_1 (the first iterate after the start: the plateau where every unit outputs about
  1/2), B = the first iterate whose loss is below half the initial loss (ln 2 / 2), C = the first
  iterate at 100% training accuracy (or the last iterate if none is);
* **matrices at a point x_k**: the true Hessian H(x_k) (``torch.func.hessian``, exact, d <= 908);
  SR1 = :class:`~lightning_sqn.qn.dense.DenseSR1` updated with every pair of consecutive accepted
  iterates up to x_k (s = x_{j+1} - x_j, y = g_{j+1} - g_j: what classical SR1 would have collected on
  this path); L-SR1 = :class:`~lightning_sqn.qn.lsr1.LSR1Matrix` (memory 10, B form, ``gamma="scaled"``)
  with the same pairs, the last 10 kept; S-LSR1 = a fresh ``LSR1Matrix`` (memory 10, ``gamma="eigen"``
  as :class:`~lightning_sqn.SampledLSR1`) with 10 pairs sampled at x_k (sigma ~ N(0, I), Y = H sigma:
  Option II);
* **measures**: all eigenvalues (PNG, one panel per point, symmetric-log axis), and per matrix
  lambda_min, lambda_max, the number of negative eigenvalues, ||B - H||_F / ||H||_F, and the error of
  the 5 eigenvalues of largest magnitude (B's against H's, both sorted by magnitude), largest absolute
  difference over H's spectral radius.

    python recipes/sampled_qn_berahas/eigenvalues/eigenvalues.py --out OUT            # all three networks
    python recipes/sampled_qn_berahas/eigenvalues/eigenvalues.py --sizes small --iters 50 --out OUT

Writes ``OUT/eigenvalues_<size>.png`` and ``OUT/eigenvalues.md`` (the table), prints the table.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import hessian

import lightning_sqn as sqn
from lightning_sqn._flat import FlatParams, FunctionalModule
from lightning_sqn.problems.toy import TOY_WIDTHS, toy_sigmoid_network, toy_sin_data
from lightning_sqn.qn.dense import DenseSR1
from lightning_sqn.qn.lsr1 import LSR1Matrix

MEMORY = 10


def flat_loss(model: nn.Module, X: Tensor, y: Tensor):
    """f(w) over the flat parameter vector w (the order of ``model.parameters()``), through the package's
    functional adapter (:class:`~lightning_sqn._flat.FunctionalModule`)."""
    flat = FlatParams(list(model.parameters()))
    network = FunctionalModule(model, flat)

    def f(w: Tensor) -> Tensor:
        return nn.functional.cross_entropy(network(tuple(flat.unflatten(w)), X), y)

    return f


def trajectory(
    size: str, seed: int, iters: int
) -> tuple[nn.Module, list[Tensor], list[Tensor], list[float], list[float]]:
    """The S-LSR1 run: iterates, gradients, losses and training accuracies at x_0 .. x_iters."""
    X, y = toy_sin_data()
    model = toy_sigmoid_network(size, seed=seed, init="authors")
    opt = sqn.SampledLSR1(
        model.parameters(), memory=MEMORY, sampling="hessian", initial_radius=1.0, seed=seed
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward(create_graph=opt.graph_requested)
        return loss

    xs, gs, fs, accs = [], [], [], []

    def record() -> None:
        w = torch.cat([p.detach().flatten() for p in model.parameters()])
        model.zero_grad()
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(model(X), y)
            grads = torch.autograd.grad(loss, list(model.parameters()))
        xs.append(w.clone())
        gs.append(torch.cat([g.flatten() for g in grads]))
        fs.append(float(loss.detach()))
        with torch.no_grad():
            accs.append(100.0 * float((model(X).argmax(1) == y).double().mean()))

    record()
    for _ in range(iters):
        opt.step(closure)
        record()
    return model, xs, gs, fs, accs


def points(fs: list[float], accs: list[float]) -> dict[str, int]:
    """A, B, C of the module docstring (iterate indices)."""
    half = next((k for k, f in enumerate(fs) if f < 0.5 * fs[0]), len(fs) - 1)
    full = next((k for k, a in enumerate(accs) if a >= 100.0), len(fs) - 1)
    return {"A": 1, "B": half, "C": max(full, half)}


def matrices_at(
    k: int, f, xs: list[Tensor], gs: list[Tensor], generator: torch.Generator
) -> dict[str, Tensor]:
    """The four matrices of the module docstring at x_k."""
    d = xs[0].numel()
    H = hessian(f)(xs[k])
    H = 0.5 * (H + H.T)
    sr1 = DenseSR1(d)
    lsr1 = LSR1Matrix(MEMORY, d, gamma="scaled")
    for j in range(k):
        s, yv = xs[j + 1] - xs[j], gs[j + 1] - gs[j]
        if float(s.norm()) == 0.0:  # a rejected step: no pair
            continue
        sr1.update(s, yv)
        lsr1.update(s, yv)
    sampled = LSR1Matrix(MEMORY, d, gamma="eigen")
    for _ in range(MEMORY):
        sigma = torch.randn(d, dtype=torch.float64, generator=generator)
        sampled.update(sigma, H @ sigma)
    return {"true Hessian": H, "SR1": sr1.to_dense(), "L-SR1": lsr1.to_dense(), "S-LSR1": sampled.to_dense()}


def measures(B: Tensor, H: Tensor, eb: Tensor, eh: Tensor, top: int = 5) -> dict[str, float]:
    """The table's measures of B against H, from their eigenvalues ``eb`` and ``eh`` (ascending)."""
    big_b = eb[eb.abs().argsort(descending=True)][:top]
    big_h = eh[eh.abs().argsort(descending=True)][:top]
    return {
        "lambda_min": float(eb.min()),
        "lambda_max": float(eb.max()),
        "negative": int((eb < -1e-12 * max(1.0, float(eb.abs().max()))).sum()),
        "frobenius": float(torch.linalg.norm(B - H) / torch.linalg.norm(H)),
        "top": float((big_b - big_h).abs().max() / eh.abs().max().clamp_min(1e-300)),
    }


def study(size: str, seed: int, iters: int, out: Path) -> list[str]:
    model, xs, gs, fs, accs = trajectory(size, seed, iters)
    X, y = toy_sin_data()
    f = flat_loss(model, X, y)
    generator = torch.Generator().manual_seed(seed + 1)
    rows, spectra = [], {}
    d = xs[0].numel()
    for name, k in points(fs, accs).items():
        mats = matrices_at(k, f, xs, gs, generator)
        H = mats["true Hessian"]
        eigs = {m: torch.linalg.eigvalsh(0.5 * (B + B.T)) for m, B in mats.items()}
        spectra[name] = (k, eigs)
        for m, B in mats.items():
            r = measures(B, H, eigs[m], eigs["true Hessian"])
            rows.append(
                f"| {size} ({d}) | {name}: k = {k}, f = {fs[k]:.3g}, acc {accs[k]:.0f}% | {m} | "
                f"{r['lambda_min']:.3g} | {r['lambda_max']:.3g} | {r['negative']} | "
                + ("–" if m == "true Hessian" else f"{r['frobenius']:.3g} | {r['top']:.3g}")
                + (" | – |" if m == "true Hessian" else " |")
            )
    _plot(size, d, spectra, out / f"eigenvalues_{size}.png")
    return rows


def _plot(size: str, d: int, spectra: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spectra), figsize=(4.2 * len(spectra), 3.6), sharey=False)
    styles = {
        "true Hessian": ("k", "-"),
        "SR1": ("tab:blue", "--"),
        "L-SR1": ("tab:orange", ":"),
        "S-LSR1": ("tab:green", "-."),
    }
    for ax, (name, (k, eig)) in zip(axes, spectra.items(), strict=True):
        for m, e in eig.items():
            color, ls = styles[m]
            ax.plot(range(1, e.numel() + 1), e.numpy(), color=color, ls=ls, label=m, lw=1.4)
        h = eig["true Hessian"].abs()
        ax.set_yscale("symlog", linthresh=max(float(h[h > 0].min()) if (h > 0).any() else 1e-8, 1e-8))
        ax.set_title(f"point {name} (iteration {k})")
        ax.set_xlabel("eigenvalue index (ascending)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("eigenvalue (symlog)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"sin problem, {size} network (d = {d}): eigenvalues of B along one S-LSR1 run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(TOY_WIDTHS), choices=list(TOY_WIDTHS))
    parser.add_argument("--iters", type=int, default=200, help="S-LSR1 iterations of the run (200)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and sampling seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.iters < 2:
        parser.error("--iters must be >= 2")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
        args.out.mkdir(parents=True, exist_ok=True)
        head = [
            "| network (d) | point | matrix | lambda_min | lambda_max | # negative | ||B - H||_F / ||H||_F | "
            "top-5 error / ρ(H) |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        rows = [row for size in args.sizes for row in study(size, args.seed, args.iters, args.out)]
    finally:
        torch.set_default_dtype(previous)
    text = "\n".join(head + rows) + "\n"
    (args.out / "eigenvalues.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
