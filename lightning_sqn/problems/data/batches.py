r"""Mini-batches over whole data sets already on the device, drawn by indexing (no per-sample ``DataLoader``).

The data sets of Ramamurthy & Duffy (2017) are small enough to live on the accelerator, and the
quasi-Newton optimizers evaluate several closures per step on one fixed mini-batch, so there is no
per-sample ``DataLoader`` here: :class:`TensorDataModule` moves the tensors to the Trainer's device once in
``setup`` and its dataloaders are :class:`TensorBatches`, which yield ``(x, y)`` by indexing the device
tensors with a seeded per-epoch permutation.

Batching (:class:`TensorBatches`), with :math:`n` examples, global batch size :math:`B` (the paper's
mini-batch size) and :math:`W` ranks:

* epoch :math:`e` permutes :math:`0..n-1` with a generator seeded by ``(seed, e)`` (identity order
  without shuffling); every rank draws the same permutation;
* global batch :math:`k` is the slice :math:`[kB, (k+1)B)` of the permutation and rank :math:`r` takes
  the contiguous part :math:`[kB + rB/W,\ kB + (r+1)B/W)` of it, so the union over ranks of step
  :math:`k` is the same global batch whatever :math:`W` is (a DDP run sees the batches of a single-device
  run);
* ``drop_last=True`` (training default) keeps :math:`\lfloor n/B\rfloor` full batches, so every step has
  the same batch size; ``drop_last=False`` (evaluation) keeps all :math:`\lceil n/B\rceil`, and when
  :math:`W \nmid n` the permutation is padded with its first :math:`(-n) \bmod W` entries (as
  ``DistributedSampler`` does) so that every rank gets the same number of batches of the same size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from lightning_sqn.problems.data.augment import BatchTransform

Split = tuple[Tensor, Tensor]
BatchSize = int | Callable[[], int]


def mix_seed(*parts: int) -> int:
    """A 64-bit seed mixing ``parts`` (NumPy's SeedSequence), so that nearby (seed, epoch) differ well."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 32 | int(words[1])) & 0x7FFFFFFFFFFFFFFF


def check_batch_size(batch_size: int, world_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (the global batch size), got {batch_size!r}")
    if batch_size % world_size:
        raise ValueError(
            f"the global batch_size {batch_size} is not divisible by the world size {world_size}; each rank "
            f"takes batch_size / world_size examples per step"
        )
    return batch_size


class TensorBatches:
    """The mini-batches of one rank over tensors already on their device (see the module docstring).

    Each iteration is one epoch: when its first batch is drawn it reads :attr:`epoch` and
    :attr:`batch_size` and advances :attr:`epoch` (an iterator that is never consumed changes nothing).
    Lightning calls :meth:`set_epoch` with its epoch counter before every epoch (it looks for
    ``dataloader.sampler.set_epoch``; :attr:`sampler` is this object), so permutations follow the
    Trainer's epochs, also after resuming from a checkpoint or rebuilding the dataloader.

    Args:
        x: inputs, first dimension the examples.
        y: targets, same first dimension.
        batch_size: the global batch size, or a callable returning it (read at every ``iter()`` and
            ``len()``, so that it may change between epochs). Must be divisible by ``world_size``.
        shuffle: permute every epoch; otherwise the examples keep their order.
        drop_last: only full global batches (training); else a last, smaller one too (evaluation).
        seed: the permutation of epoch ``e`` depends on ``(seed, e)`` only.
        rank: this process's rank.
        world_size: number of processes sharing the batches.
        transform: applied to every input batch on the device, with a generator seeded by
            ``(seed, epoch, rank)``.

    Example:
        >>> x, y = torch.arange(10.0)[:, None], torch.arange(10)
        >>> batches = TensorBatches(x, y, batch_size=4, shuffle=False, drop_last=False)
        >>> [yb.tolist() for _, yb in batches]
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: BatchSize,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        transform: BatchTransform | None = None,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}"
            )
        if x.shape[0] == 0:
            raise ValueError("no examples to batch")
        if x.device != y.device:
            raise ValueError(f"x and y must be on one device, got {x.device} and {y.device}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
        self.x = x
        self.y = y
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.transform = transform
        self.epoch = 0
        self.batch_sampler = None  # Lightning inspects it on evaluation dataloaders
        self._batch_size = batch_size
        _ = self.batch_size  # validate now

    @property
    def batch_size(self) -> int:
        """The current global batch size (validated against the world size)."""
        size = self._batch_size() if callable(self._batch_size) else self._batch_size
        return check_batch_size(size, self.world_size)

    @batch_size.setter
    def batch_size(self, value: BatchSize) -> None:
        if not callable(value):
            check_batch_size(value, self.world_size)
        self._batch_size = value

    @property
    def local_batch_size(self) -> int:
        """Examples per batch on this rank: ``batch_size // world_size`` (the last batch may be smaller
        with ``drop_last=False``)."""
        return self.batch_size // self.world_size

    @property
    def sampler(self) -> TensorBatches:
        """This object: Lightning's ``dataloader.sampler.set_epoch(epoch)`` reaches :meth:`set_epoch`."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` at the next ``iter()``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, B = self.x.shape[0], self.batch_size
        return n // B if self.drop_last else math.ceil(n / B)

    def _plan(self, epoch: int, B: int) -> tuple[Tensor, list[tuple[int, int]]]:
        """The epoch's (padded) permutation on the CPU and this rank's ``[start, stop)`` slices of it."""
        n, W, r = self.x.shape[0], self.world_size, self.rank
        if self.shuffle:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        else:
            perm = torch.arange(n)
        if self.drop_last:
            if n < B:
                raise ValueError(f"drop_last=True with batch_size {B} > {n} examples leaves no batch")
            b = B // W
            return perm, [(k * B + r * b, k * B + (r + 1) * b) for k in range(n // B)]
        pad = (-n) % W
        if pad:  # as DistributedSampler: repeat the first entries so every rank gets as many
            perm = torch.cat([perm, perm.repeat(math.ceil(pad / n))[:pad]])
        total = perm.numel()
        bounds = []
        for start in range(0, total, B):
            share = min(B, total - start) // W
            bounds.append((start + r * share, start + (r + 1) * share))
        return perm, bounds

    def indices(self, epoch: int | None = None) -> list[Tensor]:
        """This rank's example indices (CPU) of every batch of ``epoch`` (default: the next one)."""
        perm, bounds = self._plan(self.epoch if epoch is None else epoch, self.batch_size)
        return [perm[start:stop] for start, stop in bounds]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # The epoch and batch size are read, and the epoch advanced, when the first batch is drawn: Lightning
        # creates iterators it never consumes (to check iterability) and the first epoch's iterator before
        # it calls set_epoch(0).
        epoch, B = self.epoch, self.batch_size
        self.epoch += 1
        perm, bounds = self._plan(epoch, B)
        perm = perm.to(self.x.device)
        generator = None
        if self.transform is not None:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 1, self.rank))
        for start, stop in bounds:
            index = perm[start:stop]
            x, y = self.x[index], self.y[index]
            if self.transform is not None:
                assert generator is not None
                x = self.transform(x, generator)
            yield x, y


__all__ = ["BatchSize", "Split", "TensorBatches", "check_batch_size", "mix_seed"]
