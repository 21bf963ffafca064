"""Training the runs of a recipe: each (run, seed) is one LightningCLI call.

The runner adds only what one LightningCLI call cannot do: the seed, the data folder, the strategy (``sqn``
/ ``ddp_sqn`` for closure optimizers, Lightning's own otherwise), the monitoring callbacks of the
quasi-Newton optimizers, ``stop_below``, and a TensorBoard logger writing to
``<out>/<config name>/<group>/<run>/seed_<s>/``. Overrides are LightningCLI's own dotted arguments
(``--trainer.max_epochs=3``, ``--model.init_args.optimizer.init_args.gamma=1.0``), applied to every run
after its preset, group and run settings.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_sqn.recipes.config import RunSpec

#: the trained weights (the task's state dict) next to a run's logs, for what is drawn from the final model
WEIGHTS_FILE = "final_weights.pt"

#: Trainer settings of every run unless the config sets them
TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "log_every_n_steps": 10,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}


def import_class(class_path: str) -> Any:
    """The class (or function) a config's ``class_path`` names."""
    module, _, name = class_path.rpartition(".")
    if not module:
        raise ValueError(f"class_path must be a dotted path (module.Name), got {class_path!r}")
    return getattr(importlib.import_module(module), name)


def _optimizer_class(optimizer: Any) -> type | None:
    if isinstance(optimizer, str):
        from lightning_sqn.problems.optimizers import OPTIMIZERS

        return OPTIMIZERS[optimizer].cls if optimizer in OPTIMIZERS else None
    if not isinstance(optimizer, Mapping) or "class_path" not in optimizer:
        raise ValueError(f"model.init_args.optimizer must be a name or have a class_path, got {optimizer!r}")
    cls = import_class(str(optimizer["class_path"]))
    return cls if isinstance(cls, type) else None


def monitors(optimizer: Any) -> tuple[str, ...]:
    """The callbacks a run with this optimizer logs with: ``TrustRegionMonitor`` for this package's
    optimizers, and ``SkippedUpdateCounter`` for those that keep curvature pairs."""
    from lightning_sqn.optim.base import QuasiNewtonOptimizer

    cls = _optimizer_class(optimizer)
    if cls is None or not issubclass(cls, QuasiNewtonOptimizer):
        return ()
    return ("TrustRegionMonitor", "SkippedUpdateCounter") if cls.keeps_pairs else ("TrustRegionMonitor",)


def needs_closure(optimizer: Any) -> bool:
    """Whether the optimizer of a run's ``model.init_args.optimizer`` (a ``class_path`` mapping or a name of
    :data:`~lightning_sqn.problems.optimizers.OPTIMIZERS`) steps with a closure."""
    from lightning_sqn.optim.base import QuasiNewtonOptimizer
    from lightning_sqn.problems.optimizers import needs_closure as named_needs_closure

    if isinstance(optimizer, str):
        return named_needs_closure(optimizer)
    cls = _optimizer_class(optimizer)
    return cls is not None and issubclass(cls, QuasiNewtonOptimizer | torch.optim.LBFGS)


def optimizer_of(settings: Mapping[str, Any]) -> Any:
    """The ``model.init_args.optimizer`` of a run's settings (a ``class_path`` mapping or a name)."""
    return settings["model"]["init_args"]["optimizer"]


def strategy_for(closure: bool, devices: int) -> str:
    """``sqn``/``ddp_sqn`` for the quasi-Newton optimizers; Lightning's ``auto``/``ddp`` for the others."""
    if closure:
        return "ddp_sqn" if devices > 1 else "sqn"
    return "ddp" if devices > 1 else "auto"


def _takes(class_path: str, argument: str) -> bool:
    return argument in inspect.signature(import_class(class_path)).parameters


def reads_files(settings: Mapping[str, Any]) -> bool:
    """Whether a run's DataModule reads files (takes ``data_dir``); generated data (CURVES, the toy
    problem) does not."""
    return _takes(settings["data"]["class_path"], "data_dir")


