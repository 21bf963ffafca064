"""The one runner of the paper recipes (Ramamurthy & Duffy 2017, Section 4): YAML config -> Trainer runs.

Commands (``python recipes/run.py -h`` and ``<command> -h`` for every option)::

    python recipes/run.py list                                  # recipes, configs, presets
    python recipes/run.py fit CONFIG --preset cpu --data-dir DIR --out runs [--seeds 0 1] [--devices N]
    python recipes/run.py report CONFIG --out runs              # PNG figures + report.md from the logs

``CONFIG`` is a YAML path (``recipes/fig1_mnist_lenet/config.yaml``) or a name: a recipe folder
(``fig1_mnist_lenet``: every YAML in it) or ``folder/stem`` (``table1_batch_size/mnist``).

A config (see ``recipes/README.md``) holds the shared settings (``data``, ``model``, ``task``,
``trainer``, ``batch_size``, ``optimizer``, ``optimizer_options``), optional ``groups`` (one panel of a
figure each: overrides merged into every run), ``runs`` (one curve each: overrides), ``seeds``,
``report`` and ``presets`` (``smoke``, ``cpu``, ``paper``: overrides of the whole config, merged before
the runs are expanded). Merging is recursive for mappings; any other value replaces.

Every run logs to TensorBoard under ``<out>/<config name>/<group>/<run>/seed_<s>/`` (the config name is
``<recipe folder>`` for ``config.yaml``, else ``<recipe folder>/<stem>``), next to ``recipe.yaml`` (the
resolved settings), ``config.yaml`` (the same run in LightningCLI's format:
``lightning-sqn fit --config .../config.yaml`` repeats it) and, once it has finished, ``summary.json``.
Each run is built and trained through LightningCLI
(:class:`~lightning_sqn.problems.cli.SQNLightningCLI`); this runner adds presets, groups, seeds and
reports on top. The quasi-Newton optimizers train under
``strategy="sqn"`` (one device) or ``"ddp_sqn"`` (``--devices N > 1``) with ``TrustRegionMonitor`` and
``SkippedUpdateCounter``; the first-order baselines under Lightning's default or ``"ddp"``.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).resolve().parent
PRESETS = ("smoke", "cpu", "paper")
TOP_KEYS = {"description", "seeds", "groups", "runs", "report", "presets"}
RUN_KEYS = {
    "description",
    "data",
    "model",
    "task",
    "trainer",
    "batch_size",
    "optimizer",
    "optimizer_options",
    "stop_below",
}
DEFAULT_OUT = "runs"


# ---------------------------------------------------------------------------------------------- configs
def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``: mappings merge recursively, any other value replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_name(path: Path) -> str:
    """``fig1_mnist_lenet`` for ``recipes/fig1_mnist_lenet/config.yaml``, ``table1_batch_size/mnist`` for
    ``recipes/table1_batch_size/mnist.yaml``."""
    path = Path(path)
    return path.parent.name if path.stem == "config" else f"{path.parent.name}/{path.stem}"


def find_configs(target: str | Path) -> list[Path]:
    """The YAML files ``target`` names: a path, a recipe folder name, or ``folder/stem``."""
    path = Path(target)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.glob("*.yaml"))
    else:
        candidates = [RECIPES / f"{target}.yaml", RECIPES / str(target) / "config.yaml"]
        found = [c for c in candidates if c.is_file()] or sorted((RECIPES / str(target)).glob("*.yaml"))
    if not found:
        names = ", ".join(config_name(p) for p in all_configs())
        raise FileNotFoundError(f"no recipe config {str(target)!r}; known: {names}")
    return found


def all_configs() -> list[Path]:
    return sorted(RECIPES.glob("*/*.yaml"))


def _check_keys(where: str, section: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def load_config(path: str | Path, preset: str = "paper") -> dict[str, Any]:
    """Read a recipe YAML and apply ``presets[preset]`` (the ``paper`` preset is the file's own settings).

    Raises:
        ValueError: an unknown preset or key, or a preset that names a group or run the config lacks.
    """
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, Mapping) or "runs" not in raw:
        raise ValueError(f"{path}: a recipe config is a mapping with a 'runs' section")
    _check_keys(str(path), raw, TOP_KEYS | RUN_KEYS)
    presets = raw.get("presets") or {}
    _check_keys(f"{path}: presets", presets, set(PRESETS))
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    override = presets.get(preset) or {}
    _check_keys(f"{path}: presets.{preset}", override, (TOP_KEYS | RUN_KEYS) - {"presets"})
    for section in ("groups", "runs"):
        extra = sorted(set(override.get(section) or {}) - set(raw.get(section) or {}))
        if extra:
            raise ValueError(
                f"{path}: presets.{preset}.{section} names {extra} that the config does not define"
            )
    config = deep_merge({k: v for k, v in raw.items() if k != "presets"}, override)
    config["name"] = config_name(path)
    config["preset"] = preset
    config["path"] = str(path)
    for where, section in [("groups", config.get("groups") or {}), ("runs", config["runs"])]:
        for key, value in section.items():
            _check_keys(f"{path}: {where}.{key}", value or {}, RUN_KEYS)
    return config


@dataclass(frozen=True)
class RunSpec:
    """One curve of one panel: the merged settings of the config, its group and its run."""

    config: str
    group: str | None
    run: str
    settings: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.run if self.group is None else f"{self.group}/{self.run}"


def expand(config: Mapping[str, Any]) -> list[RunSpec]:
    """Every (group, run) of ``config`` with its settings: config, then group, then run overrides."""
    base = {k: v for k, v in config.items() if k in RUN_KEYS}
    groups = config.get("groups") or {None: {}}
    specs = []
    for group, group_settings in groups.items():
        for run, run_settings in config["runs"].items():
            settings = deep_merge(deep_merge(base, group_settings or {}), run_settings or {})
            for key in ("optimizer", "batch_size"):
                if key not in settings:
                    raise ValueError(f"{config['name']}: run {run!r} has no {key!r}")
            specs.append(RunSpec(config["name"], group, run, settings))
    return specs


def parse_assignment(text: str) -> dict[str, Any]:
    """``"trainer.max_epochs=3"`` -> ``{"trainer": {"max_epochs": 3}}`` (the value is read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE (e.g. trainer.max_epochs=3), got {text!r}")
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value)
    return out


# ---------------------------------------------------------------------------------------------- building
#: ``model.name`` -> builder in :mod:`lightning_sqn.problems.models` (LightningCLI ``class_path``)
MODELS = ("lenet5_mnist", "lenet_cifar", "resnet20", "digits_convnet")
#: ``data.dataset`` -> DataModule in :mod:`lightning_sqn.problems`
DATAMODULES = {
    "mnist": "MNISTDataModule",
    "fashion_mnist": "FashionMNISTDataModule",
    "cifar10": "CIFAR10DataModule",
    "digits": "DigitsDataModule",
}
#: Trainer settings of every run unless the config sets them
TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "log_every_n_steps": 10,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}


