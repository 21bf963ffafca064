r"""Figure 2 of Kohler, Adolphs & Lucchi: how diagonal the loss Hessian of a network is, against the
Wigner (Prop. 1) and ordinary-least-squares (Prop. 2) baselines.

For each network, input kind, network state and batch size ``b`` this measures the diagonal share
:math:`\delta(H) = \sum_i |h_{ii}| / \sum_{ij} |h_{ij}|` of the Hessian of the mean cross entropy over ``b``
examples (:func:`lightning_sqn.curvature.diagonal_share.hessian_diagonal_share`): exactly from all ``n``
Hessian columns where that is cheap, otherwise estimated from a uniform sample of columns (one
Hessian-vector product each) with its standard error. The baselines use the same size: Wigner
:math:`1/n`, OLS :math:`1/(1 + (n-1)\sqrt{2/(\pi b)})`.

* networks: ``simple_cnn`` (LeNet-5 on 32x32 RGB, 62,006 weights; the paper's "simple CNN (62k
  weights)"), ``mlp`` (tanh 3072-128-128-10, 411,146 weights; the paper's "MLP (411k weights)") and
  ``small_mlp`` (tanh 48-16-10 on 4x4 average-pooled images, 954 weights, small enough for the exact share,
  which checks the estimator on the same data);
* inputs: ``random`` (standard normal images, uniform random labels) and ``cifar10`` (the first ``b``
  training images, normalized, with their labels; needs ``--data-dir``);
* states: ``init`` (PyTorch's initialisation, seed 0) and ``trained`` (after ``train_epochs`` epochs of
  Adam, lr 1e-3, batch 128, on the CIFAR-10 training images; needs ``--data-dir``).

Writes ``results.json``, ``report.md`` (the table) and ``diagonal_share.png`` into ``--out``::

    python recipes/ellipsoidal_tr_kohler2019/fig2_diagonal_share/diagonal_share.py --preset cpu \
        --data-dir DATA --out runs/ellipsoidal_tr_kohler2019/fig2_diagonal_share
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sqn.curvature.diagonal_share import hessian_diagonal_share, ols_share, wigner_share
from lightning_sqn.problems import mlp, simple_cnn

#: scale of each preset: batch sizes, sampled columns per estimate, training epochs, training images
#: (None: all), networks
PRESETS: dict[str, dict[str, Any]] = {
    # tests: tiny batches and samples on whatever data the test wrote
    "smoke": {"batch_sizes": [4], "columns": 8, "train_epochs": 1, "train_subset": 64},
    # here: the CIFAR-10 subset (4,000 training images), 512 columns (about 4% standard error)
    "cpu": {"batch_sizes": [32, 128, 512], "columns": 512, "train_epochs": 5, "train_subset": None},
    # with a GPU: 4,096 columns
    "paper": {"batch_sizes": [32, 128, 512], "columns": 4096, "train_epochs": 5, "train_subset": None},
}
NETWORKS = ("small_mlp", "simple_cnn", "mlp")


def build(network: str) -> nn.Module:
    """One of :data:`NETWORKS` for 3x32x32 inputs and 10 classes, PyTorch's initialisation."""
    if network == "simple_cnn":
        return simple_cnn()
    if network == "mlp":
        return mlp([3 * 32 * 32, 128, 128, 10], activation="tanh")
    if network == "small_mlp":
        return nn.Sequential(nn.AvgPool2d(8), mlp([3 * 4 * 4, 16, 10], activation="tanh"))
    raise ValueError(f"unknown network {network!r}; valid: {', '.join(NETWORKS)}")


def cifar10_train(data_dir: str | Path, subset: int | None) -> tuple[Tensor, Tensor]:
    """The normalized CIFAR-10 training images and labels (the full set or the 4,000-image subset,
    whichever ``data_dir`` holds; the first ``subset`` of them)."""
    from lightning_sqn.problems import CIFAR10DataModule

    dm = CIFAR10DataModule(data_dir, batch_size=128, train_subset=subset, val_size=0)
    dm.setup("fit")
    x, y = dm.split("train")
    return x.float(), y


def train(net: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int = 0) -> float:
    """``epochs`` epochs of Adam (lr 1e-3, batch 128, shuffled with ``seed``); returns the last epoch's mean
    training loss."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    mean = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        mean = total / count
    return mean


def measure(net: nn.Module, x: Tensor, y: Tensor, columns: int, seed: int, exact: bool) -> dict[str, Any]:
    """The diagonal share of ``net``'s cross-entropy Hessian on ``(x, y)`` with its baselines."""
    n = sum(p.numel() for p in net.parameters())
    b = len(x)
    start = time.perf_counter()
    share = hessian_diagonal_share(
        net,
        nn.functional.cross_entropy,
        x,
        y,
        columns=None if exact else min(columns, n),
        chunk=32,
        generator=torch.Generator().manual_seed(seed),
    )
    wigner, ols = wigner_share(n), ols_share(n, b)
    return {
        "n": n,
        "batch": b,
        "share": share.value,
        "stderr": share.stderr,
        "columns": share.columns,
        "exact": share.exact,
        "wigner": wigner,
        "ols": ols,
        "over_wigner": share.value / wigner,
        "over_ols": share.value / ols,
        "seconds": round(time.perf_counter() - start, 2),
    }


