r"""Convolutional networks of Kohler, Adolphs & Lucchi (Sec. 3 and 5, App. C).

* :func:`resnet18`: torchvision's ResNet18, "a modification of it for Fashion-MNIST that adapts the
  first convolution to account for the single input channel".
* :func:`simple_cnn`: the "simple CNN (62k weights)" of their Fig. 2, read as LeCun's LeNet-5 on 32x32
  RGB images (62,006 weights, which matches).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["resnet18", "simple_cnn"]


def resnet18(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    r"""``torchvision.models.resnet18(num_classes=num_classes)`` (random initialisation, torchvision's), with
    the first convolution taking ``in_channels`` channels (same 7x7 kernel, stride 2, padding 3, no bias).

    11,181,642 weights for CIFAR-10 (3 channels), 11,175,370 for Fashion-MNIST (1 channel), 10 classes.

    Raises:
        ValueError: ``in_channels`` or ``num_classes`` < 1.
    """
    import torchvision

    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(
            in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's
    return net


def simple_cnn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    r"""LeNet-5 (LeCun et al. 1998) for 32x32 images: 5x5 conv to 6 maps, ReLU, 2x2 max pool; 5x5 conv to
    16 maps, ReLU, 2x2 max pool; fully connected 400 -> 120 -> 84 -> ``num_classes`` with ReLU;
    PyTorch's default initialisation. 62,006 weights with 3 input channels and 10 classes.
    """
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, 6, 5)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(6, 16, 5)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(16 * 5 * 5, 120)),
                ("relu3", nn.ReLU()),
                ("fc2", nn.Linear(120, 84)),
                ("relu4", nn.ReLU()),
                ("fc3", nn.Linear(84, num_classes)),
            ]
        )
    )
