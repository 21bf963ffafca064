"""The DataModule base: train/validation/test tensors on the Trainer's device, batched by
:class:`~lightning_sqn.problems.data.batches.TensorBatches` (see that module for the batching rules)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from lightning_sqn.problems.data.augment import BatchTransform
from lightning_sqn.problems.data.batches import Split, TensorBatches, check_batch_size, mix_seed


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
        eval_train: also evaluate the whole training set (unshuffled, unaugmented, ``eval_batch_size``)
            after every epoch: ``val_dataloader()`` then returns ``[test or validation, training set]``,
            which the recipes' tasks log as ``test/...`` and ``train_set/...``.

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
        eval_train: bool = False,
    ) -> None:
        super().__init__()
        check_batch_size(batch_size, 1)
        if eval_batch_size is not None:
            check_batch_size(eval_batch_size, 1)
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
        if not isinstance(eval_train, bool):
            raise ValueError(f"eval_train must be True or False, got {eval_train!r}")
        self.eval_train = eval_train
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
        self.batch_size = check_batch_size(value, 1) * self.world_size

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
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, 2**31 - 1)))
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
        warns about an empty loader unless ``Trainer(limit_val_batches=0)``). With ``eval_train``: that
        loader and then the whole training set in its order.

        Raises:
            ValueError: ``eval_train`` without a validation or test split (the training set must come
                second, where the tasks expect it).
        """
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        held_out = [self._batches(name, train=False) for name in ("val", "test") if name in self._splits][:1]
        if not self.eval_train:
            return held_out[0] if held_out else []
        if not held_out:
            raise ValueError(f"{type(self).__name__}(eval_train=True) needs a test or validation split")
        return [held_out[0], self._batches("train", train=False)]

    def test_dataloader(self) -> TensorBatches:
        """The test set in its order."""
        return self._batches("test", train=False)


__all__ = ["TensorDataModule"]
