"""Models and DataModules shared by the paper recipes, the demo and the tests (Ramamurthy & Duffy 2017,
Section 4 and appendix), the optimizer factory and classification task of the recipes, and the toy
problem of the sampled quasi-Newton paper."""

from lightning_sqn.problems.data import (
    BatchTransform,
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    RandomCropFlip,
    TensorBatches,
    TensorDataModule,
    read_cifar10,
    read_cifar_npz,
    read_mnist,
)
from lightning_sqn.problems.models import (
    PAPER_PARAM_COUNTS,
    digits_convnet,
    lenet5_mnist,
    lenet_cifar,
    resnet20,
)
from lightning_sqn.problems.optimizers import OPTIMIZERS, PAPER_EXPERIMENTS, build_optimizer, needs_closure
from lightning_sqn.problems.task import ClassificationTask
from lightning_sqn.problems.toy import TOY_WIDTHS, toy_sigmoid_network, toy_xor_data

__all__ = [
    "OPTIMIZERS",
    "PAPER_EXPERIMENTS",
    "PAPER_PARAM_COUNTS",
    "TOY_WIDTHS",
    "BatchTransform",
    "CIFAR10DataModule",
    "ClassificationTask",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "RandomCropFlip",
    "TensorBatches",
    "TensorDataModule",
    "build_optimizer",
    "digits_convnet",
    "lenet5_mnist",
    "lenet_cifar",
    "needs_closure",
    "read_cifar10",
    "read_cifar_npz",
    "read_mnist",
    "resnet20",
    "toy_sigmoid_network",
    "toy_xor_data",
]
