r"""Fully connected networks of the ellipsoidal trust-region and Hessian-free papers.

* :func:`mlp`: a tanh multilayer perceptron (Kohler, Adolphs & Lucchi, App. C: "a network with tanh
  activations and a cross entropy loss").
* :func:`autoencoder`: the deep autoencoder of Hinton & Salakhutdinov (2006), used by Martens (2010) and
  by Kohler, Adolphs & Lucchi (Fashion-MNIST 784-1000-500-250-30): logistic units in every layer but the
  linear code layer, the decoder mirrored, logits out (the loss applies the output sigmoid).
* :func:`sparse_init_`: Martens' (2010, Sec. 5) sparse initialisation.

Both builders take an input batch of images ``(N, C, H, W)`` (or already flat ``(N, D)``) and flatten it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

import torch
from torch import nn

__all__ = ["autoencoder", "mlp", "sparse_init_"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def _check_sizes(name: str, sizes: Sequence[int], at_least: int) -> list[int]:
    sizes = list(sizes)
    if len(sizes) < at_least or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ValueError(f"{name} must be at least {at_least} layer widths >= 1, got {sizes!r}")
    return sizes


def mlp(
    sizes: Sequence[int] = (784, 128, 128, 10), activation: Literal["tanh", "relu", "sigmoid"] = "tanh"
) -> nn.Module:
    r"""A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` after every hidden layer
    and logits out; PyTorch's default initialisation.

    Kohler, Adolphs & Lucchi (App. C) use tanh MLPs with cross entropy; the layer widths are lost from our
    copy of the paper. Default 784-128-128-10 (118,282 weights) for (Fashion-)MNIST, by analogy with the
    411k-weight MLP of their Fig. 2, which 3072-128-128-10 for CIFAR-10 matches exactly (411,146): a
    choice, stated in the recipe's README.

    Raises:
        ValueError: fewer than two widths, a width < 1 or an unknown activation.
    """
    sizes = _check_sizes("sizes", sizes, 2)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for index, (fan_in, fan_out) in enumerate(pairwise(sizes), 1):
        layers.append((f"fc{index}", nn.Linear(fan_in, fan_out)))
        if index < len(sizes) - 1:
            layers.append((f"{activation}{index}", _ACTIVATIONS[activation]()))
    return nn.Sequential(OrderedDict(layers))


@torch.no_grad()
def sparse_init_(
    layer: nn.Linear, nonzero: int = 15, std: float = 1.0, generator: torch.Generator | None = None
) -> nn.Linear:
    r"""Martens (2010), Sec. 5: "each unit ... has only 15 non-zero incoming weights ... drawn from a unit
    Gaussian", biases 0 (all incoming weights when the layer has fewer than ``nonzero`` inputs).

    Returns:
        ``layer``, changed in place.
    """
    if nonzero < 1:
        raise ValueError(f"nonzero must be >= 1, got {nonzero}")
    out_features, in_features = layer.weight.shape
    k = min(nonzero, in_features)
    weight = torch.zeros(out_features, in_features, dtype=layer.weight.dtype)
    scores = torch.rand(out_features, in_features, generator=generator)
    chosen = scores.topk(k, dim=1).indices  # k distinct inputs per unit, uniformly at random
    values = torch.randn(out_features, k, generator=generator, dtype=layer.weight.dtype) * std
    weight.scatter_(1, chosen, values)
    layer.weight.copy_(weight)
    if layer.bias is not None:
        layer.bias.zero_()
    return layer


def autoencoder(
    sizes: Sequence[int] = (784, 1000, 500, 250, 30),
    init: Literal["default", "sparse"] = "default",
    generator_seed: int | None = None,
) -> nn.Module:
    r"""The deep autoencoder: encoder ``sizes[0] -> ... -> sizes[-1]`` (the code), decoder mirrored back to
    ``sizes[0]``, logistic (sigmoid) units everywhere but the linear code layer and the output, which
    returns logits (the task's loss applies the sigmoid: ``binary_cross_entropy_with_logits``).

    Sizes of the papers: MNIST and Fashion-MNIST 784-1000-500-250-30 (Hinton & Salakhutdinov 2006;
    Martens 2010; Kohler, Adolphs & Lucchi, App. C); CURVES 784-400-200-100-50-25-6; FACES
    625-2000-1000-500-30 (Martens 2010).

    Args:
        sizes: the encoder's widths, input first, code last.
        init: ``"default"`` (PyTorch's) or ``"sparse"`` (:func:`sparse_init_` on every layer: Martens'
            "random" initialisation, under which Hessian-free leaves the mean-image plateau).
        generator_seed: seed of the sparse initialisation (``None``: the global RNG).

    Raises:
        ValueError: fewer than two widths, a width < 1 or an unknown ``init``.
    """
    sizes = _check_sizes("sizes", sizes, 2)
    if init not in ("default", "sparse"):
        raise ValueError(f"init must be 'default' or 'sparse', got {init!r}")
    widths = sizes + sizes[-2::-1]  # 784 ... 30 ... 784
    code = len(sizes) - 1  # index of the code layer's output in widths
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    linears = []
    for index, (fan_in, fan_out) in enumerate(pairwise(widths), 1):
        linear = nn.Linear(fan_in, fan_out)
        linears.append(linear)
        part = "encoder" if index <= code else "decoder"
        layers.append((f"{part}{index}", linear))
        if index != code and index != len(widths) - 1:  # linear code layer, logits out
            layers.append((f"sigmoid{index}", nn.Sigmoid()))
    if init == "sparse":
        generator = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
        for linear in linears:
            sparse_init_(linear, generator=generator)
    return nn.Sequential(OrderedDict(layers))
