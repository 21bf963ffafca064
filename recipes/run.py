"""The runner of the paper recipes: ``recipes/<paper>/<experiment>/*.yaml`` -> Lightning runs and reports.

Commands (``python recipes/run.py -h`` and ``<command> -h`` for every option)::

    python recipes/run.py list                                     # papers, their configs and presets
    python recipes/run.py fit CONFIG --preset cpu --data-dir DIR --out runs [--seeds 0 1] [--devices N]
    python recipes/run.py fit CONFIG ... --trainer.max_epochs=3 \\
        --model.init_args.optimizer.init_args.gamma=1.0                 # LightningCLI's overrides
    python recipes/run.py report CONFIG --out runs                 # PNG figures + report.md from the logs

``CONFIG`` is a YAML path, a paper folder (``lsr1_ramamurthy2017``: all of its configs), an experiment
(``lsr1_ramamurthy2017/fig1_mnist_lenet``), a config (``lsr1_ramamurthy2017/table1_batch_size/mnist``),
or any of these without the paper folder when only one paper has it (``fig1_mnist_lenet``).

A config is LightningCLI's format (``model``, ``data``, ``trainer``; classes by ``class_path`` /
``init_args``) plus ``groups`` (panels), ``runs`` (curves), ``seeds``, ``presets`` (``smoke``, ``cpu``,
``paper``), ``report`` and ``stop_below`` (see :mod:`lightning_sqn.recipes.config` and
``recipes/README.md``). Each (run, seed) is one LightningCLI call
(:class:`~lightning_sqn.problems.cli.SQNLightningCLI`); arguments in LightningCLI's dotted syntax
(``--trainer.max_epochs=3``) are handed to every one of them. Logs go to
``<out>/<config name>/<group>/<run>/seed_<s>/`` with ``recipe.yaml`` (the run's settings), ``config.yaml``
(LightningCLI's: ``lightning-sqn fit --config .../config.yaml`` repeats the run) and, once finished,
``summary.json``; ``<out>/<config name>/recipe_config.yaml`` keeps the recipe for the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from lightning_sqn.recipes.config import (
    PRESETS,
    all_configs,
    config_name,
    expand,
    find_configs,
    load_config,
    seeds_of,
    select,
)
from lightning_sqn.recipes.fit import fit_one, global_rank, prepare_log_dir, reads_files
from lightning_sqn.recipes.reconstructions import reconstruction_grid
from lightning_sqn.report import RECIPE_FILE, ReportSpec, build_report

RECIPES = Path(__file__).resolve().parent
DEFAULT_OUT = "runs"
#: the LightningCLI sections an override may address (``--trainer.max_epochs=3``)
OVERRIDE_PREFIXES = ("--model.", "--data.", "--trainer.", "--seed_everything")


def _configs(targets: Sequence[str]) -> list[Path]:
    return [p for target in targets for p in find_configs(target, RECIPES)]


def fit(args: argparse.Namespace) -> int:
    for path in _configs(args.config):
        config = load_config(path, RECIPES, args.preset)
        specs = select(expand(config), args.runs)
        plan = [(spec, seed) for seed in seeds_of(config, args.seeds) for spec in specs]
        if args.dry_run:
            for spec, seed in plan:
                settings = json.dumps(
                    {k: v for k, v in spec.settings.items() if k != "description"}, sort_keys=True
                )
                print(
                    f"{spec.config}/{spec.name}/seed_{seed}: {settings} {' '.join(args.overrides)}".rstrip()
                )
            continue
        if global_rank() == 0:
            root = args.out / config["name"]
            root.mkdir(parents=True, exist_ok=True)
            (root / RECIPE_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        for index, (spec, seed) in enumerate(plan, 1):
            where = f"[{index}/{len(plan)}] {spec.config}/{spec.name} seed {seed}"
            if (
                args.skip_existing
                and (args.out / spec.config / spec.name / f"seed_{seed}" / "summary.json").is_file()
            ):
                print(f"{where}: done already, skipped")
                continue
            if global_rank() == 0:
                prepare_log_dir(spec, seed, args.out, args.preset, args.overrides)
                print(f"{where} ({args.preset})", flush=True)
            summary = fit_one(
                spec,
                seed,
                out=args.out,
                preset=args.preset,
                overrides=args.overrides,
                data_dir=args.data_dir,
                accelerator=args.accelerator,
                devices=args.devices,
                progress_bar=args.progress_bar,
            )
            if summary is not None:
                err, loss = summary["final_test_error"], summary.get("final_test_loss")
                if err is not None:
                    result = f"test error {err:.2f}% after {summary['epochs']} epochs, "
                elif loss is not None:
                    result = f"test loss {loss:.4f} after {summary['epochs']} epochs, "
                else:
                    result = ""
                print(f"    {result}{summary['fit_wall_time_s']:.1f} s", flush=True)
    return 0


def report(args: argparse.Namespace) -> int:
    for path in _configs(args.config):
        config = load_config(path, RECIPES, "paper")
        spec = ReportSpec.from_recipe(config)
        root = args.out / config["name"]
        text = build_report(root, spec=spec)
        if spec.reconstructions:
            files = any(reads_files(s.settings) for s in expand(config))
            text += _reconstructions(root, spec, args.data_dir, files)
            (root / "report" / "report.md").write_text(text, encoding="utf-8")
        print(text)
    return 0


def _reconstructions(root: Path, spec: ReportSpec, data_dir: str | None, needs_data_dir: bool) -> str:
    """The reconstruction grid of an autoencoder recipe's runs and its report section (the test images
    come from ``data_dir`` when the recipe's DataModule reads files, else they are generated)."""
    if data_dir is None and needs_data_dir:
        return "\n## Reconstructions\n\nNot drawn: pass --data-dir (the test images).\n"
    path = reconstruction_grid(
        root, root / "report" / "reconstructions.png", data_dir, spec.reconstructions, spec.runs
    )
    if path is None:
        return "\n## Reconstructions\n\nNot drawn: no run saved its final weights.\n"
    return (
        f"\n## Reconstructions\n\nThe first {spec.reconstructions} test images (top row) and each run's "
        f"reconstruction of them (its final weights):\n\n![reconstructions]({path.name})\n"
    )


