"""A small LightningModule shared by the Lightning tests (imported as a top-level module by pytest)."""

from __future__ import annotations

from collections.abc import Callable

import lightning
import torch
from torch import Tensor, nn

MakeOptimizer = Callable[..., torch.optim.Optimizer]


def regression_data(num_samples: int) -> tuple[Tensor, Tensor]:
    """A smooth non-linear regression target in R^4 (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(num_samples, 4, generator=g)
    y = torch.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3] - 0.3 * X[:, 3:4]
    return X, y


class Regression(lightning.LightningModule):
    """A 4-16-1 tanh MLP with mean squared error; counts its ``training_step`` calls and records the
    dtype of its outputs (to see autocast)."""

    def __init__(self, make_optimizer: MakeOptimizer, num_samples: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.make_optimizer = make_optimizer
        self.num_samples = num_samples
        self.training_step_calls = 0
        self.output_dtypes: set[torch.dtype] = set()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.training_step_calls += 1
        X, y = batch
        out = self.net(X)
        self.output_dtypes.add(out.dtype)
        return nn.functional.mse_loss(out, y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())

    def full_loss(self) -> float:
        X, y = regression_data(self.num_samples)
        with torch.no_grad():
            return float(nn.functional.mse_loss(self.net(X), y))
