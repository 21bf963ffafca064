"""Reports of repeated runs: curves with ± std bands and the papers' tables, from TensorBoard logs.

* :mod:`~lightning_sqn.report.scalars`: reading scalars per run and seed, and their statistics;
* :mod:`~lightning_sqn.report.tables`: the markdown tables;
* :mod:`~lightning_sqn.report.plots`: the PNG curves;
* :mod:`~lightning_sqn.report.builder`: the one report builder (``report.md`` + PNGs).

Command line (also ``lightning-sqn report``)::

    python -m lightning_sqn.report LOGS [--out DIR] [--tag T] [--targets 1.1 1.2] [--paper JSON] [--logy]

writes ``<out>/report.md`` (also printed; ``--out`` defaults to ``<LOGS>/report``) and the PNGs. A recipe's
log root (``recipes/run.py fit ... --out runs`` -> ``runs/<paper>/<experiment>``) carries the recipe, so
its report has the recipe's panels, targets and the paper's numbers without any flag; the flags replace
the recipe's values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from lightning_sqn.report.builder import RECIPE_FILE, ReportSpec, build_report
from lightning_sqn.report.plots import plot_curves
from lightning_sqn.report.scalars import (
    BACKPROPS_TAG,
    CURVATURE_PRODUCTS_TAG,
    SKIPPED_EPOCH_TAG,
    SKIPPED_TOTAL_TAG,
    TIME_TAG,
    Curve,
    Scalars,
    against,
    aggregate,
    epochs_to_target,
    final_values,
    load_scalars,
    mean_std,
)
from lightning_sqn.report.tables import (
    epoch_table,
    final_table,
    format_mean_std,
    markdown_table,
    runs_table,
    skipped_table,
    table1,
    target_table,
)


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-sqn report LOGS [--out DIR] [--tag T] [--targets ...] [--paper JSON] [--logy]``."""
    parser = argparse.ArgumentParser(
        prog="lightning-sqn report",
        description="Curves (mean ± std over seeds) and markdown tables from TensorBoard logs laid out as "
        "<logs>/<run>/seed_<s>/ (or Lightning's <save_dir>/<name>/version_<n>/); a recipe's log root "
        f"({RECIPE_FILE} in it) gets the recipe's panels, targets and paper values.",
    )
    parser.add_argument("logs", type=Path, help="the log root")
    parser.add_argument("--out", type=Path, help="where report.md and the PNGs go (default: LOGS/report)")
    parser.add_argument("--tag", help="the scalar to report (default: test/error)")
    parser.add_argument("--targets", type=float, nargs="+", help="targets of the epochs-to-target table")
    parser.add_argument(
        "--paper",
        type=Path,
        help='JSON {"run": {"target": epochs}} shown in a "paper" column next to each target',
    )
    parser.add_argument("--logy", action="store_true", help="logarithmic y-axis")
    args = parser.parse_args(argv)
    recipe = args.logs / RECIPE_FILE
    spec = (
        ReportSpec.from_recipe(yaml.safe_load(recipe.read_text(encoding="utf-8")))
        if recipe.is_file()
        else ReportSpec()
    )
    changes: dict[str, object] = {}
    if args.tag:
        changes["tag"] = args.tag
    if args.targets:
        changes["targets"] = tuple(args.targets)
    if args.paper:
        changes["paper_targets"] = json.loads(args.paper.read_text(encoding="utf-8"))
    if args.logy:
        changes["logy"] = True
    try:
        text = build_report(args.logs, args.out, dataclasses.replace(spec, **changes))
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(text)
    return 0


__all__ = [
    "BACKPROPS_TAG",
    "CURVATURE_PRODUCTS_TAG",
    "RECIPE_FILE",
    "SKIPPED_EPOCH_TAG",
    "SKIPPED_TOTAL_TAG",
    "TIME_TAG",
    "Curve",
    "ReportSpec",
    "Scalars",
    "against",
    "aggregate",
    "build_report",
    "epoch_table",
    "epochs_to_target",
    "final_table",
    "final_values",
    "format_mean_std",
    "load_scalars",
    "main",
    "markdown_table",
    "mean_std",
    "plot_curves",
    "runs_table",
    "skipped_table",
    "table1",
    "target_table",
]
