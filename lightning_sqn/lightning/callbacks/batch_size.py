r"""Change the training batch size during ``fit``: fixed milestones, geometric growth, or the norm test.

The adaptive mode is the *norm test* of Byrd, Chin, Nocedal & Wu (2012), "Sample size selection in
optimization methods for machine learning", Math. Program. 134, eq. (3.3)-(3.9). With per-sample losses
:math:`\ell_i`, a sample :math:`S` of size :math:`b` and its gradient :math:`g = \frac{1}{b}\sum_{i\in S}
\nabla\ell_i`, the sample gradient is a good enough descent direction when its variance is small relative
to its norm,

.. math::

    \frac{\operatorname{Var}_{i\in S}(\nabla \ell_i)}{b} \le \theta^2 \|g\|^2, \qquad
    \operatorname{Var}_{i\in S}(\nabla \ell_i) = \frac{1}{b-1}\sum_{i\in S}\|\nabla\ell_i - g\|^2 ,

and when it fails the next sample size is the one that would satisfy it (eq. 3.9),
:math:`\hat b = \lceil \operatorname{Var} / (\theta^2\|g\|^2) \rceil`.

Per-sample gradients cost ``b`` backward passes, so the variance is estimated from ``M`` micro-batches
:math:`S_1,\dots,S_M` of sizes :math:`m_j` (:math:`\sum_j m_j = b`) with mean-loss gradients :math:`g_j`:

.. math::

    \widehat{\operatorname{Var}} = \frac{1}{M-1}\sum_{j=1}^{M} m_j \|g_j - g\|^2,
    \qquad g = \frac{1}{b}\sum_j m_j g_j ,

which is unbiased for the per-sample variance (the trace of the covariance of :math:`\nabla\ell_i`) for
any chunk sizes, and equals the formula above exactly when every micro-batch is one sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.utilities.parsing import lightning_getattr, lightning_hasattr, lightning_setattr
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from lightning_sqn._flat import FlatParams

if TYPE_CHECKING:
    import lightning.pytorch as pl

LossFn = Callable[["pl.LightningModule", Any], Tensor]


@dataclass(frozen=True)
class NormTestResult:
    """One evaluation of the norm test (all numbers global, i.e. over all ranks).

    Attributes:
        variance: :math:`\\widehat{\\operatorname{Var}}`, the estimated per-sample gradient variance.
        grad_norm_sq: :math:`\\|g\\|^2` of the whole (global) batch gradient.
        num_samples: samples in the evaluated batch (all ranks).
        num_micro_batches: ``M``, the number of micro-batch gradients (all ranks).
        batch_size: ``b``, the global batch size the test is about (the scheduler's current one).
        ratio: :math:`\\widehat{\\operatorname{Var}} / (b\\,\\|g\\|^2)`; the test passes iff
            ``ratio <= theta**2``.
        passed: whether the test held.
        proposed: the global batch size for the next epoch (``batch_size`` when the test held).
    """

    variance: float
    grad_norm_sq: float
    num_samples: int
    num_micro_batches: int
    batch_size: int
    ratio: float
    passed: bool
    proposed: int


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _world() -> tuple[int, bool]:
    distributed = dist.is_available() and dist.is_initialized()
    return (dist.get_world_size() if distributed else 1), distributed


def _leading_size(batch: Any) -> int:
    sizes: set[int] = set()
    apply_to_collection(batch, Tensor, lambda t: sizes.add(t.shape[0]) if t.ndim > 0 else None)
    if len(sizes) != 1:
        raise ValueError(
            "BatchSizeScheduler splits a batch along dim 0 of its tensors; they must agree on one size, "
            f"got sizes {sorted(sizes)}"
        )
    return sizes.pop()


def _split(batch: Any, chunks: int) -> list[Any]:
    """``chunks`` micro-batches: every tensor of the collection split along dim 0 at the same indices."""
    parts: list[Any] = []
    for j in range(chunks):
        parts.append(
            apply_to_collection(batch, Tensor, lambda t, j=j: t.tensor_split(chunks)[j] if t.ndim > 0 else t)
        )
    return parts


class BatchSizeScheduler(Callback):
    r"""Change the (global) training batch size between epochs of ``Trainer.fit``.

    Exactly one of three modes, chosen by which argument is given:

    1. ``milestones={epoch: batch_size}``: the batch size from that epoch on. Before the first milestone
       (when epoch 0 is not a key) the batch size is the one the attribute holds at fit start.
    2. ``factor``: geometric growth :math:`b_e = \min(b_{\max}, \operatorname{round}(b_0\, r^{\lfloor
       e / k\rfloor}))` with ``initial`` :math:`b_0`, ``factor`` :math:`r > 1`, ``every_n_epochs``
       :math:`k` and ``max_batch_size`` :math:`b_{\max}`.
    3. ``theta``: the norm test of Byrd et al. (2012) (see the module docstring). At the end of every
       training epoch (or every ``check_every_n_steps`` training batches) the callback estimates the
       gradient variance on a training batch at the current parameters; when
       :math:`\widehat{\operatorname{Var}}/b > \theta^2\|g\|^2` it proposes
       :math:`\min(b_{\max}, \max(\lceil\widehat{\operatorname{Var}}/(\theta^2\|g\|^2)\rceil,
       \lceil \texttt{min\_growth}\cdot b\rceil))`. The largest proposal of an epoch takes effect from the
       next epoch; the batch size never shrinks.

    **How the batch size is applied.** Like Lightning's batch-size finder, the callback writes
    ``attr_name`` with :func:`lightning.pytorch.utilities.parsing.lightning_setattr` (on the module, its
    ``hparams`` and the DataModule, wherever it exists) and relies on your ``train_dataloader()`` reading
    it. The train dataloader must be rebuilt every epoch: pass
    ``Trainer(reload_dataloaders_every_n_epochs=1)``.
    A new size set at the end of epoch ``e`` is used from epoch ``e + 1``.

    **Distributed.** All batch sizes of this callback (``milestones`` values, ``initial``,
    ``max_batch_size``, the logged value) are *global*: the attribute, which each rank's DataLoader reads,
    is set to ``global // world_size``, and every scheduled size must be divisible by the world size
    (norm-test proposals are rounded up to a multiple of it). The attribute's value at fit start counts
    as per-rank. Under DDP the norm test treats the rank-local micro-batches of all ranks as the
    micro-batches of the global batch: with ``num_micro_batches=1`` each rank's gradient is one
    micro-batch. The global mean gradient is one ``all_reduce`` of a parameter-sized vector, the
    variance two scalar ones.

    **How the norm test gets the loss.** It needs the mean loss of a (micro-)batch as a differentiable
    function of the parameters, without ``training_step``'s side effects (logging, counters, manual
    optimization). So either the LightningModule implements ``sqn_loss(batch) -> Tensor`` or you pass
    ``loss_fn(pl_module, batch) -> Tensor``; the loss must be the *mean* over the samples of the batch.
    Gradients come from :func:`torch.autograd.grad`, so ``.grad``, the optimizer state and the
    parameters are untouched; module buffers (BatchNorm running statistics) and the RNG state are saved
    and restored around the extra forward passes, which run in the module's current train/eval mode and
    the Trainer's precision context. The module is called directly, not through the DDP wrapper, so no
    gradient all-reduce is triggered.

    The state (current batch size, the epoch it is for, the pending norm-test proposal and the last
    ratio) is saved in checkpoints. It holds the batch size for the epoch that follows the checkpoint,
    which is exact for checkpoints saved at the end of a training epoch or mid-epoch; a checkpoint saved
    at validation that runs before ``on_train_epoch_end`` resumes with the finished epoch's batch size
    for one epoch.

    Logs ``sqn/batch_size`` (global) every epoch and, in the norm-test mode, ``sqn/variance_ratio``
    (:math:`\widehat{\operatorname{Var}}/(b\|g\|^2)`, compared against :math:`\theta^2`).

    Args:
        milestones: ``{epoch: global batch size}`` (mode 1).
        initial: the first global batch size (modes 2 and 3; required in mode 2, in mode 3 ``None`` takes
            the attribute's value at fit start).
        factor: growth factor ``> 1`` (mode 2).
        every_n_epochs: epochs between growths (mode 2, default 1).
        max_batch_size: the cap (required in modes 2 and 3; in mode 1 milestones may not exceed it).
        theta: the norm-test tolerance :math:`\theta > 0` (mode 3; the paper uses values in (0, 1)).
        num_micro_batches: micro-batches per rank for the variance estimate (mode 3, default 8);
            ``None`` uses one micro-batch per sample (exact per-sample variance, ``b`` backward passes).
        min_growth: when the test fails the batch grows at least by this factor (mode 3, default 1.0).
        check_every_n_steps: run the test on every n-th training batch instead of on the last full batch
            of each epoch (mode 3).
        loss_fn: ``loss_fn(pl_module, batch) -> Tensor`` (mode 3); default ``pl_module.sqn_loss(batch)``.
        attr_name: the attribute holding the per-rank DataLoader batch size.
        log: log the batch size (and the variance ratio) with ``pl_module.log``.

    Raises:
        ValueError: not exactly one of ``milestones``, ``factor``, ``theta``; a hyperparameter out of its
            range; an argument given that the chosen mode does not use.
        MisconfigurationException: at fit start, when ``reload_dataloaders_every_n_epochs != 1``, the
            attribute is not found, a batch size is not divisible by the world size, or (norm test) the
            loss is not available or there are fewer than two micro-batches.

    Example::

        class Data(LightningDataModule):
            def __init__(self):
                super().__init__()
                self.batch_size = 32

            def train_dataloader(self):
                return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)

        scheduler = BatchSizeScheduler(initial=32, factor=2, every_n_epochs=5, max_batch_size=1024)
        trainer = Trainer(callbacks=[scheduler], reload_dataloaders_every_n_epochs=1)
        trainer.fit(model, datamodule=Data())
    """

    def __init__(
        self,
        milestones: Mapping[int, int] | None = None,
        *,
        initial: int | None = None,
        factor: float | None = None,
        every_n_epochs: int | None = None,
        max_batch_size: int | None = None,
        theta: float | None = None,
        num_micro_batches: int | None = 8,
        min_growth: float | None = None,
        check_every_n_steps: int | None = None,
        loss_fn: LossFn | None = None,
        attr_name: str = "batch_size",
        log: bool = True,
    ) -> None:
        given = [
            n for n, v in (("milestones", milestones), ("factor", factor), ("theta", theta)) if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of milestones= (fixed schedule), factor= (geometric growth) or theta= "
                f"(norm test), got {given or 'none'}"
            )
        self.mode: str = {"milestones": "milestones", "factor": "geometric", "theta": "norm_test"}[given[0]]
        if not isinstance(attr_name, str) or not attr_name:
            raise ValueError(f"attr_name must be a non-empty string, got {attr_name!r}")
        if max_batch_size is not None and not (_is_int(max_batch_size) and max_batch_size >= 1):
            raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        unused = {
            "milestones": {"initial": initial, "factor": factor, "every_n_epochs": every_n_epochs},
            "geometric": {},
            "norm_test": {"every_n_epochs": every_n_epochs},
        }[self.mode]
        if self.mode != "norm_test":
            unused.update(
                min_growth=min_growth,
                check_every_n_steps=check_every_n_steps,
                loss_fn=loss_fn,
            )
        wrong = sorted(k for k, v in unused.items() if v is not None)
        if wrong:
            raise ValueError(f"{', '.join(wrong)} not used by the {self.mode!r} mode; remove them")

        self.milestones: dict[int, int] = {}
        self.initial = initial
        self.factor = factor
        self.every_n_epochs = 1 if every_n_epochs is None else every_n_epochs
        self.max_batch_size = max_batch_size
        self.theta = theta
        self.num_micro_batches = num_micro_batches
        self.min_growth = 1.0 if min_growth is None else float(min_growth)
        self.check_every_n_steps = check_every_n_steps
        self.loss_fn = loss_fn
        self.attr_name = attr_name
        self.log_metrics = log

        if self.mode == "milestones":
            assert milestones is not None
            if not isinstance(milestones, Mapping) or not milestones:
                raise ValueError(
                    f"milestones must be a non-empty {{epoch: batch_size}} mapping, got {milestones!r}"
                )
            for epoch, size in milestones.items():
                if not (_is_int(epoch) and epoch >= 0):
                    raise ValueError(f"milestone epochs must be integers >= 0, got {epoch!r}")
                if not (_is_int(size) and size >= 1):
                    raise ValueError(f"milestone batch sizes must be integers >= 1, got {size!r} at {epoch}")
                if max_batch_size is not None and size > max_batch_size:
                    raise ValueError(f"milestone batch size {size} (epoch {epoch}) exceeds max_batch_size")
            self.milestones = dict(sorted(milestones.items()))
        else:
            if max_batch_size is None:
                raise ValueError(f"max_batch_size is required in the {self.mode!r} mode")
            if self.mode == "geometric" and initial is None:
                raise ValueError("initial is required in the geometric mode")
            if initial is not None and not (_is_int(initial) and 1 <= initial <= max_batch_size):
                raise ValueError(f"initial must be an integer in [1, max_batch_size], got {initial!r}")
        if self.mode == "geometric":
            if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
                raise ValueError(f"factor must be a finite number > 1, got {factor!r}")
            if not (_is_int(self.every_n_epochs) and self.every_n_epochs >= 1):
                raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
        if self.mode == "norm_test":
            if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 0):
                raise ValueError(f"theta must be a finite number > 0, got {theta!r}")
            n = self.num_micro_batches
            if n is not None and not (_is_int(n) and n >= 1):
                raise ValueError(f"num_micro_batches must be an integer >= 1 or None (per sample), got {n!r}")
            if not (math.isfinite(self.min_growth) and self.min_growth >= 1):
                raise ValueError(f"min_growth must be a finite number >= 1, got {min_growth!r}")
            k = check_every_n_steps
            if k is not None and not (_is_int(k) and k >= 1):
                raise ValueError(f"check_every_n_steps must be an integer >= 1 or None, got {k!r}")
            if loss_fn is not None and not callable(loss_fn):
                raise ValueError(f"loss_fn must be callable, got {loss_fn!r}")

        # state
        self.batch_size: int | None = None  # global batch size for epoch `self._epoch`
        self._epoch = 0
        self._proposal: int | None = None
        self.last_result: NormTestResult | None = None
        self._world_size = 1
        self._held_batch: Any = None
        self._held_size = 0
        self._batches = 0
        self._pl_module: pl.LightningModule | None = None

    # ---------------------------------------------------------------- schedule

    def scheduled(self, epoch: int, start: int) -> int:
        """The global batch size of ``epoch`` in modes 1 and 2 (``start``: the size before any milestone)."""
        if self.mode == "milestones":
            size = start
            for e, b in self.milestones.items():
                if e <= epoch:
                    size = b
            return size
        assert self.initial is not None and self.factor is not None and self.max_batch_size is not None
        size = float(self.initial)
        for _ in range(epoch // self.every_n_epochs):
            size *= self.factor
            if size >= self.max_batch_size:
                return self.max_batch_size
        return min(self.max_batch_size, round(size))

    # ---------------------------------------------------------------- fit start

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._pl_module = pl_module
        problems: list[str] = []
        if trainer.reload_dataloaders_every_n_epochs != 1:
            problems.append(
                f"reload_dataloaders_every_n_epochs={trainer.reload_dataloaders_every_n_epochs}: the train "
                "DataLoader must be rebuilt every epoch to pick up a new batch size. Pass "
                "Trainer(reload_dataloaders_every_n_epochs=1)."
            )
        if not lightning_hasattr(pl_module, self.attr_name):
            problems.append(
                f"no attribute {self.attr_name!r} on the DataModule, the LightningModule or their hparams; "
                "store the DataLoader batch size there (read by train_dataloader()) or pass attr_name="
            )
        W = max(1, int(trainer.world_size))
        self._world_size = W
        if self.mode == "norm_test":
            if self.loss_fn is None and not callable(getattr(pl_module, "sqn_loss", None)):
                problems.append(
                    f"the norm test needs the loss of a micro-batch: implement "
                    f"{type(pl_module).__name__}.sqn_loss(batch) -> Tensor (mean loss over the batch) or "
                    "pass BatchSizeScheduler(loss_fn=...)."
                )
            if self.num_micro_batches is not None and self.num_micro_batches * W < 2:
                problems.append(
                    f"num_micro_batches={self.num_micro_batches} on {W} process(es) gives one micro-batch; "
                    "the variance needs at least two (num_micro_batches >= 2, or None for per-sample)."
                )
        sizes = self._fixed_sizes(trainer)
        bad = sorted(s for s in sizes if s % W)
        if bad:
            problems.append(
                f"global batch sizes {bad} are not divisible by the world size {W}; each rank gets "
                "global // world_size samples per batch."
            )
        if problems:
            raise MisconfigurationException(
                "BatchSizeScheduler cannot run with this Trainer:\n- " + "\n- ".join(problems)
            )

    def _fixed_sizes(self, trainer: pl.Trainer) -> set[int]:
        if self.mode == "milestones":
            return set(self.milestones.values())
        assert self.max_batch_size is not None
        if self.mode == "norm_test":
            return {self.max_batch_size} | ({self.initial} if self.initial is not None else set())
        sizes, epoch = set(), 0
        last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        while last is None or epoch < last:
            size = self.scheduled(epoch, 0)
            sizes.add(size)
            if size == self.max_batch_size:
                break
            epoch += self.every_n_epochs
        return sizes

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.batch_size is None:  # fresh run (a resumed one got it from load_state_dict)
            per_rank = lightning_getattr(pl_module, self.attr_name)
            start = int(per_rank) * self._world_size
            if self.mode == "milestones":
                self.batch_size = self.scheduled(0, start)
            else:
                self.batch_size = self.initial if self.initial is not None else start
            self._epoch = 0
            if self.mode == "norm_test":
                assert self.max_batch_size is not None
                if self.batch_size > self.max_batch_size or self.batch_size % self._world_size:
                    raise MisconfigurationException(
                        f"the starting global batch size {self.batch_size} must be <= max_batch_size="
                        f"{self.max_batch_size} and divisible by the world size {self._world_size}"
                    )
        self._apply(pl_module)

    def _apply(self, pl_module: pl.LightningModule) -> None:
        assert self.batch_size is not None
        lightning_setattr(pl_module, self.attr_name, self.batch_size // self._world_size)

    # ---------------------------------------------------------------- epoch loop

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.mode != "norm_test":
            return
        self._batches += 1
        if self.check_every_n_steps is not None:
            if self._batches % self.check_every_n_steps == 0:
                self._consider(self.estimate(pl_module, batch))
            return
        size = _leading_size(batch)
        if size >= self._held_size:  # the last full batch of the epoch, not a short remainder
            self._held_batch, self._held_size = batch, size

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.batch_size is not None
        if self.mode == "norm_test" and self._held_batch is not None:
            self._consider(self.estimate(pl_module, self._held_batch))
        self._held_batch, self._held_size = None, 0
        if self.log_metrics:
            pl_module.log(
                "sqn/batch_size", float(self.batch_size), on_step=False, on_epoch=True, sync_dist=True
            )
            if self.last_result is not None:
                ratio = self.last_result.ratio
                pl_module.log("sqn/variance_ratio", ratio, on_step=False, on_epoch=True, sync_dist=True)
        next_epoch = trainer.current_epoch + 1
        if self.mode == "norm_test":
            if self._proposal is not None:
                self.batch_size = max(self.batch_size, self._proposal)
            self._proposal = None
        else:
            self.batch_size = self.scheduled(next_epoch, self.batch_size)
        self._epoch = next_epoch
        self._apply(pl_module)

    def _consider(self, result: NormTestResult) -> None:
        self.last_result = result
        if not result.passed:
            self._proposal = max(self._proposal or 0, result.proposed)

    # ---------------------------------------------------------------- norm test

    def propose(self, variance: float, grad_norm_sq: float, batch_size: int) -> tuple[bool, int]:
        r"""The norm test on given statistics: ``(passed, next global batch size)``.

        Passes iff :math:`\operatorname{Var}/b \le \theta^2\|g\|^2`; otherwise proposes
        :math:`\lceil\operatorname{Var}/(\theta^2\|g\|^2)\rceil`, at least
        :math:`\lceil \texttt{min\_growth}\cdot b\rceil`, rounded up to a multiple of the world size and
        capped at ``max_batch_size`` (``max_batch_size`` when :math:`g = 0 \ne \operatorname{Var}`).
        """
        assert self.theta is not None and self.max_batch_size is not None
        bound = self.theta**2 * grad_norm_sq
        if variance <= bound * batch_size:
            return True, batch_size
        wanted = math.ceil(variance / bound) if bound > 0 else self.max_batch_size
        wanted = max(wanted, math.ceil(self.min_growth * batch_size))
        W = self._world_size
        wanted = -(-wanted // W) * W
        return False, min(self.max_batch_size, wanted)

    def estimate(self, pl_module: pl.LightningModule, batch: Any) -> NormTestResult:
        """Run the norm test on ``batch`` (this rank's part of the global batch) at the current parameters.

        Collective under ``torch.distributed``: every rank must call it. Leaves parameters, ``.grad``,
        buffers and the RNG state as they were.
        """
        params = [p for p in pl_module.parameters() if p.requires_grad]
        flat = FlatParams(params)
        local = _leading_size(batch)
        chunks = local if self.num_micro_batches is None else min(self.num_micro_batches, local)
        # West's weighted update: W_r = sum m_j, mean_r, M2_r = sum m_j ||g_j - mean_r||^2 (no cancellation)
        mean = flat.new_zeros().double()
        m2 = torch.zeros((), dtype=torch.float64, device=flat.device)
        weight = 0
        for size, grad in self._micro_batch_grads(pl_module, flat, batch, chunks):
            weight += size
            delta = grad - mean
            mean.add_(delta, alpha=size / weight)
            m2 += size * torch.dot(delta, grad - mean)
        W, distributed = _world()
        if distributed and W > 1:
            counts = torch.tensor([float(weight), float(chunks)], dtype=torch.float64, device=flat.device)
            dist.all_reduce(counts)
            g = mean * weight
            dist.all_reduce(g)
            g.div_(counts[0])
            scatter = m2 + weight * torch.sum((mean - g) ** 2)
            dist.all_reduce(scatter)
            total, num = int(counts[0].item()), int(counts[1].item())
        else:
            g, scatter, total, num = mean, m2, weight, chunks
        if num < 2:
            raise ValueError(f"the norm test needs at least two micro-batches, got {num} ({total} samples)")
        variance = float(scatter) / (num - 1)
        grad_norm_sq = float(torch.dot(g, g))
        b = self.batch_size if self.batch_size is not None else total
        passed, proposed = self.propose(variance, grad_norm_sq, b)
        ratio = variance / (b * grad_norm_sq) if grad_norm_sq > 0 else math.inf
        return NormTestResult(variance, grad_norm_sq, total, num, b, ratio, passed, proposed)

    def _micro_batch_grads(
        self, pl_module: pl.LightningModule, flat: FlatParams, batch: Any, chunks: int
    ) -> Iterator[tuple[int, Tensor]]:
        loss_fn = self.loss_fn or (lambda module, b: module.sqn_loss(b))
        trainer = getattr(pl_module, "_trainer", None)
        buffers = [b for b in pl_module.buffers()]
        saved = [b.detach().clone() for b in buffers]
        device = flat.device
        rng = (
            torch.random.fork_rng(devices=[])
            if device.type == "cpu"
            else torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
        )

        def context() -> AbstractContextManager[Any]:
            return trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()

        try:
            with rng, torch.enable_grad():
                for part in _split(batch, chunks):
                    size = _leading_size(part)
                    with context():
                        loss = loss_fn(pl_module, part)
                    if not (isinstance(loss, Tensor) and loss.ndim == 0):
                        raise ValueError(f"the norm-test loss must be a scalar Tensor, got {loss!r}")
                    grads = torch.autograd.grad(loss, flat.params, allow_unused=True)
                    out = flat.new_zeros()
                    for view, grad in zip(flat.views(out), grads, strict=True):
                        if grad is not None:
                            view.copy_(grad)
                    yield size, out.double()
        finally:
            with torch.no_grad():
                for buf, old in zip(buffers, saved, strict=True):
                    buf.copy_(old)

    # ---------------------------------------------------------------- checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "epoch": self._epoch,
            "proposal": self._proposal,
            "batches": self._batches,
            "last_ratio": None if self.last_result is None else self.last_result.ratio,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("mode") != self.mode:
            raise ValueError(
                f"checkpoint holds a {state_dict.get('mode')!r} BatchSizeScheduler, this one is {self.mode!r}"
            )
        self.batch_size = state_dict["batch_size"]
        self._epoch = state_dict["epoch"]
        self._proposal = state_dict["proposal"]
        self._batches = state_dict["batches"]
        if self._pl_module is not None and self.batch_size is not None:
            self._apply(self._pl_module)  # strategies that restore after on_fit_start
