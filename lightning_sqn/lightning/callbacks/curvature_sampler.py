"""Refresh an L-SR1 / L-BFGS memory every L steps from pairs sampled on a separate curvature batch.

Byrd, Hansen, Nocedal & Singer (2016, "A stochastic quasi-Newton method for large-scale
optimization") estimate curvature at intervals, on a sample of its own, rather than from the noisy
differences of consecutive mini-batch gradients. :class:`CurvaturePairSampler` does this with the
pairs of the sampled quasi-Newton methods (Berahas, Jahani & Takáč,
:mod:`~lightning_sqn.curvature.sampling`): every ``every_n_steps`` optimizer steps it forgets the
optimizer's memory and loads m pairs sampled around the current parameters, with Y = H S (option II)
or gradient differences (option I) of the loss on a curvature batch drawn from the training data.
Between refreshes the optimizer keeps updating its memory with its own pairs as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from torch import Tensor

from lightning_sqn.curvature.graph import GradientGraph
from lightning_sqn.curvature.sampling import DirectionSampler, Sampling, check_sampling, sample_pairs
from lightning_sqn.lightning.callbacks._utils import _unwrap, log_to_loggers
from lightning_sqn.optim.lbfgs import LBFGS
from lightning_sqn.optim.lsr1 import LSR1
from lightning_sqn.optim.running_stats import running_stat_buffers

if TYPE_CHECKING:
    import lightning.pytorch as pl

LossFn = Callable[["pl.LightningModule", Any], Tensor]


def _training_step_loss(module: pl.LightningModule, batch: Any) -> Tensor:
    """The module's ``training_step`` loss, with its ``self.log`` calls silenced."""
    saved = module.__dict__.get("log"), module.__dict__.get("log_dict")
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        out = module.training_step(batch, 0)
    finally:
        for name, value in zip(("log", "log_dict"), saved, strict=True):
            if value is None:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, value)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, Tensor):
        raise MisconfigurationException(
            "CurvaturePairSampler evaluates training_step on its curvature batch and needs the loss "
            f"tensor back (or a dict with 'loss'), got {type(out).__name__}; pass loss_fn= instead."
        )
    return loss


