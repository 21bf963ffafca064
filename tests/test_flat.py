"""FlatParams.keep_if: after a trust-region trial the parameters hold the trial point if it was accepted
and the old point otherwise, on both paths (host branch on the CPU, device-side select elsewhere)."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from lightning_sqn._flat import FlatParams


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])  # "cuda": the select path, run on CPU tensors
@pytest.mark.parametrize("accepted", [True, False])
def test_keep_if_keeps_the_trial_point_only_when_accepted(device_type: str, accepted: bool) -> None:
    params = [nn.Parameter(torch.zeros(2, 3, dtype=torch.float64)), nn.Parameter(torch.zeros(4))]
    flat = FlatParams(params)
    flat.device = types.SimpleNamespace(type=device_type)  # only the branch reads it
    x = torch.arange(10, dtype=flat.dtype)
    x_trial = -torch.arange(10, dtype=flat.dtype) - 1
    flat.set_params(x_trial)  # the trial evaluation left the parameters at x_trial
    flat.keep_if(torch.tensor(accepted), x, x_trial)
    expected = x_trial if accepted else x
    torch.testing.assert_close(flat.gather_params(torch.empty_like(x)), expected, rtol=0, atol=0)
