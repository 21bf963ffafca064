"""The data sets of the papers' experiments as
:class:`~lightning_sqn.problems.data.datamodule.TensorDataModule` subclasses: MNIST, Fashion-MNIST and
CIFAR-10 (files in torchvision's root layout, read through torchvision,
:mod:`~lightning_sqn.problems.data.files`) and scikit-learn's 8x8 digits (the demo and tests)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from lightning_sqn.problems.data.augment import RandomCropFlip
from lightning_sqn.problems.data.batches import Split
from lightning_sqn.problems.data.datamodule import TensorDataModule
from lightning_sqn.problems.data.files import idx_files_present, read_cifar10, read_cifar_npz, read_mnist

log = logging.getLogger(__name__)


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
    """MNIST (60,000 train / 10,000 test 28x28 grey images) through ``torchvision.datasets.MNIST``.

    Reads ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each file uncompressed or
    with ``.gz`` (gzipped files are extracted into a cache folder, see
    :func:`~lightning_sqn.problems.data.files.read_mnist`; nothing is written into ``data_dir``). Inputs
    ``(N, 1, 28, 28)`` in :attr:`dtype`, labels int64. The paper does not state its preprocessing; with
    ``normalize=True`` (default) inputs are ``(x / 255 - 0.1307) / 0.3081``, the usual MNIST training-set
    mean and standard deviation; with ``normalize=False`` they are ``x / 255`` in [0, 1].

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

    def files_present(self) -> bool:
        return idx_files_present(self.raw_dir)

    def fetch(self) -> None:
        import torchvision

        dataset = getattr(torchvision.datasets, type(self).folder)
        for train in (True, False):
            dataset(root=str(self.data_dir), train=train, download=True)

    def read(self) -> dict[str, Split]:
        try:
            return read_mnist(self.data_dir, self.folder)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{type(self).__name__}: {err}") from None


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

    Reads torchvision's layout
    ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` through
    ``torchvision.datasets.CIFAR10`` (which checks the files' MD5 sums) or, when that folder is absent,
    the subset ``<data_dir>/cifar10/train_first4000.npz`` and ``test_first1000.npz`` (the first 4,000
    training and 1,000 test images; a warning is logged). Inputs ``(N, 3, 32, 32)`` in :attr:`dtype`,
    labels int64. With ``download=True`` the full set is fetched unless its folder is there. With
    ``normalize=True`` (default; the paper states no preprocessing) each channel is
    ``(x / 255 - mean) / std`` with the training-set statistics mean (0.4914, 0.4822, 0.4465) and std
    (0.2470, 0.2435, 0.2616).

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
        names = (*self.TRAIN_BATCHES, "test_batch", "batches.meta")
        return all((self.batches_dir / name).is_file() for name in names)

    def files_present(self) -> bool:
        return self._full_present()  # with download=True the full set is fetched even if the subset is there

    def fetch(self) -> None:
        import torchvision

        for train in (True, False):
            torchvision.datasets.CIFAR10(root=str(self.data_dir), train=train, download=True)

    def read(self) -> dict[str, Split]:
        if self._full_present():
            return read_cifar10(self.data_dir)
        if all(p.is_file() for p in self.subset_files):
            train, test = (read_cifar_npz(p) for p in self.subset_files)
            _warn(
                f"CIFAR10DataModule: {self.batches_dir} not found, using the SUBSET in "
                f"{self.subset_files[0].parent} ({train[0].shape[0]} train / {test[0].shape[0]} test images, "
                "not the full 50,000 / 10,000); results are not comparable with the paper's."
            )
            return {
                "train": (_tensor(train[0]), _tensor(train[1])),
                "test": (_tensor(test[0]), _tensor(test[1])),
            }
        raise FileNotFoundError(
            "CIFAR10DataModule: found neither "
            f"{self.batches_dir}/{{data_batch_1..5,test_batch,batches.meta}} nor "
            f"{self.subset_files[0]} and {self.subset_files[1]}. Pass download=True to fetch the full "
            f"set with torchvision.datasets.CIFAR10(root={str(self.data_dir)!r}, download=True)."
        )


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


__all__ = ["CIFAR10DataModule", "DigitsDataModule", "FashionMNISTDataModule", "MNISTDataModule"]
