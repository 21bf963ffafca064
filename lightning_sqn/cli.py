"""The ``lightning-sqn`` command: ``lightning-sqn demo`` and ``lightning-sqn report``.

``lightning-sqn demo`` trains a small conv net with batch normalization on scikit-learn's 8x8 digits
(1,437 training / 360 test images, no download) three times with Lightning: L-SR1 (trust region,
Ramamurthy & Duffy 2017, Alg. 1), Nesterov's accelerated gradient and L-BFGS with forgetting every 5
steps. It prints a table, writes a PNG of the test error per epoch and leaves TensorBoard logs
(``tensorboard --logdir <out>``).

``lightning-sqn report LOGS ...`` is ``python -m lightning_sqn.report LOGS ...`` (curves and tables from
any logs laid out as ``<logs>/<run>/seed_<s>/``; a recipe's log root gets the recipe's report).

``lightning-sqn fit|validate|test|predict ...`` is LightningCLI over the recipes' classification task
(:mod:`lightning_sqn.problems.cli`): ``lightning-sqn fit --config config.yaml`` repeats one recipe run
from the ``config.yaml`` saved next to its logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: LightningCLI's subcommands (:mod:`lightning_sqn.problems.cli`; not imported here: it needs jsonargparse)
SUBCOMMANDS: tuple[str, ...] = ("fit", "validate", "test", "predict")

#: the demo's optimizers: (run name, optimizer name, options, global batch size, description)
DEMO_RUNS: tuple[tuple[str, str, dict[str, Any], int, str], ...] = (
    ("lsr1", "lsr1", {"memory": 5}, 128, "L-SR1, trust region (memory 5, B_0 = 0.1 I), batch 128"),
    ("nag", "nag", {"lr": 0.05, "momentum": 0.9}, 32, "NAG (lr 0.05, momentum 0.9), batch 32"),
    (
        "lbfgs",
        "lbfgs",
        {"memory": 5, "forget_every": 5},
        128,
        "L-BFGS, forgetting every 5 steps (memory 5), batch 128",
    ),
)


#: the demo's seeds: one rounding path of a mini-batch trust region should not decide what a user sees
DEMO_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass
class DemoResult:
    """What one demo run measured over its seeds (``errors[seed][e]``: test error in % after epoch
    ``e + 1``, read back from the TensorBoard logs); time, steps and counters summed over the seeds."""

    name: str
    description: str
    errors: dict[int, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    counters: dict[str, int] | None = None


def run_demo(
    out: str | Path,
    *,
    epochs: int = 10,
    fast: bool = False,
    seeds: Sequence[int] = DEMO_SEEDS,
    progress_bar: bool = True,
) -> list[DemoResult]:
    """Train the three demo runs once per seed; logs under ``<out>/<run>/seed_<seed>/``, the PNG (mean
    over the seeds with a ± std band) at ``<out>/test_error_epoch.png``.

    Args:
        out: output folder (TensorBoard logs and the PNG).
        epochs: training epochs per run.
        fast: a reduced run for tests: 512 training and 128 test images, at most 2 epochs.
        seeds: each seeds the model initialisation and the batch order of one run per optimizer.
        progress_bar: show Lightning's progress bars.
    """
    from lightning_sqn.problems.optimizers import needs_closure
    from lightning_sqn.report import load_scalars, plot_curves

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    out = Path(out)
    if fast:
        epochs = min(epochs, 2)
    subsets = {"train_subset": 512, "test_subset": 128} if fast else {}
    results = []
    for name, optimizer, options, batch_size, description in DEMO_RUNS:
        result = DemoResult(name, description, counters={} if needs_closure(optimizer) else None)
        for seed in seeds:
            print(f"\n{description}, seed {seed}", flush=True)
            _demo_run(result, out, optimizer, options, batch_size, epochs, seed, subsets, fast, progress_bar)
        results.append(result)
    data = load_scalars(out, "test/error")
    for result in results:
        result.errors = {seed: [float(v) for v in data[result.name][seed][1]] for seed in seeds}
    plot_curves(
        {r.name: {s: data[r.name][s] for s in seeds} for r in results if r.name in data},
        out / "test_error_epoch.png",
        title=f"lightning-sqn demo: digits, small conv net ({len(seeds)} seeds, mean ± std)",
    )
    return results


def _demo_run(
    result: DemoResult,
    out: Path,
    optimizer: str,
    options: dict[str, Any],
    batch_size: int,
    epochs: int,
    seed: int,
    subsets: dict[str, int],
    fast: bool,
    progress_bar: bool,
) -> None:
    """One seed of one demo run; adds its time, steps and counters to ``result``."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_sqn.callbacks import SkippedUpdateCounter, TrustRegionMonitor
    from lightning_sqn.problems import DigitsDataModule, digits_convnet
    from lightning_sqn.problems.optimizers import needs_closure
    from lightning_sqn.problems.task import ClassificationTask

    name = result.name
    L.seed_everything(seed, verbose=False)
    task = ClassificationTask(digits_convnet(batch_norm=True), optimizer=optimizer, optimizer_options=options)
    data = DigitsDataModule(batch_size=batch_size, seed=seed, eval_batch_size=512, **subsets)
    closure = needs_closure(optimizer)
    log_dir = out / name / f"seed_{seed}"
    for stale in log_dir.glob("events.out.tfevents*"):
        stale.unlink()  # a rerun replaces the run's logs
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy="sqn" if closure else "auto",
        max_epochs=epochs,
        logger=TensorBoardLogger(str(out), name=name, version=f"seed_{seed}", default_hp_metric=False),
        callbacks=[TrustRegionMonitor(), SkippedUpdateCounter()] if closure else [],
        log_every_n_steps=1 if fast else 5,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    result.seconds += time.perf_counter() - start
    result.steps += trainer.global_step
    opt = trainer.optimizers[0]
    if result.counters is not None:
        for k, v in opt.counters.as_dict().items():
            result.counters[k] = result.counters.get(k, 0) + int(v)


