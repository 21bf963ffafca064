r"""DataModules for the paper's problems: whole data sets as tensors on the device, batched by indexing.

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

Data sets (readers take nothing from the network and never write into ``data_dir``):

* :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`: the IDX files in torchvision's layout
  ``<data_dir>/MNIST/raw`` / ``<data_dir>/FashionMNIST/raw`` (gzipped or not).
* :class:`CIFAR10DataModule`: torchvision's ``<data_dir>/cifar-10-batches-py`` pickles, or the 4,000/1,000
  image subset ``<data_dir>/cifar10/{train_first4000,test_first1000}.npz``.
* :class:`DigitsDataModule`: scikit-learn's 8x8 digits (1,797 images), for the demo and tests.
"""

from __future__ import annotations

import gzip
import logging
import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

__all__ = [
    "BatchTransform",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "RandomCropFlip",
    "TensorBatches",
    "TensorDataModule",
    "read_cifar_batch",
    "read_cifar_npz",
    "read_idx",
]

log = logging.getLogger(__name__)

Split = tuple[Tensor, Tensor]
BatchSize = int | Callable[[], int]


def _seed(*parts: int) -> int:
    """A 64-bit seed mixing ``parts`` (NumPy's SeedSequence), so that nearby (seed, epoch) differ well."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 32 | int(words[1])) & 0x7FFFFFFFFFFFFFFF


def _check_batch_size(batch_size: int, world_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (the global batch size), got {batch_size!r}")
    if batch_size % world_size:
        raise ValueError(
            f"the global batch_size {batch_size} is not divisible by the world size {world_size}; each rank "
            f"takes batch_size / world_size examples per step"
        )
    return batch_size


class BatchTransform(Protocol):
    """A random transformation of a whole batch on its device (training augmentation)."""

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Transform ``x`` of shape ``(N, C, H, W)``, drawing random numbers from the CPU ``generator``."""
        ...


class RandomCropFlip:
    """He et al. (2015b), Section 4.2 augmentation, batched: "4 pixels are padded on each side, and a 32x32
    crop is randomly sampled from the padded image or its horizontal flip".

    The offsets and flips are drawn on the CPU from the given generator (``2N`` integers and ``N``
    uniforms per batch) and copied to the batch's device; cropping is one gather.

    Args:
        padding: pixels added on each side.
        fill: value of the padded pixels, a scalar or one per channel (for normalized images the value of a
            black pixel, ``-mean / std``, reproduces padding the raw image with zeros).
        flip: also flip horizontally with probability 1/2.
    """

    def __init__(self, padding: int = 4, fill: float | Sequence[float] = 0.0, flip: bool = True) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding
        self.fill = fill
        self.flip = flip

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        N, C, H, W = x.shape
        p = self.padding
        device = x.device
        fill = torch.as_tensor(self.fill, dtype=x.dtype, device=device).reshape(-1, 1, 1)
        padded = fill.expand(C, H + 2 * p, W + 2 * p).repeat(N, 1, 1, 1)
        padded[:, :, p : p + H, p : p + W] = x
        offsets = torch.randint(0, 2 * p + 1, (2, N), generator=generator).to(device)
        rows = offsets[0, :, None] + torch.arange(H, device=device)
        cols = offsets[1, :, None] + torch.arange(W, device=device)
        if self.flip:
            flips = (torch.rand(N, generator=generator) < 0.5).to(device)
            cols = torch.where(flips[:, None], cols.flip(-1), cols)
        n = torch.arange(N, device=device)[:, None, None, None]
        c = torch.arange(C, device=device)[None, :, None, None]
        return padded[n, c, rows[:, None, :, None], cols[:, None, None, :]]


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
        return _check_batch_size(size, self.world_size)

    @batch_size.setter
    def batch_size(self, value: BatchSize) -> None:
        if not callable(value):
            _check_batch_size(value, self.world_size)
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
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, epoch)))
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
            generator = torch.Generator().manual_seed(_seed(self.seed, epoch, 1, self.rank))
        for start, stop in bounds:
            index = perm[start:stop]
            x, y = self.x[index], self.y[index]
            if self.transform is not None:
                assert generator is not None
                x = self.transform(x, generator)
            yield x, y