def uses_closure(settings: Mapping[str, Any]) -> bool:
    from lightning_sqn.problems.optimizers import needs_closure

    return needs_closure(settings["optimizer"])


def strategy_for(settings: Mapping[str, Any], devices: int) -> str:
    """``sqn``/``ddp_sqn`` for the quasi-Newton optimizers; Lightning's ``auto``/``ddp`` for the others."""
    if uses_closure(settings):
        return "ddp_sqn" if devices > 1 else "sqn"
    return "ddp" if devices > 1 else "auto"


def lightning_config(
    settings: Mapping[str, Any],
    *,
    seed: int,
    data_dir: str | Path | None = None,
    log_root: Path | None = None,
    run_name: str = "run",
    accelerator: str = "auto",
    devices: int = 1,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """The LightningCLI config (:class:`~lightning_sqn.problems.cli.SQNLightningCLI`) of one run.

    ``model``/``task``/``optimizer``/``optimizer_options`` become ``ClassificationTask``'s arguments,
    ``data`` and ``batch_size`` the DataModule's, ``trainer`` the Trainer's (over ``TRAINER_DEFAULTS``),
    with the strategy of :func:`strategy_for`, a TensorBoard logger writing to
    ``<log_root>/<run_name>/seed_<seed>`` (none without ``log_root``) and, for the quasi-Newton optimizers,
    ``TrustRegionMonitor`` and ``SkippedUpdateCounter``.
    """
    model = dict(settings.get("model") or {})
    name = model.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"model.name must be one of {', '.join(MODELS)}, got {name!r}")
    data = dict(settings.get("data") or {})
    dataset = data.pop("dataset", None)
    if dataset not in DATAMODULES:
        raise ValueError(f"data.dataset must be one of {', '.join(DATAMODULES)}, got {dataset!r}")
    data.setdefault("seed", seed)
    if dataset != "digits":
        if data_dir is None:
            raise ValueError(f"data set {dataset!r} needs --data-dir (torchvision's root layout)")
        data["data_dir"] = str(data_dir)
    closure = uses_closure(settings)
    callbacks: list[dict[str, Any]] = [
        {"class_path": f"lightning_sqn.callbacks.{c}"}
        for c in (["TrustRegionMonitor", "SkippedUpdateCounter"] if closure else [])
    ]
    stop_below = settings.get("stop_below")
    if stop_below is not None:
        # "epochs to reach a target" (Table 1) needs no epoch after the target's: stop at the first test
        # error < stop_below (Lightning's EarlyStopping threshold; patience never ends a run by itself)
        callbacks.append(
            {
                "class_path": "lightning.pytorch.callbacks.EarlyStopping",
                "init_args": {
                    "monitor": "test/error",
                    "mode": "min",
                    "stopping_threshold": float(stop_below),
                    "patience": 1_000_000,
                    "check_on_train_epoch_end": False,
                },
            }
        )
    trainer: dict[str, Any] = {**TRAINER_DEFAULTS, **dict(settings.get("trainer") or {})}
    trainer.update(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy_for(settings, devices),
        enable_progress_bar=progress_bar,
        callbacks=callbacks,
        logger=False
        if log_root is None
        else {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {
                "save_dir": str(log_root),
                "name": run_name,
                "version": f"seed_{seed}",
                "default_hp_metric": False,
            },
        },
    )
    return {
        "seed_everything": seed,
        "trainer": trainer,
        "model": {
            "model": {"class_path": f"lightning_sqn.problems.models.{name}", "init_args": model},
            "optimizer": settings["optimizer"],
            "optimizer_options": dict(settings.get("optimizer_options") or {}),
            **dict(settings.get("task") or {}),
        },
        "data": {
            "class_path": f"lightning_sqn.problems.{DATAMODULES[dataset]}",
            "init_args": {"batch_size": int(settings["batch_size"]), **data},
        },
    }


