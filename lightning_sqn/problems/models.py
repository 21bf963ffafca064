"""The networks of Ramamurthy & Duffy (2017), Section 4 and appendix, and a tiny one for the demo.

* :func:`lenet5_mnist`: the MNIST "LeNet5" (Section 4.1.1, appendix "MNIST").
* :func:`lenet_cifar`: the CIFAR10 "slight modification to the LeNet5 architecture" (Section 4.1.2,
  appendix "CIFAR10").
* :func:`resnet20`: the residual network of He et al. (2015b), Section 4.2, with n = 3 (Section 4.2).
* :func:`digits_convnet`: a small conv net for scikit-learn's 8x8 digits (not from the paper).

Every builder returns a plain :class:`torch.nn.Module` mapping images ``(N, C, H, W)`` to logits
``(N, num_classes)``; the loss (softmax cross entropy) and the L2 term belong to the training task.
:data:`PAPER_PARAM_COUNTS` lists the number of trainable parameters of each network; the tests recount
them from the layer shapes by hand.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "PAPER_PARAM_COUNTS",
    "digits_convnet",
    "lenet5_mnist",
    "lenet_cifar",
    "resnet20",
]


def _gaussian_(layer: nn.Conv2d | nn.Linear, std: float) -> None:
    """Weights from N(0, std^2), biases 0 (the appendix: "with bias 0 and Gaussian noise with mean 0 and
    standard deviation <std>")."""
    nn.init.normal_(layer.weight, mean=0.0, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _conv(in_channels: int, out_channels: int, padding: int, std: float) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=5, stride=1, padding=padding)
    _gaussian_(conv, std)
    return conv


def _linear(in_features: int, out_features: int, std: float) -> nn.Linear:
    fc = nn.Linear(in_features, out_features)
    _gaussian_(fc, std)
    return fc


def _bn2d(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _bn1d(features: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm1d(features) if batch_norm else nn.Identity()


def lenet5_mnist(batch_norm: bool = False, bn_position: str = "after_activation") -> nn.Module:
    r"""The MNIST LeNet5 of the appendix ("Network Architectures and Hyperparameter Settings", MNIST).

    The appendix lists, in this order ("All the batch normalization layers were removed, in the 'without
    batch normalization' case"):

    * "Convolutional Layer - filter size 5 × 5, 20 feature maps, stride 1, padding 0, and a ReLU
      activation function with bias 0 and Gaussian noise with mean 0 and standard deviation 0.1"
    * "Spatial Batch Normalization Layer"
    * "Max Pooling Layer - filter size 2"
    * "Convolutional Layer - filter size 5 × 5, 50 feature maps, stride 1, padding 0, and a ReLU
      activation function with bias 0 and Gaussian noise with mean 0 and standard deviation 0.1"
    * "Spatial Batch Normalization Layer"
    * "Max Pooling Layer - filter size 2"
    * "Fully Connected Layer - 500 hidden units, and a tangent hyperbolic activation function"
    * "Spatial Batch Normalization Layer"
    * "Outer Output Layer - 10 outputs and output standard deviation of 0.1"

    Read as: each convolution is followed by its ReLU (the activation is part of the listed layer), then
    batch normalization, then 2x2 max pooling with stride 2. Shapes for a ``(N, 1, 28, 28)`` input:
    ``(N, 20, 24, 24)`` -> pool ``(N, 20, 12, 12)`` -> ``(N, 50, 8, 8)`` -> pool ``(N, 50, 4, 4)`` ->
    flatten 800 -> ``(N, 500)`` (tanh, then BatchNorm1d) -> ``(N, 10)`` logits.

    Initialisation: every weight N(0, 0.1^2), every bias 0. The appendix states the standard deviation for
    the convolutions and the output layer ("output standard deviation of 0.1"); for the 500-unit fully
    connected layer it states none, and 0.1 is used there too. BatchNorm layers start at weight 1, bias 0.

    Trainable parameters: 431,080 (432,220 with batch normalization), see :data:`PAPER_PARAM_COUNTS`.
    The L2 regularization ("with parameter 0.0001") is part of the objective, not of the model.

    Args:
        batch_norm: insert the three batch-normalization layers.
        bn_position: ``"after_activation"`` (the appendix's order, above) or ``"before_activation"``
            (conv -> BN -> ReLU, fc1 -> BN -> tanh, as in Ioffe & Szegedy); an ablation of a choice the
            paper's wording leaves open to reading. Ignored without ``batch_norm``.

    Returns:
        ``nn.Sequential`` with named layers (``conv1``, ``relu1``, ``bn1``, ``pool1``, ..., ``fc1``,
        ``tanh``, ``bn3``, ``fc2``; with ``"before_activation"`` each ``bn`` precedes its activation).
    """
    if bn_position not in ("after_activation", "before_activation"):
        raise ValueError(
            f"bn_position must be 'after_activation' or 'before_activation', got {bn_position!r}"
        )

    def unit(layer: tuple[str, nn.Module], activation: tuple[str, nn.Module], bn: tuple[str, nn.Module]):
        return [layer, *((bn, activation) if bn_position == "before_activation" else (activation, bn))]

    return nn.Sequential(
        OrderedDict(
            [
                *unit(
                    ("conv1", _conv(1, 20, padding=0, std=0.1)),
                    ("relu1", nn.ReLU()),
                    ("bn1", _bn2d(20, batch_norm)),
                ),
                ("pool1", nn.MaxPool2d(kernel_size=2, stride=2)),
                *unit(
                    ("conv2", _conv(20, 50, padding=0, std=0.1)),
                    ("relu2", nn.ReLU()),
                    ("bn2", _bn2d(50, batch_norm)),
                ),
                ("pool2", nn.MaxPool2d(kernel_size=2, stride=2)),
                ("flatten", nn.Flatten()),
                *unit(
                    ("fc1", _linear(50 * 4 * 4, 500, std=0.1)),
                    ("tanh", nn.Tanh()),
                    ("bn3", _bn1d(500, batch_norm)),
                ),
                ("fc2", _linear(500, 10, std=0.1)),
            ]
        )
    )


def lenet_cifar(batch_norm: bool = False) -> nn.Module:
    r"""The CIFAR10 network of the appendix ("Network Architectures and Hyperparameter Settings", CIFAR10).

    The appendix lists, in this order ("All the batch normalization layers were removed, in the 'without
    batch normalization' case"):

    * "Convolutional Layer - filter size 5 × 5, 32 feature maps, stride 1, padding 2, and a ReLU
      activation function with bias 0 and Gaussian noise with mean 0 and standard deviation 0.01"
    * "Spatial Batch Normalization Layer"
    * "Max Pooling Layer - filter size 2"
    * "Activation Layer - ReLU activation function with bias 0 and Gaussian noise with mean 0 and
      standard deviation 0.1" (a parameter-free ReLU)
    * "Convolutional Layer - filter size 5 × 5, 32 feature maps, stride 1, padding 2, and a ReLU
      activation function with bias 0 and Gaussian noise with mean 0 and standard deviation 0.01"
    * "Spatial Batch Normalization Layer"
    * "Max Pooling Layer - filter size 2"
    * "Convolutional Layer - filter size 5 × 5, 64 feature maps, stride 1, padding 2, and a ReLU
      activation function with bias 0 and Gaussian noise with mean 0 and standard deviation 0.01"
    * "Spatial Batch Normalization Layer"
    * "Max Pooling Layer - filter size 2"
    * "Fully Connected Layer - 64 hidden units, and a ReLU activation function with bias 0 and Gaussian
      noise with mean 0 and standard deviation 0.1"
    * "Spatial Batch Normalization Layer"
    * "Outer Output Layer - 10 outputs and output standard deviation of 0.1"

    Read as in :func:`lenet5_mnist`: convolution, its ReLU, batch normalization, 2x2 max pooling with
    stride 2. Shapes for a ``(N, 3, 32, 32)`` input: ``(N, 32, 32, 32)`` -> pool ``(N, 32, 16, 16)`` ->
    ``(N, 32, 16, 16)`` -> pool ``(N, 32, 8, 8)`` -> ``(N, 64, 8, 8)`` -> pool ``(N, 64, 4, 4)`` ->
    flatten 1024 -> ``(N, 64)`` (ReLU, then BatchNorm1d) -> ``(N, 10)`` logits. Without batch
    normalization the stand-alone ReLU after the first pooling acts on non-negative values and is the
    identity; it is kept so that both variants have the listed layers.

    Initialisation (as stated): convolution weights N(0, 0.01^2), fully connected and output weights
    N(0, 0.1^2), all biases 0; BatchNorm layers start at weight 1, bias 0.

    Trainable parameters: 145,578 (145,962 with batch normalization), see :data:`PAPER_PARAM_COUNTS`.
    The L2 regularization ("with parameter 0.001") is part of the objective, not of the model.

    Args:
        batch_norm: insert the four batch-normalization layers.

    Returns:
        ``nn.Sequential`` with named layers (``conv1``, ``relu1``, ``bn1``, ``pool1``, ``relu1b``, ...,
        ``fc1``, ``relu4``, ``bn4``, ``fc2``).
    """
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", _conv(3, 32, padding=2, std=0.01)),
                ("relu1", nn.ReLU()),
                ("bn1", _bn2d(32, batch_norm)),
                ("pool1", nn.MaxPool2d(kernel_size=2, stride=2)),
                ("relu1b", nn.ReLU()),
                ("conv2", _conv(32, 32, padding=2, std=0.01)),
                ("relu2", nn.ReLU()),
                ("bn2", _bn2d(32, batch_norm)),
                ("pool2", nn.MaxPool2d(kernel_size=2, stride=2)),
                ("conv3", _conv(32, 64, padding=2, std=0.01)),
                ("relu3", nn.ReLU()),
                ("bn3", _bn2d(64, batch_norm)),
                ("pool3", nn.MaxPool2d(kernel_size=2, stride=2)),
                ("flatten", nn.Flatten()),
                ("fc1", _linear(64 * 4 * 4, 64, std=0.1)),
                ("relu4", nn.ReLU()),
                ("bn4", _bn1d(64, batch_norm)),
                ("fc2", _linear(64, 10, std=0.1)),
            ]
        )
    )


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al. 2015b, Fig. 2).

    Where the block halves the feature map and doubles the channels, the shortcut is option A, "identity
    mapping, with extra zero entries padded for increasing dimensions" (the input subsampled with stride 2
    and zero channels appended; no parameters), or option B, a projection (1x1 convolution with stride 2
    and BN). Elsewhere it is the identity.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, batch_norm: bool, shortcut: str
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = _bn2d(out_channels, batch_norm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=not batch_norm)
        self.bn2 = _bn2d(out_channels, batch_norm)
        self.stride = stride
        self.extra_channels = out_channels - in_channels
        self.projection: nn.Module | None = None
        if shortcut == "B" and (stride != 1 or in_channels != out_channels):
            self.projection = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not batch_norm),
                _bn2d(out_channels, batch_norm),
            )

    def shortcut(self, x: Tensor) -> Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _CifarResNet(nn.Module):
    """He et al. (2015b), Section 4.2: a 3x3 convolution with 16 filters, three stages of ``n`` basic
    blocks on 32x32, 16x16 and 8x8 maps with 16, 32 and 64 filters (subsampling by stride-2 convolutions),
    global average pooling and a fully connected layer: 6n + 2 weighted layers."""

    def __init__(self, n: int, num_classes: int, batch_norm: bool, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=not batch_norm)
        self.bn1 = _bn2d(16, batch_norm)
        stages = []
        in_channels = 16
        for index, channels in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(_BasicBlock(in_channels, channels, stride, batch_norm, shortcut))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # He et al. (2015a), eq. (10): std = sqrt(2 / n_l) with n_l = k^2 c_in (fan in).
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def resnet20(num_classes: int = 10, batch_norm: bool = True, shortcut: Literal["A", "B"] = "A") -> nn.Module:
    r"""ResNet-20 for CIFAR-10 (He et al. 2015b, Section 4.2, n = 3), as used in Section 4.2 of the paper.

    The paper: "a deeper residual network architecture described in section 4.2 of He et al. (2015b),
    with n = 3. This led to a 20-layer residual network including 9 shortcut connections. As in He et al.
    (2015b), we used batch normalization (Ioffe & Szegedy, 2015) and the same initialization method (He
    et al., 2015a)."

    Layers: 3x3 conv (16) + BN + ReLU; 3 stages of 3 basic blocks (two 3x3 convs with BN, ReLU after the
    addition) with 16, 32, 64 channels on 32x32, 16x16, 8x8 maps, the first conv of stages 2 and 3 with
    stride 2; global average pooling; a 64 -> ``num_classes`` fully connected layer. Convolutions have no
    bias when followed by BN. Shortcuts: He et al. (2015b), Section 4.2, "we use identity shortcuts in
    all cases (i.e., option A)": on the two downsampling blocks the input is subsampled with stride 2 and
    zero-padded to the new channel count (no parameters). ``shortcut="B"`` uses 1x1 projections with BN
    there instead (not what the CIFAR experiments of He et al. use).

    Initialisation: He et al. (2015a), weights N(0, 2 / fan_in) (``kaiming_normal_``, fan in, ReLU gain)
    for every convolution and the final linear layer, biases 0, BN weight 1 and bias 0.

    Trainable parameters (10 classes, with BN; He et al., Table 6: "0.27M"): option A 269,722; option B
    272,474 (the 2,752 extra are the projections: 16*32 + 2*32 and 32*64 + 2*64). Without BN
    (``batch_norm=False``: BN layers become identities and every convolution gets a bias) option A has
    269,034.

    Args:
        num_classes: outputs of the final layer.
        batch_norm: keep the batch-normalization layers (the paper always does).
        shortcut: ``"A"`` (zero-padding identity, the paper's) or ``"B"`` (projection) on the
            downsampling blocks.
    """
    if shortcut not in ("A", "B"):
        raise ValueError(
            f"shortcut must be 'A' (identity with zero padding) or 'B' (projection), got {shortcut!r}"
        )
    return _CifarResNet(3, num_classes, batch_norm, shortcut)