class TensorDataModule(LightningDataModule):
    """Train/validation/test tensors, moved to the Trainer's device in ``setup`` and batched by
    :class:`TensorBatches`.

    Subclasses that read files override :meth:`load_splits` (raw tensors on the CPU, e.g. ``uint8``
    images) and :meth:`preprocess` (applied to the inputs once, on the device, e.g. scaling and
    normalization). ``setup`` then takes the subsets, holds out the validation split, moves the tensors to
    ``trainer.strategy.root_device`` (the CPU without a Trainer) and preprocesses them, once; it also sets
    :attr:`rank` and :attr:`world_size` from ``trainer.distributed_sampler_kwargs`` (0 and 1 on one
    device), which the dataloaders shard by.

    ``val_dataloader()`` returns the validation split when there is one (``val`` or ``val_size``) and
    otherwise the *test* set: the paper reports the test error after every epoch, which Lightning's
    validation loop computes. ``test_dataloader()`` always returns the test set.

    Args:
        train: ``(x, y)`` training tensors (``None`` in subclasses that load files).
        test: ``(x, y)`` test tensors, optional.
        val: ``(x, y)`` validation tensors, optional (exclusive with ``val_size``).
        batch_size: the *global* training batch size (the paper's mini-batch size); each of ``W`` ranks
            takes ``batch_size / W`` examples per step. A plain attribute, read at every epoch, so a
            callback may change it between epochs (:attr:`local_batch_size` is its per-rank view;
            :class:`~lightning_sqn.lightning.callbacks.batch_size.BatchSizeScheduler` writes per-rank
            sizes, so give it ``attr_name="local_batch_size"``: the same as ``"batch_size"`` on one
            device, correct under DDP).
        eval_batch_size: global batch size of validation/test (``None``: ``batch_size``).
        val_size: hold out this many training examples (chosen with ``seed``) as the validation split.
        train_subset: keep only the first ``train_subset`` training examples (before ``val_size``).
        test_subset: keep only the first ``test_subset`` test examples.
        shuffle: reshuffle the training set every epoch.
        drop_last: training batches are all full (default; quasi-Newton steps compare losses of one
            batch size). Evaluation always keeps every example.
        seed: seeds the permutations, the validation hold-out and the augmentation.
        dtype: floating dtype of the inputs (and of floating targets).
        train_transform: batched augmentation of training inputs (e.g. :class:`RandomCropFlip`).

    Raises:
        ValueError: on bad subset or split sizes (at ``setup``), and on a batch size not divisible by the
            world size (when a dataloader is built or iterated).
    """

    def __init__(
        self,
        train: Split | None = None,
        test: Split | None = None,
        val: Split | None = None,
        *,
        batch_size: int,
        eval_batch_size: int | None = None,
        val_size: int = 0,
        train_subset: int | None = None,
        test_subset: int | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        train_transform: BatchTransform | None = None,
    ) -> None:
        super().__init__()
        _check_batch_size(batch_size, 1)
        if eval_batch_size is not None:
            _check_batch_size(eval_batch_size, 1)
        if not isinstance(val_size, int) or val_size < 0:
            raise ValueError(f"val_size must be an integer >= 0, got {val_size!r}")
        if val is not None and val_size:
            raise ValueError("pass either val tensors or val_size, not both")
        for name, value in (("train_subset", train_subset), ("test_subset", test_subset)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self._given = {k: v for k, v in (("train", train), ("val", val), ("test", test)) if v is not None}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.dtype = dtype
        self.train_transform = train_transform
        self.rank = 0
        self.world_size = 1
        self._splits: dict[str, Split] | None = None
        self._device: torch.device | None = None

    # ------------------------------------------------------------------ hooks for subclasses

    def load_splits(self) -> dict[str, Split]:
        """The raw splits on the CPU: ``"train"`` (required), optional ``"test"`` and ``"val"``."""
        if "train" not in self._given:
            raise ValueError(f"{type(self).__name__}: no training tensors (pass train=(x, y))")
        return dict(self._given)

    def preprocess(self, x: Tensor) -> Tensor:
        """Inputs as the model sees them, computed once on the device: cast to :attr:`dtype`."""
        return x.to(self.dtype)

    # ------------------------------------------------------------------ setup

    @property
    def local_batch_size(self) -> int:
        """``batch_size // world_size``; setting it sets ``batch_size = value * world_size`` (for callbacks
        that write per-rank batch sizes, such as ``BatchSizeScheduler(attr_name="local_batch_size")``)."""
        return self.batch_size // self.world_size

    @local_batch_size.setter
    def local_batch_size(self, value: int) -> None:
        self.batch_size = _check_batch_size(value, 1) * self.world_size

    def setup(self, stage: str | None = None) -> None:
        """Load (first call only), move to the Trainer's device (when it changed) and read rank and world
        size from the Trainer."""
        device = torch.device("cpu")
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            kwargs = self.trainer.distributed_sampler_kwargs
            if kwargs:
                self.rank, self.world_size = int(kwargs["rank"]), int(kwargs["num_replicas"])
        if self._splits is None:
            splits = self._select(self.load_splits())
            self._splits = {
                name: (self.preprocess(x.to(device)), self._targets(y.to(device)))
                for name, (x, y) in splits.items()
            }
            self._device = device
        elif self._device != device:
            self._splits = {name: (x.to(device), y.to(device)) for name, (x, y) in self._splits.items()}
            self._device = device

    def _targets(self, y: Tensor) -> Tensor:
        return y.to(self.dtype) if y.is_floating_point() else y

    def _select(self, splits: dict[str, Split]) -> dict[str, Split]:
        """Subsets and validation hold-out on the raw (CPU) splits."""
        splits = dict(splits)
        if "train" not in splits:
            raise ValueError(f"{type(self).__name__}.load_splits() returned no 'train' split")
        for name, subset in (("train", self.train_subset), ("test", self.test_subset)):
            if subset is not None and name in splits:
                x, y = splits[name]
                if subset > x.shape[0]:
                    raise ValueError(f"{name}_subset={subset} exceeds the {x.shape[0]} {name} examples")
                splits[name] = (x[:subset], y[:subset])
        if self.val_size:
            if "val" in splits:
                raise ValueError(f"{type(self).__name__} has a validation split already; use val_size=0")
            x, y = splits["train"]
            n = x.shape[0]
            if self.val_size >= n:
                raise ValueError(f"val_size={self.val_size} must be smaller than the {n} training examples")
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, 2**31 - 1)))
            held, kept = perm[: self.val_size].sort().values, perm[self.val_size :].sort().values
            splits["val"], splits["train"] = (x[held], y[held]), (x[kept], y[kept])
        return splits

    def split(self, name: str) -> Split:
        """The preprocessed ``(x, y)`` of ``"train"``, ``"val"`` or ``"test"`` (calls ``setup()`` first)."""
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        if name not in self._splits:
            raise KeyError(f"{type(self).__name__} has no {name!r} split (has {sorted(self._splits)})")
        return self._splits[name]

    # ------------------------------------------------------------------ dataloaders

    def _train_batch_size(self) -> int:
        return self.batch_size

    def _eval_batch_size(self) -> int:
        return self.batch_size if self.eval_batch_size is None else self.eval_batch_size

    def _batches(self, name: str, train: bool) -> TensorBatches:
        x, y = self.split(name)
        return TensorBatches(
            x,
            y,
            self._train_batch_size if train else self._eval_batch_size,
            shuffle=self.shuffle if train else False,
            drop_last=self.drop_last if train else False,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            transform=self.train_transform if train else None,
        )

    def train_dataloader(self) -> TensorBatches:
        """Shuffled training batches of the global size :attr:`batch_size` (read every epoch)."""
        return self._batches("train", train=True)

    def val_dataloader(self) -> TensorBatches | list[Any]:
        """The validation split if there is one, else the test set; ``[]`` without either (Lightning then
        warns about an empty loader unless ``Trainer(limit_val_batches=0)``)."""
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        for name in ("val", "test"):
            if name in self._splits:
                return self._batches(name, train=False)
        return []

    def test_dataloader(self) -> TensorBatches:
        """The test set in its order."""
        return self._batches("test", train=False)


