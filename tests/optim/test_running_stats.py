"""BatchNorm running statistics advance once per optimizer step, from the evaluation at the accepted point."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lightning_sqn

DT = torch.float64


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=0.3), nn.Tanh(), nn.Linear(6, 1)).to(DT)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 4, generator=g, dtype=DT), torch.randn(32, 1, generator=g, dtype=DT)


def _expected_stats(model_at: nn.Module, bn_start: dict, X: torch.Tensor) -> dict:
    """Hand computation: one forward in training mode from the step's starting statistics."""
    m = copy.deepcopy(model_at)
    m[1].load_state_dict(bn_start)
    h = m[0](X)
    mom = m[1].momentum
    mean, var = h.mean(0), h.var(0, unbiased=True)
    return {
        "running_mean": (1 - mom) * bn_start["running_mean"] + mom * mean.detach(),
        "running_var": (1 - mom) * bn_start["running_var"] + mom * var.detach(),
        "num_batches_tracked": bn_start["num_batches_tracked"] + 1,
    }


@pytest.mark.parametrize("method", ["trust_region", "line_search"])
def test_statistics_advance_once_from_the_accepted_point(method) -> None:
    model = _model()
    X, y = _data()
    opt = lightning_sqn.LSR1(model.parameters(), method=method)
    opt.track_running_stats(model)

    def closure():
        loss = nn.functional.mse_loss(model(X), y)
        loss.backward()
        return loss

    seen = {"accepted": 0, "rejected": 0}
    for _ in range(12):
        before = copy.deepcopy(model)
        bn_start = copy.deepcopy(model[1].state_dict())
        opt.step(closure)
        accepted = bool(opt.last_step.accepted)
        seen["accepted" if accepted else "rejected"] += 1
        # the accepted point is the model after the step (x_k + s_k, or x_k when rejected)
        expected = _expected_stats(model if accepted else before, bn_start, X)
        got = model[1].state_dict()
        for k, v in expected.items():
            torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-14)
    assert int(model[1].num_batches_tracked) == 12  # once per step, not once per closure call
    assert opt.counters.closure_evals > 12
    if method == "trust_region":
        assert seen["rejected"] > 0 and seen["accepted"] > 0, seen  # both branches exercised


def test_without_tracking_every_evaluation_moves_the_statistics() -> None:
    """The problem being solved: the default PyTorch behaviour counts every closure call."""
    model = _model()
    X, y = _data()
    opt = lightning_sqn.LSR1(model.parameters())

    def closure():
        loss = nn.functional.mse_loss(model(X), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert int(model[1].num_batches_tracked) == 2


def test_non_finite_start_restores_the_statistics() -> None:
    model = _model()
    X, y = _data()
    opt = lightning_sqn.LSR1(model.parameters())
    opt.track_running_stats(model)
    start = copy.deepcopy(model[1].state_dict())

    def closure():
        loss = nn.functional.mse_loss(model(X), y) * float("nan")
        loss.backward()
        return loss

    with pytest.raises(lightning_sqn.NonFiniteLossError):
        opt.step(closure)
    for k, v in start.items():
        assert torch.equal(model[1].state_dict()[k], v)


def test_sync_batchnorm_modules_are_tracked_too() -> None:
    """``sync_batchnorm=True`` converts BatchNorm to SyncBatchNorm; its buffers follow the same rule.

    Outside an initialised process group SyncBatchNorm computes like BatchNorm, so this runs on the CPU;
    the cross-rank statistics themselves are torch's (CUDA-only) and are not exercised here.
    """
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_model())
    assert isinstance(model[1], nn.SyncBatchNorm)
    X, y = _data()
    opt = lightning_sqn.LSR1(model.parameters())
    opt.track_running_stats(model)

    def closure():
        loss = nn.functional.mse_loss(model(X), y)
        loss.backward()
        return loss

    for _ in range(5):
        before = copy.deepcopy(model)
        bn_start = copy.deepcopy(model[1].state_dict())
        opt.step(closure)
        at = model if bool(opt.last_step.accepted) else before
        expected = _expected_stats(at, bn_start, X)
        for k, v in expected.items():
            torch.testing.assert_close(model[1].state_dict()[k], v, rtol=1e-12, atol=1e-14)
    assert int(model[1].num_batches_tracked) == 5
