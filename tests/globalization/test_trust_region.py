"""TrustRegionPolicy against hand-made tables following L-SR1 Alg. 1 lines 13–25 (Ramamurthy & Duffy)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_sqn.globalization.trust_region import TrustRegionPolicy

DTYPE = torch.float64
INF = math.inf


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=DTYPE)


def test_defaults_are_the_papers() -> None:
    p = TrustRegionPolicy()
    assert (p.eta, p.low, p.high, p.boundary_fraction, p.decrease, p.increase) == (
        1e-4,
        0.1,
        0.75,
        0.8,
        0.5,
        2.0,
    )
    assert (p.min_radius, p.max_radius) == (0.0, INF)


# radius 1.0, default policy. Columns: rho, ||s||, expected new radius, expected accept.
TABLE = [
    (0.9, 1.0, 2.0, True),  # line 19-21: rho > 0.75 and ||s|| > 0.8 -> double
    (0.9, 0.81, 2.0, True),
    (0.9, 0.8, 1.0, True),  # ||s|| = 0.8 Delta is not > 0.8 Delta: unchanged (line 18)
    (0.9, 0.3, 1.0, True),  # very successful but interior step: unchanged
    (0.75, 1.0, 1.0, True),  # rho = high is not > high
    (0.5, 1.0, 1.0, True),  # between low and high: unchanged
    (0.1, 1.0, 1.0, True),  # rho = low is not < low
    (0.099, 1.0, 0.5, True),  # line 23-24: halve, but still accepted (rho > eta)
    (2e-4, 0.2, 0.5, True),
    (1e-4, 1.0, 0.5, False),  # rho = eta is not > eta: rejected (line 13, 16)
    (0.0, 1.0, 0.5, False),
    (-3.0, 1.0, 0.5, False),
    (-INF, 1.0, 0.5, False),
    (5.0, 1.0, 2.0, True),  # rho > 1 (better than predicted)
]


@pytest.mark.parametrize(("rho", "step_norm", "expected_radius", "expected_accept"), TABLE)
def test_algorithm1_table(
    rho: float, step_norm: float, expected_radius: float, expected_accept: bool
) -> None:
    p = TrustRegionPolicy()
    new = p.update_radius(t(1.0), t(rho), t(step_norm))
    assert float(new) == expected_radius
    assert bool(p.accept(t(rho))) is expected_accept


def test_vectorised_over_table() -> None:
    p = TrustRegionPolicy()
    rho, step_norm, radius, accept = (t([row[i] for row in TABLE]) for i in range(4))
    torch.testing.assert_close(p.update_radius(torch.ones_like(rho), rho, step_norm), radius, rtol=0, atol=0)
    assert torch.equal(p.accept(rho), accept.bool())


def test_boundary_fraction_scales_with_radius() -> None:
    p = TrustRegionPolicy(boundary_fraction=0.5)
    radius = t([4.0, 4.0, 0.1, 0.1])
    step_norm = t([2.01, 2.0, 0.051, 0.05])
    rho = t([0.9, 0.9, 0.9, 0.9])
    torch.testing.assert_close(
        p.update_radius(radius, rho, step_norm), t([8.0, 4.0, 0.2, 0.1]), rtol=0, atol=0
    )


def test_custom_factors_and_thresholds() -> None:
    p = TrustRegionPolicy(eta=0.05, low=0.25, high=0.9, decrease=0.25, increase=3.0, boundary_fraction=1.0)
    radius = t([2.0, 2.0, 2.0, 2.0, 2.0])
    rho = t([0.95, 0.95, 0.8, 0.2, 0.04])
    step_norm = t([2.0, 1.99, 2.0, 2.0, 2.0])
    # ||s|| = Delta is not > 1.0 * Delta: the boundary-fraction 1.0 test can never pass
    torch.testing.assert_close(
        p.update_radius(radius, rho, step_norm), t([2.0, 2.0, 2.0, 0.5, 0.5]), rtol=0, atol=0
    )
    assert p.accept(rho).tolist() == [True, True, True, True, False]


def test_clamping() -> None:
    p = TrustRegionPolicy(min_radius=0.3, max_radius=5.0)
    radius = t([4.0, 0.5, 1.0, 0.1, 10.0])
    rho = t([0.9, 0.0, 0.5, 0.5, 0.5])
    step_norm = t([4.0, 0.5, 1.0, 0.1, 1.0])
    # grow past max -> 5; shrink below min -> 0.3; unchanged; a radius already outside is clamped too
    torch.testing.assert_close(
        p.update_radius(radius, rho, step_norm), t([5.0, 0.3, 1.0, 0.3, 5.0]), rtol=0, atol=0
    )


def test_update_radius_keeps_dtype_and_device() -> None:
    p = TrustRegionPolicy()
    radius = torch.tensor(1.0, dtype=torch.float32)
    new = p.update_radius(
        radius, torch.tensor(0.9, dtype=torch.float32), torch.tensor(1.0, dtype=torch.float32)
    )
    assert new.dtype == torch.float32 and new.ndim == 0 and float(new) == 2.0


def test_nan_rho_shrinks_and_rejects() -> None:
    p = TrustRegionPolicy()
    assert float(p.update_radius(t(1.0), t(math.nan), t(1.0))) == 0.5
    assert not bool(p.accept(t(math.nan)))


def test_rho_ratio() -> None:
    p = TrustRegionPolicy()
    rho = p.rho(t([1.0, -0.5, 3.0, 0.0]), t([2.0, 1.0, 1.5, 4.0]))
    torch.testing.assert_close(rho, t([0.5, -0.5, 2.0, 0.0]), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("ared", "pred"),
    [
        (math.nan, 1.0),  # trial loss NaN
        (-INF, 1.0),  # trial loss +inf
        (INF, 1.0),  # trial loss -inf
        (1.0, 0.0),  # no predicted reduction
        (1.0, -1.0),  # model increased: solver failure
        (-1.0, -1.0),  # both negative: the ratio would be 1, but the model step is bad
        (1.0, math.nan),
        (1.0, INF),
        (0.0, -1.0),
    ],
)
def test_rho_degenerate_is_minus_inf(ared: float, pred: float) -> None:
    p = TrustRegionPolicy()
    rho = p.rho(t(ared), t(pred))
    assert float(rho) == -INF
    assert not bool(p.accept(rho))
    assert float(p.update_radius(t(1.0), rho, t(1.0))) == 0.5


def test_rho_null_step_is_one() -> None:
    p = TrustRegionPolicy()
    rho = p.rho(t(0.0), t(0.0))
    assert float(rho) == 1.0
    assert bool(p.accept(rho))
    # a null step never exceeds boundary_fraction * radius: the radius stays
    assert float(p.update_radius(t(1.0), rho, t(0.0))) == 1.0


def test_rho_is_never_nan_and_promotes_dtype() -> None:
    p = TrustRegionPolicy()
    values = [0.0, 1.0, -1.0, math.nan, INF, -INF]
    ared = t([a for a in values for _ in values])
    pred = torch.tensor([b for _ in values for b in values], dtype=torch.float32)
    rho = p.rho(ared, pred)
    assert rho.dtype == DTYPE
    assert not torch.isnan(rho).any()


def test_methods_do_not_sync_on_values() -> None:
    """Works under torch.func.vmap, which rejects data-dependent Python control flow and .item()."""
    p = TrustRegionPolicy()
    ared, pred = t([0.9, -1.0, 0.0]), t([1.0, 1.0, 0.0])
    radius, step_norm = t([1.0, 1.0, 1.0]), t([1.0, 1.0, 0.0])
    rho = torch.func.vmap(p.rho)(ared, pred)
    new = torch.func.vmap(p.update_radius)(radius, rho, step_norm)
    torch.testing.assert_close(new, t([2.0, 0.5, 1.0]), rtol=0, atol=0)
    assert torch.func.vmap(p.accept)(rho).tolist() == [True, False, True]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eta": -1e-4},
        {"eta": 1.0},
        {"eta": 0.2, "low": 0.1},  # eta > low
        {"low": 0.0, "eta": 0.0},
        {"low": 0.8, "high": 0.75},
        {"low": 0.75, "high": 0.75},
        {"high": 1.0},
        {"decrease": 0.0},
        {"decrease": 1.0},
        {"increase": 1.0},
        {"increase": INF},
        {"boundary_fraction": 0.0},
        {"boundary_fraction": 1.01},
        {"min_radius": -1.0},
        {"min_radius": 2.0, "max_radius": 2.0},
        {"min_radius": 3.0, "max_radius": 2.0},
    ],
)
def test_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="got"):
        TrustRegionPolicy(**kwargs)


def test_allowed_edge_parameters() -> None:
    TrustRegionPolicy(eta=0.0)
    TrustRegionPolicy(eta=0.1, low=0.1)
    TrustRegionPolicy(boundary_fraction=1.0, min_radius=0.0, max_radius=1e-8)


def test_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        TrustRegionPolicy(1e-4)  # type: ignore[misc]
    p = TrustRegionPolicy()
    with pytest.raises(AttributeError):
        p.eta = 0.5  # type: ignore[misc]
