"""BatchSizeScheduler: the batch sizes the train DataLoader yields per epoch, and the norm test against a
dense per-sample reference (Byrd, Chin, Nocedal & Wu 2012) on least squares in float64."""

from __future__ import annotations

import math
from collections import defaultdict

import lightning
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn
from lightning_sqn.lightning.callbacks.batch_size import BatchSizeScheduler

NUM_SAMPLES = 48


def _data(n: int = NUM_SAMPLES, noise: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    return X, y + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)


class LeastSquares(lightning.LightningModule):
    """Linear least squares, loss 0.5 * mean (x_i^T w - y_i)^2; records (epoch, batch rows)."""

    def __init__(self, make_optimizer=None, batch_size: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1, bias=False).double()
        self.make_optimizer = make_optimizer or (lambda p: torch.optim.SGD(p, lr=0.05))
        self.seen: dict[int, set[int]] = defaultdict(set)
        if batch_size is not None:  # the attribute on the module (hparams), no DataModule
            self.save_hyperparameters({"batch_size": batch_size})

    def sqn_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        X, y = batch
        return 0.5 * ((self.net(X) - y) ** 2).mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.seen[self.current_epoch].add(batch[0].shape[0])
        return self.sqn_loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


class ModuleHoldsBatchSize(LeastSquares):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*_data()), batch_size=self.hparams.batch_size)


class Data(lightning.LightningDataModule):
    def __init__(self, batch_size: int, noise: float = 1.0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.noise = noise

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*_data(noise=self.noise)), batch_size=self.batch_size)


def _trainer(callback: BatchSizeScheduler, epochs: int, **kwargs) -> lightning.Trainer:
    kwargs.setdefault("reload_dataloaders_every_n_epochs", 1)
    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _sizes(model: LeastSquares) -> list[int]:
    """The batch size each epoch ran with (the largest; a smaller one is the epoch's remainder)."""
    return [max(model.seen[e]) for e in sorted(model.seen)]


def test_milestones_with_datamodule_and_lsr1() -> None:
    model = LeastSquares(lambda p: lightning_sqn.LSR1(p))
    cb = BatchSizeScheduler({2: 16, 3: 24}, max_batch_size=24)
    trainer = _trainer(cb, 4)
    trainer.fit(model, datamodule=Data(batch_size=8))
    assert _sizes(model) == [8, 8, 16, 24]
    assert all(len(s) == 1 for s in model.seen.values())  # 48 divisible: no remainder batches
    assert trainer.datamodule.batch_size == 24  # set for a next epoch (unchanged after the last milestone)
    assert trainer.callback_metrics["sqn/batch_size"].item() == 24


def test_geometric_with_attribute_on_module_respects_cap() -> None:
    model = ModuleHoldsBatchSize(batch_size=100)  # overwritten by initial at fit start
    cb = BatchSizeScheduler(initial=4, factor=2, every_n_epochs=2, max_batch_size=12)
    trainer = _trainer(cb, 6)
    trainer.fit(model)
    assert _sizes(model) == [4, 4, 8, 8, 12, 12]
    assert cb.scheduled(1000, 0) == 12
    assert trainer.callback_metrics["sqn/batch_size"].item() == 12


def test_dense_per_sample_variance_and_proposal() -> None:
    model = LeastSquares()
    X, y = _data(16)
    with torch.no_grad():
        model.net.weight.copy_(torch.tensor([[0.3, -0.1, 0.2]], dtype=torch.float64))
    w = model.net.weight.detach().reshape(-1)
    G = (X @ w - y.reshape(-1))[:, None] * X  # per-sample gradients of 0.5 (x_i^T w - y_i)^2
    g = G.mean(0)
    variance = ((G - g) ** 2).sum() / (len(G) - 1)
    norm_sq = g @ g

    model.net.weight.grad = torch.full_like(model.net.weight, 7.0)
    before = (model.net.weight.detach().clone(), model.net.weight.grad.clone())
    rng = torch.get_rng_state()
    for theta, grows in ((0.05, True), (100.0, False)):
        cb = BatchSizeScheduler(theta=theta, num_micro_batches=None, max_batch_size=10**6)
        cb.batch_size = 16
        result = cb.estimate(model, (X, y))
        assert result.num_micro_batches == 16 and result.num_samples == 16
        torch.testing.assert_close(result.variance, variance.item(), rtol=1e-12, atol=0)
        torch.testing.assert_close(result.grad_norm_sq, norm_sq.item(), rtol=1e-12, atol=0)
        assert result.passed == (variance / 16 <= theta**2 * norm_sq)
        assert result.passed is not grows
        expected = min(10**6, math.ceil(variance / (theta**2 * norm_sq))) if grows else 16
        assert result.proposed == expected
        assert (result.proposed > 16) == grows
    capped = BatchSizeScheduler(theta=0.05, num_micro_batches=None, max_batch_size=40)
    capped.batch_size = 16
    assert capped.estimate(model, (X, y)).proposed == 40
    assert torch.equal(model.net.weight, before[0]) and torch.equal(model.net.weight.grad, before[1])
    assert torch.equal(torch.get_rng_state(), rng)


def test_micro_batch_variance_matches_chunk_formula() -> None:
    model = LeastSquares()
    X, y = _data(16)
    w = model.net.weight.detach().reshape(-1)
    G = (X @ w - y.reshape(-1))[:, None] * X
    chunks = G.reshape(4, 4, 3).mean(1)  # 4 micro-batches of 4 samples
    g = chunks.mean(0)
    variance = 4 * ((chunks - g) ** 2).sum() / 3  # m * sum ||g_j - g||^2 / (M - 1)
    cb = BatchSizeScheduler(theta=0.5, num_micro_batches=4, max_batch_size=64)
    result = cb.estimate(model, (X, y))
    assert result.num_micro_batches == 4
    torch.testing.assert_close(result.variance, variance.item(), rtol=1e-12, atol=0)


