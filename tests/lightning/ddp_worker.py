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
        if self.optimizer_name == "slsr1_hessian":
            return lightning_sqn.SampledLSR1(self.parameters(), memory=4, sample_radius=0.1, seed=3)
        if self.optimizer_name == "slsr1_gradient":
            return lightning_sqn.SampledLSR1(
                self.parameters(), memory=4, sample_radius=1e-3, sampling="gradient", seed=3
            )
        if self.optimizer_name == "slbfgs_hessian":
            return lightning_sqn.SampledLBFGS(self.parameters(), memory=4, sample_radius=0.1, seed=3)
        if self.optimizer_name.startswith("hessian_free_"):
            curvature = "hessian" if self.optimizer_name == "hessian_free_hessian" else "ggn"
            # "_half": Martens' curvature mini-batch, the first half of each rank's batch. The shards
            # interleave (rank r holds examples r, r + 2, ...), so the union of the ranks' halves is the
            # first half of the single process's double batch, and the products must agree.
            fraction = 0.5 if self.optimizer_name.endswith("_half") else 1.0
            # A short CG (cap 6): run to Martens' progress rule, CG's last iterates differ in the loss
            # only at ~1e-12, so CG backtracking compares near-ties, and the rounding difference between
            # the all-reduced and the single-process sums can flip its choice (both choices are right).
            opt = lightning_sqn.HessianFree(
                self.parameters(),
                curvature=curvature,
                loss="mse",
                max_cg_iters=6,
                curvature_batch_fraction=fraction,
            )
            # training_step calls self.net(x), not self(x): watch the network itself (GGN products and
            # the per-example gradients of the preconditioner, on each rank's shard)
            opt.watch_module(self.net)
            return opt
        if self.optimizer_name == "trust_region_newton":
            return lightning_sqn.TrustRegionNewton(self.parameters(), norm="rmsprop")
        return lightning_sqn.LBFGS(self.parameters(), memory=5)

    def train_dataloader(self):
        X, y = dataset(self.skewed)
        # Explicit unshuffled shard (Lightning's own DistributedSampler always shuffles the train set).
        X, y = X[self.shard :: self.world], y[self.shard :: self.world]
        return DataLoader(TensorDataset(X, y), batch_size=N // (STEPS // 2) // self.world, shuffle=False)


def run(optimizer: str, skewed: bool, rank: int, world: int, strategy: str = "ddp_sqn") -> dict:
    model = Regression(optimizer, rank, world, skewed)
    kwargs = dict(strategy=strategy, devices=world) if world > 1 else dict(devices=1, strategy="sqn")
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


def run_sampler(rank: int, world: int, sampling: str) -> dict:
    """L-SR1 with CurvaturePairSampler: a fixed curvature set, rank r evaluating its half."""
    model = Regression("lsr1_tr", rank, world, skewed=True)
    Xc, yc = dataset(skewed=True)
    Xc, yc = Xc[:64], yc[:64]
    curvature = DataLoader(TensorDataset(Xc[rank::world], yc[rank::world]), batch_size=64 // world)
    sampler = lightning_sqn.callbacks.CurvaturePairSampler(
        every_n_steps=4, num_pairs=3, sample_radius=1e-2, sampling=sampling, dataloader=curvature, seed=2
    )
    kwargs = dict(strategy="ddp_sqn", devices=world) if world > 1 else dict(devices=1, strategy="sqn")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[sampler],
        **kwargs,
    )
    trainer.fit(model)
    params = torch.cat([p.detach().reshape(-1) for p in model.net.parameters()])
    return {
        "rows": model.log_rows,
        "params": params,
        "steps": trainer.global_step,
        "refreshes": sampler.refreshes,
    }


def products(rank: int, world: int) -> dict:
    """Hessian-vector products of the mean loss from this rank's shard, averaged over the ranks."""
    import torch.distributed as dist

    from lightning_sqn.curvature.graph import GradientGraph
    from lightning_sqn.distributed import TorchDistributedCommunicator

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    X, y = dataset(skewed=True)
    X, y = X[rank::world], y[rank::world]
    params = list(net.parameters())
    loss = nn.functional.mse_loss(net(X), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    comm = TorchDistributedCommunicator() if world > 1 else None
    V = torch.randn(
        3, sum(p.numel() for p in params), generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    return {"HV": GradientGraph(grads, params, comm).hvp(V), "V": V}


#: The optimizer configurations ``run`` knows; each is compared rank-by-rank with one process.
OPTIMIZER_CASES = (
    "lsr1_tr",
    "lsr1_ls",
    "lbfgs",
    "slsr1_hessian",
    "slsr1_gradient",
    "slbfgs_hessian",
    "hessian_free_ggn",
    "hessian_free_ggn_half",
    "hessian_free_hessian",
    "trust_region_newton",
)


def main() -> None:
    out = sys.argv[1]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    results = {}
    for optimizer in OPTIMIZER_CASES:
        results[optimizer] = run(optimizer, False, rank, world)
    results["lsr1_tr_skewed"] = run("lsr1_tr", True, rank, world)
    results["callbacks"] = run_callbacks(rank, world)
    if world > 1:  # Lightning's plain DDP must refuse our optimizers (their decisions would diverge)
        try:
            run("lsr1_tr", True, rank, world, strategy="ddp")
            results["plain_ddp_error"] = None
        except Exception as err:  # the test inspects the type and message
            results["plain_ddp_error"] = (type(err).__name__, str(err))
    results["sampler_hessian"] = run_sampler(rank, world, "hessian")
    results["sampler_gradient"] = run_sampler(rank, world, "gradient")
    results["products"] = products(rank, world)
    torch.save(results, f"{out}.rank{rank}")
    # Tear the gloo group down before the interpreter exits: left to static destruction, its threads
    # occasionally abort the process ("terminate called without an active exception", about 1 run in 7).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
