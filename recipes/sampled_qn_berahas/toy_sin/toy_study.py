"""The toy study of the sampled quasi-Newton poster: every method of ``toy.yaml``, every network, every seed.

``toy.yaml`` is the Lightning recipe (one run = one method, network and seed; ``ddp_sqn`` on several
devices). For a 36- to 908-weight network Lightning's per-step bookkeeping costs several times the
step itself, so the full study (3 networks x 11 methods x 10 seeds x 1,000 iterations) runs here in a
plain PyTorch loop over the *same* settings: this script reads ``toy.yaml`` (preset and all), builds
each run's network (``torch.manual_seed(seed)`` first, as ``seed_everything`` does), data and optimizer
from the config's ``class_path``/``init_args``, and trains full-batch, float64, for
``max_epochs x steps_per_epoch`` iterations.

Recorded at every iterate x_k (k = 0 .. K): the training loss and accuracy, the backpropagations so far
(gradient evaluations + Hessian-vector products: this package's ``optimizer.counters.backprops``, one
per iteration for ``torch.optim``; the poster's cost table counts the same terms) and the seconds so far.
Summaries over the seeds: the median and the quartiles.

    python recipes/sampled_qn_berahas/toy_sin/toy_study.py --out OUT                  # the whole study
    python recipes/sampled_qn_berahas/toy_sin/toy_study.py --out OUT --runs 'small/*' --seeds 0 1

Writes ``OUT/<group>/<run>/seed_<s>.json`` (the curves), ``OUT/toy_study.md`` (the table, also printed)
and ``OUT/toy_<group>_{iterations,backprops,seconds}.png`` (median training accuracy and loss with the
25-75% band). ``--report-only`` rebuilds the table and figures from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_sqn.recipes import expand, find_configs, import_class, load_config, select

RECIPES = Path(__file__).resolve().parents[2]
CONFIG = "sampled_qn_berahas/toy_sin/toy"
#: the poster's claim: these reach 100% training accuracy, GD and Adam do not
SAMPLED = ("slsr1_I", "slsr1_II", "slbfgs_II")


def _build(spec: dict[str, Any], *args: Any) -> Any:
    """``class_path(*args, **init_args)`` of a config entry."""
    return import_class(spec["class_path"])(*args, **(spec.get("init_args") or {}))


def run_one(settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train one run of the config; the curves at x_0 .. x_K."""
    from lightning_sqn.problems.toy import toy_sin_data, toy_xor_data

    task = settings["model"]["init_args"]
    data = settings["data"]["init_args"]
    iterations = int(settings["trainer"]["max_epochs"]) * int(data.get("steps_per_epoch", 50))
    n = int(data.get("n_per_class", 50))
    problem = data.get("problem", "sin")
    X, y = toy_sin_data(n) if problem == "sin" else toy_xor_data(n, seed=int(data.get("data_seed", 0)))
    torch.manual_seed(seed)
    model = _build(task["model"])
    opt = _build(task["optimizer"], list(model.parameters()))
    ours = hasattr(opt, "counters")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward(create_graph=bool(getattr(opt, "graph_requested", False)))
        return loss

    losses, accs, backprops, seconds = [], [], [], []
    elapsed = 0.0

    def record(k: int) -> None:
        with torch.no_grad():
            logits = model(X)
            losses.append(float(nn.functional.cross_entropy(logits, y)))
            accs.append(100.0 * float((logits.argmax(1) == y).double().mean()))
        backprops.append(int(opt.counters.backprops) if ours else k)
        seconds.append(elapsed)

    record(0)
    for k in range(1, iterations + 1):
        start = time.perf_counter()
        if ours:
            opt.step(closure)
        else:
            closure()
            opt.step()
        elapsed += time.perf_counter() - start
        record(k)
    return {
        "d": sum(p.numel() for p in model.parameters()),
        "loss": losses,
        "accuracy": accs,
        "backprops": backprops,
        "seconds": seconds,
        "counters": {k: float(v) for k, v in vars(opt.counters).items()} if ours else None,
    }


def _first(values: list[float], at_least: float) -> int | None:
    return next((k for k, v in enumerate(values) if v >= at_least), None)


def _quartiles(values: list[float]) -> str:
    if not values:
        return "–"
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.3g} [{q1:.3g}, {q3:.3g}]"


