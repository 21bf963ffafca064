"""Trainer settings that break closure evaluation are refused at fit start; bf16-mixed trains.

fp16 AMP cannot run on CPU (``precision="16-mixed"`` with ``accelerator="cpu"`` becomes bf16-mixed with a
warning), so the fp16 cases pass Lightning's ``MixedPrecision("16-mixed")`` plugin with a CPU
``GradScaler`` explicitly: that is the plugin ``precision="16-mixed"`` selects on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import lightning
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.plugins.precision import DeepSpeedPrecision, MixedPrecision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lit_models import MakeOptimizer, regression_data
from lit_models import Regression as _Regression
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn
from lightning_sqn.lightning import GuardCallback, SQNDDPStrategy, SQNSingleDeviceStrategy, check_trainer
from lightning_sqn.lightning import strategy as strategy_module

NUM_SAMPLES, BATCH_SIZE = 128, 64


def _data() -> tuple[Tensor, Tensor]:
    return regression_data(NUM_SAMPLES)


class Regression(_Regression):
    def __init__(self, make_optimizer: MakeOptimizer) -> None:
        super().__init__(make_optimizer, NUM_SAMPLES)


class ManualRegression(Regression):
    """Manual optimization: the module hands its own closure to ``opt.step``."""

    def __init__(self, make_optimizer: MakeOptimizer) -> None:
        super().__init__(make_optimizer)
        self.automatic_optimization = False

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        opt = self.optimizers()

        def closure() -> Tensor:
            opt.zero_grad()
            loss = super(ManualRegression, self).training_step(batch, batch_idx)
            self.manual_backward(loss)
            return loss

        opt.step(closure=closure)


def _trainer(max_steps: int = 2, **kwargs: Any) -> lightning.Trainer:
    kwargs.setdefault("strategy", "sqn")
    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(*_data()), batch_size=BATCH_SIZE, shuffle=False)


def _fp16_plugin() -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


# (Trainer settings, phrases the message must contain: the setting and what to use instead)
HOSTILE: dict[str, tuple[Callable[[], dict[str, Any]], tuple[str, ...]]] = {
    "16-mixed": (lambda: {"plugins": [_fp16_plugin()]}, ("precision='16-mixed'", "precision='bf16-mixed'")),
    "clip": (lambda: {"gradient_clip_val": 1.0}, ("gradient_clip_val=1.0", "Remove gradient_clip_val")),
    "accumulate": (
        lambda: {"accumulate_grad_batches": 2},
        ("accumulate_grad_batches=2", "accumulate_grad_batches=1", "2x larger batch_size"),
    ),
}


@pytest.mark.parametrize("setting", list(HOSTILE))
def test_sqn_strategy_refuses_setting_before_first_step(setting: str) -> None:
    settings, phrases = HOSTILE[setting]
    model = Regression(lambda p: lightning_sqn.LSR1(p))
    trainer = _trainer(**settings())
    assert isinstance(trainer.strategy, SQNSingleDeviceStrategy)
    with pytest.raises(MisconfigurationException, match=r"LSR1 \(lightning_sqn\)") as info:
        trainer.fit(model, _loader())
    for phrase in phrases:
        assert phrase in str(info.value)
    assert model.training_step_calls == 0


@pytest.mark.parametrize("setting", list(HOSTILE))
def test_first_order_optimizer_is_not_refused(setting: str) -> None:
    settings, _ = HOSTILE[setting]
    model = Regression(lambda p: torch.optim.SGD(p, lr=0.1))
    trainer = _trainer(**settings())
    trainer.fit(model, _loader())
    assert trainer.global_step == 2


def test_guard_callback_checks_under_lightnings_default_strategy() -> None:
    model = Regression(lambda p: lightning_sqn.LBFGS(p))
    trainer = _trainer(strategy="auto", gradient_clip_val=0.5, callbacks=[GuardCallback()])
    with pytest.raises(MisconfigurationException, match=r"gradient_clip_val=0\.5"):
        trainer.fit(model, _loader())
    assert model.training_step_calls == 0


def test_ddp_sqn_setup_runs_the_check_when_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unit level: a real DDP setup would initialise a process group inside the test process.
    monkeypatch.setattr(DDPStrategy, "setup", lambda self, trainer: None)
    checked: list[object] = []
    monkeypatch.setattr(strategy_module, "check_trainer", checked.append)
    strategy = SQNDDPStrategy()
    for fn in (TrainerFn.FITTING, TrainerFn.VALIDATING):
        trainer = SimpleNamespace(state=SimpleNamespace(fn=fn), strategy=SimpleNamespace(optimizers=[]))
        strategy.setup(trainer)
    assert len(checked) == 1 and checked[0].state.fn == TrainerFn.FITTING


def test_check_trainer_on_a_ddp_sqn_trainer() -> None:
    trainer = _trainer(strategy="ddp_sqn", accumulate_grad_batches=3)
    assert isinstance(trainer.strategy, SQNDDPStrategy)
    check_trainer(trainer)  # no optimizers yet: nothing to check
    trainer.strategy.optimizers = [lightning_sqn.LSR1(nn.Linear(2, 1).parameters())]
    with pytest.raises(MisconfigurationException, match="accumulate_grad_batches=3"):
        check_trainer(trainer)


def _stand_in_trainer(optimizer: torch.optim.Optimizer, plugin: Any, automatic: bool = True) -> Any:
    module = SimpleNamespace(automatic_optimization=automatic)
    strategy = SimpleNamespace(optimizers=[optimizer], precision_plugin=plugin)
    return SimpleNamespace(
        strategy=strategy,
        optimizers=[optimizer],
        precision_plugin=plugin,
        gradient_clip_val=None,
        accumulate_grad_batches=1,
        lightning_module=module,
    )


def test_deepspeed_is_refused() -> None:
    opt = lightning_sqn.LSR1(nn.Linear(2, 1).parameters())
    with pytest.raises(MisconfigurationException, match=r"DeepSpeed .*strategy='ddp_sqn'"):
        check_trainer(_stand_in_trainer(opt, DeepSpeedPrecision("32-true")))


def test_manual_optimization_is_allowed_but_fp16_still_refused() -> None:
    # Lightning itself refuses gradient clipping and accumulation in manual optimization; the fp16
    # plugin still calls scaler.step(optimizer) without the closure the module passed to opt.step.
    model = ManualRegression(lambda p: lightning_sqn.LSR1(p))
    trainer = _trainer(max_steps=3)
    trainer.fit(model, _loader())
    assert trainer.global_step == 3
    assert model.training_step_calls == 6  # f(x_k) and the trial point per step

    opt = lightning_sqn.LSR1(nn.Linear(2, 1).parameters())
    check_trainer(_stand_in_trainer(opt, lightning.pytorch.plugins.precision.Precision(), automatic=False))
    with pytest.raises(MisconfigurationException, match="precision='16-mixed'"):
        check_trainer(_stand_in_trainer(opt, _fp16_plugin(), automatic=False))


def test_sqn_strategy_refuses_several_devices() -> None:
    with pytest.raises(MisconfigurationException, match="strategy='ddp_sqn'"):
        lightning.Trainer(strategy="sqn", accelerator="cpu", devices=2, logger=False)


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda p: lightning_sqn.LSR1(p), lambda p: lightning_sqn.LBFGS(p)],
    ids=["lsr1_trust_region", "lbfgs"],
)
def test_bf16_mixed_trains_with_float32_curvature(make_optimizer: MakeOptimizer) -> None:
    initial = Regression(make_optimizer).full_loss()
    model = Regression(make_optimizer)
    trainer = _trainer(max_steps=20, precision="bf16-mixed")
    trainer.fit(model, _loader())
    (opt,) = trainer.optimizers
    assert model.output_dtypes == {torch.bfloat16}  # autocast was on in every closure evaluation
    assert trainer.global_step == 20 == opt.counters.steps
    assert opt.counters.closure_evals == model.training_step_calls
    if isinstance(opt, lightning_sqn.LSR1):
        assert model.training_step_calls == 2 * trainer.global_step
    assert opt._flat.dtype == torch.float32
    assert opt.matrix.memory.SY_buf.dtype == torch.float32
    assert opt.last_step.loss.dtype == torch.float32
    assert model.full_loss() < 0.5 * initial


@pytest.mark.parametrize("strategy", ["sqn", "guard"])
def test_full_batch_needs_exactly_one_batch_per_epoch(strategy: str) -> None:
    """full_batch=True reuses f and g of the accepted point: refused when the next step sees another batch
    (two batches here), trains when every step sees the one full batch."""
    settings: dict[str, Any] = (
        {"strategy": "sqn"} if strategy == "sqn" else {"strategy": "auto", "callbacks": [GuardCallback()]}
    )
    model = Regression(lambda p: lightning_sqn.LSR1(p, full_batch=True))
    with pytest.raises(MisconfigurationException, match=r"full_batch=True.*2 batches per epoch") as info:
        _trainer(**settings).fit(model, _loader())
    assert "full_batch=False" in str(info.value)
    assert model.training_step_calls == 0
    model = Regression(lambda p: lightning_sqn.LSR1(p, full_batch=True))
    full = DataLoader(TensorDataset(*_data()), batch_size=NUM_SAMPLES, shuffle=False)
    _trainer(max_steps=3, **settings).fit(model, full)
    opt = model.trainer.optimizers[0]
    assert opt.counters.steps == 3 and opt.counters.closure_evals == 4  # 2, then 1 per step


class _WithScheduler(Regression):
    def configure_optimizers(self) -> Any:
        opt = self.make_optimizer(self.parameters())
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_scheduler_on_an_optimizer_without_learning_rate_is_refused_at_fit_start() -> None:
    model = _WithScheduler(lambda p: lightning_sqn.LSR1(p))
    with pytest.raises(MisconfigurationException, match="LSR1 has no learning rate"):
        _trainer().fit(model, _loader())


def test_scheduler_drives_the_learning_rate_of_lbfgs() -> None:
    model = _WithScheduler(lambda p: lightning_sqn.LBFGS(p, lr=0.5, line_search=None))
    _trainer(max_steps=3).fit(model, _loader())
    opt = model.optimizers().optimizer
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.1**3)
    assert opt.last_step.step_length == pytest.approx(0.5 * 0.1**2)


class _ManualWithoutClosure(Regression):
    def __init__(self, make_optimizer: MakeOptimizer) -> None:
        super().__init__(make_optimizer)
        self.automatic_optimization = False

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))
        opt.step()


def test_manual_optimization_step_without_closure_gets_our_message() -> None:
    with pytest.raises(RuntimeError, match=r"LSR1.step\(\) needs a closure.*optimizer.step\(closure=...\)"):
        _trainer().fit(_ManualWithoutClosure(lambda p: lightning_sqn.LSR1(p)), _loader())
