"""ClassificationTask: every optimizer fits under Lightning, the L2 term, the test-error metric, the logged
tags and the configuration errors (tiny float64 models on synthetic data made here)."""

from __future__ import annotations

from functools import partial

import lightning
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn  # noqa: F401  (registers strategy="sqn")
from lightning_sqn import LSR1
from lightning_sqn.problems.optimizers import OPTIMIZERS, needs_closure
from lightning_sqn.problems.task import ClassificationTask

TAGS = {"train/loss", "train/objective", "test/error", "test/loss", "train/epoch_time", "train/time"}


def _data(n: int = 48, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, dtype=torch.float64, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # 3 classes
    return x, y


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


class _Data(lightning.LightningDataModule):
    """Training batches of 16 in order; the validation loader is the test set (the task's convention)."""

    def __init__(self) -> None:
        super().__init__()
        self.train, self.test = _data(48, 0), _data(20, 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.train), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.test), batch_size=8)


def _trainer(name: str, logger=False, **kwargs) -> lightning.Trainer:
    options = dict(
        accelerator="cpu",
        strategy="sqn" if needs_closure(name) else "auto",
        max_epochs=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    return lightning.Trainer(**{**options, **kwargs})


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_fits_one_epoch(name):
    task = ClassificationTask(_net(), optimizer=name, weight_decay=1e-3, num_classes=3)
    before = [p.detach().clone() for p in task.parameters()]
    trainer = _trainer(name)
    trainer.fit(task, _Data())
    opt = trainer.optimizers[0]
    assert type(opt) is OPTIMIZERS[name].cls
    assert any(not torch.equal(b, p) for b, p in zip(before, task.parameters()))
    assert {
        "train/loss",
        "train/objective",
        "test/error",
        "test/loss",
        "train/epoch_time",
        "train/time",
    } <= set(trainer.logged_metrics)
    if needs_closure(name):
        assert opt.counters.steps == 3  # one step per batch, however many closure calls


def test_l2_term_is_half_weight_decay_times_squared_norm():
    lam = 0.37
    task = ClassificationTask(_net(), optimizer="sgd", weight_decay=lam, num_classes=3)
    squared = sum(float((p.detach() ** 2).sum()) for p in task.model.parameters())
    torch.testing.assert_close(task.l2_penalty(), torch.tensor(0.5 * lam * squared, dtype=torch.float64))
    x, y = _data(10)
    ce = nn.functional.cross_entropy(task(x), y)
    torch.testing.assert_close(task.sqn_loss((x, y)), ce + 0.5 * lam * squared)
    assert float(ClassificationTask(_net(), optimizer="sgd", num_classes=3).l2_penalty()) == 0.0


def test_l2_in_the_loss_is_sgd_weight_decay():
    """One SGD step on CE + lam/2 ||w||^2 equals torch's SGD(weight_decay=lam) on the cross entropy."""
    lam, lr = 0.05, 0.1
    x, y = _data(16)
    task = ClassificationTask(_net(), optimizer="sgd", optimizer_options={"lr": lr}, weight_decay=lam)
    opt = task.configure_optimizers()
    opt.zero_grad()
    task.sqn_loss((x, y)).backward()
    opt.step()
    ref = _net()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr, weight_decay=lam)
    nn.functional.cross_entropy(ref(x), y).backward()
    ref_opt.step()
    for p, q in zip(task.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)


