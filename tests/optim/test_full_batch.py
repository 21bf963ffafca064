"""``full_batch=True``: f and g at the point a step ends on are reused as the next step's f(x_k), g(x_k).

With a closure that computes the same function at every call, the reused values are bitwise those a
fresh evaluation would give, so a full-batch run takes bitwise the same iterates as the default run
while evaluating once per step less (for a trust region: one evaluation per step instead of two).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_sqn

FACTORIES = {
    "lsr1_tr": lambda p, fb: lightning_sqn.LSR1(p, full_batch=fb),
    "lsr1_tr_eigen": lambda p, fb: lightning_sqn.LSR1(p, gamma="eigen", full_batch=fb),
    "lsr1_ls": lambda p, fb: lightning_sqn.LSR1(p, method="line_search", full_batch=fb),
    "lbfgs": lambda p, fb: lightning_sqn.LBFGS(p, full_batch=fb),
    "lbfgs_forget": lambda p, fb: lightning_sqn.LBFGS(p, forget_every=4, full_batch=fb),
    "bfgs": lambda p, fb: lightning_sqn.BFGS(p, full_batch=fb),
    "sr1_tr": lambda p, fb: lightning_sqn.SR1(p, full_batch=fb),
    "sampled_lsr1_gradient": lambda p, fb: lightning_sqn.SampledLSR1(
        p, memory=3, sampling="gradient", seed=0, full_batch=fb
    ),
    "sampled_lbfgs_gradient": lambda p, fb: lightning_sqn.SampledLBFGS(
        p, memory=3, sampling="gradient", seed=0, full_batch=fb
    ),
}
STEPS = 15


def run(name: str, full_batch: bool) -> tuple[list[float], torch.Tensor, int, list[int]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    X = torch.randn(64, 3, dtype=torch.float64)
    y = torch.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3]
    opt = FACTORIES[name](model.parameters(), full_batch)
    calls = [0]

    def closure() -> torch.Tensor:
        calls[0] += 1
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), y)
        loss.backward()
        return loss

    losses, evals = [], []
    for _ in range(STEPS):
        opt.step(closure)
        losses.append(float(opt.last_step.loss))
        evals.append(opt.last_step.closure_evals)
    assert opt.counters.closure_evals == calls[0] == sum(evals)
    return losses, torch.nn.utils.parameters_to_vector(model.parameters()).detach(), calls[0], evals


@pytest.mark.parametrize("name", list(FACTORIES))
def test_full_batch_takes_the_same_iterates_with_one_evaluation_less_per_step(name: str) -> None:
    losses, x, calls, _ = run(name, full_batch=False)
    fb_losses, fb_x, fb_calls, fb_evals = run(name, full_batch=True)
    assert fb_losses == losses
    assert torch.equal(fb_x, x)
    assert fb_calls == calls - (STEPS - 1)  # every step after the first reuses f, g at x_k
    if name in ("lsr1_tr", "lsr1_tr_eigen", "sr1_tr"):
        assert fb_evals == [2] + [1] * (STEPS - 1)


def test_full_batch_is_refused_with_hessian_sampling_and_checked() -> None:
    p = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="sampling='hessian'"):
        lightning_sqn.SampledLSR1(p, full_batch=True)
    with pytest.raises(ValueError, match="full_batch must be True or False"):
        lightning_sqn.LSR1(p, full_batch="yes")
    with pytest.raises(ValueError, match="full_batch must be True or False"):
        lightning_sqn.LBFGS(p, full_batch=1)
