"""Models and DataModules shared by the paper recipes, the demo and the tests (Ramamurthy & Duffy 2017,
Section 4 and appendix)."""

from lightning_sqn.problems.data import (
    BatchTransform,
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    RandomCropFlip,
    TensorBatches,
    TensorDataModule,
    read_cifar_batch,
    read_cifar_npz,
    read_idx,
)
from lightning_sqn.problems.models import (
    PAPER_PARAM_COUNTS,
    digits_convnet,
    lenet5_mnist,
    lenet_cifar,
    resnet20,
)

__all__ = [
    "PAPER_PARAM_COUNTS",
    "BatchTransform",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "RandomCropFlip",
    "TensorBatches",
    "TensorDataModule",
    "digits_convnet",
    "lenet5_mnist",
    "lenet_cifar",
    "read_cifar_batch",
    "read_cifar_npz",
    "read_idx",
    "resnet20",
]