class CurvaturePairSampler(Callback):
    """Every ``every_n_steps`` steps, replace the optimizer's pairs by pairs sampled on a curvature batch.

    Args:
        every_n_steps: L, optimizer steps between refreshes (the first refresh is before step 0).
        num_pairs: m, pairs sampled per refresh (default: the optimizer's ``memory``; at most that).
        sample_radius: r, length of each sampled direction.
        sampling: ``"hessian"`` (option II, Y = H S, one batched block of Hessian-vector products) or
            ``"gradient"`` (option I, m extra gradients at the sampled points).
        batch_size: global size of the curvature batch, drawn uniformly without replacement from the
            training set (split over the ranks under ``ddp_sqn``); ``None``: the training batch size.
        dataloader: an iterable of curvature batches to cycle through instead (per rank, already on
            the rank's shard); overrides ``batch_size``.
        loss_fn: ``(pl_module, batch) -> loss``; default: the module's ``training_step`` with logging
            silenced.
        seed: seed of the directions and of the batch draws (``None``: from the global generator;
            identical on all ranks either way).
        optimizer_index: which of the Trainer's optimizers to refresh.

    The curvature batch is evaluated on the unwrapped LightningModule in its current (training) mode;
    BatchNorm running statistics are restored afterwards, so the extra forward passes leave no trace.
    Under several ranks each rank evaluates its share and the products (or gradients) are averaged
    through the optimizer's communicator, which ``strategy="ddp_sqn"`` installs.

    Logged (to the Trainer's loggers, at each refresh): ``curvature_sampler/pairs_kept`` and
    ``curvature_sampler/hessian_products``.

    Raises:
        ValueError: for a bad argument.
        MisconfigurationException: if the optimizer is not :class:`~lightning_sqn.LSR1` or
            :class:`~lightning_sqn.LBFGS`, ``num_pairs`` exceeds its memory, or no curvature batch can
            be drawn from the training data.

    Example::

        trainer = Trainer(strategy="ddp_sqn", devices=2,
                          callbacks=[CurvaturePairSampler(every_n_steps=20, sample_radius=0.1)])
    """

    def __init__(
        self,
        every_n_steps: int,
        num_pairs: int | None = None,
        sample_radius: float = 1.0,
        sampling: Sampling = "hessian",
        batch_size: int | None = None,
        dataloader: Iterable[Any] | None = None,
        loss_fn: LossFn | None = None,
        seed: int | None = None,
        optimizer_index: int = 0,
    ) -> None:
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        check_sampling(1 if num_pairs is None else num_pairs, sample_radius, sampling)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        self.every_n_steps = every_n_steps
        self.num_pairs = num_pairs
        self.sample_radius = float(sample_radius)
        self.sampling = sampling
        self.batch_size = batch_size
        self.dataloader = dataloader
        self.loss_fn = loss_fn or _training_step_loss
        self.seed = seed
        self.optimizer_index = optimizer_index
        self.refreshes = 0
        self._sampler: DirectionSampler | None = None
        self._batch_generator = torch.Generator()
        self._iterator: Iterator[Any] | None = None
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ set-up
    def _optimizer(self, trainer: pl.Trainer) -> LSR1 | LBFGS:
        optimizers = [_unwrap(o) for o in trainer.optimizers]
        if self.optimizer_index >= len(optimizers):
            raise MisconfigurationException(
                f"CurvaturePairSampler(optimizer_index={self.optimizer_index}) but the Trainer has "
                f"{len(optimizers)} optimizer(s)"
            )
        opt = optimizers[self.optimizer_index]
        if not isinstance(opt, (LSR1, LBFGS)):
            raise MisconfigurationException(
                "CurvaturePairSampler refreshes the pair memory of lightning_sqn.LSR1 or LBFGS, got "
                f"{type(opt).__name__}. (SampledLSR1 and SampledLBFGS sample their own pairs at every step.)"
            )
        return opt

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opt = self._optimizer(trainer)
        memory = opt.matrix.m
        m = memory if self.num_pairs is None else self.num_pairs
        if m > memory:
            raise MisconfigurationException(
                f"CurvaturePairSampler(num_pairs={m}) exceeds the optimizer's memory={memory}; the "
                "memory keeps only its newest pairs. Use num_pairs <= memory."
            )
        self._sampler = DirectionSampler(m, self.sample_radius, opt.evaluation.flat.device, self.seed)
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self._batch_generator.manual_seed(seed)
        if self._pending_state is not None:
            self._load(self._pending_state)
            self._pending_state = None

    # ------------------------------------------------------------------ the curvature batch
    def _draw_batch(self, trainer: pl.Trainer, train_batch: Any) -> Any:
        if self.dataloader is not None:
            if self._iterator is None:
                self._iterator = iter(self.dataloader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = iter(self.dataloader)
                batch = next(self._iterator)
            return trainer.strategy.batch_to_device(batch)
        loader = trainer.train_dataloader
        world, rank = trainer.world_size, trainer.global_rank
        size = self.batch_size or _batch_len(train_batch) * world
        if size % world:
            raise MisconfigurationException(
                f"CurvaturePairSampler(batch_size={size}) must be divisible by the {world} ranks"
            )
        x, y = getattr(loader, "x", None), getattr(loader, "y", None)
        if isinstance(x, Tensor) and isinstance(y, Tensor):  # lightning_sqn.problems.TensorBatches
            n = x.shape[0]
            idx = self._indices(n, size)[rank::world].to(x.device)
            return (x[idx], y[idx])
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
            idx = self._indices(len(dataset), size)[rank::world]
            collate = getattr(loader, "collate_fn", None) or torch.utils.data.default_collate
            return trainer.strategy.batch_to_device(collate([dataset[int(i)] for i in idx]))
        raise MisconfigurationException(
            "CurvaturePairSampler cannot draw a curvature batch from the training dataloader "
            f"({type(loader).__name__}: neither tensors x/y nor a map-style dataset); pass dataloader=."
        )

    def _indices(self, n: int, size: int) -> Tensor:
        if size > n:
            raise MisconfigurationException(
                f"CurvaturePairSampler(batch_size={size}) exceeds the {n} training examples"
            )
        return torch.randperm(n, generator=self._batch_generator)[:size]

    # ------------------------------------------------------------------ refresh
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        opt = self._optimizer(trainer)
        assert self._sampler is not None
        curvature_batch = self._draw_batch(trainer, batch)
        flat = opt.evaluation.flat
        params = flat.params
        buffers = running_stat_buffers(pl_module)
        saved = [b.detach().clone() for b in buffers]
        x = flat.gather_params()
        comm = opt.communicator
        try:
            with torch.enable_grad():
                loss = self.loss_fn(pl_module, curvature_batch)
                grads = torch.autograd.grad(
                    loss, params, create_graph=self.sampling == "hessian", allow_unused=True
                )

            def gradient_at(sigma: Tensor) -> Tensor:
                flat.set_params(torch.add(x, sigma))
                with torch.enable_grad():
                    loss_i = self.loss_fn(pl_module, curvature_batch)
                    g_i = torch.autograd.grad(loss_i, params, allow_unused=True)
                return self._flat_grad(opt, g_i)

            S, Y = sample_pairs(
                self._sampler,
                flat,
                self.sampling,
                x,
                communicator=comm,
                mask=_mask(flat, grads),
                hvp=GradientGraph(grads, params, comm).hvp if self.sampling == "hessian" else None,
                gradient_at=gradient_at if self.sampling == "gradient" else None,
                g=self._flat_grad(opt, grads) if self.sampling == "gradient" else None,
            )
        finally:
            flat.set_params(x)
            if buffers:
                torch._foreach_copy_(buffers, saved)
        kept = opt.load_pairs(S, Y)
        self.refreshes += 1
        products = S.shape[0] if self.sampling == "hessian" else 0
        log_to_loggers(
            trainer,
            {
                "curvature_sampler/pairs_kept": float(kept),
                "curvature_sampler/hessian_products": float(products),
            },
        )

    @staticmethod
    def _flat_grad(opt: LSR1 | LBFGS, grads: tuple[Tensor | None, ...]) -> Tensor:
        g = opt.evaluation.flat.flatten(grads)
        return g if opt.communicator is None else opt.communicator.all_reduce_mean(g)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "refreshes": self.refreshes,
            "batch_generator": self._batch_generator.get_state(),
            "sampler": None if self._sampler is None else self._sampler.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the direction sampler exists once the optimizer does (on_fit_start): load it there
        self._pending_state = dict(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        self.refreshes = int(state["refreshes"])
        self._batch_generator.set_state(state["batch_generator"])
        if state["sampler"] is not None and self._sampler is not None:
            self._sampler.load_state_dict(state["sampler"])


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_len(next(iter(batch.values())))
    raise MisconfigurationException(
        "CurvaturePairSampler cannot tell the training batch size; pass batch_size= or dataloader="
    )


def _mask(flat: Any, grads: tuple[Tensor | None, ...]) -> Tensor | None:
    """Sample only on parameters the curvature loss depends on."""
    if all(g is not None for g in grads):
        return None
    return flat.flatten(
        [torch.ones_like(p) if g is not None else None for p, g in zip(flat.params, grads, strict=True)]
    )


__all__ = ["CurvaturePairSampler"]
