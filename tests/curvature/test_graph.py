"""GradientGraph: products from a kept gradient graph equal the dense Hessian, batched or looped."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from lightning_sqn.curvature.graph import GradientGraph, has_graph, take_graph_from_grads


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    X = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return net, X, y


def _dense_hessian(net, X, y):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    x0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def f(flat):
        chunks = flat.split([s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return nn.functional.cross_entropy(functional_call(net, params, (X,)), y)

    return hessian(f)(x0)


@pytest.mark.parametrize("batched", [True, False, None])
def test_block_products_equal_the_dense_hessian(batched) -> None:
    net, X, y = _setup()
    params = list(net.parameters())
    grads = torch.autograd.grad(nn.functional.cross_entropy(net(X), y), params, create_graph=True)
    graph = GradientGraph(grads, params)
    H = _dense_hessian(net, X, y)
    V = torch.randn(4, H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(graph.hvp(V, batched=batched), V @ H, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(graph.hvp(V[0]), H @ V[0], rtol=1e-10, atol=1e-12)
    assert graph.products == 5


def test_take_graph_from_backward_detaches_p_grad() -> None:
    net, X, y = _setup()
    params = list(net.parameters())
    assert take_graph_from_grads(params) is None  # no gradients at all
    loss = nn.functional.cross_entropy(net(X), y)
    with warnings.catch_warnings():  # PyTorch warns once per process about the reference cycle
        warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
        loss.backward(create_graph=True)
    grads = take_graph_from_grads(params)
    assert grads is not None and has_graph(grads)
    assert all(not p.grad.requires_grad for p in params)  # the cycle is broken
    H = _dense_hessian(net, X, y)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(GradientGraph(grads, params).hvp(v), H @ v, rtol=1e-10, atol=1e-12)


def test_plain_backward_gives_no_graph() -> None:
    net, X, y = _setup()
    nn.functional.cross_entropy(net(X), y).backward()
    params = list(net.parameters())
    grads_before = [p.grad for p in params]
    assert take_graph_from_grads(params) is None
    assert all(p.grad is g for p, g in zip(params, grads_before, strict=True))