def run(
    preset: str, data_dir: str | Path | None, networks: Sequence[str], seed: int = 0
) -> list[dict[str, Any]]:
    """All rows of the experiment (see the module docstring)."""
    settings = PRESETS[preset]
    gen = torch.Generator().manual_seed(seed)
    biggest = max(settings["batch_sizes"])
    inputs: dict[str, tuple[Tensor, Tensor]] = {
        "random": (
            torch.randn(biggest, 3, 32, 32, generator=gen),
            torch.randint(0, 10, (biggest,), generator=gen),
        )
    }
    train_x = train_y = None
    if data_dir is not None:
        train_x, train_y = cifar10_train(data_dir, settings["train_subset"])
        inputs["cifar10"] = (train_x[:biggest], train_y[:biggest])
    rows: list[dict[str, Any]] = []
    for network in networks:
        torch.manual_seed(seed)
        net = build(network)
        states = [("init", None)]
        if train_x is not None:
            states.append(("trained", settings["train_epochs"]))
        for state, epochs in states:
            train_loss = None if epochs is None else train(net, train_x, train_y, epochs, seed)
            for kind, (x, y) in inputs.items():
                for b in settings["batch_sizes"]:
                    exacts = (True, False) if network == "small_mlp" else (False,)
                    for exact in exacts:
                        row = {"network": network, "inputs": kind, "state": state, "train_loss": train_loss}
                        row |= measure(net, x[:b], y[:b], settings["columns"], seed, exact)
                        rows.append(row)
                        print(_line(row), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    how = "exact" if row["exact"] else f"{row['columns']} columns"
    return (
        f"{row['network']:>10} n={row['n']:>7,} {row['inputs']:>7} {row['state']:>7} b={row['batch']:<4} "
        f"delta={row['share']:.3e} +- {row['stderr']:.1e} ({how}); Wigner {row['wigner']:.2e}, "
        f"OLS {row['ols']:.2e}; {row['seconds']} s"
    )


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of the rows."""
    lines = [
        "| network | weights n | inputs | state | batch b | delta(H) | stderr | columns | Wigner 1/n | OLS | "
        "delta / Wigner | delta / OLS |",
        "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        columns = "all (exact)" if r["exact"] else str(r["columns"])
        lines.append(
            f"| {r['network']} | {r['n']:,} | {r['inputs']} | {r['state']} | {r['batch']} "
            f"| {r['share']:.3e} | "
            f"{r['stderr']:.1e} | {columns} | {r['wigner']:.2e} | {r['ols']:.2e} | {r['over_wigner']:.1f} | "
            f"{r['over_ols']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per network: delta(H) against the batch size per (inputs, state), with the Wigner and OLS
    baselines; log axes, error bars of two standard errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = list(dict.fromkeys(r["network"] for r in rows))
    fig, axes = plt.subplots(1, len(networks), figsize=(5 * len(networks), 4), squeeze=False)
    for ax, network in zip(axes[0], networks, strict=True):
        mine = [r for r in rows if r["network"] == network and (r["exact"] or network != "small_mlp")]
        n = mine[0]["n"]
        for key in dict.fromkeys((r["inputs"], r["state"]) for r in mine):
            part = [r for r in mine if (r["inputs"], r["state"]) == key]
            ax.errorbar(
                [r["batch"] for r in part],
                [r["share"] for r in part],
                yerr=[2 * r["stderr"] for r in part],
                marker="o",
                capsize=3,
                label=f"{key[0]} inputs, {key[1]}",
            )
        batches = sorted({r["batch"] for r in mine})
        ax.plot(batches, [ols_share(n, b) for b in batches], "k--", label="OLS (Prop. 2)")
        ax.plot(batches, [wigner_share(n)] * len(batches), "k:", label="Wigner (Prop. 1)")
        ax.set(xscale="log", yscale="log", xlabel="batch size b", ylabel="diagonal share delta(H)")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_title(f"{network} ({n:,} weights)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument(
        "--data-dir", default=None, help="root holding CIFAR-10 (without: random inputs only)"
    )
    parser.add_argument("--out", required=True, help="folder for results.json, report.md, diagonal_share.png")
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = run(args.preset, args.data_dir, args.networks, args.seed)
    wall = time.perf_counter() - start
    (out / "results.json").write_text(
        json.dumps(
            {"preset": args.preset, "seed": args.seed, "wall_s": round(wall, 1), "rows": rows}, indent=2
        )
        + "\n",
        encoding="utf-8",
    )
    title = (
        f"# Figure 2: diagonal share of the Hessian (preset {args.preset}, seed {args.seed}, "
        f"{wall:.0f} s)\n\n"
    )
    (out / "report.md").write_text(title + table(rows), encoding="utf-8")
    plot(rows, out / "diagonal_share.png")
    print(f"wrote {out / 'report.md'} and {out / 'diagonal_share.png'} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