def test_test_error_and_loss_equal_a_hand_count():
    """Uneven evaluation batches (8, 8, 4): the error is a count over all 20 examples, the loss a mean."""
    task = ClassificationTask(_net(3), optimizer="sgd", num_classes=3)
    data = _Data()
    x, y = data.test
    with torch.no_grad():
        logits = task(x)
    wrong = int((logits.argmax(1) != y).sum())
    assert 0 < wrong < len(y)
    metrics = _trainer("sgd").validate(task, data.val_dataloader(), verbose=False)[0]
    assert metrics["test/error"] == pytest.approx(100.0 * wrong / len(y), abs=1e-5)
    assert metrics["test/loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    # the metric states are reset: a second evaluation gives the same numbers
    again = _trainer("sgd").validate(task, data.val_dataloader(), verbose=False)[0]
    assert again == pytest.approx(metrics)


def test_logged_tags_and_train_loss_at_x_k(tmp_path):
    """A trust-region step evaluates training_step twice; train/loss is logged once per step, with f(x_k)."""
    task = ClassificationTask(_net(), optimizer="lsr1", weight_decay=1e-2, num_classes=3)
    data = _Data()
    xb, yb = data.train[0][:16], data.train[1][:16]
    with torch.no_grad():
        first_loss = float(nn.functional.cross_entropy(task(xb), yb))
        first_objective = first_loss + float(task.l2_penalty())
    logger = TensorBoardLogger(tmp_path, name="run", version="seed_0", default_hp_metric=False)
    trainer = _trainer("lsr1", logger=logger, max_epochs=2)
    trainer.fit(task, data)
    assert trainer.optimizers[0].counters.closure_evals >= 12  # 6 steps x 2 evaluations
    acc = EventAccumulator(str(tmp_path / "run" / "seed_0"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "train/objective",
        "test/error",
        "test/loss",
        "train/epoch_time",
        "train/time",
    } <= tags
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(6))
    assert loss[0].value == pytest.approx(first_loss, rel=1e-6)
    assert acc.Scalars("train/objective")[0].value == pytest.approx(first_objective, rel=1e-6)
    assert len(acc.Scalars("test/error")) == 2
    epoch_time = [e.value for e in acc.Scalars("train/epoch_time")]
    total = [e.value for e in acc.Scalars("train/time")]
    assert all(t > 0 for t in epoch_time)
    assert total == pytest.approx([epoch_time[0], epoch_time[0] + epoch_time[1]], rel=1e-5)
    assert task.hparams.optimizer == "lsr1" and "model" not in task.hparams


def test_lr_milestones_multiply_the_learning_rate():
    task = ClassificationTask(
        _net(), optimizer="momentum", optimizer_options={"lr": 0.1}, lr_milestones=[1, 2], lr_gamma=0.5
    )
    trainer = _trainer("momentum", max_epochs=3, limit_val_batches=0)
    trainer.fit(task, _Data())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "lsr1", "lr_milestones": [80, 120]}, "quasi-Newton optimizer LSR1"),
        ({"optimizer": "lbfgs", "lr_milestones": [5]}, "does not have"),
        ({"optimizer": "sgd", "lr_milestones": [120, 80]}, "increasing positive integers"),
        ({"optimizer": "sgd", "optimizer_options": {"weight_decay": 1e-4}}, "count it twice"),
        ({"optimizer": "sgd", "weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"optimizer": "newton"}, "valid names: lsr1, lsr1_ls"),
        ({"optimizer": "adam", "optimizer_options": {"momentum": 0.9}}, "valid options: lr, betas"),
        ({"optimizer": "sgd", "optimizer_options": {"lr": -1.0}}, "Invalid learning rate"),
        # factories (LightningCLI's class_path / init_args, or functools.partial)
        ({"optimizer": partial(torch.optim.SGD, lr=0.1, weight_decay=1e-4)}, "count it twice"),
        ({"optimizer": partial(LSR1, memory=5), "lr_milestones": [80]}, "quasi-Newton optimizer LSR1"),
        (
            {"optimizer": partial(torch.optim.SGD, lr=0.1), "optimizer_options": {"lr": 1.0}},
            "go with an optimizer name",
        ),
        ({"optimizer": 3}, "a name or a callable"),
        ({"optimizer": partial(LSR1, memory=0)}, "memory"),
    ],
)
def test_configuration_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassificationTask(_net(), **kwargs)


def test_an_optimizer_factory_builds_the_optimizer_and_trains():
    task = ClassificationTask(
        _net(), optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9), weight_decay=1e-4
    )
    opt = task.configure_optimizers()
    assert (
        type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 0
    )
    assert "optimizer" not in task.hparams and task.hparams.weight_decay == 1e-4
    qn = ClassificationTask(_net(), optimizer=partial(LSR1, memory=3, gamma=0.1)).configure_optimizers()
    assert type(qn) is LSR1 and qn.defaults["memory"] == 3 and qn.defaults["gamma"] == 0.1


def test_training_time_is_kept_in_checkpoints():
    task = ClassificationTask(_net(), optimizer="sgd")
    task._train_time = 12.5
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    restored = ClassificationTask(_net(), optimizer="sgd")
    restored.on_load_checkpoint(checkpoint)
    assert restored._train_time == 12.5
