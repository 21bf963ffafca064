"""LightningCLI for the recipes' runs: ``lightning-sqn fit --config run.yaml``.

:class:`SQNLightningCLI` is Lightning's :class:`~lightning.pytorch.cli.LightningCLI` with the model any
:class:`~lightning_sqn.problems.task.TrainingTask` subclass (``ClassificationTask``,
``ReconstructionTask``) and the data any :class:`~lightning_sqn.problems.data.TensorDataModule` subclass,
both by ``class_path``, so a run is one YAML file in LightningCLI's format::

    seed_everything: 0
    trainer:
      strategy: sqn                      # ddp_sqn with devices: N
      max_epochs: 20
      callbacks:
        - class_path: lightning_sqn.callbacks.TrustRegionMonitor
    model:
      class_path: lightning_sqn.problems.ClassificationTask
      init_args:
        model:
          class_path: lightning_sqn.problems.lenet5_mnist
          init_args: {batch_norm: true}
        optimizer:
          class_path: lightning_sqn.LSR1
          init_args: {memory: 5, gamma: 0.1}
        weight_decay: 1.0e-4
    data:
      class_path: lightning_sqn.problems.MNISTDataModule
      init_args: {data_dir: DATA, batch_size: 400}

``recipes/run.py`` writes such a file for every run of a recipe (``config.yaml`` next to its TensorBoard
logs, via Lightning's ``SaveConfigCallback``) and trains it through this class, so any single run can be
repeated or varied with the usual LightningCLI flags::

    lightning-sqn fit --config runs/lsr1_ramamurthy2017/fig1_mnist_lenet/bn/lsr1/seed_0/config.yaml \\
        --trainer.max_epochs=3

Needs ``jsonargparse[signatures]`` (in the ``recipes`` extra).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lightning_sqn.problems.data import TensorDataModule
from lightning_sqn.problems.task import TrainingTask


@contextlib.contextmanager
def _ignore_jsonargparse_deprecations() -> Iterator[None]:
    """Hide the deprecation warnings jsonargparse >= 4.49 raises on the APIs Lightning 2.6 calls (nothing a
    user of this CLI can act on). The filters name jsonargparse's and Lightning's CLI modules, so no other
    warning is hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="jsonargparse")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="lightning.pytorch.cli")
        yield


class _SaveConfig(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` without jsonargparse's deprecation warnings."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        with _ignore_jsonargparse_deprecations():
            super().setup(trainer, pl_module, stage)


class SQNLightningCLI(LightningCLI):
    """:class:`~lightning.pytorch.cli.LightningCLI` over the :class:`TrainingTask` and the
    :class:`TensorDataModule` subclasses.

    Args:
        args: command-line arguments (a list, as after the program name), or a config ``dict`` in the
            format above; ``None`` reads ``sys.argv``.
        run: run the subcommand (``True``) or only instantiate model, data and Trainer (``False``; the
            config then has no subcommand).
        **kwargs: passed to :class:`~lightning.pytorch.cli.LightningCLI`. By default the config of a run
            is saved next to its logs as ``config.yaml``, overwriting an older one (a rerun of the same
            log folder replaces it).
    """

    def __init__(
        self, args: Sequence[str] | dict[str, Any] | None = None, run: bool = True, **kwargs: Any
    ) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        kwargs.setdefault("save_config_callback", _SaveConfig)
        # the task builds its optimizer from model.init_args.optimizer; LightningCLI's own top-level
        # --optimizer / --lr_scheduler would be a second way to set it
        kwargs.setdefault("auto_configure_optimizers", False)
        with _ignore_jsonargparse_deprecations():
            super().__init__(
                TrainingTask,
                TensorDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=args,  # type: ignore[arg-type]
                run=run,
                **kwargs,
            )


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-sqn fit|validate|test|predict ...``: LightningCLI's command line."""
    with warnings.catch_warnings():
        # argv is this command's line (the console script passes sys.argv[1:] itself; tests pass their own)
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        SQNLightningCLI(args=None if argv is None else list(argv))
    return 0


__all__ = ["SQNLightningCLI", "main"]
