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