def lightning_config(
    settings: Mapping[str, Any],
    *,
    seed: int,
    optimizer: Any = None,
    data_dir: str | Path | None = None,
    log_root: Path | None = None,
    run_name: str = "run",
    accelerator: str = "auto",
    devices: int = 1,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """The LightningCLI config of one run: its ``model``, ``data`` and ``trainer`` sections with the seed,
    ``data_dir`` (for a DataModule that reads files), the strategy of :func:`strategy_for`, a TensorBoard
    logger writing to ``<log_root>/<run_name>/seed_<seed>`` (none without ``log_root``), the
    callbacks of :func:`monitors` and, with ``stop_below``, Lightning's ``EarlyStopping`` at that test
    error. ``optimizer`` is the run's effective ``model.init_args.optimizer`` (default: the settings'; the
    one after the overrides when there are any), which the strategy and the callbacks follow.

    Raises:
        ValueError: a DataModule that reads files and no ``data_dir``.
    """
    data = copy.deepcopy(dict(settings["data"]))
    init_args = data.setdefault("init_args", {})
    if _takes(data["class_path"], "data_dir") and "data_dir" not in init_args:
        if data_dir is None:
            raise ValueError(f"{data['class_path']} reads files: pass --data-dir (torchvision's root layout)")
        init_args["data_dir"] = str(data_dir)
    if _takes(data["class_path"], "seed"):
        init_args.setdefault("seed", seed)
    optimizer = optimizer_of(settings) if optimizer is None else optimizer
    callbacks: list[dict[str, Any]] = [
        {"class_path": f"lightning_sqn.callbacks.{name}"} for name in monitors(optimizer)
    ]
    stop_below = settings.get("stop_below")
    if stop_below is not None:
        # epochs-to-target (Table 1) needs no epoch after the target's: stop at the first test error below
        # stop_below (EarlyStopping's threshold is strict); patience never ends a run by itself
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
    trainer: dict[str, Any] = {**TRAINER_DEFAULTS, **copy.deepcopy(dict(settings.get("trainer") or {}))}
    trainer.update(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy_for(needs_closure(optimizer), devices),
        enable_progress_bar=progress_bar,
        callbacks=[*trainer.get("callbacks", []), *callbacks],
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
        "model": copy.deepcopy(dict(settings["model"])),
        "data": data,
    }


def _cli(config: Mapping[str, Any], overrides: Sequence[str], *, instantiate: bool) -> Any:
    """LightningCLI over ``config`` and then ``overrides`` (its dotted arguments); without
    ``instantiate`` it only parses (the resolved config is ``cli.config``)."""
    from lightning_sqn.problems.cli import SQNLightningCLI

    class _ParseOnly(SQNLightningCLI):
        def _set_seed(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    kwargs: dict[str, Any] = {}
    if config["trainer"].get("logger") is False or not instantiate:
        kwargs["save_config_callback"] = None  # nowhere to save it (it would land in the working folder)
    args = ["--config", yaml.safe_dump(dict(config), sort_keys=False), *overrides]
    with warnings.catch_warnings():
        # the runner's own command line is in sys.argv; LightningCLI warns that it is not the config
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        return (SQNLightningCLI if instantiate else _ParseOnly)(args=args, run=False, **kwargs)


def instantiate(
    settings: Mapping[str, Any], overrides: Sequence[str] = (), **options: Any
) -> tuple[Any, dict[str, Any]]:
    """The task, DataModule and Trainer of one run (LightningCLI with ``run=False``: ``cli.model``,
    ``cli.datamodule``, ``cli.trainer``) and its LightningCLI config before ``overrides``.

    ``options`` are :func:`lightning_config`'s. The strategy and callbacks follow the optimizer of the
    config after the overrides.
    """
    optimizer = optimizer_of(settings)
    if overrides:
        probe = lightning_config(settings, optimizer=optimizer, **{**options, "log_root": None})
        optimizer = optimizer_of(_cli(probe, overrides, instantiate=False).config.as_dict())
    config = lightning_config(settings, optimizer=optimizer, **options)
    return _cli(config, overrides, instantiate=True), config


def fit_one(
    spec: RunSpec,
    seed: int,
    *,
    out: Path,
    preset: str,
    overrides: Sequence[str] = (),
    data_dir: str | Path | None = None,
    accelerator: str = "auto",
    devices: int = 1,
    progress_bar: bool = False,
) -> dict[str, Any] | None:
    """Train one run with one seed; returns its summary, also written to ``summary.json`` next to its
    logs (``None`` on ranks other than 0)."""
    cli, _ = instantiate(
        spec.settings,
        overrides,
        seed=seed,
        data_dir=data_dir,
        log_root=out / spec.config,
        run_name=spec.name,
        accelerator=accelerator,
        devices=devices,
        progress_bar=progress_bar,
    )
    task, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    wall = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
    }
    opt = trainer.optimizers[0]
    summary: dict[str, Any] = {
        "config": spec.config,
        "run": spec.name,
        "seed": seed,
        "preset": preset,
        "overrides": list(overrides),
        "optimizer": type(opt).__name__,
        "batch_size": int(datamodule.batch_size),
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "fit_wall_time_s": round(wall, 3),
        "final_test_error": metrics.get("test/error"),
        "final_test_loss": metrics.get("test/loss"),
        "train_time_s": metrics.get("train/time"),
        "devices": devices,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "accelerator": type(trainer.accelerator).__name__,
    }
    counters = getattr(opt, "counters", None)
    if counters is not None:
        c = counters.as_dict()
        summary["counters"] = {k: (v if isinstance(v, int | float) else float(v)) for k, v in c.items()}
        offered = int(c.get("stored_pairs", 0)) + int(c.get("skipped_pairs", 0))
        summary["skipped_updates_pct"] = 100.0 * int(c.get("skipped_pairs", 0)) / offered if offered else None
    log_dir = Path(trainer.logger.log_dir)
    torch.save(task.state_dict(), log_dir / WEIGHTS_FILE)
    (log_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def prepare_log_dir(spec: RunSpec, seed: int, out: Path, preset: str, overrides: Sequence[str]) -> Path:
    """``<out>/<config>/<run>/seed_<seed>/`` emptied of an earlier run's logs, with ``recipe.yaml`` (the
    run's settings, preset and overrides)."""
    log_dir = out / spec.config / spec.name / f"seed_{seed}"
    log_dir.mkdir(parents=True, exist_ok=True)
    stale_files = [log_dir / name for name in ("summary.json", "hparams.yaml", WEIGHTS_FILE)]
    for stale in [*log_dir.glob("events.out.tfevents*"), *stale_files]:
        stale.unlink(missing_ok=True)  # a rerun replaces the seed's logs instead of mixing with them
    resolved = {
        "config": spec.config,
        "run": spec.name,
        "seed": seed,
        "preset": preset,
        "overrides": list(overrides),
        **spec.settings,
    }
    (log_dir / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return log_dir


def global_rank() -> int:
    """This process's rank under a DDP launch (0 otherwise), before any process group exists."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


__all__ = [
    "TRAINER_DEFAULTS",
    "WEIGHTS_FILE",
    "fit_one",
    "global_rank",
    "import_class",
    "instantiate",
    "lightning_config",
    "monitors",
    "needs_closure",
    "optimizer_of",
    "prepare_log_dir",
    "reads_files",
    "strategy_for",
]
