"""Hessian and GGN products against dense float64 references built with torch.func."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from lightning_sqn.curvature import ggn_vp, hvp_from_graph, hvp_functional, output_hessian_vp

# Forward-mode AD loads torch's jvp decompositions on first use, which calls the deprecated
# torch.jit.script inside torch (torch 2.14): not our code.

RTOL, ATOL = 1e-10, 1e-12

LOSS_FNS = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def _problem(arch: str, loss: str, seed: int = 0):
    """A float64 network, a batch and targets suited to ``loss``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = (_mlp() if arch == "mlp" else _cnn()).double()
    batch = 4
    inputs = torch.randn(
        (batch, 3) if arch == "mlp" else (batch, 1, 6, 6), generator=gen, dtype=torch.float64
    )
    classes = 4 if arch == "mlp" else 3
    if loss == "cross_entropy":
        targets = torch.randint(classes, (batch,), generator=gen)
    elif loss == "mse":
        targets = torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    else:
        targets = torch.rand(batch, classes, generator=gen, dtype=torch.float64)
    return module, inputs, targets


def _flat_forward(module: nn.Module, inputs):
    names = [n for n, _ in module.named_parameters()]
    params = [p for _, p in module.named_parameters()]
    x = torch.cat([p.detach().reshape(-1) for p in params])

    def forward(flat):
        chunks = flat.split([p.numel() for p in params])
        return functional_call(
            module, {n: c.view(p.shape) for n, c, p in zip(names, chunks, params)}, (inputs,)
        )

    return x, forward


def _dense_hessian(module, loss, inputs, targets):
    x, forward = _flat_forward(module, inputs)
    return hessian(lambda flat: LOSS_FNS[loss](forward(flat), targets))(x)


def _dense_ggn(module, loss, inputs, targets):
    x, forward = _flat_forward(module, inputs)
    z = forward(x).detach()
    J = jacrev(forward)(x).reshape(z.numel(), x.numel())
    H_L = hessian(lambda out: LOSS_FNS[loss](out, targets))(z).reshape(z.numel(), z.numel())
    return J.T @ H_L @ J


def _block(n: int, k: int | None, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    shape = (n,) if k is None else (n, k)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


CASES = [(arch, loss) for arch in ("mlp", "cnn") for loss in LOSS_FNS]
KS = [None, 1, 3, 5]


@pytest.mark.parametrize("arch,loss", CASES)
def test_hvp_products_match_dense_hessian(arch, loss):
    module, inputs, targets = _problem(arch, loss)
    H = _dense_hessian(module, loss, inputs, targets)
    params = list(module.parameters())
    grads = torch.autograd.grad(LOSS_FNS[loss](module(inputs), targets), params, create_graph=True)
    for k in KS:
        V = _block(H.shape[0], k)
        expected = H @ V
        # called repeatedly on the same graph
        torch.testing.assert_close(hvp_from_graph(grads, params, V), expected, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(
            hvp_functional(module, LOSS_FNS[loss], inputs, targets, V), expected, rtol=RTOL, atol=ATOL
        )


@pytest.mark.parametrize("arch,loss", CASES)
def test_ggn_products_match_dense_ggn(arch, loss):
    module, inputs, targets = _problem(arch, loss)
    G = _dense_ggn(module, loss, inputs, targets)
    for k in KS:
        V = _block(G.shape[0], k)
        torch.testing.assert_close(ggn_vp(module, loss, inputs, targets, V), G @ V, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("arch,loss", CASES)
def test_ggn_is_symmetric_psd(arch, loss):
    module, inputs, targets = _problem(arch, loss)
    G = _dense_ggn(module, loss, inputs, targets)
    torch.testing.assert_close(G, G.T, rtol=RTOL, atol=ATOL)
    assert torch.linalg.eigvalsh(G).min() >= -1e-12 * G.abs().max()
    V = _block(G.shape[0], 5, seed=3)
    quad = (V * ggn_vp(module, loss, inputs, targets, V)).sum(0)
    assert (quad >= -1e-12).all()


@pytest.mark.parametrize("arch,loss", [("mlp", "cross_entropy"), ("cnn", "mse")])
def test_batched_block_equals_separate_products(arch, loss):
    module, inputs, targets = _problem(arch, loss)
    params = list(module.parameters())
    n = sum(p.numel() for p in params)
    grads = torch.autograd.grad(LOSS_FNS[loss](module(inputs), targets), params, create_graph=True)
    V = _block(n, 5)
    products = {
        "graph": lambda v: hvp_from_graph(grads, params, v),
        "functional": lambda v: hvp_functional(module, LOSS_FNS[loss], inputs, targets, v),
        "ggn": lambda v: ggn_vp(module, loss, inputs, targets, v),
    }
    for name, product in products.items():
        separate = torch.stack([product(V[:, j]) for j in range(V.shape[1])], dim=1)
        torch.testing.assert_close(product(V), separate, rtol=RTOL, atol=ATOL, msg=name)


def test_output_hessian_matches_dense_for_extra_dims():
    """Cross-entropy over (B, C, d) outputs: the class dim is 1 and the mean runs over B * d."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    targets = torch.randint(3, (2, 4), generator=gen)
    H = hessian(lambda out: F.cross_entropy(out, targets))(z).reshape(z.numel(), z.numel())
    U = torch.randn(3, *z.shape, generator=gen, dtype=torch.float64)
    got = output_hessian_vp("cross_entropy", z, U).reshape(3, -1)
    torch.testing.assert_close(got, U.reshape(3, -1) @ H.T, rtol=RTOL, atol=ATOL)


def test_graph_without_curvature_and_unused_params():
    """A loss linear in one parameter and independent of another gives zero Hessian rows."""
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, dtype=torch.float64, requires_grad=True)
    loss = (a**3).sum() + b.sum()
    grads = torch.autograd.grad(loss, [a, b, c], create_graph=True, allow_unused=True, materialize_grads=True)
    V = _block(7, 3)
    H = torch.zeros(7, 7, dtype=torch.float64)
    H[:3, :3] = torch.diag(6 * a.detach())
    torch.testing.assert_close(hvp_from_graph(grads, [a, b, c], V), H @ V, rtol=RTOL, atol=ATOL)


def test_bad_arguments():
    module, inputs, targets = _problem("mlp", "mse")
    with pytest.raises(ValueError, match="loss must be one of"):
        ggn_vp(module, "hinge", inputs, targets, torch.zeros(49, dtype=torch.float64))
    with pytest.raises(ValueError, match="V must have shape"):
        ggn_vp(module, "mse", inputs, targets, torch.zeros(48, dtype=torch.float64))
    with pytest.raises(ValueError, match="V must have shape"):
        hvp_functional(module, F.mse_loss, inputs, targets, torch.zeros(49, 2, 2, dtype=torch.float64))
