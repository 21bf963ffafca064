"""Under ``strategy="sqn"`` BatchNorm statistics advance once per optimizer step (two closure calls each)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn


class BNRegression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
        self.calls = 0

    def training_step(self, batch, batch_idx):
        self.calls += 1
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return lightning_sqn.LSR1(self.parameters())


def _fit(strategy: str) -> BNRegression:
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 5, generator=g), torch.randn(64, 1, generator=g)
    model = BNRegression()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_steps=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(X, y), batch_size=16))
    return model


@pytest.mark.parametrize(("strategy", "per_step"), [("sqn", 1), ("auto", 2)])
def test_running_statistics_per_step(strategy, per_step) -> None:
    model = _fit(strategy)
    assert model.calls == 16  # two closure evaluations per trust-region step either way
    # sqn: once per optimizer step; Lightning's own strategies: once per evaluation (the documented
    # reason to use strategy="sqn" or optimizer.track_running_stats(model)).
    assert int(model.net[1].num_batches_tracked) == 8 * per_step
