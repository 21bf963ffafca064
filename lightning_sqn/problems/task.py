r"""The LightningModules of the recipes: :class:`TrainingTask` (what every experiment shares: the optimizer,
the L2 term, a learning-rate schedule, the training loss logged once per step, backpropagations and wall
time) and :class:`ClassificationTask` (image classification as trained in Ramamurthy & Duffy 2017,
Section 4, and Kohler, Adolphs & Lucchi, Section 5). The autoencoders' task is
:class:`~lightning_sqn.problems.reconstruction.ReconstructionTask`.

The classification objective is the mean softmax cross entropy of the mini-batch plus an L2 term on all
trainable parameters (the appendix: "the network was trained with L2 regularization with parameter 0.0001" on
MNIST, 0.001 on CIFAR10),

.. math::

    f(w) = \frac{1}{b}\sum_{i=1}^{b} \operatorname{CE}(h_w(x_i), y_i) + \frac{\lambda}{2}\,\|w\|_2^2 ,

with :math:`\lambda` = ``weight_decay``. Its gradient adds :math:`\lambda w`, exactly what
``torch.optim.SGD(weight_decay=λ)`` adds, so for the first-order methods this is the usual weight decay
(for Adam it is L2, not AdamW's decoupled decay), and the quasi-Newton methods see the same objective in
every closure evaluation, trial points included.

The paper reports the test error after every epoch ("test loss was measured as multi-class error
count"); here it is computed by Lightning's *validation* loop, so the DataModule's ``val_dataloader``
must return the test set, as :class:`~lightning_sqn.problems.data.TensorDataModule` and its subclasses do
when no validation split is asked for (``trainer.test`` reports the same numbers through
``test_dataloader``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_sqn.problems.optimizers import OPTIMIZERS, build_optimizer, needs_closure

#: what LightningCLI builds from ``optimizer: {class_path: ..., init_args: {...}}`` (``OptimizerCallable``)
OptimizerFactory: TypeAlias = Callable[[Iterable], torch.optim.Optimizer]


#: the evaluation loaders' log prefixes by dataloader index: the test set (or the validation split), then
#: the whole training set when the DataModule evaluates it (``TensorDataModule(eval_train=True)``)
EVAL_PREFIXES: tuple[str, ...] = ("test", "train_set")

_DOUBLE_DECAY = (
    "pass weight_decay to ClassificationTask(weight_decay=...), not to the optimizer: the task adds "
    "weight_decay/2 * ||w||^2 to the loss (the paper's L2), and a second decay inside the optimizer would "
    "count it twice"
)


class TrainingTask(pl.LightningModule):
    r"""What every recipe's LightningModule shares; subclasses define the loss and the evaluation.

    A subclass implements :meth:`batch_loss` (the data term of the objective on a batch, and the
    per-step metrics to log with it) and the evaluation hooks. This class adds the L2 term
    :math:`\frac{\lambda}{2}\|w\|^2`, builds the optimizer (with an optional ``MultiStepLR``), and logs:

    * ``train/loss`` per step: the data term of the step's mini-batch at :math:`x_k`, i.e. from the first
      ``training_step`` call of the step (a closure optimizer calls it again at trial points; those calls
      are not logged), and ``train/objective`` (with the L2 term) when ``weight_decay > 0``; means over
      ranks under DDP; ``train/epoch_loss``: the mean of ``train/loss`` over the epoch's steps;
    * ``train/backprops`` per step: backpropagations so far, counted as Kohler, Adolphs & Lucchi do (a
      gradient or a Hessian- / Gauss-Newton-vector product each count one): ``optimizer.counters.backprops``
      for this package's optimizers, one per training batch for any other optimizer; for this package's
      optimizers also ``train/curvature_products``, the Hessian- / Gauss-Newton-vector products so far;
    * ``train/epoch_time`` per epoch: wall-clock seconds of the training epoch, evaluation excluded
      (maximum over ranks), and ``train/time``: their running sum over the fit.

    ``train/time`` and the backpropagation count are kept in checkpoints.

    Args:
        model: the network.
        optimizer: a callable that builds the optimizer from the parameters (what LightningCLI makes of
            ``optimizer: {class_path: lightning_sqn.LSR1, init_args: {memory: 5}}`` in a config, or
            ``functools.partial(LSR1, memory=5)``), or a name of
            :data:`~lightning_sqn.problems.optimizers.OPTIMIZERS` (the L-SR1 paper's settings).
        optimizer_options: with a name only: keyword overrides for
            :func:`~lightning_sqn.problems.optimizers.build_optimizer` (``None``: the paper's defaults).
        weight_decay: :math:`\lambda` of the L2 term :math:`\frac{\lambda}{2}\|w\|^2` in the loss.
        lr_milestones: epochs at which the learning rate is multiplied by ``lr_gamma``
            (``torch.optim.lr_scheduler.MultiStepLR``; the first-order ResNet baseline uses ``[80, 120]``).
        lr_gamma: the factor of ``lr_milestones``.

    Raises:
        ValueError: unknown optimizer or option (see ``build_optimizer``); ``optimizer_options`` with a
            factory; an optimizer with a nonzero ``weight_decay`` of its own (it belongs to the loss
            here); ``weight_decay < 0``; ``lr_milestones`` with a quasi-Newton optimizer (they have no
            learning rate to schedule) or not increasing positive integers.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | str = "lsr1",
        optimizer_options: dict[str, Any] | None = None,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] | None = None,
        lr_gamma: float = 0.1,
    ) -> None:
        super().__init__()
        options = dict(optimizer_options or {})
        if isinstance(optimizer, str):
            if optimizer not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {optimizer!r}; valid names: {', '.join(OPTIMIZERS)}")
            if "weight_decay" in options:
                raise ValueError(_DOUBLE_DECAY)
        elif not callable(optimizer):
            raise ValueError(f"optimizer must be a name or a callable params -> optimizer, got {optimizer!r}")
        elif options:
            raise ValueError(
                "optimizer_options go with an optimizer name; a factory carries its own arguments "
                "(init_args in a config, or functools.partial)"
            )
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        # a factory is not a hyperparameter Lightning can save; its class and arguments are in the config
        self.save_hyperparameters(ignore=["model"] if isinstance(optimizer, str) else ["model", "optimizer"])
        self._optimizer = optimizer
        # fail now, not at fit start, on an unknown option or an invalid value
        probe = self._build_optimizer([torch.zeros(1, requires_grad=True)])
        if any(float(group.get("weight_decay") or 0.0) != 0.0 for group in probe.param_groups):
            raise ValueError(_DOUBLE_DECAY)
        if lr_milestones is not None:
            if needs_closure(probe):
                raise ValueError(
                    f"lr_milestones schedule a learning rate, which the quasi-Newton optimizer "
                    f"{type(probe).__name__} does not have (its step length comes from the trust region or "
                    "line search); use them with a first-order optimizer"
                )
            milestones = list(lr_milestones)
            if not all(isinstance(m, int) and m > 0 for m in milestones) or milestones != sorted(
                set(milestones)
            ):
                raise ValueError(f"lr_milestones must be increasing positive integers, got {lr_milestones!r}")
        if not lr_gamma > 0:
            raise ValueError(f"lr_gamma must be > 0, got {lr_gamma!r}")
        self.model = model
        # per evaluated split: its metrics (test set, and the training set with eval_train=True)
        self.eval_metrics = nn.ModuleDict({prefix: self.new_eval_metrics() for prefix in EVAL_PREFIXES})
        self._logged_batch: int | None = None
        self._train_time = 0.0
        self._batches = 0  # training batches seen: the backpropagations of a first-order optimizer
        self._epoch_start = 0.0
        self._eval_time = 0.0
        self._eval_start = 0.0

    # ------------------------------------------------------------------ objective
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def batch_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The data term of the objective on ``batch`` and the per-step metrics to log with it (names
        under ``train/``, e.g. ``{"accuracy": ...}``)."""
        raise NotImplementedError

    def l2_penalty(self) -> Tensor:
        r""":math:`\frac{\lambda}{2}\|w\|_2^2` over all trainable parameters (biases and normalisation
        weights included, as ``torch.optim``'s ``weight_decay``); a zero tensor when :math:`\lambda = 0`."""
        lam = float(self.hparams.weight_decay)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if lam == 0.0 or not params:
            return torch.zeros((), device=self.device)
        return 0.5 * lam * torch.stack([p.pow(2).sum() for p in params]).sum()

    def sqn_loss(self, batch: Any) -> Tensor:
        """The objective on ``batch`` (data term + L2) without logging; what
        :class:`~lightning_sqn.callbacks.BatchSizeScheduler`'s norm test differentiates."""
        return self.batch_loss(batch)[0] + self.l2_penalty()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, metrics = self.batch_loss(batch)
        objective = loss + self.l2_penalty() if self.hparams.weight_decay > 0 else loss
        # A closure optimizer calls training_step at x_k and again at trial points of the same batch:
        # log the first call only, so train/loss is f(x_k) as for a first-order method. Every rank makes
        # the same calls (ddp_sqn), so the sync_dist all-reduce happens on all ranks or none.
        if batch_idx != self._logged_batch:
            self._logged_batch = batch_idx
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, sync_dist=True)
            self.log("train/epoch_loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True)
            if self.hparams.weight_decay > 0:
                self.log("train/objective", objective.detach(), on_step=True, on_epoch=False, sync_dist=True)
            for name, value in metrics.items():
                self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=True, sync_dist=True)
        return objective

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batches += 1
        self.log("train/backprops", float(self.backprops), on_step=True, on_epoch=False)
        products = self._counts("curvature_products")
        if products is not None:
            self.log("train/curvature_products", float(products), on_step=True, on_epoch=False)

    @property
    def backprops(self) -> int:
        """Backpropagations so far (see the class docstring)."""
        known = self._counts("backprops")
        return self._batches if known is None else known

    def _counts(self, field: str) -> int | None:
        """The sum of ``counters.<field>`` over the optimizers that keep counters (``None``: none does)."""
        counters = [getattr(_unwrap(o), "counters", None) for o in self._trainer_optimizers()]
        known = [getattr(c, field) for c in counters if c is not None]
        return sum(known) if known else None

    def _trainer_optimizers(self) -> list[Any]:
        trainer = self._trainer
        return list(trainer.optimizers) if trainer is not None else []

    # ------------------------------------------------------------------ evaluation
    def new_eval_metrics(self) -> nn.ModuleDict:
        """A fresh set of the evaluation metrics (one set per evaluated split, see :data:`EVAL_PREFIXES`)."""
        raise NotImplementedError

    def eval_step(self, batch: Any, metrics: nn.ModuleDict) -> None:
        """Accumulate the evaluation metrics of one batch into ``metrics`` (validation and test alike)."""
        raise NotImplementedError

    def eval_values(self, metrics: nn.ModuleDict) -> dict[str, Tensor]:
        """The values to log from accumulated ``metrics`` (names without the split's prefix)."""
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.eval_step(batch, self.eval_metrics[EVAL_PREFIXES[dataloader_idx]])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.eval_step(batch, self.eval_metrics[EVAL_PREFIXES[0]])

    def eval_epoch_end(self) -> None:
        """Log ``<prefix>/<name>`` for every split evaluated since the last call (``test/...``: the
        paper's test numbers come from Lightning's validation loop over the test set; ``train_set/...``
        with a DataModule's ``eval_train=True``) and reset the metrics. Every rank evaluates the same
        splits, so the ``sync_dist`` reductions match."""
        for prefix, metrics in self.eval_metrics.items():
            if not any(m.update_count for m in metrics.values()):
                continue
            for name, value in self.eval_values(metrics).items():
                self.log(f"{prefix}/{name}", value, sync_dist=True)
            for m in metrics.values():
                m.reset()

    def on_validation_epoch_end(self) -> None:
        self.eval_epoch_end()

    def on_test_epoch_end(self) -> None:
        self.eval_epoch_end()

    # ------------------------------------------------------------------ wall time
    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._eval_time = 0.0
        self._logged_batch = None

    def on_validation_start(self) -> None:
        self._eval_start = time.perf_counter()

    def on_validation_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._eval_time += time.perf_counter() - self._eval_start

    def on_train_epoch_end(self) -> None:
        elapsed = time.perf_counter() - self._epoch_start - self._eval_time
        self._train_time += elapsed
        self.log("train/epoch_time", elapsed, sync_dist=True, reduce_fx="max")
        self.log("train/time", self._train_time, sync_dist=True, reduce_fx="max")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["training_task"] = {"train_time": self._train_time, "batches": self._batches}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # "classification_task": the key of checkpoints written before TrainingTask existed
        saved = checkpoint.get("training_task", checkpoint.get("classification_task", {}))
        self._train_time = float(saved.get("train_time", 0.0))
        self._batches = int(saved.get("batches", 0))

    # ------------------------------------------------------------------ optimizer
    def _build_optimizer(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        if isinstance(self._optimizer, str):
            return build_optimizer(self._optimizer, params, **(self.hparams.optimizer_options or {}))
        return self._optimizer(params)

    def configure_optimizers(self) -> Any:
        optimizer = self._build_optimizer(self.parameters())
        # Gauss-Newton products (Hessian-free) need the network's output: watch the network, which runs
        # once per evaluation (under DDP the LightningModule itself is also called by the wrapper)
        watch = getattr(optimizer, "watch_module", None)
        if watch is not None:
            watch(self.model)
        if self.hparams.lr_milestones is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(self.hparams.lr_milestones), gamma=self.hparams.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _unwrap(opt: Any) -> Any:
    return getattr(opt, "optimizer", opt)  # Lightning's LightningOptimizer wraps the optimizer


class ClassificationTask(TrainingTask):
    r"""Train a classifier with any optimizer: the mean cross entropy plus the L2 term.

    Works with Lightning's automatic optimization for closure optimizers (``Trainer(strategy="sqn")`` or
    ``"ddp_sqn"``, which evaluate ``training_step`` several times per step) and first-order ones alike.

    Logged, besides :class:`TrainingTask`'s (all through ``self.log``, at Lightning's step with an
    ``epoch`` tag alongside):

    * ``train/accuracy`` per step (the step's mini-batch at :math:`x_k`, in percent) and its mean over the
      epoch's steps (``train/accuracy_epoch``);
    * ``test/error`` per epoch: misclassification rate in percent, :math:`100\,(1 - \text{accuracy})`,
      from ``MulticlassAccuracy(average="micro")`` over the whole evaluation set (states summed over ranks);
    * ``test/loss`` per epoch: mean cross entropy over the evaluation set (without the L2 term);
    * ``train_set/error`` and ``train_set/loss``: the same over the whole training set at the epoch's end,
      when the DataModule has ``eval_train=True``.

    Args:
        model: maps a batch of inputs to logits of shape ``(batch, num_classes)``.
        optimizer, optimizer_options, weight_decay, lr_milestones, lr_gamma: see :class:`TrainingTask`.
        num_classes: the number of classes of the error metric.

    Raises:
        ValueError: see :class:`TrainingTask`.

    Example::

        >>> from torch import nn
        >>> from lightning_sqn.problems.task import ClassificationTask
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        >>> task = ClassificationTask(net, optimizer="nag", optimizer_options={"lr": 0.01}, weight_decay=1e-4)
        >>> task.hparams.optimizer, task.hparams.weight_decay
        ('nag', 0.0001)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | str = "lsr1",
        optimizer_options: dict[str, Any] | None = None,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] | None = None,
        lr_gamma: float = 0.1,
        num_classes: int = 10,
    ) -> None:
        self._num_classes = num_classes
        super().__init__(model, optimizer, optimizer_options, weight_decay, lr_milestones, lr_gamma)

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits = self(x)
        accuracy = 100.0 * (logits.detach().argmax(dim=-1) == y).float().mean()
        return nn.functional.cross_entropy(logits, y), {"accuracy": accuracy}

    # ------------------------------------------------------------------ evaluation
    def new_eval_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "accuracy": MulticlassAccuracy(num_classes=self._num_classes, average="micro"),
                "loss": MeanMetric(),
            }
        )

    def eval_step(self, batch: tuple[Tensor, Tensor], metrics: nn.ModuleDict) -> None:
        x, y = batch
        logits = self(x)
        metrics["accuracy"].update(logits, y)
        metrics["loss"].update(nn.functional.cross_entropy(logits, y), weight=y.shape[0])

    def eval_values(self, metrics: nn.ModuleDict) -> dict[str, Tensor]:
        # compute() reduces the metric states over ranks, so the logged numbers are global
        return {"error": 100.0 * (1.0 - metrics["accuracy"].compute()), "loss": metrics["loss"].compute()}


__all__ = ["EVAL_PREFIXES", "ClassificationTask", "OptimizerFactory", "TrainingTask"]
