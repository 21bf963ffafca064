"""The diagonal share of a Hessian (Kohler et al., Sec. 3.2): dense formula, Props. 1-2 against Monte Carlo,
the Hessian-column route against torch.func.hessian, and the column-sample estimator's error bar."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from lightning_sqn.curvature.diagonal_share import (
    diagonal_share,
    hessian_diagonal_share,
    ols_share,
    wigner_share,
)


def test_dense_share_by_hand() -> None:
    A = torch.tensor([[2.0, -1.0], [-1.0, -4.0]])
    assert diagonal_share(A) == pytest.approx(6.0 / 8.0)
    with pytest.raises(ValueError, match="square"):
        diagonal_share(torch.ones(2, 3))
    with pytest.raises(ValueError, match="zero matrix"):
        diagonal_share(torch.zeros(3, 3))


@pytest.mark.parametrize(("sigma_diag", "sigma_off"), [(1.0, 1.0), (2.0, 0.5)])
def test_wigner_share_matches_monte_carlo(sigma_diag: float, sigma_off: float) -> None:
    n, draws = 7, 4000
    g = torch.Generator().manual_seed(0)
    upper = torch.randn(draws, n, n, generator=g, dtype=torch.float64).triu(1) * sigma_off
    W = upper + upper.transpose(1, 2)
    W = W + torch.diag_embed(torch.randn(draws, n, generator=g, dtype=torch.float64) * sigma_diag)
    expected_abs = W.abs().mean(dim=0)
    assert diagonal_share(expected_abs) == pytest.approx(wigner_share(n, sigma_diag, sigma_off), rel=0.02)
    assert wigner_share(n) == pytest.approx(1.0 / n)


def test_ols_share_matches_monte_carlo_for_large_b() -> None:
    d, b, draws = 6, 400, 3000
    g = torch.Generator().manual_seed(1)
    X = torch.randn(draws, b, d, generator=g, dtype=torch.float64) * 3.0  # the variance cancels
    H = X.transpose(1, 2) @ X / b
    assert diagonal_share(H.abs().mean(dim=0)) == pytest.approx(ols_share(d, b), rel=0.02)
    # more examples per Hessian: closer to diagonal
    assert ols_share(d, 4 * b) > ols_share(d, b)


def test_baselines_reject_bad_sizes() -> None:
    with pytest.raises(ValueError):
        wigner_share(0)
    with pytest.raises(ValueError):
        ols_share(10, 0)


def _net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    t = torch.randint(0, 3, (16,))
    return net, x, t


def _dense_hessian(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            params[name] = flat[offset : offset + size].view(shape)
            offset += size
        return nn.functional.cross_entropy(functional_call(net, params, (x,)), t)

    return hessian(loss)(flat0)


def test_all_columns_equal_the_dense_hessian_share() -> None:
    net, x, t = _net()
    H = _dense_hessian(net, x, t)
    share = hessian_diagonal_share(net, nn.functional.cross_entropy, x, t, chunk=7)
    assert share.exact and share.stderr == 0.0 and share.n == H.shape[0] == 57
    assert share.value == pytest.approx(diagonal_share(H), rel=1e-12)


def test_stratified_column_sample_is_centred_with_an_honest_error_bar() -> None:
    net, x, t = _net()
    exact = diagonal_share(_dense_hessian(net, x, t))
    estimates, errors = [], []
    for seed in range(200):
        share = hessian_diagonal_share(
            net,
            nn.functional.cross_entropy,
            x,
            t,
            columns=20,
            chunk=32,
            generator=torch.Generator().manual_seed(seed),
        )
        assert not share.exact and share.columns == 21  # 11 + 2 + 6 + 2 of the tensors' 30, 6, 18, 3 columns
        estimates.append(share.value)
        errors.append(share.stderr)
    spread = torch.tensor(estimates).std().item()
    assert spread > 0
    assert abs(sum(estimates) / len(estimates) - exact) < 0.25 * spread
    assert 0.7 < (sum(errors) / len(errors)) / spread < 1.4
    with pytest.raises(ValueError, match="columns"):
        hessian_diagonal_share(net, nn.functional.cross_entropy, x, t, columns=1)