def test_estimate_restores_buffers() -> None:
    class WithBatchNorm(LeastSquares):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(3).double()

        def sqn_loss(self, batch):
            X, y = batch
            return 0.5 * ((self.net(self.bn(X)) - y) ** 2).mean()

    model = WithBatchNorm()
    state = {k: v.clone() for k, v in model.bn.state_dict().items()}
    BatchSizeScheduler(theta=0.5, num_micro_batches=4, max_batch_size=64).estimate(model, _data(16))
    for k, v in model.bn.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize(("theta", "grows"), [(0.05, True), (50.0, False)])
def test_norm_test_during_fit(theta: float, grows: bool) -> None:
    model = LeastSquares()
    cb = BatchSizeScheduler(theta=theta, num_micro_batches=8, max_batch_size=48)
    trainer = _trainer(cb, 3)
    trainer.fit(model, datamodule=Data(batch_size=8, noise=3.0))
    sizes = _sizes(model)
    assert sizes[0] == 8
    if grows:
        assert sizes[1] > 8 and sizes[1] <= 48 and sizes == sorted(sizes)
        assert cb.last_result is not None and not cb.last_result.passed
    else:
        assert sizes == [8, 8, 8]
    assert "sqn/variance_ratio" in trainer.callback_metrics


def test_missing_reload_dataloaders_raises() -> None:
    cb = BatchSizeScheduler({1: 16})
    with pytest.raises(MisconfigurationException, match=r"reload_dataloaders_every_n_epochs=1"):
        _trainer(cb, 2, reload_dataloaders_every_n_epochs=0).fit(LeastSquares(), datamodule=Data(8))


def test_missing_attribute_and_loss_raise() -> None:
    cb = BatchSizeScheduler({1: 16}, attr_name="bs")
    with pytest.raises(MisconfigurationException, match="no attribute 'bs'"):
        _trainer(cb, 2).fit(LeastSquares(), datamodule=Data(8))

    class NoLoss(LeastSquares):
        sqn_loss = None

    cb = BatchSizeScheduler(theta=0.5, max_batch_size=64)
    with pytest.raises(MisconfigurationException, match="sqn_loss"):
        _trainer(cb, 2).fit(NoLoss(), datamodule=Data(8))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"milestones": {1: 8}, "factor": 2.0, "initial": 2, "max_batch_size": 8},
        {"milestones": {}},
        {"milestones": {-1: 8}},
        {"milestones": {1: 0}},
        {"milestones": {1: 64}, "max_batch_size": 32},
        {"milestones": {1: 8}, "initial": 4},
        {"factor": 2.0, "initial": 4},
        {"factor": 1.0, "initial": 4, "max_batch_size": 64},
        {"factor": 2.0, "max_batch_size": 64},
        {"factor": 2.0, "initial": 128, "max_batch_size": 64},
        {"factor": 2.0, "initial": 4, "max_batch_size": 64, "every_n_epochs": 0},
        {"factor": 2.0, "initial": 4, "max_batch_size": 64, "min_growth": 2.0},
        {"theta": 0.0, "max_batch_size": 64},
        {"theta": 0.5},
        {"theta": 0.5, "max_batch_size": 64, "num_micro_batches": 0},
        {"theta": 0.5, "max_batch_size": 64, "min_growth": 0.5},
        {"theta": 0.5, "max_batch_size": 64, "check_every_n_steps": 0},
        {"theta": 0.5, "max_batch_size": 64, "every_n_epochs": 2},
        {"milestones": {1: 8}, "attr_name": ""},
    ],
)
def test_bad_hyperparameters_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        BatchSizeScheduler(**kwargs)


def test_state_round_trip_and_resume(tmp_path) -> None:
    cb = BatchSizeScheduler({2: 16, 3: 24})
    model = LeastSquares()
    trainer = _trainer(cb, 2)
    trainer.fit(model, datamodule=Data(8))
    assert _sizes(model) == [8, 8]
    state = cb.state_dict()
    assert state["batch_size"] == 16 and state["epoch"] == 2
    other = BatchSizeScheduler({2: 16, 3: 24})
    other.load_state_dict(state)
    assert other.state_dict() == state
    with pytest.raises(ValueError, match="milestones"):
        BatchSizeScheduler(theta=0.5, max_batch_size=64).load_state_dict(state)

    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = LeastSquares()
    _trainer(BatchSizeScheduler({2: 16, 3: 24}), 4).fit(resumed, datamodule=Data(8), ckpt_path=ckpt)
    assert sorted(resumed.seen) == [2, 3] and _sizes(resumed) == [16, 24]


def test_norm_test_state_survives_resume(tmp_path) -> None:
    cb = BatchSizeScheduler(theta=0.05, num_micro_batches=8, max_batch_size=48)
    trainer = _trainer(cb, 1)
    trainer.fit(LeastSquares(), datamodule=Data(8, noise=3.0))
    grown = cb.batch_size
    assert grown is not None and grown > 8
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = LeastSquares()
    cb2 = BatchSizeScheduler(theta=100.0, num_micro_batches=8, max_batch_size=48)  # no further growth
    _trainer(cb2, 2).fit(resumed, datamodule=Data(8, noise=3.0), ckpt_path=ckpt)
    assert _sizes(resumed) == [grown]
