"""A fit interrupted by a checkpoint and resumed continues exactly like an uninterrupted one."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn

STEPS_PER_EPOCH = 4


class Net(L.LightningModule):
    def __init__(self, optimizer: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
        self.optimizer_name = optimizer
        self.losses: list[float] = []
        self.closure_calls = 0
        self.zero_grad_calls = 0

    def training_step(self, batch, batch_idx):
        self.closure_calls += 1
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        self.zero_grad_calls += 1
        optimizer.zero_grad()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.losses.append(float(self.optimizers().optimizer.last_step.loss))

    def configure_optimizers(self):
        if self.optimizer_name == "lsr1_tr":
            return lightning_sqn.LSR1(self.parameters())
        if self.optimizer_name == "lsr1_ls":
            return lightning_sqn.LSR1(self.parameters(), method="line_search")
        return lightning_sqn.LBFGS(self.parameters(), forget_every=3)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16 * STEPS_PER_EPOCH, 3, generator=g, dtype=torch.float64)
    y = torch.sin(X.sum(1, keepdim=True))
    return DataLoader(TensorDataset(X, y), batch_size=16, shuffle=False)


def _trainer(epochs: int, root) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy="sqn",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


@pytest.mark.parametrize("optimizer", ["lsr1_tr", "lsr1_ls", "lbfgs"])
def test_resume_continues_identically(tmp_path, optimizer) -> None:
    full = Net(optimizer)
    _trainer(3, tmp_path).fit(full, _loader())

    first = Net(optimizer)
    trainer = _trainer(1, tmp_path)
    trainer.fit(first, _loader())
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = Net(optimizer)
    trainer2 = _trainer(3, tmp_path)
    trainer2.fit(resumed, _loader(), ckpt_path=ckpt)

    assert first.losses + resumed.losses == full.losses  # bitwise: same decisions, same numbers
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # parameters and BatchNorm buffers
    opt_full = trainer2.optimizers[0]
    assert opt_full.counters.steps == 3 * STEPS_PER_EPOCH  # counters restored, then continued


@pytest.mark.parametrize("optimizer", ["lsr1_tr", "lbfgs"])
def test_closure_and_zero_grad_calls_match_reported_evaluations(tmp_path, optimizer) -> None:
    model = Net(optimizer)
    trainer = _trainer(1, tmp_path)
    trainer.fit(model, _loader())
    opt = trainer.optimizers[0]
    assert model.closure_calls == opt.counters.closure_evals
    # Lightning zeroes the gradients inside its closure, once per evaluation.
    assert model.zero_grad_calls == opt.counters.closure_evals
    if optimizer == "lsr1_tr":
        assert opt.counters.closure_evals == 2 * STEPS_PER_EPOCH
