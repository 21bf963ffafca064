"""DataModules for the paper's problems: whole data sets as tensors on the device, batched by indexing.

The data sets of Ramamurthy & Duffy (2017) are small enough to live on the accelerator, and the
quasi-Newton optimizers evaluate several closures per step on one fixed mini-batch, so there is no
per-sample ``DataLoader`` here: :class:`TensorDataModule` moves the tensors to the Trainer's device once in
``setup`` and its dataloaders are :class:`TensorBatches`, which yield ``(x, y)`` by indexing the device
tensors with a seeded per-epoch permutation.

The batching rules (permutations, global batches shared over ranks, padding) are in
:mod:`~lightning_sqn.problems.data.batches`.

Data sets (:mod:`~lightning_sqn.problems.data.images`; nothing is taken from the network unless
``download=True``, nothing is written into ``data_dir`` otherwise):

* :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`: the IDX files in torchvision's layout
  ``<data_dir>/MNIST/raw`` / ``<data_dir>/FashionMNIST/raw`` (gzipped or not), read by torchvision.
* :class:`CIFAR10DataModule`: torchvision's ``<data_dir>/cifar-10-batches-py`` pickles (read by
  torchvision), or the 4,000/1,000 image subset ``<data_dir>/cifar10/{train_first4000,test_first1000}.npz``.
* :class:`DigitsDataModule`: scikit-learn's 8x8 digits (1,797 images), for the demo and tests.

Modules: :mod:`~lightning_sqn.problems.data.augment` (batched augmentation),
:mod:`~lightning_sqn.problems.data.batches` (:class:`TensorBatches`),
:mod:`~lightning_sqn.problems.data.datamodule` (:class:`TensorDataModule`),
:mod:`~lightning_sqn.problems.data.files` (reading the files), :mod:`~lightning_sqn.problems.data.images`
(the data sets).
"""

from lightning_sqn.problems.data.augment import BatchTransform, RandomCropFlip
from lightning_sqn.problems.data.batches import BatchSize, Split, TensorBatches
from lightning_sqn.problems.data.datamodule import TensorDataModule
from lightning_sqn.problems.data.files import read_cifar10, read_cifar_npz, read_mnist
from lightning_sqn.problems.data.images import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)

__all__ = [
    "BatchSize",
    "BatchTransform",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "RandomCropFlip",
    "Split",
    "TensorBatches",
    "TensorDataModule",
    "read_cifar10",
    "read_cifar_npz",
    "read_mnist",
]