def format_results(results: Sequence[DemoResult]) -> str:
    """The demo's table: test error per epoch (mean ± std over the seeds), then time, steps and what
    L-SR1 / L-BFGS counted (summed over the seeds)."""
    from lightning_sqn.report import format_mean_std

    seeds = sorted({s for r in results for s in r.errors})
    epochs = max(len(e) for r in results for e in r.errors.values())
    spread = len(seeds) > 1
    lines = [
        "test error (%) after each epoch"
        + (f", mean ± std over seeds {', '.join(map(str, seeds))}" if spread else f", seed {seeds[0]}")
    ]
    width = 14 if spread else 8
    head = f"{'epoch':>5} " + " ".join(f"{r.name:>{width}}" for r in results)
    lines += [head, "-" * len(head)]
    for e in range(epochs):
        cells = []
        for r in results:
            values = [errors[e] for errors in r.errors.values() if e < len(errors)]
            cells.append(f"{format_mean_std(values) if values else '':>{width}}")
        lines.append(f"{e + 1:>5} " + " ".join(cells))
    lines += ["", f"{'run':<6} {'time (s)':>8} {'steps':>6} {'evals':>6} {'accepted':>9} {'skipped':>8}"]
    for r in results:
        c = r.counters
        if c:
            accepted = f"{100.0 * c['accepted_steps'] / max(c['steps'], 1):8.1f}%"
            offered = c["stored_pairs"] + c["skipped_pairs"]
            skipped = f"{100.0 * c['skipped_pairs'] / max(offered, 1):7.1f}%"
            evals = f"{c['closure_evals']:>6}"
        else:
            accepted, skipped, evals = f"{'-':>9}", f"{'-':>8}", f"{r.steps:>6}"
        lines.append(f"{r.name:<6} {r.seconds:8.1f} {r.steps:>6} {evals} {accepted} {skipped}")
    lines.append(
        "(over all seeds. evals: loss/gradient evaluations; accepted: trust-region steps accepted, or "
        "line-search steps that decreased the loss; skipped: curvature pairs the update rule refused)"
    )
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> int:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    start = time.perf_counter()
    results = run_demo(
        args.out, epochs=args.epochs, fast=args.fast, seeds=args.seeds, progress_bar=args.progress_bar
    )
    print()
    print(format_results(results))
    print(f"\nTotal {time.perf_counter() - start:.0f} s. Plot: {Path(args.out) / 'test_error_epoch.png'}")
    print(f"TensorBoard: tensorboard --logdir {args.out}  (then open http://localhost:6006)")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-sqn", description="lightning_sqn command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="L-SR1 vs NAG vs L-BFGS (forgetting) on scikit-learn's digits",
        description="Train a small conv net on scikit-learn's digits with L-SR1 (trust region), NAG and "
        "L-BFGS with forgetting, once per seed; print a table (mean ± std over the seeds), write a PNG "
        "and TensorBoard logs.",
    )
    p.add_argument("--out", default="lightning_sqn_demo", help="output folder (default: lightning_sqn_demo)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per optimizer (default: 10)")
    p.add_argument("--fast", action="store_true", help="reduced size: 512/128 images, at most 2 epochs")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEMO_SEEDS),
        help="seeds of initialisation and batch order, one run per optimizer each; the table and plot "
        "show mean ± std (default: 0 1 2 3 4)",
    )
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false", help="no progress bars")
    p.set_defaults(func=demo)
    # listed for the help text; main() hands the arguments to lightning_sqn.report.main unparsed
    sub.add_parser("report", help="curves and tables from TensorBoard logs (lightning-sqn report -h)")
    for name in SUBCOMMANDS:  # handed to LightningCLI unparsed, like report
        sub.add_parser(name, help=f"LightningCLI {name} of a recipe run (lightning-sqn {name} --config FILE)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from lightning_sqn.report import main as report_main

        return report_main(argv[1:])
    if argv[:1] and argv[0] in SUBCOMMANDS:
        from lightning_sqn.problems.cli import main as lightning_cli_main

        return lightning_cli_main(argv)
    args = make_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
