"""CurvaturePairSampler on one device: pairs equal Y = H S on the curvature batch, refresh schedule,
no trace in BatchNorm statistics, and clear errors. (Two ranks: ``test_ddp_sqn.py``.)"""

from __future__ import annotations

import lightning
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn
from lightning_sqn.callbacks import CurvaturePairSampler

N, D = 48, 3


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.1
    return X, y


class Linear(lightning.LightningModule):
    """Least squares: the Hessian of the mean loss over any batch (X_b, 1) is 2/B [X_b 1]^T [X_b 1]."""

    def __init__(self, make_optimizer, batch_norm: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bn = nn.BatchNorm1d(D).double() if batch_norm else nn.Identity()
        self.net = nn.Linear(D, 1).double()
        self.make_optimizer = make_optimizer
        self.log_calls = 0
        self.training_step_calls = 0

    def log(self, *args, **kwargs):
        self.log_calls += 1
        return super().log(*args, **kwargs)

    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        X, y = batch
        loss = nn.functional.mse_loss(self.net(self.bn(X)), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


class Probe(lightning.Callback):
    """Runs after the sampler (callbacks run in list order): records the memory at refresh steps."""

    def __init__(self) -> None:
        self.snapshots = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        opt = trainer.optimizers[0]
        mem = opt.matrix.memory
        active = mem.active
        self.snapshots.append((trainer.global_step, mem.S[active].clone(), mem.Y[active].clone()))


def _fit(model, callbacks, steps=6, batch_size=16):
    loader = DataLoader(TensorDataset(*_data()), batch_size=batch_size, shuffle=False)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        strategy="sqn",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, loader)
    return trainer


@pytest.mark.parametrize("sampling", ["hessian", "gradient"])
def test_refreshed_pairs_are_hessian_pairs_of_the_curvature_batch(sampling: str) -> None:
    # batch_size = N: the curvature batch is the whole training set, whose Hessian is known.
    sampler = CurvaturePairSampler(
        every_n_steps=3, num_pairs=3, sample_radius=0.5, sampling=sampling, batch_size=N, seed=0
    )
    probe = Probe()
    model = Linear(lambda p: lightning_sqn.LSR1(p, memory=4))
    _fit(model, [sampler, probe])
    assert sampler.refreshes == 2  # before steps 0 and 3
    X, _ = _data()
    A = torch.cat([X, torch.ones(N, 1, dtype=torch.float64)], dim=1)
    H = 2.0 / N * A.T @ A  # parameters in the order (weight, bias)
    refreshed = [(s, S, Y) for s, S, Y in probe.snapshots if s % 3 == 0]
    assert [s for s, _, _ in refreshed] == [0, 3]
    for _, S, Y in refreshed:
        assert S.shape == (3, D + 1)
        torch.testing.assert_close(
            torch.linalg.vector_norm(S, dim=1), torch.full((3,), 0.5, dtype=torch.float64)
        )
        torch.testing.assert_close(Y, S @ H, rtol=1e-10, atol=1e-12)
    # the sampler evaluates training_step (1 or 1 + m times per refresh) with its logging silenced
    extra = 1 if sampling == "hessian" else 1 + 3
    assert model.training_step_calls == 2 * 6 + 2 * extra
    assert model.log_calls == 2 * 6


def test_sampler_leaves_no_trace_in_batchnorm_statistics() -> None:
    sampler = CurvaturePairSampler(
        every_n_steps=1, num_pairs=2, sample_radius=0.1, sampling="gradient", seed=0
    )
    with_sampler = Linear(lambda p: lightning_sqn.LSR1(p, memory=4), batch_norm=True)
    _fit(with_sampler, [sampler], steps=1)
    reference = Linear(lambda p: lightning_sqn.LSR1(p, memory=4), batch_norm=True)
    _fit(reference, [], steps=1)
    # The BatchNorm layer normalises the raw input, so its statistics do not depend on the parameters:
    # with the sampler's extra forward passes undone they advance exactly as without the sampler.
    assert with_sampler.bn.num_batches_tracked.item() == reference.bn.num_batches_tracked.item() == 1
    torch.testing.assert_close(with_sampler.bn.running_mean, reference.bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(with_sampler.bn.running_var, reference.bn.running_var, rtol=0, atol=0)


def test_default_draw_comes_from_the_training_data_and_changes_between_refreshes() -> None:
    sampler = CurvaturePairSampler(every_n_steps=2, sample_radius=0.1, seed=0)  # batch size of training: 16
    model = Linear(lambda p: lightning_sqn.LBFGS(p, memory=3))
    trainer = _fit(model, [sampler])
    assert sampler.refreshes == 3
    a = sampler._indices(N, 16)
    b = sampler._indices(N, 16)
    assert not torch.equal(a, b) and len(set(a.tolist())) == 16
    assert trainer.global_step == 6


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda p: lightning_sqn.BFGS(p), {}, "LSR1 or LBFGS"),
        (lambda p: lightning_sqn.LSR1(p, memory=2), {"num_pairs": 3}, "exceeds the optimizer's memory"),
        (lambda p: lightning_sqn.LSR1(p, memory=2), {"batch_size": 10_000}, "exceeds the 48 training"),
    ],
)
def test_misconfigurations_raise(make, kwargs, match) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        _fit(Linear(make), [CurvaturePairSampler(every_n_steps=1, seed=0, **kwargs)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_steps": 1, "num_pairs": 0}, "integer >= 1"),
        ({"every_n_steps": 1, "sample_radius": -1.0}, "sample_radius"),
        ({"every_n_steps": 1, "sampling": "fisher"}, "option II"),
        ({"every_n_steps": 1, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        CurvaturePairSampler(**kwargs)
