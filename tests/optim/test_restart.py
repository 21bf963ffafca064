"""The steppers' restart: the curvature memory is discarded when a step cannot progress with it.

* Trust region (L-SR1 Alg. 1 and dense SR1): a rejected trial point with f(x_k + s_k) = f(x_k) exactly
  resets the model (pairs forgotten, the trial's pair not staged) and sets ``StepStats.restarted``; a
  rejected trial point whose loss differs does not. The radius follows the paper's rule either way.
* Line search: a search that finds no decrease resets the memory (Nocedal & Wright Sec. 7.2) and
  reports it the same way.

The closures give the gradient of a convex quadratic q but return a chosen loss value: the loss is
q(x) - q(x).detach() + c, whose value is exactly c and whose gradient is that of q, so the pairs
(s, y = A s) are exact and the acceptance test sees only c.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import lightning_sqn

DTYPE = torch.float64
N = 6


def _quadratic() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(N, N, generator=gen, dtype=DTYPE))
    A = Q @ torch.diag(torch.linspace(0.5, 4.0, N, dtype=DTYPE)) @ Q.T
    b = torch.randn(N, generator=gen, dtype=DTYPE)
    return A, b


def _closure(opt: torch.optim.Optimizer, x: Tensor, value: Callable[[int], float]) -> Callable[[], Tensor]:
    """Loss value ``value(call)`` (call = 0, 1, ...) with the gradient A x - b of q = x^T A x / 2 - b^T x."""
    A, b = _quadratic()
    calls = 0

    def closure() -> Tensor:
        nonlocal calls
        opt.zero_grad()
        q = 0.5 * x @ (A @ x) - b @ x
        loss = q - q.detach() + value(calls)
        calls += 1
        loss.backward()
        return loss

    return closure


TRUST_REGION = {
    "LSR1": lambda p: lightning_sqn.LSR1(p, memory=3, method="trust_region", initial_radius=1.0),
    "SR1": lambda p: lightning_sqn.SR1(p, method="trust_region", initial_radius=1.0),
}


@pytest.mark.parametrize("name", list(TRUST_REGION))
def test_trust_region_restarts_when_the_trial_loss_equals_the_current_one(name: str) -> None:
    x = torch.nn.Parameter(torch.zeros(N, dtype=DTYPE))
    opt = TRUST_REGION[name]([x])
    closure = _closure(opt, x, lambda call: 1.0)  # f(x + s) = f(x) at every trial point
    x0 = x.detach().clone()

    opt.step(closure)  # nothing stored yet: rejected, no restart, its pair staged
    first = opt.last_step
    assert not first.accepted and first.actual_reduction == 0.0 and first.predicted_reduction > 0.0
    assert first.restarted is False and first.next_radius == 0.5

    opt.step(closure)  # the staged pair is stored, then the trial is rejected with f unchanged
    second = opt.last_step
    assert second.pair_stored is True and not second.accepted and second.actual_reduction == 0.0
    assert second.restarted is True and second.pairs_in_memory == 0
    assert second.next_radius == 0.25  # the radius rule still applies (rho = 0 < 0.1)

    opt.step(closure)  # the restarted step staged no pair, so none is offered now
    third = opt.last_step
    assert third.pair_stored is None and third.restarted is False
    assert opt.counters.restarts == 1
    assert torch.equal(x.detach(), x0)  # every trial was rejected


@pytest.mark.parametrize("name", list(TRUST_REGION))
def test_trust_region_keeps_the_memory_when_the_trial_loss_differs(name: str) -> None:
    x = torch.nn.Parameter(torch.zeros(N, dtype=DTYPE))
    opt = TRUST_REGION[name]([x])
    closure = _closure(opt, x, lambda call: 1.0 + 1e-3 * call)  # every trial point is worse
    for _ in range(4):
        opt.step(closure)
        assert not opt.last_step.accepted and opt.last_step.actual_reduction < 0.0
        assert opt.last_step.restarted is False
    # every offered pair was kept (L-SR1's rank repair may drop an older, nearly collinear one)
    assert opt.last_step.pairs_in_memory >= 2 and opt.counters.restarts == 0


def test_line_search_restart_is_reported() -> None:
    """L-BFGS: a step with a decrease stores its pair; a search that finds none resets the memory."""
    x = torch.nn.Parameter(torch.zeros(N, dtype=DTYPE))
    opt = lightning_sqn.LBFGS([x], memory=3, line_search="default")
    flat_from = 3  # the first calls see a decreasing loss, later ones a constant one
    closure = _closure(opt, x, lambda call: -float(call) if call < flat_from else 1.0)
    opt.step(closure)
    assert opt.last_step.accepted and opt.last_step.restarted is False
    opt.step(closure)  # offers and stores the first pair; no decrease along d: restart
    step = opt.last_step
    assert step.pair_stored is True and not step.accepted
    assert step.restarted is True and step.pairs_in_memory == 0 and opt.counters.restarts == 1
