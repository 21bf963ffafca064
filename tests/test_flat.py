"""FlatParams: the flat layout round-trips, missing gradients count as zero, and the views of a
persistent buffer are made once (no view operations per step)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_sqn._device import HostReadCounter
from lightning_sqn._flat import FlatParams


def make() -> tuple[list[nn.Parameter], FlatParams]:
    params = [nn.Parameter(torch.zeros(2, 3, dtype=torch.float64)), nn.Parameter(torch.zeros(4))]
    return params, FlatParams(params)


def test_set_and_gather_round_trip_in_layout_order() -> None:
    params, flat = make()
    x = torch.arange(10, dtype=flat.dtype)
    flat.set_params(x)
    assert torch.equal(params[0].detach().flatten(), x[:6])
    assert params[1].dtype == torch.float32 and torch.equal(params[1].detach(), x[6:].float())
    torch.testing.assert_close(flat.gather_params(torch.empty_like(x)), x, rtol=0, atol=0)


def test_missing_gradient_counts_as_zero() -> None:
    params, flat = make()
    params[1].grad = torch.ones(4)
    g = flat.gather_grads(torch.full((10,), 7.0, dtype=flat.dtype))
    assert torch.equal(g, torch.cat((torch.zeros(6), torch.ones(4))).double())


def test_views_of_a_persistent_buffer_are_made_once() -> None:
    _, flat = make()
    buf = flat.new_zeros()
    flat.gather_params(buf)
    with HostReadCounter() as count:
        flat.gather_params(buf)
        flat.set_params(buf)
    assert count.ops == 2  # one foreach copy each, no split or view
    other = flat.new_zeros()  # a different buffer at another address gets its own views
    assert flat.views(other)[0].data_ptr() == other.data_ptr()


def test_step_params_equals_writing_x_plus_s() -> None:
    """In place x + s on the parameters gives the values of x + s formed in the flat (state-dtype) buffer
    and then written, also for a bfloat16 parameter (one rounding, from float32)."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 4, dtype=torch.bfloat16)), nn.Parameter(torch.randn(5))]
    flat = FlatParams(params)
    assert flat.dtype == torch.float32
    x = flat.gather_params()
    s = 1e-2 * torch.randn(flat.numel)
    flat.step_params(s)
    in_place = [p.detach().clone() for p in params]
    flat.set_params(x + s)
    for a, p in zip(in_place, params, strict=True):
        assert torch.equal(a, p.detach())
    # with a step length: x + alpha d, as the line search's first trial point forms it
    flat.set_params(x)
    flat.step_params(s, alpha=0.37)
    in_place = [p.detach().clone() for p in params]
    flat.set_params(torch.add(x, s, alpha=0.37))
    for a, p in zip(in_place, params, strict=True):
        assert torch.equal(a, p.detach())
