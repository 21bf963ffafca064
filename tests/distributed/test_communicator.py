"""The optimizer-side hook: a communicator averages every closure loss; no communicator under several
processes is refused."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

import lightning_sqn
from lightning_sqn.distributed import communicator as comm_mod


class HalvingCommunicator:
    """Stands in for a 2-rank all-reduce whose other rank reports loss 0: mean = loss / 2."""

    world_size = 2

    def __init__(self) -> None:
        self.calls = 0

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return tensor / 2


def _problem():
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)

    def closure():
        loss = (x**2).sum()
        loss.backward()
        return loss

    return x, closure


@pytest.mark.parametrize("method", ["trust_region", "line_search"])
def test_every_closure_loss_goes_through_the_communicator(method) -> None:
    x, closure = _problem()
    opt = lightning_sqn.LSR1([x], method=method)
    opt.communicator = HalvingCommunicator()
    loss = opt.step(closure)
    assert opt.communicator.calls == opt.last_step.closure_evals >= 2
    assert float(loss) == pytest.approx(5.0 / 2)


def test_several_processes_without_communicator_are_refused(monkeypatch) -> None:
    x, closure = _problem()
    opt = lightning_sqn.LBFGS([x])
    monkeypatch.setattr(comm_mod, "_world_size", lambda: 2)
    with pytest.raises(MisconfigurationException, match="ddp_sqn"):
        opt.step(closure)
    assert torch.equal(x.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt.communicator = HalvingCommunicator()
    opt.step(closure)  # with a communicator the same setting steps
    assert opt.counters.steps == 1
