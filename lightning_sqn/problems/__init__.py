"""Models, DataModules and tasks shared by the paper recipes, the demo and the tests: the networks of
Ramamurthy & Duffy (2017, Section 4 and appendix), of Kohler, Adolphs & Lucchi (tanh MLPs, the deep
autoencoder, ResNet18, the simple CNN of their Fig. 2), the data sets, the optimizer factory, the
classification and reconstruction tasks, and the toy problem of the sampled quasi-Newton paper."""

from lightning_sqn.problems.convnets import resnet18, simple_cnn
from lightning_sqn.problems.data import (
    BatchTransform,
    CIFAR10DataModule,
    CurvesDataModule,
    DigitsDataModule,
    FacesDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    RandomCropFlip,
    TensorBatches,
    TensorDataModule,
    make_curves,
    read_cifar10,
    read_cifar_npz,
    read_mnist,
)
from lightning_sqn.problems.fully_connected import autoencoder, mlp, sparse_init_
from lightning_sqn.problems.models import (
    PAPER_PARAM_COUNTS,
    digits_convnet,
    lenet5_mnist,
    lenet_cifar,
    resnet20,
)
from lightning_sqn.problems.optimizers import OPTIMIZERS, PAPER_EXPERIMENTS, build_optimizer, needs_closure
from lightning_sqn.problems.reconstruction import ReconstructionTask
from lightning_sqn.problems.task import ClassificationTask, TrainingTask
from lightning_sqn.problems.toy import (
    TOY_WIDTHS,
    ToyDataModule,
    toy_sigmoid_network,
    toy_sin_data,
    toy_xor_data,
)

__all__ = [
    "OPTIMIZERS",
    "PAPER_EXPERIMENTS",
    "PAPER_PARAM_COUNTS",
    "TOY_WIDTHS",
    "BatchTransform",
    "CIFAR10DataModule",
    "ClassificationTask",
    "CurvesDataModule",
    "DigitsDataModule",
    "FacesDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "RandomCropFlip",
    "ReconstructionTask",
    "TensorBatches",
    "TensorDataModule",
    "ToyDataModule",
    "TrainingTask",
    "autoencoder",
    "build_optimizer",
    "digits_convnet",
    "lenet5_mnist",
    "lenet_cifar",
    "make_curves",
    "mlp",
    "needs_closure",
    "read_cifar10",
    "read_cifar_npz",
    "read_mnist",
    "resnet18",
    "resnet20",
    "simple_cnn",
    "sparse_init_",
    "toy_sigmoid_network",
    "toy_sin_data",
    "toy_xor_data",
]
