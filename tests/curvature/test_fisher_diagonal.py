"""The diagonal of the empirical Fisher matrix behind Martens' preconditioner: the per-layer rule for
``nn.Linear`` networks and the vmapped per-example path both equal a Python loop over examples (float64),
and the per-layer rule declines every network it would get wrong."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_sqn._flat import FlatParams, FunctionalModule
from lightning_sqn.curvature import capture
from lightning_sqn.curvature.capture import CapturedBatch, fisher_diagonal, linear_fisher_diagonal

F = nn.functional
B, K = 9, 6


class _Tied(nn.Module):
    """The same linear layer applied twice: per-example gradients are sums of two outer products."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


class _Tokens(nn.Module):
    """A linear layer on (examples, positions, features): the rows it sees are not the examples."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.view(x.shape[0], 2, 2)).sum(1)


class _Scaled(nn.Module):
    """A parameter outside any nn.Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.lin(x)


def _conv() -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(2, 3))


#: name -> (builder, whether the per-layer rule applies)
MODELS = {
    "mlp": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)),
        True,
    ),
    "no_bias": (lambda: nn.Sequential(nn.Linear(4, 5, bias=False), nn.Sigmoid(), nn.Linear(5, 3)), True),
    "tied": (_Tied, False),
    "tokens": (_Tokens, False),
    "scaled": (_Scaled, False),
    "conv": (_conv, False),
    "eval_bn": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, affine=False).eval(), nn.Linear(5, 3)),
        True,
    ),
    "train_bn": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, affine=False), nn.Linear(5, 3)),
        False,
    ),
}


def _setup(name: str, optimized: str = "all"):
    torch.manual_seed(0)
    model = MODELS[name][0]().double()
    params = list(model.parameters()) if optimized == "all" else list(model.parameters())[-2:]
    g = torch.Generator().manual_seed(1)
    X = torch.randn(B, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (B,), generator=g)
    z = model(X).detach().requires_grad_(True)
    (e,) = torch.autograd.grad(F.cross_entropy(z, y), z)  # e_i = dL/dz_i of the mean loss
    return model, params, X, y, CapturedBatch(X, z.detach(), e)


def _oracle(model: nn.Module, params: list[Tensor], X: Tensor, y: Tensor) -> Tensor:
    """(1/K) sum_{i<K} grad l_i ⊙ grad l_i by a loop over single examples."""
    D = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for i in range(K):
        gi = torch.autograd.grad(F.cross_entropy(model(X[i : i + 1]), y[i : i + 1]), params)
        D += torch.cat([t.reshape(-1) for t in gi]) ** 2
    return D / K


@pytest.mark.parametrize("name", [n for n in MODELS if n != "train_bn"])
@pytest.mark.parametrize("optimized", ["all", "last"])
def test_fisher_diagonal_equals_the_loop_over_examples(name: str, optimized: str) -> None:
    model, params, X, y, batch = _setup(name, optimized)
    fmod = FunctionalModule(model, FlatParams(params))
    torch.testing.assert_close(
        fisher_diagonal(fmod, batch, K), _oracle(model, params, X, y), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_per_layer_rule_applies_exactly_where_it_is_exact(name: str, monkeypatch) -> None:
    model, params, X, y, batch = _setup(name)
    fmod = FunctionalModule(model, FlatParams(params))
    fast = linear_fisher_diagonal(fmod, X[:K], batch.output_grad[:K])
    assert (fast is not None) == MODELS[name][1]
    if fast is not None:  # the unscaled sum of grad f_i^2 with f_i = l_i / B ...
        torch.testing.assert_close(fast * B * B / K, _oracle(model, params, X, y), rtol=1e-12, atol=1e-15)

        # ... and fisher_diagonal takes this path: no per-example gradients
        def no_vmap(*args, **kwargs):
            raise AssertionError("the per-example path ran")

        monkeypatch.setattr(capture, "vmap", no_vmap)
        fisher_diagonal(fmod, batch, K)


def test_per_layer_rule_removes_its_hooks() -> None:
    model, params, X, _, batch = _setup("mlp")
    linear_fisher_diagonal(FunctionalModule(model, FlatParams(params)), X, batch.output_grad)
    assert all(not m._forward_hooks for m in model.modules())