def instantiate(config: Mapping[str, Any]) -> Any:
    """Task, DataModule and Trainer of a :func:`lightning_config` through LightningCLI (``run=False``):
    the returned CLI's ``model``, ``datamodule`` and ``trainer``. With a logger, Lightning's
    ``SaveConfigCallback`` writes the config as ``config.yaml`` next to the logs when fitting starts."""
    from lightning_sqn.problems.cli import SQNLightningCLI

    kwargs: dict[str, Any] = {}
    if config["trainer"].get("logger") is False:
        kwargs["save_config_callback"] = None  # nowhere to save it (it would land in the working folder)
    with warnings.catch_warnings():
        # the runner's own command line is in sys.argv; LightningCLI warns that it is not the config
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        return SQNLightningCLI(args=copy.deepcopy(dict(config)), run=False, **kwargs)


def seeds_of(config: Mapping[str, Any], override: Sequence[int] | None) -> list[int]:
    seeds = list(override) if override else list(config.get("seeds") or [0])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a list of integers, got {seeds!r}")
    return seeds


def select(specs: Iterable[RunSpec], patterns: Sequence[str] | None) -> list[RunSpec]:
    """The runs whose ``group/run`` name matches one of the glob ``patterns`` (all without patterns)."""
    specs = list(specs)
    if not patterns:
        return specs
    chosen = [s for s in specs if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"--runs {list(patterns)} matches none of {', '.join(s.name for s in specs)}")
    return chosen


