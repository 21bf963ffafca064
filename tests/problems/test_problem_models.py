"""The networks of lightning_sqn.problems.models against the paper's appendix (Ramamurthy & Duffy 2017) and
He et al. (2015b): layer types and output shapes, parameter counts recounted by hand, initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_sqn.problems import PAPER_PARAM_COUNTS, digits_convnet, lenet5_mnist, lenet_cifar, resnet20


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _trace(model: nn.Sequential, x: torch.Tensor) -> list[tuple[str, type, tuple[int, ...]]]:
    """(name, layer type, output shape) of every layer of a Sequential, in order."""
    out = []
    for name, layer in model.named_children():
        x = layer(x)
        out.append((name, type(layer), tuple(x.shape)))
    return out


# ---------------------------------------------------------------------------- parameter counts by hand

LENET5_MNIST = (
    20 * 1 * 5 * 5
    + 20  # conv1: 20 maps of 1x5x5 + bias
    + 50 * 20 * 5 * 5
    + 50  # conv2: 50 maps of 20x5x5 + bias
    + (50 * 4 * 4) * 500
    + 500  # fc1: 800 -> 500
    + 500 * 10
    + 10  # output: 500 -> 10
)
LENET5_MNIST_BN = LENET5_MNIST + 2 * (20 + 50 + 500)  # BN weight and bias per channel/unit
LENET_CIFAR = (
    32 * 3 * 5 * 5
    + 32  # conv1
    + 32 * 32 * 5 * 5
    + 32  # conv2
    + 64 * 32 * 5 * 5
    + 64  # conv3
    + (64 * 4 * 4) * 64
    + 64  # fc1: 1024 -> 64
    + 64 * 10
    + 10  # output
)
LENET_CIFAR_BN = LENET_CIFAR + 2 * (32 + 32 + 64 + 64)


def _resnet20_count(bn: bool, projection: bool) -> int:
    """Convolutions without bias followed by BN (2 per channel), or with a bias (1 per channel) without."""
    per_channel = 2 if bn else 1
    stem = 3 * 16 * 3 * 3 + per_channel * 16
    stage1 = 6 * (16 * 16 * 3 * 3 + per_channel * 16)
    stage2 = (16 * 32 * 3 * 3 + per_channel * 32) + 5 * (32 * 32 * 3 * 3 + per_channel * 32)
    stage3 = (32 * 64 * 3 * 3 + per_channel * 64) + 5 * (64 * 64 * 3 * 3 + per_channel * 64)
    fc = 64 * 10 + 10
    shortcuts = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64) if projection else 0  # option B: 1x1 conv + BN
    return stem + stage1 + stage2 + stage3 + fc + shortcuts


DIGITS = (8 * 1 * 3 * 3 + 8) + (16 * 8 * 3 * 3 + 16) + (16 * 2 * 2 * 32 + 32) + (32 * 10 + 10)
DIGITS_BN = DIGITS + 2 * (8 + 16 + 32)


def test_hand_counts_are_the_known_ones() -> None:
    assert LENET5_MNIST == 431_080 and LENET5_MNIST_BN == 432_220
    assert LENET_CIFAR == 145_578 and LENET_CIFAR_BN == 145_962
    assert _resnet20_count(bn=True, projection=False) == 269_722  # option A, He et al. "0.27M"
    assert _resnet20_count(bn=True, projection=True) == 272_474  # option B
    assert DIGITS == 3_658


@pytest.mark.parametrize(
    ("key", "build", "expected"),
    [
        ("lenet5_mnist", lambda: lenet5_mnist(), LENET5_MNIST),
        ("lenet5_mnist_bn", lambda: lenet5_mnist(batch_norm=True), LENET5_MNIST_BN),
        ("lenet_cifar", lambda: lenet_cifar(), LENET_CIFAR),
        ("lenet_cifar_bn", lambda: lenet_cifar(batch_norm=True), LENET_CIFAR_BN),
        ("resnet20", lambda: resnet20(), _resnet20_count(bn=True, projection=False)),
        ("resnet20_shortcut_b", lambda: resnet20(shortcut="B"), _resnet20_count(bn=True, projection=True)),
        ("resnet20_no_bn", lambda: resnet20(batch_norm=False), _resnet20_count(bn=False, projection=False)),
        ("digits_convnet", lambda: digits_convnet(), DIGITS),
        ("digits_convnet_bn", lambda: digits_convnet(batch_norm=True), DIGITS_BN),
    ],
)
def test_parameter_counts(key, build, expected) -> None:
    assert _count(build()) == expected == PAPER_PARAM_COUNTS[key]


def test_param_count_table_is_fully_checked() -> None:
    assert set(PAPER_PARAM_COUNTS) == {
        "lenet5_mnist",
        "lenet5_mnist_bn",
        "lenet_cifar",
        "lenet_cifar_bn",
        "resnet20",
        "resnet20_shortcut_b",
        "resnet20_no_bn",
        "digits_convnet",
        "digits_convnet_bn",
    }


# ---------------------------------------------------------------------------- architecture (appendix)


def test_lenet5_mnist_layers_and_shapes() -> None:
    N = 3
    trace = _trace(lenet5_mnist(batch_norm=True).eval(), torch.randn(N, 1, 28, 28))
    assert trace == [
        ("conv1", nn.Conv2d, (N, 20, 24, 24)),  # 5x5, 20 maps, stride 1, padding 0
        ("relu1", nn.ReLU, (N, 20, 24, 24)),
        ("bn1", nn.BatchNorm2d, (N, 20, 24, 24)),  # "Spatial Batch Normalization Layer"
        ("pool1", nn.MaxPool2d, (N, 20, 12, 12)),  # "Max Pooling Layer - filter size 2"
        ("conv2", nn.Conv2d, (N, 50, 8, 8)),  # 5x5, 50 maps
        ("relu2", nn.ReLU, (N, 50, 8, 8)),
        ("bn2", nn.BatchNorm2d, (N, 50, 8, 8)),
        ("pool2", nn.MaxPool2d, (N, 50, 4, 4)),
        ("flatten", nn.Flatten, (N, 800)),
        ("fc1", nn.Linear, (N, 500)),  # "500 hidden units"
        ("tanh", nn.Tanh, (N, 500)),  # "tangent hyperbolic activation function"
        ("bn3", nn.BatchNorm1d, (N, 500)),
        ("fc2", nn.Linear, (N, 10)),  # "10 outputs"
    ]
    model = lenet5_mnist(batch_norm=True)
    for conv in (model.conv1, model.conv2):
        assert (conv.kernel_size, conv.stride, conv.padding) == ((5, 5), (1, 1), (0, 0))
    for pool in (model.pool1, model.pool2):
        assert (pool.kernel_size, pool.stride) == (2, 2)


def test_lenet_cifar_layers_and_shapes() -> None:
    N = 2
    trace = _trace(lenet_cifar(batch_norm=True).eval(), torch.randn(N, 3, 32, 32))
    assert trace == [
        ("conv1", nn.Conv2d, (N, 32, 32, 32)),  # 5x5, 32 maps, stride 1, padding 2
        ("relu1", nn.ReLU, (N, 32, 32, 32)),
        ("bn1", nn.BatchNorm2d, (N, 32, 32, 32)),
        ("pool1", nn.MaxPool2d, (N, 32, 16, 16)),
        ("relu1b", nn.ReLU, (N, 32, 16, 16)),  # "Activation Layer - ReLU"
        ("conv2", nn.Conv2d, (N, 32, 16, 16)),
        ("relu2", nn.ReLU, (N, 32, 16, 16)),
        ("bn2", nn.BatchNorm2d, (N, 32, 16, 16)),
        ("pool2", nn.MaxPool2d, (N, 32, 8, 8)),
        ("conv3", nn.Conv2d, (N, 64, 8, 8)),  # 64 maps
        ("relu3", nn.ReLU, (N, 64, 8, 8)),
        ("bn3", nn.BatchNorm2d, (N, 64, 8, 8)),
        ("pool3", nn.MaxPool2d, (N, 64, 4, 4)),
        ("flatten", nn.Flatten, (N, 1024)),
        ("fc1", nn.Linear, (N, 64)),  # "64 hidden units, and a ReLU"
        ("relu4", nn.ReLU, (N, 64)),
        ("bn4", nn.BatchNorm1d, (N, 64)),
        ("fc2", nn.Linear, (N, 10)),
    ]
    model = lenet_cifar()
    for conv in (model.conv1, model.conv2, model.conv3):
        assert (conv.kernel_size, conv.stride, conv.padding) == ((5, 5), (1, 1), (2, 2))


@pytest.mark.parametrize("build", [lenet5_mnist, lenet_cifar, digits_convnet])
def test_without_batch_norm_has_no_bn(build) -> None:
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build().modules())
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build(batch_norm=True).modules()) >= 3


def test_digits_convnet_shapes() -> None:
    trace = _trace(digits_convnet(batch_norm=True).eval(), torch.rand(5, 1, 8, 8))
    assert [shape for _, _, shape in trace if len(shape) == 4][-1] == (5, 16, 2, 2)
    assert trace[-1][2] == (5, 10)


# ---------------------------------------------------------------------------- initialisation


def _assert_gaussian(w: torch.Tensor, std: float) -> None:
    """Sample mean and standard deviation within 5 standard errors of N(0, std^2)."""
    n = w.numel()
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
    assert abs(w.std().item() / std - 1) < 5 / math.sqrt(2 * n)


def test_lenet_init_stds() -> None:
    torch.manual_seed(0)
    mnist = lenet5_mnist(batch_norm=True)
    for layer in (mnist.conv1, mnist.conv2, mnist.fc1, mnist.fc2):  # all 0.1 (fc1: stated for none)
        _assert_gaussian(layer.weight.detach(), 0.1)
        assert torch.all(layer.bias == 0)  # "bias 0"
    cifar = lenet_cifar(batch_norm=True)
    for conv in (cifar.conv1, cifar.conv2, cifar.conv3):  # "standard deviation 0.01"
        _assert_gaussian(conv.weight.detach(), 0.01)
        assert torch.all(conv.bias == 0)
    for fc in (cifar.fc1, cifar.fc2):  # "standard deviation 0.1", "output standard deviation of 0.1"
        _assert_gaussian(fc.weight.detach(), 0.1)
        assert torch.all(fc.bias == 0)
    assert torch.all(cifar.bn1.weight == 1) and torch.all(cifar.bn1.bias == 0)


def test_resnet20_he_init() -> None:
    torch.manual_seed(0)
    model = resnet20()
    standardized = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()  # k^2 c_in (He et al. 2015a, eq. 10: n_l)
            standardized.append((module.weight.detach() / math.sqrt(2 / fan_in)).reshape(-1))
    _assert_gaussian(torch.cat(standardized), 1.0)  # all 269k weights together
    _assert_gaussian(model.layer3[2].conv2.weight.detach(), math.sqrt(2 / (64 * 9)))
    assert torch.all(model.fc.bias == 0)


# ---------------------------------------------------------------------------- ResNet-20 structure


def test_resnet20_structure_and_shapes() -> None:
    model = resnet20().eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 20  # 6n + 2 weighted layers, n = 3
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    x = torch.randn(2, 3, 32, 32)
    h = torch.relu(model.bn1(model.conv1(x)))
    shapes = []
    for stage in (model.layer1, model.layer2, model.layer3):
        assert len(stage) == 3
        h = stage(h)
        shapes.append(tuple(h.shape))
    assert shapes == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    assert model(x).shape == (2, 10)
    assert resnet20(num_classes=100)(x).shape == (2, 100)


def test_resnet20_option_a_shortcut_is_zero_padded_identity() -> None:
    block = resnet20().layer2[0]  # 16 -> 32 channels, stride 2
    x = torch.randn(2, 16, 32, 32)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 16, 16)
    torch.testing.assert_close(s[:, :16], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert torch.all(s[:, 16:] == 0)
    assert block.projection is None
    y = torch.randn(2, 16, 32, 32)
    assert torch.equal(resnet20().layer1[1].shortcut(y), y)  # identity elsewhere
    assert resnet20(shortcut="B").layer2[0].shortcut(x).shape == (2, 32, 16, 16)
    with pytest.raises(ValueError, match="shortcut"):
        resnet20(shortcut="C")  # type: ignore[arg-type]


def test_resnet20_bn_state_size() -> None:
    model = resnet20()
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn) == 19  # one after each of the 19 convolutions
    assert sum(m.num_features for m in bn) == 16 + 6 * 16 + 6 * 32 + 6 * 64


def test_lenet5_mnist_bn_before_activation_reorders_only() -> None:
    after = lenet5_mnist(batch_norm=True)
    before = lenet5_mnist(batch_norm=True, bn_position="before_activation")
    names = [name for name, _ in before.named_children()]
    assert names[:4] == ["conv1", "bn1", "relu1", "pool1"]
    assert names[9:12] == ["fc1", "bn3", "tanh"]
    # same parameters, same count: only the order of BN and activation differs
    assert sorted(n for n, _ in after.named_parameters()) == sorted(n for n, _ in before.named_parameters())
    before.load_state_dict(after.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert not torch.allclose(before.eval()(x), after.eval()(x))
    with pytest.raises(ValueError, match="bn_position"):
        lenet5_mnist(batch_norm=True, bn_position="middle")
