"""The optimizers inside ``lightning.Trainer`` (automatic optimization, one CPU device, float32).

Lightning passes its training closure to ``optimizer.step(closure=...)``; the closure runs
``training_step``, ``zero_grad`` and ``backward``. So ``training_step`` runs once per closure evaluation:
exactly twice per L-SR1 trust-region step, and as often as the line search evaluates for L-BFGS.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning
import torch
from lit_models import MakeOptimizer, regression_data
from lit_models import Regression as _Regression
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn

NUM_SAMPLES, BATCH_SIZE, EPOCHS = 256, 128, 10
STEPS = EPOCHS * NUM_SAMPLES // BATCH_SIZE


def _data() -> tuple[Tensor, Tensor]:
    return regression_data(NUM_SAMPLES)


class Regression(_Regression):
    def __init__(self, make_optimizer: MakeOptimizer) -> None:
        super().__init__(make_optimizer, NUM_SAMPLES)


def _fit(make_optimizer: Callable[..., torch.optim.Optimizer]) -> tuple[Regression, lightning.Trainer]:
    model = Regression(make_optimizer)
    loader = DataLoader(TensorDataset(*_data()), batch_size=BATCH_SIZE, shuffle=False)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    return model, trainer


def test_lsr1_trust_region_trains_with_two_training_steps_per_step() -> None:
    initial = Regression(lambda p: lightning_sqn.LSR1(p)).full_loss()
    model, trainer = _fit(lambda p: lightning_sqn.LSR1(p))
    (opt,) = trainer.optimizers
    assert isinstance(opt, lightning_sqn.LSR1)
    assert trainer.global_step == STEPS
    assert opt.counters.steps == trainer.global_step
    assert model.training_step_calls == 2 * trainer.global_step
    assert opt.counters.closure_evals == model.training_step_calls
    assert model.full_loss() < 0.25 * initial


def test_lbfgs_trains() -> None:
    initial = Regression(lambda p: lightning_sqn.LBFGS(p)).full_loss()
    model, trainer = _fit(lambda p: lightning_sqn.LBFGS(p))
    (opt,) = trainer.optimizers
    assert isinstance(opt, lightning_sqn.LBFGS)
    assert trainer.global_step == STEPS
    assert opt.counters.steps == trainer.global_step
    # At least f(x_k) and one trial per step; every closure call is one training_step.
    assert model.training_step_calls >= 2 * trainer.global_step
    assert opt.counters.closure_evals == model.training_step_calls
    assert model.full_loss() < 0.25 * initial