# ---------------------------------------------------------------------------------------------- fit
def fit_one(
    spec: RunSpec,
    seed: int,
    *,
    out: Path,
    data_dir: str | Path | None,
    preset: str,
    accelerator: str = "auto",
    devices: int = 1,
    progress_bar: bool = True,
) -> dict[str, Any] | None:
    """Train one run with one seed through LightningCLI; returns its summary (``None`` on ranks other
    than 0)."""
    config = lightning_config(
        spec.settings,
        seed=seed,
        data_dir=data_dir,
        log_root=out / spec.config,
        run_name=spec.name,
        accelerator=accelerator,
        devices=devices,
        progress_bar=progress_bar,
    )
    cli = instantiate(config)
    task, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    wall = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
    }
    summary: dict[str, Any] = {
        "config": spec.config,
        "run": spec.name,
        "seed": seed,
        "preset": preset,
        "optimizer": spec.settings["optimizer"],
        "batch_size": spec.settings["batch_size"],
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "fit_wall_time_s": round(wall, 3),
        "final_test_error": metrics.get("test/error"),
        "train_time_s": metrics.get("train/time"),
        "devices": devices,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "accelerator": type(trainer.accelerator).__name__,
    }
    opt = trainer.optimizers[0]
    counters = getattr(opt, "counters", None)
    if counters is not None:
        c = counters.as_dict()
        summary["counters"] = {k: (v if isinstance(v, int | float) else float(v)) for k, v in c.items()}
        offered = int(c.get("stored_pairs", 0)) + int(c.get("skipped_pairs", 0))
        summary["skipped_updates_pct"] = 100.0 * int(c.get("skipped_pairs", 0)) / offered if offered else None
    log_dir = Path(trainer.logger.log_dir)
    (log_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _write_resolved(spec: RunSpec, seed: int, out: Path, preset: str) -> Path:
    log_dir = out / spec.config / spec.name / f"seed_{seed}"
    log_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*log_dir.glob("events.out.tfevents*"), log_dir / "summary.json", log_dir / "hparams.yaml"]:
        stale.unlink(missing_ok=True)  # a rerun replaces the seed's logs instead of mixing with them
    resolved = {"config": spec.config, "run": spec.name, "seed": seed, "preset": preset, **spec.settings}
    (log_dir / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return log_dir


def _global_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def fit(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        overrides = deep_merge(overrides, item)
    _check_keys("--set", overrides, RUN_KEYS)
    for path in [p for target in args.config for p in find_configs(target)]:
        config = load_config(path, args.preset)
        # --set has the last word: it overrides the resolved settings of every run
        specs = [
            RunSpec(s.config, s.group, s.run, deep_merge(s.settings, overrides))
            for s in select(expand(config), args.runs)
        ]
        seeds = seeds_of(config, args.seeds)
        plan = [(spec, seed) for seed in seeds for spec in specs]
        if args.dry_run:
            for spec, seed in plan:
                print(f"{spec.config}/{spec.name}/seed_{seed}: {json.dumps(spec.settings, sort_keys=True)}")
            continue
        for index, (spec, seed) in enumerate(plan, 1):
            done = args.out / spec.config / spec.name / f"seed_{seed}" / "summary.json"
            if args.skip_existing and done.is_file():
                print(f"[{index}/{len(plan)}] {spec.config}/{spec.name} seed {seed}: done already, skipped")
                continue
            if _global_rank() == 0:
                _write_resolved(spec, seed, args.out, args.preset)
                print(
                    f"[{index}/{len(plan)}] {spec.config}/{spec.name} seed {seed} ({args.preset})", flush=True
                )
            summary = fit_one(
                spec,
                seed,
                out=args.out,
                data_dir=args.data_dir,
                preset=args.preset,
                accelerator=args.accelerator,
                devices=args.devices,
                progress_bar=args.progress_bar,
            )
            if summary is not None:
                err = summary["final_test_error"]
                print(
                    f"    test error {err:.2f}% after {summary['epochs']} epochs, "
                    f"{summary['fit_wall_time_s']:.1f} s"
                    if err is not None
                    else f"    {summary['fit_wall_time_s']:.1f} s",
                    flush=True,
                )
    return 0


# ---------------------------------------------------------------------------------------------- report
def _table_cell(values: Sequence[float], digits: int = 2) -> str:
    from lightning_sqn.report import format_mean_std

    return format_mean_std(values, digits)


def _epoch_table(data: Mapping[str, Mapping[Any, Any]], order: Sequence[str]) -> str:
    """Rows: runs; columns: epochs; cells: mean (± std over seeds) of the value at that epoch."""
    from lightning_sqn.report import markdown_table

    epochs = sorted({int(e) for run in data.values() for xs, _ in run.values() for e in xs})
    rows = []
    for run in [r for r in order if r in data] + sorted(set(data) - set(order)):
        cells: list[object] = [run, len(data[run])]
        for epoch in epochs:
            vals = [float(v[list(xs).index(epoch)]) for xs, v in data[run].values() if epoch in list(xs)]
            cells.append(_table_cell(vals) if vals else "")
        rows.append(cells)
    return markdown_table(["run", "seeds", *[str(e) for e in epochs]], rows)


def _summaries(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.rglob("summary.json"))]


def _resolved(root: Path) -> dict[str, dict[str, Any]]:
    """``{run name: resolved settings}`` from the ``recipe.yaml`` files under ``root`` (any seed)."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("recipe.yaml")):
        settings = yaml.safe_load(p.read_text(encoding="utf-8"))
        out.setdefault(settings["run"], settings)
    return out


def _paper_note(paper: Any, group: str | None, run: str) -> str:
    """The paper's value for ``run`` of ``group`` from ``report.paper_skipped``: a string (every run), or a
    mapping from group and/or run names to those."""
    if isinstance(paper, str):
        return paper
    if isinstance(paper, Mapping):
        if group is not None and group in paper:
            return _paper_note(paper[group], None, run)
        if run in paper:
            return _paper_note(paper[run], None, run)
    return "–"


def report_config(path: Path, out: Path, report_dir: Path | None = None) -> str:
    """Figures and tables of one config's logs under ``<out>/<config name>``; writes
    ``<report_dir>/report.md`` (default ``<out>/<config name>/report``) and returns the markdown."""
    from lightning_sqn import report as rep

    config = load_config(path, "paper")
    settings = config.get("report") or {}
    tag = settings.get("tag", "test/error")
    label = settings.get("ylabel", "test error (%)")
    root = out / config["name"]
    report_dir = report_dir or root / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    resolved = _resolved(root)
    summaries = _summaries(root)
    presets = sorted({s["preset"] for s in resolved.values()})
    lines = [f"# {config['name']}: {settings.get('title', '')}".rstrip(": "), ""]
    lines += [f"Logs: `{root}`; preset(s): {', '.join(presets) or 'unknown'}.", ""]
    order = list(config["runs"])
    groups = list(config.get("groups") or [None])
    per_group: dict[str | None, dict[str, Any]] = {}
    for group in groups:
        group_root = root if group is None else root / group
        if not group_root.is_dir():
            continue
        try:
            data = rep.load_scalars(group_root, tag)
        except FileNotFoundError:
            continue
        if not data:
            continue
        per_group[group] = data
        title = f"{settings.get('title', config['name'])}" + (f" ({group})" if group else "")
        stem = tag.replace("/", "_")
        prefix = f"{group}_" if group else ""
        x_axes = settings.get("x", ["epoch"])
        figures = []
        if "epoch" in x_axes:
            figures.append(
                rep.plot_curves(data, report_dir / f"{prefix}{stem}_epoch.png", ylabel=label, title=title)
            )
        if "time" in x_axes:
            times = rep.load_scalars(group_root, rep.TIME_TAG)
            if times:
                figures.append(
                    rep.plot_curves(
                        data, report_dir / f"{prefix}{stem}_time.png", times=times, ylabel=label, title=title
                    )
                )
        lines += [f"## {group}" if group else "## Runs", ""]
        lines += [f"![{f.stem}]({f.name})" for f in figures] + [""]
        lines += [f"{label}, per epoch (mean ± std over seeds):", "", _epoch_table(data, order), ""]
        targets = settings.get("targets")
        if targets:
            lines += ["Epochs to reach the target (first epoch with value ≤ target):", ""]
            lines += [rep.target_table(data, targets, label=label.split(" (")[0]), ""]
        skipped = rep.load_scalars(group_root, rep.SKIPPED_TOTAL_TAG)
        if skipped:
            lines += [
                "Skipped curvature updates (SR1 skip rule / L-BFGS curvature condition), whole fit:",
                "",
            ]
            table = rep.skipped_table(skipped, rep.load_scalars(group_root, rep.SKIPPED_EPOCH_TAG))
            paper = settings.get("paper_skipped")
            if paper:
                head, sep, *body = table.splitlines()
                body = [row + f" {_paper_note(paper, group, row.split(' | ')[0][2:])} |" for row in body]
                table = "\n".join([head + " paper |", sep + "---|", *body])
            lines += [table, ""]
        lines += _runs_table(summaries, group, order)
    table1 = settings.get("table1")
    if table1 and per_group:
        lines += [_table1(table1, per_group, resolved, order), ""]
    if not per_group:
        lines += [f"No logs of `{tag}` under `{root}`.", ""]
    text = "\n".join(lines)
    (report_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def _runs_table(summaries: Sequence[Mapping[str, Any]], group: str | None, order: Sequence[str]) -> list[str]:
    """Per run (mean over seeds): steps, accepted quasi-Newton steps, fit and training wall time."""
    from lightning_sqn.report import markdown_table

    rows = []
    for run in order:
        name = f"{group}/{run}" if group else run
        runs = [s for s in summaries if s["run"] == name]
        if not runs:
            continue
        counters = [s["counters"] for s in runs if s.get("counters")]
        accepted = (
            _table_cell([100.0 * c["accepted_steps"] / max(c["steps"], 1) for c in counters], 1)
            if counters
            else "–"
        )
        rows.append(
            [
                run,
                runs[0]["batch_size"],
                runs[0]["epochs"],
                _table_cell([s["global_steps"] for s in runs], 0),
                accepted,
                _table_cell([s["fit_wall_time_s"] for s in runs], 1),
                _table_cell([s["train_time_s"] or float("nan") for s in runs], 1),
            ]
        )
    if not rows:
        return []
    header = [
        "run",
        "batch",
        "epochs",
        "steps",
        "accepted steps (%)",
        "fit wall time (s)",
        "training time (s)",
    ]
    text = (
        "Per seed: optimizer steps, accepted steps (L-SR1: rho > eta; L-BFGS: a decrease found), wall time "
    )
    text += "of the fit (evaluation included) and of the training epochs alone:"
    return [text, "", markdown_table(header, rows), ""]


def _table1(
    table1: Mapping[str, Any],
    per_group: Mapping[str | None, Any],
    resolved: Mapping[str, Mapping[str, Any]],
    order: Sequence[str],
) -> str:
    """The paper's Table 1: epochs needed to pass each group's target, ours next to the paper's."""
    from lightning_sqn import report as rep

    columns = table1["columns"]  # {group: target}
    paper = table1.get("paper") or {}
    header = ["optimizer"]
    for group, target in columns.items():
        batch = next((s["batch_size"] for n, s in resolved.items() if n.startswith(f"{group}/")), "?")
        header += [f"≤ {target}% @ batch {batch}", "paper"]
    rows = []
    for run in order:
        row: list[object] = [run]
        for index, (group, target) in enumerate(columns.items()):
            data = per_group.get(group, {})
            if run in data:
                hits = rep.epochs_to_target({run: data[run]}, float(target))[run]
                reached = [e for e in hits.values() if e is not None]
                cell = _table_cell(reached, 1) if reached else "not reached"
                if reached and len(reached) < len(hits):
                    cell += f" ({len(reached)}/{len(hits)} seeds)"
                epochs = max(int(xs.max()) for xs, _ in data[run].values())
                if not reached:
                    cell += f" in {epochs}"
            else:
                cell = "not run"
            values = paper.get(run) or []
            row += [cell, values[index] if index < len(values) and values[index] is not None else "–"]
        rows.append(row)
    title = table1.get("title", "Table 1: epochs needed to surpass the target test error")
    return f"## {title}\n\n" + rep.markdown_table(header, rows)


def report(args: argparse.Namespace) -> int:
    for path in [p for target in args.config for p in find_configs(target)]:
        text = report_config(path, args.out)
        print(text)
    return 0


def list_configs(args: argparse.Namespace) -> int:
    for path in all_configs():
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        runs = len(expand({**raw, "name": config_name(path)}))
        presets = ", ".join(raw.get("presets") or {})
        where = path.relative_to(RECIPES.parent)
        print(f"{config_name(path):28s} {runs:3d} runs  presets: {presets}  ({where})")
    return 0


# ---------------------------------------------------------------------------------------------- main
def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python recipes/run.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="train the runs of one or more configs")
    p.add_argument("config", nargs="+", help="YAML path, recipe folder name or folder/stem")
    p.add_argument("--preset", choices=PRESETS, default="paper", help="scale (default: paper)")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("LIGHTNING_SQN_DATA"),
        help="root holding MNIST/raw and cifar-10-batches-py or cifar10/*.npz (default: $LIGHTNING_SQN_DATA)",
    )
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"log root (default: {DEFAULT_OUT})")
    p.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    p.add_argument("--devices", type=int, default=1, help="devices; > 1 trains with DDP (ddp_sqn / ddp)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (default: auto)")
    p.add_argument("--runs", nargs="+", metavar="GLOB", help="only the runs matching a glob on group/run")
    p.add_argument(
        "--set",
        action="append",
        type=parse_assignment,
        metavar="KEY=VALUE",
        help="override a setting of every run, e.g. trainer.max_epochs=3 (value read as YAML)",
    )
    p.add_argument("--skip-existing", action="store_true", help="skip runs that have a summary.json")
    p.add_argument("--dry-run", action="store_true", help="print the resolved runs and exit")
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false", help="no progress bars")
    p.set_defaults(func=fit)
    p = sub.add_parser("report", help="PNG figures and report.md from the logs of one or more configs")
    p.add_argument("config", nargs="+", help="YAML path, recipe folder name or folder/stem")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"log root (default: {DEFAULT_OUT})")
    p.set_defaults(func=report)
    p = sub.add_parser("list", help="list the recipes and their configs")
    p.set_defaults(func=list_configs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    # Lightning's per-Trainer banners (accelerator, tips) would repeat for every run; warnings still show.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
