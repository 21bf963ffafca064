"""Hessian-vector products in Lightning: the ``sqn`` strategy keeps the graph, other strategies refuse.

The LightningModule is unchanged (a plain ``training_step`` returning the loss): under
``strategy="sqn"`` the strategy's backward keeps the autograd graph for the evaluations where the
optimizer asks for it, and the products equal those of a plain-PyTorch closure that calls
``loss.backward(create_graph=True)``. (The 2-process ``ddp_sqn`` runs are in ``test_ddp_sqn.py``.)
"""

from __future__ import annotations

import warnings

import lightning
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lit_models import Regression, regression_data
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn

NUM_SAMPLES, BATCH_SIZE, STEPS = 128, 64, 6


def _make(p):
    return lightning_sqn.SampledLSR1(p, memory=3, sample_radius=0.1, seed=0)


class Recording(Regression):
    """Records the hooks that see each evaluation's gradients."""

    def __init__(self) -> None:
        super().__init__(_make, NUM_SAMPLES)
        self.before_backward = 0
        self.after_backward_grads: list[bool] = []

    def on_before_backward(self, loss) -> None:
        self.before_backward += 1

    def on_after_backward(self) -> None:
        grads = [p.grad for p in self.parameters()]
        # every hook sees plain (graph-free) gradients, also on graph-keeping evaluations
        self.after_backward_grads.append(all(g is not None and not g.requires_grad for g in grads))


def _trainer(strategy: str) -> lightning.Trainer:
    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(*regression_data(NUM_SAMPLES)), batch_size=BATCH_SIZE, shuffle=False)


def test_sqn_strategy_keeps_the_graph_without_changes_to_the_module() -> None:
    model = Recording()
    trainer = _trainer("sqn")
    trainer.fit(model, _loader())
    (opt,) = trainer.optimizers
    assert opt.counters.steps == STEPS
    assert model.training_step_calls == 2 * STEPS == opt.counters.closure_evals
    assert model.before_backward == 2 * STEPS and all(model.after_backward_grads)
    record = opt.last_step.as_dict()
    assert record["hessian_products"] == 3 and record["pairs_sampled"] == 3
    assert opt.evaluation.graph is None  # released after the step


def test_lightning_run_equals_plain_pytorch_with_create_graph() -> None:
    model = Regression(_make, NUM_SAMPLES)
    _trainer("sqn").fit(model, _loader())

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = _make(net.parameters())
    X, y = regression_data(NUM_SAMPLES)
    for t in range(STEPS):
        xb, yb = (
            X[(t % 2) * BATCH_SIZE : (t % 2 + 1) * BATCH_SIZE],
            y[(t % 2) * BATCH_SIZE : (t % 2 + 1) * BATCH_SIZE],
        )

        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(xb), yb)
            if opt.graph_requested:
                with warnings.catch_warnings():  # PyTorch's reference-cycle note (warned once)
                    warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
                    loss.backward(create_graph=True)
            else:
                loss.backward()
            return loss

        opt.step(closure)
    for p, q in zip(model.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("strategy", ["auto", "single_device"])
def test_other_strategies_refuse_before_any_change(strategy: str) -> None:
    model = Regression(_make, NUM_SAMPLES)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(MisconfigurationException, match="strategy='sqn'"):
        _trainer(strategy).fit(model, _loader())
    assert model.training_step_calls == 0
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), q)


def test_optimizers_without_products_keep_the_normal_backward() -> None:
    model = Recording()
    model.make_optimizer = lambda p: lightning_sqn.SampledLSR1(p, memory=3, sampling="gradient", seed=0)
    trainer = _trainer("sqn")
    trainer.fit(model, _loader())
    (opt,) = trainer.optimizers
    assert not opt.needs_graph
    assert model.training_step_calls == (3 + 2) * STEPS
    assert opt.last_step.as_dict()["hessian_products"] == 0