def _paper_title(paper: Path) -> str:
    readme = paper / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return paper.name


def list_configs(args: argparse.Namespace) -> int:
    paper = None
    for path in all_configs(RECIPES):
        name = config_name(path, RECIPES)
        if name.split("/")[0] != paper:
            paper = name.split("/")[0]
            print(f"{paper}: {_paper_title(RECIPES / paper)}")
        config = load_config(path, RECIPES, "paper")
        presets = ", ".join(yaml.safe_load(path.read_text(encoding="utf-8")).get("presets") or {})
        print(f"  {name:58s} {len(expand(config)):3d} runs  presets: {presets}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python recipes/run.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "fit",
        help="train the runs of one or more configs",
        epilog="Any --model.*, --data.*, --trainer.* or --seed_everything argument is LightningCLI's "
        "and applies to every run (after its preset, group and run settings).",
    )
    p.add_argument(
        "config", nargs="+", help="YAML path, paper, paper/experiment[/stem], or without the paper"
    )
    p.add_argument("--preset", choices=PRESETS, default="paper", help="scale (default: paper)")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LIGHTNING_SQN_DATA"),
        help="root holding MNIST/raw, FashionMNIST/raw, cifar-10-batches-py or cifar10/*.npz "
        "(default: $LIGHTNING_SQN_DATA)",
    )
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"log root (default: {DEFAULT_OUT})")
    p.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    p.add_argument("--devices", type=int, default=1, help="devices; > 1 trains with DDP (ddp_sqn / ddp)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (default: auto)")
    p.add_argument("--runs", nargs="+", metavar="GLOB", help="only the runs matching a glob on group/run")
    p.add_argument("--skip-existing", action="store_true", help="skip runs that have a summary.json")
    p.add_argument("--dry-run", action="store_true", help="print the resolved runs and exit")
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false", help="no progress bars")
    p.set_defaults(func=fit)
    p = sub.add_parser("report", help="PNG figures and report.md from the logs of one or more configs")
    p.add_argument(
        "config", nargs="+", help="YAML path, paper, paper/experiment[/stem], or without the paper"
    )
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"log root (default: {DEFAULT_OUT})")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LIGHTNING_SQN_DATA"),
        help="the data the runs trained on, for drawings from the final models "
        "(default: $LIGHTNING_SQN_DATA)",
    )
    p.set_defaults(func=report)
    p = sub.add_parser("list", help="list the papers and their recipe configs")
    p.set_defaults(func=list_configs)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The runner's arguments; LightningCLI's dotted overrides (``fit`` only) end up in ``overrides``."""
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if a.startswith(OVERRIDE_PREFIXES)]
    unknown = [a for a in extra if a not in overrides]
    if unknown or (overrides and args.command != "fit"):
        parser.error(
            f"unrecognized arguments: {' '.join(unknown or overrides)} (overrides are LightningCLI's "
            "--model.*, --data.*, --trainer.* and --seed_everything arguments of fit, written KEY=VALUE)"
        )
    bare = [a for a in overrides if "=" not in a]
    if bare:
        parser.error(f"write overrides as --KEY=VALUE in one argument, got {' '.join(bare)}")
    args.overrides = overrides
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Lightning's per-Trainer banners (accelerator, tips) would repeat for every run; warnings still show.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
