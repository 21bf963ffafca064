"""Worker for the 2-process ``ddp_sqn`` tests: ``python ddp_worker.py OUT_FILE`` with the torch.distributed
environment variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set by the test.

With WORLD_SIZE=1 and no variables set, the same code runs the single-process reference. Each run
trains a float64 MLP with a full Lightning Trainer and records, per optimizer step, the global loss,
the accept decision, the closure evaluations and the number of ``training_step`` calls, plus the final
parameters.
"""

from __future__ import annotations

import os
import sys

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn

N, D, STEPS = 160, 6, 20


def dataset(skewed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, 1, generator=g, dtype=torch.float64)
    y = torch.tanh(X @ w) + 0.1 * torch.randn(N, 1, generator=g, dtype=torch.float64)
    if skewed:  # odd samples (rank 1's shard) get targets far away: very different per-rank losses
        y[1::2] += 10.0
    return X, y


class Regression(L.LightningModule):
    def __init__(self, optimizer: str, shard: int, world: int, skewed: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1)).double()
        self.optimizer_name = optimizer
        self.shard, self.world, self.skewed = shard, world, skewed
        self.training_steps = 0
        self.log_rows: list[dict] = []

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        opt = self.optimizers().optimizer
        row = {k: v for k, v in opt.last_step.as_dict().items() if k in ("loss", "accepted", "closure_evals")}
        row["training_steps"] = self.training_steps
        self.log_rows.append(row)
        self.training_steps = 0

    def configure_optimizers(self):
        if self.optimizer_name == "lsr1_tr":
            return lightning_sqn.LSR1(self.parameters(), memory=5)
        if self.optimizer_name == "lsr1_ls":
            return lightning_sqn.LSR1(self.parameters(), memory=5, method="line_search")
        return lightning_sqn.LBFGS(self.parameters(), memory=5)

    def train_dataloader(self):
        X, y = dataset(self.skewed)
        # Explicit unshuffled shard (Lightning's own DistributedSampler always shuffles the train set).
        X, y = X[self.shard :: self.world], y[self.shard :: self.world]
        return DataLoader(TensorDataset(X, y), batch_size=N // (STEPS // 2) // self.world, shuffle=False)


def run(optimizer: str, skewed: bool, rank: int, world: int, strategy: str = "ddp_sqn") -> dict:
    model = Regression(optimizer, rank, world, skewed)
    kwargs = dict(strategy=strategy, devices=world) if world > 1 else dict(devices=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        **kwargs,
    )
    trainer.fit(model)
    params = torch.cat([p.detach().reshape(-1) for p in model.net.parameters()])
    return {"rows": model.log_rows, "params": params, "steps": trainer.global_step}


class ScheduledRegression(Regression):
    """Batch size set by BatchSizeScheduler (``batch_size`` is per rank), norm-test loss provided."""

    def __init__(self, shard: int, world: int) -> None:
        super().__init__("lsr1_tr", shard, world, skewed=False)
        self.batch_size = 8
        self.seen_batch_sizes: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen_batch_sizes.append(len(batch[0]))
        return super().training_step(batch, batch_idx)

    def sqn_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self):
        X, y = dataset(False)
        X, y = X[self.shard :: self.world], y[self.shard :: self.world]
        return DataLoader(TensorDataset(X, y), batch_size=self.batch_size, shuffle=False)


def run_callbacks(rank: int, world: int) -> dict:
    """All callbacks together under the strategy: no hang, global batch split across ranks."""
    model = ScheduledRegression(rank, world)
    callbacks = [
        lightning_sqn.TrustRegionMonitor(),
        lightning_sqn.SkippedUpdateCounter(),
        lightning_sqn.BatchSizeScheduler({0: 16, 1: 32, 2: 80}, max_batch_size=80),
    ]
    kwargs = dict(strategy="ddp_sqn", devices=world) if world > 1 else dict(devices=1, strategy="sqn")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        reload_dataloaders_every_n_epochs=1,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(model)
    params = torch.cat([p.detach().reshape(-1) for p in model.net.parameters()])
    return {"batch_sizes": model.seen_batch_sizes, "rows": model.log_rows, "params": params}


def main() -> None:
    out = sys.argv[1]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    results = {}
    for optimizer in ("lsr1_tr", "lsr1_ls", "lbfgs"):
        results[optimizer] = run(optimizer, False, rank, world)
    results["lsr1_tr_skewed"] = run("lsr1_tr", True, rank, world)
    results["callbacks"] = run_callbacks(rank, world)
    if world > 1:  # Lightning's plain DDP must refuse our optimizers (their decisions would diverge)
        try:
            run("lsr1_tr", True, rank, world, strategy="ddp")
            results["plain_ddp_error"] = None
        except Exception as err:  # the test inspects the type and message
            results["plain_ddp_error"] = (type(err).__name__, str(err))
    torch.save(results, f"{out}.rank{rank}")


if __name__ == "__main__":
    main()