def digits_convnet(batch_norm: bool = False) -> nn.Module:
    r"""A small conv net for scikit-learn's 8x8 digits (``(N, 1, 8, 8)`` inputs in [0, 1], 10 classes).

    Not from the paper; used by the demo and tests. Layers: 3x3 conv 1 -> 8 (padding 1), ReLU, [BN],
    2x2 max pool -> ``(N, 8, 4, 4)``; 3x3 conv 8 -> 16 (padding 1), ReLU, [BN], 2x2 max pool ->
    ``(N, 16, 2, 2)``; flatten 64; linear 64 -> 32, tanh, [BN]; linear 32 -> 10. PyTorch's default
    initialisation. 3,658 trainable parameters (3,770 with batch normalization).

    Args:
        batch_norm: insert batch normalization after each hidden layer's activation.
    """
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 8, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("bn1", _bn2d(8, batch_norm)),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(8, 16, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("bn2", _bn2d(16, batch_norm)),
                ("pool2", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(16 * 2 * 2, 32)),
                ("tanh", nn.Tanh()),
                ("bn3", _bn1d(32, batch_norm)),
                ("fc2", nn.Linear(32, 10)),
            ]
        )
    )


#: Trainable parameters of each network (``_bn``: with batch normalization; ``resnet20`` has it by
#: default, ``resnet20_no_bn`` is ``batch_norm=False``), recounted by hand in the tests.
PAPER_PARAM_COUNTS: Mapping[str, int] = MappingProxyType(
    {
        "lenet5_mnist": 431_080,
        "lenet5_mnist_bn": 432_220,
        "lenet_cifar": 145_578,
        "lenet_cifar_bn": 145_962,
        "resnet20": 269_722,
        "resnet20_shortcut_b": 272_474,
        "resnet20_no_bn": 269_034,
        "digits_convnet": 3_658,
        "digits_convnet_bn": 3_770,
    }
)
