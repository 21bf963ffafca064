"""The ``lightning-sqn`` command: ``lightning-sqn demo`` and ``lightning-sqn report``.

``lightning-sqn demo`` trains a small conv net with batch normalization on scikit-learn's 8x8 digits
(1,437 training / 360 test images, no download) three times with Lightning: L-SR1 (trust region,
Ramamurthy & Duffy 2017, Alg. 1), Nesterov's accelerated gradient and L-BFGS with forgetting every 5
steps. It prints a table, writes a PNG of the test error per epoch and leaves TensorBoard logs
(``tensorboard --logdir <out>``).

``lightning-sqn report ...`` is ``python -m lightning_sqn.report ...`` (curves and tables from any logs
laid out as ``<logs>/<run>/seed_<s>/``).

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


@dataclass
class DemoResult:
    """What one demo run measured (``errors[e]``: test error in % after epoch ``e + 1``, read back from the
    TensorBoard logs)."""

    name: str
    description: str
    errors: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    counters: dict[str, int] | None = None


def run_demo(
    out: str | Path,
    *,
    epochs: int = 10,
    fast: bool = False,
    seed: int = 0,
    progress_bar: bool = True,
) -> list[DemoResult]:
    """Train the three demo runs; logs under ``<out>/<run>/seed_<seed>/``, the PNG at
    ``<out>/test_error_epoch.png``.

    Args:
        out: output folder (TensorBoard logs and the PNG).
        epochs: training epochs per run.
        fast: a reduced run for tests: 512 training and 128 test images, at most 2 epochs.
        seed: seeds the model initialisation and the batch order.
        progress_bar: show Lightning's progress bars.
    """
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_sqn.callbacks import SkippedUpdateCounter, TrustRegionMonitor
    from lightning_sqn.problems import DigitsDataModule, digits_convnet
    from lightning_sqn.problems.optimizers import needs_closure
    from lightning_sqn.problems.task import ClassificationTask
    from lightning_sqn.report import load_scalars, plot_curves

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    out = Path(out)
    if fast:
        epochs = min(epochs, 2)
    subsets = {"train_subset": 512, "test_subset": 128} if fast else {}
    results = []
    for name, optimizer, options, batch_size, description in DEMO_RUNS:
        print(f"\n{description}", flush=True)
        result = DemoResult(name, description)
        L.seed_everything(seed, verbose=False)
        task = ClassificationTask(
            digits_convnet(batch_norm=True), optimizer=optimizer, optimizer_options=options
        )
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
        result.seconds = time.perf_counter() - start
        result.steps = trainer.global_step
        opt = trainer.optimizers[0]
        if hasattr(opt, "counters"):
            result.counters = {k: int(v) for k, v in opt.counters.as_dict().items()}
        results.append(result)
    data = load_scalars(out, "test/error")
    for result in results:
        result.errors = [float(v) for v in data[result.name][seed][1]]
    plot_curves(
        {r.name: data[r.name] for r in results if r.name in data},
        out / "test_error_epoch.png",
        title="lightning-sqn demo: digits, small conv net",
    )
    return results


def format_results(results: Sequence[DemoResult]) -> str:
    """The demo's table: test error per epoch, then time, steps and what L-SR1 / L-BFGS counted."""
    epochs = max(len(r.errors) for r in results)
    lines = ["test error (%) after each epoch"]
    head = f"{'epoch':>5} " + " ".join(f"{r.name:>8}" for r in results)
    lines += [head, "-" * len(head)]
    for e in range(epochs):
        cells = [f"{r.errors[e]:8.2f}" if e < len(r.errors) else " " * 8 for r in results]
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
        "(evals: loss/gradient evaluations; accepted: trust-region steps accepted, or line-search steps "
        "that decreased the loss; skipped: curvature pairs the update rule refused)"
    )
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> int:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    start = time.perf_counter()
    results = run_demo(
        args.out, epochs=args.epochs, fast=args.fast, seed=args.seed, progress_bar=args.progress_bar
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
        "L-BFGS with forgetting; print a table, write a PNG and TensorBoard logs.",
    )
    p.add_argument("--out", default="lightning_sqn_demo", help="output folder (default: lightning_sqn_demo)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per optimizer (default: 10)")
    p.add_argument("--fast", action="store_true", help="reduced size: 512/128 images, at most 2 epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order")
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