# ---------------------------------------------------------------------- file readers

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; gzipped when the name ends in ``.gz``).

    The header is two zero bytes, a type code (``0x08`` unsigned byte, ...), the number of dimensions
    ``d`` and ``d`` big-endian uint32 sizes; the data follow in C order, big-endian.

    Returns:
        A new array of the stored shape and dtype (in native byte order).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    offset = 4 + 4 * ndim
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says shape {shape} ({count} items), file has {len(data) - offset} bytes"
        )
    return (
        np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch of the CIFAR-10 python version (a pickled dict with ``data`` ``N x 3072`` uint8, rows
    laid out as 1024 red, 1024 green, 1024 blue values of a 32x32 image, and ``labels``).

    Returns:
        images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64.
    """
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: {images.shape[0]} images but labels of shape {labels.shape}")
    return images, labels


def read_cifar_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.npz`` with ``images`` (uint8, ``N x 32 x 32 x 3``, NHWC, RGB) and ``labels``.

    Returns:
        images ``(N, 3, 32, 32)`` uint8 (NCHW, contiguous) and labels ``(N,)`` int64.
    """
    with np.load(path, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{path}: images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: {images.shape[0]} images but labels of shape {labels.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64)


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(array if array.flags.writeable else array.copy())


@rank_zero_only
def _warn(message: str) -> None:
    log.warning(message)


class _ImageDataModule(TensorDataModule):
    """uint8 images scaled to [0, 1] and normalized per channel, ``(x / 255 - mean) / std``."""

    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]

    def __init__(
        self, data_dir: str | Path, batch_size: int, *, download: bool, normalize: bool, **kwargs: Any
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.data_dir = Path(data_dir)
        self.download = download
        self.normalize = normalize

    def preprocess(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype) / 255
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=self.dtype, device=x.device).reshape(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=self.dtype, device=x.device).reshape(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def files_present(self) -> bool:
        """Whether the complete data set is in ``data_dir`` (else ``download=True`` fetches it)."""
        raise NotImplementedError

    def fetch(self) -> None:
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Download into ``data_dir`` with torchvision when ``download=True`` and the files are missing."""
        if self.download and not self.files_present():
            self.fetch()

    def load_splits(self) -> dict[str, Split]:
        if not self.files_present() and self.download:
            self.fetch()
        return self.read()

    def read(self) -> dict[str, Split]:
        raise NotImplementedError


class MNISTDataModule(_ImageDataModule):
    """MNIST (60,000 train / 10,000 test 28x28 grey images) from its IDX files.

    Reads ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each file uncompressed or
    with ``.gz`` (read directly; nothing is extracted or written). Inputs ``(N, 1, 28, 28)`` in
    :attr:`dtype`, labels int64. The paper does not state its preprocessing; with ``normalize=True``
    (default) inputs are ``(x / 255 - 0.1307) / 0.3081``, the usual MNIST training-set mean and standard
    deviation; with ``normalize=False`` they are ``x / 255`` in [0, 1].

    Args:
        data_dir: the root holding ``MNIST/raw`` (torchvision's layout).
        batch_size: global training batch size (Section 4.1.1: 20 first order, 400 L-SR1/L-BFGS).
        download: when the files are missing, fetch them with ``torchvision.datasets.MNIST(data_dir,
            download=True)`` (in ``prepare_data``, or at ``setup`` without a Trainer). This writes into
            ``data_dir``.
        normalize: subtract the mean and divide by the standard deviation.
        **kwargs: the options of :class:`TensorDataModule` (``eval_batch_size``, ``val_size``,
            ``train_subset``, ``test_subset``, ``shuffle``, ``drop_last``, ``seed``, ``dtype``, ...).

    Raises:
        FileNotFoundError: at ``setup`` when files are missing and ``download=False``.
    """

    folder: ClassVar[str] = "MNIST"
    mean: ClassVar[tuple[float, ...]] = (0.1307,)
    std: ClassVar[tuple[float, ...]] = (0.3081,)

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int,
        *,
        download: bool = False,
        normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, batch_size, download=download, normalize=normalize, **kwargs)

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / self.folder / "raw"

    def _path(self, stem: str) -> Path | None:
        for name in (stem, stem + ".gz"):
            if (self.raw_dir / name).is_file():
                return self.raw_dir / name
        return None

    _STEMS: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def files_present(self) -> bool:
        return all(self._path(stem) is not None for stems in self._STEMS.values() for stem in stems)

    def fetch(self) -> None:
        import torchvision

        dataset = getattr(torchvision.datasets, type(self).folder)
        for train in (True, False):
            dataset(root=str(self.data_dir), train=train, download=True)

    def read(self) -> dict[str, Split]:
        missing = [stem for stems in self._STEMS.values() for stem in stems if self._path(stem) is None]
        if missing:
            expected = ", ".join(str(self.raw_dir / f"{stem}[.gz]") for stem in missing)
            raise FileNotFoundError(
                f"{type(self).__name__}: missing {expected}. Put the IDX files there (gzipped or not) or "
                f"pass download=True to fetch them with "
                f"torchvision.datasets.{self.folder}(root={str(self.data_dir)!r}, download=True)."
            )
        splits = {}
        for name, (images_stem, labels_stem) in self._STEMS.items():
            images, labels = read_idx(self._path(images_stem)), read_idx(self._path(labels_stem))  # type: ignore[arg-type]
            if images.ndim != 3 or labels.shape != (images.shape[0],):
                raise ValueError(f"{self.raw_dir}: {name} images {images.shape} and labels {labels.shape}")
            splits[name] = (_tensor(images)[:, None], _tensor(labels).long())
        return splits


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST, in the format and layout of :class:`MNISTDataModule` (``<data_dir>/FashionMNIST/raw``).

    With ``normalize=True`` inputs are ``(x / 255 - 0.2860) / 0.3530``, the training-set mean and standard
    deviation.
    """

    folder: ClassVar[str] = "FashionMNIST"
    mean: ClassVar[tuple[float, ...]] = (0.2860,)
    std: ClassVar[tuple[float, ...]] = (0.3530,)


class CIFAR10DataModule(_ImageDataModule):
    """CIFAR-10 (50,000 train / 10,000 test 32x32 RGB images).

    Reads torchvision's layout ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (the python
    pickles) or, when that folder is absent, the subset ``<data_dir>/cifar10/train_first4000.npz`` and
    ``test_first1000.npz`` (the first 4,000 training and 1,000 test images; a warning is logged). Inputs
    ``(N, 3, 32, 32)`` in :attr:`dtype`, labels int64. With ``download=True`` the full set is fetched
    unless its folder is there. With ``normalize=True`` (default; the paper states
    no preprocessing) each channel is ``(x / 255 - mean) / std`` with the training-set statistics
    mean (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616).

    Args:
        data_dir: the root holding ``cifar-10-batches-py`` or ``cifar10/*.npz``.
        batch_size: global training batch size (Section 4.1.2: 96 first order, 400 second order;
            Section 4.2: 128).
        download: when neither layout is there, fetch the full set with
            ``torchvision.datasets.CIFAR10(data_dir, download=True)``. This writes into ``data_dir``.
        normalize: per-channel normalization.
        augment: random 32x32 crops of the 4-pixel zero-padded image and horizontal flips on the training
            batches (He et al. 2015b, for the ResNet; :class:`RandomCropFlip`), batched on the device.
            Default off (the LeNet experiments use none).
        **kwargs: the options of :class:`TensorDataModule`.

    Raises:
        FileNotFoundError: at ``setup`` when neither layout is there and ``download=False``.
    """

    mean: ClassVar[tuple[float, ...]] = (0.4914, 0.4822, 0.4465)
    std: ClassVar[tuple[float, ...]] = (0.2470, 0.2435, 0.2616)
    TRAIN_BATCHES: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int,
        *,
        download: bool = False,
        normalize: bool = True,
        augment: bool = False,
        **kwargs: Any,
    ) -> None:
        if augment:
            if kwargs.get("train_transform") is not None:
                raise ValueError("pass either augment=True or train_transform, not both")
            fill = [-m / s for m, s in zip(self.mean, self.std, strict=True)] if normalize else 0.0
            kwargs["train_transform"] = RandomCropFlip(padding=4, fill=fill)
        super().__init__(data_dir, batch_size, download=download, normalize=normalize, **kwargs)
        self.augment = augment

    @property
    def batches_dir(self) -> Path:
        return self.data_dir / "cifar-10-batches-py"

    @property
    def subset_files(self) -> tuple[Path, Path]:
        return (
            self.data_dir / "cifar10" / "train_first4000.npz",
            self.data_dir / "cifar10" / "test_first1000.npz",
        )

    def _full_present(self) -> bool:
        return all((self.batches_dir / name).is_file() for name in (*self.TRAIN_BATCHES, "test_batch"))

    def files_present(self) -> bool:
        return self._full_present()  # with download=True the full set is fetched even if the subset is there

    def fetch(self) -> None:
        import torchvision

        for train in (True, False):
            torchvision.datasets.CIFAR10(root=str(self.data_dir), train=train, download=True)

    def read(self) -> dict[str, Split]:
        if self._full_present():
            parts = [read_cifar_batch(self.batches_dir / name) for name in self.TRAIN_BATCHES]
            train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            test = read_cifar_batch(self.batches_dir / "test_batch")
        elif all(p.is_file() for p in self.subset_files):
            train, test = (read_cifar_npz(p) for p in self.subset_files)
            _warn(
                f"CIFAR10DataModule: {self.batches_dir} not found, using the SUBSET in "
                f"{self.subset_files[0].parent} ({train[0].shape[0]} train / {test[0].shape[0]} test images, "
                "not the full 50,000 / 10,000); results are not comparable with the paper's."
            )
        else:
            raise FileNotFoundError(
                f"CIFAR10DataModule: found neither {self.batches_dir}/{{data_batch_1..5,test_batch}} nor "
                f"{self.subset_files[0]} and {self.subset_files[1]}. Pass download=True to fetch the full "
                f"set with torchvision.datasets.CIFAR10(root={str(self.data_dir)!r}, download=True)."
            )
        return {"train": (_tensor(train[0]), _tensor(train[1])), "test": (_tensor(test[0]), _tensor(test[1]))}


class DigitsDataModule(TensorDataModule):
    """scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``: 1,797 images, 10 classes),
    for the demo and tests.

    Inputs ``(N, 1, 8, 8)``: the 0..16 grey levels divided by 16, so in [0, 1]; labels int64. A fixed
    split: a permutation seeded by ``split_seed`` puts ``test_size`` images (default 360, so 1,437/360) in
    the test set, the rest in the training set.

    Args:
        batch_size: global training batch size.
        test_size: number of test images.
        split_seed: seed of the train/test split (independent of ``seed``, which shuffles batches).
        **kwargs: the options of :class:`TensorDataModule`.
    """

    NUM_IMAGES: ClassVar[int] = 1797

    def __init__(self, batch_size: int, *, test_size: int = 360, split_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        if not isinstance(test_size, int) or not 0 < test_size < self.NUM_IMAGES:
            raise ValueError(f"test_size must be an integer in (0, {self.NUM_IMAGES}), got {test_size!r}")
        self.test_size = test_size
        self.split_seed = split_seed

    def load_splits(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.from_numpy(digits.images / 16.0)[:, None]
        y = torch.from_numpy(digits.target).long()
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.split_seed))
        test, train = perm[: self.test_size], perm[self.test_size :]
        return {"train": (x[train], y[train]), "test": (x[test], y[test])}