def report(out: Path, groups: list[str], runs: list[str]) -> str:
    """The table and figures from ``out``'s JSON files."""
    lines = [
        "| network (d) | method | seeds at 100% | iterations to 100% | backprops to 100% | seconds to 100% | "
        "final loss | final accuracy (%) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group in groups:
        curves: dict[str, list[dict]] = {}
        for run in runs:
            files = sorted((out / group / run).glob("seed_*.json"))
            if files:
                curves[run] = [json.loads(f.read_text()) for f in files]
        for run, results in curves.items():
            hit = [(r, _first(r["accuracy"], 100.0)) for r in results]
            reached = [(r, k) for r, k in hit if k is not None]
            cells = [
                f"{len(reached)}/{len(results)}",
                _quartiles([k for _, k in reached]),
                _quartiles([r["backprops"][k] for r, k in reached]),
                _quartiles([r["seconds"][k] for r, k in reached]),
                _quartiles([r["loss"][-1] for r in results]),
                _quartiles([r["accuracy"][-1] for r in results]),
            ]
            lines.append(f"| {group} ({results[0]['d']}) | {run} | " + " | ".join(cells) + " |")
        _figures(out, group, curves)
    return "\n".join(lines) + "\n"


def _figures(out: Path, group: str, curves: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = [*plt.get_cmap("tab10").colors, "black", "darkgoldenrod", "lime"]
    for axis, label in (
        ("iterations", "iteration"),
        ("backprops", "backpropagations"),
        ("seconds", "seconds"),
    ):
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        for i, (run, results) in enumerate(curves.items()):
            for ax, key in ((left, "accuracy"), (right, "loss")):
                ys = np.array([r[key] for r in results])
                if axis == "iterations":
                    xs = np.arange(ys.shape[1])
                else:  # each seed's own x; the median curve over a common grid
                    grid = np.linspace(0.0, max(r[axis][-1] for r in results), 400)
                    ys = np.array([np.interp(grid, r[axis], r[key]) for r in results])
                    xs = grid
                q1, med, q3 = np.percentile(ys, [25, 50, 75], axis=0)
                style = "-" if run in SAMPLED else "--"
                ax.plot(xs, med, style, color=colors[i % len(colors)], label=run, lw=1.4)
                ax.fill_between(xs, q1, q3, color=colors[i % len(colors)], alpha=0.15)
        left.set_ylabel("training accuracy (%)")
        right.set_ylabel("training loss")
        right.set_yscale("log")
        for ax in (left, right):
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
            if axis != "iterations":
                ax.set_xscale("symlog", linthresh=1.0 if axis == "backprops" else 1e-2)
            ax.set_xlim(left=0.0)
        left.legend(fontsize=7, ncol=2)
        d = next(iter(curves.values()))[0]["d"]
        fig.suptitle(f"sin problem, {group} network (d = {d}): median over seeds, 25-75% band")
        fig.tight_layout()
        fig.savefig(out / f"toy_{group}_{axis}.png", dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="cpu", choices=("smoke", "cpu", "paper"))
    parser.add_argument("--runs", nargs="+", metavar="GLOB", help="only these group/run names")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    parser.add_argument("--report-only", action="store_true", help="table and figures from existing JSON")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
    config = load_config(find_configs(CONFIG, RECIPES)[0], RECIPES, args.preset)
    specs = select(expand(config), args.runs)
    seeds = args.seeds or list(config["seeds"])
    if not args.report_only:
        for spec in specs:
            for seed in seeds:
                path = args.out / spec.group / spec.run / f"seed_{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                result = run_one(spec.settings, seed)
                path.write_text(json.dumps(result))
                print(
                    f"{spec.name} seed {seed}: loss {result['loss'][-1]:.3g}, accuracy "
                    f"{result['accuracy'][-1]:.0f}%, {result['seconds'][-1]:.1f} s",
                    flush=True,
                )
    groups = list(dict.fromkeys(s.group for s in specs))
    runs = list(dict.fromkeys(s.run for s in specs))
    text = report(args.out, groups, runs)
    (args.out / "toy_study.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # one core per study (the networks are tiny); a caller's setting is its own
    raise SystemExit(main())
